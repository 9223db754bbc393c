"""ε from Google's dp-accounting (RDP or PLD), for the sampling the run actually used.

RDP composes by adding curves: one round's curve is computed once and scaled by t (reading
the accountant's `_orders` / `_rdp`), so ε at every evaluation is cheap. One round is one
mechanism per client message; with k clipped messages per round (SCAFFOLD: Δy and Δc, each
clipped to C with noise σC) the round is one Gaussian of noise multiplier σ/√k (k mechanisms
of sensitivity Δ are one of sensitivity √k·Δ). Events per round:

- central noise, uniform cohorts of m of n without replacement (`sample_cohort`):
  `SampledWithoutReplacementDpEvent(n, m, Gaussian(σ/2))` under REPLACE_ONE — replacing one
  client moves the sum of updates clipped to C by up to 2C, and dp-accounting's noise
  multiplier is std / l2-sensitivity. Only the RDP accountant supports this event.
- central noise, Poisson sampling with rate q: `PoissonSampledDpEvent(q, Gaussian(σ))` under
  ADD_OR_REMOVE_ONE (sensitivity C). RDP or PLD.
  Its RDP at each order is capped by the unsampled Gaussian's α/(2(σ/2)²): a mixture over
  cohorts of Gaussian mechanisms is no worse than its worst component (quasi-convexity of the
  Rényi divergence); Wang et al.'s bound exceeds that for small σ.
- full participation (m = n): `Gaussian(σ/2)` (replace-one) with no amplification.
- local noise: each message is itself a Gaussian mechanism seen by the server, so there is no
  amplification by sampling; a client's ε after t rounds is that of t compositions of
  `Gaussian(σ/2)` (replace-one on the client's data), counting every round as one it may have
  joined (the conservative bound; its participation is public).

σ = 0 gives ε = ∞. dp-accounting is imported here only, when ε is computed.

What ε is: an upper bound. RDP at the orders `ORDERS` (denser than dp-accounting's default
between 1 and 4, where the optimum lies for large ε: q = 0.2, σ = 0.8, 100 rounds gives
24.164 instead of 24.175), converted to (ε, δ) by dp-accounting's `compute_epsilon`, the
improved conversion ε = r_α + log(1 − 1/α) − log(δα)/(α − 1) (Balle et al. 2020, Prop. 12 of
arXiv 2004.00010) that its RdpAccountant uses; minimised over the orders, so slightly loose
(fractional orders whose series fail to converge are dropped by the library, silently here).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from fedbench.privacy.config import PrivacyConfig

ORDERS: tuple[float, ...] = tuple(
    sorted(
        {round(1 + k / 50, 2) for k in range(1, 150)}  # 1.02 … 3.98 by 0.02
        | {round(1 + k / 10, 1) for k in range(1, 100)}  # dp-accounting's default 1.1 … 10.9
        | set(range(11, 257))
        | {512, 1024}
    )
)


class _DropUnconverged(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "failed to converge" not in str(record.msg)


@contextlib.contextmanager
def quiet_absl() -> Iterator[None]:
    """Drop dp-accounting's "failed to converge … excluding this order" warnings (one per
    dropped fractional order, printed through absl) while inside; no global logging change."""
    log = logging.getLogger("absl")
    drop = _DropUnconverged()
    log.addFilter(drop)
    try:
        yield
    finally:
        log.removeFilter(drop)


def round_event(p: PrivacyConfig, n: int, m: int, sampling: str, messages: int = 1) -> Any:
    """The dp-accounting event of one round."""
    import dp_accounting as dpa

    sigma = p.noise_multiplier / math.sqrt(messages)
    if p.noise == "local":
        return dpa.GaussianDpEvent(sigma / 2)
    if sampling == "poisson":
        return dpa.PoissonSampledDpEvent(m / n, dpa.GaussianDpEvent(sigma))
    if m >= n:
        return dpa.GaussianDpEvent(sigma / 2)
    return dpa.SampledWithoutReplacementDpEvent(n, m, dpa.GaussianDpEvent(sigma / 2))


def make_accountant(kind: str, poisson: bool) -> Any:
    import dp_accounting as dpa
    from dp_accounting.pld import pld_privacy_accountant
    from dp_accounting.rdp import rdp_privacy_accountant

    rel = dpa.NeighboringRelation
    relation = rel.ADD_OR_REMOVE_ONE if poisson else rel.REPLACE_ONE
    if kind == "pld":
        return pld_privacy_accountant.PLDAccountant(relation)
    return rdp_privacy_accountant.RdpAccountant(list(ORDERS), relation)


class Tracker:
    """ε after t rounds, for increasing t at the run's evaluations: RDP composes by scaling
    one round's RDP curve (computed once), PLD by composing the rounds since the last call."""

    def __init__(
        self, p: PrivacyConfig, n: int, m: int, sampling: str = "uniform", messages: int = 1
    ) -> None:
        self.p = p
        self.poisson = p.noise == "central" and sampling == "poisson"
        self.event = None if p.noise_multiplier == 0.0 else round_event(p, n, m, sampling, messages)
        self.acc: Any = None
        self.done = 0

    def epsilon(self, rounds: int) -> float:
        """ε at δ after `rounds` rounds (0 rounds: 0; σ = 0: ∞)."""
        if rounds <= 0:
            return 0.0
        if self.event is None:
            return math.inf
        import dp_accounting as dpa

        if isinstance(self.event, dpa.GaussianDpEvent):  # t Gaussians of multiplier s are
            # exactly one of multiplier s/√t (no sampling: local noise or m = n)
            s = self.event.noise_multiplier / math.sqrt(rounds)
            if self.p.accountant == "pld":  # the analytic Gaussian ε PLD approximates
                from dp_accounting.gaussian_mechanism import get_epsilon_gaussian

                return float(get_epsilon_gaussian(s, self.p.delta))
            acc = make_accountant("rdp", self.poisson)
            with quiet_absl():
                acc.compose(dpa.GaussianDpEvent(s))
                return float(acc.get_epsilon(self.p.delta))
        if self.p.accountant == "rdp":
            from dp_accounting.rdp import rdp_privacy_accountant as rdp

            if self.acc is None:  # one round's RDP at every order; t rounds is t times it
                self.acc = make_accountant("rdp", self.poisson)
                with quiet_absl():
                    self.acc.compose(self.event, 1)
                if isinstance(self.event, dpa.SampledWithoutReplacementDpEvent):
                    # a mixture over cohorts of Gaussians of multiplier s: by quasi-convexity
                    # of the Rényi divergence never above the unsampled α/(2s²) (the WOR
                    # bound of Wang et al. is looser than that for small s)
                    s = self.event.event.noise_multiplier
                    self.acc._rdp = np.minimum(self.acc._rdp, self.acc._orders / (2 * s * s))
            orders, curve = self.acc._orders, self.acc._rdp
            with quiet_absl():
                return float(rdp.compute_epsilon(orders, rounds * curve, self.p.delta)[0])
        if self.acc is None or rounds < self.done:
            self.acc, self.done = make_accountant("pld", self.poisson), 0
        if rounds > self.done:
            self.acc.compose(self.event, rounds - self.done)
            self.done = rounds
        return float(self.acc.get_epsilon(self.p.delta))


def epsilon(
    p: PrivacyConfig, n: int, m: int, rounds: int, sampling: str = "uniform", messages: int = 1
) -> float:
    """ε at δ = p.delta after `rounds` rounds (0 rounds: 0; σ = 0: ∞)."""
    return Tracker(p, n, m, sampling, messages).epsilon(rounds)
