"""CLI rough edges: did-you-mean and accurate grid messages, repeated seeds, eval_every notes,
--format csv wherever listed, `ls` at 80 columns with named units, `show` with an all-digit
key prefix, the non-terminal output of `run`, `datasets --stats` for sequence data."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from test_report_cli import build_db
from typer.testing import CliRunner

from fedbench import grid as gridlib
from fedbench.cli import app
from fedbench.models import MODELS


def invoke(*args: object, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def grid_errors(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "g.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(gridlib.GridError) as e:
        gridlib.load(path)
    return e.value.problems


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_db(tmp_path_factory.mktemp("rough") / "r.db")


# --------------------------------------------------------------------------- grid messages


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ('[algorithm]\nname = "scafold"\n', "did you mean scaffold?"),
        ('[algorithm]\nname = "FedAvg"\n', "did you mean fedavg?"),
        ('[compressor]\nname = "TopK"\n', "did you mean topk?"),
        ('[task]\ndataset = "digit"\n', "did you mean digits?"),
        ('[grid]\n"algorithm.name" = ["fedavg", "fedprx"]\n', "did you mean fedprox?"),
        ("[algorithm]\nlearning_rate = 0.1\n", "did you mean lr?"),
        ('[grid]\n"algorithm.learning_rate" = [0.1]\n', "did you mean lr?"),
        ("[task]\nnum_clients = 3\n", "did you mean clients?"),
    ],
)
def test_did_you_mean(tmp_path: Path, text: str, hint: str) -> None:
    (line,) = grid_errors(tmp_path, text)
    assert hint in line, line


def test_unknown_field_lists_what_the_algorithm_takes(tmp_path: Path) -> None:
    (line,) = grid_errors(tmp_path, '[algorithm]\nname = "fedavg"\nlearning_rate = 0.1\n')
    assert "fedavg takes: lr, local_steps" in line
    assert "every [algorithm] takes: name, batch_size" in line
    assert "mu" not in line.replace("momentum", "") and "outer_lr" not in line  # others' fields
    # an unknown name cannot tell what it takes: every field is listed
    (line, _) = grid_errors(tmp_path, '[algorithm]\nname = "nope"\nlearning_rate = 0.1\n')
    assert "allowed: " in line and "outer_lr" in line


def test_flat_list_for_a_list_field_is_explained(tmp_path: Path) -> None:
    (line,) = grid_errors(tmp_path, '[grid]\n"task.hidden" = [64, 128]\n')
    assert line.startswith(f"{tmp_path / 'g.toml'}: [grid] task.hidden = [64, 128]:")
    assert "[[64, 128]]" in line and "hidden = [64, 128] in [task]" in line
    assert "variant" not in line
    ok = tmp_path / "ok.toml"
    ok.write_text('[grid]\n"task.hidden" = [[64, 128], [32]]\n', encoding="utf-8")
    hidden = {tuple(j.config["task"]["hidden"]) for j in gridlib.load(ok).jobs}
    assert hidden == {(64, 128), (32,)}


def test_a_grid_value_is_blamed_on_the_grid_not_a_variant(tmp_path: Path) -> None:
    text = '[grid]\n"algorithm.lr" = [-1.0, 0.1]\n[[variant]]\n"algorithm.name" = "scaffold"\n'
    (line,) = grid_errors(tmp_path, text)  # once, although both families cross it
    assert "[grid] algorithm.lr = -1.0" in line and "variant" not in line
    own = '[[variant]]\n"algorithm.name" = "scaffold"\n"algorithm.lr" = [-2.0]\n'
    (line,) = grid_errors(tmp_path, own)
    assert "[[variant]] 1 algorithm.lr = -2.0" in line


def test_repeated_seeds_are_noted(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text("[experiment]\nseeds = [0, 1, 0]\n", encoding="utf-8")
    g = gridlib.load(path)
    (note,) = g.notes
    assert "seeds = [0, 1, 0]" in note and "seed 0 repeated; each seed runs once" in note
    assert sorted(j.seed for j in g.jobs) == [0, 1]
    r = invoke("validate", path, "--no-data")
    assert r.exit_code == 0 and "seed 0 repeated" in r.stdout


def test_eval_every_beyond_rounds_is_noted(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text("[experiment]\nrounds = 3\neval_every = 10\n", encoding="utf-8")
    (note,) = gridlib.load(path).notes
    assert "eval_every = 10 > rounds = 3" in note
    r = invoke("validate", path, "--no-data")
    assert r.exit_code == 0 and "note: " in r.stdout and "eval_every = 10" in r.stdout
    path.write_text("[experiment]\nrounds = 3\neval_every = 3\n", encoding="utf-8")
    assert gridlib.load(path).notes == []


def test_model_help_lists_every_model() -> None:
    text = gridlib.COMMON["task"]["model"].help
    for name in MODELS:
        assert name in text, name


# --------------------------------------------------------------------------- --format csv


@pytest.mark.parametrize("command", ["algorithms", "compressors", "datasets"])
def test_catalog_csv(command: str) -> None:
    r = invoke(command, "--format", "csv")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert rows and set(rows[0]) == {"section", "name", "kind", "summary", "param", "default",
                                     "allowed", "help"}  # fmt: skip
    listed = json.loads(invoke(command, "--format", "json").stdout)
    section = {"algorithms": "algorithms", "compressors": "compressors", "datasets": "datasets"}
    names = {c["name"] for c in listed[section[command]]}
    assert names <= {r["name"] for r in rows if r["section"] == section[command]}


def test_show_csv_and_all_digit_key_prefix(db: Path) -> None:
    r = invoke("show", "3", "--db", db, "--format", "csv")  # run id 3
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert {x["run_id"] for x in rows} == {"3"}
    assert {x["metric"] for x in rows} >= {"bits_up", "test_accuracy", "train_loss"}
    # no run has id 0, but a key starts with "00": read as a key prefix
    r = invoke("show", "00", "--db", db, "--format", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["run"]["key"].startswith("00exp")
    # an id wins over a key prefix: "03" is run 3, not the key "03exp..." (run 4)
    assert json.loads(invoke("show", "03", "--db", db, "-f", "json").stdout)["run"]["id"] == 3
    r = invoke("show", "999", "--db", db)
    assert r.exit_code == 2 and "no run '999'" in r.stderr


# --------------------------------------------------------------------------- ls


def test_ls_fits_80_columns_and_names_units(db: Path) -> None:
    r = invoke("ls", "--db", db, env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert max(len(x) for x in lines) <= 80
    assert any("up/client" in x for x in lines) and "per client" in r.stdout
    keys = [x.split()[1] for x in lines if x.split()[0].isdigit() and "runs" not in x]
    assert len(keys) == 11 and all(len(k) == 8 for k in keys)  # short keys, no wrapped cells
    assert "ef21" in r.stdout and "identity" in r.stdout
    rows = json.loads(invoke("ls", "--db", db, "-e", "exp", "--format", "json").stdout)
    for row in rows:
        assert row["bits_up_per_client"] == pytest.approx(row["bits_up_all_clients"] / 10)
        assert len(row["key"]) > 8


# --------------------------------------------------------------------------- run output


def test_run_output_without_a_terminal_is_one_line_per_event(tmp_path: Path) -> None:
    grid = tmp_path / "one.toml"
    grid.write_text(
        '[experiment]\nname = "one_job_with_a_long_experiment_name_for_wrapping"\nrounds = 8\n'
        'eval_every = 1\n[task]\ndataset = "digits"\nmodel = "logreg"\nclients = 4\n',
        encoding="utf-8",
    )
    r = invoke("run", grid, "--db", tmp_path / "o.db", env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    (key,) = [j.key for j in gridlib.load(grid).jobs]
    events = [x.split()[0] for x in lines if key in x]
    assert events == ["start", "progress", "progress", "progress", "done"]
    progress = [x for x in lines if x.startswith("progress")]
    assert [x.split("round ")[1].split()[0] for x in progress] == ["2/8", "4/8", "6/8"]
    summary = [x for x in lines if "ran 1 jobs" in x]
    assert len(summary) == 1 and len(summary[0]) > 80  # one unwrapped line
    assert "--plot bits-vs-accuracy" in summary[0]
    assert "side by side" not in summary[0]  # one job: its time is the wall time


def test_run_summary_gives_wall_time_and_the_jobs_time_when_they_overlapped(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from fedbench import runner
    from fedbench.commands import run as run_cmd

    def outcome(seconds: float) -> runner.Outcome:
        return runner.Outcome("k", "done", None, 3, seconds, {})

    class Db:
        url = "sqlite:///x.db"

    run_cmd._summary("g", [outcome(4.0), outcome(5.0)], Db(), wall=5.5)  # type: ignore[arg-type]
    run_cmd._summary("g", [outcome(4.0), outcome(5.0)], Db(), wall=9.2)  # type: ignore[arg-type]
    first, second = capsys.readouterr().out.splitlines()[:2]
    assert "ran 2 jobs in 5.5s (9.0s of job time side by side) — 2 done" in first
    assert "ran 2 jobs in 9.2s — 2 done" in second


# --------------------------------------------------------------------------- datasets --stats


@pytest.mark.slow
def test_datasets_stats_covers_sequence_data() -> None:
    r = invoke("datasets", "--stats", "--format", "json")
    assert r.exit_code == 0, r.output
    rows = {row["dataset"]: row for row in json.loads(r.stdout)["heterogeneity"]}
    assert "error" not in rows["grammar_text"], rows["grammar_text"]
    assert rows["grammar_text"]["clients"] == 10


def test_bfloat16_state_is_noted_for_the_methods_it_breaks(tmp_path: Path) -> None:
    """DGC and 1-bit Adam accumulate small residuals in their client rows: bfloat16 storage
    rounds them away (their docstrings give the measured drift), so validation says so; float16,
    or bfloat16 with a method that declares nothing, draws no note."""
    path = tmp_path / "g.toml"
    axis = '[grid]\n"algorithm.name" = ["dgc", "onebit_adam", "scaffold"]\n'
    path.write_text(f'[algorithm]\nclient_state = "bfloat16"\n{axis}', encoding="utf-8")
    notes = [n for n in gridlib.load(path).notes if "client_state" in n]
    assert len(notes) == 2 and all("use float16" in n for n in notes), notes
    assert 'client_state = "bfloat16" with dgc' in notes[0] and "onebit_adam" in notes[1]
    path.write_text(f'[algorithm]\nclient_state = "float16"\n{axis}', encoding="utf-8")
    assert not [n for n in gridlib.load(path).notes if "client_state" in n]
