"""Count sketch with de-sketching by the transpose (sketch-and-desketch first-order methods).

"Sketching for First Order Method: Efficient Algorithm for Low-Bandwidth Channel and
Vulnerability", Song, Wang, Yu, Zhang, ICML 2023, arXiv 2210.08371: a client sends R·g with a
sketching matrix R ∈ R^{s×d} shared by everyone (a common seed), the server de-sketches with
Rᵀ; E[RᵀR] = I makes RᵀR·g an unbiased estimate of g.

Variant: R = (1/√r)[S_1; …; S_r] stacks r count-sketch matrices of width w (s = r·w):
S_j[h_j(i), i] = σ_j(i) with hash h_j: [d] → [w] and signs σ_j(i) = ±1, drawn fresh each
round from the shared generator. `shared = true` is the paper's setting: the same R for every
client of the round, so sketches add, Σ_i R g_i = R Σ_i g_i, which secure aggregation needs.
Default `shared = false`: each client draws its own R_i (still regenerable by the server from
the seed), so the cohort's errors are independent and average out in the mean, as RandK's
do. A shared sketch's error does not average out: methods with momentum on the aggregate
(diloco's outer Nesterov, mofedsam) diverge with it in the registry sweep. De-sketch:
ĝ_i = (1/r) Σ_j σ_j(i)·(S_j g)[h_j(i)]. With independent uniform hashes and signs,
E ĝ = g and E‖ĝ − g‖² = (d − 1)/(r·w)·‖g‖², so `kind` = "unbiased" with ω = (d − 1)/(r·w).
The DP variant (the paper's remedy to gradient leakage: Gaussian noise on the gradient
information) is this compressor under a `[privacy]` section (fedbench.privacy.dp): clip, noise,
then sketch (local), or sketch, clip, and the server's noise (central).

Bits: the r·w sketch values, 32 each, both conventions (the hashes come from the shared seed).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fedbench.compressors.base import (
    COMPRESSORS,
    FLOAT_BITS,
    Compressed,
    Compressor,
    State,
    constant_bits,
    no_state,
)
from fedbench.params import Component, Param


def sketch_width(d: int, ratio: float, width: int) -> int:
    """w: `width` when given (> 0), else round(ratio·d), in [1, d]."""
    return max(1, min(d, width if width > 0 else round(ratio * d)))


def hashes(k: int, d: int, rows: int, w: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """k hashes h [k, r, d] (buckets) and signs σ [k, r, d] (±1.0): k = 1 is the round's
    shared sketch, k = m one per client."""
    h = torch.randint(0, w, (k, rows, d), generator=gen, device=gen.device)
    s = torch.randint(0, 2, (k, rows, d), generator=gen, device=gen.device).float() * 2 - 1
    return h, s


def sketch_rows(x: Tensor, h: Tensor, s: Tensor, w: int) -> Tensor:
    """S_j x for every row of x `[m, d]` and every sketch row j: `[m, r, w]` (unscaled);
    h, s `[1 or m, r, d]`."""
    m, r = x.shape[0], h.shape[1]
    table = torch.zeros(m, r, w, dtype=x.dtype, device=x.device)
    return table.scatter_add_(2, h.expand(m, r, -1), x.unsqueeze(1) * s)  # [m, r, w]


def desketch_rows(table: Tensor, h: Tensor, s: Tensor) -> Tensor:
    """(1/r) Σ_j S_jᵀ table_j `[m, d]`."""
    m, r = table.shape[0], h.shape[1]
    return (table.gather(2, h.expand(m, r, -1)) * s).mean(1)


def sketch(
    d: int,
    rows: int = 4,
    ratio: float = 0.05,
    width: int = 0,
    shared: bool = False,
    values_only: bool = False,
) -> Compressor:
    w = sketch_width(d, ratio, width)
    bits = FLOAT_BITS * rows * w  # both conventions: no positions are sent

    def compress(
        x: Tensor, ids: Tensor, state: State, gen: torch.Generator
    ) -> tuple[Compressed, State]:
        h, s = hashes(1 if shared else x.shape[0], d, rows, w, gen)
        h, s = h.to(x.device), s.to(x.device)
        value = desketch_rows(sketch_rows(x, h, s, w), h, s)  # [m, d]
        return Compressed(value, constant_bits(x.shape[0], bits, x.device)), state

    return Compressor("sketch", no_state, compress, "unbiased", (d - 1) / (rows * w))


COMPRESSORS.add(
    Component(
        "sketch",
        sketch,
        {
            "rows": Param(4, "count-sketch rows r (independent hashes, averaged)", "int", low=1),
            "ratio": Param(
                0.05,
                "buckets per row w as a fraction of d (used when width = 0): r·w values sent",
                low=0.0,
                high=1.0,
                low_open=True,
            ),
            "width": Param(0, "buckets w per row; 0 means use ratio", "int", low=0),
            "shared": Param(
                False,
                "one sketch R for the whole cohort (the paper; sketches add up, secure "
                "aggregation works) or one per client (errors average out over the cohort)",
                "bool",
            ),
        },
        "count sketch R·g with a shared per-round hash, de-sketched by Rᵀ: 32·r·w bits",
        paper="Song, Wang, Yu, Zhang, ICML 2023 (arXiv 2210.08371)",
        kind="unbiased",
    )
)
