//! The local driver's side of sync: the session root is a directory on this machine, read and written directly.

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::streams::BoxedReader;
use crate::error::{Error, Result};
use crate::sync::scan::check_relative;
use crate::sync::{transfer, EntryKind, RemoteEntry, RemoteFiles};

/// The local driver's side of sync: the session root is a directory on this machine.
///
/// Uploads are written through `staging` (beside the root, so on the same file system) and renamed into place, so
/// the root never holds a half-written file even if sandlink is killed mid-transfer.
pub struct LocalFiles {
    pub(super) root: PathBuf,
    pub(super) staging: PathBuf,
}

impl LocalFiles {
    /// The files of a sandbox rooted at `root`, with uploads staged in `staging` (on the same file system). The
    /// driver makes these per session; tests and fuzzing make them over temporary directories.
    pub fn new(root: PathBuf, staging: PathBuf) -> Self {
        LocalFiles { root, staging }
    }
}

fn join_failed(what: &'static str) -> impl FnOnce(tokio::task::JoinError) -> Error {
    move |error| Error::Internal(format!("{what} failed: {error}"))
}

#[async_trait]
impl RemoteFiles for LocalFiles {
    async fn upload_tar(&self, archive: BoxedReader) -> Result<()> {
        self.upload_tar_looked(archive).await.map(|_| ())
    }

    /// The upload stats each file through its descriptor right after placing it, which costs far less than the
    /// engine's look at every uploaded path afterwards (a whole listing for a big upload).
    async fn upload_tar_looked(&self, archive: BoxedReader) -> Result<Option<Vec<RemoteEntry>>> {
        let root = self.root.clone();
        let staging = self.staging.clone();
        let bridge = tokio_util::io::SyncIoBridge::new(archive);
        let placed = tokio::task::spawn_blocking(move || transfer::unpack_atomically(bridge, &root, &staging))
            .await
            .map_err(join_failed("Unpacking the upload"))??;
        Ok(Some(placed.into_iter().filter_map(|(path, stat)| written_entry(path, &stat)).collect()))
    }

    async fn delete(&self, paths: Vec<String>) -> Result<()> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || transfer::delete_under(&root, &paths))
            .await
            .map_err(join_failed("Deleting files"))?
    }

    async fn list(&self) -> Result<Vec<RemoteEntry>> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || list_tree(&root)).await.map_err(join_failed("Listing the sandbox"))?
    }

    async fn stat(&self, paths: Vec<String>) -> Result<Vec<RemoteEntry>> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || stat_paths(&root, &paths)).await.map_err(join_failed("Reading the sandbox"))
    }

    fn tells_change_times(&self) -> bool {
        true
    }

    async fn download_tar(&self, paths: Vec<String>) -> Result<BoxedReader> {
        for path in &paths {
            check_relative(path)?;
        }
        let root = self.root.clone();
        let (reader, writer) = tokio::io::duplex(1 << 20);
        tokio::task::spawn_blocking(move || {
            // Paths under a symlinked directory are not read: the link could lead anywhere on this machine.
            let safe: Vec<String> = paths.into_iter().filter(|path| crate::sync::resolve::parents_are_real_dirs(&root, path)).collect();
            let bridge = tokio_util::io::SyncIoBridge::new(writer);
            if let Err(error) = transfer::pack(&root, &safe, transfer::Links::AsTheyAre, bridge, &mut |_| {}) {
                tracing::debug!(%error, "the download stream ended early");
            }
        });
        Ok(Box::pin(reader))
    }
}

/// Every entry under `root`, without following symlinks.
fn list_tree(root: &Path) -> Result<Vec<RemoteEntry>> {
    let mut entries = Vec::new();
    let walker = ignore::WalkBuilder::new(root).standard_filters(false).follow_links(false).build();
    for entry in walker {
        let entry = entry.map_err(|error| Error::Internal(format!("Could not list the sandbox: {error}")))?;
        let Ok(relative) = entry.path().strip_prefix(root) else { continue };
        if relative.as_os_str().is_empty() {
            continue;
        }
        let Ok(metadata) = entry.metadata() else { continue };
        let Some(relative) = relative.to_str() else {
            // Reported on its own (the name cannot travel as a protocol path); everything else still syncs.
            entries.extend(remote_entry(entry.path(), &relative.to_string_lossy(), &metadata).map(|mut unsyncable| {
                unsyncable.unsyncable = Some(crate::sync::scan::NOT_UTF8.to_string());
                unsyncable
            }));
            continue;
        };
        entries.extend(remote_entry(entry.path(), relative, &metadata));
    }
    Ok(entries)
}

/// The entries for the given relative paths that exist, without following symlinks (nor through symlinked parents).
fn stat_paths(root: &Path, paths: &[String]) -> Vec<RemoteEntry> {
    paths
        .iter()
        .filter(|path| check_relative(path).is_ok() && crate::sync::resolve::parents_are_real_dirs(root, path))
        .filter_map(|path| {
            let absolute = root.join(path);
            let metadata = std::fs::symlink_metadata(&absolute).ok()?;
            remote_entry(&absolute, path, &metadata)
        })
        .collect()
}

/// The listing entry of a file an upload just placed, from its `stat`; `None` if something else stands there by now.
fn written_entry(relative: String, stat: &rustix::fs::Stat) -> Option<RemoteEntry> {
    let nanoseconds = |seconds: i64, nanoseconds: i64| seconds as i128 * 1_000_000_000 + nanoseconds as i128;
    (rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::RegularFile).then(|| RemoteEntry {
        path: relative,
        kind: EntryKind::File,
        size: stat.st_size as u64,
        mtime_ns: nanoseconds(stat.st_mtime as i64, stat.st_mtime_nsec as i64),
        subsecond: true,
        inode: Some(stat.st_ino as u64),
        ctime_ns: Some(nanoseconds(stat.st_ctime as i64, stat.st_ctime_nsec as i64)),
        mode: stat.st_mode as u32 & 0o7777,
        link_target: None,
        unsyncable: None,
    })
}

/// One listing entry from an entry's metadata; `None` for what sync does not carry (sockets, devices).
fn remote_entry(absolute: &Path, relative: &str, metadata: &std::fs::Metadata) -> Option<RemoteEntry> {
    use std::os::unix::fs::MetadataExt;
    let file_type = metadata.file_type();
    let mut unsyncable = None;
    let (kind, link_target) = if file_type.is_symlink() {
        let target = std::fs::read_link(absolute).ok().map(|target| {
            target.to_str().map(str::to_string).unwrap_or_else(|| {
                unsyncable = Some("its symlink target is not valid UTF-8, which sandlink cannot carry".to_string());
                target.to_string_lossy().into_owned()
            })
        });
        (EntryKind::Symlink, target)
    } else if file_type.is_dir() {
        (EntryKind::Dir, None)
    } else if file_type.is_file() {
        (EntryKind::File, None)
    } else {
        return None;
    };
    Some(RemoteEntry {
        path: relative.to_string(),
        kind,
        size: metadata.len(),
        mtime_ns: metadata.mtime() as i128 * 1_000_000_000 + metadata.mtime_nsec() as i128,
        subsecond: true,
        inode: Some(metadata.ino()),
        ctime_ns: Some(metadata.ctime() as i128 * 1_000_000_000 + metadata.ctime_nsec() as i128),
        mode: metadata.mode() & 0o7777,
        link_target,
        unsyncable,
    })
}
