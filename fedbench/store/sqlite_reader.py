"""A fedbench SQLite file read through the stdlib driver, read-only: what `ls` and `show` open
(no SQLAlchemy, no pandas, nothing written). Its queries are reads.py's, as the `Store`'s are."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fedbench.store.common import (
    BUSY_TIMEOUT_S,
    LEASE_COLUMNS,
    TABLES,
    StoreError,
    check_schema,
    first_line,
    parse_version,
)
from fedbench.store.reads import Query, Reads, no_rows


class SqliteReader(Reads):
    """A fedbench SQLite file opened read-only through the stdlib driver (ls, show).

    Never writes: a database without fedbench's tables reads as empty (a `Store` would create
    them), a version-1 database (no lease columns) reads as if migrated (NULL leases,
    attempts 0). Each read is one transaction (a consistent snapshot); in WAL mode it does
    not wait for a writer, otherwise it waits up to the busy timeout.
    """

    def __init__(self, url: str, con: sqlite3.Connection, tables: bool, lease: bool) -> None:
        self._url = url
        self._con = con
        self._tables = tables
        self._lease = lease

    @property
    def url(self) -> str:
        return self._url

    def _execute(self, sql: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        return list(self._con.execute(sql, dict(params)).fetchall())

    @contextmanager
    def _snapshot(self, what: str = "database error in") -> Iterator[Query]:
        """A read transaction; driver errors become one-line `StoreError`s."""
        if not self._tables:
            yield no_rows
            return
        try:
            self._con.execute("BEGIN")
            try:
                yield self._execute
            finally:
                self._con.execute("COMMIT")
        except sqlite3.Error as e:
            raise StoreError(f"{what} {self._url}: {first_line(e)}") from None

    def close(self) -> None:
        self._con.close()

    def __repr__(self) -> str:
        return f"SqliteReader({self._url!r})"


def open_sqlite_reader(url: str, path: Path) -> SqliteReader | None:
    """`path` (an existing file) opened read-only, its schema checked as a `Store` checks it
    (the same one-line refusals); None when it is not a regular file or its tables are only
    partly there: the caller opens a `Store`, which reports or completes them as always."""
    if not path.is_file():
        return None
    uri = f"file:{quote(str(path))}?mode=ro"
    try:
        con = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as e:
        raise StoreError(f"cannot open database {url}: {first_line(e)}") from None
    try:
        present, lease = _read_schema(con, url)
    except BaseException:
        con.close()
        raise
    ours = present & set(TABLES)
    if ours and ours != set(TABLES):
        con.close()
        return None
    return SqliteReader(url, con, bool(ours), lease)


def _read_schema(con: sqlite3.Connection, url: str) -> tuple[set[str], bool]:
    """(table names, whether runs has the lease columns) of an SQLite database, after
    `check_schema`; one consistent read."""
    try:
        con.execute("BEGIN")
        try:
            rows = con.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
            present = {str(r[0]) for r in rows}
            value = None
            if "meta" in present:
                row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                value = None if row is None else str(row[0])
            pk: list[str] = []
            if "metrics" in present:
                info = con.execute("PRAGMA table_info(metrics)").fetchall()
                pk = [str(c[1]) for c in sorted(info, key=lambda c: c[5]) if c[5]]
            columns: set[str] = set()
            if "runs" in present:
                columns = {str(c[1]) for c in con.execute("PRAGMA table_info(runs)").fetchall()}
        finally:
            con.execute("COMMIT")
    except sqlite3.Error as e:
        raise StoreError(f"cannot open database {url}: {first_line(e)}") from None
    check_schema(url, present, parse_version(url, value), pk)
    return present, columns.issuperset(LEASE_COLUMNS)
