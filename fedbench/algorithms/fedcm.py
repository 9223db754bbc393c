"""FedCM: client-level momentum.

"FedCM: Federated Learning with Client-level Momentum", Xu, Wang, Wang, Cheng, Xu, arXiv
2106.10874; defaults of FL-Simulator (woodenchild95/FL-Simulator, `client/fedcm.py`,
`server/FedCM.py`).

Client i ∈ S, from y = x̂^t, K steps y ← y − η_l v with v = α g_i(y) + (1−α) Δ_t (α weighs the
fresh gradient, FL-Simulator `alpha` = 0.1); uploads Δ_i = y_K − x̂^t (compressed, error
feedback as FedAvg). Server: Δ_{t+1} = −mean_i C(Δ_i)/(K η_l) (the round's average local
direction), x^{t+1} = server optimizer on −mean_i C(Δ_i) (SGD with η_g: x + η_g mean C(Δ_i)).
Δ_t is broadcast with the model (32·d down) whenever α < 1; α = 1 is FedAvg bit for bit,
bits included (tested). Deviation: FL-Simulator also scales Δ by its learning-rate decay;
there is no decay here.
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
    Correction,
    Env,
    RoundLog,
    average_updates,
    broadcast,
    broadcast_init,
    cohort_log,
    local_sgd,
    sample_cohort,
    update_compressor,
)
from fedbench.compressors.base import FLOAT_BITS
from fedbench.params import Component, Param
from fedbench.seeding import RoundRng
from fedbench.server_opt import SERVER_PARAMS, build_server_opt


class FedCMState(NamedTuple):
    t: int
    x: Tensor  # [d] server model
    Delta: Tensor  # [d] Δ_t, the client momentum (last round's mean local direction)
    opt: Any  # server optimizer state
    down: Broadcast
    up: Any  # uplink compressor state


def fedcm(lr: float, local_steps: int, alpha: float, **server: Any) -> Algorithm:
    opt = build_server_opt(server)
    momentum = alpha < 1.0  # α = 1: FedAvg, Δ_t unused and not sent

    def init(x0: Tensor, env: Env, rng: RoundRng) -> FedCMState:
        up = update_compressor(env).init(env.n, env.d, env.device)
        return FedCMState(0, x0, torch.zeros_like(x0), opt.init(x0), broadcast_init(env, x0), up)

    def round(s: FedCMState, env: Env, rng: RoundRng) -> tuple[FedCMState, RoundLog]:
        ids = sample_cohort(env, rng)  # [m]
        down, bits_down = broadcast(env, s.x, s.down, rng(seeding.DOWNLINK))

        def v(y: Tensor, g: Tensor, rows: slice) -> Tensor:
            return g.mul_(alpha).add_(s.Delta, alpha=1.0 - alpha)  # α g + (1−α) Δ_t

        corr: Correction | None = v if momentum else None
        y, loss = local_sgd(env, down.x_hat, ids, local_steps, lr, rng(seeding.BATCHES), corr)
        delta = y - down.x_hat  # Δ_i [m, d]
        x, opt_state, msg, up = average_updates(env, opt, s.x, s.opt, s.up, delta, ids, rng)
        pseudo = -msg.value.mean(0)  # [d], the optimizer's step
        Delta = pseudo / (local_steps * lr) if momentum else s.Delta
        extra_down = FLOAT_BITS * env.d if momentum else 0
        log = cohort_log(env, msg.bits, ids.numel(), bits_down + extra_down, loss)
        return FedCMState(s.t + 1, x, Delta, opt_state, down, up), log

    return Algorithm(init, round, lambda s: s.x)


ALGORITHMS.add(
    Component(
        "fedcm",
        fedcm,
        {
            **LOCAL_PARAMS,
            "alpha": Param(
                0.1,
                "weight α of the fresh gradient in α g + (1−α) Δ (FL-Simulator 0.1; 1 = FedAvg)",
                low=0.0,
                high=1.0,
                low_open=True,
            ),
            **SERVER_PARAMS,
        },
        "client momentum: local direction α g_i + (1−α) Δ_t, Δ_t the last mean local direction",
        paper="Xu et al. (arXiv 2106.10874)",
    )
)
