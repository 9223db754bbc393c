"""Mime and MimeLite: server optimizer statistics applied in every client step.

"Mime: Mimicking Centralized Stochastic Algorithms in Federated Learning", Karimireddy, Jaggi,
Kale, Mohri, Reddi, Stich, Suresh, arXiv 2008.03606; structure as FedJAX's
`algorithms/mime.py` and `mime_lite.py`.

Base optimizer: SGD with momentum β in EMA form, m ← (1−β)g + βm, x ← x − ηm. The server
holds m and broadcasts it with x; clients use it frozen (never update it locally):
  MimeLite  y ← y − η((1−β) g_i(y; ζ) + β m);
  Mime      y ← y − η((1−β)(g_i(y; ζ) − g_i(x; ζ) + c) + β m), with c = mean_{i∈S} ∇f_i(x)
            the full-batch gradient at the server model averaged over the cohort (computed,
            uploaded and broadcast before local training, then the SVRG correction on the same
            minibatch ζ at every step).
Clients upload Δ_i = y_K − x̂ (compressed, error feedback as FedAvg) and ∇f_i(x) (dense); the
server sets c = mean_i ∇f_i(x) (MimeLite computes it after training, as FedJAX), updates the
statistic m ← (1−β)c + βm with the full-batch gradient only, and x ← x + η_g mean_i C(Δ_i).
Bits: up C(Δ_i) + 32·d; down x̂ + m (32·d), Mime also c (32·d).
β = 0 MimeLite is FedAvg (tested bit for bit); Mime with K = 1 is SGD with momentum on the
cohort's full-batch gradient for any minibatch (the correction cancels g_i(x; ζ); tested).
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
    cohort_log,
    local_sgd,
    sample_cohort,
    sees_step,
    step_grad,
    update_compressor,
)
from fedbench.compressors.base import FLOAT_BITS
from fedbench.parallel import rowwise
from fedbench.params import Component, Param
from fedbench.seeding import RoundRng


class MimeState(NamedTuple):
    t: int
    x: Tensor  # [d] server model
    m: Tensor  # [d] server momentum (the base optimizer's statistic)
    down: Broadcast
    up: Any  # uplink compressor state


def full_batch_gradient(env: Env, x: Tensor, ids: Tensor) -> Tensor:
    """c = mean_{i ∈ S} ∇f_i(x) `[d]` over each cohort client's full local data."""
    _, g = env.task.loss_grad(x.expand(ids.numel(), -1), ids)  # [m, d]
    return g.mean(0)


def mime_family(
    lite: bool, lr: float, local_steps: int, beta: float, server_lr: float
) -> Algorithm:
    def init(x0: Tensor, env: Env, rng: RoundRng) -> MimeState:
        up = update_compressor(env).init(env.n, env.d, env.device)
        return MimeState(0, x0, torch.zeros_like(x0), broadcast_init(env, x0), up)

    def round(s: MimeState, env: Env, rng: RoundRng) -> tuple[MimeState, RoundLog]:
        ids = sample_cohort(env, rng)  # [m]
        down, bits_down = broadcast(env, s.x, s.down, rng(seeding.DOWNLINK))
        x, m_t = down.x_hat, s.m
        gen = rng(seeding.BATCHES)
        if lite:

            @rowwise
            def mix(y: Tensor, g: Tensor, rows: slice) -> Tensor:
                return g.mul_(1.0 - beta).add_(m_t, alpha=beta)  # (1−β)g + βm

            y, loss = local_sgd(env, x, ids, local_steps, lr, gen, mix)
            c = full_batch_gradient(env, x, ids)  # after training (FedJAX mime_lite)
        else:
            c = full_batch_gradient(env, x, ids)  # before training: broadcast to the cohort
            x_rows = x.expand(ids.numel(), -1)

            @rowwise
            @sees_step
            def svrg(y: Tensor, g: Tensor, rows: slice, step: Step) -> Tensor:
                _, g_x = step_grad(env, x_rows[rows], step)  # same minibatch at x
                return g.sub_(g_x).add_(c).mul_(1.0 - beta).add_(m_t, alpha=beta)

            y, loss = local_sgd(env, x, ids, local_steps, lr, gen, svrg)
        msg, up = update_compressor(env).compress(y - x, ids, s.up, rng(seeding.UPLINK))
        x_new = s.x + server_lr * msg.value.mean(0)
        m_new = (1.0 - beta) * c + beta * s.m
        extra_down = FLOAT_BITS * env.d * (1 if lite else 2)  # m (and c)
        log = cohort_log(
            env, msg.bits + FLOAT_BITS * env.d, ids.numel(), bits_down + extra_down, loss
        )
        return MimeState(s.t + 1, x_new, m_new, down, up), log

    return Algorithm(init, round, lambda s: s.x)


def mime(lr: float, local_steps: int, beta: float, server_lr: float) -> Algorithm:
    return mime_family(False, lr, local_steps, beta, server_lr)


def mimelite(lr: float, local_steps: int, beta: float, server_lr: float) -> Algorithm:
    return mime_family(True, lr, local_steps, beta, server_lr)


MIME_PARAMS = {
    **LOCAL_PARAMS,
    "beta": Param(
        0.9, "server momentum β of the base optimizer (SGDm)", low=0.0, high=1.0, high_open=True
    ),
    "server_lr": Param(1.0, "server learning rate η_g on the mean update", low=0.0, low_open=True),
}
ALGORITHMS.add(
    Component(
        "mime",
        mime,
        MIME_PARAMS,
        "frozen server momentum in client steps + SVRG correction with the full-batch gradient",
        paper="Karimireddy et al. (arXiv 2008.03606)",
    )
)
ALGORITHMS.add(
    Component(
        "mimelite",
        mimelite,
        MIME_PARAMS,
        "frozen server momentum in client steps; server momentum from full-batch gradients",
        paper="Karimireddy et al. (arXiv 2008.03606)",
    )
)
