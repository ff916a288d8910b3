//! The engine: sessions, runs and sync on top of the drivers, with no knowledge of LSP.
//!
//! The LSP server and the command line are two front doors onto one `Engine`; each supplies an `Events`
//! implementation that delivers what the engine reports (output, exits, state changes) its own way.

pub mod configure;
pub mod detached;
mod connect;
pub mod jobs;
mod kept;
pub mod ports;
pub mod lifecycle;
pub mod output;
pub mod run;
mod runs;
pub mod session;
pub mod store;
mod syncing;
pub mod audit;
mod manage;
mod terminal;
pub mod runlog;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::drivers::{self, Driver};
use crate::error::{Error, Result};
use crate::locks::lock;
use crate::paths;
use crate::protocol::{
    DriverInfo, ExitParams, JobKind, OutputParams, PreviewReadyParams, SessionInfo, SessionState, SessionStateParams,
    SyncStateParams, TimeoutWarningParams,
};
use store::Store;
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


/// Events nobody is shown: for front doors with nothing to display (agent tasks) and for tests.
pub struct NoEvents;

#[async_trait]
impl Events for NoEvents {
    async fn output(&self, _params: OutputParams) {}
    async fn exit(&self, _params: ExitParams) {}
    async fn session_state(&self, _params: SessionStateParams) {}
    async fn sync_state(&self, _params: SyncStateParams) {}
    async fn preview_ready(&self, _params: PreviewReadyParams) {}
    async fn timeout_warning(&self, _params: TimeoutWarningParams) {}
}

/// Probes every driver, each in a task of its own: a probe that blocks its thread (the local driver's test run of
/// bubblewrap) must not hold up the others, as it would when they were polled together in one task.
async fn probe_all(drivers: &[Arc<dyn Driver>]) -> Vec<DriverInfo> {
    let probes: Vec<_> = drivers
        .iter()
        .map(|driver| {
            let driver = driver.clone();
            tokio::spawn(async move { drivers::describe(driver.as_ref()).await })
        })
        .collect();
    let mut infos = Vec::with_capacity(probes.len());
    for (probe, driver) in probes.into_iter().zip(drivers) {
        match probe.await {
            Ok(info) => infos.push(info),
            // A probe that panicked is asked again here, so the list stays whole and in order.
            Err(_) => infos.push(drivers::describe(driver.as_ref()).await),
        }
    }
    infos
}

/// How long a one-command engine's session syncs without a file watcher (`Engine::for_one_command`). The watcher
/// rescans the whole tree when it starts, so what changed before is not missed.
const ONE_COMMAND_WATCH_DELAY: std::time::Duration = std::time::Duration::from_millis(250);

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
    /// Whether this engine only moves files (`sandlink sync`): its sessions run no commands.
    files_only: bool,
    /// How long after a connect the file watcher starts (`sync::SyncSession::start_background`).
    watch_delay: std::time::Duration,
    /// Shared so a finished run's task can remove its own entry.
    runs: Arc<Mutex<HashMap<String, Arc<RunHandle>>>>,
    /// The runs that ended most recently, newest last, at most `RECENT_RUNS`, for `sandlink/runs`.
    recent_runs: Arc<Mutex<std::collections::VecDeque<Arc<RunHandle>>>>,
    /// Keeps every session with a lease alive while in use (one task for all of them).
    lifecycle: Arc<lifecycle::Manager>,
    /// Connects, syncs, snapshots and restores in flight.
    jobs: jobs::Jobs,
    /// What happened to sandboxes, as JSON lines in the state directory.
    audit: Arc<audit::Audit>,
    /// The front door this engine serves, as the audit log names it.
    who: audit::Who,
    /// Driver probes started with the server, before `initialize` arrives, for its result (see `probe_drivers_early`).
    early_probe: Mutex<Option<EarlyProbe>>,
    /// The drivers whose leftovers of crashed servers this engine has set about removing (each once).
    cleaned_up: Mutex<std::collections::HashSet<&'static str>>,
}

/// The driver list a probe started early will answer, shared so it can be awaited after it was spawned.
type EarlyProbe = futures::future::Shared<futures::future::BoxFuture<'static, Vec<DriverInfo>>>;

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
        let engine = Self::without_clean_up(events, drivers, state_dir, config_dir);
        engine.clean_up_after_crashes();
        engine
    }

    /// An engine for one command that uses one driver and ends with it (`sandlink run`, `sync`, `shell`). It
    /// removes what crashed servers left only of the drivers it uses, when it first uses each, instead of all of them
    /// at its start: a local run then does not have the Docker daemon list its containers beside it, which cost
    /// such a run about 6 ms of its two cores here. Editors' servers and every other command still clean up after
    /// all drivers at their start.
    ///
    /// Its file watcher starts only once its command has run for `ONE_COMMAND_WATCH_DELAY`: a short command needs
    /// none (each run syncs what changed first), and a process that set inotify watches waits, when it exits, for
    /// the kernel to free them after an RCU grace period: 9–10 ms of a `sandlink run -- true` measured here.
    pub fn for_one_command(events: Arc<dyn Events>) -> Self {
        let mut engine = Self::without_clean_up(events, drivers::registry(), paths::state_dir(), paths::config_dir());
        engine.watch_delay = ONE_COMMAND_WATCH_DELAY;
        engine
    }

    fn without_clean_up(
        events: Arc<dyn Events>,
        drivers: Vec<Arc<dyn Driver>>,
        state_dir: PathBuf,
        config_dir: PathBuf,
    ) -> Self {
        let store = Store::new(&state_dir);
        let runs: Arc<Mutex<HashMap<String, Arc<RunHandle>>>> = Arc::default();
        let audit = Arc::new(audit::Audit::new(&state_dir));
        let lifecycle =
            lifecycle::Manager::with_audit(Arc::new(lifecycle::SystemClock), runs.clone(), events.clone(), audit.clone());
        Engine {
            drivers,
            state_dir,
            config_dir,
            store,
            events,
            sessions: Mutex::default(),
            lossless_output: false,
            files_only: false,
            watch_delay: std::time::Duration::ZERO,
            runs,
            recent_runs: Arc::default(),
            lifecycle,
            jobs: jobs::Jobs::default(),
            audit,
            who: audit::Who::Editor,
            early_probe: Mutex::default(),
            cleaned_up: Mutex::default(),
        }
    }

    /// Removes, in the background, what servers that crashed left of every driver's sandboxes; nothing waits for it.
    fn clean_up_after_crashes(&self) {
        for driver in &self.drivers {
            self.clean_up_after_crash_of(driver);
        }
    }

    /// Removes, in the background, what crashed servers left of `driver`'s sandboxes, unless this engine already did.
    fn clean_up_after_crash_of(&self, driver: &Arc<dyn Driver>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        if !lock(&self.cleaned_up).insert(driver.id()) {
            return;
        }
        let (driver, state_dir) = (driver.clone(), self.state_dir.clone());
        runtime.spawn(async move { driver.clean_up_after_crash(&state_dir).await });
    }

    /// Opens sessions that only move files (`sandlink sync`): drivers start nothing for commands (the local driver's
    /// agent, a bubblewrap and an exec of sandlink, was most of that command's cost beside the copy), and runs are
    /// refused.
    pub fn for_files_only(mut self) -> Self {
        self.files_only = true;
        self
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
        probe_all(&self.drivers).await
    }

    /// Starts probing every driver now, in the background, so the probes (the Docker daemon's answers, the
    /// bubblewrap and ssh test runs) overlap the server's start instead of following the `initialize` request.
    pub fn probe_drivers_early(&self) {
        use futures::FutureExt;
        let drivers = self.drivers.clone();
        let probe = tokio::spawn(async move { probe_all(&drivers).await });
        let answer = async move { probe.await.unwrap_or_default() }.boxed().shared();
        *lock(&self.early_probe) = Some(answer);
    }

    /// The drivers as the probe started by `probe_drivers_early` found them (once; later calls probe again), or
    /// probed now when none was started.
    pub async fn drivers_at_start(&self) -> Vec<DriverInfo> {
        let early = lock(&self.early_probe).take();
        match early {
            Some(probe) => match probe.await {
                drivers if drivers.len() == self.drivers.len() => drivers,
                // The probe task panicked: ask again rather than answer an empty list.
                _ => self.drivers().await,
            },
            None => self.drivers().await,
        }
    }

    /// Values one driver setting may take here, for a connect flow or a profile form; a setting the driver does
    /// not have is `invalidParams` naming those it has.
    pub async fn setting_choices(&self, params: crate::protocol::SettingChoicesParams) -> Result<crate::protocol::SettingChoicesResult> {
        let driver = self.driver(&params.driver)?;
        let known: Vec<&str> =
            driver.settings_schema().iter().chain(drivers::settings::COMMON).map(|spec| spec.key).collect();
        if !known.contains(&params.setting.as_str()) {
            return Err(Error::InvalidParams(format!(
                "The {} driver has no setting \"{}\". Its settings are: {}.",
                params.driver,
                params.setting,
                known.join(", ")
            )));
        }
        let workspace = params.workspace_folder.as_deref().map(crate::paths::path_from_uri_or_path).transpose()?;
        let choices = driver.setting_choices(&params.setting, workspace.as_deref()).await?;
        Ok(crate::protocol::SettingChoicesResult { choices })
    }

    /// The driver `id`; the first use of a driver cleans up what crashed servers left of it (`for_one_command`).
    fn driver(&self, id: &str) -> Result<Arc<dyn Driver>> {
        let found = self.drivers.iter().find(|driver| driver.id() == id).cloned();
        if let Some(driver) = &found {
            self.clean_up_after_crash_of(driver);
        }
        found.ok_or_else(|| {
            let known: Vec<&str> = self.drivers.iter().map(|driver| driver.id()).collect();
            Error::InvalidParams(format!(
                "There is no driver \"{id}\". The drivers this sandlink knows are: {}.",
                known.join(", ")
            ))
        })
    }

    pub fn session(&self, session_id: &str) -> Result<Arc<Session>> {
        lock(&self.sessions).get(session_id).cloned().ok_or_else(|| Error::UnknownSession(session_id.to_string()))
    }

    /// What the upload at connect moved, when connect uploaded (a session connected with a workspace and `sync`).
    pub fn initial_sync(&self, session_id: &str) -> Option<crate::protocol::SyncResult> {
        self.session(session_id).ok().and_then(|session| session.initial_sync.get().cloned())
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
        Ok(self.info_with_jobs(&session))
    }

    /// A live session's info with its jobs in flight.
    fn info_with_jobs(&self, session: &Session) -> SessionInfo {
        let mut info = session.info();
        info.jobs = self.jobs.of_session(&session.id);
        info
    }

    /// Asks a job (connect, sync, restore) to stop at its next safe point; its request then answers `cancelled`.
    pub fn cancel_job(&self, job_id: &str) -> Result<()> {
        self.jobs.cancel(job_id)
    }

    /// The session whose workspace folder holds `path` (the innermost, when folders nest).
    pub fn session_for_path(&self, path: &std::path::Path) -> Option<Arc<Session>> {
        lock(&self.sessions)
            .values()
            .filter(|session| session.workspace.as_ref().is_some_and(|workspace| path.starts_with(workspace)))
            .max_by_key(|session| session.workspace.as_ref().map(|workspace| workspace.as_os_str().len()))
            .cloned()
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

    /// The URL of a sandbox port; announces it the first time it is asked for.
    pub async fn preview(&self, session_id: &str, port: u16) -> Result<String> {
        let session = self.session(session_id)?;
        if port == 0 {
            return Err(Error::InvalidParams("The port must be between 1 and 65535.".into()));
        }
        // Only where a look is cheap (the drivers that watch ports): on Daytona or Vercel each look is several
        // provider requests, and a silent port would cost twenty of them.
        if session.sandbox.port_watch_interval().is_some() {
            ports::wait_until_listening(&*session.sandbox, port).await?;
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
        self.audit.record(
            "extended",
            serde_json::json!({ "sessionId": session.id, "seconds": seconds, "reason": "sandboxExpiry", "expiresAt": expires_at, "who": self.who.as_str() }),
        );
        Ok(expires_at)
    }

    pub async fn snapshot(&self, session_id: &str, name: Option<String>) -> Result<String> {
        let session = self.session(session_id)?;
        let _job = self.jobs.start(JobKind::Snapshot, "Snapshotting", Some(&session.id), false);
        let snapshot_id = session.sandbox.snapshot(name.clone()).await?;
        self.audit.record(
            "snapshot",
            serde_json::json!({ "sessionId": session.id, "snapshotId": snapshot_id, "name": name, "why": "requested", "who": self.who.as_str() }),
        );
        Ok(snapshot_id)
    }

    /// What the session's last snapshot did besides saving the files, when its driver says (see `Sandbox::snapshot_note`).
    pub fn snapshot_note(&self, session_id: &str) -> Option<String> {
        self.session(session_id).ok()?.sandbox.snapshot_note()
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

    /// `emit_state` (with no message), answering before the record reaches the disk (`persist_in_background`).
    async fn emit_state_persisted_in_background(&self, session: &Arc<Session>, state: SessionState) {
        session.update(|mutable| {
            mutable.state = state;
            mutable.message = None;
        });
        self.persist_in_background(session).await;
        self.events
            .session_state(SessionStateParams { session_id: session.id.clone(), state, message: None })
            .await;
    }

    /// `emit_state` without rewriting the record, for a state the caller replaces at once with one it persists
    /// (the `connecting` between a new session's first upload and `active`): each record write waits for the disk.
    async fn emit_state_unpersisted(&self, session: &Session, state: SessionState) {
        session.update(|mutable| {
            mutable.state = state;
            mutable.message = None;
        });
        self.events
            .session_state(SessionStateParams { session_id: session.id.clone(), state, message: None })
            .await;
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    /// A driver that only says when it is asked to clean up after a crashed server.
    struct Counted {
        id: &'static str,
        cleaned_up: tokio::sync::mpsc::UnboundedSender<&'static str>,
    }

    #[async_trait::async_trait]
    impl Driver for Counted {
        fn id(&self) -> &'static str {
            self.id
        }

        async fn info(&self) -> DriverInfo {
            DriverInfo {
                id: self.id.into(),
                available: true,
                detail: None,
                capabilities: crate::protocol::DriverCapabilities {
                    exec: false,
                    stdin: false,
                    cancel: false,
                    upload: false,
                    download: false,
                    preview: false,
                    extend: false,
                    snapshot: false,
                    metrics: false,
                    detect_ports: false,
                    terminal: false,
                },
                settings: Vec::new(),
                credentials: Vec::new(),
            }
        }

        async fn connect(&self, _request: drivers::ConnectRequest) -> Result<Arc<dyn drivers::Sandbox>> {
            Err(Error::Internal("not in this test".into()))
        }

        fn settings_schema(&self) -> &'static [drivers::SettingSpec] {
            &[]
        }

        async fn clean_up_after_crash(&self, _state_dir: &std::path::Path) {
            let _ = self.cleaned_up.send(self.id);
        }
    }

    fn two_drivers() -> (Vec<Arc<dyn Driver>>, tokio::sync::mpsc::UnboundedReceiver<&'static str>) {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        let drivers: Vec<Arc<dyn Driver>> = ["local", "docker"]
            .into_iter()
            .map(|id| Arc::new(Counted { id, cleaned_up: sender.clone() }) as Arc<dyn Driver>)
            .collect();
        (drivers, receiver)
    }

    /// Every clean-up started so far, once the spawned ones had their turn.
    async fn cleaned_up(receiver: &mut tokio::sync::mpsc::UnboundedReceiver<&'static str>) -> Vec<&'static str> {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        let mut heard = Vec::new();
        while let Ok(id) = receiver.try_recv() {
            heard.push(id);
        }
        heard.sort_unstable();
        heard
    }

    #[tokio::test]
    async fn a_files_only_engine_should_refuse_runs_with_a_clear_error() {
        let (drivers, _receiver) = two_drivers();
        let state = tempfile::tempdir().expect("state directory");
        let engine = Engine::without_clean_up(Arc::new(NoEvents), drivers, state.path().into(), state.path().into()).for_files_only();
        let params: crate::protocol::RunParams =
            serde_json::from_value(serde_json::json!({ "sessionId": "local-1", "command": "true" })).expect("params");
        match engine.run(params).await {
            Err(Error::InvalidParams(message)) => assert!(message.contains("only syncs files"), "{message}"),
            other => panic!("a run in a files-only engine: {:?}", other.map(|(run_id, _)| run_id)),
        }
    }

    #[tokio::test]
    async fn a_server_should_clean_up_after_every_driver_at_its_start() {
        let (drivers, mut receiver) = two_drivers();
        let state = tempfile::tempdir().expect("state directory");
        let engine = Engine::with_dirs(Arc::new(NoEvents), drivers, state.path().into(), state.path().into());
        assert_eq!(cleaned_up(&mut receiver).await, ["docker", "local"]);
        engine.driver("local").expect("local");
        assert_eq!(cleaned_up(&mut receiver).await, Vec::<&str>::new(), "no driver is cleaned up twice");
    }

    #[tokio::test]
    async fn a_one_command_engine_should_clean_up_only_after_the_drivers_it_uses_once_each() {
        let (drivers, mut receiver) = two_drivers();
        let state = tempfile::tempdir().expect("state directory");
        let engine = Engine::without_clean_up(Arc::new(NoEvents), drivers, state.path().into(), state.path().into());
        assert_eq!(cleaned_up(&mut receiver).await, Vec::<&str>::new(), "nothing at the start");
        engine.driver("local").expect("local");
        engine.driver("local").expect("local again");
        assert_eq!(cleaned_up(&mut receiver).await, ["local"], "the driver used, once; Docker is left alone");
        assert!(engine.driver("nonesuch").is_err());
        engine.driver("docker").expect("docker");
        assert_eq!(cleaned_up(&mut receiver).await, ["docker"]);
    }
}
