//! The cloud providers' test servers (`tests/fakes/*_server.py`) as child processes of a test: started from the
//! repo's Python venv on a free port, asked over plain HTTP/1.0 for their admin API, stopped when dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// One running test server and the private directory its sandboxes live in.
pub struct FakeProcess {
    child: Child,
    pub port: u16,
    _root: tempfile::TempDir,
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The venv's interpreter, as `tests/setup/python.sh` names it.
pub fn python() -> PathBuf {
    std::env::var_os("SANDLINK_TEST_PYTHON").map(PathBuf::from).unwrap_or_else(|| repo_root().join(".venv/bin/python"))
}

impl FakeProcess {
    /// Starts `tests/fakes/<script>` (or the path in `script_variable`) with `arguments`, `--port 0`, a private
    /// `--root` and `--exit-when-stdin-closes` (so a killed test never leaves it behind), and waits for its
    /// `LISTENING <port>` line. `None` is a skip when the venv is missing outside CI; under CI it is a failure.
    pub fn start(what: &str, script_variable: &str, script: &str, arguments: &[&str]) -> Option<FakeProcess> {
        let script = std::env::var_os(script_variable)
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("tests/fakes").join(script));
        let available = python().exists() && script.exists();
        if super::skip_unless(available, &format!("the Python test venv with the {what} fake (tests/setup/python.sh)")) {
            return None;
        }
        let root = tempfile::tempdir().expect("a root for the fake's sandboxes");
        let mut child = Command::new(python())
            .arg(&script)
            .args(["--port", "0", "--exit-when-stdin-closes"])
            .args(arguments)
            .arg("--root")
            .arg(root.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("the {what} fake starts: {error}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let port = loop {
            let line = lines.next().expect("the fake prints LISTENING <port>").expect("readable stdout");
            if let Some(port) = line.strip_prefix("LISTENING ") {
                break port.trim().parse().expect("a port number");
            }
        };
        Some(FakeProcess { child, port, _root: root })
    }

    /// A JSON request to the server's admin API (every fake has the same one: faults, request log, sandboxes).
    pub fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        http_json(self.port, method, path, body, &[])
    }

    pub fn set_faults(&self, faults: Value) {
        self.admin("POST", "/_admin/faults", Some(faults));
    }

    /// Every API request the fake logged from `since` on (never the admin API's own).
    pub fn requests_since(&self, since: u64) -> Vec<Value> {
        self.admin("GET", &format!("/_admin/requests?since={since}"), None)["requests"].as_array().cloned().unwrap_or_default()
    }

    /// The sequence number the next logged request will get.
    pub fn next_sequence(&self) -> u64 {
        self.admin("GET", "/_admin/requests?since=999999999", None)["nextSeq"].as_u64().expect("nextSeq")
    }
}

impl Drop for FakeProcess {
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

/// A minimal HTTP/1.0 JSON client: the answer's body as JSON, or `null` when it is not JSON.
pub fn http_json(port: u16, method: &str, path: &str, body: Option<Value>, headers: &[(&str, &str)]) -> Value {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("the fake accepts connections");
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("a read timeout");
    let payload = body.map(|body| body.to_string()).unwrap_or_default();
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\n", payload.len());
    if !payload.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(&payload);
    stream.write_all(request.as_bytes()).expect("the request is sent");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("the answer is read");
    let body = answer.split_once("\r\n\r\n").map(|(_, body)| body).unwrap_or_default();
    serde_json::from_str(body).unwrap_or(Value::Null)
}
