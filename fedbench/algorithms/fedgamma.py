"""FedGAMMA: SCAFFOLD's variance reduction with sharpness-aware local steps.

"FedGAMMA: Federated Learning With Global Sharpness-Aware Minimization", Dai, Yang, Sun, Shen,
Tian, Wang, Zhang, IEEE TNNLS 2023; as in FL-Simulator (woodenchild95/FL-Simulator,
`client/fedgamma.py`, `server/FedGamma.py`, author-affiliated).

Client i ∈ S, from y = x̂: K steps y ← y − η_l(g_i(y + ρ g/‖g‖) − c_i + c), g = g_i(y) on the
same minibatch (ESAM step, then the control-variate correction added to the SAM gradient as
the code does); c_i⁺ = c_i − c + (x̂ − y_K)/(K η_l) (SCAFFOLD option II); uploads
Δy_i = y_K − x̂ and Δc_i = c_i⁺ − c_i. Server: x ← server optimizer on −mean C(Δy_i)
(x + η_g mean), c ← c + (1/n) Σ_S C(Δc_i). Compression and bits exactly as `scaffold`
(2 messages each way). ρ = 0 is SCAFFOLD (tested bit for bit).
Deviation: the paper's perturbation is described as global (along the corrected direction);
the official code perturbs along the local minibatch gradient, which is followed here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fedbench import seeding
from fedbench.algorithms.base import (
    ALGORITHMS,
    LOCAL_PARAMS,
    Algorithm,
    Env,
    RoundLog,
    broadcast,
    broadcast_init,
    client_rows,
    cohort_log,
    gather_rows,
    local_sgd,
    sample_cohort,
    scatter_rows,
    update_compressor,
)
from fedbench.algorithms.scaffold import ScaffoldState
from fedbench.compressors.base import FLOAT_BITS
from fedbench.params import Component, Param
from fedbench.seeding import RoundRng
from fedbench.server_opt import SERVER_PARAMS, build_server_opt


def fedgamma(lr: float, local_steps: int, rho: float, **server: Any) -> Algorithm:
    opt = build_server_opt(server)

    def init(x0: Tensor, env: Env, rng: RoundRng) -> ScaffoldState:
        return ScaffoldState(
            0,
            x0,
            torch.zeros_like(x0),
            client_rows(env),
            opt.init(x0),
            broadcast_init(env, x0),
            update_compressor(env).init(env.n, env.d, env.device),
            env.uplink.init(env.n, env.d, env.device),
        )

    def round(s: ScaffoldState, env: Env, rng: RoundRng) -> tuple[ScaffoldState, RoundLog]:
        ids = sample_cohort(env, rng)  # [m]
        down, bits_down = broadcast(env, s.x, s.down, rng(seeding.DOWNLINK))
        c_i = gather_rows(s.c_i, ids, env.device)  # [m, d]
        drift = s.c - c_i  # [m, d]: −c_i + c
        x = down.x_hat

        def corr(y: Tensor, g: Tensor, rows: slice) -> Tensor:
            return g.add_(drift[rows])  # SAM gradient − c_i + c

        gen = rng(seeding.BATCHES)
        y, loss = local_sgd(env, x, ids, local_steps, lr, gen, corr, sam_rho=rho)
        dy = y - x  # [m, d]
        dc = -s.c - dy / (local_steps * lr)  # c_i⁺ − c_i
        gen = rng(seeding.UPLINK)
        my, up_y = update_compressor(env).compress(dy, ids, s.up_y, gen)
        mc, up_c = env.uplink.compress(dc, ids, s.up_c, gen)
        scatter_rows(s.c_i, ids, c_i + mc.value)
        c = s.c + mc.value.sum(0) / env.n
        x_new, opt_state = opt.update(s.x, -my.value.mean(0), s.opt)
        m = ids.numel()
        log = cohort_log(env, my.bits + mc.bits, m, bits_down + FLOAT_BITS * env.d, loss)
        return ScaffoldState(s.t + 1, x_new, c, s.c_i, opt_state, down, up_y, up_c), log

    return Algorithm(init, round, lambda s: s.x)


ALGORITHMS.add(
    Component(
        "fedgamma",
        fedgamma,
        {
            **LOCAL_PARAMS,
            "rho": Param(0.1, "SAM perturbation radius ρ (FL-Simulator 0.1)", low=0.0),
            **SERVER_PARAMS,
        },
        "SCAFFOLD control variates with SAM local steps (global sharpness-aware)",
        paper="Dai et al., IEEE TNNLS 2023",
        requires="contractive",  # the control variates, as SCAFFOLD
    )
)
