//! The local driver's side of sync: the session root is a directory on this machine, read and written directly.

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::streams::BoxedReader;
use crate::error::{Error, Result};
use crate::sync::scan::check_relative;
use crate::sync::beneath::Beneath;
use crate::sync::walk::walk_tree;
use crate::sync::{transfer, RemoteEntry, RemoteFiles, TreeOnThisMachine};

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
        Ok(Some(placed.into_iter().filter_map(|(path, stat)| RemoteEntry::written(path, &stat)).collect()))
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

    fn tree_on_this_machine(&self) -> Option<TreeOnThisMachine> {
        Some(TreeOnThisMachine { root: self.root.clone(), staging: self.staging.clone() })
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

/// Every entry under `root`, without following symlinks, read on every core (`walk::walk_tree`) with each entry
/// looked at through its directory's descriptor. A directory that cannot be read fails the listing: a listing
/// that left it out would read as its files deleted in the sandbox. Directories are taken by the type their parent
/// told and not looked at, as sync never compares them.
fn list_tree(root: &Path) -> Result<Vec<RemoteEntry>> {
    let (listed, unreadable) = walk_tree(root, "", Vec::new, |entries: &mut Vec<RemoteEntry>, directory| {
        let mut subdirectories = Vec::new();
        for (name, told_type) in directory.entries() {
            let (relative, unsyncable) = match name.to_str() {
                Ok(name) => (directory.child(name), None),
                // Reported on its own (the name cannot travel as a protocol path); everything else still syncs.
                Err(_) => (directory.child(&name.to_string_lossy()), Some(crate::sync::scan::NOT_UTF8.to_string())),
            };
            if told_type == rustix::fs::FileType::Directory && unsyncable.is_none() {
                // Opened by the walk without following a link, so one swapped for a link since is not entered.
                subdirectories.push(relative.clone());
                entries.push(RemoteEntry::directory(relative));
                continue;
            }
            let Ok(stat) = rustix::fs::statat(directory.descriptor, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) else {
                // Gone since the directory was read: not part of this listing.
                continue;
            };
            let is_directory = rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::Directory;
            let link_target = || rustix::fs::readlinkat(directory.descriptor, name, Vec::new()).ok().map(|target| target.into_bytes());
            let Some(mut entry) = RemoteEntry::from_lstat(relative, &stat, link_target) else { continue };
            if unsyncable.is_some() {
                entry.unsyncable = unsyncable;
            } else if is_directory {
                subdirectories.push(entry.path.clone());
            }
            entries.push(entry);
        }
        subdirectories
    });
    if let Some((directory, error)) = unreadable.into_iter().find(|(directory, error)| !gone_since_listed(directory, *error)) {
        return Err(Error::io(
            format!("Could not list the sandbox: the directory \"{directory}\" could not be read"),
            std::io::Error::from(error),
        ));
    }
    Ok(listed.into_iter().flatten().collect())
}

/// Whether a directory the listing could not open is simply gone from the tree: below the root, and removed or made
/// something else (a file, a link) since its parent was read. What was under it is then gone too, as for a file that
/// went. Anything else (a directory a run made unreadable, say) fails the listing, and so does any failure of the
/// root: an empty listing would read as every file deleted in the sandbox.
fn gone_since_listed(directory: &str, error: rustix::io::Errno) -> bool {
    !directory.is_empty() && matches!(error, rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP)
}

/// Removes the directory `dir` and everything in it on every core: the directories `SHARED_DEPTH` levels down (the
/// sandbox tree's own second level, in a session directory) are shared out among threads, each removed through
/// directory descriptors that never follow a link (`Beneath::remove`), then what is left goes as one. A session's
/// copy of a big workspace is removed in about half the time on two cores.
pub(super) fn remove_on_every_core(dir: &Path) -> std::io::Result<()> {
    const SHARED_DEPTH: usize = 3;
    let mut level = vec![String::new()];
    for _ in 0..SHARED_DEPTH {
        let mut next_level = Vec::new();
        for relative in level {
            let directory = if relative.is_empty() { dir.to_path_buf() } else { dir.join(&relative) };
            for child in std::fs::read_dir(directory).into_iter().flatten().flatten() {
                let is_directory = child.file_type().is_ok_and(|kind| kind.is_dir());
                if let (true, Some(name)) = (is_directory, child.file_name().to_str()) {
                    next_level.push(if relative.is_empty() { name.to_string() } else { format!("{relative}/{name}") });
                }
            }
        }
        level = next_level;
    }
    let units = level;
    let threads = std::thread::available_parallelism().map_or(1, usize::from).min(units.len());
    if threads > 1 {
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    let Ok(mut beneath) = Beneath::open(dir) else { return };
                    while let Some(unit) = units.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) {
                        // Whatever fails here is tried again, and reported, by the removal of the whole below.
                        let _ = beneath.remove(unit);
                    }
                });
            }
        });
    }
    std::fs::remove_dir_all(dir)
}

/// The entries for the given relative paths that exist, without following symlinks (nor through symlinked parents).
fn stat_paths(root: &Path, paths: &[String]) -> Vec<RemoteEntry> {
    paths
        .iter()
        .filter(|path| check_relative(path).is_ok() && crate::sync::resolve::parents_are_real_dirs(root, path))
        .filter_map(|path| {
            let absolute = root.join(path);
            let stat = rustix::fs::lstat(&absolute).ok()?;
            RemoteEntry::from_lstat(path.clone(), &stat, || std::fs::read_link(&absolute).ok().map(|target| target.into_os_string().into_encoded_bytes()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_directory_gone_below_the_root_should_leave_the_listing_whole() {
        use rustix::io::Errno;
        for gone in [Errno::NOENT, Errno::NOTDIR, Errno::LOOP] {
            assert!(gone_since_listed("src/pkg", gone), "{gone:?} below the root is a directory gone");
            assert!(!gone_since_listed("", gone), "{gone:?} at the root must fail the listing");
        }
        for failure in [Errno::ACCESS, Errno::PERM, Errno::IO, Errno::MFILE, Errno::NOMEM] {
            assert!(!gone_since_listed("src/pkg", failure), "{failure:?} must fail the listing");
        }
    }

    #[test]
    fn listing_should_take_directories_by_their_type_and_fail_without_a_root() {
        let session = tempfile::tempdir().expect("a temp dir");
        let root = session.path().join("root");
        std::fs::create_dir_all(root.join("a/b")).expect("mkdir");
        std::fs::write(root.join("a/b/file"), "x").expect("write");
        std::os::unix::fs::symlink("a", root.join("link")).expect("symlink");
        let mut listed: Vec<(String, crate::sync::EntryKind)> =
            list_tree(&root).expect("a listing").into_iter().map(|entry| (entry.path, entry.kind)).collect();
        listed.sort_by(|left, right| left.0.cmp(&right.0));
        use crate::sync::EntryKind::{Dir, File, Symlink};
        assert_eq!(listed, [("a".into(), Dir), ("a/b".into(), Dir), ("a/b/file".into(), File), ("link".into(), Symlink)]);
        let error = list_tree(&session.path().join("gone")).expect_err("no root, no listing");
        assert!(error.to_string().contains("Could not list the sandbox"), "{error}");
    }

    #[test]
    fn removal_on_every_core_should_take_everything_and_nothing_a_link_leads_to() {
        let session = tempfile::tempdir().expect("a temp dir");
        let outside = tempfile::tempdir().expect("a temp dir");
        std::fs::write(outside.path().join("keep"), "outside").expect("write");
        let dir = session.path().join("session");
        for index in 0..200 {
            let file = dir.join(format!("root/d{}/e{}/f{index}", index % 7, index % 13));
            std::fs::create_dir_all(file.parent().expect("a parent")).expect("mkdir");
            std::fs::write(file, "x").expect("write");
        }
        std::fs::create_dir_all(dir.join("staging")).expect("mkdir");
        // Links where the shared-out directories are, and below them: removed as links, never followed.
        std::os::unix::fs::symlink(outside.path(), dir.join("root/d0/link")).expect("symlink");
        std::os::unix::fs::symlink(outside.path(), dir.join("root/d1/e1/link")).expect("symlink");
        remove_on_every_core(&dir).expect("removed");
        assert!(!dir.exists(), "the whole directory is gone");
        assert_eq!(std::fs::read_to_string(outside.path().join("keep")).expect("read"), "outside", "what a link led to is untouched");
    }

    #[test]
    fn a_listing_should_fail_rather_than_leave_out_a_directory_it_cannot_read() {
        let root = tempfile::tempdir().expect("a temp dir");
        std::fs::create_dir_all(root.path().join("a/closed")).expect("mkdir");
        std::fs::write(root.path().join("a/closed/f"), "x").expect("write");
        std::fs::write(root.path().join("a/open"), "x").expect("write");
        let listed = list_tree(root.path()).expect("a listing");
        let mut paths: Vec<&str> = listed.iter().map(|entry| entry.path.as_str()).collect();
        paths.sort();
        assert_eq!(paths, ["a", "a/closed", "a/closed/f", "a/open"]);
        if rustix::process::geteuid().is_root() {
            return; // Root reads any directory; the unreadable case is for the unprivileged runs of this test.
        }
        std::fs::set_permissions(root.path().join("a/closed"), std::os::unix::fs::PermissionsExt::from_mode(0o000)).expect("chmod");
        let error = list_tree(root.path()).expect_err("an unreadable directory fails the listing");
        std::fs::set_permissions(root.path().join("a/closed"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        assert!(error.to_string().contains("a/closed"), "{error}");
    }
}
