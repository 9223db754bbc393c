"""`fedbench export --tensorboard / --mlflow` (issue 27): every run's metrics, read back with
the libraries' own readers (TensorBoard's EventAccumulator, MlflowClient on a file store),
offline, from a database made by running a 2-job grid."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from fedbench.api import run_grid
from fedbench.cli import app

pytest.importorskip("tensorboard", reason="the tensorboard extra (in dev) is not installed")
pytest.importorskip("mlflow", reason="the mlflow extra (in dev) is not installed")


def fedbench(*args: str | Path) -> tuple[int, str]:
    out = CliRunner().invoke(app, [str(a) for a in args])
    return out.exit_code, out.output


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, pd.DataFrame]:
    where = tmp_path_factory.mktemp("tracking")
    frame = run_grid(
        {
            "experiment": {"name": "track", "rounds": 2, "eval_every": 1},
            "task": {"dataset": "digits", "clients": 4},
            "grid": {"algorithm.name": ["fedavg", "ef21"]},
        },
        db=str(where / "r.db"),
    )
    return str(where / "r.db"), frame


def _runs(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {str(k): r.sort_values("round") for k, r in frame.groupby("key")}


def test_tensorboard_scalars_per_round_and_per_uplink_bit(db, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path, frame = db
    code, out = fedbench("export", "--db", path, "--tensorboard", tmp_path / "tb")
    assert code == 0, out
    runs = _runs(frame)
    folders = sorted((tmp_path / "tb" / "track").iterdir())
    assert len(folders) == 2 and len(out.strip().splitlines()) == 2
    metrics = frame.attrs["metrics"]
    for folder in folders:
        key = folder.name.rsplit("-", 1)[1]
        run = runs[key]
        assert folder.name == f"{run['algorithm'].iloc[0]}-identity-seed0-{key}"
        acc = EventAccumulator(str(folder))
        acc.Reload()
        tags = set(acc.Tags()["scalars"])
        logged = [m for m in metrics if run[m].notna().any()]
        assert tags == set(logged) | {f"by_uplink_bits/{m}" for m in logged if m != "bits_up"}
        for m in ("test_accuracy", "train_loss", "bits_up"):
            events = acc.Scalars(m)
            assert [e.step for e in events] == [0, 1, 2]
            assert [e.value for e in events] == pytest.approx(list(run[m]), rel=1e-6)
        by_bits = acc.Scalars("by_uplink_bits/test_accuracy")
        assert [e.step for e in by_bits] == [int(b) for b in run["bits_up"]]
        assert by_bits[-1].step > by_bits[0].step == 0  # cumulative uplink bits
        assert [e.value for e in by_bits] == pytest.approx(list(run["test_accuracy"]), rel=1e-6)
    # exporting again replaces the event files: no doubled curves
    code, out = fedbench("export", "--db", path, "--tensorboard", tmp_path / "tb")
    assert code == 0, out
    for folder in folders:
        assert len(list(folder.glob("events.out.tfevents.*"))) == 1
        acc = EventAccumulator(str(folder))
        acc.Reload()
        assert len(acc.Scalars("test_accuracy")) == 3


def test_mlflow_runs_with_config_params_and_metrics_per_round(
    db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps file stores opt-in
    path, frame = db
    uri = (tmp_path / "mlruns").as_uri()
    code, out = fedbench("export", "--db", path, "--mlflow", uri)
    assert code == 0, out
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("track")
    assert exp is not None
    found = client.search_runs([exp.experiment_id])
    runs = _runs(frame)
    assert sorted(r.data.tags["fedbench.key"] for r in found) == sorted(runs)
    for r in found:
        run = runs[r.data.tags["fedbench.key"]]
        first = run.iloc[0]
        assert r.info.status == "FINISHED" and r.data.tags["fedbench.status"] == "done"
        assert r.info.run_name == f"{first['algorithm']}-identity-seed0-{first['key']}"
        params = r.data.params
        assert params["algorithm.name"] == first["algorithm"]
        assert params["task.clients"] == "4" and params["experiment.rounds"] == "2"
        if first["algorithm"] == "fedavg":
            assert float(params["algorithm.lr"]) == first["algorithm.lr"]
        for m in ("test_accuracy", "bits_up", "train_loss"):
            history = sorted(client.get_metric_history(r.info.run_id, m), key=lambda h: h.step)
            assert [h.step for h in history] == [0, 1, 2]
            assert [h.value for h in history] == pytest.approx(list(run[m]), rel=1e-12)
        local = client.get_metric_history(r.info.run_id, "local_loss")  # not logged at round 0
        assert sorted(h.step for h in local) == [1, 2]
        assert all(math.isfinite(h.value) for h in local)
    # exporting again keeps the runs (same rounds and status): no duplicates
    code, out = fedbench("export", "--db", path, "--mlflow", uri, "--experiment", "track")
    assert code == 0, out
    assert out.count("kept mlflow run") == 2
    assert len(client.search_runs([exp.experiment_id])) == 2


@pytest.mark.parametrize(
    ("option", "value", "extra"),
    [
        ("--tensorboard", "tb", "fedbench[tensorboard]"),
        ("--mlflow", "file:./m", "fedbench[mlflow]"),
    ],
)
def test_missing_library_is_one_line_naming_the_extra(
    db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, option: str, value: str, extra: str
) -> None:
    real = importlib.util.find_spec
    missing = option.removeprefix("--")
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == missing else real(name, *a)
    )
    monkeypatch.chdir(tmp_path)
    code, out = fedbench("export", "--db", db[0], option, value)
    assert code == 2
    assert len(out.strip().splitlines()) == 1 and extra in out, out
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_tracking_refuses_table_and_unknown_experiment(db, tmp_path: Path) -> None:
    code, out = fedbench("export", "--db", db[0], "--tensorboard", tmp_path, "--table", "runs")
    assert code == 2 and "give no --table" in out
    code, out = fedbench("export", "--db", db[0], "--tensorboard", tmp_path, "-e", "nope")
    assert code == 2 and len(out.strip().splitlines()) == 1, out
