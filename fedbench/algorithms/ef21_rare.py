"""EF21 with the step size of "Error Feedback Shines when Features are Rare".

Richtárik, Gasanov, Burlachenko, arXiv 2305.15264 (2023). The method is EF21 (Algorithm 1 of
Richtárik, Sokolov, Fatkhullin, NeurIPS 2021, `fedbench.algorithms.ef21`), unchanged; the paper's
contribution is its analysis when every feature appears on at most c of the n clients: the step
γ = 1/(L + L_+·√(c/n)·√(β/θ)), with L_+ = √λ_max((1/n) Σ_i (∇²f_i)²) instead of EF21's
L̃ = √(mean L_i²), can be much larger when c ≪ n [code: burlachenkok/ef21_with_rare_features,
`EF21.theoreticalStepSize` with the option `ef21_scaled`: `1/(Ltask + L_plus·√(β/θ)·√(c/n))`,
L_plus from the least-squares Hessians only, Ltask including the regulariser's 2α·max L_i].

Needs a model that reports (L_+, c) (`rare_constants`: `linreg`, `robust_linreg`) when lr = "theory"
(the default); c is the most clients any feature appears on in the actual split. A number
lr is EF21 at that step. With identity compression (α = 1, β = 0) the theory γ is 1/L:
gradient descent.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from fedbench.algorithms._ef21_common import contraction, theta_beta
from fedbench.algorithms.base import ALGORITHMS, Algorithm, Env
from fedbench.algorithms.ef21 import EF21State, ef21
from fedbench.params import Component, theory_lr
from fedbench.seeding import RoundRng


def rare_gamma(L: float, L_plus: float, c: int, n: int, alpha: float) -> float:
    """1/(L + L_+·√(c/n)·√(β/θ)); α = 1 gives 1/L."""
    if alpha >= 1.0:
        return 1.0 / L
    theta, beta = theta_beta(alpha)
    return 1.0 / (L + L_plus * math.sqrt(c / n) * math.sqrt(beta / theta))


def env_gamma(env: Env) -> float:
    own = getattr(env.task.model, "rare_constants", None)
    if own is None:
        raise ValueError(
            "ef21_rare needs a model with known (L_+, c): model = 'linreg' or 'robust_linreg'"
        )
    d = env.task.data
    L_plus, c = own(d.x, d.offsets, d.counts)
    return rare_gamma(env.task.smoothness().L, L_plus, c, env.n, contraction(env.uplink))


def ef21_rare(lr: float | str) -> Algorithm:
    base = ef21(0.0 if lr == "theory" else lr)

    def init(x0: Tensor, env: Env, rng: RoundRng) -> EF21State:
        s: EF21State = base.init(x0, env, rng)
        return s._replace(gamma=env_gamma(env)) if lr == "theory" else s

    return Algorithm(init, base.round, base.params)


# models that report (L₊, c) (`rare_constants`); tests/test_requirements.py pins the list
RARE_MODELS = ("linreg", "robust_linreg")


def requirements(cfg: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """lr = "theory" needs a model that reports (L₊, c)."""
    model = cfg["task"]["model"]
    if cfg["algorithm"]["lr"] != "theory" or model in RARE_MODELS:
        return []
    return [
        f'algorithm.lr = "theory": ef21_rare\'s step needs a model with known (L₊, c) and '
        f"model {model} has none; allowed: lr = a number > 0, or model = " + ", ".join(RARE_MODELS)
    ]


ALGORITHMS.add(
    Component(
        "ef21_rare",
        ef21_rare,
        {"lr": dataclasses.replace(theory_lr(0.1, "step size γ"), default="theory")},
        "EF21 at the rare-features theory step 1/(L + L_+√(c/n)√(β/θ))",
        paper="Richtárik, Gasanov, Burlachenko, arXiv 2305.15264",
        requires="contractive",
        extra={"error_feedback": False, "local": False},
        check=requirements,
    )
)
