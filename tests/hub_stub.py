"""A local stand-in for the Hugging Face Hub API, only what ``builder.publish`` needs.

A threaded ``http.server`` on 127.0.0.1 serving what huggingface_hub 2.4.0 calls while
publishing with HF_HUB_DISABLE_XET=1: repo and branch creation, YAML validation, the repo
tree, preupload (``.parquet``/``.tar``/``.png`` and files over 10 MB as LFS, the rest
regular), the LFS batch API with a basic PUT transfer, the NDJSON commit, and whoami.
Committed files are kept in memory per repo and branch. It checks the bearer token (401),
can refuse writes (403), and can fail the Nth commit with a 500 or by dropping the
connection, to test interruptions.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional
from urllib.parse import unquote, urlsplit

import yaml

LFS_SUFFIXES = (".parquet", ".tar", ".png")
LFS_MIN_BYTES = 10_000_000
GITATTRIBUTES = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n*.tar filter=lfs diff=lfs merge=lfs -text\n*.png filter=lfs diff=lfs merge=lfs -text\n"
REPO_ROUTE = re.compile(r"^/api/(models|datasets|spaces)/([^/]+/[^/]+)/(preupload|commit|tree|branch)/([^/]+)(/.*)?$")
LFS_BATCH_ROUTE = re.compile(r"^/(?:datasets/|spaces/)?([^/]+/[^/]+)\.git/info/lfs/objects/batch$")


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


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
    branches: dict[str, dict[str, tuple[bytes, bool]]] = field(default_factory=dict)  # path -> (bytes, is_lfs)


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
        self.fail_commit: Optional[int] = None  # fail the Nth commit attempt (1-based)
        self.fail_mode = "500"  # or "drop": close the connection without an answer
        self.forbidden = False  # 403 on every write
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def start(self) -> "HubStub":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def files(self, repo_id: str, branch: str = "main", kind: str = "datasets") -> dict[str, bytes]:
        return {path: data for path, (data, _) in self.repos[f"{kind}/{repo_id}"].branches[branch].items()}

    def is_lfs(self, path: str, size: int) -> bool:
        return path.endswith(LFS_SUFFIXES) or size >= LFS_MIN_BYTES


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

    def _send(self, status: int, payload: Any = None, headers: Optional[dict[str, str]] = None) -> None:
        data = json.dumps(payload if payload is not None else {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, code: Optional[str] = None) -> None:
        headers = {"X-Error-Message": message, **({"X-Error-Code": code} if code else {})}
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

    # ------------------------------------------------------------------ routes

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        self.hub.requests.append(("GET", url.path))
        if not self._authorized():
            return
        if url.path == "/api/whoami-v2":
            return self._send(200, {"type": "user", "name": self.hub.user})
        match = REPO_ROUTE.match(url.path)
        if match and match.group(3) == "tree":
            return self._tree(f"{match.group(1)}/{match.group(2)}", unquote(match.group(4)))
        self._error(404, "Not found", "RepoNotFound" if url.path.startswith("/api/datasets/") else None)

    def do_PUT(self) -> None:
        """The LFS 'basic' transfer: like a pre-signed storage URL, no Authorization header."""
        url = urlsplit(self.path)
        self.hub.requests.append(("PUT", url.path))
        oid, data = url.path.rsplit("/", 1)[-1], self._body()
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
        match = REPO_ROUTE.match(url.path)
        if not match:
            return self._error(404, "Not found")
        key, action, rev = f"{match.group(1)}/{match.group(2)}", match.group(3), unquote(match.group(4))
        if key not in self.hub.repos:
            return self._error(404, "Repository not found", "RepoNotFound")
        handler = {"preupload": self._preupload, "commit": self._commit, "branch": self._branch}.get(action)
        if handler is None:
            return self._error(404, "Not found")
        handler(key, rev, body)

    def _create(self, payload: dict[str, Any]) -> None:
        kind = f"{payload.get('type') or 'model'}s"
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else f"{self.hub.user}/{payload['name']}"
        key = f"{kind}/{repo_id}"
        url = f"{self.hub.url}/{kind}/{repo_id}" if kind != "models" else f"{self.hub.url}/{repo_id}"
        if key in self.hub.repos:
            return self._send(409, {"error": "You already created this repo", "url": url}, {"X-Error-Message": "You already created this repo"})
        repo = Repo(kind, payload.get("visibility") == "private")
        repo.branches["main"] = {".gitattributes": (GITATTRIBUTES, False)}
        self.hub.repos[key] = repo
        self._send(200, {"url": url, "name": repo_id})

    def _validate_yaml(self, payload: dict[str, Any]) -> None:
        content = payload.get("content", "")
        try:
            header = content.split("---", 2)[1] if content.startswith("---") else ""
            yaml.safe_load(header)
        except (yaml.YAMLError, IndexError) as error:
            return self._send(400, {"errors": [{"message": str(error)}]})
        self._send(200, {"errors": [], "warnings": []})

    def _branch(self, key: str, branch: str, body: bytes) -> None:
        branches = self.hub.repos[key].branches
        if branch in branches:
            return self._error(409, "Branch already exists")
        branches[branch] = dict(branches["main"])
        self._send(200, {})

    def _tree(self, key: str, rev: str) -> None:
        repo = self.hub.repos.get(key)
        if repo is None:
            return self._error(404, "Repository not found", "RepoNotFound")
        if rev not in repo.branches:
            return self._error(404, "Revision not found", "RevisionNotFound")
        entries = []
        for path, (data, is_lfs) in sorted(repo.branches[rev].items()):
            entry: dict[str, Any] = {"type": "file", "path": path, "size": len(data), "oid": git_blob_id(data)}
            if is_lfs:
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            entries.append(entry)
        self._send(200, entries)

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
        if failing:
            return self._error(500, "Internal Error - simulated")
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
        files = self.hub.repos[key].branches.setdefault(branch, {})
        files.update(staged)
        for path in deleted:
            files.pop(path, None)
        self.hub.commits.append(Commit(key, branch, header["summary"], sorted(staged), deleted))
        oid = hashlib.sha1(f"{key}{len(self.hub.commits)}".encode()).hexdigest()
        self._send(200, {"commitUrl": f"{self.hub.url}/{key}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None})


def closed_port() -> int:
    """A port on 127.0.0.1 nobody listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
