"""Gradient coherence (Chatterjee & Zielinski, arXiv 2203.10036) of the per-client gradients:
known values on constructed tasks, and the `[experiment] coherence` field end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli import EVAL_ROUNDS, TINY, invoke, metrics, write

from fedbench import grid as gridlib
from fedbench.models import build_model
from fedbench.task import ClientData, Task


def binary_task(x: np.ndarray, y: np.ndarray, counts: list[int]) -> Task:
    """Binary logistic regression without regulariser: ∇f_i(0) = −(1/2) mean_j b_j a_j."""
    data = ClientData.from_numpy(
        x.astype(np.float32), y, np.array(counts), x[:1], y[:1], torch.device("cpu")
    )
    return Task(build_model("logreg", {}, (x.shape[1],), 2, binary=True), data)


def test_identical_clients_are_fully_coherent():
    rng = np.random.default_rng(0)
    x1, y1 = rng.normal(size=(7, 5)), rng.integers(0, 2, 7)
    task = binary_task(np.tile(x1, (4, 1)), np.tile(y1, 4), [7] * 4)
    w = torch.randn(5, generator=torch.Generator().manual_seed(0))
    assert task.gradient_coherence(w) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("n", [2, 5])
def test_orthogonal_clients_give_one_over_n(n):
    """Client i holds one sample a_i = e_i: at w = 0 the gradients are −b_i e_i / 2."""
    task = binary_task(np.eye(n), np.arange(n) % 2, [1] * n)
    assert task.gradient_coherence(torch.zeros(n)) == pytest.approx(1.0 / n, rel=1e-6)


def test_opposite_clients_cancel():
    x = np.array([[1.0, 2.0], [1.0, 2.0]])
    task = binary_task(x, np.array([1, 0]), [1, 1])
    assert task.gradient_coherence(torch.zeros(2)) == pytest.approx(0.0, abs=1e-12)


def test_coherence_is_logged_at_evaluations_and_leaves_other_keys_alone(tmp_path: Path):
    text = TINY.replace("eval_every = 2", "eval_every = 2\ncoherence = true")
    grid_path, db = write(tmp_path, text), tmp_path / "g.db"
    assert invoke("run", grid_path, "--db", db, "--only", "algorithm.name=fedavg").exit_code == 0
    m = metrics(db)
    c = m[m["name"] == "coherence"]
    assert set(c["round"]) == EVAL_ROUNDS
    assert ((c["value"] > 0) & (c["value"] <= 1 + 1e-9)).all()
    keys_default = {j.key for j in gridlib.parse(TINY, Path("g.toml")).jobs}
    explicit = TINY + '\n"experiment.coherence" = [false]\n'
    assert {j.key for j in gridlib.parse(explicit, Path("g.toml")).jobs} == keys_default
    assert {j.key for j in gridlib.parse(text, Path("g.toml")).jobs}.isdisjoint(keys_default)
