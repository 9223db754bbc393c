"""FedDyn, FedSpeed, FedSAM/MoFedSAM, DFedSAM and the gossip topologies: special cases,
invariants, exact bits."""

from __future__ import annotations

import pytest
import torch
from conftest import full_grad, make_env, make_task, run_rounds

from fedbench.seeding import generator
from fedbench.topology import TOPOLOGIES, adjacency, connected, mixing_matrix, torus_shape

DRIFT = {"lr": 0.1, "local_steps": 10}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: intra-op threads only add synchronisation (10× slower on a
    busy 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def client_grad(task, i, w):
    """∇f_i(w) by autograd on client i's own samples (a plain reference, no batching)."""
    d = task.data
    w = w.clone().requires_grad_()
    s, c = int(d.offsets[i]), int(d.counts[i])
    logits = task.model.logits(w.unsqueeze(0), d.x[s : s + c].unsqueeze(0))[0]
    loss = torch.nn.functional.cross_entropy(logits, d.y[s : s + c])
    loss = loss + 0.5 * task.lam * (w * w).sum()
    (g,) = torch.autograd.grad(loss, w)
    return g


def test_dual_methods_reach_the_exact_stationary_point_where_fedavg_drifts():
    """Heterogeneous clients, K = 10 exact local steps, full participation: FedAvg stalls at a
    biased point; FedDyn and FedSpeed (ρ = 0) converge to ∇f = 0."""
    task = make_task(model="logreg", reg="l2", lam=0.1)
    norms = {}
    for name, params in (
        ("fedavg", {}),
        ("feddyn", {"alpha": 0.3}),
        ("fedspeed", {"rho": 0.0, "inv_lambda": 0.3}),
    ):
        state, _, alg = run_rounds(name, {**DRIFT, **params}, make_env(task), 50)
        norms[name] = float(full_grad(task, alg.params(state)).norm())
    assert norms["feddyn"] < 1e-4 and norms["fedspeed"] < 1e-4
    assert norms["fedavg"] > 1e-2


def test_fedspeed_without_perturbation_is_feddyn():
    """ρ = 0 and 1/λ = α: ĝ_i plays ∇_i and ḡ plays h (the official code's server), also with
    partial participation and a compressed uplink; ḡ = mean_i ĝ_i stays exact."""
    task = make_task(model="mlp")
    p = {"lr": 0.1, "local_steps": 3}
    runs = []
    for name, extra in (("feddyn", {"alpha": 0.2}), ("fedspeed", {"rho": 0.0, "inv_lambda": 0.2})):
        env = make_env(task, "topk", {"ratio": 0.3}, participation=0.5, batch_size=4)
        state, _, alg = run_rounds(name, {**p, **extra}, env, 6)
        runs.append((state, alg.params(state)))
    (dyn, x_dyn), (speed, x_speed) = runs
    torch.testing.assert_close(x_speed, x_dyn, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(speed.g_hat, dyn.grad_i, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(speed.g_bar, speed.g_hat.mean(0), rtol=1e-5, atol=1e-7)


def test_feddyn_server_state_is_the_mean_of_the_gradient_memories():
    task = make_task(model="mlp", n=8)
    env = make_env(task, "topk", {"ratio": 0.2}, participation=0.5, batch_size=5)
    state, _, _ = run_rounds("feddyn", {"lr": 0.1, "local_steps": 3}, env, 1)
    assert int((state.grad_i.abs().sum(1) > 0).sum()) == 4  # only the cohort moved
    state, _, _ = run_rounds("feddyn", {"lr": 0.1, "local_steps": 3}, env, 7)
    torch.testing.assert_close(state.h, state.grad_i.mean(0), rtol=1e-5, atol=1e-7)
    assert float(state.h.abs().sum()) > 0


def _same_as_fedavg(name, params):
    task = make_task(model="mlp")
    runs = []
    for alg_name, p in (("fedavg", {}), (name, params)):
        env = make_env(task, "topk", {"ratio": 0.3}, ef=True, participation=0.5, batch_size=4)
        state, logs, alg = run_rounds(alg_name, {"lr": 0.1, "local_steps": 3, **p}, env, 6)
        runs.append((alg.params(state), [log.bits_up.tolist() for log in logs]))
    assert torch.equal(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]


def test_fedspeed_without_perturbation_and_prox_is_fedavg():
    _same_as_fedavg("fedspeed", {"rho": 0.0, "inv_lambda": 0.0})


def test_fedsam_with_rho_zero_is_fedavg():
    _same_as_fedavg("fedsam", {"rho": 0.0})


def test_mofedsam_without_momentum_is_fedsam():
    task = make_task(model="mlp")
    env = make_env(task, participation=0.5, batch_size=4)
    a, _, alg = run_rounds("fedsam", {"rho": 0.2}, env, 5)
    b, _, _ = run_rounds("mofedsam", {"rho": 0.2, "beta": 0.0}, env, 5)
    assert torch.equal(alg.params(a), alg.params(b))
    c, _, _ = run_rounds("mofedsam", {"rho": 0.2, "beta": 0.5}, env, 5)
    assert not torch.equal(alg.params(a), alg.params(c))


def test_sam_step_takes_each_clients_gradient_at_its_own_ascent_point():
    """One round, K = 1, full batches: x₁ = x₀ − η mean_i ∇f_i(x₀ + ρ g_i/‖g_i‖), g_i = ∇f_i(x₀)."""
    task = make_task(model="logreg", reg="l2", lam=0.01)
    lr, rho = 0.5, 0.3
    state, _, alg = run_rounds(
        "fedsam", {"lr": lr, "local_steps": 1, "rho": rho}, make_env(task), 1
    )
    x0 = task.init_params(generator(0, 0, "init"))
    sam = []
    for i in range(task.n):
        g = client_grad(task, i, x0)
        sam.append(client_grad(task, i, x0 + rho * g / g.norm()))
    expected = x0 - lr * torch.stack(sam).mean(0)
    torch.testing.assert_close(alg.params(state), expected, rtol=1e-5, atol=1e-6)
    assert float((expected - (x0 - lr * full_grad(task, x0))).norm()) > 1e-3  # ρ matters


def test_mofedsam_momentum_is_the_last_server_update_per_local_step():
    task = make_task(model="mlp")
    env = make_env(task, participation=0.5, batch_size=4)
    p = {"lr": 0.1, "local_steps": 3, "rho": 0.1, "beta": 0.9}
    s4, _, _ = run_rounds("mofedsam", p, env, 4)
    s5, logs, _ = run_rounds("mofedsam", p, env, 5)
    torch.testing.assert_close(s5.Delta, (s4.x - s5.x) / (3 * 0.1), rtol=1e-4, atol=1e-6)
    assert logs[-1].bits_down.tolist() == [64 * task.d] * 3  # model and momentum


@pytest.mark.parametrize("name", ["feddyn", "fedspeed", "fedsam"])
def test_one_dense_model_each_way(name):
    task = make_task(model="logreg", n=6)
    env = make_env(task, participation=0.5, batch_size=4)
    _, logs, _ = run_rounds(name, {"local_steps": 2}, env, 3)
    assert all(log.bits_up.tolist() == [32 * task.d] * 3 for log in logs)
    assert all(log.bits_down.tolist() == [32 * task.d] * 3 for log in logs)


# -- topologies --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TOPOLOGIES)
@pytest.mark.parametrize("n", [6, 9, 16])
def test_mixing_matrix_is_symmetric_doubly_stochastic_on_the_graph(name, n):
    W, deg = mixing_matrix(name, n, degree=3 if n % 2 == 0 else 4, gen=generator(0, 0, "g"))
    adj = adjacency(name, n, degree=3 if n % 2 == 0 else 4, gen=generator(0, 0, "g"))
    torch.testing.assert_close(W, W.T)
    ones = torch.ones(n)
    torch.testing.assert_close(W.sum(0), ones)
    torch.testing.assert_close(W.sum(1), ones)
    assert bool((W >= 0).all())
    off = ~torch.eye(n, dtype=torch.bool)
    assert torch.equal((W > 0) & off, adj)  # weights exactly on the edges
    assert torch.equal(deg, adj.sum(1)) and connected(adj)


def test_graph_degrees():
    deg = {
        name: mixing_matrix(name, 16, degree=3, gen=generator(0, 0, "g"))[1] for name in TOPOLOGIES
    }
    assert deg["ring"].tolist() == [2] * 16
    assert deg["torus"].tolist() == [4] * 16  # 4 × 4 with wrap-around
    assert deg["exponential"].tolist() == [7] * 16  # ±1, ±2, ±4, 8
    assert deg["random_regular"].tolist() == [3] * 16
    assert deg["complete"].tolist() == [15] * 16
    torch.testing.assert_close(mixing_matrix("complete", 5)[0], torch.full((5, 5), 0.2))


def test_random_regular_is_seeded_and_torus_needs_factors():
    a = adjacency("random_regular", 20, 4, generator(0, 0, "g"))
    assert torch.equal(a, adjacency("random_regular", 20, 4, generator(0, 0, "g")))
    assert not torch.equal(a, adjacency("random_regular", 20, 4, generator(1, 0, "g")))
    assert torus_shape(12) == (3, 4) and torus_shape(49) == (7, 7)
    with pytest.raises(ValueError, match="n = 7 has no such factors"):
        mixing_matrix("torus", 7)
    with pytest.raises(ValueError, match="degree"):
        mixing_matrix("random_regular", 7, degree=3)


# -- DFedSAM -----------------------------------------------------------------------------------


def test_dfedsam_on_the_complete_graph_is_fedsam_with_full_participation():
    task = make_task(model="mlp")
    p = {"lr": 0.1, "local_steps": 3, "rho": 0.2}
    a, _, alg_a = run_rounds("fedsam", p, make_env(task, batch_size=4), 6)
    b, _, alg_b = run_rounds(
        "dfedsam", {**p, "topology": "complete"}, make_env(task, batch_size=4), 6
    )
    torch.testing.assert_close(alg_b.params(b), alg_a.params(a), rtol=1e-6, atol=1e-6)
    assert alg_b.metrics(b, None)["consensus_sq"] < 1e-10


def test_dfedsam_with_rho_zero_is_dfedavg():
    """Reference: each client's K local gradient steps by a plain loop, then X ← W X."""
    task = make_task(model="logreg", reg="l2", lam=0.01)
    lr, K, T = 0.3, 3, 4
    p = {"lr": lr, "local_steps": K, "rho": 0.0, "topology": "ring"}
    state, _, _ = run_rounds("dfedsam", p, make_env(task), T)
    W, _ = mixing_matrix("ring", task.n)
    X = task.init_params(generator(0, 0, "init")).expand(task.n, -1).clone()
    for _ in range(T):
        Z = X.clone()
        for i in range(task.n):
            for _ in range(K):
                Z[i] -= lr * client_grad(task, i, Z[i])
        X = W @ Z
    torch.testing.assert_close(state.x_i, X, rtol=1e-5, atol=1e-6)
    assert consensus(X) > 1e-6  # a ring after 4 rounds has not reached consensus


def consensus(X):
    return float((X - X.mean(0)).square().sum(1).mean())


@pytest.mark.parametrize(
    ("topology", "degree"), [("ring", 2), ("torus", 3), ("exponential", 5), ("complete", 7)]
)
def test_dfedsam_bits_are_one_model_per_neighbour_per_gossip_step(topology, degree):
    """n = 8: torus 2 × 4 (one neighbour across the 2 rows, two along), exponential ±1, ±2, 4."""
    task = make_task(model="logreg", n=8)
    p = {"local_steps": 1, "topology": topology, "gossip_steps": 3}
    _, logs, _ = run_rounds("dfedsam", p, make_env(task, batch_size=4), 2)
    for log in logs:
        assert log.bits_up.tolist() == [32 * task.d * 3 * degree] * 8
        assert log.bits_down.tolist() == [0] * 8 and log.participants == 8


def test_more_gossip_steps_mean_better_consensus():
    task = make_task(model="mlp", n=12)
    gaps = []
    for q in (1, 4):
        p = {"lr": 0.1, "local_steps": 3, "topology": "ring", "gossip_steps": q}
        state, _, alg = run_rounds("dfedsam", p, make_env(task, batch_size=4), 5)
        gaps.append(alg.metrics(state, None)["consensus_sq"])
    assert gaps[0] > 2 * gaps[1] > 0


def test_a_sees_step_correction_gets_each_steps_own_minibatches() -> None:
    """local_sgd's hook with the step (issue 24): ζ of step k is the k-th group of `draws`
    minibatches local_batches drew for the cohort up front, g is taken on its first one, and
    an identity correction leaves the numbers of a plain local_sgd (draws = 1)."""
    from fedbench.algorithms.base import Step, local_batches, local_sgd, sees_step

    task = make_task(model="mlp", n=6, per_client=20)
    env = make_env(task, batch_size=4)
    ids = torch.tensor([0, 2, 3, 5])
    x0 = task.init_params(generator(0, 0, "init"))
    K, draws = 3, 2
    want = local_batches(env, x0, ids, K * draws, generator(1, 1, "b"))  # [m, K·draws, B]
    seen: list[tuple[slice, int, torch.Tensor | None, torch.Tensor]] = []

    @sees_step
    def record(y: torch.Tensor, g: torch.Tensor, rows: slice, step: Step) -> torch.Tensor:
        seen.append((rows, step.k, step.zeta, step.ids))
        _, g0 = task.loss_grad(y, step.ids, step.zeta[:, 0])  # type: ignore[index]
        assert torch.equal(g, g0)
        return g

    local_sgd(env, x0, ids, K, 0.1, generator(1, 1, "b"), record, draws=draws)
    assert sorted(k for _, k, _, _ in seen) == sorted(list(range(K)) * (len(seen) // K))
    for rows, k, zeta, who in seen:
        assert torch.equal(who, ids[rows])
        assert zeta is not None and torch.equal(zeta, want[rows, k * draws : (k + 1) * draws])

    plain = local_sgd(env, x0, ids, K, 0.1, generator(1, 1, "b"))
    same = local_sgd(env, x0, ids, K, 0.1, generator(1, 1, "b"), sees_step(lambda y, g, r, s: g))
    assert torch.equal(plain[0], same[0]) and torch.equal(plain[1], same[1])
