"""TAMUNA (Condat, Agarský, Malinovsky, Richtárik, arXiv 2302.09832): Σ h_i = 0 under
compression and partial participation, s = c = n is Scaffnew with K local steps, the ownership
pattern, exact bits, the exact optimum."""

from __future__ import annotations

import torch
from conftest import full_grad, make_env, make_task, run_rounds

from fedbench.algorithms.tamuna import ownership
from fedbench.seeding import generator


def scaffnew_fixed_k(task, gamma, K, rounds, seed=0):
    """No compression, everyone: K steps x_i ← x_i − γ(∇f_i(x_i) − h_i) from x̄, x̄ = mean x_i,
    h_i ← h_i + (1/(Kγ))(x̄ − x_i)."""
    n = task.n
    x_bar = task.init_params(generator(seed, 0, "init"))
    h = torch.zeros(n, task.d)
    ids = torch.arange(n)
    for _ in range(rounds):
        x = x_bar.expand(n, -1).clone()
        for _ in range(K):
            _, g = task.loss_grad(x, ids)
            x = x - gamma * (g - h)
        x_bar = x.mean(0)
        h = h + (1.0 / (K * gamma)) * (x_bar - x)
    return x_bar


def test_ownership_pattern():
    gen = torch.Generator().manual_seed(0)
    q = ownership(d=23, c=5, s=2, gen=gen, device=torch.device("cpu"))
    assert torch.equal(q.sum(0), torch.full((23,), 2.0))  # s owners per coordinate
    assert set(q.sum(1).tolist()) <= {9.0, 10.0}  # ⌊sd/c⌋ = 9, ⌈sd/c⌉ = 10


def test_no_compression_full_participation_is_scaffnew_with_k_steps():
    task = make_task(model="logreg", reg="l2", lam=0.1, n=6)
    params = {"lr": 0.2, "local_steps": 3, "s": 6}
    state, _, alg = run_rounds("tamuna", params, make_env(task), 8)
    torch.testing.assert_close(
        alg.params(state), scaffnew_fixed_k(task, 0.2, 3, 8), rtol=1e-5, atol=1e-6
    )


def test_control_variates_sum_to_zero_and_the_optimum_is_exact():
    task = make_task(model="logreg", reg="l2", lam=0.1, n=8)
    x0 = task.init_params(generator(0, 0, "init"))
    params = {"lr": 0.2, "local_steps": 3, "s": 2}
    state, _, alg = run_rounds("tamuna", params, make_env(task, participation=0.5), 300)
    torch.testing.assert_close(state.h_i.sum(0), torch.zeros(task.d), atol=1e-4, rtol=0)
    assert float(state.h_i.abs().sum()) > 0
    assert float(full_grad(task, alg.params(state)).norm()) < 1e-3 * float(
        full_grad(task, x0).norm()
    )


def test_bits_are_the_owned_coordinates():
    task = make_task(model="logreg", n=8)
    d = task.d
    env = make_env(task, participation=0.5, batch_size=4)
    _, logs, _ = run_rounds("tamuna", {"lr": 0.1, "s": 2}, env, 4)
    for log in logs:
        assert int(log.bits_up.sum()) == 32 * 2 * d  # each coordinate sent by s = 2 clients
        assert set(log.bits_up.tolist()) <= {32 * (2 * d // 4), 32 * -(-2 * d // 4)}
        assert log.bits_down.tolist() == [32 * d] * 4
