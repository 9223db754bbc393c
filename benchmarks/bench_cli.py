"""Start-up time of the fedbench CLI: wall time of whole `fedbench ...` processes.

Each command runs several times in a fresh interpreter (`python -m fedbench ...`), on a small
database made here (one experiment, one digits run); min and median are printed with the
load average, since other processes only ever add time. Goal: `--help`, `ls` and `show`
under 0.5 s.

Run: make bench  (or python benchmarks/bench_cli.py --repeats 7)
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GOAL = 0.5  # seconds, for --help, ls and show


def make_db(folder: Path) -> str:
    from fedbench.store import RunSpec, Store

    db = str(folder / "cli.db")
    config = {"task": {"dataset": "digits", "clients": 20, "partition": "iid"}}
    with Store(db) as s:
        exp = s.upsert_experiment("bench", "bench.toml", "")
        s.ensure_runs(exp, [RunSpec("c0ffee00", 0, "fedavg", "identity", "digits", "mlp", config)])
        run = int(s.get_run("c0ffee00")["id"])
        for t in range(0, 101, 5):
            s.log_round(run, t, {"bits_up": 1e6 * t, "test_accuracy": t / 100})
    return db


def time_command(args: list[str], repeats: int) -> tuple[list[float], list[float]]:
    """Wall and CPU (user + system) seconds of each run; on a loaded machine the CPU time is
    close to what the wall time would be on an idle one."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    wall, cpu = [], []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "fedbench", *args], env=env, cwd=ROOT, check=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wall.append(time.perf_counter() - t)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = make_db(Path(tmp))
        cases = [
            (["--help"], True),
            (["ls", "--db", db], True),
            (["show", "c0ffee", "--db", db], True),
            (["validate", "--help"], False),
            (["run", "--help"], False),
            (["algorithms"], False),
            (["validate", "experiments/quickstart.toml", "--no-data"], False),
        ]
        base = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], check=True)
            base.append(time.perf_counter() - t)
        load = os.getloadavg()
        print(
            f"CLI start-up, {args.repeats} runs each, load average {load[0]:.2f} "
            f"(1 min) on {os.cpu_count()} cores; a bare `python -c pass` takes "
            f"min {min(base):.2f} s"
        )
        for argv, goal in cases:
            times, cpu = time_command(argv, args.repeats)
            shown = " ".join(a if a != db else "DB" for a in argv)
            mark = ""
            if goal:
                mark = f"  (goal < {GOAL} s: {'met' if min(times) < GOAL else 'NOT met'})"
            print(
                f"  fedbench {shown:55} wall min {min(times):5.2f} s, median "
                f"{statistics.median(times):5.2f} s; CPU min {min(cpu):5.2f} s{mark}"
            )


if __name__ == "__main__":
    main()
