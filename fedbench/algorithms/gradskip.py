"""GradSkip: ProxSkip-style local training in which clients may skip gradient computations.

"GradSkip: Communication-Accelerated Local Gradient Methods with Better Computational
Complexity", Maranjyan, Safaryan, Richtárik, arXiv 2210.16402 (v3, 2025; TMLR submission).

Variant: Algorithm 1 (GradSkip) for the consensus form of min (1/n) Σ f_i, full participation.
Each client keeps a local model x_i and a control variate h_i (h_i⁰ = 0, so Σ_i h_i = 0). One
fedbench round = the local iterations up to and including the next communication (a geometric
number, coin θ ~ Bernoulli(p) per iteration, shared). Each iteration, every client:
  η_i ~ Bernoulli(q_i);  ĥ_i = h_i if η_i = 1 else ∇f_i(x_i);
  x̂_i = x_i − γ (∇f_i(x_i) − ĥ_i)        (η_i = 0: x̂_i = x_i, the client stays put)
  θ = 1: x_i ← mean_j (x̂_j − (γ/p) ĥ_j) (one dense message each way); else x_i ← x̂_i;
  h_i ← ĥ_i + (p/γ)(x_i − x̂_i).
A client that skipped needs no new gradient until its model moves again: `grad_evals` counts
the gradients actually computed this round (the simulation computes them batched). q_i = 1 for
every client is ProxSkip / Scaffnew (Mishchenko et al., ICML 2022); p = q = 1 is gradient
descent. After each communication Σ_i h_i = 0. lr = "theory": γ = 1/max_i L_i (ProxSkip's
γ ≤ 1/L with L the largest smoothness constant, recalled). The paper's q_i from local condition
numbers are not derived here: one q for all clients (a grid value).
Bits per round: 32·d up and 32·d down per client.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from fedbench import seeding
from fedbench.algorithms._shifts import step_size
from fedbench.algorithms.base import ALGORITHMS, Algorithm, Env, RoundLog, bits_vector
from fedbench.compressors.base import FLOAT_BITS
from fedbench.params import Component, Param, theory_lr
from fedbench.seeding import RoundRng

MAX_ITERATIONS = 10_000  # local iterations in one round before a communication is forced


class GradSkipState(NamedTuple):
    t: int
    gamma: float  # γ
    x_i: Tensor  # [n, d] local models
    h_i: Tensor  # [n, d] control variates, Σ_i h_i = 0 after each communication
    g_i: Tensor  # [n, d] the last gradient each client computed
    fresh: Tensor  # [n] bool: g_i is ∇f_i(x_i) (the model has not moved since)


def gradskip(lr: float | str, p: float, q: float) -> Algorithm:
    def init(x0: Tensor, env: Env, rng: RoundRng) -> GradSkipState:
        gamma = step_size(lr, env, env.n, lambda sm, w, n, s: 1.0 / float(sm.L_i.max()))
        x_i = x0.expand(env.n, -1).clone()
        fresh = torch.zeros(env.n, dtype=torch.bool, device=env.device)
        return GradSkipState(0, gamma, x_i, torch.zeros_like(x_i), torch.zeros_like(x_i), fresh)

    def round(s: GradSkipState, env: Env, rng: RoundRng) -> tuple[GradSkipState, RoundLog]:
        coin, batches = rng(seeding.ALGORITHM), rng(seeding.BATCHES)
        everyone = torch.arange(env.n, device=env.device)
        x_i, h_i, g_i, fresh, gamma = s.x_i, s.h_i, s.g_i, s.fresh, s.gamma
        iterations, loss = 0, torch.zeros(env.n, device=env.device)
        evals = torch.zeros(env.n, dtype=torch.int64)  # [n] gradients each client computed
        deterministic = env.batch_size == "full"
        while True:
            iterations += 1
            need = ~fresh if deterministic else torch.ones_like(fresh)  # [n]
            if bool(need.any()):
                if deterministic:
                    loss, g = env.task.loss_grad(x_i, everyone)
                else:
                    idx = env.task.batch_indices(everyone, 1, int(env.batch_size), batches)
                    loss, g = env.task.loss_grad(x_i, everyone, idx[:, 0])
                g_i = torch.where(need[:, None], g, g_i)  # [n, d]
                evals += need.cpu().long()
            eta = torch.rand(env.n, generator=coin, device=coin.device).to(env.device) < q
            h_hat = torch.where(eta[:, None], h_i, g_i)  # ĥ_i
            x_hat = x_i - gamma * (g_i - h_hat)  # x̂_i
            theta = bool(torch.rand(1, generator=coin, device=coin.device) < p)
            theta = theta or iterations >= MAX_ITERATIONS
            if not theta:  # a local iteration: clients with η_i = 1 moved
                x_i, h_i, fresh = x_hat, h_hat, ~eta
                continue
            x_bar = (x_hat - (gamma / p) * h_hat).mean(0)  # the prox of the consensus constraint
            x_i = x_bar.expand(env.n, -1).clone()  # [n, d]
            h_i = h_hat + (p / gamma) * (x_i - x_hat)
            fresh = torch.zeros_like(fresh)
            break
        dense = FLOAT_BITS * env.d
        log = RoundLog(
            bits_vector(env.n, dense, env.device),
            bits_vector(env.n, dense, env.device),
            env.n,
            {
                "local_loss": float(loss.mean()),
                "local_steps": float(iterations),
                "grad_evals": float(evals.sum()),
            },
            steps=evals,  # the simulated clock charges each client its own gradients
        )
        return GradSkipState(s.t + 1, gamma, x_i, h_i, g_i, fresh), log

    return Algorithm(init, round, lambda s: s.x_i.mean(0))


# the downlink is its own: a configured compressor would never be applied
DOWNLINK_WHY = "averages the exact models at each communication (ProxSkip's protocol)"

ALGORITHMS.add(
    Component(
        "gradskip",
        gradskip,
        {
            "lr": theory_lr(0.1, "step size γ"),
            "p": Param(
                0.2,
                "communication probability p per local iteration",
                low=0.0,
                high=1.0,
                low_open=True,
            ),
            "q": Param(
                1.0,
                "probability q_i that a client takes a gradient step (1 = ProxSkip)",
                low=0.0,
                high=1.0,
                low_open=True,
            ),
        },
        "ProxSkip/Scaffnew local training where clients skip gradient steps with prob. 1 − q",
        paper="Maranjyan, Safaryan, Richtárik, arXiv 2210.16402",
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
