"""The only place seeds are mixed.

A job draws every random number from a generator keyed by (seed, round, purpose): two
algorithms run with the same seed see the same initial model, the same partition, the same
cohorts and the same minibatch indices, so their curves differ only by the method.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported on use: the data module (numpy only) needs none of it
    import torch

# Purposes used across the code base (any string works; these are the conventional ones).
INIT = "init"
PARTITION = "partition"
DATA = "data"
COHORT = "cohort"
BATCHES = "batches"
UPLINK = "uplink"
DOWNLINK = "downlink"
ALGORITHM = "algorithm"


def mix(seed: int, round: int, purpose: str) -> int:
    """A 63-bit integer that depends on all three keys (stable across runs and platforms)."""
    h = hashlib.blake2b(f"{seed}/{round}/{purpose}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def generator(
    seed: int, round: int, purpose: str, device: torch.device | str = "cpu"
) -> torch.Generator:
    """A fresh torch.Generator on `device` for (seed, round, purpose)."""
    import torch

    g = torch.Generator(device=device)
    g.manual_seed(mix(seed, round, purpose))
    return g


def numpy_rng(seed: int, purpose: str) -> np.random.Generator:
    """A numpy Generator for set-up work (data generation, partitions): round -1."""
    return np.random.default_rng(mix(seed, -1, purpose))


class RoundRng:
    """Generators for one round: `rng(purpose)` -> a generator keyed by (seed, round, purpose)."""

    def __init__(self, seed: int, round: int, device: torch.device | str = "cpu") -> None:
        import torch

        self.seed = seed
        self.round = round
        self.device = torch.device(device)

    def __call__(self, purpose: str) -> torch.Generator:
        return generator(self.seed, self.round, purpose, self.device)
