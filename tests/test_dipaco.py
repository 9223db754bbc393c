"""DiPaCo: paths through shared modules, each module averaged over the workers sharing it."""

from __future__ import annotations

import pytest
import torch
from conftest import make_env, make_task, run_rounds
from test_lora import lm_task, x0

from fedbench import seeding
from fedbench.algorithms.diloco import Inner, InnerState, inner_train
from fedbench.algorithms.dipaco import levels_of, path_modules
from fedbench.seeding import RoundRng

INNER = {"lr": 0.003, "local_steps": 4, "warmup_steps": 0, "batch_size": 8}
H = {k: v for k, v in INNER.items() if k != "batch_size"}


def test_levels_split_the_blocks_and_share_the_rest():
    task = lm_task()  # 2 blocks
    model = task.model
    level = levels_of(model, 2)
    blocks = model.block_slices()
    assert bool((level[blocks[0]] == 0).all()) and bool((level[blocks[1]] == 1).all())
    shared = torch.ones(task.d, dtype=torch.bool)
    for b in blocks:
        shared[b] = False
    assert bool((level[shared] == -1).all()) and int(shared.sum()) > 0
    route = path_modules(level, 2, 3)  # K = 3 modules: 9 paths
    assert route.shape == (9, task.d)
    for p in range(9):  # path p = (p mod 3, p // 3), shared coordinates in module 0
        assert bool((route[p, blocks[0]] == p % 3).all())
        assert bool((route[p, blocks[1]] == p // 3).all())
        assert bool((route[p, shared] == 0).all())
    with pytest.raises(ValueError, match="levels = 3 needs at least 3 transformer blocks"):
        levels_of(model, 3)


@pytest.mark.parametrize("participation", [1.0, 0.5])
def test_one_module_per_level_is_diloco(participation):
    task = lm_task()
    kw = {"up": "topk", "up_params": {"ratio": 0.2}, "participation": participation}
    env = make_env(task, batch_size=8, **kw)
    a, la, alg = run_rounds("diloco", H, env, 3)
    env = make_env(task, batch_size=8, **kw)
    params = {**H, "modules": 1, "levels": 2, "module_weights": "uniform"}
    b, lb, dalg = run_rounds("dipaco", params, env, 3)
    torch.testing.assert_close(dalg.params(b), alg.params(a), rtol=1e-6, atol=1e-7)
    assert b.theta.shape == (1, task.d)
    for x, y in zip(la, lb, strict=True):
        assert torch.equal(x.bits_up, y.bits_up) and torch.equal(x.bits_down, y.bits_down)


def test_each_module_is_the_weighted_mean_of_the_workers_sharing_it():
    """Outer lr 1, no momentum: module j ← Σ_{i ∋ j} w_i y_i / Σ w_i (y_i the worker's model),
    w_i = its sample count; bits per worker = its path's size 32·d (the bank is 2·d)."""
    task = lm_task()
    env = make_env(task, batch_size=8)
    params = {**H, "outer_lr": 1.0, "outer_momentum": 0.0, "modules": 2, "levels": 2}
    state, (log,), _ = run_rounds("dipaco", params, env, 1)
    assert torch.equal(log.bits_up, torch.full((4,), 32 * task.d))
    assert torch.equal(log.bits_down, torch.full((4,), 32 * task.d))
    ids = torch.arange(4)  # full participation: worker i trains path i
    z = torch.zeros(4, task.d)
    st = InnerState(z, z.clone(), torch.zeros(4, dtype=torch.int64))
    h = Inner(0.003, "adamw", 0.1, 0.9, 0.95, 1e-8, 0, 0)
    gen = RoundRng(0, 1)(seeding.BATCHES)
    y, _ = inner_train(env, h, st, x0(task), ids, 4, gen)  # every module starts at x0
    w = task.data.counts.float()
    blocks = task.model.block_slices()
    for k in (0, 1):
        for lvl, users in ((0, [k, k + 2]), (1, [2 * k, 2 * k + 1])):
            sl, u = blocks[lvl], torch.tensor(users)
            want = (w[u, None] * y[u][:, sl]).sum(0) / w[u].sum()
            torch.testing.assert_close(state.theta[k, sl], want, rtol=1e-5, atol=1e-6)
    shared = torch.ones(task.d, dtype=torch.bool)
    for b in blocks:
        shared[b] = False
    want = (w[:, None] * y[:, shared]).sum(0) / w.sum()
    torch.testing.assert_close(state.theta[0, shared], want, rtol=1e-5, atol=1e-6)


def test_modules_off_the_trained_paths_do_not_move():
    task = lm_task()
    env = make_env(task, batch_size=8, participation=0.25)  # one worker per round
    state, _, _ = run_rounds("dipaco", {**H, "modules": 2, "levels": 2}, env, 1)
    (i,) = [p for p in range(4) if bool((state.inner.k[p] > 0).item())]  # who trained
    blocks, start = task.model.block_slices(), x0(task)
    for lvl, k in ((0, i % 2), (1, i // 2)):
        assert not torch.equal(state.theta[k, blocks[lvl]], start[blocks[lvl]])
        assert torch.equal(state.theta[1 - k, blocks[lvl]], start[blocks[lvl]])
        assert torch.equal(state.mom[1 - k, blocks[lvl]], torch.zeros_like(start[blocks[lvl]]))


def test_dipaco_trains_every_path_on_the_lm_task_and_on_an_mlp():
    task = lm_task()
    env = make_env(task, batch_size=8)
    params = {**H, "lr": 0.01, "modules": 2, "levels": 2}
    state, _, alg = run_rounds("dipaco", params, env, 4)
    assert torch.equal(state.x, state.theta.mean(0))
    start = task.evaluate(x0(task))["test_loss"]
    after, first = alg.metrics(state, env), task.train_loss(x0(task))
    assert after["path_test_loss_best"] <= after["path_test_loss_mean"] < start - 0.2
    assert after["routed_train_loss"] < first - 0.2
    mlp = make_task(model="mlp", n=8, per_client=25)  # two layers: one per level
    env = make_env(mlp, participation=0.5, batch_size=8)
    sweep = {"lr": 0.01, "local_steps": 5, "warmup_steps": 0, "outer_momentum": 0.5}
    state, logs, alg = run_rounds("dipaco", sweep, env, 30)
    assert mlp.train_loss(alg.params(state)) < 0.8 * mlp.train_loss(x0(mlp))
    assert all(torch.equal(lg.bits_up, torch.full((4,), 32 * mlp.d)) for lg in logs)
