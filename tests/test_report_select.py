"""Issue 25 item 2: `fedbench report --select FIELD --by val_accuracy [--at last|best]`.

A database written by hand (no training: seconds) where validation and test disagree on the
best learning rate: the report must follow validation, refuse to select on the test set,
name a choice at the edge of the sweep, stop at the best round with --at best, and draw only
the chosen configurations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from matplotlib.figure import Figure
from typer.testing import CliRunner

from fedbench.cli import app
from fedbench.grid import load as load_grid
from fedbench.report import plots
from fedbench.report.choice import choose
from fedbench.store import RunSpec, Store

GRID = """[experiment]
name = "sel"
seeds = [0, 1, 2]
rounds = 4
[task]
dataset = "digits"
model = "logreg"
clients = 4
[grid]
"algorithm.name" = ["fedavg", "fedprox"]
"algorithm.lr" = [0.01, 0.1, 1.0]
"""
T = 4  # rounds 0..T

# Final (round T) accuracies per (algorithm, lr): (validation, test). Validation picks
# lr = 0.1 for fedavg, the test set would pick 0.01; fedprox's best is the largest lr.
FINAL = {
    ("fedavg", 0.01): (0.60, 0.85),
    ("fedavg", 0.1): (0.80, 0.75),
    ("fedavg", 1.0): (0.70, 0.65),
    ("fedprox", 0.01): (0.50, 0.80),
    ("fedprox", 0.1): (0.60, 0.70),
    ("fedprox", 1.0): (0.70, 0.60),
}
# fedavg at lr = 1 peaks at round 1 (0.9 on validation) and falls back: the best round
# beats lr = 0.1's last evaluation, the last evaluation does not.
PEAK = [0.0, 0.9, 0.85, 0.8, 0.7]


def accuracies(algo: str, lr: float, seed: int, t: int) -> tuple[float, float]:
    """(val_accuracy, test_accuracy) of a run at round t; seeds differ by ±0.01."""
    val, test = FINAL[(algo, lr)]
    noise = 0.01 * (seed - 1)  # mean 0 over seeds 0, 1, 2
    v = PEAK[t] if (algo, lr) == ("fedavg", 1.0) else val * t / T
    return v + noise, test * t / T + noise


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("sel")
    grid_file = tmp / "sel.toml"
    grid_file.write_text(GRID)
    grid = load_grid(grid_file)
    path = tmp / "sel.db"
    with Store(str(path)) as s:
        exp = s.upsert_experiment("sel", str(grid_file), grid.text)
        for job in grid.jobs:
            s.ensure_runs(exp, [RunSpec(job.key, job.seed, job.algorithm, job.compressor,
                                        job.dataset, job.model, job.config)])  # fmt: skip
            rid = s.start_run(job.key, host="h", device="cpu")
            algo, lr = job.config["algorithm"]["name"], job.config["algorithm"]["lr"]
            for t in range(T + 1):
                val, test = accuracies(algo, lr, job.seed, t)
                s.log_round(rid, t, {"bits_up": 1000.0 * t, "val_accuracy": val,
                                     "val_loss": 1 - val, "test_accuracy": test,
                                     "train_loss": 1.0 / (t + 1)})  # fmt: skip
            s.finish_run(rid, "done")
    return path


def invoke(*args: object) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def one_error(result: Any) -> str:
    assert result.exit_code == 2, result.output
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "Traceback" not in result.output
    return lines[0]


def rows(db: Path, *args: object) -> dict[str, dict[str, Any]]:
    r = invoke("report", "--db", db, "-f", "json", *args)
    assert r.exit_code == 0, r.output
    return {row["label"]: row for row in json.loads(r.stdout)}


def test_selection_follows_validation_not_test(db: Path) -> None:
    got = rows(db, "--select", "algorithm.lr", "--by", "val_accuracy")
    assert set(got) == {"fedavg", "fedprox"}  # one row per compared group
    assert got["fedavg"]["lr"] == "0.1" and got["fedprox"]["lr"] == "1"
    # test metrics at the choice (lr = 0.1), not at the test set's favourite (0.01: 0.85)
    assert got["fedavg"]["final_accuracy_mean"] == pytest.approx(0.75)
    assert got["fedprox"]["final_accuracy_mean"] == pytest.approx(0.60)
    assert got["fedavg"]["val_accuracy_mean"] == pytest.approx(0.80)
    assert got["fedavg"]["val_accuracy_std"] == pytest.approx(0.01)
    assert got["fedavg"]["seeds"] == 3
    assert got["fedavg"]["bits_mean"] == pytest.approx(1000.0 * T / 4)  # per client
    # "lr" alone names algorithm.lr; the validation loss picks the same values
    again = rows(db, "--select", "lr", "--by", "val_loss")
    assert {k: v["lr"] for k, v in again.items()} == {"fedavg": "0.1", "fedprox": "1"}
    # without --select every lr is its own row
    assert len(rows(db)) == 6


def test_terminal_table_states_protocol_and_edge(db: Path) -> None:
    r = invoke("report", "--db", db, "--select", "algorithm.lr", "--wide")
    assert r.exit_code == 0, r.output
    text = " ".join(r.stdout.split())  # rich may wrap a long note
    protocol = (
        "selection: lr chosen per algorithm from {0.01, 0.1, 1} by the highest mean "
        "val_accuracy over 3 seeds at the last evaluation; test metrics and bits reported at "
        "that choice"
    )
    assert protocol in text  # --by defaults to val_accuracy
    assert "fedprox: lr = 1 is the largest tried (0.01–1)" in text
    assert "fedavg: lr" not in text  # 0.1 is inside the range: no note
    header = next(line for line in r.stdout.splitlines() if "label" in line)
    assert header.split()[:4] == ["label", "lr", "val", "accuracy"]


@pytest.mark.parametrize(
    ("by", "why"),
    [("test_accuracy", "a test metric cannot choose"), ("test_loss", "a test metric cannot"),
     ("train_loss", "a training metric rewards fitting")],
)  # fmt: skip
def test_selecting_on_test_or_train_is_refused(db: Path, by: str, why: str) -> None:
    line = one_error(invoke("report", "--db", db, "--select", "algorithm.lr", "--by", by))
    assert f"--by {by}: {why}" in line and "val_accuracy" in line


def test_unknown_by_lists_the_validation_metrics(db: Path) -> None:
    line = one_error(invoke("report", "--db", db, "--select", "lr", "--by", "val_perplexity"))
    assert "val_perplexity: not logged" in line
    assert line.endswith("validation metrics logged: val_accuracy, val_loss")
    line = one_error(invoke("report", "--db", db, "--select", "lr", "--by", "bits_up"))
    assert "bits_up: is no validation metric" in line
    line = one_error(invoke("report", "--db", db, "--by", "val_loss"))
    assert "give --select FIELD" in line
    line = one_error(invoke("report", "--db", db, "--select", "lr", "--at", "first"))
    assert "--at first: allowed: last, best" in line
    line = one_error(invoke("report", "--db", db, "--select", "task.clients"))
    assert "one value in the runs (4): nothing to choose" in line
    line = one_error(invoke("report", "--db", db, "--select", "nope"))
    assert "--select field 'nope' is unknown" in line
    line = one_error(invoke("report", "--db", db, "--select", "lr", "--at", "best",
                            "--at-common-round"))  # fmt: skip
    assert "leave out --at-common-round" in line


def test_at_best_stops_at_the_best_round(db: Path) -> None:
    last = rows(db, "--select", "algorithm.lr")
    best = rows(db, "--select", "algorithm.lr", "--at", "best")
    # fedavg: lr = 1 peaks at round 1 (0.9 > 0.8 at lr = 0.1's last round): chosen with
    # --at best, where test accuracy and bits are those of round 1
    assert last["fedavg"]["lr"] == "0.1" and best["fedavg"]["lr"] == "1"
    assert best["fedavg"]["chosen_round"] == 1 and best["fedavg"]["rounds"] == 1
    assert best["fedavg"]["val_accuracy_mean"] == pytest.approx(0.9)
    assert best["fedavg"]["final_accuracy_mean"] == pytest.approx(0.65 / T)
    assert best["fedavg"]["bits_mean"] == pytest.approx(1000.0 / 4)
    # fedprox's curves rise to the end: its best round is the last, the choice the same
    assert best["fedprox"]["lr"] == "1" and best["fedprox"]["chosen_round"] == T
    assert best["fedprox"]["final_accuracy_mean"] == pytest.approx(0.60)
    assert "chosen_round" not in last["fedavg"]
    r = invoke("report", "--db", db, "--select", "algorithm.lr", "--at", "best", "--wide")
    text = " ".join(r.stdout.split())
    assert "at the best round of each mean curve (early stopping)" in text
    assert "fedavg: lr = 1 is the largest tried" in text


def test_plots_and_page_show_only_the_choice(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn: list[Figure] = []
    real = plots.figure

    def spy(*args: Any, **kwargs: Any) -> Figure:
        fig = real(*args, **kwargs)
        drawn.append(fig)
        return fig

    monkeypatch.setattr(plots, "figure", spy)
    r = invoke("report", "--db", db, "--select", "algorithm.lr", "-p", "rounds-vs-accuracy",
               "--out", tmp_path / "a.png", "--html", tmp_path)  # fmt: skip
    assert r.exit_code == 0, r.output
    assert drawn  # the asked figure and the page's own
    for fig in drawn:
        legend = [t.get_text() for t in fig.axes[-1].get_legend().get_texts()]
        assert legend == ["fedavg, lr=0.1", "fedprox, lr=1"]
        assert "selection: lr chosen per algorithm" in fig.get_supxlabel()
    page = (tmp_path / "sel.html").read_text()
    assert (
        page.count(
            '<p class="protocol">Selection: lr chosen per algorithm from '
            "{0.01, 0.1, 1} by the highest mean val_accuracy over 3 seeds at the "
            "last evaluation; test metrics and bits reported at that choice.</p>"
        )
        == 1
    )
    assert "<figcaption>sel: test accuracy vs round</figcaption>" in page
    assert "rounds-vs-accuracy" not in page.split("<h2>Grid</h2>")[0]  # captions are titles


def test_choose_directly_keeps_every_seed_of_the_choice(db: Path) -> None:
    with Store(str(db)) as s:
        from fedbench.report import load

        runs, metrics = load(s, "sel")
    sel = choose(runs, metrics, ["algorithm.lr"], "val_accuracy")
    assert len(sel.runs) == 6  # 2 groups × 3 seeds
    assert sorted(zip(sel.runs["algorithm.name"], sel.runs["algorithm.lr"], strict=True)) == (
        [("fedavg", 0.1)] * 3 + [("fedprox", 1.0)] * 3
    )
    assert set(sel.metrics["run_id"]) == set(sel.runs["run_id"])
    assert sel.labels.tolist() == ["fedavg"] * 3 + ["fedprox"] * 3
    # a diverged seed makes its candidate the worst: never chosen over a finite one
    broken = runs.copy()
    hit = (broken["algorithm.name"] == "fedavg") & (broken["algorithm.lr"] == 0.1)
    broken.loc[hit & (broken["seed"] == 0), "status"] = "diverged"
    sel = choose(broken, metrics, ["algorithm.lr"], "val_accuracy")
    chosen = sel.choices.set_index("label")["lr"].to_dict()
    assert chosen == {"fedavg": "1", "fedprox": "1"}
    assert isinstance(sel.choices, pd.DataFrame)


def test_no_dp_label_in_every_figure_of_a_dp_comparison() -> None:
    """σ = 0 runs log no ε: their legend entry says "(no DP)" in an accuracy figure too, not
    only where ε is plotted (the same label in every figure of the report)."""
    runs = pd.DataFrame({"run_id": [1, 2], "seed": [0, 0], "status": ["done", "done"],
                         "algorithm.name": ["dp_fedavg"] * 2, "task.clients": [4, 4],
                         "privacy.noise_multiplier": [0.0, 1.0]})  # fmt: skip
    ms = [(r, t, "test_accuracy", 0.1 * t * r) for r in (1, 2) for t in range(3)]
    ms += [(2, t, "epsilon", 1.0 + t) for t in range(3)]
    metrics = pd.DataFrame(ms, columns=["run_id", "round", "name", "value"])
    want = ["dp_fedavg, noise_multiplier=0 (no DP)", "dp_fedavg, noise_multiplier=1"]
    for kwargs in ({"kind": "rounds-vs-accuracy"}, {"y": ["test_accuracy", "epsilon"]}):
        fig = plots.figure(runs, metrics, **kwargs)
        assert [t.get_text() for t in fig.axes[-1].get_legend().get_texts()] == want
    plain = metrics[metrics["name"] != "epsilon"]  # no DP anywhere: nothing to say
    fig = plots.figure(runs, plain, "rounds-vs-accuracy")
    assert [t.get_text() for t in fig.axes[-1].get_legend().get_texts()] == [
        "dp_fedavg, noise_multiplier=0", "dp_fedavg, noise_multiplier=1"
    ]  # fmt: skip


def test_html_captions_are_titles_of_single_and_multi_panel_figures() -> None:
    from fedbench.report.html import figure_title

    runs = pd.DataFrame({"run_id": [1], "seed": [0], "status": ["done"], "experiment": ["q"],
                         "algorithm.name": ["fedavg"], "task.clients": [4]})  # fmt: skip
    ms = [(1, t, n, 0.1 * t) for t in range(3) for n in ("test_accuracy", "local_loss", "gap")]
    metrics = pd.DataFrame(ms, columns=["run_id", "round", "name", "value"])
    one = plots.figure(runs, metrics, "rounds-vs-accuracy")
    assert figure_title(one) == "q: test accuracy vs round"
    two = plots.figure(runs, metrics, None, y=["local_loss", "gap"])
    assert figure_title(two) == "q: local loss / gap vs round"


def test_at_best_plots_stop_at_the_chosen_round_and_name_the_choice(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both groups choose lr = 1 with --at best: lr no longer tells curves apart, yet each
    legend entry names it; fedavg's curve ends at its chosen round 1, fedprox's at T."""
    drawn: list[Figure] = []
    real = plots.figure
    monkeypatch.setattr(plots, "figure", lambda *a, **k: drawn.append(real(*a, **k)) or drawn[-1])
    r = invoke("report", "--db", db, "--select", "lr", "--at", "best", "-p",
               "rounds-vs-accuracy", "--out", tmp_path / "b.png")  # fmt: skip
    assert r.exit_code == 0, r.output
    (fig,) = drawn
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
    assert sorted(lines) == ["fedavg, lr=1", "fedprox, lr=1"]
    assert list(lines["fedavg, lr=1"].get_xdata()) == [0, 1]
    assert list(lines["fedprox, lr=1"].get_xdata()) == list(range(T + 1))
    assert lines["fedavg, lr=1"].get_ydata()[-1] == pytest.approx(0.65 / T)


def test_two_runs_one_seed_each() -> None:
    """The smallest sweep: one algorithm, two lrs, one seed; the loss is minimised."""
    runs = pd.DataFrame({"run_id": [1, 2], "seed": [0, 0], "status": ["done"] * 2,
                         "algorithm.name": ["fedavg"] * 2, "algorithm.lr": [0.1, 0.3]})  # fmt: skip
    ms = [(r, t, "val_loss", [0.5, 0.4][r - 1] * (3 - t)) for r in (1, 2) for t in range(3)]
    sel = choose(runs, pd.DataFrame(ms, columns=["run_id", "round", "name", "value"]),
                 ["lr"], "val_loss")  # fmt: skip
    assert sel.runs["run_id"].tolist() == [2]
    assert sel.protocol.startswith(
        "lr chosen from {0.1, 0.3} by the lowest mean val_loss over 1 seed"
    )
    assert sel.notes == ["fedavg: lr = 0.3 is the largest tried (0.1–0.3); the best may lie "
                         "beyond the sweep"]  # fmt: skip
