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
import time
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
    """Serves a folder; records requests; honours Range unless `ranges` is False. `fault`
    misbehaves on purpose: "cut" (half the Content-Length, then close), "endless" (no length,
    300 MiB), "huge" (declares 300 MiB), "trickle" (a byte every 50 ms), "chunked_cut" (one
    chunk, then close), "redirect_away" (302 to another host name), "redirect_here" (302 to
    another path on this host)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.ranges = True
        self.fault = ""
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
                if server.fault and self.misbehave(body):
                    return
                start = int(rng.split("=")[1].split("-")[0]) if rng and server.ranges else 0
                if start >= len(body) and start:
                    self.send_error(416)
                    return
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                self.wfile.write(body[start:])

            def misbehave(self, body: bytes) -> bool:
                """Serve `server.fault` (once: the fault clears itself); False to serve
                normally (a redirected request)."""
                fault, server.fault = server.fault, ""
                port = server.httpd.server_address[1]
                if fault in ("redirect_away", "redirect_here"):
                    host = "localhost" if fault == "redirect_away" else "127.0.0.1"
                    self.send_response(302)
                    self.send_header("Location", f"http://{host}:{port}{self.path}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return True
                if fault == "chunked_cut":
                    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    self.wfile.write(head + b"%x\r\n" % 4 + body[:4] + b"\r\n")
                    self.close_connection = True
                    return True
                self.send_response(200)
                n = {"cut": len(body), "trickle": len(body), "huge": 300 << 20}.get(fault)
                if n is not None:
                    self.send_header("Content-Length", str(n))
                self.end_headers()
                try:
                    if fault == "cut":
                        self.wfile.write(body[: len(body) // 2])
                    elif fault == "trickle":
                        for i in range(len(body)):  # bounded: len(body) × 50 ms
                            self.wfile.write(body[i : i + 1])
                            self.wfile.flush()
                            time.sleep(0.05)
                    else:  # endless / huge: 300 MiB of the same line, stopped by the client
                        block = (b"+1 3:1\n" * 9363)[: 1 << 16]
                        for _ in range(300 * 16):
                            self.wfile.write(block)
                except OSError:  # the client hung up, as it should
                    pass
                self.close_connection = True
                return True

        ThreadingHTTPServer.daemon_threads = True
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


# Issue 23 item 5: damaged downloads of datasets without a published digest (a9a, w8a) must
# never be pinned in SHA256SUMS; every failure is one line and leaves the cache consistent.


def recorded(name: str) -> dict[str, str]:
    path = fetchlib.dataset_dir(name) / "SHA256SUMS"
    pairs = (ln.split() for ln in path.read_text().splitlines()) if path.is_file() else ()
    return {f: h for h, f in pairs}


def test_body_cut_short_of_its_length_is_refused_then_resumed(served: Server) -> None:
    whole = (served.root / "a9a").read_bytes()
    folder = fetchlib.dataset_dir("a9a")
    served.fault = "cut"
    with pytest.raises(DataError, match=rf"ended after {len(whole) // 2} of {len(whole)} bytes"):
        fetchlib.fetch("a9a", mirror=served.url)
    assert not (folder / "a9a").exists() and "a9a" not in recorded("a9a")
    assert (folder / "a9a.part").read_bytes() == whole[: len(whole) // 2]
    fetchlib.fetch("a9a", mirror=served.url)  # the good fetch resumes and pins the whole file
    assert ("/a9a", f"bytes={len(whole) // 2}-") in served.requests
    assert (folder / "a9a").read_bytes() == whole
    assert recorded("a9a")["a9a"] == hashlib.sha256(whole).hexdigest()


def test_416_restarts_instead_of_keeping_a_stale_part(served: Server) -> None:
    whole = (served.root / "a9a").read_bytes()
    folder = fetchlib.dataset_dir("a9a")
    folder.mkdir(parents=True)
    (folder / "a9a.part").write_bytes(whole + b"stale tail of an older, longer file\n")
    fetchlib.fetch("a9a", mirror=served.url)
    assert [r for p, r in served.requests if p == "/a9a"] == [f"bytes={len(whole) + 36}-", None]
    assert (folder / "a9a").read_bytes() == whole and not (folder / "a9a.part").exists()


@pytest.mark.parametrize("fault", ["endless", "huge"])
def test_size_is_capped(served: Server, fault: str) -> None:
    cap = fetchlib.max_bytes("a9a")
    assert 1 << 20 < cap < 300 << 20
    served.fault = fault
    with pytest.raises(DataError, match=rf"more than {cap} bytes"):
        fetchlib.fetch("a9a", mirror=served.url)
    part = fetchlib.dataset_dir("a9a") / "a9a.part"
    assert not part.exists() and "a9a" not in recorded("a9a")  # nothing kept past the cap


def test_total_time_is_bounded_against_a_trickling_server(served: Server) -> None:
    (served.root / "a9a").write_bytes(b"+1 3:1\n" * 40)  # 280 bytes: 14 s at 50 ms a byte
    served.fault = "trickle"
    t0 = time.monotonic()
    with pytest.raises(DataError, match=r"did not finish within 1 s"):
        fetchlib.fetch("a9a", mirror=served.url, timeout_s=1.0)
    assert time.monotonic() - t0 < 4.0
    assert "a9a" not in recorded("a9a")


def test_redirect_to_another_host_is_refused(served: Server) -> None:
    served.fault = "redirect_away"
    with pytest.raises(DataError, match=r"redirected to another host \(localhost\)"):
        fetchlib.fetch("a9a", mirror=served.url)
    assert [p for p, _ in served.requests] == ["/a9a"]  # the other host was never asked
    served.fault = "redirect_here"  # a redirect on the same host is followed
    fetchlib.fetch("a9a", mirror=served.url)
    assert (fetchlib.dataset_dir("a9a") / "a9a").read_bytes() == (served.root / "a9a").read_bytes()


def test_cut_chunked_body_is_one_line(served: Server) -> None:
    served.fault = "chunked_cut"
    r = CliRunner().invoke(app, ["data", "fetch", "a9a", "--mirror", served.url])
    assert r.exit_code == 2, r.output
    errors = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(errors) == 1 and "a9a" in errors[0] and "cut short" in errors[0], errors
    assert "a9a" not in recorded("a9a") and not (fetchlib.dataset_dir("a9a") / "a9a").exists()
