"""FedBuff: buffered asynchronous aggregation.

"Federated Learning with Buffered Asynchronous Aggregation", Nguyen, Malik, Zhan, Yousefpour,
Rabbat, Malek, Huba, AISTATS 2022, arXiv 2106.06639.

Variant: Algorithm 1 on the simulated clock (fedbench.network). `concurrency` C clients train
at any time, each K local SGD steps from the server model it received; client i arrives after
its phase time (its speed s_i, stragglers, message sizes) with Δ_i = y_i − x^{τ_i}. The server
adds s(t − τ_i)·C(Δ_i) to its buffer (staleness t − τ_i in server steps; s = 1/√(1 + staleness)
by default, the paper's choice) and, once the buffer holds K_buf updates, takes one server
step on their mean, x ← opt(x, −Σ_buffer s·C(Δ_i) / |buffer|) (SGD with `server_lr` η_g is the
paper's step), then empties it. Every arrival is replaced at once by an idle client drawn
uniformly, who starts from the current model. Clients arriving at the same instant are
processed as one group (one batched pass); if a group overfills the buffer, the whole group
goes into that step (deviation: the paper's buffer takes exactly K_buf). A round is one
server step. Uplink bits: each C(Δ_i); downlink: the dense model to each started client.
With K_buf = C = m (the cohort) and equal speeds every round is a FedAvg round.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from fedbench import seeding
from fedbench.algorithms._hetero import (
    STALENESS_PARAMS,
    Clock,
    dispatch,
    model_bits,
    phase_of,
    refill,
    staleness_weight,
)
from fedbench.algorithms.base import (
    ALGORITHMS,
    LOCAL_PARAMS,
    Algorithm,
    Env,
    RoundLog,
    bits_vector,
    cohort_size,
    local_sgd,
    update_compressor,
)
from fedbench.params import Component, Param
from fedbench.seeding import RoundRng
from fedbench.server_opt import SERVER_PARAMS, build_server_opt


class FedBuffState(NamedTuple):
    t: int  # server steps so far (the model's version)
    x: Tensor  # [d] server model
    opt: Any  # server optimizer state
    clock: Clock
    up: Any  # uplink compressor state
    now: float  # simulated seconds


def fedbuff(
    lr: float,
    local_steps: int,
    concurrency: int,
    buffer_size: int,
    staleness: str,
    staleness_a: float,
    staleness_b: float,
    **server: Any,
) -> Algorithm:
    opt = build_server_opt(server)

    def sizes(env: Env) -> tuple[int, int]:
        C = min(env.n, concurrency or cohort_size(env.n, env.participation))
        return C, min(C, buffer_size or C)

    def init(x0: Tensor, env: Env, rng: RoundRng) -> FedBuffState:
        n, (C, _) = env.n, sizes(env)
        idle = torch.zeros(n, dtype=torch.bool)
        clock = Clock(idle, torch.full((n,), float("inf"), dtype=torch.float64),
                      torch.zeros(n, dtype=torch.int64), x0.expand(n, -1).clone())  # fmt: skip
        ids = refill(env, idle, C, 0, rng.seed, seeding.generator(rng.seed, 1, seeding.COHORT))
        phase = phase_of(env, ids, local_steps, model_bits(env), rng.seed, 0)
        clock = dispatch(clock, env, ids, x0, 0, 0.0, phase)
        up = update_compressor(env).init(n, env.d, env.device)
        return FedBuffState(0, x0, opt.init(x0), clock, up, 0.0)

    def round(s: FedBuffState, env: Env, rng: RoundRng) -> tuple[FedBuffState, RoundLog]:
        C, K_buf = sizes(env)
        gen_b, gen_u, bits = rng(seeding.BATCHES), rng(seeding.UPLINK), model_bits(env)
        clock, x, up, version, opt_state = s.clock, s.x, s.up, s.t, s.opt
        buf, count, j = torch.zeros_like(x), 0, 0
        ups, downs, losses, weights = [], 0, [], []
        ran = torch.zeros(env.n, dtype=torch.int64)
        while True:
            now = float(clock.finish.min())
            ids = torch.nonzero(clock.finish <= now * (1 + 1e-12)).flatten()  # [k] arriving
            dev = ids.to(env.device)
            start = clock.start[dev]  # [k, d] the models they started from
            y, loss = local_sgd(env, start, dev, local_steps, lr, gen_b)
            msg, up = update_compressor(env).compress(y - start, dev, up, gen_u)  # C(Δ_i)
            w = staleness_weight(staleness, staleness_a, staleness_b, version - clock.version[ids])
            buf = buf + (w.to(msg.value.dtype).to(env.device).unsqueeze(1) * msg.value).sum(0)
            count += ids.numel()
            ups.append(msg.bits)
            losses.append(loss)
            weights.append(w)
            ran[ids] = local_steps
            busy, finish = clock.busy.clone(), clock.finish.clone()
            busy[ids], finish[ids] = False, float("inf")
            clock = clock._replace(busy=busy, finish=finish)
            stepped = count >= K_buf
            if stepped:  # x ← opt(x, −mean of the buffer)
                x, opt_state = opt.update(x, -buf / count, opt_state)
                version += 1
            gen = seeding.generator(rng.seed, rng.round + 1, seeding.COHORT)
            if not stepped:
                gen = seeding.generator(rng.seed, rng.round, f"{seeding.COHORT}/{j}")
            new = refill(env, clock.busy, C, rng.round, rng.seed, gen)  # available idle ones
            phase = phase_of(env, new, local_steps, bits, rng.seed, rng.round * 1000 + j)
            clock = dispatch(clock, env, new, x, version, now, phase)
            downs += new.numel()
            j += 1
            if stepped:
                break
        w_all = torch.cat(weights)
        extra = {
            "local_loss": float(torch.cat(losses).mean()),
            "staleness_weight": float(w_all.mean()),
            "arrivals": float(count),
        }
        log = RoundLog(torch.cat(ups), bits_vector(downs, bits, env.device), count, extra,
                       sim_time_s=now, steps=ran)  # fmt: skip
        return FedBuffState(version, x, opt_state, clock, up, now), log

    return Algorithm(init, round, lambda s: s.x)


# the downlink is its own: a configured compressor would never be applied
DOWNLINK_WHY = (
    "starts each client from the exact current model (asynchronous: no model all clients track)"
)

ALGORITHMS.add(
    Component(
        "fedbuff",
        fedbuff,
        {
            **LOCAL_PARAMS,
            "concurrency": Param(
                0, "clients training at any time C (0 = the cohort size m)", "int", low=0
            ),
            "buffer_size": Param(0, "updates K per server step (0 = C; at most C)", "int", low=0),
            **{
                **STALENESS_PARAMS,
                "staleness_a": Param(0.5, "a of the staleness function (1/√(1+τ): 0.5)", low=0.0),
            },
            **SERVER_PARAMS,
        },
        "asynchronous clients on the simulated clock; server step after K buffered updates",
        paper="Nguyen et al., AISTATS 2022 (arXiv 2106.06639)",
        extra={"own_cohort": True, "downlink": ("exact",), "downlink_why": DOWNLINK_WHY},
    )
)
