"""Names from a database, made safe for the two places they reach: file paths and terminals.

A database can come from elsewhere and hold any experiment name, configuration value or error
text. A name becomes a file name only through :func:`slug` (no separator, no "..", no leading
dot, no control character: the file lands in the directory asked for and nowhere else), and
reaches a terminal only through :func:`printable` (control characters, escape sequences
included, spelled out as ``\\x1b``). Files are written by :func:`atomic_write`: a temp file in
the target's directory renamed over it, so a full disk or a killed report never leaves half a
file.
"""

from __future__ import annotations

import os
import re
import tempfile
import unicodedata
from collections.abc import Callable
from pathlib import Path

from fedbench.report.labels import ReportError
from fedbench.report_options import printable

__all__ = ["atomic_write", "printable", "slug"]

SLUG_MAX = 80
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=,-]+")


def slug(name: object, fallback: str = "experiment") -> str:
    """``name`` as one safe file-name component: runs of other characters than letters,
    digits and ``._+=,-`` become "_", leading dots and dashes are dropped (no hidden file, no
    option, never "." or ".."), at most :data:`SLUG_MAX` characters; ``fallback`` when nothing
    is left. "../../OUTSIDE/pwn" -> "_OUTSIDE_pwn"."""
    text = unicodedata.normalize("NFKD", str(name)).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"\.{2,}", "_", text)  # no ".." even inside a name
    out = re.sub("_+", "_", _UNSAFE.sub("_", text)).lstrip(".-")[:SLUG_MAX].rstrip(".")
    return out if out.strip("_") else fallback


def atomic_write(path: Path, write: Callable[[Path], object]) -> Path:
    """Write ``path`` through ``write(temp_path)`` into a temp file in the same directory, then
    rename it over ``path``: readers see the old file or the whole new one, and a failed write
    (a full disk, a killed process) leaves no partial file. The directory is created. A target
    that is a directory, or that cannot be written, is a :class:`ReportError` of one line."""
    path = Path(path)
    if path.is_dir():
        raise ReportError(f"{path}: is a directory; give a file name to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:40]}.", suffix=".part", dir=path.parent)
    except OSError as e:
        raise ReportError(f"{path}: cannot write ({e.strerror or e})") from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        Path(tmp).chmod(0o666 & ~umask)  # as open() would create it, not mkstemp's 0600
        write(Path(tmp))
        Path(tmp).replace(path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise ReportError(f"{path}: cannot write ({e.strerror or e}); nothing written") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
