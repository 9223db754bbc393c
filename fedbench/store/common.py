"""What every part of the store shares, without SQLAlchemy or pandas: the constants of the
schema, the errors, the records a caller hands in or gets back, URL resolution and the schema
checks both the `Store` and the read-only `SqliteReader` apply (one set of rules)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

DEFAULT_URL = "sqlite:///results/fedbench.db"
ENV_VAR = "FEDBENCH_DB"
# Set to "sqlalchemy" to make ls/show read an SQLite file through the Store (tests compare).
READER_ENV = "FEDBENCH_READER"
STATUSES = ("pending", "running", "done", "failed", "diverged")
TABLES = ("experiments", "runs", "metrics")
SCHEMA_VERSION = 4  # 2: lease columns on runs; 3: holder identity and timeout, provenance;
# 4: runs.rounds (the run's R) and the metrics index on (run_id, name, round)
LEASE_COLUMNS = ("lease_token", "lease_owner", "heartbeat_at", "attempts")
MIN_PREFIX = 4  # shortest key prefix get_run accepts
CHUNK = 500  # values per IN (...) clause: well below every backend's parameter limit
BUSY_TIMEOUT_S = 30.0
FINAL_STATUSES = ("done", "failed", "diverged")
# A holder renews its lease every timeout/4 seconds (runner._Heartbeat) in a write that may wait
# on others: a shorter timeout lets launchers take live runs from each other.
MIN_LEASE_TIMEOUT = 1.0


class StoreError(RuntimeError):
    """A database problem the user can act on; the message is one line."""


class MetricRow(NamedTuple):
    """One metric value (NaN for a NULL)."""

    run_id: int
    round: int
    name: str
    value: float


class StoreBusyError(StoreError):
    """The database stayed locked past the lock timeout (another process holds a write
    transaction: a frozen launcher). Nothing was written; the same write may be retried. Never
    a job's failure (the runner keeps its rows and retries)."""


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


# --------------------------------------------------------------------------- URLs


def resolve_url(url: str | None) -> str:
    """The database URL to use: `url`, else $FEDBENCH_DB, else `DEFAULT_URL`.

    A value without "://" is a path to an SQLite file (``~`` is expanded).
    """
    chosen = url or os.environ.get(ENV_VAR) or DEFAULT_URL
    if "://" not in chosen:
        return f"sqlite:///{Path(chosen).expanduser()}"
    return chosen


_PLAIN_SQLITE = re.compile(r"sqlite(?:\+pysqlite)?:///([^?#%]+)")


def plain_sqlite_path(url: str) -> Path | None:
    """The file of a plain ``sqlite:///path`` URL; None for anything that needs SQLAlchemy's
    URL parsing (other backends, in-memory databases, ``file:`` URIs, query strings, %-escapes),
    so those are read through the `Store` instead."""
    m = _PLAIN_SQLITE.fullmatch(url)
    if m is None or m.group(1) == ":memory:" or m.group(1).startswith("file:"):
        return None
    return Path(m.group(1)).expanduser()


def chunks(values: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(values), size):
        yield values[i : i + size]


def first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message (DBAPI errors: the driver's own)."""
    orig = getattr(e, "orig", None)
    text = str(orig if orig is not None else e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# --------------------------------------------------------------------------- schema checks


def parse_version(url: str, value: str | None) -> int | None:
    """meta.schema_version as a number (None when absent); one-line error when it is not."""
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise StoreError(
            f"{url}: meta.schema_version = {value!r} is not a number: "
            "not a fedbench database or a damaged one"
        ) from None


def check_schema(
    url: str, present: set[str], version: int | None, metrics_pk: Sequence[str]
) -> None:
    """Refuse, in one line, a database that is not fedbench's (our table names without
    `meta`, or a `metrics` table without its primary key) or has a newer schema version.
    `present`: its table names; `metrics_pk`: the primary key columns of its metrics table."""
    ours = present & set(TABLES)
    if ours and "meta" not in present:
        raise StoreError(
            f"{url}: not a fedbench database (it has table(s) {', '.join(sorted(ours))}"
            " but no meta table); use another --db"
        )
    if "meta" in present and version is None and ours:
        raise StoreError(f"{url}: not a fedbench database (no schema_version in meta)")
    if "metrics" in present and sorted(metrics_pk) != ["name", "round", "run_id"]:
        raise StoreError(
            f"{url}: table metrics has primary key ({', '.join(metrics_pk) or 'none'}); "
            "fedbench needs (run_id, round, name): not a fedbench database"
        )
    if version is not None and version > SCHEMA_VERSION:
        raise StoreError(
            f"{url}: database schema version {version} is newer than this "
            f"fedbench supports ({SCHEMA_VERSION}); upgrade fedbench"
        )
