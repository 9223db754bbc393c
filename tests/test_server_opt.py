"""FedAdagrad and FedYogi (Reddi et al., ICLR 2021, Algorithm 2) against hand-computed steps,
and their selection through `server_opt` for every method with the server parameters."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_env, make_task, run_rounds

from fedbench import grid
from fedbench.algorithms import ALGORITHMS
from fedbench.seeding import generator
from fedbench.server_opt import SERVER_PARAMS, adagrad, adam, yogi

X = torch.tensor([1.0, -2.0, 0.5])
G1 = torch.tensor([0.5, 0.25, -1.0])  # pseudo-gradient of round 1
G2 = torch.tensor([0.01, 0.25, 2.0])  # round 2
TAU = 1e-3


def test_fedadagrad_two_steps_by_hand():
    opt = adagrad(0.1, 0.9, TAU)
    s0 = opt.init(X)
    assert torch.equal(s0.v, torch.full((3,), TAU * TAU))  # v₋₁ = τ²
    x1, s1 = opt.update(X, G1, s0)
    x2, s2 = opt.update(x1, G2, s1)
    m1, v1 = 0.1 * G1, TAU**2 + G1**2
    m2, v2 = 0.9 * m1 + 0.1 * G2, v1 + G2**2
    torch.testing.assert_close(x1, X - 0.1 * m1 / (v1.sqrt() + TAU))
    torch.testing.assert_close(x2, x1 - 0.1 * m2 / (v2.sqrt() + TAU))
    torch.testing.assert_close(s2.v, v2)


def test_fedyogi_two_steps_by_hand():
    """v ← v − (1−β₂)g² sign(v − g²): grows like Adam's while g² > v, shrinks when g² < v."""
    opt = yogi(0.1, 0.9, 0.99, TAU)
    x1, s1 = opt.update(X, G1, opt.init(X))
    x2, s2 = opt.update(x1, G2, s1)
    v1 = TAU**2 + 0.01 * G1**2  # g² > τ² everywhere: sign = −1
    v2 = v1 - 0.01 * G2**2 * torch.tensor([1.0, -1.0, -1.0])  # 0.01² < v1[0], 0.25² > v1[1], ...
    m1 = 0.1 * G1
    m2 = 0.9 * m1 + 0.1 * G2
    torch.testing.assert_close(x1, X - 0.1 * m1 / (v1.sqrt() + TAU))
    torch.testing.assert_close(s2.v, v2)
    torch.testing.assert_close(x2, x1 - 0.1 * m2 / (v2.sqrt() + TAU))
    assert float(s2.v[0]) < float(s1.v[0])  # the shrinking branch was exercised


def test_yogi_and_adagrad_are_choices_for_every_server_method():
    servers = [a for a in ALGORITHMS if "server_opt" in ALGORITHMS[a].params]
    assert {"fedavg", "scaffold", "scallion", "scafcom", "delta_sgd", "fedavg_rp"} <= set(servers)
    for name in servers:
        assert {"adagrad", "yogi"} <= set(ALGORITHMS[name].params["server_opt"].choices)
    assert SERVER_PARAMS["server_opt"].default == "sgd"
    text = '[algorithm]\nname = "fedavg"\nserver_opt = "{}"\n[task]\ndataset = "digits"\n'
    g = grid.parse(text.format("yogi"), Path("g.toml"))
    assert g.jobs[0].config["algorithm"]["server_opt"] == "yogi"
    with pytest.raises(grid.GridError):
        grid.parse(text.format("lamb"), Path("g.toml"))


@pytest.mark.parametrize("name", ["adagrad", "yogi"])
def test_server_optimizer_runs_inside_fedavg(name):
    task = make_task(model="mlp", n=8, per_client=25)
    env = make_env(task, participation=0.5, batch_size=8)
    p = {"lr": 0.1, "local_steps": 5, "server_opt": name, "server_lr": 0.03}
    state, _, alg = run_rounds("fedavg", p, env, 30)
    plain, _, _ = run_rounds("fedavg", {**p, "server_opt": "adam"}, env, 30)
    x0 = task.init_params(generator(0, 0, "init"))
    assert task.train_loss(alg.params(state)) < 0.8 * task.train_loss(x0)
    assert not torch.equal(alg.params(state), alg.params(plain))


@pytest.mark.parametrize("name", ["adam", "adagrad", "yogi"])
def test_first_server_step_is_the_papers(name):
    """Reddi et al. 2021, Algorithm 2, from m₋₁ = 0 and v₋₁ = τ² for all three: m₀ = (1−β₁)Δ,
    v₀ = τ² + Δ² (Adagrad), β₂τ² + (1−β₂)Δ² (Adam), τ² − (1−β₂)Δ² sign(τ² − Δ²) (Yogi);
    x₁ = x₀ − η m₀ / (√v₀ + τ) with Δ = −g (our g is minus the average update)."""
    lr, b1, b2 = 0.1, 0.9, 0.99
    opt = {
        "adam": adam(lr, b1, b2, TAU),
        "adagrad": adagrad(lr, b1, TAU),
        "yogi": yogi(lr, b1, b2, TAU),
    }[name]
    s0 = opt.init(X)
    assert torch.equal(s0.m, torch.zeros(3)) and torch.equal(s0.v, torch.full((3,), TAU**2))
    x1, s1 = opt.update(X, G1, s0)
    delta = -G1
    v0 = {
        "adam": b2 * TAU**2 + (1 - b2) * delta**2,
        "adagrad": TAU**2 + delta**2,
        "yogi": TAU**2 - (1 - b2) * delta**2 * torch.sign(TAU**2 - delta**2),
    }[name]
    m0 = (1 - b1) * delta
    torch.testing.assert_close(s1.v, v0)
    torch.testing.assert_close(x1, X + lr * m0 / (v0.sqrt() + TAU))


def test_fedadam_jobs_get_new_keys_other_server_optimizers_keep_theirs():
    """FedAdam's v₋₁ changed from 0 to τ²: its runs must not be reused, so its key changes;
    every other server optimizer (and plain fedavg) keeps the key it had."""
    text = '[algorithm]\nname = "fedavg"\nserver_opt = "{}"\n[task]\ndataset = "digits"\n'
    for name in ("sgd", "momentum", "adagrad", "yogi", "adam"):
        job = grid.parse(text.format(name), Path("g.toml")).jobs[0]
        old = dict(SERVER_PARAMS["server_opt"].__dict__, changed=())
        with pytest.MonkeyPatch.context() as mp:  # the schema before the fix
            from fedbench.params import Param

            for reg in (ALGORITHMS["fedavg"].params,):
                mp.setitem(reg, "server_opt", Param(**old))
            before = grid.job_key(job.config, job.seed)
        assert (before != job.key) == (name == "adam"), name
