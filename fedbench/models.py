"""Models as flat parameter vectors evaluated for many clients at once.

A model here is a template `nn.Module` (never trained itself) plus a `ParamSpec` that maps
a flat vector `w ∈ R^d` to its named tensors. Every forward pass takes a stack of client
vectors `w [m, d]` and a stack of client minibatches `x [m, B, *shape]`:

- `mlp` and `logreg` have a hand-batched forward and backward (`torch.baddbmm` on views of
  the flat vectors; gradients written straight into an `[m, d]` buffer): one batched matmul
  per layer for the whole cohort.
- any other module (`cnn`) goes through `torch.func`: `vmap(grad(loss))` over the client axis
  with `functional_call` on the template.

No BatchNorm anywhere (running statistics break under vmap): GroupNorm or none.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from fedbench.params import Component, Param, Registry

MODELS = Registry("model")


@dataclass(frozen=True)
class ParamSpec:
    """Names, shapes and offsets of a module's parameters inside one flat vector."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    offsets: tuple[int, ...]  # start of each parameter in the flat vector
    d: int

    @classmethod
    def from_module(cls, module: nn.Module) -> ParamSpec:
        names, shapes, offsets, o = [], [], [], 0
        for name, p in module.named_parameters():
            names.append(name)
            shapes.append(p.shape)
            offsets.append(o)
            o += p.numel()
        return cls(tuple(names), tuple(shapes), tuple(offsets), o)

    def unflatten(self, w: Tensor) -> dict[str, Tensor]:
        """Views of `w [..., d]` as `{name: [..., *shape]}` (no copy)."""
        lead = w.shape[:-1]
        return {
            n: w[..., o : o + s.numel()].view(*lead, *s)
            for n, s, o in zip(self.names, self.shapes, self.offsets, strict=True)
        }

    def flatten(self, params: Mapping[str, Tensor]) -> Tensor:
        """The flat vector `[d]` of a `{name: tensor}` mapping (e.g. `module.state_dict()`)."""
        return torch.cat([params[n].reshape(-1) for n in self.names])


def _init_flat(module: nn.Module, spec: ParamSpec, gen: torch.Generator) -> Tensor:
    """PyTorch's default initialisation, drawn from `gen` instead of the global RNG."""
    out = torch.empty(spec.d)
    views = spec.unflatten(out)
    fan_in: dict[str, int] = {}
    for name, p in module.named_parameters():
        owner = name.rsplit(".", 1)[0]
        if p.dim() >= 2:
            fan_in[owner] = p[0].numel()
    for name in spec.names:
        v, owner = views[name], name.rsplit(".", 1)[0]
        # Linear / Conv: kaiming_uniform(a=√5) for weights, U(±1/√fan_in) for bias
        if owner in fan_in:
            bound = 1.0 / math.sqrt(fan_in[owner])
            v.uniform_(-bound, bound, generator=gen)
        elif name.endswith("weight"):  # GroupNorm scale
            v.fill_(1.0)
        else:
            v.zero_()
    return out


class Model:
    """Template module + flat layout; generic (torch.func) forward and gradients."""

    def __init__(self, module: nn.Module, num_classes: int) -> None:
        self.spec = ParamSpec.from_module(module)
        self.num_classes = num_classes
        self.template = module.to("meta")  # shapes only; weights live in flat vectors

    @property
    def d(self) -> int:
        return self.spec.d

    def init(self, gen: torch.Generator) -> Tensor:
        """A fresh flat parameter vector `[d]` (CPU, float32)."""
        return _init_flat(self.template, self.spec, gen)

    def _logits_one(self, w: Tensor, x: Tensor) -> Tensor:
        return functional_call(self.template, self.spec.unflatten(w), (x,))

    def logits(self, w: Tensor, x: Tensor) -> Tensor:
        """`w [m, d]`, `x [m, B, *shape]` -> logits `[m, B, C]`."""
        return vmap(self._logits_one)(w, x)

    def _loss_one(self, w: Tensor, x: Tensor, y: Tensor, wt: Tensor) -> Tensor:
        ce = F.cross_entropy(self._logits_one(w, x), y, reduction="none")  # [B]
        return (ce * wt).sum()

    def loss_grad(
        self, w: Tensor, x: Tensor, y: Tensor, wt: Tensor, out: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Per-client weighted loss `[m]` and its gradient `[m, d]`.

        loss_i = Σ_b wt[i, b] · CE(model(w_i, x[i, b]), y[i, b]); `wt` is 1/B for a
        minibatch, 1/count_i on real samples and 0 on padding for a full local batch.
        """
        g, loss = vmap(grad_and_value(self._loss_one))(w, x, y, wt)
        if out is not None:
            out.copy_(g)
            g = out
        return loss, g


class MLP(Model):
    """Fully connected ReLU network (logreg when there are no hidden layers), hand-batched."""

    def __init__(self, sizes: list[int]) -> None:
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        super().__init__(nn.Sequential(nn.Flatten(), *layers), sizes[-1])
        self.sizes = sizes

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

    def loss_grad(
        self, w: Tensor, x: Tensor, y: Tensor, wt: Tensor, out: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        h = self._forward(w, x)
        logp = torch.log_softmax(h[-1], dim=-1)  # [m, B, C]
        loss = -(logp.gather(2, y.unsqueeze(2)).squeeze(2) * wt).sum(1)  # [m]
        dz = logp.exp_()  # softmax, reused in place
        dz.scatter_add_(2, y.unsqueeze(2), torch.full_like(dz[..., :1], -1.0))
        dz.mul_(wt.unsqueeze(2))  # [m, B, C] = ∂loss/∂logits
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


class CNN(Model):
    """Small convolutional net with GroupNorm, 2-D for images `[C, H, W]`, 1-D for `[C, L]`."""

    def __init__(
        self, input_shape: tuple[int, ...], num_classes: int, channels: list[int], hidden: list[int]
    ) -> None:
        if len(input_shape) not in (2, 3):
            raise ValueError(
                f"model 'cnn' needs images [C, H, W] or signals [C, L]; this dataset has "
                f"flat features of shape {list(input_shape)}; use model = 'mlp' or 'logreg'"
            )
        conv = nn.Conv2d if len(input_shape) == 3 else nn.Conv1d
        pool = nn.MaxPool2d if len(input_shape) == 3 else nn.MaxPool1d
        layers: list[nn.Module] = []
        c_in, spatial = input_shape[0], list(input_shape[1:])
        for c in channels:
            layers += [conv(c_in, c, 3, padding=1), nn.GroupNorm(min(8, c), c), nn.ReLU()]
            if min(spatial) >= 2:
                layers.append(pool(2))
                spatial = [s // 2 for s in spatial]
            c_in = c
        layers.append(nn.Flatten())
        width = c_in * math.prod(spatial)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        super().__init__(nn.Sequential(*layers), num_classes)


REG_PARAMS = {
    "reg": Param(
        "none",
        "regulariser added to every client's loss: l2 = (λ/2)‖w‖², nonconvex = λ Σ w²/(1+w²)",
        "str",
        choices=("none", "l2", "nonconvex"),
    ),
    "lam": Param(0.1, "regularisation strength λ (used when reg is not 'none')", low=0.0),
}


def _build_logreg(input_shape: tuple[int, ...], num_classes: int, **_: Any) -> Model:
    return MLP([math.prod(input_shape), num_classes])


def _build_mlp(
    input_shape: tuple[int, ...], num_classes: int, hidden: list[int], **_: Any
) -> Model:
    return MLP([math.prod(input_shape), *hidden, num_classes])


def _build_cnn(
    input_shape: tuple[int, ...], num_classes: int, channels: list[int], hidden: list[int], **_: Any
) -> Model:
    return CNN(input_shape, num_classes, channels, hidden)


MODELS.add(
    Component(
        "logreg",
        _build_logreg,
        dict(REG_PARAMS),
        "multinomial logistic regression (one linear layer with bias)",
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
MODELS.add(
    Component(
        "cnn",
        _build_cnn,
        {
            "channels": Param(
                [32, 64], "conv channels, one 3x3 conv + GroupNorm + pool each", "int_list"
            ),
            "hidden": Param([128], "fully connected widths after the convolutions", "int_list"),
            **REG_PARAMS,
        },
        "small CNN with GroupNorm (2-D images or 1-D signals), vmapped with torch.func",
    )
)


def build_model(
    name: str, params: Mapping[str, Any], input_shape: tuple[int, ...], num_classes: int
) -> Model:
    comp = MODELS[name]
    model: Model = comp.build(
        input_shape=input_shape, num_classes=num_classes, **comp.resolve(params)
    )
    return model
