"""The import graph of fedbench has no cycle, and its layers point one way (issue 24).

The graph is read from the source with `ast`, not by importing: every `.py` file under
`fedbench/` is a module (`pkg/__init__.py` is the package `pkg`), and every import statement in
it is an edge, wherever it stands: at module level, inside a function (a lazy import is still a
dependency: lazy imports were how the old circles were hidden), or in a class body. Only imports
under `if TYPE_CHECKING:` are left out (they never run). An import names the most specific
module it reaches: `from fedbench.a import b` is an edge to `fedbench.a.b` when that is a
module, else to `fedbench.a`. Importing a submodule also runs its parents' `__init__`, but
that is no edge here: a package's `__init__` importing its own submodules (self-registering
registries) would otherwise make every package a circle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "fedbench"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes inside `if TYPE_CHECKING:` blocks."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", "")
            if name == "TYPE_CHECKING":
                skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def imported(name: str, path: Path, known: set[str]) -> Iterator[str]:
    """The fedbench modules that module `name` (file `path`) imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    skip = _type_checking_only(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield from _known(alias.name, known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                up = parts[: len(parts) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield from _known(sub if sub in known else base, known)


def _known(target: str, known: set[str]) -> Iterator[str]:
    while target and target not in known:  # `import fedbench.a.b.c`: the longest module
        target = target.rpartition(".")[0]
    if target:
        yield target


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: set(imported(m, p, known)) - {m} for m, p in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle [a, b, ..., a] of the directed graph, or None (iterative DFS, sorted order)."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    for root in sorted(graph):
        if state.get(root):
            continue
        stack: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        path = [root]
        state[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return [*path[path.index(child) :], child]
            elif not state.get(child):
                state[child] = 1
                stack.append((child, iter(sorted(graph.get(child, ())))))
                path.append(child)
    return None


def reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module `start` imports, directly or through others."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 100 and "fedbench.algorithms.base" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle_and_reads_lazy_and_relative_imports(
    tmp_path: Path, monkeypatch
) -> None:
    pkg = tmp_path / "fedbench"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from fedbench import b\n")
    (pkg / "b.py").write_text("def f():\n    from fedbench.sub.c import x\n")
    (pkg / "sub" / "__init__.py").write_text("from . import c\n")
    (pkg / "sub" / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import fedbench.b\n"
        "from ..a import y\n"
    )
    monkeypatch.setattr(__import__(__name__), "ROOT", pkg)
    graph = import_graph()
    assert graph["fedbench.a"] == {"fedbench.b"}
    assert graph["fedbench.b"] == {"fedbench.sub.c"}  # lazy: inside a function
    assert graph["fedbench.sub"] == {"fedbench.sub.c"}
    assert graph["fedbench.sub.c"] == {"fedbench.a"}  # relative; TYPE_CHECKING left out
    assert find_cycle(graph) == ["fedbench.a", "fedbench.b", "fedbench.sub.c", "fedbench.a"]
    (pkg / "sub" / "c.py").write_text("x = 1\n")
    assert find_cycle(import_graph()) is None


def test_layers_point_down() -> None:
    """Who takes part (cohort) and the time model (network) sit below the algorithms, and
    the cohort module imports neither the time model nor the algorithms, even indirectly."""
    graph = import_graph()
    below = reaches(graph, "fedbench.cohort")
    assert "fedbench.network" not in below
    assert not {m for m in below if m.startswith("fedbench.algorithms")}
    time_model = reaches(graph, "fedbench.network")
    assert not {m for m in time_model if m.startswith("fedbench.algorithms")}
    assert "fedbench.cohort" in graph["fedbench.algorithms.base"]
    # the lowest layers: models, compressors, data, params, seeding reach no algorithm or runner
    for low in ("fedbench.seeding", "fedbench.params", "fedbench.task", "fedbench.compressors"):
        up = reaches(graph, low)
        assert not {m for m in up if m.startswith(("fedbench.algorithms", "fedbench.runner"))}, low
