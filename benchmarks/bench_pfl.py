"""fedbench against pfl-research (Apple's `pfl`, PyPI) on bench_round.py's workload: digits,
MLP 64-200-200-10, 100 clients all participating, 5 local SGD steps of batch 32, FedAvg.

pfl runs in its documented fastest simulation mode for one machine: the PyTorch backend,
`SimulatedBackend` in one process (its distributed mode adds processes, one per core, which a
2-core run cannot feed), one thread. To do the same work, each pfl user holds the 5 × 32
samples that a fedbench round draws for that client (drawn once, with replacement, from the
client's own samples of the same partition) and trains one epoch of batch 32: 5 steps of
32. fedbench runs its real round (grid -> runner.build -> FedAvg), also on one thread. Time per
round is marginal: both sides are built and warmed up, then timed alternately (fastest of the
repeats; medians printed too); pfl's is (a run of 1 + R rounds − a run of 1 round) / R.
Also printed: the ratio's ceiling on this machine (pfl's round over the round's FLOPs at
the large-GEMM rate: no implementation of the same arithmetic beats it), and fedbench's round
as a share of this machine's large-GEMM rate (bench_round.matmul_rate, one thread), timed in
turn with the rounds so that both see the same conditions on a shared machine (fastest of
each).

pfl is optional (`pip install 'fedbench[bench]'`, or PFL_PATH=dir holding it): without it
this benchmark says why and exits 0. Run: python benchmarks/bench_pfl.py --help
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
if os.environ.get("PFL_PATH"):
    sys.path.append(os.environ["PFL_PATH"])  # after the venv: its numpy/torch win
from bench_round import GRID, _time, fedbench_round, marginal, matmul_rate, round_flops

from fedbench import grid, runner
from fedbench.algorithms.base import block_rows


def pfl_version() -> str | None:
    """pfl's version, or None when it cannot be imported here."""
    try:
        from importlib.metadata import version

        import pfl  # noqa: F401

        return version("pfl")
    except Exception:  # missing, or an incompatible dependency: reported, not raised
        return None


def pfl_round(job: grid.Job):  # type: ignore[no-untyped-def]
    """pfl's FedAvg over the same clients and model; returns a function running a given number
    of central iterations (one `run`; its data and model are built once, here)."""
    import numpy as np
    from pfl.aggregate.simulate import SimulatedBackend
    from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
    from pfl.data.dataset import Dataset
    from pfl.data.federated_dataset import FederatedDataset
    from pfl.data.sampling import get_user_sampler
    from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
    from pfl.metrics import Weighted
    from pfl.model.pytorch import PyTorchModel

    t, a = job.config["task"], job.config["algorithm"]
    fd = runner.load_dataset(t)
    steps, batch, n = a["local_steps"], a["batch_size"], fd.n
    rng = np.random.default_rng(0)
    x = fd.x.reshape(fd.x.shape[0], -1)
    users = {}
    for i, (s, c) in enumerate(zip(fd.offsets, fd.counts, strict=True)):  # set-up only
        idx = s + rng.integers(0, c, steps * batch)  # what one fedbench round draws
        users[i] = (torch.as_tensor(x[idx]), torch.as_tensor(fd.y[idx]))
    sizes = [x.shape[1], *t["hidden"], fd.num_classes]

    class MLP(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers: list[torch.nn.Module] = []
            for i, (p, q) in enumerate(itertools.pairwise(sizes)):
                layers += [torch.nn.Linear(p, q)] + (
                    [torch.nn.ReLU()] if i < len(sizes) - 2 else []
                )
            self.net = torch.nn.Sequential(*layers)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def loss(self, x: torch.Tensor, y: torch.Tensor, eval: bool = False) -> torch.Tensor:
            return torch.nn.functional.cross_entropy(self(x), y)

        def metrics(self, x: torch.Tensor, y: torch.Tensor, eval: bool = False) -> dict:
            loss = float(torch.nn.functional.cross_entropy(self(x), y, reduction="sum").detach())
            return {"loss": Weighted(loss, len(y))}

    module = MLP()
    model = PyTorchModel(
        model=module,
        local_optimizer_create=torch.optim.SGD,
        central_optimizer=torch.optim.SGD(module.parameters(), lr=1.0),
    )
    data = FederatedDataset(
        make_dataset_fn=lambda uid: Dataset(raw_data=list(users[uid])),
        user_sampler=get_user_sampler("minimize_reuse", list(users)),
    )
    backend = SimulatedBackend(training_data=data, val_data=data)
    train = NNTrainHyperParams(
        local_learning_rate=a["lr"], local_num_epochs=1, local_batch_size=batch
    )
    evaluate = NNEvalHyperParams(local_batch_size=None)

    def step(rounds: int) -> None:
        params = NNAlgorithmParams(
            central_num_iterations=rounds,
            evaluation_frequency=10**9,
            train_cohort_size=n,
            val_cohort_size=None,
        )
        FederatedAveraging().run(params, backend, model, train, evaluate, callbacks=[],
                                 send_metrics_to_platform=False)  # fmt: skip

    return step


def products_rate(sizes: list[int], block: int, batch: int, repeats: int = 5) -> float:
    """FLOP/s of the batched products alone of one local step of the MLP `sizes`, for one
    block of `block` clients and minibatches of `batch`, in the round's feature-major shapes
    (forward `W h`, weight gradients `dz hᵀ`, input gradients `Wᵀ dz`), operands hot in
    cache: the ceiling of the round's rate, which also moves activations and steps weights."""
    gen = torch.Generator().manual_seed(0)
    ops = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        W, h = torch.randn(block, b, a, generator=gen), torch.randn(block, a, batch, generator=gen)
        dz = torch.randn(block, b, batch, generator=gen)
        ops += [(torch.bmm, W, h), (torch.bmm, dz, h.transpose(1, 2))]
        if i > 0:
            ops.append((torch.bmm, W.transpose(1, 2), dz))
    flops = sum(2 * x.shape[0] * x.shape[1] * x.shape[2] * y.shape[2] for _, x, y in ops)

    def step() -> None:
        for f, x, y in ops:
            f(x, y)

    step()
    return flops / min(_time(lambda: [step() for _ in range(20)]) / 20 for _ in range(repeats))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--hidden", default="200,200")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3, help="rounds per timing")
    args = ap.parse_args()
    version = pfl_version()
    if version is None:
        print("bench_pfl: pfl (pfl-research) is not importable here, nothing compared; install it "
              "with pip install 'fedbench[bench]' (Python 3.10-3.12) or set PFL_PATH")  # fmt: skip
        return
    torch.set_num_threads(1)
    runner.tune_allocator()
    hidden = [int(h) for h in args.hidden.split(",")]
    text = GRID.format(hidden=hidden, clients=args.clients, steps=args.steps, batch=args.batch)
    (job,) = grid.parse(text, Path("bench.toml")).jobs
    ours = fedbench_round(job, torch.device("cpu"))
    theirs = pfl_round(job)
    ours(), theirs(1)  # warm-up
    load = os.getloadavg()[0]
    t_ours, t_pfl, peaks, products = [], [], [], []
    _, env, _ = runner.build(job, torch.device("cpu"))
    block = block_rows(env, args.clients, args.batch)  # the round's clients per block
    for _ in range(args.repeats):  # pfl: (run of 1 + R rounds − run of 1) / R, its set-up excluded
        t_ours.append(marginal(ours, args.rounds))
        one = _time(lambda: theirs(1))
        t_pfl.append((_time(lambda: theirs(1 + args.rounds)) - one) / args.rounds)
        peaks.append(matmul_rate(repeats=2))  # in turn with the rounds: the same conditions
        products.append(products_rate([64, *hidden, 10], block, args.batch, repeats=2))
    peak = max(peaks)
    sizes = [64, *hidden, 10]
    flops = round_flops(sizes, args.clients, args.steps, args.batch)
    best_ours, best_pfl = min(t_ours), min(t_pfl)
    print(f"fedbench vs pfl-research {version}, cpu, 1 thread each, 1-min load average "
          f"{load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")  # fmt: skip
    print(f"  workload: digits, MLP {'-'.join(map(str, sizes))}, {args.clients} clients, "
          f"{args.steps} steps of batch {args.batch}, FedAvg; fastest (median) of "
          f"{args.repeats}")  # fmt: skip
    print(f"  pfl      {best_pfl * 1e3:8.1f} ms/round ({statistics.median(t_pfl) * 1e3:.1f})")
    print(f"  fedbench {best_ours * 1e3:8.1f} ms/round ({statistics.median(t_ours) * 1e3:.1f})")
    print(f"  fedbench / pfl speed: {best_pfl / best_ours:.1f}x  (goal >= 5x)")
    # The round's products cannot run faster than the large-GEMM rate (nor, in blocks, than
    # the products alone): pfl's time over that bound is the largest ratio this CPU allows.
    print(
        f"  ratio ceiling on this machine: {best_pfl * peak / flops:.1f}x with every product at "
        f"the large-GEMM rate, {best_pfl * max(products) / flops:.1f}x at the rate of the "
        f"batched products alone (the round's FLOPs are fixed by the workload)"
    )
    share = flops / best_ours / peak
    print(
        f"  fedbench round: {flops / best_ours / 1e9:.1f} GFLOP/s = {share:.0%} of this "
        f"machine's large-GEMM rate {peak / 1e9:.1f} GFLOP/s (1 thread, 2048x2048, fastest "
        f"of {len(peaks)} timed in turn with the rounds; goal >= 60%)"
    )
    ceiling = max(products)
    print(
        f"  its batched products alone (blocks of {block} clients, operands hot in cache): "
        f"{ceiling / 1e9:.1f} GFLOP/s = {ceiling / peak:.0%} of the large-GEMM rate, the "
        f"ceiling of the round's share; the round reaches {flops / best_ours / ceiling:.0%} of it"
    )


if __name__ == "__main__":
    main()
