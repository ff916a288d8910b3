//! The driver interface: one `Driver` per kind of sandbox, one `Sandbox` per connected session, one `Process` per run.
//!
//! Every operation a driver may lack has a default body that answers `unsupported`, so a driver implements only
//! what its capability flags promise. Provider types (bollard, reqwest, ssh) never leave their driver module.

pub mod daytona;
pub mod detached;
pub mod docker;
pub mod e2b;
pub mod http;
pub mod local;
pub mod process;
pub mod pty;
pub mod settings;
pub mod shell;
pub mod ssh;
pub mod testing;
pub mod vercel;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};


pub use crate::credentials::{CredentialSpec, Secret};
use crate::error::{Error, Result};
use crate::protocol::{DriverInfo, PtySize, Resources, SettingChoice};
pub use settings::{SettingKind, SettingSpec};
use crate::sync::RemoteFiles;

use crate::streams::{BoxedReader, BoxedWriter};

/// What a driver is given to create a sandbox for a session.
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    pub session_id: String,
    /// The local workspace folder, when the session has one.
    pub workspace: Option<PathBuf>,
    /// Driver settings from the profile and the request, already merged.
    pub settings: Map<String, Value>,
    /// sandlink's state directory; drivers keep per-session data under `sessions/<id>`.
    pub state_dir: PathBuf,
    /// The credentials the driver declares in `credential_keys`, resolved from the environment or the keychain.
    pub credentials: BTreeMap<String, Secret>,
    /// Whether the session runs commands. One opened only to move files (`sandlink sync`) does not, and a driver may
    /// then start nothing in the sandbox that only commands need (the local driver's agent and network proxy).
    pub runs_commands: bool,
}

/// What a driver is given to re-attach to a sandbox kept from an earlier run (after a restart or a crash).
#[derive(Debug, Clone)]
pub struct ReattachRequest {
    /// The same fields as a connect, for the kept session's id, workspace, settings and fresh credentials.
    pub connect: ConnectRequest,
    /// The remote root the sandbox had.
    pub remote_root: String,
    /// What `Sandbox::driver_state` returned when the record was last written (provider ids, container id).
    pub driver_state: Value,
}

impl ReattachRequest {
    /// The driver's own state from the record, read into the driver's type. `None` when the record was written
    /// before the sandbox existed (a connect that never finished); a state that does not parse (a record of
    /// another build) is an `unsupported` error naming the driver and the session.
    pub fn recorded_state<T: DeserializeOwned>(&self, driver: &str) -> Result<Option<T>> {
        if self.driver_state.is_null() {
            return Ok(None);
        }
        T::deserialize(&self.driver_state).map(Some).map_err(|error| {
            Error::Unsupported(format!(
                "The record of the kept {driver} session {} holds a driver state this build cannot read ({error}); \
                 disconnect it with the sandlink that kept it or remove its record.",
                self.connect.session_id
            ))
        })
    }
}

/// A driver's state as the session record stores it, for `Sandbox::driver_state`. Serializing a plain struct
/// only fails for a path that is not UTF-8 (the local driver's session directory, which its re-attach does not
/// read); the record then has no state rather than the server panicking.
pub fn state_value(driver: &str, state: &impl Serialize) -> Value {
    serde_json::to_value(state).unwrap_or_else(|error| {
        tracing::warn!(driver, %error, "could not record the driver's state");
        Value::Null
    })
}

/// A kind of sandbox: knows whether it can work here and how to create one.
#[async_trait]
pub trait Driver: Send + Sync {
    /// The driver's id on the wire (`local`, `docker`, …).
    fn id(&self) -> &'static str;

    /// Reports availability and capabilities; may probe (is the daemon up?) but must answer quickly.
    async fn info(&self) -> DriverInfo;

    /// Creates a sandbox for a new session.
    async fn connect(&self, request: ConnectRequest) -> Result<Arc<dyn Sandbox>>;

    /// The settings this driver takes besides `settings::COMMON` (`sync` and `network`), declared beside the struct
    /// they are read into; `DriverInfo.settings` shows them. No default, so that no driver can forget it.
    fn settings_schema(&self) -> &'static [SettingSpec];

    /// Settings a connect with this driver's defaults cannot do without (Docker's `image`), which a connect flow
    /// asks the user for; `DriverInfo.settings` marks them `askAtConnect`.
    fn asked_at_connect(&self) -> &'static [&'static str] {
        &[]
    }

    /// Values `setting` may take here, best first, for a connect flow or a profile form to offer (Docker's local
    /// images); empty when the driver has nothing to suggest. `workspace` is the folder being connected.
    async fn setting_choices(&self, setting: &str, workspace: Option<&Path>) -> Result<Vec<SettingChoice>> {
        let _ = (setting, workspace);
        Ok(Vec::new())
    }

    /// Checks settings before connect and when a profile is saved: unknown keys, wrong types and missing fields
    /// are `invalidProfile` errors naming the key. The default checks `settings_schema`.
    fn validate_settings(&self, settings: &Map<String, Value>) -> Result<()> {
        settings::validate(self.id(), self.settings_schema(), settings)
    }

    /// The credentials this driver uses, each with the environment variable that overrides it.
    fn credential_keys(&self) -> &'static [CredentialSpec] {
        &[]
    }

    /// Whether connecting with these settings sends the workspace off this machine (an SSH host, a cloud account,
    /// a remote Docker host). Workspace profiles that do need the user to trust the workspace first. The default
    /// is the cautious answer.
    fn sends_workspace_elsewhere(&self, settings: &Map<String, Value>) -> bool {
        let _ = settings;
        true
    }

    /// Whether the sandbox a record describes still exists (the container, the cloud sandbox). `Ok(true)` when the
    /// driver cannot tell cheaply; a re-attach then reports the failure.
    async fn sandbox_exists(&self, request: &ReattachRequest) -> Result<bool> {
        let _ = request;
        Ok(true)
    }

    /// Re-attaches to a sandbox kept from an earlier run, without creating a new one.
    async fn reattach(&self, request: ReattachRequest) -> Result<Arc<dyn Sandbox>> {
        let _ = request;
        Err(Error::unsupported_by(self.id(), "re-attaching to a kept sandbox"))
    }

    /// Creates a sandbox for a new session from a snapshot that `Sandbox::snapshot` answered.
    async fn restore(&self, snapshot_id: String, request: ConnectRequest) -> Result<Arc<dyn Sandbox>> {
        let _ = (snapshot_id, request);
        Err(Error::unsupported_by(self.id(), "restoring snapshots"))
    }

    /// Called once when a server starts: removes what servers that stopped without disconnecting left behind
    /// (never what belongs to a running server or a kept session). Failures are logged, not returned.
    async fn clean_up_after_crash(&self, state_dir: &Path) {
        let _ = state_dir;
    }
}

/// A driver's `info()` with the settings and credentials it declares, as `initialize` and `sandlink/drivers` show
/// it; filled here so that what users are shown is what validation and credential lookup use.
pub async fn describe(driver: &dyn Driver) -> DriverInfo {
    let mut info = driver.info().await;
    info.settings = settings::describe(driver.settings_schema(), driver.asked_at_connect());
    info.credentials = settings::describe_credentials(driver.credential_keys());
    info
}

/// A sandbox's sockets as seen from this machine (`Sandbox::sockets_seen_from_here`), for the engine's port watch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SocketsSeen {
    /// The inode of every socket the sandbox's processes hold (from their `socket:[INODE]` links), its agent's
    /// own excepted.
    pub socket_inodes: BTreeSet<u64>,
    /// Every TCP socket listening in the sandbox's network namespace: its port and its inode.
    pub listening: Vec<(u16, u64)>,
}

/// What to run in a sandbox.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    /// A shell command line when `args` is `None`; otherwise the program.
    pub command: String,
    pub args: Option<Vec<String>>,
    /// Relative to the remote root; already checked not to escape it.
    pub cwd: Option<String>,
    pub env: BTreeMap<String, String>,
    /// Whether the caller will write to stdin; when false stdin is empty.
    pub stdin: bool,
    /// The run's `timeoutMs`. The engine enforces it (SIGTERM, then SIGKILL); a driver whose provider ends commands
    /// on its own may pass it on as a backstop for when sandlink is gone.
    pub timeout: Option<Duration>,
    /// Attach the command to a new pseudo-terminal of this size in the sandbox: its input, output and error all
    /// go through the terminal (raw bytes on stdout, stderr stays empty) and it leads a session with the terminal
    /// as its controlling one. Drivers without `DriverCapabilities::terminal` refuse it as `unsupported`.
    pub pty: Option<PtySize>,
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitStatus {
    pub code: Option<i32>,
    /// The signal name (`SIGKILL`) when the process was killed by one.
    pub signal: Option<String>,
    /// Why the process ended abnormally (the sandbox went away), as a sentence.
    pub message: Option<String>,
}

/// Signals the engine sends to a run's process tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Terminate,
    Kill,
}

/// Sends signals to a run's whole process tree.
#[async_trait]
pub trait ProcessControl: Send + Sync {
    async fn signal(&self, signal: Signal) -> Result<()>;

    /// Changes the window size of the run's terminal (a run started with `ExecSpec::pty`); the terminal's
    /// foreground programs get SIGWINCH.
    async fn resize(&self, size: PtySize) -> Result<()> {
        let _ = size;
        Err(Error::Unsupported("This sandbox cannot resize a run's terminal.".into()))
    }
}

/// A started process: its streams, a handle to signal it, and a future for its end.
pub struct Process {
    pub stdout: BoxedReader,
    pub stderr: BoxedReader,
    pub stdin: Option<BoxedWriter>,
    pub control: Arc<dyn ProcessControl>,
    /// Resolves when the main process has exited; the engine then drains the streams.
    pub exit: BoxFuture<'static, Result<ExitStatus>>,
}

/// Live facts about a sandbox for `sandlink/status`.
#[derive(Debug, Clone, Default)]
pub struct SandboxStatus {
    pub resources: Option<Resources>,
    /// Set when the sandbox is gone or broken: the session turns to `error` with this sentence.
    pub failure: Option<String>,
    pub expires_at: Option<String>,
    /// The sandbox is gone for good (it timed out or was killed): the session turns `expired`, not `error`.
    pub expired: bool,
}

/// The lifetime of a sandbox that expires on its own (cloud sandboxes), which the engine keeps alive while in use.
#[derive(Debug, Clone)]
pub struct Lease {
    /// When the sandbox ends unless extended.
    pub expires_at: time::OffsetDateTime,
    /// How many seconds one extension buys.
    pub extend_seconds: u64,
    /// Editor activity older than this no longer counts as use; the user gets a timeout warning instead.
    pub idle_window: Duration,
    /// Set once the sandbox is known to be gone, with a sentence saying what happened.
    pub gone: Option<String>,
}

/// One connected sandbox, owned by one session.
#[async_trait]
pub trait Sandbox: Send + Sync {
    /// The driver's id, for error messages.
    fn driver_id(&self) -> &'static str;

    /// The absolute path of the session's root inside the sandbox.
    fn remote_root(&self) -> String;

    /// What the driver needs to find this sandbox again after a restart (provider ids, container id), persisted
    /// in the session's record as `driverState` and handed back in `ReattachRequest::driver_state`. Each driver
    /// writes its own `State` struct with `state_value` and reads it back with `ReattachRequest::recorded_state`.
    /// Never secrets.
    fn driver_state(&self) -> Value {
        Value::Null
    }

    /// Human-readable isolation in force for this sandbox (e.g. "bubblewrap").
    fn detail(&self) -> Option<String> {
        None
    }

    /// The isolation mechanism's id for `SessionInfo.isolation` (`bubblewrap`, `landlock`, `none`, `container`).
    fn isolation(&self) -> Option<String> {
        None
    }

    /// How often, while runs are in flight, the engine looks for ports that started listening (one small command
    /// each time); `None`, the default, does not look. Drivers that say so set `DriverCapabilities::detect_ports`.
    /// Where a command is a provider API call, seldom enough not to weigh on the account's requests.
    fn port_watch_interval(&self) -> Option<Duration> {
        None
    }

    /// The sandbox's sockets, read from this machine without starting a command, where the driver sees the
    /// sandbox's processes from here (the local driver). `None`, the default, has the engine's port watch run its
    /// probe command in the sandbox instead.
    async fn sockets_seen_from_here(&self) -> Option<SocketsSeen> {
        None
    }

    /// Whether `exec` can attach a run to a terminal (`ExecSpec::pty`); the engine refuses terminals as
    /// `unsupported` where it cannot. Drivers that say yes set `DriverCapabilities::terminal`.
    fn supports_terminal(&self) -> bool {
        false
    }

    /// Starts a process; answers once it has started.
    async fn exec(&self, spec: ExecSpec) -> Result<Process> {
        let _ = spec;
        Err(Error::unsupported_by(self.driver_id(), "running commands"))
    }

    /// The file operations the sync engine uses, when the driver supports sync.
    fn files(&self) -> Option<Arc<dyn RemoteFiles>> {
        None
    }

    /// A URL under which `port` inside the sandbox is reachable from this machine.
    async fn preview(&self, port: u16) -> Result<String> {
        let _ = port;
        Err(Error::unsupported_by(self.driver_id(), "previews"))
    }

    /// Extends the sandbox's lifetime; answers the new expiry (RFC 3339).
    async fn extend(&self, seconds: u64) -> Result<String> {
        let _ = seconds;
        Err(Error::unsupported_by(self.driver_id(), "extending a sandbox's lifetime"))
    }

    /// Snapshots the sandbox; answers the snapshot id.
    async fn snapshot(&self, name: Option<String>) -> Result<String> {
        let _ = name;
        Err(Error::unsupported_by(self.driver_id(), "snapshots"))
    }

    /// What the last snapshot did besides saving the files, when the user must know it (Vercel's stops the session),
    /// as a sentence `sandlink/snapshot` answers beside the snapshot's id.
    fn snapshot_note(&self) -> Option<String> {
        None
    }

    /// The sandbox's lifetime, for drivers whose sandboxes expire unless kept alive; answered without a request.
    fn lease(&self) -> Option<Lease> {
        None
    }

    /// Current resources and health.
    async fn status(&self) -> Result<SandboxStatus> {
        Ok(SandboxStatus::default())
    }

    /// Waits until the sandbox can run commands. `Driver::connect` may answer before (the local driver starts its
    /// agent while the engine uploads the workspace); the engine waits here before it calls a session active. The
    /// default is ready at once.
    async fn ready(&self) -> Result<()> {
        Ok(())
    }

    /// Ends the sandbox; with `keep` it stays for a later re-attach.
    async fn disconnect(&self, keep: bool) -> Result<()>;

    /// Resolves when the sandbox breaks on its own (it died, was removed, its host went away) with a sentence
    /// saying why; the session then turns to `error`. Drivers that cannot tell never resolve.
    async fn wait_failure(&self) -> String {
        std::future::pending().await
    }

    /// Starts a run that goes on without sandlink, its output in files (`detached`); answers where they are. The
    /// default starts it through a POSIX shell with `exec`.
    async fn start_detached(&self, spec: detached::DetachedSpec) -> Result<detached::DetachedStart> {
        detached::start_with_shell(self, spec).await
    }

    /// Reads a detached run's output beyond the offsets, and its end once it ended; `None` when its files are gone.
    async fn read_detached(
        &self,
        start: &detached::DetachedStart,
        stdout_from: u64,
        stderr_from: u64,
    ) -> Result<Option<detached::Piece>> {
        detached::read_with_shell(self, &start.folder, stdout_from, stderr_from, detached::READ_BYTES).await
    }

    /// Signals a detached run's process group.
    async fn signal_detached(&self, start: &detached::DetachedStart, signal: Signal) -> Result<()> {
        let name = match signal {
            Signal::Terminate => "TERM",
            Signal::Kill => "KILL",
        };
        detached::signal_with_shell(self, &start.folder, name).await
    }
}

/// The drivers this build knows, in the order they are listed to users.
pub fn registry() -> Vec<Arc<dyn Driver>> {
    let mut drivers: Vec<Arc<dyn Driver>> = vec![
        Arc::new(local::Driver::new()),
        Arc::new(docker::Driver::new()),
        Arc::new(e2b::Driver::new()),
        Arc::new(daytona::Driver::new()),
        Arc::new(vercel::Driver::new()),
        Arc::new(ssh::Driver::new()),
    ];
    if testing::Keyed::enabled() {
        drivers.push(Arc::new(testing::Keyed::new()));
    }
    drivers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorKind;

    fn request_with(driver_state: Value) -> ReattachRequest {
        ReattachRequest {
            connect: ConnectRequest {
                session_id: "docker-1a2b".into(),
                workspace: None,
                settings: Map::new(),
                state_dir: PathBuf::from("/state"),
                credentials: BTreeMap::new(),
                runs_commands: true,
            },
            remote_root: "/workspace".into(),
            driver_state,
        }
    }

    #[test]
    fn recorded_state_should_read_the_drivers_type_and_name_the_driver_when_it_cannot() {
        let recorded = request_with(serde_json::json!({ "containerId": "3f2a9c", "created": false }));
        let state = recorded.recorded_state::<docker::State>("docker").expect("parses").expect("present");
        assert_eq!(state.container_id, "3f2a9c");

        let unfinished = request_with(Value::Null);
        assert!(unfinished.recorded_state::<docker::State>("docker").expect("no state is not an error").is_none());

        let foreign = request_with(serde_json::json!({ "sandboxId": "i8x2kq0f" }));
        let error = foreign.recorded_state::<docker::State>("docker").expect_err("another shape");
        assert_eq!(error.kind(), ErrorKind::Unsupported);
        let message = error.to_string();
        assert!(message.contains("docker session docker-1a2b") && message.contains("containerId"), "{message}");
    }
}
