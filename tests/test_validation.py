"""`[task] val_fraction` / `val` (issue 25 item 1): a validation split carved out of the training
samples, evaluated beside the test set; without it nothing changes (keys, data, metrics)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedbench import grid, runner
from fedbench.data import DataError, load_federated
from fedbench.data.validation import held_out_samples, split

ROOT = Path(__file__).resolve().parents[1]
P = Path("val.toml")

TINY = """
[experiment]
name = "val"
rounds = 4
eval_every = 2
[task]
dataset = "digits"
model = "logreg"
clients = 6
partition = "dirichlet"
alpha = 0.5
{task}
[algorithm]
name = "fedavg"
lr = 0.1
local_steps = 2
"""


def job(task: str = "") -> grid.Job:
    return grid.parse(TINY.format(task=task), P).jobs[0]


def task_of(extra: dict[str, Any]) -> dict[str, Any]:
    return {**job().config["task"], **extra}


def test_existing_grids_keep_their_job_keys() -> None:
    """Keys of quickstart and lm_quickstart as main computed them before val_fraction existed."""
    keys = {j.key for j in grid.load(ROOT / "experiments" / "quickstart.toml").jobs}
    assert keys == {
        "245f59ba7e10f4f8", "2aeeaaf4b6047c83", "3c1c78df32134aca", "5952e98e192e1b34",
        "65a786e38fec9947", "667984e7868dd80c", "a9c044004db939e4", "b80c25d0589953cd",
        "db9c1121483c503d", "de5e080d5eb99e80", "e0d612e456010437", "f85ef9790bbbd2b5",
    }  # fmt: skip
    lm = {j.key for j in grid.load(ROOT / "experiments" / "lm_quickstart.toml").jobs}
    assert lm == {"9eb01f2ba0ea4ce4", "f158249d55b46c18"}
    # naming the defaults explicitly is the same job; a fraction is a new one
    assert job("val_fraction = 0.0").key == job('val = "samples"').key == job().key
    assert job("val_fraction = 0.2").key != job().key


def run_metrics(j: grid.Job) -> dict[int, dict[str, float]]:
    """Every logged round of `j`, run in this process (no database)."""
    rows: dict[int, dict[str, float]] = {}

    class Rows:
        def add(self, t: int, metrics: dict[str, float], write: bool) -> None:
            rows[t] = {k: v for k, v in metrics.items() if k != "wall_s"}

    task, env, alg = runner.build(j, torch.device("cpu"))
    folder = Path("/nonexistent")
    runner._loop(j, Rows(), torch.device("cpu"), 0.0, None, folder, None, task, env, alg)  # type: ignore[arg-type]
    return rows


def test_without_val_fraction_metrics_are_bit_identical_and_have_no_val() -> None:
    plain, zero = run_metrics(job()), run_metrics(job("val_fraction = 0.0"))
    assert plain == zero  # exact float equality, every round and metric
    assert not any(k.startswith("val_") for m in plain.values() for k in m)
    a, b = load_federated(task_of({}), 0), load_federated(task_of({"val_fraction": 0.0}), 0)
    assert a.x_val is None and np.array_equal(a.x, b.x) and np.array_equal(a.counts, b.counts)


def test_val_samples_are_disjoint_from_training_and_test_untouched() -> None:
    base = load_federated(task_of({}), 0)
    fd = load_federated(task_of({"val_fraction": 0.25}), 0)
    assert fd.x_val is not None and fd.y_val is not None
    assert np.array_equal(fd.x_test, base.x_test) and np.array_equal(fd.y_test, base.y_test)
    # every training sample is either still training or validation, never both
    rows = {r.tobytes() for r in base.x}
    train = [r.tobytes() for r in fd.x]
    val = [r.tobytes() for r in fd.x_val]
    assert not set(train) & set(val)
    assert len(train) + len(val) == base.x.shape[0] and set(train) | set(val) == rows
    # each client keeps its own samples, minus round(0.25 · count_i), never its last one
    want = np.minimum(np.floor(0.25 * base.counts + 0.5), base.counts - 1)
    assert np.array_equal(base.counts - fd.counts, want) and (fd.counts >= 1).all()
    again = load_federated(task_of({"val_fraction": 0.25}), 0)  # seeded by data_seed
    assert again.x_val is not None and np.array_equal(again.x_val, fd.x_val)


def test_held_out_samples_special_cases() -> None:
    rng = np.random.default_rng(0)
    counts = np.array([1, 2, 4, 10])
    mask = held_out_samples(counts, 0.5, rng)
    owner = np.repeat(np.arange(4), counts)
    assert np.bincount(owner[mask], minlength=4).tolist() == [0, 1, 2, 5]
    assert not held_out_samples(counts, 0.0, rng).any()


def test_val_clients_removes_those_clients_from_training() -> None:
    base = load_federated(task_of({}), 0)
    fd = load_federated(task_of({"val_fraction": 1 / 3, "val": "clients"}), 0)
    assert fd.n == 4 and base.n == 6  # two whole clients held out
    assert fd.x_val is not None and fd.x_val.shape[0] + fd.x.shape[0] == base.x.shape[0]
    # the held-out clients are exactly two of the original clients, whole
    starts = np.cumsum(base.counts) - base.counts
    blocks = [base.x[s : s + c].tobytes() for s, c in zip(starts, base.counts, strict=True)]
    kept = [i for i, b in enumerate(blocks) if b in fd.x.tobytes()]
    assert len(kept) == 4 and sorted(base.counts[kept].tolist()) == sorted(fd.counts.tolist())
    held = [i for i in range(6) if i not in kept]
    assert fd.x_val.tobytes() == b"".join(blocks[i] for i in held)
    with pytest.raises(DataError, match=r'val = "clients" holds out 0 of 6 clients'):
        split(base, 0.05, "clients", 0)


def test_val_metrics_are_logged_at_each_evaluation() -> None:
    rows = run_metrics(job("val_fraction = 0.2"))
    evaluated = sorted(t for t, m in rows.items() if "test_accuracy" in m)
    assert evaluated == [0, 2, 4]
    assert all({"val_loss", "val_accuracy"} <= set(rows[t]) for t in evaluated)
    assert not any("val_loss" in rows[t] for t in (1, 3))
    assert 0.0 <= rows[4]["val_accuracy"] <= 1.0 and rows[4]["val_loss"] < rows[0]["val_loss"]


def test_grid_refuses_a_bad_val_setting() -> None:
    with pytest.raises(grid.GridError, match=r"task\.val_fraction = 1\.0"):
        job("val_fraction = 1.0")
    with pytest.raises(grid.GridError, match=r"task\.val = \"rows\""):
        job('val = "rows"')
