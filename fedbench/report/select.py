"""Which runs a report may use: the selection step between the loaded frame and the table or
figure (``load`` -> :func:`where` -> :func:`drop_stale` -> :func:`comparable` ->
:func:`fedbench.report.choice.choose` with --select -> summary/plot).

A number in a report rests on runs that can be compared: finished runs (done, or diverged:
a step size too large is a result), or, when asked, every run cut at the last round all of
them reached. Runs the experiment's current grid no longer produces (an edited grid) are left
out and named. Each step returns the runs it keeps and one note saying what it left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import pandas as pd

    from fedbench.store import Store

# pandas (and labels.py, which imports it) are imported in the functions that use them:
# `grid_keys` runs in a child process of `report` that should load only fedbench.grid

FINISHED = ("done", "diverged")  # a diverged run is a result, not an error
UNUSABLE = ("failed",)  # an error: never a number, also not at a common round


# --------------------------------------------------------------------------- --where


def parse_where(clause: str) -> tuple[str, list[str]]:
    """ "FIELD=VALUE[,VALUE]" -> (FIELD, [VALUE, ...]); refused in one line otherwise."""
    from fedbench.report.labels import ReportError

    field, eq, values = clause.partition("=")
    vals = [v.strip() for v in values.split(",") if v.strip()]
    if not eq or not field.strip() or not vals:
        raise ReportError(
            f"--where {clause!r}: allowed: FIELD=VALUE[,VALUE...], e.g. "
            "algorithm.name=fedavg,scaffold or status=done"
        )
    return field.strip(), vals


def where(runs: pd.DataFrame, clauses: Sequence[str]) -> pd.DataFrame:
    """The runs whose FIELD is one of the VALUEs for every clause ("FIELD=V1,V2"). FIELD is a
    config field ("compressor.ratio", or its last part when unambiguous), a per-run column
    (algorithm, seed, ...) or ``status``; a value matches as the grid would write it (0.01,
    true, topk) or as a number (1e-2 matches 0.01); "-" matches a run without the field."""
    import pandas as pd

    from fedbench.report.labels import ReportError, _absent, _resolve_group_by, _show

    keep = pd.Series(True, index=runs.index)
    for clause in clauses:
        field, values = parse_where(clause)
        col = "status" if field == "status" else _resolve_group_by(runs, [field])[0]
        shown = runs[col].map(lambda v: "-" if _absent(v) else _show(v))
        hit = shown.isin(values)
        nums = [_number(v) for v in values]
        if any(n is not None for n in nums):
            as_num = runs[col].map(_number)
            hit |= as_num.isin([n for n in nums if n is not None])
        if not hit.any():
            seen = ", ".join(dict.fromkeys(shown.tolist()))
            raise ReportError(
                f"--where {clause}: no run has {col} in {', '.join(values)}; values: {seen}"
            )
        keep &= hit
    out = runs[keep]
    if out.empty:
        raise ReportError(f"--where {' '.join(clauses)}: no run matches every clause")
    return out


def _number(v: Any) -> float | None:
    from fedbench.report.labels import _absent

    if isinstance(v, bool) or _absent(v):
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------- stale runs


def current_keys(store: Store, experiment: str) -> tuple[set[str] | None, str]:
    """The job keys the experiment's grid produces now, and where the grid came from: the
    grid file on disk when it is still there (it may have been edited since the runs), else
    the grid text stored with the experiment. (None, why) when neither expands."""
    exps = store.export("experiments")
    row = exps[exps["name"] == experiment]
    if row.empty:
        return None, "no grid stored"
    return grid_keys(str(row["grid_path"].iloc[0]), str(row["grid_toml"].iloc[0]))


def grid_keys(grid_path: str, grid_toml: str) -> tuple[set[str] | None, str]:
    """`current_keys` of an experiment stored with this grid path and text."""
    from fedbench.grid import GridError, load, parse

    path = Path(grid_path)
    try:
        if path.is_file():
            return {j.key for j in load(path).jobs}, str(path)
        grid = parse(grid_toml, path)
        return {j.key for j in grid.jobs}, "the grid stored with the experiment"
    except (GridError, OSError, RecursionError) as e:
        return None, f"its grid does not expand ({str(e).splitlines()[0][:120]})"


def stale_runs(store: Store, experiment: str, keys: set[str] | Sequence[str]) -> list[str]:
    """Keys of the experiment's stored runs that ``keys`` (the current grid's job keys) no
    longer contains, in run order: what `fedbench prune` would delete. `fedbench run` can say
    "N runs are no longer in this grid: fedbench prune"."""
    runs = store.runs_frame(experiment=experiment)
    wanted = set(keys)
    return [str(k) for k in runs.sort_values("run_id")["key"] if str(k) not in wanted]


def drop_stale(
    store: Store,
    experiment: str,
    runs: pd.DataFrame,
    keep: bool = False,
    current: tuple[set[str] | None, str] | None = None,
) -> tuple[pd.DataFrame, str]:
    """``runs`` without those the current grid no longer produces, and one note naming them
    ("" when none). ``keep`` (--all-runs) keeps them and still names them. When no stored run
    is in the current grid (a grid from elsewhere, or keys of another version) nothing is
    left out: the note says so. ``current``: `current_keys` when already known."""
    keys, source = current if current is not None else current_keys(store, experiment)
    if keys is None:
        return runs, ""
    stale = ~runs["key"].astype(str).isin(keys)
    if not stale.any():
        return runs, ""
    n = int(stale.sum())
    if stale.all():
        return runs, (
            f"none of the {n} runs is in the current grid ({source}): all shown; "
            "fedbench prune removes runs a grid no longer has"
        )
    what = _describe(runs, stale.to_numpy())
    if keep:
        return runs, f"{n} runs no longer in the grid ({source}) kept (--all-runs): {what}"
    return runs[~stale], (
        f"{n} runs no longer in the grid ({source}) left out: {what} "
        "(--all-runs keeps them; fedbench prune deletes them)"
    )


def _describe(runs: pd.DataFrame, mask: Any, most: int = 6) -> str:
    """Short names of the runs under ``mask``, labelled among all runs (so that they name
    what sets them apart): "fedprox, mu=0.1 seed 0, ...", the rest counted."""
    from fedbench.report.labels import config_labels

    labels = config_labels(runs)[mask].tolist()
    seeds = runs["seed"][mask].tolist() if "seed" in runs.columns else [None] * len(labels)
    names = [
        f"{lab} seed {s}" if s is not None else lab for lab, s in zip(labels, seeds, strict=True)
    ]
    more = f", … {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


# --------------------------------------------------------------------------- comparable runs


class Comparable(NamedTuple):
    runs: pd.DataFrame  # the runs numbers rest on
    metrics: pd.DataFrame  # their metrics (cut at ``round`` with at_common_round)
    round: int | None  # the common round, with at_common_round
    note: str  # what was left out and why ("" when nothing)


def comparable(
    runs: pd.DataFrame, metrics: pd.DataFrame, at_common_round: bool = False
) -> Comparable:
    """The runs a number may rest on. By default the finished ones (status done or diverged);
    pending, running and failed runs are counted in the note, never averaged in. With
    ``at_common_round`` every run with metrics that did not fail, each cut at the last round
    all of them reached (diverged runs, which stop early by design, do not lower it)."""
    import pandas as pd

    from fedbench.report.labels import ReportError

    status = (
        runs["status"].astype(str)
        if "status" in runs.columns
        else pd.Series("done", index=runs.index)
    )
    if not at_common_round:
        use = status.isin(FINISHED)
        left = status[~use].value_counts()
        note = ""
        if len(left):
            counts = ", ".join(f"{int(c)} {s}" for s, c in left.items())
            note = (
                f"numbers from finished runs only (done or diverged); left out: {counts} "
                "(--at-common-round compares every run at the last round all reached)"
            )
        kept = runs[use.to_numpy()]
        return Comparable(kept, metrics[metrics["run_id"].isin(kept["run_id"])], None, note)
    last = metrics.groupby("run_id")["round"].max()
    has = runs["run_id"].isin(last.index)
    use = has & ~status.isin(UNUSABLE)
    kept = runs[use.to_numpy()]
    if kept.empty:
        raise ReportError("--at-common-round: no run that did not fail has logged a round")
    bound = kept[status[use].to_numpy() != "diverged"]
    ids = (bound if len(bound) else kept)["run_id"]
    common = int(last.reindex(ids).min())
    m = metrics[metrics["run_id"].isin(kept["run_id"]) & (metrics["round"] <= common)]
    left = status[~use].value_counts()
    extra = (
        "; left out: " + ", ".join(f"{int(c)} {s}" for s, c in left.items()) if len(left) else ""
    )
    note = f"every run at round {common}, the last round all of them reached{extra}"
    return Comparable(kept, m, common, note)
