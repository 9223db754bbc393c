"""Scale: time per round against the number of clients and the model size, beside a plain
sequential PyTorch loop on the same work, and the memory of 10,000-client SCAFFOLD.

1. FedAvg rounds (all clients, 5 local steps of batch 8) on MNIST-1D for 10 ... 10,000
   clients (logistic regression), then for growing MLPs at 100 clients: fedbench's vectorised
   cohort against the sequential client loop of bench_round.py, measured alternately in this
   run (fastest of the repeats; the sequential loop at 10,000 clients is timed once).
2. SCAFFOLD with per-client control variates kept once as an `[n, d]` tensor, 10% of the
   clients per round: 10,000 clients with logistic regression and 1,000 with an MLP 200-200,
   control variates in float32 and in float16 (`[algorithm] client_state`). Each case runs in
   its own process so that its peak memory (max RSS) is its own.

3. Cross-device: the whole `fedbench run` process for one SCAFFOLD round on FedProx
   Synthetic(1, 1) (50 samples a client, MLP 60-64-10, 1% participation at 10^5 clients and
   0.1% at 10^6, train_loss on 1,000 sampled clients, no test split): wall time and max RSS
   from /usr/bin/time -v. `--generator 3` (the default) computes each sample when a cohort
   indexes it; `--generator 2,3` also runs the stored generator (10^6 clients of generator 2
   need ~13 GB for the data alone).

MNIST-1D stands in for digits at 10,000 clients: digits has 1,797 samples, fewer than the
clients. Run: make bench  (or python benchmarks/bench_scale.py --help)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_round import compare, fedbench_round, sequential_round

from fedbench import grid, runner
from fedbench.seeding import RoundRng, generator

GRID = """
[experiment]
name = "scale"
rounds = 1
[task]
dataset = "mnist1d"
samples = {samples}
model = "mlp"
hidden = {hidden}
clients = {clients}
partition = "iid"
test_fraction = 0.05
[algorithm]
name = "{algorithm}"
lr = 0.05
local_steps = 5
batch_size = 8
participation = {participation}
client_state = "{state}"
"""


# MNIST-1D samples generated (at least 4 a client): 5,000 take ~5 s to generate in every
# process (this one and each SCAFFOLD case's); tests/test_bench_smoke.py asks for fewer
SAMPLES = 5000


def job_of(clients: int, hidden: list[int], algorithm: str = "fedavg", participation: float = 1.0,
           state: str = "float32", samples: int = SAMPLES) -> grid.Job:  # fmt: skip
    samples = max(samples, 4 * clients)
    text = GRID.format(
        samples=samples, hidden=hidden, clients=clients, algorithm=algorithm,
        participation=participation, state=state,
    )  # fmt: skip
    (job,) = grid.parse(text, Path("scale.toml")).jobs
    return job


def versus_sequential(
    clients: int, hidden: list[int], repeats: int, samples: int = SAMPLES
) -> tuple[float, float]:
    """(sequential, fedbench) seconds per round, fastest of the repeats."""
    job, dev = job_of(clients, hidden, samples=samples), torch.device("cpu")
    seq, vec = compare(sequential_round(job, dev), fedbench_round(job, dev), repeats)
    return min(seq), min(vec)


def scaffold_case(
    clients: int, hidden: list[int], state: str, rounds: int, samples: int = SAMPLES
) -> dict[str, float]:
    """Run in a child process: build, run `rounds` SCAFFOLD rounds, report time and memory."""
    runner.tune_allocator()
    job = job_of(clients, hidden, "scaffold", 0.1, state, samples)
    dev = torch.device("cpu")
    task, env, alg = runner.build(job, dev)
    s = alg.init(task.init_params(generator(0, 0, "init")), env, RoundRng(0, 0, dev))
    s, _ = alg.round(s, env, RoundRng(0, 1, dev))  # warm-up
    t = time.perf_counter()
    for r in range(rounds):
        s, _ = alg.round(s, env, RoundRng(0, r + 2, dev))
    per_round = (time.perf_counter() - t) / rounds
    return {
        "clients": clients,
        "d": task.d,
        "round_s": per_round,
        "state_bytes_per_client": s.c_i[0].nbytes,
        "state_mb": s.c_i.nbytes / 2**20,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "data_mb": (task.data.x.nbytes + task.data.y.nbytes) / 2**20,
    }


CROSS_DEVICE = """
[experiment]
name = "cross_device"
rounds = 1
eval_every = 1
eval_clients = 1000
[task]
dataset = "synthetic"
generator = {generator}
max_samples = 50
clients = {clients}
model = "mlp"
hidden = [64]
test_fraction = 0.0
[algorithm]
name = "scaffold"
participation = {participation}
lr = 0.05
local_steps = 5
batch_size = 10
"""


def cross_device(clients: int, participation: float, generator: int) -> tuple[float, float]:
    """(wall seconds, max RSS GB) of a whole `fedbench run` of CROSS_DEVICE in a fresh process."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cross_device.toml"
        path.write_text(
            CROSS_DEVICE.format(clients=clients, participation=participation, generator=generator)
        )
        cmd = [sys.executable, "-m", "fedbench", "run", str(path), "--db", str(Path(tmp) / "r.db"),
               "--workers", "1"]  # fmt: skip
        timer = ["/usr/bin/time", "-v"] if Path("/usr/bin/time").exists() else []
        start = time.perf_counter()
        out = subprocess.run(timer + cmd, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - start
    rss = [ln for ln in out.stderr.splitlines() if "Maximum resident set size" in ln]
    kb = int(rss[0].split()[-1]) if rss else resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, kb / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", default="10,100,1000,10000")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", default="32;128;200,200;512,512", help="MLP hidden layers")
    ap.add_argument("--size-clients", type=int, default=100)
    ap.add_argument("--scaffold-clients", type=int, default=10000)
    ap.add_argument("--mlp-clients", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--cross-device", default="100000,1000000", help="clients (comma-separated; '' skips)"
    )
    ap.add_argument(
        "--generator", default="3", help="synthetic generators to compare (comma-separated)"
    )
    ap.add_argument(
        "--samples", type=int, default=SAMPLES, help="MNIST-1D samples (at least 4 a client)"
    )
    ap.add_argument("--case", help=argparse.SUPPRESS)  # internal: one SCAFFOLD case as JSON
    args = ap.parse_args()
    if args.case:
        clients, hidden, state = json.loads(args.case)
        print(json.dumps(scaffold_case(clients, hidden, state, args.rounds, args.samples)))
        return
    runner.tune_allocator()
    print(f"fedbench scale benchmark, cpu, {torch.get_num_threads()} threads")
    print("FedAvg round vs clients (MNIST-1D logistic regression, 5 steps of batch 8)")
    print(f"  {'clients':>8} {'sequential ms':>14} {'fedbench ms':>12} {'speed-up':>9}")
    for n in (int(c) for c in args.clients.split(",")):
        seq, vec = versus_sequential(n, [], 1 if n >= 5000 else args.repeats, args.samples)
        print(f"  {n:8d} {seq * 1e3:14.1f} {vec * 1e3:12.1f} {seq / vec:8.1f}x")
    print(f"FedAvg round vs model size ({args.size_clients} clients)")
    print(f"  {'MLP':>10} {'d':>8} {'sequential ms':>14} {'fedbench ms':>12} {'speed-up':>9}")
    for hidden in ([int(h) for h in size.split(",")] for size in args.sizes.split(";")):
        seq, vec = versus_sequential(args.size_clients, hidden, args.repeats, args.samples)
        job = job_of(args.size_clients, hidden, samples=args.samples)
        d = runner.build(job, torch.device("cpu"))[0].d
        name = "-".join(map(str, hidden))
        print(f"  {name:>10} {d:8d} {seq * 1e3:14.1f} {vec * 1e3:12.1f} {seq / vec:8.1f}x")
    print("SCAFFOLD, 10% participation, control variates kept once as [n, d]")
    print(
        f"  {'case':>22} {'d':>7} {'ms/round':>9} {'B/client':>9} {'c_i MB':>8} {'peak RSS MB':>12}"
    )
    cases = [(args.scaffold_clients, [], s) for s in ("float32", "float16")]
    cases += [(args.mlp_clients, [200, 200], s) for s in ("float32", "float16")]
    for clients, hidden, state in cases:
        out = subprocess.run(
            [sys.executable, __file__, "--case", json.dumps([clients, hidden, state]),
             "--rounds", str(args.rounds), "--samples", str(args.samples)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        r = json.loads(out.stdout.strip().splitlines()[-1])
        model = "logreg" if not hidden else "MLP " + "-".join(map(str, hidden))
        name = f"{clients} × {model} {state[5:]}"
        print(
            f"  {name:>22} {r['d']:7d} {r['round_s'] * 1e3:9.1f} "
            f"{r['state_bytes_per_client']:9d} {r['state_mb']:8.1f} {r['peak_rss_mb']:12.0f}"
        )
    print("Cross-device: whole `fedbench run` process, one SCAFFOLD round, Synthetic(1,1), "
          "MLP 60-64-10 (float32 state), 50 samples a client, train_loss on 1,000 sampled "
          "clients; goals: 10^5 under 8 s and 4 GB, 10^6 under 20 s and 16 GB")  # fmt: skip
    for gen in (int(g) for g in args.generator.split(",") if g):
        for n in (int(c) for c in args.cross_device.split(",") if c):
            part = 0.01 if n < 10**6 else 0.001
            load = os.getloadavg()[0]
            wall, gb = cross_device(n, part, gen)
            print(
                f"  generator {gen}, {n:>9,} clients, {part:.1%} participation: {wall:6.1f} s, "
                f"max RSS {gb:5.2f} GB  (load average before: {load:.2f})"
            )


if __name__ == "__main__":
    main()
