//! The `ssh` driver: the user's own machines, reached with their own ssh setup (`~/.ssh/config`, the agent,
//! known_hosts), through the system `ssh` and a ControlMaster per session.
//!
//! It is a second `shell::Transport` (`transport.rs`): sync, listings and the helper shell are the shell layer's.
//! What only ssh has: the connection that reconnects with backoff (`connection.rs`), runs whose output lives in
//! files on the remote so they survive drops (`runs.rs`), host keys that are never accepted silently
//! (`hostkeys.rs`), and previews through the master's port forwards. The remote needs a POSIX shell and standard
//! tools only (see docs/drivers/ssh.md).

mod connection;
mod hostkeys;
mod runs;
mod sandbox;
mod settings;
mod target;
mod terminal;
mod transport;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use self::connection::Connection;
use self::target::Target;
use self::runs::Runs;
use self::sandbox::SshSandbox;
pub use self::settings::Settings;
use self::transport::SshTransport;
use super::shell::{self, agent::Agent, files::ShellFiles};
use super::{ConnectRequest, Sandbox};
use crate::error::{Error, Result};
use crate::protocol::{DriverCapabilities, DriverInfo};

/// Creates the session's folders; answers the remote home on its first line. `$1` = root (relative to the home
/// when not absolute), `$2` = the session's private folder (relative to the home).
const PREPARE: &str = r#"cd || exit 3
for tool in setsid nohup tail head mkfifo tar find; do
  command -v "$tool" >/dev/null 2>&1 || { echo "sandlink needs $tool on the remote machine" >&2; exit 4; }
done
mkdir -p "$1" "$2/runs" && chmod 700 "$2" && printf '%s\n' "$HOME""#;

/// The ssh driver.
pub struct Driver;

impl Driver {
    pub fn new() -> Self {
        Driver
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
            metrics: false,
            detect_ports: true,
            terminal: true,
        }
    }
}

impl Default for Driver {
    fn default() -> Self {
        Self::new()
    }
}

/// Where the masters' control sockets go: a short private path (socket paths are limited to about 100 bytes).
fn control_directory() -> PathBuf {
    let directory = std::env::temp_dir().join(format!("sandlink-ssh-{}", unsafe { libc::getuid() }));
    let _ = std::fs::create_dir_all(&directory);
    let _ = std::fs::set_permissions(&directory, std::os::unix::fs::PermissionsExt::from_mode(0o700));
    directory
}

/// The default root's folder name: the workspace's name and a short hash of this machine and its path, so two
/// workspaces of one name do not share a folder.
fn workspace_folder(workspace: Option<&Path>, session_id: &str) -> String {
    match workspace {
        Some(path) => {
            let name: String = path
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default()
                .chars()
                .map(|character| if character.is_ascii_alphanumeric() || "-_.".contains(character) { character } else { '_' })
                .collect();
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            let hash = blake3::hash(format!("{}\n{}", host.trim(), path.display()).as_bytes()).to_hex();
            format!("{}-{}", name.trim_start_matches('.'), &hash[..10])
        }
        None => session_id.to_string(),
    }
}

#[async_trait]
impl super::Driver for Driver {
    fn id(&self) -> &'static str {
        "ssh"
    }

    async fn info(&self) -> DriverInfo {
        let probe = tokio::process::Command::new("ssh").arg("-V").output().await;
        let (available, detail) = match probe {
            Ok(output) if output.status.success() => {
                let version = String::from_utf8_lossy(&output.stderr).trim().to_string();
                (true, format!("{version}; your ssh config, agent and known_hosts"))
            }
            _ => (false, "The ssh client is not installed here; install OpenSSH's client (ssh).".to_string()),
        };
        DriverInfo {
            id: "ssh".into(),
            available,
            detail: Some(detail),
            capabilities: Self::capabilities(available),
            settings: Vec::new(),
            credentials: Vec::new(),
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

    async fn reattach(&self, request: super::ReattachRequest) -> Result<Arc<dyn Sandbox>> {
        let state = request
            .recorded_state::<State>("ssh")?
            .ok_or_else(|| Error::UnknownSession(request.connect.session_id.clone()))?;
        self.open(request.connect, Some(state)).await
    }
}

/// What a session's record keeps for a re-attach after a restart (`driverState`): the remote folders, never a
/// secret. The host comes from the settings again.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub root: String,
    /// The session's private folder (run files).
    pub state: String,
    /// Whether the root is sandlink's default one, removed on disconnect.
    pub own_root: bool,
}

impl Driver {
    /// Connects and prepares the session's folders: new ones, or for a re-attach the recorded ones.
    async fn open(&self, request: ConnectRequest, recorded: Option<State>) -> Result<Arc<dyn Sandbox>> {
        let settings = Settings::parse(&request.settings)?;
        let network = crate::netpolicy::NetworkPolicy::from_settings(&request.settings)?;
        if network != crate::netpolicy::NetworkPolicy::On {
            // Refused before anything is sent: the machine is the user's own and its network is not sandlink's.
            return Err(Error::Unsupported(format!(
                "The ssh driver cannot enforce the network policy {} on {}: runs use the remote machine's own \
                 network. Remove the \"network\" setting, or use the docker or local driver for a restricted network.",
                network.describe(),
                settings.host
            )));
        }
        let target = Target {
            host: settings.host.clone(),
            config_file: settings.config_file.clone(),
            keep_alive_seconds: settings.keep_alive_seconds,
        };
        let connection = Connection::open(target, control_directory()).await?;
        let transport: Arc<dyn shell::Transport> = Arc::new(SshTransport { connection: connection.clone() });
        let (root, state, own_root) = match recorded {
            Some(recorded) => (recorded.root, recorded.state, recorded.own_root),
            None => (
                settings.root.clone().unwrap_or_else(|| {
                    format!(".cache/sandlink/{}", workspace_folder(request.workspace.as_deref(), &request.session_id))
                }),
                format!(".cache/sandlink/.sessions/{}", request.session_id),
                settings.root.is_none(),
            ),
        };
        let argv = vec!["/bin/sh".into(), "-c".into(), PREPARE.into(), "sandlink".into(), root.clone(), state.clone()];
        let reply = shell::collect(transport.as_ref(), shell::Command { argv, ..shell::Command::default() }).await?;
        if reply.status != 0 {
            connection.close().await;
            return Err(Error::Remote {
                status: None,
                message: format!(
                    "Could not prepare the session's folder {root} on {}: {}",
                    settings.host,
                    String::from_utf8_lossy(&reply.stderr).trim()
                ),
            });
        }
        let home = String::from_utf8_lossy(&reply.stdout).lines().next().unwrap_or_default().trim_end_matches('/').to_string();
        let absolute = |path: &str| if path.starts_with('/') { path.to_string() } else { format!("{home}/{path}") };
        let (root, state) = (absolute(&root), absolute(&state));
        let files = Arc::new(ShellFiles {
            transport: transport.clone(),
            agent: Arc::new(Agent::new(transport.clone())),
            root: root.clone(),
            owner: None,
        });
        let runs = Arc::new(Runs {
            connection: connection.clone(),
            transport: transport.clone(),
            helper: Arc::new(Agent::new(transport.clone())),
            launcher: Arc::new(Agent::new(transport.clone())),
            spare_launcher: Arc::new(Agent::new(transport)),
            launching: Default::default(),
            folder: format!("{state}/runs"),
            chld_timer: std::sync::atomic::AtomicBool::new(false),
            unswept: Default::default(),
            sweeping: Default::default(),
        });
        // The launcher's shell opens now, off the connect's path, so the first run does not pay for it.
        let prepared = runs.clone();
        tokio::spawn(async move { prepared.prepare_launcher().await });
        Ok(Arc::new(SshSandbox { connection, root, own_root, state, env: settings.env, files, runs }))
    }
}

/// Records the key `host` presents now in the user's known_hosts, only when its fingerprint is `fingerprint`
/// (the one the user checked); answers the file written. `config_file` as the `configFile` setting.
pub async fn accept_host_key(host: &str, fingerprint: &str, config_file: Option<&str>) -> Result<PathBuf> {
    let mut settings = serde_json::Map::new();
    settings.insert("host".into(), host.into());
    if let Some(config_file) = config_file {
        settings.insert("configFile".into(), config_file.into());
    }
    let settings = Settings::parse(&settings)?;
    let target = Target { host: settings.host, config_file: settings.config_file, keep_alive_seconds: 0 };
    hostkeys::accept(&target, fingerprint).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_should_round_trip_with_camel_case_keys() {
        let recorded = serde_json::json!({ "root": "/home/me/.cache/sandlink/app-1", "state": "/home/me/.cache/sandlink/.sessions/ssh-1", "ownRoot": true });
        let state: State = serde_json::from_value(recorded.clone()).expect("the record format");
        assert!(state.own_root);
        assert_eq!(crate::drivers::state_value("ssh", &state), recorded);
    }

    #[test]
    fn workspace_folders_should_differ_for_two_workspaces_of_one_name() {
        let first = workspace_folder(Some(Path::new("/a/app")), "ssh-1");
        let second = workspace_folder(Some(Path::new("/b/app")), "ssh-1");
        assert!(first.starts_with("app-") && second.starts_with("app-"), "{first} {second}");
        assert_ne!(first, second);
        assert_eq!(workspace_folder(Some(Path::new("/a/my app")), "s"), workspace_folder(Some(Path::new("/a/my app")), "t"));
        assert!(workspace_folder(Some(Path::new("/a/my app")), "s").starts_with("my_app-"));
        assert_eq!(workspace_folder(None, "ssh-9"), "ssh-9");
    }
}
