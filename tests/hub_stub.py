"""A local stand-in for the Hugging Face Hub API: what ``builder.publish`` and downloads need.

A threaded ``http.server`` on 127.0.0.1 serving what huggingface_hub 2.4.0 and datasets 5.2
call with HF_HUB_DISABLE_XET=1 (no Xet, plain HTTP), as recorded from their requests:

* publishing: repo and branch creation, YAML validation (the header parses; ``license`` is one
  of the Hub's ids, refused as the Hub does), preupload (``.parquet``/``.tar``/
  ``.png`` and files over 10 MB as LFS, the rest regular), the LFS batch API with a basic PUT
  transfer, the NDJSON commit, and whoami;
* reading: repo info (``GET /api/{kind}/{repo}`` and ``.../revision/{rev}``, with ``sha`` and
  ``siblings``), the repo tree (``GET /api/{kind}/{repo}/tree/{rev}[/{path}]``, flat or
  ``?recursive=true``, folders included, ``?expand=true`` adding ``lastCommit`` and
  ``securityFileStatus``), paths info (``POST /api/{kind}/{repo}/paths-info/{rev}``, form
  fields ``paths`` (repeated) and ``expand``; unknown paths left out), and file downloads
  (``HEAD``/``GET`` ``[/datasets|/spaces]/{repo}/resolve/{rev}/{path}`` with ``X-Repo-Commit``,
  ``ETag`` (the git blob id, or the sha256 plus ``X-Linked-Etag``/``X-Linked-Size`` for LFS
  files) and ``Range``), so ``snapshot_download``, ``hf_hub_download``, ``list_repo_files``,
  ``list_repo_tree``, ``get_paths_info``, ``HfFileSystem`` (``hf://``), ``datasets.load_dataset``
  (also streaming) and ``curl`` (webdataset's http and ``hf://`` opener) work against it.

Recorded: ``datasets.load_dataset("org/name", config)`` asks HEAD/GET ``README.md`` at main,
HEAD ``name.py``, ``.huggingface.yaml`` and ``dataset_infos.json`` (404s), the revision info and
tree at the resolved commit, then HEAD+GET of each Parquet shard (streaming: GETs through
``HfFileSystem``, ranged); ``HfFileSystem.info`` asks ``paths-info`` when its listing cache misses.

Not served: commit history (``/commits``), refs, tags, Xet, pagination (listings are small), and
the CDN redirect of LFS files (their bytes come directly, with the headers the client checks).

Committed files are kept in memory per repo and branch; ``HubStub.add_files`` seeds a repo
directly. A revision is a branch name or the commit sha of a branch state: a sha1 of the repo
and its sorted paths and content hashes, so the same files always give the same sha (every state
served is remembered, so an older sha stays readable). Writes and whoami need the bearer token
(401). Reads of a public repo work without a token; a wrong token is a 401, a private repo without
one a 401 with ``X-Error-Code: RepoNotFound`` (as on the Hub). A missing repo, revision or file is
a 404 with ``RepoNotFound``, ``RevisionNotFound`` or ``EntryNotFound``. It can refuse writes (403),
fail the Nth commit with a 500 or by dropping the connection, fail every LFS PUT from the Nth on
(the storage down: huggingface_hub retries a failed PUT, so one failure alone would not stop it),
and fail the first GET of a file
(``fail_resolve_once[path] = "500"``, or ``"truncate"``: half the bytes, then the connection
closes), to test interruptions.

``use_hub_stub(monkeypatch, stub, home)`` points huggingface_hub and datasets in this process
at a stub, with their caches under ``home``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

LFS_SUFFIXES = (".parquet", ".tar", ".png")
LFS_MIN_BYTES = 10_000_000
GITATTRIBUTES = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n*.tar filter=lfs diff=lfs merge=lfs -text\n*.png filter=lfs diff=lfs merge=lfs -text\n"
REPO_ROUTE = re.compile(r"^/api/(models|datasets|spaces)/([^/]+/[^/]+)/(preupload|commit|tree|branch|paths-info)/([^/]+)(/.*)?$")
INFO_ROUTE = re.compile(r"^/api/(models|datasets|spaces)/([^/]+/[^/]+)(?:/revision/([^/]+))?/?$")
RESOLVE_ROUTE = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
LFS_BATCH_ROUTE = re.compile(r"^/(?:datasets/|spaces/)?([^/]+/[^/]+)\.git/info/lfs/objects/batch$")
RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")

Files = dict[str, tuple[bytes, bool]]  # path -> (bytes, is_lfs)


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


@dataclass
class Commit:
    repo: str  # "datasets/org/name"
    branch: str
    message: str
    added: list[str]
    deleted: list[str]


@dataclass
class Repo:
    kind: str
    private: bool
    branches: dict[str, Files] = field(default_factory=dict)
    history: dict[str, Files] = field(default_factory=dict)  # commit sha -> the files of every state served
    titles: dict[str, str] = field(default_factory=dict)  # commit sha -> its message, for ``lastCommit``
    created: str = field(default_factory=_now)
    modified: str = field(default_factory=_now)


class HubStub:
    """The state of the fake Hub; ``url`` is what HF_ENDPOINT should be."""

    def __init__(self, token: str, user: str = "tester") -> None:
        self.token, self.user = token, user
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.lfs_puts: list[str] = []  # oids received by PUT, in order
        self.commits: list[Commit] = []  # successful commits sent by the client (not the initial one)
        self.requests: list[tuple[str, str]] = []
        self.commit_attempts = 0
        self.fail_commit: int | None = None  # fail the Nth commit attempt (1-based)
        self.fail_mode = "500"  # any HTTP status, or "drop": close the connection without an answer
        self.put_attempts = 0
        self.fail_puts_from: int | None = None  # fail every LFS PUT from the Nth attempt (1-based) on, as fail_mode says
        self.forbidden = False  # 403 on every write
        self.fail_resolve_once: dict[str, str] = {}  # path in repo -> "500" or "truncate", for its next GET
        self.lock = threading.RLock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def start(self) -> HubStub:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def files(self, repo_id: str, branch: str = "main", kind: str = "datasets") -> dict[str, bytes]:
        return {path: data for path, (data, _) in self.repos[f"{kind}/{repo_id}"].branches[branch].items()}

    def is_lfs(self, path: str, size: int) -> bool:
        return path.endswith(LFS_SUFFIXES) or size >= LFS_MIN_BYTES

    def new_repo(self, key: str, private: bool) -> Repo:
        """An empty repo as the Hub creates it: a main branch holding only .gitattributes."""
        repo = Repo(key.split("/", 1)[0], private)
        repo.branches["main"] = {".gitattributes": (GITATTRIBUTES, False)}
        self.repos[key] = repo
        return repo

    def add_files(self, repo_id: str, files: dict[str, bytes], kind: str = "datasets", branch: str = "main",
                  private: bool = False) -> str:
        """Store ``files`` on ``branch`` as one commit, without going through the API; returns its sha.

        Creates the repo (with ``private``) if needed, and the branch from main if needed; an
        existing repo keeps its visibility. A file is LFS by the same rule as preupload.
        """
        kind = kind if kind.endswith("s") else f"{kind}s"
        key = f"{kind}/{repo_id}"
        with self.lock:
            repo = self.repos.get(key) or self.new_repo(key, private)
            target = repo.branches.setdefault(branch, dict(repo.branches["main"]))
            for path, data in files.items():
                is_lfs = self.is_lfs(path, len(data))
                target[path] = (bytes(data), is_lfs)
                if is_lfs:
                    self.lfs_objects[hashlib.sha256(data).hexdigest()] = bytes(data)
            repo.modified = _now()
            sha = self.commit_sha(repo_id, branch, kind)
            repo.titles.setdefault(sha, f"Add {len(files)} file(s)")
            return sha

    def commit_sha(self, repo_id: str, branch: str = "main", kind: str = "datasets") -> str:
        """The commit sha the stub serves for ``branch`` as it is now."""
        resolved = self.resolve(f"{kind}/{repo_id}", branch)
        assert resolved is not None, f"no branch {branch} in {kind}/{repo_id}"
        return resolved[0]

    def resolve(self, key: str, revision: str) -> tuple[str, Files] | None:
        """(commit sha, files) of a branch name or of a commit sha served before; None if unknown."""
        with self.lock:
            repo = self.repos[key]
            if revision in repo.branches:
                files = dict(repo.branches[revision])
                digest = hashlib.sha1(key.encode())
                for path, (data, is_lfs) in sorted(files.items()):
                    content = hashlib.sha256(data).hexdigest() if is_lfs else git_blob_id(data)
                    digest.update(f"\0{path}\0{content}".encode())
                sha = digest.hexdigest()
                repo.history[sha] = files
                return sha, files
            if revision in repo.history:
                return revision, repo.history[revision]
            return None


def use_hub_stub(monkeypatch: Any, stub: HubStub, home: os.PathLike[str] | str, token: str | None = None) -> None:
    """Point huggingface_hub and datasets (already imported or not) at ``stub``, with HF_HOME and the caches under ``home``.

    Both libraries copy their environment into module constants at import, so both the
    environment (for subprocesses) and the constants (for this process) are set: the endpoint,
    HF_HOME, HF_HUB_CACHE, HF_ASSETS_CACHE, HF_XET_CACHE, the token file (so a real login is never
    read), HF_HUB_DISABLE_XET=1 and HF_HUB_OFFLINE=0; for datasets its endpoint and resolve URL,
    HF_DATASETS_CACHE (downloads, extracted), HF_MODULES_CACHE, offline off and no download-count
    request (a HEAD to S3). ``token``, if given, becomes HF_TOKEN. Cached ``HfFileSystem``
    instances (fsspec keeps one per endpoint and token, with its listings) are dropped.
    """
    from huggingface_hub import HfFileSystem, constants

    home = os.fspath(home)
    paths = {"HF_HOME": home, "HF_HUB_CACHE": os.path.join(home, "hub"), "HF_ASSETS_CACHE": os.path.join(home, "assets"),
             "HF_XET_CACHE": os.path.join(home, "xet"), "HF_TOKEN_PATH": os.path.join(home, "token")}
    datasets_paths = {"HF_DATASETS_CACHE": os.path.join(home, "datasets"), "HF_MODULES_CACHE": os.path.join(home, "modules")}
    flags = {"HF_HUB_DISABLE_XET": "1", "HF_UPDATE_DOWNLOAD_COUNTS": "0"}
    for name, value in {"HF_ENDPOINT": stub.url, **paths, **datasets_paths, **flags}.items():
        monkeypatch.setenv(name, value)
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HUGGINGFACE_HUB_CACHE", "HF_DATASETS_DOWNLOADED_DATASETS_PATH",
                 "HF_DATASETS_EXTRACTED_DATASETS_PATH"):
        monkeypatch.delenv(name, raising=False)
    if token is not None:
        monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setattr(constants, "ENDPOINT", stub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", stub.url + "/{repo_id}/resolve/{revision}/{filename}")
    for name, value in paths.items():
        if hasattr(constants, name):
            monkeypatch.setattr(constants, name, value)
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", os.path.join(home, "stored_tokens"))
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    _use_for_datasets(monkeypatch, stub.url, datasets_paths)
    HfFileSystem.clear_instance_cache()


def _use_for_datasets(monkeypatch: Any, url: str, paths: dict[str, str]) -> None:
    """The same for ``datasets.config``, when datasets is installed."""
    try:
        from datasets import config
    except ImportError:
        return
    from pathlib import Path

    downloads = Path(paths["HF_DATASETS_CACHE"]) / config.DOWNLOADED_DATASETS_DIR
    values = {
        "HF_CACHE_HOME": str(Path(paths["HF_DATASETS_CACHE"]).parent), "HF_ENDPOINT": url, "HUB_DATASETS_URL": url + "/datasets/{repo_id}/resolve/{revision}/{path}",
        "HF_DATASETS_CACHE": Path(paths["HF_DATASETS_CACHE"]), "HF_MODULES_CACHE": Path(paths["HF_MODULES_CACHE"]),
        "DOWNLOADED_DATASETS_PATH": downloads, "EXTRACTED_DATASETS_PATH": downloads / config.EXTRACTED_DATASETS_DIR,
        "HF_HUB_OFFLINE": False, "HF_DATASETS_OFFLINE": False, "HF_UPDATE_DOWNLOAD_COUNTS": False,
    }
    for name, value in values.items():
        if hasattr(config, name):
            monkeypatch.setattr(config, name, value)


def _handler_for(hub: HubStub) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        pass

    Handler.hub = hub
    return Handler


class _Handler(BaseHTTPRequestHandler):
    hub: HubStub

    def log_message(self, format: str, *args: Any) -> None:  # keep the test output clean
        pass

    # ------------------------------------------------------------------ plumbing

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, payload: Any = None, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload if payload is not None else {}).encode()
        self._send_bytes(status, data, {"Content-Type": "application/json", **(headers or {})})

    def _send_bytes(self, status: int, data: bytes, headers: dict[str, str]) -> None:
        """Answer with ``data`` (only its headers to a HEAD)."""
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        headers = {"X-Error-Message": message, **({"X-Error-Code": code} if code else {}), **(headers or {})}
        self._send(status, {"error": message}, headers)

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") != f"Bearer {self.hub.token}":
            self._error(401, "Invalid credentials in Authorization header")
            return False
        return True

    def _forbidden(self) -> bool:
        if self.hub.forbidden:
            self._error(403, "You don't have the rights to write to this repo")
            return True
        return False

    def _readable(self, key: str, revision: str) -> tuple[Repo, str, Files] | None:
        """The repo, commit sha and files of a read, or None once the error is sent (as the Hub answers)."""
        auth = self.headers.get("Authorization")
        if auth is not None and auth != f"Bearer {self.hub.token}":
            self._error(401, "Invalid credentials in Authorization header")
            return None
        repo = self.hub.repos.get(key)
        if repo is None or (repo.private and auth is None):
            self._error(404 if auth else 401, "Repository not found", "RepoNotFound")
            return None
        resolved = self.hub.resolve(key, revision)
        if resolved is None:
            self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            return None
        return repo, *resolved

    # ------------------------------------------------------------------ routes

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        self.hub.requests.append(("GET", url.path))
        query = parse_qs(url.query)
        if url.path == "/api/whoami-v2":
            if self._authorized():
                self._send(200, {"type": "user", "name": self.hub.user})
            return
        match = REPO_ROUTE.match(url.path)
        if match and match.group(3) == "tree":
            path = unquote(match.group(5) or "").strip("/")
            return self._tree(f"{match.group(1)}/{match.group(2)}", unquote(match.group(4)), path, query)
        info = INFO_ROUTE.match(url.path)
        if info:
            return self._info(info.group(1), info.group(2), unquote(info.group(3) or "main"), query)
        if RESOLVE_ROUTE.match(url.path):
            return self._resolve(url.path)
        if self._authorized():
            self._error(404, "Not found", "RepoNotFound" if url.path.startswith("/api/datasets/") else None)

    def do_HEAD(self) -> None:
        url = urlsplit(self.path)
        self.hub.requests.append(("HEAD", url.path))
        if RESOLVE_ROUTE.match(url.path):
            return self._resolve(url.path)
        self._error(404, "Not found")

    def do_PUT(self) -> None:
        """The LFS 'basic' transfer: like a pre-signed storage URL, no Authorization header."""
        url = urlsplit(self.path)
        self.hub.requests.append(("PUT", url.path))
        oid, data = url.path.rsplit("/", 1)[-1], self._body()
        with self.hub.lock:
            self.hub.put_attempts += 1
            failing = self.hub.fail_puts_from is not None and self.hub.put_attempts >= self.hub.fail_puts_from
        if failing and self.hub.fail_mode == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if failing:
            return self._error(int(self.hub.fail_mode), f"HTTP {self.hub.fail_mode} - simulated")
        if not url.path.startswith("/_lfs/") or hashlib.sha256(data).hexdigest() != oid:
            return self._error(400, "content does not match the oid")
        with self.hub.lock:
            self.hub.lfs_objects[oid] = data
            self.hub.lfs_puts.append(oid)
        self._send(200, {})

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        self.hub.requests.append(("POST", url.path))
        body = self._body()
        match = REPO_ROUTE.match(url.path)
        if match and match.group(3) == "paths-info":  # a read: no token needed for a public repo
            return self._paths_info(f"{match.group(1)}/{match.group(2)}", unquote(match.group(4)), body)
        if not self._authorized():
            return
        if url.path == "/api/validate-yaml":
            return self._validate_yaml(json.loads(body))
        if self._forbidden():
            return
        if url.path == "/api/repos/create":
            return self._create(json.loads(body))
        lfs = LFS_BATCH_ROUTE.match(url.path)
        if lfs:
            return self._lfs_batch(json.loads(body))
        if not match:
            return self._error(404, "Not found")
        key, action, rev = f"{match.group(1)}/{match.group(2)}", match.group(3), unquote(match.group(4))
        if key not in self.hub.repos:
            return self._error(404, "Repository not found", "RepoNotFound")
        handler = {"preupload": self._preupload, "commit": self._commit, "branch": self._branch}.get(action)
        if handler is None:
            return self._error(404, "Not found")
        handler(key, rev, body)

    # ------------------------------------------------------------------ reads

    def _info(self, kind: str, repo_id: str, revision: str, query: dict[str, list[str]]) -> None:
        read = self._readable(f"{kind}/{repo_id}", revision)
        if read is None:
            return
        repo, sha, files = read
        blobs = query.get("blobs", ["false"])[0].lower() in ("true", "1")
        siblings = []
        for path, (data, is_lfs) in sorted(files.items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling.update(size=len(data), blobId=git_blob_id(data))
                if is_lfs:
                    sibling["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": 134}
            siblings.append(sibling)
        payload: dict[str, Any] = {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24], "id": repo_id, "author": repo_id.split("/")[0],
            "sha": sha, "createdAt": repo.created, "lastModified": repo.modified, "private": repo.private,
            "gated": False, "disabled": False, "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
        }
        card = _card_data(files.get("README.md", (b"", False))[0])
        if card is not None:
            payload["cardData"] = card
        self._send(200, payload)

    def _tree(self, key: str, rev: str, path: str, query: dict[str, list[str]]) -> None:
        read = self._readable(key, rev)
        if read is None:
            return
        repo, sha, files = read
        recursive = query.get("recursive", ["false"])[0].lower() in ("true", "1")
        last = self._last_commit(repo, sha) if query.get("expand", ["false"])[0].lower() in ("true", "1") else None
        prefix = f"{path}/" if path else ""
        inside = {name: value for name, value in files.items() if name.startswith(prefix)}
        if path and not inside:
            return self._error(404, f"{path} does not exist on {rev}", "EntryNotFound")
        entries: dict[str, dict[str, Any]] = {}
        for name, (data, is_lfs) in sorted(inside.items()):
            parts = name[len(prefix):].split("/")
            for depth in range(1, len(parts) if recursive else min(2, len(parts))):
                folder = prefix + "/".join(parts[:depth])
                entries[folder] = _folder_entry(folder, last)
            if recursive or len(parts) == 1:
                entries[name] = _file_entry(name, data, is_lfs, last)
        self._send(200, [entries[name] for name in sorted(entries)])

    def _paths_info(self, key: str, rev: str, body: bytes) -> None:
        """One entry per asked path that exists (a file, or a folder holding files), as the Hub answers."""
        read = self._readable(key, rev)
        if read is None:
            return
        repo, sha, files = read
        if (self.headers.get("Content-Type") or "").startswith("application/json"):
            form = {name: value if isinstance(value, list) else [str(value)] for name, value in json.loads(body or b"{}").items()}
        else:
            form = parse_qs(body.decode())
        last = self._last_commit(repo, sha) if form.get("expand", ["false"])[0].lower() in ("true", "1") else None
        entries = []
        for path in dict.fromkeys(p.strip("/") for p in form.get("paths", [])):
            if path in files:
                entries.append(_file_entry(path, *files[path], last))
            elif path and any(name.startswith(f"{path}/") for name in files):
                entries.append(_folder_entry(path, last))
        self._send(200, entries)

    def _last_commit(self, repo: Repo, sha: str) -> dict[str, str]:
        """``lastCommit`` of ``expand``: the state served (the stub keeps no per-file history)."""
        return {"id": sha, "title": repo.titles.get(sha, "Update files"), "date": repo.modified}

    def _resolve(self, url_path: str) -> None:
        match = RESOLVE_ROUTE.match(url_path)
        assert match is not None
        kind, repo_id, rev, path = match.group(1) or "models", match.group(2), unquote(match.group(3)), unquote(match.group(4))
        read = self._readable(f"{kind}/{repo_id}", rev)
        if read is None:
            return
        _, sha, files = read
        if path not in files:
            return self._error(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": sha})
        data, is_lfs = files[path]
        with self.hub.lock:
            failure = self.hub.fail_resolve_once.pop(path, None) if self.command == "GET" else None
        if failure == "500":
            return self._error(500, "Internal Error - simulated", headers={"X-Repo-Commit": sha})
        etag = hashlib.sha256(data).hexdigest() if is_lfs else git_blob_id(data)
        headers = {"Content-Type": "application/octet-stream", "X-Repo-Commit": sha, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if is_lfs:
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data))})
        status, body = 200, data
        wanted = RANGE.match(self.headers.get("Range") or "") if self.command == "GET" else None
        if wanted and (wanted.group(1) or wanted.group(2)):
            if wanted.group(1):
                start = int(wanted.group(1))
                end = min(int(wanted.group(2)), len(data) - 1) if wanted.group(2) else len(data) - 1
            else:  # a suffix: the last N bytes
                start, end = max(len(data) - int(wanted.group(2)), 0), len(data) - 1
            if start >= len(data) or start > end:
                return self._send_bytes(416, b"", {**headers, "Content-Range": f"bytes */{len(data)}"})
            status, body = 206, data[start:end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        if failure == "truncate":
            return self._send_truncated(status, body, headers)
        self._send_bytes(status, body, headers)

    def _send_truncated(self, status: int, data: bytes, headers: dict[str, str]) -> None:
        """The full length announced, half the bytes sent, then the connection drops."""
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    # ------------------------------------------------------------------ writes

    def _create(self, payload: dict[str, Any]) -> None:
        kind = f"{payload.get('type') or 'model'}s"
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else f"{self.hub.user}/{payload['name']}"
        key = f"{kind}/{repo_id}"
        url = f"{self.hub.url}/{kind}/{repo_id}" if kind != "models" else f"{self.hub.url}/{repo_id}"
        with self.hub.lock:
            if key in self.hub.repos:
                return self._send(409, {"error": "You already created this repo", "url": url}, {"X-Error-Message": "You already created this repo"})
            self.hub.new_repo(key, payload.get("visibility") == "private")
        self._send(200, {"url": url, "name": repo_id})

    def _validate_yaml(self, payload: dict[str, Any]) -> None:
        content = payload.get("content", "")
        try:
            header = content.split("---", 2)[1] if content.startswith("---") else ""
            yaml.safe_load(header)
        except (yaml.YAMLError, IndexError) as error:
            return self._send(400, {"errors": [{"message": str(error)}]})
        from builder.licenses import HUB_LICENSES  # the Hub's list, kept as data by the builder

        license_id = (yaml.safe_load(header) or {}).get("license") if header else None
        if license_id is not None and license_id not in HUB_LICENSES:
            return self._send(400, {"errors": [{"message": f'"license" must be one of [{", ".join(HUB_LICENSES)}, array]'}]})
        self._send(200, {"errors": [], "warnings": []})

    def _branch(self, key: str, branch: str, body: bytes) -> None:
        with self.hub.lock:
            branches = self.hub.repos[key].branches
            if branch in branches:
                return self._error(409, "Branch already exists")
            branches[branch] = dict(branches["main"])
        self._send(200, {})

    def _preupload(self, key: str, rev: str, body: bytes) -> None:
        current = self.hub.repos[key].branches.get(rev, {})
        answers = []
        for item in json.loads(body)["files"]:
            is_lfs = self.hub.is_lfs(item["path"], item["size"])
            remote = current.get(item["path"])
            oid = None
            if remote is not None:
                oid = hashlib.sha256(remote[0]).hexdigest() if is_lfs else git_blob_id(remote[0])
            answers.append({"path": item["path"], "uploadMode": "lfs" if is_lfs else "regular", "shouldIgnore": False, "oid": oid})
        self._send(200, {"files": answers})

    def _lfs_batch(self, payload: dict[str, Any]) -> None:
        objects = []
        for item in payload["objects"]:
            answer: dict[str, Any] = {"oid": item["oid"], "size": item["size"]}
            if item["oid"] not in self.hub.lfs_objects:
                answer["actions"] = {"upload": {"href": f"{self.hub.url}/_lfs/{item['oid']}"}}
            objects.append(answer)
        self._send(200, {"transfer": "basic", "objects": objects})

    def _commit(self, key: str, branch: str, body: bytes) -> None:
        with self.hub.lock:
            self.hub.commit_attempts += 1
            failing = self.hub.commit_attempts == self.hub.fail_commit
        if failing and self.hub.fail_mode == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if failing and self.hub.fail_mode.isdigit():  # "500", or a refusal such as "422"
            return self._error(int(self.hub.fail_mode), f"HTTP {self.hub.fail_mode} - simulated")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header, staged, deleted = lines[0]["value"], {}, []
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "file":
                staged[value["path"]] = (base64.b64decode(value["content"]), False)
            elif line["key"] == "lfsFile":
                if value["oid"] not in self.hub.lfs_objects:
                    return self._error(400, f"LFS object {value['oid']} was never uploaded")
                staged[value["path"]] = (self.hub.lfs_objects[value["oid"]], True)
            elif line["key"] == "deletedFile":
                deleted.append(value["path"])
        with self.hub.lock:
            repo = self.hub.repos[key]
            files = repo.branches.setdefault(branch, {})
            files.update(staged)
            for path in deleted:
                files.pop(path, None)
            repo.modified = _now()
            self.hub.commits.append(Commit(key, branch, header["summary"], sorted(staged), deleted))
            resolved = self.hub.resolve(key, branch)
            assert resolved is not None
            oid = resolved[0]
            repo.titles[oid] = header["summary"]
        self._send(200, {"commitUrl": f"{self.hub.url}/{key}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None})


def _file_entry(path: str, data: bytes, is_lfs: bool, last: dict[str, str] | None) -> dict[str, Any]:
    """A file as ``tree`` and ``paths-info`` list it; ``last`` (with ``expand``) adds commit and scan fields."""
    entry: dict[str, Any] = {"type": "file", "path": path, "size": len(data), "oid": git_blob_id(data)}
    if is_lfs:
        entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
    if last is not None:
        entry["lastCommit"] = last
        entry["securityFileStatus"] = {"status": "safe", "avScan": {"virusFound": False, "virusNames": None},
                                       "pickleImportScan": None}
    return entry


def _folder_entry(path: str, last: dict[str, str] | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": "directory", "path": path, "size": 0, "oid": hashlib.sha1(f"tree {path}".encode()).hexdigest()}
    if last is not None:
        entry["lastCommit"] = last
    return entry


def _card_data(readme: bytes) -> dict[str, Any] | None:
    """The YAML header of a README, as the Hub returns it in ``cardData`` (None if absent or not a mapping)."""
    text = readme.decode("utf-8", "replace")
    if not text.startswith("---"):
        return None
    try:
        data = yaml.safe_load(text.split("---", 2)[1])
    except (yaml.YAMLError, IndexError):
        return None
    return data if isinstance(data, dict) else None


def closed_port() -> int:
    """A port on 127.0.0.1 nobody listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
