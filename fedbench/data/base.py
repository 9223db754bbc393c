"""Federated datasets: raw samples -> held-out test split -> partition -> samples grouped by client.

A dataset build returns `RawData` (all samples, optionally with the natural client of each
sample); a partition build returns the client id of every training sample. `partitioned`
wires them together from a resolved `[task]` section and returns a `FederatedDataset` whose
training samples are grouped by client (`x[offsets[i] : offsets[i] + counts[i]]` is client i's
data), which is the layout `fedbench.task.ClientData` puts on the device.

All randomness comes from `fedbench.seeding.numpy_rng(data_seed, purpose)` with one purpose
per stage, so changing the partition does not change the generated data or the test split.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedbench import seeding
from fedbench.params import Component, Registry

DATASETS = Registry("dataset")
PARTITIONS = Registry("partition")

# Purposes of the three set-up stages (distinct streams of the same data_seed).
DATA, SPLIT, PARTITION = seeding.DATA, "split", seeding.PARTITION


class DataError(ValueError):
    """A dataset or partition that cannot be built; one line saying what to change."""


@dataclass(frozen=True)
class RawData:
    """Every sample of a dataset, before any split."""

    x: np.ndarray  # [N, *shape] float32
    y: np.ndarray  # [N] int64
    num_classes: int
    client: np.ndarray | None  # [N] int64 natural client of each sample, or None
    name: str
    # labels y ∈ {0, 1} of a binary task: `logreg` then takes the theory papers' form
    # (b = 2y − 1 ∈ {−1, +1}, one weight vector, no bias)
    binary: bool = False
    # a file dataset's own test split (e.g. MNIST's t10k files): used as the test set as is,
    # every sample of x then trains and `test_fraction` is ignored
    x_test: np.ndarray | None = None  # [N_test, *shape] float32
    y_test: np.ndarray | None = None  # [N_test] int64


LAZY_STATS_CLIENTS = 1_000  # clients whose labels `heterogeneity` counts when computed on demand


@dataclass(frozen=True)
class FederatedDataset:
    """Training samples grouped by client, plus the held-out test set. The arrays may be
    `data.lazy.LazyRows` (samples computed on demand, e.g. synthetic `generator = 3`), which
    index like the arrays they stand for."""

    name: str
    x: np.ndarray  # [N, *shape] float32, client 0's samples first, then client 1's, ...
    y: np.ndarray  # [N] int64
    counts: np.ndarray  # [n] int64, all >= 1
    x_test: np.ndarray  # [N_test, *shape] float32 (N_test may be 0)
    y_test: np.ndarray  # [N_test] int64
    num_classes: int
    input_shape: tuple[int, ...]
    binary: bool = False  # see RawData.binary
    # validation samples held out of training by `[task] val_fraction` (data/validation.py)
    x_val: np.ndarray | None = None  # [N_val, *shape] float32
    y_val: np.ndarray | None = None  # [N_val] int64

    @property
    def n(self) -> int:
        """Number of clients."""
        return int(self.counts.shape[0])

    @property
    def offsets(self) -> np.ndarray:
        """Index of each client's first sample: exclusive cumulative sum of `counts`. [n]"""
        return np.cumsum(self.counts) - self.counts

    @property
    def client_of(self) -> np.ndarray:
        """Client id of every training sample. [N]"""
        return np.repeat(np.arange(self.n, dtype=np.int64), self.counts)

    def label_counts(self) -> np.ndarray:
        """Samples of each class held by each client (tokens, for sequences). [n, num_classes]"""
        owner, y = self.client_of, self.y
        if y.ndim == 2:  # token sequences [N, T]: count every next-token label
            owner, y = np.repeat(owner, y.shape[1]), y.reshape(-1)
        flat = owner * self.num_classes + y  # [N] (or [N*T])
        return np.bincount(flat, minlength=self.n * self.num_classes).reshape(
            self.n, self.num_classes
        )

    def heterogeneity(self) -> dict[str, float]:
        """`heterogeneity` of this partition; client sizes only when a sample's label is not
        one class (e.g. a language model's token sequence). Labels computed on demand
        (`data.lazy`) are counted over the first LAZY_STATS_CLIENTS clients only (clients are
        i.i.d. there), sizes over all; `sampled_clients` then says how many."""
        from fedbench.data.lazy import is_lazy

        if is_lazy(self.y) and self.n > LAZY_STATS_CLIENTS:
            k = LAZY_STATS_CLIENTS
            rows = int(self.counts[:k].sum())
            owner = np.repeat(np.arange(k, dtype=np.int64), self.counts[:k])
            lc = np.bincount(
                owner * self.num_classes + self.y[:rows], minlength=k * self.num_classes
            )
            out = heterogeneity(lc.reshape(k, self.num_classes))
            sizes = heterogeneity(self.counts[:, None])  # every client's size
            out.update({key: v for key, v in sizes.items() if key.startswith("samples_")})
            return {**out, "clients": self.n, "sampled_clients": k}
        if self.y.ndim == 1:
            return heterogeneity(self.label_counts())
        sizes = heterogeneity(self.counts[:, None])  # [n, 1]: one pseudo-class
        return {k: v for k, v in sizes.items() if k == "clients" or k.startswith("samples_")}

    def summary(self) -> dict[str, float]:
        """Client sizes, test size and label heterogeneity (see `heterogeneity`)."""
        het = heterogeneity(self.label_counts())
        if self.y.ndim == 2:  # token sequences: label counts are tokens, sizes are sequences
            c = self.counts
            het.update(samples_min=int(c.min()), samples_median=float(np.median(c)))
            het.update(samples_mean=float(c.mean()), samples_max=int(c.max()))
        return {
            "clients": self.n,
            "train_samples": int(self.counts.sum()),
            "test_samples": int(self.y_test.shape[0]),
            **{k: v for k, v in het.items() if k != "clients"},
        }


def heterogeneity(label_counts: np.ndarray) -> dict[str, float]:
    """How unequal a partition is, from its samples per client and class `[n, C]`.

    - `samples_min / _median / _mean / _max`: samples per client;
    - `classes_per_client`: mean number of classes of which a client holds >= 1 sample;
    - `label_tv`: mean over clients of the total-variation distance ½‖p_i − p‖₁ between client
      i's label distribution p_i and the distribution p of all training labels (0 = iid labels,
      → 1 when clients hold disjoint classes);
    - `label_entropy`: mean over clients of H(p_i) / log K, K = classes present in the whole
      training set (1 = every client uniform over all K classes, 0 = one class each).
    """
    lc = np.asarray(label_counts, dtype=np.float64)  # [n, C]
    sizes = lc.sum(1)  # [n]
    p_client = lc / np.maximum(sizes, 1.0)[:, None]  # [n, C]
    p_global = lc.sum(0) / max(lc.sum(), 1.0)  # [C]
    tv = 0.5 * np.abs(p_client - p_global).sum(1)  # [n]
    plogp = np.where(p_client > 0, p_client * np.log(np.where(p_client > 0, p_client, 1.0)), 0.0)
    classes = int((p_global > 0).sum())
    entropy = -plogp.sum(1) / np.log(classes) if classes > 1 else np.zeros(lc.shape[0])  # [n]
    return {
        "clients": int(lc.shape[0]),
        "samples_min": int(sizes.min()),
        "samples_median": float(np.median(sizes)),
        "samples_mean": float(sizes.mean()),
        "samples_max": int(sizes.max()),
        "classes_per_client": float((lc > 0).sum(1).mean()),
        "label_tv": float(tv.mean()),
        "label_entropy": float(entropy.mean()),
    }


# -- test split ------------------------------------------------------------------------------


def held_out_count(sizes: np.ndarray, fraction: float) -> np.ndarray:
    """Test samples held out of each size: fraction·size rounded half up. [same shape] int64"""
    return np.floor(fraction * np.asarray(sizes) + 0.5).astype(np.int64)


def global_test_mask(num: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random held-out set of `held_out_count(num, fraction)` samples. [num] bool"""
    mask = np.zeros(num, dtype=bool)
    if fraction == 0.0:  # nothing held out: skip an N-sample permutation
        return mask
    mask[rng.permutation(num)[: int(held_out_count(np.asarray(num), fraction))]] = True
    return mask


def per_client_test_mask(
    client: np.ndarray, fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """Hold out `fraction` of each client's samples, keeping at least one for training. [N] bool"""
    if fraction == 0.0:  # nothing held out: skip an N-sample permutation and sort
        return np.zeros(client.shape[0], dtype=bool)
    sizes = np.bincount(client)  # [K]
    take = np.minimum(held_out_count(sizes, fraction), np.maximum(sizes - 1, 0))  # [K]
    order = rng.permutation(client.shape[0])
    order = order[np.argsort(client[order], kind="stable")]  # grouped by client, random within
    start = np.cumsum(sizes) - sizes  # [K]
    rank = np.arange(client.shape[0]) - np.repeat(start, sizes)  # rank within its client
    mask = np.zeros(client.shape[0], dtype=bool)
    mask[order] = rank < np.repeat(take, sizes)
    return mask


# -- assembly ----------------------------------------------------------------------------------


def check_raw(raw: RawData) -> None:
    """Reject malformed dataset output with a one-line message (guards file loaders)."""
    num = raw.x.shape[0]
    sequences = raw.y.ndim == 2 and raw.y.shape == raw.x.shape  # LM: next token per position
    if raw.x.ndim < 2 or (raw.y.shape != (num,) and not sequences):
        raise DataError(
            f"dataset {raw.name}: x has shape {raw.x.shape} and y {raw.y.shape}; "
            "expected [N, ...] and [N] (or token sequences [N, T] and [N, T])"
        )
    if num == 0:
        raise DataError(f"dataset {raw.name} has no samples")
    if raw.y.min() < 0 or raw.y.max() >= raw.num_classes:
        raise DataError(
            f"dataset {raw.name}: labels must lie in 0..{raw.num_classes - 1}, "
            f"got {raw.y.min()}..{raw.y.max()}"
        )
    if raw.client is not None and (raw.client.shape != (num,) or raw.client.min() < 0):
        raise DataError(f"dataset {raw.name}: natural client ids must be [N] integers >= 0")
    if raw.x_test is not None or raw.y_test is not None:
        check_own_test(raw)


def check_own_test(raw: RawData) -> None:
    """A file dataset's own test set matches its training samples in shape and labels."""
    xt, yt = raw.x_test, raw.y_test
    if xt is None or yt is None or xt.shape[1:] != raw.x.shape[1:] or yt.shape != xt.shape[:1]:
        raise DataError(
            f"dataset {raw.name}: its test set must be x_test [N_test, "
            f"{', '.join(map(str, raw.x.shape[1:]))}] with labels y_test [N_test]"
        )
    if yt.size and (yt.min() < 0 or yt.max() >= raw.num_classes):
        raise DataError(
            f"dataset {raw.name}: test labels must lie in 0..{raw.num_classes - 1}, "
            f"got {yt.min()}..{yt.max()}"
        )


def check_assignment(owner: np.ndarray, n: int, partition: str) -> None:
    """Every training sample has a client in 0..n-1 and every client has a sample."""
    if owner.ndim != 1 or (owner.size and (owner.min() < 0 or owner.max() >= n)):
        raise DataError(f"partition {partition} returned client ids outside 0..{n - 1}")
    empty = int((np.bincount(owner, minlength=n) == 0).sum())
    if empty:
        raise DataError(
            f"partition {partition} left {empty} of {n} clients without samples; use fewer clients"
        )


def assemble(
    raw: RawData, train: np.ndarray, test: np.ndarray, owner: np.ndarray, n: int
) -> FederatedDataset:
    """Group the training samples `train` by their client `owner` (stable within a client).

    `train`, `test`: sample indices into `raw`; `owner`: client of each `train` sample. [N_train]
    A dataset with its own test set (`raw.x_test`) uses that instead of `raw.x[test]`.
    """
    x_test = raw.x[test] if raw.x_test is None else raw.x_test  # [N_test, *shape]
    y_test = raw.y[test] if raw.y_test is None else raw.y_test  # [N_test]
    if _grouped_run(train, owner) and raw.x.flags.writeable:
        # already grouped and one run of samples (a natural split without a test split, e.g.
        # a million synthetic clients): views, so the samples are stored once, not twice
        first = int(train[0]) if train.size else 0
        rows: slice | np.ndarray = slice(first, first + train.shape[0])
    else:
        rows = train[np.argsort(owner, kind="stable")]  # [N_train]
    x, y = raw.x[rows], raw.y[rows]
    return FederatedDataset(
        name=raw.name,
        x=np.ascontiguousarray(x, dtype=np.float32),
        y=y.astype(np.int64, copy=False),
        counts=np.bincount(owner, minlength=n).astype(np.int64),
        x_test=np.ascontiguousarray(x_test, dtype=np.float32),
        y_test=y_test.astype(np.int64),
        num_classes=raw.num_classes,
        input_shape=tuple(int(s) for s in raw.x.shape[1:]),
        binary=raw.binary,
    )


def _grouped_run(train: np.ndarray, owner: np.ndarray) -> bool:
    """`train` (increasing indices) is one contiguous run and `owner` is non-decreasing: the
    grouped training samples are a slice of the raw samples."""
    contiguous = train.size == 0 or int(train[-1]) - int(train[0]) == train.size - 1
    return contiguous and bool(np.all(owner[1:] >= owner[:-1]))


# -- the entry point ---------------------------------------------------------------------------

REQUIRED = ("dataset", "partition", "clients", "test_fraction", "data_seed")


def partitioned(task: Mapping[str, Any], seed: int) -> FederatedDataset:
    """Build the federated dataset of a resolved `[task]` section, before any validation
    share is held out (`fedbench.data.load_federated` holds it out).

    `task` holds `dataset` (`name` or `name:path` for file datasets), `partition`, `clients`,
    `test_fraction`, `data_seed` and the chosen dataset's and partition's parameters (other
    keys are ignored). Data generation, test split and partition each draw from
    `numpy_rng(data_seed, purpose)`; `seed` (the run seed) is deliberately unused so that all
    seeds of a grid train on the same data; it stays in the signature for loaders that may
    one day want per-run data.
    """
    del seed  # see the docstring
    missing = [k for k in REQUIRED if k not in task]
    if missing:
        raise DataError(f"[task] is missing {', '.join(missing)}")
    name, colon, path = str(task["dataset"]).partition(":")
    ds = lookup(DATASETS, name)
    part = lookup(PARTITIONS, str(task["partition"]))
    allowed = tuple(ds.extra.get("partitions", tuple(PARTITIONS)))
    if part.name not in allowed:
        raise DataError(
            f"partition {part.name} does not apply to dataset {ds.name}; "
            f"allowed: {', '.join(allowed)}"
        )
    n, fraction, data_seed = task["clients"], task["test_fraction"], task["data_seed"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DataError(f"clients = {n!r}; allowed: an integer >= 1")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise DataError(f"test_fraction = {fraction!r}; allowed: a number >= 0 and < 1")
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"test_fraction = {fraction!r}; allowed: a number >= 0 and < 1")
    extra: dict[str, Any] = {}
    if ds.kind == "file":
        extra["path"] = path
    elif colon:
        raise DataError(f"dataset {ds.name} takes no path (got {task['dataset']!r})")

    raw = ds.build(seeding.numpy_rng(data_seed, DATA), clients=n, **extra, **resolve(ds, task))
    from fedbench.data import lazy  # imports nothing of this module's at import time

    if isinstance(raw, lazy.LazyRaw):  # samples computed on demand (e.g. synthetic generator 3)
        if part.name != "natural":
            raise DataError(f"dataset {ds.name} computed on demand takes partition natural")
        return lazy.federated(raw, fraction, FederatedDataset)
    check_raw(raw)
    split_rng = seeding.numpy_rng(data_seed, SPLIT)
    if raw.x_test is not None:  # the dataset's own test split: test_fraction is ignored
        is_test = np.zeros(raw.y.shape[0], dtype=bool)
    elif part.name == "natural" and raw.client is not None:
        is_test = per_client_test_mask(raw.client, fraction, split_rng)
    else:
        is_test = global_test_mask(raw.y.shape[0], fraction, split_rng)
    train, test = np.flatnonzero(~is_test), np.flatnonzero(is_test)  # [N_train], [N_test]
    natural = None if raw.client is None else raw.client[train]
    # partitions that split by feature (rare_features) declare extra["features"]
    features = {"features": raw.x[train]} if part.extra.get("features") else {}
    owner = part.build(
        raw.y[train],
        n,
        seeding.numpy_rng(data_seed, PARTITION),
        natural=natural,
        **features,
        **resolve(part, task),
    )
    owner = np.asarray(owner, dtype=np.int64)
    if owner.shape != train.shape:
        raise DataError(
            f"partition {part.name} returned {owner.shape[0]} ids for {train.size} samples"
        )
    check_assignment(owner, n, part.name)
    return assemble(raw, train, test, owner, n)


def lookup(registry: Registry, name: str) -> Component:
    """The component called `name`, or a DataError listing what exists."""
    if name not in registry:
        raise DataError(f"unknown {registry.what} {name!r}; allowed: {', '.join(registry)}")
    return registry[name]


def resolve(component: Component, task: Mapping[str, Any]) -> dict[str, Any]:
    """The component's own parameters from the flat `[task]` section, checked."""
    try:
        return component.resolve(task)
    except ValueError:
        for key, p in component.params.items():
            if key in task:
                try:
                    p.check(task[key])
                except ValueError as e:
                    raise DataError(
                        f"{key} = {task[key]!r}: {e}".replace(f"got {task[key]!r}; ", "")
                    ) from None
        raise
