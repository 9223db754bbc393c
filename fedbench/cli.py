"""fedbench command line: wiring only (each command lives in fedbench/commands/)."""

from __future__ import annotations

import typer

from fedbench.commands import (
    catalog,
    data,
    export,
    ls,
    probe,
    prune,
    report,
    run,
    show,
    validate,
)

app = typer.Typer(
    name="fedbench",
    help="Benchmark communication-efficient federated optimisation: "
    "grids in, results database, plots out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.command("run")(run.run)
app.command("report")(report.report)
app.command("ls")(ls.ls)
app.command("show")(show.show)
app.command("validate")(validate.validate)
app.command("algorithms")(catalog.algorithms)
app.command("compressors")(catalog.compressors)
app.command("datasets")(catalog.datasets)
app.command("export")(export.export)
app.command("prune")(prune.prune)
app.add_typer(data.app, name="data")
app.add_typer(probe.app, name="probe")


def main() -> None:
    app()
