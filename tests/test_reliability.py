"""Never lose or double a result: a process pool gives the in-process numbers, a `kill -9` of a
real `fedbench run` mid-grid is healed by running the same command again, and a checkpointed
run resumes where it was with the numbers of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import plugin_source
from test_cli import assert_same_numbers, fail_in_round, invoke, run_metrics, runs, words, write
from test_store import POSTGRES, fresh_postgres_database

from fedbench import checkpoint, plugins
from fedbench import grid as gridlib

GRID = """
[experiment]
name = "reliable"
seeds = {seeds}
rounds = {rounds}
eval_every = 3
checkpoint_every = {ckpt}

[task]
dataset = "digits"
model = "mlp"
hidden = [32]
clients = 8

[algorithm]
lr = 0.1
local_steps = 2
batch_size = 16

[compressor]
ratio = 0.1

[grid]
"algorithm.name" = ["fedavg", "scaffold"]
"compressor.name" = ["identity", "topk"]
"""


def rows_per_run(db: Path) -> dict[str, list[int]]:
    """key -> sorted list of rounds that have a bits_up row (one per round when healthy)."""
    with sqlite3.connect(db) as c:
        q = "SELECT key, round FROM metrics JOIN runs ON runs.id = run_id WHERE name = 'bits_up'"
        out: dict[str, list[int]] = {}
        for key, r in c.execute(q):
            out.setdefault(key, []).append(int(r))
    return {k: sorted(v) for k, v in out.items()}


def test_pool_of_workers_gives_the_in_process_numbers(tmp_path: Path) -> None:
    grid_path = write(tmp_path, GRID.format(rounds=4, ckpt=0, seeds=[0, 1]))
    ref, pool = tmp_path / "ref.db", tmp_path / "pool.db"
    assert invoke("run", grid_path, "--db", ref).exit_code == 0
    result = invoke("run", grid_path, "--db", pool, "--workers", "2")
    assert result.exit_code == 0, result.output
    assert "2 workers on cpu" in words(result.output)
    assert set(runs(pool)["status"]) == {"done"}
    for job in gridlib.load(grid_path).jobs:
        assert_same_numbers(run_metrics(pool, job.key), run_metrics(ref, job.key))


def ray_grid(tmp_path: Path) -> Path:
    """FedAvg with identity and top-k, and a plugin's method and compressor (a variant), 3
    rounds: the plugin's file sits beside the grid, as a user's own method would."""
    source = plugin_source("damped_avg", "damping", 0.5, "A test plugin run on Ray.")
    (tmp_path / "methods").mkdir()
    (tmp_path / "methods" / "damped.py").write_text(source)
    text = GRID.format(rounds=3, ckpt=0, seeds=[0])
    text = text.replace("[experiment]\n", '[experiment]\nplugins = ["methods/damped.py"]\n')
    text = text.replace('"algorithm.name" = ["fedavg", "scaffold"]', "")
    variant = '[[variant]]\n"algorithm.name" = "damped_avg"\n"compressor.name" = "scaled_sign"\n'
    return write(tmp_path, text + variant)


def test_ray_executor_gives_the_in_process_numbers(tmp_path: Path) -> None:
    """A local Ray started by fedbench runs each job as a task writing to the same SQLite file
    (dev installs include Ray, so CI runs this); its workers import the grid's plugin before
    building a job, so a user's own method runs there with the in-process numbers."""
    pytest.importorskip("ray")
    grid_path = ray_grid(tmp_path)
    ref, on_ray = tmp_path / "ref.db", tmp_path / "ray.db"
    try:
        assert invoke("run", grid_path, "--db", ref).exit_code == 0
        result = invoke("run", grid_path, "--db", on_ray, "--executor", "ray")
        assert result.exit_code == 0, result.output
        assert "Ray (local)" in words(result.output)
        jobs = gridlib.load(grid_path).jobs
    finally:
        for p in plugins.loaded():
            plugins._forget(p)
    by = {(j.algorithm, j.compressor) for j in jobs}
    assert by == {("fedavg", "identity"), ("fedavg", "topk"), ("damped_avg", "scaled_sign")}
    assert set(runs(on_ray)["status"]) == {"done"} and len(runs(on_ray)["status"]) == 3
    for job in jobs:
        assert_same_numbers(run_metrics(on_ray, job.key), run_metrics(ref, job.key))


@POSTGRES
def test_grid_on_postgresql_gives_the_sqlite_numbers(tmp_path: Path) -> None:
    """The same grid against a real PostgreSQL server (CI starts one) with two workers."""
    grid_path = write(tmp_path, GRID.format(rounds=3, ckpt=0, seeds=[0]))
    ref, pg = tmp_path / "ref.db", fresh_postgres_database()
    assert invoke("run", grid_path, "--db", ref).exit_code == 0
    result = invoke("run", grid_path, "--db", pg, "--workers", "2")
    assert result.exit_code == 0, result.output
    assert set(runs(pg)["status"]) == {"done"}
    for job in gridlib.load(grid_path).jobs:
        assert_same_numbers(run_metrics(pg, job.key), run_metrics(ref, job.key))
    assert "4 jobs, 0 to run (4 done)" in words(invoke("run", grid_path, "--db", pg).output)


def test_checkpointed_run_resumes_after_its_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interrupted in round 6 with checkpoint_every = 2: the checkpoint of round 4 is kept,
    the re-run keeps rounds 0..4 as they are (a sentinel survives), recomputes 5.. and ends
    with the numbers of a run that was never interrupted."""
    monkeypatch.setenv("FEDBENCH_CHECKPOINTS", str(tmp_path / "ckpt"))
    grid_path = write(tmp_path, GRID.format(rounds=8, ckpt=2, seeds=[0]))
    ref, db = tmp_path / "ref.db", tmp_path / "resume.db"
    assert invoke("run", grid_path, "--db", ref, "--only", "algorithm.name=scaffold").exit_code == 0
    job = next(j for j in gridlib.load(grid_path).jobs if j.algorithm == "scaffold")
    with monkeypatch.context() as m:
        fail_in_round(m, job, KeyboardInterrupt(), at=6)
        result = invoke("run", grid_path, "--db", db, "--only", "algorithm.name=scaffold")
    assert result.exit_code == 130
    saved = checkpoint.load(tmp_path / "ckpt", job.key, torch.device("cpu"))
    assert saved is not None and saved.round == 4
    with sqlite3.connect(db) as c:  # a sentinel in a round the resumed run must not redo
        c.execute(
            "UPDATE metrics SET value = -1 WHERE round = 3 AND name = 'train_loss' AND run_id ="
            " (SELECT id FROM runs WHERE key = ?)",
            (job.key,),
        )
    result = invoke("run", grid_path, "--db", db, "--only", "algorithm.name=scaffold")
    assert result.exit_code == 0, result.output
    got, want = run_metrics(db, job.key), run_metrics(ref, job.key)
    assert got.pop((3, "train_loss")) == -1  # rounds up to the checkpoint were kept
    want.pop((3, "train_loss"))
    assert_same_numbers(got, want)
    assert rows_per_run(db)[job.key] == list(range(9))
    assert not (tmp_path / "ckpt" / f"{job.key}.pt").exists()  # removed when the run ended


@pytest.mark.parametrize("ckpt", [3, pytest.param(0, marks=pytest.mark.slow)])
def test_kill_minus_9_mid_grid_then_the_same_command_heals_everything(
    tmp_path: Path, ckpt: int
) -> None:
    """A real `fedbench run` process is killed with SIGKILL while a job is in flight (after at
    least one job finished). Running the same command again: every job ends done, each round's
    rows exist exactly once, jobs finished before the kill are not run again."""
    # rounds this small take ~1 ms and are written in 50 ms batches (runner.FLUSH_SECONDS): a
    # job must last long enough (~0.5 s here) for the poll below to see it mid-way
    rounds = 600
    grid_path = write(tmp_path, GRID.format(rounds=rounds, ckpt=ckpt, seeds=[0]))
    db = tmp_path / "killed.db"
    env = {**os.environ, "FEDBENCH_CHECKPOINTS": str(tmp_path / "ckpt")}
    # 2 of the 4 jobs (scaffold with identity and topk): one done, the next killed mid-way
    only = ("--only", "algorithm.name=scaffold")
    cmd = [sys.executable, "-m", "fedbench", "run", str(grid_path), "--db", str(db), *only]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline:  # wait for: >= 1 done and one job mid-way
            time.sleep(0.02)
            if not db.exists():
                continue
            try:
                st = status_and_rounds(db)
            except sqlite3.OperationalError:
                continue  # tables not created yet
            done = [k for k, (s, _) in st.items() if s == "done"]
            mid = [k for k, (s, r) in st.items() if s == "running" and 7 <= r < rounds - 2]
            if done and mid:
                break
        else:
            pytest.fail("the run never reached a mid-job state to kill")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = status_and_rounds(db)
    assert "running" in {s for s, _ in before.values()}, before
    done_before = {k for k, (s, _) in before.items() if s == "done"}
    started = started_at(db)

    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    after = status_and_rounds(db)
    assert {s for s, _ in after.values()} == {"done"}
    assert all(rs == list(range(rounds + 1)) for rs in rows_per_run(db).values())
    now = started_at(db)
    assert all(now[k] == started[k] for k in done_before)  # not run again
    assert f"{len(done_before)} done" in " ".join(result.stdout.split())


def status_and_rounds(db: Path) -> dict[str, tuple[str, int]]:
    with sqlite3.connect(db, timeout=30) as c:
        q = (
            "SELECT key, status, COALESCE(MAX(round), -1) FROM runs "
            "LEFT JOIN metrics ON metrics.run_id = runs.id GROUP BY runs.id"
        )
        return {k: (s, int(r)) for k, s, r in c.execute(q)}


def started_at(db: Path) -> dict[str, Any]:
    with sqlite3.connect(db, timeout=30) as c:
        return dict(c.execute("SELECT key, started_at FROM runs"))
