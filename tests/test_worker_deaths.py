"""A pool worker's death is its own job's (issue 23 fault 7): a healthy job beside a worker
that dies twice is requeued, never failed, and the summary counts the failed job."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest
from test_faults import GRID, child_env, fedbench
from test_leases import _wait_for
from test_reliability import rows_per_run, status_and_rounds


def holders(db: Path) -> dict[str, tuple[int, int]]:
    """key -> (its worker's pid, its last round) for every running run."""
    try:
        with sqlite3.connect(db, timeout=30) as c:
            rows = c.execute(
                "SELECT key, lease_owner, (SELECT MAX(round) FROM metrics WHERE run_id = runs.id)"
                " FROM runs WHERE status = 'running'"
            ).fetchall()
    except sqlite3.OperationalError:
        return {}
    return {k: (int(str(o).rsplit(":", 1)[1]), r or 0) for k, o, r in rows if o}


def ended(db: Path) -> list[str]:
    """The keys of the runs that are done or failed."""
    try:
        with sqlite3.connect(db, timeout=30) as c:
            q = "SELECT key FROM runs WHERE status IN ('done', 'failed')"
            return [k for (k,) in c.execute(q)]
    except sqlite3.OperationalError:  # the launcher is creating the database
        return []


def state_and_parent(pid: int) -> tuple[str, int] | None:
    """Process `pid`'s state letter (R, S, T, Z...) and parent pid; None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def pause(db: Path, launcher: int, pid: int) -> bool:
    """SIGSTOP the live pool worker `pid` of `launcher` (its job stays in flight, claimed and
    `running`, but makes no progress): True if it is stopped. Not while it holds the
    database's write lock (a stopped writer would block every other one): it is continued
    then, and False returned, for the caller to try again later."""
    st = state_and_parent(pid)
    if st is None or st[1] != launcher or st[0] in "ZXx":
        return False
    os.kill(pid, signal.SIGSTOP)
    _wait_for(lambda: (state_and_parent(pid) or ("T",))[0] in "Tt", 10, f"{pid} to stop")
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=0.5, isolation_level=None)) as c:
            c.execute("BEGIN IMMEDIATE")
            c.execute("ROLLBACK")
    except sqlite3.OperationalError:
        os.kill(pid, signal.SIGCONT)
        return False
    return True


def resume(pids: set[int]) -> None:
    """SIGCONT the paused workers (those still there)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    pids.clear()


def two_jobs_on_two_workers(
    tmp_path: Path, db: Path, rounds: int, ckpt: int, **env: str
) -> subprocess.Popen:
    """A real `fedbench run` of a two-job grid (one seed, two algorithms) on 2 workers, with
    `env` added to its environment."""
    grid = tmp_path / "g.toml"
    grid.write_text(
        GRID.replace('"compressor.name" = ["identity", "topk"]\n', "").format(
            seeds=1, rounds=rounds, ckpt=ckpt
        )
    )
    cmd = fedbench("run", str(grid), "--db", str(db), "--workers", "2")
    return subprocess.Popen(
        cmd,
        env=child_env(tmp_path) | env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def started(pid: int) -> int:
    """When process `pid` started (clock ticks since boot)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def test_a_healthy_job_survives_its_neighbours_worker_dying_twice(tmp_path: Path) -> None:
    """Two jobs on two workers; the worker running job A is killed (-9), then the worker that
    runs A in the new pool is killed again, each time while job B runs beside it. A is failed
    ("died twice"); B was in flight both times yet ends done with rounds 0..R exactly once;
    the summary says 1 done, 1 failed (it used to fail B too and say "0 done, 0 failed").

    A's first worker is the one the pool spawned last: CPython 3.11's pool thread did not watch
    it, and its death went unseen until B ended (B ran to its end, the second kill never came).

    Each pool starts its two workers seconds apart: the job that starts first is paused
    (SIGSTOP, its worker alive and its run held) until the other's worker runs too, then
    continued just before the kill, so that the windows are as wide as the start-up lag
    without tens of thousands of rounds (30,000 ~1 ms rounds were needed without the pause).
    """
    rounds = 1500
    db = tmp_path / "deaths.db"
    proc = two_jobs_on_two_workers(tmp_path, db, rounds, ckpt=100)
    killed: list[int] = []
    victim_key: list[str] = []
    paused: set[int] = set()

    def both_running() -> tuple[str, int] | None:
        if proc.poll() is not None:
            pytest.fail(f"the run ended before kill {len(killed) + 1}: {proc.communicate()[0]}")
        if ended(db):  # B ran to its end: A's death went unseen (the CPython 3.11 fault)
            pytest.fail(f"{ended(db)} ended before kill {len(killed) + 1}")
        held = holders(db)
        if any(p == proc.pid or p in killed for p, _ in held.values()):
            return None
        going = [p for p, r in held.values() if r > 0]
        if len(going) == 1:  # one job in flight: it waits for the other's worker
            if going[0] not in paused and pause(db, proc.pid, going[0]):
                paused.add(going[0])
            return None
        if len(held) != 2:
            return None
        if not victim_key:  # the job of the worker spawned last: see started()
            victim_key.append(max(held, key=lambda k: started(held[k][0])))
        key = victim_key[0]
        other = next(k for k in held if k != key)
        pid, r = held[key]
        # kill i (0, 1) while both jobs are in the first (i + 1) thirds: after a kill both
        # resume from checkpoints below that, so the next window is always reached
        limit = rounds * (len(killed) + 1) // 3
        ok = key in held and 0 < r < limit and held[other][1] < limit
        return (key, pid) if ok else None

    try:
        for _ in range(2):
            _, pid = _wait_for(both_running, 300, "both jobs running in live workers")
            resume(paused)  # the healthy job runs on when its neighbour's worker dies
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        out, _ = proc.communicate(timeout=900)
    finally:
        resume(paused)
        if proc.poll() is None:
            proc.kill()
    text = " ".join(out.split())
    assert "Traceback" not in out, out
    status = status_and_rounds(db)
    (victim,) = victim_key
    (healthy,) = [k for k in status if k != victim]
    assert status[victim][0] == "failed" and status[healthy][0] == "done", (status, out)
    assert rows_per_run(db)[healthy] == list(range(rounds + 1))
    assert "1 done, 1 failed" in text, out
    with sqlite3.connect(db) as c:
        (error,) = c.execute("SELECT error FROM runs WHERE key = ?", (victim,)).fetchone()
    assert "died twice" in error


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def test_killing_the_pools_manager_process_requeues_the_jobs(tmp_path: Path) -> None:
    """Fault 9: kill -9 of the pool's multiprocessing manager (the queues' server process)
    ended the launcher with a ConnectionResetError traceback or a false "stdout was closed"
    (exit 141). Now the jobs in flight go back to the queue, nobody is blamed, a new pool
    finishes the grid with every round exactly once.

    The job mid-way first is paused (SIGSTOP) until the other is mid-way too, then continued
    just before the kill: both are mid-way at once without 10,000 rounds of start-up margin."""
    rounds = 1000
    db = tmp_path / "manager.db"
    proc = two_jobs_on_two_workers(tmp_path, db, rounds, ckpt=50)
    paused: set[int] = set()

    def manager() -> int | None:
        if proc.poll() is not None:
            pytest.fail(f"the run ended before its manager was killed: {proc.communicate()[0]}")
        held = holders(db)
        mid_way = {p for p, r in held.values() if 1 <= r <= rounds - 200}
        if len(mid_way) == 1:  # it waits for the other
            (pid,) = mid_way
            if pid not in paused and pause(db, proc.pid, pid):
                paused.add(pid)
            return None
        if len(held) != 2 or len(mid_way) != 2:
            return None
        rest = [
            p
            for p in children(proc.pid)
            if p not in mid_way
            and "resource_tracker" not in Path(f"/proc/{p}/cmdline").read_text(errors="replace")
        ]
        return rest[0] if len(rest) == 1 else None

    try:
        pid = _wait_for(manager, 300, "the pool's manager with both jobs mid-way")
        resume(paused)  # both jobs run when their queues' server dies
        os.kill(pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=900)
    finally:
        resume(paused)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "Traceback" not in out and "stdout was closed" not in out, out
    assert "back in the queue" in out
    assert {s for s, _ in status_and_rounds(db).values()} == {"done"}
    assert all(r == list(range(rounds + 1)) for r in rows_per_run(db).values())


def test_a_stopped_worker_is_killed_and_its_job_requeued(tmp_path: Path) -> None:
    """Fault 6, the hung variant: a pool worker stopped with SIGSTOP mid-job (alive, its run
    held `running`, its heartbeats stopped) kept the pool waiting for it forever. With a lease
    timeout of 4 s the launcher kills it once its job's lease is stale, says so, requeues the
    job and finishes the grid: both jobs done with rounds 0..R exactly once, the neighbour
    (in flight beside it) never blamed."""
    rounds, timeout = 1500, 4
    db = tmp_path / "stopped.db"
    proc = two_jobs_on_two_workers(
        tmp_path, db, rounds, ckpt=100, FEDBENCH_LEASE_TIMEOUT=str(timeout)
    )
    stopped: set[int] = set()

    def stop_one_mid_way() -> int | None:
        if proc.poll() is not None:
            pytest.fail(f"the run ended before a worker was stopped: {proc.communicate()[0]}")
        mid_way = [p for p, r in holders(db).values() if 10 <= r <= rounds - 300]
        if mid_way and mid_way[0] != proc.pid and pause(db, proc.pid, mid_way[0]):
            stopped.add(mid_way[0])
            return mid_way[0]
        return None

    try:
        victim = _wait_for(stop_one_mid_way, 300, "a worker mid-job to stop")
        out, _ = proc.communicate(timeout=600)
    finally:
        resume(stopped)  # only if the launcher did not kill it (the failure this test catches)
        if proc.poll() is None:
            proc.kill()
    text = " ".join(out.split())
    assert proc.returncode == 0, out
    assert "a worker process stopped responding (no heartbeat for 4s" in text, out
    assert state_and_parent(victim) is None  # killed (and reaped), not continued
    assert "Traceback" not in out
    assert {s for s, _ in status_and_rounds(db).values()} == {"done"}, out
    assert all(r == list(range(rounds + 1)) for r in rows_per_run(db).values())
    assert "2 done, 0 failed" in text, out
