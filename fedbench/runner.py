"""Run one job: build its environment, loop over rounds, stream every round to the store.

Rounds reach the database through `RoundWriter`: a round is written in its own transaction as
soon as `FLUSH_SECONDS` (50 ms) have passed since the last write, and always at an evaluation
round, before a checkpoint and at the end. A round that takes 50 ms or more (every deep-
learning round) is therefore written before the next one starts: a crash (kill -9, power loss)
loses at most the round in flight. Faster rounds (theory scale: 10⁵ rounds of a few hundred
µs) are written in batches at most 50 ms old, so such a run does not spend its time in
commits, and a crash loses at most those 50 ms of rounds. An exception or Ctrl-C writes the
completed rounds first. Every write checks the run's lease (fedbench.store): a launcher that
lost its job writes nothing more. Re-running the grid restarts an unfinished run from its
checkpoint or from round 0, with no duplicate rows.
A NaN/inf loss or model marks the run `diverged` and stops it; an exception marks it `failed`
with the error, and the caller goes on with the next job.
"""

from __future__ import annotations

import ctypes
import functools
import json
import math
import os
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from fedbench import checkpoint, provenance, seeding
from fedbench.algorithms import ALGORITHMS, Env, build_algorithm
from fedbench.compressors import build_compressor
from fedbench.data import FederatedDataset, load_federated
from fedbench.grid import Job, run_config
from fedbench.models import Model, build_model
from fedbench.network import build_network, charged_seconds
from fedbench.seeding import RoundRng
from fedbench.store import (
    MIN_LEASE_TIMEOUT,
    Claim,
    LeaseLostError,
    RunSpec,
    Store,
    StoreBusyError,
    StoreError,
)
from fedbench.task import ClientData, Task, client_metrics

Progress = Callable[[Job, int, dict[str, float]], None]  # (job, round, metrics) after each round
FLUSH_SECONDS = 0.05  # longest wall time between two writes of a run's rounds


class RoundWriter:
    """A run's per-round metrics, written to the store in batches (see the module docstring)."""

    def __init__(self, store: Store, run_id: int, token: str | None = None) -> None:
        self.store, self.run_id, self.token = store, run_id, token
        self.pending: list[tuple[int, dict[str, float]]] = []
        self.last = time.perf_counter()

    def add(self, t: int, metrics: dict[str, float], write: bool = False) -> None:
        """Queue round `t`; write the queue now when `write` or after FLUSH_SECONDS."""
        self.pending.append((t, dict(metrics)))
        if write or time.perf_counter() - self.last >= FLUSH_SECONDS:
            self.flush()

    def flush(self, wait: bool = False) -> None:
        """Write the queued rounds. A busy database (another process froze inside a write)
        is not the job's failure: the rounds stay queued for the next flush, or with `wait`
        (the last flush) the write is retried until it goes through."""
        if self.pending:
            try:
                busy_retry(
                    lambda: self.store.log_rounds(self.run_id, self.pending, self.token), wait
                )
            except StoreBusyError:
                self.last = time.perf_counter()  # try again after FLUSH_SECONDS
                return
            self.pending = []
        self.last = time.perf_counter()


T = TypeVar("T")


def busy_retry(write: Callable[[], T], wait: bool = True) -> T:
    """`write()`, retried while the database is busy (`StoreBusyError`) when `wait`: a write
    of a run that is still ours must land once the frozen holder of the lock moves on; a run
    taken over meanwhile ends in LeaseLostError."""
    pause = 0.1
    while True:
        try:
            return write()
        except StoreBusyError:
            if not wait:
                raise
            time.sleep(pause)
            pause = min(2 * pause, 5.0)


@dataclass(frozen=True)
class Outcome:
    key: str
    status: str  # done | failed | diverged; skipped (another launcher holds it) | lost
    error: str | None
    rounds: int
    seconds: float
    final: dict[str, float]
    note: str | None = None  # e.g. "took over from HOST:PID"


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
    data = ClientData.from_numpy(
        fd.x, fd.y, fd.counts, fd.x_test, fd.y_test, device, fd.x_val, fd.y_val
    )
    model = build_model(t["model"], t, fd.input_shape, fd.num_classes, fd.binary, job.seed)
    sample = cfg["experiment"].get("eval_clients", 0)  # train_loss on a fixed sample of clients
    task = Task(model, data, t.get("reg", "none"), t.get("lam", 0.0), None, sample, job.seed)
    up, down = cfg["compressor"], cfg["downlink"]
    env = Env(
        task=task,
        uplink=build_compressor(up["name"], up, task.d, task.model.spec.shapes, task.n),
        downlink=build_compressor(down["name"], down, task.d, task.model.spec.shapes),
        participation=a["participation"],
        batch_size=a["batch_size"],
        error_feedback=up["error_feedback"],
        state_dtype=getattr(torch, a["client_state"]),
        network=build_network(cfg["network"], task.n, job.seed) if "network" in cfg else None,
        sampling=a.get("sampling", "uniform"),
        sampling_candidates=a.get("sampling_candidates", 0),
        ordering=a.get("ordering", "random"),
        pacing=(a.get("pacing", "linear"), a.get("pacing_a", 0.8), a.get("pacing_b", 0.2)),
        rounds=cfg["experiment"]["rounds"],
    )
    if "privacy" in cfg:  # clipping, noise, secure aggregation around the uplink
        from fedbench.privacy.dp import attach

        env = attach(env, cfg["privacy"])
    return task, env, build_algorithm(a["name"], a)


def run_spec(job: Job) -> RunSpec:
    return RunSpec(
        job.key, job.seed, job.algorithm, job.compressor, job.dataset, job.model, run_config(job)
    )


LAUNCH_ENV = "FEDBENCH_LAUNCH"  # set by `fedbench run` for its workers: the launch's lease
TIMEOUT_ENV = "FEDBENCH_LEASE_TIMEOUT"  # seconds without a heartbeat before a takeover
DEFAULT_LEASE_TIMEOUT = 60.0


@dataclass(frozen=True)
class Launch:
    """What one `fedbench run` process tells every job it runs about leases: the prefix of
    its lease tokens (so it can release its runs at once), the stale timeout and the statuses
    a job may be claimed from."""

    prefix: str
    timeout: float = DEFAULT_LEASE_TIMEOUT
    statuses: tuple[str, ...] = ("pending",)

    def to_env(self) -> str:
        return json.dumps([self.prefix, self.timeout, list(self.statuses)])

    @staticmethod
    def new(timeout: float, statuses: tuple[str, ...]) -> Launch:
        return Launch(
            f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}", timeout, statuses
        )

    @staticmethod
    def current() -> Launch:
        """The launch of this process: from $FEDBENCH_LAUNCH (set by `fedbench run`, inherited
        by its workers), else a new one with $FEDBENCH_LEASE_TIMEOUT or the default."""
        raw = os.environ.get(LAUNCH_ENV)
        if raw:
            prefix, timeout, statuses = json.loads(raw)
            return Launch(str(prefix), float(timeout), tuple(statuses))
        return Launch.new(lease_timeout(), ("pending",))


def lease_timeout() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_LEASE_TIMEOUT
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value >= MIN_LEASE_TIMEOUT):
        raise ValueError(
            f"${TIMEOUT_ENV} = {raw!r}: allowed: at least {MIN_LEASE_TIMEOUT:g} seconds"
        )
    return value


class _Heartbeat:
    """Renews a run's lease every timeout/4 seconds from a daemon thread until stopped."""

    def __init__(self, store: Store, run_id: int, token: str, timeout: float) -> None:
        self._stop = threading.Event()
        self.lost = threading.Event()
        args = (store, run_id, token, max(0.05, timeout / 4))
        self._thread = threading.Thread(target=self._beat, args=args, daemon=True)
        self._thread.start()

    def _beat(self, store: Store, run_id: int, token: str, every: float) -> None:
        while not self._stop.wait(every):
            try:
                if not store.heartbeat(run_id, token):
                    self.lost.set()
                    return
            except StoreError:
                continue  # a busy or unreachable database: try again next beat

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def execute(
    job: Job,
    store: Store,
    device: torch.device,
    progress: Progress | None = None,
    on_start: Callable[[], None] | None = None,
) -> Outcome:
    """Claim `job`'s run (a lease: see `Store.claim`) and run it, writing to `store`: from its
    last checkpoint when it has one (and the database holds that round), else from round 0.
    A run held by another live launcher is `skipped`; a run taken over from us midway is
    `lost` (we stop writing). Never raises for a failure of the job."""
    launch = Launch.current()
    token = f"{launch.prefix}/{uuid.uuid4().hex[:12]}"
    owner = f"{socket.gethostname()}:{os.getpid()}"
    claim = busy_retry(lambda: store.claim(job.key, token, owner, launch.timeout, launch.statuses))
    if claim is None:
        return Outcome(job.key, "skipped", "held by another launcher", 0, 0.0, {})
    if on_start is not None:
        on_start()
    beat = _Heartbeat(store, claim.run_id, token, launch.timeout)
    try:
        return _claimed(job, store, device, progress, claim)
    except KeyboardInterrupt:
        store.mark_interrupted([claim.run_id], token)
        raise
    finally:
        beat.stop()


def _claimed(
    job: Job, store: Store, device: torch.device, progress: Progress | None, claim: Claim
) -> Outcome:
    start = time.perf_counter()
    token = claim.token
    folder = checkpoint.directory(store.url)
    rounds = int(job.config["experiment"]["rounds"])
    ckpt, built = None, None
    if job.config["experiment"]["checkpoint_every"] > 0:
        ckpt = checkpoint.load(folder, job.key, device)
    if ckpt is not None:
        ckpt, built = _trusted(job, ckpt, device, rounds)
    if ckpt is not None:
        logged = store.last_round(claim.run_id)
        if logged is None or logged < ckpt.round:
            ckpt = None  # this database does not have the checkpoint's rounds
    resume = None if ckpt is None else ckpt.round
    final: dict[str, float] = {}
    try:
        run_id = busy_retry(
            lambda: store.start_run(
                job.key,
                socket.gethostname(),
                str(device),
                resume_round=resume,
                token=token,
                rounds=rounds,
            )
        )
        rows = RoundWriter(store, run_id, token)
        prov = _record_provenance(store, run_id, job)
        try:
            task, env, alg = built if built is not None else build(job, device)
            with rounds_mode(task.model, job.config["algorithm"]["name"]):
                status, error, rounds_done, final = _loop(
                    job, rows, device, start, progress, folder, ckpt, task, env, alg
                )
            rows.flush(wait=True)
        except (KeyboardInterrupt, BrokenPipeError):  # not the job's failure
            _flush_quietly(rows)  # the completed rounds
            raise
        except LeaseLostError:
            raise
        except Exception as e:
            status, error = "failed", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=8)}"
            _flush_quietly(rows)
            rounds_done = store.last_round(run_id) or 0
        status = busy_retry(
            lambda: store.finish_run(
                run_id, status, error, token=token, rounds=rounds if status == "done" else None
            )
        )
        _record_provenance(store, run_id, job, prov)
    except LeaseLostError as e:  # another launcher took the run over: it is theirs now
        return Outcome(job.key, "lost", str(e), 0, time.perf_counter() - start, final)
    checkpoint.remove(folder, job.key)
    note = f"took over from {claim.taken_over}" if claim.taken_over else None
    return Outcome(job.key, status, error, rounds_done, time.perf_counter() - start, final, note)


def _record_provenance(
    store: Store, run_id: int, job: Job, start: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """Record the run's provenance (`fedbench.provenance`): at its start (`start` None) the
    commit, grid file, CPU and load average, at its end `start` plus the load then. Returns
    what was recorded; a failure to record is a warning, never the job's failure."""
    try:
        if start is None:
            grid = store.experiment_grid(job.experiment)
            prov = provenance.at_start(*(grid if grid is not None else (None, None)))
        else:
            prov = provenance.at_end(start)
        busy_retry(lambda: store.set_provenance(run_id, prov))
        return prov
    except Exception as e:  # best effort: a run without provenance is still a run
        print(f"warning: job {job.key}: provenance not recorded: {e}", file=sys.stderr)
        return start


def _trusted(
    job: Job, ckpt: checkpoint.Checkpoint, device: torch.device, rounds: int
) -> tuple[checkpoint.Checkpoint | None, tuple[Task, Env, Any] | None]:
    """`ckpt` when it fits the job (`checkpoint.problem` against a freshly initialised state),
    else None after a one-line warning: the run then starts from round 0 and its rows are
    rewritten, never continued from a round the file made up. Also the job's built task,
    environment and algorithm (None if building fails: the run fails, recorded, later)."""
    try:
        built = build(job, device)
        task, env, alg = built
        with rounds_mode(task.model, job.config["algorithm"]["name"]):
            fresh = alg.init(initial_point(job, task, device), env, RoundRng(job.seed, 0, device))
    except Exception:
        return None, None
    reason = checkpoint.problem(ckpt, fresh, rounds)
    if reason is None:
        return ckpt, built
    print(
        f"warning: job {job.key}: ignoring its checkpoint ({reason}); starting from round 0",
        file=sys.stderr,
        flush=True,
    )
    return None, built


def initial_point(job: Job, task: Task, device: torch.device) -> torch.Tensor:
    """x⁰: zeros with `[task] init = "zeros"`, else the model's seeded initialisation."""
    if job.config["task"]["init"] == "zeros":
        return torch.zeros(task.d, device=device)
    return task.init_params(seeding.generator(job.seed, 0, seeding.INIT))


def _flush_quietly(rows: RoundWriter) -> None:
    """Write the completed rounds after a failure; a database error here is not the story."""
    try:
        rows.flush()
    except Exception:
        rows.pending = []


def rounds_mode(model: Model, algorithm: str) -> torch.inference_mode:
    """How a job's rounds run: under `torch.inference_mode` when neither the model (a
    hand-batched one, `Model.autograd_free`) nor the algorithm (`extra["autograd"]`, e.g. FedBR's
    adversarial step) records autograd graphs. Same numbers, less of torch's per-call cost:
    17% of a theory-scale round (EF21 on breast_cancer)."""
    needs = bool(ALGORITHMS[algorithm].extra.get("autograd", False))
    return torch.inference_mode(model.autograd_free and not needs)


def _loop(
    job: Job,
    rows: RoundWriter,
    device: torch.device,
    start: float,
    progress: Progress | None,
    folder: Path,
    ckpt: checkpoint.Checkpoint | None,
    task: Task,
    env: Env,
    alg: Any,
) -> tuple[str, str | None, int, dict[str, float]]:
    exp = job.config["experiment"]
    rounds, every, save_every = exp["rounds"], exp["eval_every"], exp["checkpoint_every"]
    grad_norm = bool(exp["grad_norm"])
    coherence = bool(exp.get("coherence", False))
    per_client = exp.get("per_client_eval", False)  # false | true | "all"
    eps = privacy_tracker(job, task.n)  # ε at each evaluation when the job has [privacy]
    if ckpt is None:
        x0 = initial_point(job, task, device)
        state = alg.init(x0, env, RoundRng(job.seed, 0, device))
        bits_up = bits_down = wall0 = 0.0
        metrics = {"bits_up": 0.0, "bits_down": 0.0, "wall_s": 0.0}
        sim_time = 0.0  # simulated seconds ([network] section or an asynchronous method)
        if env.network is not None:
            metrics["sim_time_s"] = 0.0
        metrics.update(evaluate(task, x0, grad_norm, coherence, bool(per_client)))
        if alg.metrics is not None:
            metrics.update(alg.metrics(state, env))
        if eps is not None:
            metrics["epsilon"] = eps.epsilon(0)
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
        finite = all_finite(x) and all(math.isfinite(v) for v in log.extra.values())
        evaluated = finite and (t % every == 0 or t == rounds)
        if evaluated:
            last = per_client == "all" and t == rounds  # every client's value, once
            metrics.update(evaluate(task, x, grad_norm, coherence, bool(per_client), last))
            if alg.metrics is not None:
                metrics.update(alg.metrics(state, env))
            if eps is not None:
                metrics["epsilon"] = eps.epsilon(t)
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
            try:
                checkpoint.save(folder, job.key, ckpt_t)
            except (checkpoint.CheckpointError, TypeError) as e:  # full disk, odd state
                save_every = 0  # this run goes on without checkpoints
                print(
                    f"warning: job {job.key}: {e}; continuing without checkpoints",
                    file=sys.stderr,
                    flush=True,
                )
    return "done", None, rounds, metrics


def all_finite(x: torch.Tensor) -> bool:
    """No NaN or ±inf in `x`: max |x_k| is finite (NaN propagates through amax); 2-15x
    faster than `isfinite(x).all()`, from 30 to 10⁶ entries."""
    return math.isfinite(float(x.abs().amax()))


def privacy_tracker(job: Job, n: int) -> Any:
    """The ε accountant of a job with a [privacy] section (fedbench.privacy.accountant)."""
    if "privacy" not in job.config:
        return None
    from fedbench.privacy import PrivacyConfig, messages_per_round
    from fedbench.privacy.accountant import Tracker
    from fedbench.privacy.config import cohort

    a = job.config["algorithm"]
    p = PrivacyConfig.from_section(job.config["privacy"])
    m = cohort(n, a["participation"])
    sampling = a.get("sampling", "uniform")
    return Tracker(p, n, m, sampling, messages_per_round(a["name"]))


def evaluate(
    task: Task,
    x: torch.Tensor,
    grad_norm: bool = False,
    coherence: bool = False,
    per_client: bool = False,
    vectors: bool = False,
) -> dict[str, float]:
    """Evaluation metrics of the server model: train_loss (the objective), test loss/accuracy,
    grad_norm_sq = ‖∇f(x)‖², the per-client gradient `coherence` and, with `per_client`, the
    distribution of per-client accuracy and loss (`fedbench.task.client_metrics`; every
    client's own value too with `vectors`) when asked."""
    out = {"train_loss": task.train_loss(x), **task.evaluate(x)}
    if per_client:
        out.update(client_metrics(task.client_values(x), vectors))
    if grad_norm:
        out["grad_norm_sq"] = float(task.full_gradient(x).square().sum())
    if coherence:
        out["coherence"] = task.gradient_coherence(x)
    out.update(task.game_metrics(x))  # gap, dist_sq on min-max tasks
    return out


def preflight(jobs: list[Job], path: str) -> list[str]:
    """Load every distinct dataset/partition and build every distinct model before anything
    runs; one line per problem."""
    from fedbench.data import DataError

    problems: dict[str, None] = {}
    seen: dict[str, int] = {}  # task -> bytes of one sample's features (float32)
    for job in jobs:
        t = job.config["task"]
        key = json.dumps(t, sort_keys=True)
        batch = job.config["algorithm"].get("batch_size")
        if key in seen:
            if isinstance(batch, int) and seen[key] and _batch_problem(path, batch, seen[key]):
                problems[_batch_problem(path, batch, seen[key])] = None
            continue
        seen[key] = 0
        try:
            fd = load_dataset(t)
            model = build_model(t["model"], t, fd.input_shape, fd.num_classes, fd.binary)
        except (DataError, ValueError) as e:
            problems[f"{path}: [task] {e}"] = None
            continue
        except (RuntimeError, MemoryError) as e:  # e.g. the allocator refusing a huge model
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            problems[f"{path}: [task] model = {t['model']!r} cannot be built here: {first}"] = None
            continue
        seen[key] = 4 * max(1, math.prod(fd.input_shape))
        if isinstance(batch, int) and _batch_problem(path, batch, seen[key]):
            problems[_batch_problem(path, batch, seen[key])] = None
        copies = SERVER_COPIES + min(int(t.get("clients", 1)), CLIENT_ROWS)
        need, have = copies * 4 * model.d, _physical_memory()
        if have and need > have:
            problems[
                f"{path}: [task] model = {t['model']!r} has {model.d} parameters: at least "
                f"{need / 2**30:.1f} GiB ({copies} float32 vectors) but this machine has "
                f"{have / 2**30:.1f} GiB; allowed: a smaller model"
            ] = None
    return list(problems)


def _batch_problem(path: str, batch: int, sample_bytes: int) -> str:
    """Why a minibatch of `batch` samples (drawn with replacement) cannot fit, or ""."""
    need, have = batch * sample_bytes, _physical_memory()
    if not have or need <= have:
        return ""
    return (
        f"{path}: [algorithm] batch_size = {batch}: one minibatch needs {need / 2**30:.1f} GiB, "
        f'this machine has {have / 2**30:.1f} GiB; allowed: a smaller batch_size, or "full"'
    )


# a lower bound of the [d] vectors a job holds: the server's (x, its state, the broadcast,
# the aggregate) and the client rows local training is vectorised over (up to 8 at once)
SERVER_COPIES, CLIENT_ROWS = 4, 8


def _physical_memory() -> int:
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 0
