"""MASHA1 and MASHA2: compressed extragradient for variational inequalities.

"Distributed Methods with Compressed Communication for Solving Variational Inequalities, with
Theoretical Guarantees", Beznosikov, Richtárik, Diskin, Ryabinin, Gasnikov, NeurIPS 2022,
arXiv 2110.03313. Find z* with F(z*) = 0 for F = (1/n) Σ_i F_i monotone (on a min-max task the
model's "gradient" is the operator (∇_x f_i, −∇_y f_i), see `fedbench.models.game`);
unconstrained (Z = R^d, h = 0: the prox steps are identities).

Both methods are the loopless variance-reduced extragradient (Alacaoglu & Malitsky 2021) with
the differences F_i(z^{k+1/2}) − F_i(w^k) compressed, every device running the same iteration:
    z̄ = τ z + (1 − τ) w,              τ = 1 − p
    z^{k+1/2} = z̄ − γ F(w)
    client i sends C(Δ_i), Δ_i = F_i(z^{k+1/2}) − F_i(w) (uplink), the server sends C(mean) down
    z^{k+1} = z̄ − γ (F(w) + C(mean C(Δ_i)))
    with probability p (one shared coin, 1 bit down): w ← z^{k+1}, every client sends F_i(w)
    dense and receives F(w) dense; else w unchanged.
- `masha1` (Algorithm 1): unbiased uplink / downlink compressors (RandK, ...).
- `masha2` (Algorithm 2): contractive compressors (TopK, ...) with error feedback on both
  sides: client i sends m_i = C(e_i + γΔ_i), e_i ← e_i + γΔ_i − m_i; the server sends
  M = C(e + mean m_i), e ← e + mean m_i − M; z^{k+1} = z̄ − γF(w) − M.
The form of the loop (τ, the coin, z̄) is the paper's; the exact placement of γ inside the
error-feedback messages of MASHA2 and the defaults (p) are [mem]. The theory step sizes are
not implemented (numbers only). F_i(w) is recomputed by each client (the paper stores it;
equal with full local operators, and with minibatches both operator values of a round share
the minibatch). Partial participation: the cohort's differences are averaged (the refresh
uses every client). With identity compression both reduce to the loopless extragradient, and
with p = 1 to the extragradient z^{k+1} = z − γF(z − γF(z)).

Bits: uplink C(Δ_i) (+ 32·d when w is refreshed, + 32·d once for F_i(w⁰)); downlink, to all
n devices (each runs the iteration), the server's message + 1 coin bit (+ 32·d for F(w) when
refreshed, + 32·d once for F(w⁰)).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from fedbench import seeding
from fedbench.algorithms.base import (
    ALGORITHMS,
    Algorithm,
    Env,
    RoundLog,
    bits_vector,
    client_rows,
    gather_rows,
    gradients,
    sample_cohort,
    scatter_rows,
)
from fedbench.compressors.base import FLOAT_BITS
from fedbench.params import Component, Param
from fedbench.seeding import RoundRng

_ZERO = torch.zeros(1, dtype=torch.int64)


class MashaState(NamedTuple):
    t: int
    z: Tensor  # [d] the iterate
    w: Tensor  # [d] the anchor (refreshed with probability p)
    F_w: Tensor  # [d] F(w), known to every device
    up: object  # uplink compressor state
    down: object  # downlink compressor state
    e_i: Tensor | None  # [n, d] client error-feedback buffers (MASHA2)
    e: Tensor | None  # [d] server error-feedback buffer (MASHA2)


def full_operator(env: Env, w: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """F(w) `[d]` as the mean of every client's F_i(w), and their losses `[n]`."""
    everyone = torch.arange(env.n, device=env.device)
    loss, F_i = gradients(env, w.expand(env.n, -1), everyone, gen)
    return F_i.mean(0), loss


def masha(lr: float, p: float, error_feedback: bool) -> Algorithm:
    gamma, tau = lr, 1.0 - p

    def init(x0: Tensor, env: Env, rng: RoundRng) -> MashaState:
        F_w, _ = full_operator(env, x0, rng(seeding.ALGORITHM))
        e_i = client_rows(env) if error_feedback else None
        e = torch.zeros_like(x0) if error_feedback else None
        up = env.uplink.init(env.n, env.d, env.device)
        down = env.downlink.init(1, env.d, env.device)
        return MashaState(0, x0, x0, F_w, up, down, e_i, e)

    def round(s: MashaState, env: Env, rng: RoundRng) -> tuple[MashaState, RoundLog]:
        z_bar = tau * s.z + (1 - tau) * s.w  # [d]
        z_half = z_bar - gamma * s.F_w
        ids = sample_cohort(env, rng)  # [m]
        m = ids.numel()
        # both operator values on the same minibatch (the same generator twice)
        loss, F_half = gradients(env, z_half.expand(m, -1), ids, rng(seeding.BATCHES))  # [m, d]
        _, F_old = gradients(env, s.w.expand(m, -1), ids, rng(seeding.BATCHES))
        delta = F_half - F_old  # [m, d] Δ_i
        e_i, e = s.e_i, s.e
        if e_i is None:
            msg, up = env.uplink.compress(delta, ids, s.up, rng(seeding.UPLINK))
            agg = msg.value.mean(0, keepdim=True)  # [1, d]
        else:
            err = gather_rows(e_i, ids, env.device)  # [m, d]
            target = err + gamma * delta
            msg, up = env.uplink.compress(target, ids, s.up, rng(seeding.UPLINK))
            scatter_rows(e_i, ids, target - msg.value)
            agg = msg.value.mean(0, keepdim=True)
            if e is not None and env.downlink.kind != "exact":
                agg = e.unsqueeze(0) + agg
        back, down = env.downlink.compress(agg, _ZERO, s.down, rng(seeding.DOWNLINK))
        if e is not None and env.downlink.kind != "exact":
            e = agg[0] - back.value[0]
        step = back.value[0] if e_i is not None else gamma * back.value[0]
        z = z_bar - gamma * s.F_w - step  # z^{k+1}
        bits_up = msg.bits.clone()
        # every device runs the iteration: all n receive the message and the coin
        bits_down = bits_vector(env.n, int(back.bits[0]) + 1, env.device)
        coin = torch.rand((), generator=rng(seeding.ALGORITHM), device=rng.device)
        w, F_w = s.w, s.F_w
        dense = FLOAT_BITS * env.d
        extra_up = torch.zeros(0, dtype=torch.int64, device=env.device)
        extra_down = torch.zeros(0, dtype=torch.int64, device=env.device)
        if bool(coin < p):  # refresh: w ← z^{k+1}, F(w) dense both ways for every client
            w = z
            F_w, _ = full_operator(env, w, rng(seeding.BATCHES + "_refresh"))
            extra_up = torch.full((env.n,), dense, dtype=torch.int64, device=env.device)
            extra_down = extra_up
        if s.t == 0:  # F_i(w⁰) up and F(w⁰) down, once
            first = torch.full((env.n,), dense, dtype=torch.int64, device=env.device)
            extra_up, extra_down = torch.cat([extra_up, first]), torch.cat([extra_down, first])
        log = RoundLog(
            torch.cat([bits_up, extra_up]),
            torch.cat([bits_down, extra_down]),
            m,
            {"local_loss": float(loss.mean()), "anchor_refresh": float(w is z)},
        )
        return MashaState(s.t + 1, z, w, F_w, up, down, e_i, e), log

    return Algorithm(init, round, lambda s: s.z)


def masha1(lr: float, p: float) -> Algorithm:
    return masha(lr, p, error_feedback=False)


def masha2(lr: float, p: float) -> Algorithm:
    return masha(lr, p, error_feedback=True)


PARAMS = {
    "lr": Param(0.1, "step size γ", low=0.0, low_open=True),
    "p": Param(
        0.1,
        "probability p = 1 − τ of refreshing the anchor w (F(w) sent dense then)",
        low=0.0,
        high=1.0,
        low_open=True,
    ),
}
PAPER = "Beznosikov, Richtárik, Diskin, Ryabinin, Gasnikov, NeurIPS 2022 (arXiv 2110.03313)"

ALGORITHMS.add(
    Component(
        "masha1",
        masha1,
        PARAMS,
        "compressed extragradient for VIs: unbiased compression of F_i differences, loopless VR",
        paper=PAPER,
        requires="unbiased",
        extra={"error_feedback": False, "local": False},
    )
)
ALGORITHMS.add(
    Component(
        "masha2",
        masha2,
        PARAMS,
        "compressed extragradient for VIs: contractive compression with error feedback both ways",
        paper=PAPER,
        requires="contractive",
        extra={"error_feedback": False, "local": False},
    )
)
