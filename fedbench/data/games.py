"""Generated strongly-monotone quadratic min-max games with per-client data (our construction).

Rows are packed for `fedbench.models.game` (`[g, h, u, v, p, q, μ]`, see there):
f_j(x, y) = ½(g_jᵀx)² + (u_jᵀx − p_j)(v_jᵀy − q_j) − ½(h_jᵀy)² + (μ/2)(‖x‖² − ‖y‖²).
Client i draws its own centres ḡ_i, h̄_i, ū_i, v̄_i ~ N(0, σ²I/k) and p̄_i, q̄_i ~ N(0, σ²)
(σ = `heterogeneity`), then each of its samples adds N(0, I/k) to the vectors and N(0, 1) to
the scalars: clients hold different games whose average has one saddle point z*.

- `quadratic_game`: as above; f is μ + λ_min(E ggᵀ)-strongly convex in x, likewise in y.
- `bilinear`: g = h = 0, the regularised bilinear game
  f = xᵀBy + aᵀx − bᵀy + (μ/2)(‖x‖² − ‖y‖²) (the MASHA paper's first experiment is a bilinear
  saddle problem; this regularised form with per-client data is ours).
Each client's samples are its own (`partition = "natural"`); `test_fraction` holds out a share
of every client's samples as usual (the test loss is then f on held-out rows).
"""

from __future__ import annotations

import numpy as np

from fedbench.data.base import DATASETS, RawData
from fedbench.params import Component, Param


def game(
    rng: np.random.Generator,
    *,
    clients: int,
    dim: int,
    samples_per_client: int,
    mu: float,
    heterogeneity: float,
    quadratic: bool,
    name: str,
) -> RawData:
    n, m, k = clients, samples_per_client, dim
    centres = heterogeneity * rng.normal(size=(n, 4, k)) / np.sqrt(k)  # [n, 4, k] ḡ h̄ ū v̄
    vecs = np.repeat(centres, m, axis=0) + rng.normal(size=(n * m, 4, k)) / np.sqrt(k)
    if not quadratic:
        vecs[:, :2] = 0.0  # no g, h
    scal = np.repeat(heterogeneity * rng.normal(size=(n, 2)), m, 0) + rng.normal(size=(n * m, 2))
    rows = np.concatenate([vecs.reshape(n * m, 4 * k), scal, np.full((n * m, 1), mu)], 1).astype(
        np.float32
    )
    client = np.repeat(np.arange(n, dtype=np.int64), m)
    return RawData(rows, np.zeros(n * m, dtype=np.int64), 1, client, name)


def quadratic_game(rng: np.random.Generator, *, clients: int, **kw: object) -> RawData:
    return game(rng, clients=clients, quadratic=True, name="quadratic_game", **kw)  # type: ignore[arg-type]


def bilinear(rng: np.random.Generator, *, clients: int, **kw: object) -> RawData:
    return game(rng, clients=clients, quadratic=False, name="bilinear", **kw)  # type: ignore[arg-type]


PARAMS = {
    "dim": Param(10, "size k of x and of y (the model has 2k parameters)", "int", low=1),
    "samples_per_client": Param(20, "samples of every client", "int", low=1),
    "mu": Param(
        0.1, "strong monotonicity μ: (μ/2)(‖x‖² − ‖y‖²) in every sample", low=0.0, low_open=True
    ),
    "heterogeneity": Param(1.0, "spread σ of the client centres", low=0.0),
}
EXTRA = {
    "partitions": ("natural",),
    "default_partition": "natural",
    "default_model": "quadratic_game",
    "target": "game",
}

DATASETS.add(
    Component(
        "quadratic_game",
        quadratic_game,
        PARAMS,
        summary="strongly-monotone quadratic min-max game, a different game per client",
        kind="builtin",
        extra=EXTRA,
    )
)
DATASETS.add(
    Component(
        "bilinear",
        bilinear,
        PARAMS,
        summary="regularised bilinear min-max game xᵀBy + aᵀx − bᵀy + (μ/2)(‖x‖² − ‖y‖²)",
        kind="builtin",
        extra=EXTRA,
    )
)
