"""Faults of the store found by adversarial testing (issue 23), each reproduced first: prune
touching another grid file's experiment, `done` with rounds outside 0..R, a frozen writer
blocking everyone, leases taken from live holders, read-only commands rewriting old files."""

from __future__ import annotations

import csv
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from test_store import POSTGRES, fresh_postgres_database
from typer.testing import CliRunner

from fedbench import grid as gridlib
from fedbench.cli import app
from fedbench.store import (
    MIN_LEASE_TIMEOUT,
    RUNS,
    SCHEMA_VERSION,
    RunSpec,
    Store,
    StoreBusyError,
    StoreError,
)
from fedbench.store.leases import host_identity, process_started

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


# --------------------------------------------------------------------------- fault 10: read-only


def version_1_database(tmp_path: Path) -> Path:
    """A database as fedbench 0.x wrote it (no lease columns, schema version 1) with one
    finished run of grid file g.toml, in WAL mode as every fedbench file is."""
    grid = tmp_path / "g.toml"
    grid.write_text(GRID.format(lr=0.1), encoding="utf-8")
    db = tmp_path / "v1.db"
    with Store(str(db)) as s:
        record_grid(s, grid, "done")
    con = sqlite3.connect(db)
    with con:
        for col in ("lease_token", "lease_owner", "heartbeat_at", "attempts", *V3):
            con.execute(f"ALTER TABLE runs DROP COLUMN {col}")
        con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return db


V3 = ("lease_timeout", "lease_host", "lease_started", "provenance")


def test_read_only_commands_leave_a_version_1_database_untouched(tmp_path: Path) -> None:
    db = version_1_database(tmp_path)
    grid = tmp_path / "g.toml"
    before = (db.read_bytes(), db.stat().st_mtime_ns)
    out = tmp_path / "out"
    for args in (
        ("report", "--format", "json"),
        ("export", out, "--table", "runs", "--table", "experiments"),
        ("export", out, "--experiment", "g"),
        ("prune", grid),
        ("ls",),
        ("run", grid, "--dry-run"),
    ):
        result = invoke(*args, "--db", db)
        assert result.exit_code == 0, (args, result.output)
        assert (db.read_bytes(), db.stat().st_mtime_ns) == before, args
    with (out / "runs.csv").open(encoding="utf-8") as f:
        runs = list(csv.DictReader(f))
    assert len(runs) == 2 and {"lease_owner", *V3} <= set(runs[0])
    assert [r["attempts"] for r in runs] == ["0", "0"]  # read as if migrated
    with Store(str(db), read_only=True) as s:
        assert s.provenance(1) is None
        with pytest.raises(StoreError, match="read-only"):
            s.delete_runs([1])
    # a writing open migrates it, the data intact
    with Store(str(db)) as s:
        assert [r["status"] for r in s.runs_records()] == ["done", "done"]
        assert s.get_run("1")["attempts"] == 0
    con = sqlite3.connect(db)
    assert con.execute("SELECT value FROM meta").fetchone() == (str(SCHEMA_VERSION),)
    assert set(V3) <= {c[1] for c in con.execute("PRAGMA table_info(runs)")}
    con.close()


# --------------------------------------------------------------------------- fault 8: leases


def test_a_short_timeout_launcher_does_not_take_a_live_run_from_a_default_one(
    tmp_path: Path,
) -> None:
    with Store(str(tmp_path / "l.db")) as s:
        claimed_run(s)  # held under timeout 60, heartbeat fresh
        time.sleep(1.2)
        assert s.claim("aaaa0001", "B/1", "other:2", timeout=1.0) is None  # judged by 60 s
        assert s.claimable(["aaaa0001"], 1.0, ("pending",)) == []
        assert s.get_run("aaaa0001")["lease_owner"] == "here:1"


def test_a_lease_timeout_below_the_heartbeat_floor_is_refused(tmp_path: Path) -> None:
    grid = tmp_path / "g.toml"
    grid.write_text(GRID.format(lr=0.1), encoding="utf-8")
    result = invoke("run", grid, "--db", tmp_path / "r.db", "--lease-timeout", "0.01")
    assert result.exit_code == 2 and not (tmp_path / "r.db").exists()
    assert result.stderr.strip() == (
        f"error: --lease-timeout 0.01: allowed: at least {MIN_LEASE_TIMEOUT:g} seconds "
        "(a holder renews its lease every timeout/4 s)"
    )


def test_same_hostname_is_not_same_host(tmp_path: Path) -> None:
    """A holder in another container (same hostname, another pid namespace: its pid means
    nothing here) keeps its run; one of this very host whose pid is dead loses it."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    owner = f"{socket.gethostname()}:{dead.pid}"
    with Store(str(tmp_path / "l.db")) as s:
        exp = s.upsert_experiment("e", "g.toml", "")
        s.ensure_runs(exp, [RunSpec(k, 0, "fedavg", "identity", "d", "m", {}) for k in KEYS])
        for key in KEYS:
            assert s.claim(key, f"A/{key}", owner, timeout=3600) is not None
        with s._write() as conn:  # the first holder's lease was written in another container
            q = RUNS.update().where(RUNS.c.key == KEYS[0])
            conn.execute(q.values(lease_host=f"{socket.gethostname()}/other-boot/4026531836"))
        assert s.claimable(list(KEYS), 3600, ("pending",)) == [KEYS[1]]
        assert s.claim(KEYS[0], "B/1", "b:1", timeout=3600) is None
        taken = s.claim(KEYS[1], "B/2", "b:1", timeout=3600)
        assert taken is not None and taken.taken_over == owner
    ours = host_identity()
    assert ours is not None and ours.startswith(socket.gethostname() + "/")
    assert process_started(os.getpid()) == process_started(os.getpid()) is not None
    assert process_started(dead.pid) is None


KEYS = ("aaaa0001", "bbbb0002")


def test_a_version_2_database_migrates_and_still_reads(tmp_path: Path) -> None:
    db = tmp_path / "v2.db"
    with Store(str(db)) as s:
        rid, token = claimed_run(s)
        s.log_round(rid, 0, {"loss": 1.0}, token)
    con = sqlite3.connect(db)
    with con:
        for col in V3:
            con.execute(f"ALTER TABLE runs DROP COLUMN {col}")
        con.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    con.close()
    with Store(str(db), read_only=True) as s:
        assert s.get_run("aaaa0001")["lease_owner"] == "here:1"
    with Store(str(db)) as s:  # migrates; the old lease (no timeout stored) still holds
        run = s.get_run("aaaa0001")
        assert (run["status"], run["lease_owner"], run["rounds_logged"]) == ("running", "here:1", 0)
        assert s.claim("aaaa0001", "B/1", "b:1", timeout=60) is None
        assert s.heartbeat(rid, token)


# --------------------------------------------------------------------------- provenance


def test_provenance_round_trips_and_is_plain_json(tmp_path: Path) -> None:
    with Store(str(tmp_path / "p.db")) as s:
        rid, _ = claimed_run(s)
        assert s.provenance(rid) is None
        info = {"host": "node-1", "git": {"commit": "abc", "dirty": False}, "cpus": [0, 1]}
        s.set_provenance(rid, info)
        assert s.provenance(rid) == info
        with pytest.raises(StoreError, match="not plain JSON"):
            s.set_provenance(rid, {"x": float("nan")})
        with pytest.raises(StoreError, match="unknown run id 999"):
            s.set_provenance(999, {})


# --------------------------------------------------------------------------- fault 6: busy


def hold_write_lock(url: str, key: str) -> Any:
    """Another process's open write transaction (what a launcher frozen mid-write leaves):
    SQLite's write lock, or on PostgreSQL the run's row lock. Returns what to close."""
    if url.startswith("sqlite"):
        con = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        con.execute("BEGIN IMMEDIATE")
        return con
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    conn = engine.connect()
    conn.execute(sa.text("SELECT id FROM runs WHERE key = :k FOR UPDATE"), {"k": key})
    return conn  # its transaction stays open until closed


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=POSTGRES)])
def url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    from fedbench.store import engine

    monkeypatch.setattr(engine, "_BUSY_TIMEOUT_MS", 300)  # a lock wait of 0.3 s, not 30
    monkeypatch.setattr(engine, "_PG_LOCK_TIMEOUT_MS", 300)
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'busy.db'}"
    return fresh_postgres_database()


def test_a_frozen_writer_makes_writes_busy_not_failed_and_claims_skip(url: str) -> None:
    from fedbench import runner

    with Store(url) as s:
        exp = s.upsert_experiment("e", "g.toml", "")
        s.ensure_runs(exp, [RunSpec(k, 0, "fedavg", "identity", "d", "m", {}) for k in KEYS])
        c = s.claim(KEYS[0], "A/1", "here:1", timeout=60)
        assert c is not None
        rid = s.start_run(KEYS[0], "here", "cpu", token=c.token)
        holder = hold_write_lock(url, KEYS[0])
        try:
            start = time.monotonic()
            with pytest.raises(StoreBusyError):
                s.log_round(rid, 0, {"loss": 1.0}, c.token)
            assert time.monotonic() - start < 5  # the lock timeout, not the freeze
            rows = runner.RoundWriter(s, rid, c.token)
            rows.add(0, {"loss": 1.0}, write=True)  # busy: kept, the job goes on
            assert rows.pending == [(0, {"loss": 1.0})]
            if url.startswith("postgresql"):  # the frozen row is skipped, others are claimed
                assert s.claim(KEYS[0], "B/1", "b:1", timeout=60) is None
                assert s.claim(KEYS[1], "B/2", "b:1", timeout=60) is not None
        finally:
            holder.close()
        rows.flush(wait=True)  # the holder moved on: written
        assert rows.pending == []
        assert [r.round for r in s.metrics_records([rid])] == [0]
        assert s.get_run(KEYS[0])["status"] == "running"
