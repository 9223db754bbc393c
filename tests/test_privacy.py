"""[privacy]: ε from dp-accounting against the library's own known values, clipping bound,
noise statistics, the non-private special case bit for bit, grid refusals, secure aggregation."""

from __future__ import annotations

import math
import multiprocessing
from pathlib import Path

import dp_accounting as dpa
import pytest
import torch
from conftest import make_env, make_task, run_rounds

from fedbench import grid
from fedbench.compressors import build_compressor
from fedbench.privacy import PRIVACY_PARAMS, PrivacyConfig
from fedbench.privacy.accountant import Tracker, epsilon, round_event
from fedbench.privacy.dp import adapt_clip, attach, private, update_noise_multiplier
from fedbench.privacy.secagg import SecAgg, decode, encode, key_bits, masked_sum, pair_masks, step

DEFAULTS = {k: p.default for k, p in PRIVACY_PARAMS.items()}


def cfg(**kw: object) -> PrivacyConfig:
    return PrivacyConfig.from_section({**DEFAULTS, **kw})


# -- the accountant ------------------------------------------------------------------------


def test_epsilon_of_one_gaussian_matches_rdp_library_test_value():
    # rdp_privacy_accountant_test: σ = 4.530877117 is (1, 1e-6)-DP. Full participation under
    # replace-one has sensitivity 2C, so fedbench's σ = 2 × 4.530877117 is that mechanism.
    p = cfg(noise_multiplier=2 * 4.530877117, delta=1e-6)
    assert epsilon(p, 10, 10, 1) == pytest.approx(1.0, abs=1e-3)
    # the PLD setting gives the analytic Gaussian ε, tighter than RDP's conversion
    assert (
        epsilon(cfg(noise_multiplier=2 * 4.530877117, delta=1e-6, accountant="pld"), 10, 10, 1)
        < 1.0
    )


def test_epsilon_of_poisson_gaussian_matches_pld_library_test_value():
    # pld_privacy_accountant_test: Poisson q = 0.2, σ = 0.5, three rounds: ε = 1 at δ = 0.15594
    p = cfg(noise_multiplier=0.5, delta=0.15594, accountant="pld")
    assert epsilon(p, 10, 2, 3, "poisson") == pytest.approx(1.0, abs=1e-3)


def test_round_events_model_the_actual_sampling():
    ev = round_event(cfg(noise_multiplier=3.0), 100, 10, "uniform")
    assert isinstance(ev, dpa.SampledWithoutReplacementDpEvent)
    assert (ev.source_dataset_size, ev.sample_size) == (100, 10)
    assert ev.event.noise_multiplier == pytest.approx(1.5)  # replace-one: sensitivity 2C
    ev = round_event(cfg(noise_multiplier=3.0), 100, 10, "poisson")
    assert isinstance(ev, dpa.PoissonSampledDpEvent) and ev.sampling_probability == 0.1
    assert ev.event.noise_multiplier == pytest.approx(3.0)  # add/remove: sensitivity C
    # SCAFFOLD's two clipped messages per round = one Gaussian of multiplier σ/√2
    ev2 = round_event(cfg(noise_multiplier=3.0), 100, 10, "poisson", messages=2)
    assert ev2.event.noise_multiplier == pytest.approx(3.0 / math.sqrt(2))
    local = round_event(cfg(noise_multiplier=3.0, noise="local"), 100, 10, "uniform")
    assert isinstance(local, dpa.GaussianDpEvent) and local.noise_multiplier == 1.5


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_tracker_equals_a_fresh_composition_at_every_evaluation(accountant):
    from fedbench.privacy.accountant import make_accountant

    p = cfg(noise_multiplier=1.2, accountant=accountant)
    tr = Tracker(p, 50, 5, "poisson")
    eps = [tr.epsilon(t) for t in (0, 5, 10, 20)]
    assert eps[0] == 0.0 and eps[1] < eps[2] < eps[3]
    acc = make_accountant(accountant, poisson=True)
    acc.compose(dpa.PoissonSampledDpEvent(0.1, dpa.GaussianDpEvent(1.2)), 20)
    assert eps[3] == pytest.approx(acc.get_epsilon(p.delta), rel=1e-6)


def _uniform_epsilon(noise_multiplier: float) -> float:
    """ε of 50 rounds of 10 clients of 100 sampled without replacement."""
    return epsilon(cfg(noise_multiplier=noise_multiplier), 100, 10, 50)


def test_uniform_rdp_never_above_unsampled_and_sigma_zero_is_infinite():
    # the two sampled curves at once, in forked processes: each is ~12 s of dp-accounting's
    # pure-Python sums at the integer orders up to 256, on one core
    with multiprocessing.get_context("fork").Pool(2) as pool:
        low, high = pool.map(_uniform_epsilon, [0.8, 6.0])
    assert low <= epsilon(cfg(noise_multiplier=0.8), 100, 100, 50) + 1e-9
    assert high < epsilon(cfg(noise_multiplier=6.0), 100, 100, 50)
    assert math.isinf(epsilon(cfg(noise_multiplier=0.0), 100, 10, 5))


# -- clipping and noise --------------------------------------------------------------------


def test_clipping_bound_holds_after_compression():
    d, m = 300, 40
    x = torch.randn(m, d, generator=torch.Generator().manual_seed(0)) * 5
    ids = torch.arange(m)
    for name, kw in [("identity", {}), ("randk", {"ratio": 0.1}), ("qsgd", {}), ("topk", {})]:
        inner = build_compressor(name, kw, d)
        c = private(inner, cfg(clip=0.7, noise_multiplier=0.0))
        msg, _ = c.compress(
            x, ids, c.init(m, d, torch.device("cpu")), torch.Generator().manual_seed(1)
        )
        assert float(msg.value.norm(dim=1).max()) <= 0.7 * (1 + 1e-5), name
        ref, _ = inner.compress(
            x, ids, inner.init(m, d, torch.device("cpu")), torch.Generator().manual_seed(1)
        )
        assert torch.equal(msg.bits, ref.bits)  # a clipped message costs what it cost
        assert torch.equal((msg.value != 0), (ref.value != 0)), name  # same support


@pytest.mark.parametrize("noise", ["central", "local"])
def test_noise_standard_deviation(noise):
    m, d, sigma, c = 50, 4000, 2.0, 0.5
    comp = private(
        build_compressor("identity", {}, d), cfg(clip=c, noise_multiplier=sigma, noise=noise)
    )
    x = torch.zeros(m, d)
    msg, _ = comp.compress(
        x, torch.arange(m), comp.init(m, d, torch.device("cpu")), torch.Generator().manual_seed(3)
    )
    total = msg.value.sum(0)  # [d] the server's sum
    want_sum = sigma * c * (1.0 if noise == "central" else math.sqrt(m))
    # the sample std of d = 4000 normals is within 4% of the truth with probability > 0.999
    assert float(total.std()) == pytest.approx(want_sum, rel=0.04)
    assert float(total.mean()) == pytest.approx(0.0, abs=4 * want_sum / math.sqrt(d))
    if noise == "local":
        assert float(msg.value.std()) == pytest.approx(sigma * c, rel=0.02)


def test_adaptive_clip_tracks_the_median_norm():
    norms = torch.arange(1, 101, dtype=torch.float32)  # median 50.5
    p = cfg(clip=1.0, noise_multiplier=0.0, adaptive_clip=True)
    c = 1.0
    for _ in range(300):
        c = adapt_clip(c, norms, p, torch.Generator().manual_seed(0))
    assert 45 <= c <= 56
    # the update's share of z (Andrew et al.): z_Δ⁻² + (2σ_b)⁻² = z⁻², σ_b = m/20
    z, m = 1.0, 100
    zd = update_noise_multiplier(z, m, True)
    assert zd**-2 + (2 * m / 20) ** -2 == pytest.approx(z**-2)


# -- σ = 0 and C = "inf": the non-private method bit for bit ------------------------------


@pytest.mark.parametrize(
    "alg, params, up, up_params, ef",
    [
        ("fedavg", {"lr": 0.1, "local_steps": 2}, "topk", {"ratio": 0.1}, True),
        ("fedavg", {"lr": 0.1, "local_steps": 2}, "randk", {"ratio": 0.2}, False),
        ("fedprox", {"lr": 0.1, "local_steps": 2, "mu": 0.1}, "identity", {}, False),
        ("scaffold", {"lr": 0.1, "local_steps": 2}, "topk", {"ratio": 0.2}, True),
        ("diana", {"lr": 0.1, "alpha": "auto"}, "randk", {"ratio": 0.2}, False),
        ("dcgd", {"lr": 0.1}, "qsgd", {}, False),
    ],
)
@pytest.mark.parametrize("noise", ["central", "local"])
def test_no_clip_no_noise_is_the_non_private_method_bitwise(alg, params, up, up_params, ef, noise):
    task = make_task()
    env = make_env(task, up, up_params, ef=ef, participation=0.5)
    section = {**DEFAULTS, "clip": "inf", "noise_multiplier": 0.0, "noise": noise}
    plain, _, a = run_rounds(alg, params, env, 4)
    priv, _, b = run_rounds(alg, params, attach(env, section), 4)
    assert torch.equal(a.params(plain), b.params(priv))


def test_private_run_differs_and_stays_finite():
    task = make_task()
    env = attach(
        make_env(task, "topk", {"ratio": 0.1}, ef=True, participation=0.5),
        {**DEFAULTS, "clip": 0.5, "noise_multiplier": 1.0},
    )
    plain, _, a = run_rounds(
        "fedavg",
        {"lr": 0.1, "local_steps": 2},
        make_env(task, "topk", {"ratio": 0.1}, ef=True, participation=0.5),
        3,
    )
    priv, _, b = run_rounds("fedavg", {"lr": 0.1, "local_steps": 2}, env, 3)
    x = b.params(priv)
    assert torch.isfinite(x).all() and not torch.equal(x, a.params(plain))


# -- the grid ------------------------------------------------------------------------------

BASE = """
[experiment]
rounds = 3
[task]
dataset = "digits"
model = "logreg"
clients = 20
[algorithm]
name = "{alg}"
participation = 0.5
sampling = "{sampling}"
[compressor]
name = "{comp}"
[privacy]
{privacy}
"""


def parse(alg="fedavg", comp="identity", sampling="uniform", privacy=""):
    text = BASE.format(alg=alg, comp=comp, sampling=sampling, privacy=privacy)
    return grid.parse(text, Path("p.toml"))


def refused(**kw) -> list[str]:
    with pytest.raises(grid.GridError) as e:
        parse(**kw)
    return e.value.problems


def test_grid_section_resolves_and_absent_section_keeps_old_keys():
    g = parse(privacy='clip = "inf"\nnoise_multiplier = 0.0')
    assert g.jobs[0].config["privacy"]["clip"] == "inf"
    text = BASE.format(alg="fedavg", comp="identity", sampling="uniform", privacy="")
    plain = grid.parse(text.replace("[privacy]\n", ""), Path("p.toml"))
    assert "privacy" not in plain.jobs[0].config
    assert plain.jobs[0].key != g.jobs[0].key


@pytest.mark.parametrize(
    "kw, needle",
    [
        ({"privacy": 'accountant = "pld"'}, "PLD accounts Poisson sampling only"),
        ({"alg": "ef21", "comp": "topk"}, "un-noised"),
        (
            {"comp": "topk", "privacy": "secure_aggregation = true"},
            "allowed: identity, permk, sketch",
        ),
        ({"privacy": 'clip = "inf"\nsecure_aggregation = true'}, "needs a finite clip"),
        (
            {"privacy": 'noise = "local"\nnoise_multiplier = 0.5\nadaptive_clip = true'},
            'needs noise = "central"',
        ),
        ({"privacy": "noise_multiplier = 1.0\nadaptive_clip = true"}, "allowed: < 2σ_b"),
        ({"privacy": "clip = -1"}, "privacy.clip"),
    ],
)
def test_grid_refusals_are_one_line_naming_file_and_key(kw, needle):
    problems = refused(**kw)
    assert len(problems) == 1 and "\n" not in problems[0], problems
    assert problems[0].startswith("p.toml: ") and needle in problems[0], problems


def test_pld_with_poisson_and_sampling_checks():
    assert parse(sampling="poisson", privacy='accountant = "pld"').jobs
    assert parse(privacy='accountant = "pld"\nnoise = "local"').jobs  # no sampling to account
    assert "allowed: uniform, poisson" in refused(sampling="importance")[0]


# -- secure aggregation --------------------------------------------------------------------


def test_masked_sum_decodes_to_the_plain_fixed_point_sum():
    m, k, b = 6, 50, 20
    v = torch.randn(m, k, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    r = 4.0
    delta = step(m, r, b)
    z = encode(v, delta, r, b)
    masks = pair_masks(m, k, b, seed=7)
    assert bool((masks.sum(0) % 2**b == 0).all())  # masks cancel
    assert not torch.equal((z + masks) % 2**b, z)  # what each client sends is masked
    server = decode(masked_sum(z, masks, b), delta, b)
    plain = decode(z, delta, b).sum(0)
    assert torch.equal(server, plain)
    assert float((server - v.sum(0)).abs().max()) <= m * delta / 2 + 1e-12


def test_secagg_bits_are_field_bits_plus_key_agreement():
    d, m, b = 64, 8, 24
    inner = build_compressor("permk", {}, d)
    sa = SecAgg(b, 0.0, "m")
    comp = private(inner, cfg(clip=1.0, noise_multiplier=0.0), secagg=sa)
    x = torch.randn(m, d, generator=torch.Generator().manual_seed(0))
    msg, _ = comp.compress(
        x, torch.arange(m), comp.init(m, d, torch.device("cpu")), torch.Generator().manual_seed(2)
    )
    assert torch.equal(msg.bits, torch.full((m,), b * (d // m) + key_bits(m)))
    assert key_bits(m) == 256 * (3 * m - 1)
    plain = private(inner, cfg(clip=1.0, noise_multiplier=0.0))
    ref, _ = plain.compress(
        x, torch.arange(m), plain.init(m, d, torch.device("cpu")), torch.Generator().manual_seed(2)
    )
    # fixed-point rounding: at most half a step per coordinate (the range is m·C: PermK's ×m)
    assert float((msg.value - ref.value).abs().max()) <= step(m, m * 1.0, b) / 2 + 1e-6


def test_runner_logs_epsilon_at_every_evaluation(tmp_path):
    from fedbench.runner import execute, run_spec
    from fedbench.store import Store

    text = BASE.format(alg="fedavg", comp="topk", sampling="poisson", privacy="clip = 0.5")
    text = text.replace("rounds = 3", "rounds = 4\neval_every = 2")
    g = grid.parse(text, Path("p.toml"))
    job = g.jobs[0]
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    exp = store.upsert_experiment("p", "p.toml", text)
    store.ensure_runs(exp, [run_spec(job)])
    out = execute(job, store, torch.device("cpu"))
    assert out.status == "done", out.error
    run_id = int(store.get_run(job.key)["id"])
    frame = store.metrics_frame([run_id])
    eps = frame[frame["name"] == "epsilon"].sort_values("round")
    assert eps["round"].tolist() == [0, 2, 4]
    p = PrivacyConfig.from_section(job.config["privacy"])
    want = [0.0, epsilon(p, 20, 10, 2, "poisson"), epsilon(p, 20, 10, 4, "poisson")]
    assert eps["value"].tolist() == pytest.approx(want)


def test_adaptive_clipping_moves_the_clip_inside_a_run():
    task = make_task()
    section = {**DEFAULTS, "clip": 10.0, "noise_multiplier": 0.0, "adaptive_clip": True}
    env = attach(make_env(task, participation=1.0), section)
    state, _, alg = run_rounds("fedavg", {"lr": 0.1, "local_steps": 2}, env, 5)
    # every update is far below 10, so b̄ = 1 each round: log C drops by η_C(1 − γ) = 0.1
    assert state.up.clip == pytest.approx(10.0 * math.exp(-0.1 * 5))
    assert torch.isfinite(alg.params(state)).all()


def _independent_poisson_gaussian_epsilon(q: float, sigma: float, rounds: int, delta: float):
    """ε from the integer-order RDP of the Poisson-subsampled Gaussian (Mironov, Talwar, Zhang
    2019, "Rényi differential privacy of the sampled Gaussian mechanism", the integer-α sum)
    A_α = Σ_k C(α, k) (1 − q)^(α−k) q^k exp((k² − k)/(2σ²)), evaluated with log-sum-exp,
    RDP_α = T·log A_α/(α − 1), converted with the improved conversion (Balle et al. 2020,
    Prop. 12 of arXiv 2004.00010) ε = RDP_α + log(1 − 1/α) − log(δα)/(α − 1), min over α ∈ 2..256
    (the conversion dp-accounting's RdpAccountant uses)."""
    best = math.inf
    for alpha in range(2, 257):
        terms = [
            math.lgamma(alpha + 1)
            - math.lgamma(k + 1)
            - math.lgamma(alpha - k + 1)
            + (alpha - k) * math.log1p(-q)
            + k * math.log(q)
            + (k * k - k) / (2 * sigma * sigma)
            for k in range(alpha + 1)
        ]
        top = max(terms)
        log_a = top + math.log(sum(math.exp(t - top) for t in terms))
        r = rounds * log_a / (alpha - 1)
        best = min(best, r + math.log1p(-1 / alpha) - math.log(delta * alpha) / (alpha - 1))
    return best


@pytest.mark.parametrize("q,sigma,rounds", [(0.2, 0.8, 100), (0.05, 1.1, 1000), (0.5, 2.0, 50)])
def test_poisson_rdp_epsilon_matches_an_independent_rdp_computation(q, sigma, rounds, caplog):
    """fedbench's ε (RDP, denser orders) is ≤ dp-accounting's default-orders ε and ≤ the
    integer-order ε computed here, within 1% of it, and prints no absl warnings."""
    import logging

    from dp_accounting.rdp import rdp_privacy_accountant as rdp

    n, delta = 100, 1e-5
    p = cfg(noise_multiplier=sigma, delta=delta)
    caplog.set_level(logging.WARNING)
    ours = epsilon(p, n, round(q * n), rounds, "poisson")
    assert not [r for r in caplog.records if r.name == "absl"]
    event = dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(sigma))
    before = rdp.RdpAccountant(None, dpa.NeighboringRelation.ADD_OR_REMOVE_ONE)
    before.compose(event, rounds)
    assert ours <= before.get_epsilon(delta) + 1e-12
    independent = _independent_poisson_gaussian_epsilon(q, sigma, rounds, delta)
    assert ours <= independent + 1e-9
    assert ours == pytest.approx(independent, rel=1e-2)
    assert logging.getLogger("absl").filters == []  # the silencing was scoped to the call
