"""Speed of one FedAvg round: fedbench's vectorised cohort against a plain sequential loop.

The configuration of the foundation issue: digits, MLP 200-200, 100 clients all
participating, 5 local SGD steps of batch 32. Both sides are measured in this run, on this
machine, on the same data and the same amount of work:

- fedbench: the real code path (grid -> runner.build -> FedAvg round), all clients at once;
- sequential: the loop most simulators run: for each client, load the global weights into an
  nn.Module, make an SGD optimizer, take K steps on minibatches indexed from tensors, flatten
  the result, average.

Marginal time per round: both sides are built (data on the device, model, optimizer state)
and warmed up first, then timed over a few rounds, so set-up is excluded on both sides. The
two sides are measured alternately, several times, and the fastest of each is compared: on a
shared machine noise only ever adds time, so the minimum is the stable estimate (the medians
are printed too). The round's matmul
FLOPs are counted analytically and compared with this machine's large-GEMM rate.

Run: make bench  (or python benchmarks/bench_round.py --help)
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from fedbench import grid, runner
from fedbench.seeding import RoundRng, generator

GRID = """
[experiment]
name = "bench"
rounds = 1
[task]
dataset = "digits"
model = "mlp"
hidden = {hidden}
clients = {clients}
partition = "iid"
[algorithm]
name = "fedavg"
lr = 0.05
local_steps = {steps}
batch_size = {batch}
participation = 1.0
"""


def marginal(step: Callable[[], None], rounds: int = 3) -> float:
    """Seconds per round of an already built and warmed-up round function."""
    t = time.perf_counter()
    for _ in range(rounds):
        step()
    return (time.perf_counter() - t) / rounds


def compare(
    a: Callable[[], None], b: Callable[[], None], repeats: int
) -> tuple[list[float], list[float]]:
    """Marginal seconds per round of a and b, measured alternately after a warm-up."""
    a(), b()
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(marginal(a))
        tb.append(marginal(b))
    return ta, tb


def matmul_rate(n: int = 2048, repeats: int = 5) -> float:
    """This machine's fp32 GEMM rate (FLOP/s), best of a few n×n products."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_time(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best


def _time(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def round_flops(sizes: list[int], clients: int, steps: int, batch: int) -> float:
    """Matmul FLOPs of one round: forward, weight gradients, and input gradients of every
    layer but the first, for every sample of every client step."""
    macs = [a * b for a, b in itertools.pairwise(sizes)]
    per_sample = sum(macs) + sum(macs) + sum(macs[1:])
    return 2.0 * per_sample * batch * steps * clients


def sequential_round(job: grid.Job, device: torch.device) -> Callable[[], None]:
    """The plain loop over clients, on the same data as fedbench."""
    task, _, _ = runner.build(job, device)
    a = job.config["algorithm"]
    sizes = [task.data.x[0].numel(), *job.config["task"]["hidden"], task.model.num_classes]
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (p, q) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(p, q))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    net = nn.Sequential(*layers).to(device)
    global_state = {k: v.clone() for k, v in net.state_dict().items()}
    offsets, counts = task.data.offsets.tolist(), task.data.counts.tolist()
    x_all, y_all = task.data.x, task.data.y
    gen = torch.Generator(device=device).manual_seed(0)

    def step() -> None:
        total = None
        for i in range(task.n):
            net.load_state_dict(global_state)
            opt = torch.optim.SGD(net.parameters(), lr=a["lr"])
            for _ in range(a["local_steps"]):
                idx = offsets[i] + torch.randint(
                    0, counts[i], (a["batch_size"],), generator=gen, device=device
                )
                opt.zero_grad()
                nn.functional.cross_entropy(net(x_all[idx]), y_all[idx]).backward()
                opt.step()
            flat = nn.utils.parameters_to_vector(net.parameters()).detach()
            total = flat if total is None else total + flat
        assert total is not None
        nn.utils.vector_to_parameters(total / task.n, net.parameters())
        global_state.update({k: v.clone() for k, v in net.state_dict().items()})

    return step


def fedbench_round(job: grid.Job, device: torch.device) -> Callable[[], None]:
    task, env, alg = runner.build(job, device)
    state = [alg.init(task.init_params(generator(0, 0, "init")), env, RoundRng(0, 0, device))]
    t = [0]

    def step() -> None:
        t[0] += 1
        state[0], _ = alg.round(state[0], env, RoundRng(0, t[0], device))

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--hidden", default="200,200")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    runner.tune_allocator()
    device = runner.resolve_device(args.device)
    hidden = [int(h) for h in args.hidden.split(",")]
    text = GRID.format(hidden=hidden, clients=args.clients, steps=args.steps, batch=args.batch)
    (job,) = grid.parse(text, Path("bench.toml")).jobs

    seq_all, vec_all = compare(
        sequential_round(job, device), fedbench_round(job, device), args.repeats
    )
    seq, vec = min(seq_all), min(vec_all)
    sizes = [64, *hidden, 10]
    flops = round_flops(sizes, args.clients, args.steps, args.batch)
    peak = matmul_rate()
    speedup = seq / vec
    mlp = "-".join(map(str, hidden))
    goal = "met" if speedup >= 4 else "NOT met"
    print(
        f"FedAvg round: digits, MLP {mlp}, {args.clients} clients all participating, "
        f"{args.steps} local steps of batch {args.batch}, {device}, "
        f"{torch.get_num_threads()} threads"
    )
    seq_med, vec_med = statistics.median(seq_all), statistics.median(vec_all)
    print(
        f"  sequential PyTorch client loop : {seq * 1e3:8.1f} ms/round (median {seq_med * 1e3:.1f})"
    )
    print(
        f"  fedbench vectorised cohort     : {vec * 1e3:8.1f} ms/round (median {vec_med * 1e3:.1f})"
    )
    print(
        f"  speed-up                       : {speedup:8.2f}x   "
        f"(of medians {seq_med / vec_med:.2f}x; goal >= 4x: {goal})"
    )
    print(f"  round matmul work              : {flops / 1e9:8.2f} GFLOP")
    print(
        f"  fedbench rate                  : {flops / vec / 1e9:8.1f} GFLOP/s = "
        f"{flops / vec / peak:5.1%} of this machine's fp32 GEMM rate "
        f"({peak / 1e9:.0f} GFLOP/s, 2048x2048)"
    )
    print(
        f"  sequential rate                : {flops / seq / 1e9:8.1f} GFLOP/s = "
        f"{flops / seq / peak:5.1%}"
    )


if __name__ == "__main__":
    main()
