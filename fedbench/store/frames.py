"""The `Store`'s reads as pandas frames (report, export, prune): the records of reads.py made
typed columns, and raw tables for export. pandas is imported only when a frame is asked for."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from fedbench.store import reads
from fedbench.store.common import STATUSES, TABLES, StoreError
from fedbench.store.engine import Database
from fedbench.store.reads import EXPERIMENT_COLUMNS, METRIC_COLUMNS, RUN_COLUMNS, flatten_config
from fedbench.store.schema import RUNS, TABLE_BY_NAME, UTCDateTime

if TYPE_CHECKING:
    import pandas as pd

EXPORT_CHUNK = 250_000  # metric rows a streamed export holds at once


def _utc_columns(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    import pandas as pd

    for c in columns:
        frame[c] = pd.to_datetime(frame[c], utc=True)
    return frame


class Frames(Database):
    """Frames over the reads (see the module docstring)."""

    def _columns_of(self, t: sa.Table) -> list[Any]:
        """The columns of `t` to select: a runs column an older database (opened read-only)
        lacks reads as a run that never had it: NULL, attempts 0."""
        have = self._run_columns
        if t is not RUNS or have is None:
            return list(t.columns)
        return [
            c if c.name in have
            else sa.literal(0).label(c.name) if c.name == "attempts"
            else sa.type_coerce(sa.null(), c.type).label(c.name)
            for c in t.columns
        ]  # fmt: skip

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
            rows = reads.metrics_rows(q, run_ids, names)
        frame = pd.DataFrame(rows, columns=list(METRIC_COLUMNS))
        return frame.astype({"run_id": "int64", "round": "int64", "value": "float64"})

    def export(self, table: str) -> pd.DataFrame:
        """A raw table ("experiments", "runs" or "metrics") as a frame; the run config as
        JSON text, timestamps as UTC, NULL metric values as NaN."""
        import pandas as pd

        if table not in TABLE_BY_NAME:
            raise StoreError(f"cannot export table {table!r}: allowed: {', '.join(TABLES)}")
        t = TABLE_BY_NAME[table]
        rows: Sequence[Any] = []
        if self._tables:
            q = sa.select(*self._columns_of(t)).order_by(*t.primary_key.columns)
            with self._read() as conn:
                rows = conn.execute(q).all()
        frame = pd.DataFrame([tuple(r) for r in rows], columns=[c.name for c in t.columns])
        if table == "runs":
            frame["config"] = [json.dumps(c) for c in frame["config"]]
            frame["provenance"] = [
                None if p is None else json.dumps(p) for p in frame["provenance"]
            ]
        if table == "metrics":
            frame = frame.astype({"value": "float64"})
        stamps = [c.name for c in t.columns if isinstance(c.type, UTCDateTime)]
        return _utc_columns(frame, stamps)

    def export_chunks(self, table: str, rows: int | None = None) -> Iterator[pd.DataFrame]:
        """`export(table)` as consecutive frames of at most `rows` rows each (default
        `EXPORT_CHUNK`), in primary-key order, at least one (empty when the table is): the
        metrics table (10⁷ rows for 10,000 runs × 1,000 rounds) is streamed through one cursor
        in one read transaction, so an export holds one chunk at a time; experiments and runs
        (a row per run) come as one frame."""
        import pandas as pd

        rows = EXPORT_CHUNK if rows is None else max(int(rows), 1)
        if table != "metrics" or not self._tables:
            yield self.export(table)
            return
        sql = "SELECT run_id, round, name, value FROM metrics ORDER BY run_id, round, name"
        columns = list(METRIC_COLUMNS)
        dtypes = {"run_id": "int64", "round": "int64", "value": "float64"}
        with self._read() as conn:
            if conn.dialect.name == "sqlite":  # the stdlib cursor is lazy: no row processing
                raw = conn.connection.driver_connection
                assert raw is not None
                cursor = raw.execute(sql)
                parts: Iterator[Sequence[Any]] = iter(lambda: cursor.fetchmany(rows), [])
            else:  # a server-side cursor where the driver has one (psycopg)
                result = conn.execution_options(stream_results=True).execute(sa.text(sql))
                parts = (list(map(tuple, p)) for p in result.partitions(rows))
            empty = True
            for part in parts:
                empty = False
                yield pd.DataFrame(part, columns=columns).astype(dtypes)  # NULL -> NaN
            if empty:
                yield pd.DataFrame([], columns=columns).astype(dtypes)
