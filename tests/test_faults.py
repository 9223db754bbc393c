"""Regression tests of the faults found by trying to break fedbench (issue 17): signals,
checkpoints (untrusted files, other jobs' files, full disks), experiment names, dead pool
workers, grid size, and input that used to end in a traceback."""

from __future__ import annotations

import errno
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import make_env, make_task, run_rounds
from test_algorithms import SWEEP_PARAMS, compatible
from test_leases import BASE_GRID, _wait_for
from test_reliability import rows_per_run, status_and_rounds

from fedbench import checkpoint
from fedbench import grid as gridlib
from fedbench.algorithms import ALGORITHMS

GRID = BASE_GRID.replace('name = "leases"', 'name = "faults"')


def fedbench(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedbench", *args]


def child_env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "FEDBENCH_CHECKPOINTS": str(tmp_path / "ckpt"),
        "OMP_NUM_THREADS": "1",
        "COLUMNS": "200",
    }


# --------------------------------------------------------------------------- signals


@pytest.mark.parametrize(
    ("sig", "workers"),
    [(signal.SIGTERM, "1"), pytest.param(signal.SIGHUP, "2", marks=pytest.mark.slow)],
)
def test_sigterm_and_sighup_behave_like_ctrl_c(tmp_path: Path, sig: int, workers: str) -> None:
    """A real `fedbench run` gets SIGTERM (what timeout, SLURM, Kubernetes send) or SIGHUP
    mid-job: it exits with 128 + the signal, says so, leaves no run `running` (the job in
    flight is pending, its checkpoint kept), and the same command then finishes the grid
    with every round exactly once."""
    rounds = 1000  # ~1 s a job: long enough to be seen mid-way (rounds are ~1 ms here)
    grid = tmp_path / "g.toml"
    grid.write_text(GRID.format(seeds=1, rounds=rounds, ckpt=5))  # 2 jobs: 1 in flight, 1 not begun
    db = tmp_path / "sig.db"
    cmd = fedbench("run", str(grid), "--db", str(db), "--workers", workers)
    env = child_env(tmp_path)
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )

    def mid_way() -> bool:
        try:
            st = status_and_rounds(db)
        except sqlite3.OperationalError:
            return False
        return any(s == "running" and 10 <= r < rounds - 20 for s, r in st.values())

    try:
        _wait_for(mid_way, 600, "a job mid-way")
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, out
    assert f"interrupted ({signal.Signals(sig).name})" in " ".join(out.split())
    after = status_and_rounds(db)
    assert "running" not in {s for s, _ in after.values()}
    assert "pending" in {s for s, _ in after.values()}
    assert list((tmp_path / "ckpt").glob("*.pt"))  # the checkpoint of the job in flight
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr
    assert {s for s, _ in status_and_rounds(db).values()} == {"done"}
    assert all(r == list(range(rounds + 1)) for r in rows_per_run(db).values())


# --------------------------------------------------------------------------- checkpoints


class _Exploit:
    """A pickle that runs a shell command when loaded without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_checkpoint_runs_no_code(tmp_path: Path) -> None:
    """Fault 2: a `.pt` whose object reduces to os.system(...) under the checkpoint directory
    is not executed: it loads as no checkpoint and the run starts from round 0."""
    marker = tmp_path / "PWNED"
    folder = tmp_path / "ckpt"
    folder.mkdir()
    torch.save({"state": _Exploit(marker)}, folder / "aaaa000000000001.pt")
    assert checkpoint.load(folder, "aaaa000000000001", torch.device("cpu")) is None
    assert not marker.exists()


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_algorithm_state_round_trips_through_a_weights_only_checkpoint(
    tmp_path: Path, name: str
) -> None:
    task = make_task(model="mlp", n=8, per_client=10)
    comp = "topk" if "topk" in dict.fromkeys(compatible(name)) else next(iter(compatible(name)))
    env = make_env(task, comp, {"ratio": 0.25}, participation=0.5, batch_size=8)
    state, _, _ = run_rounds(name, SWEEP_PARAMS.get(name, {"lr": 0.1}), env, 2)
    ckpt = checkpoint.Checkpoint(2, state, 1.0, 2.0, 3.0, {"sim_time_s": 4.0})
    checkpoint.save(tmp_path, "k" * 16, ckpt)
    back = checkpoint.load(tmp_path, "k" * 16, torch.device("cpu"))
    assert back is not None and back.round == 2 and back.extra == {"sim_time_s": 4.0}
    assert _same(back.state, state)


def _same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, tuple):
        return type(a) is type(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, list):
        return isinstance(b, list) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b or (a != a and b != b)  # NaN == NaN here


def test_another_jobs_checkpoint_is_ignored_and_the_run_starts_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault 4: seed 0's checkpoint copied into seed 1's place is ignored (the file holds
    its job key); seed 1 runs from round 0 and gives the numbers of a clean run."""
    from test_cli import assert_same_numbers, invoke, run_metrics

    monkeypatch.setenv("FEDBENCH_CHECKPOINTS", str(tmp_path / "ckpt"))
    grid = tmp_path / "g.toml"
    grid.write_text(GRID.format(seeds=2, rounds=6, ckpt=2))
    only = ("--only", "algorithm.name=scaffold")
    ref = tmp_path / "ref.db"
    assert invoke("run", grid, "--db", ref, *only).exit_code == 0
    jobs = [j for j in gridlib.load(grid).jobs if j.algorithm == "scaffold"]
    seed0, seed1 = sorted(jobs, key=lambda j: j.seed)
    folder = tmp_path / "ckpt"
    state, _, _ = run_rounds("fedavg", {"lr": 0.1}, make_env(make_task()), 1)
    checkpoint.save(folder, seed0.key, checkpoint.Checkpoint(4, state, 9e9, 9e9, 0.0, {}))
    (folder / f"{seed0.key}.pt").rename(folder / f"{seed1.key}.pt")
    assert checkpoint.load(folder, seed1.key, torch.device("cpu")) is None
    db = tmp_path / "db.db"
    result = invoke("run", grid, "--db", db, *only)
    assert result.exit_code == 0, result.output
    assert_same_numbers(run_metrics(db, seed1.key), run_metrics(ref, seed1.key))


def test_a_full_disk_stops_checkpoints_not_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """Fault 7: ENOSPC while writing a checkpoint: one warning saying "no space left on
    device", the run ends done with every round, no temporary file is left behind."""
    from test_cli import invoke

    folder = tmp_path / "ckpt"
    monkeypatch.setenv("FEDBENCH_CHECKPOINTS", str(folder))
    written: list[Path] = []

    def full(path: Path, data: object) -> None:
        written.append(path)
        path.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "_write", full)
    grid = tmp_path / "g.toml"
    grid.write_text(GRID.format(seeds=1, rounds=8, ckpt=2))
    db = tmp_path / "full.db"
    result = invoke("run", grid, "--db", db)
    assert result.exit_code == 0, result.output
    err = capfd.readouterr().err + result.output
    assert "no space left on device" in err and "continuing without checkpoints" in err
    assert err.count("no space left on device") == 2  # once per job, not once per save
    assert {s for s, _ in status_and_rounds(db).values()} == {"done"}
    assert all(r == list(range(9)) for r in rows_per_run(db).values())
    assert len(written) == 2 and not list(folder.iterdir())  # tmp files removed
    assert str(os.getpid()) in written[0].name and written[0].name != written[1].name


# --------------------------------------------------------------------------- one-line errors

BASE = (
    '[experiment]\nrounds = 2\neval_every = 1\n[task]\ndataset = "digits"\nmodel = "logreg"\n'
    "clients = 4\n"
)


def _run_error(tmp_path: Path, text: str | bytes, *args: object) -> str:
    from test_cli import assert_clean_error, invoke

    grid = tmp_path / "g.toml"
    if isinstance(text, bytes):
        grid.write_bytes(text)
    else:
        grid.write_text(text)
    (line,) = assert_clean_error(invoke("run", grid, "--db", tmp_path / "e.db", *args))
    return line


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../../../../elsewhere/ESCAPED", "'/'"),
        ("/abs/path", "'/'"),
        ("..", "'..'"),
        ("x" * 5000, "5000 characters"),
        ("bell\x07name", "control characters"),
        ("nul\x00name", "control characters"),
        ("\x1b[2J\x1b]0;pwned\x07", "control characters"),
    ],
)
def test_experiment_names_that_escape_or_break_are_refused(
    tmp_path: Path, name: str, why: str
) -> None:
    """Fault 5 (and NUL of fault 10): refused at validation with one line; the printed line
    holds no escape sequence or control character."""
    toml_name = name.replace("\\", "\\\\").replace('"', '\\"')
    toml_name = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in toml_name)
    line = _run_error(tmp_path, BASE.replace("[task]", f'name = "{toml_name}"\n[task]'))
    assert "[experiment] name" in line and why in line, line
    assert not any(ord(c) < 32 for c in line)
    assert not (tmp_path / "e.db").exists()  # refused before the database is touched


def test_printed_names_and_cells_lose_terminal_escapes() -> None:
    from fedbench.commands.common import plain

    assert plain("a\x1b[31mred\x1b[0m\x1b]0;title\x07b\x00c") == "aredb?c"


def test_a_huge_grid_is_refused_before_expanding_and_the_cap_can_be_raised(
    tmp_path: Path,
) -> None:
    """Fault 8: a grid of 10⁶ jobs and `seeds = 100000000` are refused in well under a second
    (nothing expanded, no row written); --max-jobs raises the cap."""
    axis = ", ".join(str(0.001 * (i + 1)) for i in range(1000))
    text = (
        BASE
        + f'[grid]\n"algorithm.lr" = [{axis}]\n"algorithm.local_steps" = {list(range(1, 1001))}\n'
    )
    start = time.perf_counter()
    line = _run_error(tmp_path, text)
    assert time.perf_counter() - start < 20  # loaded machine: the CLI itself, not the grid
    assert "1000000 jobs" in line and "--max-jobs" in line
    line = _run_error(tmp_path, BASE.replace("rounds = 2", "rounds = 2\nseeds = 100000000"))
    assert "[experiment] seeds" in line and "--max-jobs" in line
    few = BASE.replace("rounds = 2", "rounds = 2\nseeds = 3")
    line = _run_error(tmp_path, few, "--max-jobs", "2")
    assert "3 jobs" in line or "seeds" in line
    g = gridlib.parse(few, Path("g.toml"), max_jobs=3)
    assert len(g.jobs) == 3
    assert not (tmp_path / "e.db").exists()


@pytest.mark.parametrize(
    ("text", "must"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "not a UTF-8 text file"),
        (BASE.replace("rounds = 2", "rounds = 2\nseeds = [18446744073709551615]"), "seeds"),
        ("", "empty grid file"),
        ("# only a comment\n", "empty grid file"),
        (
            BASE.replace('"digits"', '"text:/dev/zero"').replace("logreg", "transformer"),
            "not a regular",
        ),
    ],
    ids=["binary", "seed-overflow", "empty", "comment-only", "dev-zero"],
)
def test_inputs_that_gave_tracebacks_are_one_line_errors(
    tmp_path: Path, text: str | bytes, must: str
) -> None:
    """Fault 9 (and the empty grid of fault 10)."""
    assert must in _run_error(tmp_path, text)


def test_schema_version_that_is_not_a_number_is_one_line(tmp_path: Path) -> None:
    from fedbench.store import Store, StoreError

    db = tmp_path / "v.db"
    Store(str(db)).close()
    with sqlite3.connect(db) as c:
        c.execute("UPDATE meta SET value = 'abc' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="schema_version = 'abc' is not a number"):
        Store(str(db))


def test_export_onto_an_existing_file_is_one_line(tmp_path: Path) -> None:
    from test_cli import assert_clean_error, invoke

    target = tmp_path / "taken"
    target.write_text("keep me")
    (line,) = assert_clean_error(invoke("export", target, "--db", tmp_path / "x.db"))
    assert "not a directory" in line and target.read_text() == "keep me"


def test_a_model_too_big_for_the_machine_is_refused_with_the_estimate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault 10: hidden = [10**7] used to try to allocate 57 GB mid-run; a model the allocator
    refuses is one line too. Checked at a tenth of that size on a machine of 2 GiB (whatever
    this one has): the parameters are counted on a built model, and building 750M of them
    took ~10 s."""
    from fedbench import runner

    monkeypatch.setattr(runner, "_physical_memory", lambda: 2 * 2**30)
    text = BASE.replace('"logreg"', '"mlp"\nhidden = [1000000]')
    line = _run_error(tmp_path, text)
    assert "75000010 parameters: at least 2.2 GiB (8 float32" in line and "2.0 GiB" in line
    text = BASE.replace('"logreg"', '"mlp"\nhidden = [10000000000]')
    line = _run_error(tmp_path, text)
    assert "cannot be built here" in line or "parameters: at least" in line


def test_non_finite_libsvm_data_is_refused_at_load(tmp_path: Path) -> None:
    """Fault 10: NaN labels used to become an extra class, NaN features a `diverged` run."""
    from fedbench.data import DataError
    from fedbench.data.theory import read_libsvm

    good = "1 1:0.5 2:1.0\n-1 1:0.25\n1 2:2.0\n-1 1:1.0\n"
    (tmp_path / "ok.svm").write_text(good)
    x, _ = read_libsvm(tmp_path / "ok.svm", 0)
    assert x.shape == (4, 2)
    (tmp_path / "nan_y.svm").write_text(good + "nan 1:1.0\n")
    with pytest.raises(DataError, match="non-finite label of sample 5"):
        read_libsvm(tmp_path / "nan_y.svm", 0)
    (tmp_path / "nan_x.svm").write_text(good + "1 1:nan 2:inf\n")
    with pytest.raises(DataError, match="non-finite 2 feature"):
        read_libsvm(tmp_path / "nan_x.svm", 0)


def test_foreign_databases_are_refused_untouched(tmp_path: Path) -> None:
    """Fault 10: a database with our table names but no `meta`, or a `metrics` table without
    its primary key, is refused with one line and gets no table added."""
    from fedbench.store import Store, StoreError

    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as c:
        c.execute("CREATE TABLE runs (id INTEGER, name TEXT)")
    with pytest.raises(StoreError, match="not a fedbench database"):
        Store(str(foreign))
    with sqlite3.connect(foreign) as c:
        assert [r[0] for r in c.execute("SELECT name FROM sqlite_master")] == ["runs"]
    nopk = tmp_path / "nopk.db"
    Store(str(nopk)).close()
    with sqlite3.connect(nopk) as c:
        c.execute("DROP TABLE metrics")
        c.execute("CREATE TABLE metrics (run_id INTEGER, round INTEGER, name TEXT, value REAL)")
    with pytest.raises(StoreError, match="metrics has primary key \\(none\\)"):
        Store(str(nopk))


def test_in_memory_database_and_a_second_grid_with_the_same_name(tmp_path: Path) -> None:
    """Fault 10: `--db sqlite:///:memory:` used to say "unknown run key"; a second grid file
    with the same experiment name used to overwrite the stored grid text."""
    from test_cli import invoke

    line = _run_error(tmp_path, BASE, "--db", "sqlite:///:memory:")
    assert "in-memory database" in line
    db = tmp_path / "two.db"
    first = tmp_path / "first.toml"
    first.write_text(BASE.replace("rounds = 2", 'rounds = 2\nname = "same"'))
    assert invoke("run", first, "--db", db).exit_code == 0
    second = tmp_path / "second.toml"
    second.write_text(BASE.replace("rounds = 2", 'rounds = 1\nname = "same"'))
    from test_cli import assert_clean_error

    (line,) = assert_clean_error(invoke("run", second, "--db", db))
    assert "belongs to grid file" in line and "first.toml" in line
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT grid_toml FROM experiments").fetchone()[0] == first.read_text()


def test_shard_splits_the_jobs_by_key(tmp_path: Path) -> None:
    """--shard i/N: the shards are disjoint, cover the grid, and depend only on the keys."""
    from test_cli import assert_clean_error, invoke

    grid = tmp_path / "g.toml"
    grid.write_text(BASE.replace("rounds = 2", "rounds = 2\nseeds = 6"))
    keys = {j.key for j in gridlib.load(grid).jobs}
    seen: list[str] = []
    for i in range(3):
        result = invoke("run", grid, "--db", tmp_path / "s.db", "--shard", f"{i}/3", "--dry-run")
        assert result.exit_code in (0, 2), result.output
        mine = {k for k in keys if int(k, 16) % 3 == i}
        assert all(k in result.output for k in mine)
        assert not any(k in result.output for k in keys - mine)
        seen += sorted(mine)
    assert sorted(seen) == sorted(keys)
    for bad in ("3/3", "1", "-1/2", "a/b"):
        (line,) = assert_clean_error(invoke("run", grid, "--shard", bad, "--dry-run"))
        assert "--shard" in line and "0 <= i < N" in line


def test_run_piped_into_head_stops_cleanly(tmp_path: Path) -> None:
    """Fault 10: `fedbench run | head -1` used to exit 1 silently; now: exit 141 (SIGPIPE),
    one line on stderr, no run left running."""
    grid = tmp_path / "g.toml"
    grid.write_text(GRID.format(seeds=1, rounds=3, ckpt=0))
    db = tmp_path / "pipe.db"
    cmd = " ".join(fedbench("run", str(grid), "--db", str(db)))
    shell = f"{cmd} 2>{tmp_path / 'err'} | head -1; exit ${{PIPESTATUS[0]}}"
    result = subprocess.run(
        ["bash", "-c", shell], env=child_env(tmp_path), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 141, result
    assert result.stdout.count("\n") == 1
    err = (tmp_path / "err").read_text()
    assert "stdout was closed" in err and "Traceback" not in err
    assert "running" not in {s for s, _ in status_and_rounds(db).values()}


def test_a_killed_pool_worker_requeues_its_job_and_the_grid_goes_on(tmp_path: Path) -> None:
    """Fault 6: kill -9 of one pool worker mid-job used to abort the grid with a raw
    BrokenProcessPool traceback and leave runs `running`. Now the jobs in flight go back to
    the queue, a new pool finishes the grid, every round exactly once."""
    rounds = 150
    grid = tmp_path / "g.toml"
    grid.write_text(GRID.format(seeds=2, rounds=rounds, ckpt=10))
    db = tmp_path / "pool.db"
    cmd = fedbench("run", str(grid), "--db", str(db), "--workers", "2")
    proc = subprocess.Popen(
        cmd, env=child_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )

    def worker_mid_way() -> int | None:
        try:
            with sqlite3.connect(db, timeout=30) as c:
                rows = c.execute(
                    "SELECT lease_owner, (SELECT MAX(round) FROM metrics WHERE run_id = runs.id)"
                    " FROM runs WHERE status = 'running'"
                ).fetchall()
        except sqlite3.OperationalError:
            return None
        for owner, r in rows:
            pid = int(str(owner).rsplit(":", 1)[1])
            if r is not None and 10 <= r < rounds - 30 and pid != proc.pid:
                return pid
        return None

    try:
        victim = _wait_for(worker_mid_way, 600, "a pool worker mid-job")
        os.kill(victim, signal.SIGKILL)
        out, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "a worker process died" in " ".join(out.split())
    assert "Traceback" not in out and "BrokenProcessPool" not in out
    assert {s for s, _ in status_and_rounds(db).values()} == {"done"}
    assert all(r == list(range(rounds + 1)) for r in rows_per_run(db).values())


def test_values_that_passed_validation_then_failed_at_run_time_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault 10: lr = 1.7e308 (overflows float32 tensors) and batch_size = 10**9 (a 238 GiB
    minibatch; on a machine of 16 GiB here) are one-line errors before anything runs."""
    from fedbench import runner

    monkeypatch.setattr(runner, "_physical_memory", lambda: 16 * 2**30)
    line = _run_error(tmp_path, BASE + "[algorithm]\nlr = 1.7e308\n")
    assert "algorithm.lr = 1.7e+308" in line and "3.4e38" in line
    line = _run_error(tmp_path, BASE + "[algorithm]\nbatch_size = 1000000000\n")
    assert "batch_size = 1000000000: one minibatch needs 238.4 GiB" in line
    assert "16.0 GiB" in line
