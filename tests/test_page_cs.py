"""PAGE with client and data sampling (Tyurin, Sun, Burlachenko, Richtárik, arXiv 2206.02275):
p = 1 is GD; full local data and uniform client sampling is today's PAGE with b = n, b' = s;
the poisson-weighted correction is unbiased; exact bits."""

from __future__ import annotations

import torch
from conftest import full_grad, make_env, make_task, run_rounds

from fedbench.algorithms.page_cs import full_probability, sampled_mean
from fedbench.seeding import generator


def test_p_one_is_gradient_descent():
    task = make_task(model="mlp")
    env = make_env(task, participation=0.5, batch_size=4)
    state, logs, alg = run_rounds("page_cs", {"lr": 0.5, "p": 1.0}, env, rounds=6)
    x = task.init_params(generator(0, 0, "init"))
    for _ in range(6):
        x = x - 0.5 * full_grad(task, x)
    torch.testing.assert_close(alg.params(state), x, rtol=1e-4, atol=1e-5)
    assert all(log.extra["full_sync"] == 1.0 for log in logs)


def test_full_local_data_with_uniform_clients_is_todays_page():
    task = make_task(model="mlp", n=8)
    a_env = make_env(task, participation=0.5, batch_size="full")
    a, logs, alg = run_rounds("page_cs", {"lr": 0.3, "p": 0.3}, a_env, rounds=12)
    b_env = make_env(task, participation=1.0, batch_size="full")
    b, _, _ = run_rounds("page", {"lr": 0.3, "p": 0.3, "b_prime": 4}, b_env, rounds=12)
    assert {log.extra["full_sync"] for log in logs} == {0.0, 1.0}  # both branches ran
    assert torch.equal(alg.params(a), alg.params(b))


def test_poisson_weighting_is_unbiased():
    task = make_task(model="logreg", n=10)
    env = make_env(task, participation=0.3)._replace(sampling="poisson")
    diff = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    draws = 4000
    total = torch.zeros(4)
    for _ in range(draws):
        keep = torch.rand(10, generator=gen) < 0.3
        total += sampled_mean(diff[keep], env)
    torch.testing.assert_close(total / draws, diff.mean(0), atol=0.04, rtol=0.0)


def test_auto_probability_and_exact_bits():
    task = make_task(model="logreg", n=8, per_client=20)
    env = make_env(task, participation=0.25, batch_size=5)
    assert full_probability("auto", env) == 10 / (160 + 10)  # b' = s·B = 2·5, N = 160
    d = task.d
    _, logs, _ = run_rounds("page_cs", {"lr": 0.1}, env, rounds=30)
    assert logs[0].bits_up.tolist()[:8] == [32 * d] * 8  # dense ∇f_i(x⁰) of every client
    for log in logs[1:]:
        m = 8 if log.extra["full_sync"] else 2
        assert log.bits_up.tolist() == [32 * d] * m
        assert log.bits_down.tolist() == [32 * d + 1] * m
