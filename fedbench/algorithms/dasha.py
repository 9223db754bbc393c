"""DASHA: compressed momentum-corrected gradient differences, no synchronisation rounds.

"DASHA: Distributed Nonconvex Optimization with Communication Compression and Optimal Oracle
Complexity", Tyurin, Richtárik, ICLR 2023, arXiv 2202.01268.

Variant: Algorithm 1, DASHA (gradient setting, b = 1) and DASHA-MVR (b < 1, the momentum
variance-reduced local estimator); full participation (every client works every round:
`participation` does not apply — partial participation is DASHA-PP, another paper).
Initialisation (official code, flower `baselines/dasha`): g_i⁰ = h_i⁰ = ∇f_i(x⁰), sent dense
by every client and charged to the first round; g⁰ = mean_i g_i⁰. Each round:
  x^{t+1} = x^t − γ g^t                                       (server, broadcast)
  h_i^{t+1} = ∇f_i(x^{t+1})                                   (DASHA)
            = ∇f_i(x^{t+1}; ξ) + (1 − b)(h_i^t − ∇f_i(x^t; ξ))  (DASHA-MVR, same minibatch ξ)
  m_i^{t+1} = C_i(h_i^{t+1} − h_i^t − a (g_i^t − h_i^t))      (the only uplink message)
  g_i^{t+1} = g_i^t + m_i^{t+1},  g^{t+1} = g^t + mean_i m_i^{t+1}.
Momentum a = "auto" = 1/(2ω + 1) (Theorem 6.1's a; official code `_estimate_momentum`).

lr = "theory" (DASHA only): Theorem 6.1 (gradient setting) γ = 1/(L + √(16ω(2ω+1)/n) L̂),
L = the smoothness of f, L̂ = √(mean_i L_i²). The authors' research code
(mysteryresearcher/dasha, `ZeroMarinaMasterAlgorithm._estimate_gamma`, "zero_marina" being
DASHA's working name) computes 1/(mean_i L_i + L̂ √(ω(4ω+1)/n)) instead, a √-term ≈ 2.9×
smaller at ω = 9: that is not the theorem. fedbench keeps the theorem's value, which is safe:
the Lyapunov argument Φ = f − f* + γ/(2a)‖g − h‖² + (γω/n)(1/n)Σ‖g_i − h_i‖² with
a = 1/(2ω+1) ((1 − a)² + 2ωa² = 1 − a) and ‖u − v‖² ≤ 2‖u‖² + 2‖v‖² closes whenever
1/γ ≥ L + √(2ω(4ω+1)/n) L̂, and 16ω(2ω+1) ≥ 2ω(4ω+1). (The paper's text was not reachable from
this session's sources; the theorem's constant is as recalled, the derivation is checked.)
With PermK, ω is its exact per-client constant for the job's n (compressors/permk.py).
With C = I (ω = 0, a = 1): g_i^{t+1} = h_i^{t+1} = ∇f_i(x^{t+1}), i.e. gradient descent.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from fedbench import seeding
from fedbench.algorithms._shifts import gradient_pair, step_size
from fedbench.algorithms.base import (
    ALGORITHMS,
    Algorithm,
    Broadcast,
    Env,
    RoundLog,
    bits_vector,
    broadcast,
    broadcast_init,
    gradients,
)
from fedbench.compressors.base import FLOAT_BITS
from fedbench.params import Component, Param, theory_lr
from fedbench.seeding import RoundRng
from fedbench.task import Smoothness


def momentum(a: float | str, omega: float) -> float:
    """a: a number in (0, 1], or "auto" = 1/(2ω + 1)."""
    if isinstance(a, str):
        if a != "auto":
            raise ValueError(f'a must be a number or "auto", got {a!r}')
        return 1.0 / (2.0 * omega + 1.0)
    return float(a)


def dasha_gamma(sm: Smoothness, omega: float, n: int) -> float:
    """Theorem 6.1 (DASHA, gradient setting): γ = 1/(L + √(16ω(2ω+1)/n) L̂), L̂ = √(mean L_i²);
    not the authors' code's 1/(mean L_i + √(ω(4ω+1)/n) L̂) (see the module docstring)."""
    return 1.0 / (sm.L + math.sqrt(16.0 * omega * (2.0 * omega + 1.0) / n) * sm.L_qm)


class DashaState(NamedTuple):
    t: int
    gamma: float  # γ
    a: float  # momentum a
    x: Tensor  # [d] x^t
    g: Tensor  # [d] g^t = mean_i g_i^t
    g_i: Tensor  # [n, d] g_i^t, each client's estimator (the server knows its mean)
    h_i: Tensor  # [n, d] h_i^t, each client's local gradient estimator
    down: Broadcast  # x̂^t, the model the clients hold
    up: object  # uplink compressor state
    init_bits: Tensor  # [n] dense g_i⁰, charged to the first round


def dasha(lr: float | str, a: float | str, b: float) -> Algorithm:
    def init(x0: Tensor, env: Env, rng: RoundRng) -> DashaState:
        if isinstance(lr, str) and b < 1.0:
            raise ValueError('lr = "theory" is DASHA\'s step size (b = 1); give a number')
        gamma = step_size(lr, env, env.n, lambda sm, w, n, s: dasha_gamma(sm, w, n))
        everyone = torch.arange(env.n, device=env.device)
        _, g0 = gradients(env, x0.expand(env.n, -1), everyone, rng(seeding.BATCHES))  # [n, d]
        return DashaState(
            0,
            gamma,
            momentum(a, env.uplink.param),
            x0,
            g0.mean(0),
            g0,
            g0.clone(),
            broadcast_init(env, x0),
            env.uplink.init(env.n, env.d, env.device),
            bits_vector(env.n, FLOAT_BITS * env.d, env.device),
        )

    def round(s: DashaState, env: Env, rng: RoundRng) -> tuple[DashaState, RoundLog]:
        x = s.x - s.gamma * s.g  # x^{t+1}
        ids = torch.arange(env.n, device=env.device)
        down, bits_down = broadcast(env, x, s.down, rng(seeding.DOWNLINK))
        gen = rng(seeding.BATCHES)
        if b >= 1.0:  # DASHA: h_i^{t+1} = ∇f_i(x^{t+1})
            loss, h_new = gradients(env, down.x_hat.expand(env.n, -1), ids, gen)
        else:  # DASHA-MVR, both gradients on the same minibatch
            loss, g_new, g_old = gradient_pair(env, down.x_hat, s.down.x_hat, ids, gen)
            h_new = g_new + (1.0 - b) * (s.h_i - g_old)
        msg = h_new - s.h_i - s.a * (s.g_i - s.h_i)  # [n, d]
        q, up = env.uplink.compress(msg, ids, s.up, rng(seeding.UPLINK))
        g_i = s.g_i + q.value
        g = s.g + q.value.mean(0)
        bits_up = torch.cat([s.init_bits, q.bits]) if s.t == 0 else q.bits
        log = RoundLog(
            bits_up,
            bits_vector(env.n, bits_down, env.device),
            env.n,
            {"local_loss": float(loss.mean())},
            steps=torch.ones(env.n, dtype=torch.int64),  # every client, one gradient
        )
        state = DashaState(s.t + 1, s.gamma, s.a, x, g, g_i, h_new, down, up, s.init_bits)
        return state, log

    return Algorithm(init, round, lambda s: s.x)


ALGORITHMS.add(
    Component(
        "dasha",
        dasha,
        {
            "lr": theory_lr(0.1, "step size γ"),
            "a": Param(
                "auto",
                'momentum a of the compressed difference, or "auto" = 1/(2ω + 1)',
                "float_or_str",
                choices=("auto",),
                low=0.0,
                high=1.0,
                low_open=True,
            ),
            "b": Param(
                1.0,
                "MVR momentum b of the local estimator (1 = DASHA, < 1 = DASHA-MVR)",
                low=0.0,
                high=1.0,
                low_open=True,
            ),
        },
        "compressed momentum-corrected gradient differences, no dense synchronisation rounds",
        paper="Tyurin, Richtárik, ICLR 2023 (arXiv 2202.01268)",
        requires="unbiased",
        extra={"error_feedback": False, "local": False, "availability": False},
    )
)
