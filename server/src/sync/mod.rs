//! File sync between a workspace and a sandbox: what the engine asks of drivers, and the delta engine on top.
//!
//! The concepts live in their own files: `options` (the user's sync settings), `rules` (ignore files and
//! patterns), `secrets` (files held back unless allowed, by name), `secret_scan` (credential shapes in a file's
//! content, checked as it is read for upload), `scan` (walking the workspace), `manifest` (the last synced state,
//! persisted), `plan` (what changed on which side), `transfer` (tar streams and atomic writes), `resolve` (where
//! paths and links lead), `beneath` (file access that never passes a symlink),
//! `walk` (walking a tree on every core), `watch` (the file-system watcher), `session` (one session's sync:
//! triggers, flushes and state) and `chunks`
//! (big files uploaded in parts that survive a dropped connection).

pub mod beneath;
pub mod chunks;
pub mod manifest;
pub mod options;
pub mod plan;
pub mod resolve;
pub mod rules;
pub mod scan;
pub mod secret_scan;
pub mod secrets;
pub mod session;
pub mod transfer;
pub mod walk;
pub mod watch;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::streams::BoxedReader;
use crate::error::{Error, Result};

pub use options::SyncOptions;
pub use session::{SessionSync, StateObserver};

/// The permission bits sync compares and carries both ways: read, write and execute for owner, group and others.
/// Both sides belong to one user, so a file kept private (0600) stays private in the sandbox and a script made
/// executable on either side is executable on the other; setuid, setgid and sticky never travel.
pub const PERMISSION_BITS: u32 = 0o777;

/// The kind of an entry in a remote listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
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
    /// Whether `mtime_ns` (and `ctime_ns`) carry the sandbox's sub-second digits; false for a driver that only knows
    /// whole seconds, whose entries are then trusted only once their second is safely past (see `RemoteStamp`).
    pub subsecond: bool,
    /// The inode number, where the driver can tell it: a file renamed over another shows up with another inode even
    /// when its size and times are the same.
    pub inode: Option<u64>,
    /// The status-change time in nanoseconds, where the driver can tell it: every write, rename and chmod moves it,
    /// and unlike the modification time it cannot be set back (`touch`).
    pub ctime_ns: Option<i128>,
    /// Unix permission bits (of which sync compares and carries `PERMISSION_BITS`).
    pub mode: u32,
    /// The symlink's target, for symlinks.
    pub link_target: Option<String>,
    /// Why this entry cannot sync (a name or link target that is not UTF-8, which paths on the protocol cannot
    /// carry); it is reported on its own and never transferred, while everything else syncs.
    pub unsyncable: Option<String>,
}

/// The file operations a driver offers the sync engine, relative to the session's remote root.
///
/// One call is one batch: drivers should make each a single request to the sandbox where they can.
#[async_trait]
pub trait RemoteFiles: Send + Sync {
    /// Unpacks a tar stream under the remote root, each file written atomically (temporary file, then rename).
    /// Paths in the archive are relative and already checked by the engine; drivers refuse any that escape.
    async fn upload_tar(&self, archive: BoxedReader) -> Result<()>;

    /// Uploads as `upload_tar` does and, where the driver learns it while writing, tells how each file it wrote
    /// looked right after (as `stat` would list it), which spares the engine its look after the upload (see
    /// `tells_change_times`). The default tells nothing.
    async fn upload_tar_looked(&self, archive: BoxedReader) -> Result<Option<Vec<RemoteEntry>>> {
        self.upload_tar(archive).await.map(|()| None)
    }

    /// Removes files and directories (recursively) under the remote root, in one step.
    async fn delete(&self, paths: Vec<String>) -> Result<()> {
        let _ = paths;
        Err(Error::Unsupported("This driver cannot delete files in the sandbox.".into()))
    }

    /// Lists the whole tree under the remote root.
    async fn list(&self) -> Result<Vec<RemoteEntry>> {
        Err(Error::Unsupported("This driver cannot list files in the sandbox, so it cannot sync down.".into()))
    }

    /// Lists only the given paths (relative, as `list` reports them): an entry for each that exists, none for the
    /// missing. The engine asks this before overwriting files, to see whether the sandbox changed them meanwhile.
    /// The default filters the whole listing; drivers override it where asking per path is cheaper.
    async fn stat(&self, paths: Vec<String>) -> Result<Vec<RemoteEntry>> {
        let wanted: std::collections::HashSet<String> = paths.into_iter().collect();
        Ok(self.list().await?.into_iter().filter(|entry| wanted.contains(&entry.path)).collect())
    }

    /// Whether `list` and `stat` tell inodes and status-change times. The engine then looks at each upload's files
    /// right after it, so their stamps catch a later rename-over or rewrite that keeps size and time.
    fn tells_change_times(&self) -> bool {
        false
    }

    /// Packs the given files (relative paths) into a tar stream for download.
    async fn download_tar(&self, paths: Vec<String>) -> Result<BoxedReader> {
        let _ = paths;
        Err(Error::Unsupported("This driver cannot download files from the sandbox.".into()))
    }

    /// Where the sandbox's tree is a directory on this machine (the local driver's), that directory: uploads are
    /// then copied straight into it (`transfer::copy_batches`), with no tar stream between a packing and an
    /// unpacking thread. `None` for every driver whose sandbox is elsewhere.
    fn tree_on_this_machine(&self) -> Option<TreeOnThisMachine> {
        None
    }
}

/// A sandbox tree that is a directory on this machine, with where its uploads are staged (same file system).
#[derive(Debug, Clone)]
pub struct TreeOnThisMachine {
    pub root: std::path::PathBuf,
    pub staging: std::path::PathBuf,
}

impl RemoteEntry {
    /// The entry of a regular file just written on this machine, from the `fstat` made right after; `None` for
    /// anything else.
    pub fn written(relative: String, stat: &rustix::fs::Stat) -> Option<RemoteEntry> {
        RemoteEntry::from_lstat(relative, stat, || None).filter(|entry| entry.kind == EntryKind::File)
    }

    /// A directory as a listing on this machine names it, from the type its parent's entries told, without a look
    /// of its own: sync compares and carries files and links, and a directory's stamp and mode would only be read
    /// to be passed over (an eighth of the looks of a listing of a source tree).
    pub fn directory(relative: String) -> RemoteEntry {
        RemoteEntry {
            path: relative,
            kind: EntryKind::Dir,
            size: 0,
            mtime_ns: 0,
            subsecond: true,
            inode: None,
            ctime_ns: None,
            mode: 0,
            link_target: None,
            unsyncable: None,
        }
    }

    /// The listing entry of a path on this machine, from its `lstat`; `None` for what sync does not carry (sockets,
    /// devices). `link_target` reads a symlink's target, asked only for symlinks.
    pub fn from_lstat(relative: String, stat: &rustix::fs::Stat, link_target: impl FnOnce() -> Option<Vec<u8>>) -> Option<RemoteEntry> {
        use rustix::fs::FileType;
        let nanoseconds = |seconds: i64, nanoseconds: i64| seconds as i128 * 1_000_000_000 + nanoseconds as i128;
        let mut unsyncable = None;
        let (kind, link_target) = match FileType::from_raw_mode(stat.st_mode) {
            FileType::Symlink => {
                let target = link_target().map(|target| {
                    String::from_utf8(target).unwrap_or_else(|not_utf8| {
                        unsyncable = Some("its symlink target is not valid UTF-8, which sandlink cannot carry".to_string());
                        String::from_utf8_lossy(not_utf8.as_bytes()).into_owned()
                    })
                });
                (EntryKind::Symlink, target)
            }
            FileType::Directory => (EntryKind::Dir, None),
            FileType::RegularFile => (EntryKind::File, None),
            _ => return None,
        };
        Some(RemoteEntry {
            path: relative,
            kind,
            size: stat.st_size as u64,
            mtime_ns: nanoseconds(stat.st_mtime as i64, stat.st_mtime_nsec as i64),
            subsecond: true,
            inode: Some(stat.st_ino as u64),
            ctime_ns: Some(nanoseconds(stat.st_ctime as i64, stat.st_ctime_nsec as i64)),
            mode: stat.st_mode as u32 & 0o7777,
            link_target,
            unsyncable,
        })
    }
}

