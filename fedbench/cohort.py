"""Who takes part in a round: client sampling and client presence.

This module is the one place that decides which clients train in round t. It sits below the
algorithms (`fedbench.algorithms.base` asks it through `sample_cohort`) and beside the time
model (`fedbench.network`, which asks it who was present when it charges a round); it imports
neither. It reads the `[network]` model's availability fields (`dropout`, `window_period`,
`window_on`, `offset`) duck-typed, and the algorithm's `Env` likewise (`n`, `participation`,
`sampling`, `network`, `device`, ...).

Sampling (`[algorithm] sampling`):

- `uniform`: m = round(participation·n) clients without replacement (every method).
- `poisson`: every client joins independently with probability q = participation (Poisson /
  Bernoulli sampling); a round where nobody joins is drawn again (every method).
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

The last three need the method's support (the grid refuses them elsewhere).

Presence (issue 13): client i is away in a round with probability p_i (`dropout_prob`, spread
over clients by `dropout_spread`) or outside its periodic window (`window_period`,
`window_on`, a random offset per client); `sample_cohort` keeps only the present, and when
nobody sampled is present the server waits (availability is drawn again). A round deadline's
effect on who finishes is the time model's (`fedbench.network.deadline_steps`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from fedbench import curriculum, seeding
from fedbench.seeding import RoundRng

FLOAT_BITS = 32  # one reported float (a norm or a loss)

SAMPLINGS = ("uniform", "poisson", "importance", "power_of_choice", "curriculum", "anti_curriculum")
# the client curricula of fedbench.curriculum (issue 16): cohorts from a paced pool of clients
CLIENT_CURRICULA = ("curriculum", "anti_curriculum")
# strategies every method gets through sample_cohort; the others need the method's support
COHORT_SAMPLINGS = ("uniform", "poisson")
MAX_REDRAW = 10_000

AVAILABILITY = "availability"  # seeding purpose of dropouts and availability windows
MAX_WAIT = 10_000  # redraws of availability before a round with nobody present is an error


# -- the round's cohort ---------------------------------------------------------------------------


def cohort_size(n: int, participation: float) -> int:
    return max(1, min(n, round(participation * n)))


def sample_cohort(env: Any, rng: RoundRng) -> Tensor:
    """Participating client ids `[m]`, sorted: uniform without replacement (or Poisson, see
    `Env.sampling`), then only those available in this round when the `[network]` model has
    dropouts or availability windows (`present`)."""
    ids = draw_cohort(env, rng)
    if env.network is None or not has_availability(env.network):
        return ids
    return present(env.network, ids, rng.seed, rng.round)


def draw_cohort(env: Any, rng: RoundRng) -> Tensor:
    """The sampled clients `[m]` before presence: `sample_cohort` without the dropouts."""
    if env.sampling == "poisson":
        return poisson_cohort(env.n, env.participation, rng, env.device)
    m = cohort_size(env.n, env.participation)
    if m == env.n:
        return torch.arange(env.n, device=env.device)
    perm = torch.randperm(env.n, generator=rng(seeding.COHORT), device=rng.device)
    return perm[:m].sort().values.to(env.device)


def poisson_cohort(n: int, q: float, rng: RoundRng, device: torch.device) -> Tensor:
    """Clients `[k]` (sorted) each drawn independently with probability q; at least one."""
    gen = rng(seeding.COHORT)
    for _ in range(MAX_REDRAW):
        hit = torch.rand(n, generator=gen, device=rng.device) < q  # [n]
        if bool(hit.any()):
            return torch.nonzero(hit).flatten().to(device)
    raise ValueError(f"[algorithm] sampling = 'poisson': no client drawn with q = {q}")


# -- presence: dropouts and availability windows --------------------------------------------------


def build_availability(
    p: Mapping[str, Any], n: int, seed: int
) -> tuple[Tensor | None, int, float, Tensor | None]:
    """The run's presence model from resolved `[network]` fields `p`: each client's dropout
    probability `[n]` float64 p_i (None: nobody drops out), drawn once from the run's seed as
    q_i = (1 − dropout_prob)·(1 + spread·(2u_i − 1)) clamped to [0, 1], p_i = 1 − q_i; the
    window period and on-share; and each client's window offset `[n]` int64 (None: no
    windows)."""
    dropout = offset = None
    if float(p.get("dropout_prob", 0.0)) > 0.0:
        v = torch.rand(n, generator=seeding.generator(seed, -1, AVAILABILITY), dtype=torch.float64)
        spread = float(p.get("dropout_spread", 0.0))
        q = (1.0 - float(p["dropout_prob"])) * (1.0 + spread * (2.0 * v - 1.0))  # availability
        dropout = (1.0 - q).clamp(0.0, 1.0)
    period = int(p.get("window_period", 0))
    if period > 0:
        gen = seeding.generator(seed, -1, f"{AVAILABILITY}/window")
        offset = torch.randint(0, period, (n,), generator=gen)
    return dropout, period, float(p.get("window_on", 1.0)), offset


def has_availability(net: Any) -> bool:
    """Whether some client can be unavailable (dropouts or availability windows)."""
    return net.dropout is not None or (net.window_period > 0 and net.window_on < 1.0)


def available(net: Any, seed: int, t: int, attempt: int = 0) -> Tensor:
    """Presence mask `[n]` bool (CPU) of round t: inside its window (client i is online when
    (t + attempt + offset_i) mod P < window_on·P) and not dropped out (u_i ≥ p_i, a fresh
    draw per round and attempt). `attempt` > 0: the server waited for someone to show up."""
    n = net.slowdown.numel()
    on = torch.ones(n, dtype=torch.bool)
    if net.window_period > 0 and net.offset is not None:
        phase = (t + attempt + net.offset) % net.window_period  # [n]
        on = phase < net.window_on * net.window_period
    if net.dropout is not None:
        gen = seeding.generator(seed, t, f"{AVAILABILITY}/{attempt}")
        on = on & (torch.rand(n, generator=gen, dtype=torch.float64) >= net.dropout)
    return on


def present(net: Any, ids: Tensor, seed: int, t: int) -> Tensor:
    """The sampled clients `ids [m]` that are available in round t, in order. When none is,
    the server waits: availability is drawn again (attempt 1, 2, ...) for the same sample."""
    return present_after(net, ids, seed, t)[0]


def present_after(net: Any, ids: Tensor, seed: int, t: int) -> tuple[Tensor, int]:
    """`present`'s clients and the number of attempts the server waited (0: someone was
    there at once); each attempt is one round's worth of waiting
    (`fedbench.network.charged_seconds`)."""
    cpu = ids.cpu()
    for attempt in range(MAX_WAIT):
        keep = cpu[available(net, seed, t, attempt)[cpu]]
        if keep.numel() > 0:
            return keep.to(ids.device), attempt
    raise ValueError(f"[network]: no sampled client was available in round {t}")


def waited(env: Any, rng: RoundRng) -> int:
    """Rounds the server waited for an available client in this round (uniform and Poisson
    cohorts with dropouts or windows; 0 otherwise)."""
    net = env.network
    if net is None or not has_availability(net):
        return 0
    if getattr(env, "sampling", "uniform") not in COHORT_SAMPLINGS:
        return 0
    return present_after(net, draw_cohort(env, rng).cpu(), rng.seed, rng.round)[1]


# -- importance sampling (OCS) --------------------------------------------------------------------


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


# -- power-of-choice ------------------------------------------------------------------------------


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
    m = cohort_size(env.n, env.participation)
    k = env.sampling_candidates or min(env.n, 2 * m)
    cand = candidates(env.n, max(k, m), rng, env.device)
    if env.network is not None and has_availability(env.network):
        cand = present(env.network, cand, rng.seed, rng.round)
    loss, _ = env.task.loss_grad(x.expand(cand.numel(), -1), cand)  # F_k(x) [k], full local data
    ids = highest_losses(cand, loss, min(m, cand.numel()))
    reports = torch.full((cand.numel(),), FLOAT_BITS, dtype=torch.int64, device=env.device)
    return ids, reports, cand


# -- client curriculum ----------------------------------------------------------------------------


def curriculum_cohort(env: Any, rng: RoundRng, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Client curriculum for `Env` env at the server model `x [d]` (fedbench.curriculum):
    the cohort `[k]` (sorted, k = min(m, g(t))) drawn uniformly from the g(t) clients with the
    lowest (`curriculum`) or highest (`anti_curriculum`) loss, with g the pacing function over
    the run's rounds at step t − 1; every client's 32-bit loss report `[n]`; and the clients
    queried `[n]` (all of them receive the model to score it; as power-of-choice's candidates)."""
    if env.rounds < 1:
        raise ValueError(f"[algorithm] sampling = {env.sampling!r} paces over the run's rounds")
    m, n = cohort_size(env.n, env.participation), env.n
    score = curriculum.client_scores(env.task, x).cpu().to(torch.float64)  # [n] loss under x
    order = (score if env.sampling == "curriculum" else -score).argsort(stable=True)  # [n]
    kind, a, b = env.pacing
    step = torch.tensor([rng.round - 1])
    pool = int(curriculum.pacing(kind, a, b, env.rounds, torch.tensor([n]), step)[0, 0])
    pick = torch.randperm(pool, generator=rng(seeding.COHORT), device=rng.device)[: min(m, pool)]
    ids = order[pick.cpu()].sort().values.to(env.device)
    if env.network is not None and has_availability(env.network):
        ids = present(env.network, ids, rng.seed, rng.round)
    reports = torch.full((n,), FLOAT_BITS, dtype=torch.int64, device=env.device)
    return ids, reports, torch.arange(n, device=env.device)
