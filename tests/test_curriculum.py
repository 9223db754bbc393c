"""Curricula (fedbench.curriculum): ordered local data, pacing functions, client curriculum."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_env, make_task, run_rounds

from fedbench import grid
from fedbench.curriculum import client_scores, ordered_batch_indices, pacing, sample_losses
from fedbench.seeding import generator


def official(kind: str, a: float, b: float, T: int, N: int, k: int) -> int:
    """The authors' `pacing_fn.get_pacing_function` (numpy, c = 10), written out."""
    start, c = b * N, 10
    if kind == "linear":
        v = int((N - start) / (a * T) * k + start)
    elif kind == "quad":
        v = int((N - start) / (a * T) ** 2 * k**2 + start)
    elif kind == "sqrt":
        v = int((N - start) / (a * T) ** 0.5 * k**0.5 + start)
    elif kind == "step":
        v = int(N * (k // (a * T)) + start)
    elif kind == "exp":
        v = int((N - start) / (np.exp(c) - 1) * (np.exp(k * c / (a * T)) - 1) + start)
    else:
        with np.errstate(divide="ignore"):
            v = int((N - start) * (1 + (1.0 / c) * np.log(k / (a * T) + np.exp(-c))) + start)
    return int(np.clip(v, 1, N))


def test_linear_pacing_by_hand():
    g = pacing("linear", 0.8, 0.2, 10, torch.tensor([100, 7]), torch.arange(10))
    assert g[0].tolist() == [20, 30, 40, 50, 60, 70, 80, 90, 100, 100]
    # N = 7: 1.4 + 0.7 k, truncated; the start 1.4 -> 1
    assert g[1].tolist() == [1, 2, 2, 3, 4, 4, 5, 6, 7, 7]
    assert pacing("linear", 0.5, 0.0, 4, torch.tensor([9]), torch.arange(4))[0].tolist() == [
        1,  # int(0) = 0, clipped to 1
        4,
        9,
        9,
    ]


@pytest.mark.parametrize("kind", ["linear", "quad", "sqrt", "step", "exp", "log"])
@pytest.mark.parametrize(("a", "b"), [(0.8, 0.2), (0.2, 0.2), (1.5, 0.0)])
def test_pacing_equals_the_authors_functions(kind, a, b):
    N = torch.tensor([1, 10, 37, 500])
    got = pacing(kind, a, b, 25, N, torch.arange(25))
    want = [[official(kind, a, b, 25, int(n), k) for k in range(25)] for n in N]
    assert got.tolist() == want


def task_env(**kw):
    task = make_task(model="mlp", n=6, per_client=40)
    return task, make_env(task, batch_size=8, **kw)


def test_random_ordering_is_uniform_sampling_bit_for_bit():
    _, env = task_env(participation=0.5)
    a, _, alg = run_rounds("fedavg", {"lr": 0.1, "local_steps": 4}, env, 5)
    odd = env._replace(ordering="random", pacing=("exp", 0.1, 0.9), rounds=5)
    b, _, _ = run_rounds("fedavg", {"lr": 0.1, "local_steps": 4}, odd, 5)
    assert torch.equal(alg.params(a), alg.params(b))


GRID = """
[experiment]
seeds = [0]
[task]
dataset = "digits"
clients = 5
[algorithm]
name = "fedavg"
{extra}
"""
# the job key of GRID without the new fields, computed at commit 619f721 (before curricula)
KEY_BEFORE = "75f8f5fb3c245067"


def test_default_ordering_keeps_job_keys_and_full_batch_is_refused(tmp_path: Path):
    p = tmp_path / "g.toml"
    keys = []
    for extra in ("", 'ordering = "random"\npacing = "linear"\npacing_a = 0.8\npacing_b = 0.2'):
        p.write_text(GRID.format(extra=extra))
        keys.append(grid.load(p).jobs[0].key)
    assert keys == [KEY_BEFORE, KEY_BEFORE]
    p.write_text(GRID.format(extra='ordering = "curriculum"\nbatch_size = "full"'))
    with pytest.raises(
        grid.GridError, match=r'algorithm\.ordering = "curriculum": orders minibatches'
    ):
        grid.load(p)
    p.write_text(GRID.format(extra='ordering = "easy"'))
    with pytest.raises(grid.GridError, match="allowed: one of 'random', 'curriculum', 'anti'"):
        grid.load(p)


def ranks(losses: torch.Tensor, idx: torch.Tensor, drawn: torch.Tensor, descending: bool):
    """Rank of each drawn sample `[m, K, B]` in its client's order by loss."""
    key = torch.where(losses.isinf(), torch.inf, -losses if descending else losses)
    order = key.argsort(dim=1, stable=True)  # [m, W]
    rank_of = torch.empty_like(order)
    rank_of.scatter_(1, order, torch.arange(order.shape[1]).expand_as(order))
    pos = (idx.unsqueeze(1).unsqueeze(1) == drawn.unsqueeze(-1)).float().argmax(-1)  # [m, K, B]
    return rank_of.gather(1, pos.flatten(1)).view_as(pos)


def test_curriculum_draws_from_the_paced_easy_prefix_and_anti_from_the_hard_one():
    task, _ = task_env()
    w = task.init_params(generator(0, 0, "init"))
    ids = torch.tensor([0, 2, 5])
    K, B = 6, 8
    losses, idx = sample_losses(task, w, ids)  # [3, 40]
    g = pacing("linear", 0.8, 0.2, K, task.data.counts[ids], torch.arange(K))  # [3, K]
    mean = {}
    for ordering in ("curriculum", "anti"):
        drawn = ordered_batch_indices(
            task, w, ids, K, B, torch.Generator().manual_seed(4), ordering, "linear", 0.8, 0.2
        )
        r = ranks(losses, idx, drawn, descending=ordering == "anti")
        assert bool((r < g.unsqueeze(2)).all())  # step k only sees the first g(k) samples
        assert int(r[:, -1].max()) >= int(g[:, 0].max())  # later steps reach further
        first = losses.gather(1, (idx.unsqueeze(1) == drawn[:, 0].unsqueeze(-1)).float().argmax(-1))
        mean[ordering] = float(first.mean())
    assert mean["curriculum"] < mean["anti"]


def test_ordered_local_training_runs_in_every_local_method_and_learns():
    task, env = task_env(participation=0.5)
    x0 = task.init_params(generator(0, 0, "init"))
    for ordering in ("curriculum", "anti"):
        env_o = env._replace(ordering=ordering)
        a, _, alg = run_rounds("fedavg", {"lr": 0.1, "local_steps": 5}, env_o, 20)
        b, _, _ = run_rounds("fedavg", {"lr": 0.1, "local_steps": 5}, env_o, 20)
        assert torch.equal(alg.params(a), alg.params(b))
        assert task.train_loss(alg.params(a)) < 0.8 * task.train_loss(x0)
    s, _, alg = run_rounds(
        "scaffold", {"lr": 0.1, "local_steps": 5}, env._replace(ordering="anti"), 3
    )
    u, _, _ = run_rounds("scaffold", {"lr": 0.1, "local_steps": 5}, env, 3)
    assert not torch.equal(alg.params(s), alg.params(u))  # the ordering reaches scaffold too


def test_client_curriculum_pool_grows_from_the_easiest_clients_and_bits_count_reports():
    task = make_task(model="mlp", n=10, per_client=20)
    x0 = task.init_params(generator(0, 0, "init"))
    score = client_scores(task, x0)
    per_sample, _ = task._sample_losses(x0, task.data.x, task.data.y)
    for i in range(10):
        torch.testing.assert_close(score[i], per_sample[task.data.client_of == i].mean())
    easy, hard = score.argsort()[:2].sort().values, score.argsort()[-2:].sort().values
    T = 10
    for kind, pool in (("curriculum", easy), ("anti_curriculum", hard)):
        env = make_env(task, participation=0.3, batch_size=5)._replace(sampling=kind, rounds=T)
        _, (log,), _ = run_rounds("fedavg", {"lr": 0.1, "local_steps": 2}, env, 1)
        # round 1: pool g(0) = 0.2·10 = 2 clients, so both train (m = 3 > 2)
        assert log.participants == 2 and torch.equal(log.steps.nonzero().flatten(), pool)
        assert torch.equal(log.bits_up[-10:], torch.full((10,), 32))  # every client's score
        assert int(log.bits_up.sum()) == 2 * 32 * task.d + 10 * 32
        assert int(log.bits_down.sum()) == 10 * 32 * task.d  # the 8 others got the model too
    env = make_env(task, participation=0.3, batch_size=5)._replace(sampling="curriculum", rounds=T)
    _, logs, _ = run_rounds("fedavg", {"lr": 0.1, "local_steps": 2}, env, T)
    assert [lg.participants for lg in logs] == [2, 3, 3, 3, 3, 3, 3, 3, 3, 3]
    seen = set()
    for lg in logs:
        seen |= set(lg.steps.nonzero().flatten().tolist())
    assert len(seen) > 5  # the pool reaches beyond the easy clients (g(t) -> n at t = 0.8 T)
    assert math.isfinite(float(logs[-1].extra["local_loss"]))


def test_client_curriculum_is_refused_for_methods_without_it(tmp_path: Path):
    p = tmp_path / "g.toml"
    p.write_text(GRID.format(extra='sampling = "curriculum"').replace('"fedavg"', '"scaffold"'))
    with pytest.raises(grid.GridError, match="curriculum is implemented by fedavg"):
        grid.load(p)
    p.write_text(GRID.format(extra='sampling = "anti_curriculum"'))
    assert grid.load(p).jobs[0].config["algorithm"]["sampling"] == "anti_curriculum"


def test_every_method_with_local_steps_orders_its_minibatches_and_the_others_refuse(
    tmp_path: Path,
):
    """`ordering` is never silently ignored: each method that takes `local_steps` follows a
    different trajectory under "curriculum" than under "random" (its local minibatches come
    from `local_batches`), and a grid asking it of a method without local steps is refused."""
    from test_algorithms import SWEEP_PARAMS

    from fedbench.algorithms import ALGORITHMS

    task = make_task(model="mlp", n=8, per_client=25)
    local = [a for a in ALGORITHMS if "local_steps" in ALGORITHMS[a].params]
    assert len(local) > 30
    ignored = []
    for name in local:
        params = dict(SWEEP_PARAMS.get(name, {"lr": 0.1}))
        if name == "mifa":
            params["start"] = "zero"  # the waiting start holds x for these 3 rounds
        env = make_env(task, participation=0.5, batch_size=8)._replace(rounds=3)
        finals = []
        for ordering in ("random", "curriculum"):
            state, _, alg = run_rounds(name, params, env._replace(ordering=ordering), 3)
            finals.append(alg.params(state))
        if torch.equal(*finals):
            ignored.append(name)
    assert ignored == []
    p = tmp_path / "g.toml"
    for name in sorted(set(ALGORITHMS) - set(local)):
        text = GRID.format(extra='ordering = "curriculum"\nbatch_size = 8')
        p.write_text(text.replace('"fedavg"', f'"{name}"'))
        with pytest.raises(grid.GridError, match=f"{name} takes no local steps"):
            grid.load(p)
