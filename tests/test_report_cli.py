"""`fedbench report` options, the tidy results frame, the HTML page and `export --experiment`,
against a database written by hand through the Store API (no training: seconds).

Experiment "exp": {fedavg (local_steps=5), ef21 (no local_steps)} × {topk (ratio=0.01),
identity} × seeds {0, 1}, 10 clients, rounds 1..3, evaluated at rounds 2 and 3. Uplink bits
per round: topk 1000, identity 32000 (all clients). Test accuracy at rounds (2, 3) in ACC.
Experiment "mixed": one done fedavg run, one diverged (inf train loss at round 2), one failed.
"""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fedbench import report as rep
from fedbench.cli import app
from fedbench.store import RunSpec, Store

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
UP = {"topk": 1000.0, "identity": 32000.0}
GRID = '[experiment]\nname = "exp"\n[grid]\n"algorithm.name" = ["fedavg", "ef21"]\n'
PNG = b"\x89PNG\r\n\x1a\n"


def config(algo: str, comp: str, name: str = "exp", lr: float = 0.1) -> dict[str, Any]:
    alg: dict[str, Any] = {"name": algo, "lr": lr}
    if algo == "fedavg":
        alg["local_steps"] = 5
    cmp: dict[str, Any] = {"name": comp}
    if comp == "topk":
        cmp["ratio"] = 0.01
    return {
        "experiment": {"name": name, "rounds": 3},
        "task": {"dataset": "digits", "model": "mlp", "clients": 10},
        "algorithm": alg,
        "compressor": cmp,
    }


def add_run(
    store: Store, exp_id: int, key: str, algo: str, comp: str, seed: int, cfg: dict[str, Any]
) -> int:
    store.ensure_runs(exp_id, [RunSpec(key, seed, algo, comp, "digits", "mlp", cfg)])
    return store.start_run(key, host="testhost", device="cpu")


def build_db(path: Path) -> Path:
    with Store(str(path)) as s:
        exp = s.upsert_experiment("exp", "grids/exp.toml", GRID)
        for i, (algo, comp, seed) in enumerate(ACC):
            rid = add_run(s, exp, f"{i:02d}exp{algo}{comp}{seed}", algo, comp, seed,
                          config(algo, comp))  # fmt: skip
            for t in (1, 2, 3):
                m = {"bits_up": t * UP[comp], "bits_down": t * 500.0, "wall_s": t * 0.5,
                     "train_loss": 2.0 / t + seed, "consensus_sq": 10.0 ** -t}  # fmt: skip
                if t >= 2:
                    acc = ACC[(algo, comp, seed)][t - 2]
                    m |= {"test_accuracy": acc, "test_loss": 1.0 - acc}
                s.log_round(rid, t, m)
            s.finish_run(rid, "done")
        mixed = s.upsert_experiment("mixed", "grids/mixed.toml", '[experiment]\nname = "mixed"\n')
        for seed, status in enumerate(("done", "diverged", "failed")):
            rid = add_run(s, mixed, f"mixed{seed:04d}", "fedavg", "topk", seed,
                          config("fedavg", "topk", "mixed"))  # fmt: skip
            for t in (1, 2, 3):
                if status == "failed" and t > 1:
                    break
                loss = float("inf") if status == "diverged" and t >= 2 else 2.0 / t
                s.log_round(rid, t, {"bits_up": t * 1000.0, "train_loss": loss,
                                     "test_accuracy": 0.3 * t})  # fmt: skip
                if status == "diverged" and t >= 2:
                    break
            s.finish_run(rid, status, "RuntimeError: boom <b>" if status == "failed" else None)
    return path


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_db(tmp_path_factory.mktemp("report") / "r.db")


def invoke(*args: object) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def refused(result: Any) -> str:
    """The one error line of a refused command; nothing on stdout, no traceback."""
    assert result.exit_code == 2, result.output
    assert result.stdout == "", result.stdout  # checked before any output
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


# --------------------------------------------------------------------------- plot options


def test_plot_comma_list_writes_each_figure(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    r = invoke("report", "--db", db, "-e", "exp", "--plot", "bits-vs-accuracy,rounds-vs-loss",
               "--plot", "wall-vs-accuracy")  # fmt: skip
    assert r.exit_code == 0, r.output
    for kind in ("bits-vs-accuracy", "rounds-vs-loss", "wall-vs-accuracy"):
        png = tmp_path / "results" / "plots" / f"exp-{kind}.png"
        assert png.read_bytes()[:8] == PNG, kind
        assert f"wrote {png.relative_to(tmp_path)}" in r.stdout


def test_metric_panels_and_x_axis(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.png"
    r = invoke("report", "--db", db, "-e", "exp", "--metric", "consensus_sq,train_loss",
               "--x", "steps", "--band", "std", "--out", out)  # fmt: skip
    assert r.exit_code == 0, r.output
    assert out.read_bytes()[:8] == PNG


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--plot", "bits-vs-accuracy,bogus"], ["--plot bogus", "rounds-vs-accuracy"]),
        (["--plot", "rounds-vs-acuracy"], ["did you mean rounds-vs-accuracy"]),
        (["--band", "sd"], ["--band sd", "minmax, std, ci95, none"]),
        (["--bits", "upp"], ["--bits upp", "did you mean up"]),
        (["--format", "xml"], ["--format xml"]),
        (["--metric", "perplexity"], ["--metric perplexity", "not logged", "consensus_sq"]),
        (["--metric", "train_los"], ["did you mean train_loss"]),
        (["--metric", "train_loss", "--x", "stepz"], ["--x stepz", "did you mean steps"]),
        (["--x", "bits"], ["--x sets the x axis"]),
        (["--target-accuracy", "85"], ["(0, 1]", "did you mean 0.85"]),
        (["--target-accuracy", "0"], ["(0, 1]"]),
        (["--plot", "bits-vs-gradnorm"], ["grad_norm_sq"]),  # kind without its metric
        (["--group-by", "nope"], ["'nope' is unknown"]),
        (["--baseline", "fedavg"], ["matches 2 rows", "fedavg + topk"]),
        (["--baseline", "fedav + topk"], ["did you mean 'fedavg + topk'"]),
        (["--plot", "rounds-vs-loss", "--metric", "train_loss", "--out", "x.png"], ["one file"]),
        (["--html", __file__], ["is a file; give a directory"]),
    ],
)
def test_bad_options_are_refused_before_any_output(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], words: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    line = refused(invoke("report", "--db", db, "-e", "exp", *args))
    for w in words:
        assert w in line, (w, line)
    assert list(tmp_path.iterdir()) == []  # no plot, no directory


# --------------------------------------------------------------------------- tables


def test_strict_group_by_names_what_it_pools(db: Path) -> None:
    r = invoke("report", "--db", db, "-e", "exp", "--group-by", "compressor.ratio", "-f", "json")
    rows = {row["label"]: row for row in json.loads(r.stdout)}
    # ratio only for topk: identity runs are their own row, never named after an algorithm
    assert set(rows) == {"ratio=0.01", "(no ratio)"}
    assert rows["ratio=0.01"]["runs"] == 4  # fedavg and ef21 pooled: runs, not seeds (issue 26)
    assert all("seeds" not in row for row in rows.values())
    topk = [a[1] for k, a in ACC.items() if k[1] == "topk"]
    assert rows["ratio=0.01"]["final_accuracy_mean"] == pytest.approx(np.mean(topk))
    assert rows["ratio=0.01"]["final_accuracy_std"] == pytest.approx(np.std(topk, ddof=1))
    text = invoke("report", "--db", db, "-e", "exp", "--group-by", "compressor.ratio").stdout
    assert "pooled in rows: algorithm.name (fedavg, ef21)" in text
    assert "± = sample std over the runs of a row (seeds and pooled configurations)" in text
    assert "± = sample std over seeds" in invoke("report", "--db", db, "-e", "exp").stdout


def test_baseline_columns(db: Path) -> None:
    r = invoke("report", "--db", db, "-e", "exp", "--baseline", "fedavg + identity",
               "--target-accuracy", "0.6", "-f", "json")  # fmt: skip
    assert r.exit_code == 0, r.output
    rows = {row["label"]: row for row in json.loads(r.stdout)}
    # fedavg + identity: both seeds reach 0.6 at round 2 -> 2 * 32000 / 10 bits per client;
    # fedavg + topk: seed 0 at round 3 (300), seed 1 at round 2 (200) -> mean 250
    base = rows["fedavg + identity"]
    assert base["bits_to_target_mean"] == pytest.approx(6400.0)
    assert rows["fedavg + topk"]["bits_to_target_mean"] == pytest.approx(250.0)
    assert rows["fedavg + topk"]["x_fewer_bits_to_target"] == pytest.approx(6400.0 / 250.0)
    assert base["x_fewer_bits_to_target"] == pytest.approx(1.0)
    assert rows["ef21 + identity"]["x_fewer_bits_to_target"] is None  # never reached
    assert rows["fedavg + topk"]["delta_final_accuracy"] == pytest.approx(0.7 - 0.875)
    text = invoke("report", "--db", db, "-e", "exp", "--baseline", "fedavg + identity",
                  "--target-accuracy", "0.6").stdout  # fmt: skip
    assert "× fewer bits to target" in text and "25.6×" in text and "-0.175" in text
    assert "relative to: fedavg + identity" in text
    # without a target: bits at the last round; an algorithm name with one row is enough
    ef = rep.summary(*rep.load(Store(str(db)), "exp"), group_by=["algorithm.name"],
                     baseline="ef21")  # fmt: skip
    assert ef.attrs["baseline"] == "ef21"
    assert "x_fewer_bits" in ef.columns and "x_fewer_bits_to_target" not in ef.columns


# --------------------------------------------------------------------------- tidy frame


def test_tidy_frame_one_row_per_run_and_round(db: Path) -> None:
    df = rep.load_frame("exp", db=str(db))
    assert len(df) == 8 * 3
    assert df.groupby("run_id")["round"].apply(list).tolist() == [[1, 2, 3]] * 8
    for col in ("run_id", "key", "seed", "status", "round", "algorithm.name", "compressor.ratio",
                "task.clients", "test_accuracy", "bits_up", "consensus_sq"):  # fmt: skip
        assert col in df.columns, col
    assert list(df.columns).index("round") < list(df.columns).index("algorithm.name")
    row = df[(df["algorithm.name"] == "ef21") & (df["compressor.name"] == "topk")
             & (df["seed"] == 1) & (df["round"] == 3)]  # fmt: skip
    assert row["test_accuracy"].item() == 0.5 and row["bits_up"].item() == 3000.0
    assert np.isnan(df.loc[df["round"] == 1, "test_accuracy"]).all()  # not evaluated
    assert df.attrs["metrics"] == sorted(df.attrs["metrics"])


def test_tidy_and_split_round_trip(db: Path) -> None:
    with Store(str(db)) as s:
        runs = s.runs_frame(experiment="mixed")
        metrics = s.metrics_frame(list(runs["run_id"]))
    frame = rep.tidy(runs, metrics)
    back_runs, back_metrics = rep.split(frame)
    pd.testing.assert_frame_equal(back_metrics, metrics.reset_index(drop=True))
    pd.testing.assert_frame_equal(back_runs, runs[back_runs.columns])
    # the metric columns are found without attrs too (a frame read back from CSV)
    frame.attrs = {}
    pd.testing.assert_frame_equal(rep.split(frame)[1], metrics.reset_index(drop=True))


def test_the_frame_knows_every_run_column_of_the_store() -> None:
    """split() tells run columns from metrics by name: a run column the store adds (e.g. the
    lease columns) must be listed in report.frame.RUN_FIELDS, or it is read as a metric."""
    from fedbench.report.frame import RUN_FIELDS
    from fedbench.store import RUN_COLUMNS

    assert set(RUN_FIELDS) == set(RUN_COLUMNS)


def test_run_without_metrics_keeps_a_row(db: Path, tmp_path: Path) -> None:
    path = build_db(tmp_path / "p.db")
    with Store(str(path)) as s:
        exp = s.upsert_experiment("exp", "g", GRID)
        s.ensure_runs(exp, [RunSpec("pendingkey", 0, "fedavg", "topk", "digits", "mlp",
                                    config("fedavg", "topk"))])  # fmt: skip
    df = rep.load_frame("exp", db=str(path))
    pending = df[df["key"] == "pendingkey"]
    assert len(pending) == 1 and pending["round"].isna().all()
    assert pending["status"].item() == "pending"


def test_export_experiment_writes_the_tidy_frame(db: Path, tmp_path: Path) -> None:
    r = invoke("export", tmp_path / "out", "--db", db, "--experiment", "exp")
    assert r.exit_code == 0, r.output
    df = pd.read_csv(tmp_path / "out" / "exp.csv")
    assert len(df) == 24 and {"round", "algorithm.name", "test_accuracy"} <= set(df.columns)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["exp.csv"]
    refused(invoke("export", tmp_path / "o2", "--db", db, "--experiment", "nope"))
    assert not (tmp_path / "o2").exists()


# --------------------------------------------------------------------------- read-only commands


@pytest.mark.parametrize(
    "args",
    [["ls"], ["ls", "--experiments"], ["show", "1"], ["report"], ["export", "OUT"],
     ["prune", "GRID"]],
)  # fmt: skip
def test_read_only_commands_refuse_a_missing_db(
    args: list[str], tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    grid = tmp_path_factory.mktemp("grid") / "g.toml"
    grid.write_text(GRID, encoding="utf-8")
    missing = tmp_path / "typo.db"
    args = [{"OUT": str(tmp_path / "out"), "GRID": str(grid)}.get(a, a) for a in args]
    line = refused(invoke(*args, "--db", missing))
    assert "typo.db" in line and "no such database file" in line
    assert list(tmp_path.iterdir()) == []  # neither the database nor an output directory


# --------------------------------------------------------------------------- HTML page


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[dict[str, str | None]] = []
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(dict(attrs))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_html_page_is_self_contained(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "html"
    r = invoke("report", "--db", db, "-e", "exp", "--html", out, "--metric", "consensus_sq")
    assert r.exit_code == 0, r.output
    (page,) = list(out.iterdir())
    assert page.name == "exp.html"
    parsed = _Page()
    parsed.feed(page.read_text(encoding="utf-8"))
    # the extra --metric figure and every plot kind the runs have metrics for (not gradnorm,
    # not time: no grad_norm_sq, no sim_time_s); the other metrics against rounds are the
    # --metric figure itself (consensus_sq), shown once (issue 26: no repeated figure)
    assert len(parsed.imgs) == 1 + 5
    assert len({img["src"] for img in parsed.imgs}) == len(parsed.imgs)
    for img in parsed.imgs:
        src = img["src"] or ""
        assert src.startswith("data:image/png;base64,"), src[:40]
        assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG
        assert img["alt"]
    assert not any(t in parsed.tags for t in ("script", "link", "iframe"))
    text = " ".join(parsed.text)
    for label in ("fedavg + topk", "ef21 + identity"):
        assert label in text
    assert '"algorithm.name" = ["fedavg", "ef21"]' in text  # the grid
    assert "grids/exp.toml" in text and "testhost" in text
    assert "± = sample std over seeds" in text


def test_html_lists_failed_and_diverged_runs(db: Path, tmp_path: Path) -> None:
    r = invoke("report", "--db", db, "-e", "mixed", "--html", tmp_path)
    assert r.exit_code == 0, r.output
    html = (tmp_path / "mixed.html").read_text(encoding="utf-8")
    assert "RuntimeError: boom &lt;b&gt;" in html  # escaped
    assert "non-finite" in html and "diverged" in html


# --------------------------------------------------------------------------- prune

PRUNE_GRID = """
[experiment]
name = "pr"
seeds = [0]
rounds = 2
[task]
dataset = "digits"
model = "logreg"
clients = 5
[grid]
"algorithm.name" = ["fedavg", "scaffold"]
"""


def test_prune_lists_then_deletes_only_superseded_runs(tmp_path: Path) -> None:
    from fedbench import grid as gridlib

    grid = tmp_path / "pr.toml"
    grid.write_text(PRUNE_GRID, encoding="utf-8")
    jobs = gridlib.load(grid).jobs
    path = build_db(tmp_path / "pr.db")
    with Store(str(path)) as s:
        exp = s.upsert_experiment("pr", str(grid), PRUNE_GRID)
        specs = [RunSpec(j.key, j.seed, j.algorithm, j.compressor, j.dataset, j.model,
                         gridlib.run_config(j)) for j in jobs]  # fmt: skip
        specs.append(RunSpec("stale0000", 0, "fedprox", "identity", "digits", "logreg", {}))
        s.ensure_runs(exp, specs)
        rid = s.start_run("stale0000", "h", "cpu")
        s.log_round(rid, 1, {"train_loss": 1.0})
        before = len(s.runs_frame())
    dry = invoke("prune", grid, "--db", path)
    assert dry.exit_code == 0, dry.output
    assert "stale0000" in dry.stdout and "dry run" in dry.stdout
    with Store(str(path)) as s:
        assert len(s.runs_frame()) == before  # nothing deleted yet
    done = invoke("prune", grid, "--db", path, "--yes")
    assert done.exit_code == 0, done.output
    assert "deleted 1 runs" in done.stdout
    with Store(str(path)) as s:
        assert sorted(s.runs_frame(experiment="pr")["key"]) == sorted(j.key for j in jobs)
        assert len(s.runs_frame(experiment="exp")) == 8  # other experiments untouched
        assert s.metrics_frame([rid]).empty
    again = invoke("prune", grid, "--db", path)
    assert again.exit_code == 0 and "nothing to prune" in again.stdout
