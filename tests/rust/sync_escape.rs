//! Sync on the local driver, whose sandbox root is a directory on this machine: what runs in the sandbox must not be
//! able to make sandlink itself write or delete outside that root by swapping a directory for a symlink.

mod support;
#[macro_use]
mod parity;

use serde_json::json;

use parity::sync::{connected_with, sandbox_shell, tree_snapshot};

fn fixture() -> parity::DriverFixture {
    parity::local_fixture().expect("the local driver is always available")
}

#[test]
fn uploads_should_never_write_or_delete_through_a_link_made_in_the_sandbox() {
    let outside = tempfile::tempdir().expect("a directory outside the sandbox");
    std::fs::write(outside.path().join("f"), "outside, untouched").expect("an outside file");
    std::fs::write(outside.path().join("gone"), "outside, untouched").expect("an outside file");
    let outside_before = tree_snapshot(outside.path(), None);
    let (server, workspace, session_id) =
        connected_with(&fixture(), &[("d/f", "workspace"), ("d/gone", "workspace"), ("keep.txt", "k")], json!({ "watch": "off" }));
    // The sandbox replaces the directory with a link to somewhere else on this machine.
    sandbox_shell(&server, &session_id, &format!("rm -rf d && ln -s '{}' d", outside.path().display()));
    std::fs::write(workspace.path().join("d/f"), "pushed through the link?").expect("edit");
    std::fs::remove_file(workspace.path().join("d/gone")).expect("delete");
    // Naming the paths resolves any conflict for the workspace, so the upload really is attempted.
    let outcome = server.request("sandlink/sync", json!({ "sessionId": session_id, "direction": "up", "paths": ["d/f", "d/gone"] }));
    if let Err(error) = &outcome {
        assert_eq!(error.kind.as_deref(), Some("pathOutsideWorkspace"), "{error:?}");
        assert!(error.message.contains("\"d\""), "the message names the link: {}", error.message);
    }
    assert_eq!(tree_snapshot(outside.path(), None), outside_before, "nothing outside the sandbox root changed");
    let link = sandbox_shell(&server, &session_id, "readlink d");
    assert_eq!(link.trim(), outside.path().to_string_lossy(), "the sandbox's link is left as it is");
}

#[test]
fn a_cwd_link_to_etc_should_be_refused_before_the_run_starts() {
    let (server, _workspace, session_id) = connected_with(&fixture(), &[], json!({ "watch": "off" }));
    sandbox_shell(&server, &session_id, "ln -s /etc etc");
    let error = server.request_error("sandlink/run", json!({ "sessionId": session_id, "command": "touch sandlink-was-here", "cwd": "etc" }));
    assert_eq!(error.kind.as_deref(), Some("pathOutsideWorkspace"), "{error:?}");
    assert!(!std::path::Path::new("/etc/sandlink-was-here").exists());
}
