"""`fedbench run GRID.toml`: expand a grid, run the jobs that are not done, show progress."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated

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

from fedbench import executors, runner
from fedbench import grid as gridlib
from fedbench.commands.common import CommandError, DbOption, console, emit_rows, one_line_errors
from fedbench.store import Store, is_new_sqlite_file

TODO = ("pending", "running")


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
) -> None:
    """Run every job of a grid that is not done yet; results stream into the database.

    Example: fedbench run experiments/quickstart.toml --workers 2 --only algorithm.name=fedavg
    """
    if executor not in ("local", "ray"):
        raise CommandError(f"--executor {executor}: allowed: local, ray")
    n_workers = None if workers == "auto" else int(workers) if workers.isdigit() else 0
    if n_workers is not None and n_workers < 1:
        raise CommandError(f"--workers {workers}: allowed: auto or an integer >= 1")
    if threads < 0:
        raise CommandError(f"--threads {threads}: allowed: an integer >= 1 (0 = default)")
    if jobs_per_gpu < 1:
        raise CommandError(f"--jobs-per-gpu {jobs_per_gpu}: allowed: an integer >= 1")
    try:
        dev = runner.resolve_device(device)
    except ValueError as e:
        raise CommandError(str(e)) from None
    g = gridlib.load(grid)
    jobs = gridlib.filter_jobs(g.jobs, only or [])
    if not jobs:
        raise CommandError(f"{grid}: no job matches --only {' '.join(only or [])}")
    problems = runner.preflight(jobs, str(grid))
    if problems:
        raise CommandError(*problems)
    wanted = (*TODO, "failed") if rerun_failed else TODO
    labels = gridlib.job_labels(g.jobs)
    if dry_run:  # reads the database, writes nothing
        known = {} if is_new_sqlite_file(db) else Store(db).statuses([j.key for j in jobs])
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
    exp_id = store.upsert_experiment(g.name, str(grid), g.text)
    info = store.ensure_runs(exp_id, [runner.run_spec(j) for j in jobs])
    todo = [j for j in jobs if info[j.key].status in wanted]
    finished = Counter(info[j.key].status for j in jobs if j not in todo)
    others = ", ".join(f"{v} {k}" for k, v in sorted(finished.items()))
    if finished.get("failed"):
        others += ": --rerun-failed runs them again"
    console.print(
        f"{g.name}: {len(jobs)} jobs, {len(todo)} to run"
        + (f" ({others})" if others else "")
        + f" on {dev} → {store.url}",
        highlight=False,
        markup=False,
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
    console.print(f"running on {where}", highlight=False, markup=False)
    display = _Display(todo, labels)

    def go(on_event: executors.OnEvent) -> None:
        if executor == "ray":
            executors.run_ray(todo, store.url, dev, ray_address, on_event)
        elif len(slots) == 1:  # in this process
            slot = slots[0] if dev.type == "cpu" else executors.Slot(slots[0].device, 1)
            executors.run_in_process(todo, store.url, slot, on_event)
        else:
            executors.run_pool(todo, store.url, slots, on_event)

    try:
        with display:
            go(display.on_event)
    except KeyboardInterrupt:
        running = list(display.running)
        store.mark_interrupted([int(store.get_run(k)["id"]) for k in running])
        console.print(
            f"[yellow]interrupted[/yellow]: {len(running)} running job(s) marked pending; "
            "run the same command to resume"
        )
        raise typer.Exit(130) from None
    _summary(g.name, display.outcomes, store)


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
        elif e.kind == "round" and e.key in self.running:
            acc = e.metrics.get("test_accuracy")
            tail = f" acc {acc:.3f}" if acc is not None else ""
            self.bar.update(
                self.running[e.key], completed=e.round, description=self._name(e.key) + tail
            )
        elif e.kind == "end" and e.outcome is not None:
            task = self.running.pop(e.key, None)
            if task is not None:
                self.bar.remove_task(task)
            self._finished(e.outcome)
        self.bar.update(self.total, description=self._headline())

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
            + (
                f"  [red]{escape(out.error.splitlines()[0])}[/red]"
                if out.error and out.status == "failed"
                else ""
            ),
            highlight=False,
        )


def _summary(name: str, outcomes: list[runner.Outcome], store: Store) -> None:
    by = {s: sum(o.status == s for o in outcomes) for s in ("done", "failed", "diverged")}
    secs = sum(o.seconds for o in outcomes)
    console.print(
        f"{name}: ran {len(outcomes)} jobs in {secs:.1f}s — "
        f"{by['done']} done, {by['failed']} failed, {by['diverged']} diverged. "
        f"Next: fedbench report --experiment {name} --plot bits-vs-accuracy"
        + ("" if store.url.endswith("results/fedbench.db") else f" --db {store.url}"),
        highlight=False,
        markup=False,
    )
    if by["failed"]:
        console.print(
            "see errors with: fedbench ls --status failed; fedbench show KEY", highlight=False
        )
