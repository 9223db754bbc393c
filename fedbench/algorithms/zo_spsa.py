"""Shared-randomness SPSA with one byte per sample ("Just One Byte").

"Just One Byte (per gradient): A Note on Low-Bandwidth Decentralized Language Model Finetuning
Using Shared Randomness", Zelikman, Huang, Liang, Haber, Goodman, 2023, arXiv 2306.10015;
reference code `ezelikman/justonebyte` (app.py).

Variant: every replica holds x. Round t: perturbations z_ij ~ N(0, I_d), one per (client,
sample), drawn from the round's shared seed, so every replica regenerates all of them (the paper
seeds by (machine, sample)). Client i ∈ S evaluates
p_ij = (f_ij(x + εz_ij) − f_ij(x − εz_ij))/(2ε) on its j-th minibatch, quantises
it to one byte (sign bit and a 7-bit code of ln|p| in steps of 1/8, |p| ∈ [e^-8, e^7.875]) and
sends it. Every replica decodes the bytes, regenerates z_ij from the seed and applies
x ← x − γ (1/(mJ)) Σ_i Σ_j p̂_ij z_ij. Zeroth order: no backward pass is needed (the simulator
reuses the task's loss). Bits: 8J up; each of the n replicas receives the m·J bytes. The byte
code is ours (app.py exchanges the scalars as JSON floats): exactly 8 bits, log-spaced.
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
    sample_cohort,
)
from fedbench.params import Component, Param
from fedbench.seeding import RoundRng

BYTE_BITS = 8
LOG_STEP = 8.0  # codes per unit of ln|p|
CODE_MIN, CODE_MAX = -64, 63  # 7 bits of magnitude code, plus the sign bit


class ZOState(NamedTuple):
    t: int
    x: Tensor  # [d] every replica's model
    codes: Tensor  # [m, J] int8 bytes of the last round (magnitude code; sign in `signs`)
    signs: Tensor  # [m, J] int8 ±1 (or 0 for p = 0)


def encode(p: Tensor) -> tuple[Tensor, Tensor]:
    """One byte per scalar: sign and clamp(round(8 ln|p|), −64, 63)."""
    code = (LOG_STEP * p.abs().clamp_min(1e-30).log()).round().clamp(CODE_MIN, CODE_MAX)
    return code.to(torch.int8), p.sign().to(torch.int8)


def decode(code: Tensor, sign: Tensor) -> Tensor:
    return sign.float() * torch.exp(code.float() / LOG_STEP)


def apply_bytes(x: Tensor, code: Tensor, sign: Tensor, z: Tensor, lr: float) -> Tensor:
    """What every replica computes from the bytes `[m, J]` and z `[m, J, d]`:
    x − γ (1/(mJ)) Σ_ij p̂_ij z_ij."""
    return x - lr * torch.einsum("mj,mjd->d", decode(code, sign), z) / code.numel()


def perturbations(rng: RoundRng, m: int, samples: int, d: int, device: torch.device) -> Tensor:
    """z `[m, J, d]` for the cohort's (client, sample) pairs from the round's shared seed:
    every replica draws the same."""
    z = torch.randn(m, samples, d, generator=rng(seeding.ALGORITHM), device=rng.device)
    return z.to(device)


def projected_gradients(
    env: Env, x: Tensor, ids: Tensor, z: Tensor, eps: float, gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    """p_ij `[m, J]` for z `[m, J, d]` and the mean loss at x ± εz `[m]`; one minibatch per
    (i, j)."""
    m, J = z.shape[0], z.shape[1]
    rows = ids.repeat_interleave(J)  # [m·J] client of each (i, j)
    idx = None
    if env.batch_size != "full":
        idx = env.task.batch_indices(ids, J, int(env.batch_size), gen).flatten(0, 1)  # [mJ, B]
    zz = z.flatten(0, 1)  # [m·J, d]
    f_plus, _ = env.task.loss_grad(x + eps * zz, rows, idx)
    f_minus, _ = env.task.loss_grad(x - eps * zz, rows, idx)
    p = ((f_plus - f_minus) / (2 * eps)).view(m, J)
    return p, (f_plus + f_minus).view(m, J).mean(1) / 2


def zo_spsa(lr: float, eps: float, samples: int) -> Algorithm:
    def init(x0: Tensor, env: Env, rng: RoundRng) -> ZOState:
        none = torch.zeros(0, samples, dtype=torch.int8, device=env.device)
        return ZOState(0, x0, none, none)

    def round(s: ZOState, env: Env, rng: RoundRng) -> tuple[ZOState, RoundLog]:
        ids = sample_cohort(env, rng)  # [m]
        m = ids.numel()
        z = perturbations(rng, m, samples, env.d, env.device)  # [m, J, d]
        p, loss = projected_gradients(env, s.x, ids, z, eps, rng(seeding.BATCHES))
        code, sign = encode(p)  # the bytes on the wire
        x = apply_bytes(s.x, code, sign, z, lr)
        log = RoundLog(
            bits_vector(m, BYTE_BITS * samples, env.device),
            bits_vector(env.n, BYTE_BITS * samples * m, env.device),
            m,
            {"local_loss": float(loss.mean())},
        )
        return ZOState(s.t + 1, x, code, sign), log

    return Algorithm(init, round, lambda s: s.x)


# the downlink is its own: a configured compressor would never be applied
DOWNLINK_WHY = (
    "sends the clients' bytes down, not a model: each replica rebuilds the step from the "
    "shared seed (its paper's protocol)"
)

ALGORITHMS.add(
    Component(
        "zo_spsa",
        zo_spsa,
        {
            "lr": Param(0.01, "step size γ", low=0.0, low_open=True),
            "eps": Param(1e-3, "perturbation size ε", low=0.0, low_open=True),
            "samples": Param(1, "perturbations J per client per round", "int", low=1),
        },
        "zeroth order: one byte per shared-seed perturbation (two forward passes each)",
        paper="Zelikman et al. 2023 (arXiv 2306.10015)",
        requires="exact",
        extra={
            "error_feedback": False,
            "local": False,
            "downlink": ("exact",),
            "downlink_why": DOWNLINK_WHY,
        },
    )
)
