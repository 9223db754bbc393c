"""Differential privacy and secure aggregation beside compression (issue 14).

- `config`: the `[privacy]` grid section (PRIVACY_PARAMS) and its cross-checks (`check`),
  which refuse in one line the settings that would void the guarantee.
- `dp`: client-level clipping, Gaussian noise (central or local), adaptive clipping, wrapped
  around the uplink compressor with error feedback inside (`attach` builds it into an Env).
- `accountant`: ε at the configured δ from Google's dp-accounting (RDP or PLD) with the run's
  actual client sampling.
- `secagg`: pairwise-mask secure aggregation in Z_{2^b} with fixed-point encoding.

Importing this package is light: dp-accounting is imported only when ε is computed.
"""

from __future__ import annotations

from fedbench.privacy.config import PRIVACY_PARAMS, PrivacyConfig, check, messages_per_round

__all__ = ["PRIVACY_PARAMS", "PrivacyConfig", "check", "messages_per_round"]
