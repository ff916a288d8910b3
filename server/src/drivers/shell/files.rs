//! Sync's side of a shell-reached sandbox: uploads unpacked and merged by the helper shell (or the transport's
//! bulk tar for large batches), deletes and listings through the helper shell, downloads through the transport.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::io::AsyncReadExt;

use super::agent::Agent;
use super::listing::parse_listing;
use super::{scripts, Transport};
use crate::streams::BoxedReader;
use crate::error::{Error, Result};
use crate::sync::{RemoteEntry, RemoteFiles};

/// Batches up to this size go through the helper shell in one write; larger ones stream through the transport.
const SMALL_BATCH_BYTES: usize = 8 << 20;

/// One session's remote root in a sandbox reached through a shell.
pub struct ShellFiles {
    pub transport: Arc<dyn Transport>,
    /// The helper shell that runs merges, deletes and listings without starting a process per request.
    pub agent: Arc<Agent>,
    pub root: String,
    /// Who owns uploaded files (the `user` setting); `None` leaves them to the archive's or the sandbox's owner.
    pub owner: Option<String>,
}

impl ShellFiles {
    /// The absolute path in the sandbox of `relative`, refusing paths that leave the root.
    fn absolute(&self, relative: &str) -> Result<String> {
        let clean = checked_relative(relative)?;
        Ok(format!("{}/{clean}", self.root))
    }

    async fn helper(&self, script: &str, arguments: &[&str], data: Option<&[u8]>) -> Result<Vec<u8>> {
        let reply = self.agent.run(script, arguments, data).await?;
        if reply.status != 0 {
            return Err(Error::Remote {
                status: None,
                message: format!(
                    "A file operation in {} failed (exit {}): {}",
                    self.agent.describe(),
                    reply.status,
                    String::from_utf8_lossy(&reply.stderr).trim()
                ),
            });
        }
        Ok(reply.stdout)
    }

    async fn parse(output: Vec<u8>) -> Result<Vec<RemoteEntry>> {
        tokio::task::spawn_blocking(move || parse_listing(&output))
            .await
            .map_err(|error| Error::Internal(format!("Parsing the remote listing failed: {error}")))?
    }
}

#[async_trait]
impl RemoteFiles for ShellFiles {
    async fn upload_tar(&self, archive: BoxedReader) -> Result<()> {
        self.upload_tar_looked(archive).await.map(|_| ())
    }

    /// A small batch (a typical save) is unpacked, merged and its files looked at in one request to the helper
    /// shell, which spares the engine its own look, a second request; larger batches tell nothing.
    async fn upload_tar_looked(&self, archive: BoxedReader) -> Result<Option<Vec<RemoteEntry>>> {
        let batch = crate::ids::short_id();
        let staging = format!("{}/{batch}", scripts::STAGING_DIR);
        let stage = format!("{}/{staging}", self.root);
        let owner = self.owner.clone().unwrap_or_default();
        let mut head = Vec::new();
        let mut limited = archive.take(SMALL_BATCH_BYTES as u64 + 1);
        limited.read_to_end(&mut head).await.map_err(|error| Error::io("Could not read the upload archive", error))?;
        if head.len() <= SMALL_BATCH_BYTES {
            // A typical save: the whole batch in one request to the helper shell, unpacked and merged there, then
            // its files looked at as `stat` would list them.
            let files = files_in_archive(&head);
            if files.is_empty() || files.len() > LOOKED_FILES {
                let script = format!("{}\n{}", scripts::UNPACK_STDIN, scripts::MERGE);
                return self.helper(&script, &[&self.root, &stage, &owner], Some(&head)).await.map(|_| None);
            }
            let mut arguments = vec![self.root.as_str(), stage.as_str(), owner.as_str()];
            arguments.extend(files.iter().map(String::as_str));
            let output = self.helper(scripts::unpack_merge_stat(), &arguments, Some(&head)).await?;
            return Self::parse(output).await.map(Some);
        }
        let rest = limited.into_inner();
        let archive: BoxedReader = Box::pin(std::io::Cursor::new(head).chain(rest));
        match self.transport.upload_tar(&self.root, &staging, archive).await {
            Ok(()) => self.helper(scripts::MERGE, &[&self.root, &stage, &owner], None).await.map(|_| None),
            Err(error) => {
                let _ = self.helper("rm -rf \"$1\"", &[&stage], None).await;
                Err(error)
            }
        }
    }

    async fn delete(&self, paths: Vec<String>) -> Result<()> {
        if paths.is_empty() {
            return Ok(());
        }
        let mut absolute = Vec::new();
        for path in &paths {
            absolute.push(self.absolute(path)?);
        }
        let arguments: Vec<&str> = absolute.iter().map(String::as_str).collect();
        self.helper(r#"rm -rf -- "$@""#, &arguments, None).await.map(|_| ())
    }

    async fn list(&self) -> Result<Vec<RemoteEntry>> {
        let output = self.helper(scripts::LIST, &[&self.root], None).await?;
        Self::parse(output).await
    }

    async fn stat(&self, paths: Vec<String>) -> Result<Vec<RemoteEntry>> {
        let checked = paths.iter().map(|path| checked_relative(path)).collect::<Result<Vec<String>>>()?;
        let mut arguments = vec![self.root.as_str()];
        arguments.extend(checked.iter().map(String::as_str));
        let output = self.helper(scripts::STAT, &arguments, None).await?;
        Self::parse(output).await
    }

    fn tells_change_times(&self) -> bool {
        true
    }

    async fn download_tar(&self, paths: Vec<String>) -> Result<BoxedReader> {
        let checked = paths.iter().map(|path| checked_relative(path)).collect::<Result<Vec<String>>>()?;
        self.transport.download_tar(&self.root, checked).await
    }
}

/// Up to this many files, a small upload looks at its files in the same request (their names go on one `find` or
/// `stat` command line).
const LOOKED_FILES: usize = 256;

/// The regular files of an archive held in memory, by their checked relative paths; empty if it cannot be read
/// (the upload itself then says why).
fn files_in_archive(archive: &[u8]) -> Vec<String> {
    let mut files = Vec::new();
    let mut archive = tar::Archive::new(archive);
    let Ok(entries) = archive.entries() else { return files };
    for entry in entries {
        let Ok(entry) = entry else { return Vec::new() };
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind == tar::EntryType::Continuous) {
            continue;
        }
        match std::str::from_utf8(&entry.path_bytes()).ok().and_then(|path| checked_relative(path).ok()) {
            Some(path) => files.push(path),
            None => return Vec::new(),
        }
    }
    files
}

/// Checks a path relative to the remote root: not empty, not absolute, no `..`, not the staging folder.
pub fn checked_relative(path: &str) -> Result<String> {
    let trimmed = path.trim_start_matches("./").trim_end_matches('/');
    let parts: Vec<&str> = trimmed.split('/').filter(|part| !part.is_empty() && *part != ".").collect();
    if trimmed.starts_with('/') || parts.is_empty() || parts.contains(&"..") || path.contains('\0') {
        return Err(Error::PathOutsideWorkspace(format!(
            "The path \"{path}\" lies outside the session root; give a path inside it, relative to the root, without \"..\"."
        )));
    }
    if parts[0] == scripts::STAGING_DIR {
        return Err(Error::InvalidParams(format!("\"{path}\" is sandlink's own staging folder.")));
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_should_not_escape() {
        assert_eq!(checked_relative("./a//b/").unwrap(), "a/b");
        for bad in ["", "/etc", "../x", "a/../../b", ".sandlink-staging/x"] {
            assert!(checked_relative(bad).is_err(), "{bad}");
        }
    }
}
