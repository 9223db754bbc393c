"""`fedbench tune`: search hyperparameters with Optuna instead of enumerating a grid (issue 25).

- Every trial is an ordinary fedbench job: the grid's configuration with the searched fields
  set, the same job key `fedbench run` would give it, written to the same database. A trial
  whose configuration already ran is read back, not rerun.
- The objective is the mean over the grid's seeds of `by` (a validation metric: `val_*` or
  `train_loss`, never a test metric) at the last evaluation. The first seed's evaluations are
  reported to the trial as they are logged, and a pruned trial stops between rounds (its run
  goes back to `pending` with its rounds kept, like an interrupted run).
- One study per cell: every grid axis that is not searched is tuned separately, so each
  method gets its own budget of `trials`. Studies live in the same database (Optuna's RDB
  storage on the same URL), so several launchers share a study.
- Exactly `trials` COMPLETE + PRUNED trials per study, whatever gets killed: a trial is told
  complete or pruned only while fewer than `trials` trials with a smaller id are complete,
  pruned or running (else it is failed as over budget), and a killed launcher's running trial
  stops sending heartbeats and is failed by `fail_stale_trials`, so the budget reopens.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from fedbench import grid as gridlib

if TYPE_CHECKING:
    import optuna
    import torch

    from fedbench.store import Store

_T = TypeVar("_T")
HEARTBEAT_ENV = "FEDBENCH_TUNE_HEARTBEAT"  # seconds between a trial's heartbeats
DEFAULT_HEARTBEAT_S = 10.0
POLL_S = 0.5  # waiting for another launcher's trial or run
PRUNERS = ("none", "median", "hyperband")


class TuneError(ValueError):
    """A tuning request that cannot run; one line saying what to change."""


class _TrialPruned(KeyboardInterrupt):
    """Raised by the per-round callback to stop a run between rounds. A KeyboardInterrupt to
    the runner, which then does exactly what it does on Ctrl-C: flush the completed rounds and
    put the run back to `pending` (no runner change needed to stop a run early)."""


class _OverBudgetError(Exception):
    """The study already had its trials when this one finished: it is failed, not counted."""


# -- the search space ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Dim:
    """One searched field: `log(a,b)` / `uniform(a,b)` (a float, or an int where the field is
    one) or `[v1, v2, ...]` (a choice)."""

    field: str  # "section.field"
    kind: str  # log | uniform | choice
    low: float = 0.0
    high: float = 0.0
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: optuna.Trial, integer: bool) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(self.field, list(self.choices))
        if integer:
            return trial.suggest_int(
                self.field, int(self.low), int(self.high), log=self.kind == "log"
            )
        return trial.suggest_float(self.field, self.low, self.high, log=self.kind == "log")


_RANGE = re.compile(r"^(log|uniform)\(\s*([^,]+?)\s*,\s*([^,]+?)\s*\)$")


def parse_space(items: Sequence[str]) -> list[Dim]:
    """`--space` values, checked: "section.field=log(a,b)" | "=uniform(a,b)" | "=[v, ...]"."""
    import tomllib

    dims: list[Dim] = []
    for item in items:
        name, sep, spec = (s.strip() for s in item.partition("="))
        where = f"--space {item!r}"
        if not sep or "." not in name or name.split(".", 1)[0] not in gridlib.SECTIONS:
            raise TuneError(f"{where}: expected section.field=log(a,b) | uniform(a,b) | [v, ...]")
        if name in (d.field for d in dims):
            raise TuneError(f"{where}: {name} is searched twice")
        if name in ("algorithm.name", "compressor.name", "task.dataset", "experiment.rounds"):
            raise TuneError(f"{where}: {name} defines a cell; make it a [grid] axis instead")
        m = _RANGE.match(spec)
        if m:
            try:
                low, high = float(m.group(2)), float(m.group(3))
            except ValueError:
                raise TuneError(f"{where}: the bounds must be numbers") from None
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise TuneError(f"{where}: allowed: finite bounds with low < high")
            if m.group(1) == "log" and low <= 0:
                raise TuneError(f"{where}: log needs bounds > 0")
            dims.append(Dim(name, m.group(1), low, high))
            continue
        try:
            values = tomllib.loads(f"v = {spec}")["v"]
        except tomllib.TOMLDecodeError:
            values = None
        if not isinstance(values, list) or not values:
            raise TuneError(f"{where}: expected log(a,b), uniform(a,b) or a TOML list [v, ...]")
        if any(isinstance(v, (list, dict)) for v in values):
            raise TuneError(f"{where}: choices must be numbers, strings or booleans")
        dims.append(Dim(name, "choice", choices=tuple(values)))
    if not dims:
        raise TuneError("no --space given; e.g. --space 'algorithm.lr=log(1e-3,1)'")
    return dims


# -- cells ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """The configurations a study tunes: one combination of the grid's non-searched axes."""

    study: str  # Optuna study name: experiment, label, hash of the config and the space
    label: str
    config: dict[str, dict[str, Any]]  # resolved, first seed's
    seeds: tuple[int, ...]
    dims: tuple[Dim, ...]  # the searched fields this cell has


def _without(config: Mapping[str, Mapping[str, Any]], fields: Sequence[str]) -> str:
    flat = gridlib.flat_config(config)
    return json.dumps({k: v for k, v in flat.items() if k not in fields}, sort_keys=True)


def _has(config: Mapping[str, Mapping[str, Any]], field: str) -> bool:
    s, f = field.split(".", 1)
    return f in config.get(s, {})


def cells(g: gridlib.Grid, dims: Sequence[Dim]) -> list[Cell]:
    """The grid's jobs grouped by everything but the searched fields and the seed."""
    fields = [d.field for d in dims]
    groups: dict[str, list[gridlib.Job]] = {}
    for job in g.jobs:
        groups.setdefault(_without(job.config, fields), []).append(job)
    labels = gridlib.job_labels([jobs[0] for jobs in groups.values()])
    out = []
    space = json.dumps([d.__dict__ for d in dims], sort_keys=True, default=str)
    for ident, jobs in groups.items():
        first = jobs[0]
        own = tuple(d for d in dims if _has(first.config, d.field))
        digest = hashlib.sha256((ident + space).encode()).hexdigest()[:10]
        label = labels[first.key] if len(groups) > 1 else first.algorithm
        out.append(
            Cell(
                f"{g.name}:{label}:{digest}",
                label,
                first.config,
                tuple(sorted({j.seed for j in jobs})),
                own,
            )
        )
    return out


def trial_jobs(cell: Cell, values: Mapping[str, Any]) -> list[gridlib.Job]:
    """The cell's jobs with the searched fields set: resolved and keyed as `fedbench run`
    would (GridError on a value a field refuses)."""
    cfg = {s: dict(sec) for s, sec in cell.config.items()}
    for k, v in values.items():
        s, f = k.split(".", 1)
        cfg[s][f] = v
    resolved, _ = gridlib.resolve(cfg)
    for s in gridlib.OPTIONAL_SECTIONS:  # resolve() fills the base sections only
        if s in cell.config:
            resolved[s] = cfg[s]
    return [gridlib.Job(gridlib.job_key(resolved, seed), seed, resolved) for seed in cell.seeds]


# -- objective -----------------------------------------------------------------------------------


def direction(by: str) -> Literal["maximize", "minimize"]:
    """maximize accuracies, minimize losses and perplexities; a test metric is refused."""
    if by.startswith("test_") or by == "perplexity":
        raise TuneError(
            f"--by {by}: a test metric; choosing hyperparameters on the test set makes its "
            "numbers optimistic. Allowed: val_accuracy, val_loss, val_perplexity (needs [task] "
            "val_fraction > 0) or train_loss"
        )
    if by.startswith("val_") and by.removeprefix("val_") in ("accuracy", "loss", "perplexity"):
        return "maximize" if by.endswith("accuracy") else "minimize"
    if by == "train_loss":
        return "minimize"
    raise TuneError(f"--by {by}: allowed: val_accuracy, val_loss, val_perplexity, train_loss")


@dataclass
class Tuner:
    """Runs the trials of one cell's study against one store."""

    store: Store
    experiment_id: int
    device: torch.device
    by: str
    trials: int
    say: Callable[[str], None]

    def counted(self, study: optuna.Study, below: int | None = None) -> int:
        """COMPLETE + PRUNED trials (+ RUNNING when `below` is given: those with a smaller
        trial id, which may still be counted)."""
        from optuna.trial import TrialState

        states: tuple[TrialState, ...] = (TrialState.COMPLETE, TrialState.PRUNED)
        if below is None:
            return len(study.get_trials(deepcopy=False, states=states))
        states += (TrialState.RUNNING,)
        return sum(t._trial_id < below for t in study.get_trials(deepcopy=False, states=states))

    def objective(self, cell: Cell, study: optuna.Study) -> Callable[[optuna.Trial], float]:
        import optuna

        def run_trial(trial: optuna.Trial) -> float:
            # a beat before any run starts: a trial that has none never started a run
            study._storage.record_heartbeat(trial._trial_id)  # type: ignore[attr-defined]
            trial.set_user_attr("launcher", f"{socket.gethostname()}:{os.getpid()}")
            values = {d.field: d.suggest(trial, self._integer(cell, d)) for d in cell.dims}
            jobs = trial_jobs(cell, values)
            trial.set_user_attr("keys", [j.key for j in jobs])
            finals, pruned = [], False
            for i, job in enumerate(jobs):
                result = self._value(job, trial if i == 0 else None)
                if result is None:
                    pruned = True
                    break
                finals.append(result)
            if self.counted(study, below=trial._trial_id) >= self.trials:
                raise _OverBudgetError
            if pruned:
                raise optuna.TrialPruned()
            return sum(finals) / len(finals)

        return run_trial

    def _integer(self, cell: Cell, d: Dim) -> bool:
        s, f = d.field.split(".", 1)
        p = gridlib.section_params(s, cell.config[s]).get(f)
        return p is not None and p.kind == "int"

    def _value(self, job: gridlib.Job, trial: optuna.Trial | None) -> float | None:
        """`by` at the job's last evaluation (running the job unless it is done), None when
        the trial is pruned (or the run diverged)."""
        from fedbench import runner

        reported: set[int] = set()

        def report(t: int, value: float) -> None:
            if trial is None or t in reported:
                return
            reported.add(t)
            trial.report(value, t)
            if trial.should_prune():
                raise _TrialPruned

        info = self.store.ensure_runs(self.experiment_id, [runner.run_spec(job)])[job.key]
        try:
            for t, value in self._logged(info.id):  # a run that already ran: read, not rerun
                report(t, value)
            while info.status not in ("done", "diverged", "failed"):

                def progress(_job: Any, t: int, metrics: Mapping[str, float]) -> None:
                    if self.by in metrics and math.isfinite(metrics[self.by]):
                        report(t, metrics[self.by])

                out = runner.execute(job, self.store, self.device, progress)
                if out.status == "skipped":  # another launcher holds it: wait for it
                    time.sleep(POLL_S)
                info = self.store.ensure_runs(self.experiment_id, [runner.run_spec(job)])[job.key]
        except _TrialPruned:
            return None
        if info.status == "failed":
            raise TuneError(f"job {job.key} failed: {(info.error or '').splitlines()[0]}")
        if info.status == "diverged":
            return None  # a step size too large: a result, pruned rather than scored
        logged = self._logged(info.id)
        if not logged:
            raise TuneError(f"job {job.key}: no {self.by} logged (is [task] val_fraction > 0?)")
        for t, value in logged:
            try:
                report(t, value)
            except _TrialPruned:
                return None
        return logged[-1][1]

    def _logged(self, run_id: int) -> list[tuple[int, float]]:
        frame = self.store.metrics_frame([run_id], [self.by])
        frame = frame[frame["value"].notna()]
        return [(int(r), float(v)) for r, v in zip(frame["round"], frame["value"], strict=True)]

    def run(self, cell: Cell, study: optuna.Study) -> None:
        """Trials until the study has `trials` COMPLETE + PRUNED ones; waits for other
        launchers' running trials rather than starting more than the budget."""
        import optuna
        from optuna.trial import TrialState

        objective = self.objective(cell, study)
        while True:
            optuna.storages.fail_stale_trials(study)
            _fail_silent(study)
            done = self.counted(study)
            if done >= self.trials:
                return
            running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
            if done + running >= self.trials:
                time.sleep(POLL_S)  # theirs may finish, or go stale and be failed
                continue
            study.optimize(objective, n_trials=1, catch=(_OverBudgetError,), gc_after_trial=False)


def _fail_silent(study: optuna.Study) -> None:
    """Fail RUNNING trials that never reached the objective (no "launcher" attribute, set
    with the first heartbeat) and started over two grace periods ago: their launcher was killed
    between creating them and its first beat, before any run began, and `fail_stale_trials`
    only looks at trials that sent a beat."""
    import contextlib
    import datetime

    from optuna.trial import TrialState

    store = study._storage
    grace = getattr(store, "grace_period", None) or 60
    old = datetime.datetime.now() - datetime.timedelta(seconds=2 * grace)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if "launcher" in t.user_attrs or t.datetime_start is None or t.datetime_start > old:
            continue
        with contextlib.suppress(RuntimeError):  # finished meanwhile
            store.set_trial_state_values(t._trial_id, TrialState.FAIL)


def storage(url: str, heartbeat: float) -> optuna.storages.RDBStorage:
    """Optuna's tables in fedbench's database (same SQLAlchemy URL), with heartbeats so a
    killed launcher's trials are failed after 3 missed beats."""
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 60}
    # a killed launcher's trial is retried with the same values, so its orphaned run is taken
    # over (after its lease expires) and finished instead of left behind (Optuna 4.9 renamed
    # the callback and its argument)
    retry: dict[str, Any]
    if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):
        cb = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)
        retry = {"heartbeat_stale_trial_callback": cb}
    else:  # pragma: no cover - Optuna < 4.9
        retry = {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=3)}
    return optuna.storages.RDBStorage(
        url,
        engine_kwargs=kwargs,
        heartbeat_interval=max(1, round(heartbeat)),
        grace_period=max(2, round(3 * heartbeat)),
        **retry,
    )


def pruner(name: str) -> optuna.pruners.BasePruner:
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    if name == "none":
        return optuna.pruners.NopPruner()
    raise TuneError(f"--pruner {name}: allowed: {', '.join(PRUNERS)}")


def heartbeat_seconds() -> float:
    raw = os.environ.get(HEARTBEAT_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_HEARTBEAT_S
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value > 0):
        raise TuneError(f"${HEARTBEAT_ENV} = {raw!r}: allowed: a number of seconds > 0")
    return value


BEST_SUFFIX = "-best"


def best_grid(g: gridlib.Grid, chosen: Sequence[tuple[Cell, Mapping[str, Any]]]) -> str:
    """TOML of a grid running every cell at its chosen values, with the grid's seeds: the
    first cell in the base sections, each other as a [[variant]] of the fields that differ.
    Its experiment is the tuned one's name + BEST_SUFFIX: the tuned experiment belongs to the
    tuned grid file (`fedbench run` refuses another file's grid under its name), and a report
    of the chosen settings alone then holds only them. Everything else is the best trials'
    configuration, so the runs differ from the trials only in the experiment's name."""
    configs = [trial_jobs(c, v)[0].config for c, v in chosen]
    seeds = sorted({s for c, _ in chosen for s in c.seeds})
    lines = [
        f"# best settings of {g.path.name}, chosen by fedbench tune (experiment {g.name!r});",
        "# raise `seeds` and run it: fedbench run THIS_FILE",
        "",
    ]
    base = configs[0]
    for s, sec in base.items():
        lines.append(f"[{s}]")
        if s == "experiment":
            lines.append(f"seeds = {_toml(seeds)}")
        lines += [
            f"{k} = {_toml(v + BEST_SUFFIX if (s, k) == ('experiment', 'name') else v)}"
            for k, v in sec.items()
        ]
        lines.append("")
    flat0 = gridlib.flat_config(base)
    for cfg in configs[1:]:
        flat = gridlib.flat_config(cfg)
        lines.append("[[variant]]")
        lines += [f'"{k}" = {_toml(v)}' for k, v in flat.items() if flat0.get(k) != v]
        lines.append("")
    return "\n".join(lines)


def _study_seed(study: str) -> int:
    return int(hashlib.sha256(study.encode()).hexdigest()[:8], 16)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


def summary(study: optuna.Study, cell: Cell, by: str) -> str:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    n = {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED)}
    head = (
        f"{cell.label}: {n[TrialState.COMPLETE]} complete + {n[TrialState.PRUNED]} pruned "
        f"trials (study {cell.study})"
    )
    if not n[TrialState.COMPLETE]:
        return head + "; no complete trial"
    best = study.best_trial
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in best.params.items())  # fmt: skip
    return f"{head}; best {by} = {best.value:.4f} at {shown}"


def _retry(make: Callable[[], _T], what: str, tries: int = 5) -> _T:
    """`make()`, retried: two launchers starting at once race to create Optuna's tables and
    the study (one sees "table already exists" or a lock); the loser's next try finds them."""
    for attempt in range(tries):
        try:
            return make()
        except Exception as e:  # the database driver's error, whichever backend
            if attempt == tries - 1:
                raise TuneError(f"cannot {what} the database: {str(e).splitlines()[0]}") from None
            time.sleep(POLL_S * (attempt + 1))
    raise AssertionError("unreachable")


def tune(
    grid_path: Path,
    space: Sequence[str],
    trials: int,
    by: str,
    pruner_name: str,
    db: str | None,
    device: torch.device,
    write: Path | None,
    say: Callable[[str], None],
) -> list[tuple[Cell, dict[str, Any]]]:
    """Tune every cell of the grid (see the module docstring); returns (cell, best values)."""
    import optuna

    from fedbench.store import Store, resolve_url

    if trials < 1:
        raise TuneError(f"--trials {trials}: allowed: >= 1")
    dims = parse_space(space)
    goal = direction(by)
    chosen_pruner = pruner(pruner_name)
    g = gridlib.load(grid_path)
    all_cells = cells(g, dims)
    for cell in all_cells:
        missing = [d.field for d in dims if d not in cell.dims]
        if not cell.dims:
            raise TuneError(f"cell {cell.label}: has none of the searched fields {missing}")
        if missing:
            say(f"{cell.label}: does not have {', '.join(missing)}; searching the rest")
        if by.startswith("val_") and not cell.config["task"].get("val_fraction"):
            raise TuneError(f"--by {by}: needs [task] val_fraction > 0 in {grid_path}")
    say(f"{len(all_cells)} cells x {trials} trials each, by {by} ({goal})")
    url = resolve_url(db)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    beat = heartbeat_seconds()
    out: list[tuple[Cell, dict[str, Any]]] = []
    store = Store(db)
    try:
        exp_id = store.upsert_experiment(g.name, str(grid_path), g.text)
        rdb = _retry(lambda: storage(url, beat), "open Optuna's tables in")
        tuner = Tuner(store, exp_id, device, by, trials, say)
        for cell in all_cells:
            study = _retry(
                lambda c=cell: optuna.create_study(  # type: ignore[misc]
                    study_name=c.study,
                    storage=rdb,
                    direction=goal,
                    pruner=chosen_pruner,
                    # seeded per study: one launcher's search is the same on every rerun
                    sampler=optuna.samplers.TPESampler(seed=_study_seed(c.study)),
                    load_if_exists=True,
                ),
                "create the study in",
            )
            tuner.run(cell, study)
            say(summary(study, cell, by))
            complete = [t for t in study.get_trials(deepcopy=False) if t.value is not None]
            if complete:
                out.append((cell, dict(study.best_trial.params)))
    finally:
        store.close()
    if write is not None and out:
        write.write_text(best_grid(g, out), encoding="utf-8")
        say(f"wrote {write}: {len(out)} cells at their best settings")
    return out
