"""EF21-BC: EF21 with bidirectional compression.

"EF21 with Bells & Whistles: Practical Algorithmic Extensions of Modern Error Feedback",
Fatkhullin, Sokolov, Gorbunov, Li, Richtárik, 2021, arXiv 2110.03294 (EF21-BC); order of
updates as in the reference code (`IgorSokoloff/ef21_b-w_experiements_source_code`, ef21_bc.py).

Variant: g_i⁰ = ∇f_i(x⁰) sent up dense, b⁰ = g⁰ = mean_i g_i⁰ sent down dense (both charged to
the first round). Each round every client steps x^{t+1} = x^t − γ b^t itself; client i ∈ S
sends c_i = C(∇f_i(x^{t+1}) − g_i^t), g_i ← g_i + c_i; the server keeps g = mean_i g_i and
broadcasts q = C_M(g^{t+1} − b^t) to all n clients, b^{t+1} = b^t + q (EF21 on the downlink:
b tracks g). Uplink C = `[compressor]`, downlink C_M = `[downlink]` (identity or contractive).
C_M = identity is EF21 (b = g); both identity is GD.
The estimators g_i are `client_rows` (gathered and written back per cohort, `client_state`
honoured, host memory when they do not fit the device); g_i⁰ writes every row, so none stays
zero pages. g is a float32 running sum, whatever the rows' storage.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from fedbench import seeding
from fedbench.algorithms._ef21_common import dense_rows, dense_start, step_size
from fedbench.algorithms.base import (
    ALGORITHMS,
    Algorithm,
    Env,
    RoundLog,
    bits_vector,
    gather_rows,
    gradients,
    sample_cohort,
    scatter_rows,
)
from fedbench.compressors.base import FLOAT_BITS
from fedbench.params import Component, theory_lr
from fedbench.seeding import RoundRng


class EF21BCState(NamedTuple):
    t: int
    x: Tensor  # [d] the model every client holds
    b: Tensor  # [d] the broadcast estimator every client holds
    g: Tensor  # [d] server: mean_i g_i
    g_i: Tensor  # [n, d] client estimators (`client_rows`: rows written per cohort)
    up: Any
    down: Any  # downlink compressor state
    gamma: float


def ef21_bc(lr: float | str) -> Algorithm:
    def init(x0: Tensor, env: Env, rng: RoundRng) -> EF21BCState:
        g_i, _ = dense_start(env, x0, rng(seeding.ALGORITHM))
        g = g_i.mean(0)
        up = env.uplink.init(env.n, env.d, env.device)
        down = env.downlink.init(1, env.d, env.device)
        rows = dense_rows(env, g_i)
        return EF21BCState(0, x0, g.clone(), g, rows, up, down, step_size(lr, env))

    def round(s: EF21BCState, env: Env, rng: RoundRng) -> tuple[EF21BCState, RoundLog]:
        x = s.x - s.gamma * s.b  # x^{t+1}, on every client
        ids = sample_cohort(env, rng)
        m = ids.numel()
        loss, grad = gradients(env, x.expand(m, -1), ids, rng(seeding.BATCHES))
        g_i = gather_rows(s.g_i, ids, env.device)  # [m, d] float32
        c, up = env.uplink.compress(grad - g_i, ids, s.up, rng(seeding.UPLINK))
        scatter_rows(s.g_i, ids, g_i + c.value)
        g = s.g + c.value.sum(0) / env.n
        server = torch.zeros(1, dtype=torch.int64, device=env.device)
        q, down = env.downlink.compress(
            (g - s.b).unsqueeze(0), server, s.down, rng(seeding.DOWNLINK)
        )
        bits_up, bits_down = c.bits, bits_vector(env.n, int(q.bits[0]), env.device)
        if s.t == 0:  # the dense g_i⁰ up and b⁰ down
            dense = bits_vector(env.n, FLOAT_BITS * env.d, env.device)
            bits_up, bits_down = torch.cat([dense, bits_up]), bits_down + dense
        log = RoundLog(bits_up, bits_down, m, {"local_loss": float(loss.mean())})
        return s._replace(t=s.t + 1, x=x, b=s.b + q.value[0], g=g, up=up, down=down), log

    return Algorithm(init, round, lambda s: s.x)


ALGORITHMS.add(
    Component(
        "ef21_bc",
        ef21_bc,
        {"lr": theory_lr(0.1, "step size γ")},
        "EF21 both ways: clients send C(∇f_i − g_i), the server broadcasts C_M(g − b)",
        paper="Fatkhullin, Sokolov, Gorbunov, Li, Richtárik 2021 (arXiv 2110.03294)",
        requires="contractive",
        extra={
            "error_feedback": False,
            "local": False,
            "downlink": ("exact", "contractive"),  # C_M: EF21 on the downlink
            "downlink_why": "runs EF21 on the downlink: it needs a contractive C_M there",
        },
    )
)
