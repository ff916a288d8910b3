//! Local processes for drivers that run on this machine: each run in its own process group, signalled as a tree.

use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::Arc;

use async_trait::async_trait;
use futures::FutureExt;

use super::{ExitStatus, Process, ProcessControl, Signal};
use crate::error::{Error, Result};

/// A pipe this large lets a fast writer hand over big chunks per read, which matters for gigabyte outputs.
const PIPE_CAPACITY_BYTES: libc::c_int = 1 << 20;

/// Spawns `command` as the leader of a new process group, with piped output.
pub fn spawn(mut command: tokio::process::Command, stdin: bool) -> Result<Process> {
    command
        .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    let program = format!("{:?}", command.as_std().get_program());
    let mut child = command.spawn().map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => Error::InvalidParams(format!(
            "The program {program} was not found. Check its name, or run it through the shell by leaving out `args`."
        )),
        _ => Error::io(format!("Could not start {program}"), source),
    })?;
    let pid = child.id().ok_or_else(|| Error::Internal("The process exited before its id was read.".into()))?;
    let stdout = child.stdout.take().ok_or_else(|| Error::Internal("stdout was not piped".into()))?;
    let stderr = child.stderr.take().ok_or_else(|| Error::Internal("stderr was not piped".into()))?;
    enlarge_pipe(stdout.as_raw_fd());
    enlarge_pipe(stderr.as_raw_fd());
    let stdin = child.stdin.take().map(|writer| Box::pin(writer) as super::BoxedWriter);
    let exit = async move {
        let status = child.wait().await.map_err(|source| Error::io("Waiting for the process failed", source))?;
        Ok(ExitStatus {
            code: status.code(),
            signal: status.signal().map(signal_name),
            message: None,
        })
    }
    .boxed();
    Ok(Process {
        stdout: Box::pin(stdout),
        stderr: Box::pin(stderr),
        stdin,
        control: Arc::new(GroupControl { process_group: pid as libc::pid_t }),
        exit,
    })
}

fn enlarge_pipe(fd: std::os::fd::RawFd) {
    // Failure only costs throughput (the limit in /proc/sys/fs/pipe-max-size may be lower), so it is ignored.
    // SAFETY: fcntl on a file descriptor we own, with an integer argument.
    unsafe {
        libc::fcntl(fd, libc::F_SETPIPE_SZ, PIPE_CAPACITY_BYTES);
    }
}

/// Signals every process in a run's process group.
pub struct GroupControl {
    process_group: libc::pid_t,
}

#[async_trait]
impl ProcessControl for GroupControl {
    async fn signal(&self, signal: Signal) -> Result<()> {
        let number = match signal {
            Signal::Terminate => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
        };
        // SAFETY: kill(2) with a negative pid signals the group; it has no memory effects.
        let outcome = unsafe { libc::kill(-self.process_group, number) };
        if outcome == 0 {
            return Ok(());
        }
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::ESRCH) {
            // The whole group is gone already, which is what the caller wanted.
            return Ok(());
        }
        Err(Error::io("Could not signal the run's processes", error))
    }
}

/// Signal numbers and their conventional names, as users see them in shells; one table for both directions.
const SIGNAL_NAMES: [(i32, &str); 17] = [
    (libc::SIGHUP, "SIGHUP"),
    (libc::SIGINT, "SIGINT"),
    (libc::SIGQUIT, "SIGQUIT"),
    (libc::SIGILL, "SIGILL"),
    (libc::SIGTRAP, "SIGTRAP"),
    (libc::SIGABRT, "SIGABRT"),
    (libc::SIGBUS, "SIGBUS"),
    (libc::SIGFPE, "SIGFPE"),
    (libc::SIGKILL, "SIGKILL"),
    (libc::SIGUSR1, "SIGUSR1"),
    (libc::SIGSEGV, "SIGSEGV"),
    (libc::SIGUSR2, "SIGUSR2"),
    (libc::SIGPIPE, "SIGPIPE"),
    (libc::SIGALRM, "SIGALRM"),
    (libc::SIGTERM, "SIGTERM"),
    (libc::SIGXCPU, "SIGXCPU"),
    (libc::SIGXFSZ, "SIGXFSZ"),
];

/// The conventional name of a signal number, as users see it in shells (`SIG<number>` for the rest).
pub fn signal_name(number: i32) -> String {
    match SIGNAL_NAMES.iter().find(|(known, _)| *known == number) {
        Some((_, name)) => (*name).to_string(),
        None => format!("SIG{number}"),
    }
}

/// The number of a signal named by `signal_name`, or `None` for a name it never produces.
pub fn signal_number(name: &str) -> Option<i32> {
    if let Some((number, _)) = SIGNAL_NAMES.iter().find(|(_, known)| *known == name) {
        return Some(*number);
    }
    name.strip_prefix("SIG")?.parse().ok().filter(|number| (1..=64).contains(number))
}
