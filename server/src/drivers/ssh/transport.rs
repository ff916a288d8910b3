//! The shell transport over ssh: each command is one channel of the session's ControlMaster (no local process per
//! command), reopened on a new master when the old one has dropped.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use openssh::{Session, Stdio};
use tokio::io::AsyncReadExt;

use super::connection::Connection;
use crate::drivers::shell::{quote, Channel, Chunk, Command, Transport};
use crate::error::{Error, Result};

/// Starts the command given as `$2…` in the directory `$1` (the remote home when empty). The remote login shell
/// runs this line; `exec` keeps the command the leader of the process group sshd made for the channel.
const START: &str = r#"d=$1; shift; [ -z "$d" ] || cd "$d" || exit 126; exec "$@""#;

/// Commands on one ssh host.
pub struct SshTransport {
    pub connection: Arc<Connection>,
}

impl SshTransport {
    /// The line the remote login shell runs: `/bin/sh -c START` with every value quoted.
    fn command_line(command: &Command) -> String {
        let mut line = format!("exec /bin/sh -c {} sandlink {}", quote(START), quote(command.working_dir.as_deref().unwrap_or("")));
        if !command.env.is_empty() {
            line.push_str(" env");
            for (name, value) in &command.env {
                line.push(' ');
                line.push_str(&quote(&format!("{name}={value}")));
            }
        }
        for argument in &command.argv {
            line.push(' ');
            line.push_str(&quote(argument));
        }
        line
    }

    async fn spawn(session: Arc<Session>, line: &str, stdin: bool) -> Result<openssh::Child<Arc<Session>>> {
        Session::to_raw_command(session, line)
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .await
            .map_err(|error| Error::Remote { status: None, message: format!("Could not start a command over ssh: {error}") })
    }
}

#[async_trait]
impl Transport for SshTransport {
    async fn open(&self, command: Command) -> Result<Channel> {
        let line = Self::command_line(&command);
        let (session, generation) = self.connection.session().await;
        let mut child = match Self::spawn(session, &line, command.stdin).await {
            Ok(child) => child,
            Err(error) => {
                // The master may have dropped: one new master, then one more try.
                tracing::debug!(%error, "starting a command failed; reconnecting");
                self.connection.reconnect(generation).await?;
                let (session, _) = self.connection.session().await;
                Self::spawn(session, &line, command.stdin).await?
            }
        };
        let input: crate::streams::BoxedWriter = match child.stdin().take() {
            Some(stdin) => Box::pin(stdin),
            None => Box::pin(tokio::io::sink()),
        };
        let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Chunk>>(16);
        let mut readers = Vec::new();
        if let Some(stdout) = child.stdout().take() {
            readers.push(tokio::spawn(pump(stdout, sender.clone(), Chunk::Stdout)));
        }
        if let Some(stderr) = child.stderr().take() {
            readers.push(tokio::spawn(pump(stderr, sender.clone(), Chunk::Stderr)));
        }
        drop(sender);
        let output = futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|chunk| (chunk, receiver))
        })
        .boxed();
        let host = self.connection.target().host.clone();
        let exit = Box::pin(async move {
            for reader in readers {
                let _ = reader.await;
            }
            match child.wait().await {
                Ok(status) => match (status.code(), std::os::unix::process::ExitStatusExt::signal(&status)) {
                    (Some(code), _) => Ok(i64::from(code)),
                    (None, Some(signal)) => Ok(128 + i64::from(signal)),
                    (None, None) => Ok(-1),
                },
                Err(error) => Err(Error::Remote {
                    status: None,
                    message: format!("The connection to {host} broke while a command ran ({error})."),
                }),
            }
        });
        Ok(Channel { input, output, exit })
    }

    fn describe(&self) -> String {
        format!("ssh host {}", self.connection.target().host)
    }
}

/// Reads one of a command's outputs into the channel's stream until it ends.
async fn pump(
    mut reader: impl tokio::io::AsyncRead + Unpin,
    sender: tokio::sync::mpsc::Sender<Result<Chunk>>,
    wrap: fn(Bytes) -> Chunk,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buffer).await {
            Ok(0) => return,
            Ok(read) => {
                if sender.send(Ok(wrap(Bytes::copy_from_slice(&buffer[..read])))).await.is_err() {
                    return;
                }
            }
            Err(error) => {
                let _ = sender.send(Err(Error::io("Reading a command's output over ssh failed", error))).await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_should_quote_every_value() {
        let command = Command {
            argv: vec!["printf".into(), "%s'x".into()],
            env: vec![("A".into(), "b c".into())],
            working_dir: Some("/w d".into()),
            ..Command::default()
        };
        let line = SshTransport::command_line(&command);
        assert!(line.starts_with("exec /bin/sh -c '"), "{line}");
        assert!(line.ends_with(r#" sandlink '/w d' env 'A=b c' 'printf' '%s'\''x'"#), "{line}");
    }
}
