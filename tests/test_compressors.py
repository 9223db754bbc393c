"""Every compressor: its guarantee (contraction or unbiasedness with variance ω), exact bits,
determinism, and the error-feedback wrapper."""

from __future__ import annotations

import math

import pytest
import torch

from fedbench.compressors import COMPRESSORS, build_compressor, compressor_kind, error_feedback
from fedbench.compressors.base import index_bits

D = 40


def draw(name, x, params=None, seed=0, ids=None):
    c = build_compressor(name, params or {}, x.shape[1])
    state = c.init(x.shape[0], x.shape[1], x.device)
    ids = torch.arange(x.shape[0]) if ids is None else ids
    out, _ = c.compress(x, ids, state, torch.Generator().manual_seed(seed))
    return out, c


def many(name, x, params, draws=20000):
    """Stack `draws` independent compressions of the single row x: [draws, d]."""
    out, _ = draw(name, x.expand(draws, -1).contiguous(), params, seed=1)
    return out.value


@pytest.fixture
def x():
    g = torch.Generator().manual_seed(42)
    return torch.randn(1, D, generator=g, dtype=torch.float64) * torch.linspace(
        0.1, 3, D, dtype=torch.float64
    )


def test_every_registered_compressor_is_covered():
    assert set(COMPRESSORS) == {
        "identity", "topk", "randk", "qsgd", "sign", "natural",
        "permk", "terngrad", "natural_dithering", "powersgd", "fedzip", "lgreco", "onebit",
        "sketch",
    }  # fmt: skip


def test_identity_is_exact_and_costs_32_bits_per_coordinate(x):
    out, c = draw("identity", x)
    assert torch.equal(out.value, x) and c.kind == "exact"
    assert out.bits.tolist() == [32 * D]


@pytest.mark.parametrize("k", [1, 5, 13, D])
def test_topk_contracts_deterministically_and_keeps_the_largest(k):
    g = torch.Generator().manual_seed(k)
    xs = torch.randn(200, D, generator=g)
    out, c = draw("topk", xs, {"k": k})
    err = (out.value - xs).pow(2).sum(1)
    assert bool((err <= (1 - k / D) * xs.pow(2).sum(1) + 1e-6).all())
    assert c.kind == "contractive" and c.param == k / D
    assert bool(((out.value != 0).sum(1) == k).all())
    kept_min = torch.where(out.value != 0, xs.abs(), torch.inf).min(1).values
    dropped_max = torch.where(out.value == 0, xs.abs(), -torch.inf).max(1).values
    assert bool((kept_min >= dropped_max).all())


def test_topk_bits_values_plus_indices_or_mask():
    d = 1000
    small, _ = draw("topk", torch.randn(2, d), {"k": 10})
    assert small.bits.tolist() == [10 * 32 + 10 * 10] * 2  # ⌈log2 1000⌉ = 10 bits per index
    large, _ = draw("topk", torch.randn(2, d), {"ratio": 0.5})
    assert large.bits.tolist() == [500 * 32 + 1000] * 2  # a 1000-bit mask beats 500 indices
    assert index_bits(10, d) == 100 and index_bits(500, d) == 1000


def test_ratio_and_k_choose_the_same_k():
    _, a = draw("topk", torch.randn(1, 200), {"ratio": 0.05})
    _, b = draw("topk", torch.randn(1, 200), {"k": 10})
    assert a.param == b.param == 10 / 200


def test_randk_is_unbiased_with_omega_d_over_k_minus_1(x):
    k = 8
    v = many("randk", x, {"k": k})
    mean = v.mean(0)
    assert float((mean - x[0]).norm() / x.norm()) < 0.03
    var = (v - x).pow(2).sum(1).mean()
    omega = D / k - 1
    assert float(var) == pytest.approx(omega * float(x.pow(2).sum()), rel=0.03)
    assert bool(((v != 0).sum(1) == k).all())


def test_randk_bits_and_kinds():
    d = 1024
    shared, c = draw("randk", torch.randn(3, d), {"k": 16})
    assert shared.bits.tolist() == [16 * 32] * 3 and c.kind == "unbiased" and c.param == d / 16 - 1
    own, _ = draw("randk", torch.randn(3, d), {"k": 16, "shared_seed": False})
    assert own.bits.tolist() == [16 * 32 + 16 * 10] * 3
    _, unscaled = draw("randk", torch.randn(1, d), {"k": 16, "unbiased": False})
    assert (
        unscaled.kind == "contractive"
        and compressor_kind("randk", {"unbiased": False}) == "contractive"
    )


def test_unscaled_randk_contracts_in_expectation(x):
    v = many("randk", x, {"k": 10, "unbiased": False})
    err = (v - x).pow(2).sum(1).mean()
    assert float(err) == pytest.approx((1 - 10 / D) * float(x.pow(2).sum()), rel=0.03)


@pytest.mark.parametrize(("levels", "bucket"), [(1, 0), (4, 0), (16, 0), (2, 8)])
def test_qsgd_is_unbiased_with_variance_within_omega(x, levels, bucket):
    v = many("qsgd", x, {"levels": levels, "bucket": bucket})
    assert float((v.mean(0) - x[0]).norm() / x.norm()) < 0.03
    b = bucket or D
    omega = min(b / levels**2, math.sqrt(b) / levels)
    var = float((v - x).pow(2).sum(1).mean())
    assert var <= omega * float(x.pow(2).sum()) * 1.03


def test_qsgd_outputs_levels_and_exact_bits(x):
    out, _c = draw("qsgd", x, {"levels": 4})
    u = float(x.norm())
    assert torch.allclose((out.value.abs() / u * 4), (out.value.abs() / u * 4).round(), atol=1e-9)
    assert out.bits.tolist() == [32 + D * (1 + 3)]  # sign + ⌈log2 5⌉ = 3 level bits
    bucketed, _ = draw("qsgd", x, {"levels": 4, "bucket": 16})
    assert bucketed.bits.tolist() == [3 * 32 + D * 4]  # 3 buckets of 16 cover 40
    many_levels = many("qsgd", x, {"levels": 2**20}, draws=4)
    assert torch.allclose(many_levels, x.expand(4, -1), rtol=1e-5, atol=1e-5)


def test_scaled_sign_value_contraction_and_bits(x):
    out, c = draw("sign", x)
    assert torch.allclose(out.value, x.abs().mean() * x.sign())
    err = (out.value - x).pow(2).sum()
    assert float(err) <= (1 - 1 / D) * float(x.pow(2).sum())
    assert out.bits.tolist() == [D + 32] and c.kind == "contractive"


def test_natural_compression_unbiased_bounded_variance_fixed_powers(x):
    v = many("natural", x, {})
    assert float((v.mean(0) - x[0]).norm() / x.norm()) < 0.03
    per_coord = (v - x).pow(2).mean(0)
    assert bool((per_coord <= x[0].pow(2) / 8 * 1.05 + 1e-12).all())
    powers = torch.tensor([[0.25, -1.0, 2.0, 0.0, -1024.0]])
    out, _c = draw("natural", powers)
    assert torch.equal(out.value, powers) and out.bits.tolist() == [9 * 5]
    mags = v.abs()
    assert torch.allclose(torch.log2(mags[mags > 0]), torch.log2(mags[mags > 0]).round())


@pytest.mark.parametrize("name", ["randk", "qsgd", "natural"])
def test_randomised_compressors_are_deterministic_per_generator(x, name):
    a, _ = draw(name, x.expand(5, -1).contiguous(), seed=7)
    b, _ = draw(name, x.expand(5, -1).contiguous(), seed=7)
    c, _ = draw(name, x.expand(5, -1).contiguous(), seed=8)
    assert torch.equal(a.value, b.value) and not torch.equal(a.value, c.value)


def test_error_feedback_loses_nothing_and_touches_only_the_cohort():
    n, d = 5, 30
    c = error_feedback(build_compressor("topk", {"k": 3}, d))
    state = c.init(n, d, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor([1, 3])
    sent = torch.zeros(2, d)
    total_in = torch.zeros(2, d)
    for _ in range(6):
        msg_in = torch.randn(2, d, generator=g)
        out, state = c.compress(msg_in, ids, state, g)
        sent += out.value
        total_in += msg_in
    # telescoping: everything put in is either sent or still in the error buffer
    torch.testing.assert_close(sent + state.e[ids], total_in)
    assert float(state.e[[0, 2, 4]].abs().sum()) == 0.0
    assert out.bits.tolist() == [3 * 32 + 3 * 5] * 2


def test_error_feedback_with_identity_keeps_zero_error():
    c = error_feedback(build_compressor("identity", {}, 4))
    state = c.init(2, 4, torch.device("cpu"))
    x = torch.randn(2, 4)
    out, state = c.compress(x, torch.arange(2), state, torch.Generator())
    assert torch.equal(out.value, x) and float(state.e.abs().sum()) == 0.0
