"""FedSMOO: dynamic regularisation plus a globally consistent sharpness-aware perturbation.

"Dynamic Regularized Sharpness Aware Minimization in Federated Learning: Approaching Global
Consistency and Smooth Landscape", Sun, Shen, Chen, Ding, Tao, ICML 2023, arXiv 2305.11584;
as FL-Simulator (woodenchild95/FL-Simulator, `client/fedsmoo.py`, `server/FedSMOO.py`,
`optimizer/DRegSAM.py`; the first author's code).

Client i ∈ S from y = x̂, K steps on minibatch ζ: g = g_i(y; ζ); ĝ = g − μ_i − s;
e = ρ ĝ/(‖ĝ‖ + 1e-7); μ_i ← μ_i + e − s; y ← y − η_l(g_i(y + e; ζ) − λ_i + α(y − x̂)).
Uploads Δ_i = y_K − x̂ (possibly compressed) and μ_i (dense); λ_i ← λ_i − α C(Δ_i).
Server: h ← h − (α/n) Σ_S C(Δ_i) (h = mean_i λ_i over all n, exactly),
x ← x + mean_S C(Δ_i) − h/α (= mean_S y_K − h/α), s ← ρ ū/(‖ū‖ + 1e-7) with ū = mean_S μ_i
(the code's simplification of the paper's s update, which drops the ŝ_{i,K} term).
The code's prox coefficient `lamb` = 0.1 is α here and its dual h_i (a sum of updates) is
−λ_i/α. Bits: up C(Δ_i) + 32·d (μ_i); down x̂ + 32·d (s).
ρ = 0: e = 0, μ_i = s = 0, and the method is FedDyn(α) (tested; derived from the code, the
paper's own statement of the reduction was not read).
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
    Step,
    broadcast,
    broadcast_init,
    client_rows,
    cohort_log,
    gather_rows,
    local_sgd,
    sample_cohort,
    scatter_rows,
    sees_step,
    step_grad,
    update_compressor,
)
from fedbench.compressors.base import FLOAT_BITS
from fedbench.parallel import rowwise
from fedbench.params import Component, Param
from fedbench.seeding import RoundRng

NORM_EPS = 1e-7  # FL-Simulator's guard in ‖·‖ + 1e-7


class FedSMOOState(NamedTuple):
    t: int
    x: Tensor  # [d] server model
    h: Tensor  # [d] mean_i λ_i
    s: Tensor  # [d] global perturbation
    lam_i: Tensor  # [n, d] duals λ_i
    mu_i: Tensor  # [n, d] dynamic perturbation duals μ_i
    down: Broadcast
    up: Any  # uplink compressor state


def fedsmoo(lr: float, local_steps: int, rho: float, alpha: float) -> Algorithm:
    def init(x0: Tensor, env: Env, rng: RoundRng) -> FedSMOOState:
        z = torch.zeros_like(x0)
        up = update_compressor(env).init(env.n, env.d, env.device)
        return FedSMOOState(
            0, x0, z, z.clone(), client_rows(env), client_rows(env), broadcast_init(env, x0), up
        )

    def round(s: FedSMOOState, env: Env, rng: RoundRng) -> tuple[FedSMOOState, RoundLog]:
        ids = sample_cohort(env, rng)  # [m]
        down, bits_down = broadcast(env, s.x, s.down, rng(seeding.DOWNLINK))
        x = down.x_hat
        lam = gather_rows(s.lam_i, ids, env.device)  # [m, d]
        mu = gather_rows(s.mu_i, ids, env.device)  # [m, d], updated in place by the steps

        @rowwise
        @sees_step
        def dual_sam(y: Tensor, g: Tensor, rows: slice, step: Step) -> Tensor:
            g_hat = g.sub_(mu[rows]).sub_(s.s)  # [c, d]
            e = g_hat.mul_(rho / (g_hat.norm(dim=1, keepdim=True) + NORM_EPS))
            mu[rows] += e - s.s
            _, g_e = step_grad(env, y + e, step)  # at the perturbed point, same ζ
            return g_e.sub_(lam[rows]).add_(y - x, alpha=alpha)

        y, loss = local_sgd(env, x, ids, local_steps, lr, rng(seeding.BATCHES), dual_sam)
        msg, up = update_compressor(env).compress(y - x, ids, s.up, rng(seeding.UPLINK))
        scatter_rows(s.lam_i, ids, lam - alpha * msg.value)
        scatter_rows(s.mu_i, ids, mu)
        h = s.h - (alpha / env.n) * msg.value.sum(0)
        x_new = s.x + msg.value.mean(0) - h / alpha
        u = mu.mean(0)  # [d]
        s_new = u * (rho / (u.norm() + NORM_EPS))
        m = ids.numel()
        extra = FLOAT_BITS * env.d
        log = cohort_log(env, msg.bits + extra, m, bits_down + extra, loss)
        return FedSMOOState(s.t + 1, x_new, h, s_new, s.lam_i, s.mu_i, down, up), log

    return Algorithm(init, round, lambda s: s.x)


ALGORITHMS.add(
    Component(
        "fedsmoo",
        fedsmoo,
        {
            **LOCAL_PARAMS,
            "rho": Param(0.1, "SAM perturbation radius ρ (FL-Simulator 0.1)", low=0.0),
            "alpha": Param(
                0.1, "dynamic regulariser α (FL-Simulator `lamb` 0.1)", low=0.0, low_open=True
            ),
        },
        "FedDyn duals + SAM whose perturbation is corrected towards a global one s",
        paper="Sun et al., ICML 2023 (arXiv 2305.11584)",
        requires="contractive",  # the duals sum the compressed updates, as FedDyn
    )
)
