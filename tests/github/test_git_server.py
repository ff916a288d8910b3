"""The git test server (tests/fakes/git_server.py) driven by real git over smart HTTP: token auth, clone, push, read-only refusal, server-side commits and faults."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request

from conftest import GIT_TOKEN, Git, basic_authorization, token_digest


def clone(git: Git, url: str, destination: str, *options: str, token: str = GIT_TOKEN, check: bool = True):
    return git.run("clone", "-q", *options, url, destination, token=token, check=check)


def test_clone_with_token_gets_the_seeded_files_and_the_log_keeps_no_token(git_server, repo, git, tmp_path):
    work = str(tmp_path / "work")
    since = git_server.admin("GET", "/_admin/requests?since=999999999")["nextSeq"]
    clone(git, repo["url"], work)
    files = [os.path.join(folder, name) for folder, _, names in os.walk(work) if ".git" not in folder
             for name in names]
    assert len(files) == 21  # 20 generated files and the README
    assert git.run("rev-parse", "HEAD", cwd=work).stdout.strip() == repo["branches"]["main"]
    log = git_server.admin("GET", f"/_admin/requests?since={since}")
    statuses = [(entry["kind"], entry["status"]) for entry in log["requests"]]
    # git first asks without credentials, gets the 401 challenge, then asks its credential helper and retries.
    assert statuses[0] == ("info/refs git-upload-pack", 401)
    assert ("info/refs git-upload-pack", 200) in statuses and ("git-upload-pack", 200) in statuses
    authorized = [entry for entry in log["requests"] if entry["status"] == 200]
    assert {entry["credentialSha256"] for entry in authorized} == {token_digest(GIT_TOKEN)}
    assert {entry["user"] for entry in authorized} == {"x-access-token"}
    assert GIT_TOKEN not in json.dumps(log)


def test_missing_or_wrong_token_is_a_basic_challenge(git_server, repo, git, tmp_path):
    request = urllib.request.Request(repo["url"] + "/info/refs?service=git-upload-pack")
    try:
        urllib.request.urlopen(request, timeout=10)
        raise AssertionError("an unauthenticated request was served")
    except urllib.error.HTTPError as error:
        assert error.code == 401
        assert error.headers["WWW-Authenticate"].startswith("Basic realm=")
    request.add_header("Authorization", basic_authorization("not-the-token"))
    try:
        urllib.request.urlopen(request, timeout=10)
        raise AssertionError("a wrong token was accepted")
    except urllib.error.HTTPError as error:
        assert error.code == 401
    no_token = clone(git, repo["url"], str(tmp_path / "a"), token=None, check=False)
    assert no_token.returncode != 0 and "could not read Username" in no_token.stderr
    wrong = clone(git, repo["url"], str(tmp_path / "b"), token="wrong-token", check=False)
    assert wrong.returncode != 0 and "Authentication failed" in wrong.stderr


def test_token_as_an_extra_header_and_through_askpass(git_server, repo, git, tmp_path):
    header = clone(git, repo["url"], str(tmp_path / "header"), "-c",
                   f"http.extraHeader=Authorization: {basic_authorization(GIT_TOKEN)}", token=None, check=False)
    assert header.returncode == 0, header.stderr
    askpass = tmp_path / "askpass.sh"
    askpass.write_text('#!/bin/sh\ncase "$1" in Username*) echo x-access-token;; *) echo "$GIT_TEST_TOKEN";; esac\n')
    askpass.chmod(0o700)
    through_askpass = git.run("clone", "-q", repo["url"], str(tmp_path / "askpass"),
                              environment={"GIT_ASKPASS": str(askpass), "GIT_TEST_TOKEN": GIT_TOKEN}, check=False)
    assert through_askpass.returncode == 0, through_askpass.stderr


def test_push_a_task_branch_shows_in_the_branch_list(git_server, repo, git, tmp_path):
    work = str(tmp_path / "work")
    clone(git, repo["url"], work)
    git.run("checkout", "-q", "-b", "task-7", cwd=work)
    pushed = git.commit_file(work, "feature.txt", "new feature\n", "feat: add the feature")
    git.run("push", "-q", "origin", "task-7", cwd=work, token=GIT_TOKEN)
    branches = git_server.admin("GET", f"/_admin/repos/{repo['name']}")["branches"]
    assert branches == {"main": repo["branches"]["main"], "task-7": pushed}
    # The `?name=` form answers the same, for names a client would rather not put in a path.
    assert git_server.admin("GET", f"/_admin/repos?name={repo['name']}")["branches"]["task-7"] == pushed


def test_a_large_push_is_streamed_in_chunks(git_server, repo, git, tmp_path):
    work = str(tmp_path / "work")
    clone(git, repo["url"], work)
    # Incompressible and above http.postBuffer (1 MiB), so git sends the pack with chunked transfer encoding.
    with open(os.path.join(work, "blob.bin"), "wb") as handle:
        handle.write(os.urandom(3 * 1024 * 1024))
    git.run("add", "blob.bin", cwd=work)
    git.run("commit", "-q", "-m", "chore: add a large file", cwd=work)
    head = git.run("rev-parse", "HEAD", cwd=work).stdout.strip()
    git.run("push", "-q", "origin", "HEAD:main", cwd=work, token=GIT_TOKEN)
    assert git_server.admin("GET", f"/_admin/repos/{repo['name']}")["branches"]["main"] == head


def test_shallow_and_partial_clones(git_server, repo, git, tmp_path):
    clone(git, repo["url"], str(tmp_path / "shallow"), "--depth", "1", "--single-branch")
    assert git.run("rev-parse", "--is-shallow-repository", cwd=str(tmp_path / "shallow")).stdout.strip() == "true"
    clone(git, repo["url"], str(tmp_path / "partial"), "--filter=blob:none")
    assert git.run("config", "remote.origin.partialclonefilter", cwd=str(tmp_path / "partial")).stdout.strip() \
        == "blob:none"


def test_read_only_server_refuses_pushes_but_serves_clones(git_server, read_only_git_server, repo, git, tmp_path):
    read_only_url = f"{read_only_git_server.url}/{repo['name']}.git"
    work = str(tmp_path / "work")
    clone(git, read_only_url, work)
    git.commit_file(work, "x.txt", "x\n", "feat: x")
    refused = git.run("push", "-q", "origin", "HEAD:refused", cwd=work, token=GIT_TOKEN, check=False)
    assert refused.returncode != 0 and "returned error: 403" in refused.stderr
    assert "refused" not in git_server.admin("GET", f"/_admin/repos/{repo['name']}")["branches"]
    # Without a token it is still the authentication challenge first, as GitHub asks before it refuses.
    anonymous = git.run("push", "-q", "origin", "HEAD:refused", cwd=work, check=False)
    assert anonymous.returncode != 0 and "could not read Username" in anonymous.stderr


def test_public_repository_clones_without_a_token_but_pushes_need_one(git_server, git, tmp_path):
    described = git_server.admin("POST", "/_admin/repos", {"name": "acme/public-one", "files": 3, "public": True})
    work = str(tmp_path / "work")
    clone(git, described["url"], work, token=None)
    git.commit_file(work, "y.txt", "y\n", "feat: y")
    anonymous = git.run("push", "-q", "origin", "HEAD:main", cwd=work, check=False)
    assert anonymous.returncode != 0
    git.run("push", "-q", "origin", "HEAD:main", cwd=work, token=GIT_TOKEN)


def test_server_side_commit_moves_the_base_and_a_stale_push_is_rejected(git_server, repo, git, tmp_path):
    work = str(tmp_path / "work")
    clone(git, repo["url"], work)
    git.commit_file(work, "mine.txt", "mine\n", "feat: mine")
    changes = {"README.md": "moved\n", "src/module000/file0000.txt": None}
    moved = git_server.admin("POST", f"/_admin/repos/{repo['name']}/commits",
                             {"branch": "main", "message": "chore: someone else", "files": changes})
    assert moved["parent"] == repo["branches"]["main"]
    stale = git.run("push", "-q", "origin", "HEAD:main", cwd=work, token=GIT_TOKEN, check=False)
    assert stale.returncode != 0 and "rejected" in stale.stderr
    git.run("pull", "-q", "--rebase", "origin", "main", cwd=work, token=GIT_TOKEN)
    assert not os.path.exists(os.path.join(work, "src/module000/file0000.txt"))
    git.run("push", "-q", "origin", "HEAD:main", cwd=work, token=GIT_TOKEN)
    # A branch that does not exist starts from the HEAD branch.
    started = git_server.admin("POST", f"/_admin/repos/{repo['name']}/commits",
                               {"branch": "other", "files": {"o.txt": "o\n"}})
    assert started["parent"] == git.run("rev-parse", "HEAD", cwd=work).stdout.strip()


def test_faults_fail_drop_and_cut_then_clear(git_server, repo, git, tmp_path):
    work = str(tmp_path / "work")
    clone(git, repo["url"], work)
    git.commit_file(work, "z.txt", "z\n", "feat: z")
    git_server.admin("POST", "/_admin/faults", {"failNext": 1, "failStatus": 500, "service": "git-receive-pack"})
    failed = git.run("push", "-q", "origin", "HEAD:task-z", cwd=work, token=GIT_TOKEN, check=False)
    assert failed.returncode != 0 and "returned error: 500" in failed.stderr
    git.run("push", "-q", "origin", "HEAD:task-z", cwd=work, token=GIT_TOKEN)  # the retry succeeds

    git_server.admin("POST", "/_admin/faults", {"dropNext": 1, "service": None})
    dropped = git.run("fetch", "-q", "origin", cwd=work, token=GIT_TOKEN, check=False)
    assert dropped.returncode != 0 and "Empty reply from server" in dropped.stderr

    git_server.admin("POST", "/_admin/faults", {"cutNext": 1, "cutAfterBytes": 1000, "service": "git-upload-pack"})
    cut = clone(git, repo["url"], str(tmp_path / "cut"), check=False)
    assert cut.returncode != 0
    faults = git_server.admin("GET", "/_admin/faults")
    assert (faults["failNext"], faults["dropNext"], faults["cutNext"]) == (0, 0, 0)
    clone(git, repo["url"], str(tmp_path / "after"))

    since = git_server.admin("GET", "/_admin/requests?since=999999999")["nextSeq"]
    git_server.admin("POST", "/_admin/faults", {"delayMs": 300, "repo": repo["name"], "service": None})
    started = time.monotonic()
    git.run("ls-remote", repo["url"], cwd=work, token=GIT_TOKEN)
    assert time.monotonic() - started >= 0.3
    delayed = git_server.admin("GET", f"/_admin/requests?since={since}")["requests"]
    assert delayed and all(entry["fault"] is None and entry["durationMs"] >= 300 for entry in delayed)


def test_a_500_repository_for_the_clone_benchmark(git_server, git, tmp_path):
    described = git_server.admin("POST", "/_admin/repos", {"name": "acme/benchmark-500", "files": 500})
    started = time.monotonic()
    clone(git, described["url"], str(tmp_path / "bench"))
    elapsed = time.monotonic() - started
    count = sum(len(names) for folder, _, names in os.walk(str(tmp_path / "bench")) if ".git" not in folder)
    assert count == 501
    assert elapsed < 10, f"a 500-file clone took {elapsed:.1f} s"


def test_repository_admin_errors(git_server, repo):
    status, _ = git_server.admin_status("POST", "/_admin/repos", {"name": repo["name"]})
    assert status == 409
    status, _ = git_server.admin_status("POST", "/_admin/repos", {"name": "../escape"})
    assert status == 400
    status, _ = git_server.admin_status("GET", "/_admin/repos/acme/does-not-exist")
    assert status == 404
    names = [entry["name"] for entry in git_server.admin("GET", "/_admin/repos")["repos"]]
    assert repo["name"] in names
    seeded_from = git_server.admin("POST", "/_admin/repos", {"name": "acme/seeded-from-dir",
                                                             "seedFrom": os.path.dirname(__file__)})
    assert list(seeded_from["branches"]) == ["main"]
    git_server.admin("DELETE", "/_admin/repos/acme/seeded-from-dir")
    assert "acme/seeded-from-dir" not in [entry["name"] for entry in git_server.admin("GET", "/_admin/repos")["repos"]]


def test_a_protected_branch_refuses_pushes_with_githubs_message(git_server, repo, git, tmp_path):
    work = str(tmp_path / "work")
    clone(git, repo["url"], work)
    git.commit_file(work, "p.txt", "p\n", "feat: p")
    git_server.admin("POST", f"/_admin/repos/{repo['name']}/protect", {"branches": ["main"]})
    refused = git.run("push", "origin", "HEAD:main", cwd=work, token=GIT_TOKEN, check=False)
    assert refused.returncode != 0
    assert "GH006: Protected branch update failed for refs/heads/main." in refused.stderr
    assert "[remote rejected]" in refused.stderr
    git.run("push", "-q", "origin", "HEAD:task-p", cwd=work, token=GIT_TOKEN)  # other branches still take pushes
    git_server.admin("POST", f"/_admin/repos/{repo['name']}/protect", {"branches": []})
    git.run("push", "-q", "origin", "HEAD:main", cwd=work, token=GIT_TOKEN)
