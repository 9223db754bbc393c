"""D-SGD: decentralised SGD with gossip averaging on a fixed topology.

"A Unified Theory of Decentralized SGD with Changing Topology and Local Updates", Koloskova,
Loizou, Boreiri, Jaggi, Stich, ICML 2020, arXiv 2003.02818.

Variant: Algorithm 1 with a fixed mixing matrix and local updates (the framework's periodic
gossip, W^t = I in all but every τ-th step): no server, every client i keeps its own model x_i
(rows of X `[n, d]`) and works every round (`participation` does not apply). Round t = τ local
SGD steps x_i ← x_i − η ∇F_i(x_i; ξ_i) (τ = `local_steps`, 1 = the paper's D-SGD), then one
gossip step X ← W X with the symmetric doubly stochastic Metropolis–Hastings W of the topology
(fedbench.topology). Bits: each client sends its 32·d model to each neighbour,
bits_up[i] = 32·d·deg(i); nothing from a server (bits_down 0). Evaluated model: the average
x̄ = mean_i x_i; `consensus_sq` = mean_i ‖x_i − x̄‖² at evaluations. On the complete graph
(W = 11ᵀ/n) every round ends in exact averaging: D-SGD is then minibatch SGD / FedAvg with full
participation (τ = 1: SGD with minibatch n·B).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from fedbench import seeding
from fedbench.algorithms.base import ALGORITHMS, LOCAL_PARAMS, Algorithm, Env, RoundLog, local_sgd
from fedbench.algorithms.dfedsam import SPARSE_FROM, consensus_sq
from fedbench.compressors.base import FLOAT_BITS
from fedbench.params import Component, Param
from fedbench.seeding import RoundRng
from fedbench.topology import TOPOLOGIES, mixing_matrix


class DSGDState(NamedTuple):
    t: int
    x_i: Tensor  # [n, d] every client's own model
    W: Tensor  # [n, n] mixing matrix (sparse CSR for large n)
    deg: Tensor  # [n] int64 neighbours of each client


def graph(env: Env, topology: str, degree: int, rng: RoundRng) -> tuple[Tensor, Tensor]:
    """(W `[n, n]` on the device, sparse from SPARSE_FROM clients; degrees `[n]`)."""
    W, deg = mixing_matrix(topology, env.n, degree, rng(seeding.ALGORITHM))
    W = W.to(env.device)
    return (W.to_sparse_csr() if env.n >= SPARSE_FROM else W), deg.to(env.device)


def local_then_gossip(
    env: Env, x_i: Tensor, W: Tensor | None, steps: int, lr: float, rng: RoundRng
) -> tuple[Tensor, Tensor]:
    """τ local SGD steps on every client's own row, then X ← W X (no gossip for W = None):
    the new X `[n, d]` and each client's mean local loss `[n]`."""
    everyone = torch.arange(env.n, device=env.device)
    z, loss = local_sgd(env, x_i, everyone, steps, lr, rng(seeding.BATCHES))  # [n, d]
    return (z if W is None else W @ z), loss


def gossip_bits(deg: Tensor, d: int) -> Tensor:
    """`[n]` int64: each client's model to each neighbour, 32·d·deg(i)."""
    return deg * (FLOAT_BITS * d)


def d_sgd(lr: float, local_steps: int, topology: str, degree: int) -> Algorithm:
    def init(x0: Tensor, env: Env, rng: RoundRng) -> DSGDState:
        W, deg = graph(env, topology, degree, rng)
        return DSGDState(0, x0.expand(env.n, -1).clone(), W, deg)

    def round(s: DSGDState, env: Env, rng: RoundRng) -> tuple[DSGDState, RoundLog]:
        x_i, loss = local_then_gossip(env, s.x_i, s.W, local_steps, lr, rng)
        log = RoundLog(
            gossip_bits(s.deg, env.d),
            torch.zeros(env.n, dtype=torch.int64, device=env.device),
            env.n,
            {"local_loss": float(loss.mean())},
            steps=torch.full((env.n,), local_steps, dtype=torch.int64),  # every client works
        )
        return DSGDState(s.t + 1, x_i, s.W, s.deg), log

    def metrics(s: DSGDState, env: Env) -> dict[str, float]:
        return {"consensus_sq": consensus_sq(s.x_i)}

    return Algorithm(init, round, lambda s: s.x_i.mean(0), metrics)


# the downlink is its own: a configured compressor would never be applied
DOWNLINK_WHY = "has no server to send down: clients gossip exact models with their neighbours"

ALGORITHMS.add(
    Component(
        "d_sgd",
        d_sgd,
        {
            "lr": LOCAL_PARAMS["lr"],
            "local_steps": Param(
                1, "local SGD steps τ between gossip steps (1 = D-SGD)", "int", low=1
            ),
            "topology": Param("ring", "communication graph", "str", choices=TOPOLOGIES),
            "degree": Param(4, "neighbours per client (random_regular)", "int", low=1),
        },
        "decentralised SGD: τ local steps on own model x_i, then one gossip step X ← W X",
        paper="Koloskova, Loizou, Boreiri, Jaggi, Stich, ICML 2020 (arXiv 2003.02818)",
        requires="exact",
        extra={
            "error_feedback": False,
            "local": True,
            "availability": False,
            "downlink": ("exact",),
            "downlink_why": DOWNLINK_WHY,
        },
    )
)
