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
rebuilt only from classes defined in fedbench's own modules. The file also holds the job key:
a checkpoint written for another job (copied, renamed) is ignored and the run starts over.

A checkpoint that cannot be written (disk full, read-only directory) is reported once with
the reason and the run goes on without checkpoints.

`<dir>` is `$FEDBENCH_CHECKPOINTS`, else `checkpoints/` beside a SQLite database file, else
`results/checkpoints` (set `FEDBENCH_CHECKPOINTS` to a shared directory on a cluster).
"""

from __future__ import annotations

import errno
import importlib
import io
import json
import os
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
    module, _, qualname = name.partition(":")
    if not _trusted(module) or not qualname.isidentifier():
        raise ValueError(f"checkpoint names class {name!r}: only fedbench NamedTuples load")
    cls = getattr(importlib.import_module(module), qualname, None)
    if not (isinstance(cls, type) and issubclass(cls, tuple) and hasattr(cls, "_fields")):
        raise ValueError(f"checkpoint names {name!r}, not a NamedTuple")
    return cls


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
    """The checkpoint of `key`, or None when there is none, it cannot be read, or it was
    written for another job (its stored key differs)."""
    path = folder / f"{key}.pt"
    if not path.is_file():
        return None
    try:
        raw = torch.load(path, map_location=device, weights_only=True)
        if not isinstance(raw, dict) or raw.get("format") != FORMAT or raw.get("key") != key:
            return None  # another job's file, or an older format: start the run over
        tensors = list(raw["tensors"])
        meta = json.loads(raw["meta"])
        return Checkpoint(
            int(meta["round"]),
            decode(meta["state"], tensors),
            float(meta["bits_up"]),
            float(meta["bits_down"]),
            float(meta["wall_s"]),
            dict(decode(meta["extra"], tensors)),
        )
    except Exception:  # a corrupt, foreign or incompatible checkpoint: start the run over
        return None


def remove(folder: Path, key: str) -> None:
    (folder / f"{key}.pt").unlink(missing_ok=True)
