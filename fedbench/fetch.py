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
  they are checked against the sha256 recorded at their first download.
- `mirror` (or `$FEDBENCH_DATA_MIRROR`) replaces the directory of every URL, e.g. a local
  server for tests or an institute mirror.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple

from fedbench.data.base import DataError

ENV_CACHE = "FEDBENCH_DATA"
ENV_MIRROR = "FEDBENCH_DATA_MIRROR"
CHUNK = 1 << 16


class Source(NamedTuple):
    files: tuple[tuple[str, str], ...]  # (url, published digest "md5:..." or "")
    extract: bool  # .tar.gz archives are extracted into the dataset folder
    use: str  # how a grid names the data once fetched


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
    ),
    "a9a": Source(
        ((_LIBSVM + "a9a", ""), (_LIBSVM + "a9a.t", "")), False, 'dataset = "libsvm:{dir}/a9a"'
    ),
    "w8a": Source(
        ((_LIBSVM + "w8a", ""), (_LIBSVM + "w8a.t", "")), False, 'dataset = "libsvm:{dir}/w8a"'
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


def _download(url: str, dest: Path, say: Callable[[str], None]) -> None:
    """`url` to `dest` by way of `dest.part`, resuming a partial file with an HTTP Range."""
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            resumed = have > 0 and resp.status == 206
            if have and not resumed:
                say(f"{dest.name}: the server ignores ranges; starting over")
            elif resumed:
                say(f"{dest.name}: resuming at byte {have}")
            with part.open("ab" if resumed else "wb") as f:
                for block in iter(lambda: resp.read(CHUNK), b""):
                    f.write(block)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the partial file is already complete
            part.replace(dest)
            return
        raise DataError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DataError(
            f"cannot download {url} ({reason}); offline? the partial file is kept and the "
            "next `fedbench data fetch` resumes it"
        ) from None
    part.replace(dest)


def fetch(
    name: str,
    mirror: str | None = None,
    digests: Mapping[str, str] | None = None,
    say: Callable[[str], None] = lambda _: None,
) -> Path:
    """Download dataset `name` into its cache folder (see the module docstring) and return it.

    `digests` overrides the published digest per file name ("sha256:..." or "md5:..."). Files
    already in the cache with the recorded sha256 are not downloaded again."""
    if name in NOT_FETCHED:
        raise DataError(f"fedbench data fetch {name}: not downloadable as is: {NOT_FETCHED[name]}")
    if name not in SOURCES:
        import difflib

        close = difflib.get_close_matches(name, list(SOURCES), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise DataError(f"no dataset {name!r} to fetch{hint}; allowed: {', '.join(SOURCES)}")
    src = SOURCES[name]
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
        _download(url, dest, say)
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
        sums[file] = _digest(dest, "sha256")
        if src.extract:
            with tarfile.open(dest, "r:gz") as tar:
                tar.extractall(folder, filter="data")
            say(f"{file}: extracted into {folder}")
    lines = "".join(f"{h}  {f}\n" for f, h in sorted(sums.items()))
    (folder / "SHA256SUMS").write_text(lines, encoding="utf-8")
    return folder
