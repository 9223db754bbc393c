"""FRECON: COFIG's shifts combined with recursive compressed gradient differences.

"Faster Rates for Compressed Federated Learning with Client-Variance Reduction", Zhao,
Burlachenko, Li, Richtárik, SIMODS 2023, arXiv 2112.13097 (FRECON).

Variant: client i ∈ S_t sends u_i = Q(∇f_i(x^t) − h_i) (then h_i ← h_i + α u_i, α = 1/(1+ω))
and q_i = Q(∇f_i(x^t) − ∇f_i(x^{t−1})) (same minibatch at both points); the server forms
g^t = (1 − λ)(g^{t−1} + mean_{S_t} q_i) + λ(h + mean_{S_t} u_i), steps x^{t+1} = x^t − γ g^t
and keeps h ← h + α (s/n) mean_{S_t} u_i = mean_i h_i. g^{−1} = ∇f(x⁰) dense from every client
(charged to the first round), x^{−1} = x⁰, h_i⁰ = 0. The shifts h_i are `client_rows`:
gathered and written back per cohort (host memory when they do not fit the device, zero pages
until a client is first sampled on a CPU, stored in `client_state`); h is a float32 running sum.
NOTE: FL_PyTorch adds mean q_i without the (1 − λ) factor; with it (used here) the estimator
error contracts by (1 − λ) per round, and λ = 1 is COFIG (s = n, Q = I: gradient descent).
λ = "auto": s/(2(1+ω)n); theory γ = 1/(L_max(1 + √(10(1+ω)² n/s²))) (FL_PyTorch).
Downlink: x^t and x^{t−1} (clients that sat out the last round lack it).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from fedbench import seeding
from fedbench.algorithms._shifts import gradient_pair, step_size
from fedbench.algorithms.base import (
    ALGORITHMS,
    Algorithm,
    Broadcast,
    Env,
    RoundLog,
    bits_vector,
    broadcast,
    broadcast_init,
    client_rows,
    cohort_size,
    gather_rows,
    gradients,
    sample_cohort,
    scatter_rows,
)
from fedbench.compressors.base import FLOAT_BITS
from fedbench.params import Component, Param, theory_lr
from fedbench.seeding import RoundRng
from fedbench.task import Smoothness


def frecon_gamma(sm: Smoothness, omega: float, n: int, s: int) -> float:
    return 1.0 / (float(sm.L_i.max()) * (1 + math.sqrt(10 * (1 + omega) ** 2 * n / s**2)))


def frecon_lambda(lam: float | str, omega: float, n: int, s: int) -> float:
    if isinstance(lam, str):
        if lam != "auto":
            raise ValueError(f'lam must be a number or "auto", got {lam!r}')
        return s / (2 * (1 + omega) * n)
    return float(lam)


class FreconState(NamedTuple):
    t: int
    gamma: float  # γ
    lam: float  # λ
    alpha: float  # α
    x: Tensor  # [d] x^t
    g: Tensor  # [d] g^{t−1}
    h: Tensor  # [d] = mean_i h_i
    h_i: Tensor  # [n, d] client shifts (`client_rows`: rows written per cohort)
    down: Broadcast  # x̂^{t−1} (as broadcast last round)
    up: object
    init_bits: Tensor  # [n]


def frecon(lr: float | str, lam: float | str) -> Algorithm:
    def init(x0: Tensor, env: Env, rng: RoundRng) -> FreconState:
        s, omega = cohort_size(env.n, env.participation), env.uplink.param
        everyone = torch.arange(env.n, device=env.device)
        _, g_i = gradients(env, x0.expand(env.n, -1), everyone, rng(seeding.BATCHES))
        return FreconState(
            0,
            step_size(lr, env, s, frecon_gamma),
            frecon_lambda(lam, omega, env.n, s),
            1.0 / (1.0 + omega),
            x0,
            g_i.mean(0),
            torch.zeros_like(x0),
            client_rows(env),
            broadcast_init(env, x0),
            env.uplink.init(env.n, env.d, env.device),
            bits_vector(env.n, FLOAT_BITS * env.d, env.device),
        )

    def round(s: FreconState, env: Env, rng: RoundRng) -> tuple[FreconState, RoundLog]:
        ids = sample_cohort(env, rng)  # [m]
        m = ids.numel()
        down, bits_down = broadcast(env, s.x, s.down, rng(seeding.DOWNLINK))
        gen = rng(seeding.BATCHES)
        loss, g_new, g_old = gradient_pair(env, down.x_hat, s.down.x_hat, ids, gen)  # [m, d]
        h_i = gather_rows(s.h_i, ids, env.device)  # [m, d] float32
        both = torch.cat([g_new - h_i, g_new - g_old])  # [2m, d]: u_i then q_i
        c, up = env.uplink.compress(both, torch.cat([ids, ids]), s.up, rng(seeding.UPLINK))
        u, q = c.value[:m], c.value[m:]
        scatter_rows(s.h_i, ids, h_i + s.alpha * u)
        g = (1 - s.lam) * (s.g + q.mean(0)) + s.lam * (s.h + u.mean(0))  # g^t
        h = s.h + s.alpha * u.sum(0) / env.n
        x = s.x - s.gamma * g
        bits = c.bits[:m] + c.bits[m:]
        log = RoundLog(
            torch.cat([s.init_bits, bits]) if s.t == 0 else bits,
            bits_vector(m, bits_down + FLOAT_BITS * env.d, env.device),  # x^t and x^{t−1}
            m,
            {"local_loss": float(loss.mean())},
        )
        state = FreconState(s.t + 1, s.gamma, s.lam, s.alpha, x, g, h, s.h_i, down, up, s.init_bits)
        return state, log

    return Algorithm(init, round, lambda s: s.x)


ALGORITHMS.add(
    Component(
        "frecon",
        frecon,
        {
            "lr": theory_lr(0.1, "step size γ"),
            "lam": Param(
                "auto",
                'weight λ of the shift estimator, or "auto" = s/(2(1+ω)n)',
                "float_or_str",
                choices=("auto",),
                low=0.0,
                high=1.0,
            ),
        },
        "COFIG shifts + recursive compressed gradient differences, mixed with weight λ",
        paper="Zhao, Burlachenko, Li, Richtárik, SIMODS 2023 (arXiv 2112.13097)",
        requires="unbiased",
        extra={"error_feedback": False, "local": False},
    )
)
