//! The engine's runs: starting one in a session (after a flush of pending sync), the table of runs in flight,
//! their input and cancellation.

use std::sync::Arc;
use std::time::Duration;

use crate::locks::lock;
use super::{output, run, terminal, Engine, RunHandle};
use crate::drivers::ExecSpec;
use crate::error::{Error, IoContext, Result};
use crate::ids::short_id;
use crate::protocol::{RunInfo, RunParams, RunsResult, SessionState};

/// How many ended runs `sandlink/runs` remembers (for the whole server).
const RECENT_RUNS: usize = 50;

impl Engine {
    /// Starts a run; the caller must release the returned sender once it has answered the request.
    pub async fn run(&self, mut params: RunParams) -> Result<(String, tokio::sync::oneshot::Sender<()>)> {
        if self.files_only {
            return Err(Error::InvalidParams("This sandlink command only syncs files; its sessions run no commands.".into()));
        }
        let session = self.session(&params.session_id)?;
        if let Some(task) = params.task.take() {
            if !params.command.is_empty() {
                return Err(Error::InvalidParams("Give a command line or a task name, not both.".into()));
            }
            params.command = self.task_command(session.workspace.as_deref(), &task).await?;
        }
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
        if let Some(size) = params.pty {
            terminal::check(&*session.sandbox, size)?;
            terminal::prepare(&mut params);
        }
        if params.command.trim().is_empty() {
            return Err(Error::InvalidParams("The command is empty; give a command line or a program.".into()));
        }
        session.touch();
        // A command never runs against stale files: what was saved or changed is uploaded first.
        if let Some(sync) = session.sync.get() {
            sync.flush().await?;
        }
        let limit = self.run_limit(&session, &params)?;
        let run_id = format!("run-{}", short_id());
        let logs_dir = self.state_dir.join("logs");
        tokio::fs::create_dir_all(&logs_dir)
            .await
            .context(|| format!("Could not create the log directory {}", logs_dir.display()))?;
        // A working directory that is a link out of the root (to `/etc`, say) is refused before any driver sees it;
        // one that passes is handed on resolved, so the run starts where the check looked.
        let cwd = match (params.cwd.as_deref(), session.sandbox.files()) {
            (Some(cwd), Some(files)) => {
                Some(crate::sync::resolve::check_run_directory(&*files, &session.sandbox.remote_root(), cwd).await?)
            }
            _ => params.cwd.clone(),
        };
        if params.detach {
            if params.stdin {
                return Err(Error::InvalidParams(
                    "A detached run has no stdin: it goes on without the editor; leave out `stdin` or `detach`.".into(),
                ));
            }
            // The wrapper runs a shell command line: with `args`, each part is quoted so it arrives as one argument.
            let command = match &params.args {
                Some(args) => std::iter::once(&params.command)
                    .chain(args.iter())
                    .map(|part| crate::drivers::shell::quote(part))
                    .collect::<Vec<_>>()
                    .join(" "),
                None => params.command.clone(),
            };
            // The run's (or the profile's) hard limit is enforced by its wrapper in the sandbox, with or without a server.
            let hard_limit = limit.as_ref().map(|limit| limit.max_duration);
            let record = self.start_detached(&session, &run_id, &params, cwd, command, hard_limit).await?;
            if let Some(limit) = limit {
                self.lifecycle.watch_detached_run(&run_id, &session, limit);
                self.forget_limit_once_ended(&run_id);
            }
            let (answered_sender, answered) = tokio::sync::oneshot::channel();
            self.follow_detached(record, session.clone(), answered);
            return Ok((run_id, answered_sender));
        }
        let process = session
            .sandbox
            .exec(ExecSpec {
                command: params.command.clone(),
                args: params.args.clone(),
                cwd,
                env: params.env.clone().unwrap_or_default(),
                stdin: params.stdin,
                timeout: params.timeout_ms.map(Duration::from_millis),
                pty: params.pty,
            })
            .await?;
        // A driver whose provider cannot write to a command's input starts the run without a writer; input is then
        // refused as `unsupported` rather than as a mistake of the caller's.
        let stdin_refusal = (params.stdin && process.stdin.is_none())
            .then(|| Error::unsupported_by(session.sandbox.driver_id(), "writing to a run's stdin").to_string());
        // Read for each run, so a changed config.toml applies from the next run on. A file that does not parse leaves
        // the default here; the requests that read profiles report what is wrong with it.
        let log_cap = match self.load_profiles(None).await {
            Ok(profiles) => profiles.log_cap(),
            Err(_) => crate::profiles::runs::DEFAULT_LOG_CAP_BYTES,
        };
        let context = run::RunContext {
            run_id: run_id.clone(),
            session_id: session.id.clone(),
            events: self.events.clone(),
            log_path: logs_dir.join(format!("{run_id}.log")),
            command: match &params.args {
                Some(args) => std::iter::once(params.command.clone()).chain(args.iter().cloned()).collect::<Vec<_>>().join(" "),
                None => params.command.clone(),
            },
            timeout: params.timeout_ms.map(Duration::from_millis),
            lossless: self.lossless_output,
            paths: session.workspace.as_ref().and_then(|workspace| {
                output::PathMapper::new(&session.sandbox.remote_root(), &workspace.to_string_lossy())
            }),
            stdin_refusal,
            usd_per_hour: session.info().cost.map(|cost| cost.usd_per_hour),
            terminal: params.pty.is_some(),
            log_cap,
        };
        let (handle, answered, task) = run::start(context, process)?;
        let handle_for_end = handle.clone();
        lock(&self.runs).insert(run_id.clone(), handle);
        self.audit_run_started(&run_id, &params, limit.as_ref());
        if let Some(limit) = limit {
            self.lifecycle.watch_run(&run_id, &session, limit);
        }
        self.watch_ports(&session);
        let runs = self.runs.clone();
        let recent = self.recent_runs.clone();
        let finished = handle_for_end;
        let audit = self.audit.clone();
        tokio::spawn(async move {
            let _ = task.await;
            if let Some(exit) = finished.exit.get() {
                audit.record("runEnded", super::manage::run_ended_fields(&finished.session_id, exit));
            }
            {
                let mut recent = lock(&recent);
                recent.push_back(finished.clone());
                while recent.len() > RECENT_RUNS {
                    recent.pop_front();
                }
            }
            lock(&runs).remove(&finished.run_id);
            finished.mark_ended();
        });
        Ok((run_id, answered))
    }


    /// Runs in flight, then those that ended lately (at most `RECENT_RUNS` of them), each newest first; only those
    /// of one session when it is given.
    pub fn list_runs(&self, session_id: Option<&str>) -> RunsResult {
        let wanted = |run: &&Arc<RunHandle>| session_id.is_none_or(|id| run.session_id == id);
        let mut running: Vec<Arc<RunHandle>> = lock(&self.runs).values().filter(wanted).cloned().collect();
        running.sort_by_key(|run| std::cmp::Reverse(run.started));
        let ended: Vec<Arc<RunHandle>> = lock(&self.recent_runs).iter().rev().filter(wanted).cloned().collect();
        let info = |run: &Arc<RunHandle>| RunInfo {
            run_id: run.run_id.clone(),
            session_id: run.session_id.clone(),
            command: run.command.clone(),
            started_at: run.started_at.clone(),
            exit: run.exit.get().cloned(),
            cost: match run.exit.get() {
                Some(exit) => exit.cost.clone(),
                None => self
                    .session(&run.session_id)
                    .ok()
                    .and_then(|session| session.info().cost)
                    .map(|cost| crate::cost::run_cost(cost.usd_per_hour, run.started.elapsed().as_millis() as u64)),
            },
            detached: false,
        };
        // A run whose exit was just sent may still be in the table for a moment: it is listed once, as ended.
        let ended_ids: std::collections::HashSet<&str> = ended.iter().map(|run| run.run_id.as_str()).collect();
        let runs = running
            .iter()
            .filter(|run| !ended_ids.contains(run.run_id.as_str()))
            .chain(ended.iter())
            .map(info)
            .chain(self.detached_run_infos(session_id))
            .collect();
        RunsResult { runs }
    }

    /// The runs in flight in a session, newest first.
    pub fn runs_of(&self, session_id: &str) -> Vec<Arc<RunHandle>> {
        let mut runs: Vec<Arc<RunHandle>> =
            lock(&self.runs).values().filter(|run| run.session_id == session_id).cloned().collect();
        runs.sort_by_key(|run| std::cmp::Reverse(run.started));
        runs
    }


    pub fn run_handle(&self, run_id: &str) -> Result<Arc<RunHandle>> {
        lock(&self.runs).get(run_id).cloned().ok_or_else(|| Error::UnknownRun(run_id.to_string()))
    }

    /// Queues input for a run; see `RunHandle::input` (it never waits for the process to read).
    pub async fn input(&self, run_id: &str, text: &str, eof: bool) -> Result<()> {
        self.run_handle(run_id)?.input(text, eof)
    }

    /// Changes the window size of a run's terminal; see `RunHandle::resize`.
    pub async fn resize(&self, run_id: &str, size: crate::protocol::PtySize) -> Result<()> {
        terminal::check_size(size)?;
        self.run_handle(run_id)?.resize(size).await
    }

    pub fn cancel(&self, run_id: &str) -> Result<()> {
        match self.run_handle(run_id) {
            Ok(run) => run.cancel(),
            Err(_) => self.cancel_detached(run_id)?,
        }
        Ok(())
    }


    /// Waits until `run` has ended and left the table, or `limit` passed.
    pub(super) async fn wait_for_run_end(&self, run: &RunHandle, limit: Duration) {
        let _ = tokio::time::timeout(limit, run.ended()).await;
    }
}
