//! End-to-end tests of the `daytona` driver against the in-repo Daytona fake (tests/fakes/daytona_server.py), faults
//! included.
//!
//! The fake speaks Daytona's wire format (the official SDK's conformance suite proves it) and runs commands for
//! real. Parity tests share one fake per test binary; fault tests start their own, since most faults are global.

mod support;
#[macro_use]
mod parity;

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use parity::DriverFixture;
use support::fake::FakeProcess;
use support::{Server, StartOptions};

const API_KEY: &str = "dtn_sandlink_test_key_8c1e55b0a4f2";

/// One running fake Daytona server.
struct Fake {
    process: FakeProcess,
}

impl Fake {
    /// Starts a fake, or answers `None` (a skip) when the test venv is missing outside CI.
    fn start() -> Option<Fake> {
        Fake::start_with(&[])
    }

    /// Starts a fake with extra command-line arguments (`--jwt TOKEN`).
    fn start_with(extra: &[&str]) -> Option<Fake> {
        let mut arguments = vec!["--api-key", API_KEY];
        arguments.extend_from_slice(extra);
        let process = FakeProcess::start("Daytona", "SANDLINK_DAYTONA_FAKE_SERVER", "daytona_server.py", &arguments)?;
        Some(Fake { process })
    }

    fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}/api", self.process.port)
    }

    /// Driver settings pointing at this fake, with short stream keepalives so a hung toolbox shows soon.
    fn settings(&self) -> Value {
        json!({
            "apiUrl": self.api_url(),
            "streamKeepaliveSeconds": 1,
            "labels": { "purpose": "sandlink-tests" },
        })
    }

    fn server_env() -> Vec<(String, String)> {
        vec![("DAYTONA_API_KEY".into(), API_KEY.into()), ("RUST_LOG".into(), "sandlink=debug".into())]
    }

    /// The fake's view of the sandbox a session created (found by the label the driver sets), unless deleted.
    fn sandbox_of(&self, session_id: &str) -> Option<Value> {
        let all = self.admin("GET", "/_admin/sandboxes", None);
        all["sandboxes"]
            .as_array()?
            .iter()
            .find(|sandbox| sandbox["labels"]["sandlink-session"] == session_id && sandbox["state"] != "destroyed")
            .cloned()
    }

    fn advance_clock(&self, seconds: u64) {
        self.admin("POST", "/_admin/clock", Some(json!({ "advanceSeconds": seconds })));
    }

    fn fixture(self: &'static Fake) -> DriverFixture {
        DriverFixture {
            driver: "daytona",
            settings: self.settings(),
            server_env: Fake::server_env(),
            http_server_command: |port| format!("exec python3 -m http.server {port} --bind 127.0.0.1"),
            sandbox_exists: |status| {
                let session_id = status["sessionId"].as_str().unwrap_or_default();
                shared_fake().is_some_and(|fake| fake.sandbox_of(session_id).is_some())
            },
            guard: None,
        }
    }
}

impl std::ops::Deref for Fake {
    type Target = FakeProcess;

    /// The admin API every fake shares (faults, request log) is the process's.
    fn deref(&self) -> &FakeProcess {
        &self.process
    }
}

/// The fake shared by the parity tests (which inject no faults); it ends with the test binary.
fn shared_fake() -> Option<&'static Fake> {
    static FAKE: OnceLock<Option<Fake>> = OnceLock::new();
    FAKE.get_or_init(Fake::start).as_ref()
}

fn daytona_fixture() -> Option<DriverFixture> {
    shared_fake().map(Fake::fixture)
}

parity_tests!(daytona_fixture);
sync_parity_tests!(daytona_fixture);

/// Fault tests each own a fake; this keeps them from starving each other of the two cores.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn start_server() -> Server {
    Server::start_with(StartOptions { env: Fake::server_env(), ..StartOptions::default() })
}

fn connect(server: &Server, settings: Value, files: &[(&str, &str)]) -> (tempfile::TempDir, String) {
    let workspace = support::workspace_with(files);
    let session = server.connect("daytona", settings, workspace.path());
    assert_eq!(session["state"], "active", "{session}");
    (workspace, session["sessionId"].as_str().expect("sessionId").to_string())
}

fn with_settings(fake: &Fake, extra: Value) -> Value {
    let mut settings = fake.settings();
    for (key, value) in extra.as_object().expect("an object") {
        settings[key] = value.clone();
    }
    settings
}

#[test]
fn markers_split_across_one_byte_frames_should_still_separate_stdout_from_stderr() {
    let _serial = serial();
    let Some(fake) = Fake::start() else { return };
    let server = start_server();
    let (_workspace, session_id) = connect(&server, fake.settings(), &[]);
    // One byte per frame: every `01 01 01` and `02 02 02` marker arrives in three frames.
    fake.set_faults(json!({ "logsFrameBytes": 1 }));
    let outcome = server.run_to_exit(json!({
        "sessionId": session_id,
        "command": "echo out-1; sleep 0.1; echo err-1 >&2; sleep 0.1; printf 'out-\\342\\202\\254-2\\n'; sleep 0.1; printf 'err-\\377\\n' >&2",
    }));
    assert_eq!(outcome.stdout, "out-1\nout-€-2\n", "{}", outcome.exit);
    assert_eq!(outcome.stderr, "err-1\nerr-\u{FFFD}\n", "{}", outcome.exit);
    assert_eq!(outcome.exit_code(), Some(0));
}

/// How many logs WebSockets the fake saw opened from `since` on.
fn logs_streams_since(fake: &Fake, since: u64) -> usize {
    fake.requests_since(since)
        .iter()
        .filter(|request| request["path"].as_str().is_some_and(|path| path.ends_with("/logs")) && request["query"].as_str().is_some_and(|query| query.contains("follow=true")))
        .count()
}

#[test]
fn dropped_logs_websocket_should_resume_with_output_complete_in_order_and_without_duplicates() {
    let _serial = serial();
    let Some(fake) = Fake::start() else { return };
    let server = start_server();
    let (_workspace, session_id) = connect(&server, fake.settings(), &[]);
    // Three cuts, each after 300 bytes of log went out, while the command is still printing: every new WebSocket
    // replays the log from its start, so the driver must skip what it delivered and lose nothing.
    fake.set_faults(json!({ "dropLogsAfterBytes": 300, "dropLogsCount": 3 }));
    let since = fake.next_sequence();
    let outcome = server.run_to_exit(json!({
        "sessionId": session_id,
        "command": "for i in $(seq 1 200); do echo line-$i; if [ $((i % 10)) = 0 ]; then echo err-$i >&2; sleep 0.05; fi; done",
    }));
    let expected: String = (1..=200).map(|index| format!("line-{index}\n")).collect();
    let expected_errors: String = (1..=20).map(|index| format!("err-{}\n", index * 10)).collect();
    assert_eq!(outcome.stdout, expected, "every line arrives once, in order: {}", outcome.exit);
    assert_eq!(outcome.stderr, expected_errors, "stderr too");
    assert_eq!(outcome.exit_code(), Some(0), "{}", outcome.exit);
    assert!(logs_streams_since(&fake, since) >= 2, "the logs were opened again after the cuts");
}

#[test]
fn a_logs_websocket_cut_after_the_command_ended_should_take_the_rest_from_the_plain_logs() {
    let _serial = serial();
    let Some(fake) = Fake::start() else { return };
    let server = start_server();
    let (_workspace, session_id) = connect(&server, fake.settings(), &[]);
    // Cut right after the upgrade, every time for a while: the command ends meanwhile, and its output must come
    // whole from the plain logs.
    fake.set_faults(json!({ "dropLogsAfterBytes": 0, "dropLogsCount": 2 }));
    let since = fake.next_sequence();
    let outcome = server.run_to_exit(json!({ "sessionId": session_id, "command": "echo quick; echo quicker >&2; exit 4" }));
    assert_eq!(outcome.stdout, "quick\n", "{}", outcome.exit);
    assert_eq!(outcome.stderr, "quicker\n", "{}", outcome.exit);
    assert_eq!(outcome.exit_code(), Some(4));
    let plain = fake
        .requests_since(since)
        .iter()
        .filter(|request| request["path"].as_str().is_some_and(|path| path.ends_with("/logs")) && !request["query"].as_str().unwrap_or_default().contains("follow"))
        .count();
    let reopened = logs_streams_since(&fake, since);
    assert!(plain >= 1 || reopened >= 2, "the rest came from the plain logs or a new stream");
}

#[test]
fn logs_that_break_before_anything_arrives_should_give_up_with_a_clear_error() {
    let _serial = serial();
    let Some(fake) = Fake::start() else { return };
    let server = start_server();
    let (_workspace, session_id) = connect(&server, fake.settings(), &[]);
    let drops = 30;
    fake.set_faults(json!({ "dropLogsAfterBytes": 0, "dropLogsCount": drops }));
    let since = fake.next_sequence();
    let outcome = server.run_to_exit(json!({ "sessionId": session_id, "command": "sleep 4; echo too-late" }));
    fake.admin("DELETE", "/_admin/faults", None);
    let message = outcome.exit["message"].as_str().unwrap_or_default();
    assert!(message.contains("kept breaking"), "the exit says the stream could not be kept up: {}", outcome.exit);
    let opened = logs_streams_since(&fake, since);
    assert!((2..drops as usize).contains(&opened), "the driver gave up after a few fruitless openings, not {opened}");
}

#[test]
fn rate_limits_should_be_retried_after_the_servers_retry_after() {
    let _serial = serial();
    let Some(fake) = Fake::start() else { return };
    let server = start_server();
    fake.set_faults(json!({ "rateLimitNext": 2, "retryAfter": 1, "rateLimitPlane": "api", "rateLimitPath": "^/api/sandbox$" }));
    let started = Instant::now();
    let since = fake.next_sequence();
    let (_workspace, session_id) = connect(&server, fake.settings(), &[]);
    assert!(started.elapsed() >= Duration::from_millis(1900), "Retry-After was honoured: {:?}", started.elapsed());
    let creates: Vec<Value> = fake
        .requests_since(since)
        .iter()
        .filter(|request| request["path"] == "/api/sandbox" && request["method"] == "POST")
        .cloned()
        .collect();
    let statuses: Vec<Value> = creates.iter().map(|request| request["status"].clone()).collect();
    assert_eq!(statuses, vec![json!(429), json!(429), json!(200)]);
    let times: Vec<f64> = creates.iter().filter_map(|request| request["time"].as_f64()).collect();
    assert!(times.windows(2).all(|pair| pair[1] - pair[0] >= 0.95), "each retry waited for Retry-After: {times:?}");
    // The same on the toolbox, for a run, and 5xx answers are retried too.
    fake.set_faults(json!({ "rateLimitNext": 1, "retryAfter": 1, "rateLimitPlane": "toolbox", "rateLimitPath": null }));
    let outcome = server.run_to_exit(json!({ "sessionId": session_id, "command": "echo after-429" }));
    assert_eq!(outcome.stdout, "after-429\n");
    fake.set_faults(json!({ "errorNext": 2, "errorStatus": 503, "errorPlane": "toolbox" }));
    let outcome = server.run_to_exit(json!({ "sessionId": session_id, "command": "echo after-503" }));
    assert_eq!(outcome.stdout, "after-503\n");
}

#[test]
fn vanished_sandbox_should_end_the_run_and_expire_the_session() {
    let _serial = serial();
    let Some(fake) = Fake::start() else { return };
    let server = start_server();
    let (_workspace, session_id) = connect(&server, fake.settings(), &[]);
    let sandbox = fake.sandbox_of(&session_id).expect("the session's sandbox, found by its label");
    let run_id = server.start_run(json!({ "sessionId": session_id, "command": "echo started; sleep 60" }));
    server.wait_notification("sandlink/output", Duration::from_secs(20), |params| params["runId"] == run_id);
    fake.set_faults(json!({ "vanish": sandbox["id"] }));
    let outcome = server.collect_run(&run_id, Duration::from_secs(30));
    let message = outcome.exit["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains("no longer exists"), "the exit says what happened: {}", outcome.exit);
    let state = server.wait_notification("sandlink/sessionState", Duration::from_secs(10), |params| {
        params["sessionId"] == session_id && params["state"] == "expired"
    });
    assert!(state["message"].as_str().is_some_and(|text| text.contains("gone") || text.contains("no longer")), "{state}");
    let status = server.request("sandlink/status", json!({ "sessionId": session_id })).expect("status still answers");
    assert_eq!(status["state"], "expired");
}

#[test]
fn hung_toolbox_should_end_the_run_with_a_clear_error_instead_of_hanging() {
    let _serial = serial();
    let Some(fake) = Fake::start() else { return };
    let server = start_server();
    let (_workspace, session_id) = connect(&server, fake.settings(), &[]);
    let run_id = server.start_run(json!({ "sessionId": session_id, "command": "echo started; sleep 60" }));
    server.wait_notification("sandlink/output", Duration::from_secs(20), |params| params["runId"] == run_id);
    fake.set_faults(json!({ "hangToolbox": true }));
    let started = Instant::now();
    let outcome = server.collect_run(&run_id, Duration::from_secs(40));
    assert!(started.elapsed() < Duration::from_secs(20), "the run ended in {:?}", started.elapsed());
    let message = outcome.exit["message"].as_str().unwrap_or_default();
    assert!(message.contains("stopped answering"), "the exit explains: {}", outcome.exit);
    fake.admin("DELETE", "/_admin/faults", None);
    let outcome = server.run_to_exit(json!({ "sessionId": session_id, "command": "echo recovered" }));
    assert_eq!(outcome.stdout, "recovered\n");
}

#[test]
fn a_sandbox_stuck_starting_should_fail_the_connect_clearly_and_be_deleted() {
    let _serial = serial();
    let Some(fake) = Fake::start() else { return };
    let server = start_server();
    fake.set_faults(json!({ "stuckStarting": true }));
    let workspace = support::workspace_with(&[]);
    let started = Instant::now();
    let error = server.request_error(
        "sandlink/connect",
        json!({
            "driver": "daytona",
            "settings": with_settings(&fake, json!({ "startTimeoutSeconds": 2 })),
            "workspaceFolder": support::file_uri(workspace.path()),
        }),
    );
    assert!(started.elapsed() < Duration::from_secs(15), "the connect gave up in {:?}", started.elapsed());
    assert_eq!(error.kind.as_deref(), Some("timeout"), "{error:?}");
    assert!(error.message.contains("starting") && error.message.contains("startTimeoutSeconds"), "{}", error.message);
    let all = fake.admin("GET", "/_admin/sandboxes", None);
    let left: Vec<&Value> = all["sandboxes"].as_array().map(|all| all.iter().filter(|sandbox| sandbox["state"] != "destroyed").collect()).unwrap_or_default();
    assert!(left.is_empty(), "the sandbox that never started was deleted: {left:?}");
}

#[test]
fn missing_api_key_should_be_credentials_missing_naming_the_variable() {
    let Some(fake) = shared_fake() else { return };
    let server = Server::start_with(StartOptions {
        env: vec![("DAYTONA_API_KEY".into(), String::new()), ("DAYTONA_JWT_TOKEN".into(), String::new())],
        ..StartOptions::default()
    });
    let workspace = support::workspace_with(&[]);
    let error = server.request_error(
        "sandlink/connect",
        json!({ "driver": "daytona", "settings": fake.settings(), "workspaceFolder": support::file_uri(workspace.path()) }),
    );
    assert_eq!(error.kind.as_deref(), Some("credentialsMissing"), "{error:?}");
    assert!(error.message.contains("DAYTONA_API_KEY") && error.message.contains("sandlink/setCredential"), "{}", error.message);
}

#[test]
fn wrong_api_key_should_be_a_remote_error_that_never_echoes_the_key() {
    let Some(fake) = shared_fake() else { return };
    let wrong_key = "dtn_wrong_key_4d3c2b1a0f9e8d7c";
    let server = Server::start_with(StartOptions {
        env: vec![("DAYTONA_API_KEY".into(), wrong_key.into()), ("RUST_LOG".into(), "trace".into())],
        ..StartOptions::default()
    });
    let workspace = support::workspace_with(&[]);
    let error = server.request_error(
        "sandlink/connect",
        json!({ "driver": "daytona", "settings": fake.settings(), "workspaceFolder": support::file_uri(workspace.path()) }),
    );
    assert_eq!(error.kind.as_deref(), Some("remoteError"), "{error:?}");
    assert!(error.message.contains("DAYTONA_API_KEY"), "the message says where the key comes from: {}", error.message);
    assert!(!error.message.contains(wrong_key), "the key is never echoed");
    assert!(!error.data.to_string().contains(wrong_key), "the key is not in the error data");
    assert!(!server.stderr().contains(wrong_key), "the key is not in the log");
}

#[test]
fn requests_should_carry_the_sdk_headers_so_the_toolbox_splits_output() {
    let Some(fake) = shared_fake() else { return };
    let server = start_server();
    let since = fake.next_sequence();
    let (_workspace, session_id) = connect(&server, fake.settings(), &[]);
    let outcome = server.run_to_exit(json!({ "sessionId": session_id, "command": "echo o; echo e >&2" }));
    assert_eq!((outcome.stdout.as_str(), outcome.stderr.as_str()), ("o\n", "e\n"));
    let requests = fake.requests_since(since);
    assert!(!requests.is_empty());
    for request in requests.iter().filter(|request| request["plane"] == "api" || request["plane"] == "toolbox") {
        assert_eq!(request["headers"]["X-Daytona-SDK-Version"], "0.226.1", "{request}");
        assert_eq!(request["headers"]["X-Daytona-Source"], "sandlink", "{request}");
    }
}

#[test]
fn a_run_should_use_one_session_and_delete_it_after() {
    let Some(fake) = shared_fake() else { return };
    let server = start_server();
    let (_workspace, session_id) = connect(&server, fake.settings(), &[]);
    let since = fake.next_sequence();
    let outcome = server.run_to_exit(json!({ "sessionId": session_id, "command": "echo one-run" }));
    assert_eq!(outcome.stdout, "one-run\n");
    support_eventually(Duration::from_secs(5), || {
        let routes: Vec<String> = fake
            .requests_since(since)
            .iter()
            .map(|request| format!("{} {}", request["method"].as_str().unwrap_or_default(), request["route"].as_str().unwrap_or_default()))
            .collect();
        routes.iter().any(|route| route.starts_with("DELETE") && route.ends_with("/process/session/{sessionId}"))
    });
    let routes: Vec<String> = fake
        .requests_since(since)
        .iter()
        .map(|request| format!("{} {}", request["method"].as_str().unwrap_or_default(), request["route"].as_str().unwrap_or_default()))
        .collect();
    let sessions_made = routes.iter().filter(|route| route.as_str() == "POST /toolbox/{sandboxId}/process/session").count();
    assert_eq!(sessions_made, 1, "one session per run: {routes:?}");
    assert!(routes.iter().any(|route| route.ends_with("/exec")), "{routes:?}");
}

#[test]
fn sync_up_should_send_one_bulk_upload_per_batch_and_keep_modes() {
    let Some(fake) = shared_fake() else { return };
    let server = start_server();
    let files: Vec<(String, String)> = (0..40).map(|index| (format!("src/file-{index}.txt"), format!("content {index}\n"))).collect();
    let borrowed: Vec<(&str, &str)> = files.iter().map(|(path, content)| (path.as_str(), content.as_str())).collect();
    let since = fake.next_sequence();
    let (workspace, session_id) = connect(&server, fake.settings(), &borrowed);
    let uploads = fake.requests_since(since).iter().filter(|request| request["route"].as_str().is_some_and(|route| route.ends_with("/files/bulk-upload"))).count();
    assert_eq!(uploads, 1, "forty files travel in one bulk upload");
    let script = workspace.path().join("run.sh");
    std::fs::write(&script, "#!/bin/sh\necho ran\n").expect("a script");
    std::os::unix::fs::PermissionsExt::set_mode(&mut std::fs::metadata(&script).expect("metadata").permissions(), 0o755);
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    server.request("sandlink/sync", json!({ "sessionId": session_id, "direction": "up" })).expect("sync up");
    let outcome = server.run_to_exit(json!({ "sessionId": session_id, "command": "./run.sh && cat src/file-7.txt" }));
    assert_eq!(outcome.stdout, "ran\ncontent 7\n", "{}", outcome.exit);
}

fn support_eventually(limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "the condition did not hold within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Simulated time: the lifecycle manager's policy (`lifecycle::decide`) driven by the fake's test clock, against a
/// sandbox the driver connected, so twenty minutes pass without waiting.
mod simulated_time {
    use super::*;
    use sandlink::drivers::{ConnectRequest, Driver as _, ExecSpec};
    use sandlink::engine::lifecycle::{decide, Activity, Decision, Watch};
    use time::OffsetDateTime;

    fn fake_now(fake: &Fake) -> OffsetDateTime {
        let answer = fake.admin("GET", "/_admin/clock", None);
        let text = answer["now"].as_str().expect("the fake's clock");
        OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).expect("RFC 3339")
    }

    fn request(fake: &Fake, settings: Value, state: &std::path::Path) -> ConnectRequest {
        let mut credentials = std::collections::BTreeMap::new();
        credentials.insert("apiKey".to_string(), sandlink::credentials::Secret::new(API_KEY));
        ConnectRequest {
            session_id: format!("daytona-sim{}", sandlink::ids::short_id()),
            workspace: None,
            settings: with_settings(fake, settings).as_object().cloned().expect("settings"),
            state_dir: state.to_path_buf(),
            credentials,
            runs_commands: true,
        }
    }

    fn sandbox_state(fake: &Fake, session_id: &str) -> (String, Value) {
        let sandbox = fake.sandbox_of(session_id).expect("the sandbox");
        (sandbox["state"].as_str().unwrap_or_default().to_string(), sandbox)
    }

    #[test]
    fn a_twenty_minute_run_should_never_be_auto_stopped() {
        let _serial = serial();
        let Some(fake) = Fake::start() else { return };
        let state = tempfile::tempdir().expect("state");
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        runtime.block_on(async {
            let request = request(&fake, json!({ "autoStopMinutes": 15 }), state.path());
            let session_id = request.session_id.clone();
            let sandbox = sandlink::drivers::daytona::Driver::new().connect(request).await.expect("connect");
            let mut process = sandbox
                .exec(ExecSpec {
                    command: "echo started; sleep 3000".into(),
                    args: None,
                    cwd: None,
                    env: Default::default(),
                    stdin: false,
                    timeout: None,
                    pty: None,
                })
                .await
                .expect("a run starts");
            let mut first = [0u8; 7];
            tokio::io::AsyncReadExt::read_exact(&mut process.stdout, &mut first).await.expect("output");
            assert_eq!(&first, b"started");
            let mut extensions = 0;
            // Forty steps of thirty seconds on both clocks: twenty minutes, longer than the 15-minute auto-stop.
            for step in 0..40 {
                fake.advance_clock(30);
                let now = fake_now(&fake);
                let lease = sandbox.lease().expect("a Daytona sandbox has a lease");
                let activity = Activity { runs_in_flight: true, last_activity: None };
                match decide(&lease, &activity, &Watch::default(), now) {
                    Decision::Extend => {
                        sandbox.extend(lease.extend_seconds).await.expect("extend");
                        extensions += 1;
                    }
                    Decision::Nothing => {}
                    other => panic!("a session with a run in flight got {other:?} at step {step}"),
                }
                let (state, detail) = sandbox_state(&fake, &session_id);
                assert_eq!(state, "started", "not auto-stopped at {} simulated seconds: {detail}", (step + 1) * 30);
            }
            assert!(extensions >= 1, "the run's sandbox was kept active");
            let (_, detail) = sandbox_state(&fake, &session_id);
            let running = detail["sessions"].as_array().into_iter().flatten().flat_map(|session| session["commands"].as_array().cloned().unwrap_or_default()).any(|command| command["exitCode"].is_null());
            assert!(running, "the run is still going after twenty simulated minutes: {detail}");
            process.control.signal(sandlink::drivers::Signal::Terminate).await.expect("cancel");
            let status = (&mut process.exit).await.expect("the run ends");
            assert!(status.code.is_none(), "{status:?}");
            sandbox.disconnect(false).await.expect("disconnect");
        });
    }

    #[test]
    fn an_idle_session_should_be_warned_and_then_auto_stopped_and_expired() {
        let _serial = serial();
        let Some(fake) = Fake::start() else { return };
        let state = tempfile::tempdir().expect("state");
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        runtime.block_on(async {
            let request = request(&fake, json!({ "autoStopMinutes": 15, "keepaliveIdleSeconds": 60 }), state.path());
            let session_id = request.session_id.clone();
            let sandbox = sandlink::drivers::daytona::Driver::new().connect(request).await.expect("connect");
            let connected_at = fake_now(&fake);
            let mut first_warning = None;
            let mut expired = None;
            for step in 0..40 {
                fake.advance_clock(30);
                let now = fake_now(&fake);
                let lease = sandbox.lease().expect("a lease");
                // The user stopped typing right after connecting.
                let activity = Activity { runs_in_flight: false, last_activity: Some(connected_at) };
                match decide(&lease, &activity, &Watch::default(), now) {
                    Decision::Warn { seconds_left, .. } => {
                        first_warning.get_or_insert((step, seconds_left));
                    }
                    Decision::AskProvider => {
                        let status = sandbox.status().await.expect("status");
                        if status.expired {
                            expired = Some((step, status));
                            break;
                        }
                    }
                    Decision::Extend => panic!("an idle session must not be kept active (step {step})"),
                    Decision::Nothing | Decision::Expire(_) => {}
                }
            }
            let (warned_at, seconds_left) = first_warning.expect("the user was warned");
            assert!(seconds_left <= 300, "the warning came within five minutes of the end: {seconds_left}");
            let (expired_at, status) = expired.expect("the session expired once Daytona stopped the sandbox");
            assert!(warned_at < expired_at, "the warning came before the stop");
            let message = status.failure.unwrap_or_default();
            assert!(message.contains("stopped"), "the session says why: {message}");
            let (state, detail) = sandbox_state(&fake, &session_id);
            assert_eq!(state, "stopped", "{detail}");
            assert_eq!(detail["stopReason"], "auto-stop", "{detail}");
        });
    }
}

#[test]
fn a_kept_session_should_reattach_and_start_its_stopped_sandbox_again() {
    let _serial = serial();
    let Some(fake) = Fake::start() else { return };
    let state = tempfile::tempdir().expect("state dir");
    let workspace = support::workspace_with(&[("hello.txt", "hello\n")]);
    let start = || Server::start_with(StartOptions { state_dir: Some(state.path().to_path_buf()), env: Fake::server_env(), ..StartOptions::default() });
    let session_id = {
        let first = start();
        let session = first.connect("daytona", fake.settings(), workspace.path());
        let session_id = session["sessionId"].as_str().expect("id").to_string();
        let outcome = first.run_to_exit(json!({ "sessionId": session_id, "command": "echo made-here > marker" }));
        assert_eq!(outcome.exit_code(), Some(0));
        session_id
    };
    let kept = fake.sandbox_of(&session_id).expect("the sandbox is kept across the restart");
    // Daytona stops it while nobody uses it.
    fake.advance_clock(16 * 60);
    assert_eq!(fake.sandbox_of(&session_id).expect("kept")["state"], "stopped");
    let second = start();
    let reattached = second
        .request("sandlink/connect", json!({ "reuse": session_id, "workspaceFolder": support::file_uri(workspace.path()) }))
        .expect("re-attach works");
    assert_eq!(reattached["state"], "active", "{reattached}");
    let again = fake.sandbox_of(&session_id).expect("the sandbox");
    assert_eq!(again["id"], kept["id"], "the same sandbox");
    assert_eq!(again["state"], "started", "started again");
    let outcome = second.run_to_exit(json!({ "sessionId": session_id, "command": "cat marker hello.txt" }));
    assert_eq!(outcome.stdout, "made-here\nhello\n", "what the first server made is still there");
    second.request("sandlink/disconnect", json!({ "sessionId": session_id })).expect("disconnect");
    assert!(fake.sandbox_of(&session_id).is_none(), "a real disconnect deletes the sandbox");
}

#[test]
fn extend_snapshot_restore_and_status_should_map_to_daytona() {
    let Some(fake) = shared_fake() else { return };
    let server = start_server();
    let (_workspace, session_id) = connect(&server, fake.settings(), &[]);
    let since = fake.next_sequence();
    let extended = server.request("sandlink/extend", json!({ "sessionId": session_id, "seconds": 1800 })).expect("extend");
    assert!(extended["expiresAt"].is_string(), "{extended}");
    let routes: Vec<String> = fake.requests_since(since).iter().map(|request| format!("{} {}", request["method"].as_str().unwrap_or_default(), request["route"].as_str().unwrap_or_default())).collect();
    assert!(routes.iter().any(|route| route == "POST /api/sandbox/{sandboxIdOrName}/autostop/{value}"), "{routes:?}");
    assert!(routes.iter().any(|route| route == "POST /api/sandbox/{sandboxIdOrName}/last-activity"), "{routes:?}");
    assert_eq!(fake.sandbox_of(&session_id).expect("sandbox")["autoStopInterval"], 30);
    let status = server.request("sandlink/status", json!({ "sessionId": session_id })).expect("status");
    assert!(status["resources"]["memoryBytes"].as_u64().is_some_and(|bytes| bytes >= 1 << 30), "{status}");
    let outcome = server.run_to_exit(json!({ "sessionId": session_id, "command": "echo from the snapshot > notes.txt" }));
    assert_eq!(outcome.exit_code(), Some(0));
    let snapshot = server.request("sandlink/snapshot", json!({ "sessionId": session_id })).expect("snapshot");
    let snapshot_id = snapshot["snapshotId"].as_str().expect("snapshotId").to_string();
    let restored = server
        .request("sandlink/restore", json!({ "snapshotId": snapshot_id, "driver": "daytona", "settings": fake.settings() }))
        .expect("restore");
    assert_eq!(restored["state"], "active");
    let restored_id = restored["sessionId"].as_str().expect("sessionId").to_string();
    assert_ne!(restored_id, session_id);
    let outcome = server.run_to_exit(json!({ "sessionId": restored_id, "command": "cat notes.txt" }));
    assert_eq!(outcome.stdout, "from the snapshot\n");
}

#[test]
fn a_jwt_with_its_organisation_should_be_accepted_as_the_sdk_sends_it() {
    let _serial = serial();
    let jwt = "eyJhbGciOiJIUzI1NiJ9.sandlink-test.c2lnbmF0dXJl";
    let Some(fake) = Fake::start_with(&["--jwt", jwt, "--organization-id", "org-sandlink"]) else { return };
    let jwt_env = |organization: &str| {
        vec![
            ("DAYTONA_API_KEY".to_string(), String::new()),
            ("DAYTONA_JWT_TOKEN".to_string(), jwt.to_string()),
            ("DAYTONA_ORGANIZATION_ID".to_string(), organization.to_string()),
        ]
    };
    let server = Server::start_with(StartOptions { env: jwt_env("org-sandlink"), ..StartOptions::default() });
    let since = fake.next_sequence();
    let (_workspace, session_id) = connect(&server, fake.settings(), &[]);
    let outcome = server.run_to_exit(json!({ "sessionId": session_id, "command": "echo with-a-jwt" }));
    assert_eq!(outcome.stdout, "with-a-jwt\n");
    let create = fake.requests_since(since).into_iter().find(|request| request["path"] == "/api/sandbox").expect("a create");
    assert_eq!(create["headers"]["X-Daytona-Organization-ID"], "org-sandlink", "{create}");
    // A JWT without its organisation is refused before anything is sent.
    let without = Server::start_with(StartOptions { env: jwt_env(""), ..StartOptions::default() });
    let workspace = support::workspace_with(&[]);
    let error = without.request_error(
        "sandlink/connect",
        json!({ "driver": "daytona", "settings": fake.settings(), "workspaceFolder": support::file_uri(workspace.path()) }),
    );
    assert_eq!(error.kind.as_deref(), Some("credentialsMissing"), "{error:?}");
    assert!(error.message.contains("DAYTONA_ORGANIZATION_ID"), "{}", error.message);
    assert!(!error.message.contains(jwt), "the token is never echoed");
}

#[test]
fn a_rate_limited_logs_websocket_should_wait_for_retry_after_and_lose_nothing() {
    let _serial = serial();
    let Some(fake) = Fake::start() else { return };
    let server = start_server();
    let (_workspace, session_id) = connect(&server, fake.settings(), &[]);
    // The next two upgrades of the logs WebSocket are refused with 429 and Retry-After: 1.
    fake.set_faults(json!({ "rateLimitNext": 2, "retryAfter": 1, "rateLimitPlane": "toolbox", "rateLimitPath": "/logs$" }));
    let since = fake.next_sequence();
    let outcome = server.run_to_exit(json!({ "sessionId": session_id, "command": "echo one; sleep 3; echo two >&2; echo three" }));
    assert_eq!((outcome.stdout.as_str(), outcome.stderr.as_str()), ("one\nthree\n", "two\n"), "{}", outcome.exit);
    assert_eq!(outcome.exit_code(), Some(0));
    let upgrades: Vec<Value> = fake
        .requests_since(since)
        .into_iter()
        .filter(|request| request["path"].as_str().is_some_and(|path| path.ends_with("/logs")) && request["query"].as_str().is_some_and(|query| query.contains("follow=true")))
        .collect();
    let statuses: Vec<Value> = upgrades.iter().map(|request| request["status"].clone()).collect();
    assert_eq!(&statuses[..2], &[json!(429), json!(429)], "{upgrades:?}");
    let times: Vec<f64> = upgrades.iter().filter_map(|request| request["time"].as_f64()).collect();
    assert!(times.len() >= 3 && times.windows(2).take(2).all(|pair| pair[1] - pair[0] >= 0.95), "each refusal's Retry-After was honoured: {times:?}");
}
