//! Walking the workspace (all of it, or some paths in it) into the files and symlinks that should sync.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::resolve::{link_stays_inside, OnDisk};
use super::rules::Rules;
use super::secret_scan::FileStamp;
use super::secrets::SecretFilter;
use super::EntryKind;
use crate::error::{Error, Result};

/// A file or symlink of the workspace as `lstat` saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEntry {
    pub kind: EntryKind,
    pub size: u64,
    pub mtime_ns: i128,
    /// Permission bits only.
    pub mode: u32,
    pub inode: u64,
    pub link_target: Option<String>,
}

impl LocalEntry {
    pub fn from_metadata(metadata: &std::fs::Metadata, link_target: Option<String>) -> Self {
        let kind = if metadata.file_type().is_symlink() { EntryKind::Symlink } else { EntryKind::File };
        LocalEntry {
            kind,
            size: metadata.len(),
            mtime_ns: metadata.mtime() as i128 * 1_000_000_000 + metadata.mtime_nsec() as i128,
            mode: metadata.mode() & 0o7777,
            inode: metadata.ino(),
            link_target,
        }
    }

    /// The same from an `lstat` made through a directory descriptor (`beneath`).
    pub fn from_stat(stat: &rustix::fs::Stat, link_target: Option<String>) -> Self {
        let is_link = rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::Symlink;
        LocalEntry {
            kind: if is_link { EntryKind::Symlink } else { EntryKind::File },
            size: stat.st_size as u64,
            mtime_ns: stat.st_mtime as i128 * 1_000_000_000 + stat.st_mtime_nsec as i128,
            mode: stat.st_mode as u32 & 0o7777,
            inode: stat.st_ino as u64,
            link_target,
        }
    }

    /// What the content check compares to tell a file unchanged; symlinks have no content to check.
    pub fn stamp(&self) -> Option<FileStamp> {
        (self.kind == EntryKind::File)
            .then_some(FileStamp { size: self.size, mtime_ns: self.mtime_ns, inode: self.inode, mode: self.mode })
    }
}

/// What a scan found.
#[derive(Debug, Default)]
pub struct Scan {
    pub entries: BTreeMap<String, LocalEntry>,
    /// Secret-looking files that were not taken, with the rule that held each back.
    pub held_back: BTreeMap<String, &'static str>,
    /// Symlinks pointing outside the workspace, which are neither followed nor synced.
    pub escaping_links: Vec<String>,
    /// Files whose name sync cannot carry (not UTF-8), with the reason; reported, never synced.
    pub unsyncable: Vec<(String, String)>,
}

/// The workspace scanner: rules plus secret filter.
pub struct Scanner {
    pub rules: Arc<Rules>,
    pub secrets: SecretFilter,
}

impl Scanner {
    fn workspace(&self) -> &Path {
        self.rules.workspace()
    }

    /// Scans the whole workspace (`scope` = None) or the given relative paths and what lies under them.
    pub fn scan(&self, scope: Option<&[String]>) -> Result<Scan> {
        let mut scan = Scan::default();
        match scope {
            None => self.walk(&self.workspace().to_path_buf(), &mut scan)?,
            Some(paths) => {
                for relative in paths {
                    self.scan_path(relative, &mut scan)?;
                }
            }
        }
        Ok(scan)
    }

    fn scan_path(&self, relative: &str, scan: &mut Scan) -> Result<()> {
        // A parent that is a symlink would lead the scan (and the upload) wherever it points; such paths are not
        // part of the tree. Explicit requests were refused already; saves and watcher events end here.
        if !relative.is_empty() && !super::resolve::parents_are_real_dirs(self.workspace(), relative) {
            tracing::debug!(path = %relative, "skipped a path under a symlinked directory");
            return Ok(());
        }
        let full = if relative.is_empty() { self.workspace().to_path_buf() } else { self.workspace().join(relative) };
        let Ok(metadata) = std::fs::symlink_metadata(&full) else {
            return Ok(());
        };
        if !relative.is_empty() && self.rules.is_excluded(relative, metadata.is_dir()) {
            return Ok(());
        }
        if metadata.is_dir() {
            return self.walk(&full, scan);
        }
        self.take(relative.to_string(), &full, &metadata, scan);
        Ok(())
    }

    fn walk(&self, start: &PathBuf, scan: &mut Scan) -> Result<()> {
        let (sender, receiver) = std::sync::mpsc::channel::<(String, PathBuf, std::fs::Metadata)>();
        let (unsyncable_sender, unsyncable_receiver) = std::sync::mpsc::channel::<String>();
        let workspace = self.workspace().to_path_buf();
        let walker = self.rules.walker(start).threads(2).build_parallel();
        let failure: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
        std::thread::scope(|threads| {
            threads.spawn(|| {
                walker.run(|| {
                    let sender = sender.clone();
                    let unsyncable = unsyncable_sender.clone();
                    let workspace = &workspace;
                    let failure = &failure;
                    Box::new(move |entry| {
                        let entry = match entry {
                            Ok(entry) => entry,
                            Err(error) => {
                                // Unreadable directories are skipped with a log line rather than failing the sync.
                                tracing::warn!(%error, "skipped an unreadable part of the workspace");
                                return ignore::WalkState::Continue;
                            }
                        };
                        if entry.file_type().is_some_and(|kind| kind.is_dir()) {
                            return ignore::WalkState::Continue;
                        }
                        let Ok(relative) = entry.path().strip_prefix(workspace) else {
                            return ignore::WalkState::Continue;
                        };
                        let Some(relative) = relative.to_str().map(str::to_string) else {
                            let _ = unsyncable.send(relative.to_string_lossy().into_owned());
                            return ignore::WalkState::Continue;
                        };
                        match entry.metadata() {
                            Ok(metadata) => {
                                let _ = sender.send((relative, entry.path().to_path_buf(), metadata));
                            }
                            Err(error) => {
                                let mut slot = crate::locks::lock(&failure);
                                slot.get_or_insert_with(|| format!("Could not read {relative}: {error}"));
                            }
                        }
                        ignore::WalkState::Continue
                    })
                });
                drop(sender);
                drop(unsyncable_sender);
            });
            for (relative, full, metadata) in receiver {
                self.take(relative, &full, &metadata, scan);
            }
        });
        for lossy in unsyncable_receiver.try_iter() {
            scan.unsyncable.push((lossy, NOT_UTF8.to_string()));
        }
        if let Some(message) = failure.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner()) {
            // A file vanishing mid-walk is normal (a build running); it is simply absent from this scan.
            tracing::debug!(%message, "a file changed during the scan");
        }
        Ok(())
    }

    fn take(&self, relative: String, full: &Path, metadata: &std::fs::Metadata, scan: &mut Scan) {
        let file_type = metadata.file_type();
        if !(file_type.is_file() || file_type.is_symlink()) {
            return;
        }
        let seen = LocalEntry::from_metadata(metadata, None).stamp();
        if let Some(rule) = self.secrets.held_back_rule(&relative, seen.as_ref()) {
            scan.held_back.insert(relative, rule);
            return;
        }
        let link_target = if file_type.is_symlink() {
            let Ok(target) = std::fs::read_link(full) else { return };
            let Some(target) = target.to_str().map(str::to_string) else { return };
            if !link_stays_inside(&OnDisk { root: self.workspace() }, &relative, &target) {
                scan.escaping_links.push(relative);
                return;
            }
            Some(target)
        } else {
            None
        };
        scan.entries.insert(relative, LocalEntry::from_metadata(metadata, link_target));
    }
}

/// The reason given for a name that is not UTF-8.
pub const NOT_UTF8: &str = "its name is not valid UTF-8, which sandlink's paths cannot carry; rename it to sync it";

/// Checks a relative path from a remote listing or an archive: `/`-separated, no `..`, not absolute, not empty.
/// Any other byte is part of a name (a backslash or a newline is a legal character on the systems sandlink serves).
pub fn check_relative(path: &str) -> Result<()> {
    let bad = path.is_empty()
        || path.starts_with('/')
        || path.contains('\0')
        || path.split('/').any(|part| part.is_empty() || part == ".." || part == ".");
    if bad {
        return Err(Error::PathOutsideWorkspace(format!(
            "The sandbox named the path \"{}\", which is not a plain path inside the workspace; nothing was written.",
            path.escape_debug()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_paths_should_be_plain_relative_paths() {
        assert!(check_relative("a/b.txt").is_ok());
        assert!(check_relative("a\\b").is_ok(), "a backslash is part of a name");
        assert!(check_relative("a\nb").is_ok(), "so is a newline");
        for bad in ["../x", "/etc/passwd", "a/../../b", "", "a//b", "./a"] {
            assert!(check_relative(bad).is_err(), "{bad}");
        }
    }
}
