"""Federated Averaging / Local SGD.

"Communication-Efficient Learning of Deep Networks from Decentralized Data", McMahan, Moore,
Ramage, Hampson, Agüera y Arcas, AISTATS 2017, arXiv 1602.05629; server optimizers from
"Adaptive Federated Optimization", Reddi et al., ICLR 2021, arXiv 2003.00295.

Variant: each sampled client runs K local SGD steps from the broadcast model x̂,
y_{i,k+1} = y_{i,k} − η_l g_i(y_{i,k}); uploads C(Δ_i) with Δ_i = y_{i,K} − x̂ (optionally with
error feedback); the server applies its optimizer to the pseudo-gradient −mean_i C(Δ_i)
(η_g = 1 with SGD is plain averaging). A `correction` hook lets FedProx-type methods change
the local gradient without copying this file.
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
    Correction,
    Env,
    RoundLog,
    average_updates,
    bits_vector,
    broadcast,
    broadcast_init,
    cohort_log,
    cohort_size,
    local_sgd,
    sample_cohort,
    update_compressor,
    with_queries,
)
from fedbench.cohort import (
    CLIENT_CURRICULA,
    curriculum_cohort,
    importance_select,
    power_of_choice,
)
from fedbench.compressors.base import FLOAT_BITS
from fedbench.params import Component
from fedbench.seeding import RoundRng
from fedbench.server_opt import SERVER_PARAMS, build_server_opt

QUERIED = ("power_of_choice", *CLIENT_CURRICULA)  # samplings whose selection sends messages


class FedAvgState(NamedTuple):
    t: int
    x: Tensor  # [d] server model
    opt: Any  # server optimizer state
    down: Broadcast  # x̂, the model the clients hold
    up: Any  # uplink compressor state (error-feedback rows [n, d] when enabled)


def fedavg(
    lr: float,
    local_steps: int,
    correction: Any = None,
    **server: Any,
) -> Algorithm:
    opt = build_server_opt(server)

    def init(x0: Tensor, env: Env, rng: RoundRng) -> FedAvgState:
        return FedAvgState(
            0,
            x0,
            opt.init(x0),
            broadcast_init(env, x0),
            update_compressor(env).init(env.n, env.d, env.device),
        )

    def round(s: FedAvgState, env: Env, rng: RoundRng) -> tuple[FedAvgState, RoundLog]:
        if env.sampling == "importance":
            return importance_round(s, env, rng)
        if env.sampling == "power_of_choice":
            ids, q_up, cand = power_of_choice(env, rng, s.x)  # m of d candidates
        elif env.sampling in CLIENT_CURRICULA:  # issue 16: a paced pool of clients by loss
            ids, q_up, cand = curriculum_cohort(env, rng, s.x)
        else:
            ids = sample_cohort(env, rng)  # [m]
        down, bits_down = broadcast(env, s.x, s.down, rng(seeding.DOWNLINK))
        corr: Correction | None = correction(down.x_hat) if correction is not None else None
        deadline = env.network is not None and env.network.deadline_s > 0
        if deadline:  # issue 13: late clients dropped or cut to the steps done by then
            s, log = deadline_round(s, env, rng, ids, down, bits_down, corr)
            if env.sampling in QUERIED:
                log = with_queries(log, ids, env, local_steps, q_up, cand, bits_down)
            return s, log
        y, loss = local_sgd(env, down.x_hat, ids, local_steps, lr, rng(seeding.BATCHES), corr)
        delta = y.sub_(down.x_hat)  # Δ_i [m, d], in place: y is not used again
        x, opt_state, msg, up = average_updates(env, opt, s.x, s.opt, s.up, delta, ids, rng)
        log = cohort_log(env, msg.bits, ids.numel(), bits_down, loss)
        if env.sampling in QUERIED:  # + the candidates' loss reports and models
            log = with_queries(log, ids, env, local_steps, q_up, cand, bits_down)
        return FedAvgState(s.t + 1, x, opt_state, down, up), log

    def deadline_round(
        s: FedAvgState,
        env: Env,
        rng: RoundRng,
        ids: Tensor,
        down: Broadcast,
        bits_down: int,
        corr: Correction | None,
    ) -> tuple[FedAvgState, RoundLog]:
        tau = plan_deadline(env, ids, local_steps, rng.seed, rng.round)  # [m] steps done
        m, cut = ids.numel(), float((tau < local_steps).sum())
        live = ids[(tau > 0).to(ids.device)]
        if live.numel() == 0:  # nobody made it: the model stays
            empty = torch.zeros(0, dtype=torch.int64, device=env.device)
            log = RoundLog(empty, bits_vector(m, bits_down, env.device), 0, {"deadline_cut": cut})
            return FedAvgState(s.t + 1, s.x, s.opt, down, s.up), log
        tau = tau[tau > 0]
        y, loss = local_sgd_tau(env, down.x_hat, live, tau, lr, rng(seeding.BATCHES), corr)
        delta = y - down.x_hat  # Δ_i [m, d]
        x, opt_state, msg, up = average_updates(env, opt, s.x, s.opt, s.up, delta, live, rng)
        extra = {"local_loss": float(loss.mean()), "deadline_cut": cut}
        log = RoundLog(msg.bits, bits_vector(m, bits_down, env.device), live.numel(), extra)
        return FedAvgState(s.t + 1, x, opt_state, down, up), log

    def importance_round(s: FedAvgState, env: Env, rng: RoundRng) -> tuple[FedAvgState, RoundLog]:
        """OCS (fedbench.cohort): every available client trains and sends ‖Δ_i‖; client i
        then sends Δ_i with probability p_i; x ← opt(x, −(1/N) Σ_sent C(Δ_i)/p_i)."""
        ids = sample_cohort(env._replace(participation=1.0, sampling="uniform"), rng)  # [N]
        budget = cohort_size(env.n, env.participation)
        down, bits_down = broadcast(env, s.x, s.down, rng(seeding.DOWNLINK))
        corr: Correction | None = correction(down.x_hat) if correction is not None else None
        y, loss = local_sgd(env, down.x_hat, ids, local_steps, lr, rng(seeding.BATCHES), corr)
        delta = y - down.x_hat  # [N, d]
        sent, p = importance_select(delta.norm(dim=1), budget, rng("importance"))
        N, norm_bits = ids.numel(), bits_vector(ids.numel(), FLOAT_BITS, env.device)
        extra = {"local_loss": float(loss.mean()), "sent": float(sent.sum())}
        ran = torch.zeros(env.n, dtype=torch.int64)
        ran[ids.cpu()] = local_steps
        if not bool(sent.any()):
            log = RoundLog(norm_bits, bits_vector(N, bits_down, env.device), N, extra, None, ran)
            return FedAvgState(s.t + 1, s.x, s.opt, down, s.up), log
        sel = sent.to(env.device)
        compress = update_compressor(env).compress
        msg, up = compress(delta[sel], ids[sel], s.up, rng(seeding.UPLINK))  # [k, d]
        w = (1.0 / p[sent]).to(device=env.device, dtype=msg.value.dtype).unsqueeze(1)  # [k, 1]
        x, opt_state = opt.update(s.x, -(msg.value * w).sum(0) / N, s.opt)
        bits_up = torch.cat([norm_bits, msg.bits.to(torch.int64)])
        log = RoundLog(bits_up, bits_vector(N, bits_down, env.device), N, extra, None, ran)
        return FedAvgState(s.t + 1, x, opt_state, down, up), log

    return Algorithm(init, round, lambda s: s.x)


ALGORITHMS.add(
    Component(
        "fedavg",
        fedavg,
        {**LOCAL_PARAMS, **SERVER_PARAMS},
        "K local SGD steps, average the updates; FedAvgM / FedAdam via server_opt",
        paper="McMahan et al., AISTATS 2017 (arXiv 1602.05629); Reddi et al., ICLR 2021",
        extra={"sampling": ("importance", "power_of_choice", *CLIENT_CURRICULA), "deadline": True},
    )
)
