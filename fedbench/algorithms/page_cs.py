"""PAGE with client and data sampling (the federated form of the sampling framework).

"Sharper Rates and Flexible Framework for Nonconvex SGD with Client and Data Sampling", Tyurin,
Sun, Burlachenko, Richtárik, TMLR 2023, arXiv 2206.02275.

Variant: Algorithm 1 (PAGE with an arbitrary unbiased sampling) for f = (1/n) Σ_i f_i,
f_i = (1/m_i) Σ_j f_ij, with the composed sampling of the paper's federated section: a client
sampling S^t, then, inside each sampled client, a minibatch I_i of B samples (uniform with
replacement; B = `batch_size`, or the client's whole data for "full"). g⁰ = ∇f(x⁰) from every
client (dense, charged to the first round). Each round:
  x^{t+1} = x^t − γ g^t;  c^{t+1} ~ Bernoulli(p), one coin shared by everybody;
  c = 1: every client sends ∇f_i(x^{t+1}) on its full data and g^{t+1} = ∇f(x^{t+1});
  c = 0: g^{t+1} = g^t + (1/n) Σ_{i∈S} (1/q_i) (1/B) Σ_{j∈I_i} (∇f_ij(x^{t+1}) − ∇f_ij(x^t)),
  with q_i = s/n for the s-nice client sampling (`sampling = "uniform"`, s = participation·n:
  the weight is 1/s) and q_i = participation for independent sampling (`sampling = "poisson"`).
Both gradients of a difference use the same minibatch. p = "auto" = b'/(N + b'), with
b' = s·B sample gradients in a cheap round and N all samples (PAGE's p = b'/(b + b') with the
full gradient as the large batch). Messages are dense (32·d each).
Deviations: no theory step size (the paper's γ depends on the sampling's A, B constants, not
implemented here); lr is a number. p = 1 is gradient descent; with full local data and the
uniform client sampling this is today's `page` with b = n and b' = s (tested).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from fedbench import seeding
from fedbench.algorithms._shifts import gradient_pair
from fedbench.algorithms.base import (
    ALGORITHMS,
    Algorithm,
    Broadcast,
    Env,
    RoundLog,
    bits_vector,
    broadcast,
    broadcast_init,
    cohort_size,
    sample_cohort,
)
from fedbench.compressors.base import FLOAT_BITS
from fedbench.params import Component, Param
from fedbench.seeding import RoundRng


class PageCSState(NamedTuple):
    t: int
    p: float  # probability of a full-gradient round
    x: Tensor  # [d] x^t
    g: Tensor  # [d] g^t
    down: Broadcast  # x̂^t
    init_bits: Tensor  # [n] the dense ∇f_i(x⁰), charged to the first round


def full_probability(p: float | str, env: Env) -> float:
    """p, or "auto" = b'/(N + b') with b' = s·B sample gradients per cheap round."""
    if not isinstance(p, str):
        return float(p)
    if p != "auto":
        raise ValueError(f'p must be a number or "auto", got {p!r}')
    counts = env.task.data.counts
    N = float(counts.sum())
    s = cohort_size(env.n, env.participation)
    per_client = float(counts.float().mean()) if env.batch_size == "full" else env.batch_size
    b_prime = s * float(per_client)
    return b_prime / (N + b_prime)


def sampled_mean(diff: Tensor, env: Env) -> Tensor:
    """(1/n) Σ_{i∈S} (1/q_i) diff_i `[d]` for the rows `diff [|S|, d]` of the sampled clients:
    unbiased for mean_i diff_i under the s-nice (q = s/n) or independent (q) sampling."""
    if env.sampling == "poisson":
        return diff.sum(0) / (env.n * env.participation)
    return diff.mean(0)


def page_cs(lr: float, p: float | str) -> Algorithm:
    def init(x0: Tensor, env: Env, rng: RoundRng) -> PageCSState:
        everyone = torch.arange(env.n, device=env.device)
        _, g0 = env.task.loss_grad(x0.expand(env.n, -1), everyone)  # [n, d] full local data
        bits = bits_vector(env.n, FLOAT_BITS * env.d, env.device)
        prob = full_probability(p, env)
        return PageCSState(0, prob, x0, g0.mean(0), broadcast_init(env, x0), bits)

    def round(s: PageCSState, env: Env, rng: RoundRng) -> tuple[PageCSState, RoundLog]:
        x = s.x - lr * s.g  # x^{t+1}
        full = bool(torch.rand(1, generator=rng(seeding.ALGORITHM), device=rng.device) < s.p)
        ids = torch.arange(env.n, device=env.device) if full else sample_cohort(env, rng)
        m = ids.numel()
        down, bits_down = broadcast(env, x, s.down, rng(seeding.DOWNLINK))
        if full:  # g^{t+1} = ∇f(x^{t+1})
            loss, grad = env.task.loss_grad(down.x_hat.expand(m, -1), ids)
            g = grad.mean(0)
        else:  # client sampling S, then B samples inside each sampled client
            gen = rng(seeding.BATCHES)
            loss, g_new, g_old = gradient_pair(env, down.x_hat, s.down.x_hat, ids, gen)
            g = s.g + sampled_mean(g_new - g_old, env)
        bits = bits_vector(m, FLOAT_BITS * env.d, env.device)
        log = RoundLog(
            torch.cat([s.init_bits, bits]) if s.t == 0 else bits,
            bits_vector(m, bits_down + 1, env.device),  # + the coin
            m,
            {"local_loss": float(loss.mean()), "full_sync": float(full)},
            steps=torch.zeros(env.n, dtype=torch.int64).index_fill_(0, ids.cpu(), 1),
        )
        return PageCSState(s.t + 1, s.p, x, g, down, s.init_bits), log

    return Algorithm(init, round, lambda s: s.x)


ALGORITHMS.add(
    Component(
        "page_cs",
        page_cs,
        {
            "lr": Param(0.1, "step size γ", low=0.0, low_open=True),
            "p": Param(
                "auto",
                "probability of a full-gradient round, or \"auto\" = b'/(N + b'), b' = s·B",
                "float_or_str",
                choices=("auto",),
                low=0.0,
                high=1.0,
                low_open=True,
            ),
        },
        "PAGE with client sampling (uniform s-nice or poisson) × data minibatches inside clients",
        paper="Tyurin, Sun, Burlachenko, Richtárik, TMLR 2023 (arXiv 2206.02275)",
        requires="exact",
        extra={"error_feedback": False, "local": False},
    )
)
