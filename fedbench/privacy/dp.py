"""Client-level DP around the uplink compressor: clipping, Gaussian noise, error feedback.

DP-FedAvg: "Learning Differentially Private Recurrent Language Models", McMahan, Ramage,
Talwar, Zhang, ICLR 2018, arXiv 1710.06963 (client-level clipping of each update to norm C,
Gaussian noise of std σC on the sum). Adaptive clipping: "Differentially Private Learning
with Adaptive Clipping", Andrew, Thakkar, McMahan, Ramaswamy, NeurIPS 2021, arXiv 1905.03871
(geometric update C ← C·exp(−η_C(b̄ − γ)), b̄ = (Σ_i 1[‖Δ_i‖ ≤ C] + N(0, σ_b²))/m, σ_b = m/20,
update noise multiplier z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2) so that the pair is accounted as one
Gaussian of multiplier z).

Order with compression and error feedback (e_i: the client's error row, C(·): compressor):
- central: p_i = x_i + e_i; v_i = clip_C(C(p_i)); e_i ← p_i − v_i; the server adds
  N(0, σ²C² I) to Σ_i v_i. Clipping comes *after* compression, so the sensitivity of the sum
  is C (2C replacing a client) whatever the compressor's scaling (RandK's d/k, QSGD's norm),
  and error feedback keeps what compression and clipping removed (never the noise: the
  client does not know the server's noise). A clipped message is the compressed one times a
  scalar ≤ 1: same support, same code, same bits.
- local: v_i = clip_C(x_i) + N(0, σ²C² I) on the client; p_i = v_i + e_i; sends C(p_i);
  e_i ← p_i − C(p_i). The message is post-processing of a Gaussian mechanism, so compression
  and error feedback cannot weaken the guarantee.

Simulation of the central noise: the sum's noise N(0, σ²C² I) is drawn as m shares
N(0, σ²C²/m I), one per message row of the cohort (same distribution of the sum — the
distributed-DP form that secure aggregation needs). Methods that keep per-client rows
(DIANA's h_i, SCAFFOLD's c_i) therefore hold a share of the noise each; their server state
(the mean of the rows) sees exactly the noisy sum.

σ = 0 and C = "inf" are the wrapped compressor (and EF14) bit for bit (tested).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

from fedbench.compressors.base import Compressed, Compressor
from fedbench.privacy.config import PrivacyConfig, cohort, count_stddev
from fedbench.rows import gather_rows, memory_budget, scatter_rows, state_rows


class DPState(NamedTuple):
    inner: Any  # the wrapped compressor's state
    e: Tensor | None  # [n, d] error-feedback rows (state_rows; None without error feedback)
    clip: float  # the current clipping norm C_t (adaptive clipping moves it)


def clip_rows(v: Tensor, c: float) -> tuple[Tensor, Tensor]:
    """Each row scaled to norm ≤ c: v·min(1, c/‖v‖) `[m, d]`, and the norms ‖v_i‖ `[m]`."""
    norms = v.norm(dim=1)  # [m]
    if math.isinf(c):
        return v, norms
    scale = (c / norms.clamp_min(1e-30)).clamp(max=1.0)
    return v * scale.unsqueeze(1), norms


def update_noise_multiplier(z: float, m: int, adaptive: bool) -> float:
    """z_Δ: the update's share of z when adaptive clipping also releases a noisy count."""
    if not adaptive or z == 0.0:
        return z
    return float((z**-2 - (2 * count_stddev(m)) ** -2) ** -0.5)


def adapt_clip(
    c: float, norms: Tensor, p: PrivacyConfig, gen: torch.Generator, cohort_m: int = 0
) -> float:
    """Andrew et al.'s geometric step on log C from the noisy unclipped fraction b̄ (σ_b from
    the expected cohort `cohort_m`, or the realised one when 0)."""
    m = cohort_m or norms.numel()
    unclipped = float((norms <= c).sum())
    if p.noise_multiplier > 0:
        unclipped += count_stddev(m) * float(torch.randn((), generator=gen, device=gen.device))
    b = unclipped / m
    return c * math.exp(-p.clip_lr * (b - p.target_quantile))


def private(
    inner: Compressor,
    p: PrivacyConfig,
    error_feedback: bool = False,
    secagg: Any = None,
    cohort_m: int = 0,
) -> Compressor:
    """`inner` with clipping and noise (and EF14 inside, before the noise), per the module
    docstring; `secagg` (fedbench.privacy.secagg.SecAgg) re-encodes the message in the field.
    `cohort_m`: the expected cohort size, which sets adaptive clipping's σ_b = m/20 (the
    grid checks z < 2σ_b for it; 0 = the realised cohort)."""

    def init(rows: int, d: int, device: torch.device) -> DPState:
        # [n, d] error rows, as error_feedback's: zero pages on a CPU, host memory if too big
        e = (
            state_rows((rows, d), torch.float32, device, memory_budget())
            if error_feedback
            else None
        )
        return DPState(inner.init(rows, d, device), e, p.clip)

    def noise(shape: torch.Size, std: float, gen: torch.Generator, device: torch.device) -> Tensor:
        return torch.randn(shape, generator=gen, device=gen.device).to(device) * std

    def compress(
        x: Tensor, ids: Tensor, s: DPState, gen: torch.Generator
    ) -> tuple[Compressed, DPState]:
        m, c = x.shape[0], s.clip
        sigma = update_noise_multiplier(p.noise_multiplier, cohort_m or m, p.adaptive_clip)
        if p.noise == "central":
            q = x + gather_rows(s.e, ids, x.device) if s.e is not None else x  # p_i [m, d]
            msg, inner_state = inner.compress(q, ids, s.inner, gen)
            v, norms = clip_rows(msg.value, c)
            if s.e is not None:
                scatter_rows(s.e, ids, q - v)
            if sigma > 0:  # the server's N(0, σ²C²) on the sum, drawn as m shares
                v = v + noise(v.shape, sigma * c / math.sqrt(m), gen, v.device)
            value, bits = v, msg.bits
        else:
            v, norms = clip_rows(x, c)
            if sigma > 0:
                v = v + noise(v.shape, sigma * c, gen, v.device)
            q = v + gather_rows(s.e, ids, v.device) if s.e is not None else v
            msg, inner_state = inner.compress(q, ids, s.inner, gen)
            if s.e is not None:
                scatter_rows(s.e, ids, q - msg.value)
            value, bits = msg.value, msg.bits
        if secagg is not None:
            value, bits = secagg.encode_round(value, c, msg)
        new_c = adapt_clip(c, norms, p, gen, cohort_m) if p.adaptive_clip else c
        return Compressed(value, bits), DPState(inner_state, s.e, new_c)

    return Compressor(f"dp({inner.name})", init, compress, inner.kind, inner.param)


def attach(env: Any, section: Any) -> Any:
    """The Env of a job with a [privacy] section: `uplink` (what EF21/DIANA-type methods and
    SCAFFOLD's Δc use) and `update_uplink` (what `update_compressor` hands to FedAvg-type
    methods: error feedback inside, when the grid asks for it) both private."""
    from fedbench.privacy.secagg import SecAgg, field_gain

    p = PrivacyConfig.from_section(section)
    gain = field_gain(env.uplink.name)
    sa = SecAgg(p.field_bits, p.noise_multiplier, gain) if p.secure_aggregation else None
    m = cohort(env.n, env.participation)
    return env._replace(
        uplink=private(env.uplink, p, False, sa, m),
        update_uplink=private(env.uplink, p, env.error_feedback, sa, m),
    )
