"""`fedbench prune GRID.toml`: delete the runs of a grid's experiment that the grid no longer
has (superseded by an edit of the grid), so reports show only the current configurations."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedbench.commands.common import (
    DbOption,
    check_experiment_owner,
    console,
    emit_rows,
    one_line_errors,
    open_store,
)


@one_line_errors
def prune(
    grid: Annotated[Path, typer.Argument(help="grid file (TOML)", show_default=False)],
    db: DbOption = None,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="delete them (without it: only list them)")
    ] = False,
) -> None:
    """List, then with --yes delete, the runs of the grid's experiment whose keys the grid no
    longer produces (and their metrics). Runs of other experiments, and of an experiment of
    the same name that belongs to another grid file, are never touched.

    Example: fedbench prune experiments/quickstart.toml --yes
    """
    from fedbench import grid as gridlib

    store = open_store(db, write=yes)  # a dry run writes nothing, not even a migration
    g = gridlib.load(grid)
    check_experiment_owner(store, g, grid)  # the experiment may be another grid file's
    keys = {j.key for j in g.jobs}
    runs = store.runs_frame(experiment=g.name)
    stale = runs[~runs["key"].isin(keys)] if len(runs) else runs
    if stale.empty:
        console.print(
            f"{g.name}: nothing to prune ({len(runs)} runs, all in {grid})", highlight=False
        )
        return
    rows = [
        {"id": int(r["run_id"]), "key": str(r["key"])[:12], "algorithm": r["algorithm"],
         "compressor": r["compressor"], "seed": int(r["seed"]), "status": r["status"]}
        for _, r in stale.iterrows()
    ]  # fmt: skip
    emit_rows(rows, "table", title=f"{len(rows)} of {len(runs)} runs of {g.name} not in {grid}")
    if not yes:
        console.print(
            f"dry run: nothing deleted; delete them with: fedbench prune {grid} --yes",
            highlight=False,
            markup=False,
        )
        return
    gone = store.delete_runs([int(i) for i in stale["run_id"]])
    console.print(f"deleted {gone} runs and their metrics", highlight=False)
