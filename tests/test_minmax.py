"""Min-max tasks (quadratic games, bilinear games), their gap metric, and MASHA1 / MASHA2."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_env, make_task, run_rounds

from fedbench.data import load_federated
from fedbench.grid import parse
from fedbench.models import build_model
from fedbench.runner import build, evaluate
from fedbench.seeding import generator
from fedbench.task import ClientData, Task

K = 4  # x, y ∈ R^4


def game_task(dataset: str = "quadratic_game", n: int = 5, mu: float = 0.5) -> Task:
    cfg = {
        "dataset": dataset,
        "partition": "natural",
        "clients": n,
        "test_fraction": 0.0,
        "data_seed": 0,
        "dim": K,
        "samples_per_client": 8,
        "mu": mu,
        "heterogeneity": 1.0,
    }
    fd = load_federated(cfg, seed=0)
    data = ClientData.from_numpy(fd.x, fd.y, fd.counts, fd.x_test, fd.y_test, torch.device("cpu"))
    return Task(build_model("quadratic_game", {}, fd.input_shape, 1), data)


def explicit_f(rows: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """mean_j f_j(x, y) written from the definition (float64)."""
    g, h, u, v = (rows[:, i * K : (i + 1) * K] for i in range(4))
    p, q, mu = rows[:, 4 * K], rows[:, 4 * K + 1], rows[:, 4 * K + 2]
    x, y = z[:K], z[K:]
    f = 0.5 * (g @ x) ** 2 + (u @ x - p) * (v @ y - q) - 0.5 * (h @ y) ** 2
    return (f + 0.5 * mu * (x @ x - y @ y)).mean()


def client_rows(task: Task, i: int) -> torch.Tensor:
    o, c = int(task.data.offsets[i]), int(task.data.counts[i])
    return task.data.x[o : o + c].double()


@pytest.mark.parametrize("dataset", ["quadratic_game", "bilinear"])
def test_operator_is_grad_x_and_minus_grad_y(dataset: str) -> None:
    task = game_task(dataset)
    z = torch.randn(2 * K, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ids = torch.arange(task.n)
    loss, F = task.loss_grad(z.float().expand(task.n, -1).contiguous(), ids)
    for i in range(task.n):
        zz = z.clone().requires_grad_(True)
        f = explicit_f(client_rows(task, i), zz)
        (g,) = torch.autograd.grad(f, zz)
        assert float(loss[i]) == pytest.approx(float(f.detach()), rel=1e-4, abs=1e-5)
        torch.testing.assert_close(F[i].double(), torch.cat([g[:K], -g[K:]]), rtol=1e-4, atol=1e-5)
    if dataset == "bilinear":  # no quadratic part: ∂F_x/∂x = μI exactly
        e = torch.zeros(2 * K)
        e[0] = 1.0
        dF = task.full_gradient(e) - task.full_gradient(torch.zeros(2 * K))
        torch.testing.assert_close(dF[:K], torch.tensor([0.5, 0, 0, 0]), atol=1e-6, rtol=0)


def closed_form(task: Task) -> tuple[np.ndarray, ...]:
    """A, B, C, a, b of f = ½xᵀAx + xᵀBy − ½yᵀCy + aᵀx − bᵀy + const from the rows."""
    A, B, C = np.zeros((K, K)), np.zeros((K, K)), np.zeros((K, K))
    a, b = np.zeros(K), np.zeros(K)
    for i in range(task.n):
        r = client_rows(task, i).numpy()
        g, h, u, v = (r[:, j * K : (j + 1) * K] for j in range(4))
        p, q, mu = r[:, 4 * K], r[:, 4 * K + 1], r[0, 4 * K + 2]
        m = r.shape[0]
        A += (g.T @ g / m + mu * np.eye(K)) / task.n
        C += (h.T @ h / m + mu * np.eye(K)) / task.n
        B += u.T @ v / m / task.n
        a -= (q[:, None] * u).mean(0) / task.n
        b += (p[:, None] * v).mean(0) / task.n
    return A, B, C, a, b


def test_gap_and_distance_are_zero_exactly_at_the_closed_form_saddle() -> None:
    task = game_task()
    A, B, C, a, b = closed_form(task)
    M = np.block([[A, B], [-B.T, C]])
    z_star = np.linalg.solve(M, -np.concatenate([a, b]))
    at_star = task.game_metrics(torch.tensor(z_star, dtype=torch.float32))
    assert at_star["dist_sq"] < 1e-10 and abs(at_star["gap"]) < 1e-5
    z = torch.randn(2 * K, generator=torch.Generator().manual_seed(0))
    m = task.game_metrics(z)
    zd = z.double().numpy()
    assert m["dist_sq"] == pytest.approx(float(((zd - z_star) ** 2).sum()), rel=1e-4)
    # gap from its definition: max_y' f(x, y') − min_x' f(x', y) with the closed-form optima
    x, y = zd[:K], zd[K:]

    def f(xx: np.ndarray, yy: np.ndarray) -> float:
        return float(0.5 * xx @ A @ xx + xx @ B @ yy - 0.5 * yy @ C @ yy + a @ xx - b @ yy)

    y_best = np.linalg.solve(C, B.T @ x - b)
    x_best = np.linalg.solve(A, -(B @ y + a))
    assert m["gap"] == pytest.approx(f(x, y_best) - f(x_best, y), rel=1e-4)
    assert m["gap"] > 0
    classifier = make_task(model="logreg")
    assert classifier.game_metrics(torch.zeros(classifier.d)) == {}


def extragradient(task: Task, z: torch.Tensor, lr: float, rounds: int) -> torch.Tensor:
    for _ in range(rounds):
        z_half = z - lr * task.full_gradient(z)
        z = z - lr * task.full_gradient(z_half)
    return z


@pytest.mark.parametrize("name", ["masha1", "masha2"])
def test_identity_compression_with_p_one_is_extragradient(name: str) -> None:
    task = game_task()
    env = make_env(task, batch_size="full")
    state, _, alg = run_rounds(name, {"lr": 0.2, "p": 1.0}, env, 10)
    z0 = task.init_params(generator(0, 0, "init"))
    torch.testing.assert_close(
        alg.params(state), extragradient(task, z0, 0.2, 10), rtol=1e-5, atol=1e-6
    )


def test_masha2_with_identity_is_masha1_loopless_extragradient() -> None:
    task = game_task()
    a, _, alg = run_rounds("masha1", {"lr": 0.2, "p": 0.3}, make_env(task), 15)
    b, _, _ = run_rounds("masha2", {"lr": 0.2, "p": 0.3}, make_env(task), 15)
    torch.testing.assert_close(alg.params(a), alg.params(b), rtol=1e-5, atol=1e-6)
    assert not torch.equal(a.w, a.z)  # the anchor lags: loopless, not plain extragradient


@pytest.mark.parametrize(
    ("name", "comp", "params"),
    [("masha1", "randk", {"k": 2, "shared": True}), ("masha2", "topk", {"k": 2})],
)
def test_linear_convergence_on_a_strongly_monotone_game(name, comp, params) -> None:
    """Compressed (k = 2 of 8 coordinates) and still linear: ‖z − z*‖² falls by 10⁵ in 100
    rounds, the second 50 rounds gaining about as much (in log) as the first."""
    task = game_task(mu=0.5)
    env = make_env(task, comp, params, batch_size="full")
    z0 = task.init_params(generator(0, 0, "init"))
    d0 = task.game_metrics(z0)["dist_sq"]
    dists = []
    for rounds in (50, 100):
        state, _, alg = run_rounds(name, {"lr": 0.2, "p": 0.25}, env, rounds)
        dists.append(task.game_metrics(alg.params(state))["dist_sq"])
    assert dists[1] < 1e-5 * d0
    # linear: the second 50 rounds gain about as much as the first (log scale)
    assert math.log(dists[1] / dists[0]) < 0.5 * math.log(dists[0] / d0)


@pytest.mark.parametrize("convention", ["full", "values"])
def test_exact_bits(convention: str) -> None:
    task = game_task(n=5)
    d = 2 * K
    env = make_env(task, "topk", {"k": 3, "bits": convention})
    _, logs, _ = run_rounds("masha2", {"lr": 0.1, "p": 0.5}, env, 12)
    msg = 3 * 32 + (min(3 * 3, d) if convention == "full" else 0)
    for t, log in enumerate(logs):
        refreshed = bool(log.extra["anchor_refresh"])
        dense = (int(refreshed) + int(t == 0)) * 5 * 32 * d
        assert int(log.bits_up.sum()) == 5 * msg + dense
        assert int(log.bits_down.sum()) == 5 * (32 * d + 1) + dense
    assert 0 < sum(log.extra["anchor_refresh"] for log in logs) < 12


GRID = """
[task]
dataset = "quadratic_game"
clients = 6
[algorithm]
name = "masha1"
"""


def test_a_grid_naming_only_the_game_and_masha1_runs_and_logs_the_gap(tmp_path: Path) -> None:
    job = parse(GRID, tmp_path / "g.toml").jobs[0]
    assert job.config["task"]["model"] == "quadratic_game"
    task, _, _ = build(job, torch.device("cpu"))

    x0 = task.init_params(generator(0, 0, "init"))
    assert {"gap", "dist_sq", "train_loss"} <= set(evaluate(task, x0))
    assert "test_accuracy" not in evaluate(task, x0)
