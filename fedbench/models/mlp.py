"""Fully connected networks with a hand-batched forward and backward: `logreg` and `mlp`.

One batched matmul per layer for the whole cohort (`torch.baddbmm` on views of the flat client
vectors); gradients are written straight into an `[m, d]` buffer.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from fedbench.models.base import MODELS, REG_PARAMS, Model
from fedbench.models.binary import BinaryLogReg
from fedbench.params import Component, Param


class MLP(Model):
    """Fully connected ReLU network (logreg when there are no hidden layers), hand-batched."""

    autograd_free = True
    thread_safe = True

    def __init__(self, sizes: list[int]) -> None:
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        super().__init__(nn.Sequential(nn.Flatten(), *layers), sizes[-1])
        self.sizes = sizes
        if len(sizes) == 2:  # multinomial logreg: ‖diag(p) − ppᵀ‖ ≤ 1/2
            self.curvature = 0.5

    def _layers(self, w: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Views `(W [m, out, in], b [m, out])` of each layer in `w [m, d]`.

        Made by one `as_strided` per tensor, half the cost of `ParamSpec.unflatten`'s slices
        and views (a local step takes the views once); `unflatten` when autograd records."""
        if w.dim() != 2 or w.requires_grad:
            v = self.spec.unflatten(w)
            t = [v[n] for n in self.spec.names]
        else:
            (m, _), (s0, s1), o = w.shape, w.stride(), w.storage_offset()
            t = [
                w.as_strided(
                    (m, *shape),
                    (s0, shape[-1] * s1, s1) if len(shape) == 2 else (s0, s1),
                    o + s1 * at,
                )
                for shape, at in zip(self.spec.shapes, self.spec.offsets, strict=True)
            ]
        return list(zip(t[0::2], t[1::2], strict=True))

    def _forward(self, layers: list[tuple[Tensor, Tensor]], x: Tensor) -> list[Tensor]:
        """Activations feature-major, `[h_0ᵀ, h_1ᵀ, ..., logitsᵀ]`, each `[m, width, B]`
        (`h_0ᵀ` a transposed view of x), for the layers' views of `w`.

        Feature-major, every product has the weights `W [m, out, in]` as they lie in the flat
        vector on the left and a B-wide right side: the logits' product `W h` is 10 × 32 per
        client instead of 32 × 10, which MKL's batched GEMM runs about 3× faster on CPU, and the
        200-wide layers' products are as fast or faster (benchmarks/bench_round.py)."""
        h = [x.reshape(x.shape[0], x.shape[1], -1).transpose(1, 2)]
        for i, (W, b) in enumerate(layers):  # W [m, out, in], b [m, out]
            a = torch.baddbmm(b.unsqueeze(2), W, h[-1])  # [m, out, B]
            h.append(a.relu_() if i < len(layers) - 1 else a)
        return h

    def logits(self, w: Tensor, x: Tensor) -> Tensor:
        """Sample-major (`[m, B, width]` activations): evaluation's few large batches (one
        client, 8,192 samples) run about 20% faster this way than feature-major."""
        h = x.reshape(x.shape[0], x.shape[1], -1)
        layers = self._layers(w)
        for i, (W, b) in enumerate(layers):  # W [m, out, in], b [m, out]
            h = torch.baddbmm(b.unsqueeze(1), h, W.transpose(1, 2))  # [m, B, out]
            if i < len(layers) - 1:
                h.relu_()
        return h

    def _head(self, z: Tensor, y: Tensor, wt: Tensor) -> tuple[Tensor, Tensor]:
        """Weighted cross-entropy `[m]` of logits `z [m, C, B]` (feature-major) and its
        gradient in z, `[m, C, B]`."""
        logp = torch.log_softmax(z, dim=1)  # [m, C, B]
        yi = y.unsqueeze(1)  # [m, 1, B]
        loss = -(logp.gather(1, yi).squeeze(1) * wt).sum(1)  # [m]
        dz = logp.exp_()  # softmax, reused in place
        dz.scatter_add_(1, yi, torch.full_like(dz[:, :1], -1.0))
        dz.mul_(wt.unsqueeze(1))  # [m, C, B] = ∂loss/∂logits
        return loss, dz

    def _backward(
        self, layers: list[tuple[Tensor, Tensor]], h: list[Tensor], dz: Tensor
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """The weight and bias gradients `[m, out, in]`, `[m, out]` of each layer from the top,
        from the activations `h` and the logits' gradient `dz` (feature-major). Each layer's
        pair is yielded after the gradient flowing to the layer below has used its weights, so
        the caller may step them in place; the weight gradient is a contiguous `[m, out, in]`
        (MKL's batched GEMM; a strided output would fall back to one GEMM per client)."""
        for i in range(len(layers) - 1, -1, -1):
            gW = torch.bmm(dz, h[i].transpose(1, 2))  # [m, out, B] [m, B, in]
            gb = torch.sum(dz, dim=2)  # [m, out]
            if i > 0:  # through W and the ReLU, in place: [m, in, B]
                dz = torch.bmm(layers[i][0].transpose(1, 2), dz)
                torch.ops.aten.threshold_backward.grad_input(dz, h[i], 0, grad_input=dz)
            yield gW, gb

    def loss_grad(
        self, w: Tensor, x: Tensor, y: Tensor, wt: Tensor, out: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        layers = self._layers(w)
        h = self._forward(layers, x)
        loss, dz = self._head(h[-1], y, wt)
        g = torch.empty_like(w) if out is None else out
        grads = self._layers(g)[::-1]
        for (gW, gb), (dW, db) in zip(self._backward(layers, h, dz), grads, strict=True):
            dW.copy_(gW)
            db.copy_(gb)
        return loss, g

    def sgd_step(
        self, w: Tensor, x: Tensor, y: Tensor, wt: Tensor, lr: float, start: Tensor | None = None
    ) -> Tensor:
        """`loss_grad` and the step fused, layer by layer from the top: each weight gradient
        is applied from the GEMM's own contiguous output while it is in cache, after the
        layer's input gradient has used the old W (no `[m, d]` gradient, no copy). From
        `start [d]` (every client at the same point: a batch-stride-0 view, so the block's
        products read one set of weights) the pass runs on `start` and the step
        `start − lr·g` is written into `w`; the same numbers as copying `start` into `w` first."""
        at = w if start is None else start.expand_as(w)
        layers = self._layers(at)
        h = self._forward(layers, x)
        loss, dz = self._head(h[-1], y, wt)
        into = layers if start is None else self._layers(w)
        for (gW, gb), (W, b), (W1, b1) in zip(
            self._backward(layers, h, dz), layers[::-1], into[::-1], strict=True
        ):
            torch.add(W, gW, alpha=-lr, out=W1)  # in place when w is the start
            torch.add(b, gb, alpha=-lr, out=b1)
        return loss


def _build_logreg(
    input_shape: tuple[int, ...], num_classes: int, binary: bool = False, **_: Any
) -> Model:
    if binary:
        return BinaryLogReg(input_shape)
    return MLP([math.prod(input_shape), num_classes])


def _build_mlp(
    input_shape: tuple[int, ...], num_classes: int, hidden: list[int], **_: Any
) -> Model:
    return MLP([math.prod(input_shape), *hidden, num_classes])


MODELS.add(
    Component(
        "logreg",
        _build_logreg,
        dict(REG_PARAMS),
        "multinomial logistic regression (one linear layer with bias); on a binary dataset "
        "the theory form: labels ±1, one weight vector, no bias",
    )
)
MODELS.add(
    Component(
        "mlp",
        _build_mlp,
        {"hidden": Param([200, 200], "hidden layer widths", "int_list"), **REG_PARAMS},
        "fully connected ReLU network, hand-batched forward and backward",
        paper="McMahan et al., AISTATS 2017 (2NN: 200-200)",
    )
)
