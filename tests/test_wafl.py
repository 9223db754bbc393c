"""WAFL: local SGD on the Wasserstein-robust surrogate (inputs moved by gradient ascent)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_env, make_task, run_rounds

from fedbench import grid
from fedbench.algorithms.wafl import input_grad, worst_case
from fedbench.seeding import generator


def test_no_ascent_is_fedavg():
    task = make_task(model="mlp", n=6, per_client=20)
    kw = {"up": "topk", "up_params": {"ratio": 0.3}, "participation": 0.5, "batch_size": 5}
    a, la, alg = run_rounds("fedavg", {"lr": 0.1, "local_steps": 3}, make_env(task, **kw), 5)
    b, lb, walg = run_rounds(
        "wafl", {"lr": 0.1, "local_steps": 3, "adv_lr": 0.0}, make_env(task, **kw), 5
    )
    torch.testing.assert_close(walg.params(b), alg.params(a), rtol=1e-6, atol=1e-7)
    assert all(torch.equal(x.bits_up, y.bits_up) for x, y in zip(la, lb, strict=True))


def test_ascent_step_is_the_per_sample_input_gradient_and_raises_the_surrogate():
    task = make_task(model="mlp", n=3, per_client=10)
    model = task.model
    gen = torch.Generator().manual_seed(1)
    w = torch.stack([task.init_params(generator(s, 0, "init")) for s in range(3)])  # [3, d]
    idx = task.batch_indices(torch.arange(3), 1, 4, gen)[:, 0]
    x, y = task.data.x[idx], task.data.y[idx]  # [3, 4, f], [3, 4]
    g = input_grad(model, w, x, y)
    for i in range(3):  # one client and one sample at a time, plain autograd
        for j in range(4):
            xi = x[i, j].clone().requires_grad_()
            z = model.logits(w[i : i + 1], xi.view(1, 1, -1))[0, 0]
            (gi,) = torch.autograd.grad(torch.nn.functional.cross_entropy(z, y[i, j]), xi)
            torch.testing.assert_close(g[i, j], gi, rtol=1e-5, atol=1e-7)
    one = worst_case(model, w, x, y, alpha=0.5, gamma=0.05, T=1)  # ζ = x + α ∇ℓ at ζ = x
    torch.testing.assert_close(one, x + 0.5 * g)

    def surrogate(z, gamma):
        per = model.sample_loss(model.logits(w, z).flatten(0, 1), y.flatten())
        return float(per.sum() - 0.5 * gamma * ((z - x) ** 2).sum())

    moved = {}
    for gamma in (0.05, 1.0, 10.0):
        zeta = worst_case(model, w, x, y, alpha=0.05, gamma=gamma, T=10)
        assert surrogate(zeta, gamma) > surrogate(x, gamma)
        moved[gamma] = float((zeta - x).norm())
    assert moved[0.05] > moved[1.0] > moved[10.0] > 0  # a larger transport cost moves less


def test_wafl_learns_and_sends_fedavg_bits():
    task = make_task(model="mlp", n=6, per_client=20)
    x0 = task.init_params(generator(0, 0, "init"))
    env = make_env(task, participation=0.5, batch_size=5)
    # α = 0.1: the default α = 10 (the code's MNIST setting) moves these 5-feature inputs so far
    # that the clean loss falls slowly (0.86× in 20 rounds)
    state, logs, alg = run_rounds("wafl", {"lr": 0.1, "local_steps": 5, "adv_lr": 0.1}, env, 20)
    assert task.train_loss(alg.params(state)) < 0.8 * task.train_loss(x0)
    assert all(torch.equal(lg.bits_up, torch.full((3,), 32 * task.d)) for lg in logs)
    assert all(torch.equal(lg.bits_down, torch.full((3,), 32 * task.d)) for lg in logs)


def test_grid_refuses_wafl_on_token_sequences(tmp_path: Path):
    p = tmp_path / "g.toml"
    p.write_text(
        '[task]\ndataset = "grammar_text"\nmodel = "transformer"\n[algorithm]\nname = "wafl"\n'
    )
    with pytest.raises(grid.GridError, match="perturbs continuous inputs; dataset grammar_text"):
        grid.load(p)
