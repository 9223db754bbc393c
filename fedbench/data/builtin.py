"""Built-in datasets: nothing is downloaded.

- `digits`: scikit-learn's bundled 8x8 handwritten digits (1,797 samples, 10 classes).
- `mnist1d`: MNIST-1D of Greydanus & Kobak, "Scaling Down Deep Learning with MNIST-1D",
  ICML 2024 (arXiv 2011.14439), generated locally by the `mnist1d` package.
- `synthetic`: Synthetic(α, β) of Li et al., "Federated Optimization in Heterogeneous
  Networks" (FedProx), MLSys 2020 (arXiv 1812.06127), following the paper's generator. For
  client k:
      n_k = int(lognormal(4, 2)) + 50            (capped at `max_samples`: our addition)
      u_k ~ N(0, α),  B_k ~ N(0, β)              (α, β are standard deviations, as in the code)
      W_k ~ N(u_k, 1) [dim, classes],  b_k ~ N(u_k, 1) [classes],  v_k ~ N(B_k, 1) [dim]
      x ~ N(v_k, Σ),  Σ = diag((j+1)^-1.2),  y = argmax(x W_k + b_k)
  Note that u_k shifts every logit of client k by the same amount, so α changes the draws of
  W_k and b_k but never a label: with the same seed Synthetic(0, β) and Synthetic(1, β) hold the
  same samples. β (the spread of the client feature means) is what makes clients differ more.

Every build has the signature `build(rng, *, clients, **params) -> RawData`; only `synthetic`
uses `rng` and `clients` (the others are fixed pools that the test split and partition cut).
"""

from __future__ import annotations

import functools
import os
import random
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from fedbench.data.base import DATASETS, RawData
from fedbench.params import Component, Param

POOLED = {"partitions": ("iid", "dirichlet", "shards", "quantity", "contiguous", "rare_features")}


def _frozen(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False  # cached arrays are shared by every caller
    return a


# -- digits ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _digits_pool() -> tuple[np.ndarray, np.ndarray]:
    images, target = _digits_file()
    x = (images / 16.0).astype(np.float32)[:, None]  # [N, 1, 8, 8] in [0, 1]
    return _frozen(x), _frozen(target.astype(np.int64))  # [N]


def _digits_file() -> tuple[np.ndarray, np.ndarray]:
    """sklearn.datasets.load_digits' images [N, 8, 8] and targets [N], read straight from the
    CSV scikit-learn bundles (what load_digits reads) without importing scikit-learn (~1.5 s,
    paid by every worker process otherwise); load_digits itself if the file is not there."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("sklearn")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            data = np.loadtxt(path, delimiter=",")
            return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images, d.target


def digits(rng: np.random.Generator, *, clients: int) -> RawData:
    """scikit-learn's bundled digits; `rng` and `clients` are unused."""
    x, y = _digits_pool()
    return RawData(x=x, y=y, num_classes=10, client=None, name="digits")


# -- mnist1d -----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _mnist1d_pool(samples: int, generator_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The package's train and test parts as one pool (fedbench makes its own test split).

    `make_dataset` reseeds numpy's and Python's global generators; both are restored.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = samples
    args.seed = generator_seed
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    x = np.concatenate([d["x"], d["x_test"]]).astype(np.float32)[:, None, :]  # [N, 1, 40]
    y = np.concatenate([d["y"], d["y_test"]]).astype(np.int64)  # [N]
    return _frozen(x), _frozen(y)


def mnist1d(
    rng: np.random.Generator, *, clients: int, samples: int, generator_seed: int
) -> RawData:
    """MNIST-1D generated locally; `rng` and `clients` are unused (the package seeds itself)."""
    x, y = _mnist1d_pool(samples, generator_seed)
    return RawData(x=x, y=y, num_classes=10, client=None, name="mnist1d")


# -- synthetic ---------------------------------------------------------------------------------


class SyntheticDraw(NamedTuple):
    """Samples of Synthetic(α, β) and the client models that labelled them."""

    x: np.ndarray  # [N, dim] float32, grouped by client
    y: np.ndarray  # [N] int64
    client: np.ndarray  # [N] int64
    W: np.ndarray  # [K, dim, classes]
    b: np.ndarray  # [K, classes]


ROWS = 1 << 16  # samples per chunk of the synthetic generator: bounds its float64 working set


def client_draws(
    rng: np.random.Generator, K: int, alpha: float, beta: float, max_samples: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first draws of every generator: sizes `[K]` int64 (lognormal(4, 2) + 50, capped),
    u_k ~ N(0, α) and B_k ~ N(0, β) `[K]` float64, in this order from `rng`."""
    sizes = np.minimum(rng.lognormal(4.0, 2.0, K).astype(np.int64) + 50, max_samples)  # [K]
    return sizes, rng.normal(0.0, alpha, K), rng.normal(0.0, beta, K)


def make_synthetic(
    rng: np.random.Generator,
    clients: int,
    alpha: float,
    beta: float,
    dim: int,
    classes: int,
    max_samples: int,
) -> SyntheticDraw:
    """Draw Synthetic(α, β) for `clients` clients (see the module docstring).

    Vectorised over clients and memory-bounded: the feature noise is drawn in chunks of
    `ROWS` samples (numpy's stream is the same as one [N, dim] draw, so the data equal those
    of the per-client definition) and written straight into the float32 result; labels come
    from batched [n_k, dim] @ [dim, classes] products over blocks of equal-sized clients."""
    K = clients
    sizes, u, B = client_draws(rng, K, alpha, beta, max_samples)  # [K] each
    W = u[:, None, None] + rng.standard_normal((K, dim, classes))  # [K, dim, classes]
    b = u[:, None] + rng.standard_normal((K, classes))  # [K, classes]
    v = B[:, None] + rng.standard_normal((K, dim))  # [K, dim]
    sd = np.arange(1, dim + 1, dtype=np.float64) ** -0.6  # [dim] sqrt of Σ_jj = (j+1)^-1.2
    client = np.repeat(np.arange(K, dtype=np.int64), sizes)  # [N]
    x = np.empty((client.shape[0], dim), dtype=np.float32)  # [N, dim]
    for s in range(0, client.shape[0], ROWS):  # chunks of samples (not a loop over clients)
        e = min(client.shape[0], s + ROWS)
        x[s:e] = v[client[s:e]] + rng.standard_normal((e - s, dim)) * sd
    y = synthetic_labels(x, sizes, W, b)
    return SyntheticDraw(x=x, y=y, client=client, W=W, b=b)


def synthetic_labels(x: np.ndarray, sizes: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """y = argmax(x W_k + b_k) in float64 for samples `x [N, dim]` grouped by client (`sizes
    [K]`). Clients are sorted by size and cut into blocks of at most ~`ROWS` samples; a block is
    one batched matmul [k, width, dim] @ [k, dim, classes], its clients padded to its largest
    (padding repeats a client's last sample and is never written). [N] int64"""
    K = sizes.shape[0]
    starts = np.cumsum(sizes) - sizes  # [K]
    order = np.argsort(sizes, kind="stable")  # [K] smallest first: little padding per block
    y = np.empty(x.shape[0], dtype=np.int64)
    lo = 0
    while lo < K:  # blocks of clients: at most ROWS padded samples each (or one client)
        hi = min(K, lo + max(1, ROWS // int(sizes[order[lo]])))
        width = int(sizes[order[hi - 1]])  # sorted: the block's largest client
        hi = lo + max(1, min(hi - lo, ROWS // width))
        width = int(sizes[order[hi - 1]])
        ks = order[lo:hi]  # [k]
        pos = np.arange(width)  # [width]
        n_k = sizes[ks][:, None]  # [k, 1]
        idx = starts[ks][:, None] + np.minimum(pos, n_k - 1)  # [k, width]
        logits = x[idx].astype(np.float64) @ W[ks] + b[ks][:, None, :]  # [k, width, classes]
        mask = pos < n_k  # [k, width]
        y[idx[mask]] = np.argmax(logits, axis=2)[mask]
        lo = hi
    return y


BLOCK = 4096  # clients per independent random stream of generator 2 (part of its definition)


def make_synthetic2(
    rng: np.random.Generator,
    clients: int,
    alpha: float,
    beta: float,
    dim: int,
    classes: int,
    max_samples: int,
    keep_models: bool = False,
) -> SyntheticDraw:
    """Synthetic(α, β), generator 2: the same distribution as `make_synthetic`, drawn for
    millions of clients. Sizes, u_k and B_k come from `rng` as in generator 1, then one seed per
    block of BLOCK clients; block j draws, from torch's generator seeded with its seed, W [k,
    dim, classes], b [k, classes], v [k, dim] and the noise of its samples [n_j, dim] (float32:
    W_k = z + u_k, v_k = z + B_k, x = z·sd + v_k), and labels them as generator 1 does (float64
    argmax). Blocks are independent, so they run on all cores and give the same data for any
    thread count; nothing larger than a block is held besides the float32 samples. W and b
    are returned (float32) only with `keep_models` (4·K·dim·classes bytes)."""
    import torch  # here, not at the top: `fedbench show` rebuilds splits without torch

    K = clients
    sizes, u64, B64 = client_draws(rng, K, alpha, beta, max_samples)  # [K] each
    u, B = u64.astype(np.float32), B64.astype(np.float32)  # [K]
    seeds = rng.integers(0, 2**62, -(-K // BLOCK))  # [blocks]
    starts = np.cumsum(sizes) - sizes  # [K]
    x = np.empty((int(sizes.sum()), dim), dtype=np.float32)  # [N, dim]
    y = np.empty(x.shape[0], dtype=np.int64)  # [N]
    W = np.empty((K, dim, classes), np.float32) if keep_models else np.empty((0, dim, classes))
    b = np.empty((K, classes), np.float32) if keep_models else np.empty((0, classes))
    sd = torch.arange(1, dim + 1, dtype=torch.float64).pow(-0.6).float()  # [dim]

    def block(j: int) -> None:
        k0, k1 = j * BLOCK, min(K, (j + 1) * BLOCK)
        g = torch.Generator().manual_seed(int(seeds[j]))
        Wj = torch.randn((k1 - k0, dim, classes), generator=g).add_(
            torch.from_numpy(u[k0:k1])[:, None, None]
        )  # [k, dim, classes]
        bj = torch.randn((k1 - k0, classes), generator=g).add_(torch.from_numpy(u[k0:k1])[:, None])
        vj = torch.randn((k1 - k0, dim), generator=g).add_(torch.from_numpy(B[k0:k1])[:, None])
        s, e = int(starts[k0]), int(starts[k1 - 1] + sizes[k1 - 1])
        rows = torch.from_numpy(x[s:e])  # [n_j, dim] a view: written in place
        torch.randn((e - s, dim), generator=g, out=rows)
        cl = torch.repeat_interleave(torch.arange(k1 - k0), torch.from_numpy(sizes[k0:k1]))
        rows.mul_(sd).add_(vj[cl])
        Wn, bn = Wj.numpy(), bj.numpy()
        y[s:e] = synthetic_labels(
            x[s:e], sizes[k0:k1], Wn.astype(np.float64), bn.astype(np.float64)
        )
        if keep_models:
            W[k0:k1], b[k0:k1] = Wn, bn

    with ThreadPoolExecutor(max(1, min(os.cpu_count() or 1, torch.get_num_threads()))) as pool:
        list(pool.map(block, range(seeds.shape[0])))  # blocks of clients, not clients
    client = np.repeat(np.arange(K, dtype=np.int64), sizes)  # [N]
    return SyntheticDraw(x=x, y=y, client=client, W=W, b=b)


# streams of generator 3 (counter-based): one per quantity
_STREAM_X, _STREAM_V, _STREAM_W, _STREAM_B = 1, 2, 3, 4


class SyntheticSource:
    """Synthetic(α, β), generator 3: every sample computed on demand from (data seed, client,
    index), nothing stored (`data.lazy`). The same distribution as generators 1 and 2: sizes,
    u_k and B_k are drawn from `rng` as there ([K] each, kept); then, with counter-based
    normals z (`data.lazy.normals`), v_k = B_k + z_v(k), W_k = u_k + z_W(k) [dim, classes],
    b_k = u_k + z_b(k), the j-th sample x = v_k + sd ⊙ z_x(k, j) (rounded to float32) and its
    label argmax(x W_k + b_k) in float64. A cohort's rows cost O(rows · dim + clients · dim ·
    classes), whatever the number of clients."""

    def __init__(
        self, rng: np.random.Generator, clients: int, alpha: float, beta: float, dim: int,
        classes: int, max_samples: int,
    ) -> None:  # fmt: skip
        from fedbench.data import lazy

        K = clients
        self.sizes, self.u, self.B = client_draws(rng, K, alpha, beta, max_samples)  # [K]
        seed = int(rng.integers(0, 2**63))
        self.seeds = [
            lazy.stream_seed(seed, s) for s in (_STREAM_X, _STREAM_V, _STREAM_W, _STREAM_B)
        ]
        self.dim, self.classes = dim, classes
        self.sd = np.arange(1, dim + 1, dtype=np.float64) ** -0.6  # [dim] sqrt of Σ_jj
        self.input_shape = (dim,)

    def models(self, k: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """v_k `[m, dim]`, W_k `[m, dim, classes]`, b_k `[m, classes]` (float64) of clients
        `k [m]`."""
        from fedbench.data.lazy import normals

        _, sv, sw, sb = self.seeds
        key = k.astype(np.uint64)
        v = self.B[k][:, None] + normals(sv, key, self.dim)  # [m, dim]
        W = self.u[k][:, None, None] + normals(sw, key, self.dim * self.classes).reshape(
            -1, self.dim, self.classes
        )  # [m, dim, classes]
        b = self.u[k][:, None] + normals(sb, key, self.classes)  # [m, classes]
        return v, W, b

    def rows(self, client: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from fedbench.data.lazy import normals

        uniq, inv = np.unique(client, return_inverse=True)  # the rows' clients, each once
        v, W, b = self.models(uniq)
        key = client.astype(np.uint64) << np.uint64(32) | index.astype(np.uint64)  # [R]
        x = (v[inv] + self.sd * normals(self.seeds[0], key, self.dim)).astype(np.float32)
        logits = np.einsum("rd,rdc->rc", x.astype(np.float64), W[inv]) + b[inv]  # [R, classes]
        return x, np.argmax(logits, axis=1).astype(np.int64)


def synthetic(
    rng: np.random.Generator,
    *,
    clients: int,
    alpha: float,
    beta: float,
    dim: int,
    classes: int,
    max_samples: int,
    generator: int = 1,
) -> RawData:
    """FedProx's Synthetic(α, β) with `clients` natural clients (`generator` 1: numpy's one
    stream, the data of every existing grid; 2: block streams, for millions of clients)."""
    name = f"synthetic({alpha:g},{beta:g})"
    if generator == 3:  # counter-based: computed on demand, nothing stored
        from fedbench.data.lazy import LazyRaw

        src = SyntheticSource(rng, clients, alpha, beta, dim, classes, max_samples)
        return LazyRaw(src, src.sizes, classes, name)  # type: ignore[return-value]
    make = make_synthetic if generator == 1 else make_synthetic2
    d = make(rng, clients, alpha, beta, dim, classes, max_samples)
    return RawData(x=d.x, y=d.y, num_classes=classes, client=d.client, name=name)


DATASETS.add(
    Component(
        "digits",
        digits,
        {},
        summary="scikit-learn's 8x8 handwritten digits, 1,797 samples, 10 classes (bundled)",
        paper="Alpaydin & Kaynak, Optical Recognition of Handwritten Digits, UCI ML Repository, "
        "1998",
        kind="builtin",
        extra=POOLED,
    )
)
DATASETS.add(
    Component(
        "mnist1d",
        mnist1d,
        {
            "samples": Param(
                5000, "samples generated (rounded down to a multiple of 10)", "int", low=100
            ),
            "generator_seed": Param(
                42,
                "seed of the MNIST-1D generator (42 = the standard dataset)",
                "int",
                low=0,
                high=2**32 - 1,
            ),
        },
        summary="MNIST-1D: 1-D signals of length 40, 10 classes, generated locally",
        paper="Greydanus & Kobak, Scaling Down Deep Learning with MNIST-1D, ICML 2024, "
        "arXiv 2011.14439",
        kind="builtin",
        extra=POOLED,
    )
)
DATASETS.add(
    Component(
        "synthetic",
        synthetic,
        {
            "alpha": Param(1.0, "std of u_k: how much client models differ", low=0.0),
            "beta": Param(1.0, "std of B_k: how much client feature means differ", low=0.0),
            "dim": Param(60, "features", "int", low=1),
            "classes": Param(10, "classes", "int", low=2),
            "max_samples": Param(
                2000,
                "cap on a client's samples (fedbench's addition to the generator)",
                "int",
                low=1,
            ),
            "generator": Param(
                1,
                "random stream: 1 = numpy's single stream (the data of existing grids), 2 = one "
                "torch stream per block of 4096 clients on all cores (same distribution, other "
                "draws; for 10^5-10^6 clients), 3 = counter-based: every sample computed when "
                "its client is sampled, nothing stored (same distribution, other draws; "
                "10^6 clients in little memory)",
                "int",
                low=1,
                high=3,
                since="0.3",
            ),
        },
        summary="FedProx Synthetic(alpha, beta): one linear softmax model per client",
        paper="Li et al., Federated Optimization in Heterogeneous Networks, MLSys 2020, "
        "arXiv 1812.06127",
        kind="builtin",
        extra={"partitions": ("natural",), "default_partition": "natural"},
    )
)
