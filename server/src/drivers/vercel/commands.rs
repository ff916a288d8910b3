//! Runs on Vercel that survive its edge: every command starts detached, its output comes from the logs NDJSON
//! endpoint and its end from the reconnectable `?wait=true`.
//!
//! Vercel's edge cuts long streams after about five minutes. The logs endpoint replays a command's output from the
//! start, so after a cut the driver reads it again and skips, per stream, the bytes it already delivered: nothing is
//! lost or repeated however often the stream breaks. Delivery goes through one lock per run, so a second reader (the
//! drain before a stop or a snapshot, which fetches what is still unread while the logs exist) never repeats what the
//! follower delivered, or the other way round. After a stop the logs answer `410`; a run cut off that way ends
//! with a sentence saying so, keeping everything delivered until then.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::mpsc;

use super::client::{Api, Route, SessionPaths};
use crate::drivers::http::{Failure, GoneFlag};
use crate::drivers::{ExitStatus, Process, ProcessControl, Signal};
use crate::error::{Error, Result};
use crate::streams::BoxedReader;

/// Chunks of output buffered between a run's reader and the engine before the reader waits.
const OUTPUT_CHANNEL_CHUNKS: usize = 256;
/// How long the first answer to a stream request may take (its headers); the body then streams without a deadline.
const STREAM_HEADER_LIMIT: Duration = Duration::from_secs(60);
/// A stream re-opened this many times in a row without delivering anything, each time failing quickly, means the
/// logs cannot be read; the run then ends with a sentence saying why.
const MAX_QUICK_FAILURES: u32 = 8;
/// A stream that stayed open at least this long before it broke was cut by the edge, not refused: it does not
/// count as a quick failure however little it carried (a silent command is cut again and again).
const QUICK_FAILURE: Duration = Duration::from_secs(2);
/// A drain reads the logs until they stay silent this long: whatever the sandbox had, has arrived.
const DRAIN_QUIET: Duration = Duration::from_millis(400);
/// How long a signal may take; a cancel must not wait on a sandbox that stopped answering.
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(15);
/// The provider's own command timeout is the run's `timeoutMs` plus this, a backstop for when sandlink is gone; the
/// engine's own timeout (SIGTERM, then SIGKILL) comes first and is the one the run reports.
const PROVIDER_TIMEOUT_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Deserialize)]
struct CommandAnswer {
    command: CommandInfo,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CommandInfo {
    id: String,
    #[serde(default)]
    exit_code: Option<i64>,
}

/// One NDJSON line of a logs stream.
#[derive(Debug, Deserialize)]
struct LogLine {
    stream: String,
    #[serde(default)]
    data: Value,
}

/// What a run's readers share: where output goes and how much of each stream was delivered.
struct Delivery {
    /// stdout's and stderr's senders; dropped when the run ends, which ends the engine's readers.
    senders: Option<[mpsc::Sender<Bytes>; 2]>,
    /// Bytes of stdout and stderr already handed to the engine, counted from the command's start.
    delivered: [u64; 2],
}

/// What tells a run whether its session's end is the sandbox's end: a snapshot stops one session and resumes the
/// next (the run then just ends), while a session that stopped on its own (its timeout, a stop from outside) is gone.
#[derive(Clone)]
pub struct SessionWatch {
    pub gone: Arc<GoneFlag>,
    /// The sandbox's current session.
    pub current: Arc<Mutex<SessionPaths>>,
    /// Held for writing while the sandbox itself stops or switches sessions.
    pub switching: Arc<tokio::sync::RwLock<()>>,
}

impl SessionWatch {
    /// Records that the session of `paths` has stopped, unless the sandbox did that itself or moved on from it.
    fn session_stopped(&self, paths: &SessionPaths, message: &str) {
        let Ok(_steady) = self.switching.try_read() else { return };
        if *crate::locks::lock(&self.current) == *paths {
            self.gone.set(message);
        }
    }
}

/// One command in a session, as its follower, its drain and its control see it.
pub struct Run {
    api: Arc<Api>,
    paths: SessionPaths,
    watch: SessionWatch,
    pub command_id: String,
    delivery: tokio::sync::Mutex<Delivery>,
    /// Set once the run's end is known (or it was cut off); signals and drains are pointless afterwards.
    ended: AtomicBool,
}

/// How one read of the logs ended.
enum LogsEnd {
    /// The stream ended cleanly: the command has exited and everything it printed was read.
    Complete,
    /// The stream broke (the edge cut it, or it went silent in a drain); `delivered` says whether it carried anything new.
    Cut { reason: String, delivered: bool },
    /// The session has stopped (`410`): the logs are gone.
    Gone(String),
    /// Another failure that repeating will not fix (credentials, an unknown command).
    Failed(Error),
}

/// Where a reader is in its replay of the logs, per stream (stdout, stderr). Public for the fuzz targets.
#[derive(Debug, Default)]
pub struct ReplayPosition {
    seen: [u64; 2],
}

impl ReplayPosition {
    /// Moves this reader past `data` of `stream` (0 stdout, 1 stderr) and answers the part of it past what
    /// `delivered` counts, advancing `delivered` to match; `None` when every byte of it was delivered already.
    pub fn advance<'a>(&mut self, delivered: &mut [u64; 2], stream: usize, data: &'a [u8]) -> Option<&'a [u8]> {
        let start = self.seen[stream];
        self.seen[stream] += data.len() as u64;
        let already = delivered[stream];
        if already >= self.seen[stream] {
            return None;
        }
        delivered[stream] = self.seen[stream];
        Some(&data[(already.saturating_sub(start) as usize).min(data.len())..])
    }
}

/// What one NDJSON line of a logs stream or a `wait` stream says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamLine {
    /// Output of stdout (0) or stderr (1).
    Output { stream: usize, data: String },
    /// A command line, with the exit code when it carried one.
    Command { exit_code: Option<i64> },
    /// An error line, which ends the stream; `gone` when it says the session has stopped.
    Error { described: String, gone: bool },
    /// A blank line, or one sandlink does not understand.
    Ignored,
}

/// Takes the next whole line (with its `\n`) off the front of `pending`; `None` until one has arrived.
/// Public for the fuzz targets.
pub fn take_line(pending: &mut Vec<u8>) -> Option<Vec<u8>> {
    let newline = pending.iter().position(|byte| *byte == b'\n')?;
    Some(pending.drain(..=newline).collect())
}

/// Reads one NDJSON line of a stream. Public for the fuzz targets.
pub fn parse_line(line: &[u8]) -> StreamLine {
    if line.iter().all(u8::is_ascii_whitespace) {
        return StreamLine::Ignored;
    }
    let parsed: Value = match serde_json::from_slice(line) {
        Ok(parsed) => parsed,
        Err(error) => {
            tracing::warn!(%error, "ignoring a Vercel stream line sandlink does not understand");
            return StreamLine::Ignored;
        }
    };
    if let Some(command) = parsed.get("command") {
        return StreamLine::Command { exit_code: command.get("exitCode").and_then(Value::as_i64) };
    }
    let Ok(parsed) = serde_json::from_value::<LogLine>(parsed) else { return StreamLine::Ignored };
    match (parsed.stream.as_str(), parsed.data) {
        ("stdout", Value::String(data)) => StreamLine::Output { stream: 0, data },
        ("stderr", Value::String(data)) => StreamLine::Output { stream: 1, data },
        ("error", data) => {
            let code = data.get("code").and_then(Value::as_str).unwrap_or_default();
            let message = data.get("message").and_then(Value::as_str).unwrap_or_default();
            let gone = code.contains("stopped") || code.contains("gone");
            StreamLine::Error { described: format!("{message} ({code})"), gone }
        }
        _ => StreamLine::Ignored,
    }
}

impl Run {
    /// Hands over the part of `data` at `position` that was not delivered yet; answers whether anything was.
    async fn deliver(&self, stream: usize, data: &[u8], position: &mut ReplayPosition) -> bool {
        let mut delivery = self.delivery.lock().await;
        let Some(fresh) = position.advance(&mut delivery.delivered, stream, data) else { return false };
        if let Some(senders) = &delivery.senders {
            // A closed receiver means the engine stopped reading; the command still goes on to its end.
            let _ = senders[stream].send(Bytes::copy_from_slice(fresh)).await;
        }
        true
    }

    /// Reads the logs once, from the start, delivering what was not delivered yet. With `quiet`, stops once the
    /// stream has been silent that long (a drain of a command that is still running).
    async fn read_logs(&self, quiet: Option<Duration>) -> LogsEnd {
        let path = self.paths.logs(&self.command_id);
        let what = "reading the command's output";
        let response = match self
            .api
            .send(Route::Sandbox, Some(STREAM_HEADER_LIMIT), || self.api.request(reqwest::Method::GET, &path))
            .await
        {
            Ok(response) => response,
            Err(failure) => return self.failure_end(failure, what),
        };
        let mut position = ReplayPosition::default();
        self.consume(response.bytes_stream(), Vec::new(), quiet, &mut position).await.0
    }

    /// Reads NDJSON lines (log lines, and the command lines of a `wait` stream) from `body`, after the bytes already
    /// in `pending`, delivering output past `position`. Answers how the stream ended and the exit code if a command
    /// line carried one.
    async fn consume<S>(&self, mut body: S, mut pending: Vec<u8>, quiet: Option<Duration>, position: &mut ReplayPosition) -> (LogsEnd, Option<i64>)
    where
        S: futures::Stream<Item = reqwest::Result<Bytes>> + Unpin,
    {
        let mut delivered = false;
        let mut exit_code = None;
        loop {
            while let Some(line) = take_line(&mut pending) {
                match parse_line(&line) {
                    StreamLine::Output { stream, data } => delivered |= self.deliver(stream, data.as_bytes(), position).await,
                    StreamLine::Command { exit_code: code } => exit_code = exit_code.or(code),
                    StreamLine::Error { described, gone: true } => return (LogsEnd::Gone(described), exit_code),
                    StreamLine::Error { described, gone: false } => {
                        return (LogsEnd::Cut { reason: format!("carried an error: {described}"), delivered }, exit_code);
                    }
                    StreamLine::Ignored => {}
                }
            }
            let next = match quiet {
                Some(limit) => match tokio::time::timeout(limit, body.next()).await {
                    Ok(next) => next,
                    Err(_) => return (LogsEnd::Cut { reason: "went quiet".into(), delivered }, exit_code),
                },
                None => body.next().await,
            };
            match next {
                None if pending.iter().all(u8::is_ascii_whitespace) => return (LogsEnd::Complete, exit_code),
                None => return (LogsEnd::Cut { reason: "ended in the middle of a line".into(), delivered }, exit_code),
                Some(Err(error)) => return (LogsEnd::Cut { reason: format!("broke off ({error})"), delivered }, exit_code),
                Some(Ok(chunk)) => pending.extend_from_slice(&chunk),
            }
        }
    }

    fn failure_end(&self, failure: Failure, what: &str) -> LogsEnd {
        // A run's session ending is the run's news, not the sandbox's: a snapshot stops one session and resumes the
        // next, so the sandbox's gone flag is left to the sandbox's own calls.
        if let Failure::Status { gone: true, message, status, .. } = &failure {
            return LogsEnd::Gone(format!("HTTP {status}: {message}"));
        }
        match failure {
            Failure::Transport { message, .. } => LogsEnd::Cut { reason: format!("could not be opened ({message})"), delivered: false },
            Failure::Timeout(limit) => LogsEnd::Cut { reason: format!("did not answer within {} s", limit.as_secs()), delivered: false },
            failure => LogsEnd::Failed(self.api.fail(failure, what)),
        }
    }

    /// The command's exit code from `?wait=true`, which blocks until it exits; a cut wait is asked again.
    async fn wait_for_exit(&self) -> std::result::Result<i64, LogsEnd> {
        let path = format!("{}?wait=true", self.paths.command(&self.command_id));
        let what = "waiting for the command to end";
        let mut quick_failures = 0;
        loop {
            let began = tokio::time::Instant::now();
            let outcome = match self
                .api
                .send(Route::Sandbox, Some(STREAM_HEADER_LIMIT), || self.api.request(reqwest::Method::GET, &path))
                .await
            {
                Ok(response) => match response.bytes().await {
                    Ok(bytes) => match serde_json::from_slice::<CommandAnswer>(&bytes) {
                        Ok(CommandAnswer { command: CommandInfo { exit_code: Some(code), .. } }) => return Ok(code),
                        Ok(_) => "answered without an exit code".to_string(),
                        Err(error) => format!("answered something sandlink does not understand ({error})"),
                    },
                    Err(error) => format!("broke off ({error})"),
                },
                Err(failure) => match self.failure_end(failure, what) {
                    LogsEnd::Cut { reason, .. } => reason,
                    end => return Err(end),
                },
            };
            quick_failures = if began.elapsed() >= QUICK_FAILURE { 0 } else { quick_failures + 1 };
            if quick_failures > MAX_QUICK_FAILURES {
                return Err(LogsEnd::Failed(Error::Remote {
                    status: None,
                    message: format!("Vercel's wait for command {} kept failing ({outcome}); gave up.", self.command_id),
                }));
            }
            tracing::debug!(command = %self.command_id, %outcome, "asking again for a command's end");
            tokio::time::sleep(backoff(quick_failures)).await;
        }
    }

    /// Follows the command to its end: logs (re-read after every cut), then the exit code.
    async fn follow(&self) -> Result<ExitStatus> {
        let mut quick_failures = 0;
        loop {
            let began = tokio::time::Instant::now();
            match self.read_logs(None).await {
                LogsEnd::Complete => break,
                LogsEnd::Gone(message) => {
                    self.watch.session_stopped(&self.paths, &message);
                    return Ok(self.cut_off(&message));
                }
                LogsEnd::Failed(error) => return Err(error),
                LogsEnd::Cut { reason, delivered } => {
                    quick_failures = if delivered || began.elapsed() >= QUICK_FAILURE { 0 } else { quick_failures + 1 };
                    if quick_failures > MAX_QUICK_FAILURES {
                        return Err(Error::Remote {
                            status: None,
                            message: format!(
                                "The output of command {} could not be read: its logs stream {reason}, {MAX_QUICK_FAILURES} \
                                 times in a row. Whether the command still runs is unknown; check with sandlink/status.",
                                self.command_id
                            ),
                        });
                    }
                    tracing::info!(command = %self.command_id, %reason, "reading a command's logs again after a cut");
                    tokio::time::sleep(backoff(quick_failures)).await;
                }
            }
        }
        match self.wait_for_exit().await {
            Ok(code) => Ok(exit_status(code)),
            Err(LogsEnd::Gone(message)) => {
                self.watch.session_stopped(&self.paths, &message);
                Ok(self.cut_off(&message))
            }
            Err(LogsEnd::Failed(error)) => Err(error),
            Err(_) => Err(Error::Internal("The wait for a Vercel command ended without an answer.".into())),
        }
    }

    fn cut_off(&self, message: &str) -> ExitStatus {
        ExitStatus {
            code: None,
            signal: None,
            message: Some(format!(
                "The Vercel session stopped before command {} finished ({message}); the output it printed until then \
                 is kept.",
                self.command_id
            )),
        }
    }

    /// Fetches what the sandbox holds of the output and was not delivered yet; before a stop or a snapshot, after
    /// which the logs are gone.
    pub async fn drain(&self) {
        if self.ended.load(Ordering::SeqCst) {
            return;
        }
        match self.read_logs(Some(DRAIN_QUIET)).await {
            LogsEnd::Complete | LogsEnd::Cut { .. } => {}
            LogsEnd::Gone(message) => tracing::debug!(command = %self.command_id, %message, "logs already gone at drain"),
            LogsEnd::Failed(error) => tracing::warn!(command = %self.command_id, %error, "could not drain a command's output"),
        }
    }
}

fn backoff(failures: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << failures.min(6))).min(Duration::from_secs(5))
}

/// Vercel reports a command killed by a signal as 128 + the signal (137 for SIGKILL), as a shell does.
fn exit_status(code: i64) -> ExitStatus {
    ExitStatus { code: Some(code as i32), signal: None, message: None }
}

/// The runs in flight in one sandbox, so a stop or a snapshot can fetch their unread output first.
#[derive(Default)]
pub struct RunBook {
    runs: Mutex<HashMap<String, Arc<Run>>>,
}

impl RunBook {
    fn add(&self, run: Arc<Run>) {
        crate::locks::lock(&self.runs).insert(run.command_id.clone(), run);
    }

    fn remove(&self, command_id: &str) {
        crate::locks::lock(&self.runs).remove(command_id);
    }

    /// Reads what every run in flight printed and was not delivered yet.
    pub async fn drain_all(&self) {
        let runs: Vec<Arc<Run>> = crate::locks::lock(&self.runs).values().cloned().collect();
        futures::future::join_all(runs.iter().map(|run| run.drain())).await;
    }

    pub fn in_flight(&self) -> usize {
        crate::locks::lock(&self.runs).len()
    }
}

/// What to start.
pub struct CommandSpec {
    pub program: String,
    pub args: Vec<String>,
    pub cwd: String,
    pub env: std::collections::BTreeMap<String, String>,
    pub timeout: Option<Duration>,
}

/// The body of `POST …/cmd`.
fn command_body(spec: &CommandSpec) -> Value {
    let mut body = serde_json::json!({
        "command": spec.program,
        "args": spec.args,
        "cwd": spec.cwd,
        "env": spec.env,
        "sudo": false,
    });
    if let Some(timeout) = spec.timeout {
        body["timeout"] = Value::from((timeout + PROVIDER_TIMEOUT_GRACE).as_millis() as u64);
    }
    body
}

/// A run of command `command_id` in the session of `paths`, and the receiving ends of its output.
fn new_run(api: Arc<Api>, paths: SessionPaths, watch: SessionWatch, command_id: String) -> (Arc<Run>, [mpsc::Receiver<Bytes>; 2]) {
    let (stdout_sender, stdout_receiver) = mpsc::channel(OUTPUT_CHANNEL_CHUNKS);
    let (stderr_sender, stderr_receiver) = mpsc::channel(OUTPUT_CHANNEL_CHUNKS);
    let run = Arc::new(Run {
        api,
        paths,
        watch,
        command_id,
        delivery: tokio::sync::Mutex::new(Delivery { senders: Some([stdout_sender, stderr_sender]), delivered: [0, 0] }),
        ended: AtomicBool::new(false),
    });
    (run, [stdout_receiver, stderr_receiver])
}

impl Run {
    /// Marks the run over and drops its senders, which ends the engine's readers once they have read what they hold.
    async fn finish(&self) {
        self.ended.store(true, Ordering::SeqCst);
        self.delivery.lock().await.senders = None;
    }
}

/// Starts a command detached (`POST …/cmd` without `wait`) and follows it on a task of its own.
pub async fn start(api: Arc<Api>, watch: SessionWatch, spec: CommandSpec, book: Arc<RunBook>) -> Result<Process> {
    let paths = crate::locks::lock(&watch.current).clone();
    let body = command_body(&spec);
    let answer: CommandAnswer =
        api.call_json(reqwest::Method::POST, &paths.at("/cmd"), Some(&body), Route::Sandbox, "starting the command").await?;
    let (run, [stdout_receiver, stderr_receiver]) = new_run(api, paths, watch, answer.command.id);
    book.add(run.clone());
    let (exit_sender, exit_receiver) = tokio::sync::oneshot::channel();
    let follower = run.clone();
    tokio::spawn(async move {
        let outcome = follower.follow().await;
        book.remove(&follower.command_id);
        follower.finish().await;
        let _ = exit_sender.send(outcome);
    });
    let exit = async move {
        exit_receiver
            .await
            .unwrap_or_else(|_| Err(Error::Internal("The vercel run task ended without reporting how the command ended.".into())))
    }
    .boxed();
    Ok(Process {
        stdout: output_reader(stdout_receiver),
        stderr: output_reader(stderr_receiver),
        stdin: None,
        control: Arc::new(Control { run }),
        exit,
    })
}

fn output_reader(receiver: mpsc::Receiver<Bytes>) -> BoxedReader {
    let chunks = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|chunk| (Ok::<Bytes, std::io::Error>(chunk), receiver))
    });
    Box::pin(tokio_util::io::StreamReader::new(Box::pin(chunks)))
}

/// Signals a command through the kill route of the session's API generation (Vercel signals its process group).
struct Control {
    run: Arc<Run>,
}

#[async_trait::async_trait]
impl ProcessControl for Control {
    async fn signal(&self, signal: Signal) -> Result<()> {
        if self.run.ended.load(Ordering::SeqCst) {
            return Ok(());
        }
        let number = match signal {
            Signal::Terminate => 15,
            Signal::Kill => 9,
        };
        let body = serde_json::json!({ "signal": number });
        let path = self.run.paths.kill(&self.run.command_id);
        let sending = self.run.api.call(reqwest::Method::POST, &path, Some(&body), Route::Sandbox, "signalling the command");
        match tokio::time::timeout(SIGNAL_TIMEOUT, sending).await {
            Ok(Ok(_)) => Ok(()),
            // The command ended meanwhile (or the session did): nothing is left to signal.
            Ok(Err(_)) if self.run.ended.load(Ordering::SeqCst) => Ok(()),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(Error::Timeout(format!(
                "Vercel did not answer a signal for command {} within {} s.",
                self.run.command_id,
                SIGNAL_TIMEOUT.as_secs()
            ))),
        }
    }
}

/// A helper command's end and output, for sandlink's own file work.
pub struct Reply {
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Everything a receiver gets until its sender is dropped.
async fn gather(receiver: &mut mpsc::Receiver<Bytes>) -> Vec<u8> {
    let mut collected = Vec::new();
    while let Some(chunk) = receiver.recv().await {
        collected.extend_from_slice(&chunk);
    }
    collected
}

/// Runs a short helper command to its end and collects its output, in one request where the stream holds: `wait`
/// and `logs` make `POST …/cmd` answer the command, its output and its end as one NDJSON stream. A stream cut short
/// carries on as a detached run does, from the logs (skipping what arrived) and the wait.
pub async fn collect(api: Arc<Api>, watch: SessionWatch, spec: CommandSpec) -> Result<Reply> {
    let paths = crate::locks::lock(&watch.current).clone();
    let mut body = command_body(&spec);
    body["wait"] = Value::Bool(true);
    body["logs"] = Value::Bool(true);
    let what = "running a helper command";
    let path = paths.at("/cmd");
    let response = api
        .send(Route::Sandbox, Some(STREAM_HEADER_LIMIT), || api.request(reqwest::Method::POST, &path).json(&body))
        .await
        .map_err(|failure| api.fail(failure, what))?;
    let mut stream = response.bytes_stream();
    let mut pending = Vec::new();
    let newline = loop {
        if let Some(newline) = pending.iter().position(|byte| *byte == b'\n') {
            break newline;
        }
        match stream.next().await {
            Some(Ok(chunk)) => pending.extend_from_slice(&chunk),
            _ => {
                return Err(Error::Remote {
                    status: None,
                    message: "Vercel's answer to a helper command ended before it named the command.".into(),
                })
            }
        }
    };
    let first: Vec<u8> = pending.drain(..=newline).collect();
    let answer: CommandAnswer = serde_json::from_slice(&first).map_err(|error| Error::Remote {
        status: None,
        message: format!("Vercel started a helper command with an answer sandlink does not understand: {error}."),
    })?;
    let (run, [mut stdout_receiver, mut stderr_receiver]) = new_run(api, paths, watch, answer.command.id);
    let reading = async {
        let mut position = ReplayPosition::default();
        let outcome = match run.consume(stream, pending, None, &mut position).await {
            (LogsEnd::Complete, Some(code)) => Ok(exit_status(code)),
            (LogsEnd::Failed(error), _) => Err(error),
            (LogsEnd::Gone(message), _) => {
                run.watch.session_stopped(&run.paths, &message);
                Ok(run.cut_off(&message))
            }
            (end, _) => {
                if let LogsEnd::Cut { reason, .. } = &end {
                    tracing::debug!(command = %run.command_id, %reason, "a helper command's stream was cut; following it");
                }
                run.follow().await
            }
        };
        run.finish().await;
        outcome
    };
    let (stdout, stderr, status) = tokio::join!(gather(&mut stdout_receiver), gather(&mut stderr_receiver), reading);
    let status = status?;
    if let Some(message) = status.message {
        return Err(Error::Remote { status: None, message });
    }
    Ok(Reply { code: status.code, stdout, stderr })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_run() -> (Arc<Run>, [mpsc::Receiver<Bytes>; 2]) {
        let credentials = super::super::client::Credentials {
            token: crate::credentials::Secret::new("token"),
            team_id: "team_x".into(),
            project_id: "prj_x".into(),
        };
        let api = Arc::new(Api::new(reqwest::Client::new(), "http://127.0.0.1:9", credentials, Arc::default()));
        let paths = SessionPaths::new(super::super::settings::Generation::V2, "sbx_1");
        let watch = SessionWatch {
            gone: Arc::default(),
            current: Arc::new(Mutex::new(paths.clone())),
            switching: Arc::new(tokio::sync::RwLock::new(())),
        };
        new_run(api, paths, watch, "cmd_1".into())
    }

    #[tokio::test]
    async fn replays_should_deliver_each_byte_once_whoever_reads_it() {
        let (run, [mut stdout, _stderr]) = test_run();
        let chunks: [&[u8]; 4] = [b"one\n", b"two\n", b"thr", b"ee\n"];
        // The follower reads two chunks, then its stream is cut.
        let mut follower = ReplayPosition::default();
        for chunk in &chunks[..2] {
            assert!(run.deliver(0, chunk, &mut follower).await);
        }
        // A drain replays from the start and gets one chunk further.
        let mut drain = ReplayPosition::default();
        assert!(!run.deliver(0, chunks[0], &mut drain).await);
        assert!(!run.deliver(0, chunks[1], &mut drain).await);
        assert!(run.deliver(0, chunks[2], &mut drain).await);
        // The follower's replay after the cut arrives in other pieces: only the part past what was delivered is new.
        let mut again = ReplayPosition::default();
        assert!(!run.deliver(0, b"one\ntwo\nth", &mut again).await);
        assert!(run.deliver(0, b"ree\n", &mut again).await);
        run.finish().await;
        assert_eq!(gather(&mut stdout).await, b"one\ntwo\nthree\n");
    }

    #[test]
    fn stream_lines_should_be_read_whole_and_parsed_by_kind() {
        let mut pending = b"{\"stream\":\"stdout\",\"data\":\"a\\n\"}\n\n{\"command\":{\"exitCode\":3}}\n{\"stre".to_vec();
        let lines: Vec<StreamLine> = std::iter::from_fn(|| take_line(&mut pending)).map(|line| parse_line(&line)).collect();
        assert_eq!(
            lines,
            [StreamLine::Output { stream: 0, data: "a\n".into() }, StreamLine::Ignored, StreamLine::Command { exit_code: Some(3) }]
        );
        assert_eq!(pending, b"{\"stre", "an unfinished line waits for the rest");
        assert_eq!(parse_line(b"{\"stream\":\"stderr\",\"data\":7}\n"), StreamLine::Ignored);
        assert_eq!(parse_line(b"not json\n"), StreamLine::Ignored);
        assert_eq!(
            parse_line(b"{\"stream\":\"error\",\"data\":{\"code\":\"sandbox_stopped\",\"message\":\"Stopped\"}}\n"),
            StreamLine::Error { described: "Stopped (sandbox_stopped)".into(), gone: true }
        );
        let mut delivered = [0, 0];
        let (mut first, mut replay) = (ReplayPosition::default(), ReplayPosition::default());
        assert_eq!(first.advance(&mut delivered, 1, b"abc"), Some(&b"abc"[..]));
        assert_eq!(replay.advance(&mut delivered, 1, b"ab"), None);
        assert_eq!(replay.advance(&mut delivered, 1, b"cd"), Some(&b"d"[..]));
        assert_eq!(delivered, [0, 4]);
    }

    #[test]
    fn backoff_should_grow_and_stay_bounded() {
        assert_eq!(backoff(0), Duration::from_millis(100));
        assert_eq!(backoff(3), Duration::from_millis(800));
        assert_eq!(backoff(30), Duration::from_secs(5));
    }
}
