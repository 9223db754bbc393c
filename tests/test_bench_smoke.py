"""The speed benchmark still runs (a tiny configuration; no timing is asserted here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_round_runs_and_reports_the_ratio():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_round.py"),
         "--clients", "4", "--steps", "1", "--batch", "4", "--hidden", "8", "--repeats", "1"],
        capture_output=True, text=True, check=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert "speed-up" in out.stdout and "of this machine's fp32 GEMM rate" in out.stdout
    # both phases, the competing process started and stopped by the benchmark itself
    assert "speed-up loaded" in out.stdout and "fedbench loaded / idle" in out.stdout
    assert "one competing `while True: pass` process" in out.stdout


def test_bench_theory_matches_numpy_and_breaks_the_round_down():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_theory.py"),
         "--rounds", "300", "--probe-rounds", "200", "--eval-every", "50"],
        capture_output=True, text=True, check=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    for part in ("plain NumPy EF21 loop", "algorithm round", "database writes", "300 rounds"):
        assert part in out.stdout
    diff = float(out.stdout.split("max |x_fedbench - x_numpy| after 200 rounds:")[1].split()[0])
    assert diff < 1e-4  # the NumPy loop is the same method (float32 rounding apart)


def test_bench_cli_times_every_command():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_cli.py"), "--repeats", "1"],
        capture_output=True, text=True, check=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    for command in ("fedbench --help", "fedbench ls", "fedbench show", "fedbench algorithms"):
        assert command in out.stdout


def test_bench_scale_runs_every_section():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_scale.py"), "--clients", "10",
         "--repeats", "1", "--sizes", "8", "--size-clients", "4", "--scaffold-clients", "20",
         "--mlp-clients", "10", "--rounds", "1", "--cross-device", "200", "--samples", "400"],
        capture_output=True, text=True, check=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    for section in ("vs clients", "vs model size", "SCAFFOLD"):
        assert section in out.stdout
    assert "20 × logreg 16" in out.stdout and "10 × MLP 200-200 32" in out.stdout
    assert "200 clients, 1.0% participation:" in out.stdout and "max RSS" in out.stdout


def test_bench_pfl_compares_or_says_why_not():
    """With pfl installed: the ratio and the GEMM share; without: one line saying so, exit 0."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_pfl.py"), "--clients", "4",
         "--steps", "1", "--batch", "4", "--hidden", "8", "--repeats", "1", "--rounds", "1"],
        capture_output=True, text=True, check=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    try:
        import pfl  # noqa: F401
    except ImportError:
        assert "pfl (pfl-research) is not importable here" in out.stdout
    else:
        assert "fedbench / pfl speed:" in out.stdout and "large-GEMM rate" in out.stdout
