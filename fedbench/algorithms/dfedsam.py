"""DFedSAM / DFedSAM-MGS: decentralised FL with SAM local steps and gossip averaging.

"Improving the Model Consistency of Decentralized Federated Learning", Shi, Shen, Wei, Sun,
Yuan, Wang, Tao, ICML 2023, arXiv 2302.04083.

Variant: Algorithm 1 (DFedSAM) and its multiple-gossip-steps form (DFedSAM-MGS, Q > 1). No
server: every client i keeps its own model x_i (rows of X `[n, d]`) and works every round
(`participation` does not apply). Round t: K local SAM steps from x_i,
z ← z − η_l g_i(z + ρ g/‖g‖), then Q gossip steps Z ← W Z over the whole graph at once, with the
symmetric doubly stochastic Metropolis–Hastings W of `topology` (fedbench.topology).
Bits: each client sends its 32·d model to each neighbour in each gossip step,
bits_up[i] = 32·d·deg(i)·Q; nothing comes from a server (bits_down 0), so each message is
counted once, at its sender. The evaluated model is the average x̄ = mean_i x_i; `consensus_sq`
= mean_i ‖x_i − x̄‖². W = 11ᵀ/n (complete) with Q = 1 is FedSAM with full participation;
ρ = 0 is DFedAvg.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from fedbench import seeding
from fedbench.algorithms.base import ALGORITHMS, LOCAL_PARAMS, Algorithm, Env, RoundLog, local_sgd
from fedbench.compressors.base import FLOAT_BITS
from fedbench.params import Component, Param
from fedbench.seeding import RoundRng
from fedbench.topology import TOPOLOGIES, mixing_matrix

SPARSE_FROM = 2048  # clients from which W is stored sparse


class DFedSAMState(NamedTuple):
    t: int
    x_i: Tensor  # [n, d] every client's own model
    W: Tensor  # [n, n] mixing matrix (sparse CSR for large n)
    deg: Tensor  # [n] int64 neighbours of each client


def consensus_sq(x_i: Tensor) -> float:
    """mean_i ‖x_i − x̄‖² over the rows of `x_i [n, d]`."""
    return float((x_i - x_i.mean(0)).square().sum(1).mean())


def dfedsam(
    lr: float, local_steps: int, rho: float, topology: str, gossip_steps: int, degree: int
) -> Algorithm:
    def init(x0: Tensor, env: Env, rng: RoundRng) -> DFedSAMState:
        W, deg = mixing_matrix(topology, env.n, degree, rng(seeding.ALGORITHM))
        W = W.to(env.device)
        if env.n >= SPARSE_FROM:
            W = W.to_sparse_csr()
        x_i = x0.expand(env.n, -1).clone()  # [n, d]
        return DFedSAMState(0, x_i, W, deg.to(env.device))

    def round(s: DFedSAMState, env: Env, rng: RoundRng) -> tuple[DFedSAMState, RoundLog]:
        everyone = torch.arange(env.n, device=env.device)
        gen = rng(seeding.BATCHES)
        z, loss = local_sgd(env, s.x_i, everyone, local_steps, lr, gen, sam_rho=rho)  # [n, d]
        for _ in range(gossip_steps):
            z = s.W @ z  # one gossip step: x_i ← Σ_j W_ij z_j
        log = RoundLog(
            s.deg * (FLOAT_BITS * env.d * gossip_steps),
            torch.zeros(env.n, dtype=torch.int64, device=env.device),
            env.n,
            {"local_loss": float(loss.mean())},
        )
        return DFedSAMState(s.t + 1, z, s.W, s.deg), log

    def metrics(s: DFedSAMState, env: Env) -> dict[str, float]:
        return {"consensus_sq": consensus_sq(s.x_i)}

    return Algorithm(init, round, lambda s: s.x_i.mean(0), metrics)


# the downlink is its own: a configured compressor would never be applied
DOWNLINK_WHY = "has no server to send down: clients gossip exact models with their neighbours"

ALGORITHMS.add(
    Component(
        "dfedsam",
        dfedsam,
        {
            **LOCAL_PARAMS,
            "rho": Param(0.05, "SAM perturbation radius ρ (paper tunes 0.01–0.1)", low=0.0),
            "topology": Param("ring", "communication graph", "str", choices=TOPOLOGIES),
            "gossip_steps": Param(1, "gossip steps Q per round (Q > 1: DFedSAM-MGS)", "int", low=1),
            "degree": Param(4, "neighbours per client (random_regular)", "int", low=1),
        },
        "decentralised: local SAM steps on own model x_i, then Q gossip steps x ← W x",
        paper="Shi et al., ICML 2023 (arXiv 2302.04083)",
        requires="exact",
        extra={
            "error_feedback": False,
            "availability": False,
            "downlink": ("exact",),
            "downlink_why": DOWNLINK_WHY,
        },  # draws its own clients
    )
)
