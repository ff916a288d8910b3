//! Behaviours every driver must share, written once and run against each driver through a `DriverFixture`.
//!
//! A driver's test file builds its fixture and calls `parity_tests!(fixture_fn)`, which generates one `#[test]`
//! per behaviour below, so the local, docker and e2b drivers are held to the very same assertions.
#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{self, Server, StartOptions};

pub mod sync;

/// How to connect one driver in tests, and how to look at its sandbox from outside.
pub struct DriverFixture {
    pub driver: &'static str,
    pub settings: Value,
    /// Extra environment for the server (API keys for fakes, DOCKER_HOST).
    pub server_env: Vec<(String, String)>,
    /// A command line that serves HTTP on the given port inside the sandbox, answering GET / with a body
    /// containing the text "sandlink-preview".
    pub http_server_command: fn(u16) -> String,
    /// Whether the sandbox of a session still exists, judged from outside sandlink.
    pub sandbox_exists: fn(&Value) -> bool,
    /// Keeps external resources (a fake server process) alive for the fixture's lifetime.
    pub guard: Option<Box<dyn std::any::Any>>,
}

impl DriverFixture {
    pub fn start_server(&self) -> Server {
        self.start_server_with(StartOptions::default())
    }

    pub fn start_server_with(&self, mut options: StartOptions) -> Server {
        options.env.extend(self.server_env.iter().cloned());
        Server::start_with(options)
    }

    /// A server connected to a fresh workspace holding `files`; returns the session id too.
    pub fn connected(&self, files: &[(&str, &str)]) -> (Server, tempfile::TempDir, String) {
        let workspace = support::workspace_with(files);
        let server = self.start_server();
        let session = server.connect(self.driver, self.settings.clone(), workspace.path());
        assert_eq!(session["state"], "active", "a new session is active: {session}");
        let session_id = session["sessionId"].as_str().expect("sessionId").to_string();
        (server, workspace, session_id)
    }
}

/// Generates one test per shared behaviour for a fixture constructor (`fn() -> Option<DriverFixture>`; `None`
/// skips when the service is absent outside CI).
#[macro_export]
macro_rules! parity_tests {
    ($fixture:path) => {
        $crate::parity_tests!(@each $fixture,
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
            preview_should_reach_a_server_in_the_sandbox,
            a_server_started_by_a_run_should_be_offered_as_a_preview_unasked,
            status_should_report_an_active_session,
            disconnect_should_remove_the_sandbox,
            unknown_run_should_be_a_clear_error,
            capabilities_should_say_what_the_driver_does
        );
    };
    (@each $fixture:path, $($behaviour:ident),+) => {
        $(
            #[test]
            fn $behaviour() {
                let Some(fixture) = $fixture() else { return };
                $crate::parity::$behaviour(&fixture);
            }
        )+
    };
}

fn run(server: &Server, session_id: &str, extra: Value) -> support::RunOutcome {
    let mut params = json!({ "sessionId": session_id });
    for (key, value) in extra.as_object().expect("run params are an object") {
        params[key] = value.clone();
    }
    server.run_to_exit(params)
}

pub fn run_should_stream_stdout_stderr_and_exit_code(fixture: &DriverFixture) {
    let (server, _workspace, session_id) = fixture.connected(&[]);
    let outcome = run(&server, &session_id, json!({ "command": "echo out; echo err >&2; exit 3" }));
    assert_eq!(outcome.stdout, "out\n");
    assert_eq!(outcome.stderr, "err\n");
    assert_eq!(outcome.exit_code(), Some(3));
    assert_eq!(outcome.exit["cancelled"], false);
    assert_eq!(outcome.exit["timedOut"], false);
    let log_path = outcome.exit["logPath"].as_str().expect("the exit names the run's log file");
    let log = std::fs::read_to_string(log_path).expect("the run log is readable");
    assert!(log.contains("out\n") && log.contains("err\n"), "the log holds the full output: {log:?}");
}

pub fn run_with_args_should_pass_arguments_without_a_shell(fixture: &DriverFixture) {
    let (server, _workspace, session_id) = fixture.connected(&[]);
    let outcome = run(
        &server,
        &session_id,
        json!({ "command": "printf", "args": ["<%s>\n", "a b", "c;d", "$HOME", "'q'"] }),
    );
    assert_eq!(outcome.stdout, "<a b>\n<c;d>\n<$HOME>\n<'q'>\n");
    assert_eq!(outcome.exit_code(), Some(0));
}

pub fn run_should_feed_stdin_until_eof(fixture: &DriverFixture) {
    let (server, _workspace, session_id) = fixture.connected(&[]);
    if !claims_capability(&server, fixture.driver, "stdin") {
        // A provider without a way to write to a command's input (Vercel): input is refused as `unsupported`, and
        // the run itself still works. It waits a moment first: with an empty input it would otherwise end (and leave
        // the table of runs) before the input request arrives, which is then `unknownRun`.
        let run_id = server.start_run(json!({ "sessionId": session_id, "command": "sleep 1; cat; echo done", "stdin": true }));
        let error = server.request_error("sandlink/input", json!({ "runId": run_id, "text": "first line\n", "eof": true }));
        assert_eq!(error.kind.as_deref(), Some("unsupported"), "{error:?}");
        assert!(error.message.contains(fixture.driver), "the message names the driver: {}", error.message);
        let outcome = server.collect_run(&run_id, support::DEFAULT_TIMEOUT);
        assert_eq!(outcome.stdout, "done\n", "the command read an empty input: {}", outcome.exit);
        return;
    }
    let run_id = server.start_run(json!({ "sessionId": session_id, "command": "cat; echo done", "stdin": true }));
    server.request("sandlink/input", json!({ "runId": run_id, "text": "first line\n" })).expect("input");
    server.request("sandlink/input", json!({ "runId": run_id, "text": "second\n", "eof": true })).expect("input with eof");
    let outcome = server.collect_run(&run_id, support::DEFAULT_TIMEOUT);
    assert_eq!(outcome.stdout, "first line\nsecond\ndone\n");
    assert_eq!(outcome.exit_code(), Some(0));
}

pub fn cancel_should_end_a_process_tree_that_ignores_sigterm(fixture: &DriverFixture) {
    let (server, _workspace, session_id) = fixture.connected(&[]);
    // Fractional sleep lengths make the run's processes recognisable in /proc without touching anything else.
    let unique = format!("{:05}{:04}", std::process::id() % 100_000, std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|elapsed| elapsed.subsec_nanos()).unwrap_or_default() % 10_000);
    let marker = format!(".{unique}");
    let command = format!(
        "trap '' TERM; (trap '' TERM; sleep 3000{marker}) & sh -c \"trap '' TERM; sleep 3001{marker}; true\" & echo started; wait"
    );
    let run_id = server.start_run(json!({ "sessionId": session_id, "command": command }));
    server.wait_notification("sandlink/output", Duration::from_secs(30), |params| {
        params["runId"] == run_id && params["text"].as_str().unwrap_or_default().contains("started")
    });
    let started = Instant::now();
    server.request("sandlink/cancel", json!({ "runId": run_id })).expect("cancel is accepted");
    let outcome = server.collect_run(&run_id, Duration::from_secs(30));
    assert_eq!(outcome.exit["cancelled"], true, "exit says cancelled: {}", outcome.exit);
    assert!(started.elapsed() < Duration::from_secs(15), "cancel took {:?}", started.elapsed());
    // Give the kernel a moment to reap, then nothing carrying the marker may be left anywhere.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !support::processes_matching(&marker).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(support::processes_matching(&marker), Vec::<u32>::new(), "no process of the run is left");
}

pub fn timeout_should_stop_the_run_and_say_so(fixture: &DriverFixture) {
    let (server, _workspace, session_id) = fixture.connected(&[]);
    let started = Instant::now();
    let outcome = run(&server, &session_id, json!({ "command": "echo begin; sleep 60", "timeoutMs": 500 }));
    assert_eq!(outcome.exit["timedOut"], true);
    assert_eq!(outcome.exit["cancelled"], false);
    assert_eq!(outcome.stdout, "begin\n");
    assert!(started.elapsed() < Duration::from_secs(20), "the timeout took {:?}", started.elapsed());
}

pub fn output_should_keep_split_utf8_whole_and_mark_invalid_bytes(fixture: &DriverFixture) {
    let (server, _workspace, session_id) = fixture.connected(&[]);
    // The euro sign's three bytes arrive in two writes a while apart, so they land in different reads.
    let outcome = run(
        &server,
        &session_id,
        json!({ "command": "printf '\\342\\202'; sleep 0.3; printf '\\254 ok\\n'; printf 'a\\377b\\n'" }),
    );
    assert_eq!(outcome.stdout, "€ ok\na\u{FFFD}b\n");
    for output in &outcome.outputs {
        let text = output["text"].as_str().unwrap_or_default();
        assert!(!text.starts_with('\u{FFFD}') || text.contains('a'), "no piece starts with a broken character: {text:?}");
    }
}

pub fn run_should_refuse_a_cwd_outside_the_root(fixture: &DriverFixture) {
    let (server, _workspace, session_id) = fixture.connected(&[]);
    let error = server.request_error(
        "sandlink/run",
        json!({ "sessionId": session_id, "command": "pwd", "cwd": "../.." }),
    );
    assert_eq!(error.kind.as_deref(), Some("pathOutsideWorkspace"), "{error:?}");
    assert!(error.message.contains("outside"), "the message explains: {}", error.message);
    let outcome = run(&server, &session_id, json!({ "command": "echo still-serving" }));
    assert_eq!(outcome.stdout, "still-serving\n");
}

pub fn run_should_report_a_signal_death(fixture: &DriverFixture) {
    let (server, _workspace, session_id) = fixture.connected(&[]);
    let outcome = run(&server, &session_id, json!({ "command": "kill -KILL $$" }));
    // Drivers that see the signal report it; those behind a runtime that folds it into the shell's convention
    // (bubblewrap, docker exec) report 128 + 9. Either way a person can tell what happened.
    let by_signal = outcome.exit["exitCode"].is_null() && outcome.exit["signal"] == "SIGKILL";
    let by_convention = outcome.exit["exitCode"] == 137;
    assert!(by_signal || by_convention, "a SIGKILL death is reported: {}", outcome.exit);
    assert_eq!(outcome.exit["cancelled"], false);
}

pub fn workspace_files_should_be_visible_to_runs(fixture: &DriverFixture) {
    let (server, _workspace, session_id) = fixture.connected(&[
        ("src/main.txt", "hello from the workspace\n"),
        (".gitignore", "build/\n"),
        ("build/out.bin", "ignored\n"),
    ]);
    let outcome = run(&server, &session_id, json!({ "command": "cat src/main.txt; ls build 2>/dev/null || echo no-build" }));
    assert_eq!(outcome.stdout, "hello from the workspace\nno-build\n");
    let nested = run(&server, &session_id, json!({ "command": "cat main.txt", "cwd": "src" }));
    assert_eq!(nested.stdout, "hello from the workspace\n");
}

pub fn output_should_show_paths_in_the_root_as_workspace_paths(fixture: &DriverFixture) {
    let (server, workspace, session_id) = fixture.connected(&[("test.js", "throw new Error('boom')\n")]);
    let status = server.request("sandlink/status", json!({ "sessionId": session_id })).expect("status");
    let root = status["remoteRoot"].as_str().expect("remote root").trim_end_matches('/').to_string();
    // As a stack trace prints it, on both streams; the command's own text is not mapped, only its output. The root
    // is put together by the shell, so a test server that rewrites sandbox paths in command text leaves it alone.
    let (head, tail) = root.split_at(root.len() / 2);
    let command = format!(
        "h='{head}'; t='{tail}'; printf '    at %s%s/test.js:1:7\\n' \"$h\" \"$t\"; printf 'x %s%s/test.js\\n' \"$h\" \"$t\" >&2"
    );
    let outcome = run(&server, &session_id, json!({ "command": command }));
    let workspace = workspace.path().display().to_string();
    assert_eq!(outcome.stdout, format!("    at {workspace}/test.js:1:7\n"), "stdout maps the root to the workspace");
    assert_eq!(outcome.stderr, format!("x {workspace}/test.js\n"), "stderr too");
    let log = std::fs::read_to_string(outcome.exit["logPath"].as_str().expect("log path")).expect("log");
    assert!(log.contains(&format!("{root}/test.js:1:7")), "the log keeps what the command wrote: {log:?}");
}

pub fn preview_should_reach_a_server_in_the_sandbox(fixture: &DriverFixture) {
    let (server, _workspace, session_id) = fixture.connected(&[("index.html", "sandlink-preview\n")]);
    let port = free_port();
    let run_id = server.start_run(json!({ "sessionId": session_id, "command": (fixture.http_server_command)(port) }));
    let answer = server
        .request("sandlink/preview", json!({ "sessionId": session_id, "port": port }))
        .expect("preview answers a URL");
    let url = answer["url"].as_str().expect("url").to_string();
    let ready = server.wait_notification("sandlink/previewReady", Duration::from_secs(10), |params| params["port"] == port);
    assert_eq!(ready["url"], url);
    let body = http_get_with_retry(&url, Duration::from_secs(20));
    assert!(body.contains("sandlink-preview"), "the preview serves the sandbox's page: {body:?}");
    let status = server.request("sandlink/status", json!({ "sessionId": session_id })).expect("status");
    assert!(status["previews"].as_array().is_some_and(|previews| previews.iter().any(|preview| preview["port"] == port)));
    server.request("sandlink/cancel", json!({ "runId": run_id })).expect("cancel the server");
    server.collect_run(&run_id, Duration::from_secs(30));
}

pub fn a_server_started_by_a_run_should_be_offered_as_a_preview_unasked(fixture: &DriverFixture) {
    let (server, _workspace, session_id) = fixture.connected(&[("index.html", "noticed\n")]);
    let drivers = server.request("sandlink/drivers", json!({})).expect("drivers");
    let detects = drivers["drivers"]
        .as_array()
        .and_then(|all| all.iter().find(|driver| driver["id"] == fixture.driver))
        .is_some_and(|driver| driver["capabilities"]["detectPorts"] == true);
    let silent = free_port();
    if !detects {
        // The driver does not look at listening ports (a look costs several provider requests there): a preview is
        // answered at once, as before, and nothing is offered unasked.
        let answer = server.request("sandlink/preview", json!({ "sessionId": session_id, "port": silent }));
        assert!(answer.is_ok_and(|answer| answer["url"].is_string()), "a preview is answered without a look");
        return;
    }
    let error = server.request_error("sandlink/preview", json!({ "sessionId": session_id, "port": silent }));
    assert_eq!(error.kind.as_deref(), Some("portNotListening"), "{error:?}");
    assert!(error.message.contains(&silent.to_string()), "{}", error.message);
    let port = free_port();
    // The server starts a moment into the run, as `npm start` does, so the watcher sees it appear.
    let command = format!("sleep 1; {}", (fixture.http_server_command)(port));
    let run_id = server.start_run(json!({ "sessionId": session_id, "command": command }));
    // Cloud drivers look every 10 s (a look is an API call there), this machine's every 2 s.
    let ready = server.wait_notification("sandlink/previewReady", Duration::from_secs(30), |params| params["port"] == port);
    let url = ready["url"].as_str().expect("url").to_string();
    let body = http_get_with_retry(&url, Duration::from_secs(20));
    assert!(body.contains("noticed"), "the noticed preview serves the page: {body:?}");
    let status = server.request("sandlink/status", json!({ "sessionId": session_id })).expect("status");
    assert!(status["previews"].as_array().is_some_and(|previews| previews.iter().any(|preview| preview["port"] == port)));
    server.request("sandlink/cancel", json!({ "runId": run_id })).expect("cancel the server");
    server.collect_run(&run_id, Duration::from_secs(30));
}

/// Where the sandbox shares the host's network (the local driver), the host's own ports show in its TCP tables: only
/// the processes that hold each socket tell the sandbox's servers from the host's, and the host's are never offered.
pub fn a_server_on_the_host_should_not_be_offered_as_a_preview(fixture: &DriverFixture) {
    let (server, _workspace, session_id) = fixture.connected(&[("index.html", "ours\n")]);
    let ours = free_port();
    let run_id = server.start_run(json!({ "sessionId": session_id, "command": format!("sleep 1; {}", (fixture.http_server_command)(ours)) }));
    // Bound after the watch's first look, so it is new to the watch as the sandbox's server is.
    std::thread::sleep(Duration::from_millis(500));
    let host = std::net::TcpListener::bind("127.0.0.1:0").expect("a listener on the host");
    let theirs = host.local_addr().expect("its address").port();
    // The look that offers the sandbox's server (every 2 s, the server listens from 1 s) saw the host's port too.
    server.wait_notification("sandlink/previewReady", Duration::from_secs(30), |params| params["port"] == ours);
    let offered: Vec<Value> = server
        .history()
        .into_iter()
        .filter(|message| message["method"] == "sandlink/previewReady")
        .map(|message| message["params"]["port"].clone())
        .collect();
    assert!(!offered.contains(&json!(theirs)), "the host's port {theirs} was offered as the sandbox's: {offered:?}");
    let status = server.request("sandlink/status", json!({ "sessionId": session_id })).expect("status");
    let previews = status["previews"].as_array().cloned().unwrap_or_default();
    assert!(!previews.iter().any(|preview| preview["port"] == theirs), "nor listed: {previews:?}");
    server.request("sandlink/cancel", json!({ "runId": run_id })).expect("cancel the server");
    server.collect_run(&run_id, Duration::from_secs(30));
    drop(host);
}

pub fn status_should_report_an_active_session(fixture: &DriverFixture) {
    let (server, workspace, session_id) = fixture.connected(&[("a.txt", "a")]);
    let status = server.request("sandlink/status", json!({ "sessionId": session_id })).expect("status");
    assert_eq!(status["sessionId"], session_id);
    assert_eq!(status["driver"], fixture.driver);
    assert_eq!(status["state"], "active");
    assert_eq!(status["workspaceFolder"], support::file_uri(workspace.path()));
    assert!(status["remoteRoot"].as_str().is_some_and(|root| root.starts_with('/')));
    assert!(status["sync"]["lastSyncAt"].is_string(), "the initial sync is recorded: {status}");
    let sessions = server.request("sandlink/sessions", json!({})).expect("sessions");
    assert!(sessions["sessions"].as_array().is_some_and(|all| all.iter().any(|session| session["sessionId"] == session_id)));
}

pub fn disconnect_should_remove_the_sandbox(fixture: &DriverFixture) {
    let (server, _workspace, session_id) = fixture.connected(&[("a.txt", "a")]);
    let status = server.request("sandlink/status", json!({ "sessionId": session_id })).expect("status");
    assert!((fixture.sandbox_exists)(&status), "the sandbox exists while connected");
    server.request("sandlink/disconnect", json!({ "sessionId": session_id })).expect("disconnect");
    assert!(!(fixture.sandbox_exists)(&status), "the sandbox is gone after disconnect");
    let state = server.wait_notification("sandlink/sessionState", Duration::from_secs(5), |params| {
        params["sessionId"] == session_id && params["state"] == "disconnected"
    });
    assert_eq!(state["state"], "disconnected");
    let error = server.request_error("sandlink/status", json!({ "sessionId": session_id }));
    assert_eq!(error.kind.as_deref(), Some("unknownSession"));
}

pub fn unknown_run_should_be_a_clear_error(fixture: &DriverFixture) {
    let (server, _workspace, _session_id) = fixture.connected(&[]);
    for method in ["sandlink/cancel", "sandlink/input"] {
        let mut params = json!({ "runId": "run-does-not-exist" });
        if method == "sandlink/input" {
            params["text"] = json!("x");
        }
        let error = server.request_error(method, params);
        assert_eq!(error.kind.as_deref(), Some("unknownRun"), "{method}: {error:?}");
        assert!(error.message.contains("run-does-not-exist"));
    }
}

/// What `DriverInfo.capabilities` claims is what the driver does: each claimed operation works, and each one not
/// claimed answers `unsupported` (never a silent success, never another kind of error). The behaviours behind
/// exec, stdin, cancel, upload and preview have their own tests above; this holds the flags to them.
pub fn capabilities_should_say_what_the_driver_does(fixture: &DriverFixture) {
    let (server, _workspace, session_id) = fixture.connected(&[("a.txt", "a")]);
    let drivers = server.request("sandlink/drivers", json!({})).expect("drivers");
    let info = drivers["drivers"]
        .as_array()
        .and_then(|all| all.iter().find(|driver| driver["id"] == fixture.driver))
        .cloned()
        .expect("the driver is listed");
    let claims = |name: &str| info["capabilities"][name].as_bool().unwrap_or_else(|| panic!("capability {name} is a boolean: {info}"));
    for always in ["exec", "cancel", "upload"] {
        assert!(claims(always), "every driver runs, cancels and uploads: {info}");
    }
    let expect = |name: &str, method: &str, params: Value, check: &dyn Fn(&Value)| {
        if claims(name) {
            let answer = server.request(method, params).unwrap_or_else(|error| panic!("{name} is claimed, {method} failed: {error:?}"));
            check(&answer);
        } else {
            let error = server.request_error(method, params);
            assert_eq!(error.kind.as_deref(), Some("unsupported"), "{name} is not claimed, so {method} is unsupported: {error:?}");
        }
    };
    expect("extend", "sandlink/extend", json!({ "sessionId": session_id, "seconds": 600 }), &|answer| {
        assert!(answer["expiresAt"].is_string(), "{answer}");
    });
    expect("snapshot", "sandlink/snapshot", json!({ "sessionId": session_id }), &|answer| {
        assert!(answer["snapshotId"].as_str().is_some_and(|id| !id.is_empty()), "{answer}");
    });
    expect("download", "sandlink/sync", json!({ "sessionId": session_id, "direction": "down" }), &|answer| {
        assert!(answer["downloaded"].is_u64(), "{answer}");
    });
    let status = server.request("sandlink/status", json!({ "sessionId": session_id })).expect("status");
    assert_eq!(status["resources"].is_object(), claims("metrics"), "resources are reported exactly when metrics are claimed: {status}");
    if !claims("stdin") {
        let run_id = server.start_run(json!({ "sessionId": session_id, "command": "sleep 5", "stdin": true }));
        let error = server.request_error("sandlink/input", json!({ "runId": run_id, "text": "x" }));
        assert_eq!(error.kind.as_deref(), Some("unsupported"), "{error:?}");
        server.request("sandlink/cancel", json!({ "runId": run_id })).expect("cancel");
        server.collect_run(&run_id, Duration::from_secs(30));
    }
    if !claims("preview") {
        let error = server.request_error("sandlink/preview", json!({ "sessionId": session_id, "port": free_port() }));
        assert_eq!(error.kind.as_deref(), Some("unsupported"), "{error:?}");
    }
}

/// Whether `sandlink/drivers` says `driver` has the capability `name`.
fn claims_capability(server: &Server, driver: &str, name: &str) -> bool {
    let drivers = server.request("sandlink/drivers", json!({})).expect("drivers");
    let info = drivers["drivers"].as_array().and_then(|all| all.iter().find(|info| info["id"] == driver)).cloned().expect("the driver is listed");
    info["capabilities"][name].as_bool().unwrap_or_else(|| panic!("capability {name} is a boolean: {info}"))
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|listener| listener.local_addr()).map(|address| address.port()).expect("a free port")
}

/// GETs a URL over plain HTTP/1.0 until it answers (servers in sandboxes take a moment to start).
pub fn http_get_with_retry(url: &str, limit: Duration) -> String {
    use std::io::{Read, Write};
    let parsed = url::Url::parse(url).expect("a valid URL");
    let host = parsed.host_str().expect("a host").to_string();
    let port = parsed.port_or_known_default().expect("a port");
    // The query too: a preview URL may carry its access token there (Daytona's `DAYTONA_SANDBOX_AUTH_KEY`).
    let path = match parsed.query() {
        Some(query) => format!("{}?{query}", parsed.path()),
        None => parsed.path().to_string(),
    };
    let deadline = Instant::now() + limit;
    loop {
        let attempt = (|| -> std::io::Result<String> {
            // `*.localhost` is loopback (RFC 6761) as browsers resolve it, though the system resolver may not know it;
            // cloud drivers pointed at a local test server answer previews in that form.
            let address = if host.ends_with(".localhost") { "127.0.0.1" } else { host.as_str() };
            let mut stream = std::net::TcpStream::connect((address, port))?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
            let mut body = String::new();
            stream.read_to_string(&mut body)?;
            Ok(body)
        })();
        match attempt {
            Ok(body) if body.contains("200") => return body,
            _ if Instant::now() >= deadline => panic!("{url} did not answer within {limit:?}: {attempt:?}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The `local` driver's fixture: always available, its sandbox is a directory on this machine.
pub fn local_fixture() -> Option<DriverFixture> {
    Some(DriverFixture {
        driver: "local",
        settings: Value::Null,
        server_env: Vec::new(),
        http_server_command: |port| format!("exec python3 -m http.server {port} --bind 127.0.0.1"),
        sandbox_exists: local_root_exists,
        guard: None,
    })
}

/// The local driver with Landlock and seccomp instead of bubblewrap, so that path runs where bubblewrap exists too.
pub fn local_landlock_fixture() -> Option<DriverFixture> {
    Some(DriverFixture { settings: json!({ "isolation": "landlock" }), ..local_fixture()? })
}

/// The local driver without confinement (a profile's `isolation = "none"`): the process-tree guarantees still hold.
pub fn local_unconfined_fixture() -> Option<DriverFixture> {
    Some(DriverFixture { settings: json!({ "isolation": "none" }), ..local_fixture()? })
}

/// Whether a local directory exists (for drivers whose sandbox is a local directory).
pub fn local_root_exists(session: &Value) -> bool {
    session["remoteRoot"].as_str().is_some_and(|root| Path::new(root).exists())
}
