//! An agent task's record: a JSON file under the state directory that outlives the task's sandbox.

use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::protocol::TaskInfo;
use crate::statefile;

/// Where the records and host repositories of agent tasks live: `agent-tasks/<taskId>/` under the state directory.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(state_dir: &Path) -> Self {
        Layout { root: state_dir.join("agent-tasks") }
    }

    pub fn task_dir(&self, task_id: &str) -> PathBuf {
        self.root.join(task_id)
    }

    fn record_file(&self, task_id: &str) -> PathBuf {
        self.task_dir(task_id).join("task.json")
    }

    /// The host's clone of the repository for this task: what was uploaded, and where pushes go from.
    pub fn host_repo(&self, task_id: &str) -> PathBuf {
        self.task_dir(task_id).join("repo")
    }

    /// Held for each operation on a task, so two front doors (an editor and the command line) take turns.
    pub fn lock_file(&self, task_id: &str) -> PathBuf {
        self.task_dir(task_id).join("lock")
    }

    pub fn read(&self, task_id: &str) -> Result<Option<TaskInfo>> {
        let path = self.record_file(task_id);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(Error::io(format!("Could not read {}", path.display()), error)),
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|error| {
            Error::Internal(format!("The task record {} could not be read ({error}); remove it to start over.", path.display()))
        })
    }

    pub fn write(&self, record: &TaskInfo) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(record)
            .map_err(|error| Error::Internal(format!("Could not encode the task record: {error}")))?;
        statefile::write_atomically(&self.record_file(&record.task_id), &bytes)
    }

    /// Every task's record, newest first; unreadable ones are skipped with a log line.
    pub fn list(&self) -> Result<Vec<TaskInfo>> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(Error::io(format!("Could not list {}", self.root.display()), error)),
        };
        let mut records = Vec::new();
        for entry in entries {
            let entry = entry.context(|| format!("Could not list {}", self.root.display()))?;
            let Some(task_id) = entry.file_name().to_str().map(str::to_string) else { continue };
            match self.read(&task_id) {
                Ok(Some(record)) => records.push(record),
                Ok(None) => {}
                Err(error) => tracing::warn!(%task_id, %error, "skipped an unreadable task record"),
            }
        }
        records.sort_by(|left, right| right.created_at.cmp(&left.created_at));
        Ok(records)
    }
}
