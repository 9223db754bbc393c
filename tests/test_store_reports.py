"""Schema version 4 (issue 28 item 3, issue 23 fault 3): the run's rounds R refused above it at
write time, the metrics index the `ls` final values use, a version-3 database migrated (and
read as it is when opened read-only), `ls` showing a page read in SQL, and the metrics export
streamed in chunks."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from test_store import POSTGRES, drop_postgres_database, fresh_postgres_database
from typer.testing import CliRunner

from fedbench.cli import app
from fedbench.store import SCHEMA_VERSION, RunSpec, Store, StoreError, open_sqlite_reader
from fedbench.store import frames as frames_module
from fedbench.store.schema import MIGRATIONS

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {"task": {"dataset": "digits", "clients": 4}, "experiment": {"rounds": 3}}


def invoke(*args: object) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def runs(store: Store, n: int, experiment: str = "e") -> list[str]:
    exp = store.upsert_experiment(experiment, f"{experiment}.toml", "")
    keys = [f"{experiment}{i:07d}" for i in range(n)]
    store.ensure_runs(exp, [RunSpec(k, 0, "fedavg", "identity", "digits", "mlp", CONFIG)
                            for k in keys])  # fmt: skip
    return keys


# --------------------------------------------------------------------------- rounds 0..R


def test_a_run_started_with_rounds_accepts_0_to_R_and_refuses_R_plus_1(tmp_path: Path) -> None:
    with Store(str(tmp_path / "r.db")) as s:
        (key,) = runs(s, 1)
        rid = s.start_run(key, "h", "cpu", rounds=3)
        s.log_rounds(rid, [(t, {"loss": float(t)}) for t in range(4)])  # 0..R
        with pytest.raises(StoreError, match=r"round 4 is outside the run's rounds 0\.\.3"):
            s.log_round(rid, 4, {"loss": 9.0})
        with pytest.raises(StoreError, match="outside"):  # one bad round: none of the batch
            s.log_rounds(rid, [(2, {"loss": -1.0}), (5, {"loss": -1.0})])
        assert [(m.round, m.value) for m in s.metrics_records([rid])] == [
            (0, 0.0), (1, 1.0), (2, 2.0), (3, 3.0)
        ]  # fmt: skip
        assert s.finish_run(rid, "done", rounds=3) == "done"


def test_without_rounds_there_is_no_upper_bound_and_a_restart_sets_it(tmp_path: Path) -> None:
    with Store(str(tmp_path / "r.db")) as s:
        (key,) = runs(s, 1)
        rid = s.start_run(key, "h", "cpu")  # R unknown: the old callers' behaviour
        s.log_round(rid, 7, {"loss": 1.0})
        rid = s.start_run(key, "h", "cpu", rounds=2)
        with pytest.raises(StoreError, match=r"round 3 is outside the run's rounds 0\.\.2"):
            s.log_round(rid, 3, {"loss": 1.0})
        with pytest.raises(StoreError, match="allowed: an integer R >= 0"):
            s.start_run(key, "h", "cpu", rounds=-1)


# --------------------------------------------------------------------------- migration


def version_3_database(tmp_path: Path, n: int = 3) -> Path:
    """A database as schema version 3 wrote it (no runs.rounds, no metrics index), with `n`
    runs whose last test accuracy is NaN for run 1 and absent for run 2."""
    db = tmp_path / "v3.db"
    with Store(str(db)) as s:
        keys = runs(s, n)
        for i, k in enumerate(keys):
            rid = s.start_run(k, "h", "cpu")
            for t in range(4):
                acc = math.nan if (i == 1 and t == 3) else t / 10 + i
                s.log_round(rid, t, {"loss": 1.0 / (t + 1), **({} if i == 2 else {"acc": acc})})
            s.finish_run(rid, "done")
    con = sqlite3.connect(db)
    with con:
        con.execute("DROP INDEX ix_metrics_run_id_name")
        con.execute("ALTER TABLE runs DROP COLUMN rounds")
        con.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return db


def _schema(db: Path) -> tuple[str, set[str], set[str]]:
    con = sqlite3.connect(db)
    try:
        version = con.execute("SELECT value FROM meta").fetchone()[0]
        cols = {c[1] for c in con.execute("PRAGMA table_info(runs)")}
        idx = {r[1] for r in con.execute("PRAGMA index_list(metrics)")}
    finally:
        con.close()
    return str(version), cols, idx


def test_a_version_3_database_reads_read_only_untouched_then_migrates(tmp_path: Path) -> None:
    db = version_3_database(tmp_path)
    assert SCHEMA_VERSION == 4
    before = (db.read_bytes(), db.stat().st_mtime_ns)
    expected = {1: {"acc": 0.3}, 2: {"acc": 1.2}}  # run 2's last acc is NaN: round 2's value
    with Store(str(db), read_only=True) as s:
        assert s.final_metrics([1, 2, 3], ["acc"]) == expected
        assert len(s.export("runs")) == 3 and s.export("runs")["rounds"].isna().all()
        assert sum(len(c) for c in s.export_chunks("metrics", rows=5)) == 20
    reader = open_sqlite_reader(f"sqlite:///{db}", db)
    assert reader is not None
    with reader:
        assert reader.final_metrics([1, 2, 3], ["acc"]) == expected
    for args in (("ls",), ("show", "1"), ("export", tmp_path / "out", "--format", "parquet")):
        result = invoke(*args, "--db", db)
        assert result.exit_code == 0, (args, result.output)
    assert (db.read_bytes(), db.stat().st_mtime_ns) == before  # nothing written
    with Store(str(db)) as s:  # a writing open migrates
        assert s.final_metrics([1, 2, 3], ["acc"]) == expected
        assert [r["rounds_logged"] for r in s.runs_records()] == [3, 3, 3]
    version, cols, idx = _schema(db)
    assert version == "4" and "rounds" in cols and "ix_metrics_run_id_name" in idx


def test_the_migration_to_4_is_idempotent(tmp_path: Path) -> None:
    db = version_3_database(tmp_path)
    Store(str(db)).close()
    migrated = _schema(db)
    with Store(str(db)) as s:
        with s._write() as conn:
            MIGRATIONS[3](conn)  # again, on a migrated database: adds nothing
            MIGRATIONS[3](conn)
        assert len(s.metrics_records([1, 2, 3])) == 20
    assert _schema(db) == migrated and migrated[0] == "4"


def test_final_metrics_use_the_index(tmp_path: Path) -> None:
    db = version_3_database(tmp_path)
    Store(str(db)).close()
    con = sqlite3.connect(db)
    plan = " ".join(str(r) for r in con.execute(
        "EXPLAIN QUERY PLAN SELECT (SELECT m.value FROM metrics m WHERE m.run_id = 1 "
        "AND m.name = 'acc' AND m.value IS NOT NULL ORDER BY m.round DESC LIMIT 1)"
    ))  # fmt: skip
    con.close()
    assert "ix_metrics_run_id_name" in plan and "TEMP B-TREE" not in plan


# --------------------------------------------------------------------------- ls page


def test_ls_table_shows_the_newest_page_and_json_every_run(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    with Store(str(db)) as s:
        keys = runs(s, 60)
        rid = s.start_run(keys[-1], "h", "cpu")
        s.log_round(rid, 0, {"test_accuracy": 0.25})
    table = invoke("ls", "--db", db, "--format", "table")
    assert table.exit_code == 0, table.output
    text = " ".join(table.output.split())
    assert "the newest 50 of 60 runs" in text and "--limit 0 lists all 60 runs" in text
    lines = [line.split() for line in table.output.splitlines()]
    ids = [int(cells[0]) for cells in lines if cells and cells[0].isdigit() and len(cells) > 3]
    assert ids == list(range(11, 61))
    listed = json.loads(invoke("ls", "--db", db, "--format", "json").output)
    assert [r["id"] for r in listed] == list(range(1, 61))
    assert listed[-1]["test_accuracy"] == 0.25 and listed[0]["test_accuracy"] is None
    assert "60 runs" in invoke("ls", "--db", db, "--limit", "0").output
    few = json.loads(invoke("ls", "--db", db, "--format", "json", "--limit", "3").output)
    assert [r["id"] for r in few] == [58, 59, 60]


# --------------------------------------------------------------------------- export


def _export_matches(
    store: Store, url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(frames_module, "EXPORT_CHUNK", 6)
    parts = list(store.export_chunks("metrics"))
    assert [len(p) for p in parts] == [6, 6, 6, 2]
    whole = store.export("metrics")
    pd.testing.assert_frame_equal(pd.concat(parts, ignore_index=True), whole)
    for fmt in ("parquet", "csv"):
        out = tmp_path / fmt
        result = invoke("export", out, "--db", url, "--format", fmt, "--table", "metrics")
        assert result.exit_code == 0, result.output
        path = out / f"metrics.{fmt}"
        if fmt == "parquet":
            import pyarrow.parquet as pq

            assert pq.ParquetFile(path).num_row_groups == 4  # written chunk by chunk
            back = pd.read_parquet(path)
        else:
            back = pd.read_csv(path)
        assert back.shape == whole.shape and list(back.columns) == list(whole.columns)
        assert (back["run_id"] == whole["run_id"]).all() and (back["name"] == whole["name"]).all()
        pd.testing.assert_series_equal(back["value"], whole["value"], check_names=False)


def test_export_streams_metrics_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pyarrow")
    db = version_3_database(tmp_path)
    with Store(str(db)) as s:
        _export_matches(s, str(db), tmp_path, monkeypatch)
        empty = Store(str(tmp_path / "empty.db"))
        (part,) = list(empty.export_chunks("metrics"))
        assert part.empty and list(part.columns) == ["run_id", "round", "name", "value"]
        empty.close()


@POSTGRES
def test_postgresql_final_metrics_rounds_and_streamed_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("pyarrow")
    url = fresh_postgres_database()
    with Store(url) as s:
        keys = runs(s, 3)
        for i, k in enumerate(keys):
            rid = s.start_run(k, "h", "cpu", rounds=3)
            for t in range(4):
                acc = math.nan if (i == 1 and t == 3) else t / 10 + i
                s.log_round(rid, t, {"loss": 1.0 / (t + 1), **({} if i == 2 else {"acc": acc})})
        assert s.final_metrics([1, 2, 3], ["acc"]) == {1: {"acc": 0.3}, 2: {"acc": 1.2}}
        with pytest.raises(StoreError, match="outside"):
            s.log_round(1, 4, {"loss": 0.0})
        _export_matches(s, url, tmp_path, monkeypatch)
    drop_postgres_database(url)


# --------------------------------------------------------------------------- benchmark


def test_bench_reports_builds_caches_and_times_every_command(tmp_path: Path) -> None:
    db = tmp_path / "bench.db"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_reports.py"), "--runs", "120",
           "--rounds", "5", "--repeats", "1", "--db", str(db)]  # fmt: skip
    first = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT, timeout=300)
    assert "built in" in first.stdout and "720 metric rows" in first.stdout
    for part in ("fedbench ls (120 runs)", "fedbench show", "fedbench report -e exp0001",
                 "export --format parquet", "peak RSS", "load average"):  # fmt: skip
        assert part in first.stdout, part
    # again, timing nothing (--repeats 0): the cached database is found, not built
    again = subprocess.run([*cmd[:-4], "--repeats", "0", "--db", str(db)], capture_output=True,
                           text=True, check=True, cwd=ROOT, timeout=300)  # fmt: skip
    assert "cached" in again.stdout and "built in" not in again.stdout
    with Store(str(db), read_only=True) as s:
        assert len(s.runs_records()) == 120 and len(s.export("metrics")) == 720
