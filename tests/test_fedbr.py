"""FedBR: pseudo-data classifier balancing and min-max feature contrast (arXiv 2205.13462)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import make_env, make_task, run_rounds

from fedbench import grid
from fedbench.algorithms.fedbr import (
    classify,
    features,
    log_p,
    proj_dim,
    proj_init,
    project,
    pseudo_batch,
    split_model,
)
from fedbench.seeding import generator


def test_without_the_extra_terms_the_model_follows_fedavg():
    """μ = λ = 0: the model's gradient is the cross-entropy's alone (the projection head still
    trains, unused): FedAvg's trajectory, to float rounding (fedbench's MLP has a hand-written
    backward, FedBR goes through torch.func)."""
    task = make_task(model="mlp", n=6, per_client=20)
    kw = {"participation": 0.5, "batch_size": 5}
    a, _, alg = run_rounds("fedavg", {"lr": 0.1, "local_steps": 3}, make_env(task, **kw), 5)
    p = {"lr": 0.1, "local_steps": 3, "mu": 0.0, "lam": 0.0}
    b, _, balg = run_rounds("fedbr", p, make_env(task, **kw), 5)
    torch.testing.assert_close(balg.params(b), alg.params(a), rtol=1e-5, atol=1e-6)
    c, _, _ = run_rounds("fedbr", {**p, "mu": 0.5}, make_env(task, **kw), 5)
    assert not torch.allclose(balg.params(c), alg.params(a), rtol=1e-3, atol=1e-4)
    d, _, _ = run_rounds("fedbr", {**p, "lam": 1.0}, make_env(task, **kw), 5)
    assert not torch.allclose(balg.params(d), alg.params(a), rtol=1e-3, atol=1e-4)


def test_split_features_and_head_give_the_model_logits():
    task = make_task(model="mlp", n=3, per_client=10)
    model, sp = task.model, split_model(task.model)
    assert sp.f == 8  # conftest's hidden = [8]
    w = task.init_params(generator(0, 0, "init"))
    x = task.data.x[:7]
    z = features(model, sp, w, x)
    assert z.shape == (7, 8) and bool((z >= 0).all())  # after the ReLU
    torch.testing.assert_close(classify(model, sp, w, z), model.logits(w[None], x[None])[0])
    logreg = make_task(model="logreg")
    with pytest.raises(ValueError, match="no feature layer before a linear classifier"):
        split_model(logreg.model)


def test_pseudo_data_mix_a_pool_sample_with_a_local_sample_and_half_uniform_labels():
    U = torch.randn(4, 3)
    x, y = torch.randn(2, 5, 3), torch.tensor([[0, 1, 2, 0, 1], [2, 2, 1, 0, 0]])
    r = torch.tensor([[0, 4, 2, 2], [1, 3, 0, 4]])
    xp, q = pseudo_batch(U, x, y, r, 3)
    for i in range(2):
        for j in range(4):
            torch.testing.assert_close(xp[i, j], (U[j] + x[i, r[i, j]]) / 2)
            want = torch.full((3,), 1 / 6)
            want[y[i, r[i, j]]] += 0.5
            torch.testing.assert_close(q[i, j], want)


def test_contrast_is_the_two_way_softmax_of_scaled_cosines_through_the_projection():
    f = 4
    theta = proj_init(f, torch.Generator().manual_seed(0))
    assert theta.numel() == proj_dim(f) == (4 * 8 + 8) + (8 * 8 + 8) + (8 * 4 + 4)
    zp, zg, zx = torch.randn(6, f), torch.randn(6, f), torch.randn(6, f)
    net = torch.nn.Sequential(
        torch.nn.Linear(f, 2 * f), torch.nn.ReLU(), torch.nn.Linear(2 * f, 2 * f),
        torch.nn.ReLU(), torch.nn.Linear(2 * f, f),
    )  # fmt: skip
    torch.nn.utils.vector_to_parameters(theta, net.parameters())
    e1, e2, e3 = net(zp), net(zg), net(zx)
    torch.testing.assert_close(project(theta, zp), e1)
    s12, s13 = F.cosine_similarity(e1, e2), F.cosine_similarity(e1, e3)
    want = torch.log(torch.exp(2 * s12) / (torch.exp(2 * s12) + torch.exp(3 * s13)))
    torch.testing.assert_close(log_p(theta, zp, zg, zx, 2.0, 3.0), want)


def test_fedbr_learns_sends_model_and_projection_and_the_pool_once():
    task = make_task(model="mlp", n=6, per_client=20)
    x0 = task.init_params(generator(0, 0, "init"))
    env = make_env(task, participation=0.5, batch_size=5)
    state, logs, alg = run_rounds("fedbr", {"lr": 0.1, "local_steps": 5, "pseudo": 8}, env, 20)
    assert task.train_loss(alg.params(state)) < 0.7 * task.train_loss(x0)
    dt = proj_dim(8)
    assert state.theta.shape == (dt,)
    pool = 8 * 5 * 32  # P pseudo-samples of 5 features
    for lg in logs:
        assert torch.equal(lg.bits_up, torch.full((3,), 32 * (task.d + dt)))
        assert set(lg.bits_down.tolist()) <= {32 * (task.d + dt), 32 * (task.d + dt) + pool}
    first = sum(int((lg.bits_down > 32 * (task.d + dt)).sum()) for lg in logs)
    assert first == int(state.has_pool.sum()) == 6  # each client got the pool exactly once
    again, _, _ = run_rounds("fedbr", {"lr": 0.1, "local_steps": 5, "pseudo": 8}, env, 20)
    assert torch.equal(again.x, state.x) and torch.equal(again.theta, state.theta)


def test_topk_uplink_compresses_the_model_update_and_sends_the_projection_dense():
    task = make_task(model="mlp", n=6, per_client=20)
    env = make_env(task, "topk", {"ratio": 0.2}, participation=0.5, batch_size=5)
    fenv = make_env(task, "topk", {"ratio": 0.2}, participation=0.5, batch_size=5)
    _, logs, _ = run_rounds("fedbr", {"lr": 0.1, "local_steps": 2, "pseudo": 4}, env, 2)
    _, flogs, _ = run_rounds("fedavg", {"lr": 0.1, "local_steps": 2}, fenv, 2)
    for lg, fl in zip(logs, flogs, strict=True):
        assert torch.equal(lg.bits_up, fl.bits_up + 32 * proj_dim(8))


@pytest.mark.parametrize(
    ("dataset", "model", "match"),
    [
        ("digits", "logreg", "needs a feature layer before a linear classifier; model logreg"),
        ("grammar_text", "transformer", "perturbs continuous inputs; dataset grammar_text"),
    ],
)
def test_grid_refuses_models_without_features_and_token_sequences(
    tmp_path: Path, dataset, model, match
):
    p = tmp_path / "g.toml"
    p.write_text(f'[task]\ndataset = "{dataset}"\nmodel = "{model}"\n[algorithm]\nname = "fedbr"\n')
    with pytest.raises(grid.GridError, match=match):
        grid.load(p)
    p.write_text('[task]\ndataset = "digits"\nmodel = "mlp"\n[algorithm]\nname = "fedbr"\n')
    assert grid.load(p).jobs[0].config["algorithm"]["name"] == "fedbr"
