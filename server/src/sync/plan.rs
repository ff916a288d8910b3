//! What changed on each side since the last synced state (the manifest), and what to do about it.
//!
//! A change on one side only is copied to the other; a change on both sides that differs in content is a
//! conflict and neither side is touched. Whether "changed" holds is decided by metadata first and by content
//! (blake3) only when metadata cannot be trusted, so an unchanged tree is never re-read.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;

use super::manifest::{hash_file, now_ns, Manifest};
use super::rules::Rules;
use super::scan::{check_relative, LocalEntry, Scan};
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
    // Changed paths come in order, so they are gathered in a list and the set built from it at once: inserted one by
    // one, the 20,000 paths of a first sync took 3 ms, on one core, before anything was copied.
    let mut changed = Vec::new();
    let mut records = manifest.entries.iter_mut().peekable();
    for (path, entry) in &scan.entries {
        while let Some((recorded, _)) = records.next_if(|(recorded, _)| recorded.as_str() < path.as_str()) {
            if scope.is_none() {
                missing.push(recorded.clone());
            }
        }
        match records.next_if(|(recorded, _)| *recorded == path).map(|(_, record)| record) {
            None => changed.push(path.clone()),
            Some(record) if !record.same_metadata(entry) => changed.push(path.clone()),
            Some(record) if record.is_racy() => match hash_file(&workspace.join(path)) {
                Ok(hash) if hash == record.hash => {
                    // Same content: trust the metadata from now on, once it is older than the timestamp granularity.
                    std::sync::Arc::make_mut(record).recorded_ns = now;
                    touched = true;
                }
                _ => changed.push(path.clone()),
            },
            Some(_) => {}
        }
    }
    diff.changed = changed.into_iter().collect();
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

/// A sandbox listing ready to be compared: every path checked, sorted as the manifest is, each path once. Made on its
/// own (`checked`) so a sync can make it while the workspace is still being scanned.
#[derive(Debug, Default)]
pub struct Listing(Vec<RemoteEntry>);

impl Listing {
    /// Checks every listed path first: one that is not a plain relative path (a broken or hostile listing) fails the
    /// whole sync before anything is written. A path listed twice (which no real listing does) counts once, as the
    /// first listed.
    pub fn checked(entries: Vec<RemoteEntry>) -> Result<Listing> {
        for entry in &entries {
            check_relative(&entry.path)?;
        }
        let mut entries = super::walk::sorted_by_path(entries, |entry| &entry.path);
        entries.dedup_by(|later, first| later.path == first.path);
        Ok(Listing(entries))
    }
}

/// Compares a remote listing with the manifest within `scope`. An entry whose name cannot sync is reported on its
/// own. Where symlinks lead is decided when they are placed.
///
/// A file is unchanged when its permission bits are the base's and its recorded `RemoteStamp` matches the listing and
/// can be trusted (not racy, not ambiguous); anything else is a possible change, fetched and compared by content.
/// `whole_sandbox` says the listing covers every file of the sandbox (not just some paths), ignored ones included.
///
/// `taken` are the files this sync's scan took from the workspace: the same rules and secret filter passed each of
/// them moments ago, so a listed path among them is not asked again. In an unchanged tree that is nearly every
/// path, and asking took 8 of the 19 ms this comparison spent on 20,000 files.
pub fn diff_remote(
    manifest: &Manifest,
    listing: Listing,
    taken: &BTreeMap<String, LocalEntry>,
    rules: &Rules,
    secrets: &SecretFilter,
    scope: Option<&[String]>,
    whole_sandbox: bool,
) -> Result<RemoteDiff> {
    let Listing(listing) = listing;
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
    let listed_stamps = || listing.iter().filter(|entry| entry.kind == EntryKind::File).map(|entry| (entry.size, entry.mtime_ns));
    // Where inodes tell files apart, shared stamps matter only for the changed files' new stamps: asked for those
    // once they are known, so an unchanged tree pays for no table of all its stamps.
    let mut stamps_to_ask = Vec::new();
    if whole_sandbox && without_inodes {
        let shared = shared_stamps(listed_stamps(), None);
        ambiguous.extend(shared.iter().copied());
        diff.shared = Some(shared);
    } else if whole_sandbox {
        stamps_to_ask = listed_stamps().collect();
    }
    // Sorted like the manifest, the listing is compared with it in one pass over both: recorded paths passed over
    // are the ones the sandbox no longer has.
    let mut excluder = rules.excluder();
    let mut records = manifest.entries.iter().peekable();
    let mut taken_paths = taken.keys().peekable();
    for entry in listing {
        if entry.kind == EntryKind::Dir || !in_scope(&entry.path) {
            continue;
        }
        while taken_paths.next_if(|path| path.as_str() < entry.path.as_str()).is_some() {}
        let passed_by_scan = taken_paths.next_if(|path| **path == entry.path).is_some();
        if !passed_by_scan && (excluder.is_excluded(&entry.path, false) || secrets.holds_back(&entry.path)) {
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
    if whole_sandbox && diff.shared.is_none() {
        let changed: HashSet<(u64, i128)> = diff
            .changes
            .values()
            .filter_map(|change| match change {
                RemoteChange::Changed(entry) => Some((entry.size, entry.mtime_ns)),
                RemoteChange::Deleted => None,
            })
            .collect();
        diff.shared = Some(shared_stamps(stamps_to_ask.into_iter(), Some(&changed)));
    }
    Ok(diff)
}

/// The (size, modification time) pairs more than one of `stamps` shares; only those `asked`, where given.
fn shared_stamps(stamps: impl Iterator<Item = (u64, i128)>, asked: Option<&HashSet<(u64, i128)>>) -> HashSet<(u64, i128)> {
    if asked.is_some_and(HashSet::is_empty) {
        return HashSet::new();
    }
    let mut seen = HashSet::new();
    let mut shared = HashSet::new();
    for key in stamps.filter(|key| asked.is_none_or(|asked| asked.contains(key))) {
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
    fn remote_listings_should_refuse_paths_outside_the_root() {
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
        let error = Listing::checked(listing).unwrap_err();
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
            let diff = diff_remote(&manifest, Listing::checked(listing).expect("a listing"), &BTreeMap::new(), &rules, &secrets, None, whole).expect("diff");
            diff.changes.into_keys().collect()
        };
        assert_eq!(changed(listing.clone(), false), ["chmodded", "renamed-over"]);
        // Without inodes, a stamp another file of the sandbox shares (an ignored file, say) is compared by content.
        let mut with_twin = listing;
        with_twin.push(listed("twin", None, 0o644, 3));
        assert_eq!(changed(with_twin, true), ["chmodded", "no-inode", "renamed-over", "twin"]);
    }

    #[test]
    fn remote_diff_should_filter_what_the_scan_did_not_take_and_answer_as_without_the_scan() {
        let dir = tempfile::tempdir().expect("a temp dir");
        std::fs::write(dir.path().join(".gitignore"), "*.log\n").expect("write");
        for name in ["kept.txt", "build.log", ".env"] {
            std::fs::write(dir.path().join(name), "one").expect("write");
        }
        let rules = std::sync::Arc::new(Rules::new(dir.path(), &Default::default()).expect("rules"));
        let secrets = SecretFilter::new(dir.path(), &[]).expect("filter");
        let scanner = crate::sync::scan::Scanner { rules: rules.clone(), secrets: SecretFilter::new(dir.path(), &[]).expect("filter") };
        let scan = scanner.scan(None).expect("a scan");
        assert_eq!(scan.entries.keys().collect::<Vec<_>>(), [".gitignore", "kept.txt"], "what the scan took");
        let manifest = Manifest::load(dir.path().join("m.json"));
        // The sandbox holds the workspace's files (ignored and secret ones too, as a run could make them) and one of
        // its own.
        let listing = || {
            [".gitignore", "kept.txt", "build.log", ".env", "made-there.txt", "made-there.log"]
                .into_iter()
                .enumerate()
                .map(|(index, path)| listed(path, Some(index as u64 + 1), 0o644, index as i128))
                .collect::<Vec<_>>()
        };
        let changed = |taken: &BTreeMap<String, LocalEntry>| -> Vec<String> {
            let listing = Listing::checked(listing()).expect("a listing");
            diff_remote(&manifest, listing, taken, &rules, &secrets, None, true).expect("diff").changes.into_keys().collect()
        };
        let expected = [".gitignore", "kept.txt", "made-there.txt"];
        assert_eq!(changed(&scan.entries), expected, "with the scan's files");
        assert_eq!(changed(&BTreeMap::new()), expected, "without them");
    }

    #[test]
    fn remote_diff_should_tell_which_changed_files_share_a_stamp_where_inodes_tell_files_apart() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let rules = Rules::new(dir.path(), &Default::default()).expect("rules");
        let secrets = SecretFilter::new(dir.path(), &[]).expect("filter");
        let local = LocalEntry { kind: EntryKind::File, size: 3, mtime_ns: 0, mode: 0o644, inode: 1, link_target: None };
        let mut manifest = Manifest::load(dir.path().join("m.json"));
        let stamp = crate::sync::manifest::RemoteStamp::listed(&listed("same", Some(1), 0o644, 0), 1_700_000_000_000_000_000, false);
        manifest.insert("same".into(), Record::new(&local, "hash".into(), Some(stamp)));
        let diff = |listing: Vec<RemoteEntry>| {
            diff_remote(&manifest, Listing::checked(listing).expect("a listing"), &BTreeMap::new(), &rules, &secrets, None, true)
                .expect("diff")
        };
        let unchanged = diff(vec![listed("same", Some(1), 0o644, 0)]);
        assert!(unchanged.changes.is_empty());
        assert_eq!(unchanged.shared, Some(HashSet::new()), "a whole listing always tells");
        // "twin" is new with the unchanged file's size and time; "alone" is new with a time of its own.
        let changed = diff(vec![listed("same", Some(1), 0o644, 0), listed("twin", Some(2), 0o644, 0), listed("alone", Some(3), 0o644, 5)]);
        assert_eq!(changed.changes.keys().collect::<Vec<_>>(), ["alone", "twin"]);
        let twin = listed("twin", Some(2), 0o644, 0);
        assert_eq!(changed.shared, Some(HashSet::from([(twin.size, twin.mtime_ns)])));
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
