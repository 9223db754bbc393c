"""Conformance checks of a registered algorithm or compressor, built-in or plugin
(`fedbench check NAME`): the properties every method of the benchmark must have, one line
each, so a plugin author learns what is wrong before a grid runs it.

An algorithm: deterministic per seed; its training loss decreases on a small convex task
(full gradients, its default parameters); it runs with every compressor its `requires`
admits; every uplink message is counted (the logged uplink bits of a round are at least the
bits of every message its uplink compressor produced, and more than 0 when it produced
any); every downlink message is counted, with a compressed downlink where the method admits
one (`DOWNLINKS`, of the kinds its `extra["downlink"]` declares): `bits_down` holds what each
receiving client got (DESIGN §3), so every receiving client's entry is at least the bits of
the round's broadcast (a one-row message: b bits to k clients cost at least b·k), a message
of a row per receiver (DiPaCo's paths) is in the log at least once, and a round whose
messages cost bits logs more than 0; a method that sends nothing through its downlink
compressor (gossip, or a downlink of its own, declared exact) has nothing to miss; its state
survives a checkpoint round trip (fedbench.checkpoint); the special cases it
declares in `extra["reduces_to"] = (other, params)` hold bit for bit. A compressor:
deterministic per generator seed, exact-sized bits `[m]` > 0, the value's shape, its kind's
bound on one draw where it is deterministic (contractive), and FedAvg runs with it.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fedbench import checkpoint, runner
from fedbench import grid as gridlib
from fedbench.algorithms import ALGORITHMS
from fedbench.compressors import COMPRESSORS, Compressor, compressor_kind
from fedbench.grid.resolution import downlink_kinds
from fedbench.seeding import RoundRng, generator

ROUNDS = 6
# small tasks tried in order until one resolves for the method (convex first)
TASKS: tuple[dict[str, Any], ...] = (
    {"dataset": "digits", "model": "logreg", "clients": 4, "reg": "l2", "lam": 0.01},
    {"dataset": "digits", "model": "mlp", "clients": 4, "hidden": [8]},
    # least squares: the theory steps of methods that need a linear model's constants
    {"dataset": "quadratic", "model": "linreg", "clients": 4},
)
# full local batches first (no sampling noise), then minibatches for methods that draw them
BATCHES: tuple[int | str, ...] = ("full", 8)
# the downlink of the downlink-bits check, the first whose kind the method admits
# (`extra["downlink"]`: EF21-BC a contractive one, asynchronous and gossip methods the exact
# model only): compressed ones first
DOWNLINKS: tuple[str, ...] = ("topk", "randk", "identity")


@dataclass(frozen=True)
class Result:
    name: str  # the property
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name}: {self.detail}"


def _job(algorithm: str, params: Mapping[str, Any], up: str = "identity",
         up_params: Mapping[str, Any] | None = None, down: str = "identity",
         **algo: Any) -> gridlib.Job:  # fmt: skip
    """The first small task and batch size (`TASKS` × `BATCHES`, in order) on which the
    method's config resolves, validation's checks of what it needs included."""
    errors: list[str] = []
    for task, batch in itertools.product(TASKS, BATCHES):
        cfg = {
            "experiment": {"rounds": ROUNDS},
            "task": dict(task),
            "algorithm": {"name": algorithm, "batch_size": batch, **params, **algo},
            "compressor": {"name": up, **(up_params or {})},
            "downlink": {"name": down},
        }
        try:
            resolved, _ = gridlib.resolve(cfg)
        except gridlib.GridError as e:
            errors += e.problems
            continue
        return gridlib.Job(gridlib.job_key(resolved, 0), 0, resolved)
    raise gridlib.GridError(errors[:1])


def _run(job: gridlib.Job, rounds: int = ROUNDS, seed: int = 0) -> tuple[Any, list[Any], Any, Any]:
    """(state, logs, algorithm, task) after `rounds` rounds."""
    task, env, alg = runner.build(job, torch.device("cpu"))
    with runner.rounds_mode(task.model, job.algorithm):
        state = alg.init(task.init_params(generator(seed, 0, "init")), env, RoundRng(seed, 0))
        logs = []
        for t in range(1, rounds + 1):
            state, log = alg.round(state, env, RoundRng(seed, t))
            logs.append(log)
    return state, logs, alg, task


def _same(a: Any, b: Any) -> bool:
    return bool(torch.equal(a, b)) if isinstance(a, torch.Tensor) else a == b


def check_algorithm(name: str, full: bool = True) -> Iterator[Result]:
    """The properties of algorithm `name`; `full` = False tries one compressor per kind."""
    comp = ALGORITHMS[name]
    try:
        job = _job(name, {})
        s1, logs1, alg, task = _run(job)
    except Exception as e:
        yield Result("builds and runs", False, _why(e))
        return
    yield Result("builds and runs", True, f"{ROUNDS} rounds on {job.dataset}/{job.model}")
    s2, logs2, _, _ = _run(job)
    same = _same(alg.params(s1), alg.params(s2)) and all(
        _same(a.bits_up, b.bits_up) for a, b in zip(logs1, logs2, strict=True)
    )
    yield Result("deterministic per seed", same, "same seed, same model and bits" if same
                 else "two runs with seed 0 differ")  # fmt: skip
    x0 = task.init_params(generator(0, 0, "init"))
    before, after = task.train_loss(x0), task.train_loss(alg.params(s1))
    yield Result("loss decreases", after < before, f"train loss {before:.4g} -> {after:.4g}")
    yield _bits(job)
    yield _downlink_bits(name)
    yield _checkpoint(job)
    yield from _compressors(name, comp.requires, full)
    reduces = comp.extra.get("reduces_to")
    if reduces:
        yield _reduces(name, *reduces)


def _why(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"


def _counting(compressor: Compressor, seen: list[Tensor]) -> Compressor:
    """`compressor` that also appends the bits `[r]` of each message it produces to `seen`."""

    def compress(x: Any, ids: Any, state: Any, gen: Any) -> Any:
        msg, state = compressor.compress(x, ids, state, gen)
        seen.append(msg.bits.detach().to("cpu", torch.int64).reshape(-1))
        return msg, state

    return compressor._replace(compress=compress)


def _counted_rounds(job: gridlib.Job, link: str) -> list[tuple[Any, list[Tensor]]]:
    """Each round's log with the bits `[r]` of every message the `link` compressor ("uplink"
    or "downlink" of the Env) produced in that round (those of `init` are left out)."""
    seen: list[Tensor] = []
    task, env, alg = runner.build(job, torch.device("cpu"))
    counted = _counting(getattr(env, link), seen)
    env = env._replace(uplink=counted) if link == "uplink" else env._replace(downlink=counted)
    out = []
    with runner.rounds_mode(task.model, job.algorithm):
        state = alg.init(task.init_params(generator(0, 0, "init")), env, RoundRng(0, 0))
        for t in range(1, ROUNDS + 1):
            mark = len(seen)
            state, log = alg.round(state, env, RoundRng(0, t))
            out.append((log, seen[mark:]))
    return out


def _bits(job: gridlib.Job) -> Result:
    """Logged uplink bits ≥ the bits of the uplink messages the compressor produced."""
    per_round: list[int] = []
    for t, (log, msgs) in enumerate(_counted_rounds(job, "uplink"), 1):
        sent, logged = sum(int(b.sum()) for b in msgs), int(log.bits_up.sum())
        # a 0 logged for a client that sent nothing this round is right (one-shot merging,
        # idle gossip nodes); a round whose messages cost bits must log some
        if logged < sent or (sent > 0 and logged <= 0):
            return Result("bits counted", False, f"round {t}: logged {logged} uplink bits "
                          f"for messages of {sent} bits")  # fmt: skip
        per_round.append(logged)
    return Result("bits counted", True, f"uplink bits per round {per_round[-1]} ≥ messages")


def _downlink_bits(name: str) -> Result:
    """Logged downlink bits cover the downlink messages (`_downlink_short`), run with the
    first of `DOWNLINKS` the method admits (`downlink_kinds`)."""
    kinds = downlink_kinds(ALGORITHMS[name])
    fits = [d for d in DOWNLINKS if kinds is None or compressor_kind(d, {}) in kinds]
    if not fits:
        return Result("downlink bits counted", False, f"admits no downlink of {DOWNLINKS}")
    down = fits[0]
    try:
        rounds = _counted_rounds(_job(name, {}, down=down), "downlink")
    except Exception as e:
        return Result("downlink bits counted", False, f"{down} downlink: {_why(e)}")
    for t, (log, msgs) in enumerate(rounds, 1):
        short = _downlink_short(msgs, log.bits_down.to("cpu", torch.int64).reshape(-1))
        if short:
            return Result("downlink bits counted", False, f"{down} downlink, round {t}: "
                          + short)  # fmt: skip
    admits = f" (admits {'/'.join(kinds)} only)" if kinds is not None else ""
    if not any(msgs for _, msgs in rounds):  # gossip, or a method sending its model dense
        logged = sum(int(log.bits_down.sum()) for log, _ in rounds)
        if compressor_kind(down, {}) != "exact" and logged > 0:  # a silently ignored [downlink]
            return Result("downlink bits counted", False, f"a {down} downlink was admitted but "
                          f"nothing went through it while {logged} downlink bits were logged: "
                          "a method that sends its model its own way declares extra["
                          '"downlink"] = "exact" (and "downlink_why")')  # fmt: skip
        return Result("downlink bits counted", True, f"{down} downlink{admits}: no "
                      "messages through the downlink compressor")  # fmt: skip
    log, msgs = rounds[-1]
    sent, k = sum(int(b.sum()) for b in msgs), log.bits_down.numel()
    return Result("downlink bits counted", True, f"{down} downlink{admits}: round "
                  f"{ROUNDS} logs {int(log.bits_down.sum())} bits for {k} receivers of "
                  f"messages of {sent} bits")  # fmt: skip


def _downlink_short(msgs: list[Tensor], logged: Tensor) -> str:
    """What one round's logged downlink bits (`logged` `[k]`, one entry per receiving client,
    DESIGN §3) miss of its downlink messages (`msgs`: the bits `[r]` of each), "" when
    nothing. A one-row message is a broadcast, which every receiving client gets: each entry
    holds at least its b bits, b·k in all. A message of several rows goes row by row to
    receivers: the log holds at least its bits. Several one-row messages in a round count as
    the largest, since a method may ask its downlink for a size without sending (the
    asynchronous methods' `model_bits`)."""
    rows = sum(int(b.sum()) for b in msgs if b.numel() > 1)
    b = max((int(b.sum()) for b in msgs if b.numel() == 1), default=0)
    k, total = logged.numel(), int(logged.sum())
    if rows + b > 0 and total <= 0:
        return f"logged {total} downlink bits for messages of {rows + b} bits"
    least = int(logged.min()) if k else 0
    if b > 0 and least < b:
        return (f"a receiving client logged {least} downlink bits for a broadcast of {b} bits "
                f"({k} receivers: at least {b * k} in all, logged {total})")  # fmt: skip
    if total < rows + b * k:
        return f"logged {total} downlink bits for messages of {rows + b * k} bits to {k} receivers"
    return ""


def _checkpoint(job: gridlib.Job) -> Result:
    """Round k's state saved and loaded, then more rounds: the same model as without."""
    task, env, alg = runner.build(job, torch.device("cpu"))
    k = ROUNDS // 2
    with runner.rounds_mode(task.model, job.algorithm), tempfile.TemporaryDirectory() as tmp:
        s = alg.init(task.init_params(generator(0, 0, "init")), env, RoundRng(0, 0))
        for t in range(1, k + 1):
            s, _ = alg.round(s, env, RoundRng(0, t))
        try:
            checkpoint.save(Path(tmp), job.key, checkpoint.Checkpoint(k, s, 0.0, 0.0, 0.0, {}))
            loaded = checkpoint.load(Path(tmp), job.key, torch.device("cpu"))
        except Exception as e:
            return Result("checkpoint round trip", False, _why(e))
        if loaded is None:
            return Result("checkpoint round trip", False, "the saved state does not load back")
        a, b = s, loaded.state
        for t in range(k + 1, ROUNDS + 1):
            a, _ = alg.round(a, env, RoundRng(0, t))
            b, _ = alg.round(b, env, RoundRng(0, t))
    ok = _same(alg.params(a), alg.params(b))
    return Result("checkpoint round trip", ok, f"resumed at round {k}: "
                  + ("same model" if ok else "a different model"))  # fmt: skip


def _compressors(name: str, requires: str, full: bool) -> Iterator[Result]:
    admitted = [c for c in COMPRESSORS
                if requires == "any" or compressor_kind(c, {}) in ("exact", requires)]  # fmt: skip
    if not full:  # one per kind
        admitted = list({compressor_kind(c, {}): c for c in admitted}.values())
    bad = []
    for c in admitted:
        try:
            s, _, alg, _ = _run(_job(name, {}, c), rounds=2)
            if not bool(torch.isfinite(alg.params(s)).all()):
                bad.append(f"{c} (non-finite model)")
        except Exception as e:
            bad.append(f"{c} ({_why(e)})")
    yield Result("runs with every admitted compressor", not bad,
                 "; ".join(bad) if bad else f"{len(admitted)}: {', '.join(admitted)}")  # fmt: skip


def _reduces(name: str, other: str, params: Mapping[str, Any]) -> Result:
    """Equal bit for bit to `other` at `params`, with minibatches, partial participation and
    a compressor with error feedback (the setting of tests/test_algorithms.py)."""
    shared = {k: v for k, v in ALGORITHMS[name].resolve({}).items()
              if k in ALGORITHMS[other].params}  # fmt: skip
    setting: dict[str, Any] = {"batch_size": 4, "participation": 0.5}
    up, up_params = "topk", {"ratio": 0.3, "error_feedback": True}
    try:
        a = _run(_job(name, {**shared, **params}, up, up_params, **setting))
        b = _run(_job(other, shared, up, up_params, **setting))
    except Exception as e:
        return Result(f"reduces to {other}", False, _why(e))
    ok = _same(a[2].params(a[0]), b[2].params(b[0]))
    return Result(f"reduces to {other} at {dict(params)}", ok,
                  "equal bit for bit" if ok else "the models differ")  # fmt: skip


def check_compressor(name: str) -> Iterator[Result]:
    comp = COMPRESSORS[name]
    d, m = 50, 3
    try:
        c = comp.build(d, values_only=False, **comp.resolve({}))
    except Exception as e:
        yield Result("builds", False, _why(e))
        return
    x = torch.randn(m, d, generator=torch.Generator().manual_seed(0))
    ids = torch.arange(m)
    outs = []
    for _ in range(2):
        state = c.init(m, d, torch.device("cpu"))
        outs.append(c.compress(x.clone(), ids, state, torch.Generator().manual_seed(1))[0])
    same = torch.equal(outs[0].value, outs[1].value) and torch.equal(outs[0].bits, outs[1].bits)
    yield Result("deterministic per seed", same, "same generator seed, same message"
                 if same else "two draws with one seed differ")  # fmt: skip
    msg = outs[0]
    shape_ok = tuple(msg.value.shape) == (m, d) and tuple(msg.bits.shape) == (m,)
    bits_ok = shape_ok and msg.bits.dtype == torch.int64 and bool((msg.bits > 0).all())
    yield Result("bits counted", bits_ok, f"bits {msg.bits.tolist()} for [{m}, {d}] messages")
    if c.kind == "contractive":
        err = float((msg.value - x).square().sum() / x.square().sum())
        yield Result("contractive", err <= 1.0 + 1e-6, f"‖C(x) − x‖²/‖x‖² = {err:.3f} ≤ 1")
    try:
        s, _, alg, _ = _run(_job("fedavg", {}, name), rounds=2)
        ok = bool(torch.isfinite(alg.params(s)).all())
        yield Result("runs with fedavg", ok, "finite model" if ok else "non-finite model")
    except Exception as e:
        yield Result("runs with fedavg", False, _why(e))


def check(name: str, full: bool = True) -> list[Result]:
    """Every property of the algorithm or compressor `name` (an algorithm if both)."""
    if name in ALGORITHMS:
        return list(check_algorithm(name, full))
    if name in COMPRESSORS:
        return list(check_compressor(name))
    raise KeyError(name)
