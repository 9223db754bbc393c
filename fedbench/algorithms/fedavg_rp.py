"""FedAvg with regularised (reshuffled) client participation.

"Federated Learning with Regularized Client Participation", Malinovsky, Horváth, Burlachenko,
Richtárik, 2023, arXiv 2302.03662 (the meta-epoch sampling scheme, with FedAvg local steps).

A meta-epoch is R rounds: at its first round the server draws a random permutation of the n
clients (from that round's cohort generator) and splits it into R consecutive cohorts; round r
of the meta-epoch trains cohort r, so every client participates exactly once per meta-epoch.
When R does not divide n the cohorts differ in size by at most one (the first n mod R cohorts
get one client more); R > n is taken as R = n. R = 0 derives R from `participation`:
R = round(n / cohort size). Local training, upload and server step are FedAvg's. R = 1 is
full-participation FedAvg.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from fedbench import seeding
from fedbench.algorithms.base import (
    ALGORITHMS,
    LOCAL_PARAMS,
    Algorithm,
    Broadcast,
    Env,
    RoundLog,
    average_updates,
    broadcast,
    broadcast_init,
    cohort_log,
    cohort_size,
    local_sgd,
    update_compressor,
)
from fedbench.params import Component, Param
from fedbench.seeding import RoundRng
from fedbench.server_opt import SERVER_PARAMS, build_server_opt


class FedAvgRPState(NamedTuple):
    t: int
    x: Tensor  # [d] server model
    perm: Tensor  # [n] this meta-epoch's permutation of the clients
    opt: Any
    down: Broadcast
    up: Any


def meta_epoch_length(R: int, env: Env) -> int:
    """R as given (at most n), or from the participation fraction when R = 0."""
    if R == 0:
        R = round(env.n / cohort_size(env.n, env.participation))
    return max(1, min(R, env.n))


def cohort(perm: Tensor, R: int, r: int) -> Tensor:
    """Cohort r of R: the r-th of R near-equal consecutive slices of `perm`, sorted."""
    return torch.tensor_split(perm, R)[r].sort().values


def fedavg_rp(lr: float, local_steps: int, R: int, **server: Any) -> Algorithm:
    opt = build_server_opt(server)

    def init(x0: Tensor, env: Env, rng: RoundRng) -> FedAvgRPState:
        perm = torch.arange(env.n, device=env.device)  # replaced at the first round
        up = update_compressor(env).init(env.n, env.d, env.device)
        return FedAvgRPState(0, x0, perm, opt.init(x0), broadcast_init(env, x0), up)

    def round(s: FedAvgRPState, env: Env, rng: RoundRng) -> tuple[FedAvgRPState, RoundLog]:
        meta = meta_epoch_length(R, env)
        r = s.t % meta  # round within the meta-epoch
        perm = s.perm
        if r == 0 and meta > 1:  # a new meta-epoch
            gen = rng(seeding.COHORT)
            perm = torch.randperm(env.n, generator=gen, device=gen.device).to(env.device)
        ids = cohort(perm, meta, r)  # [m]
        down, bits_down = broadcast(env, s.x, s.down, rng(seeding.DOWNLINK))
        y, loss = local_sgd(env, down.x_hat, ids, local_steps, lr, rng(seeding.BATCHES))
        delta = y - down.x_hat  # Δ_i [m, d]
        x, opt_state, msg, up = average_updates(env, opt, s.x, s.opt, s.up, delta, ids, rng)
        m = ids.numel()
        log = cohort_log(env, msg.bits, m, bits_down, loss)
        return FedAvgRPState(s.t + 1, x, perm, opt_state, down, up), log

    return Algorithm(init, round, lambda s: s.x)


ALGORITHMS.add(
    Component(
        "fedavg_rp",
        fedavg_rp,
        {
            **LOCAL_PARAMS,
            "R": Param(
                0,
                "meta-epoch length in rounds, each client trains once (0: from participation)",
                "int",
                low=0,
            ),
            **SERVER_PARAMS,
        },
        "FedAvg whose cohorts split a fresh permutation every R rounds (each client once)",
        paper="Malinovsky, Horváth, Burlachenko, Richtárik 2023 (arXiv 2302.03662)",
        extra={"availability": False},  # every client once per meta-epoch: its own draw
    )
)
