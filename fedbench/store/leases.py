"""Leases: which launcher runs a run, and when another may take it over.

A launcher claims a run in one transaction (`claim`): the run gets a fresh `lease_token`,
`lease_owner` = "host:pid" of the process running it, a `heartbeat_at` the holder renews
(`heartbeat`) and `attempts` + 1. A run can be claimed when it is pending (or failed, when
asked), or running with a stale lease: its heartbeat older than the caller's timeout, or its
holder a process of this host that no longer exists. Every write of a run given a token checks
it (`check_lease`) in the same transaction. Heartbeats compare against the database's clock on
PostgreSQL (many hosts), the local clock on SQLite (one host).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

import sqlalchemy as sa

from fedbench.store.common import Claim, LeaseLostError, StoreError, chunks
from fedbench.store.engine import Database, _now
from fedbench.store.schema import RUNS

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection


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


def check_lease(conn: Connection, run_id: int, token: str | None, url: str) -> None:
    """Raise LeaseLostError unless run `run_id` is running under `token` (None: no check).
    Locks the row on PostgreSQL; SQLite writers already hold the write lock."""
    if token is None:
        return
    q = sa.select(RUNS.c.lease_token, RUNS.c.status, RUNS.c.lease_owner)
    row = conn.execute(q.where(RUNS.c.id == run_id).with_for_update()).first()
    if row is None:
        raise StoreError(f"unknown run id {run_id} in {url}")
    if row.lease_token != token or row.status != "running":
        raise LeaseLostError(
            f"run {run_id}: lease lost (now {row.status}"
            + (f", held by {row.lease_owner})" if row.lease_owner else ")")
        )


class Leases(Database):
    """The lease operations of a `Store` (see the module docstring)."""

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
