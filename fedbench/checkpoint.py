"""Checkpoints of a run's algorithm state, so that a killed long run resumes where it was.

With `[experiment] checkpoint_every = N` the runner saves, after every N-th round has been
written to the database, the algorithm state and the running totals to
`<dir>/<job key>.pt` (written to a temporary file unique to the process and renamed: a kill
never leaves half a checkpoint, and two processes never write the same temporary file).
Re-running the grid loads it, deletes the run's rows after that round and goes on from the
next round; the per-round generators depend only on (seed, round), so the resumed run
computes the same numbers as an uninterrupted one. The file is removed when the run ends.

The file holds only tensors and JSON text (`torch.load(weights_only=True)`: loading never
runs code, whoever wrote the file). The state's structure is JSON; its NamedTuples are
rebuilt only from a closed registry of state classes (`state_classes`: the NamedTuples of the
registered algorithms' and compressors' modules); a name from the file is looked up there and
never imported (issue 23: naming `fedbench.__main__` used to re-run the CLI inside the job).
The file also holds the job key: a checkpoint written for another job (copied, renamed) is
ignored and the run starts over. A checkpoint that loads is then checked against the job
(`problem`: the round an integer in 1..R − 1, the counters finite and ≥ 0, the state's
structure, tensor shapes and dtypes those of a fresh state); an invalid one is ignored with a
one-line warning and the run starts from round 0 (issue 23: round = −3 wrote rounds −2, −1).

A checkpoint that cannot be written (disk full, read-only directory) is reported once with
the reason and the run goes on without checkpoints.

`<dir>` is `$FEDBENCH_CHECKPOINTS`, else `checkpoints/` beside a SQLite database file, else
`results/checkpoints` (set `FEDBENCH_CHECKPOINTS` to a shared directory on a cluster).
"""

from __future__ import annotations

import errno
import functools
import io
import json
import math
import os
import sys
import uuid
from pathlib import Path
from typing import Any, NamedTuple

import torch

FORMAT = "fedbench-checkpoint-2"


class Checkpoint(NamedTuple):
    round: int  # the last round whose rows are in the database
    state: Any  # the algorithm state after that round
    bits_up: float  # cumulative totals after that round
    bits_down: float
    wall_s: float
    extra: dict[str, float]  # other cumulative metrics (e.g. sim_time_s)
    # A loaded checkpoint holds the file's values as they are (a float round, a negative
    # count): `problem` says whether they fit the job before the runner trusts them.


class CheckpointError(RuntimeError):
    """A checkpoint could not be written; the message is one line naming the reason."""


def directory(db_url: str) -> Path:
    env = os.environ.get("FEDBENCH_CHECKPOINTS")
    if env:
        return Path(env)
    if db_url.startswith("sqlite:///") and db_url != "sqlite:///:memory:":
        return Path(db_url.removeprefix("sqlite:///")).parent / "checkpoints"
    return Path("results/checkpoints")


# --------------------------------------------------------------------------- encoding


def encode(obj: Any, tensors: list[torch.Tensor]) -> Any:
    """`obj` as JSON-able structure; its tensors are appended to `tensors` (referenced by
    index). Raises TypeError for anything else than tensors, NamedTuples of fedbench
    modules, tuples, lists, str-keyed dicts, numbers, strings and None."""
    if isinstance(obj, torch.Tensor):
        tensors.append(obj.detach())
        return {"T": len(tensors) - 1}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        cls = type(obj)
        if not _trusted(cls.__module__):
            raise TypeError(f"cannot checkpoint a {cls.__module__}.{cls.__qualname__}")
        return {"N": f"{cls.__module__}:{cls.__qualname__}", "v": [encode(v, tensors) for v in obj]}
    if isinstance(obj, (tuple, list)):
        return {"L" if isinstance(obj, list) else "U": [encode(v, tensors) for v in obj]}
    if isinstance(obj, dict) and all(isinstance(k, str) for k in obj):
        return {"D": {k: encode(v, tensors) for k, v in obj.items()}}
    raise TypeError(f"cannot checkpoint a {type(obj).__qualname__}")


def decode(data: Any, tensors: list[torch.Tensor]) -> Any:
    """The inverse of `encode`; NamedTuple classes only from fedbench's modules."""
    if data is None or isinstance(data, (bool, int, float, str)):
        return data
    if not isinstance(data, dict) or len(data) not in (1, 2):
        raise ValueError("malformed checkpoint structure")
    if "T" in data:
        return tensors[int(data["T"])]
    if "L" in data:
        return [decode(v, tensors) for v in data["L"]]
    if "U" in data:
        return tuple(decode(v, tensors) for v in data["U"])
    if "D" in data:
        return {str(k): decode(v, tensors) for k, v in data["D"].items()}
    if "N" in data:
        return _named_tuple(str(data["N"]))(*(decode(v, tensors) for v in data["v"]))
    raise ValueError("malformed checkpoint structure")


def _trusted(module: str) -> bool:
    """fedbench's modules, and those of the plugins this process loaded (issue 27)."""
    from fedbench import plugins

    return module.startswith("fedbench.") or plugins.owns_module(module)


def _named_tuple(name: str) -> Any:
    cls = state_classes().get(name)
    if cls is None:
        raise ValueError(f"checkpoint names class {name!r}: not a registered state class")
    return cls


def state_classes() -> dict[str, type]:
    """The closed set of NamedTuple classes a checkpoint may name, "module:qualname" -> class:
    those defined in, or imported by, the modules of the registered algorithms and
    compressors (their states and the helpers' states they build), restricted to fedbench's
    own classes and those of the plugins this process loaded. Built from the registries, never
    from a file's contents; recomputed when a plugin registers or reloads a module."""
    from fedbench.algorithms import ALGORITHMS
    from fedbench.compressors import COMPRESSORS

    components = [*ALGORITHMS.values(), *COMPRESSORS.values()]
    names = {c.build.__module__ for c in components} | {"fedbench.algorithms.base"}
    # (name, module object): an edited plugin's reloaded module is a new object
    return _state_classes(frozenset((m, id(sys.modules[m])) for m in names if m in sys.modules))


@functools.cache
def _state_classes(modules: frozenset[tuple[str, int]]) -> dict[str, type]:
    out: dict[str, type] = {}
    for module, _ in sorted(modules):
        for obj in vars(sys.modules[module]).values():
            if _is_state_class(obj):
                name = f"{obj.__module__}:{obj.__qualname__}"
                if name not in NOT_STATES:
                    out[name] = obj
    return out


# the framework's records of functions and logs, never part of a state
NOT_STATES = frozenset(
    {
        "fedbench.algorithms.base:Algorithm",
        "fedbench.algorithms.base:Env",
        "fedbench.algorithms.base:RoundLog",
        "fedbench.compressors.base:Compressor",
    }
)


def _is_state_class(obj: object) -> bool:
    return (
        isinstance(obj, type)
        and issubclass(obj, tuple)
        and hasattr(obj, "_fields")
        and _trusted(obj.__module__)
    )


# --------------------------------------------------------------------------- validation


def problem(ckpt: Checkpoint, fresh: Any, rounds: int) -> str | None:
    """Why `ckpt` cannot resume a job of `rounds` rounds whose freshly initialised state is
    `fresh` (one short phrase), or None when it can. Saved checkpoints have a round in
    1..R − 1 (none is saved after the last round), finite non-negative counters and a state
    of the fresh state's structure, with tensors of its shapes and dtypes."""
    r = ckpt.round
    if not isinstance(r, int) or isinstance(r, bool):
        return f"round {r!r} is not an integer"
    if not 1 <= r <= rounds - 1:
        return f"round {r} is outside 1..{rounds - 1}"
    counters = {"bits_up": ckpt.bits_up, "bits_down": ckpt.bits_down, "wall_s": ckpt.wall_s}
    counters |= {f"extra.{k}": v for k, v in ckpt.extra.items()}
    for name, v in counters.items():
        if not _count(v):
            return f"{name} = {v!r} is not a finite number ≥ 0"
    return _differs(ckpt.state, fresh, "state")


def _count(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def _differs(a: Any, b: Any, where: str) -> str | None:
    """Where `a` (loaded) and `b` (fresh) differ in structure, tensor shape or dtype."""
    if isinstance(b, torch.Tensor):
        if not isinstance(a, torch.Tensor):
            return f"{where} is not a tensor"
        if a.shape != b.shape or a.dtype != b.dtype:
            return f"{where} is {a.dtype} {tuple(a.shape)}, not {b.dtype} {tuple(b.shape)}"
        return None
    if isinstance(b, (tuple, list)):
        if type(a) is not type(b) or len(a) != len(b):
            return f"{where} is not a {type(b).__name__} of {len(b)}"
        fields = getattr(b, "_fields", None) or [str(i) for i in range(len(b))]
        for f, x, y in zip(fields, a, b, strict=True):
            if (reason := _differs(x, y, f"{where}.{f}")) is not None:
                return reason
        return None
    if isinstance(b, dict):
        if not isinstance(a, dict) or a.keys() != b.keys():
            return f"{where} has other keys"
        return next((r for k in b if (r := _differs(a[k], b[k], f"{where}.{k}"))), None)
    return None if _kind(a) == _kind(b) else f"{where} is {a!r}, not a {_kind(b)}"


def _kind(v: object) -> str:
    """A Python scalar's kind; int and float are one (a count may start as 0 and grow as a
    float)."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return "number"
    return type(v).__name__


# --------------------------------------------------------------------------- files


def save(folder: Path, key: str, ckpt: Checkpoint) -> None:
    """Write `ckpt` for job `key` atomically. Raises CheckpointError with a one-line reason
    ("no space left on device in DIR", ...) and leaves no temporary file behind."""
    tensors: list[torch.Tensor] = []
    meta = {
        "round": ckpt.round,
        "state": encode(ckpt.state, tensors),
        "bits_up": ckpt.bits_up,
        "bits_down": ckpt.bits_down,
        "wall_s": ckpt.wall_s,
        "extra": encode(dict(ckpt.extra), tensors),
    }
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "key": key, "meta": json.dumps(meta), "tensors": tensors}, buf)
    tmp = folder / f".{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}.pt.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _write(tmp, buf.getbuffer())
        tmp.replace(folder / f"{key}.pt")  # atomic rename on POSIX
    except OSError as e:
        tmp.unlink(missing_ok=True)
        reason = (
            "no space left on device"
            if e.errno in (errno.ENOSPC, errno.EDQUOT)
            else (e.strerror or str(e)).lower()
        )
        raise CheckpointError(f"cannot write checkpoint in {folder}: {reason}") from None


def _write(path: Path, data: memoryview) -> None:
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def load(folder: Path, key: str, device: torch.device) -> Checkpoint | None:
    """The checkpoint of `key`, or None when there is none, it cannot be read, it names a
    class outside `state_classes`, or it was written for another job (its stored key
    differs). Its values are not checked against the job here: see `problem`."""
    path = folder / f"{key}.pt"
    if not path.is_file():
        return None
    try:
        raw = torch.load(path, map_location=device, weights_only=True)
        if not isinstance(raw, dict) or raw.get("format") != FORMAT or raw.get("key") != key:
            return None  # another job's file, or an older format: start the run over
        tensors = list(raw["tensors"])
        meta = json.loads(raw["meta"])
        return Checkpoint(  # as stored: `problem` checks the values against the job
            meta["round"],
            decode(meta["state"], tensors),
            meta["bits_up"],
            meta["bits_down"],
            meta["wall_s"],
            dict(decode(meta["extra"], tensors)),
        )
    except Exception:  # a corrupt, foreign or incompatible checkpoint: start the run over
        return None


def remove(folder: Path, key: str) -> None:
    (folder / f"{key}.pt").unlink(missing_ok=True)
