"""Cross-device scale: `[experiment] eval_clients` and the memory estimate."""

from __future__ import annotations

from pathlib import Path

import torch

from fedbench import grid, runner
from fedbench.task import eval_sample

GRID = """
[experiment]
rounds = 1
{extra}
[task]
dataset = "synthetic"
clients = 40
max_samples = 60
model = "logreg"
[algorithm]
name = "scaffold"
participation = 0.1
"""


def job(extra: str = "", seed_line: str = "") -> grid.Job:
    (j,) = grid.parse(GRID.format(extra=extra) + seed_line, Path("scale.toml")).jobs
    return j


def test_eval_clients_is_in_the_config_and_keys_only_when_set() -> None:
    plain, zero, five = job(), job("eval_clients = 0"), job("eval_clients = 5")
    assert plain.config["experiment"]["eval_clients"] == 0  # stated in every run's config
    assert five.config["experiment"]["eval_clients"] == 5
    assert plain.key == zero.key != five.key  # existing grids keep their keys


def test_runner_evaluates_the_seeded_sample() -> None:
    j = job("eval_clients = 5")
    task, _, _ = runner.build(j, torch.device("cpu"))
    want = eval_sample(40, 5, j.seed, torch.device("cpu"))
    assert task.eval_ids is not None and want is not None and torch.equal(task.eval_ids, want)
    w = torch.zeros(task.d)
    assert runner.evaluate(task, w)["train_loss"] == task.sampled_train_loss(w, want)
    full, _, _ = runner.build(job(), torch.device("cpu"))
    assert full.eval_ids is None
