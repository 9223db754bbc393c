"""CO2: local updating with the all-reduce of the outer step fully overlapped with computation.

"CO2: Efficient Distributed Training with Full Communication-Computation Overlap", Sun, Qin,
Sun, Li, Li, Shen, Qiao, Zhong, ICLR 2024, arXiv 2401.16265 (official code: weigao266/
fairscale-CO2, `co2.py`).

Variant: local SGD inner steps (the paper trains with AdamW inside; here the inner optimiser
is plain SGD, as fedavg). Round t: the cohort starts from θ and runs K local steps; its mean
pseudo-gradient Δ_t = θ − mean_i y_i is all-reduced while the next inner phase runs, so the
outer step of round t uses the previous round's Δ_{t−1} (one-step staleness):
m ← μm + Δ_{t−1}/λ (λ the staleness-gap penalty), m ← clip(m, −c, c) elementwise when
`clip`, θ ← θ − η m (the official `_perform_local_optimization`; there the clamp's result is
discarded, so clipping is a no-op in that code, here it is applied). With `overlap = false`
the outer step uses Δ_t at once: DiLoCo-style local SGD with heavy-ball outer momentum
(diloco with inner SGD and nesterov = false; λ = 1, no clip). Simulated time per round: the
slowest worker's compute, plus the all-reduce (up and down, latency) when not overlapped, or
max(compute, all-reduce) when overlapped.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from fedbench import seeding
from fedbench.algorithms._hetero import the_network
from fedbench.algorithms.base import (
    ALGORITHMS,
    LOCAL_PARAMS,
    Algorithm,
    Env,
    RoundLog,
    local_sgd,
    sample_cohort,
    update_compressor,
)
from fedbench.network import MBIT, NETWORK, stragglers
from fedbench.params import Component, Param
from fedbench.seeding import RoundRng


class CO2State(NamedTuple):
    t: int
    theta: Tensor  # [d] outer model θ
    m: Tensor  # [d] outer momentum
    pending: Tensor | None  # [d] Δ_{t−1} in flight (overlap), None before the first
    up: Any  # uplink compressor state
    now: float  # simulated seconds


def outer(theta: Tensor, m: Tensor, delta: Tensor, lr: float, mu: float, lam: float,
          clip: float | None) -> tuple[Tensor, Tensor]:  # fmt: skip
    """m ← μm + Δ/λ (clipped to [−c, c] when asked); θ ← θ − η m."""
    m = mu * m + delta / lam if lam != 1.0 else mu * m + delta
    if clip is not None:
        m = m.clamp(-clip, clip)
    return theta - lr * m, m


def co2(
    lr: float,
    local_steps: int,
    outer_lr: float,
    outer_momentum: float,
    gap_penalty: float,
    clip: bool,
    clip_threshold: float,
    overlap: bool,
) -> Algorithm:
    c = clip_threshold if clip else None

    def seconds(env: Env, ids: Tensor, bits: float, rng: RoundRng) -> float:
        net = the_network(env)
        cpu = ids.cpu()
        slow = net.slowdown[cpu] * stragglers(net, cpu.numel(), seeding.generator(
            rng.seed, rng.round, NETWORK))  # fmt: skip
        compute = float((local_steps * net.step_ms * slow / 1000.0).max())
        comm = bits / (net.uplink_mbps * MBIT) + bits / (net.downlink_mbps * MBIT)
        comm += 2.0 * net.latency_ms / 1000.0
        return max(compute, comm) if overlap else compute + comm

    def init(x0: Tensor, env: Env, rng: RoundRng) -> CO2State:
        up = update_compressor(env).init(env.n, env.d, env.device)
        return CO2State(0, x0, torch.zeros_like(x0), None, up, 0.0)

    def round(s: CO2State, env: Env, rng: RoundRng) -> tuple[CO2State, RoundLog]:
        ids = sample_cohort(env, rng)  # [m]
        y, loss = local_sgd(env, s.theta, ids, local_steps, lr, rng(seeding.BATCHES))
        msg, up = update_compressor(env).compress(s.theta - y, ids, s.up, rng(seeding.UPLINK))
        delta = msg.value.mean(0)  # Δ_t [d] after the all-reduce
        theta, m, pending = s.theta, s.m, s.pending
        if not overlap:
            theta, m = outer(theta, m, delta, outer_lr, outer_momentum, gap_penalty, c)
        else:
            if pending is not None:  # the all-reduce of Δ_{t−1} finished during this phase
                theta, m = outer(theta, m, pending, outer_lr, outer_momentum, gap_penalty, c)
            pending = delta
        k = ids.numel()
        bits = float(msg.bits.max())
        now = s.now + seconds(env, ids, bits, rng)
        extra = {"local_loss": float(loss.mean()), "momentum_norm": float(m.norm())}
        down = msg.bits.clone()  # the all-reduce returns as much as each worker sent
        log = RoundLog(msg.bits, down, k, extra, sim_time_s=now)
        return CO2State(s.t + 1, theta, m, pending, up, now), log

    return Algorithm(init, round, lambda s: s.theta)


# the downlink is its own: a configured compressor would never be applied
DOWNLINK_WHY = (
    "all-reduces the pseudo-gradients: each worker gets back what it sent through the uplink "
    "compressor (its paper's protocol)"
)

ALGORITHMS.add(
    Component(
        "co2",
        co2,
        {
            **LOCAL_PARAMS,
            "outer_lr": Param(1.0, "outer learning rate η", low=0.0, low_open=True),
            "outer_momentum": Param(0.5, "outer momentum μ", low=0.0, high=1.0, high_open=True),
            "gap_penalty": Param(1.0, "staleness-gap penalty λ (m += Δ/λ)", low=0.0, low_open=True),
            "clip": Param(False, "clip the outer momentum elementwise to [−c, c]", "bool"),
            "clip_threshold": Param(
                1.0, "c of the outer-momentum clipping", low=0.0, low_open=True
            ),
            "overlap": Param(
                True, "overlap the all-reduce with the next phase (stale by 1)", "bool"
            ),
        },
        "local SGD; outer momentum on the one-round-stale all-reduced pseudo-gradient (overlap)",
        paper="Sun et al., ICLR 2024 (arXiv 2401.16265)",
        extra={"downlink": ("exact",), "downlink_why": DOWNLINK_WHY},
    )
)
