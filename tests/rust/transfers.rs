//! Transfers for big repositories against the cloud test servers: big files go in parts that resume after a dropped
//! connection or a failed sync (the server counts the bytes it received), and `down` fetches only what changed.
//!
//! The part threshold and size are test knobs (`SANDLINK_CHUNKED_UPLOAD_THRESHOLD_BYTES`, `SANDLINK_UPLOAD_PART_BYTES`)
//! so a 16 MiB file in 1 MiB parts shows what a 200 MB file in 8 MiB parts does, in a second; one E2B test runs the
//! 200 MB case itself with the real sizes.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{json, Value};

use support::fake::FakeProcess;
use support::{Server, StartOptions};

const E2B_API_KEY: &str = "e2b_sandlink_test_key_5f0c9a7e31";
const DAYTONA_API_KEY: &str = "dtn_sandlink_test_key_8c1e55b0a4f2";
const VERCEL_TOKEN: &str = "vercel_sandlink_test_token_7b1e4c90";
const MIB: usize = 1024 * 1024;

/// Each test owns a fake (faults are global to one); this keeps them from starving each other of the two cores.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Bytes gzip cannot shrink (xorshift), so the counts compare with the file's size whatever the driver compresses.
fn incompressible(size: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut bytes = Vec::with_capacity(size + 8);
    while bytes.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(size);
    bytes
}

/// A cloud test server and the sandlink server talking to it, with big-file parts of `part_bytes` above `threshold`.
struct Cloud {
    fake: FakeProcess,
    server: Server,
    driver: &'static str,
    settings: Value,
    /// The session's remote root, relative to the sandbox's `/`.
    remote_root: &'static str,
}

impl Cloud {
    fn server(key_variable: &str, key: &str, threshold: usize, part_bytes: usize) -> Server {
        Server::start_with(StartOptions {
            env: Cloud::server_env(key_variable, key, threshold, part_bytes),
            ..StartOptions::default()
        })
    }

    fn server_env(key_variable: &str, key: &str, threshold: usize, part_bytes: usize) -> Vec<(String, String)> {
        vec![
            (key_variable.into(), key.into()),
            ("RUST_LOG".into(), "sandlink=debug".into()),
            ("SANDLINK_CHUNKED_UPLOAD_THRESHOLD_BYTES".into(), threshold.to_string()),
            ("SANDLINK_UPLOAD_PART_BYTES".into(), part_bytes.to_string()),
        ]
    }

    fn e2b(threshold: usize, part_bytes: usize) -> Option<Cloud> {
        let fake = FakeProcess::start("E2B", "SANDLINK_E2B_FAKE_SERVER", "e2b_server.py", &["--api-key", E2B_API_KEY])?;
        let settings = json!({
            "apiUrl": format!("http://127.0.0.1:{}", fake.port),
            "domain": format!("localhost:{}", fake.port),
            "timeoutSeconds": 300,
            "streamKeepaliveSeconds": 1,
        });
        let server = Cloud::server("E2B_API_KEY", E2B_API_KEY, threshold, part_bytes);
        Some(Cloud { fake, server, driver: "e2b", settings, remote_root: "home/user" })
    }

    fn vercel(threshold: usize, part_bytes: usize) -> Option<Cloud> {
        let arguments = ["--token", VERCEL_TOKEN, "--team-id", "team_sandlinktests"];
        let fake = FakeProcess::start("Vercel", "SANDLINK_VERCEL_FAKE_SERVER", "vercel_server.py", &arguments)?;
        let settings = json!({ "baseUrl": format!("http://127.0.0.1:{}/api", fake.port), "timeoutSeconds": 300 });
        let mut env = Cloud::server_env("VERCEL_TOKEN", VERCEL_TOKEN, threshold, part_bytes);
        env.push(("VERCEL_TEAM_ID".into(), "team_sandlinktests".into()));
        env.push(("VERCEL_PROJECT_ID".into(), "prj_sandlinktests".into()));
        env.push(("VERCEL_OIDC_TOKEN".into(), String::new()));
        let server = Server::start_with(StartOptions { env, ..StartOptions::default() });
        Some(Cloud { fake, server, driver: "vercel", settings, remote_root: "vercel/sandbox" })
    }

    fn daytona(threshold: usize, part_bytes: usize) -> Option<Cloud> {
        let fake =
            FakeProcess::start("Daytona", "SANDLINK_DAYTONA_FAKE_SERVER", "daytona_server.py", &["--api-key", DAYTONA_API_KEY])?;
        let settings = json!({ "apiUrl": format!("http://127.0.0.1:{}/api", fake.port), "streamKeepaliveSeconds": 1 });
        let server = Cloud::server("DAYTONA_API_KEY", DAYTONA_API_KEY, threshold, part_bytes);
        Some(Cloud { fake, server, driver: "daytona", settings, remote_root: "home/daytona/workspace" })
    }

    /// Connects a session on `workspace`; answers its id and where the sandbox's remote root is on this machine.
    fn connect(&self, workspace: &Path) -> (String, PathBuf) {
        let session = self.server.connect(self.driver, self.settings.clone(), workspace);
        assert_eq!(session["state"], "active", "{session}");
        let session_id = session["sessionId"].as_str().expect("sessionId").to_string();
        let root = PathBuf::from(self.sandbox()["hostRoot"].as_str().expect("hostRoot")).join(self.remote_root);
        (session_id, root)
    }

    /// The fake's current record of the one sandbox (with `hostRoot`, `bytesReceived` and `bytesSent`); on Vercel
    /// that of its one session, the VM.
    fn sandbox(&self) -> Value {
        let sandboxes = self.fake.admin("GET", "/_admin/sandboxes", None);
        let list = if self.driver == "vercel" { "sessions" } else { "sandboxes" };
        sandboxes[list].as_array().and_then(|all| all.first()).cloned().expect("one sandbox")
    }

    fn received(&self) -> u64 {
        self.sandbox()["bytesReceived"].as_u64().expect("bytesReceived")
    }

    fn sent(&self) -> u64 {
        self.sandbox()["bytesSent"].as_u64().expect("bytesSent")
    }

    fn sync(&self, session_id: &str, direction: &str) -> Result<Value, support::RpcError> {
        self.server.request("sandlink/sync", json!({ "sessionId": session_id, "direction": direction }))
    }
}

/// Puts `content` at `relative` in the workspace in one rename: the watcher must never see (and start syncing) a big
/// file half-written, which would upload a prefix and later, rightly, call the difference a conflict.
fn place(workspace: &Path, relative: &str, content: &[u8]) {
    let parent = workspace.parent().expect("the workspace has a parent");
    let mut staged = tempfile::NamedTempFile::new_in(parent).expect("a temporary file beside the workspace");
    std::io::Write::write_all(&mut staged, content).expect("write the file");
    staged.persist(workspace.join(relative)).expect("rename it into the workspace");
}

/// Files left in the parts folders of the sandbox's staging directory.
fn parts_left(root: &Path) -> Vec<PathBuf> {
    let mut left = Vec::new();
    let Ok(folders) = std::fs::read_dir(root.join(".sandlink-staging/parts")) else { return left };
    for folder in folders.flatten() {
        left.extend(std::fs::read_dir(folder.path()).into_iter().flatten().flatten().map(|entry| entry.path()));
    }
    left
}

/// A big upload dropped at half resumes within the same sync: only the part that broke off is sent again.
fn dropped_halfway_resumes(cloud: Cloud) {
    let workspace = support::workspace_with(&[("small.txt", "small\n")]);
    let (session_id, root) = cloud.connect(workspace.path());
    let size = 16 * MIB;
    let content = incompressible(size, 7);
    let before = cloud.received();
    cloud.fake.set_faults(json!({ "dropUploadAfterBytes": size / 2, "dropUploadCount": 1 }));
    place(workspace.path(), "big.bin", &content);
    cloud.sync(&session_id, "up").expect("the sync resumes and ends");
    assert_eq!(cloud.fake.admin("GET", "/_admin/faults", None)["dropUploadAfterBytes"], Value::Null, "the drop happened");
    let received = cloud.received() - before;
    eprintln!("{}: a {size}-byte upload dropped at half: {received} bytes received ({:.2}x)", cloud.driver, received as f64 / size as f64);
    assert!(received < size as u64 * 3 / 2, "{received} bytes received for a {size}-byte file: the upload restarted");
    assert!(received < size as u64 + 3 * MIB as u64, "at most the part that broke off is sent again: {received}");
    assert!(std::fs::read(root.join("big.bin")).expect("the big file in the sandbox") == content, "byte-exact");
    assert!(parts_left(&root).is_empty(), "parts are removed once joined: {:?}", parts_left(&root));
}

/// A big upload whose network goes down for good at half fails, leaves the old file whole in place, and the next
/// sync sends only what had not arrived.
fn failed_halfway_resumes_next_sync(cloud: Cloud) {
    let size = 16 * MIB;
    let old = incompressible(size, 1);
    let workspace = support::workspace_with(&[("small.txt", "small\n")]);
    place(workspace.path(), "big.bin", &old);
    let (session_id, root) = cloud.connect(workspace.path());
    assert!(std::fs::read(root.join("big.bin")).expect("the older file") == old, "the connect uploaded it in parts");
    let content = incompressible(size, 2);
    let before = cloud.received();
    cloud.fake.set_faults(json!({ "dropUploadAfterBytes": size / 2, "dropUploadCount": 0 }));
    place(workspace.path(), "big.bin", &content);
    let failed = cloud.sync(&session_id, "up");
    assert!(failed.is_err(), "the sync fails while the network is down: {failed:?}");
    assert!(std::fs::read(root.join("big.bin")).expect("the older file") == old, "nothing half-written in place");
    assert!(!parts_left(&root).is_empty(), "the parts that arrived wait for the next sync");
    cloud.fake.admin("DELETE", "/_admin/faults", None);
    cloud.sync(&session_id, "up").expect("the next sync");
    let received = cloud.received() - before;
    eprintln!(
        "{}: a {size}-byte upload failed at half and resumed: {received} bytes received ({:.2}x)",
        cloud.driver,
        received as f64 / size as f64
    );
    assert!(received < size as u64 * 3 / 2, "{received} bytes received for a {size}-byte file: the upload restarted");
    assert!(std::fs::read(root.join("big.bin")).expect("the big file") == content, "byte-exact after the resume");
    assert!(parts_left(&root).is_empty(), "parts are removed once joined: {:?}", parts_left(&root));
}

/// After one file changed in the sandbox, `down` downloads that file and nothing else.
fn down_fetches_only_what_changed(cloud: Cloud) {
    // Sizes differ, so no two files share a stamp (which would make the engine compare them by content each time).
    let contents: Vec<Vec<u8>> = (0..20).map(|index| incompressible(64 * 1024 + index as usize, index + 10)).collect();
    let workspace = support::workspace_with(&[]);
    for (index, content) in contents.iter().enumerate() {
        std::fs::write(workspace.path().join(format!("file{index}.bin")), content).expect("write");
    }
    // Old times everywhere, so no stamp is racy and only content that changed is worth a download.
    let touch = |directory: &Path, when: &str, names: &[&str]| {
        let status = std::process::Command::new("touch").arg("-d").arg(when).args(names).current_dir(directory).status();
        assert!(status.expect("touch runs").success());
    };
    let names: Vec<String> = (0..20).map(|index| format!("file{index}.bin")).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    touch(workspace.path(), "1 hour ago", &name_refs);
    let (session_id, root) = cloud.connect(workspace.path());
    let changed = incompressible(100 * 1024, 99);
    std::fs::write(root.join("file3.bin"), &changed).expect("change one file in the sandbox");
    touch(&root, "30 minutes ago", &["file3.bin"]);
    let before = cloud.sent();
    cloud.sync(&session_id, "down").expect("sync down");
    let sent = cloud.sent() - before;
    eprintln!("{}: sync down after one change of {} bytes in a tree of {} bytes: {sent} bytes sent", cloud.driver, changed.len(), 20 * 64 * 1024);
    assert!(std::fs::read(workspace.path().join("file3.bin")).expect("the changed file") == changed);
    assert!(sent >= changed.len() as u64 / 2, "the changed file was fetched: {sent} bytes");
    assert!(sent < (changed.len() + 64 * 1024) as u64, "nothing but the changed file was fetched: {sent} bytes");
}

#[test]
fn e2b_big_upload_dropped_halfway_should_resume_from_the_last_part_not_restart() {
    let _serial = serial();
    let Some(cloud) = Cloud::e2b(MIB, MIB) else { return };
    dropped_halfway_resumes(cloud);
}

#[test]
fn e2b_failed_big_upload_should_leave_nothing_in_place_and_the_next_sync_should_resume_it() {
    let _serial = serial();
    let Some(cloud) = Cloud::e2b(MIB, MIB) else { return };
    failed_halfway_resumes_next_sync(cloud);
}

#[test]
fn e2b_sync_down_should_fetch_only_the_files_that_changed() {
    let _serial = serial();
    let Some(cloud) = Cloud::e2b(32 * MIB, 8 * MIB) else { return };
    down_fetches_only_what_changed(cloud);
}

#[test]
fn daytona_big_upload_dropped_halfway_should_resume_from_the_last_part_not_restart() {
    let _serial = serial();
    let Some(cloud) = Cloud::daytona(MIB, MIB) else { return };
    dropped_halfway_resumes(cloud);
}

#[test]
fn daytona_failed_big_upload_should_leave_nothing_in_place_and_the_next_sync_should_resume_it() {
    let _serial = serial();
    let Some(cloud) = Cloud::daytona(MIB, MIB) else { return };
    failed_halfway_resumes_next_sync(cloud);
}

#[test]
fn daytona_sync_down_should_fetch_only_the_files_that_changed() {
    let _serial = serial();
    let Some(cloud) = Cloud::daytona(32 * MIB, 8 * MIB) else { return };
    down_fetches_only_what_changed(cloud);
}

#[test]
fn e2b_a_200_mb_upload_interrupted_at_half_should_resume_with_the_real_part_size() {
    let _serial = serial();
    // The real threshold and part size (32 MiB, 8 MiB): the brief's case, at full size.
    let Some(cloud) = Cloud::e2b(32 * MIB, 8 * MIB) else { return };
    let workspace = support::workspace_with(&[("small.txt", "small\n")]);
    let (session_id, root) = cloud.connect(workspace.path());
    let size = 200 * 1000 * 1000;
    // One random MiB repeated, each copy stamped with its index: as incompressible for gzip (whose window is 32 KiB)
    // and as distinct per part as 200 MB of random bytes, and made in a fraction of the time in a debug build.
    let block = incompressible(MIB, 200);
    let mut content = Vec::with_capacity(size);
    for index in 0..size.div_ceil(MIB) {
        let start = content.len();
        content.extend_from_slice(&block[..MIB.min(size - start)]);
        let stamp = (index as u64).to_le_bytes();
        let end = (start + stamp.len()).min(content.len());
        content[start..end].copy_from_slice(&stamp[..end - start]);
    }
    let before = cloud.received();
    cloud.fake.set_faults(json!({ "dropUploadAfterBytes": size / 2, "dropUploadCount": 1 }));
    place(workspace.path(), "big.bin", &content);
    let started = std::time::Instant::now();
    cloud.sync(&session_id, "up").expect("the sync resumes and ends");
    let received = cloud.received() - before;
    eprintln!("e2b: a 200 MB upload dropped at half: {received} bytes received ({:.3}x) in {:?}", received as f64 / size as f64, started.elapsed());
    assert!(received < size as u64 * 3 / 2, "{received} bytes received for a {size}-byte file: the upload restarted");
    assert!(received < size as u64 + 9 * MIB as u64, "at most the 8 MiB part that broke off is sent again: {received}");
    assert!(std::fs::read(root.join("big.bin")).expect("the big file in the sandbox") == content, "byte-exact");
    assert!(parts_left(&root).is_empty(), "parts are removed once joined: {:?}", parts_left(&root));
}

#[test]
fn e2b_big_upload_of_a_killed_server_should_resume_in_the_next_server() {
    let _serial = serial();
    let Some(mut cloud) = Cloud::e2b(MIB, MIB) else { return };
    let state = tempfile::tempdir().expect("a state directory both servers share");
    let start = || {
        Server::start_with(StartOptions {
            state_dir: Some(state.path().to_path_buf()),
            env: Cloud::server_env("E2B_API_KEY", E2B_API_KEY, MIB, MIB),
            ..StartOptions::default()
        })
    };
    cloud.server = start();
    let workspace = support::workspace_with(&[("small.txt", "small\n")]);
    let (session_id, root) = cloud.connect(workspace.path());
    let size = 16 * MIB;
    let content = incompressible(size, 3);
    let before = cloud.received();
    // Half-way the network goes down, and while the driver is still trying, the server is killed.
    cloud.fake.set_faults(json!({ "dropUploadAfterBytes": size / 2, "dropUploadCount": 0 }));
    place(workspace.path(), "big.bin", &content);
    cloud.server.send_request("sandlink/sync", json!({ "sessionId": session_id, "direction": "up" }));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while cloud.fake.admin("GET", "/_admin/faults", None)["dropUploadAfterBytes"] != json!(0) {
        assert!(std::time::Instant::now() < deadline, "the upload reached half-way");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    unsafe { libc::kill(cloud.server.pid() as i32, libc::SIGKILL) };
    assert!(std::fs::read(root.join("big.bin")).is_err(), "nothing half-written in place");
    cloud.fake.admin("DELETE", "/_admin/faults", None);
    cloud.server = start();
    let reattached = cloud
        .server
        .request("sandlink/connect", json!({ "reuse": session_id, "workspaceFolder": support::file_uri(workspace.path()) }))
        .expect("the new server re-attaches the session and syncs");
    assert_eq!(reattached["state"], "active", "{reattached}");
    cloud.sync(&session_id, "up").expect("a sync after the re-attach");
    let received = cloud.received() - before;
    eprintln!("e2b: a {size}-byte upload whose server was killed at half: {received} bytes received ({:.2}x)", received as f64 / size as f64);
    assert!(received < size as u64 * 3 / 2, "{received} bytes received for a {size}-byte file: the upload restarted");
    assert!(std::fs::read(root.join("big.bin")).expect("the big file") == content, "byte-exact after the resume");
    assert!(parts_left(&root).is_empty(), "parts are removed once joined: {:?}", parts_left(&root));
}

#[test]
fn vercel_big_upload_dropped_halfway_should_resume_from_the_last_part_not_restart() {
    let _serial = serial();
    let Some(cloud) = Cloud::vercel(MIB, MIB) else { return };
    dropped_halfway_resumes(cloud);
}

#[test]
fn vercel_failed_big_upload_should_leave_nothing_in_place_and_the_next_sync_should_resume_it() {
    let _serial = serial();
    let Some(cloud) = Cloud::vercel(MIB, MIB) else { return };
    failed_halfway_resumes_next_sync(cloud);
}

#[test]
fn vercel_sync_down_should_fetch_only_the_files_that_changed() {
    let _serial = serial();
    let Some(cloud) = Cloud::vercel(32 * MIB, 8 * MIB) else { return };
    down_fetches_only_what_changed(cloud);
}
