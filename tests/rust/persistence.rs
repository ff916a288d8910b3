//! Sessions that survive: records kept across server restarts and crashes, re-attach, cleanup of sandboxes that
//! are gone, two servers on one workspace, and the sandbox limit. The real binary, restarted on one state directory.

mod support;

use std::path::Path;

use serde_json::{json, Value};

use support::{workspace_with, Server, StartOptions};

fn server_on(state_dir: &Path, root: &Path, env: Vec<(String, String)>) -> Server {
    Server::start_with(StartOptions {
        state_dir: Some(state_dir.to_path_buf()),
        root: Some(root.to_path_buf()),
        env,
        ..StartOptions::default()
    })
}

fn sessions(server: &Server) -> Vec<Value> {
    let listed = server.request("sandlink/sessions", json!({})).expect("sessions answers");
    listed["sessions"].as_array().cloned().unwrap_or_default()
}

fn find<'a>(sessions: &'a [Value], session_id: &str) -> Option<&'a Value> {
    sessions.iter().find(|session| session["sessionId"] == session_id)
}

fn kill_hard(server: &Server) {
    let status = std::process::Command::new("kill").args(["-9", &server.pid().to_string()]).status().expect("kill runs");
    assert!(status.success(), "the server was killed");
    std::thread::sleep(std::time::Duration::from_millis(200));
}

#[test]
fn a_session_should_survive_a_server_restart_and_reattach_to_the_same_root() {
    let state = tempfile::tempdir().expect("state dir");
    let workspace = workspace_with(&[("hello.txt", "hello\n")]);
    let (session_id, remote_root) = {
        let first = server_on(state.path(), workspace.path(), Vec::new());
        let session = first.connect("local", Value::Null, workspace.path());
        let outcome = first.run_to_exit(json!({ "sessionId": session["sessionId"], "command": "echo made-here > marker" }));
        assert_eq!(outcome.exit_code(), Some(0));
        (session["sessionId"].as_str().expect("id").to_string(), session["remoteRoot"].as_str().expect("root").to_string())
        // Dropping the server shuts it down the way an editor does; sessions are kept by default.
    };
    let second = server_on(state.path(), workspace.path(), Vec::new());
    let listed = sessions(&second);
    let kept = find(&listed, &session_id).unwrap_or_else(|| panic!("the kept session is listed: {listed:?}"));
    assert_eq!(kept["state"], "disconnected", "{kept}");
    assert!(kept["message"].as_str().unwrap_or_default().contains("connect again"), "{kept}");
    assert_eq!(kept["held"], "kept", "{kept}");
    assert_eq!(kept["remoteRoot"], remote_root.as_str());

    let reattached = second
        .request("sandlink/connect", json!({ "reuse": session_id, "workspaceFolder": support::file_uri(workspace.path()) }))
        .expect("re-attach works");
    assert_eq!(reattached["sessionId"], session_id.as_str());
    assert_eq!(reattached["remoteRoot"], remote_root.as_str(), "the same sandbox, not a new one");
    assert_eq!(reattached["state"], "active");
    let outcome = second.run_to_exit(json!({ "sessionId": session_id, "command": "cat marker hello.txt" }));
    assert_eq!(outcome.stdout, "made-here\nhello\n", "what the first server made is still there");
    let resync = second.request("sandlink/sync", json!({ "sessionId": session_id })).expect("resync");
    assert_eq!((resync["uploaded"].as_u64(), resync["bytes"].as_u64()), (Some(0), Some(0)), "nothing changed: {resync}");

    second.request("sandlink/disconnect", json!({ "sessionId": session_id })).expect("disconnect");
    assert!(!Path::new(&remote_root).exists(), "a real disconnect removes the sandbox");
    assert!(find(&sessions(&second), &session_id).is_none(), "and its record");
}

#[test]
fn a_session_should_survive_a_crash_and_gone_sandboxes_should_be_marked_and_cleaned() {
    let state = tempfile::tempdir().expect("state dir");
    let workspace = workspace_with(&[("a.txt", "a\n")]);
    let crashed = server_on(state.path(), workspace.path(), Vec::new());
    let survivor = crashed.connect("local", Value::Null, workspace.path());
    let doomed = crashed.connect("local", Value::Null, workspace.path());
    kill_hard(&crashed);
    drop(crashed);

    let doomed_root = doomed["remoteRoot"].as_str().expect("root").to_string();
    std::fs::remove_dir_all(&doomed_root).expect("the sandbox disappears behind sandlink's back");

    let restarted = server_on(state.path(), workspace.path(), Vec::new());
    let listed = sessions(&restarted);
    let survivor_id = survivor["sessionId"].as_str().expect("id");
    let doomed_id = doomed["sessionId"].as_str().expect("id");
    let kept = find(&listed, survivor_id).expect("the crashed server's session is listed");
    assert_eq!(kept["state"], "disconnected");
    assert!(kept["message"].as_str().unwrap_or_default().contains("exited"), "{kept}");
    assert_eq!(kept["held"], "orphaned", "{kept}");
    let gone = find(&listed, doomed_id).expect("the gone one is reported once");
    assert_eq!(gone["state"], "expired", "{gone}");
    assert!(gone.get("held").is_none(), "an expired record is held by nobody: {gone}");
    assert!(find(&sessions(&restarted), doomed_id).is_none(), "and then cleaned");
    let error = restarted.request_error("sandlink/connect", json!({ "reuse": doomed_id }));
    assert_eq!(error.kind.as_deref(), Some("unknownSession"), "{}", error.message);

    std::fs::write(workspace.path().join("a.txt"), "changed while the server was down\n").expect("edit");
    let reattached = restarted.request("sandlink/connect", json!({ "reuse": survivor_id })).expect("re-attach");
    assert_eq!(reattached["remoteRoot"], survivor["remoteRoot"]);
    let outcome = restarted.run_to_exit(json!({ "sessionId": survivor_id, "command": "cat a.txt" }));
    assert_eq!(outcome.stdout, "changed while the server was down\n", "the re-attach synced the change");
    let resync = restarted.request("sandlink/sync", json!({ "sessionId": survivor_id })).expect("resync");
    assert_eq!(resync["uploaded"].as_u64(), Some(0), "and nothing more: {resync}");
}

#[test]
fn two_servers_on_one_workspace_should_both_work_without_taking_each_others_sessions() {
    let state = tempfile::tempdir().expect("state dir");
    let workspace = workspace_with(&[("shared.txt", "shared\n")]);
    let left = server_on(state.path(), workspace.path(), Vec::new());
    let right = server_on(state.path(), workspace.path(), Vec::new());
    let left_session = left.connect("local", Value::Null, workspace.path());
    let right_session = right.connect("local", Value::Null, workspace.path());
    for (server, session) in [(&left, &left_session), (&right, &right_session)] {
        let outcome = server.run_to_exit(json!({ "sessionId": session["sessionId"], "command": "cat shared.txt" }));
        assert_eq!(outcome.stdout, "shared\n");
    }
    let left_id = left_session["sessionId"].as_str().expect("id");
    let seen_from_right = sessions(&right);
    let foreign = find(&seen_from_right, left_id).expect("the other window's session is listed");
    assert_eq!(foreign["state"], "active", "its state is the other server's: {foreign}");
    assert!(foreign["message"].as_str().unwrap_or_default().contains("another sandlink"), "{foreign}");
    assert_eq!(foreign["held"], "elsewhere", "{foreign}");
    let own = find(&seen_from_right, right_session["sessionId"].as_str().expect("id")).expect("its own session");
    assert_eq!(own["held"], "here", "{own}");
    let error = right.request_error("sandlink/connect", json!({ "reuse": left_id }));
    assert_eq!(error.kind.as_deref(), Some("sessionInUse"), "{}", error.message);
    assert!(error.message.contains("another editor window") && !error.message.contains("  "), "{}", error.message);
    let error = right.request_error("sandlink/disconnect", json!({ "sessionId": left_id }));
    assert_eq!(error.kind.as_deref(), Some("sessionInUse"), "{}", error.message);
    let outcome = left.run_to_exit(json!({ "sessionId": left_id, "command": "echo still-mine" }));
    assert_eq!(outcome.stdout, "still-mine\n", "the owner keeps working");
    // Records are whole JSON after all that concurrent writing.
    for entry in std::fs::read_dir(state.path().join("sessions")).expect("sessions dir").flatten() {
        let record = entry.path().join("session.json");
        if record.exists() {
            let parsed: Value = serde_json::from_slice(&std::fs::read(&record).expect("read")).expect("valid JSON");
            assert!(parsed["sessionId"].is_string());
        }
    }
}

#[test]
fn going_over_the_sandbox_limit_should_be_a_clear_error() {
    let state = tempfile::tempdir().expect("state dir");
    let workspace = workspace_with(&[("x", "x")]);
    let env = vec![("SANDLINK_MAX_SANDBOXES".to_string(), "1".to_string())];
    let server = server_on(state.path(), workspace.path(), env);
    let first = server.connect("local", Value::Null, workspace.path());
    let error = server.request_error("sandlink/connect", json!({ "driver": "local" }));
    assert_eq!(error.kind.as_deref(), Some("limitReached"), "{}", error.message);
    assert!(error.message.contains("limit is 1") && error.message.contains("maxSandboxes"), "{}", error.message);
    assert!(!error.message.contains("  "), "one sentence, not a wrapped source line: {}", error.message);
    server.request("sandlink/disconnect", json!({ "sessionId": first["sessionId"] })).expect("disconnect");
    server.request("sandlink/connect", json!({ "driver": "local", "sync": false })).expect("a slot is free again");
}

#[test]
fn connecting_again_after_a_restart_should_get_the_kept_sandbox_back_without_asking_for_reuse() {
    let state = tempfile::tempdir().expect("state dir");
    let workspace = workspace_with(&[("hello.txt", "hello\n")]);
    let first_id = {
        let first = server_on(state.path(), workspace.path(), Vec::new());
        let session = first.connect("local", Value::Null, workspace.path());
        first.run_to_exit(json!({ "sessionId": session["sessionId"], "command": "echo built > artefact" }));
        session["sessionId"].as_str().expect("id").to_string()
    };
    let second = server_on(state.path(), workspace.path(), Vec::new());
    let again = second.connect("local", Value::Null, workspace.path());
    assert_eq!(again["sessionId"], first_id.as_str(), "the kept sandbox comes back instead of a new one");
    let outcome = second.run_to_exit(json!({ "sessionId": first_id, "command": "cat artefact" }));
    assert_eq!(outcome.stdout, "built\n");
    let other_workspace = workspace_with(&[("x.txt", "x\n")]);
    let elsewhere = second.connect("local", Value::Null, other_workspace.path());
    assert_ne!(elsewhere["sessionId"], first_id.as_str(), "another workspace gets its own sandbox");
    assert_eq!(sessions(&second).len(), 2, "no duplicate sandboxes piled up");
}
