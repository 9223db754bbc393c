"""`fedbench report --select FIELD --by val_accuracy`: hyperparameters chosen on validation
data, test metrics reported at the choice (issue 25 item 2).

The last step of the report's pipeline (``load`` -> ``where`` -> ``drop_stale`` ->
``comparable`` -> :func:`choose`). Runs are split into compared groups: every configuration
field that varies, but the selected fields and the seed (algorithm, compressor, ...). Within a
group each value of the selected fields (a candidate) is scored by the mean over its seeds of
a validation metric, at the last evaluation or at the best round of the mean curve
(``at="best"``: early stopping, the round is part of the choice); the best candidate is kept,
the others leave the report. Selecting on a test metric is refused: the test set would choose
the setting it then scores, an optimistic number. A choice at the edge of the range tried is
named: the best value may lie beyond the sweep.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd

from fedbench.report.labels import (
    ReportError,
    _absent,
    _config_columns,
    _keys,
    _label_order,
    _resolve_group_by,
    _show,
    config_labels,
    varying_fields,
)

AT = ("last", "best")
DEFAULT_BY = ("val_accuracy", "val_loss", "val_perplexity")  # --by when not given, in turn


class Selection(NamedTuple):
    runs: pd.DataFrame  # runs of the chosen configurations (every status: the table counts them)
    metrics: pd.DataFrame  # their metrics; at="best": each cut at its group's chosen round
    labels: pd.Series  # per run of ``runs`` its row label (the selected fields left out)
    curve_labels: pd.Series  # per run its curve label: the row label and the chosen values
    choices: pd.DataFrame  # per row label: the chosen values, the score mean and std, the round
    protocol: str  # the protocol in one sentence
    notes: list[str]  # edge-of-range and left-out groups, one line each


# --------------------------------------------------------------------------- options


def higher_is_better(metric: str) -> bool:
    """Accuracies are maximised; losses and perplexities minimised."""
    return "accuracy" in metric


def check_by(by: str) -> None:
    """Refuse a test or train metric before any data is read, saying why in one line."""
    if by.startswith("test_"):
        raise ReportError(
            f"--by {by}: a test metric cannot choose a setting, the test set would pick what "
            "it then scores (an optimistic number); select on validation data, e.g. --by "
            "val_accuracy ([task] val_fraction > 0 logs val_loss and val_accuracy)"
        )
    if by.startswith("train_"):
        raise ReportError(
            f"--by {by}: a training metric rewards fitting the training data, not "
            "generalising; select on validation data, e.g. --by val_accuracy ([task] "
            "val_fraction > 0 logs val_loss and val_accuracy)"
        )


def pick_by(by: str | None, logged: Sequence[str], experiment: str) -> str:
    """The validation metric to select on: ``by`` when the runs logged it, else (``by`` None)
    the first of :data:`DEFAULT_BY` they logged; refused in one line naming what is logged."""
    vals = [m for m in logged if m.startswith("val_")]
    have = ", ".join(vals) if vals else "none (give the grid [task] val_fraction > 0)"
    if by is None:
        for name in DEFAULT_BY:
            if name in vals:
                return name
        raise ReportError(f"--select: no validation metric logged by the runs of {experiment}; "
                          f"validation metrics: {have}")  # fmt: skip
    check_by(by)
    if not by.startswith("val_") or by not in vals:
        what = "not logged by" if by.startswith("val_") else "is no validation metric of"
        raise ReportError(f"--by {by}: {what} the runs of {experiment}; validation metrics "
                          f"logged: {have}")  # fmt: skip
    return by


def resolve_fields(runs: pd.DataFrame, fields: Sequence[str]) -> list[str]:
    """The config columns ``fields`` name ("lr" for "algorithm.lr" when unambiguous)."""
    config = set(_config_columns(runs))
    out: list[str] = []
    for name in fields:
        try:
            (col,) = _resolve_group_by(runs, [name])
        except ReportError as e:
            raise ReportError(str(e).replace("group-by field", "--select field", 1)) from None
        if col not in config:
            raise ReportError(f"--select {name}: not a config field; allowed: section.field, "
                              "e.g. algorithm.lr")  # fmt: skip
        out.append(col)
    return list(dict.fromkeys(out))


# --------------------------------------------------------------------------- scores


def _scores(
    runs: pd.DataFrame, metrics: pd.DataFrame, by: str, at: str
) -> tuple[float, float, int | None]:
    """(mean, std, round) of ``by`` over the seeds of one candidate: at each run's last
    evaluation (a diverged run, or one without the metric, scores the worst: never chosen
    over a finite candidate), or at the round where the mean over every seed is best."""
    worst = -math.inf if higher_is_better(by) else math.inf
    m = metrics[(metrics["name"] == by) & metrics["run_id"].isin(runs["run_id"])]
    if at == "last":
        last = m.sort_values(["run_id", "round"]).groupby("run_id")["value"].last()
        values = last.reindex(runs["run_id"]).astype(float)
        status = runs["status"] if "status" in runs.columns else pd.Series("done", runs.index)
        diverged = status.astype(str).eq("diverged").to_numpy()
        values[~np.isfinite(values.to_numpy()) | diverged] = worst
        v = values.to_numpy(dtype=float)  # [seeds]
        with np.errstate(invalid="ignore"):
            std = float(np.std(v, ddof=1)) if len(v) > 1 and np.isfinite(v).all() else math.nan
        return float(v.mean()), std, None
    table = m.pivot_table(index="round", columns="run_id", values="value", aggfunc="last")
    table = table.reindex(columns=runs["run_id"])  # [rounds, seeds]
    full = table[np.isfinite(table.to_numpy(dtype=float)).all(axis=1)]
    if full.empty:
        return worst, math.nan, None
    means = full.mean(axis=1)
    r = int(means.idxmax() if higher_is_better(by) else means.idxmin())  # earliest on ties
    std = float(full.loc[r].std(ddof=1)) if full.shape[1] > 1 else math.nan
    return float(means.loc[r]), std, r


def _better(a: float, b: float, by: str) -> bool:
    return a > b if higher_is_better(by) else a < b


# --------------------------------------------------------------------------- the choice


def choose(
    runs: pd.DataFrame,
    metrics: pd.DataFrame,
    fields: Sequence[str],
    by: str,
    at: str = "last",
    at_common_round: bool = False,
    group_by: Sequence[str] | None = None,
) -> Selection:
    """Per compared group the values of ``fields`` whose mean ``by`` over seeds is best.

    ``runs`` are the report's runs (after --where and stale runs); scores rest on the
    comparable ones (:func:`fedbench.report.select.comparable`). Ties go to the candidate
    first in grid order. A group where no candidate has a finite score is left out (named in
    ``notes``). ``group_by``: the report's --group-by, which labels the rows."""
    from fedbench.report.select import comparable

    if at not in AT:
        raise ReportError(f"--at {at}: allowed: {', '.join(AT)}")
    check_by(by)
    cols = resolve_fields(runs, fields)
    if group_by:
        clash = [g for g in _resolve_group_by(runs, group_by) if g in cols]
        if clash:
            raise ReportError(f"--group-by {clash[0]}: a --select field is shown in its own "
                              "column; leave it out of --group-by")  # fmt: skip
    usable = comparable(runs, metrics, at_common_round)
    if usable.runs.empty:
        raise ReportError(f"--select: no run to choose from ({usable.note})")
    groups = [c for c in varying_fields(runs) if c not in cols]
    ids = runs["run_id"].tolist()
    gkeys = _row_keys(runs, groups)
    ckeys = _row_keys(runs, cols)
    cand_of = dict(zip(ids, zip(gkeys, ckeys, strict=True), strict=True))
    used_ids = set(usable.runs["run_id"])
    order = list(dict.fromkeys(cand_of[r] for r in sorted(ids) if r in used_ids))
    tried = [c for c in cols if len({k[1][cols.index(c)] for k in order}) > 1]
    if not tried:
        values = ", ".join(dict.fromkeys(_show(v) for v in runs[cols[0]] if not _absent(v)))
        raise ReportError(
            f"--select {', '.join(cols)}: one value in the runs ({values or 'none'}): "
            "nothing to choose"
        )
    best: dict[tuple[Hashable, ...], tuple[tuple[Hashable, ...], float, float, int | None]] = {}
    seeds: set[int] = set()
    values_by = usable.metrics[usable.metrics["name"] == by]  # filtered once, not per candidate
    cand = [cand_of[r] for r in usable.runs["run_id"]]
    for g, c in order:
        mine = usable.runs[np.array([k == (g, c) for k in cand], dtype=bool)]
        seeds.add(len(mine))
        mean, std, rnd = _scores(mine, values_by, by, at)
        if not math.isfinite(mean):
            continue
        if g not in best or _better(mean, best[g][1], by):
            best[g] = (c, mean, std, rnd)
    all_groups = list(dict.fromkeys(g for g, _ in order))
    keep = [cand_of[r][0] in best and cand_of[r][1] == best[cand_of[r][0]][0] for r in ids]
    kept = runs[keep]
    if kept.empty:
        raise ReportError(f"--select: no candidate has a finite {by} for every seed")
    labels = config_labels(kept.drop(columns=cols), group_by)
    m = metrics[metrics["run_id"].isin(kept["run_id"])]
    if at == "best":  # test metrics and bits at the chosen round
        stop = {r: best[cand_of[r][0]][3] for r in kept["run_id"]}
        m = m[m["round"].to_numpy() <= m["run_id"].map(stop).to_numpy(dtype=float)]
    label_of_group = {cand_of[r][0]: lab for r, lab in zip(kept["run_id"], labels, strict=True)}
    notes = [
        f"left out: {_group_name(runs, groups, g)} (no candidate with a finite {by} for every seed)"
        for g in all_groups
        if g not in best
    ]
    notes += _edge_notes(order, best, cols, tried, label_of_group)
    choices = _choices(kept, labels, cols, by, best, cand_of, at)
    protocol = _protocol(runs, order, cols, tried, groups, by, at, seeds)
    chosen = [
        ", ".join(
            f"{_short(c, cols)}={_show(v)}" for c, v in zip(cols, cand_of[r][1], strict=True)
            if v is not None
        )
        for r in kept["run_id"]
    ]  # fmt: skip
    curves = pd.Series(
        [f"{lab}, {c}" if c else lab for lab, c in zip(labels, chosen, strict=True)],
        index=kept.index,
        dtype=object,
    )
    return Selection(kept, m, labels, curves, choices, protocol, notes)


def _row_keys(runs: pd.DataFrame, cols: Sequence[str]) -> list[tuple[Hashable, ...]]:
    per_col = [_keys(runs, c) for c in cols]
    return [tuple(k[i] for k in per_col) for i in range(len(runs))]


def _group_name(runs: pd.DataFrame, groups: Sequence[str], key: tuple[Hashable, ...]) -> str:
    parts = [f"{g.rpartition('.')[2]}={_show(v)}" for g, v in zip(groups, key, strict=True)]
    return ", ".join(parts) or "all runs"


def _short(col: str, cols: Sequence[str]) -> str:
    """ "algorithm.lr" -> "lr", unless another field ends the same; "algorithm.name" ->
    "algorithm"."""
    section, _, last = col.partition(".")
    if last == "name":
        return section
    lasts = [c.rpartition(".")[2] for c in cols]
    return col if lasts.count(last) > 1 else last


def _number(v: Hashable) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        return float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _values(keys: Sequence[Hashable]) -> list[Hashable]:
    """Distinct values, numerically sorted when all are numbers, else in grid order."""
    seen = list(dict.fromkeys(k for k in keys if k is not None))
    nums = [_number(k) for k in seen]
    if all(n is not None for n in nums):
        return [k for _, k in sorted(zip(nums, seen, strict=True), key=lambda p: p[0])]  # type: ignore[arg-type, return-value]
    return seen


def _edge_notes(
    order: Sequence[tuple[tuple[Hashable, ...], tuple[Hashable, ...]]],
    best: dict[tuple[Hashable, ...], tuple[tuple[Hashable, ...], float, float, int | None]],
    cols: Sequence[str],
    tried: Sequence[str],
    label_of_group: dict[tuple[Hashable, ...], str],
) -> list[str]:
    """ "fedprox: lr = 1 is the largest tried (0.01–1); the best may lie beyond" for each
    group whose chosen numeric value is the smallest or largest of those it tried."""
    notes = []
    for g, (chosen, *_rest) in best.items():
        for col in tried:
            i = cols.index(col)
            vals = [n for n in (_number(c[i]) for gg, c in order if gg == g) if n is not None]
            v = _number(chosen[i])
            if v is None or len(set(vals)) < 2:
                continue
            lo, hi = min(vals), max(vals)
            edge = "largest" if v == hi else "smallest" if v == lo else None
            if edge:
                notes.append(
                    f"{label_of_group[g]}: {_short(col, cols)} = {_show(chosen[i])} is the "
                    f"{edge} tried ({_show(lo)}–{_show(hi)}); the best may lie beyond the sweep"
                )
    return notes


def _choices(
    kept: pd.DataFrame,
    labels: pd.Series,
    cols: Sequence[str],
    by: str,
    best: dict[tuple[Hashable, ...], tuple[tuple[Hashable, ...], float, float, int | None]],
    cand_of: dict[int, tuple[tuple[Hashable, ...], tuple[Hashable, ...]]],
    at: str,
) -> pd.DataFrame:
    """Per row label the chosen value of each field (joined when a row pools groups), the
    score's mean and std over seeds and, at="best", the chosen round."""
    rows = []
    for label in _label_order(kept, labels):
        rids = kept.loc[(labels == label).to_numpy(), "run_id"]
        gs = list(dict.fromkeys(cand_of[r][0] for r in rids))
        row: dict[str, object] = {"label": label}
        for i, col in enumerate(cols):
            row[_short(col, cols)] = ", ".join(
                dict.fromkeys("-" if best[g][0][i] is None else _show(best[g][0][i]) for g in gs)
            )
        row[f"{by}_mean"] = float(np.mean([best[g][1] for g in gs]))
        row[f"{by}_std"] = best[gs[0]][2] if len(gs) == 1 else math.nan
        if at == "best":  # a number when the row is one group, else the rounds joined
            rounds = list(dict.fromkeys(best[g][3] for g in gs))
            row["chosen_round"] = rounds[0] if len(rounds) == 1 else ", ".join(map(str, rounds))
        rows.append(row)
    return pd.DataFrame(rows)


def _protocol(
    runs: pd.DataFrame,
    order: Sequence[tuple[tuple[Hashable, ...], tuple[Hashable, ...]]],
    cols: Sequence[str],
    tried: Sequence[str],
    groups: Sequence[str],
    by: str,
    at: str,
    seeds: set[int],
) -> str:
    """ "lr chosen per algorithm × compressor from {0.01, 0.1, 1} by the highest mean
    val_accuracy over 3 seeds at the last evaluation; test metrics and bits reported at that
    choice"."""
    names = ", ".join(_short(c, cols) for c in cols)
    sets = {c: _values([k[cols.index(c)] for _, k in order]) for c in cols}

    def braces(c: str) -> str:
        return "{" + ", ".join("-" if v is None else _show(v) for v in sets[c]) + "}"

    shown = [c for c in cols if c in tried] or list(cols)
    space = (
        braces(shown[0])
        if len(shown) == 1
        else " × ".join(f"{_short(c, cols)} ∈ {braces(c)}" for c in shown)
    )
    per = f" per {' × '.join(_short(g, groups) for g in groups)}" if groups else ""
    n = sorted(seeds)
    over = f"{n[0]} seed{'s' if n[0] > 1 else ''}" if len(n) == 1 else f"{n[0]}–{n[-1]} seeds"
    which = "highest" if higher_is_better(by) else "lowest"
    when = (
        "at the last evaluation; test metrics and bits reported at that choice"
        if at == "last"
        else "at the best round of each mean curve (early stopping); test metrics and bits "
        "reported at that choice and round"
    )
    return f"{names} chosen{per} from {space} by the {which} mean {by} over {over} {when}"


def with_choice(table: pd.DataFrame, sel: Selection) -> pd.DataFrame:
    """The summary table with the chosen values (a column per selected field), the selection
    metric's mean ± std and the chosen round after the label, and the protocol and edge
    notes first among its notes."""
    extra = sel.choices.set_index("label")
    out = table.copy()
    for i, col in enumerate(extra.columns, start=1):
        out.insert(i, col, out["label"].map(extra[col]).to_numpy())
    out.attrs = {
        **table.attrs,
        "notes": [f"selection: {sel.protocol}", *sel.notes, *table.attrs.get("notes", [])],
    }
    return out
