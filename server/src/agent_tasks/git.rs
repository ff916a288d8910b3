//! Git on the host: clone, fetch, rebase and push for agent tasks, with the token handed to one git process at a time.
//!
//! The token reaches git through `GIT_ASKPASS`: a script without secrets in a private temporary directory that prints
//! what it finds in the environment of the one git command that needs it. It is never on a command line (which `ps`
//! shows), never in a file that stays, and never in a git config; host credential helpers are switched off for that
//! command so none of them stores it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::credentials::Secret;
use crate::error::{Error, IoContext, Result};

/// The user name GitHub (and the tests' git server) accepts beside a token used as the password.
pub const TOKEN_USER: &str = "x-access-token";

/// How often a network command is tried before its failure is reported.
const NETWORK_ATTEMPTS: u32 = 4;
/// The first pause before a retry; doubled each time.
const FIRST_BACKOFF: Duration = Duration::from_millis(300);

/// The token for one remote; its `Debug` and `Display` are redacted by `Secret`.
#[derive(Debug, Clone)]
pub struct Credential {
    pub token: Secret,
}

/// What a git command printed and whether it succeeded.
#[derive(Debug)]
pub struct Output {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `git args` in `dir` on the host. With a credential, the token is offered through `GIT_ASKPASS` to this one
/// process; its output is scrubbed of the token in case a remote echoes it.
pub async fn run(dir: Option<&Path>, args: &[&str], credential: Option<&Credential>) -> Result<Output> {
    let mut command = tokio::process::Command::new("git");
    // Credential helpers would keep the token (`store` writes it to a file); an empty value clears the list.
    command.args(["-c", "credential.helper="]);
    command.args(args);
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    command.env("GIT_TERMINAL_PROMPT", "0").env("LC_ALL", "C").stdin(std::process::Stdio::null());
    command.kill_on_drop(true);
    let askpass = match credential {
        Some(credential) => {
            let helper = AskPass::create()?;
            command
                .env("GIT_ASKPASS", helper.script())
                .env("SANDLINK_GIT_USERNAME", TOKEN_USER)
                .env("SANDLINK_GIT_PASSWORD", credential.token.expose());
            Some(helper)
        }
        None => None,
    };
    let output = command.output().await.context(|| format!("Could not start git {}", args.first().unwrap_or(&"")))?;
    drop(askpass);
    let scrub = |bytes: &[u8]| {
        let text = String::from_utf8_lossy(bytes).into_owned();
        match credential {
            Some(credential) if !credential.token.expose().is_empty() => text.replace(credential.token.expose(), "***"),
            _ => text,
        }
    };
    Ok(Output { success: output.status.success(), stdout: scrub(&output.stdout), stderr: scrub(&output.stderr) })
}

/// Runs a local git command that must succeed; its trimmed stdout.
pub async fn ok(dir: &Path, args: &[&str]) -> Result<String> {
    let output = run(Some(dir), args, None).await?;
    if !output.success {
        return Err(Error::Internal(format!("git {} failed: {}", args.join(" "), output.stderr.trim())));
    }
    Ok(output.stdout.trim().to_string())
}

/// Runs a git command that talks to the remote, retrying network failures with exponential backoff. A refusal of
/// the credentials is `credentialsMissing`; other failures are returned as the output for the caller to read.
pub async fn network(dir: Option<&Path>, args: &[&str], credential: Option<&Credential>) -> Result<Output> {
    let mut pause = FIRST_BACKOFF;
    let mut attempt = 1;
    loop {
        let output = run(dir, args, credential).await?;
        if output.success {
            return Ok(output);
        }
        if refused_credentials(&output.stderr) {
            return Err(Error::CredentialsMissing(format!(
                "The git remote refused the credentials for `git {}` ({}). Set GITHUB_TOKEN (or GH_TOKEN) or store a \
                 token with `sandlink profile set-credential PROFILE githubToken`.",
                args.first().unwrap_or(&""),
                last_line(&output.stderr)
            )));
        }
        if attempt >= NETWORK_ATTEMPTS || !is_transient(&output.stderr) {
            return Ok(output);
        }
        tracing::info!(attempt, command = args.first().copied().unwrap_or_default(), error = %last_line(&output.stderr), "git network failure; retrying");
        tokio::time::sleep(pause).await;
        pause *= 2;
        attempt += 1;
    }
}

/// Like `network`, but a failure is an error saying what could not be done.
pub async fn network_ok(dir: Option<&Path>, args: &[&str], credential: Option<&Credential>, what: &str) -> Result<String> {
    let output = network(dir, args, credential).await?;
    if !output.success {
        return Err(Error::Remote { status: None, message: format!("Could not {what}: {}", last_line(&output.stderr)) });
    }
    Ok(output.stdout.trim().to_string())
}

/// The last non-empty line git printed, which is where it says what went wrong.
pub fn last_line(text: &str) -> String {
    text.lines().rev().find(|line| !line.trim().is_empty()).unwrap_or("no message").trim().to_string()
}

fn refused_credentials(stderr: &str) -> bool {
    ["Authentication failed", "could not read Username", "could not read Password", "returned error: 401", "returned error: 403"]
        .iter()
        .any(|needle| stderr.contains(needle))
}

/// Failures worth another try: the network or the server, not the request.
fn is_transient(stderr: &str) -> bool {
    [
        "Could not resolve host",
        "Connection refused",
        "Failed to connect",
        "Connection reset",
        "Connection timed out",
        "Operation timed out",
        "early EOF",
        "RPC failed",
        "unexpected disconnect",
        "the remote end hung up unexpectedly",
        "returned error: 500",
        "returned error: 502",
        "returned error: 503",
        "returned error: 504",
        "transfer closed",
        "Empty reply from server",
    ]
    .iter()
    .any(|needle| stderr.contains(needle))
}

/// The identity commits in a sandbox are made with: the host user's git identity, else sandlink's.
pub async fn identity() -> (String, String) {
    let read = |key: &'static str| async move {
        run(None, &["config", "--get", key], None)
            .await
            .ok()
            .filter(|output| output.success && !output.stdout.trim().is_empty())
            .map(|output| output.stdout.trim().to_string())
    };
    let name = read("user.name").await.unwrap_or_else(|| "sandlink".into());
    let email = read("user.email").await.unwrap_or_else(|| "sandlink@localhost".into());
    (name, email)
}

/// A private directory (mode 0700) holding the askpass script, removed when dropped.
struct AskPass {
    dir: tempfile::TempDir,
}

impl AskPass {
    fn create() -> Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("sandlink-askpass-")
            .tempdir()
            .context(|| "Could not create a private directory for git's askpass helper".into())?;
        let script = dir.path().join("askpass");
        std::fs::write(
            &script,
            "#!/bin/sh\ncase \"$1\" in\n  Username*) printf '%s\\n' \"$SANDLINK_GIT_USERNAME\" ;;\n  *) printf '%s\\n' \"$SANDLINK_GIT_PASSWORD\" ;;\nesac\n",
        )
        .context(|| "Could not write git's askpass helper".into())?;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700))
            .context(|| "Could not make git's askpass helper executable".into())?;
        Ok(AskPass { dir })
    }

    fn script(&self) -> PathBuf {
        self.dir.path().join("askpass")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_failures_should_be_told_from_refusals() {
        assert!(is_transient("fatal: unable to access 'http://x/': Failed to connect to x port 80"));
        assert!(is_transient("error: RPC failed; HTTP 503 curl 22 The requested URL returned error: 503"));
        assert!(!is_transient("fatal: repository 'http://x/' not found"));
        assert!(refused_credentials("fatal: Authentication failed for 'http://x/'"));
    }
}
