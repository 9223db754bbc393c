"""Cross-device scale: `[experiment] eval_clients` and the memory estimate."""

from __future__ import annotations

from pathlib import Path

import torch
from typer.testing import CliRunner

from fedbench import grid, runner
from fedbench.cli import app
from fedbench.cohort import sample_cohort
from fedbench.memory import MemoryEstimate, data_bytes, memory_estimate
from fedbench.models import build_model
from fedbench.seeding import RoundRng
from fedbench.task import eval_sample

GRID = """
[experiment]
rounds = 1
{extra}
[task]
dataset = "synthetic"
clients = 40
max_samples = 60
model = "logreg"
[algorithm]
name = "scaffold"
participation = 0.1
"""


def job(extra: str = "", algorithm: str = "") -> grid.Job:
    """The grid's one job; `extra` lines go into [experiment], `algorithm` into [algorithm]."""
    text = (
        GRID.format(extra=extra).replace('name = "scaffold"\n', "")
        + (algorithm or 'name = "scaffold"')
        + "\n"
    )
    (j,) = grid.parse(text, Path("scale.toml")).jobs
    return j


def test_eval_clients_is_in_the_config_and_keys_only_when_set() -> None:
    plain, zero, five = job(), job("eval_clients = 0"), job("eval_clients = 5")
    assert plain.config["experiment"]["eval_clients"] == 0  # stated in every run's config
    assert five.config["experiment"]["eval_clients"] == 5
    assert plain.key == zero.key != five.key  # existing grids keep their keys


def test_runner_evaluates_the_seeded_sample() -> None:
    j = job("eval_clients = 5")
    task, _, _ = runner.build(j, torch.device("cpu"))
    want = eval_sample(40, 5, j.seed, torch.device("cpu"))
    assert task.eval_ids is not None and want is not None and torch.equal(task.eval_ids, want)
    w = torch.zeros(task.d)
    assert runner.evaluate(task, w)["train_loss"] == task.sampled_train_loss(w, want)
    full, _, _ = runner.build(job(), torch.device("cpu"))
    assert full.eval_ids is None


def estimate_of(j: grid.Job) -> MemoryEstimate:
    t = j.config["task"]
    fd = runner.load_dataset(t)
    model = build_model(t["model"], t, fd.input_shape, fd.num_classes, fd.binary)
    return memory_estimate(j.config, model, fd.x, fd.y, fd.x_test, fd.y_test, fd.counts)


def test_memory_estimate_counts_data_and_the_methods_client_rows() -> None:
    """Data bytes are the arrays the task puts on the device; SCAFFOLD keeps one [d] control
    variate per client (4 bytes a float in float32, 2 in float16), FedAvg none."""
    j = job()
    fd = runner.load_dataset(j.config["task"])
    task, _, _ = runner.build(j, torch.device("cpu"))
    est = estimate_of(j)
    d = task.data
    on_device = sum(
        t.nbytes for t in (d.x, d.y, d.offsets, d.counts, d.client_of, d.x_test, d.y_test)
    )
    assert est.clients == 40 and est.data_bytes == on_device == data_bytes(
        fd.x, fd.y, fd.x_test, fd.y_test, 40
    )
    assert est.state_bytes_per_client == 4 * task.d
    half = estimate_of(job(algorithm='name = "scaffold"\nclient_state = "float16"'))
    assert half.state_bytes_per_client == 2 * task.d and half.data_bytes == est.data_bytes
    fedavg = estimate_of(job(algorithm='name = "fedavg"'))
    assert fedavg.state_bytes_per_client == 0
    assert est.total_bytes == est.data_bytes + 40 * 4 * task.d + est.cohort_bytes


def test_validate_prints_the_estimate(tmp_path: Path) -> None:
    path = tmp_path / "scale.toml"
    path.write_text(GRID.format(extra=""))
    out = CliRunner().invoke(app, ["validate", str(path)])
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())  # the console wraps long lines
    assert text.count("memory estimate") == 1
    assert "memory estimate, scaffold (float32 state), 40 clients: data" in text
    assert "per-client state 2.4 KiB × 40 = 95.3 KiB" in text  # d = 610 floats of 4 bytes


# the methods whose duals / shifts / errors / momenta / estimators became client rows: their
# [n, d] fields, and the params that make a round write them (1-bit Adam writes e_i from its
# compression stage on); the EF21 family's g_i⁰ and EControl's h_i⁰ fill every row at init
ROW_FIELDS = {
    "feddyn": (("grad_i",), ""),
    "fedspeed": (("g_hat",), ""),
    "diana": (("h_i",), ""),
    "cofig": (("h_i",), ""),
    "diana_nastya": (("h_i",), ""),
    "frecon": (("h_i",), ""),
    "dgc": (("u", "v"), ""),
    "onebit_adam": (("e",), "freeze_step = 1"),
    "ef21": (("g_i",), ""),
    "ef21_pp": (("g_i",), ""),
    "ef21_bc": (("g_i",), ""),
    "ef21_w": (("g_i",), ""),
    "ef21_rare": (("g_i",), "lr = 0.1"),  # its theory step needs a linear model
    "econtrol": (("h_i", "e_i"), 'eta = 0.2\n[compressor]\nname = "topk"'),  # e_i ≠ 0
}


def test_shift_and_error_methods_keep_their_rows_in_the_client_state_dtype() -> None:
    """FedDyn, FedSpeed, DIANA (and COFIG, DIANA-NASTYA, FRECON), DGC, 1-bit Adam, the EF21
    family and EControl: `client_state = "float16"` halves each [n, d] field's share of the
    estimate, the rows are stored in float16, and a round changes only its cohort's rows (4 of
    40 clients); rows start at zero but for the dense starts g_i⁰ / h_i⁰."""
    for name, (fields, params) in ROW_FIELDS.items():
        lines = f'name = "{name}"\n{params}'
        full = estimate_of(job(algorithm=lines))
        half_job = job(algorithm=f'client_state = "float16"\n{lines}')
        half = estimate_of(half_job)
        task, env, alg = runner.build(half_job, torch.device("cpu"))
        rows_bytes = len(fields) * 4 * task.d  # float32 bytes per client of the [n, d] fields
        assert full.state_bytes_per_client - half.state_bytes_per_client == rows_bytes // 2, name
        s = alg.init(task.init_params(torch.Generator().manual_seed(0)), env, RoundRng(0, 0))
        last = 2 if name == "onebit_adam" else 1  # its round 0 is the full-precision warm-up
        for t in range(last - 1):
            s, _ = alg.round(s, env, RoundRng(0, t + 1))
        before = [getattr(s, field).clone() for field in fields]
        s, _ = alg.round(s, env, RoundRng(0, last))
        cohort = set(sample_cohort(env, RoundRng(0, last)).tolist())
        assert len(cohort) == 4
        for field, old in zip(fields, before, strict=True):
            rows = getattr(s, field)
            assert rows.dtype == torch.float16 and rows.shape == (40, task.d), (name, field)
            filled = field == "g_i" or (name, field) == ("econtrol", "h_i")  # g_i⁰, h_i⁰
            assert bool(old.any()) == filled, (name, field)  # else zero until first sampled
            written = set(rows.ne(old).any(1).nonzero().flatten().tolist())
            assert written and written <= cohort, (name, field)
