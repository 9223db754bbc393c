"""`fedbench validate GRID.toml`: expand and check a grid without running anything."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from fedbench.commands.common import (
    CommandError,
    FormatOption,
    check_format,
    console,
    emit_rows,
    one_line_errors,
)


@one_line_errors
def validate(
    grid: Annotated[Path, typer.Argument(help="grid file (TOML)", show_default=False)],
    fmt: FormatOption = "table",
    data: Annotated[
        bool, typer.Option(help="also load every dataset/partition and build every model")
    ] = True,
    no_plugins: Annotated[
        bool, typer.Option("--no-plugins", help="refuse a grid that names plugins (code)")
    ] = False,
) -> None:
    """Check a grid (names, types, ranges, algorithm × compressor, data) and list its jobs.

    Example: fedbench validate experiments/quickstart.toml --format json
    """
    from fedbench import grid as gridlib
    from fedbench import runner
    from fedbench.memory import memory_lines

    check_format(fmt, ("table", "json", "csv"))
    if no_plugins:
        from fedbench import plugins

        plugins.forbid()
    g = gridlib.load(grid)
    if data:
        problems = runner.preflight(g.jobs, str(grid))
        if problems:
            raise CommandError(*problems)
    labels = gridlib.job_labels(g.jobs)
    rows = [
        {
            "key": j.key,
            "job": labels[j.key],
            "seed": j.seed,
            "algorithm": j.algorithm,
            "compressor": j.compressor,
            "dataset": j.dataset,
            "model": j.model,
        }
        for j in g.jobs
    ]
    if fmt == "json":
        out = {
            "grid": str(grid),
            "experiment": g.name,
            "jobs": len(g.jobs),
            "configurations": len(set(labels.values())),
            "seeds": sorted({j.seed for j in g.jobs}),
            "ignored": {k: sorted(v) for k, v in g.ignored.items()},
            "notes": g.notes,
            "job_list": [
                {**r, "config": gridlib.run_config(j)} for r, j in zip(rows, g.jobs, strict=True)
            ],
        }
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return
    if fmt == "csv":
        emit_rows(rows, "csv")
        return
    per = Counter(labels.values())
    emit_rows(
        [{"configuration": k, "seeds": v} for k, v in per.items()],
        "table",
        title=f"{g.name}: {len(g.jobs)} jobs = {len(per)} configurations × seeds",
    )
    for k, who in sorted(g.ignored.items()):
        console.print(
            f"note: {k} is not used by {', '.join(sorted(who))} (dropped from those jobs)",
            highlight=False,
            markup=False,
        )
    for note in g.notes + (memory_lines(g.jobs) if data else []):
        console.print(f"note: {note}", highlight=False, markup=False)
    console.print(f"[green]ok[/green]: {escape(str(grid))} is valid", highlight=False)
