//! What agent tasks do inside a sandbox: run git there and move a repository or a bundle in and out through the
//! driver's file operations (the same ones sync uses), so it works on every driver that syncs.

use std::collections::BTreeMap;
use std::path::Path;

use tokio::io::AsyncReadExt;

use crate::drivers::{ExecSpec, Sandbox};
use crate::error::{Error, IoContext, Result};

/// How long one git command in the sandbox may take.
const COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// What a command in the sandbox printed and how it ended.
#[derive(Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs a shell script in the sandbox's root with `arguments` as `$1…` (never interpolated into the script).
pub async fn shell(sandbox: &dyn Sandbox, script: &str, arguments: &[&str], env: BTreeMap<String, String>) -> Result<Output> {
    let mut args = vec!["-c".to_string(), script.to_string(), "sandlink-task".to_string()];
    args.extend(arguments.iter().map(|argument| argument.to_string()));
    let spec = ExecSpec {
        command: "sh".into(),
        args: Some(args),
        cwd: None,
        env,
        stdin: false,
        timeout: Some(COMMAND_TIMEOUT),
        pty: None,
    };
    let process = sandbox.exec(spec).await?;
    let mut stdout = process.stdout;
    let mut stderr = process.stderr;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let reading = async {
        let (a, b) = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
        a.and(b)
    };
    let (read, exit) = tokio::join!(reading, process.exit);
    read.context(|| "Could not read the output of git in the sandbox".into())?;
    let exit = exit?;
    Ok(Output {
        code: exit.code,
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: String::from_utf8_lossy(&err).into_owned(),
    })
}

/// `shell`, failing with git's own last line when the script fails.
pub async fn shell_ok(
    sandbox: &dyn Sandbox,
    script: &str,
    arguments: &[&str],
    env: BTreeMap<String, String>,
    what: &str,
) -> Result<String> {
    let output = shell(sandbox, script, arguments, env).await?;
    if !output.success() {
        let detail = super::git::last_line(&format!("{}\n{}", output.stdout, output.stderr));
        return Err(Error::Remote { status: None, message: format!("Could not {what} in the sandbox: {detail}") });
    }
    Ok(output.stdout.trim().to_string())
}

/// Uploads the whole tree under `dir` (the host clone, `.git` included) into the sandbox's root.
pub async fn upload_tree(sandbox: &dyn Sandbox, dir: &Path) -> Result<()> {
    let files = sandbox.files().ok_or_else(|| Error::unsupported_by(sandbox.driver_id(), "file transfer"))?;
    let dir = dir.to_path_buf();
    let archive = tokio::task::spawn_blocking(move || -> Result<Vec<u8>> {
        let mut paths = Vec::new();
        collect_files(&dir, &dir, &mut paths)?;
        let mut archive = Vec::new();
        crate::sync::transfer::pack(&dir, &paths, crate::sync::transfer::Links::Inside, &mut archive, &mut |_| {})?;
        Ok(archive)
    })
    .await
    .map_err(|error| Error::Internal(format!("Packing the repository stopped: {error}")))??;
    files.upload_tar(Box::pin(std::io::Cursor::new(archive))).await
}

/// Uploads one file's bytes to `relative` under the sandbox's root.
pub async fn upload_file(sandbox: &dyn Sandbox, relative: &str, content: Vec<u8>) -> Result<()> {
    let files = sandbox.files().ok_or_else(|| Error::unsupported_by(sandbox.driver_id(), "file transfer"))?;
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0));
    builder
        .append_data(&mut header, relative, content.as_slice())
        .context(|| format!("Could not pack {relative}"))?;
    let archive = builder.into_inner().context(|| format!("Could not pack {relative}"))?;
    files.upload_tar(Box::pin(std::io::Cursor::new(archive))).await
}

/// Downloads one file from under the sandbox's root.
pub async fn download_file(sandbox: &dyn Sandbox, relative: &str) -> Result<Vec<u8>> {
    let files = sandbox.files().ok_or_else(|| Error::unsupported_by(sandbox.driver_id(), "file transfer"))?;
    let mut stream = files.download_tar(vec![relative.to_string()]).await?;
    let mut archive = Vec::new();
    stream.read_to_end(&mut archive).await.context(|| format!("Could not download {relative} from the sandbox"))?;
    let mut reader = tar::Archive::new(archive.as_slice());
    let entries = reader.entries().context(|| format!("Could not read the archive of {relative}"))?;
    for entry in entries {
        let mut entry = entry.context(|| format!("Could not read the archive of {relative}"))?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let mut content = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut content).context(|| format!("Could not read {relative}"))?;
        return Ok(content);
    }
    Err(Error::Internal(format!("The sandbox sent no {relative}.")))
}

/// Every regular file and symlink under `dir`, relative to `root`.
fn collect_files(root: &Path, dir: &Path, paths: &mut Vec<String>) -> Result<()> {
    for entry in std::fs::read_dir(dir).context(|| format!("Could not list {}", dir.display()))? {
        let entry = entry.context(|| format!("Could not list {}", dir.display()))?;
        let kind = entry.file_type().context(|| format!("Could not read {}", entry.path().display()))?;
        let path = entry.path();
        if kind.is_dir() {
            collect_files(root, &path, paths)?;
        } else if kind.is_file() || kind.is_symlink() {
            if let Some(relative) = path.strip_prefix(root).ok().and_then(|relative| relative.to_str()) {
                paths.push(relative.to_string());
            }
        }
    }
    Ok(())
}
