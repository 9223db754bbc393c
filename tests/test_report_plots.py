"""Plots as a researcher reads them: labels, caption, legend placement, markers, diverged
runs, the band and what the legend says about it, metric panels and x axes. Uses the
hand-built experiment of test_report.py (fedavg with 5 local steps, ef21 without)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection
from test_report import make_metrics, make_runs

from fedbench import report as rep
from fedbench.report.plots import band_limits


@pytest.fixture
def runs() -> pd.DataFrame:
    return make_runs()


@pytest.fixture
def metrics(runs: pd.DataFrame) -> pd.DataFrame:
    return make_metrics(runs, extra=("train_loss", "consensus_sq"))


def lines(ax: object) -> dict[str, object]:
    return {ln.get_label(): ln for ln in ax.lines}  # type: ignore[attr-defined]


def test_metric_panels_one_per_metric_one_legend(runs: pd.DataFrame, metrics: pd.DataFrame) -> None:
    fig = rep.figure(runs, metrics, y=["test_accuracy", "consensus_sq", "train_loss"])
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["test accuracy", "consensus sq", "train loss"]
    assert [ax.get_legend() is not None for ax in axes] == [False, False, True]
    assert axes[1].get_yscale() == "log"  # a squared norm, every value positive
    assert fig.get_suptitle() == "exp: test accuracy / consensus sq / train loss vs round"


def test_x_steps_scales_rounds_by_local_steps(runs: pd.DataFrame, metrics: pd.DataFrame) -> None:
    ax = rep.figure(runs, metrics, "rounds-vs-accuracy", x="steps").axes[0]
    got = lines(ax)
    assert np.allclose(got["fedavg + topk"].get_xdata(), [10, 15])  # type: ignore[attr-defined]
    assert np.allclose(got["ef21 + topk"].get_xdata(), [2, 3])  # type: ignore[attr-defined]
    assert ax.get_xlabel() == "inner steps (round × local steps)"
    assert "vs inner steps" in ax.get_title()


def test_bits_down_reaches_the_title(runs: pd.DataFrame, metrics: pd.DataFrame) -> None:
    ax = rep.figure(runs, metrics, "bits-vs-accuracy", bits="down").axes[0]
    assert ax.get_title() == "exp: test accuracy vs downlink bits"
    assert ax.get_xlabel().startswith("downlink bits per client")


def test_band_limits_each_kind(runs: pd.DataFrame, metrics: pd.DataFrame) -> None:
    c = rep.curves(runs, metrics, "round", "test_accuracy")
    row = c[(c["label"] == "fedavg + topk") & (c["round"] == 2)]  # seeds: 0.5, 0.7
    lo, hi = band_limits(row, "minmax")
    assert (lo[0], hi[0]) == pytest.approx((0.5, 0.7))
    std = np.std([0.5, 0.7], ddof=1)
    lo, hi = band_limits(row, "std")
    assert (lo[0], hi[0]) == pytest.approx((0.6 - std, 0.6 + std))
    half = 12.706204736 * std / np.sqrt(2)  # t(0.975, 1 dof) · s / √n
    lo, hi = band_limits(row, "ci95")
    assert (lo[0], hi[0]) == pytest.approx((0.6 - half, 0.6 + half))
    assert band_limits(row, "none") is None
    with pytest.raises(rep.ReportError, match="allowed: minmax, std, ci95, none"):
        band_limits(row, "iqr")


@pytest.mark.parametrize(
    ("band", "title", "filled"),
    [
        ("minmax", "mean over 2 seeds, band: min–max", True),
        ("ci95", "mean over 2 seeds, band: 95% CI (t)", True),
        ("none", "mean over 2 seeds, no band", False),
    ],
)
def test_legend_says_what_the_band_is(
    runs: pd.DataFrame, metrics: pd.DataFrame, band: str, title: str, filled: bool
) -> None:
    ax = rep.figure(runs, metrics, "rounds-vs-accuracy", band=band).axes[0]
    assert ax.get_legend().get_title().get_text() == title
    assert any(isinstance(c, PolyCollection) for c in ax.collections) == filled


def test_one_seed_says_there_is_no_band(runs: pd.DataFrame, metrics: pd.DataFrame) -> None:
    one = runs[runs["seed"] == 0]
    ax = rep.figure(one, metrics, "rounds-vs-accuracy").axes[0]
    assert ax.get_legend().get_title().get_text() == "mean over 1 seed (no band: one seed)"
    assert not any(isinstance(c, PolyCollection) for c in ax.collections)


def test_labels_caption_legend_outside_and_markers(
    runs: pd.DataFrame, metrics: pd.DataFrame
) -> None:
    fedavg = runs[runs["algorithm"] == "fedavg"]
    fig = rep.figure(fedavg, metrics, "rounds-vs-accuracy")
    ax = fig.axes[0]
    got = lines(ax)
    assert set(got) == {"fedavg + topk", "fedavg + identity"}  # algorithm first
    caption = fig._supxlabel.get_text()  # type: ignore[union-attr]
    assert (
        caption.startswith("all runs: fedavg") and "digits" in caption and "clients=10" in caption
    )
    markers = {ln.get_marker() for ln in got.values()}  # type: ignore[attr-defined]
    assert len(markers) == 2
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 >= ax.get_window_extent().x1  # outside the axes, right of the data


def test_diverged_run_is_marked(runs: pd.DataFrame, metrics: pd.DataFrame) -> None:
    runs = runs.copy()
    victim = int(runs.loc[(runs["algorithm"] == "ef21") & (runs["compressor"] == "topk")
                          & (runs["seed"] == 1), "run_id"].item())  # fmt: skip
    runs.loc[runs["run_id"] == victim, "status"] = "diverged"
    gone = (metrics["run_id"] == victim) & (metrics["round"] == 3)
    metrics = metrics[~gone]  # it stopped after round 2
    ax = rep.figure(runs, metrics, "rounds-vs-accuracy").axes[0]
    assert "ef21 + topk (1/2 diverged)" in lines(ax)
    crosses = [c for c in ax.collections if not isinstance(c, PolyCollection)]
    assert len(crosses) == 1
    assert np.allclose(crosses[0].get_offsets(), [[2, 0.72]])  # where it stopped
    runs.loc[(runs["algorithm"] == "ef21") & (runs["compressor"] == "topk"), "status"] = "diverged"
    ax = rep.figure(runs, metrics, "rounds-vs-accuracy").axes[0]
    assert "ef21 + topk (diverged)" in lines(ax)


def test_coinciding_curves_stay_visible(runs: pd.DataFrame, metrics: pd.DataFrame) -> None:
    """Identical curves (same numbers): the one drawn first has bigger markers, every other
    curve hollow markers, so it shows around the one drawn over it."""
    twin = runs.copy()
    twin["run_id"] = twin["run_id"] + 100
    twin["algorithm.name"] = twin["algorithm"] = twin["algorithm"] + "_twin"
    both = pd.concat([runs, twin], ignore_index=True)
    m = pd.concat([metrics, metrics.assign(run_id=metrics["run_id"] + 100)], ignore_index=True)
    drawn = rep.figure(both, m, "rounds-vs-accuracy").axes[0].lines
    sizes = [ln.get_markersize() for ln in drawn]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1]
    assert [ln.get_fillstyle() for ln in drawn[:2]] == ["full", "none"]
    assert np.allclose(drawn[0].get_ydata(), drawn[4].get_ydata())  # fedavg and its twin
