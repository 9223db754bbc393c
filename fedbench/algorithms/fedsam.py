"""FedSAM and MoFedSAM: sharpness-aware local steps.

"Generalized Federated Learning via Sharpness Aware Minimization", Qu, Li, Duan, Liu, Tang,
Lu, ICML 2022, arXiv 2206.02618 (FedSAM also in Caldarola, Caputo, Ciccone, ECCV 2022,
arXiv 2203.11834).

FedSAM: each local step takes the gradient at the SAM point, y ← y − η_l g_i(y + ρ g/‖g‖) with
g = g_i(y) on the same minibatch; upload Δ_i = y_K − x̂; server as FedAvg (server optimizer,
compression and error feedback as there). ρ = 0 is FedAvg.
MoFedSAM (Algorithm 2, FedCM-style momentum): the local direction mixes the SAM gradient with
the server's last pseudo-gradient Δ = −mean_i C(Δ_i)/(K η_l),
y ← y − η_l((1−β) g_i(y + ε) + β Δ); Δ is broadcast with the model (downlink 2 · 32·d).
β is 1 − α of FL-Simulator's `alpha` = 0.1 (the weight of the gradient); β = 0 is FedSAM.
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


class MoFedSAMState(NamedTuple):
    t: int
    x: Tensor  # [d] server model
    Delta: Tensor  # [d] last pseudo-gradient −mean_i C(Δ_i)/(K η_l), the client momentum
    opt: Any  # server optimizer state
    down: Broadcast  # x̂, the model the clients hold
    up: Any  # uplink compressor state


def mofedsam(lr: float, local_steps: int, rho: float, beta: float, **server: Any) -> Algorithm:
    opt = build_server_opt(server)
    momentum = beta > 0.0  # β = 0: FedSAM, nothing extra to send

    def init(x0: Tensor, env: Env, rng: RoundRng) -> MoFedSAMState:
        up = update_compressor(env).init(env.n, env.d, env.device)
        return MoFedSAMState(0, x0, torch.zeros_like(x0), opt.init(x0), broadcast_init(env, x0), up)

    def round(s: MoFedSAMState, env: Env, rng: RoundRng) -> tuple[MoFedSAMState, RoundLog]:
        ids = sample_cohort(env, rng)  # [m]
        down, bits_down = broadcast(env, s.x, s.down, rng(seeding.DOWNLINK))

        def mix(y: Tensor, g: Tensor, rows: slice) -> Tensor:
            return g.mul_(1.0 - beta).add_(s.Delta, alpha=beta)  # [c, d]

        corr: Correction | None = mix if momentum else None
        gen = rng(seeding.BATCHES)
        y, loss = local_sgd(env, down.x_hat, ids, local_steps, lr, gen, corr, sam_rho=rho)
        delta = y - down.x_hat  # Δ_i [m, d]
        x, opt_state, msg, up = average_updates(env, opt, s.x, s.opt, s.up, delta, ids, rng)
        pseudo = -msg.value.mean(0)  # [d], the optimizer's step
        m = ids.numel()
        extra_down = FLOAT_BITS * env.d if momentum else 0
        log = cohort_log(env, msg.bits, m, bits_down + extra_down, loss)
        Delta = pseudo / (local_steps * lr) if momentum else s.Delta
        return MoFedSAMState(s.t + 1, x, Delta, opt_state, down, up), log

    return Algorithm(init, round, lambda s: s.x)


def fedsam(lr: float, local_steps: int, rho: float, **server: Any) -> Algorithm:
    return mofedsam(lr, local_steps, rho, 0.0, **server)


RHO = Param(0.1, "SAM perturbation radius ρ (FL-Simulator default 0.1)", low=0.0)
BETA = Param(
    0.9,
    "momentum weight β in the local direction (1 − FL-Simulator alpha)",
    low=0.0,
    high=1.0,
    high_open=True,
)
ALGORITHMS.add(
    Component(
        "fedsam",
        fedsam,
        {**LOCAL_PARAMS, "rho": RHO, **SERVER_PARAMS},
        "FedAvg whose local steps are SAM steps: gradient at y + ρ g/‖g‖",
        paper="Qu et al., ICML 2022 (arXiv 2206.02618); Caldarola et al., ECCV 2022",
    )
)
ALGORITHMS.add(
    Component(
        "mofedsam",
        mofedsam,
        {**LOCAL_PARAMS, "rho": RHO, "beta": BETA, **SERVER_PARAMS},
        "FedSAM with FedCM-style client momentum: (1−β) SAM gradient + β last server update",
        paper="Qu et al., ICML 2022 (arXiv 2206.02618)",
    )
)
