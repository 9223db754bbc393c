"""Theory-scale rounds: EF21 + Top-1 on breast_cancer (569 × 30 logistic regression with the
non-convex regulariser, 20 contiguous clients, full local gradients), as the EF21 / DIANA /
MARINA papers run it for 10⁴–10⁵ rounds.

1. Per-round cost, broken down: fedbench's whole job path (`executors.run_job`, what `fedbench
   run` does per job: algorithm round, bookkeeping, evaluation every `--eval-every` rounds
   with ‖∇f‖², batched database writes to a fresh SQLite file, throttled progress events),
   against the same method as a plain NumPy loop (no logging at all), whose iterates are
   checked to match fedbench's.
2. The headline: `--rounds` (10⁵) rounds of the same job, end to end, database included.
   Goal: well under a minute.

Run: make bench  (or python benchmarks/bench_theory.py --help)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch

from fedbench import executors, grid, runner
from fedbench.store import Store

GRID = """
[experiment]
name = "theory"
rounds = {rounds}
eval_every = {eval_every}
grad_norm = true
[task]
dataset = "breast_cancer"
model = "logreg"
reg = "nonconvex"
lam = {lam}
clients = {clients}
partition = "contiguous"
test_fraction = 0.0
init = "zeros"
[algorithm]
name = "ef21"
lr = {lr}
batch_size = "full"
participation = 1.0
[compressor]
name = "topk"
k = 1
bits = "values"
"""


def make_job(args: argparse.Namespace, rounds: int) -> grid.Job:
    text = GRID.format(rounds=rounds, eval_every=args.eval_every, lam=args.lam,
                       clients=args.clients, lr=args.lr)  # fmt: skip
    (job,) = grid.parse(text, Path("theory.toml")).jobs
    return job


def numpy_ef21(job: grid.Job, rounds: int) -> tuple[float, np.ndarray]:
    """EF21 + Top-1 in plain NumPy (float32, as fedbench): seconds per round and x^T."""
    t = job.config["task"]
    fd = runner.load_dataset(t)
    a = fd.x.reshape(len(fd.x), -1).astype(np.float32)  # [N, f], clients contiguous
    b = (2.0 * fd.y - 1.0).astype(np.float32)  # [N]
    counts = np.asarray(fd.counts)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    inv_m = np.repeat(1.0 / counts, counts).astype(np.float32)  # [N] 1/m_i of each sample
    lam, gamma, n = np.float32(t["lam"]), np.float32(job.config["algorithm"]["lr"]), len(counts)
    rows = np.arange(n)

    def grads(x: np.ndarray) -> np.ndarray:  # [n, f] ∇f_i(x)
        bz = b * (a @ x)
        dz = -b * inv_m / (1.0 + np.exp(bz))  # ∂/∂z of mean_j log(1 + e^{−b_j z_j})
        g = np.add.reduceat(dz[:, None] * a, starts, axis=0)
        return g + 2 * lam * x / (1 + x * x) ** 2

    x = np.zeros(a.shape[1], np.float32)
    g_i = grads(x)
    g = g_i.mean(0)
    start = time.perf_counter()
    for _ in range(rounds):
        x = x - gamma * g
        d = grads(x) - g_i
        k = np.abs(d).argmax(1)  # Top-1 per client
        c = np.zeros_like(d)
        c[rows, k] = d[rows, k]
        g_i += c
        g = g + c.sum(0) / n
    return (time.perf_counter() - start) / rounds, x


class Timers:
    """Wall time spent inside wrapped functions, by name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t
                self.calls[name] = self.calls.get(name, 0) + 1

        return timed


def run_job(
    job: grid.Job, folder: Path, name: str, threads: int, timers: Timers | None = None
) -> tuple[float, list[float], int]:
    """The job through executors.run_job on a fresh SQLite file: wall seconds, its final
    parameters (read back from no database: from the algorithm state) and events emitted."""
    url = f"sqlite:///{folder / name}.db"
    with Store(url) as store:
        exp = store.upsert_experiment(name, "theory.toml", "")
        store.ensure_runs(exp, [runner.run_spec(job)])
    last: list[torch.Tensor] = []
    events = [0]
    build, log_rounds, evaluate = runner.build, Store.log_rounds, runner.evaluate

    def keep_params(j: grid.Job, device: torch.device) -> Any:
        task, env, alg = build(j, device)
        rnd = alg.round if timers is None else timers.wrap("algorithm round", alg.round)

        def round_(*a: Any) -> Any:
            state, log = rnd(*a)
            last[:] = [alg.params(state)]  # a reference: read once the job is over
            return state, log

        return task, env, alg._replace(round=round_)

    def emit(e: executors.Event) -> None:
        events[0] += 1

    runner.build = keep_params  # type: ignore[assignment]
    if timers is not None:
        Store.log_rounds = timers.wrap("database writes", log_rounds)  # type: ignore[method-assign]
        runner.evaluate = timers.wrap("evaluation", evaluate)  # type: ignore[assignment]
    try:
        start = time.perf_counter()
        out = executors.run_job(job, url, executors.Slot("cpu", threads), emit)
        wall = time.perf_counter() - start
    finally:
        runner.build, Store.log_rounds, runner.evaluate = build, log_rounds, evaluate  # type: ignore[method-assign]
    assert out.status == "done", out.error
    return wall, last[0].tolist(), events[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=100_000, help="rounds of the headline run")
    ap.add_argument("--probe-rounds", type=int, default=5_000, help="rounds of the breakdown")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--lr", type=float, default=0.130, help="32x EF21's theory step here")
    ap.add_argument("--lam", type=float, default=0.1)
    args = ap.parse_args()
    runner.tune_allocator()
    load = os.getloadavg()[0]
    cores = executors.cpu_count()
    policy = executors.choose(1, cores)  # as `fedbench run` for one job
    threads = executors.job_threads(make_job(args, 1), executors.Slot("cpu", policy.threads, False))
    probe = make_job(args, args.probe_rounds)
    runner.load_dataset(probe.config["task"])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        run_job(make_job(args, 50), folder, "warmup", threads)
        np_round, np_x = numpy_ef21(probe, args.probe_rounds)
        timers = Timers()
        wall, x, events = run_job(probe, folder, "probe", threads, timers)
        per = wall / args.probe_rounds
        same = float(np.abs(np.asarray(x, np.float32) - np_x).max())
        print(
            f"EF21 + Top-1, breast_cancer 569 x 30 logistic regression (non-convex reg), "
            f"{args.clients} clients, full gradients, lr {args.lr}; evaluation (losses, "
            f"‖∇f‖²) every {args.eval_every} rounds; {threads} torch thread(s) (fedbench's "
            f"policy for one job now); "
            f"1-min load average {load:.2f} on {os.cpu_count()} cores"
        )
        print(f"per round over {args.probe_rounds} rounds (µs):")
        print(f"  plain NumPy EF21 loop (no logging)   : {np_round * 1e6:8.1f}")
        print(f"  fedbench, whole job path             : {per * 1e6:8.1f}  "
              f"({per / np_round:.1f}x the NumPy loop)")  # fmt: skip
        rest = wall
        for name in ("algorithm round", "evaluation", "database writes"):
            secs = timers.seconds.get(name, 0.0)
            rest -= secs
            print(f"    {name:34} : {secs / args.probe_rounds * 1e6:8.1f}  "
                  f"({timers.calls.get(name, 0)} calls)")  # fmt: skip
        print(f"    {'bookkeeping, progress, set-up':34} : {rest / args.probe_rounds * 1e6:8.1f}"
              f"  ({events} progress events)")  # fmt: skip
        print(f"  max |x_fedbench - x_numpy| after {args.probe_rounds} rounds: {same:.2e}")
        wall, _, _ = run_job(make_job(args, args.rounds), folder, "headline", threads)
        verdict = "met" if wall < 30 else "NOT met"
        print(
            f"{args.rounds} rounds end to end (database included): {wall:.1f} s = "
            f"{wall / args.rounds * 1e6:.0f} µs/round (goal: well under a minute, < 30 s: "
            f"{verdict})"
        )


if __name__ == "__main__":
    main()
