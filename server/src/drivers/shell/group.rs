//! Runs: where they start, the command line that records a run's process group, the control that signals it, and
//! the split of its output into the engine's two readers.
//!
//! A remote API seldom signals a process it started (Docker's cannot signal an exec), so each run records its
//! process group under a token (`scripts::RUN`) and a signal is a request to the helper shell (`scripts::SIGNAL`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use super::agent::Agent;
use super::files::checked_relative;
use super::{scripts, Chunk, OutputStream};
use crate::drivers::{ProcessControl, Signal};
use crate::streams::BoxedReader;
use crate::error::Result;

/// How much output may wait in each pipe between the sandbox and the engine's reader.
const PIPE_BYTES: usize = 1 << 20;

/// The absolute directory a run starts in: the root for no `cwd`, else `cwd` inside the root (given relative to
/// it, or absolute under it), refusing one that leaves it.
pub fn run_directory(root: &str, cwd: Option<&str>) -> Result<String> {
    match cwd {
        None | Some("") | Some(".") => Ok(root.to_string()),
        Some(cwd) => {
            let relative = cwd.strip_prefix(&format!("{root}/")).unwrap_or(cwd);
            if relative == root {
                Ok(root.to_string())
            } else {
                Ok(format!("{root}/{}", checked_relative(relative)?))
            }
        }
    }
}

/// A run's output as the engine reads it.
pub struct SplitOutput {
    pub stdout: BoxedReader,
    pub stderr: BoxedReader,
    /// Turns true once the sandbox has closed the output (the run has ended or closed both streams).
    pub ended: watch::Receiver<bool>,
}

/// Splits interleaved output into stdout and stderr readers, read in a task of its own.
pub fn split_output(mut output: OutputStream) -> SplitOutput {
    let (stdout_reader, mut stdout_writer) = tokio::io::duplex(PIPE_BYTES);
    let (stderr_reader, mut stderr_writer) = tokio::io::duplex(PIPE_BYTES);
    let (ended_sender, ended) = watch::channel(false);
    tokio::spawn(async move {
        // Keeps reading after the engine stops listening, so the sandbox is never left with a full connection.
        let mut stdout_open = true;
        let mut stderr_open = true;
        while let Some(chunk) = output.next().await {
            match chunk {
                Ok(Chunk::Stdout(bytes)) if stdout_open => stdout_open = stdout_writer.write_all(&bytes).await.is_ok(),
                Ok(Chunk::Stderr(bytes)) if stderr_open => stderr_open = stderr_writer.write_all(&bytes).await.is_ok(),
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(%error, "a run's output stream broke");
                    break;
                }
            }
        }
        let _ = stdout_writer.shutdown().await;
        let _ = stderr_writer.shutdown().await;
        let _ = ended_sender.send(true);
    });
    SplitOutput { stdout: Box::pin(stdout_reader), stderr: Box::pin(stderr_reader), ended }
}

/// A fresh token naming one run's process-group record.
pub fn run_token() -> String {
    format!("run-{}", crate::ids::short_id())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_directory_should_stay_inside_the_root() {
        assert_eq!(run_directory("/w", None).unwrap(), "/w");
        assert_eq!(run_directory("/w", Some(".")).unwrap(), "/w");
        assert_eq!(run_directory("/w", Some("a/b")).unwrap(), "/w/a/b");
        assert_eq!(run_directory("/w", Some("/w/a")).unwrap(), "/w/a");
        assert!(run_directory("/w", Some("../x")).is_err());
        assert!(run_directory("/w", Some("/etc")).is_err());
    }

    #[test]
    fn run_argv_should_pass_arguments_apart_or_through_a_shell() {
        let with_args = run_argv("run-1", "ls", Some(&["-l".to_string()]));
        assert_eq!(with_args[3..], ["run-1", "ls", "-l"]);
        let through_shell = run_argv("run-1", "ls -l | wc", None);
        assert_eq!(through_shell[3..], ["run-1", "/bin/sh", "-c", "ls -l | wc"]);
    }
}
