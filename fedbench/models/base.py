"""The model interface: a template module, its flat parameter layout and a generic forward.

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

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from fedbench.params import Param, Registry

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


def batched_dot(a: Tensor, w: Tensor) -> Tensor:
    """Row-wise scores a_jᵀw_i `[m, B]` of `a [m, B, f]` and `w [m, f]`, one per client.

    Computed as the row vector w_iᵀ times A_iᵀ (`bmm([m, 1, f], [m, f, B])`): on CPU this
    batched GEMV runs 3-14x faster than the column form `bmm(a, w.unsqueeze(2))` (torch 2.13,
    one thread, 2-core x86 CPU, idle; shapes from [20, 29, 30] to [100, 600, 784]).
    """
    return torch.bmm(w.unsqueeze(1), a.transpose(1, 2)).squeeze(1)


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

    # a language model reports perplexity = exp(test_loss) beside its loss
    reports_perplexity = False
    # linear models: a bound on the loss's second derivative in the logits, so that
    # L_i = curvature · λ_max(A_iᵀA_i)/m_i (`Task.smoothness`); None = not known
    curvature: float | None = None
    has_bias = True  # linear models: the features are augmented with a constant 1
    # a hand-batched model whose loss_grad records no autograd graph: the runner may run its
    # rounds under torch.inference_mode (runner.rounds_mode), which cuts torch's per-call cost
    autograd_free = False
    # loss_grad may run for several blocks of clients at once on block threads
    # (fedbench.parallel): true of models computed as pure functions of the flat weights; the
    # generic path is not, since functional_call swaps the weights into the shared template
    thread_safe = False

    def sample_loss(self, z: Tensor, y: Tensor) -> Tensor:
        """Per-sample loss `[B]` of outputs `z [B, ...]` for labels `y [B, ...]` (cross-entropy;
        models with other outputs, e.g. one logit per token, override this and `correct`)."""
        return F.cross_entropy(z, y, reduction="none")

    def correct(self, z: Tensor, y: Tensor) -> Tensor:
        """Per-sample accuracy `[B]` (float in [0, 1]) of outputs `z` for labels `y`."""
        return (z.argmax(-1) == y).float()

    def _loss_one(self, w: Tensor, x: Tensor, y: Tensor, wt: Tensor) -> Tensor:
        return (self.sample_loss(self._logits_one(w, x), y) * wt).sum()  # Σ_b wt_b loss_b

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

    def sgd_step(
        self, w: Tensor, x: Tensor, y: Tensor, wt: Tensor, lr: float, start: Tensor | None = None
    ) -> Tensor:
        """One SGD step on every row, in place: w_i ← w_i − lr·∇loss_i(w_i); returns the loss
        `[m]` at the old rows. The same numbers as `loss_grad` then `w.add_(g, alpha=-lr)`;
        a hand-batched model fuses it (`MLP`: no `[m, d]` gradient buffer is written). With
        `start` (`[d]` or `[m, d]`) the step is taken from there instead, written into `w`:
        the numbers of `w.copy_(start)` first."""
        if start is not None:
            w.copy_(start.expand_as(w))
        loss, g = self.loss_grad(w, x, y, wt)
        w.add_(g, alpha=-lr)
        return loss


REG_PARAMS = {
    "reg": Param(
        "none",
        "regulariser added to every client's loss: l2 = (λ/2)‖w‖², nonconvex = λ Σ w²/(1+w²)",
        "str",
        choices=("none", "l2", "nonconvex"),
    ),
    "lam": Param(0.1, "regularisation strength λ (used when reg is not 'none')", low=0.0),
}


def build_model(
    name: str,
    params: Mapping[str, Any],
    input_shape: tuple[int, ...],
    num_classes: int,
    binary: bool = False,
    seed: int = 0,
) -> Model:
    """The model `name` for this input shape; `binary` tasks (labels ±1) may take another form
    (`logreg` becomes the theory papers' one-vector logistic regression). Models registered
    with `extra["seeded"]` also get the job's `seed` (a LoRA base is drawn from it)."""
    comp = MODELS[name]
    flags: dict[str, Any] = {"binary": True} if binary else {}
    if comp.extra.get("seeded"):
        flags["seed"] = seed
    model: Model = comp.build(
        input_shape=input_shape, num_classes=num_classes, **flags, **comp.resolve(params)
    )
    return model
