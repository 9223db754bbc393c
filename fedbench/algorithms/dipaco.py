"""DiPaCo: DiLoCo over paths through shared modules.

"DiPaCo: Distributed Path Composition", Douillard, Feng, Rusu, Kuncoro, Donchev, Chhaparia,
Gog, Ranzato, Shen, Szlam, 2024, arXiv 2403.10616.

Variant: the model is cut depth-wise into L levels (contiguous groups of transformer blocks;
embeddings, positions and the final norm are shared by every path), and each level has K
modules (width-wise copies), so there are P = K^L paths π = (k_0, ..., k_{L−1}); path p uses
module k_l = ⌊p / K^l⌋ mod K at level l. Each worker trains one path as a DiLoCo worker: it
receives its path θ_π (a full model of size d), runs H inner AdamW steps and sends the outer
gradient Δ_i = θ_π − θ_i^{(H)}. Each module j is then updated by the outer optimizer (SGD with
Nesterov momentum, as DiLoCo) on the average of the outer gradients of the workers whose path
contains it, Δ_j = Σ_{i ∋ j} w_i Δ_i / Σ_{i ∋ j} w_i, with w_i the worker's number of samples
(`module_weights = "data"`, the paper's token-count weighting, [mem]) or 1 (`"uniform"`).
Modules no worker trained this round keep their value and momentum.

State: the module bank `θ [K, d]`: row k holds module k of every level (shared coordinates
live in row 0), its momentum `[K, d]`, the per-worker inner AdamW state, and x̂ `[P, d]` the
path each worker last received (downlink compression tracks every path). Bits: each worker
receives its path (32·d dense) and sends C(Δ_i): a path's size, not the whole bank.

Simplifications: routing is a fixed assignment, worker i trains path i mod P on its own data
(the paper shards the data by k-means on sequence features so each shard has its path, and
routes test sequences with a gater); every module starts from the same x0 (the paper
initialises from a base model). fedbench evaluates one model `[d]`: `params` is the average of
each level's K modules (a merged model; a single path is a specialist of its workers' data),
and each evaluation also logs what DiPaCo optimises: `routed_train_loss` = mean_i f_i(θ_{π(i)})
(each client's data under its own path) and every path's test loss (`path_test_loss_mean`,
`path_test_loss_best`). With K = 1 (one module per level) DiPaCo is DiLoCo.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor

from fedbench import seeding
from fedbench.algorithms.base import (
    ALGORITHMS,
    Algorithm,
    Env,
    RoundLog,
    sample_cohort,
    update_compressor,
)
from fedbench.algorithms.diloco import (
    INNER_KEYS,
    INNER_PARAMS,
    OUTER_PARAMS,
    Inner,
    InnerState,
    inner_init,
    inner_train,
    outer_step,
)
from fedbench.models import Model
from fedbench.params import Component, Param
from fedbench.seeding import RoundRng
from fedbench.task import regulariser


def levels_of(model: Model, levels: int) -> Tensor:
    """Level of every coordinate `[d]` int64 (−1 = shared by all paths). Transformer blocks
    (`blocks.i.*`) are split into `levels` contiguous groups, everything else is shared; a
    model without blocks splits its layers (parameter owners, in order) into the levels."""
    spec = model.spec
    out = torch.full((spec.d,), -1, dtype=torch.int64)
    blocks = sorted({int(n.split(".")[1]) for n in spec.names if n.startswith("blocks.")})
    owners = list(dict.fromkeys(n.rsplit(".", 1)[0] for n in spec.names))
    units = len(blocks) if blocks else len(owners)
    if units < levels:
        what = "transformer blocks" if blocks else "layers"
        raise ValueError(
            f"dipaco: levels = {levels} needs at least {levels} {what}; the model has {units}"
        )
    for name, shape, o in zip(spec.names, spec.shapes, spec.offsets, strict=True):
        if blocks and not name.startswith("blocks."):
            continue
        u = (
            blocks.index(int(name.split(".")[1]))
            if blocks
            else owners.index(name.rsplit(".", 1)[0])
        )
        out[o : o + shape.numel()] = u * levels // units
    return out


def path_modules(level: Tensor, levels: int, modules: int) -> Tensor:
    """Module index of every coordinate on every path `[P, d]` (P = K^L; shared: 0)."""
    P = modules**levels
    p = torch.arange(P).unsqueeze(1)  # [P, 1]
    choice = (p // modules ** level.clamp_min(0).unsqueeze(0)) % modules  # [P, d]
    return torch.where(level.unsqueeze(0) < 0, 0, choice)


class DiPaCoState(NamedTuple):
    t: int
    x: Tensor  # [d] the model evaluated: every level's modules averaged
    theta: Tensor  # [K, d] module bank θ
    mom: Tensor  # [K, d] outer momentum per module
    inner: InnerState  # per-worker inner AdamW state
    x_hat: Tensor  # [P, d] the path models the workers hold
    down: Any  # downlink compressor state (one row per path)
    up: Any  # uplink compressor state


def dipaco(
    local_steps: int,
    outer_lr: float,
    outer_momentum: float,
    nesterov: bool,
    levels: int,
    modules: int,
    module_weights: str,
    **inner: Any,
) -> Algorithm:
    h = Inner(**{k: inner[k] for k in INNER_KEYS})
    P = modules**levels
    cache: dict[int, tuple[Tensor, Tensor]] = {}

    def layout(env: Env) -> tuple[Tensor, Tensor]:
        """`[P, d]` module of each coordinate of each path and the shared coordinates `[d]`
        (on the task's device)."""
        if id(env.task) not in cache:
            cache.clear()
            level = levels_of(env.task.model, levels)
            route = path_modules(level, levels, modules).to(env.device)
            cache[id(env.task)] = (route, (level < 0).to(env.device))
        return cache[id(env.task)]

    def route(env: Env) -> Tensor:
        return layout(env)[0]

    def paths(theta: Tensor, env: Env) -> Tensor:
        return theta.gather(0, route(env))  # [P, d] θ_π of every path

    def init(x0: Tensor, env: Env, rng: RoundRng) -> DiPaCoState:
        theta = x0.expand(modules, -1).clone()  # [K, d]
        up = update_compressor(env).init(env.n, env.d, env.device)
        down = env.downlink.init(P, env.d, env.device)
        X = paths(theta, env)  # [P, d]
        return DiPaCoState(0, x0, theta, torch.zeros_like(theta), inner_init(env), X, down, up)

    def round(s: DiPaCoState, env: Env, rng: RoundRng) -> tuple[DiPaCoState, RoundLog]:
        ids = sample_cohort(env, rng)  # [m]
        route_ = route(env)
        pi = ids % P  # [m] path of each worker (fixed assignment)
        X = paths(s.theta, env)  # [P, d]
        rows = torch.arange(P, device=env.device)
        gen_down = rng(seeding.DOWNLINK)
        if env.downlink.kind == "exact":
            msg_d, down = env.downlink.compress(X, rows, s.down, gen_down)
            x_hat = X
        else:  # x̂_π ← x̂_π + C(θ_π − x̂_π)
            msg_d, down = env.downlink.compress(X - s.x_hat, rows, s.down, gen_down)
            x_hat = s.x_hat + msg_d.value
        y0 = x_hat[pi]  # [m, d]
        y, loss = inner_train(env, h, s.inner, y0, ids, local_steps, rng(seeding.BATCHES))
        compress = update_compressor(env).compress
        msg, up = compress(y0 - y, ids, s.up, rng(seeding.UPLINK))  # Δ_i [m, d]
        w = torch.ones(ids.numel(), device=env.device)
        if module_weights == "data":
            w = env.task.data.counts[ids].to(env.device, torch.float32)  # [m]
        where = route_[pi]  # [m, d] module each worker's coordinate belongs to
        total = torch.zeros_like(s.theta).scatter_add_(0, where, w.unsqueeze(1) * msg.value)
        weight = torch.zeros_like(s.theta).scatter_add_(0, where, w.unsqueeze(1).expand_as(y))
        trained = weight > 0  # [K, d]
        delta = torch.where(trained, total / weight.clamp_min(1e-30), 0.0)  # Δ_j [K, d]
        theta, mom = outer_step(s.theta, s.mom, delta, outer_lr, outer_momentum, nesterov)
        theta = torch.where(trained, theta, s.theta)
        theta = torch.where(layout(env)[1], theta[0], theta)  # shared: every row = row 0
        mom = torch.where(trained, mom, s.mom)
        m = ids.numel()
        extra = {"local_loss": float(loss.mean()), "paths_trained": float(pi.unique().numel())}
        log = RoundLog(msg.bits, msg_d.bits[pi].to(torch.int64), m, extra)
        x = theta.mean(0)  # [d] modules averaged level by level (shared rows are equal)
        return DiPaCoState(s.t + 1, x, theta, mom, s.inner, x_hat, down, up), log

    def metrics(s: DiPaCoState, env: Env) -> dict[str, float]:
        """Every path's test loss (mean, best) and the routed training objective
        mean_i f_i(θ_{π(i)}): each client's data under its own path."""
        task, data = env.task, env.task.data
        X = paths(s.theta, env)  # [P, d]
        out: dict[str, float] = {}
        if data.y_test.numel() > 0:
            test = [task.evaluate(x)["test_loss"] for x in X]
            out |= {"path_test_loss_mean": sum(test) / P, "path_test_loss_best": min(test)}
        own = torch.arange(env.n, device=env.device) % P  # [n] path of each client
        per = torch.zeros(env.n, device=env.device)
        for p in range(P):  # one pass over the training set per path (P is small)
            loss, _ = task._sample_losses(X[p], data.x, data.y)  # [N]
            f = torch.zeros_like(per).index_add_(0, data.client_of, loss) / data.counts
            per = torch.where(own == p, f + regulariser(X[p], task.reg, task.lam)[0], per)
        return {"routed_train_loss": float(per.mean()), **out}

    return Algorithm(init, round, lambda s: s.x, metrics)


def depth_units(task: Mapping[str, Any]) -> tuple[int, str] | None:
    """The units `levels_of` splits this [task]'s model into, from its config (None: not known
    without building it); tests/test_requirements.py pins it against built models."""
    model = task["model"]
    if model == "transformer":
        return int(task["layers"]), "transformer block(s)"
    if model == "mlp":
        return len(task["hidden"]) + 1, "layer(s)"
    if model == "cnn":  # a conv and a GroupNorm per channel entry, then the linear layers
        return 2 * len(task["channels"]) + len(task["hidden"]) + 1, "layer(s)"
    if model in ("logreg", "linreg", "robust_linreg", "quadratic_game"):
        return 1, "layer"
    return None


def requirements(cfg: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """L levels need at least L blocks (or layers) to cut the model into."""
    levels, units = cfg["algorithm"]["levels"], depth_units(cfg["task"])
    if units is None or units[0] >= levels:
        return []
    return [
        f"algorithm.levels = {levels}: dipaco cuts the model depth-wise into levels and model "
        f"{cfg['task']['model']} has {units[0]} {units[1]}; allowed: levels <= {units[0]}, or "
        "a deeper model"
    ]


ALGORITHMS.add(
    Component(
        "dipaco",
        dipaco,
        {
            **INNER_PARAMS,
            **OUTER_PARAMS,
            "levels": Param(2, "levels L (depth-wise groups of blocks)", "int", low=1),
            "modules": Param(2, "modules K per level (paths P = K^L)", "int", low=1),
            "module_weights": Param(
                "data",
                "weights of the workers' outer gradients in a module's average: their sample "
                "counts or uniform",
                "str",
                choices=("data", "uniform"),
            ),
        },
        "DiLoCo over paths through shared modules: each worker trains one path, each module "
        "takes an outer Nesterov step on the mean outer gradient of the paths through it",
        paper="Douillard et al. 2024 (arXiv 2403.10616)",
        check=requirements,
    )
)
