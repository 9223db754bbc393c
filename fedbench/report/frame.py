"""Per-round values of runs: the wide metrics frame, bits and x axes, mean curves over seeds.

Inputs are the store's frames: ``runs`` and ``metrics`` (long form: run_id, round, name, value).
Bits are the store's cumulative totals over all clients, divided by ``task.clients`` when the
literature's "bits per client" axis is asked for.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from fedbench.report.labels import (
    BITS,
    X_AXES,
    ReportError,
    _absent,
    _label_order,
    config_labels,
)

# --------------------------------------------------------------------------- per-round values


def _check(value: str, allowed: Sequence[str], what: str) -> None:
    if value not in allowed:
        raise ReportError(f"unknown {what} {value!r}: allowed: {', '.join(allowed)}")


def _wide(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """Metrics of these runs as one row per (run_id, round), one column per metric name."""
    if runs.empty:
        raise ReportError("no runs to report")
    m = metrics[metrics["run_id"].isin(runs["run_id"])]
    if m.empty:
        return pd.DataFrame(index=pd.MultiIndex.from_arrays([[], []], names=["run_id", "round"]))
    wide = m.pivot_table(index=["run_id", "round"], columns="name", values="value", aggfunc="last")
    wide.columns = [str(c) for c in wide.columns]
    return wide.sort_index()


def _need(wide: pd.DataFrame, name: str, why: str = "") -> pd.Series:
    if name not in wide.columns:
        raise ReportError(f"no {name!r} metric in these runs{why}")
    return wide[name].astype(float)


def bits_axis_label(bits: str = "up", per_client: bool = True, convention: str = "") -> str:
    """What the bits axis holds, e.g. "uplink bits per client (cumulative)", with the bit
    convention when given: "uplink bits per client (cumulative, values only)"."""
    _check(bits, BITS, "bits")
    what = {"up": "uplink", "down": "downlink", "total": "uplink + downlink"}[bits]
    note = f", {convention}" if convention else ""
    return f"{what} bits{' per client' if per_client else ''} (cumulative{note})"


def bits_convention(runs: pd.DataFrame, bits: str = "up") -> str:
    """The bit convention of these runs' bits (ALGORITHMS §0.2): "values only" when every run
    counts values only (`compressor.bits` for uplink, `downlink.bits` for downlink, both for
    total), "full message" when none does, else "mixed bit conventions". Runs recorded before
    the field existed counted the full message."""
    _check(bits, BITS, "bits")
    cols = {"up": ["compressor.bits"], "down": ["downlink.bits"]}.get(
        bits, ["compressor.bits", "downlink.bits"]
    )
    seen = {
        "full" if _absent(v) else str(v)
        for col in cols
        for v in (runs[col].tolist() if col in runs.columns else [None] * len(runs))
    }
    if seen == {"values"}:
        return "values only"
    return "full message" if seen <= {"full"} else "mixed bit conventions"


def _bits(wide: pd.DataFrame, runs: pd.DataFrame, bits: str, per_client: bool) -> pd.Series:
    """Cumulative bits per (run_id, round): up, down or their sum, per client if asked."""
    _check(bits, BITS, "bits")
    why = f" (bits={bits})"
    if bits == "up":
        b = _need(wide, "bits_up", why)
    elif bits == "down":
        b = _need(wide, "bits_down", why)
    else:
        b = _need(wide, "bits_up", why) + _need(wide, "bits_down", why)
    if not per_client:
        return b
    if "task.clients" not in runs.columns:
        raise ReportError("bits per client need the task.clients column; ask for all-clients bits")
    clients = runs.set_index("run_id")["task.clients"].astype(float).to_dict()
    return b / b.index.get_level_values("run_id").map(clients).to_numpy()


def _x_values(
    wide: pd.DataFrame, runs: pd.DataFrame, x: str, bits: str, per_client: bool
) -> pd.Series:
    """The x value per (run_id, round): an axis of :data:`X_AXES` or any logged metric."""
    x = "round" if x == "rounds" else x
    if x not in X_AXES and x not in wide.columns:
        logged = ", ".join(sorted(wide.columns)) or "none"
        raise ReportError(
            f"unknown x axis {x!r}: allowed: {', '.join(X_AXES)}, or a logged metric: {logged}"
        )
    rounds = pd.Series(wide.index.get_level_values("round").astype(float), index=wide.index)
    if x == "round":
        return rounds
    if x == "steps":
        return rounds * _local_steps(wide, runs)
    if x == "wall":
        return _need(wide, "wall_s")
    if x == "time":
        return _need(wide, "sim_time_s", " (give the grid a [network] section)")
    if x == "bits":
        return _bits(wide, runs, bits, per_client)
    return _need(wide, x)


def _local_steps(wide: pd.DataFrame, runs: pd.DataFrame) -> np.ndarray:
    """Per row of ``wide`` the inner (local) steps per round: ``algorithm.local_steps``, 1 for
    runs without the field (one step per round, e.g. GD-type methods)."""
    col = runs["algorithm.local_steps"] if "algorithm.local_steps" in runs.columns else None
    steps = {
        rid: (1.0 if col is None or _absent(col.iloc[i]) else float(col.iloc[i]))
        for i, rid in enumerate(runs["run_id"].tolist())
    }
    return wide.index.get_level_values("run_id").map(steps).to_numpy(dtype=float)


def logged_metrics(runs: pd.DataFrame, metrics: pd.DataFrame) -> list[str]:
    """The metric names these runs logged, sorted."""
    names = metrics.loc[metrics["run_id"].isin(runs["run_id"]), "name"].astype(str)
    return sorted(set(names))


def curves(
    runs: pd.DataFrame,
    metrics: pd.DataFrame,
    x: str,
    y: str,
    bits: str = "up",
    per_client: bool = True,
    group_by: Sequence[str] | None = None,
    labels: pd.Series | None = None,
) -> pd.DataFrame:
    """Per configuration and round the mean of ``x`` and the spread of ``y`` over seeds.

    ``x`` is "round", "bits" (cumulative bits_up, bits_down or both: ``bits`` = "up" | "down" |
    "total", divided by task.clients when ``per_client``), "wall" (wall_s), "time"
    (sim_time_s), "steps" (round × algorithm.local_steps, 1 where absent) or any logged
    metric. ``labels`` (per run, e.g. :func:`plot_labels`) overrides those of ``group_by``.
    Seeds are aligned by round, using the rounds where the run has both ``y`` and ``x``, so an
    unfinished run adds the rounds it has; non-finite values (a diverged run) are left out.
    Returns columns label, round, x_mean, y_mean, y_std (sample std, NaN for one seed), y_min,
    y_max, n_seeds; labels in grid order, rounds ascending.
    """
    _check(bits, BITS, "bits")
    if labels is None:
        labels = config_labels(runs, group_by)
    wide = _wide(runs, metrics)
    yv = _need(wide, y)
    xv = _x_values(wide, runs, x, bits, per_client)
    label_of = dict(zip(runs["run_id"], labels, strict=True))
    long = (
        pd.DataFrame(
            {
                "label": wide.index.get_level_values("run_id").map(label_of),
                "round": wide.index.get_level_values("round").astype(int),
                "x": xv.to_numpy(),
                "y": yv.to_numpy(),
            }
        )
        .replace([np.inf, -np.inf], np.nan)
        .dropna(subset=["x", "y"])
    )  # diverged: inf
    out = (
        long.groupby(["label", "round"], sort=False)
        .agg(
            x_mean=("x", "mean"),
            y_mean=("y", "mean"),
            y_std=("y", "std"),
            y_min=("y", "min"),
            y_max=("y", "max"),
            n_seeds=("y", "count"),
        )
        .reset_index()
    )
    rank = {label: i for i, label in enumerate(_label_order(runs, labels))}
    out["_rank"] = out["label"].map(rank)
    out = out.sort_values(["_rank", "round"], kind="stable").drop(columns="_rank")
    out["n_seeds"] = out["n_seeds"].astype(int)
    return out.reset_index(drop=True)
