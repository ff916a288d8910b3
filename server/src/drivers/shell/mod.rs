//! The shell layer: what a driver that reaches its sandbox through a POSIX shell shares (docker today, SSH next).
//!
//! A driver supplies a `Transport`: a way to start a command on the remote machine with stdin, stdout and stderr
//! attached, and to learn its exit code. On top of it this module builds the helper shell (`agent`), the scripts it
//! runs (`scripts`), the listing parser (`listing`), process-group signalling for runs (`group`) and sync's
//! `RemoteFiles` (`files::ShellFiles`). Bulk tar in and out have default bodies that pipe tar through a command;
//! a transport with a faster way (Docker's archive API) overrides them.

pub mod agent;
pub mod files;
pub mod group;
pub mod listing;
pub mod scripts;

use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;

use crate::streams::{BoxedReader, BoxedWriter};
use crate::error::{Error, Result};

/// One piece of a remote command's output.
pub enum Chunk {
    Stdout(Bytes),
    Stderr(Bytes),
}

/// A remote command's output, stdout and stderr interleaved as they arrive.
pub type OutputStream = Pin<Box<dyn Stream<Item = Result<Chunk>> + Send>>;

/// What to start on the remote machine.
#[derive(Debug, Clone, Default)]
pub struct Command {
    /// The program and its arguments; never passed through a shell by the transport.
    pub argv: Vec<String>,
    /// Variables added to the command's environment.
    pub env: Vec<(String, String)>,
    /// Where it starts; `None` is the transport's default.
    pub working_dir: Option<String>,
    /// Who runs it; `None` is the transport's helper identity (root in a container sandlink manages).
    pub user: Option<String>,
    /// Whether the command's stdin is attached; otherwise it reads an empty stdin.
    pub stdin: bool,
}

/// A started command: its stdin, its output and, once the output has ended, its exit code.
pub struct Channel {
    /// Writes to the command's stdin (a sink that drops the bytes when stdin was not asked for).
    pub input: BoxedWriter,
    pub output: OutputStream,
    /// The exit code; to be awaited after `output` has ended (a transport may learn it only then).
    pub exit: BoxFuture<'static, Result<i64>>,
}

/// How a driver starts commands in its sandbox. Each command runs as the leader of its own process group
/// (`group` relies on that to signal a run's whole tree).
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Starts `command` with its output attached.
    async fn open(&self, command: Command) -> Result<Channel>;

    /// The sandbox as error messages name it, e.g. `container 0123456789ab`.
    fn describe(&self) -> String;

    /// Unpacks `archive` into `<root>/<directory>`, creating `directory` (a relative path) first.
    ///
    /// The default pipes the archive through `tar -x` in one command.
    async fn upload_tar(&self, root: &str, directory: &str, archive: BoxedReader) -> Result<()> {
        let script = r#"mkdir -p "$1/$2" && cd "$1/$2" && exec tar -xf -"#;
        let command = Command {
            argv: vec!["/bin/sh".into(), "-c".into(), script.into(), "sandlink".into(), root.into(), directory.into()],
            stdin: true,
            ..Command::default()
        };
        let mut channel = self.open(command).await?;
        let mut input = channel.input;
        let mut archive = archive;
        let writing = async move {
            let copied = tokio::io::copy(&mut archive, &mut input).await;
            let _ = input.shutdown().await;
            copied
        };
        let reading = async {
            let mut stderr = Vec::new();
            while let Some(chunk) = channel.output.next().await {
                if let Chunk::Stderr(bytes) = chunk? {
                    stderr.extend_from_slice(&bytes);
                }
            }
            Ok::<_, Error>(stderr)
        };
        let (copied, stderr) = tokio::join!(writing, reading);
        let stderr = stderr?;
        let code = channel.exit.await?;
        if code != 0 {
            return Err(Error::Remote {
                status: None,
                message: format!(
                    "Unpacking an upload in {} failed (exit {code}): {}",
                    self.describe(),
                    String::from_utf8_lossy(&stderr).trim()
                ),
            });
        }
        copied.map_err(|error| Error::io("Could not send the upload archive", error))?;
        Ok(())
    }

    /// A tar stream of `paths` (relative to `root`, already checked), named relative to `root`; paths that no
    /// longer exist are left out.
    ///
    /// The default streams the output of one `tar -c` command.
    async fn download_tar(&self, root: &str, paths: Vec<String>) -> Result<BoxedReader> {
        // Missing paths are dropped first, so tar's exit code and stderr are not the caller's business. GNU tar
        // would read backslashes in the names as escapes unless told not to.
        let script = r#"cd "$1" || exit 3
shift
n=$#
while [ "$n" -gt 0 ]; do { [ -e "$1" ] || [ -L "$1" ]; } && set -- "$@" "$1"; shift; n=$((n - 1)); done
[ $# -gt 0 ] || exec head -c 1024 /dev/zero
case "$(tar --version 2>/dev/null)" in *"GNU tar"*) exec tar --no-unquote -cf - -- "$@" ;; esac
exec tar -cf - -- "$@""#;
        let mut argv = vec!["/bin/sh".into(), "-c".into(), script.into(), "sandlink".into(), root.into()];
        argv.extend(paths);
        let channel = self.open(Command { argv, ..Command::default() }).await?;
        let described = self.describe();
        let (reader, mut writer) = tokio::io::duplex(1 << 20);
        let (mut output, exit) = (channel.output, channel.exit);
        tokio::spawn(async move {
            while let Some(chunk) = output.next().await {
                match chunk {
                    Ok(Chunk::Stdout(bytes)) => {
                        if writer.write_all(&bytes).await.is_err() {
                            return;
                        }
                    }
                    Ok(Chunk::Stderr(bytes)) => {
                        tracing::debug!(sandbox = %described, stderr = %String::from_utf8_lossy(&bytes), "tar while downloading")
                    }
                    Err(error) => {
                        tracing::warn!(%error, "a download from {described} broke off");
                        return;
                    }
                }
            }
            match exit.await {
                Ok(0) => {}
                Ok(code) => tracing::warn!(code, "tar in {described} ended with an error while downloading"),
                Err(error) => tracing::warn!(%error, "a download from {described} did not report its end"),
            }
            let _ = writer.shutdown().await;
        });
        Ok(Box::pin(reader))
    }
}

/// What a command printed and how it ended.
pub struct Reply {
    pub status: i64,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Runs a command to its end without stdin and collects its output; for sandlink's own one-off helper commands.
pub async fn collect(transport: &dyn Transport, command: Command) -> Result<Reply> {
    let mut channel = transport.open(Command { stdin: false, ..command }).await?;
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    while let Some(chunk) = channel.output.next().await {
        match chunk? {
            Chunk::Stdout(bytes) => stdout.extend_from_slice(&bytes),
            Chunk::Stderr(bytes) => stderr.extend_from_slice(&bytes),
        }
    }
    let status = channel.exit.await?;
    Ok(Reply { status, stdout, stderr })
}

/// Quotes a value for the shell: single quotes, with embedded single quotes closed, escaped and reopened.
pub fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

#[cfg(test)]
pub(crate) mod tests;
