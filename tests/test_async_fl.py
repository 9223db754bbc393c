"""Issue 13: asynchronous and system-heterogeneous FL (fedbuff, fedasync, fedfix, fednova,
mifa), availability and deadlines in the [network] model, and client sampling strategies."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_env, make_task, run_rounds

from fedbench import grid
from fedbench.algorithms import build_algorithm
from fedbench.algorithms._hetero import local_sgd_tau, staleness_weight
from fedbench.algorithms.base import local_sgd, sample_cohort
from fedbench.cohort import (
    available,
    highest_losses,
    importance_select,
    ocs_probabilities,
    present,
)
from fedbench.network import build_network, charged_seconds, deadline_steps, phase_seconds
from fedbench.seeding import RoundRng, generator

G = Path("g.toml")
LOCAL = {"lr": 0.1, "local_steps": 3}


def env_with(task, network=None, **kw):
    env = make_env(task, batch_size=kw.pop("batch_size", 4), **kw)
    if network is not None:
        env = env._replace(network=build_network(network, task.n, seed=0))
    return env


def final(name, params, env, rounds=5, seed=0):
    state, logs, alg = run_rounds(name, params, env, rounds, seed=seed)
    return alg.params(state), logs, state


# -- special cases --------------------------------------------------------------------------


@pytest.mark.parametrize("participation", [0.5, 1.0])
def test_fedbuff_with_buffer_concurrency_cohort_and_equal_speeds_is_fedavg(participation):
    task = make_task(model="mlp", n=8, per_client=20)
    env = env_with(task, {"speed_spread": 1.0}, participation=participation)
    a, _, _ = final("fedavg", LOCAL, env)
    b, logs, _ = final("fedbuff", {**LOCAL, "staleness": "polynomial"}, env)
    torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
    m = round(8 * participation)
    phase = float(phase_seconds(env.network, torch.tensor([3]), torch.ones(1), 32.0 * task.d,
                                32.0 * task.d)[0])  # fmt: skip
    for t, log in enumerate(logs, 1):  # exact bits and simulated time
        assert log.bits_up.tolist() == [32 * task.d] * m and log.participants == m
        assert int(log.bits_down.sum()) == 32 * task.d * m
        assert log.sim_time_s == pytest.approx(t * phase, rel=1e-12)


def test_fednova_with_equal_local_steps_is_fedavg_and_normalises_unequal_ones():
    task = make_task(model="mlp", n=8, per_client=20)
    env = env_with(task, participation=0.5)
    a, _, _ = final("fedavg", LOCAL, env)
    b, _, _ = final("fednova", LOCAL, env)
    torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
    _c, logs, _ = final("fednova", {**LOCAL, "local_steps": 6, "tau_min": 1}, env)
    assert all(1.0 <= log.extra["tau_eff"] <= 6.0 for log in logs)
    taus = torch.stack([log.steps for log in logs])
    assert taus.max() <= 6 and len(set(taus[taus > 0].tolist())) > 1  # unequal τ_i drawn
    assert all(log.bits_up.tolist() == [32 * task.d] * 4 for log in logs)


def test_fednova_step_is_tau_eff_times_the_mean_normalised_update():
    """One round by hand: clients with τ_i ∈ {1, 4}; the server moves τ_eff·mean(Δ_i/τ_i)."""
    task = make_task(model="logreg", n=4, per_client=10)
    env = env_with(task, batch_size="full")
    x0 = task.init_params(generator(0, 0, "init"))
    alg = build_algorithm("fednova", {"lr": 0.1, "local_steps": 4, "tau_min": 1})
    s = alg.init(x0, env, RoundRng(0, 0))
    s, log = alg.round(s, env, RoundRng(0, 1))
    ids = torch.arange(4)
    tau = log.steps[ids]
    y, _ = local_sgd_tau(env, x0, ids, tau, 0.1, RoundRng(0, 1)("batches"))
    want = x0 + tau.double().mean().float() * ((y - x0) / tau.unsqueeze(1)).mean(0)
    torch.testing.assert_close(alg.params(s), want, rtol=1e-6, atol=1e-7)


def test_fednova_and_fedfix_data_weights_follow_the_papers_p_i():
    """weights = "data": FedNova's p_i = n_i/Σ_S n_j (τ_eff = Σ p_i τ_i) by hand for one round;
    FedFix's p_i = (n_i/N)(n/C). Equal client sizes: the same as uniform weights."""
    sizes = [4, 8, 12, 16]
    task = make_task(model="logreg", n=4, per_client=sizes)
    env = env_with(task, batch_size="full")
    x0 = task.init_params(generator(0, 0, "init"))
    alg = build_algorithm("fednova", {"lr": 0.1, "local_steps": 4, "tau_min": 1,
                                      "weights": "data"})  # fmt: skip
    s, log = alg.round(alg.init(x0, env, RoundRng(0, 0)), env, RoundRng(0, 1))
    ids, tau = torch.arange(4), log.steps[:4]
    y, _ = local_sgd_tau(env, x0, ids, tau, 0.1, RoundRng(0, 1)("batches"))
    p = torch.tensor(sizes, dtype=torch.float64) / sum(sizes)
    tau_eff = float((p * tau.double()).sum())
    want = x0 + tau_eff * (p.float().unsqueeze(1) * (y - x0) / tau.unsqueeze(1)).sum(0)
    torch.testing.assert_close(alg.params(s), want, rtol=1e-6, atol=1e-7)
    assert log.extra["tau_eff"] == pytest.approx(tau_eff)
    net = {"speed_spread": 1.0}
    fix = build_algorithm("fedfix", {**LOCAL, "weights": "data"})
    envf = env_with(task, net, batch_size="full")
    f, _ = fix.round(fix.init(x0, envf, RoundRng(0, 0)), envf, RoundRng(0, 1))
    y, _ = local_sgd(envf, x0, ids, 3, 0.1, RoundRng(0, 1)("batches"))
    torch.testing.assert_close(fix.params(f), x0 + (p.float().unsqueeze(1) * (y - x0)).sum(0),
                               rtol=1e-6, atol=1e-7)  # fmt: skip
    equal = env_with(make_task(model="logreg", n=4, per_client=10), net, batch_size="full")
    for name in ("fednova", "fedfix"):
        a, _, _ = final(name, LOCAL, equal, rounds=3)
        b, _, _ = final(name, {**LOCAL, "weights": "data"}, equal, rounds=3)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    keys = [grid.parse(f'[algorithm]\nname = "fednova"\n{w}', G).jobs[0].key
            for w in ("", 'weights = "uniform"\n', 'weights = "data"\n')]  # fmt: skip
    assert keys[0] == keys[1] != keys[2]


def test_masked_local_steps_equal_separate_runs_per_client():
    task = make_task(model="logreg", n=4, per_client=10)
    env = env_with(task, batch_size="full")
    x0 = task.init_params(generator(0, 0, "init"))
    ids, tau = torch.arange(4), torch.tensor([1, 3, 2, 3])
    y, _ = local_sgd_tau(env, x0, ids, tau, 0.2, generator(0, 1, "b"))
    for i in range(4):  # a loop over clients, in the test only
        yi, _ = local_sgd(env, x0, ids[i : i + 1], int(tau[i]), 0.2, generator(0, 1, "b"))
        torch.testing.assert_close(y[i], yi[0], rtol=1e-6, atol=1e-7)


def test_fedasync_with_one_client_at_a_time_and_equal_speeds_is_sequential_mixing():
    task = make_task(model="mlp", n=6, per_client=20)
    env = env_with(task, {"speed_spread": 1.0}, batch_size="full")
    params = {**LOCAL, "concurrency": 1, "alpha": 0.6, "staleness": "hinge"}
    got, logs, _ = final("fedasync", params, env, rounds=6)
    x = task.init_params(generator(0, 0, "init"))
    for t in range(1, 7):  # which client: the clock's documented draw (uniform, round t)
        i = torch.randperm(6, generator=generator(0, t, "cohort"))[:1]
        y, _ = local_sgd(env, x, i, 3, 0.1, RoundRng(0, t)("batches"))
        x = 0.4 * x + 0.6 * y[0]  # staleness 0: α_t = α
    torch.testing.assert_close(got, x, rtol=1e-5, atol=1e-6)
    assert all(log.extra["staleness"] == 0.0 and log.participants == 1 for log in logs)
    bits = 32 * task.d  # one model up (identity) and one down (the replacement) per round
    assert all(log.bits_up.tolist() == [bits] == log.bits_down.tolist() for log in logs)
    one = torch.ones(1)
    phase = float(phase_seconds(env.network, one * 3, one, float(bits), float(bits))[0])
    assert [log.sim_time_s for log in logs] == pytest.approx([t * phase for t in range(1, 7)])


def test_fedasync_staleness_lowers_the_mixing_weight():
    task = make_task(model="mlp", n=8, per_client=20)
    env = env_with(task, {"speed_spread": 10.0}, participation=0.5)
    _, logs, _ = final("fedasync", {**LOCAL, "alpha": 0.9}, env, rounds=20)
    stale = [log for log in logs if log.extra["staleness"] > 0]
    assert stale and all(log.extra["alpha"] < 0.9 for log in stale)
    times = [log.sim_time_s for log in logs]
    assert times == sorted(times) and times[0] > 0


def test_staleness_functions_match_the_paper_forms():
    s = torch.tensor([0, 1, 3, 4, 6])
    torch.testing.assert_close(staleness_weight("constant", 0.5, 4, s), torch.ones(5).double())
    torch.testing.assert_close(
        staleness_weight("polynomial", 0.5, 4, s), (s.double() + 1.0) ** -0.5
    )
    h = staleness_weight("hinge", 10.0, 4, s)
    assert h[:4].tolist() == [1.0] * 4 and h[4].item() == pytest.approx(1 / (10 * 2 + 1))


def test_fedfix_with_equal_speeds_and_the_one_phase_slot_is_fedavg():
    task = make_task(model="mlp", n=8, per_client=20)
    env = env_with(task, {"speed_spread": 1.0, "latency_ms": 5.0}, participation=0.5)
    a, _, _ = final("fedavg", LOCAL, env)
    b, logs, _ = final("fedfix", LOCAL, env)
    torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
    assert all(log.participants == 4 for log in logs)
    assert all(log.bits_up.tolist() == [32 * task.d] * 4 for log in logs)
    assert all(int(log.bits_down.sum()) == 4 * 32 * task.d for log in logs)


def test_fedfix_slow_clients_arrive_at_later_slots_with_staleness():
    task = make_task(model="mlp", n=8, per_client=20)
    env = env_with(task, {"speed_spread": 6.0}, participation=1.0)
    _, logs, _ = final("fedfix", LOCAL, env, rounds=12)
    arrivals = [log.participants for log in logs]
    assert min(arrivals) < 8 and sum(arrivals) > 8
    assert any(log.extra.get("staleness", 0) > 0 for log in logs)
    step = logs[0].sim_time_s
    assert [log.sim_time_s for log in logs] == pytest.approx([step * t for t in range(1, 13)])


def test_mifa_with_full_availability_is_fedavg_exactly():
    task = make_task(model="mlp", n=6, per_client=20)
    env = env_with(task)
    a, _, _ = final("fedavg", LOCAL, env)
    b, _, _ = final("mifa", LOCAL, env)
    assert torch.equal(a, b)


def test_mifa_keeps_absent_clients_last_updates():
    task = make_task(model="mlp", n=8, per_client=20)
    env = env_with(task, {"dropout_prob": 0.5})
    alg = build_algorithm("mifa", LOCAL)
    s = alg.init(task.init_params(generator(0, 0, "init")), env, RoundRng(0, 0))
    for t in range(1, 6):
        before = s.G.clone()
        s, log = alg.round(s, env, RoundRng(0, t))
        here = sample_cohort(env, RoundRng(0, t))
        absent = torch.ones(8, dtype=torch.bool)
        absent[here] = False
        assert torch.equal(s.G[absent], before[absent]) and log.participants == here.numel()
        assert not torch.equal(s.G[here], before[here])
        assert log.bits_up.tolist() == [32 * task.d] * here.numel()


def test_mifa_waits_until_every_client_has_reported_once():
    """start = "wait" (the paper): no server step until all n clients are in the table; from
    then on the average over all n. start = "zero" steps in round 1 with G_i = 0 for the rest."""
    task = make_task(model="mlp", n=8, per_client=20)
    env = env_with(task, {"dropout_prob": 0.5}, participation=0.5)
    x0 = task.init_params(generator(0, 0, "init"))
    alg = build_algorithm("mifa", LOCAL)
    s, seen, t = alg.init(x0, env, RoundRng(0, 0)), torch.zeros(8, dtype=torch.bool), 0
    while not bool(seen.all()):
        t += 1
        seen[sample_cohort(env, RoundRng(0, t)).cpu()] = True
        s, log = alg.round(s, env, RoundRng(0, t))
        assert log.extra["reported"] == float(seen.sum())
        if not bool(seen.all()):
            assert torch.equal(alg.params(s), x0), t  # still waiting
    assert t > 1 and not torch.equal(alg.params(s), x0)  # the first step: mean of all G_i
    torch.testing.assert_close(alg.params(s), x0 + s.G.mean(0), rtol=0, atol=0)
    zero = build_algorithm("mifa", {**LOCAL, "start": "zero"})
    z, _ = zero.round(zero.init(x0, env, RoundRng(0, 0)), env, RoundRng(0, 1))
    torch.testing.assert_close(zero.params(z), x0 + z.G.mean(0), rtol=0, atol=0)
    assert not torch.equal(zero.params(z), x0)


@pytest.mark.parametrize("name", ["fedbuff", "fedasync", "fedfix"])
def test_async_methods_start_only_available_clients(name):
    """Availability windows (each client online half of a 2-round period): every client an
    asynchronous server starts in round t is idle and present in round t."""
    task = make_task(model="mlp", n=8, per_client=20)
    net = {"speed_spread": 4.0, "window_period": 2, "window_on": 0.5}
    env = env_with(task, net, participation=0.5)
    alg = build_algorithm(name, LOCAL)
    x0 = task.init_params(generator(0, 0, "init"))
    s = alg.init(x0, env, RoundRng(0, 0))
    started = 0
    for t in range(1, 16):
        before = s.clock
        s, _ = alg.round(s, env, RoundRng(0, t))
        new = s.clock.busy & (~before.busy | (s.clock.finish != before.finish))  # [n]
        if name == "fedbuff":  # several groups per round: check against the round's mask
            new = new & ~before.busy
        here = available(env.network, 0, t)
        assert bool(here[new].all()), (t, new, here)
        assert int(s.clock.busy.sum()) <= 4
        started += int(new.sum())
    assert started > 0 and task.train_loss(alg.params(s)) < task.train_loss(x0)


def test_fedprox_takes_the_sampling_strategies_of_fedavg():
    """FedProx with μ = 0 is FedAvg bit for bit under importance and power-of-choice sampling;
    the grid accepts both strategies (and a deadline) for fedprox."""
    task = make_task(model="mlp", n=8, per_client=20)
    for how in ("importance", "power_of_choice", "curriculum"):
        env = env_with(task, participation=0.25)._replace(sampling=how, rounds=3)
        a, la, _ = final("fedavg", LOCAL, env, rounds=3)
        b, lb, _ = final("fedprox", {**LOCAL, "mu": 0.0}, env, rounds=3)
        assert torch.equal(a, b), how
        assert [x.bits_up.tolist() for x in la] == [x.bits_up.tolist() for x in lb]
        grid.parse(f'[algorithm]\nname = "fedprox"\nsampling = "{how}"\n', G)
    grid.parse('[algorithm]\nname = "fedprox"\n[network]\ndeadline_s = 2\n', G)


def test_methods_reduce_the_loss_under_heterogeneity():
    task = make_task(model="mlp", n=8, per_client=25)
    x0 = task.init_params(generator(0, 0, "init"))
    net = {"speed_spread": 5.0, "dropout_prob": 0.3, "deadline_s": 1.5,
           "deadline_mode": "partial"}  # fmt: skip
    for name in ("fedbuff", "fedasync", "fedfix", "fednova", "mifa"):
        cfg = dict(net) if name in ("fednova", "mifa") else {"speed_spread": 5.0,
                                                             "dropout_prob": 0.3}  # fmt: skip
        env = env_with(task, cfg, participation=0.5)
        x, _, _ = final(name, {"lr": 0.1, "local_steps": 5}, env, rounds=30)
        assert task.train_loss(x) < 0.8 * task.train_loss(x0), name


# -- availability and deadline --------------------------------------------------------------


def test_uniform_sampling_without_availability_is_unchanged():
    task = make_task(n=10)
    env = env_with(task, {"speed_spread": 3.0}, participation=0.3)
    for t in range(1, 5):
        want = torch.randperm(10, generator=generator(0, t, "cohort"))[:3].sort().values
        assert torch.equal(sample_cohort(env, RoundRng(0, t)), want)


def test_dropout_and_windows_follow_their_model():
    net = build_network({"dropout_prob": 0.6, "dropout_spread": 1.0}, 2000, seed=1)
    assert float(net.dropout.mean()) == pytest.approx(0.6, abs=0.02)  # q_i = 0.8 u_i
    assert float(net.dropout.min()) < 0.21 and float(net.dropout.max()) > 0.99
    away = torch.stack([~available(net, 1, t) for t in range(50)]).double().mean(0)  # [n]
    assert float((away - net.dropout).abs().mean()) < 0.06
    win = build_network({"window_period": 4, "window_on": 0.5}, 100, seed=1)
    on = torch.stack([available(win, 1, t) for t in range(8)])  # [8, n]
    assert torch.equal(on.sum(0), torch.full((100,), 4))  # on half of every period
    assert torch.equal(on[:4], on[4:])  # periodic
    assert 0 < int(on[0].sum()) < 100  # offsets differ


def test_present_waits_for_someone_and_keeps_order():
    net = build_network({"dropout_prob": 0.9}, 5, seed=0)
    for t in range(20):
        got = present(net, torch.tensor([0, 2, 4]), 0, t)
        assert got.numel() >= 1 and set(got.tolist()) <= {0, 2, 4}
        assert got.tolist() == sorted(got.tolist())


def test_deadline_drops_or_cuts_late_clients_on_hand_values():
    base = {"uplink_mbps": 10.0, "downlink_mbps": 10.0, "step_ms": 100.0, "deadline_s": 1.0}
    net = build_network(base, 3, seed=0)._replace(
        slowdown=torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    )
    ids = torch.arange(3)
    # dense 32·d = 32e4 bits each way: 0.032 s + 0.032 s; 5 steps take 0.5, 1.0, 2.0 s
    assert deadline_steps(net, ids, 5, 10_000, 0, 1).tolist() == [5, 0, 0]
    part = net._replace(deadline_mode="partial")
    # (1 − 0.064)/0.1 = 9.36 → 5; /0.2 = 4.68 → 4; /0.4 = 2.34 → 2
    assert deadline_steps(part, ids, 5, 10_000, 0, 1).tolist() == [5, 4, 2]


def test_fedavg_with_a_deadline_charges_the_deadline_and_drops_the_late():
    task = make_task(model="mlp", n=8, per_client=20)
    net = {"speed_spread": 8.0, "step_ms": 100.0, "deadline_s": 0.9}
    env = env_with(task, net)
    x0 = task.init_params(generator(0, 0, "init"))
    alg = build_algorithm("fedavg", LOCAL)
    s = alg.init(x0, env, RoundRng(0, 0))
    s, log = alg.round(s, env, RoundRng(0, 1))
    late = int(log.extra["deadline_cut"])
    assert 0 < late < 8 and log.participants == 8 - late
    assert log.bits_up.tolist() == [32 * task.d] * (8 - late)
    assert charged_seconds(env.network, log, env, RoundRng(0, 1), 3) == 0.9
    fast = env_with(task, {**net, "deadline_s": 100.0})
    s2, log2 = alg.round(alg.init(x0, fast, RoundRng(0, 0)), fast, RoundRng(0, 1))
    assert log2.extra["deadline_cut"] == 0 and log2.participants == 8
    assert charged_seconds(fast.network, log2, fast, RoundRng(0, 1), 3) < 100.0
    plain, _, _ = final("fedavg", LOCAL, env_with(task), rounds=1)
    assert torch.equal(alg.params(s2), plain)  # a deadline nobody misses changes nothing


# -- client sampling ------------------------------------------------------------------------


def test_ocs_probabilities_are_the_capped_proportional_optimum():
    u = torch.tensor([10.0, 1.0, 2.0, 3.0, 0.0, 4.0])
    p = ocs_probabilities(u, 3)
    assert float(p.sum()) == pytest.approx(3.0) and float(p.max()) <= 1.0
    assert p[0] == 1.0 and p[4] == 0.0  # the largest capped; zero never sent
    r = p[1:4] / u[1:4].double()
    torch.testing.assert_close(r, torch.full((3,), float(r[0]), dtype=torch.float64))
    assert float(p[5]) == pytest.approx(1.0) or float(p[5] / 4.0) == pytest.approx(float(r[0]))
    assert torch.equal(ocs_probabilities(u, 6), (u > 0).double())


def test_importance_sampling_estimate_is_unbiased():
    U = torch.randn(6, 3) * torch.tensor([5.0, 1, 1, 0.5, 2, 0.1]).unsqueeze(1)
    gen, total = generator(0, 0, "t"), torch.zeros(3, dtype=torch.float64)
    draws = 20000
    for _ in range(draws):
        sent, p = importance_select(U.norm(dim=1), 2, gen)
        total += (U[sent].double() / p[sent].unsqueeze(1)).sum(0) / 6
    torch.testing.assert_close(total / draws, U.double().mean(0), rtol=0, atol=0.03)


def test_fedavg_importance_and_power_of_choice_count_their_extra_bits():
    task = make_task(model="mlp", n=8, per_client=20)
    d = task.d
    env = env_with(task, participation=0.25)._replace(sampling="importance")
    _, logs, _ = final("fedavg", LOCAL, env, rounds=4)
    for log in logs:
        k = int(log.extra["sent"])
        assert sorted(log.bits_up.tolist()) == sorted([32] * 8 + [32 * d] * k)
    env = env_with(task, participation=0.25)._replace(sampling="power_of_choice")
    x, logs, _ = final("fedavg", LOCAL, env, rounds=4)
    for log in logs:  # 2 chosen of d = 4 candidates: 4 loss reports, 4 models down
        assert sorted(log.bits_up.tolist()) == [32] * 4 + [32 * d] * 2
        assert int(log.bits_down.sum()) == 4 * 32 * d and int((log.steps > 0).sum()) == 2
    assert torch.equal(x, final("fedavg", LOCAL, env, rounds=4)[0])  # deterministic


def test_clock_charges_power_of_choice_queries_and_waiting_for_presence():
    """Power-of-choice: the round = the candidates' query phase (model down, one step of local
    evaluation at s_i, a 32-bit loss up; the slowest candidate) + the chosen ones' training
    phase with their own messages only. Availability: every round the server waited for
    someone present costs one nominal round (1× worker, dense messages)."""
    from fedbench.cohort import draw_cohort, present_after
    from fedbench.network import nominal_round, round_seconds

    task = make_task(model="mlp", n=8, per_client=20)
    net = {"speed_spread": 3.0, "uplink_mbps": 0.01, "downlink_mbps": 0.01}
    env = env_with(task, net, participation=0.25)._replace(sampling="power_of_choice")
    d, bits = task.d, 32 * task.d
    alg = build_algorithm("fedavg", LOCAL)
    s = alg.init(task.init_params(generator(0, 0, "init")), env, RoundRng(0, 0))
    _, log = alg.round(s, env, RoundRng(0, 1))
    chosen = torch.nonzero(log.steps).flatten()  # the m = 2 chosen of 4 candidates
    q = log.extra["query_s"]
    assert log.extra["candidates"] == 4 and log.extra["query_bits_up"] == 4 * 32
    assert log.extra["query_bits_down"] == 4 * bits
    n = env.network
    slowest = float(n.slowdown.max())  # an upper bound on the slowest candidate
    assert bits / (0.01e6) < q <= bits / (0.01e6) + 32 / 0.01e6 + n.step_ms * slowest / 1e3
    train = float(phase_seconds(n, torch.full((2,), 3), n.slowdown[chosen],
                                32.0 * d, 0.0).max())  # fmt: skip
    got = charged_seconds(n, log, env, RoundRng(0, 1), 3)
    assert got == pytest.approx(q + train, rel=1e-9)
    # waiting: a 90% dropout makes some rounds wait; each wait costs one nominal round
    env = env_with(task, {"dropout_prob": 0.9}, participation=0.25)
    uni = build_algorithm("fedavg", LOCAL)
    s = uni.init(task.init_params(generator(0, 0, "init")), env, RoundRng(0, 0))
    unit, waited = nominal_round(env.network, 3, d), 0
    for t in range(1, 30):
        s, log = uni.round(s, env, RoundRng(0, t))
        ids = sample_cohort(env, RoundRng(0, t)).cpu()  # who trained (after waiting)
        _, w = present_after(env.network, draw_cohort(env, RoundRng(0, t)).cpu(), 0, t)
        steps = torch.full((ids.numel(),), 3)
        up, down = float(log.bits_up.sum()), float(log.bits_down.sum())
        train = round_seconds(env.network, up, down, steps, env.network.slowdown[ids])
        got = charged_seconds(env.network, log, env, RoundRng(0, t), 3)
        assert got == pytest.approx(train + w * unit, rel=1e-12)
        waited += w
    assert waited > 0


def test_power_of_choice_picks_the_largest_losses():
    ids = torch.tensor([1, 4, 6, 7])
    got = highest_losses(ids, torch.tensor([0.5, 2.0, 0.1, 1.0]), 2)
    assert got.tolist() == [4, 7]


def test_poisson_sampling_draws_each_client_with_probability_q():
    task = make_task(n=40)
    env = env_with(task, participation=0.25)._replace(sampling="poisson")
    sizes = [sample_cohort(env, RoundRng(0, t)).numel() for t in range(1, 400)]
    assert sum(sizes) / len(sizes) == pytest.approx(10.0, rel=0.05)
    assert len(set(sizes)) > 3


# -- grid -----------------------------------------------------------------------------------


def test_new_fields_at_their_defaults_keep_job_keys():
    plain = grid.parse('[algorithm]\nname = "fedavg"\n[network]\nspeed_spread = 2\n', G)
    explicit = grid.parse(
        '[algorithm]\nname = "fedavg"\nsampling = "uniform"\n[network]\nspeed_spread = 2\n'
        'dropout_prob = 0.0\ndeadline_s = 0.0\nwindow_period = 0\ndeadline_mode = "drop"\n',
        G,
    )
    assert plain.jobs[0].key == explicit.jobs[0].key
    other = grid.parse('[algorithm]\nname = "fedavg"\nsampling = "poisson"\n', G)
    assert other.jobs[0].key != grid.parse('[algorithm]\nname = "fedavg"\n', G).jobs[0].key


@pytest.mark.parametrize(
    "name",
    ["async_local_sgd", "cofig", "dfedsam", "fedavg_rp", "l2gd", "noloco", "streaming_diloco",
     "d_sgd", "single_merge", "dasha", "dadao"],
)  # fmt: skip
def test_methods_drawing_their_own_clients_refuse_availability(name):
    """They declare extra["availability"] = False: a grid with dropouts names them."""
    with pytest.raises(grid.GridError) as e:
        grid.parse(f'[algorithm]\nname = "{name}"\n[network]\ndropout_prob = 0.5\n', G)
    assert any("ignores availability" in p and name in p for p in e.value.problems)


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ('[algorithm]\nname = "scaffold"\nsampling = "importance"\n', "implemented by fedavg"),
        ('[algorithm]\nname = "scaffold"\n[network]\ndeadline_s = 2\n', "allowed with: fedavg"),
        ('[algorithm]\nname = "dfedsam"\n[network]\ndropout_prob = 0.5\n', "ignores availability"),
        ('[algorithm]\nsampling = "random"\n', "algorithm.sampling"),
        ('[algorithm]\nname = "fedbuff"\nsampling = "poisson"\n', "fedbuff allows uniform;"),
        ('[network]\ndeadline_mode = "late"\n', "network.deadline_mode"),
    ],
)
def test_bad_system_settings_get_one_line_errors(toml, needle):
    with pytest.raises(grid.GridError) as e:
        grid.parse(toml, G)
    assert needle in str(e.value) and "Traceback" not in str(e.value)


def test_co2_without_overlap_is_diloco_with_inner_sgd_and_heavy_ball():
    task = make_task(model="mlp", n=8, per_client=20)
    env = env_with(task, participation=0.5)
    a, _, _ = final("co2", {**LOCAL, "overlap": False, "outer_lr": 0.7, "outer_momentum": 0.5},
                    env)  # fmt: skip
    inner = {"inner_opt": "sgd", "weight_decay": 0.0, "warmup_steps": 0, "nesterov": False}
    b, _, _ = final("diloco", {**LOCAL, **inner, "outer_lr": 0.7, "outer_momentum": 0.5}, env)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_co2_overlap_applies_the_previous_rounds_update_and_saves_time():
    task = make_task(model="mlp", n=6, per_client=20)
    net = {"step_ms": 10.0, "uplink_mbps": 0.5, "downlink_mbps": 0.5}
    env = env_with(task, net, batch_size="full")
    p = {**LOCAL, "outer_momentum": 0.0}
    x0 = task.init_params(generator(0, 0, "init"))
    s1, logs1, alg = run_rounds("co2", p, env, 1)
    assert torch.equal(alg.params(s1), x0)  # nothing has arrived after one round
    s2, _logs2, _ = run_rounds("co2", p, env, 2)
    off, logs_off, _ = run_rounds("co2", {**p, "overlap": False}, env, 1)
    torch.testing.assert_close(alg.params(s2), alg.params(off))  # round 1's Δ, applied late
    comm = 2 * 32 * task.d / 0.5e6
    assert logs_off[0].sim_time_s == pytest.approx(3 * 0.01 + comm)
    assert logs1[0].sim_time_s == pytest.approx(max(3 * 0.01, comm))
    clipped, _, _ = final("co2", {**p, "clip": True, "clip_threshold": 1e-3, "overlap": False},
                          env, rounds=1)  # fmt: skip
    assert float((clipped - x0).abs().max()) <= 1e-3 + 1e-7  # η = 1
