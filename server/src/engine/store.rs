//! Session records on disk, so sessions survive a restart or a crash: one `sessions/<id>/session.json` per
//! sandbox that exists (or is being created), written atomically.
//!
//! Ownership across processes: the server that has a session attached holds an exclusive lock on
//! `sessions/<id>/owner.lock` for as long as it does; the OS drops it if that server dies, which is how a crashed
//! session becomes re-attachable and how two editor windows never drive one sandbox at once. Creating a session
//! (counting sandboxes against the limit, then writing the record) happens under `.sessions.lock`.
//! Every method here blocks; the engine calls them through `statefile::blocking`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::protocol::{SessionInfo, SessionState, SyncState};
use crate::statefile::{self, Lock};


/// The pauses before a taken owner lock is tried again. A holder keeps the lock for as long as it lives, but a look
/// (`is_claimed`, by this process or another sandlink listing sessions) takes it for an instant; one look must not
/// make another, or a re-attach, see the session as held elsewhere. Two listings at once (an editor's refresh after
/// connecting and `:Sandlink sessions`) showed a session left by an exited sandlink as "attached by another sandlink".
const LOOK_PAUSES: [std::time::Duration; 4] = [
    std::time::Duration::from_millis(5),
    std::time::Duration::from_millis(10),
    std::time::Duration::from_millis(20),
    std::time::Duration::from_millis(40),
];
/// Bumped when the record format changes incompatibly; records of other versions are listed but not re-attached.
pub const RECORD_VERSION: u32 = 1;

/// What sandlink knows about one session's sandbox, persisted. It never holds secrets: credentials are resolved
/// again on re-attach.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub version: u32,
    pub session_id: String,
    pub driver: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<PathBuf>,
    pub remote_root: String,
    pub state: SessionState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub started_at: String,
    pub last_activity: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// The driver settings the session was connected with (profile and request merged; never secrets).
    #[serde(default)]
    pub settings: Map<String, Value>,
    /// Whatever the driver needs to find the sandbox again (`Sandbox::driver_state`): container id, sandbox id.
    #[serde(default)]
    pub driver_state: Value,
    /// The isolation mechanism the sandbox had (`Sandbox::isolation`), shown for a session not attached here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<String>,
    /// The sync engine's manifest for this session, relative to the state directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_manifest: Option<String>,
    #[serde(default)]
    pub sync: SyncState,
    /// Set when the session was disconnected with `keep: true` (or kept at exit) rather than lost in a crash.
    #[serde(default)]
    pub kept: bool,
    /// The process that last wrote the record, for messages about who holds a session.
    pub pid: u32,
}

impl Record {
    /// The first record of a session being connected now, by this process.
    pub fn connecting(
        session_id: String,
        driver: String,
        profile: Option<String>,
        workspace: Option<PathBuf>,
        settings: Map<String, Value>,
    ) -> Self {
        let now = crate::clock::now_rfc3339();
        Record {
            version: RECORD_VERSION,
            session_id,
            driver,
            profile,
            workspace,
            remote_root: String::new(),
            state: SessionState::Connecting,
            message: None,
            started_at: now.clone(),
            last_activity: now,
            expires_at: None,
            settings,
            driver_state: Value::Null,
            isolation: None,
            sync_manifest: None,
            sync: SyncState::default(),
            kept: false,
            pid: std::process::id(),
        }
    }

    /// The session as `sandlink/sessions` reports it when no server of this process has it attached.
    pub fn info(&self, state: SessionState, message: String) -> SessionInfo {
        SessionInfo {
            session_id: self.session_id.clone(),
            driver: self.driver.clone(),
            profile: self.profile.clone(),
            state,
            workspace_folder: self
                .workspace
                .as_ref()
                .and_then(|path| url::Url::from_file_path(path).ok().map(|url| url.to_string())),
            remote_root: self.remote_root.clone(),
            isolation: self.isolation.clone().or_else(|| self.isolation_in_old_local_state()),
            started_at: self.started_at.clone(),
            last_activity: self.last_activity.clone(),
            expires_at: self.expires_at.clone(),
            previews: Vec::new(),
            sync: self.sync.clone(),
            resources: None,
            message: Some(message),
            jobs: Vec::new(),
            held: None,
            cost: None,
        }
    }

    /// Records written before `isolation` was a field of its own kept it only in the local driver's state.
    fn isolation_in_old_local_state(&self) -> Option<String> {
        #[derive(Deserialize)]
        struct OldLocalState {
            isolation: String,
        }
        OldLocalState::deserialize(&self.driver_state).ok().map(|state| state.isolation)
    }
}

/// The `sessions/` directory under the state directory.
#[derive(Debug, Clone)]
pub struct Store {
    sessions_dir: PathBuf,
    /// Beside `sessions/`, not in it, so an empty `sessions/` really means no sandboxes.
    index_lock_path: PathBuf,
}

impl Store {
    pub fn new(state_dir: &Path) -> Self {
        Store { sessions_dir: state_dir.join("sessions"), index_lock_path: state_dir.join(".sessions.lock") }
    }

    /// The directory the session's record, lock and sync manifest live in (the local driver's root too).
    pub fn session_dir(&self, session_id: &str) -> PathBuf {
        self.sessions_dir.join(session_id)
    }

    fn record_path(&self, session_id: &str) -> PathBuf {
        self.session_dir(session_id).join("session.json")
    }

    fn owner_lock_path(&self, session_id: &str) -> PathBuf {
        self.session_dir(session_id).join("owner.lock")
    }

    /// Holds the lock under which sessions are counted and created.
    pub fn index_lock(&self) -> Result<Lock> {
        Lock::exclusive(&self.index_lock_path)
    }

    pub fn write(&self, record: &Record) -> Result<()> {
        statefile::write_atomically(&self.record_path(&record.session_id), &encode(record)?)
    }

    /// `write` without waiting for the disk, for a new session's first record, written before its sandbox exists:
    /// a machine crash can lose it, and with it only a reservation. Every later record says where the sandbox is, and
    /// waits for the disk.
    pub fn write_unflushed(&self, record: &Record) -> Result<()> {
        statefile::write_atomically_unflushed(&self.record_path(&record.session_id), &encode(record)?)
    }

    pub fn read(&self, session_id: &str) -> Result<Option<Record>> {
        let path = self.record_path(session_id);
        match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Record>(&bytes) {
                Ok(record) => Ok(Some(record)),
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "ignoring an unreadable session record");
                    Ok(None)
                }
            },
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(Error::io(format!("Could not read {}", path.display()), error)),
        }
    }

    /// Every readable record, oldest first.
    pub fn list(&self) -> Result<Vec<Record>> {
        let entries = match std::fs::read_dir(&self.sessions_dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(Error::io(format!("Could not list {}", self.sessions_dir.display()), error)),
        };
        let mut records = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if let Some(record) = self.read(&name)? {
                records.push(record);
            }
        }
        records.sort_by(|left, right| left.started_at.cmp(&right.started_at));
        Ok(records)
    }

    /// Removes the session's directory: record, lock, manifest, and the local driver's root if still there.
    pub fn remove(&self, session_id: &str) -> Result<()> {
        let dir = self.session_dir(session_id);
        match std::fs::remove_dir_all(&dir) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io(format!("Could not remove {}", dir.display()), error))
            }
            _ => Ok(()),
        }
    }

    /// Takes ownership of a session for this process; `None` when another process holds it.
    pub fn claim(&self, session_id: &str) -> Result<Option<Lock>> {
        let path = self.owner_lock_path(session_id);
        for pause in LOOK_PAUSES {
            if let Some(lock) = Lock::try_exclusive(&path)? {
                return Ok(Some(lock));
            }
            std::thread::sleep(pause);
        }
        Lock::try_exclusive(&path)
    }

    /// Whether some process (this one included) holds the session.
    pub fn is_claimed(&self, session_id: &str) -> bool {
        if !self.session_dir(session_id).is_dir() {
            return false;
        }
        matches!(self.claim(session_id), Ok(None))
    }
}

/// A record as its file holds it.
fn encode(record: &Record) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(record).map_err(|error| Error::Internal(format!("Could not encode the session record: {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> Record {
        Record {
            version: RECORD_VERSION,
            session_id: id.into(),
            driver: "local".into(),
            profile: None,
            workspace: None,
            remote_root: "/r".into(),
            state: SessionState::Active,
            message: None,
            started_at: crate::clock::now_rfc3339(),
            last_activity: crate::clock::now_rfc3339(),
            expires_at: None,
            settings: Map::new(),
            driver_state: Value::Null,
            isolation: None,
            sync_manifest: None,
            sync: SyncState::default(),
            kept: false,
            pid: std::process::id(),
        }
    }

    #[test]
    fn records_should_round_trip_and_claims_should_exclude_each_other() {
        let state = tempfile::tempdir().expect("temp dir");
        let store = Store::new(state.path());
        store.write(&record("local-a")).expect("write");
        assert_eq!(store.list().expect("list").len(), 1);
        let claim = store.claim("local-a").expect("claim").expect("free");
        assert!(store.is_claimed("local-a"));
        assert!(store.claim("local-a").expect("claim").is_none());
        drop(claim);
        assert!(!store.is_claimed("local-a"));
        store.remove("local-a").expect("remove");
        assert!(store.list().expect("list").is_empty());
    }

    #[test]
    fn a_look_held_for_an_instant_should_not_read_as_a_holder() {
        let state = tempfile::tempdir().expect("temp dir");
        let store = Store::new(state.path());
        store.write(&record("local-a")).expect("write");
        // Another look holds the lock for 3 ms, as a listing's `is_claimed` in another thread or process would.
        let path = store.owner_lock_path("local-a");
        let (taken, was_taken) = std::sync::mpsc::channel();
        let look = std::thread::spawn(move || {
            let lock = Lock::try_exclusive(&path).expect("lock").expect("free");
            taken.send(()).expect("send");
            std::thread::sleep(std::time::Duration::from_millis(3));
            drop(lock);
        });
        was_taken.recv().expect("the look took the lock");
        assert!(!store.is_claimed("local-a"), "a look is not a holder");
        look.join().expect("the look ends");
        let claim = store.claim("local-a").expect("claim").expect("free again");
        assert!(store.is_claimed("local-a"), "a holder that stays is one");
        drop(claim);
    }

    #[test]
    fn kept_sessions_should_show_their_isolation_from_records_old_and_new() {
        let written_before_the_field = serde_json::json!({
            "version": 1,
            "sessionId": "local-a",
            "driver": "local",
            "remoteRoot": "/state/sessions/local-a/root",
            "state": "disconnected",
            "startedAt": "2025-01-01T00:00:00Z",
            "lastActivity": "2025-01-01T00:00:00Z",
            "driverState": { "sessionDir": "/state/sessions/local-a", "isolation": "landlock" },
            "kept": true,
            "pid": 1
        });
        let old: Record = serde_json::from_value(written_before_the_field).expect("today's record format");
        assert_eq!(old.isolation, None);
        assert_eq!(old.info(SessionState::Disconnected, String::new()).isolation.as_deref(), Some("landlock"));

        let new = Record { isolation: Some("bubblewrap".into()), ..record("local-b") };
        let reread: Record = serde_json::from_value(serde_json::to_value(&new).expect("serialize")).expect("parse");
        assert_eq!(reread.info(SessionState::Disconnected, String::new()).isolation.as_deref(), Some("bubblewrap"));
        assert_eq!(record("docker-c").info(SessionState::Disconnected, String::new()).isolation, None);
    }
}
