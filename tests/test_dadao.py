"""DADAO (Nabli & Oyallon, arXiv 2208.00779; constants from the official code): grouped event
play equals one event at a time, Σ Z_i = Σ Z̃_i = 0, spectral constants of the complete graph,
Poisson rates, exact gossip bits and simulated time, convergence."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import full_grad, make_env, make_task, run_rounds

from fedbench.algorithms.dadao import constants, draw_events, play, spectral
from fedbench.seeding import generator
from fedbench.topology import adjacency


def test_complete_graph_constants():
    """K_n: λ₂(L/|E|) = 2/(n − 1) and every edge has resistance ½·|E|·2/n: χ₁ = χ₂ = (n − 1)/2."""
    chi1, chi2 = spectral(adjacency("complete", 8))
    assert chi1 == pytest.approx(3.5) and chi2 == pytest.approx(3.5)
    k = constants(mu=0.1, L=2.0, chi1=chi1, chi2=chi2)
    assert k.rate_mix == pytest.approx(math.sqrt(2) * 3.5)
    assert k.gamma == 1 / 8 and k.nu == 0.05


def test_grouped_play_equals_one_event_at_a_time():
    task = make_task(model="logreg", reg="l2", lam=0.1, n=8)
    env = make_env(task)
    adj = adjacency("ring", 8)
    edges = torch.nonzero(torch.triu(adj))
    k = constants(0.1, float(task.smoothness().L_i.max()), *spectral(adj))
    ev = draw_events(
        8,
        edges,
        torch.ones(8, dtype=torch.float64),
        k.rate_mix,
        0.0,
        6.0,
        torch.Generator().manual_seed(0),
    )
    assert ev.a.numel() > 40
    V0 = torch.randn(8, 6, task.d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = []
    for max_group in (0, 1):
        V, last = V0.clone(), torch.zeros(8, dtype=torch.float64)
        sends = play(env, V, last, ev, k, torch.Generator(), max_group)
        out.append((V, last, sends))
    torch.testing.assert_close(out[0][0], out[1][0], rtol=1e-10, atol=1e-12)
    assert torch.equal(out[0][1], out[1][1]) and torch.equal(out[0][2], out[1][2])


def test_event_counts_follow_the_rates():
    edges = torch.nonzero(torch.triu(adjacency("ring", 10)))
    rates = torch.full((10,), 0.5, dtype=torch.float64)
    ev = draw_events(10, edges, rates, 3.0, 2.0, 400.0, torch.Generator().manual_seed(0))
    grads, gossip = int((ev.b < 0).sum()), int((ev.b >= 0).sum())
    assert abs(grads - 2000) < 5 * math.sqrt(2000) and abs(gossip - 1200) < 5 * math.sqrt(1200)
    assert bool((ev.time[1:] >= ev.time[:-1]).all()) and float(ev.time.min()) > 2.0


def test_invariants_bits_time_and_convergence():
    task = make_task(model="logreg", reg="l2", lam=0.1, n=8)
    x0 = task.init_params(generator(0, 0, "init"))
    params = {"topology": "complete", "round_time": 5.0}
    state, logs, alg = run_rounds("dadao", params, make_env(task), 40)
    torch.testing.assert_close(state.V[:, 4].sum(0), torch.zeros(task.d, dtype=torch.float64))
    torch.testing.assert_close(state.V[:, 5].sum(0), torch.zeros(task.d, dtype=torch.float64))
    for t, log in enumerate(logs, 1):
        assert int(log.bits_up.sum()) == 2 * 32 * task.d * int(log.extra["gossip_events"])
        assert log.sim_time_s == pytest.approx(t * 5.0 * 0.1)  # step_ms = 100 by default
    assert float(full_grad(task, alg.params(state)).norm()) < 0.02 * float(
        full_grad(task, x0).norm()
    )
