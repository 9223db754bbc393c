"""FedBR: local SGD on a bias-reduced objective (pseudo-data classifier balancing + min-max
feature contrast through a shared projection head).

"FedBR: Improving Federated Learning on Heterogeneous Data via Local Learning Bias Reduction",
Yongxin Guo, Xiaoying Tang, Tao Lin, ICML 2023, arXiv 2205.13462; official code
github.com/lins-lab/fedbr (`FedBR` in fedbr/algorithms.py, driver fedbr/scripts/train_fed.py).

The model is split into a featurizer φ (every layer but the last) and a linear classifier h
(the last `nn.Linear`): fedbench models whose template is an `nn.Sequential` ending in a linear
layer with parameters before it (`mlp` with hidden layers, `cnn`). A projection head
p_θ (MLP f → 2f → 2f → f, ReLU, f the feature width) is trained with the model and averaged
with it. A pool U of P globally shared pseudo-samples (each the mean of 10 training samples)
is drawn once by the server. Every local step, on the client's minibatch (x, y) of B samples:

    pseudo-data   x_p,j = (u_j + x_{r_j}) / 2,  ỹ_p,j = (1/C + e_{y_{r_j}}) / 2,  r_j ~ U{1..B}
    features      z_x = φ_w(x), z_p = φ_w(x_p), z_g = φ_{w_g}(x_p) (w_g: the round's start model)
    contrast      log p_j = τ₁ s(e_p, e_g) − log(e^{τ₁ s(e_p, e_g)} + e^{τ₂ s(e_p, e_x)}),
                  e_· = p_θ(z_·), s = cosine similarity, pseudo row j paired with sample j mod B
    projection    θ ← θ − η ∇_θ γ mean_j log p_j            (z_x, z_p detached: max of L_con)
    model         w ← w − η ∇_w [CE(h_w(z_x), y) + μ L_con + λ CE(h_w(z_p), ỹ_p)],
                  L_con = −mean_j log p_j at the updated θ  (min of L_con)

Constants [code: `FedBR.update`, `train_fed.get_augmentation_proxy_data`]: μ = 0.5, λ = 1,
γ = 1, τ₁ = τ₂ = 2 (similarities multiplied by τ), P = 32 pseudo-samples, each the mean of
10 samples, mixed 1:1 with one local sample (K = 1), projection width 2f with one hidden
layer, projection step size = model step size. The server averages model and projection
updates (its server optimizer applies to both, as the code averages the whole state).

Deviations: (1) the code draws U from a public proxy set (CIFAR-10 train); fedbench has none,
so U is drawn from the pooled training data (the code's commented-out
`get_augmentation_mean_data`); (2) the code computes z_g once per round on the first step's x_p
and reuses it; here z_g = φ_{w_g}(x_p) at every step's own x_p (the paper's φ_g(x_p));
(3) the code adds a FedDecorr term 0.1·‖corr(z_x)‖² not in the paper's objective: omitted;
(4) local SGD without the code's momentum 0.9 / weight decay (as every fedbench local method).
With μ = λ = 0 the model's update is FedAvg's (the projection head trains but is unused).

Bits: up C(Δw_i) + 32·d_θ (projection update, dense: the configured compressors are built for
the model's d); down the model's broadcast + 32·d_θ, plus the pool U (32·P·|x| bits) the first
time a client participates.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from fedbench import seeding
from fedbench.algorithms.base import (
    ALGORITHMS,
    LOCAL_PARAMS,
    Algorithm,
    Broadcast,
    Env,
    RoundLog,
    broadcast,
    broadcast_init,
    local_batches,
    needs_minibatches,
    sample_cohort,
    update_compressor,
)
from fedbench.compressors.base import FLOAT_BITS
from fedbench.models import Model
from fedbench.params import Component, Param
from fedbench.seeding import RoundRng
from fedbench.server_opt import SERVER_PARAMS, build_server_opt
from fedbench.task import regulariser

PSEUDO_MEAN_OF = 10  # samples averaged into each pseudo-sample [code]


class Split(NamedTuple):
    """A model as featurizer φ (all layers but the last) and linear classifier h."""

    feat: nn.Module  # the template's layers but the last (meta tensors)
    feat_names: tuple[str, ...]  # its parameters' names in the flat layout
    head: tuple[str, str]  # (weight, bias) names of the last linear layer
    f: int  # feature width


def split_model(model: Model) -> Split:
    """φ and h of a model whose template is `nn.Sequential(..., nn.Linear)` with parameters
    before the last layer; ValueError (one line) otherwise."""
    t, names = model.template, model.spec.names
    bad = ValueError(
        "fedbr: [task] model has no feature layer before a linear classifier; allowed: "
        "mlp with hidden layers, cnn"
    )
    if not isinstance(t, nn.Sequential) or len(t) < 2:
        raise bad
    last = t[-1]
    if not isinstance(last, nn.Linear) or last.bias is None or len(names) < 4:
        raise bad
    return Split(t[:-1], names[:-2], (names[-2], names[-1]), int(last.in_features))


def features(model: Model, sp: Split, w: Tensor, x: Tensor) -> Tensor:
    """φ_w(x) of one client: `w [d]`, `x [B, ...]` -> `[B, f]`."""
    v = model.spec.unflatten(w)
    return functional_call(sp.feat, {n: v[n] for n in sp.feat_names}, (x,))


def classify(model: Model, sp: Split, w: Tensor, z: Tensor) -> Tensor:
    """h_w(z): `w [..., d]`, `z [..., B, f]` -> logits `[..., B, C]`."""
    v = model.spec.unflatten(w)
    W, b = v[sp.head[0]], v[sp.head[1]]  # [..., C, f], [..., C]
    return z @ W.transpose(-1, -2) + b.unsqueeze(-2)


def proj_sizes(f: int) -> list[int]:
    return [f, 2 * f, 2 * f, f]  # [code] mlp_width = 2f, one hidden layer


def proj_dim(f: int) -> int:
    s = proj_sizes(f)
    return sum(b * a + b for a, b in itertools.pairwise(s))


def proj_init(f: int, gen: torch.Generator) -> Tensor:
    """θ `[d_θ]`: PyTorch's default Linear initialisation U(±1/√fan_in), drawn from `gen`."""
    s, parts = proj_sizes(f), []
    for a, b in itertools.pairwise(s):
        bound = 1.0 / math.sqrt(a)
        parts.append(torch.empty(b * a + b).uniform_(-bound, bound, generator=gen))
    return torch.cat(parts)


def project(theta: Tensor, z: Tensor) -> Tensor:
    """p_θ(z): `theta [..., d_θ]`, `z [..., B, f]` -> `[..., B, f]`."""
    s, o, lead = proj_sizes(z.shape[-1]), 0, theta.shape[:-1]
    for i, (a, b) in enumerate(itertools.pairwise(s)):
        W = theta[..., o : o + b * a].view(*lead, b, a)
        bias = theta[..., o + b * a : o + b * a + b]
        o += b * a + b
        z = z @ W.transpose(-1, -2) + bias.unsqueeze(-2)
        if i < len(s) - 2:
            z = z.relu()
    return z


def log_p(theta: Tensor, zp: Tensor, zg: Tensor, zx: Tensor, tau1: float, tau2: float) -> Tensor:
    """log of the contrast's positive share per pseudo row `[..., P]` (`z· [..., P, f]`, the
    rows of zx already paired with the pseudo rows)."""
    e1, e2, e3 = project(theta, zp), project(theta, zg), project(theta, zx)
    a = tau1 * F.cosine_similarity(e1, e2, dim=-1)
    b = tau2 * F.cosine_similarity(e1, e3, dim=-1)
    return a - torch.logaddexp(a, b)


def pseudo_pool(env: Env, P: int, seed: int) -> Tensor:
    """U `[P, ...]`: each row the mean of 10 training samples drawn from the pooled data."""
    data = env.task.data
    gen = seeding.generator(seed, 0, "fedbr_pseudo")
    idx = torch.randint(int(data.x.shape[0]), (P, PSEUDO_MEAN_OF), generator=gen)
    return data.x[idx.to(data.x.device)].mean(1)


def pseudo_batch(U: Tensor, x: Tensor, y: Tensor, r: Tensor, C: int) -> tuple[Tensor, Tensor]:
    """x_p = (u + x_r)/2 `[m, P, ...]` and ỹ_p = (1/C + e_{y_r})/2 `[m, P, C]`; `x [m, B, ...]`,
    `y [m, B]`, `r [m, P]` indices into the minibatch."""
    m, P = r.shape
    xr = torch.gather(x, 1, r.view(m, P, *([1] * (x.dim() - 2))).expand(m, P, *x.shape[2:]))
    yr = torch.gather(y, 1, r)  # [m, P]
    q = (F.one_hot(yr, C).float() + 1.0 / C) / 2
    return (U.unsqueeze(0) + xr) / 2, q


class FedBRState(NamedTuple):
    t: int
    x: Tensor  # [d] server model w
    theta: Tensor  # [d_θ] server projection head θ
    opt: Any  # server optimizer state over [w; θ]
    down: Broadcast
    up: Any  # uplink compressor state
    U: Tensor  # [P, ...] the shared pseudo-data pool
    has_pool: Tensor  # [n] bool: the client has received U


def fedbr(
    lr: float,
    local_steps: int,
    mu: float,
    lam: float,
    gamma: float,
    tau1: float,
    tau2: float,
    pseudo: int,
    **server: Any,
) -> Algorithm:
    opt = build_server_opt(server)

    def local_train(
        env: Env, w0: Tensor, theta0: Tensor, U: Tensor, ids: Tensor, rng: RoundRng
    ) -> tuple[Tensor, Tensor, Tensor]:
        task, model = env.task, env.task.model
        sp = split_model(model)
        m, B, C = ids.numel(), int(env.batch_size), model.num_classes
        idx = local_batches(env, w0, ids, local_steps, rng(seeding.BATCHES))  # [m, K, B]
        mix = rng("fedbr_mix")
        r_all = torch.randint(B, (m, local_steps, pseudo), generator=mix, device=mix.device)
        r_all = r_all.to(env.device)
        pair = torch.arange(pseudo, device=env.device) % B  # pseudo row j ↔ sample j mod B

        def phi(w: Tensor, x: Tensor) -> Tensor:
            return features(model, sp, w, x)

        phis = vmap(phi)  # w [m, d], x [m, B, ...] -> [m, B, f]
        w = w0.expand(m, -1).clone()  # [m, d]
        theta = theta0.expand(m, -1).clone()  # [m, d_θ]
        loss_sum = torch.zeros(m, device=env.device)
        for k in range(local_steps):
            x, y = task.data.x[idx[:, k]], task.data.y[idx[:, k]]  # [m, B, ...], [m, B]
            xp, q = pseudo_batch(U, x, y, r_all[:, k], C)  # [m, P, ...], [m, P, C]
            zg = vmap(phi, in_dims=(None, 0))(w0, xp).detach()  # [m, P, f] φ_g(x_p)
            # clients are independent: the gradient of a sum over clients is each one's own
            with torch.enable_grad():
                wg = w.detach().requires_grad_()
                z = phis(wg, torch.cat([x, xp], 1))  # one pass over [m, B + P, ...]
                zx, zp = z[:, :B], z[:, B:]  # [m, B, f], [m, P, f]
                th = theta.detach().requires_grad_()
                lp = log_p(th, zp.detach(), zg, zx.detach()[:, pair], tau1, tau2)  # [m, P]
                (g_theta,) = torch.autograd.grad(gamma * lp.mean(1).sum(), th)
                theta = (theta - lr * g_theta).detach()  # the projection's (max) step first
                ce = (
                    F.cross_entropy(
                        classify(model, sp, wg, zx).flatten(0, 1), y.flatten(), reduction="none"
                    )
                    .view(m, B)
                    .mean(1)
                )  # [m]
                con = -log_p(theta, zp, zg, zx[:, pair], tau1, tau2).mean(1)  # [m]
                logq = F.log_softmax(classify(model, sp, wg, zp), -1)  # [m, P, C]
                aug = -(q * logq).sum(-1).mean(1)  # [m]
                (g,) = torch.autograd.grad((ce + mu * con + lam * aug).sum(), wg)
            ce = ce.detach()
            r, dr = regulariser(w, task.reg, task.lam)
            if dr is not None:
                ce, g = ce + r, g + dr
            loss_sum += ce
            w = w - lr * g
        return w, theta, loss_sum / local_steps

    def init(x0: Tensor, env: Env, rng: RoundRng) -> FedBRState:
        sp = split_model(env.task.model)
        theta0 = proj_init(sp.f, seeding.generator(rng.seed, 0, "fedbr_projection"))
        theta0 = theta0.to(env.device)
        up = update_compressor(env).init(env.n, env.d, env.device)
        X0 = torch.cat([x0, theta0])
        U = pseudo_pool(env, pseudo, rng.seed)
        has_pool = torch.zeros(env.n, dtype=torch.bool, device=env.device)
        return FedBRState(0, x0, theta0, opt.init(X0), broadcast_init(env, x0), up, U, has_pool)

    def round(s: FedBRState, env: Env, rng: RoundRng) -> tuple[FedBRState, RoundLog]:
        if env.batch_size == "full":
            raise ValueError('fedbr: [algorithm] batch_size = "full" is not supported')
        ids = sample_cohort(env, rng)  # [m]
        down, bits_down = broadcast(env, s.x, s.down, rng(seeding.DOWNLINK))
        w, theta, loss = local_train(env, down.x_hat, s.theta, s.U, ids, rng)
        msg, up = update_compressor(env).compress(w - down.x_hat, ids, s.up, rng(seeding.UPLINK))
        d_theta = (theta - s.theta).mean(0)  # [d_θ] sent dense
        X = torch.cat([s.x, s.theta])
        X, opt_state = opt.update(X, -torch.cat([msg.value.mean(0), d_theta]), s.opt)
        x, theta_new = X[: env.d], X[env.d :]
        dt = s.theta.numel() * FLOAT_BITS
        u_bits = s.U.numel() * FLOAT_BITS
        first = ~s.has_pool[ids]  # [m]
        bits_dn = bits_down + dt + first.long() * u_bits  # [m]
        has_pool = s.has_pool.clone()
        has_pool[ids] = True
        log = RoundLog(msg.bits + dt, bits_dn, ids.numel(), {"local_loss": float(loss.mean())})
        return FedBRState(s.t + 1, x, theta_new, opt_state, down, up, s.U, has_pool), log

    return Algorithm(init, round, lambda s: s.x)


ALGORITHMS.add(
    Component(
        "fedbr",
        fedbr,
        {
            **LOCAL_PARAMS,
            "mu": Param(
                0.5, "weight μ of the feature contrast L_con (0 with lam = 0: FedAvg)", low=0.0
            ),
            "lam": Param(1.0, "weight λ of the pseudo-data classifier-balancing loss", low=0.0),
            "gamma": Param(1.0, "weight γ of the projection head's (maximising) loss", low=0.0),
            "tau1": Param(2.0, "multiplier τ₁ of the local-global pseudo feature similarity"),
            "tau2": Param(2.0, "multiplier τ₂ of the pseudo-local feature similarity"),
            "pseudo": Param(32, "shared pseudo-samples P (each the mean of 10)", "int", low=1),
            **SERVER_PARAMS,
        },
        "local SGD on CE + μ·(min-max feature contrast via a shared projection head) + "
        "λ·CE on pseudo-data with soft labels; model and projection averaged",
        paper="Guo, Tang, Lin, ICML 2023 (arXiv 2205.13462); code lins-lab/fedbr",
        # the grid refuses token sequences (inputs are averaged) and models without features
        extra={"continuous_inputs": True, "models": ("mlp", "cnn"), "autograd": True},
        check=needs_minibatches("fedbr", "contrasts features on minibatches"),
    )
)
