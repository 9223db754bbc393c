"""Comparison tables over seeds (:func:`summary`) and their renderings (:func:`render`)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from fedbench.report.frame import _bits, _check, _need, _wide, bits_axis_label
from fedbench.report.labels import (
    BITS,
    FORMATS,
    MISSING,
    ReportError,
    _absent,
    _label_order,
    _show,
    config_labels,
    pooled_fields,
)

# --------------------------------------------------------------------------- summary table


def _per_run(
    runs: pd.DataFrame,
    wide: pd.DataFrame,
    target: float | None,
    bits: str,
    per_client: bool,
) -> pd.DataFrame:
    """One row per run_id: final/best values, total bits, rounds reached, rounds/bits to target."""
    ids = pd.Index(runs["run_id"], name="run_id")
    by_run = wide.groupby(level="run_id")
    out = pd.DataFrame(index=ids)
    rounds = pd.Series(wide.index.get_level_values("round"), index=wide.index)
    out["rounds"] = rounds.groupby(level="run_id").max().reindex(ids)
    if "test_accuracy" in wide.columns:
        out["final_accuracy"] = by_run["test_accuracy"].last().reindex(ids)
        out["best_accuracy"] = by_run["test_accuracy"].max().reindex(ids)
    for name in ("train_loss", "test_loss", "grad_norm_sq"):
        if name in wide.columns:
            out[f"final_{name}"] = by_run[name].last().reindex(ids)
    if "client_acc_p10" in wide.columns:  # per_client_eval: the worst 10% of clients
        out["final_client_acc_p10"] = by_run["client_acc_p10"].last().reindex(ids)
    bits_ok = {"up": ["bits_up"], "down": ["bits_down"], "total": ["bits_up", "bits_down"]}[bits]
    b = _bits(wide, runs, bits, per_client) if set(bits_ok) <= set(wide.columns) else None
    if b is not None:
        out["bits"] = b.groupby(level="run_id").last().reindex(ids)
    time = wide["sim_time_s"].astype(float) if "sim_time_s" in wide.columns else None
    if time is not None:  # simulated seconds: asynchronous methods and [network] grids
        out["time"] = time.groupby(level="run_id").last().reindex(ids)
    if "epsilon" in wide.columns:  # DP: the privacy spent by the last evaluation
        out["epsilon"] = by_run["epsilon"].last().reindex(ids)
    if target is not None:
        acc = _need(wide, "test_accuracy", f" (target accuracy {target:g})")
        hit = acc[acc >= target].reset_index().groupby("run_id")["round"].min()
        out["rounds_to_target"] = hit.reindex(ids).astype(float)
        at = pd.MultiIndex.from_arrays([hit.index, hit.to_numpy()], names=["run_id", "round"])
        for name, series in (("bits_to_target", b), ("time_to_target", time)):
            if series is not None:
                at_hit = pd.Series(series.reindex(at).to_numpy(), index=hit.index)
                out[name] = at_hit.reindex(ids)
    return out


BUDGETS = ("bits", "time", "epsilon")
BUDGET_METRICS = ("test_accuracy", "test_loss", "train_loss")


def parse_budget(text: str) -> tuple[str, float]:
    """ "bits=1e6" -> ("bits", 1e6); refused in one line otherwise."""
    axis, eq, value = text.partition("=")
    axis = axis.strip()
    try:
        v = float(value)
    except ValueError:
        v = float("nan")
    if not eq or axis not in BUDGETS or not (v > 0 and np.isfinite(v)):
        raise ReportError(
            f"--budget {text}: allowed: AXIS=VALUE with AXIS one of "
            f"{', '.join(BUDGETS)} and VALUE a positive number, e.g. bits=1e6"
        )
    return axis, v


def budget_column(y: str, axis: str, value: float) -> str:
    """The table column of metric ``y`` at a budget: "test_accuracy_at_bits=1e+06"."""
    return f"{y}_at_{axis}={value:g}"


def at_budget(
    runs: pd.DataFrame,
    metrics: pd.DataFrame,
    axis: str,
    value: float,
    bits: str = "up",
    per_client: bool = True,
) -> dict[str, pd.Series]:
    """Per run the value of each evaluated metric (test accuracy, test and train loss) when
    the run had spent ``value`` of ``axis``: bits (cumulative, as the bits columns count
    them), time (simulated seconds) or epsilon (privacy spent), interpolated linearly
    between the two evaluations around the budget. NaN for a run whose evaluations do not
    reach the budget (it stopped before spending it) or that lacks the axis."""
    if axis not in BUDGETS:
        raise ReportError(f"budget axis {axis!r}: allowed: {', '.join(BUDGETS)}")
    ids = pd.Index(runs["run_id"], name="run_id")
    if runs.empty:
        return {}
    wide = _wide(runs, metrics)
    name = {"time": "sim_time_s", "epsilon": "epsilon"}.get(axis)
    if name is not None and name not in wide.columns:
        raise ReportError(f"--budget {axis}={value:g}: no run logged {name}"
                          + (" (give the grid a [network] section)" if axis == "time" else
                             " (the runs use no differential privacy)"))  # fmt: skip
    xs = _bits(wide, runs, bits, per_client) if axis == "bits" else wide[name].astype(float)
    out: dict[str, pd.Series] = {}
    for y in BUDGET_METRICS:
        if y not in wide.columns:
            continue
        vals: dict[int, float] = {}
        pair = pd.DataFrame({"x": xs, "y": wide[y].astype(float)}).dropna()
        pair = pair[np.isfinite(pair["x"]) & np.isfinite(pair["y"])]
        for rid, g in pair.groupby(level="run_id"):
            x, v = g["x"].to_numpy(), g["y"].to_numpy()
            ok = x[0] <= value <= x[-1] and bool(np.all(np.diff(x) >= 0))
            vals[int(rid)] = float(np.interp(value, x, v)) if ok else float("nan")
        out[budget_column(y, axis, value)] = pd.Series(vals, dtype=float).reindex(ids)
    return out


def _status_counts(statuses: Iterable[Any]) -> str:
    counts = pd.Series([str(s) for s in statuses]).value_counts()
    first = ["done", "running", "pending", "failed", "diverged"]
    order = [s for s in first if s in counts.index] + sorted(set(counts.index) - set(first))
    return ", ".join(f"{counts[s]} {s}" for s in order)


def summary(
    runs: pd.DataFrame,
    metrics: pd.DataFrame,
    group_by: Sequence[str] | None = None,
    target_accuracy: float | None = None,
    bits: str = "up",
    per_client: bool = True,
    baseline: str | None = None,
    at_common_round: bool = False,
    budgets: Sequence[tuple[str, float]] = (),
    labels: pd.Series | None = None,
) -> pd.DataFrame:
    """One row per configuration label, aggregated over its seeds.

    Numbers rest on comparable runs only (:func:`fedbench.report.select.comparable`): the
    finished ones, or with ``at_common_round`` every run cut at the last round all reached;
    ``seeds`` (``runs`` when configurations are pooled) counts them, ``status`` counts every
    run of the row, and a note names what was left out. ``budgets`` ((axis, value) pairs,
    axis bits | time | epsilon) add accuracy and loss at that budget per row
    (:func:`at_budget`).

    Columns: label, seeds, status (only when some run is not done, e.g. "1 done, 1 running"),
    final_accuracy / best_accuracy mean and std (test_accuracy, when present), final_train_loss,
    final_test_loss and final_grad_norm_sq mean and std (when present), bits_mean (cumulative
    bits at the last round, see ``attrs["bits"]``), rounds (the most rounds any seed reached).
    With ``target_accuracy``: reached ("k/n" seeds whose test accuracy got to the target),
    rounds_to_target and bits_to_target mean and std over the seeds that reached it. Std is the
    sample std (NaN for one seed). Sorted by final accuracy (descending), else by final test or
    train loss (ascending), else in grid order.

    An explicit ``group_by`` is strict (:func:`config_labels`); the varying fields it pools
    are named in ``attrs["notes"]``, and std is then over every run of the row. ``baseline``
    (a row label, or an algorithm name with one row) adds ``x_fewer_bits`` (baseline bits /
    row bits: to the target with ``target_accuracy``, else at the last round) and
    ``delta_final_accuracy`` (row − baseline). ``target_accuracy`` must be in (0, 1].
    ``labels`` (per run) overrides those of ``group_by`` (--select: rows are the compared
    groups, the selected fields their own columns).
    """
    _check(bits, BITS, "bits")
    check_target(target_accuracy)
    from fedbench.report.select import comparable

    if labels is None:
        labels = config_labels(runs, group_by)
    pooled = pooled_fields(runs, group_by)
    count = "runs" if pooled else "seeds"
    statuses = runs["status"].tolist() if "status" in runs.columns else ["done"] * len(runs)
    status_of = pd.Series([str(s) for s in statuses], index=runs.index)
    show_status = any(s != "done" for s in statuses)
    chosen = comparable(runs, metrics, at_common_round)
    used = chosen.runs
    per_run = (
        _per_run(used, _wide(used, chosen.metrics), target_accuracy, bits, per_client)
        if len(used)
        else pd.DataFrame(index=pd.Index([], name="run_id"), columns=["rounds"], dtype=float)
    )
    for axis, value in budgets:
        for name, col in at_budget(used, chosen.metrics, axis, value, bits, per_client).items():
            per_run[name] = col.reindex(per_run.index)
    label_of = dict(zip(runs["run_id"], labels, strict=True))
    per_run["label"] = [label_of[r] for r in per_run.index]
    stats = [c for c in per_run.columns if c.startswith(("final_", "best_")) or "_at_" in c]
    rows: list[dict[str, Any]] = []
    for label in _label_order(runs, labels):
        g = per_run[per_run["label"] == label]
        row: dict[str, Any] = {"label": label, count: len(g)}
        if show_status:
            row["status"] = _status_counts(status_of[(labels == label).to_numpy()])
        with np.errstate(invalid="ignore"):  # std of a diverged (inf) value: NaN
            for c in stats:
                row[f"{c}_mean"], row[f"{c}_std"] = g[c].mean(), g[c].std()
        if "bits" in g.columns:
            row["bits_mean"] = g["bits"].mean()
        if "time" in g.columns:
            row["time_mean"] = g["time"].mean()
        if "epsilon" in g.columns:
            row["epsilon_mean"] = g["epsilon"].mean()
        row["rounds"] = g["rounds"].max()
        if target_accuracy is not None:
            reached = g["rounds_to_target"].notna() if "rounds_to_target" in g else g["rounds"] < 0
            row["reached"] = f"{int(reached.sum())}/{len(g)}"
            for c in ("rounds_to_target", "bits_to_target", "time_to_target"):
                if c in g.columns:
                    row[f"{c}_mean"], row[f"{c}_std"] = g[c].mean(), g[c].std()
        rows.append(row)
    table = pd.DataFrame(rows)
    table["rounds"] = pd.to_numeric(table["rounds"]).astype("Int64")
    sort = next(
        (
            (c, c.endswith("accuracy_mean"))
            for c in ("final_accuracy_mean", "final_test_loss_mean", "final_train_loss_mean")
            if c in table.columns
        ),
        None,
    )
    if sort is not None:
        table = table.sort_values(sort[0], ascending=not sort[1], na_position="last", kind="stable")
    table = table.reset_index(drop=True)
    if baseline is not None:
        table = _relative(table, runs, labels, baseline, target_accuracy is not None)
    notes = [
        "± = sample std over "
        + ("the runs of a row (seeds and pooled configurations)" if pooled else "seeds")
    ]
    if chosen.note:
        notes.append(chosen.note)
    if pooled:
        notes.append(
            "pooled in rows: " + "; ".join(f"{c} ({', '.join(v)})" for c, v in pooled.items())
        )
    table.attrs["bits"] = bits_axis_label(bits, per_client)
    if target_accuracy is not None:
        table.insert(len(table.columns), "target_accuracy", float(target_accuracy))
        table.attrs["target"] = f"target: test accuracy ≥ {target_accuracy:g}"
        table.attrs["target_value"] = float(target_accuracy)
    if budgets:
        notes.append(
            "X at AXIS=B: X when the run had spent B, interpolated linearly between "
            "the two evaluations around B; - where a run stopped before B"
        )
    if "epsilon_mean" in table.columns:
        deltas = sorted(
            {_show(v) for v in runs.get("privacy.delta", pd.Series([])).tolist() if not _absent(v)}
        )
        at = f" at δ = {', '.join(deltas)}" if deltas else ""
        notes.append(f"ε: privacy spent by the last evaluation{at}")
    if "final_client_acc_p10_mean" in table.columns:
        notes.append(
            "worst 10% clients acc: 10th percentile of the clients' accuracies at the last "
            "evaluation (per_client_eval; each client's own test samples where split per "
            "client, else its training data)"
        )
    if "time_mean" in table.columns:
        notes.append("sim time: simulated seconds at the last round ([network] / async clock)")
    table.attrs["notes"] = notes
    return table


def check_target(target: float | None) -> None:
    """Test accuracy is a fraction: a target outside (0, 1] is refused with a hint."""
    if target is None or 0 < target <= 1:
        return
    hint = f"; did you mean {target / 100:g}?" if 1 < target <= 100 else ""
    raise ReportError(f"target accuracy {target:g}: test accuracy is a fraction in (0, 1]{hint}")


def baseline_row(table: pd.DataFrame, runs: pd.DataFrame, labels: pd.Series, name: str) -> int:
    """The row of ``table`` the user names: its exact label, else the one row whose runs all
    have ``algorithm.name`` == name; refused with the labels to choose from otherwise."""
    hits = table.index[table["label"] == name].tolist()
    if not hits and "algorithm.name" in runs.columns:
        algo = runs["algorithm.name"].astype(str).to_numpy()
        rows = [
            i for i, label in zip(table.index, table["label"], strict=True)
            if set(algo[(labels == label).to_numpy()]) == {name}
        ]  # fmt: skip
        hits = rows
    if len(hits) == 1:
        return int(hits[0])
    shown = "; ".join(str(v) for v in table["label"])
    if hits:
        which = "; ".join(str(table.at[i, "label"]) for i in hits)
        raise ReportError(f"baseline {name!r} matches {len(hits)} rows ({which}): give a label")
    import difflib

    close = difflib.get_close_matches(name, [str(v) for v in table["label"]], n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ReportError(f"baseline {name!r} is no row label or algorithm: rows: {shown}{hint}")


def _relative(
    table: pd.DataFrame, runs: pd.DataFrame, labels: pd.Series, name: str, to_target: bool
) -> pd.DataFrame:
    """Columns relative to the baseline row: x_fewer_bits and delta_final_accuracy."""
    base = baseline_row(table, runs, labels, name)
    col = "bits_to_target_mean" if to_target else "bits_mean"
    table = table.copy()
    if col in table.columns:
        ratio = float(table[col].iloc[base]) / table[col].astype(float)
        table["x_fewer_bits_to_target" if to_target else "x_fewer_bits"] = ratio
    if "final_accuracy_mean" in table.columns:
        acc = table["final_accuracy_mean"].astype(float)
        table["delta_final_accuracy"] = acc - acc.iloc[base]
    table.attrs["baseline"] = str(table.at[base, "label"])
    return table


# --------------------------------------------------------------------------- rendering


def _fmt(col: str, v: Any, std: bool = False) -> str:
    """One number as people read it: accuracy 0.912, bits 1.3e+07, rounds 12, loss 0.2345.

    A std (``std=True``) of a generic number keeps two significant digits: 1.167 ± 0.71.
    """
    if _absent(v):
        return MISSING
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        return _show(v)
    f = float(v)
    col = col.partition("_at_")[0]  # "test_accuracy_at_bits=1e+06": an accuracy
    if col.startswith("x_fewer"):
        return f"{f:.3g}×"
    if col.startswith("delta_"):
        return f"{f:+.3f}"
    if "bits" in col:
        return f"{f:.1e}"
    if "accuracy" in col or "client_acc" in col:
        return f"{f:.3f}"
    if f.is_integer() and (
        isinstance(v, (int, np.integer)) or "round" in col or col in ("seeds", "runs")
    ):
        return str(int(f))
    if "round" in col:
        return f"{f:.1f}"
    return f"{f:.2g}" if std else f"{f:.4g}"


HEADERS = {
    "x_fewer_bits_to_target": "× fewer bits to target",
    "x_fewer_bits": "× fewer bits",
    "delta_final_accuracy": "Δ final accuracy",
    "final_client_acc_p10": "worst 10% clients acc",
}


def _header(col: str, target: float | None) -> str:
    """A column's header: "rounds to acc ≥ 0.8" (the target in the header itself, so that a
    copied table still says it), "ε", "time (s, simulated)"."""
    if col in HEADERS:
        return HEADERS[col]
    if col == "epsilon":
        return "ε"
    if col == "time":
        return "sim time (s)"
    text = col.replace("_", " ").replace("epsilon", "ε")
    if target is not None and text.endswith("to target"):
        text = text.removesuffix("target") + f"acc ≥ {target:g}"
    return text.replace("time to acc", "sim s to acc")


class _Cells(NamedTuple):
    headers: list[str]
    right: list[bool]  # right-align (numbers)
    rows: list[list[str]]


def _cells(table: pd.DataFrame, pm: str, escape: Callable[[str], str]) -> _Cells:
    """Display cells: X_mean/X_std pairs merged into one "mean ± std" column named X."""
    cols = [str(c) for c in table.columns]
    merged: list[tuple[str, str, str | None]] = []  # (header, value column, std column)
    for c in cols:
        if c == "target_accuracy":  # for scripts; people read it in the title and headers
            continue
        base = c.removesuffix("_mean")
        if c.endswith("_std") and f"{c.removesuffix('_std')}_mean" in cols:
            continue
        std = f"{base}_std" if c.endswith("_mean") and f"{base}_std" in cols else None
        merged.append((base if c.endswith("_mean") else c, c, std))
    target = table.attrs.get("target_value")
    headers = [escape(_header(h, target)) for h, _, _ in merged]
    right = [
        pd.api.types.is_numeric_dtype(table[c]) and not pd.api.types.is_bool_dtype(table[c])
        for _, c, _ in merged
    ]
    rows: list[list[str]] = []
    for rec in table.itertuples(index=False, name=None):
        value = dict(zip(cols, rec, strict=True))
        row = []
        for _, c, s in merged:
            cell = escape(_fmt(c, value[c]))
            if s is not None and not _absent(value[c]) and not _absent(value[s]):
                cell += pm + escape(_fmt(c, value[s], std=True))
            row.append(cell)
        rows.append(row)
    return _Cells(headers, right, rows)


def _notes(table: pd.DataFrame) -> list[str]:
    """The lines under a table: what ± is, what rows pool, the bits unit, the baseline."""
    notes = list(table.attrs.get("notes", []))
    if table.attrs.get("target"):
        notes.insert(0, table.attrs["target"])
    what = table.attrs.get("bits")
    if what and any("bits" in str(c) for c in table.columns):
        notes.append(f"bits: {what}")
    if table.attrs.get("baseline"):
        notes.append(f"relative to: {table.attrs['baseline']}")
    return notes


# What goes first when a table is wider than the terminal: least important first.
DROP_ORDER = (
    "train_loss_at_",
    "test_loss_at_",
    "best_accuracy",
    "final_grad_norm_sq",
    "rounds",
    "final_test_loss",
    "time",
    "bits_down",
    "final_train_loss",
    "reached",
    "status",
)


def _widths(cells: _Cells) -> list[int]:
    widths = [len(h) for h in cells.headers]
    for row in cells.rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    return widths


def fit_columns(table: pd.DataFrame, width: int | None) -> tuple[pd.DataFrame, list[str]]:
    """``table`` without its least important columns (:data:`DROP_ORDER`) until its text
    rendering fits ``width`` characters, and the display names it dropped; the label column
    and the numbers asked for (targets, budgets, baselines) stay. ``width`` None: unchanged."""
    if width is None:
        return table, []
    dropped: list[str] = []
    out = table
    for base in DROP_ORDER:
        cells = _cells(out, " ± ", lambda s: s)
        if sum(_widths(cells)) + 3 * len(cells.headers) + 4 <= width:
            break
        cols = [
            c
            for c in out.columns
            if c in (base, f"{base}_mean", f"{base}_std")
            or (base.endswith("_at_") and c.startswith(base))
        ]
        if cols:
            out = out.drop(columns=cols)
            dropped.append(base.replace("_", " "))
    if dropped:
        out.attrs = {
            **table.attrs,
            "notes": [
                *table.attrs.get("notes", []),
                f"left out to fit {width} columns: {', '.join(dropped)} (--wide shows all)",
            ],
        }
    return out, dropped


def _rich(table: pd.DataFrame, title: str, fit: int | None = None) -> str:
    """The table for a terminal; wider than ``fit`` characters, its cells wrap."""
    cells = _cells(table, " ± ", lambda s: s)
    widths = _widths(cells)
    width = max(sum(widths) + 3 * len(widths) + 4, len(title) + 4, 40)
    wrap = fit is not None and width > fit
    t = Table(title=title or None, box=box.SIMPLE_HEAVY, expand=False)
    for h, r in zip(cells.headers, cells.right, strict=True):
        t.add_column(Text(h, overflow="fold"), justify="right" if r else "left", no_wrap=not wrap)
    for row in cells.rows:
        t.add_row(*(Text(c) for c in row))
    if wrap:
        assert fit is not None
        width = fit
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None, force_terminal=False, highlight=False).print(
        t
    )
    lines = [line.rstrip() for line in buf.getvalue().splitlines()]
    return "\n".join(lines + _notes(table)).strip("\n")


def _markdown(table: pd.DataFrame, title: str) -> str:
    cells = _cells(table, " ± ", lambda s: s.replace("|", "\\|"))
    lines = [f"**{title}**", ""] if title else []
    lines.append("| " + " | ".join(cells.headers) + " |")
    lines.append("| " + " | ".join("---:" if r else "---" for r in cells.right) + " |")
    lines += ["| " + " | ".join(row) + " |" for row in cells.rows]
    if _notes(table):
        lines += ["", *(f"{n}  " for n in _notes(table))]
    return "\n".join(lines)


_LATEX = {c: "\\" + c for c in "&%$#_{}"} | {
    "\\": r"\textbackslash{}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def _latex_escape(s: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in s)


def _latex(table: pd.DataFrame, title: str) -> str:
    cells = _cells(table, r" $\pm$ ", _latex_escape)
    spec = "".join("r" if r else "l" for r in cells.right)
    body = [
        f"\\begin{{tabular}}{{{spec}}}",
        r"\hline",
        " & ".join(cells.headers) + r" \\",
        r"\hline",
    ]
    body += [" & ".join(row) + r" \\" for row in cells.rows]
    body += [r"\hline", r"\end{tabular}"]
    notes = [f"% {n}" for n in _notes(table)]
    if not title:
        return "\n".join(notes + body)
    head = [r"\begin{table}", r"\centering", f"\\caption{{{_latex_escape(title)}}}"]
    return "\n".join(notes + head + body + [r"\end{table}"])


def _jsonable(v: Any) -> Any:
    if _absent(v):
        return None
    if isinstance(v, np.generic):
        return _jsonable(v.item())
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_jsonable(i) for i in v]
    if isinstance(v, (str, int, float, bool)):
        return v
    return str(v)


def render(table: pd.DataFrame, fmt: str, title: str = "", width: int | None = None) -> str:
    """A table as text: "table" (rich), "markdown", "csv", "json" or "latex".

    table, markdown and latex are for people: X_mean/X_std columns become one "mean ± std" cell
    (accuracies 0.912 ± 0.004, bits 1.3e+07, missing values "-"). csv and json are for scripts:
    raw numbers, every column, json as a list of records with NaN as null; they ignore the
    title. No trailing newline.
    """
    _check(fmt, FORMATS, "format")
    if title and table.attrs.get("target_value") is not None:
        title = f"{title} (target accuracy {table.attrs['target_value']:g})"
    if fmt == "csv":
        text = table.to_csv(index=False)
    elif fmt == "json":
        cols = [str(c) for c in table.columns]
        records = [
            {c: _jsonable(v) for c, v in zip(cols, rec, strict=True)}
            for rec in table.itertuples(index=False, name=None)
        ]
        text = json.dumps(records, indent=2, allow_nan=False)
    elif fmt == "markdown":
        text = _markdown(table, title)
    elif fmt == "latex":
        text = _latex(table, title)
    else:
        text = _rich(table, title, width)
    return text.rstrip("\n")
