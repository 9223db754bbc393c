"""Every algorithm: its special case, its invariant, exact bits, determinism, and progress."""

from __future__ import annotations

import pytest
import torch
from conftest import full_grad, make_env, make_task, run_rounds

from fedbench.algorithms import ALGORITHMS
from fedbench.compressors import COMPRESSORS, compressor_kind
from fedbench.runner import rounds_mode
from fedbench.seeding import generator
from fedbench.server_opt import adam, momentum, sgd


def gd(task, lr, rounds, seed=0):
    x = task.init_params(generator(seed, 0, "init"))
    for _ in range(rounds):
        x = x - lr * full_grad(task, x)
    return x


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("fedavg", {"lr": 0.5, "local_steps": 1}),
        (
            "fedprox",
            {"lr": 0.5, "local_steps": 1, "mu": 0.3},
        ),  # anchor = start: prox term is 0 at K=1
        ("scaffold", {"lr": 0.5, "local_steps": 1}),
        ("ef21", {"lr": 0.5}),
    ],
)
def test_special_case_is_gradient_descent(name, params):
    """K = 1, full participation, full local gradients, identity compression: GD on f = mean f_i."""
    task = make_task(model="mlp")
    env = make_env(task, batch_size="full")
    state, _, alg = run_rounds(name, params, env, rounds=8)
    torch.testing.assert_close(alg.params(state), gd(task, 0.5, 8), rtol=1e-4, atol=1e-5)


def test_fedprox_with_mu_zero_is_fedavg_exactly():
    task = make_task(model="mlp")
    env = make_env(task, "topk", {"ratio": 0.3}, ef=True, participation=0.5, batch_size=4)
    a, _, alg = run_rounds("fedavg", {"lr": 0.1, "local_steps": 3}, env, 6)
    env = make_env(task, "topk", {"ratio": 0.3}, ef=True, participation=0.5, batch_size=4)
    b, _, _ = run_rounds("fedprox", {"lr": 0.1, "local_steps": 3, "mu": 0.0}, env, 6)
    assert torch.equal(alg.params(a), alg.params(b))


def test_fedprox_proximal_term_shrinks_the_local_update():
    task = make_task(model="logreg")
    moves = []
    for mu in (0.0, 1.0, 10.0):
        env = make_env(task, batch_size="full")
        x0 = task.init_params(generator(0, 0, "init"))
        state, _, alg = run_rounds("fedprox", {"lr": 0.05, "local_steps": 10, "mu": mu}, env, 1)
        moves.append(float((alg.params(state) - x0).norm()))
    assert moves[0] > moves[1] > moves[2] > 0


def test_scaffold_removes_client_drift_where_fedavg_stalls():
    """Heterogeneous clients, K = 10 exact local steps: FedAvg's fixed point is not a stationary
    point of f; SCAFFOLD's is."""
    task = make_task(model="logreg", reg="l2", lam=0.1)
    norms = {}
    for name in ("fedavg", "scaffold"):
        env = make_env(task, batch_size="full")
        state, _, alg = run_rounds(name, {"lr": 0.1, "local_steps": 10}, env, 150)
        norms[name] = float(full_grad(task, alg.params(state)).norm())
    assert norms["scaffold"] < 1e-3
    assert norms["fedavg"] > 20 * norms["scaffold"]


def test_scaffold_server_control_variate_is_the_mean_of_the_clients():
    task = make_task(model="mlp")
    env = make_env(task, "topk", {"ratio": 0.2}, participation=0.5, batch_size=5)
    state, _, _ = run_rounds("scaffold", {"lr": 0.1, "local_steps": 3}, env, 7)
    torch.testing.assert_close(state.c, state.c_i.mean(0), rtol=1e-5, atol=1e-6)
    assert float(state.c.abs().sum()) > 0


def test_ef21_estimator_is_the_mean_of_the_clients_and_converges():
    task = make_task(model="logreg", reg="nonconvex", lam=0.1)
    env = make_env(task, "topk", {"ratio": 0.2}, batch_size="full")
    x0 = task.init_params(generator(0, 0, "init"))
    state, _, alg = run_rounds("ef21", {"lr": 0.5}, env, 200)
    torch.testing.assert_close(state.g, state.g_i.mean(0), rtol=1e-4, atol=1e-6)
    assert float(full_grad(task, alg.params(state)).norm()) < 0.05 * float(
        full_grad(task, x0).norm()
    )


def test_bits_are_exact_for_each_message():
    task = make_task(model="logreg", n=6)
    d, T = task.d, 5
    k = round(0.2 * d)
    topk_bits = 32 * k + min(k * (d - 1).bit_length(), d)
    env = make_env(task, "topk", {"ratio": 0.2}, participation=0.5, batch_size=4)
    _, logs, _ = run_rounds("fedavg", {"local_steps": 2}, env, T)
    assert [log.bits_up.tolist() for log in logs] == [[topk_bits] * 3] * T
    assert [log.bits_down.tolist() for log in logs] == [[32 * d] * 3] * T
    _, logs, _ = run_rounds("scaffold", {"local_steps": 2}, env, T)
    assert all(log.bits_up.tolist() == [2 * topk_bits] * 3 for log in logs)  # Δy and Δc
    assert all(log.bits_down.tolist() == [64 * d] * 3 for log in logs)  # x and c
    _, logs, _ = run_rounds("ef21", {}, env, T)
    assert int(logs[0].bits_up.sum()) == 6 * 32 * d + 3 * topk_bits  # dense g_i⁰ of all 6 clients
    assert all(log.bits_up.tolist() == [topk_bits] * 3 for log in logs[1:])


def test_compressed_downlink_tracks_the_server_model():
    task = make_task(model="logreg")
    env = make_env(task, down="topk", down_params={"ratio": 0.25}, batch_size="full")
    state, logs, _alg = run_rounds("fedavg", {"lr": 0.1, "local_steps": 2}, env, 30)
    k = round(0.25 * task.d)
    assert logs[0].bits_down.tolist() == [32 * k + min(k * (task.d - 1).bit_length(), task.d)] * 6
    gap = float((state.down.x_hat - state.x).norm() / state.x.norm())
    assert 0 < gap < 0.2  # x̂ lags x but follows it


def test_error_feedback_with_full_topk_is_no_compression():
    task = make_task(model="mlp")
    a, _, alg = run_rounds("fedavg", {"local_steps": 2}, make_env(task, batch_size=4), 4)
    b, _, _ = run_rounds(
        "fedavg",
        {"local_steps": 2},
        make_env(task, "topk", {"ratio": 1.0}, ef=True, batch_size=4),
        4,
    )
    assert torch.equal(alg.params(a), alg.params(b))


def test_server_optimizers():
    x, g = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 0.25])
    plain = sgd(0.1)
    heavy = momentum(0.1, 0.0)
    assert torch.equal(plain.update(x, g, None)[0], heavy.update(x, g, heavy.init(x))[0])
    fedadam = adam(0.1, 0.9, 0.99, 1e-3)
    x1, _s = fedadam.update(x, g, fedadam.init(x))
    # no bias correction, v₋₁ = τ² (Reddi et al. 2021, Algorithm 2)
    m, v = 0.1 * g, 0.99 * 1e-3**2 + 0.01 * g * g
    torch.testing.assert_close(x1, x - 0.1 * m / (v.sqrt() + 1e-3))
    fedavgm = momentum(1.0, 0.9)
    x1, v1 = fedavgm.update(x, g, fedavgm.init(x))
    x2, _ = fedavgm.update(x1, g, v1)
    torch.testing.assert_close(x2, x - g - (0.9 * g + g))


def compatible(alg_name):
    need = ALGORITHMS[alg_name].requires
    for c in COMPRESSORS:
        kind = compressor_kind(c, {})
        if need == "any" or kind in ("exact", need):
            yield c


SWEEP = [(a, c) for a in ALGORITHMS for c in compatible(a)]

# hyperparameters under which each method makes progress on the sweep's small task (every
# algorithm not listed runs with lr = 0.1); one line per algorithm, in registry order
SWEEP_PARAMS: dict[str, dict[str, object]] = {
    "ef21": {"lr": 0.5},
    "onebit_adam": {"lr": 0.01, "freeze_step": 10},  # Adam-sized steps; reach the 1-bit stage
    "zo_spsa": {"lr": 0.1, "eps": 1e-2, "samples": 4},
    "l2gd": {"lr": 2.0},  # local steps take η/(n(1−p)) = 2/(8·0.8)
    **{  # inner AdamW: Adam-sized steps, no warm-up in 30 rounds
        a: {"lr": 0.01, "local_steps": 5, "warmup_steps": 0}
        for a in ("diloco", "streaming_diloco", "async_local_sgd", "noloco")
    },
    "dasha": {"lr": 0.1, "b": 0.1},  # minibatches: DASHA-MVR (plain DASHA accumulates noise)
    "single_merge": {"lr": 0.1, "late": 1.0},  # gossip every round (rounds without send 0 bits)
    "dadao": {"L": 5.0, "round_time": 4.0},  # the MLP has no known L; 4 gradients per node a round
    "local_adam": {"lr": 0.02},  # sign-like first steps: Adam-sized lr
    "entropy_sgd": {"lr": 1.0, "local_steps": 2, "langevin_steps": 3},  # L gradients a step
    "diff2": {"lr": 0.3, "restart": 2},  # compressed differences add up between restarts
    "masha1": {"lr": 0.3},  # extragradient: two operator calls per step, 30 rounds
    "masha2": {"lr": 0.3},
    # inner AdamW as diloco; μ = 0.5: each module averages half the cohort (unbiased compressors)
    "dipaco": {"lr": 0.01, "local_steps": 5, "warmup_steps": 0, "outer_momentum": 0.5},
    "wafl": {"lr": 0.1, "adv_lr": 0.1, "adv_steps": 2},  # α sized to the 5-feature sweep task
    "fedbr": {"lr": 0.1, "local_steps": 2, "pseudo": 8},  # fewer steps, smaller pool: faster
}
# methods whose progress 30 minibatch rounds on the sweep's MLP cannot show (determinism and
# bits are still checked here); each reason names the test of its loss decrease
SWEEP_NO_PROGRESS = {
    "cbo": "gradient-free swarm on a 100+-parameter MLP: test_zeroth_order.py (logreg, 60 rounds)",
}


# The default run sweeps a subset of the compressors with the methods that accept any
# compressor (requires = "any"); the rest of the pairs run under `make test-all`. Such a
# method hands its update to update_compressor(env).compress and reads nothing of the
# compressor's kind, so the pairs left out exercise no path of the method that the kept ones
# do not: kept are one compressor of each kind (identity exact, randk unbiased, topk
# contractive, fedzip biased) and the two with state across rounds (powersgd per client,
# lgreco global). Every compressor left out here is still swept, in the default run, with
# each method that requires its kind (unbiased: natural, natural_dithering, permk, qsgd,
# sketch, terngrad; contractive: onebit, sign).
ANY_COMPRESSOR_SUBSET = ("identity", "randk", "topk", "fedzip", "powersgd", "lgreco")
# Methods whose cases cost over a second each keep two (FZooS ~5 s: a float64 Cholesky of
# its 256-feature surrogate per local step; FedBR ~1.5 s; WAFL ~1 s): randk (stochastic: the
# uplink generator in the determinism check) and sign (biased; FZooS's loss decrease has the
# least margin with it: 0.775 of the start against 0.8).
SWEEP_DEFAULT_RUN = {
    **{a: ANY_COMPRESSOR_SUBSET for a in ALGORITHMS if ALGORITHMS[a].requires == "any"},
    **{a: ("randk", "sign") for a in ("fzoos", "fedbr", "wafl")},
}


def sweep_cases():
    for a, c in SWEEP:
        if c in SWEEP_DEFAULT_RUN.get(a, (c,)):
            yield a, c
        else:
            yield pytest.param(a, c, marks=pytest.mark.slow)


@pytest.mark.parametrize(("alg_name", "comp"), list(sweep_cases()))
def test_registry_sweep_reduces_loss_and_is_deterministic(alg_name, comp):
    """Every algorithm with every compressor it accepts (`make test-all`; the default run:
    SWEEP_DEFAULT_RUN), partial participation, minibatches."""
    task = make_task(model="mlp", n=8, per_client=25)
    params = SWEEP_PARAMS.get(alg_name, {"lr": 0.1})
    x0 = task.init_params(generator(0, 0, "init"))

    def final(seed):
        env = make_env(task, comp, {"ratio": 0.25}, participation=0.5, batch_size=8)
        with rounds_mode(task.model, alg_name):  # as `fedbench run` runs them
            state, logs, alg = run_rounds(alg_name, params, env, 30, seed=seed)
        assert all(int(log.bits_up.min()) > 0 for log in logs)
        return alg.params(state)

    a, b, c = final(0), final(0), final(1)
    assert torch.equal(a, b), "same seed must give the same model"
    assert not torch.equal(a, c), "another seed must give another trajectory"
    if alg_name not in SWEEP_NO_PROGRESS:
        assert task.train_loss(a) < 0.8 * task.train_loss(x0)


def test_sweep_covers_every_registered_algorithm_and_compressor():
    assert {a for a, _ in SWEEP} == set(ALGORITHMS)
    assert {c for _, c in SWEEP} == set(COMPRESSORS)


def test_scaffold_with_error_feedback_topk_stays_stable():
    """EF applies to Δy only: on Δc (a tracked difference) it would count the unsent part twice
    and the control variates blow up."""
    task = make_task(model="mlp", n=8, per_client=25)
    x0 = task.init_params(generator(0, 0, "init"))
    env = make_env(task, "topk", {"ratio": 0.05}, ef=True, participation=0.5, batch_size=8)
    state, _, alg = run_rounds("scaffold", {"lr": 0.1, "local_steps": 5}, env, 60)
    assert state.up_c is None and state.up_y.e.shape == (8, task.d)
    assert task.train_loss(alg.params(state)) < 0.8 * task.train_loss(x0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_client_state_halves_memory_and_tracks_float32(dtype):
    """SCAFFOLD's c_i stored in 16 bits: half the bytes, the same trajectory up to rounding."""
    task = make_task(model="mlp", n=8, per_client=25)

    def run(state_dtype):
        env = make_env(task, participation=0.5, batch_size=8)._replace(state_dtype=state_dtype)
        state, _, alg = run_rounds("scaffold", {"lr": 0.1, "local_steps": 3}, env, 15)
        return state, alg.params(state)

    (s32, x32), (s16, x16) = run(torch.float32), run(dtype)
    assert s16.c_i.dtype == dtype and s16.c_i.nbytes * 2 == s32.c_i.nbytes
    assert float((x16 - x32).norm() / x32.norm()) < 2e-2
    torch.testing.assert_close(s16.c_i.float(), s32.c_i, atol=0.05, rtol=0.05)
