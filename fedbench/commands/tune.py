"""`fedbench tune GRID.toml --space FIELD=RANGE ... --trials N --by val_accuracy`: Optuna
studies, one per cell of the grid, whose trials are ordinary fedbench runs (fedbench.tune)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedbench.commands.common import CommandError, DbOption, console, one_line_errors


@one_line_errors
def tune(
    grid: Annotated[Path, typer.Argument(help="grid file (TOML)", show_default=False)],
    space: Annotated[
        list[str],
        typer.Option(
            help='a searched field: "algorithm.lr=log(1e-3,1)", "=uniform(a,b)" or '
            '"algorithm.mu=[0.001,0.01,0.1]" (repeat for several)',
            show_default=False,
        ),
    ],
    trials: Annotated[int, typer.Option(help="complete + pruned trials per cell")] = 30,
    by: Annotated[
        str, typer.Option(help="val_accuracy | val_loss | val_perplexity | train_loss")
    ] = "val_accuracy",
    pruner: Annotated[str, typer.Option(help="none | median | hyperband")] = "median",
    db: DbOption = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    write: Annotated[
        Path | None, typer.Option(help="write a grid of each cell's best settings here")
    ] = None,
) -> None:
    """Tune hyperparameters per grid cell with Optuna; each trial is an ordinary run.

    Example: fedbench tune grid.toml --space "algorithm.lr=log(1e-3,1)" --trials 30
    """
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise CommandError("fedbench tune needs Optuna: pip install 'fedbench[tune]'") from None
    from fedbench import runner
    from fedbench import tune as tunelib

    try:
        dev = runner.resolve_device(device)
        tunelib.tune(grid, space, trials, by, pruner, db, dev, write, _say)
    except tunelib.TuneError as e:
        raise CommandError(str(e)) from None


def _say(message: str) -> None:
    console.print(message, highlight=False, markup=False, soft_wrap=True)
