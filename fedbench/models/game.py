"""A quadratic min-max game: min over x, max over y of f(x, y), with z = (x, y) ∈ R^{2k}.

The game datasets (`fedbench.data.games`) pack a sample as one row
`[g_j, h_j, u_j, v_j (k each), p_j, q_j, μ]` (label: a dummy class 0), and

    f_j(x, y) = ½(g_jᵀx)² + (u_jᵀx − p_j)(v_jᵀy − q_j) − ½(h_jᵀy)² + (μ/2)(‖x‖² − ‖y‖²),

so f_i = mean_j f_j and f = (1/n) Σ_i f_i are quadratic, μ-strongly convex in x and μ-strongly
concave in y. `loss_grad` returns the value f_i and, in place of a gradient, the monotone
operator F_i(z) = (∇_x f_i, −∇_y f_i): every method that steps along −g then performs
gradient descent-ascent, and the variational-inequality methods (MASHA) solve F(z*) = 0.
F is affine, F(z) = Mz + c; `Task.game_metrics` recovers M, c from operator evaluations and
logs the duality gap and ‖z − z*‖².
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fedbench.models.base import MODELS, Model, batched_dot
from fedbench.params import Component

GAME = {"target": "game"}


class QuadraticGame(Model):
    reports_accuracy = False
    has_bias = False
    autograd_free = True
    thread_safe = True

    def __init__(self, input_shape: tuple[int, ...]) -> None:
        width = int(input_shape[-1])
        if (width - 3) % 4:
            raise ValueError(f"a game row has 4k + 3 columns, got {width}")
        self.game_dim = (width - 3) // 4  # k: the size of x and of y
        super().__init__(nn.Linear(2 * self.game_dim, 1, bias=False), 1)

    def activation_floats(self, input_shape: tuple[int, ...]) -> int:
        return 2 * int(input_shape[-1])

    def init(self, gen: torch.Generator) -> Tensor:
        return torch.randn(self.d, generator=gen) / self.d**0.5

    def _parts(self, w: Tensor, x: Tensor) -> tuple[Tensor, ...]:
        k = self.game_dim
        rows = x.reshape(x.shape[0], x.shape[1], -1)  # [m, B, 4k + 3]
        g, h, u, v = (rows[..., i * k : (i + 1) * k] for i in range(4))  # [m, B, k] each
        p, q, mu = rows[..., 4 * k], rows[..., 4 * k + 1], rows[..., 4 * k + 2]  # [m, B]
        zx, zy = w[:, :k], w[:, k:]  # [m, k]
        gx, hy = batched_dot(g, zx), batched_dot(h, zy)  # [m, B]
        ux, vy = batched_dot(u, zx) - p, batched_dot(v, zy) - q  # [m, B]
        return g, h, u, v, mu, gx, hy, ux, vy

    def logits(self, w: Tensor, x: Tensor) -> Tensor:
        """f_j at each row's z: `[m, B]` (evaluated through sample_loss)."""
        _, _, _, _, mu, gx, hy, ux, vy = self._parts(w, x)
        k = self.game_dim
        norms = (w[:, :k].square().sum(1) - w[:, k:].square().sum(1)).unsqueeze(1)  # [m, 1]
        return 0.5 * gx * gx + ux * vy - 0.5 * hy * hy + 0.5 * mu * norms

    def sample_loss(self, z: Tensor, y: Tensor) -> Tensor:
        return z

    def correct(self, z: Tensor, y: Tensor) -> Tensor:
        return torch.zeros_like(z)

    def loss_grad(
        self, w: Tensor, x: Tensor, y: Tensor, wt: Tensor, out: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Weighted f_i `[m]` and the operator F_i(z) = (∇_x f_i, −∇_y f_i) `[m, 2k]`."""
        g, h, u, v, mu, gx, hy, ux, vy = self._parts(w, x)
        k = self.game_dim
        norms = (w[:, :k].square().sum(1) - w[:, k:].square().sum(1)).unsqueeze(1)
        loss = ((0.5 * gx * gx + ux * vy - 0.5 * hy * hy + 0.5 * mu * norms) * wt).sum(1)
        mw = (mu * wt).sum(1, keepdim=True)  # [m, 1] Σ_j wt_j μ
        fx = torch.bmm((gx * wt).unsqueeze(1), g) + torch.bmm((vy * wt).unsqueeze(1), u)
        fy = torch.bmm((hy * wt).unsqueeze(1), h) - torch.bmm((ux * wt).unsqueeze(1), v)
        op = torch.cat([fx.squeeze(1) + mw * w[:, :k], fy.squeeze(1) + mw * w[:, k:]], 1)
        if out is not None:
            out.copy_(op)
            op = out
        return loss, op


def _build(*, input_shape: tuple[int, ...], num_classes: int, **_: object) -> Model:
    return QuadraticGame(input_shape)


MODELS.add(
    Component(
        "quadratic_game",
        _build,
        {},
        "quadratic min-max game on a game dataset: loss = f_i(x, y), 'gradient' = the "
        "operator (∇_x f_i, −∇_y f_i)",
        extra=GAME,
    )
)
