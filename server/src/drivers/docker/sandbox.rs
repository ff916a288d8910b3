//! One docker session: runs as execs (most in spare shells, `spare.rs`), cancel through a second exec, status, previews, faults.

use crate::locks::lock;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use tokio::sync::watch;

use super::client::{Client, StatsSample};
use super::network::Gate;
use super::spare::{can_export, SpareRun, Spares};
use crate::drivers::process::signal_name;
use crate::drivers::shell::agent::Agent;
use crate::drivers::shell::files::ShellFiles;
use crate::drivers::shell::group;
use crate::drivers::{ExecSpec, ExitStatus, Process, ProcessControl, Sandbox, SandboxStatus, Signal};
use crate::error::{Error, Result};
use crate::netpolicy::NetworkPolicy;
use crate::protocol::Resources;
use crate::sync::RemoteFiles;

/// One session's container.
pub struct DockerSandbox {
    pub(super) client: Client,
    pub(super) container_id: String,
    pub(super) container_name: String,
    pub(super) remote_root: String,
    /// The user runs and helper commands use; `None` is the container's own user.
    pub(super) user: Option<String>,
    pub(super) env: BTreeMap<String, String>,
    /// Whether sandlink created the container (and so removes it on disconnect).
    pub(super) created: bool,
    /// Keep the container on disconnect even without `keep` (the `keep` setting).
    pub(super) keep_setting: bool,
    pub(super) files: Arc<ShellFiles>,
    /// A helper shell of its own for signalling runs, so a cancel never waits behind a long upload.
    pub(super) signaller: Arc<Agent>,
    /// Where the kept marker goes: `<state_dir>/sessions/<id>`.
    pub(super) session_dir: std::path::PathBuf,
    /// Set when the container died, was removed, or the daemon went away; a sentence for the user.
    pub(super) failure: watch::Sender<Option<String>>,
    /// Set on disconnect, so the removal sandlink itself does is not reported as a failure.
    pub(super) closing: Arc<AtomicBool>,
    /// The network policy the container was opened with.
    pub(super) network: NetworkPolicy,
    /// The allow-list's proxy port inside the container, for an allow-list; dropped on disconnect.
    pub(super) gate: Mutex<Option<Gate>>,
    pub(super) previous_sample: Mutex<Option<StatsSample>>,
    pub(super) watcher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Shells started ahead of runs, so a run without stdin or terminal starts without an exec of its own.
    pub(super) spares: Arc<Spares>,
}

/// What every run of a session has in its environment, before the run's own `env` (which may override it).
pub(super) fn session_env(remote_root: &str, gate: Option<&Gate>, env: &BTreeMap<String, String>) -> Vec<String> {
    let mut all: Vec<String> = vec![format!("SANDLINK_REMOTE_ROOT={remote_root}")];
    // The proxy stays the container's only way out, whatever the run's own `env` says.
    if let Some(gate) = gate {
        all.extend(gate.environment().into_iter().map(|(name, value)| format!("{name}={value}")));
    }
    all.extend(env.iter().map(|(name, value)| format!("{name}={value}")));
    all
}

impl DockerSandbox {
    /// Starts watching the container's events; a death or removal not caused by sandlink becomes the failure.
    pub(super) fn watch_events(self: &Arc<Self>) {
        let client = self.client.clone();
        let container_id = self.container_id.clone();
        let name = self.container_name.clone();
        let failure = self.failure.clone();
        let closing = self.closing.clone();
        let task = tokio::spawn(async move {
            let mut events = client.container_events(&container_id);
            let message = loop {
                match events.next().await {
                    Some(Ok(event)) => match event.action.as_str() {
                        "oom" => continue,
                        "destroy" => break format!("The container {name} was removed outside sandlink."),
                        _ => {
                            let oom = client.inspect(&container_id).await.ok().flatten().is_some_and(|facts| facts.oom_killed);
                            let code = event.exit_code.unwrap_or_else(|| "unknown".into());
                            break if oom {
                                format!("The container {name} ran out of memory and was killed (exit code {code}).")
                            } else {
                                format!("The container {name} stopped (exit code {code}); it was stopped or killed outside sandlink.")
                            };
                        }
                    },
                    Some(Err(error)) => break format!("{error}"),
                    None => break format!(
                        "The Docker daemon at {} stopped answering; start it again, then reconnect.",
                        client.host()
                    ),
                }
            };
            if !closing.load(Ordering::SeqCst) {
                tracing::warn!(container = %name, %message, "docker session failed");
                failure.send_replace(Some(message));
            }
        });
        *lock(&self.watcher) = Some(task);
    }

    fn exec_env(&self, spec: &ExecSpec) -> Vec<String> {
        let mut env = session_env(&self.remote_root, lock(&self.gate).as_ref(), &self.env);
        env.extend(spec.env.iter().map(|(name, value)| format!("{name}={value}")));
        env
    }

    /// Starts a run without stdin or terminal in a spare shell; `None` when none is ready, it refused the run, or
    /// the run has a variable the shell cannot export. `command` is `group::run_argv`'s.
    async fn start_in_spare(&self, command: &[String], spec: &ExecSpec, working_dir: &str) -> Option<super::client::AttachedExec> {
        if !spec.env.keys().all(|name| can_export(name)) {
            return None;
        }
        // Started first when none is ready, so the run waits for one already on its way; otherwise the one taken is
        // replaced once runs pause (`Spares::refill_when_quiet`), so starting it competes with no run.
        self.spares.refill_if_none_ready();
        let spare = self.spares.take().await;
        // A run that goes on (a server, a watcher) still gets its spare replaced, once runs pause.
        self.spares.refill_when_quiet();
        let env: Vec<(String, String)> = spec.env.iter().map(|(name, value)| (name.clone(), value.clone())).collect();
        let run = SpareRun { token: &command[3], argv: &command[4..], env: &env, working_dir };
        self.spares.launch(spare?, &run).await
    }

    fn current_failure(&self) -> Option<String> {
        self.failure.borrow().clone()
    }
}

#[async_trait]
impl Sandbox for DockerSandbox {
    /// A command here is one exec on the local daemon, so ports are looked for as often as an editor would.
    fn port_watch_interval(&self) -> Option<std::time::Duration> {
        Some(std::time::Duration::from_secs(2))
    }

    fn driver_id(&self) -> &'static str {
        "docker"
    }

    fn remote_root(&self) -> String {
        self.remote_root.clone()
    }

    fn detail(&self) -> Option<String> {
        Some(format!(
            "container {} ({}), {}",
            self.container_name,
            &self.container_id[..self.container_id.len().min(12)],
            self.network.describe()
        ))
    }

    fn supports_terminal(&self) -> bool {
        true
    }

    async fn exec(&self, spec: ExecSpec) -> Result<Process> {
        if let Some(failure) = self.current_failure() {
            return Err(Error::Remote { status: None, message: failure });
        }
        let working_dir = group::run_directory(&self.remote_root, spec.cwd.as_deref())?;
        if spec.cwd.is_some() && !self.client.is_directory(&self.container_id, &working_dir).await? {
            return Err(Error::InvalidParams(format!(
                "The working directory \"{}\" does not exist in the sandbox.",
                spec.cwd.as_deref().unwrap_or(".")
            )));
        }
        let token = group::run_token();
        let command = group::run_argv(&token, &spec.command, spec.args.as_deref());
        let env = self.exec_env(&spec);
        let attached = match spec.pty {
            Some(size) => {
                self.client
                    .exec_in_terminal(&self.container_id, command, env, Some(working_dir.clone()), self.user.clone(), size)
                    .await?
            }
            None => {
                let spared = match spec.stdin {
                    true => None,
                    false => self.start_in_spare(&command, &spec, &working_dir).await,
                };
                match spared {
                    Some(attached) => attached,
                    None => {
                        self.client
                            .exec(&self.container_id, command, env, Some(working_dir.clone()), self.user.clone(), spec.stdin)
                            .await?
                    }
                }
            }
        };
        let exec_id = attached.id.clone();

        let output = group::split_output(attached.output);

        let signalled = Arc::new(AtomicBool::new(false));
        let finished = Arc::new(AtomicBool::new(false));
        let group = group::GroupControl::new(self.signaller.clone(), token, signalled.clone(), finished.clone());
        let control: Arc<dyn ProcessControl> = match spec.pty {
            Some(_) => Arc::new(TerminalControl { group, client: self.client.clone(), exec_id }),
            None => Arc::new(group),
        };
        let ended = wait_for_exit(
            self.client.clone(),
            self.container_id.clone(),
            self.container_name.clone(),
            attached.id,
            output.ended,
            signalled,
            finished,
            self.failure.subscribe(),
        );
        let spares = self.spares.clone();
        let exit = async move {
            let status = ended.await;
            spares.refill_when_quiet();
            status
        }
        .boxed();
        Ok(Process {
            stdout: output.stdout,
            stderr: output.stderr,
            stdin: (spec.stdin || spec.pty.is_some()).then_some(attached.input),
            control,
            exit,
        })
    }

    fn files(&self) -> Option<Arc<dyn RemoteFiles>> {
        Some(self.files.clone())
    }

    async fn preview(&self, port: u16) -> Result<String> {
        let facts = self.client.inspect(&self.container_id).await?.ok_or_else(|| Error::Remote {
            status: Some(404),
            message: format!("The container {} no longer exists.", self.container_name),
        })?;
        if let Some(host_port) = facts.published.get(&port) {
            return Ok(format!("http://127.0.0.1:{host_port}"));
        }
        if let Some(address) = facts.address.filter(|_| self.client.host().starts_with("unix://")) {
            // A local daemon's bridge network is routable from this machine even for unpublished ports.
            return Ok(format!("http://{address}:{port}"));
        }
        Err(Error::InvalidParams(format!(
            "Port {port} of container {} is not published; add it to the \"ports\" setting and connect again.",
            self.container_name
        )))
    }

    async fn status(&self) -> Result<SandboxStatus> {
        if let Some(failure) = self.current_failure() {
            return Ok(SandboxStatus { failure: Some(failure), ..SandboxStatus::default() });
        }
        let facts = match self.client.inspect(&self.container_id).await {
            Ok(Some(facts)) => facts,
            Ok(None) => {
                let message = format!("The container {} was removed outside sandlink.", self.container_name);
                return Ok(SandboxStatus { failure: Some(message), ..SandboxStatus::default() });
            }
            Err(error) => return Ok(SandboxStatus { failure: Some(error.to_string()), ..SandboxStatus::default() }),
        };
        if !facts.running {
            let message = format!(
                "The container {} is {} (exit code {}); it was stopped outside sandlink.",
                self.container_name,
                facts.status,
                facts.exit_code.map(|code| code.to_string()).unwrap_or_else(|| "unknown".into())
            );
            return Ok(SandboxStatus { failure: Some(message), ..SandboxStatus::default() });
        }
        let mut sample = self.client.stats(&self.container_id).await?;
        let previous = lock(&self.previous_sample).replace(sample);
        let previous = match previous {
            Some(previous) => previous,
            None => {
                // A CPU percentage needs two samples; a short second look gives the first status one too.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let first = sample;
                sample = self.client.stats(&self.container_id).await?;
                *lock(&self.previous_sample) = Some(sample);
                first
            }
        };
        let container_delta = sample.container_cpu_ns.saturating_sub(previous.container_cpu_ns) as f64;
        let system_delta = sample.system_cpu_ns.saturating_sub(previous.system_cpu_ns) as f64;
        let cpu_percent = (system_delta > 0.0)
            .then(|| (container_delta / system_delta) * f64::from(sample.online_cpus) * 100.0)
            .map(|percent| (percent * 10.0).round() / 10.0);
        Ok(SandboxStatus {
            resources: Some(Resources { cpu_percent, memory_bytes: sample.memory_bytes }),
            failure: None,
            expires_at: None,
            ..SandboxStatus::default()
        })
    }

    fn driver_state(&self) -> serde_json::Value {
        let state = super::State { container_id: self.container_id.clone(), created: self.created };
        crate::drivers::state_value("docker", &state)
    }

    async fn disconnect(&self, keep: bool) -> Result<()> {
        self.closing.store(true, Ordering::SeqCst);
        self.spares.close();
        if let Some(watcher) = lock(&self.watcher).take() {
            watcher.abort();
        }
        // The proxy's port and its connections end with the session, kept container or not: a re-attach opens
        // a new one.
        drop(lock(&self.gate).take());
        if !self.created {
            return Ok(());
        }
        if keep || self.keep_setting {
            let marker = self.session_dir.join(super::KEPT_MARKER);
            tokio::fs::create_dir_all(&self.session_dir)
                .await
                .map_err(|error| Error::io(format!("Could not create {}", self.session_dir.display()), error))?;
            tokio::fs::write(&marker, format!("{}\n", self.container_id))
                .await
                .map_err(|error| Error::io(format!("Could not write {}", marker.display()), error))?;
            return Ok(());
        }
        match self.client.remove(&self.container_id).await {
            Ok(()) => Ok(()),
            // The daemon is gone: nothing can be removed now; the next server start cleans up.
            Err(Error::DriverUnavailable { .. }) if self.current_failure().is_some() => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// A session with a detached run is kept should its server die: the run goes on in the container.
    async fn start_detached(&self, spec: crate::drivers::detached::DetachedSpec) -> Result<crate::drivers::detached::DetachedStart> {
        if self.created {
            let marker = self.session_dir.join(super::KEPT_MARKER);
            tokio::fs::create_dir_all(&self.session_dir)
                .await
                .map_err(|error| Error::io(format!("Could not create {}", self.session_dir.display()), error))?;
            tokio::fs::write(&marker, format!("{}\n", self.container_id))
                .await
                .map_err(|error| Error::io(format!("Could not write {}", marker.display()), error))?;
        }
        crate::drivers::detached::start_with_shell(self, spec).await
    }

    async fn wait_failure(&self) -> String {
        let mut receiver = self.failure.subscribe();
        loop {
            if let Some(failure) = receiver.borrow_and_update().clone() {
                return failure;
            }
            if receiver.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}

/// Resolves when the exec's main process has ended, with its status, or with why the container went away.
#[allow(clippy::too_many_arguments)]
async fn wait_for_exit(
    client: Client,
    container_id: String,
    container_name: String,
    exec_id: String,
    mut ended: watch::Receiver<bool>,
    signalled: Arc<AtomicBool>,
    finished: Arc<AtomicBool>,
    mut failure: watch::Receiver<Option<String>>,
) -> Result<ExitStatus> {
    let mut polls_since_end = 0u32;
    let status = loop {
        let stream_ended = *ended.borrow();
        // While output flows, the exec is checked now and then (a process may close its output and keep running,
        // or leave children holding it open); once output ends, quickly, because the exit is due.
        let pause = if stream_ended {
            polls_since_end += 1;
            Duration::from_millis(if polls_since_end < 50 { 2 } else { 100 })
        } else {
            Duration::from_millis(250)
        };
        if !stream_ended {
            tokio::select! {
                _ = ended.changed() => {}
                _ = failure.changed() => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
        if let Some(message) = failure.borrow().clone() {
            break ExitStatus { code: None, signal: None, message: Some(format!("{message} The run ended with it.")) };
        }
        match client.exec_state(&exec_id).await {
            Ok((false, Some(code))) => {
                let by_us = signalled.load(Ordering::SeqCst);
                if !by_us && code > 128 {
                    // A signal death the run did not ask for may be the whole container being killed; the daemon
                    // notices that a moment after the process, so give its event a short while to arrive.
                    let _ = tokio::time::timeout(Duration::from_millis(500), failure.changed()).await;
                    if let Some(message) = failure.borrow().clone() {
                        break ExitStatus { code: None, signal: None, message: Some(format!("{message} The run ended with it.")) };
                    }
                    if let Some(message) = container_gone(&client, &container_id, &container_name).await {
                        break ExitStatus { code: None, signal: None, message: Some(message) };
                    }
                }
                break exit_status(code, by_us);
            }
            Ok(_) => {}
            Err(error) => {
                let message = container_gone(&client, &container_id, &container_name).await.unwrap_or_else(|| error.to_string());
                break ExitStatus { code: None, signal: None, message: Some(message) };
            }
        }
        if stream_ended && polls_since_end >= 50 {
            // The output ended long ago but the exec still runs: is the container still there?
            if let Some(message) = container_gone(&client, &container_id, &container_name).await {
                break ExitStatus { code: None, signal: None, message: Some(message) };
            }
        }
        if stream_ended {
            tokio::time::sleep(pause).await;
        }
    };
    finished.store(true, Ordering::SeqCst);
    Ok(status)
}

/// Why a run's container is gone, when the daemon says it stopped or no longer exists; `None` while it runs (or
/// when the daemon cannot tell), so the caller keeps its own explanation.
async fn container_gone(client: &Client, container_id: &str, container_name: &str) -> Option<String> {
    match client.inspect(container_id).await {
        Ok(Some(facts)) if !facts.running => Some(format!(
            "The container {container_name} stopped (exit code {}) while the command ran.",
            facts.exit_code.unwrap_or_default()
        )),
        Ok(None) => Some(format!("The container {container_name} was removed while the command ran.")),
        _ => None,
    }
}

/// Docker reports a process killed by signal N as exit code 128+N; when sandlink sent the signal, say so.
fn exit_status(code: i64, signalled: bool) -> ExitStatus {
    if signalled && (129..=128 + 64).contains(&code) {
        return ExitStatus { code: None, signal: Some(signal_name((code - 128) as i32)), message: None };
    }
    ExitStatus { code: Some(code as i32), signal: None, message: None }
}


/// A terminal run's control: signals go to its process group as for any run; resizes to the exec's terminal.
struct TerminalControl {
    group: group::GroupControl,
    client: Client,
    exec_id: String,
}

#[async_trait]
impl ProcessControl for TerminalControl {
    async fn signal(&self, signal: Signal) -> Result<()> {
        self.group.signal(signal).await
    }

    async fn resize(&self, size: crate::protocol::PtySize) -> Result<()> {
        self.client.resize_exec(&self.exec_id, size).await
    }
}
