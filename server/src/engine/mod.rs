//! The engine: sessions, runs and sync on top of the drivers, with no knowledge of LSP.
//!
//! The LSP server and the command line are two front doors onto one `Engine`; each supplies an `Events`
//! implementation that delivers what the engine reports (output, exits, state changes) its own way.

pub mod output;
pub mod run;
pub mod session;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::drivers::{self, ConnectRequest, Driver, ExecSpec};
use crate::error::{Error, IoContext, Result};
use crate::paths;
use crate::protocol::{
    ConnectParams, DisconnectParams, DriverInfo, ExitParams, OutputParams, PreviewReadyParams, RunParams,
    SessionInfo, SessionState, SessionStateParams, SyncDirection, SyncParams, SyncResult, SyncStateParams,
    TimeoutWarningParams,
};
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
    events: Arc<dyn Events>,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    /// Shared so a finished run's task can remove its own entry.
    runs: Arc<Mutex<HashMap<String, Arc<RunHandle>>>>,
}

impl Engine {
    pub fn new(events: Arc<dyn Events>) -> Self {
        Self::with_drivers(events, drivers::registry(), paths::state_dir())
    }

    pub fn with_drivers(events: Arc<dyn Events>, drivers: Vec<Arc<dyn Driver>>, state_dir: PathBuf) -> Self {
        // Sandboxes left by a server that crashed are cleaned up in the background; nothing waits for it.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            for driver in &drivers {
                let driver = driver.clone();
                let state_dir = state_dir.clone();
                runtime.spawn(async move { driver.clean_up_after_crash(&state_dir).await });
            }
        }
        Engine { drivers, state_dir, events, sessions: Mutex::default(), runs: Arc::default() }
    }

    /// Every driver with its availability, probed now.
    pub async fn drivers(&self) -> Vec<DriverInfo> {
        let probes = self.drivers.iter().map(|driver| driver.info());
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
    pub async fn connect(
        &self,
        params: ConnectParams,
        default_workspace: Option<PathBuf>,
        progress: &dyn Progress,
    ) -> Result<SessionInfo> {
        if let Some(reuse) = &params.reuse {
            return Err(Error::Unsupported(format!(
                "Re-attaching to session \"{reuse}\" needs persisted sessions, which this build does not have yet."
            )));
        }
        if let Some(profile) = &params.profile {
            return Err(Error::UnknownProfile(profile.clone()));
        }
        let driver_id = params.driver.clone().unwrap_or_else(|| "local".to_string());
        let driver = self.driver(&driver_id)?;
        let info = driver.info().await;
        if !info.available {
            return Err(Error::DriverUnavailable {
                driver: driver_id.clone(),
                message: info.detail.unwrap_or_else(|| format!("The {driver_id} driver is not available here.")),
            });
        }
        let workspace = match &params.workspace_folder {
            Some(folder) => Some(paths::path_from_uri_or_path(folder)?),
            None => default_workspace,
        };
        if let Some(workspace) = &workspace {
            if !workspace.is_dir() {
                return Err(Error::InvalidParams(format!(
                    "The workspace folder {} does not exist or is not a directory.",
                    workspace.display()
                )));
            }
        }
        let session_id = format!("{driver_id}-{}", short_id());
        progress.report(format!("Connecting {driver_id}"), None).await;
        let sandbox = driver
            .connect(ConnectRequest {
                session_id: session_id.clone(),
                workspace: workspace.clone(),
                settings: params.settings.clone().unwrap_or_default(),
                state_dir: self.state_dir.clone(),
            })
            .await?;
        let session = Arc::new(Session::new(session_id.clone(), driver_id, None, workspace.clone(), sandbox));
        self.emit_state(&session, SessionState::Connecting, None).await;
        lock(&self.sessions).insert(session_id.clone(), session.clone());
        if params.sync.unwrap_or(true) && workspace.is_some() {
            progress.report("Uploading the workspace".into(), None).await;
            if let Err(error) = self.sync_session(&session, SyncDirection::Up, None).await {
                lock(&self.sessions).remove(&session_id);
                let _ = session.sandbox.disconnect(false).await;
                self.emit_state(&session, SessionState::Error, Some(error.to_string())).await;
                return Err(error);
            }
        }
        self.emit_state(&session, SessionState::Active, None).await;
        self.watch_for_failure(&session);
        Ok(session.info())
    }

    /// Turns the session to `error` when its sandbox breaks on its own (the driver says why).
    fn watch_for_failure(&self, session: &Arc<Session>) {
        let session = session.clone();
        let events = self.events.clone();
        tokio::spawn(async move {
            let message = session.sandbox.wait_failure().await;
            if matches!(session.state(), SessionState::Disconnected | SessionState::Error) {
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

    /// Ends a session's runs and its sandbox (kept for later when `keep`).
    pub async fn disconnect(&self, params: DisconnectParams) -> Result<()> {
        let session = lock(&self.sessions)
            .remove(&params.session_id)
            .ok_or_else(|| Error::UnknownSession(params.session_id.clone()))?;
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
        session.sandbox.disconnect(params.keep).await?;
        self.emit_state(&session, SessionState::Disconnected, None).await;
        Ok(())
    }

    async fn wait_for_run_end(&self, run_id: &str, limit: Duration) {
        let end = tokio::time::Instant::now() + limit;
        while lock(&self.runs).contains_key(run_id) && tokio::time::Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Disconnects every session; used when the server shuts down.
    pub async fn disconnect_all(&self) {
        let ids: Vec<String> = lock(&self.sessions).keys().cloned().collect();
        for session_id in ids {
            if let Err(error) = self.disconnect(DisconnectParams { session_id: session_id.clone(), keep: false }).await {
                tracing::warn!(%session_id, %error, "could not clean up a session at shutdown");
            }
        }
    }

    pub fn sessions(&self) -> Vec<SessionInfo> {
        let mut sessions: Vec<SessionInfo> = lock(&self.sessions).values().map(|session| session.info()).collect();
        sessions.sort_by(|left, right| left.started_at.cmp(&right.started_at));
        sessions
    }

    pub fn session(&self, session_id: &str) -> Result<Arc<Session>> {
        lock(&self.sessions).get(session_id).cloned().ok_or_else(|| Error::UnknownSession(session_id.to_string()))
    }

    /// A session's info with live resources and health from its driver.
    pub async fn status(&self, session_id: &str) -> Result<SessionInfo> {
        let session = self.session(session_id)?;
        let status = session.sandbox.status().await?;
        if let Some(failure) = status.failure.clone() {
            if session.state() != SessionState::Error {
                self.emit_state(&session, SessionState::Error, Some(failure)).await;
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
    pub async fn run(&self, params: RunParams) -> Result<(String, tokio::sync::oneshot::Sender<()>)> {
        let session = self.session(&params.session_id)?;
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
        let run_id = format!("run-{}", short_id());
        let logs_dir = self.state_dir.join("logs");
        tokio::fs::create_dir_all(&logs_dir)
            .await
            .context(|| format!("Could not create the log directory {}", logs_dir.display()))?;
        let process = session
            .sandbox
            .exec(ExecSpec {
                command: params.command.clone(),
                args: params.args.clone(),
                cwd: params.cwd.clone(),
                env: params.env.clone().unwrap_or_default(),
                stdin: params.stdin,
            })
            .await?;
        let context = run::RunContext {
            run_id: run_id.clone(),
            session_id: session.id.clone(),
            events: self.events.clone(),
            log_path: logs_dir.join(format!("{run_id}.log")),
            timeout: params.timeout_ms.map(Duration::from_millis),
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

    pub fn run_handle(&self, run_id: &str) -> Result<Arc<RunHandle>> {
        lock(&self.runs).get(run_id).cloned().ok_or_else(|| Error::UnknownRun(run_id.to_string()))
    }

    pub async fn input(&self, run_id: &str, text: &str, eof: bool) -> Result<()> {
        self.run_handle(run_id)?.input(text, eof).await
    }

    pub fn cancel(&self, run_id: &str) -> Result<()> {
        self.run_handle(run_id)?.cancel();
        Ok(())
    }

    /// Synchronises a session's workspace; the result says what moved.
    pub async fn sync(&self, params: SyncParams) -> Result<SyncResult> {
        let session = self.session(&params.session_id)?;
        self.sync_session(&session, params.direction, params.paths).await
    }

    async fn sync_session(
        &self,
        session: &Arc<Session>,
        direction: SyncDirection,
        _paths: Option<Vec<String>>,
    ) -> Result<SyncResult> {
        if direction != SyncDirection::Up {
            return Err(Error::Unsupported(
                "Syncing down or both ways is not available in this build yet; sync up works.".into(),
            ));
        }
        let workspace = session.workspace.clone().ok_or_else(|| {
            Error::InvalidParams(format!("Session {} has no workspace folder to sync.", session.id))
        })?;
        let files = session
            .sandbox
            .files()
            .ok_or_else(|| Error::unsupported_by(session.sandbox.driver_id(), "file sync"))?;
        let previous = session.state();
        self.emit_state(session, SessionState::Syncing, None).await;
        let outcome = crate::sync::upload_workspace(workspace, files).await;
        session.update(|mutable| {
            mutable.sync.last_sync_at = Some(now_rfc3339());
        });
        let sync_state = session.info().sync;
        self.events.sync_state(SyncStateParams { session_id: session.id.clone(), state: sync_state }).await;
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
        self.events
            .session_state(SessionStateParams { session_id: session.id.clone(), state, message })
            .await;
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
