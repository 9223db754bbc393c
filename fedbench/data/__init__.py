"""Datasets and partitions: `load_federated(task, seed)` turns a resolved `[task]` section into
training samples grouped by client plus a held-out test set."""

from __future__ import annotations

from fedbench.data import builtin, partition  # noqa: F401  (registers the components)
from fedbench.data.base import (
    DATASETS,
    PARTITIONS,
    DataError,
    FederatedDataset,
    RawData,
    load_federated,
)

__all__ = [
    "DATASETS",
    "PARTITIONS",
    "DataError",
    "FederatedDataset",
    "RawData",
    "load_federated",
]
