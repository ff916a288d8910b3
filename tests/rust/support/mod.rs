//! A minimal LSP client for end-to-end tests: spawns the real `sandlink lsp` binary and speaks framed JSON-RPC to it.
//!
//! It is deliberately independent of tower-lsp: frames are written and parsed by hand, so the tests see exactly
//! what an editor sees. Server-to-client requests (progress creation, showDocument) are answered automatically.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub mod fake;

/// How long a test waits for any single answer before failing with a clear message.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// A JSON-RPC error answer, with the contract's `data.kind`.
#[derive(Debug, Clone)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    pub kind: Option<String>,
    pub data: Value,
}

/// How to start a server.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// Announce `experimental.sandlink.notifications` (a sandlink-aware client) or not (a plain LSP client).
    pub notifications: bool,
    /// Extra environment for the server process.
    pub env: Vec<(String, String)>,
    /// The state directory; a fresh temporary one when `None`.
    pub state_dir: Option<PathBuf>,
    /// The workspace root announced in `initialize`.
    pub root: Option<PathBuf>,
    /// Announce `window.workDoneProgress` and `window.showDocument` support.
    pub window_features: bool,
    /// `initializationOptions`.
    pub initialization_options: Option<Value>,
    /// The program to start instead of the binary under test (a copy of it, say).
    pub program: Option<PathBuf>,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions {
            notifications: true,
            env: Vec::new(),
            state_dir: None,
            root: None,
            window_features: true,
            initialization_options: None,
            program: None,
        }
    }
}

#[derive(Default)]
struct Inbox {
    /// Notifications and server requests not yet consumed, in arrival order.
    notifications: VecDeque<Value>,
    /// Every notification ever received, for assertions over the whole session.
    history: Vec<Value>,
    responses: Vec<Value>,
    closed: bool,
    /// Runs whose `sandlink/exit` has arrived, to catch output that comes after it.
    exited_runs: std::collections::HashSet<String>,
    /// Runs that sent output after their exit (a contract violation).
    output_after_exit: Vec<String>,
    /// Output counters used instead of storing output when `store_output` is off.
    output_counters: std::collections::HashMap<String, OutputCounter>,
}

/// What a run sent, counted rather than stored (for gigabyte outputs).
#[derive(Debug, Clone, Default)]
pub struct OutputCounter {
    pub notifications: u64,
    pub text_bytes: u64,
    /// False once a `seq` did not follow the previous one.
    pub seq_contiguous: bool,
    pub next_seq: u64,
    /// Texts that contained the skip marker.
    pub markers: Vec<String>,
    /// The last characters the run showed, to check the end of a huge output arrives.
    pub tail_text: String,
    /// The last characters of its standard error alone: the two streams are read side by side, so the end of the
    /// run's stdout may be shown after stderr's last line even when the run wrote it first.
    pub stderr_tail: String,
}

struct Shared {
    inbox: Mutex<Inbox>,
    arrived: Condvar,
    /// While set, the reader stops reading stdout, simulating a stalled editor.
    paused: AtomicBool,
    /// When off, `sandlink/output` is counted per run instead of stored.
    store_output: AtomicBool,
}

/// A running `sandlink lsp` with an initialized session.
pub struct Server {
    child: Child,
    /// `None` once the test closed it (an editor that went away without `exit`).
    stdin: Arc<Mutex<Option<ChildStdin>>>,
    shared: Arc<Shared>,
    next_id: AtomicI64,
    state_dir: PathBuf,
    _state_guard: Option<tempfile::TempDir>,
    pub stderr_path: PathBuf,
    pub initialize_result: Value,
}

/// The path of the binary under test.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sandlink"))
}

impl Server {
    pub fn start() -> Server {
        Self::start_with(StartOptions::default())
    }

    pub fn start_with(options: StartOptions) -> Server {
        let (state_dir, guard) = match &options.state_dir {
            Some(dir) => (dir.clone(), None),
            None => {
                let guard = tempfile::tempdir().expect("a temporary state directory");
                (guard.path().to_path_buf(), Some(guard))
            }
        };
        std::fs::create_dir_all(&state_dir).expect("the state directory can be created");
        let stderr_path = state_dir.join(format!("server-stderr-{}.log", std::process::id()));
        let stderr_file = std::fs::File::create(&stderr_path).expect("a stderr log file");
        let mut command = Command::new(options.program.clone().unwrap_or_else(binary));
        command
            .arg("lsp")
            .env("SANDLINK_STATE_DIR", &state_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr_file));
        for (name, value) in &options.env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("the sandlink binary starts");
        let stdin = Arc::new(Mutex::new(Some(child.stdin.take().expect("piped stdin"))));
        let stdout = child.stdout.take().expect("piped stdout");
        let shared = Arc::new(Shared {
            inbox: Mutex::new(Inbox::default()),
            arrived: Condvar::new(),
            paused: AtomicBool::new(false),
            store_output: AtomicBool::new(true),
        });
        spawn_reader(stdout, shared.clone(), stdin.clone());
        let mut server = Server {
            child,
            stdin,
            shared,
            next_id: AtomicI64::new(1),
            state_dir,
            _state_guard: guard,
            stderr_path,
            initialize_result: Value::Null,
        };
        let root_uri = options.root.as_ref().map(|root| file_uri(root));
        let mut capabilities = json!({});
        if options.notifications {
            capabilities["experimental"] = json!({ "sandlink": { "notifications": true } });
        }
        if options.window_features {
            capabilities["window"] = json!({ "workDoneProgress": true, "showDocument": { "support": true } });
        }
        let mut params = json!({
            "processId": std::process::id(),
            "rootUri": root_uri,
            "capabilities": capabilities,
        });
        if let Some(root) = &options.root {
            params["workspaceFolders"] = json!([{ "uri": file_uri(root), "name": "workspace" }]);
        }
        if let Some(initialization_options) = options.initialization_options {
            params["initializationOptions"] = initialization_options;
        }
        server.initialize_result = server.request("initialize", params).expect("initialize succeeds");
        server.notify("initialized", json!({}));
        server
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends one framed message.
    pub fn send(&self, message: &Value) {
        let body = serde_json::to_vec(message).expect("messages serialise");
        let mut framed = format!("Content-Length: {}\r\n\r\n", body.len()).into_bytes();
        framed.extend_from_slice(&body);
        self.send_raw(&framed);
    }

    /// Writes bytes to the server's stdin exactly as given (for malformed frames); nothing once stdin is closed.
    pub fn send_raw(&self, bytes: &[u8]) {
        let mut stdin = self.stdin.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(stdin) = stdin.as_mut() {
            let _ = stdin.write_all(bytes);
            let _ = stdin.flush();
        }
    }

    /// Closes the server's stdin, as an editor that goes away without `shutdown` and `exit`.
    pub fn close_stdin(&self) {
        self.stdin.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
    }

    /// Sends a request without waiting for its answer; returns its id for `wait_answer`.
    pub fn send_request(&self, method: &str, params: Value) -> i64 {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        self.send(&json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }));
        id
    }

    /// Waits for the answer to a request sent with `send_request`.
    pub fn wait_answer(&self, id: i64, timeout: Duration) -> Result<Value, RpcError> {
        answer_of(self.wait_response_message(&json!(id), timeout, "a request sent earlier"))
    }

    /// Waits for the next response whose `id` is `id` (any JSON value, `null` included) and returns all of it.
    pub fn wait_response_message(&self, id: &Value, timeout: Duration, what: &str) -> Value {
        let deadline = Instant::now() + timeout;
        let mut inbox = self.shared.inbox.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        loop {
            if let Some(position) = inbox.responses.iter().position(|response| &response["id"] == id) {
                return inbox.responses.remove(position);
            }
            if inbox.closed {
                panic!("the server closed its output before answering {what}; stderr: {}", self.stderr());
            }
            let now = Instant::now();
            if now >= deadline {
                panic!("no answer to {what} within {timeout:?}; stderr: {}", self.stderr());
            }
            inbox = self.shared.arrived.wait_timeout(inbox, deadline - now).expect("inbox lock").0;
        }
    }

    /// Whether the server has closed its output (it exited or is exiting).
    pub fn output_closed(&self) -> bool {
        self.shared.inbox.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).closed
    }

    /// Waits up to `timeout` for the server process to end; its exit status if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn notify(&self, method: &str, params: Value) {
        self.send(&json!({ "jsonrpc": "2.0", "method": method, "params": params }));
    }

    /// Sends a request and waits for its answer.
    pub fn request(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        self.request_timeout(method, params, DEFAULT_TIMEOUT)
    }

    pub fn request_timeout(&self, method: &str, params: Value, timeout: Duration) -> Result<Value, RpcError> {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        self.send(&json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }));
        answer_of(self.wait_response(id, timeout, method))
    }

    /// Sends a request that must fail, and returns its error.
    pub fn request_error(&self, method: &str, params: Value) -> RpcError {
        match self.request(method, params) {
            Ok(result) => panic!("{method} should have failed but answered {result}"),
            Err(error) => error,
        }
    }

    fn wait_response(&self, id: i64, timeout: Duration, method: &str) -> Value {
        self.wait_response_message(&json!(id), timeout, method)
    }

    /// Waits for the next notification of `method` whose params satisfy `matches`, consuming it and those before it
    /// of the same method that did not match.
    pub fn wait_notification(&self, method: &str, timeout: Duration, matches: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        let mut inbox = self.shared.inbox.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        loop {
            if let Some(position) = inbox
                .notifications
                .iter()
                .position(|message| message["method"] == method && matches(&message["params"]))
            {
                let message = inbox.notifications.remove(position).expect("position is in range");
                return message["params"].clone();
            }
            if inbox.closed {
                panic!("the server closed before sending {method}; stderr: {}", self.stderr());
            }
            let now = Instant::now();
            if now >= deadline {
                let seen: Vec<String> = inbox.history.iter().rev().take(20).map(|message| message.to_string()).collect();
                panic!("no {method} within {timeout:?}; last notifications: {seen:#?}");
            }
            inbox = self.shared.arrived.wait_timeout(inbox, deadline - now).expect("inbox lock").0;
        }
    }

    /// Every notification received so far (consumed or not), oldest first.
    pub fn history(&self) -> Vec<Value> {
        self.shared.inbox.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).history.clone()
    }

    /// Counts output instead of storing it, for runs that print gigabytes.
    pub fn count_output_only(&self, count_only: bool) {
        self.shared.store_output.store(!count_only, Ordering::SeqCst);
    }

    /// The counters of a run whose output was counted rather than stored.
    pub fn output_counter(&self, run_id: &str) -> OutputCounter {
        self.shared.inbox.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).output_counters.get(run_id).cloned().unwrap_or_default()
    }

    /// Stops reading the server's stdout, as a frozen editor would.
    pub fn pause_reading(&self) {
        self.shared.paused.store(true, Ordering::SeqCst);
    }

    pub fn resume_reading(&self) {
        self.shared.paused.store(false, Ordering::SeqCst);
    }

    /// What the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Connects a driver to `workspace` and returns the `SessionInfo`.
    pub fn connect(&self, driver: &str, settings: Value, workspace: &Path) -> Value {
        let mut params = json!({ "driver": driver, "workspaceFolder": file_uri(workspace) });
        if !settings.is_null() {
            params["settings"] = settings;
        }
        self.request("sandlink/connect", params).unwrap_or_else(|error| panic!("connect {driver} failed: {error:?}"))
    }

    /// Starts a run and collects everything it printed until its `sandlink/exit`.
    pub fn run_to_exit(&self, params: Value) -> RunOutcome {
        self.run_to_exit_timeout(params, DEFAULT_TIMEOUT)
    }

    pub fn run_to_exit_timeout(&self, params: Value, timeout: Duration) -> RunOutcome {
        let run_id = self.start_run(params);
        self.collect_run(&run_id, timeout)
    }

    /// Starts a run and returns its id.
    pub fn start_run(&self, params: Value) -> String {
        let result = self.request("sandlink/run", params).unwrap_or_else(|error| panic!("run failed: {error:?}"));
        result["runId"].as_str().expect("runId is a string").to_string()
    }

    /// Collects a run's output notifications until its exit, checking `seq` is contiguous and exit comes last.
    pub fn collect_run(&self, run_id: &str, timeout: Duration) -> RunOutcome {
        let exit = self.wait_notification("sandlink/exit", timeout, |params| params["runId"] == run_id);
        let mut inbox = self.shared.inbox.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut outputs = Vec::new();
        inbox.notifications.retain(|message| {
            let is_ours = message["method"] == "sandlink/output" && message["params"]["runId"] == run_id;
            if is_ours {
                outputs.push(message["params"].clone());
            }
            !is_ours
        });
        let output_after_exit = inbox.output_after_exit.iter().any(|id| id == run_id);
        drop(inbox);
        assert!(!output_after_exit, "sandlink/exit must be the last message of run {run_id}");
        let mut stdout = String::new();
        let mut stderr = String::new();
        for (expected_seq, output) in outputs.iter().enumerate() {
            assert_eq!(output["seq"], json!(expected_seq as u64), "seq must increase by one per notification");
            let text = output["text"].as_str().expect("output text is a string");
            match output["stream"].as_str() {
                Some("stdout") => stdout.push_str(text),
                Some("stderr") => stderr.push_str(text),
                other => panic!("unknown stream {other:?}"),
            }
        }
        RunOutcome { run_id: run_id.to_string(), stdout, stderr, exit, outputs }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Ask politely so the server cleans up its sessions, then make sure it is gone.
        self.shared.paused.store(false, Ordering::SeqCst);
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        self.send(&json!({ "jsonrpc": "2.0", "id": id, "method": "shutdown" }));
        let deadline = Instant::now() + Duration::from_secs(10);
        {
            let mut inbox = self.shared.inbox.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            while !inbox.responses.iter().any(|response| response["id"] == json!(id)) && !inbox.closed {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                inbox = self.shared.arrived.wait_timeout(inbox, deadline - now).map(|pair| pair.0).unwrap_or_else(|poisoned| poisoned.into_inner().0);
            }
        }
        self.send(&json!({ "jsonrpc": "2.0", "method": "exit" }));
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

/// A response's result, or its error with the contract's `data.kind`.
pub fn answer_of(response: Value) -> Result<Value, RpcError> {
    if let Some(error) = response.get("error") {
        return Err(RpcError {
            code: error["code"].as_i64().unwrap_or_default(),
            message: error["message"].as_str().unwrap_or_default().to_string(),
            kind: error.pointer("/data/kind").and_then(Value::as_str).map(str::to_string),
            data: error.get("data").cloned().unwrap_or(Value::Null),
        });
    }
    Ok(response.get("result").cloned().unwrap_or(Value::Null))
}

/// What a run printed and how it ended.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub run_id: String,
    pub stdout: String,
    pub stderr: String,
    pub exit: Value,
    pub outputs: Vec<Value>,
}

impl RunOutcome {
    pub fn exit_code(&self) -> Option<i64> {
        self.exit["exitCode"].as_i64()
    }
}

fn spawn_reader(stdout: std::process::ChildStdout, shared: Arc<Shared>, stdin: Arc<Mutex<Option<ChildStdin>>>) {
    std::thread::spawn(move || {
        let mut reader = BufReader::with_capacity(1 << 20, stdout);
        loop {
            while shared.paused.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
            }
            let Some(message) = read_frame(&mut reader) else { break };
            if message.get("id").is_some() && message.get("method").is_some() {
                // A request from the server: accept it so the server can go on (progress tokens, showDocument).
                let result = if message["method"] == "window/showDocument" { json!({ "success": true }) } else { Value::Null };
                let answer = json!({ "jsonrpc": "2.0", "id": message["id"], "result": result });
                let body = serde_json::to_vec(&answer).expect("answers serialise");
                if let Ok(mut stdin) = stdin.lock() {
                    if let Some(stdin) = stdin.as_mut() {
                        let _ = write!(stdin, "Content-Length: {}\r\n\r\n", body.len());
                        let _ = stdin.write_all(&body);
                        let _ = stdin.flush();
                    }
                }
            }
            let mut inbox = shared.inbox.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let method = message.get("method").and_then(Value::as_str).unwrap_or_default().to_string();
            let run_id = message.pointer("/params/runId").and_then(Value::as_str).unwrap_or_default().to_string();
            if method == "sandlink/exit" {
                inbox.exited_runs.insert(run_id.clone());
            }
            if method == "sandlink/output" && inbox.exited_runs.contains(&run_id) {
                inbox.output_after_exit.push(run_id.clone());
            }
            if method == "sandlink/output" && !shared.store_output.load(Ordering::SeqCst) {
                let text = message.pointer("/params/text").and_then(Value::as_str).unwrap_or_default();
                let seq = message.pointer("/params/seq").and_then(Value::as_u64).unwrap_or(u64::MAX);
                let counter = inbox.output_counters.entry(run_id).or_insert_with(|| OutputCounter {
                    seq_contiguous: true,
                    ..OutputCounter::default()
                });
                counter.seq_contiguous &= seq == counter.next_seq;
                counter.next_seq = seq.wrapping_add(1);
                counter.notifications += 1;
                counter.text_bytes += text.len() as u64;
                if text.contains("[sandlink:") {
                    counter.markers.push(text.chars().take(400).collect());
                }
                let keep_tail = |tail: &mut String| {
                    tail.push_str(text);
                    if tail.len() > 400 {
                        let cut = tail.char_indices().rev().nth(199).map(|(index, _)| index).unwrap_or(0);
                        tail.drain(..cut);
                    }
                };
                keep_tail(&mut counter.tail_text);
                if message.pointer("/params/stream").and_then(Value::as_str) == Some("stderr") {
                    keep_tail(&mut counter.stderr_tail);
                }
            } else if !method.is_empty() {
                if method != "sandlink/output" {
                    inbox.history.push(message.clone());
                }
                inbox.notifications.push_back(message);
            } else {
                inbox.responses.push(message);
            }
            drop(inbox);
            shared.arrived.notify_all();
        }
        shared.inbox.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).closed = true;
        shared.arrived.notify_all();
    });
}

fn read_frame(reader: &mut impl BufRead) -> Option<Value> {
    let mut length = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some(value) = line.strip_prefix("Content-Length:") {
            length = value.trim().parse::<usize>().ok();
        }
    }
    let mut body = vec![0u8; length?];
    reader.read_exact(&mut body).ok()?;
    serde_json::from_slice(&body).ok()
}

/// A `file://` URI for a local path.
pub fn file_uri(path: &Path) -> String {
    url::Url::from_file_path(path).expect("an absolute path").to_string()
}

/// A fresh workspace folder with the given files (relative path, contents).
pub fn workspace_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary workspace");
    for (path, contents) in files {
        let full = dir.path().join(path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent).expect("parent directories");
        }
        std::fs::write(full, contents).expect("workspace file written");
    }
    dir
}

/// Whether we run under CI, where a missing service is a failure rather than a skip.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| !value.is_empty() && value != "false" && value != "0")
}

/// Skips (returns true) when a required service is missing outside CI; panics under CI.
pub fn skip_unless(available: bool, what: &str) -> bool {
    if available {
        return false;
    }
    if under_ci() {
        panic!("{what} is required under CI but is not available");
    }
    eprintln!("skipping: {what} is not available (set up with ./scripts/test)");
    true
}

/// The regular files and links under `dir`, counted recursively (0 when it is missing).
pub fn count_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => count_files(&entry.path()),
            Ok(_) => 1,
            Err(_) => 0,
        })
        .sum()
}

/// Processes whose command line contains `marker`, other than the caller.
pub fn processes_matching(marker: &str) -> Vec<u32> {
    processes_where(|pid| {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        String::from_utf8_lossy(&cmdline).replace('\0', " ").contains(marker)
    })
}

/// Processes with a variable whose value ends with `marker` in their environment, other than the caller: a way to
/// find every process of a run however it renamed or detached itself (needs root for other users' processes).
pub fn processes_with_environment(marker: &str) -> Vec<u32> {
    processes_where(|pid| {
        let environment = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        environment.split(|byte| *byte == 0).any(|variable| variable.ends_with(marker.as_bytes()))
    })
}

/// Live processes (other than the caller) for which `matches` holds.
fn processes_where(matches: impl Fn(u32) -> bool) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return found };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        if pid != std::process::id() && matches(pid) {
            found.push(pid);
        }
    }
    found
}

/// The peak resident memory of a process in bytes (VmHWM), when Linux reports it.
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
