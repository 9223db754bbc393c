"""Bit conventions of every compressor, and the compressors added in 0.2: PermK, TernGrad, QSGD
with Elias coding, natural dithering, PowerSGD, FedZip, L-GreCo and 1-bit Adam's scaled sign.

Statistical checks draw N independent compressions and allow 5 standard errors of the
sample mean (estimated from the same draws)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from fedbench.compressors import COMPRESSORS, build_compressor, compressor_kind, error_feedback
from fedbench.compressors.fedzip import huffman_bits
from fedbench.compressors.lgreco import best_choice
from fedbench.compressors.permk import slots
from fedbench.compressors.qsgd import elias_omega_bits
from fedbench.compressors.terngrad import trit_bits

D = 40
SHAPES = ((5, 6), (5,), (3, 3))  # a 5×6 matrix, a bias, a 3×3 matrix: d = 44
DS = 44
Z = 5.0  # standard errors allowed in statistical checks


def build(name, params=None, d=D, shapes=None, bits="full"):
    return build_compressor(name, {**(params or {}), "bits": bits}, d, shapes)


def draw(name, x, params=None, seed=0, shapes=None, bits="full", c=None):
    c = c or build(name, params, x.shape[1], shapes, bits)
    state = c.init(x.shape[0], x.shape[1], x.device)
    out, _ = c.compress(x, torch.arange(x.shape[0]), state, torch.Generator().manual_seed(seed))
    return out, c


def row(d=D, seed=42):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, d, generator=g, dtype=torch.float64) * torch.linspace(
        0.1, 3, d, dtype=torch.float64
    )


def assert_unbiased_within(v, x, omega):
    """Mean of the draws v [N, d] equals x within Z standard errors per coordinate, and the
    mean squared error is at most ω‖x‖² + Z standard errors."""
    n = v.shape[0]
    se = v.std(0) / math.sqrt(n) + 1e-12
    assert bool(((v.mean(0) - x[0]).abs() <= Z * se).all())
    err = (v - x).pow(2).sum(1)
    bound = omega * float(x.pow(2).sum()) + Z * float(err.std()) / math.sqrt(n)
    assert float(err.mean()) <= bound


# ------------------------------------------------------------------ bit conventions, exact

# name, params, shapes, bits "full", bits "values" (d = 40, or 44 with SHAPES), 4 rows
TABLE = [
    ("identity", {}, None, 32 * D, 32 * D),
    ("topk", {"k": 5}, None, 5 * 32 + 5 * 6, 5 * 32),
    ("randk", {"k": 5}, None, 5 * 32, 5 * 32),
    ("randk", {"k": 5, "shared_seed": False}, None, 5 * 32 + 5 * 6, 5 * 32),
    ("qsgd", {"levels": 4}, None, 32 + D * (1 + 3), 32 + D * (1 + 2)),
    ("qsgd", {"levels": 1}, None, 32 + D * 2, 32 + D),
    ("qsgd", {"levels": 4, "bucket": 16}, None, 3 * 32 + D * 4, 3 * 32 + D * 3),
    ("sign", {}, None, D + 32, D + 32),
    ("natural", {}, None, 9 * D, 9 * D),
    ("permk", {}, None, 32 * D // 4, 32 * D // 4),
    ("terngrad", {}, None, 32 + 64, 32 + 64),  # ⌈40·log2 3⌉ = ⌈63.40⌉
    ("terngrad", {"packed": True}, None, 32 + 2 * D, 32 + 2 * D),
    ("terngrad", {"layerwise": True}, SHAPES, 3 * 32 + 70, 3 * 32 + 70),  # ⌈44·log2 3⌉ = 70
    ("natural_dithering", {"levels": 8}, None, 32 + D * (1 + 4), 32 + D * (1 + 3)),
    ("onebit", {"chunks": 3}, None, D + 3 * 32, D + 3 * 32),
    ("powersgd", {"rank": 2}, SHAPES, 32 * (2 * 11 + 5 + 2 * 6), 32 * (2 * 11 + 5 + 2 * 6)),
    ("lgreco", {"ratio": 0.1, "spread": 0}, None, 4 * 32 + 4 * 6, 4 * 32),
    ("lgreco", {"ratio": 0.2, "spread": 0}, SHAPES, 32 * 9 + 30 + 3 + 8, 32 * 9),
    ("sketch", {"rows": 3, "width": 7}, None, 32 * 21, 32 * 21),
]


@pytest.mark.parametrize(("name", "params", "shapes", "full", "values"), TABLE)
def test_bits_under_both_conventions(name, params, shapes, full, values):
    d = DS if shapes else D
    x = torch.randn(4, d, generator=torch.Generator().manual_seed(1))
    a, _ = draw(name, x, params, shapes=shapes, bits="full")
    b, _ = draw(name, x, params, shapes=shapes, bits="values")
    assert a.bits.dtype == torch.int64
    assert a.bits.tolist() == [full] * 4 and b.bits.tolist() == [values] * 4
    assert torch.equal(a.value, b.value)  # the convention changes the count, not the message


def test_table_covers_every_compressor_and_data_dependent_ones_are_tested_below():
    assert {t[0] for t in TABLE} | {"fedzip"} == set(COMPRESSORS)


def test_unknown_convention_and_wrong_shapes_are_refused():
    with pytest.raises(ValueError, match="allowed: full, values"):
        build("topk", bits="floats")
    with pytest.raises(ValueError, match="d = 40"):
        build("powersgd", shapes=SHAPES)


def test_error_feedback_passes_the_inner_convention_through():
    x = torch.randn(2, D)
    for bits, expected in (("full", 5 * 32 + 30), ("values", 5 * 32)):
        c = error_feedback(build("topk", {"k": 5}, bits=bits))
        out, _ = c.compress(x, torch.arange(2), c.init(2, D, x.device), torch.Generator())
        assert out.bits.tolist() == [expected] * 2


@pytest.mark.parametrize(
    ("name", "params", "shapes"),
    [
        ("permk", {}, None),
        ("terngrad", {}, None),
        ("natural_dithering", {"levels": 3}, None),
        ("powersgd", {"rank": 1}, SHAPES),
        ("qsgd", {"levels": 2, "elias": True}, None),
    ],
)
def test_randomised_compressors_are_deterministic_per_generator(name, params, shapes):
    d = DS if shapes else D
    x = row(d).expand(4, -1).contiguous() * torch.arange(1, 5, dtype=torch.float64)[:, None]
    a, _ = draw(name, x, params, seed=7, shapes=shapes)
    b, _ = draw(name, x, params, seed=7, shapes=shapes)
    c, _ = draw(name, x, params, seed=8, shapes=shapes)
    assert torch.equal(a.value, b.value) and torch.equal(a.bits, b.bits)
    assert not torch.equal(a.value, c.value)


# ------------------------------------------------------------------ PermK


@pytest.mark.parametrize(("d", "m"), [(40, 4), (40, 8), (16, 16), (3, 8), (1, 4), (5, 8)])
def test_permk_mean_of_identical_inputs_is_exact(d, m):
    """m a power of two: m·x/m is exact in floating point, so the mean equals x bit for bit
    (dual construction for m > d included)."""
    x = row(d).expand(m, -1).contiguous()
    out, _ = draw("permk", x, seed=3)
    assert torch.equal(out.value.sum(0) / m, x[0])
    assert torch.equal(out.value.mean(0), x[0])


@pytest.mark.parametrize(("d", "m"), [(10, 3), (7, 7), (3, 5), (11, 6)])
def test_permk_mean_is_exact_up_to_rounding_of_m_x_over_m(d, m):
    x = row(d).expand(m, -1).contiguous()
    out, _ = draw("permk", x, seed=3)
    torch.testing.assert_close(out.value.mean(0), x[0], rtol=4e-16, atol=0)


def test_permk_supports_tile_the_coordinates_and_bits_count_real_ones():
    d, m = 10, 4  # padded to D = 12 slots, 3 per row
    out, _ = draw("permk", torch.ones(m, d, dtype=torch.float64), seed=1)
    support = out.value != 0
    assert bool((support.sum(0) == 1).all())  # disjoint, union = [d]
    assert out.bits.tolist() == (32 * support.sum(1)).tolist() and sum(out.bits) == 32 * d
    assert bool((out.value[support] == m).all())  # scaled by m
    assert slots(10, 4) == 12 and slots(3, 8) == 4 and slots(3, 5) == 5
    dual, _ = draw("permk", torch.ones(6, 3, dtype=torch.float64), seed=1)
    assert bool(((dual.value != 0).sum(0) == 2).all())  # each coordinate to m/d = 2 rows


def test_permk_each_row_is_unbiased_with_omega_m_minus_1():
    d, m, n = 12, 4, 4000
    x = row(d)
    c = build("permk", d=d)
    draws = torch.stack(
        [
            c.compress(x.expand(m, -1), torch.arange(m), None, torch.Generator().manual_seed(t))[
                0
            ].value
            for t in range(n)
        ]
    )  # [n, m, d]
    for j in range(m):
        assert_unbiased_within(draws[:, j], x, m - 1)
    err = (draws[:, 0] - x).pow(2).sum(1).mean()
    assert float(err) == pytest.approx((m - 1) * float(x.pow(2).sum()), rel=0.1)


# ------------------------------------------------------------------ TernGrad


def test_terngrad_is_ternary_unbiased_with_omega_sqrt_d_minus_1():
    x = row()
    out, c = draw("terngrad", x.expand(20000, -1).contiguous(), seed=1)
    s = float(x.abs().max())
    assert set(out.value.unique().tolist()) <= {-s, 0.0, s}
    assert c.kind == "unbiased" and c.param == pytest.approx(math.sqrt(D) - 1)
    assert_unbiased_within(out.value, x, math.sqrt(D) - 1)
    exact = s * float(x.abs().sum()) - float(x.pow(2).sum())  # E‖Q − x‖² = s‖x‖₁ − ‖x‖²
    assert float((out.value - x).pow(2).sum(1).mean()) == pytest.approx(exact, rel=0.05)


def test_terngrad_layerwise_scales_and_clipping():
    x = row(DS)
    out, c = draw("terngrad", x, {"layerwise": True}, shapes=SHAPES)
    for sl in (slice(0, 30), slice(30, 35), slice(35, 44)):
        s = float(x[0, sl].abs().max())
        assert set(out.value[0, sl].unique().tolist()) <= {-s, 0.0, s}
    assert c.param == pytest.approx(math.sqrt(30) - 1)
    clipped, cc = draw("terngrad", x, {"clip": 1.0})
    bound = float(x.std(unbiased=False))
    assert float(clipped.value.abs().max()) <= bound * (1 + 1e-12)
    assert cc.kind == "biased" and compressor_kind("terngrad", {"clip": 2.5}) == "biased"
    assert all(trit_bits(d) == (3**d - 1).bit_length() for d in range(1, 500))


# ------------------------------------------------------------------ QSGD with Elias coding


def omega_reference(n: int) -> int:
    """Elias ω code of n as a string, built literally."""
    code = "0"
    while n > 1:
        b = bin(n)[2:]
        code = b + code
        n = len(b) - 1
    return len(code)


def test_elias_omega_lengths():
    ns = torch.arange(1, 3000)
    assert elias_omega_bits(ns).tolist() == [omega_reference(int(n)) for n in ns]
    assert elias_omega_bits(torch.tensor([1, 2, 4, 8, 16, 100])).tolist() == [1, 3, 6, 7, 11, 13]


def test_qsgd_elias_exact_length_of_a_known_message():
    # u = 5, s = 5: s|v|/u = (0, 3, 0, 0, 4) are integers, so the levels are deterministic
    x = torch.tensor([[0.0, 3.0, 0.0, 0.0, -4.0]], dtype=torch.float64)
    full, _ = draw("qsgd", x, {"levels": 5, "elias": True})
    values, _ = draw("qsgd", x, {"levels": 5, "elias": True}, bits="values")
    torch.testing.assert_close(full.value, x)
    # norm + [ω(gap 2) + sign + ω(level 3)] + [ω(gap 3) + sign + ω(level 4)]
    assert full.bits.tolist() == [32 + (3 + 1 + 3) + (3 + 1 + 6)]
    assert values.bits.tolist() == [32 + (1 + 3) + (1 + 6)]  # positions dropped


def test_qsgd_elias_matches_a_literal_encoder_and_beats_naive_when_sparse():
    d, s = 1000, 1
    x = torch.randn(6, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out, _ = draw("qsgd", x, {"levels": s, "elias": True}, seed=2)
    for i in range(6):
        lev = (out.value[i].abs() / x[i].norm() * s).round().long().tolist()
        nz = [j + 1 for j, v in enumerate(lev) if v > 0]
        gaps = [b - a for a, b in zip([0, *nz[:-1]], nz, strict=True)]
        expect = 32 + sum(
            omega_reference(g) + 1 + omega_reference(lev[p - 1])
            for g, p in zip(gaps, nz, strict=True)
        )
        assert int(out.bits[i]) == expect
    assert int(out.bits.max()) < 32 + d * 2  # s = 1: ~√d nonzeros, far below the naive code


# ------------------------------------------------------------------ natural dithering


@pytest.mark.parametrize(("levels", "norm"), [(2, "inf"), (4, "2"), (8, "inf"), (3, "1")])
def test_natural_dithering_unbiased_variance_within_omega_levels_at_powers_of_two(levels, norm):
    x = row()
    out, c = draw(
        "natural_dithering",
        x.expand(20000, -1).contiguous(),
        {"levels": levels, "norm": norm},
        seed=1,
    )
    p = {"inf": math.inf, "1": 1.0, "2": 2.0}[norm]
    t = D ** (1 / min(p, 2)) * 2.0 ** (1 - levels)
    assert c.param == pytest.approx(1 / 8 + t * min(1, t))
    assert_unbiased_within(out.value, x, c.param)
    u = float(torch.linalg.vector_norm(x, ord=p))
    allowed = torch.tensor([0.0] + [2.0**-j for j in range(levels)], dtype=torch.float64)
    lev = (out.value.abs() / u).unique()
    assert bool(torch.isclose(lev[:, None], allowed[None, :], rtol=1e-12, atol=0).any(1).all())


# ------------------------------------------------------------------ PowerSGD


def test_powersgd_full_rank_is_exact_and_vectors_pass_through():
    x = torch.randn(3, DS, generator=torch.Generator().manual_seed(0))
    out, _ = draw("powersgd", x, {"rank": 5}, shapes=SHAPES)
    torch.testing.assert_close(out.value, x, rtol=1e-5, atol=1e-5)
    assert out.bits.tolist() == [32 * (5 * 11 + 5 + 3 * 6)] * 3  # rank capped at 3 for 3×3
    low, _ = draw("powersgd", x, {"rank": 1}, shapes=SHAPES)
    assert torch.equal(low.value[:, 30:35], x[:, 30:35])  # the bias is sent as is
    assert torch.linalg.matrix_rank(low.value[0, :30].view(5, 6)) == 1


def test_powersgd_is_a_projection_and_contracts_by_r_over_b_in_expectation():
    x = row(DS)
    c = build("powersgd", {"rank": 1}, d=DS, shapes=SHAPES)
    mats = [slice(0, 30), slice(35, 44)]
    errs = []
    for t in range(400):  # fresh clients: a new random Q each draw
        out, _ = c.compress(
            x, torch.tensor([0]), c.init(1, DS, x.device), torch.Generator().manual_seed(t)
        )
        e = (out.value - x).pow(2)
        assert float(e.sum()) <= float(x.pow(2).sum())  # never worse than sending nothing
        errs.append([float(e[0, sl].sum() / x[0, sl].pow(2).sum()) for sl in mats])
    mean = torch.tensor(errs).mean(0)
    assert c.param == pytest.approx(1 / 6)  # r/b for the 5×6 matrix
    assert float(mean[0]) <= 1 - 1 / 6 and float(mean[1]) <= 1 - 1 / 3


def test_powersgd_warm_start_converges_to_the_best_rank_r_and_keeps_other_rows():
    x = row(DS)
    c = build("powersgd", {"rank": 2}, d=DS, shapes=SHAPES)
    state = c.init(3, DS, x.device)
    for t in range(60):
        out, state = c.compress(x, torch.tensor([1]), state, torch.Generator().manual_seed(t))
    sv = torch.linalg.svdvals(x[0, :30].view(5, 6))
    best = float(sv[2:].pow(2).sum())
    err = float((out.value[0, :30] - x[0, :30]).pow(2).sum())
    assert err == pytest.approx(best, rel=1e-3)
    assert bool(state.started.tolist() == [False, True, False])
    assert float(state.Q[[0, 2]].abs().sum()) == 0.0


def test_powersgd_with_error_feedback_loses_nothing():
    c = error_feedback(build("powersgd", {"rank": 1}, d=DS, shapes=SHAPES))
    state = c.init(4, DS, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor([0, 3])
    sent, total = torch.zeros(2, DS), torch.zeros(2, DS)
    for _ in range(5):
        msg = torch.randn(2, DS, generator=g)
        out, state = c.compress(msg, ids, state, g)
        sent += out.value
        total += msg
    torch.testing.assert_close(sent + state.e[ids], total)


# ------------------------------------------------------------------ FedZip


def test_huffman_lengths():
    counts = torch.tensor([[5, 2, 1, 1], [3, 0, 0, 0], [1, 1, 0, 0], [4, 4, 4, 4]])
    assert huffman_bits(counts).tolist() == [5 * 1 + 2 * 2 + 2 * 3, 3, 2, 16 * 2]


def test_fedzip_full_density_and_enough_clusters_is_lossless_with_exact_bits():
    x = torch.tensor([[0.1, 0.1, 0.1, -2.0, 3.0, 3.0, 0.1, -2.0, 0.1, 0.1]], dtype=torch.float64)
    out, c = draw("fedzip", x, {"ratio": 1.0, "clusters": 3})
    assert torch.equal(out.value, x) and c.kind == "biased"
    # ids: 0.1 ×6, −2 ×2, 3 ×2 → Huffman 1 + 2 + 2 bits; 3 centroids; K = d: no positions
    assert out.bits.tolist() == [6 * 1 + 2 * 2 + 2 * 2 + 3 * 32]
    more, _ = draw("fedzip", x, {"ratio": 1.0, "clusters": 5})
    assert torch.equal(more.value, x)


def test_fedzip_quantises_the_top_z_and_never_adds_error_energy():
    x = torch.randn(8, 60, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out, _ = draw("fedzip", x, {"ratio": 0.25, "clusters": 3})
    vals, _ = draw("fedzip", x, {"ratio": 0.25, "clusters": 3}, bits="values")
    top = x.abs().topk(15, dim=1).indices
    kept = torch.zeros_like(x, dtype=torch.bool).scatter_(1, top, True)
    assert bool((out.value[~kept] == 0).all())
    assert all(len(out.value[i][kept[i]].unique()) <= 3 for i in range(8))
    assert bool(((out.value - x).pow(2).sum(1) <= x.pow(2).sum(1)).all())
    assert (out.bits - vals.bits).tolist() == [60] * 8  # positions: a 60-bit mask < 15·6


# ------------------------------------------------------------------ L-GreCo


def test_lgreco_with_one_candidate_is_topk():
    x = torch.randn(5, D, generator=torch.Generator().manual_seed(0))
    a, _ = draw("lgreco", x, {"ratio": 0.2, "spread": 0})
    b, _ = draw("topk", x, {"ratio": 0.2})
    assert torch.equal(a.value, b.value) and torch.equal(a.bits, b.bits)
    y = torch.randn(5, DS, generator=torch.Generator().manual_seed(1))
    layered, _ = draw("lgreco", y, {"ratio": 0.2, "spread": 0}, shapes=SHAPES)
    for sl, k in ((slice(0, 30), 6), (slice(30, 35), 1), (slice(35, 44), 2)):
        ref, _ = draw("topk", y[:, sl].contiguous(), {"k": k})
        assert torch.equal(layered.value[:, sl], ref.value)


@pytest.mark.parametrize("bits", ["full", "values"])
def test_lgreco_stays_within_the_uniform_budget_with_less_error(bits):
    scale = torch.cat([torch.full((30,), 0.1), torch.full((5,), 3.0), torch.ones(9)])
    x = torch.randn(4, DS, generator=torch.Generator().manual_seed(0)) * scale
    uni, _ = draw("lgreco", x, {"ratio": 0.2, "spread": 0}, shapes=SHAPES, bits=bits)
    ada, c = draw("lgreco", x, {"ratio": 0.2, "spread": 2}, shapes=SHAPES, bits=bits)
    assert int(ada.bits[0]) <= int(uni.bits[0])
    err = lambda o: float((o.value - x).pow(2).sum())  # noqa: E731
    assert err(ada) < err(uni)  # the loud bias gets more coordinates
    assert c.kind == "contractive"
    assert bool(((ada.value - x).pow(2).sum(1) <= (1 - c.param) * x.pow(2).sum(1) + 1e-6).all())


def test_lgreco_dp_is_optimal_and_rechooses_every_period():
    g = torch.Generator().manual_seed(0)
    errors = torch.rand(4, 3, generator=g).tolist()
    sizes = torch.randint(1, 20, (4, 3), generator=g).tolist()
    budget = 30
    feasible = [
        ch for ch in itertools.product(range(3), repeat=4)
        if sum(sizes[i][c] for i, c in enumerate(ch)) <= budget
    ]  # fmt: skip
    brute = min(sum(errors[i][c] for i, c in enumerate(ch)) for ch in feasible)
    got = best_choice(errors, sizes, budget)
    assert sum(sizes[i][c] for i, c in enumerate(got)) <= budget
    assert sum(errors[i][c] for i, c in enumerate(got)) == pytest.approx(brute)
    c = build("lgreco", {"ratio": 0.2, "spread": 2, "period": 3}, d=DS, shapes=SHAPES)
    state = c.init(2, DS, torch.device("cpu"))
    loud = [torch.ones(DS), torch.ones(DS)]
    loud[0][30:35], loud[1][:30] = 50.0, 50.0
    choices = []
    for t in range(6):
        x = torch.randn(2, DS, generator=g) * loud[(t // 3) % 2]
        _, state = c.compress(x, torch.arange(2), state, g)
        choices.append(state.choice)
    assert choices[0] == choices[1] == choices[2] and choices[3] == choices[4] == choices[5]
    assert choices[0] != choices[3] and state.calls == 6


# ------------------------------------------------------------------ 1-bit Adam's scaled sign


def test_onebit_chunked_scales_contraction_and_bits():
    x = row()
    out, c = draw("onebit", x, {"chunks": 3})  # chunks of 14, 13, 13
    for sl in (slice(0, 14), slice(14, 27), slice(27, 40)):
        torch.testing.assert_close(out.value[0, sl], x[0, sl].abs().mean() * x[0, sl].sign())
    assert c.kind == "contractive" and c.param == 1 / 14
    xs = torch.randn(300, D, generator=torch.Generator().manual_seed(0))
    many, _ = draw("onebit", xs, {"chunks": 3})
    assert bool(((many.value - xs).pow(2).sum(1) <= (1 - 1 / 14) * xs.pow(2).sum(1)).all())
    one, _ = draw("onebit", x, {"chunks": 1})
    sign, _ = draw("sign", x)
    torch.testing.assert_close(one.value, sign.value)
    assert torch.equal(one.bits, sign.bits)


def _permk_exact_omega(d: int, m: int) -> float:
    """E‖C_j(x) − x‖² / ‖x‖², worst row j, averaged exactly over all D! permutations (PermK's
    shared randomness), for one random x: PermK's per-row variance is exactly (s − 1)‖x‖²."""
    import itertools
    from unittest import mock

    from fedbench.compressors import permk as pk

    big = pk.slots(d, m)
    x = torch.randn(d, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    rows = x.expand(m, d).clone()  # [m, d] every row the same input
    total = torch.zeros(m, dtype=torch.float64)
    perms = list(itertools.permutations(range(big)))
    c = pk.permk(d)
    for p in perms:
        with mock.patch.object(pk.torch, "randperm", lambda *a, p=p, **k: torch.tensor(p)):
            q, _ = c.compress(rows, torch.arange(m), None, torch.Generator())
        total += ((q.value - rows) ** 2).sum(1)
    return float((total / len(perms)).max() / (x**2).sum())


@pytest.mark.parametrize("d,n", [(6, 3), (4, 4), (5, 2), (3, 5), (4, 6)])
def test_permk_declared_omega_is_the_exact_variance_constant(d, n):
    """Declared ω with n clients = max over cohorts m ≤ n of the exact per-row constant,
    computed over every permutation; = n − 1 for n ≤ d (the old d − 1 was wrong for n < d,
    and too small in the dual case d < n with dummy slots, e.g. d = 3, m = 5: ω = 4)."""
    declared = build_compressor("permk", {}, d, None, n).param
    exact = [_permk_exact_omega(d, m) for m in range(1, n + 1)]
    assert declared == pytest.approx(max(exact), rel=1e-9)
    if n <= d:
        assert declared == n - 1
        assert exact[-1] == pytest.approx(n - 1, rel=1e-9)
    assert build_compressor("permk", {}, d, None).param == d - 1  # no client count: m = d
