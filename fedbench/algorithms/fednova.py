"""FedNova: normalised averaging for clients that run different numbers of local steps.

"Tackling the Objective Inconsistency Problem in Heterogeneous Federated Optimization", Wang,
Liu, Liang, Joshi, Poor, NeurIPS 2020, arXiv 2007.07481.

Variant: local vanilla SGD (the paper's a_i = [1, ..., 1], ‖a_i‖₁ = τ_i), clients weighted
equally (`weights = "uniform"`, p_i = 1/m over the cohort, as fedavg here) or by data size as
in the paper (`weights = "data"`, p_i = n_i / Σ_{j∈S} n_j, normalised over the cohort S that
reported: the paper's p_i = n_i/n with every client taking part). Client i
runs τ_i steps from x̂ and sends Δ_i = y_i − x̂; the server normalises, d_i = Δ_i/τ_i, and
steps with the effective step count τ_eff = Σ_i p_i τ_i: x ← opt(x, −τ_eff Σ_i p_i C(Δ_i)/τ_i)
(η_g = 1 with SGD is the paper's update). τ_i comes from the system: τ_i ~ U{tau_min, ..., K}
per client and round (`tau_min` = 0, the default: all equal), then cut by a `[network]` deadline in
`partial` mode. Equal τ_i is FedAvg (to rounding: τ·(Δ/τ)).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from fedbench import seeding
from fedbench.algorithms._hetero import local_sgd_tau, plan_deadline
from fedbench.algorithms.base import (
    ALGORITHMS,
    LOCAL_PARAMS,
    Algorithm,
    Broadcast,
    Env,
    RoundLog,
    bits_vector,
    broadcast,
    broadcast_init,
    sample_cohort,
    update_compressor,
)
from fedbench.params import Component, Param
from fedbench.seeding import RoundRng
from fedbench.server_opt import SERVER_PARAMS, build_server_opt


class FedNovaState(NamedTuple):
    t: int
    x: Tensor  # [d] server model
    opt: Any  # server optimizer state
    down: Broadcast
    up: Any  # uplink compressor state


def local_steps_drawn(m: int, tau_min: int, K: int, gen: torch.Generator) -> Tensor:
    """τ_i `[m]` int64 ~ U{tau_min, ..., K} (all K when tau_min is 0 or ≥ K)."""
    if tau_min == 0 or tau_min >= K:
        return torch.full((m,), K, dtype=torch.int64)
    return torch.randint(tau_min, K + 1, (m,), generator=gen)


def cohort_weights(env: Env, ids: Tensor, weights: str, dtype: torch.dtype) -> Tensor | None:
    """p_i `[k]` over the clients `ids` that reported: n_i / Σ n_j for `weights = "data"`;
    None for uniform weights (callers keep their plain mean, bit for bit)."""
    if weights == "uniform":
        return None
    n_i = env.task.data.counts[ids.to(env.task.data.counts.device)].to(torch.float64)  # [k]
    return (n_i / n_i.sum()).to(device=env.device, dtype=dtype)


WEIGHTS = Param(
    "uniform",
    "client weights p_i: uniform (1/m) or data (n_i over the reporting clients' samples, the "
    "paper's choice)",
    "str",
    choices=("uniform", "data"),
    since="0.3",
)


def fednova(lr: float, local_steps: int, tau_min: int, weights: str, **server: Any) -> Algorithm:
    opt = build_server_opt(server)

    def init(x0: Tensor, env: Env, rng: RoundRng) -> FedNovaState:
        up = update_compressor(env).init(env.n, env.d, env.device)
        return FedNovaState(0, x0, opt.init(x0), broadcast_init(env, x0), up)

    def round(s: FedNovaState, env: Env, rng: RoundRng) -> tuple[FedNovaState, RoundLog]:
        ids = sample_cohort(env, rng)  # [m]
        m = ids.numel()
        down, bits_down = broadcast(env, s.x, s.down, rng(seeding.DOWNLINK))
        tau = local_steps_drawn(m, tau_min, local_steps, rng(seeding.ALGORITHM))  # [m]
        planned = plan_deadline(env, ids, local_steps, rng.seed, rng.round)  # deadline cut
        tau = torch.minimum(tau, planned)
        cut = float((planned < local_steps).sum())
        ran = torch.zeros(env.n, dtype=torch.int64)
        ran[ids.cpu()] = tau
        extra: dict[str, float] = {"deadline_cut": cut} if planned.numel() and cut else {}
        live = ids[(tau > 0).to(ids.device)]
        if live.numel() == 0:
            empty = torch.zeros(0, dtype=torch.int64, device=env.device)
            log = RoundLog(empty, bits_vector(m, bits_down, env.device), 0, extra, None, ran)
            return FedNovaState(s.t + 1, s.x, s.opt, down, s.up), log
        tau = tau[tau > 0]
        y, loss = local_sgd_tau(env, down.x_hat, live, tau, lr, rng(seeding.BATCHES))
        msg, up = update_compressor(env).compress(y - down.x_hat, live, s.up, rng(seeding.UPLINK))
        t = tau.to(device=env.device, dtype=msg.value.dtype).unsqueeze(1)  # [k, 1] τ_i
        p = cohort_weights(env, live, weights, msg.value.dtype)  # [k] p_i, None: 1/k
        if p is None:
            tau_eff = float(tau.double().mean())  # Σ p_i τ_i, p_i = 1/k
            x, opt_state = opt.update(s.x, -tau_eff * (msg.value / t).mean(0), s.opt)
        else:
            tau_eff = float((p.double().cpu() * tau.double()).sum())  # Σ p_i τ_i
            step = (p.unsqueeze(1) * msg.value / t).sum(0)  # Σ p_i C(Δ_i)/τ_i
            x, opt_state = opt.update(s.x, -tau_eff * step, s.opt)
        extra.update(local_loss=float(loss.mean()), tau_eff=tau_eff)
        log = RoundLog(msg.bits, bits_vector(m, bits_down, env.device), live.numel(), extra)
        return FedNovaState(s.t + 1, x, opt_state, down, up), log._replace(steps=ran)

    return Algorithm(init, round, lambda s: s.x)


ALGORITHMS.add(
    Component(
        "fednova",
        fednova,
        {
            **LOCAL_PARAMS,
            "tau_min": Param(
                0, "τ_i ~ U{tau_min, ..., K} local steps per client (0: all K)", "int", low=0
            ),
            "weights": WEIGHTS,
            **SERVER_PARAMS,
        },
        "normalised averaging: Δ_i/τ_i scaled by τ_eff for unequal local steps τ_i",
        paper="Wang et al., NeurIPS 2020 (arXiv 2007.07481)",
        extra={"deadline": True},
    )
)
