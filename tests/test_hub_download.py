"""The download path of `harness run --models <owner/name>`, offline: a local HTTP server on
127.0.0.1 answers the endpoints huggingface_hub calls (HF_ENDPOINT points at it), so the real
hub client code (hf_hub_download, snapshot_download, get_hf_file_metadata) downloads a tiny
Mamba-2 in the state-spaces format into a fresh hub cache."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import unquote, urlsplit

import pytest
import torch

from harness.models.mamba2 import Mamba2, Mamba2Config
from harness.models.mamba2.checkpoint import save_pretrained
from harness.models.tokenizer import byte_tokenizer
from harness.results import read_table

REPO = "harness-test/tiny-mamba2"
COMMIT = hashlib.sha1(b"harness-test").hexdigest()  # the repository's one commit


class Hub(BaseHTTPRequestHandler):
    """Model info (`/api/models/{repo}[/revision/{rev}]`), file listing (`.../tree/{rev}`) and
    files (`/{repo}/resolve/{rev}/{path}`, HEAD and GET, with the ETag, X-Repo-Commit and
    Content-Length headers the client reads); 404 with the hub's X-Error-Code otherwise."""

    repos: ClassVar[dict[str, dict[str, bytes]]] = {}
    log: ClassVar[list[tuple[str, str]]] = []

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def log_message(self, format: str, *args: object) -> None:
        pass  # the test reads `log`

    def _answer(self, body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        self.log.append((self.command, path))
        if path.startswith("/api/models/"):
            self._api(path.removeprefix("/api/models/"))
        elif "/resolve/" in path:
            repo, _, rest = path.lstrip("/").partition("/resolve/")
            self._file(repo, rest.partition("/")[2], body)
        else:
            self._error(404, "EntryNotFound")

    def _api(self, rest: str) -> None:
        owner, name, kind, *_ = [*rest.split("/"), "", ""]
        files = self.repos.get(f"{owner}/{name}")
        if files is None:
            return self._error(404, "RepoNotFound")
        if kind in ("", "revision"):
            siblings = [{"rfilename": f} for f in files]
            return self._json({"id": f"{owner}/{name}", "sha": COMMIT, "siblings": siblings})
        if kind == "tree":
            tree = [
                {"type": "file", "path": f, "size": len(data), "oid": _sha1(data)}
                for f, data in files.items()
            ]
            return self._json(tree)
        return self._error(404, "EntryNotFound")

    def _file(self, repo: str, filename: str, body: bool) -> None:
        files = self.repos.get(repo)
        if files is None:
            return self._error(404, "RepoNotFound")
        if filename not in files:
            return self._error(404, "EntryNotFound")
        data = files[filename]
        self.send_response(200)
        self.send_header("ETag", f'"{_sha1(data)}"')
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _json(self, value: object) -> None:
        data = json.dumps(value).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, code: str) -> None:
        data = json.dumps({"error": code}).encode()
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """A tiny Mamba-2 in the state-spaces format with a byte tokenizer, as repository files."""
    folder = tmp_path_factory.mktemp("tiny-mamba2")
    torch.manual_seed(0)
    config = Mamba2Config(d_model=32, n_layer=2, vocab_size=257, d_state=16, headdim=16)
    save_pretrained(Mamba2(config), folder, format="state-spaces")
    byte_tokenizer().save_pretrained(folder)
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def hub(checkpoint: dict[str, bytes]) -> Iterator[ThreadingHTTPServer]:
    Hub.repos = {REPO: checkpoint}
    Hub.log = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def harness_run(tmp_path: Path, port: int, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_HUB_CACHE")}
    env |= {
        "HF_ENDPOINT": f"http://127.0.0.1:{port}",
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "NO_PROXY": "127.0.0.1",
    }
    return subprocess.run(
        [sys.executable, "-m", "harness", "run", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def downloads(log: list[tuple[str, str]]) -> list[str]:
    return [path for method, path in log if method == "GET" and "/resolve/" in path]


def test_first_run_downloads_later_runs_use_the_cache(
    hub: ThreadingHTTPServer, tmp_path: Path
) -> None:
    port = hub.server_address[1]
    argv = ["--models", REPO, "--tasks", "passkey", "--lengths", "512", "--samples", "1"]
    first = harness_run(tmp_path, port, *argv, "--out", str(tmp_path / "first"))
    assert first.returncode == 0, first.stderr
    fetched = {Path(p).name for p in downloads(Hub.log)}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= fetched, Hub.log
    [row] = read_table(tmp_path / "first", "passkey").to_pylist()
    assert row["status"] == "ok" and row["model"] == REPO and row["model_ref"] == REPO
    snapshot = tmp_path / "hf-home" / "hub" / "models--harness-test--tiny-mamba2" / "snapshots"
    assert (snapshot / COMMIT / "model.safetensors").is_file()

    # Again, into a new results folder (so the model loads): metadata requests, no downloads.
    Hub.log.clear()
    second = harness_run(tmp_path, port, *argv, "--out", str(tmp_path / "second"))
    assert second.returncode == 0, second.stderr
    assert downloads(Hub.log) == [], Hub.log
    [again] = read_table(tmp_path / "second", "passkey").to_pylist()
    assert again["correct"] == row["correct"] and again["key_logprob"] == row["key_logprob"]

    # With the server gone, the cache alone serves the run.
    hub.shutdown()
    hub.server_close()
    third = harness_run(tmp_path, port, *argv, "--out", str(tmp_path / "third"))
    assert third.returncode == 0, third.stderr
    [cached] = read_table(tmp_path / "third", "passkey").to_pylist()
    assert cached["key_logprob"] == row["key_logprob"]


def test_an_unknown_repository_stops_at_once(hub: ThreadingHTTPServer, tmp_path: Path) -> None:
    started = time.monotonic()
    out = tmp_path / "out"
    proc = harness_run(
        tmp_path, hub.server_address[1], "--models", "harness-test/nothing", "--out", str(out)
    )
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "has no such repository" in lines[0] and "harness list models" in lines[0]
    assert not out.exists()
    assert time.monotonic() - started < 120  # no minutes of retries
    assert [p for _, p in Hub.log if "nothing" in p] != []  # it asked the server


def test_an_unreachable_hub_stops_at_once(tmp_path: Path) -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), Hub) as closed:
        port = closed.server_address[1]  # bound, then closed: nothing listens there
    out = tmp_path / "out"
    proc = harness_run(tmp_path, port, "--models", REPO, "--out", str(out))
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "did not answer" in lines[0] and "harness list models" in lines[0]
    assert not out.exists()
