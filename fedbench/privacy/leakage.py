"""A gradient-inversion probe: how much of a client's sample its uplink message reveals.

DLG: "Deep Leakage from Gradients", Zhu, Liu, Han, NeurIPS 2019, arXiv 1906.08935; label
inference of iDLG: "iDLG: Improved Deep Leakage from Gradients", Zhao, Mopuri, Bilen 2020,
arXiv 2001.02610 (with cross-entropy, the output bias's gradient p − onehot(y) is negative
only at the true label); cosine matching: Geiping et al., "Inverting Gradients", NeurIPS
2020, arXiv 2003.14053 (invariant to the message's scale, so clipping does not blind it).

One client holds one sample (x, y) and sends the gradient at the model w through the
privacy wrapper's local order — clip to C, Gaussian noise σC, then the compressor — as
`fedbench.privacy.dp` does with `noise = "local"`. The attacker knows w, the compressor's
support (its indices travel with the message) and the model; it infers ŷ, then optimises a
dummy x̂ so that ∇_w ℓ(x̂, ŷ) matches the message on its support (1 − cosine, Adam). Reported:
MSE and PSNR = 10 log10(range²/MSE) of x̂ against x (range: the dataset's value range), and
whether ŷ = y.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from fedbench.compressors import Compressor
from fedbench.privacy.dp import clip_rows


class Leak(NamedTuple):
    mse: float
    psnr: float
    label_ok: bool


def sample_grad(model: Any, w: Tensor, x: Tensor, y: Tensor, create_graph: bool) -> Tensor:
    """∇_w ℓ(model_w(x), y) `[d]` for one sample x `[*shape]`, y `[]`."""
    if not w.requires_grad:
        w = w.detach().requires_grad_()
    z = model.logits(w.unsqueeze(0), x.unsqueeze(0).unsqueeze(0))[0, 0]  # [C]
    loss = F.cross_entropy(z.unsqueeze(0), y.view(1))
    (g,) = torch.autograd.grad(loss, w, create_graph=create_graph)
    return g


def message(
    g: Tensor, clip: float, sigma: float, comp: Compressor | None, gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    """The client's message `[d]` (clip → noise → compress) and its support mask `[d]`."""
    v, _ = clip_rows(g.unsqueeze(0), clip)
    if sigma > 0:
        scale = clip if math.isfinite(clip) else 1.0
        v = v + torch.randn(v.shape, generator=gen) * sigma * scale
    if comp is None:
        return v[0], torch.ones_like(v[0], dtype=torch.bool)
    msg, _ = comp.compress(
        v, torch.zeros(1, dtype=torch.int64), comp.init(1, v.shape[1], v.device), gen
    )
    return msg.value[0], msg.value[0] != 0


def invert(
    model: Any,
    w: Tensor,
    msg: Tensor,
    support: Tensor,
    shape: tuple[int, ...],
    classes: int,
    steps: int,
    gen: torch.Generator,
) -> tuple[Tensor, int]:
    """(x̂ `[*shape]`, ŷ): iDLG's label from the output bias's gradient, then cosine matching."""
    bias = msg[-classes:]  # the output layer's bias is the last parameter
    y_hat = int(bias.argmin())
    y = torch.tensor(y_hat)
    x_hat = torch.randn(shape, generator=gen).requires_grad_()
    opt = torch.optim.Adam([x_hat], lr=0.1)
    target = msg[support]
    for _ in range(steps):
        opt.zero_grad()
        g = sample_grad(model, w, x_hat, y, create_graph=True)[support]
        loss = 1 - F.cosine_similarity(g, target, dim=0, eps=1e-12)
        loss.backward()
        opt.step()
    return x_hat.detach(), y_hat


def probe(
    model: Any,
    w: Tensor,
    x: Tensor,
    y: Tensor,
    classes: int,
    value_range: float,
    clip: float,
    sigma: float,
    comp: Compressor | None,
    steps: int,
    seed: int,
) -> Leak:
    gen = torch.Generator().manual_seed(seed)
    g = sample_grad(model, w, x, y, create_graph=False)
    msg, support = message(g, clip, sigma, comp, gen)
    x_hat, y_hat = invert(model, w, msg, support, tuple(x.shape), classes, steps, gen)
    mse = float((x_hat - x).pow(2).mean())
    psnr = 10 * math.log10(value_range**2 / max(mse, 1e-12))
    return Leak(mse, psnr, y_hat == int(y))
