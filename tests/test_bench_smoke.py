"""The speed benchmark still runs (a tiny configuration; no timing is asserted here)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import finished, started

ROOT = Path(__file__).resolve().parents[1]

# test -> its benchmark's command line (a tiny configuration)
BENCHMARKS = {
    "test_bench_round_runs_and_reports_the_ratio": [
        "bench_round.py", "--clients", "4", "--steps", "1", "--batch", "4", "--hidden", "8",
        "--repeats", "1",
    ],
    "test_bench_theory_matches_numpy_and_breaks_the_round_down": [
        "bench_theory.py", "--rounds", "300", "--probe-rounds", "200", "--eval-every", "50",
    ],
    "test_bench_cli_times_every_command": ["bench_cli.py", "--repeats", "1"],
    "test_bench_scale_runs_every_section": [
        "bench_scale.py", "--clients", "10", "--repeats", "1", "--sizes", "8", "--size-clients",
        "4", "--scaffold-clients", "20", "--mlp-clients", "10", "--rounds", "1",
        "--cross-device", "200", "--samples", "400",
    ],
    "test_bench_pfl_compares_or_says_why_not": [
        "bench_pfl.py", "--clients", "4", "--steps", "1", "--batch", "4", "--hidden", "8",
        "--repeats", "1", "--rounds", "1",
    ],
}  # fmt: skip


@pytest.fixture(scope="module")
def benchmarks(request: pytest.FixtureRequest) -> Iterator[dict[str, subprocess.Popen[str]]]:
    """The benchmarks of this module's selected tests, all started at once: each is mostly
    processes importing torch on one core, one after the other ~95 s here, at once ~60 s on 2
    cores (their timings are not asserted)."""
    selected = {item.name for item in request.session.items if item.path == request.path}
    tests = [test for test in BENCHMARKS if test in selected]
    commands = [[sys.executable, str(ROOT / "benchmarks" / script), *args]
                for script, *args in (BENCHMARKS[t] for t in tests)]  # fmt: skip
    with started(commands, cwd=ROOT) as procs:
        yield dict(zip(tests, procs, strict=True))


def output(benchmarks: dict[str, subprocess.Popen[str]], request: pytest.FixtureRequest) -> str:
    """The calling test's benchmark's stdout, once it exited 0."""
    return finished(benchmarks[request.node.name], timeout=300)


def test_bench_round_runs_and_reports_the_ratio(benchmarks, request):
    out = output(benchmarks, request)
    assert "speed-up" in out and "of this machine's fp32 GEMM rate" in out
    # both phases, the competing process started and stopped by the benchmark itself
    assert "speed-up loaded" in out and "fedbench loaded / idle" in out
    assert "one competing `while True: pass` process" in out


def test_bench_theory_matches_numpy_and_breaks_the_round_down(benchmarks, request):
    out = output(benchmarks, request)
    for part in ("plain NumPy EF21 loop", "algorithm round", "database writes", "300 rounds"):
        assert part in out
    diff = float(out.split("max |x_fedbench - x_numpy| after 200 rounds:")[1].split()[0])
    assert diff < 1e-4  # the NumPy loop is the same method (float32 rounding apart)


def test_bench_cli_times_every_command(benchmarks, request):
    out = output(benchmarks, request)
    for command in ("fedbench --help", "fedbench ls", "fedbench show", "fedbench algorithms"):
        assert command in out


def test_bench_scale_runs_every_section(benchmarks, request):
    out = output(benchmarks, request)
    for section in ("vs clients", "vs model size", "SCAFFOLD"):
        assert section in out
    assert "20 × logreg 16" in out and "10 × MLP 200-200 32" in out
    assert "200 clients, 1.0% participation:" in out and "max RSS" in out


def test_bench_pfl_compares_or_says_why_not(benchmarks, request):
    """With pfl installed: the ratio and the GEMM share; without: one line saying so, exit 0."""
    out = output(benchmarks, request)
    try:
        import pfl  # noqa: F401
    except ImportError:
        assert "pfl (pfl-research) is not importable here" in out
    else:
        assert "fedbench / pfl speed:" in out and "large-GEMM rate" in out
