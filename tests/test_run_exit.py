"""`fedbench run`'s exit status (issue 23, item 13): 1 when a job of the run failed with an
error, so CI notices; 0 when every job ended done or diverged (a diverged run is a result)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_cli import fail_in_round, invoke, runs, words, write

from fedbench import grid as gridlib
from fedbench.commands.run import FAILED_EXIT

# one grid, two jobs: a step size that diverges and one that does not
GRID = """
[experiment]
name = "exits"
rounds = 4
eval_every = 2

[task]
dataset = "digits"
model = "logreg"
clients = 3
reg = "l2"
lam = 0.1

[algorithm]
local_steps = 1

[grid]
"algorithm.lr" = [0.05, 1e30]
"""


def jobs(path: Path) -> tuple[gridlib.Job, gridlib.Job]:
    good, wild = sorted(gridlib.load(path).jobs, key=lambda j: j.config["algorithm"]["lr"])
    return good, wild


def test_a_diverged_run_is_a_result_exit_0(tmp_path: Path) -> None:
    path, db = write(tmp_path, GRID), tmp_path / "r.db"
    result = invoke("run", path, "--db", db)
    assert result.exit_code == 0, result.output
    assert "1 done, 0 failed, 1 diverged" in words(result.output)


def test_a_failed_job_makes_run_exit_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, db = write(tmp_path, GRID), tmp_path / "r.db"
    good, wild = jobs(path)
    with monkeypatch.context() as m:
        fail_in_round(m, good, RuntimeError("injected failure in round 2"), at=2)
        result = invoke("run", path, "--db", db)
    assert FAILED_EXIT == 1
    assert result.exit_code == FAILED_EXIT, result.output
    assert "0 done, 1 failed, 1 diverged" in words(result.output)  # the grid went on
    status = runs(db).set_index("key")["status"]
    assert status[good.key] == "failed" and status[wild.key] == "diverged"
    # a run that finds only the old failure (not rerun) ran nothing that failed: 0
    result = invoke("run", path, "--db", db)
    assert result.exit_code == 0, result.output
    assert "0 to run" in words(result.output)
    # rerun and fixed: 0
    result = invoke("run", path, "--db", db, "--rerun-failed")
    assert result.exit_code == 0, result.output
    assert runs(db).set_index("key")["status"][good.key] == "done"


def test_exit_statuses_are_in_run_help() -> None:
    text = " ".join(invoke("run", "--help").output.split())
    assert "1 when any job of this run failed with an error" in text
    assert "0 when every job that ran ended done or diverged" in text
