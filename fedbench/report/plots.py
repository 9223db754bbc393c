"""Comparison plots (DESIGN §7). The only module that imports matplotlib: it draws on a bare
``Figure`` with the Agg canvas, so it never touches pyplot's global state or the process-wide
backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fedbench.report.frame import _check, bits_axis_label, bits_convention, curves
from fedbench.report.labels import (
    BAND,
    BITS,
    MISSING,
    PLOTS,
    ReportError,
    _absent,
    _label_order,
    _show,
    config_labels,
)

# --------------------------------------------------------------------------- plots


class _Kind(NamedTuple):
    x: str
    ys: tuple[str, ...]  # metric to plot, then fallbacks
    log_y: bool


KINDS: dict[str, _Kind] = {
    "bits-vs-accuracy": _Kind("bits", ("test_accuracy",), False),
    "rounds-vs-accuracy": _Kind("round", ("test_accuracy",), False),
    "bits-vs-loss": _Kind("bits", ("train_loss", "test_loss"), False),
    "rounds-vs-loss": _Kind("round", ("train_loss", "test_loss"), False),
    "wall-vs-accuracy": _Kind("wall", ("test_accuracy",), False),
    "bits-vs-gradnorm": _Kind("bits", ("grad_norm_sq",), True),
    "time-vs-accuracy": _Kind("time", ("test_accuracy",), False),
    "time-vs-loss": _Kind("time", ("train_loss", "test_loss"), False),
}
Y_LABELS = {
    "test_accuracy": "test accuracy",
    "train_loss": "train loss",
    "test_loss": "test loss",
    "grad_norm_sq": "squared gradient norm ‖∇f(x)‖²",
}
LINESTYLES: tuple[Any, ...] = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))


def _x_label(x: str, bits: str, per_client: bool, convention: str = "") -> str:
    if x == "round":
        return "round"
    if x == "wall":
        return "wall-clock time (s, cumulative)"
    if x == "time":
        return "simulated time (s, cumulative)"
    return bits_axis_label(bits, per_client, convention)


def _colors(n: int) -> list[Any]:
    """n distinct colours: tab10, tab20, then evenly spaced on turbo."""
    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["turbo"](i / (n - 1)) for i in range(n)]


def _component(runs: pd.DataFrame, section: str) -> list[str]:
    for col in (f"{section}.name", section):
        if col in runs.columns:
            return [MISSING if _absent(v) else _show(v) for v in runs[col].tolist()]
    return [MISSING] * len(runs)


def _styles(runs: pd.DataFrame, labels: pd.Series, order: list[str]) -> dict[str, tuple[Any, Any]]:
    """Per label (colour, linestyle): colour per algorithm and style per compressor when both
    vary and that tells every configuration apart; else a distinct colour per label."""
    pairs: dict[str, set[tuple[str, str]]] = {label: set() for label in order}
    for label, a, c in zip(
        labels.tolist(), _component(runs, "algorithm"), _component(runs, "compressor"), strict=True
    ):
        pairs[label].add((a, c))
    unique = [next(iter(p)) for p in pairs.values() if len(p) == 1]
    algos = list(dict.fromkeys(a for a, _ in unique))
    comps = list(dict.fromkeys(c for _, c in unique))
    if len(unique) == len(order) == len(set(unique)) and len(algos) > 1 and len(comps) > 1:
        colour = dict(zip(algos, _colors(len(algos)), strict=True))
        style = {c: LINESTYLES[i % len(LINESTYLES)] for i, c in enumerate(comps)}
        return {label: (colour[a], style[c]) for label, (a, c) in zip(order, unique, strict=True)}
    return {label: (col, "-") for label, col in zip(order, _colors(len(order)), strict=True)}


def _pick_y(runs: pd.DataFrame, metrics: pd.DataFrame, kind: str) -> str:
    names = set(metrics.loc[metrics["run_id"].isin(runs["run_id"]), "name"].astype(str))
    ys = KINDS[kind].ys
    for y in ys:
        if y in names:
            return y
    missing = " or ".join(repr(y) for y in ys)
    raise ReportError(f"{kind}: nothing to plot: no {missing} metric in these runs")


def figure(
    runs: pd.DataFrame,
    metrics: pd.DataFrame,
    kind: str,
    group_by: Sequence[str] | None = None,
    bits: str = "up",
    per_client: bool = True,
    title: str | None = None,
) -> Figure:
    """The figure :func:`plot` saves: per configuration the mean over seeds and a min–max band.

    Bits axes are log-scale, so is the y axis of bits-vs-gradnorm. Accuracy plots use
    test_accuracy, loss plots train_loss (test_loss when there is none). Uses no pyplot state.
    """
    _check(kind, PLOTS, "plot")
    _check(bits, BITS, "bits")
    spec = KINDS[kind]
    y = _pick_y(runs, metrics, kind)
    try:
        data = curves(runs, metrics, spec.x, y, bits=bits, per_client=per_client, group_by=group_by)
    except ReportError as e:
        raise ReportError(f"{kind}: {e}") from e
    if spec.x == "bits":
        data = data[data["x_mean"] > 0]  # a log axis cannot show round 0 (no bits sent yet)
    if data.empty:
        raise ReportError(f"{kind}: nothing to plot: no round has both {y!r} and its x value")
    labels = config_labels(runs, group_by)
    order = [label for label in _label_order(runs, labels) if label in set(data["label"])]
    styles = _styles(runs, labels, _label_order(runs, labels))
    fig = Figure(figsize=(7.0, 4.5), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label in order:
        d = data[data["label"] == label]
        colour, style = styles[label]
        marker = "o" if len(d) < 3 else None  # a one-point curve would be invisible
        ax.plot(
            d["x_mean"], d["y_mean"], color=colour, linestyle=style, marker=marker, markersize=3,
            linewidth=1.6, label=label,
        )  # fmt: skip
        ax.fill_between(d["x_mean"], d["y_min"], d["y_max"], color=colour, alpha=0.2, linewidth=0)
    if spec.x == "bits":
        ax.set_xscale("log")
    if spec.log_y:
        ax.set_yscale("log")
    ax.set_xlabel(_x_label(spec.x, bits, per_client, bits_convention(runs, bits)))
    ax.set_ylabel(Y_LABELS.get(y, y.replace("_", " ")))
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(title=f"mean over seeds, band: {BAND}", fontsize="small", title_fontsize="small")
    if title is None:
        exps: list[Any] = (
            list(runs["experiment"].dropna().unique()) if "experiment" in runs.columns else []
        )
        title = f"{exps[0]}: {kind}" if len(exps) == 1 else kind
    ax.set_title(title)
    return fig


def plot(
    runs: pd.DataFrame,
    metrics: pd.DataFrame,
    kind: str,
    out: Path,
    group_by: Sequence[str] | None = None,
    bits: str = "up",
    per_client: bool = True,
    title: str | None = None,
) -> Path:
    """Write :func:`figure` to ``out`` (format from its suffix), creating its directory."""
    fig = figure(
        runs, metrics, kind, group_by=group_by, bits=bits, per_client=per_client, title=title
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
