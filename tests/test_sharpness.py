"""FedCM, FedGAMMA, FedSMOO beside FedSAM/FedSpeed: their reductions (α = 1 FedCM is FedAvg,
ρ = 0 FedGAMMA is SCAFFOLD, ρ = 0 FedSMOO is FedDyn), invariants and exact bits."""

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


def env_topk(task, ef=False):
    return make_env(task, "topk", {"ratio": 0.3}, ef=ef, participation=0.5, batch_size=4)


def topk_bits(d, ratio=0.3):
    k = round(ratio * d)
    return 32 * k + min(k * (d - 1).bit_length(), d)


# -- FedCM ---------------------------------------------------------------------------------


def test_fedcm_with_alpha_one_is_fedavg_bit_for_bit():
    task = make_task(model="mlp", n=8, per_client=25)
    p = {"lr": 0.1, "local_steps": 3}
    a, la, alg = run_rounds("fedavg", p, env_topk(task, ef=True), 5)
    b, lb, _ = run_rounds("fedcm", {**p, "alpha": 1.0}, env_topk(task, ef=True), 5)
    assert torch.equal(alg.params(a), alg.params(b))
    for x, y in zip(la, lb, strict=True):
        assert torch.equal(x.bits_up, y.bits_up) and torch.equal(x.bits_down, y.bits_down)


def test_fedcm_is_mofedsam_without_perturbation():
    """MoFedSAM's β is 1 − α and its ρ = 0 SAM step is the plain gradient."""
    task = make_task(model="mlp", n=8, per_client=25)
    p = {"lr": 0.1, "local_steps": 3}
    a, _, alg = run_rounds("fedcm", {**p, "alpha": 0.25}, env_topk(task), 5)
    b, _, _ = run_rounds("mofedsam", {**p, "rho": 0.0, "beta": 0.75}, env_topk(task), 5)
    torch.testing.assert_close(alg.params(a), alg.params(b), rtol=1e-5, atol=1e-6)


def test_fedcm_momentum_is_the_mean_local_direction_and_is_broadcast():
    task = make_task(model="mlp", n=8, per_client=25)
    d, K, lr = task.d, 3, 0.1
    x0 = task.init_params(generator(0, 0, "init"))
    state, logs, alg = run_rounds("fedcm", {"lr": lr, "local_steps": K}, env_topk(task), 1)
    # server SGD with η_g = 1: x¹ − x⁰ = mean C(Δ_i) = −K η_l Δ_1
    torch.testing.assert_close(state.Delta, -(alg.params(state) - x0) / (K * lr))
    assert logs[0].bits_up.tolist() == [topk_bits(d)] * 4
    assert logs[0].bits_down.tolist() == [2 * 32 * d] * 4


# -- FedGAMMA ------------------------------------------------------------------------------


def test_fedgamma_without_perturbation_is_scaffold_bit_for_bit():
    task = make_task(model="mlp", n=8, per_client=25)
    p = {"lr": 0.1, "local_steps": 3}
    a, la, alg = run_rounds("scaffold", p, env_topk(task), 5)
    b, lb, _ = run_rounds("fedgamma", {**p, "rho": 0.0}, env_topk(task), 5)
    assert torch.equal(alg.params(a), alg.params(b))
    assert torch.equal(a.c_i, b.c_i)
    for x, y in zip(la, lb, strict=True):
        assert torch.equal(x.bits_up, y.bits_up) and torch.equal(x.bits_down, y.bits_down)


def test_fedgamma_control_variates_stay_consistent_and_sam_changes_the_path():
    task = make_task(model="mlp", n=8, per_client=25)
    p = {"lr": 0.1, "local_steps": 3}
    state, logs, alg = run_rounds("fedgamma", {**p, "rho": 0.1}, env_topk(task), 6)
    torch.testing.assert_close(state.c, state.c_i.mean(0), rtol=1e-5, atol=1e-6)
    ref, _, _ = run_rounds("scaffold", p, env_topk(task), 6)
    assert not torch.allclose(alg.params(state), alg.params(ref))
    assert logs[-1].bits_up.tolist() == [2 * topk_bits(task.d)] * 4
    assert logs[-1].bits_down.tolist() == [2 * 32 * task.d] * 4


# -- FedSMOO -------------------------------------------------------------------------------


def test_fedsmoo_without_perturbation_is_feddyn():
    """ρ = 0: e = 0, μ_i = s = 0, λ_i plays FedDyn's ∇_i and h its mean (compressed uplink,
    partial participation)."""
    task = make_task(model="mlp", n=8, per_client=25)
    p = {"lr": 0.1, "local_steps": 3, "alpha": 0.2}
    a, _, dyn = run_rounds("feddyn", p, env_topk(task), 6)
    b, _, smoo = run_rounds("fedsmoo", {**p, "rho": 0.0}, env_topk(task), 6)
    torch.testing.assert_close(smoo.params(b), dyn.params(a), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.lam_i, a.grad_i, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.h, b.lam_i.mean(0), rtol=1e-5, atol=1e-7)
    assert float(b.mu_i.abs().sum()) == 0.0 and float(b.s.abs().sum()) == 0.0


def test_fedsmoo_global_perturbation_has_norm_rho_and_bits_are_exact():
    task = make_task(model="mlp", n=8, per_client=25)
    d, rho = task.d, 0.05
    state, logs, alg = run_rounds("fedsmoo", {"lr": 0.1, "rho": rho}, env_topk(task), 4)
    assert abs(float(state.s.norm()) - rho) < 1e-5
    moved = int((state.mu_i.abs().sum(1) > 0).sum())
    assert 4 <= moved <= 8  # only clients that have been in a cohort
    torch.testing.assert_close(state.h, state.lam_i.mean(0), rtol=1e-5, atol=1e-7)
    assert all(log.bits_up.tolist() == [topk_bits(d) + 32 * d] * 4 for log in logs)
    assert all(log.bits_down.tolist() == [2 * 32 * d] * 4 for log in logs)
    ref, _, dyn = run_rounds("feddyn", {"lr": 0.1}, env_topk(task), 4)
    assert not torch.allclose(alg.params(state), dyn.params(ref))


def test_fedsmoo_state_rows_fit_float16():
    task = make_task(model="mlp", n=8, per_client=25)
    env = env_topk(task)._replace(state_dtype=torch.float16)
    x0 = task.init_params(generator(0, 0, "init"))
    state, _, alg = run_rounds("fedsmoo", {"lr": 0.1}, env, 20)
    assert state.lam_i.dtype == state.mu_i.dtype == torch.float16
    assert task.train_loss(alg.params(state)) < 0.8 * task.train_loss(x0)
