"""Fully connected networks with a hand-batched forward and backward: `logreg` and `mlp`.

One batched matmul per layer for the whole cohort (`torch.baddbmm` on views of the flat client
vectors); gradients are written straight into an `[m, d]` buffer.
"""

from __future__ import annotations

import itertools
import math
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
        v = self.spec.unflatten(w)
        names = self.spec.names
        return [(v[names[2 * i]], v[names[2 * i + 1]]) for i in range(len(names) // 2)]

    def _forward(self, w: Tensor, x: Tensor) -> list[Tensor]:
        """Activations `[h_0, h_1, ..., logits]`, each `[m, B, width]`."""
        h = [x.reshape(x.shape[0], x.shape[1], -1)]
        layers = self._layers(w)
        for i, (W, b) in enumerate(layers):  # W [m, out, in], b [m, out]
            a = torch.baddbmm(b.unsqueeze(1), h[-1], W.transpose(1, 2))
            h.append(a.relu_() if i < len(layers) - 1 else a)
        return h

    def logits(self, w: Tensor, x: Tensor) -> Tensor:
        return self._forward(w, x)[-1]

    def _head(self, z: Tensor, y: Tensor, wt: Tensor) -> tuple[Tensor, Tensor]:
        """Weighted cross-entropy `[m]` of logits `z [m, B, C]` and its gradient in z."""
        logp = torch.log_softmax(z, dim=-1)  # [m, B, C]
        loss = -(logp.gather(2, y.unsqueeze(2)).squeeze(2) * wt).sum(1)  # [m]
        dz = logp.exp_()  # softmax, reused in place
        dz.scatter_add_(2, y.unsqueeze(2), torch.full_like(dz[..., :1], -1.0))
        dz.mul_(wt.unsqueeze(2))  # [m, B, C] = ∂loss/∂logits
        return loss, dz

    def loss_grad(
        self, w: Tensor, x: Tensor, y: Tensor, wt: Tensor, out: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        h = self._forward(w, x)
        loss, dz = self._head(h[-1], y, wt)
        g = torch.empty_like(w) if out is None else out
        grads = self._layers(g)
        layers = self._layers(w)
        for i in range(len(layers) - 1, -1, -1):
            gW, gb = grads[i]
            # a contiguous product takes MKL's batched GEMM; writing into the strided view of
            # g directly would fall back to one GEMM per client
            gW.copy_(torch.bmm(dz.transpose(1, 2), h[i]))  # [m, out, in]
            torch.sum(dz, dim=1, out=gb)  # [m, out]
            if i > 0:  # through W and the ReLU: [m, B, in]
                dz = torch.ops.aten.threshold_backward(torch.bmm(dz, layers[i][0]), h[i], 0)
        return loss, g

    def sgd_step(self, w: Tensor, x: Tensor, y: Tensor, wt: Tensor, lr: float) -> Tensor:
        """`loss_grad` and the step fused, layer by layer from the top: each weight gradient
        is applied from the GEMM's own contiguous output while it is in cache, after the
        layer's input gradient has used the old W (no `[m, d]` gradient, no copy)."""
        h = self._forward(w, x)
        loss, dz = self._head(h[-1], y, wt)
        layers = self._layers(w)
        for i in range(len(layers) - 1, -1, -1):
            W, b = layers[i]  # [m, out, in], [m, out]: views of w
            gW = torch.bmm(dz.transpose(1, 2), h[i])  # [m, out, in]
            gb = torch.sum(dz, dim=1)  # [m, out]
            if i > 0:  # through the old W and the ReLU: [m, B, in]
                dz = torch.ops.aten.threshold_backward(torch.bmm(dz, W), h[i], 0)
            W.add_(gW, alpha=-lr)
            b.add_(gb, alpha=-lr)
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
