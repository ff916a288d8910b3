//! What changed on each side since the last synced state (the manifest), and what to do about it.
//!
//! A change on one side only is copied to the other; a change on both sides that differs in content is a
//! conflict and neither side is touched. Whether "changed" holds is decided by metadata first and by content
//! (blake3) only when metadata cannot be trusted, so an unchanged tree is never re-read.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;

use super::manifest::{hash_file, now_ns, Manifest};
use super::rules::Rules;
use super::scan::{check_relative, Scan};
use super::secrets::SecretFilter;
use super::{EntryKind, RemoteEntry, PERMISSION_BITS};
use crate::error::Result;
use crate::protocol::SkippedPath;

/// Local changes since the manifest.
#[derive(Debug, Default)]
pub struct LocalDiff {
    /// New or modified files and symlinks.
    pub changed: BTreeSet<String>,
    /// Recorded paths that are gone.
    pub deleted: BTreeSet<String>,
    /// Recorded paths that still exist but no longer sync (newly ignored or held back): dropped from the manifest,
    /// left alone in the sandbox.
    pub forgotten: Vec<String>,
}

/// Compares a scan with the manifest within `scope`; re-hashes only racily clean files.
pub fn diff_local(manifest: &mut Manifest, scan: &Scan, workspace: &Path, scope: Option<&[String]>) -> LocalDiff {
    let mut diff = LocalDiff::default();
    let now = now_ns();
    let mut touched = false;
    // Recorded paths the scan did not find, for a whole scan: both maps are sorted, so one pass over the two finds
    // them, with no lookup per path (this runs on every save and every resync of the whole tree).
    let mut missing = Vec::new();
    let mut records = manifest.entries.iter_mut().peekable();
    for (path, entry) in &scan.entries {
        while let Some((recorded, _)) = records.next_if(|(recorded, _)| recorded.as_str() < path.as_str()) {
            if scope.is_none() {
                missing.push(recorded.clone());
            }
        }
        match records.next_if(|(recorded, _)| *recorded == path).map(|(_, record)| record) {
            None => {
                diff.changed.insert(path.clone());
            }
            Some(record) if !record.same_metadata(entry) => {
                diff.changed.insert(path.clone());
            }
            Some(record) if record.is_racy() => match hash_file(&workspace.join(path)) {
                Ok(hash) if hash == record.hash => {
                    // Same content: trust the metadata from now on, once it is older than the timestamp granularity.
                    std::sync::Arc::make_mut(record).recorded_ns = now;
                    touched = true;
                }
                _ => {
                    diff.changed.insert(path.clone());
                }
            },
            Some(_) => {}
        }
    }
    if scope.is_none() {
        missing.extend(records.map(|(recorded, _)| recorded.clone()));
    }
    if touched {
        manifest_touched(manifest);
    }
    let recorded: Vec<String> = match scope {
        None => missing,
        Some(paths) => {
            let mut found = BTreeSet::new();
            for path in paths {
                found.extend(manifest.paths_under(path));
            }
            found.into_iter().collect()
        }
    };
    for path in recorded {
        if scan.entries.contains_key(&path) {
            continue;
        }
        if std::fs::symlink_metadata(workspace.join(&path)).is_ok() {
            diff.forgotten.push(path);
        } else {
            diff.deleted.insert(path);
        }
    }
    for path in &diff.forgotten {
        manifest.remove(path);
    }
    diff
}

fn manifest_touched(manifest: &mut Manifest) {
    manifest.mark_dirty();
}

/// How the sandbox copy of a path differs from the manifest.
#[derive(Debug, Clone)]
pub enum RemoteChange {
    /// New or possibly modified (its content is compared after download).
    Changed(RemoteEntry),
    Deleted,
}

/// What changed in the sandbox, and what it holds that cannot sync (reported per path).
#[derive(Debug, Default)]
pub struct RemoteDiff {
    pub changes: BTreeMap<String, RemoteChange>,
    pub skipped: Vec<SkippedPath>,
    /// The (size, modification time) pairs more than one file of the listing shares; `None` when the listing did not
    /// cover the whole sandbox, so that could not be known (see `RemoteStamp::shared`).
    pub shared: Option<HashSet<(u64, i128)>>,
}

/// Compares a remote listing with the manifest within `scope`. Every listed path is checked first: one that is
/// not a plain relative path (a broken or hostile listing) fails the whole sync before anything is written. An entry
/// whose name cannot sync is reported on its own. Where symlinks lead is decided when they are placed.
///
/// A file is unchanged when its permission bits are the base's and its recorded `RemoteStamp` matches the listing and
/// can be trusted (not racy, not ambiguous); anything else is a possible change, fetched and compared by content.
/// `whole_sandbox` says the listing covers every file of the sandbox (not just some paths), ignored ones included.
pub fn diff_remote(
    manifest: &Manifest,
    listing: Vec<RemoteEntry>,
    rules: &Rules,
    secrets: &SecretFilter,
    scope: Option<&[String]>,
    whole_sandbox: bool,
) -> Result<RemoteDiff> {
    for entry in &listing {
        check_relative(&entry.path)?;
    }
    let in_scope = |path: &str| match scope {
        None => true,
        Some(paths) => paths.iter().any(|prefix| {
            prefix.is_empty() || path == prefix || (path.starts_with(prefix.as_str()) && path[prefix.len()..].starts_with('/'))
        }),
    };
    // Only stamps that cannot be told apart by inode need the whole manifest scanned (on every save, in a big tree,
    // that scan would cost more than the rest of the comparison). A listing of the whole sandbox asks every recorded
    // stamp in one pass (never less careful, and no lookup per path); a look at a few paths (a save) asks only theirs.
    let recorded_without_inode = |record: &super::manifest::Record| {
        record.kind == EntryKind::File && record.remote.as_ref().is_some_and(|stamp| stamp.inode.is_none())
    };
    let without_inodes = listing.iter().any(|entry| entry.kind == EntryKind::File && entry.inode.is_none())
        || match whole_sandbox {
            true => manifest.entries.values().any(|record| recorded_without_inode(record)),
            false => listing
                .iter()
                .filter(|entry| entry.kind == EntryKind::File)
                .any(|entry| manifest.entries.get(&entry.path).is_some_and(|record| recorded_without_inode(record))),
        };
    let mut ambiguous = if without_inodes { ambiguous_stamps(manifest) } else { HashSet::new() };
    let mut diff = RemoteDiff::default();
    if whole_sandbox {
        let shared = shared_stamps(&listing);
        ambiguous.extend(shared.iter().copied());
        diff.shared = Some(shared);
    }
    // Sorted like the manifest, the listing is compared with it in one pass over both: recorded paths passed over
    // are the ones the sandbox no longer has.
    let mut listing = super::walk::sorted_by_path(listing, |entry| &entry.path);
    // A path listed twice (which no real listing does) counts once, as the first listed.
    listing.dedup_by(|later, first| later.path == first.path);
    let mut excluder = rules.excluder();
    let mut records = manifest.entries.iter().peekable();
    for entry in listing {
        if entry.kind == EntryKind::Dir || !in_scope(&entry.path) {
            continue;
        }
        if excluder.is_excluded(&entry.path, false) || secrets.holds_back(&entry.path) {
            continue;
        }
        while let Some((path, _)) = records.next_if(|(path, _)| path.as_str() < entry.path.as_str()) {
            if in_scope(path) {
                diff.changes.insert(path.clone(), RemoteChange::Deleted);
            }
        }
        let record = records.next_if(|(path, _)| **path == entry.path).map(|(_, record)| record);
        if let Some(reason) = &entry.unsyncable {
            diff.skipped.push(SkippedPath { path: entry.path.clone(), reason: reason.clone() });
            continue;
        }
        let unchanged = record.is_some_and(|record| {
            record.kind == entry.kind
                && match entry.kind {
                    EntryKind::Symlink => record.link_target == entry.link_target,
                    _ => {
                        record.mode & PERMISSION_BITS == entry.mode & PERMISSION_BITS
                            && record.remote.as_ref().is_some_and(|stamp| {
                                let without_inodes = stamp.inode.is_none() || entry.inode.is_none();
                                stamp.matches(&entry)
                                    && !stamp.is_racy(&entry)
                                    && !(without_inodes
                                        && (stamp.shared || ambiguous.contains(&(stamp.size, stamp.mtime_ns))))
                            })
                    }
                }
        });
        if !unchanged {
            diff.changes.insert(entry.path.clone(), RemoteChange::Changed(entry));
        }
    }
    for (path, _) in records {
        if in_scope(path) {
            diff.changes.insert(path.clone(), RemoteChange::Deleted);
        }
    }
    Ok(diff)
}

/// The (size, modification time) pairs more than one file of a listing shares.
fn shared_stamps(listing: &[RemoteEntry]) -> HashSet<(u64, i128)> {
    let mut seen = HashSet::new();
    let mut shared = HashSet::new();
    for entry in listing.iter().filter(|entry| entry.kind == EntryKind::File) {
        let key = (entry.size, entry.mtime_ns);
        if !seen.insert(key) {
            shared.insert(key);
        }
    }
    shared
}

/// The (size, modification time) pairs that more than one recorded file shares while their contents differ: where
/// the inodes cannot be compared, one of them renamed over another in the sandbox would match the other's stamp.
fn ambiguous_stamps(manifest: &Manifest) -> HashSet<(u64, i128)> {
    let mut first_hash: HashMap<(u64, i128), &str> = HashMap::new();
    let mut ambiguous = HashSet::new();
    for record in manifest.entries.values() {
        let Some(stamp) = record.remote.as_ref().filter(|_| record.kind == EntryKind::File) else {
            continue;
        };
        let key = (stamp.size, stamp.mtime_ns);
        match first_hash.get(&key) {
            Some(hash) if *hash != record.hash.as_str() => {
                ambiguous.insert(key);
            }
            Some(_) => {}
            None => {
                first_hash.insert(key, record.hash.as_str());
            }
        }
    }
    ambiguous
}

/// Turns deleted paths into the fewest deletions: a whole directory when it is gone locally.
pub fn compress_deletions(workspace: &Path, deleted: &BTreeSet<String>) -> Vec<String> {
    let mut chosen: BTreeSet<String> = BTreeSet::new();
    for path in deleted {
        let mut candidate = path.as_str();
        while let Some((parent, _)) = candidate.rsplit_once('/') {
            if workspace.join(parent).exists() {
                break;
            }
            candidate = parent;
        }
        chosen.insert(candidate.to_string());
    }
    let mut result: Vec<String> = Vec::new();
    for path in chosen {
        let covered = result.iter().any(|kept| path.starts_with(kept.as_str()) && path[kept.len()..].starts_with('/'));
        if !covered {
            result.push(path);
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::manifest::Record;
    use crate::sync::scan::LocalEntry;

    #[test]
    fn deletions_should_collapse_to_the_missing_directory() {
        let dir = tempfile::tempdir().expect("a temp dir");
        std::fs::create_dir_all(dir.path().join("kept")).expect("mkdir");
        let deleted: BTreeSet<String> =
            ["gone/a/b.txt", "gone/c.txt", "kept/d.txt"].into_iter().map(String::from).collect();
        assert_eq!(compress_deletions(dir.path(), &deleted), vec!["gone".to_string(), "kept/d.txt".to_string()]);
    }

    #[test]
    fn remote_diff_should_refuse_paths_outside_the_root() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let manifest = Manifest::load(dir.path().join("m.json"));
        let rules = Rules::new(dir.path(), &Default::default()).expect("rules");
        let secrets = SecretFilter::new(dir.path(), &[]).expect("filter");
        let listing = vec![RemoteEntry {
            path: "../escape".into(),
            kind: EntryKind::File,
            size: 1,
            mtime_ns: 0,
            subsecond: true,
            inode: None,
            ctime_ns: None,
            mode: 0o644,
            link_target: None,
            unsyncable: None,
        }];
        let error = diff_remote(&manifest, listing, &rules, &secrets, None, true).unwrap_err();
        assert_eq!(error.kind(), crate::protocol::ErrorKind::PathOutsideWorkspace);
    }

    /// A listed file whose modification time is second `second` of 2020.
    fn listed(path: &str, inode: Option<u64>, mode: u32, second: i128) -> RemoteEntry {
        RemoteEntry {
            path: path.into(),
            kind: EntryKind::File,
            size: 3,
            mtime_ns: (1_600_000_000 + second) * 1_000_000_000,
            subsecond: true,
            inode,
            ctime_ns: inode.map(|_| 1_600_000_000_000_000_000),
            mode,
            link_target: None,
            unsyncable: None,
        }
    }

    #[test]
    fn remote_diff_should_see_rename_overs_mode_changes_and_shared_stamps() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let rules = Rules::new(dir.path(), &Default::default()).expect("rules");
        let secrets = SecretFilter::new(dir.path(), &[]).expect("filter");
        let local = LocalEntry { kind: EntryKind::File, size: 3, mtime_ns: 0, mode: 0o644, inode: 1, link_target: None };
        let mut manifest = Manifest::load(dir.path().join("m.json"));
        let observed = 1_700_000_000_000_000_000;
        for (second, (path, inode)) in [("same", Some(1)), ("renamed-over", Some(2)), ("chmodded", Some(3)), ("no-inode", None)].into_iter().enumerate() {
            let stamp = crate::sync::manifest::RemoteStamp::listed(&listed(path, inode, 0o644, second as i128), observed, false);
            manifest.insert(path.into(), crate::sync::manifest::Record::new(&local, format!("hash of {path}"), Some(stamp)));
        }
        let listing = vec![
            listed("same", Some(1), 0o644, 0),
            listed("renamed-over", Some(9), 0o644, 1),
            listed("chmodded", Some(3), 0o755, 2),
            listed("no-inode", None, 0o644, 3),
        ];
        let changed = |listing: Vec<RemoteEntry>, whole: bool| -> Vec<String> {
            let diff = diff_remote(&manifest, listing, &rules, &secrets, None, whole).expect("diff");
            diff.changes.into_keys().collect()
        };
        assert_eq!(changed(listing.clone(), false), ["chmodded", "renamed-over"]);
        // Without inodes, a stamp another file of the sandbox shares (an ignored file, say) is compared by content.
        let mut with_twin = listing;
        with_twin.push(listed("twin", None, 0o644, 3));
        assert_eq!(changed(with_twin, true), ["chmodded", "no-inode", "renamed-over", "twin"]);
    }

    #[test]
    fn local_diff_should_rehash_racy_files_only() {
        let dir = tempfile::tempdir().expect("a temp dir");
        std::fs::write(dir.path().join("a"), "one").expect("write");
        let metadata = std::fs::symlink_metadata(dir.path().join("a")).expect("stat");
        let local = LocalEntry::from_metadata(&metadata, None);
        let mut manifest = Manifest::load(dir.path().join("m.json"));
        // Recorded with the right metadata but a stale hash, as if the file changed within the same timestamp tick.
        manifest.insert("a".into(), Record::new(&local, "stale".into(), None));
        let mut scan = Scan::default();
        scan.entries.insert("a".into(), local);
        let diff = diff_local(&mut manifest, &scan, dir.path(), None);
        assert!(diff.changed.contains("a"), "a racily clean file is compared by content");
    }
}
