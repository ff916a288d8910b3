//! Shells started in the container ahead of the runs that will use them, so a run skips Docker's exec start.
//!
//! Where a run's time went before (measured on the socket with paired rounds against `docker exec CONTAINER true`):
//! creating the exec is one HTTP round trip and reading its exit code another, about 1-2 ms each; starting it (runc
//! joining the container's namespaces and spawning the process) until its output ends was all the rest, about 90% of
//! the run. A spare is an exec already started: a `/bin/sh` with stdin, stdout and stderr attached, as the session's
//! run user with the session's environment, that has answered a first line. A run without stdin or terminal takes a
//! spare and sends it the line `cd DIR; export NAME=value…; echo $$ >RECORD && exec COMMAND </dev/null` (what
//! `scripts::RUN` does): the shell becomes the run, which is then the exec's main process exactly as if Docker had
//! started it (its own process group and session, output split by Docker into stdout and stderr, exit code from the
//! exec's inspect). The spare a run took is replaced once the run has ended and no other run has started for
//! `QUIET`: Docker's shim handles an exec's start and another exec's exit one after the other, so a replacement
//! starting while the next run ends holds that run's end back for the whole start (about 20 ms on two cores, which
//! made every run that followed another at once take 25 ms instead of 3). A run that finds none ready starts one
//! and waits for it. Runs with stdin or a terminal, runs with a
//! variable the shell cannot export, and a run for which no spare could start start their own exec as before. With a
//! spare, Docker's part of a run of `true` is a few milliseconds (the line in, the output and its end out, one
//! inspect). Starting each spare still costs an exec's start, tens of milliseconds, only off the run's path: a burst
//! of more runs than `READY` waits for spares on their way.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::{FutureExt, StreamExt};
use tokio::io::AsyncWriteExt;

use super::client::{AttachedExec, Client};
use crate::drivers::shell::{quote, Chunk};
use crate::error::{Error, Result};
use crate::locks::lock;

/// How many spares a session keeps ready: three, so two runs right after each other still leave one, and their
/// replacements can wait until runs pause (`QUIET`) instead of starting while the second one ends.
const READY: usize = 3;

/// How long no run may have started before the spares runs took are replaced (see the module's comment).
const QUIET: std::time::Duration = std::time::Duration::from_millis(30);

/// How long a run waits for a spare on its way before starting an exec of its own.
const WAIT_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// How long a new spare may take to answer its first line.
const ANSWER_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// One session's spare shells.
pub struct Spares {
    client: Client,
    container: String,
    user: Option<String>,
    /// The environment every run of the session has (the root, the proxy, an existing container's settings).
    env: Vec<String>,
    /// Where spares start; a run elsewhere changes directory first.
    working_dir: String,
    ready: Mutex<Vec<AttachedExec>>,
    starting: AtomicUsize,
    /// How many spares runs have taken, to tell whether one started meanwhile (`refill_when_quiet`).
    taken: AtomicUsize,
    /// Whether a task already waits for runs to pause: one is enough, however many runs asked.
    refill_pending: AtomicBool,
    /// Told whenever a spare has started or failed to, so a run can wait for one already on its way.
    changed: tokio::sync::Notify,
    closed: AtomicBool,
}

impl Spares {
    pub fn new(client: Client, container: String, user: Option<String>, env: Vec<String>, working_dir: String) -> Arc<Self> {
        Arc::new(Spares {
            client,
            container,
            user,
            env,
            working_dir,
            ready: Mutex::new(Vec::new()),
            starting: AtomicUsize::new(0),
            taken: AtomicUsize::new(0),
            refill_pending: AtomicBool::new(false),
            changed: tokio::sync::Notify::new(),
            closed: AtomicBool::new(false),
        })
    }

    /// Starts spares in the background until `READY` are ready or starting; one that fails to start is not retried
    /// until the next run asks.
    pub fn refill(self: &Arc<Self>) {
        loop {
            if self.closed.load(Ordering::SeqCst) {
                return;
            }
            let wanted = lock(&self.ready).len() + self.starting.load(Ordering::SeqCst);
            if wanted >= READY {
                return;
            }
            self.starting.fetch_add(1, Ordering::SeqCst);
            let spares = self.clone();
            tokio::spawn(async move {
                let started = spares
                    .client
                    .exec(
                        &spares.container,
                        vec!["/bin/sh".to_string()],
                        spares.env.clone(),
                        Some(spares.working_dir.clone()),
                        spares.user.clone(),
                        true,
                    )
                    .await;
                let answered = match started {
                    Ok(spare) => answered(spare).await,
                    Err(error) => Err(error),
                };
                match answered {
                    Ok(spare) if !spares.closed.load(Ordering::SeqCst) => lock(&spares.ready).push(spare),
                    Ok(_) => {}
                    Err(error) => tracing::debug!(%error, "could not start a spare shell for runs"),
                }
                spares.starting.fetch_sub(1, Ordering::SeqCst);
                spares.changed.notify_waiters();
            });
        }
    }

    /// Replaces the spares runs took once no run has started for `QUIET`, or at once when none is left.
    pub fn refill_when_quiet(self: &Arc<Self>) {
        if lock(&self.ready).is_empty() {
            self.refill();
            return;
        }
        // One waiting task for the whole session: a long series of runs would otherwise leave two sleeping tasks per
        // run, each waking every `QUIET` until the series ends.
        if self.refill_pending.swap(true, Ordering::SeqCst) {
            return;
        }
        let spares = self.clone();
        tokio::spawn(async move {
            loop {
                let taken = spares.taken.load(Ordering::SeqCst);
                tokio::time::sleep(QUIET).await;
                if spares.taken.load(Ordering::SeqCst) == taken {
                    spares.refill_pending.store(false, Ordering::SeqCst);
                    spares.refill();
                    return;
                }
            }
        });
    }

    /// Starts a spare when none is ready, so a run about to wait for one waits for one already on its way.
    pub fn refill_if_none_ready(self: &Arc<Self>) {
        if lock(&self.ready).is_empty() {
            self.refill();
        }
    }

    /// A ready spare whose shell is still there (an idle one prints nothing, so any output or end means it is gone),
    /// or the next one to start when one is on its way: it started earlier than an exec the run would start now.
    pub async fn take(&self) -> Option<AttachedExec> {
        let waited = tokio::time::timeout(WAIT_LIMIT, async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if let Some(spare) = self.take_ready() {
                    return Some(spare);
                }
                if self.starting.load(Ordering::SeqCst) == 0 {
                    return None;
                }
                changed.await;
            }
        });
        waited.await.ok().flatten()
    }

    fn take_ready(&self) -> Option<AttachedExec> {
        let mut ready = lock(&self.ready);
        while let Some(mut spare) = ready.pop() {
            if spare.output.next().now_or_never().is_none() {
                self.taken.fetch_add(1, Ordering::SeqCst);
                return Some(spare);
            }
        }
        None
    }

    /// Drops the ready spares (their shells end when their stdin closes) and starts no more.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        lock(&self.ready).clear();
    }

    /// Hands a run to a spare as its one line; the spare is then the run. `None` when the line could not be
    /// written (the shell never saw it, so the run may start elsewhere).
    pub async fn launch(&self, mut spare: AttachedExec, run: &SpareRun<'_>) -> Option<AttachedExec> {
        let line = launch_line(run, (run.working_dir != self.working_dir).then_some(run.working_dir));
        let sent = async {
            spare.input.write_all(line.as_bytes()).await?;
            spare.input.flush().await?;
            spare.input.shutdown().await
        };
        match sent.await {
            Ok(()) => Some(spare),
            Err(error) => {
                tracing::debug!(%error, "a spare shell refused its run; starting the run in an exec of its own");
                None
            }
        }
    }
}

/// The spare once its shell has answered a first line: Docker answers the exec's start before its process runs, and
/// a run should not wait for that.
async fn answered(mut spare: AttachedExec) -> Result<AttachedExec> {
    let unexpected = |what: String| Error::Remote { status: None, message: format!("A spare shell for runs {what}.") };
    spare.input.write_all(b"echo ready\n").await.map_err(|error| unexpected(format!("refused its first line: {error}")))?;
    spare.input.flush().await.map_err(|error| unexpected(format!("refused its first line: {error}")))?;
    let mut said = Vec::new();
    let waited = tokio::time::timeout(ANSWER_LIMIT, async {
        while said.len() < b"ready\n".len() {
            match spare.output.next().await {
                Some(Ok(Chunk::Stdout(bytes))) => said.extend_from_slice(&bytes),
                Some(Ok(Chunk::Stderr(bytes))) => return Err(unexpected(format!("wrote {:?}", String::from_utf8_lossy(&bytes)))),
                Some(Err(error)) => return Err(error),
                None => return Err(unexpected("ended at once".into())),
            }
        }
        Ok(())
    })
    .await;
    match waited {
        Ok(Ok(())) if said == b"ready\n" => Ok(spare),
        Ok(Ok(())) => Err(unexpected(format!("answered {:?}", String::from_utf8_lossy(&said)))),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(unexpected("did not answer within a minute".into())),
    }
}

/// What a spare needs to become a run.
pub struct SpareRun<'a> {
    /// The run's process-group record (`scripts::RUN`'s `$0`).
    pub token: &'a str,
    /// What `scripts::RUN` would `exec`: the program and its arguments, or `/bin/sh -c LINE`.
    pub argv: &'a [String],
    /// The run's own variables; every name is one the shell can export (`can_export`).
    pub env: &'a [(String, String)],
    pub working_dir: &'a str,
}

/// Whether the shell can export `name`. A run with any other name starts in an exec of its own: there Docker hands
/// the odd name to `scripts::RUN`'s shell, which drops it, where `env` in a spare would pass it on.
pub fn can_export(name: &str) -> bool {
    name.chars().next().is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && name.chars().all(|character| character.is_ascii_alphanumeric() || character == '_')
}

/// The line a spare runs, which does what `scripts::RUN` does in an exec of the run's own: into `directory` (when
/// not where the spare started), the run's variables exported, its process group recorded (the spare's shell leads
/// one, as every exec's first process does), then `exec` of the run with stdin from /dev/null, as a run without
/// stdin has from Docker. The spare's shell stands where `scripts::RUN`'s would, so the run sees the same `SHLVL`.
fn launch_line(run: &SpareRun<'_>, directory: Option<&str>) -> String {
    let mut line = String::new();
    if let Some(directory) = directory {
        // `cd` sets OLDPWD, which a run Docker started in the directory would not have.
        line.push_str(&format!("cd {} || exit 126; unset OLDPWD; ", quote(directory)));
    }
    for (name, value) in run.env {
        line.push_str(&format!("export {}; ", quote(&format!("{name}={value}"))));
    }
    line.push_str(&format!("echo $$ > {} && exec", quote(&format!("/tmp/.sandlink/{}.pid", run.token))));
    for argument in run.argv {
        line.push(' ');
        line.push_str(&quote(argument));
    }
    line.push_str(" </dev/null\n");
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_line_should_do_what_the_run_script_does_with_everything_quoted() {
        let argv = vec!["/bin/sh".to_string(), "-c".to_string(), "echo 'x'".to_string()];
        let env = vec![("A".to_string(), "b c".to_string())];
        let run = SpareRun { token: "run-1", argv: &argv, env: &env, working_dir: "/w/s p" };
        assert_eq!(
            launch_line(&run, Some("/w/s p")),
            r#"cd '/w/s p' || exit 126; unset OLDPWD; export 'A=b c'; echo $$ > '/tmp/.sandlink/run-1.pid' && exec '/bin/sh' '-c' 'echo '\''x'\''' </dev/null
"#
        );
        let bare = SpareRun { token: "run-2", argv: &argv[..1], env: &[], working_dir: "/w" };
        assert_eq!(launch_line(&bare, None), "echo $$ > '/tmp/.sandlink/run-2.pid' && exec '/bin/sh' </dev/null\n");
        assert!(can_export("_A1") && !can_export("A-B") && !can_export("1A") && !can_export(""));
    }
}
