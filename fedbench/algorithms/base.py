"""What every algorithm is built from: the environment, the round log and shared client work.

An algorithm is `Algorithm(init, round, params)`: pure functions over an explicit state
(a NamedTuple named with the paper's symbols). Per-client state is one `[n, d]` tensor whose
rows are gathered for the cohort and written back in place (copying `[n, d]` every round
would cost more than the round).

Layers: the runner (`fedbench.runner`) calls an algorithm's `round`; an algorithm asks
`fedbench.cohort` who takes part (`sample_cohort`, re-exported here), trains them with the one
local-training loop `local_sgd` on the `fedbench.task.Task`, sends messages through
`fedbench.compressors`, and may read the simulated time model (`fedbench.network`). None of
those imports this package.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor

from fedbench import curriculum, network, seeding
from fedbench.cohort import cohort_size as cohort_size  # re-exported: methods import it from here
from fedbench.cohort import sample_cohort as sample_cohort
from fedbench.compressors import Compressed, Compressor, error_feedback
from fedbench.models import Model
from fedbench.parallel import block_threads, for_each_block, is_rowwise
from fedbench.params import Param, Registry
from fedbench.rows import LAZY_ZERO_BYTES as LAZY_ZERO_BYTES  # re-exported: older imports
from fedbench.rows import gather_rows as gather_rows
from fedbench.rows import mapped_zero_pages as mapped_zero_pages
from fedbench.rows import scatter_rows as scatter_rows
from fedbench.rows import state_rows
from fedbench.rows import zeroed_host as zeroed_host
from fedbench.seeding import RoundRng
from fedbench.server_opt import ServerOpt
from fedbench.task import Task, take

ALGORITHMS = Registry("algorithm")

# the parameters of every method with K local steps
LOCAL_PARAMS = {
    "lr": Param(0.05, "client (local) learning rate η_l", low=0.0, low_open=True),
    "local_steps": Param(5, "local SGD steps K per round", "int", low=1),
}

State = Any
# (y [c, d], g [c, d], rows) -> corrected g [c, d] for the block `rows` of the cohort; a
# correction marked `sees_step` is called (y, g, rows, step) with the step's `Step`
Correction = Callable[..., Tensor]


class Step(NamedTuple):
    """What a local step drew, for a `sees_step` correction (Mime's SVRG term, FedSMOO's
    perturbed point, Entropy-SGD's Langevin loop need the step's own minibatch ζ)."""

    ids: Tensor  # [c] the block's client ids
    zeta: Tensor | None  # [c, draws, B] this step's minibatch indices (None: full local data)
    k: int  # the local step, 0 .. K − 1
    # [c] the loss local_sgd records for the step (g's loss at y on ζ_0); a correction that
    # evaluates elsewhere may overwrite it in place
    loss: Tensor


def sees_step(fn: Correction) -> Correction:
    """Mark a `local_sgd` correction that takes the step's `Step` as a fourth argument."""
    fn.sees_step = True  # type: ignore[attr-defined]
    return fn


class Env(NamedTuple):
    """Read-only for a run: the task, compressors and shared hyperparameters."""

    task: Task
    uplink: Compressor  # client -> server, as configured (without error feedback)
    downlink: Compressor  # server -> clients
    participation: float  # fraction of the n clients sampled each round
    batch_size: int | str  # minibatch per local step, or "full"
    error_feedback: bool = False  # EF14 around the uplink where the method sends model updates
    # the [network] model (fedbench.network.Network) when the grid has one: asynchronous
    # methods run their simulated clock on it
    network: Any = None
    # storage of persistent per-client rows ([n, d] control variates, estimators, ...):
    # float16 / bfloat16 halve their memory; computation stays float32 (see client_rows)
    state_dtype: torch.dtype = torch.float32
    # client sampling (fedbench.cohort): "uniform" (without replacement), "poisson" (each
    # client independently with probability `participation`), "importance", "power_of_choice"
    # (the last two only in the methods that implement them); candidates of power-of-choice
    sampling: str = "uniform"
    sampling_candidates: int = 0
    # the uplink of model updates when it is not error_feedback(uplink): the [privacy] wrapper
    # (fedbench.privacy.dp.attach) with error feedback inside, before the noise
    update_uplink: Compressor | None = None
    # local data ordering (fedbench.curriculum, issue 16): "random" = uniform minibatches;
    # "curriculum" / "anti": each client's samples sorted by loss under its start model and
    # paced over the K local steps by (pacing function, a, b); rounds T of the run (the client
    # curriculum paces over rounds)
    ordering: str = "random"
    pacing: tuple[str, float, float] = ("linear", 0.8, 0.2)
    rounds: int = 0

    @property
    def n(self) -> int:
        return self.task.n

    @property
    def d(self) -> int:
        return self.task.d

    @property
    def device(self) -> torch.device:
        return self.task.device


class RoundLog(NamedTuple):
    bits_up: Tensor  # [k] exact bits of every uplink message this round (usually one per client)
    bits_down: Tensor  # [k] exact bits every receiving client got this round
    participants: int
    extra: dict[str, float]
    # simulated seconds at the end of this round from the method's own clock (asynchronous
    # methods); None: the runner charges a synchronous round (fedbench.network)
    sim_time_s: float | None = None
    # [n] local steps each worker ran this round (0 = idle); None: the round's cohort
    # (sample_cohort) ran the configured local_steps
    steps: Tensor | None = None


class Algorithm(NamedTuple):
    init: Callable[[Tensor, Env, RoundRng], State]  # (x0 [d], env, rng) -> state
    round: Callable[[State, Env, RoundRng], tuple[State, RoundLog]]
    params: Callable[[State], Tensor]  # the model to evaluate [d]
    # extra metrics at evaluation rounds beyond those of params(state), e.g. personalised
    # accuracy of per-client models: (state, env) -> {name: value}
    metrics: Callable[[State, Env], dict[str, float]] | None = None


def needs_minibatches(
    name: str, why: str
) -> Callable[[Mapping[str, Mapping[str, Any]]], list[str]]:
    """A `Component.check` refusing `batch_size = "full"` before anything runs, for a method
    that draws minibatches (`why` says what it draws them for)."""

    def check(cfg: Mapping[str, Mapping[str, Any]]) -> list[str]:
        if cfg["algorithm"].get("batch_size") != "full":
            return []
        return [f'algorithm.batch_size = "full": {name} {why}; allowed: a whole number of samples']

    return check


def update_compressor(env: Env) -> Compressor:
    """The uplink compressor for model updates: wrapped in error feedback when the grid asks.

    Methods that track a target through compressed differences (EF21, SCAFFOLD's control
    variates) use `env.uplink` itself: their difference already carries what was not sent, so
    error feedback on top would count it twice.
    """
    if env.update_uplink is not None:
        return env.update_uplink
    return error_feedback(env.uplink) if env.error_feedback else env.uplink


def gradients(env: Env, w: Tensor, ids: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """One stochastic (or full, for batch_size = "full") gradient per row: loss [m], g [m, d]."""
    if env.batch_size == "full":
        return env.task.loss_grad(w, ids)
    idx = env.task.batch_indices(ids, 1, int(env.batch_size), gen)[:, 0]
    return env.task.loss_grad(w, ids, idx)


def local_sgd(
    env: Env,
    y0: Tensor,
    ids: Tensor,
    steps: int,
    lr: float,
    gen: torch.Generator,
    correction: Correction | None = None,
    sam_rho: float | None = None,
    draws: int = 1,
) -> tuple[Tensor, Tensor]:
    """K local SGD steps for the whole cohort: y ← y − lr·(g_i(y) [+ correction]).

    With `sam_rho = ρ` each step is a SAM step (Foret et al., ICLR 2021): the gradient is taken
    at the perturbed point y + ρ g/‖g‖ (row-wise norm, same minibatch) before the correction.
    A correction marked `sees_step` also gets the step's minibatches ζ (`Step`): `draws`
    minibatches per step, g taken on the first (Entropy-SGD's Langevin loop uses L of them).

    `y0` is `[d]` (everyone starts from the broadcast model) or `[m, d]`. Clients run in blocks
    (`Task.block_size`): each block does all K steps as batched passes over its clients while
    their models are still in cache; on a CPU job with several threads the blocks run side by
    side, one thread each, when the correction is `rowwise` (fedbench.parallel). Minibatches
    are drawn for the whole cohort up front (`local_batches`, K·draws of them), so the result
    depends on neither the block size nor the threads. Returns the final models `[m, d]` and
    each client's mean minibatch loss over the steps `[m]`.
    """
    m = ids.numel()
    y = torch.empty(m, y0.shape[-1], dtype=y0.dtype, device=y0.device)  # each block fills its rows
    full = env.batch_size == "full"
    idx = None if full else local_batches(env, y0, ids, steps * draws, gen)
    width = int(env.task.data.counts[ids].max()) if idx is None else idx.shape[2] * draws
    block = block_rows(env, m, width)
    loss_sum = torch.zeros(m, device=y.device)
    with_step = bool(getattr(correction, "sees_step", False))
    fused = idx is not None and correction is None and sam_rho is None and plain_loss(env.task)
    wt = None  # the fused step's per-sample weights: each minibatch's mean, made once  # [m, B]
    if fused and idx is not None:
        wt = torch.full(idx.shape[::2], 1.0 / idx.shape[2], device=y.device)
    # a hand-batched model's first fused step starts from y0 itself, shared by every client of
    # a block (its weights stay in cache), instead of from a copy of y0 in each row
    fresh = fused and steps > 0 and steps_from_start(env.task.model)

    def run_block(s: int) -> None:  # one batched computation over clients s, s+1, ...
        rows = slice(s, min(m, s + block))
        yb = y[rows]  # a view: updated in place
        if not fresh:  # (else the first fused step reads y0 and writes the block's rows)
            yb.copy_(y0 if y0.dim() == 1 else y0[rows])  # while the block's rows are in cache
        if env.task.model.autograd_free:  # as every `fresh` model is
            steps_of(yb, rows)
        else:  # the block steps its own copy, written back at the end: autograd's version
            # counter belongs to a storage, so in-place steps on a view of the shared `y` in one
            # block thread would invalidate the graph another block thread saved
            own = yb.clone()
            steps_of(own, rows)
            yb.copy_(own)

    def steps_of(yb: Tensor, rows: slice) -> None:  # the K steps of one block's rows, in place
        if fused:  # plain SGD: the model steps in place, no gradient buffer
            assert idx is not None and wt is not None
            start = (y0 if y0.dim() == 1 else y0[rows]) if fresh else None
            for k in range(steps):
                at = start if k == 0 else None
                loss_sum[rows] += sgd_step(env.task, yb, idx[rows, k * draws], wt[rows], lr, at)
            return
        i = ids[rows]
        g = torch.empty_like(yb)
        for k in range(steps):
            zeta = None if idx is None else idx[rows, k * draws : (k + 1) * draws]
            bidx = None if zeta is None else zeta[:, 0]
            loss, g = env.task.loss_grad(yb, i, bidx, out=g)
            if sam_rho is not None:
                _, g = env.task.loss_grad(sam_point(yb, g, sam_rho), i, bidx, out=g)
            if correction is not None and with_step:
                g = correction(yb, g, rows, Step(i, zeta, k, loss))
            elif correction is not None:
                g = correction(yb, g, rows)
            loss_sum[rows] += loss
            yb.add_(g, alpha=-lr)

    starts = range(0, m, block)
    side_by_side = is_rowwise(correction) and env.task.model.thread_safe
    threads = block_threads(y.device, len(starts)) if side_by_side else 1
    for_each_block(run_block, starts, threads)
    return y, loss_sum / steps


def plain_loss(task: Task) -> bool:
    """Whether the task's loss is the model's alone (no regulariser term), so that a step
    may go through `Model.sgd_step`."""
    return task.reg == "none" or task.lam == 0.0


def steps_from_start(model: Model) -> bool:
    """Whether the model's fused step takes a `start` point (`Model.sgd_step`) and runs its
    pass in place of the caller's copy: hand-batched models (a plugin's own `sgd_step` with
    the older five-argument signature gets the copy)."""
    return model.autograd_free and "start" in inspect.signature(model.sgd_step).parameters


def sgd_step(
    task: Task, w: Tensor, bidx: Tensor, wt: Tensor, lr: float, start: Tensor | None = None
) -> Tensor:
    """`w ← w − lr·∇f_i(w)` in place on minibatches `bidx [m, B]` with weights `wt [m, B]`;
    the loss `[m]` at the old rows. The same numbers as `Task.loss_grad` then the step, in
    the same chunks of clients (for a task whose loss is `plain_loss`). With `start` (`[d]`,
    or `[m, d]`) the step is taken from there and written into `w` (`Model.sgd_step`): the
    numbers of copying `start` into `w` first."""
    m, x, y = w.shape[0], task.data.x, task.data.y
    step = task.chunk_size(bidx.shape[1])
    if step >= m:
        return task.model.sgd_step(w, take(x, bidx), y[bidx], wt, lr, **from_(start))
    loss = torch.empty(m, device=w.device)
    for s in range(0, m, step):
        e = min(m, s + step)
        w0 = start[s:e] if start is not None and start.dim() == 2 else start  # [d] is shared
        xb, yb = take(x, bidx[s:e]), y[bidx[s:e]]
        loss[s:e] = task.model.sgd_step(w[s:e], xb, yb, wt[s:e], lr, **from_(w0))
    return loss


def from_(start: Tensor | None) -> dict[str, Tensor]:
    """`sgd_step`'s keyword for a start point: none when there is none (any model's step)."""
    return {} if start is None else {"start": start}


def step_grad(env: Env, w: Tensor, step: Step, j: int = 0) -> tuple[Tensor, Tensor]:
    """Loss `[c]` and gradient `[c, d]` at `w [c, d]` on the step's j-th minibatch (or the
    clients' full local data)."""
    return env.task.loss_grad(w, step.ids, None if step.zeta is None else step.zeta[:, j])


def block_rows(env: Env, m: int, width: int) -> int:
    """Clients per block of local training for m clients with `width` samples a step: as many
    blocks as `Task.block_size` asks for, of equal sizes (balanced over block threads)."""
    return -(-m // -(-m // env.task.block_size(width)))


def local_batches(env: Env, y0: Tensor, ids: Tensor, steps: int, gen: torch.Generator) -> Tensor:
    """Minibatch indices `[m, steps, B]` of local training: uniform (`ordering = "random"`), or
    ordered by loss under the start model `y0` and paced (fedbench.curriculum)."""
    if env.ordering == "random":
        return env.task.batch_indices(ids, steps, int(env.batch_size), gen)
    kind, a, b = env.pacing
    B = int(env.batch_size)
    return curriculum.ordered_batch_indices(
        env.task, y0, ids, steps, B, gen, env.ordering, kind, a, b
    )


def sam_point(y: Tensor, g: Tensor, rho: float) -> Tensor:
    """SAM's ascent point y + ρ g/‖g‖ for every row `[c, d]` (each client's own norm)."""
    return y + g * (rho / (g.norm(dim=1, keepdim=True) + 1e-12))


def client_rows(env: Env) -> Tensor:
    """Zeroed persistent per-client state `[n, d]` in `env.state_dtype`: on the device when it
    fits the task's memory budget, else in host memory (rows are gathered per cohort), mapped
    zero pages on the host from LAZY_ZERO_BYTES up (fedbench.rows)."""
    return state_rows((env.n, env.d), env.state_dtype, env.device, env.task.memory_bytes)


class Broadcast(NamedTuple):
    x_hat: Tensor  # [d] the model every client holds
    state: Any  # downlink compressor state


def broadcast_init(env: Env, x0: Tensor) -> Broadcast:
    return Broadcast(x0.clone(), env.downlink.init(1, env.d, env.device))


def broadcast(env: Env, x: Tensor, b: Broadcast, gen: torch.Generator) -> tuple[Broadcast, int]:
    """Send the server model down: clients track x̂ ← x̂ + C(x − x̂) (exact: x̂ = x).

    Returns the new broadcast state and the bits each receiving client gets.
    """
    if env.downlink.kind == "exact":
        msg, _ = env.downlink.compress(x.unsqueeze(0), _ZERO, b.state, gen)
        return Broadcast(x, b.state), int(msg.bits[0])
    msg, state = env.downlink.compress((x - b.x_hat).unsqueeze(0), _ZERO, b.state, gen)
    return Broadcast(b.x_hat + msg.value[0], state), int(msg.bits[0])


_ZERO = torch.zeros(1, dtype=torch.int64)


def average_updates(
    env: Env,
    opt: ServerOpt,
    x: Tensor,
    opt_state: Any,
    up_state: Any,
    delta: Tensor,
    ids: Tensor,
    rng: RoundRng,
) -> tuple[Tensor, Any, Compressed, Any]:
    """The FedAvg-style round tail: each client sends its update Δ_i (`delta [m, d]`) through
    the update uplink (`update_compressor`: error feedback, the privacy wrapper), the server
    averages what it decodes and takes its optimizer step on the pseudo-gradient
    −mean_i C(Δ_i) from `x [d]`. Returns the new model `[d]` and optimizer state, the messages
    (`.bits` for `cohort_log`) and the uplink state."""
    msg, up = update_compressor(env).compress(delta, ids, up_state, rng(seeding.UPLINK))
    x_new, opt_new = opt.update(x, -msg.value.mean(0), opt_state)
    return x_new, opt_new, msg, up


def cohort_log(env: Env, bits_up: Tensor, m: int, bits_down: int, loss: Tensor) -> RoundLog:
    """The log of a round in which m participants each received `bits_down` bits: their uplink
    messages' bits `[k]` and their mean local loss (`loss` `[m]`) as `local_loss`."""
    return RoundLog(
        bits_up, bits_vector(m, bits_down, env.device), m, {"local_loss": float(loss.mean())}
    )


def bits_vector(m: int, bits: int, device: torch.device) -> Tensor:
    """`[m]` int64: the same message size for each of m receivers."""
    return torch.full((m,), bits, dtype=torch.int64, device=device)


def with_queries(
    log: RoundLog, ids: Tensor, env: Env, steps: int, up: Tensor, cand: Tensor, model_bits: int
) -> RoundLog:
    """A round log plus a client selection's own messages (power-of-choice, client curricula:
    `up [k]` bits of reports; the model, `model_bits`, to every candidate `cand [k]` not
    chosen) and the chosen workers' local steps (so the simulated clock charges who trained).
    The query phase's bits and seconds go to `extra` (`query_s`: the clock charges that phase
    before the training phase)."""
    down = (cand.numel() - ids.numel()) * model_bits
    ran = torch.zeros(env.n, dtype=torch.int64)
    ran[ids.cpu()] = steps
    extra_down = torch.tensor([down], dtype=torch.int64, device=log.bits_down.device)
    chosen_down = float(log.bits_down.sum()) / max(1, log.bits_down.numel())  # the model
    extra = {
        **log.extra,
        "query_bits_up": float(up.sum()),
        "query_bits_down": float(down) + chosen_down * ids.numel(),
        "candidates": float(up.numel()),
        "query_s": network.query_seconds(env.network, cand, float(model_bits)),
    }
    return log._replace(
        bits_up=torch.cat([log.bits_up.to(torch.int64), up]),
        bits_down=torch.cat([log.bits_down, extra_down]) if down else log.bits_down,
        steps=ran,
        extra=extra,
    )
