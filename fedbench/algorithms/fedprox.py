"""FedProx: FedAvg whose clients add a proximal term to stay near the server model.

"Federated Optimization in Heterogeneous Networks", Li, Sahu, Zaheer, Sanjabi, Talwalkar,
Smith, MLSys 2020, arXiv 1812.06127.

Variant: K local SGD steps on f_i(y) + (μ/2)‖y − x^t‖², i.e. y ← y − η_l(g_i(y) + μ(y − x^t));
aggregation, compression and server step as FedAvg. μ = 0 is FedAvg exactly.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from fedbench.algorithms.base import ALGORITHMS, LOCAL_PARAMS, Algorithm, Correction
from fedbench.algorithms.fedavg import fedavg
from fedbench.cohort import CLIENT_CURRICULA
from fedbench.parallel import rowwise
from fedbench.params import Component, Param
from fedbench.server_opt import SERVER_PARAMS


def proximal(mu: float) -> Any:
    """The local-gradient correction μ(y − x^t) for the anchor x^t."""

    def for_anchor(x: Tensor) -> Correction | None:
        if mu == 0.0:
            return None

        @rowwise
        def corr(y: Tensor, g: Tensor, rows: slice) -> Tensor:
            return g.add_(y - x, alpha=mu)  # [c, d]

        return corr

    return for_anchor


def fedprox(lr: float, local_steps: int, mu: float, **server: Any) -> Algorithm:
    return fedavg(lr, local_steps, correction=proximal(mu), **server)


ALGORITHMS.add(
    Component(
        "fedprox",
        fedprox,
        {**LOCAL_PARAMS, "mu": Param(0.01, "proximal coefficient μ", low=0.0), **SERVER_PARAMS},
        "FedAvg with a proximal term (μ/2)‖y − x‖² in the local objective",
        paper="Li et al., MLSys 2020 (arXiv 1812.06127)",
        extra={
            "sampling": ("importance", "power_of_choice", *CLIENT_CURRICULA),
            "deadline": True,
            "reduces_to": ("fedavg", {"mu": 0.0}),
        },
    )
)
