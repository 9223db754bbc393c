"""Plugins: algorithms, compressors, datasets, partitions and models from outside fedbench.

A grid names them in `[experiment] plugins = ["methods/my_alg.py", "mypkg.fedstuff"]` (files
relative to the grid file, or importable module names); an installed package may expose the
entry-point group `fedbench.plugins` (each entry a module). A plugin registers components
exactly as the built-ins do (`ALGORITHMS.add(Component(...))`), so they validate, list and run
like built-ins.

Why the bookkeeping here:
- a job that uses a plugin component carries `config["plugins"] = {file or module: sha256}`:
  its key changes when (and only when) the source that defines its components changes, the
  run records where its method came from, and a pool or Ray worker imports the same plugins
  before building the job (`ensure`). Jobs using only built-ins get no such section, so every
  existing key is unchanged.
- loading the same unchanged file again (two grids in one process) is a no-op; an edited file
  replaces the components it registered before.
- every failure (missing file, import error, a name clash with a built-in, a plugin that
  registers nothing) is one line naming the file, raised before anything runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import sys
import traceback
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedbench.params import Registry

ENTRY_POINT_GROUP = "fedbench.plugins"
CONFIG_SECTION = "plugins"  # the job config section {file or module: sha256}


class PluginError(ValueError):
    """Plugins that cannot load; `problems` holds one line per problem, each naming its file."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Plugin:
    """One loaded plugin: `ref` is its absolute file path or module name."""

    ref: str
    sha256: str  # of its source file's bytes, 16 hex digits
    components: tuple[tuple[str, str], ...]  # (registry.what, name) it registered
    module: str = ""  # the module its code runs as (checkpoints may hold its NamedTuples)

    def describe(self) -> str:
        names = ", ".join(f"{what} {name}" for what, name in self.components)
        return f"plugin {self.ref} (sha256 {self.sha256}): {names}"


_loaded: dict[str, Plugin] = {}  # ref -> plugin, for this process
_owner: dict[tuple[str, str], Plugin] = {}  # (registry.what, name) -> the plugin defining it
_state = {"allowed": True}


def registries() -> list[Registry]:
    """Every registry a plugin may add to (imported here: they import torch)."""
    from fedbench.algorithms import ALGORITHMS
    from fedbench.compressors import COMPRESSORS
    from fedbench.data import DATASETS, PARTITIONS
    from fedbench.models import MODELS

    return [ALGORITHMS, COMPRESSORS, DATASETS, PARTITIONS, MODELS]


def forbid() -> None:
    """`--no-plugins`: refuse every grid that names a plugin, and skip entry points."""
    _state["allowed"] = False


def source_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _locate(spec: str, base: Path) -> tuple[str, Path, str]:
    """(ref, source file, what to say on a problem) of a spec: a file path (has a `/` or ends
    in .py) resolved against `base`, or a module name."""
    if spec.endswith(".py") or "/" in spec or "\\" in spec:
        path = (base / spec).resolve()
        if not path.is_file():
            raise PluginError([f"{path}: plugin file not found (named as {spec!r})"])
        return str(path), path, str(path)
    try:
        found = importlib.util.find_spec(spec)
    except (ImportError, ValueError) as e:
        raise PluginError([f"plugin module {spec!r}: cannot be found ({e})"]) from None
    if found is None or not found.origin or not Path(found.origin).is_file():
        raise PluginError(
            [f"plugin module {spec!r}: no such importable module (a path needs a '/' or .py)"]
        )
    return spec, Path(found.origin), f"plugin module {spec} ({found.origin})"


def _names() -> dict[str, set[str]]:
    return {reg.what: set(reg) for reg in registries()}


def _forget(plugin: Plugin) -> None:
    regs = {reg.what: reg for reg in registries()}
    for what, name in plugin.components:
        regs[what].remove(name)
        _owner.pop((what, name), None)
    _loaded.pop(plugin.ref, None)


def _error_line(where: str, err: BaseException) -> str:
    """One line for an exception raised while importing a plugin, with its line number there."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if f.filename == where]
    at = f" (line {frames[-1].lineno})" if frames else ""
    if isinstance(err, SyntaxError):
        at = f" (line {err.lineno})"
    msg = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}{at}: {msg}"


def _execute(ref: str, path: Path, again: bool) -> None:
    """Import the plugin's code (a file under a private module name)."""
    if ref != str(path):  # a module name: imported as such (reloaded after an edit)
        if again and ref in sys.modules:
            importlib.reload(sys.modules[ref])
        else:
            importlib.import_module(ref)
        return
    name = module_name(ref)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path} as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look classes up here
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise


def module_name(ref: str) -> str:
    """The module a plugin runs as: its own name, or for a file a private name derived from its
    path (the same in every process, so a worker reads a checkpoint the launcher wrote)."""
    if not ref.endswith((".py", ".pyw")):
        return ref
    return "fedbench_plugin_" + hashlib.sha256(ref.encode()).hexdigest()[:12]


def owns_module(module: str) -> bool:
    """Whether `module` is a loaded plugin's (fedbench.checkpoint restores its NamedTuples)."""
    return any(module == p.module or module.startswith(p.module + ".") for p in _loaded.values())


def load(spec: str, base: Path | str = ".") -> Plugin:
    """Load one plugin (idempotent while its source is unchanged); PluginError on a problem."""
    ref, path, where = _locate(spec, Path(base))
    sha = source_hash(path)
    old = _loaded.get(ref)
    if old is not None and old.sha256 == sha:
        return old
    if old is not None:  # edited since: its components are replaced
        _forget(old)
    regs = {reg.what: reg for reg in registries()}
    before = _names()
    try:
        _execute(ref, path, old is not None)
    except KeyError as e:  # Registry.add: the name is taken
        _rollback(before, regs)
        clash = str(e.args[0]) if e.args else str(e)
        raise PluginError([f"{where}: {clash.replace('registered twice', 'is already registered')}"
                           "; a plugin cannot replace a built-in or another plugin's component, "
                           "rename it"]) from None  # fmt: skip
    except (Exception, SystemExit) as e:
        _rollback(before, regs)
        src = str(path)
        raise PluginError([f"{where}: import failed: {_error_line(src, e)}"]) from None
    after = _names()
    added = tuple((w, n) for w in regs for n in sorted(after[w] - before[w]))
    if not added and ref in sys.modules and old is None:  # a module imported before fedbench
        added = _owned_by_module(ref, regs)
    if not added:
        raise PluginError(
            [
                f"{where}: registers no component; a plugin adds at least one, e.g. "
                "ALGORITHMS.add(Component(...)) (algorithms, compressors, datasets, "
                "partitions, models)"
            ]
        )
    plugin = Plugin(ref, sha, added, module_name(ref))
    for what, name in added:
        reg = regs[what]
        component = reg[name]
        reg.remove(name)
        reg.add(dataclasses.replace(component, source=ref))
        _owner[(what, name)] = plugin
    _loaded[ref] = plugin
    return plugin


def _owned_by_module(module: str, regs: Mapping[str, Registry]) -> tuple[tuple[str, str], ...]:
    """Components whose factory lives in `module` (a plugin module imported before fedbench
    loaded it: its registrations happened then)."""
    return tuple(
        (w, n)
        for w, reg in regs.items()
        for n in reg
        if getattr(reg[n].build, "__module__", "") == module and not reg[n].source
    )


def _rollback(before: Mapping[str, set[str]], regs: Mapping[str, Registry]) -> None:
    """Remove what a failed plugin registered before failing."""
    for what, reg in regs.items():
        for name in set(reg) - before[what]:
            reg.remove(name)


def load_all(specs: Iterable[str], base: Path | str, where: str = "") -> list[Plugin]:
    """Load every plugin of a grid and the installed entry points; every problem is reported
    (PluginError, one line each), `where` prefixing the lines about the grid itself."""
    specs = list(specs)
    if specs and not _state["allowed"]:
        raise PluginError(
            [f"{where}[experiment] plugins = {specs}: --no-plugins refuses grids that import code"]
        )
    problems: list[str] = []
    out: list[Plugin] = []
    for spec in [*entry_point_modules(), *specs]:
        try:
            out.append(load(spec, base))
        except PluginError as e:
            problems += e.problems
    if problems:
        raise PluginError(problems)
    return list({p.ref: p for p in out}.values())


def entry_point_modules() -> list[str]:
    """The modules installed packages expose under the `fedbench.plugins` entry-point group."""
    if not _state["allowed"]:
        return []
    from importlib.metadata import entry_points

    return sorted({ep.module for ep in entry_points(group=ENTRY_POINT_GROUP)})


def for_grid(raw: Mapping[str, Any], path: Path) -> list[Plugin]:
    """The plugins a parsed grid names in [experiment] plugins, loaded; PluginError lines name
    the grid file for a malformed list and the plugin file for a plugin that fails."""
    exp = raw.get("experiment", {})
    specs = exp.get("plugins", []) if isinstance(exp, Mapping) else []
    if not isinstance(specs, list) or not all(isinstance(s, str) and s for s in specs):
        raise PluginError(
            [
                f"{path}: [experiment] plugins = {specs!r}: allowed: a list of plugin files "
                '(relative to the grid file) or module names, e.g. ["methods/my_alg.py"]'
            ]
        )
    return load_all(specs, path.parent, f"{path}: ")


def stamp(config: MutableMapping[str, Any]) -> None:
    """Add the `plugins` section {file or module: sha256} to a resolved job config that uses a
    plugin component (nothing otherwise: its key stays what it was)."""
    used = {p.ref: p.sha256 for p in (_owner.get(c) for c in components_of(config)) if p}
    if used:
        config[CONFIG_SECTION] = dict(sorted(used.items()))


def components_of(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(registry.what, name) of every component a resolved job config names."""
    task, out = config.get("task", {}), []
    if task:
        out += [
            ("dataset", str(task.get("dataset", "")).split(":", 1)[0]),
            ("model", str(task.get("model", ""))),
            ("partition", str(task.get("partition", ""))),
        ]
    for section, what in (("algorithm", "algorithm"), ("compressor", "compressor"),
                          ("downlink", "compressor")):  # fmt: skip
        if section in config:
            out.append((what, str(config[section].get("name", ""))))
    return out


def ensure(config: Mapping[str, Any]) -> None:
    """In any process about to build a job: import the plugins its config names (a pool or Ray
    worker starts without them), refusing a source edited since the job's key was made."""
    wanted = config.get(CONFIG_SECTION) or {}
    for ref, sha in wanted.items():
        plugin = load(ref)
        if plugin.sha256 != sha:
            raise PluginError(
                [
                    f"{ref}: plugin source changed since the job was made (sha256 {sha}, now "
                    f"{plugin.sha256}); run the grid again to make its new jobs"
                ]
            )


def describe(plugins: Iterable[Plugin], grid: Path | str) -> list[str]:
    """One note line per plugin a grid imports (printed by `validate` and at `run`'s start)."""
    return [f"{grid}: imports {p.describe()}" for p in plugins]


def loaded() -> list[Plugin]:
    return list(_loaded.values())


def load_specs(specs: Iterable[str]) -> list[Plugin]:
    """Command-line `--plugin` values: a .py file or module (relative to the working
    directory), or a grid file whose [experiment] plugins load; entry points always load."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    out = load_all([], ".")
    for spec in specs:
        if spec.endswith(".toml"):
            path = Path(spec)
            try:
                raw = tomllib.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
                raise PluginError([f"{path}: cannot read the grid's plugins ({e})"]) from None
            out += for_grid(raw, path)
        else:
            out += load_all([spec], ".")
    return list({p.ref: p for p in out}.values())
