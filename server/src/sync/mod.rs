//! File sync between a workspace and a sandbox: what the engine asks of drivers, and the workspace upload.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use crate::drivers::BoxedReader;
use crate::error::{Error, Result};
use crate::protocol::SyncResult;

/// The kind of an entry in a remote listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

/// One entry of the remote tree, as `RemoteFiles::list` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteEntry {
    /// Relative to the remote root, `/`-separated, never starting with `/` and never containing `..`.
    pub path: String,
    pub kind: EntryKind,
    pub size: u64,
    /// Modification time in nanoseconds since the Unix epoch (drivers with coarser clocks round down).
    pub mtime_ns: i128,
    /// Unix permission bits.
    pub mode: u32,
    /// The symlink's target, for symlinks.
    pub link_target: Option<String>,
}

/// The file operations a driver offers the sync engine, relative to the session's remote root.
///
/// One call is one batch: drivers should make each a single request to the sandbox where they can.
#[async_trait]
pub trait RemoteFiles: Send + Sync {
    /// Unpacks a tar stream under the remote root, each file written atomically (temporary file, then rename).
    /// Paths in the archive are relative and already checked by the engine; drivers refuse any that escape.
    async fn upload_tar(&self, archive: BoxedReader) -> Result<()>;

    /// Removes files and directories (recursively) under the remote root, in one step.
    async fn delete(&self, paths: Vec<String>) -> Result<()> {
        let _ = paths;
        Err(Error::Unsupported("This driver cannot delete files in the sandbox.".into()))
    }

    /// Lists the whole tree under the remote root.
    async fn list(&self) -> Result<Vec<RemoteEntry>> {
        Err(Error::Unsupported("This driver cannot list files in the sandbox, so it cannot sync down.".into()))
    }

    /// Packs the given files (relative paths) into a tar stream for download.
    async fn download_tar(&self, paths: Vec<String>) -> Result<BoxedReader> {
        let _ = paths;
        Err(Error::Unsupported("This driver cannot download files from the sandbox.".into()))
    }
}

/// The workspace files that should reach the sandbox: `.gitignore` and `.ignore` rules apply, `.git/` never goes.
pub fn scan_workspace(workspace: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let walker = ignore::WalkBuilder::new(workspace)
        .hidden(false)
        .require_git(false)
        .filter_entry(|entry| entry.file_name() != ".git")
        .build();
    for entry in walker {
        let entry = entry.map_err(|error| Error::Internal(format!("Could not scan the workspace: {error}")))?;
        let is_dir = entry.file_type().is_some_and(|kind| kind.is_dir());
        if is_dir {
            continue;
        }
        if let Ok(relative) = entry.path().strip_prefix(workspace) {
            files.push(relative.to_path_buf());
        }
    }
    Ok(files)
}

/// Sends every file of the workspace to the sandbox in one tar stream.
pub async fn upload_workspace(workspace: PathBuf, files: Arc<dyn RemoteFiles>) -> Result<SyncResult> {
    let started = Instant::now();
    let scan_root = workspace.clone();
    let relative_paths = tokio::task::spawn_blocking(move || scan_workspace(&scan_root))
        .await
        .map_err(|error| Error::Internal(format!("The workspace scan failed: {error}")))??;
    let count = relative_paths.len() as u64;
    let (reader, writer) = tokio::io::duplex(1 << 20);
    let producer = tokio::task::spawn_blocking(move || -> Result<u64> {
        let bridge = tokio_util::io::SyncIoBridge::new(writer);
        let mut builder = tar::Builder::new(bridge);
        builder.follow_symlinks(false);
        let mut bytes = 0u64;
        for relative in &relative_paths {
            let full = workspace.join(relative);
            let metadata = std::fs::symlink_metadata(&full).map_err(|source| {
                Error::io(format!("Could not read {}", full.display()), source)
            })?;
            bytes += metadata.len();
            builder
                .append_path_with_name(&full, relative)
                .map_err(|source| Error::io(format!("Could not pack {}", full.display()), source))?;
        }
        builder.finish().map_err(|source| Error::io("Could not finish the upload archive", source))?;
        Ok(bytes)
    });
    let upload = files.upload_tar(Box::pin(reader));
    let (upload_outcome, producer_outcome) = tokio::join!(upload, producer);
    let bytes = producer_outcome.map_err(|error| Error::Internal(format!("Packing failed: {error}")))??;
    upload_outcome?;
    Ok(SyncResult {
        uploaded: count,
        bytes,
        duration_ms: started.elapsed().as_millis() as u64,
        ..SyncResult::default()
    })
}
