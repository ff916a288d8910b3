//! End-to-end tests of the `vercel` driver against the in-repo Vercel Sandbox fake (tests/fakes/vercel_server.py).
//!
//! The fake speaks Vercel's wire format (the official SDK's conformance test in tests/vercel proves it), runs
//! commands for real, cuts streams as Vercel's edge does and has a test clock. Parity tests share one fake per test
//! binary; fault tests start their own, since faults are global.

mod support;
#[macro_use]
mod parity;

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use parity::DriverFixture;
use support::fake::FakeProcess;
use support::{Server, StartOptions};

const TOKEN: &str = "vercel_sandlink_test_token_7b1e4c90";
const TEAM: &str = "team_sandlinktests";
const PROJECT: &str = "prj_sandlinktests";

/// One running fake Vercel server.
struct Fake {
    process: FakeProcess,
}

impl Fake {
    /// Starts a fake, or answers `None` (a skip) when the test venv is missing outside CI.
    fn start() -> Option<Fake> {
        let arguments = ["--token", TOKEN, "--team-id", TEAM];
        let process = FakeProcess::start("Vercel", "SANDLINK_VERCEL_FAKE_SERVER", "vercel_server.py", &arguments)?;
        Some(Fake { process })
    }

    /// Driver settings pointing at this fake (it serves the API under `/api`, as `https://vercel.com/api`).
    fn settings(&self) -> Value {
        json!({ "baseUrl": format!("http://127.0.0.1:{}/api", self.process.port), "timeoutSeconds": 300 })
    }

    fn server_env() -> Vec<(String, String)> {
        vec![
            ("VERCEL_TOKEN".into(), TOKEN.into()),
            ("VERCEL_TEAM_ID".into(), TEAM.into()),
            ("VERCEL_PROJECT_ID".into(), PROJECT.into()),
            ("VERCEL_OIDC_TOKEN".into(), String::new()),
            ("RUST_LOG".into(), "sandlink=debug".into()),
        ]
    }

    fn advance_clock(&self, seconds: f64) {
        self.admin("POST", "/_admin/clock", Some(json!({ "advanceSeconds": seconds })));
    }

    /// The fake's view of the named sandbox a session created (the driver names it after the session).
    fn sandbox_of(&self, session_id: &str) -> Option<Value> {
        let name = sandbox_name(session_id);
        let all = self.admin("GET", "/_admin/sandboxes", None);
        all["sandboxes"].as_array()?.iter().find(|sandbox| sandbox["name"] == name).cloned()
    }

    /// The fake's view of the current session of the sandbox a session created.
    fn session_of(&self, session_id: &str) -> Option<Value> {
        let name = sandbox_name(session_id);
        let all = self.admin("GET", "/_admin/sandboxes", None);
        let sessions = all["sessions"].as_array()?;
        let mut mine: Vec<&Value> = sessions.iter().filter(|session| session["sandboxName"] == name).collect();
        mine.sort_by_key(|session| session["startedAt"].as_i64().unwrap_or_default());
        mine.last().map(|session| (*session).clone())
    }

    fn fixture(self: &'static Fake) -> DriverFixture {
        DriverFixture {
            driver: "vercel",
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

/// The name the driver gives the sandbox of a session.
fn sandbox_name(session_id: &str) -> String {
    let cleaned: String = session_id
        .chars()
        .map(|character| if character.is_ascii_alphanumeric() || character == '-' { character.to_ascii_lowercase() } else { '-' })
        .collect();
    format!("sandlink-{cleaned}")
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

fn vercel_fixture() -> Option<DriverFixture> {
    shared_fake().map(Fake::fixture)
}

// Every shared behaviour: the fake answers route URLs that reach itself (`http://SUB.localhost:PORT`) and forwards
// them by Host to the session's port, as Vercel's edge does for `https://SUB.vercel.run`.
parity_tests!(vercel_fixture);
sync_parity_tests!(vercel_fixture);

/// The same behaviours on the v1 API (`apiVersion: "v1"`), which has its own paths (and its own kill path).
fn vercel_v1_fixture() -> Option<DriverFixture> {
    let mut fixture = vercel_fixture()?;
    fixture.settings["apiVersion"] = json!("v1");
    Some(fixture)
}

/// v1 sandboxes have no names, so the fixture cannot find a session's sandbox from outside: disconnect is checked
/// in `the_v1_api_should_run_sync_and_kill_with_its_own_paths` instead. v1 sandboxes cannot add a port after create, so
/// the preview behaviours (which pick a free port as they go) run on v2 only.
mod v1 {
    use super::vercel_v1_fixture;

    parity_tests!(@each vercel_v1_fixture,
        run_should_stream_stdout_stderr_and_exit_code,
        run_with_args_should_pass_arguments_without_a_shell,
        run_should_feed_stdin_until_eof,
        cancel_should_end_a_process_tree_that_ignores_sigterm,
        timeout_should_stop_the_run_and_say_so,
        output_should_keep_split_utf8_whole_and_mark_invalid_bytes,
        run_should_refuse_a_cwd_outside_the_root,
        run_should_report_a_signal_death,
        workspace_files_should_be_visible_to_runs,
        output_should_show_paths_in_the_root_as_workspace_paths,
        status_should_report_an_active_session,
        unknown_run_should_be_a_clear_error,
        capabilities_should_say_what_the_driver_does
    );
    crate::sync_parity_tests!(vercel_v1_fixture);
}

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
    let session = server.connect("vercel", settings, workspace.path());
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

/// The fake's log of requests to one route template (`GET /v2/sandboxes/sessions/{sessionId}/cmd/{cmdId}/logs`).
fn requests_to(fake: &Fake, since: u64, route: &str) -> Vec<Value> {
    fake.requests_since(since).into_iter().filter(|request| request["route"] == route).collect()
}

const LOGS_ROUTE: &str = "GET /v2/sandboxes/sessions/{sessionId}/cmd/{cmdId}/logs";

#[test]
fn a_stream_cut_mid_run_should_deliver_every_line_once_in_order() {
    let _serial = serial();
    let Some(fake) = Fake::start() else { return };
    let server = start_server();
    let (_workspace, session_id) = connect(&server, fake.settings(), &[]);
    // Three cuts, each a few hundred bytes into a stream (mid-line), while the command is still printing: every
    // re-read replays from the start, and what was delivered must be skipped exactly.
    fake.set_faults(json!({ "cutStreamAfterBytes": 700, "cutStreamCount": 3 }));
    let since = fake.next_sequence();
    let outcome = server.run_to_exit(json!({
        "sessionId": session_id,
        "command": "for i in $(seq 1 300); do echo line-$i; echo err-$i >&2; if [ $((i % 20)) = 0 ]; then sleep 0.05; fi; done; exit 4",
    }));
    let expected: String = (1..=300).map(|index| format!("line-{index}\n")).collect();
    let expected_errors: String = (1..=300).map(|index| format!("err-{index}\n")).collect();
    assert_eq!(outcome.stdout, expected, "every line arrives once, in order: {}", outcome.exit);
    assert_eq!(outcome.stderr, expected_errors, "stderr too");
    assert_eq!(outcome.exit_code(), Some(4), "{}", outcome.exit);
    let reads = requests_to(&fake, since, LOGS_ROUTE);
    assert!(reads.len() >= 4, "one read per cut and a last one: {}", reads.len());
}

#[test]
fn a_long_run_should_stream_to_its_end_across_many_edge_cuts() {
    let _serial = serial();
    let Some(fake) = Fake::start() else { return };
    let server = start_server();
    let (_workspace, session_id) = connect(&server, with_settings(&fake, json!({ "timeoutSeconds": 18000 })), &[]);
    // The edge cuts every stream (logs and waits) after 300 s of the fake's clock; the test moves that clock 100 s
    // a tenth of a second, so a run of a few real seconds lives through a simulated half hour and many cuts.
    fake.set_faults(json!({ "edgeCutSeconds": 300 }));
    // A session long enough for the simulated half hour: the fake's clock jumps faster than any keepalive could follow.
    let since = fake.next_sequence();
    let run_id = server.start_run(json!({
        "sessionId": session_id,
        "command": "for i in $(seq 1 60); do echo tick-$i; sleep 0.1; done; echo done",
    }));
    let mut advanced = 0.0;
    let started = Instant::now();
    while advanced < 1800.0 && started.elapsed() < Duration::from_secs(30) {
        fake.advance_clock(100.0);
        advanced += 100.0;
        std::thread::sleep(Duration::from_millis(100));
    }
    let outcome = server.collect_run(&run_id, Duration::from_secs(60));
    let expected: String = (1..=60).map(|index| format!("tick-{index}\n")).chain(std::iter::once("done\n".to_string())).collect();
    assert_eq!(outcome.stdout, expected, "nothing lost or repeated across the cuts: {}", outcome.exit);
    assert_eq!(outcome.exit_code(), Some(0), "{}", outcome.exit);
    let cut_reads = requests_to(&fake, since, LOGS_ROUTE).iter().filter(|request| request["cut"] == true).count();
    assert!(cut_reads >= 3, "the edge cut the logs several times ({cut_reads})");
    let session = fake.session_of(&session_id).expect("the session");
    assert_eq!(session["status"], "running", "{session}");
}

#[test]
fn rate_limits_should_be_retried_after_the_servers_retry_after() {
    let _serial = serial();
    let Some(fake) = Fake::start() else { return };
    let server = start_server();
    fake.set_faults(json!({ "rateLimitNext": 2, "retryAfter": 1 }));
    let started = Instant::now();
    let since = fake.next_sequence();
    let (_workspace, session_id) = connect(&server, fake.settings(), &[]);
    assert!(started.elapsed() >= Duration::from_millis(1900), "Retry-After was honoured: {:?}", started.elapsed());
    let statuses: Vec<Value> = requests_to(&fake, since, "POST /v2/sandboxes").iter().map(|request| request["status"].clone()).collect();
    assert_eq!(statuses, vec![json!(429), json!(429), json!(200)]);
    assert!(server.stderr().contains("waiting 1.0 s, as Retry-After asks"), "the log says how long sandlink waits");
    // Injected 5xx answers are retried too, and a 422 (the session is stopping or snapshotting) is waited out.
    fake.set_faults(json!({ "errorNext": 2, "errorStatus": 503 }));
    let outcome = server.run_to_exit(json!({ "sessionId": session_id, "command": "echo after-503" }));
    assert_eq!(outcome.stdout, "after-503\n");
    fake.set_faults(json!({ "errorNext": 1, "errorStatus": 422, "errorCode": "sandbox_snapshotting" }));
    let outcome = server.run_to_exit(json!({ "sessionId": session_id, "command": "echo after-422" }));
    assert_eq!(outcome.stdout, "after-422\n");
}

#[test]
fn a_retry_after_longer_than_a_minute_should_fail_saying_how_long_vercel_asked() {
    let _serial = serial();
    let Some(fake) = Fake::start() else { return };
    let server = start_server();
    fake.set_faults(json!({ "rateLimitNext": 1, "retryAfter": 600 }));
    let workspace = support::workspace_with(&[]);
    let started = Instant::now();
    let error = server.request_error(
        "sandlink/connect",
        json!({ "driver": "vercel", "settings": fake.settings(), "workspaceFolder": support::file_uri(workspace.path()) }),
    );
    assert!(started.elapsed() < Duration::from_secs(20), "no ten-minute wait: {:?}", started.elapsed());
    assert_eq!(error.kind.as_deref(), Some("remoteError"), "{error:?}");
    assert!(error.message.contains("600 s"), "the message says how long Vercel asked to wait: {}", error.message);
}

#[test]
fn output_should_be_kept_when_the_session_stops_and_the_run_say_it_was_cut_off() {
    let _serial = serial();
    let Some(fake) = Fake::start() else { return };
    let server = start_server();
    let (_workspace, session_id) = connect(&server, fake.settings(), &[]);
    let run_id = server.start_run(json!({ "sessionId": session_id, "command": "echo before-the-end; sleep 60" }));
    server.wait_notification("sandlink/output", Duration::from_secs(20), |params| params["runId"] == run_id);
    // The session reaches its end: Vercel stops it and answers 410 for its logs and commands from then on.
    fake.advance_clock(400.0);
    let outcome = server.collect_run(&run_id, Duration::from_secs(30));
    let log = std::fs::read_to_string(outcome.exit["logPath"].as_str().expect("a log")).expect("the run's log");
    assert_eq!(log, "before-the-end\n", "what was printed before the stop is kept");
    let message = outcome.exit["message"].as_str().unwrap_or_default();
    assert!(message.contains("stopped before command"), "the exit says the run was cut off: {}", outcome.exit);
    let state = server.wait_notification("sandlink/sessionState", Duration::from_secs(15), |params| {
        params["sessionId"] == session_id && params["state"] == "expired"
    });
    let text = state["message"].as_str().unwrap_or_default();
    assert!(text.contains("files were lost"), "the message says the files are gone with the session: {state}");
}

#[test]
fn a_snapshot_should_fetch_unread_output_first_and_the_session_go_on_from_it() {
    let _serial = serial();
    let Some(fake) = Fake::start() else { return };
    let server = start_server();
    let (_workspace, session_id) = connect(&server, fake.settings(), &[("kept.txt", "kept across the snapshot\n")]);
    // Much output at once, then a long wait: the snapshot comes while most of it may still be on its way.
    let run_id = server.start_run(json!({ "sessionId": session_id, "command": "seq 1 20000; sleep 60" }));
    std::thread::sleep(Duration::from_millis(300));
    let before = fake.session_of(&session_id).expect("a session");
    let answer = server.request("sandlink/snapshot", json!({ "sessionId": session_id })).expect("snapshot");
    let snapshot_id = answer["snapshotId"].as_str().expect("a snapshot id").to_string();
    assert!(snapshot_id.starts_with("snap_"), "{answer}");
    let note = answer["note"].as_str().unwrap_or_default();
    assert!(note.contains("stopped the Vercel session") && note.contains("resumed"), "the answer says what happened: {answer}");
    let outcome = server.collect_run(&run_id, Duration::from_secs(30));
    let log = std::fs::read_to_string(outcome.exit["logPath"].as_str().expect("a log")).expect("the run's log");
    let expected: String = (1..=20000).map(|number| format!("{number}\n")).collect();
    assert!(log == expected, "all the output was fetched before the snapshot stopped the session ({} bytes of {})", log.len(), expected.len());
    assert!(outcome.exit["message"].as_str().unwrap_or_default().contains("stopped"), "{}", outcome.exit);
    // The snapshot stopped that session; the driver resumed the sandbox from it, with its files.
    let after = fake.session_of(&session_id).expect("a session");
    assert_ne!(before["id"], after["id"], "a new session");
    let outcome = server.run_to_exit(json!({ "sessionId": session_id, "command": "cat kept.txt" }));
    assert_eq!(outcome.stdout, "kept across the snapshot\n", "{}", outcome.exit);
    // And the snapshot restores into a new session of its own.
    let workspace = support::workspace_with(&[]);
    let restored = server
        .request(
            "sandlink/restore",
            json!({ "snapshotId": snapshot_id, "driver": "vercel", "settings": fake.settings(), "workspaceFolder": support::file_uri(workspace.path()) }),
        )
        .expect("restore");
    let restored_id = restored["sessionId"].as_str().expect("sessionId");
    let outcome = server.run_to_exit(json!({ "sessionId": restored_id, "command": "cat kept.txt" }));
    assert_eq!(outcome.stdout, "kept across the snapshot\n", "{}", outcome.exit);
}

#[test]
fn wrong_token_should_be_a_remote_error_that_never_echoes_the_token() {
    let Some(fake) = Fake::start() else { return };
    let wrong = "vercel_wrong_token_4d3c2b1a0f9e8d7c";
    let server = Server::start_with(StartOptions {
        env: vec![
            ("VERCEL_TOKEN".into(), wrong.into()),
            ("VERCEL_TEAM_ID".into(), TEAM.into()),
            ("VERCEL_PROJECT_ID".into(), PROJECT.into()),
            ("RUST_LOG".into(), "trace".into()),
        ],
        ..StartOptions::default()
    });
    let workspace = support::workspace_with(&[]);
    let error = server.request_error(
        "sandlink/connect",
        json!({ "driver": "vercel", "settings": fake.settings(), "workspaceFolder": support::file_uri(workspace.path()) }),
    );
    assert_eq!(error.kind.as_deref(), Some("remoteError"), "{error:?}");
    assert!(error.message.contains("VERCEL_TOKEN"), "the message says where the token comes from: {}", error.message);
    assert!(!error.message.contains(wrong), "the token is never echoed");
    assert!(!error.data.to_string().contains(wrong), "the token is not in the error data");
    assert!(!server.stderr().contains(wrong), "the token is not in the log");
}

#[test]
fn missing_credentials_should_name_the_variables() {
    let Some(fake) = shared_fake() else { return };
    let server = Server::start_with(StartOptions {
        env: vec![
            ("VERCEL_TOKEN".into(), String::new()),
            ("VERCEL_OIDC_TOKEN".into(), String::new()),
            ("VERCEL_TEAM_ID".into(), String::new()),
            ("VERCEL_PROJECT_ID".into(), String::new()),
        ],
        ..StartOptions::default()
    });
    let workspace = support::workspace_with(&[]);
    let error = server.request_error(
        "sandlink/connect",
        json!({ "driver": "vercel", "settings": fake.settings(), "workspaceFolder": support::file_uri(workspace.path()) }),
    );
    assert_eq!(error.kind.as_deref(), Some("credentialsMissing"), "{error:?}");
    assert!(error.message.contains("VERCEL_TOKEN") && error.message.contains("VERCEL_OIDC_TOKEN"), "{}", error.message);
}

#[test]
fn an_oidc_token_should_name_team_and_project_through_its_claims() {
    use base64::Engine as _;
    let _serial = serial();
    let encode = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    // The fake accepts one token; an OIDC token is a JWT, so this fake is started to accept exactly that JWT.
    let claims = json!({ "owner_id": TEAM, "project_id": "prj_from_claims", "exp": 4_000_000_000u64 });
    let jwt = format!("{}.{}.{}", encode(br#"{"alg":"RS256","typ":"JWT"}"#), encode(claims.to_string().as_bytes()), encode(b"sig"));
    let Some(fake) = Fake::start() else { return };
    fake.set_faults(json!({ "token": jwt }));
    let server = Server::start_with(StartOptions {
        env: vec![
            ("VERCEL_TOKEN".into(), String::new()),
            ("VERCEL_TEAM_ID".into(), String::new()),
            ("VERCEL_PROJECT_ID".into(), String::new()),
            ("VERCEL_OIDC_TOKEN".into(), jwt.clone()),
        ],
        ..StartOptions::default()
    });
    let since = fake.next_sequence();
    let (_workspace, session_id) = connect(&server, fake.settings(), &[]);
    let create = requests_to(&fake, since, "POST /v2/sandboxes").pop().expect("a create");
    assert_eq!(create["body"]["projectId"], "prj_from_claims", "{create}");
    assert!(create["query"].as_str().unwrap_or_default().contains(&format!("teamId={TEAM}")), "{create}");
    let outcome = server.run_to_exit(json!({ "sessionId": session_id, "command": "echo via-oidc" }));
    assert_eq!(outcome.stdout, "via-oidc\n");
}

#[test]
fn every_request_should_carry_the_team_and_runs_start_detached() {
    // A fake of its own: the request log must hold this test's requests only.
    let _serial = serial();
    let Some(fake) = Fake::start() else { return };
    let fake = &fake;
    let server = start_server();
    let since = fake.next_sequence();
    let (_workspace, session_id) = connect(&server, fake.settings(), &[("a.txt", "a")]);
    let outcome = server.run_to_exit(json!({ "sessionId": session_id, "command": "echo hi", "env": { "GREETING": "x" }, "timeoutMs": 60000 }));
    assert_eq!(outcome.stdout, "hi\n");
    let requests = fake.requests_since(since);
    assert!(!requests.is_empty());
    for request in &requests {
        assert!(request["query"].as_str().unwrap_or_default().contains(&format!("teamId={TEAM}")), "teamId on every request: {request}");
    }
    let starts: Vec<&Value> = requests.iter().filter(|request| request["route"] == "POST /v2/sandboxes/sessions/{sessionId}/cmd").collect();
    let user_run = starts.iter().find(|request| request["body"]["args"][1] == "echo hi").expect("the run's start");
    assert!(user_run["body"].get("wait").is_none(), "runs start detached: {user_run}");
    assert_eq!(user_run["body"]["env"]["GREETING"], "x");
    assert_eq!(user_run["body"]["timeout"], 70000, "timeoutMs plus the backstop's grace: {user_run}");
}

#[test]
fn an_idle_session_should_be_warned_and_a_busy_one_extended() {
    let _serial = serial();
    let Some(fake) = Fake::start() else { return };
    let server = start_server();
    // A one-minute session, idle from the start (no editor activity counts).
    let (_workspace, session_id) = connect(&server, with_settings(&fake, json!({ "timeoutSeconds": 60, "keepaliveIdleSeconds": 0 })), &[]);
    // The last warning threshold is the extension margin, half the session's timeout: 30 s before the end.
    let warning = server.wait_notification("sandlink/timeoutWarning", Duration::from_secs(45), |params| params["sessionId"] == session_id);
    assert!(warning["secondsLeft"].as_u64().is_some_and(|left| left <= 60), "{warning}");
    // A run in flight is use: within half a minute of the end the engine extends by the session's timeout.
    let since = fake.next_sequence();
    let outcome = server.run_to_exit(json!({ "sessionId": session_id, "command": "sleep 40; echo survived" }));
    assert_eq!(outcome.stdout, "survived\n", "{}", outcome.exit);
    let extends = requests_to(&fake, since, "POST /v2/sandboxes/sessions/{sessionId}/extend-timeout");
    assert!(!extends.is_empty(), "the busy session was extended");
    assert_eq!(extends[0]["body"]["duration"], 60_000, "{}", extends[0]);
    let session = fake.session_of(&session_id).expect("the session");
    assert_eq!(session["status"], "running", "{session}");
}

#[test]
fn a_preview_should_add_the_port_the_sandbox_lacks() {
    // A fake of its own: the request log must hold this test's requests only.
    let _serial = serial();
    let Some(fake) = Fake::start() else { return };
    let fake = &fake;
    let server = start_server();
    let (declared, missing) = (parity::free_port(), parity::free_port());
    let (_workspace, session_id) = connect(&server, with_settings(fake, json!({ "ports": [declared] })), &[]);
    // Servers on both ports: a preview of a port nothing listens on is refused before the driver is asked.
    let servers = server.start_run(json!({ "sessionId": session_id, "command": format!(
        "python3 -m http.server {declared} --bind 127.0.0.1 & python3 -m http.server {missing} --bind 127.0.0.1 & wait"
    ) }));
    let since = fake.next_sequence();
    let known = server.request("sandlink/preview", json!({ "sessionId": session_id, "port": declared })).expect("preview");
    assert!(requests_to(fake, since, "PATCH /v2/sandboxes/{name}").is_empty(), "a declared port needs no request");
    let added = server.request("sandlink/preview", json!({ "sessionId": session_id, "port": missing })).expect("preview");
    let patches = requests_to(fake, since, "PATCH /v2/sandboxes/{name}");
    assert_eq!(patches.len(), 1);
    assert_eq!(patches[0]["body"]["ports"], json!([declared, missing]));
    assert_ne!(known["url"], added["url"]);
    let session = fake.session_of(&session_id).expect("the session");
    let routes = session["routes"].as_array().cloned().unwrap_or_default();
    assert!(routes.iter().any(|route| route["port"] == missing), "{session}");
    server.request("sandlink/cancel", json!({ "runId": servers })).expect("cancel the servers");
}

#[test]
fn the_v1_api_should_run_sync_and_kill_with_its_own_paths() {
    // A fake of its own: the request log must hold this test's requests only.
    let _serial = serial();
    let Some(fake) = Fake::start() else { return };
    let fake = &fake;
    let server = start_server();
    let since = fake.next_sequence();
    let (_workspace, session_id) = connect(&server, with_settings(fake, json!({ "apiVersion": "v1" })), &[("hello.txt", "v1 files\n")]);
    let outcome = server.run_to_exit(json!({ "sessionId": session_id, "command": "cat hello.txt" }));
    assert_eq!(outcome.stdout, "v1 files\n", "{}", outcome.exit);
    let run_id = server.start_run(json!({ "sessionId": session_id, "command": "echo started; sleep 60" }));
    server.wait_notification("sandlink/output", Duration::from_secs(20), |params| params["runId"] == run_id);
    server.request("sandlink/cancel", json!({ "runId": run_id })).expect("cancel");
    let outcome = server.collect_run(&run_id, Duration::from_secs(30));
    assert_eq!(outcome.exit["cancelled"], true, "{}", outcome.exit);
    let requests = fake.requests_since(since);
    assert!(requests.iter().any(|request| request["route"] == "POST /v1/sandboxes"), "created through v1");
    assert!(requests.iter().any(|request| request["route"] == "POST /v1/sandboxes/{sandboxId}/{cmdId}/kill"), "v1's kill path has no /cmd/");
    assert!(requests.iter().all(|request| !request["path"].as_str().unwrap_or_default().contains("/v2/")), "nothing of v2");
    let sandbox_id = requests
        .iter()
        .find(|request| request["route"] == "POST /v1/sandboxes/{sandboxId}/cmd")
        .and_then(|request| request["sessionId"].as_str())
        .expect("the v1 sandbox's id")
        .to_string();
    server.request("sandlink/disconnect", json!({ "sessionId": session_id })).expect("disconnect");
    let all = fake.admin("GET", "/_admin/sandboxes", None);
    let session = all["sessions"].as_array().and_then(|sessions| sessions.iter().find(|session| session["id"] == sandbox_id.as_str()).cloned());
    assert!(session.is_none_or(|session| session["status"] != "running"), "disconnect stopped the v1 sandbox");
    let stops = fake.requests_since(since).iter().filter(|request| request["route"] == "POST /v1/sandboxes/{sandboxId}/stop").count();
    assert_eq!(stops, 1, "through v1's stop");
}

#[test]
fn sync_up_should_send_one_gzip_tar_per_batch_with_modes_and_times_kept() {
    // A fake of its own: the request log must hold this test's requests only.
    let _serial = serial();
    let Some(fake) = Fake::start() else { return };
    let fake = &fake;
    let server = start_server();
    let files: Vec<(String, String)> = (0..50).map(|index| (format!("src/file-{index}.txt"), format!("content {index}\n"))).collect();
    let borrowed: Vec<(&str, &str)> = files.iter().map(|(path, content)| (path.as_str(), content.as_str())).collect();
    let since = fake.next_sequence();
    let (workspace, session_id) = connect(&server, fake.settings(), &borrowed);
    let writes = requests_to(fake, since, "POST /v2/sandboxes/sessions/{sessionId}/fs/write");
    assert_eq!(writes.len(), 1, "fifty files are one batch, one request");
    assert_eq!(writes[0]["headers"]["Content-Type"], "application/gzip");
    assert_eq!(writes[0]["headers"]["X-Cwd"], "/vercel/sandbox");
    let script = workspace.path().join("run.sh");
    std::fs::write(&script, "#!/bin/sh\necho ran\n").unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(&mut std::fs::metadata(&script).unwrap().permissions(), 0o755);
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    filetime::set_file_mtime(&script, filetime::FileTime::from_unix_time(1_700_000_000, 0)).unwrap();
    server.request("sandlink/sync", json!({ "sessionId": session_id, "direction": "up" })).expect("sync");
    let outcome = server.run_to_exit(json!({ "sessionId": session_id, "command": "./run.sh; stat -c '%a %Y' run.sh; ls -a .sandlink-staging 2>/dev/null | wc -l" }));
    assert_eq!(outcome.stdout, "ran\n755 1700000000\n2\n", "mode and time kept, the stage cleaned up: {}", outcome.exit);
    let again = fake.next_sequence();
    let result = server.request("sandlink/sync", json!({ "sessionId": session_id, "direction": "both" })).expect("sync");
    assert_eq!(result["uploaded"], 0, "{result}");
    assert_eq!(result["downloaded"], 0, "{result}");
    assert!(requests_to(fake, again, "POST /v2/sandboxes/sessions/{sessionId}/fs/write").is_empty());
}

#[test]
fn a_helper_command_cut_mid_stream_should_carry_on_from_the_logs() {
    let _serial = serial();
    let Some(fake) = Fake::start() else { return };
    let server = start_server();
    let files: Vec<(String, String)> = (0..40).map(|index| (format!("dir/file-{index}.txt"), format!("{index}\n"))).collect();
    let borrowed: Vec<(&str, &str)> = files.iter().map(|(path, content)| (path.as_str(), content.as_str())).collect();
    let (_workspace, session_id) = connect(&server, fake.settings(), &borrowed);
    // The listing a sync down asks for is one streamed `wait` + `logs` request; cut it mid-line, and the driver must
    // finish from the logs (skipping what arrived) and the wait, seeing every file once.
    sandbox_shell(&server, &session_id, "echo new > made-in-sandbox.txt");
    let since = fake.next_sequence();
    // Past the first line (the command, its arguments being the listing script), within the listing.
    fake.set_faults(json!({ "cutStreamAfterBytes": 1500, "cutStreamCount": 1 }));
    let result = server.request("sandlink/sync", json!({ "sessionId": session_id, "direction": "down" })).expect("sync down");
    assert_eq!(result["downloaded"], 1, "only the new file comes down: {result}");
    let requests = fake.requests_since(since);
    assert!(requests.iter().any(|request| request["cut"] == true), "the fault cut a stream");
    assert!(requests.iter().any(|request| request["route"] == LOGS_ROUTE), "the cut stream was carried on from the logs");
}

/// Runs a shell command line in the sandbox and answers its stdout, asserting it succeeded.
fn sandbox_shell(server: &Server, session_id: &str, command: &str) -> String {
    let outcome = server.run_to_exit(json!({ "sessionId": session_id, "command": command }));
    assert_eq!(outcome.exit_code(), Some(0), "`{command}` failed: {}", outcome.stderr);
    outcome.stdout
}

#[test]
fn syncing_a_thousand_files_and_running_a_command_should_take_few_requests() {
    // A fake of its own: the request log must hold this test's requests only.
    let _serial = serial();
    let Some(fake) = Fake::start() else { return };
    let fake = &fake;
    let server = start_server();
    let files: Vec<(String, String)> = (0..1000).map(|index| (format!("src/{}/file-{index}.txt", index % 10), format!("content {index}\n"))).collect();
    let borrowed: Vec<(&str, &str)> = files.iter().map(|(path, content)| (path.as_str(), content.as_str())).collect();
    let since = fake.next_sequence();
    let (_workspace, session_id) = connect(&server, fake.settings(), &borrowed);
    let connect_requests = fake.requests_since(since);
    let run_since = fake.next_sequence();
    let outcome = server.run_to_exit(json!({ "sessionId": session_id, "command": "ls src/3 | wc -l" }));
    assert_eq!(outcome.stdout, "100\n");
    let run_requests = fake.requests_since(run_since);
    let routes = |requests: &[Value]| requests.iter().map(|request| request["route"].as_str().unwrap_or_default().to_string()).collect::<Vec<_>>();
    eprintln!("connect and sync of 1000 files: {} requests {:?}", connect_requests.len(), routes(&connect_requests));
    eprintln!("one run: {} requests {:?}", run_requests.len(), routes(&run_requests));
    let writes = connect_requests.iter().filter(|request| request["route"] == "POST /v2/sandboxes/sessions/{sessionId}/fs/write").count();
    assert!(writes <= 2, "a thousand small files travel in one or two gzip tars, not {writes}");
    assert!(connect_requests.len() <= 8, "connect and the first sync take a handful of requests: {:?}", routes(&connect_requests));
    assert_eq!(run_requests.len(), 3, "a run is start, logs and wait: {:?}", routes(&run_requests));
}

#[test]
fn a_kept_session_should_reattach_to_the_same_sandbox_after_a_restart() {
    let Some(fake) = shared_fake() else { return };
    let state = tempfile::tempdir().expect("state dir");
    let workspace = support::workspace_with(&[("hello.txt", "hello\n")]);
    let start = || {
        Server::start_with(StartOptions { state_dir: Some(state.path().to_path_buf()), env: Fake::server_env(), ..StartOptions::default() })
    };
    let session_id = {
        let first = start();
        let session = first.connect("vercel", fake.settings(), workspace.path());
        let session_id = session["sessionId"].as_str().expect("id").to_string();
        let outcome = first.run_to_exit(json!({ "sessionId": session_id, "command": "echo made-here > marker" }));
        assert_eq!(outcome.exit_code(), Some(0));
        session_id
        // Dropping the server shuts it down as an editor does; the session and its sandbox are kept.
    };
    let kept = fake.session_of(&session_id).expect("the sandbox is kept across the restart");
    let second = start();
    let reattached = second
        .request("sandlink/connect", json!({ "reuse": session_id, "workspaceFolder": support::file_uri(workspace.path()) }))
        .expect("re-attach works");
    assert_eq!(reattached["state"], "active", "{reattached}");
    assert_eq!(fake.session_of(&session_id).expect("the session")["id"], kept["id"], "the same session of the same sandbox");
    let outcome = second.run_to_exit(json!({ "sessionId": session_id, "command": "cat marker hello.txt" }));
    assert_eq!(outcome.stdout, "made-here\nhello\n", "what the first server made is still there");
    second.request("sandlink/disconnect", json!({ "sessionId": session_id })).expect("disconnect");
    assert!(fake.sandbox_of(&session_id).is_none(), "a real disconnect removes the sandbox");
}

#[test]
fn a_persistent_sandbox_kept_at_disconnect_should_resume_with_its_files() {
    let Some(fake) = shared_fake() else { return };
    let server = start_server();
    let (_workspace, session_id) = connect(&server, with_settings(fake, json!({ "persistent": true })), &[]);
    let outcome = server.run_to_exit(json!({ "sessionId": session_id, "command": "echo kept > kept.txt" }));
    assert_eq!(outcome.exit_code(), Some(0));
    let first = fake.session_of(&session_id).expect("a session");
    server.request("sandlink/disconnect", json!({ "sessionId": session_id, "keep": true })).expect("disconnect, keeping it");
    let stopped = fake.sandbox_of(&session_id).expect("the sandbox is kept");
    assert_eq!(stopped["persistent"], true, "{stopped}");
    // Connecting by name resumes it from the snapshot its stop took.
    let settings = with_settings(fake, json!({ "sandbox": sandbox_name(&session_id) }));
    let workspace = support::workspace_with(&[]);
    let resumed = server
        .request(
            "sandlink/connect",
            json!({ "driver": "vercel", "settings": settings, "workspaceFolder": support::file_uri(workspace.path()), "sync": false }),
        )
        .expect("connect to the kept sandbox");
    let resumed_id = resumed["sessionId"].as_str().expect("sessionId");
    assert_ne!(fake.session_of(&session_id).expect("a session")["id"], first["id"], "a new session");
    let outcome = server.run_to_exit(json!({ "sessionId": resumed_id, "command": "cat kept.txt" }));
    assert_eq!(outcome.stdout, "kept\n", "{}", outcome.exit);
    server.request("sandlink/disconnect", json!({ "sessionId": resumed_id })).expect("disconnect");
}
