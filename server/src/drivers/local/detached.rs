//! The local driver's detached runs: each gets an agent of its own, outside the server's session and free of its
//! death signals, that serves the one run and ends with it; the run's files are in the session's directory on this
//! machine (`runs/<runId>`), read there directly.

use std::path::{Path, PathBuf};

use super::LocalSandbox;
use crate::drivers::detached::{read_host_folder, wrapper_arguments, DetachedSpec, DetachedStart, Piece, READ_BYTES, WRAPPER};
use crate::drivers::Signal;
use crate::error::{IoContext, Result};

/// How long a detached run's agent outlives the run's own limit at most, should its wrapper be stuck.
pub const DETACHED_AGENT_GRACE_SECONDS: u64 = 30;

/// The agent's process id on this machine, in the run's folder.
const AGENT_PID_FILE: &str = "agent.pid";

impl LocalSandbox {
    /// Starts the run's own agent, and through it the wrapper that writes the run's files.
    pub(super) async fn start_detached_run(&self, spec: DetachedSpec) -> Result<DetachedStart> {
        let (cwd, env) = self.run_setting(&spec.exec)?;
        let folder = self.session_dir.join("runs").join(&spec.run_id);
        std::fs::create_dir_all(&folder).context(|| format!("Could not create the run folder {}", folder.display()))?;
        for name in ["out", "err"] {
            let path = folder.join(name);
            std::fs::write(&path, b"").context(|| format!("Could not create {}", path.display()))?;
        }
        let (client, pid, waiter) = self.launch_agent(&folder, Some((&folder, spec.limit)))?.wait().await?;
        // The thread keeps waiting for the agent while this server lives; after that, init reaps it.
        drop(waiter);
        let pid_path = folder.join(AGENT_PID_FILE);
        std::fs::write(&pid_path, pid.to_string()).context(|| format!("Could not write {}", pid_path.display()))?;
        let mut arguments = vec!["-c".to_string(), WRAPPER.to_string(), "sandlink".to_string()];
        arguments.push(folder.to_string_lossy().into_owned());
        arguments.extend(wrapper_arguments(&spec, &cwd.to_string_lossy()));
        let process = client.spawn("/bin/sh".into(), arguments, cwd, env, false, None).await?;
        // The wrapper writes to the files; dropping the connection leaves it running (the agent is detached).
        drop(process);
        Ok(DetachedStart { folder: folder.to_string_lossy().into_owned(), host_folder: Some(folder) })
    }
}

/// Reads a local detached run's folder; its agent being gone with no `code` written means the run was lost.
pub fn read_run_folder(folder: &Path, stdout_from: u64, stderr_from: u64) -> Result<Option<Piece>> {
    read_host_folder(folder, stdout_from, stderr_from, READ_BYTES, || agent_of(folder).is_some())
}

/// The pid of a run's agent while it still runs (checked against its command line, so a reused pid is not taken).
fn agent_of(folder: &Path) -> Option<libc::pid_t> {
    let pid: libc::pid_t = std::fs::read_to_string(folder.join(AGENT_PID_FILE)).ok()?.trim().parse().ok()?;
    let command_line = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let needle = folder.to_string_lossy();
    String::from_utf8_lossy(&command_line).contains(needle.as_ref()).then_some(pid)
}

/// Signals a detached run's process group. Its `pid` file holds the group's id as the sandbox sees it (bubblewrap
/// gives the sandbox a pid namespace of its own); the agent's descendants tell which process that is here (the last
/// `NSpid` of a process is its id in its own namespace), and the wrapper then writes the exit as for any end.
pub fn signal_detached_run(folder: &Path, signal: Signal) {
    let Some(agent) = agent_of(folder) else { return };
    let Some(inside) = std::fs::read_to_string(folder.join("pid")).ok().and_then(|text| text.trim().parse::<u32>().ok()) else {
        return;
    };
    let leader = super::processes::descendants_of(agent).into_iter().find(|pid| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let namespaced = status.lines().find_map(|line| line.strip_prefix("NSpid:"));
        namespaced.and_then(|ids| ids.split_whitespace().last()).and_then(|id| id.parse::<u32>().ok()) == Some(inside)
    });
    let number = match signal {
        Signal::Terminate => libc::SIGTERM,
        Signal::Kill => libc::SIGKILL,
    };
    if let Some(leader) = leader {
        // SAFETY: kill(2) on the process group led by a descendant of the run's own agent, found just now.
        unsafe { libc::kill(-leader, number) };
    }
}

/// Stops a detached run by stopping its agent, which ends every process of the run: SIGTERM goes to the agent
/// itself (under bubblewrap, the recorded pid is bubblewrap's, which passes nothing on), whose clean-up ends the
/// rest; SIGKILL goes to everything.
pub fn stop_detached_agent(folder: &Path, signal: Signal) {
    let Some(pid) = agent_of(folder) else { return };
    match signal {
        Signal::Terminate => {
            let agent = std::iter::once(pid).chain(super::processes::descendants_of(pid)).find(|candidate| {
                // `sandlink sandbox-agent …`, not the bubblewrap whose arguments name it.
                let command_line = std::fs::read(format!("/proc/{candidate}/cmdline")).unwrap_or_default();
                command_line.split(|byte| *byte == 0).nth(1) == Some(&b"sandbox-agent"[..])
            });
            if let Some(agent) = agent {
                // SAFETY: kill(2) on the run's agent, found below its recorded pid just now.
                unsafe { libc::kill(agent, libc::SIGTERM) };
            }
        }
        Signal::Kill => {
            super::processes::kill_descendants(pid);
            // SAFETY: kill(2) on the run's agent (or its bubblewrap), identified by its command line just now.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Stops every detached run whose folder is under `runs` (the session is being removed).
pub fn stop_detached_agents(runs: &Path) {
    let Ok(entries) = std::fs::read_dir(runs) else { return };
    let folders: Vec<PathBuf> = entries.filter_map(|entry| entry.ok().map(|entry| entry.path())).collect();
    for folder in &folders {
        stop_detached_agent(folder, Signal::Terminate);
    }
    if folders.iter().any(|folder| agent_of(folder).is_some()) {
        std::thread::sleep(std::time::Duration::from_millis(200));
        for folder in &folders {
            stop_detached_agent(folder, Signal::Kill);
        }
    }
}

