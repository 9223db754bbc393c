"""The gradient-inversion probe: an uncompressed, noiseless message of a linear model leaks its
sample (high PSNR, label recovered); strong DP noise destroys the reconstruction."""

from __future__ import annotations

import math

import torch
from conftest import make_task

from fedbench.compressors import build_compressor
from fedbench.privacy.leakage import probe
from fedbench.seeding import generator


def test_probe_reconstructs_without_protection_and_fails_under_noise():
    task = make_task(model="logreg")
    model, data = task.model, task.data
    w = model.init(generator(0, 0, "init"))
    x, y = data.x[0].cpu(), data.y[0].cpu()
    rng = float(data.x.max() - data.x.min())
    classes = model.num_classes
    clear = probe(model, w, x, y, classes, rng, math.inf, 0.0, None, 300, seed=0)
    assert clear.label_ok and clear.psnr > 25, clear
    noisy = probe(model, w, x, y, classes, rng, 1.0, 10.0, None, 300, seed=0)
    assert noisy.psnr < clear.psnr - 10, (clear, noisy)
    topk = build_compressor("topk", {"ratio": 0.05}, w.numel())
    sparse = probe(model, w, x, y, classes, rng, math.inf, 0.0, topk, 300, seed=0)
    assert sparse.psnr < clear.psnr, (clear, sparse)
    assert torch.isfinite(torch.tensor([clear.mse, noisy.mse, sparse.mse])).all()


def test_probe_leakage_command_runs_as_a_group_subcommand() -> None:
    """`fedbench probe leakage` (a one-command group: it must stay a group under the lazy CLI)
    prints one row per compressor × σ."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "fedbench", "probe", "leakage", "--samples", "1", "--steps", "3",
         "--noise", "0", "--compressor", "identity,topk", "--format", "json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    import json

    rows = json.loads(out.stdout)
    assert [r["compressor"] for r in rows] == ["identity", "topk"]
