"""Compressed L2GD: personalised models mixed with their average, bidirectional compression.

"Personalized Federated Learning with Communication Compression", Bergou, Burlachenko, Dutta,
Richtárik, TMLR 2023, arXiv 2209.05148; L2GD from "Federated Learning of a Mixture of Global
and Local Models", Hanzely, Richtárik 2020, arXiv 2002.05516.

Objective: min (1/n) Σ_i f_i(x_i) + (λ/(2n)) Σ_i ‖x_i − x̄‖², one model x_i per client `[n, d]`.
Each iteration flips a shared coin ξ ~ Bernoulli(p):
ξ = 0 (local step): x_i ← x_i − (η/(n(1−p))) g_i(x_i);
ξ = 1 (aggregation step): x_i ← x_i − (ηλ/(np))(x_i − x̄_M), where after a local step clients
upload C(x_i), the server forms x̄ = mean_i C(x_i) and broadcasts x̄_M = C_M(x̄); consecutive
aggregation steps reuse x̄_M (no communication). One fedbench round = one communication: the
local steps since the last aggregation (a geometric number, ≥ 1 after the first round), the
exchange, then the run of aggregation steps (≥ 1, applied in closed form
x_i ← x̄_M + (1 − ηλ/(np))^k (x_i − x̄_M)). Every client takes part (participation is not
used). λ = 0 is local GD. The evaluated model is x̄ = mean_i x_i; `personal_accuracy` is each
client's own model on its own training data (no per-client held-out split exists).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from fedbench import seeding
from fedbench.algorithms.base import ALGORITHMS, Algorithm, Env, RoundLog, bits_vector, gradients
from fedbench.params import Component, Param
from fedbench.seeding import RoundRng


class L2GDState(NamedTuple):
    t: int
    x_i: Tensor  # [n, d] personalised models
    up: object
    down: object


def geometric(u: float, q: float) -> int:
    """Failures before the first success of probability 1 − q: ⌊log u / log q⌋."""
    return 0 if q <= 0.0 else math.floor(math.log(max(u, 1e-300)) / math.log(q))


@torch.no_grad()
def personal_metrics(env: Env, x_i: Tensor) -> dict[str, float]:
    """Mean over clients of each client's own model on its own training data."""
    data, task = env.task.data, env.task
    width = int(data.counts.max())
    acc = torch.empty(env.n, device=env.device)
    step = task.chunk_size(width)
    for s in range(0, env.n, step):  # chunks of clients, each one batched forward
        ids = torch.arange(s, min(env.n, s + step), device=env.device)
        counts = data.counts[ids].unsqueeze(1)  # [c, 1]
        pos = torch.arange(width, device=env.device).expand(ids.numel(), width)
        real = pos < counts  # [c, W]
        idx = data.offsets[ids].unsqueeze(1) + torch.where(real, pos, 0)
        wt = real.float() / counts.float()
        z = task.model.logits(x_i[ids], data.x[idx])  # [c, W, C]
        acc[s : s + ids.numel()] = (task.model.correct(z, data.y[idx]) * wt).sum(1)
    return {"personal_accuracy": float(acc.mean())}


def l2gd(lr: float, lam: float, p: float) -> Algorithm:
    def init(x0: Tensor, env: Env, rng: RoundRng) -> L2GDState:
        x_i = x0.expand(env.n, -1).clone()
        return L2GDState(
            0,
            x_i,
            env.uplink.init(env.n, env.d, env.device),
            env.downlink.init(1, env.d, env.device),
        )

    def round(s: L2GDState, env: Env, rng: RoundRng) -> tuple[L2GDState, RoundLog]:
        u = torch.rand(
            2, generator=rng(seeding.ALGORITHM), dtype=torch.float64, device=rng.device
        ).tolist()
        local = geometric(u[0], 1 - p) + (1 if s.t > 0 else 0)  # ξ = 0 run
        agg = 1 + geometric(u[1], p)  # ξ = 1 run
        ids = torch.arange(env.n, device=env.device)
        x_i, loss = s.x_i, torch.zeros(env.n, device=env.device)
        gen = rng(seeding.BATCHES)
        for _ in range(local):
            loss, g = gradients(env, x_i, ids, gen)  # [n, d]
            x_i = x_i - lr / (env.n * (1 - p)) * g
        c, up = env.uplink.compress(x_i, ids, s.up, rng(seeding.UPLINK))
        x_bar = c.value.mean(0, keepdim=True)  # [1, d]
        server = torch.zeros(1, dtype=torch.int64, device=env.device)
        cm, down = env.downlink.compress(x_bar, server, s.down, rng(seeding.DOWNLINK))
        theta = lr * lam / (env.n * p)
        x_i = cm.value + (1 - theta) ** agg * (x_i - cm.value)
        log = RoundLog(
            c.bits,
            bits_vector(env.n, int(cm.bits[0]), env.device),
            env.n,
            {
                "local_loss": float(loss.mean()),
                "local_steps": float(local),
                "aggregation_steps": float(agg),
            },
        )
        return L2GDState(s.t + 1, x_i, up, down), log

    return Algorithm(
        init, round, lambda s: s.x_i.mean(0), lambda s, env: personal_metrics(env, s.x_i)
    )


ALGORITHMS.add(
    Component(
        "l2gd",
        l2gd,
        {
            "lr": Param(1.0, "step size η (local steps take η/(n(1−p)))", low=0.0, low_open=True),
            "lam": Param(0.1, "personalisation λ: 0 = local models only", low=0.0),
            "p": Param(
                0.2,
                "probability of an aggregation step",
                low=0.0,
                high=1.0,
                low_open=True,
                high_open=True,
            ),
        },
        "personalised x_i, probabilistic compressed averaging (both directions) with weight λ",
        paper="Bergou, Burlachenko, Dutta, Richtárik, TMLR 2023 (arXiv 2209.05148)",
        requires="unbiased",
        extra={"error_feedback": False, "availability": False},  # draws its own clients
    )
)
