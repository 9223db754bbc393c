"""Local Adam / RMSProp / OASIS (arXiv 2406.00846): identity scaling is FedAvg bit for bit,
the preconditioner rules by hand, OASIS's Hessian-vector product, exact bits."""

from __future__ import annotations

import pytest
import torch
from conftest import make_env, make_task, run_rounds

from fedbench.algorithms.local_adaptive import HVP_DELTA, Scaling, Statistic
from fedbench.seeding import RoundRng, generator


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def per_client_grads(task, w):
    ids = torch.arange(task.n)
    _, g = task.loss_grad(w.expand(task.n, -1), ids)
    return g  # [n, d]


@pytest.mark.parametrize("name", ["local_rmsprop", "local_oasis"])
@pytest.mark.parametrize("precond", ["synced", "local"])
def test_identity_scaling_is_fedavg_bit_for_bit(name, precond):
    """β = 1 freezes D at D⁰ = 1 and e = α = 0 makes D̂ = I: the iterates are FedAvg's exactly
    (compressed uplink with error feedback, partial participation, minibatches); synced
    scaling still pays its statistic up and D down."""
    task = make_task(model="mlp", n=8, per_client=25)
    p = {"lr": 0.1, "local_steps": 3}

    def env():
        return make_env(task, "topk", {"ratio": 0.3}, ef=True, participation=0.5, batch_size=4)

    a, la, alg = run_rounds("fedavg", p, env(), 5)
    b, lb, _ = run_rounds(name, {**p, "beta": 1.0, "eps": 0.0, "precond": precond}, env(), 5)
    assert torch.equal(alg.params(a), alg.params(b))
    extra = 32 * task.d if precond == "synced" else 0
    for x, y in zip(la, lb, strict=True):
        assert torch.equal(y.bits_up, x.bits_up + extra)
        assert torch.equal(y.bits_down, x.bits_down + extra)


def test_scaling_changes_the_trajectory():
    task = make_task(model="mlp", n=8, per_client=25)
    p = {"lr": 0.1, "local_steps": 3}
    a, _, alg = run_rounds("fedavg", p, make_env(task, batch_size=4), 3)
    b, _, _ = run_rounds("local_rmsprop", p, make_env(task, batch_size=4), 3)
    assert not torch.allclose(alg.params(a), alg.params(b))


def test_local_adam_first_step_is_the_sign_step():
    """Local D_i, K = 1, full gradients: (D_1)² = (1−β)g², bias correction 1/(1−β) gives
    D̂ = |g| + e, so y_i = x − γ g_i/(|g_i| + e) and x¹ = mean_i y_i."""
    task = make_task(model="logreg")
    lr, beta, eps = 0.05, 0.9, 1e-8
    x0 = task.init_params(generator(0, 0, "init"))
    g = per_client_grads(task, x0)
    p = {"lr": lr, "local_steps": 1, "beta": beta, "eps": eps, "precond": "local"}
    state, _, alg = run_rounds("local_adam", p, make_env(task), 1)
    expected = (x0 - lr * g / (g.abs() + eps)).mean(0)
    torch.testing.assert_close(alg.params(state), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state.D, (1 - beta) * g * g, rtol=1e-5, atol=1e-9)
    assert state.k.tolist() == [1] * task.n


def test_synced_adam_statistic_is_the_cohort_mean_and_scales_round_two():
    """Synced D: round 1 steps with D̂ = I (no statistic yet); the server then holds
    (D)² = (1−β)·mean_i g_i(x⁰)² (K = 1, full gradients) and round 2 steps with
    D̂ = √(mean_i g_i(x⁰)²) + e, the same for every client."""
    task = make_task(model="logreg")
    lr, beta, eps = 0.05, 0.9, 1e-8
    x0 = task.init_params(generator(0, 0, "init"))
    g0 = per_client_grads(task, x0)
    p = {"lr": lr, "local_steps": 1, "beta": beta, "eps": eps, "precond": "synced"}
    s1, _, alg = run_rounds("local_adam", p, make_env(task), 1)
    x1 = (x0 - lr * g0).mean(0)
    torch.testing.assert_close(alg.params(s1), x1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s1.D, (1 - beta) * (g0 * g0).mean(0), rtol=1e-5, atol=1e-9)
    s2, _, _ = run_rounds("local_adam", p, make_env(task), 2)
    g1 = per_client_grads(task, x1)
    x2 = (x1 - lr * g1 / ((g0 * g0).mean(0).sqrt() + eps)).mean(0)
    torch.testing.assert_close(alg.params(s2), x2, rtol=1e-4, atol=1e-5)


def test_local_preconditioners_move_only_for_the_cohort_and_fit_float16():
    task = make_task(model="mlp", n=8, per_client=25)
    env = make_env(task, participation=0.5, batch_size=4)._replace(state_dtype=torch.float16)
    state, _, alg = run_rounds("local_rmsprop", {"lr": 0.05, "precond": "local"}, env, 1)
    assert state.D.dtype == torch.float16
    moved = (state.D != 1).any(1)
    assert int(moved.sum()) == 4 and state.k[moved].tolist() == [5] * 4
    assert state.k[~moved].tolist() == [0] * 4
    x0 = task.init_params(generator(0, 0, "init"))
    state, _, alg = run_rounds("local_rmsprop", {"lr": 0.05, "precond": "local"}, env, 20)
    assert task.train_loss(alg.params(state)) < 0.8 * task.train_loss(x0)


def test_oasis_statistic_is_the_hutchinson_product_with_the_hessian():
    """z⊙(∇²f_J(y) z) by central differences equals the autograd Hessian-vector product
    (logistic regression + ℓ2, full local data)."""
    task = make_task(model="logreg", lam=0.1)
    env = make_env(task)
    ids = torch.arange(task.n)
    stat = Statistic(Scaling("oasis", 0.9, 1e-5), env, ids, RoundRng(0, 1))
    z = stat.draw(0)[0].float()  # [n, d]
    y = task.init_params(generator(0, 0, "init")).expand(task.n, -1).clone()
    H = stat(y, torch.zeros_like(y), slice(0, task.n))
    d = task.data
    for i in range(task.n):
        s, c = int(d.offsets[i]), int(d.counts[i])

        def f(w, s=s, c=c):
            logits = task.model.logits(w.unsqueeze(0), d.x[s : s + c].unsqueeze(0))[0]
            ce = torch.nn.functional.cross_entropy(logits, d.y[s : s + c])
            return ce + 0.5 * task.lam * (w * w).sum()

        _, hz = torch.autograd.functional.hvp(f, y[i], z[i])
        torch.testing.assert_close(H[i], z[i] * hz, rtol=1e-2, atol=50 * HVP_DELTA**2)
    assert set(z.unique().tolist()) == {-1.0, 1.0}


def test_oasis_preconditioner_clips_at_alpha():
    """D̂ = max(α, |D|): a huge α makes every local step γ g/α."""
    task = make_task(model="logreg")
    x0 = task.init_params(generator(0, 0, "init"))
    g = per_client_grads(task, x0)
    p = {"lr": 0.5, "local_steps": 1, "eps": 100.0, "precond": "local"}
    state, _, alg = run_rounds("local_oasis", p, make_env(task), 1)
    torch.testing.assert_close(alg.params(state), (x0 - 0.5 * g / 100.0).mean(0))


@pytest.mark.parametrize("precond", ["synced", "local"])
def test_oasis_does_not_depend_on_the_client_block_size(monkeypatch, precond):
    """z and J are drawn per step for the whole cohort: one client per block (a tiny cache
    budget) gives the same model as one block for all."""
    task = make_task(model="mlp", n=8, per_client=25)
    p = {"lr": 0.1, "local_steps": 3, "precond": precond}
    a, _, alg = run_rounds("local_oasis", p, make_env(task, participation=0.5, batch_size=4), 3)
    monkeypatch.setenv("FEDBENCH_CACHE_MB", "1e-9")
    assert task.block_size(4) == 1
    b, _, _ = run_rounds("local_oasis", p, make_env(task, participation=0.5, batch_size=4), 3)
    torch.testing.assert_close(alg.params(a), alg.params(b), rtol=1e-6, atol=1e-7)
