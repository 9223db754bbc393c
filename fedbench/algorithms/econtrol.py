"""EControl: error feedback with a controlled feedback strength η.

"EControl: Fast Distributed Optimization with Compression and Error Control", Gao, Islamov,
Stich, ICLR 2024, arXiv 2311.05645.

Variant: the paper's algorithm with h_i⁰ = g_i(x⁰) (sent dense once, charged to the first
round) and e_i⁰ = 0. Round t, client i ∈ S at the broadcast x^t: g_i = g_i(x^t) (stochastic with
minibatches), Δ_i = C(η e_i + g_i − h_i), e_i ← e_i + g_i − h_i − Δ_i, h_i ← h_i + Δ_i, sends
Δ_i; server ĝ = h + (1/n) Σ_{i∈S} Δ_i, h ← ĝ (= mean_i h_i), x^{t+1} = x^t − γ ĝ.
η = 0: e_i never feeds back and the iterates are EF21's (h_i = g_i); C = identity: GD.
The paper's theory takes η of order δ (δ/400); it tunes η in practice. `lr = "theory"` uses
EF21's γ (the EControl theorem's own constants are not reproduced here).
h_i and e_i are `client_rows` (gathered and written back per cohort, `client_state` honoured,
host memory when they do not fit the device): h_i⁰ writes every row, e_i stays zero pages on
a CPU until a client is first sampled; h is a float32 running sum, whatever the storage.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from fedbench import seeding
from fedbench.algorithms._ef21_common import dense_rows, dense_start, step_size
from fedbench.algorithms.base import (
    ALGORITHMS,
    Algorithm,
    Broadcast,
    Env,
    RoundLog,
    broadcast,
    broadcast_init,
    client_rows,
    cohort_log,
    gather_rows,
    gradients,
    sample_cohort,
    scatter_rows,
)
from fedbench.params import Component, Param, theory_lr
from fedbench.seeding import RoundRng


class EControlState(NamedTuple):
    t: int
    x: Tensor  # [d]
    h: Tensor  # [d] = mean_i h_i
    h_i: Tensor  # [n, d] shifts (`client_rows`: rows written per cohort)
    e_i: Tensor  # [n, d] errors (`client_rows`, likewise)
    down: Broadcast
    up: object
    init_bits: Tensor  # [n] dense h_i⁰
    gamma: float


def econtrol(lr: float | str, eta: float) -> Algorithm:
    def init(x0: Tensor, env: Env, rng: RoundRng) -> EControlState:
        h_i, init_bits = dense_start(env, x0, rng(seeding.ALGORITHM))
        h, rows, e_i = h_i.mean(0), dense_rows(env, h_i), client_rows(env)
        up = env.uplink.init(env.n, env.d, env.device)
        down, gamma = broadcast_init(env, x0), step_size(lr, env)
        return EControlState(0, x0, h, rows, e_i, down, up, init_bits, gamma)

    def round(s: EControlState, env: Env, rng: RoundRng) -> tuple[EControlState, RoundLog]:
        ids = sample_cohort(env, rng)  # [m]
        m = ids.numel()
        down, bits_down = broadcast(env, s.x, s.down, rng(seeding.DOWNLINK))
        loss, g = gradients(env, down.x_hat.expand(m, -1), ids, rng(seeding.BATCHES))
        h_i = gather_rows(s.h_i, ids, env.device)  # [m, d] float32
        e_i = gather_rows(s.e_i, ids, env.device)  # [m, d] float32
        delta, up = env.uplink.compress(eta * e_i + g - h_i, ids, s.up, rng(seeding.UPLINK))
        scatter_rows(s.e_i, ids, e_i + g - h_i - delta.value)
        scatter_rows(s.h_i, ids, h_i + delta.value)
        g_hat = s.h + delta.value.sum(0) / env.n  # ĝ = mean_i h_i after the update
        x = s.x - s.gamma * g_hat
        bits_up = torch.cat([s.init_bits, delta.bits]) if s.t == 0 else delta.bits
        log = cohort_log(env, bits_up, m, bits_down, loss)
        return s._replace(t=s.t + 1, x=x, h=g_hat, down=down, up=up), log

    return Algorithm(init, round, lambda s: s.x)


ALGORITHMS.add(
    Component(
        "econtrol",
        econtrol,
        {
            "lr": theory_lr(0.1, "step size γ"),
            "eta": Param(0.1, "feedback strength η of the error e_i", low=0.0, high=1.0),
        },
        "Δ_i = C(ηe_i + g_i − h_i): EF21-style shifts h_i plus a damped error e_i",
        paper="Gao, Islamov, Stich, ICLR 2024 (arXiv 2311.05645)",
        requires="contractive",
        extra={"error_feedback": False, "local": False},
    )
)
