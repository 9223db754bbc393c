"""DIFF2 (arXiv 2302.03884): gradient descent without privacy or compression, DP-GD at T = 1
bit for bit (hence at equal ε), the differences clipped to ρ·C."""

from __future__ import annotations

import torch
from conftest import make_env, make_task, run_rounds

from fedbench.privacy import PRIVACY_PARAMS, messages_per_round
from fedbench.privacy.dp import attach

SECTION = {k: p.default for k, p in PRIVACY_PARAMS.items()}


def test_diff2_without_privacy_or_compression_is_gradient_descent():
    task = make_task()
    env = make_env(task)  # identity, full participation, full batches
    s_gd, _, gd = run_rounds("dcgd", {"lr": 0.2}, env, 15)
    s_d2, logs, d2 = run_rounds("diff2", {"lr": 0.2, "restart": 5}, env, 15)
    torch.testing.assert_close(d2.params(s_d2), gd.params(s_gd), atol=1e-5, rtol=1e-5)
    assert all(int(b) == 32 * task.d for log in logs for b in log.bits_up)


def test_diff2_with_one_round_restarts_is_dp_gd_bitwise():
    task = make_task()
    section = {**SECTION, "clip": 0.5, "noise_multiplier": 0.8}
    env = attach(make_env(task, participation=0.5), section)
    s_gd, _, gd = run_rounds("dcgd", {"lr": 0.2}, env, 6)
    s_d2, _, d2 = run_rounds("diff2", {"lr": 0.2, "restart": 1}, env, 6)
    assert torch.equal(d2.params(s_d2), gd.params(s_gd))
    assert messages_per_round("diff2") == messages_per_round("dcgd") == 1  # same ε


def test_differences_are_clipped_to_rho_times_c():
    task = make_task()
    rho, c = 0.01, 1.0
    env = attach(make_env(task), {**SECTION, "clip": c, "noise_multiplier": 0.0})
    from fedbench.algorithms import build_algorithm
    from fedbench.seeding import RoundRng, generator

    alg = build_algorithm("diff2", {"lr": 0.5, "restart": 4, "diff_clip": rho})
    s = alg.init(task.init_params(generator(0, 0, "init")), env, RoundRng(0, 0))
    s, _ = alg.round(s, env, RoundRng(0, 1))  # restart: ‖v‖ ≤ C
    assert float(s.v.norm()) <= c * (1 + 1e-5)
    for t in range(2, 5):  # differences: ‖v^t − v^{t−1}‖ ≤ mean of norms ≤ ρC
        v_old = s.v
        s, _ = alg.round(s, env, RoundRng(0, t))
        step = float((s.v - v_old).norm())
        assert 0 < step <= rho * c * (1 + 1e-4)
