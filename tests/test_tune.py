"""`fedbench tune` (issue 25 item 3): Optuna studies whose trials are ordinary fedbench runs in
the same database; exactly N complete + pruned trials whatever gets killed; no run twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

pytest.importorskip("optuna")  # the optional extra `tune` (in `dev`)
import optuna
from optuna.trial import TrialState

from fedbench import grid, tune
from fedbench.store import Store

GRID = """
[experiment]
name = "tunetiny"
rounds = 4
eval_every = 1
[task]
dataset = "digits"
model = "logreg"
clients = 6
val_fraction = 0.2
[algorithm]
name = "fedavg"
lr = 0.1
local_steps = 2
"""
SPACE = "algorithm.lr=log(1e-3,1)"


def counts(url: str) -> dict[str, int]:
    """Trial states over every study of the database (none yet: empty)."""
    storage = optuna.storages.RDBStorage(url)
    out: dict[str, int] = {}
    for name in optuna.study.get_all_study_names(storage):
        for t in optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False):
            out[t.state.name] = out.get(t.state.name, 0) + 1
    storage.engine.dispose()
    return out


def done(url: str) -> int:
    c = counts(url)
    return c.get("COMPLETE", 0) + c.get("PRUNED", 0)


def launch(path: Path, url: str, trials: int) -> subprocess.Popen[str]:
    env = {**os.environ, tune.HEARTBEAT_ENV: "1", "FEDBENCH_LEASE_TIMEOUT": "2"}
    cmd = [sys.executable, "-m", "fedbench", "tune", str(path), "--space", SPACE,
           "--trials", str(trials), "--db", url, "--device", "cpu"]  # fmt: skip
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def kill_after(proc: subprocess.Popen[str], url: str, at_least: int, limit_s: float = 120) -> None:
    """SIGKILL `proc` once the study holds `at_least` counted trials (mid-trial, usually)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and proc.poll() is None and done(url) < at_least:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0]  # still running: killed mid-study
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def check_study(url: str, trials: int) -> None:
    """Exactly `trials` complete + pruned trials; every run belongs to a trial, is logged once
    per round, and a complete trial's run is done."""
    storage = optuna.storages.RDBStorage(url)
    (name,) = optuna.study.get_all_study_names(storage)
    study_trials = optuna.load_study(study_name=name, storage=storage).get_trials()
    storage.engine.dispose()
    counted = [t for t in study_trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(counted) == trials
    keys = {k for t in study_trials for k in t.user_attrs.get("keys", [])}
    s = Store(url)
    try:
        runs = s.runs_frame("tunetiny")
        assert set(runs["key"]) <= keys and runs["key"].is_unique
        status = dict(zip(runs["key"], runs["status"], strict=True))
        for t in study_trials:
            if t.state == TrialState.COMPLETE:
                assert status[t.user_attrs["keys"][0]] == "done"
        metrics = s.metrics_frame(list(runs["run_id"]), ["val_accuracy"])
        assert not metrics.duplicated(["run_id", "round"]).any()  # no round logged twice
        ids = dict(zip(runs["key"], runs["run_id"], strict=True))
        for k, st in status.items():
            if st == "done":
                assert sorted(metrics[metrics["run_id"] == ids[k]]["round"]) == [0, 1, 2, 3, 4]
    finally:
        s.close()


@pytest.fixture
def grid_file(tmp_path: Path) -> Path:
    path = tmp_path / "tunetiny.toml"
    path.write_text(GRID, encoding="utf-8")
    return path


def test_space_and_metric_are_checked() -> None:
    (lr,) = tune.parse_space(["algorithm.lr=log(1e-3, 1)"])
    assert (lr.kind, lr.low, lr.high) == ("log", 1e-3, 1.0)
    (mu,) = tune.parse_space(["algorithm.mu=[0.001, 0.01]"])
    assert mu.choices == (0.001, 0.01)
    for bad, why in [("lr=log(1,2)", "section.field"), ("algorithm.lr=log(0,1)", "bounds > 0"),
                     ("algorithm.lr=uniform(2,1)", "low < high"),
                     ("algorithm.name=['a']", "cell"), ("algorithm.lr=[]", "list")]:  # fmt: skip
        with pytest.raises(tune.TuneError, match=why):
            tune.parse_space([bad])
    with pytest.raises(tune.TuneError, match="a test metric"):
        tune.direction("test_accuracy")
    assert tune.direction("val_accuracy") == "maximize" and tune.direction("val_loss") == "minimize"


def test_trials_are_runs_read_back_and_the_best_grid_runs_them(
    grid_file: Path, tmp_path: Path
) -> None:
    """A choice of two values over 5 trials: two runs, every other trial reads one back; the
    written grid has exactly the best trial's job key."""
    url = f"sqlite:///{tmp_path / 't.db'}"
    said: list[str] = []
    best = tmp_path / "best.toml"
    space = ["algorithm.lr=[0.05, 0.5]"]
    out = tune.tune(grid_file, space, 5, "val_accuracy", "none", url, torch.device("cpu"), best,
                    said.append)  # fmt: skip
    assert done(url) == 5 and counts(url) == {"COMPLETE": 5}
    s = Store(url)
    runs = s.runs_frame("tunetiny")
    s.close()
    assert len(runs) == 2 and set(runs["status"]) == {"done"}
    assert sorted(runs["algorithm.lr"]) == [0.05, 0.5]
    (cell, values), = out  # fmt: skip
    best_job = tune.trial_jobs(cell, values)[0]
    (written,) = grid.load(best).jobs
    # the best trial's configuration under the experiment name + "-best" (its own experiment)
    assert written.config["experiment"]["name"] == "tunetiny-best"
    renamed = {**written.config, "experiment": {**written.config["experiment"], "name": "tunetiny"}}
    assert grid.job_key(renamed, written.seed) == best_job.key
    assert best_job.key in set(runs["key"])
    assert any("5 complete + 0 pruned" in line for line in said), said
    # a rerun of the finished study runs nothing
    tune.tune(grid_file, space, 5, "val_accuracy", "none", url, torch.device("cpu"), None,
              said.append)  # fmt: skip
    assert done(url) == 5


def test_the_cli_refuses_a_test_metric_and_a_grid_without_validation(grid_file: Path) -> None:
    from typer.testing import CliRunner

    from fedbench.cli import app

    r = CliRunner().invoke(app, ["tune", str(grid_file), "--space", SPACE, "--by", "perplexity"])
    assert r.exit_code == 2 and "a test metric" in r.stderr
    grid_file.write_text(GRID.replace("val_fraction = 0.2\n", ""), encoding="utf-8")
    r = CliRunner().invoke(app, ["tune", str(grid_file), "--space", SPACE, "--db", "sqlite://"])
    assert r.exit_code == 2 and "needs [task] val_fraction > 0" in r.stderr


def killed_twice_then_rerun(grid_file: Path, url: str) -> None:
    for at_least in (4, 10):
        kill_after(launch(grid_file, url, 20), url, at_least)
    assert done(url) < 20
    proc = launch(grid_file, url, 20)
    output = proc.communicate(timeout=400)[0]
    assert proc.returncode == 0, output
    assert "complete +" in output
    check_study(url, 20)


@pytest.mark.slow
def test_killed_twice_finishes_with_exactly_n_trials_sqlite(
    grid_file: Path, tmp_path: Path
) -> None:
    killed_twice_then_rerun(grid_file, f"sqlite:///{tmp_path / 't.db'}")


@pytest.fixture
def postgres() -> Iterator[str]:
    if not os.environ.get("FEDBENCH_TEST_POSTGRES"):
        pytest.skip("set FEDBENCH_TEST_POSTGRES to a URL")
    from test_store import drop_postgres_database, fresh_postgres_database

    url = fresh_postgres_database()
    yield url
    drop_postgres_database(url)


@pytest.mark.slow
def test_killed_twice_finishes_with_exactly_n_trials_postgres(
    grid_file: Path, postgres: str
) -> None:
    killed_twice_then_rerun(grid_file, postgres)


@pytest.mark.slow
def test_two_launchers_share_one_study(grid_file: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 't.db'}"
    procs = [launch(grid_file, url, 12) for _ in range(2)]
    outputs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    check_study(url, 12)
    storage = optuna.storages.RDBStorage(url)
    (name,) = optuna.study.get_all_study_names(storage)
    trials = optuna.load_study(study_name=name, storage=storage).get_trials()
    launchers = {t.user_attrs["launcher"] for t in trials if "launcher" in t.user_attrs}
    assert len(launchers) == 2  # both worked on the one study


def test_the_readme_flow_runs_the_written_best_grid_on_the_same_database(
    grid_file: Path, tmp_path: Path
) -> None:
    """`tune --write best.toml` then `run best.toml` on the same database (the README's worked
    example): the written grid has an experiment of its own, so `run` (and `run --dry-run`)
    accept it; the tuned grid's experiment still refuses another file's grid."""
    from typer.testing import CliRunner

    from fedbench.cli import app

    db, best = f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "best.toml"
    tuned = ["tune", str(grid_file), "--space", "algorithm.lr=[0.05, 0.5]", "--trials", "2"]
    r = CliRunner().invoke(app, [*tuned, "--pruner", "none", "--db", db, "--write", str(best)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["run", str(best), "--db", db, "--dry-run"])
    assert r.exit_code == 0 and "1 of 1 jobs would run" in r.output, r.output
    r = CliRunner().invoke(app, ["run", str(best), "--db", db, "--workers", "1"])
    assert r.exit_code == 0, r.output
    s = Store(db)
    assert set(s.runs_frame("tunetiny-best")["status"]) == {"done"}
    s.close()
    # another file under the tuned experiment's name: refused by run and by --dry-run alike
    other = tmp_path / "other.toml"
    other.write_text(GRID.replace("rounds = ", "rounds = 1"), encoding="utf-8")
    for extra in ([], ["--dry-run"]):
        r = CliRunner().invoke(app, ["run", str(other), "--db", db, *extra])
        assert r.exit_code == 2 and "belongs to grid file" in r.stderr, r.output
