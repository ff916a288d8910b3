//! The manifest: the last state both sides confirmed, per path, persisted under the session's state directory so a
//! restart neither rehashes nor re-uploads everything. It is the common base for two-way sync.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::scan::LocalEntry;
use super::{EntryKind, RemoteEntry};
use crate::error::{Error, IoContext, Result};

/// Bumped when the format changes; a manifest of another version is then ignored (the next sync compares by content),
/// except version 2, which is still read (see `Manifest::load`).
const FORMAT_VERSION: u32 = 3;

/// The manifest's file name in a session's state directory.
pub const FILE_NAME: &str = "manifest";

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
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Record {
    pub kind: EntryKind,
    pub size: u64,
    pub mtime_ns: i128,
    pub mode: u32,
    pub inode: u64,
    /// blake3 of the content (of the target, for symlinks), hex.
    pub hash: String,
    #[serde(default)]
    pub link_target: Option<String>,
    /// When this record was written, to tell racily clean files.
    pub recorded_ns: i128,
    /// How the sandbox's copy looked when both sides agreed, when known; without it the sandbox's copy is compared
    /// by content.
    #[serde(default)]
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
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RemoteStamp {
    pub size: u64,
    pub mtime_ns: i128,
    #[serde(default)]
    pub inode: Option<u64>,
    #[serde(default)]
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

/// The manifest as version 2 wrote it (JSON, in `LEGACY_FILE_NAME`): read once, when a session saved by an older
/// sandlink is opened again.
#[derive(Deserialize)]
struct LegacyStored {
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
    /// Loads the manifest at `path` (or, when there is none, the one an older sandlink left beside it), or starts
    /// empty when there is none or it cannot be read.
    pub fn load(path: PathBuf) -> Self {
        let entries = match std::fs::read(&path) {
            Ok(bytes) => decode(&bytes),
            Err(_) => std::fs::read(path.with_file_name(LEGACY_FILE_NAME))
                .ok()
                .and_then(|bytes| serde_json::from_slice::<LegacyStored>(&bytes).ok())
                .filter(|stored| stored.version == LEGACY_FORMAT_VERSION)
                .map(|stored| stored.entries),
        };
        Manifest { entries: entries.unwrap_or_default(), path, dirty: false }
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

    /// Says the entries as they are now reached the file (`save_atomically` of them, under the caller's lock).
    pub fn mark_saved(&mut self) {
        self.dirty = false;
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

/// Writes the manifest of `entries` atomically (temporary file, then rename, so a crash leaves the old one or the
/// new one), encoded straight into the file: the encoded form of a big tree's manifest is never held in memory whole.
/// A manifest an older sandlink left beside it is removed once this one is in place.
pub fn save_atomically(path: &Path, entries: &Entries) -> Result<()> {
    let dir = path.parent().ok_or_else(|| Error::Internal("The manifest path has no directory.".into()))?;
    std::fs::create_dir_all(dir).context(|| format!("Could not create {}", dir.display()))?;
    let file = tempfile::NamedTempFile::new_in(dir).context(|| format!("Could not write in {}", dir.display()))?;
    let mut writer = std::io::BufWriter::with_capacity(256 * 1024, file);
    encode(entries, &mut writer).and_then(|()| writer.flush()).context(|| format!("Could not write the manifest {}", path.display()))?;
    let file = writer.into_inner().map_err(|error| Error::io(format!("Could not write the manifest {}", path.display()), error.into_error()))?;
    file.persist(path)
        .map_err(|error| Error::io(format!("Could not save the manifest {}", path.display()), error.error))?;
    if let Err(error) = std::fs::remove_file(path.with_file_name(LEGACY_FILE_NAME)) {
        if error.kind() != std::io::ErrorKind::NotFound {
            tracing::debug!(%error, "could not remove the manifest an older sandlink saved");
        }
    }
    Ok(())
}

// The file format (version 3), little-endian throughout. JSON (version 2) spent most of a save on field names and
// hexadecimal hashes: 396 bytes a file, 8.7 ms for 20,000 files, on the path of every initial sync. This one is about
// half the size and a few times faster to write, and like git's index it is read and written by the code below alone.
//
//   header:  MAGIC, version u32, entry count u64
//   entry:   path (str), flags u16, size u64, mtime_ns i128, mode u32, inode u64, recorded_ns i128,
//            hash (32 bytes when HASH_IN_BINARY, else str), [link target (str)],
//            [remote: size u64, mtime_ns i128, [inode u64], [ctime_ns i128], observed_ns i128]
//   str:     length u32, then UTF-8 bytes
//
// Anything else (a wrong magic or version, a count the entries do not fill, bytes left over, a path twice) reads as
// no manifest at all, and the next sync compares by content.

/// The first bytes of a manifest file.
const MAGIC: &[u8; 8] = b"sandlnkM";

/// The file name of a manifest as sandlink 2 wrote it, and its format version.
const LEGACY_FILE_NAME: &str = "manifest.json";
const LEGACY_FORMAT_VERSION: u32 = 2;

const KIND_BITS: u16 = 0b11;
const HAS_LINK_TARGET: u16 = 1 << 2;
const HAS_REMOTE: u16 = 1 << 3;
const HASH_IN_BINARY: u16 = 1 << 4;
const REMOTE_HAS_INODE: u16 = 1 << 5;
const REMOTE_HAS_CTIME: u16 = 1 << 6;
const REMOTE_SET_BY_UPLOAD: u16 = 1 << 7;
const REMOTE_SHARED: u16 = 1 << 8;
const KNOWN_FLAGS: u16 = (1 << 9) - 1;

/// Writes `entries` in the file format above.
pub fn encode(entries: &Entries, out: &mut impl Write) -> std::io::Result<()> {
    out.write_all(MAGIC)?;
    out.write_all(&FORMAT_VERSION.to_le_bytes())?;
    out.write_all(&(entries.len() as u64).to_le_bytes())?;
    // Each entry is put together in one buffer, so the writer is called once per entry rather than once per field.
    let mut buffer = Vec::with_capacity(512);
    for (path, record) in entries {
        buffer.clear();
        encode_entry(path, record, &mut buffer);
        out.write_all(&buffer)?;
    }
    Ok(())
}

fn encode_entry(path: &str, record: &Record, buffer: &mut Vec<u8>) {
    let binary_hash = hash_bytes(&record.hash);
    let remote = record.remote.as_ref();
    let mut flags = match record.kind {
        EntryKind::File => 0,
        EntryKind::Dir => 1,
        EntryKind::Symlink => 2,
    };
    let mut flag = |set: bool, bit: u16| flags |= if set { bit } else { 0 };
    flag(record.link_target.is_some(), HAS_LINK_TARGET);
    flag(binary_hash.is_some(), HASH_IN_BINARY);
    flag(remote.is_some(), HAS_REMOTE);
    flag(remote.is_some_and(|stamp| stamp.inode.is_some()), REMOTE_HAS_INODE);
    flag(remote.is_some_and(|stamp| stamp.ctime_ns.is_some()), REMOTE_HAS_CTIME);
    flag(remote.is_some_and(|stamp| stamp.set_by_upload), REMOTE_SET_BY_UPLOAD);
    flag(remote.is_some_and(|stamp| stamp.shared), REMOTE_SHARED);
    put_str(buffer, path);
    buffer.extend_from_slice(&flags.to_le_bytes());
    buffer.extend_from_slice(&record.size.to_le_bytes());
    buffer.extend_from_slice(&record.mtime_ns.to_le_bytes());
    buffer.extend_from_slice(&record.mode.to_le_bytes());
    buffer.extend_from_slice(&record.inode.to_le_bytes());
    buffer.extend_from_slice(&record.recorded_ns.to_le_bytes());
    match binary_hash {
        Some(bytes) => buffer.extend_from_slice(&bytes),
        None => put_str(buffer, &record.hash),
    }
    if let Some(target) = &record.link_target {
        put_str(buffer, target);
    }
    if let Some(stamp) = remote {
        buffer.extend_from_slice(&stamp.size.to_le_bytes());
        buffer.extend_from_slice(&stamp.mtime_ns.to_le_bytes());
        if let Some(inode) = stamp.inode {
            buffer.extend_from_slice(&inode.to_le_bytes());
        }
        if let Some(ctime_ns) = stamp.ctime_ns {
            buffer.extend_from_slice(&ctime_ns.to_le_bytes());
        }
        buffer.extend_from_slice(&stamp.observed_ns.to_le_bytes());
    }
}

fn put_str(buffer: &mut Vec<u8>, text: &str) {
    buffer.extend_from_slice(&(text.len() as u32).to_le_bytes());
    buffer.extend_from_slice(text.as_bytes());
}

/// The 32 bytes a blake3 hash in lowercase hexadecimal stands for; `None` for anything else, which is then kept as
/// text (so decoding gives back exactly the string that was encoded).
fn hash_bytes(hash: &str) -> Option<[u8; 32]> {
    let hex = hash.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    // Looked up in a table and checked once at the end: a branch per digit mispredicts on every letter, which made
    // this loop most of what a save cost.
    let mut bytes = [0u8; 32];
    let mut invalid = 0u8;
    for (byte, pair) in bytes.iter_mut().zip(hex.chunks_exact(2)) {
        let (high, low) = (HEX_DIGITS[pair[0] as usize], HEX_DIGITS[pair[1] as usize]);
        invalid |= high | low;
        *byte = high << 4 | low & 0x0f;
    }
    (invalid & NOT_A_DIGIT == 0).then_some(bytes)
}

/// The value of each lowercase hexadecimal digit, and `NOT_A_DIGIT` for every other byte.
const HEX_DIGITS: [u8; 256] = {
    let mut table = [NOT_A_DIGIT; 256];
    let mut digit = 0;
    while digit < 16 {
        table[b"0123456789abcdef"[digit] as usize] = digit as u8;
        digit += 1;
    }
    table
};
const NOT_A_DIGIT: u8 = 0x10;

/// The entries of a manifest file, or `None` when it is not one this version wrote whole.
pub fn decode(bytes: &[u8]) -> Option<Entries> {
    let mut reader = Reader { bytes };
    if reader.take(MAGIC.len())? != MAGIC || reader.u32()? != FORMAT_VERSION {
        return None;
    }
    let count = reader.u64()?;
    let mut pairs = Vec::new();
    for _ in 0..count {
        pairs.push(decode_entry(&mut reader)?);
    }
    if !reader.bytes.is_empty() {
        return None;
    }
    let sorted = pairs.windows(2).all(|pair| pair[0].0 < pair[1].0);
    // Saved from a map, so in order with no path twice; a file that says otherwise was not written by `encode`.
    sorted.then(|| Entries::from_iter(pairs))
}

fn decode_entry(reader: &mut Reader<'_>) -> Option<(String, Arc<Record>)> {
    let path = reader.string()?;
    let flags = reader.u16()?;
    if flags & !KNOWN_FLAGS != 0 {
        return None;
    }
    let kind = match flags & KIND_BITS {
        0 => EntryKind::File,
        1 => EntryKind::Dir,
        2 => EntryKind::Symlink,
        _ => return None,
    };
    let (size, mtime_ns, mode, inode, recorded_ns) = (reader.u64()?, reader.i128()?, reader.u32()?, reader.u64()?, reader.i128()?);
    let hash = match flags & HASH_IN_BINARY != 0 {
        true => blake3::Hash::from_bytes(reader.take(32)?.try_into().ok()?).to_hex().to_string(),
        false => reader.string()?,
    };
    let link_target = if flags & HAS_LINK_TARGET != 0 { Some(reader.string()?) } else { None };
    let remote = match flags & HAS_REMOTE != 0 {
        true => Some(RemoteStamp {
            size: reader.u64()?,
            mtime_ns: reader.i128()?,
            inode: if flags & REMOTE_HAS_INODE != 0 { Some(reader.u64()?) } else { None },
            ctime_ns: if flags & REMOTE_HAS_CTIME != 0 { Some(reader.i128()?) } else { None },
            observed_ns: reader.i128()?,
            set_by_upload: flags & REMOTE_SET_BY_UPLOAD != 0,
            shared: flags & REMOTE_SHARED != 0,
        }),
        false if flags & (REMOTE_HAS_INODE | REMOTE_HAS_CTIME | REMOTE_SET_BY_UPLOAD | REMOTE_SHARED) != 0 => return None,
        false => None,
    };
    let record = Record { kind, size, mtime_ns, mode, inode, hash, link_target, recorded_ns, remote };
    Some((path, Arc::new(record)))
}

/// Reads fixed-size fields off the front of a manifest file's bytes; every read is `None` past the end.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < count {
            return None;
        }
        let (taken, rest) = self.bytes.split_at(count);
        self.bytes = rest;
        Some(taken)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }

    fn i128(&mut self) -> Option<i128> {
        self.array().map(i128::from_le_bytes)
    }

    fn string(&mut self) -> Option<String> {
        let length = self.u32()? as usize;
        String::from_utf8(self.take(length)?.to_vec()).ok()
    }
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

    fn entry(kind: EntryKind, inode: u64) -> LocalEntry {
        LocalEntry { kind, size: 3, mtime_ns: -5, mode: 0o644, inode, link_target: None }
    }

    #[test]
    fn manifest_should_survive_a_reload() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("sessions/s").join(FILE_NAME);
        let mut manifest = Manifest::load(path.clone());
        assert!(manifest.entries.is_empty());
        let local = entry(EntryKind::File, 7);
        manifest.insert("a/b".into(), Record::new(&local, hash_link("b"), Some(RemoteStamp::uploaded(3, 0))));
        manifest.insert("a/c".into(), Record::new(&local, "h".into(), Some(RemoteStamp::uploaded(3, 0))));
        manifest.insert("ab".into(), Record::new(&local, "h".into(), Some(RemoteStamp::uploaded(3, 0))));
        save_atomically(&path, &manifest.snapshot().expect("dirty")).expect("write");
        let reloaded = Manifest::load(path);
        assert_eq!(reloaded.entries, manifest.entries);
        assert_eq!(reloaded.paths_under("a"), vec!["a/b".to_string(), "a/c".to_string()]);
    }

    /// Every field and every optional part, at the edges of its range: what is written is what is read back.
    #[test]
    fn every_field_should_come_back_as_it_was_saved() {
        let mut entries = Entries::new();
        let stamps = [
            None,
            Some(RemoteStamp { size: u64::MAX, mtime_ns: i128::MIN, inode: None, ctime_ns: None, observed_ns: 0, set_by_upload: false, shared: false }),
            Some(RemoteStamp { size: 0, mtime_ns: i128::MAX, inode: Some(u64::MAX), ctime_ns: Some(-1), observed_ns: i128::MAX, set_by_upload: true, shared: true }),
            Some(RemoteStamp { size: 1, mtime_ns: 2, inode: Some(3), ctime_ns: None, observed_ns: 4, set_by_upload: false, shared: true }),
        ];
        // Hashes as sandlink makes them, and text that only looks like one (upper case, a digit short) kept as text.
        let hashes = [hash_link("x"), hash_link("x").to_uppercase(), hash_link("x")[1..].to_string(), String::new(), "é".into()];
        for (index, stamp) in stamps.iter().enumerate() {
            for (kind_index, kind) in [EntryKind::File, EntryKind::Dir, EntryKind::Symlink].into_iter().enumerate() {
                let mut local = entry(kind, index as u64 * 3 + kind_index as u64);
                local.link_target = (kind == EntryKind::Symlink).then(|| format!("../target {index} ✓"));
                let hash = hashes[(index + kind_index) % hashes.len()].clone();
                let mut record = Record::new(&local, hash, stamp.clone());
                record.recorded_ns = i128::MIN + index as i128;
                entries.insert(format!("dir {index}/ünïcode {kind_index}"), Arc::new(record));
            }
        }
        let mut bytes = Vec::new();
        encode(&entries, &mut bytes).expect("encode");
        assert_eq!(decode(&bytes), Some(entries.clone()));
        assert_eq!(decode(&{
            let mut empty = Vec::new();
            encode(&Entries::new(), &mut empty).expect("encode");
            empty
        }), Some(Entries::new()), "an empty manifest is a manifest");
    }

    /// A manifest cut short, grown, or not written by this version is no manifest: the next sync compares by content
    /// rather than trusting part of one.
    #[test]
    fn a_damaged_manifest_should_read_as_none() {
        let mut entries = Entries::new();
        for index in 0..3 {
            let stamp = Some(RemoteStamp::uploaded(3, 9));
            entries.insert(format!("f{index}"), Arc::new(Record::new(&entry(EntryKind::File, index), hash_link("h"), stamp)));
        }
        let mut bytes = Vec::new();
        encode(&entries, &mut bytes).expect("encode");
        for length in 0..bytes.len() {
            assert_eq!(decode(&bytes[..length]), None, "cut to {length} bytes");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode(&longer), None, "a byte too many");
        let mut other_version = bytes.clone();
        other_version[MAGIC.len()] = 4;
        assert_eq!(decode(&other_version), None, "another version");
        let mut unknown_flag = bytes.clone();
        let flags_at = MAGIC.len() + 4 + 8 + 4 + "f0".len();
        unknown_flag[flags_at + 1] |= 0x80;
        assert_eq!(decode(&unknown_flag), None, "a flag this version does not know");
        let mut out_of_order = bytes.clone();
        // The three entries are laid out alike, so the second one's path ("f1") starts one entry past the first's.
        let entry_length = (bytes.len() - (MAGIC.len() + 4 + 8)) / 3;
        let second_path_at = MAGIC.len() + 4 + 8 + entry_length + 4;
        assert_eq!(&bytes[second_path_at..second_path_at + 2], b"f1");
        out_of_order[second_path_at + 1] = b'0';
        assert_eq!(decode(&out_of_order), None, "a path twice");
    }

    /// A session saved by sandlink 2 keeps its base: its JSON manifest is read once, and the first save replaces it.
    #[test]
    fn a_version_2_manifest_should_be_read_and_then_replaced() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let legacy = dir.path().join(LEGACY_FILE_NAME);
        let hash = hash_link("b");
        let stored = format!(
            r#"{{"version":2,"entries":{{"a/b":{{"kind":"file","size":3,"mtime_ns":5,"mode":420,"inode":7,"hash":"{hash}","recorded_ns":9,"remote":{{"size":3,"mtime_ns":0,"observed_ns":11,"set_by_upload":true}}}},"l":{{"kind":"symlink","size":1,"mtime_ns":5,"mode":511,"inode":8,"hash":"{hash}","link_target":"a/b","recorded_ns":9}}}}}}"#
        );
        std::fs::write(&legacy, stored).expect("write");
        let path = dir.path().join(FILE_NAME);
        let mut manifest = Manifest::load(path.clone());
        assert_eq!(manifest.entries.len(), 2);
        let file = &manifest.entries["a/b"];
        assert_eq!((file.kind, file.size, file.inode, file.hash.as_str()), (EntryKind::File, 3, 7, hash.as_str()));
        assert!(file.remote.as_ref().is_some_and(|stamp| stamp.set_by_upload && stamp.inode.is_none() && stamp.observed_ns == 11));
        assert_eq!(manifest.entries["l"].link_target.as_deref(), Some("a/b"));
        manifest.mark_dirty();
        save_atomically(&path, &manifest.snapshot().expect("dirty")).expect("save");
        assert!(!legacy.exists(), "the old file is gone once the new one is in place");
        assert_eq!(Manifest::load(path).entries, manifest.entries);
    }
}
