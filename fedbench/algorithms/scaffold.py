"""SCAFFOLD: control variates correct the client drift of local steps.

"SCAFFOLD: Stochastic Controlled Averaging for Federated Learning", Karimireddy, Kale, Mohri,
Reddi, Stich, Suresh, ICML 2020, arXiv 1910.06378.

Variant: option II control variates, global step size η_g (via the server optimizer).
Client i ∈ S: y ← y − η_l(g_i(y) − c_i + c) for K steps (Alg. 1 line 10);
c_i⁺ = c_i − c + (x − y_K)/(K η_l) (line 12, option II); uploads Δy_i = y_K − x and
Δc_i = c_i⁺ − c_i. Server: x ← x + η_g mean Δy_i; c ← c + (1/n) Σ_S Δc_i (lines 16–17).
With a (contractive) uplink compressor both messages are compressed and the client keeps
c_i ← c_i + C(Δc_i), so c = mean_i c_i holds exactly and c_i tracks its target as in EF21;
`error_feedback` applies to Δy only (Δc already carries what was not sent).
Downlink: x̂ and c (2 · 32·d).
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
from fedbench.compressors.base import FLOAT_BITS
from fedbench.parallel import rowwise
from fedbench.params import Component
from fedbench.seeding import RoundRng
from fedbench.server_opt import SERVER_PARAMS, build_server_opt


def controlled_local_sgd(
    env: Env,
    x: Tensor,
    c: Tensor,
    c_i: Tensor,
    ids: Tensor,
    steps: int,
    lr: float,
    gen: torch.Generator,
    sam_rho: float | None = None,
) -> tuple[Tensor, Tensor]:
    """K local steps of the cohort from x, each corrected by the control variates:
    y ← y − η_l(g_i(y) − c_i + c) (Alg. 1 line 10). `c_i` `[m, d]`; returns y `[m, d]`, loss `[m]`.
    Shared by SCALLION and SCAFCOM; with `sam_rho` = ρ the gradient is the SAM gradient
    g_i(y + ρg/‖g‖) (FedGAMMA)."""
    drift = c - c_i  # [m, d]: −c_i + c

    @rowwise
    def corr(y: Tensor, g: Tensor, rows: slice) -> Tensor:
        return g.add_(drift[rows])

    return local_sgd(env, x, ids, steps, lr, gen, corr, sam_rho=sam_rho)


class ScaffoldState(NamedTuple):
    t: int
    x: Tensor  # [d] server model
    c: Tensor  # [d] server control variate, = mean_i c_i
    c_i: Tensor  # [n, d] client control variates (rows updated in place)
    opt: Any
    down: Broadcast
    up_y: Any  # uplink compressor state for Δy (error feedback rows when enabled)
    up_c: Any  # uplink compressor state for Δc (never error feedback: c_i tracks its target)


def scaffold(lr: float, local_steps: int, sam_rho: float | None = None, **server: Any) -> Algorithm:
    """SCAFFOLD; `sam_rho` (not a grid field of scaffold) makes the local steps SAM steps, which
    is FedGAMMA (fedgamma.py)."""
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
        x = down.x_hat
        gen = rng(seeding.BATCHES)
        y, loss = controlled_local_sgd(env, x, s.c, c_i, ids, local_steps, lr, gen, sam_rho)
        dy = y - x  # [m, d]
        dc = -s.c - dy / (local_steps * lr)  # c_i⁺ − c_i = −c + (x − y_K)/(K η_l)
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
        "scaffold",
        scaffold,
        {**LOCAL_PARAMS, **SERVER_PARAMS},
        "control variates c_i, c correct client drift (option II); 2 messages each way",
        paper="Karimireddy et al., ICML 2020 (arXiv 1910.06378)",
        # clients track c_i += C(Δc_i): stable for contractive C; an unbiased Q with ω > 0 makes
        # the control variates a random walk (compressed SCAFFOLD needs damping, as in SCALLION)
        requires="contractive",
    )
)
