"""Local steps whose direction needs the step's own minibatch (issue 16): Mime's SVRG-style
correction ∇f_i(y; ζ) − ∇f_i(x; ζ), FedSMOO's dual-corrected SAM perturbation, Entropy-SGD's
inner Langevin loop. `local_sgd`'s correction hook sees the gradient but not ζ; this loop
hands ζ to a step function instead. Minibatches are drawn for the whole cohort up front
exactly as `local_sgd` draws them (`local_batches`: uniform, or ordered by a curriculum over
the K·draws minibatches; with `draws = 1` the same indices for the same generator), and
clients run in the same blocks (`block_rows`), so the result does not depend on the block
size. The blocks run one after another: step functions may draw in call order.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from fedbench.algorithms.base import Env, block_rows, local_batches

# (y [c, d], ids [c], ζ [c, draws, B] or None for full local data, rows, step k)
#   -> (loss [c], direction [c, d]); the loop applies y ← y − lr·direction
StepFn = Callable[[Tensor, Tensor, Tensor | None, slice, int], tuple[Tensor, Tensor]]


def run_local_steps(
    env: Env,
    y0: Tensor,
    ids: Tensor,
    steps: int,
    lr: float,
    gen: torch.Generator,
    step: StepFn,
    draws: int = 1,
) -> tuple[Tensor, Tensor]:
    """K steps y ← y − lr·step(y, ζ) for the cohort from `y0` (`[d]` or `[m, d]`), each step
    given `draws` minibatches of its own. Returns the models `[m, d]` and mean losses `[m]`."""
    m = ids.numel()
    y = y0.expand(m, -1).clone() if y0.dim() == 1 else y0.clone()
    full = env.batch_size == "full"
    idx = None if full else local_batches(env, y0, ids, steps * draws, gen)
    width = int(env.task.data.counts[ids].max()) if idx is None else idx.shape[2] * draws
    block = block_rows(env, m, width)
    loss_sum = torch.zeros(m, device=y.device)
    for s in range(0, m, block):
        rows = slice(s, min(m, s + block))
        yb = y[rows]  # a view: updated in place
        for k in range(steps):
            zeta = None if idx is None else idx[rows, k * draws : (k + 1) * draws]
            loss, d = step(yb, ids[rows], zeta, rows, k)
            loss_sum[rows] += loss
            yb.add_(d, alpha=-lr)
    return y, loss_sum / steps


def grad_at(
    env: Env, w: Tensor, ids: Tensor, zeta: Tensor | None, j: int = 0
) -> tuple[Tensor, Tensor]:
    """Loss `[c]` and gradient `[c, d]` at `w [c, d]` on the j-th minibatch of ζ (or full data)."""
    return env.task.loss_grad(w, ids, None if zeta is None else zeta[:, j])
