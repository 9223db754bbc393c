"""Grid and option input that used to end in a traceback or a hang (issue 23, item 11): each is
one line naming what is allowed, exit status 2, and nothing runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import started
from typer.testing import CliRunner

from fedbench import grid as gridlib
from fedbench.cli import app

GRID = '[experiment]\nrounds = 1\n[task]\nclients = 2\n[algorithm]\nname = "fedavg"\n'


def invoke(*args: object) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(r: Any) -> str:
    """The single `error:` line of a refused command (no traceback)."""
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    assert "Traceback" not in r.output
    return lines[0]


@pytest.fixture
def ok(tmp_path: Path) -> Path:
    path = tmp_path / "ok.toml"
    path.write_text(GRID, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("option", "value", "allowed"),
    [
        ("--shard", "²/³", "allowed: i/N with integers 0 <= i < N"),
        ("--shard", "0/٣", "allowed: i/N with integers 0 <= i < N"),  # an Arabic-Indic 3
        ("--workers", "²", "allowed: auto or an integer from 1 to 1024"),
        ("--workers", "10^23", "allowed: auto or an integer from 1 to 1024"),
        ("--workers", str(10**23), "allowed: auto or an integer from 1 to 1024"),
        ("--workers", "0", "allowed: auto or an integer from 1 to 1024"),
        ("--threads", str(10**23), "allowed: an integer from 1 to 1024 (0 = default)"),
        ("--jobs-per-gpu", str(10**23), "allowed: an integer from 1 to 1024"),
    ],
)
def test_bad_option_values_are_one_line(
    ok: Path, tmp_path: Path, option: str, value: str, allowed: str
) -> None:
    db = tmp_path / "r.db"
    line = one_line_error(invoke("run", ok, "--db", db, option, value))
    assert f"{option} {value}: {allowed}" in line, line
    assert not db.exists()  # refused before the database is touched


def test_deeply_nested_toml_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "deep.toml"
    path.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n", encoding="utf-8")
    line = one_line_error(invoke("validate", path, "--no-data"))
    assert f"{path}: invalid TOML: nested more than" in line, line


def test_nesting_within_the_parser_but_beyond_the_limit_is_one_line(tmp_path: Path) -> None:
    """Depth 300 parses, but values that deep would recurse in json.dumps and the job key."""
    text = GRID + '[grid]\n"task.hidden" = ' + "[" * 300 + "]" * 300 + "\n"
    with pytest.raises(gridlib.GridError) as e:
        gridlib.parse(text, Path("g.toml"))
    assert e.value.problems == [
        f"g.toml: invalid TOML: nested more than {gridlib.MAX_DEPTH} levels deep"
    ]


def cli(*args: object, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """fedbench in its own process (a hang there ends in a timeout, not a stuck suite)."""
    return subprocess.run(
        [sys.executable, "-m", "fedbench", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def clis(
    *commands: tuple[object, ...], timeout: float = 60
) -> list[subprocess.CompletedProcess[str]]:
    """`cli` of each command, the processes run at once (each is mostly imports, on one core);
    a process still running after `timeout` seconds is killed and TimeoutExpired raised."""
    with started([[sys.executable, "-m", "fedbench", *map(str, args)] for args in commands]) as ps:
        done = []
        for proc in ps:
            out, err = proc.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
        return done


def test_a_grid_symlinked_to_dev_zero_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "zero.toml"
    path.symlink_to("/dev/zero")
    r = cli("validate", path, "--no-data")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"error: {path}: not a regular file (a character device); a grid is a TOML file"
    ]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_a_fifo_as_grid_is_one_line_not_a_hang(tmp_path: Path) -> None:
    path = tmp_path / "fifo.toml"
    os.mkfifo(path)  # nobody writes: reading it would wait forever
    r, run = clis(("validate", path, "--no-data"), ("run", path, "--db", tmp_path / "r.db"))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"error: {path}: not a regular file (a FIFO); a grid is a TOML file"
    ]
    assert run.returncode == 2 and "not a regular file (a FIFO)" in run.stderr, run.stderr
