//! The `local` driver: a private copy of the workspace under sandlink's state directory, runs sandboxed on this machine.
//!
//! Where bubblewrap is installed, runs see the host read-only and can write only to the session root, a private
//! home and a private /tmp; without it they are separate process groups in the private copy and nothing more.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;

pub mod files;

use super::sandbox_agent::AgentClient;
use super::{process, ConnectRequest, ExecSpec, Process, ReattachRequest, Sandbox};
use crate::error::{Error, IoContext, Result};
use crate::paths::join_inside;
use crate::protocol::{DriverCapabilities, DriverInfo};
use crate::sync::RemoteFiles;
use files::LocalFiles;

/// The local driver; stateless apart from the cached bubblewrap probe.
pub struct Driver {
    bubblewrap: OnceLock<bool>,
}

impl Driver {
    pub fn new() -> Self {
        Driver { bubblewrap: OnceLock::new() }
    }

    /// Whether bubblewrap is installed and can create namespaces here (containers often forbid it).
    fn bubblewrap_works(&self) -> bool {
        *self.bubblewrap.get_or_init(|| {
            if std::env::var_os("SANDLINK_LOCAL_NO_BWRAP").is_some() {
                return false;
            }
            std::process::Command::new("bwrap")
                .args(["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-pid", "--", "true"])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        })
    }

    fn isolation_detail(bubblewrap: bool) -> String {
        if bubblewrap {
            "isolation: bubblewrap (runs can write only to the session root, a private home and a private /tmp)".into()
        } else {
            "isolation: process groups only; install bubblewrap (bwrap) so runs cannot write outside the session root"
                .into()
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
        "local"
    }

    async fn info(&self) -> DriverInfo {
        let bubblewrap = tokio::task::block_in_place(|| self.bubblewrap_works());
        DriverInfo {
            id: self.id().into(),
            available: true,
            detail: Some(Self::isolation_detail(bubblewrap)),
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
            },
        }
    }

    async fn connect(&self, request: ConnectRequest) -> Result<Arc<dyn Sandbox>> {
        // The local driver takes no settings of its own; `sync` (the engine's) passes validation untouched.
        super::Driver::validate_settings(self, &request.settings)?;
        let bubblewrap = tokio::task::block_in_place(|| self.bubblewrap_works());
        let session_dir = request.state_dir.join("sessions").join(&request.session_id);
        let root = session_dir.join("root");
        let home = session_dir.join("home");
        for dir in [&root, &home] {
            tokio::fs::create_dir_all(dir)
                .await
                .context(|| format!("Could not create the session directory {}", dir.display()))?;
        }
        let mut sandbox = LocalSandbox { session_dir, root, home, bubblewrap, agent: None };
        if bubblewrap {
            sandbox.agent = sandbox.start_agent().await;
        }
        Ok(Arc::new(sandbox))
    }

    /// The local sandbox is a directory on this machine: nothing leaves it.
    fn sends_workspace_elsewhere(&self, _settings: &serde_json::Map<String, serde_json::Value>) -> bool {
        false
    }

    async fn sandbox_exists(&self, request: &ReattachRequest) -> Result<bool> {
        let root = request.connect.state_dir.join("sessions").join(&request.connect.session_id).join("root");
        Ok(tokio::fs::metadata(&root).await.is_ok_and(|metadata| metadata.is_dir()))
    }

    /// The same session directory again: its root still holds what was synced, so a resync moves only changes.
    async fn reattach(&self, request: ReattachRequest) -> Result<Arc<dyn Sandbox>> {
        let session_dir = request.connect.state_dir.join("sessions").join(&request.connect.session_id);
        let root = session_dir.join("root");
        let home = session_dir.join("home");
        if !self.sandbox_exists(&request).await? {
            return Err(Error::UnknownSession(request.connect.session_id.clone()));
        }
        tokio::fs::create_dir_all(&home)
            .await
            .context(|| format!("Could not create the session directory {}", home.display()))?;
        let bubblewrap = tokio::task::block_in_place(|| self.bubblewrap_works());
        let mut sandbox = LocalSandbox { session_dir, root, home, bubblewrap, agent: None };
        if bubblewrap {
            sandbox.agent = sandbox.start_agent().await;
        }
        Ok(Arc::new(sandbox))
    }
}

/// A session's long-lived bubblewrap with the agent inside, which starts runs without a new sandbox each time.
struct Agent {
    client: AgentClient,
    bubblewrap: std::sync::Mutex<std::process::Child>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        // Killing bubblewrap ends its PID namespace, and with it every process of the session.
        if let Ok(mut child) = self.bubblewrap.lock() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One session's private directory on this machine.
pub struct LocalSandbox {
    session_dir: PathBuf,
    root: PathBuf,
    home: PathBuf,
    bubblewrap: bool,
    agent: Option<Agent>,
}

impl LocalSandbox {
    /// bubblewrap's arguments for this session: the host read-only, the root, home and `extra` writable.
    fn bubblewrap_arguments(&self, extra_writable: &[&Path]) -> Vec<String> {
        let mut arguments: Vec<String> = ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
            .iter()
            .map(|argument| argument.to_string())
            .collect();
        for writable in [self.root.as_path(), self.home.as_path()].into_iter().chain(extra_writable.iter().copied()) {
            let path = writable.to_string_lossy().into_owned();
            arguments.extend(["--bind".to_string(), path.clone(), path]);
        }
        arguments.extend(["--unshare-pid", "--die-with-parent"].map(String::from));
        arguments
    }

    /// Starts the session's agent; `None` (runs then start their own bubblewrap) when it does not come up.
    async fn start_agent(&self) -> Option<Agent> {
        let agent_dir = self.session_dir.join("agent");
        std::fs::create_dir_all(&agent_dir).ok()?;
        let socket = agent_dir.join("agent.sock");
        let executable = std::env::current_exe().ok()?;
        let mut command = std::process::Command::new("bwrap");
        command
            .args(self.bubblewrap_arguments(&[agent_dir.as_path()]))
            // The sandbox's private /tmp would hide a sandlink that lives under /tmp (a build in a temporary clone).
            .arg("--ro-bind")
            .arg(&executable)
            .arg(&executable)
            .arg("--chdir")
            .arg(&self.root)
            .arg("--")
            .arg(&executable)
            .arg("sandbox-agent")
            .arg("--socket")
            .arg(&socket)
            .env("HOME", &self.home)
            .env("SANDLINK_REMOTE_ROOT", &self.root)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null());
        let child = match command.spawn() {
            Ok(child) => child,
            Err(error) => {
                tracing::warn!(%error, "could not start the sandbox agent; each run starts its own bubblewrap");
                return None;
            }
        };
        let agent = Agent { client: AgentClient::new(socket), bubblewrap: std::sync::Mutex::new(child) };
        if agent.client.wait_ready(std::time::Duration::from_secs(3)).await {
            Some(agent)
        } else {
            tracing::warn!("the sandbox agent did not start; each run starts its own bubblewrap");
            None
        }
    }

    fn command_for(&self, spec: &ExecSpec, cwd: &Path) -> tokio::process::Command {
        let (program, arguments): (String, Vec<String>) = match &spec.args {
            Some(args) => (spec.command.clone(), args.clone()),
            None => ("sh".into(), vec!["-c".into(), spec.command.clone()]),
        };
        let mut command = if self.bubblewrap {
            let mut command = tokio::process::Command::new("bwrap");
            command
                .args(self.bubblewrap_arguments(&[]))
                .arg("--chdir")
                .arg(cwd)
                .arg("--")
                .arg(&program)
                .args(&arguments);
            command.env("HOME", &self.home);
            command
        } else {
            let mut command = tokio::process::Command::new(&program);
            command.args(&arguments).current_dir(cwd);
            command
        };
        command.env("SANDLINK_REMOTE_ROOT", &self.root).envs(&spec.env);
        command
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
        serde_json::json!({ "sessionDir": self.session_dir })
    }

    fn detail(&self) -> Option<String> {
        Some(Driver::isolation_detail(self.bubblewrap))
    }

    async fn exec(&self, spec: ExecSpec) -> Result<Process> {
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
        if spec.args.is_some() && !program_exists(&spec.command, &cwd, spec.env.get("PATH")) {
            // bubblewrap would only report this after starting, as exit code 1; say it clearly up front instead.
            return Err(Error::InvalidParams(format!(
                "The program \"{}\" was not found in the sandbox's PATH. Check its name, or run it through the shell \
                 by leaving out `args`.",
                spec.command
            )));
        }
        if let Some(agent) = &self.agent {
            let (program, arguments) = match &spec.args {
                Some(args) => (spec.command.clone(), args.clone()),
                None => ("sh".to_string(), vec!["-c".to_string(), spec.command.clone()]),
            };
            return agent.client.spawn(program, arguments, cwd, spec.env.clone(), spec.stdin).await;
        }
        let command = self.command_for(&spec, &cwd);
        process::spawn(command, spec.stdin)
    }

    fn files(&self) -> Option<Arc<dyn RemoteFiles>> {
        Some(Arc::new(LocalFiles { root: self.root.clone(), staging: self.session_dir.join("staging") }))
    }

    async fn preview(&self, port: u16) -> Result<String> {
        Ok(format!("http://127.0.0.1:{port}"))
    }

    async fn disconnect(&self, keep: bool) -> Result<()> {
        if let Some(agent) = &self.agent {
            if let Ok(mut bubblewrap) = agent.bubblewrap.lock() {
                let _ = bubblewrap.kill();
                let _ = bubblewrap.wait();
            }
        }
        if keep {
            return Ok(());
        }
        let session_dir = self.session_dir.clone();
        tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&session_dir) {
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

/// Whether `program` resolves to an executable file the way `execvp` would find it.
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

