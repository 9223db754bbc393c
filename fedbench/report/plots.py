"""Comparison plots (DESIGN §7). The only module that imports matplotlib: it draws on a bare
``Figure`` with the Agg canvas, so it never touches pyplot's global state or the process-wide
backend.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import matplotlib
import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fedbench.report.frame import (
    _check,
    bits_axis_label,
    bits_convention,
    curves,
    logged_metrics,
)
from fedbench.report.labels import (
    BANDS,
    BITS,
    MISSING,
    PLOTS,
    ReportError,
    _absent,
    _label_order,
    _show,
    config_labels,
    shared_settings,
)

# --------------------------------------------------------------------------- plots


class _Kind(NamedTuple):
    x: str
    ys: tuple[str, ...]  # metric to plot, then fallbacks
    log_y: bool


MATPLOTLIB_VERSION = str(matplotlib.__version__)

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
LOG_Y = ("grad_norm_sq", "consensus_sq", "gap")  # log y when every value is positive
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
BAND_NAMES = {"minmax": "min–max", "std": "mean ± std", "ci95": "95% CI (t)", "none": "none"}
Y_LABELS = {
    "test_accuracy": "test accuracy",
    "train_loss": "train loss",
    "test_loss": "test loss",
    "grad_norm_sq": "squared gradient norm ‖∇f(x)‖²",
    "bits_up": "uplink bits (cumulative, all clients)",
    "bits_down": "downlink bits (cumulative, all clients)",
    "wall_s": "wall-clock time (s, cumulative)",
    "sim_time_s": "simulated time (s, cumulative)",
}
LINESTYLES: tuple[Any, ...] = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))


def _x_label(x: str, bits: str, per_client: bool, convention: str = "") -> str:
    if x in ("round", "rounds"):
        return "round"
    if x == "steps":
        return "inner steps (round × local steps)"
    if x == "wall":
        return "wall-clock time (s, cumulative)"
    if x == "time":
        return "simulated time (s, cumulative)"
    if x == "bits":
        return bits_axis_label(bits, per_client, convention)
    return _y_label(x)


def _y_label(y: str) -> str:
    return Y_LABELS.get(y, y.replace("_", " "))


def _x_short(x: str, bits: str) -> str:
    """The x axis in a title: "round", "downlink bits", "simulated time"."""
    if x == "bits":
        return {"up": "uplink bits", "down": "downlink bits", "total": "total bits"}[bits]
    short = {"round": "round", "rounds": "round", "steps": "inner steps", "wall": "wall-clock"}
    return short.get(x, "simulated time" if x == "time" else x.replace("_", " "))


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
    vary and that tells every configuration apart; else a distinct colour per label and the
    line styles in turn, so curves that coincide stay apart by style (and by marker)."""
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
    return {
        label: (col, LINESTYLES[i % len(LINESTYLES)])
        for i, (label, col) in enumerate(zip(order, _colors(len(order)), strict=True))
    }


def _pick_y(runs: pd.DataFrame, metrics: pd.DataFrame, kind: str) -> str:
    names = set(logged_metrics(runs, metrics))
    ys = KINDS[kind].ys
    for y in ys:
        if y in names:
            return y
    missing = " or ".join(repr(y) for y in ys)
    raise ReportError(f"{kind}: nothing to plot: no {missing} metric in these runs")


def plot_labels(runs: pd.DataFrame, group_by: Sequence[str] | None = None) -> pd.Series:
    """Per run its curve label: :func:`config_labels`, with "(diverged)" when every seed of the
    configuration diverged and "(k/n diverged)" when some did."""
    labels = config_labels(runs, group_by)
    if "status" not in runs.columns:
        return labels
    diverged = runs["status"].astype(str).eq("diverged").to_numpy()
    out = labels.copy()
    for label in set(labels):
        mask = (labels == label).to_numpy()
        k, n = int(diverged[mask].sum()), int(mask.sum())
        if k:
            out[mask] = f"{label} (diverged)" if k == n else f"{label} ({k}/{n} diverged)"
    return out


def band_limits(data: pd.DataFrame, band: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Lower and upper edge of the band over seeds per row of :func:`curves`' output, or None.

    "minmax": seed min and max; "std": mean ± sample std; "ci95": mean ± t(0.975, n−1)·std/√n
    (Student t, the 95% confidence interval of the mean); "none": no band. Rows with one seed
    get no width (NaN std -> the mean)."""
    _check(band, BANDS, "band")
    mean = data["y_mean"].to_numpy(dtype=float)
    if band == "none":
        return None
    if band == "minmax":
        return data["y_min"].to_numpy(dtype=float), data["y_max"].to_numpy(dtype=float)
    std = np.nan_to_num(data["y_std"].to_numpy(dtype=float), nan=0.0)
    if band == "ci95":
        from scipy import stats

        n = data["n_seeds"].to_numpy(dtype=float)
        t = np.where(n > 1, stats.t.ppf(0.975, np.maximum(n - 1, 1)), 0.0)
        std = t * std / np.sqrt(n)
    return mean - std, mean + std


def _band_title(data: list[pd.DataFrame], band: str) -> str:
    """The legend title: how many seeds the means are over and what the band is."""
    seeds = sorted({int(n) for d in data for n in d.groupby("label")["n_seeds"].max()})
    over = (
        "mean over seeds"
        if not seeds
        else (
            f"mean over {seeds[0]} seed{'s' if seeds[0] > 1 else ''}"
            if len(seeds) == 1
            else f"mean over {seeds[0]}–{seeds[-1]} seeds"
        )
    )
    if band == "none":
        return f"{over}, no band"
    if seeds and seeds[-1] == 1:
        return f"{over} (no band: one seed)"
    return f"{over}, band: {BAND_NAMES[band]}"


def _default_title(runs: pd.DataFrame, ys: Sequence[str], x: str, bits: str) -> str:
    exps: list[Any] = (
        list(runs["experiment"].dropna().unique()) if "experiment" in runs.columns else []
    )
    what = f"{' / '.join(_y_label(y).split(' (')[0] for y in ys)} vs {_x_short(x, bits)}"
    return f"{exps[0]}: {what}" if len(exps) == 1 else what


def _panel(
    ax: Any,
    runs: pd.DataFrame,
    metrics: pd.DataFrame,
    x: str,
    y: str,
    labels: pd.Series,
    styles: dict[str, tuple[Any, Any]],
    bits: str,
    per_client: bool,
    band: str,
    log_y: bool | None,
) -> pd.DataFrame:
    """Draw one metric against x on ``ax``: per label the mean line, a marker every few points
    (offset per curve, so coinciding curves stay visible), the band, and an × where each
    diverged run stopped. Returns the curves drawn."""
    data = curves(runs, metrics, x, y, bits=bits, per_client=per_client, labels=labels)
    if x == "bits":
        data = data[data["x_mean"] > 0]  # a log axis cannot show round 0 (no bits sent yet)
    if data.empty:
        raise ReportError(f"nothing to plot: no round has both {y!r} and its x value ({x})")
    order = [label for label in _label_order(runs, labels) if label in set(data["label"])]
    for i, label in enumerate(order):
        d = data[data["label"] == label]
        colour, style = styles[label]
        step = max(1, math.ceil(len(d) / 8))
        ax.plot(
            d["x_mean"], d["y_mean"], color=colour, linestyle=style,
            marker=MARKERS[i % len(MARKERS)], markevery=(i % step, step),
            # curves drawn first get bigger markers, every other one hollow: a curve that
            # coincides with a later one still shows around it
            markersize=7 - 3 * i / max(len(order) - 1, 1),
            fillstyle="full" if i % 2 == 0 else "none",
            linewidth=1.6, label=label,
        )  # fmt: skip
        edges = band_limits(d, band)
        if edges is not None and (d["n_seeds"] > 1).any():
            ax.fill_between(d["x_mean"], *edges, color=colour, alpha=0.2, linewidth=0)
    if "status" in runs.columns and runs["status"].astype(str).eq("diverged").any():
        gone = runs[runs["status"].astype(str) == "diverged"]
        per_run = pd.Series([str(r) for r in gone["run_id"]], index=gone.index)
        try:
            ends = curves(gone, metrics, x, y, bits=bits, per_client=per_client, labels=per_run)
        except ReportError:
            ends = pd.DataFrame(columns=["label", "x_mean", "y_mean"])
        if x == "bits":
            ends = ends[ends["x_mean"] > 0]
        last = ends.groupby("label", sort=False).tail(1)
        label_of = dict(zip(per_run, labels[gone.index], strict=True))
        for rid, xv, yv in zip(last["label"], last["x_mean"], last["y_mean"], strict=True):
            colour = styles[label_of[rid]][0]
            ax.scatter([xv], [yv], marker="x", s=60, color=colour, zorder=5, linewidths=2)
    if x == "bits":
        ax.set_xscale("log")
    positive = bool((data["y_mean"] > 0).all())
    if (log_y if log_y is not None else y in LOG_Y) and positive:
        ax.set_yscale("log")
    ax.set_xlabel(_x_label(x, bits, per_client, bits_convention(runs, bits) if x == "bits" else ""))
    ax.set_ylabel(_y_label(y))
    ax.grid(True, which="major", alpha=0.3)
    return data


def figure(
    runs: pd.DataFrame,
    metrics: pd.DataFrame,
    kind: str | None = None,
    group_by: Sequence[str] | None = None,
    bits: str = "up",
    per_client: bool = True,
    title: str | None = None,
    *,
    y: Sequence[str] | None = None,
    x: str | None = None,
    band: str = "minmax",
) -> Figure:
    """The figure :func:`plot` saves: per configuration the mean over seeds and a band.

    ``kind`` is one of :data:`PLOTS` (a named x and metric: accuracy plots use test_accuracy,
    loss plots train_loss, else test_loss); or give ``y`` (one or more logged metric names, one
    panel each) and ``x`` ("round", "bits", "wall", "time", "steps" or a logged metric; default
    "round"); an explicit ``x`` / ``y`` overrides the kind's. ``band`` is "minmax", "std",
    "ci95" or "none"; the legend title says which (and that there is none for one seed).

    Curves are labelled by the algorithm and the fields that differ between runs
    (:func:`plot_labels`), with what every run shares on a caption line under the axes; the
    legend sits outside the axes, right of the last panel. Each curve has its own marker and
    line style; a diverged run ends in an ×. Bits axes are log-scale, so is the y axis of
    squared norms (grad_norm_sq, consensus_sq) and gap. Uses no pyplot state.
    """
    _check(bits, BITS, "bits")
    _check(band, BANDS, "band")
    if kind is not None:
        _check(kind, PLOTS, "plot")
    elif not y:
        raise ReportError("a figure needs a plot kind or at least one metric (y)")
    spec = KINDS[kind] if kind is not None else None
    xv = x or (spec.x if spec is not None else "round")
    xv = "round" if xv == "rounds" else xv
    if y:
        ys = list(dict.fromkeys(y))
        logged = logged_metrics(runs, metrics)
        for name in ys:
            if name not in logged:
                raise ReportError(
                    f"--metric {name}: not logged by these runs; logged: {', '.join(logged)}"
                )
    else:
        assert kind is not None
        ys = [_pick_y(runs, metrics, kind)]
    labels = plot_labels(runs, group_by)
    styles = _styles(runs, labels, _label_order(runs, labels))
    n = len(ys)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(4.4 * cols + 2.8, 3.6 * rows + 0.9), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n)]
    drawn = []
    for ax, name in zip(axes, ys, strict=True):
        log_y = spec.log_y if spec is not None and not y else None
        try:
            drawn.append(
                _panel(ax, runs, metrics, xv, name, labels, styles, bits, per_client, band, log_y)
            )
        except ReportError as e:
            raise ReportError(f"{kind or name}: {e}") from e
        if n > 1:
            ax.set_title(_y_label(name).split(" (")[0], fontsize="medium")
    handles, names = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:  # one legend for all panels: every label once
        for h, name in zip(*ax.get_legend_handles_labels(), strict=True):
            if name not in names:
                handles.append(h)
                names.append(name)
    axes[-1].legend(
        handles, names, title=_band_title(drawn, band), fontsize="small",
        title_fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
    )  # fmt: skip
    if title is None:
        title = _default_title(runs, ys, xv, bits)
    if n == 1:
        axes[0].set_title(title)
    else:
        fig.suptitle(title)
    caption = shared_settings(runs)
    if caption:
        width = int(18 * (4.4 * cols + 2.8))
        fig.supxlabel(textwrap.fill(f"all runs: {caption}", width), fontsize="small")
    return fig


def plot(
    runs: pd.DataFrame,
    metrics: pd.DataFrame,
    kind: str | None,
    out: Path,
    group_by: Sequence[str] | None = None,
    bits: str = "up",
    per_client: bool = True,
    title: str | None = None,
    *,
    y: Sequence[str] | None = None,
    x: str | None = None,
    band: str = "minmax",
) -> Path:
    """Write :func:`figure` to ``out`` (format from its suffix), creating its directory."""
    fig = figure(
        runs, metrics, kind, group_by=group_by, bits=bits, per_client=per_client, title=title,
        y=y, x=x, band=band,
    )  # fmt: skip
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
