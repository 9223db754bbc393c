"""`fedbench show RUN`: one run's configuration, status and metrics."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from fedbench import provenance
from fedbench.commands.common import (
    DbOption,
    FormatOption,
    check_format,
    console,
    emit_rows,
    one_line_errors,
    open_reader,
)

if TYPE_CHECKING:
    from fedbench.store import MetricRow

# what the table says in place of the partition statistics without --partition
NOT_COMPUTED = "not computed: add --partition to rebuild the data split and describe it"


@one_line_errors
def show(
    run: Annotated[
        str, typer.Argument(help="run id or a unique prefix of its key", show_default=False)
    ],
    db: DbOption = None,
    fmt: FormatOption = "table",
    partition: Annotated[
        bool,
        typer.Option(
            "--partition",
            help="also rebuild the run's data split from its [task] section and print its "
            "heterogeneity (clients, samples per client, label skew); takes a while",
        ),
    ] = False,
) -> None:
    """Show a run: status, error, resolved configuration and final and best metrics (with
    --partition: the heterogeneity of its data split, rebuilt from the configuration).

    Example: fedbench show 3f2a9c --partition
    """
    check_format(fmt, ("table", "json", "csv"))
    with open_reader(db) as store:  # SQLite: the stdlib driver, read-only, no pandas
        info = store.get_run(run)
        summary = metric_summary(store.metrics_records([int(info["id"])]))
        prov = provenance.recorded(store, int(info["id"]))
    if fmt == "csv":  # the run's metrics summary, one row per metric, the run in each row
        emit_rows(
            [{"run_id": info["id"], "key": info["key"], "status": info["status"], **r}
             for r in summary],
            "csv",
        )  # fmt: skip
        return
    # rebuilding the split loads and partitions the dataset: seconds, not the milliseconds the
    # rest takes, so only on request (json: "partition" is null without --partition)
    stats = partition_stats(info.get("config") or {}) if partition else None
    if fmt == "json":
        sys.stdout.write(
            json.dumps(
                {"run": info, "metrics": summary, "partition": stats, "provenance": prov},
                indent=2,
                default=str,
            )
            + "\n"
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
    for label, text in provenance.lines(prov):  # commit, grid file, cpu, load
        console.print(f"[bold]{escape(label):>12}[/bold]  {escape(text)}", highlight=False)
    config = info.get("config") or {}
    for section, fields in config.items():
        if isinstance(fields, dict):
            console.print(f"[{section}]", style="bold", highlight=False, markup=False)
            for k, v in fields.items():
                console.print(f"  {k} = {json.dumps(v)}", highlight=False, markup=False)
    console.print("partition heterogeneity", style="bold", highlight=False)
    for line in partition_lines(stats) if stats is not None else [NOT_COMPUTED]:
        console.print(f"  {line}", highlight=False, markup=False)
    emit_rows(
        [
            {**r, "final": f"{r['final']:.6g}", "min": f"{r['min']:.6g}", "max": f"{r['max']:.6g}"}
            for r in summary
        ],
        "table",
        title="metrics",
    )


def metric_summary(rows: Sequence[MetricRow]) -> list[dict[str, Any]]:
    """One entry per metric name, by name: the value at its last round ("final", NaN kept),
    that round, and the min and max over the rounds ignoring NaN (NaN when every value is)."""
    by_name: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        by_name.setdefault(r.name, []).append((r.round, r.value))
    summary = []
    for name in sorted(by_name):
        series = sorted(by_name[name])
        finite = [v for _, v in series if not math.isnan(v)]
        summary.append(
            {
                "metric": name,
                "final": series[-1][1],
                "round": series[-1][0],
                "min": min(finite, default=math.nan),
                "max": max(finite, default=math.nan),
            }
        )
    return summary


def partition_stats(config: Mapping[str, Any]) -> dict[str, Any]:
    """The run's training split rebuilt from its [task] section and described by
    `FederatedDataset.heterogeneity`; {"error": ...} when it cannot be rebuilt (e.g. a file
    dataset that is not on this machine)."""
    from fedbench.data import DataError, load_federated

    task = config.get("task")
    if not isinstance(task, Mapping):
        return {"error": "the run has no [task] section"}
    try:
        return load_federated(task, seed=0).heterogeneity()
    except (DataError, KeyError, ValueError) as e:
        return {"error": f"cannot rebuild the data: {str(e).splitlines()[0]}"}


def partition_lines(stats: Mapping[str, Any]) -> list[str]:
    """`partition_stats` as a few human lines."""
    if "error" in stats:
        return [str(stats["error"])]
    lines = [
        f"clients = {stats['clients']}; samples per client min / median / max = "
        f"{stats['samples_min']} / {stats['samples_median']:g} / {stats['samples_max']}"
    ]
    if "label_tv" in stats:
        lines.append(
            f"classes per client (>= 1 sample) = {stats['classes_per_client']:.3g}; "
            f"label TV from the global mix = {stats['label_tv']:.3f} (0 = iid); "
            f"label entropy = {stats['label_entropy']:.3f} (1 = uniform over all classes)"
        )
    if "sampled_clients" in stats:  # labels computed on demand: counted over the first clients
        lines.append(f"(labels counted over the first {stats['sampled_clients']:,} clients)")
    return lines
