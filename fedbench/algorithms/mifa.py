"""MIFA: Memory-augmented Impatient Federated Averaging, for arbitrary client unavailability.

"Fast Federated Learning in the Presence of Arbitrary Device Unavailability", Gu, Huang,
Zhang, Zhang, NeurIPS 2021, arXiv 2106.04159.

Variant: Algorithm 1 with a constant learning rate. The server keeps every client's latest
update G_i (`[n, d]`). `start = "wait"` (default): the server takes no step until every
client has reported once, the rounds before only fill the table (as FLGo's implementation
of the paper does, threshold c = 1 [code]; the paper's own text was not read here [mem]);
`start = "zero"` steps from round 1 with G_i = 0 for the clients not heard from yet (fedbench
0.2's behaviour, kept as an option). Each round the available clients of the cohort (see the
`[network]` availability model) run K local SGD steps from x̂ and send Δ_i = y_i − x̂ (optionally
compressed); the server sets G_i ← C(Δ_i) for them and steps on the average over all n
clients, x ← opt(x, −(1/n) Σ_i G_i), so absent clients still count with their last update.
With every client available each round (participation 1, no dropouts) this is FedAvg exactly.
A `[network]` deadline drops late clients (they keep their old G_i) or takes their partial work.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from fedbench import seeding
from fedbench.algorithms._hetero import local_sgd_tau, plan_deadline
from fedbench.algorithms.base import (
    ALGORITHMS,
    LOCAL_PARAMS,
    Algorithm,
    Broadcast,
    Env,
    RoundLog,
    bits_vector,
    broadcast,
    broadcast_init,
    client_rows,
    sample_cohort,
    scatter_rows,
    update_compressor,
)
from fedbench.params import Component, Param
from fedbench.seeding import RoundRng
from fedbench.server_opt import SERVER_PARAMS, build_server_opt


class MIFAState(NamedTuple):
    t: int
    x: Tensor  # [d] server model
    G: Tensor  # [n, d] latest update of every client (updated in place)
    seen: Tensor  # [n] bool: client i has reported at least once
    opt: Any  # server optimizer state
    down: Broadcast
    up: Any  # uplink compressor state


def mifa(lr: float, local_steps: int, start: str, **server: Any) -> Algorithm:
    opt = build_server_opt(server)

    def init(x0: Tensor, env: Env, rng: RoundRng) -> MIFAState:
        up = update_compressor(env).init(env.n, env.d, env.device)
        G = client_rows(env._replace(state_dtype=torch.float32))
        seen = torch.zeros(env.n, dtype=torch.bool, device=env.device)
        return MIFAState(0, x0, G, seen, opt.init(x0), broadcast_init(env, x0), up)

    def round(s: MIFAState, env: Env, rng: RoundRng) -> tuple[MIFAState, RoundLog]:
        ids = sample_cohort(env, rng)  # [m] the available ones
        m = ids.numel()
        down, bits_down = broadcast(env, s.x, s.down, rng(seeding.DOWNLINK))
        tau = plan_deadline(env, ids, local_steps, rng.seed, rng.round)  # [m]
        extra: dict[str, float] = {}
        if env.network is not None and env.network.deadline_s > 0:
            extra["deadline_cut"] = float((tau < local_steps).sum())
        live = ids[(tau > 0).to(ids.device)]
        up, seen = s.up, s.seen.clone()
        bits_up = torch.zeros(0, dtype=torch.int64, device=env.device)
        if live.numel() > 0:
            gen = rng(seeding.BATCHES)
            y, loss = local_sgd_tau(env, down.x_hat, live, tau[tau > 0], lr, gen)
            compress = update_compressor(env).compress
            msg, up = compress(y - down.x_hat, live, s.up, rng(seeding.UPLINK))  # Δ_i [k, d]
            scatter_rows(s.G, live, msg.value)  # G_i ← C(Δ_i)
            seen[live] = True
            bits_up, extra["local_loss"] = msg.bits, float(loss.mean())
        x, opt_state = s.x, s.opt
        if start == "zero" or bool(seen.all()):  # x ← opt(x, −(1/n) Σ_i G_i)
            x, opt_state = opt.update(s.x, -s.G.mean(0), s.opt)
        extra["reported"] = float(seen.sum())  # clients with a G_i so far
        log = RoundLog(bits_up, bits_vector(m, bits_down, env.device), live.numel(), extra)
        return MIFAState(s.t + 1, x, s.G, seen, opt_state, down, up), log

    return Algorithm(init, round, lambda s: s.x)


ALGORITHMS.add(
    Component(
        "mifa",
        mifa,
        {
            **LOCAL_PARAMS,
            # no `since`: the default changed the method (0.2 stepped from round 1), so the
            # runs recorded before get new job keys and are rerun
            "start": Param(
                "wait",
                "wait: no server step until every client has reported once (the paper); "
                "zero: step from round 1 with G_i = 0 for clients not heard from yet",
                "str",
                choices=("wait", "zero"),
            ),
            **SERVER_PARAMS,
        },
        "keep every client's latest update, average all n of them (arbitrary unavailability)",
        paper="Gu et al., NeurIPS 2021 (arXiv 2106.04159)",
        extra={"deadline": True},
    )
)
