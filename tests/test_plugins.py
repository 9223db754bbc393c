"""Plugins (issue 27): components from files outside fedbench validate, list, key and run like
built-ins; problems are one line naming the file; the public API suffices to write one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import plugin_source

from fedbench import grid as gridlib
from fedbench import plugins
from fedbench.algorithms import ALGORITHMS
from fedbench.compressors import COMPRESSORS

ROOT = Path(__file__).resolve().parent.parent

# A method and a compressor written against fedbench.api only (the public names).
DOC = "Damped FedAvg and a scaled-sign compressor: a test plugin."


def plugin(damping: float = 0.5) -> str:
    return plugin_source("damped_avg", "damping", damping, DOC)


GRID = """
[experiment]
name = "plug"
plugins = ["methods/damped.py"]
rounds = 2
eval_every = 1
seeds = 1

[task]
dataset = "digits"
clients = 4

[grid]
"algorithm.name" = ["fedavg", "damped_avg"]
"compressor.name" = ["identity", "scaled_sign"]
"""


def write_plugin(dir: Path, damping: float = 0.5) -> Path:
    path = dir / "methods" / "damped.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(plugin(damping))
    return path


@pytest.fixture
def project(tmp_path: Path):
    """A grid and its plugin in a fresh directory; the plugin is forgotten afterwards."""
    write_plugin(tmp_path)
    (tmp_path / "grid.toml").write_text(GRID)
    yield tmp_path
    for p in plugins.loaded():
        plugins._forget(p)


def test_plugin_components_validate_key_and_record_their_source(project: Path) -> None:
    g = gridlib.load(project / "grid.toml")
    assert ALGORITHMS["damped_avg"].source == str(project / "methods" / "damped.py")
    assert COMPRESSORS["scaled_sign"].source == ALGORITHMS["damped_avg"].source
    assert ALGORITHMS["fedavg"].source == ""
    by = {(j.algorithm, j.compressor): j for j in g.jobs}
    assert len(by) == 4
    sha = plugins.source_hash(project / "methods" / "damped.py")
    ref = str(project / "methods" / "damped.py")
    assert "plugins" not in by["fedavg", "identity"].config  # built-ins only: key unchanged
    for pair in [("damped_avg", "identity"), ("fedavg", "scaled_sign")]:
        assert by[pair].config["plugins"] == {ref: sha}
    assert any("imports plugin" in n and ref in n for n in g.notes)
    # the plugins line changes no built-in job's key
    plain = project / "plain.toml"
    plain.write_text(GRID.replace('plugins = ["methods/damped.py"]\n', "").replace(
        '["fedavg", "damped_avg"]', '["fedavg"]').replace('["identity", "scaled_sign"]',
                                                          '["identity"]'))  # fmt: skip
    assert gridlib.load(plain).jobs[0].key == by["fedavg", "identity"].key


def test_editing_the_plugin_changes_only_its_jobs_keys(project: Path) -> None:
    before = {(j.algorithm, j.compressor): j.key for j in gridlib.load(project / "grid.toml").jobs}
    write_plugin(project, damping=0.25)
    after = {(j.algorithm, j.compressor): j.key for j in gridlib.load(project / "grid.toml").jobs}
    assert ALGORITHMS["damped_avg"].params["damping"].default == 0.25  # the edit is loaded
    assert before["fedavg", "identity"] == after["fedavg", "identity"]
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {
        ("damped_avg", "identity"), ("damped_avg", "scaled_sign"), ("fedavg", "scaled_sign")
    }  # fmt: skip


def test_loading_a_grid_twice_registers_once(project: Path) -> None:
    first = gridlib.load(project / "grid.toml")
    second = gridlib.load(project / "grid.toml")  # no "registered twice"
    assert [j.key for j in first.jobs] == [j.key for j in second.jobs]
    assert plugins.load("methods/damped.py", project) is plugins.load(
        str(project / "methods" / "damped.py")
    )


def test_quickstart_keys_are_pinned() -> None:
    """Plugins add nothing to the keys of grids using built-ins only."""
    keys = sorted(j.key for j in gridlib.load(ROOT / "experiments" / "quickstart.toml").jobs)
    assert keys == [
        "245f59ba7e10f4f8", "2aeeaaf4b6047c83", "3c1c78df32134aca", "5952e98e192e1b34",
        "65a786e38fec9947", "667984e7868dd80c", "a9c044004db939e4", "b80c25d0589953cd",
        "db9c1121483c503d", "de5e080d5eb99e80", "e0d612e456010437", "f85ef9790bbbd2b5",
    ]  # fmt: skip


BROKEN = {
    "clash": (
        "from fedbench.api import ALGORITHMS, Component\n"
        "ALGORITHMS.add(Component('fedavg', lambda: None, {}, 'x'))\n",
        "algorithm 'fedavg' is already registered",
    ),
    "import_error": ("import no_such_module_xyz\n", "import failed: ModuleNotFoundError (line 1)"),
    "nothing": ("X = 1\n", "registers no component"),
    "syntax": ("def (:\n", "import failed: SyntaxError (line 1)"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_plugin_is_one_line_naming_the_file(tmp_path: Path, case: str) -> None:
    code, expected = BROKEN[case]
    (tmp_path / "bad.py").write_text(code)
    (tmp_path / "g.toml").write_text('[experiment]\nplugins = ["bad.py"]\n')
    before = {r.what: set(r) for r in plugins.registries()}
    with pytest.raises(gridlib.GridError) as e:
        gridlib.load(tmp_path / "g.toml")
    assert len(e.value.problems) == 1
    line = e.value.problems[0]
    assert line.startswith(str(tmp_path / "bad.py")) and expected in line, line
    assert {r.what: set(r) for r in plugins.registries()} == before  # nothing left behind


def test_missing_plugin_and_bad_list(tmp_path: Path) -> None:
    (tmp_path / "g.toml").write_text('[experiment]\nplugins = ["nope.py"]\n')
    with pytest.raises(gridlib.GridError, match=r"nope.py: plugin file not found"):
        gridlib.load(tmp_path / "g.toml")
    (tmp_path / "g.toml").write_text('[experiment]\nplugins = "nope.py"\n')
    with pytest.raises(gridlib.GridError, match=r"g.toml: \[experiment\] plugins = 'nope.py'"):
        gridlib.load(tmp_path / "g.toml")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "fedbench", *args], cwd=cwd, env=env, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.slow  # 98 s on the loaded 2-core machine (a pool of 2 spawned workers, 3 CLI calls)
def test_cli_lists_refuses_and_runs_plugins_in_a_pool(project: Path) -> None:
    out = _cli("algorithms", "--plugin", "grid.toml", "--format", "json", cwd=project)
    assert out.returncode == 0, out.stderr
    algs = {a["name"]: a for a in json.loads(out.stdout)["algorithms"]}
    assert algs["damped_avg"]["source"] == str(project / "methods" / "damped.py")
    assert algs["fedavg"]["source"] == "built-in"
    out = _cli("validate", "grid.toml", "--no-plugins", cwd=project)
    assert out.returncode == 2 and "--no-plugins refuses" in out.stderr
    out = _cli("run", "grid.toml", "--db", "r.db", "--workers", "2", cwd=project)
    assert out.returncode == 0, out.stderr
    assert "imports plugin" in out.stderr + out.stdout
    out = _cli("ls", "--db", "r.db", "--format", "json", cwd=project)
    runs = json.loads(out.stdout)
    runs = runs["runs"] if isinstance(runs, dict) else runs
    assert sorted(r["status"] for r in runs) == ["done"] * 4
    write_plugin(project, damping=0.3)  # an edit reruns exactly the jobs using the plugin
    out = _cli("run", "grid.toml", "--db", "r.db", "--workers", "1", cwd=project)
    assert out.returncode == 0, out.stderr
    assert "ran 3 jobs" in out.stdout + out.stderr


def test_public_api_builds_and_runs_a_plugin_in_process(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedbench.api import run_grid

    monkeypatch.chdir(project)
    frame = run_grid(
        {
            "experiment": {"name": "api", "plugins": ["methods/damped.py"], "rounds": 2},
            "task": {"dataset": "digits", "clients": 4},
            "grid": {"algorithm.name": ["fedavg", "damped_avg"]},
        },
        db=str(tmp_path / "api.db"),
    )
    last = frame[frame["round"] == 2]
    assert sorted(last["algorithm.name"]) == ["damped_avg", "fedavg"]
    assert last["test_accuracy"].notna().all()
    ref = str(project / "methods" / "damped.py")
    assert last.loc[last["algorithm.name"] == "damped_avg", f"plugins.{ref}"].notna().all()


def test_api_names_are_public() -> None:
    import fedbench.api as api

    assert all(hasattr(api, n) for n in api.__all__)
    assert {"Component", "Algorithm", "Param", "ALGORITHMS", "run_grid", "load_frame"} <= set(
        api.__all__
    )


def test_entry_point_modules_load_like_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An installed package's module (here: one on sys.path) loads by name."""
    pkg = tmp_path / "myplug_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(plugin())
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        p = plugins.load("myplug_pkg")
        assert p.ref == "myplug_pkg" and ("algorithm", "damped_avg") in p.components
        assert ALGORITHMS["damped_avg"].source == "myplug_pkg"
        assert plugins.load("myplug_pkg") is p
    finally:
        for q in plugins.loaded():
            plugins._forget(q)
        sys.modules.pop("myplug_pkg", None)
