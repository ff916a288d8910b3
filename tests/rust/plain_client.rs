//! A plain LSP client (no experimental capability, like Zed, Helix or Emacs) does the whole workflow through
//! code actions and `workspace/executeCommand` alone.

mod support;

use std::time::Duration;

use serde_json::{json, Value};

use support::{Server, StartOptions};

fn code_actions(server: &Server, document: &std::path::Path) -> Vec<Value> {
    let answer = server
        .request(
            "textDocument/codeAction",
            json!({
                "textDocument": { "uri": support::file_uri(document) },
                "range": { "start": { "line": 0, "character": 0 }, "end": { "line": 0, "character": 0 } },
                "context": { "diagnostics": [] }
            }),
        )
        .expect("code actions answer");
    answer.as_array().cloned().unwrap_or_default()
}

fn execute_action(server: &Server, actions: &[Value], title_part: &str) -> Value {
    let action = actions
        .iter()
        .find(|action| action["title"].as_str().is_some_and(|title| title.contains(title_part)))
        .unwrap_or_else(|| panic!("an action titled like {title_part:?} among {actions:#?}"));
    assert_eq!(action["kind"], "source.sandlink");
    let command = &action["command"];
    server
        .request("workspace/executeCommand", json!({ "command": command["command"], "arguments": command["arguments"] }))
        .unwrap_or_else(|error| panic!("{title_part} failed: {error:?}"))
}

#[test]
fn a_plain_client_should_connect_run_sync_and_disconnect_through_code_actions() {
    let workspace = support::workspace_with(&[
        ("src/app.txt", "version one\n"),
        (".sandlink.toml", "[tasks]\nshow = \"cat src/app.txt\"\nfail = \"exit 9\"\n"),
    ]);
    let document = workspace.path().join("src/app.txt");
    let server = Server::start_with(StartOptions {
        notifications: false,
        root: Some(workspace.path().to_path_buf()),
        ..StartOptions::default()
    });
    assert_eq!(server.initialize_result["capabilities"]["codeActionProvider"]["codeActionKinds"][0], "source.sandlink");

    let lens = server
        .request("textDocument/codeLens", json!({ "textDocument": { "uri": support::file_uri(&document) } }))
        .expect("code lens");
    assert!(lens[0]["command"]["title"].as_str().is_some_and(|title| title.contains("not connected")), "{lens}");

    let before = code_actions(&server, &document);
    let session = execute_action(&server, &before, "Connect (local)");
    assert_eq!(session["state"], "active");

    // Tasks come from the repository, so they run only once the user trusts the workspace.
    server
        .request("sandlink/trustWorkspace", json!({ "workspaceFolder": support::file_uri(workspace.path()), "trust": true }))
        .expect("trust the workspace's tasks");
    let connected = code_actions(&server, &document);
    for expected in ["Run task show", "Run task fail", "Sync now", "Disconnect (local)"] {
        assert!(
            connected.iter().any(|action| action["title"].as_str().is_some_and(|title| title.contains(expected))),
            "{expected} is offered once connected"
        );
    }
    execute_action(&server, &connected, "Run task show");
    server.wait_notification("window/logMessage", Duration::from_secs(20), |params| {
        params["message"].as_str().is_some_and(|message| message.contains("version one"))
    });
    server.wait_notification("window/logMessage", Duration::from_secs(20), |params| {
        params["message"].as_str().is_some_and(|message| message.contains("exited with code 0"))
    });

    std::fs::write(&document, "version two\n").expect("edit the file");
    let synced = execute_action(&server, &connected, "Sync now");
    assert!(synced["uploaded"].as_u64().is_some_and(|uploaded| uploaded >= 1), "{synced}");
    execute_action(&server, &connected, "Run task show");
    server.wait_notification("window/logMessage", Duration::from_secs(20), |params| {
        params["message"].as_str().is_some_and(|message| message.contains("version two"))
    });

    execute_action(&server, &connected, "Run task fail");
    server.wait_notification("window/showMessage", Duration::from_secs(20), |params| {
        params["message"].as_str().is_some_and(|message| message.contains("exited with code 9"))
    });

    let lens = server
        .request("textDocument/codeLens", json!({ "textDocument": { "uri": support::file_uri(&document) } }))
        .expect("code lens");
    assert!(lens[0]["command"]["title"].as_str().is_some_and(|title| title.contains("active on local")), "{lens}");

    execute_action(&server, &connected, "Disconnect (local)");
    server.wait_notification("window/showMessage", Duration::from_secs(10), |params| {
        params["message"].as_str().is_some_and(|message| message.contains("disconnected"))
    });
    let after = code_actions(&server, &document);
    assert!(after.iter().any(|action| action["title"].as_str().is_some_and(|title| title.contains("Connect"))));
    assert!(
        !server.history().iter().any(|message| message["method"].as_str().is_some_and(|method| method.starts_with("sandlink/"))),
        "a plain client never receives custom notifications"
    );
}

#[test]
fn code_actions_should_respect_a_kind_filter() {
    let workspace = support::workspace_with(&[("a.txt", "a")]);
    let server = Server::start_with(StartOptions { root: Some(workspace.path().to_path_buf()), ..StartOptions::default() });
    let answer = server
        .request(
            "textDocument/codeAction",
            json!({
                "textDocument": { "uri": support::file_uri(&workspace.path().join("a.txt")) },
                "range": { "start": { "line": 0, "character": 0 }, "end": { "line": 0, "character": 0 } },
                "context": { "diagnostics": [], "only": ["quickfix"] }
            }),
        )
        .expect("code actions answer");
    assert!(answer.is_null() || answer.as_array().is_some_and(Vec::is_empty), "quick fixes only: {answer}");
}
