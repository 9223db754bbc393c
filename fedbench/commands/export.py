"""`fedbench export`: the database tables as CSV or Parquet files for other tools."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedbench.commands.common import CommandError, DbOption, console, one_line_errors
from fedbench.store import Store

TABLES = ("experiments", "runs", "metrics")
FORMATS = ("csv", "parquet")


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
    fmt: Annotated[str, typer.Option("--format", "-f", help="csv | parquet")] = "csv",
) -> None:
    """Write database tables as CSV or Parquet files (Parquet needs pyarrow).

    Example: fedbench export results/export --format parquet --table runs --table metrics
    """
    for t in table or []:
        if t not in TABLES:
            raise CommandError(f"--table {t}: allowed: {', '.join(TABLES)}")
    if fmt not in FORMATS:
        raise CommandError(f"--format {fmt}: allowed: {', '.join(FORMATS)}")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise CommandError(
                "--format parquet needs pyarrow: pip install pyarrow (or 'fedbench[parquet]')"
            ) from None
    if out.exists() and not out.is_dir():
        raise CommandError(
            f"{out}: exists and is not a directory; allowed: a directory to write into"
        )
    store = Store(db)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CommandError(f"{out}: cannot create the directory ({e.strerror or e})") from None
    for t in table or TABLES:
        path = out / f"{t}.{fmt}"
        frame = store.export(t)
        if fmt == "csv":
            frame.to_csv(path, index=False)
        else:
            frame.to_parquet(path, index=False)
        console.print(f"wrote {path}", highlight=False, markup=False)
