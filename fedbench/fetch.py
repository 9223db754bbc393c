"""Download the official files of file datasets once, into a cache directory
(`fedbench data fetch NAME`). Nothing here runs while a grid runs: datasets only read the
cache (`mnist` with no path reads `<cache>/mnist`).

- Cache: `$FEDBENCH_DATA`, else `~/.cache/fedbench/data`; one folder per dataset.
- Resumable: a file is written to `NAME.part` and renamed when complete and checked; an
  interrupted download resumes from the bytes it has (HTTP Range; a server that ignores the
  range makes it start over).
- Checked: each file's digest is compared with the published one where the project knows it
  (md5 for MNIST, Fashion-MNIST and the CIFAR archives, as torchvision's dataset classes list
  them); every file's sha256 is then written to `<cache>/<name>/SHA256SUMS`, and a file already
  in the cache is accepted only when it matches that line. LIBSVM's a9a/w8a publish no digest:
  they are checked against the sha256 recorded at their first download, which is recorded
  only when the body had exactly the length the server announced (a cut body is never pinned).
- Bounded: each file is capped at its dataset's expected size × `SIZE_MARGIN` (an endless
  body is stopped, not written), a whole `fetch` ends within `timeout_s` (a trickling server
  cannot stall it), redirects to another host are refused, and every failure is one line.
- `mirror` (or `$FEDBENCH_DATA_MIRROR`) replaces the directory of every URL, e.g. a local
  server for tests or an institute mirror.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple

from fedbench.data.base import DataError

ENV_CACHE = "FEDBENCH_DATA"
ENV_MIRROR = "FEDBENCH_DATA_MIRROR"
CHUNK = 1 << 16
SIZE_MARGIN = 2  # a file may be up to this many times its dataset's expected largest file
TIMEOUT_S = 3600.0  # a whole `fetch` (every file of one dataset) ends within this
READ_TIMEOUT_S = 60.0  # one socket read, at most (and never past the total deadline)


class Source(NamedTuple):
    files: tuple[tuple[str, str], ...]  # (url, published digest "md5:..." or "")
    extract: bool  # .tar.gz archives are extracted into the dataset folder
    use: str  # how a grid names the data once fetched
    mib: float  # the expected size of its largest file, in MiB (the cap's base)


_LECUN = "https://ossci-datasets.s3.amazonaws.com/mnist/"  # torchvision's MNIST mirror
_FASHION = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_LIBSVM = "https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/binary/"

SOURCES: dict[str, Source] = {
    "mnist": Source(
        (
            (_LECUN + "train-images-idx3-ubyte.gz", "md5:f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            (_LECUN + "train-labels-idx1-ubyte.gz", "md5:d53e105ee54ea40749a09fcbcd1e9432"),
            (_LECUN + "t10k-images-idx3-ubyte.gz", "md5:9fb629c4189551a2d022fa330f9573f3"),
            (_LECUN + "t10k-labels-idx1-ubyte.gz", "md5:ec29112dd5afa0611ce80d1b7f02629c"),
        ),
        False,
        'dataset = "mnist"',
        9.5,
    ),
    "fashion_mnist": Source(
        (  # md5 as listed by torchvision's FashionMNIST [mem: not re-checked against it]
            (_FASHION + "train-images-idx3-ubyte.gz", "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            (_FASHION + "train-labels-idx1-ubyte.gz", "md5:25c81989df183df01b3e8a0aad5dffbe"),
            (_FASHION + "t10k-images-idx3-ubyte.gz", "md5:bef4ecab320f06d8554ea6380940ec79"),
            (_FASHION + "t10k-labels-idx1-ubyte.gz", "md5:bb300cfdad3c16e7a12a480ee83cd310"),
        ),
        False,
        'dataset = "fashion_mnist"',
        25.2,
    ),
    "cifar10": Source(
        (
            (
                "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                "md5:c58f30108f718f92721af3b95e74349a",
            ),
        ),
        True,
        'dataset = "cifar10"',
        162.6,
    ),
    "cifar100": Source(
        (
            (
                "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                "md5:eb9058c3a382ffc7106e4002c42a8d85",
            ),
        ),
        True,
        'dataset = "cifar100"',
        161.2,
    ),
    # LIBSVM's text files are a few MiB [mem: sizes not re-checked]; 8 MiB leaves room.
    "a9a": Source(
        ((_LIBSVM + "a9a", ""), (_LIBSVM + "a9a.t", "")),
        False,
        'dataset = "libsvm:{dir}/a9a"',
        8.0,
    ),
    "w8a": Source(
        ((_LIBSVM + "w8a", ""), (_LIBSVM + "w8a.t", "")),
        False,
        'dataset = "libsvm:{dir}/w8a"',
        8.0,
    ),
}
# Datasets whose files need a preprocessing pipeline of their own (not a download).
NOT_FETCHED = {
    "femnist": "LEAF's femnist is built by LEAF's own scripts (github.com/TalwalkarLab/leaf, "
    "data/femnist/preprocess.sh); point femnist:DIR at its data/ folder",
    "shakespeare": "LEAF's shakespeare is built by LEAF's own scripts "
    "(github.com/TalwalkarLab/leaf, data/shakespeare/preprocess.sh)",
}


def cache_dir() -> Path:
    """`$FEDBENCH_DATA`, else ~/.cache/fedbench/data."""
    env = os.environ.get(ENV_CACHE)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fedbench" / "data"


def dataset_dir(name: str) -> Path:
    return cache_dir() / name


def cached(name: str) -> Path | None:
    """The cache folder of a fetched dataset, None when it was never fetched completely."""
    folder = dataset_dir(name)
    return folder if (folder / "SHA256SUMS").is_file() else None


def _digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _sums(folder: Path) -> dict[str, str]:
    path = folder / "SHA256SUMS"
    if not path.is_file():
        return {}
    pairs = (line.split(maxsplit=1) for line in path.read_text().splitlines() if line.strip())
    return {f.strip().lstrip("*"): h for h, f in pairs}


def max_bytes(name: str) -> int:
    """The largest file `fetch` writes for dataset `name`: its expected size × SIZE_MARGIN."""
    return int(SOURCES[name].mib * SIZE_MARGIN * (1 << 20))


class _SameHost(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only on the same host (and never from https down to http): a
    mirror that sends the client elsewhere is a configuration to look at, not to trust."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        old, new = urllib.parse.urlsplit(req.full_url), urllib.parse.urlsplit(newurl)
        if new.hostname != old.hostname or (old.scheme == "https" and new.scheme != "https"):
            raise DataError(
                f"cannot download {req.full_url}: redirected to another host ({new.hostname}); "
                "refused: fetch from that URL with --mirror if it is trusted"
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_SameHost)


class _CutError(Exception):
    """The body ended before the announced length (kept in `.part`; a rerun resumes it)."""


def _expected_length(resp: http.client.HTTPResponse, have: int, resumed: bool) -> int | None:
    """The total file size the reply announces (Content-Range's total on a resumed reply,
    else Content-Length), None when it announces none (a chunked body)."""
    total = (resp.headers.get("Content-Range") or "").rpartition("/")[2]
    if resumed and total.isdigit():
        return int(total)
    length = resp.headers.get("Content-Length")
    if length is None or not length.strip().isdigit():
        return None
    return int(length) + (have if resumed else 0)


def _set_read_timeout(resp: http.client.HTTPResponse, seconds: float) -> None:
    """Shorten the socket's timeout to what is left of the deadline (best effort: the
    attribute chain is http.client's, stable since 3.5)."""
    sock = getattr(getattr(getattr(resp, "fp", None), "raw", None), "_sock", None)
    if sock is not None:
        sock.settimeout(max(seconds, 0.01))


def _download(
    url: str, dest: Path, cap: int, deadline: float, timeout_s: float, say: Callable[[str], None]
) -> bool:
    """`url` to `dest` by way of `dest.part`, resuming a partial file with an HTTP Range.
    True when the body had exactly the announced length (False: the server announced none).
    Raises DataError (one line) on a cut body, a body over `cap` bytes, or the deadline."""
    part = dest.with_name(dest.name + ".part")
    for attempt in range(2):  # a 416 (stale `.part`) restarts once, without a range
        have = part.stat().st_size if part.exists() else 0
        if have > cap:
            part.unlink()
            have = 0
        req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            measured = _receive(req, part, have, cap, deadline, say)
            part.replace(dest)
            return measured
        except urllib.error.HTTPError as e:
            if e.code == 416 and have and attempt == 0:
                say(f"{dest.name}: the partial file does not fit the server's; starting over")
                part.unlink()
                continue
            raise DataError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
        except _CutError as e:
            raise DataError(
                f"cannot download {url}: {e}; the partial file is kept and the next "
                "`fedbench data fetch` resumes it"
            ) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
            if time.monotonic() >= deadline:
                raise DataError(
                    f"cannot download {url}: did not finish within {timeout_s:g} s; the partial "
                    "file is kept and the next `fedbench data fetch` resumes it"
                ) from None
            reason = getattr(e, "reason", e)
            raise DataError(
                f"cannot download {url} ({reason}); offline? the partial file is kept and the "
                "next `fedbench data fetch` resumes it"
            ) from None
    raise AssertionError("unreachable")  # the loop returns or raises


def _receive(
    req: urllib.request.Request,
    part: Path,
    have: int,
    cap: int,
    deadline: float,
    say: Callable[[str], None],
) -> bool:
    """One request: append or write the body to `part`; see `_download`."""
    name = part.name.removesuffix(".part")
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    with _OPENER.open(req, timeout=min(READ_TIMEOUT_S, left)) as resp:
        resumed = have > 0 and resp.status == 206
        if have and not resumed:
            say(f"{name}: the server ignores ranges; starting over")
        elif resumed:
            say(f"{name}: resuming at byte {have}")
        total = _expected_length(resp, have, resumed)
        if total is not None and total > cap:
            part.unlink(missing_ok=True)
            raise DataError(f"cannot download {req.full_url}: more than {cap} bytes announced "
                            f"({total}); not the expected file")  # fmt: skip
        got = have if resumed else 0
        with part.open("ab" if resumed else "wb") as f:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                _set_read_timeout(resp, min(READ_TIMEOUT_S, left))
                try:
                    block = resp.read1(CHUNK)
                except http.client.IncompleteRead:
                    raise _CutError(f"the body was cut short after {got} bytes") from None
                except http.client.HTTPException as e:
                    raise _CutError(f"the body was cut short after {got} bytes ({e!r})") from None
                if not block:
                    break
                got += len(block)
                if got > cap:
                    f.close()
                    part.unlink()
                    raise DataError(f"cannot download {req.full_url}: more than {cap} bytes; "
                                    "stopped (not the expected file)")  # fmt: skip
                f.write(block)
        if total is not None and got != total:
            raise _CutError(f"the body ended after {got} of {total} bytes")
        return total is not None


def fetch(
    name: str,
    mirror: str | None = None,
    digests: Mapping[str, str] | None = None,
    say: Callable[[str], None] = lambda _: None,
    timeout_s: float = TIMEOUT_S,
) -> Path:
    """Download dataset `name` into its cache folder (see the module docstring) and return it.

    `digests` overrides the published digest per file name ("sha256:..." or "md5:..."). Files
    already in the cache with the recorded sha256 are not downloaded again. The whole call
    ends within `timeout_s` seconds (a partial file is kept for the next call)."""
    if name in NOT_FETCHED:
        raise DataError(f"fedbench data fetch {name}: not downloadable as is: {NOT_FETCHED[name]}")
    if name not in SOURCES:
        import difflib

        close = difflib.get_close_matches(name, list(SOURCES), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise DataError(f"no dataset {name!r} to fetch{hint}; allowed: {', '.join(SOURCES)}")
    src = SOURCES[name]
    deadline = time.monotonic() + timeout_s
    mirror = mirror or os.environ.get(ENV_MIRROR)
    folder = dataset_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    sums = _sums(folder)
    for url, published in src.files:
        file = url.rsplit("/", 1)[1]
        if mirror:
            url = mirror.rstrip("/") + "/" + file
        dest = folder / file
        if dest.is_file() and sums.get(file) == _digest(dest, "sha256"):
            say(f"{file}: in the cache, sha256 checked")
            continue
        say(f"{file}: downloading {url}")
        measured = _download(url, dest, max_bytes(name), deadline, timeout_s, say)
        want = (digests or {}).get(file, published)
        if want:
            algo, _, value = want.partition(":")
            got = _digest(dest, algo)
            if got != value.lower():
                dest.unlink()
                raise DataError(
                    f"{url}: {algo} {got} does not match the published {value}; the file was "
                    "deleted (a corrupted download or a changed file)"
                )
        elif file in sums and sums[file] != _digest(dest, "sha256"):
            dest.unlink()
            raise DataError(f"{url}: sha256 differs from the one recorded at the first download")
        elif not measured:  # nothing to check it against: never pin an unverified body
            dest.unlink()
            raise DataError(
                f"{url}: the server announced no length and {file} has no published digest, so "
                "a complete download cannot be told from a cut one; fetch from a server that "
                "sends Content-Length (--mirror)"
            )
        sums[file] = _digest(dest, "sha256")
        if src.extract:
            with tarfile.open(dest, "r:gz") as tar:
                tar.extractall(folder, filter="data")
            say(f"{file}: extracted into {folder}")
    lines = "".join(f"{h}  {f}\n" for f, h in sorted(sums.items()))
    (folder / "SHA256SUMS").write_text(lines, encoding="utf-8")
    return folder
