"""Blocks of clients on threads (fedbench.parallel): the same numbers as one block after
another, only for corrections marked rowwise, errors and thread counts handled."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from conftest import make_env, make_task, run_rounds

import fedbench.algorithms.base as base
from fedbench import parallel
from fedbench.runner import rounds_mode


@pytest.fixture
def two_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The `threads` of every for_each_block call local_sgd makes."""
    seen: list[int] = []
    real = base.for_each_block

    def recording(run, starts, threads):  # type: ignore[no-untyped-def]
        seen.append(threads)
        real(run, starts, threads)

    monkeypatch.setattr(base, "for_each_block", recording)
    return seen


CASES = [
    ("fedavg", {"lr": 0.1, "local_steps": 3}, True),
    ("fedprox", {"lr": 0.1, "local_steps": 3, "mu": 0.1}, True),
    ("scaffold", {"lr": 0.1, "local_steps": 3}, True),
    ("feddyn", {"lr": 0.1, "local_steps": 3, "alpha": 0.1}, True),
    ("local_adam", {"lr": 0.02, "local_steps": 3}, False),  # counts steps per block: in order
    # corrections that see the step's minibatch ζ (issue 24: once a loop of their own)
    ("mime", {"lr": 0.1, "local_steps": 3}, True),
    ("mimelite", {"lr": 0.1, "local_steps": 3}, True),
    ("fedsmoo", {"lr": 0.1, "local_steps": 3}, True),
    # Langevin noise drawn per step for all blocks at once (not in call order), ε large enough
    # to move the numbers
    ("entropy_sgd", {"lr": 1.0, "local_steps": 2, "langevin_steps": 3, "noise": 0.01}, True),
]


@pytest.mark.parametrize(("name", "params", "threaded"), CASES)
def test_blocks_on_threads_give_the_one_after_another_numbers_bit_for_bit(
    name: str,
    params: dict,
    threaded: bool,
    two_threads: None,
    spy: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FEDBENCH_CACHE_MB", "0.0001")  # one client per block: 8 blocks
    task = make_task(model="mlp", n=8, per_client=20)

    def final(block_threads: str) -> torch.Tensor:
        monkeypatch.setenv(parallel.ENV_VAR, block_threads)
        env = make_env(task, participation=1.0, batch_size=8)
        with rounds_mode(task.model, name):
            state, _, alg = run_rounds(name, params, env, 3, seed=4)
        return alg.params(state)

    on_threads = final("")
    used, spy[:] = list(spy), []
    in_order = final("0")
    assert spy and set(spy) == {1}
    assert set(used) == ({2} if threaded else {1})
    assert torch.equal(on_threads, in_order)
    assert torch.get_num_threads() == 2  # restored after every round


def test_an_error_in_a_block_is_raised_after_every_block_and_threads_are_restored(
    two_threads: None,
) -> None:
    done: list[int] = []

    def run(s: int) -> None:
        if s == 0:
            raise ValueError("block 0 failed")
        done.append(s)

    with pytest.raises(ValueError, match="block 0 failed"):
        parallel.for_each_block(run, range(4), threads=2)
    assert sorted(done) == [1, 2, 3]
    assert torch.get_num_threads() == 2


def test_workers_inherit_inference_and_grad_modes(two_threads: None) -> None:
    modes: set[tuple[bool, bool]] = set()

    def run(s: int) -> None:
        modes.add((torch.is_inference_mode_enabled(), torch.is_grad_enabled()))

    with torch.inference_mode():
        parallel.for_each_block(run, range(4), threads=2)
    with torch.no_grad():
        parallel.for_each_block(run, range(4), threads=2)
    assert modes == {(True, False), (False, False)}


def test_block_threads_policy(monkeypatch: pytest.MonkeyPatch, two_threads: None) -> None:
    cpu = torch.device("cpu")
    assert parallel.block_threads(cpu, 8) == 2
    assert parallel.block_threads(cpu, 1) == 1  # one block: nothing to spread
    assert parallel.block_threads(torch.device("meta"), 8) == 1  # not a CPU
    monkeypatch.setenv(parallel.ENV_VAR, "0")
    assert parallel.block_threads(cpu, 8) == 1
    monkeypatch.setenv(parallel.ENV_VAR, "")
    torch.set_num_threads(1)
    assert parallel.block_threads(cpu, 8) == 1  # a one-thread job stays on its thread


def test_a_forked_child_starts_its_own_block_threads(two_threads: None) -> None:
    """A child forked after the block threads started (they do not survive a fork) runs blocks
    on fresh threads instead of waiting forever on the parent's."""
    import multiprocessing as mp

    parallel.for_each_block(lambda s: None, range(4), threads=2)  # the parent's threads exist
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        assert pool.apply_async(_blocks_in_child).get(timeout=60) == [0, 1, 2, 3]


def _blocks_in_child() -> list[int]:
    done: list[int] = []
    parallel.for_each_block(done.append, range(4), threads=2)
    return sorted(done)


# models differentiated by autograd (not hand-batched): a block's in-place steps on a view of
# the shared [m, d] tensor bumped the storage's version counter under another block thread's
# saved graph ("modified by an inplace operation", lm_quickstart on 2 threads); a model on the
# generic functional_call path (cnn) swaps weights into a shared template: blocks in order
AUTOGRAD_TASKS = {  # model -> ([task] lines, its blocks run side by side)
    "transformer": (
        'dataset = "grammar_text"\nchars = 3000\ncontext = 8\nmodel = "transformer"\n'
        "layers = 1\nwidth = 8\nheads = 2\n",
        True,
    ),
    "cnn": ('dataset = "digits"\nmodel = "cnn"\n', False),
}


@pytest.mark.parametrize("model", sorted(AUTOGRAD_TASKS))
def test_autograd_models_on_block_threads_run_and_match_in_order(
    model: str, two_threads: None, spy: list[int], monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    from pathlib import Path

    from fedbench import grid, runner
    from fedbench.store import Store

    monkeypatch.setenv("FEDBENCH_CACHE_MB", "0.0001")  # one client per block
    text = (
        '[experiment]\nname = "threads"\nrounds = 2\neval_every = 1\n'
        f"[task]\n{AUTOGRAD_TASKS[model][0]}clients = 4\n"
        '[algorithm]\nname = "fedavg"\nlocal_steps = 2\nbatch_size = 4\nparticipation = 1.0\n'
    )
    (job,) = grid.parse(text, Path("threads.toml")).jobs

    def final(block_threads: str, db: str) -> dict[str, float]:
        monkeypatch.setenv(parallel.ENV_VAR, block_threads)
        store = Store(f"sqlite:///{tmp_path / db}")
        store.ensure_runs(store.upsert_experiment("threads", "t.toml", ""), [runner.run_spec(job)])
        outcome = runner.execute(job, store, torch.device("cpu"))
        assert outcome.status == "done", outcome.error
        frame = store.metrics_frame([int(store.get_run(job.key)["id"])])
        last = frame[frame["round"] == 2]
        return {k: v for k, v in zip(last["name"], last["value"], strict=True) if k != "wall_s"}

    on_threads = final("", "a.db")
    assert set(spy) == ({2} if AUTOGRAD_TASKS[model][1] else {1})
    assert on_threads == final("0", "b.db")


def test_fused_sgd_steps_give_the_gradient_path_numbers_bit_for_bit(
    two_threads: None, spy: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plain local SGD (no correction, no regulariser) steps the model in place
    (`Model.sgd_step`, no gradient buffer); an identity correction takes the gradient path.
    Both, on block threads or in order, give the same numbers."""
    monkeypatch.setenv("FEDBENCH_CACHE_MB", "0.0001")  # one client per block: 8 blocks
    task = make_task(model="mlp", reg="none", n=8, per_client=20)
    env = make_env(task, participation=1.0, batch_size=8)
    fused_calls: list[int] = []
    real = base.sgd_step

    def counting(*args, **kw):  # type: ignore[no-untyped-def]
        fused_calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(base, "sgd_step", counting)
    identity = parallel.rowwise(lambda y, g, rows: g)
    ids = torch.arange(8)
    x0 = task.model.init(torch.Generator().manual_seed(0))

    def run(correction, block_threads: str) -> tuple[torch.Tensor, torch.Tensor]:
        monkeypatch.setenv(parallel.ENV_VAR, block_threads)
        gen = torch.Generator().manual_seed(5)
        with torch.inference_mode():
            return base.local_sgd(env, x0, ids, 4, 0.1, gen, correction)

    fused = run(None, "")
    assert len(fused_calls) == 8 * 4 and spy[-1] == 2  # every block step fused, on threads
    for correction, threads in ((None, "0"), (identity, ""), (identity, "0")):
        fused_calls.clear()
        y, loss = run(correction, threads)
        assert len(fused_calls) == (8 * 4 if correction is None else 0)
        assert torch.equal(y, fused[0]) and torch.equal(loss, fused[1])
    assert not torch.equal(fused[0], x0.expand(8, -1))
