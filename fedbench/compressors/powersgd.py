"""PowerSGD low-rank compression (Vogels, Karimireddy, Jaggi, "PowerSGD: Practical Low-Rank
Gradient Compression for Distributed Optimization", NeurIPS 2019, arXiv 1905.13727),
Algorithm 1 (rank r, one power iteration, warm start); per-client variant.

Every parameter tensor with ≥ 2 dimensions is a matrix M ∈ R^{a×b} (conv kernels
[out, in·k·k]); 1-D tensors (biases, norms) are sent uncompressed. With Q ∈ R^{b×r}:
P = M Q, P̂ = orthonormal basis of P (reduced QR), Q ← Mᵀ P̂, the receiver gets P̂ Qᵀ = P̂P̂ᵀM.
Variant: the paper all-reduces P and Q so that the compressor is linear over workers; here
each client row compresses its own message with its own P̂, Q (what a client-server upload can
do). Q is kept per client row (warm start); a client's first Q is drawn N(0, 1) from the
round's generator, shared by all clients starting that round. r is capped at min(a, b).
P̂P̂ᵀ is a projection, so ‖C(M) − M‖ ≤ ‖M‖ always; with a random Q the expected captured
energy is ≥ r/b of ‖M‖² (kind contractive, δ = min over matrices of r/b; warm starts are
usually better but carry no guarantee). The paper uses it with error feedback: set
`[compressor] error_feedback = true` (it is not built in).
Bits (both conventions): 32·r(a + b) per matrix + 32 per uncompressed value.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from fedbench.compressors.base import (
    COMPRESSORS,
    FLOAT_BITS,
    Compressed,
    Compressor,
    Shapes,
    constant_bits,
    layer_slices,
)
from fedbench.params import Component, Param
from fedbench.rows import gather_rows, memory_budget, scatter_rows, state_rows


class PowerSGDState(NamedTuple):
    # [n, Σ_ℓ b_ℓ·r_ℓ] warm-start factors of every client, matrices side by side: persistent
    # client rows (fedbench.rows.state_rows: host memory when they do not fit the device,
    # mapped zero pages on the host, so only sampled clients' rows cost memory or checkpoint)
    Q: Tensor
    started: Tensor  # [n] bool: the client has a warm-start Q (n bytes, beside Q)


class Matrix(NamedTuple):
    cols: slice  # where M lives in the flat vector
    a: int  # rows
    b: int  # columns
    r: int  # rank used
    q: slice  # where its Q lives in the state


def matrices(shapes: Shapes, rank: int) -> tuple[list[Matrix], int]:
    """The compressed matrices and the total length of their Q factors."""
    out, o = [], 0
    for shape, cols in zip(shapes, layer_slices(shapes), strict=True):
        if len(shape) >= 2:
            a, b = shape[0], math.prod(shape[1:])
            r = min(rank, a, b)
            out.append(Matrix(cols, a, b, r, slice(o, o + b * r)))
            o += b * r
    return out, o


def project(M: Tensor, Q: Tensor) -> tuple[Tensor, Tensor]:
    """One power iteration for a stack `M [m, a, b]`, `Q [m, b, r]`: (P̂ Qᵀ, new Q)."""
    P_hat = torch.linalg.qr(M @ Q).Q  # [m, a, r] orthonormal columns
    Q_new = M.transpose(1, 2) @ P_hat  # [m, b, r]
    return P_hat @ Q_new.transpose(1, 2), Q_new


def powersgd(d: int, shapes: Shapes = (), rank: int = 2, values_only: bool = False) -> Compressor:
    mats, q_len = matrices(shapes, rank)
    dense = d - sum(mt.a * mt.b for mt in mats)
    bits = FLOAT_BITS * (sum(mt.r * (mt.a + mt.b) for mt in mats) + dense)
    delta = min([mt.r / mt.b for mt in mats], default=1.0)

    def init(rows: int, d: int, device: torch.device) -> PowerSGDState:
        Q = state_rows((rows, q_len), torch.float32, device, memory_budget())  # [n, q_len]
        return PowerSGDState(Q, torch.zeros(rows, dtype=torch.bool, device=Q.device))

    def compress(
        x: Tensor, ids: Tensor, state: PowerSGDState, gen: torch.Generator
    ) -> tuple[Compressed, PowerSGDState]:
        m = x.shape[0]
        fresh = torch.randn(q_len, generator=gen, device=gen.device).to(x)  # shared init
        host_ids = ids.to(state.started.device)
        started = state.started[host_ids].to(x.device).unsqueeze(1)  # [m, 1]
        Q_all = torch.where(started, gather_rows(state.Q, ids, x.device).to(x), fresh)  # [m, q_len]
        value = x.clone()  # vectors pass through uncompressed
        for mt in mats:
            M = x[:, mt.cols].view(m, mt.a, mt.b)
            approx, Q_new = project(M, Q_all[:, mt.q].view(m, mt.b, mt.r))
            value[:, mt.cols] = approx.reshape(m, -1)
            Q_all[:, mt.q] = Q_new.reshape(m, -1)
        scatter_rows(state.Q, ids, Q_all)
        state.started[host_ids] = True
        return Compressed(value, constant_bits(m, bits, x.device)), state

    return Compressor("powersgd", init, compress, "contractive", delta)


COMPRESSORS.add(
    Component(
        "powersgd",
        powersgd,
        {"rank": Param(2, "rank r of every matrix (capped at its smaller side)", "int", low=1)},
        "rank-r power iteration per weight matrix, warm start: 32·r(a+b) per matrix + dense rest",
        paper="Vogels, Karimireddy, Jaggi, NeurIPS 2019 (arXiv 1905.13727)",
        kind="contractive",
        extra={"shapes": True},
    )
)
