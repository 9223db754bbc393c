"""Opening a database through SQLAlchemy and running short transactions on it: the part of the
`Store` every concern (schema, leases, writes, frames) builds on.

SQLite (the default, one file, WAL mode) and PostgreSQL (many machines writing at once); any
other SQLAlchemy URL works through generic fallbacks. Every write is one short transaction.
On SQLite a write transaction starts with ``BEGIN IMMEDIATE`` so concurrent writers queue on
the busy timeout (30 s) instead of failing with "database is locked"; reads use a deferred
``BEGIN`` (a consistent snapshot).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from fedbench.store import schema
from fedbench.store.common import (
    BUSY_TIMEOUT_S,
    LEASE_COLUMNS,
    TABLES,
    StoreBusyError,
    StoreError,
    first_line,
    resolve_url,
)
from fedbench.store.reads import Query, Reads, no_rows

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

_WRITE = "fedbench_write"  # execution option: this transaction writes
_BUSY_TIMEOUT_MS = round(BUSY_TIMEOUT_S * 1000)  # the same wait as the read-only reader
_PG_LOCK_TIMEOUT_MS = 10_000  # a PostgreSQL write waits this long for a row lock, then is busy


def _is_lock_timeout(e: sa_exc.DBAPIError) -> bool:
    """A lock wait that timed out: SQLite's "database is locked" (busy timeout), PostgreSQL's
    lock_not_available (SQLSTATE 55P03, lock_timeout)."""
    orig = e.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return code == "55P03" or "database is locked" in str(orig)


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


def _on_sqlite_connect_read_only(dbapi_conn: Any, _record: Any) -> None:
    """Per-connection settings of a read-only SQLite connection: nothing that writes (no
    journal mode switch, no synchronous setting)."""
    dbapi_conn.isolation_level = None
    dbapi_conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")


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


class Database(Reads):
    """A SQLAlchemy engine on one URL, its schema checked and brought up to date on opening,
    with read and write transactions; the `Reads` run through it.

    Safe to share between threads; open one per process (an engine must not cross a fork).
    `url` masks any password, so it is safe to print.
    """

    _tables = True  # fedbench's tables are all there (False: a read-only open reads nothing)
    _run_columns: set[str] | None = None  # a read-only open of an older file: what runs has

    def __init__(self, url: str | None = None, read_only: bool = False) -> None:
        """Open `url`. With `read_only` (report, export, a dry-run prune) nothing is ever
        written, not even a migration: an older database is read as it is, as if migrated
        (an SQLite file is opened with mode=ro), and a write raises `StoreError`."""
        self._read_only = read_only
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
        if path is not None and self._read_only:
            return self._open_sqlite_read_only(url, path)
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

    def _open_sqlite_read_only(self, url: sa.URL, path: Path) -> Engine:
        """An engine whose connections open the file with mode=ro (as `SqliteReader` does)."""
        uri = f"file:{quote(str(path))}?mode=ro"

        def connect() -> sqlite3.Connection:
            return sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, check_same_thread=False)

        engine = sa.create_engine(url, creator=connect)
        sa.event.listen(engine, "connect", _on_sqlite_connect_read_only)
        sa.event.listen(engine, "begin", _on_sqlite_begin)
        return engine

    def _ensure_schema(self) -> None:
        """Create missing tables and migrate an older database (schema.py); opened read-only,
        only note what the database has, to read it as it is."""
        found = schema.inspect_schema(self)
        if self._read_only:
            self._tables = found.tables.issuperset(TABLES)
            self._run_columns = found.run_columns
            self._lease = found.run_columns.issuperset(LEASE_COLUMNS)
        elif found.stale:
            schema.create_or_migrate(self)

    @contextmanager
    def _transaction(self, write: bool, what: str) -> Iterator[Connection]:
        """A connection in a transaction, committed at the end; driver errors become
        `StoreError` ("{what} URL: reason")."""
        if write and self._read_only:
            raise StoreError(f"{what} {self.url}: opened read-only, nothing may be written")
        try:
            with self._engine.connect() as conn:
                conn.execution_options(**{_WRITE: write})
                with conn.begin():
                    if write and conn.dialect.name == "postgresql":  # never wait on a frozen holder
                        conn.exec_driver_sql(f"SET LOCAL lock_timeout = {_PG_LOCK_TIMEOUT_MS}")
                    yield conn
        except sa_exc.DBAPIError as e:
            if _is_lock_timeout(e):
                raise StoreBusyError(f"{what} {self.url}: {first_line(e)}") from None
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

    @property
    def in_memory(self) -> bool:
        """An in-memory SQLite database: each connection and process sees its own, empty."""
        db = self._url.database
        return self._url.get_backend_name() == "sqlite" and (
            not db or db == ":memory:" or "mode=memory" in str(self._url)
        )

    def _db_now(self, conn: Connection) -> datetime:
        """The clock leases are compared on: the server's on PostgreSQL, ours elsewhere."""
        if conn.dialect.name == "postgresql":
            value = conn.execute(sa.select(sa.func.now())).scalar_one()
            return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        return _now()

    @contextmanager
    def _snapshot(self) -> Iterator[Query]:
        """A read transaction as a `reads.Query` (SQL text with named parameters)."""
        if not self._tables:
            yield no_rows
            return
        with self._read() as conn:
            if conn.dialect.name == "sqlite":  # the driver takes :name itself
                raw = conn.connection.driver_connection
                assert raw is not None

                def query(sql: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
                    # the stdlib cursor in the same transaction: SQLAlchemy's per-row result
                    # processing took most of a 100-run report's 10⁵-row read
                    return list(raw.execute(sql, dict(params)).fetchall())

            else:

                def query(sql: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
                    return [tuple(r) for r in conn.execute(sa.text(sql), dict(params))]

            yield query
