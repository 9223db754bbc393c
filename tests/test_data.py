"""Datasets, test split, partitions and assembly of fedbench.data."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from fedbench.data import DATASETS, PARTITIONS, DataError, FederatedDataset, builtin, load_federated
from fedbench.data.base import RawData, assemble
from fedbench.seeding import numpy_rng


def task(**kw: Any) -> dict[str, Any]:
    """A resolved [task] section: defaults of the chosen components, then the overrides."""
    t: dict[str, Any] = {
        "dataset": "digits",
        "partition": "iid",
        "clients": 10,
        "test_fraction": 0.2,
        "data_seed": 0,
    }
    t.update(kw)
    for comp in (DATASETS[t["dataset"]], PARTITIONS[t["partition"]]):
        t = {**comp.resolve(t), **t}
    return t


def synth(**kw: Any) -> dict[str, Any]:
    return task(dataset="synthetic", partition="natural", clients=20, **kw)


def digits_labels() -> np.ndarray:
    return DATASETS["digits"].build(numpy_rng(0, "t"), clients=1).y


def rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Samples as lexicographically sorted rows [x..., y]: equal arrays = equal multisets."""
    a = np.concatenate([x.reshape(len(x), -1).astype(np.float64), y[:, None]], axis=1)
    return a[np.lexsort(a.T[::-1])]


def tv_of(fd: FederatedDataset) -> float:
    return fd.summary()["label_tv"]


# -- datasets ----------------------------------------------------------------------------------


def test_digits_shapes_and_classes() -> None:
    raw = DATASETS["digits"].build(numpy_rng(0, "t"), clients=5)
    assert raw.x.shape == (1797, 1, 8, 8) and raw.x.dtype == np.float32
    assert raw.y.shape == (1797,) and raw.y.dtype == np.int64
    assert raw.x.min() == 0.0 and raw.x.max() == 1.0
    assert raw.num_classes == 10 and set(raw.y.tolist()) == set(range(10))
    assert raw.client is None


@pytest.fixture
def no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any attempt of the mnist1d package to download its pickle."""
    import mnist1d.data
    import requests

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("mnist1d tried to download")

    monkeypatch.setattr(mnist1d.data, "get_dataset", boom)
    monkeypatch.setattr(requests, "get", boom)
    monkeypatch.setattr(mnist1d.data.requests, "get", boom)
    builtin._mnist1d_pool.cache_clear()


@pytest.mark.usefixtures("no_download")
def test_mnist1d_generated_locally_without_touching_global_rngs() -> None:
    np.random.seed(1234)
    random.seed(1234)
    np_before, py_before = np.random.get_state(), random.getstate()
    raw = DATASETS["mnist1d"].build(numpy_rng(0, "t"), clients=3, samples=300, generator_seed=42)
    np_after = np.random.get_state()
    assert all(np.array_equal(a, b) for a, b in zip(np_before, np_after, strict=True))
    assert random.getstate() == py_before
    assert raw.x.shape == (300, 1, 40) and raw.x.dtype == np.float32
    assert raw.y.dtype == np.int64 and np.array_equal(np.bincount(raw.y), np.full(10, 30))
    assert raw.num_classes == 10 and raw.client is None
    # the package's own generator with the same arguments: train and test parts, pooled
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = 300, 42
    d = make_dataset(args)
    np.testing.assert_allclose(raw.x[:, 0], np.concatenate([d["x"], d["x_test"]]), rtol=1e-6)
    other = DATASETS["mnist1d"].build(numpy_rng(0, "t"), clients=3, samples=300, generator_seed=7)
    assert not np.array_equal(other.x, raw.x)


@pytest.mark.usefixtures("no_download")
def test_mnist1d_default_is_standard_size() -> None:
    fd = load_federated(task(dataset="mnist1d", test_fraction=0.2), seed=0)
    assert fd.input_shape == (1, 40) and fd.num_classes == 10
    assert fd.x.shape == (4000, 1, 40) and fd.x_test.shape == (1000, 1, 40)


def test_synthetic_labels_are_argmax_of_client_models() -> None:
    d = builtin.make_synthetic(numpy_rng(3, "t"), 25, 1.0, 1.0, 60, 10, 2000)
    assert d.x.shape[1] == 60 and d.x.dtype == np.float32 and d.y.dtype == np.int64
    logits = np.einsum("nd,ndc->nc", d.x.astype(np.float64), d.W[d.client]) + d.b[d.client]
    assert np.array_equal(d.y, logits.argmax(1))
    sizes = np.bincount(d.client)
    assert sizes.shape == (25,) and sizes.min() >= 50 and sizes.max() <= 2000
    assert np.array_equal(d.client, np.sort(d.client))  # generated client by client


def _synthetic_per_client(
    rng: np.random.Generator, K: int, alpha: float, beta: float, dim: int, C: int, cap: int
) -> tuple[np.ndarray, ...]:
    """The definition of Synthetic(α, β), one client at a time (the semantics the vectorised
    generator must reproduce exactly): sizes, u_k, B_k, then W_k, b_k, v_k for all clients,
    then each client's samples x ~ N(v_k, Σ) labelled y = argmax(x W_k + b_k)."""
    sizes = np.minimum(rng.lognormal(4.0, 2.0, K).astype(np.int64) + 50, cap)
    u, B = rng.normal(0.0, alpha, K), rng.normal(0.0, beta, K)
    W = u[:, None, None] + rng.standard_normal((K, dim, C))
    b = u[:, None] + rng.standard_normal((K, C))
    v = B[:, None] + rng.standard_normal((K, dim))
    sd = np.arange(1, dim + 1, dtype=np.float64) ** -0.6
    xs, ys = [], []
    for k in range(K):  # the reference loops over clients on purpose
        xk = (v[k] + rng.standard_normal((sizes[k], dim)) * sd).astype(np.float32)
        xs.append(xk)
        ys.append(np.argmax(xk.astype(np.float64) @ W[k] + b[k], axis=1))
    client = np.repeat(np.arange(K), sizes)
    return np.concatenate(xs), np.concatenate(ys), client, W, b


@pytest.mark.parametrize(
    ("seed", "K", "dim", "C", "cap"), [(0, 40, 60, 10, 2000), (1, 300, 7, 3, 50), (2, 3, 5, 2, 1)]
)
def test_vectorised_synthetic_equals_per_client_definition(
    seed: int, K: int, dim: int, C: int, cap: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same samples, labels, clients and client models as the per-client loop, also when the
    chunks of samples and blocks of clients are tiny (ROWS = 64: many chunks and blocks, some
    clients larger than a block)."""
    want = _synthetic_per_client(numpy_rng(seed, "t"), K, 0.5, 1.0, dim, C, cap)
    for rows in (builtin.ROWS, 64):
        monkeypatch.setattr(builtin, "ROWS", rows)
        got = builtin.make_synthetic(numpy_rng(seed, "t"), K, 0.5, 1.0, dim, C, cap)
        for a, b in zip((got.x, got.y, got.client, got.W, got.b), want, strict=True):
            assert a.dtype == b.dtype and np.array_equal(a, b)


def test_synthetic_max_samples_caps_clients() -> None:
    d = builtin.make_synthetic(numpy_rng(0, "t"), 200, 1.0, 1.0, 10, 5, 60)
    sizes = np.bincount(d.client)
    assert sizes.max() == 60 and sizes.min() >= 50
    uncapped = builtin.make_synthetic(numpy_rng(0, "t"), 200, 1.0, 1.0, 10, 5, 10**9)
    assert np.bincount(uncapped.client).max() > 2000  # lognormal(4, 2) has a heavy tail


def test_synthetic_natural_partition_reproduces_generated_clients() -> None:
    t = synth(test_fraction=0.3)
    fd = load_federated(t, seed=0)
    params = DATASETS["synthetic"].resolve(t)
    raw = DATASETS["synthetic"].build(numpy_rng(t["data_seed"], "data"), clients=20, **params)
    assert raw.client is not None
    owner = {row.tobytes(): int(k) for row, k in zip(raw.x, raw.client, strict=True)}
    got = [owner[row.tobytes()] for row in fd.x]
    assert np.array_equal(got, np.repeat(np.arange(20), fd.counts))
    sizes = np.bincount(raw.client)
    held = np.minimum(np.floor(0.3 * sizes + 0.5), sizes - 1).astype(np.int64)
    assert np.array_equal(fd.counts, sizes - held)
    assert fd.x_test.shape[0] == held.sum()
    assert np.array_equal(
        rows(np.concatenate([fd.x, fd.x_test]), np.concatenate([fd.y, fd.y_test])),
        rows(raw.x, raw.y),
    )


def test_synthetic_beta_spreads_clients_and_alpha_never_changes_labels() -> None:
    def client_means(fd: FederatedDataset) -> np.ndarray:
        return np.add.reduceat(fd.x.mean(1), fd.offsets) / fd.counts  # [n]

    kw = {"clients": 100, "test_fraction": 0.0}
    homo = load_federated(synth(alpha=0.0, beta=0.0) | kw, seed=0)
    het = load_federated(synth(alpha=1.0, beta=1.0) | kw, seed=0)
    assert client_means(het).std() > 4 * client_means(homo).std()
    assert het.summary()["classes_per_client"] < homo.summary()["classes_per_client"]
    # u_k adds the same amount to every logit of client k (FedProx's generator)
    a0 = load_federated(synth(alpha=0.0, beta=1.0) | kw, seed=0)
    assert np.array_equal(a0.x, het.x) and np.array_equal(a0.y, het.y)


# -- loading, determinism, test split ------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        {"partition": "iid"},
        {"partition": "dirichlet", "alpha": 0.3},
        {"partition": "shards"},
        {"partition": "quantity"},
        {"dataset": "synthetic", "partition": "natural"},
    ],
)
def test_same_data_seed_same_data_other_seed_other_data(kw: dict[str, Any]) -> None:
    a = load_federated(task(**kw), seed=0)
    b = load_federated(task(**kw), seed=5)  # the run seed does not change the data
    c = load_federated(task(data_seed=1, **kw), seed=0)
    for f in ("x", "y", "counts", "x_test", "y_test"):
        assert np.array_equal(getattr(a, f), getattr(b, f))
    assert not np.array_equal(a.x_test, c.x_test)
    assert not np.array_equal(a.x[: len(c.x)], c.x[: len(a.x)])


@pytest.mark.parametrize(("fraction", "held"), [(0.0, 0), (0.25, 449), (0.5, 899), (0.999, 1795)])
def test_global_test_split_sizes_are_exact(fraction: float, held: int) -> None:
    fd = load_federated(task(test_fraction=fraction, clients=2), seed=0)
    assert fd.x_test.shape == (held, 1, 8, 8) and fd.y_test.shape == (held,)
    assert fd.x.shape[0] == 1797 - held and fd.x_test.dtype == np.float32
    raw = DATASETS["digits"].build(numpy_rng(0, "t"), clients=2)
    both = rows(np.concatenate([fd.x, fd.x_test]), np.concatenate([fd.y, fd.y_test]))
    assert np.array_equal(both, rows(raw.x, raw.y))


def test_natural_split_keeps_a_training_sample_per_client() -> None:
    fd = load_federated(synth(max_samples=1, test_fraction=0.9), seed=0)
    assert np.array_equal(fd.counts, np.ones(20)) and fd.x_test.shape[0] == 0


# -- partitions ----------------------------------------------------------------------------------

PARTITION_CASES = [
    ("iid", {}),
    ("dirichlet", {"alpha": 0.1, "min_samples": 1}),
    ("dirichlet", {"alpha": 100.0, "min_samples": 2}),
    ("shards", {"classes_per_client": 1}),
    ("shards", {"classes_per_client": 3}),
    ("quantity", {"sigma": 3.0}),
]


@pytest.mark.parametrize(("name", "params"), PARTITION_CASES)
@pytest.mark.parametrize("n", [1, 3, 37])
def test_partition_gives_every_client_samples_and_covers_all(
    name: str, params: dict[str, Any], n: int
) -> None:
    labels = digits_labels()
    owner = PARTITIONS[name].build(labels, n, numpy_rng(0, "p"), natural=None, **params)
    assert owner.shape == labels.shape and owner.dtype == np.int64
    assert owner.min() >= 0 and owner.max() < n
    assert np.bincount(owner, minlength=n).min() >= 1


@pytest.mark.parametrize(("name", "params"), PARTITION_CASES)
def test_loaded_partition_counts_and_coverage(name: str, params: dict[str, Any]) -> None:
    fd = load_federated(task(partition=name, clients=23, **params), seed=0)
    assert fd.counts.dtype == np.int64 and fd.counts.shape == (23,) and fd.counts.min() >= 1
    assert fd.counts.sum() == fd.x.shape[0] == fd.y.shape[0] == 1797 - 359
    assert np.array_equal(fd.offsets, np.concatenate([[0], np.cumsum(fd.counts)[:-1]]))
    train = load_federated(task(partition="iid", clients=1), seed=0)  # same split, one client
    assert np.array_equal(rows(fd.x, fd.y), rows(train.x, train.y))


def test_assemble_groups_by_client_stably() -> None:
    x = np.arange(8, dtype=np.float32)[:, None] * 10  # [8, 1]
    raw = RawData(x=x, y=np.arange(8) % 2, num_classes=2, client=None, name="toy")
    train, test = np.array([0, 2, 3, 5, 6, 7]), np.array([1, 4])
    owner = np.array([2, 0, 2, 1, 0, 2])
    fd = assemble(raw, train, test, owner, 3)
    assert fd.x[:, 0].tolist() == [20, 60, 50, 0, 30, 70]
    assert fd.counts.tolist() == [2, 1, 3] and fd.offsets.tolist() == [0, 2, 3]
    assert fd.x_test[:, 0].tolist() == [10, 40] and fd.y_test.tolist() == [1, 0]
    assert fd.input_shape == (1,) and fd.n == 3
    big = RawData(
        x=np.arange(500, dtype=np.float32)[:, None],
        y=np.zeros(500, np.int64),
        num_classes=1,
        client=None,
        name="toy",
    )
    owner = np.random.default_rng(0).integers(0, 4, 500)
    fd = assemble(big, np.arange(500), np.arange(0), owner, 4)
    assert (np.diff(fd.x[:, 0]) < 0).sum() == 3  # increasing within each of the 4 clients
    assert np.array_equal(np.repeat(np.arange(4), fd.counts), np.sort(owner))


def test_dirichlet_small_alpha_is_more_heterogeneous() -> None:
    kw = {"partition": "dirichlet", "clients": 10, "min_samples": 1}
    small = tv_of(load_federated(task(alpha=0.05, **kw), seed=0))
    large = tv_of(load_federated(task(alpha=100.0, **kw), seed=0))
    iid = tv_of(load_federated(task(clients=10), seed=0))
    assert small > 0.5 and large < 0.15 and iid < 0.15
    assert small > iid + 0.4 and small > large + 0.4


def test_shards_one_class_per_client() -> None:
    for n in (10, 20, 30):
        fd = load_federated(task(partition="shards", clients=n, classes_per_client=1), seed=0)
        present = (fd.label_counts() > 0).sum(1)
        assert np.array_equal(present, np.ones(n))
        assert fd.counts.max() - fd.counts.min() <= 0.1 * fd.counts.mean()
    fd = load_federated(task(partition="shards", clients=15, classes_per_client=2), seed=0)
    assert ((fd.label_counts() > 0).sum(1) <= 2).all()


def test_quantity_sigma_controls_size_spread() -> None:
    wide = load_federated(task(partition="quantity", clients=20, sigma=3.0), seed=0).counts
    narrow = load_federated(task(partition="quantity", clients=20, sigma=0.01), seed=0).counts
    assert wide.max() > 20 * wide.min()
    assert narrow.max() - narrow.min() <= 0.1 * narrow.mean()


# -- errors --------------------------------------------------------------------------------------


def one_line(err: pytest.ExceptionInfo[DataError]) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg
    return msg


def test_impossible_dirichlet_raises_one_line() -> None:
    with pytest.raises(DataError) as e:
        load_federated(task(partition="dirichlet", clients=300, alpha=0.01), seed=0)
    msg = one_line(e)
    assert "of 300 clients" in msg and "fewer clients" in msg and "larger alpha" in msg
    with pytest.raises(DataError) as e:
        load_federated(task(partition="dirichlet", clients=1000, min_samples=2), seed=0)
    assert "fewer clients" in one_line(e)


def test_unknown_names_and_disallowed_partitions() -> None:
    with pytest.raises(DataError) as e:
        load_federated(task() | {"dataset": "cifar"}, seed=0)
    assert "digits" in one_line(e) and "synthetic" in str(e.value)
    with pytest.raises(DataError) as e:
        load_federated(task() | {"partition": "bogus"}, seed=0)
    assert "dirichlet" in one_line(e)
    with pytest.raises(DataError) as e:
        load_federated(synth() | {"partition": "iid"}, seed=0)
    assert "allowed: natural" in one_line(e)
    with pytest.raises(DataError) as e:
        load_federated(task(partition="natural"), seed=0)
    assert "allowed: iid" in one_line(e)
    with pytest.raises(DataError) as e:
        load_federated(task() | {"dataset": "digits:/tmp/x"}, seed=0)
    one_line(e)
    with pytest.raises(DataError) as e:
        load_federated(task(partition="dirichlet") | {"alpha": -1.0}, seed=0)
    assert "alpha" in one_line(e)
    with pytest.raises(DataError) as e:
        load_federated(task(clients=2000), seed=0)
    assert "fewer clients" in one_line(e)


def test_natural_partition_needs_matching_clients() -> None:
    labels = np.zeros(10, dtype=np.int64)
    with pytest.raises(DataError) as e:
        PARTITIONS["natural"].build(labels, 3, numpy_rng(0, "p"), natural=None)
    one_line(e)
    with pytest.raises(DataError) as e:
        PARTITIONS["natural"].build(labels, 3, numpy_rng(0, "p"), natural=np.arange(10) % 5)
    assert "5" in one_line(e) and "3" in str(e.value)


# -- summary -------------------------------------------------------------------------------------


def test_summary_on_hand_built_case() -> None:
    fd = FederatedDataset(
        name="toy",
        x=np.zeros((4, 2), np.float32),
        y=np.array([0, 0, 1, 1]),
        counts=np.array([1, 3]),
        x_test=np.zeros((2, 2), np.float32),
        y_test=np.array([0, 1]),
        num_classes=3,
        input_shape=(2,),
    )
    s = fd.summary()
    # global labels (1/2, 1/2, 0); client 0 (1, 0, 0): TV 1/2; client 1 (1/3, 2/3, 0): TV 1/6
    assert s["label_tv"] == pytest.approx(1 / 3)
    assert s["classes_per_client"] == 1.5
    assert (s["samples_min"], s["samples_median"], s["samples_mean"], s["samples_max"]) == (
        1,
        2.0,
        2.0,
        3,
    )
    assert s["test_samples"] == 2 and s["train_samples"] == 4 and s["clients"] == 2
    assert fd.offsets.tolist() == [0, 1] and fd.n == 2


def test_registry_entries_are_complete() -> None:
    for reg in (DATASETS, PARTITIONS):
        for name in reg:
            assert reg[name].summary and reg[name].kind in ("builtin", "file")
    for name in DATASETS:
        assert set(DATASETS[name].extra["partitions"]) <= set(PARTITIONS)


def test_natural_split_without_test_set_stores_samples_once() -> None:
    """test_fraction = 0 on a natural split: the grouped samples are a view of the generated
    ones (no second copy) and equal what the gathering path gives."""
    t = task(dataset="synthetic", partition="natural", clients=30, test_fraction=0.0)
    fd = load_federated(t, seed=0)
    params = DATASETS["synthetic"].resolve(t)
    raw = DATASETS["synthetic"].build(numpy_rng(t["data_seed"], "data"), clients=30, **params)
    assert fd.x_test.shape[0] == 0 and np.array_equal(fd.x, raw.x) and np.array_equal(fd.y, raw.y)
    assert np.array_equal(fd.counts, np.bincount(raw.client))
    train = np.arange(raw.y.shape[0])
    view = assemble(raw, train, train[:0], raw.client, 30)
    assert np.shares_memory(view.x, raw.x)
    frozen = RawData(raw.x.copy(), raw.y, raw.num_classes, raw.client, raw.name)
    frozen.x.flags.writeable = False  # a cached pool: gathered (copied), never a view
    copied = assemble(frozen, train, train[:0], raw.client, 30)
    assert not np.shares_memory(copied.x, frozen.x) and np.array_equal(copied.x, view.x)


def _synthetic2_per_client(
    rng: np.random.Generator, K: int, alpha: float, beta: float, dim: int, C: int, cap: int
) -> tuple[np.ndarray, ...]:
    """Generator 2 defined client by client: sizes, u_k, B_k and one seed per block of BLOCK
    clients from `rng`; block j's torch stream gives W, b, v of its clients and the noise of its
    samples; client k's samples are x = z·sd + v_k (float32), labelled argmax(x W_k + b_k) in
    float64."""
    import torch

    sizes = np.minimum(rng.lognormal(4.0, 2.0, K).astype(np.int64) + 50, cap)
    u = rng.normal(0.0, alpha, K).astype(np.float32)
    B = rng.normal(0.0, beta, K).astype(np.float32)
    seeds = rng.integers(0, 2**62, -(-K // builtin.BLOCK))
    sd = torch.arange(1, dim + 1, dtype=torch.float64).pow(-0.6).float()
    xs, ys, Ws, bs = [], [], [], []
    for j, seed in enumerate(seeds):
        ks = range(j * builtin.BLOCK, min(K, (j + 1) * builtin.BLOCK))
        g = torch.Generator().manual_seed(int(seed))
        W = torch.randn((len(ks), dim, C), generator=g)
        b = torch.randn((len(ks), C), generator=g)
        v = torch.randn((len(ks), dim), generator=g)
        z = torch.randn((int(sizes[list(ks)].sum()), dim), generator=g)
        row = 0
        for i, k in enumerate(ks):  # the reference loops over clients on purpose
            Wk, bk = W[i] + float(u[k]), b[i] + float(u[k])
            xk = z[row : row + sizes[k]] * sd + (v[i] + float(B[k]))
            row += int(sizes[k])
            xs.append(xk.numpy())
            ys.append(np.argmax(xk.double().numpy() @ Wk.double().numpy() + bk.double().numpy(), 1))
            Ws.append(Wk.numpy())
            bs.append(bk.numpy())
    client = np.repeat(np.arange(K), sizes)
    return np.concatenate(xs), np.concatenate(ys), client, np.stack(Ws), np.stack(bs)


@pytest.mark.parametrize(("K", "block", "cap"), [(30, 4096, 2000), (37, 8, 60), (5, 1, 1)])
def test_generator2_equals_its_per_client_definition_for_any_thread_count(
    K: int, block: int, cap: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setattr(builtin, "BLOCK", block)
    want = _synthetic2_per_client(numpy_rng(5, "t"), K, 0.5, 1.0, 12, 4, cap)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            got = builtin.make_synthetic2(numpy_rng(5, "t"), K, 0.5, 1.0, 12, 4, cap, True)
            for a, b in zip((got.x, got.y, got.client, got.W, got.b), want, strict=True):
                assert a.dtype == b.dtype and np.array_equal(a, b)
    finally:
        torch.set_num_threads(threads)


def test_generator_field_keeps_existing_synthetic_data_and_keys() -> None:
    """generator = 1 (the default) is the old stream and leaves job keys alone; 2 is other data."""
    from pathlib import Path

    from fedbench import grid

    text = '[task]\ndataset = "synthetic"\nclients = 20\ntest_fraction = 0.0\n'
    (old,) = grid.parse(text, Path("g.toml")).jobs
    (one,) = grid.parse(text + "generator = 1\n", Path("g.toml")).jobs
    (two,) = grid.parse(text + "generator = 2\n", Path("g.toml")).jobs
    assert old.key == one.key != two.key
    a, b = load_federated(one.config["task"], 0), load_federated(two.config["task"], 0)
    d = builtin.make_synthetic(numpy_rng(0, "data"), 20, 1.0, 1.0, 60, 10, 2000)
    assert np.array_equal(a.x, d.x) and np.array_equal(a.y, d.y)  # generator 1: the old data
    assert a.x.shape != b.x.shape or not np.array_equal(a.x, b.x)
