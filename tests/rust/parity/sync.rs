//! Sync behaviours every driver with file operations must share, checked only through the protocol (runs look at
//! the sandbox side), so the docker and e2b drivers can run them with `sync_parity_tests!(their_fixture)`.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::DriverFixture;
use crate::support::{self, file_uri, Server};

/// Generates one test per shared sync behaviour for a fixture constructor, like `parity_tests!`.
#[macro_export]
macro_rules! sync_parity_tests {
    ($fixture:path) => {
        $crate::sync_parity_tests!(@each $fixture,
            sync_should_apply_nested_ignore_rules_and_negations,
            sync_should_hold_back_secrets_and_list_them,
            resync_without_changes_should_transfer_nothing,
            one_changed_file_should_transfer_one_file,
            deletes_and_renames_should_propagate,
            did_save_should_reach_the_sandbox_before_the_next_run,
            sync_down_should_bring_back_sandbox_changes,
            changes_on_both_sides_should_be_a_conflict_that_keeps_both_versions,
            resolve_should_keep_the_chosen_side_and_refuse_a_path_not_in_conflict,
            a_save_should_never_overwrite_what_the_sandbox_changed_since_the_last_sync,
            permission_changes_should_sync_both_ways_and_conflict_when_they_differ,
            sync_down_should_refuse_a_symlink_escaping_the_root,
            sync_should_refuse_an_explicit_path_through_a_workspace_link,
            sync_should_refuse_links_that_resolve_out_through_other_links,
            sync_down_should_never_write_through_a_workspace_link,
            odd_names_should_sync_and_only_unsyncable_ones_be_reported,
            run_should_refuse_a_cwd_that_links_out_of_the_root
        );
    };
    (@each $fixture:path, $($behaviour:ident),+) => {
        $(
            #[test]
            fn $behaviour() {
                let Some(fixture) = $fixture() else { return };
                $crate::parity::sync::$behaviour(&fixture);
            }
        )+
    };
}

/// The fixture's driver settings plus `sync` settings.
pub fn settings_with_sync(fixture: &DriverFixture, sync: Value) -> Value {
    let mut settings = match &fixture.settings {
        Value::Object(map) => Value::Object(map.clone()),
        _ => json!({}),
    };
    settings["sync"] = sync;
    settings
}

/// A server connected to a fresh workspace with `files` and the given sync settings.
pub fn connected_with(fixture: &DriverFixture, files: &[(&str, &str)], sync: Value) -> (Server, tempfile::TempDir, String) {
    let workspace = support::workspace_with(files);
    let server = fixture.start_server();
    let session = server.connect(fixture.driver, settings_with_sync(fixture, sync), workspace.path());
    assert_eq!(session["state"], "active", "a new session is active: {session}");
    let session_id = session["sessionId"].as_str().expect("sessionId").to_string();
    (server, workspace, session_id)
}

/// Runs a shell command line in the sandbox and returns its stdout, asserting it succeeded.
pub fn sandbox_shell(server: &Server, session_id: &str, command: &str) -> String {
    let outcome = server.run_to_exit(json!({ "sessionId": session_id, "command": command }));
    assert_eq!(outcome.exit_code(), Some(0), "`{command}` failed in the sandbox: {}", outcome.stderr);
    outcome.stdout
}

/// Every file and symlink in the sandbox root, relative and sorted.
pub fn sandbox_files(server: &Server, session_id: &str) -> Vec<String> {
    let listing = sandbox_shell(server, session_id, "find . \\( -type f -o -type l \\) | sed 's|^\\./||' | LC_ALL=C sort");
    listing.lines().map(str::to_string).collect()
}

/// A file's content in the sandbox, or None when it does not exist.
pub fn sandbox_read(server: &Server, session_id: &str, path: &str) -> Option<String> {
    let outcome = server.run_to_exit(json!({ "sessionId": session_id, "command": "cat", "args": [path] }));
    if outcome.exit_code() != Some(0) {
        eprintln!("cat {path} in the sandbox: exit {}, stderr {:?}", outcome.exit, outcome.stderr);
    }
    (outcome.exit_code() == Some(0)).then_some(outcome.stdout)
}

pub fn sync(server: &Server, session_id: &str, direction: &str) -> Value {
    server
        .request("sandlink/sync", json!({ "sessionId": session_id, "direction": direction }))
        .unwrap_or_else(|error| panic!("sync {direction} failed: {error:?}"))
}

fn write(workspace: &Path, path: &str, contents: &str) {
    let full = workspace.join(path);
    std::fs::create_dir_all(full.parent().expect("a parent")).expect("parent directories");
    std::fs::write(full, contents).expect("write a workspace file");
}

/// Sync settings that leave only explicit triggers, so counts are not disturbed by the watcher.
fn manual() -> Value {
    json!({ "watch": "off" })
}

pub fn sync_should_apply_nested_ignore_rules_and_negations(fixture: &DriverFixture) {
    let files = [
        (".gitignore", "*.log\nbuild/\n"),
        ("app.log", "x"),
        ("build/out.js", "x"),
        ("src/main.rs", "fn main() {}"),
        ("src/.gitignore", "!keep.log\ngenerated/\n"),
        ("src/keep.log", "kept"),
        ("src/other.log", "x"),
        ("src/generated/a.rs", "x"),
        ("docs/.ignore", "draft.md\n"),
        ("docs/draft.md", "x"),
        ("docs/final.md", "x"),
        (".sandlinkignore", "private/\n"),
        ("private/notes.txt", "x"),
        ("scratch.tmp", "x"),
        ("node_modules/.gitkeep", ""),
    ];
    let (server, _workspace, session_id) =
        connected_with(fixture, &files, json!({ "watch": "off", "exclude": ["*.tmp", "node_modules/"] }));
    let listed = sandbox_files(&server, &session_id);
    assert_eq!(
        listed,
        vec![".gitignore", ".sandlinkignore", "docs/.ignore", "docs/final.md", "src/.gitignore", "src/keep.log", "src/main.rs"],
        "only files no rule excludes reach the sandbox"
    );
}

pub fn sync_should_hold_back_secrets_and_list_them(fixture: &DriverFixture) {
    let secret_value = "sk_live_do_not_ship_0123456789";
    let files = [
        (".env", secret_value),
        ("config/.env.production", secret_value),
        (".env.test", "TEST=1"),
        (".env.example", "KEY="),
        ("keys/id_ed25519", secret_value),
        ("keys/id_ed25519.pub", "public"),
        ("tls/server.pem", secret_value),
        (".npmrc", secret_value),
        ("src/app.py", "print(1)"),
    ];
    let (server, _workspace, session_id) = connected_with(fixture, &files, json!({ "watch": "off", "allowSecrets": [".env.test"] }));
    let listed = sandbox_files(&server, &session_id);
    assert_eq!(listed, vec![".env.example", ".env.test", "keys/id_ed25519.pub", "src/app.py"]);
    let status = server.request("sandlink/status", json!({ "sessionId": session_id })).expect("status");
    let held: Vec<&str> = status["sync"]["heldBackSecrets"].as_array().expect("a list").iter().filter_map(Value::as_str).collect();
    assert_eq!(held, vec![".env", ".npmrc", "config/.env.production", "keys/id_ed25519", "tls/server.pem"]);
    assert_eq!(status["sync"]["excluded"], 5);
    let log = server.stderr();
    assert!(log.contains("config/.env.production"), "held-back paths are logged: {log}");
    assert!(!log.contains(secret_value), "a secret's content never reaches the log");
    let npmrc_lines = |log: &str| log.lines().filter(|line| line.contains("held back") && line.contains(".npmrc")).count();
    assert_eq!(npmrc_lines(&log), 1, "each held-back path is logged once: {log}");
    sync(&server, &session_id, "up");
    assert_eq!(npmrc_lines(&server.stderr()), 1, "and not again on the next sync");
}

pub fn resync_without_changes_should_transfer_nothing(fixture: &DriverFixture) {
    let files: Vec<(String, String)> = (0..50).map(|index| (format!("dir{}/file{index}.txt", index % 5), format!("content {index}"))).collect();
    let borrowed: Vec<(&str, &str)> = files.iter().map(|(path, text)| (path.as_str(), text.as_str())).collect();
    let (server, _workspace, session_id) = connected_with(fixture, &borrowed, manual());
    let result = sync(&server, &session_id, "up");
    assert_eq!((result["uploaded"].as_u64(), result["deleted"].as_u64(), result["bytes"].as_u64()), (Some(0), Some(0), Some(0)), "{result}");
}

pub fn one_changed_file_should_transfer_one_file(fixture: &DriverFixture) {
    let (server, workspace, session_id) =
        connected_with(fixture, &[("a.txt", "one"), ("b.txt", "two"), ("sub/c.txt", "three")], manual());
    write(workspace.path(), "sub/c.txt", "three, changed");
    let result = sync(&server, &session_id, "up");
    assert_eq!(result["uploaded"], 1, "{result}");
    assert_eq!(result["bytes"], "three, changed".len(), "{result}");
    assert_eq!(sandbox_read(&server, &session_id, "sub/c.txt").as_deref(), Some("three, changed"));
    // A mode change is a change too (scripts made executable).
    let script = workspace.path().join("a.txt");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    assert_eq!(sync(&server, &session_id, "up")["uploaded"], 1);
    assert_eq!(sandbox_shell(&server, &session_id, "test -x a.txt && echo executable"), "executable\n");
}

pub fn deletes_and_renames_should_propagate(fixture: &DriverFixture) {
    let (server, workspace, session_id) = connected_with(
        fixture,
        &[("keep.txt", "k"), ("gone.txt", "g"), ("old/a.txt", "a"), ("old/deep/b.txt", "b"), ("name1.txt", "n")],
        manual(),
    );
    std::fs::remove_file(workspace.path().join("gone.txt")).expect("delete");
    std::fs::rename(workspace.path().join("old"), workspace.path().join("new")).expect("rename a directory");
    std::fs::rename(workspace.path().join("name1.txt"), workspace.path().join("name2.txt")).expect("rename a file");
    let result = sync(&server, &session_id, "up");
    assert_eq!(result["deleted"], 4, "{result}");
    assert_eq!(result["uploaded"], 3, "{result}");
    assert_eq!(sandbox_files(&server, &session_id), vec!["keep.txt", "name2.txt", "new/a.txt", "new/deep/b.txt"]);
    assert_eq!(sandbox_shell(&server, &session_id, "test -e old && echo present || echo absent"), "absent\n", "the renamed directory is gone");
}

pub fn did_save_should_reach_the_sandbox_before_the_next_run(fixture: &DriverFixture) {
    let (server, workspace, session_id) = connected_with(fixture, &[("main.txt", "version 0")], manual());
    let path = workspace.path().join("main.txt");
    for version in 1..=10 {
        let text = format!("version {version}");
        std::fs::write(&path, &text).expect("save");
        server.notify("textDocument/didSave", json!({ "textDocument": { "uri": file_uri(&path) } }));
        let outcome = server.run_to_exit(json!({ "sessionId": session_id, "command": "cat main.txt" }));
        assert_eq!(outcome.stdout, text, "the run right after didSave sees the saved file");
    }
    let created = workspace.path().join("new/file.txt");
    std::fs::create_dir_all(created.parent().expect("a parent")).expect("mkdir");
    std::fs::write(&created, "fresh").expect("save a new file");
    server.notify("textDocument/didSave", json!({ "textDocument": { "uri": file_uri(&created) } }));
    assert_eq!(sandbox_read(&server, &session_id, "new/file.txt").as_deref(), Some("fresh"));
}

pub fn sync_down_should_bring_back_sandbox_changes(fixture: &DriverFixture) {
    let (server, workspace, session_id) =
        connected_with(fixture, &[("src/a.txt", "local a"), ("src/b.txt", "local b"), ("README", "r")], manual());
    sandbox_shell(
        &server,
        &session_id,
        "mkdir -p dist && echo built > dist/app.js && chmod 755 dist/app.js && echo 'changed in sandbox' > src/a.txt && rm src/b.txt",
    );
    let result = sync(&server, &session_id, "down");
    assert_eq!(result["downloaded"], 2, "{result}");
    assert_eq!(result["deleted"], 1, "{result}");
    assert_eq!(result["conflicts"], json!([]));
    let mut brought: Vec<&str> = result["brought"].as_array().expect("what came is listed").iter().filter_map(Value::as_str).collect();
    brought.sort_unstable();
    assert_eq!(brought, ["dist/app.js", "src/a.txt"], "{result}");
    assert_eq!(result["removedLocally"], json!(["src/b.txt"]), "{result}");
    let root = workspace.path();
    assert_eq!(std::fs::read_to_string(root.join("dist/app.js")).expect("generated file came back"), "built\n");
    assert_eq!(std::fs::read_to_string(root.join("src/a.txt")).expect("changed file came back"), "changed in sandbox\n");
    assert!(!root.join("src/b.txt").exists(), "a file deleted in the sandbox is deleted locally");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(root.join("dist/app.js")).expect("stat").permissions());
    assert_eq!(mode & 0o777, 0o755, "modes come back too");
    // Nothing changed since: a second sync either way moves nothing.
    let again = sync(&server, &session_id, "both");
    assert_eq!((again["uploaded"].as_u64(), again["downloaded"].as_u64(), again["deleted"].as_u64()), (Some(0), Some(0), Some(0)), "{again}");
    assert!(again.get("brought").is_none() && again.get("removedLocally").is_none(), "nothing listed: {again}");
}

pub fn changes_on_both_sides_should_be_a_conflict_that_keeps_both_versions(fixture: &DriverFixture) {
    let (server, workspace, session_id) =
        connected_with(fixture, &[("shared.txt", "base"), ("same.txt", "base"), ("only-local.txt", "base")], manual());
    let root = workspace.path();
    std::fs::write(root.join("shared.txt"), "local edit").expect("edit");
    std::fs::write(root.join("same.txt"), "identical edit\n").expect("edit");
    std::fs::write(root.join("only-local.txt"), "local only").expect("edit");
    sandbox_shell(&server, &session_id, "echo 'sandbox edit' > shared.txt && echo 'identical edit' > same.txt");
    let result = sync(&server, &session_id, "both");
    assert_eq!(
        result["conflicts"],
        json!([{ "path": "shared.txt", "reason": "changed in both the workspace and the sandbox" }]),
        "{result}"
    );
    assert_eq!(std::fs::read_to_string(root.join("shared.txt")).expect("read"), "local edit", "the local version is intact");
    assert_eq!(sandbox_read(&server, &session_id, "shared.txt").as_deref(), Some("sandbox edit\n"), "the sandbox version is intact");
    assert_eq!(sandbox_read(&server, &session_id, "only-local.txt").as_deref(), Some("local only"), "one-sided changes still sync");
    let status = server.request("sandlink/status", json!({ "sessionId": session_id })).expect("status");
    assert_eq!(status["sync"]["conflicts"][0]["path"], "shared.txt");
    // Automatic syncs (a save, a run's flush) leave the conflict alone.
    server.notify("textDocument/didSave", json!({ "textDocument": { "uri": file_uri(&root.join("shared.txt")) } }));
    assert_eq!(sandbox_read(&server, &session_id, "shared.txt").as_deref(), Some("sandbox edit\n"));
    assert_eq!(sync(&server, &session_id, "up")["conflicts"][0]["path"], "shared.txt");
    assert_eq!(sandbox_read(&server, &session_id, "shared.txt").as_deref(), Some("sandbox edit\n"));
    // The user decides: syncing that path up makes the workspace version win.
    let resolved = server
        .request("sandlink/sync", json!({ "sessionId": session_id, "direction": "up", "paths": ["shared.txt"] }))
        .expect("resolve");
    assert_eq!(resolved["conflicts"], json!([]), "{resolved}");
    assert_eq!(sandbox_read(&server, &session_id, "shared.txt").as_deref(), Some("local edit"));
}

pub fn resolve_should_keep_the_chosen_side_and_refuse_a_path_not_in_conflict(fixture: &DriverFixture) {
    let (server, workspace, session_id) =
        connected_with(fixture, &[("mine.txt", "base"), ("theirs.txt", "base"), ("calm.txt", "base")], manual());
    let root = workspace.path();
    std::fs::write(root.join("mine.txt"), "local mine").expect("edit");
    std::fs::write(root.join("theirs.txt"), "local theirs").expect("edit");
    sandbox_shell(&server, &session_id, "echo 'sandbox mine' > mine.txt && echo 'sandbox theirs' > theirs.txt");
    assert_eq!(sync(&server, &session_id, "both")["conflicts"].as_array().map(Vec::len), Some(2));

    let error = server.request_error("sandlink/resolve", json!({ "sessionId": session_id, "path": "calm.txt", "keep": "workspace" }));
    assert_eq!(error.kind.as_deref(), Some("invalidParams"), "{error:?}");
    assert!(error.message.contains("mine.txt") && error.message.contains("theirs.txt"), "names the conflicts: {}", error.message);
    let error = server.request_error("sandlink/resolve", json!({ "sessionId": session_id, "path": "mine.txt", "keep": "both" }));
    assert_eq!(error.kind.as_deref(), Some("invalidParams"), "{error:?}");

    // Keep mine, named by its file URI as an editor would: the workspace version goes to the sandbox.
    let kept = server
        .request("sandlink/resolve", json!({ "sessionId": session_id, "path": file_uri(&root.join("mine.txt")), "keep": "workspace" }))
        .expect("keep the workspace's version");
    assert_eq!(kept["conflicts"], json!([{ "path": "theirs.txt", "reason": "changed in both the workspace and the sandbox" }]));
    assert_eq!(sandbox_read(&server, &session_id, "mine.txt").as_deref(), Some("local mine"));
    assert_eq!(std::fs::read_to_string(root.join("mine.txt")).expect("read"), "local mine");
    // Take the sandbox's: its version comes to the workspace.
    let taken = server
        .request("sandlink/resolve", json!({ "sessionId": session_id, "path": "theirs.txt", "keep": "sandbox" }))
        .expect("keep the sandbox's version");
    assert_eq!(taken["conflicts"], json!([]), "{taken}");
    assert_eq!(std::fs::read_to_string(root.join("theirs.txt")).expect("read"), "sandbox theirs\n");
    assert_eq!(sandbox_read(&server, &session_id, "theirs.txt").as_deref(), Some("sandbox theirs\n"));
    let error = server.request_error("sandlink/resolve", json!({ "sessionId": session_id, "path": "theirs.txt", "keep": "sandbox" }));
    assert!(error.message.contains("no sync conflicts"), "{}", error.message);
    assert_eq!(sync(&server, &session_id, "both")["conflicts"], json!([]), "settled for good");
}

pub fn a_save_should_never_overwrite_what_the_sandbox_changed_since_the_last_sync(fixture: &DriverFixture) {
    let files = [("edited.txt", "base"), ("removed.txt", "base"), ("agreed.txt", "base"), ("untouched.txt", "base")];
    let (server, workspace, session_id) = connected_with(fixture, &files, manual());
    let root = workspace.path();
    sandbox_shell(&server, &session_id, "echo 'sandbox edit' > edited.txt && rm removed.txt && printf 'agreed' > agreed.txt");
    for (path, text) in [("edited.txt", "local edit"), ("removed.txt", "local edit"), ("agreed.txt", "agreed"), ("untouched.txt", "local edit")] {
        write(root, path, text);
        server.notify("textDocument/didSave", json!({ "textDocument": { "uri": file_uri(&root.join(path)) } }));
    }
    // The next run waits for the saves' sync.
    assert_eq!(sandbox_read(&server, &session_id, "untouched.txt").as_deref(), Some("local edit"), "a one-sided edit goes up");
    assert_eq!(sandbox_read(&server, &session_id, "edited.txt").as_deref(), Some("sandbox edit\n"), "the sandbox's edit is kept");
    assert_eq!(sandbox_read(&server, &session_id, "removed.txt"), None, "the sandbox's deletion is kept");
    let expected = json!([
        { "path": "edited.txt", "reason": "changed in both the workspace and the sandbox" },
        { "path": "removed.txt", "reason": "changed in the workspace and deleted in the sandbox" },
    ]);
    let status = server.request("sandlink/status", json!({ "sessionId": session_id })).expect("status");
    assert_eq!(status["sync"]["conflicts"], expected, "the same edit on both sides is no conflict: {status}");
    for (path, text) in [("edited.txt", "local edit"), ("removed.txt", "local edit")] {
        assert_eq!(std::fs::read_to_string(root.join(path)).expect("read"), text, "the workspace's {path} is intact");
    }
    // An explicit sync up of the whole tree is held by the same check; naming a path resolves it for the workspace.
    assert_eq!(sync(&server, &session_id, "up")["conflicts"], expected);
    assert_eq!(sandbox_read(&server, &session_id, "edited.txt").as_deref(), Some("sandbox edit\n"));
    let resolved = server
        .request("sandlink/sync", json!({ "sessionId": session_id, "direction": "up", "paths": ["edited.txt", "removed.txt"] }))
        .expect("resolve");
    assert_eq!(resolved["conflicts"], json!([]), "{resolved}");
    assert_eq!(sandbox_read(&server, &session_id, "edited.txt").as_deref(), Some("local edit"));
    assert_eq!(sandbox_read(&server, &session_id, "removed.txt").as_deref(), Some("local edit"));
    // Nothing is left to do, and the agreed file was recorded as synced.
    let again = sync(&server, &session_id, "both");
    assert_eq!((again["uploaded"].as_u64(), again["downloaded"].as_u64(), again["conflicts"].clone()), (Some(0), Some(0), json!([])), "{again}");
}

fn local_mode(root: &Path, path: &str) -> u32 {
    std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(root.join(path)).expect("stat").permissions()) & 0o7777
}

fn sandbox_mode(server: &Server, session_id: &str, path: &str) -> String {
    sandbox_shell(server, session_id, &format!("stat -c %a {path}")).trim().to_string()
}

pub fn permission_changes_should_sync_both_ways_and_conflict_when_they_differ(fixture: &DriverFixture) {
    let files = [("run.sh", "echo run\n"), ("tool.sh", "echo tool\n"), ("both.sh", "echo both\n"), ("plain.txt", "p")];
    let (server, workspace, session_id) = connected_with(fixture, &files, manual());
    let root = workspace.path();
    let set_mode = |path: &str, mode: u32| {
        std::fs::set_permissions(root.join(path), std::os::unix::fs::PermissionsExt::from_mode(mode)).expect("chmod");
    };
    // A mode-only change in the sandbox comes down like a content change.
    sandbox_shell(&server, &session_id, "chmod +x run.sh && chmod 750 both.sh");
    set_mode("tool.sh", 0o755);
    set_mode("both.sh", 0o700);
    // setuid never travels: only the permission bits do.
    set_mode("plain.txt", 0o4755);
    let result = sync(&server, &session_id, "both");
    assert_eq!(
        result["conflicts"],
        json!([{ "path": "both.sh", "reason": "its permissions changed differently in the workspace and the sandbox" }]),
        "{result}"
    );
    assert_eq!((result["downloaded"].as_u64(), result["uploaded"].as_u64()), (Some(1), Some(2)), "{result}");
    assert_eq!(local_mode(root, "run.sh") & 0o777, 0o755, "the sandbox's chmod +x came down");
    assert_eq!(std::fs::read_to_string(root.join("run.sh")).expect("read"), "echo run\n");
    assert_eq!(sandbox_mode(&server, &session_id, "tool.sh"), "755", "the workspace's chmod +x went up");
    assert_eq!(sandbox_mode(&server, &session_id, "plain.txt"), "755", "setuid stayed behind");
    // Both modes as each side left them.
    assert_eq!(local_mode(root, "both.sh"), 0o700);
    assert_eq!(sandbox_mode(&server, &session_id, "both.sh"), "750");
    // Nothing else to do; the conflict stays until both sides agree.
    let again = sync(&server, &session_id, "both");
    assert_eq!((again["uploaded"].as_u64(), again["downloaded"].as_u64()), (Some(0), Some(0)), "{again}");
    assert_eq!(again["conflicts"][0]["path"], "both.sh", "{again}");
    set_mode("both.sh", 0o750);
    let agreed = sync(&server, &session_id, "both");
    assert_eq!(agreed["conflicts"], json!([]), "{agreed}");
}

pub fn sync_down_should_refuse_a_symlink_escaping_the_root(fixture: &DriverFixture) {
    let outside = tempfile::tempdir().expect("a directory outside the workspace");
    let (server, workspace, session_id) = connected_with(fixture, &[("a.txt", "a")], manual());
    sandbox_shell(&server, &session_id, "ln -s / escape && echo x > generated.txt");
    let result = sync(&server, &session_id, "down");
    assert_eq!(skipped_paths(&result), vec!["escape"], "the escaping link is refused on its own: {result}");
    assert!(result["skipped"][0]["reason"].as_str().unwrap_or_default().contains("outside"), "{result}");
    assert!(std::fs::symlink_metadata(workspace.path().join("escape")).is_err(), "the symlink was not created locally");
    assert_eq!(std::fs::read_to_string(workspace.path().join("generated.txt")).expect("the rest syncs"), "x\n");
    // A local symlink pointing outside is neither followed nor uploaded.
    std::os::unix::fs::symlink(outside.path(), workspace.path().join("out-link")).expect("symlink");
    sync(&server, &session_id, "up");
    assert_eq!(sandbox_shell(&server, &session_id, "test -e out-link && echo present || echo absent"), "absent\n");
}

/// The paths of a sync result's `skipped`, sorted.
fn skipped_paths(result: &Value) -> Vec<String> {
    let mut paths: Vec<String> = result["skipped"]
        .as_array()
        .map(|skipped| skipped.iter().filter_map(|entry| entry["path"].as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    paths.sort();
    paths
}

/// Every entry under `dir` (not following links, leaving out `skip`) with its kind, content or target, and mode:
/// compared before and after, it shows whether anything there changed.
pub fn tree_snapshot(dir: &Path, skip: Option<&Path>) -> std::collections::BTreeMap<std::path::PathBuf, String> {
    use std::os::unix::fs::MetadataExt;
    let mut snapshot = std::collections::BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if Some(path.as_path()) == skip {
                continue;
            }
            let Ok(metadata) = std::fs::symlink_metadata(&path) else { continue };
            let description = if metadata.file_type().is_symlink() {
                format!("link {:?}", std::fs::read_link(&path).ok())
            } else if metadata.is_dir() {
                pending.push(path.clone());
                format!("dir {:o}", metadata.mode())
            } else {
                format!("file {:o} {} {:?}", metadata.mode(), metadata.mtime_nsec(), std::fs::read(&path).ok())
            };
            snapshot.insert(path, description);
        }
    }
    snapshot
}

/// Like `connected_with`, with the workspace at `parent/workspace`, so the test owns (and can watch) its parent.
pub fn connected_in(fixture: &DriverFixture, parent: &Path, files: &[(&str, &str)]) -> (Server, std::path::PathBuf, String) {
    let workspace = parent.join("workspace");
    for (path, contents) in files {
        write(&workspace, path, contents);
    }
    std::fs::create_dir_all(&workspace).expect("the workspace");
    let server = fixture.start_server();
    let session = server.connect(fixture.driver, settings_with_sync(fixture, manual()), &workspace);
    assert_eq!(session["state"], "active", "a new session is active: {session}");
    let session_id = session["sessionId"].as_str().expect("sessionId").to_string();
    (server, workspace, session_id)
}

pub fn sync_should_refuse_an_explicit_path_through_a_workspace_link(fixture: &DriverFixture) {
    let outside = tempfile::tempdir().expect("a directory outside the workspace");
    std::fs::write(outside.path().join("x"), "outside-secret-4471").expect("an outside file");
    let (server, workspace, session_id) = connected_with(fixture, &[("a.txt", "a")], manual());
    std::os::unix::fs::symlink(outside.path(), workspace.path().join("evil")).expect("symlink");
    for paths in [json!(["evil/x"]), json!([workspace.path().join("evil/x").to_string_lossy()]), json!(["evil/../evil/x"])] {
        let error = server.request_error("sandlink/sync", json!({ "sessionId": session_id, "direction": "up", "paths": paths }));
        assert_eq!(error.kind.as_deref(), Some("pathOutsideWorkspace"), "{paths}: {error:?}");
        assert!(error.message.contains("evil"), "the message names the link: {}", error.message);
    }
    // A save of a file reached through the link (an editor that opened it there) is not uploaded either.
    server.notify("textDocument/didSave", json!({ "textDocument": { "uri": file_uri(&workspace.path().join("evil/x")) } }));
    sync(&server, &session_id, "up");
    assert_eq!(sandbox_read(&server, &session_id, "evil/x"), None, "the outside file was not uploaded");
    let found = sandbox_shell(&server, &session_id, "grep -rl outside-secret-4471 . || true");
    assert_eq!(found, "", "no copy of the outside file is anywhere in the sandbox");
}

pub fn sync_should_refuse_links_that_resolve_out_through_other_links(fixture: &DriverFixture) {
    let parent = tempfile::tempdir().expect("a parent the test owns");
    let (server, workspace, session_id) = connected_in(fixture, parent.path(), &[("a.txt", "a")]);
    let parent_before = tree_snapshot(parent.path(), Some(&workspace));
    let etc_before = std::fs::read("/etc/passwd").ok();
    sandbox_shell(
        &server,
        &session_id,
        "ln -s . y && ln -s y/.. x && ln -s y/y/y/../../../etc/passwd deep && ln -s y/a.txt fine && mkdir d && ln -s ../y/.. d/up \
         && echo plain > plain.txt",
    );
    for direction in ["down", "both"] {
        // `both` asks again: the links are still in the sandbox, and still refused.
        let result = sync(&server, &session_id, direction);
        assert_eq!(skipped_paths(&result), vec!["d/up", "deep", "x"], "each escaping link is refused on its own ({direction}): {result}");
        for refused in ["x", "deep", "d/up"] {
            assert!(std::fs::symlink_metadata(workspace.join(refused)).is_err(), "{refused} was not created ({direction})");
        }
        assert_eq!(std::fs::read_link(workspace.join("y")).expect("y came back"), Path::new("."));
        assert_eq!(std::fs::read_to_string(workspace.join("fine")).expect("a link inside works"), "a");
        assert_eq!(std::fs::read_to_string(workspace.join("plain.txt")).expect("plain files sync"), "plain\n");
        assert_eq!(tree_snapshot(parent.path(), Some(&workspace)), parent_before, "nothing beside the workspace changed");
        assert_eq!(std::fs::read("/etc/passwd").ok(), etc_before);
    }
}

pub fn sync_down_should_never_write_through_a_workspace_link(fixture: &DriverFixture) {
    let outside = tempfile::tempdir().expect("a directory outside the workspace");
    std::fs::write(outside.path().join("kept"), "kept").expect("an outside file");
    let (server, workspace, session_id) = connected_with(fixture, &[("a.txt", "a")], manual());
    let outside_before = tree_snapshot(outside.path(), None);
    std::os::unix::fs::symlink(outside.path(), workspace.path().join("evil")).expect("symlink");
    sandbox_shell(&server, &session_id, "mkdir evil && echo pwned > evil/pwned && echo pwned > evil/kept && echo b > b.txt");
    for direction in ["down", "both"] {
        let result = sync(&server, &session_id, direction);
        assert_eq!(skipped_paths(&result), vec!["evil/kept", "evil/pwned"], "{direction}: {result}");
        assert_eq!(tree_snapshot(outside.path(), None), outside_before, "nothing was written through the link ({direction})");
        assert_eq!(std::fs::read_to_string(workspace.path().join("b.txt")).expect("the rest syncs"), "b\n");
        assert!(std::fs::symlink_metadata(workspace.path().join("evil")).expect("the link").file_type().is_symlink());
    }
}

pub fn odd_names_should_sync_and_only_unsyncable_ones_be_reported(fixture: &DriverFixture) {
    let (server, workspace, session_id) = connected_with(fixture, &[("plain.txt", "p")], manual());
    let root = workspace.path();
    // E2B's file API speaks JSON, whose strings cannot hold a name that is not UTF-8, so that name is made only
    // where the driver lists through a shell or the file system.
    let non_utf8 = fixture.driver != "e2b";
    let make = format!(
        "printf back > 'a\\b' && printf 'new\\nline' > \"$(printf 'new\\nline')\" && mkdir 'dir\\x' && printf deep > 'dir\\x/q\"uote' \
         && echo other > other.txt{}",
        if non_utf8 { " && printf bad > \"$(printf 'bad\\377name')\"" } else { "" }
    );
    sandbox_shell(&server, &session_id, &make);
    let result = sync(&server, &session_id, "down");
    assert_eq!(std::fs::read_to_string(root.join("a\\b")).expect("a backslash in a name syncs"), "back");
    assert_eq!(std::fs::read_to_string(root.join("new\nline")).expect("a newline in a name syncs"), "new\nline");
    assert_eq!(std::fs::read_to_string(root.join("dir\\x/q\"uote")).expect("odd directory names sync"), "deep");
    assert_eq!(std::fs::read_to_string(root.join("other.txt")).expect("everything else syncs"), "other\n");
    let expected_skips = if non_utf8 { vec!["bad\u{fffd}name".to_string()] } else { vec![] };
    assert_eq!(skipped_paths(&result), expected_skips, "only the name that cannot travel is reported: {result}");
    // And back up: edits and new odd names in the workspace reach the sandbox.
    std::fs::write(root.join("a\\b"), "edited").expect("edit");
    std::fs::write(root.join("tab\there"), "tab").expect("a tab in a name");
    let up = sync(&server, &session_id, "up");
    assert_eq!(up["uploaded"], 2, "{up}");
    assert_eq!(sandbox_read(&server, &session_id, "a\\b").as_deref(), Some("edited"));
    assert_eq!(sandbox_read(&server, &session_id, "tab\there").as_deref(), Some("tab"));
    let again = sync(&server, &session_id, "both");
    assert_eq!((again["uploaded"].as_u64(), again["downloaded"].as_u64()), (Some(0), Some(0)), "nothing is left to move: {again}");
}

pub fn run_should_refuse_a_cwd_that_links_out_of_the_root(fixture: &DriverFixture) {
    let (server, _workspace, session_id) = connected_with(fixture, &[("sub/a.txt", "a")], manual());
    sandbox_shell(&server, &session_id, "ln -s /etc etc-link && ln -s .. up && ln -s sub inside && ln -s ../up/x sub/chain");
    for cwd in ["etc-link", "up", "sub/chain", "inside/../up"] {
        let error = server.request_error("sandlink/run", json!({ "sessionId": session_id, "command": "pwd", "cwd": cwd }));
        assert_eq!(error.kind.as_deref(), Some("pathOutsideWorkspace"), "cwd {cwd}: {error:?}");
    }
    let outcome = server.run_to_exit(json!({ "sessionId": session_id, "command": "cat a.txt", "cwd": "inside" }));
    assert_eq!(outcome.stdout, "a", "a link that stays inside is a fine working directory");
}

/// Waits until `check` holds, polling; panics with `what` after `limit`.
pub fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} did not happen within {limit:?}");
}
