"""Error feedback (EF14): Seide et al., Interspeech 2014; Stich et al., NeurIPS 2018; Karimireddy
et al., ICML 2019.

Wraps a compressor C with one error row e_i per client: p_i = x_i + e_i, send C(p_i),
e_i ← p_i − C(p_i). What is not sent this round is added to the next message, so nothing is
lost, only delayed. The error rows are updated in place (an [n, d] tensor is not copied every
round). They are persistent per-client rows (`fedbench.rows.state_rows`, as an algorithm's
`client_rows`): on an accelerator when they fit the memory budget, else in host memory with the
cohort's rows gathered and scattered; on the host from LAZY_ZERO_BYTES up they are mapped zero
pages, so the rows of clients never sampled are neither zeroed, nor held in memory, nor
written into checkpoints (10⁶ clients × d = 4,554: 18 GB dense); the numbers are those of
dense zeros, bit for bit. The message is the inner compressor's: its bits, in the inner
compressor's bit convention ("full" or "values"), pass through unchanged.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from fedbench.compressors.base import Compressed, Compressor
from fedbench.rows import gather_rows, memory_budget, scatter_rows, state_rows


class EFState(NamedTuple):
    e: Tensor  # [n, d] error of every client (state_rows: maybe host memory)
    inner: object  # state of the wrapped compressor


def error_feedback(inner: Compressor) -> Compressor:
    def init(rows: int, d: int, device: torch.device) -> EFState:
        e = state_rows((rows, d), torch.float32, device, memory_budget())  # [n, d] zeros
        return EFState(e, inner.init(rows, d, device))

    def compress(
        x: Tensor, ids: Tensor, state: EFState, gen: torch.Generator
    ) -> tuple[Compressed, EFState]:
        p = x + gather_rows(state.e, ids, x.device)  # [m, d]
        c, inner_state = inner.compress(p, ids, state.inner, gen)
        scatter_rows(state.e, ids, p - c.value)
        return c, EFState(state.e, inner_state)

    return Compressor(f"ef({inner.name})", init, compress, inner.kind, inner.param)
