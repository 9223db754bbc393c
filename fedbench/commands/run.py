"""`fedbench run GRID.toml`: expand a grid, run the jobs that are not done, show progress."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from fedbench import grid as gridlib
from fedbench import runner
from fedbench.commands.common import CommandError, DbOption, console, emit_rows, one_line_errors
from fedbench.store import Store, is_new_sqlite_file

TODO = ("pending", "running")


@one_line_errors
def run(
    grid: Annotated[Path, typer.Argument(help="grid file (TOML)", show_default=False)],
    db: DbOption = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    executor: Annotated[str, typer.Option(help="where jobs run: local (this process)")] = "local",
    workers: Annotated[int, typer.Option(help="parallel jobs (1 = in this process)")] = 1,
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

    Example: fedbench run experiments/quickstart.toml --only algorithm.name=fedavg
    """
    if executor != "local":
        raise CommandError(f"--executor {executor}: allowed: local")
    if workers != 1:
        raise CommandError(f"--workers {workers}: this version runs jobs in-process; allowed: 1")
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
    outcomes = _run_all(todo, store, dev, labels)
    _summary(g.name, outcomes, store)


def _run_all(
    jobs: list[gridlib.Job], store: Store, dev: torch.device, labels: dict[str, str]
) -> list[runner.Outcome]:
    counts = {"done": 0, "failed": 0, "diverged": 0}
    outcomes: list[runner.Outcome] = []
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(
        *columns, console=console, transient=True, disable=not console.is_terminal
    ) as bar:
        total = bar.add_task("jobs", total=len(jobs))
        current = bar.add_task("", total=1)
        for job in jobs:
            rounds = job.config["experiment"]["rounds"]
            bar.reset(current, total=rounds, description=f"  {labels[job.key]} seed {job.seed}")

            def progress(j: gridlib.Job, t: int, m: dict[str, float]) -> None:
                acc = f" acc {m['test_accuracy']:.3f}" if "test_accuracy" in m else ""
                bar.update(
                    current, completed=t, description=f"  {labels[j.key]} seed {j.seed}{acc}"
                )

            try:
                out = runner.execute(job, store, dev, progress)
            except KeyboardInterrupt:
                console.print(
                    "[yellow]interrupted[/yellow]: the running job is marked pending; "
                    "run the same command to resume"
                )
                raise typer.Exit(130) from None
            outcomes.append(out)
            counts[out.status] += 1
            bar.update(
                total,
                advance=1,
                description=(
                    f"jobs  done {counts['done']}  failed {counts['failed']}  "
                    f"diverged {counts['diverged']}"
                ),
            )
            acc = out.final.get("test_accuracy")
            style = {"done": "green", "failed": "red", "diverged": "yellow"}[out.status]
            console.print(
                f"[{style}]{out.status:8}[/{style}] {job.key}  {escape(labels[job.key])} "
                f"seed {job.seed}  {out.rounds} rounds  {out.seconds:.1f}s"
                + (f"  acc {acc:.3f}" if acc is not None else "")
                + (
                    f"  [red]{escape(out.error.splitlines()[0])}[/red]"
                    if out.error and out.status == "failed"
                    else ""
                ),
                highlight=False,
            )
    return outcomes


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
