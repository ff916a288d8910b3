//! End-to-end tests of agent tasks (`sandlink/task/*`, `sandlink task …`) on the local driver against real git over
//! smart HTTP (`tests/fakes/git_server.py`) and the GitHub REST test server (`tests/fakes/github_server.py`): clone,
//! commit, push from the host, pull requests, parallel tasks, rebases and conflicts, with a canary token searched
//! for in every file, environment and log after each step.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use support::fake::FakeProcess;
use support::{Server, StartOptions};

/// The token every test server accepts; it must never show up in the sandbox, the state directory or the logs.
const CANARY: &str = "ghp_CanaryToken0123456789abcdefSANDLINK";
const SLOW: Duration = Duration::from_secs(120);

/// The git server and the GitHub server, with one repository `acme/widgets` known to both.
struct Remotes {
    git: FakeProcess,
    github: FakeProcess,
}

impl Remotes {
    fn start(files: u32) -> Option<Remotes> {
        let git = FakeProcess::start("git", "SANDLINK_GIT_FAKE_SERVER", "git_server.py", &["--token", CANARY])?;
        let github = FakeProcess::start("GitHub", "SANDLINK_GITHUB_FAKE_SERVER", "github_server.py", &["--token", CANARY])?;
        git.admin("POST", "/_admin/repos", Some(json!({ "name": "acme/widgets", "files": files, "branch": "main" })));
        github.admin(
            "POST",
            "/_admin/repos",
            Some(json!({ "owner": "acme", "repo": "widgets", "defaultBranch": "main", "gitServer": format!("http://127.0.0.1:{}", git.port) })),
        );
        Some(Remotes { git, github })
    }

    fn repo_url(&self) -> String {
        format!("http://127.0.0.1:{}/acme/widgets.git", self.git.port)
    }

    fn branches(&self) -> Value {
        self.git.admin("GET", "/_admin/repos/acme/widgets", None)["branches"].clone()
    }

    fn bare_repo(&self) -> String {
        self.git.admin("GET", "/_admin/repos/acme/widgets", None)["path"].as_str().expect("the repository's path").to_string()
    }

    fn pulls(&self) -> Vec<Value> {
        let answer = self.github.admin("GET", "/_admin/pulls?owner=acme&repo=widgets", None);
        answer.get("pulls").and_then(Value::as_array).or_else(|| answer.as_array()).cloned().unwrap_or_default()
    }

    /// A commit on the server's `main`, moving the base under the tasks.
    fn commit_on_main(&self, files: Value) -> String {
        let answer = self.git.admin(
            "POST",
            "/_admin/repos/acme/widgets/commits",
            Some(json!({ "branch": "main", "message": "chore: move the base", "files": files })),
        );
        answer["sha"].as_str().expect("the server's commit").to_string()
    }

    fn server(&self) -> Server {
        Server::start_with(StartOptions {
            env: vec![
                ("GITHUB_TOKEN".into(), CANARY.into()),
                ("GITHUB_API_URL".into(), format!("http://127.0.0.1:{}", self.github.port)),
            ],
            ..StartOptions::default()
        })
    }
}

fn start_task(server: &Server, remotes: &Remotes, task_id: &str, title: &str) -> Value {
    server
        .request_timeout(
            "sandlink/task/start",
            json!({ "repo": remotes.repo_url(), "taskId": task_id, "title": title, "driver": "local" }),
            SLOW,
        )
        .unwrap_or_else(|error| panic!("task {task_id} starts: {error:?}"))
}

fn run_in(server: &Server, session_id: &str, command: &str) -> support::RunOutcome {
    let outcome = server.run_to_exit(json!({ "sessionId": session_id, "command": command }));
    assert_eq!(outcome.exit_code(), Some(0), "{command}: {}{}", outcome.stdout, outcome.stderr);
    outcome
}

/// Fails when the canary is in any file under `dir` (the sandbox's root, its session state, the task records, the
/// host clones and the logs all live under the state directory).
fn assert_no_canary_under(dir: &Path, step: &str) {
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let Ok(metadata) = std::fs::symlink_metadata(&path) else { continue };
        if metadata.is_dir() {
            for entry in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                pending.push(entry.path());
            }
        } else if metadata.is_file() {
            let content = std::fs::read(&path).unwrap_or_default();
            let found = content.windows(CANARY.len()).any(|window| window == CANARY.as_bytes());
            assert!(!found, "after {step}, the token is in {}", path.display());
        }
    }
}

fn file_containing(dir: &Path, needle: &[u8]) -> bool {
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let Ok(metadata) = std::fs::symlink_metadata(&path) else { continue };
        if metadata.is_dir() {
            pending.extend(std::fs::read_dir(&path).into_iter().flatten().flatten().map(|entry| entry.path()));
        } else if metadata.is_file() && std::fs::read(&path).unwrap_or_default().windows(needle.len()).any(|window| window == needle) {
            return true;
        }
    }
    false
}

/// The canary is absent from the sandbox's files, environment and git config, the state directory and the server's log.
fn assert_token_absent(server: &Server, session_id: &str, step: &str) {
    let environment = run_in(server, session_id, "env; git config --list --show-origin 2>/dev/null; cat .git/config");
    assert!(!environment.stdout.contains(CANARY), "after {step}, the sandbox's environment or git config holds the token");
    // The sandbox's root, and its /tmp where that is the sandbox's own (the local driver's; E2B's test server runs
    // commands on this machine, whose /tmp is shared).
    let private_tmp = if session_id.starts_with("local-") || session_id.starts_with("docker-") { " /tmp" } else { "" };
    // Split in two so the command itself (which reaches the provider and the run's log) never holds the token.
    let (front, back) = CANARY.split_at(CANARY.len() / 2);
    let command = format!("grep -rl \"{front}\"\"{back}\" .{private_tmp} 2>/dev/null; true");
    let search = server.run_to_exit(json!({ "sessionId": session_id, "command": command }));
    assert_eq!(search.stdout.trim(), "", "after {step}, files in the sandbox hold the token");
    assert_no_canary_under(server.state_dir(), step);
    assert!(!server.stderr().contains(CANARY), "after {step}, the server's log holds the token");
    // Nor the environment of any process the sandbox can see (the sandbox's own agent included). Only where the
    // sandbox has a process table of its own: E2B's test server runs commands on this machine, where the server
    // process itself (given the token through its environment by this test) is visible.
    if !(session_id.starts_with("local-") || session_id.starts_with("docker-")) {
        return;
    }
    let environments = format!(
        "cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' > /tmp/environments; grep -c \"{front}\"\"{back}\" /tmp/environments; \
         grep -c '^PATH=' /tmp/environments; rm -f /tmp/environments; true"
    );
    let found = server.run_to_exit(json!({ "sessionId": session_id, "command": environments }));
    let counts: Vec<u32> = found.stdout.split_whitespace().filter_map(|count| count.parse().ok()).collect();
    assert!(counts.len() == 2 && counts[1] > 0, "the environments were read: {}", found.stdout);
    assert_eq!(counts[0], 0, "after {step}, a process in the sandbox has the token in its environment");
}

#[test]
fn task_should_clone_commit_push_and_open_a_pull_request_without_the_token_entering_the_sandbox() {
    let Some(remotes) = Remotes::start(20) else { return };
    let server = remotes.server();
    let with_token = remotes.repo_url().replace("http://", &format!("http://x-access-token:{CANARY}@"));
    let refused = server.request_error("sandlink/task/start", json!({ "repo": with_token, "taskId": "t0", "driver": "local" }));
    assert_eq!(refused.kind.as_deref(), Some("invalidParams"), "a URL holding the token is refused: {}", refused.message);
    let unknown = server.request_error("sandlink/task/push", json!({ "taskId": "nope" }));
    assert_eq!(unknown.kind.as_deref(), Some("invalidParams"), "{}", unknown.message);
    assert!(!server.state_dir().join("agent-tasks/nope").exists(), "an unknown task leaves nothing behind");
    let task = start_task(&server, &remotes, "t1", "Add a greeting");
    assert_eq!(task["branch"], "task-t1");
    assert_eq!(task["baseBranch"], "main");
    assert_eq!(task["state"], "running");
    let session_id = task["sessionId"].as_str().expect("the task's session").to_string();
    let on_branch = run_in(&server, &session_id, "git rev-parse --abbrev-ref HEAD; ls | wc -l");
    assert!(on_branch.stdout.starts_with("task-t1\n"), "{}", on_branch.stdout);
    assert_token_absent(&server, &session_id, "start");
    // The state directory holds the sandbox's root (the local driver's private copy), so its scan covers the sandbox.
    let sandbox_file = run_in(&server, &session_id, "echo sandbox-marker-7c1e > marker.txt");
    assert_eq!(sandbox_file.exit_code(), Some(0));
    assert!(file_containing(server.state_dir(), b"sandbox-marker-7c1e"), "the sandbox's files are under the state directory");
    run_in(&server, &session_id, "rm marker.txt");

    run_in(&server, &session_id, "echo hello > greeting.txt");
    let refused = server.request_error("sandlink/task/commit", json!({ "taskId": "t1", "message": "added a greeting" }));
    assert_eq!(refused.kind.as_deref(), Some("invalidParams"));
    assert!(refused.message.contains("type(scope)?: subject"), "{}", refused.message);
    let committed = server
        .request("sandlink/task/commit", json!({ "taskId": "t1", "message": "feat(greeting): say hello" }))
        .expect("a conventional commit is accepted");
    assert_eq!(committed["commits"].as_array().map(Vec::len), Some(1));
    let nothing = server.request_error("sandlink/task/commit", json!({ "taskId": "t1", "message": "fix: nothing" }));
    assert_eq!(nothing.kind.as_deref(), Some("invalidParams"), "{}", nothing.message);
    assert_token_absent(&server, &session_id, "commit");

    // A commit the agent makes with git itself is pushed and recorded too.
    run_in(&server, &session_id, "echo more >> greeting.txt && git add -A && git -c user.name=Agent -c user.email=agent@example.invalid commit -q -m 'docs: more greeting'");
    let pushed = server.request_timeout("sandlink/task/push", json!({ "taskId": "t1" }), SLOW).expect("the push succeeds");
    assert_eq!(pushed["state"], "pushed");
    let messages: Vec<&str> = pushed["commits"].as_array().expect("commits").iter().filter_map(|commit| commit["message"].as_str()).collect();
    assert_eq!(messages, ["feat(greeting): say hello", "docs: more greeting"]);
    assert_eq!(remotes.branches()["task-t1"], pushed["pushedCommit"], "the branch is on the git server");
    assert_eq!(pushed["commits"][0]["sha"], committed["commits"][0]["sha"]);
    assert_eq!(pushed["pushedCommit"], pushed["commits"][1]["sha"]);
    assert_token_absent(&server, &session_id, "push");

    let opened = server.request_timeout("sandlink/task/pr", json!({ "taskId": "t1" }), SLOW).expect("the pull request opens");
    let url = opened["prUrl"].as_str().expect("a pull request URL").to_string();
    let pulls = remotes.pulls();
    assert_eq!(pulls.len(), 1, "{pulls:?}");
    assert_eq!(pulls[0]["head"]["ref"], "task-t1");
    assert_eq!(pulls[0]["base"]["ref"], "main");
    assert_eq!(pulls[0]["title"], "Add a greeting");
    assert!(pulls[0]["body"].as_str().unwrap_or_default().contains("feat(greeting): say hello"), "{}", pulls[0]["body"]);
    assert_eq!(pulls[0]["html_url"], url.as_str());
    let again = server.request_timeout("sandlink/task/pr", json!({ "taskId": "t1" }), SLOW).expect("the existing pull request");
    assert_eq!(again["prUrl"], url.as_str(), "the pull request the branch has is found, not a second one");
    assert_eq!(remotes.pulls().len(), 1);
    assert_token_absent(&server, &session_id, "pr");

    let ended = server.request("sandlink/task/end", json!({ "taskId": "t1" })).expect("the task ends");
    assert_eq!(ended["state"], "done");
    assert_eq!(ended["prUrl"], url.as_str());
    let status = server.request("sandlink/status", json!({ "sessionId": session_id }));
    assert!(status.is_err(), "the sandbox is removed: {status:?}");
    let listed = server.request("sandlink/task/list", json!({})).expect("the tasks are listed");
    assert_eq!(listed["tasks"][0]["taskId"], "t1");
    assert_eq!(listed["tasks"][0]["state"], "done");
    assert_no_canary_under(server.state_dir(), "end");
    assert!(!server.stderr().contains(CANARY));
}

#[test]
fn five_tasks_in_parallel_should_make_five_branches_and_five_pull_requests() {
    let Some(remotes) = Remotes::start(20) else { return };
    let server = remotes.server();
    let ids: Vec<String> = (1..=5).map(|n| format!("p{n}")).collect();
    let starts: Vec<i64> = ids
        .iter()
        .map(|id| server.send_request("sandlink/task/start", json!({ "repo": remotes.repo_url(), "taskId": id, "driver": "local" })))
        .collect();
    let mut sessions = Vec::new();
    for (id, request) in ids.iter().zip(starts) {
        let task = server.wait_answer(request, SLOW).unwrap_or_else(|error| panic!("task {id} starts: {error:?}"));
        sessions.push(task["sessionId"].as_str().expect("a session").to_string());
    }
    let distinct: std::collections::BTreeSet<&String> = sessions.iter().collect();
    assert_eq!(distinct.len(), 5, "each task has its own sandbox");
    for (id, session) in ids.iter().zip(&sessions) {
        run_in(&server, session, &format!("echo {id} > {id}.txt"));
        server
            .request("sandlink/task/commit", json!({ "taskId": id, "message": format!("feat: add {id}") }))
            .unwrap_or_else(|error| panic!("task {id} commits: {error:?}"));
    }
    let pushes: Vec<i64> = ids.iter().map(|id| server.send_request("sandlink/task/push", json!({ "taskId": id }))).collect();
    for (id, request) in ids.iter().zip(pushes) {
        server.wait_answer(request, SLOW).unwrap_or_else(|error| panic!("task {id} pushes: {error:?}"));
    }
    let prs: Vec<i64> = ids.iter().map(|id| server.send_request("sandlink/task/pr", json!({ "taskId": id }))).collect();
    for (id, request) in ids.iter().zip(prs) {
        server.wait_answer(request, SLOW).unwrap_or_else(|error| panic!("task {id} opens its pull request: {error:?}"));
    }
    let branches = remotes.branches();
    let pulls = remotes.pulls();
    assert_eq!(pulls.len(), 5, "{pulls:?}");
    for id in &ids {
        assert!(branches.get(format!("task-{id}")).is_some(), "task-{id} is on the server: {branches}");
        assert!(pulls.iter().any(|pull| pull["head"]["ref"] == format!("task-{id}").as_str()), "a pull request for task-{id}");
    }
    // Each branch holds its own file and none of the others'.
    let bare = remotes.bare_repo();
    for id in &ids {
        let tree = git_output(&bare, &["ls-tree", "--name-only", &format!("task-{id}")]);
        for other in &ids {
            assert_eq!(tree.lines().any(|name| name == format!("{other}.txt")), other == id, "task-{id}'s tree: {tree}");
        }
    }
    assert_no_canary_under(server.state_dir(), "five tasks");
}

fn git_output(git_dir: &str, args: &[&str]) -> String {
    let output = Command::new("git").arg("--git-dir").arg(git_dir).args(args).output().expect("git runs");
    assert!(output.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Makes the server refuse a task branch that does not contain `main`'s tip, as a "branches must be up to date"
/// rule does, so a moved base refuses the push.
fn require_up_to_date_branches(bare: &str) {
    let hook = Path::new(bare).join("hooks/pre-receive");
    std::fs::create_dir_all(hook.parent().expect("hooks folder")).expect("the hooks folder");
    std::fs::write(
        &hook,
        "#!/bin/sh\nwhile read old new ref; do\n  case \"$ref\" in refs/heads/task-*)\n    \
         if ! git merge-base --is-ancestor refs/heads/main \"$new\"; then echo \"$ref is not up to date with main\" >&2; exit 1; fi;;\n  \
         esac\ndone\n",
    )
    .expect("the hook is written");
    std::fs::set_permissions(&hook, <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755)).expect("the hook is executable");
}

#[test]
fn a_push_refused_because_the_base_moved_should_be_rebased_and_retried_and_a_conflict_reported_with_its_files() {
    let Some(remotes) = Remotes::start(5) else { return };
    require_up_to_date_branches(&remotes.bare_repo());
    let server = remotes.server();
    let clean = start_task(&server, &remotes, "r1", "Clean rebase");
    let conflicting = start_task(&server, &remotes, "r2", "Conflicting rebase");
    run_in(&server, clean["sessionId"].as_str().expect("session"), "echo mine > mine.txt");
    run_in(&server, conflicting["sessionId"].as_str().expect("session"), "echo ours > shared.txt");
    for id in ["r1", "r2"] {
        server.request("sandlink/task/commit", json!({ "taskId": id, "message": "feat: work" })).expect("commits");
    }
    let new_base = remotes.commit_on_main(json!({ "shared.txt": "theirs\n", "other.txt": "other\n" }));

    let pushed = server.request_timeout("sandlink/task/push", json!({ "taskId": "r1" }), SLOW).expect("rebased and pushed");
    assert_eq!(pushed["state"], "pushed");
    assert_eq!(pushed["baseCommit"], new_base.as_str(), "the task now builds on the new base");
    let bare = remotes.bare_repo();
    let tip = pushed["pushedCommit"].as_str().expect("pushed commit");
    assert_eq!(remotes.branches()["task-r1"], tip);
    git_output(&bare, &["merge-base", "--is-ancestor", &new_base, tip]);
    let in_sandbox = run_in(&server, clean["sessionId"].as_str().expect("session"), "git rev-parse HEAD; cat other.txt");
    assert_eq!(in_sandbox.stdout, format!("{tip}\nother\n"), "the sandbox has the rebased branch");

    let conflict = server.request_timeout("sandlink/task/push", json!({ "taskId": "r2" }), SLOW).expect_err("a conflict");
    assert_eq!(conflict.kind.as_deref(), Some("conflict"), "{}", conflict.message);
    assert_eq!(conflict.data["files"], json!(["shared.txt"]));
    assert!(conflict.message.contains("shared.txt"), "{}", conflict.message);
    assert!(remotes.branches().get("task-r2").is_none(), "nothing half-pushed");
    let status = server.request("sandlink/task/status", json!({ "taskId": "r2" })).expect("status");
    assert_eq!(status["state"], "running");
    assert!(status.get("pushedCommit").is_none());
}

#[test]
fn the_command_line_should_start_show_list_and_end_a_task_as_json() {
    let Some(remotes) = Remotes::start(5) else { return };
    let state = tempfile::tempdir().expect("state dir");
    let sandlink = |args: &[&str]| {
        let output = Command::new(support::binary())
            .env("SANDLINK_STATE_DIR", state.path())
            .env("GITHUB_TOKEN", CANARY)
            .args(args)
            .output()
            .expect("sandlink runs");
        (output.status.code(), String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let url = remotes.repo_url();
    let (code, stdout, stderr) = sandlink(&["task", "start", &url, "--id", "c1", "--driver", "local", "--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let started: Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    assert_eq!(started["branch"], "task-c1");
    assert_eq!(started["state"], "running");

    // A second task gets a sandbox of its own, never the first one's kept sandbox.
    let (code, stdout, stderr) = sandlink(&["task", "start", &url, "--id", "c2", "--driver", "local", "--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let second: Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    assert_ne!(second["sessionId"], started["sessionId"]);
    let (code, _, stderr) = sandlink(&["task", "end", "c2"]);
    assert_eq!(code, Some(0), "{stderr}");

    let (code, _, stderr) = sandlink(&["task", "commit", "c1", "-m", "did things"]);
    assert_eq!(code, Some(125));
    assert!(stderr.contains("type(scope)?: subject"), "{stderr}");
    let (code, _, stderr) = sandlink(&["task", "commit", "c1", "-m", "chore: nothing yet"]);
    assert_eq!(code, Some(125), "a kept sandbox without changes has nothing to commit");
    assert!(stderr.contains("nothing to commit"), "{stderr}");

    // The kept sandbox is the same one command after command: an edit there is committed and pushed.
    let (code, stdout, stderr) = sandlink(&["task", "exec", "c1", "--", "echo cli > cli.txt && git status --porcelain; exit 3"]);
    assert_eq!(code, Some(3), "exec exits with the command's code: {stderr}");
    assert_eq!(stdout, "?? cli.txt\n");
    let (code, stdout, stderr) = sandlink(&["task", "commit", "c1", "-m", "feat(cli): a file", "--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let committed: Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    let (code, stdout, stderr) = sandlink(&["task", "push", "c1", "--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let pushed: Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    assert_eq!(pushed["pushedCommit"], committed["commits"][0]["sha"]);
    assert_eq!(remotes.branches()["task-c1"], pushed["pushedCommit"]);

    let (code, stdout, stderr) = sandlink(&["task", "status", "c1", "--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let status: Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    assert_eq!(status["sessionId"], started["sessionId"]);
    let (code, stdout, _) = sandlink(&["task", "list", "--json"]);
    assert_eq!(code, Some(0));
    let listed: Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    let listed_ids: Vec<&str> = listed["tasks"].as_array().expect("tasks").iter().filter_map(|task| task["taskId"].as_str()).collect();
    assert_eq!(listed_ids.len(), 2, "{listed}");
    assert!(listed_ids.contains(&"c1") && listed_ids.contains(&"c2"), "{listed}");

    let (code, stdout, stderr) = sandlink(&["task", "end", "c1", "--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let ended: Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    assert_eq!(ended["state"], "done");
    let (_, sessions, _) = sandlink(&["sessions", "--json"]);
    assert!(!sessions.contains(started["sessionId"].as_str().expect("session")), "the sandbox is gone: {sessions}");
    assert_no_canary_under(state.path(), "the command line");
}

#[test]
fn network_failures_during_clone_and_push_should_be_retried() {
    let Some(remotes) = Remotes::start(5) else { return };
    let server = remotes.server();
    remotes.git.set_faults(json!({ "dropNext": 1, "service": "git-upload-pack" }));
    let task = start_task(&server, &remotes, "n1", "Flaky network");
    let session_id = task["sessionId"].as_str().expect("session");
    run_in(&server, session_id, "echo flaky > flaky.txt");
    server.request("sandlink/task/commit", json!({ "taskId": "n1", "message": "test: flaky network" })).expect("commits");
    remotes.git.set_faults(json!({ "failNext": 2, "failStatus": 503, "service": "git-receive-pack" }));
    let pushed = server.request_timeout("sandlink/task/push", json!({ "taskId": "n1" }), SLOW).expect("pushed after retries");
    assert_eq!(remotes.branches()["task-n1"], pushed["pushedCommit"]);
    let faults: Vec<Value> = remotes.git.requests_since(0).into_iter().filter(|request| !request["fault"].is_null()).collect();
    assert_eq!(faults.len(), 3, "the dropped clone and both refused pushes were retried: {faults:?}");
}

#[test]
fn pull_requests_should_wait_out_a_secondary_rate_limit_and_name_a_missing_scope() {
    let Some(remotes) = Remotes::start(5) else { return };
    let server = remotes.server();
    let task = start_task(&server, &remotes, "g1", "Rate limited");
    run_in(&server, task["sessionId"].as_str().expect("session"), "echo limited > limited.txt");
    server.request("sandlink/task/commit", json!({ "taskId": "g1", "message": "docs: limited" })).expect("commits");
    server.request_timeout("sandlink/task/push", json!({ "taskId": "g1" }), SLOW).expect("pushed");

    remotes.github.admin("POST", "/_admin/tokens", Some(json!({ "token": CANARY, "login": "sandlink-bot", "scopes": ["read:user"] })));
    let refused = server.request_timeout("sandlink/task/pr", json!({ "taskId": "g1" }), SLOW).expect_err("no repo scope");
    assert_eq!(refused.kind.as_deref(), Some("credentialsMissing"), "{}", refused.message);
    assert!(refused.message.contains("repo"), "the missing scope is named: {}", refused.message);
    assert!(!refused.message.contains(CANARY));

    remotes.github.admin("POST", "/_admin/tokens", Some(json!({ "token": CANARY, "login": "sandlink-bot", "scopes": ["repo"] })));
    remotes.github.set_faults(json!({ "secondaryNext": 1, "retryAfter": 1, "route": "pulls.create" }));
    let since = remotes.github.next_sequence();
    let started = std::time::Instant::now();
    let opened = server.request_timeout("sandlink/task/pr", json!({ "taskId": "g1" }), SLOW).expect("opened after waiting");
    assert!(started.elapsed() >= Duration::from_millis(900), "Retry-After was honoured");
    assert!(opened["prUrl"].as_str().is_some_and(|url| url.contains("/pull/")), "{opened}");
    let creates = remotes.github.requests_since(since).into_iter().filter(|request| request["route"] == "pulls.create").count();
    assert_eq!(creates, 2, "one refused by the limit, one after waiting");
    assert_eq!(remotes.pulls().len(), 1);
}

#[test]
fn a_task_whose_sandbox_died_should_turn_failed_with_its_last_pushed_commit() {
    let Some(remotes) = Remotes::start(5) else { return };
    let server = remotes.server();
    let task = start_task(&server, &remotes, "d1", "Doomed");
    let session_id = task["sessionId"].as_str().expect("session").to_string();
    run_in(&server, &session_id, "echo one > one.txt");
    server.request("sandlink/task/commit", json!({ "taskId": "d1", "message": "feat: one" })).expect("commits");
    let pushed = server.request_timeout("sandlink/task/push", json!({ "taskId": "d1" }), SLOW).expect("pushed");
    run_in(&server, &session_id, "echo two > two.txt");
    server.request("sandlink/task/commit", json!({ "taskId": "d1", "message": "feat: two" })).expect("commits");
    server.request("sandlink/disconnect", json!({ "sessionId": session_id })).expect("the sandbox is removed under the task");

    let push = server.request_timeout("sandlink/task/push", json!({ "taskId": "d1" }), SLOW).expect_err("the sandbox is gone");
    assert_eq!(push.kind.as_deref(), Some("unknownSession"), "{}", push.message);
    let status = server.request("sandlink/task/status", json!({ "taskId": "d1" })).expect("status");
    assert_eq!(status["state"], "failed");
    assert_eq!(status["pushedCommit"], pushed["pushedCommit"], "the last commit the remote has is recorded");
    assert_eq!(remotes.branches()["task-d1"], pushed["pushedCommit"], "nothing half-pushed");
}

#[test]
fn a_sandbox_without_git_should_refuse_the_task_and_leave_nothing_behind() {
    let docker = std::process::Command::new("docker").args(["image", "inspect", "sandlink-test:busybox"]).output();
    if support::skip_unless(docker.is_ok_and(|output| output.status.success()), "docker with the sandlink-test:busybox image") {
        return;
    }
    let Some(remotes) = Remotes::start(5) else { return };
    let server = remotes.server();
    let refused = server
        .request_timeout(
            "sandlink/task/start",
            json!({ "repo": remotes.repo_url(), "taskId": "b1", "driver": "docker", "settings": { "image": "sandlink-test:busybox" } }),
            SLOW,
        )
        .expect_err("busybox has no git");
    assert_eq!(refused.kind.as_deref(), Some("unsupported"), "{}", refused.message);
    assert!(refused.message.contains("git"), "{}", refused.message);
    let sessions = server.request("sandlink/sessions", json!({})).expect("sessions");
    assert_eq!(sessions["sessions"], json!([]), "the sandbox was removed");
    let tasks = server.request("sandlink/task/list", json!({})).expect("tasks");
    assert_eq!(tasks["tasks"], json!([]), "no record is left");
    assert!(!server.state_dir().join("agent-tasks/b1").exists(), "the host clone was removed");
}

/// The same task on the `e2b` driver against its test server: the repository goes in through envd's file API and
/// git runs there, and the token appears in no request sandlink made to the provider.
#[test]
fn a_task_on_docker_should_commit_push_and_open_a_pull_request_without_the_token_entering_the_container() {
    let image = std::process::Command::new("docker").args(["image", "inspect", "sandlink-test:git"]).output();
    if support::skip_unless(image.is_ok_and(|output| output.status.success()), "docker with the sandlink-test:git image") {
        return;
    }
    let Some(remotes) = Remotes::start(20) else { return };
    let mut server_env = vec![
        ("GITHUB_TOKEN".to_string(), CANARY.to_string()),
        ("GITHUB_API_URL".to_string(), format!("http://127.0.0.1:{}", remotes.github.port)),
    ];
    if let Ok(host) = std::env::var("DOCKER_HOST") {
        server_env.push(("DOCKER_HOST".into(), host));
    }
    let server = Server::start_with(StartOptions { env: server_env, ..StartOptions::default() });
    let task = server
        .request_timeout(
            "sandlink/task/start",
            json!({ "repo": remotes.repo_url(), "taskId": "d1", "title": "Greet from a container", "driver": "docker", "settings": { "image": "sandlink-test:git" } }),
            SLOW,
        )
        .expect("the task starts in a container");
    assert_eq!(task["branch"], "task-d1");
    let session_id = task["sessionId"].as_str().expect("the task's session").to_string();
    assert!(session_id.starts_with("docker-"), "{session_id}");
    let on_branch = run_in(&server, &session_id, "git rev-parse --abbrev-ref HEAD");
    assert_eq!(on_branch.stdout.trim(), "task-d1");
    assert_token_absent(&server, &session_id, "start");
    run_in(&server, &session_id, "echo hello from docker > greeting.txt");
    let refused = server.request_error("sandlink/task/commit", json!({ "taskId": "d1", "message": "greeting" }));
    assert_eq!(refused.kind.as_deref(), Some("invalidParams"));
    server
        .request("sandlink/task/commit", json!({ "taskId": "d1", "message": "feat: greet from a container" }))
        .expect("a conventional commit is accepted");
    assert_token_absent(&server, &session_id, "commit");
    let pushed = server.request_timeout("sandlink/task/push", json!({ "taskId": "d1" }), SLOW).expect("the push succeeds");
    assert_eq!(remotes.branches()["task-d1"], pushed["pushedCommit"], "the branch is on the git server");
    assert_token_absent(&server, &session_id, "push");
    let opened = server.request_timeout("sandlink/task/pr", json!({ "taskId": "d1" }), SLOW).expect("the pull request opens");
    let pulls = remotes.pulls();
    assert_eq!(pulls.len(), 1, "{pulls:?}");
    assert_eq!((pulls[0]["head"]["ref"].as_str(), pulls[0]["base"]["ref"].as_str()), (Some("task-d1"), Some("main")));
    assert_eq!(pulls[0]["title"], "Greet from a container");
    assert_eq!(pulls[0]["html_url"], opened["prUrl"]);
    assert_token_absent(&server, &session_id, "pr");
    let ended = server.request("sandlink/task/end", json!({ "taskId": "d1" })).expect("the task ends");
    assert_eq!(ended["state"], "done");
    assert_no_canary_under(server.state_dir(), "end");
    assert!(!server.stderr().contains(CANARY));
}

#[test]
fn a_task_on_e2b_should_push_and_open_a_pull_request_without_the_token_reaching_the_provider() {
    const E2B_KEY: &str = "e2b_sandlink_test_key_5f0c9a7e31";
    let Some(remotes) = Remotes::start(20) else { return };
    let Some(e2b) = FakeProcess::start("E2B", "SANDLINK_E2B_FAKE_SERVER", "e2b_server.py", &["--api-key", E2B_KEY]) else { return };
    let server = Server::start_with(StartOptions {
        env: vec![
            ("GITHUB_TOKEN".into(), CANARY.into()),
            ("GITHUB_API_URL".into(), format!("http://127.0.0.1:{}", remotes.github.port)),
            ("E2B_API_KEY".into(), E2B_KEY.into()),
        ],
        ..StartOptions::default()
    });
    let settings = json!({
        "apiUrl": format!("http://127.0.0.1:{}", e2b.port),
        "domain": format!("localhost:{}", e2b.port),
        "timeoutSeconds": 300,
    });
    let task = server
        .request_timeout(
            "sandlink/task/start",
            json!({ "repo": remotes.repo_url(), "taskId": "e1", "title": "On E2B", "driver": "e2b", "settings": settings }),
            SLOW,
        )
        .unwrap_or_else(|error| panic!("the task starts on e2b: {error:?}"));
    let session_id = task["sessionId"].as_str().expect("session").to_string();
    run_in(&server, &session_id, "echo from-e2b > e2b.txt");
    server.request("sandlink/task/commit", json!({ "taskId": "e1", "message": "feat(e2b): a file" })).expect("commits");
    let pushed = server.request_timeout("sandlink/task/push", json!({ "taskId": "e1" }), SLOW).expect("pushed");
    assert_eq!(remotes.branches()["task-e1"], pushed["pushedCommit"]);
    let opened = server.request_timeout("sandlink/task/pr", json!({ "taskId": "e1" }), SLOW).expect("opened");
    assert!(opened["prUrl"].as_str().is_some_and(|url| url.contains("/pull/")));
    assert_token_absent(&server, &session_id, "e2b push and pr");
    let provider_requests = serde_json::to_string(&e2b.requests_since(0)).expect("the request log");
    assert!(provider_requests.len() > 100, "the provider's log is read");
    assert!(!provider_requests.contains(CANARY), "a request to the provider carried the token");
    let ended = server.request("sandlink/task/end", json!({ "taskId": "e1" })).expect("ended");
    assert_eq!(ended["state"], "done");
}

#[test]
fn a_task_started_from_the_workspace_should_carry_its_commit_and_uncommitted_changes() {
    let Some(remotes) = Remotes::start(5) else { return };
    let workspace = tempfile::tempdir().expect("a workspace");
    let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("x-access-token:{CANARY}"));
    let basic = format!("Authorization: Basic {encoded}");
    let cloned = Command::new("git")
        .args(["-c", &format!("http.extraHeader={basic}"), "clone", "-q", &remotes.repo_url()])
        .arg(workspace.path().join("widgets"))
        .output()
        .expect("git clone runs");
    assert!(cloned.status.success(), "{}", String::from_utf8_lossy(&cloned.stderr));
    let repo = workspace.path().join("widgets");
    let git = |args: &[&str]| {
        let output = Command::new("git")
            .args(["-c", "user.name=Test", "-c", "user.email=test@example.invalid"])
            .args(args)
            .current_dir(&repo)
            .output()
            .expect("git runs");
        assert!(output.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    };
    std::fs::write(repo.join("local-commit.txt"), "committed but not pushed\n").expect("a file");
    git(&["add", "local-commit.txt"]);
    git(&["commit", "-q", "-m", "chore: a local commit"]);
    let head = git(&["rev-parse", "HEAD"]);
    let tracked = git(&["ls-files"]).lines().find(|path| path.ends_with(".txt") && *path != "local-commit.txt").expect("a tracked file").to_string();
    std::fs::write(repo.join(&tracked), "edited, not committed\n").expect("an edit");
    std::fs::write(repo.join("untracked.txt"), "new, not added\n").expect("an untracked file");

    let server = remotes.server();
    let task = server
        .request_timeout("sandlink/task/start", json!({ "taskId": "w1", "driver": "local", "workspaceFolder": support::file_uri(&repo) }), SLOW)
        .unwrap_or_else(|error| panic!("the task starts from the workspace: {error:?}"));
    assert_eq!(task["baseCommit"], head.as_str(), "the workspace's commit");
    assert_eq!(task["baseBranch"], "main");
    assert_eq!(task["repo"], remotes.repo_url().as_str(), "pushes go to the workspace's origin");
    let session_id = task["sessionId"].as_str().expect("session");
    let looked = run_in(&server, session_id, &format!("git rev-parse HEAD; cat {tracked} untracked.txt local-commit.txt; git status --porcelain"));
    assert_eq!(
        looked.stdout,
        format!("{head}\nedited, not committed\nnew, not added\ncommitted but not pushed\n M {tracked}\n?? untracked.txt\n"),
        "the commit and the uncommitted changes are in the sandbox"
    );
    server.request("sandlink/task/commit", json!({ "taskId": "w1", "message": "feat: carried over" })).expect("commits");
    let pushed = server.request_timeout("sandlink/task/push", json!({ "taskId": "w1" }), SLOW).expect("pushed");
    let tip = pushed["pushedCommit"].as_str().expect("pushed");
    assert_eq!(remotes.branches()["task-w1"], tip);
    let bare = remotes.bare_repo();
    assert_eq!(git_output(&bare, &["show", &format!("{tip}:untracked.txt")]), "new, not added\n");
    assert_eq!(git_output(&bare, &["show", &format!("{tip}:local-commit.txt")]), "committed but not pushed\n");
    assert_no_canary_under(server.state_dir(), "a start from the workspace");
}

