"""Configuration labels: which config fields vary across runs and the short label of each run.

Inputs are the store's ``runs`` frame (one row per run, the resolved config flattened into
"section.field" columns). Runs that differ only by seed share a configuration label.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from fedbench.report_options import BANDS, BITS, FORMATS, PLOTS, X_AXES  # noqa: F401 (re-exported)

# Config columns that never define a configuration: run bookkeeping and free text.
BOOKKEEPING = ("experiment.name", "experiment.seeds", "experiment.description")
SEED_FIELDS = ("seed", "seeds")
# Per-run columns of the runs frame that --group-by may also name.
RUN_COLUMNS = ("experiment", "algorithm", "compressor", "dataset", "model", "seed")
# Label order of sections: the algorithm first, then what it sends, then the task.
SECTION_ORDER = ("algorithm", "compressor", "downlink", "task", "experiment")

MISSING = "-"
BAND = "min–max"


class ReportError(ValueError):
    """A report that cannot be made as asked; the message is one line."""


class Shape(NamedTuple):
    """How a figure is shaped beyond its data (the report's --color-by ... --smooth). Here,
    not in plots.py, so that `report` without plots does not import matplotlib."""

    color_by: str | None = None  # one colour per value of this field
    style_by: str | None = None  # one line style and marker per value of this field
    logy: bool | None = None  # None: the metric's default
    xlim: tuple[float, float] | None = None
    ylim: tuple[float, float] | None = None
    smooth: int = 1  # moving average over this many evaluations (1: none)


# --------------------------------------------------------------------------- configurations


def _absent(v: Any) -> bool:
    """True for None, NaN and pandas' missing markers (never for tuples or strings)."""
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    return isinstance(v, (float, np.floating)) and math.isnan(v)


def _key(v: Any) -> Hashable:
    """A hashable, comparable stand-in for a config value (lists -> tuples, numpy -> Python)."""
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if isinstance(v, (list, tuple)):
        return tuple(_key(i) for i in v)
    if isinstance(v, dict):
        return tuple(sorted((str(k), _key(x)) for k, x in v.items()))
    if isinstance(v, np.generic):
        return v.item()
    return v


def _config_columns(runs: pd.DataFrame) -> list[str]:
    """The "section.field" columns of a runs frame."""
    return [str(c) for c in runs.columns if "." in str(c)]


def _keys(runs: pd.DataFrame, col: str) -> list[Hashable | None]:
    """Per run the comparable value of ``col``, None where the field is absent."""
    return [None if _absent(v) else _key(v) for v in runs[col].tolist()]


def _determines(by: list[Hashable | None], present: list[bool]) -> bool:
    """Whether the values ``by`` determine ``present`` (constant within each value)."""
    seen: dict[Hashable | None, bool] = {}
    return all(seen.setdefault(b, p) == p for b, p in zip(by, present, strict=True))


def _field_rank(col: str, position: int) -> tuple[int, int, int]:
    section, _, field = col.partition(".")
    rank = SECTION_ORDER.index(section) if section in SECTION_ORDER else len(SECTION_ORDER)
    return (rank, 0 if field == "name" else 1, position)


def varying_fields(runs: pd.DataFrame) -> list[str]:
    """Config columns ("section.field") whose values differ across runs.

    Seeds and bookkeeping columns (experiment.name, experiment.seeds, experiment.description)
    are never varying. A column that is absent (None/NaN) for some runs varies when its present
    values differ, or when its presence is not explained by a column whose values vary: e.g.
    ``compressor.ratio`` present only for the topk runs is implied by ``compressor.name`` and is
    left out, so labels stay short while distinct configurations keep distinct labels. Returned
    in label order: algorithm, compressor, downlink, task, experiment, "*.name" first in each.
    """
    cols = [
        c
        for c in _config_columns(runs)
        if c not in BOOKKEEPING and c.rpartition(".")[2] not in SEED_FIELDS
    ]
    keys = {c: _keys(runs, c) for c in cols}
    by_value = [c for c in cols if len({k for k in keys[c] if k is not None}) > 1]
    varying = set(by_value)
    for c in cols:
        present = [k is not None for k in keys[c]]
        if c in varying or all(present) or not any(present):
            continue
        if not any(_determines(keys[v], present) for v in by_value):
            varying.add(c)
    order = {c: i for i, c in enumerate(cols)}
    return sorted(varying, key=lambda c: _field_rank(c, order[c]))


def _resolve_group_by(runs: pd.DataFrame, group_by: Sequence[str]) -> list[str]:
    """Check group-by names against the frame; a bare field name may stand for "section.field"."""
    config = _config_columns(runs)
    allowed = config + [c for c in RUN_COLUMNS if c in runs.columns]
    out: list[str] = []
    for name in group_by:
        if name in allowed:
            out.append(name)
            continue
        matches = [c for c in config if c.rpartition(".")[2] == name]
        if len(matches) == 1:
            out.append(matches[0])
            continue
        what = f"ambiguous ({', '.join(matches)})" if matches else "unknown"
        raise ReportError(f"group-by field {name!r} is {what}: allowed: {', '.join(allowed)}")
    return out


def _show(v: Any) -> str:
    """A config value as a grid would write it: 0.01, true, [1, 2], topk."""
    v = _key(v)
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))  # 16, not 16.0 (a column with a missing value holds floats)
    if isinstance(v, tuple):
        return "[" + ", ".join(_show(i) for i in v) + "]"
    return str(v)


def _algorithm_names(runs: pd.DataFrame) -> list[str]:
    for col in ("algorithm.name", "algorithm"):
        if col in runs.columns:
            return [MISSING if _absent(v) else _show(v) for v in runs[col].tolist()]
    return ["all"] * len(runs)


EF = "compressor.error_feedback"


def with_ef_names(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs with error feedback spelled one way everywhere, as the compressor's own name and
    the store's ``compressor`` column spell it: ``compressor.name`` "ef(topk)" where
    ``compressor.error_feedback`` is true, and that column dropped."""
    if EF not in runs.columns or "compressor.name" not in runs.columns:
        return runs
    out = runs.drop(columns=[EF])
    on = runs[EF].map(lambda v: not _absent(v) and bool(v)).to_numpy(dtype=bool)
    names = runs["compressor.name"].tolist()
    out["compressor.name"] = [f"ef({n})" if e and not _absent(n) else n
                              for n, e in zip(names, on, strict=True)]  # fmt: skip
    return out


def config_labels(runs: pd.DataFrame, group_by: Sequence[str] | None = None) -> pd.Series:
    """Per run a short configuration label built from the group-by fields.

    ``group_by`` defaults to :func:`varying_fields`. "*.name" fields (and the runs frame's own
    algorithm/compressor/... columns) show their value only, joined by " + " ("fedavg + topk");
    other fields show "field=value" with the field's last part ("ratio=0.01"), or the full
    "section.field" when two chosen fields share a last part; fields absent for a run are
    skipped. Runs differing only by seed get the same label; a run whose label would be empty
    (a single configuration) gets its algorithm name, and default labels always start with it
    ("diloco, local_steps=10" when only local_steps varies).

    An explicit ``group_by`` is strict: a run without a field is labelled "(no ratio)" (its own
    row, never pooled with another value or named after its algorithm) unless another chosen
    field already tells it apart (ratio absent exactly for compressor identity); a false switch
    reads "error_feedback=false"; :func:`pooled_fields` names what such rows pool.
    """
    if group_by is not None:  # error feedback is part of the compressor's name
        group_by = list(dict.fromkeys(
            "compressor.name" if g in (EF, "error_feedback") and EF in runs.columns else g
            for g in group_by
        ))  # fmt: skip
    runs = with_ef_names(runs)
    fields = varying_fields(runs) if group_by is None else _resolve_group_by(runs, group_by)
    if group_by is None:
        fields = _without_bookkeeping(runs, fields)
    named = "algorithm.name" in fields or "algorithm" in fields
    if group_by is None and fields and "algorithm.name" in runs.columns and not named:
        fields = ["algorithm.name", *fields]  # the curve names its method: "diloco, H=10"
    lasts = [f.rpartition(".")[2] for f in fields]
    names = [f for f in fields if f.endswith(".name") or "." not in f]
    params = {
        f: (f if lasts.count(last) > 1 else last) for f, last in zip(fields, lasts, strict=True)
    }
    columns = {f: runs[f].tolist() for f in fields}
    fallback = _algorithm_names(runs)
    strict = group_by is not None
    # strict: a field absent for some runs is labelled "(no field)" unless another chosen field
    # tells those runs apart already (ratio absent for identity, present for topk)
    keys = {f: _keys(runs, f) for f in fields}
    unexplained = {
        f
        for f in fields
        if strict
        and not any(
            _determines(keys[g], [k is not None for k in keys[f]]) for g in fields if g != f
        )
    }
    labels: list[str] = []
    for i in range(len(runs)):
        head = [
            _show(columns[f][i]) if not _absent(columns[f][i]) else f"(no {f.partition('.')[0]})"
            for f in names
            if f in unexplained or not _absent(columns[f][i])
        ]
        tail = []
        for f in fields:
            v = columns[f][i]
            if f in names:
                continue
            if _absent(v):
                if f in unexplained:  # a run without the field is its own row
                    tail.append(f"(no {params[f]})")
            elif v is True:  # a switch reads as its name when on ("error_feedback")
                tail.append(params[f])
            elif v is not False or strict:  # ... and is left out when off
                tail.append(f"{params[f]}={_show(v)}")
        parts = [" + ".join(head)] if head else []
        labels.append(", ".join(parts + tail) or fallback[i])
    return pd.Series(labels, index=runs.index, name="label", dtype=object)


# Fields that say how a run was run, not what was compared: left out of default labels when
# the other varying fields already tell the configurations apart.
# experiment fields that change what a metric means: a label whenever they differ
MEANINGFUL = ("experiment.eval_clients",)
QUIET = ("eval_every", "deadline_s", "log_every", "checkpoint_every", "rounds")


def _without_bookkeeping(runs: pd.DataFrame, fields: list[str]) -> list[str]:
    """``fields`` without bookkeeping ones (experiment.*, :data:`QUIET`) that do not matter:
    dropping one keeps as many distinct configurations. When they are the axis of
    comparison (the only thing that differs), they stay."""
    out = list(fields)
    quiet = [
        f
        for f in fields
        if (f.startswith("experiment.") and f not in MEANINGFUL) or f.rpartition(".")[2] in QUIET
    ]

    def distinct(cols: list[str]) -> int:
        return len({tuple(_keys(runs, c)[i] for c in cols) for i in range(len(runs))})

    for f in quiet:
        rest = [c for c in out if c != f]
        if rest and distinct(rest) == distinct(out):
            out = rest
    return out


def pooled_fields(runs: pd.DataFrame, group_by: Sequence[str] | None) -> dict[str, list[str]]:
    """The varying config fields an explicit ``group_by`` leaves out, with the values each
    pools within some row: {"algorithm.name": ["fedavg", "scaffold"]}; {} when nothing is
    pooled (every row is one configuration over seeds)."""
    if group_by is None:
        return {}
    labels = config_labels(runs, group_by)
    chosen = set(_resolve_group_by(runs, group_by))
    out: dict[str, list[str]] = {}
    for col in varying_fields(runs):
        if col in chosen:
            continue
        values = runs[col].map(lambda v: MISSING if _absent(v) else _show(v))
        if (values.groupby(labels.to_numpy()).nunique() > 1).any():
            out[col] = list(dict.fromkeys(values.tolist()))
    return out


def _label_order(runs: pd.DataFrame, labels: pd.Series) -> list[str]:
    """Labels in order of first appearance by run_id (the grid's order)."""
    order = runs["run_id"].argsort(kind="stable") if "run_id" in runs.columns else range(len(runs))
    return list(dict.fromkeys(labels.iloc[list(order)].tolist()))


# Sections and task fields that :func:`shared_settings` names when every run has one value.
SHARED_TASK = ("task.dataset", "task.model", "task.clients", "task.partition", "task.alpha")


def shared_fields(runs: pd.DataFrame) -> dict[str, Any]:
    """The config fields every run has, with one value: {"compressor.ratio": 0.05, ...}. A
    field some runs lack (their component does not take it) is not shared."""
    out: dict[str, Any] = {}
    for col in _config_columns(runs):
        keys = _keys(runs, col)
        if keys and all(k is not None for k in keys) and len(set(keys)) == 1:
            out[col] = runs[col].iloc[0]
    return out


def shared_settings(runs: pd.DataFrame) -> str:
    """What every run shares, as one caption line: "fedavg · compressor ef(topk) (ratio=0.05)
    · digits, mlp, clients=20, dirichlet, alpha=0.3"; "" when nothing is.

    Names the algorithm, every compressor / downlink field (but the bit convention, which the
    bits axis names) and the main task fields that every run has, with one value. A field
    some runs lack (their component does not take it, e.g. ``compressor.ratio`` when half
    the runs use identity) is not shared: the caption states only what is true of every
    plotted run."""
    runs = with_ef_names(runs)
    shared = shared_fields(runs)

    def one(col: str) -> Any | None:
        return shared.get(col)

    def field(col: str, v: Any) -> str:
        last = col.rpartition(".")[2]
        return last if v is True else f"{last}={_show(v)}"

    parts: list[str] = []
    algo = one("algorithm.name")
    if algo is not None:
        parts.append(_show(algo))
    for section in ("compressor", "downlink"):
        name = one(f"{section}.name")
        rest = [
            field(c, v)
            for c in _config_columns(runs)
            if c.startswith(f"{section}.")
            and c not in (f"{section}.name", f"{section}.bits")  # bits: on the bits axis
            and (v := one(c)) is not None
            and _key(v) is not False
        ]
        if name is not None:
            parts.append(f"{section} {_show(name)}" + (f" ({', '.join(rest)})" if rest else ""))
        elif rest:
            parts.append(f"{section}: {', '.join(rest)}")
    task = []
    for col in SHARED_TASK:
        v = one(col)
        if v is not None:
            task.append(
                _show(v)
                if col in ("task.dataset", "task.model", "task.partition")
                else field(col, v)
            )
    if task:
        parts.append(", ".join(task))
    sample = one("experiment.eval_clients")  # train_loss on a fixed sample of clients
    if sample is not None and not _absent(sample) and int(sample) > 0:
        parts.append(f"train loss on {int(sample)} sampled clients")
    return " · ".join(parts)
