//! Files held back as secrets, allowed one at a time for a session (`sandlink/allowSecret`): the file reaches the
//! sandbox and stays synced for that session only; a path not held back is refused; a new session holds it back again.

mod support;

use serde_json::json;

use support::Server;

#[test]
fn allowing_a_held_back_file_should_upload_it_for_this_session_only() {
    let server = Server::start();
    let workspace = support::workspace_with(&[(".env", "TOKEN=from-the-workspace\n"), ("app.txt", "app\n")]);
    let session = server.connect("local", serde_json::Value::Null, workspace.path());
    let session_id = session["sessionId"].as_str().expect("sessionId").to_string();
    let held: Vec<String> = session["sync"]["heldBackSecrets"]
        .as_array()
        .expect("heldBackSecrets")
        .iter()
        .filter_map(|path| path.as_str().map(String::from))
        .collect();
    assert_eq!(held, vec![".env".to_string()], "{session}");
    let before = server.run_to_exit(json!({ "sessionId": session_id, "command": "cat .env 2>/dev/null || echo absent" }));
    assert_eq!(before.stdout.trim(), "absent");

    let refused = server.request_error("sandlink/allowSecret", json!({ "sessionId": session_id, "path": "app.txt" }));
    assert_eq!(refused.kind.as_deref(), Some("invalidParams"), "{refused:?}");
    assert!(refused.message.contains("not held back") && refused.message.contains(".env"), "{}", refused.message);

    let result = server.request("sandlink/allowSecret", json!({ "sessionId": session_id, "path": ".env" })).expect("allowed");
    assert_eq!(result["uploaded"], 1, "{result}");
    let after = server.run_to_exit(json!({ "sessionId": session_id, "command": "cat .env" }));
    assert_eq!(after.stdout.trim(), "TOKEN=from-the-workspace");
    let status = server.request("sandlink/status", json!({ "sessionId": session_id })).expect("status");
    let still_held = status["sync"]["heldBackSecrets"].as_array().is_some_and(|held| held.contains(&json!(".env")));
    assert!(!still_held, "no longer held back: {status}");

    // A later edit follows, as any synced file's does.
    std::fs::write(workspace.path().join(".env"), "TOKEN=edited\n").expect("edited");
    server.request("sandlink/sync", json!({ "sessionId": session_id })).expect("synced");
    let edited = server.run_to_exit(json!({ "sessionId": session_id, "command": "cat .env" }));
    assert_eq!(edited.stdout.trim(), "TOKEN=edited");

    // Another session of the same workspace holds it back again.
    server.request("sandlink/disconnect", json!({ "sessionId": session_id })).expect("disconnected");
    let other = server.connect("local", serde_json::Value::Null, workspace.path());
    assert_eq!(other["sync"]["heldBackSecrets"], json!([".env"]), "{other}");
}
