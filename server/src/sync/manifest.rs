//! The manifest: the last state both sides confirmed, per path, persisted under the session's state directory so a
//! restart neither rehashes nor re-uploads everything. It is the common base for two-way sync.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::scan::LocalEntry;
use super::{EntryKind, RemoteEntry};
use crate::error::{Error, IoContext, Result};

/// Bumped when the format changes; an old manifest is then ignored (the next sync compares by content).
const FORMAT_VERSION: u32 = 2;

/// Files modified this close to when they were recorded may change again within the file system's timestamp
/// granularity without their `mtime` moving, so their content is re-checked (git's "racily clean" entries). Two
/// seconds cover drivers that only know whole seconds, and a sandbox clock up to a second off the engine's.
pub const RACY_WINDOW_NS: i128 = 2_000_000_000;

/// The racy window for the sandbox's stamps: `RACY_WINDOW_NS`, unless `SANDLINK_SYNC_RACY_WINDOW_MS` sets another.
/// The model test of sync (tests/rust/sync_model.rs) narrows it so its fast steps are not all racy, which would
/// compare every file by content and leave the inode and status-change checks untested; nothing else should set it.
pub fn remote_racy_window_ns() -> i128 {
    static WINDOW: std::sync::OnceLock<i128> = std::sync::OnceLock::new();
    *WINDOW.get_or_init(|| {
        std::env::var("SANDLINK_SYNC_RACY_WINDOW_MS")
            .ok()
            .and_then(|value| value.parse::<i128>().ok())
            .map_or(RACY_WINDOW_NS, |milliseconds| milliseconds * 1_000_000)
    })
}

/// One path as last synced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub kind: EntryKind,
    pub size: u64,
    pub mtime_ns: i128,
    pub mode: u32,
    pub inode: u64,
    /// blake3 of the content (of the target, for symlinks), hex.
    pub hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
    /// When this record was written, to tell racily clean files.
    pub recorded_ns: i128,
    /// How the sandbox's copy looked when both sides agreed, when known; without it the sandbox's copy is compared
    /// by content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteStamp>,
}

/// What a sandbox listing said of a file when both sides last agreed on it: a listing that says anything else means
/// the sandbox's copy may have changed, and it is then fetched and compared by content.
///
/// Each driver gives what it can (see `RemoteEntry`), and every field both the stamp and a listing have is compared:
/// size and modification time always, inode and status-change time where known (a same-size file renamed over
/// another within one second differs in both). What the fields cannot show is checked by content:
/// - a stamp whose status-change time (or, without one, modification time) lies within `RACY_WINDOW_NS` of when it
///   was observed is "racy", as git calls such index entries: a write later in the same clock tick (or second, for
///   drivers without sub-second times) would leave every field as it was, so its content is compared on the next
///   look, which also refreshes it;
/// - without inodes, a stamp another file shares is ambiguous (one renamed over the other would look unchanged): two
///   records sharing size and modification time but not content, or a stamp `shared` with any file of the listing it
///   came from or of the current one, so its content is compared too (see `plan::diff_remote`);
/// - on drivers that tell inodes and status-change times, uploaded files are looked at right after the upload (by
///   the driver as it writes them, or by the engine), so those stamps hold them too (an archive cannot carry them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteStamp {
    pub size: u64,
    pub mtime_ns: i128,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inode: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctime_ns: Option<i128>,
    /// When the engine asked for the listing this stamp comes from (its own clock, taken before asking).
    pub observed_ns: i128,
    /// Whether the modification time is the whole second sandlink itself gave the file on upload, rather than one the
    /// sandbox's clock wrote.
    #[serde(default)]
    pub set_by_upload: bool,
    /// Whether another file of the sandbox had the same size and modification time when this was observed (or that
    /// could not be known): without inodes, one renamed over the other would leave this stamp as it is.
    #[serde(default)]
    pub shared: bool,
}

impl RemoteStamp {
    /// The stamp of a listing entry, asked for at `observed_ns`; `shared` as the field says.
    pub fn listed(entry: &RemoteEntry, observed_ns: i128, shared: bool) -> Self {
        RemoteStamp {
            size: entry.size,
            mtime_ns: entry.mtime_ns,
            inode: entry.inode,
            ctime_ns: entry.ctime_ns,
            observed_ns,
            set_by_upload: false,
            shared,
        }
    }

    /// The stamp of a file just uploaded, from the driver's look at it right after (asked for at `observed_ns`);
    /// `None` when that look shows another size or time than the upload gave it, so the sandbox changed it already and
    /// its content must be compared next time.
    pub fn after_upload(entry: &RemoteEntry, size: u64, mtime_s: u64, observed_ns: i128) -> Option<Self> {
        let uploaded = RemoteStamp::uploaded(size, mtime_s);
        (entry.kind == EntryKind::File && uploaded.matches(entry))
            .then(|| RemoteStamp { set_by_upload: true, ..RemoteStamp::listed(entry, observed_ns, false) })
    }

    /// The stamp of a file just uploaded: its size and the whole second its archive header gave it.
    pub fn uploaded(size: u64, mtime_s: u64) -> Self {
        RemoteStamp {
            size,
            mtime_ns: mtime_s as i128 * 1_000_000_000,
            inode: None,
            ctime_ns: None,
            observed_ns: now_ns(),
            set_by_upload: true,
            shared: false,
        }
    }

    /// Whether `entry` says what this stamp says, in every field both know.
    pub fn matches(&self, entry: &RemoteEntry) -> bool {
        let agree = |recorded: Option<i128>, listed: Option<i128>| match (recorded, listed) {
            (Some(recorded), Some(listed)) => recorded == listed,
            _ => true,
        };
        self.size == entry.size
            && self.mtime_ns == entry.mtime_ns
            && agree(self.inode.map(i128::from), entry.inode.map(i128::from))
            && agree(self.ctime_ns, entry.ctime_ns)
    }

    /// Whether matching fields cannot be trusted, because a write after the stamp was taken could have left them all
    /// as they were.
    /// - The status-change time cannot be set back, so once it is safely before the observation any later write,
    ///   rename or chmod moves it; it decides where both the stamp and the listing have it.
    /// - Without it the modification time decides, which `touch`, `cp -p` or `tar` can set into the past: a file
    ///   rewritten with the same size and the same old time stays unseen on such drivers (E2B, see the architecture
    ///   notes), short of comparing every file by content on every look.
    /// - A file sandlink uploaded carries an exact whole second; on a driver with sub-second times any later write
    ///   gives it the sandbox clock's time instead (and moves the status-change time the driver's look right after the
    ///   upload recorded), so only whole-second drivers make it racy.
    ///
    /// Times in whole seconds may be up to a second behind the truth, which widens the window by that second.
    pub fn is_racy(&self, entry: &RemoteEntry) -> bool {
        if self.set_by_upload && entry.subsecond {
            return false;
        }
        let window = remote_racy_window_ns() + if entry.subsecond { 0 } else { 1_000_000_000 };
        if let (Some(ctime_ns), Some(_)) = (self.ctime_ns, entry.ctime_ns) {
            return ctime_ns + window >= self.observed_ns;
        }
        self.mtime_ns + window >= self.observed_ns
    }
}

impl Record {
    pub fn new(local: &LocalEntry, hash: String, remote: Option<RemoteStamp>) -> Self {
        Record {
            kind: local.kind,
            size: local.size,
            mtime_ns: local.mtime_ns,
            mode: local.mode,
            inode: local.inode,
            hash,
            link_target: local.link_target.clone(),
            recorded_ns: now_ns(),
            remote,
        }
    }

    /// Whether the local entry's metadata still matches, so its content need not be read.
    pub fn same_metadata(&self, local: &LocalEntry) -> bool {
        self.kind == local.kind
            && self.size == local.size
            && self.mtime_ns == local.mtime_ns
            && self.inode == local.inode
            && self.mode == local.mode
            && self.link_target == local.link_target
    }

    /// This record with a workspace stamp no file has (inode 0, which no Linux file system gives a file), for a
    /// file that changed while it was read: the next scan takes it as changed whatever it looks like then.
    pub fn with_workspace_side_unknown(mut self) -> Self {
        self.inode = 0;
        self
    }

    /// Whether matching metadata cannot be trusted because the file was modified just before it was recorded.
    pub fn is_racy(&self) -> bool {
        self.kind == EntryKind::File && self.mtime_ns + RACY_WINDOW_NS >= self.recorded_ns
    }
}

#[derive(Serialize, Deserialize)]
struct Stored {
    version: u32,
    entries: BTreeMap<String, Arc<Record>>,
}

/// The manifest's entries. Records are shared, so the copy each save takes is one pointer per path rather than the
/// whole record: for 50,000 files that copy was 17 MB of the server's peak during an initial sync.
pub type Entries = BTreeMap<String, Arc<Record>>;

/// The per-session manifest, in memory, with its file.
#[derive(Debug)]
pub struct Manifest {
    pub entries: Entries,
    path: PathBuf,
    dirty: bool,
}

impl Manifest {
    /// Loads the manifest at `path`, or starts empty when there is none or it cannot be read.
    pub fn load(path: PathBuf) -> Self {
        let entries = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Stored>(&bytes).ok())
            .filter(|stored| stored.version == FORMAT_VERSION)
            .map(|stored| stored.entries)
            .unwrap_or_default();
        Manifest { entries, path, dirty: false }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn insert(&mut self, path: String, record: Record) {
        self.entries.insert(path, Arc::new(record));
        self.dirty = true;
    }

    pub fn remove(&mut self, path: &str) -> Option<Arc<Record>> {
        let removed = self.entries.remove(path);
        self.dirty |= removed.is_some();
        removed
    }

    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Paths recorded at or under `prefix` (`""` is everything).
    pub fn paths_under(&self, prefix: &str) -> Vec<String> {
        if prefix.is_empty() {
            return self.entries.keys().cloned().collect();
        }
        let mut found = Vec::new();
        if self.entries.contains_key(prefix) {
            found.push(prefix.to_string());
        }
        let start = format!("{prefix}/");
        found.extend(self.entries.range(start.clone()..).map(|(path, _)| path).take_while(|path| path.starts_with(&start)).cloned());
        found
    }

    /// A copy of the entries to persist, when they changed; taken under the lock and written outside it with
    /// `save_atomically`, so a save arriving meanwhile is not held up by serialisation.
    pub fn snapshot(&mut self) -> Option<Entries> {
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        Some(self.entries.clone())
    }
}

#[derive(Serialize)]
struct StoredRef<'a> {
    version: u32,
    entries: &'a Entries,
}

/// Writes the manifest of `entries` atomically (temporary file, then rename, so a crash leaves the old one or the
/// new one), serialised straight into the file: the encoded form of a big tree's manifest (13 MB for 50,000 files) is never held in memory, let alone twice while
/// a growing buffer is copied.
pub fn save_atomically(path: &Path, entries: &Entries) -> Result<()> {
    let dir = path.parent().ok_or_else(|| Error::Internal("The manifest path has no directory.".into()))?;
    std::fs::create_dir_all(dir).context(|| format!("Could not create {}", dir.display()))?;
    let file = tempfile::NamedTempFile::new_in(dir).context(|| format!("Could not write in {}", dir.display()))?;
    let mut writer = std::io::BufWriter::with_capacity(64 * 1024, file);
    let stored = StoredRef { version: FORMAT_VERSION, entries };
    let written = serde_json::to_writer(&mut writer, &stored).map_err(std::io::Error::from).and_then(|()| writer.flush());
    written.context(|| format!("Could not write the manifest {}", path.display()))?;
    let file = writer.into_inner().map_err(|error| Error::io(format!("Could not write the manifest {}", path.display()), error.into_error()))?;
    file.persist(path)
        .map_err(|error| Error::io(format!("Could not save the manifest {}", path.display()), error.error))?;
    Ok(())
}

/// Now, in nanoseconds since the Unix epoch.
pub fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() as i128)
        .unwrap_or(0)
}

/// blake3 of a file's content, read in chunks (never whole into memory).
pub fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    let mut file = std::fs::File::open(path)?;
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hasher.finalize().to_hex().to_string())
}

/// blake3 of a symlink's target, so symlinks and files share one notion of "same content".
pub fn hash_link(target: &str) -> String {
    blake3::hash(target.as_bytes()).to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_should_survive_a_reload() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("sessions/s/manifest.json");
        let mut manifest = Manifest::load(path.clone());
        assert!(manifest.entries.is_empty());
        let local = LocalEntry { kind: EntryKind::File, size: 3, mtime_ns: 5, mode: 0o644, inode: 7, link_target: None };
        manifest.insert("a/b".into(), Record::new(&local, "h".into(), Some(RemoteStamp::uploaded(3, 0))));
        manifest.insert("a/c".into(), Record::new(&local, "h".into(), Some(RemoteStamp::uploaded(3, 0))));
        manifest.insert("ab".into(), Record::new(&local, "h".into(), Some(RemoteStamp::uploaded(3, 0))));
        save_atomically(&path, &manifest.snapshot().expect("dirty")).expect("write");
        let reloaded = Manifest::load(path);
        assert_eq!(reloaded.entries, manifest.entries);
        assert_eq!(reloaded.paths_under("a"), vec!["a/b".to_string(), "a/c".to_string()]);
    }
}
