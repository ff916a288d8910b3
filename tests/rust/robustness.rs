//! The server survives hostile and unlucky input: malformed frames, requests that wait forever, params that cannot
//! reach the OS, and a client that goes away. Every test drives the real binary over stdio.

mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use support::{Server, StartOptions};

/// How quickly a request that waits on nothing must be answered while others hang.
const PROMPT: Duration = Duration::from_millis(100);

/// Sends `bytes` raw, then checks the server answered the bad frame as expected and still serves a request.
fn assert_survives(server: &mut Server, what: &str, bytes: &[u8], expected_id: Value, expected_code: i64) {
    server.send_raw(bytes);
    let answer = server.wait_response_message(&expected_id, Duration::from_secs(10), what);
    let error = &answer["error"];
    assert_eq!(error["code"], expected_code, "{what}: {answer}");
    assert_eq!(error["data"]["kind"], "invalidMessage", "{what}: {answer}");
    assert!(error["message"].as_str().is_some_and(|message| message.contains("keeps serving") || message.contains("skipped")), "{what}: {answer}");
    let drivers = server.request("sandlink/drivers", json!({})).unwrap_or_else(|error| panic!("{what}: {error:?}"));
    assert!(drivers["drivers"].as_array().is_some_and(|drivers| !drivers.is_empty()), "{what}");
    assert!(server.is_running(), "{what}: the server must still run");
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut frame = format!("Content-Length: {}\r\n\r\n", body.len()).into_bytes();
    frame.extend_from_slice(body);
    frame
}

#[test]
fn every_malformed_frame_should_be_answered_and_the_next_request_served() {
    let mut server = Server::start();
    assert_survives(&mut server, "a body that is not JSON", b"Content-Length: 3\r\n\r\n{x}", Value::Null, -32700);

    let mut not_utf8 = br#"{"jsonrpc":"2.0","id":"utf8","method":"sandlink/status","params":{"sessionId":""#.to_vec();
    not_utf8.extend_from_slice(b"\xff\xfe\"}}");
    assert_survives(&mut server, "invalid UTF-8", &framed(&not_utf8), json!("utf8"), -32700);

    let surrogate = br#"{"jsonrpc":"2.0","id":424242,"method":"sandlink/status","params":{"sessionId":"\ud800"}}"#;
    assert_survives(&mut server, "a lone surrogate", &framed(surrogate), json!(424242), -32700);

    let old_version = br#"{"jsonrpc":"1.0","id":"v1","method":"sandlink/drivers"}"#;
    assert_survives(&mut server, "jsonrpc 1.0", &framed(old_version), json!("v1"), -32600);

    let mut letters = b"Content-Length: abc\r\n\r\n".to_vec();
    letters.extend_from_slice(br#"{"jsonrpc":"2.0","id":"lost","method":"sandlink/drivers"}"#);
    assert_survives(&mut server, "Content-Length: abc", &letters, Value::Null, -32700);

    assert_survives(&mut server, "a 20-digit length", b"Content-Length: 99999999999999999999\r\n\r\n{}", Value::Null, -32700);

    // None of these ended the server or any frame after them; the log says what was refused.
    assert!(server.stderr().contains("refused a message"), "{}", server.stderr());
}

#[test]
fn a_length_over_64_mib_should_be_refused_without_reading_it_and_the_next_frame_served() {
    let mut server = Server::start();
    // 64 MiB + 1 is announced, and a megabyte of it really follows: the server must neither wait for the rest nor
    // hold it, and must find the next frame.
    let mut bytes = format!("Content-Length: {}\r\n\r\n", 64 * 1024 * 1024 + 1).into_bytes();
    bytes.extend(std::iter::repeat_n(b'x', 1 << 20));
    let started = Instant::now();
    assert_survives(&mut server, "a 64 MiB + 1 length", &bytes, Value::Null, -32700);
    assert!(started.elapsed() < Duration::from_secs(10));
    let peak = support::peak_rss_bytes(server.pid()).expect("Linux reports VmHWM");
    assert!(peak < 48 * 1024 * 1024, "the refused body was not buffered: peak RSS {peak} bytes");
}

#[test]
fn unknown_methods_should_have_the_unknown_method_kind() {
    let server = Server::start();
    let error = server.request_error("sandlink/noSuchThing", json!({}));
    assert_eq!(error.code, -32601);
    assert_eq!(error.kind.as_deref(), Some("unknownMethod"), "{error:?}");
    assert_eq!(error.data["method"], "sandlink/noSuchThing");
    assert!(error.message.contains("sandlink/noSuchThing"), "{}", error.message);
    // An unknown notification is ignored, as LSP asks, and the server goes on.
    server.notify("sandlink/noSuchNotification", json!({}));
    server.notify("$/noSuchThing", json!({}));
    server.request("sandlink/drivers", json!({})).expect("still serving");
}

fn connected_local(server: &Server) -> (tempfile::TempDir, String) {
    let workspace = support::workspace_with(&[("a.txt", "a")]);
    let session = server.connect("local", Value::Null, workspace.path());
    (workspace, session["sessionId"].as_str().expect("sessionId").to_string())
}

#[test]
fn nul_bytes_and_bad_environment_names_should_be_invalid_params_naming_the_field() {
    let server = Server::start();
    let (_workspace, session_id) = connected_local(&server);
    let cases = [
        (json!({ "sessionId": session_id, "command": "ec\u{0}ho hi" }), "command"),
        (json!({ "sessionId": session_id, "command": "echo", "args": ["ok", "b\u{0}d"] }), "args[1]"),
        (json!({ "sessionId": session_id, "command": "pwd", "cwd": "sub\u{0}dir" }), "cwd"),
        (json!({ "sessionId": session_id, "command": "env", "env": { "GOOD": "v\u{0}x" } }), "env.GOOD"),
        (json!({ "sessionId": session_id, "command": "env", "env": { "A=B": "v" } }), "'='"),
        (json!({ "sessionId": session_id, "command": "env", "env": { "": "v" } }), "empty name"),
    ];
    for (params, field) in cases {
        let error = server.request_error("sandlink/run", params.clone());
        assert_eq!(error.kind.as_deref(), Some("invalidParams"), "{params}: {error:?}");
        assert_eq!(error.code, -32602);
        assert!(error.message.contains(field), "{params}: the message names {field}: {}", error.message);
    }
    let error = server.request_error("sandlink/sync", json!({ "sessionId": session_id, "paths": ["a.txt", "a\u{0}.txt"] }));
    assert_eq!(error.kind.as_deref(), Some("invalidParams"), "{error:?}");
    assert!(error.message.contains("paths[1]"), "{}", error.message);
    // A valid environment still arrives whole: `=` belongs in values.
    let outcome = server.run_to_exit(json!({
        "sessionId": session_id, "command": "printenv", "args": ["SANDLINK_PAIR"], "env": { "SANDLINK_PAIR": "B=v" },
    }));
    assert_eq!(outcome.stdout, "B=v\n");
}

/// Asks `method` three times and checks it is answered within `PROMPT`. A blocked server would not answer at all;
/// the best of three keeps a busy test machine (two cores, many builds) from failing a server that is not blocked,
/// and every attempt must still come within a second.
fn assert_prompt(server: &Server, method: &str, params: Value) -> Result<Value, support::RpcError> {
    let mut fastest = Duration::MAX;
    let mut answer = None;
    for _ in 0..3 {
        let started = Instant::now();
        answer = Some(server.request_timeout(method, params.clone(), Duration::from_secs(10)));
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "{method} took {took:?} while other requests waited");
        fastest = fastest.min(took);
    }
    assert!(fastest < PROMPT, "{method} took at best {fastest:?} while other requests waited");
    answer.expect("asked three times")
}

#[test]
fn input_to_a_run_that_never_reads_should_be_queued_bounded_and_never_block_the_server() {
    let server = Server::start();
    let (_workspace, session_id) = connected_local(&server);
    let run_id = server.start_run(json!({ "sessionId": session_id, "command": "sleep 60", "stdin": true }));
    let chunk = "x".repeat(2 * 1024 * 1024);
    let ids: Vec<i64> = (0..20)
        .map(|_| server.send_request("sandlink/input", json!({ "runId": run_id, "text": chunk })))
        .collect();
    let mut queued = 0;
    let mut refused = 0;
    for id in ids {
        match server.wait_answer(id, Duration::from_secs(10)) {
            Ok(_) => queued += 1,
            Err(error) => {
                assert_eq!(error.kind.as_deref(), Some("inputBacklogFull"), "{error:?}");
                assert!(error.message.contains("8.0 MiB") && error.message.contains(&run_id), "{}", error.message);
                refused += 1;
            }
        }
    }
    // The pipe takes 64 KiB, so four 2 MiB pieces fit in the 8 MiB bound and the rest are refused, all at once.
    assert!(queued >= 4 && refused > 0 && queued + refused == 20, "{queued} queued, {refused} refused");
    assert_prompt(&server, "sandlink/status", json!({ "sessionId": session_id })).expect("status");
    assert_prompt(&server, "sandlink/drivers", json!({})).expect("drivers");
    assert_prompt(&server, "sandlink/sessions", json!({})).expect("sessions");
    if let Err(error) = assert_prompt(&server, "sandlink/cancel", json!({ "runId": run_id })) {
        assert_eq!(error.kind.as_deref(), Some("unknownRun"), "{error:?}");
    }
    let exit = server.wait_notification("sandlink/exit", Duration::from_secs(10), |params| params["runId"] == run_id);
    assert_eq!(exit["cancelled"], true, "{exit}");
}

#[test]
fn queued_input_should_reach_a_slow_reader_whole_and_in_order() {
    let server = Server::start();
    let (_workspace, session_id) = connected_local(&server);
    // The reader waits before reading, so most of the input sits in sandlink's queue first; it stays a while after,
    // so input after `eof` meets a live run.
    let run_id = server.start_run(json!({ "sessionId": session_id, "command": "sleep 1; wc -c; sleep 3", "stdin": true }));
    let pieces: Vec<String> = (0..6).map(|index| format!("{index}").repeat(1024 * 1024)).collect();
    for (index, piece) in pieces.iter().enumerate() {
        let eof = index == pieces.len() - 1;
        server.request("sandlink/input", json!({ "runId": run_id, "text": piece, "eof": eof })).expect("queued");
    }
    let error = server.request_error("sandlink/input", json!({ "runId": run_id, "text": "late" }));
    assert_eq!(error.kind.as_deref(), Some("invalidParams"), "after eof: {error:?}");
    let outcome = server.collect_run(&run_id, Duration::from_secs(30));
    assert_eq!(outcome.stdout.trim(), (6 * 1024 * 1024).to_string(), "every byte arrived");
}

#[test]
fn closing_stdin_should_end_runs_with_their_exit_and_leave_no_process() {
    let mut server = Server::start();
    let (_workspace, session_id) = connected_local(&server);
    let marker = format!("sandlink-orphan-check-{}", std::process::id());
    let run_id = server.start_run(json!({
        "sessionId": session_id, "command": "sh", "args": ["-c", format!("sleep 300; echo {marker}")],
    }));
    std::thread::sleep(Duration::from_millis(300));
    assert!(!support::processes_matching(&marker).is_empty(), "the run is up");
    server.close_stdin();
    let exit = server.wait_notification("sandlink/exit", Duration::from_secs(20), |params| params["runId"] == run_id);
    assert_eq!(exit["cancelled"], true, "{exit}");
    let status = server.wait_exit(Duration::from_secs(30)).expect("the server exits once its input ends");
    assert!(status.success(), "{status:?}");
    assert!(support::processes_matching(&marker).is_empty(), "no process outlives the server");
}

// --- requests that wait on a provider, against the E2B fake with its envd hung ------------------------------------

const API_KEY: &str = "e2b_sandlink_robustness_key_8c1d";

/// The in-repo E2B fake (tests/fakes/e2b_server.py), started for one test.
struct Fake {
    child: Child,
    port: u16,
    _root: tempfile::TempDir,
}

impl Fake {
    fn start() -> Option<Fake> {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let python = std::env::var_os("SANDLINK_TEST_PYTHON").map(PathBuf::from).unwrap_or_else(|| repo.join(".venv/bin/python"));
        let script = std::env::var_os("SANDLINK_E2B_FAKE_SERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo.join("tests/fakes/e2b_server.py"));
        if support::skip_unless(python.exists() && script.exists(), "the Python test venv with the E2B fake") {
            return None;
        }
        let root = tempfile::tempdir().expect("a root for the fake's sandboxes");
        let mut child = Command::new(python)
            .arg(script)
            .args(["--port", "0", "--api-key", API_KEY, "--exit-when-stdin-closes", "--root"])
            .arg(root.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the E2B fake starts");
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let port = loop {
            let line = lines.next().expect("the fake prints LISTENING <port>").expect("readable stdout");
            if let Some(port) = line.strip_prefix("LISTENING ") {
                break port.trim().parse().expect("a port number");
            }
        };
        Some(Fake { child, port, _root: root })
    }

    fn settings(&self) -> Value {
        json!({
            "apiUrl": format!("http://127.0.0.1:{}", self.port),
            "domain": format!("localhost:{}", self.port),
            "timeoutSeconds": 300,
            "streamKeepaliveSeconds": 1,
        })
    }

    /// Turns the fake's faults on or off (`POST /_admin/faults`).
    fn set_faults(&self, faults: Value) {
        use std::io::{Read, Write};
        let body = faults.to_string();
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("the fake accepts connections");
        let request = format!(
            "POST /_admin/faults HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).expect("the admin request is sent");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.0 2") || answer.starts_with("HTTP/1.1 2"), "{answer}");
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn twenty_requests_hung_on_a_provider_should_not_delay_the_others_and_cancel_request_should_end_them() {
    let Some(fake) = Fake::start() else { return };
    let server = Server::start_with(StartOptions {
        env: vec![("E2B_API_KEY".into(), API_KEY.into())],
        ..StartOptions::default()
    });
    let workspace = support::workspace_with(&[("a.txt", "a")]);
    let session = server.connect("e2b", fake.settings(), workspace.path());
    let session_id = session["sessionId"].as_str().expect("sessionId").to_string();
    let local_workspace = support::workspace_with(&[("b.txt", "b")]);
    let local = server.connect("local", Value::Null, local_workspace.path());
    let run_id = server.start_run(json!({ "sessionId": local["sessionId"], "command": "sleep 60" }));

    // Both of E2B's planes stop answering: syncs wait on envd, extend and snapshot on the control plane.
    fake.set_faults(json!({ "hangEnvd": true, "hangControl": true }));
    let mut hung: Vec<i64> = (0..10)
        .map(|_| server.send_request("sandlink/sync", json!({ "sessionId": session_id, "direction": "both" })))
        .collect();
    hung.extend((0..5).map(|_| server.send_request("sandlink/extend", json!({ "sessionId": session_id, "seconds": 600 }))));
    hung.extend((0..5).map(|_| server.send_request("sandlink/snapshot", json!({ "sessionId": session_id }))));
    // Give the requests time to reach the hung planes.
    std::thread::sleep(Duration::from_millis(500));
    assert_prompt(&server, "sandlink/status", json!({ "sessionId": local["sessionId"] })).expect("status");
    assert_prompt(&server, "sandlink/drivers", json!({})).expect("drivers");
    assert_prompt(&server, "sandlink/sessions", json!({})).expect("sessions");
    // Cancelling twice more is harmless: the run is still ending (or gone, which says so).
    if let Err(error) = assert_prompt(&server, "sandlink/cancel", json!({ "runId": run_id })) {
        assert_eq!(error.kind.as_deref(), Some("unknownRun"), "{error:?}");
    }
    let exit = server.wait_notification("sandlink/exit", Duration::from_secs(10), |params| params["runId"] == run_id);
    assert_eq!(exit["cancelled"], true, "{exit}");

    // `$/cancelRequest` ends a hung request at once with RequestCancelled.
    let started = Instant::now();
    server.notify("$/cancelRequest", json!({ "id": hung[0] }));
    let error = server.wait_answer(hung[0], Duration::from_secs(5)).expect_err("a cancelled sync fails");
    assert_eq!(error.code, -32800, "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(1), "cancelled in {:?}", started.elapsed());
    for id in &hung[1..] {
        server.notify("$/cancelRequest", json!({ "id": id }));
    }
    for id in &hung[1..] {
        let error = server.wait_answer(*id, Duration::from_secs(5)).expect_err("cancelled");
        assert_eq!(error.code, -32800, "{error:?}");
    }
    fake.set_faults(json!({ "hangEnvd": false, "hangControl": false }));
    // The session still syncs once its daemon answers again: nothing was left holding the sync lock.
    let result = server.request("sandlink/sync", json!({ "sessionId": session_id, "direction": "up" })).expect("sync");
    assert!(result["conflicts"].as_array().is_some_and(Vec::is_empty), "{result}");
}
