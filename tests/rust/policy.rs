//! End-to-end tests of the lifecycle policy, cost and audit log: run limits with their warnings and the reason in
//! `sandlink/exit`, `maxCost`, `sandlink/keepalive`, the audit log's canary, and the command line's `status`, `stop`,
//! `extend`, `snapshot` and `keepalive` against a real local session. An hour on the Daytona test server passes in
//! simulated time (its test clock, read by the engine's lifecycle manager).
//!
//! The policy's rules themselves (each threshold once, snapshot before stop, heartbeats) are unit-tested on paused
//! time in `server/src/engine/limits.rs` and `server/src/policy.rs`.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use support::{workspace_with, Server, StartOptions};

/// A server whose config directory (config.toml: prices, profiles) belongs to the test.
fn server_with_config(config_toml: &str, extra_env: Vec<(String, String)>) -> (Server, tempfile::TempDir, tempfile::TempDir) {
    let config = tempfile::tempdir().expect("config dir");
    std::fs::write(config.path().join("config.toml"), config_toml).expect("config.toml");
    let workspace = workspace_with(&[("app.txt", "app\n")]);
    let mut env = vec![("SANDLINK_CONFIG_DIR".to_string(), config.path().display().to_string())];
    env.extend(extra_env);
    let server = Server::start_with(StartOptions {
        notifications: true,
        root: Some(workspace.path().to_path_buf()),
        env,
        ..StartOptions::default()
    });
    (server, config, workspace)
}

fn session_id(session: &Value) -> String {
    assert_eq!(session["state"], "active", "{session}");
    session["sessionId"].as_str().expect("sessionId").to_string()
}

#[test]
fn a_run_at_its_limit_should_be_warned_then_stopped_with_the_reason_and_its_cost_in_exit() {
    let (server, _config, workspace) = server_with_config("[prices.local]\nusdPerHour = 3.6\n", vec![]);
    let session = session_id(&server.connect("local", Value::Null, workspace.path()));
    let run_id = server.start_run(json!({
        "sessionId": session,
        "command": "echo started; sleep 30",
        "maxDurationSeconds": 2,
        "warnAtSeconds": [1],
    }));
    let warning = server.wait_notification("sandlink/timeoutWarning", Duration::from_secs(10), |params| params["runId"] == run_id);
    assert_eq!(warning["reason"], "runLimit", "{warning}");
    assert_eq!(warning["sessionId"], session.as_str());
    assert!(warning["secondsLeft"].as_u64().is_some_and(|left| left <= 1), "{warning}");
    let outcome = server.collect_run(&run_id, Duration::from_secs(20));
    assert_eq!(outcome.stdout, "started\n", "the output up to the stop is delivered");
    assert_eq!(outcome.exit["reason"], "runLimit", "{}", outcome.exit);
    assert_eq!(outcome.exit["cancelled"], false);
    assert!(outcome.exit["message"].as_str().unwrap_or_default().contains("limit of 2s"), "{}", outcome.exit);
    let duration = outcome.exit["durationMs"].as_u64().expect("durationMs");
    assert!((2000..15_000).contains(&duration), "stopped at its limit, not at the command's end: {duration} ms");
    assert_eq!(outcome.exit["cost"]["usdPerHour"], 3.6, "{}", outcome.exit);
    let warnings = server.history().iter().filter(|message| message["method"] == "sandlink/timeoutWarning").count();
    assert_eq!(warnings, 1, "one threshold, one warning");
    // The runs list carries the reason and the cost too.
    let runs = server.request("sandlink/runs", json!({ "sessionId": session })).expect("runs");
    assert_eq!(runs["runs"][0]["exit"]["reason"], "runLimit", "{runs}");
    assert!(runs["runs"][0]["cost"]["usd"].as_f64().is_some(), "{runs}");
    // The session's cost is reported at the configured price.
    let status = server.request("sandlink/status", json!({ "sessionId": session })).expect("status");
    assert_eq!(status["cost"]["usdPerHour"], 3.6, "{status}");
    assert!(status["cost"]["usd"].as_f64().is_some_and(|usd| usd >= 0.0), "{status}");
}

#[test]
fn extending_a_runs_limit_should_move_its_stop_and_keepalive_should_answer_empty() {
    let (server, _config, workspace) = server_with_config("", vec![]);
    let session = session_id(&server.connect("local", Value::Null, workspace.path()));
    let run_id = server.start_run(json!({ "sessionId": session, "command": "sleep 30", "maxDurationSeconds": 2 }));
    let extended = server
        .request("sandlink/extend", json!({ "sessionId": session, "seconds": 2, "reason": "runLimit", "runId": run_id }))
        .expect("the run's limit is extended");
    assert!(extended["expiresAt"].as_str().is_some(), "{extended}");
    assert_eq!(server.request("sandlink/keepalive", json!({ "sessionId": session })).expect("keepalive"), json!({}));
    let outcome = server.collect_run(&run_id, Duration::from_secs(20));
    assert_eq!(outcome.exit["reason"], "runLimit", "{}", outcome.exit);
    let duration = outcome.exit["durationMs"].as_u64().expect("durationMs");
    assert!(duration >= 3500, "the extension moved the stop past the first limit: {duration} ms");
    let error = server.request_error("sandlink/keepalive", json!({ "sessionId": "local-nosuch" }));
    assert_eq!(error.kind.as_deref(), Some("unknownSession"));
    let error = server.request_error("sandlink/extend", json!({ "sessionId": session, "seconds": 5, "reason": "runLimit" }));
    assert_eq!(error.kind.as_deref(), Some("invalidParams"), "no run is held to a limit any more: {error:?}");
}

#[test]
fn a_session_over_its_max_cost_should_stop_its_runs_with_the_reason_and_expire() {
    // A dollar a second, and a limit of two dollars.
    let (server, _config, workspace) = server_with_config("[prices.local]\nusdPerHour = 3600\n", vec![]);
    let session = session_id(&server.connect("local", json!({ "lifecycle": { "maxCost": 2.0 } }), workspace.path()));
    let run_id = server.start_run(json!({ "sessionId": session, "command": "sleep 30" }));
    let outcome = server.collect_run(&run_id, Duration::from_secs(20));
    assert_eq!(outcome.exit["reason"], "costLimit", "{}", outcome.exit);
    let state = server.wait_notification("sandlink/sessionState", Duration::from_secs(10), |params| params["state"] == "expired");
    assert!(state["message"].as_str().unwrap_or_default().contains("cost limit of $2.00"), "{state}");
    let refused = server.request_error("sandlink/run", json!({ "sessionId": session, "command": "true" }));
    assert_eq!(refused.kind.as_deref(), Some("invalidParams"), "an expired session runs nothing: {refused:?}");
}

#[test]
fn a_bad_lifecycle_setting_should_be_refused_naming_the_key() {
    let (server, _config, workspace) =
        server_with_config("[profiles.bad]\ndriver = \"local\"\nlifecycle = { maxDuration = \"1h\", warnAt = [\"2h\"] }\n", vec![]);
    let error = server.request_error("sandlink/connect", json!({ "profile": "bad", "workspaceFolder": workspace.path() }));
    assert_eq!(error.kind.as_deref(), Some("invalidProfile"), "{error:?}");
    assert!(error.message.contains("lifecycle.warnAt"), "{error:?}");
    // Settings given with the request are the request's mistake.
    let error = server.request_error(
        "sandlink/connect",
        json!({ "driver": "local", "workspaceFolder": workspace.path(), "settings": { "lifecycle": { "maxDuration": "soon" } } }),
    );
    assert_eq!(error.kind.as_deref(), Some("invalidParams"), "{error:?}");
    assert!(error.message.contains("lifecycle.maxDuration"), "{error:?}");
}

#[test]
fn the_audit_log_should_record_sessions_runs_and_syncs_and_never_a_secret() {
    const CANARY: &str = "canary-7d1f0e93b2a4";
    let token = format!("tok-{CANARY}");
    let hash = blake3::hash(token.as_bytes()).to_hex().to_string();
    let config = format!("[profiles.keyed]\ndriver = \"keyed\"\nexpectedTokenHash = \"{hash}\"\n");
    let (server, _config, workspace) = server_with_config(
        &config,
        vec![("SANDLINK_TEST_DRIVERS".into(), "1".into()), ("SANDLINK_KEYED_TOKEN".into(), token.clone())],
    );
    let session = server
        .request("sandlink/connect", json!({ "profile": "keyed", "workspaceFolder": workspace.path() }))
        .expect("the keyed profile connects with its credential");
    let session = session_id(&session);
    let outcome = server.run_to_exit(json!({
        "sessionId": session,
        "command": "printf '%s' \"$API_TOKEN\" | wc -c",
        "cwd": ".",
        "env": { "API_TOKEN": format!("secret-{CANARY}"), "OTHER": CANARY },
    }));
    assert_eq!(outcome.exit_code(), Some(0), "{}", outcome.stderr);
    server.request("sandlink/sync", json!({ "sessionId": session, "direction": "up" })).expect("sync");
    server.request("sandlink/disconnect", json!({ "sessionId": session })).expect("disconnect");
    let audit = std::fs::read_to_string(server.state_dir().join("audit.jsonl")).expect("the audit log exists");
    assert!(!audit.contains(CANARY), "the audit log holds no secret:\n{audit}");
    let events: Vec<Value> = audit.lines().map(|line| serde_json::from_str(line).expect("a JSON line")).collect();
    let find = |event: &str| events.iter().find(|line| line["event"] == event).cloned().unwrap_or_else(|| panic!("{event} in\n{audit}"));
    assert_eq!(find("sessionCreated")["sessionId"], session.as_str());
    let started = find("runStarted");
    assert_eq!(started["who"], "editor");
    assert_eq!(started["cwd"], ".");
    assert_eq!(started["envNames"], json!(["API_TOKEN", "OTHER"]), "names only");
    assert!(started["command"].as_str().unwrap_or_default().contains("wc -c"));
    assert_eq!(find("runEnded")["exitCode"], 0);
    assert_eq!(find("sync")["direction"], "up");
    assert_eq!(find("sessionEnded")["kept"], false);
    assert!(events.iter().all(|line| line["at"].as_str().is_some()), "every line is dated");
    assert!(!server.stderr().contains(CANARY), "nor do the server's logs");
}

fn sandlink(state: &std::path::Path, config: &std::path::Path) -> Command {
    let mut command = Command::new(support::binary());
    command.env("SANDLINK_STATE_DIR", state).env("SANDLINK_CONFIG_DIR", config);
    command
}

/// Runs a management command with `--json` and parses what it printed.
fn json_of(command: &mut Command) -> (Option<i32>, Value) {
    let output = command.output().expect("sandlink runs");
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let value = serde_json::from_str(&text).unwrap_or_else(|error| {
        panic!("JSON output ({error}): {text}\nstderr: {}", String::from_utf8_lossy(&output.stderr))
    });
    (output.status.code(), value)
}

#[test]
fn the_command_line_should_show_stop_extend_snapshot_and_keep_alive_a_real_session_with_json() {
    let workspace = workspace_with(&[("data.txt", "kept\n")]);
    let state = tempfile::tempdir().expect("state dir");
    let config = tempfile::tempdir().expect("config dir");
    std::fs::write(config.path().join("config.toml"), "[prices.local]\nusdPerHour = 3.6\n").expect("config.toml");
    let kept = sandlink(state.path(), config.path())
        .args(["run", "--keep", "--workspace"])
        .arg(workspace.path())
        .args(["--", "cat data.txt"])
        .output()
        .expect("sandlink runs");
    assert_eq!(kept.status.code(), Some(0), "{}", String::from_utf8_lossy(&kept.stderr));
    let (_, listed) = json_of(sandlink(state.path(), config.path()).args(["sessions", "--json"]));
    let id = listed["sessions"][0]["sessionId"].as_str().expect("a kept session").to_string();
    assert_eq!(listed["sessions"][0]["cost"]["usdPerHour"], 3.6, "sessions list the cost: {listed}");
    let table = sandlink(state.path(), config.path()).arg("sessions").output().expect("sessions");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("COST") && table.contains("$0."), "{table}");

    let (code, status) = json_of(sandlink(state.path(), config.path()).args(["status", &id, "--json"]));
    assert_eq!(code, Some(0), "{status}");
    assert_eq!(status["sessionId"], id.as_str());
    assert_eq!(status["state"], "disconnected");
    assert_eq!(status["driver"], "local");
    assert_eq!(status["cost"]["usdPerHour"], 3.6, "{status}");
    let human = sandlink(state.path(), config.path()).args(["status", &id]).output().expect("status");
    assert!(String::from_utf8_lossy(&human.stdout).contains("an hour"), "{}", String::from_utf8_lossy(&human.stdout));

    let (code, alive) = json_of(sandlink(state.path(), config.path()).args(["keepalive", &id, "--json"]));
    assert_eq!(code, Some(0), "{alive}");
    assert_eq!(alive, json!({ "sessionId": id, "expiresAt": null }), "a local sandbox does not expire");

    // A local sandbox has no lifetime to extend and no snapshots: the errors are JSON too, with their kind.
    let (code, extended) = json_of(sandlink(state.path(), config.path()).args(["extend", &id, "60", "--json"]));
    assert_eq!(code, Some(125), "{extended}");
    assert_eq!(extended["error"]["kind"], "unsupported", "{extended}");
    let (code, snapshot) = json_of(sandlink(state.path(), config.path()).args(["snapshot", &id, "--name", "before", "--json"]));
    assert_eq!(code, Some(125), "{snapshot}");
    assert_eq!(snapshot["error"]["kind"], "unsupported", "{snapshot}");
    let (_, still) = json_of(sandlink(state.path(), config.path()).args(["status", &id, "--json"]));
    assert_eq!(still["state"], "disconnected", "the session is kept again after each command: {still}");

    let (code, unknown) = json_of(sandlink(state.path(), config.path()).args(["status", "local-nosuch", "--json"]));
    assert_eq!(code, Some(125));
    assert_eq!(unknown["error"]["kind"], "unknownSession", "{unknown}");

    let (code, stopped) = json_of(sandlink(state.path(), config.path()).args(["stop", &id, "--json"]));
    assert_eq!(code, Some(0), "{stopped}");
    assert_eq!(stopped, json!({ "stopped": [id], "failed": [] }));
    let (code, none) = json_of(sandlink(state.path(), config.path()).args(["stop", "--all", "--json"]));
    assert_eq!((code, none), (Some(0), json!({ "stopped": [], "failed": [] })));
    let (_, after) = json_of(sandlink(state.path(), config.path()).args(["sessions", "--json"]));
    assert_eq!(after["sessions"].as_array().map(Vec::len), Some(0), "{after}");

    let audit = std::fs::read_to_string(state.path().join("audit.jsonl")).expect("the audit log");
    let ended = audit
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["event"] == "sessionEnded" && line["kept"] == false)
        .unwrap_or_else(|| panic!("the stop is audited:\n{audit}"));
    assert_eq!(ended["who"], "cli");
}

/// An hour on the Daytona and E2B test servers in simulated time: the engine's lifecycle manager reads the fake's
/// test clock, so Daytona's auto-stop and E2B's fixed end play out over an hour in seconds.
mod simulated_time {
    use super::*;
    use std::sync::{Arc, Mutex};

    use sandlink::engine::lifecycle::Clock;
    use sandlink::engine::{Engine, Events};
    use sandlink::protocol::{
        ConnectParams, ExitParams, OutputParams, PreviewReadyParams, RunParams, SessionStateParams, SyncStateParams,
        TimeoutWarningParams,
    };
    use support::fake::FakeProcess;
    use time::OffsetDateTime;

    const API_KEY: &str = "dtn_sandlink_policy_key_5b1c";
    const E2B_API_KEY: &str = "e2b_sandlink_policy_key_9e27c1";

    /// A provider's test server, what the engine needs to reach it, and what it calls a sandbox that is up.
    struct Provider {
        driver: Arc<dyn sandlink::drivers::Driver>,
        settings: Value,
        up: &'static str,
        /// How many requests that move the sandbox's end the hour needs at least (E2B: its fixed end), if any.
        extensions_needed: Option<usize>,
    }

    /// The fake's clock as the engine sees it: set by the test after each advance.
    struct FakeClock(Mutex<OffsetDateTime>);

    impl Clock for FakeClock {
        fn now(&self) -> OffsetDateTime {
            *self.0.lock().expect("the clock")
        }
    }

    #[derive(Default)]
    struct Heard {
        warnings: Mutex<Vec<TimeoutWarningParams>>,
        exits: Mutex<Vec<ExitParams>>,
    }

    #[async_trait::async_trait]
    impl Events for Heard {
        async fn output(&self, _params: OutputParams) {}
        async fn exit(&self, params: ExitParams) {
            self.exits.lock().expect("exits").push(params);
        }
        async fn session_state(&self, _params: SessionStateParams) {}
        async fn sync_state(&self, _params: SyncStateParams) {}
        async fn preview_ready(&self, _params: PreviewReadyParams) {}
        async fn timeout_warning(&self, params: TimeoutWarningParams) {
            self.warnings.lock().expect("warnings").push(params);
        }
    }

    struct Setup {
        fake: FakeProcess,
        provider: Provider,
        clock: Arc<FakeClock>,
        heard: Arc<Heard>,
        engine: Engine,
        _dirs: (tempfile::TempDir, tempfile::TempDir),
    }

    fn fake_now(fake: &FakeProcess) -> OffsetDateTime {
        let answer = fake.admin("GET", "/_admin/clock", None);
        OffsetDateTime::parse(answer["now"].as_str().expect("the fake's clock"), &time::format_description::well_known::Rfc3339)
            .expect("RFC 3339")
    }

    fn setup() -> Option<Setup> {
        let fake = FakeProcess::start("Daytona", "SANDLINK_DAYTONA_FAKE_SERVER", "daytona_server.py", &["--api-key", API_KEY])?;
        // The engine reads the Daytona key as the driver does everywhere: from the environment.
        std::env::set_var("DAYTONA_API_KEY", API_KEY);
        let provider = Provider {
            driver: Arc::new(sandlink::drivers::daytona::Driver::new()),
            settings: json!({
                "apiUrl": format!("http://127.0.0.1:{}/api", fake.port),
                "streamKeepaliveSeconds": 1,
                "autoStopMinutes": 15,
                "labels": { "purpose": "sandlink-policy-tests" },
            }),
            up: "started",
            extensions_needed: None,
        };
        setup_with(fake, provider)
    }

    /// E2B with a five-minute timeout: its sandbox would end twelve times over in the hour unless extended.
    fn setup_e2b() -> Option<Setup> {
        let fake = FakeProcess::start("E2B", "SANDLINK_E2B_FAKE_SERVER", "e2b_server.py", &["--api-key", E2B_API_KEY])?;
        std::env::set_var("E2B_API_KEY", E2B_API_KEY);
        let provider = Provider {
            driver: Arc::new(sandlink::drivers::e2b::Driver::new()),
            settings: json!({
                "apiUrl": format!("http://127.0.0.1:{}", fake.port),
                "domain": format!("localhost:{}", fake.port),
                "timeoutSeconds": 300,
                "streamKeepaliveSeconds": 1,
            }),
            up: "running",
            // Each extension moves the end by the session's 300 s: 3,600 s need at least eleven.
            extensions_needed: Some(11),
        };
        setup_with(fake, provider)
    }

    fn setup_with(fake: FakeProcess, provider: Provider) -> Option<Setup> {
        let clock = Arc::new(FakeClock(Mutex::new(fake_now(&fake))));
        let heard = Arc::new(Heard::default());
        let (state, config) = (tempfile::tempdir().expect("state"), tempfile::tempdir().expect("config"));
        let drivers = vec![provider.driver.clone()];
        let engine = Engine::with_dirs(heard.clone(), drivers, state.path().to_path_buf(), config.path().to_path_buf())
            .with_lifecycle_clock(clock.clone(), Duration::from_millis(20));
        Some(Setup { fake, provider, clock, heard, engine, _dirs: (state, config) })
    }

    impl Setup {
        async fn connect(&self) -> String {
            let params = ConnectParams {
                driver: Some(self.provider.driver.id().to_string()),
                settings: self.provider.settings.as_object().cloned(),
                sync: Some(false),
                ..ConnectParams::default()
            };
            let session = self.engine.connect(params, None, &sandlink::progress::NoProgress).await.expect("connect");
            session.session_id
        }

        /// Moves the fake's clock and then the engine's, and gives the manager a few looks.
        async fn advance(&self, seconds: u64) {
            self.fake.admin("POST", "/_admin/clock", Some(json!({ "advanceSeconds": seconds })));
            *self.clock.0.lock().expect("the clock") = fake_now(&self.fake);
            tokio::time::sleep(Duration::from_millis(80)).await;
        }

        /// The state of the session's sandbox (each test has a test server of its own, so its only sandbox for E2B,
        /// whose admin listing has no labels), or "gone" when the provider no longer has it.
        fn sandbox_state(&self, session_id: &str) -> String {
            let all = self.fake.admin("GET", "/_admin/sandboxes", None);
            let sandboxes: Vec<Value> = all["sandboxes"].as_array().cloned().unwrap_or_default();
            let sandbox = match sandboxes.iter().find(|sandbox| sandbox.get("labels").is_some()) {
                Some(_) => sandboxes.iter().find(|sandbox| sandbox["labels"]["sandlink-session"] == session_id),
                None => sandboxes.first(),
            };
            sandbox.and_then(|sandbox| sandbox["state"].as_str()).unwrap_or("gone").to_string()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_hour_long_run_should_be_warned_twice_and_end_at_its_limit_without_an_auto_stop() {
        let Some(setup) = setup() else { return };
        an_hour_long_run_should_be_warned_twice_and_end_at_its_limit(setup).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_hour_long_e2b_run_should_outlive_twelve_sandbox_timeouts_and_end_at_its_limit() {
        let Some(setup) = setup_e2b() else { return };
        an_hour_long_run_should_be_warned_twice_and_end_at_its_limit(setup).await;
    }

    /// A run with a one-hour limit and no one at the editor: the sandbox stays up all along (the run in flight is the
    /// activity that extends or keeps it), the run is warned at 30 and 50 minutes once each, snapshotted and stopped
    /// at 60 with `runLimit`.
    async fn an_hour_long_run_should_be_warned_twice_and_end_at_its_limit(setup: Setup) {
        let session = setup.connect().await;
        let params = RunParams {
            session_id: session.clone(),
            command: "echo started; sleep 7200".into(),
            task: None,
            args: None,
            cwd: None,
            env: None,
            stdin: false,
            timeout_ms: None,
            detach: false,
            max_duration_seconds: Some(3600),
            warn_at_seconds: None,
            pty: None,
        };
        let (run_id, answered) = setup.engine.run(params).await.expect("the run starts");
        let _ = answered.send(());
        // Sixty simulated minutes and a little more, in steps shorter than Daytona's 15-minute auto-stop.
        for step in 0..125 {
            setup.advance(30).await;
            if !setup.heard.exits.lock().expect("exits").is_empty() {
                assert!(step >= 119, "not stopped before its hour (step {step})");
                break;
            }
            assert_eq!(setup.sandbox_state(&session), setup.provider.up, "never stopped by the provider (step {step})");
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while setup.heard.exits.lock().expect("exits").is_empty() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let exits = setup.heard.exits.lock().expect("exits").clone();
        assert_eq!(exits.len(), 1, "{exits:?}");
        assert_eq!(exits[0].run_id, run_id);
        assert_eq!(exits[0].reason, Some(sandlink::protocol::ExitReason::RunLimit), "{exits:?}");
        let warnings: Vec<(Option<String>, u64)> = setup
            .heard
            .warnings
            .lock()
            .expect("warnings")
            .iter()
            .filter(|warning| warning.reason == Some(sandlink::protocol::LimitReason::RunLimit))
            .map(|warning| (warning.run_id.clone(), warning.seconds_left.div_ceil(60)))
            .collect();
        assert_eq!(warnings, vec![(Some(run_id.clone()), 30), (Some(run_id.clone()), 10)], "at 30 and 50 minutes");
        if let Some(needed) = setup.provider.extensions_needed {
            let log = setup.fake.admin("GET", "/_admin/requests?plane=control", None);
            let extensions = log["requests"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|request| request["method"] == "POST" && request["path"].as_str().is_some_and(|path| path.ends_with("/timeout")))
                .count();
            assert!(extensions >= needed, "the sandbox's end was moved {extensions} times, not at least {needed}");
        }
        let audit = std::fs::read_to_string(setup.engine.audit_path()).expect("the audit log");
        assert!(audit.contains("\"why\":\"runLimit\""), "Daytona and E2B can snapshot, so it did before the stop:\n{audit}");
        setup.engine.disconnect(sandlink::protocol::DisconnectParams { session_id: session, keep: false }).await.expect("disconnect");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keepalives_should_keep_an_idle_daytona_sandbox_past_its_auto_stop() {
        let Some(setup) = setup() else { return };
        let session = setup.connect().await;
        // Twenty simulated minutes with no run: only keepalives say the session is in use.
        for step in 0..40 {
            setup.engine.keepalive(&session).expect("keepalive");
            setup.advance(30).await;
            assert_eq!(setup.sandbox_state(&session), "started", "kept alive at {} simulated seconds", (step + 1) * 30);
        }
        let timeout_warnings = setup.heard.warnings.lock().expect("warnings").len();
        assert_eq!(timeout_warnings, 0, "a kept-alive session is never warned");
        setup.engine.disconnect(sandlink::protocol::DisconnectParams { session_id: session, keep: false }).await.expect("disconnect");
    }
}

/// E2B's sandboxes end at a fixed time; keepalives with no run in flight must move it, on the E2B test server.
#[test]
fn keepalives_should_keep_an_idle_e2b_sandbox_past_its_timeout() {
    const E2B_KEY: &str = "e2b_sandlink_policy_key_0c4d7a";
    let Some(fake) = support::fake::FakeProcess::start("E2B", "SANDLINK_E2B_FAKE_SERVER", "e2b_server.py", &["--api-key", E2B_KEY])
    else {
        return;
    };
    let server = Server::start_with(StartOptions { env: vec![("E2B_API_KEY".into(), E2B_KEY.into())], ..StartOptions::default() });
    let workspace = workspace_with(&[]);
    let settings = json!({
        "apiUrl": format!("http://127.0.0.1:{}", fake.port),
        "domain": format!("localhost:{}", fake.port),
        "timeoutSeconds": 4,
        "keepaliveIdleSeconds": 3,
        "streamKeepaliveSeconds": 1,
    });
    let session = session_id(&server.connect("e2b", settings, workspace.path()));
    let running = || {
        let all = fake.admin("GET", "/_admin/sandboxes", None);
        all["sandboxes"].as_array().into_iter().flatten().any(|sandbox| sandbox["state"] == "running")
    };
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(9) {
        server.request("sandlink/keepalive", json!({ "sessionId": session })).expect("keepalive");
        std::thread::sleep(Duration::from_millis(700));
    }
    assert!(running(), "the sandbox outlived its 4 s timeout on keepalives alone");
    let outcome = server.run_to_exit(json!({ "sessionId": session, "command": "echo still-here" }));
    assert_eq!(outcome.stdout, "still-here\n", "{}", outcome.exit);
}
