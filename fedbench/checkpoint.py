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

Per-client state of cross-device runs (an `[n, d]` tensor of `zeroed_host`'s mapped zero
pages, e.g. SCAFFOLD's c_i for 10⁵-10⁶ clients) is stored row-sparse: the indices of its rows
that hold a bit other than zero and those rows, found from the kernel's page table without
reading the pages never written (see "row-sparse state" below), and rebuilt on load as mapped
zero pages in host memory (where the fresh state keeps them, whatever the run's device). A
row written with +0.0 equals one never written and is not stored; the tensor comes back bit
for bit. The file holds the written rows, not n × d: SCAFFOLD over 10⁶ clients × 4,554
float32 with 1,000 rows written, 17 MiB and 0.1-0.6 s instead of 17 GB (10⁵ clients: 1.7 GB,
7-11 s, +1.7 GB RSS before). The file is streamed to its temporary file (no second copy of the
state in memory). The stored indices are untrusted: int64 `[k]`, ascending, unique, in
0..n − 1, with rows `[k, d]`, else the file is ignored (one warning line, the run starts over)
before any row is written. Files of format 2 (every tensor whole) start over likewise.

A checkpoint that cannot be written (disk full, read-only directory) is reported once with
the reason and the run goes on without checkpoints. A file of the job that cannot be read or
decoded is ignored with one warning line and the run starts from round 0.

`<dir>` is `$FEDBENCH_CHECKPOINTS`, else `checkpoints/` beside a SQLite database file, else
`results/checkpoints` (set `FEDBENCH_CHECKPOINTS` to a shared directory on a cluster).
"""

from __future__ import annotations

import errno
import functools
import json
import math
import mmap
import os
import sys
import uuid
from pathlib import Path
from typing import Any, NamedTuple

import torch

from fedbench.rows import mapped_zero_pages, zeroed_host

FORMAT = "fedbench-checkpoint-3"  # 3: row-sparse host state ("R"); a file of 2 starts over


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
    if isinstance(obj, torch.Tensor) and mapped_zero_pages(obj):
        index = written_rows(obj)  # [k]
        tensors += [index, obj.detach().index_select(0, index)]  # [k], [k, d]
        return {"R": [obj.shape[0], len(tensors) - 2, len(tensors) - 1]}
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


def decode(data: Any, tensors: list[torch.Tensor], device: torch.device | None = None) -> Any:
    """The inverse of `encode`; NamedTuple classes only from fedbench's modules. Tensors go to
    `device` (when given), row-sparse ones to host memory (`sparse_rows`), where the fresh
    state keeps them too. Raises ValueError (or another error) on a malformed structure."""
    if data is None or isinstance(data, (bool, int, float, str)):
        return data
    if not isinstance(data, dict) or len(data) not in (1, 2):
        raise ValueError("malformed checkpoint structure")
    if "T" in data:
        t = tensors[int(data["T"])]
        return t if device is None else t.to(device)
    if "R" in data:
        return sparse_rows(data["R"], tensors)
    if "L" in data:
        return [decode(v, tensors, device) for v in data["L"]]
    if "U" in data:
        return tuple(decode(v, tensors, device) for v in data["U"])
    if "D" in data:
        return {str(k): decode(v, tensors, device) for k, v in data["D"].items()}
    if "N" in data:
        cls = _named_tuple(str(data["N"]))
        return cls(*(decode(v, tensors, device) for v in data["v"]))
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


# --------------------------------------------------------------------------- row-sparse state
#
# Cross-device per-client state ([n, d], e.g. SCAFFOLD's c_i for 10⁶ clients) is mapped zero
# pages (`zeroed_host`) of which a run writes the rows of the clients it sampled. A checkpoint
# stores only the rows that hold a bit other than zero, with their indices, and loading writes
# them into a fresh `zeroed_host` tensor: the same tensor bit for bit (a row written with +0.0
# is one never written; −0.0 and NaN rows are stored). To find those rows without reading all
# n rows (a read maps every page: 0.8-1.7 s for 10⁵ × 4,554 float32 on the 2-core EPYC, 14-23 s
# at 10⁶ with other work on it, against 0.2-0.6 s for 1,000 written rows), the kernel's
# page table says which pages were ever written: in private anonymous memory a page neither
# resident nor swapped out (`/proc/self/pagemap`, bits 63 and 62) reads as zeros, whoever wrote
# the others (scatter_rows, `fill_`, a plugin's indexing): nothing to track, no write missed.
# Only the other pages are read, and no page beyond them. Where pagemap cannot be read (not
# Linux, a sandbox), or fails its probe, every page is read.

PAGE = mmap.PAGESIZE
PAGEMAP = Path("/proc/self/pagemap")
_PAGEMAP_CHUNK = 1 << 20  # entries read at a time (8 MiB)
_SCAN_BYTES = 16 * 2**20  # pages read at a time when looking for non-zero rows


def written_rows(rows: torch.Tensor) -> torch.Tensor:
    """The indices `[k]` (int64, ascending) of the rows of `rows` `[n, d]` that hold a bit
    other than zero; `rows` is a tensor of mapped zero pages (`mapped_zero_pages`: it starts
    its mapping, on a page boundary). Reads only the pages the kernel holds (`_live_pages`),
    every page where that is unknown."""
    flat = _bits(rows).view(-1)  # [n · w] integers, w of them a row
    nbytes = flat.numel() * flat.element_size()
    live = _live_pages(rows.data_ptr(), nbytes) if _pagemap_works() else None
    pages = torch.arange(-(-nbytes // PAGE)) if live is None else live.nonzero().squeeze(1)
    written = torch.zeros(rows.shape[0], dtype=torch.bool)  # [n]
    step = max(1, _SCAN_BYTES // PAGE)
    for a in range(0, pages.numel(), step):  # (nothing kept between blocks: no heap grows)
        written[_rows_on(flat, pages[a : a + step], rows)] = True
    return written.nonzero().squeeze(1)


def _rows_on(flat: torch.Tensor, pages: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The rows (some more than once) with a non-zero element on `pages` (ascending page numbers) of
    `flat`, the integers of `rows`. A page's first and last non-zero elements name two such
    rows; any other lies wholly between them, on that page, and is read (no page faulted)."""
    w, per_page = flat.numel() // rows.shape[0], PAGE // flat.element_size()
    block = _pages_of(flat, pages, per_page)  # [c, per_page]
    some = block.any(1)  # [c]
    pages, mask = pages[some], block[some].ne(0).to(torch.uint8)  # the pages not zero
    first = pages * per_page + mask.argmax(1)  # element index of each page's first non-zero
    last = pages * per_page + (per_page - 1) - mask.flip(1).argmax(1)
    lo, hi = first // w, last // w
    between = _ranges(lo + 1, hi)  # rows strictly inside a page (rows shorter than a page)
    return torch.cat([lo, hi, between[_nonzero(rows, between)]])


def _pages_of(flat: torch.Tensor, pages: torch.Tensor, per_page: int) -> torch.Tensor:
    """`[c, per_page]`: the elements of `flat` on `pages` (ascending), a partial last page
    padded with zeros; a view where the pages are consecutive."""
    full = flat.numel() // per_page
    grid = flat[: full * per_page].view(full, per_page)  # [full, per_page]
    if pages.numel() == 0 or int(pages[-1]) < full:
        if pages.numel() and int(pages[-1] - pages[0]) + 1 == pages.numel():
            return grid[int(pages[0]) : int(pages[-1]) + 1]
        return grid.index_select(0, pages)
    tail = flat.new_zeros(1, per_page)
    tail[0, : flat.numel() - full * per_page] = flat[full * per_page :]
    return torch.cat([grid.index_select(0, pages[:-1]), tail])


def _ranges(starts: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """The integers of every range [starts[j], ends[j]), one after another."""
    counts = (ends - starts).clamp(min=0)
    skip = torch.repeat_interleave(counts.cumsum(0) - counts, counts)
    return torch.repeat_interleave(starts, counts) + torch.arange(int(counts.sum())) - skip


def _live_pages(address: int, nbytes: int) -> torch.Tensor | None:
    """`[pages]` bool: whether each page of [address, address + nbytes) is resident or
    swapped out (ever written, or read), from /proc/self/pagemap; None when it cannot be read."""
    first = address // PAGE
    count = (address + nbytes - 1) // PAGE - first + 1
    live = torch.empty(count, dtype=torch.bool)
    try:
        with PAGEMAP.open("rb") as f:
            for a in range(0, count, _PAGEMAP_CHUNK):
                raw = bytearray(8 * min(_PAGEMAP_CHUNK, count - a))
                f.seek((first + a) * 8)
                if f.readinto(raw) != len(raw):
                    return None
                entries = torch.frombuffer(raw, dtype=torch.int64)  # one a page
                live[a : a + entries.numel()] = (entries >> 62) != 0  # present or swapped
    except (OSError, ValueError):
        return None
    return live


@functools.cache
def _pagemap_works() -> bool:
    """Whether pagemap tells a written page from an untouched one here (a probe mapping)."""
    probe = mmap.mmap(-1, 2 * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    view = torch.frombuffer(probe, dtype=torch.uint8)
    view[0] = 1
    live = _live_pages(view.data_ptr(), 2 * PAGE)
    return live is not None and live.tolist() == [True, False]


def _nonzero(rows: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """`[c]` bool: whether row ids[j] has a bit other than zero (−0.0 counts), read in blocks."""
    per = max(1, _SCAN_BYTES // max(1, rows.shape[1] * rows.element_size()))
    out = torch.empty(ids.numel(), dtype=torch.bool)
    for a in range(0, ids.numel(), per):
        block = rows.index_select(0, ids[a : a + per])  # [b, d]
        out[a : a + per] = _bits(block).ne(0).any(1)
    return out


def _bits(block: torch.Tensor) -> torch.Tensor:
    """`block` `[b, d]` reinterpreted as integers of its element size (bytes when odd)."""
    as_int = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    return block.view(as_int.get(block.element_size(), torch.uint8))


def sparse_rows(entry: Any, tensors: list[torch.Tensor]) -> torch.Tensor:
    """The `[n, d]` host tensor of a stored entry [n, i, j]: zero but for rows tensors[i]
    (int64 `[k]`, ascending, unique, in 0..n − 1) which hold tensors[j] (`[k, d]`). The file
    is untrusted: anything else raises ValueError naming it, before any row is written."""
    if not (isinstance(entry, list) and len(entry) == 3 and all(type(v) is int for v in entry)):
        raise ValueError("malformed row-sparse entry")
    n, i, j = entry
    if not (0 <= i < len(tensors) and 0 <= j < len(tensors)) or n < 0:
        raise ValueError("malformed row-sparse entry")
    index, values = tensors[i], tensors[j]
    if index.dtype != torch.int64 or index.dim() != 1 or index.device.type != "cpu":
        raise ValueError("row indices are not an int64 vector")
    if values.dim() != 2 or values.shape[0] != index.numel() or values.device.type != "cpu":
        raise ValueError(f"rows are {tuple(values.shape)}, not [{index.numel()}, d]")
    ascending = bool((index[1:] > index[:-1]).all())
    if index.numel() and not (ascending and int(index[0]) >= 0 and int(index[-1]) < n):
        raise ValueError(f"row indices are not ascending and unique in 0..{n - 1}")
    rows = zeroed_host((n, values.shape[1]), values.dtype)  # [n, d]
    rows.index_copy_(0, index, values)
    return rows


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
    payload = {"format": FORMAT, "key": key, "meta": json.dumps(meta), "tensors": tensors}
    tmp = folder / f".{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}.pt.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _write(tmp, payload)
        tmp.replace(folder / f"{key}.pt")  # atomic rename on POSIX
    except OSError as e:
        tmp.unlink(missing_ok=True)
        reason = (
            "no space left on device"
            if e.errno in (errno.ENOSPC, errno.EDQUOT)
            else (e.strerror or str(e)).lower()
        )
        raise CheckpointError(f"cannot write checkpoint in {folder}: {reason}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write(path: Path, payload: dict[str, Any]) -> None:
    """Stream `payload` into `path` (no second copy of its tensors in memory) and sync it."""
    with path.open("wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())


def load(folder: Path, key: str, device: torch.device) -> Checkpoint | None:
    """The checkpoint of `key`, or None when there is none, it cannot be read, it names a
    class outside `state_classes`, its row-sparse entries are malformed, it has an older
    format, or it was written for another job (its stored key differs). A file of this job
    that is ignored is said in one warning line. Its values are not checked against the job
    here: see `problem`."""
    path = folder / f"{key}.pt"
    if not path.is_file():
        return None
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(raw, dict) or raw.get("key") != key:
            return None  # another job's file: start the run over
        if raw.get("format") != FORMAT:
            raise ValueError(f"format {raw.get('format')!r}, not {FORMAT!r}")
        tensors = list(raw["tensors"])
        meta = json.loads(raw["meta"])
        return Checkpoint(  # as stored: `problem` checks the values against the job
            meta["round"],
            decode(meta["state"], tensors, device),
            meta["bits_up"],
            meta["bits_down"],
            meta["wall_s"],
            dict(decode(meta["extra"], tensors, device)),
        )
    except Exception as e:  # a corrupt, foreign or incompatible checkpoint: start the run over
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        print(
            f"warning: job {key}: ignoring its checkpoint ({reason}); starting from round 0",
            file=sys.stderr,
            flush=True,
        )
        return None


def remove(folder: Path, key: str) -> None:
    (folder / f"{key}.pt").unlink(missing_ok=True)
