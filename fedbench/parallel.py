"""Blocks of clients trained side by side on the job's cores, one Python thread each.

Local training (`algorithms.base.local_sgd`) runs the cohort in blocks of clients
(`Task.block_size`), and each block's K steps depend on nothing but its own rows. On a CPU
with T > 1 threads for the job, running the blocks on T threads of one intra-op thread each
beats running them one after another on T intra-op threads: PyTorch then opens one OpenMP
parallel region per op (thousands a round) and, under the passive wait policy fedbench sets
(`fedbench/__init__.py`), wakes a sleeping thread for each. Block threads need no wake-ups
inside a block. `benchmarks/bench_round.py` measures it: the digits/MLP FedAvg round went
from 90 to 58 ms idle and from 111 to 84 ms beside a competing process (2 cores).

The numbers do not change: each block computes exactly what it computes alone (tests).
What a block runs must only touch its own rows: a `local_sgd` correction opts in with
`rowwise` (a correction that counts calls or draws random numbers in call order does not;
one whose draws come from a generator of their own per step, as Entropy-SGD's Langevin
noise, and are shared under a lock, does).
The model must be `thread_safe` too (`models.base.Model`): the hand-batched models and the
transformers are; models on the generic `functional_call` path run their blocks in order.
Each block steps a copy of its rows (autograd's version counters belong to a storage).
`FEDBENCH_BLOCK_THREADS=0` turns this off.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import TypeVar

import torch

ENV_VAR = "FEDBENCH_BLOCK_THREADS"
F = TypeVar("F", bound=Callable[..., object])

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def rowwise(fn: F) -> F:
    """Mark a `local_sgd` correction as safe to call for several blocks at once: it reads and
    writes only the rows it is given (no call counters, no random draws in call order)."""
    fn.rowwise = True  # type: ignore[attr-defined]
    return fn


def is_rowwise(fn: object) -> bool:
    return fn is None or bool(getattr(fn, "rowwise", False))


def block_threads(device: torch.device, blocks: int) -> int:
    """Threads to run `blocks` blocks on: the job's intra-op thread count on a CPU (capped by
    the blocks), 1 (one after another) on other devices, for a single block, or when
    $FEDBENCH_BLOCK_THREADS is 0 or 1."""
    if device.type != "cpu" or blocks < 2 or os.environ.get(ENV_VAR, "") in ("0", "1"):
        return 1
    return min(blocks, torch.get_num_threads())


def for_each_block(run: Callable[[int], None], starts: Sequence[int], threads: int) -> None:
    """`run(start)` for every block start: in order on this thread when `threads` is 1, else
    on `threads` worker threads with one intra-op thread each (the caller's inference and
    grad modes carried over, its thread count restored afterwards)."""
    if threads <= 1:
        for s in starts:
            run(s)
        return
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

    def call(s: int) -> None:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            run(s)

    with one_thread(torch.device("cpu")):  # the workers' budget; this thread only waits
        futures = [_workers(threads).submit(call, s) for s in starts]
        wait(futures)  # every block is done before any error is raised
        for future in futures:
            future.result()


@contextmanager
def one_thread(device: torch.device) -> Iterator[None]:
    """Run the enclosed ops on one intra-op thread (CPU only), then restore the thread count.

    `for_each_block` waits under it while its workers run. Batched LU solves need it too: in
    torch 2.13 on CPU, once `torch.set_num_threads` has been called (every job calls it), a
    batched `torch.linalg.solve` of 200 x 200 or larger matrices on 2 threads gets invalid
    pivots from MKL and raises ("SLASWP" errors; tests/test_zeroth_order.py). On one thread
    it is correct."""
    before = torch.get_num_threads()
    if device.type != "cpu" or before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _forget_workers() -> None:
    """In a forked child: the parent's threads are not there; start new ones when needed."""
    global _pool, _pool_size, _lock
    _pool, _pool_size, _lock = None, 0, threading.Lock()


os.register_at_fork(after_in_child=_forget_workers)


def _workers(n: int) -> ThreadPoolExecutor:
    """The process's block threads (n of them), each set to one intra-op thread."""
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size != n:
            if _pool is not None:
                _pool.shutdown(wait=True)
            _pool = ThreadPoolExecutor(n, "fedbench-block", torch.set_num_threads, (1,))
            _pool_size = n
        return _pool
