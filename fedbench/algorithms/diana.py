"""DIANA: compressed gradient differences with learned shifts.

"Distributed Learning with Compressed Gradient Differences", Mishchenko, Gorbunov, Takáč,
Richtárik 2019, arXiv 1901.09269; "Stochastic distributed learning with gradient quantization
and variance reduction", Horváth, Kovalev, Mishchenko, Stich, Richtárik 2019, arXiv 1904.05115.

Variant (Alg. 1, no prox; partial participation as DIANA-PP): client i ∈ S_t sends
m_i = Q(g_i(x^t) − h_i) and sets h_i ← h_i + α m_i; the server steps with
ĝ = h + (1/s) Σ_{S_t} m_i, x^{t+1} = x^t − γ ĝ, and keeps h ← h + (α/n) Σ_{S_t} m_i, so that
h = mean_i h_i always (a float32 running sum, whatever the rows' storage). h_i⁰ = 0.
α = 1/(1+ω) by default ("auto"). The shifts h_i are `client_rows`: gathered and written back
per cohort (host memory when they do not fit the device, zero pages until a client is first
sampled on a CPU, stored in `client_state`).
Theory γ (FL_PyTorch's strongly convex choice): 1/(max_i L_i · (1 + 4ω/s)).
Q = I with α = 1 is gradient descent; α = 0 is DCGD.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from fedbench import seeding
from fedbench.algorithms._shifts import Formula, step_size
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
    cohort_size,
    gather_rows,
    gradients,
    sample_cohort,
    scatter_rows,
)
from fedbench.params import Component, Param, theory_lr
from fedbench.seeding import RoundRng
from fedbench.task import Smoothness


def diana_gamma(sm: Smoothness, omega: float, n: int, s: int) -> float:
    return 1.0 / (float(sm.L_i.max()) * (1.0 + 4.0 * omega / s))


# the grid parameter α of every DIANA-style method (diana, diana_rr, diana_nastya)
SHIFT_ALPHA = Param(
    "auto",
    'shift step α in [0, 1], or "auto" = 1/(1+ω)',
    "float_or_str",
    choices=("auto",),
    low=0.0,
    high=1.0,
)


def shift_rate(alpha: float | str, omega: float) -> float:
    """α: a number in [0, 1], or "auto" = 1/(1+ω)."""
    if isinstance(alpha, str):
        if alpha != "auto":
            raise ValueError(f'alpha must be a number or "auto", got {alpha!r}')
        return 1.0 / (1.0 + omega)
    return float(alpha)


class DianaState(NamedTuple):
    t: int
    gamma: float  # γ
    alpha: float  # α
    x: Tensor  # [d]
    h: Tensor  # [d] server shift = mean_i h_i
    h_i: Tensor  # [n, d] client shifts (`client_rows`: rows written per cohort)
    down: Broadcast
    up: object


def diana(lr: float | str, alpha: float | str, formula: Formula = diana_gamma) -> Algorithm:
    """DIANA(-PP); `formula` gives γ for lr = "theory" (COFIG reuses these updates)."""

    def init(x0: Tensor, env: Env, rng: RoundRng) -> DianaState:
        gamma = step_size(lr, env, cohort_size(env.n, env.participation), formula)
        return DianaState(
            0,
            gamma,
            shift_rate(alpha, env.uplink.param),
            x0,
            torch.zeros_like(x0),
            client_rows(env),
            broadcast_init(env, x0),
            env.uplink.init(env.n, env.d, env.device),
        )

    def round(s: DianaState, env: Env, rng: RoundRng) -> tuple[DianaState, RoundLog]:
        ids = sample_cohort(env, rng)  # [m]
        down, bits_down = broadcast(env, s.x, s.down, rng(seeding.DOWNLINK))
        m = ids.numel()
        loss, g = gradients(env, down.x_hat.expand(m, -1), ids, rng(seeding.BATCHES))  # [m, d]
        h_i = gather_rows(s.h_i, ids, env.device)  # [m, d] float32
        q, up = env.uplink.compress(g - h_i, ids, s.up, rng(seeding.UPLINK))  # m_i
        scatter_rows(s.h_i, ids, h_i + s.alpha * q.value)
        x = s.x - s.gamma * (s.h + q.value.mean(0))
        h = s.h + s.alpha * q.value.sum(0) / env.n
        log = cohort_log(env, q.bits, m, bits_down, loss)
        return DianaState(s.t + 1, s.gamma, s.alpha, x, h, s.h_i, down, up), log

    return Algorithm(init, round, lambda s: s.x)


ALGORITHMS.add(
    Component(
        "diana",
        diana,
        {
            "lr": theory_lr(0.1, "step size γ"),
            "alpha": SHIFT_ALPHA,
        },
        "shifts h_i learn ∇f_i(x*): compressed g_i − h_i, exact convergence with unbiased Q",
        paper="Mishchenko et al. 2019 (arXiv 1901.09269); Horváth et al. 2019 (arXiv 1904.05115)",
        requires="unbiased",
        extra={"error_feedback": False, "local": False},
    )
)
