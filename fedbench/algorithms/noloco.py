"""NoLoCo: no all-reduce; each worker averages with random partners after its inner steps.

"NoLoCo: No-all-reduce Low Communication Training Method for Large Models", Kolehmainen,
Blagoev, Donaghy, Ersoy, Nies, 2025, arXiv 2506.10911 (code jkolehm/noloco,
`sparse_optimizer_c.py`).

Variant: the outer step of the reference code, without pipeline routing. Worker i keeps outer
weights φ_i, outer momentum δ_i and its inner optimiser state (AdamW as in DiLoCo; the code
uses Adam, i.e. weight_decay = 0). Every round all workers run H inner steps from θ_i = φ_i;
a random permutation from the round's ALGORITHM generator, cut into groups of G (member j of
group r is permutation entry r + j·n/G, as the code's `batched`), pairs them; within each group
the workers exchange φ_j and Δ_j = θ_j − φ_j and take
δ_i ← μδ_i + η mean_G Δ_j + η(mean_G φ_j − φ_i),  φ_i ← φ_i + δ_i,  θ_i ← φ_i.
G = n with equal φ_i is DiLoCo with heavy-ball outer momentum (δ = −ηm).
Bits: each worker sends 2·32d (φ_i and Δ_i) to each of its G − 1 partners and receives the same.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from fedbench import seeding
from fedbench.algorithms.base import ALGORITHMS, Algorithm, Env, RoundLog, bits_vector
from fedbench.algorithms.diloco import (
    INNER_KEYS,
    INNER_PARAMS,
    Inner,
    InnerState,
    inner_init,
    inner_train,
)
from fedbench.compressors.base import FLOAT_BITS
from fedbench.params import Component, Param
from fedbench.seeding import RoundRng


class NoLoCoState(NamedTuple):
    t: int
    phi: Tensor  # [n, d] outer weights φ_i
    delta: Tensor  # [n, d] outer momentum δ_i
    inner: InnerState


def groups(n: int, size: int, gen: torch.Generator) -> Tensor:
    """Group id `[n]` of every worker: a random partition into n/size groups of `size`."""
    perm = torch.randperm(n, generator=gen, device=gen.device)
    gid = torch.empty(n, dtype=torch.int64, device=gen.device)
    gid[perm] = torch.arange(n, device=gen.device) % (n // size)
    return gid


def group_mean(x: Tensor, gid: Tensor, k: int) -> Tensor:
    """Each row's group mean `[n, d]` of `x [n, d]` (k groups of equal size)."""
    sums = torch.zeros(k, x.shape[1], device=x.device).index_add_(0, gid, x)
    return (sums / (x.shape[0] // k))[gid]


def noloco(
    local_steps: int, outer_lr: float, outer_momentum: float, group_size: int, **inner: Any
) -> Algorithm:
    h = Inner(**{k: inner[k] for k in INNER_KEYS})

    def init(x0: Tensor, env: Env, rng: RoundRng) -> NoLoCoState:
        if env.n % group_size:
            raise ValueError(f"group_size = {group_size} must divide the {env.n} workers")
        phi = x0.expand(env.n, -1).clone()
        return NoLoCoState(0, phi, torch.zeros_like(phi), inner_init(env))

    def round(s: NoLoCoState, env: Env, rng: RoundRng) -> tuple[NoLoCoState, RoundLog]:
        ids = torch.arange(env.n, device=env.device)
        theta, loss = inner_train(env, h, s.inner, s.phi, ids, local_steps, rng(seeding.BATCHES))
        k = env.n // group_size
        gid = groups(env.n, group_size, rng(seeding.ALGORITHM)).to(env.device)
        drift = group_mean(theta - s.phi, gid, k)  # mean_G Δ_j
        pull = group_mean(s.phi, gid, k) - s.phi  # mean_G φ_j − φ_i
        delta = outer_momentum * s.delta + outer_lr * drift + outer_lr * pull
        bits = 2 * FLOAT_BITS * env.d
        up = bits_vector(env.n * (group_size - 1), bits, env.device)  # one per partner
        down = bits_vector(env.n, bits * (group_size - 1), env.device)
        log = RoundLog(up, down, env.n, {"local_loss": float(loss.mean())})
        return NoLoCoState(s.t + 1, s.phi + delta, delta, s.inner), log

    return Algorithm(init, round, lambda s: s.phi.mean(0))


# the downlink is its own: a configured compressor would never be applied
DOWNLINK_WHY = (
    "has no server: workers exchange exact models with random partners (its paper's protocol)"
)

ALGORITHMS.add(
    Component(
        "noloco",
        noloco,
        {
            **INNER_PARAMS,
            "lr": Param(6e-4, "inner learning rate (peak of the schedule)", low=0.0, low_open=True),
            "weight_decay": Param(0.0, "decoupled weight decay (0: Adam, as the code)", low=0.0),
            "local_steps": Param(50, "inner steps H per outer step", "int", low=1),
            "outer_lr": Param(0.7, "outer learning rate η", low=0.0, low_open=True),
            "outer_momentum": Param(0.5, "outer momentum μ", low=0.0, high=1.0, high_open=True),
            "group_size": Param(2, "G: workers averaging together each round", "int", low=1),
        },
        "no all-reduce: random groups of G average outer weights and pseudo-gradients",
        paper="Kolehmainen et al. 2025 (arXiv 2506.10911)",
        requires="exact",
        extra={
            "error_feedback": False,
            "availability": False,
            "downlink": ("exact",),
            "downlink_why": DOWNLINK_WHY,
        },  # draws its own clients
        check=lambda cfg: (
            []
            if cfg["task"]["clients"] % cfg["algorithm"]["group_size"] == 0
            else [
                f"algorithm.group_size = {cfg['algorithm']['group_size']}: noloco splits the "
                f"{cfg['task']['clients']} clients into groups of this size; allowed: a divisor "
                "of task.clients"
            ]
        ),
    )
)
