"""Where and how a run ran (issue 26 item 7): fedbench's git commit and whether its checkout
had uncommitted changes, the grid file (absolute path, sha256 of its content), the CPU model
and the machine's load average when the run started and when it ended.

A wall-clock number means little without them: the same grid on a loaded machine, or on the
code of another commit, gives other seconds (and maybe other numbers). The runner records
:func:`at_start` with `Store.set_provenance` once a run is claimed and started, and
:func:`at_end` when it finishes; `fedbench show` and the HTML report print them
(:func:`lines`).

Everything here is best effort and never fails a run: a field that cannot be known is None.
The commit is read from the ``.git`` files directly (no process spawned); only the dirty flag
needs ``git status``, run once per process with a short timeout.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import socket
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

GIT_TIMEOUT_S = 3.0  # `git status` for the dirty flag; slower than this: unknown (None)
PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # the checkout fedbench runs from


def _git_dir(root: Path) -> Path | None:
    """The git directory of the checkout at `root`: `.git` itself, or where a worktree's
    `.git` file ("gitdir: PATH") points. None when `root` is not a git checkout (an installed
    package)."""
    dot = root / ".git"
    if dot.is_dir():
        return dot
    if dot.is_file():
        try:
            first = dot.read_text(encoding="utf-8").strip()
        except OSError:
            return None
        if first.startswith("gitdir:"):
            path = Path(first.removeprefix("gitdir:").strip())
            path = path if path.is_absolute() else (root / path)
            return path if path.is_dir() else None
    return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _is_sha(text: str | None) -> bool:
    return text is not None and len(text) in (40, 64) and all(c in "0123456789abcdef" for c in text)


def read_commit(root: Path = PACKAGE_ROOT) -> str | None:
    """The commit checked out at `root` (`git rev-parse HEAD`), read from the git files: HEAD
    (a sha when detached, else "ref: refs/heads/..."), the ref in the git directory or in the
    common one of a worktree, else in packed-refs. None when not a checkout or unreadable."""
    git = _git_dir(root)
    if git is None:
        return None
    head = _read(git / "HEAD")
    if head is None:
        return None
    if _is_sha(head):
        return head
    if not head.startswith("ref:"):
        return None
    ref = head.removeprefix("ref:").strip()
    common = _read(git / "commondir")  # a linked worktree shares refs with the main checkout
    dirs = [git] + ([(git / common).resolve()] if common else [])
    for d in dirs:
        sha = _read(d / ref)
        if _is_sha(sha):
            return sha
    for d in dirs:
        packed = _read(d / "packed-refs") or ""
        for line in packed.splitlines():
            sha, _, name = line.partition(" ")
            if name == ref and _is_sha(sha):
                return sha
    return None


@functools.lru_cache(maxsize=4)
def read_dirty(root: Path = PACKAGE_ROOT) -> bool | None:
    """Whether tracked files of the checkout at `root` differ from its commit (`git status
    --porcelain --untracked-files=no` prints anything); None when not a checkout, git is
    missing or slower than GIT_TIMEOUT_S. Once per process: a launch's jobs share it."""
    if _git_dir(root) is None:
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def cpu_model() -> str:
    """The CPU's "model name" from /proc/cpuinfo (Linux), else what `platform` knows."""
    text = _read(Path("/proc/cpuinfo")) or ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (runnable processes), None where unknown."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def grid_file(path: str | None, text: str | None = None) -> dict[str, Any]:
    """`grid_path` (absolute) and `grid_sha256` of the file's bytes; when the file cannot be
    read here (a worker on another machine) the hash is that of `text`, the grid text the
    database holds, encoded as UTF-8 (the bytes of a UTF-8 grid file)."""
    if not path:
        return {"grid_path": None, "grid_sha256": None}
    p = Path(path).expanduser().absolute()
    try:
        digest: str | None = hashlib.sha256(p.read_bytes()).hexdigest()
    except OSError:
        digest = None if text is None else hashlib.sha256(text.encode("utf-8")).hexdigest()
    return {"grid_path": str(p), "grid_sha256": digest}


def at_start(grid_path: str | None, grid_text: str | None = None) -> dict[str, Any]:
    """The provenance recorded when a run starts (see the module docstring)."""
    return {
        "fedbench_commit": read_commit(),
        "fedbench_dirty": read_dirty(),
        **grid_file(grid_path, grid_text),
        "host": socket.gethostname(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "load_start": load_average(),
    }


def at_end(start: Mapping[str, Any]) -> dict[str, Any]:
    """`start` with the load average when the run ended."""
    return {**start, "load_end": load_average()}


LABELS = (
    ("fedbench_commit", "commit"),
    ("grid_path", "grid"),
    ("grid_sha256", "grid sha256"),
    ("cpu", "cpu"),
    ("load_start", "load start"),
    ("load_end", "load end"),
)


def _value(key: str, v: Any) -> str:
    if v is None:
        return "unknown"
    if key.startswith("load_") and isinstance(v, Sequence):
        return " / ".join(f"{x:g}" for x in v) + " (1/5/15 min)"
    return str(v)


def lines(prov: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """(label, text) pairs for people: commit (with "+ uncommitted changes" when dirty),
    grid path and hash, cpu, load at start and end; [] when nothing was recorded."""
    if not prov:
        return []
    out = []
    for key, label in LABELS:
        if key not in prov:
            continue
        text = _value(key, prov[key])
        if key == "fedbench_commit":
            dirty = prov.get("fedbench_dirty")
            text += {True: " + uncommitted changes", False: "", None: " (dirty: unknown)"}[dirty]
            if prov[key] is None:
                text = "unknown (not a git checkout)"
        if key == "cpu" and prov.get("cpu_count"):
            text += f" ({prov['cpu_count']} logical CPUs)"
        out.append((label, text))
    return out


def load_range(provs: Sequence[Mapping[str, Any] | None]) -> tuple[float, float] | None:
    """The lowest and highest 1-minute load average recorded at the start or end of these
    runs (a wall-clock plot's caption states it), None when none was."""
    values = [
        float(p[k][0])
        for p in provs
        if p
        for k in ("load_start", "load_end")
        if isinstance(p.get(k), list) and p[k]
    ]
    return (min(values), max(values)) if values else None


def recorded(reader: Any, run_id: int) -> dict[str, Any] | None:
    """The provenance recorded for run `run_id` from a `Store` (`Store.provenance`) or the
    stdlib SQLite reader of `fedbench show` (one SELECT in its read snapshot); None when none
    was recorded or the database predates the column."""
    own = getattr(reader, "provenance", None)
    if callable(own):
        value = own(run_id)
        return value if isinstance(value, dict) else None
    import json

    try:
        with reader._snapshot() as query:  # SqliteReader: no provenance read of its own yet
            rows = query("SELECT provenance FROM runs WHERE id = :id", {"id": int(run_id)})
    except Exception:  # an old file (no such column), a reader without snapshots
        return None
    raw = rows[0][0] if rows else None
    if isinstance(raw, (str, bytes)):
        try:
            raw = json.loads(raw)
        except ValueError:
            return None
    return raw if isinstance(raw, dict) else None
