"""Δ-SGD: every client tunes its own local step size from local smoothness estimates.

"Adaptive Federated Learning with Auto-Tuned Clients", Kim, Toghani, Uribe, Kyrillidis,
ICLR 2024, arXiv 2306.11201 (Algorithm 1, FedAvg server; rule as in the authors' `adsgd`
optimizer).

Client i, local step k: g_k = g_i(y_k) and g_i(y_{k−1}) on the same minibatch;
η_k = min{ γ‖y_k − y_{k−1}‖ / (2‖g_i(y_k) − g_i(y_{k−1})‖), √(1 + δθ_{k−1}) η_{k−1} },
θ_k = η_k/η_{k−1}, y_{k+1} = y_k − η_k g_k (k = 0 has no difference yet: the growth branch).
η and θ restart from η₀ and θ₀ = 1 every round (`reset`, the paper) or carry over per client.
Each client's η is one entry of an `[m]` tensor, its norms are row norms. Upload and server as
FedAvg: C(y_K − x̂) (error feedback optional), server optimizer on −mean C(Δ_i).
"""

from __future__ import annotations

from collections.abc import Callable
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
    bits_vector,
    broadcast,
    broadcast_init,
    local_batches,
    sample_cohort,
    update_compressor,
)
from fedbench.params import Component, Param
from fedbench.seeding import RoundRng
from fedbench.server_opt import SERVER_PARAMS, build_server_opt

# (w [m, d], local step k) -> (loss [m], gradient [m, d]) on the minibatch of step k
GradFn = Callable[[Tensor, int], tuple[Tensor, Tensor]]


class DeltaSGDState(NamedTuple):
    t: int
    x: Tensor  # [d] server model
    eta_i: Tensor  # [n] last local step size of each client (used when not reset)
    theta_i: Tensor  # [n] last ratio η_k/η_{k−1} of each client
    opt: Any
    down: Broadcast
    up: Any


def adaptive_sgd(
    grad: GradFn,
    y0: Tensor,
    steps: int,
    eta: Tensor,
    theta: Tensor,
    gamma: float,
    delta: float,
    fresh_pair: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """K steps of Δ-SGD for every row of `y0 [m, d]` from step sizes `eta [m]`, `theta [m]`.

    `fresh_pair`: evaluate g(y_{k−1}) again on step k's minibatch (stochastic gradients);
    False reuses the previous step's gradient (full local gradients: the same batch).
    Returns y_K [m, d], the step sizes used [K, m], the last θ [m] and the mean loss [m].
    """
    y, y_prev, g_prev = y0.clone(), y0, torch.zeros_like(y0)
    etas, loss_sum = [], torch.zeros(y0.shape[0], device=y0.device)
    for k in range(steps):
        loss, g = grad(y, k)
        loss_sum += loss
        grow = eta * torch.sqrt(1 + delta * theta)  # [m]
        if k > 0:
            g_old = grad(y_prev, k)[1] if fresh_pair else g_prev
            dy = (y - y_prev).norm(dim=1)  # [m]
            dg = (g - g_old).norm(dim=1)  # [m]
            est = gamma * dy / (2 * dg)
            grow = torch.where((dy > 0) & (dg > 0), torch.minimum(grow, est), grow)
        theta, eta = grow / eta, grow
        etas.append(eta)
        y_prev, g_prev = y, g
        y = y - eta.unsqueeze(1) * g
    return y, torch.stack(etas), theta, loss_sum / steps


def delta_sgd(
    lr: float, local_steps: int, gamma: float, delta: float, reset: bool, **server: Any
) -> Algorithm:
    opt = build_server_opt(server)

    def init(x0: Tensor, env: Env, rng: RoundRng) -> DeltaSGDState:
        eta = torch.full((env.n,), lr, device=env.device)
        up = update_compressor(env).init(env.n, env.d, env.device)
        return DeltaSGDState(
            0, x0, eta, torch.ones_like(eta), opt.init(x0), broadcast_init(env, x0), up
        )

    def round(s: DeltaSGDState, env: Env, rng: RoundRng) -> tuple[DeltaSGDState, RoundLog]:
        ids = sample_cohort(env, rng)  # [m]
        m = ids.numel()
        down, bits_down = broadcast(env, s.x, s.down, rng(seeding.DOWNLINK))
        full = env.batch_size == "full"
        idx = None
        if not full:
            idx = local_batches(env, down.x_hat, ids, local_steps, rng(seeding.BATCHES))

        def grad(w: Tensor, k: int) -> tuple[Tensor, Tensor]:
            return env.task.loss_grad(w, ids, None if idx is None else idx[:, k])

        eta0 = torch.full((m,), lr, device=env.device) if reset else s.eta_i[ids]
        theta0 = torch.ones_like(eta0) if reset else s.theta_i[ids]
        y0 = down.x_hat.expand(m, -1)
        y, etas, theta, loss = adaptive_sgd(
            grad, y0, local_steps, eta0, theta0, gamma, delta, fresh_pair=not full
        )
        s.eta_i[ids], s.theta_i[ids] = etas[-1], theta
        Delta = y - down.x_hat  # Δ_i [m, d]
        x, opt_state, msg, up = average_updates(env, opt, s.x, s.opt, s.up, Delta, ids, rng)
        extra = {"local_loss": float(loss.mean()), "local_lr": float(etas.mean())}
        log = RoundLog(msg.bits, bits_vector(m, bits_down, env.device), m, extra)
        return DeltaSGDState(s.t + 1, x, s.eta_i, s.theta_i, opt_state, down, up), log

    return Algorithm(init, round, lambda s: s.x)


ALGORITHMS.add(
    Component(
        "delta_sgd",
        delta_sgd,
        {
            "lr": Param(0.2, "initial local step size η₀", low=0.0, low_open=True),
            "local_steps": LOCAL_PARAMS["local_steps"],
            "gamma": Param(2.0, "γ in γ‖Δy‖/(2‖Δg‖)", low=0.0, low_open=True),
            "delta": Param(0.1, "amplifier δ in √(1 + δθ)", low=0.0),
            "reset": Param(True, "restart η, θ from η₀, 1 every round", "bool"),
            **SERVER_PARAMS,
        },
        "FedAvg whose clients auto-tune their local step size (Δ-SGD)",
        paper="Kim, Toghani, Uribe, Kyrillidis, ICLR 2024 (arXiv 2306.11201)",
    )
)
