"""DADAO: decoupled accelerated decentralised asynchronous optimisation on Poisson clocks.

"DADAO: Decoupled Accelerated Decentralized Asynchronous Optimization", Nabli, Oyallon, ICML
2023, arXiv 2208.00779. Update rule and constants from the official code (AdelNabli/DADAO,
`optimizers.py` `DADAO_optimizer`, `utils.py` `compute_spectral_quantities`, `main.py`).

No server. Every node i keeps six vectors (X, X̃, Y, Ỹ, Z, Z̃)_i (X_i⁰ = x⁰, the rest 0) and a
clock. Between its events a node's variables follow the linear ODE d/dt V_i = M V_i (the 6 × 6
M of the code: η = η̃ = ⅛√(ν/L) mixes X, X̃; α = ¼√(ν/L), α̃ = ⅛√(ν/L) mix Z, Z̃ and drive Y,
θ = ½√(L/ν) drives Ỹ), applied exactly as exp(M Δt). Two independent Poisson processes:
  - gradient events at each node (rate 1 per unit of algorithm time):
    r = ∇f_i(X_i) − ν X_i − Ỹ_i;  X_i −= γ r;  X̃_i −= γ̃ r;  Ỹ_i += (δ + δ̃) r;
  - communication events on an edge (i, j) drawn uniformly (total rate λ = √(2 χ₁ χ₂)):
    m = (Y + Z)_i − (Y + Z)_j;  Z_i −= β m, Z_j += β m;  Z̃_i −= β̃ m, Z̃_j += β̃ m
    (both nodes send their d-vector Y + Z: 32·d bits each).
ν = μ/2, γ = 1/(4L), γ̃ = 1/(4√(Lν)), δ = ¼√(ν/L), δ̃ = 1, β = ½, β̃ = 2 (χ₁/λ) √(L/ν);
χ₁ = 1/λ₂(Λ), χ₂ = max_{(ij)∈E} ½ (e_i − e_j)ᵀ Λ⁺ (e_i − e_j), Λ = Laplacian/|E| (edges
sampled uniformly). μ: the task's l2 λ (`reg = "l2"`), L = max_i L_i (or grid values).

Simulation: one fedbench round advances the algorithm clock by `round_time` units; all events
of the round are drawn at once (per-node Poisson counts, uniform times, uniform edges), sorted,
and played in groups of consecutive events touching distinct nodes: each group is one batched
ODE flow (a batch of matrix exponentials), one batched gradient computation and one batched
gossip update — no Python loop over clients. Flows compose exactly (exp(Ma)exp(Mb) =
exp(M(a + b))), so every node is flowed to the end of the round without changing the
trajectory. Time: a unit is one gradient of the 1× worker, `step_ms` of `[network]` (100 ms
by default); a worker s_w× slower has a gradient clock of rate 1/s_w (the constants assume 1:
a deviation under heterogeneous speeds). Evaluated model: x̄ = mean_i X_i; `consensus_sq`.
Σ_i Z_i = Σ_i Z̃_i = 0 at all times (tested), grouped play = one event at a time (tested).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor

from fedbench import seeding
from fedbench.algorithms._hetero import the_network
from fedbench.algorithms.base import ALGORITHMS, Algorithm, Env, RoundLog
from fedbench.algorithms.dfedsam import consensus_sq
from fedbench.compressors.base import FLOAT_BITS
from fedbench.params import Component, Param
from fedbench.seeding import RoundRng
from fedbench.topology import TOPOLOGIES, adjacency

X, XT, Y, YT, Z, ZT = range(6)  # rows of a node's stack V_i [6, d]


class Consts(NamedTuple):
    nu: float
    gamma: float
    gamma_t: float
    delta_sum: float  # δ + δ̃
    beta: float
    beta_t: float
    rate_mix: float  # λ, communications per unit of time over the whole graph
    M: Tensor  # [6, 6] float64 the ODE between events


class DadaoState(NamedTuple):
    t: int
    now: float  # algorithm time at the end of the last round (every node flowed there)
    V: Tensor  # [n, 6, d] float64 (X, X̃, Y, Ỹ, Z, Z̃) of every node
    edges: Tensor  # [|E|, 2] int64
    k: Consts


class Events(NamedTuple):
    time: Tensor  # [e] float64 sorted
    a: Tensor  # [e] int64 node (gradient) or first end of the edge
    b: Tensor  # [e] int64 −1 for a gradient event, else the other end


def spectral(adj: Tensor) -> tuple[float, float]:
    """(χ₁, χ₂) of the Laplacian of uniform edge probabilities Λ = L/|E|."""
    lap = torch.diag(adj.sum(1).double()) - adj.double()
    lam = lap / (adj.sum() / 2)
    chi1 = 1.0 / float(torch.linalg.eigvalsh(lam)[1])
    pinv = torch.linalg.pinv(lam)
    i, j = torch.nonzero(torch.triu(adj), as_tuple=True)
    res = 0.5 * (pinv[i, i] + pinv[j, j] - 2 * pinv[i, j])  # ½ (e_i − e_j)ᵀ Λ⁺ (e_i − e_j)
    return chi1, float(res.max())


def constants(mu: float, L: float, chi1: float, chi2: float) -> Consts:
    nu = mu / 2
    r = math.sqrt(nu / L)
    alpha, alpha_t, eta, theta = r / 4, r / 8, r / 8, 0.5 / r
    M = torch.zeros(6, 6, dtype=torch.float64)
    M[X, X], M[X, XT], M[XT, X], M[XT, XT] = -eta, eta, eta, -eta
    M[Y, Y], M[Y, YT] = -alpha, alpha
    M[YT, XT], M[YT, Y], M[YT, Z] = -theta * nu, -theta, -theta
    M[Z, Z], M[Z, ZT], M[ZT, Z], M[ZT, ZT] = -alpha, alpha, alpha_t, -alpha_t
    rate = math.sqrt(2 * chi1 * chi2)
    beta_t = 2 * (chi1 / rate) / r
    return Consts(nu, 1 / (4 * L), 1 / (4 * math.sqrt(L * nu)), r / 4 + 1, 0.5, beta_t, rate, M)


def draw_events(
    n: int,
    edges: Tensor,
    rates: Tensor,
    rate_mix: float,
    t0: float,
    span: float,
    gen: torch.Generator,
) -> Events:
    """All events in (t0, t0 + span]: per-node gradient counts ~ Poisson(rate_i span), edge
    activations ~ Poisson(λ span) on uniform edges, times uniform, sorted."""
    counts = torch.poisson(rates * span, generator=gen).long()  # [n]
    grad_node = torch.repeat_interleave(torch.arange(n), counts)
    k = int(torch.poisson(torch.tensor([rate_mix * span], dtype=torch.float64), generator=gen))
    pick = torch.randint(edges.shape[0], (k,), generator=gen)
    e = grad_node.numel() + k
    time = t0 + span * torch.rand(e, generator=gen, dtype=torch.float64)
    a = torch.cat([grad_node, edges[pick, 0]])
    b = torch.cat([torch.full_like(grad_node, -1), edges[pick, 1]])
    order = torch.argsort(time)
    return Events(time[order], a[order], b[order])


def groups(ev: Events, max_group: int = 0) -> list[slice]:
    """Consecutive runs of events touching distinct nodes (at most `max_group` events each when
    > 0): events of one run commute and are played together."""
    out: list[slice] = []
    start, seen = 0, set[int]()
    for k, (a, b) in enumerate(zip(ev.a.tolist(), ev.b.tolist(), strict=True)):
        nodes = {a} if b < 0 else {a, b}
        full = max_group > 0 and k - start >= max_group
        if full or seen & nodes:
            out.append(slice(start, k))
            start, seen = k, set[int]()
        seen |= nodes
    if start < ev.a.numel():
        out.append(slice(start, ev.a.numel()))
    return out


def flow(V: Tensor, last: Tensor, nodes: Tensor, t: Tensor, M: Tensor) -> None:
    """Advance `nodes [k]` from their last event time to `t [k]` along the ODE (in place)."""
    E = torch.linalg.matrix_exp(M * (t - last[nodes]).view(-1, 1, 1))  # [k, 6, 6]
    V[nodes] = E @ V[nodes]
    last[nodes] = t


def play(
    env: Env,
    V: Tensor,
    last: Tensor,
    ev: Events,
    k: Consts,
    gen: torch.Generator,
    max_group: int = 0,
) -> Tensor:
    """Play the events on V `[n, 6, d]` (in place); returns the gossip count per node `[n]`."""
    sends = torch.zeros(env.n, dtype=torch.int64)
    for g in groups(ev, max_group):
        a, b, t = ev.a[g], ev.b[g], ev.time[g]
        grad, comm = b < 0, b >= 0
        if bool(grad.any()):  # gradient events at distinct nodes
            i, ti = a[grad], t[grad]
            flow(V, last, i, ti, k.M)
            ids = i.to(env.device)
            x = V[i, X].float().to(env.device)  # [k, d]
            if env.batch_size == "full":
                _, gi = env.task.loss_grad(x, ids)
            else:
                idx = env.task.batch_indices(ids, 1, int(env.batch_size), gen)[:, 0]
                _, gi = env.task.loss_grad(x, ids, idx)
            r = gi.double().cpu() - k.nu * V[i, X] - V[i, YT]  # [k, d]
            V[i, X] -= k.gamma * r
            V[i, XT] -= k.gamma_t * r
            V[i, YT] += k.delta_sum * r
        if bool(comm.any()):  # gossip on disjoint edges
            i, j, tc = a[comm], b[comm], t[comm]
            flow(V, last, torch.cat([i, j]), torch.cat([tc, tc]), k.M)
            m = (V[i, Y] + V[i, Z]) - (V[j, Y] + V[j, Z])  # [k, d]
            V[i, Z] -= k.beta * m
            V[j, Z] += k.beta * m
            V[i, ZT] -= k.beta_t * m
            V[j, ZT] += k.beta_t * m
            sends.index_add_(0, torch.cat([i, j]), torch.ones(2 * i.numel(), dtype=torch.int64))
    return sends


def dadao(
    mu: float | str, L: float | str, topology: str, degree: int, round_time: float
) -> Algorithm:
    def init(x0: Tensor, env: Env, rng: RoundRng) -> DadaoState:
        if isinstance(mu, str):
            if mu != "auto" or env.task.reg != "l2" or env.task.lam <= 0:
                raise ValueError('dadao needs μ > 0: [task] reg = "l2" with lam > 0, or mu')
            strong = float(env.task.lam)
        else:
            strong = float(mu)
        adj = adjacency(topology, env.n, degree, seeding.generator(rng.seed, 0, seeding.ALGORITHM))
        chi1, chi2 = spectral(adj)
        if isinstance(L, str):
            if L != "auto":
                raise ValueError(f'L must be a number or "auto", got {L!r}')
            smooth = float(env.task.smoothness().L_i.max())
        else:
            smooth = float(L)
        k = constants(strong, smooth, chi1, chi2)
        V = torch.zeros(env.n, 6, env.d, dtype=torch.float64)
        V[:, X] = x0.double().cpu()
        edges = torch.nonzero(torch.triu(adj))  # [|E|, 2]
        return DadaoState(0, 0.0, V, edges, k)

    def round(s: DadaoState, env: Env, rng: RoundRng) -> tuple[DadaoState, RoundLog]:
        net = the_network(env)
        gen = seeding.generator(rng.seed, rng.round, seeding.ALGORITHM)  # CPU: event lists
        ev = draw_events(env.n, s.edges, 1.0 / net.slowdown, s.k.rate_mix, s.now, round_time, gen)
        V = s.V  # updated in place (copying [n, 6, d] every round would cost more)
        last = torch.full((env.n,), s.now, dtype=torch.float64)
        batches = seeding.generator(rng.seed, rng.round, seeding.BATCHES)
        sends = play(env, V, last, ev, s.k, batches)
        end = s.now + round_time
        everyone = torch.arange(env.n)
        flow(V, last, everyone, torch.full((env.n,), end, dtype=torch.float64), s.k.M)
        grads = int((ev.b < 0).sum())
        log = RoundLog(
            (sends * (FLOAT_BITS * env.d)).to(env.device),
            torch.zeros(env.n, dtype=torch.int64, device=env.device),
            env.n,
            {"grad_events": float(grads), "gossip_events": float(int((ev.b >= 0).sum()))},
            sim_time_s=end * net.step_ms / 1000.0,
        )
        return DadaoState(s.t + 1, end, V, s.edges, s.k), log

    def params(s: DadaoState) -> Tensor:
        return s.V[:, X].mean(0).float()

    def metrics(s: DadaoState, env: Env) -> dict[str, float]:
        return {"consensus_sq": consensus_sq(s.V[:, X].float())}

    return Algorithm(init, round, params, metrics)


def smoothness_known(task: Mapping[str, Any]) -> bool:
    """Whether `Task.smoothness()` knows L for this [task]: linear models (an mlp without hidden
    layers is multinomial logistic regression); tests/test_requirements.py pins it."""
    model = task["model"]
    return model in ("logreg", "linreg", "robust_linreg") or (
        model == "mlp" and not task.get("hidden")
    )


def requirements(cfg: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """μ = "auto" needs the task's l2 regulariser; L = "auto" a model whose L is known."""
    a, task = cfg["algorithm"], cfg["task"]
    problems = []
    if a["mu"] == "auto" and not (task.get("reg") == "l2" and task.get("lam", 0) > 0):
        has = f'reg = "{task["reg"]}"' if "reg" in task else "no regulariser"
        via = ', or [task] reg = "l2" with lam > 0' if "reg" in task else ""
        problems.append(
            f'algorithm.mu = "auto": dadao needs strong convexity μ > 0, taken from the task\'s '
            f"l2 regulariser, and model {task['model']} has {has}; allowed: mu = a number > 0{via}"
        )
    if a["L"] == "auto" and not smoothness_known(task):
        problems.append(
            f'algorithm.L = "auto": dadao takes L from the model\'s smoothness constant, unknown '
            f"for model {task['model']}; allowed: L = a number > 0, or model = logreg, linreg, "
            "robust_linreg (or mlp with hidden = [])"
        )
    return problems


# the downlink is its own: a configured compressor would never be applied
DOWNLINK_WHY = "has no server to send down: clients gossip exact models with their neighbours"

ALGORITHMS.add(
    Component(
        "dadao",
        dadao,
        {
            "mu": Param(
                "auto",
                'strong convexity μ, or "auto" = the task\'s l2 λ',
                "float_or_str",
                choices=("auto",),
                low=0.0,
                low_open=True,
            ),
            "L": Param(
                "auto",
                'smoothness L, or "auto" = max_i L_i of the task (linear models)',
                "float_or_str",
                choices=("auto",),
                low=0.0,
                low_open=True,
            ),
            "topology": Param("ring", "communication graph", "str", choices=TOPOLOGIES),
            "degree": Param(4, "neighbours per client (random_regular)", "int", low=1),
            "round_time": Param(
                1.0,
                "algorithm time per fedbench round, in gradient times of the 1× worker",
                low=0.0,
                low_open=True,
            ),
        },
        "decentralised asynchronous accelerated: Poisson clocks for gradients and for gossip",
        paper="Nabli, Oyallon, ICML 2023 (arXiv 2208.00779)",
        requires="exact",
        extra={
            "error_feedback": False,
            "local": False,
            "availability": False,
            "downlink": ("exact",),
            "downlink_why": DOWNLINK_WHY,
        },
        check=requirements,
    )
)
