"""The read path without SQLAlchemy (fedbench/store/reads.py, sqlite_reader.py): `ls` and `show`
read an SQLite file through stdlib sqlite3, read-only, and must say exactly what the `Store`
(SQLAlchemy) says."""

from __future__ import annotations

import json
import math
import shutil
import sqlite3
from datetime import timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_store import POSTGRES, drop_postgres_database, fresh_postgres_database
from typer.testing import CliRunner

from fedbench.cli import app
from fedbench.commands.common import open_reader
from fedbench.store import (
    LEASE_COLUMNS,
    READER_ENV,
    SCHEMA_VERSION,
    RunSpec,
    SqliteReader,
    Store,
    StoreError,
    like_prefix,
    open_sqlite_reader,
    plain_sqlite_path,
)

CONFIG = {"task": {"dataset": "digits", "clients": 20, "partition": "iid"},
          "algorithm": {"name": "fedavg", "lr": 0.1, "hidden": [16, 8]}, "seed": 0}  # fmt: skip


def build(store: Store) -> dict[str, int]:
    """A database with what ls/show must render alike on every path: unicode names, NaN, inf
    and all-NaN metrics, a run without metrics, a failed run, a leased running run, a run
    without task.clients and an experiment without runs. Returns key -> run id."""
    e1 = store.upsert_experiment("exp-ünï", "grids/a.toml", "[experiment]\n")
    e2 = store.upsert_experiment("second", "grids/b.toml", "")
    store.upsert_experiment("empty", "grids/c.toml", "")
    no_clients = {**CONFIG, "task": {"dataset": "digits"}}
    store.ensure_runs(e1, [
        RunSpec("c0ffee00aa", 0, "fedavg", "identity", "digits", "mlp", CONFIG),
        RunSpec("c0ffee11bb", 1, "ef21_ünï", "top_k", "digits", "mlp", no_clients),
        RunSpec("deadbeef01", 0, "scaffold", "identity", "digits", "mlp", CONFIG),
        RunSpec("12345678ab", 2, "fedavg", "identity", "digits", "mlp", CONFIG),  # no metrics
    ])  # fmt: skip
    store.ensure_runs(e2, [RunSpec("feedface99", 0, "diana", "rand_k", "digits", "mlp", CONFIG)])
    a = store.start_run("c0ffee00aa", "hôst", "cpu")
    for t in (0, 5, 10):
        store.log_round(a, t, {
            "bits_up": 1e6 * t, "test_accuracy": t / 10 if t < 10 else math.nan,
            "loss": math.inf if t == 5 else 1 / (t + 1), "allnan": math.nan,
        })  # fmt: skip
    store.finish_run(a, "done")
    b = store.start_run("c0ffee11bb", "h", "cpu")
    store.log_round(b, 0, {"test_accuracy": 0.5, "bits_up": 3.0})
    store.finish_run(b, "failed", "boom: ünïcode\nsecond line")
    claim = store.claim("deadbeef01", "tok", "somehost:123", 60.0)
    assert claim is not None
    store.log_round(claim.run_id, 0, {"test_accuracy": 0.25}, token="tok")
    f = store.start_run("feedface99", "h", "cpu")
    store.log_round(f, 3, {"test_accuracy": math.nan, "bits_up": 7.0})
    return {r["key"]: r["run_id"] for r in store.runs_records()}


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "r.db"
    with Store(str(path)) as s:
        build(s)
    return path


def cli(*args: object, reader: str | None = None) -> tuple[int, str]:
    env = {READER_ENV: reader} if reader else {}
    result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    return result.exit_code, result.output


COMMANDS = [
    ("ls", "-f", "json"), ("ls", "-f", "csv"), ("ls",), ("ls", "--experiments", "-f", "json"),
    ("ls", "--experiments", "-f", "csv"), ("ls", "--experiments"), ("ls", "-e", "second"),
    ("ls", "-s", "failed", "-s", "running", "-f", "json"), ("ls", "--limit", "2", "-f", "json"),
    ("show", "c0ffee00", "-f", "json"), ("show", "c0ffee00", "-f", "csv"), ("show", "c0ffee00"),
    ("show", "c0ffee11", "-f", "json"), ("show", "12345678", "-f", "json"), ("show", "3"),
    ("show", "feedface", "-f", "json"), ("show", "c0ff"), ("show", "ab"), ("show", "1%"),
    ("show", "c0ffee00", "--partition"), ("show", "c0ffee00", "-f", "json", "--partition"),
]  # fmt: skip


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_ls_and_show_say_the_same_through_sqlite3_and_sqlalchemy(db: Path, args: tuple[str, ...]):
    fast = cli(*args, "--db", db)
    assert fast == cli(*args, "--db", db, reader="sqlalchemy")
    assert fast[0] in (0, 2) and "Traceback" not in fast[1]


def test_the_two_paths_are_really_taken(db: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(READER_ENV, raising=False)
    with open_reader(str(db)) as fast:
        assert isinstance(fast, SqliteReader)
    monkeypatch.setenv(READER_ENV, "sqlalchemy")
    with open_reader(str(db)) as slow:
        assert isinstance(slow, Store)


def test_show_json_keeps_nan_inf_and_utc_timestamps(db: Path):
    code, out = cli("show", "c0ffee00", "--db", db, "-f", "json")
    assert code == 0
    shown = json.loads(out)  # json.loads reads NaN and Infinity
    metrics = {m["metric"]: m for m in shown["metrics"]}
    assert math.isnan(metrics["allnan"]["final"]) and math.isnan(metrics["allnan"]["max"])
    assert math.isnan(metrics["test_accuracy"]["final"]) and metrics["test_accuracy"]["round"] == 10
    assert metrics["test_accuracy"]["max"] == 0.5 and metrics["loss"]["max"] == math.inf
    assert shown["run"]["started_at"].endswith("+00:00") and shown["run"]["experiment"] == "exp-ünï"
    assert shown["run"]["config"] == CONFIG and shown["run"]["attempts"] == 0


def test_show_describes_the_data_split_only_with_partition(db: Path):
    """Without --partition the split is not rebuilt (a hint says how to get it; json has
    null); with it, the statistics are those of the run's [task] split, and a split that
    cannot be rebuilt is said in one line."""
    from fedbench.commands.show import NOT_COMPUTED
    from fedbench.data import load_federated

    task = {**CONFIG["task"], "test_fraction": 0.2, "data_seed": 0}
    with Store(str(db)) as s:
        e = s.upsert_experiment("split", "grids/d.toml", "")
        s.ensure_runs(e, [RunSpec("5p1170aa", 0, "fedavg", "identity", "digits", "mlp",
                                  {**CONFIG, "task": task})])  # fmt: skip
    code, out = cli("show", "5p1170", "--db", db)
    assert code == 0 and NOT_COMPUTED in out and "samples per client" not in out
    assert json.loads(cli("show", "5p1170", "--db", db, "-f", "json")[1])["partition"] is None
    het = load_federated(task, seed=0).heterogeneity()
    code, out = cli("show", "5p1170", "--db", db, "--partition")
    assert code == 0 and NOT_COMPUTED not in out
    assert f"samples per client min / median / max = {het['samples_min']} / " in out
    assert "label TV from the global mix" in out
    code, out = cli("show", "5p1170", "--db", db, "--partition", "-f", "json")
    assert code == 0 and json.loads(out)["partition"] == het
    code, out = cli("show", "c0ffee00", "--db", db, "--partition")  # [task] without data_seed
    assert code == 0 and "cannot rebuild the data: [task] is missing" in out


def test_ls_final_accuracy_is_the_last_value_that_is_not_nan(db: Path):
    rows = {r["key"]: r for r in json.loads(cli("ls", "--db", db, "-f", "json")[1])}
    assert rows["c0ffee00aa"]["test_accuracy"] == 0.5  # round 10 is NaN: round 5's value
    assert math.isnan(rows["feedface99"]["test_accuracy"])  # NaN in every round
    assert rows["12345678ab"]["test_accuracy"] is None and rows["12345678ab"]["rounds"] is None
    assert rows["deadbeef01"]["holder"] == "somehost:123"
    assert rows["c0ffee11bb"]["bits_up_per_client"] is None  # no task.clients


def _same(a: Any, b: Any) -> bool:
    """Equality with NaN equal to NaN, through dicts, lists and tuples."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b) and type(a) is type(b)


def _reads(store: Any, ids: list[int]) -> list[Any]:
    return [
        store.runs_records(), store.runs_records(experiment="second"),
        store.runs_records(status=["done", "failed"], run_ids=ids[:3]),
        store.runs_records(status=[]), store.experiments_records(),
        store.metrics_records(ids), store.metrics_records(ids, ["loss", "nope"]),
        store.final_metrics(ids, ["test_accuracy", "bits_up", "allnan"]),
        *[store.get_run(str(i)) for i in ids],
    ]  # fmt: skip


def test_records_decode_alike_on_both_drivers(db: Path):
    with Store(str(db)) as slow:
        ids = [r["run_id"] for r in slow.runs_records()]
        expected = _reads(slow, ids)
    reader = open_sqlite_reader(f"sqlite:///{db}", db)
    assert reader is not None
    with reader:
        got = _reads(reader, ids)
    assert _same(got, expected)
    run = got[0][0]
    assert run["started_at"].tzinfo is timezone.utc and run["heartbeat_at"] is None
    assert got[8]["heartbeat_at"] is None or got[8]["heartbeat_at"].tzinfo is timezone.utc
    assert got[4][0]["created_at"].tzinfo is timezone.utc


def test_frames_are_built_on_the_records(db: Path):
    with Store(str(db)) as s:
        runs, records = s.runs_frame(), s.runs_records()
        assert runs["run_id"].tolist() == [r["run_id"] for r in records]
        assert runs["algorithm.hidden"].tolist()[0] == (16, 8)
        assert str(runs["started_at"].dt.tz) == "UTC" and runs["rounds_logged"].isna().sum() == 1
        metrics = s.metrics_frame(runs["run_id"].tolist())
        assert len(metrics) == len(s.metrics_records(runs["run_id"].tolist()))
        numeric = metrics[["run_id", "round", "value"]].dtypes.astype(str).tolist()
        assert numeric == ["int64", "int64", "float64"]


names = st.sampled_from(["acc", "bits", "loss"])
values = st.one_of(st.just(math.nan), st.floats(allow_nan=True, allow_infinity=True, width=64))
writes = st.lists(
    st.tuples(st.integers(0, 1), st.integers(0, 6), st.dictionaries(names, values, max_size=3)),
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(writes)
@example([(0, 0, {"acc": 1.0}), (0, 1, {"acc": math.nan}), (1, 2, {"loss": math.nan})])
def test_final_metrics_equal_pandas_last(writes: list[tuple[int, int, dict[str, float]]]):
    """The SQL of `final_metrics` gives what ls computed with pandas before: per run and
    name, `sort_values("round").groupby(...).last()` (the last value that is not NaN)."""
    with Store("sqlite://") as s:
        exp = s.upsert_experiment("e", "g", "")
        s.ensure_runs(exp, [RunSpec(f"run{i}", 0, "a", "c", "d", "m", {}) for i in range(2)])
        ids = [s.start_run(f"run{i}", "h", "cpu") for i in range(2)]
        for run, t, ms in writes:
            s.log_round(ids[run], t, ms)
        got = s.final_metrics(ids, ["acc", "bits", "loss"])
        m = s.metrics_frame(ids)
    last = m.sort_values("round").groupby(["run_id", "name"], as_index=False)["value"].last()
    expected: dict[int, dict[str, float]] = {}
    for rid, name, value in zip(last["run_id"], last["name"], last["value"], strict=True):
        expected.setdefault(int(rid), {})[str(name)] = float(value)
    assert _same(got, expected)


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_reads_while_another_connection_holds_a_write_transaction(db: Path, journal: str):
    con = sqlite3.connect(db, isolation_level=None)
    try:
        assert con.execute(f"PRAGMA journal_mode = {journal}").fetchone() == (journal,)
        con.execute("BEGIN IMMEDIATE")  # the write lock, as a running `fedbench run` takes it
        con.execute("UPDATE runs SET status = 'pending' WHERE key = 'c0ffee00aa'")
        con.execute("INSERT INTO metrics VALUES (1, 99, 'uncommitted', 1.0)")
        code, out = cli("ls", "--db", db, "-f", "json")
        assert code == 0, out
        assert {r["key"]: r["status"] for r in json.loads(out)}["c0ffee00aa"] == "done"
        code, out = cli("show", "c0ffee00aa", "--db", db, "-f", "json")
        assert code == 0 and "uncommitted" not in out
    finally:
        con.execute("ROLLBACK")
        con.close()


def _sql(path: Path, script: str) -> None:
    con = sqlite3.connect(path)
    try:
        con.executescript(script)
        con.commit()
    finally:
        con.close()


BAD = {
    "newer": "UPDATE meta SET value = '99' WHERE key = 'schema_version'",
    "not a number": "UPDATE meta SET value = 'x' WHERE key = 'schema_version'",
    "no meta": "DROP TABLE meta",
    "no version": "DELETE FROM meta",
    "metrics without its key": "DROP TABLE metrics; CREATE TABLE metrics (run_id INTEGER, "
    "round INTEGER, name TEXT, value REAL)",
}


@pytest.mark.parametrize("case", [*BAD, "text file"])
def test_foreign_and_newer_databases_give_the_stores_line_and_stay_untouched(
    db: Path, tmp_path: Path, case: str
):
    if case == "text file":
        db.write_text("hello, not a database\n")
    else:
        _sql(db, BAD[case])
    copy = tmp_path / "copy.db"
    shutil.copyfile(db, copy)
    with pytest.raises(StoreError) as err:
        Store(str(copy))
    before = db.read_bytes()
    for args in (("ls",), ("show", "c0ffee00")):
        code, out = cli(*args, "--db", db)
        assert code == 2
        assert out.strip() == f"error: {err.value}".replace(str(copy), str(db))
    assert db.read_bytes() == before


def test_version_1_database_is_listed_as_migrated_but_not_written(db: Path, tmp_path: Path):
    drops = "".join(f"ALTER TABLE runs DROP COLUMN {c}; " for c in LEASE_COLUMNS)
    _sql(db, drops + "UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    migrated = tmp_path / "migrated.db"
    shutil.copyfile(db, migrated)
    Store(str(migrated)).close()
    before = db.read_bytes()
    for args in (("ls", "-f", "json"), ("show", "c0ffee00", "-f", "json"), ("show", "dead")):
        code, out = cli(*args, "--db", db)
        assert code == 0
        expected = cli(*args, "--db", migrated)[1]
        assert out.replace(str(db), "") == expected.replace(str(migrated), "")
    assert json.loads(cli("show", "dead", "--db", db, "-f", "json")[1])["run"]["attempts"] == 0
    assert db.read_bytes() == before
    con = sqlite3.connect(db)
    try:
        assert con.execute("SELECT value FROM meta").fetchone() == ("1",)
        assert "attempts" not in {c[1] for c in con.execute("PRAGMA table_info(runs)")}
        assert SCHEMA_VERSION > 1
    finally:
        con.close()


@pytest.mark.parametrize("content", ["", "other tables"])
def test_a_database_without_fedbench_tables_reads_as_empty_and_is_not_written(
    tmp_path: Path, content: str
):
    path = tmp_path / "e.db"
    path.write_bytes(b"")
    if content:
        _sql(path, "CREATE TABLE stuff (id INTEGER)")
    before = path.read_bytes()
    assert cli("ls", "--db", path, "-f", "json") == (0, "[]\n")
    assert cli("ls", "--db", path, "--experiments", "-f", "json") == (0, "[]\n")
    code, out = cli("show", "c0ffee", "--db", path)
    assert code == 2 and "no run 'c0ffee'" in out
    assert path.read_bytes() == before


def test_only_plain_sqlite_file_urls_take_the_stdlib_path(tmp_path: Path):
    assert plain_sqlite_path(f"sqlite:///{tmp_path}/a.db") == tmp_path / "a.db"
    assert plain_sqlite_path("sqlite+pysqlite:///rel/a.db") == Path("rel/a.db")
    assert plain_sqlite_path("sqlite:///~/a.db") == Path("~/a.db").expanduser()
    for url in ("sqlite://", "sqlite:///:memory:", "sqlite:///file:a.db?mode=ro&uri=true",
                "sqlite:///a%20b.db", "sqlite:///a.db?timeout=3", "postgresql://u@h/db",
                "sqlite+aiosqlite:///a.db"):  # fmt: skip
        assert plain_sqlite_path(url) is None, url


def test_like_prefix_escapes_wildcards():
    assert like_prefix("a_b%c/d") == "a/_b/%c//d%"


# --------------------------------------------------------------------------- PostgreSQL


@POSTGRES
def test_postgresql_reads_decode_as_sqlite(db: Path):
    """The same writes on PostgreSQL (through the Store) and SQLite (through SqliteReader)
    read back alike, but for ids and timestamps (each is an aware UTC datetime)."""
    url = fresh_postgres_database()
    try:
        with Store(url) as pg:
            build(pg)
            pg_ids = [r["run_id"] for r in pg.runs_records()]
            pg_reads = _reads(pg, pg_ids)
        reader = open_sqlite_reader(f"sqlite:///{db}", db)
        assert reader is not None
        with reader:
            lite_reads = _reads(reader, [r["run_id"] for r in reader.runs_records()])
        assert pg_ids == [r["run_id"] for r in lite_reads[0]]  # both start at 1
        for got, expected in zip(pg_reads, lite_reads, strict=True):
            assert _same(_no_times(got), _no_times(expected))
        stamps = [r["started_at"] for r in pg_reads[0] if r["started_at"] is not None]
        stamps += [e["created_at"] for e in pg_reads[4]]
        assert stamps and all(t.tzinfo is timezone.utc for t in stamps)
        # and what ls and show print (timestamps aside)
        assert cli("ls", "--db", url, "-f", "json") == cli("ls", "--db", db, "-f", "json")
        for ref in ("c0ffee00", "feedface", "1234"):
            pg_show = json.loads(cli("show", ref, "--db", url, "-f", "json")[1])
            lite_show = json.loads(cli("show", ref, "--db", db, "-f", "json")[1])
            assert _same(_no_times(pg_show), _no_times(lite_show))
    finally:
        drop_postgres_database(url)


def _no_times(value: Any) -> Any:
    """Records with their timestamps replaced by whether they are set."""
    stamps = ("started_at", "finished_at", "heartbeat_at", "created_at")
    if isinstance(value, dict):
        return {k: (v is not None) if k in stamps else _no_times(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_times(v) for v in value]
    return value
