"""`fedbench data fetch NAME | list`: download file datasets once into the cache directory."""

from __future__ import annotations

from typing import Annotated

import typer

from fedbench.commands.common import CommandError, console, emit_rows, one_line_errors

app = typer.Typer(
    help="Download file datasets once into a cache directory ($FEDBENCH_DATA, else "
    "~/.cache/fedbench/data); grids then name them without a path. Never run by a grid.\n\n"
    "Example: fedbench data fetch mnist cifar10",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)


@app.command("fetch")
@one_line_errors
def fetch(
    names: Annotated[
        list[str], typer.Argument(help="mnist, fashion_mnist, cifar10, cifar100, a9a, w8a")
    ],
    mirror: Annotated[
        str | None,
        typer.Option(
            help="base URL replacing the official directory of every file "
            "[default: $FEDBENCH_DATA_MIRROR, else the official sites]"
        ),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option(
            help="seconds one dataset's download may take in all; a partial file is "
            "kept and the next fetch resumes it"
        ),
    ] = 3600.0,
) -> None:
    """Download datasets (resumable, checksum-checked, size-capped) into the cache directory.

    Example: fedbench data fetch mnist cifar10
    """
    from fedbench import fetch as fetchlib

    for name in names:  # every name checked before any download
        if name not in fetchlib.SOURCES and name not in fetchlib.NOT_FETCHED:
            import difflib

            close = difflib.get_close_matches(name, list(fetchlib.SOURCES), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise CommandError(
                f"no dataset {name!r} to fetch{hint}; allowed: {', '.join(fetchlib.SOURCES)}"
            )
    if not timeout > 0 or timeout == float("inf"):
        raise CommandError(f"--timeout {timeout:g}: allowed: a positive number of seconds")
    for name in names:
        folder = fetchlib.fetch(name, mirror=mirror, say=_say, timeout_s=timeout)
        use = fetchlib.SOURCES[name].use.format(dir=folder)
        console.print(f"{name}: ready in {folder}; in a grid: {use}", highlight=False, markup=False)


def _say(message: str) -> None:
    console.print(f"  {message}", highlight=False, markup=False, soft_wrap=True)


@app.command("list")
@one_line_errors
def list_(
    fmt: Annotated[str, typer.Option("--format", "-f", help="table | json | csv")] = "table",
) -> None:
    """The datasets `fetch` knows, and whether each is in the cache.

    Example: fedbench data list
    """
    from fedbench import fetch as fetchlib

    if fmt not in ("table", "json", "csv"):
        raise CommandError(f"--format {fmt}: allowed: table, json, csv")
    rows = [
        {"dataset": n, "cached": str(fetchlib.cached(n) or ""), "files": len(s.files)}
        for n, s in fetchlib.SOURCES.items()
    ]
    rows += [{"dataset": n, "cached": "", "files": 0, "note": why}
             for n, why in fetchlib.NOT_FETCHED.items()]  # fmt: skip
    emit_rows(rows, fmt, title=f"cache: {fetchlib.cache_dir()}",
              columns=["dataset", "cached", "files", "note"])  # fmt: skip
