//! Walking the workspace (all of it, or some paths in it) into the files and symlinks that should sync.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
        let workspace = self.workspace().to_path_buf();
        let walker = self.rules.walker(start).threads(2).build_parallel();
        let failure: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
        std::thread::scope(|threads| {
            threads.spawn(|| {
                walker.run(|| {
                    let sender = sender.clone();
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
                            tracing::warn!(path = %entry.path().display(), "skipped a path that is not UTF-8");
                            return ignore::WalkState::Continue;
                        };
                        match entry.metadata() {
                            Ok(metadata) => {
                                let _ = sender.send((relative, entry.path().to_path_buf(), metadata));
                            }
                            Err(error) => {
                                let mut slot = failure.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                                slot.get_or_insert_with(|| format!("Could not read {relative}: {error}"));
                            }
                        }
                        ignore::WalkState::Continue
                    })
                });
                drop(sender);
            });
            for (relative, full, metadata) in receiver {
                self.take(relative, &full, &metadata, scan);
            }
        });
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
            if !link_stays_inside(&relative, &target) {
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

/// Whether a symlink at `relative` with `target` resolves (lexically) inside the root.
pub fn link_stays_inside(relative: &str, target: &str) -> bool {
    if target.starts_with('/') {
        return false;
    }
    let mut depth: i64 = relative.split('/').count() as i64 - 1;
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => depth += 1,
        }
    }
    true
}

/// Checks a relative path from a remote listing or an archive: `/`-separated, no `..`, not absolute, not empty.
pub fn check_relative(path: &str) -> Result<()> {
    let bad = path.is_empty()
        || path.starts_with('/')
        || path.contains('\0')
        || path.contains('\\')
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
    fn links_should_stay_inside_only_when_they_resolve_under_the_root() {
        assert!(link_stays_inside("a/link", "../b"));
        assert!(link_stays_inside("link", "b/c"));
        assert!(!link_stays_inside("link", "../outside"));
        assert!(!link_stays_inside("a/link", "../../x"));
        assert!(!link_stays_inside("link", "/etc/passwd"));
    }

    #[test]
    fn remote_paths_should_be_plain_relative_paths() {
        assert!(check_relative("a/b.txt").is_ok());
        for bad in ["../x", "/etc/passwd", "a/../../b", "", "a//b", "./a"] {
            assert!(check_relative(bad).is_err(), "{bad}");
        }
    }
}
