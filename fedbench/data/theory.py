"""The theory papers' tasks: binary datasets for logistic regression and their splits.

- `libsvm:PATH`: a LIBSVM/SVMlight text file (`label idx:value ...`, 1-based indices), as the
  EF21 / MARINA / DIANA experiments read a9a, w8a, phishing or mushrooms. Two distinct labels
  (±1, 0/1 or 1/2) make a binary task (smaller label → 0, larger → 1; `logreg` then uses
  b ∈ {−1, +1}); more labels make a multiclass one. Features are made dense.
- `breast_cancer`: scikit-learn's bundled Wisconsin breast cancer data (569 × 30, binary),
  standardised per feature (the raw features span five orders of magnitude).
- `contiguous` partition: blocks of consecutive samples in file order, the remainder going to
  the last client, as the EF21 reference code splits its LIBSVM files.
- `rare_features` partition (Richtárik, Gasanov, Burlachenko, "Error Feedback Shines when
  Features are Rare", arXiv 2305.15264): every feature gets one home client and each sample
  goes to the home of its rarest non-zero feature, so a feature appears on few clients (the
  paper's c) when the data are sparse. Dense data cannot be made rare by splitting; the
  achieved c is what `feature_owners` reports.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedbench.data.base import DATASETS, PARTITIONS, DataError, RawData
from fedbench.data.builtin import POOLED
from fedbench.params import Component, Param


def binary_labels(y: np.ndarray, source: str) -> tuple[np.ndarray, int, bool]:
    """Labels mapped to 0..C−1 in sorted order: (y [N] int64, classes, binary)."""
    values, y01 = np.unique(y, return_inverse=True)
    if values.size < 2:
        raise DataError(f"{source}: needs at least two distinct labels, found {values.tolist()}")
    return y01.astype(np.int64), int(values.size), values.size == 2


def read_libsvm(path: Path, features: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense features `[N, f]` float32 and raw labels `[N]` of a LIBSVM text file."""
    from sklearn.datasets import load_svmlight_file

    if not path.is_file():
        raise DataError(f"libsvm: {path}: no such file (a LIBSVM text file: label idx:value ...)")
    try:
        x, y = load_svmlight_file(str(path), n_features=features or None, dtype=np.float32)
    except (ValueError, UnicodeDecodeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"libsvm: {path}: not in LIBSVM format ({first})") from None
    if x.shape[0] == 0:
        raise DataError(f"libsvm: {path}: no samples")
    bad_y, bad_x = ~np.isfinite(y), ~np.isfinite(x.data)
    if bad_y.any() or bad_x.any():
        where = (
            f"label of sample {int(np.argmax(bad_y)) + 1}"
            if bad_y.any()
            else f"{int(bad_x.sum())} feature value(s)"
        )
        raise DataError(f"libsvm: {path}: non-finite {where} (NaN or inf); allowed: finite numbers")
    return np.asarray(x.todense(), dtype=np.float32), np.asarray(y)


def libsvm(rng: np.random.Generator, *, clients: int, path: str, features: int) -> RawData:
    del rng, clients  # the file is the data
    if not path:
        raise DataError("libsvm needs a path: dataset = 'libsvm:PATH'")
    x, raw_y = read_libsvm(Path(path), features)
    y, classes, binary = binary_labels(raw_y, f"libsvm: {path}")
    return RawData(x, y, classes, None, f"libsvm:{Path(path).name}", binary=binary)


def breast_cancer(rng: np.random.Generator, *, clients: int) -> RawData:
    del rng, clients
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)  # z-score per feature
    return RawData(x.astype(np.float32), y.astype(np.int64), 2, None, "breast_cancer", binary=True)


# -- partitions --------------------------------------------------------------------------------


def contiguous(
    labels: np.ndarray, n: int, rng: np.random.Generator, *, natural: np.ndarray | None
) -> np.ndarray:
    """Client i gets samples [i·⌊N/n⌋, (i+1)·⌊N/n⌋); the last client also gets the rest. [N]"""
    del rng, natural
    num = labels.shape[0]
    if num < n:
        raise DataError(f"partition contiguous: {num} training samples for {n} clients")
    return np.minimum(np.arange(num, dtype=np.int64) // (num // n), n - 1)


def rare_features(
    labels: np.ndarray,
    n: int,
    rng: np.random.Generator,
    *,
    natural: np.ndarray | None,
    features: np.ndarray,
) -> np.ndarray:
    """Each sample goes to the (random) home client of its rarest non-zero feature. [N]"""
    del natural
    num = labels.shape[0]
    if num < n:
        raise DataError(f"partition rare_features: {num} training samples for {n} clients")
    nz = features.reshape(num, -1) != 0  # [N, f]
    f = nz.shape[1]
    home = rng.permutation(np.arange(f) % n)  # [f] balanced random homes
    freq = nz.sum(0)  # [f] samples holding each feature
    rarity = np.where(nz, freq[None, :], np.iinfo(np.int64).max)  # [N, f]
    rarest = rarity.argmin(1)  # [N]
    owner = np.where(nz.any(1), home[rarest], rng.integers(0, n, num))
    # a client without a sample takes one from the largest client (few moves, stays rare)
    for i in np.flatnonzero(np.bincount(owner, minlength=n) == 0):
        big = int(np.bincount(owner, minlength=n).argmax())
        owner[np.flatnonzero(owner == big)[0]] = i
    return owner.astype(np.int64)


def feature_owners(x: np.ndarray, client_of: np.ndarray, n: int) -> tuple[int, int]:
    """(c, r) of a split: the most clients any feature appears on, the most features any
    client holds (the rare-features paper's constants)."""
    nz = x.reshape(x.shape[0], -1) != 0  # [N, f]
    held = np.zeros((n, nz.shape[1]), dtype=bool)  # [n, f]
    np.logical_or.at(held, client_of, nz)
    return int(held.sum(0).max()), int(held.sum(1).max())


BINARY = POOLED

DATASETS.add(
    Component(
        "libsvm",
        libsvm,
        {
            "features": Param(
                0, "number of features; 0 = the largest index in the file", "int", low=0
            )
        },
        summary="a LIBSVM text file (libsvm:PATH); two labels make a binary task (±1)",
        paper="Chang & Lin, LIBSVM, ACM TIST 2011; as in Richtárik et al., EF21, NeurIPS 2021",
        kind="file",
        extra=BINARY,
    )
)
DATASETS.add(
    Component(
        "breast_cancer",
        breast_cancer,
        {},
        summary="scikit-learn's breast cancer data, 569 x 30 standardised, binary (bundled)",
        paper="Street, Wolberg & Mangasarian, 1993; UCI ML Repository",
        kind="builtin",
        extra=BINARY,
    )
)
PARTITIONS.add(
    Component(
        "contiguous",
        contiguous,
        {},
        summary="consecutive blocks in file order, remainder to the last client (EF21 code)",
        kind="builtin",
    )
)
PARTITIONS.add(
    Component(
        "rare_features",
        rare_features,
        {},
        summary="each sample to the home client of its rarest non-zero feature",
        paper="Richtárik, Gasanov, Burlachenko, arXiv 2305.15264",
        kind="builtin",
        extra={"features": True},
    )
)
