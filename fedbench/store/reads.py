"""The read queries, written once, run by stdlib sqlite3 and by SQLAlchemy alike.

Why: `fedbench ls` and `fedbench show` must answer in well under half a second, and importing
SQLAlchemy (~0.15 s) and pandas (~0.27 s) took most of that. So the queries behind `ls`,
`show` and the `Store`'s frames are plain SQL text here, run through a `Query` callable:

- the stdlib `sqlite3` driver for an SQLite file (`sqlite_reader.SqliteReader`, opened
  read-only: it never writes, not even a migration, and reads while a WAL-mode writer is
  active), or
- a SQLAlchemy connection of a `Store` (engine.py), for PostgreSQL and every other URL;

one text serves both, and the `Store`'s read methods (`get_run`, `runs_frame`, ...) are built
on the same functions. This module imports neither SQLAlchemy nor pandas.

Portability: standard SQL only; named parameters ``:name`` (both `sqlite3` and
`sqlalchemy.text` take them); an IN list is expanded into one parameter per value, at most
`CHUNK` values per query.

Decoding, as the typed columns of schema.py do: a timestamp (naive UTC text in SQLite, an aware
datetime from PostgreSQL) becomes an aware UTC datetime (`UTCDateTime`); a NULL metric value
becomes NaN (`MetricFloat`); the run config (JSON text in SQLite, already a dict from
PostgreSQL) becomes a dict (`sa.JSON`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timezone
from typing import Any, Self

from fedbench.store.common import (
    LEASE_COLUMNS,
    MIN_PREFIX,
    MetricRow,
    StoreError,
    chunks,
)

# Columns of a run record (and of get_run, with run_id as id), in order.
RUN_FIELDS = (
    "run_id", "experiment_id", "experiment", "key", "seed", "algorithm", "compressor",
    "dataset", "model", "config", "status", "error", "started_at", "finished_at", "host",
    "device", "fedbench_version", "torch_version", *LEASE_COLUMNS, "rounds_logged",
)  # fmt: skip
# Columns of runs_frame before the flattened config, in order.
RUN_COLUMNS = (
    "run_id", "key", "experiment", "seed", "algorithm", "compressor", "dataset", "model",
    "status", "error", "started_at", "finished_at", "host", "device", "fedbench_version",
    "torch_version", "lease_owner", "heartbeat_at", "attempts", "rounds_logged",
)  # fmt: skip
METRIC_COLUMNS = ("run_id", "round", "name", "value")
COUNTED = ("done", "failed", "running", "pending", "diverged")  # experiments order
EXPERIMENT_COLUMNS = ("id", "name", "grid_path", "created_at", "runs", *COUNTED)

Query = Callable[[str, Mapping[str, Any]], list[tuple[Any, ...]]]
"""Runs one SQL text with named parameters inside the caller's transaction; the rows."""


# --------------------------------------------------------------------------- decoders


def utc(value: str | datetime | None) -> datetime | None:
    """A stored timestamp as an aware UTC datetime: SQLite's naive UTC text is UTC."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def metric(value: float | None) -> float:
    """A stored metric value: NULL is NaN (SQLite cannot store NaN)."""
    return math.nan if value is None else float(value)


def config(value: str | bytes | dict[str, Any] | None) -> dict[str, Any] | None:
    """The run config: JSON text (SQLite) or already decoded (PostgreSQL's json type)."""
    if isinstance(value, (str, bytes)):
        decoded: dict[str, Any] = json.loads(value)
        return decoded
    return value


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def run_record(row: Sequence[Any]) -> dict[str, Any]:
    """A row of `runs_sql` as a dict of `RUN_FIELDS`, decoded."""
    r = dict(zip(RUN_FIELDS, row, strict=True))
    for k in ("run_id", "experiment_id", "seed"):
        r[k] = int(r[k])
    for k in ("started_at", "finished_at", "heartbeat_at"):
        r[k] = utc(r[k])
    r["config"] = config(r["config"])
    r["attempts"] = _opt_int(r["attempts"])
    r["rounds_logged"] = _opt_int(r["rounds_logged"])
    return r


def experiment_record(row: Sequence[Any]) -> dict[str, Any]:
    """A row of `EXPERIMENTS_SQL` as a dict of `EXPERIMENT_COLUMNS`, decoded."""
    r = dict(zip(EXPERIMENT_COLUMNS, row, strict=True))
    r["created_at"] = utc(r["created_at"])
    for k in ("id", "runs", *COUNTED):
        r[k] = int(r[k])
    return r


def flatten_config(config: Mapping[str, Any], reserved: Sequence[str] = ()) -> dict[str, Any]:
    """{"section": {"field": v}} -> {"section.field": v}, values made hashable; a top-level
    value that is not a section keeps its own name unless that name is in `reserved`."""
    flat: dict[str, Any] = {}
    for section, fields in config.items():
        if isinstance(fields, Mapping):
            for field, value in fields.items():
                flat[f"{section}.{field}"] = _hashable(value)
        elif section not in reserved:
            flat[section] = _hashable(fields)
    return flat


def _hashable(v: Any) -> Any:
    """Lists become tuples and dicts sorted (key, value) tuples, recursively."""
    if isinstance(v, (list, tuple)):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((str(k), _hashable(x)) for k, x in v.items()))
    return v


# --------------------------------------------------------------------------- SQL


def in_list(column: str, values: Sequence[Any], prefix: str, params: dict[str, Any]) -> str:
    """``column IN (:prefix0, ...)``, its values added to `params`; an empty list matches no
    row (``IN ()`` is not portable)."""
    if not values:
        return "1 = 0"
    names = [f"{prefix}{i}" for i in range(len(values))]
    params.update(zip(names, values, strict=True))
    return f"{column} IN ({', '.join(':' + n for n in names)})"


def runs_sql(where: str = "", tail: str = "", lease: bool = True) -> str:
    """Runs joined with their experiment's name and the highest round that has metrics
    (`RUN_FIELDS`); without `lease` (a version-1 database, read without migrating it) the
    lease columns read as a run that never had a lease: NULL, attempts 0."""
    lease_sql = ", ".join(
        f"r.{c}" if lease else f"{'0' if c == 'attempts' else 'NULL'} AS {c}" for c in LEASE_COLUMNS
    )
    return (
        "SELECT r.id AS run_id, r.experiment_id, e.name AS experiment, r.key, r.seed, "
        "r.algorithm, r.compressor, r.dataset, r.model, r.config, r.status, r.error, "
        "r.started_at, r.finished_at, r.host, r.device, r.fedbench_version, r.torch_version, "
        f"{lease_sql}, "
        "(SELECT MAX(m.round) FROM metrics m WHERE m.run_id = r.id) AS rounds_logged "
        f"FROM runs r JOIN experiments e ON e.id = r.experiment_id {where} {tail}"
    ).strip()


EXPERIMENTS_SQL = (
    "SELECT e.id, e.name, e.grid_path, e.created_at, COUNT(r.id) AS runs, "
    + ", ".join(
        f"COALESCE(SUM(CASE WHEN r.status = '{s}' THEN 1 ELSE 0 END), 0) AS {s}" for s in COUNTED
    )
    + " FROM experiments e LEFT OUTER JOIN runs r ON e.id = r.experiment_id"
    " GROUP BY e.id, e.name, e.grid_path, e.created_at ORDER BY e.id"
)


def like_prefix(text: str) -> str:
    """A LIKE pattern matching strings that start with `text` literally (escape char "/")."""
    return re.sub(r"([/%_])", r"/\1", text) + "%"


# --------------------------------------------------------------------------- readers


def get_run(query: Query, ref: str, url: str, lease: bool = True) -> dict[str, Any]:
    """One run by id, full key or unique key prefix (at least `MIN_PREFIX` characters); a
    number that is a run id means that run, else it is read as a key prefix of any length.
    Includes `experiment` (its name) and `rounds_logged`; `id` first."""
    ref = str(ref).strip()
    rows = query(runs_sql("WHERE r.key = :ref", lease=lease), {"ref": ref})
    if not rows and ref.isdigit() and int(ref) < 2**63:
        rows = query(runs_sql("WHERE r.id = :id", lease=lease), {"id": int(ref)})
    if not rows and (len(ref) >= MIN_PREFIX or ref.isdigit()):  # "24": id, else key
        sql = runs_sql("WHERE r.key LIKE :prefix ESCAPE '/'", "ORDER BY r.id LIMIT 6", lease)
        rows = query(sql, {"prefix": like_prefix(ref)})
    if not rows:
        hint = (
            ""
            if ref.isdigit() or len(ref) >= MIN_PREFIX
            else f" (give at least {MIN_PREFIX} characters of a key)"
        )
        raise StoreError(f"no run {ref!r} in {url}{hint}")
    records = [run_record(r) for r in rows]
    if len(records) > 1:
        keys = [str(r["key"]) for r in records]
        shown = ", ".join(keys[:5]) + (", ..." if len(keys) > 5 else "")
        raise StoreError(f"run {ref!r} is ambiguous: it matches {shown}; give more of the key")
    info = records[0]
    return {"id": info.pop("run_id"), **info}


def runs_records(
    query: Query,
    experiment: str | None = None,
    status: Sequence[str] | None = None,
    run_ids: Sequence[int] | None = None,
    lease: bool = True,
    last: int | None = None,
) -> list[dict[str, Any]]:
    """One record (`RUN_FIELDS`) per run, ordered by id, optionally only those of an
    experiment, with given statuses, or given ids; with `last`, only the `last` highest ids
    (of each chunk of `run_ids`: give one or the other)."""
    params: dict[str, Any] = {}
    where = _run_filters(experiment, status, params)
    parts: list[Sequence[int] | None] = [None]
    if run_ids is not None:
        parts = list(chunks(sorted({int(i) for i in run_ids})))
    order = "ORDER BY r.id"
    if last is not None:  # the newest `last` runs, read in SQL (ls of 10⁴ runs shows a page)
        order = f"ORDER BY r.id DESC LIMIT {max(int(last), 0)}"
    rows = []
    for part in parts:
        chunk_params = dict(params)
        clauses = where + ([] if part is None else [in_list("r.id", part, "i", chunk_params)])
        sql = runs_sql(f"WHERE {' AND '.join(clauses)}" if clauses else "", order, lease)
        rows.extend(query(sql, chunk_params))
    if last is not None:
        rows.sort(key=lambda r: int(r[0]))
    return [run_record(r) for r in rows]


def _run_filters(
    experiment: str | None, status: Sequence[str] | None, params: dict[str, Any]
) -> list[str]:
    """The WHERE clauses (over runs r joined with experiments e) of an experiment name and a
    set of statuses; their values added to `params`."""
    where = []
    if experiment is not None:
        where.append("e.name = :experiment")
        params["experiment"] = experiment
    if status is not None:
        where.append(in_list("r.status", list(status), "s", params))
    return where


def metrics_rows(
    query: Query, run_ids: Sequence[int], names: Sequence[str] | None = None
) -> list[tuple[Any, ...]]:
    """The undecoded (run_id, round, name, value) rows of `metrics_records` (value None for
    NaN): a frame decodes them column-wise, faster than row by row."""
    out: list[tuple[Any, ...]] = []
    for part in chunks(sorted({int(i) for i in run_ids})):
        params: dict[str, Any] = {}
        where = in_list("run_id", part, "i", params)
        if names is not None:
            where += " AND " + in_list("name", list(names), "n", params)
        sql = (
            f"SELECT run_id, round, name, value FROM metrics WHERE {where} "
            "ORDER BY run_id, round, name"
        )
        out.extend(query(sql, params))
    return out


def metrics_records(
    query: Query, run_ids: Sequence[int], names: Sequence[str] | None = None
) -> list[MetricRow]:
    """Long-form metrics of the given runs (optionally only some names), sorted by run_id,
    round, name; NULL values come back as NaN."""
    rows = metrics_rows(query, run_ids, names)
    return [MetricRow(int(r), int(t), str(n), metric(v)) for r, t, n, v in rows]


def final_metrics(
    query: Query, run_ids: Sequence[int], names: Sequence[str]
) -> dict[int, dict[str, float]]:
    """run id -> {name: final value} for the given runs and metric names, computed in SQL. The
    final value of a metric is the one at the highest round where it is not NaN (NULL), NaN
    when it is NaN in every round (what `ls` has always shown: pandas' `groupby().last()`);
    a (run, name) without any row is absent.

    Why per (run, name) subqueries: `ls` of 10,000 runs × 1,000 rounds must not read 10⁷
    rows. With the index on (run_id, name, round) (schema version 4) each one walks that
    metric's rows of the run backwards from the last round and stops at the first value that
    is not NULL; an older database read as it is answers the same, more slowly."""
    out: dict[int, dict[str, float]] = {}
    for part in chunks(sorted({int(i) for i in run_ids})):
        for name in dict.fromkeys(names):
            params: dict[str, Any] = {"name": name}
            where = in_list("r.id", part, "i", params)
            sql = (
                "SELECT r.id, (SELECT m.value FROM metrics m WHERE m.run_id = r.id "
                "AND m.name = :name AND m.value IS NOT NULL ORDER BY m.round DESC LIMIT 1), "
                "CASE WHEN EXISTS (SELECT 1 FROM metrics m WHERE m.run_id = r.id "
                f"AND m.name = :name) THEN 1 ELSE 0 END FROM runs r WHERE {where}"
            )
            for run_id, value, has in query(sql, params):
                if has:
                    out.setdefault(int(run_id), {})[name] = metric(value)
    return out


def count_runs(
    query: Query, experiment: str | None = None, status: Sequence[str] | None = None
) -> int:
    """How many runs `runs_records(experiment, status)` would return."""
    params: dict[str, Any] = {}
    where = _run_filters(experiment, status, params)
    sql = "SELECT COUNT(*) FROM runs r JOIN experiments e ON e.id = r.experiment_id"
    rows = query(sql + (f" WHERE {' AND '.join(where)}" if where else ""), params)
    return int(rows[0][0]) if rows else 0


def experiments_records(query: Query) -> list[dict[str, Any]]:
    """One record per experiment (`EXPERIMENT_COLUMNS`), by id: id, name, grid_path,
    created_at, and its run counts in all and per status."""
    return [experiment_record(r) for r in query(EXPERIMENTS_SQL, {})]


def experiment_grid(query: Query, name: str) -> tuple[str, str] | None:
    """(grid path, grid text) stored for experiment `name`, None if there is none."""
    rows = query("SELECT grid_path, grid_toml FROM experiments WHERE name = :name", {"name": name})
    return None if not rows else (str(rows[0][0]), str(rows[0][1]))


def no_rows(sql: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    """The `Query` of a database without fedbench's tables: every read is empty."""
    return []


class Reads:
    """The reads behind ls, show and the Store's frames, one snapshot (`_snapshot`) each,
    running this module's query functions: shared by the `Store` (SQLAlchemy, every URL) and
    `SqliteReader` (stdlib sqlite3, read-only)."""

    _lease = True  # runs have the lease columns (a version-1 file read as it is has not)

    @property
    def url(self) -> str:
        raise NotImplementedError

    def _snapshot(self) -> AbstractContextManager[Query]:
        """A read transaction (a consistent snapshot) as a `Query`."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get_run(self, ref: str) -> dict[str, Any]:
        """One run by id, full key or unique key prefix (at least 4 characters); a number that
        is a run id means that run, else it is read as a key prefix of any length. Includes
        `experiment` (its name) and `rounds_logged`."""
        with self._snapshot() as q:
            return get_run(q, ref, self.url, self._lease)

    def runs_records(
        self,
        experiment: str | None = None,
        status: Sequence[str] | None = None,
        run_ids: Sequence[int] | None = None,
        last: int | None = None,
    ) -> list[dict[str, Any]]:
        """One dict per run (ordered by id; `RUN_FIELDS`, config as a dict), optionally only
        those of an experiment, with given statuses, or given ids; with `last`, only the
        newest `last` of them (highest ids)."""
        with self._snapshot() as q:
            return runs_records(q, experiment, status, run_ids, self._lease, last)

    def count_runs(self, experiment: str | None = None, status: Sequence[str] | None = None) -> int:
        """How many runs `runs_records(experiment, status)` returns."""
        with self._snapshot() as q:
            return count_runs(q, experiment, status)

    def metrics_records(
        self, run_ids: Sequence[int], names: Sequence[str] | None = None
    ) -> list[MetricRow]:
        """Long-form metrics of the given runs (optionally only some names) as (run_id,
        round, name, value) tuples sorted by run_id, round, name; NULL values as NaN."""
        with self._snapshot() as q:
            return metrics_records(q, run_ids, names)

    def final_metrics(
        self, run_ids: Sequence[int], names: Sequence[str]
    ) -> dict[int, dict[str, float]]:
        """run id -> {name: value at the last round where it is not NaN} (`final_metrics`),
        computed in SQL."""
        with self._snapshot() as q:
            return final_metrics(q, run_ids, names)

    def experiments_records(self) -> list[dict[str, Any]]:
        """One dict per experiment (`EXPERIMENT_COLUMNS`): id, name, grid_path, created_at,
        and run counts in all and per status."""
        with self._snapshot() as q:
            return experiments_records(q)

    def experiment_grid(self, name: str) -> tuple[str, str] | None:
        """(grid path, grid text) stored for experiment `name`, None if there is none."""
        with self._snapshot() as q:
            return experiment_grid(q, name)
