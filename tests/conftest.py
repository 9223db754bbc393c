"""Shared fixtures: tiny heterogeneous classification tasks built without the data module."""

from __future__ import annotations

import contextlib
import os
import string
import subprocess
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import pytest
import torch

from fedbench.algorithms import Env, build_algorithm
from fedbench.compressors import build_compressor
from fedbench.models import build_model
from fedbench.seeding import RoundRng, generator
from fedbench.task import ClientData, Task

# The CLI tests run grids in this process (they monkeypatch the runner); `--workers auto`
# would spread a grid over a process pool. tests/test_policy.py exercises auto itself.
os.environ.setdefault("FEDBENCH_WORKERS", "1")


@contextlib.contextmanager
def started(
    commands: Sequence[Sequence[str]],
    envs: Sequence[Mapping[str, str] | None] | None = None,
    cwd: object = None,
) -> Iterator[list[subprocess.Popen[str]]]:
    """The commands' processes, all started at once (text pipes; each test process is mostly
    imports on one core, so several overlap on a 2-core machine); any still running when the
    block ends is killed and reaped."""
    procs = [
        subprocess.Popen(
            list(cmd),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            env=None if envs is None or envs[i] is None else dict(envs[i]),
        )
        for i, cmd in enumerate(commands)
    ]
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


def finished(proc: subprocess.Popen[str], timeout: float) -> str:
    """The stdout of a `started` process, once it exited 0 (its stderr in the failure)."""
    stdout, stderr = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, stderr
    return stdout


def make_data(
    n: int = 6,
    per_client: int | list[int] = 20,
    features: int = 5,
    classes: int = 3,
    seed: int = 0,
    shape: tuple[int, ...] | None = None,
) -> ClientData:
    """A shared linear teacher perturbed per client, and a feature shift per client:
    learnable, and heterogeneous by construction."""
    rng = np.random.default_rng(seed)
    counts = np.array(per_client if isinstance(per_client, list) else [per_client] * n)
    teacher = rng.normal(size=(features, classes))
    xs, ys = [], []
    for i in range(n):
        w = teacher + 0.5 * rng.normal(size=(features, classes))
        x = (rng.normal(size=(counts[i], features)) + rng.normal(size=features)).astype(np.float32)
        xs.append(x)
        ys.append((x @ w).argmax(1))
    x = np.concatenate(xs)
    y = np.concatenate(ys).astype(np.int64)
    x_test = rng.normal(size=(30, features)).astype(np.float32)
    y_test = rng.integers(0, classes, 30)
    if shape is not None:
        x, x_test = x.reshape(-1, *shape), x_test.reshape(-1, *shape)
    return ClientData.from_numpy(x, y, counts, x_test, y_test, torch.device("cpu"))


def make_task(model: str = "logreg", reg: str = "l2", lam: float = 0.01, **data_kw: object) -> Task:
    data = make_data(**data_kw)  # type: ignore[arg-type]
    params = {"reg": reg, "lam": lam, "hidden": [8]}
    classes = int(data.y.max()) + 1
    return Task(
        build_model(model, params, tuple(data.x.shape[1:]), max(classes, 3)), data, reg=reg, lam=lam
    )


def make_env(
    task: Task,
    up: str = "identity",
    up_params: dict | None = None,
    ef: bool = False,
    down: str = "identity",
    down_params: dict | None = None,
    participation: float = 1.0,
    batch_size: int | str = "full",
) -> Env:
    return Env(
        task,
        build_compressor(up, up_params or {}, task.d, task.model.spec.shapes),
        build_compressor(down, down_params or {}, task.d, task.model.spec.shapes),
        participation,
        batch_size,
        error_feedback=ef,
    )


def run_rounds(alg_name: str, params: dict, env: Env, rounds: int, seed: int = 0):
    """Run an algorithm; returns (final state, list of round logs, algorithm)."""
    alg = build_algorithm(alg_name, params)
    x0 = env.task.init_params(generator(seed, 0, "init"))
    state = alg.init(x0, env, RoundRng(seed, 0))
    logs = []
    for t in range(1, rounds + 1):
        state, log = alg.round(state, env, RoundRng(seed, t))
        logs.append(log)
    return state, logs, alg


def full_grad(task: Task, x: torch.Tensor) -> torch.Tensor:
    """∇f(x) for f = (1/n) Σ_i f_i, by a plain Python loop over clients with autograd."""
    d = task.data
    total = torch.zeros_like(x)
    for i in range(d.n):
        w = x.clone().requires_grad_()
        s, c = int(d.offsets[i]), int(d.counts[i])
        logits = task.model.logits(w.unsqueeze(0), d.x[s : s + c].unsqueeze(0))[0]
        loss = torch.nn.functional.cross_entropy(logits, d.y[s : s + c])
        if task.reg == "l2":
            loss = loss + 0.5 * task.lam * (w * w).sum()
        elif task.reg == "nonconvex":
            loss = loss + task.lam * (w * w / (1 + w * w)).sum()
        (g,) = torch.autograd.grad(loss, w)
        total += g
    return total / d.n


@pytest.fixture
def task() -> Task:
    return make_task()


@pytest.fixture(autouse=True)
def _empty_data_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tests never read the user's dataset cache (`fedbench data fetch`): an empty one."""
    monkeypatch.setenv("FEDBENCH_DATA", str(tmp_path_factory.getbasetemp() / "no-data-cache"))
    monkeypatch.delenv("FEDBENCH_DATA_MIRROR", raising=False)


# A plugin module written against fedbench.api only (the public names): FedAvg whose server
# step is scaled by a parameter, and a scaled-sign compressor ($-fields: `plugin_source`).
_PLUGIN = '''
"""$doc"""
from typing import Any, NamedTuple

from fedbench.api import (
    ALGORITHMS, COMPRESSORS, FLOAT_BITS, LOCAL_PARAMS, Algorithm, Component, Compressed,
    Compressor, Param, broadcast, broadcast_init, cohort_log, constant_bits, local_sgd,
    no_state, sample_cohort, update_compressor,
)


class State(NamedTuple):
    x: Any  # [d]
    down: Any
    up: Any


def $method(lr: float, local_steps: int, $param: float) -> Algorithm:
    def init(x0, env, rng):
        up = update_compressor(env).init(env.n, env.d, env.device)
        return State(x0, broadcast_init(env, x0), up)

    def round(s, env, rng):
        ids = sample_cohort(env, rng)  # [m]
        down, bits_down = broadcast(env, s.x, s.down, rng("downlink"))
        y, loss = local_sgd(env, down.x_hat, ids, local_steps, lr, rng("batches"))  # [m, d]
        msg, up = update_compressor(env).compress(y - down.x_hat, ids, s.up, rng("uplink"))
        x = s.x + $param * msg.value.mean(0)
        return State(x, down, up), cohort_log(env, msg.bits, ids.numel(), bits_down, loss)

    return Algorithm(init, round, lambda s: s.x)


def scaled_sign(d: int, values_only: bool = False) -> Compressor:
    def compress(x, ids, state, gen):
        scale = x.abs().mean(1, keepdim=True)  # [m, 1]
        bits = constant_bits(x.shape[0], FLOAT_BITS + d, x.device)  # scale + one bit each
        return Compressed(scale * x.sign(), bits), state

    return Compressor("scaled_sign", no_state, compress, "biased", 0.0)


ALGORITHMS.add(Component("$method", $method,
    {**LOCAL_PARAMS, "$param": Param($value, "server step", low=0.0, low_open=True)},
    "FedAvg with a $param server step"))
COMPRESSORS.add(Component("scaled_sign", scaled_sign, {}, "sign times mean |x|", kind="biased"))
'''


def plugin_source(method: str, param: str, value: float, doc: str) -> str:
    """The text of a plugin module registering the algorithm `method` (FedAvg with its server
    step scaled by the parameter `param`, default `value`: a new value is an edit of the
    plugin) and the compressor `scaled_sign`, with the module docstring `doc`."""
    fields = {"method": method, "param": param, "value": repr(value), "doc": doc}
    return string.Template(_PLUGIN).substitute(fields)
