"""D-SGD (Koloskova et al., arXiv 2003.02818) and the single global merge (Zhu et al., arXiv
2507.06542): what they reduce to, consensus, exact gossip bits."""

from __future__ import annotations

import torch
from conftest import make_env, make_task, run_rounds

from fedbench.algorithms.d_sgd import local_then_gossip
from fedbench.algorithms.dfedsam import consensus_sq
from fedbench.algorithms.single_merge import gossip_from
from fedbench.seeding import RoundRng, generator


def test_complete_graph_is_fedavg_with_full_participation():
    """W = 11ᵀ/n averages exactly: τ local steps then the mean = FedAvg (τ = 1: minibatch SGD)."""
    task = make_task(model="mlp", n=6)
    for steps in (1, 3):
        env = make_env(task, batch_size=4)
        params = {"lr": 0.2, "local_steps": steps}
        a, logs, alg = run_rounds("d_sgd", {**params, "topology": "complete"}, env, 5)
        b, _, fed = run_rounds("fedavg", params, env, 5)
        torch.testing.assert_close(alg.params(a), fed.params(b), rtol=1e-5, atol=1e-6)
        assert consensus_sq(a.x_i) < 1e-10
        assert logs[0].bits_up.tolist() == [5 * 32 * task.d] * 6  # n − 1 neighbours each


def test_ring_keeps_the_average_and_reaches_consensus_while_learning():
    task = make_task(model="logreg", n=8)
    env = make_env(task, batch_size="full")
    x0 = task.init_params(generator(0, 0, "init"))
    state, logs, alg = run_rounds("d_sgd", {"lr": 0.1}, env, 60)
    assert logs[0].bits_up.tolist() == [2 * 32 * task.d] * 8  # two neighbours on the ring
    assert all(int(log.bits_down.sum()) == 0 for log in logs)
    assert all(log.steps.tolist() == [1] * 8 for log in logs)  # every client works every round
    assert task.train_loss(alg.params(state)) < 0.8 * task.train_loss(x0)
    # a gossip step with W doubly stochastic keeps the mean: x̄ moves only by the local steps
    with_w, _ = local_then_gossip(env, state.x_i, state.W, 1, 0.1, RoundRng(0, 1))
    without, _ = local_then_gossip(env, state.x_i, None, 1, 0.1, RoundRng(0, 1))
    assert not torch.allclose(with_w, without)
    torch.testing.assert_close(with_w.mean(0), without.mean(0))
    # consensus: the spread between models stays far below the models' own size
    assert consensus_sq(state.x_i) < 1e-2 * float(state.x_i.square().sum(1).mean())


def test_single_merge_without_gossip_is_one_shot_averaging():
    """late = 0, full local data: T independent local rounds then one merge = FedAvg with one
    round of T·τ local steps."""
    task = make_task(model="mlp", n=6)
    env = make_env(task, batch_size="full")
    T = 6
    params = {"lr": 0.2, "local_steps": 2, "horizon": T, "late": 0.0}
    a, logs, alg = run_rounds("single_merge", params, env, T)
    b, _, fed = run_rounds("fedavg", {"lr": 0.2, "local_steps": 2 * T}, env, 1)
    torch.testing.assert_close(alg.params(a), fed.params(b), rtol=1e-5, atol=1e-6)
    assert torch.equal(a.x_i, a.x_i[:1].expand(6, -1))  # every client holds the merged model
    d = task.d
    assert [int(log.bits_up.sum()) for log in logs] == [0] * (T - 1) + [6 * 32 * d]
    assert [int(log.bits_down.sum()) for log in logs] == [0] * (T - 1) + [6 * 32 * d]


def test_single_merge_with_gossip_every_round_is_d_sgd_then_merges():
    task = make_task(model="logreg", n=8)
    env = make_env(task, batch_size=4)
    T = 5
    a, logs, _ = run_rounds("single_merge", {"lr": 0.1, "horizon": T, "late": 1.0}, env, T - 1)
    b, _, _ = run_rounds("d_sgd", {"lr": 0.1}, env, T - 1)
    assert torch.equal(a.x_i, b.x_i)
    assert all(log.extra["gossip"] == 1.0 for log in logs)
    a, _, _ = run_rounds("single_merge", {"lr": 0.1, "horizon": T, "late": 1.0}, env, T)
    b, _, _ = run_rounds("d_sgd", {"lr": 0.1}, env, T)
    torch.testing.assert_close(a.x_i, b.x_i.mean(0).expand(8, -1))


def test_late_window():
    assert gossip_from(100, 0.0) == 101  # never (the merge only)
    assert gossip_from(100, 1.0) == 1
    assert gossip_from(100, 0.25) == 76  # rounds 76..100
