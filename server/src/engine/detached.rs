//! Detached runs in the engine: starting one, its record on disk (`<state>/runs/<runId>.json`), listing them after
//! a restart, and attaching to one from any byte offset with nothing lost and nothing repeated.
//!
//! The run itself lives in its sandbox (`drivers::detached`); the record says where its files are, so any server
//! that has the session (a re-attach after a crash) can follow it. Output is read by offset until the files say the
//! run ended and every byte was delivered, so a dropped stream or a failed read is simply read again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::output::{split_text, NOTIFICATION_LIMIT_BYTES};
use super::{Engine, Events, Session};
use crate::drivers::detached::{DetachedSpec, DetachedStart, Ending, Piece, DEFAULT_LIMIT};
use crate::drivers::ExecSpec;
use crate::error::{Error, Result};
use crate::protocol::{AttachParams, AttachResult, ExitParams, ExitReason, OutputParams, OutputStream, RunInfo, RunParams, SessionState};

/// The first pause between two reads that found nothing new; it doubles up to `LONGEST_PAUSE`.
const FIRST_PAUSE: Duration = Duration::from_millis(20);
const LONGEST_PAUSE: Duration = Duration::from_millis(250);
/// Failed reads in a row before an attach gives up (the sandbox is unreachable for about a minute).
const MOST_FAILURES: u32 = 40;

/// What the server keeps on disk about a detached run, so that a server started later lists and follows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunRecord {
    pub run_id: String,
    pub session_id: String,
    pub driver: String,
    pub command: String,
    pub started_at: String,
    /// The run's folder as the sandbox sees it.
    pub folder: String,
    /// The same folder on this machine, for the local driver (read without the session).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_folder: Option<PathBuf>,
    /// The hard limit the sandbox enforces on its own.
    pub limit_ms: u64,
    /// Set when sandlink was asked to cancel it, so its exit says so.
    #[serde(default)]
    pub cancelled: bool,
    /// How it ended, once an attach saw it end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitParams>,
}

impl RunRecord {
    fn start(&self) -> DetachedStart {
        DetachedStart { folder: self.folder.clone(), host_folder: self.host_folder.clone() }
    }

    fn info(&self) -> RunInfo {
        RunInfo {
            run_id: self.run_id.clone(),
            session_id: self.session_id.clone(),
            command: self.command.clone(),
            started_at: self.started_at.clone(),
            exit: self.exit.clone(),
            // A detached run's cost is its session's, which the session's entry shows.
            cost: None,
            detached: true,
        }
    }
}

fn records_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("runs")
}

fn record_path(state_dir: &Path, run_id: &str) -> Option<PathBuf> {
    // A run id names a file: refuse anything that could leave the folder.
    let plain = !run_id.is_empty() && run_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    plain.then(|| records_dir(state_dir).join(format!("{run_id}.json")))
}

/// Reads a run's record; `None` when there is none.
pub fn read_record(state_dir: &Path, run_id: &str) -> Option<RunRecord> {
    let text = std::fs::read(record_path(state_dir, run_id)?).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Writes a run's record whole (a rename, so a reader never sees half of it).
pub fn write_record(state_dir: &Path, record: &RunRecord) -> Result<()> {
    let path = record_path(state_dir, &record.run_id)
        .ok_or_else(|| Error::Internal(format!("The run id {} cannot name a file.", record.run_id)))?;
    let dir = records_dir(state_dir);
    std::fs::create_dir_all(&dir).map_err(|error| Error::io(format!("Could not create {}", dir.display()), error))?;
    let text = serde_json::to_vec_pretty(record).map_err(|error| Error::Internal(format!("Could not encode a run record: {error}")))?;
    let temporary = dir.join(format!(".{}.json.tmp", record.run_id));
    std::fs::write(&temporary, text).map_err(|error| Error::io(format!("Could not write {}", temporary.display()), error))?;
    std::fs::rename(&temporary, &path).map_err(|error| Error::io(format!("Could not write {}", path.display()), error))
}

/// Every run record, newest first.
pub fn list_records(state_dir: &Path) -> Vec<RunRecord> {
    let Ok(entries) = std::fs::read_dir(records_dir(state_dir)) else { return Vec::new() };
    let mut records: Vec<RunRecord> = entries
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".json"))
        .filter_map(|entry| serde_json::from_slice(&std::fs::read(entry.path()).ok()?).ok())
        .collect();
    records.sort_by(|a, b| b.started_at.cmp(&a.started_at));
    records
}

/// Removes the records of a session's detached runs (the session was removed, and its sandbox with them).
pub fn forget_runs_of(state_dir: &Path, session_id: &str) {
    for record in list_records(state_dir).into_iter().filter(|record| record.session_id == session_id) {
        if let Some(path) = record_path(state_dir, &record.run_id) {
            if let Err(error) = std::fs::remove_file(&path) {
                tracing::debug!(%error, path = %path.display(), "could not remove a run record");
            }
        }
    }
}

/// The `sandlink/exit` of a run whose files say it ended.
fn exit_of(record: &RunRecord, ending: Ending) -> ExitParams {
    let elapsed = time::OffsetDateTime::parse(&record.started_at, &time::format_description::well_known::Rfc3339)
        .map(|started| (time::OffsetDateTime::now_utc() - started).whole_milliseconds().max(0) as u64)
        .unwrap_or_default();
    let signalled = record.cancelled || ending.limited;
    let (exit_code, signal) = match ending.code {
        Some(code) if signalled && (129..=128 + 64).contains(&code) => {
            (None, Some(crate::drivers::process::signal_name((code - 128) as i32)))
        }
        Some(code) => (Some(code as i32), None),
        None => (None, None),
    };
    let message = if ending.limited {
        Some(format!("The run was stopped at its time limit of {} s.", record.limit_ms / 1000))
    } else if ending.code.is_none() {
        Some("The run's wrapper in the sandbox ended without recording its exit; its output up to then is kept.".into())
    } else {
        None
    };
    ExitParams {
        run_id: record.run_id.clone(),
        exit_code,
        signal,
        cancelled: record.cancelled && !ending.limited,
        timed_out: ending.limited,
        duration_ms: elapsed,
        log_path: record.host_folder.as_ref().map(|folder| folder.join("out").to_string_lossy().into_owned()),
        message,
        reason: if ending.limited {
            Some(ExitReason::RunLimit)
        } else if record.cancelled {
            Some(ExitReason::Cancelled)
        } else {
            None
        },
        cost: None,
    }
}

/// Where an attach reads a run's files: through its session's sandbox, or on this machine (local, no session).
#[derive(Clone)]
enum Source {
    Session(Arc<Session>),
    Host(PathBuf),
}

impl Source {
    async fn read(&self, start: &DetachedStart, stdout_from: u64, stderr_from: u64) -> Result<Option<Piece>> {
        match self {
            Source::Session(session) => session.sandbox.read_detached(start, stdout_from, stderr_from).await,
            Source::Host(folder) => {
                let folder = folder.clone();
                tokio::task::spawn_blocking(move || {
                    crate::drivers::local::detached::read_run_folder(&folder, stdout_from, stderr_from)
                })
                .await
                .map_err(|error| Error::Internal(format!("Reading a detached run failed: {error}")))?
            }
        }
    }

    /// Whether following should stop because the session this server held was disconnected.
    fn session_ended(&self) -> bool {
        match self {
            Source::Session(session) => matches!(session.state(), SessionState::Disconnected),
            Source::Host(_) => false,
        }
    }
}

impl Engine {
    /// Starts a detached run in `session` and records it; `cwd` was already checked.
    pub(super) async fn start_detached(
        &self,
        session: &Arc<Session>,
        run_id: &str,
        params: &RunParams,
        cwd: Option<String>,
        command: String,
        hard_limit: Option<Duration>,
    ) -> Result<RunRecord> {
        // The sooner of the run's timeout and its hard limit (`maxDuration`), else the detached default of an hour.
        let limit = [params.timeout_ms.map(Duration::from_millis), hard_limit].into_iter().flatten().min().unwrap_or(DEFAULT_LIMIT);
        let spec = DetachedSpec {
            run_id: run_id.to_string(),
            exec: ExecSpec {
                command: params.command.clone(),
                args: params.args.clone(),
                cwd,
                env: params.env.clone().unwrap_or_default(),
                stdin: false,
                timeout: Some(limit),
                pty: None,
            },
            limit,
        };
        let start = session.sandbox.start_detached(spec).await?;
        let record = RunRecord {
            run_id: run_id.to_string(),
            session_id: session.id.clone(),
            driver: session.driver.clone(),
            command,
            started_at: crate::clock::now_rfc3339(),
            folder: start.folder,
            host_folder: start.host_folder,
            limit_ms: limit.as_millis() as u64,
            cancelled: false,
            exit: None,
        };
        let state_dir = self.state_dir.clone();
        let written = record.clone();
        tokio::task::spawn_blocking(move || write_record(&state_dir, &written))
            .await
            .map_err(|error| Error::Internal(format!("Writing a run record failed: {error}")))??;
        Ok(record)
    }

    /// Follows a detached run from the offsets once `answered` is released, as `sandlink/output` and `sandlink/exit`.
    pub(super) fn follow_detached(&self, record: RunRecord, source_session: Arc<Session>, answered: oneshot::Receiver<()>) {
        let follower = Follower {
            record,
            source: Source::Session(source_session),
            events: self.events.clone(),
            state_dir: self.state_dir.clone(),
        };
        tokio::spawn(follower.run(0, 0, answered));
    }

    /// Stops the lifecycle manager's warnings for a detached run once its record says it ended (or is gone).
    pub(super) fn forget_limit_once_ended(&self, run_id: &str) {
        let (state_dir, lifecycle, run_id) = (self.state_dir.clone(), self.lifecycle.clone(), run_id.to_string());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let record = read_record(&state_dir, &run_id);
                if record.is_none_or(|record| record.exit.is_some()) {
                    lifecycle.forget_run(&run_id);
                    return;
                }
            }
        });
    }

    /// `sandlink/attach`: where the run stands, then its output from the offsets and its exit as notifications,
    /// once the caller releases the returned sender (after answering).
    pub async fn attach(&self, params: AttachParams) -> Result<(AttachResult, oneshot::Sender<()>)> {
        let record = read_record(&self.state_dir, &params.run_id).ok_or_else(|| Error::UnknownRun(params.run_id.clone()))?;
        let source = match (self.session(&record.session_id), &record.host_folder) {
            (Ok(session), _) => Source::Session(session),
            (Err(_), Some(folder)) => Source::Host(folder.clone()),
            (Err(error), None) => {
                return Err(Error::InvalidParams(format!(
                    "Run {} is in session {}, which this server does not hold ({error}); re-attach the session \
                     with `sandlink/connect {{ reuse }}` first.",
                    record.run_id, record.session_id
                )))
            }
        };
        let (stdout_from, stderr_from) = (params.from_offset.unwrap_or(0), params.from_stderr_offset.unwrap_or(0));
        let standing = read_with_retries(&source, &record.start(), u64::MAX, u64::MAX).await?;
        let Some(standing) = standing else {
            return Err(Error::UnknownRun(format!("{} (its files in the sandbox are gone)", record.run_id)));
        };
        if stdout_from > standing.stdout_total || stderr_from > standing.stderr_total {
            return Err(Error::InvalidParams(format!(
                "Run {} has written {} stdout and {} stderr bytes so far; an attach cannot start beyond them.",
                record.run_id, standing.stdout_total, standing.stderr_total
            )));
        }
        let result = AttachResult {
            run_id: record.run_id.clone(),
            session_id: record.session_id.clone(),
            command: record.command.clone(),
            started_at: record.started_at.clone(),
            stdout_bytes: standing.stdout_total,
            stderr_bytes: standing.stderr_total,
            exit_code: standing.ending.and_then(|ending| ending.code).map(|code| code as i32),
        };
        let (sender, answered) = oneshot::channel();
        let follower = Follower { record, source, events: self.events.clone(), state_dir: self.state_dir.clone() };
        tokio::spawn(follower.run(stdout_from, stderr_from, answered));
        Ok((result, sender))
    }

    /// The detached runs on record, as `sandlink/runs` lists them (a local run's end is read from its files).
    pub(super) fn detached_run_infos(&self, session_id: Option<&str>) -> Vec<RunInfo> {
        list_records(&self.state_dir)
            .into_iter()
            .filter(|record| session_id.is_none_or(|id| record.session_id == id))
            .map(|record| {
                let mut info = record.info();
                if info.exit.is_none() {
                    if let Some(folder) = &record.host_folder {
                        if let Ok(Some(Piece { ending: Some(ending), .. })) =
                            crate::drivers::local::detached::read_run_folder(folder, u64::MAX, u64::MAX)
                        {
                            info.exit = Some(exit_of(&record, ending));
                        }
                    }
                }
                info
            })
            .collect()
    }

    /// Whether any detached run of `session_id` is on record.
    pub fn has_detached_runs(&self, session_id: &str) -> bool {
        list_records(&self.state_dir).iter().any(|record| record.session_id == session_id)
    }

    /// Cancels a detached run (SIGTERM to its group, SIGKILL after the grace); `unknownRun` when there is none.
    pub(super) fn cancel_detached(&self, run_id: &str) -> Result<()> {
        let mut record = read_record(&self.state_dir, run_id).ok_or_else(|| Error::UnknownRun(run_id.to_string()))?;
        if record.exit.is_some() {
            return Ok(());
        }
        let session = self.session(&record.session_id);
        if session.is_err() && record.host_folder.is_none() {
            return Err(Error::InvalidParams(format!(
                "Run {run_id} is in session {}, which this server does not hold; re-attach the session first.",
                record.session_id
            )));
        }
        record.cancelled = true;
        write_record(&self.state_dir, &record)?;
        let start = record.start();
        tokio::spawn(async move {
            for signal in [crate::drivers::Signal::Terminate, crate::drivers::Signal::Kill] {
                let sent = match (&session, &start.host_folder) {
                    (Ok(session), _) => session.sandbox.signal_detached(&start, signal).await,
                    (Err(_), Some(folder)) => {
                        crate::drivers::local::detached::signal_detached_run(folder, signal);
                        Ok(())
                    }
                    (Err(_), None) => Ok(()),
                };
                if let Err(error) = sent {
                    tracing::debug!(%error, "could not signal a detached run");
                }
                tokio::time::sleep(super::run::TERMINATE_GRACE).await;
            }
        });
        Ok(())
    }
}

/// Reads until a read succeeds (a dropped stream is read again), at most `MOST_FAILURES` times.
async fn read_with_retries(source: &Source, start: &DetachedStart, stdout_from: u64, stderr_from: u64) -> Result<Option<Piece>> {
    let mut failures = 0;
    loop {
        match source.read(start, stdout_from.min(i64::MAX as u64), stderr_from.min(i64::MAX as u64)).await {
            Ok(piece) => return Ok(piece),
            Err(error) if failures < MOST_FAILURES => {
                failures += 1;
                tracing::debug!(%error, failures, "reading a detached run failed; reading again");
                tokio::time::sleep(Duration::from_millis(100 * u64::from(failures.min(20)))).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// One attach: reads by offset and sends what it read, in order, then the exit.
struct Follower {
    record: RunRecord,
    source: Source,
    events: Arc<dyn Events>,
    state_dir: PathBuf,
}

/// One stream's position and the characters held back because the read cut them.
struct Position {
    stream: OutputStream,
    offset: u64,
}

impl Follower {
    async fn run(self, stdout_from: u64, stderr_from: u64, answered: oneshot::Receiver<()>) {
        if answered.await.is_err() {
            // Nobody answered the request (it failed, or the command line only wanted the id): nothing to follow.
            return;
        }
        let start = self.record.start();
        let mut stdout = Position { stream: OutputStream::Stdout, offset: stdout_from };
        let mut stderr = Position { stream: OutputStream::Stderr, offset: stderr_from };
        let mut seq = 0u64;
        let mut pause = FIRST_PAUSE;
        loop {
            if self.source.session_ended() {
                // The run goes on in its sandbox; another attach (after a re-attach) picks it up from its offsets.
                return;
            }
            let piece = match read_with_retries(&self.source, &start, stdout.offset, stderr.offset).await {
                Ok(Some(piece)) => piece,
                Ok(None) => {
                    let message = "The run's files in the sandbox are gone; its output and exit are lost.".to_string();
                    self.finish(exit_lost(&self.record, message)).await;
                    return;
                }
                Err(error) => {
                    if self.source.session_ended() {
                        return;
                    }
                    let message = format!("The run's files could not be read ({error}); it may still be going on in the sandbox.");
                    self.events.exit(exit_lost(&self.record, message)).await;
                    return;
                }
            };
            let ended = piece.ending.is_some();
            let before = (stdout.offset, stderr.offset);
            self.deliver(&mut stdout, &piece.stdout, ended, &mut seq).await;
            self.deliver(&mut stderr, &piece.stderr, ended, &mut seq).await;
            let progressed = (stdout.offset, stderr.offset) != before;
            if let Some(ending) = piece.ending {
                if stdout.offset >= piece.stdout_total && stderr.offset >= piece.stderr_total {
                    let record = read_record(&self.state_dir, &self.record.run_id).unwrap_or_else(|| self.record.clone());
                    self.finish(exit_of(&record, ending)).await;
                    return;
                }
            }
            if progressed {
                pause = FIRST_PAUSE;
            } else {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(LONGEST_PAUSE);
            }
        }
    }

    /// Sends the bytes read at `position` as text, keeping back a character the read cut in two (read again next
    /// time from its first byte) unless the run has ended.
    async fn deliver(&self, position: &mut Position, bytes: &[u8], ended: bool, seq: &mut u64) {
        let mut rest = bytes;
        while !rest.is_empty() {
            let (text, used) = match std::str::from_utf8(rest) {
                Ok(text) => (text.to_string(), rest.len()),
                Err(error) if error.valid_up_to() > 0 => {
                    let valid = error.valid_up_to();
                    (String::from_utf8_lossy(&rest[..valid]).into_owned(), valid)
                }
                Err(error) => match error.error_len() {
                    Some(length) => (String::from_utf8_lossy(&rest[..length]).into_owned(), length),
                    None if ended => (String::from_utf8_lossy(rest).into_owned(), rest.len()),
                    None => return,
                },
            };
            let exact = text.len() == used;
            let mut offset = position.offset;
            let pieces: Vec<&str> = if exact { split_text(&text, NOTIFICATION_LIMIT_BYTES) } else { vec![text.as_str()] };
            for piece in pieces {
                self.events
                    .output(OutputParams {
                        run_id: self.record.run_id.clone(),
                        stream: position.stream,
                        text: piece.to_string(),
                        seq: *seq,
                        offset: Some(offset),
                    })
                    .await;
                *seq += 1;
                offset += piece.len() as u64;
            }
            position.offset += used as u64;
            rest = &rest[used..];
        }
    }

    /// Records the exit (the first attach to see it) and sends it.
    async fn finish(&self, exit: ExitParams) {
        let mut record = read_record(&self.state_dir, &self.record.run_id).unwrap_or_else(|| self.record.clone());
        let exit = match &record.exit {
            Some(recorded) => recorded.clone(),
            None => {
                record.exit = Some(exit.clone());
                if let Err(error) = write_record(&self.state_dir, &record) {
                    tracing::warn!(%error, "could not record a detached run's exit");
                }
                exit
            }
        };
        self.events.exit(exit).await;
    }
}

fn exit_lost(record: &RunRecord, message: String) -> ExitParams {
    let mut exit = exit_of(record, Ending { code: None, limited: false });
    exit.message = Some(message);
    exit
}
