"""Reading a grid file and expanding it into jobs: the TOML text, its base sections, the
[grid] axes and [[variant]] families, the seeds, each combination resolved
(fedbench.grid.resolution) and keyed (fedbench.grid.keys); every problem of the file is
collected and reported at once."""

from __future__ import annotations

import itertools
import math
import stat
import sys
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from fedbench import plugins
from fedbench.algorithms import ALGORITHMS
from fedbench.grid.keys import job_key
from fedbench.grid.resolution import resolve
from fedbench.grid.schema import (
    COMMON,
    OPTIONAL_SECTIONS,
    SECTIONS,
    TOP_LEVEL,
    Grid,
    GridError,
    Job,
    _fields_taken,
    _section_registries,
    _show,
    allowed_fields,
    did_you_mean,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


MAX_JOBS = 100_000  # a grid expanding to more jobs is refused unless the caller allows more
MAX_NAME = 100  # characters of an experiment name (it names files and directories)
MAX_SEED = 2**63 - 1  # seeds are stored as 64-bit signed integers


def load(path: str | Path, max_jobs: int = MAX_JOBS) -> Grid:
    """Read, expand and validate a grid file; GridError lists every problem, one per line.
    More than `max_jobs` jobs is a problem (checked before anything is expanded)."""
    p = Path(path)
    try:
        mode = p.stat().st_mode  # of the file a symlink points to
        if not stat.S_ISREG(mode):  # a device or FIFO would be read forever or wait forever
            what = _FILE_TYPES.get(stat.S_IFMT(mode), "a special file")
            raise GridError([f"{p}: not a regular file ({what}); a grid is a TOML file"])
        if p.stat().st_size > 10_000_000:
            raise GridError([f"{p}: a grid file of {p.stat().st_size} bytes; allowed: < 10 MB"])
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise GridError([f"{p}: cannot read grid file ({e.strerror or e})"]) from None
    except UnicodeDecodeError as e:
        raise GridError(
            [f"{p}: not a UTF-8 text file (byte {e.start}); a grid file is TOML text"]
        ) from None
    try:
        empty = not tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError):
        empty = False  # parse reports it
    if empty:
        raise GridError([f"{p}: empty grid file; see experiments/quickstart.toml for one"])
    return parse(text, p, max_jobs)


_FILE_TYPES = {
    stat.S_IFDIR: "a directory",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
}
MAX_DEPTH = 32  # levels of nested arrays and tables in a grid file (a grid needs 4 or so)


def _depth(value: Any) -> int:
    """How deeply arrays and tables nest in a parsed TOML value (iterative: no recursion)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > MAX_DEPTH:
            break
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return deepest


def _toml(text: str, path: Path) -> dict[str, Any]:
    """The parsed grid text; GridError for invalid TOML or nesting deeper than MAX_DEPTH (the
    parser, json.dumps and the job key would recurse past Python's limit)."""
    too_deep = f"{path}: invalid TOML: nested more than {MAX_DEPTH} levels deep"
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise GridError([f"{path}: invalid TOML: {e}"]) from None
    except RecursionError:
        raise GridError([too_deep]) from None
    if _depth(raw) > MAX_DEPTH:
        raise GridError([too_deep])
    return raw


def name_problem(name: object) -> str | None:
    """Why `name` cannot be an experiment name (it names plot directories and files), or
    None: a non-empty string of at most MAX_NAME characters without `/`, `\\`, `..` or
    control characters."""
    if not isinstance(name, str) or not name.strip():
        return "allowed: a non-empty string"
    if len(name) > MAX_NAME:
        return f"{len(name)} characters; allowed: at most {MAX_NAME}"
    if "/" in name or "\\" in name or ".." in name:
        return "allowed: no '/', '\\' or '..' (the name becomes a file name)"
    if any(unicodedata.category(c).startswith("C") for c in name):
        return "allowed: no control characters (NUL, escape sequences, newlines)"
    return None


class Family(NamedTuple):
    """One family of jobs: the base grid (where = "") or a [[variant]]."""

    where: str  # "[[variant]] i", or "" for the base grid
    fixed: dict[str, Any]  # "section.field" -> value, applied to every job of the family
    axes: dict[str, list[Any]]  # "section.field" -> values, crossed
    inherited: frozenset[str] = frozenset()  # axes a variant takes from [grid] unchanged


def parse(text: str, path: Path, max_jobs: int = MAX_JOBS) -> Grid:
    """Expand and validate grid text; every problem of the file is reported at once."""
    raw = _toml(text, path)
    try:  # issue 27: before validation, so plugin components validate like built-ins
        imported = plugins.for_grid(raw, path)
    except plugins.PluginError as e:
        raise GridError(e.problems) from None
    problems: list[str] = []
    say = problems.append
    base = _base_sections(raw, path, say)
    given_seeds = base["experiment"].pop("seeds", [0])
    base["experiment"].pop("plugins", None)  # issue 27: not keyed; jobs get config["plugins"]
    seeds = _seeds(given_seeds, path, say, max_jobs)
    if not base["experiment"].get("name"):
        base["experiment"]["name"] = path.stem
    bad_name = name_problem(base["experiment"]["name"])
    if bad_name:
        shown = _show(base["experiment"]["name"])
        say(f"{path}: [experiment] name = {_strip_controls(shown)[:60]}: {bad_name}")
    families = _families(raw, path, say)
    total = len(seeds) * sum(math.prod(len(v) for v in f.axes.values()) for f in families)
    if total > max_jobs:  # refused before expanding anything
        say(
            f"{path}: the grid expands to {total} jobs; allowed: at most {max_jobs} "
            "(fedbench run --max-jobs N allows more)"
        )
        raise GridError(list(dict.fromkeys(problems)))
    if total >= 20_000:
        print(f"expanding {total} jobs of {path}…", file=sys.stderr, flush=True)
    jobs, ignored = _expand(base, families, seeds, path, say)
    if problems:
        raise GridError(list(dict.fromkeys(problems)))
    notes = [*plugins.describe(imported, path), *_notes(jobs, path, given_seeds)]
    return Grid(path, text, jobs, ignored, notes)


def _notes(jobs: list[Job], path: Path, seeds: Any) -> list[str]:
    """Settings that are legal but probably not meant, one line each."""
    notes = []
    if isinstance(seeds, list) and len(set(seeds)) < len(seeds):
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})
        notes.append(
            f"{path}: [experiment] seeds = {_show(seeds)}: seed "
            f"{', '.join(map(str, repeated))} repeated; each seed runs once"
        )
    for rounds, every in sorted(
        {(int(e["rounds"]), int(e["eval_every"])) for e in (j.config["experiment"] for j in jobs)}
    ):
        if every > rounds:
            notes.append(
                f"{path}: [experiment] eval_every = {every} > rounds = {rounds}: evaluated "
                "only before the first round and after the last"
            )
    for name, state in sorted({(j.algorithm, j.config["algorithm"]["client_state"]) for j in jobs}):
        comp = ALGORITHMS.get(name)  # a method's word on a storage dtype (extra["state_notes"])
        said = comp.extra.get("state_notes", {}).get(state) if comp is not None else None
        if said:
            notes.append(f'{path}: [algorithm] client_state = "{state}" with {name}: {said}')
    return notes


def _base_sections(raw: Mapping[str, Any], path: Path, say: Any) -> dict[str, dict[str, Any]]:
    """The base config: every section but [grid] and [[variant]], fields checked by name."""
    for key in raw:
        if key not in TOP_LEVEL:
            say(f"{path}: unknown section [{key}]; allowed: {', '.join(TOP_LEVEL)}")
    base: dict[str, dict[str, Any]] = {}
    for s in (*SECTIONS, *(o for o in OPTIONAL_SECTIONS if o in raw)):
        sec = raw.get(s, {})
        if not isinstance(sec, dict):
            say(f"{path}: {s} must be a table [{s}]")
            sec = {}
        allowed = allowed_fields(s) + (["seeds", "plugins"] if s == "experiment" else [])
        for k in sec:
            if k not in allowed:
                taken = (
                    _fields_taken(s, sec)
                    if s in COMMON and s != "experiment"
                    else f"allowed: {', '.join(allowed)}"
                )
                say(f"{path}: [{s}] {k}: unknown field{did_you_mean(k, allowed)}; {taken}")
        base[s] = {k: v for k, v in sec.items() if k in allowed}
    return base


def _families(raw: Mapping[str, Any], path: Path, say: Any) -> list[Family]:
    """The base grid's family and one per [[variant]]; a variant's keys win over the grid's
    axes on the same key."""
    axes = _axes(raw.get("grid", {}), "[grid]", path, say)
    variants = raw.get("variant", [])
    if not isinstance(variants, list):
        say(f"{path}: variants must be written [[variant]]")
        variants = []
    families = [Family("", {}, axes)]
    for i, v in enumerate(variants, 1):
        where = f"[[variant]] {i}"
        if not isinstance(v, dict):
            say(f'{path}: {where} must be a table of "section.field" = value')
            continue
        fixed = {k: val for k, val in v.items() if not isinstance(val, list)}
        own = _axes({k: val for k, val in v.items() if isinstance(val, list)}, where, path, say)
        fixed = _check_keys(fixed, where, path, say)
        merged = {k: val for k, val in axes.items() if k not in fixed and k not in own}
        families.append(Family(where, fixed, {**merged, **own}, frozenset(merged)))
    return families


def _expand(
    base: dict[str, dict[str, Any]], families: list[Family], seeds: list[int], path: Path, say: Any
) -> tuple[list[Job], dict[str, set[str]]]:
    """Every family's cartesian product, resolved, times the seeds; identical jobs merge.
    A problem is reported once per offending value, with where the value came from."""
    jobs: dict[str, Job] = {}
    ignored: dict[str, set[str]] = {}
    for fam in families:
        keys = list(fam.axes)
        for combo in itertools.product(*(fam.axes[k] for k in keys)):
            cfg = {s: dict(base[s]) for s in base}
            source = {f"{s}.{k}": f"[{s}]" for s in base for k in base[s]}
            overrides = [(k, v, fam.where) for k, v in fam.fixed.items()]
            overrides += [
                (k, v, "[grid]" if not fam.where or k in fam.inherited else fam.where)
                for k, v in zip(keys, combo, strict=True)
            ]  # a value is blamed on where it is written
            for k, val, where in overrides:
                s, f = k.split(".", 1)
                cfg.setdefault(s, {})[f] = val
                source[k] = where
            try:
                resolved, dropped = resolve(cfg)
            except GridError as e:
                for prob in e.problems:
                    k = prob.split(" ", 1)[0]
                    say(f"{path}: {source.get(k, '[' + k.split('.')[0] + ']')} {prob}")
                continue
            for k, who in dropped.items():
                ignored.setdefault(k, set()).update(who)
            plugins.stamp(resolved)  # issue 27: plugin jobs key their plugin's source hash
            for seed in seeds:
                key = job_key(resolved, seed)
                jobs.setdefault(key, Job(key, seed, resolved))
    return list(jobs.values()), ignored


def _axes(table: Any, where: str, path: Path, say: Any) -> dict[str, list[Any]]:
    if not isinstance(table, dict):
        say(f'{path}: {where} must be a table of "section.field" = [values]')
        return {}
    out: dict[str, list[Any]] = {}
    for k, v in _check_keys(table, where, path, say).items():
        if not isinstance(v, list) or not v:
            say(
                f"{path}: {where} {k}: an axis must be a non-empty list of values "
                "(a list-valued field is a list of lists)"
            )
            continue
        if _takes_a_list(k) and not any(isinstance(x, list) for x in v):
            section, _, name = k.partition(".")
            say(
                f"{path}: {where} {k} = {_show(v)}: {name} takes a list, so this is read as "
                f"{len(v)} values {', '.join(_show(x) for x in v)}; for one value write "
                f"{_show([v])} here or {name} = {_show(v)} in [{section}], for several a "
                "list of lists"
            )
            continue
        out[k] = v
    return out


def _takes_a_list(key: str) -> bool:
    """Whether every parameter named by "section.field" holds a list (e.g. task.hidden)."""
    section, _, name = key.partition(".")
    kinds = {p.kind for reg in _section_registries(section) for c in reg for p in
             [reg[c].params.get(name)] if p is not None}  # fmt: skip
    kinds |= {COMMON[section][name].kind} if name in COMMON.get(section, {}) else set()
    return kinds == {"int_list"}


# One grid file is one experiment: these describe it and cannot vary between its jobs.
FIXED_PER_GRID = ("experiment.name", "experiment.description", "experiment.seeds")


def _check_keys(table: Mapping[str, Any], where: str, path: Path, say: Any) -> dict[str, Any]:
    """The entries of a [grid]/[[variant]] table whose keys name a known "section.field"."""
    good = {}
    for k, v in table.items():
        s, _, f = k.partition(".")
        if s not in (*SECTIONS, *OPTIONAL_SECTIONS) or not f:
            sections = ", ".join((*SECTIONS, *OPTIONAL_SECTIONS))
            say(f'{path}: {where} {k}: keys are "section.field" with section one of {sections}')
        elif k in FIXED_PER_GRID:
            say(f"{path}: {where} {k}: one grid file is one experiment; set it in [experiment]")
        elif f not in allowed_fields(s):
            allowed = allowed_fields(s)
            hint = did_you_mean(f, allowed)
            say(f"{path}: {where} {k}: unknown field{hint}; allowed: {', '.join(allowed)}")
        else:
            good[k] = v
    return good


def _seeds(value: Any, path: Path, say: Any, max_jobs: int = MAX_JOBS) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= max_jobs:
        return list(range(value))
    if (
        isinstance(value, list)
        and 0 < len(value) <= max_jobs
        and all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_SEED for s in value
        )
    ):
        return list(dict.fromkeys(value))
    say(
        f"{path}: [experiment] seeds = {_show(value)[:60]}: allowed: "
        f"a non-empty list of integers >= 0 (at most {max_jobs} of them, each <= 2**63 - 1), "
        f"or a count >= 1 (at most {max_jobs}; fedbench run --max-jobs N allows more)"
    )
    return [0]


def _strip_controls(text: str) -> str:
    return "".join(c if not unicodedata.category(c).startswith("C") else "?" for c in text)
