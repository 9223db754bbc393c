"""A validation split carved out of the training samples (`[task] val_fraction`, `val`), so
that hyperparameters are chosen without looking at the test set (issue 25).

Two protocols:
- `val = "samples"`: every client holds out `round(val_fraction · count_i)` of its own
  training samples (at least one sample stays for training); the held-out samples of all
  clients form one validation set. The cross-silo protocol: same clients, unseen samples.
- `val = "clients"`: `round(val_fraction · n)` whole clients are held out (at least one, at
  most n − 1); they never train, and the remaining clients are renumbered 0..n'−1. The
  cross-device protocol: the model is validated on clients it never saw.

The split runs after the test split and the partition, on training samples only: the test set
is untouched, and with `val_fraction = 0` the dataset is returned as is (bit-identical runs).
It draws from `numpy_rng(data_seed, VALIDATION)`, so every seed of a grid validates on the
same samples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from fedbench import seeding
from fedbench.data.base import DataError, FederatedDataset
from fedbench.data.lazy import LazyRows

VALIDATION = "validation"  # seeding purpose
MODES = ("samples", "clients")


def held_out_samples(counts: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Mask `[N]` of the samples held out when every client `i` (samples grouped by client,
    `counts [n]`) gives `round(fraction · count_i)` of them, never its last one."""
    n = counts.shape[0]
    client_of = np.repeat(np.arange(n), counts)  # [N]
    k = np.minimum(np.floor(fraction * counts + 0.5), counts - 1).astype(np.int64)  # [n]
    keys = rng.random(client_of.shape[0])  # [N] a random order within each client
    order = np.lexsort((keys, client_of))  # [N] grouped by client, shuffled within
    offsets = np.cumsum(counts) - counts  # [n]
    rank = np.empty_like(order)
    rank[order] = np.arange(order.shape[0]) - offsets[client_of[order]]  # [N] rank in client
    return rank < k[client_of]  # [N]


def held_out_clients(n: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Mask `[n]` of the `round(fraction · n)` clients held out (1 ≤ count ≤ n − 1)."""
    k = int(np.floor(fraction * n + 0.5))
    if k < 1 or k > n - 1:
        raise DataError(
            f'val_fraction = {fraction} with val = "clients" holds out {k} of {n} clients; '
            f"allowed: between 1 and {n - 1} clients (val_fraction in [{0.5 / n:.3g}, "
            f"{(n - 1.5) / n:.3g}])"
        )
    mask = np.zeros(n, dtype=bool)
    mask[rng.permutation(n)[:k]] = True
    return mask


def split(fd: FederatedDataset, fraction: float, mode: str, data_seed: int) -> FederatedDataset:
    """`fd` without its validation samples, the validation set in `x_val`, `y_val`."""
    if mode not in MODES:
        raise DataError(f"val = {mode!r}; allowed: {', '.join(MODES)}")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise DataError(f"val_fraction = {fraction!r}; allowed: a number >= 0 and < 1")
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"val_fraction = {fraction!r}; allowed: a number >= 0 and < 1")
    if fraction == 0:
        return fd
    rng = seeding.numpy_rng(data_seed, VALIDATION)
    if isinstance(fd.x, LazyRows):
        return _split_lazy(fd, fd.x, fraction, mode, rng)
    if mode == "clients":
        out = held_out_clients(fd.n, fraction, rng)  # [n]
        val = out[fd.client_of]  # [N]
        counts = fd.counts[~out]  # [n'] clients keep their order, renumbered
    else:
        val = held_out_samples(fd.counts, fraction, rng)  # [N]
        counts = np.bincount(fd.client_of[~val], minlength=fd.n).astype(np.int64)  # [n]
        if not val.any():
            raise DataError(
                f"val_fraction = {fraction}: holds out no sample (clients have "
                f"{int(fd.counts.max())} or fewer); allowed: a larger fraction"
            )
    return dataclasses.replace(
        fd,
        x=np.ascontiguousarray(fd.x[~val]),
        y=fd.y[~val],
        counts=counts,
        x_val=np.ascontiguousarray(fd.x[val]),
        y_val=fd.y[val],
    )


def _split_lazy(
    fd: FederatedDataset, x: LazyRows, fraction: float, mode: str, rng: np.random.Generator
) -> FederatedDataset:
    """`split` of samples computed on demand (`data.lazy`): the same held-out clients
    (`clients`); with `samples`, each client's last `round(fraction · count_i)` training
    samples (at most count_i − 1; its samples are i.i.d., so which ones does not matter)."""
    if mode == "clients":
        out = held_out_clients(fd.n, fraction, rng)  # [n]
        train, val = x.select(~out), x.select(out)
    else:
        k = np.minimum(np.floor(fraction * fd.counts + 0.5), fd.counts - 1).astype(np.int64)
        if not k.any():
            raise DataError(
                f"val_fraction = {fraction}: holds out no sample (clients have "
                f"{int(fd.counts.max())} or fewer); allowed: a larger fraction"
            )
        train, val = x.split_tail(k)
    lazy: dict[str, Any] = {"x": train, "y": train.labels(), "x_val": val, "y_val": val.labels()}
    return dataclasses.replace(fd, counts=train.counts.copy(), **lazy)


def from_task(fd: FederatedDataset, task: Mapping[str, Any]) -> FederatedDataset:
    """The split a resolved `[task]` section asks for (none without `val_fraction`)."""
    fraction = task.get("val_fraction", 0.0)
    if not fraction:
        return fd
    return split(fd, fraction, str(task.get("val", "samples")), int(task["data_seed"]))
