//! Terminals over ssh: the system `ssh -tt` through the session's ControlMaster, attached to a pseudo-terminal of
//! this machine. ssh asks the remote for a terminal of that size and passes every later size change on (its
//! `window-change` request on SIGWINCH), so a resize is a `TIOCSWINSZ` here. Unlike other ssh runs, a terminal does
//! not survive a dropped connection: it is a live session, as `ssh` itself is.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::sync::Arc;

use async_trait::async_trait;
use futures::FutureExt;

use super::connection::Connection;
use crate::drivers::process::signal_name;
use crate::drivers::pty;
use crate::drivers::shell::quote;
use crate::drivers::{ExitStatus, Process, ProcessControl, Signal};
use crate::error::{Error, Result};
use crate::protocol::PtySize;

/// The remote command line: into `directory`, with `env`, then `line` through `sh -c` (a program and its arguments
/// come as a quoted line).
pub fn remote_line(directory: &str, env: &[(String, String)], line: &str) -> String {
    let mut remote = format!("cd {} && exec env", quote(directory));
    for (name, value) in env {
        remote.push(' ');
        remote.push_str(&quote(&format!("{name}={value}")));
    }
    remote.push_str(" /bin/sh -c ");
    remote.push_str(&quote(line));
    remote
}

/// Starts `remote` (see `remote_line`) on a terminal of `size` through the session's master.
pub async fn start(connection: &Connection, remote: String, size: PtySize) -> Result<Process> {
    let (session, _) = connection.session().await;
    let socket = session.control_socket().to_path_buf();
    let (master, slave) = pty::open(size).map_err(|error| Error::io("Could not open a terminal for ssh", error))?;
    let (input_reader, input_writer) = std::io::pipe().map_err(|error| Error::io("Could not create a pipe", error))?;
    let (output_reader, output_writer) = std::io::pipe().map_err(|error| Error::io("Could not create a pipe", error))?;
    let duplicate = |fd: &OwnedFd| fd.try_clone().map_err(|error| Error::io("Could not share the terminal", error));
    let mut command = std::process::Command::new("ssh");
    command
        .arg("-tt")
        .arg("-S")
        .arg(&socket)
        .args(["-o", "ControlMaster=no", "-o", "LogLevel=ERROR"])
        .args(connection.target().ssh_arguments())
        .arg("--")
        .arg(remote)
        .stdin(duplicate(&slave)?)
        .stdout(duplicate(&slave)?)
        .stderr(slave);
    // SAFETY: between fork and exec the closure makes two system calls and nothing else.
    unsafe {
        command.pre_exec(|| {
            // ssh's own session, with the terminal as its controlling one, so SIGWINCH reaches it on a resize.
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            pty::take_as_controlling_terminal()
        });
    }
    let mut command = tokio::process::Command::from(command);
    command.kill_on_drop(false);
    let mut child = command
        .spawn()
        .map_err(|error| Error::Remote { status: None, message: format!("Could not start ssh for a terminal: {error}") })?;
    // Our copies of the terminal's ends must close, so the output ends when ssh does.
    drop(command);
    let pid = child.id().ok_or_else(|| Error::Internal("ssh exited before its id was read.".into()))? as libc::pid_t;
    let master = Arc::new(master);
    pty::relay(master.clone(), OwnedFd::from(input_reader), OwnedFd::from(output_writer));
    let stdout = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(output_reader))
        .map_err(|error| Error::io("Could not watch the terminal's output", error))?;
    let stdin = tokio::net::unix::pipe::Sender::from_owned_fd(OwnedFd::from(input_writer))
        .map_err(|error| Error::io("Could not open the terminal's input", error))?;
    let exit = async move {
        let status = child.wait().await.map_err(|error| Error::io("Waiting for ssh failed", error))?;
        // ssh answers 255 for its own failures (the connection broke); the remote shell's code otherwise.
        let message = (status.code() == Some(255)).then(|| "The ssh connection of the terminal ended.".to_string());
        Ok(ExitStatus { code: status.code(), signal: status.signal().map(signal_name), message })
    }
    .boxed();
    Ok(Process {
        stdout: Box::pin(stdout),
        stderr: Box::pin(tokio::io::empty()),
        stdin: Some(Box::pin(stdin)),
        control: Arc::new(TerminalControl { ssh: pid, master }),
        exit,
    })
}

/// Ends a terminal by ending its ssh client (the remote side then hangs up its shell); resizes its terminal.
struct TerminalControl {
    ssh: libc::pid_t,
    master: Arc<std::fs::File>,
}

#[async_trait]
impl ProcessControl for TerminalControl {
    async fn signal(&self, signal: Signal) -> Result<()> {
        let number = match signal {
            Signal::Terminate => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
        };
        // SAFETY: kill(2) on the ssh client this terminal started; an exited one answers ESRCH, which is fine.
        unsafe { libc::kill(self.ssh, number) };
        Ok(())
    }

    async fn resize(&self, size: PtySize) -> Result<()> {
        pty::set_size(self.master.as_raw_fd(), size).map_err(|error| Error::io("Could not resize the terminal", error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_line_should_quote_the_directory_the_environment_and_the_command() {
        let line = remote_line("/w/it's", &[("TERM".into(), "xterm-256color".into())], "echo 'hi'");
        assert_eq!(line, r#"cd '/w/it'\''s' && exec env 'TERM=xterm-256color' /bin/sh -c 'echo '\''hi'\'''"#);
    }
}
