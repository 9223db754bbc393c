"""DIANA-RR: random reshuffling with one learned shift per local sample.

"Federated Optimization Algorithms with Random Reshuffling and Gradient Compression", Sadiev,
Malinovsky, Gorbunov, Sokolov, Khaled, Burlachenko, Richtárik 2022, arXiv 2206.07021
(DIANA-RR).

Variant: as Q-RR (`q_rr.py`: per-client permutations, one step of the epoch per round), with a
shift h_{i,j} per training sample (N·d floats in all). For step j client i sends
m_i = Q(∇f_{i,π_i(j)}(x^t) − h̄_i), where h̄_i is the mean shift of the step's minibatch; the
server steps with x^{t+1} = x^t − γ (1/s) Σ_{S_t} (h̄_i + m_i) (the server holds the same shifts)
and every sample of the minibatch moves its shift: h_{i,π} ← h_{i,π} + α m_i. batch_size = 1 is
the paper (one sample per step; the shifts learn ∇f_{i,j}(x*)); with B > 1 each sample's shift
follows its minibatch's message. α = 1/(1+ω) by default. h⁰ = 0.
Q = I (any α) is distributed random reshuffling.
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
    cohort_log,
    needs_minibatches,
    sample_cohort,
)
from fedbench.algorithms.diana import SHIFT_ALPHA, shift_rate
from fedbench.algorithms.q_rr import Shuffle, rr_step, shuffle_init
from fedbench.params import Component, Param
from fedbench.seeding import RoundRng


class DianaRRState(NamedTuple):
    t: int
    alpha: float  # α
    x: Tensor  # [d]
    h: Tensor  # [N, d] one shift per training sample (rows grouped by client)
    shuffle: Shuffle
    down: Broadcast
    up: object


def sample_shifts(env: Env) -> Tensor:
    if env.batch_size == "full":
        raise ValueError('DIANA-RR needs minibatches (batch_size = "full" is DIANA: use diana)')
    N = int(env.task.data.counts.sum())
    if 4 * N * env.d > env.task.memory_bytes:
        raise ValueError(
            f"DIANA-RR keeps one shift per sample: {N} × {env.d} floats exceed the memory budget"
        )
    return torch.zeros(N, env.d, device=env.device)  # [N, d]


def diana_rr(lr: float, alpha: float | str) -> Algorithm:
    def init(x0: Tensor, env: Env, rng: RoundRng) -> DianaRRState:
        a = shift_rate(alpha, env.uplink.param)
        up = env.uplink.init(env.n, env.d, env.device)
        return DianaRRState(
            0, a, x0, sample_shifts(env), shuffle_init(env), broadcast_init(env, x0), up
        )

    def round(s: DianaRRState, env: Env, rng: RoundRng) -> tuple[DianaRRState, RoundLog]:
        ids = sample_cohort(env, rng)  # [m]
        m = ids.numel()
        down, bits_down = broadcast(env, s.x, s.down, rng(seeding.DOWNLINK))
        idx, sh = rr_step(env, s.shuffle, ids, rng(seeding.BATCHES))  # [m, B]
        assert idx is not None  # minibatches (checked in init)
        loss, g = env.task.loss_grad(down.x_hat.expand(m, -1), ids, idx)  # [m, d]
        h_bar = s.h[idx].mean(1)  # [m, d]
        q, up = env.uplink.compress(g - h_bar, ids, s.up, rng(seeding.UPLINK))
        x = s.x - lr * (h_bar + q.value).mean(0)
        s.h[idx] += s.alpha * q.value.unsqueeze(1)  # every sample of the minibatch
        log = cohort_log(env, q.bits, m, bits_down, loss)
        return DianaRRState(s.t + 1, s.alpha, x, s.h, sh, down, up), log

    return Algorithm(init, round, lambda s: s.x)


ALGORITHMS.add(
    Component(
        "diana_rr",
        diana_rr,
        {
            "lr": Param(0.1, "step size γ", low=0.0, low_open=True),
            "alpha": SHIFT_ALPHA,
        },
        "random reshuffling with per-sample shifts: compressed ∇f_{i,π} − h_{i,π}",
        paper="Sadiev et al. 2022 (arXiv 2206.07021)",
        requires="unbiased",
        extra={"error_feedback": False, "local": False},
        check=needs_minibatches(
            "diana_rr",
            "shifts each minibatch of a reshuffled epoch (with full batches it is diana)",
        ),
    )
)
