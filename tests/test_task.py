"""Models and the task: vectorised gradients equal a Python loop over clients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import make_task
from torch.func import functional_call

from fedbench.models import MLP, build_model
from fedbench.seeding import generator
from fedbench.task import Task, regulariser, take


def loop_loss_grad(model, w, x, y):
    """Reference: one client at a time, plain autograd through functional_call on a real module."""
    losses, grads = [], []
    for i in range(w.shape[0]):
        wi = w[i].clone().requires_grad_()
        params = model.spec.unflatten(wi)
        logits = functional_call(model.template, params, (x[i],))
        loss = F.cross_entropy(logits, y[i])
        (g,) = torch.autograd.grad(loss, wi)
        losses.append(loss.detach())
        grads.append(g)
    return torch.stack(losses), torch.stack(grads)


@pytest.mark.parametrize(
    ("name", "shape", "params"),
    [
        ("logreg", (12,), {}),
        ("mlp", (1, 3, 4), {"hidden": [16, 8]}),
        ("cnn", (1, 8, 8), {"channels": [4, 8], "hidden": [16]}),
        ("cnn", (2, 10), {"channels": [4], "hidden": []}),
    ],
)
def test_vectorised_gradients_equal_a_loop(name, shape, params):
    model = build_model(name, params, shape, 5)
    m, B = 4, 7
    gen = torch.Generator().manual_seed(0)
    w = torch.stack([model.init(gen) for _ in range(m)])  # different model per client
    x = torch.randn((m, B, *shape), generator=gen)
    y = torch.randint(0, 5, (m, B), generator=gen)
    wt = torch.full((m, B), 1.0 / B)
    loss, g = model.loss_grad(w, x, y, wt)
    ref_loss, ref_g = loop_loss_grad(model, w, x, y)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g, ref_g, rtol=1e-4, atol=1e-6)


def test_hand_batched_mlp_equals_torch_func_path():
    model = build_model("mlp", {"hidden": [6, 5]}, (4,), 3)
    assert isinstance(model, MLP)
    gen = torch.Generator().manual_seed(1)
    w = torch.stack([model.init(gen) for _ in range(3)])
    x, y = torch.randn(3, 9, 4, generator=gen), torch.randint(0, 3, (3, 9), generator=gen)
    wt = torch.rand(3, 9, generator=gen)  # arbitrary per-sample weights, padding-like zeros too
    wt[:, -2:] = 0
    out = torch.empty_like(w)
    loss, g = model.loss_grad(w, x, y, wt, out=out)
    generic_loss, generic_g = super(MLP, model).loss_grad(w, x, y, wt)
    assert g.data_ptr() == out.data_ptr()
    torch.testing.assert_close(loss, generic_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g, generic_g, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["l2", "nonconvex"])
def test_regulariser_gradient_is_the_derivative_of_its_value(kind):
    w = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    value, grad = regulariser(w, kind, 0.3)
    (auto,) = torch.autograd.grad(value.sum(), w)
    torch.testing.assert_close(grad, auto)
    none_value, none_grad = regulariser(w, "none", 0.3)
    assert none_grad is None and float(none_value.abs().sum()) == 0.0


def test_full_batch_gradient_ignores_padding_and_equals_per_client_gradients():
    task = make_task(model="mlp", n=4, per_client=[3, 9, 5, 1])  # unequal sizes -> padding
    x = task.init_params(generator(0, 0, "init"))
    ids = torch.tensor([3, 0, 1])
    loss, g = task.loss_grad(x.expand(3, -1), ids)
    for row, i in enumerate(ids.tolist()):
        s, c = int(task.data.offsets[i]), int(task.data.counts[i])
        w = x.clone().requires_grad_()
        logits = task.model.logits(w.unsqueeze(0), task.data.x[s : s + c].unsqueeze(0))[0]
        ref = F.cross_entropy(logits, task.data.y[s : s + c]) + 0.5 * task.lam * (w * w).sum()
        (ref_g,) = torch.autograd.grad(ref, w)
        torch.testing.assert_close(loss[row], ref.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(g[row], ref_g, rtol=1e-4, atol=1e-6)


def test_chunked_cohort_equals_one_pass():
    big = make_task(model="mlp", n=7, per_client=11)
    small = Task(
        big.model, big.data, reg=big.reg, lam=big.lam, memory_gb=1e-9
    )  # one client per chunk
    assert small.chunk_size(4) == 1 and big.chunk_size(4) >= 7
    x = big.init_params(generator(1, 0, "init"))
    w = x + 0.01 * torch.randn(7, big.d, generator=torch.Generator().manual_seed(0))
    ids = torch.arange(7)
    idx = big.batch_indices(ids, 1, 4, generator(0, 1, "batches"))[:, 0]
    for i in (idx, None):
        l1, g1 = big.loss_grad(w, ids, i)
        l2, g2 = small.loss_grad(w, ids, i)
        torch.testing.assert_close(l1, l2)
        torch.testing.assert_close(g1, g2)


def test_batch_indices_stay_inside_each_clients_samples_and_are_deterministic():
    task = make_task(n=5, per_client=[1, 2, 30, 4, 7])
    ids = torch.tensor([0, 2, 4])
    idx = task.batch_indices(ids, 3, 64, generator(3, 1, "batches"))
    assert idx.shape == (3, 3, 64)
    owner = task.data.client_of[idx]
    assert torch.equal(owner, ids.view(3, 1, 1).expand_as(owner))
    assert torch.equal(idx, task.batch_indices(ids, 3, 64, generator(3, 1, "batches")))
    # client 2 has 30 samples: 192 draws hit most of them (uniform sampling, not the first few)
    assert idx[1].unique().numel() > 20


def test_train_loss_is_the_client_uniform_mean_plus_regulariser():
    task = make_task(model="logreg", n=3, per_client=[2, 10, 5], reg="nonconvex", lam=0.1)
    x = task.init_params(generator(0, 0, "init"))
    d = task.data
    per_client = []
    for i in range(3):
        s, c = int(d.offsets[i]), int(d.counts[i])
        logits = task.model.logits(x.unsqueeze(0), d.x[s : s + c].unsqueeze(0))[0]
        per_client.append(F.cross_entropy(logits, d.y[s : s + c]))
    expected = torch.stack(per_client).mean() + 0.1 * (x * x / (1 + x * x)).sum()
    assert math.isclose(task.train_loss(x), float(expected), rel_tol=1e-5)
    ev = task.evaluate(x)
    assert set(ev) == {"test_loss", "test_accuracy"} and 0.0 <= ev["test_accuracy"] <= 1.0


def test_initialisation_is_pytorch_default_and_seeded():
    model = build_model("mlp", {"hidden": [50]}, (20,), 4)
    a = model.init(generator(0, 0, "init"))
    b = model.init(generator(0, 0, "init"))
    c = model.init(generator(1, 0, "init"))
    assert torch.equal(a, b) and not torch.equal(a, c)
    v = model.spec.unflatten(a)
    W1, b1 = v["1.weight"], v["1.bias"]
    bound = 1 / math.sqrt(20)
    assert float(W1.abs().max()) <= bound and float(b1.abs().max()) <= bound
    assert float(W1.std()) == pytest.approx(bound / math.sqrt(3), rel=0.1)  # U(-b, b) has std b/√3


def test_param_spec_round_trip():
    model = build_model("cnn", {"channels": [3], "hidden": [5]}, (1, 6, 6), 2)
    w = torch.arange(model.d, dtype=torch.float32)
    parts = model.spec.unflatten(w)
    assert torch.equal(model.spec.flatten(parts), w)
    assert sum(p.numel() for p in parts.values()) == model.d


def test_cnn_refuses_flat_features():
    with pytest.raises(ValueError, match="model 'cnn' needs images"):
        build_model("cnn", {"channels": [4], "hidden": []}, (60,), 10)


@pytest.mark.parametrize("reg", ["none", "nonconvex"])
def test_full_gradient_equals_a_loop_over_clients_and_chunks_do_not_matter(reg):
    from conftest import full_grad

    task = make_task(reg=reg, lam=0.1)
    x = task.init_params(generator(3, 0, "init"))
    expected = full_grad(task, x)
    torch.testing.assert_close(task.full_gradient(x), expected, rtol=1e-5, atol=1e-6)
    task.memory_bytes = 1  # one client per chunk
    torch.testing.assert_close(task.full_gradient(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("model", "classes", "sizes"),
    [("logreg", 2, [3, 9, 5, 1]), ("logreg", 3, [2, 7, 3, 6]), ("mlp", 3, [4, 4, 4, 4])],
)
def test_kept_full_batch_of_everyone_gives_the_gathered_result_bit_for_bit(
    model, classes, sizes, monkeypatch
):
    from conftest import make_data

    import fedbench.task as task_module

    data = make_data(n=4, per_client=sizes, classes=classes)
    net = build_model(model, {"hidden": [8]}, data.x.shape[1:], classes, binary=classes == 2)
    assert type(net).__name__ == ("BinaryLogReg" if classes == 2 else "MLP")
    kept = Task(net, data, reg="nonconvex", lam=0.1)
    assert kept._everyone_full is not None  # kept now, under the default limit
    monkeypatch.setattr(task_module, "FULL_BATCH_CACHE_BYTES", 0)  # nothing kept: gathered
    gathered = Task(net, data, reg="nonconvex", lam=0.1)
    gen = torch.Generator().manual_seed(2)
    w = kept.init_params(generator(0, 0, "init")) + 0.1 * torch.randn(4, kept.d, generator=gen)
    for ids in (torch.arange(4), torch.tensor([0, 1, 3, 2]), torch.tensor([1, 2])):
        rows = w[: ids.numel()]
        l1, g1 = kept.loss_grad(rows, ids)
        l2, g2 = gathered.loss_grad(rows, ids)
        assert torch.equal(l1, l2) and torch.equal(g1, g2)
    assert gathered._everyone_full is None


def test_eval_sample_is_fixed_per_seed_and_none_for_everyone() -> None:
    from fedbench.task import eval_sample

    cpu = torch.device("cpu")
    a, b = eval_sample(1000, 50, 3, cpu), eval_sample(1000, 50, 3, cpu)
    assert a is not None and b is not None and torch.equal(a, b)
    assert a.numel() == 50 and torch.unique(a).numel() == 50 and torch.equal(a, a.sort().values)
    assert int(a.min()) >= 0 and int(a.max()) < 1000
    other = eval_sample(1000, 50, 4, cpu)
    assert other is not None and not torch.equal(a, other)
    assert eval_sample(1000, 0, 3, cpu) is None and eval_sample(1000, 1000, 3, cpu) is None


@pytest.mark.parametrize("model", ["logreg", "mlp"])
def test_sampled_train_loss_is_the_mean_over_the_sampled_clients(model: str) -> None:
    """f on a sample S is (1/|S|) Σ_{i ∈ S} f_i (f_i computed client by client here); on every
    client it is the full objective."""
    task = make_task(model, reg="l2", lam=0.1, per_client=[3, 7, 20, 5, 11, 2])
    w = task.init_params(generator(0, 0, "init"))
    d = task.data
    ids = torch.tensor([1, 4, 5])
    per_client = []
    for i in ids.tolist():  # the reference: one client at a time
        s, c = int(d.offsets[i]), int(d.counts[i])
        z = task.model.logits(w.unsqueeze(0), d.x[s : s + c].unsqueeze(0))[0]
        per_client.append(float(task.model.sample_loss(z, d.y[s : s + c]).mean()))
    reg = 0.5 * 0.1 * float(w.square().sum())
    want = sum(per_client) / 3 + reg
    assert math.isclose(task.sampled_train_loss(w, ids), want, rel_tol=1e-5)
    everyone = torch.arange(task.n)
    assert math.isclose(task.sampled_train_loss(w, everyone), task.train_loss(w), rel_tol=1e-6)
    task.eval_ids = ids  # what [experiment] eval_clients sets: train_loss uses the sample
    assert task.train_loss(w) == task.sampled_train_loss(w, ids)


@pytest.mark.parametrize(
    ("name", "shape", "params"),
    [
        ("logreg", (12,), {}),
        ("mlp", (1, 3, 4), {"hidden": [16, 8]}),
        ("mlp", (64,), {"hidden": [200, 200]}),  # bench_round's shapes
        ("cnn", (1, 8, 8), {"channels": [4], "hidden": [16]}),  # Model's default sgd_step
    ],
)
def test_sgd_step_is_loss_grad_then_the_step_bit_for_bit(name, shape, params):
    model = build_model(name, params, shape, 10)
    m, B, lr = 5, 32, 0.05
    gen = torch.Generator().manual_seed(3)
    w = torch.stack([model.init(gen) for _ in range(m)])
    x = torch.randn((m, B, *shape), generator=gen)
    y = torch.randint(0, 10, (m, B), generator=gen)
    wt = torch.full((m, B), 1.0 / B)
    g = torch.empty_like(w)
    ref_loss, _ = model.loss_grad(w, x, y, wt, out=g)
    ref_w = w.add(g, alpha=-lr)
    stepped = w.clone()
    loss = model.sgd_step(stepped, x, y, wt, lr)
    assert torch.equal(loss, ref_loss)
    assert torch.equal(stepped, ref_w)
    assert not torch.equal(stepped, w)  # it did move


@pytest.mark.parametrize(
    ("name", "shape", "params"),
    [
        ("logreg", (12,), {}),
        ("mlp", (64,), {"hidden": [200, 200]}),
        ("cnn", (1, 8, 8), {"channels": [4], "hidden": [16]}),  # Model's default sgd_step
    ],
)
@pytest.mark.parametrize("shared", [True, False], ids=["start-d", "start-md"])
def test_sgd_step_from_a_start_point_is_the_copy_then_the_step_bit_for_bit(
    name, shape, params, shared
):
    """The first fused local step reads the broadcast model (a batch-stride-0 view when every
    client starts there) and writes the stepped rows: the numbers of copying it in first."""
    model = build_model(name, params, shape, 10)
    m, B, lr = 6, 32, 0.05
    gen = torch.Generator().manual_seed(4)
    start = model.init(gen) if shared else torch.stack([model.init(gen) for _ in range(m)])
    x = torch.randn((m, B, *shape), generator=gen)
    y = torch.randint(0, 10, (m, B), generator=gen)
    wt = torch.full((m, B), 1.0 / B)
    ref = start.expand(m, -1).clone()
    ref_loss = model.sgd_step(ref, x, y, wt, lr)
    before = start.clone()
    out = torch.full_like(ref, float("nan"))  # every entry must be written
    loss = model.sgd_step(out, x, y, wt, lr, start=start)
    assert torch.equal(loss, ref_loss)
    assert torch.equal(out, ref)
    assert torch.equal(start, before)  # the start point is read, never written
    assert not torch.equal(out, start.expand(m, -1))


def test_take_gathers_the_rows_indexing_does():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(50, 1, 8, 8, generator=gen)
    idx = torch.randint(0, 50, (7, 3), generator=gen)
    assert torch.equal(take(x, idx), x[idx])
    assert take(x, idx).shape == (7, 3, 1, 8, 8)
    assert torch.equal(take(x, idx[0]), x[idx[0]])


@pytest.mark.parametrize("shared", [True, False], ids=["start-d", "start-md"])
def test_sgd_step_in_memory_chunks_from_a_start_point_is_the_one_pass_numbers(shared):
    """`algorithms.base.sgd_step` splits a block into memory chunks (`Task.chunk_size`); from a
    start point each chunk reads its own rows of it (or the shared `[d]`): one client per
    chunk gives the numbers of one pass, and of copying the start in first."""
    from fedbench.algorithms import base

    task = make_task(model="mlp", reg="none", n=6, per_client=20)
    m, B = 6, 8
    gen = torch.Generator().manual_seed(6)
    start = task.model.init(gen)
    if not shared:
        start = torch.stack([task.model.init(gen) for _ in range(m)])
    bidx = task.batch_indices(torch.arange(m), 1, B, gen)[:, 0]  # [m, B]
    wt = torch.full((m, B), 1.0 / B)

    def step(w: torch.Tensor, at: torch.Tensor | None) -> torch.Tensor:
        with torch.inference_mode():
            return base.sgd_step(task, w, bidx, wt, 0.1, at)

    whole = torch.empty(m, task.d)
    loss = step(whole, start)
    task.memory_bytes = 1  # one client per chunk
    assert task.chunk_size(B) == 1
    chunked = torch.empty(m, task.d)
    copied = start.expand(m, -1).clone()
    assert torch.equal(step(chunked, start), loss) and torch.equal(chunked, whole)
    assert torch.equal(step(copied, None), loss) and torch.equal(copied, whole)
