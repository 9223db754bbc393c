"""Simulated time: what a round would take on a given network and set of workers.

The time model sits beside the cohort module (`fedbench.cohort`, who takes part): it asks
that module who was present when it charges a round, and never the algorithms layer.

An optional `[network]` grid section describes the machines (fields in `NETWORK_PARAMS`):
bandwidths, a one-way latency per message, the compute time of one local step on the fastest
(1×) worker, and how much slower the others are. Each worker w gets a slowdown factor
s_w ~ U[1, speed_spread], drawn once per run from the run's seed; in a round, each participant
independently straggles with probability `straggler_prob` (its compute takes
`straggler_slowdown` times longer).

One local phase of a worker (receive the model, K local steps, send its message) takes

    phase = bits_down / downlink + K · step_ms · s_w · straggle / 1000 + bits_up / uplink
            + 2 · latency                                       (one message each way)

and a synchronous round waits for its slowest participant: `round_seconds` = max over the
participants of their phase. Bits per participant are the round's totals divided by the number
of participants (every method here sends the same message size to every participant).
Asynchronous methods run their own event clock on `phase_seconds` and report it in
`RoundLog.sim_time_s`; the runner adds `round_seconds` per round for every other method and
logs the cumulative `sim_time_s` whenever the grid has a `[network]` section.

Presence (issue 13): the `[network]` section also holds the availability fields
(`dropout_prob`, `dropout_spread`, `window_period`, `window_on`); `Network` carries the run's
draws of them, and `fedbench.cohort` decides from them who is present. A round
deadline (`deadline_s`) cuts the clients whose phase would not fit (`deadline_steps`): they are
dropped or send the steps done (`deadline_mode = "partial"`), and the round is charged the
deadline. Only methods that implement it accept a deadline (the grid refuses the others).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor

from fedbench import cohort, seeding
from fedbench.params import Param

NETWORK_PARAMS = {
    "uplink_mbps": Param(100.0, "uplink bandwidth of every worker, Mbit/s", low=0.0, low_open=True),
    "downlink_mbps": Param(
        100.0, "downlink bandwidth of every worker, Mbit/s", low=0.0, low_open=True
    ),
    "latency_ms": Param(0.0, "one-way latency of every message, ms", low=0.0),
    "step_ms": Param(
        100.0, "compute time of one local step on the fastest (1×) worker, ms", low=0.0
    ),
    "speed_spread": Param(
        1.0, "workers are s× slower, s ~ U[1, speed_spread] drawn once per run (1 = equal)", low=1.0
    ),
    "straggler_prob": Param(
        0.0, "probability that a participant straggles in a round", low=0.0, high=1.0
    ),
    "straggler_slowdown": Param(4.0, "compute-time multiplier of a straggler", low=1.0),
    # availability and round deadline (issue 13); defaults = always available, no deadline
    "dropout_prob": Param(
        0.0,
        "mean probability that a sampled client is unavailable in a round (independent draws)",
        low=0.0,
        high=1.0,
        high_open=True,
        since="0.2",
    ),
    "dropout_spread": Param(
        0.0,
        "client i is available with q_i = (1 − dropout_prob)·(1 + spread·(2u_i − 1)) (clamped "
        "to [0, 1]), u_i ~ U[0, 1] drawn once per run (0 = every client alike)",
        low=0.0,
        high=1.0,
        since="0.2",
    ),
    "window_period": Param(
        0,
        "periodic (diurnal) availability: period in rounds, each client online for window_on of "
        "it from its own random offset (0 = no windows)",
        "int",
        low=0,
        since="0.2",
    ),
    "window_on": Param(
        1.0,
        "share of each period a client is online",
        low=0.0,
        high=1.0,
        low_open=True,
        since="0.2",
    ),
    "deadline_s": Param(
        0.0,
        "round deadline in simulated seconds (0 = wait for the slowest); only methods that "
        "implement it accept it",
        low=0.0,
        since="0.2",
    ),
    "deadline_mode": Param(
        "drop",
        "clients late for the deadline: dropped, or send the partial work of the local steps done",
        "str",
        choices=("drop", "partial"),
        since="0.2",
    ),
}

MBIT = 1e6
NETWORK = "network"  # seeding purpose of slowdowns and stragglers


class Network(NamedTuple):
    uplink_mbps: float
    downlink_mbps: float
    latency_ms: float
    step_ms: float
    slowdown: Tensor  # [n] float64, s_w ≥ 1 per worker
    straggler_prob: float
    straggler_slowdown: float
    dropout: Tensor | None = None  # [n] float64 p_i, None: nobody drops out
    window_period: int = 0
    window_on: float = 1.0
    offset: Tensor | None = None  # [n] int64 start of each client's window in the period
    deadline_s: float = 0.0
    deadline_mode: str = "drop"


def build_network(cfg: Mapping[str, Any], n: int, seed: int) -> Network:
    """The resolved `[network]` fields (defaults for missing ones) and the run's worker
    slowdowns s_w ~ U[1, speed_spread], from the run's seed."""
    p = {k: cfg.get(k, v.default) for k, v in NETWORK_PARAMS.items()}
    u = torch.rand(n, generator=seeding.generator(seed, -1, NETWORK), dtype=torch.float64)
    dropout, period, window_on, offset = cohort.build_availability(p, n, seed)
    return Network(
        float(p["uplink_mbps"]),
        float(p["downlink_mbps"]),
        float(p["latency_ms"]),
        float(p["step_ms"]),
        1.0 + (float(p["speed_spread"]) - 1.0) * u,
        float(p["straggler_prob"]),
        float(p["straggler_slowdown"]),
        dropout,
        period,
        window_on,
        offset,
        float(p.get("deadline_s", 0.0)),
        str(p.get("deadline_mode", "drop")),
    )


def deadline_steps(net: Network, ids: Tensor, steps: int, d: int, seed: int, t: int) -> Tensor:
    """Local steps `[m]` int64 each sampled client completes before `deadline_s`: `steps` when
    its whole phase fits, else 0 (`drop`) or the steps done by then (`partial`, ≥ 0). The plan
    assumes dense messages (32·d bits each way) and the round's stragglers (same draw as
    `charged_seconds`)."""
    m = ids.numel()
    full = torch.full((m,), steps, dtype=torch.int64)
    if net.deadline_s <= 0.0:
        return full
    gen = seeding.generator(seed, t, NETWORK)
    slow = net.slowdown[ids.cpu()] * stragglers(net, m, gen)  # [m]
    fixed = float(phase_seconds(net, torch.zeros(1), torch.ones(1), 32.0 * d, 32.0 * d)[0])
    per_step = net.step_ms * slow / 1000.0  # [m] seconds per local step
    done = torch.where(
        per_step > 0, ((net.deadline_s - fixed) / per_step).floor(), torch.full_like(slow, steps)
    )
    done = done.clamp(0, steps).to(torch.int64)
    if net.deadline_mode == "drop":
        return torch.where(done >= steps, full, torch.zeros_like(full))
    return done


def stragglers(net: Network, k: int, gen: torch.Generator | None) -> Tensor:
    """Compute-time multipliers `[k]` float64 of k participants in one round (1 or the
    straggler slowdown)."""
    if net.straggler_prob == 0.0 or gen is None:
        return torch.ones(k, dtype=torch.float64)
    hit = torch.rand(k, generator=gen, dtype=torch.float64) < net.straggler_prob
    return torch.where(hit, net.straggler_slowdown, 1.0).to(torch.float64)


def phase_seconds(
    net: Network, steps: Tensor, slowdown: Tensor, bits_up: float, bits_down: float
) -> Tensor:
    """Seconds `[k]` of one local phase per worker: receive, `steps [k]` local steps at
    `slowdown [k]` (s_w, stragglers included), send; plus one latency each way."""
    compute = steps.to(torch.float64) * net.step_ms * slowdown.to(torch.float64) / 1000.0
    transfer = bits_down / (net.downlink_mbps * MBIT) + bits_up / (net.uplink_mbps * MBIT)
    return compute + transfer + 2.0 * net.latency_ms / 1000.0


def round_seconds(
    net: Network, bits_up: float, bits_down: float, steps: Tensor, slowdown: Tensor
) -> float:
    """A synchronous round: its slowest participant's phase. `bits_up`/`bits_down` are the
    round's totals, shared equally by the k = len(steps) participants."""
    k = max(1, steps.numel())
    return float(phase_seconds(net, steps, slowdown, bits_up / k, bits_down / k).max())


def nominal_round(net: Network, steps: int, d: int) -> float:
    """Seconds of one round of a 1× worker with dense messages: the unit of waiting when
    nobody sampled is available (each wait attempt is one such round)."""
    one = torch.ones(1, dtype=torch.float64)
    return float(phase_seconds(net, one * steps, one, 32.0 * d, 32.0 * d)[0])


def charged_seconds(net: Network, log: Any, env: Any, rng: Any, local_steps: int) -> float:
    """The runner's charge for one synchronous round of any method: its participants are
    `log.steps > 0` when the method says, else the round's cohort (every method draws it with
    `sample_cohort` from the round's COHORT generator, so it is drawn again here) running
    `local_steps`. Plus, before the round: a power-of-choice query phase (`query_s`, the
    candidates' own messages are then left out of the training phase's bits), and the rounds
    the server waited for an available client (uniform and Poisson cohorts, `cohort.waited`:
    the round's sample drawn again)."""

    if log.steps is not None:
        steps = log.steps.cpu()
        ids = torch.nonzero(steps).flatten()
        steps = steps[ids]
    else:
        ids = cohort.sample_cohort(env, rng).cpu()
        steps = torch.full((ids.numel(),), local_steps)
    gen = seeding.generator(rng.seed, rng.round, NETWORK)  # CPU, whatever the device
    slow = net.slowdown[ids] * stragglers(net, ids.numel(), gen)
    up = float(log.bits_up.sum()) - log.extra.get("query_bits_up", 0.0)
    down = float(log.bits_down.sum()) - log.extra.get("query_bits_down", 0.0)
    sec = round_seconds(net, up, down, steps, slow)
    if net.deadline_s > 0.0:  # the server closes the round at the deadline
        late = log.extra.get("deadline_cut", 0.0) > 0
        sec = net.deadline_s if late else min(sec, net.deadline_s)
    waited = cohort.waited(env, rng)
    return sec + log.extra.get("query_s", 0.0) + waited * nominal_round(net, local_steps, env.d)


def query_seconds(net: Network | None, cand: Tensor, model_bits: float) -> float:
    """Simulated seconds of a query phase before training (power-of-choice): every candidate
    `cand [k]` receives the model, evaluates its local loss (charged as one local step of its
    speed s_i: a forward pass over its data, our estimate) and sends a 32-bit loss; the server
    waits for the slowest. 0 without a `[network]` section."""
    if net is None or cand.numel() == 0:
        return 0.0
    one = torch.ones(cand.numel(), dtype=torch.float64)
    slow = net.slowdown[cand.cpu()]
    return float(phase_seconds(net, one, slow, float(cohort.FLOAT_BITS), model_bits).max())
