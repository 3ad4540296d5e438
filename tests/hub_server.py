"""A Hub-like HTTP server on loopback: the subset of the Hugging Face Hub API that ``huggingface_hub``'s push
path calls, enough to test ``factory push-hf`` without the internet.

Endpoints (request and answer shapes read from ``huggingface_hub``'s ``hf_api.py``, ``_commit_api.py`` and
``lfs.py``):

- ``GET /api/whoami-v2``: the user, or 401 for a wrong or missing token;
- ``POST /api/repos/create``: a repo with an initial commit (``.gitattributes``), 409 if it exists;
- ``GET /api/{type}s/{ns}/{name}[/revision/{rev}]``: repo info (``id``, ``sha``, ``private``, ``siblings``);
- ``POST /api/validate-yaml``: the card's YAML header must parse to a mapping (400 otherwise);
- ``POST /api/{type}s/{repo}/preupload/{rev}``: ``uploadMode`` per file (``regular``, or ``lfs`` for the
  suffixes in ``lfs_suffixes``) and the ``oid`` of the file already there (git sha1, or sha256 for LFS);
- ``POST /{type-prefix}{repo}.git/info/lfs/objects/batch`` and ``PUT /lfs-upload/{sha256}``: the LFS basic
  transfer (an object already stored gets no ``actions``, as on the Hub); the PUT is unauthenticated, like a
  presigned S3 URL;
- ``POST /api/{type}s/{repo}/commit/{rev}``: the NDJSON commit (header, ``file`` with base64 content,
  ``lfsFile``, ``deletedFile``, ``deletedFolder``);
- ``POST /api/{type}s/{repo}/branch/{branch}``: a branch from ``startingPoint`` (default ``main``), 409 if it exists;
- ``GET /api/{type}s/{repo}/tree/{rev}[/{path}]`` (``recursive``) and ``POST .../paths-info/{rev}``;
- ``GET /{type-prefix}{repo}/resolve/{rev}/{path}``: a file's bytes.

Every request is recorded (method, path, headers, body) in :attr:`HubState.requests`, so a test can check
where the token went. :meth:`HubState.fail` makes the next matching requests answer an error.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

GITATTRIBUTES = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n*.arrow filter=lfs diff=lfs merge=lfs -text\n"
PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}


def git_oid(data: bytes) -> str:
    """git's blob id: sha1 of ``blob <size>\\0`` and the bytes."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class Blob:
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def pointer(self) -> bytes:
        return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\n"
                f"size {len(self.data)}\n").encode()

    def entry(self, path: str) -> dict:
        """A file as the tree and paths-info endpoints list it."""
        if not self.lfs:
            return {"type": "file", "path": path, "size": len(self.data), "oid": git_oid(self.data)}
        pointer = self.pointer()
        return {"type": "file", "path": path, "size": len(self.data), "oid": git_oid(pointer),
                "lfs": {"oid": self.sha256, "size": len(self.data), "pointerSize": len(pointer)}}


@dataclass
class Commit:
    oid: str
    parent: str | None
    summary: str
    files: dict[str, Blob]


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    def resolve(self, rev: str) -> Commit | None:
        oid = self.branches.get(rev, rev)
        return self.commits.get(oid)


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes


@dataclass
class Failure:
    endpoint: str
    status: int
    message: str
    times: int
    after: int


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, **extra):
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


class HubState:
    """The server's repositories, LFS store, request log and planned failures (one lock for all)."""

    def __init__(self, token: str, user: str = "tester", lfs_suffixes: tuple[str, ...] = ()):
        self.token = token
        self.user = user
        self.lfs_suffixes = lfs_suffixes
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.requests: list[Request] = []
        self.failures: list[Failure] = []
        self.lock = threading.Lock()
        self.url = ""

    # what tests use
    def fail(self, endpoint: str, status: int = 500, message: str = "internal error", times: int = 1,
             after: int = 0) -> None:
        """After ``after`` more requests to ``endpoint`` (``commit``, ``create``, ``preupload``, ``whoami``,
        ...) pass, the next ``times`` answer ``status`` with ``message``; ``{auth}`` in the message becomes
        the request's Authorization header (a server that echoes what it got)."""
        self.failures.append(Failure(endpoint, status, message, times, after))

    def repo(self, repo_id: str, repo_type: str = "dataset") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "dataset") -> dict[str, bytes]:
        """Path -> bytes of every file at ``revision``."""
        commit = self.repo(repo_id, repo_type).resolve(revision)
        assert commit is not None, f"no revision {revision}"
        return {p: b.data for p, b in commit.files.items()}

    def calls(self, endpoint: str) -> list[Request]:
        return [r for r in self.requests if _endpoint_of(r.method, r.path) == endpoint]

    # the API
    def handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict, bytes]:
        with self.lock:
            self.requests.append(Request(method, raw_path, headers, body))
            endpoint = _endpoint_of(method, raw_path)
            for f in self.failures:
                if f.endpoint == endpoint and f.after > 0:
                    f.after -= 1
                elif f.endpoint == endpoint and f.times > 0:
                    f.times -= 1
                    msg = f.message.replace("{auth}", headers.get("authorization", ""))
                    return _json(f.status, {"error": msg})
            try:
                if endpoint.startswith(f"{method} "):  # e.g. huggingface_hub's agent-harnesses registry
                    raise HubError(404, f"no such endpoint: {method} {urlsplit(raw_path).path}")
                if endpoint != "lfs-upload" and headers.get("authorization") != f"Bearer {self.token}":
                    raise HubError(401, "Invalid credentials in Authorization header")
                status, answer = self._route(endpoint, method, raw_path, headers, body)
            except HubError as exc:
                extra = {"X-Error-Code": exc.code} if exc.code else {}
                code, hdrs, data = _json(exc.status, {"error": exc.message, **exc.extra})
                return code, {**hdrs, **extra}, data
            if isinstance(answer, bytes):
                return status, {"Content-Type": "application/octet-stream"}, answer
            return _json(status, answer)

    def _route(self, endpoint: str, method: str, raw_path: str, headers: dict[str, str], body: bytes):
        url = urlsplit(raw_path)
        query = parse_qs(url.query)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        if endpoint == "whoami":
            return 200, {"type": "user", "name": self.user, "fullname": "Test User", "orgs": [],
                         "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}}}
        if endpoint == "create":
            return self._create(json.loads(body))
        if endpoint == "validate-yaml":
            return self._validate_yaml(json.loads(body)["content"])
        if endpoint == "lfs-batch":
            return self._lfs_batch(json.loads(body))
        if endpoint == "lfs-upload":
            oid = parts[1]
            if hashlib.sha256(body).hexdigest() != oid:
                raise HubError(400, f"LFS upload: content does not match oid {oid}")
            self.lfs[oid] = body
            return 200, {}
        if endpoint == "resolve":  # /[datasets/|spaces/]{ns}/{name}/resolve/{rev}/{path}
            i = parts.index("resolve")
            repo_type = {"datasets": "dataset", "spaces": "space"}.get(parts[0], "model") if i == 3 else "model"
            commit = self._commit(self._repo(repo_type, "/".join(parts[i - 2:i])), parts[i + 1])
            path = "/".join(parts[i + 2:])
            if path not in commit.files:
                raise HubError(404, f"{path}: no such file", "EntryNotFound")
            return 200, commit.files[path].data
        # /api/{type}s/{ns}/{name}[/{op}/{rev}[/{path}]]
        repo = self._repo(parts[1][:-1], f"{parts[2]}/{parts[3]}")
        op, rest = (parts[4], parts[5:]) if len(parts) > 4 else (None, [])
        if op is None or op == "revision":
            commit = self._commit(repo, rest[0] if rest else "main")
            return 200, {"id": repo.repo_id, "sha": commit.oid, "private": repo.private, "disabled": False,
                         "gated": False, "siblings": [{"rfilename": p} for p in sorted(commit.files)]}
        if op == "preupload":
            return self._preupload(repo, rest[0], json.loads(body))
        if op == "commit":
            return self._commit_ndjson(repo, rest[0], body)
        if op == "branch":
            return self._branch(repo, rest[0], json.loads(body or b"{}"))
        if op == "tree":
            recursive = query.get("recursive", ["false"])[0].lower() in ("true", "1")
            return self._tree(repo, rest[0], "/".join(rest[1:]), recursive)
        if op == "paths-info":
            form = parse_qs(body.decode())
            commit = self._commit(repo, rest[0])
            return 200, [commit.files[p].entry(p) for p in form.get("paths", []) if p in commit.files]
        raise HubError(404, f"no such endpoint: {method} {url.path}")

    def _repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")
        return repo

    def _commit(self, repo: Repo, rev: str) -> Commit:
        commit = repo.resolve(rev)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return commit

    def _create(self, payload: dict) -> tuple[int, dict]:
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or self.user}/{payload['name']}"
        url = f"{self.url}/{PREFIXES[repo_type]}{repo_id}"
        if (repo_type, repo_id) in self.repos:
            raise HubError(409, "You already created this repo", url=url)  # the Hub's 409 names the repo too
        repo = Repo(repo_type, repo_id, private=payload.get("visibility") == "private")
        first = Commit(uuid.uuid4().hex + "00000000", None, "initial commit",
                       {".gitattributes": Blob(GITATTRIBUTES, lfs=False)})
        repo.commits[first.oid] = first
        repo.branches["main"] = first.oid
        self.repos[(repo_type, repo_id)] = repo
        return 200, {"url": url, "name": repo_id, "id": uuid.uuid4().hex}

    def _validate_yaml(self, content: str) -> tuple[int, dict]:
        match = re.match(r"^---\n(.*?)\n---\n", content, re.S)
        if match is None:
            return 200, {"warnings": [{"message": "empty or missing yaml metadata in repo card"}]}
        try:
            meta = yaml.safe_load(match.group(1))
        except yaml.YAMLError as exc:
            raise HubError(400, f"Invalid YAML: {exc}") from None
        if not isinstance(meta, dict):
            raise HubError(400, "YAML metadata must be a mapping")
        return 200, {"errors": [], "warnings": []}

    def _preupload(self, repo: Repo, rev: str, payload: dict) -> tuple[int, dict]:
        commit = self._commit(repo, rev)
        out = []
        for f in payload["files"]:
            lfs = f["path"].endswith(self.lfs_suffixes) if self.lfs_suffixes else False
            there = commit.files.get(f["path"])
            oid = None
            if there is not None and there.lfs == lfs:
                oid = there.sha256 if lfs else git_oid(there.data)
            out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                        "oid": oid})
        return 200, {"files": out, "commitOid": commit.oid}

    def _lfs_batch(self, payload: dict) -> tuple[int, dict]:
        objects = []
        for obj in payload["objects"]:
            item = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.lfs:
                item["actions"] = {"upload": {"href": f"{self.url}/lfs-upload/{obj['oid']}"}}
            objects.append(item)
        return 200, {"transfer": "basic", "objects": objects}

    def _commit_ndjson(self, repo: Repo, rev: str, body: bytes) -> tuple[int, dict]:
        if rev not in repo.branches:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        head = repo.commits[repo.branches[rev]]
        files = dict(head.files)
        summary = ""
        for line in body.splitlines():
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                summary = value["summary"]
                parent = value.get("parentCommit")
                if parent is not None and parent != head.oid:
                    raise HubError(412, "A commit has happened since. Please refresh and try again.")
            elif key == "file":
                files[value["path"]] = Blob(base64.b64decode(value["content"]), lfs=False)
            elif key == "lfsFile":
                data = self.lfs.get(value["oid"])
                if data is None:
                    raise HubError(400, f"LFS file {value['path']}: object {value['oid']} was never uploaded")
                files[value["path"]] = Blob(data, lfs=True)
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: b for p, b in files.items() if not p.startswith(prefix)}
            else:
                raise HubError(400, f"unknown commit operation {key!r}")
        commit = Commit(hashlib.sha1(uuid.uuid4().bytes).hexdigest(), head.oid, summary, files)
        repo.commits[commit.oid] = commit
        repo.branches[rev] = commit.oid
        url = f"{self.url}/{PREFIXES[repo.repo_type]}{repo.repo_id}/commit/{commit.oid}"
        return 200, {"commitUrl": url, "commitOid": commit.oid, "pullRequestUrl": None}

    def _branch(self, repo: Repo, branch: str, payload: dict) -> tuple[int, dict]:
        if branch in repo.branches:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        start = self._commit(repo, payload.get("startingPoint") or "main")
        repo.branches[branch] = start.oid
        return 200, {}

    def _tree(self, repo: Repo, rev: str, path: str, recursive: bool) -> tuple[int, list]:
        commit = self._commit(repo, rev)
        prefix = path.rstrip("/") + "/" if path else ""
        entries: dict[str, dict] = {}
        for p in sorted(commit.files):
            if not p.startswith(prefix):
                continue
            rel = p[len(prefix):].split("/")
            for depth in range(1, len(rel)):  # the folders on the way
                if not recursive and depth > 1:
                    break
                folder = prefix + "/".join(rel[:depth])
                entries.setdefault(folder, {"type": "directory", "path": folder, "size": 0,
                                            "oid": hashlib.sha1(folder.encode()).hexdigest()})
            if recursive or len(rel) == 1:
                entries[p] = commit.files[p].entry(p)
        if path and not entries:
            raise HubError(404, f"{path}: no such folder", "EntryNotFound")
        return 200, list(entries.values())


def _endpoint_of(method: str, raw_path: str) -> str:
    """A short name for what a request asks (``commit``, ``create``, ``tree``, ...)."""
    parts = urlsplit(raw_path).path.strip("/").split("/")
    if parts[:2] == ["api", "whoami-v2"]:
        return "whoami"
    if parts[:3] == ["api", "repos", "create"]:
        return "create"
    if parts[:2] == ["api", "validate-yaml"]:
        return "validate-yaml"
    if parts[0] == "lfs-upload":
        return "lfs-upload"
    if raw_path.split("?")[0].endswith(".git/info/lfs/objects/batch"):
        return "lfs-batch"
    if "resolve" in parts and parts[0] != "api":
        return "resolve"
    if parts[0] == "api" and len(parts) >= 4:
        if len(parts) == 4 or parts[4] == "revision":
            return "repo-info"
        return parts[4]
    return f"{method} {parts[0]}"


def _json(status: int, obj) -> tuple[int, dict, bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(obj).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "HubServer"

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _serve(self) -> None:
        body = self._body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, out_headers, data = self.server.state.handle(self.command, self.path, headers, body)
        self.send_response(status)
        for k, v in out_headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Request-Id", uuid.uuid4().hex)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _serve

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet: the state records requests
        pass


class HubServer(ThreadingHTTPServer):
    """``HubServer(state)`` on 127.0.0.1 at a free port; ``with`` starts and stops it."""

    daemon_threads = True

    def __init__(self, state: HubState):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state
        state.url = f"http://127.0.0.1:{self.server_address[1]}"
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return self.state.url

    def __enter__(self) -> "HubServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)
