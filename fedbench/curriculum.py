"""Ordered local training and client curricula.

"When Do Curricula Work in Federated Learning?", Vahidian, Kadaveru, Baek, Wang, Kungurtsev,
Chen, Shah, Lin, ICCV 2023, arXiv 2212.12712; pacing functions of Wu, Dyer, Neyshabur,
"When Do Curricula Work?", ICLR 2021.

Data ordering (`[algorithm] ordering`): at the start of local training each client scores its
samples by their loss under the model it received (the server model), sorts them ascending
(`curriculum`, easy first) or descending (`anti`), and at local step k draws its minibatch
from the first g(k) samples of that order, with the pacing function g over the K local steps
of the round (it restarts every round, as the authors' client `Client_FedAvg_Curr` restarts
it in every `train()` call):

    linear g(k) = b·N + (N − b·N)·k/(a·K)        quad  … (k/(a·K))²        sqrt … (k/(a·K))^½
    step   g(k) = b·N + N·⌊k/(a·K)⌋              exp   b·N + (N − b·N)(e^{ck/(aK)} − 1)/(e^c − 1)
    log    g(k) = b·N + (N − b·N)(1 + ln(k/(aK) + e^{−c})/c),   c = 10

each truncated to an integer and clipped to [1, N] (N = the client's sample count) [code:
the authors' `pacing_fn.get_pacing_function`]. `random` is fedbench's uniform sampling, bit for
bit as before (the paper's "random curriculum", a shuffled order with the same pacing, is not
offered). Deviations: minibatches are drawn uniformly with replacement from the paced prefix
(the authors' loader shuffles the prefix without replacement and refreshes it once per pass;
its client also enforces a floor of 32 samples); scoring is one extra forward pass over the
client's data per round (computation, no bits).

Client curriculum (`[algorithm] sampling = "curriculum" | "anti_curriculum"`): every client
scores itself by the mean loss of its data under the server model; clients are sorted
(ascending, or descending for anti) and the cohort is drawn uniformly from the first g(t)
clients, with the same pacing function over the T rounds of the run [code: the authors'
`ClientScheduler.next_sched`, which takes the pool `order[0:pool_size]`]. Every client needs
the model and reports one 32-bit score, which the bits count.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fedbench.task import Task

ORDERINGS = ("random", "curriculum", "anti")
PACINGS = ("linear", "quad", "sqrt", "step", "exp", "log")
EXP_C = 10.0  # the authors' constant c of the exp and log pacing functions


def pacing(kind: str, a: float, b: float, total_steps: int, N: Tensor, step: Tensor) -> Tensor:
    """g(step) for sizes `N [m]` at steps `step [s]`: `[m, s]` int64 in [1, N] (module
    docstring; float64 arithmetic, truncated toward zero as the authors' `int(...)`)."""
    n = N.to(torch.float64).unsqueeze(1)  # [m, 1]
    k = step.to(torch.float64).unsqueeze(0)  # [1, s]
    start = b * n
    span = a * total_steps
    if kind == "linear":
        g = (n - start) / span * k + start
    elif kind == "quad":
        g = (n - start) / span**2 * k**2 + start
    elif kind == "sqrt":
        g = (n - start) / span**0.5 * k**0.5 + start
    elif kind == "step":
        g = n * torch.floor(k / span) + start
    elif kind == "exp":
        g = (n - start) / (math.exp(EXP_C) - 1) * (torch.exp(k * EXP_C / span) - 1) + start
    elif kind == "log":
        g = (n - start) * (1 + torch.log(k / span + math.exp(-EXP_C)) / EXP_C) + start
    else:
        raise ValueError(f"unknown pacing function {kind!r}; allowed: {', '.join(PACINGS)}")
    g = torch.minimum(torch.nan_to_num(g, nan=0.0, neginf=0.0), n)  # clip above in float64
    return g.trunc().to(torch.int64).clamp_min(1)


def sample_losses(task: Task, w: Tensor, ids: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample loss of each client's data under its model: `w [m, d]` (or `[d]` shared)
    -> losses `[m, W]` (+inf on padding) and sample indices `[m, W]` (padded, W = max count)."""
    m = ids.numel()
    idx, wt = task._full_batch(ids)  # [m, W] global indices, weights (0 on padding)
    rows = w.expand(m, -1) if w.dim() == 1 else w
    out = torch.empty(idx.shape, device=idx.device)
    step = task.chunk_size(idx.shape[1])
    with torch.no_grad():
        for s in range(0, m, step):  # chunks of clients, one batched forward each
            e = min(m, s + step)
            x, y = task.data.x[idx[s:e]], task.data.y[idx[s:e]]  # [c, W, ...], [c, W]
            z = task.model.logits(rows[s:e], x)  # [c, W, ...]
            c, W = y.shape[:2]
            per = task.model.sample_loss(
                z.reshape(c * W, *z.shape[2:]), y.reshape(c * W, *y.shape[2:])
            )
            out[s:e] = per.view(c, W)
    return torch.where(wt > 0, out, torch.inf), idx


def ordered_batch_indices(
    task: Task,
    w: Tensor,
    ids: Tensor,
    steps: int,
    batch: int,
    gen: torch.Generator,
    ordering: str,
    kind: str,
    a: float,
    b: float,
) -> Tensor:
    """Global sample indices `[m, steps, batch]`: step k draws uniformly from the first g(k)
    samples of each client's data sorted by loss under `w` (ascending for curriculum,
    descending for anti; padding always last). The uniform numbers are drawn exactly as
    `Task.batch_indices` draws them."""
    losses, idx = sample_losses(task, w, ids)  # [m, W]
    key = losses if ordering == "curriculum" else torch.where(losses.isinf(), torch.inf, -losses)
    order = key.argsort(dim=1, stable=True)  # [m, W] positions, easiest (or hardest) first
    u = torch.rand((ids.numel(), steps, batch), generator=gen, device=gen.device).to(idx.device)
    counts = task.data.counts[ids]  # [m]
    g = pacing(kind, a, b, steps, counts, torch.arange(steps)).to(idx.device)  # [m, steps]
    g = g.unsqueeze(2)  # [m, steps, 1]
    pos = (u * g).long().clamp_max_(g - 1)  # [m, steps, batch] rank within the paced prefix
    ranked = order.gather(1, pos.flatten(1)).view_as(pos)  # position in the padded row
    return idx.gather(1, ranked.flatten(1)).view_as(pos)


def client_scores(task: Task, x: Tensor) -> Tensor:
    """Mean loss of every client's data under the server model `x [d]`: `[n]`."""
    loss, _ = task._sample_losses(x, task.data.x, task.data.y)  # [N]
    total = torch.zeros(task.n, device=loss.device).index_add_(0, task.data.client_of, loss)
    return total / task.data.counts
