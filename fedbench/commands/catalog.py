"""`fedbench algorithms | compressors | datasets | models`: what a grid can name."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping

from rich.markup import escape

from fedbench.commands.common import FormatOption, check_format, console, one_line_errors
from fedbench.grid import COMMON
from fedbench.params import Param, Registry


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


def _emit(
    registries: list[tuple[str, Registry]], fmt: str, common: Mapping[str, Mapping[str, Param]]
) -> None:
    """List components; `common` holds the fields every job has, per grid section."""
    check_format(fmt, ("table", "json"))
    if fmt == "json":
        out: dict[str, object] = {
            "common": {sec: _param_json(fields) for sec, fields in common.items()},
        }
        for title, reg in registries:
            out[title] = [
                {"name": c.name, "summary": c.summary, "paper": c.paper, "kind": c.kind,
                 "requires": c.requires, "params": _param_json(c.params)}
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
            tags = " ".join(
                t
                for t in (c.kind, f"needs {c.requires} compressor" if c.requires != "any" else "")
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
def algorithms(fmt: FormatOption = "table") -> None:
    """List the algorithms, their papers and parameters ([algorithm] fields).

    Example: fedbench algorithms --format json
    """
    from fedbench.algorithms import ALGORITHMS

    _emit([("algorithms", ALGORITHMS)], fmt, {"algorithm": COMMON["algorithm"]})


@one_line_errors
def compressors(fmt: FormatOption = "table") -> None:
    """List the compressors, what they guarantee and their parameters ([compressor] fields).

    Example: fedbench compressors
    """
    from fedbench.compressors import COMPRESSORS

    _emit(
        [("compressors", COMPRESSORS)],
        fmt,
        {"compressor": COMMON["compressor"], "downlink": COMMON["downlink"]},
    )


@one_line_errors
def datasets(fmt: FormatOption = "table") -> None:
    """List datasets, partitions and models with their parameters ([task] fields).

    Example: fedbench datasets
    """
    from fedbench.data import DATASETS, PARTITIONS
    from fedbench.models import MODELS

    _emit(
        [("datasets", DATASETS), ("partitions", PARTITIONS), ("models", MODELS)],
        fmt,
        {"task": COMMON["task"], "experiment": COMMON["experiment"]},
    )
