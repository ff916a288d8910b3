//! Ordinary E2B runs that lose nothing when envd's stream drops: the run's output is also appended to files in the
//! sandbox (`tee`), and after a drop it is read from those files by byte offset (`drivers::detached::CATCH_UP`)
//! instead of from envd's re-attach, which streams only what comes after it. The re-attach is still what tells the
//! run's end; the files are complete by then, since the wrapper waits for its `tee`s.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};

use crate::drivers::detached::{parse_catch_up, CATCH_UP, READ_BYTES};
use crate::error::Result;

/// Where recoverable runs keep their output files.
const RUNS_FOLDER: &str = "/tmp/.sandlink-tee";

/// How long one catch-up may take; a sandbox that stopped answering is found by the stream's own health check.
pub const CATCH_UP_LIMIT: Duration = Duration::from_secs(5);

/// `$1` = folder, then the program and its arguments: runs it with stdout and stderr copied into `out` and `err` as
/// they pass (through FIFOs and `tee -a`), waits for the copies, and exits with its status. Folders of runs older
/// than half an hour go first. When the folder cannot be made, the program runs as it would have. The wrapper
/// outlives a SIGTERM to the group for as long as the program does (a program that ignores it is then killed with
/// the group), and the program gets the signals' default dispositions (a trap, unlike an ignore, is not inherited).
/// Its stdin is empty: only runs without stdin are wrapped.
const TEE: &str = r#"d=$1; shift
find /tmp/.sandlink-tee -mindepth 1 -maxdepth 1 -mmin +30 -exec rm -rf {} + 2>/dev/null
if mkdir -p "$d" && : >"$d/out" && : >"$d/err" && mkfifo "$d/o" "$d/e" 2>/dev/null; then
  tee -a "$d/out" <"$d/o" &
  tee -a "$d/err" <"$d/e" >&2 &
  "$@" >"$d/o" 2>"$d/e" &
  p=$!
  trap : TERM INT HUP
  while :; do wait "$p"; c=$?; [ "$c" -gt 128 ] && kill -0 "$p" 2>/dev/null || break; done
  wait
  rm -f "$d/o" "$d/e"
  exit "$c"
fi
exec "$@""#;

/// A new folder for one run's files.
pub fn new_folder() -> String {
    format!("{RUNS_FOLDER}/run-{}", crate::ids::short_id())
}

/// The program and arguments that run `program` with its output also in `folder`.
pub fn wrap(folder: &str, program: String, arguments: Vec<String>) -> (String, Vec<String>) {
    let mut wrapped = vec!["-c".to_string(), TEE.to_string(), "sandlink".to_string(), folder.to_string(), program];
    wrapped.extend(arguments);
    ("/bin/sh".to_string(), wrapped)
}

/// What a catch-up delivers to: the run's output channels and the counts of what was delivered.
pub struct Delivery<'a> {
    pub stdout: &'a tokio::sync::mpsc::Sender<Bytes>,
    pub stderr: &'a tokio::sync::mpsc::Sender<Bytes>,
    pub stdout_bytes: &'a std::sync::atomic::AtomicU64,
    pub stderr_bytes: &'a std::sync::atomic::AtomicU64,
}

/// The command that reads what the run's files hold beyond what was delivered; envd runs it (`envd::run_once`).
pub fn catch_up_command(folder: &str, delivery: &Delivery<'_>) -> Value {
    let stdout_from = delivery.stdout_bytes.load(Ordering::SeqCst);
    let stderr_from = delivery.stderr_bytes.load(Ordering::SeqCst);
    let arguments = vec![
        "-c".to_string(),
        CATCH_UP.to_string(),
        "sandlink".to_string(),
        folder.to_string(),
        stdout_from.to_string(),
        stderr_from.to_string(),
        READ_BYTES.to_string(),
    ];
    json!({ "cmd": "/bin/sh", "args": arguments, "envs": {}, "cwd": "/" })
}

/// Delivers what a catch-up read from the files; answers the files' sizes then, or `None` when there are no files
/// (the wrapper could not make them and ran the program as it was).
pub async fn deliver(reply: &[u8], delivery: &Delivery<'_>) -> Result<Option<(u64, u64)>> {
    let Some(piece) = parse_catch_up(reply)? else { return Ok(None) };
    if !piece.stdout.is_empty() {
        delivery.stdout_bytes.fetch_add(piece.stdout.len() as u64, Ordering::SeqCst);
        let _ = delivery.stdout.send(Bytes::from(piece.stdout)).await;
    }
    if !piece.stderr.is_empty() {
        delivery.stderr_bytes.fetch_add(piece.stderr.len() as u64, Ordering::SeqCst);
        let _ = delivery.stderr.send(Bytes::from(piece.stderr)).await;
    }
    Ok(Some((piece.stdout_total, piece.stderr_total)))
}
