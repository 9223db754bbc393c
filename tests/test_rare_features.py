"""The two reproduced theory tasks: the rare-features regression (arXiv 2305.15264) and the
quadratic of the PermK / encryption paper (arXiv 2312.02074): generators, the (robust) least
squares model's loss, gradient and smoothness constants, and EF21 at the rare-features step."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_env, run_rounds

from fedbench.algorithms._ef21_common import ef21_gamma
from fedbench.algorithms.ef21_rare import env_gamma, rare_gamma
from fedbench.data import load_federated
from fedbench.grid import GridError, parse
from fedbench.models import build_model
from fedbench.task import ClientData, Task


def task_cfg(dataset: str, clients: int, **kw: object) -> dict:
    return {
        "dataset": dataset,
        "partition": "natural",
        "clients": clients,
        "test_fraction": 0.0,
        "data_seed": 0,
        **kw,
    }


RARE = {"dim": 40, "samples_per_client": 6, "L": 20.0, "mu": 1.0, "noise": 2.0, "selector": 0.1}


def rare_task(c_div_n: float = 0.2, alpha: float = 3.0, n: int = 10) -> Task:
    fd = load_federated(task_cfg("rare_regression", n, c_div_n=c_div_n, **RARE), seed=0)
    data = ClientData.from_numpy(fd.x, fd.y, fd.counts, fd.x_test, fd.y_test, torch.device("cpu"))
    name = "robust_linreg" if alpha else "linreg"
    model = build_model(name, {"robust_alpha": alpha}, fd.input_shape, fd.num_classes)
    return Task(model, data)


def blocks(task: Task) -> tuple[list[np.ndarray], list[np.ndarray], float]:
    """Each client's A_i, b_i (float64) and the packed scale s."""
    x = task.data.x.double().numpy()
    f = task.d
    out_a, out_b = [], []
    for o, c in zip(task.data.offsets.tolist(), task.data.counts.tolist(), strict=True):
        out_a.append(x[o : o + c, :f])
        out_b.append(x[o : o + c, f])
    return out_a, out_b, float(x[0, f + 1])


def test_rare_generator_puts_every_feature_on_exactly_c_clients() -> None:
    task = rare_task(c_div_n=0.2)
    a, _, s = blocks(task)
    held = np.stack([(ai != 0).any(0) for ai in a])  # [n, f]
    assert (held.sum(0) == math.ceil(10 * 0.2)).all()
    # dense rows on a client's own features: every sample has the client's support
    for ai, hi in zip(a, held, strict=True):
        assert ((ai != 0) == hi[None, :]).all()
    # s = max_i (2/m)‖A_i‖² of the least-squares parts
    assert s == pytest.approx(max(2 * np.linalg.norm(ai, 2) ** 2 / ai.shape[0] for ai in a), 1e-5)
    # same data_seed, same data
    again = rare_task(c_div_n=0.2)
    assert torch.equal(again.data.x, task.data.x)


def robust_objective(task: Task, w: torch.Tensor, alpha: float) -> torch.Tensor:
    """f(w) = (1/n) Σ_i [(1/m_i)‖A_i w − b_i‖² + α s Σ_{k∈S_i} w_k²/(1 + w_k²)] written out."""
    a, b, s = blocks(task)
    total = torch.zeros((), dtype=torch.float64)
    for ai, bi in zip(a, b, strict=True):
        at, bt = torch.from_numpy(ai), torch.from_numpy(bi)
        support = torch.from_numpy((ai != 0).any(0)).double()
        r = at @ w - bt
        total = total + (r @ r) / ai.shape[0] + alpha * s * (support * w * w / (1 + w * w)).sum()
    return total / len(a)


def test_robust_loss_and_gradient_match_the_formula() -> None:
    task = rare_task(alpha=3.0)
    w = torch.randn(task.d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    w.requires_grad_(True)
    f = robust_objective(task, w, 3.0)
    (g_ref,) = torch.autograd.grad(f, w)
    w32 = w.detach().float()
    assert task.train_loss(w32) == pytest.approx(float(f.detach()), rel=1e-4)
    torch.testing.assert_close(task.full_gradient(w32).double(), g_ref, rtol=1e-4, atol=1e-4)


def test_smoothness_constants_match_a_direct_computation() -> None:
    task = rare_task(alpha=3.0)
    a, _, s = blocks(task)
    L_i = [2 * np.linalg.eigvalsh(ai.T @ ai / ai.shape[0])[-1] + 6.0 * s for ai in a]
    hess = sum(2 * ai.T @ ai / ai.shape[0] for ai in a) / len(a)
    L = np.linalg.eigvalsh(hess)[-1] + 6.0 * s
    sm = task.smoothness()
    np.testing.assert_allclose(sm.L_i.numpy(), L_i, rtol=1e-6)
    assert pytest.approx(L, rel=1e-6) == sm.L
    # L_+ = √λ_max((1/n) Σ H_i²) of the least-squares Hessians H_i, and c
    L_plus, c = task.model.rare_constants(task.data.x, task.data.offsets, task.data.counts)
    sq = sum((2 * ai.T @ ai / ai.shape[0]) @ (2 * ai.T @ ai / ai.shape[0]) for ai in a) / len(a)
    assert L_plus == pytest.approx(math.sqrt(np.linalg.eigvalsh(sq)[-1]), rel=1e-6)
    assert c == 2


def test_rare_step_is_larger_than_ef21s_when_features_are_rare() -> None:
    """γ = 1/(L + L_+√(c/n)√(β/θ)) against EF21's 1/(L + L̃√(β/θ)), Top-1 on d = 40."""
    task = rare_task(c_div_n=0.1, alpha=0.0)
    env = make_env(task, "topk", {"k": 1})
    L_plus, c = task.model.rare_constants(task.data.x, task.data.offsets, task.data.counts)
    sm = task.smoothness()
    assert c == 1 and L_plus <= sm.L_qm + 1e-9
    alpha = 1 / task.d
    assert env_gamma(env) == pytest.approx(rare_gamma(sm.L, L_plus, c, 10, alpha))
    assert env_gamma(env) > 2 * ef21_gamma(sm.L, sm.L_qm, alpha)


def test_ef21_rare_with_identity_is_gradient_descent_at_one_over_L() -> None:
    task = rare_task(alpha=3.0)
    env = make_env(task)
    state, _, alg = run_rounds("ef21_rare", {"lr": "theory"}, env, 6)
    gamma = 1 / task.smoothness().L
    assert state.gamma == pytest.approx(gamma)
    x = torch.zeros(task.d)
    for _ in range(6):
        x = x - gamma * task.full_gradient(x)
    torch.testing.assert_close(alg.params(state), x, rtol=1e-5, atol=1e-6)


def test_quadratic_generator_has_the_prescribed_spectrum() -> None:
    kw = {"dim": 60, "samples_per_client": 4, "L": 10.0, "mu": 1.0, "noise": 10.0}
    fd = load_federated(task_cfg("quadratic", 10, **kw), seed=0)
    assert fd.counts.tolist() == [4] * 10 and fd.input_shape == (62,)
    a = fd.x[:, :60].astype(np.float64)
    eig = np.linalg.eigvalsh(2 * a.T @ a / a.shape[0])  # ∇²f on R^60, rank 40
    assert eig[-1] == pytest.approx(10.0, rel=1e-4)
    assert eig[-40] == pytest.approx(1.0, rel=1e-4)  # μ on the row space
    data = ClientData.from_numpy(fd.x, fd.y, fd.counts, fd.x_test, fd.y_test, torch.device("cpu"))
    task = Task(build_model("linreg", {}, fd.input_shape, 1), data)
    assert pytest.approx(10.0, rel=1e-4) == task.smoothness().L
    assert task.evaluate(torch.zeros(60)) == {}  # no test set, and never an accuracy


GRID = """
[experiment]
name = "t"
[task]
dataset = "quadratic"
clients = 5
dim = 10
test_fraction = 0.0
[algorithm]
name = "dcgd"
"""


def test_grid_defaults_the_model_and_refuses_a_classifier() -> None:
    job = parse(GRID, Path("t.toml")).jobs[0]
    assert job.config["task"]["model"] == "linreg"
    assert job.config["task"]["partition"] == "natural"
    with pytest.raises(GridError, match="needs one of linreg, robust_linreg"):
        parse(GRID.replace("clients = 5", 'clients = 5\nmodel = "mlp"'), Path("t.toml"))
    with pytest.raises(GridError, match="classification model"):
        parse(
            GRID.replace('"quadratic"', '"digits"').replace("dim = 10", 'model = "linreg"'),
            Path("t.toml"),
        )
