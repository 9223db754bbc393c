"""Asynchronous Local-SGD with Delayed Nesterov momentum and Dynamic Local Updates.

"Asynchronous Local-SGD Training for Language Modeling", Liu, Chhaparia, Douillard, Kale,
Rusu, Shen, Szlam, Ranzato, 2024, arXiv 2401.09135 (toy notebook google-deepmind/asyncdiloco).

Variant: event simulation in simulated time. Worker w (slowdown s_w from `[network]`; all
equal without one) starts a local phase from the current server θ, runs H_w inner AdamW steps
(as DiLoCo) and arrives at start + phase time (`fedbench.network.phase_seconds`). A round is
the next arrival time: the workers arriving then are trained together (one batched pass per
distinct H_w) from the (possibly stale) θ they started from, their pseudo-gradients
g = θ_start − θ_end are applied as they are (no staleness weighting), in worker order, and
they restart from the new θ. Server, Delayed Nesterov (period N, default N = n): each arrival
Δ ← Δ + g, θ ← θ − (ε/N)g; every N-th arrival m ← μm + Δ/N, θ ← θ − εμm, Δ ← 0 — over N
arrivals from one θ this is exactly DiLoCo's Nesterov step on their mean. Without it
(`delayed_nesterov = false`) each arrival is its own Nesterov step with lr ε/N. DyLU
(`dynamic_local_steps`): H_w = max(1, ⌊H · min_j s_j / s_w⌋), faster workers do more steps.
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
    OUTER_PARAMS,
    Inner,
    InnerState,
    inner_init,
    inner_train,
)
from fedbench.compressors.base import FLOAT_BITS
from fedbench.network import NETWORK, Network, build_network, phase_seconds, stragglers
from fedbench.params import Component, Param
from fedbench.seeding import RoundRng


class AsyncState(NamedTuple):
    t: int
    theta: Tensor  # [d] server model θ
    m: Tensor  # [d] outer momentum
    delta: Tensor  # [d] DN buffer Δ: pseudo-gradients since the last momentum update
    arrivals: int  # pseudo-gradients applied so far
    start: Tensor  # [n, d] the θ each worker's current phase started from
    version: Tensor  # [n] int64 arrivals applied when each phase started (for staleness)
    finish: Tensor  # [n] float64 simulated time each phase ends
    inner: InnerState


def delayed_nesterov(s: AsyncState, g: Tensor, lr: float, mu: float, N: int) -> AsyncState:
    """Apply arrivals `g [k, d]` in order: a loop over momentum periods, not over workers."""
    theta, m, delta, c, j = s.theta, s.m, s.delta, s.arrivals, 0
    while j < g.shape[0]:
        e = min(g.shape[0], j + N - c % N)  # up to the next N-th arrival
        part = g[j:e].sum(0)
        theta, delta, c, j = theta - (lr / N) * part, delta + part, c + e - j, e
        if c % N == 0:
            m = mu * m + delta / N
            theta, delta = theta - lr * mu * m, torch.zeros_like(delta)
    return s._replace(theta=theta, m=m, delta=delta, arrivals=c)


def nesterov_each(s: AsyncState, g: Tensor, lr: float, mu: float) -> AsyncState:
    """One Nesterov step per arrival (m_j = μm_{j−1} + g_j, θ ← θ − lr(g_j + μm_j)) for
    `g [k, d]`, in closed form: coefficients of every g_i and of m_0."""
    k = g.shape[0]
    r = torch.arange(k, 0, -1, device=g.device, dtype=g.dtype)  # k − i + 1 terms after g_i
    geo = (1 - mu**r) / (1 - mu)  # Σ_{q<r} μ^q
    m = mu**k * s.m + ((mu ** (r - 1)).unsqueeze(1) * g).sum(0)
    theta = s.theta - lr * ((1 + mu * geo).unsqueeze(1) * g).sum(0) - lr * mu * mu * geo[0] * s.m
    return s._replace(theta=theta, m=m, arrivals=s.arrivals + k)


def async_local_sgd(
    local_steps: int,
    outer_lr: float,
    outer_momentum: float,
    delayed_nesterov_: bool,
    dynamic_local_steps: bool,
    update_period: int,
    **inner: Any,
) -> Algorithm:
    h = Inner(**{k: inner[k] for k in INNER_KEYS})

    def setup(env: Env) -> tuple[Network, Tensor, float]:
        net = env.network if env.network is not None else build_network({}, env.n, 0)
        fast = net.slowdown.min() / net.slowdown
        dylu = (local_steps * fast).floor().clamp_min(1)
        steps = dylu if dynamic_local_steps else torch.full_like(fast, local_steps)
        return net, steps.long(), float(FLOAT_BITS * env.d)

    def phases(env: Env, ids: Tensor, rng_seed: int, rnd: int) -> Tensor:
        net, steps, bits = setup(env)
        gen = seeding.generator(rng_seed, rnd, NETWORK)
        slow = net.slowdown[ids] * stragglers(net, ids.numel(), gen)
        return phase_seconds(net, steps[ids], slow, bits, bits)  # [k] float64, CPU

    def init(x0: Tensor, env: Env, rng: RoundRng) -> AsyncState:
        z, n = torch.zeros_like(x0), env.n
        everyone = torch.arange(n)
        return AsyncState(
            0, x0, z, z.clone(), 0, x0.expand(n, -1).clone(), torch.zeros(n, dtype=torch.int64),
            phases(env, everyone, rng.seed, rng.round), inner_init(env),
        )  # fmt: skip

    def round(s: AsyncState, env: Env, rng: RoundRng) -> tuple[AsyncState, RoundLog]:
        now = float(s.finish.min())
        ids = torch.nonzero(s.finish <= now * (1 + 1e-12)).flatten()  # [k] arriving together
        _, steps, bits = setup(env)
        g = torch.empty(ids.numel(), env.d, device=env.device)
        gen, losses = rng(seeding.BATCHES), []
        for H in steps[ids].unique().tolist():  # one batched pass per distinct H_w
            sel = ids[steps[ids] == H]
            dev = sel.to(env.device)
            y, loss = inner_train(env, h, s.inner, s.start[dev], dev, int(H), gen)
            g[steps[ids] == H] = s.start[dev] - y
            losses.append(loss)
        N = update_period or env.n
        if delayed_nesterov_:
            s = delayed_nesterov(s, g, outer_lr, outer_momentum, N)
        else:
            s = nesterov_each(s, g, outer_lr / N, outer_momentum)
        staleness = float((s.arrivals - ids.numel() - s.version[ids]).double().mean())
        dev = ids.to(env.device)
        s.start[dev] = s.theta
        s.version[ids] = s.arrivals
        s.finish[ids] = now + phases(env, ids, rng.seed, rng.round)
        k = ids.numel()
        ran = torch.zeros(env.n, dtype=torch.int64)
        ran[ids] = steps[ids]
        extra = {"local_loss": float(torch.cat(losses).mean()), "staleness": staleness}
        up = bits_vector(k, int(bits), env.device)
        log = RoundLog(up, up.clone(), k, extra, sim_time_s=now, steps=ran)
        return s._replace(t=s.t + 1), log

    return Algorithm(init, round, lambda s: s.theta)


def _build(delayed_nesterov: bool, **kw: Any) -> Algorithm:
    return async_local_sgd(delayed_nesterov_=delayed_nesterov, **kw)


# the downlink is its own: a configured compressor would never be applied
DOWNLINK_WHY = (
    "starts each worker from the exact current model (asynchronous: no model all workers track)"
)

ALGORITHMS.add(
    Component(
        "async_local_sgd",
        _build,
        {
            **INNER_PARAMS,
            **{k: p for k, p in OUTER_PARAMS.items() if k != "nesterov"},
            "delayed_nesterov": Param(True, "Delayed Nesterov server momentum (DN)", "bool"),
            "dynamic_local_steps": Param(
                False, "DyLU: H_w ∝ worker speed, the fastest doing H", "bool"
            ),
            "update_period": Param(
                0, "DN: momentum update every N arrivals (0 = N = number of workers)", "int", low=0
            ),
        },
        "workers of different speeds update the server on arrival (simulated time); DN, DyLU",
        paper="Liu et al. 2024 (arXiv 2401.09135)",
        requires="exact",
        extra={
            "error_feedback": False,
            "availability": False,
            "downlink": ("exact",),
            "downlink_why": DOWNLINK_WHY,
        },  # draws its own clients
    )
)
