"""Samples computed on demand (`fedbench.data.lazy`, synthetic `generator = 3`) and per-client
state in mapped zero pages: a million clients in little memory (issue 28)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from test_scale import estimate_of

from fedbench import grid, runner
from fedbench.algorithms.base import LAZY_ZERO_BYTES, zeroed_host
from fedbench.data import base as data_base
from fedbench.data import load_federated
from fedbench.data.builtin import SyntheticSource
from fedbench.data.lazy import is_lazy, normals, stream_seed
from fedbench.memory import MemoryEstimate, data_bytes
from fedbench.seeding import numpy_rng
from fedbench.store import Store

TASK = {
    "dataset": "synthetic",
    "partition": "natural",
    "clients": 60,
    "test_fraction": 0.2,
    "data_seed": 3,
    "alpha": 1.0,
    "beta": 1.0,
    "dim": 12,
    "classes": 5,
    "max_samples": 90,
    "generator": 3,
}


def lazy_task(**over: object) -> dict:
    return {**TASK, **over}


# -- the counter-based normals -----------------------------------------------------------------


def test_normals_are_a_pure_function_of_seed_key_and_column() -> None:
    s = stream_seed(7, 1)
    keys = np.array([5, 9, 2**40 + 3, 0, 9], dtype=np.uint64)
    z = normals(s, keys, 8)  # [5, 8]
    for i, k in enumerate(keys):  # each row alone, and wider: the same numbers
        assert np.array_equal(normals(s, np.array([k]), 8)[0], z[i])
        assert np.array_equal(normals(s, np.array([k]), 11)[0, :8], z[i])
    assert np.array_equal(z[1], z[4])  # the same key twice: the same row
    assert not np.array_equal(z[0], normals(stream_seed(7, 2), keys[:1], 8)[0])  # other stream
    assert not np.array_equal(z[0], normals(stream_seed(8, 1), keys[:1], 8)[0])  # other seed


def test_normals_are_standard_normal_and_uncorrelated() -> None:
    """10^6 draws: mean, variance, skewness and kurtosis of N(0, 1) within 6 standard errors,
    no correlation between neighbouring keys, columns or streams."""
    n = 250_000
    z = normals(stream_seed(1, 1), np.arange(n, dtype=np.uint64), 4)  # [n, 4]
    flat = z.reshape(-1)
    se = 1 / np.sqrt(flat.size)
    assert abs(flat.mean()) < 6 * se
    assert abs(flat.var() - 1) < 6 * np.sqrt(2) * se
    assert abs((flat**3).mean()) < 6 * np.sqrt(15) * se
    assert abs((flat**4).mean() - 3) < 6 * np.sqrt(96) * se
    assert abs(np.mean(flat < -1.959964) - 0.025) < 6 * np.sqrt(0.025 * 0.975) * se
    other = normals(stream_seed(1, 2), np.arange(n, dtype=np.uint64), 4)
    for a, b in ((z[:-1, 0], z[1:, 0]), (z[:, 0], z[:, 1]), (z[:, 0], other[:, 0])):
        assert abs(np.corrcoef(a, b)[0, 1]) < 6 / np.sqrt(n)


# -- synthetic generator 3 ---------------------------------------------------------------------


def reference(task: dict) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Client k's samples and labels by the definition, one client and one sample at a time:
    v_k = B_k + z_v(k), W_k = u_k + z_W(k), b_k = u_k + z_b(k), x_kj = v_k + sd ⊙ z_x(k, j)
    (float32), y_kj = argmax(x_kj W_k + b_k) in float64."""
    rng = numpy_rng(task["data_seed"], data_base.DATA)
    K, dim, C = task["clients"], task["dim"], task["classes"]
    sizes = np.minimum(rng.lognormal(4.0, 2.0, K).astype(np.int64) + 50, task["max_samples"])
    u, B = rng.normal(0.0, task["alpha"], K), rng.normal(0.0, task["beta"], K)
    seed = int(rng.integers(0, 2**63))
    sx, sv, sw, sb = (stream_seed(seed, s) for s in (1, 2, 3, 4))
    sd = np.arange(1, dim + 1, dtype=np.float64) ** -0.6
    xs, ys = [], []
    for k in range(K):
        key = np.array([k], dtype=np.uint64)
        v = B[k] + normals(sv, key, dim)[0]
        W = u[k] + normals(sw, key, dim * C)[0].reshape(dim, C)
        b = u[k] + normals(sb, key, C)[0]
        x = np.stack(
            [
                (v + sd * normals(sx, np.array([k << 32 | j], np.uint64), dim)[0])
                for j in range(sizes[k])
            ]
        ).astype(np.float32)
        xs.append(x)
        ys.append(np.argmax(x.astype(np.float64) @ W + b, axis=1))
    return xs, ys


def test_generator3_equals_its_per_client_definition() -> None:
    fd = load_federated(lazy_task(test_fraction=0.0), 0)
    xs, ys = reference(TASK)
    assert is_lazy(fd.x) and fd.n == 60 and fd.x.shape == (sum(map(len, xs)), 12)
    assert np.array_equal(fd.x[:], np.concatenate(xs)) and fd.x[:].dtype == np.float32
    assert np.array_equal(fd.y[:], np.concatenate(ys))
    assert np.array_equal(fd.counts, [len(x) for x in xs])


def test_lazy_rows_index_like_the_stored_array() -> None:
    fd = load_federated(lazy_task(), 0)
    X, Y = np.asarray(fd.x), np.asarray(fd.y)  # every row computed
    rng = np.random.default_rng(0)
    idx = rng.integers(0, X.shape[0], (3, 4))
    assert np.array_equal(fd.x[idx], X[idx]) and np.array_equal(fd.y[idx], Y[idx])
    assert np.array_equal(fd.x[5:40:3], X[5:40:3]) and np.array_equal(fd.x[-1], X[-1])
    assert np.array_equal(fd.y[7], Y[7])
    on = fd.x.to(torch.device("cpu"))
    t = on[torch.as_tensor(idx)]
    assert isinstance(t, torch.Tensor) and torch.equal(t, torch.from_numpy(X[idx]))
    assert on[:1].numel() == 12 and on.element_size() == 4 and fd.x.nbytes == 0
    with pytest.raises(IndexError):
        fd.x[np.array([X.shape[0]])]


def test_the_test_split_is_each_clients_last_samples_and_disjoint_from_training() -> None:
    every = load_federated(lazy_task(test_fraction=0.0), 0)
    fd = load_federated(lazy_task(), 0)
    held = np.minimum(np.floor(0.2 * every.counts + 0.5).astype(np.int64), every.counts - 1)
    assert np.array_equal(fd.counts, every.counts - held)
    assert fd.x_test.shape[0] == held.sum() > 0
    starts = every.x.offsets
    train = np.concatenate([np.arange(s, s + c) for s, c in zip(starts, fd.counts, strict=True)])
    test = np.concatenate(
        [np.arange(s + c, s + c + h) for s, c, h in zip(starts, fd.counts, held, strict=True)]
    )
    assert np.array_equal(fd.x[:], every.x[train]) and np.array_equal(fd.x_test[:], every.x[test])
    assert np.array_equal(fd.y_test[:], every.y[test])


@pytest.mark.parametrize("mode", ["samples", "clients"])
def test_validation_split_of_lazy_data(mode: str) -> None:
    plain = load_federated(lazy_task(), 0)
    fd = load_federated(lazy_task(val_fraction=0.25, val=mode), 0)
    assert is_lazy(fd.x) and fd.x_val is not None and fd.y_val is not None
    assert fd.counts.sum() + fd.x_val.shape[0] == plain.counts.sum()
    if mode == "clients":
        assert fd.n == 60 - 15 and fd.x_val.shape[0] == plain.counts.sum() - fd.counts.sum()
    else:  # each client keeps its first samples and gives its last
        assert fd.n == 60 and np.all(fd.counts >= 1)
        assert np.array_equal(fd.x[: fd.counts[0]], plain.x[: fd.counts[0]])
    rows = {r.tobytes() for r in np.asarray(fd.x)}
    assert not rows & {r.tobytes() for r in np.asarray(fd.x_val)}  # no sample in both


def test_generator3_draws_the_distribution_of_generator1() -> None:
    """Same sizes (same draws), and label heterogeneity, class mix and feature moments within
    sampling error of numpy's single-stream generator on 2,000 clients."""
    big = {"clients": 2000, "test_fraction": 0.0, "dim": 60, "classes": 10, "max_samples": 200}
    one, three = (
        load_federated(lazy_task(generator=1, **big), 0),
        load_federated(lazy_task(**big), 0),
    )
    assert np.array_equal(one.counts, three.counts)
    h1, h3 = one.heterogeneity(), three.heterogeneity()
    for key, tol in (("label_tv", 0.02), ("label_entropy", 0.02), ("classes_per_client", 0.15)):
        assert abs(h1[key] - h3[key]) < tol, (key, h1[key], h3[key])
    x1, x3 = one.x, np.asarray(three.x)
    assert abs(x1.std() - x3.std()) < 0.03 and abs(x1.mean() - x3.mean()) < 0.05
    p1 = np.bincount(one.y, minlength=10) / one.y.size
    p3 = np.bincount(np.asarray(three.y), minlength=10) / one.y.size
    assert np.abs(p1 - p3).max() < 0.03


def test_partition_statistics_of_many_lazy_clients_count_a_sample(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fd = load_federated(lazy_task(), 0)
    full = fd.heterogeneity()
    assert "sampled_clients" not in full
    monkeypatch.setattr(data_base, "LAZY_STATS_CLIENTS", 20)
    part = fd.heterogeneity()
    assert part["clients"] == 60 and part["sampled_clients"] == 20
    assert part["samples_mean"] == full["samples_mean"]  # sizes: every client
    rows = int(fd.counts[:20].sum())  # the first 20 clients' labels, counted here
    owner = np.repeat(np.arange(20), fd.counts[:20])
    lc = np.bincount(owner * 5 + np.asarray(fd.y)[:rows], minlength=100).reshape(20, 5)
    want = data_base.heterogeneity(lc)
    for key in ("label_tv", "label_entropy", "classes_per_client"):
        assert part[key] == want[key]


def test_memory_estimate_of_lazy_data_counts_no_sample() -> None:
    fd = load_federated(lazy_task(), 0)
    assert data_bytes(fd.x, fd.y, fd.x_test, fd.y_test, fd.n) == 8 * fd.x.shape[0] + 40 * 60


def test_lazy_rows_need_the_natural_partition() -> None:
    with pytest.raises(data_base.DataError, match="allowed: natural"):
        load_federated(lazy_task(partition="iid"), 0)


def test_the_source_answers_rows_in_any_grouping() -> None:
    src = SyntheticSource(numpy_rng(0, "t"), 30, 1.0, 1.0, 8, 4, 70)
    k = np.array([3, 3, 17, 0, 29, 3], dtype=np.int64)
    j = np.array([0, 5, 2, 0, 1, 0], dtype=np.int64)
    x, y = src.rows(k, j)
    for i in range(len(k)):
        xi, yi = src.rows(k[i : i + 1], j[i : i + 1])
        assert np.array_equal(xi[0], x[i]) and yi[0] == y[i]
    assert np.array_equal(x[0], x[5])
    e = src.rows(k[:0], j[:0])
    assert e[0].shape == (0, 8) and e[1].shape == (0,)


# -- runs --------------------------------------------------------------------------------------

GRID = """
[experiment]
name = "lazy"
rounds = {rounds}
eval_every = 1
eval_clients = {eval_clients}
[task]
dataset = "synthetic"
generator = 3
max_samples = 40
clients = {clients}
model = "logreg"
test_fraction = 0.1
[algorithm]
name = "scaffold"
participation = {participation}
lr = 0.2
local_steps = 3
batch_size = 8
"""


def job_of(**fmt: object) -> grid.Job:
    args = {"rounds": 10, "eval_clients": 0, "clients": 200, "participation": 0.2, **fmt}
    (j,) = grid.parse(GRID.format(**args), Path("lazy.toml")).jobs
    return j


def run(j: grid.Job, tmp: Path) -> dict[str, list[float]]:
    """Every metric's values by round of one job run into a fresh database (wall time out)."""
    store = Store(f"sqlite:///{tmp / 'r.db'}")
    store.ensure_runs(store.upsert_experiment("lazy", "lazy.toml", ""), [runner.run_spec(j)])
    out = runner.execute(j, store, torch.device("cpu"))
    assert out.status == "done", out.error
    series: dict[str, list[float]] = {}
    for r in store.metrics_records([int(store.get_run(j.key)["id"])]):
        if r.name != "wall_s":
            series.setdefault(r.name, []).append(r.value)
    return series


def test_a_run_on_lazy_data_learns_and_repeats_exactly(tmp_path: Path) -> None:
    j = job_of()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = run(j, tmp_path / "a")
    runner._dataset.cache_clear()
    b = run(j, tmp_path / "b")
    assert a == b  # the same numbers from a fresh build of the data
    assert a["train_loss"][-1] < 0.9 * a["train_loss"][0]  # as generators 1 and 2 here
    assert a["test_accuracy"][-1] > a["test_accuracy"][0]


def test_scaffold_on_many_lazy_clients_touches_only_sampled_rows() -> None:
    """20,000 clients: the control variates are [n, d] mapped zero pages; after one round
    only the cohort's rows are non-zero, and the training loss is the seeded sample's."""
    j = job_of(rounds=1, clients=20_000, participation=0.005, eval_clients=50)
    task, env, alg = runner.build(j, torch.device("cpu"))
    assert is_lazy(task.data.x)
    from fedbench.seeding import RoundRng

    s = alg.init(torch.zeros(task.d), env, RoundRng(j.seed, 0, "cpu"))
    assert s.c_i.shape == (20_000, task.d) and s.c_i.nbytes >= LAZY_ZERO_BYTES // 2
    s, _ = alg.round(s, env, RoundRng(j.seed, 1, "cpu"))
    touched = int((s.c_i.abs().sum(1) > 0).sum())
    assert 0 < touched <= 100  # the cohort of 0.5% (its rows only)
    assert np.isfinite(runner.evaluate(task, s.x)["train_loss"])


# -- per-client state in mapped zero pages -----------------------------------------------------


def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
def test_zeroed_host_state_costs_memory_only_for_rows_written() -> None:
    before = rss_bytes()
    t = zeroed_host((50_000, 5_000), torch.float32)  # 1 GB of zeros
    assert t.shape == (50_000, 5_000) and t.dtype == torch.float32
    assert float(t[::997].abs().sum()) == 0.0
    t[[3, 40_000]] = 1.5
    assert rss_bytes() - before < 200 * 2**20  # the two rows, not the gigabyte
    assert float(t.sum()) == 2 * 1.5 * 5_000
    buf = io.BytesIO()
    torch.save({"c": t}, buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf, weights_only=True)["c"], t)
    small = zeroed_host((10, 4), torch.float16)
    assert small.dtype == torch.float16 and not small.any()


def test_the_memory_estimate_counts_the_state_rows_a_run_writes() -> None:
    """Host state from LAZY_ZERO_BYTES up costs the rows written: 1 − (1 − p)^rounds of them."""

    def estimate(rounds: int, clients: int) -> MemoryEstimate:
        return estimate_of(job_of(rounds=rounds, clients=clients, participation=0.01))

    big = estimate(3, 30_000)
    assert big.clients * big.state_bytes_per_client >= LAZY_ZERO_BYTES
    assert big.written == pytest.approx(1 - 0.99**3)
    state = big.clients * big.state_bytes_per_client * big.written
    assert big.total_bytes == int(big.data_bytes + state + big.cohort_bytes)
    assert "held as rows are first written: 3.0% of them" in big.line()
    small = estimate(3, 200)  # dense: every row counts
    assert small.written == 1.0 and "held as" not in small.line()


@pytest.mark.parametrize(
    ("method", "written"),
    [
        ('name = "ef21"', 1.0),  # g_i⁰ = ∇f_i(x⁰) for every client at the start
        ('name = "local_rmsprop"\nprecond = "local"', 1.0),  # D_i filled with ones
        ('name = "econtrol"', (1 + (1 - 0.99**3)) / 2),  # h_i⁰ set for all, e_i zero pages
    ],
)
def test_the_memory_estimate_counts_rows_set_at_the_start(method: str, written: float) -> None:
    """Rows a method sets for every client in `init` are written whatever the participation:
    the estimate counts them in full, not 1 − (1 − p)^rounds of them."""
    text = GRID.format(rounds=3, eval_clients=0, clients=30_000, participation=0.01)
    text = text.replace('name = "scaffold"', method)
    if "ef21" in method or "econtrol" in method:
        text += '[compressor]\nname = "topk"\n'
    (j,) = grid.parse(text, Path("lazy.toml")).jobs
    est = estimate_of(j)
    assert est.clients * est.state_bytes_per_client >= LAZY_ZERO_BYTES
    # within 1%: small per-client tensors ([n] counters) are zero at the start too
    assert est.written == pytest.approx(written, rel=0.01)


def test_show_says_the_partition_labels_were_counted_over_a_sample(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fedbench.commands.show import partition_lines, partition_stats

    monkeypatch.setattr(data_base, "LAZY_STATS_CLIENTS", 20)
    stats = partition_stats({"task": lazy_task()})
    assert stats["sampled_clients"] == 20 and stats["clients"] == 60
    assert partition_lines(stats)[-1] == "(labels counted over the first 20 clients)"
    assert "sampled_clients" not in partition_stats({"task": lazy_task(generator=1)})
