"""Leases: many `fedbench run` launchers on one grid run every job exactly once; a launcher
that dies or hangs mid-grid has its jobs taken over; a writer that lost its lease cannot
delete, add or finish anything (issue 17, fault 1)."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from test_store import POSTGRES, fresh_postgres_database

from fedbench.store import SCHEMA_VERSION, LeaseLostError, RunSpec, Store

HERE = socket.gethostname()
CONFIG: dict[str, Any] = {"algorithm": {"name": "fedavg"}}


def spec(key: str) -> RunSpec:
    return RunSpec(key, 0, "fedavg", "identity", "digits", "mlp", CONFIG)


def new_store(url: str, keys: list[str]) -> Store:
    store = Store(url)
    exp = store.upsert_experiment("leases", "g.toml", "")
    store.ensure_runs(exp, [spec(k) for k in keys])
    return store


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=POSTGRES)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'leases.db'}"
    return fresh_postgres_database()


# --------------------------------------------------------------------------- the store API


def test_a_live_lease_is_not_claimed_twice(url: str) -> None:
    with new_store(url, ["aaaa0001"]) as s:
        first = s.claim("aaaa0001", "A/1", "far-host:1", timeout=60)
        assert first is not None and first.attempts == 1 and first.taken_over is None
        assert s.claim("aaaa0001", "B/1", "other-host:2", timeout=60) is None
        run = s.get_run("aaaa0001")
        assert (run["status"], run["lease_owner"], run["attempts"]) == ("running", "far-host:1", 1)


def test_a_stale_lease_is_taken_over_and_the_old_holder_can_write_nothing(url: str) -> None:
    """Fault 1: the old holder (A) resumes after B took the run over. A's deletion of rows,
    its rounds and its `done` are all refused; B's run ends done with every round."""
    with new_store(url, ["aaaa0001"]) as s:
        a = s.claim("aaaa0001", "A/1", "far-host:1", timeout=0.2)
        assert a is not None
        rid = s.start_run("aaaa0001", "far-host", "cpu", token=a.token)
        for t in range(4):
            s.log_round(rid, t, {"loss": 1.0 - t / 10}, a.token)
        assert s.claim("aaaa0001", "B/1", "other-host:2", timeout=60) is None  # still fresh
        time.sleep(0.5)  # A stops heartbeating: its lease goes stale
        b = s.claim("aaaa0001", "B/1", "other-host:2", timeout=0.2)
        assert b is not None and b.attempts == 2 and b.taken_over == "far-host:1"
        s.start_run("aaaa0001", "other-host", "cpu", resume_round=1, token=b.token)
        with pytest.raises(LeaseLostError, match="held by other-host:2"):
            s.log_round(rid, 2, {"loss": -99.0}, a.token)
        with pytest.raises(LeaseLostError):
            s.start_run("aaaa0001", "far-host", "cpu", token=a.token)  # would delete B's rows
        with pytest.raises(LeaseLostError):
            s.finish_run(rid, "done", token=a.token, rounds=5)
        assert not s.heartbeat(rid, a.token) and s.heartbeat(rid, b.token)
        for t in range(2, 6):
            s.log_round(rid, t, {"loss": 1.0 - t / 10}, b.token)
        assert s.finish_run(rid, "done", token=b.token, rounds=5) == "done"
        m = s.metrics_frame([rid])
    assert m["round"].tolist() == list(range(6))
    assert -99.0 not in m["value"].tolist()


def test_done_needs_every_round(url: str) -> None:
    with new_store(url, ["aaaa0001"]) as s:
        c = s.claim("aaaa0001", "A/1", f"{HERE}:{os.getpid()}", timeout=60)
        assert c is not None
        rid = s.start_run("aaaa0001", HERE, "cpu", token=c.token)
        for t in (0, 1, 2, 4):  # round 3 missing
            s.log_round(rid, t, {"loss": 1.0}, c.token)
        assert s.finish_run(rid, "done", token=c.token, rounds=4) == "failed"
        run = s.get_run("aaaa0001")
    assert run["status"] == "failed" and "rounds 0..4" in run["error"]
    assert "(first 3)" in run["error"]


def test_a_holder_process_gone_from_this_host_is_taken_over_at_once(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer exists (a kill -9'd launcher on this host)
    with new_store(str(tmp_path / "l.db"), ["aaaa0001", "bbbb0002"]) as s:
        assert s.claim("aaaa0001", "A/1", f"{HERE}:{dead.pid}", timeout=3600) is not None
        assert s.claim("bbbb0002", "A/2", f"{HERE}:{os.getpid()}", timeout=3600) is not None
        assert s.claimable(["aaaa0001", "bbbb0002"], 3600, ("pending",)) == ["aaaa0001"]
        taken = s.claim("aaaa0001", "B/1", f"{HERE}:{os.getpid()}", timeout=3600)
        assert taken is not None and taken.taken_over == f"{HERE}:{dead.pid}"
        assert s.claim("bbbb0002", "B/2", f"{HERE}:1234567", timeout=3600) is None  # alive


def test_release_puts_one_launchers_runs_back_to_pending(url: str) -> None:
    with new_store(url, ["aaaa0001", "bbbb0002", "cccc0003"]) as s:
        for key, token in (("aaaa0001", "L1/a"), ("bbbb0002", "L1/b"), ("cccc0003", "L2/c")):
            assert s.claim(key, token, "far:1", timeout=60) is not None
        assert s.release("L1") == 2
        status = s.statuses(["aaaa0001", "bbbb0002", "cccc0003"])
    assert status == {"aaaa0001": "pending", "bbbb0002": "pending", "cccc0003": "running"}


def test_version_1_database_gains_the_lease_columns(tmp_path: Path) -> None:
    db = tmp_path / "v1.db"
    with new_store(str(db), ["aaaa0001"]) as s:
        rid = s.start_run("aaaa0001", "h", "cpu")
        s.log_round(rid, 0, {"loss": 1.0})
        s.finish_run(rid, "done")
    with sqlite3.connect(db) as c:  # what fedbench 0.x wrote: no lease columns, version 1
        for col in ("lease_token", "lease_owner", "heartbeat_at", "attempts"):
            c.execute(f"ALTER TABLE runs DROP COLUMN {col}")
        c.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    with Store(str(db)) as s:
        run = s.get_run("aaaa0001")
        assert (run["status"], run["attempts"], run["rounds_logged"]) == ("done", 0, 0)
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT value FROM meta").fetchone() == (str(SCHEMA_VERSION),)


# --------------------------------------------------------------------------- real launchers

# Two algorithms on a small MLP, the seeds, rounds and checkpoints filled in by each test
# (tests/test_faults.py runs the same grid under its own name).
BASE_GRID = """
[experiment]
name = "leases"
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
GRID = BASE_GRID + '"compressor.name" = ["identity", "topk"]\n'


def launch(
    grid: Path, db: str, tmp_path: Path, i: int, timeout: float = 60, *extra: str
) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "FEDBENCH_LEASE_TIMEOUT": str(timeout),
        "FEDBENCH_CHECKPOINTS": str(tmp_path / "ckpt"),
        "OMP_NUM_THREADS": "1",
        "COLUMNS": "200",
    }
    cmd = [sys.executable, "-m", "fedbench", "run", str(grid), "--db", db, *extra]
    out = (tmp_path / f"launcher{i}.out").open("w")
    return subprocess.Popen(
        cmd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def done_lines(tmp_path: Path, n: int) -> list[str]:
    """The job keys each launcher reports as finished, over all launchers."""
    keys = []
    for i in range(n):
        for line in (tmp_path / f"launcher{i}.out").read_text().splitlines():
            if line.startswith(("done ", "failed ", "diverged ")):
                keys.append(line.split()[1])
    return keys


def check_exactly_once(url: str, rounds: int, jobs: int) -> dict[str, Any]:
    with Store(url) as s:
        runs = s.runs_frame(experiment="leases")
        m = s.metrics_frame(runs["run_id"].tolist(), names=["bits_up"])
    assert len(runs) == jobs and set(runs["status"]) == {"done"}
    per_run = m.groupby("run_id")["round"].apply(list)
    assert all(r == list(range(rounds + 1)) for r in per_run), per_run
    return {str(k): int(a) for k, a in zip(runs["key"], runs["attempts"], strict=True)}


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=POSTGRES)])
def test_three_launchers_at_once_run_every_job_exactly_once(tmp_path: Path, backend: str) -> None:
    """3 real `fedbench run` processes started together on one grid of 12 jobs: every job is
    claimed once (attempts = 1), reported done by exactly one launcher, rounds 0..R once."""
    n, rounds = 3, 15
    grid = tmp_path / "g.toml"
    grid.write_text(GRID.format(seeds=3, rounds=rounds, ckpt=0))
    url = f"sqlite:///{tmp_path / 'many.db'}" if backend == "sqlite" else fresh_postgres_database()
    procs = [launch(grid, url, tmp_path, i) for i in range(n)]
    codes = [p.wait(timeout=600) for p in procs]
    outputs = [(tmp_path / f"launcher{i}.out").read_text() for i in range(n)]
    assert codes == [0] * n, outputs
    attempts = check_exactly_once(url, rounds, 12)
    finished = done_lines(tmp_path, n)
    duplicates = len(finished) - len(set(finished))
    assert duplicates == 0 and sorted(finished) == sorted(attempts)
    assert set(attempts.values()) == {1}


def _holder_pid(url: str, pgid: int) -> tuple[str, int] | None:
    """A run held (mid-way: round 3 or later logged) by a process of the given launcher's
    process group, read through the Store (SQLite or PostgreSQL)."""
    try:
        with Store(url) as s:
            runs = s.runs_frame(experiment="leases")
            held = runs[runs["status"] == "running"]
            rows = [(str(k), o, s.last_round(int(r))) for k, o, r in
                    zip(held["key"], held["lease_owner"], held["run_id"], strict=True)]  # fmt: skip
    except Exception:  # the database is being created by the launcher
        return None
    for key, owner, r in rows:
        pid = int(str(owner).rsplit(":", 1)[1])
        try:
            if r is not None and r >= 3 and os.getpgid(pid) == pgid:
                return key, pid
        except ProcessLookupError:
            continue
    return None


def _wait_for(pred: Any, limit: float, what: str) -> Any:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


# on PostgreSQL under `make test-all`: the default run has its claims racing between real
# launchers (test_three_launchers_at_once_run_every_job_exactly_once[postgresql]) and a stale
# lease taken over through the store (test_a_stale_lease_is_taken_over_and_...[postgresql])
@pytest.mark.parametrize(
    ("how", "backend"),
    [
        ("kill", "sqlite"),
        pytest.param("kill", "postgresql", marks=[POSTGRES, pytest.mark.slow]),
        pytest.param("stop", "sqlite", marks=pytest.mark.slow),
    ],
)
def test_a_launcher_dying_or_hanging_mid_grid_has_its_job_taken_over(
    tmp_path: Path, how: str, backend: str
) -> None:
    """A launcher with 2 pool workers holds a job mid-way when it is killed with -9 (its
    workers exit with it; as gone processes of this host their jobs are taken over at once)
    or stopped with SIGSTOP (a hung host: its heartbeats stop and its jobs are taken over only
    after the lease timeout; continued later, it finds its lease lost and writes nothing more).
    Two more launchers finish the grid. Every job ends done with rounds 0..R exactly once; only
    the victim's jobs have a second attempt; no launcher reports a job twice."""
    # 1500 rounds: rounds this fast are written in 50 ms batches (runner.FLUSH_SECONDS), so a
    # job must last long enough (~1 s here) for the kill to land mid-way. One seed: 4 jobs,
    # the victim's 2 in flight and 2 never started (12 made the survivors run 10 more jobs)
    n, rounds, timeout, jobs = 3, 1500, 4.0, 4
    grid = tmp_path / "g.toml"
    grid.write_text(GRID.format(seeds=1, rounds=rounds, ckpt=50))
    url = f"sqlite:///{tmp_path / 'takeover.db'}"
    if backend == "postgresql":
        url = fresh_postgres_database()
    victim = launch(grid, url, tmp_path, 0, timeout, "--workers", "2")
    procs = [victim]
    try:
        key, pid = _wait_for(lambda: _holder_pid(url, victim.pid), 600, "a job mid-way")
        if how == "kill":  # the launcher only: its pool workers must follow by themselves
            os.kill(victim.pid, signal.SIGKILL)
        else:
            os.killpg(victim.pid, signal.SIGSTOP)
        with Store(url) as s:
            held = s.get_run(key)
        last_beat, first_start = held["heartbeat_at"], held["started_at"]
        if how == "kill":  # the pool workers follow their parent
            _wait_for(lambda: not _pids_in_group(victim.pid), 10, "the workers to exit")
        procs += [launch(grid, url, tmp_path, i, timeout) for i in (1, 2)]

        def new_owner() -> Any:
            """The run once another launcher has claimed it and started it: between its claim
            and its start_run, started_at is still the victim's (a takeover measured from it
            read ~0 s)"""
            with Store(url) as s:
                run = s.get_run(key)
            return (
                str(run["lease_owner"]) != f"{HERE}:{pid}"
                and run["started_at"] != first_start
                and run
            )

        taken = _wait_for(new_owner, 600, "the takeover")
        takeover = (taken["started_at"] - last_beat).total_seconds()
        if how == "stop":
            assert takeover >= timeout  # not before the lease went stale
            os.killpg(victim.pid, signal.SIGCONT)
        codes = [p.wait(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    print(f"{how}: taken over {takeover:.1f}s after the last heartbeat (timeout {timeout:g}s)")
    outputs = [(tmp_path / f"launcher{i}.out").read_text() for i in range(n)]
    assert codes == ([-signal.SIGKILL] if how == "kill" else [0]) + [0, 0], outputs
    if how == "stop":
        assert "lost" in outputs[0]
    attempts = check_exactly_once(url, rounds, jobs)
    # taken over: the watched job, and at most the job of the victim's other worker
    assert attempts[key] == 2 and set(attempts.values()) <= {1, 2}
    assert sum(a == 2 for a in attempts.values()) <= 2
    finished = done_lines(tmp_path, n)  # a killed launcher's buffered lines are lost
    assert len(finished) == len(set(finished))  # duplicates found: 0
    if how == "stop":
        assert sorted(finished) == sorted(attempts)


def _pids_in_group(pgid: int) -> list[int]:
    """The live (not zombie) processes of a process group."""
    out = subprocess.run(["ps", "-eo", "pid=,pgid=,stat="], capture_output=True, text=True).stdout
    rows = (line.split() for line in out.splitlines())
    return [int(p) for p, g, stat in rows if int(g) == pgid and not stat.startswith("Z")]


def test_ls_shows_who_holds_each_running_job(tmp_path: Path) -> None:
    import json

    from test_cli import invoke

    db = tmp_path / "ls.db"
    with new_store(str(db), ["aaaa0001", "bbbb0002"]) as s:
        assert s.claim("aaaa0001", "L/1", "node-7:4242", timeout=60) is not None
    result = invoke("ls", "--db", db, "--format", "json")
    assert result.exit_code == 0, result.output
    rows = {r["key"]: r for r in json.loads(result.stdout)}
    assert rows["aaaa0001"]["holder"] == "node-7:4242" and rows["aaaa0001"]["status"] == "running"
    assert rows["bbbb0002"]["holder"] is None
