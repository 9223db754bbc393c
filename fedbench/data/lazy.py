"""Client data computed on demand: no sample is stored, a cohort's samples are made when it is
sampled (issue 28: 10⁵–10⁶ clients on one machine).

A dataset that can compute any sample from (client, index) alone — a counter-based generator
such as `synthetic` with `generator = 3` — gives a `RowSource`. `LazyRows` then stands where a
stored `[N, *shape]` array (or `[N]` labels) would: it maps global row numbers (clients'
samples grouped, as in `FederatedDataset`) to (client, index) and asks the source for those
rows only. Indexing it with a slice, an integer or an index array/tensor of any shape returns
what indexing the stored array would (numpy arrays; torch tensors once `.to(device)`); the
same rows always give the same values, whatever else is asked with them.

The random numbers are counter-based: `normals(seed, keys, count)` hashes (seed, key, i) with
SplitMix64's finaliser and turns each 64-bit hash into one standard normal (Box–Muller on its
two 32-bit halves, in float64). Integer hashing is exact on every CPU; the float64 transforms
round to float32 samples, so the data agree across machines to the last bit in all but
vanishingly rare cases.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / φ: SplitMix64's increment
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_TWO_PI = 2.0 * np.pi
CHUNK = 1 << 12  # rows computed per call to the source (bounds its float64 working set)


def mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser, elementwise on uint64 (a bijection; wraps modulo 2^64)."""
    z = z ^ (z >> np.uint64(30))
    z *= _M1
    z ^= z >> np.uint64(27)
    z *= _M2
    z ^= z >> np.uint64(31)
    return z


def stream_seed(seed: int, stream: int) -> np.uint64:
    """The seed of one named stream (`stream` a small constant) of a dataset seed."""
    with np.errstate(over="ignore"):
        s = np.array([seed % 2**64], dtype=np.uint64) + np.uint64(stream) * GOLDEN
        return np.uint64(mix64(s)[0])


def normals(seed: np.uint64, keys: np.ndarray, count: int) -> np.ndarray:
    """Standard normals `[R, count]` float64, a pure function of (seed, key, column): row r is
    the same whatever other keys are asked with it. `keys [R]` uint64 (distinct keys give
    independent rows)."""
    with np.errstate(over="ignore"):
        base = mix64(keys.astype(np.uint64) * GOLDEN ^ seed)  # [R]
        cols = (np.arange(1, count + 1, dtype=np.uint64) * GOLDEN)[None, :]  # [1, count]
        h = mix64(base[:, None] + cols)  # [R, count]
    u1 = ((h >> np.uint64(32)).astype(np.float64) + 0.5) * 2.0**-32  # (0, 1)
    u2 = (h & np.uint64(0xFFFFFFFF)).astype(np.float64) * 2.0**-32  # [0, 1)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(_TWO_PI * u2)


class RowSource(Protocol):
    """What makes samples on demand."""

    input_shape: tuple[int, ...]

    def rows(self, client: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Samples `[R, *input_shape]` float32 and labels `[R]` int64 of the `index`-th sample
        (0-based, within its client) of each `client` (source numbering). Both `[R]` int64."""
        ...


class _Cache(threading.local):
    """The last rows asked for, per thread (block threads gather side by side): `x[idx]` then
    `y[idx]` computes the rows once."""

    key: np.ndarray | None = None
    value: tuple[np.ndarray, np.ndarray] | None = None


@dataclass(frozen=True, eq=False)
class LazyRows:
    """Samples (`part = "x"`) or labels (`"y"`) of clients `clients [n]` (source numbering):
    client c holds the `counts[c]` samples `first[c], first[c] + 1, ...` of its source client,
    and the rows are grouped by client in this order, as a stored `[N, ...]` array would be.
    Nothing is stored but these three `[n]` tables."""

    source: Any  # RowSource
    clients: np.ndarray  # [n] int64 source client of each client
    counts: np.ndarray  # [n] int64 samples of each client (0 allowed)
    first: np.ndarray  # [n] int64 index of each client's first sample in its source client
    part: str = "x"  # "x" samples, "y" labels
    device: Any = None  # None: numpy results; a torch.device: tensors there
    cache: _Cache = field(default_factory=_Cache, repr=False)

    # -- what a stored array would say of itself ------------------------------------------------

    @functools.cached_property
    def rows(self) -> int:
        """N, the number of rows (computed once per view)."""
        return int(self.counts.sum())

    @property
    def shape(self) -> tuple[int, ...]:
        n = self.rows
        return (n, *self.source.input_shape) if self.part == "x" else (n,)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def dtype(self) -> Any:
        if self.device is None:
            return np.dtype(np.float32 if self.part == "x" else np.int64)
        import torch

        return torch.float32 if self.part == "x" else torch.int64

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    nbytes = 0  # stored bytes: none
    flags = None  # not a numpy array (data.base.assemble never sees one)

    def numel(self) -> int:
        return self.size

    def element_size(self) -> int:
        return 4 if self.part == "x" else 8

    def __len__(self) -> int:
        return self.shape[0]

    @functools.cached_property
    def offsets(self) -> np.ndarray:
        """Row of each client's first sample, computed once per view (every gather maps rows
        to clients through it). [n]"""
        return np.cumsum(self.counts) - self.counts

    # -- views ----------------------------------------------------------------------------------

    def labels(self) -> LazyRows:
        """The labels of these rows (same cache: `x[idx]` then `y[idx]` computes once)."""
        return replace(self, part="y")

    def to(self, device: Any) -> LazyRows:
        """The same rows, answering with torch tensors on `device`."""
        return replace(self, device=device)

    def select(self, keep: np.ndarray) -> LazyRows:
        """The clients where the mask `keep [n]` is set, in order (renumbered 0..n'−1)."""
        return replace(
            self, clients=self.clients[keep], counts=self.counts[keep], first=self.first[keep],
            cache=_Cache(),
        )  # fmt: skip

    def split_tail(self, tail: np.ndarray) -> tuple[LazyRows, LazyRows]:
        """(head, tail): each client's last `tail [n]` samples apart from the rest."""
        head = replace(self, counts=self.counts - tail, cache=_Cache())
        return head, replace(
            self, counts=tail, first=self.first + self.counts - tail, cache=_Cache()
        )

    # -- indexing -------------------------------------------------------------------------------

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, tuple):
            if len(key) != 1:
                raise IndexError("LazyRows takes one index (rows)")
            key = key[0]
        if isinstance(key, slice):
            rows = np.arange(*key.indices(len(self)), dtype=np.int64)
            return self._answer(rows, None)
        if isinstance(key, (int, np.integer)):
            k = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= k < len(self):
                raise IndexError(f"row {key} out of range for {len(self)} rows")
            return self._answer(np.array([k], dtype=np.int64), None)[0]
        if hasattr(key, "detach"):  # a torch tensor of row numbers, any shape
            import torch

            rows = key.detach().to("cpu", torch.int64).numpy()
            return self._answer(rows, key.device)
        return self._answer(np.asarray(key, dtype=np.int64), None)

    def reshape(self, *shape: Any) -> Any:
        """Every row, computed (e.g. for a theory constant over all data), then reshaped."""
        return self[:].reshape(*shape)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = replace(self, device=None)[:]
        return out if dtype is None else out.astype(dtype)

    def _answer(self, rows: np.ndarray, device: Any) -> Any:
        x, y = self._rows(rows.reshape(-1))
        out = (x if self.part == "x" else y).reshape(
            *rows.shape, *(x.shape[1:] if self.part == "x" else ())
        )
        if self.device is None:
            return out
        import torch

        return torch.from_numpy(out).to(self.device if device is None else device)

    def _rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = self.cache
        if c.key is not None and c.value is not None and np.array_equal(c.key, rows):
            return c.value
        n = len(self)
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            raise IndexError(f"rows outside 0..{n - 1}")
        offsets = self.offsets
        xs, ys = [], []
        for s in range(0, max(rows.size, 1), CHUNK):  # chunks of rows, not clients
            r = rows[s : s + CHUNK]
            k = np.searchsorted(offsets, r, side="right") - 1  # [r] client of each row
            x, y = self.source.rows(self.clients[k], self.first[k] + r - offsets[k])
            xs.append(x)
            ys.append(y)
        value = (np.concatenate(xs), np.concatenate(ys))
        c.key, c.value = rows.copy(), value
        return value


@dataclass(frozen=True)
class LazyRaw:
    """A dataset build's answer when its samples are computed on demand: the source, each
    natural client's number of samples and the class count. `data.base.partitioned` turns it
    into a `FederatedDataset` whose arrays are `LazyRows` (natural partition only)."""

    source: Any  # RowSource
    sizes: np.ndarray  # [K] int64 samples of each client
    num_classes: int
    name: str


def federated(raw: LazyRaw, test_fraction: float, make: Callable[..., Any]) -> Any:
    """The natural split of `raw`: client k trains on its first samples and holds out its last
    `min(round(test_fraction · size_k), size_k − 1)` as its share of the test set (the samples
    of a client are i.i.d., so which ones are held out does not matter). `make` is
    `FederatedDataset` (passed in: data.base imports this module)."""
    sizes = raw.sizes.astype(np.int64)
    held = np.minimum(np.floor(test_fraction * sizes + 0.5).astype(np.int64), sizes - 1)  # [K]
    every = LazyRows(raw.source, np.arange(sizes.shape[0], dtype=np.int64), sizes,
                     np.zeros_like(sizes))  # fmt: skip
    train, test = every.split_tail(held)
    return make(
        name=raw.name,
        x=train,
        y=train.labels(),
        counts=train.counts.copy(),
        x_test=test,
        y_test=test.labels(),
        num_classes=raw.num_classes,
        input_shape=tuple(raw.source.input_shape),
    )


def is_lazy(a: object) -> bool:
    """Whether `a` is computed on demand (a `LazyRows`) rather than stored."""
    return isinstance(a, LazyRows)
