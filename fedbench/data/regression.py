"""Generated least-squares problems of two seed papers' synthetic experiments (FL_PyTorch).

Both generators follow the reference code's construction: a client's matrix is drawn
uniform in [0, 1), its singular values are replaced by √((L − μ)·i/(k − 1) + μ), the targets
are b = A x_sol + noise, and A, b are scaled by √(rows/2) so that (1/rows)‖Ax − b‖² has the
prescribed spectrum. Rows are packed for `fedbench.models.regression`:
`[a_j (dim features), b_j, s]` with s = max_i L_i of the least-squares part (the robust
regulariser's scale); the label is a dummy class 0. Each client's rows are its own
(`partition = "natural"`); a held-out share would remove rows from a 12-sample client, so the
grids set `test_fraction = 0`. numpy's Generator replaces the code's RandomState: the same
distribution, not the same numbers.

- `rare_regression` ("Error feedback shines when features are rare", Richtárik, Gasanov,
  Burlachenko, arXiv 2305.15264) [code: burlachenkok/ef21_with_rare_features,
  `data_preprocess/artificial_dataset_rotated.py`]: every feature is held by c = ⌈n·c_div_n⌉
  clients chosen uniformly (redrawn, up to 5 times, while a client holds none); client i draws
  A_i ∈ [0,1)^{m × k_i} on its k_i features, singular values
  (1 − sel)·√((L − μ)·i/(k_i − 1) + μ) + sel·(10 if i is client 0 else 0) (the code's
  `l_plus_min_selector`, 0.1 in its scripts), x_sol = 0.5·1, noise 2·U(−1, 1).
- `quadratic` ("Federated learning is better with non-homomorphic encryption", Burlachenko,
  Alrowithi, Albalawi, Richtárik, arXiv 2312.02074) [code: burlachenkok/fl-with-nonhe,
  `data_preprocess/artificial_dataset.py`, `homogeneous:0`]: one matrix A ∈ [0,1)^{nm × d}
  with singular values √((L − μ)·i/(min(nm, d) − 1) + μ), x_sol = 1, noise 10·U[0, 1),
  rows m·c … m·c + m − 1 to client c. f = (1/n) Σ f_i then has L = L and, on the row space, μ.
"""

from __future__ import annotations

import math

import numpy as np

from fedbench.data.base import DATASETS, DataError, RawData
from fedbench.params import Component, Param

NATURAL = {"partitions": ("natural",), "default_partition": "natural"}


def spectrum(L: float, mu: float, count: int, k: int) -> np.ndarray:
    """√((L − μ)·i/(k − 1) + μ) for i < count (k the denominator's size; √L when k = 1)."""
    if k <= 1 or count <= 1:
        return np.full(max(count, 1), math.sqrt(L))[:count]
    i = np.arange(count, dtype=np.float64)
    return np.sqrt((L - mu) * i / (k - 1) + mu)


def with_spectrum(a: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """U diag(σ) Vᵀ of `a [r, c]`'s SVD with its singular values replaced by σ `[min(r, c)]`."""
    u, _, vt = np.linalg.svd(a, full_matrices=False)
    return (u * sigma) @ vt


def ls_smoothness(a: np.ndarray) -> float:
    """(2/rows)·‖a‖₂²: the smoothness of (1/rows)‖a x − b‖²."""
    return 2.0 * float(np.linalg.norm(a, 2)) ** 2 / a.shape[0]


def pack(a: np.ndarray, b: np.ndarray, s: float) -> np.ndarray:
    """Rows `[a, b, s]` `[N, f + 2]` float32."""
    return np.concatenate([a, b[:, None], np.full((a.shape[0], 1), s)], 1).astype(np.float32)


def holders(n: int, dim: int, c: int, rng: np.random.Generator) -> np.ndarray:
    """`[n, dim]` bool: feature j on c clients drawn uniformly; redrawn (5 tries) while a client
    holds no feature."""
    for _ in range(5):
        rank = np.argsort(rng.random((n, dim)), axis=0)  # a random permutation per feature
        held = rank < c
        if held.any(1).all():
            return held
    raise DataError(
        f"rare_regression: with c = {c} of {n} clients per feature some client holds no "
        f"feature; raise c_div_n or dim"
    )


def rare_regression(
    rng: np.random.Generator,
    *,
    clients: int,
    dim: int,
    samples_per_client: int,
    c_div_n: float,
    L: float,
    mu: float,
    selector: float,
    noise: float,
) -> RawData:
    n, m = clients, samples_per_client
    c = math.ceil(n * c_div_n)
    held = holders(n, dim, c, rng)  # [n, dim]
    x_sol = np.full(dim, 0.5)
    a_all = np.zeros((n * m, dim))
    b_all = np.zeros(n * m)
    for i in range(n):  # data generation only: one SVD per client
        cols = np.flatnonzero(held[i])
        k = cols.size
        raw = rng.random((m, k))
        sigma = spectrum(L, mu, min(m, k), k)
        if min(m, k) > 1:  # the code mixes in client 0's spectrum only in this branch
            sigma = sigma * (1 - selector) + (10.0 if i == 0 else 0.0) * selector
        a = np.zeros((m, dim))
        a[:, cols] = with_spectrum(raw, sigma)
        b = a @ x_sol + noise * (2 * rng.random(m) - 1)
        scale = math.sqrt(m / 2.0)
        a_all[i * m : (i + 1) * m] = a * scale
        b_all[i * m : (i + 1) * m] = b * scale
    s = max(ls_smoothness(a_all[i * m : (i + 1) * m]) for i in range(n))
    x = pack(a_all, b_all, s)
    client = np.repeat(np.arange(n, dtype=np.int64), m)
    return RawData(x, np.zeros(n * m, dtype=np.int64), 1, client, "rare_regression")


def quadratic(
    rng: np.random.Generator,
    *,
    clients: int,
    dim: int,
    samples_per_client: int,
    L: float,
    mu: float,
    noise: float,
) -> RawData:
    n, m = clients, samples_per_client
    rows = n * m
    raw = rng.random((rows, dim))
    k = min(rows, dim)
    a = with_spectrum(raw, spectrum(L, mu, k, k))
    b = a @ np.ones(dim) + noise * rng.random(rows)
    scale = math.sqrt(rows / 2.0)
    a, b = a * scale, b * scale
    s = max(ls_smoothness(a[i * m : (i + 1) * m]) for i in range(n))
    client = np.repeat(np.arange(n, dtype=np.int64), m)
    return RawData(pack(a, b, s), np.zeros(rows, dtype=np.int64), 1, client, "quadratic")


def _params(dim: int, L: float, noise: float) -> dict[str, Param]:
    return {
        "dim": Param(dim, "features d", "int", low=1),
        "samples_per_client": Param(12, "rows m of every client", "int", low=1),
        "L": Param(L, "largest squared singular value L of the generated spectrum", low=0.0),
        "mu": Param(1.0, "smallest squared singular value μ of the generated spectrum", low=0.0),
        "noise": Param(noise, "scale of the uniform noise added to the targets", low=0.0),
    }


DATASETS.add(
    Component(
        "rare_regression",
        rare_regression,
        {
            **_params(500, 20.0, 2.0),
            "c_div_n": Param(
                0.05,
                "share c/n of the clients holding each feature",
                low=0.0,
                high=1.0,
                low_open=True,
            ),
            "selector": Param(
                0.1,
                "weight of client 0's larger spectrum (the code's l_plus_min_selector)",
                low=0.0,
                high=1.0,
            ),
        },
        summary="least squares whose features are rare (each on c of n clients), packed rows",
        paper="Richtárik, Gasanov, Burlachenko, arXiv 2305.15264 (official generator)",
        kind="builtin",
        extra={**NATURAL, "default_model": "robust_linreg", "target": "regression"},
    )
)
DATASETS.add(
    Component(
        "quadratic",
        quadratic,
        _params(1000, 10.0, 10.0),
        summary="least squares with a prescribed spectrum in [μ, L], 12 rows per client",
        paper="Burlachenko, Alrowithi, Albalawi, Richtárik, arXiv 2312.02074 (official generator)",
        kind="builtin",
        extra={**NATURAL, "default_model": "linreg", "target": "regression"},
    )
)
