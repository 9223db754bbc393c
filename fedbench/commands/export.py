"""`fedbench export`: the database tables, or one experiment's tidy results frame, as CSV or
Parquet files for other tools."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from fedbench.commands.common import (
    CommandError,
    DbOption,
    console,
    one_line_errors,
    open_store,
)

TABLES = ("experiments", "runs", "metrics")
FORMATS = ("csv", "parquet")


@one_line_errors
def export(
    out: Annotated[Path, typer.Argument(help="directory to write TABLE.csv files into")] = Path(
        "results/export"
    ),
    db: DbOption = None,
    table: Annotated[
        list[str] | None,
        typer.Option("--table", "-t", help="experiments | runs | metrics (repeatable)"),
    ] = None,
    experiment: Annotated[
        str | None,
        typer.Option(
            "--experiment",
            "-e",
            help="write this experiment's tidy results frame instead: EXPERIMENT.csv, one row "
            "per run x round, config fields and metrics as columns "
            "(fedbench.report.load_frame in Python)",
        ),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="csv | parquet")] = "csv",
    tensorboard: Annotated[
        Path | None,
        typer.Option(
            "--tensorboard",
            help="write every run's metrics as TensorBoard scalars into this directory instead "
            "(one subdirectory per run; needs fedbench[tensorboard])",
        ),
    ] = None,
    mlflow: Annotated[
        str | None,
        typer.Option(
            "--mlflow",
            help="log every run as an MLflow run (config as params, metrics per round) to this "
            "tracking URI instead, e.g. sqlite:///mlflow.db (needs fedbench[mlflow])",
        ),
    ] = None,
) -> None:
    """Write database tables, or one experiment's tidy frame, as CSV or Parquet files
    (Parquet needs pyarrow).

    Example: fedbench export results/export --format parquet --table runs --table metrics
    """
    if tensorboard is not None or mlflow is not None:  # experiment tracking (fedbench.tracking)
        _track(db, experiment, table, tensorboard, mlflow)
        return
    for t in table or []:
        if t not in TABLES:
            raise CommandError(f"--table {t}: allowed: {', '.join(TABLES)}")
    if table and experiment:
        raise CommandError("--experiment writes one tidy frame: give it without --table")
    if fmt not in FORMATS:
        raise CommandError(f"--format {fmt}: allowed: {', '.join(FORMATS)}")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise CommandError(
                "--format parquet needs pyarrow: pip install pyarrow (or 'fedbench[parquet]')"
            ) from None
    if out.exists() and not out.is_dir():
        raise CommandError(
            f"{out}: exists and is not a directory; allowed: a directory to write into"
        )
    store = open_store(db)
    frames: list[tuple[str, Iterator[Any]]] = []
    if experiment is not None:
        from fedbench.report import load, tidy

        frame = tidy(*load(store, experiment))
        if fmt == "parquet":  # config values may be tuples: parquet needs one type a column
            obj = [c for c in frame.columns if frame[c].dtype == object]
            frame[obj] = frame[obj].map(lambda v: str(list(v)) if isinstance(v, tuple) else v)
        frames.append((experiment, iter([frame])))
    else:  # the metrics table streamed in chunks: memory bounded by one chunk
        frames = [(t, store.export_chunks(t)) for t in table or TABLES]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CommandError(f"{out}: cannot create the directory ({e.strerror or e})") from None
    from fedbench.report.safe import atomic_write, printable, slug

    for name, parts in frames:
        # a temp file renamed into place: a full disk or a kill leaves no partial file
        path = out / f"{slug(name)}.{fmt}"
        atomic_write(path, functools.partial(_write, parts, fmt))
        console.print(f"wrote {printable(path)}", highlight=False, markup=False)


def _write(chunks: Iterator[Any], fmt: str, path: Path) -> None:
    """Frames written one after the other into one CSV (one header) or Parquet file (a row
    group each), never concatenated in memory."""
    if fmt == "csv":
        for i, chunk in enumerate(chunks):
            chunk.to_csv(path, index=False, mode="w" if i == 0 else "a", header=i == 0)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    try:
        for chunk in chunks:
            t = pa.Table.from_pandas(chunk, preserve_index=False, schema=writer and writer.schema)
            writer = writer or pq.ParquetWriter(path, t.schema)
            writer.write_table(t)
    finally:
        if writer is not None:
            writer.close()


def _track(db: str | None, experiment: str | None, table: list[str] | None,
           tensorboard: Path | None, mlflow: str | None) -> None:  # fmt: skip
    """--tensorboard / --mlflow: every run of the experiment (or of every experiment)."""
    from fedbench import tracking

    if table:
        raise CommandError("--tensorboard and --mlflow export runs' metrics: give no --table")
    try:
        for line in tracking.export(open_store(db), experiment, tensorboard, mlflow):
            console.print(line, highlight=False, markup=False, soft_wrap=True)
    except tracking.TrackingError as e:
        raise CommandError(str(e)) from None
