"""Image datasets read from their official files on disk (nothing is downloaded).

- `mnist:DIR`, `fashion_mnist:DIR`: the IDX files `train-images-idx3-ubyte`,
  `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each raw or
  gzipped (`.gz`), in DIR or DIR/raw. IDX header (LeCun et al., "The MNIST database"): two zero
  bytes, a type code (0x08 = unsigned byte), the number of dimensions, then each dimension as a
  big-endian uint32; the values follow in row-major order.
  MNIST: LeCun, Bottou, Bengio & Haffner, Proc. IEEE 1998. Fashion-MNIST: Xiao, Rasul & Vollgraf,
  arXiv 1708.07747 (2017).
- `cifar10:DIR`, `cifar100:DIR`: the "python version" pickles of Krizhevsky, "Learning Multiple
  Layers of Features from Tiny Images" (2009): `data_batch_1..5` + `test_batch` (key b'labels')
  for CIFAR-10, `train` + `test` (key b'fine_labels', 100 classes) for CIFAR-100; b'data' is
  [N, 3072] uint8, channel-major (1024 red, 1024 green, 1024 blue values per image). DIR may be
  the extracted `cifar-10-batches-py` / `cifar-100-python` folder or the folder holding it.
  Pickles are read with an unpickler that only admits numpy arrays (no arbitrary code).

Images become float32 `[C, H, W]`: pixel/255, then per channel (v − mean) / std with the
training-set constants FL-Simulator (woodenchild95/FL-Simulator, dataset.py) normalises with:
MNIST 0.1307 / 0.3081; CIFAR-10 (0.491, 0.482, 0.447) / (0.247, 0.243, 0.262); CIFAR-100
(0.5071, 0.4867, 0.4408) / (0.2675, 0.2565, 0.2761); Fashion-MNIST 0.2860 / 0.3530 (the
training-set mean and std, as commonly quoted). The official test split is the test set;
`test_fraction` is ignored for these datasets.
"""

from __future__ import annotations

import gzip
import math
import pickle
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from fedbench.data.base import DATASETS, DataError, RawData
from fedbench.data.builtin import POOLED
from fedbench.params import Component

# (mean, std) per channel of the training images in [0, 1]; see the module docstring
NORMALISE: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.491, 0.482, 0.447), (0.247, 0.243, 0.262)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}


def normalise(images: np.ndarray, name: str) -> np.ndarray:
    """uint8 `[N, C, H, W]` -> float32 (v/255 − mean_c) / std_c."""
    mean, std = (np.asarray(v, dtype=np.float32)[:, None, None] for v in NORMALISE[name])  # [C,1,1]
    return (images.astype(np.float32) / 255.0 - mean) / std


def _need_dir(path: str, name: str, expected: str) -> Path:
    if not path:  # fetched once by `fedbench data fetch NAME` (never downloaded here)
        from fedbench.fetch import cached

        folder = cached(name)
        if folder is not None:
            return folder
        raise DataError(
            f"dataset {name} needs a path: dataset = '{name}:DIR' ({expected}), "
            f"or fetch it once with: fedbench data fetch {name}"
        )
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: no such directory; dataset {name} expects {expected}")
    return root


# -- IDX (MNIST, Fashion-MNIST) ----------------------------------------------------------------

IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
IDX_TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (raw or gzipped) as an array of its declared shape and type."""
    try:
        blob = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
    if len(blob) < 4 or blob[0] != 0 or blob[1] != 0 or blob[2] not in IDX_TYPES:
        raise DataError(f"{path}: not an IDX file; expected magic 00 00 <type> <ndim>")
    ndim = blob[3]
    head = 4 + 4 * ndim
    if len(blob) < head:
        raise DataError(f"{path}: truncated IDX header ({ndim} dimensions declared)")
    dims = tuple(int(v) for v in np.frombuffer(blob, ">u4", ndim, offset=4))
    dtype = np.dtype(IDX_TYPES[blob[2]])
    size = math.prod(dims) * dtype.itemsize
    if len(blob) - head != size:
        raise DataError(
            f"{path}: IDX header declares shape {list(dims)} ({size} bytes of data), "
            f"file holds {len(blob) - head}"
        )
    return np.frombuffer(blob, dtype, offset=head).reshape(dims)


def _find_idx(root: Path, stem: str) -> Path:
    for folder in (root, root / "raw"):
        for name in (stem, stem.replace("-idx", ".idx")):
            for suffix in ("", ".gz"):
                if (folder / (name + suffix)).is_file():
                    return folder / (name + suffix)
    raise DataError(
        f"{root}: missing {stem} (or {stem}.gz); expected the IDX files "
        f"{', '.join(IDX_FILES + IDX_TEST_FILES)}, raw or .gz"
    )


def _idx_pair(root: Path, stems: tuple[str, str], classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images `[N, 1, 28, 28]` uint8 and labels `[N]` int64 of one split."""
    img_path, lab_path = _find_idx(root, stems[0]), _find_idx(root, stems[1])
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{img_path}: expected unsigned-byte images [N, H, W], got {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{lab_path}: expected {images.shape[0]} labels [N], got shape {list(labels.shape)}"
        )
    if labels.size and int(labels.max()) >= classes:
        raise DataError(f"{lab_path}: labels must lie in 0..{classes - 1}, got {labels.max()}")
    return images[:, None], labels.astype(np.int64)


def _idx_dataset(name: str, path: str) -> RawData:
    root = _need_dir(path, name, "the four MNIST-format IDX files")
    x, y = _idx_pair(root, IDX_FILES, 10)
    x_test, y_test = _idx_pair(root, IDX_TEST_FILES, 10)
    return RawData(
        x=normalise(x, name), y=y, num_classes=10, client=None, name=name,
        x_test=normalise(x_test, name), y_test=y_test,
    )  # fmt: skip


def mnist(rng: np.random.Generator, *, clients: int, path: str) -> RawData:
    """MNIST from IDX files; `rng` and `clients` are unused."""
    return _idx_dataset("mnist", path)


def fashion_mnist(rng: np.random.Generator, *, clients: int, path: str) -> RawData:
    """Fashion-MNIST from IDX files; `rng` and `clients` are unused."""
    return _idx_dataset("fashion_mnist", path)


# -- CIFAR pickles -----------------------------------------------------------------------------

_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Admits dicts, lists, strings, numbers and numpy arrays; refuses any other global."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        return super().find_class(module, name)


def read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python pickle: images `[N, 3, 32, 32]` uint8 and labels `[N]` int64."""
    try:
        with path.open("rb") as f:
            blob = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as e:  # any unpickling failure means a corrupt file
        raise DataError(f"{path}: not a CIFAR python pickle ({type(e).__name__}: {e})") from None
    if not isinstance(blob, dict):
        raise DataError(f"{path}: not a CIFAR python pickle; expected a dict with b'data'")
    blob = {k.decode() if isinstance(k, bytes) else k: v for k, v in blob.items()}
    if "data" not in blob or label_key not in blob:
        raise DataError(f"{path}: expected keys b'data' and b'{label_key}'")
    data = np.asarray(blob["data"])
    labels = np.asarray(blob[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: b'data' must be [N, 3072] uint8, got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],):
        raise DataError(f"{path}: b'{label_key}' must hold {data.shape[0]} labels")
    return data.reshape(-1, 3, 32, 32), labels


CIFAR = {  # name: (folder inside the archive, train files, test files, label key, classes)
    "cifar10": (
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        "labels",
        10,
    ),
    "cifar100": ("cifar-100-python", ("train",), ("test",), "fine_labels", 100),
}


def _cifar_split(
    root: Path, files: tuple[str, ...], key: str, classes: int
) -> tuple[np.ndarray, np.ndarray]:
    for f in files:
        if not (root / f).is_file():
            raise DataError(
                f"{root / f}: missing; expected the CIFAR python pickles {', '.join(files)} "
                f"with keys b'data' and b'{key}'"
            )
    parts = [read_cifar_batch(root / f, key) for f in files]
    x = np.concatenate([p[0] for p in parts])  # [N, 3, 32, 32]
    y = np.concatenate([p[1] for p in parts])  # [N]
    if y.size and (y.min() < 0 or y.max() >= classes):
        raise DataError(f"{root}: labels must lie in 0..{classes - 1}, got {y.min()}..{y.max()}")
    return x, y


def _cifar_dataset(name: str, path: str) -> RawData:
    folder, train, test, key, classes = CIFAR[name]
    root = _need_dir(path, name, f"the python pickles of {folder}")
    if not (root / train[0]).is_file() and (root / folder).is_dir():
        root = root / folder
    x, y = _cifar_split(root, train, key, classes)
    x_test, y_test = _cifar_split(root, test, key, classes)
    return RawData(
        x=normalise(x, name), y=y, num_classes=classes, client=None, name=name,
        x_test=normalise(x_test, name), y_test=y_test,
    )  # fmt: skip


def cifar10(rng: np.random.Generator, *, clients: int, path: str) -> RawData:
    """CIFAR-10 from its python pickles; `rng` and `clients` are unused."""
    return _cifar_dataset("cifar10", path)


def cifar100(rng: np.random.Generator, *, clients: int, path: str) -> RawData:
    """CIFAR-100 (fine labels) from its python pickles; `rng` and `clients` are unused."""
    return _cifar_dataset("cifar100", path)


_TEST = "; the official test split is the test set (test_fraction is ignored)"
for _name, _build, _summary, _paper in (
    (
        "mnist",
        mnist,
        "MNIST from IDX files (mnist:DIR), 28x28 digits, 10 classes",
        "LeCun, Bottou, Bengio & Haffner, Gradient-Based Learning Applied to Document "
        "Recognition, Proc. IEEE 1998",
    ),
    (
        "fashion_mnist",
        fashion_mnist,
        "Fashion-MNIST from IDX files (fashion_mnist:DIR), 28x28 clothing, 10 classes",
        "Xiao, Rasul & Vollgraf, Fashion-MNIST, arXiv 1708.07747",
    ),
    (
        "cifar10",
        cifar10,
        "CIFAR-10 from the python pickles (cifar10:DIR), 32x32 colour, 10 classes",
        "Krizhevsky, Learning Multiple Layers of Features from Tiny Images, 2009",
    ),
    (
        "cifar100",
        cifar100,
        "CIFAR-100 from the python pickles (cifar100:DIR), 32x32 colour, 100 fine classes",
        "Krizhevsky, Learning Multiple Layers of Features from Tiny Images, 2009",
    ),
):
    DATASETS.add(
        Component(_name, _build, {}, _summary + _TEST, paper=_paper, kind="file", extra=POOLED)
    )
