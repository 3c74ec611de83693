"""A small fake Hugging Face Hub for tests: real HTTP on 127.0.0.1, just the endpoints a download uses.

What huggingface_hub 2.4 asks of a hub when it downloads a model (read from its file_download.py,
_snapshot_download.py and hf_api.py), and what this server answers:

- ``GET /api/models/{owner}/{name}[/revision/{rev}]`` (``HfApi.repo_info``): JSON with ``id`` and ``sha`` (the
  commit), ``gated``, ``siblings``. Gated repos answer this publicly, as the real hub does.
- ``GET /api/models/{owner}/{name}/tree/{rev}?recursive=...`` (``list_repo_tree``): a JSON list of
  ``{"type": "file", "path", "size", "oid"}`` (plus ``"lfs": {"oid": sha256, "size", "pointerSize"}`` for LFS
  files) and ``{"type": "directory", "path", "oid"}`` entries.
- ``HEAD``/``GET /{owner}/{name}/resolve/{rev}/{path}``: small files are served directly with ``ETag`` (the git blob
  id), ``X-Repo-Commit`` and ``Content-Length``. LFS files (weights, ``tokenizer.model``, ...) answer ``302`` with
  ``Location`` on a second server, the "CDN" (another port, so another origin: the client must stop following
  there and must not send its token on), with ``X-Linked-Etag`` (the sha256) and ``X-Linked-Size``.
- ``GET``/``HEAD /cdn/{sha256}`` on the CDN port: the bytes, honouring ``Range: bytes=N-`` with ``206`` and
  ``Content-Range`` (``416`` past the end).
- Errors the way the hub signals them, with ``X-Error-Code``/``X-Error-Message`` headers: ``RepoNotFound`` (404),
  ``RevisionNotFound`` (404), ``EntryNotFound`` (404), ``GatedRepo`` (401 without a token, 403 with a token that was
  not granted access).

Faults: ``drop_once(repo_id, path)`` makes the next GET of that file send its headers and part of the body, then close
the socket. Every request is logged (with its headers) so tests can check what a client sent where.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import socket
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

# Files the real hub keeps in LFS (by the default .gitattributes of model repos).
LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".model", ".pth", ".pt", ".onnx", ".h5", ".msgpack")


def git_blob_id(data: bytes) -> str:
    """The git object id of a file's content, which the hub uses as the ETag of non-LFS files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeRepo:
    repo_id: str
    files: dict[str, bytes]
    commit: str
    gated: bool = False
    # Tokens that were granted access to a gated repo.
    allowed_tokens: frozenset[str] = frozenset()

    def is_lfs(self, path: str) -> bool:
        return path.endswith(LFS_SUFFIXES)

    def sha256(self, path: str) -> str:
        return hashlib.sha256(self.files[path]).hexdigest()


@dataclass(frozen=True)
class LoggedRequest:
    server: str  # "hub" or "cdn"
    method: str
    path: str  # without the query string
    headers: dict[str, str]  # lower-case names

    @property
    def range(self) -> str | None:
        return self.headers.get("range")

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")


@dataclass
class _Fault:
    remaining: int  # how many more GETs of the file get cut
    after_fraction: float  # of the body sent before hanging up


@dataclass
class FakeHub:
    """Two servers on 127.0.0.1 (the hub and its CDN) over one set of repos. Use as a context manager."""

    repos: dict[str, FakeRepo] = field(default_factory=dict)
    log: list[LoggedRequest] = field(default_factory=list)
    bytes_sent: dict[tuple[str, str], int] = field(default_factory=dict)
    _faults: dict[tuple[str, str], _Fault] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _servers: list[ThreadingHTTPServer] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)
    _connections: set[socket.socket] = field(default_factory=set)
    # False: answer Range requests with the whole file (200), as some proxies and CDNs do.
    honour_range: bool = True

    # --- set-up -----------------------------------------------------------------------------------------

    def add_repo(
        self, repo_id: str, files: Mapping[str, bytes], *, gated: bool = False, allowed_tokens: tuple[str, ...] = ()
    ) -> FakeRepo:
        digest = hashlib.sha1(repo_id.encode())
        for name in sorted(files):
            digest.update(name.encode() + b"\0" + files[name])
        commit = digest.hexdigest()
        repo = FakeRepo(repo_id, dict(files), commit, gated, frozenset(allowed_tokens))
        self.repos[repo_id] = repo
        return repo

    def add_folder(self, repo_id: str, folder: Path, extra: Mapping[str, bytes] | None = None, **kwargs: Any) -> FakeRepo:
        """A repo holding every file of ``folder`` (top level) plus ``extra`` files (paths may have folders)."""
        files = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
        files.update(extra or {})
        return self.add_repo(repo_id, files, **kwargs)

    def drop_once(self, repo_id: str, path: str, *, after_fraction: float = 0.5, times: int = 1) -> None:
        """Cut the next ``times`` GETs of ``path`` after sending ``after_fraction`` of the bytes asked for."""
        with self._lock:
            self._faults[(repo_id, path)] = _Fault(times, after_fraction)
    # --- running ----------------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return self._url(0)

    @property
    def cdn(self) -> str:
        return self._url(1)

    def _url(self, index: int) -> str:
        host, port = self._servers[index].server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        for role in ("hub", "cdn"):
            server = _Server(("127.0.0.1", 0), _Handler)
            server.fake = self  # type: ignore[attr-defined]
            server.role = role  # type: ignore[attr-defined]
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            thread.start()
            self._servers.append(server)
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        # Hang up on kept-alive connections too, so no client can reach this hub's data after it stopped.
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the client
                connection.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers.clear()
        self._threads.clear()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what happened ----------------------------------------------------------------------------------

    def requests(self, *, server: str | None = None, method: str | None = None,
                 path_endswith: str | None = None) -> list[LoggedRequest]:
        with self._lock:
            entries = list(self.log)
        return [
            r for r in entries
            if (server is None or r.server == server)
            and (method is None or r.method == method)
            and (path_endswith is None or r.path.endswith(path_endswith))
        ]

    def downloaded_paths(self, repo_id: str) -> set[str]:
        """Files of ``repo_id`` whose bytes were sent at least partly (by a GET)."""
        with self._lock:
            return {path for (repo, path), sent in self.bytes_sent.items() if repo == repo_id and sent}

    def _record(self, entry: LoggedRequest) -> None:
        with self._lock:
            self.log.append(entry)

    def _count(self, key: tuple[str, str], sent: int) -> None:
        with self._lock:
            self.bytes_sent[key] = self.bytes_sent.get(key, 0) + sent

    def _take_fault(self, key: tuple[str, str]) -> _Fault | None:
        with self._lock:
            fault = self._faults.get(key)
            if fault is None or fault.remaining <= 0:
                return None
            fault.remaining -= 1
            return fault

    def _by_sha256(self, sha: str) -> tuple[FakeRepo, str] | None:
        for repo in self.repos.values():
            for path in repo.files:
                if repo.is_lfs(path) and repo.sha256(path) == sha:
                    return repo, path
        return None


def free_port() -> int:
    """A port on 127.0.0.1 with nothing listening (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-body (a cancelled download) is normal here, not worth a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


_TREE = re.compile(r"^/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?$")
_INFO = re.compile(r"^/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?$")
_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_CDN = re.compile(r"^/cdn/([0-9a-f]{64})$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects of a real server
    timeout = 10  # idle keep-alive connections close by themselves
    server: Any

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass

    @property
    def fake(self) -> FakeHub:
        return self.server.fake

    def setup(self) -> None:
        super().setup()
        with self.fake._lock:
            self.fake._connections.add(self.connection)

    def finish(self) -> None:
        with self.fake._lock:
            self.fake._connections.discard(self.connection)
        super().finish()

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    # --- routing ----------------------------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        path = unquote(split.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.fake._record(LoggedRequest(self.server.role, method, path, headers))
        if self.server.role == "cdn":
            match = _CDN.match(path)
            found = self.fake._by_sha256(match.group(1)) if match else None
            if found is None:
                return self._error(404, "EntryNotFound", "Not found")
            repo, name = found
            return self._send_file(method, repo, name)
        if match := _TREE.match(path):
            return self._tree(match.group(1), unquote(match.group(2)), parse_qs(split.query))
        if match := _INFO.match(path):
            return self._info(match.group(1), unquote(match.group(2) or "main"))
        if match := _RESOLVE.match(path):
            return self._resolve(method, match.group(1), unquote(match.group(2)), match.group(3))
        self._error(404, None, "Unknown endpoint")

    def _repo(self, repo_id: str, revision: str) -> FakeRepo | None:
        repo = self.fake.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return None
        if revision not in ("main", repo.commit):
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return None
        return repo

    def _info(self, repo_id: str, revision: str) -> None:
        repo = self._repo(repo_id, revision)
        if repo is None:
            return
        self._json(200, {
            "_id": repo.commit[:24],
            "id": repo.repo_id,
            "sha": repo.commit,
            "private": False,
            "gated": "manual" if repo.gated else False,
            "disabled": False,
            "lastModified": "2025-01-01T00:00:00.000Z",
            "tags": [],
            "siblings": [{"rfilename": name} for name in sorted(repo.files)],
        }, repo)

    def _tree(self, repo_id: str, revision: str, query: dict[str, list[str]]) -> None:
        repo = self._repo(repo_id, revision)
        if repo is None:
            return
        recursive = query.get("recursive", ["False"])[0].lower() == "true"
        entries: list[dict[str, Any]] = []
        folders: set[str] = set()
        for name in sorted(repo.files):
            parts = name.split("/")
            for depth in range(1, len(parts)):
                folders.add("/".join(parts[:depth]))
            if len(parts) > 1 and not recursive:
                continue
            data = repo.files[name]
            entry: dict[str, Any] = {"type": "file", "oid": git_blob_id(data), "size": len(data), "path": name}
            if repo.is_lfs(name):
                entry["lfs"] = {"oid": repo.sha256(name), "size": len(data), "pointerSize": 134}
            entries.append(entry)
        for folder in sorted(folders):
            if "/" in folder and not recursive:
                continue
            entries.append({"type": "directory", "oid": git_blob_id(folder.encode()), "size": 0, "path": folder})
        self._json(200, entries, repo)

    def _resolve(self, method: str, repo_id: str, revision: str, name: str) -> None:
        repo = self._repo(repo_id, revision)
        if repo is None:
            return
        if repo.gated:
            token = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            if token not in repo.allowed_tokens:
                status = 403 if token else 401
                message = (
                    f"Access to model {repo_id} is restricted and you are not in the authorized list. "
                    f"Visit https://huggingface.co/{repo_id} to ask for access."
                    if token else
                    f"Access to model {repo_id} is restricted. You must have access to it and be authenticated "
                    "to access it. Please log in."
                )
                return self._error(status, "GatedRepo", message, repo)
        if name not in repo.files:
            return self._error(404, "EntryNotFound", f"{name} does not exist on \"{revision}\"", repo)
        if repo.is_lfs(name):
            # Like the hub: the metadata a client needs rides on the redirect, the bytes come from elsewhere.
            sha = repo.sha256(name)
            self.send_response(302)
            self.send_header("Location", f"{self.fake.cdn}/cdn/{sha}?X-Amz-Signature=fake")
            self.send_header("X-Repo-Commit", repo.commit)
            self.send_header("X-Linked-Etag", f'"{sha}"')
            self.send_header("X-Linked-Size", str(len(repo.files[name])))
            self.send_header("ETag", f'"{git_blob_id(repo.files[name])}"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        return self._send_file(method, repo, name)

    # --- responses --------------------------------------------------------------------------------------

    def _send_file(self, method: str, repo: FakeRepo, name: str) -> None:
        data = repo.files[name]
        size = len(data)
        start, end = 0, size - 1
        status = 200
        wanted = self.headers.get("Range") if self.fake.honour_range else None
        if wanted:
            match = _RANGE.match(wanted.strip())
            if match is None or int(match.group(1)) >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = int(match.group(1))
            end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
            status = 206
        key = (repo.repo_id, name)
        fault = self.fake._take_fault(key) if method == "GET" else None
        body = data[start:end + 1]
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("X-Repo-Commit", repo.commit)
        etag = repo.sha256(name) if repo.is_lfs(name) else git_blob_id(data)
        self.send_header("ETag", f'"{etag}"')
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if method == "HEAD":
            return
        if fault is not None:
            # Headers promised the whole body; send part of it and hang up, like a dropped connection.
            cut = body[: max(1, int(len(body) * fault.after_fraction))]
            self.wfile.write(cut)
            self.wfile.flush()
            self.fake._count(key, len(cut))
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        for offset in range(0, len(body), 1 << 16):
            self.wfile.write(body[offset:offset + (1 << 16)])
        self.fake._count(key, len(body))

    def _json(self, status: int, payload: Any, repo: FakeRepo | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if repo is not None:
            self.send_header("X-Repo-Commit", repo.commit)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, code: str | None, message: str, repo: FakeRepo | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if repo is not None:
            self.send_header("X-Repo-Commit", repo.commit)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def iter_cache_files(hf_home: Path) -> Iterator[Path]:
    """Every regular file under an HF_HOME (for tests that look for partial or unwanted files)."""
    yield from (p for p in hf_home.rglob("*") if p.is_file() and not p.is_symlink())


# --- pointing huggingface_hub at the fake -----------------------------------------------------------------

HUB_ENV_NAMES = (
    "HF_ENDPOINT", "HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
    "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_HUB_DISABLE_XET", "HF_HUB_DISABLE_TELEMETRY",
    "HF_HUB_DISABLE_PROGRESS_BARS", "HF_XET_CACHE", "HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT",
    "HUGGINGFACE_CO_STAGING",
)


def hub_environment(endpoint: str, hf_home: Path, *, offline: bool = False) -> dict[str, str]:
    """The environment a user would have: the fake hub as HF_ENDPOINT, a private HF_HOME, no Xet, no telemetry."""
    env = {
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(hf_home),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_ETAG_TIMEOUT": "5",
        "HF_HUB_DOWNLOAD_TIMEOUT": "5",
    }
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def point_huggingface_hub_at(monkeypatch: Any, env: Mapping[str, str]) -> None:
    """Set ``env`` (clearing every other hub variable) for this process and for huggingface_hub already imported.

    huggingface_hub reads its environment once, when ``huggingface_hub.constants`` is first imported. To get the
    values it would have read had ``env`` been set at start-up, this runs that module's own source again in a
    scratch namespace and monkeypatches every constant that differs (undone at teardown). Two modules copy a
    constant at import time; those copies are patched as well. Subprocesses simply inherit the environment.
    """
    for name in HUB_ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    import importlib

    import huggingface_hub.constants as constants

    hub_http = importlib.import_module("huggingface_hub.utils._http")
    # Imported by name: `huggingface_hub.utils.tqdm` as an attribute is the tqdm class, not the module.
    hub_tqdm = importlib.import_module("huggingface_hub.utils.tqdm")

    source_file = constants.__file__
    fresh: dict[str, Any] = {"__name__": "huggingface_hub_constants_preview", "__file__": source_file}
    exec(compile(Path(source_file).read_text(encoding="utf-8"), source_file, "exec"), fresh)
    for name, value in fresh.items():
        if name.isupper() and hasattr(constants, name) and getattr(constants, name) != value:
            monkeypatch.setattr(constants, name, value)
    # Origins that may receive the token on a redirect: the configured endpoint is one of them.
    monkeypatch.setattr(hub_http, "_HUB_ORIGINS", frozenset(
        hub_http._url_origin(url) for url in (
            fresh["_HF_DEFAULT_ENDPOINT"], fresh["_HF_DEFAULT_STAGING_ENDPOINT"], fresh["ENDPOINT"], "https://hf.co"
        )
    ))
    monkeypatch.setattr(hub_tqdm, "HF_HUB_DISABLE_PROGRESS_BARS", fresh["HF_HUB_DISABLE_PROGRESS_BARS"])
