//! Runs: starting a process in a sandbox, feeding its stdin, streaming its output, and ending its whole tree.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{oneshot, Notify};

use super::runlog::{CappedLog, LogTotals};
use super::output::{skip_marker, split_text, LiveView, PathMapper, Segment, Utf8Decoder, NOTIFICATION_LIMIT_BYTES};
use super::Events;
use crate::drivers::{ExitStatus, Process, ProcessControl, Signal};
use crate::streams::{BoxedReader, BoxedWriter};
use crate::error::{Error, Result};
use crate::protocol::{ExitParams, ExitReason, OutputParams, OutputStream};

/// How long a process tree gets between SIGTERM and SIGKILL.
pub const TERMINATE_GRACE: Duration = Duration::from_millis(1500);
/// After the main process exits, how long processes it left behind may keep its output open.
const LINGER_AFTER_EXIT: Duration = Duration::from_millis(300);
/// Each read from a process takes at most this much, which keeps the live view responsive.
const READ_CHUNK_BYTES: usize = 128 * 1024;
/// Chunks waiting for the log writer; disk stalls are absorbed up to this many before the readers wait.
const LOG_QUEUE_CHUNKS: usize = 64;

/// The most input a run may hold queued and not yet taken by its process; `sandlink/input` past it is refused.
pub const INPUT_BACKLOG_BYTES: usize = 8 * 1024 * 1024;

/// A run in flight, as the engine's request handlers see it.
pub struct RunHandle {
    pub run_id: String,
    pub session_id: String,
    /// The command as the user gave it, for menus that offer to cancel it.
    pub command: String,
    pub started: Instant,
    /// When it started, as the protocol writes times.
    pub started_at: String,
    /// How it ended, once it has (what `sandlink/exit` said).
    pub exit: std::sync::OnceLock<ExitParams>,
    /// The queue in front of the process's stdin, when it was started with one.
    stdin: Option<Arc<StdinFeed>>,
    /// Why input is refused as `unsupported`: the run asked for stdin, and its driver has no way to write it.
    stdin_refusal: Option<String>,
    cancel_requested: AtomicBool,
    stop: Notify,
    /// The run's process control when it was started with a terminal, which `resize` reaches; let go once the
    /// run has ended, so a remembered run holds nothing of its sandbox.
    terminal: std::sync::Mutex<Option<Arc<dyn ProcessControl>>>,
    /// Turns true once the run has ended and left the engine's table.
    ended: tokio::sync::watch::Sender<bool>,
    /// Why the lifecycle manager stopped it (a limit), with the sentence `sandlink/exit` carries.
    stop_reason: std::sync::OnceLock<(ExitReason, String)>,
}

impl RunHandle {
    /// Says the run has ended and left the engine's table; wakes whoever waits in `ended`.
    pub fn mark_ended(&self) {
        self.ended.send_replace(true);
    }

    /// Resolves once `mark_ended` was called.
    pub async fn ended(&self) {
        let mut ended = self.ended.subscribe();
        let _ = ended.wait_for(|ended| *ended).await;
    }

    /// Queues text for the run's stdin, closing it after the text when `eof`. It never waits for the process to
    /// read: a process that does not read would otherwise hold the request (and the client) for as long as it runs.
    /// A write that fails later is reported by the next call.
    pub fn input(&self, text: &str, eof: bool) -> Result<()> {
        let Some(feed) = &self.stdin else {
            if let Some(refusal) = &self.stdin_refusal {
                return Err(Error::Unsupported(refusal.clone()));
            }
            return Err(self.no_open_stdin());
        };
        let mut state = feed.lock();
        if let Some(failure) = &state.failure {
            return Err(Error::InvalidParams(format!(
                "Run {} no longer reads its stdin ({failure}); the process may have exited.",
                self.run_id
            )));
        }
        if state.eof_queued {
            return Err(self.no_open_stdin());
        }
        if state.queued_bytes + text.len() > INPUT_BACKLOG_BYTES {
            return Err(Error::InputBacklogFull(format!(
                "Run {} has not read {} of the input sent to it yet, and sandlink queues at most {} per run; \
                 this {} was not queued. Send it again once the process has read some, or in smaller pieces.",
                self.run_id,
                byte_size(state.queued_bytes),
                byte_size(INPUT_BACKLOG_BYTES),
                byte_size(text.len()),
            )));
        }
        if !text.is_empty() {
            state.queued_bytes += text.len();
            state.chunks.push_back(text.as_bytes().to_vec());
        }
        state.eof_queued = eof;
        drop(state);
        feed.wake.notify_one();
        Ok(())
    }

    fn no_open_stdin(&self) -> Error {
        Error::InvalidParams(format!(
            "Run {} has no open stdin: start it with `stdin: true`, and do not write after `eof`.",
            self.run_id
        ))
    }

    /// Ends the run gracefully (SIGTERM, grace, SIGKILL) for a limit; `sandlink/exit` carries `reason` and
    /// `message` instead of `cancelled: true`.
    pub fn stop_because(&self, reason: ExitReason, message: String) {
        let _ = self.stop_reason.set((reason, message));
        self.cancel();
    }

    /// Changes the window size of the run's terminal; refused for a run started without one.
    pub async fn resize(&self, size: crate::protocol::PtySize) -> Result<()> {
        let control = crate::locks::lock(&self.terminal).clone();
        match control {
            Some(control) => control.resize(size).await,
            // Ended, though still in the engine's table for a moment: as gone as a run that left it.
            None if self.exit.get().is_some() => Err(Error::UnknownRun(self.run_id.clone())),
            None => Err(Error::InvalidParams(format!(
                "Run {} has no terminal to resize: start it with `pty: {{ cols, rows }}`.",
                self.run_id
            ))),
        }
    }

    /// Asks the run to end; the `exit` notification follows with `cancelled: true`.
    pub fn cancel(&self) {
        self.cancel_requested.store(true, Ordering::SeqCst);
        self.stop.notify_one();
    }
}

/// Input accepted for a run and not yet written, shared by the request handlers and the run's stdin writer.
struct StdinFeed {
    state: std::sync::Mutex<FeedState>,
    /// Woken when input or the end of input is queued.
    wake: Notify,
}

#[derive(Default)]
struct FeedState {
    chunks: std::collections::VecDeque<Vec<u8>>,
    /// Bytes queued or being written.
    queued_bytes: usize,
    /// No input is accepted after the end of input was asked for.
    eof_queued: bool,
    /// Why writing stopped, once the process stopped taking input.
    failure: Option<String>,
}

impl StdinFeed {
    fn lock(&self) -> std::sync::MutexGuard<'_, FeedState> {
        // The state stays consistent across a panic (plain counters and a queue), so a poisoned lock is usable.
        crate::locks::lock(&self.state)
    }
}

/// What the stdin writer does next.
enum FeedStep {
    Write(Vec<u8>),
    Close,
    Wait,
}

/// Writes queued input to the process, in order, until the end of input or a failed write; runs beside the pump.
async fn feed_stdin(feed: Arc<StdinFeed>, mut writer: BoxedWriter) {
    loop {
        let step = {
            let mut state = feed.lock();
            match state.chunks.pop_front() {
                Some(chunk) => FeedStep::Write(chunk),
                None if state.eof_queued => FeedStep::Close,
                None => FeedStep::Wait,
            }
        };
        match step {
            FeedStep::Wait => feed.wake.notified().await,
            FeedStep::Write(chunk) => {
                let written = async {
                    writer.write_all(&chunk).await?;
                    writer.flush().await
                }
                .await;
                let mut state = feed.lock();
                state.queued_bytes = state.queued_bytes.saturating_sub(chunk.len());
                if let Err(error) = written {
                    state.failure = Some(error.to_string());
                    state.chunks.clear();
                    state.queued_bytes = 0;
                    return;
                }
            }
            FeedStep::Close => {
                let _ = writer.shutdown().await;
                return;
            }
        }
    }
}

fn byte_size(bytes: usize) -> String {
    if bytes >= 1024 * 1024 {
        format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
    } else if bytes >= 1024 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{bytes} bytes")
    }
}

/// Everything the pump of one run needs besides the process.
pub struct RunContext {
    pub run_id: String,
    pub session_id: String,
    pub events: Arc<dyn Events>,
    pub log_path: PathBuf,
    pub command: String,
    pub timeout: Option<Duration>,
    /// Wait for the receiver instead of skipping output (the command line wants every byte on its terminal).
    pub lossless: bool,
    /// Paths into the sandbox's root shown as workspace paths in the live view; `None` leaves output as it is.
    pub paths: Option<super::output::PathMapper>,
    /// Set when the run asked for stdin and its driver cannot write it (see `RunHandle::input`).
    pub stdin_refusal: Option<String>,
    /// The session's hourly price, for the run's share of the cost in `sandlink/exit`.
    pub usd_per_hour: Option<f64>,
    /// The run is attached to a terminal, so it can be resized.
    pub terminal: bool,
    /// The most of the output the log file keeps (`[runs] logCap`); the rest is named by a marker at its end.
    pub log_cap: u64,
}

/// Starts pumping a started process; returns the handle and a signal that lets output flow once the caller has
/// answered the request (so clients learn the run id before its first output).
pub fn start(context: RunContext, mut process: Process) -> Result<(Arc<RunHandle>, oneshot::Sender<()>, tokio::task::JoinHandle<()>)> {
    let log_file = std::fs::File::create(&context.log_path)
        .map_err(|source| Error::io(format!("Could not create the run log {}", context.log_path.display()), source))?;
    let handle = Arc::new(RunHandle {
        run_id: context.run_id.clone(),
        session_id: context.session_id.clone(),
        command: context.command.clone(),
        started: Instant::now(),
        started_at: crate::clock::now_rfc3339(),
        exit: std::sync::OnceLock::new(),
        stdin: process
            .stdin
            .is_some()
            .then(|| Arc::new(StdinFeed { state: std::sync::Mutex::new(FeedState::default()), wake: Notify::new() })),
        stdin_refusal: context.stdin_refusal.clone(),
        cancel_requested: AtomicBool::new(false),
        stop: Notify::new(),
        terminal: std::sync::Mutex::new(context.terminal.then(|| process.control.clone())),
        ended: tokio::sync::watch::Sender::new(false),
        stop_reason: std::sync::OnceLock::new(),
    });
    let feeder = match (process.stdin.take(), &handle.stdin) {
        (Some(writer), Some(feed)) => Some(tokio::spawn(feed_stdin(feed.clone(), writer))),
        _ => None,
    };
    let (answered_sender, answered) = oneshot::channel();
    let pump_handle = handle.clone();
    let task = tokio::spawn(async move { pump(context, process, pump_handle, feeder, log_file, answered).await });
    Ok((handle, answered_sender, task))
}

async fn pump(
    context: RunContext,
    process: Process,
    handle: Arc<RunHandle>,
    feeder: Option<tokio::task::JoinHandle<()>>,
    log_file: std::fs::File,
    answered: oneshot::Receiver<()>,
) {
    let started = Instant::now();
    let live = Arc::new(LiveView::new());
    let (log, log_writer) = spawn_log_writer(log_file, context.log_cap);
    let Process { stdout, stderr, control, exit, .. } = process;
    let lossless = context.lossless;
    let mut readers = tokio::task::JoinSet::new();
    readers.spawn(read_into(stdout, OutputStream::Stdout, live.clone(), log.clone(), lossless));
    readers.spawn(read_into(stderr, OutputStream::Stderr, live.clone(), log, lossless));
    let log_path_text = context.log_path.to_string_lossy().into_owned();
    let sender = tokio::spawn(send_live(
        live.clone(),
        context.events.clone(),
        context.run_id.clone(),
        log_path_text.clone(),
        context.paths.clone(),
        answered,
    ));

    let mut exit = exit;
    let deadline = context.timeout.map(|timeout| tokio::time::Instant::now() + timeout);
    let mut timed_out = false;
    let status = tokio::select! {
        status = &mut exit => status,
        () = handle.stop.notified() => terminate(&*control, &mut exit, &mut readers).await,
        () = sleep_until(deadline) => {
            timed_out = true;
            terminate(&*control, &mut exit, &mut readers).await
        }
    };
    // Processes the run left behind may hold its output open; give them a moment, then end the whole group so
    // nothing outlives the run.
    let readers_done = wait_for_readers(&mut readers, LINGER_AFTER_EXIT).await;
    let _ = control.signal(Signal::Kill).await;
    if !readers_done && !wait_for_readers(&mut readers, TERMINATE_GRACE).await {
        // Something outside the group (a daemon that escaped with setsid) still holds the pipes; stop listening.
        readers.abort_all();
    }
    while readers.join_next().await.is_some() {}
    // Both readers are gone, so the log channel is closed and the writer finishes what it holds.
    let _ = log_writer.await;
    live.close();
    let _ = sender.await;
    // The run is over: input still queued has no reader. Ending the writer closes the process's stdin.
    if let Some(feeder) = feeder {
        feeder.abort();
        let _ = feeder.await;
    }
    if let Some(feed) = &handle.stdin {
        let mut state = feed.lock();
        state.failure.get_or_insert_with(|| "the run has ended".into());
        state.chunks.clear();
        state.queued_bytes = 0;
    }

    let stop_reason = handle.stop_reason.get().cloned();
    let cancelled = handle.cancel_requested.load(Ordering::SeqCst) && !timed_out && stop_reason.is_none();
    let (exit_code, signal, message) = match status {
        Ok(ExitStatus { code, signal, message }) => (code, signal, message),
        Err(error) => (None, None, Some(error.to_string())),
    };
    let message = message.or_else(|| stop_reason.as_ref().map(|(_, message)| message.clone())).or_else(|| {
        timed_out.then(|| {
            format!(
                "The run was stopped after its timeout of {} ms.",
                context.timeout.map(|timeout| timeout.as_millis()).unwrap_or_default()
            )
        })
    });
    let duration_ms = started.elapsed().as_millis() as u64;
    let reason = match stop_reason {
        Some((reason, _)) => Some(reason),
        None if timed_out => Some(ExitReason::Timeout),
        None => cancelled.then_some(ExitReason::Cancelled),
    };
    let exit = ExitParams {
        run_id: context.run_id.clone(),
        exit_code,
        signal,
        cancelled,
        timed_out,
        duration_ms,
        log_path: Some(log_path_text),
        message,
        reason,
        cost: context.usd_per_hour.map(|usd_per_hour| crate::cost::run_cost(usd_per_hour, duration_ms)),
    };
    // The exit first: a resize that finds the terminal gone then knows the run ended (`RunHandle::resize`).
    let _ = handle.exit.set(exit.clone());
    crate::locks::lock(&handle.terminal).take();
    context.events.exit(exit).await;
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// SIGTERM to the tree, SIGKILL to whatever is left after the grace period, then the main process's status.
async fn terminate(
    control: &dyn ProcessControl,
    exit: &mut futures::future::BoxFuture<'static, Result<ExitStatus>>,
    readers: &mut tokio::task::JoinSet<()>,
) -> Result<ExitStatus> {
    let _ = control.signal(Signal::Terminate).await;
    let grace_end = tokio::time::Instant::now() + TERMINATE_GRACE;
    let status = tokio::time::timeout_at(grace_end, &mut *exit).await.ok();
    // Children that ignore SIGTERM keep the pipes open after the main process is gone: wait out the grace for them.
    let remaining = grace_end.saturating_duration_since(tokio::time::Instant::now());
    let readers_done = wait_for_readers(readers, remaining).await;
    if status.is_none() || !readers_done {
        let _ = control.signal(Signal::Kill).await;
    }
    match status {
        Some(status) => status,
        None => exit.await,
    }
}

/// Waits until every reader has seen the end of its stream, at most `limit`; returns whether they did.
async fn wait_for_readers(readers: &mut tokio::task::JoinSet<()>, limit: Duration) -> bool {
    tokio::time::timeout(limit, async { while readers.join_next().await.is_some() {} }).await.is_ok()
}

/// The run's log as its readers see it: the queue to the writer's thread and how much of the cap is taken.
#[derive(Clone)]
struct LogFeed {
    chunks: tokio::sync::mpsc::Sender<Vec<u8>>,
    budget: Arc<LogBudget>,
}

/// The cap shared by a run's two streams: bytes past it are counted, never copied or queued.
struct LogBudget {
    cap: u64,
    /// Every byte the readers have seen, in the order they claimed their place in the log.
    offered: AtomicU64,
}

impl LogFeed {
    /// Queues what of `chunk` still fits under the cap (waiting when the writer is behind); the rest is only counted.
    async fn offer(&self, chunk: &[u8]) {
        let before = self.budget.offered.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        if before < self.budget.cap {
            let fits = (self.budget.cap - before).min(chunk.len() as u64) as usize;
            // A closed channel means the writer's thread is gone; the live view goes on regardless.
            let _ = self.chunks.send(chunk[..fits].to_vec()).await;
        }
    }
}

/// Writes the head of the run's output to its log file on a thread of its own, so disk latency never stalls the
/// reads, and ends the file with the marker of what the cap dropped.
fn spawn_log_writer(file: std::fs::File, cap: u64) -> (LogFeed, tokio::task::JoinHandle<LogTotals>) {
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Vec<u8>>(LOG_QUEUE_CHUNKS);
    let budget = Arc::new(LogBudget { cap, offered: AtomicU64::new(0) });
    let writer_budget = budget.clone();
    let writer = tokio::task::spawn_blocking(move || {
        let mut log = CappedLog::new(file, cap);
        let mut received = 0u64;
        while let Some(chunk) = receiver.blocking_recv() {
            received += chunk.len() as u64;
            log.write(&chunk);
        }
        // The readers are done (the channel closed when the last one dropped its feed), so the count is final.
        log.count_dropped(writer_budget.offered.load(Ordering::Relaxed).saturating_sub(received));
        log.finish()
    });
    (LogFeed { chunks: sender, budget }, writer)
}

/// Copies one stream into the log file and the live view until it ends.
async fn read_into(mut reader: BoxedReader, stream: OutputStream, live: Arc<LiveView>, log: LogFeed, lossless: bool) {
    if lossless {
        return read_into_lossless(reader, stream, live, log).await;
    }
    let mut buffer = vec![0u8; READ_CHUNK_BYTES];
    loop {
        let count = match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(count) => count,
        };
        let chunk = &buffer[..count];
        if lossless {
            live.push_lossless(stream, chunk).await;
        } else {
            live.push(stream, chunk);
        }
        log.offer(chunk).await;
    }
}

/// `read_into` for the command line, where every byte goes on to stdout: each read fills a buffer of one
/// notification that is then queued as it is, instead of being copied out of one reused buffer, so a torrent of
/// output (1 GiB through `sandlink run`) costs one copy less per byte.
async fn read_into_lossless(mut reader: BoxedReader, stream: OutputStream, live: Arc<LiveView>, log: LogFeed) {
    loop {
        // Read into the spare capacity: no pass to zero the buffer first.
        let mut buffer = Vec::with_capacity(NOTIFICATION_LIMIT_BYTES);
        match reader.read_buf(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        log.offer(&buffer).await;
        live.push_lossless_owned(stream, buffer).await;
    }
}

/// Turns the live view into numbered notifications, in order, until the run's output ends.
async fn send_live(
    live: Arc<LiveView>,
    events: Arc<dyn Events>,
    run_id: String,
    log_path: String,
    paths: Option<PathMapper>,
    answered: oneshot::Receiver<()>,
) {
    // The request handler releases this once it has answered; a dropped sender (an error) also releases it.
    let _ = answered.await;
    let mut seq = 0u64;
    let mut stdout_decoder = Utf8Decoder::default();
    let mut stderr_decoder = Utf8Decoder::default();
    // One mapper per stream: a path split across two pieces of stdout must not be joined with stderr between them.
    let mut stdout_paths = paths.clone();
    let mut stderr_paths = paths;
    let mut send = |stream: OutputStream, text: String| {
        let mapper = match stream {
            OutputStream::Stdout => stdout_paths.as_mut(),
            OutputStream::Stderr => stderr_paths.as_mut(),
        };
        let text = match mapper {
            Some(mapper) => mapper.map_owned(text),
            None => text,
        };
        let events = events.clone();
        let run_id = run_id.clone();
        let pieces: Vec<String> = if text.is_empty() {
            Vec::new()
        } else if text.len() <= NOTIFICATION_LIMIT_BYTES {
            vec![text]
        } else {
            split_text(&text, NOTIFICATION_LIMIT_BYTES).into_iter().map(str::to_owned).collect()
        };
        let first_seq = seq;
        seq += pieces.len() as u64;
        async move {
            for (offset, piece) in pieces.into_iter().enumerate() {
                events
                    .output(OutputParams { run_id: run_id.clone(), stream, text: piece, seq: first_seq + offset as u64, offset: None })
                    .await;
            }
        }
    };
    while let Some(batch) = live.next_batch().await {
        for segment in batch {
            match segment {
                Segment::Data(stream, bytes) => {
                    let decoder = match stream {
                        OutputStream::Stdout => &mut stdout_decoder,
                        OutputStream::Stderr => &mut stderr_decoder,
                    };
                    let text = decoder.decode_owned(bytes);
                    if !text.is_empty() {
                        send(stream, text).await;
                    }
                }
                Segment::Skipped(stream, count, tail) => {
                    let decoder = match stream {
                        OutputStream::Stdout => &mut stdout_decoder,
                        OutputStream::Stderr => &mut stderr_decoder,
                    };
                    let mut text = decoder.skipped();
                    if count > 0 {
                        text.push_str(&skip_marker(count, Some(&log_path)));
                    } else {
                        decoder.resume();
                    }
                    text.push_str(&decoder.decode(&tail));
                    send(stream, text).await;
                }
            }
        }
    }
    for (stream, decoder) in [(OutputStream::Stdout, &mut stdout_decoder), (OutputStream::Stderr, &mut stderr_decoder)] {
        let tail = decoder.finish();
        if !tail.is_empty() {
            send(stream, tail).await;
        }
    }
    for (stream, mapper) in [(OutputStream::Stdout, stdout_paths), (OutputStream::Stderr, stderr_paths)] {
        let held = mapper.map(|mut mapper| mapper.finish()).unwrap_or_default();
        if !held.is_empty() {
            events.output(OutputParams { run_id: run_id.clone(), stream, text: held, seq, offset: None }).await;
            seq += 1;
        }
    }
}
