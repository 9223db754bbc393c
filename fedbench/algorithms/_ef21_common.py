"""Pieces shared by the EF21 family (EF21-W, EF21-PP, EF21-BC, EControl) and EF14.

- the theory step size of EF21 (Richtárik, Sokolov, Fatkhullin, NeurIPS 2021, arXiv 2106.05203,
  Theorem 1; the reference code `IgorSokoloff/ef21_experiments_source_code` computes the same):
  γ = 1/(L + L̃·√(β/θ)) with θ = 1 − √(1 − α), β = (1 − α)/(1 − √(1 − α));
- the contraction α of the configured uplink compressor;
- the dense start g_i⁰ = ∇f_i(x⁰) of every client, charged to the first round, and its
  storage as `client_rows` (every row written: host memory when it does not fit the device,
  `client_state` honoured, but no row stays zero pages);
- a smoothness estimate for models without a known bound (EF21-W's weights).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fedbench.algorithms.base import Env, bits_vector, client_rows, gradients
from fedbench.compressors.base import FLOAT_BITS, Compressor


def contraction(c: Compressor) -> float:
    """α of E‖C(x) − x‖² ≤ (1 − α)‖x‖²: 1 for identity, δ for a contractive C, and
    1/(1 + ω) for an unbiased Q used as the contractive Q/(1 + ω) (EF21 §0 convention)."""
    if c.kind == "exact":
        return 1.0
    if c.kind == "unbiased":
        return 1.0 / (1.0 + c.param)
    return c.param


def theta_beta(alpha: float) -> tuple[float, float]:
    """θ = 1 − √(1 − α) and β = (1 − α)/(1 − √(1 − α)) of EF21's Lemma (α ∈ (0, 1])."""
    root = math.sqrt(1.0 - alpha)
    return 1.0 - root, (1.0 - alpha) / (1.0 - root)


def ef21_gamma(L: float, L_tilde: float, alpha: float) -> float:
    """EF21's step size 1/(L + L̃·√(β/θ)); α = 1 (no compression) gives 1/L."""
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"contraction α must be in (0, 1], got {alpha}")
    theta, beta = theta_beta(alpha)
    return 1.0 / (L + L_tilde * math.sqrt(beta / theta))


def theory_gamma(env: Env, mean: str = "quadratic") -> float:
    """EF21's γ for this task and uplink compressor. `mean` chooses L̃: "quadratic"
    √(mean L_i²) (EF21) or "arithmetic" mean L_i (EF21-W, Richtárik, Gasanov, Burlachenko 2024)."""
    s = env.task.smoothness()
    L_tilde = s.L_qm if mean == "quadratic" else s.L_am
    return ef21_gamma(s.L, L_tilde, contraction(env.uplink))


def step_size(lr: float | str, env: Env, mean: str = "quadratic") -> float:
    """A configured step size: a number, or "theory" (EF21's γ from the task's L, L_i)."""
    return theory_gamma(env, mean) if lr == "theory" else float(lr)


def dense_start(env: Env, x0: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """∇f_i(x⁰) of every client `[n, d]` (minibatch when batch_size is a number) and the bits
    of sending each one dense `[n]`."""
    everyone = torch.arange(env.n, device=env.device)
    _, g = gradients(env, x0.expand(env.n, -1), everyone, gen)
    return g, bits_vector(env.n, FLOAT_BITS * env.d, env.device)


def dense_rows(env: Env, values: Tensor) -> Tensor:
    """`values` `[n, d]` (a row for every client, such as g_i⁰) stored as `client_rows`: in
    `env.state_dtype`, in host memory when it does not fit the device. Every row is written, so
    none stays zero pages; server quantities (mean_i g_i) are taken from `values` beforehand."""
    return client_rows(env).copy_(values)


def estimate_smoothness(env: Env, x: Tensor, gen: torch.Generator, iters: int = 20) -> Tensor:
    """L_i `[n]`: the task's bound when the model has one, else the largest Hessian eigenvalue
    of each f_i at x by power iteration on finite-difference Hessian-vector products (all
    clients at once; a local estimate, not a global bound)."""
    try:
        return env.task.smoothness().L_i.to(torch.float32).to(env.device)
    except (ValueError, AttributeError):
        pass
    everyone = torch.arange(env.n, device=env.device)
    x_rows = x.expand(env.n, -1)
    _, g0 = env.task.loss_grad(x_rows, everyone)  # [n, d]
    v = torch.randn(env.n, env.d, generator=gen, device=gen.device).to(env.device)
    v /= v.norm(dim=1, keepdim=True)
    lam = torch.zeros(env.n, device=env.device)
    r = 1e-3 * max(1.0, float(x.norm()))
    for _ in range(iters):
        _, g1 = env.task.loss_grad(x_rows + r * v, everyone)
        hv = (g1 - g0) / r  # [n, d] ≈ ∇²f_i(x) v_i
        lam = hv.norm(dim=1)
        v = hv / lam.clamp_min(1e-12).unsqueeze(1)
    return lam.clamp_min(1e-8)
