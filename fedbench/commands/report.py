"""`fedbench report`: comparison table over seeds and plots from the database."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from fedbench import report as rep
from fedbench.commands.common import (
    CommandError,
    DbOption,
    ExperimentOption,
    console,
    err_console,
    one_line_errors,
)
from fedbench.store import Store


def latest_experiment(store: Store) -> str:
    exps = store.experiments_frame()
    if exps.empty:
        raise CommandError(f"{store.url}: no experiments yet; run one with: fedbench run GRID.toml")
    return str(exps.sort_values("id")["name"].iloc[-1])


@one_line_errors
def report(
    db: DbOption = None,
    experiment: ExperimentOption = None,
    plot: Annotated[
        list[str] | None,
        typer.Option("--plot", "-p", help=f"plot(s) to write: {', '.join(rep.PLOTS)}"),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="plot file [default: results/plots/EXPERIMENT-PLOT.png]")
    ] = None,
    target_accuracy: Annotated[
        float | None, typer.Option(help="report rounds and bits to reach this test accuracy")
    ] = None,
    group_by: Annotated[
        str | None,
        typer.Option(
            help="comma-separated config fields defining a row, "
            "e.g. algorithm.name,compressor.ratio"
        ),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help=", ".join(rep.FORMATS))] = "table",
    bits: Annotated[str, typer.Option(help="bits axis and columns: up | down | total")] = "up",
    per_client: Annotated[
        bool,
        typer.Option("--per-client/--all-clients", help="divide bits by the number of clients"),
    ] = True,
) -> None:
    """Table of mean ± std over seeds per configuration, and comparison plots.

    Example: fedbench report -e quickstart --plot bits-vs-accuracy --target-accuracy 0.8
    """
    if bits not in ("up", "down", "total"):
        raise CommandError(f"--bits {bits}: allowed: up, down, total")
    store = Store(db)
    name = experiment or latest_experiment(store)
    runs = store.runs_frame(experiment=name)
    if runs.empty:
        known = ", ".join(store.experiments_frame()["name"].astype(str)) or "none"
        raise CommandError(f"--experiment {name}: no runs in {store.url}; experiments: {known}")
    metrics = store.metrics_frame([int(r) for r in runs["run_id"]])
    groups = [g.strip() for g in group_by.split(",")] if group_by else None
    table = rep.summary(
        runs,
        metrics,
        group_by=groups,
        target_accuracy=target_accuracy,
        bits=bits,
        per_client=per_client,
    )
    text = rep.render(table, fmt, title=name)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()
    plots = plot or []
    if len(plots) > 1 and out is not None:
        raise CommandError("--out names one file; give one --plot with it")
    for kind in plots:
        path = out or Path("results") / "plots" / f"{name}-{kind}.png"
        written = rep.plot(
            runs, metrics, kind, path, group_by=groups, bits=bits, per_client=per_client
        )
        # stdout stays machine-readable for --format json|csv: the note goes to stderr then
        out_console = console if fmt == "table" else err_console
        out_console.print(f"wrote {written}", highlight=False, markup=False)
