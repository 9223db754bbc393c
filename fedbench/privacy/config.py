"""The `[privacy]` grid section and the checks that keep its guarantee honest.

An absent section is the non-private run (old job keys unchanged: the section only enters a
job's config, hence its key, when the grid names it). Every refusal is one line starting with
the offending "section.field", which `fedbench.grid` prefixes with the file and where the value
came from.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedbench.params import Param

NOISES = ("central", "local")
ACCOUNTANTS = ("rdp", "pld")

PRIVACY_PARAMS: dict[str, Param] = {
    "clip": Param(
        1.0,
        'client-level clipping norm C of each uplink message ("inf" = no clipping)',
        "float_or_str",
        choices=("inf",),
        low=0.0,
        low_open=True,
    ),
    "noise_multiplier": Param(
        1.0, "σ: Gaussian noise std = σ·C on the sum (central) or on each message (local)", low=0.0
    ),
    "delta": Param(
        1e-5, "δ at which ε is reported", low=0.0, high=1.0, low_open=True, high_open=True
    ),
    "noise": Param(
        "central",
        "central: the server's noise on the sum (DP-FedAvg); local: each client noises its message",
        "str",
        choices=NOISES,
    ),
    "adaptive_clip": Param(
        False,
        "track the target_quantile of update norms (Andrew et al., geometric update)",
        "bool",
    ),
    "target_quantile": Param(
        0.5,
        "adaptive clipping: target unclipped quantile γ",
        low=0.0,
        high=1.0,
        high_open=True,
        low_open=True,
    ),
    "clip_lr": Param(  # C·exp(η_C·...) overflows a float long before η_C = 10 would be sensible
        0.2, "adaptive clipping: learning rate η_C of log C", low=0.0, low_open=True, high=10.0
    ),
    "accountant": Param(
        "rdp", "privacy accountant of dp-accounting: rdp | pld", "str", choices=ACCOUNTANTS
    ),
    "secure_aggregation": Param(
        False, "pairwise-mask SecAgg: the server sees only the sum, computed in Z_{2^b}", "bool"
    ),
    "field_bits": Param(
        32, "SecAgg: b, the field Z_{2^b} of each coordinate", "int", low=8, high=62
    ),
}

# methods whose uplink is model updates / gradients sent through env.uplink (or
# update_compressor): messages each client sends per round (SCAFFOLD: Δy and Δc)
PRIVATE_METHODS: dict[str, int] = {
    "fedavg": 1,
    "fedprox": 1,
    "scaffold": 2,
    "diana": 1,
    "dcgd": 1,
    "diff2": 1,
}
WHY_NOT = {
    "ef21": "its g_i⁰ = ∇f_i(x⁰) is sent dense and un-noised at initialisation",
}
# compressors whose messages can be summed in the field without revealing one client's message
SECAGG_COMPRESSORS = ("identity", "permk", "sketch")


def messages_per_round(algorithm: str) -> int:
    return PRIVATE_METHODS.get(algorithm, 1)


@dataclass(frozen=True)
class PrivacyConfig:
    clip: float  # C (math.inf: no clipping)
    noise_multiplier: float  # σ
    delta: float
    noise: str  # central | local
    adaptive_clip: bool
    target_quantile: float
    clip_lr: float
    accountant: str
    secure_aggregation: bool
    field_bits: int

    @staticmethod
    def from_section(sec: Mapping[str, Any]) -> PrivacyConfig:
        clip = math.inf if sec["clip"] == "inf" else float(sec["clip"])
        return PrivacyConfig(
            clip,
            float(sec["noise_multiplier"]),
            float(sec["delta"]),
            str(sec["noise"]),
            bool(sec["adaptive_clip"]),
            float(sec["target_quantile"]),
            float(sec["clip_lr"]),
            str(sec["accountant"]),
            bool(sec["secure_aggregation"]),
            int(sec["field_bits"]),
        )


def cohort(n: int, participation: float) -> int:
    """m of uniform sampling (`fedbench.algorithms.base.cohort_size`)."""
    return max(1, min(n, round(participation * n)))


def count_stddev(m: int) -> float:
    """σ_b of the noisy clipped count: m/20, Andrew et al.'s recommended setting."""
    return m / 20.0


def check(cfg: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Refusals of a resolved job with a [privacy] section, one line each."""
    sec = cfg["privacy"]
    p = PrivacyConfig.from_section(sec)
    out: list[str] = []
    if importlib.util.find_spec("dp_accounting") is None:
        out.append(
            f'privacy.accountant = "{p.accountant}": ε needs Google\'s dp-accounting; '
            "pip install 'fedbench[privacy]'"
        )
    a, up, task = cfg["algorithm"], cfg["compressor"], cfg["task"]
    name = a["name"]
    if name not in PRIVATE_METHODS:
        why = WHY_NOT.get(name, "its uplink is not a clipped update the privacy wrapper sees")
        out.append(
            f'algorithm.name = "{name}": [privacy] cannot guarantee DP here ({why}); '
            f"allowed: {', '.join(PRIVATE_METHODS)}"
        )
    if a["sampling"] not in ("uniform", "poisson"):
        out.append(
            f'algorithm.sampling = "{a["sampling"]}": [privacy] needs data-independent sampling '
            "the accountant models; allowed: uniform, poisson"
        )
    m, n = cohort(task["clients"], a["participation"]), task["clients"]
    if p.accountant == "pld" and p.noise == "central" and a["sampling"] == "uniform" and m < n:
        out.append(
            'privacy.accountant = "pld": PLD accounts Poisson sampling only; use '
            'accountant = "rdp" or algorithm.sampling = "poisson"'
        )
    if p.adaptive_clip:
        if p.noise != "central":
            out.append(
                'privacy.adaptive_clip = true: needs noise = "central" (the clipped '
                "count is aggregated and noised by the server)"
            )
        if math.isinf(p.clip):
            out.append('privacy.adaptive_clip = true: needs a finite initial clip, not "inf"')
        if p.noise_multiplier > 0 and p.noise_multiplier >= 2 * count_stddev(m):
            out.append(
                f"privacy.noise_multiplier = {p.noise_multiplier}: adaptive clipping splits z "
                f"between the update and the count (σ_b = m/20 = {count_stddev(m):g}); "
                f"allowed: < 2σ_b = {2 * count_stddev(m):g}"
            )
    if p.secure_aggregation:
        if up["name"] not in SECAGG_COMPRESSORS:
            out.append(
                f'compressor.name = "{up["name"]}": with secure_aggregation the sum must be '
                "formed in the field without revealing each message (per-client indices or "
                f"scales); allowed: {', '.join(SECAGG_COMPRESSORS)}"
            )
        elif up["name"] == "sketch" and not up.get("shared", True):
            out.append(
                "compressor.shared = false: with secure_aggregation every client must use the "
                "round's shared sketch (sketches add up only then); allowed: true"
            )
        if math.isinf(p.clip):
            out.append(
                'privacy.clip = "inf": secure_aggregation needs a finite clip (the '
                "field's fixed-point range)"
            )
        else:
            out.extend(_secagg_resolution(p, m, up["name"]))
    refused_inf = p.secure_aggregation or p.adaptive_clip  # their lines already name the clip
    if math.isinf(p.clip) and p.noise_multiplier > 0 and not refused_inf:
        out.append(
            f'privacy.clip = "inf": the Gaussian noise has std σ·C = {p.noise_multiplier:g}·inf '
            "(the model is inf after one round); allowed: a finite clip, or noise_multiplier = 0 "
            "for the non-private run"
        )
    return out


# a coordinate of one round's model update this large is already far beyond any trainable
# model's; a field step that rounds every smaller value to 0 sums every update as 0
LARGEST_UPDATE = 1.0


def _secagg_resolution(p: PrivacyConfig, m: int, compressor: str) -> list[str]:
    """Refuse a fixed-point step so coarse that updates round to 0: in `fedbench.privacy.secagg`
    Δ = m·R/2^(b−1) with R = C·gain·(1 + 4σ), and values below Δ/2 encode as 0."""
    gain = float(m) if compressor == "permk" else 1.0  # secagg.GAIN
    spread = m * gain * (1.0 + 4.0 * p.noise_multiplier)  # Δ/2 = C·spread/2^b
    half_step = p.clip * spread / 2.0**p.field_bits
    if half_step < LARGEST_UPDATE:
        return []
    largest_clip = LARGEST_UPDATE * 2.0**p.field_bits / spread
    bits = math.floor(math.log2(p.clip * spread / LARGEST_UPDATE)) + 1  # 2^b > C·spread
    more = f", or field_bits >= {bits}" if bits <= 62 else ""
    return [
        f"privacy.clip = {p.clip:g}: with secure_aggregation in Z_2^{p.field_bits} and {m} "
        f"clients the fixed-point step is Δ = m·C·{'m·' if gain > 1 else ''}(1 + 4σ)/2^(b−1) = "
        f"{2 * half_step:.3g}, so every update coordinate below Δ/2 = {half_step:.3g} sums as 0; "
        f"allowed: clip < {largest_clip:.3g} (Δ/2 < {LARGEST_UPDATE:g}){more}"
    ]
