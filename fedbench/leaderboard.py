"""The tuned leaderboard of the standard suite (issue 25 item 4): `make leaderboard`.

    python -m fedbench.leaderboard experiments/suite/suite.toml \
        --db results/leaderboard.db --out results/leaderboard.md

For every task of the suite file: `fedbench tune` (fedbench.tune.tune, in this process) gives
each method of the task's grid the same budget (`trials` complete + pruned trials over the
same `space`, one seed, chosen on a validation metric), then every method runs at its chosen
settings with the suite's `seeds` (the tuning run is seed 0 of them: same job key, read back,
not rerun). The markdown is computed from the database alone: per task, methods ranked by the
test metric at an uplink bits budget and by the uplink bits to reach a target.

Why one module rather than a shell loop: the seeded runs land in the tuned grid's own
experiment (so seed 0 is the tuning run and is not run twice), while `tune --write`'s grid
runs as the experiment `<name>-best`; and the table needs the runs' job keys, which only the
grid code can compute.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomllib

if TYPE_CHECKING:
    import pandas as pd

    from fedbench.tune import Cell

Say = Callable[[str], None]
METRICS = ("test_accuracy", "test_loss", "test_perplexity")
TASK_KEYS = {"name", "grid", "title", "by", "metric", "target", "bits_budget", "env"}
SUITE_KEYS = {"space", "trials", "seeds", "pruner", "notes"}


class LeaderboardError(ValueError):
    """A suite file or request that cannot run: one line naming the file, key and allowed."""


# -- the suite file ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    name: str
    grid: Path
    title: str
    by: str  # validation metric the tuning maximises / minimises
    metric: str  # test metric of the table
    target: float  # accuracy >= target, loss <= target
    bits_budget: float | None  # uplink bits per client; None: the least any method spends
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def higher_better(self) -> bool:
        return self.metric.endswith("accuracy")


@dataclass(frozen=True)
class Suite:
    path: Path
    space: tuple[str, ...]
    trials: int
    seeds: tuple[int, ...]
    pruner: str
    tasks: tuple[Task, ...]
    notes: tuple[str, ...] = ()


def _need(table: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in table:
        raise LeaderboardError(f"{where}: missing key {key!r}")
    value = table[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise LeaderboardError(f"{where}: {key} = {value!r}: allowed: {_kind_name(kind)}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(
        {
            "str": "a string",
            "int": "an integer",
            "float": "a number",
            "list": "a list",
            "dict": "a table",
        }[k.__name__]
        for k in kinds
    )


def load_suite(path: Path) -> Suite:
    """The suite file, checked; grid paths are relative to the suite file's folder."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise LeaderboardError(f"{path}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise LeaderboardError(f"{path}: not valid TOML: {e}") from None
    head = doc.get("suite")
    if not isinstance(head, dict):
        raise LeaderboardError(f"{path}: missing table [suite]")
    if unknown := set(head) - SUITE_KEYS:
        raise LeaderboardError(
            f"{path}: [suite] unknown key(s) {sorted(unknown)}; allowed: {sorted(SUITE_KEYS)}"
        )
    where = f"{path} [suite]"
    space = _need(head, "space", list, where)
    trials = _need(head, "trials", int, where)
    seeds = _need(head, "seeds", list, where)
    if not space or not all(isinstance(s, str) for s in space):
        raise LeaderboardError(f"{where}: space: allowed: a non-empty list of strings")
    if trials < 1:
        raise LeaderboardError(f"{where}: trials = {trials}: allowed: an integer >= 1")
    if not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds) or 0 not in seeds:
        raise LeaderboardError(
            f"{where}: seeds = {seeds}: allowed: integers >= 0, 0 among them "
            "(seed 0 is the tuning run)"
        )
    pruner = head.get("pruner", "median")
    notes = head.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        raise LeaderboardError(f"{where}: notes: allowed: a list of strings")
    raw_tasks = doc.get("task")
    if not isinstance(raw_tasks, list) or not raw_tasks:
        raise LeaderboardError(f"{path}: no [[task]] tables")
    tasks = [_task(path, i, t) for i, t in enumerate(raw_tasks)]
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise LeaderboardError(f"{path}: [[task]] names must differ: {names}")
    return Suite(
        path,
        tuple(space),
        trials,
        tuple(sorted(set(seeds))),
        str(pruner),
        tuple(tasks),
        tuple(notes),
    )


def _task(path: Path, i: int, t: Any) -> Task:
    where = f"{path} [[task]] #{i + 1}"
    if not isinstance(t, dict):
        raise LeaderboardError(f"{where}: allowed: a table")
    if unknown := set(t) - TASK_KEYS:
        raise LeaderboardError(
            f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(TASK_KEYS)}"
        )
    metric = _need(t, "metric", str, where)
    if metric not in METRICS:
        raise LeaderboardError(f"{where}: metric = {metric!r}: allowed: {', '.join(METRICS)}")
    budget = t.get("bits_budget")
    if budget is not None and not (isinstance(budget, (int, float)) and budget > 0):
        raise LeaderboardError(f"{where}: bits_budget = {budget!r}: allowed: a number > 0")
    env = t.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise LeaderboardError(f"{where}: env: allowed: a table of strings")
    return Task(
        name=_need(t, "name", str, where),
        grid=path.parent / _need(t, "grid", str, where),
        title=str(t.get("title", "")),
        by=_need(t, "by", str, where),
        metric=metric,
        target=float(_need(t, "target", (int, float), where)),
        bits_budget=None if budget is None else float(budget),
        env=dict(env),
    )


# -- running -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """One tuned cell: its display name, chosen values and the seeded runs' job keys."""

    name: str
    chosen: Mapping[str, Any]
    keys: tuple[str, ...]
    trials: str = ""  # "6 complete + 0 pruned"


@dataclass(frozen=True)
class TaskRun:
    task: Task
    methods: tuple[Method, ...]
    wall_s: float


@contextlib.contextmanager
def _environ(env: Mapping[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def method_name(config: Mapping[str, Mapping[str, Any]]) -> str:
    """ "fedavg", "fedavg (server adam)", "ef21 + topk": algorithm, non-SGD server optimiser,
    non-identity uplink compressor."""
    alg = config["algorithm"]
    name = str(alg["name"])
    if alg.get("server_opt", "sgd") != "sgd":
        name += f" (server {alg['server_opt']})"
    comp = config.get("compressor", {}).get("name", "identity")
    return name if comp == "identity" else f"{name} + {comp}"


def _names(cells: Sequence[Cell]) -> list[str]:
    """Short names, or the tune labels where two short names collide."""
    short = [method_name(c.config) for c in cells]
    return [s if short.count(s) == 1 else c.label for s, c in zip(short, cells, strict=True)]


def run_task(suite: Suite, task: Task, db: str, best_dir: Path | None, say: Say) -> TaskRun:
    """Tune every method of the task's grid, then run each at its choice with every seed."""
    import optuna

    from fedbench import grid as gridlib
    from fedbench import runner
    from fedbench import tune as tunelib
    from fedbench.store import Store

    t0 = time.perf_counter()
    device = runner.resolve_device("cpu")
    with _environ(task.env):
        chosen = tunelib.tune(
            task.grid, list(suite.space), suite.trials, task.by, suite.pruner, db, device, None, say
        )
        g = gridlib.load(task.grid)
        seeded = [(replace(c, seeds=suite.seeds), v) for c, v in chosen]
        if best_dir is not None:
            best_dir.mkdir(parents=True, exist_ok=True)
            (best_dir / f"{task.name}.best.toml").write_text(
                tunelib.best_grid(g, seeded), encoding="utf-8"
            )
        jobs = [j for c, v in seeded for j in tunelib.trial_jobs(c, v)]
        with Store(db) as store:
            exp_id = store.upsert_experiment(g.name, str(task.grid), g.text)
            infos = store.ensure_runs(exp_id, [runner.run_spec(j) for j in jobs])
            for job in jobs:
                if infos[job.key].status in ("done", "diverged"):
                    continue
                out = runner.execute(job, store, device)
                say(
                    f"{task.name}: {job.algorithm} seed {job.seed}: {out.status}"
                    f"{'' if out.error is None else ' ' + out.error.splitlines()[0]}"
                )
        storage = tunelib.storage(db, tunelib.heartbeat_seconds())  # db: a URL
        methods = []
        for (cell, values), name in zip(seeded, _names([c for c, _ in seeded]), strict=True):
            study = optuna.load_study(study_name=cell.study, storage=storage)
            states = [t.state.name for t in study.get_trials(deepcopy=False)]
            methods.append(
                Method(
                    name,
                    dict(values),
                    tuple(j.key for j in tunelib.trial_jobs(cell, values)),
                    f"{states.count('COMPLETE')} complete + {states.count('PRUNED')} pruned",
                )
            )
    return TaskRun(task, tuple(methods), time.perf_counter() - t0)


# -- the numbers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One method of one task, over its seeds (NaN where no seed has the value)."""

    method: str
    chosen: str
    seeds: int  # seeds with a finished (done) run
    diverged: int
    at_budget: tuple[float, float]  # (mean, std) of the metric at the bits budget
    final: tuple[float, float]  # (mean, std) at the last evaluation
    final_bits: float  # mean uplink bits per client at the end
    to_target: float  # mean uplink bits per client to reach the target, over seeds reaching
    reached: int  # seeds reaching the target


def per_seed(
    frame: pd.DataFrame, key: str, metric: str, budget: float, target: float, higher: bool
) -> dict[str, float] | None:
    """One run's metric at its last evaluation, at the last evaluation within `budget` uplink
    bits per client, and the bits per client at its first evaluation reaching `target`. None
    for a run that is absent or not finished (done or diverged)."""
    run = frame[frame["key"] == key]
    if run.empty or run["status"].iloc[0] not in ("done", "diverged"):
        return None
    ev = run[run[metric].notna()].sort_values("round")
    bits = (ev["bits_up"].astype(float) / ev["task.clients"].astype(float)).to_numpy()
    vals = ev[metric].astype(float).to_numpy()
    ok = [math.isfinite(v) for v in vals]
    within = [i for i, b in enumerate(bits) if b <= budget and ok[i]]
    hit = [i for i, v in enumerate(vals) if ok[i] and (v >= target if higher else v <= target)]
    diverged = run["status"].iloc[0] == "diverged"
    last = len(vals) - 1
    full = run.sort_values("round")["bits_up"].astype(float).dropna()
    clients = float(run["task.clients"].iloc[0])
    return {
        "final": math.nan if diverged or last < 0 or not ok[last] else float(vals[last]),
        "at_budget": float(vals[within[-1]]) if within else math.nan,
        "to_target": float(bits[hit[0]]) if hit else math.nan,
        "final_bits": float(full.iloc[-1]) / clients if len(full) else math.nan,
        "diverged": float(diverged),
    }


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    xs = [v for v in values if math.isfinite(v)]
    if not xs:
        return math.nan, math.nan
    mean = sum(xs) / len(xs)
    if len(xs) < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))


def final_bits_of(frame: pd.DataFrame, keys: Sequence[str]) -> float:
    """Mean over the runs of `keys` of their total uplink bits per client."""
    vals = []
    for key in keys:
        run = frame[frame["key"] == key].sort_values("round")
        full = run["bits_up"].astype(float).dropna()
        if len(full):
            vals.append(float(full.iloc[-1]) / float(run["task.clients"].iloc[0]))
    return sum(vals) / len(vals) if vals else math.nan


def budget_of(task: Task, frame: pd.DataFrame, methods: Sequence[Method]) -> float:
    """The task's bits budget: given, or the least total uplink bits per client any method
    spends over the whole run (a point every method reaches)."""
    if task.bits_budget is not None:
        return task.bits_budget
    finals = [final_bits_of(frame, m.keys) for m in methods]
    finite = [b for b in finals if math.isfinite(b)]
    return min(finite) if finite else math.nan


def rows(task: Task, frame: pd.DataFrame, methods: Sequence[Method], budget: float) -> list[Row]:
    out = []
    for m in methods:
        seeds = [
            per_seed(frame, k, task.metric, budget, task.target, task.higher_better) for k in m.keys
        ]
        got = [s for s in seeds if s is not None]
        out.append(
            Row(
                method=m.name,
                chosen=", ".join(f"{k.split('.', 1)[1]} = {_num(v)}" for k, v in m.chosen.items()),
                seeds=len(got),
                diverged=int(sum(s["diverged"] for s in got)),
                at_budget=_mean_std([s["at_budget"] for s in got]),
                final=_mean_std([s["final"] for s in got]),
                final_bits=_mean_std([s["final_bits"] for s in got])[0],
                to_target=_mean_std([s["to_target"] for s in got])[0],
                reached=sum(math.isfinite(s["to_target"]) for s in got),
            )
        )
    return out


def rank_by_metric(rs: Sequence[Row], higher: bool) -> list[Row]:
    """Best mean at the budget first (ties: best final mean); methods without a value last."""

    def key(r: Row) -> tuple[bool, float, bool, float]:
        a, f = r.at_budget[0], r.final[0]
        sign = -1.0 if higher else 1.0
        return (
            not math.isfinite(a),
            sign * a if math.isfinite(a) else 0.0,
            not math.isfinite(f),
            sign * f if math.isfinite(f) else 0.0,
        )

    return sorted(rs, key=key)


def rank_by_bits(rs: Sequence[Row]) -> list[Row]:
    """Most seeds reaching the target first, then the fewest mean bits among them."""
    return sorted(rs, key=lambda r: (-r.reached, r.to_target if r.reached else math.inf))


# -- markdown ------------------------------------------------------------------------------------


def _num(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if math.isfinite(v) else "—"
    return str(v)


def _pm(ms: tuple[float, float], digits: int = 3) -> str:
    mean, std = ms
    if not math.isfinite(mean):
        return "—"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if math.isfinite(std) else "")


def _bits(b: float) -> str:
    return f"{b:.3g}" if math.isfinite(b) else "—"


def _shown(path: Path) -> str:
    """`path` relative to the working directory where it lies below it (as `make` runs it)."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def machine() -> str:
    """CPU model and core count of this machine."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores"


def _space_sentence(suite: Suite) -> str:
    return "; ".join(f"`{s}`" for s in suite.space)


def protocol(suite: Suite, tasks: Sequence[Task], val: str) -> str:
    """The validation protocol in one sentence."""
    names = sorted({t.by for t in tasks})
    bys = f"`{names[0]}`" if len(names) == 1 else "each task's validation metric (named below)"
    return (
        f"Each method was tuned with `fedbench tune` ({suite.trials} complete + pruned trials "
        f"per method, {suite.pruner} pruning, over {_space_sentence(suite)}, seed 0) on {bys} "
        f"of a validation share held out of {val} (`[task] val_fraction`, kept out of training "
        f"in every reported run too), then run at the chosen settings with seeds "
        f"{', '.join(map(str, suite.seeds))}; the test split is read only at the chosen "
        f"settings."
    )


def task_section(run: TaskRun, frame: pd.DataFrame) -> list[str]:
    task = run.task
    budget = budget_of(task, frame, run.methods)
    rs = rows(task, frame, run.methods, budget)
    what = task.metric.replace("_", " ")
    cmp = "≥" if task.higher_better else "≤"
    how = (
        "fixed in the suite file"
        if task.bits_budget is not None
        else "the least any method spends in its run"
    )
    out = [
        f"## {task.name}: {task.title}" if task.title else f"## {task.name}",
        "",
        f"Grid: `{_shown(task.grid)}`; tuned on `{task.by}`; wall time "
        f"{run.wall_s / 60:.1f} min. Bits: cumulative uplink bits per client.",
        "",
        f"**By {what} at a budget of {_bits(budget)} uplink bits per client** ({how}; the "
        "value at the last evaluation within the budget; mean ± std over seeds):",
        "",
        f"| rank | method | chosen | seeds | {what} at budget | final {what} | final bits |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for i, r in enumerate(rank_by_metric(rs, task.higher_better), 1):
        seeds = f"{r.seeds}" + (f" ({r.diverged} diverged)" if r.diverged else "")
        out.append(
            f"| {i} | {r.method} | {r.chosen} | {seeds} | {_pm(r.at_budget)} | "
            f"{_pm(r.final)} | {_bits(r.final_bits)} |"
        )
    out += [
        "",
        f"**By uplink bits per client to reach {what} {cmp} {task.target:g}** (first "
        "evaluation reaching it; mean over the seeds that reach it):",
        "",
        "| rank | method | bits to target | seeds reaching |",
        "| ---: | --- | ---: | ---: |",
    ]
    for i, r in enumerate(rank_by_bits(rs), 1):
        out.append(f"| {i} | {r.method} | {_bits(r.to_target)} | {r.reached}/{r.seeds} |")
    trials = "; ".join(f"{m.name}: {m.trials}" for m in run.methods if m.trials)
    if trials:
        out += ["", f"Trials per method: {trials}."]
    return [*out, ""]


def edge_notes(suite: Suite, runs: Sequence[TaskRun]) -> list[str]:
    """ "task / method: lr = 0.98 is within 5% of the range's upper end" (log scale)."""
    from fedbench.tune import parse_space

    dims = {d.field: d for d in parse_space(list(suite.space)) if d.kind != "choice"}
    notes = []
    for run in runs:
        for m in run.methods:
            for f, v in m.chosen.items():
                d = dims.get(f)
                if d is None or not isinstance(v, (int, float)):
                    continue
                lo, hi, x = d.low, d.high, float(v)
                if d.kind == "log":
                    lo, hi, x = math.log(lo), math.log(hi), math.log(x)
                pos = (x - lo) / (hi - lo)
                if pos <= 0.05 or pos >= 0.95:
                    end = "smallest" if pos <= 0.05 else "largest"
                    notes.append(
                        f"{run.task.name} / {m.name}: {f} = {_num(v)} is near the "
                        f"{end} value searched; the best may lie outside the range."
                    )
    return notes


def markdown(
    suite: Suite,
    runs: Sequence[TaskRun],
    frames: Mapping[str, pd.DataFrame],
    started: datetime,
    wall_s: float,
    loads: tuple[tuple[float, ...], tuple[float, ...]],
    versions: str,
) -> str:
    vals = sorted(
        {
            str(f["task.val"].dropna().iloc[0])
            for f in frames.values()
            if "task.val" in f.columns and f["task.val"].notna().any()
        }
    )
    val = (
        "every client's training samples"
        if vals in ([], ["samples"])
        else "whole clients"
        if vals == ["clients"]
        else "the training data"
    )
    la = ", ".join(f"{x:.2f}" for x in loads[0])
    lb = ", ".join(f"{x:.2f}" for x in loads[1])
    out = [
        "# fedbench leaderboard",
        "",
        f"Generated by `make leaderboard` (`python -m fedbench.leaderboard "
        f"{_shown(suite.path)}`) on {started:%Y-%m-%d %H:%M} UTC; machine: {machine()}; "
        f"{versions}; 1/5/15-min load average {la} at the start and {lb} at the end "
        f"(a load above the core count means other work shared the machine); total wall time "
        f"{wall_s / 60:.1f} min.",
        "",
        "**Protocol.** " + protocol(suite, [r.task for r in runs], val),
        "",
        "Each table is computed from the database alone; the grids name every other setting. "
        "Methods that take one gradient step per round (EF21, DIANA, MARINA, DASHA, EF14) and "
        "methods with K local steps (FedAvg, FedProx, SCAFFOLD, FedDyn, FedAdam) are compared "
        "at equal rounds and at equal uplink bits, not at equal computation.",
        "",
    ]
    for run in runs:
        out += task_section(run, frames[run.task.name])
    notes = [*suite.notes, *edge_notes(suite, runs)]
    if notes:
        out += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(out)


# -- the pipeline --------------------------------------------------------------------------------


def frame_of(db: str, task: Task) -> pd.DataFrame:
    from fedbench import grid as gridlib
    from fedbench.report import load_frame

    return load_frame(gridlib.load(task.grid).name, db)


def versions() -> str:
    import torch

    import fedbench

    return f"fedbench {getattr(fedbench, '__version__', '?')}, torch {torch.__version__}"


def build(
    suite_path: Path, db: str, out: Path, best_dir: Path | None, only: Sequence[str], say: Say
) -> str:
    """Tune and run every task (or those named in `only`), then write the markdown."""
    from fedbench.store import resolve_url

    suite = load_suite(suite_path)
    tasks = [t for t in suite.tasks if not only or t.name in only]
    if unknown := set(only) - {t.name for t in suite.tasks}:
        raise LeaderboardError(
            f"--only {sorted(unknown)}: allowed: {', '.join(t.name for t in suite.tasks)}"
        )
    url = resolve_url(db)
    started = datetime.now(UTC)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    runs = []
    for task in tasks:
        say(f"== {task.name}: tuning {task.grid} ({suite.trials} trials per method)")
        runs.append(run_task(suite, task, url, best_dir, say))
    wall = time.perf_counter() - t0
    frames = {t.name: frame_of(url, t) for t in tasks}
    text = markdown(suite, runs, frames, started, wall, (load0, os.getloadavg()), versions())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    say(f"wrote {out} ({wall / 60:.1f} min)")
    return text


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m fedbench.leaderboard",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("suite", type=Path, help="suite file (experiments/suite/suite.toml)")
    p.add_argument("--db", default="results/leaderboard.db", help="database (its own)")
    p.add_argument("--out", type=Path, default=Path("results/leaderboard.md"))
    p.add_argument(
        "--best-dir",
        type=Path,
        default=None,
        help="write each task's chosen settings as TASK.best.toml here",
    )
    p.add_argument("--only", action="append", default=[], help="run only this task (repeat)")
    args = p.parse_args(argv)
    from fedbench.tune import TuneError

    try:
        build(args.suite, args.db, args.out, args.best_dir, args.only, _say)
    except (LeaderboardError, TuneError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _say(message: str) -> None:
    print(message, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
