"""`fedbench new algorithm` (issue 27): each template writes a plugin that passes
`fedbench check` unchanged, a test file that passes under pytest, and a grid that validates and
runs; bad names and existing files are refused in one line, before anything is written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedbench import grid as gridlib
from fedbench import plugins
from fedbench.algorithms import ALGORITHMS
from fedbench.api import run_grid
from fedbench.cli import app
from fedbench.commands.new import LIKE

ROOT = Path(__file__).resolve().parent.parent


def fedbench(*args: str | Path) -> tuple[int, str]:
    out = CliRunner().invoke(app, [str(a) for a in args])
    return out.exit_code, out.output


@pytest.fixture(autouse=True)
def forget_plugins():
    yield
    for p in plugins.loaded():
        plugins._forget(p)


@pytest.mark.parametrize("like", sorted(LIKE))
def test_each_template_checks_validates_and_runs(tmp_path: Path, like: str) -> None:
    name = f"my_{like}"
    code, out = fedbench("new", "algorithm", name, "--like", like, "--dir", tmp_path / "m")
    assert code == 0, out
    plugin, test, grid = (tmp_path / "m" / f for f in (f"{name}.py", f"test_{name}.py",
                                                      f"{name}.toml"))  # fmt: skip
    assert all(p.is_file() for p in (plugin, test, grid))
    source = plugin.read_text()
    imports = [ln for ln in source.splitlines() if ln.startswith(("import ", "from "))]
    assert [ln for ln in imports if "fedbench" in ln] == ["from fedbench.api import ("]
    assert "{{" not in source + test.read_text() + grid.read_text()  # every placeholder filled
    # `fedbench check NAME --plugin FILE`, the command itself, every admitted compressor
    code, out = fedbench("check", name, "--plugin", plugin)
    assert code == 0, out
    lines = out.strip().splitlines()
    assert lines and all(ln.startswith("ok  ") for ln in lines), out
    assert any("runs with every admitted compressor" in ln for ln in lines)
    if like == "fedavg":  # the declared special case holds bit for bit
        assert any(ln.startswith("ok   reduces to fedavg") for ln in lines), out
    # the grid validates (one job, naming the plugin) and runs 2 rounds
    code, out = fedbench("validate", grid)
    assert code == 0, out
    jobs = gridlib.load(grid).jobs
    assert [j.algorithm for j in jobs] == [name]
    assert jobs[0].config["plugins"] == {str(plugin): plugins.source_hash(plugin)}
    short = grid.with_name("short.toml")  # beside the plugin: its relative path still resolves
    short.write_text(
        grid.read_text()
        .replace("rounds = 20", "rounds = 2")
        .replace("eval_every = 5", "eval_every = 1")
    )
    frame = run_grid(short, db=str(tmp_path / "r.db"))
    assert sorted(frame["round"].unique()) == [0, 1, 2]
    assert frame["status"].eq("done").all() and frame["train_loss"].notna().all()


@pytest.mark.slow  # ~40 s on the loaded 2-core machine: a pytest process over 3 test files
def test_generated_test_files_pass_under_pytest(tmp_path: Path) -> None:
    for like in LIKE:
        code, out = fedbench("new", "algorithm", f"my_{like}", "--like", like, "--dir", tmp_path)
        assert code == 0, out
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *sorted(
            p.name for p in tmp_path.glob("test_*.py"))],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "6 passed" in out.stdout, out.stdout


def test_one_generated_test_file_passes_in_process(tmp_path: Path) -> None:
    """The default run's variant of the test above: one template's test file, run by
    pytest.main in this process (its plugin is forgotten afterwards)."""
    code, out = fedbench("new", "algorithm", "my_alg", "--dir", tmp_path)
    assert code == 0, out
    rc = pytest.main(["-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
                      str(tmp_path / "test_my_alg.py")])  # fmt: skip
    assert rc == 0
    assert ALGORITHMS["my_alg"].source == str(tmp_path / "my_alg.py")
    sys.modules.pop("test_my_alg", None)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("fedavg", "fedavg: already an algorithm"),
        ("topk", "topk: already a compressor"),
        ("9lives", "9lives: not a valid name; allowed: a lowercase Python identifier"),
        ("MyAlg", "MyAlg: not a valid name"),
        ("class", "class: not a valid name"),
        ("json", "json: an importable module is already called json"),
        ("test_x", "test_x: pytest would collect"),
    ],
)
def test_bad_names_are_refused_in_one_line(tmp_path: Path, name: str, expected: str) -> None:
    code, out = fedbench("new", "algorithm", name, "--dir", tmp_path / "m")
    assert code == 2
    assert out.strip().splitlines() == [f"error: {out.strip().removeprefix('error: ')}"]
    assert expected in out, out
    assert not (tmp_path / "m").exists()  # nothing written


def test_existing_files_and_unknown_templates_are_refused(tmp_path: Path) -> None:
    (tmp_path / "test_mine.py").write_text("# mine\n")
    code, out = fedbench("new", "algorithm", "mine", "--dir", tmp_path)
    assert code == 2 and len(out.strip().splitlines()) == 1
    assert f"{tmp_path / 'test_mine.py'}: already exists; nothing written" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test_mine.py"]
    assert (tmp_path / "test_mine.py").read_text() == "# mine\n"  # untouched
    code, out = fedbench("new", "algorithm", "mine", "--like", "fedprox", "--dir", tmp_path)
    assert code == 2 and "--like fedprox: allowed: ef21, fedavg, scaffold" in out.replace(
        "fedavg, ef21, scaffold", "ef21, fedavg, scaffold")  # fmt: skip


def test_templates_ship_as_package_data() -> None:
    """pyproject's package-data names the templates (a non-editable install ships them:
    tests/test_plugin_install.py runs `fedbench new` from a wheel)."""
    text = (ROOT / "pyproject.toml").read_text()
    assert '"fedbench.templates" = ["*.tmpl"]' in text
    names = {p.name for p in (ROOT / "fedbench" / "templates").glob("*.tmpl")}
    assert names == {f"algorithm_{like}.py.tmpl" for like in LIKE} | {
        "test_algorithm.py.tmpl", "grid.toml.tmpl"}  # fmt: skip
