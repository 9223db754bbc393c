"""Datasets and partitions: `load_federated(task, seed)` turns a resolved `[task]` section into
training samples grouped by client plus a held-out test set."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedbench.data import validation
from fedbench.data.base import (
    DATASETS,
    PARTITIONS,
    DataError,
    FederatedDataset,
    RawData,
    partitioned,
)
from fedbench.params import import_submodules

import_submodules(__name__, __path__)  # each module registers its datasets / partitions


def load_federated(task: Mapping[str, Any], seed: int) -> FederatedDataset:
    """The federated dataset of a resolved `[task]` section (`data.base.partitioned`), with
    the validation share `[task] val_fraction` asks for held out (`data.validation`)."""
    return validation.from_task(partitioned(task, seed), task)


__all__ = [
    "DATASETS",
    "PARTITIONS",
    "DataError",
    "FederatedDataset",
    "RawData",
    "load_federated",
]
