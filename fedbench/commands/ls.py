"""`fedbench ls`: runs (or experiments) in the database."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape

from fedbench.commands.common import (
    CommandError,
    DbOption,
    ExperimentOption,
    FormatOption,
    check_format,
    console,
    emit_rows,
    one_line_errors,
    open_reader,
)

PAGE = 50  # runs a table shows by default: rendering 10⁴ rows takes rich tens of seconds


@one_line_errors
def ls(
    db: DbOption = None,
    experiment: ExperimentOption = None,
    status: Annotated[
        list[str] | None,
        typer.Option("--status", "-s", help="only runs with this status (repeatable)"),
    ] = None,
    experiments: Annotated[
        bool, typer.Option("--experiments", help="list experiments instead of runs")
    ] = False,
    limit: Annotated[
        int | None,
        typer.Option(
            help=f"show at most this many runs, the newest (0 = all; default: {PAGE} in a "
            "table, all with --format json|csv)",
            show_default=False,
        ),
    ] = None,
    fmt: FormatOption = "table",
) -> None:
    """List runs with their status, rounds and final accuracy (or experiments with --experiments).

    Example: fedbench ls --status failed --format json
    """
    check_format(fmt, ("table", "json", "csv"))
    from fedbench.store import RUN_COLUMNS, STATUSES, flatten_config

    for s in status or []:
        if s not in STATUSES:
            raise CommandError(f"--status {s}: allowed: {', '.join(STATUSES)}")
    with open_reader(db) as store:  # SQLite: the stdlib driver, read-only, no pandas
        if experiments:
            records = store.experiments_records()
        else:
            if limit is None:  # a table shows a page; json and csv list every run
                limit = PAGE if fmt == "table" else 0
            last = limit if limit > 0 else None  # the newest `limit`, read in SQL
            runs = store.runs_records(experiment=experiment, status=status or None, last=last)
            if limit < 0:
                runs = runs[-limit:]  # as pandas' tail(limit) always did for negative limits
            total = len(runs)
            if last is not None and len(runs) == last:
                total = store.count_runs(experiment=experiment, status=status or None)
            ids = [int(r["run_id"]) for r in runs]
            finals = store.final_metrics(ids, ["test_accuracy", "bits_up"]) if ids else {}
    if experiments:
        if fmt != "table":
            emit_rows(records, fmt, title="experiments")
            return
        rows = [
            {"id": r["id"], "name": r["name"], "runs": r["runs"], "done": r["done"],
             "failed": r["failed"], "diverged": r["diverged"],
             "to run": r["pending"] + r["running"],
             "created": f"{r['created_at']:%Y-%m-%d %H:%M}", "grid": r["grid_path"]}
            for r in records
        ]  # fmt: skip
        _table(rows, "experiments", list(rows[0]) if rows else ["id", "name"], note="")
        return
    rows = []
    for r in runs:
        f = finals.get(int(r["run_id"]), {})
        clients = flatten_config(r["config"] or {}, RUN_COLUMNS).get("task.clients")
        up = f.get("bits_up")
        rows.append(
            {
                "id": r["run_id"],
                "key": r["key"],
                "experiment": r["experiment"],
                "algorithm": r["algorithm"],
                "compressor": r["compressor"],
                "dataset": r["dataset"],
                "model": r["model"],
                "seed": r["seed"],
                "status": r["status"],
                # who runs it (lease holder "host:pid"), for running runs only
                "holder": r.get("lease_owner") if r["status"] == "running" else None,
                "rounds": _int(r.get("rounds_logged")),
                "test_accuracy": f.get("test_accuracy"),
                # the store counts bits summed over all clients; report shows per client
                "bits_up_all_clients": up,
                "bits_up_per_client": None if up is None or not clients else up / clients,
            }
        )
    title = f"{len(rows)} runs" + (f" of {experiment}" if experiment else "")
    if total > len(rows):
        title = f"the newest {len(rows)} of {total} runs" + (
            f" of {experiment}" if experiment else ""
        )
    if fmt != "table":
        emit_rows(rows, fmt, title=title)
        return
    many = len({r["experiment"] for r in rows}) > 1
    cols = ["id", "key", *(["experiment"] if many else []), "algorithm",
            "compressor", "seed", "status", "rounds", "acc", "up/client"]  # fmt: skip
    cells = [
        {**r, "key": str(r["key"])[:8], "acc": _fmt(r["test_accuracy"], "{:.3f}"),
         "up/client": _fmt(r["bits_up_per_client"], "{:.3g}")}
        for r in rows
    ]  # fmt: skip
    _table(
        cells,
        title,
        cols,
        note="acc: final test accuracy; up/client: cumulative uplink bits per client "
        "(--format json has the total over all clients, full keys and every field)"
        + (f"; --limit 0 lists all {total} runs" if total > len(rows) else ""),
    )


SHORT = {"experiment": 10, "algorithm": 12, "compressor": 12, "name": 16, "grid": 24}
NUMBERS = ("id", "seed", "rounds", "acc", "up/client", "runs", "done", "failed", "diverged",
           "to run")  # fmt: skip


def _table(rows: list[dict[str, Any]], title: str, cols: list[str], note: str) -> None:
    """Rows for people: the columns that fit 80 columns, long names cut with an ellipsis,
    never wrapped; --format json|csv has every field."""
    from rich import box
    from rich.table import Table

    from fedbench.report_options import printable

    # names come from the database, which may come from elsewhere: no terminal escapes
    t = Table(title=escape(printable(title)), box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False,
              show_edge=False,
              collapse_padding=True, header_style="bold")  # fmt: skip
    for c in cols:
        wide = max([len(c)] + [len(str(r.get(c) or "")) for r in rows])
        t.add_column(
            c,
            justify="right" if c in NUMBERS else "left",
            no_wrap=True,
            overflow="ellipsis",
            max_width=SHORT.get(c),
            # what squeezes first: the grid path, then long names; never numbers or keys
            min_width=None if c == "grid" else min(wide, SHORT.get(c, wide), 10),
        )
    for r in rows:
        t.add_row(*("" if r.get(c) is None else escape(printable(r[c])) for c in cols))
    console.print(t)
    if note:
        console.print(note, style="dim", highlight=False)


def _int(v: Any) -> int | None:
    return None if v is None else int(v)


def _fmt(v: float | None, spec: str = "{:.4f}") -> str | None:
    return None if v is None else spec.format(v)
