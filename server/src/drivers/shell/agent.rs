//! A long-lived shell in the sandbox for sandlink's own file work, so a save costs no new process start.
//!
//! Starting a remote process costs tens of milliseconds (runc for a Docker exec, a channel for SSH); a save should
//! be visible in a few. The agent is one attached `sh` that reads commands from its stdin. Each request is one
//! line: a subshell with the script and its arguments, then a marker carrying the exit status. Requests that carry
//! data first print a ready marker; the data is written only after it, so the shell has parsed the whole line and
//! `dd` reads exactly the data's length.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::{quote, Channel, Chunk, Command, Reply, Transport};
use crate::error::{Error, Result};

/// How long one request may take before the agent is considered stuck and replaced.
const REQUEST_LIMIT: Duration = Duration::from_secs(120);

/// The shell session and what it has printed so far.
struct Shell {
    channel: Channel,
    /// The sandbox as error messages name it.
    described: String,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    /// Set when the shell refused a request's first line: it was gone before the request reached it.
    refused_request: bool,
}

/// One sandbox's helper shell, started on first use and replaced when it breaks.
pub struct Agent {
    transport: Arc<dyn Transport>,
    shell: tokio::sync::Mutex<Option<Shell>>,
}

impl Agent {
    pub fn new(transport: Arc<dyn Transport>) -> Self {
        Agent { transport, shell: tokio::sync::Mutex::new(None) }
    }

    /// The sandbox as error messages name it.
    pub fn describe(&self) -> String {
        self.transport.describe()
    }

    /// Runs `script` with `arguments` as `$1…` in a subshell; `data`, when given, is readable on its stdin by one
    /// `dd … count=<length> iflag=count_bytes,fullblock` (its length is appended as the last argument).
    pub async fn run(&self, script: &str, arguments: &[&str], data: Option<&[u8]>) -> Result<Reply> {
        // Held across awaits on purpose: it is an async mutex serialising requests on the one shell.
        let mut guard = self.shell.lock().await;
        let reused = guard.is_some();
        if guard.is_none() {
            *guard = Some(self.start().await?);
        }
        let Some(shell) = guard.as_mut() else {
            return Err(Error::Internal("The helper shell vanished while starting.".into()));
        };
        let mut outcome = tokio::time::timeout(REQUEST_LIMIT, Self::request(shell, script, arguments, data)).await;
        if reused && matches!(outcome, Ok(Err(_))) && shell.refused_request {
            // A shell that went away while idle (its connection dropped and came back) never saw the request:
            // a new shell gets it, once.
            tracing::debug!("the helper shell had gone away; starting a new one");
            *guard = None;
            *guard = Some(self.start().await?);
            let Some(shell) = guard.as_mut() else {
                return Err(Error::Internal("The helper shell vanished while starting.".into()));
            };
            outcome = tokio::time::timeout(REQUEST_LIMIT, Self::request(shell, script, arguments, data)).await;
        }
        match outcome {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(error)) => {
                *guard = None;
                Err(error)
            }
            Err(_) => {
                *guard = None;
                Err(Error::Timeout(format!("A file operation in {} took longer than two minutes.", self.describe())))
            }
        }
    }

    async fn start(&self) -> Result<Shell> {
        let command = Command {
            argv: vec!["/bin/sh".to_string()],
            working_dir: Some("/".into()),
            stdin: true,
            ..Command::default()
        };
        let mut channel = self.transport.open(command).await?;
        // Pipelined ahead of the first request and silent: a shell that cannot take it fails that request instead.
        let _ = channel.input.write_all(super::scripts::FIND_PRINTF_PROBE.as_bytes()).await;
        Ok(Shell { channel, described: self.transport.describe(), stdout: Vec::new(), stderr: Vec::new(), refused_request: false })
    }

    async fn request(shell: &mut Shell, script: &str, arguments: &[&str], data: Option<&[u8]>) -> Result<Reply> {
        let token = crate::ids::short_id();
        let ready = format!("__sandlink_ready_{token}\n");
        let done = format!("\n__sandlink_done_{token}_");
        // stderr ends with a marker of its own: it comes through another pipe than stdout, so stdout's marker may
        // arrive before the request's last stderr bytes, which would then be taken for the next request's.
        let stderr_done = format!("__sandlink_stderr_done_{token}");
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
        line.push_str(&format!(
            "\n){stdin_redirect}; __sandlink_status=$?; printf '%s' '{stderr_done}' >&2; printf '\\n__sandlink_done_{token}_%d\\n' \"$__sandlink_status\"\n"
        ));
        shell.stdout.clear();
        shell.stderr.clear();
        let described = shell.described.clone();
        let write = |error: std::io::Error| Error::Remote {
            status: None,
            message: format!("The helper shell in {described} stopped accepting commands: {error}"),
        };
        let sent = async {
            shell.channel.input.write_all(line.as_bytes()).await?;
            shell.channel.input.flush().await
        };
        if let Err(error) = sent.await {
            shell.refused_request = true;
            return Err(write(error));
        }
        if let Some(data) = data {
            Self::read_until(shell, ready.as_bytes()).await?;
            shell.channel.input.write_all(data).await.map_err(write)?;
            shell.channel.input.flush().await.map_err(write)?;
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
                let stderr_end = Self::read_stderr_until(shell, stderr_done.as_bytes()).await?;
                let mut stderr = std::mem::take(&mut shell.stderr);
                stderr.truncate(stderr_end);
                return Ok(Reply { status, stdout, stderr });
            }
            Self::read_more(shell).await?;
        }
    }

    /// Reads output until `marker` appears in stdout; answers where it starts.
    async fn read_until(shell: &mut Shell, marker: &[u8]) -> Result<usize> {
        Self::read_until_in(shell, marker, |shell| &shell.stdout).await
    }

    /// Reads output until `marker` appears in stderr; answers where it starts.
    async fn read_stderr_until(shell: &mut Shell, marker: &[u8]) -> Result<usize> {
        Self::read_until_in(shell, marker, |shell| &shell.stderr).await
    }

    async fn read_until_in(shell: &mut Shell, marker: &[u8], stream: fn(&Shell) -> &Vec<u8>) -> Result<usize> {
        let mut searched_from = 0;
        loop {
            if let Some(found) = find(&stream(shell)[searched_from..], marker) {
                return Ok(searched_from + found);
            }
            searched_from = stream(shell).len().saturating_sub(marker.len());
            Self::read_more(shell).await?;
        }
    }

    async fn read_more(shell: &mut Shell) -> Result<()> {
        match shell.channel.output.next().await {
            Some(Ok(Chunk::Stdout(bytes))) => shell.stdout.extend_from_slice(&bytes),
            Some(Ok(Chunk::Stderr(bytes))) => shell.stderr.extend_from_slice(&bytes),
            Some(Err(error)) => return Err(error),
            None => {
                return Err(Error::Remote {
                    status: None,
                    message: format!(
                        "The helper shell in {} ended: {}",
                        shell.described,
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

#[cfg(test)]
mod tests {
    use super::super::quote;

    #[test]
    fn quote_should_survive_single_quotes() {
        assert_eq!(quote("a'b"), r"'a'\''b'");
        assert_eq!(quote(""), "''");
    }
}
