"""Reports over millions of rows: `ls`, `show`, `report` and a streaming `export` on a big
result database (issue 28 item 3).

The database (default 10,000 runs × 1,000 rounds of one metric: 10⁷ metric rows, 100 runs an
experiment) is built once, fast, straight into the schema a `Store` creates (one transaction of
stdlib sqlite3 executemany), and cached beside a marker file, so later invocations only time;
--rebuild builds it again. Opening it with a `Store` afterwards brings an older schema up to
date (the migration's time is printed when it ran). Each command runs `--repeats` times as a
whole `python -m fedbench ...` process; min and median wall seconds are printed with the load
average (other processes only ever add time). The export's peak RSS is that of its own
process (ru_maxrss of a fresh child), to show it streams in bounded memory.

Goals: ls < 0.5 s, show < 0.5 s, report of one 100-run experiment < 5 s.

Run: make bench  (or python benchmarks/bench_reports.py --runs 200 --rounds 100 for a quick one)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ALGORITHMS = ("fedavg", "scaffold", "fedprox", "ef21")
LRS = (0.01, 0.03, 0.1, 0.3, 1.0)
SEEDS = 5  # ALGORITHMS × LRS × SEEDS = 100 runs an experiment
GOALS = {"ls": 0.5, "show": 0.5, "report": 5.0}
CHUNK = 200_000  # metric rows handed to executemany at a time


def config(i: int, rounds: int, experiment: str) -> dict[str, object]:
    """Run i's resolved config: one of 100 (algorithm, lr, seed) cells of its experiment."""
    cell = i % 100
    alg, lr, seed = ALGORITHMS[cell // 25], LRS[(cell // 5) % 5], cell % SEEDS
    return {
        "experiment": {"name": experiment, "rounds": rounds, "seeds": SEEDS},
        "task": {"dataset": "digits", "clients": 20, "partition": "iid", "model": "logreg"},
        "algorithm": {"name": alg, "lr": lr, "local_steps": 5},
        "compressor": {"name": "identity"},
        "seed": seed,
    }


def metric_rows(runs: int, rounds: int, names: list[str]) -> Iterator[list[tuple]]:
    """(run_id, round, name, value) in primary-key order, in chunks: a smooth curve per run."""
    chunk: list[tuple] = []
    for run_id in range(1, runs + 1):
        rate = 50.0 + run_id % 97
        for t in range(rounds + 1):
            base = 1.0 - 0.9 / (1.0 + t / rate)
            for k, name in enumerate(names):
                chunk.append((run_id, t, name, base * 1e6 * t if k == 1 else base))
        if len(chunk) >= CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def build(db: Path, runs: int, rounds: int, names: list[str]) -> float:
    """The database, built into the schema a `Store` creates; seconds taken."""
    from fedbench.store import Store

    start = time.perf_counter()
    for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        p.unlink(missing_ok=True)
    with Store(str(db)):
        pass  # the current schema
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA synchronous = OFF")
    con.execute("BEGIN")
    stamp = "2025-01-01 00:00:00.000000"
    n_exp = (runs + 99) // 100
    con.executemany(
        "INSERT INTO experiments (id, name, grid_path, grid_toml, created_at) VALUES (?,?,?,?,?)",
        [(e + 1, f"exp{e:04d}", f"grids/exp{e:04d}.toml", "", stamp) for e in range(n_exp)],
    )
    rows = []
    for i in range(runs):
        exp = i // 100
        c = config(i, rounds, f"exp{exp:04d}")
        key = hashlib.sha256(str(i).encode()).hexdigest()[:16]
        rows.append(
            (i + 1, key, exp + 1, c["seed"], c["algorithm"]["name"], "identity",  # type: ignore[index]
             "digits", "logreg", json.dumps(c), "done", stamp, stamp, "bench", "cpu")
        )  # fmt: skip
    con.executemany(
        "INSERT INTO runs (id, key, experiment_id, seed, algorithm, compressor, dataset, model, "
        "config, status, started_at, finished_at, host, device) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        rows,
    )
    for chunk in metric_rows(runs, rounds, names):
        con.executemany("INSERT INTO metrics (run_id, round, name, value) VALUES (?,?,?,?)", chunk)
    con.execute("COMMIT")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return time.perf_counter() - start


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def fedbench(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "fedbench", *args]


def timed(args: list[str], repeats: int) -> list[float]:
    """Wall seconds of `repeats` whole processes, after one untimed run: bytecode cached (as
    an installed fedbench has it; PYTHONDONTWRITEBYTECODE is dropped) and the file in the page
    cache."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(ROOT)
    wall = []
    for i in range(repeats + 1):
        t = time.perf_counter()
        subprocess.run(
            fedbench(args), env=env, cwd=ROOT, check=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        if i:
            wall.append(time.perf_counter() - t)
    return wall


PEAK = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
    "stdout=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def peak_rss_mib(args: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of one `fedbench ...` process: a fresh parent waits
    for it alone, so RUSAGE_CHILDREN's ru_maxrss (KiB on Linux) is that process's."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", PEAK, *fedbench(args)], env=env, cwd=ROOT, check=True,
        capture_output=True, text=True,
    )  # fmt: skip
    return time.perf_counter() - t, int(out.stdout.split()[-1]) / 1024


def line(name: str, wall: list[float], goal: float | None) -> str:
    verdict = (
        "" if goal is None else ("  ok" if min(wall) < goal else f"  OVER the {goal:g} s goal")
    )
    return (
        f"{name:<44} min {min(wall):6.3f} s  median {statistics.median(wall):6.3f} s "
        f"({len(wall)}×){verdict}  [{load()}]"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=1_000, help="rounds 0..R are logged")
    ap.add_argument("--metrics", default="test_accuracy", help="comma-separated metric names")
    ap.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed runs a command (0: build or find the database, time nothing)",
    )
    ap.add_argument("--db", type=Path, default=None, help="default: /tmp/fedbench-bench-*.db")
    ap.add_argument("--rebuild", action="store_true", help="build the database even if cached")
    args = ap.parse_args()
    names = [n.strip() for n in args.metrics.split(",") if n.strip()]
    tag = f"{args.runs}x{args.rounds}x{len(names)}"
    db = args.db or Path(tempfile.gettempdir()) / f"fedbench-bench-reports-{tag}.db"
    marker = Path(f"{db}.built")
    rows = args.runs * (args.rounds + 1) * len(names)
    print(f"== reports over {rows:,} metric rows ({args.runs:,} runs × rounds 0..{args.rounds} "
          f"× {len(names)} metric(s)): {db}")  # fmt: skip
    if args.rebuild or not marker.exists() or marker.read_text() != tag:
        marker.unlink(missing_ok=True)
        seconds = build(db, args.runs, args.rounds, names)
        marker.write_text(tag)
        print(f"built in {seconds:.1f} s ({db.stat().st_size / 2**20:,.0f} MiB)  [{load()}]")
    else:
        print(f"cached ({db.stat().st_size / 2**20:,.0f} MiB; --rebuild builds it again)")
    from fedbench.store import Store

    t = time.perf_counter()
    with Store(str(db)):  # brings an older schema up to date (a no-op when current)
        pass
    print(f"open for writing (migrates an older schema): {time.perf_counter() - t:.2f} s")
    if args.repeats == 0:
        return
    last = f"exp{(args.runs - 1) // 100:04d}"
    key = hashlib.sha256(str(args.runs // 2).encode()).hexdigest()[:8]
    n = args.repeats
    print(line(f"fedbench ls ({args.runs:,} runs)", timed(["ls", "--db", str(db)], n), GOALS["ls"]))
    print(line("fedbench ls --format json", timed(["ls", "--db", str(db), "-f", "json"], n), None))
    print(line(f"fedbench show {key}", timed(["show", key, "--db", str(db)], n), GOALS["show"]))
    partition = timed(["show", key, "--db", str(db), "--partition"], n)  # rebuilds the split
    print(line(f"fedbench show {key} --partition", partition, None))
    report = ["report", "--db", str(db), "--experiment", last]
    print(line(f"fedbench report -e {last} (100 runs)", timed(report, n), GOALS["report"]))
    with tempfile.TemporaryDirectory() as out:
        export = ["export", out, "--db", str(db), "--format", "parquet"]
        wall, rss = peak_rss_mib(export)
        size = sum(p.stat().st_size for p in Path(out).iterdir()) / 2**20
        print(
            f"{'fedbench export --format parquet (all)':<44} {wall:6.1f} s, peak RSS "
            f"{rss:,.0f} MiB, {size:,.0f} MiB written  [{load()}]"
        )
    print("(wall seconds of whole processes; the machine may be shared: see the load average)")


if __name__ == "__main__":
    main()
