"""`fedbench report`: comparison table over seeds, plots and an HTML page from the database.

Thin over :mod:`fedbench.report`: every option is checked before anything is printed or
written, then the table is printed and the figures saved.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple

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
    where: Annotated[
        list[str] | None,
        typer.Option(
            "--where",
            "-w",
            help="only runs with FIELD=VALUE[,VALUE] (repeatable: all must hold); any config "
            "field, per-run column or status, e.g. --where compressor.name=topk,identity",
        ),
    ] = None,
    at_common_round: Annotated[
        bool,
        typer.Option(
            help="compare every run (unfinished too) at the last round all of them reached "
            "[default: finished runs only]"
        ),
    ] = False,
    all_runs: Annotated[
        bool,
        typer.Option(help="keep runs the experiment's current grid file no longer produces"),
    ] = False,
    budget: Annotated[
        list[str] | None,
        typer.Option(
            help="accuracy and loss at an equal budget, repeatable: bits=1e6 | time=100 "
            "(simulated s) | epsilon=4 (interpolated between evaluations)"
        ),
    ] = None,
    compare: Annotated[
        str | None,
        typer.Option(
            help="A,B: is row A better than row B? paired t-test over seeds (Welch when the "
            "seeds differ) and a bootstrap CI of the difference of final test accuracy; "
            "with --baseline and no --compare value, use 'baseline' to test each row against it"
        ),
    ] = None,
    color_by: Annotated[
        str | None, typer.Option(help="one colour per value of this config field")
    ] = None,
    style_by: Annotated[
        str | None, typer.Option(help="one line style and marker per value of this field")
    ] = None,
    logy: Annotated[bool, typer.Option(help="log-scale y axis")] = False,
    xlim: Annotated[str | None, typer.Option(help="x axis limits LO,HI")] = None,
    ylim: Annotated[str | None, typer.Option(help="y axis limits LO,HI")] = None,
    smooth: Annotated[
        int, typer.Option(help="trailing moving average over K evaluations (said in the caption)")
    ] = 1,
    wide: Annotated[
        bool, typer.Option(help="keep every table column even when wider than the terminal")
    ] = False,
    select_fields: Annotated[
        list[str] | None,
        typer.Option(
            "--select",
            help="FIELD[,FIELD]: per compared group (algorithm, compressor, ...: whatever "
            "else differs) keep the value(s) of these fields whose mean over seeds is best on "
            "--by; test metrics and bits are reported at that choice, e.g. --select algorithm.lr",
        ),
    ] = None,
    by: Annotated[
        str | None,
        typer.Option(
            help="validation metric --select chooses on: val_accuracy | val_loss | "
            "val_perplexity ... [default: val_accuracy, else val_loss, else val_perplexity]; "
            "test and train metrics are refused"
        ),
    ] = None,
    at: Annotated[
        str,
        typer.Option(
            help="where --select reads --by: last (the last evaluation) | best (the best round "
            "of each mean curve: early stopping, test metrics at that round)"
        ),
    ] = "last",
) -> None:
    """Table of mean ± std over seeds per configuration, comparison plots and an HTML page.

    Example: fedbench report -e quickstart --plot bits-vs-accuracy --target-accuracy 0.8

    Any logged metric, one panel each: fedbench report --metric train_loss,test_loss --x steps

    Tuned on validation data: fedbench report --select algorithm.lr --by val_accuracy
    """
    # 1. options that need no data
    _allowed("--bits", bits, ("up", "down", "total"))
    if smooth < 1:
        raise CommandError(f"--smooth {smooth}: allowed: a whole number of evaluations ≥ 1")
    limits = {"--xlim": _limits("--xlim", xlim), "--ylim": _limits("--ylim", ylim)}
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
    # the experiment's grid is expanded (importing torch, through the registries) in a child
    # process while this one imports pandas and loads the runs: seconds saved on 2 cores
    job = None if "fedbench.grid" in sys.modules else start_grid_keys(db, experiment)
    try:
        fields = _split(select_fields)
        _check_select(fields, by, at, at_common_round)

        from fedbench import report as rep
        from fedbench.report import select
        from fedbench.report.safe import printable, slug
        from fedbench.report.tables import fit_columns, parse_budget

        budgets = [parse_budget(b) for b in _split(budget)]
        pairs = _pairs(compare, baseline)
        for clause in where or []:
            select.parse_where(clause)

        # 2. options checked against the data
        store = open_store(db)
        name = experiment or latest_experiment(store)
        runs, metrics = rep.load(store, name)
        # the selection step: --where, then runs the current grid no longer produces
        if where:
            runs = select.where(runs, where)
        current = grid_keys_of(job, name)
    finally:
        stop(job)
    runs, stale_note = select.drop_stale(store, name, runs, keep=all_runs, current=current)
    metrics = metrics[metrics["run_id"].isin(runs["run_id"])]
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
    # the choice on validation data (--select): the table, plots and page show only it
    # (with --at best, metrics end at each group's chosen round, in the table and plots)
    sel = None
    labels = None
    if fields:
        from fedbench.report.choice import choose, pick_by

        metric_by = pick_by(by, logged, printable(name))
        sel = choose(runs, metrics, fields, metric_by, at, at_common_round, groups)
        runs, metrics, labels = sel.runs, sel.metrics, sel.labels
    table = rep.summary(
        runs,
        metrics,
        group_by=groups,
        target_accuracy=target_accuracy,
        bits=bits,
        per_client=per_client,
        baseline=baseline,
        at_common_round=at_common_round,
        budgets=budgets,
        labels=labels,
    )
    if sel is not None:
        from fedbench.report.choice import with_choice

        table = with_choice(table, sel)
    if stale_note:
        table.attrs["notes"] = [*table.attrs["notes"], stale_note]
    shown_name = printable(name)  # a stored name may hold terminal escapes
    tables = [table]
    if pairs is not None:
        tables.append(
            _comparison(runs, metrics, groups, pairs, baseline, table, at_common_round, labels)
        )
    width = None if wide or fmt != "table" else _terminal_width()
    texts = [
        rep.render(
            fit_columns(t, width)[0], fmt, title=shown_name if i == 0 else "comparison", width=width
        )
        for i, t in enumerate(tables)
    ]
    text = printable_lines("\n\n".join(texts))
    from fedbench.report.labels import Shape

    xs = None if x is None else ("round" if x == "rounds" else x)
    figures: list[tuple[Path, str, Any]] = []  # built before output: a bad plot prints nothing
    shape = Shape(color_by, style_by, True if logy else None, limits["--xlim"],
                  limits["--ylim"], smooth)  # fmt: skip
    common: dict[str, Any] = {
        "group_by": groups,
        "bits": bits,
        "per_client": per_client,
        "band": band,
        "at_common_round": at_common_round,
        "shape": shape,
        "notes": [f"selection: {sel.protocol}"] if sel is not None else [],
        "labels": sel.curve_labels if sel is not None else None,
    }
    stem = slug(name)  # a stored name never picks the directory a file lands in
    for kind in kinds:
        suffix = kind if xs is None else f"{kind.split('-vs-')[1]}-vs-{x}"
        path = out or Path("results") / "plots" / f"{stem}-{slug(suffix)}.png"
        figures.append((path, kind, rep.figure(runs, metrics, kind, x=xs, **common)))
    if ys:
        what = slug(f"{'+'.join(ys)}-vs-{x or 'rounds'}")
        path = out or Path("results") / "plots" / f"{stem}-{what}.png"
        fig = rep.figure(runs, metrics, None, y=ys, x=xs or "round", **common)
        figures.append((path, "+".join(ys), fig))
    page = None
    if html is not None:
        page = rep.html_page(
            store, name, runs, metrics, table=table, group_by=groups, bits=bits,
            per_client=per_client, band=band, target_accuracy=target_accuracy,
            extra=[(kind, fig) for _, kind, fig in figures], at_common_round=at_common_round,
            shape=shape, tables=tables[1:], protocol=sel.protocol if sel is not None else "",
            labels=common["labels"],
        )  # fmt: skip

    # 3. output
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()
    # stdout stays machine-readable for --format json|csv: notes go to stderr then
    note = console if fmt == "table" else err_console
    from fedbench.report.safe import atomic_write

    for path, _, fig in figures:
        atomic_write(path, functools.partial(_save, fig, path.suffix.lstrip(".") or "png"))
        note.print(f"wrote {printable(path)}", highlight=False, markup=False)
    if page is not None:
        assert html is not None
        path = html / f"{stem}.html"
        atomic_write(path, functools.partial(Path.write_text, data=page, encoding="utf-8"))
        note.print(f"wrote {printable(path)}", highlight=False, markup=False)


# The child of `start_grid_keys`: reads {"grid_path", "grid_toml", "path"} (the parent's
# sys.path) on stdin and writes {"keys": [...] or null, "source": "..."}: select.grid_keys.
_CHILD = """
import json, sys
job = json.load(sys.stdin)
sys.path[:] = job["path"]
from fedbench.report.select import grid_keys
keys, source = grid_keys(job["grid_path"], job["grid_toml"])
json.dump({"keys": None if keys is None else sorted(keys), "source": source}, sys.stdout)
"""


class GridKeysJob(NamedTuple):
    experiment: str  # whose grid it expands
    process: subprocess.Popen[str]


def start_grid_keys(db: str | None, experiment: str | None) -> GridKeysJob | None:
    """`select.current_keys` of the experiment (the latest when None) started in a child
    process; None when its grid cannot be read here: the report then expands it itself and
    says what the store says."""
    from fedbench.commands.common import open_reader

    try:
        with open_reader(db) as reader:
            if experiment is None:
                names = [str(r["name"]) for r in reader.experiments_records()]
                if not names:
                    return None
                experiment = names[-1]  # by id, as latest_experiment
            grid = reader.experiment_grid(experiment)
    except Exception:  # the report reads the database again and says what is wrong
        return None
    if grid is None:
        return None
    process = subprocess.Popen(
        [sys.executable, "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True, encoding="utf-8",
    )  # fmt: skip
    job = GridKeysJob(experiment, process)
    try:
        assert process.stdin is not None
        payload = {"grid_path": grid[0], "grid_toml": grid[1], "path": sys.path}
        process.stdin.write(json.dumps(payload))
        process.stdin.close()
    except OSError:
        stop(job)
        return None
    return job


def grid_keys_of(job: GridKeysJob | None, experiment: str) -> tuple[set[str] | None, str] | None:
    """What the child found for `experiment`; None (expand in this process) without a job,
    for another experiment, or when the child failed."""
    if job is None or job.experiment != experiment:
        return None
    assert job.process.stdout is not None
    out = job.process.stdout.read()
    if job.process.wait() != 0:
        return None
    try:
        found = json.loads(out)
        keys = found["keys"]
        return (None if keys is None else {str(k) for k in keys}), str(found["source"])
    except (ValueError, KeyError, TypeError):
        return None


def stop(job: GridKeysJob | None) -> None:
    """The child ended: killed if it still runs (the report stopped before it was needed)."""
    if job is None:
        return
    if job.process.poll() is None:
        job.process.kill()
        job.process.wait()
    if job.process.stdout is not None:
        job.process.stdout.close()


def _check_select(fields: list[str], by: str | None, at: str, at_common_round: bool) -> None:
    """--select, --by and --at, before any data is read: a test or train metric is refused
    with the reason, --by and --at need --select, and the best round is each configuration's
    own, which --at-common-round would cut."""
    from fedbench.report.choice import AT, check_by

    _allowed("--at", at, AT)
    if not fields and (by is not None or at != "last"):
        raise CommandError(f"{'--by' if by is not None else '--at'} says how --select chooses: "
                           "give --select FIELD with it, e.g. --select algorithm.lr")  # fmt: skip
    if by is not None:
        check_by(by)
    if at == "best" and at_common_round:
        raise CommandError("--at best stops each configuration at its own best round: "
                           "leave out --at-common-round")  # fmt: skip


def _save(fig: Any, fmt: str, path: Path) -> None:
    fig.savefig(path, format=fmt)


def printable_lines(text: str) -> str:
    """Every line of ``text`` with its control characters spelled out, newlines kept."""
    from fedbench.report.safe import printable

    return "\n".join(printable(line) for line in text.split("\n"))


def _terminal_width() -> int | None:
    """The terminal's width (or $COLUMNS) the table should fit; None when stdout is no
    terminal and COLUMNS is unset (a file or a pipe keeps every column)."""
    import os
    import shutil

    if os.environ.get("COLUMNS", "").isdigit() or sys.stdout.isatty():
        return max(40, shutil.get_terminal_size().columns)
    return None


def _limits(option: str, value: str | None) -> tuple[float, float] | None:
    """ "LO,HI" -> (LO, HI) with LO < HI, finite; refused in one line otherwise."""
    if value is None:
        return None
    parts = [p.strip() for p in value.split(",")]
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise CommandError(f"{option} {value}: allowed: LO,HI (two numbers), e.g. 0,1") from None
    import math

    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise CommandError(f"{option} {value}: allowed: finite LO < HI")
    return lo, hi


def _pairs(compare: str | None, baseline: str | None) -> list[tuple[str, str]] | None:
    """--compare A,B -> [(A, B)]; --compare baseline (with --baseline): [] (each row against
    the baseline, filled in once rows are known); None without --compare."""
    if compare is None:
        return None
    if compare.strip() == "baseline":
        if baseline is None:
            raise CommandError("--compare baseline needs --baseline ROW")
        return []
    parts = [p.strip() for p in compare.split(",")]
    if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
        raise CommandError(f"--compare {compare}: allowed: A,B (two different row labels or "
                           "algorithms), or 'baseline' with --baseline")  # fmt: skip
    return [(parts[0], parts[1])]


def _comparison(
    runs: Any,
    metrics: Any,
    groups: list[str] | None,
    pairs: list[tuple[str, str]],
    baseline: str | None,
    table: Any,
    at_common_round: bool,
    labels: Any = None,
) -> Any:
    """The comparison table: the pairs asked for, or every row against the baseline;
    ``labels`` (per run) override those of ``groups`` (--select)."""
    from fedbench.report.labels import config_labels
    from fedbench.report.select import comparable
    from fedbench.report.stats import compare
    from fedbench.report.tables import baseline_row

    chosen = comparable(runs, metrics, at_common_round)
    if labels is None:
        labels = config_labels(runs, groups)
    if not pairs:
        assert baseline is not None
        base = str(table.at[baseline_row(table, runs, labels, baseline), "label"])
        pairs = [(str(lab), base) for lab in table["label"] if lab != base]
    return compare(chosen.runs, chosen.metrics, labels.loc[chosen.runs.index], pairs)
