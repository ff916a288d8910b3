//! The audit log: one JSON line per thing that happened to a sandbox (sessions created and ended, runs started
//! and ended, syncs, extensions, snapshots, limits reached) at `<state dir>/audit.jsonl`, rotated at a size cap.
//!
//! Nothing secret is ever written: the events carry ids, commands, directories, counts and reasons, and for a
//! run's environment only the variable names (values often hold tokens). Credentials and settings never pass
//! through here. A line is a few hundred bytes appended under a lock, cheaper than the work it records, so it is
//! written in place; a failure to write is logged and never fails the work.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{json, Map, Value};

use crate::locks::lock;

/// The log's file name in the state directory.
pub const FILE_NAME: &str = "audit.jsonl";
/// The size at which the log is rotated.
pub const DEFAULT_MAX_BYTES: u64 = 10 * 1024 * 1024;
/// How many rotated files are kept (`audit.1.jsonl` is the newest).
pub const KEPT_FILES: usize = 3;

/// Which front door asked for the work: the LSP server (`editor`) or the command line (`cli`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    Editor,
    Cli,
    /// The lifecycle manager, acting on a limit.
    Sandlink,
}

impl Who {
    pub fn as_str(self) -> &'static str {
        match self {
            Who::Editor => "editor",
            Who::Cli => "cli",
            Who::Sandlink => "sandlink",
        }
    }
}

/// The audit log of one state directory.
pub struct Audit {
    path: Option<PathBuf>,
    max_bytes: u64,
    /// Serialises appends and rotations within this process.
    writing: Mutex<()>,
}

impl Audit {
    pub fn new(state_dir: &Path) -> Audit {
        Audit::with_cap(state_dir, DEFAULT_MAX_BYTES)
    }

    /// A log rotated at `max_bytes` (tests use a small cap).
    pub fn with_cap(state_dir: &Path, max_bytes: u64) -> Audit {
        Audit { path: Some(state_dir.join(FILE_NAME)), max_bytes, writing: Mutex::new(()) }
    }

    /// A log that writes nothing, for managers built without an engine (unit tests).
    pub fn disabled() -> Audit {
        Audit { path: None, max_bytes: DEFAULT_MAX_BYTES, writing: Mutex::new(()) }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Appends one event: `event` names it, `fields` (an object) says what it was about.
    pub fn record(&self, event: &str, fields: Value) {
        let Some(path) = &self.path else { return };
        let mut line = Map::new();
        line.insert("at".into(), Value::String(crate::clock::now_rfc3339()));
        line.insert("event".into(), Value::String(event.into()));
        if let Value::Object(fields) = fields {
            line.extend(fields.into_iter().filter(|(_, value)| !value.is_null()));
        }
        let mut text = Value::Object(line).to_string();
        text.push('\n');
        let _writing = lock(&self.writing);
        if let Err(error) = self.rotate_if_full(path).and_then(|()| append(path, text.as_bytes())) {
            tracing::warn!(%error, path = %path.display(), "could not write the audit log");
        }
    }

    fn rotate_if_full(&self, path: &Path) -> std::io::Result<()> {
        let size = match std::fs::metadata(path) {
            Ok(metadata) => metadata.len(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(error),
        };
        if size < self.max_bytes {
            return Ok(());
        }
        for index in (1..KEPT_FILES).rev() {
            let from = rotated(path, index);
            if from.exists() {
                std::fs::rename(&from, rotated(path, index + 1))?;
            }
        }
        std::fs::rename(path, rotated(path, 1))
    }
}

/// `audit.N.jsonl` beside `audit.jsonl`.
pub fn rotated(path: &Path, index: usize) -> PathBuf {
    path.with_file_name(format!("audit.{index}.jsonl"))
}

fn append(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Commands and directories are the user's business: readable by them alone.
        options.mode(0o600);
    }
    options.open(path)?.write_all(bytes)
}

/// The fields of a run that started; the environment by name only.
pub fn run_started(
    run_id: &str,
    session_id: &str,
    command: &str,
    cwd: Option<&str>,
    env_names: Vec<&str>,
    who: Who,
) -> Value {
    json!({
        "runId": run_id,
        "sessionId": session_id,
        "command": command,
        "cwd": cwd,
        "envNames": if env_names.is_empty() { Value::Null } else { json!(env_names) },
        "who": who.as_str(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_should_be_json_lines_and_the_log_should_rotate_at_its_cap_keeping_a_few_files() {
        let state = tempfile::tempdir().expect("a state dir");
        let audit = Audit::with_cap(state.path(), 2_000);
        for index in 0..200 {
            audit.record("runStarted", run_started(&format!("run-{index}"), "s1", "make test", Some("src"), vec!["PATH"], Who::Cli));
        }
        let current = std::fs::read_to_string(state.path().join(FILE_NAME)).expect("the log");
        let last: Value = serde_json::from_str(current.lines().last().expect("a line")).expect("JSON");
        assert_eq!(last["event"], "runStarted");
        assert_eq!(last["runId"], "run-199");
        assert_eq!(last["who"], "cli");
        assert!(current.len() < 2_000 + 400, "the current file stays near its cap: {}", current.len());
        for index in 1..=KEPT_FILES {
            let file = rotated(&state.path().join(FILE_NAME), index);
            let text = std::fs::read_to_string(&file).unwrap_or_else(|_| panic!("{} exists", file.display()));
            assert!(text.lines().all(|line| serde_json::from_str::<Value>(line).is_ok()), "whole lines only");
        }
        assert!(!rotated(&state.path().join(FILE_NAME), KEPT_FILES + 1).exists(), "older files are dropped");
    }
}
