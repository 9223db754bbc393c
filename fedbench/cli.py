"""fedbench command line: wiring only (each command lives in fedbench/commands/).

A command's module is imported only when that command runs (or shows its own --help):
`fedbench --help` lists the commands from `COMMANDS` without importing any of them, so it
answers without loading torch, pandas or matplotlib (tests/test_cli_startup.py checks both
that and that the listing matches the commands' own docstrings).
"""

from __future__ import annotations

import importlib
import re
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
    one.command(name, cls=PlainCommand)(fn)
    return typer.main.get_command(one)  # a click command (typer's own click from typer 0.26)


# Typer (0.29) converts every parameter's value with a pydantic TypeAdapter: importing
# pydantic and building the adapters took ~0.25 s of `fedbench ls` (0.45 s in all). The plain
# values of our options (str, list[str], a decimal int or float, a default) are converted here
# as pydantic converts them; anything else (a Path, a bound, a parser, an unusual spelling)
# goes to typer's own coercion, built on first use, so its messages are unchanged.
_INT = re.compile(r"-?[0-9]{1,18}")
_FLOAT = re.compile(r"[-+]?([0-9]{1,18}(\.[0-9]{0,18})?|\.[0-9]{1,18})([eE][-+]?[0-9]{1,3})?")


def plain_value(annotation: Any, info: Any, value: Any) -> tuple[bool, Any]:
    """(True, what typer's coercion gives for `value`) when that is plain, else (False, None)."""
    if info.parser is not None:
        return False, None
    if annotation is str and type(value) is str:
        return True, value
    if annotation == list[str] and isinstance(value, (list, tuple)):
        if all(type(v) is str for v in value):
            return True, list(value)
        return False, None
    if annotation in (int, float) and (info.min, info.max, info.clamp) != (None, None, False):
        return False, None
    if annotation is int and type(value) is int:
        return True, value
    if annotation is int and type(value) is str and _INT.fullmatch(value):
        return True, int(value)
    if annotation is float and type(value) in (int, float):
        return True, float(value)
    if annotation is float and type(value) is str and _FLOAT.fullmatch(value):
        return True, float(value)
    return False, None


class PlainValues:
    """A command (or group) whose parameters, --help included, take `plain_values`."""

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:
            plain_values(option)
        return option


class PlainCommand(PlainValues, TyperCommand):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            plain_values(param)


def plain_values(param: Any) -> None:
    """Give a typer parameter the plain conversion of `plain_value` (no-op for a typer
    without the 0.29 coercion layer)."""
    try:
        from typer._coercion import RuntimeParam, TypeDescriptor, build_runtime_param
    except ImportError:
        return
    descriptor = getattr(param, "type_descriptor", None)
    if not isinstance(descriptor, TypeDescriptor) or descriptor.file_annotation is not None:
        return
    if getattr(param, "_runtime_param", False) is not None:
        return
    typed: TypeDescriptor = descriptor  # the closure below keeps its type

    class Plain(RuntimeParam):
        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            ok, out = plain_value(self.annotation, self.parameter_info, value)
            if ok:
                return out
            param._runtime_param = real = build_runtime_param(typed)
            return real._coerce_value(value, param=param, ctx=ctx)

    try:  # typer's private layer: any other shape of it leaves typer's own coercion
        param._runtime_param = Plain(typed.parameter_info, typed.annotation)
    except Exception:
        return


class LazyGroup(PlainValues, TyperGroup):
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
