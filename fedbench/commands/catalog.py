"""`fedbench algorithms | compressors | datasets | models`: what a grid can name."""

from __future__ import annotations

import json
import sys

from fedbench.commands.common import FormatOption, check_format, console, one_line_errors
from fedbench.params import Registry


def _emit(registries: list[tuple[str, Registry]], fmt: str) -> None:
    check_format(fmt, ("table", "json"))
    if fmt == "json":
        out = {
            title: [
                {
                    "name": c.name,
                    "summary": c.summary,
                    "paper": c.paper,
                    "kind": c.kind,
                    "requires": c.requires,
                    "params": {
                        k: {"default": p.default, "help": p.help, "allowed": p.allowed()}
                        for k, p in c.params.items()
                    },
                }
                for c in (reg[n] for n in reg)
            ]
            for title, reg in registries
        }
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return
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
                f"[bold cyan]{name}[/bold cyan]  {c.summary}"
                + (f"  [dim]({tags})[/dim]" if tags else ""),
                highlight=False,
            )
            if c.paper:
                console.print(f"    [dim]{c.paper}[/dim]", highlight=False)
            for k, p in c.params.items():
                console.print(
                    f"    {k} = {json.dumps(p.default)}  [dim]{p.help}; {p.allowed()}[/dim]",
                    highlight=False,
                )


@one_line_errors
def algorithms(fmt: FormatOption = "table") -> None:
    """List the algorithms, their papers and parameters ([algorithm] fields).

    Example: fedbench algorithms --format json
    """
    from fedbench.algorithms import ALGORITHMS

    _emit([("algorithms", ALGORITHMS)], fmt)


@one_line_errors
def compressors(fmt: FormatOption = "table") -> None:
    """List the compressors, what they guarantee and their parameters ([compressor] fields).

    Example: fedbench compressors
    """
    from fedbench.compressors import COMPRESSORS

    _emit([("compressors", COMPRESSORS)], fmt)


@one_line_errors
def datasets(fmt: FormatOption = "table") -> None:
    """List datasets, partitions and models with their parameters ([task] fields).

    Example: fedbench datasets
    """
    from fedbench.data import DATASETS, PARTITIONS
    from fedbench.models import MODELS

    _emit([("datasets", DATASETS), ("partitions", PARTITIONS), ("models", MODELS)], fmt)
