"""`fedbench probe leakage`: gradient inversion on one client's uplink message
(fedbench.privacy.leakage), with and without compression and DP."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from fedbench.commands.common import CommandError, one_line_errors

app = typer.Typer(
    help="Attacks on what a client's messages reveal.\n\n"
    "Example: fedbench probe leakage --compressor identity,topk --noise 0,0.1",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _group() -> None:
    """Attacks on what a client's messages reveal (a group even with one attack)."""


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CommandError(f"--{what} {text!r}: expected comma-separated numbers") from None


@app.command("leakage")
@one_line_errors
def leakage(
    dataset: Annotated[str, typer.Option(help="dataset (see `fedbench datasets`)")] = "digits",
    model: Annotated[str, typer.Option(help="model: logreg | mlp (small)")] = "logreg",
    compressors: Annotated[
        str, typer.Option("--compressor", help="comma-separated uplink compressors")
    ] = "identity,topk",
    ratio: Annotated[float, typer.Option(help="compressors' ratio (top-k, RandK, sketch)")] = 0.1,
    noise: Annotated[str, typer.Option(help="comma-separated noise multipliers σ")] = "0,0.01,0.1",
    clip: Annotated[float, typer.Option(help="clipping norm C (0 = no clipping)")] = 0.0,
    samples: Annotated[int, typer.Option(help="attacked samples (one client each)")] = 3,
    steps: Annotated[int, typer.Option(help="attack optimisation steps")] = 300,
    seed: Annotated[int, typer.Option(help="seed of the model, the noise and the attack")] = 0,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table or json")] = "table",
) -> None:
    """Reconstruct single training samples from their uplink gradient (DLG/iDLG with cosine
    matching) and report PSNR (higher = more leakage), MSE and label recovery per compressor
    and σ. The model is the run's initial model (seed), one sample per client.

    Example: fedbench probe leakage --compressor identity,topk,sketch --noise 0,0.1
    """
    import math

    import torch

    from fedbench import grid, seeding
    from fedbench.compressors import build_compressor
    from fedbench.data import load_federated
    from fedbench.models import build_model
    from fedbench.privacy.leakage import probe

    if fmt not in ("table", "json"):
        raise CommandError(f"--format {fmt!r}: allowed: table, json")
    sigmas = _floats(noise, "noise")
    cfg, _ = grid.resolve(
        {"task": {"dataset": dataset, "model": model}, "compressor": {"name": "identity"}}
    )
    t = cfg["task"]
    fd = load_federated(t, seed=0)
    net = build_model(t["model"], t, fd.input_shape, fd.num_classes, fd.binary)
    w = net.init(seeding.generator(seed, 0, seeding.INIT))
    x_all, y_all = torch.from_numpy(fd.x), torch.from_numpy(fd.y)
    value_range = float(x_all.max() - x_all.min()) or 1.0
    rows = []
    for name in [c.strip() for c in compressors.split(",") if c.strip()]:
        try:
            comp = (
                None if name == "identity" else build_compressor(name, {"ratio": ratio}, w.numel())
            )
        except KeyError:
            raise CommandError(f"--compressor {name!r}: unknown compressor") from None
        for sigma in sigmas:
            leaks = [
                probe(net, w, x_all[i], y_all[i], fd.num_classes, value_range,
                      clip if clip > 0 else math.inf, sigma, comp, steps, seed + i)
                for i in range(samples)
            ]  # fmt: skip
            rows.append(
                {
                    "compressor": name,
                    "sigma": sigma,
                    "psnr": sum(lk.psnr for lk in leaks) / len(leaks),
                    "mse": sum(lk.mse for lk in leaks) / len(leaks),
                    "labels": sum(lk.label_ok for lk in leaks) / len(leaks),
                }
            )
    if fmt == "json":
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    sys.stdout.write(f"{'compressor':<12} {'sigma':>8} {'psnr_db':>8} {'mse':>10} {'labels':>7}\n")
    for r in rows:
        sys.stdout.write(
            f"{r['compressor']:<12} {r['sigma']:>8g} {r['psnr']:>8.2f} {r['mse']:>10.4g} "
            f"{r['labels']:>7.2f}\n"
        )
