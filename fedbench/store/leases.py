"""Leases: which launcher runs a run, and when another may take it over.

A launcher claims a run in one transaction (`claim`): the run gets a fresh `lease_token`,
`lease_owner` = "host:pid" of the process running it, a `heartbeat_at` the holder renews
(`heartbeat`), `attempts` + 1, and what judges the lease later: the holder's own timeout
(`lease_timeout`), its host identity (`lease_host`: hostname, boot id, pid namespace) and its
process start time (`lease_started`). A run can be claimed when it is pending (or failed, when
asked), or running with a stale lease: its heartbeat older than the holder's timeout, or its
holder a process of this very host that no longer exists (`lease_is_stale`). Every write of a
run given a token checks it (`check_lease`) in the same transaction. Heartbeats compare against
the database's clock on PostgreSQL (many hosts), the local clock on SQLite (one host).
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import sqlalchemy as sa

from fedbench.store.common import Claim, LeaseLostError, StoreError, chunks
from fedbench.store.engine import Database, _now
from fedbench.store.schema import RUNS

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection


class Holder(NamedTuple):
    """What a lease says about its holder: enough to judge it stale without trusting names."""

    owner: str | None  # "host:pid", shown to people
    heartbeat: datetime | None
    timeout: float | None  # the holder's own lease timeout (None: a lease of schema 2)
    host: str | None  # `host_identity()` of the holder (None: unknown, never "this host")
    started: str | None  # `process_started(pid)` of the holder when it claimed


_LEASE = (RUNS.c.lease_owner, RUNS.c.heartbeat_at, RUNS.c.lease_timeout, RUNS.c.lease_host,
          RUNS.c.lease_started)  # fmt: skip


def lease_is_stale(holder: Holder, now: datetime, timeout: float) -> bool:
    """A running run's lease can be taken over: no heartbeat (a run started without a lease),
    a heartbeat older than the holder's own timeout (the caller's `timeout` for a lease that
    does not say: a launcher with a short timeout must not take a live run from one with a
    long one), or a holder process that is gone from this very host: same `host_identity()`
    (hostname, boot id and pid namespace; containers sharing a hostname differ) and its pid
    dead or reused by a process started later."""
    limit = timeout if holder.timeout is None else holder.timeout
    if holder.heartbeat is None or (now - holder.heartbeat).total_seconds() > limit:
        return True
    ours = host_identity()
    if ours is None or holder.host != ours:
        return False
    pid = (holder.owner or "").rpartition(":")[2]
    if not pid.isdigit():
        return False
    if not _process_alive(int(pid)):
        return True
    now_started = process_started(int(pid))
    return None not in (holder.started, now_started) and holder.started != now_started


@functools.cache
def host_identity() -> str | None:
    """This host as a lease names it: hostname, kernel boot id and pid namespace, so that a
    pid is only ever judged on the machine and namespace where it means that process. None
    where the kernel does not say (no /proc): "this host" is then never concluded."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        ns = Path("/proc/self/ns/pid").stat().st_ino
    except OSError:
        return None
    return f"{socket.gethostname()}/{boot}/{ns}"[:255]


def process_started(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, /proc/PID/stat field 22): tells a
    reused pid from the holder. None when the process is gone or the kernel does not say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = stat.rpartition(")")[2].split()  # after the command name, which may hold spaces
    return fields[19] if len(fields) > 19 else None


def _holder(row: Any) -> Holder:
    return Holder(row.lease_owner, row.heartbeat_at, row.lease_timeout, row.lease_host,
                  row.lease_started)  # fmt: skip


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
                sa.select(RUNS.c.id, RUNS.c.status, RUNS.c.attempts, *_LEASE)
                .where(RUNS.c.key == key)
                .with_for_update(skip_locked=True)  # PostgreSQL: locked is someone else's now
            ).first()  # fmt: skip
            if row is None:
                exists = sa.select(RUNS.c.id).where(RUNS.c.key == key)
                if conn.execute(exists).first() is not None:
                    return None  # a row another transaction holds: not ours to take now
                raise StoreError(f"unknown run key {key!r} in {self.url}")
            now = self._db_now(conn)
            taken_over = None
            if row.status == "running":
                if not lease_is_stale(_holder(row), now, timeout):
                    return None
                taken_over = row.lease_owner or "unknown holder"
            elif row.status not in statuses:
                return None
            attempts = int(row.attempts or 0) + 1
            pid = owner.rpartition(":")[2]
            conn.execute(
                sa.update(RUNS)
                .where(RUNS.c.id == row.id)
                .values(
                    status="running",
                    lease_token=token,
                    lease_owner=owner,
                    heartbeat_at=now,
                    attempts=attempts,
                    lease_timeout=float(timeout),
                    lease_host=host_identity(),
                    lease_started=process_started(int(pid)) if pid.isdigit() else None,
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
        q = sa.select(RUNS.c.key, RUNS.c.status, *_LEASE)
        out: set[str] = set()
        with self._read() as conn:
            now = self._db_now(conn)
            for part in chunks(list(keys)):
                for r in conn.execute(q.where(RUNS.c.key.in_(part))):
                    if r.status in statuses or (
                        r.status == "running" and lease_is_stale(_holder(r), now, timeout)
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
