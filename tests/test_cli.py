"""The command line end to end (DESIGN §7) and the runner's fault behaviour (DESIGN §6, §9).

Every test drives `fedbench.cli.app` in-process through Typer's CliRunner against a database
in a temporary directory, on tiny real grids (digits or synthetic data, a handful of clients,
a few rounds).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from fedbench import grid as gridlib
from fedbench import report as rep
from fedbench import runner
from fedbench.algorithms import ALGORITHMS
from fedbench.cli import app
from fedbench.compressors import COMPRESSORS
from fedbench.data import DATASETS, PARTITIONS
from fedbench.models import MODELS
from fedbench.store import Store

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = 5
EVAL_EVERY = 2
EVAL_ROUNDS = {0, 2, 4, 5}  # every eval_every rounds, the initial model and the last round

TINY = f"""
[experiment]
name = "tiny"
seeds = [0, 1]
rounds = {ROUNDS}
eval_every = {EVAL_EVERY}

[task]
dataset = "digits"
model = "logreg"
clients = 5

[algorithm]
lr = 0.1
local_steps = 2
batch_size = 16

[compressor]
ratio = 0.1

[grid]
"algorithm.name" = ["fedavg", "scaffold"]
"compressor.name" = ["identity", "topk"]
"""

BAD_GRIDS = {
    "invalid-toml": "[experiment\nname = 1\n",
    "unknown-section": "[foo]\na = 1\n",
    "unknown-field": "[algorithm]\nlrr = 0.1\n",
    "bad-type": '[algorithm]\nlr = "fast"\n',
    "out-of-range": "[algorithm]\nlr = -1\n[task]\nclients = 0\n",
    "unknown-algorithm": '[algorithm]\nname = "fedsgd"\n',
    "ef21-unbiased": '[algorithm]\nname = "ef21"\n[grid]\n"compressor.name" = ["topk", "qsgd"]\n',
    "bad-seeds": "[experiment]\nseeds = []\n",
    "axis-not-list": '[grid]\n"algorithm.lr" = 0.1\n',
    "data": '[task]\ndataset = "digits"\nclients = 5000\n',  # found by loading the data
}


def invoke(*args: object) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def words(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


def write(tmp: Path, text: str, name: str = "grid.toml") -> Path:
    path = tmp / name
    path.write_text(text, encoding="utf-8")
    return path


def runs(db: Path, **kw: Any) -> pd.DataFrame:
    with Store(str(db)) as s:
        return s.runs_frame(**kw)


def metrics(db: Path, run_ids: list[int] | None = None) -> pd.DataFrame:
    with Store(str(db)) as s:
        ids = list(s.runs_frame()["run_id"]) if run_ids is None else run_ids
        return s.metrics_frame([int(i) for i in ids])


def run_metrics(db: Path, key: str) -> dict[tuple[int, str], float]:
    """(round, name) -> value of one run, wall-clock time left out."""
    with Store(str(db)) as s:
        rid = s.get_run(key)["id"]
        m = s.metrics_frame([rid])
    return {
        (int(r), str(n)): float(v)
        for r, n, v in zip(m["round"], m["name"], m["value"], strict=True)
        if n != "wall_s"
    }


def assert_same_numbers(a: dict[tuple[int, str], float], b: dict[tuple[int, str], float]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), k


def assert_clean_error(result: Any) -> list[str]:
    """Exit status 2, one `error:` line per problem on stderr, no traceback."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert lines
    assert all(x.startswith("error: ") for x in lines), lines
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    return lines


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Any]:
    """The tiny grid run once: (grid path, database path, result of `fedbench run`)."""
    tmp = tmp_path_factory.mktemp("tiny")
    grid_path, db = write(tmp, TINY), tmp / "tiny.db"
    result = invoke("run", grid_path, "--db", db)
    return grid_path, db, result


def fail_in_round(
    monkeypatch: pytest.MonkeyPatch, victim: gridlib.Job, error: BaseException, at: int = 3
) -> None:
    """Make `victim`'s algorithm raise `error` in round `at` (other jobs run normally)."""
    original = runner.build

    def build(job: gridlib.Job, device: Any) -> Any:
        task, env, alg = original(job, device)
        if job.key != victim.key:
            return task, env, alg
        calls = 0

        def round_(*args: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == at:
                raise error
            return alg.round(*args)

        return task, env, alg._replace(round=round_)

    monkeypatch.setattr(runner, "build", build)


def fail_to_build(monkeypatch: pytest.MonkeyPatch, victim_key: str, error: BaseException) -> None:
    """Make building the job `victim_key` raise `error`."""
    original = runner.build

    def build(job: gridlib.Job, device: Any) -> Any:
        if job.key == victim_key:
            raise error
        return original(job, device)

    monkeypatch.setattr(runner, "build", build)


# -- run ----------------------------------------------------------------------------------------


def test_run_tiny_grid(tiny: tuple[Path, Path, Any]) -> None:
    grid_path, db, result = tiny
    assert result.exit_code == 0, result.output
    out = words(result.output)
    assert "tiny: 8 jobs, 8 to run" in out
    assert "8 done, 0 failed, 0 diverged" in out
    g = gridlib.load(grid_path)
    frame = runs(db)
    assert sorted(frame["key"]) == sorted(j.key for j in g.jobs)
    assert set(frame["status"]) == {"done"}
    assert set(frame["experiment"]) == {"tiny"}
    assert (frame["rounds_logged"] == ROUNDS).all()
    assert frame["error"].isna().all()
    m = metrics(db)
    for job in g.jobs:
        rid = int(frame.loc[frame["key"] == job.key, "run_id"].iloc[0])
        mine = m[m["run_id"] == rid]
        wide = mine.pivot(index="round", columns="name", values="value")
        assert list(wide.index) == list(range(ROUNDS + 1))
        for name in ("bits_up", "bits_down", "wall_s"):
            assert wide[name].notna().all(), name
            assert wide[name].is_monotonic_increasing, name
        for name in ("train_loss", "test_loss", "test_accuracy"):
            assert set(wide.index[wide[name].notna()]) == EVAL_ROUNDS, name
        assert (wide["test_accuracy"].dropna().between(0, 1)).all()
        assert wide.loc[0, "bits_up"] == 0 and wide.loc[0, "bits_down"] == 0
        assert (wide.loc[1:, "participants"] == 5).all()
        # bits are exact (DESIGN §5): identity sends 32·d per participating client per round
        d = runner.build(job, runner.resolve_device("cpu"))[0].d
        per_round = wide["bits_up"].diff().iloc[1:]
        down = wide["bits_down"].diff().iloc[1:]
        # SCAFFOLD sends two messages each way (README: Δy and Δc up, x and c down)
        messages = 2 if job.algorithm == "scaffold" else 1
        assert (down == messages * 5 * 32 * d).all()
        if job.compressor == "identity":
            assert (per_round == messages * 5 * 32 * d).all()
        else:
            assert (per_round > 0).all() and (per_round < messages * 5 * 32 * d).all()


def test_second_run_runs_nothing(tiny: tuple[Path, Path, Any]) -> None:
    grid_path, db, _ = tiny
    before_runs, before_metrics = runs(db), metrics(db)
    result = invoke("run", grid_path, "--db", db)
    assert result.exit_code == 0, result.output
    out = words(result.output)
    assert "8 jobs, 0 to run (8 done)" in out
    assert "ran 0 jobs" in out
    after_runs, after_metrics = runs(db), metrics(db)
    assert len(after_metrics) == len(before_metrics)
    assert not after_metrics.duplicated(["run_id", "round", "name"]).any()
    cols = ["key", "status", "started_at", "finished_at"]
    pd.testing.assert_frame_equal(after_runs[cols], before_runs[cols])


def dry_run_actions(output: str, keys: list[str]) -> dict[str, str]:
    """key -> the action column ("run" | "skip") of `run --dry-run`'s table."""
    rows = {k: line for line in output.splitlines() for k in keys if k in line}
    return {k: line.split("│")[-2].strip() for k, line in rows.items()}


def test_dry_run(tiny: tuple[Path, Path, Any], tmp_path: Path) -> None:
    grid_path, done_db, _ = tiny
    keys = [j.key for j in gridlib.load(grid_path).jobs]
    db = tmp_path / "dry.db"
    result = invoke("run", grid_path, "--db", db, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "8 of 8 jobs would run" in words(result.output)
    assert dry_run_actions(result.output, keys) == dict.fromkeys(keys, "run")
    # nothing ran and nothing was written: not even the database file
    assert not db.exists()
    # on a finished database every job is skipped and nothing changes
    before = runs(done_db)
    n = len(metrics(done_db))
    result = invoke("run", grid_path, "--db", done_db, "--dry-run")
    assert result.exit_code == 0
    assert "0 of 8 jobs would run" in words(result.output)
    assert dry_run_actions(result.output, keys) == dict.fromkeys(keys, "skip")
    assert len(metrics(done_db)) == n
    pd.testing.assert_frame_equal(runs(done_db), before)


def test_only_runs_matching_jobs_then_the_rest(tmp_path: Path) -> None:
    grid_path, db = write(tmp_path, TINY), tmp_path / "only.db"
    result = invoke("run", grid_path, "--db", db, "--only", "algorithm.name=fedavg")
    assert result.exit_code == 0, result.output
    assert "4 jobs, 4 to run" in words(result.output)
    frame = runs(db)
    assert len(frame) == 4 and set(frame["algorithm"]) == {"fedavg"}
    assert set(frame["status"]) == {"done"}
    result = invoke(
        "run",
        grid_path,
        "--db",
        db,
        "--only",
        "algorithm.name=scaffold",
        "--only",
        "compressor.name=topk",
        "--only",
        "experiment.seed=1",
    )
    assert result.exit_code == 0, result.output
    assert "1 jobs, 1 to run" in words(result.output)
    result = invoke("run", grid_path, "--db", db)
    assert "8 jobs, 3 to run (5 done)" in words(result.output)
    assert set(runs(db)["status"]) == {"done"}


def test_only_errors(tiny: tuple[Path, Path, Any]) -> None:
    grid_path, db, _ = tiny
    (line,) = assert_clean_error(invoke("run", grid_path, "--db", db, "--only", "algorithm.name"))
    assert "section.field=value" in line
    (line,) = assert_clean_error(
        invoke("run", grid_path, "--db", db, "--only", "algorithm.name=fedsgd")
    )
    assert "no job matches" in line


def test_crashed_run_is_rerun_from_round_zero(tiny: tuple[Path, Path, Any], tmp_path: Path) -> None:
    """A run left `running` with partial rows (the process died) is re-run from round 0 with
    no stale or doubled rows, and gives the same numbers as an uninterrupted run."""
    grid_path, ref_db, _ = tiny
    db = tmp_path / "crash.db"
    g = gridlib.load(grid_path)
    victim = g.jobs[3]
    with Store(str(db)) as s:  # what `fedbench run` does before running, then a crash
        exp = s.upsert_experiment(g.name, str(grid_path), g.text)
        s.ensure_runs(exp, [runner.run_spec(j) for j in g.jobs])
        rid = s.start_run(victim.key, "dead-host", "cpu")
        for t in range(3):
            s.log_round(rid, t, {"bits_up": 1e12 + t, "train_loss": 99.0, "stale_marker": 1.0})
    assert runs(db).set_index("key").loc[victim.key, "status"] == "running"

    result = invoke("run", grid_path, "--db", db)
    assert result.exit_code == 0, result.output
    assert "8 jobs, 8 to run" in words(result.output)
    frame = runs(db).set_index("key")
    assert set(frame["status"]) == {"done"}
    assert frame.loc[victim.key, "host"] != "dead-host"
    m = metrics(db, [rid])
    assert "stale_marker" not in set(m["name"])
    assert not m.duplicated(["round", "name"]).any()
    assert sorted(set(m["round"])) == list(range(ROUNDS + 1))
    assert_same_numbers(run_metrics(db, victim.key), run_metrics(ref_db, victim.key))


def test_keyboard_interrupt_leaves_the_run_pending(
    tiny: tuple[Path, Path, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    grid_path, ref_db, _ = tiny
    db = tmp_path / "ctrl-c.db"
    g = gridlib.load(grid_path)
    victim = g.jobs[2]
    with monkeypatch.context() as m:
        fail_in_round(m, victim, KeyboardInterrupt())
        result = invoke("run", grid_path, "--db", db)
    assert result.exit_code == 130
    assert "interrupted" in result.output
    assert "Traceback" not in result.output
    frame = runs(db).set_index("key")
    assert frame.loc[victim.key, "status"] == "pending"
    assert frame.loc[victim.key, "rounds_logged"] == 2  # rounds 0..2 were committed
    assert set(frame.loc[[j.key for j in g.jobs[:2]], "status"]) == {"done"}
    result = invoke("run", grid_path, "--db", db)
    assert result.exit_code == 0, result.output
    assert "8 jobs, 6 to run (2 done)" in words(result.output)
    assert set(runs(db)["status"]) == {"done"}
    assert_same_numbers(run_metrics(db, victim.key), run_metrics(ref_db, victim.key))


def test_failing_job_is_recorded_and_the_grid_goes_on(
    tiny: tuple[Path, Path, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    grid_path, ref_db, _ = tiny
    db = tmp_path / "fail.db"
    g = gridlib.load(grid_path)
    victim = next(j for j in g.jobs if j.algorithm == "scaffold" and j.compressor == "topk")
    with monkeypatch.context() as m:
        fail_in_round(m, victim, RuntimeError("injected failure in round 3"))
        result = invoke("run", grid_path, "--db", db)
    assert result.exit_code == 1, result.output  # a failed job: exit 1 (issue 23)
    out = words(result.output)
    assert "7 done, 1 failed, 0 diverged" in out
    assert "injected failure in round 3" in out
    frame = runs(db).set_index("key")
    assert frame.loc[victim.key, "status"] == "failed"
    assert "RuntimeError: injected failure in round 3" in frame.loc[victim.key, "error"]
    assert frame.loc[victim.key, "rounds_logged"] == 2  # the rounds before the failure stay
    assert set(frame.drop(index=victim.key)["status"]) == {"done"}

    result = invoke("ls", "--db", db, "--status", "failed", "--format", "json")
    assert result.exit_code == 0
    listed = json.loads(result.stdout)
    assert [(r["key"], r["status"]) for r in listed] == [(victim.key, "failed")]
    result = invoke("show", victim.key[:8], "--db", db, "--format", "json")
    assert "injected failure in round 3" in json.loads(result.stdout)["run"]["error"]

    # failed jobs are not retried unless asked
    result = invoke("run", grid_path, "--db", db)
    assert "8 jobs, 0 to run (7 done, 1 failed: --rerun-failed runs them again)" in words(
        result.output
    )
    assert runs(db).set_index("key").loc[victim.key, "status"] == "failed"
    result = invoke("run", grid_path, "--db", db, "--rerun-failed")
    assert result.exit_code == 0, result.output
    assert "8 jobs, 1 to run (7 done)" in words(result.output)
    frame = runs(db).set_index("key")
    assert set(frame["status"]) == {"done"}
    assert frame["error"].isna().all()
    assert_same_numbers(run_metrics(db, victim.key), run_metrics(ref_db, victim.key))


SYNTHETIC = """
[experiment]
name = "synth"
seeds = 2
rounds = 3
eval_every = 1

[task]
dataset = "synthetic"
model = "mlp"
hidden = [8]
clients = 4
dim = 10
max_samples = 40

[algorithm]
lr = 0.05
local_steps = 2

[grid]
"algorithm.name" = ["fedavg", "fedprox"]
"""


def test_build_error_fails_only_that_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    grid_path, db = write(tmp_path, SYNTHETIC), tmp_path / "build.db"
    victim = next(
        j for j in gridlib.load(grid_path).jobs if j.algorithm == "fedprox" and j.seed == 1
    )
    fail_to_build(monkeypatch, victim.key, ValueError("cannot build this one"))
    result = invoke("run", grid_path, "--db", db)
    assert result.exit_code == 1, result.output  # a failed job: exit 1 (issue 23)
    assert "3 done, 1 failed" in words(result.output)
    frame = runs(db)
    bad = (frame["algorithm"] == "fedprox") & (frame["seed"] == 1)
    assert bad.sum() == 1 and set(frame.loc[bad, "status"]) == {"failed"}
    assert "ValueError: cannot build this one" in frame.loc[bad, "error"].iloc[0]
    assert frame.loc[bad, "rounds_logged"].isna().all()  # nothing was written for it
    assert set(frame.loc[~bad, "status"]) == {"done"}
    assert set(frame["task.partition"]) == {"natural"}
    assert (frame.loc[~bad, "rounds_logged"] == 3).all()


DIVERGING = """
[experiment]
name = "boom"
rounds = 6
eval_every = 2

[task]
dataset = "digits"
model = "logreg"
clients = 4
reg = "l2"
lam = 0.1

[algorithm]
lr = 1e30
local_steps = 2
"""


def test_divergence_stops_the_run(tmp_path: Path) -> None:
    grid_path, db = write(tmp_path, DIVERGING), tmp_path / "boom.db"
    result = invoke("run", grid_path, "--db", db)
    assert result.exit_code == 0, result.output
    assert "1 diverged" in words(result.output)
    (row,) = runs(db).to_dict("records")
    assert row["status"] == "diverged"
    assert "non-finite" in row["error"]
    assert row["rounds_logged"] < 6  # stopped early
    m = metrics(db)
    assert m["round"].max() == row["rounds_logged"]
    # a diverged run is final: running again runs nothing
    result = invoke("run", grid_path, "--db", db)
    assert "1 jobs, 0 to run (1 diverged)" in words(result.output)


# -- report, ls, show, export -----------------------------------------------------------------


def test_report_table_and_plot(tiny: tuple[Path, Path, Any], tmp_path: Path) -> None:
    _, db, _ = tiny
    png = tmp_path / "plots" / "bits.png"
    result = invoke(
        "report",
        "--db",
        db,
        "--experiment",
        "tiny",
        "--plot",
        "bits-vs-accuracy",
        "--out",
        png,
        "--target-accuracy",
        "0.5",
    )
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    labels = set(rep.config_labels(runs(db, experiment="tiny")))
    assert len(labels) == 4
    for label in labels:
        assert label in result.stdout, label
    assert "wrote" in result.stdout


def test_report_json_is_machine_readable(tiny: tuple[Path, Path, Any], tmp_path: Path) -> None:
    _, db, _ = tiny
    png = tmp_path / "rounds.png"
    result = invoke(
        "report",
        "--db",
        db,
        "--experiment",
        "tiny",
        "--format",
        "json",
        "--plot",
        "rounds-vs-accuracy",
        "--out",
        png,
    )
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert {r["label"] for r in rows} == set(rep.config_labels(runs(db, experiment="tiny")))
    assert all(r["seeds"] == 2 for r in rows)
    assert all(0 <= r["final_accuracy_mean"] <= 1 for r in rows)
    assert png.stat().st_size > 0
    assert "wrote" in result.stderr


def test_report_errors(tiny: tuple[Path, Path, Any], tmp_path: Path) -> None:
    _, db, _ = tiny
    (line,) = assert_clean_error(invoke("report", "--db", db, "--experiment", "nope"))
    assert "nope" in line and "tiny" in line
    (line,) = assert_clean_error(invoke("report", "--db", tmp_path / "empty.db"))
    assert "no experiments" in line


def test_ls(tiny: tuple[Path, Path, Any]) -> None:
    grid_path, db, _ = tiny
    result = invoke("ls", "--db", db, "--format", "json")
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert sorted(r["key"] for r in rows) == sorted(j.key for j in gridlib.load(grid_path).jobs)
    assert {r["status"] for r in rows} == {"done"}
    assert {r["rounds"] for r in rows} == {ROUNDS}
    assert all(0 <= float(r["test_accuracy"]) <= 1 for r in rows)
    result = invoke("ls", "--db", db, "--experiments", "--format", "json")
    (exp,) = json.loads(result.stdout)
    assert (exp["name"], exp["runs"], exp["done"], exp["failed"]) == ("tiny", 8, 8, 0)
    result = invoke("ls", "--db", db, "--experiments")
    assert result.exit_code == 0 and "tiny" in result.stdout
    result = invoke("ls", "--db", db, "--status", "failed", "--format", "json")
    assert json.loads(result.stdout) == []
    (line,) = assert_clean_error(invoke("ls", "--db", db, "--status", "bogus"))
    assert "pending" in line and "diverged" in line


def test_show_round_trips_the_config(tiny: tuple[Path, Path, Any]) -> None:
    grid_path, db, _ = tiny
    job = gridlib.load(grid_path).jobs[5]
    result = invoke("show", job.key[:8], "--db", db, "--format", "json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["run"]["key"] == job.key
    assert shown["run"]["status"] == "done"
    assert shown["run"]["config"] == gridlib.run_config(job)
    final = {m["metric"]: m for m in shown["metrics"]}
    assert final["test_accuracy"]["round"] == ROUNDS
    assert final["bits_up"]["final"] == final["bits_up"]["max"]
    result = invoke("show", job.key[:8], "--db", db)
    assert result.exit_code == 0 and job.key in result.stdout
    assert_clean_error(invoke("show", "ffffffffff", "--db", db))


def test_export_writes_three_csvs(tiny: tuple[Path, Path, Any], tmp_path: Path) -> None:
    _, db, _ = tiny
    out = tmp_path / "export"
    result = invoke("export", out, "--db", db)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["experiments.csv", "metrics.csv", "runs.csv"]
    (exp,) = pd.read_csv(out / "experiments.csv").to_dict("records")
    assert exp["name"] == "tiny" and exp["grid_toml"] == TINY  # the grid as it was run
    exported = pd.read_csv(out / "runs.csv")
    assert len(exported) == 8
    assert all(isinstance(json.loads(c), dict) for c in exported["config"])
    assert len(pd.read_csv(out / "metrics.csv")) == len(metrics(db))
    assert_clean_error(invoke("export", out, "--db", db, "--table", "bogus"))
    assert_clean_error(invoke("export", out, "--db", db, "--format", "xlsx"))


def test_export_parquet_round_trips_the_tables(
    tiny: tuple[Path, Path, Any], tmp_path: Path
) -> None:
    _, db, _ = tiny
    out = tmp_path / "pq"
    result = invoke("export", out, "--db", db, "--format", "parquet")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "experiments.parquet",
        "metrics.parquet",
        "runs.parquet",
    ]
    m = pd.read_parquet(out / "metrics.parquet")
    pd.testing.assert_frame_equal(
        m.reset_index(drop=True), metrics(db).reset_index(drop=True), check_dtype=False
    )
    assert len(pd.read_parquet(out / "runs.parquet")) == 8


# -- validate and bad grids ---------------------------------------------------------------------


def test_validate_quickstart() -> None:
    path = ROOT / "experiments" / "quickstart.toml"
    result = invoke("validate", path)
    assert result.exit_code == 0, result.output
    out = words(result.output)
    assert "12 jobs = 6 configurations" in out
    assert "is valid" in out
    result = invoke("validate", path, "--format", "json")
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert (doc["jobs"], doc["configurations"], doc["seeds"]) == (12, 6, [0, 1])
    keys = [j.key for j in gridlib.load(path).jobs]
    assert [j["key"] for j in doc["job_list"]] == keys
    assert doc["ignored"]["compressor.ratio"] == ["identity"]


@pytest.mark.parametrize("name", list(BAD_GRIDS))
def test_bad_grid_is_refused_cleanly(name: str, tmp_path: Path) -> None:
    path = write(tmp_path, BAD_GRIDS[name], f"{name}.toml")
    lines = assert_clean_error(invoke("validate", path))
    if name != "data":  # the data problem is found by loading, after the grid parses
        with pytest.raises(gridlib.GridError) as e:
            gridlib.load(path)
        assert len(lines) == len(e.value.problems)
    assert all(str(path) in x for x in lines)
    # run refuses it before touching the database
    db = tmp_path / "never.db"
    assert_clean_error(invoke("run", path, "--db", db))
    assert not db.exists() or runs(db).empty


def test_missing_grid_file(tmp_path: Path) -> None:
    (line,) = assert_clean_error(invoke("validate", tmp_path / "nope.toml"))
    assert "nope.toml" in line and "cannot read" in line


def test_error_lines_keep_section_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    example = readme.split("$ fedbench run bad.toml\n", 1)[1].splitlines()[0]
    assert example.startswith("error: bad.toml: [algorithm]")
    write(tmp_path, '[algorithm]\nname = "ef21"\nlr = -0.1\n', "bad.toml")  # the README's
    assert assert_clean_error(invoke("run", "bad.toml")) == [example]
    write(tmp_path, '[[variant]]\n"algorithm.lr" = -2\n', "bad.toml")
    (line,) = assert_clean_error(invoke("validate", "bad.toml"))
    assert "[[variant]] 1 algorithm.lr = -2" in line


def test_markup_like_grid_value_is_a_clean_error(tmp_path: Path) -> None:
    path = write(tmp_path, '[algorithm]\nname = "[/b]"\n')
    (line,) = assert_clean_error(invoke("validate", path))
    assert "[/b]" in line


def test_job_error_with_brackets_does_not_stop_the_grid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    grid_path, db = write(tmp_path, TINY), tmp_path / "brackets.db"
    victim = gridlib.load(grid_path).jobs[0]
    fail_to_build(monkeypatch, victim.key, RuntimeError("index [/3] out of range"))
    result = invoke("run", grid_path, "--db", db)
    assert result.exit_code == 1, repr(result.exception)  # a failed job: exit 1 (issue 23)
    frame = runs(db).set_index("key")
    assert frame.loc[victim.key, "status"] == "failed"
    assert set(frame.drop(index=victim.key)["status"]) == {"done"}


def test_experiment_name_cannot_be_an_axis(tmp_path: Path) -> None:
    text = (
        '[experiment]\nrounds = 1\n[task]\nmodel = "logreg"\nclients = 3\n'
        '[grid]\n"experiment.name" = ["a", "b"]\n'
    )
    path, db = write(tmp_path, text), tmp_path / "names.db"
    (line,) = assert_clean_error(invoke("run", path, "--db", db))
    assert "[grid] experiment.name" in line and "one grid file is one experiment" in line
    assert not db.exists() or runs(db).empty


# -- catalog, help ------------------------------------------------------------------------------


def test_algorithms_json() -> None:
    result = invoke("algorithms", "--format", "json")
    assert result.exit_code == 0
    algs = {a["name"]: a for a in json.loads(result.stdout)["algorithms"]}
    assert {"fedavg", "fedprox", "scaffold", "ef21"} <= set(algs)
    assert set(algs) == set(ALGORITHMS)
    assert algs["ef21"]["requires"] == "contractive"
    assert algs["fedavg"]["requires"] == "any"
    assert "mu" in algs["fedprox"]["params"] and "lr" in algs["ef21"]["params"]
    for a in algs.values():
        assert a["paper"] and a["summary"]
        for p in a["params"].values():
            assert {"default", "help", "allowed"} <= set(p)
    assert algs["fedprox"]["params"]["mu"]["default"] == ALGORITHMS["fedprox"].params["mu"].default
    result = invoke("algorithms")
    assert result.exit_code == 0
    assert all(name in result.stdout for name in ALGORITHMS)


def test_compressors_json() -> None:
    result = invoke("compressors", "--format", "json")
    assert result.exit_code == 0
    comps = {c["name"]: c for c in json.loads(result.stdout)["compressors"]}
    assert set(comps) == set(COMPRESSORS)
    assert comps["identity"]["kind"] == "exact"
    assert comps["topk"]["kind"] == "contractive" and "ratio" in comps["topk"]["params"]
    assert comps["qsgd"]["kind"] == "unbiased" and "levels" in comps["qsgd"]["params"]
    assert "unbiased" in comps["randk"]["params"]


def test_datasets_json() -> None:
    result = invoke("datasets", "--format", "json")
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert {x["name"] for x in doc["datasets"]} == set(DATASETS)
    assert {x["name"] for x in doc["partitions"]} == set(PARTITIONS)
    assert {x["name"] for x in doc["models"]} == set(MODELS)
    assert {"digits", "synthetic"} <= set(DATASETS)
    assert {"iid", "dirichlet", "natural"} <= set(PARTITIONS)
    models = {x["name"]: x for x in doc["models"]}
    assert "hidden" in models["mlp"]["params"]
    (line,) = assert_clean_error(invoke("datasets", "--format", "xml"))
    assert "json" in line


COMMANDS = [c.name for c in app.registered_commands]


def test_every_contract_command_is_registered() -> None:
    assert {
        "run",
        "report",
        "ls",
        "show",
        "validate",
        "algorithms",
        "compressors",
        "datasets",
        "export",
    } <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0, result.output
    assert "Example:" in result.output
    assert f"fedbench {command}" in result.output


def test_python_dash_m_fedbench() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fedbench", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        },
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert all(c in proc.stdout for c in COMMANDS)


def test_grad_norm_is_logged_at_evaluations_and_leaves_other_keys_alone(tmp_path: Path) -> None:
    text = TINY.replace("eval_every = 2", "eval_every = 2\ngrad_norm = true")
    grid_path, db = write(tmp_path, text), tmp_path / "g.db"
    assert invoke("run", grid_path, "--db", db, "--only", "algorithm.name=fedavg").exit_code == 0
    m = metrics(db)
    g = m[m["name"] == "grad_norm_sq"]
    assert set(g["round"]) == EVAL_ROUNDS and (g["value"] > 0).all()
    # a field added later is left out of the key while it holds its default
    keys_with = {j.key for j in gridlib.parse(text, Path("g.toml")).jobs}
    keys_default = {j.key for j in gridlib.parse(TINY, Path("g.toml")).jobs}
    keys_explicit = {
        j.key
        for j in gridlib.parse(TINY + '\n"experiment.grad_norm" = [false]\n', Path("g.toml")).jobs
    }
    assert keys_with.isdisjoint(keys_default) and keys_explicit == keys_default


@pytest.mark.parametrize(
    ("values", "finite"),
    [
        ([0.0, -1.5, 3e38], True),  # large but finite
        ([1.0, math.nan, 2.0], False),
        ([math.inf, 0.0], False),
        ([0.0, -math.inf], False),
        ([math.nan, math.inf], False),
    ],
)
def test_divergence_check_flags_exactly_nan_and_inf(values: list[float], finite: bool) -> None:
    from fedbench.runner import all_finite

    x = torch.tensor(values)
    assert all_finite(x) is finite is bool(torch.isfinite(x).all())
