//! Jobs through the real binary: a sync or a connect of a large tree cancelled with `window/workDoneProgress/cancel`
//! or `sandlink/cancelJob` stops between batches, answers `cancelled` and leaves things consistent; `status` lists a
//! running sync job.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use support::{count_files, file_uri, RpcError, Server, StartOptions};

/// Enough files for many batches at `BATCH_FILES`, so a cancel lands while the upload is under way.
const FILES: usize = 3_000;
const FILE_BYTES: usize = 64 << 10;
const BATCH_FILES: &str = "30";
const LONG: Duration = Duration::from_secs(120);

fn large_workspace() -> tempfile::TempDir {
    let workspace = tempfile::tempdir().expect("a workspace");
    // A NUL up front makes the files binary, so the secret scan skips them and the test measures transfer alone.
    let content = vec![0u8; FILE_BYTES];
    for index in 0..FILES {
        let path = workspace.path().join(format!("dir{}/f{index}.bin", index % 30));
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        std::fs::write(path, &content).expect("write");
    }
    workspace
}

fn start_server() -> Server {
    Server::start_with(StartOptions {
        env: vec![("SANDLINK_SYNC_BATCH_FILES".into(), BATCH_FILES.into())],
        ..StartOptions::default()
    })
}

/// Connects without the initial upload, so the test's own sync carries the tree.
fn connect_without_upload(server: &Server, workspace: &Path) -> (String, std::path::PathBuf) {
    let session = server
        .request("sandlink/connect", json!({ "driver": "local", "workspaceFolder": file_uri(workspace), "sync": false }))
        .expect("connect");
    let session_id = session["sessionId"].as_str().expect("sessionId").to_string();
    let root = Path::new(session["remoteRoot"].as_str().expect("remoteRoot")).to_path_buf();
    (session_id, root)
}

/// Waits for the `begin` of `token`'s progress and asserts it says the work can be cancelled.
fn wait_cancellable_begin(server: &Server, token: &str) {
    let begin = server.wait_notification("$/progress", LONG, |params| params["token"] == token && params["value"]["kind"] == "begin");
    assert_eq!(begin["value"]["cancellable"], true, "{begin}");
}

/// Waits until `token`'s progress reports a percentage: at least one batch is through, more are to come.
fn wait_first_batch(server: &Server, token: &str) -> Value {
    server.wait_notification("$/progress", LONG, |params| {
        params["token"] == token && params["value"]["kind"] == "report" && params["value"]["percentage"].is_u64()
    })
}

fn assert_cancelled(answer: Result<Value, RpcError>) -> RpcError {
    let error = answer.expect_err("a cancelled job answers an error");
    assert_eq!(error.kind.as_deref(), Some("cancelled"), "{error:?}");
    error
}

/// After a cancelled sync: part of the tree is in the sandbox, the server still serves, and the next sync moves
/// exactly what was left.
fn assert_next_sync_carries_the_rest(server: &Server, session_id: &str, root: &Path) {
    let placed = count_files(root);
    assert!(placed > 0 && placed < FILES, "the sync stopped part-way: {placed} of {FILES} files in the sandbox");
    let status = server.request("sandlink/status", json!({ "sessionId": session_id })).expect("the server keeps serving");
    assert_eq!(status["state"], "active", "{status}");
    assert_eq!(status["jobs"], json!([]), "a cancelled job leaves the list: {status}");
    let result = server
        .request_timeout("sandlink/sync", json!({ "sessionId": session_id, "direction": "up" }), LONG)
        .expect("the next sync completes");
    assert_eq!(result["uploaded"], json!(FILES - placed), "only what was left is transferred: {result}");
    assert_eq!(count_files(root), FILES);
}

#[test]
fn a_sync_cancelled_through_its_progress_token_should_stop_between_batches_and_the_next_one_carry_the_rest() {
    let workspace = large_workspace();
    let server = start_server();
    let (session_id, root) = connect_without_upload(&server, workspace.path());
    let token = "sync-progress-1";
    let sync = server.send_request("sandlink/sync", json!({ "sessionId": session_id, "direction": "up", "workDoneToken": token }));
    wait_cancellable_begin(&server, token);
    wait_first_batch(&server, token);
    server.notify("window/workDoneProgress/cancel", json!({ "token": token }));
    let error = assert_cancelled(server.wait_answer(sync, LONG));
    assert!(error.message.contains("next sync"), "the message says what was kept: {error:?}");
    assert_next_sync_carries_the_rest(&server, &session_id, &root);
}

#[test]
fn a_sync_should_be_listed_by_status_and_stopped_by_cancel_job() {
    let workspace = large_workspace();
    let server = start_server();
    let (session_id, root) = connect_without_upload(&server, workspace.path());
    let token = "sync-progress-2";
    let sync = server.send_request("sandlink/sync", json!({ "sessionId": session_id, "direction": "up", "workDoneToken": token }));
    wait_first_batch(&server, token);
    let status = server.request("sandlink/status", json!({ "sessionId": session_id })).expect("status");
    let jobs = status["jobs"].as_array().expect("status lists jobs").clone();
    assert_eq!(jobs.len(), 1, "{status}");
    let job = &jobs[0];
    assert_eq!(job["kind"], "sync", "{job}");
    let job_id = job["jobId"].as_str().expect("jobId").to_string();
    assert!(job_id.starts_with("job-") && job_id.len() == "job-".len() + 12, "{job_id}");
    assert!(job["title"].as_str().is_some_and(|title| !title.is_empty()), "{job}");
    assert!(job["startedAt"].as_str().is_some_and(|at| at.contains('T')), "{job}");
    assert!(job["percentage"].as_u64().is_some_and(|percentage| percentage < 100), "{job}");
    let listed = server.request("sandlink/sessions", json!({})).expect("sessions");
    assert_eq!(listed["sessions"][0]["jobs"][0]["jobId"], json!(job_id), "sessions lists it too: {listed}");

    server.request("sandlink/cancelJob", json!({ "jobId": job_id })).expect("cancelJob");
    assert_cancelled(server.wait_answer(sync, LONG));
    let gone = server.request_error("sandlink/cancelJob", json!({ "jobId": job_id }));
    assert_eq!(gone.kind.as_deref(), Some("unknownJob"), "{gone:?}");
    assert_next_sync_carries_the_rest(&server, &session_id, &root);
}

#[test]
fn a_connect_cancelled_mid_upload_should_leave_no_session_record_or_sandbox() {
    let workspace = large_workspace();
    let server = start_server();
    let token = "connect-progress";
    let connect = server.send_request(
        "sandlink/connect",
        json!({ "driver": "local", "workspaceFolder": file_uri(workspace.path()), "workDoneToken": token }),
    );
    wait_cancellable_begin(&server, token);
    wait_first_batch(&server, token);
    server.notify("window/workDoneProgress/cancel", json!({ "token": token }));
    let error = assert_cancelled(server.wait_answer(connect, LONG));
    assert!(error.message.contains("removed"), "the message says the half-made sandbox is gone: {error:?}");
    let sessions = server.request("sandlink/sessions", json!({})).expect("sessions");
    assert_eq!(sessions["sessions"], json!([]), "no session is left: {sessions}");
    let left: Vec<_> = std::fs::read_dir(server.state_dir().join("sessions"))
        .map(|entries| entries.flatten().map(|entry| entry.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "no record and no sandbox directory are left: {left:?}");
    // The server keeps serving: the same workspace connects afterwards.
    let session = server.connect("local", Value::Null, workspace.path());
    assert_eq!(session["state"], "active", "{session}");
}

#[test]
fn a_connect_dropped_by_cancel_request_should_answer_at_once_and_clean_up_in_the_background() {
    let workspace = large_workspace();
    let server = start_server();
    let token = "connect-dropped";
    let connect = server.send_request(
        "sandlink/connect",
        json!({ "driver": "local", "workspaceFolder": file_uri(workspace.path()), "workDoneToken": token }),
    );
    wait_first_batch(&server, token);
    server.notify("$/cancelRequest", json!({ "id": connect }));
    let error = server.wait_answer(connect, Duration::from_secs(5)).expect_err("a dropped request fails");
    assert_eq!(error.code, -32800, "{error:?}");
    let sessions_dir = server.state_dir().join("sessions");
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let sessions = server.request("sandlink/sessions", json!({})).expect("sessions");
        let left = std::fs::read_dir(&sessions_dir).map(|entries| entries.count()).unwrap_or(0);
        if sessions["sessions"] == json!([]) && left == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the dropped connect left {sessions} and {left} session folders");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn cancel_job_should_refuse_an_unknown_job() {
    let server = Server::start();
    let error = server.request_error("sandlink/cancelJob", json!({ "jobId": "job-000000000000" }));
    assert_eq!(error.kind.as_deref(), Some("unknownJob"), "{error:?}");
}
