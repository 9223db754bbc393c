"""Regression tests of the faults found by trying to break fedbench (issue 17): signals,
checkpoints (untrusted files, other jobs' files, full disks), experiment names, dead pool
workers, grid size, and input that used to end in a traceback."""

from __future__ import annotations

import errno
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_env, make_task, run_rounds
from test_algorithms import SWEEP_PARAMS, compatible
from test_leases import _wait_for
from test_reliability import rows_per_run, status_and_rounds

from fedbench import checkpoint
from fedbench import grid as gridlib
from fedbench.algorithms import ALGORITHMS

GRID = """
[experiment]
name = "faults"
seeds = {seeds}
rounds = {rounds}
eval_every = 5
checkpoint_every = {ckpt}

[task]
dataset = "digits"
model = "mlp"
hidden = [16]
clients = 8

[algorithm]
lr = 0.1
local_steps = 1
batch_size = 16

[grid]
"algorithm.name" = ["fedavg", "scaffold"]
"""


def fedbench(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedbench", *args]


def child_env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "FEDBENCH_CHECKPOINTS": str(tmp_path / "ckpt"),
        "OMP_NUM_THREADS": "1",
        "COLUMNS": "200",
    }


# --------------------------------------------------------------------------- signals


@pytest.mark.parametrize(("sig", "workers"), [(signal.SIGTERM, "1"), (signal.SIGHUP, "2")])
def test_sigterm_and_sighup_behave_like_ctrl_c(tmp_path: Path, sig: int, workers: str) -> None:
    """A real `fedbench run` gets SIGTERM (what timeout, SLURM, Kubernetes send) or SIGHUP
    mid-job: it exits with 128 + the signal, says so, leaves no run `running` (the job in
    flight is pending, its checkpoint kept), and the same command then finishes the grid
    with every round exactly once."""
    rounds = 200
    grid = tmp_path / "g.toml"
    grid.write_text(GRID.format(seeds=2, rounds=rounds, ckpt=5))
    db = tmp_path / "sig.db"
    cmd = fedbench("run", str(grid), "--db", str(db), "--workers", workers)
    env = child_env(tmp_path)
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )

    def mid_way() -> bool:
        try:
            st = status_and_rounds(db)
        except sqlite3.OperationalError:
            return False
        return any(s == "running" and 10 <= r < rounds - 20 for s, r in st.values())

    try:
        _wait_for(mid_way, 600, "a job mid-way")
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, out
    assert f"interrupted ({signal.Signals(sig).name})" in " ".join(out.split())
    after = status_and_rounds(db)
    assert "running" not in {s for s, _ in after.values()}
    assert "pending" in {s for s, _ in after.values()}
    assert list((tmp_path / "ckpt").glob("*.pt"))  # the checkpoint of the job in flight
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr
    assert {s for s, _ in status_and_rounds(db).values()} == {"done"}
    assert all(r == list(range(rounds + 1)) for r in rows_per_run(db).values())


# --------------------------------------------------------------------------- checkpoints


class _Exploit:
    """A pickle that runs a shell command when loaded without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_checkpoint_runs_no_code(tmp_path: Path) -> None:
    """Fault 2: a `.pt` whose object reduces to os.system(...) under the checkpoint directory
    is not executed: it loads as no checkpoint and the run starts from round 0."""
    marker = tmp_path / "PWNED"
    folder = tmp_path / "ckpt"
    folder.mkdir()
    torch.save({"state": _Exploit(marker)}, folder / "aaaa000000000001.pt")
    assert checkpoint.load(folder, "aaaa000000000001", torch.device("cpu")) is None
    assert not marker.exists()


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_algorithm_state_round_trips_through_a_weights_only_checkpoint(
    tmp_path: Path, name: str
) -> None:
    task = make_task(model="mlp", n=8, per_client=10)
    comp = "topk" if "topk" in dict.fromkeys(compatible(name)) else next(iter(compatible(name)))
    env = make_env(task, comp, {"ratio": 0.25}, participation=0.5, batch_size=8)
    state, _, _ = run_rounds(name, SWEEP_PARAMS.get(name, {"lr": 0.1}), env, 2)
    ckpt = checkpoint.Checkpoint(2, state, 1.0, 2.0, 3.0, {"sim_time_s": 4.0})
    checkpoint.save(tmp_path, "k" * 16, ckpt)
    back = checkpoint.load(tmp_path, "k" * 16, torch.device("cpu"))
    assert back is not None and back.round == 2 and back.extra == {"sim_time_s": 4.0}
    assert _same(back.state, state)


def _same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, tuple):
        return type(a) is type(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, list):
        return isinstance(b, list) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b or (a != a and b != b)  # NaN == NaN here


def test_another_jobs_checkpoint_is_ignored_and_the_run_starts_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault 4: seed 0's checkpoint copied into seed 1's place is ignored (the file holds
    its job key); seed 1 runs from round 0 and gives the numbers of a clean run."""
    from test_cli import assert_same_numbers, invoke, run_metrics

    monkeypatch.setenv("FEDBENCH_CHECKPOINTS", str(tmp_path / "ckpt"))
    grid = tmp_path / "g.toml"
    grid.write_text(GRID.format(seeds=2, rounds=6, ckpt=2))
    only = ("--only", "algorithm.name=scaffold")
    ref = tmp_path / "ref.db"
    assert invoke("run", grid, "--db", ref, *only).exit_code == 0
    jobs = [j for j in gridlib.load(grid).jobs if j.algorithm == "scaffold"]
    seed0, seed1 = sorted(jobs, key=lambda j: j.seed)
    folder = tmp_path / "ckpt"
    state, _, _ = run_rounds("fedavg", {"lr": 0.1}, make_env(make_task()), 1)
    checkpoint.save(folder, seed0.key, checkpoint.Checkpoint(4, state, 9e9, 9e9, 0.0, {}))
    (folder / f"{seed0.key}.pt").rename(folder / f"{seed1.key}.pt")
    assert checkpoint.load(folder, seed1.key, torch.device("cpu")) is None
    db = tmp_path / "db.db"
    result = invoke("run", grid, "--db", db, *only)
    assert result.exit_code == 0, result.output
    assert_same_numbers(run_metrics(db, seed1.key), run_metrics(ref, seed1.key))


def test_a_full_disk_stops_checkpoints_not_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """Fault 7: ENOSPC while writing a checkpoint: one warning saying "no space left on
    device", the run ends done with every round, no temporary file is left behind."""
    from test_cli import invoke

    folder = tmp_path / "ckpt"
    monkeypatch.setenv("FEDBENCH_CHECKPOINTS", str(folder))
    written: list[Path] = []

    def full(path: Path, data: object) -> None:
        written.append(path)
        path.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "_write", full)
    grid = tmp_path / "g.toml"
    grid.write_text(GRID.format(seeds=1, rounds=8, ckpt=2))
    db = tmp_path / "full.db"
    result = invoke("run", grid, "--db", db)
    assert result.exit_code == 0, result.output
    err = capfd.readouterr().err + result.output
    assert "no space left on device" in err and "continuing without checkpoints" in err
    assert err.count("no space left on device") == 2  # once per job, not once per save
    assert {s for s, _ in status_and_rounds(db).values()} == {"done"}
    assert all(r == list(range(9)) for r in rows_per_run(db).values())
    assert len(written) == 2 and not list(folder.iterdir())  # tmp files removed
    assert str(os.getpid()) in written[0].name and written[0].name != written[1].name
