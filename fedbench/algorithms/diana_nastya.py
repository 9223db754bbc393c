"""DIANA-NASTYA: Q-NASTYA with one learned shift per client.

"Federated Optimization Algorithms with Random Reshuffling and Gradient Compression", Sadiev,
Malinovsky, Gorbunov, Sokolov, Khaled, Burlachenko, Richtárik 2022, arXiv 2206.07021
(DIANA-NASTYA).

Variant: the local epoch of Q-NASTYA (`q_nastya.py`) gives g_i = (x^t − y_i)/(γ steps_i);
client i ∈ S_t sends m_i = Q(g_i − h_i) and sets h_i ← h_i + α m_i; the server steps with
x^{t+1} = x^t − η (h + (1/s) Σ_{S_t} m_i) and keeps h ← h + (α/n) Σ_{S_t} m_i = mean_i h_i
(partial participation as DIANA-PP; h a float32 running sum). α = 1/(1+ω) by default;
h_i⁰ = 0. The shifts h_i are `client_rows` (as in `diana.py`), written per cohort.
Q = I (any α) is Q-NASTYA with Q = I.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from fedbench import seeding
from fedbench.algorithms.base import (
    ALGORITHMS,
    Algorithm,
    Broadcast,
    Env,
    RoundLog,
    broadcast,
    broadcast_init,
    client_rows,
    cohort_log,
    gather_rows,
    sample_cohort,
    scatter_rows,
)
from fedbench.algorithms.diana import SHIFT_ALPHA, shift_rate
from fedbench.algorithms.q_nastya import NASTYA_PARAMS, rr_epoch
from fedbench.params import Component
from fedbench.seeding import RoundRng


class DianaNastyaState(NamedTuple):
    t: int
    alpha: float  # α
    x: Tensor  # [d]
    h: Tensor  # [d] = mean_i h_i
    h_i: Tensor  # [n, d] client shifts (`client_rows`: rows written per cohort)
    down: Broadcast
    up: object


def diana_nastya(lr: float, server_lr: float, alpha: float | str) -> Algorithm:
    def init(x0: Tensor, env: Env, rng: RoundRng) -> DianaNastyaState:
        return DianaNastyaState(
            0,
            shift_rate(alpha, env.uplink.param),
            x0,
            torch.zeros_like(x0),
            client_rows(env),
            broadcast_init(env, x0),
            env.uplink.init(env.n, env.d, env.device),
        )

    def round(s: DianaNastyaState, env: Env, rng: RoundRng) -> tuple[DianaNastyaState, RoundLog]:
        ids = sample_cohort(env, rng)  # [m]
        m = ids.numel()
        down, bits_down = broadcast(env, s.x, s.down, rng(seeding.DOWNLINK))
        g, loss = rr_epoch(env, down.x_hat, ids, lr, rng(seeding.BATCHES))  # [m, d]
        h_i = gather_rows(s.h_i, ids, env.device)  # [m, d] float32
        q, up = env.uplink.compress(g - h_i, ids, s.up, rng(seeding.UPLINK))
        scatter_rows(s.h_i, ids, h_i + s.alpha * q.value)
        x = s.x - server_lr * (s.h + q.value.mean(0))
        h = s.h + s.alpha * q.value.sum(0) / env.n
        log = cohort_log(env, q.bits, m, bits_down, loss)
        return DianaNastyaState(s.t + 1, s.alpha, x, h, s.h_i, down, up), log

    return Algorithm(init, round, lambda s: s.x)


ALGORITHMS.add(
    Component(
        "diana_nastya",
        diana_nastya,
        {
            **NASTYA_PARAMS,
            "alpha": SHIFT_ALPHA,
        },
        "Q-NASTYA's local RR epoch with DIANA shifts on the pseudo-gradients",
        paper="Sadiev et al. 2022 (arXiv 2206.07021)",
        requires="unbiased",
        extra={"error_feedback": False},
    )
)
