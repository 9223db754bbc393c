"""FedAsync: asynchronous federated optimisation with staleness-weighted mixing.

"Asynchronous Federated Optimization", Xie, Koyejo, Gupta, OPT 2020 workshop,
arXiv 1903.03934.

Variant: Algorithm 1 on the simulated clock (fedbench.network). `concurrency` C clients train
at any time; a client starts from the current server model x^τ and runs K local SGD steps on
f_i(y) + (ρ/2)‖y − x^τ‖² (ρ = 0: plain local SGD). When it arrives at server step t the
server mixes, x ← (1 − α_t)x + α_t y with α_t = α·s(t − τ), s ∈ {constant, polynomial
(t − τ + 1)^(−a), hinge} (§5.2), and the client is replaced at once by an idle client drawn
uniformly, who starts from the new model. Clients arriving at the same instant form one group:
one batched training pass, then their mixings are applied in id order in closed form
(x_k = Π_j(1 − α_j)x_0 + Σ_j α_j Π_{l>j}(1 − α_l) y_j), each arrival one server step. A round
is one group. The uplink sends the model y (dense, or C(y − x^τ) added back to x^τ when a
compressor is set); downlink: the dense model to each started client. With C = 1 and equal
speeds it is sequential mixing: each round one client trains from x and x ← (1 − α)x + αy.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from fedbench import seeding
from fedbench.algorithms._hetero import (
    STALENESS_PARAMS,
    Clock,
    dispatch,
    model_bits,
    phase_of,
    refill,
    staleness_weight,
)
from fedbench.algorithms.base import (
    ALGORITHMS,
    LOCAL_PARAMS,
    Algorithm,
    Correction,
    Env,
    RoundLog,
    bits_vector,
    cohort_size,
    local_sgd,
    update_compressor,
)
from fedbench.params import Component, Param
from fedbench.seeding import RoundRng


class FedAsyncState(NamedTuple):
    t: int  # server steps so far (the model's version)
    x: Tensor  # [d] server model
    clock: Clock
    up: Any  # uplink compressor state
    now: float  # simulated seconds


def mix(x: Tensor, y: Tensor, alpha: Tensor) -> Tensor:
    """Sequential mixings x ← (1 − α_j)x + α_j y_j for j = 1..k (`y [k, d]`, `alpha [k]`) in
    closed form: Π_j(1 − α_j) x + Σ_j α_j Π_{l>j}(1 − α_l) y_j."""
    keep = torch.flip(torch.cumprod(torch.flip(1.0 - alpha, [0]), 0), [0])  # Π_{l≥j}(1−α_l)
    after = torch.cat([keep[1:], keep.new_ones(1)])  # [k] Π_{l>j}(1 − α_l)
    coef = (alpha * after).to(y.dtype).unsqueeze(1)  # [k, 1]
    return float(keep[0]) * x + (coef * y).sum(0)


def fedasync(
    lr: float,
    local_steps: int,
    concurrency: int,
    alpha: float,
    rho: float,
    staleness: str,
    staleness_a: float,
    staleness_b: float,
) -> Algorithm:
    def init(x0: Tensor, env: Env, rng: RoundRng) -> FedAsyncState:
        n = env.n
        C = min(n, concurrency or cohort_size(n, env.participation))
        idle = torch.zeros(n, dtype=torch.bool)
        clock = Clock(idle, torch.full((n,), float("inf"), dtype=torch.float64),
                      torch.zeros(n, dtype=torch.int64), x0.expand(n, -1).clone())  # fmt: skip
        ids = refill(env, idle, C, 0, rng.seed, seeding.generator(rng.seed, 1, seeding.COHORT))
        phase = phase_of(env, ids, local_steps, model_bits(env), rng.seed, 0)
        up = update_compressor(env).init(n, env.d, env.device)
        return FedAsyncState(0, x0, dispatch(clock, env, ids, x0, 0, 0.0, phase), up, 0.0)

    def round(s: FedAsyncState, env: Env, rng: RoundRng) -> tuple[FedAsyncState, RoundLog]:
        clock, bits = s.clock, model_bits(env)
        now = float(clock.finish.min())
        ids = torch.nonzero(clock.finish <= now * (1 + 1e-12)).flatten()  # [k] arriving
        k, dev = ids.numel(), ids.to(env.device)
        start = clock.start[dev]  # [k, d] x^τ of each
        corr: Correction | None = None
        if rho > 0:

            def corr(y: Tensor, g: Tensor, rows: slice) -> Tensor:
                return g.add_(y - start[rows], alpha=rho)  # ∇ of (ρ/2)‖y − x^τ‖²

        y, loss = local_sgd(env, start, dev, local_steps, lr, rng(seeding.BATCHES), corr)
        msg, up = update_compressor(env).compress(y - start, dev, s.up, rng(seeding.UPLINK))
        stale = s.t + torch.arange(k) - clock.version[ids]  # t − τ of each, in order
        a = alpha * staleness_weight(staleness, staleness_a, staleness_b, stale)  # [k]
        x = mix(s.x, start + msg.value, a.to(env.device))
        version = s.t + k
        busy, finish = clock.busy.clone(), clock.finish.clone()
        busy[ids], finish[ids] = False, float("inf")
        clock = clock._replace(busy=busy, finish=finish)
        C = min(env.n, concurrency or cohort_size(env.n, env.participation))
        gen = seeding.generator(rng.seed, rng.round + 1, seeding.COHORT)
        new = refill(env, busy, C, rng.round, rng.seed, gen)  # the available idle ones
        phase = phase_of(env, new, local_steps, bits, rng.seed, rng.round)
        clock = dispatch(clock, env, new, x, version, now, phase)
        ran = torch.zeros(env.n, dtype=torch.int64)
        ran[ids] = local_steps
        extra = {"local_loss": float(loss.mean()), "alpha": float(a.mean()),
                 "staleness": float(stale.double().mean())}  # fmt: skip
        log = RoundLog(msg.bits, bits_vector(new.numel(), bits, env.device), k, extra,
                       sim_time_s=now, steps=ran)  # fmt: skip
        return FedAsyncState(version, x, clock, up, now), log

    return Algorithm(init, round, lambda s: s.x)


# the downlink is its own: a configured compressor would never be applied
DOWNLINK_WHY = (
    "starts each client from the exact current model (asynchronous: no model all clients track)"
)

ALGORITHMS.add(
    Component(
        "fedasync",
        fedasync,
        {
            **LOCAL_PARAMS,
            "concurrency": Param(
                0, "clients training at any time C (0 = the cohort size m)", "int", low=0
            ),
            "alpha": Param(0.6, "mixing hyperparameter α", low=0.0, high=1.0, low_open=True),
            "rho": Param(0.0, "local proximal coefficient ρ (0 = plain local SGD)", low=0.0),
            **STALENESS_PARAMS,
        },
        "asynchronous clients on the simulated clock; x ← (1 − α_t)x + α_t y on each arrival",
        paper="Xie, Koyejo, Gupta 2019 (arXiv 1903.03934)",
        extra={"own_cohort": True, "downlink": ("exact",), "downlink_why": DOWNLINK_WHY},
    )
)
