"""PermK: correlated sparsification (Szlendak, Tyurin, Richtárik, "Permutation Compressors for
Provably Faster Distributed Nonconvex Optimization", ICLR 2022, arXiv 2110.03300), Def. of PermK
for d ≥ n and its dual for n ≥ d.

The workers are the m rows of one call (position j = 0..m−1 in the cohort, not the client id:
the blocks must tile the coordinates of *these* senders). One permutation π of D slots is drawn
per call from the generator (shared randomness: both ends regenerate it, no indices sent).
- D ≥ m: the d coordinates are padded with dummy slots to D = m·⌈d/m⌉; row j gets the q = D/m
  slots π[jq : (j+1)q] and sends its real coordinates there scaled by m.
- D < m (m > d, dual construction): D is the smallest divisor of m with D ≥ d (dummy slots
  again), q = m/D rows share each slot; row j gets slot π[⌊j/q⌋] scaled by D.
Either way every real coordinate is sent by rows whose scales add to m, so for identical inputs
(1/m) Σ_j C_j(x) = x exactly (up to the rounding of m·x/m).

ω. PermK is not a family of independent compressors: what the paper proves is the
AB-inequality E‖(1/m) Σ_j C_j(a_j) − ā‖² ≤ A (1/m) Σ_j ‖a_j‖² − B ‖ā‖² with A = B = 1 (its
Lemma on PermK, d ≥ m, m | d), the constant MARINA's and DASHA's correlated-compressor analyses
use in place of ω/n. `param`, though, is the per-client constant that fedbench's methods read
(DASHA's a = 1/(2ω + 1), DIANA's shift rate, theory steps): each C_j alone is unbiased with
E‖C_j(x) − x‖² = (s − 1)‖x‖² exactly, s = min(m, D) the scale (a real coordinate lands in row
j's slots with probability 1/s and is multiplied by s). So ω depends on the cohort size m:
`permk(d, clients=n)` declares the largest exact value over the cohorts a job of n clients can
form, max_{m ≤ n} min(m, D(d, m)) − 1, which is n − 1 whenever n ≤ d (the paper's regime, and
every DASHA job: full participation); without `clients` it declares d − 1, the value for
m = d. (It used to declare d − 1 for every job: DASHA's automatic a was then ≈ 1/(2d) instead
of 1/(2n − 1).)
Bits: 32 per real coordinate a row sends (⌈d/m⌉ or ⌊d/m⌋, 1 or 0 in the dual), both conventions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fedbench.compressors.base import (
    COMPRESSORS,
    FLOAT_BITS,
    Compressed,
    Compressor,
    State,
    no_state,
)
from fedbench.params import Component


def slots(d: int, m: int) -> int:
    """D: d padded to a multiple of m (d ≥ m) or to the smallest divisor of m ≥ d (d < m)."""
    if d >= m:
        return m * math.ceil(d / m)
    return next(k for k in range(d, m + 1) if m % k == 0)


def permk_assignment(d: int, m: int, gen: torch.Generator) -> tuple[Tensor, Tensor, float]:
    """(row of each slot-owner pair [m, q] of coordinates, mask of real ones, scale)."""
    big = slots(d, m)
    perm = torch.randperm(big, generator=gen, device=gen.device)  # [D] shared permutation
    if big >= m:
        coords = perm.view(m, big // m)  # [m, q]
        scale = float(m)
    else:
        coords = perm[torch.arange(m, device=perm.device) // (m // big)].unsqueeze(1)  # [m, 1]
        scale = float(big)
    return coords, coords < d, scale


def omega(d: int, m: int) -> int:
    """Exact per-row ω of one call with m rows: s − 1, s = min(m, D) the scale of a row."""
    return min(m, slots(d, m)) - 1


def declared_omega(d: int, clients: int | None) -> float:
    """ω valid for every cohort of at most `clients` rows (exact for n ≤ d: n − 1)."""
    if clients is None:
        return float(max(d - 1, 0))
    return float(max(omega(d, m) for m in range(1, max(clients, 1) + 1)))


def permk(d: int, values_only: bool = False, clients: int | None = None) -> Compressor:
    def compress(
        x: Tensor, ids: Tensor, state: State, gen: torch.Generator
    ) -> tuple[Compressed, State]:
        m = x.shape[0]
        coords, real, scale = permk_assignment(d, m, gen)
        coords, real = coords.to(x.device), real.to(x.device)
        idx = torch.where(real, coords, 0)  # dummy slots point at 0 and carry nothing
        vals = x.gather(1, idx) * scale * real  # [m, q]
        value = torch.zeros_like(x).scatter_add_(1, idx, vals)
        bits = FLOAT_BITS * real.sum(1).to(torch.int64)
        return Compressed(value, bits), state

    return Compressor("permk", no_state, compress, "unbiased", declared_omega(d, clients))


COMPRESSORS.add(
    Component(
        "permk",
        permk,
        {},
        "one shared permutation per round, row j of the cohort sends its block ×m: 32·d/m bits",
        paper="Szlendak, Tyurin, Richtárik, ICLR 2022 (arXiv 2110.03300)",
        kind="unbiased",
        extra={"clients": True},  # its ω depends on the number of clients (build_compressor)
    )
)
