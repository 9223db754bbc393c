"""Least-squares regression in the theory papers' form, and its robust non-convex variant.

The regression datasets (`fedbench.data.regression`) pack a sample as one row
`[a_j (f features), b_j (target), s (regulariser scale)]`, because fedbench's labels are class
ids; the label y is a dummy 0. The weight vector is x ∈ R^f, no bias.

- `linreg`: f_i(x) = (1/m_i) Σ_j (a_jᵀx − b_j)², as FL_PyTorch's `--loss mse --model linear`
  (MSE summed, divided by the client's sample count), used by "Federated learning is better
  with non-homomorphic encryption" (Burlachenko et al., arXiv 2312.02074) [code:
  burlachenkok/fl-with-nonhe `compute_Li_for_linear_regression`: L_i = (2/m_i)‖A_i‖²].
- `robust_linreg`: the non-convex robust linear regression of "Error feedback shines when
  features are rare" (Richtárik, Gasanov, Burlachenko, arXiv 2305.15264):
  f_i(x) = (1/m_i) Σ_j (a_jᵀx − b_j)² + α·s·Σ_{k ∈ S_i} x_k²/(1 + x_k²), S_i the features
  client i holds and s = max_i L_i of the least-squares part [code:
  burlachenkok/ef21_with_rare_features `robustLinearRegulizers` masked by the client's
  `kSubSets` row and multiplied by `max_Li`; α = `--global-regulizer-alpha 3.0`]. Here S_i is
  read per sample (the features a_j ≠ 0): the generator's clients have dense rows on their own
  features, so every sample of client i has support S_i and the two agree.

Smoothness (lr = "theory"): L_i = 2 λ_max(A_iᵀA_i)/m_i (+ 2αs for the robust term, the
reference code's bound `Li + 2·alpha·max_Li`), L = 2 λ_max((1/n) Σ_i A_iᵀA_i/m_i) (+ 2αs).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from fedbench.models.base import MODELS, Model, batched_dot
from fedbench.params import Component, Param

PACKED = 2  # columns after the features: target b_j and regulariser scale s


class LinReg(Model):
    reports_accuracy = False
    has_bias = False
    autograd_free = True
    thread_safe = True
    robust_alpha = 0.0

    def __init__(self, input_shape: tuple[int, ...]) -> None:
        self.features = math.prod(input_shape) - PACKED
        super().__init__(nn.Linear(self.features, 1, bias=False), 1)

    def init(self, gen: torch.Generator) -> Tensor:
        return torch.zeros(self.d)  # the papers start from x⁰ = 0

    def activation_floats(self, input_shape: tuple[int, ...]) -> int:
        return 2 * math.prod(input_shape)  # the row and its support mask

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """a `[m, B, f]`, b `[m, B]`, s `[m, B]` of packed rows `x [m, B, f + 2]`."""
        x = x.reshape(x.shape[0], x.shape[1], -1)
        f = self.features
        return x[..., :f], x[..., f], x[..., f + 1]

    def logits(self, w: Tensor, x: Tensor) -> Tensor:
        """The per-sample loss `[m, B]` (the task's evaluation takes it through sample_loss)."""
        a, b, s = self._split(x)
        r = batched_dot(a, w) - b  # [m, B] residuals
        out = r * r
        if self.robust_alpha:
            phi = (w * w / (1 + w * w)).unsqueeze(1)  # [m, 1, f]
            out = out + self.robust_alpha * s * ((a != 0).float() * phi).sum(2)
        return out

    def sample_loss(self, z: Tensor, y: Tensor) -> Tensor:
        return z

    def correct(self, z: Tensor, y: Tensor) -> Tensor:
        return torch.zeros_like(z)

    def loss_grad(
        self, w: Tensor, x: Tensor, y: Tensor, wt: Tensor, out: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        a, b, s = self._split(x)
        r = batched_dot(a, w) - b  # [m, B]
        loss = (r * r * wt).sum(1)  # [m]
        g = torch.bmm((2 * r * wt).unsqueeze(1), a).squeeze(1)  # [m, f]
        if self.robust_alpha:
            # q_k = Σ_j wt_j s_j 1[a_jk ≠ 0]: the weight of x_k's regulariser on this batch
            q = torch.bmm((wt * s).unsqueeze(1), (a != 0).float()).squeeze(1)  # [m, f]
            w2 = w * w
            loss = loss + self.robust_alpha * (q * w2 / (1 + w2)).sum(1)
            g = g + self.robust_alpha * q * 2 * w / (1 + w2) ** 2
        if out is not None:
            out.copy_(g)
            g = out
        return loss, g

    def smoothness_constants(
        self, x: Tensor, offsets: Tensor, counts: Tensor
    ) -> tuple[float, Tensor]:
        """(L, L_i `[n]` float64) of the client objectives over the packed rows `x [N, f+2]`."""
        f = self.features
        a = x.reshape(x.shape[0], -1)[:, :f].double()  # [N, f]
        n, width = counts.numel(), int(counts.max())
        pos = torch.arange(width, device=a.device)
        mask = pos < counts.unsqueeze(1)  # [n, width]
        idx = offsets.unsqueeze(1) + torch.where(mask, pos, 0)
        ai = a[idx] * mask.unsqueeze(2)  # [n, width, f] padded with zero rows
        # λ_max(A_iᵀA_i) = λ_max(A_i A_iᵀ): the small [width, width] side
        small = torch.bmm(ai, ai.transpose(1, 2))  # [n, width, width]
        L_i = 2 * torch.linalg.eigvalsh(small)[:, -1] / counts.double()
        rows = a / torch.sqrt(n * counts.double()).repeat_interleave(counts).unsqueeze(1)
        gram = rows @ rows.T if rows.shape[0] <= f else rows.T @ rows
        L = 2 * float(torch.linalg.eigvalsh(gram)[-1])
        if self.robust_alpha:
            s = float(x.reshape(x.shape[0], -1)[:, f + 1].max())
            L_i = L_i + 2 * self.robust_alpha * s
            L += 2 * self.robust_alpha * s
        return L, L_i.cpu()

    def rare_constants(self, x: Tensor, offsets: Tensor, counts: Tensor) -> tuple[float, int]:
        """(L_+, c) of the rare-features paper: L_+ = √λ_max((1/n) Σ_i (∇²g_i)²) of the
        least-squares parts g_i (∇²g_i = 2A_iᵀA_i/m_i, as the reference code's `L_plus`,
        without the regulariser) and c = the most clients any feature appears on."""
        f = self.features
        a = x.reshape(x.shape[0], -1)[:, :f].double()  # [N, f]
        n, width = counts.numel(), int(counts.max())
        pos = torch.arange(width, device=a.device)
        mask = pos < counts.unsqueeze(1)  # [n, width]
        idx = offsets.unsqueeze(1) + torch.where(mask, pos, 0)
        ai = a[idx] * mask.unsqueeze(2) * (2 / counts.double()).view(-1, 1, 1).sqrt()
        # with Ã_i = √(2/m_i) A_i: Σ_i (Ã_iᵀÃ_i)² = Σ_i Ã_iᵀ (Ã_i Ã_iᵀ) Ã_i, stacked over rows
        inner = torch.bmm(torch.bmm(ai, ai.transpose(1, 2)), ai)  # [n, width, f]
        m2 = ai.reshape(-1, f).T @ inner.reshape(-1, f) / n  # [f, f]
        L_plus = math.sqrt(max(float(torch.linalg.eigvalsh((m2 + m2.T) / 2)[-1]), 0.0))
        client = torch.repeat_interleave(torch.arange(n, device=a.device), counts)
        nz = torch.zeros(n, f, dtype=torch.float64, device=a.device)
        nz.index_add_(0, client, (a != 0).double())  # [n, f] samples of client i with feature k
        return L_plus, int((nz > 0).sum(0).max())


class RobustLinReg(LinReg):
    def __init__(self, input_shape: tuple[int, ...], robust_alpha: float) -> None:
        super().__init__(input_shape)
        self.robust_alpha = robust_alpha


def _build_linreg(*, input_shape: tuple[int, ...], num_classes: int, **_: object) -> Model:
    return LinReg(input_shape)


def _build_robust(
    *, input_shape: tuple[int, ...], num_classes: int, robust_alpha: float, **_: object
) -> Model:
    return RobustLinReg(input_shape, robust_alpha)


REGRESSION = {"target": "regression"}

MODELS.add(
    Component(
        "linreg",
        _build_linreg,
        {},
        "least squares f_i(x) = (1/m_i)‖A_i x − b_i‖² on a regression dataset (no bias, x⁰ = 0)",
        paper="as in Burlachenko et al., arXiv 2312.02074 (FL_PyTorch mse + linear)",
        extra=REGRESSION,
    )
)
MODELS.add(
    Component(
        "robust_linreg",
        _build_robust,
        {
            "robust_alpha": Param(
                3.0, "α of the robust term α·max_i L_i·Σ_{k∈S_i} x_k²/(1 + x_k²)", low=0.0
            )
        },
        "non-convex robust linear regression: least squares + α·max L_i·Σ x_k²/(1 + x_k²) "
        "over the client's features",
        paper="Richtárik, Gasanov, Burlachenko, arXiv 2305.15264",
        extra=REGRESSION,
    )
)
