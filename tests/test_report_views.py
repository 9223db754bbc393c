"""Report views of issue 26: the per-client accuracy CDF and worst-10% column, the machine
load in wall-clock captions, eval_clients in captions and labels, the HTML provenance."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from test_cli import TINY, invoke, write

from fedbench import report as rep
from fedbench.report.html import html_page
from fedbench.report.labels import config_labels, shared_settings
from fedbench.report.plots import client_cdf_figure, figure
from fedbench.store import Store

ALL = TINY.replace("eval_every = 2", 'eval_every = 2\nper_client_eval = "all"')


@pytest.fixture(scope="module")
def grid_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("views")
    db = tmp / "g.db"
    assert invoke("run", write(tmp, ALL), "--db", db).exit_code == 0
    return db


def loaded(db: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    with Store(str(db)) as s:
        return rep.load(s, "tiny")


def test_cdf_draws_one_curve_per_configuration(grid_db: Path) -> None:
    runs, metrics = loaded(grid_db)
    assert len(runs) == 8  # 2 algorithms × 2 compressors × 2 seeds
    fig = figure(runs, metrics, "client-accuracy-cdf")
    lines = [ln for ln in fig.axes[0].get_lines() if ln.get_label()[:1] != "_"]
    assert len(lines) == 4
    for ln in lines:  # 5 clients × 2 seeds pooled, a CDF ending at 1
        y = ln.get_ydata()
        assert len(y) == 10 and y[-1] == pytest.approx(1.0) and (pd.Series(y).diff()[1:] > 0).all()
    by_group = client_cdf_figure(runs, metrics, ["algorithm.name"])
    assert len([ln for ln in by_group.axes[0].get_lines() if ln.get_label()[:1] != "_"]) == 2


def test_cdf_needs_all(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    on = TINY.replace("eval_every = 2", "eval_every = 2\nper_client_eval = true")
    assert (
        invoke("run", write(tmp_path, on), "--db", db, "--only", "algorithm.name=fedavg").exit_code
        == 0
    )
    runs, metrics = loaded(db)
    with pytest.raises(rep.ReportError, match='per_client_eval = "all"'):
        figure(runs, metrics, "client-accuracy-cdf")
    table = rep.summary(runs, metrics)  # true: the stats, so the worst-10% column
    assert "final_client_acc_p10_mean" in table.columns


def test_worst_ten_percent_column_is_the_mean_of_the_runs_p10(grid_db: Path) -> None:
    runs, metrics = loaded(grid_db)
    table = rep.summary(runs, metrics, group_by=["algorithm.name", "compressor.name"])
    labels = config_labels(runs, ["algorithm.name", "compressor.name"])
    last = (
        metrics[metrics["name"] == "client_acc_p10"].sort_values("round").groupby("run_id").last()
    )
    for _, row in table.iterrows():
        ids = runs.loc[(labels == row["label"]).to_numpy(), "run_id"]
        assert row["final_client_acc_p10_mean"] == pytest.approx(last.loc[ids, "value"].mean())
    text = rep.render(table, "markdown")
    assert "worst 10% clients acc" in text
    plain = rep.summary(runs, metrics[~metrics["name"].str.startswith("client_")])
    assert "final_client_acc_p10_mean" not in plain.columns  # only when runs log it


def test_wall_clock_caption_states_the_load(grid_db: Path) -> None:
    runs, metrics = loaded(grid_db)
    lows = [p["load_start"][0] for p in runs["provenance"]] + [
        p["load_end"][0] for p in runs["provenance"]
    ]
    fig = figure(runs, metrics, "wall-vs-accuracy")
    caption = fig._supxlabel.get_text().replace("\n", " ")
    assert f"{min(lows):g}" in caption and "machine load" in caption
    other = figure(runs, metrics, "rounds-vs-accuracy")._supxlabel.get_text()
    assert "machine load" not in other


def test_html_page_prints_provenance_and_the_cdf(grid_db: Path) -> None:
    runs, metrics = loaded(grid_db)
    with Store(str(grid_db)) as s:
        page = html_page(s, "tiny", runs, metrics)
        commit = s.provenance(int(runs["run_id"].iloc[0]))["fedbench_commit"]
    assert "<h2>Provenance</h2>" in page and str(commit) in page
    assert "per-client accuracy (CDF)" in page


def test_eval_clients_is_a_caption_line_when_shared_and_a_label_when_it_differs() -> None:
    base = {"run_id": [1, 2], "algorithm.name": ["fedavg", "fedavg"], "experiment.rounds": [5, 5]}
    shared = pd.DataFrame({**base, "experiment.eval_clients": [100, 100]})
    assert "train loss on 100 sampled clients" in shared_settings(shared)
    none = pd.DataFrame({**base, "experiment.eval_clients": [0, 0]})
    assert "sampled" not in shared_settings(none)
    differ = pd.DataFrame({**base, "experiment.eval_clients": [0, 100], "algorithm.lr": [0.1, 0.2]})
    labels = config_labels(differ).tolist()
    assert all("eval_clients" in label for label in labels)


def test_run_names_the_runs_an_edited_grid_no_longer_has(tmp_path: Path) -> None:
    grid, db = write(tmp_path, TINY), tmp_path / "g.db"
    only = ("--only", "algorithm.name=fedavg", "--only", "compressor.name=identity")
    first = invoke("run", grid, "--db", db, *only)
    assert first.exit_code == 0 and "no longer in this grid" not in first.output
    # compressor identity -> only topk: the two identity runs (2 seeds) are stale
    write(
        tmp_path,
        TINY.replace('"compressor.name" = ["identity", "topk"]', '"compressor.name" = ["topk"]'),
    )
    again = invoke("run", grid, "--db", db, "--only", "algorithm.name=fedavg")
    assert again.exit_code == 0
    assert f"2 runs are no longer in this grid: fedbench prune {grid}" in " ".join(
        again.output.split()
    )
