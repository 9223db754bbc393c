"""Mime / MimeLite (arXiv 2008.03606): β = 0 MimeLite is FedAvg, one local step is SGD with
momentum on full-batch gradients, the SVRG correction removes client drift, exact bits."""

from __future__ import annotations

import pytest
import torch
from conftest import full_grad, make_env, make_task, run_rounds

from fedbench.seeding import generator


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def heavy_ball(task, lr, beta, rounds):
    """m ← (1−β)∇f(x) + βm; x ← x − ηm from the shared initial model."""
    x = task.init_params(generator(0, 0, "init"))
    m = torch.zeros_like(x)
    for _ in range(rounds):
        m = (1 - beta) * full_grad(task, x) + beta * m
        x = x - lr * m
    return x, m


def test_mimelite_without_momentum_is_fedavg_bit_for_bit():
    """β = 0: the frozen momentum has weight 0 and (1−β)g = g, so the iterates are FedAvg's
    exactly (compressed uplink with error feedback, partial participation, minibatches); the
    bits add the full-batch gradient up and the momentum down."""
    task = make_task(model="mlp", n=8, per_client=25)
    p = {"lr": 0.1, "local_steps": 3}

    def env():
        return make_env(task, "topk", {"ratio": 0.3}, ef=True, participation=0.5, batch_size=4)

    a, la, alg = run_rounds("fedavg", p, env(), 5)
    b, lb, _ = run_rounds("mimelite", {**p, "beta": 0.0}, env(), 5)
    assert torch.equal(alg.params(a), alg.params(b))
    for x, y in zip(la, lb, strict=True):
        assert torch.equal(y.bits_up, x.bits_up + 32 * task.d)
        assert torch.equal(y.bits_down, x.bits_down + 32 * task.d)


@pytest.mark.parametrize("batch_size", [4, "full"])
def test_mime_with_one_local_step_is_sgd_with_momentum(batch_size):
    """K = 1, full participation: g_i(x; ζ) − g_i(x; ζ) cancels whatever the minibatch, every
    client steps x − η((1−β)∇f(x) + βm), and the server momentum is the same EMA."""
    task = make_task(model="mlp")
    lr, beta = 0.3, 0.8
    p = {"lr": lr, "local_steps": 1, "beta": beta}
    state, _, alg = run_rounds("mime", p, make_env(task, batch_size=batch_size), 6)
    x, m = heavy_ball(task, lr, beta, 6)
    torch.testing.assert_close(alg.params(state), x, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(state.m, m, rtol=1e-4, atol=1e-6)


def test_mimelite_with_one_full_local_step_is_sgd_with_momentum():
    task = make_task(model="mlp")
    p = {"lr": 0.3, "local_steps": 1, "beta": 0.8}
    state, _, alg = run_rounds("mimelite", p, make_env(task), 6)
    x, m = heavy_ball(task, 0.3, 0.8, 6)
    torch.testing.assert_close(alg.params(state), x, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(state.m, m, rtol=1e-4, atol=1e-6)


def test_mime_server_momentum_uses_the_cohort_full_batch_gradient():
    task = make_task(model="mlp", n=8, per_client=25)
    env = make_env(task, participation=0.5, batch_size=4)
    state, _, _ = run_rounds("mime", {"lr": 0.1, "beta": 0.9}, env, 1)
    from fedbench.algorithms.base import sample_cohort
    from fedbench.seeding import RoundRng

    ids = sample_cohort(env, RoundRng(0, 1))
    x0 = task.init_params(generator(0, 0, "init"))
    _, g = task.loss_grad(x0.expand(ids.numel(), -1), ids)
    torch.testing.assert_close(state.m, 0.1 * g.mean(0), rtol=1e-5, atol=1e-7)


def test_mime_correction_removes_client_drift():
    """Heterogeneous clients, K = 10 exact local steps, β = 0: FedAvg stalls at a biased point;
    with the SVRG correction a stationary point of f is a fixed point of the round."""
    task = make_task(model="logreg", reg="l2", lam=0.1)
    norms = {}
    for name in ("fedavg", "mime"):
        p = {"lr": 0.1, "local_steps": 10} | ({"beta": 0.0} if name == "mime" else {})
        state, _, alg = run_rounds(name, p, make_env(task), 100)
        norms[name] = float(full_grad(task, alg.params(state)).norm())
    assert norms["mime"] < 1e-4
    assert norms["fedavg"] > 100 * norms["mime"]


def test_exact_bits_of_mime_and_mimelite():
    """Up: C(Δ_i) + the dense full-batch gradient; down: x + m (+ c for Mime)."""
    task = make_task(model="logreg", n=6)
    d = task.d
    k = round(0.2 * d)
    topk = 32 * k + min(k * (d - 1).bit_length(), d)
    env = make_env(task, "topk", {"ratio": 0.2}, participation=0.5, batch_size=4)
    for name, down in (("mime", 3 * 32 * d), ("mimelite", 2 * 32 * d)):
        _, logs, _ = run_rounds(name, {"local_steps": 2}, env, 3)
        assert all(log.bits_up.tolist() == [topk + 32 * d] * 3 for log in logs)
        assert all(log.bits_down.tolist() == [down] * 3 for log in logs)
