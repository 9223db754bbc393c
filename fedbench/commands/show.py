"""`fedbench show RUN`: one run's configuration, status and metrics."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.markup import escape

from fedbench.commands.common import (
    DbOption,
    FormatOption,
    check_format,
    console,
    emit_rows,
    one_line_errors,
)
from fedbench.store import Store


@one_line_errors
def show(
    run: Annotated[
        str, typer.Argument(help="run id or a unique prefix of its key", show_default=False)
    ],
    db: DbOption = None,
    fmt: FormatOption = "table",
) -> None:
    """Show a run: status, error, resolved configuration and its final and best metrics.

    Example: fedbench show 3f2a9c
    """
    check_format(fmt, ("table", "json"))
    store = Store(db)
    info = store.get_run(run)
    metrics = store.metrics_frame([int(info["id"])])
    summary = []
    for name, grp in metrics.groupby("name"):
        grp = grp.sort_values("round")
        values = grp["value"]
        summary.append(
            {
                "metric": str(name),
                "final": float(values.iloc[-1]),
                "round": int(grp["round"].iloc[-1]),
                "min": float(values.min()),
                "max": float(values.max()),
            }
        )
    if fmt == "json":
        sys.stdout.write(
            json.dumps({"run": info, "metrics": summary}, indent=2, default=str) + "\n"
        )
        return
    head = {
        k: info.get(k)
        for k in (
            "id",
            "key",
            "status",
            "algorithm",
            "compressor",
            "dataset",
            "model",
            "seed",
            "started_at",
            "finished_at",
            "host",
            "device",
        )
    }
    for k, v in head.items():
        console.print(f"[bold]{k:>12}[/bold]  {escape(str(v))}", highlight=False)
    if info.get("error"):
        console.print(
            f"[bold red]{'error':>12}[/bold red]  {escape(info['error'])}", highlight=False
        )
    config = info.get("config") or {}
    for section, fields in config.items():
        if isinstance(fields, dict):
            console.print(f"[{section}]", style="bold", highlight=False, markup=False)
            for k, v in fields.items():
                console.print(f"  {k} = {json.dumps(v)}", highlight=False, markup=False)
    emit_rows(
        [
            {**r, "final": f"{r['final']:.6g}", "min": f"{r['min']:.6g}", "max": f"{r['max']:.6g}"}
            for r in summary
        ],
        "table",
        title="metrics",
    )
