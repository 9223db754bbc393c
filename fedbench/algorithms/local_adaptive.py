"""Local Adam, Local RMSProp, Local OASIS: Local SGD whose steps are scaled by a diagonal
preconditioner.

"Local Methods with Adaptivity via Scaling", Chezhegov, Skorik, Khachaturov, Shalagin,
Avetisyan, Takáč, Kholodov, Beznosikov, Russian Math. Surveys 79(6) 2024, arXiv 2406.00846.

Local step of client i: y ← y − γ (D̂)⁻¹ g_i(y), D̂ a positive diagonal built from a running
statistic D (the scaled-methods framework of the paper, one rule per method):
  adam     (D)² ← β(D)² + (1−β) g⊙g, bias-corrected by 1/(1 − β^k), D̂ = D + e, D⁰ = 0;
  rmsprop  (D)² ← β(D)² + (1−β) g⊙g,                                 D̂ = D + e, D⁰ = 1;
  oasis    D ← βD + (1−β) z⊙∇²f_J(y)z (Hutchinson, z Rademacher),     D̂ = max(α, |D|), D⁰ = 1.
As in the framework (and unlike torch's Adam) there is no first moment: "Adam" is Adam's
bias-corrected scaling. `precond` chooses where D lives:
  "synced" (the paper's D̂^{t_p}): one D held by the server, fixed during a round's K local
    steps; each client uploads the mean of its K statistics H_i (32·d, besides C(Δ_i)), the
    server sets D ← EMA(D, mean_i H_i) once per round (k counts rounds) and broadcasts it with
    the model (32·d down). Round 1 of adam (k = 0, no statistic yet) steps with D̂ = I.
  "local": every client keeps its own D_i (rows `[n, d]`, `client_rows`), updated at each of
    its local steps before the step (Adam's order), never sent; k_i counts its steps.
Upload Δ_i = y_K − x̂ (compressed, error feedback as FedAvg), server optimizer on −mean_i C(Δ_i).
Deviations: the Hessian-vector product of OASIS is a central difference
(∇f_J(y+δz) − ∇f_J(y−δz))/(2δ), δ = 1e-3, on its own minibatch J (OASIS draws J apart from
the gradient's sample); D⁰ is 1 rather than a Hutchinson warm start. With β = 1 and e = 0
(rmsprop, oasis) D̂ = I and the method is FedAvg bit for bit (tested).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from fedbench import seeding
from fedbench.algorithms.base import (
    ALGORITHMS,
    LOCAL_PARAMS,
    Algorithm,
    Broadcast,
    Correction,
    Env,
    RoundLog,
    average_updates,
    broadcast,
    broadcast_init,
    client_rows,
    cohort_log,
    gather_rows,
    local_sgd,
    sample_cohort,
    scatter_rows,
    update_compressor,
)
from fedbench.compressors.base import FLOAT_BITS
from fedbench.params import Component, Param
from fedbench.seeding import RoundRng
from fedbench.server_opt import SERVER_PARAMS, build_server_opt

HVP_DELTA = 1e-3  # finite-difference step of OASIS's Hessian-vector product


class Scaling(NamedTuple):
    kind: str  # "adam" | "rmsprop" | "oasis"
    beta: float  # β, decay of the running statistic
    eps: float  # e (adam, rmsprop: D̂ = D + e) or α (oasis: D̂ = max(α, |D|))


def initial_D(kind: str) -> float:
    """D⁰ as stored: (D⁰)² = 0 for adam (bias-corrected), 1 for rmsprop, D⁰ = 1 for oasis."""
    return 0.0 if kind == "adam" else 1.0


def ema(s: Scaling, v: Tensor, H: Tensor) -> Tensor:
    """v ← βv + (1−β)H in place (v = D² for adam/rmsprop, v = D for oasis)."""
    return v.mul_(s.beta).add_(H, alpha=1.0 - s.beta)


def d_hat(s: Scaling, v: Tensor, k: Tensor) -> Tensor:
    """D̂ from the stored statistic `v [c, d]` (or `[d]`) after `k` updates (`[c, 1]` or `[]`)."""
    if s.kind == "oasis":
        return v.abs().clamp_min(s.eps)
    if s.kind == "adam":
        corr = 1.0 - s.beta ** k.to(v.dtype)
        return (v / corr).sqrt_().add_(s.eps)
    return v.sqrt().add_(s.eps)


class Statistic:
    """H for a block of clients at their local step: g⊙g (adam, rmsprop) or OASIS's
    z⊙∇²f_J(y)z. OASIS's z `[m, d]` and J `[m, B]` of step k come from their own generator
    (seed, round, "scaling/k") for the whole cohort, so blocks see the same draws; they are
    kept only until the last block has taken step k."""

    def __init__(self, s: Scaling, env: Env, ids: Tensor, rng: RoundRng):
        self.s, self.env, self.ids, self.rng = s, env, ids, rng
        self.step: dict[int, int] = {}  # block start -> local steps done
        self.draws: dict[int, tuple[Tensor, Tensor | None]] = {}

    def draw(self, k: int) -> tuple[Tensor, Tensor | None]:
        """(z [m, d] int8 Rademacher, J [m, B] sample indices or None for full data) of step k."""
        if k not in self.draws:
            env, m = self.env, self.ids.numel()
            gen = self.rng(f"scaling/{k}")
            bits = torch.randint(0, 2, (m, env.d), generator=gen, device=gen.device)
            z = bits.to(env.device, torch.int8).mul_(2).sub_(1)
            full = env.batch_size == "full"
            J = None if full else env.task.batch_indices(self.ids, 1, int(env.batch_size), gen)
            self.draws[k] = (z, None if J is None else J[:, 0])
        return self.draws[k]

    def __call__(self, y: Tensor, g: Tensor, rows: slice) -> Tensor:
        k = self.step.get(rows.start, 0)
        self.step[rows.start] = k + 1
        if self.s.kind != "oasis":
            return g * g
        z_all, J_all = self.draw(k)
        if rows.stop == self.ids.numel():  # the last block takes step k now
            del self.draws[k]
        z = z_all[rows].to(y.dtype)  # [c, d]
        J = None if J_all is None else J_all[rows]
        ids = self.ids[rows]
        _, gp = self.env.task.loss_grad(y + HVP_DELTA * z, ids, J)
        _, gm = self.env.task.loss_grad(y - HVP_DELTA * z, ids, J)
        return z * (gp - gm).div_(2 * HVP_DELTA)  # [c, d]


class LocalAdaptiveState(NamedTuple):
    t: int
    x: Tensor  # [d] server model
    D: Tensor  # synced: [d] server statistic; local: [n, d] rows D_i (D² for adam/rmsprop)
    k: Tensor  # synced: [] rounds with a statistic; local: [n] local steps of each client
    opt: Any  # server optimizer state
    down: Broadcast
    up: Any  # uplink compressor state


def local_adaptive(
    kind: str, lr: float, local_steps: int, beta: float, eps: float, precond: str, **server: Any
) -> Algorithm:
    opt = build_server_opt(server)
    sc = Scaling(kind, beta, eps)
    synced = precond == "synced"

    def init(x0: Tensor, env: Env, rng: RoundRng) -> LocalAdaptiveState:
        if synced:
            D = torch.full_like(x0, initial_D(kind))
            k = torch.zeros((), dtype=torch.int64, device=env.device)
        else:
            D = client_rows(env).fill_(initial_D(kind))
            k = torch.zeros(env.n, dtype=torch.int64, device=env.device)
        up = update_compressor(env).init(env.n, env.d, env.device)
        return LocalAdaptiveState(0, x0, D, k, opt.init(x0), broadcast_init(env, x0), up)

    def round(
        s: LocalAdaptiveState, env: Env, rng: RoundRng
    ) -> tuple[LocalAdaptiveState, RoundLog]:
        ids = sample_cohort(env, rng)  # [m]
        m = ids.numel()
        down, bits_down = broadcast(env, s.x, s.down, rng(seeding.DOWNLINK))
        stat = Statistic(sc, env, ids, rng)
        D, k = s.D, s.k
        if synced:
            scale = torch.ones_like(s.x) if kind == "adam" and int(k) == 0 else d_hat(sc, D, k)
            H_sum = torch.zeros(m, env.d, device=env.device)  # [m, d]

            def direction(y: Tensor, g: Tensor, rows: slice) -> Tensor:
                H_sum[rows] += stat(y, g, rows)
                return g.div_(scale)  # (D̂^{t_p})⁻¹ g

        else:
            D_i = gather_rows(D, ids, env.device)  # [m, d]
            k_i = k[ids].unsqueeze(1)  # [m, 1]

            def direction(y: Tensor, g: Tensor, rows: slice) -> Tensor:
                ema(sc, D_i[rows], stat(y, g, rows))
                k_i[rows] += 1
                return g.div_(d_hat(sc, D_i[rows], k_i[rows]))  # (D̂_i)⁻¹ g

        corr: Correction = direction
        y, loss = local_sgd(env, down.x_hat, ids, local_steps, lr, rng(seeding.BATCHES), corr)
        delta = y - down.x_hat  # Δ_i [m, d]
        x, opt_state, msg, up = average_updates(env, opt, s.x, s.opt, s.up, delta, ids, rng)
        bits_up, extra_down = msg.bits, 0
        if synced:  # statistics up (mean of the K local ones), D down with the model
            D = ema(sc, D.clone(), H_sum.mean(0) / local_steps)
            k = k + 1
            bits_up, extra_down = msg.bits + FLOAT_BITS * env.d, FLOAT_BITS * env.d
        else:
            scatter_rows(D, ids, D_i)
            k[ids] = k_i.squeeze(1)
        log = cohort_log(env, bits_up, m, bits_down + extra_down, loss)
        return LocalAdaptiveState(s.t + 1, x, D, k, opt_state, down, up), log

    return Algorithm(init, round, lambda s: s.x)


PRECOND = Param(
    "synced",
    "where D lives: one server D fixed within a round, updated from the clients' statistics "
    "(synced), or each client's own D_i updated every local step (local)",
    "str",
    choices=("synced", "local"),
)


def _register(
    kind: str, beta: float, eps: float, eps_help: str, summary: str, lr: float | None = None
) -> None:
    def build(**p: Any) -> Algorithm:
        return local_adaptive(kind, **p)

    step = {} if lr is None else {"lr": Param(lr, LOCAL_PARAMS["lr"].help, low=0.0, low_open=True)}
    ALGORITHMS.add(
        Component(
            f"local_{kind}",
            build,
            {
                **LOCAL_PARAMS,
                **step,
                "beta": Param(beta, "decay β of the preconditioner statistic", low=0.0, high=1.0),
                "eps": Param(eps, eps_help, low=0.0),
                "precond": PRECOND,
                **SERVER_PARAMS,
            },
            summary,
            paper="Chezhegov et al., Russ. Math. Surveys 2024 (arXiv 2406.00846)",
        )
    )


_register(
    "adam",
    0.999,
    1e-8,
    "e in D̂ = D + e",
    "Local SGD scaled by Adam's bias-corrected √EMA(g²) (no first moment)",
    # the first step is lr·sign(g) per coordinate (bias correction): local SGD's 0.05 made
    # digits/logreg diverge (`fedbench check local_adam`: loss 2.39 -> 72); 0.01 is the lr of
    # experiments/local_adaptive.toml
    lr=0.01,
)
_register("rmsprop", 0.99, 1e-8, "e in D̂ = D + e", "Local SGD scaled by RMSProp's √EMA(g²)")
_register(
    "oasis",
    0.99,
    1e-5,
    "α in D̂ = max(α, |D|)",
    "Local SGD scaled by OASIS's EMA of the Hutchinson Hessian diagonal z⊙∇²f z",
)
