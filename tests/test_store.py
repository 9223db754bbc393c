"""The result database: round trips, idempotence, resume semantics, concurrency."""

from __future__ import annotations

import itertools
import math
import multiprocessing
import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects import postgresql, sqlite

from fedbench.store import (
    DEFAULT_URL,
    METRICS,
    SCHEMA_VERSION,
    STATUSES,
    RunSpec,
    Store,
    StoreError,
    resolve_url,
    upsert_statement,
)

CONFIG = {
    "experiment": {"name": "exp", "rounds": 3, "seeds": [0, 1]},
    "task": {"dataset": "digits", "clients": 10, "hidden": [16, 8], "nested": [[1, 2], [3]]},
    "algorithm": {"name": "fedavg", "lr": 0.05},
    "seed": 0,
}


def spec(key: str, seed: int = 0, algorithm: str = "fedavg", **config: object) -> RunSpec:
    cfg = {**CONFIG, "algorithm": {"name": algorithm, "lr": 0.05}, **config}
    return RunSpec(key, seed, algorithm, "identity", "digits", "mlp", cfg)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "deep" / "dir" / "fedbench.db"


@pytest.fixture
def store(db: Path) -> Store:
    s = Store(str(db))
    yield s
    s.close()


def new_run(store: Store, key: str = "aaaa0001", experiment: str = "exp", **kw: object) -> int:
    exp = store.upsert_experiment(experiment, "grid.toml", "[experiment]\n")
    store.ensure_runs(exp, [spec(key, **kw)])  # type: ignore[arg-type]
    return store.start_run(key, "host", "cpu")


# --------------------------------------------------------------------------- URLs, opening


def test_resolve_url_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FEDBENCH_DB", raising=False)
    assert resolve_url(None) == DEFAULT_URL
    monkeypatch.setenv("FEDBENCH_DB", "postgresql://u@h/db")
    assert resolve_url(None) == "postgresql://u@h/db"
    assert resolve_url("sqlite:///x.db") == "sqlite:///x.db"
    assert resolve_url("results/a.db") == "sqlite:///results/a.db"
    assert resolve_url(str(tmp_path / "b.db")) == f"sqlite:///{tmp_path}/b.db"


def test_env_var_selects_database(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "env" / "from_env.db"
    monkeypatch.setenv("FEDBENCH_DB", str(path))
    with Store() as s:
        s.upsert_experiment("e", "g.toml", "")
        assert s.url == f"sqlite:///{path}"
    assert path.exists()
    with Store(f"sqlite:///{path}") as again:
        assert list(again.experiments_frame()["name"]) == ["e"]


def _regular_file(tmp_path: Path) -> Path:
    f = tmp_path / "a_file"
    f.write_text("not a directory")
    return f


@pytest.mark.parametrize(
    "url",
    [
        "nosuchdialect://host/db",
        "postgresql+nosuchdriver://u@host/db",
        "sqlite+pysqlite:///{dir}",  # a directory is not a database file
        "sqlite:///{file}/sub/x.db",  # the parent cannot be created under a regular file
        "sqlite:///{file}",  # a text file is not a database
    ],
)
def test_bad_url_is_one_line_store_error(tmp_path: Path, url: str) -> None:
    url = url.format(dir=tmp_path, file=_regular_file(tmp_path))
    with pytest.raises(StoreError) as err:
        Store(url)
    message = str(err.value)
    assert "\n" not in message
    assert url in message


def test_open_twice_is_idempotent(db: Path) -> None:
    with Store(str(db)) as first:
        run_id = new_run(first)
        first.log_round(run_id, 0, {"loss": 1.0})
    with Store(str(db)) as second:
        assert second.last_round(run_id) == 0
        assert len(second.export("runs")) == 1
    con = sqlite3.connect(db)
    try:
        assert con.execute("SELECT key, value FROM meta").fetchall() == [
            ("schema_version", str(SCHEMA_VERSION))
        ]
    finally:
        con.close()


def test_newer_schema_version_is_refused(db: Path) -> None:
    Store(str(db)).close()
    con = sqlite3.connect(db)
    with con:
        con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(StoreError, match="schema version 99"):
        Store(str(db))


def test_sqlite_file_is_in_wal_mode(store: Store, db: Path) -> None:
    store.upsert_experiment("e", "g", "")
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        con.close()


def test_foreign_keys_are_enforced(store: Store) -> None:
    with pytest.raises(StoreError) as err:
        store.log_round(12345, 0, {"loss": 1.0})
    assert "FOREIGN KEY" in str(err.value)
    assert "\n" not in str(err.value)


def test_in_memory_database_works() -> None:
    with Store("sqlite://") as s:
        run_id = new_run(s)
        s.log_round(run_id, 1, {"x": 2.5})
        assert s.metrics_frame([run_id])["value"].tolist() == [2.5]


# --------------------------------------------------------------------------- experiments and runs


def test_experiment_upsert_keeps_id_and_updates_grid(store: Store) -> None:
    a = store.upsert_experiment("exp", "old.toml", "old")
    b = store.upsert_experiment("exp", "new.toml", "new")
    c = store.upsert_experiment("other", "o.toml", "o")
    assert a == b != c
    raw = store.export("experiments")
    assert raw["grid_path"].tolist() == ["new.toml", "o.toml"]
    assert raw["grid_toml"].tolist() == ["new", "o"]
    assert str(raw["created_at"].dt.tz) == "UTC"


def test_run_round_trip_keeps_config_and_timestamps(store: Store) -> None:
    run_id = new_run(store, "abcdef0123456789", seed=7)
    info = store.get_run(str(run_id))
    assert info["key"] == "abcdef0123456789"
    assert info["seed"] == 7
    assert info["config"] == spec("abcdef0123456789")[6]
    assert info["config"]["task"]["nested"] == [[1, 2], [3]]
    assert info["experiment"] == "exp"
    assert info["status"] == "running"
    assert info["host"] == "host" and info["device"] == "cpu"
    assert info["fedbench_version"] and info["torch_version"]
    started = info["started_at"]
    assert isinstance(started, datetime) and started.tzinfo is not None
    assert started.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert abs((datetime.now(timezone.utc) - started).total_seconds()) < 60
    assert info["finished_at"] is None and info["rounds_logged"] is None


def test_ensure_runs_inserts_once_and_reports_status(store: Store) -> None:
    exp = store.upsert_experiment("exp", "g.toml", "")
    specs = [spec("k000001", seed=0), spec("k000002", seed=1), spec("k000001", seed=0)]
    first = store.ensure_runs(exp, specs)
    assert list(first) == ["k000001", "k000002"]
    assert {i.status for i in first.values()} == {"pending"}
    run_id = store.start_run("k000002", "h", "cpu")
    store.finish_run(run_id, "failed", "boom")
    second = store.ensure_runs(exp, [*specs, spec("k000003")])
    assert len(store.export("runs")) == 3
    assert second["k000001"] == first["k000001"]
    assert second["k000002"].status == "failed" and second["k000002"].error == "boom"
    assert second["k000002"].id == run_id
    assert second["k000003"].status == "pending"


def test_start_run_deletes_previous_metrics(store: Store) -> None:
    run_id = new_run(store)
    for t in range(5):
        store.log_round(run_id, t, {"loss": float(t), "acc": t / 10})
    store.finish_run(run_id, "failed", "crash")
    assert store.start_run("aaaa0001", "other-host", "cuda:0") == run_id
    assert store.metrics_frame([run_id]).empty
    assert store.last_round(run_id) is None
    info = store.get_run(str(run_id))
    assert (info["status"], info["error"], info["finished_at"]) == ("running", None, None)
    assert info["host"] == "other-host"


def test_start_run_with_resume_round_keeps_earlier_rounds(store: Store) -> None:
    run_id = new_run(store)
    for t in range(6):
        store.log_round(run_id, t, {"loss": float(t)})
    store.start_run("aaaa0001", "h", "cpu", resume_round=2)
    frame = store.metrics_frame([run_id])
    assert frame["round"].tolist() == [0, 1, 2]
    assert store.last_round(run_id) == 2
    store.start_run("aaaa0001", "h", "cpu", resume_round=0)
    assert store.metrics_frame([run_id])["round"].tolist() == [0]


def test_start_unknown_run_is_an_error(store: Store) -> None:
    with pytest.raises(StoreError, match="unknown run key"):
        store.start_run("nope", "h", "cpu")


def test_log_round_replaces_values(store: Store) -> None:
    run_id = new_run(store)
    store.log_round(run_id, 3, {"loss": 1.0, "acc": 0.5})
    store.log_round(run_id, 3, {"loss": 0.25})
    store.log_round(run_id, 4, {"loss": 0.125})
    frame = store.metrics_frame([run_id])
    assert list(zip(frame["round"], frame["name"], frame["value"], strict=True)) == [
        (3, "acc", 0.5),
        (3, "loss", 0.25),
        (4, "loss", 0.125),
    ]
    assert len(store.export("metrics")) == 3


def test_non_finite_values_round_trip(store: Store, db: Path) -> None:
    run_id = new_run(store)
    store.log_round(run_id, 0, {"a": math.inf, "b": -math.inf, "c": math.nan, "d": 1.5})
    values = dict(zip(*store.metrics_frame([run_id])[["name", "value"]].T.values, strict=True))
    assert values["a"] == math.inf and values["b"] == -math.inf
    assert math.isnan(values["c"]) and values["d"] == 1.5
    assert math.isnan(store.export("metrics").set_index("name").loc["c", "value"])
    con = sqlite3.connect(db)
    try:  # NaN is stored as NULL, infinities as themselves
        raw = dict(con.execute("SELECT name, value FROM metrics"))
    finally:
        con.close()
    assert raw == {"a": math.inf, "b": -math.inf, "c": None, "d": 1.5}


def test_non_numeric_metric_is_an_error(store: Store) -> None:
    run_id = new_run(store)
    with pytest.raises(StoreError, match="not a number"):
        store.log_round(run_id, 0, {"loss": "high"})  # type: ignore[dict-item]
    assert store.last_round(run_id) is None


@pytest.mark.parametrize("status", ["done", "failed", "diverged"])
def test_finish_run_records_status(store: Store, status: str) -> None:
    run_id = new_run(store)
    error = None if status == "done" else f"why {status}"
    store.finish_run(run_id, status, error)
    info = store.get_run(str(run_id))
    assert (info["status"], info["error"]) == (status, error)
    assert info["finished_at"] >= info["started_at"]
    assert store.experiments_frame().loc[0, status] == 1


def test_finish_run_rejects_bad_status_and_unknown_run(store: Store) -> None:
    run_id = new_run(store)
    with pytest.raises(StoreError, match="allowed: done, failed, diverged"):
        store.finish_run(run_id, "running")
    with pytest.raises(StoreError, match="unknown run id 999"):
        store.finish_run(999, "done")


def test_mark_interrupted_returns_running_runs_to_pending(store: Store) -> None:
    running = new_run(store, "aaaa0001")
    finished = new_run(store, "bbbb0002")
    store.log_round(running, 0, {"loss": 1.0})
    store.finish_run(finished, "done")
    store.mark_interrupted([running, finished])
    assert store.get_run(str(running))["status"] == "pending"
    assert store.get_run(str(finished))["status"] == "done"
    assert store.last_round(running) == 0


# --------------------------------------------------------------------------- reading


def test_get_run_by_id_key_and_prefix(store: Store) -> None:
    a = new_run(store, "abc12345")
    b = new_run(store, "abc19999")
    c = new_run(store, "f00d0000")
    assert store.get_run(str(a))["key"] == "abc12345"
    assert store.get_run("abc12345")["id"] == a
    assert store.get_run("abc19")["id"] == b
    assert store.get_run("f00d")["id"] == c
    with pytest.raises(StoreError, match="ambiguous") as err:
        store.get_run("abc1")
    assert "\n" not in str(err.value)
    with pytest.raises(StoreError, match="at least 4"):
        store.get_run("ab")
    with pytest.raises(StoreError, match="no run"):
        store.get_run("9999")
    with pytest.raises(StoreError, match="no run"):
        store.get_run("abc1%")  # LIKE wildcards are literal


def test_runs_frame_filters_and_flattens_config(store: Store) -> None:
    a = new_run(store, "aaaa0001", "one", algorithm="fedavg")
    b = new_run(store, "bbbb0002", "one", algorithm="scaffold")
    c = new_run(store, "cccc0003", "two", algorithm="fedavg")
    store.log_round(a, 0, {"loss": 1.0})
    store.log_round(a, 7, {"loss": 0.5})
    store.finish_run(a, "done")
    store.finish_run(c, "diverged", "nan")

    frame = store.runs_frame()
    assert frame["run_id"].tolist() == [a, b, c]
    assert frame["experiment"].tolist() == ["one", "one", "two"]
    assert frame.loc[0, "rounds_logged"] == 7 and math.isnan(frame.loc[1, "rounds_logged"])
    assert frame.loc[0, "task.hidden"] == (16, 8)
    assert frame.loc[0, "task.nested"] == ((1, 2), (3,))
    assert frame["algorithm.name"].tolist() == ["fedavg", "scaffold", "fedavg"]
    assert str(frame["started_at"].dt.tz) == "UTC"
    assert frame.groupby("task.hidden").size().to_dict() == {(16, 8): 3}

    assert store.runs_frame(experiment="one")["run_id"].tolist() == [a, b]
    assert store.runs_frame(status=["running"])["run_id"].tolist() == [b]
    assert store.runs_frame(experiment="two", status=["done"]).empty
    assert store.runs_frame(run_ids=[c, a])["run_id"].tolist() == [a, c]
    empty = store.runs_frame(experiment="nope")
    assert empty.empty and "run_id" in empty.columns and "rounds_logged" in empty.columns


def test_experiments_frame_counts_statuses(store: Store) -> None:
    a = new_run(store, "aaaa0001", "one")
    new_run(store, "bbbb0002", "one")
    store.finish_run(a, "done")
    exp = store.upsert_experiment("one", "g.toml", "")
    store.ensure_runs(exp, [spec("cccc0003")])
    store.upsert_experiment("empty", "e.toml", "")
    frame = store.experiments_frame()
    assert frame.columns.tolist() == [
        "id", "name", "grid_path", "created_at", "runs",
        "done", "failed", "running", "pending", "diverged",
    ]  # fmt: skip
    one, empty = frame.to_dict("records")
    assert (one["runs"], one["done"], one["running"], one["pending"], one["failed"]) == (
        3,
        1,
        1,
        1,
        0,
    )
    assert empty["runs"] == 0 and empty["pending"] == 0


def test_metrics_frame_sorted_and_filtered(store: Store) -> None:
    a = new_run(store, "aaaa0001")
    b = new_run(store, "bbbb0002")
    store.log_round(b, 1, {"z": 1.0, "a": 2.0})
    store.log_round(a, 2, {"m": 3.0})
    store.log_round(a, 1, {"m": 4.0})
    frame = store.metrics_frame([b, a])
    assert frame.columns.tolist() == ["run_id", "round", "name", "value"]
    assert list(zip(frame["run_id"], frame["round"], frame["name"], strict=True)) == [
        (a, 1, "m"),
        (a, 2, "m"),
        (b, 1, "a"),
        (b, 1, "z"),
    ]
    assert store.metrics_frame([a, b], names=["z"])["value"].tolist() == [1.0]
    empty = store.metrics_frame([])
    assert empty.empty and empty.columns.tolist() == ["run_id", "round", "name", "value"]


def test_export_tables(store: Store) -> None:
    run_id = new_run(store)
    store.log_round(run_id, 0, {"loss": 1.0})
    runs = store.export("runs")
    assert (
        runs.loc[0, "config"].startswith("{") and '"nested": [[1, 2], [3]]' in runs.loc[0, "config"]
    )
    assert store.export("metrics").columns.tolist() == ["run_id", "round", "name", "value"]
    with pytest.raises(StoreError, match="allowed: experiments, runs, metrics"):
        store.export("meta")


def test_statuses_constant() -> None:
    assert STATUSES == ("pending", "running", "done", "failed", "diverged")


# --------------------------------------------------------------------------- dialects


def test_upsert_statements_per_dialect() -> None:
    pg = upsert_statement("postgresql", METRICS, ["run_id", "round", "name"], ["value"])
    sql = str(pg.compile(dialect=postgresql.dialect())).replace("\n", " ")  # type: ignore[union-attr]
    assert "ON CONFLICT (run_id, round, name) DO UPDATE SET value = excluded.value" in sql
    lite = upsert_statement("sqlite", METRICS, ["run_id", "round", "name"], [])
    sql = str(lite.compile(dialect=sqlite.dialect())).replace("\n", " ")  # type: ignore[union-attr]
    assert "ON CONFLICT (run_id, round, name) DO NOTHING" in sql
    assert upsert_statement("mysql", METRICS, ["run_id"], ["value"]) is None


@pytest.mark.skipif(
    not os.environ.get("FEDBENCH_TEST_POSTGRES"), reason="set FEDBENCH_TEST_POSTGRES to a URL"
)
def test_postgresql_round_trip() -> None:
    with Store(os.environ["FEDBENCH_TEST_POSTGRES"]) as s:
        key = f"pg{os.getpid():08d}"
        run_id = new_run(s, key, f"pg-test-{os.getpid()}")
        s.log_round(run_id, 0, {"a": math.inf, "b": math.nan})
        s.log_round(run_id, 0, {"a": 1.0})
        values = s.metrics_frame([run_id]).set_index("name")["value"]
        assert values["a"] == 1.0 and math.isnan(values["b"])
        assert s.get_run(key)["config"]["task"]["nested"] == [[1, 2], [3]]
        s.finish_run(run_id, "done")
        assert (
            s.ensure_runs(s.upsert_experiment(f"pg-test-{os.getpid()}", "", ""), [spec(key)])[
                key
            ].status
            == "done"
        )


# --------------------------------------------------------------------------- properties


names = st.from_regex(r"[a-z_][a-z0-9_]{0,15}", fullmatch=True)
values = st.floats(allow_nan=True, allow_infinity=True, width=64)
writes = st.lists(
    st.tuples(st.integers(0, 5), st.dictionaries(names, values, max_size=4)), max_size=8
)


@settings(max_examples=60, deadline=None)
@given(writes)
def test_metrics_round_trip_property(writes: list[tuple[int, dict[str, float]]]) -> None:
    """Whatever sequence of rounds is logged, reading back gives the last value written for
    every (round, name), NaN as NaN and ±inf as themselves."""
    expected: dict[tuple[int, str], float] = {}
    with Store("sqlite://") as s:
        run_id = new_run(s)
        for t, ms in writes:
            s.log_round(run_id, t, ms)
            expected.update({(t, n): v for n, v in ms.items()})
        frame = s.metrics_frame([run_id])
    got = {
        (int(t), str(n)): float(v)
        for t, n, v in zip(frame["round"], frame["name"], frame["value"], strict=True)
    }
    assert got.keys() == expected.keys()
    for k, v in expected.items():
        assert (math.isnan(v) and math.isnan(got[k])) or got[k] == v
    assert list(zip(frame["round"], frame["name"], strict=True)) == sorted(expected)


# --------------------------------------------------------------------------- concurrency

ROUNDS, WRITERS, NAMES = 50, 8, ("loss", "acc", "bits_up")
KEYS = [f"proc{i:04d}" for i in range(WRITERS)]


def _writer(url: str, key: str, barrier: object) -> None:
    """A separate process. All eight start together on a database that does not exist yet:
    each creates the schema, registers the experiment and every run, then logs its own run."""
    barrier.wait()  # type: ignore[attr-defined]
    with Store(url) as s:
        exp = s.upsert_experiment("concurrent", "g.toml", "")
        s.ensure_runs(exp, [spec(k) for k in KEYS])
        run_id = s.start_run(key, f"proc-{os.getpid()}", "cpu")
        for t in range(ROUNDS):
            s.log_round(run_id, t, {n: t + i / 10 for i, n in enumerate(NAMES)})
        s.finish_run(run_id, "done")


def fresh_postgres_database() -> str:
    """A new, empty database on the server of $FEDBENCH_TEST_POSTGRES; its URL."""
    import sqlalchemy as sa

    base = sa.engine.make_url(os.environ["FEDBENCH_TEST_POSTGRES"])
    name = f"fedbench_test_{os.getpid()}_{next(_PG_DATABASES)}"
    engine = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return base.set(database=name).render_as_string(hide_password=False)


def drop_postgres_database(url: str) -> None:
    """Drop a database `fresh_postgres_database` made (connections to it are closed)."""
    import sqlalchemy as sa

    parsed = sa.engine.make_url(url)
    engine = sa.create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)'))
    engine.dispose()


_PG_DATABASES = itertools.count()
POSTGRES = pytest.mark.skipif(
    not os.environ.get("FEDBENCH_TEST_POSTGRES"),
    reason="set FEDBENCH_TEST_POSTGRES to a URL (.ci/run starts a server)",
)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=POSTGRES)])
def test_concurrent_writer_processes_lose_nothing(db: Path, backend: str) -> None:
    url = f"sqlite:///{db}" if backend == "sqlite" else fresh_postgres_database()
    # forked, not spawned: a spawned writer spent ~5 s of CPU importing this module and torch
    # (start_run records torch's version), eight of them 20-40 s on 2 cores, before a write
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(WRITERS)
    procs = [ctx.Process(target=_writer, args=(url, k, barrier)) for k in KEYS]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * WRITERS  # a 'database is locked' would be 1
    with Store(url) as store:
        runs = store.runs_frame()
        frame = store.metrics_frame(runs["run_id"].tolist())
        experiments = store.experiments_frame()
    assert sorted(runs["key"]) == KEYS and runs["status"].tolist() == ["done"] * WRITERS
    assert experiments[["name", "runs", "done"]].values.tolist() == [
        ["concurrent", WRITERS, WRITERS]
    ]
    assert len(frame) == WRITERS * ROUNDS * len(NAMES)
    assert not frame.duplicated(["run_id", "round", "name"]).any()
    assert frame.groupby("run_id")["round"].nunique().tolist() == [ROUNDS] * WRITERS
