"""CBO: consensus-based optimisation, federated over per-client particle swarms.

The dynamics analysed in "Gradient is All You Need?", Riedl, Klock, Geldhauser, Fornasier, 2023,
arXiv 2306.09778 (consensus-based optimisation of Pinnau, Totzeck, Tse, Martin 2017, with the
anisotropic noise of Carrillo, Jin, Li, Zhu 2021), time-discretised by Euler–Maruyama:
    v_α = Σ_p ω_α(X_p) X_p / Σ_p ω_α(X_p),   ω_α(x) = exp(−α f(x))
    X_p ← X_p − λ Δt (X_p − v_α) + σ √Δt (X_p − v_α) ⊙ ξ_p,   ξ_p ~ N(0, I)
Gradient-free: only function values of f at the particles.

Federation (ours; the paper is not federated): client i holds N particles `[N, d]`; in a round
each sampled client evaluates its particles on its own data (minibatch), sends
S_i = Σ_p e^{−α f_i(X_ip) − c_i} X_ip and the log of W_i = Σ_p e^{−α f_i(X_ip)} (c_i = the
largest exponent, for stability: d + 1 floats); the server forms the consensus
v = Σ_i W_i (S_i / W̃_i) / Σ_i W_i over the cohort, broadcasts it (d floats), and the cohort's
particles take one CBO step toward v. The model evaluated is v. With α → ∞ the consensus is the
particle of lowest local loss; with σ = 0 every particle contracts to v by the factor
(1 − λΔt) per round. Defaults (λ = 1, σ = 0.5, Δt = 0.1, α = 100, N = 8) are ours [mem]; the
initial particles X_p = x⁰ + spread·ξ (ours too) default to spread 0.1: with 1.0 (before
2026-12-07) the first consensus of a 650-parameter model sat far from x⁰ and the training loss
rose (`fedbench check cbo`: 2.39 → 5.48 in 6 rounds on digits/logreg; 2.39 → 2.29 with 0.1).
Queries: N·b function evaluations per client per round (b = batch size or the client's
samples); the metric `queries` is the cumulative total.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from fedbench import seeding
from fedbench.algorithms.base import (
    ALGORITHMS,
    Algorithm,
    Env,
    RoundLog,
    bits_vector,
    sample_cohort,
)
from fedbench.compressors.base import FLOAT_BITS
from fedbench.params import Component, Param
from fedbench.seeding import RoundRng


class CBOState(NamedTuple):
    t: int
    v: Tensor  # [d] the last consensus point (the model)
    X: Tensor  # [n, N, d] every client's particles
    queries: float


def consensus(X: Tensor, f: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """Each swarm's shifted weighted sum and log-weight: X `[m, N, d]`, f `[m, N]` ->
    (S̃ `[m, d]` = Σ_p e^{−αf_p − c} X_p / Σ_p e^{−αf_p − c}, log W `[m]`)."""
    logits = -alpha * f  # [m, N]
    c = logits.max(1, keepdim=True).values
    w = torch.exp(logits - c)  # [m, N], largest 1
    mean = torch.einsum("mp,mpd->md", w, X) / w.sum(1, keepdim=True)
    return mean, c.squeeze(1) + torch.log(w.sum(1))


def combine(means: Tensor, log_w: Tensor) -> Tensor:
    """The server's v = Σ_i W_i means_i / Σ_i W_i `[d]` from log-weights `[m]`."""
    share = torch.softmax(log_w, 0)  # [m]
    return share @ means


def cbo(
    particles: int, alpha: float, lam: float, sigma: float, dt: float, spread: float
) -> Algorithm:
    def init(x0: Tensor, env: Env, rng: RoundRng) -> CBOState:
        noise = torch.randn(
            (env.n, particles, env.d), generator=rng(seeding.ALGORITHM), device=rng.device
        )
        X = x0 + spread * noise.to(env.device)  # [n, N, d]
        return CBOState(0, x0, X, 0.0)

    def round(s: CBOState, env: Env, rng: RoundRng) -> tuple[CBOState, RoundLog]:
        ids = sample_cohort(env, rng)  # [m]
        m, N, d = ids.numel(), particles, env.d
        X = s.X[ids]  # [m, N, d]
        rows = ids.repeat_interleave(N)  # [m·N] client of each particle
        idx = None
        if env.batch_size != "full":
            idx = env.task.batch_indices(ids, 1, int(env.batch_size), rng(seeding.BATCHES))[:, 0]
            idx = idx.repeat_interleave(N, 0)  # the same minibatch for a client's particles
        f, _ = env.task.loss_grad(X.reshape(m * N, d), rows, idx)  # [m·N]
        f = f.view(m, N)
        means, log_w = consensus(X, f, alpha)
        v = combine(means, log_w)  # [d]
        xi = torch.randn((m, N, d), generator=rng(seeding.ALGORITHM), device=rng.device)
        diff = X - v  # [m, N, d]
        s.X[ids] = X - lam * dt * diff + sigma * math.sqrt(dt) * diff * xi.to(env.device)
        b = env.task.data.counts[ids].sum() if idx is None else m * int(env.batch_size)
        queries = s.queries + float(b) * N
        log = RoundLog(
            bits_vector(m, FLOAT_BITS * (d + 1), env.device),
            bits_vector(m, FLOAT_BITS * d, env.device),
            m,
            {"local_loss": float(f.min(1).values.mean()), "queries": queries},
        )
        return CBOState(s.t + 1, v, s.X, queries), log

    return Algorithm(init, round, lambda s: s.v)


# the downlink is its own: a configured compressor would never be applied
DOWNLINK_WHY = "broadcasts the exact consensus point the particles step toward"

ALGORITHMS.add(
    Component(
        "cbo",
        cbo,
        {
            "particles": Param(8, "particles N per client", "int", low=1),
            "alpha": Param(100.0, "weight sharpness α of ω_α = exp(−α f)", low=0.0),
            "lam": Param(1.0, "drift rate λ toward the consensus", low=0.0),
            "sigma": Param(0.5, "noise scale σ (anisotropic)", low=0.0),
            "dt": Param(0.1, "time step Δt", low=0.0, low_open=True),
            "spread": Param(0.1, "std of the initial particles around x⁰", low=0.0),
        },
        "consensus-based optimisation: per-client particle swarms drift to a weighted consensus",
        paper="Riedl, Klock, Geldhauser, Fornasier 2023 (arXiv 2306.09778)",
        requires="exact",
        extra={
            "error_feedback": False,
            "local": False,
            "downlink": ("exact",),
            "downlink_why": DOWNLINK_WHY,
        },
    )
)
