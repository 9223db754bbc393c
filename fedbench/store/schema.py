"""The schema of the result database (DESIGN §6, a contract) and its migrations.

Tables, in plain SQLAlchemy Core, portable between SQLite and PostgreSQL:

- ``experiments(id, name unique, grid_path, grid_toml, created_at)``
- ``runs(id, key unique, experiment_id, seed, algorithm, compressor, dataset, model, config,
  status, error, started_at, finished_at, host, device, fedbench_version, torch_version,
  lease_token, lease_owner, heartbeat_at, attempts, lease_timeout, lease_host,
  lease_started, provenance, rounds)``
- ``metrics(run_id, round, name, value)``, primary key ``(run_id, round, name)``, index
  ``(run_id, name, round)``
- ``meta(key, value)``: ``schema_version``.

Versions: 1 (fedbench 0.x) had no lease columns; 2 adds them; 3 adds the holder's own lease
timeout and process identity (`lease_timeout`, `lease_host`, `lease_started`) and the run's
`provenance` (JSON, nullable); 4 adds the run's `rounds` (R, set by `start_run`: rows for rounds
above it are refused at write time; NULL for a run started without it) and the metrics index
on ``(run_id, name, round)``, which finds a run's last value of one metric (`ls`) without
reading its other rows. A database of an older version
is brought up to date by the migration functions of `MIGRATIONS`, in order, each idempotent
(a migration that finds its columns already there adds nothing), in one transaction that also
creates any missing table, so several launchers opening one old database at once are safe.
A database opened read-only (report, export, a dry-run prune) is never migrated: it is read as
it is, the columns it lacks read as a run that never had them (NULL, attempts 0).

Conventions: timestamps are timezone-aware UTC datetimes (SQLite stores naive UTC, read back
as UTC); a metric value of NaN is stored as NULL (SQLite cannot store NaN) and read back as
NaN; ±inf is stored as is.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, NamedTuple

import sqlalchemy as sa

from fedbench.store.common import LEASE_COLUMNS, SCHEMA_VERSION, check_schema, parse_version

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Dialect

    from fedbench.store.engine import Database

V3_COLUMNS = ("lease_timeout", "lease_host", "lease_started", "provenance")
V4_COLUMNS = ("rounds",)
_PG_LOCK = 0x6FEDBE  # advisory lock serialising schema creation on PostgreSQL


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


# --------------------------------------------------------------------------- tables

METADATA = sa.MetaData(
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
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", _NAME, nullable=False, unique=True),
    sa.Column("grid_path", sa.Text, nullable=False),
    sa.Column("grid_toml", sa.Text, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

RUNS = sa.Table(
    "runs",
    METADATA,
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
    # version 3: the holder's own lease timeout and where its process runs (leases.py)
    sa.Column("lease_timeout", sa.Double),
    sa.Column("lease_host", _NAME),  # hostname/boot id/pid namespace of the holder
    sa.Column("lease_started", sa.String(32)),  # the holder process's start time (ticks)
    sa.Column("provenance", sa.JSON),  # where and how the run ran (Store.set_provenance)
    # version 4: the run's R (rounds 0..R), when the runner said it (start_run)
    sa.Column("rounds", sa.Integer),
)

METRICS = sa.Table(
    "metrics",
    METADATA,
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
# version 4: a run's rows of one metric in round order (the final value without a scan)
METRICS_BY_NAME = sa.Index(
    "ix_metrics_run_id_name", METRICS.c.run_id, METRICS.c.name, METRICS.c.round
)

META = sa.Table(
    "meta",
    METADATA,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

_TABLES: dict[str, sa.Table] = {"experiments": EXPERIMENTS, "runs": RUNS, "metrics": METRICS}

TABLE_BY_NAME: dict[str, sa.Table] = {"experiments": EXPERIMENTS, "runs": RUNS, "metrics": METRICS}


# --------------------------------------------------------------------------- migrations


def _add_missing_columns(conn: Connection, table: sa.Table, names: tuple[str, ...]) -> None:
    """ALTER TABLE ... ADD COLUMN for each of `names` the table lacks (idempotent). A NOT NULL
    column gets its server default, so existing rows are valid."""
    have = {c["name"] for c in sa.inspect(conn).get_columns(table.name)}
    for col in table.columns:
        if col.name in names and col.name not in have:
            ddl = col.type.compile(dialect=conn.dialect)
            extra = ""
            if not col.nullable and col.server_default is not None:
                extra = f" NOT NULL DEFAULT {col.server_default.arg}"  # type: ignore[attr-defined]
            conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {col.name} {ddl}{extra}")


def _to_2(conn: Connection) -> None:
    """Version 2: the lease columns on runs."""
    _add_missing_columns(conn, RUNS, LEASE_COLUMNS)


def _to_3(conn: Connection) -> None:
    """Version 3: the holder's lease timeout and process identity; the run's provenance."""
    _add_missing_columns(conn, RUNS, V3_COLUMNS)


def _to_4(conn: Connection) -> None:
    """Version 4: the run's rounds R; the metrics index on (run_id, name, round) (built once
    over the existing rows: about 10 s for 10⁷ rows)."""
    _add_missing_columns(conn, RUNS, V4_COLUMNS)
    METRICS_BY_NAME.create(conn, checkfirst=True)


# MIGRATIONS[v] brings a version-v database to version v + 1.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _to_2, 2: _to_3, 3: _to_4}


def schema_version(conn: Connection, url: str) -> int | None:
    """meta.schema_version of the database (None when the row is absent)."""
    q = sa.select(META.c.value).where(META.c.key == "schema_version")
    return parse_version(url, conn.execute(q).scalar_one_or_none())


class Found(NamedTuple):
    """What a database has: its table names and the columns of its runs table."""

    tables: set[str]
    run_columns: set[str]
    stale: bool  # lacks a table, a column or the current schema version


def inspect_schema(db: Database) -> Found:
    """What the database has, read without writing. A database that is not fedbench's (our
    table names without `meta`, or a `metrics` table without its primary key) or is newer is
    refused (`check_schema`) before anything is written to it."""
    with db._read("cannot open database") as conn:
        insp = sa.inspect(conn)
        present = set(insp.get_table_names())
        version = schema_version(conn, db.url) if "meta" in present else None
        pk: list[str] = []
        if "metrics" in present:
            pk = insp.get_pk_constraint("metrics").get("constrained_columns") or []
        columns = {c["name"] for c in insp.get_columns("runs")} if "runs" in present else set()
    check_schema(db.url, present, version, pk)  # the rules SqliteReader applies
    stale = version is None or version < SCHEMA_VERSION
    stale = stale or not present.issuperset(METADATA.tables)
    stale = stale or ("runs" in present and not columns.issuperset(RUNS.columns.keys()))
    return Found(present, columns, stale)


def create_or_migrate(db: Database) -> None:
    """Create missing tables, run every migration (each idempotent) and record the current
    schema version, in one write transaction (safe to race)."""
    with db._write("cannot create the tables of") as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_LOCK)))
        METADATA.create_all(conn)
        for step in sorted(MIGRATIONS):
            MIGRATIONS[step](conn)
        version = schema_version(conn, db.url)
        if version is None:
            conn.execute(sa.insert(META).values(key="schema_version", value=str(SCHEMA_VERSION)))
        elif version < SCHEMA_VERSION:
            q = sa.update(META).where(META.c.key == "schema_version")
            conn.execute(q.values(value=str(SCHEMA_VERSION)))
