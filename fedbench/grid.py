"""TOML grid -> list of jobs, with whole-grid validation (DESIGN §4, a contract).

A grid has base sections (`[experiment]`, `[task]`, `[algorithm]`, `[compressor]`,
`[downlink]`), optional `[grid]` axes ("section.field" = list) and optional `[[variant]]`
tables. Jobs are the base grid (base config × grid axes) plus one family per variant (base,
then the variant's overrides, which take precedence over a grid axis on the same key, × the
remaining grid axes × the variant's own list-valued axes), each times the seeds.

Every job is resolved: defaults filled in for the chosen dataset, model, partition, algorithm
and compressors. A field that no registered component understands is an error; a field that
only other components understand (e.g. `ratio` when `compressor.name = "identity"` on one
axis value) is dropped from that job, and jobs that become identical are merged. The job key
is a hash of the resolved config and the seed, so a re-run skips finished jobs and editing one
value re-runs only the jobs it changes.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import sys
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from fedbench.algorithms import ALGORITHMS
from fedbench.compressors import COMPRESSORS, compressor_kind
from fedbench.curriculum import ORDERINGS, PACINGS
from fedbench.data import DATASETS, PARTITIONS
from fedbench.models import MODELS
from fedbench.network import NETWORK_PARAMS
from fedbench.params import Param, Registry
from fedbench.privacy import PRIVACY_PARAMS
from fedbench.privacy import check as privacy_check
from fedbench.sampling import COHORT_SAMPLINGS, SAMPLINGS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SECTIONS = ("experiment", "task", "algorithm", "compressor", "downlink")
# sections a job has only when its grid names them (absent, a job's key is what it was before
# the section existed): [network], the simulated-time model of fedbench.network
OPTIONAL_SECTIONS = ("network", "privacy")
TOP_LEVEL = (*SECTIONS, *OPTIONAL_SECTIONS, "grid", "variant")

# Fields every job has, whatever components it uses.
BITS_CONVENTIONS = ("full", "values")
# experiment fields that never change a run's numbers: not part of its key
NOT_KEYED = ("description", "checkpoint_every")

COMMON: dict[str, dict[str, Param]] = {
    "experiment": {
        "name": Param("", "groups runs in the database (default: the grid file's name)", "str"),
        "rounds": Param(100, "communication rounds per run", "int", low=1),
        "eval_every": Param(
            5, "rounds between evaluations (the last round is always evaluated)", "int", low=1
        ),
        "description": Param("", "free text shown by `fedbench ls`", "str"),
        "checkpoint_every": Param(
            0,
            "save the run's state every N rounds so a killed run resumes there (0 = never)",
            "int",
            low=0,
            since="0.2",
        ),
        "grad_norm": Param(
            False,
            "log grad_norm_sq, ‖∇f(x)‖² at the server model, at every evaluation (one full pass)",
            "bool",
            since="0.2",
        ),
        "coherence": Param(
            False,
            "log coherence, ‖mean_i ∇f_i(x)‖² / mean_i ‖∇f_i(x)‖² of the per-client gradients at "
            "the server model, at every evaluation (one full pass)",
            "bool",
            since="0.3",
        ),
        "eval_clients": Param(
            0,
            "evaluate train_loss on a fixed random sample of this many clients (drawn once per "
            "seed), as cross-device papers do; 0 = every client",
            "int",
            low=0,
            since="0.3",
        ),
    },
    "task": {
        "dataset": Param("digits", "dataset (see `fedbench datasets`)", "str"),
        "model": Param("mlp", f"model: {' | '.join(MODELS)} (see `fedbench datasets`)", "str"),
        "clients": Param(10, "number of clients n", "int", low=1),
        "partition": Param("iid", "how training samples are split over clients", "str"),
        "test_fraction": Param(
            0.2, "held-out share of the samples for the test set", low=0.0, high=1.0, high_open=True
        ),
        "init": Param(
            "default",
            "initial model: PyTorch's default init or all zeros",
            "str",
            choices=("default", "zeros"),
        ),
        "data_seed": Param(0, "seed of data generation, test split and partition", "int", low=0),
    },
    "algorithm": {
        "name": Param("fedavg", "algorithm (see `fedbench algorithms`)", "str"),
        "batch_size": Param(
            32, 'minibatch per local step, or "full" for each client\'s whole data', "int_or_full"
        ),
        "participation": Param(
            1.0, "fraction of clients sampled each round", low=0.0, high=1.0, low_open=True
        ),
        "client_state": Param(
            "float32",
            "storage of the per-client control variates of scaffold, scallion and scafcom "
            "(other methods keep float32): float16 / bfloat16 halve it, arithmetic stays float32",
            "str",
            choices=("float32", "float16", "bfloat16"),
            since="0.2",
        ),
        "sampling": Param(
            "uniform",
            "client sampling: uniform without replacement, poisson (each client with probability "
            "participation), importance (OCS by update norm), power_of_choice (highest losses)",
            "str",
            choices=SAMPLINGS,
            since="0.2",
        ),
        "sampling_candidates": Param(
            0,
            "power_of_choice: candidates d that report their loss (0 = min(n, 2m))",
            "int",
            low=0,
            since="0.2",
        ),
        # issue 16: curricula (fedbench.curriculum)
        "ordering": Param(
            "random",
            "local data order: random (uniform minibatches), curriculum (lowest loss under the "
            "received model first), anti (highest first), paced over the local steps",
            "str",
            choices=ORDERINGS,
            since="0.2",
        ),
        "pacing": Param(
            "linear",
            "pacing function g of ordered data (over local steps) and of the client curriculum "
            "(over rounds)",
            "str",
            choices=PACINGS,
            since="0.2",
        ),
        "pacing_a": Param(
            0.8,
            "pacing: share of the horizon at which g reaches all the data",
            low=0.0,
            low_open=True,
            since="0.2",
        ),
        "pacing_b": Param(
            0.2,
            "pacing: share of the data available at the start",
            low=0.0,
            high=1.0,
            since="0.2",
        ),
    },
    "compressor": {
        "name": Param("identity", "uplink compressor (see `fedbench compressors`)", "str"),
        "error_feedback": Param(
            False, "wrap the uplink compressor in error feedback (EF14)", "bool"
        ),
        "bits": Param(
            "full",
            "bit convention: the full message (values, indices, norms) or values only, as the "
            "EF21/DIANA papers' #bits/n plots count",
            "str",
            choices=BITS_CONVENTIONS,
            since="0.2",
        ),
    },
    "downlink": {
        "name": Param("identity", "downlink compressor: clients track x̂ += C(x − x̂)", "str"),
        "bits": Param(
            "full",
            "bit convention of the downlink (see [compressor] bits)",
            "str",
            choices=BITS_CONVENTIONS,
            since="0.2",
        ),
    },
    "network": NETWORK_PARAMS,  # optional section: simulated time (fedbench.network)
    "privacy": PRIVACY_PARAMS,  # optional section: DP and secure aggregation (fedbench.privacy)
}


class GridError(ValueError):
    """A grid that cannot run. `problems` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Job:
    key: str
    seed: int
    config: dict[str, dict[str, Any]]  # resolved sections (experiment has no seeds)

    @property
    def algorithm(self) -> str:
        return str(self.config["algorithm"]["name"])

    @property
    def compressor(self) -> str:
        c = self.config["compressor"]
        return f"ef({c['name']})" if c["error_feedback"] else str(c["name"])

    @property
    def dataset(self) -> str:
        return str(self.config["task"]["dataset"])

    @property
    def model(self) -> str:
        return str(self.config["task"]["model"])

    @property
    def experiment(self) -> str:
        return str(self.config["experiment"]["name"])


@dataclass
class Grid:
    path: Path
    text: str
    jobs: list[Job]
    ignored: dict[str, set[str]] = field(default_factory=dict)  # field -> components ignoring it
    notes: list[str] = field(default_factory=list)  # legal but probably unintended settings

    @property
    def name(self) -> str:
        return self.jobs[0].experiment if self.jobs else self.path.stem


# -- components of each section --------------------------------------------------------------


def dataset_name(value: str) -> str:
    """`mnist:DIR` -> `mnist` (file datasets take a path after a colon)."""
    return value.split(":", 1)[0]


def _components(section: str, cfg: Mapping[str, Any]) -> list[tuple[Registry, str]]:
    """The (registry, chosen name) pairs whose parameters live in this section."""
    if section == "task":
        return [
            (DATASETS, dataset_name(str(cfg.get("dataset", "")))),
            (MODELS, str(cfg.get("model", ""))),
            (PARTITIONS, str(cfg.get("partition", ""))),
        ]
    if section == "algorithm":
        return [(ALGORITHMS, str(cfg.get("name", "")))]
    if section in ("compressor", "downlink"):
        return [(COMPRESSORS, str(cfg.get("name", "")))]
    return []


def _section_registries(section: str) -> list[Registry]:
    return {
        "task": [DATASETS, MODELS, PARTITIONS],
        "algorithm": [ALGORITHMS],
        "compressor": [COMPRESSORS],
        "downlink": [COMPRESSORS],
    }.get(section, [])


def allowed_fields(section: str) -> list[str]:
    names = set(COMMON[section])
    for reg in _section_registries(section):
        names |= reg.all_params()
    return sorted(names)


# Names people write for a field: the hint of an unknown field.
FIELD_ALIASES = {
    "learning_rate": "lr", "step_size": "lr", "num_clients": "clients", "n_clients": "clients",
    "batchsize": "batch_size", "local_epochs": "local_steps", "num_rounds": "rounds",
    "seed": "seeds", "compression": "name", "compressor": "name", "algorithm": "name",
}  # fmt: skip


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """' (did you mean fedavg?)' for a close or differently-cased choice, else ''."""
    import difflib

    options = list(choices)
    lower = {c.lower(): c for c in options}
    hit = lower.get(value.lower())
    if hit is None and FIELD_ALIASES.get(value) in options:
        hit = FIELD_ALIASES[value]
    if hit is None:
        close = difflib.get_close_matches(value, options, n=1, cutoff=0.7)
        hit = close[0] if close else None
    return f" (did you mean {hit}?)" if hit else ""


def _fields_taken(section: str, cfg: Mapping[str, Any]) -> str:
    """The fields a section takes given its chosen components, for an unknown-field message:
    "fedavg takes: ...; every [algorithm] takes: ..."; all fields when a name is not known."""
    chosen = [(reg, n) for reg, n in _components(section, cfg) if n in reg]
    if not chosen or len(chosen) < len(_components(section, cfg)):
        return f"allowed: {', '.join(allowed_fields(section))}"
    own = [f"{n} takes: {', '.join(reg[n].params) or 'nothing more'}" for reg, n in chosen]
    return "; ".join([*own, f"every [{section}] takes: {', '.join(COMMON[section])}"])


# -- parsing and expansion -------------------------------------------------------------------


MAX_JOBS = 100_000  # a grid expanding to more jobs is refused unless the caller allows more
MAX_NAME = 100  # characters of an experiment name (it names files and directories)
MAX_SEED = 2**63 - 1  # seeds are stored as 64-bit signed integers


def load(path: str | Path, max_jobs: int = MAX_JOBS) -> Grid:
    """Read, expand and validate a grid file; GridError lists every problem, one per line.
    More than `max_jobs` jobs is a problem (checked before anything is expanded)."""
    p = Path(path)
    try:
        if p.is_file() and p.stat().st_size > 10_000_000:
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
    except tomllib.TOMLDecodeError:
        empty = False  # parse reports it
    if empty:
        raise GridError([f"{p}: empty grid file; see experiments/quickstart.toml for one"])
    return parse(text, p, max_jobs)


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
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise GridError([f"{path}: invalid TOML: {e}"]) from None
    problems: list[str] = []
    say = problems.append
    base = _base_sections(raw, path, say)
    given_seeds = base["experiment"].pop("seeds", [0])
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
    return Grid(path, text, jobs, ignored, _notes(jobs, path, given_seeds))


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
        allowed = allowed_fields(s) + (["seeds"] if s == "experiment" else [])
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


# -- resolution of one job -------------------------------------------------------------------


def resolve(
    cfg: Mapping[str, Mapping[str, Any]],
) -> tuple[dict[str, dict[str, Any]], dict[str, set[str]]]:
    """Defaults filled in and every value checked. Returns (resolved config, dropped fields ->
    the components that ignore them). Raises GridError whose lines start with "section.field"."""
    problems: list[str] = []
    out: dict[str, dict[str, Any]] = {}
    dropped: dict[str, set[str]] = {}
    for s in SECTIONS:
        given = cfg.get(s, {})
        sec: dict[str, Any] = {}
        params: dict[str, Param] = dict(COMMON[s])
        if s == "task" and "partition" not in given:
            ds = DATASETS.get(dataset_name(str(given.get("dataset", "digits"))))
            if ds is not None and "default_partition" in ds.extra:
                params["partition"] = _with_default(
                    params["partition"], ds.extra["default_partition"]
                )
        if s == "task" and "model" not in given:  # generated regression / game datasets
            ds = DATASETS.get(dataset_name(str(given.get("dataset", "digits"))))
            if ds is not None and "default_model" in ds.extra:
                params["model"] = _with_default(params["model"], ds.extra["default_model"])
        for k, p in params.items():
            sec[k] = _check(s, k, given.get(k, p.default), p, problems)
        if s == "experiment":
            out[s] = sec
            continue
        merged = {**given, **sec}
        chosen: list[str] = []
        for reg, name in _components(s, merged):
            if name not in reg:
                field_name = _NAME_FIELD.get(reg.what, "name")
                problems.append(
                    f"{s}.{field_name} = {_show(merged.get(field_name))}: unknown {reg.what}"
                    f"{did_you_mean(str(merged.get(field_name)), reg)}; allowed: {', '.join(reg)}"
                )
                continue
            chosen.append(name)
            for k, p in reg[name].params.items():
                sec[k] = _check(s, k, given.get(k, p.default), p, problems)
        for k in given:
            if k not in sec:
                dropped.setdefault(f"{s}.{k}", set()).update(chosen)
        out[s] = sec
    for s in OPTIONAL_SECTIONS:  # only when the grid names the section
        if s in cfg:
            given = cfg[s]
            out[s] = {
                k: _check(s, k, given.get(k, p.default), p, problems) for k, p in COMMON[s].items()
            }
    alg = ALGORITHMS.get(out["algorithm"]["name"])
    if (
        alg is not None
        and not alg.extra.get("error_feedback", True)
        and out["compressor"]["error_feedback"]
    ):
        out["compressor"]["error_feedback"] = False  # the method has its own error feedback
        dropped.setdefault("compressor.error_feedback", set()).add(alg.name)
    up = COMPRESSORS.get(out["compressor"]["name"])
    if up is not None and up.kind == "exact" and out["compressor"]["error_feedback"]:
        out["compressor"]["error_feedback"] = False  # nothing is lost, nothing to feed back
        dropped.setdefault("compressor.error_feedback", set()).add(up.name)
    bad = {p.split(" ", 1)[0] for p in problems}  # fields whose value was refused
    _cross_checks(out, bad, problems)
    if problems:
        raise GridError(problems)
    return out, dropped


_NAME_FIELD = {"dataset": "dataset", "model": "model", "partition": "partition"}


def _with_default(p: Param, default: Any) -> Param:
    return Param(default, p.help, p.kind, p.choices, p.low, p.high, p.low_open, p.high_open)


def _check(section: str, key: str, value: Any, p: Param, problems: list[str]) -> Any:
    try:
        return p.check(value)
    except ValueError as e:
        problems.append(f"{section}.{key} = {_show(value)}: {e}".replace(f"got {value!r}; ", ""))
        return p.default


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (str, list, bool)) else repr(value)


def _system_checks(alg: Any, cfg: dict[str, dict[str, Any]], problems: list[str]) -> None:
    """Sampling strategies, availability and deadlines only with methods that implement them."""
    a = cfg["algorithm"]
    # methods that draw their own clients (not through sample_cohort) declare
    # extra["availability"] = False: availability does not reach them, so dropouts or windows
    # refuse them (issue 13); asynchronous methods (extra["own_cohort"]) take availability
    own = not alg.extra.get("availability", True)
    # asynchronous methods draw their workers themselves (uniform among the idle and present)
    ok = (
        ("uniform",)
        if own or alg.extra.get("own_cohort", False)
        else (*COHORT_SAMPLINGS, *alg.extra.get("sampling", ()))
    )
    if a["sampling"] not in ok:
        fit = [k for k in ALGORITHMS if a["sampling"] in ALGORITHMS[k].extra.get("sampling", ())]
        problems.append(
            f"algorithm.sampling = {_show(a['sampling'])}: {alg.name} allows {', '.join(ok)}; "
            f"{a['sampling']} is implemented by {', '.join(fit)}"
        )
    net = cfg.get("network")
    if net is None:
        return
    if net["deadline_s"] > 0 and not alg.extra.get("deadline", False):
        fit = [k for k in ALGORITHMS if ALGORITHMS[k].extra.get("deadline", False)]
        problems.append(
            f"network.deadline_s = {net['deadline_s']}: {alg.name} does not implement a round "
            f"deadline; allowed with: {', '.join(fit)}"
        )
    windows = net["window_period"] > 0 and net["window_on"] < 1.0
    if (net["dropout_prob"] > 0 or windows) and own:
        problems.append(
            f"network.dropout_prob / window_period: {alg.name} draws its own clients and ignores "
            "availability; use a method that samples cohorts (e.g. fedavg, mifa)"
        )


def _cross_checks(cfg: dict[str, dict[str, Any]], bad: set[str], problems: list[str]) -> None:
    """Checks across fields, skipped where a field involved was itself refused."""
    alg = ALGORITHMS.get(cfg["algorithm"]["name"])
    up = cfg["compressor"]
    if alg is not None and up["name"] in COMPRESSORS and not bad & {"compressor.unbiased"}:
        kind = compressor_kind(up["name"], up)
        if alg.requires != "any" and kind not in ("exact", alg.requires):
            fitting = [c for c in COMPRESSORS if COMPRESSORS[c].kind in ("exact", alg.requires)]
            hint = " (or randk with unbiased = false)" if alg.requires == "contractive" else ""
            problems.append(
                f"compressor.name = {_show(up['name'])}: {alg.name} needs a {alg.requires} "
                f"compressor and {up['name']} is {kind}; allowed: {', '.join(fitting)}{hint}"
            )
    task = cfg["task"]
    ds = DATASETS.get(dataset_name(task["dataset"]))
    if ds is not None and "task.partition" not in bad:
        allowed_parts = ds.extra.get("partitions", tuple(PARTITIONS))
        if task["partition"] not in allowed_parts:
            problems.append(
                f"task.partition = {_show(task['partition'])}: dataset {ds.name} allows "
                f"{', '.join(allowed_parts)}"
            )
    model = MODELS.get(str(task["model"]))
    if ds is not None and model is not None:  # token sequences need a language model
        seq, lm = bool(ds.extra.get("sequences")), bool(model.extra.get("sequences"))
        if seq != lm:
            lms = ", ".join(k for k in MODELS if MODELS[k].extra.get("sequences"))
            why = f"holds token sequences; allowed: {lms}" if seq else "has no token sequences"
            problems.append(f"task.model = {_show(task['model'])}: dataset {ds.name} {why}")
    if ds is not None and model is not None:  # packed regression / game rows need their model
        want, has = ds.extra.get("target"), model.extra.get("target")
        if want != has:
            fits = ", ".join(k for k in MODELS if MODELS[k].extra.get("target") == want)
            problems.append(
                f"task.model = {_show(task['model'])}: dataset {ds.name} needs "
                + (f"one of {fits}" if want else "a classification model")
            )
    if alg is not None:
        _system_checks(alg, cfg, problems)
    if "privacy" in cfg and not any(b.startswith("privacy.") for b in bad):
        problems.extend(privacy_check(cfg))  # refusals that would void the DP guarantee
    continuous = alg is not None and alg.extra.get("continuous_inputs")  # issue 16: wafl
    if continuous and ds is not None and ds.extra.get("sequences"):
        problems.append(
            f"algorithm.name = {_show(cfg['algorithm']['name'])}: perturbs continuous inputs; "
            f"dataset {ds.name} holds token sequences"
        )
    models = alg.extra.get("models") if alg is not None else None  # issue 16: fedbr
    if models and model is not None and model.name not in models:
        problems.append(
            f"algorithm.name = {_show(cfg['algorithm']['name'])}: needs a feature layer before "
            f"a linear classifier; model {model.name}; allowed: {', '.join(models)}"
        )
    a = cfg["algorithm"]
    if a["ordering"] != "random" and a["batch_size"] == "full":  # issue 16: curricula
        problems.append(
            f"algorithm.ordering = {_show(a['ordering'])}: orders minibatches; with "
            'batch_size = "full" every step uses all the data; allowed: "random"'
        )
    elif a["ordering"] != "random" and alg is not None and "local_steps" not in alg.params:
        problems.append(  # every method with local steps draws them through local_batches
            f"algorithm.ordering = {_show(a['ordering'])}: orders the minibatches of local "
            f'steps; {a["name"]} takes no local steps; allowed: "random"'
        )
    if not bad & {"algorithm.participation", "task.clients"}:
        p, n = cfg["algorithm"]["participation"], task["clients"]
        if p * n < 0.5:
            problems.append(
                f"algorithm.participation = {p}: fewer than one of {n} clients per round; "
                f"allowed: >= {1 / n:.3g}"
            )


def section_params(section: str, fields: Mapping[str, Any]) -> dict[str, Param]:
    """The schema of one resolved section: its common fields and its components' parameters."""
    params: dict[str, Param] = dict(COMMON.get(section, {}))
    for reg, name in _components(section, fields):
        if name in reg:
            params.update(reg[name].params)
    return params


def job_key(config: Mapping[str, Any], seed: int) -> str:
    """Hash of the resolved config and the seed. Left out: fields that do not change the
    numbers (NOT_KEYED), and fields added in a later release (`Param.since`) while they hold
    their default."""
    keyed: dict[str, Any] = {}
    for section, fields in config.items():
        if not isinstance(fields, Mapping):
            keyed[section] = fields
            continue
        schema = section_params(section, fields)
        keyed[section] = {
            k: v
            for k, v in fields.items()
            if not (section == "experiment" and k in NOT_KEYED)
            and not (k in schema and schema[k].since and v == schema[k].default)
        }
        for k, v in fields.items():  # values whose computation was fixed later: a new key
            fixed = [rel for val, rel in (schema[k].changed if k in schema else ()) if val == v]
            if fixed:
                keyed[section][f"{k}@"] = fixed[-1]
    blob = json.dumps(
        {"config": keyed, "seed": seed},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_config(job: Job) -> dict[str, Any]:
    """What the database stores for a run: the resolved sections plus the seed."""
    return {**job.config, "seed": job.seed}


def filter_jobs(jobs: Iterable[Job], only: Iterable[str]) -> list[Job]:
    """Keep jobs whose resolved `section.field` equals the given value (`--only KEY=VALUE`)."""
    conds = []
    for item in only:
        k, sep, v = item.partition("=")
        if not sep or "." not in k:
            raise GridError([f"--only {item!r}: expected section.field=value"])
        try:
            val = tomllib.loads(f"v = {v}")["v"]
        except tomllib.TOMLDecodeError:
            val = v
        conds.append((k.split(".", 1), val))
    return [
        j
        for j in jobs
        if all(
            (f == "seed" and s == "experiment" and j.seed == val)
            or j.config.get(s, {}).get(f) == val
            for (s, f), val in conds
        )
    ]


def flat_config(config: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    return {
        f"{s}.{k}": v
        for s, sec in config.items()
        if isinstance(sec, Mapping)
        for k, v in sec.items()
    }


def job_labels(jobs: Iterable[Job]) -> dict[str, str]:
    """A short label per job from the fields that vary across the jobs (seed excluded):
    names by value ("scaffold topk"), other fields as "field=value"."""
    jobs = list(jobs)
    flats = {j.key: flat_config(j.config) for j in jobs}
    keys = sorted({k for f in flats.values() for k in f})
    # a field varies when its values differ where it is present (fields that exist only for
    # some components, like server_lr, are implied by the component's name)
    varying = [
        k
        for k in keys
        if len({json.dumps(f[k], sort_keys=True) for f in flats.values() if k in f}) > 1
    ]
    order = {"algorithm.name": 0, "compressor.name": 1, "compressor.error_feedback": 2}
    varying.sort(key=lambda k: (order.get(k, 3), k))
    labels = {}
    for j in jobs:
        f = flats[j.key]
        parts = []
        for k in varying:
            v = f.get(k)
            ef_only = k == "compressor.error_feedback" and "compressor.name" not in varying
            if k == "compressor.name" or ef_only:  # error feedback spelled "ef(topk)"
                parts.append(j.compressor)
            elif k.endswith(".name") or k in ("task.dataset", "task.model", "task.partition"):
                parts.append(str(v) if k != "downlink.name" else f"down={v}")
            elif k == "compressor.error_feedback":
                pass  # in the compressor's name
            elif v is not None:
                parts.append(f"{k.split('.', 1)[1]}={_show(v) if not isinstance(v, str) else v}")
        labels[j.key] = " ".join(p for p in parts if p) or j.algorithm
    return labels
