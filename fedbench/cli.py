"""fedbench command line: wiring only (each command lives in fedbench/commands/).

A command's module is imported only when that command runs (or shows its own --help):
`fedbench --help` lists the commands from `COMMANDS` without importing any of them, so it
answers without loading torch, pandas or matplotlib (tests/test_cli_startup.py checks both
that and that the listing matches the commands' own docstrings).
"""

from __future__ import annotations

import importlib
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

# name -> (module in fedbench.commands, its function (or its typer.Typer app, for a command
# group), the first sentence of its docstring (a group: of its app's help))
COMMANDS: dict[str, tuple[str, str, str]] = {
    "run": ("run", "run", "Run every job of a grid that is not done yet; results stream into "
            "the database."),
    "report": ("report", "report", "Table of mean ± std over seeds per configuration, "
               "comparison plots and an HTML page."),
    "ls": ("ls", "ls", "List runs with their status, rounds and final accuracy (or "
           "experiments with --experiments)."),
    "show": ("show", "show", "Show a run: status, error, resolved configuration and final "
             "and best metrics (with --partition: the heterogeneity of its data split, rebuilt "
             "from the configuration)."),
    "validate": ("validate", "validate", "Check a grid (names, types, ranges, algorithm × "
                 "compressor, data) and list its jobs."),
    "algorithms": ("catalog", "algorithms", "List the algorithms, their papers and parameters "
                   "([algorithm] fields)."),
    "compressors": ("catalog", "compressors", "List the compressors, what they guarantee and "
                    "their parameters ([compressor] fields)."),
    "datasets": ("catalog", "datasets", "List datasets, partitions and models with their "
                 "parameters ([task] fields)."),
    "export": ("export", "export", "Write database tables, or one experiment's tidy frame, as "
               "CSV or Parquet files (Parquet needs pyarrow)."),
    "prune": ("prune", "prune", "List, then with --yes delete, the runs of the grid's "
              "experiment whose keys the grid no longer produces (and their metrics)."),
    "data": ("data", "app", "Download file datasets once into a cache directory "
             "($FEDBENCH_DATA, else ~/.cache/fedbench/data); grids then name them without a "
             "path."),
    "probe": ("probe", "app", "Attacks on what a client's messages reveal."),
    "tune": ("tune", "tune", "Tune hyperparameters per grid cell with Optuna; each trial is an "
             "ordinary run."),
    "check": ("check", "check", "Conformance report of an algorithm or compressor, built-in "
              "or plugin."),
    "new": ("new", "app", "Write a method from a template: plugin, test file and grid."),
}  # fmt: skip


def load_command(name: str) -> Any:
    """The click command of `name`, importing its module."""
    module, function, _ = COMMANDS[name]
    fn = getattr(importlib.import_module(f"fedbench.commands.{module}"), function)
    if isinstance(fn, typer.Typer):  # a command group (`fedbench data ...`): its own app
        group = typer.main.get_command(fn)
        group.name = name
        return group
    one = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
    one.command(name)(fn)
    return typer.main.get_command(one)  # a click command (typer's own click from typer 0.26)


class LazyGroup(TyperGroup):
    """The top-level group: commands are imported on first use."""

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in COMMANDS:
            return None
        if cmd_name not in _loaded:
            _loaded[cmd_name] = load_command(cmd_name)
        return _loaded[cmd_name]

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        """Click's listing, from the summaries in `COMMANDS` (no command is imported)."""
        limit = formatter.width - 6 - max(map(len, COMMANDS))
        rows = [
            (name, TyperCommand(name, help=summary).get_short_help_str(limit))
            for name, (_, _, summary) in COMMANDS.items()
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


app = typer.Typer(
    name="fedbench",
    cls=LazyGroup,
    help="Benchmark communication-efficient federated optimisation: "
    "grids in, results database, plots out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


_loaded: dict[str, Any] = {}  # name -> the real command, once imported


@app.callback()
def _root() -> None:
    pass


def _placeholder(name: str) -> Any:
    def command() -> None:
        """Replaced by the real command (LazyGroup.get_command) before it can run."""
        raise RuntimeError(f"fedbench {name}: the lazy command was not loaded")

    return command


# Registered under their names and summaries so that `app.registered_commands` lists them;
# LazyGroup.get_command serves the real command (with its options) in their place.
for _name, (_, _, _summary) in COMMANDS.items():
    app.command(_name, help=_summary)(_placeholder(_name))


def main() -> None:
    app()
