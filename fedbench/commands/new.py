"""`fedbench new algorithm NAME`: a new method from a template, ready to check, test and run.

Writes three files into a directory: NAME.py (the plugin: a commented method in the paper
notation of the built-ins, importing only `fedbench.api`), test_NAME.py (its pytest file) and
NAME.toml (a one-job grid naming the plugin in `[experiment] plugins`). Nothing is written
when one of them exists, the name is taken, or it is not a usable identifier.
"""

from __future__ import annotations

import contextlib
import keyword
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated

import typer

from fedbench.commands.common import CommandError, console, one_line_errors

app = typer.Typer(
    help="Write a method from a template: plugin, test file and grid.\n\n"
    "Example: fedbench new algorithm my_alg --like scaffold --dir methods",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)


@app.callback()
def _group() -> None:
    """A group even with one command (`fedbench new algorithm ...`; more kinds may follow)."""


# --like: the template and the compressor of its grid (EF21 and SCAFFOLD need a contractive one)
LIKE = {"fedavg": "identity", "ef21": "topk", "scaffold": "topk"}
NAME = re.compile(r"[a-z_][a-z0-9_]*\Z")


@dataclass(frozen=True)
class Written:
    plugin: Path
    test: Path
    grid: Path


def camel(name: str) -> str:
    """my_alg -> MyAlg (its state's class name)."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_")) or "Method"


def template(name: str) -> str:
    return resources.files("fedbench.templates").joinpath(name).read_text(encoding="utf-8")


def fill(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def name_problem(name: str) -> str | None:
    """Why `name` cannot name a new algorithm (None when it can)."""
    import importlib.util

    from fedbench import plugins
    from fedbench.algorithms import ALGORITHMS
    from fedbench.compressors import COMPRESSORS

    # installed packages' components (entry points) count as taken names too; a broken
    # installed plugin is reported where it is used, not here
    with contextlib.suppress(plugins.PluginError):
        plugins.load_all([], ".")
    if not NAME.match(name) or keyword.iskeyword(name):
        return "not a valid name; allowed: a lowercase Python identifier, e.g. my_alg"
    if name in ALGORITHMS or name in COMPRESSORS:
        kind = "an algorithm" if name in ALGORITHMS else "a compressor"
        return f"already {kind} (fedbench algorithms / compressors list them); pick another name"
    if name.startswith("test"):
        return "pytest would collect NAME.py as a test file; pick a name not starting with 'test'"
    try:
        taken = importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        taken = False
    if taken:  # the test file's directory goes on sys.path: NAME.py would shadow it
        return f"an importable module is already called {name}; pick another name"
    return None


def new_algorithm(name: str, like: str, where: Path) -> Written:
    """Write the three files (CommandError, one line, before anything is written)."""
    if like not in LIKE:
        raise CommandError(f"--like {like}: allowed: {', '.join(LIKE)}")
    problem = name_problem(name)
    if problem:
        raise CommandError(f"{name}: {problem}")
    out = Written(where / f"{name}.py", where / f"test_{name}.py", where / f"{name}.toml")
    for path in (out.plugin, out.test, out.grid):
        if path.exists():
            raise CommandError(f"{path}: already exists; nothing written (remove it or use --dir)")
    values = {
        "name": name,
        "Name": camel(name),
        "plugin_file": out.plugin.name,
        "test_file": out.test.name,
        "grid_file": out.grid.name,
        "compressor": LIKE[like],
    }
    texts = {
        out.plugin: fill(template(f"algorithm_{like}.py.tmpl"), values),
        out.test: fill(template("test_algorithm.py.tmpl"), values),
        out.grid: fill(template("grid.toml.tmpl"), values),
    }
    try:
        where.mkdir(parents=True, exist_ok=True)
        for path, text in texts.items():
            with path.open("x", encoding="utf-8") as f:  # "x": never overwrite
                f.write(text)
    except OSError as e:
        raise CommandError(f"{where}: cannot write the files ({e.strerror or e})") from None
    return out


@app.command("algorithm")
@one_line_errors
def algorithm(
    name: Annotated[str, typer.Argument(help="its name in grids: a lowercase identifier")],
    like: Annotated[
        str, typer.Option("--like", help="the template: fedavg | ef21 | scaffold")
    ] = "fedavg",
    dir: Annotated[
        Path, typer.Option("--dir", help="directory to write NAME.py, test_NAME.py, NAME.toml")
    ] = Path(),
) -> None:
    """Write NAME.py (a plugin method modelled on a built-in), test_NAME.py and NAME.toml.

    Example: fedbench new algorithm my_alg --like scaffold --dir methods
    """
    out = new_algorithm(name, like, dir)
    for path in (out.plugin, out.test, out.grid):
        console.print(f"wrote {path}", highlight=False, markup=False)
    steps = [
        f"fedbench check {name} --plugin {out.plugin}",
        f"pytest {out.test}",
        f"fedbench validate {out.grid}",
        f"fedbench run {out.grid}",
        f"fedbench report --experiment {name}",
    ]
    console.print("next: " + "; ".join(steps), highlight=False, markup=False, soft_wrap=True)
