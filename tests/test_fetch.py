"""`fedbench data fetch` against a local HTTP server on 127.0.0.1 serving small files in the
real formats (gzipped IDX, the CIFAR python tarball, LIBSVM text): download, checksum,
resume, cache reuse, offline error; and that a fetched `mnist` / `cifar10` loads with no path
while loading never downloads."""

from __future__ import annotations

import gzip
import hashlib
import socket
import tarfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from test_loaders import cifar10_dir, mnist_dir, task
from typer.testing import CliRunner

from fedbench import fetch as fetchlib
from fedbench.cli import app
from fedbench.data import DataError, load_federated


class Server:
    """Serves a folder; records requests; honours Range unless `ranges` is False."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.ranges = True
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *a: Any, **kw: Any) -> None:
                super().__init__(*a, directory=str(server.root), **kw)

            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                file = server.root / self.path.lstrip("/")
                if not file.is_file():
                    self.send_error(404)
                    return
                body = file.read_bytes()
                start = int(rng.split("=")[1].split("-")[0]) if rng and server.ranges else 0
                if start >= len(body) and start:
                    self.send_error(416)
                    return
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                self.wfile.write(body[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def sha(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """Official file names in real formats, and an empty cache in $FEDBENCH_DATA."""
    root = tmp_path / "www"
    arrays = mnist_dir(root / "m", n_train=40, n_test=9, gz=False)
    for stem in arrays:  # the official files are all gzipped
        (root / f"{stem}.gz").write_bytes(gzip.compress((root / "m" / stem).read_bytes()))
    cifar10_dir(root / "c")
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(root / "c" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    (root / "a9a").write_text("+1 3:1 11:1\n-1 5:1 14:1\n", encoding="utf-8")
    (root / "a9a.t").write_text("-1 3:1\n", encoding="utf-8")
    monkeypatch.setenv(fetchlib.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.delenv(fetchlib.ENV_MIRROR, raising=False)
    server = Server(root)
    yield server
    server.close()


def mnist_digests(server: Server) -> dict[str, str]:
    return {p.name: sha(p) for p in server.root.glob("*.gz") if "idx" in p.name}


def test_fetch_mnist_then_load_it_without_a_path(served: Server, tmp_path: Path) -> None:
    folder = fetchlib.fetch("mnist", mirror=served.url, digests=mnist_digests(served))
    assert folder == tmp_path / "cache" / "mnist"
    assert sorted(p for p, _ in served.requests) == sorted(
        f"/{s}.gz" for s in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    )  # fmt: skip
    sums = (folder / "SHA256SUMS").read_text().splitlines()
    assert len(sums) == 4 and all(len(line.split()[0]) == 64 for line in sums)
    het = load_federated(task("mnist"), seed=0).heterogeneity()  # no path: the cache
    assert het["clients"] == 4 and het["samples_mean"] * 4 == 40  # the served training split
    # a second fetch finds every file in the cache: no request
    served.requests.clear()
    fetchlib.fetch("mnist", mirror=served.url, digests=mnist_digests(served))
    assert served.requests == []


def test_published_digest_mismatch_deletes_the_file(served: Server) -> None:
    with pytest.raises(DataError, match=r"md5 [0-9a-f]{32} does not match the published"):
        fetchlib.fetch("mnist", mirror=served.url)  # the small files are not the official ones
    folder = fetchlib.dataset_dir("mnist")
    assert not any(folder.glob("*.gz")) and fetchlib.cached("mnist") is None
    with pytest.raises(DataError, match="fetch it once with: fedbench data fetch mnist"):
        load_federated(task("mnist"), seed=0)


def test_cli_fetch_refuses_mismatch_in_one_line(served: Server) -> None:
    r = CliRunner().invoke(app, ["data", "fetch", "mnist", "--mirror", served.url])
    assert r.exit_code == 2
    errors = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and "md5" in errors[0]
    r = CliRunner().invoke(app, ["data", "fetch", "mnsit"])
    assert r.exit_code == 2 and "did you mean mnist?" in r.stderr


def test_download_resumes_a_partial_file(served: Server) -> None:
    whole = (served.root / "a9a").read_bytes()
    folder = fetchlib.dataset_dir("a9a")
    folder.mkdir(parents=True)
    (folder / "a9a.part").write_bytes(whole[:7])
    fetchlib.fetch("a9a", mirror=served.url)
    assert ("/a9a", "bytes=7-") in served.requests
    assert (folder / "a9a").read_bytes() == whole and not (folder / "a9a.part").exists()


def test_server_without_ranges_starts_over(served: Server) -> None:
    served.ranges = False
    whole = (served.root / "a9a").read_bytes()
    folder = fetchlib.dataset_dir("a9a")
    folder.mkdir(parents=True)
    (folder / "a9a.part").write_bytes(b"garbage")
    fetchlib.fetch("a9a", mirror=served.url)
    assert (folder / "a9a").read_bytes() == whole


def test_changed_file_after_first_download_is_refused(served: Server) -> None:
    fetchlib.fetch("a9a", mirror=served.url)  # no published digest: sha256 recorded
    (fetchlib.dataset_dir("a9a") / "a9a").write_text("tampered\n", encoding="utf-8")
    (served.root / "a9a").write_text("+1 1:1\n", encoding="utf-8")  # the server changed too
    with pytest.raises(DataError, match="differs from the one recorded"):
        fetchlib.fetch("a9a", mirror=served.url)


def test_cifar_tarball_is_extracted_and_loads_without_a_path(served: Server) -> None:
    digest = {"cifar-10-python.tar.gz": sha(served.root / "cifar-10-python.tar.gz")}
    folder = fetchlib.fetch("cifar10", mirror=served.url, digests=digest)
    assert (folder / "cifar-10-batches-py" / "test_batch").is_file()
    het = load_federated(task("cifar10"), seed=0).heterogeneity()
    assert het["clients"] == 4 and het["samples_mean"] * 4 == 5 * 6  # 5 batches of 6


def test_offline_is_a_clear_error(served: Server) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DataError, match=r"offline\?.*resumes it"):
        fetchlib.fetch("a9a", mirror=f"http://127.0.0.1:{port}/")


def test_loading_never_downloads(served: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: calls.append(a))
    for name in ("mnist", "fashion_mnist", "cifar10", "cifar100"):
        with pytest.raises(DataError, match=f"fedbench data fetch {name}"):
            load_federated(task(name), seed=0)
    assert calls == []


def test_leaf_datasets_explain_how_to_build_them() -> None:
    with pytest.raises(DataError, match="LEAF"):
        fetchlib.fetch("femnist")
    # every download but LIBSVM's (which publishes none) is checked against a published digest
    published = {n: all(d for _, d in s.files) for n, s in fetchlib.SOURCES.items()}
    assert published == {"mnist": True, "fashion_mnist": True, "cifar10": True,
                         "cifar100": True, "a9a": False, "w8a": False}  # fmt: skip
