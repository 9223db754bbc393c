"""`fedbench run GRID.toml`: expand a grid, run the jobs that are not done, show progress."""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from fedbench.commands.common import (
    CommandError,
    DbOption,
    check_experiment_owner,
    console,
    emit_rows,
    err_console,
    one_line_errors,
    plain,
)

if TYPE_CHECKING:  # imported where used: `run --help` needs neither torch nor SQLAlchemy
    from fedbench import executors, runner
    from fedbench import grid as gridlib
    from fedbench.store import Store

TODO = ("pending", "running")
FAILED_EXIT = 1  # exit status of `run` when any job of the run failed with an error
# most workers, threads or jobs per GPU one launcher starts (each is a process or a thread)
MAX_COUNT = 1024
# grid.MAX_JOBS, written out so that --help does not import the grid module (its registries
# import torch); tests/test_cli_startup.py pins the two equal.
MAX_JOBS = 100_000


@one_line_errors
def run(
    grid: Annotated[Path, typer.Argument(help="grid file (TOML)", show_default=False)],
    db: DbOption = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    executor: Annotated[
        str, typer.Option(help="where jobs run: local (this machine) | ray (a Ray cluster)")
    ] = "local",
    workers: Annotated[
        str,
        typer.Option(
            envvar="FEDBENCH_WORKERS",
            help="local: jobs at once on CPUs, each in its own process (1 = one after the "
            "other in this process); auto = one per core from 3 jobs per core, else 1; "
            "with GPUs the default is one per GPU × --jobs-per-gpu",
        ),
    ] = "auto",
    threads: Annotated[
        int,
        typer.Option(
            envvar="FEDBENCH_THREADS",
            help="torch threads per job [default: OMP_NUM_THREADS if set, else the cores split "
            "between the workers; 1 for models under 10,000 parameters]",
            show_default=False,
        ),
    ] = 0,
    jobs_per_gpu: Annotated[
        int, typer.Option(help="jobs packed on each GPU (local executor with CUDA)")
    ] = 1,
    ray_address: Annotated[
        str | None, typer.Option(help="Ray cluster to join (default: start a local Ray)")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="list the jobs and what would run, run nothing")
    ] = False,
    rerun_failed: Annotated[
        bool, typer.Option("--rerun-failed", help="also run jobs that failed before")
    ] = False,
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help="run only jobs with section.field=value (repeatable)"),
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(
            "--shard",
            help="i/N: run only the jobs whose key falls in shard i of N (0 <= i < N), "
            "a static split for array jobs",
        ),
    ] = None,
    max_jobs: Annotated[
        int, typer.Option(help="refuse a grid that expands to more jobs than this")
    ] = MAX_JOBS,
    lease_timeout: Annotated[
        float | None,
        typer.Option(
            help="seconds without a heartbeat before another launcher takes a running job "
            "over [default: $FEDBENCH_LEASE_TIMEOUT or 60]"
        ),
    ] = None,
    no_plugins: Annotated[
        bool, typer.Option("--no-plugins", help="refuse a grid that names plugins (code)")
    ] = False,
) -> None:
    """Run every job of a grid that is not done yet; results stream into the database.

    Exit status: 0 when every job that ran ended done or diverged (a diverged run, e.g. a step
    size too large, is a result); 1 when any job of this run failed with an error (see them
    with `fedbench ls --status failed`); 2 when the grid or an option is refused and nothing
    ran; 128 + N when stopped by signal N (130: Ctrl-C).

    Example: fedbench run experiments/quickstart.toml --workers 2 --only algorithm.name=fedavg
    """
    from fedbench import executors, runner
    from fedbench import grid as gridlib
    from fedbench.store import Store, is_new_sqlite_file

    if executor not in ("local", "ray"):
        raise CommandError(f"--executor {executor}: allowed: local, ray")
    n_workers = None if workers == "auto" else _count(workers)
    if n_workers == 0:
        raise CommandError(
            f"--workers {workers}: allowed: auto or an integer from 1 to {MAX_COUNT}"
        )
    if not 0 <= threads <= MAX_COUNT:
        raise CommandError(
            f"--threads {threads}: allowed: an integer from 1 to {MAX_COUNT} (0 = default)"
        )
    if not 1 <= jobs_per_gpu <= MAX_COUNT:
        raise CommandError(
            f"--jobs-per-gpu {jobs_per_gpu}: allowed: an integer from 1 to {MAX_COUNT}"
        )
    try:
        dev = runner.resolve_device(device)
    except ValueError as e:
        raise CommandError(str(e)) from None
    timeout = _lease_timeout(lease_timeout)
    shard_of = _parse_shard(shard)
    if no_plugins:
        from fedbench import plugins

        plugins.forbid()
    g = gridlib.load(grid, max_jobs)
    for note in g.notes:
        err_console.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)
    jobs = gridlib.filter_jobs(g.jobs, only or [])
    if not jobs:
        raise CommandError(f"{grid}: no job matches --only {' '.join(only or [])}")
    if shard_of is not None:
        jobs = [j for j in jobs if int(j.key, 16) % shard_of[1] == shard_of[0]]
        if not jobs:
            raise CommandError(f"--shard {shard}: no job of {grid} falls in this shard")
    problems = runner.preflight(jobs, str(grid))
    if problems:
        raise CommandError(*problems)
    wanted = (*TODO, "failed") if rerun_failed else TODO
    labels = {k: plain(v) for k, v in gridlib.job_labels(g.jobs).items()}
    if dry_run:  # reads the database, writes nothing
        known = {}
        if not is_new_sqlite_file(db):
            reader = Store(db, read_only=True)
            check_experiment_owner(reader, g, grid)  # what the real run would refuse
            known = reader.statuses([j.key for j in jobs])
        status = {j.key: known.get(j.key, "new") for j in jobs}
        would = [j for j in jobs if status[j.key] in (*wanted, "new")]
        rows = [
            {"key": j.key, "job": labels[j.key], "seed": j.seed, "status": status[j.key],
             "action": "run" if j in would else "skip"}
            for j in jobs
        ]  # fmt: skip
        emit_rows(rows, "table", title=f"{g.name}: {len(would)} of {len(jobs)} jobs would run")
        return
    store = Store(db)
    if store.in_memory:
        raise CommandError(
            f"--db {store.url}: an in-memory database keeps nothing and each job's process "
            "would see its own empty one; give a file (e.g. --db results/fedbench.db)"
        )
    check_experiment_owner(store, g, grid)
    exp_id = store.upsert_experiment(g.name, str(grid), g.text)
    info = store.ensure_runs(exp_id, [runner.run_spec(j) for j in jobs])
    from fedbench.report.select import stale_runs

    stale = stale_runs(store, g.name, {j.key for j in g.jobs})  # the whole grid, not --only
    if stale:
        err_console.print(
            f"note: {len(stale)} run{'s are' if len(stale) > 1 else ' is'} no longer in this "
            f"grid: fedbench prune {grid}",
            highlight=False, markup=False, soft_wrap=True,
        )  # fmt: skip
    todo = [j for j in jobs if info[j.key].status in wanted]
    finished = Counter(info[j.key].status for j in jobs if j not in todo)
    others = ", ".join(f"{v} {k}" for k, v in sorted(finished.items()))
    if finished.get("failed"):
        others += ": --rerun-failed runs them again"
    console.print(
        f"{plain(g.name)}: {len(jobs)} jobs, {len(todo)} to run"
        + (f" ({others})" if others else "")
        + f" on {dev} → {store.url}",
        highlight=False,
        markup=False,
        soft_wrap=not console.is_terminal,
    )
    runner.tune_allocator()
    if executor == "ray":
        where = f"Ray ({ray_address or 'local'})"
    else:
        cores = executors.cpu_count()
        policy = executors.choose(
            len(todo), cores, n_workers, threads or None, executors.env_threads()
        )
        w = policy.workers if dev.type == "cpu" else (n_workers or 1)
        slots = executors.plan_slots(dev, w, jobs_per_gpu, policy.threads, policy.fixed)
        if not slots:
            raise CommandError(f"--device {device}: no GPU is visible")
        where = f"{len(slots)} worker{'s' * (len(slots) > 1)}" + (
            f" on {', '.join(sorted({s.device for s in slots}))}"
        )
        if dev.type == "cpu":
            where += f", {policy.threads} thread{'s' * (policy.threads > 1)} each ({policy.why})"
    display = _Display(todo, labels)
    console.on_broken_pipe = _broken_pipe  # type: ignore[method-assign]

    def go(todo: list[gridlib.Job], on_event: executors.OnEvent) -> None:
        if executor == "ray":
            executors.run_ray(todo, store.url, dev, ray_address, on_event)
        elif len(slots) == 1:  # in this process
            slot = slots[0] if dev.type == "cpu" else executors.Slot(slots[0].device, 1)
            executors.run_in_process(todo, store.url, slot, on_event)
        else:
            executors.run_pool(todo, store.url, slots, on_event)

    launch = runner.Launch.new(timeout, ("pending", "failed") if rerun_failed else ("pending",))
    os.environ[runner.LAUNCH_ENV] = launch.to_env()  # inherited by pool workers
    try:
        console.print(f"running on {where}", highlight=False, markup=False)
        started = time.perf_counter()
        with display, _signals_as_interrupts():
            _until_finished(store, todo, launch, go, display)
        _summary(g.name, display.outcomes, store, time.perf_counter() - started)
        # from the database: also the jobs failed for a worker that died twice
        status = store.statuses([j.key for j in todo])
        failed = sum(status.get(j.key) == "failed" for j in todo)
    except KeyboardInterrupt as e:
        running = len(display.running)
        store.release(launch.prefix)
        signum = getattr(e, "signum", signal.SIGINT)
        console.print(
            f"[yellow]interrupted[/yellow] ({signal.Signals(signum).name}): {running} running "
            "job(s) marked pending (checkpoints kept); run the same command to resume",
            highlight=False,
        )
        raise typer.Exit(128 + signum) from None
    except BrokenPipeError:  # `fedbench run ... | head -1`: the reader went away
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        released = store.release(launch.prefix)
        err_console.print(
            f"stdout was closed: stopped, {released} running job(s) marked pending; "
            "run the same command to resume",
            highlight=False,
            markup=False,
        )
        raise typer.Exit(128 + signal.SIGPIPE) from None
    finally:
        os.environ.pop(runner.LAUNCH_ENV, None)  # this launch is over (matters in-process)
    if failed:
        raise typer.Exit(FAILED_EXIT)


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP (what `timeout`, SLURM and Kubernetes send): handled like Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def _signals_as_interrupts() -> Iterator[None]:
    """While running: SIGTERM and SIGHUP raise `Interrupted` in the main thread, like Ctrl-C."""

    def handler(signum: int, _frame: object) -> None:
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _until_finished(
    store: Store,
    todo: list[gridlib.Job],
    launch: runner.Launch,
    go: Callable[[list[gridlib.Job], executors.OnEvent], None],
    display: _Display,
) -> None:
    """Run `todo` until every job has ended: jobs another launcher holds are skipped, then
    waited for (taken over when their lease goes stale); jobs of a pool worker that died are
    requeued, and failed after dying with their worker twice."""
    from fedbench import executors, runner

    remaining, said, deaths = list(todo), False, Counter[str]()
    keys = [j.key for j in todo]
    while True:
        if remaining:
            try:
                go(remaining, display.on_event)
            except executors.WorkerDiedError as e:
                store.release(launch.prefix)  # every run of this launcher back in the queue
                deaths.update(e.keys)  # only the jobs of the dead worker: the others are healthy
                display.worker_died(e.keys, e.others, e.silent)
                dead = [k for k in e.keys if deaths[k] >= 2]
                if dead:
                    why = "its worker process died twice (killed, out of memory, or hung)"
                    store.fail_runs(dead, why)
                    for k in dead:  # counted in the summary like any failed job
                        display.on_event(
                            executors.Event(
                                "end", k, 0, {}, runner.Outcome(k, "failed", why, 0, 0.0, {})
                            )
                        )
        status = store.statuses(keys)
        left = [k for k in keys if status.get(k) in TODO]
        if not left:
            return
        ready = set(store.claimable(left, launch.timeout, launch.statuses))
        remaining = [j for j in todo if j.key in ready]
        if not remaining:
            if not said:
                console.print(
                    f"waiting for {len(left)} job(s) held by other launchers "
                    f"(taken over if silent for {launch.timeout:g}s)",
                    highlight=False,
                    markup=False,
                )
                said = True
            time.sleep(min(5.0, launch.timeout / 4))


def _broken_pipe() -> None:
    """stdout's reader went away (`fedbench run ... | head -1`): stop printing and let `run`
    release its jobs (rich's default would exit with status 1 at once, jobs left running)."""
    console.quiet = True
    raise BrokenPipeError


def _lease_timeout(option: float | None) -> float:
    if option is not None:
        from fedbench.store import MIN_LEASE_TIMEOUT

        if not (math.isfinite(option) and option >= MIN_LEASE_TIMEOUT):
            raise CommandError(
                f"--lease-timeout {option:g}: allowed: at least {MIN_LEASE_TIMEOUT:g} seconds "
                "(a holder renews its lease every timeout/4 s)"
            )
        return option
    from fedbench import runner

    try:
        return runner.lease_timeout()
    except ValueError as e:
        raise CommandError(str(e)) from None


def _ascii_int(text: str) -> int | None:
    """A non-negative integer written in ASCII digits ("²" and "٣" are digits to str.isdigit
    but not to int), or None."""
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() else None


def _count(text: str) -> int:
    """--workers N: N in 1..MAX_COUNT, else 0 (refused by the caller)."""
    n = _ascii_int(text)
    return n if n is not None and 1 <= n <= MAX_COUNT else 0


def _parse_shard(shard: str | None) -> tuple[int, int] | None:
    if shard is None:
        return None
    i, sep, n = shard.partition("/")
    a, b = _ascii_int(i), _ascii_int(n)
    if sep and a is not None and b is not None and 0 <= a < b:
        return a, b
    raise CommandError(f"--shard {shard}: allowed: i/N with integers 0 <= i < N, e.g. 0/4")


class _Display:
    """The live view of a run: one bar for the jobs (done / failed / diverged, ETA) and one per
    running job (rounds, latest accuracy); a line per finished job."""

    def __init__(self, jobs: list[gridlib.Job], labels: dict[str, str]) -> None:
        self.jobs = {j.key: j for j in jobs}
        self.labels = labels
        self.counts = {"done": 0, "failed": 0, "diverged": 0}
        self.outcomes: list[runner.Outcome] = []
        self.running: dict[str, TaskID] = {}
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,
        )
        self.total = self.bar.add_task(self._headline(), total=len(jobs))
        # not on a terminal (a file, a pipe): no live bars, so one unwrapped line per job start
        # and end, and a progress line every quarter of a job's rounds or every minute
        self.plain = not console.is_terminal
        self.said: dict[str, tuple[int, float]] = {}  # key -> (round, time) of its last line

    def __enter__(self) -> _Display:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(None, None, None)

    def _headline(self) -> str:
        c = self.counts
        return (
            f"jobs  done {c['done']}  running {len(getattr(self, 'running', {}))}  "
            f"failed {c['failed']}  diverged {c['diverged']}"
        )

    def _name(self, key: str) -> str:
        return f"  {self.labels[key]} seed {self.jobs[key].seed}"

    def on_event(self, e: executors.Event) -> None:
        if e.kind == "start":
            rounds = self.jobs[e.key].config["experiment"]["rounds"]
            self.running[e.key] = self.bar.add_task(self._name(e.key), total=rounds)
            self._plain(e.key, "start", f"{rounds} rounds")
        elif e.kind == "round" and e.key in self.running:
            acc = e.metrics.get("test_accuracy")
            tail = f" acc {acc:.3f}" if acc is not None else ""
            self._progress(e.key, e.round, tail)
            self.bar.update(
                self.running[e.key], completed=e.round, description=self._name(e.key) + tail
            )
        elif e.kind == "end" and e.outcome is not None:
            task = self.running.pop(e.key, None)
            if task is not None:
                self.bar.remove_task(task)
            if e.outcome.status == "lost":
                console.print(
                    f"[yellow]lost    [/yellow] {e.key}  {escape(self.labels[e.key])}: "
                    f"{escape(e.outcome.error or '')}; its new holder finishes it",
                    highlight=False,
                )
            elif e.outcome.status != "skipped":  # skipped: another launcher holds it
                self._finished(e.outcome)
        self.bar.update(self.total, description=self._headline())

    def _plain(self, key: str, what: str, rest: str, at: int = 0) -> None:
        if not self.plain:
            return
        self.said[key] = (at, time.monotonic())
        console.print(
            f"{what:8} {key}  {self.labels[key]} seed {self.jobs[key].seed}  {rest}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )

    def _progress(self, key: str, rnd: int, tail: str) -> None:
        if not self.plain:
            return
        rounds = int(self.jobs[key].config["experiment"]["rounds"])
        last, when = self.said.get(key, (0, time.monotonic()))
        step = max(1, rounds // 4)
        if rnd < rounds and (rnd // step > last // step or time.monotonic() - when >= 60):
            self._plain(key, "progress", f"round {rnd}/{rounds}{tail}", rnd)

    def worker_died(self, keys: list[str], others: list[str], silent: float = 0.0) -> None:
        for key in list(self.running):
            self.bar.remove_task(self.running.pop(key))
        running = f" running {', '.join(keys)}" if keys else ""
        what = (
            f"[yellow]a worker process stopped responding[/yellow] (no heartbeat for "
            f"{silent:g}s: stopped or hung; killed){running}"
            if silent > 0
            else f"[yellow]a worker process died[/yellow] (killed or out of memory){running}"
        )
        console.print(
            f"{what}; {len(keys) + len(others)} job(s) in flight: back in the queue",
            highlight=False,
        )

    def _finished(self, out: runner.Outcome) -> None:
        self.outcomes.append(out)
        self.counts[out.status] += 1
        self.bar.advance(self.total)
        job = self.jobs[out.key]
        acc = out.final.get("test_accuracy")
        style = {"done": "green", "failed": "red", "diverged": "yellow"}[out.status]
        console.print(
            f"[{style}]{out.status:8}[/{style}] {job.key}  {escape(self.labels[job.key])} "
            f"seed {job.seed}  {out.rounds} rounds  {out.seconds:.1f}s"
            + (f"  acc {acc:.3f}" if acc is not None else "")
            + (f"  ({escape(out.note)})" if out.note else "")
            + (
                f"  [red]{escape(out.error.splitlines()[0])}[/red]"
                if out.error and out.status == "failed"
                else ""
            ),
            highlight=False,
            soft_wrap=self.plain,
        )


def _summary(name: str, outcomes: list[runner.Outcome], store: Store, wall: float) -> None:
    """The grid's last line: jobs by outcome, its wall time and, when jobs ran side by side,
    the sum of their own times (more than the wall time)."""
    by = {s: sum(o.status == s for o in outcomes) for s in ("done", "failed", "diverged")}
    busy = sum(o.seconds for o in outcomes)
    side_by_side = f" ({busy:.1f}s of job time side by side)" if busy > wall * 1.05 else ""
    console.print(
        f"{plain(name)}: ran {len(outcomes)} jobs in {wall:.1f}s{side_by_side} — "
        f"{by['done']} done, {by['failed']} failed, {by['diverged']} diverged. "
        f"Next: fedbench report --experiment {name} --plot bits-vs-accuracy"
        + ("" if store.url.endswith("results/fedbench.db") else f" --db {store.url}"),
        highlight=False,
        markup=False,
        soft_wrap=not console.is_terminal,
    )
    if by["failed"]:
        console.print(
            "see errors with: fedbench ls --status failed; fedbench show KEY", highlight=False
        )
