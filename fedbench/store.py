"""The result database: experiments, runs and per-round metrics (DESIGN §6, a contract).

This is the only module that imports SQLAlchemy. The schema is plain SQLAlchemy Core and
portable between SQLite (the default, one file, WAL mode) and PostgreSQL (many machines
writing at once); any other SQLAlchemy URL works through generic fallbacks. The read queries
(`get_run`, the `*_records` and `*_frame` methods) are SQL text in store_read.py, run here
through the Store's connection and there through stdlib `sqlite3` (read-only, for `ls` and
`show`, which import neither SQLAlchemy nor pandas): one text for both.

Tables:

- ``experiments(id, name unique, grid_path, grid_toml, created_at)``
- ``runs(id, key unique, experiment_id, seed, algorithm, compressor, dataset, model, config,
  status, error, started_at, finished_at, host, device, fedbench_version, torch_version,
  lease_token, lease_owner, heartbeat_at, attempts)``
- ``metrics(run_id, round, name, value)``, primary key ``(run_id, round, name)``
- ``meta(key, value)``: ``schema_version``, so later migrations can be idempotent.

Leases (schema version 2): a launcher claims a run in one transaction (`claim`): the run
gets a fresh `lease_token`, `lease_owner` = "host:pid" of the process running it, a
`heartbeat_at` the holder renews (`heartbeat`) and `attempts` + 1. A run can be claimed when
it is pending (or failed, when asked), or running with a stale lease: its heartbeat older than
the caller's timeout, or its holder a process of this host that no longer exists. Every write
of a run (`start_run`, `log_round`, `finish_run`, `release`) given a token checks it in the
same transaction and raises `LeaseLostError` when another launcher took the run over; `finish_run`
never records `done` unless rounds 0..R all have rows. Heartbeats compare against the
database's clock on PostgreSQL (many hosts), the local clock on SQLite (one host).

Conventions:

- Timestamps are timezone-aware UTC datetimes (SQLite stores naive UTC, read back as UTC).
- A metric value of NaN is stored as NULL (SQLite cannot store NaN) and read back as NaN;
  ±inf is stored as is.
- Every write is one short transaction. On SQLite a write transaction starts with
  ``BEGIN IMMEDIATE`` so concurrent writers queue on the busy timeout (30 s) instead of
  failing with "database is locked"; reads use a deferred ``BEGIN`` (a consistent snapshot).
"""

from __future__ import annotations

import functools
import json
import math
import os
import socket
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql as sa_pg
from sqlalchemy.dialects import sqlite as sa_sqlite

from fedbench import store_read
from fedbench.store_read import BUSY_TIMEOUT_S, chunks, first_line
from fedbench.store_read import DEFAULT_URL as DEFAULT_URL
from fedbench.store_read import ENV_VAR as ENV_VAR
from fedbench.store_read import EXPERIMENT_COLUMNS as EXPERIMENT_COLUMNS
from fedbench.store_read import LEASE_COLUMNS as LEASE_COLUMNS
from fedbench.store_read import METRIC_COLUMNS as METRIC_COLUMNS
from fedbench.store_read import MIN_PREFIX as MIN_PREFIX
from fedbench.store_read import RUN_COLUMNS as RUN_COLUMNS
from fedbench.store_read import SCHEMA_VERSION as SCHEMA_VERSION
from fedbench.store_read import STATUSES as STATUSES
from fedbench.store_read import TABLES as TABLES
from fedbench.store_read import MetricRow as MetricRow
from fedbench.store_read import Query as Query
from fedbench.store_read import StoreError as StoreError
from fedbench.store_read import flatten_config as flatten_config
from fedbench.store_read import resolve_url as resolve_url

if TYPE_CHECKING:
    import pandas as pd
    from sqlalchemy.engine import Connection, Dialect, Engine

FINAL_STATUSES = ("done", "failed", "diverged")
_WRITE = "fedbench_write"  # execution option: this transaction writes
_PG_LOCK = 0x6FEDBE  # advisory lock serialising schema creation on PostgreSQL
_BUSY_TIMEOUT_MS = round(BUSY_TIMEOUT_S * 1000)  # the same wait as the read-only reader


class LeaseLostError(StoreError):
    """Another launcher holds this run now (our lease went stale and was taken over)."""


class Claim(NamedTuple):
    """A run this process holds: write with `token`."""

    run_id: int
    token: str
    attempts: int
    taken_over: str | None  # the stale holder we took the run from, if any


class RunSpec(NamedTuple):
    """What `ensure_runs` needs to create a pending run."""

    key: str
    seed: int
    algorithm: str
    compressor: str
    dataset: str
    model: str
    config: dict[str, Any]


class RunInfo(NamedTuple):
    """The state of a run as `ensure_runs` reports it."""

    id: int
    key: str
    status: str
    error: str | None


# --------------------------------------------------------------------------- column types


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (naive UTC inside SQLite)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the store keeps timezone-aware UTC")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return (
            value.replace(tzinfo=timezone.utc)
            if value.tzinfo is None
            else value.astimezone(timezone.utc)
        )


class MetricFloat(sa.types.TypeDecorator[float]):
    """A double whose NaN is stored as NULL (SQLite has no NaN) and read back as NaN."""

    impl = sa.Double()
    cache_ok = True

    def process_bind_param(self, value: float | None, dialect: Dialect) -> float | None:
        if value is None or math.isnan(value):
            return None
        return float(value)

    def process_result_value(self, value: float | None, dialect: Dialect) -> float:
        return math.nan if value is None else float(value)


# --------------------------------------------------------------------------- schema

_metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)
_NAME = sa.String(255)

EXPERIMENTS = sa.Table(
    "experiments",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", _NAME, nullable=False, unique=True),
    sa.Column("grid_path", sa.Text, nullable=False),
    sa.Column("grid_toml", sa.Text, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

RUNS = sa.Table(
    "runs",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("key", sa.String(64), nullable=False, unique=True),
    sa.Column(
        "experiment_id",
        sa.Integer,
        sa.ForeignKey("experiments.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("seed", sa.BigInteger, nullable=False),
    sa.Column("algorithm", _NAME, nullable=False),
    sa.Column("compressor", _NAME, nullable=False),
    sa.Column("dataset", _NAME, nullable=False),
    sa.Column("model", _NAME, nullable=False),
    sa.Column("config", sa.JSON, nullable=False),  # JSON, not JSONB: keeps key order
    sa.Column("status", sa.String(16), nullable=False, index=True, default="pending"),
    sa.Column("error", sa.Text),
    sa.Column("started_at", UTCDateTime),
    sa.Column("finished_at", UTCDateTime),
    sa.Column("host", _NAME),
    sa.Column("device", sa.String(64)),
    sa.Column("fedbench_version", sa.String(64)),
    sa.Column("torch_version", sa.String(64)),
    sa.Column("lease_token", sa.String(64)),
    sa.Column("lease_owner", _NAME),  # "host:pid" of the process running the run
    sa.Column("heartbeat_at", UTCDateTime),
    sa.Column("attempts", sa.Integer, nullable=False, default=0, server_default="0"),
)

METRICS = sa.Table(
    "metrics",
    _metadata,
    sa.Column(
        "run_id",
        sa.Integer,
        sa.ForeignKey("runs.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("round", sa.Integer, primary_key=True),
    sa.Column("name", _NAME, primary_key=True),
    sa.Column("value", MetricFloat, nullable=True),
)

META = sa.Table(
    "meta",
    _metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

_TABLES: dict[str, sa.Table] = {"experiments": EXPERIMENTS, "runs": RUNS, "metrics": METRICS}


# --------------------------------------------------------------------------- helpers


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _sqlite_file(url: sa.URL) -> Path | None:
    """The file of a file-backed SQLite URL, None for other backends and in-memory databases."""
    db = url.database
    if url.get_backend_name() != "sqlite" or not db or db == ":memory:" or db.startswith("file:"):
        return None
    return Path(db).expanduser()


def is_new_sqlite_file(url: str | None) -> bool:
    """True when the URL names an SQLite file that does not exist yet (nothing to read)."""
    try:
        path = _sqlite_file(sa.make_url(resolve_url(url)))
    except sa_exc.ArgumentError:
        return False
    return path is not None and not path.exists()


def _on_sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    """Per-connection SQLite settings; the driver's own transaction handling is switched off
    so that the begin listener decides how each transaction starts."""
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    try:
        cur.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys = ON")
        _wal(cur)
        cur.execute("PRAGMA synchronous = NORMAL")
    finally:
        cur.close()


def _wal(cur: Any) -> None:
    """Switch the file to WAL mode (persistent: later connections find it on). Switching needs
    an exclusive lock and SQLite reports a concurrent opener's lock at once, without its busy
    handler, so several processes creating one database retry here within the busy timeout."""
    deadline = time.monotonic() + _BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            if str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                cur.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _on_sqlite_begin(conn: Connection) -> None:
    """Writers take the write lock up front (waiting on the busy timeout); readers defer."""
    writes = conn.get_execution_options().get(_WRITE, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")


def upsert_statement(
    dialect: str, table: sa.Table, keys: Sequence[str], update: Sequence[str]
) -> sa.Executable | None:
    """INSERT ... ON CONFLICT (keys) DO UPDATE the `update` columns (DO NOTHING if none),
    for SQLite and PostgreSQL; None for other dialects (callers fall back)."""
    ins: Any
    if dialect == "sqlite":
        ins = sa_sqlite.insert(table)
    elif dialect == "postgresql":
        ins = sa_pg.insert(table)
    else:
        return None
    if not update:
        return ins.on_conflict_do_nothing(index_elements=list(keys))
    set_ = {c: ins.excluded[c] for c in update}
    return ins.on_conflict_do_update(index_elements=list(keys), set_=set_)


_cached_upsert = functools.lru_cache(maxsize=32)(upsert_statement)  # built once per shape


def _upsert(
    conn: Connection,
    table: sa.Table,
    rows: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
    update: Sequence[str],
) -> None:
    """Insert `rows`; a row whose `keys` exist updates `update` (or is skipped if empty)."""
    if not rows:
        return
    stmt = _cached_upsert(conn.dialect.name, table, tuple(keys), tuple(update))
    if stmt is not None:
        conn.execute(stmt, list(rows))
        return
    for row in rows:  # generic fallback, inside the caller's transaction
        where = sa.and_(*(table.c[k] == row[k] for k in keys))
        if conn.execute(sa.select(sa.literal(1)).select_from(table).where(where)).first():
            if update:
                conn.execute(sa.update(table).where(where).values({c: row[c] for c in update}))
        else:
            conn.execute(sa.insert(table).values(dict(row)))


_METRICS_UPSERT = (
    "INSERT INTO metrics (run_id, round, name, value) VALUES ({p}, {p}, {p}, {p}) "
    "ON CONFLICT (run_id, round, name) DO UPDATE SET value = excluded.value"
)
_PLACEHOLDER = {"qmark": "?", "format": "%s", "pyformat": "%s"}


def _upsert_metrics(conn: Connection, rows: list[tuple[int, int, str, float | None]]) -> None:
    """Upsert metric rows (run_id, round, name, value with NaN as None), as `_upsert` does,
    but handed to the driver's executemany as tuples on SQLite and PostgreSQL: the runner
    writes every round of a run here, and SQLAlchemy's per-row parameter processing costs
    about 4 µs a row, as much as a theory-scale round's own arithmetic."""
    p = _PLACEHOLDER.get(conn.dialect.paramstyle)
    if p is None or conn.dialect.name not in ("sqlite", "postgresql"):
        keys = ("run_id", "round", "name", "value")
        dicts = [dict(zip(keys, r, strict=True)) for r in rows]
        _upsert(conn, METRICS, dicts, ["run_id", "round", "name"], ["value"])
        return
    conn.exec_driver_sql(_METRICS_UPSERT.format(p=p), rows)


def _fedbench_version() -> str:
    try:
        from fedbench import __version__
    except ImportError:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("fedbench")
        except PackageNotFoundError:
            return "0+unknown"
    return str(__version__)


def _torch_version() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return str(torch.__version__)


def _utc_columns(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    import pandas as pd

    for c in columns:
        frame[c] = pd.to_datetime(frame[c], utc=True)
    return frame


# --------------------------------------------------------------------------- the store


class Store(store_read.Reads):
    """The result database behind one SQLAlchemy URL (see the module docstring).

    Safe to share between threads; open one Store per process (an engine must not cross a
    fork). `url` masks any password, so it is safe to print.
    """

    def __init__(self, url: str | None = None) -> None:
        resolved = resolve_url(url)
        self._raw_url = resolved
        try:
            parsed = sa.make_url(resolved)
        except (sa_exc.ArgumentError, ValueError) as e:
            raise StoreError(f"bad database URL {resolved!r}: {first_line(e)}") from None
        self._url = parsed
        self._engine = self._open(parsed)
        try:
            self._ensure_schema()
        except StoreError:
            self._engine.dispose()
            raise

    # ----------------------------------------------------------------- opening

    @property
    def url(self) -> str:
        """The resolved URL, with any password masked (safe to print)."""
        if self._url.password is None:
            return self._raw_url
        return self._url.render_as_string(hide_password=True)

    def _fail(self, what: str, e: BaseException) -> StoreError:
        return StoreError(f"{what} {self.url}: {first_line(e)}")

    def _open(self, url: sa.URL) -> Engine:
        """An engine for `url`, with the SQLite settings installed on every connection."""
        path = _sqlite_file(url)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise self._fail("cannot create the directory of", e) from None
        try:
            engine = sa.create_engine(url)
        except (sa_exc.ArgumentError, ImportError, ValueError, TypeError) as e:
            raise self._fail("cannot use database URL", e) from None
        if engine.dialect.name == "sqlite":
            sa.event.listen(engine, "connect", _on_sqlite_connect)
            sa.event.listen(engine, "begin", _on_sqlite_begin)
        return engine

    def _ensure_schema(self) -> None:
        """Create missing tables and the schema version, add the lease columns of version 2
        to a version-1 database (idempotent, safe to race). A database that is not
        fedbench's (our table names without `meta`, or a `metrics` table without its primary
        key) is refused before anything is written to it."""
        with self._read("cannot open database") as conn:
            insp = sa.inspect(conn)
            present = set(insp.get_table_names())
            version = self._schema_version(conn) if "meta" in present else None
            pk: list[str] = []
            if "metrics" in present:
                pk = insp.get_pk_constraint("metrics").get("constrained_columns") or []
            columns = {c["name"] for c in insp.get_columns("runs")} if "runs" in present else set()
        store_read.check_schema(self.url, present, version, pk)  # the rules SqliteReader applies
        stale = version is None or version < SCHEMA_VERSION
        stale = stale or not present.issuperset(_metadata.tables)
        if stale or ("runs" in present and not columns.issuperset(LEASE_COLUMNS)):
            self._create_or_migrate()

    def _create_or_migrate(self) -> None:
        with self._write("cannot create the tables of") as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_LOCK)))
            _metadata.create_all(conn)
            have = {c["name"] for c in sa.inspect(conn).get_columns("runs")}
            for col in RUNS.columns:
                if col.name in LEASE_COLUMNS and col.name not in have:
                    ddl = col.type.compile(dialect=conn.dialect)
                    extra = " NOT NULL DEFAULT 0" if col.name == "attempts" else ""
                    conn.exec_driver_sql(f"ALTER TABLE runs ADD COLUMN {col.name} {ddl}{extra}")
            version = self._schema_version(conn)
            if version is None:
                conn.execute(
                    sa.insert(META).values(key="schema_version", value=str(SCHEMA_VERSION))
                )
            elif version < SCHEMA_VERSION:
                conn.execute(
                    sa.update(META)
                    .where(META.c.key == "schema_version")
                    .values(value=str(SCHEMA_VERSION))
                )

    def _schema_version(self, conn: Connection) -> int | None:
        q = sa.select(META.c.value).where(META.c.key == "schema_version")
        value = conn.execute(q).scalar_one_or_none()
        return store_read.parse_version(self.url, value)

    @contextmanager
    def _transaction(self, write: bool, what: str) -> Iterator[Connection]:
        """A connection in a transaction, committed at the end; driver errors become
        `StoreError` ("{what} URL: reason")."""
        try:
            with self._engine.connect() as conn:
                conn.execution_options(**{_WRITE: write})
                with conn.begin():
                    yield conn
        except sa_exc.DBAPIError as e:
            raise self._fail(what, e) from None

    def _read(self, what: str = "database error in") -> AbstractContextManager[Connection]:
        """A read transaction (a consistent snapshot)."""
        return self._transaction(False, what)

    def _write(self, what: str = "database error in") -> AbstractContextManager[Connection]:
        """A write transaction (on SQLite: holds the write lock from its start)."""
        return self._transaction(True, what)

    def close(self) -> None:
        """Release every pooled connection; the store is unusable afterwards."""
        self._engine.dispose()

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    # ----------------------------------------------------------------- writing

    def upsert_experiment(self, name: str, grid_path: str, grid_toml: str) -> int:
        """The id of experiment `name`, created if new; its grid path and text are updated."""
        row = {"name": name, "grid_path": grid_path, "grid_toml": grid_toml, "created_at": _now()}
        with self._write() as conn:
            _upsert(conn, EXPERIMENTS, [row], ["name"], ["grid_path", "grid_toml"])
            q = sa.select(EXPERIMENTS.c.id).where(EXPERIMENTS.c.name == name)
            return int(conn.execute(q).scalar_one())

    def experiment_grid(self, name: str) -> tuple[str, str] | None:
        """(grid path, grid text) stored for experiment `name`, None if there is none."""
        q = sa.select(EXPERIMENTS.c.grid_path, EXPERIMENTS.c.grid_toml)
        with self._read() as conn:
            row = conn.execute(q.where(EXPERIMENTS.c.name == name)).first()
        return None if row is None else (str(row[0]), str(row[1]))

    @property
    def in_memory(self) -> bool:
        """An in-memory SQLite database: each connection and process sees its own, empty."""
        db = self._url.database
        return self._url.get_backend_name() == "sqlite" and (
            not db or db == ":memory:" or "mode=memory" in str(self._url)
        )

    def ensure_runs(self, experiment_id: int, specs: Sequence[RunSpec]) -> dict[str, RunInfo]:
        """Insert a `pending` run for every key not yet in the database (one transaction);
        returns the current state of every given key (existing runs are left untouched)."""
        unique: dict[str, RunSpec] = {}
        for spec in specs:
            unique.setdefault(spec.key, spec)
        rows = [
            {**s._asdict(), "experiment_id": experiment_id, "status": "pending"}
            for s in unique.values()
        ]
        keys = list(unique)
        with self._write() as conn:
            _upsert(conn, RUNS, rows, ["key"], [])
            found = _runs_by_key(conn, keys)
        return {k: found[k] for k in keys}

    def statuses(self, keys: Sequence[str]) -> dict[str, str]:
        """The status of every given key that has a run (read only; unknown keys are absent)."""
        with self._read() as conn:
            return {k: info.status for k, info in _runs_by_key(conn, keys).items()}

    # ----------------------------------------------------------------- leases

    def _db_now(self, conn: Connection) -> datetime:
        """The clock leases are compared on: the server's on PostgreSQL, ours elsewhere."""
        if conn.dialect.name == "postgresql":
            value = conn.execute(sa.select(sa.func.now())).scalar_one()
            return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        return _now()

    def claim(
        self,
        key: str,
        token: str,
        owner: str,
        timeout: float,
        statuses: Sequence[str] = ("pending",),
    ) -> Claim | None:
        """Take run `key` for the caller (one transaction) when its status is one of
        `statuses` or it is running under a stale lease (see the module docstring); None when
        another live launcher holds it or it has ended. The run becomes `running` under
        `token`, with `owner` ("host:pid") and a fresh heartbeat."""
        with self._write() as conn:
            row = conn.execute(
                sa.select(
                    RUNS.c.id, RUNS.c.status, RUNS.c.lease_owner, RUNS.c.heartbeat_at,
                    RUNS.c.attempts,
                )
                .where(RUNS.c.key == key)
                .with_for_update()
            ).first()  # fmt: skip
            if row is None:
                raise StoreError(f"unknown run key {key!r} in {self.url}")
            now = self._db_now(conn)
            taken_over = None
            if row.status == "running":
                if not lease_is_stale(row.lease_owner, row.heartbeat_at, now, timeout):
                    return None
                taken_over = row.lease_owner or "unknown holder"
            elif row.status not in statuses:
                return None
            attempts = int(row.attempts or 0) + 1
            conn.execute(
                sa.update(RUNS)
                .where(RUNS.c.id == row.id)
                .values(
                    status="running",
                    lease_token=token,
                    lease_owner=owner,
                    heartbeat_at=now,
                    attempts=attempts,
                )
            )
        return Claim(int(row.id), token, attempts, taken_over)

    def heartbeat(self, run_id: int, token: str) -> bool:
        """Renew our lease; False when the run is no longer ours."""
        with self._write() as conn:
            q = sa.update(RUNS).where(
                RUNS.c.id == run_id, RUNS.c.lease_token == token, RUNS.c.status == "running"
            )
            return bool(conn.execute(q.values(heartbeat_at=self._db_now(conn))).rowcount)

    def claimable(self, keys: Sequence[str], timeout: float, statuses: Sequence[str]) -> list[str]:
        """The keys among `keys` a `claim` would take now (read only)."""
        q = sa.select(RUNS.c.key, RUNS.c.status, RUNS.c.lease_owner, RUNS.c.heartbeat_at)
        out: set[str] = set()
        with self._read() as conn:
            now = self._db_now(conn)
            for part in chunks(list(keys)):
                for r in conn.execute(q.where(RUNS.c.key.in_(part))):
                    if r.status in statuses or (
                        r.status == "running"
                        and lease_is_stale(r.lease_owner, r.heartbeat_at, now, timeout)
                    ):
                        out.add(r.key)
        return [k for k in keys if k in out]

    def release(self, token_prefix: str, status: str = "pending", error: str | None = None) -> int:
        """Every running run whose lease token starts with `token_prefix` (a launcher's runs)
        goes to `status` (pending: back in the queue, metrics kept; or failed with `error`),
        its lease cleared. Returns how many."""
        if status not in ("pending", "failed"):
            raise StoreError(f"release status {status!r}: allowed: pending, failed")
        with self._write() as conn:
            q = sa.update(RUNS).where(
                RUNS.c.status == "running",
                RUNS.c.lease_token.startswith(token_prefix, autoescape=True),
            )
            finished = _now() if status == "failed" else None
            values = dict(status=status, error=error, finished_at=finished, lease_token=None)
            return int(conn.execute(q.values(**values)).rowcount)

    def fail_runs(self, keys: Sequence[str], error: str) -> None:
        """Mark the given runs failed with `error` unless they have ended or are running."""
        with self._write() as conn:
            for part in chunks(list(keys)):
                q = sa.update(RUNS).where(RUNS.c.key.in_(part), RUNS.c.status == "pending")
                conn.execute(q.values(status="failed", error=error, finished_at=_now()))

    def _check_lease(self, conn: Connection, run_id: int, token: str | None) -> None:
        """Raise LeaseLostError unless run `run_id` is running under `token` (None: no check).
        Locks the row on PostgreSQL; SQLite writers already hold the write lock."""
        if token is None:
            return
        q = sa.select(RUNS.c.lease_token, RUNS.c.status, RUNS.c.lease_owner)
        row = conn.execute(q.where(RUNS.c.id == run_id).with_for_update()).first()
        if row is None:
            raise StoreError(f"unknown run id {run_id} in {self.url}")
        if row.lease_token != token or row.status != "running":
            raise LeaseLostError(
                f"run {run_id}: lease lost (now {row.status}"
                + (f", held by {row.lease_owner})" if row.lease_owner else ")")
            )

    # ----------------------------------------------------------------- runs

    def start_run(
        self,
        key: str,
        host: str,
        device: str,
        resume_round: int | None = None,
        token: str | None = None,
    ) -> int:
        """Mark run `key` running and return its id. Its metrics after `resume_round` (all of
        them when None) are deleted, so a restarted run never duplicates rows. With `token`
        (a `claim`'s) nothing is written unless the run is still ours (else LeaseLostError); without
        one the run has no lease (anyone may take it over)."""
        versions = {"fedbench_version": _fedbench_version(), "torch_version": _torch_version()}
        with self._write() as conn:
            run_id = conn.execute(sa.select(RUNS.c.id).where(RUNS.c.key == key)).scalar()
            if run_id is None:
                raise StoreError(f"unknown run key {key!r} in {self.url}")
            self._check_lease(conn, run_id, token)
            stale = METRICS.c.run_id == run_id
            if resume_round is not None:
                stale = sa.and_(stale, METRICS.c.round > resume_round)
            conn.execute(sa.delete(METRICS).where(stale))
            lease: dict[str, Any] = {}
            if token is None:
                lease = {"lease_token": None, "lease_owner": None, "heartbeat_at": None}
            conn.execute(
                sa.update(RUNS)
                .where(RUNS.c.id == run_id)
                .values(
                    status="running",
                    started_at=_now(),
                    finished_at=None,
                    error=None,
                    host=host,
                    device=device,
                    **versions,
                    **lease,
                )
            )
        return int(run_id)

    def log_round(
        self, run_id: int, round: int, metrics: Mapping[str, float], token: str | None = None
    ) -> None:
        """Write one round's metrics in one transaction; a (run, round, name) written before
        gets the new value. NaN is stored as NULL, ±inf as is. With `token`: only while the
        run is ours (else LeaseLostError, nothing written)."""
        self.log_rounds(run_id, [(round, metrics)], token)

    def log_rounds(
        self,
        run_id: int,
        rounds: Sequence[tuple[int, Mapping[str, float]]],
        token: str | None = None,
    ) -> None:
        """Write several rounds' metrics, (round, metrics) pairs, in one transaction (the
        runner batches fast rounds this way); as `log_round` otherwise, lease check included."""
        rows: list[tuple[int, int, str, float | None]] = []
        for round, metrics in rounds:
            for name, value in metrics.items():
                try:
                    v = float(value)
                except (TypeError, ValueError):
                    raise StoreError(
                        f"run {run_id} round {round}: metric {name!r} = {value!r} is not a number"
                    ) from None
                rows.append((run_id, int(round), name, None if math.isnan(v) else v))
        if not rows:
            return
        with self._write() as conn:
            self._check_lease(conn, run_id, token)
            _upsert_metrics(conn, rows)

    def finish_run(
        self,
        run_id: int,
        status: str,
        error: str | None = None,
        token: str | None = None,
        rounds: int | None = None,
    ) -> str:
        """Record the end of a run: `status` is one of done, failed, diverged; returns the
        status recorded. With `token`: only while the run is ours (else LeaseLostError). With
        `rounds` = R: `done` is recorded only when rounds 0..R all have rows, else the run is
        `failed` naming the missing rounds. The lease is cleared."""
        if status not in FINAL_STATUSES:
            raise StoreError(f"finish_run status {status!r}: allowed: {', '.join(FINAL_STATUSES)}")
        with self._write() as conn:
            self._check_lease(conn, run_id, token)
            if status == "done" and rounds is not None:
                missing = _missing_rounds(conn, run_id, rounds)
                if missing:
                    status = "failed"
                    error = (
                        f"incomplete: {len(missing)} of rounds 0..{rounds} have no rows "
                        f"(first {missing[0]}); fedbench run --rerun-failed runs it again"
                    )
            q = sa.update(RUNS).where(RUNS.c.id == run_id)
            values = dict(status=status, error=error, finished_at=_now(), lease_token=None)
            done = conn.execute(q.values(**values))
            if done.rowcount == 0:
                raise StoreError(f"unknown run id {run_id} in {self.url}")
        return status

    def mark_interrupted(self, run_ids: Sequence[int], token: str | None = None) -> None:
        """Put running runs back to pending (after Ctrl-C); their metrics are kept. With
        `token`: only runs still held under it."""
        ids = [int(i) for i in run_ids]
        with self._write() as conn:
            for part in chunks(ids):
                q = sa.update(RUNS).where(RUNS.c.id.in_(part), RUNS.c.status == "running")
                if token is not None:
                    q = q.where(RUNS.c.lease_token == token)
                conn.execute(q.values(status="pending", finished_at=None, lease_token=None))

    def delete_runs(self, run_ids: Sequence[int]) -> int:
        """Delete runs and their metrics (one transaction); returns how many runs went."""
        ids = [int(i) for i in run_ids]
        gone = 0
        with self._write() as conn:
            for part in chunks(ids):
                conn.execute(sa.delete(METRICS).where(METRICS.c.run_id.in_(part)))
                gone += conn.execute(sa.delete(RUNS).where(RUNS.c.id.in_(part))).rowcount
        return gone

    # ----------------------------------------------------------------- reading

    def last_round(self, run_id: int) -> int | None:
        """The highest round with metrics of a run, None if it has none."""
        q = sa.select(sa.func.max(METRICS.c.round)).where(METRICS.c.run_id == run_id)
        with self._read() as conn:
            value = conn.execute(q).scalar()
        return None if value is None else int(value)

    @contextmanager
    def _snapshot(self) -> Iterator[Query]:
        """A read transaction as a `store_read.Query` (SQL text with named parameters)."""
        with self._read() as conn:

            def query(sql: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
                return [tuple(r) for r in conn.execute(sa.text(sql), dict(params))]

            yield query

    def experiments_frame(self) -> pd.DataFrame:
        """`experiments_records` as a frame (created_at a UTC datetime column)."""
        import pandas as pd

        records = self.experiments_records()
        frame = pd.DataFrame(
            [[r[c] for c in EXPERIMENT_COLUMNS] for r in records], columns=list(EXPERIMENT_COLUMNS)
        )
        frame = frame.astype({c: "int64" for c in ("id", "runs", *STATUSES)})
        return _utc_columns(frame, ["created_at"])

    def runs_frame(
        self,
        experiment: str | None = None,
        status: Sequence[str] | None = None,
        run_ids: Sequence[int] | None = None,
    ) -> pd.DataFrame:
        """`runs_records` as a frame: the `RUN_COLUMNS` and the config flattened into
        "section.field" columns (list values as tuples). `rounds_logged` is NaN for a run
        without metrics."""
        import pandas as pd

        records = self.runs_records(experiment, status, run_ids)
        base = pd.DataFrame(
            [[r[c] for c in RUN_COLUMNS] for r in records], columns=list(RUN_COLUMNS)
        )
        base = base.astype({"run_id": "int64", "seed": "int64", "rounds_logged": "float64"})
        base = _utc_columns(base, ["started_at", "finished_at"])
        flat = [flatten_config(r["config"] or {}, RUN_COLUMNS) for r in records]
        if not any(flat):
            return base
        config = pd.DataFrame(flat, index=base.index)
        return pd.concat([base, config], axis=1)

    def metrics_frame(
        self, run_ids: Sequence[int], names: Sequence[str] | None = None
    ) -> pd.DataFrame:
        """The rows of `metrics_records` as a frame: run_id, round, name, value; sorted by
        run_id, round, name. NULL values come back as NaN."""
        import pandas as pd

        with self._snapshot() as q:  # decoded column-wise: NULL -> NaN by astype
            rows = store_read.metrics_rows(q, run_ids, names)
        frame = pd.DataFrame(rows, columns=list(METRIC_COLUMNS))
        return frame.astype({"run_id": "int64", "round": "int64", "value": "float64"})

    def export(self, table: str) -> pd.DataFrame:
        """A raw table ("experiments", "runs" or "metrics") as a frame; the run config as
        JSON text, timestamps as UTC, NULL metric values as NaN."""
        import pandas as pd

        if table not in _TABLES:
            raise StoreError(f"cannot export table {table!r}: allowed: {', '.join(TABLES)}")
        t = _TABLES[table]
        q = sa.select(t).order_by(*t.primary_key.columns)
        with self._read() as conn:
            rows = conn.execute(q).all()
        frame = pd.DataFrame([tuple(r) for r in rows], columns=[c.name for c in t.columns])
        if table == "runs":
            frame["config"] = [json.dumps(c) for c in frame["config"]]
        if table == "metrics":
            frame = frame.astype({"value": "float64"})
        stamps = [c.name for c in t.columns if isinstance(c.type, UTCDateTime)]
        return _utc_columns(frame, stamps)


def lease_is_stale(
    owner: str | None, heartbeat: datetime | None, now: datetime, timeout: float
) -> bool:
    """A running run's lease can be taken over: no heartbeat (a run started without a lease),
    a heartbeat older than `timeout` seconds, or a holder process on this host that is gone."""
    if heartbeat is None or (now - heartbeat).total_seconds() > timeout:
        return True
    host, _, pid = (owner or "").rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not _process_alive(int(pid))


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _missing_rounds(conn: Connection, run_id: int, rounds: int) -> list[int]:
    """The rounds of 0..`rounds` without any metric row for the run."""
    q = sa.select(METRICS.c.round).where(METRICS.c.run_id == run_id).distinct()
    have = {int(r) for r in conn.execute(q).scalars()}
    return [t for t in range(rounds + 1) if t not in have]


def _runs_by_key(conn: Connection, keys: Sequence[str]) -> dict[str, RunInfo]:
    """The runs with these keys (absent keys are left out), queried in chunks."""
    found: dict[str, RunInfo] = {}
    q = sa.select(RUNS.c.id, RUNS.c.key, RUNS.c.status, RUNS.c.error)
    for part in chunks(list(keys)):
        for r in conn.execute(q.where(RUNS.c.key.in_(part))):
            found[r.key] = RunInfo(int(r.id), r.key, r.status, r.error)
    return found
