"""Issue 26 (reports you can trust and shape) and issue 23 items 4 and 11 (stored names
escaping on output; atomic outputs), each reproduced against a database or frame written by
hand (no training: seconds)."""

from __future__ import annotations

import errno
import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import finished, started
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.lines import Line2D
from scipy import stats as sps
from typer.testing import CliRunner

from fedbench import report as rep
from fedbench.cli import app
from fedbench.grid import load as load_grid
from fedbench.grid import parse as parse_grid
from fedbench.report import select
from fedbench.report.labels import shared_fields, shared_settings
from fedbench.report.plots import Shape, figure
from fedbench.report.safe import atomic_write, printable, slug
from fedbench.report.stats import bootstrap_ci, compare_values, paired_t, welch_t
from fedbench.report.tables import at_budget
from fedbench.store import RUN_COLUMNS, RunSpec, Store, flatten_config

PNG = b"\x89PNG\r\n\x1a\n"


def invoke(*args: object, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def one_error(result: Any) -> str:
    assert result.exit_code == 2, result.output
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "Traceback" not in result.output
    return lines[0]


def log_runs(store: Store, exp: int, jobs: list[Any], acc: Any, rounds: int = 3) -> list[int]:
    """Runs for these grid jobs, each with rounds 0..rounds of bits and accuracy acc(job, t)."""
    ids = []
    for job in jobs:
        store.ensure_runs(exp, [RunSpec(job.key, job.seed, job.algorithm, job.compressor,
                                        job.dataset, job.model, job.config)])  # fmt: skip
        rid = store.start_run(job.key, host="h", device="cpu")
        for t in range(rounds + 1):
            store.log_round(rid, t, {"bits_up": 1000.0 * t, "test_accuracy": acc(job, t),
                                     "train_loss": 1.0 / (t + 1)})  # fmt: skip
        store.finish_run(rid, "done")
        ids.append(rid)
    return ids


GRID = """[experiment]
name = "{name}"
seeds = [0, 1]
rounds = 3
[task]
dataset = "digits"
model = "logreg"
clients = 4
[algorithm]
name = "fedprox"
[grid]
"algorithm.mu" = [{mus}]
"""


# --------------------------------------------------------------------------- issue 23 item 4


EVIL = "\x1b[31m../../OUTSIDE/pwn$^$\x07"


@pytest.fixture
def evil_db(tmp_path: Path) -> Path:
    db = tmp_path / "evil.db"
    grid = parse_grid(GRID.format(name="safe", mus="0.01"), tmp_path / "g.toml")
    with Store(str(db)) as s:
        exp = s.upsert_experiment(EVIL, "/nonexistent/g.toml", "not = [toml")
        log_runs(s, exp, grid.jobs, lambda j, t: 0.1 * t + 0.05 * j.seed)
    return db


def test_stored_name_never_picks_a_path_nor_reaches_the_terminal(
    evil_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    r = invoke("report", "--db", evil_db, "--plot", "rounds-vs-accuracy", "--html", "h")
    assert r.exit_code == 0, r.output  # "$^$" no longer crashes matplotlib's math text
    assert not (tmp_path / "OUTSIDE").exists() and not (work / "OUTSIDE").exists()
    written = sorted(p.relative_to(work).as_posix() for p in work.rglob("*") if p.is_file())
    assert written == [
        "h/_31m_OUTSIDE_pwn_.html", "results/plots/_31m_OUTSIDE_pwn_-rounds-vs-accuracy.png"
    ]  # fmt: skip
    assert "\x1b" not in r.output and "\x07" not in r.output
    assert "\\x1b[31m../../OUTSIDE/pwn$^$\\x07" in r.stdout  # shown, as visible text
    r = invoke("ls", "--db", evil_db, "--experiments")
    assert r.exit_code == 0 and "\x1b" not in r.output and "\\x1b" in r.output


def test_slug_and_printable() -> None:
    assert slug("../../x") == "_x" and slug("..") == "experiment" and slug(".hidden") == "hidden"
    assert slug("a/b\\c d") == "a_b_c_d" and slug("") == "experiment"
    assert slug("café-1.5") == "cafe-1.5" and len(slug("x" * 500)) == 80
    assert printable("a\x1b[2Jb\u202e\n") == "a\\x1b[2Jb\\u202e\\n"
    assert printable("ε σ ‖∇f‖²") == "ε σ ‖∇f‖²"


# --------------------------------------------------------------------------- issue 23 item 11


def test_out_into_a_directory_is_one_line(evil_db: Path, tmp_path: Path) -> None:
    target = tmp_path / "dir.png"
    target.mkdir()
    line = one_error(invoke("report", "--db", evil_db, "-p", "rounds-vs-accuracy", "--out", target))
    assert "is a directory" in line and str(target) in line


def test_full_disk_leaves_no_partial_file(
    evil_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from matplotlib.figure import Figure

    def full(self: Any, fname: Any, *args: Any, **kwargs: Any) -> None:
        Path(fname).write_bytes(PNG + b"half")  # part of the image made it to disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full)
    out = tmp_path / "plots"
    out.mkdir()
    r = invoke("report", "--db", evil_db, "-p", "rounds-vs-accuracy", "--out", out / "f.png")
    line = one_error(r)
    assert "No space left on device" in line
    assert list(out.iterdir()) == []  # neither f.png nor its temp file

    def full_csv(self: Any, path: Any, *args: Any, **kwargs: Any) -> None:
        Path(path).write_text("run_id,key\n1,")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", full_csv)
    exp = tmp_path / "export"
    assert "No space left" in one_error(invoke("export", exp, "--db", evil_db, "-t", "runs"))
    assert list(exp.iterdir()) == []


def test_export_onto_a_directory_is_one_line(evil_db: Path, tmp_path: Path) -> None:
    (tmp_path / "x" / "runs.csv").mkdir(parents=True)
    line = one_error(invoke("export", tmp_path / "x", "--db", evil_db, "-t", "runs"))
    assert "runs.csv: is a directory" in line


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("old")

    def fail(p: Path) -> None:
        p.write_text("new but cut")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(rep.ReportError, match="No space left"):
        atomic_write(path, fail)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


# --------------------------------------------------------------------------- issue 26 item 1


def edited_prox_study(tmp_path: Path) -> tuple[Path, Path, Any]:
    """(db, grid file, the grid as first run): "algorithm.mu" = [0.01, 0.1] run for every
    job, then edited in place to [0.01, 0.05] (the μ = 0.1 runs are stale)."""
    grid_file = tmp_path / "g.toml"
    grid_file.write_text(GRID.format(name="prox", mus="0.01, 0.1"))
    grid = load_grid(grid_file)
    db = tmp_path / "r.db"
    with Store(str(db)) as s:
        exp = s.upsert_experiment("prox", str(grid_file), grid.text)
        log_runs(s, exp, grid.jobs, lambda j, t: 0.2 * t * (1 + j.config["algorithm"]["mu"]))
    grid_file.write_text(GRID.format(name="prox", mus="0.01, 0.05"))
    return db, grid_file, grid


def test_edited_grid_leaves_stale_runs_out_with_a_note(tmp_path: Path) -> None:
    """Edit "algorithm.mu" = [0.01, 0.1] to [0.01, 0.05] in place: μ = 0.1 runs leave the
    report (named in one note), --all-runs keeps them, stale_runs lists them."""
    db, grid_file, grid = edited_prox_study(tmp_path)
    new = load_grid(grid_file)
    with Store(str(db)) as s:
        stale = select.stale_runs(s, "prox", {j.key for j in new.jobs})
    old_keys = [j.key for j in grid.jobs if j.config["algorithm"]["mu"] == 0.1]
    assert sorted(stale) == sorted(old_keys) and len(stale) == 2
    r = invoke("report", "--db", db, "-e", "prox", "-f", "json")
    rows = json.loads(r.stdout)
    assert [row["label"] for row in rows] == ["fedprox"]  # one configuration left: μ = 0.01
    assert rows[0]["seeds"] == 2
    text = invoke("report", "--db", db, "-e", "prox", "--wide").stdout
    assert "2 runs no longer in the grid" in text and "mu=0.1 seed 0" in text
    rows = json.loads(invoke("report", "--db", db, "-e", "prox", "-f", "json", "--all-runs").stdout)
    assert sorted(row["label"] for row in rows) == ["fedprox, mu=0.01", "fedprox, mu=0.1"]


def test_grid_keys_from_the_child_process_are_current_keys(tmp_path: Path) -> None:
    """`report` expands the grid in a child process (commands/report.start_grid_keys): it
    finds what select.current_keys finds, for the named or the latest experiment, for an
    edited grid file and for a stored grid that does not expand; a job for another
    experiment is not used, and a stopped job leaves no process."""
    from fedbench.commands import report as cmd

    db, grid_file, _ = edited_prox_study(tmp_path)
    with Store(str(db)) as s:
        s.upsert_experiment("broken", str(tmp_path / "gone.toml"), "[experiment\n")
    with Store(str(db)) as s:
        for name in ("prox", "broken"):
            job = cmd.start_grid_keys(str(db), name)
            assert job is not None and job.experiment == name
            assert cmd.grid_keys_of(job, name) == select.current_keys(s, name)
            cmd.stop(job)
        prox = select.current_keys(s, "prox")
    assert prox[0] == {j.key for j in load_grid(grid_file).jobs} and prox[1] == str(grid_file)
    latest = cmd.start_grid_keys(str(db), None)  # the latest experiment
    assert latest is not None and latest.experiment == "broken"
    assert cmd.grid_keys_of(latest, "prox") is None
    cmd.stop(latest)
    assert latest.process.poll() is not None
    assert cmd.start_grid_keys(str(tmp_path / "none.db"), "prox") is None
    assert cmd.start_grid_keys(str(db), "no such experiment") is None


def test_report_through_the_child_process_says_what_in_process_says(tmp_path: Path) -> None:
    """A fresh `python -m fedbench report` (grid expanded in a child process) prints what the
    report in this process (fedbench.grid already imported: expanded in-process) prints."""
    import sys

    db, _, _ = edited_prox_study(tmp_path)
    root = Path(__file__).resolve().parents[1]
    variants = (["-f", "json"], ["--wide"], ["-f", "csv", "--all-runs"])
    commands = [[sys.executable, "-m", "fedbench", "report", "--db", str(db), *args]
                for args in variants]  # fmt: skip
    with started(commands, cwd=root) as procs:
        for args, proc in zip(variants, procs, strict=True):
            stdout = finished(proc, timeout=120)
            assert stdout == invoke("report", "--db", db, *args).stdout
            assert "2 runs no longer in the grid" in stdout or "--wide" not in args


def test_curves_use_finished_runs_only(tmp_path: Path) -> None:
    grid = parse_grid(GRID.format(name="p", mus="0.01"), tmp_path / "g.toml")
    runs, metrics = frames(grid.jobs, lambda j, t: 0.1 * t + 0.5 * j.seed)
    runs.loc[runs["seed"] == 1, "status"] = "pending"
    fig = figure(runs, metrics, "rounds-vs-accuracy", band="none")
    (line,) = [ln for ln in fig.axes[0].get_lines() if not ln.get_label().startswith("_")]
    assert list(line.get_ydata()) == pytest.approx([0.0, 0.1, 0.2, 0.3])  # seed 0 alone
    assert "left out: 1 pending" in fig.get_supxlabel()
    fig = figure(runs, metrics, "rounds-vs-accuracy", band="none", at_common_round=True)
    (line,) = [ln for ln in fig.axes[0].get_lines() if not ln.get_label().startswith("_")]
    assert list(line.get_ydata()) == pytest.approx([0.25, 0.35, 0.45, 0.55])


def frames(jobs: list[Any], acc: Any, rounds: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, metrics) frames as the store gives them, for these grid jobs."""
    rows, ms = [], []
    for i, job in enumerate(jobs, start=1):
        rows.append({"run_id": i, "key": job.key, "experiment": job.experiment, "seed": job.seed,
                     "algorithm": job.algorithm, "compressor": job.compressor,
                     "status": "done", **flatten_config(job.config, RUN_COLUMNS)})  # fmt: skip
        for t in range(rounds + 1):
            ms += [(i, t, "bits_up", 1000.0 * t), (i, t, "test_accuracy", acc(job, t))]
            ms += [(i, t, "train_loss", 1.0 / (t + 1))]
    return pd.DataFrame(rows), pd.DataFrame(ms, columns=["run_id", "round", "name", "value"])


# --------------------------------------------------------------------------- issue 26 item 2

COMPRESSORS = """[experiment]
name = "c"
[task]
dataset = "digits"
model = "logreg"
clients = 4
[algorithm]
name = "fedavg"
[grid]
"compressor.name" = ["identity", "topk", "randk", "qsgd", "natural"]
"""


def compressor_pool() -> list[dict[str, Any]]:
    """Real resolved configs: each compressor at two settings of the fields it takes."""
    grid = parse_grid(COMPRESSORS, Path("c.toml"))
    pool = []
    for job in grid.jobs:
        pool.append(job.config)
        cfg = {s: dict(v) for s, v in job.config.items()}
        for k, v in cfg["compressor"].items():
            if isinstance(v, float) and k != "bits":
                cfg["compressor"][k] = v / 2
            elif isinstance(v, int) and not isinstance(v, bool):
                cfg["compressor"][k] = v + 1
        pool.append(cfg)
    return pool


POOL = compressor_pool()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, len(POOL) - 1), min_size=1, max_size=8))
def test_caption_states_only_what_every_run_shares(picks: list[int]) -> None:
    runs = pd.DataFrame(
        [{"run_id": i, **flatten_config(POOL[p], RUN_COLUMNS)} for i, p in enumerate(picks)]
    )
    shared = shared_fields(runs)
    for col, value in shared.items():
        for p in picks:
            section, _, field = col.partition(".")
            assert POOL[p][section].get(field) == value, (col, value, p)
    caption = shared_settings(runs)
    for section_field in ("compressor.ratio", "compressor.levels", "compressor.k"):
        last = section_field.rpartition(".")[2]
        if any(last not in POOL[p]["compressor"] for p in picks):
            assert f"{last}=" not in caption
    names = {POOL[p]["compressor"]["name"] for p in picks}
    assert (f"compressor {next(iter(names))}" in caption) == (len(names) == 1)


def test_labels_leave_out_bookkeeping_and_print_integers() -> None:
    runs = pd.DataFrame({
        "run_id": [1, 2, 3, 4],
        "algorithm.name": ["fedavg", "fedavg", "scaffold", "scaffold"],
        "algorithm.local_steps": [16.0, 8.0, np.nan, np.nan],
        "experiment.rounds": [100, 100, 50, 50],
        "experiment.eval_every": [2, 2, 5, 5],
        "network.deadline_s": [0.0, 0.0, 1.0, 1.0],
    })  # fmt: skip
    labels = rep.config_labels(runs).tolist()
    assert labels == ["fedavg, local_steps=16", "fedavg, local_steps=8", "scaffold", "scaffold"]
    axis = pd.DataFrame({"run_id": [1, 2], "algorithm.name": ["fedavg"] * 2,
                         "experiment.rounds": [50, 100]})  # fmt: skip
    assert rep.config_labels(axis).tolist() == ["fedavg, rounds=50", "fedavg, rounds=100"]


def test_accuracy_bands_stay_in_0_1_and_no_dp_is_said(tmp_path: Path) -> None:
    grid = parse_grid(GRID.format(name="p", mus="0.01, 0.1"), tmp_path / "g.toml")
    runs, metrics = frames(grid.jobs, lambda j, t: [0.02, 0.98][j.seed] if t else 0.0)
    fig = figure(runs, metrics, "rounds-vs-accuracy", band="ci95")
    for poly in fig.axes[0].collections:
        ys = np.concatenate([p.vertices[:, 1] for p in poly.get_paths()])
        assert ys.min() >= 0.0 and ys.max() <= 1.0
    # ε logged only by the μ = 0.01 runs (σ > 0): the others say "no DP" in the legend
    eps = metrics[metrics["name"] == "test_accuracy"].assign(name="epsilon")
    eps = eps[eps["run_id"].isin(runs.loc[runs["algorithm.mu"] == 0.01, "run_id"])]
    both = pd.concat([metrics, eps.assign(value=eps["round"] + 1.0)])
    fig = figure(runs, both, None, y=["test_accuracy", "epsilon"])
    legend = [t.get_text() for t in fig.axes[-1].get_legend().get_texts()]
    assert legend == ["fedprox, mu=0.01", "fedprox, mu=0.1 (no DP)"]


# --------------------------------------------------------------------------- issue 26 item 3


def dp_frame() -> tuple[pd.DataFrame, pd.DataFrame]:
    """12 configurations: σ ∈ {0.5, 1, 2, 4} × compressor ∈ {identity, topk, randk}."""
    rows, ms = [], []
    i = 0
    for sigma in (0.5, 1.0, 2.0, 4.0):
        for comp in ("identity", "topk", "randk"):
            i += 1
            rows.append({"run_id": i, "seed": 0, "status": "done", "algorithm.name": "dp_fedavg",
                         "privacy.noise_multiplier": sigma, "compressor.name": comp,
                         "task.clients": 10})  # fmt: skip
            for t in range(5):
                ms += [(i, t, "test_accuracy", 0.1 * t / sigma + 0.01 * i)]
    return pd.DataFrame(rows), pd.DataFrame(ms, columns=["run_id", "round", "name", "value"])


def test_color_by_and_style_by_on_twelve_curves() -> None:
    runs, metrics = dp_frame()
    shape = Shape(color_by="noise_multiplier", style_by="compressor.name")
    fig = figure(runs, metrics, "rounds-vs-accuracy", shape=shape)
    lines = [ln for ln in fig.axes[0].get_lines() if isinstance(ln, Line2D)]
    assert len(lines) == 12
    by_sigma: dict[str, set[Any]] = {}
    by_comp: dict[str, set[Any]] = {}
    for ln in lines:
        sigma = ln.get_label().split("noise_multiplier=")[1]
        comp = ln.get_label().split(" + ")[1].split(",")[0]
        by_sigma.setdefault(sigma, set()).add(ln.get_color() if isinstance(ln.get_color(), str)
                                              else tuple(ln.get_color()))  # fmt: skip
        by_comp.setdefault(comp, set()).add((ln.get_linestyle(), ln.get_marker()))
    assert len(by_sigma) == 4 and all(len(c) == 1 for c in by_sigma.values())
    assert len({next(iter(c)) for c in by_sigma.values()}) == 4  # four distinct colours
    assert len(by_comp) == 3 and all(len(s) == 1 for s in by_comp.values())
    assert len({next(iter(s)) for s in by_comp.values()}) == 3  # three distinct styles
    # --where keeps a subset; --smooth is stated; --logy and limits are applied
    sub = select.where(runs, ["noise_multiplier=1,2", "compressor.name=topk"])
    assert sorted(sub["run_id"]) == [5, 8]
    fig = figure(sub, metrics, "rounds-vs-accuracy",
                 shape=Shape(smooth=2, logy=True, xlim=(1, 4), ylim=(0.01, 1)))  # fmt: skip
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and ax.get_xlim() == (1, 4) and ax.get_ylim() == (0.01, 1)
    assert "moving average over 2 evaluations" in fig.get_supxlabel()
    first = ax.get_lines()[0].get_ydata()
    raw = [0.1 * t / 1.0 + 0.05 for t in range(5)]
    assert list(first) == pytest.approx(
        [raw[0], *((a + b) / 2 for a, b in itertools.pairwise(raw))]
    )


def test_where_refuses_what_matches_nothing() -> None:
    runs, _ = dp_frame()
    with pytest.raises(rep.ReportError, match=r"no run has compressor\.name in qsgd"):
        select.where(runs, ["compressor.name=qsgd"])
    with pytest.raises(rep.ReportError, match="FIELD=VALUE"):
        select.where(runs, ["compressor.name"])


def test_table_fits_the_terminal(tmp_path: Path) -> None:
    grid = parse_grid(GRID.format(name="w", mus="0.01, 0.1"), tmp_path / "g.toml")
    db = tmp_path / "w.db"
    with Store(str(db)) as s:
        log_runs(s, s.upsert_experiment("w", "/nowhere.toml", grid.text), grid.jobs,
                 lambda j, t: 0.2 * t)  # fmt: skip
    args = ("report", "--db", db, "--target-accuracy", "0.3", "--budget", "bits=1500")
    narrow = invoke(*args, env={"COLUMNS": "60"}).stdout
    table = narrow.split("±")[0].splitlines()
    assert max(len(line) for line in table) <= 60
    assert "(--wide shows all)" in narrow
    wide = invoke(*args, "--wide", env={"COLUMNS": "60"}).stdout
    assert "--wide shows all" not in wide and max(map(len, wide.splitlines())) > 60


# --------------------------------------------------------------------------- issue 26 item 4


def test_metric_at_budget_is_interpolated_between_evaluations(tmp_path: Path) -> None:
    grid = parse_grid(GRID.format(name="b", mus="0.01"), tmp_path / "g.toml")
    runs, metrics = frames(grid.jobs, lambda j, t: 0.2 * t + 0.1 * j.seed)
    # bits per client: 1000 t / 4 clients = 250 t; 600 bits lies 40% from round 2 to 3
    got = at_budget(runs, metrics, "bits", 600.0)["test_accuracy_at_bits=600"]
    assert got.tolist() == pytest.approx([0.48, 0.58])
    over = at_budget(runs, metrics, "bits", 1e6)["test_accuracy_at_bits=1e+06"]
    assert over.isna().all()  # no run spent that much: never extrapolated
    table = rep.summary(runs, metrics, budgets=[("bits", 600.0)])
    assert table["test_accuracy_at_bits=600_mean"].iloc[0] == pytest.approx(0.53)
    with pytest.raises(rep.ReportError, match="sim_time_s"):
        at_budget(runs, metrics, "time", 100.0)


def test_time_and_epsilon_columns(tmp_path: Path) -> None:
    grid = parse_grid(GRID.format(name="b", mus="0.01"), tmp_path / "g.toml")
    runs, metrics = frames(grid.jobs, lambda j, t: 0.2 * t)
    extra = metrics[metrics["name"] == "bits_up"]
    metrics = pd.concat([metrics, extra.assign(name="sim_time_s", value=extra["round"] * 10.0),
                         extra.assign(name="epsilon", value=extra["round"] * 0.5)])  # fmt: skip
    runs["privacy.delta"] = 1e-5
    t = rep.summary(runs, metrics, target_accuracy=0.4, budgets=[("time", 15.0)])
    assert t["time_to_target_mean"].iloc[0] == 20.0 and t["time_mean"].iloc[0] == 30.0
    assert t["epsilon_mean"].iloc[0] == 1.5
    assert t["test_accuracy_at_time=15_mean"].iloc[0] == pytest.approx(0.3)
    text = rep.render(t, "table", title="b")
    assert "(target accuracy 0.4)" in text and "ε" in text and "δ = 1e-05" in text
    assert "sim s to acc ≥ 0.4" in text and "interpolated linearly" in text
    assert all(r["target_accuracy"] == 0.4 for r in json.loads(rep.render(t, "json")))


# --------------------------------------------------------------------------- issue 26 item 6

HAND = pd.DataFrame(  # final accuracy per seed of rows A and B
    {"seed": [0, 1, 2, 3, 4], "a": [0.81, 0.78, 0.84, 0.80, 0.79],
     "b": [0.78, 0.77, 0.80, 0.79, 0.74]}
)  # fmt: skip


def test_paired_and_welch_tests_match_scipy() -> None:
    a, b = HAND["a"].to_numpy(), HAND["b"].to_numpy()
    mine, ref = paired_t(a, b), sps.ttest_rel(a, b)
    assert mine.t == pytest.approx(ref.statistic) and mine.p == pytest.approx(ref.pvalue)
    assert mine.df == 4
    mine, ref = welch_t(a, b[:4]), sps.ttest_ind(a, b[:4], equal_var=False)
    assert mine.t == pytest.approx(ref.statistic) and mine.p == pytest.approx(ref.pvalue)
    # same seeds -> paired; other seeds -> Welch; the CI is seeded
    out = compare_values(pd.Series(a, index=HAND["seed"]), pd.Series(b, index=HAND["seed"]), "acc")
    assert out["test"] == "paired" and out["p_value"] == pytest.approx(sps.ttest_rel(a, b).pvalue)
    lo, hi = bootstrap_ci(a, b, paired=True)
    assert (lo, hi) == bootstrap_ci(a, b, paired=True) and lo < np.mean(a - b) < hi
    out = compare_values(pd.Series(a), pd.Series(b[:4], index=[5, 6, 7, 8]), "acc")
    assert out["test"] == "Welch" and out["n_a"] == 5 and out["n_b"] == 4


def test_compare_command_and_one_test_sample_note(tmp_path: Path) -> None:
    grid_file = tmp_path / "g.toml"
    grid_file.write_text(GRID.format(name="cmp", mus="0.01, 0.1").replace("[0, 1]", "[0, 1, 2]"))
    grid = load_grid(grid_file)
    db = tmp_path / "c.db"

    def acc(job: Any, t: int) -> float:  # a test set of 359 samples: accuracies k/359
        k = 200 + 30 * job.seed + (1 if job.config["algorithm"]["mu"] == 0.1 else 0) * job.seed
        return k / 359 * t / 3

    with Store(str(db)) as s:
        log_runs(s, s.upsert_experiment("cmp", str(grid_file), grid.text), grid.jobs, acc)
    r = invoke("report", "--db", db, "--compare", "fedprox, mu=0.1,fedprox, mu=0.01", "--wide")
    assert r.exit_code != 0  # a label with a comma cannot be named in A,B
    r = invoke("report", "--db", db, "--baseline", "fedprox, mu=0.01", "--compare", "baseline",
               "--wide")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "paired" in r.stdout and "B = 10000" in r.stdout
    a = np.array([200, 231, 262]) / 359
    b = np.array([200, 230, 260]) / 359
    assert f"{sps.ttest_rel(a, b).pvalue:.4g}" in r.stdout
    assert "below one test sample (1/359" in r.stdout


def test_compare_refuses_unknown_rows(tmp_path: Path) -> None:
    grid = parse_grid(GRID.format(name="p", mus="0.01, 0.1"), tmp_path / "g.toml")
    runs, metrics = frames(grid.jobs, lambda j, t: 0.1 * t)
    from fedbench.report.stats import compare

    labels = rep.config_labels(runs)
    with pytest.raises(rep.ReportError, match="no finished runs with this label"):
        compare(runs, metrics, labels, [("nope", "fedprox, mu=0.1")])
    assert math.isnan(compare(runs, metrics, labels, [("fedprox, mu=0.01", "fedprox, mu=0.1")])[
        "p_value"].iloc[0])  # identical values: no test  # fmt: skip
