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
    Shape,
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


Style = tuple[Any, Any, Any]  # (colour, line style, marker or None: one per curve in turn)


def _factor_styles(
    runs: pd.DataFrame, labels: pd.Series, order: list[str], shape: Shape
) -> dict[str, Style]:
    """Per label a colour from its value of ``shape.color_by`` and a line style and marker
    from its value of ``shape.style_by`` (values in grid order); a field not given keeps the
    default: a colour per label, the first line style, markers in turn."""
    from fedbench.report.labels import _resolve_group_by

    def values(field: str | None) -> dict[str, str] | None:
        if field is None:
            return None
        col = _resolve_group_by(runs, [field])[0]
        shown = [MISSING if _absent(v) else _show(v) for v in runs[col].tolist()]
        first: dict[str, str] = {}
        for label, v in zip(labels.tolist(), shown, strict=True):
            first.setdefault(label, v)
        return first

    by_colour, by_style = values(shape.color_by), values(shape.style_by)
    colours = list(dict.fromkeys(by_colour[lab] for lab in order)) if by_colour else order
    palette = dict(zip(colours, _colors(len(colours)), strict=True))
    kinds = list(dict.fromkeys(by_style[lab] for lab in order)) if by_style else []
    out: dict[str, Style] = {}
    for label in order:
        colour = palette[by_colour[label] if by_colour else label]
        if by_style:
            i = kinds.index(by_style[label])
            out[label] = (colour, LINESTYLES[i % len(LINESTYLES)], MARKERS[i % len(MARKERS)])
        else:
            out[label] = (colour, "-", None)
    return out


def _styles(runs: pd.DataFrame, labels: pd.Series, order: list[str]) -> dict[str, Style]:
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
        return {
            label: (colour[a], style[c], None) for label, (a, c) in zip(order, unique, strict=True)
        }
    return {
        label: (col, LINESTYLES[i % len(LINESTYLES)], None)
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


def plot_labels(
    runs: pd.DataFrame, group_by: Sequence[str] | None = None, labels: pd.Series | None = None
) -> pd.Series:
    """Per run its curve label: :func:`config_labels` (or ``labels``, per run), with
    "(diverged)" when every seed of the configuration diverged and "(k/n diverged)" when
    some did."""
    labels = config_labels(runs, group_by) if labels is None else labels.loc[runs.index]
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


def _band_title(data: list[pd.DataFrame], band: str, what: str = "seed") -> str:
    """The legend title: how many seeds (``what`` "run" when rows pool configurations) the
    means are over and what the band is."""
    seeds = sorted({int(n) for d in data for n in d.groupby("label")["n_seeds"].max()})
    over = (
        f"mean over {what}s"
        if not seeds
        else (
            f"mean over {seeds[0]} {what}{'s' if seeds[0] > 1 else ''}"
            if len(seeds) == 1
            else f"mean over {seeds[0]}–{seeds[-1]} {what}s"
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
    from fedbench.report_options import printable

    return f"{printable(exps[0])}: {what}" if len(exps) == 1 else what


def _panel(
    ax: Any,
    runs: pd.DataFrame,
    metrics: pd.DataFrame,
    x: str,
    y: str,
    labels: pd.Series,
    styles: dict[str, Style],
    bits: str,
    per_client: bool,
    band: str,
    log_y: bool | None,
    shape: Shape = Shape(),
) -> pd.DataFrame:
    """Draw one metric against x on ``ax``: per label the mean line, a marker every few points
    (offset per curve, so coinciding curves stay visible), the band, and an × where each
    diverged run stopped. Returns the curves drawn."""
    data = curves(runs, metrics, x, y, bits=bits, per_client=per_client, labels=labels)
    if x == "bits":
        data = data[data["x_mean"] > 0]  # a log axis cannot show round 0 (no bits sent yet)
    if data.empty:
        raise ReportError(f"nothing to plot: no round has both {y!r} and its x value ({x})")
    if shape.smooth > 1:
        data = smoothed(data, shape.smooth)
    order = [label for label in _label_order(runs, labels) if label in set(data["label"])]
    for i, label in enumerate(order):
        d = data[data["label"] == label]
        colour, style, marker = styles[label]
        step = max(1, math.ceil(len(d) / 8))
        ax.plot(
            d["x_mean"], d["y_mean"], color=colour, linestyle=style,
            marker=marker or MARKERS[i % len(MARKERS)], markevery=(i % step, step),
            # curves drawn first get bigger markers, every other one hollow: a curve that
            # coincides with a later one still shows around it
            markersize=7 - 3 * i / max(len(order) - 1, 1),
            fillstyle="full" if i % 2 == 0 else "none",
            linewidth=1.6, label=label,
        )  # fmt: skip
        edges = band_limits(d, band)
        if edges is not None and "accuracy" in y:  # an accuracy is a fraction: so is its band
            edges = (np.clip(edges[0], 0.0, 1.0), np.clip(edges[1], 0.0, 1.0))
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
    elif x in ("round", "steps"):  # whole rounds: no tick at 0.5
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    positive = bool((data["y_mean"] > 0).all())
    want_log = (
        shape.logy if shape.logy is not None else (log_y if log_y is not None else y in LOG_Y)
    )
    if want_log and positive:
        ax.set_yscale("log")
    elif shape.logy and not positive:
        raise ReportError(f"--logy: {y} has values ≤ 0, which a log axis cannot show")
    if shape.xlim is not None:
        ax.set_xlim(*shape.xlim)
    if shape.ylim is not None:
        ax.set_ylim(*shape.ylim)
    ax.set_xlabel(_x_label(x, bits, per_client, bits_convention(runs, bits) if x == "bits" else ""))
    ax.set_ylabel(_y_label(y))
    ax.grid(True, which="major", alpha=0.3)
    return data


def smoothed(data: pd.DataFrame, k: int) -> pd.DataFrame:
    """:func:`curves`' output with y_mean and its band columns replaced by their trailing
    moving average over ``k`` evaluations of each curve (fewer at a curve's start)."""
    out = data.copy()
    cols = ["y_mean", "y_std", "y_min", "y_max"]
    out[cols] = (
        data.groupby("label", sort=False)[cols]
        .rolling(k, min_periods=1)
        .mean()
        .reset_index(level=0, drop=True)
        .reindex(data.index)
    )
    return out


def no_dp_labels(
    runs: pd.DataFrame, metrics: pd.DataFrame, labels: pd.Series, uses_epsilon: bool
) -> pd.Series:
    """Labels with " (no DP)" for configurations that logged no finite ε (σ = 0 or no
    [privacy] section) when other runs did (``uses_epsilon``): every figure of a DP
    comparison names the non-private curves the same way, and in an ε panel, where their
    curve is missing because they spend no privacy budget, the legend says why."""
    if not uses_epsilon:
        return labels
    eps = metrics[(metrics["name"] == "epsilon") & np.isfinite(metrics["value"])]
    has = runs["run_id"].isin(eps["run_id"]).to_numpy()
    out = labels.copy()
    for label in set(labels):
        mask = (labels == label).to_numpy()
        if not has[mask].any():
            out[mask] = f"{label} (no DP)"
    return out


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
    at_common_round: bool = False,
    shape: Shape = Shape(),
    notes: Sequence[str] = (),
    labels: pd.Series | None = None,
) -> Figure:
    """The figure :func:`plot` saves: per configuration the mean over seeds and a band.

    Curves use comparable runs only (:func:`fedbench.report.select.comparable`): finished
    runs, or with ``at_common_round`` every run cut at the last round all reached. ``shape``
    sets colours and line styles by factor, log y, axis limits and smoothing (stated in the
    caption). Every text is drawn without math text: a "$" in a name from the database is a
    dollar sign.

    ``kind`` is one of :data:`PLOTS` (a named x and metric: accuracy plots use test_accuracy,
    loss plots train_loss, else test_loss); or give ``y`` (one or more logged metric names, one
    panel each) and ``x`` ("round", "bits", "wall", "time", "steps" or a logged metric; default
    "round"); an explicit ``x`` / ``y`` overrides the kind's. ``band`` is "minmax", "std",
    "ci95" or "none"; the legend title says which (and that there is none for one seed).

    Curves are labelled by the algorithm and the fields that differ between runs
    (:func:`plot_labels`), with what every run shares on a caption line under the axes; the
    legend sits outside the axes, right of the last panel. Each curve has its own marker and
    line style; a diverged run ends in an ×. Bits axes are log-scale, so is the y axis of
    squared norms (grad_norm_sq, consensus_sq) and gap. ``notes``: more caption lines (the
    --select protocol); ``labels`` (per run of ``runs``) replace the curve labels (--select:
    each group with its chosen values). Uses no pyplot state.
    """
    _check(bits, BITS, "bits")
    _check(band, BANDS, "band")
    if kind is not None:
        _check(kind, PLOTS, "plot")
    elif not y:
        raise ReportError("a figure needs a plot kind or at least one metric (y)")
    if kind == CDF_KIND:
        return client_cdf_figure(
            runs, metrics, group_by, title, at_common_round=at_common_round, notes=notes,
            labels=labels,
        )  # fmt: skip
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
    from fedbench.report.labels import pooled_fields
    from fedbench.report.select import comparable

    chosen = comparable(runs, metrics, at_common_round)
    if chosen.runs.empty:
        raise ReportError(f"nothing to plot: {chosen.note}")
    runs, metrics = chosen.runs, chosen.metrics
    if shape.smooth < 1:
        raise ReportError(f"--smooth {shape.smooth}: allowed: a whole number ≥ 1")
    labels = plot_labels(runs, group_by, labels)
    labels = no_dp_labels(runs, metrics, labels, "epsilon" in logged_metrics(runs, metrics))
    order = _label_order(runs, labels)
    if shape.color_by is not None or shape.style_by is not None:
        styles = _factor_styles(runs, labels, order, shape)
    else:
        styles = _styles(runs, labels, order)
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
                _panel(
                    ax,
                    runs,
                    metrics,
                    xv,
                    name,
                    labels,
                    styles,
                    bits,
                    per_client,
                    band,
                    log_y,
                    shape,
                )
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
        handles, names, fontsize="small",
        title=_band_title(drawn, band, "run" if pooled_fields(runs, group_by) else "seed"),
        title_fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
    )  # fmt: skip
    if title is None:
        title = _default_title(runs, ys, xv, bits)
    if n == 1:
        axes[0].set_title(title)
    else:
        fig.suptitle(title)
    caption = shared_settings(runs)
    lines = [f"all runs: {caption}"] if caption else []
    if shape.smooth > 1:
        lines.append(f"smoothed: trailing moving average over {shape.smooth} evaluations")
    if chosen.note:
        lines.append(chosen.note.split(" (--at")[0])
    if xv == "wall":
        lines += wall_load_note(runs)
    lines += list(notes)
    caption_under(fig, lines, 4.4 * cols + 2.8)
    plain_text(fig)
    return fig


def caption_under(fig: Figure, lines: Sequence[str], inches: float) -> None:
    """The caption lines under the axes, each wrapped to what a figure `inches` wide holds
    in "small" text (about 14 characters an inch)."""
    if lines:
        width = int(14 * inches)
        fig.supxlabel("\n".join(textwrap.fill(line, width) for line in lines), fontsize="small")


CDF_KIND = "client-accuracy-cdf"
CLIENT_ACC = "client_acc/"  # per_client_eval = "all": client i's accuracy at the last round


def wall_load_note(runs: pd.DataFrame) -> list[str]:
    """The caption line of a wall-clock plot: the range of the machines' 1-minute load average
    at the start and end of the plotted runs (their recorded provenance), since seconds on a
    loaded machine are not seconds on an idle one; [] when no run recorded it."""
    from fedbench.provenance import load_range

    if "provenance" not in runs.columns:
        return []
    span = load_range([p if isinstance(p, dict) else None for p in runs["provenance"]])
    if span is None:
        return []
    lo, hi = span
    what = f"{lo:g}" if lo == hi else f"{lo:g}–{hi:g}"
    cpus: set[int] = {
        int(p["cpu_count"])
        for p in runs["provenance"]
        if isinstance(p, dict) and p.get("cpu_count")
    }
    on = f" on {'/'.join(str(c) for c in sorted(cpus))} logical CPUs" if cpus else ""
    return [f"wall-clock: machine load (1-min average) {what}{on} at the runs' start and end"]


def client_accuracies(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """Per run the accuracy of every client at its last evaluation (``client_acc/<i>``,
    logged with ``per_client_eval = "all"``): columns run_id, client, value."""
    m = metrics[
        metrics["run_id"].isin(runs["run_id"])
        & metrics["name"].astype(str).str.startswith(CLIENT_ACC)
    ]
    if m.empty:
        return pd.DataFrame({"run_id": [], "client": [], "value": []})
    last = m.groupby("run_id")["round"].transform("max")
    m = m[m["round"] == last]
    client = m["name"].astype(str).str.removeprefix(CLIENT_ACC).astype(int)
    return pd.DataFrame(
        {"run_id": m["run_id"].to_numpy(), "client": client.to_numpy(), "value": m["value"]}
    ).reset_index(drop=True)


def client_cdf_figure(
    runs: pd.DataFrame,
    metrics: pd.DataFrame,
    group_by: Sequence[str] | None = None,
    title: str | None = None,
    *,
    at_common_round: bool = False,
    notes: Sequence[str] = (),
    labels: pd.Series | None = None,
) -> Figure:
    """The empirical CDF of per-client accuracy at the last evaluation, one step curve per
    configuration: the share of clients (y) whose accuracy is at most x, every client of
    every seed of the configuration pooled. The 10th percentile (the "worst 10%" column of
    the table) is where a curve crosses 0.1. Needs ``per_client_eval = "all"``."""
    from fedbench.report.select import comparable

    chosen = comparable(runs, metrics, at_common_round)
    if chosen.runs.empty:
        raise ReportError(f"nothing to plot: {chosen.note}")
    runs, metrics = chosen.runs, chosen.metrics
    values = client_accuracies(runs, metrics)
    if values.empty:
        raise ReportError(
            'no per-client accuracies: the runs need [experiment] per_client_eval = "all"'
        )
    runs = runs[runs["run_id"].isin(values["run_id"])]
    labels = plot_labels(runs, group_by, labels)
    order = _label_order(runs, labels)
    styles = _styles(runs, labels, order)
    label_of = dict(zip(runs["run_id"], labels, strict=True))
    fig = Figure(figsize=(7.2, 4.5), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    per = values.assign(label=values["run_id"].map(label_of))
    for label in order:
        g = per[per["label"] == label]
        v = np.sort(g["value"].to_numpy(dtype=float))  # [clients × seeds]
        share = np.arange(1, v.size + 1) / v.size
        color, linestyle, _ = styles[label]
        seeds = g["run_id"].nunique()
        ax.step(
            v, share, where="post", color=color, linestyle=linestyle,
            label=f"{label} ({seeds} run{'s' * (seeds > 1)})",
        )  # fmt: skip
    ax.axhline(0.1, color="0.6", linewidth=0.8, linestyle=":")
    ax.set_xlabel("client accuracy at the last evaluation")
    ax.set_ylabel("share of clients with accuracy ≤ x")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(0.0, 1.0)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    exps = list(runs["experiment"].dropna().unique()) if "experiment" in runs.columns else []
    what = "per-client accuracy (CDF)"
    ax.set_title(title or (f"{exps[0]}: {what}" if len(exps) == 1 else what))
    caption = shared_settings(runs)
    lines = [f"all runs: {caption}"] if caption else []
    lines.append(
        "each client scored on its own test samples where the task splits its test set per "
        "client, else on its training data; clients of every run of a curve pooled; "
        "dotted: the worst 10%"
    )
    if chosen.note:
        lines.append(chosen.note.split(" (--at")[0])
    lines += list(notes)
    caption_under(fig, lines, 7.2)
    plain_text(fig)
    return fig


def plain_text(fig: Figure) -> None:
    """Turn math text off for every text of ``fig`` (titles, labels, legend, caption): they
    are built from names in the database, where "$^$" is text, not a formula to parse."""
    from matplotlib.text import Text

    ticks = (
        {  # tick labels are matplotlib's own ("$10^{6}$" on a log axis): keep math
            id(t)
            for ax in fig.axes
            for axis in (ax.xaxis, ax.yaxis)
            for tick in (*axis.get_major_ticks(), *axis.get_minor_ticks())
            for t in (tick.label1, tick.label2)
        }
        | {id(ax.xaxis.get_offset_text()) for ax in fig.axes}
        | {id(ax.yaxis.get_offset_text()) for ax in fig.axes}
    )
    for text in fig.findobj(Text):
        if id(text) not in ticks:
            text.set_parse_math(False)


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
    at_common_round: bool = False,
    shape: Shape = Shape(),
) -> Path:
    """Write :func:`figure` to ``out`` (format from its suffix) atomically, creating its
    directory."""
    from fedbench.report.safe import atomic_write

    fig = figure(
        runs, metrics, kind, group_by=group_by, bits=bits, per_client=per_client, title=title,
        y=y, x=x, band=band, at_common_round=at_common_round, shape=shape,
    )  # fmt: skip
    out = Path(out)
    fmt = out.suffix.lstrip(".") or "png"
    return atomic_write(out, lambda p: fig.savefig(p, format=fmt))
