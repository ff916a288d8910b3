//! Host keys: what a refused connect says (unknown or changed key, with the fingerprint the host shows now) and
//! recording a key the user accepted, only when the host still shows that very fingerprint.
//!
//! The fingerprint is learnt by a probe that cannot log in (every authentication method off) and writes whatever
//! key the host presents to a known_hosts file of its own, which `ssh-keygen -l` then reads; the user's own
//! known_hosts is written only by `accept`.

use std::path::PathBuf;

use super::target::Target;
use crate::error::{Error, Result};

/// What ssh's configuration says about a host: where its known keys are, the name they are filed under, the keys.
struct Resolved {
    known_hosts: PathBuf,
    /// `host`, or `[host]:port` off port 22, or the HostKeyAlias.
    known_name: String,
    identities: Vec<String>,
}

async fn resolve(target: &Target) -> Result<Resolved> {
    let output = tokio::process::Command::new("ssh")
        .arg("-G")
        .args(target.ssh_arguments())
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|error| Error::io("Could not run ssh -G", error))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let value = |key: &str| {
        text.lines().find_map(|line| line.strip_prefix(key).and_then(|rest| rest.strip_prefix(' ')).map(str::to_string))
    };
    let hostname = value("hostname").unwrap_or_else(|| target.host.clone());
    let port = value("port").unwrap_or_else(|| "22".into());
    let known_name = match value("hostkeyalias").filter(|alias| alias != "none") {
        Some(alias) => alias,
        None if port == "22" => hostname,
        None => format!("[{hostname}]:{port}"),
    };
    let known_hosts = value("userknownhostsfile")
        .and_then(|files| files.split_whitespace().next().map(str::to_string))
        .map(|file| expand(&file))
        .unwrap_or_else(|| passwd_home().join(".ssh/known_hosts"));
    let identities = text
        .lines()
        .filter_map(|line| line.strip_prefix("identityfile "))
        .map(|file| expand(file).to_string_lossy().into_owned())
        .collect();
    Ok(Resolved { known_hosts, known_name, identities })
}

/// ssh's `~`: the home of the passwd entry, not `$HOME`.
fn passwd_home() -> PathBuf {
    // SAFETY: getpwuid returns a pointer into static storage or null; it is read at once, on this thread.
    unsafe {
        let entry = libc::getpwuid(libc::getuid());
        if !entry.is_null() && !(*entry).pw_dir.is_null() {
            let directory = std::ffi::CStr::from_ptr((*entry).pw_dir);
            return PathBuf::from(directory.to_string_lossy().into_owned());
        }
    }
    dirs::home_dir().unwrap_or_default()
}

fn expand(path: &str) -> PathBuf {
    match path.strip_prefix("~/") {
        Some(rest) => passwd_home().join(rest),
        None => PathBuf::from(path),
    }
}

/// The key the host presents now: its known_hosts line (`name type base64`) and its SHA256 fingerprint.
struct Presented {
    key_type: String,
    key: String,
    fingerprint: String,
    /// The key type as ssh-keygen names it (`ED25519`).
    algorithm: String,
}

async fn probe(target: &Target) -> Result<Presented> {
    let directory = tempfile::tempdir().map_err(|error| Error::io("Could not create a temporary folder", error))?;
    let file = directory.path().join("known_hosts");
    let mut command = tokio::process::Command::new("ssh");
    command.args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new", "-o", "GlobalKnownHostsFile=/dev/null"]);
    command.arg("-o").arg(format!("UserKnownHostsFile={}", file.display()));
    // Nothing can log in: the probe only learns the key.
    for method in ["PubkeyAuthentication", "PasswordAuthentication", "KbdInteractiveAuthentication", "GSSAPIAuthentication", "HostbasedAuthentication"] {
        command.arg("-o").arg(format!("{method}=no"));
    }
    command.args(["-o", "ConnectTimeout=10", "-o", "ControlMaster=no", "-o", "ControlPath=none", "-T"]);
    command.args(target.ssh_arguments()).arg("true");
    command.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), command.status()).await;
    let line = std::fs::read_to_string(&file).unwrap_or_default();
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 3 {
        return Err(Error::DriverUnavailable {
            driver: "ssh".into(),
            message: format!("Could not learn the host key of {}; check that it is reachable (try `ssh {}`).", target.host, target.host),
        });
    }
    let listed = tokio::process::Command::new("ssh-keygen")
        .arg("-lf")
        .arg(&file)
        .output()
        .await
        .map_err(|error| Error::io("Could not run ssh-keygen", error))?;
    let listed = String::from_utf8_lossy(&listed.stdout);
    let mut parts = listed.split_whitespace();
    let fingerprint = parts.nth(1).unwrap_or_default().to_string();
    let algorithm = listed.split_whitespace().last().unwrap_or_default().trim_matches(|c| c == '(' || c == ')').to_string();
    Ok(Presented { key_type: fields[1].to_string(), key: fields[2].to_string(), fingerprint, algorithm })
}

/// The error for a connect ssh refused over the host key: unknown or changed, with the fingerprint shown now.
pub async fn refusal(target: &Target, said: &str) -> Error {
    let changed = said.contains("HAS CHANGED") || said.contains("has changed");
    let presented = match probe(target).await {
        Ok(presented) => presented,
        Err(error) => return error,
    };
    let host = target.host.clone();
    let fingerprint = presented.fingerprint.clone();
    let how = format!(
        "Compare it with the key on the machine itself (run `ssh-keygen -lf /etc/ssh/ssh_host_{}_key.pub` there); if \
         they match, accept it in the editor's prompt, or with `sandlink accept-host-key {host} {fingerprint}`, and \
         connect again.",
        presented.algorithm.to_lowercase()
    );
    if changed {
        Error::HostKeyChanged {
            message: format!(
                "The host key of {host} has CHANGED: it now presents the {} key {fingerprint}, not the one your \
                 known_hosts holds. This happens after a reinstall, but can also mean someone is intercepting the \
                 connection. {how}",
                presented.algorithm
            ),
            host,
            fingerprint,
        }
    } else {
        Error::HostKeyUnknown {
            message: format!("The host key of {host} is not known yet: it presents the {} key {fingerprint}. {how}", presented.algorithm),
            host,
            fingerprint,
        }
    }
}

/// Records the key the host presents now in the user's known_hosts (replacing keys filed under its name), only
/// when its fingerprint is `fingerprint`; answers the file written.
pub async fn accept(target: &Target, fingerprint: &str) -> Result<PathBuf> {
    let resolved = resolve(target).await?;
    let presented = probe(target).await?;
    if presented.fingerprint != fingerprint.trim() {
        return Err(Error::InvalidParams(format!(
            "{} now presents the key {}, not {}; nothing was recorded. Check the fingerprint again before accepting.",
            target.host,
            presented.fingerprint,
            fingerprint.trim()
        )));
    }
    if let Some(parent) = resolved.known_hosts.parent() {
        std::fs::create_dir_all(parent).map_err(|error| Error::io(format!("Could not create {}", parent.display()), error))?;
    }
    if resolved.known_hosts.exists() {
        // Keys of the same name go first (a changed key would otherwise still be refused).
        let _ = tokio::process::Command::new("ssh-keygen")
            .arg("-R")
            .arg(&resolved.known_name)
            .arg("-f")
            .arg(&resolved.known_hosts)
            .output()
            .await;
        let _ = std::fs::remove_file(format!("{}.old", resolved.known_hosts.display()));
    }
    let line = format!("{} {} {}\n", resolved.known_name, presented.key_type, presented.key);
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&resolved.known_hosts)
        .map_err(|error| Error::io(format!("Could not open {}", resolved.known_hosts.display()), error))?;
    file.write_all(line.as_bytes()).map_err(|error| Error::io(format!("Could not write {}", resolved.known_hosts.display()), error))?;
    Ok(resolved.known_hosts)
}

/// The keys ssh offers to the host, as a phrase for an authentication failure (paths, never key material).
pub async fn identities(target: &Target) -> String {
    let agent = if std::env::var_os("SSH_AUTH_SOCK").is_some() { " and those in the ssh agent" } else { "" };
    match resolve(target).await {
        Ok(resolved) => {
            let existing: Vec<String> =
                resolved.identities.into_iter().filter(|file| std::path::Path::new(file).exists()).collect();
            if existing.is_empty() {
                format!("no key file exists among the IdentityFile entries{agent}")
            } else {
                format!("{}{agent}", existing.join(", "))
            }
        }
        Err(_) => format!("the IdentityFile entries of your ssh config{agent}"),
    }
}
