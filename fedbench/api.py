"""The stable Python API: what plugin authors and notebook users may rely on.

Everything named in `__all__` keeps its name and meaning across releases; anything else in
fedbench is internal and may move (e.g. the helpers of `fedbench.algorithms.base` are
re-exported here under the same names, so a refactor of that module does not break plugins).

A plugin registers components exactly as the built-ins do::

    from fedbench.api import ALGORITHMS, LOCAL_PARAMS, Algorithm, Component, ...
    ALGORITHMS.add(Component("my_alg", my_alg, {**LOCAL_PARAMS}, "one line summary"))

and a notebook runs a grid and gets the tidy frame (one row per run × round)::

    from fedbench.api import run_grid
    df = run_grid({"experiment": {"rounds": 5}, "algorithm": {"name": "fedavg"}}, db="r.db")
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedbench.algorithms.base import (
    ALGORITHMS,
    LOCAL_PARAMS,
    Algorithm,
    Broadcast,
    Env,
    RoundLog,
    average_updates,
    bits_vector,
    broadcast,
    broadcast_init,
    client_rows,
    cohort_log,
    gather_rows,
    gradients,
    local_sgd,
    sample_cohort,
    scatter_rows,
    update_compressor,
)
from fedbench.compressors.base import (
    COMPRESSORS,
    FLOAT_BITS,
    Compressed,
    Compressor,
    constant_bits,
    no_state,
)
from fedbench.data import DATASETS, PARTITIONS
from fedbench.models import MODELS
from fedbench.params import Component, Param, Registry
from fedbench.plugins import PluginError
from fedbench.plugins import load as load_plugin
from fedbench.report import load_frame
from fedbench.seeding import RoundRng

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "ALGORITHMS",
    "COMPRESSORS",
    "DATASETS",
    "FLOAT_BITS",
    "LOCAL_PARAMS",
    "MODELS",
    "PARTITIONS",
    "Algorithm",
    "Broadcast",
    "Component",
    "Compressed",
    "Compressor",
    "Env",
    "Param",
    "PluginError",
    "Registry",
    "RoundLog",
    "RoundRng",
    "average_updates",
    "bits_vector",
    "broadcast",
    "broadcast_init",
    "check",
    "client_rows",
    "cohort_log",
    "constant_bits",
    "gather_rows",
    "gradients",
    "load_frame",
    "load_plugin",
    "local_sgd",
    "no_state",
    "run_grid",
    "sample_cohort",
    "scatter_rows",
    "update_compressor",
]


def check(name: str, full: bool = True) -> list[Any]:
    """`fedbench check NAME`'s conformance results (each has `.ok`, `.name` and `.line()`);
    `full` = False tries one compressor of each kind instead of every admitted one (a plugin's
    own test file uses that: `fedbench new` writes one)."""
    from fedbench import conformance

    return conformance.check(name, full)


def run_grid(
    grid: str | Path | Mapping[str, Any], db: str | None = None, workers: int = 1
) -> pd.DataFrame:
    """Run every job of a grid that is not done yet (in this process by default) and return
    its experiment's tidy frame (`load_frame`). `grid` is a TOML file or the same content as
    a dict (its plugin paths relative to the working directory); `db` an SQLAlchemy URL or
    SQLite path (default $FEDBENCH_DB or results/fedbench.db). Problems raise the grid's
    GridError (one line each) instead of printing."""
    from fedbench import grid as gridlib
    from fedbench.commands.run import run

    with tempfile.TemporaryDirectory(prefix="fedbench-grid-") as tmp:
        path = Path(grid) if not isinstance(grid, Mapping) else _write_grid(grid, Path(tmp))
        name = gridlib.load(path).name
        command: Any = run  # one_line_errors keeps the function as __wrapped__
        unwrapped = command.__wrapped__  # errors raised, not printed
        unwrapped(path, db=db, workers=str(workers), threads=0, device="auto",
                        executor="local", jobs_per_gpu=1, ray_address=None, dry_run=False,
                        rerun_failed=False, only=None, shard=None, max_jobs=gridlib.MAX_JOBS,
                        lease_timeout=None, no_plugins=False)  # fmt: skip
    return load_frame(name, db)


def _write_grid(grid: Mapping[str, Any], where: Path) -> Path:
    """A dict grid as a TOML file (named after its experiment, default "notebook")."""
    sections = {k: dict(v) for k, v in grid.items() if k != "variant"}
    exp = sections.setdefault("experiment", {})
    exp.setdefault("name", "notebook")
    if "plugins" in exp:  # relative to the caller's working directory, not the temp file
        exp["plugins"] = [
            str(Path(p).resolve()) if p.endswith(".py") or "/" in p else p for p in exp["plugins"]
        ]
    lines: list[str] = []
    for name, fields in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in fields.items()]
    for variant in grid.get("variant", []):
        lines.append("[[variant]]")
        lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in variant.items()]
    path = where / f"{exp['name']}.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _toml_value(v: Any) -> str:
    """A TOML value: JSON spells strings, numbers and lists of them the TOML way (booleans
    included); NaN and infinity are not allowed in a grid anyway."""
    if isinstance(v, tuple):
        v = list(v)
    return json.dumps(v)
