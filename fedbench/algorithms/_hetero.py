"""Shared pieces of the system-heterogeneous methods (issue 13): local SGD with a different
number of steps per client (a mask over steps, not a branch per client), the deadline plan of
a synchronous round, staleness functions, and the event clock of asynchronous methods."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from fedbench import seeding
from fedbench.algorithms.base import Correction, Env, local_sgd
from fedbench.cohort import MAX_WAIT, available, has_availability
from fedbench.network import NETWORK, Network, build_network, deadline_steps, phase_seconds
from fedbench.network import stragglers as straggle
from fedbench.params import Param


def masked(tau: Tensor, inner: Correction | None = None) -> Correction:
    """A `local_sgd` correction that zeroes the step of every client past its own τ_i
    (`tau [m]`): client i moves for its first τ_i steps only. Steps are counted per block."""
    seen: dict[int, int] = {}

    def corr(y: Tensor, g: Tensor, rows: slice) -> Tensor:
        k = seen.get(rows.start or 0, 0)
        seen[rows.start or 0] = k + 1
        if inner is not None:
            g = inner(y, g, rows)
        live = tau[rows] > k  # [c]
        if bool(live.all()):
            return g
        return g * live.to(g.dtype).unsqueeze(1)

    return corr


def local_sgd_tau(
    env: Env,
    y0: Tensor,
    ids: Tensor,
    tau: Tensor,
    lr: float,
    gen: torch.Generator,
    correction: Correction | None = None,
) -> tuple[Tensor, Tensor]:
    """τ_i local SGD steps for client i (`tau [m]` ≥ 1): max τ batched steps with a mask.
    Equal τ_i = K is `local_sgd(..., K, ...)` exactly (same minibatches, same arithmetic)."""
    K = int(tau.max())
    t = tau.to(ids.device)
    if bool((t == K).all()):
        return local_sgd(env, y0, ids, K, lr, gen, correction)
    return local_sgd(env, y0, ids, K, lr, gen, masked(t, correction))


def the_network(env: Env) -> Network:
    """The run's `[network]` model, or the default one (equal speeds) without the section."""
    return env.network if env.network is not None else build_network({}, env.n, 0)


def plan_deadline(env: Env, ids: Tensor, steps: int, seed: int, t: int) -> Tensor:
    """Local steps `[m]` (CPU int64) each sampled client completes by the round deadline
    (`steps` for all without one; 0 = dropped)."""
    if env.network is None or env.network.deadline_s <= 0.0:
        return torch.full((ids.numel(),), steps, dtype=torch.int64)
    return deadline_steps(env.network, ids, steps, env.d, seed, t)


STALENESS_PARAMS = {
    "staleness": Param(
        "polynomial",
        "staleness function s(t − τ): constant 1, polynomial (t − τ + 1)^(−a), hinge "
        "(1 if t − τ ≤ b else 1/(a(t − τ − b) + 1))",
        "str",
        choices=("constant", "polynomial", "hinge"),
    ),
    "staleness_a": Param(0.5, "a of the polynomial / hinge staleness function", low=0.0),
    "staleness_b": Param(4.0, "b of the hinge staleness function", low=0.0),
}


def staleness_weight(kind: str, a: float, b: float, stale: Tensor) -> Tensor:
    """s(t − τ) `[k]` float64 for staleness `stale [k]` ≥ 0 (FedAsync §5.2 forms)."""
    s = stale.to(torch.float64)
    if kind == "constant":
        return torch.ones_like(s)
    if kind == "polynomial":
        return (s + 1.0) ** (-a)
    return torch.where(s <= b, torch.ones_like(s), 1.0 / (a * (s - b) + 1.0))


class Clock(NamedTuple):
    """Event clock of asynchronous methods: which workers run and when they finish."""

    busy: Tensor  # [n] bool: training now
    finish: Tensor  # [n] float64 simulated time the current phase ends (inf when idle)
    version: Tensor  # [n] int64 server version each phase started from
    start: Tensor  # [n, d] the model each phase started from


def phase_of(env: Env, ids: Tensor, steps: int, bits: float, seed: int, t: int) -> Tensor:
    """Seconds `[k]` float64 of one local phase of workers `ids` dispatched in round t (their
    speed s_w and a straggler draw; receive and send `bits` each)."""
    net = the_network(env)
    gen = seeding.generator(seed, t, NETWORK)
    cpu = ids.cpu()
    slow = net.slowdown[cpu] * straggle(net, cpu.numel(), gen)
    return phase_seconds(net, torch.full((cpu.numel(),), steps), slow, bits, bits)


def draw_idle(idle: Tensor, k: int, gen: torch.Generator) -> Tensor:
    """k idle workers `[k]` (sorted), uniform without replacement: the first k idle ones of
    a random permutation of all n (with everyone idle: `sample_cohort`'s draw)."""
    n = idle.numel()
    if k >= n:
        return torch.nonzero(idle).flatten()
    perm = torch.randperm(n, generator=gen)
    return perm[idle[perm]][:k].sort().values


def refill(env: Env, busy: Tensor, C: int, t: int, seed: int, gen: torch.Generator) -> Tensor:
    """Workers `[k]` to start now so that C train at once: k = C − busy, drawn uniformly among
    the idle ones that are available in round t (the `[network]` presence model). Without
    availability this is `draw_idle(~busy, C − busy, gen)`, so the old draws are unchanged.
    With availability the absent stay idle; when nobody is training and nobody idle is present,
    the server waits for someone to show up (availability redrawn, attempt 1, 2, ...). A slot
    left empty is refilled at the next arrival (deviation: not the instant a client returns)."""
    k = C - int(busy.sum())
    if k <= 0:
        return torch.zeros(0, dtype=torch.int64)
    net = env.network
    if net is None or not has_availability(net):
        return draw_idle(~busy, k, gen)
    for attempt in range(MAX_WAIT):
        idle = ~busy & available(net, seed, t, attempt)  # [n] idle and present
        if bool(idle.any()) or bool(busy.any()):
            return draw_idle(idle, k, gen)
    raise ValueError(f"[network]: no client was available in round {t}")


def dispatch(
    c: Clock, env: Env, ids: Tensor, x: Tensor, version: int, now: float, phase: Tensor
) -> Clock:
    """Workers `ids` start a phase from `x [d]` at `now`, ending after `phase [k]` seconds."""
    busy, finish, ver = c.busy.clone(), c.finish.clone(), c.version.clone()
    busy[ids], finish[ids], ver[ids] = True, now + phase, version
    c.start[ids.to(c.start.device)] = x
    return Clock(busy, finish, ver, c.start)


def model_bits(env: Env) -> int:
    """Bits of one dense model message down (the downlink compressor is exact: an
    asynchronous client receives the current model, not a tracked difference; the methods
    declare `extra["downlink"] = ("exact",)`, so validation refuses any other)."""
    x = torch.zeros(1, env.d, device=env.device)
    state = env.downlink.init(1, env.d, env.device)
    gen = torch.Generator(device=env.device)  # an exact compressor draws nothing
    msg, _ = env.downlink.compress(x, torch.zeros(1, dtype=torch.int64), state, gen)
    return int(msg.bits[0])
