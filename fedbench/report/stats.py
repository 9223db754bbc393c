"""Is one configuration better than another, or is it the seeds? Two rows of a report
compared over their runs' final values: a paired t-test when both rows ran the same seeds
(the seed fixes data split, init and sampling, so the per-seed difference removes what both
share), else Welch's t-test; a seeded percentile bootstrap CI of the mean difference; and a
note when the difference is below one test sample (1/n_test, the resolution of accuracy).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from fedbench.report.labels import ReportError

BOOTSTRAP = 10_000
BOOTSTRAP_SEED = 0


class TTest(NamedTuple):
    kind: str  # "paired" | "Welch"
    diff: float  # mean(a) − mean(b)
    t: float
    df: float
    p: float  # two-sided


def _t_sf2(t: float, df: float) -> float:
    """Two-sided p-value of Student's t with ``df`` degrees of freedom."""
    from scipy import stats

    if math.isnan(t):
        return float("nan")
    return float(2 * stats.t.sf(abs(t), df))


def paired_t(a: np.ndarray, b: np.ndarray) -> TTest:
    """Paired t-test of a − b (same seeds, in the same order): t = mean(d) / (sd(d)/√n),
    n − 1 degrees of freedom (as scipy.stats.ttest_rel)."""
    d = np.asarray(a, float) - np.asarray(b, float)  # [n]
    n = len(d)
    if n < 2:
        return TTest("paired", float(d.mean()) if n else float("nan"), math.nan, n - 1, math.nan)
    sd = float(d.std(ddof=1))
    mean = float(d.mean())
    t = (
        mean / (sd / math.sqrt(n))
        if sd > 0
        else (math.copysign(math.inf, mean) if mean else math.nan)
    )
    return TTest("paired", mean, t, n - 1, _t_sf2(t, n - 1))


def welch_t(a: np.ndarray, b: np.ndarray) -> TTest:
    """Welch's unequal-variance t-test of mean(a) − mean(b), Welch–Satterthwaite degrees of
    freedom (as scipy.stats.ttest_ind(equal_var=False))."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    na, nb = len(a), len(b)
    diff = float(a.mean() - b.mean()) if na and nb else math.nan
    if na < 2 or nb < 2:
        return TTest("Welch", diff, math.nan, math.nan, math.nan)
    va, vb = a.var(ddof=1) / na, b.var(ddof=1) / nb
    se = math.sqrt(va + vb)
    if se == 0:
        return TTest("Welch", diff, math.nan, math.nan, math.nan)
    df = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
    t = diff / se
    return TTest("Welch", diff, t, float(df), _t_sf2(t, df))


def bootstrap_ci(
    a: np.ndarray, b: np.ndarray, paired: bool, n_boot: int = BOOTSTRAP, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float]:
    """95% percentile bootstrap CI of mean(a) − mean(b): resampling seeds (pairs) when
    ``paired``, else each row's runs on their own; ``n_boot`` resamples from ``seed``."""
    rng = np.random.default_rng(seed)
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) == 0 or len(b) == 0:
        return math.nan, math.nan
    if paired:
        d = a - b  # [n]
        idx = rng.integers(0, len(d), size=(n_boot, len(d)))  # [B, n]
        stats = d[idx].mean(axis=1)  # [B]
    else:
        ia = rng.integers(0, len(a), size=(n_boot, len(a)))
        ib = rng.integers(0, len(b), size=(n_boot, len(b)))
        stats = a[ia].mean(axis=1) - b[ib].mean(axis=1)
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return float(lo), float(hi)


def test_samples(accuracies: np.ndarray, most: int = 100_000) -> int | None:
    """The number of test samples n_test that accuracies (k/n_test each) imply: the least
    common multiple of their reduced denominators, None when it exceeds ``most`` (values that
    are no fractions of one test set, e.g. averaged over batches)."""
    n = 1
    for v in np.asarray(accuracies, float):
        if not np.isfinite(v):
            continue
        f = Fraction(float(v)).limit_denominator(most)
        if abs(float(f) - v) > 1e-9:
            return None
        n = n * f.denominator // math.gcd(n, f.denominator)
        if n > most:
            return None
    return n if n > 1 else None


def compare_values(
    a: pd.Series, b: pd.Series, metric: str, n_boot: int = BOOTSTRAP
) -> dict[str, Any]:
    """Compare per-seed final values (index: seed) of two rows: paired when both have the same
    seeds once each, else Welch; bootstrap CI; the test-sample note for accuracies."""
    a, b = a.dropna(), b.dropna()
    paired = len(a) > 1 and a.index.is_unique and b.index.is_unique and set(a.index) == set(b.index)
    if paired:
        b = b.reindex(a.index)
        test = paired_t(a.to_numpy(), b.to_numpy())
    else:
        test = welch_t(a.to_numpy(), b.to_numpy())
    lo, hi = bootstrap_ci(a.to_numpy(), b.to_numpy(), paired, n_boot)
    out: dict[str, Any] = {
        "test": test.kind,
        "n_a": len(a),
        "n_b": len(b),
        "diff": test.diff,
        "t": test.t,
        "df": test.df,
        "p_value": test.p,
        "ci95_low": lo,
        "ci95_high": hi,
    }
    out["note"] = ""
    if "accuracy" in metric:
        n_test = test_samples(np.concatenate([a.to_numpy(), b.to_numpy()]))
        if n_test is not None and abs(test.diff) < 1 / n_test:
            out["note"] = (
                f"|difference| {abs(test.diff):.4g} is below one test sample "
                f"(1/{n_test} = {1 / n_test:.4g})"
            )
    return out


def final_values(runs: pd.DataFrame, metrics: pd.DataFrame, metric: str) -> pd.Series:
    """Per run (index run_id) the last logged value of ``metric``."""
    m = metrics[(metrics["name"] == metric) & metrics["run_id"].isin(runs["run_id"])]
    if m.empty:
        raise ReportError(f"--compare: no {metric!r} metric in these runs")
    return m.sort_values(["run_id", "round"]).groupby("run_id")["value"].last()


def compare(
    runs: pd.DataFrame,
    metrics: pd.DataFrame,
    labels: pd.Series,
    pairs: list[tuple[str, str]],
    metric: str = "test_accuracy",
    n_boot: int = BOOTSTRAP,
) -> pd.DataFrame:
    """One row per (A, B) pair of row labels: the difference of ``metric``'s final value
    (A − B) over their runs, the test, its p-value and the bootstrap CI. ``runs`` are the
    comparable ones (:func:`fedbench.report.select.comparable`), ``labels`` theirs."""
    finals = final_values(runs, metrics, metric)
    seeds = runs.set_index("run_id")["seed"] if "seed" in runs.columns else None
    rows = []
    for a, b in pairs:
        vals = []
        a, b = _row(runs, labels, a), _row(runs, labels, b)
        for name in (a, b):
            ids = runs.loc[(labels == name).to_numpy(), "run_id"]
            v = finals.reindex(ids)
            v.index = pd.Index(
                seeds.reindex(ids).to_numpy() if seeds is not None else range(len(v))
            )
            vals.append(v)
        result = compare_values(vals[0], vals[1], metric, n_boot)
        rows.append({"a": a, "b": b, "metric": metric, **result})
    table = pd.DataFrame(rows)
    table.attrs["notes"] = [
        f"diff = mean {metric} of a − b (final values); paired t-test when a and b ran the same "
        f"seeds, else Welch; ci95: percentile bootstrap, B = {n_boot}, seed {BOOTSTRAP_SEED}",
        *[n for n in table["note"] if n],
    ]
    keep = ["a", "b", "test", "n_a", "n_b", "diff", "ci95_low", "ci95_high", "p_value"]
    return table[keep]


def _row(runs: pd.DataFrame, labels: pd.Series, name: str) -> str:
    """The row label ``name`` means: itself, else the one label whose runs all have
    algorithm.name == name; refused with the labels otherwise."""
    shown = list(dict.fromkeys(labels.tolist()))
    if name in shown:
        return name
    if "algorithm.name" in runs.columns:
        algo = runs["algorithm.name"].astype(str).to_numpy()
        hits = [lab for lab in shown if set(algo[(labels == lab).to_numpy()]) == {name}]
        if len(hits) == 1:
            return hits[0]
    raise ReportError(
        f"--compare {name!r}: no finished runs with this label or algorithm; "
        f"labels: {'; '.join(shown)}"
    )
