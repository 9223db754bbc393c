"""GradSkip (Maranjyan, Safaryan, Richtárik, arXiv 2210.16402): q = 1 is ProxSkip/Scaffnew
(reference loop below), p = q = 1 is GD, Σ h_i = 0 after communications, exact optimum on a
heterogeneous strongly convex task, fewer gradients with q < 1, exact bits."""

from __future__ import annotations

import torch
from conftest import full_grad, make_env, make_task, run_rounds

from fedbench import seeding
from fedbench.seeding import RoundRng, generator


def proxskip(task, gamma, p, rounds, seed=0):
    """Scaffnew (Mishchenko et al. 2022) with the same coins: x̂ = x − γ(∇f_i(x_i) − h_i);
    θ = 1: x_i = mean x̂; h_i += (p/γ)(x_i − x̂_i). (GradSkip draws η before θ: consumed here.)"""
    n = task.n
    x = task.init_params(generator(seed, 0, "init")).expand(n, -1).clone()
    h = torch.zeros_like(x)
    ids = torch.arange(n)
    for t in range(1, rounds + 1):
        coin = RoundRng(seed, t)(seeding.ALGORITHM)
        while True:
            _, g = task.loss_grad(x, ids)
            torch.rand(n, generator=coin)  # η (always 1 for q = 1)
            x_hat = x - gamma * (g - h)
            if bool(torch.rand(1, generator=coin) < p):
                x_new = x_hat.mean(0).expand(n, -1)
                h = h + (p / gamma) * (x_new - x_hat)
                x = x_new.clone()
                break
            x = x_hat
    return x.mean(0)


def test_q_one_is_proxskip():
    task = make_task(model="logreg", reg="l2", lam=0.1)
    state, _, alg = run_rounds("gradskip", {"lr": 0.3, "p": 0.3, "q": 1.0}, make_env(task), 6)
    torch.testing.assert_close(alg.params(state), proxskip(task, 0.3, 0.3, 6), rtol=1e-5, atol=1e-6)


def test_p_and_q_one_is_gradient_descent():
    task = make_task(model="mlp")
    state, logs, alg = run_rounds("gradskip", {"lr": 0.5, "p": 1.0}, make_env(task), 8)
    x = task.init_params(generator(0, 0, "init"))
    for _ in range(8):
        x = x - 0.5 * full_grad(task, x)
    torch.testing.assert_close(alg.params(state), x, rtol=1e-4, atol=1e-5)
    assert all(log.extra["local_steps"] == 1.0 for log in logs)


def test_control_variates_sum_to_zero_and_the_optimum_is_exact():
    """Heterogeneous clients, strongly convex: local training with h_i reaches ∇f(x) = 0 (FedAvg
    stalls at a biased point); skipping half the gradient steps keeps the fixed point."""
    task = make_task(model="logreg", reg="l2", lam=0.1)
    x0 = task.init_params(generator(0, 0, "init"))
    evals = {}
    for q in (1.0, 0.5):
        state, logs, alg = run_rounds(
            "gradskip", {"lr": "theory", "p": 0.3, "q": q}, make_env(task), 80
        )
        torch.testing.assert_close(state.h_i.sum(0), torch.zeros(task.d), atol=1e-4, rtol=0)
        assert float(full_grad(task, alg.params(state)).norm()) < 1e-3 * float(
            full_grad(task, x0).norm()
        )
        evals[q] = sum(log.extra["grad_evals"] for log in logs) / sum(
            log.extra["local_steps"] for log in logs
        )
    assert evals[1.0] == task.n  # every client, every local iteration
    assert all(int(log.steps.sum()) == log.extra["grad_evals"] for log in logs)  # the clock's
    assert evals[0.5] < 0.8 * task.n  # skipping clients reuse their last gradient
    assert state.gamma == 1.0 / float(task.smoothness().L_i.max())


def test_bits_are_one_dense_message_each_way():
    task = make_task(model="logreg", n=6)
    _, logs, _ = run_rounds("gradskip", {"lr": 0.1, "q": 0.5}, make_env(task, batch_size=4), 5)
    assert all(log.bits_up.tolist() == [32 * task.d] * 6 for log in logs)
    assert all(log.bits_down.tolist() == [32 * task.d] * 6 for log in logs)
