"""WAFL: local SGD on a Wasserstein-robust surrogate of each client's loss.

"On the Generalization of Wasserstein Robust Federated Learning", Tung-Anh Nguyen, Tuan Dung
Nguyen, Long Tan Le, Canh T. Dinh, Nguyen H. Tran, 2022, arXiv 2206.01432 (WAFL); official
code github.com/dual-grp/WAFL.

Variant: the client objective is the Wasserstein distributionally robust surrogate
f_i^γ(θ) = E_{(x, y) ~ P_i} [ sup_ζ ℓ(θ; ζ, y) − (γ/2)‖ζ − x‖² ] (transport cost ‖ζ − x‖² on
the inputs, labels fixed). Each local step takes a minibatch, approximates every sample's
sup by T steps of gradient ascent from ζ = x,

    ζ ← ζ + α (∇_ζ ℓ(θ; ζ, y) − γ (ζ − x)),

and then takes an SGD step on the loss at the perturbed inputs, θ ← θ − η ∇_θ mean ℓ(θ; ζ, y)
(Danskin: the surrogate's gradient at the maximiser). The server averages the updates as
FedAvg (its server optimizer, uplink compressor and error feedback apply). Constants
[code: `User.wasssertein` (sic) in FLAlgorithms/users/userbase.py, whose ascent
`X_adv += α·B·∇(mean ℓ − γ‖X_adv − X‖²/(2B))` is the per-sample step above]: T = 10,
α = 10 (the function's defaults; the server passes its own α), γ = 0.05 (README's MNIST run).
Deviation: the code stops the ascent early when the batch's gradient norm is below 1e-4; here
all T steps always run (vectorised over clients). With α = 0 (no ascent) WAFL is FedAvg.

Inputs must be continuous: token-sequence tasks (the transformer) are refused by the grid.
Bits: as FedAvg, C(Δ_i) up, the model down.
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
    local_batches,
    needs_minibatches,
    sample_cohort,
    update_compressor,
)
from fedbench.models import Model
from fedbench.params import Component, Param
from fedbench.seeding import RoundRng
from fedbench.server_opt import SERVER_PARAMS, build_server_opt
from fedbench.task import regulariser


def input_grad(model: Model, w: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """∇_x ℓ(w_i; x_ij, y_ij) of every sample: `w [m, d]`, `x [m, B, ...]` -> `[m, B, ...]`."""
    with torch.enable_grad():
        xr = x.detach().requires_grad_()
        z = model.logits(w.detach(), xr)  # [m, B, ...]
        per = model.sample_loss(z.flatten(0, 1), y.flatten(0, 1))  # [m·B]
        (g,) = torch.autograd.grad(per.sum(), xr)
    return g


def worst_case(
    model: Model, w: Tensor, x: Tensor, y: Tensor, alpha: float, gamma: float, T: int
) -> Tensor:
    """ζ after T ascent steps on ℓ(w; ζ, y) − (γ/2)‖ζ − x‖² from ζ = x: `[m, B, ...]`."""
    zeta = x.clone()
    for _ in range(T if alpha > 0 else 0):
        zeta = zeta + alpha * (input_grad(model, w, zeta, y) - gamma * (zeta - x))
    return zeta


class WAFLState(NamedTuple):
    t: int
    x: Tensor  # [d] server model θ
    opt: Any  # server optimizer state
    down: Broadcast
    up: Any  # uplink compressor state


def wafl(
    lr: float, local_steps: int, gamma: float, adv_lr: float, adv_steps: int, **server: Any
) -> Algorithm:
    opt = build_server_opt(server)

    def local_train(
        env: Env, x: Tensor, ids: Tensor, gen: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        task, m, B = env.task, ids.numel(), int(env.batch_size)
        idx = local_batches(env, x, ids, local_steps, gen)  # [m, K, B]
        y = x.expand(m, -1).clone()  # [m, d]
        wt = torch.full((m, B), 1.0 / B, device=env.device)
        loss_sum = torch.zeros(m, device=env.device)
        for k in range(local_steps):
            xb, yb = task.data.x[idx[:, k]], task.data.y[idx[:, k]]  # [m, B, ...], [m, B]
            zeta = worst_case(task.model, y, xb, yb, adv_lr, gamma, adv_steps)
            loss, g = task.model.loss_grad(y, zeta, yb, wt)  # at the perturbed inputs
            r, dr = regulariser(y, task.reg, task.lam)
            if dr is not None:
                loss, g = loss + r, g + dr
            loss_sum += loss
            y.add_(g, alpha=-lr)
        return y, loss_sum / local_steps

    def init(x0: Tensor, env: Env, rng: RoundRng) -> WAFLState:
        up = update_compressor(env).init(env.n, env.d, env.device)
        return WAFLState(0, x0, opt.init(x0), broadcast_init(env, x0), up)

    def round(s: WAFLState, env: Env, rng: RoundRng) -> tuple[WAFLState, RoundLog]:
        if env.batch_size == "full":
            raise ValueError('wafl: [algorithm] batch_size = "full" is not supported')
        ids = sample_cohort(env, rng)  # [m]
        down, bits_down = broadcast(env, s.x, s.down, rng(seeding.DOWNLINK))
        y, loss = local_train(env, down.x_hat, ids, rng(seeding.BATCHES))
        delta = y - down.x_hat  # Δ_i [m, d]
        x, opt_state, msg, up = average_updates(env, opt, s.x, s.opt, s.up, delta, ids, rng)
        log = cohort_log(env, msg.bits, ids.numel(), bits_down, loss)
        return WAFLState(s.t + 1, x, opt_state, down, up), log

    return Algorithm(init, round, lambda s: s.x)


ALGORITHMS.add(
    Component(
        "wafl",
        wafl,
        {
            **LOCAL_PARAMS,
            "gamma": Param(0.05, "transport cost weight γ of the robust surrogate", low=0.0),
            "adv_lr": Param(10.0, "ascent step α on the inputs (0 = FedAvg)", low=0.0),
            "adv_steps": Param(10, "ascent steps T per minibatch", "int", low=1),
            **SERVER_PARAMS,
        },
        "local SGD on the Wasserstein-robust surrogate: inputs moved by T ascent steps on "
        "ℓ − (γ/2)‖ζ − x‖², then a descent step at the perturbed inputs",
        paper="Nguyen et al. 2022 (arXiv 2206.01432); code dual-grp/WAFL",
        extra={"continuous_inputs": True, "autograd": True},
        check=needs_minibatches("wafl", "moves the inputs of each minibatch"),
    )
)
