"""EF21-PP: EF21 with partial participation.

"EF21 with Bells & Whistles: Practical Algorithmic Extensions of Modern Error Feedback",
Fatkhullin, Sokolov, Gorbunov, Li, Richtárik, 2021, arXiv 2110.03294 (EF21-PP).

Variant: g_i⁰ = ∇f_i(x⁰) sent dense once; each round x^{t+1} = x^t − γ g^t, then each
participating client sends c_i = C(∇f_i(x^{t+1}) − g_i^t) and sets g_i^{t+1} = g_i^t + c_i;
the others keep g_i; g^{t+1} = g^t + (1/n) Σ_{i∈S} c_i = mean_i g_i. Participation:
`sampling = "uniform"`: a cohort of round(p·n) clients without replacement, as the paper's
reference code (`IgorSokoloff/ef21_b-w_experiements_source_code`, ef21_pp.py) runs it (the same
trajectory as `ef21` with participation p); `"independent"`: each client joins w.p. p on its own,
as the paper's analysis samples (a round may have no participant: the server still steps).
`lr = "theory"`: EF21's γ, which the reference code uses for EF21-PP too.
The estimators g_i are `client_rows` (gathered and written back per cohort, `client_state`
honoured, host memory when they do not fit the device); g_i⁰ writes every row, so none stays
zero pages. g is a float32 running sum, whatever the rows' storage.
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
    bits_vector,
    broadcast,
    broadcast_init,
    gather_rows,
    gradients,
    sample_cohort,
    scatter_rows,
)
from fedbench.params import Component, Param, theory_lr
from fedbench.seeding import RoundRng


class EF21PPState(NamedTuple):
    t: int
    x: Tensor  # [d]
    g: Tensor  # [d] = mean_i g_i
    g_i: Tensor  # [n, d] client estimators (`client_rows`: rows written per cohort)
    down: Broadcast
    up: object
    init_bits: Tensor  # [n]
    gamma: float


def independent_cohort(env: Env, rng: RoundRng) -> Tensor:
    """Ids `[m]` of the clients that joined, each independently with probability p (m ≥ 0)."""
    u = torch.rand(env.n, generator=rng(seeding.COHORT), device=rng.device).to(env.device)
    return torch.nonzero(u < env.participation).flatten()


def ef21_pp(lr: float | str, sampling: str) -> Algorithm:
    cohort = independent_cohort if sampling == "independent" else sample_cohort

    def init(x0: Tensor, env: Env, rng: RoundRng) -> EF21PPState:
        g_i, init_bits = dense_start(env, x0, rng(seeding.ALGORITHM))
        up = env.uplink.init(env.n, env.d, env.device)
        down = broadcast_init(env, x0)
        rows, gamma = dense_rows(env, g_i), step_size(lr, env)
        return EF21PPState(0, x0, g_i.mean(0), rows, down, up, init_bits, gamma)

    def round(s: EF21PPState, env: Env, rng: RoundRng) -> tuple[EF21PPState, RoundLog]:
        x = s.x - s.gamma * s.g  # x^{t+1}: the server steps whoever joins
        ids = cohort(env, rng)  # [m]
        m = ids.numel()
        if m == 0:  # nobody joined: no message either way
            none = torch.zeros(0, dtype=torch.int64, device=env.device)
            bits_up = s.init_bits if s.t == 0 else none
            return s._replace(t=s.t + 1, x=x), RoundLog(bits_up, none, 0, {})
        down, bits_down = broadcast(env, x, s.down, rng(seeding.DOWNLINK))
        loss, grad = gradients(env, down.x_hat.expand(m, -1), ids, rng(seeding.BATCHES))
        g_i = gather_rows(s.g_i, ids, env.device)  # [m, d] float32
        c, up = env.uplink.compress(grad - g_i, ids, s.up, rng(seeding.UPLINK))
        scatter_rows(s.g_i, ids, g_i + c.value)
        g = s.g + c.value.sum(0) / env.n
        bits_up = torch.cat([s.init_bits, c.bits]) if s.t == 0 else c.bits
        extra = {"local_loss": float(loss.mean())}
        log = RoundLog(bits_up, bits_vector(m, bits_down, env.device), m, extra)
        return s._replace(t=s.t + 1, x=x, g=g, down=down, up=up), log

    return Algorithm(init, round, lambda s: s.x)


ALGORITHMS.add(
    Component(
        "ef21_pp",
        ef21_pp,
        {
            "lr": theory_lr(0.1, "step size γ"),
            "sampling": Param(
                "uniform",
                "participation: a fixed-size uniform cohort (reference code) or each client "
                "independently with probability p (the paper's analysis)",
                "str",
                choices=("uniform", "independent"),
            ),
        },
        "EF21 where only the round's participants refresh g_i; fixed-size or independent sampling",
        paper="Fatkhullin, Sokolov, Gorbunov, Li, Richtárik 2021 (arXiv 2110.03294)",
        requires="contractive",
        extra={"error_feedback": False, "local": False},
    )
)
