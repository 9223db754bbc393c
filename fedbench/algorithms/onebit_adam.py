"""1-bit Adam: Adam whose momentum is sent as signs after a full-precision warm-up.

"1-bit Adam: Communication Efficient Large-Scale Training with Adam's Convergence Speed",
Tang, Gan, Awan, Rajbhandari, Li, Lian, Liu, Zhang, He, ICML 2021, arXiv 2102.02888
(Algorithm 1; update without bias correction, as DeepSpeed's OnebitAdam).

Variant, one gradient per client per round on the model x every client holds:
- warm-up, rounds t < freeze_step: clients send g_i dense, the server averages ḡ and every
  replica runs Adam: m ← β1 m + (1 − β1) ḡ, v ← β2 v + (1 − β2) ḡ², x ← x − γ m/(√v + ε)
  (32d up, 32d down);
- compression stage: v frozen. Client i ∈ S: m_i = β1 m + (1 − β1) g_i,
  c_i = C(m_i + e_i), e_i ← m_i + e_i − c_i; server: c = C(mean_i c_i + e_s),
  e_s ← mean_i c_i + e_s − c; every replica sets m ← c, x ← x − γ m/(√v + ε).
C is the `onebit` compressor (scaled sign per chunk, ‖·‖₁/|chunk|), built in: the uplink
compressor must be identity. Bits then d + 32·chunks each way; the broadcast goes to all n
replicas (each applies the step). freeze_step ≥ rounds is Adam.
The worker errors e_i are `client_rows`: gathered and written back per cohort in the
compression stage (host memory when they do not fit the device, zero pages until a client is
first sampled there on a CPU, stored in `client_state`). e_i carries small residuals:
bfloat16 rounds them away (final model 60% off float32's after 30 rounds of an 8-client MLP,
float16 0.007%): prefer float16.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from fedbench import seeding
from fedbench.algorithms.base import (
    ALGORITHMS,
    Algorithm,
    Env,
    RoundLog,
    bits_vector,
    client_rows,
    gather_rows,
    gradients,
    sample_cohort,
    scatter_rows,
)
from fedbench.compressors.base import FLOAT_BITS
from fedbench.compressors.onebit import onebit
from fedbench.params import Component, Param
from fedbench.seeding import RoundRng


class OneBitAdamState(NamedTuple):
    t: int
    x: Tensor  # [d] every replica's model
    m: Tensor  # [d] momentum
    v: Tensor  # [d] second moment (frozen from freeze_step on)
    e: Tensor  # [n, d] worker errors e_i (`client_rows`: rows written per cohort)
    e_s: Tensor  # [d] server error


def onebit_adam(
    lr: float, beta1: float, beta2: float, eps: float, freeze_step: int, chunks: int
) -> Algorithm:
    def init(x0: Tensor, env: Env, rng: RoundRng) -> OneBitAdamState:
        zero = torch.zeros_like(x0)
        return OneBitAdamState(0, x0, zero, zero.clone(), client_rows(env), zero.clone())

    def round(s: OneBitAdamState, env: Env, rng: RoundRng) -> tuple[OneBitAdamState, RoundLog]:
        ids = sample_cohort(env, rng)  # [m]
        mm = ids.numel()
        loss, g = gradients(env, s.x.expand(mm, -1), ids, rng(seeding.BATCHES))  # [m, d]
        if s.t < freeze_step:  # full-precision Adam
            g_bar = g.mean(0)
            m = beta1 * s.m + (1 - beta1) * g_bar
            v = beta2 * s.v + (1 - beta2) * g_bar * g_bar
            e, e_s, bits = s.e, s.e_s, FLOAT_BITS * env.d
        else:  # frozen v, error-compensated 1-bit momentum both ways
            C = onebit(env.d, chunks)
            p = beta1 * s.m + (1 - beta1) * g + gather_rows(s.e, ids, env.device)  # [m, d]
            c_i, _ = C.compress(p, ids, None, rng(seeding.UPLINK))  # p = m_i + e_i
            scatter_rows(s.e, ids, p - c_i.value)
            q = c_i.value.mean(0) + s.e_s  # [d]
            c, _ = C.compress(q.unsqueeze(0), ids[:1], None, rng(seeding.DOWNLINK))
            m, v, e, e_s = c.value[0], s.v, s.e, q - c.value[0]
            bits = int(c.bits[0])
        x = s.x - lr * m / (v.sqrt() + eps)
        log = RoundLog(
            bits_vector(mm, bits, env.device),
            bits_vector(env.n, bits, env.device),  # every replica applies the step
            mm,
            {"local_loss": float(loss.mean())},
        )
        return OneBitAdamState(s.t + 1, x, m, v, e, e_s), log

    return Algorithm(init, round, lambda s: s.x)


# the downlink is its own: a configured compressor would never be applied
DOWNLINK_WHY = (
    "compresses its own downlink: the server's sign-compressed momentum with error feedback, "
    "built in (its paper's protocol)"
)

# said by `fedbench validate` for `client_state = "bfloat16"` (see the module docstring)
BF16_NOTE = "e_i's small residuals are rounded away (a test's model 60% off float32); use float16"


ALGORITHMS.add(
    Component(
        "onebit_adam",
        onebit_adam,
        {
            "lr": Param(0.01, "step size γ", low=0.0, low_open=True),
            "beta1": Param(0.9, "momentum β1", low=0.0, high=1.0, high_open=True),
            "beta2": Param(0.999, "second-moment β2", low=0.0, high=1.0, high_open=True),
            "eps": Param(1e-8, "ε added to √v", low=0.0),
            "freeze_step": Param(100, "full-precision Adam rounds before v freezes", "int", low=1),
            "chunks": Param(1, "chunks of the momentum with their own scale", "int", low=1),
        },
        "Adam warm-up, then frozen variance and sign-compressed momentum with 2-sided EF",
        paper="Tang et al., ICML 2021 (arXiv 2102.02888)",
        requires="exact",
        extra={
            "error_feedback": False,
            "local": False,
            "downlink": ("exact",),
            "downlink_why": DOWNLINK_WHY,
            "state_notes": {"bfloat16": BF16_NOTE},
        },
    )
)
