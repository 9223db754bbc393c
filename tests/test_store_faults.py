"""Faults of the store found by adversarial testing (issue 23), each reproduced first: prune
touching another grid file's experiment, `done` with rounds outside 0..R, a frozen writer
blocking everyone, leases taken from live holders, read-only commands rewriting old files."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fedbench import grid as gridlib
from fedbench.cli import app
from fedbench.store import RunSpec, Store, StoreError

GRID = """
[task]
dataset = "digits"
model = "logreg"
clients = 4
[algorithm]
lr = {lr}
[experiment]
rounds = 2
eval_every = 1
[grid]
"algorithm.name" = ["fedavg", "scaffold"]
"""


def invoke(*args: object) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def record_grid(store: Store, path: Path, status: str) -> list[str]:
    """What `fedbench run` records for a grid file: its experiment and a run per job, `status`."""
    g = gridlib.load(path)
    exp = store.upsert_experiment(g.name, str(path), g.text)
    specs = [RunSpec(j.key, j.seed, j.algorithm, j.compressor, j.dataset, j.model,
                     gridlib.run_config(j)) for j in g.jobs]  # fmt: skip
    store.ensure_runs(exp, specs)
    for j in g.jobs:
        rid = store.start_run(j.key, "h", "cpu")
        for t in range(3):
            store.log_round(rid, t, {"train_loss": 1.0})
        store.finish_run(rid, status, rounds=2)
    return [j.key for j in g.jobs]


# --------------------------------------------------------------------------- fault 1: prune


def test_prune_refuses_another_grid_files_experiment_as_run_does(tmp_path: Path) -> None:
    a, b = tmp_path / "a" / "study.toml", tmp_path / "b" / "study.toml"
    for path, lr in ((a, 0.1), (b, 0.2)):
        path.parent.mkdir()
        path.write_text(GRID.format(lr=lr), encoding="utf-8")
    assert gridlib.load(a).name == gridlib.load(b).name == "study"  # the default name
    db = tmp_path / "r.db"
    with Store(str(db)) as s:
        keys = record_grid(s, a, "done")
    expected = (
        f"error: {b}: experiment 'study' in sqlite:///{db} belongs to grid file {a} "
        "(other content); give this grid another [experiment] name"
    )
    ran = invoke("run", b, "--db", db)
    assert ran.exit_code == 2 and ran.stderr.strip() == expected
    for args in ((), ("--yes",)):
        pruned = invoke("prune", b, "--db", db, *args)
        assert pruned.exit_code == 2, pruned.output
        assert pruned.stderr.strip() == expected and pruned.stdout == ""
    with Store(str(db)) as s:
        runs = s.runs_records(experiment="study")
    assert sorted(r["key"] for r in runs) == sorted(keys)
    assert {r["status"] for r in runs} == {"done"}
    # a's own file still prunes (nothing stale here)
    own = invoke("prune", a, "--db", db, "--yes")
    assert own.exit_code == 0 and "nothing to prune (2 runs" in own.stdout


# --------------------------------------------------------------------------- fault 3: done


def claimed_run(store: Store, rounds: int = 4) -> tuple[int, str]:
    """A run of a 4-round experiment, claimed and started: (run id, lease token)."""
    config = {"experiment": {"rounds": rounds}, "task": {"dataset": "digits"}}
    exp = store.upsert_experiment("done", "g.toml", "")
    store.ensure_runs(exp, [RunSpec("aaaa0001", 0, "fedavg", "identity", "digits", "mlp", config)])
    claim = store.claim("aaaa0001", "A/1", "here:1", timeout=60)
    assert claim is not None
    return store.start_run("aaaa0001", "here", "cpu", token=claim.token), claim.token


@pytest.mark.parametrize("bad", [-1, -3])
def test_a_negative_or_fractional_round_is_refused_at_write_time(tmp_path: Path, bad: int) -> None:
    with Store(str(tmp_path / "r.db")) as s:
        rid, token = claimed_run(s)
        with pytest.raises(StoreError, match=f"round {bad}"):
            s.log_rounds(rid, [(0, {"loss": 1.0}), (bad, {"loss": 2.0})], token)
        with pytest.raises(StoreError, match="not an integer"):
            s.log_round(rid, 399.9, {"loss": 1.0}, token)  # type: ignore[arg-type]
        assert s.metrics_records([rid]) == []  # nothing of a refused batch is written
        for t in range(5):
            s.log_round(rid, t, {"loss": 1.0}, token)
        assert s.finish_run(rid, "done", token=token, rounds=4) == "done"


@pytest.mark.parametrize("forged", [[-2, -1], [5], [7, 9]])
def test_done_needs_exactly_rounds_0_to_R(tmp_path: Path, forged: list[int]) -> None:
    """Rows outside 0..R that got in anyway (forged into the file, or written by an older
    fedbench from a checkpoint with round = -3) make the run failed, not done."""
    db = tmp_path / "r.db"
    with Store(str(db)) as s:
        rid, token = claimed_run(s)
        for t in range(5):
            s.log_round(rid, t, {"loss": 1.0}, token)
    con = sqlite3.connect(db)
    with con:
        con.executemany(
            "INSERT INTO metrics (run_id, round, name, value) VALUES (?, ?, 'loss', 0.5)",
            [(rid, t) for t in forged],
        )
    con.close()
    with Store(str(db)) as s:
        assert s.finish_run(rid, "done", token=token, rounds=4) == "failed"
        run = s.get_run("aaaa0001")
    assert run["status"] == "failed"
    assert f"outside 0..4 ({', '.join(map(str, forged))})" in run["error"]
