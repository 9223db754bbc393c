"""`fedbench algorithms | compressors | datasets | models`: what a grid can name."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Annotated

import typer
from rich.markup import escape

from fedbench.commands.common import (
    FormatOption,
    check_format,
    console,
    emit_rows,
    one_line_errors,
)
from fedbench.params import Component, Param, Registry


def _param_json(params: Mapping[str, Param]) -> dict[str, dict[str, object]]:
    return {
        k: {"default": p.default, "help": p.help, "allowed": p.allowed()} for k, p in params.items()
    }


def _params(params: Mapping[str, Param]) -> None:
    for k, p in params.items():
        console.print(
            f"    {k} = {escape(json.dumps(p.default))}  [dim]{escape(p.help)}; "
            f"{escape(p.allowed())}[/dim]",
            highlight=False,
        )


def _downlink(c: Component) -> list[str]:
    """The downlink kinds an algorithm admits (`extra["downlink"]`), as validation applies
    them; ["any"] without a restriction."""
    from fedbench.grid.resolution import downlink_kinds

    return list(downlink_kinds(c) or ["any"])


def _downlink_tag(c: Component) -> str:
    kinds = _downlink(c)
    return "" if kinds == ["any"] else f"{' or '.join(kinds)} downlink only"


PluginOption = Annotated[
    list[str] | None,
    typer.Option(
        "--plugin",
        help="also load a plugin: a .py file, a module, or a grid whose [experiment] plugins "
        "load (repeatable; installed fedbench.plugins entry points always load)",
    ),
]


def _load_plugins(specs: list[str] | None) -> None:
    from fedbench import plugins

    plugins.load_specs(specs or [])


def _emit(
    registries: list[tuple[str, Registry]],
    fmt: str,
    common: Mapping[str, Mapping[str, Param]],
    more: Mapping[str, object] | None = None,
) -> None:
    """List components; `common` holds the fields every job has, per grid section; `more`:
    further top-level entries of the JSON output (the table output prints them itself)."""
    check_format(fmt, ("table", "json", "csv"))
    if fmt == "csv":  # one row per parameter, components without parameters get one row
        rows: list[dict[str, object]] = [
            {"section": sec, "name": "(every job)", "kind": "", "summary": "", "param": k,
             "default": json.dumps(p.default), "allowed": p.allowed(), "help": p.help}
            for sec, fields in common.items()
            for k, p in fields.items()
        ]  # fmt: skip
        for title, reg in registries:
            for n in reg:
                c = reg[n]
                head = {"section": title, "name": n, "kind": c.kind, "summary": c.summary}
                params = [
                    {"param": k, "default": json.dumps(p.default), "allowed": p.allowed(),
                     "help": p.help}
                    for k, p in c.params.items()
                ] or [{"param": "", "default": "", "allowed": "", "help": ""}]  # fmt: skip
                rows += [{**head, **p} for p in params]
        emit_rows(rows, "csv")
        return
    if fmt == "json":
        out: dict[str, object] = {
            "common": {sec: _param_json(fields) for sec, fields in common.items()},
            **(more or {}),
        }
        for title, reg in registries:
            out[title] = [
                {"name": c.name, "summary": c.summary, "paper": c.paper, "kind": c.kind,
                 "requires": c.requires, "source": c.source or "built-in",
                 "params": _param_json(c.params),
                 # algorithms: the downlink kinds admitted (validation refuses the others)
                 **({"downlink": _downlink(c)} if reg.what == "algorithm" else {})}
                for c in (reg[n] for n in reg)
            ]  # fmt: skip
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return
    for sec, fields in common.items():
        console.rule(f"[bold]\\[{sec}] fields every job has")
        _params(fields)
    for title, reg in registries:
        console.rule(f"[bold]{title}")
        for name in reg:
            c = reg[name]
            tags = ", ".join(
                t
                for t in (
                    c.kind,
                    f"needs {c.requires} compressor" if c.requires != "any" else "",
                    _downlink_tag(c),
                    f"plugin {c.source}" if c.source else "",
                )
                if t
            )
            console.print(
                f"[bold cyan]{name}[/bold cyan]  {escape(c.summary)}"
                + (f"  [dim]({tags})[/dim]" if tags else ""),
                highlight=False,
            )
            if c.paper:
                console.print(f"    [dim]{escape(c.paper)}[/dim]", highlight=False)
            _params(c.params)


@one_line_errors
def algorithms(fmt: FormatOption = "table", plugin: PluginOption = None) -> None:
    """List the algorithms, their papers and parameters ([algorithm] fields).

    Example: fedbench algorithms --format json
    """
    from fedbench.algorithms import ALGORITHMS
    from fedbench.grid import COMMON

    _load_plugins(plugin)
    _emit([("algorithms", ALGORITHMS)], fmt, {"algorithm": COMMON["algorithm"]})


@one_line_errors
def compressors(fmt: FormatOption = "table", plugin: PluginOption = None) -> None:
    """List the compressors, what they guarantee and their parameters ([compressor] fields).

    Example: fedbench compressors
    """
    from fedbench.compressors import COMPRESSORS
    from fedbench.grid import COMMON

    _load_plugins(plugin)
    _emit(
        [("compressors", COMPRESSORS)],
        fmt,
        {"compressor": COMMON["compressor"], "downlink": COMMON["downlink"]},
    )


@one_line_errors
def datasets(
    fmt: FormatOption = "table",
    stats: Annotated[
        bool,
        typer.Option(
            "--stats",
            help="also build every built-in dataset and show its partition's heterogeneity "
            "(samples per client, classes per client, label TV distance and entropy); "
            "takes seconds (mnist1d is generated)",
        ),
    ] = False,
    clients: Annotated[
        int, typer.Option("--clients", min=1, help="clients of the --stats partitions")
    ] = 10,
    partition: Annotated[
        str | None,
        typer.Option(
            "--partition",
            help="partition of the --stats rows, with its default parameters "
            "[default: each dataset's default partition]",
        ),
    ] = None,
) -> None:
    """List datasets, partitions and models with their parameters ([task] fields).

    With --stats, each built-in dataset is also built with its default parameters, data_seed 0
    and test_fraction 0.2, split over --clients clients by its default partition (or
    --partition), and the heterogeneity of that split is shown.

    Example: fedbench datasets --stats --partition dirichlet --clients 20
    """
    from fedbench.data import DATASETS, PARTITIONS
    from fedbench.grid import COMMON
    from fedbench.models import MODELS

    rows = _heterogeneity_rows(clients, partition) if stats else []
    if stats and fmt == "csv":  # one table: the heterogeneity rows, every field
        emit_rows(rows, "csv", columns=list(dict.fromkeys(k for r in rows for k in r)))
        return
    _emit(
        [("datasets", DATASETS), ("partitions", PARTITIONS), ("models", MODELS)],
        fmt,
        {"task": COMMON["task"], "experiment": COMMON["experiment"]},
        {"heterogeneity": rows} if stats else None,
    )
    if stats and fmt == "table":
        console.rule(f"[bold]heterogeneity of the built-in datasets, {clients} clients")
        emit_rows([_compact(r) for r in rows], "table", columns=COMPACT)


COMPACT = ("dataset", "partition", "samples min/med/max", "classes", "label_tv", "entropy", "note")


def _compact(row: Mapping[str, object]) -> dict[str, object]:
    """A heterogeneity row in few columns (the JSON output keeps every field)."""
    out = {"dataset": row["dataset"], "partition": row["partition"]}
    if "error" in row:
        return {**out, "note": row["error"]}
    out["samples min/med/max"] = (
        f"{row['samples_min']}/{row['samples_median']:g}/{row['samples_max']}"
    )
    if "label_tv" not in row:
        return {**out, "note": row.get("note")}
    return {
        **out,
        "classes": f"{row['classes_per_client']:g}",
        "label_tv": f"{row['label_tv']:.3f}",
        "entropy": f"{row['label_entropy']:.3f}",
    }


def _heterogeneity_rows(clients: int, partition: str | None) -> list[dict[str, object]]:
    """One row per built-in dataset: its split's `fedbench.data.base.heterogeneity`."""
    from fedbench.data import DATASETS, DataError, load_federated
    from fedbench.grid import GridError, resolve

    rows: list[dict[str, object]] = []
    for name in DATASETS:
        if DATASETS[name].kind != "builtin":
            continue  # file datasets need their files: see `fedbench show RUN`
        given = {"dataset": name, "clients": clients, "data_seed": 0, "test_fraction": 0.2}
        if partition is not None:
            given["partition"] = partition
        if DATASETS[name].extra.get("sequences"):  # token sequences need a language model
            from fedbench.models import MODELS

            given["model"] = next(k for k in MODELS if MODELS[k].extra.get("sequences"))
        row: dict[str, object] = {"dataset": name, "partition": partition or ""}
        allowed = DATASETS[name].extra.get("partitions", ())
        if partition is not None and allowed and partition not in allowed:
            rows.append({**row, "error": "partition not applicable"})
            continue
        try:
            task = resolve({"task": given})[0]["task"]
            row["partition"] = task["partition"]
            fd = load_federated(task, seed=0)
            het = fd.heterogeneity()
            row.update({k: round(v, 3) if isinstance(v, float) else v for k, v in het.items()})
            if "label_tv" not in het:
                row["note"] = "sequence labels: sizes only"
        except (GridError, DataError) as e:
            row["error"] = str(e).splitlines()[0]
        rows.append(row)
    return rows
