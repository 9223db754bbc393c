"""Stateful compressors' per-client rows (error feedback's e_i, PowerSGD's Q) are
`fedbench.rows.state_rows`: mapped zero pages on the host (from LAZY_ZERO_BYTES up), with the
numbers of dense zeros bit for bit, and memory only for the rows written."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_env, make_task, run_rounds
from test_cli import invoke, run_metrics, write
from test_faults import _same

from fedbench import grid as gridlib
from fedbench import rows as rowslib
from fedbench.compressors import build_compressor, error_feedback
from fedbench.compressors import powersgd as powersgd_module
from fedbench.rows import mapped_zero_pages
from fedbench.seeding import generator

CPU = torch.device("cpu")
# the module (the package's `error_feedback` is the function of the same name)
ef_module = importlib.import_module("fedbench.compressors.error_feedback")


@pytest.fixture
def lazy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every host state, however small, mapped zero pages (the 10⁶-client path)."""
    monkeypatch.setattr(rowslib, "LAZY_ZERO_BYTES", 1)


def dense(shape: tuple[int, int], dtype: torch.dtype, device: torch.device, budget: float) -> Any:
    """The allocation before state_rows: torch.zeros on the run's device."""
    return torch.zeros(shape, dtype=dtype, device=device)


def test_error_feedback_and_powersgd_rows_are_mapped_zero_pages(lazy: None) -> None:
    shapes = ((6, 5), (6,))
    topk = build_compressor("topk", {"ratio": 0.2}, 36, shapes)
    e = error_feedback(topk).init(50, 36, CPU).e
    assert mapped_zero_pages(e) and e.shape == (50, 36) and e.dtype == torch.float32
    assert not e.any()
    psgd = build_compressor("powersgd", {"rank": 2}, 36, shapes).init(50, 36, CPU)
    assert mapped_zero_pages(psgd.Q) and psgd.Q.shape == (50, 5 * 2)
    assert psgd.started.shape == (50,) and not psgd.started.any()
    # the privacy wrapper's own error rows (error feedback inside, before the noise)
    from fedbench.privacy.config import PrivacyConfig
    from fedbench.privacy.dp import private

    config = PrivacyConfig(1.0, 0.5, 1e-5, "central", False, 0.5, 0.2, "rdp", False, 32)
    dp = private(topk, config, error_feedback=True)
    e = dp.init(50, 36, CPU).e
    assert e is not None and mapped_zero_pages(e) and not e.any()


def test_below_the_threshold_they_are_plain_zeros() -> None:
    e = error_feedback(build_compressor("topk", {}, 36)).init(50, 36, CPU).e
    assert not mapped_zero_pages(e) and not e.any()


def test_on_an_accelerator_the_rows_stay_there_when_they_fit_the_budget(
    lazy: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As an algorithm's client_rows: on the device within FEDBENCH_MEMORY_GB (what a run's
    Task.memory_bytes is), else host memory (mapped zero pages), PowerSGD's flags beside its
    Q ("meta" stands in for CUDA)."""
    meta, shapes = torch.device("meta"), ((6, 5), (6,))
    ef = error_feedback(build_compressor("topk", {"ratio": 0.2}, 36, shapes))
    psgd = build_compressor("powersgd", {"rank": 2}, 36, shapes)
    monkeypatch.setenv("FEDBENCH_MEMORY_GB", "1")
    assert ef.init(50, 36, meta).e.device == meta
    s = psgd.init(50, 36, meta)
    assert s.Q.device == meta and s.started.device == meta
    monkeypatch.setenv("FEDBENCH_MEMORY_GB", str(50 * 12 * 4 / 2**30))  # 50 × 12 floats
    e = ef.init(50, 36, meta).e
    assert e.device == CPU and mapped_zero_pages(e)
    s = psgd.init(50, 36, meta)  # 50 × 10 floats: the device
    assert s.Q.device == meta and s.started.device == meta
    monkeypatch.setenv("FEDBENCH_MEMORY_GB", str(50 * 4 / 2**30))
    s = psgd.init(50, 36, meta)
    assert mapped_zero_pages(s.Q) and s.started.device == CPU


@pytest.mark.parametrize(("comp", "params"), [("topk", {"ratio": 0.1}), ("powersgd", {"rank": 1})])
def test_mapped_rows_give_the_numbers_of_dense_ones_bit_for_bit(
    lazy: None, monkeypatch: pytest.MonkeyPatch, comp: str, params: dict[str, Any]
) -> None:
    """FedAvg with error feedback, 4 of 60 clients a round, 5 rounds: the model, the logs
    and every state row are those of the dense allocation, bit for bit."""

    def run() -> tuple[Any, list[Any]]:
        task = make_task(model="mlp", n=60, per_client=4)
        env = make_env(task, comp, params, ef=True, participation=4 / 60, batch_size=4)
        state, logs, _ = run_rounds("fedavg", {"lr": 0.1, "local_steps": 2}, env, 5)
        return state, logs

    lazy_state, lazy_logs = run()
    assert mapped_zero_pages(lazy_state.up.e)
    assert comp != "powersgd" or mapped_zero_pages(lazy_state.up.inner.Q)
    with monkeypatch.context() as m:
        m.setattr(ef_module, "state_rows", dense)
        m.setattr(powersgd_module, "state_rows", dense)
        dense_state, dense_logs = run()
    assert not mapped_zero_pages(dense_state.up.e)
    assert _same(lazy_state, dense_state) and _same(lazy_logs, dense_logs)
    assert torch.equal(lazy_state.x.view(torch.int32), dense_state.x.view(torch.int32))


GRID = """
[experiment]
name = "ef_rows"
seeds = [0]
rounds = 4
eval_every = 1

[task]
dataset = "digits"
model = "mlp"
hidden = [16]
clients = 40

[algorithm]
name = "fedavg"
lr = 0.1
local_steps = 2
batch_size = 8
participation = 0.1

[compressor]
name = "topk"
ratio = 0.1
error_feedback = true
"""


def test_a_grid_run_on_mapped_error_rows_gives_the_dense_numbers(
    tmp_path: Path, lazy: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`fedbench run` of FedAvg + TopK with error feedback, 40 clients at 10%: its e_i are
    mapped zero pages, and every metric of every round equals that of a run on the dense
    allocation, exactly."""
    grid_path = write(tmp_path, GRID)
    (job,) = gridlib.load(grid_path).jobs
    made: list[bool] = []

    def spy(shape: tuple[int, int], dtype: torch.dtype, device: torch.device, b: float) -> Any:
        rows = rowslib.state_rows(shape, dtype, device, b)
        made.append(mapped_zero_pages(rows))
        return rows

    with monkeypatch.context() as m:
        m.setattr(ef_module, "state_rows", spy)
        result = invoke("run", grid_path, "--db", tmp_path / "lazy.db")
    assert result.exit_code == 0, result.output
    assert made and all(made)
    with monkeypatch.context() as m:
        m.setattr(ef_module, "state_rows", dense)
        result = invoke("run", grid_path, "--db", tmp_path / "dense.db")
    assert result.exit_code == 0, result.output
    got, want = (
        run_metrics(tmp_path / "lazy.db", job.key),
        run_metrics(tmp_path / "dense.db", job.key),
    )
    assert got == want and (4, "train_loss") in got


def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
def test_error_rows_of_100_000_clients_cost_only_the_rows_written() -> None:
    """n = 10⁵, d = 4,554 (the cross-device MLP): dense zeros would be 1.8 GB resident before
    the first round; the mapped rows cost nothing until written, and a cohort of 200 (its
    working copies included) writes its 200 rows (3.6 MB)."""
    n, d, m = 100_000, 4_554, 200
    comp = error_feedback(build_compressor("topk", {"ratio": 0.01}, d))
    before = rss_bytes()
    state = comp.init(n, d, CPU)
    assert mapped_zero_pages(state.e) and state.e.shape == (n, d)
    assert rss_bytes() - before < 100 * 2**20  # dense: n·d·4 = 1.8 GB
    gen = generator(0, 1, "uplink")
    ids = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:m]
    out, state = comp.compress(torch.randn(m, d, generator=gen), ids, state, gen)
    assert out.value.shape == (m, d) and mapped_zero_pages(state.e)
    assert int(state.e[ids].ne(0).any(1).sum()) == m
    assert rss_bytes() - before < 100 * 2**20  # m·d·4 = 3.6 MB written, not 1.8 GB
