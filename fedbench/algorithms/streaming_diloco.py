"""Streaming DiLoCo: fragments synchronised in turn, overlapped with compute, quantised.

"Streaming DiLoCo with overlapping communication: Towards a Distributed Free Lunch",
Douillard, Donchev, Rush, Kale, Rusu, Charles, Garrett, Shen, Szlam, Ranzato, et al., 2025,
arXiv 2501.18512; fragment offset / delay / mixing semantics as in torchft's `local_sgd.py`.

Variant: the model's layers, in parameter order, are cut into P fragments of consecutive
layers of near-equal size (the paper also studies a strided pattern). Workers keep their own
models θ_i across rounds; every worker takes part every round (participation is ignored).
Within each outer step of H inner steps (AdamW as in DiLoCo), fragment p is sent after inner
step ⌈(p+1)H/P⌉: each worker quantises Δ_i^p = θ^p − θ_i^p, the mean is quantised again
(the all-reduce's second half) and the outer Nesterov step updates θ^p. The result reaches
the workers τ inner steps later, which then mix θ_i^p ← αθ_i^p + (1 − α)θ^p. Exchanged
values are `fp32`, `bf16`, `int8`/`int4` (symmetric, one fp32 scale per message) or `fp4`
(E3M0: sign and a power of two 2^-j, j = 0..6, or 0, times one fp32 scale).
P = 1, τ = 0, α = 0, fp32 is DiLoCo. Logs `peak_bits_per_sync` and `synced_fraction`.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

from fedbench import seeding
from fedbench.algorithms.base import ALGORITHMS, Algorithm, Env, RoundLog, bits_vector
from fedbench.algorithms.diloco import (
    INNER_KEYS,
    INNER_PARAMS,
    OUTER_PARAMS,
    Inner,
    InnerState,
    inner_init,
    inner_train,
    outer_step,
)
from fedbench.compressors.base import FLOAT_BITS
from fedbench.models.base import ParamSpec
from fedbench.params import Component, Param
from fedbench.seeding import RoundRng

FORMAT_BITS = {"fp32": 32, "bf16": 16, "int8": 8, "int4": 4, "fp4": 4}


def layer_ends(spec: ParamSpec) -> list[int]:
    """End offset of every layer: parameters share a layer up to their first numeric name
    component (`blocks.3`) or, without one, their owning module (`tok`, `3` in a Sequential)."""
    ends: dict[str, int] = {}
    for name, shape, off in zip(spec.names, spec.shapes, spec.offsets, strict=True):
        parts = name.split(".")
        num = next((i for i, p in enumerate(parts) if p.isdigit()), None)
        key = ".".join(parts[: num + 1] if num is not None else parts[:-1] or parts)
        ends[key] = off + shape.numel()
    return list(ends.values())


def fragments(spec: ParamSpec, P: int) -> list[tuple[int, int]]:
    """P `[start, end)` ranges of consecutive layers, cut where the sizes come closest to
    j·d/P."""
    ends = layer_ends(spec)
    if len(ends) < P:
        raise ValueError(f"fragments = {P}: the model has only {len(ends)} layers")
    cuts, prev = [0], 0
    for j in range(1, P):
        i = min(
            range(prev + 1, len(ends) - (P - j) + 1),
            key=lambda i: abs(ends[i - 1] - j * spec.d / P),
        )
        cuts.append(ends[i - 1])
        prev = i
    return list(zip(cuts, [*cuts[1:], spec.d], strict=True))


def quantise(x: Tensor, fmt: str) -> tuple[Tensor, int]:
    """What the receiver decodes from each row of `x [k, e]`, and the bits of one row."""
    e, b = x.shape[1], FORMAT_BITS[fmt]
    if fmt == "fp32":
        return x, b * e
    if fmt == "bf16":
        return x.to(torch.bfloat16).to(x.dtype), b * e
    scale = x.abs().amax(1, keepdim=True)  # [k, 1]
    u = x / scale.clamp_min(torch.finfo(x.dtype).tiny)
    if fmt == "fp4":  # nearest power of two in log scale, 2^-7 and below → 0
        j = torch.log2(u.abs()).round().clamp(min=-7.0, max=0.0)
        q = torch.where(j < -6.0, 0.0, torch.sign(u) * torch.exp2(j))
    else:
        top = 2 ** (b - 1) - 1
        q = (u * top).round().clamp(-top, top) / top
    return q * scale, b * e + FLOAT_BITS


class StreamingState(NamedTuple):
    t: int
    theta: Tensor  # [d] θ, the outer model (fragment by fragment)
    mom: Tensor  # [d] outer momentum
    theta_i: Tensor  # [n, d] the workers' models
    inner: InnerState
    pending: tuple[tuple[int, int], ...]  # (fragment p, inner step at which θ^p arrives)


def streaming_diloco(
    local_steps: int,
    outer_lr: float,
    outer_momentum: float,
    nesterov: bool,
    fragments_p: int,
    overlap: int,
    mix: float,
    precision: str,
    **inner: Any,
) -> Algorithm:
    h, H = Inner(**{k: inner[k] for k in INNER_KEYS}), local_steps
    if not (fragments_p <= H and overlap < H):
        raise ValueError(f"need fragments ≤ H and overlap < H (H = {H})")
    send_at = [math.ceil((p + 1) * H / fragments_p) for p in range(fragments_p)]  # 1-based

    def init(x0: Tensor, env: Env, rng: RoundRng) -> StreamingState:
        theta = x0.clone()
        return StreamingState(
            0, theta, torch.zeros_like(theta), theta.expand(env.n, -1).clone(), inner_init(env), ()
        )

    def round(s: StreamingState, env: Env, rng: RoundRng) -> tuple[StreamingState, RoundLog]:
        frag = fragments(env.task.model.spec, fragments_p)
        ids, base = torch.arange(env.n, device=env.device), s.t * H
        sends = {base + k: p for p, k in enumerate(send_at)}
        pending, up, down, losses = list(s.pending), [], 0, []
        theta_i, gen, now = s.theta_i, rng(seeding.BATCHES), base
        due = [d for _, d in pending] + [k + overlap for k in sends]  # merges this round
        for step in sorted({*sends, *(d for d in due if d <= base + H)}):
            if step > now:  # train up to the event
                theta_i, loss = inner_train(env, h, s.inner, theta_i, ids, step - now, gen)
                losses.append(loss.mean() * (step - now))
                now = step
            if step in sends:  # launch fragment p's all-reduce and outer step
                p = sends[step]
                a, e = frag[p]
                q, bits = quantise(s.theta[a:e] - theta_i[:, a:e], precision)  # Δ_i^p [n, e−a]
                mean, _ = quantise(q.mean(0, keepdim=True), precision)
                s.theta[a:e], s.mom[a:e] = outer_step(
                    s.theta[a:e], s.mom[a:e], mean[0], outer_lr, outer_momentum, nesterov
                )
                up.append(bits_vector(env.n, bits, env.device))
                down += bits
                pending.append((p, step + overlap))
            for pd in [pd for pd in pending if pd[1] == step]:  # θ^p arrives: mix
                a, e = frag[pd[0]]
                theta_i[:, a:e] = s.theta[a:e] + mix * (theta_i[:, a:e] - s.theta[a:e])
                pending.remove(pd)
        bits_up = torch.cat(up)
        extra = {
            "local_loss": float(sum(losses) / H),
            "peak_bits_per_sync": float(bits_up.max()),
            "synced_fraction": sum(frag[p][1] - frag[p][0] for p in sends.values()) / env.d,
        }
        steps = torch.full((env.n,), H, device=env.device)
        log = RoundLog(bits_up, bits_vector(env.n, down, env.device), env.n, extra, steps=steps)
        return StreamingState(s.t + 1, s.theta, s.mom, theta_i, s.inner, tuple(pending)), log

    return Algorithm(init, round, lambda s: s.theta)


def _build(fragments: int, overlap: int, **kw: Any) -> Algorithm:
    return streaming_diloco(fragments_p=fragments, overlap=overlap, **kw)


# the downlink is its own: a configured compressor would never be applied
DOWNLINK_WHY = (
    "compresses its own downlink: the all-reduce's second half in `precision` (its paper's "
    "protocol)"
)

ALGORITHMS.add(
    Component(
        "streaming_diloco",
        _build,
        {
            **INNER_PARAMS,
            **OUTER_PARAMS,
            "fragments": Param(
                1, "P fragments of consecutive layers, synced in turn", "int", low=1
            ),
            "overlap": Param(
                0, "τ: inner steps between a fragment's send and its merge", "int", low=0
            ),
            "mix": Param(0.0, "α: merged fragment = α local + (1 − α) global", low=0.0, high=1.0),
            "precision": Param(
                "fp32", "number format of exchanged values", "str", choices=tuple(FORMAT_BITS)
            ),
        },
        "DiLoCo syncing P fragments in turn, overlapped by τ steps, in fp4/int4/int8/bf16/fp32",
        paper="Douillard et al. 2025 (arXiv 2501.18512)",
        requires="exact",
        extra={
            "error_feedback": False,
            "availability": False,
            "downlink": ("exact",),
            "downlink_why": DOWNLINK_WHY,
        },  # draws its own clients
    )
)
