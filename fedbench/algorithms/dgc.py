"""Deep Gradient Compression (DGC).

"Deep Gradient Compression: Reducing the Communication Bandwidth for Distributed Training",
Lin, Han, Mao, Wang, Dally, ICLR 2018, arXiv 1712.01887.

Variant: one minibatch gradient per client per round, sparsified per layer (exact top-k of
each layer; the paper estimates the threshold from a sample). Client i ∈ S: local gradient
clipping g_i ← g_i · min(1, (clip/√m)/‖g_i‖) (clip = 0: off); momentum correction
u_i ← μu_i + g_i, v_i ← v_i + u_i; send the top (1 − s) fraction of each layer of v_i,
v_i ← v_i ⊙ ¬mask and momentum factor masking u_i ← u_i ⊙ ¬mask; server
x ← x − γ mean_{i∈S} sent_i. Warm-up: s = 75%, 93.75%, 98.4375%, 99.6% for `warmup_rounds`
rounds each, then `sparsity` (the paper's schedule over its first four epochs). Sparsity 0
sends every coordinate and, as the reference code falls back to dense all-reduce, keeps the
momentum: momentum SGD. Compression is built in: the uplink compressor must be identity.
Bits: Σ_ℓ 32k_ℓ + index bits of k_ℓ in the layer (k_ℓ ⌈log2 d_ℓ⌉ or a d_ℓ-bit mask).
u_i and v_i are `client_rows`: gathered and written back per cohort (host memory when they do
not fit the device, zero pages until a client is first sampled on a CPU, stored in
`client_state`). v_i accumulates small residuals: bfloat16 rounds them away (final model 10%
off float32's after 30 rounds of an 8-client MLP, float16 0.02%): prefer float16.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from fedbench import seeding
from fedbench.algorithms.base import (
    ALGORITHMS,
    Algorithm,
    Broadcast,
    Env,
    RoundLog,
    bits_vector,
    broadcast,
    broadcast_init,
    client_rows,
    gather_rows,
    gradients,
    sample_cohort,
    scatter_rows,
)
from fedbench.compressors.base import FLOAT_BITS, index_bits
from fedbench.params import Component, Param
from fedbench.seeding import RoundRng

WARMUP = (0.75, 0.9375, 0.984375, 0.99609375)  # 1 − 4^{-j}: the paper's 75% … 99.6%


class DGCState(NamedTuple):
    t: int
    x: Tensor  # [d]
    u: Tensor  # [n, d] velocity (`client_rows`: rows written per cohort)
    v: Tensor  # [n, d] accumulated velocity, what is not sent yet (`client_rows`, likewise)
    down: Broadcast


def sparsity_at(t: int, final: float, warmup_rounds: int) -> float:
    """The warm-up schedule: stage ⌊t / warmup_rounds⌋ of WARMUP, capped at `final`."""
    stage = t // warmup_rounds if warmup_rounds > 0 else len(WARMUP)
    return min(WARMUP[stage], final) if stage < len(WARMUP) else final


def layer_topk(v: Tensor, layers: list[tuple[int, int]], s: float) -> tuple[Tensor, int]:
    """Mask `[m, d]` of the k_ℓ = ⌈(1 − s)·d_ℓ⌉ largest |v| in each layer, and the bits of one
    message (values plus each layer's indices; a fully sent layer needs no indices)."""
    mask = torch.zeros_like(v, dtype=torch.bool)
    bits = 0
    for o, size in layers:  # a loop over layers, each batched over the cohort
        k = max(1, min(size, math.ceil((1.0 - s) * size - 1e-9)))
        idx = v[:, o : o + size].abs().topk(k, dim=1, sorted=False).indices  # [m, k]
        mask[:, o : o + size].scatter_(1, idx, True)
        bits += FLOAT_BITS * k + (index_bits(k, size) if k < size else 0)
    return mask, bits


def dgc(
    lr: float,
    momentum: float,
    sparsity: float,
    warmup_rounds: int,
    clip: float,
    masking: bool,
) -> Algorithm:
    def init(x0: Tensor, env: Env, rng: RoundRng) -> DGCState:
        return DGCState(0, x0, client_rows(env), client_rows(env), broadcast_init(env, x0))

    def round(s: DGCState, env: Env, rng: RoundRng) -> tuple[DGCState, RoundLog]:
        ids = sample_cohort(env, rng)  # [m]
        m = ids.numel()
        down, bits_down = broadcast(env, s.x, s.down, rng(seeding.DOWNLINK))
        loss, g = gradients(env, down.x_hat.expand(m, -1), ids, rng(seeding.BATCHES))
        if clip > 0:  # local clipping at clip/√m
            g = g * (clip / math.sqrt(m) / g.norm(dim=1, keepdim=True)).clamp(max=1.0)
        u = momentum * gather_rows(s.u, ids, env.device) + g  # [m, d] float32
        v = gather_rows(s.v, ids, env.device) + u
        spec = env.task.model.spec
        layers = [(o, sh.numel()) for o, sh in zip(spec.offsets, spec.shapes, strict=True)]
        sp = sparsity_at(s.t, sparsity, warmup_rounds)
        mask, bits = layer_topk(v, layers, sp)
        sent = v * mask
        scatter_rows(s.v, ids, v - sent)
        scatter_rows(s.u, ids, u * ~mask if masking and sp > 0 else u)
        x = s.x - lr * sent.mean(0)
        extra = {"local_loss": float(loss.mean()), "sparsity": sp}
        log = RoundLog(
            bits_vector(m, bits, env.device), bits_vector(m, bits_down, env.device), m, extra
        )
        return DGCState(s.t + 1, x, s.u, s.v, down), log

    return Algorithm(init, round, lambda s: s.x)


# said by `fedbench validate` for `client_state = "bfloat16"` (see the module docstring)
BF16_NOTE = "v_i's small residuals are rounded away (a test's model 10% off float32); use float16"


ALGORITHMS.add(
    Component(
        "dgc",
        dgc,
        {
            "lr": Param(0.1, "step size γ", low=0.0, low_open=True),
            "momentum": Param(0.9, "momentum μ, accumulated locally", low=0.0, high=1.0),
            "sparsity": Param(0.999, "final fraction of each layer not sent", low=0.0, high=1.0),
            "warmup_rounds": Param(
                0, "rounds per warm-up stage (75%, 93.75%, 98.4375%, 99.6%); 0 = none", "int", low=0
            ),
            "clip": Param(0.0, "gradient-norm clip (clients: clip/√m); 0 = off", low=0.0),
            "masking": Param(True, "momentum factor masking: u_i = 0 where v_i was sent", "bool"),
        },
        "per-layer top-k of locally accumulated momentum; clipping, masking, warm-up",
        paper="Lin, Han, Mao, Wang, Dally, ICLR 2018 (arXiv 1712.01887)",
        requires="exact",
        extra={"error_feedback": False, "local": False, "state_notes": {"bfloat16": BF16_NOTE}},
    )
)
