//! One ssh session: runs that survive drops, sync through the shell layer, previews through the ControlMaster's
//! port forwards, and cleaning up the remote folders on disconnect.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::connection::Connection;
use super::runs::{Launch, Runs};
use super::terminal;
use crate::drivers::shell::agent::Agent;
use crate::drivers::shell::files::ShellFiles;
use crate::drivers::shell::{self, group};
use crate::drivers::{ExecSpec, Process, Sandbox, SandboxStatus};
use crate::error::{Error, Result};
use crate::sync::RemoteFiles;

pub struct SshSandbox {
    pub(super) connection: Arc<Connection>,
    pub(super) root: String,
    /// Whether `root` is sandlink's own default folder (removed on disconnect), not one the user named.
    pub(super) own_root: bool,
    /// The session's private folder on the remote (run files), removed on disconnect.
    pub(super) state: String,
    pub(super) env: BTreeMap<String, String>,
    pub(super) files: Arc<ShellFiles>,
    pub(super) runs: Arc<Runs>,
}

impl SshSandbox {
    async fn helper(&self, script: &str, arguments: &[&str]) -> Result<i64> {
        Ok(self.runs.helper.run(script, arguments, None).await?.status)
    }

    fn agent(&self) -> &Arc<Agent> {
        &self.runs.helper
    }
}

#[async_trait]
impl Sandbox for SshSandbox {
    /// A look is one channel on the open ControlMaster, so ports are looked for as often as an editor would.
    fn port_watch_interval(&self) -> Option<std::time::Duration> {
        Some(std::time::Duration::from_secs(2))
    }

    fn driver_id(&self) -> &'static str {
        "ssh"
    }

    fn remote_root(&self) -> String {
        self.root.clone()
    }

    fn detail(&self) -> Option<String> {
        Some(format!("{}:{}", self.connection.target().host, self.root))
    }

    fn driver_state(&self) -> serde_json::Value {
        let state = super::State { root: self.root.clone(), state: self.state.clone(), own_root: self.own_root };
        crate::drivers::state_value("ssh", &state)
    }

    fn supports_terminal(&self) -> bool {
        true
    }

    async fn exec(&self, spec: ExecSpec) -> Result<Process> {
        let directory = group::run_directory(&self.root, spec.cwd.as_deref())?;
        if spec.cwd.is_some() && self.helper(r#"[ -d "$1" ]"#, &[&directory]).await? != 0 {
            return Err(Error::InvalidParams(format!(
                "The working directory \"{}\" does not exist on the remote machine.",
                spec.cwd.as_deref().unwrap_or(".")
            )));
        }
        let mut env = vec![("SANDLINK_REMOTE_ROOT".to_string(), self.root.clone())];
        env.extend(self.env.iter().chain(spec.env.iter()).map(|(name, value)| (name.clone(), value.clone())));
        if let Some(size) = spec.pty {
            let line = match &spec.args {
                Some(args) => std::iter::once(&spec.command).chain(args.iter()).map(|word| shell::quote(word)).collect::<Vec<_>>().join(" "),
                None => spec.command.clone(),
            };
            return terminal::start(&self.connection, terminal::remote_line(&directory, &env, &line), size).await;
        }
        let launch = match &spec.args {
            Some(args) => Launch::Program(std::iter::once(spec.command.clone()).chain(args.iter().cloned()).collect()),
            None => Launch::Line(spec.command.clone()),
        };
        self.runs.start(env, launch, directory, spec.stdin).await
    }

    fn files(&self) -> Option<Arc<dyn RemoteFiles>> {
        Some(self.files.clone())
    }

    async fn preview(&self, port: u16) -> Result<String> {
        let local = self.connection.forward_port(port).await?;
        Ok(format!("http://127.0.0.1:{local}"))
    }

    async fn status(&self) -> Result<SandboxStatus> {
        Ok(SandboxStatus::default())
    }

    async fn disconnect(&self, keep: bool) -> Result<()> {
        if !keep {
            let root = if self.own_root { self.root.as_str() } else { "" };
            let removed = self.agent().run(r#"rm -rf "$1"; [ -z "$2" ] || rm -rf "$2""#, &[&self.state, root], None).await;
            if let Err(error) = removed {
                tracing::warn!(%error, "could not remove the session's folders on the remote machine");
            }
        }
        self.connection.close().await;
        Ok(())
    }
}
