"""Client sampling strategies beyond uniform sampling without replacement.

- `poisson`: every client joins independently with probability q = participation (Poisson /
  Bernoulli sampling); a round where nobody joins is drawn again.
- `importance`: "Optimal Client Sampling for Federated Learning", Chen, Horváth, Richtárik,
  TMLR 2022, arXiv 2010.13723 (OCS). Every available client computes its update U_i and sends
  ‖U_i‖ (one 32-bit float); client i then sends U_i with probability p_i, the minimiser of
  the aggregate's variance Σ_i (1 − p_i)/p_i ‖U_i‖² subject to Σ_i p_i = m, 0 ≤ p_i ≤ 1:
  p_i = min(1, c‖U_i‖) with c such that Σ_i p_i = m. The server forms the unbiased
  estimate (1/N) Σ_{i sent} U_i / p_i of the mean over the N clients that computed.
- `power_of_choice`: "Client Selection in Federated Learning: Convergence Analysis and
  Power-of-Choice Selection Strategies", Cho, Wang, Joshi, arXiv 2010.01243. A candidate set
  of d clients is drawn uniformly without replacement (the paper draws ∝ data size; here
  clients weigh equally, as in fedavg), each candidate receives the model and sends its local
  loss F_k(x) (32 bits), and the m candidates with the largest losses train.
- `curriculum` / `anti_curriculum`: the client curriculum of "When Do Curricula Work in
  Federated Learning?" (Vahidian et al., ICCV 2023, arXiv 2212.12712), see fedbench.curriculum:
  every client reports its loss under x (32 bits), clients are sorted (lowest first, or
  highest first), and the cohort is drawn uniformly from the first g(t) of them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fedbench import seeding
from fedbench.seeding import RoundRng

FLOAT_BITS = 32  # one reported float (a norm or a loss)

SAMPLINGS = ("uniform", "poisson", "importance", "power_of_choice", "curriculum", "anti_curriculum")
# the client curricula of fedbench.curriculum (issue 16): cohorts from a paced pool of clients
CLIENT_CURRICULA = ("curriculum", "anti_curriculum")
# strategies every method gets through sample_cohort; the others need the method's support
COHORT_SAMPLINGS = ("uniform", "poisson")
MAX_REDRAW = 10_000


def poisson_cohort(n: int, q: float, rng: RoundRng, device: torch.device) -> Tensor:
    """Clients `[k]` (sorted) each drawn independently with probability q; at least one."""
    gen = rng(seeding.COHORT)
    for _ in range(MAX_REDRAW):
        hit = torch.rand(n, generator=gen, device=rng.device) < q  # [n]
        if bool(hit.any()):
            return torch.nonzero(hit).flatten().to(device)
    raise ValueError(f"[algorithm] sampling = 'poisson': no client drawn with q = {q}")


def ocs_probabilities(norms: Tensor, m: int) -> Tensor:
    """OCS inclusion probabilities `[N]` for update norms `[N]` and budget m:
    p_i = min(1, c·‖U_i‖) with Σ p_i = min(m, #nonzero norms)."""
    N = norms.numel()
    u = norms.to(torch.float64).clamp_min(0.0)
    nonzero = int((u > 0).sum())
    if m >= nonzero:
        return (u > 0).to(torch.float64)
    s, order = u.sort(descending=True)  # u_(1) ≥ u_(2) ≥ ...
    tail = s.flip(0).cumsum(0).flip(0)  # [N] Σ_{j ≥ k} u_(j)
    k = torch.arange(N, dtype=torch.float64)  # k clients capped at 1 (the k largest)
    c = (m - k) / tail.clamp_min(1e-300)  # [N] scale when the k largest are capped
    # valid k: the largest uncapped one stays ≤ 1 and (k > 0) the smallest capped one ≥ 1
    ok = (c * s <= 1.0 + 1e-12) & (k < m)
    ok[1:] &= c[1:] * s[:-1] >= 1.0 - 1e-12
    kk = int(torch.nonzero(ok).flatten()[0])
    p_sorted = torch.where(k < kk, torch.ones_like(s), (c[kk] * s).clamp(max=1.0))
    p = torch.empty_like(p_sorted)
    p[order] = p_sorted
    return p


def importance_select(norms: Tensor, m: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Who sends (`[N]` bool) and the probabilities `[N]` float64 (OCS), one Bernoulli each."""
    p = ocs_probabilities(norms.cpu(), m)
    sent = torch.rand(p.numel(), generator=gen, dtype=torch.float64) < p
    return sent, p


def candidates(n: int, k: int, rng: RoundRng, device: torch.device) -> Tensor:
    """Power-of-choice candidate set `[k]` (sorted), uniform without replacement."""
    perm = torch.randperm(n, generator=rng(f"{seeding.COHORT}/candidates"), device=rng.device)
    return perm[:k].sort().values.to(device)


def highest_losses(ids: Tensor, losses: Tensor, m: int) -> Tensor:
    """The m ids `[m]` (sorted) with the largest losses (ties: the smaller id)."""
    order = torch.argsort(-losses.cpu().to(torch.float64), stable=True)[:m]
    return ids[order.to(ids.device)].sort().values


def power_of_choice(env: Any, rng: RoundRng, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Power-of-choice for `Env` env at the server model `x [d]`: the m chosen ids `[m]`,
    the candidates' loss reports' bits `[k]` (32 each), and the candidates `[k]` (all of
    them receive the model)."""
    from fedbench.algorithms.base import cohort_size  # base imports this module
    from fedbench.network import has_availability, present

    m = cohort_size(env.n, env.participation)
    k = env.sampling_candidates or min(env.n, 2 * m)
    cand = candidates(env.n, max(k, m), rng, env.device)
    if env.network is not None and has_availability(env.network):
        cand = present(env.network, cand, rng.seed, rng.round)
    loss, _ = env.task.loss_grad(x.expand(cand.numel(), -1), cand)  # F_k(x) [k], full local data
    ids = highest_losses(cand, loss, min(m, cand.numel()))
    reports = torch.full((cand.numel(),), FLOAT_BITS, dtype=torch.int64, device=env.device)
    return ids, reports, cand


def query_seconds(env: Any, cand: Tensor, model_bits: float) -> float:
    """Simulated seconds of power-of-choice's query phase: every candidate receives the model,
    evaluates its local loss (charged as one local step of its speed s_i: a forward pass over
    its data, our estimate) and sends a 32-bit loss; the server waits for the slowest. 0
    without a `[network]` section."""
    from fedbench.network import phase_seconds

    net = env.network
    if net is None or cand.numel() == 0:
        return 0.0
    one = torch.ones(cand.numel(), dtype=torch.float64)
    slow = net.slowdown[cand.cpu()]
    return float(phase_seconds(net, one, slow, float(FLOAT_BITS), model_bits).max())


def with_queries(
    log: Any, ids: Tensor, env: Any, steps: int, up: Tensor, cand: Tensor, model_bits: int
) -> Any:
    """A round log plus the selection's own messages (`up [k]` bits; the model, `model_bits`,
    to every candidate `cand [k]` not chosen) and the chosen workers' local steps (so the
    simulated clock charges who trained). The query phase's bits and seconds go to `extra`
    (`query_s`: the clock charges that phase before the training phase)."""
    down = (cand.numel() - ids.numel()) * model_bits
    ran = torch.zeros(env.n, dtype=torch.int64)
    ran[ids.cpu()] = steps
    extra_down = torch.tensor([down], dtype=torch.int64, device=log.bits_down.device)
    chosen_down = float(log.bits_down.sum()) / max(1, log.bits_down.numel())  # the model
    extra = {
        **log.extra,
        "query_bits_up": float(up.sum()),
        "query_bits_down": float(down) + chosen_down * ids.numel(),
        "candidates": float(up.numel()),
        "query_s": query_seconds(env, cand, float(model_bits)),
    }
    return log._replace(
        bits_up=torch.cat([log.bits_up.to(torch.int64), up]),
        bits_down=torch.cat([log.bits_down, extra_down]) if down else log.bits_down,
        steps=ran,
        extra=extra,
    )


def curriculum_cohort(env: Any, rng: RoundRng, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Client curriculum for `Env` env at the server model `x [d]` (fedbench.curriculum):
    the cohort `[k]` (sorted, k = min(m, g(t))) drawn uniformly from the g(t) clients with the
    lowest (`curriculum`) or highest (`anti_curriculum`) loss, with g the pacing function over
    the run's rounds at step t − 1; every client's 32-bit loss report `[n]`; and the clients
    queried `[n]` (all of them receive the model to score it; as power-of-choice's candidates)."""
    from fedbench.algorithms.base import cohort_size  # base imports this module
    from fedbench.curriculum import client_scores, pacing
    from fedbench.network import has_availability, present

    if env.rounds < 1:
        raise ValueError(f"[algorithm] sampling = {env.sampling!r} paces over the run's rounds")
    m, n = cohort_size(env.n, env.participation), env.n
    score = client_scores(env.task, x).cpu().to(torch.float64)  # [n] mean loss under x
    order = (score if env.sampling == "curriculum" else -score).argsort(stable=True)  # [n]
    kind, a, b = env.pacing
    step = torch.tensor([rng.round - 1])
    pool = int(pacing(kind, a, b, env.rounds, torch.tensor([n]), step)[0, 0])
    pick = torch.randperm(pool, generator=rng(seeding.COHORT), device=rng.device)[: min(m, pool)]
    ids = order[pick.cpu()].sort().values.to(env.device)
    if env.network is not None and has_availability(env.network):
        ids = present(env.network, ids, rng.seed, rng.round)
    reports = torch.full((n,), FLOAT_BITS, dtype=torch.int64, device=env.device)
    return ids, reports, torch.arange(n, device=env.device)
