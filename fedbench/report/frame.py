"""Per-round values of runs: the wide metrics frame, bits and x axes, mean curves over seeds.

Inputs are the store's frames: ``runs`` and ``metrics`` (long form: run_id, round, name, value).
Bits are the store's cumulative totals over all clients, divided by ``task.clients`` when the
literature's "bits per client" axis is asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from fedbench.store import Store

# --------------------------------------------------------------------------- per-round values


def _check(value: str, allowed: Sequence[str], what: str) -> None:
    if value not in allowed:
        raise ReportError(f"unknown {what} {value!r}: allowed: {', '.join(allowed)}")


def _wide(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """Metrics of these runs as one row per (run_id, round), one column per metric name."""
    if runs.empty:
        raise ReportError("no runs to report")
    m = metrics[metrics["run_id"].isin(runs["run_id"])]
    m = m[~m["name"].astype(str).str.contains("/", regex=False)]  # client_acc/<i>: see cdf
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
    names = metrics.loc[metrics["run_id"].isin(runs["run_id"]), "name"].unique()
    return sorted({str(n) for n in names})  # unique first: 10⁵ rows, a few names


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


# --------------------------------------------------------------------------- the tidy frame

# Per-run columns of the store's runs frame (fedbench.store.RUN_COLUMNS), in its order.
# the store's RUN_COLUMNS (tests/test_report_cli.py keeps the two equal)
RUN_FIELDS = (
    "run_id", "key", "experiment", "seed", "algorithm", "compressor", "dataset", "model",
    "status", "error", "started_at", "finished_at", "host", "device", "fedbench_version",
    "torch_version", "lease_owner", "heartbeat_at", "attempts", "rounds_logged",
)  # fmt: skip


def tidy(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per run × round: the run's columns (run_id, key, experiment, seed, status, ...),
    ``round``, its config flattened to "section.field" columns, then one column per metric
    (NaN where a metric was not logged that round). A run without metrics keeps one row with
    round <NA>, so pending and failed-at-start runs are not lost. ``attrs["metrics"]`` lists
    the metric columns. :func:`split` is the inverse."""
    m = metrics[metrics["run_id"].isin(runs["run_id"])]
    if m.empty:
        wide = pd.DataFrame(columns=["run_id", "round"])
    else:
        wide = m.pivot_table(
            index=["run_id", "round"], columns="name", values="value", aggfunc="last",
            dropna=False,
        ).reset_index()  # fmt: skip
        wide.columns = [str(c) for c in wide.columns]
    names = [c for c in wide.columns if c not in ("run_id", "round")]
    run_cols = [c for c in runs.columns if c not in names and c != "round"]
    out = runs[run_cols].merge(wide, on="run_id", how="left", validate="one_to_many")
    out["round"] = out["round"].astype("Int64")
    first = [c for c in run_cols if "." not in c]
    config = [c for c in run_cols if "." in c]
    out = out[[*first, "round", *config, *names]]
    out = out.sort_values(["run_id", "round"], kind="stable").reset_index(drop=True)
    out.attrs["metrics"] = names
    return out


def split(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A :func:`tidy` frame back into the store's (runs, metrics) frames. Metric columns are
    ``attrs["metrics"]`` when present, else every column that is neither a run column, a
    "section.field" config column nor ``round``."""
    names = frame.attrs.get("metrics")
    if names is None:
        names = [c for c in frame.columns if c not in RUN_FIELDS and "." not in c and c != "round"]
    run_cols = [c for c in frame.columns if c not in names and c != "round"]
    runs = frame[run_cols].drop_duplicates("run_id").reset_index(drop=True)
    rows = frame[frame["round"].notna()]
    long = rows.melt(
        id_vars=["run_id", "round"], value_vars=list(names), var_name="name", value_name="value"
    )
    # a NaN cell is a metric not logged that round, except where the store kept a NaN value:
    # the tidy frame cannot tell them apart, and neither changes a summary or a curve
    long = long.dropna(subset=["value"])
    long = long.astype({"run_id": "int64", "round": "int64", "value": "float64"})
    metrics = long.sort_values(["run_id", "round", "name"], kind="stable").reset_index(drop=True)
    return runs, metrics[["run_id", "round", "name", "value"]]


def load_frame(experiment: str | None = None, db: str | None = None) -> pd.DataFrame:
    """The tidy results frame of an experiment (:func:`tidy`), read from the database ``db``
    (an SQLAlchemy URL or SQLite path; default $FEDBENCH_DB or results/fedbench.db).

    ``experiment`` defaults to the most recent one. Example::

        from fedbench.report import load_frame
        df = load_frame("quickstart")
        df[df["round"] == df["experiment.rounds"]].groupby("algorithm.name")["test_accuracy"].mean()
    """
    from fedbench.store import Store, StoreError, is_new_sqlite_file

    if is_new_sqlite_file(db):
        raise StoreError(f"no database file at {db or 'the default location'}")
    with Store(db, read_only=True) as store:
        if experiment is None:
            exps = store.experiments_frame()
            if exps.empty:
                raise ReportError(f"{store.url}: no experiments yet")
            experiment = str(exps.sort_values("id")["name"].iloc[-1])
        runs, metrics = _read(store, experiment)
    return tidy(runs, metrics)


def _read(store: Store, experiment: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    runs = store.runs_frame(experiment=experiment)
    if runs.empty:
        known = ", ".join(store.experiments_frame()["name"].astype(str)) or "none"
        raise ReportError(
            f"--experiment {experiment}: no runs in {store.url}; experiments: {known}"
        )
    metrics = store.metrics_frame([int(r) for r in runs["run_id"]])
    return runs, metrics


def load(store: Store, experiment: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, metrics) of an experiment for the report, by way of its tidy frame
    (:func:`tidy` then :func:`split`): what the report shows is what :func:`load_frame`
    gives a script. The runs frame also holds each run's recorded ``provenance`` (a dict, or
    None: `fedbench.provenance`), for the load range of wall-clock captions."""
    runs, raw = _read(store, experiment)
    # per-client vectors (client_acc/<i>, per_client_eval = "all") skip the tidy round trip:
    # one column per client would make the wide frame n columns wider for one round's values
    vec = raw["name"].astype(str).str.contains("/", regex=False).to_numpy()
    runs, metrics = split(tidy(runs, raw[~vec]))
    if vec.any():
        more = raw.loc[vec, ["run_id", "round", "name", "value"]].dropna(subset=["value"])
        metrics = pd.concat([metrics, more.astype(metrics.dtypes.to_dict())], ignore_index=True)
    if hasattr(store, "provenance"):
        provs = [store.provenance(int(r)) for r in runs["run_id"]]
        runs["provenance"] = pd.Series(provs, index=runs.index, dtype=object)
    return runs, metrics
