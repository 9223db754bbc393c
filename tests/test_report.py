"""Report module: labels, curves and summary against hand-computed numbers; renderers; plots.

The hand-built experiment: {fedavg, ef21} × {topk, identity} × seeds {0, 1}, 10 clients,
3 rounds, evaluated at rounds 2 and 3. Uplink bits per round: topk 1000 + 100·seed, identity
32000; downlink 500 for every run. Test accuracy at rounds (2, 3) is in ACC below.
"""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedbench import report as rep

ACC = {  # (algorithm, compressor, seed) -> test accuracy at rounds 2 and 3
    ("fedavg", "topk", 0): (0.5, 0.8),
    ("fedavg", "topk", 1): (0.7, 0.6),
    ("fedavg", "identity", 0): (0.6, 0.9),
    ("fedavg", "identity", 1): (0.65, 0.85),
    ("ef21", "topk", 0): (0.3, 0.4),
    ("ef21", "topk", 1): (0.72, 0.5),
    ("ef21", "identity", 0): (0.2, 0.3),
    ("ef21", "identity", 1): (0.1, 0.2),
}
CLIENTS = 10


def make_runs() -> pd.DataFrame:
    rows = []
    for run_id, (algo, comp, seed) in enumerate(ACC, start=1):
        rows.append(
            {
                "run_id": run_id,
                "key": f"k{run_id}",
                "experiment": "exp",
                "seed": seed,
                "algorithm": algo,
                "compressor": comp,
                "dataset": "digits",
                "model": "mlp",
                "status": "done",
                "experiment.name": "exp",
                "experiment.rounds": 3,
                "task.dataset": "digits",
                "task.clients": CLIENTS,
                "algorithm.name": algo,
                "algorithm.lr": 0.1,
                # only fedavg has local steps: presence is implied by algorithm.name
                "algorithm.local_steps": 5 if algo == "fedavg" else None,
                "compressor.name": comp,
                "compressor.ratio": 0.01 if comp == "topk" else np.nan,
                "task.layers": (64, 64),
            }
        )
    return pd.DataFrame(rows)


def bits_up_per_round(comp: str, seed: int) -> float:
    return 1000.0 + 100 * seed if comp == "topk" else 32000.0


def make_metrics(runs: pd.DataFrame, extra: tuple[str, ...] = ("train_loss",)) -> pd.DataFrame:
    rows = []
    for r in runs.itertuples():
        acc = ACC[(r.algorithm, r.compressor, r.seed)]
        for t in (1, 2, 3):
            rows.append((r.run_id, t, "bits_up", t * bits_up_per_round(r.compressor, r.seed)))
            rows.append((r.run_id, t, "bits_down", t * 500.0))
            rows.append((r.run_id, t, "wall_s", t * 0.5))
            if t >= 2:
                rows.append((r.run_id, t, "test_accuracy", acc[t - 2]))
                rows.append((r.run_id, t, "test_loss", 1.0 - acc[t - 2]))
                for name in extra:
                    rows.append((r.run_id, t, name, 2.0 / t + r.seed))
    return pd.DataFrame(rows, columns=["run_id", "round", "name", "value"])


@pytest.fixture
def runs() -> pd.DataFrame:
    return make_runs()


@pytest.fixture
def metrics(runs: pd.DataFrame) -> pd.DataFrame:
    return make_metrics(runs)


def run_id(runs: pd.DataFrame, algo: str, comp: str, seed: int) -> int:
    hit = runs[(runs["algorithm"] == algo) & (runs["compressor"] == comp) & (runs["seed"] == seed)]
    return int(hit["run_id"].iloc[0])


# --------------------------------------------------------------------------- fields and labels


def test_varying_fields_are_the_two_names(runs: pd.DataFrame) -> None:
    assert rep.varying_fields(runs) == ["algorithm.name", "compressor.name"]


def test_varying_fields_sees_different_present_values(runs: pd.DataFrame) -> None:
    runs.loc[runs["seed"] == 1, "compressor.ratio"] = np.where(
        runs.loc[runs["seed"] == 1, "compressor"] == "topk", 0.1, np.nan
    )
    assert rep.varying_fields(runs) == ["algorithm.name", "compressor.name", "compressor.ratio"]


def test_unexplained_presence_is_varying(runs: pd.DataFrame) -> None:
    runs["algorithm.momentum"] = [0.9 if s == 0 else None for s in runs["seed"]]
    assert "algorithm.momentum" in rep.varying_fields(runs)


def test_varying_fields_compares_tuples_and_ignores_bookkeeping(runs: pd.DataFrame) -> None:
    runs["experiment.name"] = [f"e{i}" for i in range(len(runs))]
    runs["experiment.seeds"] = [(0, 1)] * len(runs)
    assert "task.layers" not in rep.varying_fields(runs)
    runs.loc[0, "task.layers"] = (32,)
    assert rep.varying_fields(runs) == ["algorithm.name", "compressor.name", "task.layers"]


def test_labels_name_fields_and_same_label_across_seeds(runs: pd.DataFrame) -> None:
    labels = rep.config_labels(runs)
    assert labels[runs["run_id"] == run_id(runs, "fedavg", "topk", 0)].item() == "fedavg + topk"
    assert labels[runs["run_id"] == run_id(runs, "fedavg", "topk", 1)].item() == "fedavg + topk"
    assert set(labels) == {"fedavg + topk", "fedavg + identity", "ef21 + topk", "ef21 + identity"}


def test_labels_of_parameters_use_the_last_part(runs: pd.DataFrame) -> None:
    runs["algorithm.lr"] = [0.1 if s == 0 else 0.05 for s in runs["seed"]]
    labels = rep.config_labels(runs, ["compressor.name", "algorithm.lr", "ratio"])
    i = runs["run_id"] == run_id(runs, "ef21", "topk", 1)
    assert labels[i].item() == "topk, lr=0.05, ratio=0.01"
    j = runs["run_id"] == run_id(runs, "ef21", "identity", 0)
    assert labels[j].item() == "identity, lr=0.1"  # ratio absent for identity


def test_single_configuration_is_labelled_by_its_algorithm(runs: pd.DataFrame) -> None:
    one = runs[(runs["algorithm"] == "ef21") & (runs["compressor"] == "topk")]
    assert rep.varying_fields(one) == []
    assert rep.config_labels(one).tolist() == ["ef21", "ef21"]


def test_unknown_group_by_names_what_is_allowed(runs: pd.DataFrame) -> None:
    with pytest.raises(rep.ReportError, match=r"'nope' is unknown: allowed: .*algorithm\.lr"):
        rep.config_labels(runs, ["nope"])


# --------------------------------------------------------------------------- curves


def curve_row(c: pd.DataFrame, label: str, rnd: int) -> pd.Series:
    return c[(c["label"] == label) & (c["round"] == rnd)].iloc[0]


def test_curves_mean_std_over_seeds(runs: pd.DataFrame, metrics: pd.DataFrame) -> None:
    c = rep.curves(runs, metrics, "round", "test_accuracy")
    assert list(c.columns) == [
        "label", "round", "x_mean", "y_mean", "y_std", "y_min", "y_max", "n_seeds",
    ]  # fmt: skip
    assert sorted(set(c["round"])) == [2, 3]  # rounds where y exists
    row = curve_row(c, "fedavg + topk", 2)  # accuracies 0.5 and 0.7
    assert row["x_mean"] == 2
    assert row["y_mean"] == pytest.approx(0.6)
    assert row["y_std"] == pytest.approx(math.sqrt(0.02))  # sample std
    assert (row["y_min"], row["y_max"], row["n_seeds"]) == (0.5, 0.7, 2)
    assert list(dict.fromkeys(c["label"])) == [
        "fedavg + topk", "fedavg + identity", "ef21 + topk", "ef21 + identity",
    ]  # fmt: skip


def test_curves_bits_per_client_and_total(runs: pd.DataFrame, metrics: pd.DataFrame) -> None:
    up = rep.curves(runs, metrics, "bits", "test_accuracy")
    # round 2, topk: uplink 2000 and 2200 over 10 clients -> 200 and 220
    assert curve_row(up, "fedavg + topk", 2)["x_mean"] == pytest.approx(210.0)
    raw = rep.curves(runs, metrics, "bits", "test_accuracy", per_client=False)
    assert curve_row(raw, "fedavg + topk", 2)["x_mean"] == pytest.approx(2100.0)
    total = rep.curves(runs, metrics, "bits", "test_accuracy", bits="total")
    # + downlink 2·500 = 1000 each -> (3000 + 3200) / 2 / 10
    assert curve_row(total, "fedavg + topk", 2)["x_mean"] == pytest.approx(310.0)
    down = rep.curves(runs, metrics, "bits", "test_accuracy", bits="down", per_client=False)
    assert curve_row(down, "ef21 + identity", 3)["x_mean"] == pytest.approx(1500.0)


def test_curves_of_an_unfinished_run_cover_its_rounds(runs: pd.DataFrame) -> None:
    rid = run_id(runs, "fedavg", "topk", 1)
    runs.loc[runs["run_id"] == rid, "status"] = "running"
    metrics = make_metrics(runs)
    metrics = metrics[~((metrics["run_id"] == rid) & (metrics["round"] == 3))]
    c = rep.curves(runs, metrics, "round", "test_accuracy")
    assert curve_row(c, "fedavg + topk", 2)["n_seeds"] == 2
    last = curve_row(c, "fedavg + topk", 3)
    assert last["n_seeds"] == 1 and last["y_mean"] == pytest.approx(0.8)
    assert math.isnan(last["y_std"])


def test_curves_reject_bad_arguments(runs: pd.DataFrame, metrics: pd.DataFrame) -> None:
    with pytest.raises(rep.ReportError, match="allowed: round, bits, wall, time"):
        rep.curves(runs, metrics, "tokens", "test_accuracy")
    with pytest.raises(rep.ReportError, match=r"no 'sim_time_s' metric.*\[network\]"):
        rep.curves(runs, metrics, "time", "test_accuracy")
    with pytest.raises(rep.ReportError, match="allowed: up, down, total"):
        rep.curves(runs, metrics, "bits", "test_accuracy", bits="both")
    with pytest.raises(rep.ReportError, match="'grad_norm_sq'"):
        rep.curves(runs, metrics, "round", "grad_norm_sq")


# --------------------------------------------------------------------------- summary


def by_label(table: pd.DataFrame, label: str) -> pd.Series:
    return table.set_index("label").loc[label]


def test_summary_final_best_and_target(runs: pd.DataFrame, metrics: pd.DataFrame) -> None:
    s = rep.summary(runs, metrics, target_accuracy=0.7)
    # sorted by final accuracy: 0.875, 0.7, 0.45, 0.25
    assert s["label"].tolist() == [
        "fedavg + identity", "fedavg + topk", "ef21 + topk", "ef21 + identity",
    ]  # fmt: skip
    assert "status" not in s.columns  # every run is done
    row = by_label(s, "fedavg + topk")
    assert row["seeds"] == 2 and row["rounds"] == 3
    assert row["final_accuracy_mean"] == pytest.approx(0.7)  # 0.8, 0.6
    assert row["final_accuracy_std"] == pytest.approx(math.sqrt(0.02))
    assert row["best_accuracy_mean"] == pytest.approx(0.75)  # 0.8, 0.7
    assert row["best_accuracy_std"] == pytest.approx(math.sqrt(0.005))
    assert row["final_test_loss_mean"] == pytest.approx(0.3)
    assert row["final_train_loss_mean"] == pytest.approx(2 / 3 + 0.5)
    assert row["bits_mean"] == pytest.approx((3000 + 3300) / 2 / CLIENTS)
    # seed 0 reaches 0.7 at round 3 (300 bits/client), seed 1 at round 2 (220 bits/client)
    assert row["reached"] == "2/2"
    assert row["rounds_to_target_mean"] == pytest.approx(2.5)
    assert row["bits_to_target_mean"] == pytest.approx(260.0)
    assert row["bits_to_target_std"] == pytest.approx(math.sqrt(2 * 40.0**2))


def test_summary_seed_that_never_reaches(runs: pd.DataFrame, metrics: pd.DataFrame) -> None:
    s = rep.summary(runs, metrics, target_accuracy=0.7, per_client=False)
    row = by_label(s, "ef21 + topk")  # seed 0 peaks at 0.4; seed 1 has 0.72 at round 2
    assert row["reached"] == "1/2"
    assert row["rounds_to_target_mean"] == 2.0 and math.isnan(row["rounds_to_target_std"])
    assert row["bits_to_target_mean"] == pytest.approx(2200.0)
    none = by_label(s, "ef21 + identity")
    assert none["reached"] == "0/2" and math.isnan(none["rounds_to_target_mean"])


def test_summary_counts_statuses_of_unfinished_runs(runs: pd.DataFrame) -> None:
    rid = run_id(runs, "ef21", "identity", 1)
    runs.loc[runs["run_id"] == rid, "status"] = "running"
    metrics = make_metrics(runs)
    metrics = metrics[~((metrics["run_id"] == rid) & (metrics["round"] == 3))]
    s = rep.summary(runs, metrics)
    assert by_label(s, "ef21 + identity")["status"] == "1 done, 1 running"
    assert by_label(s, "fedavg + topk")["status"] == "2 done"
    # issue 26: the running seed (at round 2) is never averaged with the done one (round 3)
    row = by_label(s, "ef21 + identity")
    assert row["final_accuracy_mean"] == pytest.approx(0.3) and row["seeds"] == 1
    assert math.isnan(row["final_accuracy_std"]) and row["rounds"] == 3
    assert any("left out: 1 running" in n for n in s.attrs["notes"])
    # --at-common-round: every run at round 2, the last round all of them reached
    c = rep.summary(runs, metrics, at_common_round=True)
    row = by_label(c, "ef21 + identity")
    assert row["final_accuracy_mean"] == pytest.approx(0.15) and row["seeds"] == 2
    assert by_label(c, "fedavg + topk")["final_accuracy_mean"] == pytest.approx(0.6)
    assert set(c["rounds"]) == {2}
    assert any("every run at round 2" in n for n in c.attrs["notes"])


def test_summary_of_an_all_pending_row_shows_no_numbers(runs: pd.DataFrame) -> None:
    """Issue 26: an all-pending row showed one seed's numbers; now it has none, and says so."""
    ids = [run_id(runs, "fedavg", "topk", s) for s in (0, 1)]
    runs.loc[runs["run_id"] == ids[0], "status"] = "pending"
    runs.loc[runs["run_id"] == ids[1], "status"] = "failed"
    metrics = make_metrics(runs)
    metrics = metrics[~(metrics["run_id"].isin(ids) & (metrics["round"] > 2))]
    s = rep.summary(runs, metrics, target_accuracy=0.5)
    row = by_label(s, "fedavg + topk")
    assert row["seeds"] == 0 and row["status"] == "1 pending, 1 failed"
    assert math.isnan(row["final_accuracy_mean"]) and row["reached"] == "0/0"
    assert "1 pending, 1 failed" in s.attrs["notes"][-1]


def test_summary_without_accuracy_sorts_by_loss(runs: pd.DataFrame, metrics: pd.DataFrame) -> None:
    no_acc = metrics[metrics["name"] != "test_accuracy"]
    s = rep.summary(runs, no_acc)
    assert "final_accuracy_mean" not in s.columns
    assert s["final_test_loss_mean"].is_monotonic_increasing
    with pytest.raises(rep.ReportError, match="'test_accuracy'"):
        rep.summary(runs, no_acc, target_accuracy=0.5)


# --------------------------------------------------------------------------- render


@pytest.fixture
def table(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    return rep.summary(runs, metrics, target_accuracy=0.7)


def test_render_table_shows_mean_pm_std(table: pd.DataFrame) -> None:
    text = rep.render(table, "table", title="exp")
    assert "0.700 ± 0.141" in text  # fedavg + topk final accuracy
    assert "3.2e+02" in text  # (3000 + 3300) / 2 / 10 = 315 bits per client
    assert "1/2" in text and "fedavg + identity" in text
    assert "uplink bits per client" in text


def test_render_csv_parses_back(table: pd.DataFrame) -> None:
    back = pd.read_csv(io.StringIO(rep.render(table, "csv")))
    assert list(back.columns) == list(table.columns)
    assert np.allclose(back["final_accuracy_mean"], table["final_accuracy_mean"])
    assert back["reached"].tolist() == table["reached"].tolist()


def test_render_json_records_with_null(table: pd.DataFrame) -> None:
    records = json.loads(rep.render(table, "json"))
    assert len(records) == len(table)
    last = records[-1]
    assert last["label"] == "ef21 + identity"
    assert last["rounds_to_target_mean"] is None  # NaN -> null
    assert records[1]["final_accuracy_mean"] == pytest.approx(0.7)
    assert records[1]["rounds"] == 3


def test_render_markdown_has_separator_row(table: pd.DataFrame) -> None:
    lines = rep.render(table, "markdown").splitlines()
    assert lines[0].startswith("| label |")
    assert re.fullmatch(r"\| ---(:?)( \| ---:?)+ \|", lines[1])
    assert lines[1].count("|") == lines[0].count("|")
    assert any(line.startswith("| fedavg + topk | 2 | 0.700 ± 0.141") for line in lines)


def test_render_latex_tabular_escapes(table: pd.DataFrame) -> None:
    text = rep.render(table, "latex")
    assert "\\begin{tabular}" in text and "\\end{tabular}" in text
    assert r"0.700 $\pm$ 0.141" in text
    titled = rep.render(table.assign(label=table["label"] + " 5%_"), "latex", title="a_b")
    assert r"\caption{a\_b (target accuracy 0.7)}" in titled and r"5\%\_" in titled


def test_render_unknown_format(table: pd.DataFrame) -> None:
    with pytest.raises(rep.ReportError, match="allowed: table, markdown, csv, json, latex"):
        rep.render(table, "html")


# --------------------------------------------------------------------------- plots


@pytest.mark.parametrize("kind", [k for k in rep.PLOTS if k != "bits-vs-gradnorm"])
def test_plot_writes_png(
    runs: pd.DataFrame, metrics: pd.DataFrame, kind: str, tmp_path: Path
) -> None:
    if kind.startswith("time-"):  # simulated time: logged by runs with a [network] section
        clock = metrics[metrics["name"] == "bits_up"].assign(name="sim_time_s")
        metrics = pd.concat([metrics, clock.assign(value=clock["round"] * 0.5)])
    if kind == "client-accuracy-cdf":  # per_client_eval = "all": each client's accuracy
        acc = metrics[metrics["name"] == "test_accuracy"]
        last = acc[acc["round"] == acc.groupby("run_id")["round"].transform("max")]
        per = [last.assign(name=f"client_acc/{i}", value=last["value"] * (0.8 + 0.1 * i))
               for i in range(3)]  # fmt: skip
        metrics = pd.concat([metrics, *per])
    out = rep.plot(runs, metrics, kind, tmp_path / "plots" / f"{kind}.png")
    assert out == tmp_path / "plots" / f"{kind}.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 1000


def test_plot_missing_metric_names_it(
    runs: pd.DataFrame, metrics: pd.DataFrame, tmp_path: Path
) -> None:
    with pytest.raises(rep.ReportError, match="'grad_norm_sq'"):
        rep.plot(runs, metrics, "bits-vs-gradnorm", tmp_path / "g.png")
    assert not (tmp_path / "g.png").exists()
    no_wall = metrics[metrics["name"] != "wall_s"]
    with pytest.raises(rep.ReportError, match="'wall_s'"):
        rep.plot(runs, no_wall, "wall-vs-accuracy", tmp_path / "w.png")


def test_plot_unknown_kind(runs: pd.DataFrame, metrics: pd.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(rep.ReportError, match="allowed: bits-vs-accuracy, rounds-vs-accuracy"):
        rep.plot(runs, metrics, "bits-vs-time", tmp_path / "x.png")


def test_figure_axes_scales_and_labels(runs: pd.DataFrame, metrics: pd.DataFrame) -> None:
    ax = rep.figure(runs, metrics, "bits-vs-accuracy").axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "linear"
    assert ax.get_xlabel() == "uplink bits per client (cumulative, full message)"
    assert ax.get_ylabel() == "test accuracy"
    assert "min–max" in ax.get_legend().get_title().get_text()
    ax = rep.figure(runs, metrics, "rounds-vs-loss", bits="total", per_client=False).axes[0]
    assert ax.get_xscale() == "linear" and ax.get_ylabel() == "train loss"
    ax = rep.figure(runs, metrics, "bits-vs-loss", bits="total", per_client=False).axes[0]
    assert ax.get_xlabel() == "uplink + downlink bits (cumulative, full message)"


def test_figure_loss_falls_back_to_test_loss(runs: pd.DataFrame) -> None:
    metrics = make_metrics(runs, extra=())
    assert rep.figure(runs, metrics, "rounds-vs-loss").axes[0].get_ylabel() == "test loss"


def test_figure_gradnorm_is_log_log(runs: pd.DataFrame, tmp_path: Path) -> None:
    metrics = make_metrics(runs, extra=("grad_norm_sq",))
    ax = rep.figure(runs, metrics, "bits-vs-gradnorm").axes[0]
    assert (ax.get_xscale(), ax.get_yscale()) == ("log", "log")
    assert rep.plot(runs, metrics, "bits-vs-gradnorm", tmp_path / "g.png").stat().st_size > 1000


def test_figure_colour_per_algorithm_style_per_compressor(
    runs: pd.DataFrame, metrics: pd.DataFrame
) -> None:
    lines = {
        ln.get_label(): ln for ln in rep.figure(runs, metrics, "rounds-vs-accuracy").axes[0].lines
    }
    assert set(lines) == {"fedavg + topk", "fedavg + identity", "ef21 + topk", "ef21 + identity"}
    assert lines["fedavg + topk"].get_color() == lines["fedavg + identity"].get_color()
    assert lines["fedavg + topk"].get_color() != lines["ef21 + topk"].get_color()
    assert lines["fedavg + topk"].get_linestyle() == lines["ef21 + topk"].get_linestyle()
    assert lines["fedavg + topk"].get_linestyle() != lines["fedavg + identity"].get_linestyle()
    # the line is the mean over seeds: fedavg + topk at rounds 2, 3 -> 0.6, 0.7
    assert np.allclose(lines["fedavg + topk"].get_ydata(), [0.6, 0.7])
