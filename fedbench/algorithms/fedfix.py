"""FedFix: asynchronous clients, server aggregation at fixed time slots.

"A General Theory for Federated Optimization with Asynchronous and Heterogeneous Clients
Updates", Fraboni, Vidal, Kameni, Lorenzi, JMLR 2023, arXiv 2206.10189.

Variant: on the simulated clock (fedbench.network), C clients (`concurrency`, default the
cohort m) each run K local SGD steps from the model they received. Every `slot_s` simulated
seconds the server aggregates whatever updates arrived since the last slot,
x ← x + Σ_{i arrived} p_i C(Δ_i) with Δ_i = y_i − x^{τ_i} and p_i = 1/C (`weights =
"uniform"`: the paper's p_i = n_i/N with clients weighing equally, as fedavg here) or
p_i = (n_i/N)·(n/C) (`weights = "data"`: the paper's data shares, scaled so that C concurrent
clients of average size weigh 1 in all; with C = n exactly the paper's n_i/N); clients
still training keep going on their old model and contribute at a later slot. The clients that
arrived are replaced by idle clients drawn uniformly among the available ones (all of them when
C = n), who start from the new model at the slot time. A round is one slot (possibly with no
arrival). `slot_s = 0` is the phase of a 1× worker (dense messages): with equal speeds every
client arrives by each slot, and FedFix is FedAvg (to rounding: Σ/C for the mean).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from fedbench import seeding
from fedbench.algorithms._hetero import (
    Clock,
    dispatch,
    model_bits,
    phase_of,
    refill,
    the_network,
)
from fedbench.algorithms.base import (
    ALGORITHMS,
    LOCAL_PARAMS,
    Algorithm,
    Env,
    RoundLog,
    bits_vector,
    cohort_size,
    local_sgd,
    update_compressor,
)
from fedbench.algorithms.fednova import WEIGHTS
from fedbench.network import phase_seconds
from fedbench.params import Component, Param
from fedbench.seeding import RoundRng


class FedFixState(NamedTuple):
    t: int  # slots so far (the model's version)
    x: Tensor  # [d] server model
    clock: Clock
    up: Any  # uplink compressor state


def fedfix(lr: float, local_steps: int, concurrency: int, slot_s: float, weights: str) -> Algorithm:
    def conc(env: Env) -> int:
        return min(env.n, concurrency or cohort_size(env.n, env.participation))

    def slot(env: Env) -> float:
        if slot_s > 0:
            return slot_s
        bits = float(model_bits(env))
        one = torch.ones(1, dtype=torch.float64)
        return float(phase_seconds(the_network(env), one * local_steps, one, bits, bits)[0])

    def init(x0: Tensor, env: Env, rng: RoundRng) -> FedFixState:
        n = env.n
        idle = torch.zeros(n, dtype=torch.bool)
        clock = Clock(idle, torch.full((n,), float("inf"), dtype=torch.float64),
                      torch.zeros(n, dtype=torch.int64), x0.expand(n, -1).clone())  # fmt: skip
        gen = seeding.generator(rng.seed, 1, seeding.COHORT)
        ids = refill(env, idle, conc(env), 0, rng.seed, gen)
        phase = phase_of(env, ids, local_steps, model_bits(env), rng.seed, 0)
        up = update_compressor(env).init(n, env.d, env.device)
        return FedFixState(0, x0, dispatch(clock, env, ids, x0, 0, 0.0, phase), up)

    def round(s: FedFixState, env: Env, rng: RoundRng) -> tuple[FedFixState, RoundLog]:
        clock, bits, C = s.clock, model_bits(env), conc(env)
        now = (s.t + 1) * slot(env)  # this slot's time
        arrived = clock.busy & (clock.finish <= now * (1 + 1e-9))
        ids = torch.nonzero(arrived).flatten()  # [k]
        k, x, up = ids.numel(), s.x, s.up
        ran = torch.zeros(env.n, dtype=torch.int64)
        extra = {"arrivals": float(k)}
        bits_up = torch.zeros(0, dtype=torch.int64, device=env.device)
        if k > 0:
            dev = ids.to(env.device)
            start = clock.start[dev]  # [k, d]
            y, loss = local_sgd(env, start, dev, local_steps, lr, rng(seeding.BATCHES))
            msg, up = update_compressor(env).compress(y - start, dev, s.up, rng(seeding.UPLINK))
            if weights == "uniform":
                x = s.x + msg.value.sum(0) / C  # Σ p_i C(Δ_i), p_i = 1/C
            else:  # p_i = (n_i / N)·(n / C)
                counts = env.task.data.counts.to(torch.float64)  # [n]
                p = counts[ids.to(counts.device)] / counts.sum() * (env.n / C)  # [k]
                p = p.to(device=env.device, dtype=msg.value.dtype).unsqueeze(1)
                x = s.x + (p * msg.value).sum(0)
            bits_up, ran[ids] = msg.bits, local_steps
            extra["local_loss"] = float(loss.mean())
            stale = (s.t - clock.version[ids]).double()
            extra["staleness"] = float(stale.mean())
        busy, finish = clock.busy.clone(), clock.finish.clone()
        busy[ids], finish[ids] = False, float("inf")
        clock = clock._replace(busy=busy, finish=finish)
        gen = seeding.generator(rng.seed, rng.round + 1, seeding.COHORT)
        new = refill(env, busy, C, rng.round, rng.seed, gen)  # the available idle ones
        phase = phase_of(env, new, local_steps, bits, rng.seed, rng.round)
        clock = dispatch(clock, env, new, x, s.t + 1, now, phase)
        log = RoundLog(bits_up, bits_vector(new.numel(), bits, env.device), k, extra,
                       sim_time_s=now, steps=ran)  # fmt: skip
        return FedFixState(s.t + 1, x, clock, up), log

    return Algorithm(init, round, lambda s: s.x)


# the downlink is its own: a configured compressor would never be applied
DOWNLINK_WHY = (
    "starts each client from the exact current model (asynchronous: no model all clients track)"
)

ALGORITHMS.add(
    Component(
        "fedfix",
        fedfix,
        {
            **LOCAL_PARAMS,
            "concurrency": Param(
                0, "clients training at any time C (0 = the cohort size m)", "int", low=0
            ),
            "slot_s": Param(
                0.0, "simulated seconds between aggregations (0 = one 1× worker's phase)", low=0.0
            ),
            "weights": WEIGHTS,
        },
        "asynchronous clients; the server aggregates what arrived at fixed time slots",
        paper="Fraboni et al., JMLR 2023 (arXiv 2206.10189)",
        extra={"own_cohort": True, "downlink": ("exact",), "downlink_why": DOWNLINK_WHY},
    )
)
