"""The grid's schema: its sections, the fields every job has (COMMON), the components whose
parameters live in each section, and the types a loaded grid is made of (Job, Grid, GridError).
Everything else in fedbench.grid reads it; it reads only the registries."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedbench.algorithms import ALGORITHMS
from fedbench.compressors import COMPRESSORS
from fedbench.curriculum import ORDERINGS, PACINGS
from fedbench.data import DATASETS, PARTITIONS
from fedbench.models import MODELS
from fedbench.network import NETWORK_PARAMS
from fedbench.params import Param, Registry
from fedbench.privacy import PRIVACY_PARAMS
from fedbench.sampling import SAMPLINGS

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
        "per_client_eval": Param(
            False,
            "log the distribution of per-client accuracy and loss at every evaluation "
            "(client_acc_mean/std/p10/worst, client_loss_mean/std/p90/worst) on each client's own "
            "test samples where the task splits its test set per client, else on its training "
            'data; "all" also stores every client\'s value at the last round '
            "(client_acc/<i>, client_loss/<i>)",
            "bool_or_str",
            choices=("all",),
            since="0.4",
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
        # issue 25: a validation split of the training samples (fedbench.data.validation)
        "val_fraction": Param(
            0.0,
            "held-out share of the training data for validation (val_loss, val_accuracy); 0 = none",
            low=0.0,
            high=1.0,
            high_open=True,
            since="0.4",
        ),
        "val": Param(
            "samples",
            "validation protocol: samples (a share of every client's samples) or clients "
            "(whole clients that never train)",
            "str",
            choices=("samples", "clients"),
            since="0.4",
        ),
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
            "storage of the per-client [n, d] rows of scaffold, fedgamma, scallion, scafcom, "
            "feddyn, fedspeed, fedsmoo, tamuna, masha, diana, cofig, diana_nastya, frecon, dgc, "
            "onebit_adam, ef21, ef21_pp, ef21_bc, ef21_w, ef21_rare, econtrol and "
            "local_adam/local_rmsprop (precond = local); other methods keep float32: float16 / "
            "bfloat16 halve it, arithmetic stays float32",
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


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (str, list, bool)) else repr(value)


def section_params(section: str, fields: Mapping[str, Any]) -> dict[str, Param]:
    """The schema of one resolved section: its common fields and its components' parameters."""
    params: dict[str, Param] = dict(COMMON.get(section, {}))
    for reg, name in _components(section, fields):
        if name in reg:
            params.update(reg[name].params)
    return params
