"""`fedbench check NAME`: the conformance report of an algorithm or compressor."""

from __future__ import annotations

from typing import Annotated

import typer

from fedbench.commands.common import CommandError, console, one_line_errors


@one_line_errors
def check(
    name: Annotated[str, typer.Argument(help="algorithm or compressor", show_default=False)],
    plugin: Annotated[
        list[str] | None,
        typer.Option("--plugin", help="load a plugin first: a .py file, module or grid"),
    ] = None,
) -> None:
    """Conformance report of an algorithm or compressor, built-in or plugin.

    One line per property; exit status 1 when one fails.

    Example: fedbench check fedprox --plugin methods/my_alg.py
    """
    from fedbench import conformance, plugins
    from fedbench.algorithms import ALGORITHMS
    from fedbench.compressors import COMPRESSORS
    from fedbench.grid import did_you_mean

    plugins.load_specs(plugin or [])
    if name not in ALGORITHMS and name not in COMPRESSORS:
        hint = did_you_mean(name, [*ALGORITHMS, *COMPRESSORS])
        raise CommandError(f"{name}: no such algorithm or compressor{hint}")
    results = conformance.check(name)
    for r in results:
        console.print(r.line(), highlight=False, markup=False, soft_wrap=True)
    if not all(r.ok for r in results):
        raise typer.Exit(1)
