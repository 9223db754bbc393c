"""Speed of one FedAvg round: fedbench's vectorised cohort against a plain sequential loop,
on an idle machine and beside one competing CPU-bound process.

The configuration of the foundation issue: digits, MLP 200-200, 100 clients all
participating, 5 local SGD steps of batch 32. Both sides are measured in this run, on this
machine, on the same data and the same amount of work:

- fedbench: the real code path (grid -> runner.build -> FedAvg round), all clients at once;
- sequential: the loop most simulators run: for each client, load the global weights into an
  nn.Module, make an SGD optimizer, take K steps on minibatches indexed from tensors, flatten
  the result, average.

Each side runs in its own process, as a user would run it: the loop with PyTorch's defaults
(all cores, OpenMP's spinning wait), fedbench with its own policy (all cores in one job,
blocks of clients side by side on them (fedbench.parallel), passive OpenMP wait set by
`import fedbench` before torch loads), plus fedbench variants that show why the policy is what
it is (one thread; blocks one after another; the spinning wait). Marginal time per round:
every side is built (data on the device, model, optimizer state) and warmed up first, then
timed over a few rounds, so set-up is excluded. The sides are measured in turn, several times,
and the fastest of each is compared: noise on a shared machine only ever adds time, so the
minimum is the stable estimate (medians are printed too).

Two phases in one run: "idle" (nothing started by the benchmark; the load average is printed,
since other users' work counts too) and "loaded" (one `while True: pass` process that the
benchmark starts before and stops after the phase). Goals: loaded, fedbench >= 3x the loop,
and fedbench loaded/idle <= 2.5x (a fair share of 2 cores is 2x); idle, fedbench >= 4x the
loop where the hardware allows. The round's matmul FLOPs are counted analytically and
compared with this machine's large-GEMM rate.

Run: make bench  (or python benchmarks/bench_round.py --help)
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch  # before fedbench: the loop side keeps PyTorch's default OpenMP wait policy
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
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
    mode = runner.rounds_mode(task.model, job.config["algorithm"]["name"])  # as `fedbench run`
    with mode:
        state = [alg.init(task.init_params(generator(0, 0, "init")), env, RoundRng(0, 0, device))]
    t = [0]

    def step() -> None:
        t[0] += 1
        with mode:
            state[0], _ = alg.round(state[0], env, RoundRng(0, t[0], device))

    return step


# -- one side per process -------------------------------------------------------------------

# (label, side, environment added to the child's, threads: "policy" = what `fedbench run`
# chooses for this one job, "all" = torch's default, or a number)
SIDES = [
    ("sequential PyTorch client loop (torch defaults)", "loop", {}, "all"),
    ("fedbench, default policy", "fedbench", {}, "policy"),
    ("fedbench, all cores, passive wait", "fedbench", {}, "all"),
    ("fedbench, 1 thread", "fedbench", {}, "1"),
    (
        "fedbench, all cores, blocks in order (no block threads)",
        "fedbench",
        {"FEDBENCH_BLOCK_THREADS": "0"},
        "all",
    ),
    ("fedbench, all cores, spinning wait (old default)", "fedbench", {"SPIN": "1"}, "all"),
]
EXTRA = [  # --spincounts: all cores, OpenMP threads spin this many times before sleeping
    (f"fedbench, all cores, GOMP_SPINCOUNT={n}", "fedbench", {"GOMP_SPINCOUNT": str(n)}, "all")
    for n in (3_000, 30_000)
]


def serve(side: str, args: argparse.Namespace) -> None:
    """Child process: build one side, warm it up, then answer lines: `threads WHICH` sets the
    thread count (policy | all | N) and prints it; `N` times N rounds, prints s/round."""
    from fedbench import executors

    job = make_job(args)
    device = runner.resolve_device(args.device)
    runner.tune_allocator()
    step = sequential_round(job, device) if side == "loop" else fedbench_round(job, device)
    every = torch.get_num_threads()
    step()
    print("ready", flush=True)
    for line in sys.stdin:
        words = line.split()
        if words[0] == "threads":
            which = words[1]
            if which == "policy":
                policy = executors.choose(1, executors.cpu_count(), default_threads=None)
                slot = executors.Slot(args.device, policy.threads, policy.fixed)
                n = executors.job_threads(job, slot)
            else:
                n = every if which == "all" else int(which)
            torch.set_num_threads(n)
            print(n, flush=True)
        else:
            print(marginal(step, int(words[0])), flush=True)


class Side:
    def __init__(self, label: str, side: str, env: dict[str, str], threads: str,
                 argv: list[str]) -> None:  # fmt: skip
        self.label, self.threads = label, threads
        env = dict(env)
        spin = env.pop("SPIN", None) is not None
        child_env = {**os.environ, **env}
        if side == "loop" or spin or "GOMP_SPINCOUNT" in env:  # torch before fedbench there
            child_env.pop("OMP_WAIT_POLICY", None)  # libgomp's default: spin, then sleep
        self.wait = child_env.get("OMP_WAIT_POLICY", "spin").lower()
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", side, *argv], env=child_env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.times: dict[str, list[float]] = {"idle": [], "loaded": []}
        self.used: dict[str, int] = {}

    def ask(self, line: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        if not answer:
            raise RuntimeError(f"{self.label}: the benchmark process failed")
        return answer

    def ready(self) -> None:
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{self.label}: the benchmark process failed")

    def info(self, phase: str) -> str:
        n = self.used[phase]
        return f"{n} thread{'s' * (n != 1)}"

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def measure(sides: list[Side], phase: str, repeats: int, rounds: int) -> list[float]:
    """Each side's timings in turn; returns this machine's GEMM rates, one timed after every
    turn (in this process, while the sides wait), so that the rate sees the same conditions."""
    for side in sides:  # threads as chosen in this phase's conditions, one more warm-up round
        side.used[phase] = int(side.ask(f"threads {side.threads}"))
        side.ask("1")
    peaks = []
    for _ in range(repeats):
        for side in sides:
            side.times[phase].append(float(side.ask(str(rounds))))
        peaks.append(matmul_rate(repeats=2))
    return peaks


def make_job(args: argparse.Namespace) -> grid.Job:
    hidden = [int(h) for h in args.hidden.split(",")]
    text = GRID.format(hidden=hidden, clients=args.clients, steps=args.steps, batch=args.batch)
    (job,) = grid.parse(text, Path("bench.toml")).jobs
    return job


def goal(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--hidden", default="200,200")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=7, help="timings per side and phase")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per timing")
    ap.add_argument("--no-loaded", action="store_true", help="skip the loaded phase")
    ap.add_argument("--spincounts", action="store_true", help="also time short spin counts")
    ap.add_argument("--serve", choices=["loop", "fedbench"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args)
        return
    argv = [f"--{k}={getattr(args, k)}" for k in ("clients", "steps", "batch", "hidden", "device")]
    chosen = SIDES + (EXTRA if args.spincounts else [])
    sides = [Side(label, side, dict(env), threads, argv) for label, side, env, threads in chosen]
    phases = ["idle"] if args.no_loaded else ["idle", "loaded"]
    loads: dict[str, float] = {}
    try:
        for s in sides:
            s.ready()
        peaks: list[float] = []
        for phase in phases:
            hog = None
            if phase == "loaded":
                hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                time.sleep(1.0)
            loads[phase] = os.getloadavg()[0]
            try:
                rates = measure(sides, phase, args.repeats, args.rounds)
                if phase == "idle":
                    peaks = rates
            finally:
                if hog is not None:
                    hog.kill()
                    hog.wait()
    finally:
        for s in sides:
            s.close()
    report(args, sides, phases, loads, max(peaks))


def report(args: argparse.Namespace, sides: list[Side], phases: list[str],
           loads: dict[str, float], peak: float) -> None:  # fmt: skip
    hidden = [int(h) for h in args.hidden.split(",")]
    mlp = "-".join(map(str, hidden))
    flops = round_flops([64, *hidden, 10], args.clients, args.steps, args.batch)
    print(
        f"FedAvg round: digits, MLP {mlp}, {args.clients} clients all participating, "
        f"{args.steps} local steps of batch {args.batch}, {args.device}, "
        f"{os.cpu_count()} cores; ms per round, fastest of {args.repeats} timings of "
        f"{args.rounds} rounds (median)"
    )
    print(
        "  conditions: idle = no process started by the benchmark (1-min load average "
        f"{loads['idle']:.2f} at its start)"
        + (
            f"; loaded = one competing `while True: pass` process (load average "
            f"{loads['loaded']:.2f})"
            if "loaded" in loads
            else ""
        )
    )
    best = {p: [min(s.times[p]) for s in sides] for p in phases}
    for i, s in enumerate(sides):
        cells = "".join(
            f"  {p} {best[p][i] * 1e3:8.1f} ({statistics.median(s.times[p]) * 1e3:7.1f}) "
            f"{s.info(p):10}"
            for p in phases
        )
        ratio = f"  loaded/idle {best['loaded'][i] / best['idle'][i]:4.2f}x" if (
            "loaded" in phases
        ) else ""  # fmt: skip
        print(f"  {s.label:49} {s.wait:7} wait{cells}{ratio}")
    seq, vec = best["idle"][0], best["idle"][1]
    print(
        f"  speed-up idle                  : {seq / vec:8.2f}x   "
        f"(goal >= 4x where the hardware allows: {goal(seq / vec >= 4)})"
    )
    if "loaded" in phases:
        lseq, lvec = best["loaded"][0], best["loaded"][1]
        print(f"  speed-up loaded                : {lseq / lvec:8.2f}x   (goal >= 3x: "
              f"{goal(lseq / lvec >= 3)})")  # fmt: skip
        print(f"  fedbench loaded / idle         : {lvec / vec:8.2f}x   (goal <= 2.5x: "
              f"{goal(lvec / vec <= 2.5)}; a fair share of 2 cores is 2x)")  # fmt: skip
    print(f"  round matmul work              : {flops / 1e9:8.2f} GFLOP")
    print(
        f"  fedbench rate (idle)           : {flops / vec / 1e9:8.1f} GFLOP/s = "
        f"{flops / vec / peak:5.1%} of this machine's fp32 GEMM rate "
        f"({peak / 1e9:.0f} GFLOP/s, 2048x2048, {torch.get_num_threads()} threads, fastest "
        f"of {args.repeats} timed in turn with the sides)"
    )
    print(
        f"  sequential rate (idle)         : {flops / seq / 1e9:8.1f} GFLOP/s = "
        f"{flops / seq / peak:5.1%}"
    )


if __name__ == "__main__":
    main()
