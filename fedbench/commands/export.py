"""`fedbench export`: the database tables as CSV for other tools."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedbench.commands.common import CommandError, DbOption, console, one_line_errors
from fedbench.store import Store

TABLES = ("experiments", "runs", "metrics")


@one_line_errors
def export(
    out: Annotated[Path, typer.Argument(help="directory to write TABLE.csv files into")] = Path(
        "results/export"
    ),
    db: DbOption = None,
    table: Annotated[
        list[str] | None,
        typer.Option("--table", "-t", help="experiments | runs | metrics (repeatable)"),
    ] = None,
) -> None:
    """Write database tables as CSV files.

    Example: fedbench export results/export --table runs --table metrics
    """
    for t in table or []:
        if t not in TABLES:
            raise CommandError(f"--table {t}: allowed: {', '.join(TABLES)}")
    store = Store(db)
    out.mkdir(parents=True, exist_ok=True)
    for t in table or TABLES:
        path = out / f"{t}.csv"
        store.export(t).to_csv(path, index=False)
        console.print(f"wrote {path}", highlight=False, markup=False)
