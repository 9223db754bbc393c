"""`fedbench ls`: runs (or experiments) in the database."""

from __future__ import annotations

import math
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
    open_store,
)
from fedbench.store import STATUSES, Store


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
    limit: Annotated[int, typer.Option(help="show at most this many runs (0 = all)")] = 0,
    fmt: FormatOption = "table",
) -> None:
    """List runs with their status, rounds and final accuracy (or experiments with --experiments).

    Example: fedbench ls --status failed --format json
    """
    check_format(fmt, ("table", "json", "csv"))
    for s in status or []:
        if s not in STATUSES:
            raise CommandError(f"--status {s}: allowed: {', '.join(STATUSES)}")
    store = open_store(db)
    if experiments:
        frame = store.experiments_frame()
        emit_rows(_records(frame), fmt, title="experiments")
        return
    runs = store.runs_frame(experiment=experiment, status=status or None)
    if limit:
        runs = runs.tail(limit)
    finals = _final_metrics(store, [int(r) for r in runs["run_id"]]) if len(runs) else {}
    rows = []
    for r in _records(runs):
        f = finals.get(int(r["run_id"]), {})
        clients = r.get("task.clients")
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
                "rounds": _int(r.get("rounds_logged")),
                "test_accuracy": f.get("test_accuracy"),
                # the store counts bits summed over all clients; report shows per client
                "bits_up_all_clients": up,
                "bits_up_per_client": None if up is None or not clients else up / clients,
            }
        )
    title = f"{len(rows)} runs" + (f" of {experiment}" if experiment else "")
    if fmt != "table":
        emit_rows(rows, fmt, title=title)
        return
    _table(rows, title, show_experiment=len({r["experiment"] for r in rows}) > 1)


def _table(rows: list[dict[str, Any]], title: str, show_experiment: bool) -> None:
    """The runs for people: short keys and the columns that fit 80 columns, numbers rounded,
    units named; --format json|csv has every field."""
    from rich import box
    from rich.table import Table

    t = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, show_edge=False,
              collapse_padding=True, header_style="bold")  # fmt: skip
    cols = ["id", "key", *(["experiment"] if show_experiment else []), "algorithm",
            "compressor", "seed", "status", "rounds", "acc", "up/client"]  # fmt: skip
    short = ("experiment", "algorithm", "compressor")
    for c in cols:
        t.add_column(
            c,
            justify="right" if c in ("id", "seed", "rounds", "acc", "up/client") else "left",
            no_wrap=True,
            overflow="ellipsis",
            max_width=(10 if c == "experiment" else 12) if c in short else None,
            min_width=None if c in short else len(c) if c != "key" else 8,
        )
    for r in rows:
        cells = {
            **r,
            "key": str(r["key"])[:8],
            "acc": _fmt(r["test_accuracy"], "{:.3f}"),
            "up/client": _fmt(r["bits_up_per_client"], "{:.3g}"),
        }
        t.add_row(*("" if cells.get(c) is None else escape(str(cells[c])) for c in cols))
    console.print(t)
    console.print(
        "acc: final test accuracy; up/client: cumulative uplink bits per client "
        "(--format json has the total over all clients, full keys and every field)",
        style="dim",
        highlight=False,
    )


def _final_metrics(store: Store, run_ids: list[int]) -> dict[int, dict[str, float]]:
    m = store.metrics_frame(run_ids, names=["test_accuracy", "bits_up"])
    out: dict[int, dict[str, float]] = {}
    last = m.sort_values("round").groupby(["run_id", "name"], as_index=False)["value"].last()
    for rid, name, value in zip(last["run_id"], last["name"], last["value"], strict=True):
        out.setdefault(int(rid), {})[str(name)] = float(value)
    return out


def _records(frame: Any) -> list[dict[str, Any]]:
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
        for r in frame.to_dict("records")
    ]


def _int(v: Any) -> int | None:
    return None if v is None else int(v)


def _fmt(v: float | None, spec: str = "{:.4f}") -> str | None:
    return None if v is None else spec.format(v)
