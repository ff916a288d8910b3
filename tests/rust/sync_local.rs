//! End-to-end tests of sync on the `local` driver through the protocol: the shared sync behaviours (also run by
//! other drivers), plus the watcher, polling fallback, interrupted transfers, large trees, progress and the CLI.

mod support;
#[macro_use]
mod parity;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use parity::sync::{connected_with, eventually, sandbox_files, sandbox_read, sync};
use parity::DriverFixture;
use support::{count_files, file_uri, Server, StartOptions};


sync_parity_tests!(parity::local_fixture);

/// Sync behaviours where runs are confined by Landlock instead of bubblewrap.
mod landlock {
    crate::sync_parity_tests!(crate::parity::local_landlock_fixture);
}

fn fixture() -> DriverFixture {
    parity::local_fixture().expect("the local driver is always available")
}

#[test]
fn watcher_should_sync_changes_made_outside_the_editor() {
    let (server, workspace, session_id) = connected_with(&fixture(), &[("a.txt", "a"), (".gitignore", "ignored/\n")], json!({}));
    let status = server.request("sandlink/status", json!({ "sessionId": session_id })).expect("status");
    eventually(Duration::from_secs(30), "the watcher starting", || {
        let status = server.request("sandlink/status", json!({ "sessionId": session_id })).expect("status");
        status["sync"]["watcher"] == "watching"
    });
    let _ = status;
    // A checkout-like burst: many files written at once, with no didSave.
    for index in 0..300 {
        let path = workspace.path().join(format!("checkout/dir{}/f{index}.txt", index % 10));
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        std::fs::write(path, format!("{index}")).expect("write");
    }
    std::fs::write(workspace.path().join("a.txt"), "changed by a tool").expect("write");
    std::fs::create_dir_all(workspace.path().join("ignored")).expect("mkdir");
    std::fs::write(workspace.path().join("ignored/x"), "x").expect("write");
    let root = session_root(&server, &session_id);
    eventually(Duration::from_secs(30), "the burst reaching the sandbox", || {
        count_files(&root.join("checkout")) == 300
            && std::fs::read_to_string(root.join("a.txt")).is_ok_and(|text| text == "changed by a tool")
    });
    assert!(!root.join("ignored").exists(), "ignored paths are not synced by the watcher either");
    std::fs::remove_dir_all(workspace.path().join("checkout")).expect("remove");
    eventually(Duration::from_secs(30), "the deletion reaching the sandbox", || !root.join("checkout").exists());
}

#[test]
fn a_save_should_give_one_pending_and_one_done_state_and_an_idle_watcher_none() {
    let files = [("a.txt", "a"), (".gitignore", "target/\n"), ("src/lib.rs", "// lib"), ("src/deep/mod.rs", "// mod")];
    let (server, workspace, session_id) = connected_with(&fixture(), &files, json!({}));
    eventually(Duration::from_secs(30), "the watcher starting", || {
        let status = server.request("sandlink/status", json!({ "sessionId": session_id })).expect("status");
        status["sync"]["watcher"] == "watching"
    });
    let sync_states = || -> Vec<Value> {
        server.history().into_iter().filter(|message| message["method"] == "sandlink/syncState").map(|message| message["params"].clone()).collect()
    };
    // Sync reads files and directories as it scans; reads are not changes, so the watcher settles.
    std::thread::sleep(Duration::from_secs(1));
    let settled = sync_states().len();
    let cpu_before = cpu_seconds(server.pid());
    std::thread::sleep(Duration::from_secs(2));
    let idle_cpu = cpu_seconds(server.pid()) - cpu_before;
    assert_eq!(sync_states().len(), settled, "an idle workspace sends no sync states: {:?}", &sync_states()[settled..]);
    let last_seen = sync_states().last().cloned().expect("sync states after connecting");
    assert_eq!(last_seen["pending"], 0, "the last state a client saw after connecting is not pending: {last_seen}");
    assert!(idle_cpu < 0.04, "the server keeps working on an idle workspace: {idle_cpu:.3} s of CPU in 2 s");

    let saved = workspace.path().join("src/lib.rs");
    std::fs::write(&saved, "// saved").expect("save");
    server.notify("textDocument/didSave", json!({ "textDocument": { "uri": file_uri(&saved) } }));
    std::thread::sleep(Duration::from_millis(1500));
    let after_save: Vec<Value> = sync_states()[settled..].to_vec();
    let pending: Vec<u64> = after_save.iter().map(|state| state["pending"].as_u64().expect("pending")).collect();
    assert_eq!(pending, [1, 0], "one save: pending, then done (the watcher's own event finds nothing left): {after_save:?}");
    assert_eq!(sandbox_read(&server, &session_id, "src/lib.rs").as_deref(), Some("// saved"));
}

/// User plus system CPU time a process has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the server's /proc stat");
    // Fields after the command name (which may hold spaces) start after the last ')'; utime and stime are 14 and 15.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("a command name") + 2..].split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    ticks / 100.0
}

#[test]
fn polling_should_replace_the_watcher_when_watching_is_unavailable_and_say_so() {
    let workspace = support::workspace_with(&[("a.txt", "a")]);
    let server = Server::start_with(StartOptions {
        env: vec![("SANDLINK_SYNC_WATCH".into(), "poll".into())],
        ..StartOptions::default()
    });
    let session = server.connect("local", json!({ "sync": { "pollIntervalSeconds": 0.2 } }), workspace.path());
    let session_id = session["sessionId"].as_str().expect("sessionId").to_string();
    server.wait_notification("sandlink/syncState", Duration::from_secs(30), |params| params["watcher"] == "polling");
    std::fs::write(workspace.path().join("b.txt"), "made outside the editor").expect("write");
    let root = session_root(&server, &session_id);
    eventually(Duration::from_secs(30), "a rescan picking up the change", || root.join("b.txt").exists());
    let status = server.request("sandlink/status", json!({ "sessionId": session_id })).expect("status");
    assert_eq!(status["sync"]["watcher"], "polling");
}

#[test]
fn a_sync_killed_mid_transfer_should_leave_no_partial_file_and_the_next_should_complete() {
    let workspace = support::workspace_with(&[("small.txt", "s")]);
    let big = workspace.path().join("big.bin");
    write_pattern(&big, 600 << 20);
    let state = tempfile::tempdir().expect("a state directory");
    let server = Server::start_with(StartOptions { state_dir: Some(state.path().to_path_buf()), ..StartOptions::default() });
    let session = server
        .request("sandlink/connect", json!({ "driver": "local", "workspaceFolder": file_uri(workspace.path()), "sync": false }))
        .expect("connect without the initial sync");
    let root = Path::new(session["remoteRoot"].as_str().expect("remoteRoot")).to_path_buf();
    let staging = root.parent().expect("the session directory").join("staging");
    let params = json!({ "jsonrpc": "2.0", "id": 999_999, "method": "sandlink/sync", "params": { "sessionId": session["sessionId"] } });
    server.send(&params);
    // Kill the server once the big file is being written, i.e. in the middle of the transfer.
    eventually(Duration::from_secs(30), "the transfer starting", || {
        std::fs::read_dir(&staging).is_ok_and(|entries| {
            entries.flatten().any(|entry| entry.metadata().is_ok_and(|metadata| metadata.len() > 1 << 20))
        })
    });
    let killed = std::process::Command::new("kill").args(["-9", &server.pid().to_string()]).status().expect("kill");
    assert!(killed.success());
    std::thread::sleep(Duration::from_millis(200));
    match std::fs::metadata(root.join("big.bin")) {
        Err(_) => {}
        Ok(metadata) => assert_eq!(metadata.len(), 600 << 20, "a file in the sandbox is never partial"),
    }
    drop(server);
    let server = Server::start_with(StartOptions { state_dir: Some(state.path().to_path_buf()), ..StartOptions::default() });
    let session = server.connect("local", json!({ "sync": { "watch": "off" } }), workspace.path());
    let root = Path::new(session["remoteRoot"].as_str().expect("remoteRoot")).to_path_buf();
    assert_eq!(std::fs::metadata(root.join("big.bin")).expect("the next sync completes").len(), 600 << 20);
    assert_eq!(hash(&root.join("big.bin")), hash(&big), "with the right content");
}

/// The upload that opens a session writes new files under their own names (nothing runs in the sandbox yet); a kill
/// half-way leaves the session without a manifest, so the re-attach's sync replaces what was cut short, whole and
/// without a conflict.
#[test]
fn a_first_upload_killed_half_way_should_be_completed_by_the_reattach_without_a_conflict() {
    let workspace = support::workspace_with(&[("small.txt", "s")]);
    let big = workspace.path().join("big.bin");
    write_pattern(&big, 600 << 20);
    let state = tempfile::tempdir().expect("a state directory");
    let server = Server::start_with(StartOptions { state_dir: Some(state.path().to_path_buf()), ..StartOptions::default() });
    let params = json!({ "jsonrpc": "2.0", "id": 999_998, "method": "sandlink/connect",
                         "params": { "driver": "local", "workspaceFolder": file_uri(workspace.path()), "settings": { "sync": { "watch": "off" } } } });
    server.send(&params);
    let sessions = state.path().join("sessions");
    let partial = || -> Option<std::path::PathBuf> {
        let session = std::fs::read_dir(&sessions).ok()?.flatten().next()?.path();
        let written = session.join("root/big.bin");
        std::fs::metadata(&written).is_ok_and(|metadata| metadata.len() > 1 << 20).then_some(session)
    };
    eventually(Duration::from_secs(30), "the big file being written", || partial().is_some());
    let session_dir = partial().expect("the session directory");
    let killed = std::process::Command::new("kill").args(["-9", &server.pid().to_string()]).status().expect("kill");
    assert!(killed.success());
    std::thread::sleep(Duration::from_millis(200));
    let cut_short = std::fs::metadata(session_dir.join("root/big.bin")).expect("the file being written").len();
    assert!(cut_short < 600 << 20, "the kill landed half-way ({cut_short} bytes)");
    drop(server);
    let server = Server::start_with(StartOptions { state_dir: Some(state.path().to_path_buf()), ..StartOptions::default() });
    let crashed = session_dir.file_name().and_then(|name| name.to_str()).expect("the session id");
    let session = server
        .request_timeout(
            "sandlink/connect",
            json!({ "workspaceFolder": file_uri(workspace.path()), "reuse": crashed }),
            Duration::from_secs(120),
        )
        .expect("the crashed session is re-attached");
    let session_id = session["sessionId"].as_str().expect("sessionId");
    assert_eq!(session_id, crashed);
    let root = Path::new(session["remoteRoot"].as_str().expect("remoteRoot")).to_path_buf();
    assert_eq!(hash(&root.join("big.bin")), hash(&big), "the file cut short is replaced whole");
    let status = server.request("sandlink/status", json!({ "sessionId": session_id })).expect("status");
    assert_eq!(status["sync"]["conflicts"], json!([]), "no conflict: {status}");
}

#[test]
fn a_tree_of_100000_files_should_sync_with_progress() {
    let workspace = tempfile::tempdir().expect("a workspace");
    let count = 100_000;
    for index in 0..count {
        let path = workspace.path().join(format!("d{}/e{}/f{index}.txt", index % 100, index % 7));
        if index < 700 {
            std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        }
        std::fs::write(&path, format!("file {index}\n")).expect("write");
    }
    let server = Server::start();
    let started = Instant::now();
    let session = server
        .request_timeout(
            "sandlink/connect",
            json!({ "driver": "local", "workspaceFolder": file_uri(workspace.path()), "settings": { "sync": { "watch": "off" } }, "workDoneToken": "big-sync" }),
            Duration::from_secs(600),
        )
        .expect("connect");
    eprintln!("100,000 files synced in {:?}", started.elapsed());
    let root = Path::new(session["remoteRoot"].as_str().expect("remoteRoot")).to_path_buf();
    assert_eq!(count_files(&root), count);
    assert_eq!(std::fs::read_to_string(root.join(format!("d42/e{}/f99942.txt", 99942 % 7))).expect("a sample"), "file 99942\n");
    let progress: Vec<Value> = server
        .history()
        .into_iter()
        .filter(|message| message["method"] == "$/progress" && message["params"]["token"] == "big-sync")
        .collect();
    assert!(
        progress.iter().any(|message| message["params"]["value"]["message"].as_str().is_some_and(|text| text.contains("/100000 files"))),
        "long syncs report files and bytes through $/progress: {progress:?}"
    );
    let session_id = session["sessionId"].as_str().expect("sessionId");
    let resync = sync(&server, session_id, "up");
    assert_eq!(resync["uploaded"], 0, "{resync}");
}

#[test]
fn sync_state_notifications_and_the_manifest_should_follow_each_sync() {
    let (server, workspace, session_id) = connected_with(&fixture(), &[("a.txt", "a")], json!({ "watch": "off" }));
    server.wait_notification("sandlink/syncState", Duration::from_secs(5), |params| {
        params["sessionId"] == session_id.as_str() && params["lastSyncAt"].is_string() && params["pending"] == 0
    });
    let manifest = server.state_dir().join("sessions").join(&session_id).join(sandlink::sync::manifest::FILE_NAME);
    assert!(manifest.is_file(), "the manifest is persisted under the session's state directory");
    let saved = || sandlink::sync::manifest::decode(&std::fs::read(&manifest).expect("read")).expect("a whole manifest");
    assert_eq!(saved()["a.txt"].hash, blake3::hash(b"a").to_hex().as_str());
    std::fs::write(workspace.path().join("b.txt"), "b").expect("write");
    sync(&server, &session_id, "up");
    assert!(saved().contains_key("b.txt"));
}

#[test]
fn an_upload_through_a_sandbox_symlink_should_be_refused() {
    let outside = tempfile::tempdir().expect("a directory outside the sandbox");
    let (server, workspace, session_id) = connected_with(&fixture(), &[("a.txt", "a")], json!({ "watch": "off" }));
    let link_command = format!("ln -s {} linked", outside.path().display());
    parity::sync::sandbox_shell(&server, &session_id, &link_command);
    std::fs::create_dir_all(workspace.path().join("linked")).expect("mkdir");
    std::fs::write(workspace.path().join("linked/pwned.txt"), "x").expect("write");
    let error = server.request_error("sandlink/sync", json!({ "sessionId": session_id }));
    assert_eq!(error.kind.as_deref(), Some("pathOutsideWorkspace"), "{error:?}");
    assert!(!outside.path().join("pwned.txt").exists(), "nothing was written outside the sandbox root");
}

#[test]
fn sync_paths_outside_the_workspace_should_be_refused() {
    let (server, _workspace, session_id) = connected_with(&fixture(), &[("a.txt", "a")], json!({ "watch": "off" }));
    let error = server.request_error("sandlink/sync", json!({ "sessionId": session_id, "paths": ["../etc"] }));
    assert_eq!(error.kind.as_deref(), Some("pathOutsideWorkspace"), "{error:?}");
}

#[test]
fn bad_sync_settings_should_be_a_clear_error() {
    let workspace = support::workspace_with(&[("a.txt", "a")]);
    let server = Server::start();
    let error = server.request_error(
        "sandlink/connect",
        json!({ "driver": "local", "workspaceFolder": file_uri(workspace.path()), "settings": { "sync": { "exclud": ["x"] } } }),
    );
    assert_eq!(error.kind.as_deref(), Some("invalidParams"));
    assert!(error.message.contains("exclud"), "{}", error.message);
}

/// `sandlink sync --json` of `workspace` with its state in `state`: its report, once it exited successfully.
fn cli_sync(workspace: &Path, state: &Path) -> Value {
    let output = std::process::Command::new(support::binary())
        .args(["sync", "--json", "--workspace"])
        .arg(workspace)
        .env("SANDLINK_STATE_DIR", state)
        .output()
        .expect("sandlink sync runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("JSON on stdout")
}

#[test]
fn cli_sync_should_report_what_was_synced_and_held_back() {
    let workspace = support::workspace_with(&[("src/a.rs", "a"), (".env", "SECRET=1"), (".gitignore", "target/\n"), ("target/x", "x")]);
    let state = tempfile::tempdir().expect("a state directory");
    let report = cli_sync(workspace.path(), state.path());
    assert_eq!(report["result"]["uploaded"], 2, "{report}");
    assert_eq!(report["sync"]["heldBackSecrets"], json!([".env"]));
    assert!(!Path::new(report["remoteRoot"].as_str().expect("remoteRoot")).exists(), "the sandbox is removed without --keep");
}

/// `sandlink sync` only moves files: it starts no agent in the sandbox (whose configuration an agent's start writes
/// into the session), and the kept copy still serves a run later.
#[test]
fn cli_sync_should_start_nothing_in_the_sandbox() {
    let workspace = support::workspace_with(&[("src/a.rs", "fn main() {}\n")]);
    let state = tempfile::tempdir().expect("a state directory");
    let output = std::process::Command::new(support::binary())
        .args(["sync", "--json", "--keep", "--workspace"])
        .arg(workspace.path())
        .env("SANDLINK_STATE_DIR", state.path())
        .output()
        .expect("sandlink sync runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    let root = Path::new(report["remoteRoot"].as_str().expect("remoteRoot"));
    let session_dir = root.parent().expect("the session's directory").to_path_buf();
    assert!(session_dir.starts_with(state.path()), "{report}");
    assert!(session_dir.join("root/src/a.rs").is_file(), "the files were synced: {report}");
    assert!(!session_dir.join("agent/config.json").exists(), "no agent was started for a sync");
    let removed = std::process::Command::new(support::binary())
        .args(["sessions", "rm", "--all"])
        .env("SANDLINK_STATE_DIR", state.path())
        .output()
        .expect("sessions rm runs");
    assert!(removed.status.success(), "{}", String::from_utf8_lossy(&removed.stderr));
    assert!(!session_dir.exists(), "the kept copy is removed");
}

/// A big copy is moved out of the way at once and removed by a detached remover after `sandlink sync` exited; a
/// small one is removed in place (`drivers/local/trash.rs`).
#[test]
fn cli_sync_of_a_big_workspace_should_leave_nothing_once_its_remover_is_done() {
    let workspace = tempfile::tempdir().expect("a workspace");
    for index in 0..2_500 {
        let file = workspace.path().join(format!("src/m{}/f{index}.txt", index % 25));
        std::fs::create_dir_all(file.parent().expect("a parent")).expect("mkdir");
        std::fs::write(file, format!("{index}")).expect("write");
    }
    let state = tempfile::tempdir().expect("a state directory");
    let report = cli_sync(workspace.path(), state.path());
    assert_eq!(report["result"]["uploaded"], 2_500, "{report}");
    assert!(!Path::new(report["remoteRoot"].as_str().expect("remoteRoot")).exists(), "the sandbox is out of use at once");
    let trash = state.path().join("trash");
    let left = || -> Vec<String> {
        std::fs::read_dir(&trash)
            .map(|entries| entries.flatten().map(|entry| entry.file_name().to_string_lossy().into_owned()).collect::<Vec<String>>())
            .unwrap_or_default()
            .into_iter()
            .filter(|name| name != ".remover.lock")
            .collect()
    };
    assert!(trash.is_dir(), "a copy this big goes through the trash");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !left().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(left(), Vec::<String>::new(), "the detached remover empties the trash");
    let sessions: Vec<_> = std::fs::read_dir(state.path().join("sessions")).map(|entries| entries.flatten().collect()).unwrap_or_default();
    assert!(sessions.is_empty(), "no session directory is left: {sessions:?}");
}

/// A session directory left in the trash by a remover that was killed is removed by the next sandlink to start.
#[test]
fn a_removal_cut_short_should_be_finished_by_the_next_sandlink() {
    let state = tempfile::tempdir().expect("a state directory");
    let left = state.path().join("trash/local-0123456789ab-feedfacecafe/root/src");
    std::fs::create_dir_all(&left).expect("mkdir");
    std::fs::write(left.join("a.rs"), "a").expect("write");
    let server = Server::start_with(StartOptions { state_dir: Some(state.path().to_path_buf()), ..StartOptions::default() });
    let deadline = Instant::now() + Duration::from_secs(20);
    while state.path().join("trash/local-0123456789ab-feedfacecafe").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!state.path().join("trash/local-0123456789ab-feedfacecafe").exists(), "the leftover is removed");
    drop(server);
}

#[test]
fn sync_down_should_not_overwrite_a_file_saved_meanwhile() {
    let (server, workspace, session_id) = connected_with(&fixture(), &[("a.txt", "base")], json!({ "watch": "off" }));
    parity::sync::sandbox_shell(&server, &session_id, "echo sandbox > a.txt");
    std::fs::write(workspace.path().join("a.txt"), "local").expect("write");
    let result = sync(&server, &session_id, "down");
    assert_eq!(result["conflicts"][0]["path"], "a.txt", "{result}");
    assert_eq!(std::fs::read_to_string(workspace.path().join("a.txt")).expect("read"), "local");
    assert_eq!(sandbox_read(&server, &session_id, "a.txt").as_deref(), Some("sandbox\n"));
    // The user decides for the sandbox's version by syncing that path down.
    let resolved = server
        .request("sandlink/sync", json!({ "sessionId": session_id, "direction": "down", "paths": ["a.txt"] }))
        .expect("resolve down");
    assert_eq!(resolved["conflicts"], json!([]), "{resolved}");
    assert_eq!(std::fs::read_to_string(workspace.path().join("a.txt")).expect("read"), "sandbox\n");
    assert_eq!(sandbox_files(&server, &session_id), vec!["a.txt"]);
}

fn session_root(server: &Server, session_id: &str) -> std::path::PathBuf {
    let status = server.request("sandlink/status", json!({ "sessionId": session_id })).expect("status");
    Path::new(status["remoteRoot"].as_str().expect("remoteRoot")).to_path_buf()
}

fn write_pattern(path: &Path, size: usize) {
    use std::io::Write;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let block: Vec<u8> = (0..1 << 20).map(|index: usize| (index * 31 % 251) as u8).collect();
    for _ in 0..size / block.len() {
        file.write_all(&block).expect("write");
    }
    file.flush().expect("flush");
}

fn hash(path: &Path) -> String {
    let output = std::process::Command::new("sha256sum").arg(path).output().expect("sha256sum");
    String::from_utf8_lossy(&output.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

/// A file rewritten while a sync reads it (an editor or a build still writing) goes up again once it settles, and
/// never reads as a conflict: the copy the sandbox got from that read is the workspace's own, not a change made there.
#[test]
fn a_file_rewritten_while_it_syncs_should_never_read_as_a_conflict() {
    let (server, workspace, session_id) = connected_with(&fixture(), &[("a.txt", "a")], json!({}));
    let path = workspace.path().join("busy.txt");
    let root = session_root(&server, &session_id);
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut round = 0u32;
    while Instant::now() < deadline {
        // Rewritten in place in small pieces, as an editor with `backupcopy=yes` or a build writes, with a save
        // sent half-way so a sync reads it mid-write.
        let mut file = std::fs::File::create(&path).expect("create");
        for piece in 0..32 {
            std::io::Write::write_all(&mut file, format!("round {round} piece {piece}\n").repeat(200).as_bytes()).expect("write");
            if piece == 8 {
                server.notify("textDocument/didSave", json!({ "textDocument": { "uri": file_uri(&path) } }));
            }
            std::thread::sleep(Duration::from_micros(300));
        }
        drop(file);
        round += 1;
    }
    server.notify("textDocument/didSave", json!({ "textDocument": { "uri": file_uri(&path) } }));
    let expected = std::fs::read(&path).expect("read");
    let status = || server.request("sandlink/status", json!({ "sessionId": session_id })).expect("status");
    eventually(Duration::from_secs(20), "the settled file reaching the sandbox, or a conflict", || {
        std::fs::read(root.join("busy.txt")).is_ok_and(|copied| copied == expected) || status()["sync"]["conflicts"] != json!([])
    });
    assert_eq!(status()["sync"]["conflicts"], json!([]), "no conflict after {round} rewrites");
    assert_eq!(std::fs::read(root.join("busy.txt")).expect("read the sandbox's copy"), expected);
}
