"""FedZO: federated zeroth-order optimisation (FedAvg with a random-direction gradient estimator).

"Communication-Efficient Stochastic Zeroth-Order Optimization for Federated Learning", Fang,
Yu, Jiang, Shi, Jones, Zhou, IEEE TSP 2022, arXiv 2201.09531; Algorithm 1 without the AirComp
channel (the uplink is fedbench's compressor).

Each sampled client runs H local steps y ← y − η ∇̃f_i(y) from the broadcast model with the
two-point estimator over b₂ directions v_j uniform on the unit sphere and a minibatch of
b₁ = batch_size samples (the same v_j for every sample of the batch):
    ∇̃f_i(y) = (1/b₂) Σ_j (d/μ) [f_i(y + μ v_j; ξ) − f_i(y; ξ)] v_j,
an unbiased estimate of ∇f_i^μ, the gradient of the ball-smoothed f_i^μ(y) = E_u f_i(y + μu)
(Flaxman et al.; exactly ∇f_i for a quadratic). The server averages the uploaded C(Δ_i) and
steps with its optimizer (SGD, η_g = 1: x ← x + mean C(Δ_i)). Zeroth order: only function
values are used (the simulator reuses the task's loss; its backward pass is wasted work).
Queries: a step costs b₁·(b₂ + 1) sample-level function evaluations per client; the metric
`queries` is their cumulative total over all clients. Defaults (η, μ, b₂) are ours [mem].
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from fedbench import seeding
from fedbench.algorithms.base import (
    ALGORITHMS,
    Algorithm,
    Broadcast,
    Env,
    RoundLog,
    average_updates,
    broadcast,
    broadcast_init,
    cohort_log,
    local_batches,
    sample_cohort,
    update_compressor,
)
from fedbench.params import Component, Param
from fedbench.seeding import RoundRng
from fedbench.server_opt import SERVER_PARAMS, build_server_opt


class FedZOState(NamedTuple):
    t: int
    x: Tensor  # [d]
    opt: Any  # server optimizer state
    down: Broadcast
    up: Any
    queries: float  # cumulative function evaluations over all clients


def sphere(shape: tuple[int, ...], gen: torch.Generator, device: torch.device) -> Tensor:
    """Directions uniform on the unit sphere `[..., d]` (normalised Gaussians)."""
    v = torch.randn(shape, generator=gen, device=gen.device).to(device)
    return v / v.norm(dim=-1, keepdim=True)


def zo_estimate(
    env: Env, y: Tensor, ids: Tensor, v: Tensor, mu: float, idx: Tensor | None
) -> tuple[Tensor, Tensor]:
    """(1/b₂) Σ_j (d/μ)[f_i(y + μv_j) − f_i(y)] v_j `[m, d]` for directions v `[m, b₂, d]` on
    the minibatch `idx [m, B]` (None: full local data), and f_i(y) `[m]`."""
    m, b2, d = v.shape
    f0, _ = env.task.loss_grad(y, ids, idx)  # [m]
    rows = ids.repeat_interleave(b2)  # [m·b₂]
    bidx = None if idx is None else idx.repeat_interleave(b2, 0)
    f1, _ = env.task.loss_grad((y.unsqueeze(1) + mu * v).reshape(m * b2, d), rows, bidx)
    coef = (d / mu) * (f1.view(m, b2) - f0.unsqueeze(1))  # [m, b₂]
    return torch.einsum("mj,mjd->md", coef, v) / b2, f0


def fedzo(lr: float, local_steps: int, mu: float, directions: int, **server: Any) -> Algorithm:
    opt = build_server_opt(server)

    def init(x0: Tensor, env: Env, rng: RoundRng) -> FedZOState:
        up = update_compressor(env).init(env.n, env.d, env.device)
        return FedZOState(0, x0, opt.init(x0), broadcast_init(env, x0), up, 0.0)

    def round(s: FedZOState, env: Env, rng: RoundRng) -> tuple[FedZOState, RoundLog]:
        ids = sample_cohort(env, rng)  # [m]
        m = ids.numel()
        down, bits_down = broadcast(env, s.x, s.down, rng(seeding.DOWNLINK))
        full = env.batch_size == "full"
        H = local_steps
        idx = None if full else local_batches(env, down.x_hat, ids, H, rng(seeding.BATCHES))
        v = sphere((H, m, directions, env.d), rng(seeding.ALGORITHM), env.device)
        y = down.x_hat.expand(m, -1).clone()  # [m, d]
        loss = torch.zeros(m, device=env.device)
        for k in range(H):  # local steps (the cohort is batched)
            g, f0 = zo_estimate(env, y, ids, v[k], mu, None if idx is None else idx[:, k])
            y = y - lr * g
            loss += f0
        delta = y - down.x_hat  # Δ_i [m, d]
        x, opt_state, msg, up = average_updates(env, opt, s.x, s.opt, s.up, delta, ids, rng)
        b1 = env.task.data.counts[ids].sum() if full else m * int(env.batch_size)
        queries = s.queries + float(b1) * (directions + 1) * H
        log = cohort_log(env, msg.bits, m, bits_down, loss / H)
        log.extra["queries"] = queries
        return FedZOState(s.t + 1, x, opt_state, down, up, queries), log

    return Algorithm(init, round, lambda s: s.x)


ALGORITHMS.add(
    Component(
        "fedzo",
        fedzo,
        {
            "lr": Param(0.01, "client (local) step size η", low=0.0, low_open=True),
            "local_steps": Param(5, "local zeroth-order steps H per round", "int", low=1),
            "mu": Param(
                1e-3, "smoothing radius μ of the two-point estimator", low=0.0, low_open=True
            ),
            "directions": Param(10, "random directions b₂ per step", "int", low=1),
            **SERVER_PARAMS,
        },
        "federated zeroth order: FedAvg whose local steps use two-point sphere estimates",
        paper="Fang et al., IEEE TSP 2022 (arXiv 2201.09531)",
        extra={},
    )
)
