//! End-to-end tests of the `daytona` driver against the in-repo Daytona fake (tests/fakes/daytona_server.py), faults
//! included.
//!
//! The fake speaks Daytona's wire format (the official SDK's conformance suite proves it) and runs commands for
//! real. Parity tests share one fake per test binary; fault tests start their own, since most faults are global.

mod support;
#[macro_use]
mod parity;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use parity::DriverFixture;
use support::{Server, StartOptions};

const API_KEY: &str = "dtn_sandlink_test_key_8c1e55b0a4f2";

/// One running fake Daytona server.
struct Fake {
    child: Child,
    port: u16,
    _root: tempfile::TempDir,
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn python() -> PathBuf {
    std::env::var_os("SANDLINK_TEST_PYTHON").map(PathBuf::from).unwrap_or_else(|| repo_root().join(".venv/bin/python"))
}

fn fake_server_script() -> PathBuf {
    std::env::var_os("SANDLINK_DAYTONA_FAKE_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("tests/fakes/daytona_server.py"))
}

impl Fake {
    /// Starts a fake, or answers `None` (a skip) when the test venv is missing outside CI.
    fn start() -> Option<Fake> {
        let available = python().exists() && fake_server_script().exists();
        if support::skip_unless(available, "the Python test venv with the Daytona fake (tests/setup/python.sh)") {
            return None;
        }
        let root = tempfile::tempdir().expect("a root for the fake's sandboxes");
        let mut child = Command::new(python())
            .arg(fake_server_script())
            .args(["--port", "0", "--api-key", API_KEY, "--exit-when-stdin-closes", "--root"])
            .arg(root.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the Daytona fake starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let port = loop {
            let line = lines.next().expect("the fake prints LISTENING <port>").expect("readable stdout");
            if let Some(port) = line.strip_prefix("LISTENING ") {
                break port.trim().parse().expect("a port number");
            }
        };
        Some(Fake { child, port, _root: root })
    }

    fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}/api", self.port)
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

    fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        http_json(self.port, method, path, body)
    }

    fn set_faults(&self, faults: Value) {
        self.admin("POST", "/_admin/faults", Some(faults));
    }

    /// Every request the fake logged from `since` on (API, toolbox and preview planes, never admin).
    fn requests_since(&self, since: u64) -> Vec<Value> {
        let answer = self.admin("GET", &format!("/_admin/requests?since={since}"), None);
        answer["requests"].as_array().cloned().unwrap_or_default()
    }

    fn next_sequence(&self) -> u64 {
        self.admin("GET", "/_admin/requests?since=999999999", None)["nextSeq"].as_u64().expect("nextSeq")
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

impl Drop for Fake {
    fn drop(&mut self) {
        // SIGTERM lets the fake kill the process trees it started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.0 JSON client for the fake's admin API.
fn http_json(port: u16, method: &str, path: &str, body: Option<Value>) -> Value {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("the fake accepts connections");
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("a read timeout");
    let payload = body.map(|body| body.to_string()).unwrap_or_default();
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\n", payload.len());
    if !payload.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
    }
    request.push_str("\r\n");
    request.push_str(&payload);
    stream.write_all(request.as_bytes()).expect("the request is sent");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("the answer is read");
    let body = answer.split_once("\r\n\r\n").map(|(_, body)| body).unwrap_or_default();
    serde_json::from_str(body).unwrap_or(Value::Null)
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
