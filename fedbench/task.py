"""The learning task: a model, device-resident client data and vectorised gradients.

Client data lives on the device as one tensor of samples grouped by client
(`x [N, *shape]`, `y [N]`) with `offsets [n]` and `counts [n]`. A minibatch for a whole
cohort is a gather: sample indices `offset_i + floor(u * count_i)` for `u ~ U[0,1)` of shape
`[m, K, B]`. Full local batches pad each client to the largest count in the chunk and weight
padding by zero, so no loss is ever averaged over padding.

Gradients for a cohort are computed in chunks of at most `chunk` clients so that the
activations of a large cohort stay within a memory budget; every chunk is one batched
forward/backward over its clients.
"""

from __future__ import annotations

import copy
import functools
import math
import os
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from fedbench import seeding
from fedbench.data.lazy import is_lazy
from fedbench.models import Model

DEFAULT_MEMORY_GB = 2.0
DEFAULT_CACHE_MB = 8.0  # working set of one block of clients in local training (README: Speed)
EVAL_CHUNK = 8192  # samples per evaluation forward pass
FULL_BATCH_CACHE_BYTES = 64 * 2**20  # largest padded copy of all clients' data kept


def memory_budget() -> float:
    """The memory budget in bytes: `FEDBENCH_MEMORY_GB` (default DEFAULT_MEMORY_GB). A run's
    `Task.memory_bytes`, and the budget of state built where no task is at hand (a
    compressor's `init`, the memory estimate)."""
    return float(os.environ.get("FEDBENCH_MEMORY_GB", DEFAULT_MEMORY_GB)) * 2**30


@dataclass(frozen=True)
class ClientData:
    """Training samples grouped by client plus the held-out test set, on one device."""

    x: Tensor  # [N, *shape] float32, grouped by client
    y: Tensor  # [N] int64
    offsets: Tensor  # [n] int64
    counts: Tensor  # [n] int64
    x_test: Tensor  # [N_test, *shape]
    y_test: Tensor  # [N_test]
    x_val: Tensor | None = None  # [N_val, *shape] held out of training ([task] val_fraction)
    y_val: Tensor | None = None  # [N_val]
    # client id of each test sample when the test set is split per client (None: one global
    # test set); `Task.client_values` then scores each client on its own test samples
    test_client_of: Tensor | None = None  # [N_test] int64

    @property
    def n(self) -> int:
        return int(self.counts.numel())

    @functools.cached_property
    def client_of(self) -> Tensor:
        """`[N]` int64: the client of each training sample, made on first use (whole-population
        evaluation, curricula); a run over 10⁶ clients that evaluates a sample of them never
        builds it (400 MB at 50 samples a client)."""
        n = torch.arange(self.n, device=self.counts.device)
        return torch.repeat_interleave(n, self.counts)

    @classmethod
    def from_numpy(
        cls,
        x: np.ndarray,
        y: np.ndarray,
        counts: np.ndarray,
        x_test: np.ndarray,
        y_test: np.ndarray,
        device: torch.device,
        x_val: np.ndarray | None = None,
        y_val: np.ndarray | None = None,
    ) -> ClientData:
        counts_t = torch.as_tensor(counts, dtype=torch.int64)
        offsets = torch.cumsum(counts_t, 0) - counts_t

        def put(a: Any, dtype: torch.dtype) -> Any:
            """Stored arrays onto the device; samples computed on demand (`data.lazy`, which
            answer an index with tensors on that device) stay so."""
            if a is None:
                return None
            if is_lazy(a):  # nothing to copy
                return a.to(device)
            return torch.as_tensor(a, dtype=dtype).to(device)

        return cls(
            x=put(x, torch.float32),
            y=put(y, torch.int64),
            offsets=offsets.to(device),
            counts=counts_t.to(device),
            x_test=put(x_test, torch.float32),
            y_test=put(y_test, torch.int64),
            x_val=put(x_val, torch.float32),
            y_val=put(y_val, torch.int64),
        )


class FullBatch(NamedTuple):
    """Every client's full local data, padded to the largest client (`Task._everyone_full`)."""

    ids: Tensor  # [n] 0..n−1
    x: Tensor  # [n, W, *shape]
    y: Tensor  # [n, W]
    wt: Tensor  # [n, W] 1/count_i on real samples, 0 on padding


def take(a: Any, idx: Tensor) -> Any:
    """`a[idx]` for an index tensor `idx [*s]` into the first dimension of `a [N, *f]`: the
    rows `[*s, *f]`. A stored tensor gathers through `index_select` (the same rows, about 4×
    faster on CPU than advanced indexing for minibatches of small images); lazily computed
    rows (fedbench.data.lazy) are indexed as they are."""
    if not isinstance(a, Tensor):
        return a[idx]
    flat = idx.reshape(-1).to(a.device)  # a CUDA tensor may be indexed from the host
    return a.index_select(0, flat).view(*idx.shape, *a.shape[1:])


def regulariser(w: Tensor, kind: str, lam: float) -> tuple[Tensor, Tensor | None]:
    """Value `[...]` and gradient of the regulariser for `w [..., d]` (None when absent)."""
    if kind == "none" or lam == 0.0:
        return torch.zeros(w.shape[:-1], device=w.device), None
    if kind == "l2":
        return 0.5 * lam * (w * w).sum(-1), lam * w
    if kind == "nonconvex":  # λ Σ_k w_k² / (1 + w_k²), gradient λ 2w / (1 + w²)²
        w2 = w * w
        q = (w2 + 1).reciprocal_()  # 1 / (1 + w²)
        return (w2 * q).sum(-1).mul_(lam), (w * (2 * lam)).mul_(q).mul_(q)
    raise ValueError(f"unknown regulariser {kind!r}")


class Task:
    """Loss, vectorised per-client gradients and evaluation for one model on one dataset."""

    def __init__(
        self,
        model: Model,
        data: ClientData,
        reg: str = "none",
        lam: float = 0.0,
        memory_gb: float | None = None,
        eval_clients: int = 0,
        eval_seed: int = 0,
    ) -> None:
        self.model = model
        self.data = data
        self.reg = reg
        self.lam = lam
        self.device = data.x.device
        self.memory_bytes = memory_budget() if memory_gb is None else memory_gb * 2**30
        self._act_floats = _activation_floats(model, tuple(data.x.shape[1:]))
        self._smoothness: Smoothness | None = None
        # `[experiment] eval_clients`: train_loss on this fixed sample of clients (None = all)
        self.eval_ids = eval_sample(data.n, eval_clients, eval_seed, self.device)

    @property
    def d(self) -> int:
        return self.model.d

    @property
    def n(self) -> int:
        return self.data.n

    def init_params(self, gen: torch.Generator) -> Tensor:
        """Initial server model `[d]` on the task's device."""
        return self.model.init(gen).to(self.device)

    def _client_bytes(self, batch: int) -> int:
        """Working set of one client in a step: model, gradient, update, activations (float32)."""
        return 4 * (3 * self.d + 3 * batch * self._act_floats)

    def chunk_size(self, batch: int) -> int:
        """Clients per forward/backward so that activations and gradient buffers fit the budget."""
        return max(1, int(self.memory_bytes // self._client_bytes(batch)))

    def block_size(self, batch: int) -> int:
        """Clients whose local steps run together: few enough that their models stay in the
        CPU cache across the K steps (each step streams every model of the block), capped by
        the memory budget. On a GPU the whole memory chunk is one block."""
        if self.device.type != "cpu":
            return self.chunk_size(batch)
        cache = float(os.environ.get("FEDBENCH_CACHE_MB", DEFAULT_CACHE_MB)) * 2**20
        return max(1, min(self.chunk_size(batch), int(cache // self._client_bytes(batch))))

    # -- sampling ------------------------------------------------------------------------------

    def batch_indices(self, ids: Tensor, steps: int, batch: int, gen: torch.Generator) -> Tensor:
        """Global sample indices `[m, steps, batch]` drawn uniformly (with replacement) from
        each client's own samples."""
        u = torch.rand((ids.numel(), steps, batch), generator=gen, device=gen.device)
        u = u.to(self.device)
        counts = self.data.counts[ids].view(-1, 1, 1)
        local = (u * counts).long().clamp_max_(counts - 1)  # guard u*count rounding up to count
        return self.data.offsets[ids].view(-1, 1, 1) + local

    def _full_batch(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """Every sample of each client, padded: indices `[m, max_count]` and weights
        1/count_i on real samples, 0 on padding."""
        counts = self.data.counts[ids]  # [m]
        width = int(counts.max())
        pos = torch.arange(width, device=self.device).expand(ids.numel(), width)
        mask = pos < counts.unsqueeze(1)  # [m, width]
        idx = self.data.offsets[ids].unsqueeze(1) + torch.where(mask, pos, 0)
        wt = mask.float() / counts.unsqueeze(1).float()
        return idx, wt

    # -- gradients -----------------------------------------------------------------------------

    def loss_grad(
        self, w: Tensor, ids: Tensor, idx: Tensor | None = None, out: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Per-client loss `[m]` and gradient `[m, d]` of f_i at the rows of `w [m, d]`.

        `idx [m, B]` are global sample indices (a minibatch per client); None means each
        client's full local data. The regulariser is included. `out` receives the gradient.
        """
        m = w.shape[0]
        g = torch.empty_like(w) if out is None else out
        if idx is None and m == self.n:
            every = self._everyone_full
            if (
                every is not None
                and self.chunk_size(every.wt.shape[1]) >= m
                and torch.equal(ids, every.ids)
            ):
                loss, _ = self.model.loss_grad(w, every.x, every.y, every.wt, out=g)
                return self._regularised(w, loss, g)
        loss = torch.empty(m, device=w.device)
        width = idx.shape[1] if idx is not None else int(self.data.counts[ids].max())
        step = self.chunk_size(width)
        for s in range(0, m, step):  # chunks of clients, not single clients
            e = min(m, s + step)
            if idx is None:
                bidx, wt = self._full_batch(ids[s:e])
            else:
                bidx = idx[s:e]
                wt = torch.full(bidx.shape, 1.0 / bidx.shape[1], device=w.device)
            x, y = take(self.data.x, bidx), self.data.y[bidx]  # [c, B, *shape], [c, B]
            loss[s:e], _ = self.model.loss_grad(w[s:e], x, y, wt, out=g[s:e])
        return self._regularised(w, loss, g)

    def _regularised(self, w: Tensor, loss: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        """The loss `[m]` and gradient `[m, d]` with the regulariser at `w` added in place."""
        r, dr = regulariser(w, self.reg, self.lam)
        if dr is not None:
            loss += r
            g += dr
        return loss, g

    @functools.cached_property
    def _everyone_full(self) -> FullBatch | None:
        """Every client's full local batch as `_full_batch(arange(n))` gathers it, built on
        first use and kept when it takes at most FULL_BATCH_CACHE_BYTES (else None). When one
        chunk holds every client, `loss_grad` over all clients is then the same computation
        without the per-call gather: the theory papers' setting (full gradients, everyone
        participating) at a fraction of the cost."""
        width = int(self.data.counts.max())
        item = self.data.x[:1].numel() * self.data.x.element_size()
        if self.n * width * item > FULL_BATCH_CACHE_BYTES:
            return None
        everyone = torch.arange(self.n, device=self.device)
        idx, wt = self._full_batch(everyone)
        return FullBatch(everyone, take(self.data.x, idx), self.data.y[idx], wt)

    # -- evaluation ----------------------------------------------------------------------------

    @torch.no_grad()
    def _sample_losses(self, w: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample loss `[N]` and accuracy `[N]` of the single model `w [d]`."""
        losses, correct = [], []
        step = max(1, EVAL_CHUNK // max(1, y[0].numel()))  # sequences [N, T]: fewer per pass
        for s in range(0, x.shape[0], step):
            z = self.model.logits(w.unsqueeze(0), x[s : s + step].unsqueeze(0))[0]
            losses.append(self.model.sample_loss(z, y[s : s + step]))
            correct.append(self.model.correct(z, y[s : s + step]))
        return torch.cat(losses), torch.cat(correct)

    @torch.no_grad()
    def evaluate(self, w: Tensor) -> dict[str, float]:
        """`test_loss` and `test_accuracy` of `w [d]` on the held-out set (plus `perplexity`
        for language models), and the same as `val_loss`, `val_accuracy`, `val_perplexity` on
        the validation set when the task has one."""
        out = self._held_out(w, self.data.x_test, self.data.y_test, "test_", "perplexity")
        if self.data.x_val is not None and self.data.y_val is not None:
            out.update(self._held_out(w, self.data.x_val, self.data.y_val, "val_"))
        return out

    def _held_out(
        self, w: Tensor, x: Tensor, y: Tensor, prefix: str, ppl: str = ""
    ) -> dict[str, float]:
        if y.numel() == 0:
            return {}
        loss, correct = self._sample_losses(w, x, y)
        out = {f"{prefix}loss": float(loss.mean()), f"{prefix}accuracy": float(correct.mean())}
        if not getattr(self.model, "reports_accuracy", True):  # regression, games
            del out[f"{prefix}accuracy"]
        if self.model.reports_perplexity:
            out[ppl or f"{prefix}perplexity"] = math.exp(min(out[f"{prefix}loss"], 700.0))
        return out

    @torch.no_grad()
    def train_loss(self, w: Tensor) -> float:
        """The objective f(w) = (1/n) Σ_i f_i(w): each client's mean loss, averaged over clients,
        regulariser included; with `eval_ids` (`[experiment] eval_clients`), the same average
        over that fixed random sample of clients, as cross-device papers evaluate."""
        if self.eval_ids is not None:
            return self.sampled_train_loss(w, self.eval_ids)
        loss, _ = self._sample_losses(w, self.data.x, self.data.y)
        per_client = torch.zeros(self.n, device=w.device).index_add_(0, self.data.client_of, loss)
        per_client /= self.data.counts
        r, _ = regulariser(w, self.reg, self.lam)
        return float(per_client.mean() + r)

    @torch.no_grad()
    def sampled_train_loss(self, w: Tensor, ids: Tensor) -> float:
        """(1/m) Σ_{i ∈ ids} f_i(w) over the clients `ids [m]`: their samples are gathered
        (one index per sample, no loop over clients), evaluated, and averaged per client."""
        counts = self.data.counts[ids]  # [m]
        local = torch.repeat_interleave(torch.arange(ids.numel(), device=self.device), counts)
        first = torch.cumsum(counts, 0) - counts  # [m] where each client starts in the gather
        rows = self.data.offsets[ids][local] + torch.arange(local.numel(), device=self.device)
        rows -= first[local]  # [M] sample indices of the chosen clients
        loss, _ = self._sample_losses(w, take(self.data.x, rows), self.data.y[rows])
        per_client = torch.zeros(ids.numel(), device=w.device).index_add_(0, local, loss)
        per_client /= counts
        r, _ = regulariser(w, self.reg, self.lam)
        return float(per_client.mean() + r)

    @torch.no_grad()
    def client_values(self, w: Tensor) -> ClientValues:
        """Each client's mean loss `[n]` (regulariser included, as in `train_loss`) and
        accuracy `[n]` (None for models without accuracy) of the server model `w [d]`, in one
        pass over the samples summed per client with `index_add_` (no loop over clients): on
        each client's own test samples when the task splits its test set per client
        (`ClientData.test_client_of`), else on its training samples. Clients without a test
        sample are dropped from the vectors (`ids` says which clients they are)."""
        d = self.data
        if d.test_client_of is not None:
            x, y, owner, source = d.x_test, d.y_test, d.test_client_of, "test"
            counts = torch.bincount(owner, minlength=self.n)  # [n]
        else:
            x, y, owner, source = d.x, d.y, d.client_of, "train"
            counts = d.counts
        loss, correct = self._sample_losses(w, x, y)  # [N], [N]
        per_loss = torch.zeros(self.n, device=w.device).index_add_(0, owner, loss)  # [n]
        per_acc = torch.zeros(self.n, device=w.device).index_add_(0, owner, correct)  # [n]
        ids = torch.nonzero(counts > 0).squeeze(1)  # [n'] clients with samples
        c = counts[ids].float()
        r, _ = regulariser(w, self.reg, self.lam)
        acc = per_acc[ids] / c if getattr(self.model, "reports_accuracy", True) else None
        return ClientValues(ids, per_loss[ids] / c + r, acc, source)

    def smoothness(self) -> Smoothness:
        """L and L_i for theory step sizes (cached; linear models only)."""
        if self._smoothness is None:
            own = getattr(self.model, "smoothness_constants", None)  # models with their own bound
            if own is not None:
                d = self.data
                L, L_i = own(d.x, d.offsets, d.counts)
                self._smoothness = Smoothness(L, L_i)
            else:
                self._smoothness = smoothness(self)
        return self._smoothness

    def full_gradient(self, w: Tensor) -> Tensor:
        """∇f(w) = (1/n) Σ_i ∇f_i(w) `[d]` over every client's full local data (regulariser
        included), computed in memory-budget chunks of clients."""
        width = int(self.data.counts.max())
        step = self.chunk_size(width)
        total = torch.zeros_like(w)
        for s in range(0, self.n, step):
            ids = torch.arange(s, min(self.n, s + step), device=self.device)
            _, g = self.loss_grad(w.expand(ids.numel(), -1), ids)  # [c, d]
            total += g.sum(0)
        return total / self.n

    def gradient_coherence(self, w: Tensor) -> float:
        """Coherence α = ‖mean_i g_i‖² / mean_i ‖g_i‖² of the per-client gradients
        g_i = ∇f_i(w) (full local data, regulariser included): the coherence of Chatterjee &
        Zielinski (arXiv 2203.10036), E_{z,z'}[g_z·g_z'] / E_z[g_z·g_z], with clients in the
        role of the examples z. 1 when every g_i is the same vector, 1/n for n orthogonal
        gradients of equal norm, 0 when they cancel."""
        width = int(self.data.counts.max())
        step = self.chunk_size(width)
        total = torch.zeros_like(w)
        sq = 0.0
        for s in range(0, self.n, step):
            ids = torch.arange(s, min(self.n, s + step), device=self.device)
            _, g = self.loss_grad(w.expand(ids.numel(), -1), ids)  # [c, d]
            total += g.sum(0)
            sq += float(g.double().square().sum())
        mean_sq = sq / self.n
        return float((total.double() / self.n).square().sum()) / mean_sq if mean_sq > 0 else 1.0

    # -- min-max games (models with `game_dim`: the operator F(z) takes the gradient's place) --

    @torch.no_grad()
    def game_metrics(self, w: Tensor) -> dict[str, float]:
        """`gap` (the duality gap max_y' f(x, y') − min_x' f(x', y)) and `dist_sq` (‖z − z*‖²)
        of `w = z = (x, y)` for a quadratic game (empty for other models). F(z) = Mz + c is
        affine: M and c come once from 2k + 1 evaluations of the full operator, then
        f = ½xᵀAx + xᵀBy − ½yᵀCy + aᵀx − bᵀy + const with M = [[A, B], [−Bᵀ, C]], c = (a, b)."""
        k = getattr(self.model, "game_dim", None)
        if k is None:
            return {}
        if not hasattr(self, "_game"):
            self._game = _game_constants(self, int(k))
        A_inv, C_inv, A, B, C, a, b, z_star = self._game
        z = w.double().to(A.device)
        x, y = z[:k], z[k:]
        r = B.T @ x - b  # max over y'
        up = 0.5 * x @ A @ x + a @ x + 0.5 * r @ C_inv @ r
        s = B @ y + a  # min over x'
        low = -0.5 * s @ A_inv @ s - 0.5 * y @ C @ y - b @ y
        return {"gap": float(up - low), "dist_sq": float((z - z_star).square().sum())}


def _game_constants(task: Task, k: int) -> tuple[Tensor, ...]:
    """(A⁻¹, C⁻¹, A, B, C, a, b, z*) of a quadratic game task, float64."""
    d = 2 * k
    zero = torch.zeros(d, device=task.device)
    c = task.full_gradient(zero).double()  # [d] F(0)
    eye = torch.eye(d, device=task.device)
    M = torch.stack([task.full_gradient(eye[j]).double() - c for j in range(d)], 1)  # [d, d]
    A, B, C = M[:k, :k], M[:k, k:], M[k:, k:]
    A, C = (A + A.T) / 2, (C + C.T) / 2
    z_star = torch.linalg.solve(M, -c)
    return torch.linalg.inv(A), torch.linalg.inv(C), A, B, C, c[:k], c[k:], z_star


class ClientValues(NamedTuple):
    """Per-client evaluation of one model (`Task.client_values`)."""

    ids: Tensor  # [n'] the clients scored (every client with samples in `source`)
    loss: Tensor  # [n'] mean loss of each client
    acc: Tensor | None  # [n'] accuracy of each client (None: the model has no accuracy)
    source: str  # "test" (each client's own test samples) or "train" (its training samples)


CLIENT_QUANTILE = 0.1  # the "worst 10%" boundary of fairness papers (q-FFL, Ditto, ...)


def client_stats(values: Tensor, name: str, higher_is_worse: bool) -> dict[str, float]:
    """The distribution of a per-client metric `values [n]` as fairness and personalisation
    papers report it: `{name}_mean`, `{name}_std` (population std over the clients: they are
    the whole population, not a sample), the worst-10% boundary (`{name}_p10`, the 10th
    percentile, for accuracy; `{name}_p90` for a loss, where high is bad; linear interpolation
    between order statistics as numpy's default) and `{name}_worst` (min accuracy / max loss)."""
    v = values.double()  # [n]
    q = 1.0 - CLIENT_QUANTILE if higher_is_worse else CLIENT_QUANTILE
    tag = f"p{round(100 * q)}"
    worst = v.max() if higher_is_worse else v.min()
    return {
        f"{name}_mean": float(v.mean()),
        f"{name}_std": float(v.std(correction=0)),
        f"{name}_{tag}": float(torch.quantile(v, q)),
        f"{name}_worst": float(worst),
    }


def client_metrics(values: ClientValues, vectors: bool = False) -> dict[str, float]:
    """The `[experiment] per_client_eval` metrics of `values`: `client_acc_*` and
    `client_loss_*` (`client_stats`), and with `vectors` ("all", at the last round) every
    client's own value as `client_acc/<i>`, `client_loss/<i>` (i the client id)."""
    out = client_stats(values.loss, "client_loss", higher_is_worse=True)
    if values.acc is not None:
        out.update(client_stats(values.acc, "client_acc", higher_is_worse=False))
    if vectors:
        ids = values.ids.tolist()
        out.update({f"client_loss/{i}": v for i, v in zip(ids, values.loss.tolist(), strict=True)})
        if values.acc is not None:
            accs = values.acc.tolist()
            out.update({f"client_acc/{i}": v for i, v in zip(ids, accs, strict=True)})
    return out


EVAL_PURPOSE = "eval_clients"  # seeding purpose of the evaluation sample


def eval_sample(n: int, clients: int, seed: int, device: torch.device) -> Tensor | None:
    """The fixed random sample of `clients` of the n clients (sorted ids `[clients]`) on which
    `train_loss` is evaluated, drawn without replacement from `numpy_rng(seed, "eval_clients")`:
    the same clients at every evaluation of a run, and for every run of the same seed. None
    (evaluate every client) when `clients` is 0 or at least n."""
    if clients <= 0 or clients >= n:
        return None
    ids = np.sort(seeding.numpy_rng(seed, EVAL_PURPOSE).choice(n, clients, replace=False))
    return torch.as_tensor(ids, dtype=torch.int64, device=device)


class Smoothness(NamedTuple):
    """Smoothness constants of f = (1/n) Σ f_i for step sizes from theory (lr = "theory")."""

    L: float  # of f
    L_i: Tensor  # [n] float64 of each f_i

    @property
    def L_am(self) -> float:
        """Arithmetic mean of the L_i (EF21-W)."""
        return float(self.L_i.mean())

    @property
    def L_qm(self) -> float:
        """Quadratic mean sqrt(mean L_i²) (EF21's L̃, MARINA's L_±-bound)."""
        return float(self.L_i.square().mean().sqrt())


_REG_CURVATURE = {"none": 0.0, "l2": 1.0, "nonconvex": 2.0}  # × λ: bound on the regulariser's ∇²


def smoothness(task: Task) -> Smoothness:
    """L and L_i of a linear model's loss: curvature · λ_max(A_iᵀA_i / m_i) plus the
    regulariser's bound (l2: λ, nonconvex: 2λ), with A_i client i's features (augmented with a
    constant 1 when the model has a bias). Raises ValueError for models without a known bound."""
    model, data = task.model, task.data
    if model.curvature is None:
        raise ValueError(
            'lr = "theory" needs a model whose smoothness constant is known: model = "logreg"'
        )
    a = data.x.reshape(data.x.shape[0], -1).double()  # [N, f]
    if model.has_bias:
        a = torch.cat([a, torch.ones_like(a[:, :1])], 1)
    f = a.shape[1]
    gram = torch.zeros(task.n, f, f, dtype=torch.float64, device=a.device)  # [n, f, f]
    rows = max(1, (1 << 24) // (f * f))
    for s in range(0, a.shape[0], rows):  # chunks of samples: outer products [r, f, f]
        blk = a[s : s + rows]
        gram.index_add_(0, data.client_of[s : s + rows], blk[:, :, None] * blk[:, None, :])
    gram /= data.counts.double().view(-1, 1, 1)  # A_iᵀA_i / m_i
    reg = _REG_CURVATURE[task.reg] * task.lam
    L_i = model.curvature * torch.linalg.eigvalsh(gram)[:, -1] + reg  # [n]
    L = model.curvature * float(torch.linalg.eigvalsh(gram.mean(0))[-1]) + reg
    return Smoothness(L, L_i.cpu())


def _activation_floats(model: Model, input_shape: tuple[int, ...]) -> int:
    """Floats of activations per sample in one forward pass of one zero sample (or the
    model's own count when it has one: a functional forward calls no submodule). The
    template's meta parameters are materialised (uninitialised) on the CPU for one real
    one-sample pass: the first meta-device op imports sympy, 1.5 s in every fedbench process
    and pool worker."""
    own = getattr(model, "activation_floats", None)
    if own is not None:
        return int(own(input_shape))
    total = math.prod(input_shape)
    hooks = []
    template = copy.deepcopy(model.template).eval()  # eval: batch norm takes one sample
    for mod in template.modules():  # meta tensors -> uninitialised CPU ones, by shape only
        for name, p in list(mod.named_parameters(recurse=False)):
            if p.is_meta:
                setattr(mod, name, torch.nn.Parameter(torch.empty(p.shape, dtype=p.dtype)))
        for name, b in list(mod.named_buffers(recurse=False)):
            if b.is_meta:
                mod._buffers[name] = torch.empty(b.shape, dtype=b.dtype)

    def count(_m: torch.nn.Module, _i: object, out: Tensor) -> None:
        nonlocal total
        total += out[0].numel()

    for mod in template.modules():
        if not list(mod.children()):
            hooks.append(mod.register_forward_hook(count))
    try:
        with torch.no_grad():
            template(torch.zeros((1, *input_shape)))
    finally:
        for h in hooks:
            h.remove()
    return total
