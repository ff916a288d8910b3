"""pytest fixtures for the git and GitHub test servers: one writable git server, a read-only one on the same repositories, and a GitHub server linked to them, per session."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any, Optional

import pytest

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
GIT_SERVER = os.path.join(REPO_ROOT, "tests", "fakes", "git_server.py")
GITHUB_SERVER = os.path.join(REPO_ROOT, "tests", "fakes", "github_server.py")
GIT_TOKEN = "ghs_gitPushToken0123456789abcdefABCDEF"
GITHUB_TOKEN = "ghp_pullRequestToken0123456789abcdefAB"
NO_SCOPE_TOKEN = "ghp_noScopeToken0123456789abcdefABCDEF"
OWNER = "acme"


class ServerProcess:
    """A test server started with `--port 0`, its port read from the `LISTENING <port>` line, stopped at the end."""

    def __init__(self, script: str, arguments: list[str], log_path: str):
        self.log = open(log_path, "wb")
        self.process = subprocess.Popen([sys.executable, script, "--port", "0", "--exit-when-stdin-closes", *arguments],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log)
        line = self.process.stdout.readline().decode()
        assert line.startswith("LISTENING "), f"{script} printed {line!r}; see {log_path}"
        self.port = int(line.split()[1])
        self.url = f"http://127.0.0.1:{self.port}"

    def admin(self, method: str, path: str, body: Optional[dict] = None) -> Any:
        status, answer = self.admin_status(method, path, body)
        assert status < 300, f"{method} {path} -> {status} {answer}"
        return answer

    def admin_status(self, method: str, path: str, body: Optional[dict] = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture(scope="session")
def git_root(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("git-server-root"))


@pytest.fixture(scope="session")
def git_server(git_root, tmp_path_factory):
    log = str(tmp_path_factory.mktemp("logs") / "git-server.log")
    server = ServerProcess(GIT_SERVER, ["--root", git_root, "--token", GIT_TOKEN], log)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def read_only_git_server(git_root, tmp_path_factory):
    log = str(tmp_path_factory.mktemp("logs") / "read-only-git-server.log")
    server = ServerProcess(GIT_SERVER, ["--root", git_root, "--token", GIT_TOKEN, "--read-only"], log)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def github_server(git_root, git_server, tmp_path_factory):
    log = str(tmp_path_factory.mktemp("logs") / "github-server.log")
    server = ServerProcess(GITHUB_SERVER, ["--token", GITHUB_TOKEN, "--token", NO_SCOPE_TOKEN + "=",
                                           "--git-root", git_root, "--git-url", git_server.url], log)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def clear_faults(request):
    yield
    for name in ("git_server", "read_only_git_server", "github_server"):
        if name in request.fixturenames:
            request.getfixturevalue(name).admin("DELETE", "/_admin/faults")


@pytest.fixture
def repo(git_server, request) -> dict:
    """A fresh repository `acme/<test name>` with a few files on `main`."""
    name = f"{OWNER}/" + request.node.name.replace("[", "-").replace("]", "").replace("_", "-")[:60]
    return git_server.admin("POST", "/_admin/repos", {"name": name, "files": 20})


class Git:
    """Runs the real git with no user or system configuration, so nothing on the machine supplies credentials."""

    def __init__(self, home: str):
        self.home = home
        os.makedirs(home, exist_ok=True)
        self.environment = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}
        self.environment.update({
            "HOME": home, "XDG_CONFIG_HOME": os.path.join(home, ".config"), "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "", "SSH_ASKPASS": "",
            "GIT_AUTHOR_NAME": "Agent", "GIT_AUTHOR_EMAIL": "agent@example.invalid",
            "GIT_COMMITTER_NAME": "Agent", "GIT_COMMITTER_EMAIL": "agent@example.invalid",
        })

    def run(self, *arguments: str, cwd: Optional[str] = None, token: Optional[str] = None, check: bool = True,
            environment: Optional[dict] = None) -> subprocess.CompletedProcess:
        """`git ARGUMENTS`; with `token`, a one-command credential helper hands it to git as the basic-auth password."""
        prefix = ["-c", "credential.helper="]
        if token is not None:
            helper = "!f() { echo username=x-access-token; echo password=$GIT_TEST_TOKEN; }; f"
            prefix += ["-c", f"credential.helper={helper}"]
        merged = dict(self.environment, **(environment or {}))
        if token is not None:
            merged["GIT_TEST_TOKEN"] = token
        completed = subprocess.run(["git", *prefix, *arguments], cwd=cwd, env=merged, capture_output=True,
                                   text=True, timeout=120)
        if check:
            assert completed.returncode == 0, f"git {' '.join(arguments)} failed:\n{completed.stderr}"
        return completed

    def commit_file(self, work_tree: str, path: str, content: str, message: str) -> str:
        with open(os.path.join(work_tree, path), "w") as handle:
            handle.write(content)
        self.run("add", path, cwd=work_tree)
        self.run("commit", "-q", "-m", message, cwd=work_tree)
        return self.run("rev-parse", "HEAD", cwd=work_tree).stdout.strip()


@pytest.fixture
def git(tmp_path) -> Git:
    return Git(str(tmp_path / "home"))


def basic_authorization(token: str, user: str = "x-access-token") -> str:
    return "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:16]
