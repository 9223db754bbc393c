"""`[experiment] per_client_eval` (issue 26 item 5): the distribution of per-client accuracy
and loss at each evaluation, and every client's value at the last round with "all"."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli import EVAL_ROUNDS, ROUNDS, TINY, invoke, metrics, write

from fedbench import grid as gridlib
from fedbench import runner
from fedbench.models import build_model
from fedbench.task import ClientData, Task, client_metrics

STATS = {
    "client_acc_mean", "client_acc_std", "client_acc_p10", "client_acc_worst",
    "client_loss_mean", "client_loss_std", "client_loss_p90", "client_loss_worst",
}  # fmt: skip


def small_task(counts: list[int], reg: str = "l2", lam: float = 0.1, seed: int = 0) -> Task:
    rng = np.random.default_rng(seed)
    n = sum(counts)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=n)
    data = ClientData.from_numpy(x, y, np.array(counts), x[:5], y[:5], torch.device("cpu"))
    return Task(build_model("logreg", {}, (4,), 3), data, reg, lam)


def reference(task: Task, w: torch.Tensor, xs: list, ys: list) -> tuple[np.ndarray, np.ndarray]:
    """Per-client loss and accuracy by a loop over clients: one forward pass each."""
    losses, accs = [], []
    r = 0.5 * task.lam * float((w * w).sum())
    for x, y in zip(xs, ys, strict=True):
        z = task.model.logits(w.unsqueeze(0), x.unsqueeze(0))[0]
        losses.append(float(torch.nn.functional.cross_entropy(z, y)) + r)
        accs.append(float((z.argmax(-1) == y).float().mean()))
    return np.array(losses), np.array(accs)


def check(got: dict[str, float], losses: np.ndarray, accs: np.ndarray) -> None:
    want = {
        "client_acc_mean": accs.mean(),
        "client_acc_std": accs.std(),
        "client_acc_p10": np.percentile(accs, 10),
        "client_acc_worst": accs.min(),
        "client_loss_mean": losses.mean(),
        "client_loss_std": losses.std(),
        "client_loss_p90": np.percentile(losses, 90),
        "client_loss_worst": losses.max(),
    }
    assert set(got) == STATS
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k


def test_statistics_equal_a_per_client_loop_on_training_data() -> None:
    counts = [3, 7, 1, 12, 5, 9, 2]
    task = small_task(counts)
    w = torch.randn(task.d, generator=torch.Generator().manual_seed(1))
    d = task.data
    off = np.cumsum(counts) - counts
    xs = [d.x[o : o + c] for o, c in zip(off, counts, strict=True)]
    ys = [d.y[o : o + c] for o, c in zip(off, counts, strict=True)]
    values = task.client_values(w)
    assert values.source == "train" and values.ids.tolist() == list(range(7))
    losses, accs = reference(task, w, xs, ys)
    check(client_metrics(values), losses, accs)
    # the clients' mean loss is the objective train_loss (every client evaluated)
    assert client_metrics(values)["client_loss_mean"] == pytest.approx(task.train_loss(w), 1e-5)


def test_a_per_client_test_split_is_used_and_clients_without_test_samples_dropped() -> None:
    task = small_task([4, 4, 4, 4], reg="none")
    rng = np.random.default_rng(3)
    xt = torch.as_tensor(rng.normal(size=(9, 4)), dtype=torch.float32)
    yt = torch.as_tensor(rng.integers(0, 3, size=9))
    owner = torch.tensor([2, 0, 0, 3, 2, 0, 3, 3, 0])  # client 1 has no test sample
    data = dataclasses.replace(task.data, x_test=xt, y_test=yt, test_client_of=owner)
    task = Task(task.model, data)
    w = torch.randn(task.d, generator=torch.Generator().manual_seed(2))
    values = task.client_values(w)
    assert values.source == "test" and values.ids.tolist() == [0, 2, 3]
    xs = [xt[owner == i] for i in (0, 2, 3)]
    ys = [yt[owner == i] for i in (0, 2, 3)]
    check(client_metrics(values), *reference(task, w, xs, ys))


def test_vectors_name_every_client_once() -> None:
    task = small_task([2, 3, 4])
    out = client_metrics(task.client_values(torch.zeros(task.d)), vectors=True)
    assert {k for k in out if "/" in k} == {f"client_{m}/{i}" for m in ("acc", "loss")
                                             for i in range(3)}  # fmt: skip


PER_CLIENT = TINY.replace("eval_every = 2", "eval_every = 2\nper_client_eval = {value}")


def test_logged_at_evaluations_and_keys_unchanged_when_off(tmp_path: Path) -> None:
    keys = {j.key for j in gridlib.parse(TINY, Path("g.toml")).jobs}
    off = PER_CLIENT.format(value="false")
    assert {j.key for j in gridlib.parse(off, Path("g.toml")).jobs} == keys
    on = PER_CLIENT.format(value="true")
    assert {j.key for j in gridlib.parse(on, Path("g.toml")).jobs}.isdisjoint(keys)
    db = tmp_path / "g.db"
    only = ("--only", "algorithm.name=fedavg", "--only", "compressor.name=identity")
    assert invoke("run", write(tmp_path, on), "--db", db, *only).exit_code == 0
    m = metrics(db)
    for name in STATS:
        assert set(m.loc[m["name"] == name, "round"]) == EVAL_ROUNDS, name
    assert not m["name"].str.contains("/").any()  # no per-client rows unless "all"


def test_all_stores_each_clients_value_at_the_last_round_only(tmp_path: Path) -> None:
    text = PER_CLIENT.format(value='"all"')
    db = tmp_path / "g.db"
    only = ("--only", "algorithm.name=fedavg", "--only", "compressor.name=identity")
    assert invoke("run", write(tmp_path, text), "--db", db, *only).exit_code == 0
    m = metrics(db)
    per = m[m["name"].str.startswith("client_acc/")]
    assert set(per["round"]) == {ROUNDS}
    assert len(per) == 2 * 5  # two seeds × five clients
    for _, g in m[m["round"] == ROUNDS].groupby("run_id"):  # the stats of the same vector
        v = g[g["name"].str.startswith("client_acc/")]["value"].to_numpy()
        assert g[g["name"] == "client_acc_mean"]["value"].item() == pytest.approx(v.mean())
        assert g[g["name"] == "client_acc_worst"]["value"].item() == pytest.approx(v.min())


def test_a_bad_value_is_one_clear_line(tmp_path: Path) -> None:
    out = invoke("validate", write(tmp_path, PER_CLIENT.format(value='"some"')))
    assert out.exit_code != 0
    assert "per_client_eval" in out.output and "'all'" in out.output
    assert "Traceback" not in out.output


def test_runner_evaluate_adds_the_stats_only_when_asked() -> None:
    task = small_task([2, 3, 4])
    w = torch.zeros(task.d)
    plain = runner.evaluate(task, w)
    assert not set(plain) & STATS
    assert set(runner.evaluate(task, w, per_client=True)) == set(plain) | STATS
