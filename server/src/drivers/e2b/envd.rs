//! envd's process API over Connect: the envelope codec, a run's server stream with re-attach by pid, stdin and signals.
//!
//! A run is one `process.Process/Start` server stream (JSON codec, enveloped frames). The stream never carries a
//! `Connect-Timeout-Ms` header, because envd turns it into the process's lifetime and kills long commands. Instead
//! each read waits at most an idle limit (a few keepalive intervals); when the stream breaks or goes silent, a
//! `GET /health` probe tells a dead sandbox (the run ends with a clear error) from a broken connection (the driver
//! re-attaches with `process.Process/Connect` by pid and carries on, so a run never hangs and no output is lost).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::{Buf, Bytes, BytesMut};
use futures::{FutureExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};

use super::client::{is_not_found, Envd, Health};
use super::recovery;
use crate::drivers::{ExitStatus, Process, ProcessControl, Signal};
use crate::streams::BoxedReader;
use crate::error::{Error, Result};
use crate::protocol::PtySize;

const CONNECT_STREAM_CONTENT_TYPE: &str = "application/connect+json";
/// Envelope flag: the payload is compressed (sandlink never asks for compression, so this is a protocol error).
const FLAG_COMPRESSED: u8 = 0x01;
/// Envelope flag: the last frame of a stream, carrying its status.
const FLAG_END_OF_STREAM: u8 = 0x02;
/// Re-attaching this many times in a row without receiving anything past the start event means the stream cannot
/// be kept up.
const MAX_FRUITLESS_REATTACHES: u32 = 3;
/// How long a signal may take; a cancel must not wait on a sandbox that stopped answering.
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(10);
/// Chunks of output buffered between the stream and the engine's readers before the stream waits.
const OUTPUT_CHANNEL_CHUNKS: usize = 256;
/// The most stdin bytes sent in one `SendInput` call.
const STDIN_CHUNK_BYTES: usize = 32 * 1024;

/// How long streams may stay silent, and how long a health probe may take.
#[derive(Debug, Clone, Copy)]
pub struct StreamTuning {
    /// Sent as `Keepalive-Ping-Interval`: envd sends a keepalive event after this much silence.
    pub keepalive: Duration,
    /// A stream with nothing (not even a keepalive) for this long is treated as broken.
    pub idle: Duration,
    /// How long `GET /health` may take before the sandbox counts as unresponsive.
    pub probe: Duration,
}

impl StreamTuning {
    pub fn from_keepalive_seconds(seconds: u64) -> Self {
        let keepalive = Duration::from_secs(seconds.max(1));
        StreamTuning { keepalive, idle: keepalive * 3, probe: (keepalive * 2).clamp(Duration::from_secs(2), Duration::from_secs(10)) }
    }
}

/// Wraps one message in a Connect envelope: flags byte, big-endian u32 length, JSON.
pub fn envelope(message: &Value) -> Vec<u8> {
    // Serializing a `Value` cannot fail: it has no non-string map keys and no custom serializers.
    let payload = serde_json::to_vec(message).unwrap_or_default();
    let mut framed = Vec::with_capacity(5 + payload.len());
    framed.push(0);
    framed.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    framed.extend_from_slice(&payload);
    framed
}

/// One decoded frame of a Connect stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Message(Bytes),
    EndOfStream(Bytes),
}

/// Splits a Connect response body into frames, whatever the chunk boundaries.
#[derive(Default)]
pub struct FrameDecoder {
    buffer: BytesMut,
}

impl FrameDecoder {
    pub fn push(&mut self, chunk: &[u8]) {
        self.buffer.extend_from_slice(chunk);
    }

    /// The next complete frame, if one is buffered.
    pub fn next_frame(&mut self) -> std::result::Result<Option<Frame>, String> {
        if self.buffer.len() < 5 {
            return Ok(None);
        }
        let flags = self.buffer[0];
        let length = u32::from_be_bytes([self.buffer[1], self.buffer[2], self.buffer[3], self.buffer[4]]) as usize;
        if self.buffer.len() < 5 + length {
            return Ok(None);
        }
        if flags & FLAG_COMPRESSED != 0 {
            return Err("envd sent a compressed frame although sandlink asked for none".into());
        }
        self.buffer.advance(5);
        let payload = self.buffer.split_to(length).freeze();
        Ok(Some(if flags & FLAG_END_OF_STREAM != 0 { Frame::EndOfStream(payload) } else { Frame::Message(payload) }))
    }
}

#[derive(Debug, Deserialize, Default)]
struct StreamMessage {
    #[serde(default)]
    event: Option<ProcessEvent>,
}

#[derive(Debug, Deserialize, Default)]
struct ProcessEvent {
    #[serde(default)]
    start: Option<StartEvent>,
    #[serde(default)]
    data: Option<DataEvent>,
    #[serde(default)]
    end: Option<EndEvent>,
}

#[derive(Debug, Deserialize)]
struct StartEvent {
    pid: u32,
}

#[derive(Debug, Deserialize, Default)]
struct DataEvent {
    #[serde(default)]
    stdout: Option<String>,
    #[serde(default)]
    stderr: Option<String>,
    #[serde(default)]
    pty: Option<String>,
}

/// envd's end event; protojson omits zero values, so a missing `exitCode` means 0 and a missing `exited` false.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(rename_all = "camelCase")]
pub struct EndEvent {
    #[serde(default)]
    pub exit_code: i32,
    #[serde(default)]
    pub exited: bool,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
struct EndOfStream {
    #[serde(default)]
    error: Option<ConnectError>,
}

#[derive(Debug, Deserialize)]
struct ConnectError {
    code: String,
    #[serde(default)]
    message: String,
}

/// How a process ended, from envd's end event.
pub fn exit_status(end: &EndEvent) -> ExitStatus {
    let error = end.error.clone().filter(|error| !error.is_empty());
    if end.exited {
        return ExitStatus { code: Some(end.exit_code), signal: None, message: error };
    }
    let signal = end.status.strip_prefix("signal: ").map(go_signal_name);
    let message = error.or_else(|| {
        signal.is_none().then(|| format!("The command ended abnormally ({}).", end.status))
    });
    ExitStatus { code: None, signal, message }
}

/// Go's signal descriptions (what envd copies into `status`) back to signal names.
fn go_signal_name(description: &str) -> String {
    let name = match description {
        "killed" => "SIGKILL",
        "terminated" => "SIGTERM",
        "interrupt" => "SIGINT",
        "hangup" => "SIGHUP",
        "broken pipe" => "SIGPIPE",
        "aborted" => "SIGABRT",
        "segmentation fault" => "SIGSEGV",
        "quit" => "SIGQUIT",
        "user defined signal 1" => "SIGUSR1",
        "user defined signal 2" => "SIGUSR2",
        other => return other.to_string(),
    };
    name.to_string()
}

/// A Connect error from an end-of-stream frame, as a sentence.
fn connect_error(error: ConnectError, what: &str) -> Error {
    let ConnectError { code, message } = error;
    match code.as_str() {
        "not_found" => Error::Remote {
            status: Some(404),
            message: format!("The sandbox no longer knows the process while {what} ({message})."),
        },
        "deadline_exceeded" => Error::Timeout(format!("envd ended the command at its deadline while {what} ({message}).")),
        "unavailable" => Error::Remote {
            status: Some(503),
            message: format!("The sandbox is unavailable, it may have timed out, while {what} ({message})."),
        },
        _ => Error::Remote { status: None, message: format!("envd failed while {what}: {message} ({code}).") },
    }
}

/// What one run's stream task and its handles share.
#[derive(Default)]
struct RunShared {
    /// 0 until the start event arrives.
    pid: AtomicU32,
    /// Set once the run's outcome is known; signals and stdin closing are pointless afterwards.
    ended: AtomicBool,
    /// Output bytes delivered to the engine, the offsets a recovery reads the run's files from.
    stdout_bytes: AtomicU64,
    stderr_bytes: AtomicU64,
}

/// Where a run's output goes.
struct Outputs {
    stdout: mpsc::Sender<Bytes>,
    stderr: mpsc::Sender<Bytes>,
}

/// How one stream ended.
enum StreamEnd {
    /// The end event arrived.
    Finished(ExitStatus),
    /// envd reported an error for the RPC.
    Failed(Error),
    /// The stream broke or went silent; `progressed` says whether it delivered anything past its start event.
    Broken { reason: String, progressed: bool },
}

/// Opens a server stream and checks that the answer is a stream, not an error in disguise.
async fn open_stream(envd: &Envd, rpc: &str, message: &Value, tuning: &StreamTuning, what: &str) -> Result<reqwest::Response> {
    let body = envelope(message);
    let path = format!("/{rpc}");
    let response = envd.send(Some(tuning.idle + tuning.probe), || {
        envd.request(reqwest::Method::POST, &path)
            .header(reqwest::header::CONTENT_TYPE, CONNECT_STREAM_CONTENT_TYPE)
            .header("Connect-Protocol-Version", "1")
            .header("Keepalive-Ping-Interval", tuning.keepalive.as_secs().to_string())
            .body(body.clone())
    })
    .await
    .map_err(|failure| envd.fail(failure, what))?;
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .to_string();
    if !content_type.starts_with(CONNECT_STREAM_CONTENT_TYPE) {
        let failure = Envd::failure(response).await;
        return Err(envd.fail(failure, what));
    }
    Ok(response)
}

/// Reads one stream until it ends, breaks or goes silent, forwarding output as it comes.
async fn pump_stream(
    response: reqwest::Response,
    tuning: &StreamTuning,
    shared: &RunShared,
    outputs: &Outputs,
    pid_sender: &mut Option<oneshot::Sender<u32>>,
    end: &mut Option<EndEvent>,
    what: &str,
    deliver: bool,
) -> StreamEnd {
    let mut body = response.bytes_stream();
    let mut decoder = FrameDecoder::default();
    let mut progressed = false;
    loop {
        let chunk = match tokio::time::timeout(tuning.idle, body.next()).await {
            Err(_) => {
                return StreamEnd::Broken {
                    reason: format!("went silent for {} s (no output and no keepalive)", tuning.idle.as_secs()),
                    progressed,
                }
            }
            Ok(None) => return StreamEnd::Broken { reason: "closed before the command's end".into(), progressed },
            Ok(Some(Err(error))) => return StreamEnd::Broken { reason: format!("broke off ({error})"), progressed },
            Ok(Some(Ok(chunk))) => chunk,
        };
        decoder.push(&chunk);
        loop {
            let frame = match decoder.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(problem) => return StreamEnd::Failed(Error::Remote { status: None, message: format!("{problem} while {what}.") }),
            };
            match frame {
                Frame::EndOfStream(payload) => {
                    let trailer: EndOfStream = serde_json::from_slice(&payload).unwrap_or_default();
                    if let Some(end) = end.take() {
                        return StreamEnd::Finished(exit_status(&end));
                    }
                    return match trailer.error {
                        Some(error) => StreamEnd::Failed(connect_error(error, what)),
                        None => StreamEnd::Broken { reason: "ended without the command's end event".into(), progressed },
                    };
                }
                Frame::Message(payload) => {
                    let message: StreamMessage = match serde_json::from_slice(&payload) {
                        Ok(message) => message,
                        Err(error) => {
                            tracing::warn!(%error, "ignoring an envd stream message sandlink does not understand");
                            continue;
                        }
                    };
                    let Some(event) = message.event else { continue };
                    // Every stream, a re-attach's too, opens with the start event: only what follows it (output,
                    // a keepalive, the end) shows the stream can be kept up, so only that resets the give-up count.
                    if event.start.is_none() {
                        progressed = true;
                    }
                    if let Some(start) = event.start {
                        shared.pid.store(start.pid, Ordering::SeqCst);
                        if let Some(sender) = pid_sender.take() {
                            let _ = sender.send(start.pid);
                        }
                    }
                    if let Some(data) = event.data.filter(|_| deliver) {
                        let mut count = forward(&data.stdout, &outputs.stdout).await;
                        count += forward(&data.pty, &outputs.stdout).await;
                        shared.stdout_bytes.fetch_add(count, Ordering::SeqCst);
                        let count = forward(&data.stderr, &outputs.stderr).await;
                        shared.stderr_bytes.fetch_add(count, Ordering::SeqCst);
                    }
                    if let Some(end_event) = event.end {
                        *end = Some(end_event);
                    }
                }
            }
        }
    }
}

/// Forwards one piece of output; answers how many bytes it was.
async fn forward(encoded: &Option<String>, sender: &mpsc::Sender<Bytes>) -> u64 {
    let Some(encoded) = encoded else { return 0 };
    match base64::engine::general_purpose::STANDARD.decode(encoded) {
        // A closed receiver means the engine stopped reading; the run still goes on to its end.
        Ok(bytes) if !bytes.is_empty() => {
            let count = bytes.len() as u64;
            let _ = sender.send(Bytes::from(bytes)).await;
            count
        }
        Ok(_) => 0,
        Err(error) => {
            tracing::warn!(%error, "envd sent output that is not base64; dropped it");
            0
        }
    }
}

/// Follows a run from Start to its end, re-attaching by pid whenever the stream breaks while the sandbox lives.
async fn follow_run(
    envd: Arc<Envd>,
    tuning: StreamTuning,
    start_message: Value,
    shared: Arc<RunShared>,
    outputs: Outputs,
    pid_sender: oneshot::Sender<u32>,
    files: Option<String>,
) -> Result<ExitStatus> {
    let mut pid_sender = Some(pid_sender);
    let mut end = None;
    let mut what = "starting the command";
    let mut response = open_stream(&envd, "process.Process/Start", &start_message, &tuning, what).await?;
    what = "streaming the command's output";
    let mut fruitless_reattaches = 0;
    // Once a stream broke, a run with output files takes its output from them; envd's streams only tell its end.
    let mut recovering = false;
    loop {
        let ended = if recovering {
            let folder = files.as_deref().unwrap_or_default();
            let pump = pump_stream(response, &tuning, &shared, &outputs, &mut pid_sender, &mut end, what, false);
            tokio::pin!(pump);
            loop {
                tokio::select! {
                    ended = &mut pump => break ended,
                    () = tokio::time::sleep(RECOVERY_POLL), if recovering => {
                        match catch_up(&envd, tuning, folder, &delivery(&shared, &outputs)).await {
                            Ok(Some(_)) => {}
                            // No files: nothing to recover from; what the streams carry is all there is.
                            Ok(None) => recovering = false,
                            Err(error) => tracing::debug!(%error, "reading a run's output files failed; reading again later"),
                        }
                    }
                }
            }
        } else {
            pump_stream(response, &tuning, &shared, &outputs, &mut pid_sender, &mut end, what, true).await
        };
        let ended = match ended {
            StreamEnd::Broken { .. } if end.is_some() => {
                // The end event arrived; only the closing frame was lost.
                StreamEnd::Finished(exit_status(&end.take().unwrap_or_default()))
            }
            ended => ended,
        };
        if recovering {
            if let StreamEnd::Finished(status) = ended {
                let folder = files.as_deref().unwrap_or_default();
                return Ok(deliver_the_rest(&envd, tuning, folder, &shared, &outputs, status).await);
            }
        } else if let (StreamEnd::Broken { .. }, Some(_)) = (&ended, &files) {
            tracing::info!("a run's stream broke; its output now comes from its files in the sandbox");
            recovering = true;
        }
        match ended {
            StreamEnd::Finished(status) => return Ok(status),
            StreamEnd::Failed(error) => return Err(error),
            StreamEnd::Broken { reason, progressed } => {
                let pid = shared.pid.load(Ordering::SeqCst);
                if pid == 0 {
                    return Err(Error::Remote {
                        status: None,
                        message: format!("The command's stream {reason} before envd reported that it started."),
                    });
                }
                match envd.health(tuning.probe).await {
                    Health::Gone(error) => return Err(error),
                    Health::Unresponsive => {
                        return Err(Error::Remote {
                            status: None,
                            message: format!(
                                "The E2B sandbox stopped answering: the command's stream {reason}, and the sandbox's \
                                 health check got no answer within {} s. Whether the command still runs is unknown; \
                                 check the sandbox's status or connect again.",
                                tuning.probe.as_secs()
                            ),
                        })
                    }
                    Health::Healthy => {}
                }
                fruitless_reattaches = if progressed { 0 } else { fruitless_reattaches + 1 };
                if fruitless_reattaches > MAX_FRUITLESS_REATTACHES {
                    return Err(Error::Remote {
                        status: None,
                        message: format!(
                            "The command's stream kept breaking ({reason}) although the sandbox answers; gave up after \
                             {MAX_FRUITLESS_REATTACHES} attempts to re-attach to process {pid}."
                        ),
                    });
                }
                tracing::info!(pid, %reason, "re-attaching to a command after its stream broke");
                what = "re-attaching to the command";
                let selector = json!({ "process": { "pid": pid } });
                response = open_stream(&envd, "process.Process/Connect", &selector, &tuning, what).await?;
            }
        }
    }
}

/// How often a recovering run's files are read while its re-attached stream waits for the end.
const RECOVERY_POLL: Duration = Duration::from_millis(250);
/// Failed reads in a row before a recovering run's end is reported with what was delivered.
const RECOVERY_ATTEMPTS: u32 = 20;

/// Delivers what a recoverable run's files hold beyond what was delivered (see `recovery`); `None` when the run has
/// no files.
async fn catch_up(
    envd: &Arc<Envd>,
    tuning: StreamTuning,
    folder: &str,
    delivery: &recovery::Delivery<'_>,
) -> Result<Option<(u64, u64)>> {
    let read = run_once(envd, tuning, recovery::catch_up_command(folder, delivery));
    let reply = tokio::time::timeout(recovery::CATCH_UP_LIMIT, read)
        .await
        .map_err(|_| Error::Remote { status: None, message: "Reading a run's output files took too long.".into() })??;
    recovery::deliver(&reply, delivery).await
}

fn delivery<'a>(shared: &'a RunShared, outputs: &'a Outputs) -> recovery::Delivery<'a> {
    recovery::Delivery {
        stdout: &outputs.stdout,
        stderr: &outputs.stderr,
        stdout_bytes: &shared.stdout_bytes,
        stderr_bytes: &shared.stderr_bytes,
    }
}

/// After the end of a recovering run: reads its files until everything they hold was delivered, then its status.
async fn deliver_the_rest(
    envd: &Arc<Envd>,
    tuning: StreamTuning,
    folder: &str,
    shared: &RunShared,
    outputs: &Outputs,
    status: ExitStatus,
) -> ExitStatus {
    let mut failures = 0;
    loop {
        match catch_up(envd, tuning, folder, &delivery(shared, outputs)).await {
            Ok(None) => return status,
            Ok(Some((stdout_total, stderr_total)))
                if stdout_total <= shared.stdout_bytes.load(Ordering::SeqCst)
                    && stderr_total <= shared.stderr_bytes.load(Ordering::SeqCst) =>
            {
                return status
            }
            Ok(Some(_)) => failures = 0,
            Err(error) if failures < RECOVERY_ATTEMPTS => {
                failures += 1;
                tracing::debug!(%error, failures, "reading a run's output files failed; reading again");
                tokio::time::sleep(Duration::from_millis(100 * u64::from(failures))).await;
            }
            Err(error) => {
                let mut status = status;
                status.message = Some(format!(
                    "The run ended, but the rest of its output could not be read from the sandbox ({error})."
                ));
                return status;
            }
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

/// Starts a process through envd and answers once envd has reported its pid.
pub async fn start(envd: Arc<Envd>, tuning: StreamTuning, config: Value, stdin: bool) -> Result<Process> {
    start_with(envd, tuning, config, stdin, None, None).await
}

/// `start`, attached to a new terminal of `size` in the sandbox when one is given (envd's `pty`): its output comes as
/// `pty` data, its input goes as `pty` bytes, and `Control::resize` changes its size with `Update`. A run whose output
/// is also in `files` (`recovery::wrap`) is read from there after a dropped stream.
pub async fn start_with(
    envd: Arc<Envd>,
    tuning: StreamTuning,
    config: Value,
    stdin: bool,
    terminal: Option<PtySize>,
    files: Option<String>,
) -> Result<Process> {
    // `stdin` is a proto3 optional field: envd gives the process an open pipe when it is absent, so always send it.
    let mut start_message = json!({ "process": config, "stdin": stdin && terminal.is_none() });
    if let Some(size) = terminal {
        start_message["pty"] = json!({ "size": { "cols": size.cols, "rows": size.rows } });
    }
    let stdin = stdin || terminal.is_some();
    let (stdout_sender, stdout_receiver) = mpsc::channel(OUTPUT_CHANNEL_CHUNKS);
    let (stderr_sender, stderr_receiver) = mpsc::channel(OUTPUT_CHANNEL_CHUNKS);
    let (pid_sender, pid_receiver) = oneshot::channel();
    let (exit_sender, exit_receiver) = oneshot::channel();
    let shared = Arc::new(RunShared::default());
    let outputs = Outputs { stdout: stdout_sender, stderr: stderr_sender };
    let task_shared = shared.clone();
    let task_envd = envd.clone();
    tokio::spawn(async move {
        let outcome = follow_run(task_envd, tuning, start_message, task_shared.clone(), outputs, pid_sender, files).await;
        task_shared.ended.store(true, Ordering::SeqCst);
        let _ = exit_sender.send(outcome);
    });
    let exit_receiver = match pid_receiver.await {
        Ok(_pid) => exit_receiver,
        Err(_) => {
            // The task ended before the start event: its outcome says why.
            return Err(match exit_receiver.await {
                Ok(Err(error)) => error,
                _ => Error::Remote { status: None, message: "envd ended the command before it started.".into() },
            });
        }
    };
    let stdin_writer = stdin.then(|| spawn_stdin_forwarder(envd.clone(), shared.clone(), terminal.is_some()));
    let exit = async move {
        exit_receiver
            .await
            .unwrap_or_else(|_| Err(Error::Internal("The e2b run task ended without reporting how the command ended.".into())))
    }
    .boxed();
    Ok(Process {
        stdout: output_reader(stdout_receiver),
        stderr: output_reader(stderr_receiver),
        stdin: stdin_writer,
        control: Arc::new(Control { envd, shared, terminal: terminal.is_some() }),
        exit,
    })
}

/// Gives the engine a writer whose bytes go to the process with `SendInput`; closing it closes the process's stdin.
fn spawn_stdin_forwarder(envd: Arc<Envd>, shared: Arc<RunShared>, terminal: bool) -> crate::drivers::BoxedWriter {
    // A terminal's keystrokes go in as `pty` bytes; it has no stdin of its own to close (its end of input is Ctrl-D).
    let input_field = if terminal { "pty" } else { "stdin" };
    let (writer, mut reader) = tokio::io::duplex(2 * STDIN_CHUNK_BYTES);
    tokio::spawn(async move {
        let pid = shared.pid.load(Ordering::SeqCst);
        let mut buffer = vec![0u8; STDIN_CHUNK_BYTES];
        loop {
            let read = match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(read) => read,
            };
            let encoded = base64::engine::general_purpose::STANDARD.encode(&buffer[..read]);
            let message = json!({ "process": { "pid": pid }, "input": { input_field: encoded } });
            if let Err(error) = envd.unary("process.Process/SendInput", &message, "sending input to the command").await {
                // Dropping the reader makes the engine's next write fail, which it reports to the user.
                tracing::warn!(%error, "could not send input to an e2b command");
                return;
            }
        }
        if !terminal && !shared.ended.load(Ordering::SeqCst) {
            let message = json!({ "process": { "pid": pid } });
            if let Err(error) = envd.unary("process.Process/CloseStdin", &message, "closing the command's input").await {
                tracing::warn!(%error, "could not close an e2b command's stdin");
            }
        }
    });
    Box::pin(writer)
}

/// Signals a run's process through envd (which signals its process group).
struct Control {
    envd: Arc<Envd>,
    shared: Arc<RunShared>,
    /// The process was started on a terminal, which `resize` changes.
    terminal: bool,
}

#[async_trait::async_trait]
impl ProcessControl for Control {
    async fn signal(&self, signal: Signal) -> Result<()> {
        // After the end event envd no longer knows the pid; asking would only cost a request.
        if self.shared.ended.load(Ordering::SeqCst) {
            return Ok(());
        }
        let name = match signal {
            Signal::Terminate => "SIGNAL_SIGTERM",
            Signal::Kill => "SIGNAL_SIGKILL",
        };
        let pid = self.shared.pid.load(Ordering::SeqCst);
        let message = json!({ "process": { "pid": pid }, "signal": name });
        match self.envd.unary_within("process.Process/SendSignal", &message, "signalling the command", SIGNAL_TIMEOUT).await {
            Ok(_) => Ok(()),
            Err(error) if is_not_found(&error) => Ok(()),
            Err(error) => Err(error),
        }
    }

    async fn resize(&self, size: PtySize) -> Result<()> {
        if !self.terminal {
            return Err(Error::InvalidParams("This run has no terminal to resize.".into()));
        }
        if self.shared.ended.load(Ordering::SeqCst) {
            return Ok(());
        }
        let pid = self.shared.pid.load(Ordering::SeqCst);
        let message = json!({ "process": { "pid": pid }, "pty": { "size": { "cols": size.cols, "rows": size.rows } } });
        match self.envd.unary_within("process.Process/Update", &message, "resizing the command's terminal", SIGNAL_TIMEOUT).await {
            Ok(_) => Ok(()),
            Err(error) if is_not_found(&error) => Ok(()),
            Err(error) => Err(error),
        }
    }
}

/// Runs a short command on one stream, without re-attaching: answers its stdout once it exited with 0; a stream
/// that broke is an error (the caller asks again).
pub async fn run_once(envd: &Arc<Envd>, tuning: StreamTuning, config: Value) -> Result<Vec<u8>> {
    let what = "reading a run's output files";
    let response = open_stream(envd, "process.Process/Start", &json!({ "process": config, "stdin": false }), &tuning, what).await?;
    let (stdout_sender, mut stdout_receiver) = mpsc::channel(OUTPUT_CHANNEL_CHUNKS);
    let (stderr_sender, mut stderr_receiver) = mpsc::channel(OUTPUT_CHANNEL_CHUNKS);
    let shared = RunShared::default();
    let (mut pid_sender, mut end) = (None, None);
    let pump = async {
        let outputs = Outputs { stdout: stdout_sender, stderr: stderr_sender };
        pump_stream(response, &tuning, &shared, &outputs, &mut pid_sender, &mut end, what, true).await
    };
    let collect_stdout = async {
        let mut bytes = Vec::new();
        while let Some(chunk) = stdout_receiver.recv().await {
            bytes.extend_from_slice(&chunk);
        }
        bytes
    };
    let drain_stderr = async { while stderr_receiver.recv().await.is_some() {} };
    let (ended, stdout, ()) = tokio::join!(pump, collect_stdout, drain_stderr);
    let status = match ended {
        StreamEnd::Finished(status) => status,
        StreamEnd::Broken { .. } if end.is_some() => exit_status(&end.unwrap_or_default()),
        StreamEnd::Failed(error) => return Err(error),
        StreamEnd::Broken { reason, .. } => {
            return Err(Error::Remote { status: None, message: format!("The stream {reason} while {what}.") })
        }
    };
    if status.code != Some(0) {
        return Err(Error::Remote { status: None, message: format!("The command failed while {what}.") });
    }
    Ok(stdout)
}

/// Runs a short helper command to completion and answers its exit code and combined output (for chmod, symlinks).
pub async fn run_to_end(envd: Arc<Envd>, tuning: StreamTuning, config: Value) -> Result<(ExitStatus, String)> {
    let mut process = start(envd, tuning, config, false).await?;
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let (_, _, status) = tokio::join!(
        process.stdout.read_to_end(&mut stdout),
        process.stderr.read_to_end(&mut stderr),
        &mut process.exit
    );
    let mut output = String::from_utf8_lossy(&stdout).into_owned();
    output.push_str(&String::from_utf8_lossy(&stderr));
    Ok((status?, output))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoder_should_split_frames_across_arbitrary_chunks() {
        let mut bytes = envelope(&json!({"event": {"data": {"stdout": "aGkK"}}}));
        bytes.extend_from_slice(&[0x02, 0, 0, 0, 2, b'{', b'}']);
        let mut decoder = FrameDecoder::default();
        let mut frames = Vec::new();
        for byte in bytes {
            decoder.push(&[byte]);
            while let Some(frame) = decoder.next_frame().expect("valid frames") {
                frames.push(frame);
            }
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0], Frame::Message(Bytes::from_static(br#"{"event":{"data":{"stdout":"aGkK"}}}"#)));
        assert_eq!(frames[1], Frame::EndOfStream(Bytes::from_static(b"{}")));
    }

    #[test]
    fn envelope_should_match_the_documented_bytes() {
        let framed = envelope(&json!({"process": {"pid": 1}}));
        assert_eq!(&framed[..5], &[0, 0, 0, 0, 21]);
        assert_eq!(&framed[5..], br#"{"process":{"pid":1}}"#);
    }

    #[test]
    fn end_event_without_exit_code_should_mean_zero() {
        let end: EndEvent = serde_json::from_str(r#"{"exited":true,"status":"exit status 0"}"#).expect("valid JSON");
        assert_eq!(exit_status(&end), ExitStatus { code: Some(0), signal: None, message: None });
        let killed: EndEvent = serde_json::from_str(r#"{"exitCode":-1,"status":"signal: killed"}"#).expect("valid JSON");
        assert_eq!(exit_status(&killed).signal.as_deref(), Some("SIGKILL"));
        assert_eq!(exit_status(&killed).code, None);
    }
}
