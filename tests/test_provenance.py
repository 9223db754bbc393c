"""Run provenance (issue 26 item 7): commit, dirty flag, grid file, CPU, load average."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from test_cli import TINY, invoke, runs, words, write

from fedbench import provenance
from fedbench.store import Store

ROOT = Path(__file__).resolve().parents[1]
ONLY = ("--only", "algorithm.name=fedavg", "--only", "compressor.name=identity")


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()


def test_a_real_run_records_its_provenance(tmp_path: Path) -> None:
    grid, db = write(tmp_path, TINY), tmp_path / "g.db"
    assert invoke("run", grid, "--db", db, *ONLY).exit_code == 0
    frame = runs(db)
    assert len(frame) == 2
    with Store(str(db)) as s:
        provs = [s.provenance(int(r)) for r in frame["run_id"]]
    for p in provs:
        assert p is not None
        assert p["fedbench_commit"] == git("rev-parse", "HEAD")
        assert p["fedbench_dirty"] == bool(git("status", "--porcelain", "--untracked-files=no"))
        assert p["grid_path"] == str(grid.absolute())
        assert p["grid_sha256"] == hashlib.sha256(grid.read_bytes()).hexdigest()
        assert p["cpu"] == provenance.cpu_model() and p["cpu"]
        for k in ("load_start", "load_end"):  # recorded at the start and updated at the end
            assert len(p[k]) == 3 and all(v >= 0 for v in p[k])


def test_show_prints_the_provenance(tmp_path: Path) -> None:
    grid, db = write(tmp_path, TINY), tmp_path / "g.db"
    assert invoke("run", grid, "--db", db, *ONLY).exit_code == 0
    key = str(runs(db)["key"].iloc[0])
    sha = hashlib.sha256(grid.read_bytes()).hexdigest()
    out = invoke("show", key[:8], "--db", db)
    assert out.exit_code == 0, out.output
    text = words(out.output)
    assert git("rev-parse", "HEAD") in text and sha in text and str(grid.absolute()) in text
    assert provenance.cpu_model() in text and "load start" in text and "load end" in text
    data = json.loads(invoke("show", key[:8], "--db", db, "--format", "json").output)
    assert data["provenance"]["grid_sha256"] == sha


def test_commit_of_a_directory_that_is_not_a_checkout_is_none(tmp_path: Path) -> None:
    assert provenance.read_commit(tmp_path) is None
    assert provenance.read_dirty(tmp_path) is None


def test_commit_read_from_the_files_of_a_detached_head_and_packed_refs(tmp_path: Path) -> None:
    sha = "a" * 40
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text(sha + "\n")
    assert provenance.read_commit(tmp_path) == sha
    (tmp_path / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (tmp_path / ".git" / "packed-refs").write_text(f"# pack-refs\n{'b' * 40} refs/heads/main\n")
    assert provenance.read_commit(tmp_path) == "b" * 40


def test_load_range_spans_start_and_end() -> None:
    provs = [{"load_start": [1.5, 1, 1], "load_end": [3.0, 1, 1]}, None, {"load_start": [0.5]}]
    assert provenance.load_range(provs) == (0.5, 3.0)
    assert provenance.load_range([None, {}]) is None
