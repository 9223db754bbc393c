"""Entropy-SGD local steps (arXiv 1611.01838): without scope, noise and averaging they are
plain local SGD; the Langevin noise is seeded; the loss decreases."""

from __future__ import annotations

import pytest
import torch
from conftest import make_env, make_task, run_rounds

from fedbench.seeding import generator


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("batch_size", [4, "full"])
def test_without_scope_noise_and_averaging_it_is_local_sgd(batch_size):
    """γ = 0, ε = 0, β = 0 (μ = x'_L), η = 1: a local step is L SGD steps of size η' on L
    fresh minibatches, drawn as FedAvg draws its K·L ones: FedAvg with K·L steps, lr η'."""
    task = make_task(model="mlp", n=8, per_client=25)
    K, L, eta_p = 2, 3, 0.1
    p = {"lr": 1.0, "local_steps": K, "langevin_steps": L, "langevin_lr": eta_p}
    p |= {"gamma": 0.0, "noise": 0.0, "beta": 0.0}
    env = make_env(task, participation=0.5, batch_size=batch_size)
    a, la, alg = run_rounds("entropy_sgd", p, env, 4)
    b, lb, _ = run_rounds("fedavg", {"lr": eta_p, "local_steps": K * L}, env, 4)
    torch.testing.assert_close(alg.params(a), alg.params(b), rtol=1e-5, atol=1e-6)
    assert all(torch.equal(x.bits_up, y.bits_up) for x, y in zip(la, lb, strict=True))


def test_scope_pulls_the_langevin_chain_back():
    """A large γ keeps x' near y, so μ ≈ y and the local step barely moves the model."""
    task = make_task(model="mlp", n=8, per_client=25)
    x0 = task.init_params(generator(0, 0, "init"))
    moves = []
    for gamma in (0.0, 10.0):  # η'γ = 1: x' = y − η'∇f(x') at every iteration
        p = {"lr": 1.0, "local_steps": 2, "gamma": gamma, "noise": 0.0}
        s, _, alg = run_rounds("entropy_sgd", p, make_env(task), 1)
        moves.append(float((alg.params(s) - x0).norm()))
    assert moves[1] < 0.5 * moves[0]


def test_noise_is_seeded_and_matters():
    task = make_task(model="mlp", n=8, per_client=25)
    p = {"noise": 1e-2, "local_steps": 2}
    env = make_env(task, participation=0.5)
    a, _, alg = run_rounds("entropy_sgd", p, env, 2)
    b, _, _ = run_rounds("entropy_sgd", p, env, 2)
    c, _, _ = run_rounds("entropy_sgd", {**p, "noise": 0.0}, env, 2)
    assert torch.equal(alg.params(a), alg.params(b))
    assert not torch.allclose(alg.params(a), alg.params(c))


def test_entropy_sgd_reduces_the_loss():
    task = make_task(model="mlp", n=8, per_client=25)
    x0 = task.init_params(generator(0, 0, "init"))
    losses = []
    for rounds in (5, 20):
        s, _, alg = run_rounds("entropy_sgd", {}, make_env(task, batch_size=8), rounds)
        losses.append(task.train_loss(alg.params(s)))
    assert losses[1] < losses[0] < task.train_loss(x0)


@pytest.mark.parametrize("name", ["entropy_sgd", "mime", "fedsmoo"])
def test_steps_with_their_minibatch_do_not_depend_on_the_block_size(monkeypatch, name):
    """The loop of `_local_steps` (and Entropy-SGD's noise) gives the same model with one
    client per block as with one block for all."""
    task = make_task(model="mlp", n=8, per_client=25)
    p = {"local_steps": 2} | ({"noise": 1e-2} if name == "entropy_sgd" else {})
    a, _, alg = run_rounds(name, p, make_env(task, participation=0.5, batch_size=4), 2)
    monkeypatch.setenv("FEDBENCH_CACHE_MB", "1e-9")
    assert task.block_size(4) == 1
    b, _, _ = run_rounds(name, p, make_env(task, participation=0.5, batch_size=4), 2)
    torch.testing.assert_close(alg.params(a), alg.params(b), rtol=1e-6, atol=1e-7)
