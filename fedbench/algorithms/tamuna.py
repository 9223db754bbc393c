"""TAMUNA: local training with control variates, sparsified uplink and partial participation.

"TAMUNA: Doubly Accelerated Distributed Optimization with Local Training, Compression, and
Partial Participation", Condat, Agarský, Malinovsky, Richtárik, arXiv 2302.09832.

Variant: Algorithm 1 as recalled (not verified against the paper's text, which the search
corpus does not hold), with a fixed number of local steps K per round. The server holds x̄;
every client a control variate h_i (h_i⁰ = 0: Σ_i h_i = 0, kept by every round). Round r:
  cohort Ω of c clients (sample_cohort); each starts from x̄ and runs K steps
  x_i ← x_i − γ (∇f_i(x_i) − h_i);
  a shared random pattern gives each coordinate s owners in Ω (a random permutation of the
  cohort and of the coordinates: coordinate σ(j) goes to cohort slots (j·s + k) mod c,
  k < s), so every client owns ⌊sd/c⌋ or ⌈sd/c⌉ coordinates; client i sends q_i ⊙ x_i;
  x̄ ← (1/s) Σ_{i∈Ω} q_i ⊙ x_i;  h_i ← h_i + (η/γ) q_i ⊙ (x̄ − x_i) for i ∈ Ω.
Σ_{i∈Ω} q_i ⊙ (x̄ − x_i) = 0 coordinate by coordinate, so Σ_i h_i stays 0. η = "auto" = 1/K
(Scaffnew's p/γ with p = 1/K; the paper's η also carries an s, c factor — not reproduced).
Bits: 32 per owned coordinate up (the pattern comes from shared randomness: no indices, the
same under both conventions), 32·d down (x̄ to the cohort). s = c is no compression; with
c = n it is Scaffnew with K deterministic local steps (tested against a reference loop).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from fedbench import seeding
from fedbench.algorithms.base import (
    ALGORITHMS,
    LOCAL_PARAMS,
    Algorithm,
    Env,
    RoundLog,
    bits_vector,
    client_rows,
    gather_rows,
    local_sgd,
    sample_cohort,
    scatter_rows,
)
from fedbench.compressors.base import FLOAT_BITS
from fedbench.params import Component, Param
from fedbench.seeding import RoundRng


class TamunaState(NamedTuple):
    t: int
    x_bar: Tensor  # [d] x̄, the server model
    h_i: Tensor  # [n, d] control variates, Σ_i h_i = 0 (rows updated in place)


def ownership(d: int, c: int, s: int, gen: torch.Generator, device: torch.device) -> Tensor:
    """Mask q `[c, d]` (float 0/1): every coordinate owned by exactly s of the c cohort slots,
    every slot owning ⌊sd/c⌋ or ⌈sd/c⌉ coordinates."""
    slot = torch.randperm(c, generator=gen, device=gen.device).to(device)  # [c]
    coord = torch.randperm(d, generator=gen, device=gen.device).to(device)  # [d]
    j = torch.arange(d, device=device)
    owners = slot[(j[:, None] * s + torch.arange(s, device=device)) % c]  # [d, s]
    q = torch.zeros(c, d, device=device)
    q[owners, coord[:, None].expand(d, s)] = 1.0
    return q


def tamuna(lr: float, local_steps: int, s: int, eta: float | str) -> Algorithm:
    def dual_step(eta: float | str) -> float:
        if isinstance(eta, str):
            if eta != "auto":
                raise ValueError(f'eta must be a number or "auto", got {eta!r}')
            return 1.0 / local_steps
        return float(eta)

    def init(x0: Tensor, env: Env, rng: RoundRng) -> TamunaState:
        return TamunaState(0, x0, client_rows(env))

    def round(s_: TamunaState, env: Env, rng: RoundRng) -> tuple[TamunaState, RoundLog]:
        ids = sample_cohort(env, rng)
        c = ids.numel()
        owners = min(s, c)
        h = gather_rows(s_.h_i, ids, env.device)  # [c, d]
        x, loss = local_sgd(
            env,
            s_.x_bar,
            ids,
            local_steps,
            lr,
            rng(seeding.BATCHES),
            correction=lambda y, g, rows: g - h[rows],
        )  # [c, d]
        q = ownership(env.d, c, owners, rng(seeding.UPLINK), env.device)  # [c, d]
        x_bar = (q * x).sum(0) / owners  # [d]
        h_new = h + (dual_step(eta) / lr) * q * (x_bar - x)
        scatter_rows(s_.h_i, ids, h_new)  # rows written back in place
        bits_up = q.sum(1).long() * FLOAT_BITS  # [c]
        log = RoundLog(
            bits_up,
            bits_vector(c, FLOAT_BITS * env.d, env.device),
            c,
            {"local_loss": float(loss.mean())},
        )
        return TamunaState(s_.t + 1, x_bar, s_.h_i), log

    return Algorithm(init, round, lambda s_: s_.x_bar)


# the downlink is its own: a configured compressor would never be applied
DOWNLINK_WHY = "sends the exact x̄ down (its paper compresses the uplink only)"

ALGORITHMS.add(
    Component(
        "tamuna",
        tamuna,
        {
            **LOCAL_PARAMS,
            "s": Param(
                2, "owners s of each coordinate in the cohort (s = c: no compression)", "int", low=1
            ),
            "eta": Param(
                "auto",
                'dual step η of the control variates, or "auto" = 1/K',
                "float_or_str",
                choices=("auto",),
                low=0.0,
                high=1.0,
                low_open=True,
            ),
        },
        "local steps with control variates, each coordinate uploaded by s cohort clients",
        paper="Condat, Agarský, Malinovsky, Richtárik, 2023 (arXiv 2302.09832)",
        requires="exact",
        extra={
            "error_feedback": False,
            "local": True,
            "downlink": ("exact",),
            "downlink_why": DOWNLINK_WHY,
        },
    )
)
