"""The memory a job will need, estimated before it runs (`fedbench validate` prints it): the
data stored once, the method's persistent per-client rows (measured by starting the method on
a small stand-in task) and the cohort's working set.

It sits above the algorithms (it starts one) and beside the runner, so that `task.py`, below
the algorithms, imports none of them (tests/test_layers.py)."""

from __future__ import annotations

import json
import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from fedbench import seeding
from fedbench.data.lazy import is_lazy
from fedbench.models.base import Model
from fedbench.rows import LAZY_ZERO_BYTES
from fedbench.task import ClientData, Task, _activation_floats, memory_budget

PROBE_CLIENTS = 13  # clients of the stand-in task whose state is measured (prime: no clash with d)
COHORT_COPIES = 4  # float32 [m, d] rows a cohort holds: models, updates, gathered state, spare


class MemoryEstimate(NamedTuple):
    """What a job keeps in memory: the client data (stored once), the method's persistent
    per-client rows, and the working set of one round's cohort."""

    clients: int
    data_bytes: int  # training and test samples, labels and client index, on the device
    state_bytes_per_client: int  # persistent per-client rows of the method ([n, d] state)
    cohort_bytes: int  # the cohort's model rows plus one memory-budget chunk of activations
    # share of the state the run writes (host state from LAZY_ZERO_BYTES up is mapped zero
    # pages: a client's row costs memory once written, 1 − (1 − p)^rounds of them, plus the
    # rows every client's state holds from the start)
    written: float = 1.0

    @property
    def total_bytes(self) -> int:
        state = self.clients * self.state_bytes_per_client * self.written
        return int(self.data_bytes + state + self.cohort_bytes)

    def line(self) -> str:
        state = self.clients * self.state_bytes_per_client
        held = (
            ""
            if self.written >= 1.0
            else f" (held as rows are first written: {self.written:.1%} of them, "
            f"{_size(state * self.written)}, over the run)"
        )
        return (
            f"data {_size(self.data_bytes)} (stored once), per-client state "
            f"{_size(self.state_bytes_per_client)} × {self.clients:,} = {_size(state)}{held}, "
            f"cohort working set {_size(self.cohort_bytes)}: about {_size(self.total_bytes)} in all"
        )


def _size(b: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(b) < 1024 or unit == "GiB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024
    return f"{b:.1f} GiB"


def data_bytes(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, n: int) -> int:
    """Bytes of `ClientData.from_numpy` of these arrays: float32 samples, int64 labels, the
    int64 client of each training sample (built when every client is evaluated), offsets and
    counts."""
    if is_lazy(x):  # computed on demand (data.lazy): the per-client tables, no samples
        return int(8 * x.shape[0] + 40 * n)
    samples = 4 * (x.size + x_test.size) + 8 * (y.size + y_test.size)
    return int(samples + 8 * x.shape[0] + 16 * n)


def state_bytes(cfg: dict, model: Model, x: np.ndarray, y: np.ndarray) -> tuple[int, int]:
    """Persistent per-client bytes of the job's method (`cfg`: its resolved sections), and of
    those the bytes already written when the method starts (rows not zero after `init`: EF21's
    g_i⁰ = ∇f_i(x⁰), a preconditioner filled with ones), which zero pages do not spare.
    Measured on a stand-in task of PROBE_CLIENTS clients (two of the real samples each, the
    real model): every state tensor whose leading dimension is the number of clients counts.
    Methods that cannot start without their full setting (a network, privacy) count 0."""
    from fedbench.algorithms import Env, build_algorithm
    from fedbench.compressors import build_compressor

    k, a, up, down = PROBE_CLIENTS, cfg["algorithm"], cfg["compressor"], cfg["downlink"]
    idx = np.arange(2 * k) % x.shape[0]
    probe = ClientData.from_numpy(
        x[idx], y[idx], np.full(k, 2), x[:0], y[:0], torch.device("cpu")
    )  # fmt: skip
    task = Task(model, probe, cfg["task"].get("reg", "none"), cfg["task"].get("lam", 0.0))
    shapes = model.spec.shapes
    env = Env(
        task=task,
        uplink=build_compressor(up["name"], up, model.d, shapes, k),
        downlink=build_compressor(down["name"], down, model.d, shapes),
        participation=a["participation"],
        batch_size=a["batch_size"],
        error_feedback=up["error_feedback"],
        state_dtype=getattr(torch, a["client_state"]),
        sampling=a.get("sampling", "uniform"),
        rounds=cfg["experiment"]["rounds"],
    )
    try:
        state = build_algorithm(a["name"], a).init(
            torch.zeros(model.d), env, seeding.RoundRng(0, 0, "cpu")
        )
    except Exception:  # an estimate never stops validation: the run reports its own error
        return 0, 0
    rows = [t for t in _tensors(state) if t.ndim and t.shape[0] == k]
    per_client = sum(t.nbytes for t in rows)
    started = sum(t.nbytes // k * int(t.reshape(k, -1).ne(0).any(1).sum()) for t in rows)
    return per_client // k, started // k


def _tensors(obj: object) -> list[Tensor]:
    """Every tensor inside a state: tuples, lists, dicts and dataclasses, recursively."""
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for item in obj for t in _tensors(item)]
    if isinstance(obj, dict):
        return [t for item in obj.values() for t in _tensors(item)]
    if hasattr(obj, "__dataclass_fields__"):
        return [t for f in obj.__dataclass_fields__ for t in _tensors(getattr(obj, f))]
    return []


def memory_estimate(
    cfg: dict,
    model: Model,
    x: np.ndarray,
    y: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    counts: np.ndarray,
) -> MemoryEstimate:
    """The job's `MemoryEstimate` (see there) from its resolved sections, model and data."""
    n = int(counts.shape[0])
    a = cfg["algorithm"]
    m = max(1, math.ceil(float(a["participation"]) * n))  # cohort of a uniform round
    batch = a["batch_size"] if isinstance(a["batch_size"], int) else int(counts.max())
    act = _activation_floats(model, tuple(x.shape[1:]))
    per_client = 4 * (3 * model.d + 3 * batch * act)  # as Task._client_bytes
    budget = memory_budget()
    cohort = COHORT_COPIES * 4 * model.d * m + min(m * per_client, int(budget))
    state, started = state_bytes(cfg, model, x, y)
    written = 1.0
    if n * state >= LAZY_ZERO_BYTES:  # host state (the CPU path; a GPU holds it dense)
        p = min(1.0, float(a["participation"]))
        sampled = 1.0 - (1.0 - p) ** int(cfg["experiment"]["rounds"])
        written = (started + (state - started) * sampled) / state  # rows set at init: all
    return MemoryEstimate(
        clients=n,
        data_bytes=data_bytes(x, y, x_test, y_test, n),
        state_bytes_per_client=state,
        cohort_bytes=int(cohort),
        written=written,
    )


def memory_lines(jobs: list) -> list[str]:
    """One `memory estimate` line per distinct task × method × compressors of a grid's jobs
    (`fedbench validate`); their datasets are loaded through the runner's cache."""
    from fedbench.models import build_model
    from fedbench.runner import load_dataset

    lines: dict[str, None] = {}
    seen: set[str] = set()
    for job in jobs:
        cfg = job.config
        key = json.dumps([cfg[s] for s in ("task", "algorithm", "compressor", "downlink")],
                         sort_keys=True)  # fmt: skip
        if key in seen:
            continue
        seen.add(key)
        t = cfg["task"]
        fd = load_dataset(t)
        model = build_model(t["model"], t, fd.input_shape, fd.num_classes, fd.binary)
        est = memory_estimate(cfg, model, fd.x, fd.y, fd.x_test, fd.y_test, fd.counts)
        who = (
            f"{job.algorithm} ({cfg['algorithm']['client_state']} state), {t['clients']:,} clients"
        )
        lines[f"memory estimate, {who}: {est.line()}"] = None
    return list(lines)
