//! The `docker` driver: each session is a container on a Docker (or podman) daemon, reached through bollard.
//!
//! Containers sandlink creates run an init, drop every capability but a small set, cannot gain privileges, have a
//! pids limit, and carry labels naming their session, the state directory and the server process that owns them.
//! They are removed on disconnect unless kept. When a server starts it removes the containers of servers that are
//! no longer running, except those of kept sessions.
//!
//! The orphan rule: a container labelled `sandlink.driver=docker` is an orphan when its `sandlink.server` label
//! names this host and a process (pid plus start time, same boot) that no longer runs, and there is no file
//! `<sandlink.state-dir>/sessions/<sandlink.session>/kept`. Containers of other hosts are never touched.

mod choices;
mod client;
mod network;
mod sandbox;
mod settings;
mod spare;
mod transport;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use self::client::{Client, ContainerSpec};
use self::sandbox::DockerSandbox;
pub use self::settings::Settings;
use self::settings::Target;
use self::transport::DockerTransport;
use super::shell::{self, agent::Agent, files::ShellFiles, scripts};
use super::{ConnectRequest, Sandbox};
use crate::error::{Error, Result};
use crate::netpolicy::{AllowedHost, NetworkPolicy};
use crate::protocol::{DriverCapabilities, DriverInfo};

/// The file that marks a kept session, under `<state_dir>/sessions/<id>/`.
pub const KEPT_MARKER: &str = "kept";

const LABEL_DRIVER: &str = "sandlink.driver";
const LABEL_SESSION: &str = "sandlink.session";
const LABEL_STATE_DIR: &str = "sandlink.state-dir";
const LABEL_SERVER: &str = "sandlink.server";

/// What a session's record keeps for a re-attach after a restart (`driverState`): the container, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub container_id: String,
    /// Whether sandlink created the container; a re-attach decides it from the settings again.
    pub created: bool,
}

/// The docker driver; holds one client once the daemon has been reached.
pub struct Driver {
    client: tokio::sync::Mutex<Option<Client>>,
}

impl Driver {
    pub fn new() -> Self {
        Driver { client: tokio::sync::Mutex::new(None) }
    }

    /// A client for the daemon, made once and reused (its connection pool survives daemon restarts). Callers that
    /// come while it is being made wait for it: at a server's start the driver probe and the clean-up of orphans
    /// both ask, and each connect asks the daemon for `/version`, for which it starts `runc` and `docker-init`.
    async fn client(&self) -> Result<Client> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref() {
            return Ok(client.clone());
        }
        let client = Client::connect().await?;
        *slot = Some(client.clone());
        Ok(client)
    }

    fn capabilities(available: bool) -> DriverCapabilities {
        DriverCapabilities {
            exec: available,
            stdin: available,
            cancel: available,
            upload: available,
            download: available,
            preview: available,
            extend: false,
            snapshot: false,
            metrics: available,
            detect_ports: available,
            terminal: available,
        }
    }
}

impl Default for Driver {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl super::Driver for Driver {
    fn id(&self) -> &'static str {
        "docker"
    }

    async fn info(&self) -> DriverInfo {
        let probe = async {
            let client = self.client().await?;
            let daemon = client.describe_daemon().await?;
            let allow_lists = match network::why_not_enforceable(client.host(), "allow-list") {
                None => "network allow-lists enforced through sandlink's proxy",
                Some(_) => "network allow-lists unsupported here (a remote daemon, or sandlink without CAP_SYS_ADMIN)",
            };
            Ok(format!("{daemon}; {allow_lists}"))
        };
        let outcome = match tokio::time::timeout(Duration::from_secs(3), probe).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Error::DriverUnavailable {
                driver: "docker".into(),
                message: "Docker did not answer within 3 s; check that the daemon is running and healthy.".into(),
            }),
        };
        match outcome {
            Ok(detail) => DriverInfo {
                id: "docker".into(),
                available: true,
                detail: Some(detail),
                capabilities: Self::capabilities(true),
                settings: Vec::new(),
                credentials: Vec::new(),
            },
            Err(error) => DriverInfo {
                id: "docker".into(),
                available: false,
                detail: Some(error.to_string()),
                capabilities: Self::capabilities(false),
                settings: Vec::new(),
                credentials: Vec::new(),
            },
        }
    }

    async fn connect(&self, request: ConnectRequest) -> Result<Arc<dyn Sandbox>> {
        self.open(request, None).await
    }

    fn settings_schema(&self) -> &'static [super::SettingSpec] {
        settings::SETTINGS
    }

    fn validate_settings(&self, settings: &serde_json::Map<String, serde_json::Value>) -> Result<()> {
        Settings::parse(settings).map(|_| ())
    }

    fn asked_at_connect(&self) -> &'static [&'static str] {
        // With neither an image nor a container there is nothing to start; the image is what most people give.
        &["image"]
    }

    async fn setting_choices(&self, setting: &str, workspace: Option<&Path>) -> Result<Vec<crate::protocol::SettingChoice>> {
        // Without a daemon the workspace's dev container image is still worth offering.
        let client = self.client().await.ok();
        choices::for_setting(client.as_ref(), setting, workspace).await
    }

    fn sends_workspace_elsewhere(&self, _settings: &serde_json::Map<String, serde_json::Value>) -> bool {
        // Only a daemon on another machine (tcp://, ssh://) receives the workspace from elsewhere.
        std::env::var("DOCKER_HOST").is_ok_and(|host| !host.is_empty() && !host.starts_with("unix://"))
    }

    async fn sandbox_exists(&self, request: &super::ReattachRequest) -> Result<bool> {
        let Some(state) = request.recorded_state::<State>("docker")? else {
            return Ok(false);
        };
        Ok(self.client().await?.inspect(&state.container_id).await?.is_some())
    }

    async fn reattach(&self, request: super::ReattachRequest) -> Result<Arc<dyn Sandbox>> {
        let state = request
            .recorded_state::<State>("docker")?
            .ok_or_else(|| Error::UnknownSession(request.connect.session_id.clone()))?;
        self.open(request.connect, Some(state.container_id)).await
    }

    async fn clean_up_after_crash(&self, state_dir: &Path) {
        self.remove_orphans(state_dir).await;
    }
}

impl Driver {
    /// Creates (or, for a re-attach, finds again) the session's container and prepares it.
    async fn open(&self, request: ConnectRequest, reattach_to: Option<String>) -> Result<Arc<dyn Sandbox>> {
        let settings = Settings::parse(&request.settings)?;
        // An existing container keeps its own network; `Settings::parse` refuses a policy for one.
        let network_mode = match &settings.target {
            Target::Image(_) => settings::network_mode(&settings.network),
            Target::Existing(_) => "",
        };
        let client = self.client().await?;
        let allow_list = match &settings.network {
            NetworkPolicy::Allow(hosts) => {
                // Refused before anything is created when this server cannot enforce the list.
                if let Some(why) = network::why_not_enforceable(client.host(), &settings.network.describe()) {
                    return Err(Error::Unsupported(why));
                }
                Some(hosts.clone())
            }
            _ => None,
        };
        let session_dir = request.state_dir.join("sessions").join(&request.session_id);
        let kept_container = match &reattach_to {
            Some(container) => {
                let facts = client
                    .inspect(container)
                    .await?
                    .ok_or_else(|| Error::UnknownSession(request.session_id.clone()))?;
                if !facts.running {
                    return Err(Error::InvalidParams(format!(
                        "The session's container {} is {}; start it with `docker start {}` and connect again.",
                        facts.name, facts.status, facts.name
                    )));
                }
                // A kept container cannot change its network mode; going on would quietly keep the old network.
                if matches!(settings.target, Target::Image(_))
                    && !settings::network_mode_matches(&settings.network, &facts.network_mode)
                {
                    return Err(Error::InvalidParams(format!(
                        "The session's container {} has the network \"{}\", but the session's settings ask for {}; \
                         disconnect it without keeping it (or remove it with `docker rm -f {}`) and connect again.",
                        facts.name,
                        facts.network_mode,
                        settings.network.describe(),
                        facts.name
                    )));
                }
                Some((facts.id, facts.name, matches!(settings.target, Target::Image(_))))
            }
            None => None,
        };
        let reattaching = kept_container.is_some();
        let (container_id, container_name, created) = if let Some(kept) = kept_container { kept } else { match &settings.target {
            Target::Image(image) => {
                if !client.image_exists(image).await? {
                    return Err(Error::InvalidParams(format!(
                        "The image \"{image}\" is not on the Docker daemon at {}. Pull it with `docker pull {image}` \
                         or build it with `docker build -t {image} .`, then connect again.",
                        client.host()
                    )));
                }
                let name = format!("sandlink-{}", request.session_id);
                let labels = HashMap::from([
                    (LABEL_DRIVER.to_string(), "docker".to_string()),
                    (LABEL_SESSION.to_string(), request.session_id.clone()),
                    (LABEL_STATE_DIR.to_string(), request.state_dir.to_string_lossy().into_owned()),
                    (LABEL_SERVER.to_string(), ServerIdentity::current().label()),
                ]);
                let env = settings.env.iter().map(|(name, value)| format!("{name}={value}")).collect();
                let spec = ContainerSpec {
                    name: name.clone(),
                    image: image.clone(),
                    // Keeps the container alive without depending on the image's own command.
                    entrypoint: vec!["/bin/sh".into(), "-c".into(), "exec sleep 2147483647".into()],
                    env,
                    // The container itself runs as root so sandlink's helpers keep their capabilities; runs use
                    // `user` per exec.
                    user: None,
                    labels,
                    nano_cpus: settings.nano_cpus,
                    memory_bytes: settings.memory_bytes,
                    pids_limit: settings.pids_limit,
                    network_mode: network_mode.into(),
                    ports: settings.ports.clone(),
                };
                let id = client.create_and_start(spec).await?;
                (id, name, true)
            }
            Target::Existing(reference) => {
                let facts = client.inspect(reference).await?.ok_or_else(|| {
                    Error::InvalidParams(format!(
                        "There is no container \"{reference}\" on the Docker daemon at {}. List them with `docker ps -a`.",
                        client.host()
                    ))
                })?;
                if !facts.running {
                    return Err(Error::InvalidParams(format!(
                        "The container \"{reference}\" is {}; start it with `docker start {reference}` first.",
                        facts.status
                    )));
                }
                (facts.id, facts.name, false)
            }
        } };
        let transport: Arc<dyn shell::Transport> =
            Arc::new(DockerTransport { client: client.clone(), container: container_id.clone(), copy_owner: created });
        let prepared = prepare(transport.as_ref(), &settings).await;
        if let Err(error) = prepared {
            if created {
                let _ = client.remove(&container_id).await;
            }
            return Err(error);
        }
        let gate = match allow_list {
            Some(hosts) => match open_gate(&client, &container_id, hosts, &settings.network).await {
                Ok(gate) => Some(gate),
                Err(error) => {
                    // A kept container stays for the user to inspect or remove; the error says how.
                    if created && !reattaching {
                        let _ = client.remove(&container_id).await;
                    }
                    return Err(error);
                }
            },
            None => None,
        };
        if let Some(gate) = &gate {
            tracing::info!(
                container = %container_name,
                port = gate.port(),
                "{}, through sandlink's proxy on the container's loopback",
                settings.network.describe()
            );
        }
        let (failure, _) = watch::channel(None);
        let files = Arc::new(ShellFiles {
            transport: transport.clone(),
            agent: Arc::new(Agent::new(transport.clone())),
            root: settings.remote_root.clone(),
            owner: settings.user.clone(),
        });
        let signaller = Arc::new(Agent::new(transport));
        let session_env = if created { BTreeMap::new() } else { settings.env.clone() };
        let spares = spare::Spares::new(
            client.clone(),
            container_id.clone(),
            settings.user.clone(),
            sandbox::session_env(&settings.remote_root, gate.as_ref(), &session_env),
            settings.remote_root.clone(),
        );
        let sandbox = Arc::new(DockerSandbox {
            client: client.clone(),
            container_id,
            container_name,
            remote_root: settings.remote_root.clone(),
            user: settings.user.clone(),
            env: session_env,
            created,
            keep_setting: settings.keep,
            signaller,
            files,
            session_dir,
            failure,
            closing: Arc::new(AtomicBool::new(false)),
            network: settings.network.clone(),
            gate: Mutex::new(gate),
            previous_sample: Mutex::new(None),
            watcher: Mutex::new(None),
            spares,
        });
        sandbox.watch_events();
        sandbox.spares.refill();
        Ok(sandbox)
    }

    /// Removes containers of servers that stopped without disconnecting, sparing sessions that can come back.
    async fn remove_orphans(&self, state_dir: &Path) {
        let _ = state_dir;
        // The client made for the driver probe when there is one; else one that lists without the version check.
        let made = self.client.lock().await.clone();
        let client = match made.or_else(Client::for_listing) {
            Some(client) => client,
            None => match tokio::time::timeout(Duration::from_secs(3), self.client()).await {
                Ok(Ok(client)) => client,
                _ => return,
            },
        };
        let containers = match client.list_labelled(&format!("{LABEL_DRIVER}=docker")).await {
            Ok(containers) => containers,
            Err(error) => {
                tracing::debug!(%error, "could not list sandlink's containers for cleanup");
                return;
            }
        };
        for container in containers {
            if !is_orphan(&container.labels) {
                continue;
            }
            tracing::info!(container = %container.id, "removing a container left by a sandlink server that stopped");
            if let Err(error) = client.remove(&container.id).await {
                tracing::warn!(container = %container.id, %error, "could not remove an orphaned container");
            }
        }
    }
}

/// Opens the allow-list's proxy port inside the (running, just inspected) container's network namespace.
async fn open_gate(
    client: &Client,
    container: &str,
    hosts: Vec<AllowedHost>,
    policy: &NetworkPolicy,
) -> Result<network::Gate> {
    let facts = client.inspect(container).await?.ok_or_else(|| Error::Remote {
        status: Some(404),
        message: format!("The container {container} disappeared while sandlink prepared it."),
    })?;
    let Some(pid) = facts.pid.filter(|_| facts.running) else {
        return Err(Error::Remote {
            status: None,
            message: format!("The container {} stopped while sandlink prepared it ({}).", facts.name, facts.status),
        });
    };
    network::Gate::open(hosts, pid, &facts.id, &facts.hostname, &policy.describe()).await
}

/// Creates the session root and the run directory (as root, so any run user can use them).
async fn prepare(transport: &dyn shell::Transport, settings: &Settings) -> Result<()> {
    let owner = settings.user.clone().unwrap_or_default();
    let argv = vec![
        "/bin/sh".to_string(),
        "-c".to_string(),
        scripts::PREPARE.to_string(),
        "sandlink".to_string(),
        settings.remote_root.clone(),
        owner,
    ];
    let reply = shell::collect(transport, shell::Command { argv, ..shell::Command::default() }).await.map_err(|error| {
        match error {
            Error::Remote { message, .. } if message.contains("executable file not found") || message.contains("no such file") => {
                Error::InvalidParams(format!(
                    "The container has no /bin/sh, which sandlink needs to run commands; use an image with a shell \
                     (busybox is enough). Docker said: {message}"
                ))
            }
            other => other,
        }
    })?;
    if reply.status != 0 {
        return Err(Error::Remote {
            status: None,
            message: format!(
                "Could not create the session root {} in the container: {}",
                settings.remote_root,
                String::from_utf8_lossy(&reply.stderr).trim()
            ),
        });
    }
    Ok(())
}

/// Which server process owns a container: host name, boot id, pid and the process's start time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ServerIdentity {
    host: String,
    boot: String,
    pid: u32,
    start_ticks: u64,
}

impl ServerIdentity {
    fn current() -> Self {
        let pid = std::process::id();
        ServerIdentity { host: host_name(), boot: boot_id(), pid, start_ticks: start_ticks(pid).unwrap_or(0) }
    }

    fn label(&self) -> String {
        format!("{}/{}/{}/{}", self.host, self.boot, self.pid, self.start_ticks)
    }

    fn parse(label: &str) -> Option<Self> {
        let mut parts = label.rsplitn(4, '/');
        let start_ticks = parts.next()?.parse().ok()?;
        let pid = parts.next()?.parse().ok()?;
        let boot = parts.next()?.to_string();
        let host = parts.next()?.to_string();
        Some(ServerIdentity { host, boot, pid, start_ticks })
    }

    /// Whether the process still runs; `None` when it belongs to another machine and this one cannot tell.
    fn is_running(&self) -> Option<bool> {
        if self.host != host_name() {
            return None;
        }
        if self.boot != boot_id() {
            return Some(false);
        }
        Some(start_ticks(self.pid) == Some(self.start_ticks))
    }
}

fn is_orphan(labels: &HashMap<String, String>) -> bool {
    let Some(server) = labels.get(LABEL_SERVER).and_then(|label| ServerIdentity::parse(label)) else {
        return false;
    };
    if server.is_running() != Some(false) {
        return false;
    }
    let (Some(session), Some(state_dir)) = (labels.get(LABEL_SESSION), labels.get(LABEL_STATE_DIR)) else {
        return false;
    };
    // Kept sessions (disconnect with keep, or kept when their editor exited) come back; a crashed server's
    // unkept session does not own its container any more.
    let session_dir = PathBuf::from(state_dir).join("sessions").join(session);
    let kept_by_record = std::fs::read(session_dir.join("session.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .is_some_and(|record| record.get("kept") == Some(&serde_json::Value::Bool(true)));
    !session_dir.join(KEPT_MARKER).exists() && !kept_by_record
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|name| name.trim().to_string()).unwrap_or_default()
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|id| id.trim().to_string()).unwrap_or_default()
}

/// The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), which tells pid reuse apart;
/// `None` when it is not running (a zombie has exited and only waits for its parent to notice).
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses; the fields after its last ')' are plain.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    fields.nth(18)?.parse().ok()
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_should_read_the_records_of_earlier_builds_and_write_the_same_keys() {
        let recorded = serde_json::json!({ "containerId": "3f2a9c", "created": true });
        let state: State = serde_json::from_value(recorded.clone()).expect("today's record format");
        assert_eq!(state, State { container_id: "3f2a9c".into(), created: true });
        assert_eq!(crate::drivers::state_value("docker", &state), recorded);
    }

    #[test]
    fn server_identity_should_round_trip_and_know_this_process() {
        let current = ServerIdentity::current();
        assert!(current.start_ticks > 0);
        assert_eq!(ServerIdentity::parse(&current.label()), Some(current.clone()));
        assert_eq!(current.is_running(), Some(true));
        let gone = ServerIdentity { start_ticks: current.start_ticks + 1, ..current.clone() };
        assert_eq!(gone.is_running(), Some(false));
        let elsewhere = ServerIdentity { host: "another-host".into(), ..current };
        assert_eq!(elsewhere.is_running(), None);
    }

    #[test]
    fn orphans_should_spare_kept_sessions_and_live_servers() {
        let state = tempfile::tempdir().unwrap();
        let dead = ServerIdentity { start_ticks: 1, ..ServerIdentity::current() };
        let labels = |server: &ServerIdentity, session: &str| {
            HashMap::from([
                (LABEL_SERVER.to_string(), server.label()),
                (LABEL_SESSION.to_string(), session.to_string()),
                (LABEL_STATE_DIR.to_string(), state.path().to_string_lossy().into_owned()),
            ])
        };
        assert!(is_orphan(&labels(&dead, "docker-a")));
        assert!(!is_orphan(&labels(&ServerIdentity::current(), "docker-a")));
        std::fs::create_dir_all(state.path().join("sessions/docker-b")).unwrap();
        std::fs::write(state.path().join("sessions/docker-b/kept"), "x").unwrap();
        assert!(!is_orphan(&labels(&dead, "docker-b")));
    }
}
