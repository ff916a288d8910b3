"""A GitHub REST API test server for the calls sandlink makes (repository, pull requests, user, rate limit), in GitHub's wire format, with rate limits, scopes and faults.

Usage
-----

    python3 tests/fakes/github_server.py --port 0 --token TOKEN[=SCOPES] [--token ...] [--login sandlink-bot]
                                         [--git-root DIR] [--rate-limit 5000] [--root DIR] [--exit-when-stdin-closes]
    # stdout, once ready, the only line ever written there:  LISTENING 41234
    # logs go to stderr; SIGTERM/SIGINT stop it.

* API base URL: `http://127.0.0.1:PORT` (as `GITHUB_API_URL` / PyGithub's `base_url` / octokit's `baseUrl`). The
  GitHub Enterprise form `http://127.0.0.1:PORT/api/v3` works too. `html_url`s point at `http://127.0.0.1:PORT/...`
  (override with `--html-url`), where `GET /{owner}/{repo}/pull/{n}` answers a small HTML page.
* Authentication: `Authorization: token T`, `Authorization: Bearer T`, or basic auth with T as the password. An
  unknown token is `401 {"message":"Bad credentials"}`; no header at all is `401 "Requires authentication"` (`/user`,
  any write) or `404` (a private repository). `--token T` is a classic token with the `repo` scope; `--token T=` has
  no scope, `--token T=public_repo,read:user` those scopes. Every authenticated answer carries `x-oauth-scopes`;
  `x-accepted-oauth-scopes` is `repo` on repository reads and on every refusal for a missing scope, and empty on
  pull-request routes, as GitHub sends them. A classic token without `repo` gets `404 Not Found` for a private
  repository (and for writes to a public one without `public_repo`), as GitHub answers. Fine-grained tokens (made
  through the admin API with `permissions`) get `403 "Resource not accessible by personal access token"` with
  `x-accepted-github-permissions: pull_requests=write` instead.
* Rate limit: each user has `--rate-limit` (5000) requests an hour; every answer carries `x-ratelimit-limit`,
  `-remaining`, `-reset` (epoch seconds), `-used`, `-resource: core`. When none remain: `403` with `x-ratelimit-
  remaining: 0` and `{"message": "API rate limit exceeded for user ID N. ..."}` until the reset time, then refilled.
  `GET /rate_limit` is never counted.
* Repositories: created through the admin API, or found on disk with `--git-root DIR` (the git test server's
  `--root`): `DIR/{owner}/{repo}.git` is the repository `{owner}/{repo}`, private, default branch = its HEAD. A
  repository linked to a git directory has its branches checked: a pull request's `head` and `base` must exist there
  (`422` `{"resource":"PullRequest","field":"head","code":"invalid"}` otherwise), `head.sha`/`base.sha` are the real
  SHAs, and a head with no commits beyond base is `422 "No commits between BASE and HEAD"`. Unlinked repositories take
  any branch name and make up SHAs.

A request without a `User-Agent` header is refused with `403` and GitHub's text ("Request forbidden by administrative
rules. Please make sure your request has a User-Agent header ..."), as api.github.com does.

Routes: `GET /repos/{o}/{r}`, `GET /repos/{o}/{r}/branches/{branch}`, `GET|POST /repos/{o}/{r}/pulls` (list:
`state`, `head=owner:branch`, `base`, `sort`, `direction`, `per_page`, `page`, with a `Link` header),
`GET|PATCH /repos/{o}/{r}/pulls/{n}`, `GET /user`, `GET /rate_limit`. A second open pull request for the same head and
base is `422 Validation Failed` with `"A pull request already exists for owner:branch."`, exactly GitHub's shape.

Admin API (test-only, no authentication, never counted or logged as API requests)
-------------------------------------------------------------------------------------

* `POST /_admin/repos` or `POST /_admin/link` `{"owner", "repo", "private": true, "defaultBranch": "main",
  "gitDir": "/path/x.git" | "gitServer": "http://127.0.0.1:P", "gitName": "owner/repo", "cloneUrl"}` creates or
  re-links a repository. `gitServer` asks the git test server's admin API for the repository's directory (`gitName`
  defaults to `owner/repo`) and makes its URL the `clone_url`. `GET /_admin/repos` lists them.
* `GET /_admin/pulls?owner=&repo=` answers every pull request (full objects), for assertions.
* `POST /_admin/tokens {"token", "login": "sandlink-bot", "scopes": ["repo"] | "permissions": {"pull_requests":
  "write", ...}, "revoke": false}` adds, changes or revokes a token.
* `POST /_admin/rate_limit {"login"?, "limit"?, "remaining"?, "resetInSeconds"?}` sets a user's budget (all users
  when `login` is absent); `remaining: 0` is the exhausted primary limit.
* `POST /_admin/faults {...}` (GET shows, DELETE clears); counters are consumed by the requests they hit:
  - `"secondaryNext": N, "retryAfter": S, "secondaryStatus": 403` the secondary rate limit: that status, a
    `Retry-After: S` header (none when `retryAfter` is null) and "You have exceeded a secondary rate limit. ..."
    (`secondaryStatus: 429` for 429);
  - `"tooManyNext": N` the same with 429 (`Retry-After: S`);
  - `"errorNext": N, "errorStatus": 502` a server error; `"dropNext": N` closes the connection unanswered;
  - `"delayMs": D` (standing) delays every answer;
  - `"route": "pulls.create"` scopes them to one route (octokit's names: `repos.get`, `repos.getBranch`,
    `pulls.create`, `pulls.list`, `pulls.get`, `pulls.update`, `users.getAuthenticated`, `rateLimit.get`).
* `GET /_admin/requests?since=SEQ` answers `{"requests": [...], "counts": {"<route>": n}, "nextSeq": n}`, entries
  holding `seq, method, path, route, status, login, tokenSha256, fault, body` (the JSON body of a write). Tokens are
  never stored in clear: `tokenSha256` is the first 16 hex digits of the token's SHA-256. `DELETE` clears the log.

Wire details follow GitHub's REST API documentation (API version 2022-11-28) and what PyGithub 2.10 parses;
tests/github/test_pygithub.py proves them with PyGithub itself.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime as dt
import hashlib
import hmac
import html
import http.server
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Optional

DOCS = "https://docs.github.com/rest"
RATE_LIMIT_DOCS = "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"
SECONDARY_RATE_LIMIT_DOCS = ("https://docs.github.com/free-pro-team@latest/rest/overview/rate-limits-for-the-rest-api"
                             "#about-secondary-rate-limits")
CREATE_PULL_DOCS = "https://docs.github.com/rest/pulls/pulls#create-a-pull-request"
DEFAULT_SCOPES = ("repo",)
USER_AGENT_REQUIRED = ("Request forbidden by administrative rules. Please make sure your request has a User-Agent "
                       "header (https://docs.github.com/en/rest/overview/resources-in-the-rest-api#user-agent-required)"
                       ". Check https://developer.github.com for other possible causes.\n")
WINDOW_SECONDS = 3600


def log(message: str) -> None:
    print(f"github-server: {message}", file=sys.stderr, flush=True)


def iso(epoch_seconds: float) -> str:
    return dt.datetime.fromtimestamp(int(epoch_seconds), dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def node_id(kind: str, number: int) -> str:
    return f"{kind}_kgDO{number:08d}"


class ApiError(Exception):
    """An answer other than success: status, GitHub's JSON body and any extra headers."""

    def __init__(self, status: int, body: dict, headers: Optional[dict] = None):
        super().__init__(body.get("message"))
        self.status = status
        self.body = body
        self.headers = headers or {}


def error_body(message: str, documentation_url: str = DOCS, status: Optional[int] = None, **extra) -> dict:
    body = {"message": message, **extra, "documentation_url": documentation_url}
    if status is not None:
        # GitHub has added the status, as a string, to its error bodies.
        body["status"] = str(status)
    return body


def not_found(documentation_url: str = DOCS) -> ApiError:
    return ApiError(404, error_body("Not Found", documentation_url, 404))


def validation_failed(errors: list, documentation_url: str = CREATE_PULL_DOCS) -> ApiError:
    return ApiError(422, error_body("Validation Failed", documentation_url, 422, errors=errors))


@dataclass
class Token:
    login: str
    scopes: Optional[list]  # classic token; None for a fine-grained one
    permissions: Optional[dict] = None  # fine-grained: {"pull_requests": "write", "contents": "write", ...}


@dataclass
class Budget:
    limit: int
    remaining: int
    reset: int

    def refresh(self, now: float) -> None:
        if now >= self.reset:
            self.remaining = self.limit
            self.reset = int(now) + WINDOW_SECONDS


@dataclass
class Repository:
    owner: str
    name: str
    id: int
    private: bool = True
    default_branch: str = "main"
    git_dir: Optional[str] = None
    clone_url: Optional[str] = None
    description: Optional[str] = None
    created: float = field(default_factory=time.time)
    next_number: int = 1
    pulls: list = field(default_factory=list)


class GitHub:
    """Everything the request threads share, behind one lock."""

    def __init__(self, arguments: argparse.Namespace) -> None:
        self.lock = threading.RLock()
        self.tokens: dict[str, Token] = {}
        self.users: dict[str, int] = {}
        self.budgets: dict[str, Budget] = {}
        self.rate_limit = arguments.rate_limit
        self.repositories: dict[tuple[str, str], Repository] = {}
        self.git_root = os.path.abspath(arguments.git_root) if arguments.git_root else None
        self.git_url = arguments.git_url
        self.next_id = 1_000_001
        self.faults: dict[str, Any] = {}
        self.reset_faults()
        self.request_log: list[dict] = []
        self.next_sequence = 0
        self.root_url = ""
        # The prefix of the request being answered (`/api/v3` for the Enterprise form), per request thread: URLs in
        # answers use the prefix the client used, as GitHub Enterprise does, so clients that check them are content.
        self.request_local = threading.local()
        self.html_url = arguments.html_url or ""
        for specification in arguments.token or []:
            token, has_scopes, scopes = specification.partition("=")
            self.add_token(token, arguments.login,
                           [scope for scope in scopes.split(",") if scope] if has_scopes else list(DEFAULT_SCOPES))

    @property
    def api_url(self) -> str:
        return self.root_url + getattr(self.request_local, "prefix", "")

    # -- identities ----------------------------------------------------------------------------------------------

    def new_id(self) -> int:
        with self.lock:
            self.next_id += 1
            return self.next_id

    def user_id(self, login: str) -> int:
        with self.lock:
            if login.lower() not in self.users:
                self.users[login.lower()] = 1000 + len(self.users) + 1
            return self.users[login.lower()]

    def add_token(self, token: str, login: str, scopes: Optional[list], permissions: Optional[dict] = None) -> None:
        with self.lock:
            self.tokens[token] = Token(login, scopes, permissions)
            self.user_id(login)

    def find_token(self, presented: str) -> Optional[Token]:
        with self.lock:
            found = None
            for token, record in self.tokens.items():
                # Constant-time comparison with every token: timing tells nothing about a near match.
                if hmac.compare_digest(token.encode(), presented.encode()):
                    found = record
            return found

    def budget(self, key: str) -> Budget:
        with self.lock:
            now = time.time()
            if key not in self.budgets:
                limit = self.rate_limit if key != "anonymous" else 60
                self.budgets[key] = Budget(limit, limit, int(now) + WINDOW_SECONDS)
            budget = self.budgets[key]
            budget.refresh(now)
            return budget

    def reset_faults(self) -> None:
        with self.lock:
            self.faults = {"secondaryNext": 0, "secondaryStatus": 403, "retryAfter": 1, "tooManyNext": 0,
                           "errorNext": 0, "errorStatus": 502, "dropNext": 0, "delayMs": 0, "route": None}

    def take_fault(self, route: str) -> Optional[str]:
        with self.lock:
            if self.faults["route"] not in (None, route):
                return None
            for name in ("dropNext", "errorNext", "secondaryNext", "tooManyNext"):
                if self.faults[name] > 0:
                    self.faults[name] -= 1
                    return name[: -len("Next")]
            return None

    def record(self, entry: dict) -> None:
        with self.lock:
            entry["seq"] = self.next_sequence
            self.next_sequence += 1
            self.request_log.append(entry)

    # -- repositories --------------------------------------------------------------------------------------------

    def find_repository(self, owner: str, name: str) -> Optional[Repository]:
        with self.lock:
            key = (owner.lower(), name.lower())
            if key in self.repositories:
                return self.repositories[key]
            if self.git_root:
                git_dir = os.path.join(self.git_root, owner, name + ".git")
                if os.path.isfile(os.path.join(git_dir, "HEAD")):
                    clone_url = f"{self.git_url.rstrip('/')}/{owner}/{name}.git" if self.git_url else None
                    return self.put_repository(owner, name, git_dir=git_dir, clone_url=clone_url)
            return None

    def put_repository(self, owner: str, name: str, private: bool = True, default_branch: Optional[str] = None,
                       git_dir: Optional[str] = None, clone_url: Optional[str] = None,
                       description: Optional[str] = None) -> Repository:
        with self.lock:
            key = (owner.lower(), name.lower())
            existing = self.repositories.get(key)
            if default_branch is None and git_dir:
                default_branch = git_output(git_dir, ["symbolic-ref", "--short", "HEAD"]) or "main"
            repository = Repository(owner, name, existing.id if existing else self.new_id(), private,
                                    default_branch or "main", git_dir, clone_url, description)
            if existing:
                repository.created, repository.next_number, repository.pulls = (existing.created,
                                                                                 existing.next_number, existing.pulls)
            self.repositories[key] = repository
            return repository

    def branch_sha(self, repository: Repository, branch: str) -> Optional[str]:
        if repository.git_dir is None:
            # Unlinked: every branch exists, with a SHA made up from its name.
            return hashlib.sha1(f"{repository.owner}/{repository.name}:{branch}".encode()).hexdigest()
        return git_output(repository.git_dir, ["rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}"])

    # -- JSON shapes ---------------------------------------------------------------------------------------------

    def user_json(self, login: str) -> dict:
        html_base = self.html_url
        api = self.api_url
        owner_type = "User" if any(token.login.lower() == login.lower() for token in self.tokens.values()) \
            else "Organization"
        user_id = self.user_id(login)
        return {
            "login": login, "id": user_id, "node_id": node_id("U", user_id),
            "avatar_url": f"{html_base}/avatars/{login}", "gravatar_id": "",
            "url": f"{api}/users/{login}", "html_url": f"{html_base}/{login}",
            "followers_url": f"{api}/users/{login}/followers",
            "following_url": f"{api}/users/{login}/following{{/other_user}}",
            "gists_url": f"{api}/users/{login}/gists{{/gist_id}}",
            "starred_url": f"{api}/users/{login}/starred{{/owner}}{{/repo}}",
            "subscriptions_url": f"{api}/users/{login}/subscriptions",
            "organizations_url": f"{api}/users/{login}/orgs", "repos_url": f"{api}/users/{login}/repos",
            "events_url": f"{api}/users/{login}/events{{/privacy}}",
            "received_events_url": f"{api}/users/{login}/received_events",
            "type": owner_type, "user_view_type": "public", "site_admin": False,
        }

    def repository_json(self, repository: Repository, token: Optional[Token]) -> dict:
        api = f"{self.api_url}/repos/{repository.owner}/{repository.name}"
        html_base = f"{self.html_url}/{repository.owner}/{repository.name}"
        can_write = token is not None and (token.permissions is None or
                                           token.permissions.get("contents") == "write")
        pushed = repository.created
        if repository.git_dir:
            newest_commit_time = git_output(repository.git_dir, ["for-each-ref", "--sort=-committerdate",
                                                                 "--count=1", "--format=%(committerdate:unix)",
                                                                 "refs/heads"])
            pushed = float(newest_commit_time) if newest_commit_time else pushed
        body = {
            "id": repository.id, "node_id": node_id("R", repository.id), "name": repository.name,
            "full_name": f"{repository.owner}/{repository.name}", "private": repository.private,
            "owner": self.user_json(repository.owner), "html_url": html_base,
            "description": repository.description, "fork": False, "url": api,
        }
        for name, suffix in (("forks_url", "/forks"), ("keys_url", "/keys{/key_id}"),
                             ("collaborators_url", "/collaborators{/collaborator}"), ("teams_url", "/teams"),
                             ("hooks_url", "/hooks"), ("issue_events_url", "/issues/events{/number}"),
                             ("events_url", "/events"), ("assignees_url", "/assignees{/user}"),
                             ("branches_url", "/branches{/branch}"), ("tags_url", "/tags"),
                             ("blobs_url", "/git/blobs{/sha}"), ("git_tags_url", "/git/tags{/sha}"),
                             ("git_refs_url", "/git/refs{/sha}"), ("trees_url", "/git/trees{/sha}"),
                             ("statuses_url", "/statuses/{sha}"), ("languages_url", "/languages"),
                             ("stargazers_url", "/stargazers"), ("contributors_url", "/contributors"),
                             ("subscribers_url", "/subscribers"), ("subscription_url", "/subscription"),
                             ("commits_url", "/commits{/sha}"), ("git_commits_url", "/git/commits{/sha}"),
                             ("comments_url", "/comments{/number}"),
                             ("issue_comment_url", "/issues/comments{/number}"),
                             ("contents_url", "/contents/{+path}"), ("compare_url", "/compare/{base}...{head}"),
                             ("merges_url", "/merges"), ("archive_url", "/{archive_format}{/ref}"),
                             ("downloads_url", "/downloads"), ("issues_url", "/issues{/number}"),
                             ("pulls_url", "/pulls{/number}"), ("milestones_url", "/milestones{/number}"),
                             ("notifications_url", "/notifications{?since,all,participating}"),
                             ("labels_url", "/labels{/name}"), ("releases_url", "/releases{/id}"),
                             ("deployments_url", "/deployments")):
            body[name] = api + suffix
        host = urllib.parse.urlsplit(self.html_url).netloc
        body.update({
            "created_at": iso(repository.created), "updated_at": iso(pushed), "pushed_at": iso(pushed),
            "git_url": f"git://{host}/{repository.owner}/{repository.name}.git",
            "ssh_url": f"git@{host}:{repository.owner}/{repository.name}.git",
            "clone_url": repository.clone_url or f"{html_base}.git", "svn_url": html_base, "homepage": None,
            "size": 0, "stargazers_count": 0, "watchers_count": 0, "language": None, "has_issues": True,
            "has_projects": True, "has_downloads": True, "has_wiki": True, "has_pages": False,
            "has_discussions": False, "forks_count": 0, "mirror_url": None, "archived": False, "disabled": False,
            "open_issues_count": sum(1 for pull in repository.pulls if pull["state"] == "open"), "license": None,
            "allow_forking": True, "is_template": False, "web_commit_signoff_required": False, "topics": [],
            "visibility": "private" if repository.private else "public", "forks": 0,
            "open_issues": sum(1 for pull in repository.pulls if pull["state"] == "open"), "watchers": 0,
            "default_branch": repository.default_branch,
            "permissions": {"admin": False, "maintain": False, "push": can_write, "triage": can_write,
                            "pull": True},
        })
        return body

    def pull_json(self, repository: Repository, pull: dict, full: bool) -> dict:
        api = f"{self.api_url}/repos/{repository.owner}/{repository.name}"
        html_base = f"{self.html_url}/{repository.owner}/{repository.name}"
        number = pull["number"]
        repo_json = self.repository_json(repository, None)
        repo_json.pop("permissions", None)
        head_sha = pull["head_sha"]
        base_sha = pull["base_sha"]
        # A linked head follows its branch, as on GitHub after a push; an open PR's base SHA follows base too.
        if repository.git_dir and pull["state"] == "open":
            head_sha = self.branch_sha(repository, pull["head_ref"]) or head_sha
            base_sha = self.branch_sha(repository, pull["base_ref"]) or base_sha
        body = {
            "url": f"{api}/pulls/{number}", "id": pull["id"], "node_id": node_id("PR", pull["id"]),
            "html_url": f"{html_base}/pull/{number}", "diff_url": f"{html_base}/pull/{number}.diff",
            "patch_url": f"{html_base}/pull/{number}.patch", "issue_url": f"{api}/issues/{number}",
            "number": number, "state": pull["state"], "locked": False, "title": pull["title"],
            "user": self.user_json(pull["user"]), "body": pull["body"], "labels": [], "milestone": None,
            "active_lock_reason": None, "created_at": iso(pull["created"]), "updated_at": iso(pull["updated"]),
            "closed_at": iso(pull["closed"]) if pull["closed"] else None, "merged_at": None,
            "merge_commit_sha": None, "assignee": None, "assignees": [], "requested_reviewers": [],
            "requested_teams": [], "commits_url": f"{api}/pulls/{number}/commits",
            "review_comments_url": f"{api}/pulls/{number}/comments",
            "review_comment_url": f"{api}/pulls/comments{{/number}}",
            "comments_url": f"{api}/issues/{number}/comments", "statuses_url": f"{api}/statuses/{head_sha}",
            "head": {"label": f"{pull['head_owner']}:{pull['head_ref']}", "ref": pull["head_ref"], "sha": head_sha,
                     "user": self.user_json(pull["head_owner"]), "repo": repo_json},
            "base": {"label": f"{repository.owner}:{pull['base_ref']}", "ref": pull["base_ref"], "sha": base_sha,
                     "user": self.user_json(repository.owner), "repo": repo_json},
            "_links": {"self": {"href": f"{api}/pulls/{number}"}, "html": {"href": f"{html_base}/pull/{number}"},
                       "issue": {"href": f"{api}/issues/{number}"},
                       "comments": {"href": f"{api}/issues/{number}/comments"},
                       "review_comments": {"href": f"{api}/pulls/{number}/comments"},
                       "review_comment": {"href": f"{api}/pulls/comments{{/number}}"},
                       "commits": {"href": f"{api}/pulls/{number}/commits"},
                       "statuses": {"href": f"{api}/statuses/{head_sha}"}},
            "author_association": "OWNER" if pull["user"].lower() == repository.owner.lower() else "CONTRIBUTOR",
            "auto_merge": None, "draft": pull["draft"],
        }
        if full:
            commits, additions, deletions, changed = self.diff_counts(repository, base_sha, head_sha)
            mergeable = self.merges_cleanly(repository, base_sha, head_sha)
            body.update({"merged": False, "mergeable": mergeable, "rebaseable": mergeable,
                         "mergeable_state": "clean" if mergeable else "dirty",
                         "merged_by": None, "comments": 0, "review_comments": 0,
                         "maintainer_can_modify": pull["maintainer_can_modify"], "commits": commits,
                         "additions": additions, "deletions": deletions, "changed_files": changed})
        return body

    def merges_cleanly(self, repository: Repository, base_sha: str, head_sha: str) -> bool:
        """Whether head merges into base without conflicts (`git merge-tree` exits 1 on a conflict), as GitHub's
        `mergeable` says once it has computed it."""
        if not repository.git_dir:
            return True
        environment = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}
        environment.update({"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull})
        completed = subprocess.run(["git", f"--git-dir={repository.git_dir}", "merge-tree", "--write-tree",
                                    "--no-messages", base_sha, head_sha], capture_output=True, env=environment)
        return completed.returncode == 0

    def diff_counts(self, repository: Repository, base_sha: str, head_sha: str) -> tuple[int, int, int, int]:
        if not repository.git_dir:
            return 1, 0, 0, 0
        commits = int(git_output(repository.git_dir, ["rev-list", "--count", f"{base_sha}..{head_sha}"]) or 0)
        numstat = git_output(repository.git_dir, ["diff", "--numstat", f"{base_sha}...{head_sha}"]) or ""
        additions = deletions = changed = 0
        for line in numstat.splitlines():
            added, deleted, _path = line.split("\t", 2)
            changed += 1
            additions += int(added) if added.isdigit() else 0
            deletions += int(deleted) if deleted.isdigit() else 0
        return commits, additions, deletions, changed


def git_output(git_dir: str, arguments: list[str]) -> Optional[str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}
    environment.update({"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull})
    completed = subprocess.run(["git", f"--git-dir={git_dir}"] + arguments, capture_output=True, env=environment)
    if completed.returncode != 0:
        return None
    return completed.stdout.decode().strip()


ROUTES = [
    ("GET", re.compile(r"^/user$"), "users.getAuthenticated"),
    ("GET", re.compile(r"^/rate_limit$"), "rateLimit.get"),
    ("GET", re.compile(r"^/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)$"), "repos.get"),
    ("GET", re.compile(r"^/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)/branches/(?P<branch>.+)$"), "repos.getBranch"),
    ("GET", re.compile(r"^/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)/pulls$"), "pulls.list"),
    ("POST", re.compile(r"^/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)/pulls$"), "pulls.create"),
    ("GET", re.compile(r"^/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)/pulls/(?P<number>\d+)$"), "pulls.get"),
    ("PATCH", re.compile(r"^/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)/pulls/(?P<number>\d+)$"), "pulls.update"),
]
# What a route needs: (classic scopes that grant it on a private repository, fine-grained permission).
ROUTE_NEEDS = {
    "repos.get": ("metadata", "read"), "repos.getBranch": ("contents", "read"),
    "pulls.list": ("pull_requests", "read"), "pulls.get": ("pull_requests", "read"),
    "pulls.create": ("pull_requests", "write"), "pulls.update": ("pull_requests", "write"),
}
WRITE_ROUTES = {"pulls.create", "pulls.update"}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "GitHub.com"
    github: GitHub  # set on the subclass made in main()

    def log_message(self, format: str, *arguments) -> None:  # noqa: A002 (the base class's name)
        log(f"{self.address_string()} {format % arguments}")

    def do_GET(self) -> None:
        self.dispatch()

    def do_POST(self) -> None:
        self.dispatch()

    def do_PATCH(self) -> None:
        self.dispatch()

    def do_DELETE(self) -> None:
        self.dispatch()

    def read_json(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw.strip():
            return {}
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            raise ApiError(400, error_body("Problems parsing JSON", DOCS, 400))

    def send(self, status: int, body: Any, headers: Optional[dict] = None,
             content_type: str = "application/json; charset=utf-8") -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body, indent=2).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, str(value))
        self.end_headers()
        self.wfile.write(payload)

    # -- admin ---------------------------------------------------------------------------------------------------

    def handle_admin(self, path: str, query: dict) -> None:
        github = self.github
        method = self.command
        try:
            body = self.read_json() if method in ("POST", "PATCH") else {}
        except ApiError as error:
            return self.send(error.status, error.body)
        if path == "/_admin/faults":
            with github.lock:
                if method == "POST":
                    for key, value in body.items():
                        if key not in github.faults:
                            return self.send(400, {"error": f"unknown fault {key}"})
                        github.faults[key] = value
                elif method == "DELETE":
                    github.reset_faults()
                return self.send(200, dict(github.faults))
        if path in ("/_admin/repos", "/_admin/link") and method == "POST":
            return self.admin_put_repository(body)
        if path == "/_admin/repos" and method == "GET":
            with github.lock:
                repositories = list(github.repositories.values())
            return self.send(200, {"repos": [{"owner": repository.owner, "repo": repository.name,
                                              "private": repository.private, "gitDir": repository.git_dir,
                                              "defaultBranch": repository.default_branch,
                                              "cloneUrl": repository.clone_url, "pulls": len(repository.pulls)}
                                             for repository in repositories]})
        if path == "/_admin/pulls" and method == "GET":
            repository = github.find_repository(query.get("owner", [""])[0], query.get("repo", [""])[0])
            if repository is None:
                return self.send(404, {"error": "no such repository"})
            with github.lock:
                pulls = [github.pull_json(repository, pull, True) for pull in repository.pulls]
            return self.send(200, {"pulls": pulls})
        if path == "/_admin/tokens" and method == "POST":
            token = str(body.get("token", ""))
            if not token:
                return self.send(400, {"error": "token is required"})
            with github.lock:
                if body.get("revoke"):
                    github.tokens.pop(token, None)
                else:
                    permissions = body.get("permissions")
                    scopes = None if permissions is not None else list(body.get("scopes", DEFAULT_SCOPES))
                    github.add_token(token, str(body.get("login", "sandlink-bot")), scopes, permissions)
                return self.send(200, {"tokens": len(github.tokens)})
        if path == "/_admin/rate_limit" and method == "POST":
            with github.lock:
                logins = [body["login"]] if body.get("login") else \
                    sorted({token.login for token in github.tokens.values()} | set(github.budgets))
                answer = {}
                for login in logins:
                    budget = github.budget(login)
                    if "limit" in body:
                        budget.limit = int(body["limit"])
                        budget.remaining = min(budget.remaining, budget.limit)
                    if "remaining" in body:
                        budget.remaining = int(body["remaining"])
                    if "resetInSeconds" in body:
                        budget.reset = int(time.time() + float(body["resetInSeconds"]))
                    answer[login] = {"limit": budget.limit, "remaining": budget.remaining, "reset": budget.reset}
                return self.send(200, answer)
        if path == "/_admin/requests":
            with github.lock:
                if method == "DELETE":
                    github.request_log.clear()
                    return self.send(200, {"nextSeq": github.next_sequence})
                since = int(query.get("since", ["0"])[0])
                entries = [dict(entry) for entry in github.request_log if entry["seq"] >= since]
                next_sequence = github.next_sequence
            counts: dict[str, int] = {}
            for entry in entries:
                counts[entry["route"]] = counts.get(entry["route"], 0) + 1
            return self.send(200, {"requests": entries, "counts": counts, "nextSeq": next_sequence})
        return self.send(404, {"error": f"no admin route {method} {path}"})

    def admin_put_repository(self, body: dict) -> None:
        github = self.github
        owner, name = str(body.get("owner", "")), str(body.get("repo", ""))
        if not owner or not name:
            return self.send(400, {"error": "owner and repo are required"})
        git_dir, clone_url = body.get("gitDir"), body.get("cloneUrl")
        if body.get("gitServer"):
            git_name = str(body.get("gitName") or f"{owner}/{name}")
            server = str(body["gitServer"]).rstrip("/")
            try:
                with urllib.request.urlopen(f"{server}/_admin/repos/{git_name}", timeout=10) as answer:
                    described = json.loads(answer.read())
            except OSError as error:
                return self.send(400, {"error": f"the git server has no repository {git_name}: {error}"})
            git_dir = described["path"]
            clone_url = clone_url or described["url"]
        if git_dir and not os.path.isfile(os.path.join(git_dir, "HEAD")):
            return self.send(400, {"error": f"{git_dir} is not a git directory"})
        repository = github.put_repository(owner, name, bool(body.get("private", True)), body.get("defaultBranch"),
                                           git_dir, clone_url, body.get("description"))
        return self.send(201, {"owner": repository.owner, "repo": repository.name, "gitDir": repository.git_dir,
                               "cloneUrl": repository.clone_url, "defaultBranch": repository.default_branch,
                               "private": repository.private})

    # -- the API -------------------------------------------------------------------------------------------------

    def dispatch(self) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(parsed.path)
        query = urllib.parse.parse_qs(parsed.query)
        if path.startswith("/_admin/"):
            return self.handle_admin(path, query)
        self.github.request_local.prefix = ""
        if path.startswith("/api/v3/") or path == "/api/v3":
            path = path[len("/api/v3"):] or "/"
            self.github.request_local.prefix = "/api/v3"
        pull_page = re.match(r"^/([^/]+)/([^/]+)/pull/(\d+)$", path)
        if self.command == "GET" and pull_page:
            return self.serve_pull_page(*pull_page.groups())
        if not self.headers.get("User-Agent"):
            # GitHub refuses API requests without a User-Agent, before anything else, with this text page.
            return self.send(403, USER_AGENT_REQUIRED.encode(), content_type="text/plain; charset=utf-8")
        route, parameters = "unknown", {}
        for method, pattern, name in ROUTES:
            matched = pattern.match(path)
            if matched and method == self.command:
                route, parameters = name, matched.groupdict()
                break
        entry = {"method": self.command, "path": parsed.path, "query": parsed.query, "route": route,
                 "status": None, "login": None, "tokenSha256": None, "fault": None, "body": None}
        self.pending_entry = entry
        try:
            self.serve_api(route, parameters, query, entry)
        finally:
            self.record_pending(None)

    def record_pending(self, status: Optional[int]) -> None:
        """Logs the request being answered, BEFORE its answer leaves: a client that reads the log right after its
        answer must find the entry there."""
        entry, self.pending_entry = getattr(self, "pending_entry", None), None
        if entry is not None:
            entry["status"] = status
            self.github.record(entry)

    def send_response(self, code: int, message: Optional[str] = None) -> None:
        self.record_pending(code)
        super().send_response(code, message)

    def serve_pull_page(self, owner: str, name: str, number: str) -> None:
        repository = self.github.find_repository(owner, name)
        pull = next((pull for pull in repository.pulls if pull["number"] == int(number)), None) if repository else None
        if pull is None:
            return self.send(404, b"Not Found", content_type="text/plain")
        title = html.escape(pull["title"])
        page = f"<!doctype html><title>{title} #{number}</title><h1>{title}</h1>"
        self.send(200, page.encode(), content_type="text/html; charset=utf-8")

    def serve_api(self, route: str, parameters: dict, query: dict, entry: dict) -> None:
        github = self.github
        request_id = "{:04X}:{:04X}:{:06X}:{:06X}:{:08X}".format(
            secrets.randbelow(0x10000), secrets.randbelow(0x10000), secrets.randbelow(0x1000000),
            secrets.randbelow(0x1000000), int(time.time()))
        headers = {"x-github-request-id": request_id, "x-github-api-version-selected": "2022-11-28",
                   "x-github-media-type": "github.v3; format=json", "x-content-type-options": "nosniff",
                   "x-frame-options": "deny", "x-xss-protection": "0",
                   "access-control-expose-headers": "ETag, Link, Location, Retry-After, X-GitHub-OTP, "
                   "X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Used, X-RateLimit-Resource, "
                   "X-RateLimit-Reset, X-OAuth-Scopes, X-Accepted-OAuth-Scopes, X-Poll-Interval, "
                   "X-GitHub-Media-Type, X-GitHub-SSO, X-GitHub-Request-Id, Deprecation, Sunset"}
        with github.lock:
            delay_ms = github.faults["delayMs"] if github.faults["route"] in (None, route) else 0
        if delay_ms:
            time.sleep(delay_ms / 1000)
        try:
            body = self.read_json() if self.command in ("POST", "PATCH") else None
            if route in WRITE_ROUTES and isinstance(body, dict):
                entry["body"] = body
            token, token_text = self.authenticate(headers)
            if token_text is not None:
                entry["tokenSha256"] = token_digest(token_text)
            if token is not None:
                entry["login"] = token.login
            fault = github.take_fault(route)
            entry["fault"] = fault
            if fault == "drop":
                self.record_pending(None)
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return None
            if fault == "error":
                status = int(github.faults["errorStatus"])
                raise ApiError(status, {"message": "Server Error"} if status != 502 else
                               {"message": "Server Error: Sorry, this diff is taking too long to generate."})
            if route == "rateLimit.get":
                return self.send(200, self.rate_limit_json(token), headers)
            if fault in ("secondary", "tooMany"):
                status = 429 if fault == "tooMany" else int(github.faults["secondaryStatus"])
                self.add_rate_headers(headers, token, count=False)
                # `retryAfter: null` leaves the header out, as some secondary-limit answers do; clients must then
                # wait at least a minute (GitHub's guidance) or until x-ratelimit-reset.
                if github.faults["retryAfter"] is not None:
                    headers["Retry-After"] = str(github.faults["retryAfter"])
                raise ApiError(status, error_body(
                    "You have exceeded a secondary rate limit. Please wait a few minutes before you try again. If "
                    f"you reach out to GitHub Support for help, please include the request ID {request_id}.",
                    SECONDARY_RATE_LIMIT_DOCS))
            self.add_rate_headers(headers, token, count=True)
            if route == "unknown":
                raise not_found()
            if route == "users.getAuthenticated":
                if token is None:
                    raise ApiError(401, error_body(
                    "Requires authentication", "https://docs.github.com/rest/users/users#get-the-authenticated-user",
                    401))
                return self.send(200, self.authenticated_user_json(token), headers)
            repository = self.authorize(route, parameters, token, headers)
            handler = getattr(self, "route_" + route.replace(".", "_"))
            status, answer = handler(repository, token, parameters, query, body, headers)
            return self.send(status, answer, headers)
        except ApiError as error:
            headers.update(error.headers)
            return self.send(error.status, error.body, headers)

    def authenticate(self, headers: dict) -> tuple[Optional[Token], Optional[str]]:
        header = self.headers.get("Authorization")
        if header is None:
            return None, None
        scheme, _, credential = header.strip().partition(" ")
        credential = credential.strip()
        if scheme.lower() == "basic":
            # GitHub also takes the token as a basic-auth password (any user name), as git sends it.
            try:
                credential = base64.b64decode(credential, validate=True).decode().partition(":")[2]
            except (binascii.Error, UnicodeDecodeError):
                credential = ""
            scheme = "token"
        if scheme.lower() not in ("token", "bearer") or not credential:
            raise ApiError(401, error_body("Bad credentials", DOCS, 401))
        token = self.github.find_token(credential)
        if token is None:
            raise ApiError(401, error_body("Bad credentials", DOCS, 401), headers)
        if token.scopes is not None:
            headers["x-oauth-scopes"] = ", ".join(token.scopes)
        return token, credential

    def add_rate_headers(self, headers: dict, token: Optional[Token], count: bool) -> None:
        github = self.github
        with github.lock:
            budget = github.budget(token.login if token else "anonymous")
            if count and budget.remaining <= 0:
                headers.update({"x-ratelimit-limit": budget.limit, "x-ratelimit-remaining": 0,
                                "x-ratelimit-reset": budget.reset, "x-ratelimit-used": budget.limit,
                                "x-ratelimit-resource": "core"})
                who = f"user ID {github.user_id(token.login)}" if token else self.client_address[0]
                raise ApiError(403, error_body(
                    f"API rate limit exceeded for {who}. If you reach out to GitHub Support for help, please include "
                    f"the request ID {headers['x-github-request-id']} and timestamp {iso(time.time())}.",
                    RATE_LIMIT_DOCS, 403))
            if count:
                budget.remaining -= 1
            headers.update({"x-ratelimit-limit": budget.limit, "x-ratelimit-remaining": budget.remaining,
                            "x-ratelimit-reset": budget.reset, "x-ratelimit-used": budget.limit - budget.remaining,
                            "x-ratelimit-resource": "core"})

    def rate_limit_json(self, token: Optional[Token]) -> dict:
        with self.github.lock:
            budget = self.github.budget(token.login if token else "anonymous")
            core = {"limit": budget.limit, "used": budget.limit - budget.remaining, "remaining": budget.remaining,
                    "reset": budget.reset}
        reset = int(time.time()) + 60
        search = {"limit": 30, "used": 0, "remaining": 30, "reset": reset}
        graphql = {"limit": 5000 if token else 0, "used": 0, "remaining": 5000 if token else 0,
                   "reset": int(time.time()) + WINDOW_SECONDS}
        return {"resources": {"core": core, "search": search, "graphql": graphql,
                              "integration_manifest": {"limit": 5000, "used": 0, "remaining": 5000,
                                                       "reset": int(time.time()) + WINDOW_SECONDS}},
                "rate": core}

    def authenticated_user_json(self, token: Token) -> dict:
        body = self.github.user_json(token.login)
        created = iso(time.time() - 86400 * 365)
        body.update({"name": token.login, "company": None, "blog": "", "location": None, "email": None,
                     "hireable": None, "bio": None, "twitter_username": None, "notification_email": None,
                     "public_repos": 0, "public_gists": 0, "followers": 0, "following": 0,
                     "created_at": created, "updated_at": created})
        return body

    def authorize(self, route: str, parameters: dict, token: Optional[Token], headers: dict) -> Repository:
        """The repository a route is about, or GitHub's answer for a caller who may not see or change it."""
        github = self.github
        # What GitHub sends: `repo` on repository reads, nothing on pull-request routes (captured answers of
        # POST /pulls show an empty header), and `repo` again on any refusal for a missing scope.
        headers["x-accepted-oauth-scopes"] = "repo" if route.startswith("repos.") else ""
        repository = github.find_repository(parameters["owner"], parameters["repo"])
        documentation = {"repos.get": "https://docs.github.com/rest/repos/repos#get-a-repository",
                         "pulls.create": CREATE_PULL_DOCS,
                         "pulls.list": "https://docs.github.com/rest/pulls/pulls#list-pull-requests",
                         "pulls.get": "https://docs.github.com/rest/pulls/pulls#get-a-pull-request",
                         "pulls.update": "https://docs.github.com/rest/pulls/pulls#update-a-pull-request",
                         "repos.getBranch": "https://docs.github.com/rest/branches/branches#get-a-branch"}[route]
        writing = route in WRITE_ROUTES
        if token is None:
            if repository is None or repository.private:
                headers["x-accepted-oauth-scopes"] = "repo"
                raise not_found(documentation)
            if writing:
                raise ApiError(401, error_body("Requires authentication", documentation, 401))
            return repository
        if repository is None:
            raise not_found(documentation)
        if token.permissions is not None:
            permission, level = ROUTE_NEEDS[route]
            granted = token.permissions.get(permission, "read" if permission == "metadata" else None)
            if granted is None or (level == "write" and granted != "write"):
                if granted is None and not writing and repository.private:
                    raise not_found(documentation)
                headers["x-accepted-github-permissions"] = f"{permission}={level}"
                raise ApiError(403, error_body("Resource not accessible by personal access token", documentation,
                                               403))
            return repository
        scopes = set(token.scopes or [])
        if repository.private and "repo" not in scopes:
            headers["x-accepted-oauth-scopes"] = "repo"
            raise not_found(documentation)
        if writing and not scopes & {"repo", "public_repo"}:
            headers["x-accepted-oauth-scopes"] = "public_repo, repo"
            raise not_found(documentation)
        return repository

    # -- routes --------------------------------------------------------------------------------------------------

    def route_repos_get(self, repository, token, parameters, query, body, headers):
        return 200, self.github.repository_json(repository, token)

    def route_repos_getBranch(self, repository, token, parameters, query, body, headers):
        branch = parameters["branch"]
        sha = self.github.branch_sha(repository, branch)
        if sha is None:
            raise ApiError(404, error_body("Branch not found",
                                           "https://docs.github.com/rest/branches/branches#get-a-branch", 404))
        api = f"{self.github.api_url}/repos/{repository.owner}/{repository.name}"
        return 200, {"name": branch, "commit": {"sha": sha, "url": f"{api}/commits/{sha}"},
                     "_links": {"self": f"{api}/branches/{branch}",
                                "html": f"{self.github.html_url}/{repository.owner}/{repository.name}/tree/{branch}"},
                     "protected": False, "protection": {"enabled": False, "required_status_checks": {
                         "enforcement_level": "off", "contexts": [], "checks": []}},
                     "protection_url": f"{api}/branches/{branch}/protection"}

    def route_pulls_get(self, repository, token, parameters, query, body, headers):
        pull = self.find_pull(repository, int(parameters["number"]))
        return 200, self.github.pull_json(repository, pull, True)

    def find_pull(self, repository: Repository, number: int) -> dict:
        with self.github.lock:
            for pull in repository.pulls:
                if pull["number"] == number:
                    return pull
        raise not_found("https://docs.github.com/rest/pulls/pulls#get-a-pull-request")

    def route_pulls_list(self, repository, token, parameters, query, body, headers):
        state = query.get("state", ["open"])[0]
        if state not in ("open", "closed", "all"):
            raise validation_failed([{"resource": "Issue", "field": "state", "code": "invalid"}],
                                    "https://docs.github.com/rest/pulls/pulls#list-pull-requests")
        head = query.get("head", [None])[0]
        base = query.get("base", [None])[0]
        with self.github.lock:
            pulls = [pull for pull in repository.pulls if state == "all" or pull["state"] == state]
        # GitHub filters by head only in the form `owner:branch`; a bare branch name filters nothing.
        if head and ":" in head:
            head_owner, _, head_ref = head.partition(":")
            pulls = [pull for pull in pulls if pull["head_owner"].lower() == head_owner.lower()
                     and pull["head_ref"] == head_ref]
        if base:
            pulls = [pull for pull in pulls if pull["base_ref"] == base]
        sort = query.get("sort", ["created"])[0]
        direction = query.get("direction", ["desc"])[0]
        key = {"updated": "updated", "popularity": "number", "long-running": "created"}.get(sort, "created")
        pulls.sort(key=lambda pull: (pull[key], pull["number"]), reverse=direction != "asc")
        per_page = max(1, min(100, int(query.get("per_page", ["30"])[0])))
        page = max(1, int(query.get("page", ["1"])[0]))
        last_page = max(1, (len(pulls) + per_page - 1) // per_page)
        links = []

        def page_url(number: int) -> str:
            parameters_for_page = {key: values[0] for key, values in query.items()}
            parameters_for_page.update(page=str(number), per_page=str(per_page))
            return f"{self.github.api_url}/repos/{repository.owner}/{repository.name}/pulls?" + \
                urllib.parse.urlencode(parameters_for_page)
        if page > 1:
            links += [f'<{page_url(page - 1)}>; rel="prev"', f'<{page_url(1)}>; rel="first"']
        if page < last_page:
            links += [f'<{page_url(page + 1)}>; rel="next"', f'<{page_url(last_page)}>; rel="last"']
        if links:
            headers["Link"] = ", ".join(links)
        chosen = pulls[(page - 1) * per_page: page * per_page]
        return 200, [self.github.pull_json(repository, pull, False) for pull in chosen]

    def route_pulls_create(self, repository, token, parameters, query, body, headers):
        github = self.github
        if not isinstance(body, dict):
            raise ApiError(400, error_body("Problems parsing JSON", CREATE_PULL_DOCS, 400))
        missing = [name for name in ("head", "base") if not body.get(name)]
        if missing:
            names = ", ".join(f'"{name}"' for name in missing)
            raise ApiError(422, error_body(
                f"Invalid request.\n\n{names} {'wasn' if len(missing) == 1 else 'weren'}'t supplied.",
                CREATE_PULL_DOCS, 422))
        if not body.get("title") and not body.get("issue"):
            raise validation_failed([{"resource": "PullRequest", "code": "missing_field", "field": "title"}])
        head_owner, _, head_ref = str(body["head"]).rpartition(":")
        head_owner = head_owner or repository.owner
        base_ref = str(body["base"])
        base_sha = github.branch_sha(repository, base_ref)
        head_sha = github.branch_sha(repository, head_ref) if head_owner.lower() == repository.owner.lower() else None
        errors = []
        if base_sha is None:
            errors.append({"resource": "PullRequest", "field": "base", "code": "invalid"})
        if head_sha is None:
            errors.append({"resource": "PullRequest", "field": "head", "code": "invalid"})
        if errors:
            raise validation_failed(errors)
        with github.lock:
            for pull in repository.pulls:
                if (pull["state"] == "open" and pull["head_owner"].lower() == head_owner.lower()
                        and pull["head_ref"] == head_ref and pull["base_ref"] == base_ref):
                    raise validation_failed([{"resource": "PullRequest", "code": "custom",
                                              "message": f"A pull request already exists for "
                                                         f"{head_owner}:{head_ref}."}])
            if repository.git_dir and (head_sha == base_sha or git_output(
                    repository.git_dir, ["merge-base", "--is-ancestor", head_sha, base_sha]) is not None):
                raise validation_failed([{"resource": "PullRequest", "code": "custom",
                                          "message": f"No commits between {base_ref} and {head_ref}"}])
            now = time.time()
            pull = {"number": repository.next_number, "id": github.new_id(), "state": "open",
                    "title": str(body.get("title") or f"Issue #{body.get('issue')}"), "body": body.get("body"),
                    "user": token.login, "head_owner": head_owner, "head_ref": head_ref, "head_sha": head_sha,
                    "base_ref": base_ref, "base_sha": base_sha, "draft": bool(body.get("draft", False)),
                    "maintainer_can_modify": bool(body.get("maintainer_can_modify", True)),
                    "created": now, "updated": now, "closed": None}
            repository.next_number += 1
            repository.pulls.append(pull)
            answer = github.pull_json(repository, pull, True)
        headers["Location"] = answer["url"]
        return 201, answer

    def route_pulls_update(self, repository, token, parameters, query, body, headers):
        pull = self.find_pull(repository, int(parameters["number"]))
        if not isinstance(body, dict):
            raise ApiError(400, error_body("Problems parsing JSON", DOCS, 400))
        with self.github.lock:
            for name in ("title", "body"):
                if name in body:
                    pull[name] = body[name]
            if "base" in body:
                if self.github.branch_sha(repository, str(body["base"])) is None:
                    raise validation_failed([{"resource": "PullRequest", "field": "base", "code": "invalid"}],
                                            "https://docs.github.com/rest/pulls/pulls#update-a-pull-request")
                pull["base_ref"] = str(body["base"])
            if body.get("state") in ("open", "closed"):
                pull["state"] = body["state"]
                pull["closed"] = time.time() if body["state"] == "closed" else None
            pull["updated"] = time.time()
            return 200, self.github.pull_json(repository, pull, True)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", action="append",
                        help="TOKEN (scope repo) or TOKEN=scope,scope (TOKEN= for none); repeatable; "
                             "env GITHUB_FAKE_TOKEN")
    parser.add_argument("--login", default="sandlink-bot", help="the user the --token tokens belong to")
    parser.add_argument("--rate-limit", type=int, default=5000, help="requests per hour per user")
    parser.add_argument("--git-root", help="the git test server's --root: DIR/owner/repo.git are repositories")
    parser.add_argument("--git-url", help="the git test server's URL, for clone_url of repositories under --git-root")
    parser.add_argument("--html-url", help="the base of html_url (default: this server's own URL)")
    parser.add_argument("--root", help="accepted for the test harness's sake; this server keeps state in memory")
    parser.add_argument("--exit-when-stdin-closes", action="store_true",
                        help="exit when standard input reaches end of file (the test that started us died)")
    arguments = parser.parse_args()
    if not arguments.token and os.environ.get("GITHUB_FAKE_TOKEN"):
        arguments.token = [os.environ["GITHUB_FAKE_TOKEN"]]

    github = GitHub(arguments)
    handler = type("BoundHandler", (Handler,), {"github": github})
    server = Server((arguments.host, arguments.port), handler)
    port = server.server_address[1]
    url_host = arguments.host if arguments.host not in ("0.0.0.0", "::") else "127.0.0.1"
    github.root_url = f"http://{url_host}:{port}"
    github.html_url = (arguments.html_url or github.root_url).rstrip("/")

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

    log(f"serving the GitHub REST API on {github.api_url}")
    print(f"LISTENING {port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
