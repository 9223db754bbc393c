"""DASHA (Tyurin & Richtárik, arXiv 2202.01268): identity compression is GD, the server's g is
the mean of the clients' g_i, the momentum a = 1/(2ω+1), exact bits, progress with RandK."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import full_grad, make_env, make_task, run_rounds

from fedbench.compressors import build_compressor
from fedbench.seeding import generator


def gd(task, lr, rounds, seed=0):
    x = task.init_params(generator(seed, 0, "init"))
    for _ in range(rounds):
        x = x - lr * full_grad(task, x)
    return x


def test_identity_compression_is_gradient_descent():
    task = make_task(model="mlp")
    env = make_env(task, batch_size="full")
    state, _, alg = run_rounds("dasha", {"lr": 0.5}, env, rounds=8)
    torch.testing.assert_close(alg.params(state), gd(task, 0.5, 8), rtol=1e-4, atol=1e-5)
    assert state.a == 1.0  # ω = 0
    torch.testing.assert_close(state.g_i, state.h_i)  # g_i = h_i = ∇f_i(x^t)


def test_theory_step_with_identity_is_one_over_L():
    task = make_task(model="logreg", reg="nonconvex", lam=0.1)
    state, _, _ = run_rounds("dasha", {"lr": "theory"}, make_env(task), rounds=1)
    assert state.gamma == pytest.approx(1.0 / task.smoothness().L)


def test_mvr_with_b_one_is_dasha_and_b_below_one_differs():
    task = make_task(model="logreg")
    env = make_env(task, "randk", {"ratio": 0.3}, batch_size=4)
    a, _, alg = run_rounds("dasha", {"lr": 0.2}, env, 6)
    b, _, _ = run_rounds("dasha", {"lr": 0.2, "b": 1.0}, env, 6)
    c, _, _ = run_rounds("dasha", {"lr": 0.2, "b": 0.5}, env, 6)
    assert torch.equal(alg.params(a), alg.params(b))
    assert not torch.equal(alg.params(a), alg.params(c))


def test_estimator_is_the_mean_of_the_clients_and_converges_with_randk():
    task = make_task(model="logreg", reg="nonconvex", lam=0.1)
    env = make_env(task, "randk", {"ratio": 0.25})
    x0 = task.init_params(generator(0, 0, "init"))
    state, _, alg = run_rounds("dasha", {"lr": 0.3}, env, 300)
    omega = task.d / round(0.25 * task.d) - 1
    assert state.a == pytest.approx(1.0 / (2 * omega + 1))
    torch.testing.assert_close(state.g, state.g_i.mean(0), rtol=1e-4, atol=1e-6)
    assert float(full_grad(task, alg.params(state)).norm()) < 0.05 * float(
        full_grad(task, x0).norm()
    )


@pytest.mark.parametrize("convention", ["full", "values"])
def test_bits_are_exact_under_both_conventions(convention):
    task = make_task(model="logreg", n=6)
    d = task.d
    k = round(0.2 * d)
    params = {"ratio": 0.2, "shared_seed": False, "bits": convention}
    per_msg = 32 * k + (min(k * (d - 1).bit_length(), d) if convention == "full" else 0)
    env = make_env(task, "randk", params, participation=0.5, batch_size=4)
    _, logs, _ = run_rounds("dasha", {"lr": 0.1}, env, 4)
    assert logs[0].bits_up.tolist() == [32 * d] * 6 + [per_msg] * 6  # dense g_i⁰, then m_i
    assert all(log.bits_up.tolist() == [per_msg] * 6 for log in logs[1:])
    assert all(log.bits_down.tolist() == [32 * d] * 6 for log in logs)


@pytest.mark.parametrize("omega,n", [(0.0, 5), (9.0, 5), (2.5, 20), (49.0, 50)])
def test_theory_step_is_theorem_6_1(omega, n):
    """γ = 1/(L + √(16ω(2ω+1)/n)·√(mean L_i²)) (Theorem 6.1), not the authors' code's
    1/(mean L_i + √(ω(4ω+1)/n)·L̂), for given (L, L_i, ω, n)."""
    from fedbench.algorithms.dasha import dasha_gamma
    from fedbench.task import Smoothness

    L_i = [1.0, 2.0, 4.0, 0.5, 3.0] * (n // 5)
    sm = Smoothness(1.7, torch.tensor(L_i, dtype=torch.float64))
    L_hat = math.sqrt(sum(v * v for v in L_i) / len(L_i))
    want = 1.0 / (1.7 + math.sqrt(16 * omega * (2 * omega + 1) / n) * L_hat)
    assert dasha_gamma(sm, omega, n) == pytest.approx(want, rel=1e-12)
    code = 1.0 / (sum(L_i) / len(L_i) + L_hat * math.sqrt(omega * (4 * omega + 1) / n))
    if omega > 0:  # the code's value is a different (larger) step
        assert dasha_gamma(sm, omega, n) < code


def test_automatic_momentum_with_permk_uses_its_exact_omega():
    """PermK with n ≤ d clients is unbiased with ω = n − 1 per client: a = 1/(2n − 1)."""
    task = make_task(model="logreg", n=6)
    assert task.d >= 6
    env = make_env(task)._replace(uplink=build_compressor("permk", {}, task.d, None, task.n))
    state, _, _ = run_rounds("dasha", {"lr": 0.1}, env, rounds=1)
    assert env.uplink.param == 5.0
    assert state.a == pytest.approx(1.0 / (2 * 5 + 1))
