"""A local stand-in for the Hugging Face Hub HTTP API, so pushes and Hub loads are testable offline.

No package gives a Hub server that accepts uploads, and these machines cannot reach huggingface.co. This
module serves the routes that the real `huggingface_hub` 2.x client calls for `create_repo` ->
`upload_folder` / `create_commit` -> `from_pretrained` / `pipeline` / `AutoPeftModel*.from_pretrained`:

    GET  /api/whoami-v2                             token check (401 for an unknown token)
    POST /api/repos/create                          409 if the repo exists, 403 outside the user's namespaces
    DELETE /api/repos/delete                        delete_repo
    POST /api/validate-yaml                         README front matter must be YAML
    GET  /api/models/{repo}[/revision/{rev}]        model_info / repo_info
    GET  /api/models/{repo}/tree/{rev}[/{path}]     list_repo_tree (recursive or not)
    POST /api/models/{repo}/paths-info/{rev}        get_paths_info
    GET  /api/models/{repo}/refs                    list_repo_refs
    POST /api/models/{repo}/branch/{name}           create_branch
    GET  /api/models/{repo}/auth-check[/write]      auth_check
    POST /api/models/{repo}/preupload/{rev}         every file is declared "regular": no LFS, no Xet
    POST /api/models/{repo}/commit/{rev}            the NDJSON commit (base64 file entries, deletions)
    GET|HEAD /{repo}/resolve/{rev}/{path}           downloads, with ETag / X-Repo-Commit / Content-Length

Only model repos exist here. Errors carry the `X-Error-Code` header (RepoNotFound, RevisionNotFound,
EntryNotFound) because that header, not the status code, decides which exception the client raises, and
transformers treats a missing optional file as absent only when it gets `EntryNotFound`.

The `hub_server` fixture at the bottom starts a server and points huggingface_hub and transformers at it
(see `point_clients_at`). Use it with `from tests.hub_server import hub_server_fixture  # noqa: F401` in a
test module or in tests/conftest.py.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
_REPO = r"(?P<repo>[^/]+/[^/]+)"
_REV = r"(?P<rev>[^/]+)"


def git_blob_sha(data: bytes) -> str:
    """The git blob id, which is what the Hub returns as a regular file's ETag and `oid`."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeRepo:
    """One model repo: its commits (full snapshots, path -> bytes) and branches (name -> commit id)."""

    repo_id: str
    private: bool = False
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z"))

    @property
    def files(self) -> dict[str, bytes]:
        """The files on `main`, for assertions in tests."""
        return self.commits[self.branches["main"]]

    def resolve(self, revision: str) -> str | None:
        """A branch name or a full commit id -> the commit id, or None when it names nothing."""
        if revision in self.branches:
            return self.branches[revision]
        return revision if revision in self.commits else None


class HubState:
    """What the server knows, shared by the request threads; tests read and flip its attributes.

    `fail_uploads = True` makes every commit answer 503 (a Hub outage); `fail_next_uploads = n` fails only the
    next n commits. Commits fail, not preuploads, because the client itself retries preuploads for ~20 s.
    """

    def __init__(self, token: str, user: str, orgs: tuple[str, ...]) -> None:
        self.token = token
        self.read_token = "hf_readonly_" + hashlib.sha1(token.encode()).hexdigest()[:16]
        self.user = user
        self.orgs = orgs
        self.url = ""
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[tuple[str, str]] = []
        self.fail_uploads = False
        self.fail_next_uploads = 0
        self.commit_count = 0
        self.lock = threading.RLock()
        self._counter = itertools.count()

    def role(self, token: str) -> str | None:
        """'write', 'read' or None for an unknown token."""
        return {self.token: "write", self.read_token: "read"}.get(token)

    def can_write(self, token: str | None, namespace: str) -> bool:
        return token is not None and self.role(token) == "write" and namespace in (self.user, *self.orgs)

    def new_commit(self, repo: FakeRepo, branch: str, files: dict[str, bytes], message: str) -> str:
        """Store a snapshot and move the branch; the id only has to be unique and look like a git sha."""
        seed = f"{repo.repo_id}:{branch}:{next(self._counter)}:{message}:{sorted(files)}"
        sha = hashlib.sha1(seed.encode()).hexdigest()
        repo.commits[sha] = files
        repo.branches[branch] = sha
        repo.messages[sha] = message
        return sha

    def take_upload_failure(self) -> bool:
        with self.lock:
            if self.fail_uploads:
                return True
            if self.fail_next_uploads > 0:
                self.fail_next_uploads -= 1
                return True
            return False


class HubError(Exception):
    """Raised inside a route to answer with an error status and the Hub's error headers."""

    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None,
                 **body: object) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.code, self.commit, self.body = status, message, code, commit, body


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real Hub; every answer sets Content-Length
    server_version = "FakeHub/1.0"
    timeout = 30
    state: HubState  # set on a subclass by HubServer

    # -- plumbing ----------------------------------------------------------------------------------------
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's signature
        """Silence the default stderr access log; `state.requests` keeps (method, path) for tests instead."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._dispatch("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while (size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)) > 0:
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _dispatch(self, method: str) -> None:
        body = self._read_body()  # always drain the body so the keep-alive connection stays in sync
        split = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        self.body = body
        self.state.requests.append((method, split.path))
        try:
            for route_method, pattern, handler in _ROUTES:
                match = pattern.match(split.path)
                if match and method in route_method.split("|"):
                    with self.state.lock:
                        handler(self, **{k: unquote(v) for k, v in match.groupdict().items() if v is not None})
                    return
            raise HubError(404, f"no route for {method} {split.path}")
        except HubError as err:
            headers = {"X-Error-Message": err.message}
            if err.code:
                headers["X-Error-Code"] = err.code
            if err.commit:
                headers["X-Repo-Commit"] = err.commit
            self._send_json(err.status, {"error": err.message, **err.body}, headers)

    def _send(self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_json(self, status: int, obj: object, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json", headers)

    # -- auth and lookups -------------------------------------------------------------------------------
    def _token(self) -> str | None:
        """The bearer token, or None; a token the server does not know is a 401, as on the Hub."""
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return None
        token = auth[len("Bearer ") :]
        if self.state.role(token) is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return token

    def _repo(self, repo_id: str, *, write: bool = False) -> FakeRepo:
        token = self._token()
        repo = self.state.repos.get(repo_id)
        owner = token is not None and repo_id.split("/")[0] in (self.state.user, *self.state.orgs)
        if repo is None or (repo.private and not owner):
            raise HubError(404, "Repository not found", "RepoNotFound")
        if write and not self.state.can_write(token, repo_id.split("/")[0]):
            raise HubError(403, f"You don't have the rights to write to {repo_id}")
        return repo

    def _commit(self, repo: FakeRepo, revision: str) -> str:
        sha = repo.resolve(revision)
        if sha is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return sha

    # -- account and repo routes ------------------------------------------------------------------------
    def whoami(self) -> None:
        token = self._token()
        if token is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        role = self.state.role(token)
        self._send_json(
            200,
            {
                "type": "user",
                "id": "0" * 24,
                "name": self.state.user,
                "fullname": "TransferKit Tests",
                "orgs": [{"name": org, "type": "org"} for org in self.state.orgs],
                "auth": {"type": "access_token", "accessToken": {"displayName": "tests", "role": role}},
            },
        )

    def create_repo(self) -> None:
        payload = json.loads(self.body or b"{}")
        if payload.get("type", "model") != "model":
            raise HubError(400, "only model repos are served by this test Hub")
        namespace = payload.get("organization") or self.state.user
        repo_id = f"{namespace}/{payload['name']}"
        if not self.state.can_write(self._token(), namespace):
            raise HubError(403, f'You don\'t have the rights to create a model under the namespace "{namespace}"')
        if repo_id in self.state.repos:
            # the client reads "url" from the 409 body when exist_ok=True
            raise HubError(409, "You already created this model repo", url=f"{self.state.url}/{repo_id}")
        repo = FakeRepo(repo_id, private=payload.get("visibility") == "private" or bool(payload.get("private")))
        self.state.new_commit(repo, "main", {".gitattributes": GITATTRIBUTES}, "initial commit")
        self.state.repos[repo_id] = repo
        self._send_json(200, {"url": f"{self.state.url}/{repo_id}", "name": repo_id, "id": repo_id})

    def delete_repo(self) -> None:
        payload = json.loads(self.body or b"{}")
        repo_id = f"{payload.get('organization') or self.state.user}/{payload['name']}"
        self._repo(repo_id, write=True)
        del self.state.repos[repo_id]
        self._send_json(200, {})

    def validate_yaml(self) -> None:
        content = json.loads(self.body)["content"]
        match = re.match(r"^---\s*\n(.*?)\n---\s*\n", content, re.DOTALL)
        try:
            metadata = yaml.safe_load(match.group(1)) if match else {}
        except yaml.YAMLError as err:
            self._send_json(400, {"errors": [{"message": f"invalid YAML: {err}"}]})
            return
        warnings = [] if metadata else [{"message": "empty or missing yaml metadata in repo card"}]
        self._send_json(200, {"errors": [], "warnings": warnings})

    def model_info(self, repo: str, rev: str = "main") -> None:
        fake = self._repo(repo)
        sha = self._commit(fake, rev)
        files = fake.commits[sha]
        card = _front_matter(files.get("README.md", b""))
        self._send_json(
            200,
            {
                "_id": hashlib.sha1(repo.encode()).hexdigest()[:24],
                "id": repo,
                "modelId": repo,
                "author": repo.split("/")[0],
                "sha": sha,
                "private": fake.private,
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": card.get("tags") or [],
                "pipeline_tag": card.get("pipeline_tag"),
                "library_name": card.get("library_name"),
                "cardData": card or None,
                "createdAt": fake.created_at,
                "lastModified": fake.created_at,
                "siblings": [{"rfilename": path, "size": len(data)} for path, data in sorted(files.items())],
            },
        )

    def refs(self, repo: str) -> None:
        fake = self._repo(repo)
        branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": s} for n, s in fake.branches.items()]
        self._send_json(200, {"branches": branches, "tags": [], "converts": [], "pullRequests": []})

    def create_branch(self, repo: str, branch: str) -> None:
        fake = self._repo(repo, write=True)
        if branch in fake.branches:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        start = json.loads(self.body or b"{}").get("startingPoint") or "main"
        fake.branches[branch] = self._commit(fake, start)
        self._send_json(200, {})

    def auth_check(self, repo: str, write: str | None = None) -> None:
        self._repo(repo, write=write is not None)
        self._send_json(200, {})

    # -- listing ----------------------------------------------------------------------------------------
    def tree(self, repo: str, rev: str, path: str = "") -> None:
        fake = self._repo(repo)
        files = fake.commits[self._commit(fake, rev)]
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        if prefix and not any(p.startswith(prefix) for p in files):
            raise HubError(404, f"{path} does not exist on {rev}", "EntryNotFound")
        recursive = self.query.get("recursive", "").lower() in ("1", "true")
        self._send_json(200, _tree_entries(files, prefix, recursive))

    def paths_info(self, repo: str, rev: str) -> None:
        fake = self._repo(repo)
        files = fake.commits[self._commit(fake, rev)]
        form = parse_qs(self.body.decode())
        wanted = form.get("paths", [])
        if not wanted and self.body.startswith(b"{"):
            wanted = json.loads(self.body).get("paths", [])
        entries = []
        for path in wanted:
            if path in files:
                entries.append(_file_entry(path, files[path]))
            elif any(p.startswith(path.rstrip("/") + "/") for p in files):
                entries.append(_folder_entry(path.rstrip("/")))
        self._send_json(200, entries)

    # -- uploads ----------------------------------------------------------------------------------------
    def preupload(self, repo: str, rev: str) -> None:
        fake = self._repo(repo, write=True)
        files = fake.commits[self._commit(fake, rev)]
        answer = []
        for item in json.loads(self.body)["files"]:
            oid = git_blob_sha(files[item["path"]]) if item["path"] in files else None
            answer.append({"path": item["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": oid})
        self._send_json(200, {"files": answer, "commitOid": self._commit(fake, rev)})

    def commit(self, repo: str, rev: str) -> None:
        fake = self._repo(repo, write=True)
        if self.state.take_upload_failure():
            raise HubError(503, "Service Unavailable (simulated by the test Hub)")
        if self.query.get("create_pr"):
            raise HubError(400, "pull requests are not served by this test Hub")
        parent = self._commit(fake, rev)
        if rev not in fake.branches:
            raise HubError(400, f"can only commit to a branch, not {rev}")
        files = dict(fake.commits[parent])
        summary = ""
        for line in self.body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                summary = value.get("summary", "")
            elif key == "file":
                content = value["content"]
                files[value["path"]] = (
                    base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
                )
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                files = {p: d for p, d in files.items() if not p.startswith(folder)}
            else:
                raise HubError(400, f"unsupported commit entry {key!r}: this test Hub declares every file regular")
        sha = self.state.new_commit(fake, rev, files, summary)
        self.state.commit_count += 1
        url = f"{self.state.url}/{repo}/commit/{sha}"
        self._send_json(200, {"success": True, "commitOid": sha, "commitUrl": url, "pullRequestUrl": None})

    # -- downloads --------------------------------------------------------------------------------------
    def resolve(self, repo: str, rev: str, path: str) -> None:
        fake = self._repo(repo)
        sha = self._commit(fake, rev)
        files = fake.commits[sha]
        if path not in files:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", commit=sha)
        data = files[path]
        etag = git_blob_sha(data)
        headers = {"ETag": f'"{etag}"', "X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
        start = _range_start(self.headers.get("Range"))
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            self._send(206, data[start:], "application/octet-stream", headers)
        else:
            self._send(200, data, "application/octet-stream", headers)


def _front_matter(readme: bytes) -> dict:
    match = re.match(r"^---\s*\n(.*?)\n---\s*\n", readme.decode(errors="replace"), re.DOTALL)
    try:
        loaded = yaml.safe_load(match.group(1)) if match else None
    except yaml.YAMLError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _file_entry(path: str, data: bytes) -> dict:
    return {"type": "file", "oid": git_blob_sha(data), "size": len(data), "path": path}


def _folder_entry(path: str) -> dict:
    return {"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0, "path": path}


def _tree_entries(files: dict[str, bytes], prefix: str, recursive: bool) -> list[dict]:
    """The Hub lists direct children (files and folders) unless `recursive`, which also lists every folder."""
    entries: dict[str, dict] = {}
    for path, data in sorted(files.items()):
        if not path.startswith(prefix):
            continue
        parts = path[len(prefix) :].split("/")
        for depth in range(1, len(parts)):
            if depth > 1 and not recursive:
                break
            folder = prefix + "/".join(parts[:depth])
            entries.setdefault(folder, _folder_entry(folder))
        if recursive or len(parts) == 1:
            entries[path] = _file_entry(path, data)
    return list(entries.values())


def _range_start(header: str | None) -> int:
    match = re.fullmatch(r"bytes=(\d+)-", header or "")
    return int(match.group(1)) if match else 0


_API = r"^/api/models/" + _REPO
_ROUTES: list[tuple[str, re.Pattern[str], Callable[..., None]]] = [
    ("GET", re.compile(r"^/api/whoami-v2$"), _Handler.whoami),
    ("POST", re.compile(r"^/api/repos/create$"), _Handler.create_repo),
    ("DELETE", re.compile(r"^/api/repos/delete$"), _Handler.delete_repo),
    ("POST", re.compile(r"^/api/validate-yaml$"), _Handler.validate_yaml),
    ("GET", re.compile(_API + r"$"), _Handler.model_info),
    ("GET", re.compile(_API + r"/revision/" + _REV + r"$"), _Handler.model_info),
    ("GET", re.compile(_API + r"/tree/" + _REV + r"(?:/(?P<path>.+))?$"), _Handler.tree),
    ("POST", re.compile(_API + r"/paths-info/" + _REV + r"$"), _Handler.paths_info),
    ("GET", re.compile(_API + r"/refs$"), _Handler.refs),
    ("POST", re.compile(_API + r"/branch/(?P<branch>[^/]+)$"), _Handler.create_branch),
    ("GET", re.compile(_API + r"/auth-check(?P<write>/write)?$"), _Handler.auth_check),
    ("POST", re.compile(_API + r"/preupload/" + _REV + r"$"), _Handler.preupload),
    ("POST", re.compile(_API + r"/commit/" + _REV + r"$"), _Handler.commit),
    ("GET|HEAD", re.compile(r"^/" + _REPO + r"/resolve/" + _REV + r"/(?P<path>.+)$"), _Handler.resolve),
]


class HubServer(HubState):
    """A running fake Hub on 127.0.0.1 with an ephemeral port; use as a context manager.

    Attributes tests use: `url`, `token` (the only write token), `read_token` (valid but read-only), `user`,
    `orgs`, `repos` (repo_id -> FakeRepo; `.files` is main's path -> bytes), `requests` ((method, path) seen),
    `fail_uploads` / `fail_next_uploads` (simulate an outage of the commit endpoint), `commit_count`.
    """

    def __init__(self, token: str = "hf_test_transferkit_0123456789abcdef", user: str = "tester",
                 orgs: tuple[str, ...] = ("transferkit-org",)) -> None:  # fmt: skip
        super().__init__(token, user, orgs)
        handler = type("_BoundHandler", (_Handler,), {"state": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        serve = self._httpd.serve_forever
        self._thread = threading.Thread(target=serve, args=(0.05,), name="fake-hub", daemon=True)

    def start(self) -> HubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() would wait forever for a loop that never started
            self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def point_clients_at(monkeypatch: pytest.MonkeyPatch, url: str, token: str | None, home: Path) -> None:
    """Point huggingface_hub, transformers and peft at `url`, with a private cache and token file in `home`.

    Setting HF_ENDPOINT is not enough once huggingface_hub is imported:
    - `huggingface_hub.constants` reads the environment at import time (ENDPOINT,
      HUGGINGFACE_CO_URL_TEMPLATE, HF_HUB_DISABLE_XET, HF_HUB_OFFLINE, the cache and token paths);
    - the module-level `huggingface_hub.hf_api.api`, behind `huggingface_hub.file_exists`,
      `hf_api.upload_folder` and friends (peft uses them), froze its endpoint when it was built;
    - transformers caches one HfApi in `transformers.utils.hub._hf_api`.
    So the env vars are set (for subprocesses and later imports) and the copies already read are patched;
    monkeypatch restores all of it after the test.
    """
    import huggingface_hub.constants as constants
    import huggingface_hub.hf_api as hf_api

    home.mkdir(parents=True, exist_ok=True)
    env = {
        "HF_ENDPOINT": url,
        "HF_HOME": str(home),
        "HF_HUB_DISABLE_XET": "1",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in (
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_TOKEN_PATH",
        "HF_HUB_CACHE",
    ):
        monkeypatch.delenv(key, raising=False)
    if token is None:
        monkeypatch.delenv("HF_TOKEN", raising=False)
    else:
        monkeypatch.setenv("HF_TOKEN", token)

    patched = {
        "ENDPOINT": url,
        "HUGGINGFACE_CO_URL_TEMPLATE": url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": frozenset(constants.HF_URL_HOSTS | {"127.0.0.1"}),
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_OFFLINE": False,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
    }
    old_home = constants.HF_HOME
    for name in dir(constants):  # the rest of what lives under HF_HOME (update-check stamps, agent registry)
        value = getattr(constants, name)
        if name not in patched and isinstance(value, str) and value.startswith(old_home + os.sep):
            patched[name] = str(home) + value[len(old_home) :]
    for name, value in patched.items():
        monkeypatch.setattr(constants, name, value, raising=False)
    monkeypatch.setattr(hf_api.api, "endpoint", url)
    try:  # import now, so that a client cached during the test is dropped when monkeypatch undoes this
        import transformers.utils.hub as transformers_hub
    except ImportError:
        return
    monkeypatch.setattr(transformers_hub, "_hf_api", None)


@pytest.fixture(name="hub_server")
def hub_server_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    """A fresh fake Hub per test; huggingface_hub/transformers point at it and HF_TOKEN is its token."""
    with HubServer() as server:
        point_clients_at(monkeypatch, server.url, server.token, tmp_path / "hf_home")
        yield server
