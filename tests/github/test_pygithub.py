"""The GitHub test server (tests/fakes/github_server.py) proven by the official PyGithub client: repository, pull requests after a real git push, GitHub's 422s, credentials, scopes and rate limits."""

from __future__ import annotations

import json
import time

import pytest
from github import Auth, BadCredentialsException, Github, GithubException, RateLimitExceededException, \
    UnknownObjectException

from conftest import GIT_TOKEN, GITHUB_TOKEN, NO_SCOPE_TOKEN, Git, token_digest


def client(github_server, token: str = GITHUB_TOKEN, **options) -> Github:
    # No throttling between requests: the fake has no abuse detection to be polite to.
    options.setdefault("seconds_between_requests", None)
    options.setdefault("seconds_between_writes", None)
    return Github(base_url=github_server.url, auth=Auth.Token(token), **options)


def header(error: GithubException, name: str) -> str:
    """A header of a failed answer, whatever case PyGithub's transport left its name in."""
    return {key.lower(): value for key, value in error.headers.items()}[name.lower()]


def push_branch(git: Git, repo: dict, tmp_path, branch: str, content: str = "work\n") -> str:
    work = str(tmp_path / f"work-{branch}")
    git.run("clone", "-q", repo["url"], work, token=GIT_TOKEN)
    git.run("checkout", "-q", "-b", branch, cwd=work)
    sha = git.commit_file(work, f"{branch}.txt", content, f"feat: work on {branch}")
    git.run("push", "-q", "origin", branch, cwd=work, token=GIT_TOKEN)
    return sha


def test_get_repository(github_server, git_server, repo):
    repository = client(github_server).get_repo(repo["name"])
    assert repository.full_name == repo["name"]
    assert repository.private is True
    assert repository.default_branch == "main"
    assert repository.owner.login == "acme"
    assert repository.clone_url == repo["url"]
    assert repository.permissions.pull is True


def test_create_list_and_get_a_pull_request_after_a_real_push(github_server, repo, git, tmp_path):
    pushed = push_branch(git, repo, tmp_path, "task-1")
    repository = client(github_server).get_repo(repo["name"])
    created = repository.create_pull(base="main", head="task-1", title="feat: task 1", body="Done by an agent.",
                                     draft=True)
    assert created.number == 1
    assert created.html_url == f"{github_server.url}/{repo['name']}/pull/1"
    assert created.head.ref == "task-1" and created.head.sha == pushed and created.head.label == "acme:task-1"
    assert created.head.repo.full_name == repo["name"]
    assert created.base.ref == "main" and created.base.sha == repo["branches"]["main"]
    assert (created.title, created.body, created.draft, created.state) == ("feat: task 1", "Done by an agent.",
                                                                           True, "open")
    assert created.user.login == "sandlink-bot"
    assert (created.commits, created.changed_files, created.additions) == (1, 1, 1)

    listed = list(repository.get_pulls(state="open", head="acme:task-1"))
    assert [pull.number for pull in listed] == [1]
    assert listed[0].head.sha == pushed
    assert list(repository.get_pulls(state="open", head="acme:task-other")) == []
    assert list(repository.get_pulls(state="closed")) == []
    fetched = repository.get_pull(1)
    assert (fetched.number, fetched.title, fetched.mergeable) == (1, "feat: task 1", True)

    fetched.edit(state="closed")
    assert repository.get_pull(1).state == "closed"
    assert [pull.number for pull in repository.get_pulls(state="all")] == [1]


def test_a_second_pull_request_for_the_same_head_is_githubs_422(github_server, repo, git, tmp_path):
    push_branch(git, repo, tmp_path, "task-2")
    repository = client(github_server).get_repo(repo["name"])
    repository.create_pull(base="main", head="acme:task-2", title="feat: two")
    with pytest.raises(GithubException) as raised:
        repository.create_pull(base="main", head="task-2", title="feat: two again")
    assert raised.value.status == 422
    assert raised.value.data["message"] == "Validation Failed"
    assert raised.value.data["errors"] == [{"resource": "PullRequest", "code": "custom",
                                            "message": "A pull request already exists for acme:task-2."}]
    assert raised.value.data["documentation_url"].startswith("https://docs.github.com/")


def test_a_branch_never_pushed_is_an_invalid_head(github_server, repo):
    repository = client(github_server).get_repo(repo["name"])
    with pytest.raises(GithubException) as raised:
        repository.create_pull(base="main", head="task-never-pushed", title="feat: nothing")
    assert raised.value.status == 422
    assert raised.value.data["errors"] == [{"resource": "PullRequest", "field": "head", "code": "invalid"}]
    with pytest.raises(GithubException) as no_commits:
        repository.create_pull(base="main", head="main", title="feat: nothing new")
    assert no_commits.value.status == 422
    assert no_commits.value.data["errors"][0]["message"] == "No commits between main and main"


def test_bad_credentials(github_server, repo):
    with pytest.raises(BadCredentialsException) as raised:
        client(github_server, token="ghp_revokedOrWrong000000000000000000").get_repo(repo["name"])
    assert raised.value.status == 401
    assert raised.value.data["message"] == "Bad credentials"


def test_a_token_without_the_repo_scope_sees_no_private_repository(github_server, repo):
    unscoped = client(github_server, token=NO_SCOPE_TOKEN)
    with pytest.raises(UnknownObjectException) as raised:
        unscoped.get_repo(repo["name"])
    assert raised.value.status == 404
    assert header(raised.value, "x-accepted-oauth-scopes") == "repo"
    assert header(raised.value, "x-oauth-scopes") == ""
    scoped = client(github_server)
    assert scoped.get_user().login == "sandlink-bot"
    # PyGithub reads x-oauth-scopes from the last answer.
    assert scoped.oauth_scopes == ["repo"]


def test_a_fine_grained_token_without_pull_request_write_is_told_the_permission(github_server, repo):
    github_server.admin("POST", "/_admin/tokens", {"token": "github_pat_readOnlyPulls0123456789",
                                                   "login": "sandlink-bot",
                                                   "permissions": {"pull_requests": "read", "contents": "write"}})
    repository = client(github_server, token="github_pat_readOnlyPulls0123456789").get_repo(repo["name"])
    with pytest.raises(GithubException) as raised:
        repository.create_pull(base="main", head="main", title="feat: nope")
    assert raised.value.status == 403
    assert raised.value.data["message"] == "Resource not accessible by personal access token"
    assert header(raised.value, "x-accepted-github-permissions") == "pull_requests=write"


def test_secondary_rate_limit_is_retried_after_retry_after(github_server, repo):
    repository = client(github_server).get_repo(repo["name"])
    since = github_server.admin("GET", "/_admin/requests?since=999999999")["nextSeq"]
    github_server.admin("POST", "/_admin/faults", {"secondaryNext": 1, "retryAfter": 1, "route": "pulls.list"})
    started = time.monotonic()
    assert list(repository.get_pulls(state="all")) == []
    # PyGithub's default GithubRetry honoured Retry-After: one refused request, one second, one served request.
    assert time.monotonic() - started >= 1.0
    log = github_server.admin("GET", f"/_admin/requests?since={since}")["requests"]
    assert [(entry["route"], entry["status"], entry["fault"]) for entry in log] == [
        ("pulls.list", 403, "secondary"), ("pulls.list", 200, None)]

    github_server.admin("POST", "/_admin/faults", {"secondaryNext": 1, "retryAfter": 30, "route": "repos.get"})
    with pytest.raises(RateLimitExceededException) as raised:
        client(github_server, retry=None).get_repo(repo["name"])
    assert raised.value.status == 403
    assert header(raised.value, "Retry-After") == "30"
    assert raised.value.data["message"].startswith("You have exceeded a secondary rate limit.")


def test_429_with_retry_after(github_server, repo):
    github_server.admin("POST", "/_admin/faults", {"tooManyNext": 1, "retryAfter": 7})
    with pytest.raises(GithubException) as raised:
        client(github_server, retry=None).get_repo(repo["name"])
    assert raised.value.status == 429
    assert header(raised.value, "Retry-After") == "7"


def test_primary_rate_limit_counts_down_is_exhausted_and_resets(github_server, repo):
    github = client(github_server, retry=None)
    github.get_repo(repo["name"])
    remaining, limit = github.rate_limiting
    assert limit == 5000 and 0 < remaining < 5000
    overview = github.get_rate_limit()
    assert overview.resources.core.remaining == remaining  # /rate_limit itself is not counted
    reset_at = int(time.time()) + 2
    github_server.admin("POST", "/_admin/rate_limit", {"login": "sandlink-bot", "remaining": 0,
                                                       "resetInSeconds": 2})
    with pytest.raises(RateLimitExceededException) as raised:
        github.get_repo(repo["name"])
    assert raised.value.status == 403
    assert header(raised.value, "x-ratelimit-remaining") == "0"
    assert abs(int(header(raised.value, "x-ratelimit-reset")) - reset_at) <= 1
    assert raised.value.data["message"].startswith("API rate limit exceeded for user ID")
    assert github.get_rate_limit().resources.core.remaining == 0
    # With its default retry PyGithub waits until x-ratelimit-reset, then the refilled budget serves it.
    waiting = client(github_server)
    assert waiting.get_repo(repo["name"]).full_name == repo["name"]
    assert time.time() >= reset_at
    assert waiting.rate_limiting[0] == 4999


def test_pagination_follows_link_headers_and_the_enterprise_prefix(github_server, repo, git, tmp_path):
    for number in range(3):
        push_branch(git, repo, tmp_path, f"task-page-{number}")
    github = client(github_server)
    repository = github.get_repo(repo["name"])
    for number in range(3):
        repository.create_pull(base="main", head=f"task-page-{number}", title=f"feat: page {number}")
    paged = Github(base_url=github_server.url + "/api/v3", auth=Auth.Token(GITHUB_TOKEN), per_page=2,
                   seconds_between_requests=None, seconds_between_writes=None)
    titles = [pull.title for pull in paged.get_repo(repo["name"]).get_pulls(state="open", sort="created",
                                                                            direction="asc")]
    assert titles == ["feat: page 0", "feat: page 1", "feat: page 2"]


def test_the_request_log_names_routes_and_never_holds_a_token(github_server, repo):
    since = github_server.admin("GET", "/_admin/requests?since=999999999")["nextSeq"]
    client(github_server).get_repo(repo["name"])
    log = github_server.admin("GET", f"/_admin/requests?since={since}")
    assert log["counts"] == {"repos.get": 1}
    assert log["requests"][0]["tokenSha256"] == token_digest(GITHUB_TOKEN)
    assert log["requests"][0]["login"] == "sandlink-bot"
    assert GITHUB_TOKEN not in json.dumps(log)


def test_without_a_token_private_repositories_are_hidden_and_public_ones_readable(github_server, git_server):
    git_server.admin("POST", "/_admin/repos", {"name": "acme/open-source", "files": 2, "public": True})
    github_server.admin("POST", "/_admin/link", {"owner": "acme", "repo": "open-source", "private": False,
                                                 "gitServer": git_server.url})
    anonymous = Github(base_url=github_server.url, seconds_between_requests=None, seconds_between_writes=None,
                       retry=None)
    public = anonymous.get_repo("acme/open-source")
    assert (public.private, public.clone_url) == (False, f"{git_server.url}/acme/open-source.git")
    assert anonymous.rate_limiting[1] == 60  # the unauthenticated budget
    with pytest.raises(UnknownObjectException):
        anonymous.get_repo("acme/private-one-that-may-not-exist")
    with pytest.raises(GithubException) as raised:
        anonymous.get_user().login  # noqa: B018 (the attribute fetches /user)
    assert raised.value.status == 401
    assert raised.value.data["message"] == "Requires authentication"
    with pytest.raises(GithubException) as writing:
        public.create_pull(base="main", head="main", title="feat: anonymous")
    assert writing.value.status == 401


def test_a_bare_branch_in_the_head_filter_filters_nothing_and_a_missing_base_is_invalid(github_server, repo, git,
                                                                                       tmp_path):
    push_branch(git, repo, tmp_path, "task-filter")
    repository = client(github_server).get_repo(repo["name"])
    repository.create_pull(base="main", head="task-filter", title="feat: filter")
    # GitHub filters by head only as `owner:branch`; a client that sends the bare branch gets every open PR.
    assert len(list(repository.get_pulls(state="open", head="some-other-branch"))) == 1
    with pytest.raises(GithubException) as raised:
        repository.create_pull(base="no-such-base", head="task-filter", title="feat: filter")
    assert raised.value.status == 422
    assert raised.value.data["errors"] == [{"resource": "PullRequest", "field": "base", "code": "invalid"}]


def test_five_agents_push_and_open_pull_requests_at_once(github_server, git_server, repo, git, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    def agent(number: int) -> tuple[str, int, str]:
        branch = f"task-parallel-{number}"
        pushed = push_branch(git, repo, tmp_path, branch, content=f"agent {number}\n")
        pull = client(github_server).get_repo(repo["name"]).create_pull(base="main", head=branch,
                                                                        title=f"feat: agent {number}")
        return branch, pull.number, pushed

    with ThreadPoolExecutor(max_workers=5) as pool:
        results = list(pool.map(agent, range(5)))
    assert sorted(number for _, number, _ in results) == [1, 2, 3, 4, 5]
    branches = git_server.admin("GET", f"/_admin/repos/{repo['name']}")["branches"]
    pulls = {pull["head"]["ref"]: pull for pull in
             github_server.admin("GET", f"/_admin/pulls?owner=acme&repo={repo['name'].split('/')[1]}")["pulls"]}
    for branch, number, pushed in results:
        assert branches[branch] == pushed
        assert (pulls[branch]["number"], pulls[branch]["head"]["sha"]) == (number, pushed)


def test_basic_auth_and_a_secondary_limit_without_retry_after(github_server, repo):
    import urllib.request

    from conftest import basic_authorization

    request = urllib.request.Request(f"{github_server.url}/repos/{repo['name']}",
                                     headers={"Authorization": basic_authorization(GITHUB_TOKEN, "anyone")})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert json.loads(answer.read())["full_name"] == repo["name"]
        assert answer.headers["x-oauth-scopes"] == "repo"
    github_server.admin("POST", "/_admin/faults", {"secondaryNext": 1, "retryAfter": None})
    with pytest.raises(RateLimitExceededException) as raised:
        client(github_server, retry=None).get_repo(repo["name"])
    assert "retry-after" not in {name.lower() for name in raised.value.headers}
    assert header(raised.value, "x-ratelimit-remaining") != "0"  # a secondary limit leaves the primary budget


def test_a_request_without_a_user_agent_is_refused_like_github_does(github_server, repo):
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"{github_server.url}/repos/{repo['name']}",
                                     headers={"Authorization": f"token {GITHUB_TOKEN}"})
    # urllib always sends its own User-Agent unless the header is removed after the request is built.
    request.remove_header("User-agent")
    opener = urllib.request.build_opener()
    opener.addheaders = []
    try:
        opener.open(request, timeout=10)
        raise AssertionError("a request without a User-Agent was served")
    except urllib.error.HTTPError as error:
        assert error.code == 403
        assert error.read().decode().startswith("Request forbidden by administrative rules. Please make sure your "
                                                "request has a User-Agent header")


def test_a_conflicting_pull_request_is_not_mergeable(github_server, git_server, repo, git, tmp_path):
    push_branch(git, repo, tmp_path, "task-conflict", content="the agent's version\n")
    git_server.admin("POST", f"/_admin/repos/{repo['name']}/commits",
                     {"branch": "main", "message": "chore: the same file on main", "files": {
                         "task-conflict.txt": "main's version\n"}})
    pull = client(github_server).get_repo(repo["name"]).create_pull(base="main", head="task-conflict",
                                                                    title="feat: conflicting")
    assert (pull.mergeable, pull.mergeable_state) == (False, "dirty")
