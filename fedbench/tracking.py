"""Experiment tracking: every run's metrics as TensorBoard scalars or MLflow runs
(`fedbench export --tensorboard DIR`, `--mlflow URI`), for teams whose dashboards live there.

The source is the same tidy frame the report and `export --experiment` use (one row per run ×
round, fedbench.report.tidy), so the three views agree. Choices:
- TensorBoard: one subdirectory per run, `EXPERIMENT/ALGORITHM-COMPRESSOR-seedS-KEY` (made
  filesystem-safe; the key keeps it unique), each metric a scalar tag with step = round, and
  every metric again under `by_uplink_bits/` with step = the run's cumulative uplink bits (all
  clients), the x axis of the benchmark's bits-vs-accuracy plots. Wall times are the run's
  start plus its logged wall-clock seconds, so TensorBoard's time axis is the run's own.
  Exporting again replaces the run's event files (no doubled curves).
- MLflow: one MLflow experiment per fedbench experiment, one run per fedbench run, its
  resolved config as params ("section.field"), metrics per round (step = round), the key,
  seed and status as tags. A run already exported with the same rounds and status is skipped;
  one exported before with fewer rounds is replaced.
Both libraries are optional extras; a missing one is a one-line error naming the extra.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from fedbench.store import Store

BY_BITS = "by_uplink_bits"  # the tag family whose step is the cumulative uplink bits
MLFLOW_PARAM_CHARS = 6000  # MLflow's limit on a param value
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MLFLOW_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /:]+")
_STATUS = {"done": "FINISHED", "diverged": "FINISHED", "failed": "FAILED", "running": "RUNNING"}


class TrackingError(ValueError):
    """An export that cannot be made (a missing library, an unusable target); one line."""


def need(library: str, option: str) -> None:
    """Refuse, in one line naming the extra, when `library` is not installed."""
    import importlib.util

    module = {"tensorboard": "tensorboard", "mlflow": "mlflow"}[library]
    if importlib.util.find_spec(module) is None:
        package = "mlflow-skinny" if library == "mlflow" else library
        raise TrackingError(
            f"{option} needs {package}: pip install 'fedbench[{library}]' (or {package})"
        )


def frames(store: Store, experiment: str | None) -> list[tuple[str, pd.DataFrame]]:
    """(experiment, tidy frame) of one experiment, or of every experiment in the database."""
    from fedbench.report import load, tidy

    names = [experiment] if experiment else sorted(store.export("experiments")["name"])
    if not names:
        raise TrackingError("the database holds no experiment; run a grid first")
    return [(name, tidy(*load(store, name))) for name in names]


def safe(text: str) -> str:
    """A file-name-safe form of a label (anything else becomes '_')."""
    return _UNSAFE.sub("_", text).strip("._") or "_"


def run_label(row: Any) -> str:
    """ALGORITHM-COMPRESSOR-seedS-KEY: readable in a run list, unique by the key."""
    return f"{row['algorithm']}-{row['compressor']}-seed{row['seed']}-{row['key']}"


def _runs(frame: pd.DataFrame) -> Iterator[pd.DataFrame]:
    """Each run's rows that hold a round (runs with no metrics yet have none)."""
    rows = frame[frame["round"].notna()]
    for _, run in rows.groupby("run_id", sort=True):
        yield run.sort_values("round", kind="stable")


def _number(v: Any) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def _start_s(row: Any) -> float:
    started = row.get("started_at")
    try:
        return float(started.timestamp())
    except (AttributeError, ValueError):  # NaT or missing: now
        return time.time()


def _walltime(row: Any, start: float) -> float:
    wall = _number(row.get("wall_s"))
    return start + (wall or 0.0)


def _config(run: pd.DataFrame) -> dict[str, Any]:
    """The run's resolved config: its non-empty "section.field" columns."""
    first = run.iloc[0]
    out = {}
    for column in run.columns:
        if "." in str(column):
            v = first[column]
            if isinstance(v, (list, tuple)) or _number(v) is not None or isinstance(v, str):
                out[str(column)] = list(v) if isinstance(v, tuple) else v
            elif isinstance(v, bool):
                out[str(column)] = v
    return out


def to_tensorboard(items: list[tuple[str, pd.DataFrame]], out: Path) -> Iterator[str]:
    """Write every run's scalars under `out`; yields one line per run written."""
    need("tensorboard", "--tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    for experiment, frame in items:
        metrics = list(frame.attrs.get("metrics", []))
        for run in _runs(frame):
            first = run.iloc[0]
            folder = out / safe(experiment) / safe(run_label(first))
            try:
                folder.mkdir(parents=True, exist_ok=True)
                for old in folder.glob("events.out.tfevents.*"):  # a re-export replaces them
                    old.unlink()
            except OSError as e:
                raise TrackingError(f"{folder}: cannot write ({e.strerror or e})") from None
            start, n = _start_s(first), 0
            writer = SummaryWriter(log_dir=str(folder), max_queue=1000, flush_secs=3600)
            try:
                config = json.dumps(_config(run), indent=1, sort_keys=True, default=str)
                writer.add_text("config", "    " + config.replace("\n", "\n    "), 0, start)
                for _, row in run.iterrows():
                    step, wall = int(row["round"]), _walltime(row, start)
                    bits = _number(row.get("bits_up"))
                    for name in metrics:
                        value = _number(row[name])
                        if value is None:
                            continue
                        writer.add_scalar(name, value, step, wall)
                        n += 1
                        if bits is not None and name != "bits_up":
                            writer.add_scalar(f"{BY_BITS}/{name}", value, int(bits), wall)
            finally:
                writer.close()
            rounds = f"rounds {int(run['round'].min())}–{int(run['round'].max())}"
            yield f"wrote {folder} ({n} scalars, {rounds})"


def _mlflow_key(text: str) -> str:
    return _MLFLOW_UNSAFE.sub("_", text)[:250]


def to_mlflow(items: list[tuple[str, pd.DataFrame]], uri: str) -> Iterator[str]:
    """Log every run to the MLflow tracking store at `uri`; yields one line per run."""
    need("mlflow", "--mlflow")
    from mlflow.entities import Metric, Param
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri=uri)
        for experiment, frame in items:
            exp = client.get_experiment_by_name(experiment)
            if exp is not None and exp.lifecycle_stage != "active":
                raise TrackingError(f"--mlflow {uri}: experiment {experiment!r} is deleted there; "
                                    "restore or purge it first")  # fmt: skip
            exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
            metrics = list(frame.attrs.get("metrics", []))
            for run in _runs(frame):
                yield _mlflow_run(client, exp_id, run, metrics, (Metric, Param))
    except MlflowException as e:
        first = str(e.message if hasattr(e, "message") else e).strip().splitlines()
        raise TrackingError(f"--mlflow {uri}: {first[0] if first else type(e).__name__}") from None


def _mlflow_run(client: Any, exp_id: str, run: pd.DataFrame, metrics: list[str],
                entities: tuple[Any, Any]) -> str:  # fmt: skip
    """Create (or keep, or replace) the MLflow run of one fedbench run."""
    Metric, Param = entities
    first = run.iloc[0]
    key, status = str(first["key"]), str(first["status"])
    rounds = str(int(run["round"].max()))
    found = client.search_runs([exp_id], f"tags.`fedbench.key` = '{key}'")
    for old in found:
        tags = old.data.tags
        if tags.get("fedbench.rounds") == rounds and tags.get("fedbench.status") == status:
            return f"kept mlflow run {old.info.run_id} ({run_label(first)}: already exported)"
    for old in found:  # exported before with fewer rounds, or another status: replaced
        client.delete_run(old.info.run_id)
    start = _start_s(first)
    tags = {
        "fedbench.key": key,
        "fedbench.status": status,
        "fedbench.rounds": rounds,
        "fedbench.seed": str(first["seed"]),
        "fedbench.experiment": str(first["experiment"]),
    }
    made = client.create_run(exp_id, start_time=int(start * 1000), tags=tags,
                             run_name=run_label(first))  # fmt: skip
    run_id = made.info.run_id
    params = [Param(_mlflow_key(k), str(v)[:MLFLOW_PARAM_CHARS]) for k, v in _config(run).items()]
    points = []
    for _, row in run.iterrows():
        ms, step = int(_walltime(row, start) * 1000), int(row["round"])
        for name in metrics:
            value = _number(row[name])
            if value is not None:
                points.append(Metric(_mlflow_key(name), value, ms, step))
    for i in range(0, len(params), 100):  # MLflow's batch limits: 100 params, 1000 metrics
        client.log_batch(run_id, params=params[i : i + 100])
    for i in range(0, len(points), 1000):
        client.log_batch(run_id, metrics=points[i : i + 1000])
    end = int(_walltime(run.iloc[-1], start) * 1000)
    client.set_terminated(run_id, status=_STATUS.get(status, "KILLED"), end_time=end)
    return f"logged mlflow run {run_id} ({run_label(first)}: {len(points)} values, {rounds} rounds)"


def export(store: Store, experiment: str | None, tensorboard: Path | None,
           mlflow: str | None) -> Iterator[str]:  # fmt: skip
    """`fedbench export --tensorboard DIR --mlflow URI`: both libraries checked first."""
    if tensorboard is not None:
        need("tensorboard", "--tensorboard")
    if mlflow is not None:
        need("mlflow", "--mlflow")
    items = frames(store, experiment)
    if tensorboard is not None:
        yield from to_tensorboard(items, tensorboard)
    if mlflow is not None:
        yield from to_mlflow(items, mlflow)
