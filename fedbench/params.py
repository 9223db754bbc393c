"""Parameter schemas and component registries.

Every pluggable piece (dataset, partition, model, algorithm, compressor) registers a
`Component`: a name, a factory and the typed parameters it understands. The grid validator,
the job key (defaults filled in) and `fedbench algorithms|compressors|datasets` all read these
schemas, so registering a component is enough for it to be validated, listed and tested.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

FLOAT32_MAX = 3.4028234663852886e38

Kind = Literal[
    "int", "float", "bool", "str", "int_list", "int_or_full", "float_or_str", "bool_or_str"
]


@dataclass(frozen=True)
class Param:
    """One typed, range-checked field of a grid section.

    `float_or_str` with `choices` is a number or one of the named strings (a step size
    `lr = 0.1` or `lr = "theory"`); see `theory_lr` for the latter.
    """

    default: Any
    help: str
    kind: Kind = "float"
    choices: tuple[str, ...] = ()
    low: float | None = None  # inclusive lower bound unless low_open
    high: float | None = None  # inclusive upper bound unless high_open
    low_open: bool = False
    high_open: bool = False
    # the release that added this field to an existing section or component: while it holds
    # its default it is left out of job keys, so runs recorded before it existed keep their key
    since: str = ""
    # (value, release) pairs: values whose numbers changed in that release (a fix), so jobs
    # holding them get a new key and rerun instead of reusing runs of the old computation
    changed: tuple[tuple[Any, str], ...] = ()

    def allowed(self) -> str:
        """Human description of the allowed values, used in error messages."""
        if self.choices and self.kind == "bool_or_str":  # e.g. per_client_eval = true | "all"
            return "true, false or " + ", ".join(repr(c) for c in self.choices)
        if self.choices and self.kind != "float_or_str":
            return "one of " + ", ".join(repr(c) for c in self.choices)
        base = {
            "int": "an integer",
            "float": "a number",
            "bool": "true or false",
            "str": "a string",
            "int_list": "a list of positive integers",
            "int_or_full": 'a positive integer or "full"',
            "float_or_str": "a number or a string",
            "bool_or_str": "true, false or a string",
        }[self.kind]
        bounds = []
        num = (lambda v: str(int(v))) if self.kind == "int" else (lambda v: f"{v:g}")
        if self.low is not None:
            bounds.append(f"{'>' if self.low_open else '>='} {num(self.low)}")
        if self.high is not None:
            bounds.append(f"{'<' if self.high_open else '<='} {num(self.high)}")
        text = base + (" " + " and ".join(bounds) if bounds else "")
        if self.kind == "float_or_str" and self.choices:  # e.g. lr = 0.1 or lr = "theory"
            number = "a number" + (" " + " and ".join(bounds) if bounds else "")
            text = number + " or " + " or ".join(repr(c) for c in self.choices)
        return text

    def check(self, value: Any) -> Any:
        """Return the normalised value or raise ValueError naming what is allowed."""
        if (
            self.kind in ("float", "float_or_str")
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(float(value))
            and abs(float(value)) > FLOAT32_MAX
        ):  # it would overflow the float32 tensors at run time
            raise ValueError(f"got {value!r}; allowed: {self.allowed()} of magnitude <= 3.4e38")
        v = _coerce(self.kind, value)
        if v is None:
            raise ValueError(f"got {value!r}; allowed: {self.allowed()}")
        if self.choices and v not in self.choices and isinstance(v, str):
            raise ValueError(f"got {value!r}; allowed: {self.allowed()}")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            bad = (self.low is not None and (v <= self.low if self.low_open else v < self.low)) or (
                self.high is not None and (v >= self.high if self.high_open else v > self.high)
            )
            if bad:
                raise ValueError(f"got {value!r}; allowed: {self.allowed()}")
        return v


def _coerce(kind: Kind, value: Any) -> Any:
    if kind == "bool":
        return value if isinstance(value, bool) else None
    if kind == "bool_or_str":
        return value if isinstance(value, (bool, str)) else None
    if isinstance(value, bool):
        return None
    if kind == "int":
        return value if isinstance(value, int) else None
    if kind == "float":
        if isinstance(value, (int, float)) and math.isfinite(float(value)):
            return float(value)
        return None
    if kind == "str":
        return value if isinstance(value, str) else None
    if kind == "int_list":
        ok = isinstance(value, list) and all(
            isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in value
        )
        return list(value) if ok else None
    if kind == "int_or_full":
        if value == "full" or (isinstance(value, int) and value > 0):
            return value
        return None
    if kind == "float_or_str":
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and math.isfinite(float(value)):
            return float(value)
        return None
    raise AssertionError(kind)


@dataclass(frozen=True)
class Component:
    """A registered dataset, partition, model, algorithm or compressor."""

    name: str
    build: Callable[..., Any]
    params: Mapping[str, Param]
    summary: str
    paper: str = ""
    # algorithms: what the uplink compressor must be ("any" | "contractive" | "unbiased")
    requires: str = "any"
    # compressors: "exact" | "unbiased" | "contractive"; datasets: "builtin" | "file"
    kind: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)
    # what the component needs of the rest of the job that its own fields' ranges cannot say (a
    # method that needs a strongly convex task, a model with known constants, enough layers):
    # the resolved config -> one line per problem, "section.field = value: why; allowed: ...".
    # The grid runs it for every chosen component (`fedbench validate` and `run`, before any
    # job starts), so a job that validates does not fail on it at run time
    check: Callable[[Mapping[str, Mapping[str, Any]]], list[str]] | None = None
    # "" for a built-in; a plugin's file or module (set by fedbench.plugins when it loads one)
    source: str = ""

    def resolve(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults filled in, values checked; unknown keys are ignored here (the grid
        validator reports them with the file and section)."""
        out: dict[str, Any] = {}
        for key, p in self.params.items():
            out[key] = p.check(given[key]) if key in given else p.default
        return out


class Registry(Mapping[str, Component]):
    """Name -> Component, with a decorator for registration."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._items: dict[str, Component] = {}

    def add(self, component: Component) -> Component:
        if component.name in self._items:
            raise KeyError(f"{self.what} {component.name!r} registered twice")
        self._items[component.name] = component
        return component

    def __getitem__(self, name: str) -> Component:
        return self._items[name]

    def remove(self, name: str) -> None:
        """Forget a component (fedbench.plugins: a plugin reloaded after an edit)."""
        self._items.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def all_params(self) -> set[str]:
        return {k for c in self._items.values() for k in c.params}


def describe_params(params: Mapping[str, Param]) -> list[tuple[str, str, str]]:
    """(name, default, help + allowed) rows for listings."""
    return [(k, repr(p.default), f"{p.help} ({p.allowed()})") for k, p in params.items()]


def import_submodules(package: str, path: Iterable[str]) -> None:
    """Import every module of a package, so that each file registers its own components
    (adding an algorithm, compressor, model or dataset is adding one file)."""
    for info in sorted(pkgutil.iter_modules(list(path)), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")


def theory_lr(default: float, help: str) -> Param:
    """A step size that is a positive number or "theory": the method computes it from the task's
    smoothness constants (`Task.smoothness()`) and its compressor's ω or δ, as its paper states."""
    return Param(
        default,
        help + '; "theory" = the paper\'s step size from L, L_i and the compressor',
        "float_or_str",
        choices=("theory",),
        low=0.0,
        low_open=True,
    )
