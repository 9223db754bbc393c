"""Secure aggregation by pairwise masks, simulated in the field Z_{2^b}.

"Practical Secure Aggregation for Privacy-Preserving Machine Learning", Bonawitz, Ivanov,
Kreuter, Marcedone, McMahan, Patel, Ramage, Segal, Seth, CCS 2017 (eprint 2017/281).
Compatibility with compression: "Federated Learning is Better with Non-Homomorphic
Encryption", Burlachenko, Alrowithi, Albalawi, Richtárik, arXiv 2312.02074 (PermK's disjoint
blocks need no homomorphic addition).

Each client encodes its message in fixed point, z_i = round(v_i/Δ) mod 2^b, and sends
y_i = z_i + Σ_{j>i} PRG(s_ij) − Σ_{j<i} PRG(s_ji) mod 2^b; the masks cancel in Σ_i y_i, so the
server learns Σ_i z_i mod 2^b only, and decodes Δ·(its signed representative). The step Δ is
fixed per round so that m values of |v| ≤ R cannot wrap: Δ = m·R / 2^(b−1), with
R = C·gain·(1 + 4σ) (C the clip, gain the compressor's scaling — m for PermK — and a
four-standard-deviation margin for Gaussian noise); values beyond ±R are clamped.

Only sums that can be formed coordinate-wise in the field are allowed (identity, PermK,
count sketch with a round-wide hash: `config.SECAGG_COMPRESSORS`); top-k, RandK with
per-client positions and quantisers with per-client scales are refused by the grid.

Bits per client and round (both conventions): b per field element sent (the float count of
the compressed message: its 32-bit words) plus the protocol's key traffic, with 256-bit keys
K: 2K advertised public keys, 2K(m−1) encrypted Shamir shares of the mask seed and the
secret key to every peer, K(m−1) shares revealed at unmasking: K(3m − 1) (the simplified
honest-but-curious count without dropouts; the exact message framing is not modelled).

Simulation: the loop uses each client's decoded fixed-point row (what the client itself
holds; their sum is exactly the decoded masked sum, `masked_sum` / tested), so per-client
state of EF21/DIANA-type methods stays consistent. Deviation: the count sketch is encoded
after de-sketching (d-space rounding), not in sketch space.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fedbench import seeding
from fedbench.compressors.base import FLOAT_BITS

KEY_BITS = 256
GAIN = {"permk": "m"}


def key_bits(m: int) -> int:
    """Key agreement and unmasking traffic of one client in one round."""
    return KEY_BITS * (3 * m - 1)


def step(m: int, r: float, b: int) -> float:
    """Fixed-point step Δ: m values in [−R, R] sum inside the signed range of Z_{2^b}."""
    return m * r / 2 ** (b - 1)


def encode(v: Tensor, delta: float, r: float, b: int) -> Tensor:
    """z = round(clamp(v, ±R)/Δ) mod 2^b, int64 `[m, k]`."""
    z = torch.round(v.clamp(-r, r) / delta).to(torch.int64)
    return torch.remainder(z, 2**b)


def decode(z: Tensor, delta: float, b: int) -> Tensor:
    """The signed representative of z mod 2^b, times Δ."""
    z = torch.remainder(z, 2**b)
    signed = torch.where(z >= 2 ** (b - 1), z - 2**b, z)
    return signed.to(torch.float64) * delta


def pair_masks(m: int, k: int, b: int, seed: int) -> Tensor:
    """Each client's total mask `[m, k]`: Σ_{j>i} PRG(s_ij) − Σ_{j<i} PRG(s_ji) mod 2^b, with
    PRG(s_ij) a generator keyed by the pair (the agreed seed)."""
    out = torch.zeros(m, k, dtype=torch.int64)
    mod = 2**b
    for i in range(m):  # O(m²) pairs: the protocol's cost, test-sized here
        for j in range(i + 1, m):
            g = torch.Generator().manual_seed(seeding.mix(seed, i * m + j, "secagg"))
            r = torch.randint(0, 2**31, (k,), generator=g, dtype=torch.int64)
            r = (r * 2**31 + torch.randint(0, 2**31, (k,), generator=g)) % mod
            out[i] = (out[i] + r) % mod
            out[j] = (out[j] - r) % mod
    return out


def masked_sum(z: Tensor, masks: Tensor, b: int) -> Tensor:
    """What the server computes: Σ_i (z_i + mask_i) mod 2^b `[k]` (the masks cancel)."""
    y = torch.remainder(z + masks, 2**b)  # what each client sends
    acc = torch.zeros(z.shape[1], dtype=torch.int64)
    for row in y:
        acc = torch.remainder(acc + row, 2**b)
    return acc


class SecAgg:
    def __init__(self, field_bits: int, noise_multiplier: float = 0.0, gain: str = "") -> None:
        self.b = field_bits
        self.sigma = noise_multiplier
        self.gain = gain

    def encode_round(self, value: Tensor, clip: float, msg: Any) -> tuple[Tensor, Tensor]:
        """Each row as the field carries it (fixed-point round trip) and its bits."""
        m = value.shape[0]
        gain = float(m) if self.gain == "m" else 1.0
        r = clip * gain * (1.0 + 4.0 * self.sigma)
        delta = step(m, r, self.b)
        z = encode(value.double(), delta, r, self.b)
        out = decode(z, delta, self.b).to(value.dtype)
        words = torch.div(msg.bits, FLOAT_BITS, rounding_mode="floor")
        bits = words * self.b + key_bits(m)
        return out, bits.to(torch.int64)


def field_gain(compressor: str) -> str:
    return GAIN.get(compressor, "")
