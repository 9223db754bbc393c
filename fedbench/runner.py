"""Run one job: build its environment, loop over rounds, stream every round to the store.

Rounds reach the database in batches (`RoundWriter`): one transaction at every evaluation
round, before every checkpoint, at the end, and at least every `FLUSH_SECONDS` in between, so
a fast theory-scale run (10⁵ rounds of a few hundred µs) does not spend its time in commits.
A crash (kill -9, power loss) therefore loses at most the rounds since the last of those
writes: never an evaluated round that was followed by another write, never more than about a
second of work; an exception or Ctrl-C writes the completed rounds first. Re-running the
grid restarts such a run from its checkpoint or from round 0, so no round is lost for good.
A NaN/inf loss or model marks the run `diverged` and stops it; an exception marks it `failed`
with the error, and the caller goes on with the next job.
"""

from __future__ import annotations

import ctypes
import functools
import json
import math
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedbench import checkpoint, seeding
from fedbench.algorithms import Env, build_algorithm
from fedbench.compressors import build_compressor
from fedbench.data import FederatedDataset, load_federated
from fedbench.grid import Job, run_config
from fedbench.models import build_model
from fedbench.network import build_network, charged_seconds
from fedbench.seeding import RoundRng
from fedbench.store import RunSpec, Store
from fedbench.task import ClientData, Task

Progress = Callable[[Job, int, dict[str, float]], None]  # (job, round, metrics) after each round
FLUSH_SECONDS = 1.0  # longest wall time between two writes of a run's rounds


class RoundWriter:
    """A run's per-round metrics, written to the store in batches (see the module docstring)."""

    def __init__(self, store: Store, run_id: int) -> None:
        self.store, self.run_id = store, run_id
        self.pending: list[tuple[int, dict[str, float]]] = []
        self.last = time.perf_counter()

    def add(self, t: int, metrics: dict[str, float], write: bool = False) -> None:
        """Queue round `t`; write the queue now when `write` or after FLUSH_SECONDS."""
        self.pending.append((t, dict(metrics)))
        if write or time.perf_counter() - self.last >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.store.log_rounds(self.run_id, self.pending)
            self.pending = []
        self.last = time.perf_counter()


@dataclass(frozen=True)
class Outcome:
    key: str
    status: str  # done | failed | diverged
    error: str | None
    rounds: int
    seconds: float
    final: dict[str, float]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is available here; allowed: auto, cpu")
    return torch.device(device)


def tune_allocator() -> None:
    """Keep freed memory in the process (glibc): big per-round tensors are reused without
    page faults instead of being returned to the OS and faulted in again every round."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: serve allocations < 1 GiB from the heap
        libc.mallopt(-1, (1 << 31) - 1)  # M_TRIM_THRESHOLD: do not trim the heap
    except (OSError, AttributeError):
        pass


@functools.lru_cache(maxsize=8)
def _dataset(task_json: str) -> FederatedDataset:
    return load_federated(json.loads(task_json), seed=0)


def load_dataset(task: dict[str, Any]) -> FederatedDataset:
    """Cached per resolved [task] section: a grid loads each dataset/partition once."""
    return _dataset(json.dumps(task, sort_keys=True))


def build(job: Job, device: torch.device) -> tuple[Task, Env, Any]:
    """The task, the environment and the algorithm of a job."""
    cfg = job.config
    t, a = cfg["task"], cfg["algorithm"]
    fd = load_dataset(t)
    data = ClientData.from_numpy(fd.x, fd.y, fd.counts, fd.x_test, fd.y_test, device)
    model = build_model(t["model"], t, fd.input_shape, fd.num_classes, fd.binary)
    task = Task(model, data, reg=t.get("reg", "none"), lam=t.get("lam", 0.0))
    up, down = cfg["compressor"], cfg["downlink"]
    env = Env(
        task=task,
        uplink=build_compressor(up["name"], up, task.d, task.model.spec.shapes),
        downlink=build_compressor(down["name"], down, task.d, task.model.spec.shapes),
        participation=a["participation"],
        batch_size=a["batch_size"],
        error_feedback=up["error_feedback"],
        state_dtype=getattr(torch, a["client_state"]),
        network=build_network(cfg["network"], task.n, job.seed) if "network" in cfg else None,
        sampling=a.get("sampling", "uniform"),
        sampling_candidates=a.get("sampling_candidates", 0),
    )
    return task, env, build_algorithm(a["name"], a)


def run_spec(job: Job) -> RunSpec:
    return RunSpec(
        job.key, job.seed, job.algorithm, job.compressor, job.dataset, job.model, run_config(job)
    )


def execute(
    job: Job, store: Store, device: torch.device, progress: Progress | None = None
) -> Outcome:
    """Run `job`, writing to `store`: from its last checkpoint when it has one (and the
    database holds that round), else from round 0. Never raises for a failure of the job."""
    start = time.perf_counter()
    folder = checkpoint.directory(store.url)
    ckpt = None
    if job.config["experiment"]["checkpoint_every"] > 0:
        ckpt = checkpoint.load(folder, job.key, device)
        logged = store.last_round(int(store.get_run(job.key)["id"]))
        if ckpt is not None and (logged is None or logged < ckpt.round):
            ckpt = None  # this database does not have the checkpoint's rounds
    resume = None if ckpt is None else ckpt.round
    run_id = store.start_run(job.key, socket.gethostname(), str(device), resume_round=resume)
    final: dict[str, float] = {}
    rows = RoundWriter(store, run_id)
    try:
        status, error, rounds_done, final = _loop(
            job, rows, run_id, device, start, progress, folder, ckpt
        )
        rows.flush()
    except KeyboardInterrupt:
        _flush_quietly(rows)  # the completed rounds
        store.mark_interrupted([run_id])
        raise
    except Exception as e:
        status, error = "failed", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=8)}"
        _flush_quietly(rows)
        rounds_done = store.last_round(run_id) or 0
    store.finish_run(run_id, status, error)
    checkpoint.remove(folder, job.key)
    return Outcome(job.key, status, error, rounds_done, time.perf_counter() - start, final)


def _flush_quietly(rows: RoundWriter) -> None:
    """Write the completed rounds after a failure; a database error here is not the story."""
    try:
        rows.flush()
    except Exception:
        rows.pending = []


def _loop(
    job: Job,
    rows: RoundWriter,
    run_id: int,
    device: torch.device,
    start: float,
    progress: Progress | None,
    folder: Path,
    ckpt: checkpoint.Checkpoint | None,
) -> tuple[str, str | None, int, dict[str, float]]:
    exp = job.config["experiment"]
    rounds, every, save_every = exp["rounds"], exp["eval_every"], exp["checkpoint_every"]
    task, env, alg = build(job, device)
    grad_norm = bool(exp["grad_norm"])
    if ckpt is None:
        if job.config["task"]["init"] == "zeros":
            x0 = torch.zeros(task.d, device=device)
        else:
            x0 = task.init_params(seeding.generator(job.seed, 0, seeding.INIT))
        state = alg.init(x0, env, RoundRng(job.seed, 0, device))
        bits_up = bits_down = wall0 = 0.0
        metrics = {"bits_up": 0.0, "bits_down": 0.0, "wall_s": 0.0}
        sim_time = 0.0  # simulated seconds ([network] section or an asynchronous method)
        if env.network is not None:
            metrics["sim_time_s"] = 0.0
        metrics.update(evaluate(task, x0, grad_norm))
        if alg.metrics is not None:
            metrics.update(alg.metrics(state, env))
        rows.add(0, metrics, write=True)
        first = 1
    else:  # resume after the checkpoint's round
        state, bits_up, bits_down, wall0 = ckpt.state, ckpt.bits_up, ckpt.bits_down, ckpt.wall_s
        sim_time = ckpt.extra.get("sim_time_s", 0.0)
        first = ckpt.round + 1
    for t in range(first, rounds + 1):
        state, log = alg.round(state, env, RoundRng(job.seed, t, device))
        bits_up += float(log.bits_up.sum())
        bits_down += float(log.bits_down.sum())
        x = alg.params(state)
        metrics = {
            "bits_up": bits_up,
            "bits_down": bits_down,
            "participants": float(log.participants),
            **log.extra,
        }
        if log.sim_time_s is not None:  # the method's own clock
            sim_time = log.sim_time_s
        elif env.network is not None:  # a synchronous round: its slowest participant
            steps = job.config["algorithm"].get("local_steps", 1)
            sim_time += charged_seconds(env.network, log, env, RoundRng(job.seed, t, device), steps)
        if env.network is not None or log.sim_time_s is not None:
            metrics["sim_time_s"] = sim_time
        finite = bool(torch.isfinite(x).all()) and all(math.isfinite(v) for v in log.extra.values())
        evaluated = finite and (t % every == 0 or t == rounds)
        if evaluated:
            metrics.update(evaluate(task, x, grad_norm))
            if alg.metrics is not None:
                metrics.update(alg.metrics(state, env))
            finite = math.isfinite(metrics["train_loss"])
        metrics["wall_s"] = wall0 + time.perf_counter() - start
        rows.add(t, metrics, write=evaluated or not finite)
        if progress is not None:
            progress(job, t, metrics)
        if not finite:
            return "diverged", f"non-finite loss or model at round {t}", t, metrics
        if save_every and t % save_every == 0 and t < rounds:
            rows.flush()  # the database holds every round the checkpoint covers
            extra = {"sim_time_s": sim_time}
            ckpt_t = checkpoint.Checkpoint(t, state, bits_up, bits_down, metrics["wall_s"], extra)
            checkpoint.save(folder, job.key, ckpt_t)
    return "done", None, rounds, metrics


def evaluate(task: Task, x: torch.Tensor, grad_norm: bool = False) -> dict[str, float]:
    """Evaluation metrics of the server model: train_loss (the objective), test loss/accuracy,
    and grad_norm_sq = ‖∇f(x)‖² when asked."""
    out = {"train_loss": task.train_loss(x), **task.evaluate(x)}
    if grad_norm:
        out["grad_norm_sq"] = float(task.full_gradient(x).square().sum())
    return out


def preflight(jobs: list[Job], path: str) -> list[str]:
    """Load every distinct dataset/partition and build every distinct model before anything
    runs; one line per problem."""
    from fedbench.data import DataError

    problems: dict[str, None] = {}
    seen: set[str] = set()
    for job in jobs:
        t = job.config["task"]
        key = json.dumps(t, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        try:
            fd = load_dataset(t)
            build_model(t["model"], t, fd.input_shape, fd.num_classes, fd.binary)
        except (DataError, ValueError) as e:
            problems[f"{path}: [task] {e}"] = None
    return list(problems)
