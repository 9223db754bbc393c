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
    _absent,
    _label_order,
    _show,
    config_labels,
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
    bits_ok = {"up": ["bits_up"], "down": ["bits_down"], "total": ["bits_up", "bits_down"]}[bits]
    b = _bits(wide, runs, bits, per_client) if set(bits_ok) <= set(wide.columns) else None
    if b is not None:
        out["bits"] = b.groupby(level="run_id").last().reindex(ids)
    if target is not None:
        acc = _need(wide, "test_accuracy", f" (target accuracy {target:g})")
        hit = acc[acc >= target].reset_index().groupby("run_id")["round"].min()
        out["rounds_to_target"] = hit.reindex(ids).astype(float)
        if b is not None:
            at = pd.MultiIndex.from_arrays([hit.index, hit.to_numpy()], names=["run_id", "round"])
            at_hit = pd.Series(b.reindex(at).to_numpy(), index=hit.index)
            out["bits_to_target"] = at_hit.reindex(ids)
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
) -> pd.DataFrame:
    """One row per configuration label, aggregated over its seeds.

    Columns: label, seeds, status (only when some run is not done, e.g. "1 done, 1 running"),
    final_accuracy / best_accuracy mean and std (test_accuracy, when present), final_train_loss,
    final_test_loss and final_grad_norm_sq mean and std (when present), bits_mean (cumulative
    bits at the last round, see ``attrs["bits"]``), rounds (the most rounds any seed reached).
    With ``target_accuracy``: reached ("k/n" seeds whose test accuracy got to the target),
    rounds_to_target and bits_to_target mean and std over the seeds that reached it. Std is the
    sample std (NaN for one seed). Sorted by final accuracy (descending), else by final test or
    train loss (ascending), else in grid order.
    """
    _check(bits, BITS, "bits")
    labels = config_labels(runs, group_by)
    per_run = _per_run(runs, _wide(runs, metrics), target_accuracy, bits, per_client)
    per_run["label"] = labels.to_numpy()
    statuses = runs["status"].tolist() if "status" in runs.columns else ["done"] * len(runs)
    per_run["status"] = statuses
    show_status = any(s != "done" for s in statuses)
    stats = [c for c in per_run.columns if c.startswith(("final_", "best_"))]
    rows: list[dict[str, Any]] = []
    for label in _label_order(runs, labels):
        g = per_run[per_run["label"] == label]
        row: dict[str, Any] = {"label": label, "seeds": len(g)}
        if show_status:
            row["status"] = _status_counts(g["status"])
        for c in stats:
            row[f"{c}_mean"], row[f"{c}_std"] = g[c].mean(), g[c].std()
        if "bits" in g.columns:
            row["bits_mean"] = g["bits"].mean()
        row["rounds"] = g["rounds"].max()
        if target_accuracy is not None:
            reached = g["rounds_to_target"].notna()
            row["reached"] = f"{int(reached.sum())}/{len(g)}"
            for c in ("rounds_to_target", "bits_to_target"):
                if c in g.columns:
                    row[f"{c}_mean"], row[f"{c}_std"] = g[c].mean(), g[c].std()
        rows.append(row)
    table = pd.DataFrame(rows)
    table["rounds"] = table["rounds"].astype("Int64")
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
    table.attrs["bits"] = bits_axis_label(bits, per_client)
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
    if "bits" in col:
        return f"{f:.1e}"
    if "accuracy" in col:
        return f"{f:.3f}"
    if f.is_integer() and (isinstance(v, (int, np.integer)) or "round" in col or col == "seeds"):
        return str(int(f))
    if "round" in col:
        return f"{f:.1f}"
    return f"{f:.2g}" if std else f"{f:.4g}"


class _Cells(NamedTuple):
    headers: list[str]
    right: list[bool]  # right-align (numbers)
    rows: list[list[str]]


def _cells(table: pd.DataFrame, pm: str, escape: Callable[[str], str]) -> _Cells:
    """Display cells: X_mean/X_std pairs merged into one "mean ± std" column named X."""
    cols = [str(c) for c in table.columns]
    merged: list[tuple[str, str, str | None]] = []  # (header, value column, std column)
    for c in cols:
        base = c.removesuffix("_mean")
        if c.endswith("_std") and f"{c.removesuffix('_std')}_mean" in cols:
            continue
        std = f"{base}_std" if c.endswith("_mean") and f"{base}_std" in cols else None
        merged.append((base if c.endswith("_mean") else c, c, std))
    headers = [escape(h.replace("_", " ")) for h, _, _ in merged]
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


def _bits_note(table: pd.DataFrame) -> str:
    """The note naming the bits columns' unit, e.g. "bits: uplink bits per client (cumulative)"."""
    what = table.attrs.get("bits")
    has_bits = any("bits" in str(c) for c in table.columns)
    return f"bits: {what}" if what and has_bits else ""


def _rich(table: pd.DataFrame, title: str) -> str:
    cells = _cells(table, " ± ", lambda s: s)
    caption = _bits_note(table)
    t = Table(title=title or None, caption=caption or None, box=box.SIMPLE_HEAVY)
    for h, r in zip(cells.headers, cells.right, strict=True):
        t.add_column(Text(h), justify="right" if r else "left", no_wrap=True)
    for row in cells.rows:
        t.add_row(*(Text(c) for c in row))
    widths = [len(h) for h in cells.headers]
    for row in cells.rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    width = max(sum(widths) + 3 * len(widths) + 4, len(title) + 4, 40)
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None, force_terminal=False, highlight=False).print(
        t
    )
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()).lstrip("\n")


def _markdown(table: pd.DataFrame, title: str) -> str:
    cells = _cells(table, " ± ", lambda s: s.replace("|", "\\|"))
    lines = [f"**{title}**", ""] if title else []
    lines.append("| " + " | ".join(cells.headers) + " |")
    lines.append("| " + " | ".join("---:" if r else "---" for r in cells.right) + " |")
    lines += ["| " + " | ".join(row) + " |" for row in cells.rows]
    if _bits_note(table):
        lines += ["", _bits_note(table)]
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
    notes = [f"% {_bits_note(table)}"] if _bits_note(table) else []
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


def render(table: pd.DataFrame, fmt: str, title: str = "") -> str:
    """A table as text: "table" (rich), "markdown", "csv", "json" or "latex".

    table, markdown and latex are for people: X_mean/X_std columns become one "mean ± std" cell
    (accuracies 0.912 ± 0.004, bits 1.3e+07, missing values "-"). csv and json are for scripts:
    raw numbers, every column, json as a list of records with NaN as null; they ignore the
    title. No trailing newline.
    """
    _check(fmt, FORMATS, "format")
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
        text = _rich(table, title)
    return text.rstrip("\n")
