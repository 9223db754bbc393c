"""The thread and job policy (fedbench.executors.choose, OMP_WAIT_POLICY): what it chooses,
and that a job's numbers do not depend on it (in this process or a pool, 1 or 2 threads)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli import invoke, run_metrics, runs, words, write

from fedbench import executors
from fedbench import grid as gridlib

ROOT = Path(__file__).resolve().parents[1]

GRID = """
[experiment]
name = "policy"
seeds = [0, 1]
rounds = 4
eval_every = 2

[task]
dataset = "digits"
model = "mlp"
hidden = [32]
clients = 8

[algorithm]
name = "fedavg"
lr = 0.1
local_steps = 2
batch_size = 16

[compressor]
name = "topk"
ratio = 0.1
"""


SIZES = GRID.replace("hidden = [32]", "").replace(
    "[compressor]", '[grid]\n"task.hidden" = [[8], [256]]\n[compressor]'
)


def test_auto_spreads_three_or_more_jobs_per_core_over_the_cores_one_thread_each():
    assert executors.choose(12, 2)[:3] == (2, 1, "auto: 12 jobs over 2 cores, one process each")
    assert executors.choose(6, 2)[:2] == (2, 1)
    assert executors.choose(5, 2)[:2] == (1, 2)  # a small grid: worker start-up does not pay
    assert executors.choose(100, 8)[:2] == (8, 1)


def test_auto_runs_one_job_in_this_process_with_every_core_but_small_models_on_one():
    policy = executors.choose(1, 4)
    assert policy[:2] == (1, 4) and not policy.fixed
    assert executors.choose(10, 1)[:2] == (1, 1)
    slot = executors.Slot("cpu", 4, fixed=False)
    jobs = gridlib.parse(SIZES, Path("sizes.toml")).jobs
    small = next(j for j in jobs if j.config["task"]["hidden"] == [8])  # d = 610
    big = next(j for j in jobs if j.config["task"]["hidden"] == [256])  # d = 19k
    assert executors.job_threads(small, slot) == 1
    assert executors.job_threads(big, slot) == 4
    assert executors.job_threads(small, slot._replace(fixed=True)) == 4  # --threads / OMP


def test_job_threads_builds_each_distinct_model_once(monkeypatch: pytest.MonkeyPatch):
    built: list[str] = []
    real = executors.build_model

    def counting(name, *args, **kwargs):  # type: ignore[no-untyped-def]
        built.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(executors, "build_model", counting)
    executors._model_size.cache_clear()
    slot = executors.Slot("cpu", 4, fixed=False)
    jobs = gridlib.parse(SIZES, Path("sizes.toml")).jobs
    threads = [executors.job_threads(j, slot) for j in jobs + jobs]
    tasks = {json.dumps(j.config["task"], sort_keys=True) for j in jobs}
    assert len(built) == len(tasks) < len(jobs) * 2
    assert sorted(set(threads)) == [1, 4]


def test_explicit_workers_threads_and_omp_num_threads_are_kept():
    assert executors.choose(12, 2, workers=1)[:2] == (1, 2)
    assert executors.choose(12, 4, workers=2)[:2] == (2, 2)
    assert executors.choose(12, 4, workers=3, threads=3) == (3, 3, "--workers 3, --threads 3", True)
    assert executors.choose(1, 4, workers=4)[:2] == (4, 1)
    assert executors.choose(1, 4, default_threads=3) == (
        1, 3, "auto: 1 job in this process, OMP_NUM_THREADS=3", True
    )  # fmt: skip


def _env_of(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")}  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    return out.stdout.strip()


def test_fedbench_sets_a_passive_openmp_wait_policy_unless_the_user_chose_one():
    show = "import fedbench, os; print(os.environ.get('OMP_WAIT_POLICY'))"
    assert _env_of(show) == "PASSIVE"
    assert _env_of(show, OMP_WAIT_POLICY="active") == "active"
    assert _env_of(show, GOMP_SPINCOUNT="1000") == "None"


def test_numbers_do_not_depend_on_the_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """auto, a pool of two one-thread workers, and this process with 1 and with 2 threads:
    the same metrics, row for row, bit for bit (wall time aside)."""
    monkeypatch.delenv("FEDBENCH_WORKERS", raising=False)
    grid_path = write(tmp_path, GRID)
    dbs = {k: tmp_path / f"{k}.db" for k in ("auto", "pool", "one", "two")}
    result = invoke("run", grid_path, "--db", dbs["auto"])
    assert result.exit_code == 0, result.output
    expected = executors.choose(2, executors.cpu_count(), default_threads=executors.env_threads())
    assert f"({expected.why})" in words(result.output)
    result = invoke("run", grid_path, "--db", dbs["pool"], "--workers", "2")
    assert result.exit_code == 0 and "2 workers on cpu" in words(result.output), result.output
    for name, threads in (("one", "1"), ("two", "2")):
        result = invoke("run", grid_path, "--db", dbs[name], "--workers", "1", "--threads", threads)
        assert result.exit_code == 0, result.output
        assert f"1 worker on cpu, {threads} thread" in words(result.output)  # fixed: kept
    for db in dbs.values():
        assert set(runs(db)["status"]) == {"done"}
    for job in gridlib.load(grid_path).jobs:
        ref = run_metrics(dbs["one"], job.key)
        assert len(ref) > 10
        for name in ("auto", "pool", "two"):
            assert run_metrics(dbs[name], job.key) == ref  # exactly, not approximately


def test_bad_workers_and_threads_are_one_line_errors(tmp_path: Path):
    grid_path = write(tmp_path, GRID)
    for args, msg in ((("--workers", "many"), "--workers many: allowed: auto or an integer"),
                      (("--workers", "0"), "--workers 0: allowed"),
                      (("--threads", "-1"), "--threads -1: allowed")):  # fmt: skip
        result = invoke("run", grid_path, "--db", tmp_path / "x.db", *args)
        assert result.exit_code == 2 and msg in words(result.output)
