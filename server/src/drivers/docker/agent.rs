//! A long-lived shell inside the container for sandlink's own file work, so a save costs no new process start.
//!
//! Every exec and every archive request makes the daemon start a process (runc, or dockerd's untar helper), which
//! costs tens of milliseconds; a save should be visible in a few. The agent is one attached `sh` that reads
//! commands from its stdin. Each request is one line: a subshell with the script and its arguments, then a marker
//! carrying the exit status. Requests that carry data first print a ready marker; the data is written only after
//! it, so the shell has parsed the whole line and `dd` reads exactly the data's length.

use std::time::Duration;

use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::client::{AttachedExec, Chunk, Client};
use crate::error::{Error, Result};

/// How long one request may take before the agent is considered stuck and replaced.
const REQUEST_LIMIT: Duration = Duration::from_secs(120);

/// The shell session and what it has printed so far.
struct Shell {
    exec: AttachedExec,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// One container's helper shell, started on first use and replaced when it breaks.
pub struct Agent {
    client: Client,
    container: String,
    shell: tokio::sync::Mutex<Option<Shell>>,
}

/// What a request printed and how it ended.
pub struct Reply {
    pub status: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Agent {
    pub fn new(client: Client, container: String) -> Self {
        Agent { client, container, shell: tokio::sync::Mutex::new(None) }
    }

    /// Runs `script` with `arguments` as `$1…` in a subshell; `data`, when given, is readable on its stdin by one
    /// `dd … count=<length> iflag=count_bytes,fullblock` (its length is appended as the last argument).
    pub async fn run(&self, script: &str, arguments: &[&str], data: Option<&[u8]>) -> Result<Reply> {
        // Held across awaits on purpose: it is an async mutex serialising requests on the one shell.
        let mut guard = self.shell.lock().await;
        if guard.is_none() {
            *guard = Some(self.start().await?);
        }
        let Some(shell) = guard.as_mut() else {
            return Err(Error::Internal("The helper shell vanished while starting.".into()));
        };
        let outcome = tokio::time::timeout(REQUEST_LIMIT, Self::request(shell, script, arguments, data)).await;
        match outcome {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(error)) => {
                *guard = None;
                Err(error)
            }
            Err(_) => {
                *guard = None;
                Err(Error::Timeout("A file operation in the container took longer than two minutes.".into()))
            }
        }
    }

    async fn start(&self) -> Result<Shell> {
        let command = vec!["/bin/sh".to_string()];
        let exec = self.client.exec(&self.container, command, Vec::new(), Some("/".into()), Some("0".into()), true).await?;
        Ok(Shell { exec, stdout: Vec::new(), stderr: Vec::new() })
    }

    async fn request(shell: &mut Shell, script: &str, arguments: &[&str], data: Option<&[u8]>) -> Result<Reply> {
        let token = crate::ids::short_id();
        let ready = format!("__sandlink_ready_{token}\n");
        let done = format!("\n__sandlink_done_{token}_");
        let mut line = String::from("( set --");
        for argument in arguments {
            line.push(' ');
            line.push_str(&quote(argument));
        }
        if let Some(data) = data {
            line.push(' ');
            line.push_str(&data.len().to_string());
        }
        line.push('\n');
        if data.is_some() {
            line.push_str(&format!("printf '%s\\n' '__sandlink_ready_{token}'\n"));
        }
        line.push_str(script);
        // Requests without data must not read the agent's stdin (a stray `cat` would swallow later requests).
        let stdin_redirect = if data.is_some() { "" } else { " </dev/null" };
        line.push_str(&format!("\n){stdin_redirect}; printf '\\n__sandlink_done_{token}_%d\\n' $?\n"));
        shell.stdout.clear();
        shell.stderr.clear();
        let write = |error: std::io::Error| Error::Remote {
            status: None,
            message: format!("The helper shell in the container stopped accepting commands: {error}"),
        };
        shell.exec.input.write_all(line.as_bytes()).await.map_err(write)?;
        shell.exec.input.flush().await.map_err(write)?;
        if let Some(data) = data {
            Self::read_until(shell, ready.as_bytes()).await?;
            shell.exec.input.write_all(data).await.map_err(write)?;
            shell.exec.input.flush().await.map_err(write)?;
        }
        let position = Self::read_until(shell, done.as_bytes()).await?;
        // The status follows the marker up to the next newline.
        loop {
            if let Some(end) = shell.stdout[position + done.len()..].iter().position(|byte| *byte == b'\n') {
                let status_text = String::from_utf8_lossy(&shell.stdout[position + done.len()..position + done.len() + end]);
                let status = status_text.trim().parse().unwrap_or(-1);
                let mut stdout = std::mem::take(&mut shell.stdout);
                stdout.truncate(position);
                if data.is_some() {
                    stdout.drain(..ready.len().min(stdout.len()));
                }
                return Ok(Reply { status, stdout, stderr: std::mem::take(&mut shell.stderr) });
            }
            Self::read_more(shell).await?;
        }
    }

    /// Reads output until `marker` appears in stdout; answers where it starts.
    async fn read_until(shell: &mut Shell, marker: &[u8]) -> Result<usize> {
        let mut searched_from = 0;
        loop {
            if let Some(found) = find(&shell.stdout[searched_from..], marker) {
                return Ok(searched_from + found);
            }
            searched_from = shell.stdout.len().saturating_sub(marker.len());
            Self::read_more(shell).await?;
        }
    }

    async fn read_more(shell: &mut Shell) -> Result<()> {
        match shell.exec.output.next().await {
            Some(Ok(Chunk::Stdout(bytes))) => shell.stdout.extend_from_slice(&bytes),
            Some(Ok(Chunk::Stderr(bytes))) => shell.stderr.extend_from_slice(&bytes),
            Some(Err(error)) => return Err(error),
            None => {
                return Err(Error::Remote {
                    status: None,
                    message: format!(
                        "The helper shell in the container ended: {}",
                        String::from_utf8_lossy(&shell.stderr).trim()
                    ),
                })
            }
        }
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

/// Quotes a value for the shell: single quotes, with embedded single quotes closed, escaped and reopened.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn quote_should_survive_single_quotes() {
        assert_eq!(quote("a'b"), r"'a'\''b'");
        assert_eq!(quote(""), "''");
    }
}
