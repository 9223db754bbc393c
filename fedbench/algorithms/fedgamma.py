"""FedGAMMA: SCAFFOLD's variance reduction with sharpness-aware local steps.

"FedGAMMA: Federated Learning With Global Sharpness-Aware Minimization", Dai, Yang, Sun, Shen,
Tian, Wang, Zhang, IEEE TNNLS 2023; as in FL-Simulator (woodenchild95/FL-Simulator,
`client/fedgamma.py`, `server/FedGamma.py`, author-affiliated).

Client i ∈ S, from y = x̂: K steps y ← y − η_l(g_i(y + ρ g/‖g‖) − c_i + c), g = g_i(y) on the
same minibatch (ESAM step, then the control-variate correction added to the SAM gradient as
the code does); c_i⁺ = c_i − c + (x̂ − y_K)/(K η_l) (SCAFFOLD option II); uploads
Δy_i = y_K − x̂ and Δc_i = c_i⁺ − c_i. Server: x ← server optimizer on −mean C(Δy_i)
(x + η_g mean), c ← c + (1/n) Σ_S C(Δc_i). Compression and bits exactly as `scaffold`
(2 messages each way). ρ = 0 is SCAFFOLD (tested bit for bit).
Deviation: the paper's perturbation is described as global (along the corrected direction);
the official code perturbs along the local minibatch gradient, which is followed here.
"""

from __future__ import annotations

from typing import Any

from fedbench.algorithms.base import ALGORITHMS, LOCAL_PARAMS, Algorithm
from fedbench.algorithms.scaffold import scaffold
from fedbench.params import Component, Param
from fedbench.server_opt import SERVER_PARAMS


def fedgamma(lr: float, local_steps: int, rho: float, **server: Any) -> Algorithm:
    """SCAFFOLD (option II, its compression and bits) whose local steps are SAM steps."""
    return scaffold(lr, local_steps, sam_rho=rho, **server)


ALGORITHMS.add(
    Component(
        "fedgamma",
        fedgamma,
        {
            **LOCAL_PARAMS,
            "rho": Param(0.1, "SAM perturbation radius ρ (FL-Simulator 0.1)", low=0.0),
            **SERVER_PARAMS,
        },
        "SCAFFOLD control variates with SAM local steps (global sharpness-aware)",
        paper="Dai et al., IEEE TNNLS 2023",
        requires="contractive",  # the control variates, as SCAFFOLD
    )
)
