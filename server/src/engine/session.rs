//! A session: one connected sandbox for one workspace, with the state the protocol reports about it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Map, Value};

use crate::drivers::Sandbox;
use crate::protocol::{Preview, Resources, SessionInfo, SessionState, SyncState};
use crate::statefile::Lock;
use crate::sync::SessionSync;

/// What changes over a session's life; guarded by one lock that is never held across an `.await`.
#[derive(Debug, Clone)]
pub struct SessionMutable {
    pub state: SessionState,
    pub message: Option<String>,
    pub last_activity: String,
    pub expires_at: Option<String>,
    pub previews: Vec<Preview>,
    pub sync: SyncState,
    pub resources: Option<Resources>,
    /// The session's hourly price by the price table, set once it is connected (see `crate::cost`).
    pub usd_per_hour: Option<f64>,
}

pub struct Session {
    pub id: String,
    pub driver: String,
    pub profile: Option<String>,
    pub workspace: Option<PathBuf>,
    pub started_at: String,
    pub sandbox: Arc<dyn Sandbox>,
    /// The session's sync engine, set once at connect when the session has a workspace and the driver can sync.
    pub sync: OnceLock<SessionSync>,
    /// The driver settings it was connected with (persisted for re-attach; never secrets).
    pub settings: Map<String, Value>,
    mutable: Mutex<SessionMutable>,
    /// This process's ownership of the session's record (see `store`); released when the session ends.
    claim: Mutex<Option<Lock>>,
    /// Set once the session's record is gone (disconnected without keep), so nothing writes it again.
    forgotten: AtomicBool,
    /// Held across each write or removal of the session's record, so they reach the disk in the order they were
    /// started, including a write left to finish in the background (`Engine::persist_in_background`).
    pub(super) record_writes: Arc<tokio::sync::Mutex<()>>,
    /// Whether a task is watching for ports that start listening (one per session, while runs are in flight).
    pub(super) watching_ports: AtomicBool,
    /// What the upload at connect moved, for a front door that reports it (`sandlink sync`).
    pub(super) initial_sync: OnceLock<crate::protocol::SyncResult>,
}

impl Session {
    pub fn new(
        id: String,
        driver: String,
        profile: Option<String>,
        workspace: Option<PathBuf>,
        sandbox: Arc<dyn Sandbox>,
    ) -> Self {
        let now = crate::clock::now_rfc3339();
        Session {
            id,
            driver,
            profile,
            workspace,
            started_at: now.clone(),
            sandbox,
            sync: OnceLock::new(),
            settings: Map::new(),
            claim: Mutex::new(None),
            forgotten: AtomicBool::new(false),
            record_writes: Arc::default(),
            watching_ports: AtomicBool::new(false),
            initial_sync: OnceLock::new(),
            mutable: Mutex::new(SessionMutable {
                state: SessionState::Connecting,
                message: None,
                last_activity: now,
                expires_at: None,
                previews: Vec::new(),
                sync: SyncState::default(),
                resources: None,
                usd_per_hour: None,
            }),
        }
    }

    /// Adds what persistence needs: the settings, the ownership claim, and the start time of a re-attached session.
    pub fn with_persistence(mut self, settings: Map<String, Value>, claim: Lock, started_at: Option<String>) -> Self {
        self.settings = settings;
        self.claim = Mutex::new(Some(claim));
        if let Some(started_at) = started_at {
            self.started_at = started_at;
        }
        self
    }

    /// Gives up this process's ownership, so another server (or a later run) may re-attach.
    pub fn release_claim(&self) {
        crate::locks::lock(&self.claim).take();
    }

    /// Marks the record as removed; later state changes are not persisted.
    pub fn forget(&self) {
        self.forgotten.store(true, Ordering::SeqCst);
    }

    pub fn is_forgotten(&self) -> bool {
        self.forgotten.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SessionMutable> {
        // Every update is a plain field assignment, so a poisoned lock still holds consistent data.
        crate::locks::lock(&self.mutable)
    }

    pub fn state(&self) -> SessionState {
        self.lock().state
    }

    /// Applies a change to the session's mutable state.
    pub fn update(&self, change: impl FnOnce(&mut SessionMutable)) {
        change(&mut self.lock());
    }

    /// Records user activity (a run, a sync), which keeps sandboxes with idle timeouts alive.
    pub fn touch(&self) {
        self.lock().last_activity = crate::clock::now_rfc3339();
    }

    /// Remembers a preview; returns whether it is new.
    pub fn add_preview(&self, port: u16, url: &str) -> bool {
        let mut mutable = self.lock();
        if mutable.previews.iter().any(|preview| preview.port == port && preview.url == url) {
            return false;
        }
        mutable.previews.retain(|preview| preview.port != port);
        mutable.previews.push(Preview { port, url: url.to_string() });
        true
    }

    /// The session as the protocol reports it.
    pub fn info(&self) -> SessionInfo {
        let mutable = self.lock().clone();
        SessionInfo {
            session_id: self.id.clone(),
            driver: self.driver.clone(),
            profile: self.profile.clone(),
            state: mutable.state,
            workspace_folder: self.workspace.as_ref().and_then(|path| {
                url::Url::from_file_path(path).ok().map(|url| url.to_string())
            }),
            remote_root: self.sandbox.remote_root(),
            isolation: self.sandbox.isolation(),
            started_at: self.started_at.clone(),
            last_activity: mutable.last_activity,
            expires_at: mutable.expires_at,
            previews: mutable.previews,
            sync: self.sync.get().map_or(mutable.sync, SessionSync::state),
            resources: mutable.resources,
            message: mutable.message,
            jobs: Vec::new(),
            held: None,
            cost: mutable
                .usd_per_hour
                .map(|usd_per_hour| crate::cost::session_cost(usd_per_hour, &self.started_at, time::OffsetDateTime::now_utc())),
        }
    }
}
