"""EF21-W: EF21 with client weights w_i ∝ L_i.

"Error Feedback Reloaded: From Quadratic to Arithmetic Mean of Smoothness Constants",
Richtárik, Gasanov, Burlachenko, ICLR 2024, arXiv 2402.10774.

Variant: EF21-W with weights w_i = L_i / Σ_j L_j. Client i tracks ∇f_i/(n w_i):
g_i⁰ = ∇f_i(x⁰)/(n w_i) sent dense once; each round x^{t+1} = x^t − γ g^t, then client i ∈ S
sends c_i = C(∇f_i(x^{t+1})/(n w_i) − g_i^t), g_i^{t+1} = g_i^t + c_i, and the server keeps
g^{t+1} = g^t + Σ_{i∈S} w_i c_i = Σ_i w_i g_i (an unbiased mean of the ∇f_i). Equal L_i give
w_i = 1/n: EF21. `lr = "theory"`: EF21's γ with L̃ = arithmetic mean of the L_i (the paper's
improvement over the quadratic mean). L_i come from `Task.smoothness()` (linear models) or,
for other models, a power-iteration estimate at x⁰.
The estimators g_i are `client_rows` (gathered and written back per cohort, `client_state`
honoured, host memory when they do not fit the device); g_i⁰ writes every row, so none stays
zero pages. g is a float32 running sum (Σ_i w_i g_i⁰ taken before the rows are stored).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from fedbench import seeding
from fedbench.algorithms._ef21_common import (
    dense_rows,
    dense_start,
    estimate_smoothness,
    step_size,
)
from fedbench.algorithms.base import (
    ALGORITHMS,
    Algorithm,
    Broadcast,
    Env,
    RoundLog,
    broadcast,
    broadcast_init,
    cohort_log,
    gather_rows,
    gradients,
    sample_cohort,
    scatter_rows,
)
from fedbench.params import Component, theory_lr
from fedbench.seeding import RoundRng


class EF21WState(NamedTuple):
    t: int
    x: Tensor  # [d]
    g: Tensor  # [d] = Σ_i w_i g_i
    g_i: Tensor  # [n, d] client estimators of ∇f_i/(n w_i) (`client_rows`)
    w: Tensor  # [n] weights, sum 1
    down: Broadcast
    up: object
    init_bits: Tensor  # [n] dense g_i⁰, charged to the first round
    gamma: float


def ef21_w(lr: float | str) -> Algorithm:
    def init(x0: Tensor, env: Env, rng: RoundRng) -> EF21WState:
        gen = rng(seeding.ALGORITHM)
        grad, init_bits = dense_start(env, x0, gen)
        L_i = estimate_smoothness(env, x0, gen)  # [n]
        w = L_i / L_i.sum()
        g_i = grad / (env.n * w).unsqueeze(1)  # [n, d]
        up = env.uplink.init(env.n, env.d, env.device)
        gamma = step_size(lr, env, "arithmetic")
        g, rows, down = w @ g_i, dense_rows(env, g_i), broadcast_init(env, x0)
        return EF21WState(0, x0, g, rows, w, down, up, init_bits, gamma)

    def round(s: EF21WState, env: Env, rng: RoundRng) -> tuple[EF21WState, RoundLog]:
        x = s.x - s.gamma * s.g  # x^{t+1}
        ids = sample_cohort(env, rng)
        down, bits_down = broadcast(env, x, s.down, rng(seeding.DOWNLINK))
        loss, grad = gradients(env, down.x_hat.expand(ids.numel(), -1), ids, rng(seeding.BATCHES))
        w = s.w[ids].unsqueeze(1)  # [m, 1]
        g_i = gather_rows(s.g_i, ids, env.device)  # [m, d] float32
        c, up = env.uplink.compress(grad / (env.n * w) - g_i, ids, s.up, rng(seeding.UPLINK))
        scatter_rows(s.g_i, ids, g_i + c.value)
        g = s.g + (w * c.value).sum(0)
        m = ids.numel()
        bits_up = torch.cat([s.init_bits, c.bits]) if s.t == 0 else c.bits
        log = cohort_log(env, bits_up, m, bits_down, loss)
        return s._replace(t=s.t + 1, x=x, g=g, down=down, up=up), log

    return Algorithm(init, round, lambda s: s.x)


ALGORITHMS.add(
    Component(
        "ef21_w",
        ef21_w,
        {"lr": theory_lr(0.1, "step size γ")},
        "EF21 with weights w_i ∝ L_i: step size from the arithmetic mean of the L_i",
        paper="Richtárik, Gasanov, Burlachenko, ICLR 2024 (arXiv 2402.10774)",
        requires="contractive",
        extra={"error_feedback": False, "local": False},
    )
)
