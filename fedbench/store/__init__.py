"""The result database: experiments, runs and per-round metrics (DESIGN §6, a contract).

A package whose files name their concern:

- common.py: constants, errors, records, URL resolution, schema checks (no SQLAlchemy)
- reads.py: the read queries as SQL text, one set for both drivers (no SQLAlchemy, no pandas)
- sqlite_reader.py: an SQLite file read-only through stdlib sqlite3 (`ls`, `show`)
- schema.py: tables, schema version, per-version migrations
- engine.py: opening a URL through SQLAlchemy, read and write transactions
- leases.py: claim, heartbeat, release, staleness
- writes.py: experiments, runs, rounds, finish, delete
- frames.py: the reads as pandas frames, raw table export
- facade.py: `Store`, composing them

Only this package imports SQLAlchemy, and only its SQLAlchemy modules do: importing
`fedbench.store` (or its reader) loads neither SQLAlchemy nor pandas, so `ls` and `show` stay
instant; the SQLAlchemy names below (`Store`, the tables, ...) are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fedbench.store.common import (
    BUSY_TIMEOUT_S,
    CHUNK,
    DEFAULT_URL,
    ENV_VAR,
    FINAL_STATUSES,
    LEASE_COLUMNS,
    MIN_LEASE_TIMEOUT,
    MIN_PREFIX,
    READER_ENV,
    SCHEMA_VERSION,
    STATUSES,
    TABLES,
    Claim,
    LeaseLostError,
    MetricRow,
    RunInfo,
    RunSpec,
    StoreBusyError,
    StoreError,
    check_schema,
    chunks,
    first_line,
    parse_version,
    plain_sqlite_path,
    resolve_url,
)
from fedbench.store.reads import (
    COUNTED,
    EXPERIMENT_COLUMNS,
    METRIC_COLUMNS,
    RUN_COLUMNS,
    RUN_FIELDS,
    Query,
    Reads,
    flatten_config,
    like_prefix,
)
from fedbench.store.sqlite_reader import SqliteReader, open_sqlite_reader

if TYPE_CHECKING:
    from fedbench.store.engine import is_new_sqlite_file
    from fedbench.store.facade import Store
    from fedbench.store.leases import lease_is_stale
    from fedbench.store.schema import (
        EXPERIMENTS,
        META,
        METRICS,
        RUNS,
        MetricFloat,
        UTCDateTime,
    )
    from fedbench.store.writes import _fedbench_version as _fedbench_version
    from fedbench.store.writes import upsert_statement

# name -> submodule, imported on first use (they import SQLAlchemy)
_LAZY = {
    "Store": "facade",
    "is_new_sqlite_file": "engine",
    "lease_is_stale": "leases",
    "EXPERIMENTS": "schema",
    "RUNS": "schema",
    "METRICS": "schema",
    "META": "schema",
    "UTCDateTime": "schema",
    "MetricFloat": "schema",
    "upsert_statement": "writes",
    "_fedbench_version": "writes",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "BUSY_TIMEOUT_S", "CHUNK", "COUNTED", "DEFAULT_URL", "ENV_VAR", "EXPERIMENTS",
    "EXPERIMENT_COLUMNS", "FINAL_STATUSES", "LEASE_COLUMNS", "META", "METRICS",
    "METRIC_COLUMNS", "MIN_LEASE_TIMEOUT", "MIN_PREFIX", "READER_ENV", "RUNS", "RUN_COLUMNS",
    "RUN_FIELDS",
    "SCHEMA_VERSION", "STATUSES", "TABLES", "Claim", "LeaseLostError", "MetricFloat",
    "MetricRow", "Query", "Reads", "RunInfo", "RunSpec", "SqliteReader", "Store",
    "StoreBusyError", "StoreError",
    "UTCDateTime", "check_schema", "chunks", "first_line", "flatten_config",
    "is_new_sqlite_file", "lease_is_stale", "like_prefix", "open_sqlite_reader",
    "parse_version", "plain_sqlite_path", "resolve_url", "upsert_statement",
]  # fmt: skip
