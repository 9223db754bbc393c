"""`fedbench report`: comparison table over seeds, plots and an HTML page from the database.

Thin over :mod:`fedbench.report`: every option is checked before anything is printed or
written, then the table is printed and the figures saved.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fedbench.commands.common import (
    CommandError,
    DbOption,
    ExperimentOption,
    console,
    err_console,
    one_line_errors,
    open_store,
)
from fedbench.report_options import BANDS, PLOTS, X_AXES

if TYPE_CHECKING:
    from fedbench.store import Store

X_CHOICES = tuple("rounds" if a == "round" else a for a in X_AXES)  # the CLI's spelling
TABLE_FORMATS = ("table", "markdown", "csv", "json", "latex")


def latest_experiment(store: Store) -> str:
    exps = store.experiments_frame()
    if exps.empty:
        raise CommandError(f"{store.url}: no experiments yet; run one with: fedbench run GRID.toml")
    return str(exps.sort_values("id")["name"].iloc[-1])


def _split(values: list[str] | None) -> list[str]:
    """Repeatable options that also take comma lists: ["a,b", "c"] -> ["a", "b", "c"]."""
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def _allowed(option: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        import difflib

        close = difflib.get_close_matches(value, allowed, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise CommandError(f"{option} {value}: allowed: {', '.join(allowed)}{hint}")


def check_target(target: float | None) -> None:
    """Test accuracy is a fraction: a target outside (0, 1] is refused with a hint."""
    if target is None or 0 < target <= 1:
        return
    hint = f"; did you mean {target / 100:g}?" if 1 < target <= 100 else ""
    raise CommandError(f"--target-accuracy {target:g}: test accuracy is a fraction in (0, 1]{hint}")


@one_line_errors
def report(
    db: DbOption = None,
    experiment: ExperimentOption = None,
    plot: Annotated[
        list[str] | None,
        typer.Option(
            "--plot",
            "-p",
            help=f"plot(s) to write, repeatable or comma-separated: {', '.join(PLOTS)}",
        ),
    ] = None,
    metric: Annotated[
        list[str] | None,
        typer.Option(
            "--metric",
            "-m",
            help="plot any logged metric(s) against --x, e.g. perplexity or "
            "test_accuracy,consensus_sq (one panel each, one figure)",
        ),
    ] = None,
    x: Annotated[
        str | None,
        typer.Option(
            "--x",
            help="x axis: rounds | bits | time (simulated) | wall | steps (inner steps: round "
            "x local_steps) | any logged metric, e.g. epsilon [default: rounds for --metric, "
            "the plot kind's own for --plot]",
        ),
    ] = None,
    band: Annotated[
        str,
        typer.Option(help="band over seeds: minmax | std | ci95 (Student t) | none"),
    ] = "minmax",
    out: Annotated[
        Path | None,
        typer.Option(help="plot file when one figure is written [default: results/plots/...]"),
    ] = None,
    target_accuracy: Annotated[
        float | None,
        typer.Option(help="report rounds and bits to reach this test accuracy, in (0, 1]"),
    ] = None,
    group_by: Annotated[
        str | None,
        typer.Option(
            help="comma-separated config fields defining a row, e.g. "
            "algorithm.name,compressor.ratio (strict: other varying fields are pooled and "
            "named; runs without a field form their own row)"
        ),
    ] = None,
    baseline: Annotated[
        str | None,
        typer.Option(
            help="a row label or algorithm name: adds x fewer bits (to the target) and "
            "delta accuracy columns relative to it"
        ),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help=", ".join(TABLE_FORMATS))] = "table",
    bits: Annotated[str, typer.Option(help="bits axis and columns: up | down | total")] = "up",
    per_client: Annotated[
        bool,
        typer.Option("--per-client/--all-clients", help="divide bits by the number of clients"),
    ] = True,
    html: Annotated[
        Path | None,
        typer.Option(
            help="also write one self-contained HTML page (plots embedded, tables, grid, "
            "host, failed runs) into this directory"
        ),
    ] = None,
) -> None:
    """Table of mean ± std over seeds per configuration, comparison plots and an HTML page.

    Example: fedbench report -e quickstart --plot bits-vs-accuracy --target-accuracy 0.8

    Any logged metric, one panel each: fedbench report --metric train_loss,test_loss --x steps
    """
    # 1. options that need no data
    _allowed("--bits", bits, ("up", "down", "total"))
    _allowed("--band", band, BANDS)
    _allowed("--format", fmt, TABLE_FORMATS)
    check_target(target_accuracy)
    kinds = list(dict.fromkeys(_split(plot)))
    for kind in kinds:
        _allowed("--plot", kind, PLOTS)
    ys = list(dict.fromkeys(_split(metric)))
    n_figures = len(kinds) + (1 if ys else 0)
    if out is not None and n_figures != 1:
        raise CommandError(
            f"--out names one file but {n_figures} figures were asked for; "
            "give one --plot (or only --metric) with it"
        )
    if html is not None and html.exists() and not html.is_dir():
        raise CommandError(f"--html {html}: is a file; give a directory for the page")
    if x is not None and not kinds and not ys:
        raise CommandError("--x sets the x axis of plots: give --plot or --metric with it")

    from fedbench import report as rep

    # 2. options checked against the data
    store = open_store(db)
    name = experiment or latest_experiment(store)
    runs, metrics = rep.load(store, name)
    logged = rep.logged_metrics(runs, metrics)
    if x is not None and x not in X_CHOICES and x != "round" and x not in logged:
        import difflib

        close = difflib.get_close_matches(x, [*X_CHOICES, *logged], n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise CommandError(
            f"--x {x}: allowed: {', '.join(X_CHOICES)}, or a logged metric: "
            f"{', '.join(logged)}{hint}"
        )
    for y in ys:
        if y not in logged:
            import difflib

            close = difflib.get_close_matches(y, logged, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise CommandError(
                f"--metric {y}: not logged by the runs of {name}; logged: {', '.join(logged)}{hint}"
            )
    groups = [g.strip() for g in group_by.split(",") if g.strip()] if group_by else None
    table = rep.summary(
        runs,
        metrics,
        group_by=groups,
        target_accuracy=target_accuracy,
        bits=bits,
        per_client=per_client,
        baseline=baseline,
    )
    text = rep.render(table, fmt, title=name)
    xs = None if x is None else ("round" if x == "rounds" else x)
    figures: list[tuple[Path, Any]] = []  # built before any output: a bad plot prints nothing
    common: dict[str, Any] = {
        "group_by": groups,
        "bits": bits,
        "per_client": per_client,
        "band": band,
    }
    for kind in kinds:
        suffix = kind if xs is None else f"{kind.split('-vs-')[1]}-vs-{x}"
        path = out or Path("results") / "plots" / f"{name}-{suffix}.png"
        figures.append((path, rep.figure(runs, metrics, kind, x=xs, **common)))
    if ys:
        path = out or Path("results") / "plots" / f"{name}-{'+'.join(ys)}-vs-{x or 'rounds'}.png"
        figures.append((path, rep.figure(runs, metrics, None, y=ys, x=xs or "round", **common)))
    page = None
    if html is not None:
        page = rep.html_page(
            store, name, runs, metrics, table=table, group_by=groups, bits=bits,
            per_client=per_client, band=band, target_accuracy=target_accuracy,
            extra=[fig for _, fig in figures],
        )  # fmt: skip

    # 3. output
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()
    # stdout stays machine-readable for --format json|csv: notes go to stderr then
    note = console if fmt == "table" else err_console
    for path, fig in figures:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
        note.print(f"wrote {path}", highlight=False, markup=False)
    if page is not None:
        assert html is not None
        html.mkdir(parents=True, exist_ok=True)
        path = html / f"{name}.html"
        path.write_text(page, encoding="utf-8")
        note.print(f"wrote {path}", highlight=False, markup=False)
