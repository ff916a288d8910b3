//! The `local` driver: a private copy of the workspace under sandlink's state directory, runs confined on this
//! machine.
//!
//! Runs are started by the session's agent (`agent.rs`) and confined by the strongest mechanism that works
//! (`isolation.rs`): bubblewrap namespaces, else Landlock with seccomp. Either way a run writes only to the session
//! root, a private home and a private temporary directory; it cannot read the user's home (except toolchain
//! directories the profile lists read-only), reach `/run`'s sockets, see the server's environment, or outlive the
//! session. Without either mechanism the driver refuses to run anything unless the profile says `isolation = "none"`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use serde_json::{Map, Value};

pub mod agent;
mod bubblewrap;
pub mod confine;
pub mod detached;
mod environment;
pub mod files;
pub mod isolation;
mod processes;
mod sockets;
pub mod trash;

use super::{ConnectRequest, ExecSpec, Process, ReattachRequest, Sandbox, SettingKind, SettingSpec};
use crate::error::{Error, IoContext, Result};
use crate::netpolicy::{proxy_environment, NetworkPolicy, Proxy};
use crate::paths::join_inside;
use crate::protocol::{DriverCapabilities, DriverInfo};
use crate::sync::RemoteFiles;
use crate::drivers::detached::{DetachedSpec, DetachedStart, Piece};
use detached::{read_run_folder, signal_detached_run, stop_detached_agents, DETACHED_AGENT_GRACE_SECONDS};
use agent::{AgentClient, AgentConfig, ProxyBridge};
use confine::{NetworkRule, RunPolicy};
use files::LocalFiles;
use isolation::{Available, Mechanism, Requested};
use processes::SessionCgroup;

/// Processes a session may have at once (its pids cgroup as root, RLIMIT_NPROC otherwise) unless the profile
/// says otherwise: plenty for parallel builds, and a fork bomb stops there.
const DEFAULT_MAX_PROCESSES: u64 = 4096;

/// Directories under the user's home that runs may read by default: where toolchains and their caches live.
/// None holds credentials (`~/.cargo/credentials.toml` is outside the listed parts of `~/.cargo`).
const DEFAULT_READ_ONLY_HOME_DIRS: &[&str] = &[
    ".cargo/bin",
    ".cargo/registry",
    ".cargo/git",
    ".rustup",
    ".pyenv",
    ".nvm",
    ".volta",
    ".asdf",
    ".local/share/mise",
    ".sdkman",
    ".deno/bin",
    ".bun/bin",
];

/// Files no run may read even where the rest of their directory is visible.
const HIDDEN_SYSTEM_FILES: &[&str] = &["/etc/shadow", "/etc/gshadow", "/etc/sudoers", "/etc/ssh/ssh_host_rsa_key",
    "/etc/ssh/ssh_host_ecdsa_key", "/etc/ssh/ssh_host_ed25519_key"];

/// Device files a Landlock-confined run may write to.
const WRITABLE_DEVICES: &[&str] =
    &["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty", "/dev/ptmx", "/dev/pts"];

/// The local driver's settings as a profile writes them; `SETTINGS` lists the same fields for users (a test checks
/// that they agree) and `Options::from_settings` turns them into `Options`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Declared {
    isolation: Option<String>,
    read_only_paths: Option<Vec<String>>,
    pass_env: Option<Vec<String>>,
    env: Option<BTreeMap<String, String>>,
    max_processes: Option<i64>,
    unix_sockets: Option<bool>,
    /// The common settings: declared so that the struct accepts them, read from the settings by
    /// `NetworkPolicy::from_settings` and the sync engine.
    #[serde(rename = "network")]
    _network: Option<serde::de::IgnoredAny>,
    #[serde(rename = "sync")]
    _sync: Option<serde::de::IgnoredAny>,
    #[serde(rename = "lifecycle")]
    _lifecycle: Option<serde::de::IgnoredAny>,
}

/// The local driver's own settings (`sync` and `network` are common to all drivers).
const SETTINGS: &[SettingSpec] = &[
    SettingSpec {
        key: "isolation",
        kind: SettingKind::String,
        required: false,
        default: Some("\"auto\""),
        description: "how runs are confined: \"auto\" (default), \"bubblewrap\", \"landlock\" or \"none\"",
    },
    SettingSpec {
        key: "readOnlyPaths",
        kind: SettingKind::StringList,
        required: false,
        default: None,
        description: "directories runs may read (\"~/\" is your home); replaces the default toolchain list",
    },
    SettingSpec {
        key: "passEnv",
        kind: SettingKind::StringList,
        required: false,
        default: Some("[]"),
        description: "names of your environment variables that runs receive",
    },
    SettingSpec {
        key: "env",
        kind: SettingKind::StringMap,
        required: false,
        default: None,
        description: "variables set for every run",
    },
    SettingSpec {
        key: "maxProcesses",
        kind: SettingKind::Integer,
        required: false,
        default: Some("4096"),
        description: "the most processes a session may have at once",
    },
    SettingSpec {
        key: "unixSockets",
        kind: SettingKind::Bool,
        required: false,
        default: Some("false"),
        description: "whether runs may create Unix sockets (off by default: they reach host services by path)",
    },
];

/// The local driver; probes what isolation this machine offers once.
pub struct Driver {
    available: OnceLock<Available>,
}

impl Driver {
    pub fn new() -> Self {
        Driver { available: OnceLock::new() }
    }

    fn available(&self) -> Available {
        *self.available.get_or_init(Available::probe)
    }

    fn start(&self, request: &ConnectRequest) -> Result<LocalSandbox> {
        let options = Options::from_settings(&request.settings)?;
        let available = self.available();
        let mechanism = available.choose(options.requested)?;
        if mechanism == Mechanism::Landlock && options.network != NetworkPolicy::On && available.landlock_abi < 4 {
            return Err(Error::DriverUnavailable {
                driver: "local".into(),
                message: format!(
                    "This profile's network policy needs Landlock ABI 4 or newer for TCP rules, and this kernel has \
                     ABI {}. Install bubblewrap, or use network = \"on\".",
                    available.landlock_abi
                ),
            });
        }
        let session_dir = request.state_dir.join("sessions").join(&request.session_id);
        let sandbox = LocalSandbox::new(session_dir, mechanism, options, request)?;
        Ok(sandbox)
    }
}

impl Default for Driver {
    fn default() -> Self {
        Self::new()
    }
}

/// The local driver's settings, parsed.
#[derive(Debug, Clone)]
struct Options {
    requested: Requested,
    network: NetworkPolicy,
    read_only: Option<Vec<String>>,
    pass_env: Vec<String>,
    env: BTreeMap<String, String>,
    max_processes: u64,
    unix_sockets: bool,
}

impl Options {
    fn from_settings(settings: &Map<String, Value>) -> Result<Self> {
        let declared: Declared = super::settings::parse("local", SETTINGS, settings)?;
        let max_processes = match declared.max_processes.map(u64::try_from) {
            None => DEFAULT_MAX_PROCESSES,
            Some(Ok(max_processes)) => max_processes,
            Some(Err(_)) => {
                return Err(Error::InvalidProfile(
                    "The local setting \"maxProcesses\" must be a whole number, not below 0.".into(),
                ))
            }
        };
        Ok(Options {
            requested: Requested::from_setting(declared.isolation.as_deref())?,
            network: NetworkPolicy::from_settings(settings)?,
            read_only: declared.read_only_paths,
            pass_env: declared.pass_env.unwrap_or_default(),
            env: declared.env.unwrap_or_default(),
            max_processes,
            unix_sockets: declared.unix_sockets.unwrap_or(false),
        })
    }
}

#[async_trait]
impl super::Driver for Driver {
    fn id(&self) -> &'static str {
        "local"
    }

    async fn info(&self) -> DriverInfo {
        let available = tokio::task::block_in_place(|| self.available());
        let (available_here, detail) = match available.best() {
            Some(mechanism) => (true, mechanism.describe().to_string()),
            None => (false, available.choose(Requested::Auto).err().map(|error| error.to_string()).unwrap_or_default()),
        };
        DriverInfo {
            id: self.id().into(),
            // Without a mechanism the driver still works for profiles that say `isolation = "none"`, but it does
            // not offer itself as available: the default must never be unisolated.
            available: available_here,
            detail: Some(detail),
            capabilities: DriverCapabilities {
                exec: true,
                stdin: true,
                cancel: true,
                upload: true,
                download: true,
                preview: true,
                extend: false,
                snapshot: false,
                metrics: false,
                detect_ports: true,
                terminal: true,
            },
            // `drivers::describe` fills these from the driver's declarations.
            settings: Vec::new(),
            credentials: Vec::new(),
        }
    }

    fn settings_schema(&self) -> &'static [SettingSpec] {
        SETTINGS
    }

    fn validate_settings(&self, settings: &Map<String, Value>) -> Result<()> {
        Options::from_settings(settings).map(|_| ())
    }

    async fn connect(&self, request: ConnectRequest) -> Result<Arc<dyn Sandbox>> {
        super::Driver::validate_settings(self, &request.settings)?;
        let mut sandbox = tokio::task::block_in_place(|| self.start(&request))?;
        if request.runs_commands {
            sandbox.start_network().await?;
            sandbox.start_agent()?;
        }
        Ok(Arc::new(sandbox))
    }

    /// The local sandbox is a directory on this machine: nothing leaves it.
    fn sends_workspace_elsewhere(&self, _settings: &Map<String, Value>) -> bool {
        false
    }

    async fn sandbox_exists(&self, request: &ReattachRequest) -> Result<bool> {
        let root = request.connect.state_dir.join("sessions").join(&request.connect.session_id).join("root");
        Ok(tokio::fs::metadata(&root).await.is_ok_and(|metadata| metadata.is_dir()))
    }

    /// The same session directory again: its root still holds what was synced, so a resync moves only changes.
    async fn reattach(&self, request: ReattachRequest) -> Result<Arc<dyn Sandbox>> {
        if !self.sandbox_exists(&request).await? {
            return Err(Error::UnknownSession(request.connect.session_id.clone()));
        }
        super::Driver::validate_settings(self, &request.connect.settings)?;
        let mut sandbox = tokio::task::block_in_place(|| self.start(&request.connect))?;
        if request.connect.runs_commands {
            sandbox.start_network().await?;
            sandbox.start_agent()?;
        }
        Ok(Arc::new(sandbox))
    }

    async fn clean_up_after_crash(&self, state_dir: &Path) {
        // Ended sessions' directories whose removal a kill cut short.
        if trash::has_leftovers(state_dir) {
            if let Err(error) = trash::start_remover(state_dir) {
                tracing::warn!(%error, "could not start removing ended sessions' directories");
            }
        }
    }
}

/// How long an agent may take to listen before its start counts as failed.
const AGENT_START_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A session's agent process, started from a thread that lives exactly as long as it (the parent-death signal
/// fires when the spawning *thread* ends, so a pooled thread would kill the agent at random).
struct Agent {
    client: AgentClient,
    pid: libc::pid_t,
    waiter: std::sync::Mutex<Option<AgentWaiter>>,
}

/// The thread that waits for an agent (or its bubblewrap), and a channel that closes once that wait returned.
struct AgentWaiter {
    thread: std::thread::JoinHandle<()>,
    /// Never sent on: its sender is dropped right after the agent is reaped, which wakes a `recv` at once.
    reaped: std::sync::mpsc::Receiver<()>,
}

/// An agent on its way: its thread is starting it, and it may not listen yet.
struct Launch {
    client: AgentClient,
    /// The agent's stdout, where it says that it listens (`agent::wait_until_listening`).
    ready: std::io::PipeReader,
    /// The agent's pid once its thread started it, or why it could not.
    spawned: std::sync::mpsc::Receiver<std::io::Result<libc::pid_t>>,
    /// The cgroup leaf the agent joins once started, and word from its thread that the agent's own join is done.
    joins_after_start: Option<(PathBuf, std::sync::mpsc::Receiver<std::io::Result<()>>)>,
    waiter: AgentWaiter,
    mechanism: Mechanism,
}

impl Launch {
    /// Waits until the agent listens; one that does not within 5 s is killed and reported.
    async fn wait(self) -> Result<(AgentClient, libc::pid_t, AgentWaiter)> {
        let Launch { client, ready, spawned, joins_after_start, waiter, mechanism } = self;
        let pid = tokio::task::block_in_place(|| spawned.recv())
            .map_err(|_| Error::Internal("The session's agent thread ended before starting it.".into()))?
            .context(|| format!("Could not start the session's agent ({})", mechanism.as_str()))?;
        let listens = agent::wait_until_listening(ready, AGENT_START_LIMIT).await;
        // Whether it listens or not: a sandbox that failed to start is ended through its cgroup too.
        let joined = tokio::task::block_in_place(|| join_cgroup(joins_after_start.as_ref(), pid));
        if let (Err(error), true) = (joined, listens) {
            // Refused outright: a sandbox outside its process limit must not serve.
            if waiter.still_running_after(std::time::Duration::ZERO) {
                // SAFETY: kill(2) on the child we just started, not yet reaped by its thread, so not reused.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let _ = waiter.thread.join();
            return Err(Error::io("Could not put the session's sandbox into its cgroup", error));
        }
        if !listens {
            if mechanism == Mechanism::Bubblewrap {
                isolation::forget_that_bubblewrap_works();
            }
            if waiter.still_running_after(std::time::Duration::ZERO) {
                // SAFETY: kill(2) on the child we just started, not yet reaped by its thread, so not reused.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let _ = waiter.thread.join();
            return Err(Error::DriverUnavailable {
                driver: "local".into(),
                message: format!(
                    "The session's sandbox ({}) did not start. Run `sandlink drivers` to see which isolation works \
                     here; the server log has the details.",
                    mechanism.as_str()
                ),
            });
        }
        Ok((client, pid, waiter))
    }
}

/// Finishes the cgroup join of an agent that joins after it started (`joins`: its leaf, and word from its thread that
/// the first join is done): whatever forked before that first join took effect is moved in too. Nothing to do for an
/// agent that joined before exec, or that has no cgroup.
fn join_cgroup(joins: Option<&(PathBuf, std::sync::mpsc::Receiver<std::io::Result<()>>)>, pid: libc::pid_t) -> std::io::Result<()> {
    let Some((leaf, first_join)) = joins else { return Ok(()) };
    first_join.recv().unwrap_or_else(|_| Err(std::io::Error::other("its thread ended first")))?;
    processes::move_tree_into(leaf, pid)
}

impl AgentWaiter {
    /// Whether the agent is still unreaped (so its pid is still its own) after waiting up to `limit` for it.
    fn still_running_after(&self, limit: std::time::Duration) -> bool {
        matches!(self.reaped.recv_timeout(limit), Err(std::sync::mpsc::RecvTimeoutError::Timeout))
    }
}

impl Agent {
    /// Asks the agent to end every process of the session, then makes sure it is gone. Only the first call
    /// signals: once the waiter has reaped the agent its pid may belong to another process. The end is awaited on
    /// the waiter's channel rather than by polling, so a one-shot `sandlink run` does not sleep at its exit.
    fn stop(&self) {
        let waiter = crate::locks::lock(&self.waiter).take();
        let Some(waiter) = waiter else { return };
        // SAFETY: kill(2) on the agent (or bubblewrap) we started, only while it is unreaped (its waiter has not
        // closed the channel), so the pid has not been reused.
        if waiter.still_running_after(std::time::Duration::ZERO) {
            unsafe { libc::kill(self.pid, libc::SIGTERM) };
        }
        if waiter.still_running_after(std::time::Duration::from_secs(2)) {
            // SAFETY: as above; the channel is still open, so the pid is still the agent's.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
        let _ = waiter.thread.join();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a session's record keeps about a local sandbox (`driverState`). A re-attach finds the session directory
/// from the session id again; the record keeps it for people reading it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub session_dir: PathBuf,
    /// The isolation mechanism's id (`bubblewrap`, `landlock`, `none`).
    pub isolation: String,
}

/// One session's private directory on this machine and the agent that runs its commands.
pub struct LocalSandbox {
    session_dir: PathBuf,
    root: PathBuf,
    home: PathBuf,
    /// The private temporary directory under Landlock (bubblewrap mounts a private `/tmp` instead).
    temporary: PathBuf,
    mechanism: Mechanism,
    options: Options,
    workspace: Option<PathBuf>,
    state_dir: PathBuf,
    cgroup: Option<SessionCgroup>,
    /// The filtering proxy of an allow-list policy; it serves as long as the session.
    proxy: Option<Proxy>,
    /// The session's agent once it listens (`agent`); until then its start is in `launching`.
    agent: tokio::sync::OnceCell<Agent>,
    launching: std::sync::Mutex<Option<Launch>>,
    /// Whether the session runs commands (`ConnectRequest::runs_commands`); without, no agent was started.
    runs_commands: bool,
}

/// The loopback port, inside a bubblewrap sandbox's own network namespace, where the agent bridges to the proxy.
const PROXY_PORT_INSIDE: u16 = 3128;

impl LocalSandbox {
    fn new(session_dir: PathBuf, mechanism: Mechanism, options: Options, request: &ConnectRequest) -> Result<Self> {
        let root = session_dir.join("root");
        let home = session_dir.join("home");
        let temporary = session_dir.join("tmp");
        for dir in [&root, &home, &temporary, &session_dir.join("agent")] {
            std::fs::create_dir_all(dir).context(|| format!("Could not create the session directory {}", dir.display()))?;
        }
        let cgroup = match mechanism {
            Mechanism::Unconfined => None,
            _ => SessionCgroup::create(&request.session_id, options.max_processes),
        };
        Ok(LocalSandbox {
            session_dir,
            root,
            home,
            temporary,
            mechanism,
            options,
            workspace: request.workspace.clone(),
            state_dir: request.state_dir.clone(),
            cgroup,
            proxy: None,
            agent: tokio::sync::OnceCell::new(),
            launching: std::sync::Mutex::new(None),
            runs_commands: request.runs_commands,
        })
    }

    fn agent_dir(&self) -> PathBuf {
        self.session_dir.join("agent")
    }

    /// The user's home and other places a run must not read, as canonical paths that exist.
    fn hidden_dirs(&self) -> Vec<PathBuf> {
        let mut hidden: Vec<PathBuf> = vec!["/home".into(), "/root".into(), "/run".into(), "/var/run".into()];
        hidden.extend(dirs::home_dir());
        hidden.extend(std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from));
        hidden.push(self.state_dir.clone());
        hidden.extend(self.workspace.clone());
        canonical_existing(hidden)
    }

    /// Directories runs may read inside hidden ones: the profile's list, or the default toolchain directories.
    fn read_only_dirs(&self) -> Vec<PathBuf> {
        let home = dirs::home_dir().unwrap_or_else(|| PathBuf::from("/nonexistent"));
        let listed: Vec<PathBuf> = match &self.options.read_only {
            Some(paths) => paths
                .iter()
                .map(|path| match path.strip_prefix("~/") {
                    Some(relative) => home.join(relative),
                    None => PathBuf::from(path),
                })
                .collect(),
            None => DEFAULT_READ_ONLY_HOME_DIRS.iter().map(|relative| home.join(relative)).collect(),
        };
        let mut read_only = canonical_existing(listed);
        // sandlink itself, wherever it lives (a temporary clone, a home directory), for the agent.
        read_only.extend(std::env::current_exe().ok().and_then(|exe| exe.canonicalize().ok()));
        read_only
    }

    fn policy(&self) -> RunPolicy {
        let hidden_files: Vec<PathBuf> = canonical_existing(HIDDEN_SYSTEM_FILES.iter().map(PathBuf::from).collect());
        let (readable, writable, devices, network) = match self.mechanism {
            Mechanism::Landlock => {
                // Without a mount namespace there is no private /tmp: the host's shared temporary directories (other
                // programs' files, sockets) are made unreadable instead, and runs get TMPDIR in the session.
                let mut hidden = self.hidden_dirs();
                hidden.extend(canonical_existing(vec!["/tmp".into(), "/var/tmp".into(), "/dev/shm".into()]));
                hidden.extend(hidden_files);
                let mut readable = readable_except(&hidden);
                readable.extend(self.read_only_dirs());
                let writable = vec![self.root.clone(), self.home.clone(), self.temporary.clone()];
                let devices = WRITABLE_DEVICES.iter().map(PathBuf::from).collect();
                let network = match (&self.options.network, &self.proxy) {
                    (NetworkPolicy::On, _) => NetworkRule::Open,
                    (NetworkPolicy::Allow(_), Some(proxy)) => NetworkRule::ProxyOnly { port: proxy.tcp_address().port() },
                    _ => NetworkRule::Closed,
                };
                (readable, writable, devices, network)
            }
            // bubblewrap's namespaces and mounts do this part; the network namespace stands for `Closed`.
            _ => (Vec::new(), Vec::new(), Vec::new(), NetworkRule::Open),
        };
        RunPolicy {
            mechanism: self.mechanism,
            writable,
            readable,
            devices,
            network,
            unix_sockets: self.options.unix_sockets,
            max_processes: Some(self.options.max_processes),
        }
    }

    fn bubblewrap_view(&self) -> bubblewrap::View {
        let mut writable = vec![self.root.clone(), self.home.clone(), self.agent_dir()];
        writable.retain(|path| path.exists());
        bubblewrap::View {
            hidden_dirs: self.hidden_dirs(),
            hidden_files: canonical_existing(HIDDEN_SYSTEM_FILES.iter().map(PathBuf::from).collect()),
            read_only: self.read_only_dirs(),
            writable,
            private_network: self.options.network != NetworkPolicy::On,
        }
    }

    /// Starts the filtering proxy when the policy is an allow-list: on a Unix socket in the agent's directory for
    /// bubblewrap (whose network namespace has nothing else), on a loopback port that Landlock lets runs reach
    /// otherwise.
    async fn start_network(&mut self) -> Result<()> {
        let NetworkPolicy::Allow(hosts) = &self.options.network else { return Ok(()) };
        let socket = match self.mechanism {
            Mechanism::Bubblewrap => Some(self.agent_dir().join("network.sock")),
            Mechanism::Landlock => None,
            Mechanism::Unconfined => {
                return Err(Error::InvalidProfile(
                    "A network allow-list needs isolation to enforce it; with isolation = \"none\" use network = \"on\"."
                        .into(),
                ))
            }
        };
        self.proxy = Some(Proxy::start(hosts.clone(), socket.as_deref()).await?);
        Ok(())
    }

    /// What runs need to reach the network through the proxy, if there is one.
    fn proxy_variables(&self) -> Vec<(String, String)> {
        match (&self.proxy, self.mechanism) {
            (Some(_), Mechanism::Bubblewrap) => {
                proxy_environment(std::net::SocketAddr::from(([127, 0, 0, 1], PROXY_PORT_INSIDE)))
            }
            (Some(proxy), _) => proxy_environment(proxy.tcp_address()),
            (None, _) => Vec::new(),
        }
    }

    /// Starts the session's agent (inside bubblewrap, or directly under Landlock) without waiting for it: bubblewrap's
    /// mounts and the agent's start (and on cgroup v2 the join of the session's cgroup, where the kernel waits for an
    /// RCU grace period) go on while the engine uploads the workspace. `agent` waits for it.
    fn start_agent(&mut self) -> Result<()> {
        let launch = self.launch_agent(&self.agent_dir(), None)?;
        self.launching = std::sync::Mutex::new(Some(launch));
        Ok(())
    }

    /// The session's agent, once it listens; the first call waits for the start `start_agent` began, and a start that
    /// failed is reported to that call and every later one.
    async fn agent(&self) -> Result<&Agent> {
        self.agent
            .get_or_try_init(|| async {
                let launch = crate::locks::lock(&self.launching).take();
                let Some(launch) = launch else {
                    return Err(Error::Internal("The session's agent is not running; reconnect the session.".into()));
                };
                let (client, pid, waiter) = launch.wait().await?;
                Ok(Agent { client, pid, waiter: std::sync::Mutex::new(Some(waiter)) })
            })
            .await
    }

    /// Starts an agent whose socket and configuration are in `agent_dir`, answering before it listens
    /// (`Launch::wait`). With `detached` (a detached run's folder and its time limit) the agent serves that one run,
    /// outside the server's session and its death signals, with the folder writable, and ends with the run.
    fn launch_agent(&self, agent_dir: &Path, detached: Option<(&Path, std::time::Duration)>) -> Result<Launch> {
        let socket = agent_dir.join("agent.sock");
        let config_path = agent_dir.join("config.json");
        let mut policy = self.policy();
        if let (Some((folder, _)), Mechanism::Landlock) = (detached, self.mechanism) {
            policy.writable.push(folder.to_path_buf());
        }
        // The session's agent joins the session's leaf; a detached run's agent a leaf of its own beside it, which
        // outlives the session's agent (and the server) yet counts against the same process limit.
        let cgroup_leaf = match (&self.cgroup, detached) {
            (Some(cgroup), None) => Some(cgroup.session_leaf()),
            (Some(cgroup), Some((folder, _))) => {
                let run_id = folder.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
                tokio::task::block_in_place(|| cgroup.detached_leaf(&run_id))
            }
            (None, _) => None,
        };
        let config = AgentConfig {
            detached_lifetime_seconds: detached.map(|(_, limit)| limit.as_secs() + DETACHED_AGENT_GRACE_SECONDS),
            policy,
            cgroup: cgroup_leaf.clone(),
            proxy_bridge: match (&self.proxy, self.mechanism) {
                (Some(proxy), Mechanism::Bubblewrap) => proxy
                    .unix_socket()
                    .map(|socket| ProxyBridge { port: PROXY_PORT_INSIDE, unix_socket: socket.to_path_buf() }),
                _ => None,
            },
        };
        let encoded = serde_json::to_vec(&config).map_err(|error| Error::Internal(format!("Could not encode the agent's configuration: {error}")))?;
        std::fs::write(&config_path, encoded).context(|| format!("Could not write {}", config_path.display()))?;
        let executable = std::env::current_exe().context(|| "Could not find sandlink's own executable".into())?;
        if executable.as_os_str().as_encoded_bytes().ends_with(b" (deleted)") {
            // Updated or removed while this server ran: its program file is gone (a new one may stand at its path,
            // which this server must not start as its agent), so no sandbox can start until the server restarts.
            return Err(Error::DriverUnavailable {
                driver: "local".into(),
                message: "sandlink was updated or removed while this language server was running, so it cannot start a \
                          sandbox from its own program any more. Restart the language server (VS Code: Developer: \
                          Reload Window; Neovim: :LspRestart) and connect again."
                    .into(),
            });
        }
        let mut command = match self.mechanism {
            Mechanism::Bubblewrap => {
                let mut view = self.bubblewrap_view();
                let mut arguments = bubblewrap::arguments(&view, &self.root);
                if let Some((folder, _)) = detached {
                    // A detached run's sandbox lives on when the server dies, and writes to its run folder.
                    view.writable.push(folder.to_path_buf());
                    arguments = bubblewrap::arguments(&view, &self.root);
                    arguments.retain(|argument| argument != "--die-with-parent");
                }
                let mut command = std::process::Command::new(isolation::bubblewrap_on_path().unwrap_or_else(|| "bwrap".into()));
                command.args(arguments).arg(&executable);
                command
            }
            _ => {
                let mut command = std::process::Command::new(&executable);
                command.current_dir(&self.root);
                command
            }
        };
        command
            .arg("sandbox-agent")
            .arg("--socket")
            .arg(&socket)
            .arg("--config")
            .arg(&config_path)
            // The agent needs nothing of the server's environment, and a run could read the agent's.
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()))
            .stdin(std::process::Stdio::null());
        // The agent says on its stdout when it listens (`agent::serve`); it ends without saying so if it cannot start.
        let (ready_reader, ready_writer) =
            std::io::pipe().context(|| "Could not create a pipe for the session's agent".into())?;
        command.stdout(ready_writer);
        // The agent joins its leaf before exec wherever that is cheap, so everything it (or bubblewrap) ever starts is a
        // member: on cgroup v1 the forked child, still single-threaded, writes itself into the leaf's `tasks`, which
        // the kernel does without the RCU grace period a `cgroup.procs` write waits for (0.3 ms against 5–11 ms here).
        // Elsewhere (cgroup v2) only a detached run's agent, which starts its run at once, joins before exec. The
        // session's agent joins after it started, while bubblewrap mounts and the agent starts, and what forked
        // meanwhile is moved in before the agent is used (`Launch::wait`); until then only bubblewrap and the agent
        // run, no command.
        let own_thread_join = cgroup_leaf.as_deref().and_then(processes::own_thread_join_file);
        let join_after_start = detached.is_none() && own_thread_join.is_none();
        let join_file = own_thread_join.or_else(|| cgroup_leaf.as_ref().map(|leaf| leaf.join("cgroup.procs")));
        let joins_cgroup = match &join_file {
            Some(path) => Some(
                std::fs::OpenOptions::new().write(true).open(path).context(|| format!("Could not open {}", path.display()))?,
            ),
            None => None,
        };
        let (joins_before_exec, joins_after_start) =
            if join_after_start { (None, joins_cgroup) } else { (joins_cgroup, None) };
        let dies_with_server = self.mechanism != Mechanism::Bubblewrap && detached.is_none();
        let leaves_server_session = detached.is_some();
        // SAFETY: the closure makes only system calls on descriptors opened before the fork.
        unsafe {
            use std::os::fd::AsRawFd;
            use std::os::unix::process::CommandExt;
            let cgroup_fd = joins_before_exec.as_ref().map(|file| file.as_raw_fd());
            command.pre_exec(move || {
                if let Some(fd) = cgroup_fd {
                    // Joining before exec means everything the agent (or bubblewrap) ever starts is a member.
                    if libc::write(fd, b"0\n".as_ptr().cast(), 2) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if dies_with_server {
                    // The agent cleans up on SIGTERM; bubblewrap sets its own parent-death signal.
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0);
                }
                if leaves_server_session {
                    // No signal meant for the server's terminal or process group reaches a detached run.
                    libc::setsid();
                }
                // Only stdin, stdout and stderr cross into the sandbox (the cgroup's descriptor was used above).
                confine::close_inherited_on_exec();
                Ok(())
            });
        }
        let (started, spawned) = std::sync::mpsc::channel();
        let (joined_sender, joined) = std::sync::mpsc::channel();
        let (reaped_sender, reaped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("sandlink-agent".into())
            .spawn(move || {
                let spawned = command.spawn();
                // The pipe's write end must live only in the agent (and its bubblewrap): the end-of-file that tells
                // the server the agent is gone comes only once every copy closed.
                drop(command);
                match spawned {
                    Ok(mut child) => {
                        let pid = child.id() as libc::pid_t;
                        let _ = started.send(Ok(pid));
                        drop(joins_before_exec);
                        if let Some(mut procs) = joins_after_start {
                            let _ = joined_sender.send(std::io::Write::write_all(&mut procs, format!("{pid}\n").as_bytes()));
                        }
                        let _ = child.wait();
                        drop(reaped_sender);
                    }
                    Err(error) => {
                        let _ = started.send(Err(error));
                    }
                }
            })
            .context(|| "Could not start a thread for the session's agent".into())?;
        Ok(Launch {
            client: AgentClient::new(socket),
            ready: ready_reader,
            spawned,
            joins_after_start: match (join_after_start, cgroup_leaf) {
                (true, Some(leaf)) => Some((leaf, joined)),
                _ => None,
            },
            waiter: AgentWaiter { thread, reaped },
            mechanism: self.mechanism,
        })
    }

    fn stop_agent(&self) {
        if let Some(agent) = self.agent.get() {
            agent.stop();
        }
        let launch = crate::locks::lock(&self.launching).take();
        if let Some(launch) = launch {
            // Never waited for: stopped once its thread has started it (or failed to), so its pid is known, once
            // bubblewrap's set-up is over (the agent listens, or ended; bounded), and once bubblewrap's processes are
            // all in the session's cgroup. A process bubblewrap forked in the middle of its set-up may not have set
            // its parent-death signal yet, so the signal below would miss it, and without a cgroup nothing else
            // would catch it.
            if let Ok(Ok(pid)) = launch.spawned.recv() {
                agent::wait_until_listening_blocking(launch.ready, AGENT_START_LIMIT);
                if let Err(error) = join_cgroup(launch.joins_after_start.as_ref(), pid) {
                    tracing::debug!(%error, "a sandbox being stopped did not join its cgroup whole");
                }
                Agent { client: launch.client, pid, waiter: std::sync::Mutex::new(Some(launch.waiter)) }.stop();
            }
        }
        if let Some(cgroup) = &self.cgroup {
            cgroup.kill_session();
        }
    }
}

impl Drop for LocalSandbox {
    fn drop(&mut self) {
        self.stop_agent();
    }
}

/// The paths that exist, canonicalised, without repeats.
fn canonical_existing(paths: Vec<PathBuf>) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = Vec::new();
    for path in paths {
        if let Ok(canonical) = path.canonicalize() {
            if !found.contains(&canonical) {
                found.push(canonical);
            }
        }
    }
    found
}

/// What to allow reading so that everything is readable but `hidden` and what lies beneath it: Landlock only
/// grants, so the tree is walked from `/`, descending only into directories that contain something hidden.
fn readable_except(hidden: &[PathBuf]) -> Vec<PathBuf> {
    let mut readable = Vec::new();
    collect_readable(Path::new("/"), hidden, &mut readable);
    readable
}

fn collect_readable(dir: &Path, hidden: &[PathBuf], readable: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        // A rule follows links to their target, so judge the target: a link into a hidden place grants nothing.
        let Ok(target) = path.canonicalize() else { continue };
        if hidden.iter().any(|hidden| target.starts_with(hidden)) {
            continue;
        }
        if hidden.iter().any(|hidden| hidden.starts_with(&target)) {
            if target == path {
                collect_readable(&path, hidden, readable);
            }
            continue;
        }
        if !readable.contains(&target) {
            readable.push(target);
        }
    }
}

#[async_trait]
impl Sandbox for LocalSandbox {
    fn driver_id(&self) -> &'static str {
        "local"
    }

    fn remote_root(&self) -> String {
        self.root.to_string_lossy().into_owned()
    }

    fn driver_state(&self) -> serde_json::Value {
        let state = State { session_dir: self.session_dir.clone(), isolation: self.mechanism.as_str().to_string() };
        super::state_value("local", &state)
    }

    fn detail(&self) -> Option<String> {
        Some(self.mechanism.describe().to_string())
    }

    fn isolation(&self) -> Option<String> {
        Some(self.mechanism.as_str().to_string())
    }

    /// A command here is a local process start, so ports are looked for as often as an editor would.
    fn port_watch_interval(&self) -> Option<std::time::Duration> {
        Some(std::time::Duration::from_secs(2))
    }

    /// Read from `/proc` here: a probe command in the sandbox (a shell, `ls` and `cat`) started beside every run
    /// and took CPU from it, and inside the sandbox it cannot see the agent's descriptors to tell whose sockets are
    /// whose.
    async fn sockets_seen_from_here(&self) -> Option<crate::drivers::SocketsSeen> {
        let agent = self.agent.get()?;
        let in_bubblewrap = self.mechanism == Mechanism::Bubblewrap;
        tokio::task::block_in_place(|| {
            // Not once the agent was reaped: its pid may be another process's then. Held, the waiter also keeps a
            // disconnect from stopping the agent while /proc is read.
            let waiter = crate::locks::lock(&agent.waiter);
            if !waiter.as_ref().is_some_and(|waiter| waiter.still_running_after(std::time::Duration::ZERO)) {
                return None;
            }
            sockets::seen(agent.pid, in_bubblewrap)
        })
    }

    fn supports_terminal(&self) -> bool {
        true
    }

    async fn ready(&self) -> Result<()> {
        if !self.runs_commands {
            // Files only: nothing was started that could fail to start.
            return Ok(());
        }
        self.agent().await.map(|_| ())
    }

    async fn exec(&self, spec: ExecSpec) -> Result<Process> {
        let (cwd, env) = self.run_setting(&spec)?;
        let agent = self.agent().await?;
        let (program, arguments) = match &spec.args {
            Some(args) => (spec.command.clone(), args.clone()),
            // The shell `system(3)` uses, named whole: a search of `PATH` tried each directory before it in turn, a
            // failed `execve` each, on the way to every command line's start.
            None => ("/bin/sh".to_string(), vec!["-c".to_string(), spec.command.clone()]),
        };
        agent.client.spawn(program, arguments, cwd, env, spec.stdin, spec.pty).await
    }

    async fn start_detached(&self, spec: DetachedSpec) -> Result<DetachedStart> {
        self.start_detached_run(spec).await
    }

    async fn read_detached(&self, start: &DetachedStart, stdout_from: u64, stderr_from: u64) -> Result<Option<Piece>> {
        let folder = start.host_folder.clone().unwrap_or_else(|| PathBuf::from(&start.folder));
        tokio::task::spawn_blocking(move || read_run_folder(&folder, stdout_from, stderr_from))
            .await
            .map_err(|error| Error::Internal(format!("Reading a detached run failed: {error}")))?
    }

    async fn signal_detached(&self, start: &DetachedStart, signal: crate::drivers::Signal) -> Result<()> {
        let folder = start.host_folder.clone().unwrap_or_else(|| PathBuf::from(&start.folder));
        tokio::task::spawn_blocking(move || signal_detached_run(&folder, signal))
            .await
            .map_err(|error| Error::Internal(format!("Signalling a detached run failed: {error}")))
    }

    fn files(&self) -> Option<Arc<dyn RemoteFiles>> {
        Some(Arc::new(LocalFiles { root: self.root.clone(), staging: self.session_dir.join("staging") }))
    }

    async fn preview(&self, port: u16) -> Result<String> {
        Ok(format!("http://127.0.0.1:{port}"))
    }

    async fn disconnect(&self, keep: bool) -> Result<()> {
        tokio::task::block_in_place(|| self.stop_agent());
        if keep {
            return Ok(());
        }
        // Removing the session ends its detached runs too; their files go with it.
        stop_detached_agents(&self.session_dir.join("runs"));
        if let Some(cgroup) = &self.cgroup {
            // Whatever a detached run left that its agent's clean-up missed.
            tokio::task::block_in_place(|| cgroup.kill_all_and_remove());
        }
        let session_dir = self.session_dir.clone();
        let state_dir = self.state_dir.clone();
        tokio::task::spawn_blocking(move || match trash::discard(&session_dir, &state_dir) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(Error::io(
                format!("Could not remove the session directory {}", session_dir.display()),
                error,
            )),
            _ => Ok(()),
        })
        .await
        .map_err(|error| Error::Internal(format!("Removing the session directory failed: {error}")))?
    }
}

impl LocalSandbox {
    /// Where a run starts and the environment it gets, as every run of the session.
    fn run_setting(&self, spec: &ExecSpec) -> Result<(PathBuf, BTreeMap<String, String>)> {
        let cwd = match &spec.cwd {
            Some(cwd) => join_inside(&self.root, cwd)?,
            None => self.root.clone(),
        };
        if !cwd.is_dir() {
            return Err(Error::InvalidParams(format!(
                "The working directory \"{}\" does not exist in the sandbox.",
                spec.cwd.as_deref().unwrap_or(".")
            )));
        }
        let temporary = match self.mechanism {
            Mechanism::Bubblewrap => PathBuf::from("/tmp"),
            _ => self.temporary.clone(),
        };
        let mut run_env: BTreeMap<String, String> = self.proxy_variables().into_iter().collect();
        run_env.extend(spec.env.clone());
        run_env.insert("SANDLINK_REMOTE_ROOT".into(), self.root.to_string_lossy().into_owned());
        let env = environment::for_run(
            std::env::vars(),
            &self.options.pass_env,
            &self.home,
            &temporary,
            &self.options.env,
            &run_env,
        );
        let env = self.with_readable_path(env);
        if spec.args.is_some() && !program_exists(&spec.command, &cwd, env.get("PATH")) {
            // The agent would only report this after starting; say it clearly up front instead.
            return Err(Error::InvalidParams(format!(
                "The program \"{}\" was not found in the sandbox's PATH. Check its name, or run it through the shell \
                 by leaving out `args`.",
                spec.command
            )));
        }
        Ok((cwd, env))
    }
}

impl LocalSandbox {
    /// The environment with `PATH` cut to the directories a run can read. Under bubblewrap a hidden directory is
    /// empty and the shell looks further along `PATH`; under Landlock it is still there but unreadable, so a toolchain
    /// found first in the user's home (a version manager's directory outside the readable list, say) would start and
    /// then fail to read its own files. Dropping it lets the next entry (the system's copy) answer instead.
    fn with_readable_path(&self, mut env: BTreeMap<String, String>) -> BTreeMap<String, String> {
        if self.mechanism == Mechanism::Unconfined {
            return env;
        }
        let Some(path) = env.get("PATH") else { return env };
        let own = canonical_existing(vec![self.root.clone(), self.home.clone(), self.temporary.clone()]);
        let visible = visible_path_entries(path, &self.hidden_dirs(), &self.read_only_dirs(), &own);
        env.insert("PATH".into(), visible);
        env
    }
}

/// The entries of a `PATH` value a confined run can read: those outside every hidden directory, or inside one of
/// the readable exceptions or the session's own directories. Relative and missing entries are kept as they are.
fn visible_path_entries(path: &str, hidden: &[PathBuf], read_only: &[PathBuf], own: &[PathBuf]) -> String {
    let kept: Vec<&str> = path
        .split(':')
        .filter(|entry| {
            if !Path::new(entry).is_absolute() {
                return true;
            }
            let Ok(canonical) = Path::new(entry).canonicalize() else { return true };
            let under = |dirs: &[PathBuf]| dirs.iter().any(|dir| canonical.starts_with(dir));
            !under(hidden) || under(read_only) || under(own)
        })
        .collect();
    kept.join(":")
}

fn program_exists(program: &str, cwd: &Path, path_override: Option<&String>) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let is_executable = |candidate: &Path| {
        std::fs::metadata(candidate).is_ok_and(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        return is_executable(&cwd.join(program));
    }
    let search_path = path_override
        .cloned()
        .or_else(|| std::env::var("PATH").ok())
        .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    search_path.split(':').filter(|dir| !dir.is_empty()).any(|dir| is_executable(&Path::new(dir).join(program)))
}


#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn options(value: Value) -> Result<Options> {
        Options::from_settings(value.as_object().expect("test settings are objects"))
    }

    #[test]
    fn path_should_lose_only_the_entries_a_confined_run_cannot_read() {
        let base = tempfile::tempdir().expect("temporary directory");
        let make = |relative: &str| {
            let dir = base.path().join(relative);
            std::fs::create_dir_all(&dir).expect("directory");
            dir.canonicalize().expect("canonical").to_string_lossy().into_owned()
        };
        let (system, versions, shims, session_bin) =
            (make("usr/bin"), make("home/.pyenv/versions/3/bin"), make("home/.pyenv/shims"), make("state/s1/root/bin"));
        let hidden = [base.path().join("home").canonicalize().unwrap(), base.path().join("state").canonicalize().unwrap()];
        let read_only = [PathBuf::from(&shims)];
        let own = [PathBuf::from(&session_bin)];
        let path = format!("{versions}:{shims}:node_modules/.bin:{session_bin}:/does/not/exist:{system}");
        assert_eq!(
            visible_path_entries(&path, &hidden, &read_only, &own),
            format!("{shims}:node_modules/.bin:{session_bin}:/does/not/exist:{system}")
        );
    }

    #[test]
    fn state_should_read_the_records_of_earlier_builds_and_write_the_same_keys() {
        let recorded = json!({ "sessionDir": "/state/sessions/local-1a2b", "isolation": "landlock" });
        let state: State = serde_json::from_value(recorded.clone()).expect("today's record format");
        assert_eq!(
            state,
            State {
                session_dir: PathBuf::from("/state/sessions/local-1a2b"),
                isolation: "landlock".into()
            }
        );
        assert_eq!(super::super::state_value("local", &state), recorded);
    }

    #[test]
    fn the_declared_struct_and_the_schema_should_name_the_same_settings() {
        super::super::settings::assert_declaration_matches::<Declared>("local", SETTINGS);
    }

    #[test]
    fn an_unknown_key_should_be_an_invalid_profile_listing_the_known_keys() {
        let error = options(json!({"isolaton": "none"})).expect_err("unknown key");
        assert_eq!(error.kind(), crate::protocol::ErrorKind::InvalidProfile);
        let message = error.to_string();
        assert!(message.contains("\"isolaton\""), "{message}");
        for known in ["isolation", "readOnlyPaths", "passEnv", "env", "maxProcesses", "unixSockets", "sync", "network"] {
            assert!(message.contains(known), "the known key {known} is listed: {message}");
        }
    }

    #[test]
    fn a_wrong_type_should_say_what_the_setting_must_be() {
        let error = options(json!({"passEnv": "HOME"})).expect_err("not a list");
        assert_eq!(error.kind(), crate::protocol::ErrorKind::InvalidProfile);
        assert_eq!(error.to_string(), "The local setting \"passEnv\" must be a list of strings, but it is a string.");
        let error = options(json!({"maxProcesses": -1})).expect_err("negative");
        assert!(error.to_string().contains("\"maxProcesses\""), "{error}");
    }

    #[test]
    fn the_schema_defaults_should_be_what_the_options_use() {
        let parsed = options(json!({})).expect("valid");
        let schema = super::super::settings::describe(SETTINGS, &[]);
        let default = |name: &str| schema.iter().find(|setting| setting.name == name).and_then(|setting| setting.default.clone());
        assert_eq!(default("maxProcesses"), Some(json!(parsed.max_processes)));
        assert_eq!(default("unixSockets"), Some(json!(parsed.unix_sockets)));
        assert_eq!(default("passEnv"), Some(json!(parsed.pass_env)));
        assert_eq!(parsed.requested, Requested::from_setting(Some("auto")).expect("auto"));
    }

    #[test]
    fn an_agent_waiter_should_say_running_until_its_thread_drops_the_sender_and_then_answer_at_once() {
        let (reaped_sender, reaped) = std::sync::mpsc::channel::<()>();
        let (reap, reap_now) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let _ = reap_now.recv();
            drop(reaped_sender);
        });
        let waiter = AgentWaiter { thread, reaped };
        assert!(waiter.still_running_after(std::time::Duration::ZERO), "the wait has not returned yet");
        reap.send(()).expect("the thread waits");
        let asked = std::time::Instant::now();
        assert!(!waiter.still_running_after(std::time::Duration::from_secs(60)), "the sender is gone");
        assert!(asked.elapsed() < std::time::Duration::from_secs(30), "answered when the sender went, not at the limit");
        waiter.thread.join().expect("the thread ends");
    }
}
