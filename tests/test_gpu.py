"""The CUDA path (issue 28): the same deterministic rounds on the CPU and on a GPU agree within
float tolerance, and a grid run with `--device cuda` stores every run's device as CUDA.

Marked `gpu`: `benchmarks/gpu_check.sh` runs them on a machine with a CUDA GPU; elsewhere
they skip with the reason (no CUDA device), never pass silently."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fedbench import grid, runner
from fedbench.cli import app
from fedbench.seeding import RoundRng

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="no CUDA device (torch.cuda.is_available() is False): the GPU path is checked "
        "by benchmarks/gpu_check.sh on a machine with one",
    ),
]

# Full local batches and every client each round: no random draw after the initial model, so
# the CPU and the GPU compute the same numbers up to float rounding (their generators differ).
DETERMINISTIC = """
[experiment]
rounds = 5
[task]
dataset = "digits"
model = "mlp"
hidden = [32]
clients = 10
[algorithm]
name = "{name}"
lr = 0.1
local_steps = 3
batch_size = "full"
participation = 1.0
"""


def final_params(name: str, device: torch.device, rounds: int = 5) -> torch.Tensor:
    (job,) = grid.parse(DETERMINISTIC.format(name=name), Path("gpu.toml")).jobs
    task, env, alg = runner.build(job, device)
    x0 = task.init_params(torch.Generator().manual_seed(0)).cpu().to(device)
    state = alg.init(x0, env, RoundRng(0, 0, device))
    for t in range(1, rounds + 1):
        state, _ = alg.round(state, env, RoundRng(0, t, device))
    return alg.params(state).cpu()


@pytest.mark.parametrize("name", ["fedavg", "scaffold", "fedprox"])
def test_cpu_and_cuda_agree_on_deterministic_rounds(name: str) -> None:
    cpu, gpu = final_params(name, torch.device("cpu")), final_params(name, torch.device("cuda"))
    assert gpu.dtype == cpu.dtype == torch.float32
    err = float((cpu - gpu).abs().max()) / max(float(cpu.abs().max()), 1e-12)
    print(f"{name}: max |cpu − cuda| / max |cpu| = {err:.2e}")
    assert torch.allclose(cpu, gpu, rtol=1e-4, atol=1e-5), err


def test_cuda_grid_stores_cuda_as_every_runs_device(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text(
        DETERMINISTIC.format(name="fedavg").replace("rounds = 5", "rounds = 5\nseeds = 3")
    )
    db = tmp_path / "r.db"
    out = CliRunner().invoke(
        app, ["run", str(path), "--db", str(db), "--device", "cuda", "--jobs-per-gpu", "2"]
    )
    assert out.exit_code == 0, out.output
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT status, device FROM runs").fetchall()
    assert len(rows) == 3 and all(s == "done" and d.startswith("cuda") for s, d in rows), rows


LAZY = DETERMINISTIC.replace(
    'dataset = "digits"\nmodel = "mlp"\nhidden = [32]\nclients = 10\n',
    'dataset = "synthetic"\ngenerator = 3\nmax_samples = 60\nmodel = "logreg"\nclients = 10\n',
)


def test_rows_computed_on_demand_reach_the_gpu_unchanged() -> None:
    """Synthetic generator 3 (samples computed when indexed): a CUDA index gives CUDA rows
    equal to the CPU's, and SCAFFOLD's deterministic rounds agree across devices."""
    (job,) = grid.parse(LAZY.format(name="scaffold"), Path("gpu.toml")).jobs
    fd = runner.load_dataset(job.config["task"])
    idx = torch.randint(0, fd.x.shape[0], (7, 3))
    on_gpu = fd.x.to(torch.device("cuda"))[idx.cuda()]
    assert on_gpu.device.type == "cuda"
    assert torch.equal(on_gpu.cpu(), fd.x.to(torch.device("cpu"))[idx])
    results = []
    for device in (torch.device("cpu"), torch.device("cuda")):
        task, env, alg = runner.build(job, device)
        state = alg.init(task.init_params(torch.Generator().manual_seed(0)).to(device), env,
                         RoundRng(0, 0, device))  # fmt: skip
        for t in range(1, 6):
            state, _ = alg.round(state, env, RoundRng(0, t, device))
        results.append(alg.params(state).cpu())
    assert torch.allclose(results[0], results[1], rtol=1e-4, atol=1e-5)
