"""Server optimizers as (init, update) pairs over the pseudo-gradient.

The pseudo-gradient of a round is g = x − mean_i y_i (minus the average client update), so
plain averaging is SGD with server lr 1. FedAvgM and FedAdam follow "Adaptive Federated
Optimization" (Reddi et al., ICLR 2021, arXiv 2003.00295): momentum v ← βv + g, x ← x − ηv;
Adam m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g², x ← x − η m/(√v + τ) without bias correction,
τ the adaptivity (default 1e-3). FedAdagrad and FedYogi (same paper, Algorithm 2) share Adam's
m and step and change v: Adagrad v ← v + g², Yogi v ← v − (1−β₂) g² sign(v − g²). All three
start from m₋₁ = 0, v₋₁ = τ² (Algorithm 2 initialises v₋₁ ≥ τ²). Before release 0.2 FedAdam
started from v₋₁ = 0; its `server_opt = "adam"` jobs carry a changed key (`Param.changed`),
so runs of the old computation are rerun, never reused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from fedbench.params import Param

SERVER_PARAMS = {
    "server_opt": Param(
        "sgd",
        "server optimizer on the pseudo-gradient",
        "str",
        choices=("sgd", "momentum", "adam", "adagrad", "yogi"),
        changed=(("adam", "0.2"),),  # v₋₁ = τ² (was 0): old FedAdam runs get new keys
    ),
    "server_lr": Param(1.0, "server (global) learning rate η_g", low=0.0, low_open=True),
    "server_momentum": Param(
        0.9,
        "server momentum β (momentum) or β₁ (adam, adagrad, yogi)",
        low=0.0,
        high=1.0,
        high_open=True,
    ),
    "server_beta2": Param(
        0.99, "second-moment decay β₂ (adam, yogi)", low=0.0, high=1.0, high_open=True
    ),
    "server_eps": Param(1e-3, "adaptivity τ (adam, adagrad, yogi)", low=0.0, low_open=True),
}


class ServerOpt(NamedTuple):
    init: Callable[[Tensor], Any]  # x [d] -> state
    update: Callable[[Tensor, Tensor, Any], tuple[Tensor, Any]]  # (x, g, state) -> (x', state')


class AdamState(NamedTuple):
    m: Tensor  # [d]
    v: Tensor  # [d]


def sgd(lr: float) -> ServerOpt:
    def update(x: Tensor, g: Tensor, state: None) -> tuple[Tensor, None]:
        return (x - g if lr == 1.0 else x - lr * g), None

    return ServerOpt(lambda x: None, update)


def momentum(lr: float, beta: float) -> ServerOpt:
    def update(x: Tensor, g: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        v = beta * v + g
        return x - lr * v, v

    return ServerOpt(torch.zeros_like, update)


def adam(lr: float, beta1: float, beta2: float, eps: float) -> ServerOpt:
    def update(x: Tensor, g: Tensor, s: AdamState) -> tuple[Tensor, AdamState]:
        m = beta1 * s.m + (1 - beta1) * g
        v = beta2 * s.v + (1 - beta2) * g * g
        return x - lr * m / (v.sqrt() + eps), AdamState(m, v)

    return ServerOpt(lambda x: _adaptive_init(x, eps), update)


def adagrad(lr: float, beta1: float, eps: float) -> ServerOpt:
    """FedAdagrad: v ← v + g² (Reddi et al. 2021, Algorithm 2)."""

    def update(x: Tensor, g: Tensor, s: AdamState) -> tuple[Tensor, AdamState]:
        m = beta1 * s.m + (1 - beta1) * g
        v = s.v + g * g
        return x - lr * m / (v.sqrt() + eps), AdamState(m, v)

    return ServerOpt(lambda x: _adaptive_init(x, eps), update)


def yogi(lr: float, beta1: float, beta2: float, eps: float) -> ServerOpt:
    """FedYogi: v ← v − (1−β₂) g² sign(v − g²) (Reddi et al. 2021, Algorithm 2)."""

    def update(x: Tensor, g: Tensor, s: AdamState) -> tuple[Tensor, AdamState]:
        m = beta1 * s.m + (1 - beta1) * g
        g2 = g * g
        v = s.v - (1 - beta2) * g2 * torch.sign(s.v - g2)
        return x - lr * m / (v.sqrt() + eps), AdamState(m, v)

    return ServerOpt(lambda x: _adaptive_init(x, eps), update)


def _adaptive_init(x: Tensor, eps: float) -> AdamState:
    return AdamState(torch.zeros_like(x), torch.full_like(x, eps * eps))  # m₋₁ = 0, v₋₁ = τ²


def build_server_opt(p: dict[str, Any]) -> ServerOpt:
    """From an algorithm's resolved parameters (the SERVER_PARAMS keys)."""
    name = p["server_opt"]
    if name == "sgd":
        return sgd(p["server_lr"])
    if name == "momentum":
        return momentum(p["server_lr"], p["server_momentum"])
    if name == "adagrad":
        return adagrad(p["server_lr"], p["server_momentum"], p["server_eps"])
    if name == "yogi":
        return yogi(p["server_lr"], p["server_momentum"], p["server_beta2"], p["server_eps"])
    return adam(p["server_lr"], p["server_momentum"], p["server_beta2"], p["server_eps"])
