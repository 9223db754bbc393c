"""Where jobs run (DESIGN §8): in this process, in a local process pool, or on Ray.

Every executor calls `runner.execute(job, store, device)` for each job, with the job's own
`Store` on the same database URL, so a job gives the same numbers wherever it runs (same
config, seed and device type). Progress comes back as `Event`s to one callback in the main
process, which owns the display.

- `local`, 1 worker: in this process.
- `local`, N workers: a pool of N spawned processes. On CPUs the cores are split between them
  (`torch.set_num_threads(cores // N)`); with GPUs each worker owns one device slot: one per
  GPU by default, `jobs_per_gpu` slots per GPU to pack small jobs.
- `local`, `--workers auto` (the default): `choose` below. On CPUs a grid of at least three
  jobs per core runs one job per core, one thread each, in a pool (small jobs scale far better over
  processes than over threads, and a single-threaded job never waits on a descheduled sibling
  thread when the machine is shared); a single job runs in this process with all the cores'
  threads, one thread for a small model (`SMALL_MODEL`).

The thread policy that holds on a shared machine: `fedbench/__init__.py` sets
OMP_WAIT_POLICY=PASSIVE (unless the user set it) before torch is imported, so a job's idle
OpenMP threads sleep instead of spinning against the other processes for the cores; the
spawned workers inherit it. A job's numbers do not depend on any of this: same config and
seed give the same numbers in this process or a pool, with 1 or N threads (tests/test_policy.py).
- `ray`: each job a Ray task asking for its CPU/GPU share, on a local Ray started here or on
  the cluster at `ray_address`. Rows reach the store from the Ray workers (a PostgreSQL URL
  for a real cluster; a SQLite file works when the workers share this machine).
"""

from __future__ import annotations

import contextlib
import functools
import json
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import queue as queue_mod
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.managers import SyncManager
from typing import Any, NamedTuple

import torch

from fedbench import plugins, runner
from fedbench.grid import Job
from fedbench.models import build_model
from fedbench.store import Store


class Slot(NamedTuple):
    device: str  # "cpu", "cuda:0", ...
    threads: int  # torch intra-op threads of the worker
    fixed: bool = True  # False: a model under SMALL_MODEL parameters runs with one thread


# Below this many parameters a job runs single-threaded unless the user fixed the threads:
# its ops are too small to gain from threads, and each parallel region costs a wake-up that
# waits for a free core on a shared machine (benchmarks/bench_theory.py: EF21 on a d = 30
# logistic regression, 12 ms per round with 1 thread against 267 ms with 2 on a loaded
# machine, while the digits MLP of bench_round.py, d = 53k, is faster with 2 threads).
SMALL_MODEL = 10_000


class Event(NamedTuple):
    kind: str  # "start" | "round" | "end" (and a pool's internal "worker")
    key: str
    round: int
    metrics: dict[str, float]
    outcome: runner.Outcome | None = None


OnEvent = Callable[[Event], None]
PROGRESS_SECONDS = 0.1  # least wall time between two progress events of a job's rounds


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def env_threads() -> int | None:
    """OMP_NUM_THREADS when the user set it to a positive integer."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


# `--workers auto` spreads a grid over a pool from this many jobs per core: a worker pays
# ~2 s of start-up (torch, data), which small grids do not earn back. Measured on 2 cores:
# quickstart's 4 FedAvg jobs took 8.6 s in this process against 10.4 s in a pool (16.5 / 21.1
# s beside a competing process); all 12 quickstart jobs 19.6 s against 14.4 s.
POOL_JOBS_PER_CORE = 3


class Policy(NamedTuple):
    """How a grid's jobs run on CPUs: `workers` jobs at once (1 = in this process), each with
    `threads` torch intra-op threads; `why` says which rule chose it (printed by `run`)."""

    workers: int
    threads: int
    why: str
    fixed: bool = False  # threads given by the user: run_job keeps them for every model


def choose(jobs: int, cores: int, workers: int | None = None, threads: int | None = None,
           default_threads: int | None = None) -> Policy:  # fmt: skip
    """The CPU policy for `jobs` jobs on `cores` cores.

    `workers` None is `--workers auto`: a pool of `cores` workers when there are at least
    POOL_JOBS_PER_CORE jobs per core (and two cores), else this process. `threads` None:
    `default_threads` (the user's OMP_NUM_THREADS) if given, else the cores split between the
    workers; `run_job` then gives a small model one thread (`SMALL_MODEL`).
    """
    cores = max(1, cores)
    if workers is None:
        workers = cores if jobs >= POOL_JOBS_PER_CORE * cores and cores >= 2 else 1
        why = (
            f"auto: {jobs} jobs over {cores} cores, one process each"
            if workers > 1
            else f"auto: {jobs} job{'s' * (jobs != 1)} in this process"
        )
    else:
        why = f"--workers {workers}"
    if threads is not None:
        why += f", --threads {threads}"
    elif default_threads is not None:
        threads = default_threads
        why += f", OMP_NUM_THREADS={threads}"
    else:
        threads = max(1, cores // workers)
        if threads > 1:
            why += f"; models under {SMALL_MODEL:,} parameters: 1 thread"
        return Policy(workers, threads, why, fixed=False)
    return Policy(workers, threads, why, fixed=True)


def plan_slots(
    device: torch.device,
    workers: int,
    jobs_per_gpu: int = 1,
    threads: int | None = None,
    fixed: bool = True,
) -> list[Slot]:
    """The device and thread count of every worker.

    CUDA: `jobs_per_gpu` slots on each visible GPU (a device index pins one GPU); `workers`
    caps the number when given (> 1). CPU: `workers` slots sharing the cores evenly (or
    `threads` threads each when given).
    """
    if device.type == "cuda":
        gpus = [device.index] if device.index is not None else range(torch.cuda.device_count())
        slots = [Slot(f"cuda:{g}", 1) for g in gpus for _ in range(jobs_per_gpu)]
        return slots[:workers] if workers > 1 else slots
    threads = threads or max(1, cpu_count() // workers)
    return [Slot(str(device), threads, fixed)] * workers


# -- one job, anywhere -------------------------------------------------------------------------


def job_threads(job: Job, slot: Slot) -> int:
    """The slot's threads, or one for a model under SMALL_MODEL parameters (unless fixed)."""
    if slot.fixed or slot.threads == 1:
        return slot.threads
    try:
        d = _model_size(json.dumps(job.config["task"], sort_keys=True))
    except Exception:
        return slot.threads  # the job's own build reports the problem
    return 1 if d < SMALL_MODEL else slot.threads


@functools.lru_cache(maxsize=64)
def _model_size(task_json: str) -> int:
    """Parameters d of the model of a resolved [task] section, built once per distinct
    section (a grid's jobs share a few), not once per job."""
    t = json.loads(task_json)
    fd = runner.load_dataset(t)  # cached: the job's own build reuses it
    return build_model(t["model"], t, fd.input_shape, fd.num_classes, fd.binary).spec.d


def run_job(job: Job, url: str, slot: Slot, emit: Callable[[Event], None]) -> runner.Outcome:
    """Run one job on `slot`, writing to the database at `url`; events go to `emit`."""
    plugins.ensure(job.config)  # issue 27: a worker imports the plugins the job uses
    torch.set_num_threads(job_threads(job, slot))
    last = [0.0]

    def progress(j: Job, t: int, m: dict[str, float]) -> None:
        """Evaluated rounds, and others at most every PROGRESS_SECONDS: a display needs no
        more, and 10⁵ fast rounds should not cost 10⁵ events (one IPC message each in a pool)."""
        now = time.perf_counter()
        if "train_loss" in m or now - last[0] >= PROGRESS_SECONDS:
            last[0] = now
            emit(Event("round", j.key, t, dict(m)))

    def started() -> None:  # once the job's lease is ours
        emit(Event("start", job.key, 0, {}))

    with Store(url) as store:
        out = runner.execute(job, store, torch.device(slot.device), progress, started)
    emit(Event("end", job.key, out.rounds, out.final, out))
    return out


def run_in_process(jobs: Sequence[Job], url: str, slot: Slot, on_event: OnEvent) -> None:
    for job in jobs:
        run_job(job, url, slot, on_event)


# -- local process pool ------------------------------------------------------------------------

_worker: dict[str, Any] = {}  # per worker process: its slot and the event queue


class WorkerDiedError(RuntimeError):
    """A pool worker died (killed, out of memory) and broke the pool: `keys` are the jobs that
    were running in the dead worker(s), `others` the healthy jobs in flight in the other
    workers (stopped with the pool, to be requeued without blame: issue 23 fault 7, a healthy
    job used to be failed when its neighbour's worker died twice)."""

    def __init__(
        self, keys: list[str], others: list[str] | None = None, silent: float = 0.0
    ) -> None:
        super().__init__(f"a worker process died with {len(keys)} job(s) in flight")
        self.keys = keys
        self.others = others or []
        self.silent = silent  # > 0: killed here after its job's lease went this many s stale


def _ignore_sigint() -> None:
    """In a child process: Ctrl-C, SIGTERM and SIGHUP (sent to the whole process group by a
    terminal or by SLURM) are the parent's to handle: it stops the children itself, and they
    exit by themselves if it dies."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    _exit_with_parent()


def _exit_with_parent(every: float = 0.5) -> None:
    """Exit this child process as soon as its parent is gone (killed with -9 or a signal):
    a daemon thread watches for the parent process id to change (re-parented to init)."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(every)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def _init_worker(slots: Any, events: Any) -> None:
    _ignore_sigint()  # Ctrl-C is the main process's to handle (it stops the workers)
    runner.tune_allocator()
    _worker["slot"] = slots.get()  # each worker process takes one slot for its lifetime
    _worker["events"] = events


WORKER_PID = "worker_pid"


def _pool_emit(e: Event) -> None:
    """Send an event to the launcher. If its queue is gone, so is the launcher (killed): this
    worker exits at once, leaving its run `running` for another launcher to take over,
    instead of letting the broken queue fail the job."""
    try:
        _worker["events"].put(e)
    except Exception:
        os._exit(1)


def _pool_job(job: Job, url: str) -> runner.Outcome:
    # before anything else (the claim included): which process runs this job, so that a
    # worker's death is blamed on its own job only, however early it dies
    _pool_emit(Event("worker", job.key, 0, {WORKER_PID: float(os.getpid())}))
    return run_job(job, url, _worker["slot"], _pool_emit)


def run_pool(jobs: Sequence[Job], url: str, slots: Sequence[Slot], on_event: OnEvent) -> None:
    """Run `jobs` on a pool of len(slots) spawned workers; events are relayed to `on_event`.

    Ctrl-C (or any error here): the workers are killed at once and the exception propagates;
    the caller puts the runs they had started back to pending. A kill loses at most the round
    in flight (or, for rounds under runner.FLUSH_SECONDS, the rounds of the last 50 ms). A
    worker that dies (killed, out of memory) breaks the pool: the others are stopped and
    `WorkerDiedError` names the jobs in flight, for the caller to requeue. A worker whose job's
    lease goes stale (no heartbeat for the lease timeout: stopped with SIGSTOP, or hung) is
    killed here and handled as one that died (`_SilentWorkers`); without this, the pool waited
    for it forever. Workers exit by themselves when this process dies."""
    ctx = mp.get_context("spawn")  # no forked CUDA or OpenMP state
    manager = SyncManager(ctx=ctx)
    manager.start(_ignore_sigint)
    silent = _SilentWorkers(url, runner.Launch.current().timeout)
    try:
        slot_q, events = manager.Queue(), manager.Queue()
        for s in slots:
            slot_q.put(s)
        pool = ProcessPoolExecutor(
            len(slots), mp_context=ctx, initializer=_init_worker, initargs=(slot_q, events)
        )
        try:
            pending: set[Future[runner.Outcome]] = {
                pool.submit(_pool_job, job, url) for job in jobs
            }
            workers = dict(getattr(pool, "_processes", None) or {})  # pid -> Process
            in_flight: dict[str, int] = {}  # job key -> its worker's pid

            def relay(e: Event) -> None:
                if e.kind == "worker":  # the pool's own bookkeeping, not for on_event
                    in_flight[e.key] = int(e.metrics[WORKER_PID])
                    return
                if e.kind == "end":
                    in_flight.pop(e.key, None)
                on_event(e)

            try:
                while pending:
                    done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                    _drain(events, relay)
                    for f in done:
                        f.result()  # a worker that died raises here (BrokenProcessPool)
                    # ... but not always at once: the pool's own thread watches the workers it
                    # had when it last woke, and CPython 3.11 wakes it before spawning the
                    # worker a submit adds, so a death of that worker went unseen until the
                    # next result (its neighbour's job ran to its end first). Watched here too.
                    workers |= getattr(pool, "_processes", None) or {}
                    silent.kill_stale(in_flight)
                    if _dead_workers(workers):
                        raise BrokenProcessPool("a worker process died")
                _drain(events, relay)
            except MANAGER_GONE:  # the queues' server process died (killed)
                raise WorkerDiedError([], sorted(in_flight)) from None
            except BrokenProcessPool:
                with contextlib.suppress(*MANAGER_GONE):
                    _drain(events, relay)
                workers |= getattr(pool, "_processes", None) or {}
                # workers exit when the manager is gone (`_pool_emit`): not their jobs' fault
                dead = _dead_workers(workers) if _alive(manager) else set()
                blamed = sorted(k for k, pid in in_flight.items() if pid in dead)
                others = sorted(k for k in in_flight if k not in blamed)
                stale = silent.timeout if set(silent.killed) & dead else 0.0
                raise WorkerDiedError(blamed, others, stale) from None
        except BaseException:
            for proc in list((getattr(pool, "_processes", None) or {}).values()):
                proc.kill()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
    finally:
        silent.close()
        manager.shutdown()


class _SilentWorkers:
    """Watches the leases of the jobs in flight (every timeout/4 s, one read of the store): a
    job whose lease went stale while its worker is alive (no heartbeat for the lease timeout:
    the worker was stopped with SIGSTOP, or hangs) has its worker killed (SIGKILL works on a
    stopped process), so that the pool breaks as for a worker that died and the job is
    requeued (failed after a second time), instead of the pool waiting for it forever."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url, self.timeout = url, timeout
        self.killed: list[int] = []
        self._next = time.monotonic() + timeout / 4
        self._store: Store | None = None

    def kill_stale(self, in_flight: dict[str, int]) -> None:
        if not in_flight or time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self.timeout / 4
        try:
            if self._store is None:
                self._store = Store(self.url)
            stale = self._store.claimable(list(in_flight), self.timeout, ())
        except Exception:  # a busy or unreachable database: look again at the next turn
            return
        for key in stale:
            pid = in_flight[key]
            if not self._holds(key, pid):  # another launcher's stale lease, before our claim
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                self.killed.append(pid)

    def _holds(self, key: str, pid: int) -> bool:
        """Whether worker `pid` of this host holds run `key`'s lease (its owner "host:pid")."""
        assert self._store is not None
        try:
            owner = str(self._store.get_run(key).get("lease_owner") or "")
        except Exception:
            return False
        return owner == f"{socket.gethostname()}:{pid}"

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


# What a call on a manager queue raises once the manager process is gone: the jobs in flight
# are requeued like a dead worker's (issue 23 fault 9: a ConnectionResetError traceback, or a
# BrokenPipeError read as "stdout was closed", exit 141). No job is blamed.
MANAGER_GONE = (ConnectionError, EOFError)


def _alive(manager: SyncManager) -> bool:
    proc = getattr(manager, "_process", None)
    return proc is None or proc.is_alive()


def _dead_workers(workers: dict[int, Any]) -> set[int]:
    """The pids of the pool's processes that have exited: their sentinel is ready (what the
    pool itself watches; `exitcode` can still be None for a moment after a SIGKILL). The pool
    sends SIGTERM to the others when it breaks, which they ignore (`_ignore_sigint`): they are
    still alive here."""
    dead = set()
    for pid, proc in workers.items():
        try:
            gone = bool(mp_connection.wait([proc.sentinel], timeout=0))
        except (ValueError, OSError):  # the process object was closed: it has been joined
            gone = True
        if gone or proc.exitcode is not None:
            dead.add(pid)
    return dead


def _drain(events: Any, on_event: OnEvent) -> None:
    while True:
        try:
            on_event(events.get_nowait())
        except queue_mod.Empty:
            return


# -- Ray ---------------------------------------------------------------------------------------


def run_ray(
    jobs: Sequence[Job], url: str, device: torch.device, address: str | None, on_event: OnEvent
) -> None:
    """Each job a Ray task with one CPU (or one GPU); progress reaches `on_event` per job end
    and per round through a Ray queue."""
    try:
        import ray
        from ray.util.queue import Queue as RayQueue
    except ImportError:
        raise RuntimeError(
            "--executor ray needs Ray: pip install 'fedbench[ray]' (or pip install ray)"
        ) from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        gpu = device.type == "cuda"
        events = RayQueue()
        task = ray.remote(num_cpus=1, num_gpus=1 if gpu else 0)(_ray_job)
        refs: list[Any] = []
        refs += [task.remote(job, url, "cuda" if gpu else "cpu", events) for job in jobs]
        pending = list(refs)
        while pending:
            _, pending = ray.wait(pending, num_returns=1, timeout=0.2)
            while not events.empty():
                on_event(events.get())
        ray.get(refs)
        while not events.empty():
            on_event(events.get())
    except BaseException:
        for ref in refs:
            ray.cancel(ref, force=True)
        raise
    finally:
        if started:
            ray.shutdown()


def _ray_job(job: Job, url: str, device: str, events: Any) -> runner.Outcome:
    return run_job(job, url, Slot(device, 1), events.put)
