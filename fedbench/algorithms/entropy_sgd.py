"""Entropy-SGD as the local method of FedAvg: each local step descends the local entropy.

"Entropy-SGD: Biasing Gradient Descent Into Wide Valleys", Chaudhari, Choromanska, Soatto,
LeCun, Baldassi, Borgs, Chayes, Sagun, Zecchina, ICLR 2017, arXiv 1611.01838; constants and
the exact form of the official code (ucla-vision/entropy-sgd, `python/optim.py`).

Local step k of client i (Algorithm 1): from y, x' = μ = y; L Langevin iterations, each on a
fresh minibatch ξ_l:
  x' ← x' − η'(∇f_i(x'; ξ_l) − γ(y − x') + (ε/√(η'/2)) N(0, I)),   μ ← βμ + (1−β)x';
then y ← y − η(y − μ) (the local-entropy gradient γ(y − μ) with γ folded into η, as the code).
Upload Δ_i = y_K − x̂ (compressed, error feedback as FedAvg), server optimizer as FedAvg.
Bits as FedAvg. Defaults of the code: η' = 0.1, β = 0.75 (`beta1`), ε = 1e-4, γ = g0 = 0.01
(scoping g1 = 0: γ constant). The paper writes the noise as √η' ε N and the averaging as
(1−α)μ + αx'; the code's forms are used. Special case (tested): L = 1, ε = 0, β = 0, η = 1 is
local SGD with step η' (FedAvg with lr = η').
"""

from __future__ import annotations

import threading
from typing import Any, NamedTuple

import torch
from torch import Tensor

from fedbench import seeding
from fedbench.algorithms.base import (
    ALGORITHMS,
    Algorithm,
    Broadcast,
    Env,
    RoundLog,
    Step,
    average_updates,
    broadcast,
    broadcast_init,
    cohort_log,
    local_sgd,
    sample_cohort,
    sees_step,
    step_grad,
    update_compressor,
)
from fedbench.parallel import rowwise
from fedbench.params import Component, Param
from fedbench.seeding import RoundRng
from fedbench.server_opt import SERVER_PARAMS, build_server_opt


class EntropySGDState(NamedTuple):
    t: int
    x: Tensor  # [d] server model
    opt: Any  # server optimizer state
    down: Broadcast
    up: Any  # uplink compressor state


def entropy_sgd(
    lr: float,
    local_steps: int,
    langevin_steps: int,
    langevin_lr: float,
    gamma: float,
    noise: float,
    beta: float,
    **server: Any,
) -> Algorithm:
    opt = build_server_opt(server)
    L, eta_p = langevin_steps, langevin_lr
    noise_scale = noise / (0.5 * eta_p) ** 0.5  # ε/√(η'/2), the code's thermal noise

    def init(x0: Tensor, env: Env, rng: RoundRng) -> EntropySGDState:
        up = update_compressor(env).init(env.n, env.d, env.device)
        return EntropySGDState(0, x0, opt.init(x0), broadcast_init(env, x0), up)

    def round(s: EntropySGDState, env: Env, rng: RoundRng) -> tuple[EntropySGDState, RoundLog]:
        ids = sample_cohort(env, rng)  # [m]
        m = ids.numel()
        down, bits_down = broadcast(env, s.x, s.down, rng(seeding.DOWNLINK))
        noises: dict[int, Tensor] = {}  # step k -> [m, L, d], drawn once for all blocks
        used: dict[int, int] = {}  # step k -> rows that have taken their noise
        lock = threading.Lock()  # blocks may run on threads (`rowwise`)

        def langevin_noise(k: int, rows: slice) -> Tensor:
            """Step k's noise for the block's rows: one draw [m, L, d] from the step's own
            generator, whichever block asks first, so it does not depend on call order."""
            with lock:
                if k not in noises:
                    gen = rng(f"langevin/{k}")
                    draw = torch.randn(m, L, env.d, generator=gen, device=gen.device)
                    noises[k], used[k] = draw.to(env.device), 0
                out = noises[k][rows]
                used[k] += rows.stop - rows.start
                if used[k] == m:  # every block has used step k
                    del noises[k], used[k]
            return out

        @rowwise
        @sees_step
        def local_entropy(y: Tensor, g: Tensor, rows: slice, step: Step) -> Tensor:
            """L Langevin iterations from x' = μ = y; the first gradient is local_sgd's g (at
            y on ζ_0), the l-th is on ζ_l. The step's loss is their mean."""
            xp, mu = y.clone(), y.clone()  # x', μ [c, d]
            eps = langevin_noise(step.k, rows) if noise > 0 else None
            loss_sum = step.loss
            for j in range(L):
                if j > 0:
                    loss, g = step_grad(env, xp, step, j)
                    loss_sum = loss_sum + loss
                g.sub_(y - xp, alpha=gamma)  # ∇f(x') − γ(y − x')
                if eps is not None:
                    g.add_(eps[:, j], alpha=noise_scale)
                xp.sub_(g, alpha=eta_p)
                mu.mul_(beta).add_(xp, alpha=1.0 - beta)
            step.loss.copy_(loss_sum / L)
            return y - mu  # y ← y − η(y − μ)

        gen = rng(seeding.BATCHES)
        y, loss = local_sgd(env, down.x_hat, ids, local_steps, lr, gen, local_entropy, draws=L)
        delta = y - down.x_hat  # Δ_i [m, d]
        x, opt_state, msg, up = average_updates(env, opt, s.x, s.opt, s.up, delta, ids, rng)
        log = cohort_log(env, msg.bits, m, bits_down, loss)
        return EntropySGDState(s.t + 1, x, opt_state, down, up), log

    return Algorithm(init, round, lambda s: s.x)


ALGORITHMS.add(
    Component(
        "entropy_sgd",
        entropy_sgd,
        {
            "lr": Param(1.0, "outer step η on y − μ (code: lr = 1)", low=0.0, low_open=True),
            "local_steps": Param(5, "local Entropy-SGD steps K per round", "int", low=1),
            "langevin_steps": Param(5, "Langevin iterations L per local step", "int", low=1),
            "langevin_lr": Param(0.1, "Langevin step η' (code 0.1)", low=0.0, low_open=True),
            "gamma": Param(0.01, "scope γ of the local entropy (code g0 = 0.01)", low=0.0),
            "noise": Param(1e-4, "thermal noise ε (code 1e-4)", low=0.0),
            "beta": Param(
                0.75,
                "averaging μ ← βμ + (1−β)x' (code beta1 = 0.75)",
                low=0.0,
                high=1.0,
                high_open=True,
            ),
            **SERVER_PARAMS,
        },
        "local steps on the local entropy: L Langevin iterations around y, step towards their mean",
        paper="Chaudhari et al., ICLR 2017 (arXiv 1611.01838)",
    )
)
