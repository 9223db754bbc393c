"""Algorithms: one paper per file, registered here with their grid parameters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedbench.algorithms.base import Algorithm, Env, RoundLog
from fedbench.algorithms.ef21 import ef21
from fedbench.algorithms.fedavg import fedavg
from fedbench.algorithms.fedprox import fedprox
from fedbench.algorithms.scaffold import scaffold
from fedbench.params import Component, Param, Registry
from fedbench.server_opt import SERVER_PARAMS

ALGORITHMS = Registry("algorithm")

_LOCAL = {
    "lr": Param(0.05, "client (local) learning rate η_l", low=0.0, low_open=True),
    "local_steps": Param(5, "local SGD steps K per round", "int", low=1),
}

ALGORITHMS.add(
    Component(
        "fedavg",
        fedavg,
        {**_LOCAL, **SERVER_PARAMS},
        "K local SGD steps, average the updates; FedAvgM / FedAdam via server_opt",
        paper="McMahan et al., AISTATS 2017 (arXiv 1602.05629); Reddi et al., ICLR 2021",
    )
)
ALGORITHMS.add(
    Component(
        "fedprox",
        fedprox,
        {**_LOCAL, "mu": Param(0.01, "proximal coefficient μ", low=0.0), **SERVER_PARAMS},
        "FedAvg with a proximal term (μ/2)‖y − x‖² in the local objective",
        paper="Li et al., MLSys 2020 (arXiv 1812.06127)",
    )
)
ALGORITHMS.add(
    Component(
        "scaffold",
        scaffold,
        {**_LOCAL, **SERVER_PARAMS},
        "control variates c_i, c correct client drift (option II); 2 messages each way",
        paper="Karimireddy et al., ICML 2020 (arXiv 1910.06378)",
        # clients track c_i += C(Δc_i): stable for contractive C; an unbiased Q with ω > 0 makes
        # the control variates a random walk (compressed SCAFFOLD needs damping, as in SCALLION)
        requires="contractive",
    )
)
ALGORITHMS.add(
    Component(
        "ef21",
        ef21,
        {"lr": Param(0.1, "step size γ", low=0.0, low_open=True)},
        "compressed gradient differences g_i += C(∇f_i(x) − g_i); one gradient per round",
        paper="Richtárik, Sokolov, Fatkhullin, NeurIPS 2021 (arXiv 2106.05203)",
        requires="contractive",
        extra={"error_feedback": False, "local": False},
    )
)


def build_algorithm(name: str, params: Mapping[str, Any]) -> Algorithm:
    comp = ALGORITHMS[name]
    alg: Algorithm = comp.build(**comp.resolve(params))
    return alg


__all__ = ["ALGORITHMS", "Algorithm", "Env", "RoundLog", "build_algorithm"]
