//! The engine: sessions, runs and sync on top of the drivers, with no knowledge of LSP.
//!
//! The LSP server and the command line are two front doors onto one `Engine`; each supplies an `Events`
//! implementation that delivers what the engine reports (output, exits, state changes) its own way.

pub mod configure;
pub mod lifecycle;
pub mod output;
pub mod run;
pub mod session;
pub mod store;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::drivers::{self, ConnectRequest, Driver, ExecSpec, ReattachRequest};
use crate::error::{Error, IoContext, Result};
use crate::paths;
use crate::statefile;
use configure::{Plan, PlanInput};
use store::{Record, Store, RECORD_VERSION};
use crate::protocol::{
    ConnectParams, DisconnectParams, DriverInfo, ExitParams, OutputParams, PreviewReadyParams, RestoreParams, RunParams,
    SessionInfo, SessionState, SessionStateParams, SyncDirection, SyncParams, SyncResult, SyncState,
    SyncStateParams, TimeoutWarningParams,
};
use crate::sync::{SessionSync, StateObserver, SyncOptions};
pub use run::RunHandle;
pub use session::Session;

/// How the engine reports what happens; implemented by the LSP layer and the command line.
///
/// `output` is awaited by a run's sender task only, so a slow receiver slows the live view, never the process.
#[async_trait]
pub trait Events: Send + Sync {
    async fn output(&self, params: OutputParams);
    async fn exit(&self, params: ExitParams);
    async fn session_state(&self, params: SessionStateParams);
    async fn sync_state(&self, params: SyncStateParams);
    async fn preview_ready(&self, params: PreviewReadyParams);
    async fn timeout_warning(&self, params: TimeoutWarningParams);
}

/// Reports progress of long work (connect, sync); the LSP layer maps it to `$/progress`.
#[async_trait]
pub trait Progress: Send + Sync {
    async fn report(&self, message: String, percentage: Option<u32>);
}

/// A `Progress` that reports nowhere.
pub struct NoProgress;

#[async_trait]
impl Progress for NoProgress {
    async fn report(&self, _message: String, _percentage: Option<u32>) {}
}

/// The sessions and runs of one server (or one command-line invocation).
pub struct Engine {
    drivers: Vec<Arc<dyn Driver>>,
    state_dir: PathBuf,
    /// Where the user's profile file lives.
    config_dir: PathBuf,
    store: Store,
    events: Arc<dyn Events>,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    /// Whether runs wait for a slow receiver instead of skipping output (the command line).
    lossless_output: bool,
    /// Shared so a finished run's task can remove its own entry.
    runs: Arc<Mutex<HashMap<String, Arc<RunHandle>>>>,
}

impl Engine {
    pub fn new(events: Arc<dyn Events>) -> Self {
        Self::with_drivers(events, drivers::registry(), paths::state_dir())
    }

    pub fn with_drivers(events: Arc<dyn Events>, drivers: Vec<Arc<dyn Driver>>, state_dir: PathBuf) -> Self {
        Self::with_dirs(events, drivers, state_dir, paths::config_dir())
    }

    pub fn with_dirs(
        events: Arc<dyn Events>,
        drivers: Vec<Arc<dyn Driver>>,
        state_dir: PathBuf,
        config_dir: PathBuf,
    ) -> Self {
        let store = Store::new(&state_dir);
        // Sandboxes left by a server that crashed are cleaned up in the background; nothing waits for it.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            for driver in &drivers {
                let driver = driver.clone();
                let state_dir = state_dir.clone();
                runtime.spawn(async move { driver.clean_up_after_crash(&state_dir).await });
            }
        }
        Engine {
            drivers,
            state_dir,
            config_dir,
            store,
            events,
            sessions: Mutex::default(),
            lossless_output: false,
            runs: Arc::default(),
        }
    }

    /// Makes runs wait for the receiver instead of skipping output; for front doors that must not lose a byte.
    pub fn with_lossless_output(mut self) -> Self {
        self.lossless_output = true;
        self
    }

    pub fn state_dir(&self) -> &std::path::Path {
        &self.state_dir
    }

    /// Every driver with its availability, probed now.
    pub async fn drivers(&self) -> Vec<DriverInfo> {
        let probes = self.drivers.iter().map(|driver| drivers::describe(driver.as_ref()));
        futures::future::join_all(probes).await
    }

    fn driver(&self, id: &str) -> Result<Arc<dyn Driver>> {
        self.drivers.iter().find(|driver| driver.id() == id).cloned().ok_or_else(|| {
            let known: Vec<&str> = self.drivers.iter().map(|driver| driver.id()).collect();
            Error::InvalidParams(format!(
                "There is no driver \"{id}\". The drivers this sandlink knows are: {}.",
                known.join(", ")
            ))
        })
    }

    /// Connects a driver for a workspace and, unless `sync: false`, uploads the workspace before answering.
    /// With `reuse`, re-attaches to a session kept from an earlier run instead.
    pub async fn connect(
        &self,
        params: ConnectParams,
        default_workspace: Option<PathBuf>,
        progress: &dyn Progress,
    ) -> Result<SessionInfo> {
        self.open_session(params, default_workspace, progress, None).await
    }

    /// Starts a new session from a snapshot that `snapshot` answered; the snapshot's files are kept (no upload).
    pub async fn restore(
        &self,
        params: RestoreParams,
        default_workspace: Option<PathBuf>,
        progress: &dyn Progress,
    ) -> Result<SessionInfo> {
        if params.profile.is_none() && params.driver.is_none() {
            return Err(Error::InvalidParams(
                "Say where the snapshot lives: restore needs `driver` (with its settings) or `profile`.".into(),
            ));
        }
        let connect = ConnectParams {
            profile: params.profile,
            driver: params.driver,
            settings: params.settings,
            workspace_folder: params.workspace_folder,
            sync: Some(false),
            reuse: None,
            work_done_token: None,
        };
        self.open_session(connect, default_workspace, progress, Some(params.snapshot_id)).await
    }

    /// Connects (or, with `snapshot_id`, restores) a sandbox, registers and persists its session, uploads the
    /// workspace when asked, and starts the keepalive of sandboxes that expire on their own.
    async fn open_session(
        &self,
        params: ConnectParams,
        default_workspace: Option<PathBuf>,
        progress: &dyn Progress,
        snapshot_id: Option<String>,
    ) -> Result<SessionInfo> {
        let explicit_workspace = match &params.workspace_folder {
            Some(folder) => Some(paths::path_from_uri_or_path(folder)?),
            None => None,
        };
        if let Some(workspace) = &explicit_workspace {
            if !workspace.is_dir() {
                return Err(Error::InvalidParams(format!(
                    "The workspace folder {} does not exist or is not a directory.",
                    workspace.display()
                )));
            }
        }
        if let Some(reuse) = params.reuse.clone() {
            return self.reattach(&reuse, params, explicit_workspace, progress).await;
        }
        let workspace = explicit_workspace.or(default_workspace).filter(|workspace| workspace.is_dir());
        let plan = self
            .plan(PlanInput {
                profile: params.profile.clone(),
                driver: params.driver.clone(),
                settings: params.settings.clone(),
                workspace: workspace.as_deref(),
            })
            .await?;
        let driver_id = plan.driver.id().to_string();
        let info = plan.driver.info().await;
        if !info.available {
            return Err(Error::DriverUnavailable {
                driver: driver_id.clone(),
                message: info.detail.unwrap_or_else(|| format!("The {driver_id} driver is not available here.")),
            });
        }
        if let Some(kept) = self.kept_session_like(&plan, workspace.as_deref()).await {
            // A kept sandbox for the same workspace and configuration is what the user wants back after an editor
            // restart; a fresh one would pay again for the upload (and, in the cloud, for the sandbox).
            let reattach_params = ConnectParams { reuse: Some(kept.clone()), ..ConnectParams::default() };
            match self.reattach(&kept, reattach_params, workspace.clone(), progress).await {
                Ok(session) => return Ok(session),
                Err(error) => tracing::info!(session = %kept, %error, "a kept session could not be re-attached; connecting anew"),
            }
        }
        let sync_options = SyncOptions::from_settings(&plan.settings)?;
        let session_id = format!("{driver_id}-{}", short_id());
        let claim = self.reserve(&session_id, &plan, workspace.clone()).await?;
        progress.report(format!("Connecting {driver_id}"), None).await;
        let Plan { driver, profile, settings, credentials } = plan;
        let request = ConnectRequest {
            session_id: session_id.clone(),
            workspace: workspace.clone(),
            settings: settings.clone(),
            state_dir: self.state_dir.clone(),
            credentials,
        };
        let connected = match snapshot_id {
            Some(snapshot_id) => driver.restore(snapshot_id, request).await,
            None => driver.connect(request).await,
        };
        let sandbox = match connected {
            Ok(sandbox) => sandbox,
            Err(error) => {
                self.remove_record(&session_id).await;
                return Err(error);
            }
        };
        let session = Arc::new(
            Session::new(session_id.clone(), driver_id, profile, workspace.clone(), sandbox)
                .with_persistence(settings, claim, None),
        );
        self.emit_state(&session, SessionState::Connecting, None).await;
        lock(&self.sessions).insert(session_id.clone(), session.clone());
        let automatic_sync = params.sync.unwrap_or(true);
        let prepared = match self.attach_sync(&session, sync_options).await {
            Ok(()) if automatic_sync && session.sync.get().is_some() => {
                progress.report("Uploading the workspace".into(), None).await;
                self.sync_session(&session, SyncDirection::Up, None, progress).await.map(|_| ())
            }
            other => other,
        };
        if let Err(error) = prepared {
            lock(&self.sessions).remove(&session_id);
            if let Some(sync) = session.sync.get() {
                sync.stop().await;
            }
            let _ = session.sandbox.disconnect(false).await;
            self.emit_state(&session, SessionState::Error, Some(error.to_string())).await;
            session.forget();
            self.remove_record(&session_id).await;
            return Err(error);
        }
        if let (true, Some(sync)) = (automatic_sync, session.sync.get()) {
            sync.start_background();
        }
        self.emit_state(&session, SessionState::Active, None).await;
        lifecycle::watch(&session, self.runs.clone(), self.events.clone());
        self.watch_for_failure(&session);
        Ok(session.info())
    }

    /// Turns the session to `error` when its sandbox breaks on its own (the driver says why).
    fn watch_for_failure(&self, session: &Arc<Session>) {
        let session = session.clone();
        let events = self.events.clone();
        tokio::spawn(async move {
            let message = session.sandbox.wait_failure().await;
            if matches!(session.state(), SessionState::Disconnected | SessionState::Error | SessionState::Expired) {
                return;
            }
            session.update(|mutable| {
                mutable.state = SessionState::Error;
                mutable.message = Some(message.clone());
            });
            events
                .session_state(SessionStateParams {
                    session_id: session.id.clone(),
                    state: SessionState::Error,
                    message: Some(message),
                })
                .await;
        });
    }

    /// Counts sandboxes against the limit and writes the new session's first record, under the index lock so two
    /// servers connecting at once cannot both take the last slot.
    async fn reserve(&self, session_id: &str, plan: &Plan, workspace: Option<PathBuf>) -> Result<statefile::Lock> {
        let limit = match self.load_profiles(None).await {
            Ok(profiles) => profiles.max_sandboxes(),
            Err(_) => crate::profiles::DEFAULT_MAX_SANDBOXES,
        };
        let now = now_rfc3339();
        let record = Record {
            version: RECORD_VERSION,
            session_id: session_id.to_string(),
            driver: plan.driver.id().to_string(),
            profile: plan.profile.clone(),
            workspace,
            remote_root: String::new(),
            state: SessionState::Connecting,
            message: None,
            started_at: now.clone(),
            last_activity: now,
            expires_at: None,
            settings: plan.settings.clone(),
            driver_state: serde_json::Value::Null,
            sync_manifest: None,
            sync: Default::default(),
            kept: false,
            pid: std::process::id(),
        };
        let store = self.store.clone();
        let config_file = crate::profiles::user_file(&self.config_dir);
        statefile::blocking(move || {
            let _index = store.index_lock()?;
            let existing = store.list()?;
            if existing.len() >= limit {
                return Err(Error::LimitReached(format!(
                    "There are already {} sandboxes (the limit is {limit}), so sandlink will not start another one. \
                     Disconnect one you no longer need (sandlink/sessions lists them, kept ones included) or raise \
                     maxSandboxes under [limits] in {}.",
                    existing.len(),
                    config_file.display()
                )));
            }
            let claim = store.claim(&record.session_id)?.ok_or_else(|| {
                Error::Internal(format!("The new session {} is already claimed.", record.session_id))
            })?;
            store.write(&record)?;
            Ok(claim)
        })
        .await
    }

    async fn remove_record(&self, session_id: &str) {
        let store = self.store.clone();
        let id = session_id.to_string();
        if let Err(error) = statefile::blocking(move || store.remove(&id)).await {
            tracing::warn!(session_id, %error, "could not remove a session record");
        }
    }

    /// Writes a live session's record (state, times, driver state); never for a session already removed.
    async fn persist(&self, session: &Session, kept: bool) {
        if session.is_forgotten() {
            return;
        }
        let info = session.info();
        let record = Record {
            version: RECORD_VERSION,
            session_id: session.id.clone(),
            driver: session.driver.clone(),
            profile: session.profile.clone(),
            workspace: session.workspace.clone(),
            remote_root: info.remote_root,
            state: info.state,
            message: info.message,
            started_at: info.started_at,
            last_activity: info.last_activity,
            expires_at: info.expires_at,
            settings: session.settings.clone(),
            driver_state: session.sandbox.driver_state(),
            sync_manifest: Some(format!("sessions/{}/manifest.json", session.id)),
            sync: info.sync,
            kept,
            pid: std::process::id(),
        };
        let store = self.store.clone();
        if let Err(error) = statefile::blocking(move || store.write(&record)).await {
            tracing::warn!(session_id = %session.id, %error, "could not save the session record");
        }
    }

    /// Re-attaches to a session kept from an earlier run (or another server that exited), keeping its id so the
    /// sync manifest under `sessions/<id>` still applies and an unchanged workspace transfers nothing.
    /// The newest kept session (not attached anywhere) with the plan's driver, profile and settings for `workspace`.
    async fn kept_session_like(&self, plan: &Plan, workspace: Option<&std::path::Path>) -> Option<String> {
        let workspace = workspace.map(crate::profiles::trust::canonical);
        let store = self.store.clone();
        let records = statefile::blocking(move || store.list()).await.ok()?;
        records
            .into_iter()
            .filter(|record| {
                record.kept
                    && record.driver == plan.driver.id()
                    && record.profile == plan.profile
                    && record.settings == plan.settings
                    && record.workspace.as_deref().map(crate::profiles::trust::canonical) == workspace
                    && !lock(&self.sessions).contains_key(&record.session_id)
            })
            .max_by(|left, right| left.last_activity.cmp(&right.last_activity))
            .map(|record| record.session_id)
    }

    async fn reattach(
        &self,
        session_id: &str,
        params: ConnectParams,
        explicit_workspace: Option<PathBuf>,
        progress: &dyn Progress,
    ) -> Result<SessionInfo> {
        crate::credentials::check_name("session id", session_id)
            .map_err(|_| Error::UnknownSession(session_id.to_string()))?;
        if let Some(session) = lock(&self.sessions).get(session_id).cloned() {
            return Ok(session.info());
        }
        if params.settings.is_some() || params.driver.is_some() || params.profile.is_some() {
            return Err(Error::InvalidParams(
                "A re-attach (reuse) keeps the session's driver, profile and settings; leave those out.".into(),
            ));
        }
        let (record, claim) = self.claim_record(session_id).await?;
        if let (Some(asked), Some(kept)) = (&explicit_workspace, &record.workspace) {
            if crate::profiles::trust::canonical(asked) != crate::profiles::trust::canonical(kept) {
                return Err(Error::InvalidParams(format!(
                    "Session {session_id} belongs to the workspace {}, not {}.",
                    kept.display(),
                    asked.display()
                )));
            }
        }
        progress.report(format!("Re-attaching {session_id}"), None).await;
        let driver = self.driver(&record.driver)?;
        let request = self.reattach_request(&record, driver.as_ref()).await?;
        let sandbox = match driver.sandbox_exists(&request).await {
            Ok(true) => driver.reattach(request).await,
            Ok(false) => Err(Error::UnknownSession(session_id.to_string())),
            Err(error) => Err(error),
        };
        let sandbox = match sandbox {
            Ok(sandbox) => sandbox,
            Err(Error::UnknownSession(_)) => {
                drop(claim);
                self.remove_record(session_id).await;
                return Err(Error::SessionGone(format!(
                    "The sandbox of session {session_id} no longer exists (it was removed or expired), so its record \
                     was cleaned up. Connect again for a new one."
                )));
            }
            Err(error) => return Err(error),
        };
        let session = Arc::new(
            Session::new(
                record.session_id.clone(),
                record.driver.clone(),
                record.profile.clone(),
                record.workspace.clone(),
                sandbox,
            )
            .with_persistence(record.settings.clone(), claim, Some(record.started_at.clone())),
        );
        session.update(|mutable| {
            mutable.sync.last_sync_at = record.sync.last_sync_at.clone();
            mutable.expires_at = record.expires_at.clone();
        });
        self.emit_state(&session, SessionState::Connecting, None).await;
        lock(&self.sessions).insert(session.id.clone(), session.clone());
        // Same id, same session directory: the sync manifest from before the restart applies, so an unchanged
        // workspace transfers nothing.
        let sync_options = SyncOptions::from_settings(&record.settings)?;
        let automatic_sync = params.sync.unwrap_or(true);
        let prepared = match self.attach_sync(&session, sync_options).await {
            Ok(()) if automatic_sync && session.sync.get().is_some() => {
                progress.report("Syncing changes".into(), None).await;
                self.sync_session(&session, SyncDirection::Up, None, progress).await.map(|_| ())
            }
            other => other,
        };
        if let Err(error) = prepared {
            self.emit_state(&session, SessionState::Error, Some(error.to_string())).await;
            return Err(error);
        }
        if let (true, Some(sync)) = (automatic_sync, session.sync.get()) {
            sync.start_background();
        }
        self.emit_state(&session, SessionState::Active, None).await;
        lifecycle::watch(&session, self.runs.clone(), self.events.clone());
        self.watch_for_failure(&session);
        tracing::info!(session_id, "re-attached a kept session");
        Ok(session.info())
    }

    /// Reads a kept record and takes ownership of it, or says who holds it.
    async fn claim_record(&self, session_id: &str) -> Result<(Record, statefile::Lock)> {
        let store = self.store.clone();
        let id = session_id.to_string();
        statefile::blocking(move || {
            let record = store.read(&id)?.ok_or_else(|| Error::UnknownSession(id.clone()))?;
            let claim = store.claim(&id)?.ok_or_else(|| {
                Error::SessionInUse(format!(
                    "Session {id} is attached by another sandlink (process {}, probably another editor window). \
                     Use it there, disconnect it there, or close that window first.",
                    record.pid
                ))
            })?;
            if record.version != RECORD_VERSION {
                return Err(Error::Unsupported(format!(
                    "Session {id} was saved by a different version of sandlink and cannot be re-attached; \
                     disconnect it with that version or remove {}.",
                    store.session_dir(&id).display()
                )));
            }
            Ok((record, claim))
        })
        .await
    }

    /// The request a driver gets to find a kept sandbox: its record plus freshly resolved credentials.
    async fn reattach_request(&self, record: &Record, driver: &dyn Driver) -> Result<ReattachRequest> {
        let credentials =
            crate::credentials::resolve(driver.id(), record.profile.as_deref(), driver.credential_keys()).await?;
        Ok(ReattachRequest {
            connect: ConnectRequest {
                session_id: record.session_id.clone(),
                workspace: record.workspace.clone(),
                settings: record.settings.clone(),
                state_dir: self.state_dir.clone(),
                credentials,
            },
            remote_root: record.remote_root.clone(),
            driver_state: record.driver_state.clone(),
        })
    }

    /// Ends a session's runs and its sandbox (kept for later when `keep`). A session kept from an earlier run
    /// (not attached here) is re-attached first so its sandbox is really removed.
    pub async fn disconnect(&self, params: DisconnectParams) -> Result<()> {
        let live = lock(&self.sessions).remove(&params.session_id);
        let Some(session) = live else {
            return self.disconnect_kept(&params.session_id, params.keep).await;
        };
        let runs: Vec<Arc<RunHandle>> = lock(&self.runs)
            .values()
            .filter(|run| run.session_id == session.id)
            .cloned()
            .collect();
        for run in &runs {
            run.cancel();
        }
        for run in &runs {
            self.wait_for_run_end(&run.run_id, run::TERMINATE_GRACE * 3).await;
        }
        if let Some(sync) = session.sync.get() {
            sync.stop().await;
        }
        let outcome = session.sandbox.disconnect(params.keep).await;
        if let Err(error) = outcome {
            // The sandbox may still exist: keep the record so it can be found and removed later.
            self.persist(&session, true).await;
            session.release_claim();
            return Err(error);
        }
        if params.keep {
            session.update(|mutable| {
                mutable.state = SessionState::Disconnected;
                mutable.message = Some(format!("Kept; re-attach with connect {{ reuse: \"{}\" }}.", session.id));
            });
            self.persist(&session, true).await;
        } else {
            session.forget();
            self.remove_record(&session.id).await;
        }
        session.release_claim();
        self.emit_state(&session, SessionState::Disconnected, None).await;
        Ok(())
    }

    /// Disconnects a session that only exists as a record (kept, or left by a crash).
    async fn disconnect_kept(&self, session_id: &str, keep: bool) -> Result<()> {
        crate::credentials::check_name("session id", session_id)
            .map_err(|_| Error::UnknownSession(session_id.to_string()))?;
        let (record, claim) = self.claim_record(session_id).await?;
        if keep {
            return Ok(());
        }
        let driver = self.driver(&record.driver)?;
        let request = self.reattach_request(&record, driver.as_ref()).await?;
        if driver.sandbox_exists(&request).await? {
            let sandbox = driver.reattach(request).await?;
            sandbox.disconnect(false).await?;
        }
        drop(claim);
        self.remove_record(session_id).await;
        self.events
            .session_state(SessionStateParams {
                session_id: session_id.to_string(),
                state: SessionState::Disconnected,
                message: None,
            })
            .await;
        Ok(())
    }

    async fn wait_for_run_end(&self, run_id: &str, limit: Duration) {
        let end = tokio::time::Instant::now() + limit;
        while lock(&self.runs).contains_key(run_id) && tokio::time::Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Ends every session when the server shuts down: kept for a re-attach after the editor restarts unless the
    /// user set `[sessions] keepOnExit = false`.
    pub async fn disconnect_all(&self) {
        let keep = match self.load_profiles(None).await {
            Ok(profiles) => profiles.keep_on_exit(),
            Err(_) => true,
        };
        let ids: Vec<String> = lock(&self.sessions).keys().cloned().collect();
        for session_id in ids {
            if let Err(error) = self.disconnect(DisconnectParams { session_id: session_id.clone(), keep }).await {
                tracing::warn!(%session_id, %error, "could not end a session at shutdown");
            }
        }
    }

    /// The sessions attached here, then those kept on disk: kept ones are checked with their driver, and records
    /// of sandboxes that no longer exist are reported once as `expired` and removed.
    pub async fn sessions(&self) -> Vec<SessionInfo> {
        let mut sessions: Vec<SessionInfo> = lock(&self.sessions).values().map(|session| session.info()).collect();
        let store = self.store.clone();
        let records = match statefile::blocking(move || store.list()).await {
            Ok(records) => records,
            Err(error) => {
                tracing::warn!(%error, "could not list kept sessions");
                Vec::new()
            }
        };
        for record in records {
            if sessions.iter().any(|session| session.session_id == record.session_id) {
                continue;
            }
            let store = self.store.clone();
            let id = record.session_id.clone();
            let claimed = statefile::blocking(move || Ok(store.is_claimed(&id))).await.unwrap_or(false);
            if claimed {
                let message = format!(
                    "Attached by another sandlink (process {}, probably another editor window).",
                    record.pid
                );
                sessions.push(record.info(record.state, message));
                continue;
            }
            sessions.push(self.check_kept(record).await);
        }
        sessions.sort_by(|left, right| left.started_at.cmp(&right.started_at));
        sessions
    }

    /// A kept record as listed: `disconnected` and re-attachable, or `expired` (and removed) when its sandbox is gone.
    async fn check_kept(&self, record: Record) -> SessionInfo {
        let Ok(driver) = self.driver(&record.driver) else {
            return record.info(
                SessionState::Error,
                format!("Kept by a sandlink with the {} driver, which this build does not have.", record.driver),
            );
        };
        // A missing credential must not hide the record: the existence check then runs without one.
        let request = match self.reattach_request(&record, driver.as_ref()).await {
            Ok(request) => request,
            Err(_) => ReattachRequest {
                connect: ConnectRequest {
                    session_id: record.session_id.clone(),
                    workspace: record.workspace.clone(),
                    settings: record.settings.clone(),
                    state_dir: self.state_dir.clone(),
                    credentials: Default::default(),
                },
                remote_root: record.remote_root.clone(),
                driver_state: record.driver_state.clone(),
            },
        };
        let exists = tokio::time::timeout(Duration::from_secs(10), driver.sandbox_exists(&request)).await;
        match exists {
            Ok(Ok(false)) => {
                // Only the owner may remove a record: one another server has just claimed stays.
                let store = self.store.clone();
                let id = record.session_id.clone();
                let removed = statefile::blocking(move || match store.claim(&id)? {
                    Some(_claim) => store.remove(&id).map(|()| true),
                    None => Ok(false),
                })
                .await;
                if !matches!(removed, Ok(true)) {
                    return record.info(record.state, "Attached by another sandlink.".into());
                }
                record.info(
                    SessionState::Expired,
                    "Its sandbox no longer exists, so the record was removed; connect again for a new one.".into(),
                )
            }
            Ok(Err(error)) => record.info(SessionState::Error, format!("Could not check the sandbox: {error}")),
            Ok(Ok(true)) | Err(_) => {
                let how = if record.kept { "Kept" } else { "Left by a sandlink that exited" };
                record.info(
                    SessionState::Disconnected,
                    format!("{how}; re-attach with connect {{ reuse: \"{}\" }}.", record.session_id),
                )
            }
        }
    }

    pub fn session(&self, session_id: &str) -> Result<Arc<Session>> {
        lock(&self.sessions).get(session_id).cloned().ok_or_else(|| Error::UnknownSession(session_id.to_string()))
    }

    /// A session's info with live resources and health from its driver.
    pub async fn status(&self, session_id: &str) -> Result<SessionInfo> {
        let session = self.session(session_id)?;
        let status = session.sandbox.status().await?;
        if let Some(failure) = status.failure.clone() {
            // A sandbox that timed out or was killed is `expired`; anything else wrong with it is an `error`.
            let state = if status.expired { SessionState::Expired } else { SessionState::Error };
            if session.state() != state {
                self.emit_state(&session, state, Some(failure)).await;
            }
        }
        session.update(|mutable| {
            mutable.resources = status.resources.clone();
            if status.expires_at.is_some() {
                mutable.expires_at = status.expires_at.clone();
            }
        });
        Ok(session.info())
    }

    /// Starts a run; the caller must release the returned sender once it has answered the request.
    pub async fn run(&self, mut params: RunParams) -> Result<(String, tokio::sync::oneshot::Sender<()>)> {
        let session = self.session(&params.session_id)?;
        if let Some(task) = params.task.take() {
            if !params.command.is_empty() {
                return Err(Error::InvalidParams("Give a command line or a task name, not both.".into()));
            }
            params.command = self.task_command(session.workspace.as_deref(), &task).await?;
        }
        match session.state() {
            SessionState::Active | SessionState::Syncing => {}
            state => {
                return Err(Error::InvalidParams(format!(
                    "Session {} is {}, so it cannot run commands; connect again.",
                    session.id,
                    state.as_str()
                )))
            }
        }
        if params.command.trim().is_empty() {
            return Err(Error::InvalidParams("The command is empty; give a command line or a program.".into()));
        }
        session.touch();
        // A command never runs against stale files: what was saved or changed is uploaded first.
        if let Some(sync) = session.sync.get() {
            sync.flush().await?;
        }
        let run_id = format!("run-{}", short_id());
        let logs_dir = self.state_dir.join("logs");
        tokio::fs::create_dir_all(&logs_dir)
            .await
            .context(|| format!("Could not create the log directory {}", logs_dir.display()))?;
        // A working directory that is a link out of the root (to `/etc`, say) is refused before any driver sees it;
        // one that passes is handed on resolved, so the run starts where the check looked.
        let cwd = match (params.cwd.as_deref(), session.sandbox.files()) {
            (Some(cwd), Some(files)) => {
                Some(crate::sync::resolve::check_run_directory(&*files, &session.sandbox.remote_root(), cwd).await?)
            }
            _ => params.cwd.clone(),
        };
        let process = session
            .sandbox
            .exec(ExecSpec {
                command: params.command.clone(),
                args: params.args.clone(),
                cwd,
                env: params.env.clone().unwrap_or_default(),
                stdin: params.stdin,
            })
            .await?;
        let context = run::RunContext {
            run_id: run_id.clone(),
            session_id: session.id.clone(),
            events: self.events.clone(),
            log_path: logs_dir.join(format!("{run_id}.log")),
            command: match &params.args {
                Some(args) => std::iter::once(params.command.clone()).chain(args.iter().cloned()).collect::<Vec<_>>().join(" "),
                None => params.command.clone(),
            },
            timeout: params.timeout_ms.map(Duration::from_millis),
            lossless: self.lossless_output,
        };
        let (handle, answered, task) = run::start(context, process)?;
        lock(&self.runs).insert(run_id.clone(), handle);
        let runs = self.runs.clone();
        let finished_run_id = run_id.clone();
        tokio::spawn(async move {
            let _ = task.await;
            lock(&runs).remove(&finished_run_id);
        });
        Ok((run_id, answered))
    }

    /// The session whose workspace folder holds `path` (the innermost, when folders nest).
    pub fn session_for_path(&self, path: &std::path::Path) -> Option<Arc<Session>> {
        lock(&self.sessions)
            .values()
            .filter(|session| session.workspace.as_ref().is_some_and(|workspace| path.starts_with(workspace)))
            .max_by_key(|session| session.workspace.as_ref().map(|workspace| workspace.as_os_str().len()))
            .cloned()
    }

    /// The runs in flight in a session, newest first.
    pub fn runs_of(&self, session_id: &str) -> Vec<Arc<RunHandle>> {
        let mut runs: Vec<Arc<RunHandle>> =
            lock(&self.runs).values().filter(|run| run.session_id == session_id).cloned().collect();
        runs.sort_by_key(|run| std::cmp::Reverse(run.started));
        runs
    }

    /// Records editor activity (a save) in the sessions whose workspace holds `path`, which keeps their sandboxes
    /// alive within the driver's idle window.
    pub fn note_activity(&self, path: &std::path::Path) {
        let sessions: Vec<Arc<Session>> = lock(&self.sessions).values().cloned().collect();
        for session in sessions {
            if session.workspace.as_ref().is_some_and(|workspace| path.starts_with(workspace)) {
                session.touch();
            }
        }
    }

    pub fn run_handle(&self, run_id: &str) -> Result<Arc<RunHandle>> {
        lock(&self.runs).get(run_id).cloned().ok_or_else(|| Error::UnknownRun(run_id.to_string()))
    }

    /// Queues input for a run; see `RunHandle::input` (it never waits for the process to read).
    pub async fn input(&self, run_id: &str, text: &str, eof: bool) -> Result<()> {
        self.run_handle(run_id)?.input(text, eof)
    }

    pub fn cancel(&self, run_id: &str) -> Result<()> {
        self.run_handle(run_id)?.cancel();
        Ok(())
    }

    /// Synchronises a session's workspace; the result says what moved.
    pub async fn sync(&self, params: SyncParams, progress: &dyn Progress) -> Result<SyncResult> {
        let session = self.session(&params.session_id)?;
        session.touch();
        self.sync_session(&session, params.direction, params.paths, progress).await
    }

    /// A file was saved in an editor: every session whose workspace holds it syncs it at once.
    pub fn saved(&self, path: &std::path::Path) {
        let sessions: Vec<Arc<Session>> = lock(&self.sessions).values().cloned().collect();
        for session in sessions {
            let inside = session.workspace.as_ref().is_some_and(|workspace| path.starts_with(workspace));
            if let (true, Some(sync)) = (inside, session.sync.get()) {
                sync.saved(path);
            }
        }
    }

    /// Sets up the session's sync engine (manifest, rules, watcher); sessions without a workspace or a driver
    /// without file operations have none.
    async fn attach_sync(&self, session: &Arc<Session>, options: SyncOptions) -> Result<()> {
        let (Some(workspace), Some(files)) = (session.workspace.clone(), session.sandbox.files()) else {
            return Ok(());
        };
        let observer = Arc::new(SyncObserver { session: Arc::downgrade(session), events: self.events.clone() });
        let session_dir = self.state_dir.join("sessions").join(&session.id);
        let sync = tokio::task::spawn_blocking(move || SessionSync::new(workspace, files, options, &session_dir, observer))
            .await
            .map_err(|error| Error::Internal(format!("Preparing sync failed: {error}")))??;
        let _ = session.sync.set(sync);
        Ok(())
    }

    async fn sync_session(
        &self,
        session: &Arc<Session>,
        direction: SyncDirection,
        paths: Option<Vec<String>>,
        progress: &dyn Progress,
    ) -> Result<SyncResult> {
        if session.workspace.is_none() {
            return Err(Error::InvalidParams(format!("Session {} has no workspace folder to sync.", session.id)));
        }
        let sync = session
            .sync
            .get()
            .cloned()
            .ok_or_else(|| Error::unsupported_by(session.sandbox.driver_id(), "file sync"))?;
        // A sync (on save, or asked for) is editor activity: it keeps sandboxes with idle timeouts alive.
        session.touch();
        let previous = session.state();
        self.emit_state(session, SessionState::Syncing, None).await;
        let outcome = sync.sync(direction, paths, progress).await;
        let restored = if previous == SessionState::Syncing { SessionState::Active } else { previous };
        self.emit_state(session, restored, None).await;
        outcome
    }

    /// The URL of a sandbox port; announces it the first time it is asked for.
    pub async fn preview(&self, session_id: &str, port: u16) -> Result<String> {
        let session = self.session(session_id)?;
        if port == 0 {
            return Err(Error::InvalidParams("The port must be between 1 and 65535.".into()));
        }
        let url = session.sandbox.preview(port).await?;
        let is_new = session.add_preview(port, &url);
        if is_new {
            self.events
                .preview_ready(PreviewReadyParams { session_id: session.id.clone(), port, url: url.clone() })
                .await;
        }
        Ok(url)
    }

    pub async fn extend(&self, session_id: &str, seconds: u64) -> Result<String> {
        let session = self.session(session_id)?;
        let expires_at = session.sandbox.extend(seconds).await?;
        session.update(|mutable| mutable.expires_at = Some(expires_at.clone()));
        Ok(expires_at)
    }

    pub async fn snapshot(&self, session_id: &str, name: Option<String>) -> Result<String> {
        self.session(session_id)?.sandbox.snapshot(name).await
    }

    async fn emit_state(&self, session: &Session, state: SessionState, message: Option<String>) {
        session.update(|mutable| {
            mutable.state = state;
            mutable.message = message.clone();
        });
        if state != SessionState::Disconnected {
            self.persist(session, false).await;
        }
        self.events
            .session_state(SessionStateParams { session_id: session.id.clone(), state, message })
            .await;
    }
}

/// Forwards a session's sync state to the front door as `sandlink/syncState`.
struct SyncObserver {
    /// Weak because the session owns its sync engine, which owns this observer.
    session: std::sync::Weak<Session>,
    events: Arc<dyn Events>,
}

#[async_trait]
impl StateObserver for SyncObserver {
    async fn changed(&self, state: SyncState) {
        let Some(session) = self.session.upgrade() else { return };
        session.update(|mutable| mutable.sync = state.clone());
        self.events.sync_state(SyncStateParams { session_id: session.id.clone(), state }).await;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The tables hold plain maps that a panicking holder cannot leave half-updated.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A short random id for sessions and runs: unique enough per machine, short enough to read.
pub fn short_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

/// Now, as RFC 3339 in UTC.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
