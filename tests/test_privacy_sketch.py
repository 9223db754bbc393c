"""Count sketch (arXiv 2210.08371): unbiased de-sketching with ω = (d−1)/(r·w), linearity
across the clients of a round, exact bits; its DP variant under [privacy]."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_env, make_task, run_rounds

from fedbench.compressors import build_compressor
from fedbench.privacy import PRIVACY_PARAMS
from fedbench.privacy.dp import attach
from fedbench.seeding import generator

ZERO = torch.zeros(1, dtype=torch.int64)


def draws(comp, x, n):
    return torch.stack(
        [
            comp.compress(x, ZERO, None, torch.Generator().manual_seed(i))[0].value[0]
            for i in range(n)
        ]
    )


def test_sketch_is_unbiased_with_the_stated_variance():
    d, rows, width, n = 120, 2, 15, 6000
    comp = build_compressor("sketch", {"rows": rows, "width": width}, d)
    omega = (d - 1) / (rows * width)
    assert comp.kind == "unbiased" and comp.param == pytest.approx(omega)
    x = torch.randn(1, d, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    v = draws(comp, x, n).double()
    err = ((v - x.double()) ** 2).sum(1)  # [n]
    ratio = float(err.mean() / (x.double() ** 2).sum())
    assert ratio == pytest.approx(omega, rel=0.05)
    # unbiased: each coordinate's mean within 5 standard errors of x
    se = v.std(0) / math.sqrt(n)
    assert bool(((v.mean(0) - x.double()[0]).abs() <= 5 * se + 1e-9).all())


def test_sketches_of_a_round_add_up():
    d, m = 300, 7
    comp = build_compressor("sketch", {"rows": 3, "ratio": 0.1, "shared": True}, d)
    x = torch.randn(m, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ids = torch.arange(m)
    rows, _ = comp.compress(x, ids, None, torch.Generator().manual_seed(5))
    total, _ = comp.compress(x.sum(0, keepdim=True), ZERO, None, torch.Generator().manual_seed(5))
    torch.testing.assert_close(rows.value.sum(0), total.value[0])


@pytest.mark.parametrize("convention", ["full", "values"])
def test_sketch_bits_are_exact(convention):
    d = 1000
    for kw, words in [({"rows": 1, "ratio": 0.1}, 100), ({"rows": 4, "width": 30}, 120)]:
        comp = build_compressor("sketch", {**kw, "bits": convention}, d)
        msg, _ = comp.compress(torch.randn(3, d), torch.arange(3), None, torch.Generator())
        assert msg.bits.tolist() == [32 * words] * 3


@pytest.mark.parametrize("noise", ["central", "local"])
def test_dp_sketch_fedavg_runs_and_reduces_loss(noise):
    task = make_task()
    env = make_env(task, "sketch", {"ratio": 0.5, "rows": 2}, participation=1.0)
    section = {k: p.default for k, p in PRIVACY_PARAMS.items()}
    section.update(clip=1.0, noise_multiplier=0.05, noise=noise)
    x0 = task.init_params(generator(0, 0, "init"))
    state, logs, alg = run_rounds("fedavg", {"lr": 0.1, "local_steps": 3}, attach(env, section), 20)
    assert task.train_loss(alg.params(state)) < task.train_loss(x0)
    assert all(int(log.bits_up[0]) == 32 * 2 * round(0.5 * task.d) for log in logs)


def test_per_client_sketches_are_refused_under_secure_aggregation():
    from pathlib import Path

    from fedbench import grid

    text = """
[task]
dataset = "digits"
model = "logreg"
[compressor]
name = "sketch"
shared = false
[privacy]
secure_aggregation = true
"""
    with pytest.raises(grid.GridError) as e:
        grid.parse(text, Path("s.toml"))
    assert e.value.problems == [
        "s.toml: [compressor] compressor.shared = false: with secure_aggregation every client "
        "must use the round's shared sketch (sketches add up only then); allowed: true"
    ]
    assert grid.parse(text.replace("shared = false", "shared = true"), Path("s.toml")).jobs
