"""EF21: error feedback through compressed gradient differences.

"EF21: A New, Simpler, Theoretically Better, and Practically Faster Error Feedback",
Richtárik, Sokolov, Fatkhullin, NeurIPS 2021, arXiv 2106.05203.

Variant: Algorithm 1 with a contractive compressor C; g_i⁰ = ∇f_i(x⁰) sent dense once
(charged to the first round); lr = "theory" is Theorem 1's γ = 1/(L + L̃·√(β/θ)).
Each round: x^{t+1} = x^t − γ g^t; client i computes
c_i = C(∇f_i(x^{t+1}) − g_i^t), g_i^{t+1} = g_i^t + c_i and sends c_i; the server keeps
g^{t+1} = g^t + (1/n) Σ_i c_i = mean_i g_i. Gradients are full local ones with
batch_size = "full" (the paper) or minibatches (EF21-SGD). Under partial participation only
the cohort refreshes its g_i (EF21-PP style). C = identity is gradient descent.
The estimators g_i are `client_rows` (gathered and written back per cohort, `client_state`
honoured, host memory when they do not fit the device); g_i⁰ writes every row, so none stays
zero pages. g is a float32 running sum, whatever the rows' storage.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from fedbench import seeding
from fedbench.algorithms._ef21_common import dense_rows, step_size
from fedbench.algorithms.base import (
    ALGORITHMS,
    Algorithm,
    Broadcast,
    Env,
    RoundLog,
    bits_vector,
    broadcast,
    broadcast_init,
    cohort_log,
    gather_rows,
    gradients,
    sample_cohort,
    scatter_rows,
)
from fedbench.compressors.base import FLOAT_BITS
from fedbench.params import Component, theory_lr
from fedbench.seeding import RoundRng


class EF21State(NamedTuple):
    t: int
    gamma: float  # step size γ (a number, or the theory step from L, L_i and α)
    x: Tensor  # [d]
    g: Tensor  # [d] server estimator = mean_i g_i
    g_i: Tensor  # [n, d] client estimators (`client_rows`: rows written per cohort)
    down: Broadcast
    up: object
    init_bits: Tensor  # [n] bits of the dense g_i⁰, charged to the first round


def ef21(lr: float | str) -> Algorithm:
    def init(x0: Tensor, env: Env, rng: RoundRng) -> EF21State:
        everyone = torch.arange(env.n, device=env.device)
        _, g_i = gradients(env, x0.expand(env.n, -1), everyone, rng(seeding.ALGORITHM))
        return EF21State(
            0,
            step_size(lr, env),
            x0,
            g_i.mean(0),
            dense_rows(env, g_i),
            broadcast_init(env, x0),
            env.uplink.init(env.n, env.d, env.device),
            bits_vector(env.n, FLOAT_BITS * env.d, env.device),
        )

    def round(s: EF21State, env: Env, rng: RoundRng) -> tuple[EF21State, RoundLog]:
        x = s.x - s.gamma * s.g  # x^{t+1}
        ids = sample_cohort(env, rng)
        down, bits_down = broadcast(env, x, s.down, rng(seeding.DOWNLINK))
        loss, grad = gradients(env, down.x_hat.expand(ids.numel(), -1), ids, rng(seeding.BATCHES))
        g_i = gather_rows(s.g_i, ids, env.device)  # [m, d] float32
        c, up = env.uplink.compress(grad - g_i, ids, s.up, rng(seeding.UPLINK))
        scatter_rows(s.g_i, ids, g_i + c.value)
        g = s.g + c.value.sum(0) / env.n
        m = ids.numel()
        bits_up = torch.cat([s.init_bits, c.bits]) if s.t == 0 else c.bits
        log = cohort_log(env, bits_up, m, bits_down, loss)
        return EF21State(s.t + 1, s.gamma, x, g, s.g_i, down, up, s.init_bits), log

    return Algorithm(init, round, lambda s: s.x)


ALGORITHMS.add(
    Component(
        "ef21",
        ef21,
        {"lr": theory_lr(0.1, "step size γ")},
        "compressed gradient differences g_i += C(∇f_i(x) − g_i); one gradient per round",
        paper="Richtárik, Sokolov, Fatkhullin, NeurIPS 2021 (arXiv 2106.05203)",
        requires="contractive",
        extra={"error_feedback": False, "local": False},
    )
)
