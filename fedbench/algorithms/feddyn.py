"""FedDyn: dynamic regularisation makes the local optima consistent with the global one.

"Federated Learning Based on Dynamic Regularization", Acar, Zhao, Matas, Mattina, Whatmough,
Saligrama, ICLR 2021, arXiv 2111.04263.

Variant: Algorithm 1 with K local SGD steps as the inexact local solve (as FL-Simulator does).
Client i ∈ S_t: θ ← θ − η_l(g_i(θ) − ∇_i + α(θ − θ^{t−1})) for K steps from θ^{t−1};
uploads Δ_i = θ_i − θ^{t−1} (possibly compressed, C(Δ_i)) and sets ∇_i ← ∇_i − α C(Δ_i).
Server: h ← h − (α/n) Σ_S C(Δ_i); θ^t = θ^{t−1} + mean_S C(Δ_i) − h/α (= mean_S θ_i − h/α).
Both sides apply the same C(Δ_i), so h = mean_i ∇_i over all n clients holds exactly.
Bits: 32·d (or the compressed Δ_i) up, the model down.
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
from fedbench.parallel import rowwise
from fedbench.params import Component, Param
from fedbench.seeding import RoundRng


class FedDynState(NamedTuple):
    t: int
    theta: Tensor  # [d] server model θ^t
    h: Tensor  # [d] server state, = mean_i ∇_i
    grad_i: Tensor  # [n, d] client gradient memories ∇_i (`client_rows`: rows written per cohort)
    down: Broadcast
    up: Any  # uplink compressor state


def feddyn(lr: float, local_steps: int, alpha: float) -> Algorithm:
    def init(x0: Tensor, env: Env, rng: RoundRng) -> FedDynState:
        return FedDynState(
            0,
            x0,
            torch.zeros_like(x0),
            client_rows(env),
            broadcast_init(env, x0),
            update_compressor(env).init(env.n, env.d, env.device),
        )

    def round(s: FedDynState, env: Env, rng: RoundRng) -> tuple[FedDynState, RoundLog]:
        ids = sample_cohort(env, rng)  # [m]
        down, bits_down = broadcast(env, s.theta, s.down, rng(seeding.DOWNLINK))
        anchor = down.x_hat  # θ^{t−1} as the clients hold it
        grad_i = gather_rows(s.grad_i, ids, env.device)  # [m, d] float32

        @rowwise
        def corr(y: Tensor, g: Tensor, rows: slice) -> Tensor:
            return g.sub_(grad_i[rows]).add_(y - anchor, alpha=alpha)  # [c, d]

        y, loss = local_sgd(env, anchor, ids, local_steps, lr, rng(seeding.BATCHES), corr)
        msg, up = update_compressor(env).compress(y - anchor, ids, s.up, rng(seeding.UPLINK))
        scatter_rows(s.grad_i, ids, grad_i - alpha * msg.value)
        h = s.h - (alpha / env.n) * msg.value.sum(0)
        theta = s.theta + msg.value.mean(0) - h / alpha
        m = ids.numel()
        log = cohort_log(env, msg.bits, m, bits_down, loss)
        return FedDynState(s.t + 1, theta, h, s.grad_i, down, up), log

    return Algorithm(init, round, lambda s: s.theta)


ALGORITHMS.add(
    Component(
        "feddyn",
        feddyn,
        {
            **LOCAL_PARAMS,
            "alpha": Param(
                0.1, "dynamic regulariser α (FL-Simulator `lamb` = 0.1)", low=0.0, low_open=True
            ),
        },
        "local objective f_i − ⟨∇_i, θ⟩ + (α/2)‖θ − θ^{t−1}‖²; server θ = mean θ_i − h/α",
        paper="Acar et al., ICLR 2021 (arXiv 2111.04263)",
        # the dual ∇_i sums the compressed updates: an unbiased Q with ω > 0 makes it a random
        # walk (as SCAFFOLD's control variates)
        requires="contractive",
    )
)
