"""COFIG: compressed client-variance reduction under partial participation.

"Faster Rates for Compressed Federated Learning with Client-Variance Reduction", Zhao,
Burlachenko, Li, Richtárik, SIMODS 2023, arXiv 2112.13097 (COFIG).

Variant: the gradient and the shift use the same cohort (S̃_t = S_t, as FL_PyTorch does), which
makes the updates those of DIANA-PP (`diana.py`): client i ∈ S_t sends u_i = Q(∇f_i(x^t) − h_i),
h_i ← h_i + α u_i with α = 1/(1+ω); the server steps with g^t = h + (1/s) Σ_{S_t} u_i and keeps
h ← h + α (s/n) mean_{S_t} u_i = mean_i h_i. What COFIG adds is its step size for partial
participation (FL_PyTorch): convex γ = min(1/(L_max(2 + 8(1+ω)/s)), s/((1+ω)√n)); nonconvex
(convex = false) γ = min(1/(2L_max), s/(5L_max(1+ω)n^{2/3}),
s/(5L_max(1+ω)^{3/2}n^{1/2})). s = n, Q = I is gradient descent.
"""

from __future__ import annotations

import math

from fedbench.algorithms.base import ALGORITHMS, Algorithm
from fedbench.algorithms.diana import diana
from fedbench.params import Component, Param, theory_lr
from fedbench.task import Smoothness


def cofig_gamma_convex(sm: Smoothness, omega: float, n: int, s: int) -> float:
    L_max = float(sm.L_i.max())
    return min(1 / (L_max * (2 + 8 * (1 + omega) / s)), s / ((1 + omega) * math.sqrt(n)))


def cofig_gamma_nonconvex(sm: Smoothness, omega: float, n: int, s: int) -> float:
    L_max = float(sm.L_i.max())
    return min(
        1 / (2 * L_max),
        s / (5 * L_max * (1 + omega) * n ** (2 / 3)),
        s / (5 * L_max * (1 + omega) ** 1.5 * n**0.5),
    )


def cofig_gamma(sm: Smoothness, omega: float, n: int, s: int, convex: bool) -> float:
    return (cofig_gamma_convex if convex else cofig_gamma_nonconvex)(sm, omega, n, s)


def cofig(lr: float | str, convex: bool) -> Algorithm:
    return diana(lr, "auto", lambda sm, w, n, s: cofig_gamma(sm, w, n, s, convex))


ALGORITHMS.add(
    Component(
        "cofig",
        cofig,
        {
            "lr": theory_lr(0.1, "step size γ"),
            "convex": Param(True, 'which theory step size lr = "theory" uses', "bool"),
        },
        "DIANA-type shifts under client sampling, with COFIG's partial-participation step size",
        paper="Zhao, Burlachenko, Li, Richtárik, SIMODS 2023 (arXiv 2112.13097)",
        requires="unbiased",
        extra={"error_feedback": False, "local": False, "availability": False},
    )
)
