"""Writing runs: experiments, pending runs, a run's start, its rounds' metrics, its end, and
deletes. Every write is one short transaction; a write given a lease token checks it in the
same transaction (leases.py) and raises `LeaseLostError` when another launcher took the run
over; `finish_run` never records `done` unless rounds 0..R all have rows."""

from __future__ import annotations

import functools
import json
import math
import operator
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as sa_pg
from sqlalchemy.dialects import sqlite as sa_sqlite

from fedbench.store import reads
from fedbench.store.common import FINAL_STATUSES, RunInfo, RunSpec, StoreError, chunks
from fedbench.store.engine import Database, _now
from fedbench.store.leases import check_lease
from fedbench.store.schema import EXPERIMENTS, METRICS, RUNS

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection


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


def _rounds_problem(conn: Connection, run_id: int, rounds: int) -> str | None:
    """Why the run's metric rows are not exactly rounds 0..`rounds` (a gap, or a round
    outside, e.g. written from a forged checkpoint), None when they are."""
    q = sa.select(METRICS.c.round).where(METRICS.c.run_id == run_id).distinct()
    have = {int(r) for r in conn.execute(q).scalars()}
    missing = [t for t in range(rounds + 1) if t not in have]
    if missing:
        return (
            f"incomplete: {len(missing)} of rounds 0..{rounds} have no rows "
            f"(first {missing[0]}); fedbench run --rerun-failed runs it again"
        )
    outside = sorted(t for t in have if not 0 <= t <= rounds)
    if outside:
        shown = ", ".join(map(str, outside[:5])) + (", ..." if len(outside) > 5 else "")
        return (
            f"rows for {len(outside)} round(s) outside 0..{rounds} ({shown}); "
            "fedbench run --rerun-failed runs it again"
        )
    return None


def _round_number(run_id: int, value: Any) -> int:
    """A round as an int; a non-integer (399.9) or negative round is refused."""
    try:
        t = operator.index(value)
    except TypeError:
        raise StoreError(f"run {run_id}: round {value!r} is not an integer") from None
    if t < 0:
        raise StoreError(f"run {run_id}: round {t} is negative: allowed rounds 0..R")
    return t


def _runs_by_key(conn: Connection, keys: Sequence[str]) -> dict[str, RunInfo]:
    """The runs with these keys (absent keys are left out), queried in chunks."""
    found: dict[str, RunInfo] = {}
    q = sa.select(RUNS.c.id, RUNS.c.key, RUNS.c.status, RUNS.c.error)
    for part in chunks(list(keys)):
        for r in conn.execute(q.where(RUNS.c.key.in_(part))):
            found[r.key] = RunInfo(int(r.id), r.key, r.status, r.error)
    return found


class Writes(Database):
    """The run writes of a `Store` (see the module docstring)."""

    def upsert_experiment(self, name: str, grid_path: str, grid_toml: str) -> int:
        """The id of experiment `name`, created if new; its grid path and text are updated."""
        row = {"name": name, "grid_path": grid_path, "grid_toml": grid_toml, "created_at": _now()}
        with self._write() as conn:
            _upsert(conn, EXPERIMENTS, [row], ["name"], ["grid_path", "grid_toml"])
            q = sa.select(EXPERIMENTS.c.id).where(EXPERIMENTS.c.name == name)
            return int(conn.execute(q).scalar_one())

    def experiment_grid(self, name: str) -> tuple[str, str] | None:
        """(grid path, grid text) stored for experiment `name`, None if there is none."""
        if not self._tables:
            return None
        q = sa.select(EXPERIMENTS.c.grid_path, EXPERIMENTS.c.grid_toml)
        with self._read() as conn:
            row = conn.execute(q.where(EXPERIMENTS.c.name == name)).first()
        return None if row is None else (str(row[0]), str(row[1]))

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
        if not self._tables:
            return {}
        with self._read() as conn:
            return {k: info.status for k, info in _runs_by_key(conn, keys).items()}

    def start_run(
        self,
        key: str,
        host: str,
        device: str,
        resume_round: int | None = None,
        token: str | None = None,
        rounds: int | None = None,
    ) -> int:
        """Mark run `key` running and return its id. Its metrics after `resume_round` (all of
        them when None) are deleted, so a restarted run never duplicates rows. With `token`
        (a `claim`'s) nothing is written unless the run is still ours (else LeaseLostError); without
        one the run has no lease (anyone may take it over). `rounds` = R is recorded with the
        run: `log_rounds` then refuses rows for rounds above R (None: R unknown, no bound)."""
        if rounds is not None and (isinstance(rounds, bool) or operator.index(rounds) < 0):
            raise StoreError(f"run {key}: rounds = {rounds!r}: allowed: an integer R >= 0")
        versions = {"fedbench_version": _fedbench_version(), "torch_version": _torch_version()}
        with self._write() as conn:
            run_id = conn.execute(sa.select(RUNS.c.id).where(RUNS.c.key == key)).scalar()
            if run_id is None:
                raise StoreError(f"unknown run key {key!r} in {self.url}")
            check_lease(conn, run_id, token, self.url)
            stale = METRICS.c.run_id == run_id
            if resume_round is not None:
                stale = sa.and_(stale, METRICS.c.round > resume_round)
            conn.execute(sa.delete(METRICS).where(stale))
            lease: dict[str, Any] = {}
            if token is None:
                lease = {c: None for c in ("lease_token", "lease_owner", "heartbeat_at")}
                lease.update(lease_timeout=None, lease_host=None, lease_started=None)
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
                    rounds=rounds,
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
        runner batches fast rounds this way); as `log_round` otherwise, lease check included.
        A round that is not an integer in 0..R (R: the run's `rounds`, when `start_run` was
        given it) is refused with a StoreError, nothing written."""
        rows: list[tuple[int, int, str, float | None]] = []
        for round, metrics in rounds:
            t = _round_number(run_id, round)
            for name, value in metrics.items():
                try:
                    v = float(value)
                except (TypeError, ValueError):
                    raise StoreError(
                        f"run {run_id} round {round}: metric {name!r} = {value!r} is not a number"
                    ) from None
                rows.append((run_id, t, name, None if math.isnan(v) else v))
        if not rows:
            return
        highest = max(r[1] for r in rows)
        with self._write() as conn:
            check_lease(conn, run_id, token, self.url)
            bound = conn.execute(sa.select(RUNS.c.rounds).where(RUNS.c.id == run_id)).scalar()
            if bound is not None and highest > bound:
                raise StoreError(
                    f"run {run_id}: round {highest} is outside the run's rounds 0..{bound}"
                    " (rows for rounds above R are refused; nothing written)"
                )
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
        `rounds` = R: `done` is recorded only when the run's rows are exactly rounds 0..R (no
        gap, nothing outside), else the run is `failed` saying why. The lease is cleared."""
        if status not in FINAL_STATUSES:
            raise StoreError(f"finish_run status {status!r}: allowed: {', '.join(FINAL_STATUSES)}")
        with self._write() as conn:
            check_lease(conn, run_id, token, self.url)
            if status == "done" and rounds is not None:
                problem = _rounds_problem(conn, run_id, rounds)
                if problem is not None:
                    status, error = "failed", problem
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

    # ----------------------------------------------------------------- provenance

    def set_provenance(self, run_id: int, provenance: Mapping[str, Any]) -> None:
        """Record where and how run `run_id` ran (JSON: host, versions, git commit, ...); it
        replaces what was recorded before."""
        try:
            value = json.loads(json.dumps(dict(provenance), allow_nan=False))
        except (TypeError, ValueError) as e:
            raise StoreError(f"run {run_id}: provenance is not plain JSON: {e}") from None
        with self._write() as conn:
            q = sa.update(RUNS).where(RUNS.c.id == run_id).values(provenance=value)
            if conn.execute(q).rowcount == 0:
                raise StoreError(f"unknown run id {run_id} in {self.url}")

    def provenance(self, run_id: int) -> dict[str, Any] | None:
        """The provenance recorded for run `run_id`, None when none was (or the database,
        opened read-only, predates it)."""
        if not self._tables or (
            self._run_columns is not None and "provenance" not in self._run_columns
        ):
            return None
        with self._read() as conn:
            value = conn.execute(sa.select(RUNS.c.provenance).where(RUNS.c.id == run_id)).scalar()
        return reads.config(value)
