"""Checkpoints of cross-device per-client state: an `[n, d]` tensor of mapped zero pages
(`zeroed_host`) is stored as its non-zero rows and their indices, found from the kernel's page
table, and rebuilt as mapped zero pages on load, bit for bit; its indices are untrusted input;
the file of a large-n state of few written rows is small; a resumed run gives the numbers of
an uninterrupted one."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_env, make_task, run_rounds
from test_algorithms import SWEEP_PARAMS, compatible
from test_checkpoint_trust import tamper
from test_cli import assert_same_numbers, fail_in_round, invoke, run_metrics, write
from test_faults import _same
from test_reliability import rows_per_run

from fedbench import checkpoint
from fedbench import grid as gridlib
from fedbench import rows as rowslib
from fedbench.algorithms import ALGORITHMS, base
from fedbench.algorithms.base import mapped_zero_pages, scatter_rows, zeroed_host
from fedbench.algorithms.scaffold import ScaffoldState
from fedbench.compressors import Compressor
from fedbench.compressors.error_feedback import EFState
from fedbench.seeding import RoundRng

CPU = torch.device("cpu")
KEY = "k" * 16


@pytest.fixture
def lazy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every zeroed_host tensor, however small, mapped zero pages (the 10⁶-client path)."""
    monkeypatch.setattr(rowslib, "LAZY_ZERO_BYTES", 1)


def bits(t: torch.Tensor) -> torch.Tensor:
    """`t`'s bits as integers: −0.0 differs from 0.0 and NaN equals itself."""
    return checkpoint._bits(t.contiguous())


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b))


def state_of(rows: torch.Tensor) -> ScaffoldState:
    d = rows.shape[1]
    x = torch.linspace(-1, 1, d)
    return ScaffoldState(3, x, x * 2, rows, (), base.Broadcast(x.clone(), None), None, None)


def save_and_load(tmp_path: Path, state: Any) -> checkpoint.Checkpoint:
    checkpoint.save(tmp_path, KEY, checkpoint.Checkpoint(3, state, 1.0, 2.0, 3.0, {}))
    back = checkpoint.load(tmp_path, KEY, CPU)
    assert back is not None
    return back


def stored(tmp_path: Path) -> tuple[dict[str, Any], list[torch.Tensor]]:
    raw = torch.load(tmp_path / f"{KEY}.pt", weights_only=True)
    return json.loads(raw["meta"]), list(raw["tensors"])


def full_scan(rows: torch.Tensor) -> torch.Tensor:
    """The non-zero rows by reading every row (what pagemap spares)."""
    return torch.arange(rows.shape[0])[bits(rows).ne(0).any(1)]


# -------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("d", [37, 1024, 3000])  # rows across page edges, a page, >1 page
def test_a_sparse_state_round_trips_bit_for_bit(
    tmp_path: Path, lazy: None, dtype: torch.dtype, d: int
) -> None:
    """Rows written every way a method or plugin can (scatter_rows, indexing, index_copy_, an
    in-place op on a row), with −0.0 and NaN, come back with the same bits, in mapped zero
    pages on the host; a row written with +0.0 is one never written (not stored, still 0)."""
    n = 5_000
    rows = zeroed_host((n, d), dtype)
    assert mapped_zero_pages(rows)
    gen = torch.Generator().manual_seed(0)
    scatter_rows(rows, torch.tensor([0, 17, n - 1]), torch.randn(3, d, generator=gen))
    rows[[900, 901]] = torch.randn(2, d, generator=gen).to(dtype)
    rows.index_copy_(0, torch.tensor([2500]), torch.randn(1, d, generator=gen).to(dtype))
    rows[3333].add_(1.0)
    rows[4000, 5] = -0.0  # one bit set: stored
    rows[4100, d - 1] = float("nan")
    rows[4200] = 0.0  # +0.0 written: equal to untouched, not stored
    want = [0, 17, 900, 901, 2500, 3333, 4000, 4100, n - 1]
    assert checkpoint.written_rows(rows).tolist() == want == full_scan(rows).tolist()
    state = state_of(rows)
    back = save_and_load(tmp_path, state).state
    assert same_bits(back.c_i, rows) and mapped_zero_pages(back.c_i)
    assert back.c_i.device == CPU and torch.equal(back.x, state.x)
    meta, tensors = stored(tmp_path)
    n_, i, j = meta["state"]["v"][3]["R"]
    assert n_ == n and tensors[i].tolist() == want and tensors[j].shape == (len(want), d)


@pytest.mark.parametrize("pagemap", [True, False])
def test_rows_shorter_than_a_page_are_found_one_by_one(
    lazy: None, monkeypatch: pytest.MonkeyPatch, pagemap: bool
) -> None:
    """128 rows of 8 float32 a page: written rows between a page's first and last non-zero
    rows are found, zero rows between them are not; a non-zero element in a row's last
    word, a row across a page edge (rows of 37 floats)."""
    if not pagemap:
        monkeypatch.setattr(checkpoint, "_pagemap_works", lambda: False)
    small = zeroed_host((1_000, 8), torch.float32)
    small[[1, 5, 127]] = 1.0
    small[130, 7] = -0.0
    small[999, 0] = 3.0
    assert checkpoint.written_rows(small).tolist() == [1, 5, 127, 130, 999]
    edge = zeroed_host((1_000, 37), torch.float32)  # row 27: bytes 3,996-4,143
    edge[27, 36] = 1.0  # on the second page only
    edge[28, 0] = 1.0
    assert checkpoint.written_rows(edge).tolist() == [27, 28]


def test_rows_only_read_are_not_stored_and_pages_only_read_lose_nothing(
    tmp_path: Path, lazy: None
) -> None:
    """Reading rows (a cohort's gather, a full scan) maps them without writing: they stay
    zero and are not stored; what was written is still found afterwards."""
    rows = zeroed_host((20_000, 100), torch.float32)
    rows[[5, 19_999]] = 1.0
    assert float(rows.sum()) == 200.0  # reads every page
    assert checkpoint.written_rows(rows).tolist() == [5, 19_999]
    assert same_bits(save_and_load(tmp_path, state_of(rows)).state.c_i, rows)


def test_the_page_table_and_reading_every_row_find_the_same_rows(
    lazy: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where pagemap is unreadable (not Linux, a sandbox) every row is read: the same rows.
    On this machine (Linux) the page table is what finds them, and it names few candidates."""
    rows = zeroed_host((50_000, 300), torch.float16)
    ids = torch.randperm(50_000, generator=torch.Generator().manual_seed(1))[:40]
    scatter_rows(rows, ids, torch.rand(40, 300) + 1)
    want = ids.sort().values.tolist()
    if Path("/proc/self/pagemap").exists():
        assert checkpoint._pagemap_works()
        live = checkpoint._live_pages(rows.data_ptr(), rows.numel() * 2)
        assert live is not None and 0 < int(live.sum()) <= 40 * 3  # a row spans ≤ 3 pages
    assert checkpoint.written_rows(rows).tolist() == want
    monkeypatch.setattr(checkpoint, "_pagemap_works", lambda: False)
    assert checkpoint.written_rows(rows).tolist() == want


def test_a_state_filled_everywhere_is_stored_whole(tmp_path: Path, lazy: None) -> None:
    """local_rmsprop's `precond = "local"` D_i start at 1 (`fill_`): every row is stored."""
    rows = zeroed_host((3_000, 64), torch.float32).fill_(1.0)
    rows[7] = 0.0
    assert checkpoint.written_rows(rows).tolist() == [i for i in range(3_000) if i != 7]
    assert same_bits(save_and_load(tmp_path, state_of(rows)).state.c_i, rows)


def test_mapped_rows_load_into_host_memory_whatever_the_runs_device(
    tmp_path: Path, lazy: None
) -> None:
    """A run on an accelerator keeps its too-large client rows on the host (client_rows):
    loaded for another device ("meta" stands in for CUDA here), the model goes there and the
    rows stay mapped zero pages on the host."""
    rows = zeroed_host((2_000, 16), torch.float32)
    rows[[3, 1_999]] = 1.0
    checkpoint.save(tmp_path, KEY, checkpoint.Checkpoint(3, state_of(rows), 0.0, 0.0, 0.0, {}))
    back = checkpoint.load(tmp_path, KEY, torch.device("meta"))
    assert back is not None and back.state.x.device.type == "meta"
    assert back.state.c_i.device == CPU and mapped_zero_pages(back.state.c_i)
    assert same_bits(back.state.c_i, rows)


def test_dense_and_device_state_is_stored_as_before(tmp_path: Path) -> None:
    """State below LAZY_ZERO_BYTES (torch.zeros) is no mapped zero pages: stored whole."""
    rows = zeroed_host((100, 8), torch.float32)
    rows[3] = 2.0
    assert not mapped_zero_pages(rows) and not mapped_zero_pages(torch.zeros(10**6, 64)[1:])
    back = save_and_load(tmp_path, state_of(rows)).state
    assert same_bits(back.c_i, rows)
    assert "T" in stored(tmp_path)[0]["state"]["v"][3]


# -------------------------------------------------------------------------- size


def test_the_file_of_many_clients_and_few_written_rows_is_small(tmp_path: Path) -> None:
    """10⁶ clients × 64 floats (256 MB of mapped zero pages, the default threshold) of which
    50 rows were written: the file holds those rows and their indices, not n × d."""
    n, d, k = 10**6, 64, 50
    rows = zeroed_host((n, d), torch.float32)
    assert mapped_zero_pages(rows)
    ids = torch.randperm(n, generator=torch.Generator().manual_seed(2))[:k]
    scatter_rows(rows, ids, torch.randn(k, d))
    checkpoint.save(tmp_path, KEY, checkpoint.Checkpoint(3, state_of(rows), 0.0, 0.0, 0.0, {}))
    size = (tmp_path / f"{KEY}.pt").stat().st_size
    row_bytes = d * 4 + 8  # a row and its index
    other = 3 * d * 4  # x, c and the broadcast model
    assert size <= k * row_bytes + other + 16 * 2**10  # + the zip's and JSON's overhead
    back = checkpoint.load(tmp_path, KEY, CPU)
    assert back is not None and same_bits(back.state.c_i[ids], rows[ids])
    assert checkpoint.written_rows(back.state.c_i).tolist() == ids.sort().values.tolist()


# -------------------------------------------------------------------------- untrusted input


def _set_rows(change: Any) -> Any:
    """A tamper edit of the c_i entry: change(entry, tensors) in place."""

    def edit(meta: dict[str, Any], tensors: list[torch.Tensor]) -> None:
        change(meta["state"]["v"][3]["R"], tensors)

    return edit


def _index(f: Any) -> Any:
    return _set_rows(lambda e, ts: ts.__setitem__(e[1], f(ts[e[1]])))


def _values(f: Any) -> Any:
    return _set_rows(lambda e, ts: ts.__setitem__(e[2], f(ts[e[2]])))


MALFORMED = {
    "index n": _index(lambda i: torch.cat([i[:-1], i.new_tensor([4_000])])),
    "index 2**40": _index(lambda i: torch.cat([i[:-1], i.new_tensor([2**40])])),
    "index -1": _index(lambda i: torch.cat([i.new_tensor([-1]), i[1:]])),
    "unsorted": _index(lambda i: i.flip(0)),
    "duplicate": _index(lambda i: torch.cat([i[:1], i[:-1]])),
    "index int32": _index(lambda i: i.int()),
    "index float": _index(lambda i: i.double()),
    "index 2-D": _index(lambda i: i[:, None]),
    "one row fewer": _values(lambda v: v[:-1]),
    "rows 1-D": _values(lambda v: v.flatten()),
    "n -1": _set_rows(lambda e, ts: e.__setitem__(0, -1)),
    "n 4.0": _set_rows(lambda e, ts: e.__setitem__(0, 4.0)),
    "n True": _set_rows(lambda e, ts: e.__setitem__(0, True)),
    "n 2**62": _set_rows(lambda e, ts: e.__setitem__(0, 2**62)),
    "ref out of range": _set_rows(lambda e, ts: e.__setitem__(1, len(ts))),
    "ref negative": _set_rows(lambda e, ts: e.__setitem__(1, -1)),
    "entry too short": _set_rows(lambda e, ts: e.pop()),
}


def saved_sparse(tmp_path: Path) -> tuple[ScaffoldState, Path]:
    rows = zeroed_host((4_000, 16), torch.float32)
    rows[[10, 20, 3_999]] = 1.0
    state = state_of(rows)
    checkpoint.save(tmp_path, KEY, checkpoint.Checkpoint(3, state, 0.0, 0.0, 0.0, {}))
    return state, tmp_path / f"{KEY}.pt"


@pytest.mark.parametrize("bad", sorted(MALFORMED))
def test_a_malformed_sparse_entry_is_rejected_with_one_warning(
    tmp_path: Path, lazy: None, capfd: pytest.CaptureFixture[str], bad: str
) -> None:
    """Indices out of 0..n − 1, unsorted, repeated, not int64 `[k]`; rows not `[k, d]`; a
    bad n or reference: the file is no checkpoint (one warning line, the run starts over),
    nothing raises and no row is written outside the tensor."""
    _, path = saved_sparse(tmp_path)
    tamper(path, MALFORMED[bad])
    capfd.readouterr()
    assert checkpoint.load(tmp_path, KEY, CPU) is None
    err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "ignoring its checkpoint" in err[0] and KEY in err[0], err


@pytest.mark.parametrize(
    ("bad", "edit"),
    [
        ("rows float64", _values(lambda v: v.double())),
        ("rows d + 1", _values(lambda v: torch.cat([v, v[:, :1]], 1))),
        ("n + 1", _set_rows(lambda e, ts: e.__setitem__(0, e[0] + 1))),
    ],
)
def test_a_well_formed_sparse_entry_of_another_shape_or_dtype_fails_problem(
    tmp_path: Path, lazy: None, bad: str, edit: Any
) -> None:
    """Rows of another dtype or width, another n: loaded, then named by `problem`."""
    state, path = saved_sparse(tmp_path)
    tamper(path, edit)
    back = checkpoint.load(tmp_path, KEY, CPU)
    assert back is not None
    reason = checkpoint.problem(back, state, 10)
    assert reason is not None and reason.startswith("state.c_i is ") and "\n" not in reason


def test_a_checkpoint_of_the_previous_format_starts_over_with_a_warning(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    _, path = saved_sparse(tmp_path)
    raw = torch.load(path, weights_only=True)
    torch.save({**raw, "format": "fedbench-checkpoint-2"}, path)
    assert checkpoint.load(tmp_path, KEY, CPU) is None
    assert "fedbench-checkpoint-2" in capfd.readouterr().err


# -------------------------------------------------------------------------- algorithms


# the methods whose state holds client_rows, and params that make them use it
LAZY_STATE: dict[str, dict[str, object]] = {
    "scaffold": {},
    "fedgamma": {},  # SCAFFOLD with SAM steps
    "scafcom": {},
    "scallion": {},
    "feddyn": {},
    "fedspeed": {},
    "fedsmoo": {},
    "tamuna": {},
    "diana": {},
    "cofig": {},  # DIANA-PP's updates with its own step size
    "diana_nastya": {},
    "frecon": {},
    "dgc": {},
    "onebit_adam": {"freeze_step": 1},  # e_i written from the compression stage on
    "ef21": {},  # g_i⁰ fills every row (EF21-PP, -BC, -W, RARE alike)
    "ef21_pp": {},
    "ef21_bc": {},
    "ef21_w": {},
    "ef21_rare": {},
    "econtrol": {},  # h_i⁰ fills every row, e_i starts at 0
    "mifa": {},
    "masha2": {},  # masha with error feedback
    "local_rmsprop": {"precond": "local"},  # D_i filled with 1 (every row written)
    "local_adam": {"precond": "local"},  # D_i start at 0
    "ef14": {},  # error_feedback(C)'s e_i
}


def mapped(state: Any) -> list[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return [state] if mapped_zero_pages(state) else []
    if isinstance(state, (tuple, list)):
        return [t for v in state for t in mapped(v)]
    if isinstance(state, dict):
        return [t for v in state.values() for t in mapped(v)]
    return []


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_algorithm_with_mapped_client_rows_resumes_bit_for_bit(
    tmp_path: Path, lazy: None, name: str
) -> None:
    """Every method, its per-client rows mapped zero pages (LAZY_ZERO_BYTES patched), 4
    clients a round of 300 (8 where the state holds none): the rows the page table finds are
    those a full read finds (no write path is missed, whichever code wrote them), the state
    round-trips bit for bit, and two more rounds from the loaded state and from the original
    give the same state."""
    n = 300 if name in LAZY_STATE else 8  # (the others' state is dense: test_faults' size)
    task = make_task(model="mlp", n=n, per_client=4)
    comp = "topk" if "topk" in dict.fromkeys(compatible(name)) else next(iter(compatible(name)))
    env = make_env(task, comp, {"ratio": 0.25}, participation=4 / n, batch_size=4)
    params = {**SWEEP_PARAMS.get(name, {"lr": 0.1}), **LAZY_STATE.get(name, {})}
    state, _, alg = run_rounds(name, params, env, 3)
    held = mapped(state)
    assert bool(held) == (name in LAZY_STATE)
    for rows in held:
        assert checkpoint.written_rows(rows).tolist() == full_scan(rows).tolist()
    back = save_and_load(tmp_path, state).state
    for a, b in zip(held, mapped(back), strict=True):
        assert same_bits(a, b)
    assert _same(back, state)
    for t in (4, 5):
        state, _ = alg.round(state, env, RoundRng(0, t))
        back, _ = alg.round(back, env, RoundRng(0, t))
    assert _same(back, state)


# the methods that honour `[compressor] error_feedback` (their uplink of model updates)
EF_METHODS = sorted(n for n in ALGORITHMS if ALGORITHMS[n].extra.get("error_feedback", True))


def recording(inner: Compressor, seen: set[int]) -> Compressor:
    """`inner`, noting the clients of every message it compresses in `seen`."""

    def compress(x: torch.Tensor, ids: torch.Tensor, state: Any, gen: torch.Generator) -> Any:
        seen.update(ids.tolist())
        return inner.compress(x, ids, state, gen)

    return inner._replace(compress=compress)


def ef_states(state: Any) -> list[EFState]:
    if isinstance(state, EFState):
        return [state]
    if isinstance(state, (tuple, list)):
        return [e for v in state for e in ef_states(v)]
    if isinstance(state, dict):
        return [e for v in state.values() for e in ef_states(v)]
    return []


def sparse_entries(meta: Any) -> list[list[int]]:
    """Every row-sparse entry `[n, index ref, rows ref]` of a checkpoint's JSON."""
    if isinstance(meta, dict):
        own = [meta["R"]] if "R" in meta else []
        return own + [e for v in meta.values() for e in sparse_entries(v)]
    if isinstance(meta, list):
        return [e for v in meta for e in sparse_entries(v)]
    return []


@pytest.mark.parametrize("name", EF_METHODS)
def test_every_method_with_error_feedback_stores_its_error_rows_row_sparse(
    tmp_path: Path, lazy: None, name: str
) -> None:
    """`[compressor] error_feedback = true` with TopK, 300 clients, 4 a round for 3 rounds: the
    e_i of error_feedback(C) are mapped zero pages (LAZY_ZERO_BYTES patched); the rows the page
    table finds are those a full read finds, and only clients that sent a message; the file
    stores those rows only (≤ the clients that sent), it round-trips bit for bit, and two more
    rounds from the loaded state and from the original give the same state."""
    n, seen = 300, set[int]()
    task = make_task(model="mlp", n=n, per_client=4)
    env = make_env(task, "topk", {"ratio": 0.25}, ef=True, participation=4 / n, batch_size=4)
    env = env._replace(uplink=recording(env.uplink, seen))
    params = {**SWEEP_PARAMS.get(name, {"lr": 0.1}), **LAZY_STATE.get(name, {})}
    state, _, alg = run_rounds(name, params, env, 3)
    (ef,) = ef_states(state)
    assert mapped_zero_pages(ef.e) and ef.e.shape == (n, task.d)
    written = checkpoint.written_rows(ef.e).tolist()
    assert 0 < len(written) <= len(seen) < n and set(written) <= seen
    assert written == full_scan(ef.e).tolist()
    back = save_and_load(tmp_path, state).state
    meta, tensors = stored(tmp_path)
    kept = [j for _, i, j in sparse_entries(meta["state"]) if tensors[i].tolist() == written]
    assert kept and all(tensors[j].shape == (len(written), task.d) for j in kept)  # e_i's rows
    (ef_back,) = ef_states(back)
    assert mapped_zero_pages(ef_back.e) and same_bits(ef_back.e, ef.e)
    assert _same(back, state)
    for t in (4, 5):
        state, _ = alg.round(state, env, RoundRng(0, t))
        back, _ = alg.round(back, env, RoundRng(0, t))
    assert _same(back, state)


GRID = """
[experiment]
name = "sparse"
seeds = [0]
rounds = 8
eval_every = 3
checkpoint_every = 2

[task]
dataset = "digits"
model = "mlp"
hidden = [16]
clients = 40

[algorithm]
name = "scaffold"
lr = 0.1
local_steps = 2
batch_size = 8
participation = 0.1
"""


def test_a_resumed_run_on_mapped_client_rows_gives_the_uninterrupted_numbers(
    tmp_path: Path, lazy: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SCAFFOLD over 40 clients, 10% a round, c_i mapped zero pages: interrupted in round 6,
    the checkpoint of round 4 stores at most the 16 rows written, and the resumed run ends
    with the numbers of a run never interrupted."""
    monkeypatch.setenv("FEDBENCH_CHECKPOINTS", str(tmp_path / "ckpt"))
    grid_path = write(tmp_path, GRID)
    ref, db = tmp_path / "ref.db", tmp_path / "resume.db"
    assert invoke("run", grid_path, "--db", ref).exit_code == 0
    (job,) = gridlib.load(grid_path).jobs
    with monkeypatch.context() as m:
        fail_in_round(m, job, KeyboardInterrupt(), at=6)
        assert invoke("run", grid_path, "--db", db).exit_code == 130
    raw = torch.load(tmp_path / "ckpt" / f"{job.key}.pt", weights_only=True)
    meta, tensors = json.loads(raw["meta"]), raw["tensors"]
    n, i, j = meta["state"]["v"][3]["R"]  # c_i stored row-sparse
    assert meta["round"] == 4 and n == 40 and 0 < tensors[i].numel() <= 4 * 4
    assert tensors[j].shape == (tensors[i].numel(), tensors[0].numel())
    with sqlite3.connect(db) as c:  # a sentinel in a round the resumed run must not redo
        c.execute("UPDATE metrics SET value = -1 WHERE round = 3 AND name = 'train_loss'")
    result = invoke("run", grid_path, "--db", db)
    assert result.exit_code == 0, result.output
    got, want = run_metrics(db, job.key), run_metrics(ref, job.key)
    assert got.pop((3, "train_loss")) == -1  # rounds up to the checkpoint were kept
    want.pop((3, "train_loss"))
    assert_same_numbers(got, want)
    assert rows_per_run(db)[job.key] == list(range(9))
