//! Runs through the Daytona toolbox: one session per run, its logs WebSocket demultiplexed, stdin, cancel, helpers.
//!
//! Daytona has no per-command kill, so every run gets a session of its own and cancelling deletes that session,
//! which ends its whole process tree. The command starts with `runAsync`; its output comes from the logs WebSocket
//! (`…/logs?follow=true`), binary frames in which `01 01 01` starts stdout and `02 02 02` starts stderr, a marker
//! possibly split across frames. A WebSocket that drops (or goes silent past its pings) is opened again: the toolbox
//! replays the log from its start, and per-stream counts of the bytes already delivered skip what was seen, so
//! nothing is lost or repeated. A finished command's rest comes from the plain logs. Stdin travels through the input
//! endpoint, base64 per line, to a relay in the command's wrapper that also gives the command its end of file
//! (the toolbox has no way to close a command's stdin).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures::{FutureExt, SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use super::client::{json_body, Api};
use crate::drivers::shell::quote;
use crate::drivers::{ExitStatus, Process, ProcessControl, Signal};
use crate::error::{Error, Result};
use crate::streams::BoxedReader;

/// The stdout marker of the toolbox's log stream.
pub const STDOUT_MARKER: [u8; 3] = [1, 1, 1];
/// The stderr marker of the toolbox's log stream.
pub const STDERR_MARKER: [u8; 3] = [2, 2, 2];
/// Chunks of output buffered between the stream and the engine's readers before the stream waits.
const OUTPUT_CHANNEL_CHUNKS: usize = 256;
/// The most stdin bytes sent in one input call.
const STDIN_CHUNK_BYTES: usize = 16 * 1024;
/// Opening the logs again this many times in a row without anything new means the stream cannot be kept up.
const MAX_FRUITLESS_REOPENS: u32 = 3;
/// How long cancelling may take; a cancel must not wait on a toolbox that stopped answering.
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `Retry-After` honoured before opening the logs again, as the HTTP layer's bound.
const MAX_RETRY_AFTER_SECONDS: u64 = 30;
/// The first pause before opening broken logs again; each fruitless attempt doubles it.
const REOPEN_BACKOFF: Duration = Duration::from_millis(100);
/// How long a finished command's exit code may take to appear after its log closed.
const EXIT_CODE_PATIENCE: Duration = Duration::from_secs(10);

/// Which of a command's streams a byte belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Splits the toolbox's log bytes into stdout and stderr at the markers, whatever the frame boundaries.
///
/// Bytes before any marker count as stdout (old daemons send no markers at all). Up to two trailing bytes that could
/// begin a marker are held until the next frame tells; everything else is handed on at once.
#[derive(Debug)]
pub struct Demux {
    current: Stream,
    held: Vec<u8>,
}

impl Default for Demux {
    fn default() -> Self {
        Demux { current: Stream::Stdout, held: Vec::new() }
    }
}

impl Demux {
    /// Feeds one frame; answers the pieces it completes, in order.
    pub fn push(&mut self, frame: &[u8]) -> Vec<(Stream, Vec<u8>)> {
        let mut buffer = std::mem::take(&mut self.held);
        buffer.extend_from_slice(frame);
        let mut pieces: Vec<(Stream, Vec<u8>)> = Vec::new();
        let mut piece = Vec::new();
        let mut index = 0;
        while index < buffer.len() {
            let rest = &buffer[index..];
            let marker = match rest.first() {
                Some(1) => Some((STDOUT_MARKER, Stream::Stdout)),
                Some(2) => Some((STDERR_MARKER, Stream::Stderr)),
                _ => None,
            };
            if let Some((bytes, stream)) = marker {
                if rest.len() >= 3 && rest[..3] == bytes {
                    if !piece.is_empty() {
                        pieces.push((self.current, std::mem::take(&mut piece)));
                    }
                    self.current = stream;
                    index += 3;
                    continue;
                }
                if rest.len() < 3 && rest.iter().all(|byte| *byte == bytes[0]) {
                    // Perhaps the start of a marker whose end is in the next frame.
                    self.held = rest.to_vec();
                    break;
                }
            }
            piece.push(buffer[index]);
            index += 1;
        }
        if !piece.is_empty() {
            pieces.push((self.current, piece));
        }
        pieces
    }

    /// Ends the stream: held bytes were output after all.
    pub fn finish(&mut self) -> Option<(Stream, Vec<u8>)> {
        let held = std::mem::take(&mut self.held);
        (!held.is_empty()).then_some((self.current, held))
    }
}

/// Removes the end mark a run's wrapper prints on each stream after the command: `\n`, a token, `\n`.
///
/// The daemon labels output line by line and ends a last line that has no newline with one, so a command's exact
/// output cannot be told from the log alone. The wrapper therefore always adds a newline and the token after the
/// command; what precedes that added newline is the command's output, byte for byte. Only a tail that could still
/// turn out to be the mark is held back (for output ending in a newline, just that newline), so output stays live.
#[derive(Debug)]
pub struct EndMark {
    pattern: Vec<u8>,
    held: Vec<u8>,
}

impl EndMark {
    pub fn new(token: &str) -> Self {
        EndMark { pattern: format!("\n{token}\n").into_bytes(), held: Vec::new() }
    }

    /// Feeds output; answers what can be passed on now.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut all = std::mem::take(&mut self.held);
        all.extend_from_slice(bytes);
        let earliest = all.len().saturating_sub(self.pattern.len());
        let hold_from = (earliest..all.len()).find(|&start| all[start] == b'\n' && self.pattern.starts_with(&all[start..]));
        if let Some(start) = hold_from {
            self.held = all.split_off(start);
        }
        all
    }

    /// Whether a tail is held that may still turn out to be output (the whole mark, once seen, is not waited on).
    pub fn waiting(&self) -> bool {
        !self.held.is_empty() && self.held != self.pattern
    }

    /// Gives up waiting for the mark when all that is held is a newline: the mark follows the command's last output
    /// within milliseconds, so a newline held longer was the command's own. A longer tail is the mark arriving in
    /// pieces and stays held.
    pub fn release(&mut self) -> Vec<u8> {
        if self.held == b"\n" {
            std::mem::take(&mut self.held)
        } else {
            Vec::new()
        }
    }

    /// The stream ended: the mark is dropped; anything else held was output after all.
    pub fn finish(&mut self) -> Vec<u8> {
        let held = std::mem::take(&mut self.held);
        if held == self.pattern {
            Vec::new()
        } else {
            held
        }
    }
}

/// Hands each stream's bytes to the engine exactly once, however often the log is replayed from its start.
pub struct Delivery {
    stdout: mpsc::Sender<Bytes>,
    stderr: mpsc::Sender<Bytes>,
    delivered: [u64; 2],
    /// What the current replay of the log has shown of each stream so far.
    seen: [u64; 2],
    /// Each stream's end-mark filter, when the command was wrapped with one.
    marks: Option<[EndMark; 2]>,
    /// Output waiting with a held tail, so a line and its newline reach the engine together.
    pending: [Vec<u8>; 2],
    /// Since when a tail is held.
    held_since: Option<tokio::time::Instant>,
}

/// How long a tail that might be the end mark is held before it counts as output.
const END_MARK_PATIENCE: Duration = Duration::from_millis(100);

impl Delivery {
    pub fn new(stdout: mpsc::Sender<Bytes>, stderr: mpsc::Sender<Bytes>, end_token: Option<&str>) -> Self {
        let marks = end_token.map(|token| [EndMark::new(token), EndMark::new(token)]);
        Delivery { stdout, stderr, delivered: [0; 2], seen: [0; 2], marks, pending: [Vec::new(), Vec::new()], held_since: None }
    }

    /// When held output is to be released, if any is held.
    pub fn release_at(&self) -> Option<tokio::time::Instant> {
        self.held_since.map(|since| since + END_MARK_PATIENCE)
    }

    /// Passes on everything held, the tails included.
    pub async fn release(&mut self) {
        self.held_since = None;
        for (slot, stream) in [(0, Stream::Stdout), (1, Stream::Stderr)] {
            let mut bytes = std::mem::take(&mut self.pending[slot]);
            if let Some(marks) = self.marks.as_mut() {
                bytes.extend(marks[slot].release());
            }
            self.send(stream, bytes).await;
        }
    }

    async fn send(&self, stream: Stream, bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        let sender = match stream {
            Stream::Stdout => &self.stdout,
            Stream::Stderr => &self.stderr,
        };
        // A closed receiver means the engine stopped reading; the run still goes on to its end.
        let _ = sender.send(Bytes::from(bytes)).await;
    }

    /// The log is over: passes on what the end-mark filters held, without the marks.
    pub async fn finish(&mut self) {
        self.held_since = None;
        for (slot, stream) in [(0, Stream::Stdout), (1, Stream::Stderr)] {
            let mut bytes = std::mem::take(&mut self.pending[slot]);
            if let Some(marks) = self.marks.as_mut() {
                bytes.extend(marks[slot].finish());
            }
            self.send(stream, bytes).await;
        }
    }

    /// A new replay of the log begins at its start.
    pub fn replay(&mut self) {
        self.seen = [0; 2];
    }

    /// Passes on what of `bytes` lies past what was delivered; answers whether anything new went out.
    pub async fn offer(&mut self, stream: Stream, bytes: &[u8]) -> bool {
        let slot = match stream {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        };
        let start = self.seen[slot];
        self.seen[slot] += bytes.len() as u64;
        if self.seen[slot] <= self.delivered[slot] {
            return false;
        }
        let skip = self.delivered[slot].saturating_sub(start) as usize;
        let fresh = &bytes[skip..];
        self.delivered[slot] = self.seen[slot];
        let Some(marks) = self.marks.as_mut() else {
            self.send(stream, fresh.to_vec()).await;
            return true;
        };
        let passed = marks[slot].push(fresh);
        self.pending[slot].extend(passed);
        if marks[slot].waiting() {
            // The patience counts from the latest data: the mark's pieces come close together.
            self.held_since = Some(tokio::time::Instant::now());
        } else {
            let bytes = std::mem::take(&mut self.pending[slot]);
            self.send(stream, bytes).await;
            if !self.marks.as_ref().is_some_and(|marks| marks.iter().any(EndMark::waiting)) {
                self.held_since = None;
            }
        }
        true
    }

    /// Offers a whole stream's content as the plain logs give it (everything from the start).
    pub async fn offer_whole(&mut self, stream: Stream, bytes: &[u8]) {
        let slot = match stream {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        };
        self.seen[slot] = 0;
        self.offer(stream, bytes).await;
    }

    pub fn delivered(&self) -> [u64; 2] {
        self.delivered
    }
}

/// How long streams may stay silent, and how long a probe may take.
#[derive(Debug, Clone, Copy)]
pub struct StreamTuning {
    /// A ping goes to the logs WebSocket after this much silence.
    pub keepalive: Duration,
    /// A WebSocket with nothing (not even a pong) for this long is treated as broken.
    pub idle: Duration,
    /// How long a check of the command's state may take before the toolbox counts as unresponsive.
    pub probe: Duration,
}

impl StreamTuning {
    pub fn from_keepalive_seconds(seconds: u64) -> Self {
        let keepalive = Duration::from_secs(seconds.max(1));
        StreamTuning { keepalive, idle: keepalive * 3, probe: (keepalive * 2).clamp(Duration::from_secs(2), Duration::from_secs(20)) }
    }
}

/// The toolbox of one sandbox: its HTTP API and the TLS-or-not WebSocket base derived from it.
pub struct Toolbox {
    pub api: Api,
    pub tuning: StreamTuning,
    /// The main API and the sandbox's id there: when the toolbox fails, it tells a deleted sandbox from a hung one.
    pub main: Arc<Api>,
    pub sandbox_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExecAnswer {
    cmd_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CommandAnswer {
    #[serde(default)]
    exit_code: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExecuteAnswer {
    #[serde(default)]
    exit_code: Option<i64>,
    #[serde(default)]
    result: String,
}

#[derive(Debug, Deserialize, Default)]
struct PlainLogs {
    #[serde(default)]
    stdout: Option<String>,
    #[serde(default)]
    stderr: Option<String>,
    #[serde(default)]
    output: Option<String>,
}

/// What a helper script printed and how it ended.
pub struct Reply {
    pub status: i64,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// What separates a helper's base64 stdout from its stderr in `/process/execute`'s combined result (base64 never
/// holds a `-`).
const STDERR_SEPARATOR: &str = "\n-sandlink-stderr-\n";

impl Toolbox {
    /// The main API's word on the sandbox after a toolbox failure: the error to report when it is gone (which also
    /// sets the gone flag the session's lease reports), `None` when it still exists or cannot be asked.
    pub async fn sandbox_gone(&self) -> Option<Error> {
        let path = format!("/sandbox/{}", self.sandbox_id);
        match self.main.call_within(reqwest::Method::GET, &path, None, "checking the sandbox", self.tuning.probe.max(Duration::from_secs(5))).await {
            Err(error) if self.main.gone().get().is_some() => Some(error),
            _ => None,
        }
    }

    fn session_path(session: &str, suffix: &str) -> String {
        format!("/process/session/{session}{suffix}")
    }

    /// Runs a shell script to its end with `/process/execute` (one request), `cwd` mapped by the toolbox. Its stdout
    /// travels base64-encoded, because the answer is JSON text and listings hold NULs and any bytes.
    pub async fn script(&self, cwd: &str, script: &str, arguments: &[&str], what: &str) -> Result<Reply> {
        let mut inner = format!("sh -c {} sandlink", quote(script));
        for argument in arguments {
            inner.push(' ');
            inner.push_str(&quote(argument));
        }
        let wrapper = format!(
            "t=$(mktemp) || exit 125\n{inner} >\"$t\" 2>\"$t.e\"\ns=$?\nbase64 <\"$t\"\nprintf '{}'\ncat \"$t.e\"\nrm -f \"$t\" \"$t.e\"\nexit $s",
            STDERR_SEPARATOR.replace('\n', "\\n")
        );
        let body = json!({ "command": format!("sh -c {}", quote(&wrapper)), "cwd": cwd, "timeout": 600 });
        let limit = Duration::from_secs(620);
        let response = self.api.call_within(reqwest::Method::POST, "/process/execute", Some(&body), what, limit).await?;
        let answer: ExecuteAnswer = json_body(response, what).await?;
        let (encoded, stderr) = match answer.result.split_once(STDERR_SEPARATOR) {
            Some((encoded, stderr)) => (encoded, stderr),
            None => {
                return Err(Error::Remote {
                    status: None,
                    message: format!(
                        "The Daytona sandbox could not run sandlink's helper while {what} (exit {:?}): {}",
                        answer.exit_code,
                        answer.result.trim()
                    ),
                })
            }
        };
        let compact: String = encoded.chars().filter(|character| !character.is_ascii_whitespace()).collect();
        let stdout = base64::engine::general_purpose::STANDARD.decode(compact).map_err(|error| Error::Remote {
            status: None,
            message: format!("The Daytona sandbox answered a helper's output sandlink cannot read while {what}: {error}."),
        })?;
        Ok(Reply { status: answer.exit_code.unwrap_or(0), stdout, stderr: stderr.as_bytes().to_vec() })
    }

    /// Runs `command` as a shell line in `cwd` and answers its exit code and combined output (short checks only).
    pub async fn execute(&self, cwd: &str, command: &str, what: &str) -> Result<(i64, String)> {
        let body = json!({ "command": command, "cwd": cwd, "timeout": 60 });
        let response = self.api.call(reqwest::Method::POST, "/process/execute", Some(&body), what).await?;
        let answer: ExecuteAnswer = json_body(response, what).await?;
        Ok((answer.exit_code.unwrap_or(0), answer.result))
    }

    async fn create_session(&self, session: &str) -> Result<()> {
        let body = json!({ "sessionId": session });
        self.api
            .call_within(reqwest::Method::POST, "/process/session", Some(&body), "starting a toolbox session", self.run_call_limit())
            .await
            .map(|_| ())
    }

    async fn delete_session(&self, session: &str, limit: Duration) -> Result<()> {
        let path = Self::session_path(session, "");
        match self.api.call_within(reqwest::Method::DELETE, &path, None, "ending the run's toolbox session", limit).await {
            Ok(_) | Err(Error::Remote { status: Some(404), .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// The limit for the small calls of a run: long enough for a busy toolbox, short enough that a hung one ends
    /// the run with an error soon.
    fn run_call_limit(&self) -> Duration {
        (self.tuning.idle + self.tuning.probe).max(Duration::from_secs(10))
    }

    /// The command's exit code, `None` while it runs.
    async fn exit_code(&self, session: &str, command: &str, limit: Duration) -> Result<Option<i64>> {
        let path = Self::session_path(session, &format!("/command/{command}"));
        let what = "reading the command's exit code";
        let response = self.api.call_within(reqwest::Method::GET, &path, None, what, limit).await?;
        Ok(json_body::<CommandAnswer>(response, what).await?.exit_code)
    }

    /// The logs without `follow`: `{stdout, stderr}` from daemons that split output, plain text from older ones.
    async fn plain_logs(&self, session: &str, command: &str) -> Result<(Vec<u8>, Vec<u8>)> {
        let path = Self::session_path(session, &format!("/command/{command}/logs"));
        let what = "reading the command's output";
        let response = self.api.call_within(reqwest::Method::GET, &path, None, what, self.run_call_limit()).await?;
        let bytes = response.bytes().await.map_err(|error| Error::Remote {
            status: None,
            message: format!("The Daytona toolbox's answer broke off while {what}: {error}."),
        })?;
        match serde_json::from_slice::<PlainLogs>(&bytes) {
            Ok(PlainLogs { stdout: Some(stdout), stderr, .. }) => {
                Ok((stdout.into_bytes(), stderr.unwrap_or_default().into_bytes()))
            }
            Ok(PlainLogs { output: Some(output), .. }) => Ok((output.into_bytes(), Vec::new())),
            _ => {
                // Old daemons answer the raw log; it may still carry markers.
                let mut demux = Demux::default();
                let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
                for (stream, piece) in demux.push(&bytes).into_iter().chain(demux.finish()) {
                    match stream {
                        Stream::Stdout => stdout.extend(piece),
                        Stream::Stderr => stderr.extend(piece),
                    }
                }
                Ok((stdout, stderr))
            }
        }
    }

    /// The logs WebSocket's URL: the toolbox base with `ws` for `http` and `wss` for `https`.
    fn logs_url(&self, session: &str, command: &str) -> String {
        let base = self.api.base_url();
        let base = if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            base.to_string()
        };
        format!("{base}{}", Self::session_path(session, &format!("/command/{command}/logs?follow=true")))
    }
}

/// What one run's follower task and its handles share.
#[derive(Default)]
struct RunShared {
    /// Set when sandlink deleted the run's session (cancel or timeout): the command ended by its signal.
    cancelled: AtomicBool,
    /// Set once the run's outcome is known.
    ended: AtomicBool,
}

/// How one opening of the logs WebSocket ended.
enum StreamEnd {
    /// The toolbox closed it: the command's log is complete.
    Complete,
    /// It broke or went silent; `progressed` says whether it delivered anything new.
    Broken { reason: String, progressed: bool },
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Why the logs could not be opened, and how long the toolbox asked to wait (`Retry-After` on a 429 or 503).
struct OpenFailure {
    reason: String,
    retry_after: Option<Duration>,
}

async fn open_logs(toolbox: &Toolbox, session: &str, command: &str) -> std::result::Result<Socket, OpenFailure> {
    let plain = |reason: String| OpenFailure { reason, retry_after: None };
    let mut request = toolbox.logs_url(session, command).into_client_request().map_err(|error| plain(error.to_string()))?;
    for (name, value) in toolbox.api.upgrade_headers() {
        let (Ok(name), Ok(value)) = (
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()),
            tokio_tungstenite::tungstenite::http::HeaderValue::from_str(&value),
        ) else {
            continue;
        };
        request.headers_mut().insert(name, value);
    }
    let connecting = tokio_tungstenite::connect_async(request);
    match tokio::time::timeout(toolbox.run_call_limit(), connecting).await {
        Err(_) => Err(plain(format!("did not open within {} s", toolbox.run_call_limit().as_secs()))),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|value| value.to_str().ok())
                .and_then(|text| text.trim().parse::<u64>().ok())
                .map(|seconds| Duration::from_secs(seconds.min(MAX_RETRY_AFTER_SECONDS)));
            Err(OpenFailure { reason: format!("the toolbox answered HTTP {}", response.status()), retry_after })
        }
        Ok(Err(error)) => Err(plain(error.to_string())),
        Ok(Ok((socket, _))) => Ok(socket),
    }
}

/// Reads one opening of the logs until the toolbox closes it, it breaks, or it goes silent and the toolbox does not
/// answer for the command. Silence alone proves nothing (a quiet command), and neither do pongs (a proxy or the
/// WebSocket layer answers them while the daemon hangs), so after `idle` without a frame the command's state is
/// asked over HTTP: an answer within the probe limit means the stream is fine.
async fn pump_logs(mut socket: Socket, toolbox: &Toolbox, session: &str, command: &str, delivery: &mut Delivery) -> StreamEnd {
    let tuning = &toolbox.tuning;
    let mut demux = Demux::default();
    let mut progressed = false;
    let mut last_heard = tokio::time::Instant::now();
    let mut ping = tokio::time::interval(tuning.keepalive);
    ping.tick().await;
    loop {
        let release_at = delivery.release_at();
        let message = tokio::select! {
            message = socket.next() => message,
            _ = tokio::time::sleep_until(release_at.unwrap_or_else(tokio::time::Instant::now)), if release_at.is_some() => {
                delivery.release().await;
                continue;
            }
            _ = ping.tick() => {
                if last_heard.elapsed() >= tuning.idle {
                    match toolbox.exit_code(session, command, tuning.probe).await {
                        Ok(None) => last_heard = tokio::time::Instant::now(),
                        Ok(Some(_)) => {
                            return StreamEnd::Broken { reason: "stayed open after the command ended".into(), progressed }
                        }
                        Err(error) => {
                            return StreamEnd::Broken {
                                reason: format!("went silent for {} s and the toolbox did not answer ({error})", tuning.idle.as_secs()),
                                progressed,
                            }
                        }
                    }
                }
                // Pings keep idle connections open through proxies; they prove nothing about the daemon.
                if socket.send(Message::Ping(Bytes::from_static(b"sandlink"))).await.is_err() {
                    return StreamEnd::Broken { reason: "could not be pinged".into(), progressed };
                }
                continue;
            }
        };
        if matches!(message, Some(Ok(Message::Pong(_))) | Some(Ok(Message::Ping(_)))) {
            continue;
        }
        last_heard = tokio::time::Instant::now();
        let frame: Vec<u8> = match message {
            None => return StreamEnd::Broken { reason: "ended without a closing frame".into(), progressed },
            Some(Err(error)) => return StreamEnd::Broken { reason: format!("broke off ({error})"), progressed },
            Some(Ok(Message::Binary(bytes))) => bytes.to_vec(),
            // Frames are bytes whatever their type: text frames with invalid UTF-8 must not end the stream.
            Some(Ok(Message::Text(text))) => text.as_bytes().to_vec(),
            Some(Ok(Message::Close(frame))) => {
                let normal = frame.as_ref().is_none_or(|frame| {
                    frame.code == tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal
                });
                if let Some((stream, piece)) = demux.finish() {
                    progressed |= delivery.offer(stream, &piece).await;
                }
                return if normal {
                    StreamEnd::Complete
                } else {
                    StreamEnd::Broken { reason: format!("was closed abnormally ({frame:?})"), progressed }
                };
            }
            Some(Ok(_)) => continue,
        };
        for (stream, piece) in demux.push(&frame) {
            progressed |= delivery.offer(stream, &piece).await;
        }
    }
}

/// How a command that ended with `code` is reported: negative codes are the signal that killed it.
fn exit_status(code: i64) -> ExitStatus {
    if code < 0 {
        let signal = crate::drivers::process::signal_name((-code) as i32);
        return ExitStatus { code: None, signal: Some(signal), message: None };
    }
    ExitStatus { code: Some(code as i32), signal: None, message: None }
}

fn cancelled_status() -> ExitStatus {
    ExitStatus { code: None, signal: Some("SIGTERM".into()), message: None }
}

/// Follows a run from its start to its exit code, opening the logs again whenever they drop.
async fn follow_run(toolbox: Arc<Toolbox>, session: String, command: String, shared: Arc<RunShared>, delivery: &mut Delivery) -> Result<ExitStatus> {
    let mut fruitless = 0;
    loop {
        if shared.cancelled.load(Ordering::SeqCst) {
            return Ok(cancelled_status());
        }
        delivery.replay();
        let mut retry_after = None;
        let end = match open_logs(&toolbox, &session, &command).await {
            Ok(socket) => pump_logs(socket, &toolbox, &session, &command, delivery).await,
            Err(failure) => {
                retry_after = failure.retry_after;
                StreamEnd::Broken { reason: format!("could not be opened ({})", failure.reason), progressed: false }
            }
        };
        let (reason, progressed) = match end {
            StreamEnd::Complete => break,
            StreamEnd::Broken { reason, progressed } => (reason, progressed),
        };
        if shared.cancelled.load(Ordering::SeqCst) {
            return Ok(cancelled_status());
        }
        match toolbox.exit_code(&session, &command, toolbox.tuning.probe).await {
            Ok(Some(code)) => {
                // It ended while the stream was down: the plain logs hold the rest.
                let (stdout, stderr) = toolbox.plain_logs(&session, &command).await?;
                delivery.offer_whole(Stream::Stdout, &stdout).await;
                delivery.offer_whole(Stream::Stderr, &stderr).await;
                return Ok(exit_status(code));
            }
            Ok(None) => {}
            Err(_) if shared.cancelled.load(Ordering::SeqCst) => return Ok(cancelled_status()),
            Err(error) => {
                if let Some(gone) = toolbox.sandbox_gone().await {
                    return Err(gone);
                }
                return Err(Error::Remote {
                    status: None,
                    message: format!(
                        "The Daytona toolbox stopped answering: the command's log stream {reason}, and asking for the \
                         command's state failed ({error}). Whether the command still runs is unknown; check the \
                         sandbox with sandlink/status or connect again."
                    ),
                })
            }
        }
        fruitless = if progressed { 0 } else { fruitless + 1 };
        if fruitless > MAX_FRUITLESS_REOPENS {
            return Err(Error::Remote {
                status: None,
                message: format!(
                    "The command's log stream kept breaking ({reason}) although the toolbox answers; gave up after \
                     {MAX_FRUITLESS_REOPENS} attempts to open it again."
                ),
            });
        }
        tracing::info!(%reason, session = %session, "opening a Daytona command's logs again after they broke");
        // A toolbox that asked for patience gets it; otherwise a short backoff that grows with fruitless attempts.
        let pause = retry_after.unwrap_or(REOPEN_BACKOFF * 2u32.pow(fruitless));
        tokio::time::sleep(pause).await;
    }
    // The log is complete; the exit code file may appear a moment later.
    let patience = tokio::time::Instant::now() + EXIT_CODE_PATIENCE;
    loop {
        match toolbox.exit_code(&session, &command, toolbox.tuning.probe).await {
            Ok(Some(code)) => return Ok(exit_status(code)),
            Ok(None) if tokio::time::Instant::now() < patience => tokio::time::sleep(Duration::from_millis(50)).await,
            Ok(None) => {
                return Err(Error::Remote {
                    status: None,
                    message: "The Daytona toolbox closed the command's log but never reported its exit code.".into(),
                })
            }
            Err(_) if shared.cancelled.load(Ordering::SeqCst) => return Ok(cancelled_status()),
            Err(error) => return Err(error),
        }
    }
}

/// A run's stdout or stderr as an `AsyncRead`.
fn output_reader(receiver: mpsc::Receiver<Bytes>) -> BoxedReader {
    let chunks = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|chunk| (Ok::<Bytes, std::io::Error>(chunk), receiver))
    });
    Box::pin(tokio_util::io::StreamReader::new(Box::pin(chunks)))
}

/// The shell line a run's session executes, and the token of the end mark it prints.
pub struct RunLine {
    pub line: String,
    pub end_token: String,
}

/// The shell line a run's session executes: it enters `directory`, sets `env`, runs the command with stdin from the
/// relay (when `stdin`) or empty, then prints the end mark on both streams (see `EndMark`) and exits with the
/// command's status. Wrapped in its own `sh -c`, so nothing in it touches the session's shell.
pub fn command_line(directory: &str, env: &[(String, String)], program: &[String], stdin: bool) -> RunLine {
    let end_token = format!("sandlink-end-{}", crate::ids::short_id());
    let mut invocation = String::from("exec");
    if !env.is_empty() {
        invocation.push_str(" env");
        for (key, value) in env {
            invocation.push(' ');
            invocation.push_str(&quote(&format!("{key}={value}")));
        }
    }
    for word in program {
        invocation.push(' ');
        invocation.push_str(&quote(word));
    }
    let body = if stdin {
        // Background lists read /dev/null unless told otherwise, so the relay takes stdin through descriptor 3.
        // It writes each base64 line's bytes into a FIFO the command reads, and closes it at the line ".".
        format!(
            "f=$(mktemp -u \"${{TMPDIR:-/tmp}}/sandlink-stdin.XXXXXX\") && mkfifo -m 600 \"$f\" || exit 125\n\
             exec 3<&0\n\
             (while IFS= read -r l; do [ \"$l\" = . ] && break; printf %s \"$l\" | base64 -d || break; done) <&3 >\"$f\" &\n\
             ({invocation}) <\"$f\" 3<&-\n\
             s=$?\n\
             rm -f \"$f\""
        )
    } else {
        format!("({invocation}) </dev/null\ns=$?")
    };
    let mark = quote(&end_token);
    let script = format!("cd {} || exit 126\n{body}\nprintf '\\n%s\\n' {mark}\nprintf '\\n%s\\n' {mark} >&2\nexit $s", quote(directory));
    RunLine { line: format!("sh -c {}", quote(&script)), end_token }
}

/// Starts a command in a session of its own and answers once the toolbox has accepted it.
pub async fn start(toolbox: Arc<Toolbox>, line: RunLine, stdin: bool) -> Result<Process> {
    let RunLine { line, end_token } = line;
    let session = format!("sandlink-{}", crate::ids::short_id());
    if let Err(error) = toolbox.create_session(&session).await {
        return Err(toolbox.sandbox_gone().await.unwrap_or(error));
    }
    let what = "starting the command";
    let body = json!({ "command": line, "runAsync": true, "async": true, "suppressInputEcho": true });
    let path = Toolbox::session_path(&session, "/exec");
    let exec = async {
        let response = toolbox.api.call_within(reqwest::Method::POST, &path, Some(&body), what, toolbox.run_call_limit()).await?;
        json_body::<ExecAnswer>(response, what).await
    };
    let command = match exec.await {
        Ok(answer) => answer.cmd_id,
        Err(error) => {
            let _ = toolbox.delete_session(&session, SIGNAL_TIMEOUT).await;
            return Err(toolbox.sandbox_gone().await.unwrap_or(error));
        }
    };
    let (stdout_sender, stdout_receiver) = mpsc::channel(OUTPUT_CHANNEL_CHUNKS);
    let (stderr_sender, stderr_receiver) = mpsc::channel(OUTPUT_CHANNEL_CHUNKS);
    let (exit_sender, exit_receiver) = oneshot::channel();
    let shared = Arc::new(RunShared::default());
    let task_toolbox = toolbox.clone();
    let task_shared = shared.clone();
    let (task_session, task_command) = (session.clone(), command.clone());
    tokio::spawn(async move {
        let mut delivery = Delivery::new(stdout_sender, stderr_sender, Some(&end_token));
        let outcome = follow_run(task_toolbox.clone(), task_session.clone(), task_command, task_shared.clone(), &mut delivery).await;
        delivery.finish().await;
        drop(delivery);
        task_shared.ended.store(true, Ordering::SeqCst);
        let _ = exit_sender.send(outcome);
        // The session has served its one command; what a stdin relay left behind ends with it.
        if !task_shared.cancelled.load(Ordering::SeqCst) {
            if let Err(error) = task_toolbox.delete_session(&task_session, SIGNAL_TIMEOUT).await {
                tracing::debug!(%error, "could not remove a finished run's toolbox session");
            }
        }
    });
    let stdin_writer = stdin.then(|| spawn_stdin_forwarder(toolbox.clone(), session.clone(), command.clone(), shared.clone()));
    let exit = async move {
        exit_receiver
            .await
            .unwrap_or_else(|_| Err(Error::Internal("The daytona run task ended without reporting how the command ended.".into())))
    }
    .boxed();
    Ok(Process {
        stdout: output_reader(stdout_receiver),
        stderr: output_reader(stderr_receiver),
        stdin: stdin_writer,
        control: Arc::new(Control { toolbox, session, shared }),
        exit,
    })
}

/// Gives the engine a writer whose bytes reach the command's relay as base64 lines; closing it sends the end line.
fn spawn_stdin_forwarder(toolbox: Arc<Toolbox>, session: String, command: String, shared: Arc<RunShared>) -> crate::drivers::BoxedWriter {
    let (writer, mut reader) = tokio::io::duplex(2 * STDIN_CHUNK_BYTES);
    tokio::spawn(async move {
        let path = Toolbox::session_path(&session, &format!("/command/{command}/input"));
        let send = |data: String| {
            let toolbox = toolbox.clone();
            let path = path.clone();
            async move {
                let body = json!({ "data": data });
                toolbox.api.call(reqwest::Method::POST, &path, Some(&body), "sending input to the command").await.map(|_| ())
            }
        };
        let mut buffer = vec![0u8; STDIN_CHUNK_BYTES];
        loop {
            let read = match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(read) => read,
            };
            let line = format!("{}\n", base64::engine::general_purpose::STANDARD.encode(&buffer[..read]));
            if let Err(error) = send(line).await {
                // Dropping the reader makes the engine's next write fail, which it reports to the user.
                tracing::warn!(%error, "could not send input to a daytona command");
                return;
            }
        }
        if !shared.ended.load(Ordering::SeqCst) {
            if let Err(error) = send(".\n".into()).await {
                tracing::warn!(%error, "could not close a daytona command's stdin");
            }
        }
    });
    Box::pin(writer)
}

/// Ends a run by deleting its session: the toolbox signals the session's whole process tree.
struct Control {
    toolbox: Arc<Toolbox>,
    session: String,
    shared: Arc<RunShared>,
}

#[async_trait::async_trait]
impl ProcessControl for Control {
    async fn signal(&self, signal: Signal) -> Result<()> {
        if self.shared.ended.load(Ordering::SeqCst) {
            return Ok(());
        }
        // Daytona cannot signal one command; deleting the session is its only way (SIGTERM, then SIGKILL after a
        // grace period), so the first signal does it and a later SIGKILL has nothing left to do.
        if self.shared.cancelled.swap(true, Ordering::SeqCst) && signal == Signal::Kill {
            return Ok(());
        }
        self.toolbox.delete_session(&self.session, SIGNAL_TIMEOUT).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demux_all(frames: &[&[u8]]) -> (Vec<u8>, Vec<u8>) {
        let mut demux = Demux::default();
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let mut pieces = Vec::new();
        for frame in frames {
            pieces.extend(demux.push(frame));
        }
        pieces.extend(demux.finish());
        for (stream, piece) in pieces {
            match stream {
                Stream::Stdout => stdout.extend(piece),
                Stream::Stderr => stderr.extend(piece),
            }
        }
        (stdout, stderr)
    }

    #[test]
    fn demux_should_split_at_markers_wherever_the_frames_break() {
        let mut log = Vec::new();
        log.extend_from_slice(&STDOUT_MARKER);
        log.extend_from_slice(b"out \xe2\x82");
        log.extend_from_slice(&STDERR_MARKER);
        log.extend_from_slice(b"err \xff\n");
        log.extend_from_slice(&STDOUT_MARKER);
        log.extend_from_slice(b"\xac more\x01\x01x");
        log.extend_from_slice(&STDERR_MARKER);
        log.extend_from_slice(b"\x02");
        let expected_stdout = b"out \xe2\x82\xac more\x01\x01x".to_vec();
        let expected_stderr = b"err \xff\n\x02".to_vec();
        assert_eq!(demux_all(&[&log]), (expected_stdout.clone(), expected_stderr.clone()));
        for first in 0..=log.len() {
            for second in first..=log.len() {
                let frames = [&log[..first], &log[first..second], &log[second..]];
                assert_eq!(demux_all(&frames), (expected_stdout.clone(), expected_stderr.clone()), "split at {first}, {second}");
            }
        }
        let single_bytes: Vec<&[u8]> = log.chunks(1).collect();
        assert_eq!(demux_all(&single_bytes), (expected_stdout, expected_stderr));
    }

    #[test]
    fn demux_should_count_unmarked_output_as_stdout() {
        assert_eq!(demux_all(&[b"plain ", b"old daemon\n"]), (b"plain old daemon\n".to_vec(), Vec::new()));
    }

    #[tokio::test]
    async fn delivery_should_skip_what_a_replay_repeats_and_pass_on_the_rest() {
        let (stdout, mut stdout_receiver) = mpsc::channel(16);
        let (stderr, mut stderr_receiver) = mpsc::channel(16);
        let mut delivery = Delivery::new(stdout, stderr, None);
        assert!(delivery.offer(Stream::Stdout, b"abc").await);
        assert!(delivery.offer(Stream::Stderr, b"E").await);
        delivery.replay();
        assert!(!delivery.offer(Stream::Stdout, b"ab").await);
        assert!(delivery.offer(Stream::Stdout, b"cdef").await);
        assert!(!delivery.offer(Stream::Stderr, b"E").await);
        delivery.offer_whole(Stream::Stderr, b"EF").await;
        assert_eq!(delivery.delivered(), [6, 2]);
        drop(delivery);
        let mut out = Vec::new();
        while let Some(chunk) = stdout_receiver.recv().await {
            out.extend_from_slice(&chunk);
        }
        let mut err = Vec::new();
        while let Some(chunk) = stderr_receiver.recv().await {
            err.extend_from_slice(&chunk);
        }
        assert_eq!((out.as_slice(), err.as_slice()), (&b"abcdef"[..], &b"EF"[..]));
    }

    #[test]
    fn command_line_should_quote_everything_and_relay_stdin_only_when_asked() {
        let run = command_line("/home/daytona/it's", &[("A".into(), "1 2".into())], &["printf".into(), "%s".into()], false);
        let line = &run.line;
        assert!(line.starts_with("sh -c '"), "{line}");
        assert!(line.contains("</dev/null") && !line.contains("mkfifo"), "{line}");
        assert!(line.contains(&run.end_token), "{line}");
        let relayed = command_line("/w", &[], &["cat".into()], true).line;
        assert!(relayed.contains("mkfifo") && relayed.contains("base64 -d"), "{relayed}");
    }

    fn through_end_mark(token: &str, chunks: &[&[u8]]) -> Vec<u8> {
        let mut mark = EndMark::new(token);
        let mut out = Vec::new();
        for chunk in chunks {
            out.extend(mark.push(chunk));
        }
        out.extend(mark.finish());
        out
    }

    #[test]
    fn end_mark_should_leave_exactly_the_commands_output_however_it_is_split() {
        let token = "sandlink-end-abc";
        for output in [&b"no newline at the end"[..], b"a newline\n", b"", b"\n\n", b"sandlink-end-abc\n"] {
            let mut log = output.to_vec();
            log.extend_from_slice(format!("\n{token}\n").as_bytes());
            for split in 0..=log.len() {
                let got = through_end_mark(token, &[&log[..split], &log[split..]]);
                assert_eq!(got, output, "output {:?} split at {split}", String::from_utf8_lossy(output));
            }
        }
        // Killed before the mark: everything held is output.
        assert_eq!(through_end_mark(token, &[b"partial\n"]), b"partial\n");
        // Live: a finished line goes out at once, only its newline waits.
        let mut mark = EndMark::new(token);
        assert_eq!(mark.push(b"started\n"), b"started");
        assert!(mark.waiting());
        assert_eq!(mark.push(b"more"), b"\nmore");
        assert_eq!(mark.push(format!("\n{token}\n").as_bytes()), b"");
        assert!(!mark.waiting(), "the whole mark is not waited on");
    }

    #[test]
    fn negative_exit_codes_should_be_the_killing_signal() {
        assert_eq!(exit_status(-9).signal.as_deref(), Some("SIGKILL"));
        assert_eq!(exit_status(137).code, Some(137));
    }
}
