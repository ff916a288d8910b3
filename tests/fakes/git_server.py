"""A real git server for tests: bare repositories served over git's smart HTTP by `git http-backend`, behind a token check, with an admin API for repositories and faults.

Usage
-----

    python3 tests/fakes/git_server.py --port 0 --root DIR --token TOKEN [--token T2 | --token-file F] [--read-only]
                                      [--public] [--host 127.0.0.1] [--exit-when-stdin-closes]
    # stdout, once ready, the only line ever written there:  LISTENING 41234
    # logs go to stderr; SIGTERM/SIGINT stop it.

* Repositories are `DIR/<name>.git`; a name may hold one slash (`acme/widgets`), as on GitHub. Clone URL:
  `http://127.0.0.1:PORT/<name>.git` (the `.git` suffix may be left out, as GitHub allows).
* Authentication is HTTP basic auth whose PASSWORD is the token; the user name is anything (GitHub accepts
  `x-access-token`). A missing or wrong token gets `401` with `WWW-Authenticate: Basic realm="sandlink-test-git"`,
  so git asks its credential helper (or GIT_ASKPASS) and retries. `--public` (or a repository created with
  `"public": true`) lets reads through without a token, like a public GitHub repository; pushes always need one.
  Examples: `git -c credential.helper= -c credential.helper='!f() { echo username=x-access-token; echo password=T; }; f'
  push URL branch`, or `GIT_ASKPASS=script-that-prints-the-token git push ...`, or
  `git -c http.extraHeader="Authorization: Basic $(printf x-access-token:T | base64)" push URL branch`.
* `--read-only` makes an instance that refuses pushes: `403` on `info/refs?service=git-receive-pack` and on
  `POST .../git-receive-pack` (after authentication, as GitHub answers a token without write access). Point it at the
  same `--root` as a writable instance to serve the same repositories both ways.
* `--token` may be repeated; `--token-file` reads one token per line. Tokens can be replaced at run time.

Admin API (test-only, no authentication, JSON in and out; never counted or logged as git requests)
---------------------------------------------------------------------------------------------------

* `POST /_admin/repos {"name": "acme/widgets", "seedFrom": "/dir"?, "files": 500?, "branch": "main"?, "public": false?}`
  creates a bare repository. `seedFrom` commits that directory's files (its own `.git` is skipped), `files: N`
  commits N generated small text files spread over folders; with neither it is empty. Answers the repository (below)
  with 201; 409 when it exists.
* `GET /_admin/repos` lists every repository; `GET /_admin/repos/<name>` (or `?name=<name>`) answers
  `{"name", "path", "url", "head": "main", "branches": {"main": "<sha>", ...}, "public"}` so tests can assert pushes.
* `DELETE /_admin/repos/<name>` removes one.
* `POST /_admin/repos/<name>/commits {"branch": "main", "message": "...", "files": {"path": "content" | null},
  "from": "main"?}` makes a commit on the server side on top of `branch` (null deletes a path), to move a base under
  a client (a rejected push, a rebase, a conflict); a branch that does not exist yet starts at `from` (default: the
  HEAD branch). Answers `{"sha", "parent", "branch"}`.
* `POST /_admin/repos/<name>/protect {"branches": ["main"]}` refuses pushes to those branches with GitHub's
  `GH006: Protected branch update failed` (a pre-receive hook; git reports `[remote rejected]`); `[]` lifts it.
* `POST /_admin/faults {...}` (GET shows them, DELETE clears them). Counters are consumed by the requests they hit:
  - `"failNext": N, "failStatus": 500` answer the next N git requests with that status;
  - `"dropNext": N` closes the next N connections without an answer (a network failure);
  - `"cutNext": N, "cutAfterBytes": B` sends the first B bytes of the next N pack answers (the POSTs to
    git-upload-pack or git-receive-pack), then closes the connection: a transfer broken half-way;
  - `"delayMs": D` waits D ms before each answer (standing);
  - `"service": "git-upload-pack" | "git-receive-pack"` and `"repo": "<name>"` scope the faults above (both
    `info/refs?service=X` and `POST /X` count as service X).
* `POST /_admin/tokens {"tokens": ["T", ...]}` replaces the accepted tokens (a revoked or rotated token).
* `GET /_admin/requests?since=SEQ` answers `{"requests": [...], "counts": {"<kind>": n}, "nextSeq": n}`; each entry
  has `seq, method, path, repo, service, kind, status, user, credentialSha256, fault, durationMs`. The token itself is
  never stored: `credentialSha256` is the first 16 hex digits of its SHA-256, enough to tell which token was used.
  `DELETE /_admin/requests` clears the log.

Why `git http-backend`: it is git's own smart-HTTP implementation (the one behind most self-hosted servers), so
clone, fetch, shallow and partial clone, and push behave exactly as against a real server; only the token check,
the read-only rule and the faults are this file's.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from typing import Optional

REALM = "sandlink-test-git"
# A name is one or two path segments of the characters GitHub allows in owner and repository names; no segment may
# be `.` or `..`, so a name never leaves --root.
REPOSITORY_NAME = re.compile(r"^(?!\.\.?(/|$))[A-Za-z0-9_.-]+(/(?!\.\.?$)[A-Za-z0-9_.-]+)?$")
GIT_SERVICES = ("git-upload-pack", "git-receive-pack")
# Fixed identity and dates for server-side commits, so seeded repositories have the same SHAs run after run.
SERVER_COMMIT_ENVIRONMENT = {
    "GIT_AUTHOR_NAME": "Test Server", "GIT_AUTHOR_EMAIL": "server@example.invalid",
    "GIT_COMMITTER_NAME": "Test Server", "GIT_COMMITTER_EMAIL": "server@example.invalid",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
}
COPY_CHUNK_BYTES = 64 * 1024


def log(message: str) -> None:
    print(f"git-server: {message}", file=sys.stderr, flush=True)


def credential_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


def git_environment(extra: Optional[dict] = None) -> dict:
    """The environment for the server's own git commands: no user or system config can change what they do."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}
    environment.update({"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_TERMINAL_PROMPT": "0"})
    environment.update(extra or {})
    return environment


def run_git(arguments: list[str], git_dir: Optional[str] = None, input_bytes: Optional[bytes] = None,
            extra_environment: Optional[dict] = None, work_tree: Optional[str] = None) -> str:
    command = ["git"]
    if git_dir:
        command.append(f"--git-dir={git_dir}")
    if work_tree:
        command.append(f"--work-tree={work_tree}")
    completed = subprocess.run(command + arguments, input=input_bytes, capture_output=True,
                               env=git_environment(extra_environment))
    if completed.returncode != 0:
        raise RuntimeError(f"git {' '.join(arguments)} failed: {completed.stderr.decode(errors='replace').strip()}")
    return completed.stdout.decode()


class Faults:
    """The faults a test turned on through `POST /_admin/faults`; see the module docstring."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.fail_next = 0
        self.fail_status = 500
        self.drop_next = 0
        self.cut_next = 0
        self.cut_after_bytes = 0
        self.delay_ms = 0
        self.service: Optional[str] = None
        self.repo: Optional[str] = None

    def apply(self, body: dict) -> None:
        self.fail_next = int(body.get("failNext", self.fail_next))
        self.fail_status = int(body.get("failStatus", self.fail_status))
        self.drop_next = int(body.get("dropNext", self.drop_next))
        self.cut_next = int(body.get("cutNext", self.cut_next))
        self.cut_after_bytes = int(body.get("cutAfterBytes", self.cut_after_bytes))
        self.delay_ms = int(body.get("delayMs", self.delay_ms))
        if "service" in body:
            self.service = body["service"]
        if "repo" in body:
            self.repo = normalize_name(body["repo"]) if body["repo"] else None

    def to_json(self) -> dict:
        return {"failNext": self.fail_next, "failStatus": self.fail_status, "dropNext": self.drop_next,
                "cutNext": self.cut_next, "cutAfterBytes": self.cut_after_bytes, "delayMs": self.delay_ms,
                "service": self.service, "repo": self.repo}

    def applies_to(self, repo: Optional[str], service: Optional[str]) -> bool:
        return (self.service is None or self.service == service) and (self.repo is None or self.repo == repo)


def normalize_name(name: str) -> str:
    name = name.strip("/")
    return name[:-4] if name.endswith(".git") else name


class GitServer:
    """State shared by every request thread: settings, tokens, faults and the request log, guarded by one lock."""

    def __init__(self, root: str, tokens: list[str], read_only: bool, public: bool) -> None:
        self.root = os.path.abspath(root)
        self.tokens = list(tokens)
        self.read_only = read_only
        self.public = public
        self.faults = Faults()
        self.lock = threading.Lock()
        self.request_log: list[dict] = []
        self.next_sequence = 0
        self.base_url = ""

    # -- repositories --------------------------------------------------------------------------------------------

    def repository_path(self, name: str) -> str:
        return os.path.join(self.root, normalize_name(name) + ".git")

    def repository_exists(self, name: str) -> bool:
        return os.path.isfile(os.path.join(self.repository_path(name), "HEAD"))

    def is_public(self, name: str) -> bool:
        if self.public:
            return True
        # Read from the config text this server wrote (see create_repository): no git process on every request.
        try:
            with open(os.path.join(self.repository_path(name), "config")) as config:
                return "[sandlinktest]\n\tpublic = true" in config.read()
        except OSError:
            return False

    def repository_names(self) -> list[str]:
        names = []
        for directory, subdirectories, _files in os.walk(self.root):
            for subdirectory in list(subdirectories):
                if subdirectory.endswith(".git"):
                    full = os.path.join(directory, subdirectory)
                    if os.path.isfile(os.path.join(full, "HEAD")):
                        names.append(normalize_name(os.path.relpath(full, self.root)))
                    subdirectories.remove(subdirectory)
        return sorted(names)

    def describe(self, name: str) -> dict:
        path = self.repository_path(name)
        branches = {}
        listing = run_git(["for-each-ref", "--format=%(refname:strip=2) %(objectname)", "refs/heads"], git_dir=path)
        for line in listing.splitlines():
            branch, sha = line.rsplit(" ", 1)
            branches[branch] = sha
        head = run_git(["symbolic-ref", "--short", "HEAD"], git_dir=path).strip()
        return {"name": name, "path": path, "url": f"{self.base_url}/{name}.git", "head": head,
                "branches": branches, "public": self.is_public(name)}

    def create_repository(self, name: str, branch: str, seed_from: Optional[str], generated_files: int,
                          public: bool) -> dict:
        path = self.repository_path(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        run_git(["init", "--quiet", "--bare", f"--initial-branch={branch}", path])
        # GitHub serves shallow and partial clones and fetches of reachable commits by SHA; so does this server.
        # Appended as text: one file write instead of a git process per key (repositories are made per test).
        with open(os.path.join(path, "config"), "a") as config:
            config.write("[http]\n\treceivepack = true\n"
                         "[uploadpack]\n\tallowFilter = true\n\tallowReachableSHA1InWant = true\n"
                         "[receive]\n\tdenyNonFastForwards = false\n"
                         f"[sandlinktest]\n\tpublic = {'true' if public else 'false'}\n")
        if seed_from or generated_files:
            with tempfile.TemporaryDirectory(prefix="git-server-seed-") as scratch:
                work_tree = seed_from or os.path.join(scratch, "files")
                if not seed_from:
                    write_generated_files(work_tree, generated_files)
                # A private index outside the work tree, so nothing of the seeding lands in the repository.
                environment = dict(SERVER_COMMIT_ENVIRONMENT, GIT_INDEX_FILE=os.path.join(scratch, "index"))
                run_git(["add", "--all", "."], git_dir=path, work_tree=work_tree, extra_environment=environment)
                tree = run_git(["write-tree"], git_dir=path, extra_environment=environment).strip()
                commit = run_git(["commit-tree", tree, "-m", "Initial commit"], git_dir=path,
                                 extra_environment=environment).strip()
                run_git(["update-ref", f"refs/heads/{branch}", commit], git_dir=path)
        return self.describe(name)

    def commit_on_server(self, name: str, branch: str, message: str, files: dict, start: Optional[str]) -> dict:
        path = self.repository_path(name)
        with tempfile.TemporaryDirectory(prefix="git-server-commit-") as scratch:
            environment = dict(SERVER_COMMIT_ENVIRONMENT, GIT_INDEX_FILE=os.path.join(scratch, "index"))
            # Each server-side commit gets its own time, so two identical edits still make distinct commits.
            now = f"{int(time.time())} +0000"
            environment.update(GIT_AUTHOR_DATE=now, GIT_COMMITTER_DATE=now)
            try:
                parent = run_git(["rev-parse", "--verify", "--quiet", f"refs/heads/{branch}"], git_dir=path).strip()
            except RuntimeError:
                parent = ""
            if not parent:
                # A new branch starts at `from` (default: the repository's HEAD branch) when that exists.
                start = start or run_git(["symbolic-ref", "--short", "HEAD"], git_dir=path).strip()
                try:
                    parent = run_git(["rev-parse", "--verify", "--quiet", f"refs/heads/{start}"], git_dir=path).strip()
                except RuntimeError:
                    parent = ""
                created = True
            else:
                created = False
            if parent:
                run_git(["read-tree", parent], git_dir=path, extra_environment=environment)
            for file_path, content in files.items():
                if content is None:
                    # The scratch directory stands in for a work tree that update-index insists on, and is never read.
                    run_git(["update-index", "--force-remove", file_path], git_dir=path, work_tree=scratch,
                            extra_environment=environment)
                    continue
                blob = run_git(["hash-object", "-w", "--stdin"], git_dir=path, input_bytes=content.encode(),
                               extra_environment=environment).strip()
                run_git(["update-index", "--add", "--cacheinfo", f"100644,{blob},{file_path}"], git_dir=path,
                        extra_environment=environment)
            tree = run_git(["write-tree"], git_dir=path, extra_environment=environment).strip()
            arguments = ["commit-tree", tree, "-m", message] + (["-p", parent] if parent else [])
            commit = run_git(arguments, git_dir=path, extra_environment=environment).strip()
            # update-ref refuses when someone pushed meanwhile (or created the branch): no lost update.
            expected_old = ["0" * 40] if created else [parent]
            run_git(["update-ref", f"refs/heads/{branch}", commit] + expected_old, git_dir=path)
        return {"sha": commit, "parent": parent or None, "branch": branch}

    def protect_branches(self, name: str, branches: list[str]) -> None:
        """A pre-receive hook that refuses any update of these branches with GitHub's GH006 message (an empty list
        removes it): a push refused by the server for a reason other than a moved base."""
        hook = os.path.join(self.repository_path(name), "hooks", "pre-receive")
        if not branches:
            if os.path.exists(hook):
                os.remove(hook)
            return
        protected = " ".join(f"refs/heads/{branch}" for branch in branches)
        with open(hook, "w") as handle:
            handle.write(f"""#!/bin/sh
# Written by the git test server: protected branches refuse every update, as GitHub's branch protection does.
status=0
while read old new ref; do
    for protected in {protected}; do
        if [ "$ref" = "$protected" ]; then
            echo "error: GH006: Protected branch update failed for $ref." >&2
            echo "error: Changes must be made through a pull request." >&2
            status=1
        fi
    done
done
exit $status
""")
        os.chmod(hook, 0o755)

    # -- faults and the request log ------------------------------------------------------------------------------

    def take_fault(self, repo: Optional[str], service: Optional[str], carries_pack: bool) -> Optional[str]:
        """Consumes one matching fault counter and names it: `drop`, `fail`, `cut`, or None.

        Only answers to POSTs are cut, and only one longer than the budget uses up the counter: protocol v2's small
        ls-refs answer and the ref advertisement pass, the pack that follows is cut."""
        with self.lock:
            if not self.faults.applies_to(repo, service):
                return None
            if self.faults.drop_next > 0:
                self.faults.drop_next -= 1
                return "drop"
            if self.faults.fail_next > 0:
                self.faults.fail_next -= 1
                return "fail"
            if self.faults.cut_next > 0 and carries_pack:
                # Consumed only when an answer is actually longer than the budget (see consume_cut).
                return "cut"
            return None

    def consume_cut(self) -> bool:
        with self.lock:
            if self.faults.cut_next <= 0:
                return False
            self.faults.cut_next -= 1
            return True

    def record(self, entry: dict) -> None:
        with self.lock:
            entry["seq"] = self.next_sequence
            self.next_sequence += 1
            self.request_log.append(entry)

    def token_accepted(self, token: str) -> bool:
        with self.lock:
            tokens = list(self.tokens)
        # Compare with every token in constant time, so timing says nothing about which one nearly matched.
        matched = False
        for accepted in tokens:
            matched |= hmac.compare_digest(token.encode(), accepted.encode())
        return matched


def write_generated_files(directory: str, count: int) -> None:
    """N small text files in folders of 50, like a small source tree (for the clone benchmark)."""
    for number in range(count):
        folder = os.path.join(directory, "src", f"module{number // 50:03d}")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"file{number:04d}.txt"), "w") as handle:
            handle.write(f"// generated file {number}\n" + "".join(f"line {line} of file {number}\n"
                                                                       for line in range(20)))
    with open(os.path.join(directory, "README.md"), "w") as handle:
        handle.write(f"# Generated repository\n\n{count} files.\n")


def classify(path: str, query: dict) -> tuple[Optional[str], Optional[str], str]:
    """(repository name, git service, kind) for a smart-HTTP path; kind is what the request log counts."""
    for suffix, kind in (("/info/refs", "info/refs"), ("/git-upload-pack", "git-upload-pack"),
                         ("/git-receive-pack", "git-receive-pack"), ("/HEAD", "HEAD")):
        if path.endswith(suffix):
            name = normalize_name(path[: -len(suffix)])
            if kind == "info/refs":
                service = query.get("service", [None])[0]
                return name, service, f"info/refs {service}" if service else "info/refs"
            if kind in GIT_SERVICES:
                return name, kind, kind
            return name, None, kind
    return None, None, "other"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "sandlink-test-git/1"
    git: GitServer  # set on the subclass made in main()

    def log_message(self, format: str, *arguments) -> None:  # noqa: A002 (the base class's name)
        log(f"{self.address_string()} {format % arguments}")

    # -- plumbing ------------------------------------------------------------------------------------------------

    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size_line = self.rfile.readline()
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send_bytes(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
                   headers: Optional[dict] = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status: int, body) -> None:
        self.send_bytes(status, json.dumps(body).encode(), "application/json")

    # -- admin ---------------------------------------------------------------------------------------------------

    def handle_admin(self, method: str, path: str, query: dict) -> None:
        git = self.git
        body_bytes = self.read_body() if method in ("POST", "PUT") else b""
        try:
            body = json.loads(body_bytes) if body_bytes.strip() else {}
        except json.JSONDecodeError:
            return self.send_json(400, {"error": "the body must be JSON"})
        if path == "/_admin/faults":
            with git.lock:
                if method == "POST":
                    git.faults.apply(body)
                elif method == "DELETE":
                    git.faults.reset()
                return self.send_json(200, git.faults.to_json())
        if path == "/_admin/tokens" and method == "POST":
            with git.lock:
                git.tokens = [str(token) for token in body.get("tokens", [])]
            return self.send_json(200, {"tokens": len(git.tokens)})
        if path == "/_admin/requests":
            with git.lock:
                if method == "DELETE":
                    git.request_log.clear()
                    return self.send_json(200, {"nextSeq": git.next_sequence})
                since = int(query.get("since", ["0"])[0])
                entries = [dict(entry) for entry in git.request_log if entry["seq"] >= since]
                next_sequence = git.next_sequence
            counts: dict[str, int] = {}
            for entry in entries:
                counts[entry["kind"]] = counts.get(entry["kind"], 0) + 1
            return self.send_json(200, {"requests": entries, "counts": counts, "nextSeq": next_sequence})
        if path == "/_admin/repos" and method == "GET" and "name" not in query:
            return self.send_json(200, {"repos": [git.describe(name) for name in git.repository_names()]})
        if path == "/_admin/repos" and method == "POST":
            name = normalize_name(str(body.get("name", "")))
            if not REPOSITORY_NAME.match(name):
                return self.send_json(400, {"error": f"bad repository name {name!r}"})
            if git.repository_exists(name):
                return self.send_json(409, {"error": f"{name} exists", "repo": git.describe(name)})
            seed_from = body.get("seedFrom")
            if seed_from and not os.path.isdir(seed_from):
                return self.send_json(400, {"error": f"seedFrom {seed_from} is not a directory"})
            try:
                described = git.create_repository(name, str(body.get("branch", "main")), seed_from,
                                                  int(body.get("files", 0)), bool(body.get("public", False)))
            except RuntimeError as error:
                return self.send_json(500, {"error": str(error)})
            return self.send_json(201, described)
        if path.startswith("/_admin/repos"):
            rest = path[len("/_admin/repos"):].strip("/")
            name, action = rest, None
            for known_action in ("commits", "protect"):
                if rest.endswith("/" + known_action):
                    name, action = rest[: -len(known_action) - 1], known_action
            name = normalize_name(query.get("name", [name])[0])
            if not REPOSITORY_NAME.match(name) or not git.repository_exists(name):
                return self.send_json(404, {"error": f"no repository {name!r}"})
            if action == "commits" and method == "POST":
                files = body.get("files") or {}
                try:
                    made = git.commit_on_server(name, str(body.get("branch", "main")),
                                                str(body.get("message", "Server-side change")), files,
                                                body.get("from"))
                except RuntimeError as error:
                    return self.send_json(500, {"error": str(error)})
                return self.send_json(201, made)
            if action == "protect" and method == "POST":
                git.protect_branches(name, [str(branch) for branch in body.get("branches", [])])
                return self.send_json(200, git.describe(name))
            if action is None and method == "GET":
                return self.send_json(200, git.describe(name))
            if action is None and method == "DELETE":
                shutil.rmtree(git.repository_path(name))
                return self.send_json(200, {"deleted": name})
        return self.send_json(404, {"error": f"no admin route {method} {path}"})

    # -- git -----------------------------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self.dispatch()

    def do_POST(self) -> None:
        self.dispatch()

    def do_DELETE(self) -> None:
        self.dispatch()

    def do_HEAD(self) -> None:
        self.dispatch()

    def dispatch(self) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(parsed.path)
        query = urllib.parse.parse_qs(parsed.query)
        if path.startswith("/_admin/") or path == "/_admin":
            return self.handle_admin(self.command, path, query)
        started = time.monotonic()
        repo, service, kind = classify(path, query)
        entry = {"method": self.command, "path": path, "repo": repo, "service": service, "kind": kind,
                 "status": None, "user": None, "credentialSha256": None, "fault": None}
        self.pending_entry, self.started = entry, started
        try:
            self.serve_git(path, parsed.query, repo, service, entry)
        finally:
            self.record_pending(None)

    def record_pending(self, status: Optional[int]) -> None:
        """Logs the request being answered, BEFORE its answer leaves (durationMs is the time to the status line):
        a test that reads the log right after git finished must find every entry there."""
        entry, self.pending_entry = getattr(self, "pending_entry", None), None
        if entry is not None:
            entry["status"] = status
            entry["durationMs"] = int((time.monotonic() - self.started) * 1000)
            self.git.record(entry)

    def send_response(self, code: int, message: Optional[str] = None) -> None:
        self.record_pending(code)
        super().send_response(code, message)

    def credentials(self) -> tuple[Optional[str], Optional[str]]:
        header = self.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None, None
        try:
            user, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None, None
        return user, password

    def serve_git(self, path: str, raw_query: str, repo: Optional[str], service: Optional[str],
                  entry: dict) -> Optional[int]:
        git = self.git
        with git.lock:
            delay_ms = git.faults.delay_ms if git.faults.applies_to(repo, service) else 0
        if delay_ms:
            time.sleep(delay_ms / 1000)
        fault = git.take_fault(repo, service, self.command == "POST")
        entry["fault"] = fault
        if fault == "drop":
            # Nothing is answered; the client sees the connection close (curl: "Empty reply from server").
            self.record_pending(None)
            self.close_connection = True
            with_suppressed(lambda: self.connection.shutdown(socket.SHUT_RDWR))
            return None
        if fault == "fail":
            with git.lock:
                status = git.faults.fail_status
            self.close_connection = True
            self.send_bytes(status, f"injected failure {status}\n".encode(), headers={"Connection": "close"})
            return status

        if repo is None or not REPOSITORY_NAME.match(repo):
            self.close_connection = True
            self.send_bytes(404, b"Not Found\n", headers={"Connection": "close"})
            return 404
        user, password = self.credentials()
        entry["user"] = user
        if password is not None:
            entry["credentialSha256"] = credential_digest(password)
        authenticated = password is not None and git.token_accepted(password)
        exists = git.repository_exists(repo)
        pushing = service == "git-receive-pack"
        if not authenticated and (pushing or not exists or not git.is_public(repo)):
            self.close_connection = True
            self.send_bytes(401, b"Authentication required\n",
                            headers={"WWW-Authenticate": f'Basic realm="{REALM}"', "Connection": "close"})
            return 401
        if not exists:
            # GitHub's answer for a repository that does not exist or that the token cannot see.
            self.close_connection = True
            self.send_bytes(404, b"Repository not found.\n", headers={"Connection": "close"})
            return 404
        if pushing and git.read_only:
            self.close_connection = True
            self.send_bytes(403, f"Permission to {repo}.git denied.\n".encode(), headers={"Connection": "close"})
            return 403
        return self.run_http_backend(path, raw_query, repo, user or "anonymous", fault == "cut")

    def run_http_backend(self, path: str, raw_query: str, repo: str, user: str, cut: bool) -> int:
        git = self.git
        # The whole request body goes to a file first, so http-backend can never block writing while we still write.
        with tempfile.TemporaryFile() as request_body:
            body = self.read_body() if self.command == "POST" else b""
            request_body.write(body)
            request_body.seek(0)
            # http-backend wants the path under GIT_PROJECT_ROOT; a URL without `.git` maps to the `.git` directory.
            repository_relative = os.path.relpath(git.repository_path(repo), git.root)
            suffix = path[len("/" + repo):] if path.startswith("/" + repo + "/") else path[len("/" + repo + ".git"):]
            environment = git_environment({
                "GIT_PROJECT_ROOT": git.root,
                "GIT_HTTP_EXPORT_ALL": "1",
                "PATH_INFO": "/" + repository_relative + suffix,
                "QUERY_STRING": raw_query,
                "REQUEST_METHOD": self.command,
                "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                "CONTENT_LENGTH": str(len(body)),
                "REMOTE_USER": user,
                "REMOTE_ADDR": self.client_address[0],
                "SERVER_PROTOCOL": self.request_version,
                "GATEWAY_INTERFACE": "CGI/1.1",
            })
            if self.headers.get("Content-Encoding"):
                environment["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
            if self.headers.get("Git-Protocol"):
                environment["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
            process = subprocess.Popen(["git", "http-backend"], stdin=request_body, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, env=environment)
            stderr_collector = threading.Thread(target=lambda: setattr(process, "collected_stderr",
                                                                       process.stderr.read()), daemon=True)
            stderr_collector.start()
            try:
                return self.relay_cgi_answer(process, cut)
            finally:
                with_suppressed(process.stdout.close)
                process.wait()
                stderr_collector.join(timeout=5)
                message = getattr(process, "collected_stderr", b"").decode(errors="replace").strip()
                if message:
                    log(f"http-backend: {message}")

    def relay_cgi_answer(self, process: subprocess.Popen, cut: bool) -> int:
        status, headers = 200, []
        while True:
            line = process.stdout.readline()
            if not line or line in (b"\r\n", b"\n"):
                break
            name, _, value = line.decode("latin-1").rstrip("\r\n").partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            else:
                headers.append((name.strip(), value.strip()))
        # HTTP/1.1 clients get a chunked stream (the connection stays open); HTTP/1.0 ones get the body until close.
        chunked = self.request_version == "HTTP/1.1" and not cut
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        with self.git.lock:
            budget = self.git.faults.cut_after_bytes if cut else None
        while True:
            data = process.stdout.read1(COPY_CHUNK_BYTES) if hasattr(process.stdout, "read1") else \
                process.stdout.read(COPY_CHUNK_BYTES)
            if not data:
                break
            if budget is not None and len(data) > budget and self.git.consume_cut():
                self.wfile.write(data[:budget])
                self.wfile.flush()
                process.kill()
                self.close_connection = True
                with_suppressed(lambda: self.connection.shutdown(socket.SHUT_RDWR))
                return status
            if budget is not None:
                budget -= len(data)
            if chunked:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            else:
                self.wfile.write(data)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")
        return status


def with_suppressed(action) -> None:
    try:
        action()
    except OSError:
        pass


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address) -> None:
        error = sys.exc_info()[1]
        # A client that hangs up (or a fault that cut it off) is normal here; anything else is worth a trace.
        if isinstance(error, (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


def read_tokens(arguments: argparse.Namespace) -> list[str]:
    tokens = list(arguments.token or [])
    for token_file in arguments.token_file or []:
        with open(token_file) as handle:
            tokens.extend(line.strip() for line in handle if line.strip())
    if not tokens and os.environ.get("GIT_FAKE_TOKEN"):
        tokens.append(os.environ["GIT_FAKE_TOKEN"])
    return tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--root", help="directory of bare repositories (default: a temporary one removed on exit)")
    parser.add_argument("--token", action="append", help="an accepted token (repeatable); env GIT_FAKE_TOKEN")
    parser.add_argument("--token-file", action="append", help="a file of accepted tokens, one per line")
    parser.add_argument("--read-only", action="store_true", help="refuse every push with 403")
    parser.add_argument("--public", action="store_true", help="let clones and fetches through without a token")
    parser.add_argument("--exit-when-stdin-closes", action="store_true",
                        help="exit when standard input reaches end of file (the test that started us died)")
    arguments = parser.parse_args()

    temporary_root = None
    root = arguments.root
    if not root:
        temporary_root = tempfile.mkdtemp(prefix="git-server-")
        root = temporary_root
    os.makedirs(root, exist_ok=True)
    tokens = read_tokens(arguments)
    if not tokens:
        log("no --token given: every request needing authentication will be refused")
    git = GitServer(root, tokens, arguments.read_only, arguments.public)
    handler = type("BoundHandler", (Handler,), {"git": git})
    server = Server((arguments.host, arguments.port), handler)
    port = server.server_address[1]
    url_host = arguments.host if arguments.host not in ("0.0.0.0", "::") else "127.0.0.1"
    git.base_url = f"http://{url_host}:{port}"

    def stop(*_signal_arguments) -> None:
        # Raised in the main thread, out of serve_forever's wait, so cleanup runs at once (shutdown() polls).
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if arguments.exit_when_stdin_closes:
        def wait_for_stdin_end() -> None:
            # os.read, not sys.stdin: a daemon thread holding the stdin buffer lock aborts interpreter shutdown.
            while os.read(0, 4096):
                pass
            os.kill(os.getpid(), signal.SIGTERM)
        threading.Thread(target=wait_for_stdin_end, daemon=True).start()

    log(f"serving {root} on {git.base_url} ({'read-only' if arguments.read_only else 'read-write'})")
    print(f"LISTENING {port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        if temporary_root:
            shutil.rmtree(temporary_root, ignore_errors=True)


if __name__ == "__main__":
    main()
