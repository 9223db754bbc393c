"""Checkpoints are data, not instructions (issue 23, faults 2 and 3): a file names its state
classes only from a closed registry (nothing is imported because a file says so), and its
round, counters and state must fit the job before a run resumes from it; an invalid one is
ignored with one warning line and the run starts from round 0 with the numbers of a clean run.
"""

from __future__ import annotations

import json
import math
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_env, make_task, run_rounds
from test_cli import assert_same_numbers, fail_in_round, invoke, run_metrics, write
from test_reliability import GRID, rows_per_run

from fedbench import checkpoint
from fedbench import grid as gridlib

CPU = torch.device("cpu")


def saved(tmp_path: Path, key: str = "k" * 16) -> Path:
    """A real checkpoint of FedAvg after 2 rounds, written for `key`."""
    state, _, _ = run_rounds("fedavg", {"lr": 0.1}, make_env(make_task()), 2)
    checkpoint.save(tmp_path, key, checkpoint.Checkpoint(2, state, 1.0, 2.0, 3.0, {}))
    return tmp_path / f"{key}.pt"


def tamper(path: Path, change: Callable[[dict[str, Any], list[torch.Tensor]], None]) -> None:
    """Rewrite a checkpoint file's JSON meta and tensors in place, as an editor of it could."""
    raw = torch.load(path, weights_only=True)
    meta, tensors = json.loads(raw["meta"]), list(raw["tensors"])
    change(meta, tensors)
    torch.save({**raw, "meta": json.dumps(meta), "tensors": tensors}, path)


def rename_classes(node: Any, name: str) -> None:
    if isinstance(node, dict):
        if "N" in node:
            node["N"] = name
        for v in node.values():
            rename_classes(v, name)
    elif isinstance(node, list):
        for v in node:
            rename_classes(v, name)


@pytest.mark.parametrize(
    "name",
    [
        "fedbench.__main__:Checkpoint",  # importing it re-ran the CLI inside the job (hang)
        "fedbench.checkpoint:Checkpoint",  # a fedbench NamedTuple, but not an algorithm state
        "os:system",
        "fedbench.algorithms.fedavg:nope",
    ],
)
def test_a_checkpoint_naming_a_class_outside_the_registry_imports_nothing(
    tmp_path: Path, name: str
) -> None:
    """Fault 2 reproduced: the decoder imported any `fedbench.*` module a file named. Now the
    name is looked up in `state_classes` only: no module is imported, the file is no
    checkpoint."""
    path = saved(tmp_path)
    tamper(path, lambda meta, _: rename_classes(meta["state"], name))
    before = set(sys.modules)
    assert checkpoint.load(tmp_path, "k" * 16, CPU) is None
    assert set(sys.modules) == before
    assert "fedbench.__main__" not in sys.modules


def test_the_state_registry_is_closed_and_names_every_state() -> None:
    """The registry holds only fedbench NamedTuples of algorithm/compressor modules (states
    round-trip for every algorithm: test_faults), not the checkpoint's own record."""
    classes = checkpoint.state_classes()
    assert classes["fedbench.algorithms.fedavg:FedAvgState"].__name__ == "FedAvgState"
    assert "fedbench.algorithms.base:Broadcast" in classes  # a helper's state, imported
    for record in ("fedbench.checkpoint:Checkpoint", "fedbench.algorithms.base:Algorithm"):
        assert record not in classes
    assert all(k.startswith("fedbench.") for k in classes)
    assert not any(k.startswith(("fedbench.__main__", "fedbench.cli")) for k in classes)


def fresh_and_saved(tmp_path: Path) -> tuple[Any, checkpoint.Checkpoint]:
    state, _, _ = run_rounds("fedavg", {"lr": 0.1}, make_env(make_task()), 0)
    back = checkpoint.load(tmp_path, "k" * 16, CPU) if saved(tmp_path) else None
    assert back is not None
    return state, back


BAD: dict[str, Callable[[checkpoint.Checkpoint], checkpoint.Checkpoint]] = {
    "round -3": lambda c: c._replace(round=-3),
    "round 0": lambda c: c._replace(round=0),
    "round R": lambda c: c._replace(round=10),
    "round 4.5": lambda c: c._replace(round=4.5),
    "round True": lambda c: c._replace(round=True),
    "round '4'": lambda c: c._replace(round="4"),
    "bits_up -1e30": lambda c: c._replace(bits_up=-1e30),
    "bits_down nan": lambda c: c._replace(bits_down=math.nan),
    "wall_s inf": lambda c: c._replace(wall_s=math.inf),
    "extra -1": lambda c: c._replace(extra={"sim_time_s": -1.0}),
    "extra text": lambda c: c._replace(extra={"sim_time_s": "x"}),
    "tensor shape": lambda c: c._replace(state=_first_tensor(c.state, lambda t: t[:-1])),
    "tensor dtype": lambda c: c._replace(state=_first_tensor(c.state, lambda t: t.double())),
    "other state": lambda c: c._replace(state=(c.state,)),
}


def _first_tensor(state: Any, change: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    fields = list(state)
    i = next(i for i, v in enumerate(fields) if isinstance(v, torch.Tensor))
    fields[i] = change(fields[i])
    return type(state)(*fields)


@pytest.mark.parametrize("bad", sorted(BAD))
def test_problem_names_each_invalid_checkpoint(tmp_path: Path, bad: str) -> None:
    fresh, good = fresh_and_saved(tmp_path)
    assert checkpoint.problem(good, fresh, 10) is None
    reason = checkpoint.problem(BAD[bad](good), fresh, 10)
    assert reason is not None and "\n" not in reason


@pytest.mark.parametrize(
    ("bad", "change"),
    [
        ("round -3", lambda meta, tensors: meta.update(round=-3)),
        ("round 4.5", lambda meta, tensors: meta.update(round=4.5)),
        ("bits_up -1e30", lambda meta, tensors: meta.update(bits_up=-1e30)),
        ("a tensor's shape", lambda meta, tensors: tensors.__setitem__(0, tensors[0][:-1])),
    ],
)
def test_an_invalid_checkpoint_is_ignored_with_a_warning_and_the_run_starts_over(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    bad: str,
    change: Callable[[dict[str, Any], list[torch.Tensor]], None],
) -> None:
    """Fault 3 reproduced on a real run: interrupted in round 6 (checkpoint of round 4), its
    checkpoint edited. round = −3 used to write rounds −2, −1 and end `done` with shifted
    bits; 4.5 resumed as 4; bits_up = −1e30 was carried on. Now: one warning line, rounds 0..8
    exactly once, every row rewritten (a sentinel in round 3 is gone), the clean run's numbers."""
    monkeypatch.setenv("FEDBENCH_CHECKPOINTS", str(tmp_path / "ckpt"))
    grid_path = write(tmp_path, GRID.format(rounds=8, ckpt=2, seeds=[0]))
    only = ("--only", "algorithm.name=scaffold")
    ref, db = tmp_path / "ref.db", tmp_path / "db.db"
    assert invoke("run", grid_path, "--db", ref, *only).exit_code == 0
    job = next(j for j in gridlib.load(grid_path).jobs if j.algorithm == "scaffold")
    with monkeypatch.context() as m:
        fail_in_round(m, job, KeyboardInterrupt(), at=6)
        assert invoke("run", grid_path, "--db", db, *only).exit_code == 130
    path = tmp_path / "ckpt" / f"{job.key}.pt"
    tamper(path, change)
    with sqlite3.connect(db) as c:
        c.execute(
            "UPDATE metrics SET value = -1 WHERE round = 3 AND name = 'train_loss' AND run_id ="
            " (SELECT id FROM runs WHERE key = ?)",
            (job.key,),
        )
    capfd.readouterr()
    result = invoke("run", grid_path, "--db", db, *only)
    assert result.exit_code == 0, result.output
    err = capfd.readouterr().err + result.output
    warnings = [line for line in err.splitlines() if "ignoring its checkpoint" in line]
    assert len(warnings) == 1 and job.key in warnings[0], err
    assert rows_per_run(db)[job.key] == list(range(9))
    assert_same_numbers(run_metrics(db, job.key), run_metrics(ref, job.key))
