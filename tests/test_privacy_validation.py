"""Privacy settings that cannot work are refused at validation, in one line with the numbers
(issue 23, item 12): secure aggregation whose fixed-point step rounds every update to 0,
clip = "inf" with noise (std σ·∞), and an adaptive clip_lr that overflows."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedbench import grid
from fedbench.privacy import secagg
from fedbench.privacy.config import LARGEST_UPDATE

pytest.importorskip("dp_accounting")  # every [privacy] grid needs its accountant


def parse(privacy: str, clients: int = 10, compressor: str = "identity") -> grid.Grid:
    text = (
        f'[task]\nclients = {clients}\n[algorithm]\nname = "fedavg"\n'
        f'[compressor]\nname = "{compressor}"\n[privacy]\n{privacy}\n'
    )
    return grid.parse(text, Path("p.toml"))


def refused(privacy: str, **kw: object) -> str:
    with pytest.raises(grid.GridError) as e:
        parse(privacy, **kw)  # type: ignore[arg-type]
    (line,) = e.value.problems
    assert "\n" not in line
    return line


def test_secure_aggregation_with_a_clip_that_rounds_every_update_to_zero() -> None:
    line = refused("secure_aggregation = true\nclip = 1e12")
    # Δ = m·C·(1 + 4σ)/2^(b−1) = 10·1e12·5/2^31
    assert line == (
        "p.toml: [privacy] privacy.clip = 1e+12: with secure_aggregation in Z_2^32 and 10 "
        "clients the fixed-point step is Δ = m·C·(1 + 4σ)/2^(b−1) = 2.33e+04, so every update "
        "coordinate below Δ/2 = 1.16e+04 sums as 0; allowed: clip < 8.59e+07 (Δ/2 < 1), or "
        "field_bits >= 46"
    )
    assert parse("secure_aggregation = true\nclip = 1e12\nfield_bits = 46").jobs  # the hint works
    assert "field_bits" not in refused("secure_aggregation = true\nclip = 1e30")  # b <= 62


def test_permk_gain_and_noise_enter_the_step() -> None:
    # PermK scales each block by m: R = C·m·(1 + 4σ); σ = 0: R = C·m
    line = refused(
        "secure_aggregation = true\nclip = 1e8\nnoise_multiplier = 0.0", compressor="permk"
    )
    assert "Δ = m·C·m·(1 + 4σ)/2^(b−1)" in line and f"clip < {2**32 / 100:.3g}" in line
    assert parse("secure_aggregation = true\nclip = 1e8\nnoise_multiplier = 0.0").jobs


@pytest.mark.parametrize("sigma", [0.0, 1.0])
def test_the_refusal_threshold_is_the_quantiser_s(sigma: float) -> None:
    """Just inside the allowed clip a coordinate of LARGEST_UPDATE survives the field's round
    trip; at the first refused clip it sums as 0 (secagg.encode/decode, as a run does)."""
    m, b = 10, 32
    largest = LARGEST_UPDATE * 2.0**b / (m * (1 + 4 * sigma))
    assert parse(f"secure_aggregation = true\nclip = {largest * 0.99}\nnoise_multiplier = {sigma}")
    refused(f"secure_aggregation = true\nclip = {largest}\nnoise_multiplier = {sigma}")

    def round_trip(clip: float) -> float:
        r = clip * (1 + 4 * sigma)
        delta = secagg.step(m, r, b)
        v = torch.full((1, 1), LARGEST_UPDATE, dtype=torch.float64)
        return float(secagg.decode(secagg.encode(v, delta, r, b), delta, b))

    assert round_trip(largest * 0.99) > 0
    assert round_trip(largest) == 0.0  # 1/Δ = 1/2 rounds to 0


def test_infinite_clip_with_noise_is_refused_and_without_noise_is_the_plain_run() -> None:
    line = refused('clip = "inf"\nnoise_multiplier = 0.5')
    assert line == (
        'p.toml: [privacy] privacy.clip = "inf": the Gaussian noise has std σ·C = 0.5·inf (the '
        "model is inf after one round); allowed: a finite clip, or noise_multiplier = 0 for the "
        "non-private run"
    )
    assert parse('clip = "inf"\nnoise_multiplier = 0.0').jobs
    # with secure aggregation the clip is refused once, by its own line
    assert "needs a finite clip" in refused('clip = "inf"\nsecure_aggregation = true')


def test_clip_lr_is_range_checked() -> None:
    line = refused("adaptive_clip = true\nnoise_multiplier = 0.1\nclip_lr = 1e30")
    assert line == "p.toml: [privacy] privacy.clip_lr = 1e+30: allowed: a number > 0 and <= 10"
    assert parse("adaptive_clip = true\nnoise_multiplier = 0.1\nclip_lr = 10").jobs
