//! Runs as process groups: the command line that records a run's group, and the control that signals it.
//!
//! A remote API seldom signals a process it started (Docker's cannot signal an exec), so each run records its
//! process group under a token (`scripts::RUN`) and a signal is a request to the helper shell (`scripts::SIGNAL`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use super::agent::Agent;
use super::scripts;
use crate::drivers::{ProcessControl, Signal};
use crate::error::Result;

/// A fresh token naming one run's process-group record.
pub fn run_token() -> String {
    format!("run-{}", crate::engine::short_id())
}

/// The command line that runs `command` (with `args`, or through `/bin/sh -c` without them) and records its process
/// group under `token`.
pub fn run_argv(token: &str, command: &str, args: Option<&[String]>) -> Vec<String> {
    let mut argv = vec!["/bin/sh".to_string(), "-c".to_string(), scripts::RUN.to_string(), token.to_string()];
    match args {
        Some(args) => {
            argv.push(command.to_string());
            argv.extend(args.iter().cloned());
        }
        None => argv.extend(["/bin/sh".to_string(), "-c".to_string(), command.to_string()]),
    }
    argv
}

/// Signals a run's process group through a helper shell.
pub struct GroupControl {
    /// A helper shell of the session's own for signalling, so a cancel never waits behind a long upload.
    signaller: Arc<Agent>,
    token: String,
    /// Set once sandlink has signalled the run, so its exit can be reported as a signal.
    signalled: Arc<AtomicBool>,
    /// Set by the driver once the run's main process has ended.
    finished: Arc<AtomicBool>,
}

impl GroupControl {
    /// A control for the run recorded under `token`; the driver reads `signalled` and sets `finished`.
    pub fn new(signaller: Arc<Agent>, token: String, signalled: Arc<AtomicBool>, finished: Arc<AtomicBool>) -> Self {
        GroupControl { signaller, token, signalled, finished }
    }

    async fn send(signaller: Arc<Agent>, token: String, signal: &str, last: bool) -> Result<()> {
        let arguments = [token.as_str(), signal, if last { "final" } else { "" }];
        signaller.run(scripts::SIGNAL, &arguments, None).await.map(|_| ())
    }
}

#[async_trait]
impl ProcessControl for GroupControl {
    async fn signal(&self, signal: Signal) -> Result<()> {
        let name = match signal {
            Signal::Terminate => "TERM",
            Signal::Kill => "KILL",
        };
        if self.finished.load(Ordering::SeqCst) {
            // The engine sweeps the group after every run so nothing outlives it; once the main process is gone
            // nobody waits for that, so it runs in the background and the exit is reported at once.
            let (signaller, token) = (self.signaller.clone(), self.token.clone());
            tokio::spawn(async move {
                if let Err(error) = GroupControl::send(signaller, token, name, true).await {
                    tracing::debug!(%error, "could not sweep a finished run's processes");
                }
            });
            return Ok(());
        }
        self.signalled.store(true, Ordering::SeqCst);
        Self::send(self.signaller.clone(), self.token.clone(), name, false).await
    }
}
