"""`fedbench ls`: runs (or experiments) in the database."""

from __future__ import annotations

import math
from typing import Annotated, Any

import typer

from fedbench.commands.common import (
    CommandError,
    DbOption,
    ExperimentOption,
    FormatOption,
    check_format,
    emit_rows,
    one_line_errors,
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
    store = Store(db)
    if experiments:
        frame = store.experiments_frame()
        emit_rows(_records(frame), fmt, title="experiments")
        return
    runs = store.runs_frame(experiment=experiment, status=status or None)
    if limit:
        runs = runs.tail(limit)
    finals = _final_metrics(store, [int(r) for r in runs["run_id"]]) if len(runs) else {}
    raw = fmt != "table"
    rows = []
    for r in _records(runs):
        f = finals.get(int(r["run_id"]), {})
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
                # numbers for scripts, rounded strings for people
                "test_accuracy": f.get("test_accuracy") if raw else _fmt(f.get("test_accuracy")),
                "bits_up": f.get("bits_up") if raw else _fmt(f.get("bits_up"), "{:.3g}"),
            }
        )
    emit_rows(rows, fmt, title=f"{len(rows)} runs" + (f" of {experiment}" if experiment else ""))


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
