"""Shared option aliases, output helpers and the one-line error handling of every command."""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import unicodedata
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from pathlib import Path

    from fedbench.grid import Grid
    from fedbench.store import Reads, Store

console = Console()
err_console = Console(stderr=True)

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db", help="SQLAlchemy URL or SQLite path [default: $FEDBENCH_DB or results/fedbench.db]"
    ),
]
FormatOption = Annotated[str, typer.Option("--format", "-f", help="table | json | csv")]
ExperimentOption = Annotated[
    str | None,
    typer.Option("--experiment", "-e", help="experiment name [default: the most recent]"),
]

F = TypeVar("F", bound=Callable[..., Any])

_ESCAPES = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|[@-Z\\-_])")


def plain(text: object) -> str:
    """`text` safe to print on a terminal: escape sequences removed, other control characters
    (NUL, BEL, carriage returns...) shown as "?" (names stored by older versions may hold
    them)."""
    out = _ESCAPES.sub("", str(text))
    return "".join("?" if unicodedata.category(c) == "Cc" and c not in "\n\t" else c for c in out)


class CommandError(Exception):
    """A problem the user can fix; printed as one line per entry, exit status 2."""

    def __init__(self, *lines: str) -> None:
        super().__init__("\n".join(lines))
        self.lines = list(lines)


# The project's errors a command turns into one line each: (module, class, how to get the
# lines). Looked up when an error is caught, in modules already imported (a module that raised
# is imported), so decorating a command imports nothing heavy.
_KNOWN_ERRORS = (
    ("fedbench.grid", "GridError", lambda e: list(e.problems)),
    ("fedbench.data.base", "DataError", lambda e: [str(e)]),
    ("fedbench.store.common", "StoreError", lambda e: [str(e)]),  # LeaseLostError too
    ("fedbench.report.labels", "ReportError", lambda e: [str(e)]),
    ("fedbench.plugins", "PluginError", lambda e: list(e.problems)),
)


def known_error_lines(e: BaseException) -> list[str] | None:
    """The one-line messages of a known fedbench error, None for any other exception."""
    if isinstance(e, CommandError):
        return e.lines
    for module, name, lines in _KNOWN_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(e, cls):
            return lines(e)
    return None


def one_line_errors(fn: F) -> F:
    """Turn the project's known errors into one red line each on stderr and exit status 2.
    The error classes are matched without importing their modules, so `--help` stays fast."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            lines = known_error_lines(e)
            if lines is None:
                raise
        for line in lines:
            err_console.print(f"[red]error:[/red] {escape(line)}", highlight=False, soft_wrap=True)
        raise typer.Exit(2)

    return wrapper  # type: ignore[return-value]


def open_store(db: str | None, write: bool = False) -> Store:
    """The database of a command that reads it (ls, show, report, export, prune): an SQLite
    file that does not exist is refused in one line and is not created. Without `write` it is
    opened read-only: nothing is written, an older database is not migrated."""
    from fedbench.store import Store, is_new_sqlite_file

    if is_new_sqlite_file(db):
        raise _no_such_file(db)
    return Store(db, read_only=not write)


def check_experiment_owner(store: Store, g: Grid, grid: Path) -> None:
    """Refuse a grid whose experiment name is already another grid file's: `run` would
    overwrite its stored grid text and `prune` would delete its runs. The same file (edited)
    or the same text elsewhere is fine. One rule for every command that acts on a grid's
    experiment."""
    from pathlib import Path

    prev = store.experiment_grid(g.name)
    if prev is None or prev[1] == g.text:
        return
    try:
        same = Path(prev[0]).resolve() == grid.resolve()
    except OSError:
        same = False
    if not same:
        raise CommandError(
            f"{grid}: experiment {plain(g.name)!r} in {store.url} belongs to grid file "
            f"{plain(prev[0])} (other content); give this grid another [experiment] name"
        )


def open_reader(db: str | None) -> Reads:
    """The database for ls and show: a plain SQLite file read-only through the stdlib driver
    (`store.SqliteReader`: no SQLAlchemy, no pandas, nothing written), anything else (or
    with $FEDBENCH_READER=sqlalchemy) through `open_store`. Both read with the same SQL."""
    from fedbench.store import (
        READER_ENV,
        open_sqlite_reader,
        plain_sqlite_path,
        resolve_url,
    )

    url = resolve_url(db)
    path = plain_sqlite_path(url)
    if path is None or os.environ.get(READER_ENV) == "sqlalchemy":
        return open_store(db)
    if not path.exists():
        raise _no_such_file(db)
    return open_sqlite_reader(url, path) or open_store(db)  # None: tables partly there


def _no_such_file(db: str | None) -> CommandError:
    from fedbench.store import resolve_url

    where = resolve_url(db).removeprefix("sqlite:///")
    return CommandError(
        f"--db {where}: no such database file (no experiments yet; "
        "run one with: fedbench run GRID.toml --db FILE)"
    )


def check_format(fmt: str, allowed: Sequence[str]) -> str:
    if fmt not in allowed:
        raise CommandError(f"--format {fmt}: allowed: {', '.join(allowed)}")
    return fmt


def emit_rows(
    rows: list[dict[str, Any]], fmt: str, title: str = "", columns: Sequence[str] | None = None
) -> None:
    """Print rows as a rich table, JSON (for scripts) or CSV."""
    cols = list(columns or (rows[0].keys() if rows else []))
    if fmt == "json":
        sys.stdout.write(json.dumps(rows, indent=2, default=str) + "\n")
        return
    if fmt == "csv":
        import csv

        w = csv.DictWriter(sys.stdout, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        return
    table = Table(title=escape(title) or None, show_lines=False, header_style="bold")
    for c in cols:
        table.add_column(escape(c), overflow="fold")
    for r in rows:
        table.add_row(*("" if r.get(c) is None else escape(plain(r.get(c))) for c in cols))
    console.print(table)
