"""Binary logistic regression in the theory papers' form (EF21, MARINA, DIANA, ...).

Labels b ∈ {−1, +1} (stored as y ∈ {0, 1}, b = 2y − 1), one weight vector x ∈ R^f, no bias:
loss_j(x) = log(1 + exp(−b_j a_jᵀx)). `model = "logreg"` on a binary dataset builds this; the
regulariser (`reg = "nonconvex"`, λ Σ x_k²/(1 + x_k²)) is added by the task. Hand-batched:
one `bmm` forward and one backward for the whole cohort.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedbench.models.base import Model, batched_dot


class BinaryLogReg(Model):
    # |d²/dz² log(1 + e^{−bz})| ≤ 1/4: with L_i = λ_max(A_iᵀA_i)/(4 m_i) (+ the regulariser's)
    curvature = 0.25
    has_bias = False
    autograd_free = True
    thread_safe = True

    def __init__(self, input_shape: tuple[int, ...]) -> None:
        super().__init__(
            nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), 1, False)), 2
        )

    def logits(self, w: Tensor, x: Tensor) -> Tensor:
        """Scores a_jᵀx `[m, B]` for `w [m, f]`, `x [m, B, *shape]`."""
        return batched_dot(x.reshape(x.shape[0], x.shape[1], -1), w)

    def sample_loss(self, z: Tensor, y: Tensor) -> Tensor:
        return F.softplus(-(2 * y - 1) * z)  # log(1 + exp(−b z))

    def correct(self, z: Tensor, y: Tensor) -> Tensor:
        return ((z > 0) == (y == 1)).float()

    def loss_grad(
        self, w: Tensor, x: Tensor, y: Tensor, wt: Tensor, out: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        a = x.reshape(x.shape[0], x.shape[1], -1)  # [m, B, f]
        b = (2 * y - 1).to(w.dtype)  # [m, B] labels ±1
        nbz = -b * batched_dot(a, w)  # [m, B] −b_j a_jᵀx
        loss = (F.softplus(nbz) * wt).sum(1)  # [m]
        dz = -b * torch.sigmoid(nbz) * wt  # [m, B] ∂loss/∂z
        g = torch.empty_like(w) if out is None else out  # [m, f]
        torch.bmm(dz.unsqueeze(1), a, out=g.unsqueeze(1))
        return loss, g
