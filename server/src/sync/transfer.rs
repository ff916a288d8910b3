//! Moving files: packing tar streams (files streamed, hashed on the way), and unpacking them with atomic writes
//! (temporary file, then rename) that never go through a symlink or outside the root. Used on both ends: by the
//! engine for uploads and downloads, and by the local driver for the sandbox side.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tempfile::TempPath;

use super::beneath::{proc_fd_path, Beneath, Linked, WalkError};
use super::manifest::hash_link;
use super::resolve::{link_stays_inside, OnDisk};
use super::scan::{check_relative, LocalEntry};
use super::secret_scan::SCAN_LIMIT;
use super::secrets::SecretFilter;
use super::{EntryKind, PERMISSION_BITS};
use crate::error::{Error, IoContext, Result};

/// Buffer size between tar and the byte streams; large enough that headers and small files batch up.
const IO_BUFFER: usize = 256 * 1024;

/// One file or symlink that went into an archive, as it was read.
#[derive(Debug, Clone)]
pub struct Sent {
    pub path: String,
    pub local: LocalEntry,
    pub hash: String,
    /// False when the file changed while it was read; it is then not recorded, so the next sync sends it again.
    pub stable: bool,
}

/// Which symlinks `pack` sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// Only those that resolve inside `root` (the workspace's, going up).
    Inside,
    /// All, as they are: the receiving side decides against its own tree (the local sandbox's, coming down).
    AsTheyAre,
}

/// What `pack_checked` did.
#[derive(Debug, Default)]
pub struct Packed {
    /// What went into the archive.
    pub sent: Vec<Sent>,
    /// What was left out for its content, with the rule it broke (never the content).
    pub held_back: Vec<(String, &'static str)>,
}

/// Packs `paths` (relative to `root`) into a tar stream on `writer`; files are streamed in chunks and hashed as
/// they go. Paths that vanished are skipped. `on_bytes` is told how many content bytes went out.
pub fn pack(
    root: &Path,
    paths: &[String],
    links: Links,
    writer: impl Write,
    on_bytes: &mut dyn FnMut(u64),
) -> Result<Vec<Sent>> {
    pack_checked(root, paths, links, writer, on_bytes, None).map(|packed| packed.sent)
}

/// `pack`, checking each file against `secrets`' content check first: a text file up to `SCAN_LIMIT` is read
/// once into memory, hashed, checked, and written into the archive only when it holds no credential, so a secret
/// never starts on its way and nothing is read or hashed twice. Larger and allowed files stream as in `pack`.
pub fn pack_checked(
    root: &Path,
    paths: &[String],
    links: Links,
    writer: impl Write,
    on_bytes: &mut dyn FnMut(u64),
    secrets: Option<&SecretFilter>,
) -> Result<Packed> {
    let mut sink = TarSink::new(writer);
    let packed = read_out(root, paths, links, &mut sink, on_bytes, secrets)?;
    sink.finish()?;
    Ok(packed)
}

/// Where `read_out` puts the files and symlinks it reads: a tar stream (`TarSink`), or the sandbox's tree itself
/// when that is a directory on this machine (`PlaceSink`, through `copy_batches`).
pub trait Sink {
    /// A symlink to `target`.
    fn link(&mut self, path: &str, target: &str, mtime_s: u64) -> Result<()>;
    /// A regular file whose `content` yields exactly `size` bytes.
    fn file(&mut self, path: &str, mode: u32, mtime_s: u64, size: u64, content: &mut dyn Read) -> Result<()>;
}

/// Reads `paths` (relative to `root`) into `sink`; files are streamed in chunks and hashed as they go, and checked
/// against `secrets` as `pack_checked` says. Paths that vanished are skipped.
pub fn read_out(
    root: &Path,
    paths: &[String],
    links: Links,
    sink: &mut dyn Sink,
    on_bytes: &mut dyn FnMut(u64),
    secrets: Option<&SecretFilter>,
) -> Result<Packed> {
    // Every file is reached through directory descriptors without following a link, so a directory swapped for a
    // link after the scan (by a build, or by whatever runs in a local sandbox) cannot make this read elsewhere.
    let mut beneath = Beneath::open(root).context(|| format!("Could not open {}", root.display()))?;
    read_out_beneath(&mut beneath, root, paths, links, sink, on_bytes, secrets)
}

/// `read_out` through a `Beneath` of `root` that the caller keeps, so its open directories serve the next call.
fn read_out_beneath(
    beneath: &mut Beneath,
    root: &Path,
    paths: &[String],
    links: Links,
    sink: &mut dyn Sink,
    on_bytes: &mut dyn FnMut(u64),
    secrets: Option<&SecretFilter>,
) -> Result<Packed> {
    let mut sent = Vec::with_capacity(paths.len());
    let mut held_back = Vec::new();
    // One buffer for every file read whole for its content check: an allocation and a free per file weighed about
    // as much as the check itself.
    let mut content = Vec::new();
    for relative in paths {
        let file = match beneath.open_file_looked(relative) {
            Ok(file) => file,
            Err(error) => {
                tracing::debug!(path = %relative, ?error, "skipped a file that could not be reached without a symlink");
                continue;
            }
        };
        let Some(file) = file else {
            // Not a regular file: a symlink goes as a symlink when it resolves inside the tree; anything else is skipped.
            let Ok(Some(stat)) = beneath.lstat(relative) else { continue };
            if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Symlink {
                continue;
            }
            let Ok(target) = beneath.read_link(relative) else { continue };
            let Ok(target) = String::from_utf8(target) else { continue };
            if links == Links::Inside && !link_stays_inside(&OnDisk { root }, relative, &target) {
                continue;
            }
            let local = LocalEntry::from_stat(&stat, Some(target.clone()));
            sink.link(relative, &target, mtime_seconds(local.mtime_ns))?;
            sent.push(Sent { path: relative.clone(), local, hash: hash_link(&target), stable: true });
            continue;
        };
        let (file, before) = file;
        let local = LocalEntry::from_metadata(&before, None);
        // Only the permission bits travel: setuid, setgid and sticky are never set by sync.
        let mode = local.mode & PERMISSION_BITS;
        let mtime_s = mtime_seconds(local.mtime_ns);
        let check = secrets.and_then(|filter| filter.content_check_for(relative)).filter(|_| local.size <= SCAN_LIMIT);
        if let (Some(check), Some(stamp)) = (check, local.stamp()) {
            content.clear();
            content.reserve(local.size as usize);
            if let Err(error) = (&file).take(local.size).read_to_end(&mut content) {
                tracing::debug!(path = %relative, %error, "skipped a file that could not be read");
                continue;
            }
            let hash = blake3::hash(&content);
            if let Some(rule) = check.check(relative, &stamp, &hash, &content) {
                held_back.push((relative.clone(), rule));
                continue;
            }
            // A file that shrank since its `fstat` goes as read (the header says so) and is sent again next time.
            sink.file(relative, mode, mtime_s, content.len() as u64, &mut content.as_slice())?;
            on_bytes(content.len() as u64);
            let after = file.metadata().ok().map(|metadata| LocalEntry::from_metadata(&metadata, None));
            let stable = content.len() as u64 == local.size && after.as_ref() == Some(&local);
            sent.push(Sent { path: relative.clone(), local, hash: hash.to_hex().to_string(), stable });
            continue;
        }
        let mut reader = HashingReader::new(file, local.size);
        sink.file(relative, mode, mtime_s, local.size, &mut reader)?;
        on_bytes(local.size);
        let after = reader.file.metadata().ok().map(|metadata| LocalEntry::from_metadata(&metadata, None));
        let stable = !reader.short && after.as_ref() == Some(&local);
        sent.push(Sent { path: relative.clone(), local, hash: reader.finish(), stable });
    }
    Ok(Packed { sent, held_back })
}

/// A tar stream being written, for `read_out`.
struct TarSink<W: Write> {
    builder: tar::Builder<std::io::BufWriter<W>>,
}

impl<W: Write> TarSink<W> {
    fn new(writer: W) -> Self {
        // Buffered so 512-byte tar headers do not each become a write to the (async-bridged) stream.
        let mut builder = tar::Builder::new(std::io::BufWriter::with_capacity(IO_BUFFER, writer));
        builder.mode(tar::HeaderMode::Complete);
        TarSink { builder }
    }

    fn finish(self) -> Result<()> {
        self.builder.into_inner().map_err(send_failed)?.flush().map_err(send_failed)
    }
}

fn send_failed(source: std::io::Error) -> Error {
    Error::io("Could not send files to the sandbox", source)
}

impl<W: Write> Sink for TarSink<W> {
    fn link(&mut self, path: &str, target: &str, mtime_s: u64) -> Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        header.set_mode(0o777);
        header.set_mtime(mtime_s);
        self.builder.append_link(&mut header, path, target).map_err(send_failed)
    }

    fn file(&mut self, path: &str, mode: u32, mtime_s: u64, size: u64, content: &mut dyn Read) -> Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(size);
        header.set_mode(mode);
        header.set_mtime(mtime_s);
        self.builder.append_data(&mut header, path, content).map_err(send_failed)
    }
}

/// Whole seconds of a nanosecond timestamp, as tar headers carry them.
pub fn mtime_seconds(mtime_ns: i128) -> u64 {
    (mtime_ns.div_euclid(1_000_000_000)).max(0) as u64
}

/// Reads exactly `size` bytes of a file, hashing them; pads with zeros if the file shrank meanwhile.
struct HashingReader {
    file: File,
    remaining: u64,
    hasher: blake3::Hasher,
    short: bool,
}

impl HashingReader {
    fn new(file: File, size: u64) -> Self {
        HashingReader { file, remaining: size, hasher: blake3::Hasher::new(), short: false }
    }

    fn finish(self) -> String {
        self.hasher.finalize().to_hex().to_string()
    }
}

impl Read for HashingReader {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let limit = buffer.len().min(self.remaining as usize);
        let mut count = if self.short { 0 } else { self.file.read(&mut buffer[..limit])? };
        if count == 0 {
            // The file shrank while being read: pad so the archive stays well-formed, and mark it unstable.
            self.short = true;
            buffer[..limit].fill(0);
            count = limit;
        }
        self.hasher.update(&buffer[..count]);
        self.remaining -= count as u64;
        Ok(count)
    }
}

/// An entry read from an archive into a temporary file (or, for symlinks, just its target).
#[derive(Debug)]
pub struct Staged {
    pub path: String,
    pub kind: EntryKind,
    pub size: u64,
    pub mtime_s: u64,
    pub mode: u32,
    pub hash: String,
    pub link_target: Option<String>,
    /// The content, for files; removed when dropped unless placed.
    pub temp: Option<TempPath>,
}

/// Reads every file and symlink of an archive into `staging` (hashing contents), refusing unsafe paths before
/// anything reaches the destination. Where a symlink leads is decided when it is placed, against the real tree.
pub fn stage(reader: impl Read, staging: &Path) -> Result<Vec<Staged>> {
    std::fs::create_dir_all(staging).context(|| format!("Could not create {}", staging.display()))?;
    let mut archive = tar::Archive::new(std::io::BufReader::with_capacity(IO_BUFFER, reader));
    let mut staged = Vec::new();
    let read_failed = |source: std::io::Error| Error::io("Could not read the archive from the sandbox", source);
    for entry in archive.entries().map_err(read_failed)? {
        let mut entry = entry.map_err(read_failed)?;
        let raw_path = entry.path_bytes().into_owned();
        let Ok(path) = String::from_utf8(raw_path) else {
            // Only paths sandlink asked for (all UTF-8) are placed; anything else in the archive is not one of them.
            tracing::debug!("skipped an archive entry whose name is not UTF-8");
            continue;
        };
        let path = path.trim_end_matches('/').to_string();
        let header = entry.header();
        let entry_type = header.entry_type();
        let mode = header.mode().unwrap_or(0o644) & PERMISSION_BITS;
        let mtime_s = header.mtime().unwrap_or(0);
        if entry_type.is_dir() {
            check_relative(&path)?;
            continue;
        }
        check_relative(&path)?;
        if entry_type.is_symlink() {
            let Some(target) = entry.link_name_bytes().and_then(|bytes| String::from_utf8(bytes.into_owned()).ok()) else {
                tracing::debug!(%path, "skipped a symlink whose target is not UTF-8");
                continue;
            };
            let hash = hash_link(&target);
            staged.push(Staged {
                path,
                kind: EntryKind::Symlink,
                size: target.len() as u64,
                mtime_s,
                mode: 0o777,
                hash,
                link_target: Some(target),
                temp: None,
            });
            continue;
        }
        if !(entry_type.is_file() || entry_type == tar::EntryType::Continuous) {
            tracing::debug!(%path, "skipped an archive entry that is neither a file nor a symlink");
            continue;
        }
        let mut temp = tempfile::Builder::new()
            .prefix(".sandlink-")
            .tempfile_in(staging)
            .context(|| format!("Could not create a temporary file in {}", staging.display()))?;
        let mut hasher = blake3::Hasher::new();
        let size = copy_hashing(&mut entry, temp.as_file_mut(), &mut hasher).map_err(read_failed)?;
        finish_temp(temp.as_file(), mode, mtime_s, &path)?;
        let temp = temp.into_temp_path();
        staged.push(Staged {
            path,
            kind: EntryKind::File,
            size,
            mtime_s,
            mode,
            hash: hasher.finalize().to_hex().to_string(),
            link_target: None,
            temp: Some(temp),
        });
    }
    Ok(staged)
}

/// Gives a written temporary file its final mode and modification time, through its descriptor (no path lookups).
fn finish_temp(file: &File, mode: u32, mtime_s: u64, path: &str) -> Result<()> {
    file.set_permissions(std::fs::Permissions::from_mode(mode)).context(|| format!("Could not set the mode of {path}"))?;
    set_mtime(file, mtime_s, path)
}

fn set_mtime(file: &File, mtime_s: u64, path: &str) -> Result<()> {
    let mtime = filetime::FileTime::from_unix_time(mtime_s as i64, 0);
    filetime::set_file_handle_times(file, None, Some(mtime)).context(|| format!("Could not set the modification time of {path}"))
}

fn copy_hashing(reader: &mut impl Read, writer: &mut File, hasher: &mut blake3::Hasher) -> std::io::Result<u64> {
    let mut buffer = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let count = reader.read(&mut buffer)?;
        if count == 0 {
            return Ok(total);
        }
        hasher.update(&buffer[..count]);
        writer.write_all(&buffer[..count])?;
        total += count as u64;
    }
}

/// Puts a staged entry at `path` under the root atomically (rename), creating parent directories but never writing
/// through a symlink: a parent that is a link fails with `pathOutsideWorkspace`, naming it.
pub fn place(beneath: &mut Beneath, staged: Staged) -> Result<()> {
    let path = staged.path.clone();
    let through_link = |error: WalkError| walk_failed(&path, error);
    match staged.kind {
        EntryKind::Symlink => beneath.symlink(staged.link_target.as_deref().unwrap_or_default(), &path).map_err(through_link),
        EntryKind::File | EntryKind::Dir => {
            let Some(temp) = staged.temp else { return Ok(()) };
            match beneath.rename_into(&temp, &path) {
                Ok(()) => {
                    // Renamed away: nothing is left for the guard to remove.
                    let _ = temp.keep();
                    Ok(())
                }
                Err(WalkError::Io(error)) if error.raw_os_error() == Some(libc::EXDEV) => {
                    // Across file systems a rename cannot work: copy next to the target, then rename there.
                    let (mut local, temporary) = beneath.create_beside(&path, staged.mode).map_err(through_link)?;
                    let copied = File::open(&temp)
                        .and_then(|mut source| std::io::copy(&mut source, &mut local))
                        .and_then(|_| local.set_permissions(std::fs::Permissions::from_mode(staged.mode)))
                        .and_then(|()| {
                            let mtime = filetime::FileTime::from_unix_time(staged.mtime_s as i64, 0);
                            filetime::set_file_handle_times(&local, None, Some(mtime))
                        });
                    drop(local);
                    if let Err(error) = copied {
                        let _ = beneath.remove(&sibling(&path, &temporary));
                        return Err(Error::io(format!("Could not write {path}"), error));
                    }
                    beneath.rename_beside(&temporary, &path).map_err(through_link)
                }
                Err(error) => Err(through_link(error)),
            }
        }
    }
}

/// The error of a write to `path` whose walk stopped: at a symlink it is `pathOutsideWorkspace`, naming the link.
fn walk_failed(path: &str, error: WalkError) -> Error {
    match error {
        WalkError::Link(link) => Error::PathOutsideWorkspace(format!(
            "\"{path}\" would be written through the symlink \"{link}\", which could lead outside the root; nothing was \
             written there. Replace the symlink with a directory, or exclude the path."
        )),
        WalkError::Missing => Error::Internal(format!("The directory of {path} vanished while it was written.")),
        WalkError::Io(error) => Error::io(format!("Could not write {path}"), error),
    }
}

/// The relative path of `name` in the directory of `path`.
fn sibling(path: &str, name: &str) -> String {
    match path.rsplit_once('/') {
        Some((parent, _)) => format!("{parent}/{name}"),
        None => name.to_string(),
    }
}

/// Unpacks an uploaded archive under `root`, each entry through `staging` (same file system) and a rename.
/// Returns each file written, with its metadata right after it was placed (the status-change time of the rename
/// included), so the caller need not look again.
pub fn unpack_atomically(reader: impl Read, root: &Path, staging: &Path) -> Result<Vec<(String, rustix::fs::Stat)>> {
    let mut sink = PlaceSink::open(root, staging, "the upload archive")?;
    let mut archive = tar::Archive::new(std::io::BufReader::with_capacity(IO_BUFFER, reader));
    let read_failed = |source: std::io::Error| Error::io("Could not read the upload archive", source);
    for entry in archive.entries().map_err(read_failed)? {
        let mut entry = entry.map_err(read_failed)?;
        let path = String::from_utf8_lossy(&entry.path_bytes()).trim_end_matches('/').to_string();
        check_relative(&path)?;
        let header = entry.header();
        let entry_type = header.entry_type();
        let mode = header.mode().unwrap_or(0o644) & PERMISSION_BITS;
        let mtime_s = header.mtime().unwrap_or(0);
        if entry_type.is_dir() {
            sink.directory(&path)?;
        } else if entry_type.is_symlink() {
            let target = entry
                .link_name_bytes()
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                .unwrap_or_default();
            sink.link(&path, &target, mtime_s)?;
        } else if entry_type.is_file() || entry_type == tar::EntryType::Continuous {
            let size = entry.size();
            sink.file(&path, mode, mtime_s, size, &mut entry)?;
        }
    }
    Ok(sink.placed)
}

/// One batch as `copy_batches` hands it over: what was read (and held back), and how each placed file looked right
/// after it was written.
pub type CopiedBatch = (Packed, Vec<(String, rustix::fs::Stat)>);

/// Copies `batches` of workspace paths straight into the tree at `root`, which is a directory on this machine (the
/// local driver's sandbox): what `pack_checked` and then `unpack_atomically` do through a tar stream, with the same
/// checks and atomic placement, but with no archive to write and parse and every byte copied once. Every core takes
/// part: each takes the next run of `COPY_RUN` paths until none is left (runs keep a directory's files together, and
/// a core held up by big files simply takes fewer runs). Each batch goes to `done` (with its index) as soon as all
/// of its files are placed: what was read, in the order of its paths, as `pack_checked` answers it, and each file
/// written with its metadata, as `unpack_atomically` does. The cores go on to the next batch's files at once: with a
/// batch copied at a time, one core waited at the end of each for the other's last run, and the caller's recording
/// of the last batch waited for both (16 ms of an initial sync of 50,000 files).
///
/// Once `stop` is set no batch is started, and every batch already started is finished and handed over, so what
/// was placed is reported. A batch that fails is handed over as its error alone and stops the rest the same way:
/// files its other runs placed go unreported, as with one copy per batch before, and the next sync, finding them
/// without a record, compares them by content.
/// The error answered is one that came before any batch started (the trees could not be opened), or a copying
/// thread's panic.
#[allow(clippy::too_many_arguments)]
pub fn copy_batches(
    source: &Path,
    batches: &[Vec<String>],
    secrets: Option<&SecretFilter>,
    root: &Path,
    staging: &Path,
    fresh: bool,
    stop: &std::sync::atomic::AtomicBool,
    done: &(dyn Fn(usize, Result<CopiedBatch>) + Sync),
) -> Result<()> {
    use std::sync::atomic::Ordering;
    // Every run of every batch, in order, with its batch and its place in it.
    let runs: Vec<(usize, usize, &[String])> = batches
        .iter()
        .enumerate()
        .flat_map(|(batch, paths)| paths.chunks(COPY_RUN).enumerate().map(move |(index, run)| (batch, index, run)))
        .collect();
    let progress: Vec<std::sync::Mutex<BatchProgress>> = batches
        .iter()
        .map(|paths| std::sync::Mutex::new(BatchProgress::new(paths.len().div_ceil(COPY_RUN))))
        .collect();
    // How many batches were started; decided under a lock, so a batch is either started by every run of it that
    // asks or by none (a run of it skipped after another began would leave the batch never handed over).
    let started = std::sync::Mutex::new(0usize);
    let may_run = |batch: usize| {
        let mut started = crate::locks::lock(&started);
        if batch < *started {
            return true;
        }
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        *started = batch + 1;
        true
    };
    let threads = std::thread::available_parallelism().map_or(1, usize::from).min(runs.len()).max(1);
    let mut sinks = Vec::with_capacity(threads);
    for _ in 0..threads {
        let mut sink = PlaceSink::open(root, staging, "the workspace")?;
        sink.fresh = fresh;
        let workspace = Beneath::open(source).context(|| format!("Could not open {}", source.display()))?;
        sinks.push((sink, workspace));
    }
    let next_run = std::sync::atomic::AtomicUsize::new(0);
    let copy_runs = |(mut sink, mut workspace): (PlaceSink<'_>, Beneath)| loop {
        let index = next_run.fetch_add(1, Ordering::Relaxed);
        let Some(&(batch, place, run)) = runs.get(index) else { return };
        if !may_run(batch) {
            return;
        }
        let copied = read_out_beneath(&mut workspace, source, run, Links::Inside, &mut sink, &mut |_| {}, secrets);
        let placed = std::mem::take(&mut sink.placed);
        if copied.is_err() {
            stop.store(true, Ordering::SeqCst);
        }
        let finished = crate::locks::lock(&progress[batch]).add(place, copied.map(|packed| (packed, placed)));
        if let Some(outcome) = finished {
            done(batch, outcome);
        }
    };
    if threads == 1 {
        sinks.into_iter().for_each(copy_runs);
        return Ok(());
    }
    // A copying thread that panicked never hands over the batch it held; the others finish what was started.
    let panicked = std::thread::scope(|scope| {
        let workers: Vec<_> = sinks.into_iter().map(|sink| scope.spawn(|| copy_runs(sink))).collect();
        workers.into_iter().map(|worker| worker.join().is_err()).fold(false, |panicked, this| panicked | this)
    });
    if panicked {
        return Err(Error::Internal("A copying thread panicked.".into()));
    }
    Ok(())
}

/// The runs of one batch that `copy_batches` finished so far.
struct BatchProgress {
    remaining: usize,
    parts: Vec<Option<CopiedBatch>>,
    error: Option<Error>,
}

impl BatchProgress {
    fn new(runs: usize) -> Self {
        BatchProgress { remaining: runs, parts: (0..runs).map(|_| None).collect(), error: None }
    }

    /// Adds the run at `place`; once it was the last, the whole batch, its runs in order (or its first error).
    fn add(&mut self, place: usize, copied: Result<CopiedBatch>) -> Option<Result<CopiedBatch>> {
        match copied {
            Ok(part) => self.parts[place] = Some(part),
            Err(error) => {
                self.error.get_or_insert(error);
            }
        }
        self.remaining -= 1;
        if self.remaining > 0 {
            return None;
        }
        if let Some(error) = self.error.take() {
            return Some(Err(error));
        }
        let mut packed = Packed::default();
        let mut placed = Vec::new();
        for (part, part_placed) in self.parts.drain(..).flatten() {
            packed.sent.extend(part.sent);
            packed.held_back.extend(part.held_back);
            placed.extend(part_placed);
        }
        Some(Ok((packed, placed)))
    }
}

/// Paths per run of `copy_batches`: enough that a run's files share their directories' walks, few enough that the
/// cores finish together.
const COPY_RUN: usize = 64;

/// Files up to this size are written as unnamed files in place (`PlaceSink::write_unnamed`), where the per-file
/// costs of a named staging file and a rename across directories weigh; bigger ones go through `staging` as
/// before, where those costs are nothing next to the content's.
const UNNAMED_FILE_LIMIT: u64 = 1 << 20;

/// Writes files and symlinks under a root atomically and never through a symlink: the sandbox's side of an upload
/// (from an archive, or straight from the workspace). Keeps how each placed file looked right after.
pub struct PlaceSink<'a> {
    root: &'a Path,
    staging: &'a Path,
    beneath: Beneath,
    /// Whether the file system makes unnamed files; the first refusal sends every later file the staging way.
    unnamed_files: bool,
    /// What content is read from, for errors: "the upload archive", "the workspace".
    source: &'static str,
    /// Whether nothing can look into the tree yet: the first upload of a new session, before connect answers, when
    /// no command runs in the sandbox. A new file is then written under its own name (`write_new`), which costs
    /// about 2 µs of system time less per file than an unnamed file and a link (a fifth of what placing a small file
    /// costs). A kill half-way leaves a partly written file, which is safe only because nothing reads the tree
    /// before connect answers and the manifest of a first upload is saved only once it has ended: the next upload
    /// then has no base, so the workspace's copy replaces it.
    pub fresh: bool,
    buffer: Vec<u8>,
    placed: Vec<(String, rustix::fs::Stat)>,
}

impl<'a> PlaceSink<'a> {
    pub fn open(root: &'a Path, staging: &'a Path, source: &'static str) -> Result<Self> {
        std::fs::create_dir_all(staging).context(|| format!("Could not create {}", staging.display()))?;
        let beneath = Beneath::open(root).context(|| format!("Could not open {}", root.display()))?;
        Ok(PlaceSink {
            root,
            staging,
            beneath,
            unnamed_files: true,
            source,
            fresh: false,
            buffer: vec![0; IO_BUFFER],
            placed: Vec::new(),
        })
    }

    /// Makes the directory `path` (and its parents), never through a link.
    fn directory(&mut self, path: &str) -> Result<()> {
        let placeholder = format!("{path}/x");
        match self.beneath.parent(&placeholder, true) {
            Ok(_) => Ok(()),
            Err(WalkError::Link(link)) => Err(Error::PathOutsideWorkspace(format!(
                "The directory \"{path}\" would be made through the symlink \"{link}\"; nothing was written there."
            ))),
            Err(WalkError::Missing) => Err(Error::Internal(format!("Could not create the directory {path}."))),
            Err(WalkError::Io(error)) => Err(Error::io(format!("Could not create the directory {path}"), error)),
        }
    }

    /// Copies `content` into `file` through the sink's buffer (one read and one write per 256 KiB, where
    /// `std::io::copy` would take 8 KiB at a time from a reader it cannot see through).
    fn copy_content(&mut self, content: &mut dyn Read, file: &mut File, path: &str) -> Result<()> {
        loop {
            let count = match content.read(&mut self.buffer) {
                Ok(0) => return Ok(()),
                Ok(count) => count,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(Error::io(format!("Could not read {path} from {}", self.source), error)),
            };
            file.write_all(&self.buffer[..count]).context(|| format!("Could not write {path}"))?;
        }
    }

    /// Writes one file under its own name where nothing stands yet, for a tree nothing looks into (`fresh`); a file
    /// whose writing fails is removed again. `None` (nothing read yet) where something stands there.
    fn write_new(&mut self, content: &mut dyn Read, path: &str, mode: u32, mtime_s: u64) -> Result<Option<rustix::fs::Stat>> {
        let mut file = match self.beneath.create_new(path, mode) {
            Ok(Some(file)) => file,
            Ok(None) => return Ok(None),
            Err(error) => return Err(walk_failed(path, error)),
        };
        let written = self.copy_content(content, &mut file, path).and_then(|()| {
            finish_made_file(&file, mode, mtime_s, path)?;
            rustix::fs::fstat(&file).map_err(std::io::Error::from).context(|| format!("Could not look at {path} after writing it"))
        });
        match written {
            Ok(stat) => Ok(Some(stat)),
            Err(error) => {
                let _ = self.beneath.unlink_file(path);
                Err(error)
            }
        }
    }

    /// Writes one file as an unnamed file (`O_TMPFILE`) in the directory that will hold it, and names it there once
    /// it is complete: one file created in place and no rename from the staging directory, so no path lookups and no
    /// cross-directory rename per file, and a kill at any point leaves nothing half-written or stray. Where a file
    /// already stands at `path`, the complete file is named in `staging` and renamed over it as before. Answers how
    /// the placed file looked right after, or `None` (nothing read yet) where the file system cannot make unnamed
    /// files, so the caller takes the staging route.
    fn write_unnamed(&mut self, content: &mut dyn Read, path: &str, mode: u32, mtime_s: u64) -> Result<Option<rustix::fs::Stat>> {
        let mut file = match self.beneath.create_unnamed(path, mode) {
            Ok(Some(file)) => file,
            Ok(None) => return Ok(None),
            Err(error) => return Err(walk_failed(path, error)),
        };
        self.copy_content(content, &mut file, path)?;
        finish_made_file(&file, mode, mtime_s, path)?;
        match self.beneath.link_unnamed(&file, path).map_err(|error| walk_failed(path, error))? {
            Linked::Named => {}
            linked => {
                // Something stands there (or /proc is missing): name the complete file in staging, then rename it over.
                let temp = name_in_staging(&mut file, linked, self.staging, mode, mtime_s, path)?;
                let staged = Staged { path: path.to_string(), kind: EntryKind::File, size: 0, mtime_s, mode, hash: String::new(), link_target: None, temp: Some(temp) };
                place(&mut self.beneath, staged)?;
            }
        }
        match rustix::fs::fstat(&file) {
            Ok(stat) if stat.st_nlink > 0 && stat.st_mode & PERMISSION_BITS == mode => Ok(Some(stat)),
            Ok(stat) if stat.st_nlink > 0 => {
                // The umask changed since it was read: the mode is set now, and looked at again.
                finish_temp(&file, mode, mtime_s, path)?;
                Ok(Some(rustix::fs::fstat(&file).map_err(std::io::Error::from).context(|| format!("Could not look at {path} after writing it"))?))
            }
            _ => Ok(self.beneath.lstat(path).context(|| format!("Could not look at {path} after writing it"))?),
        }
    }
}

/// Gives a file this sink just made with `mode` its time, and its mode where the umask took some of the mode's bits
/// away: where it took none, only the time is left to set (one system call fewer per file; the look after placing
/// checks the mode all the same).
fn finish_made_file(file: &File, mode: u32, mtime_s: u64, path: &str) -> Result<()> {
    if process_umask().is_some_and(|umask| mode & umask == 0) {
        set_mtime(file, mtime_s, path)
    } else {
        finish_temp(file, mode, mtime_s, path)
    }
}

/// This process's umask, read once from `/proc/self/status` (reading it with `umask(2)` would change it for a moment,
/// under every other thread); `None` where it cannot be told, and every file's mode is then set.
fn process_umask() -> Option<u32> {
    static UMASK: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find_map(|line| line.strip_prefix("Umask:"))?;
        u32::from_str_radix(line.trim(), 8).ok()
    })
}

impl Sink for PlaceSink<'_> {
    fn link(&mut self, path: &str, target: &str, mtime_s: u64) -> Result<()> {
        if !link_stays_inside(&OnDisk { root: self.root }, path, target) {
            return Err(Error::PathOutsideWorkspace(format!(
                "The upload's symlink \"{path}\" points outside the root; it was refused."
            )));
        }
        let staged = Staged {
            path: path.to_string(),
            kind: EntryKind::Symlink,
            size: 0,
            mtime_s,
            mode: 0o777,
            hash: String::new(),
            link_target: Some(target.to_string()),
            temp: None,
        };
        place(&mut self.beneath, staged)
    }

    fn file(&mut self, path: &str, mode: u32, mtime_s: u64, size: u64, content: &mut dyn Read) -> Result<()> {
        if self.fresh {
            if let Some(stat) = self.write_new(content, path, mode, mtime_s)? {
                self.placed.push((path.to_string(), stat));
                return Ok(());
            }
            // Something stands there already: replaced atomically, as always.
        }
        if self.unnamed_files && size <= UNNAMED_FILE_LIMIT {
            match self.write_unnamed(content, path, mode, mtime_s)? {
                Some(stat) => {
                    self.placed.push((path.to_string(), stat));
                    return Ok(());
                }
                // Not on this file system (or without /proc): every later file takes the staging route too.
                None => self.unnamed_files = false,
            }
        }
        let mut temp = tempfile::Builder::new()
            .prefix(".upload-")
            .tempfile_in(self.staging)
            .context(|| format!("Could not create a temporary file in {}", self.staging.display()))?;
        self.copy_content(content, temp.as_file_mut(), path)?;
        finish_temp(temp.as_file(), mode, mtime_s, path)?;
        let (file, temp) = temp.into_parts();
        let staged =
            Staged { path: path.to_string(), kind: EntryKind::File, size: 0, mtime_s, mode, hash: String::new(), link_target: None, temp: Some(temp) };
        place(&mut self.beneath, staged)?;
        // The descriptor still names the placed file, unless it was copied across file systems (the temporary one
        // is then gone), where the placed file is looked up instead.
        let looked = match rustix::fs::fstat(&file) {
            Ok(stat) if stat.st_nlink > 0 => Some(stat),
            _ => self.beneath.lstat(path).context(|| format!("Could not look at {path} after writing it"))?,
        };
        self.placed.extend(looked.map(|stat| (path.to_string(), stat)));
        Ok(())
    }
}

/// A staging name for a complete unnamed file: linked there when `/proc` allows, else copied into a new file.
fn name_in_staging(file: &mut File, linked: Linked, staging: &Path, mode: u32, mtime_s: u64, path: &str) -> Result<TempPath> {
    if linked == Linked::Exists {
        for _ in 0..16 {
            let candidate = staging.join(format!(".upload-{}", crate::ids::short_id()));
            match rustix::fs::linkat(rustix::fs::CWD, proc_fd_path(file).as_str(), rustix::fs::CWD, &candidate, rustix::fs::AtFlags::SYMLINK_FOLLOW) {
                Ok(()) => return TempPath::try_from_path(&candidate).context(|| format!("Could not stage {path}")),
                Err(rustix::io::Errno::EXIST) => continue,
                Err(_) => break,
            }
        }
    }
    let mut temp = tempfile::Builder::new()
        .prefix(".upload-")
        .tempfile_in(staging)
        .context(|| format!("Could not create a temporary file in {}", staging.display()))?;
    std::io::Seek::seek(file, std::io::SeekFrom::Start(0)).context(|| format!("Could not read back {path}"))?;
    std::io::copy(file, temp.as_file_mut()).context(|| format!("Could not write {path}"))?;
    finish_temp(temp.as_file(), mode, mtime_s, path)?;
    Ok(temp.into_temp_path())
}

/// Deletes relative paths under `root` (directories recursively), never through a symlinked parent.
pub fn delete_under(root: &Path, paths: &[String]) -> Result<()> {
    let mut beneath = Beneath::open(root).context(|| format!("Could not open {}", root.display()))?;
    for path in paths {
        check_relative(path)?;
        beneath.remove(path).context(|| format!("Could not delete {path}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_then_unpack_should_keep_content_modes_and_symlinks() {
        let source = tempfile::tempdir().expect("a temp dir");
        let destination = tempfile::tempdir().expect("a temp dir");
        let staging = tempfile::tempdir().expect("a temp dir");
        std::fs::create_dir_all(source.path().join("bin")).expect("mkdir");
        std::fs::write(source.path().join("bin/run.sh"), "#!/bin/sh\necho hi\n").expect("write");
        std::fs::set_permissions(source.path().join("bin/run.sh"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::os::unix::fs::symlink("bin/run.sh", source.path().join("link")).expect("symlink");
        let mut archive = Vec::new();
        let sent = pack(source.path(), &["bin/run.sh".into(), "link".into()], Links::Inside, &mut archive, &mut |_| {}).expect("pack");
        assert_eq!(sent.len(), 2);
        assert!(sent.iter().all(|entry| entry.stable));
        unpack_atomically(archive.as_slice(), destination.path(), staging.path()).expect("unpack");
        let copied = destination.path().join("bin/run.sh");
        assert_eq!(std::fs::read_to_string(&copied).expect("read"), "#!/bin/sh\necho hi\n");
        assert_eq!(std::fs::metadata(&copied).expect("stat").permissions().mode() & 0o777, 0o755);
        assert_eq!(std::fs::read_link(destination.path().join("link")).expect("readlink"), Path::new("bin/run.sh"));
        assert_eq!(std::fs::read_dir(staging.path()).expect("list").count(), 0, "no temporary file is left behind");
    }

    /// One batch through `copy_batches`, as the upload's first batch goes: its outcome, or the error of the copy.
    fn copy_across(
        source: &Path,
        paths: &[String],
        secrets: Option<&SecretFilter>,
        root: &Path,
        staging: &Path,
        fresh: bool,
    ) -> Result<CopiedBatch> {
        let copied = std::sync::Mutex::new(None);
        let never = std::sync::atomic::AtomicBool::new(false);
        let batches = [paths.to_vec()];
        copy_batches(source, &batches, secrets, root, staging, fresh, &never, &|_, outcome| {
            *crate::locks::lock(&copied) = Some(outcome);
        })?;
        let copied = copied.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
        copied.unwrap_or_else(|| Ok((Packed::default(), Vec::new())))
    }

    #[test]
    fn unpack_should_replace_files_and_directories_and_place_big_files_whole() {
        let destination = tempfile::tempdir().expect("a temp dir");
        let staging = tempfile::tempdir().expect("a temp dir");
        std::fs::write(destination.path().join("old.txt"), "old").expect("write");
        std::fs::create_dir_all(destination.path().join("was-dir/inner")).expect("mkdir");
        let big = vec![7u8; (UNNAMED_FILE_LIMIT + 1) as usize];
        let mut archive = tar::Builder::new(Vec::new());
        for (path, content, mode) in [("old.txt", &b"new"[..], 0o600), ("was-dir", &b"file"[..], 0o644), ("d/e/new.txt", &b"fresh"[..], 0o755), ("big.bin", &big[..], 0o644)] {
            let mut header = tar::Header::new_gnu();
            header.set_size(content.len() as u64);
            header.set_mode(mode);
            header.set_mtime(1_700_000_000);
            archive.append_data(&mut header, path, content).expect("append");
        }
        let bytes = archive.into_inner().expect("finish");
        let placed = unpack_atomically(bytes.as_slice(), destination.path(), staging.path()).expect("unpack");
        let read = |path: &str| std::fs::read(destination.path().join(path)).expect("read");
        assert_eq!(read("old.txt"), b"new", "an existing file is replaced");
        assert_eq!(read("was-dir"), b"file", "a directory standing there is replaced");
        assert_eq!(read("d/e/new.txt"), b"fresh", "missing parents are made");
        assert_eq!(read("big.bin"), big, "a big file arrives whole");
        for (path, mode) in [("old.txt", 0o600), ("was-dir", 0o644), ("d/e/new.txt", 0o755)] {
            let metadata = std::fs::metadata(destination.path().join(path)).expect("stat");
            assert_eq!(metadata.permissions().mode() & 0o777, mode, "{path}");
            assert_eq!(std::os::unix::fs::MetadataExt::mtime(&metadata), 1_700_000_000, "{path}");
        }
        let looked: Vec<&str> = placed.iter().map(|(path, _)| path.as_str()).collect();
        assert_eq!(looked, ["old.txt", "was-dir", "d/e/new.txt", "big.bin"]);
        for (path, stat) in &placed {
            let now = std::fs::symlink_metadata(destination.path().join(path)).expect("stat");
            assert_eq!(stat.st_ino, std::os::unix::fs::MetadataExt::ino(&now), "the look is of the placed file {path}");
            assert_eq!(stat.st_ctime, std::os::unix::fs::MetadataExt::ctime(&now), "{path}");
        }
        assert_eq!(std::fs::read_dir(staging.path()).expect("list").count(), 0, "no temporary file is left behind");
        let names: Vec<String> = std::fs::read_dir(destination.path().join("d/e")).expect("list").flatten().map(|entry| entry.file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["new.txt"], "nothing but the file is left beside it");
    }

    #[test]
    fn copy_across_should_place_what_pack_would_send_on_every_core() {
        let source = tempfile::tempdir().expect("a temp dir");
        let destination = tempfile::tempdir().expect("a temp dir");
        let staging = tempfile::tempdir().expect("a temp dir");
        let mut paths = Vec::new();
        // Enough files in shared directories that runs on different threads make the same directories at once.
        for index in 0..(COPY_RUN * 12) {
            let path = format!("d{}/e{}/f{index}.txt", index % 3, index % 5);
            std::fs::create_dir_all(source.path().join(&path).parent().expect("a parent")).expect("mkdir");
            std::fs::write(source.path().join(&path), format!("file {index}\n")).expect("write");
            paths.push(path);
        }
        let big = vec![3u8; (UNNAMED_FILE_LIMIT * 2) as usize];
        std::fs::write(source.path().join("big.bin"), &big).expect("write");
        std::fs::set_permissions(source.path().join("big.bin"), std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::os::unix::fs::symlink("d0/e0/f0.txt", source.path().join("inside")).expect("symlink");
        std::os::unix::fs::symlink("/etc/passwd", source.path().join("outside")).expect("symlink");
        let key = format!("{}{}", "AKIA", "Q3EGRJ5XZ7B2LKWN");
        std::fs::write(source.path().join("config.txt"), format!("aws_access_key_id = {key}\n")).expect("write");
        std::fs::write(destination.path().join("big.bin"), "an older copy").expect("write");
        paths.extend(["big.bin", "inside", "outside", "config.txt", "vanished.txt"].map(String::from));
        let secrets = SecretFilter::with_content(source.path(), &[], true).expect("a filter");

        let (packed, placed) = copy_across(source.path(), &paths, Some(&secrets), destination.path(), staging.path(), false).expect("copy");

        let sent: Vec<&str> = packed.sent.iter().map(|item| item.path.as_str()).collect();
        let expected: Vec<&str> =
            paths.iter().map(String::as_str).filter(|path| !["outside", "config.txt", "vanished.txt"].contains(path)).collect();
        assert_eq!(sent, expected, "what was read comes back in the order asked, escaping links and vanished files left out");
        assert_eq!(packed.held_back, [("config.txt".to_string(), "aws-access-key-id")], "a credential is held back by its content");
        assert!(!destination.path().join("config.txt").exists(), "and never reaches the sandbox");
        assert!(!destination.path().join("outside").exists());
        for (index, path) in paths.iter().take(COPY_RUN * 12).enumerate() {
            assert_eq!(std::fs::read_to_string(destination.path().join(path)).expect("read"), format!("file {index}\n"), "{path}");
        }
        assert_eq!(std::fs::read(destination.path().join("big.bin")).expect("read"), big, "a big file replaces the older copy whole");
        let big_mode = std::fs::metadata(destination.path().join("big.bin")).expect("stat").permissions().mode() & 0o777;
        assert_eq!(big_mode, 0o600, "a private file stays private");
        assert_eq!(std::fs::read_link(destination.path().join("inside")).expect("readlink"), Path::new("d0/e0/f0.txt"));
        let hashes: std::collections::HashMap<&str, &str> = packed.sent.iter().map(|item| (item.path.as_str(), item.hash.as_str())).collect();
        assert_eq!(hashes["big.bin"], blake3::hash(&big).to_hex().as_str(), "files are hashed as they are copied");
        assert_eq!(placed.len(), COPY_RUN * 12 + 1, "every file written is looked at once");
        for (path, stat) in &placed {
            let now = std::fs::symlink_metadata(destination.path().join(path)).expect("stat");
            assert_eq!(stat.st_ino, std::os::unix::fs::MetadataExt::ino(&now), "the look is of the placed file {path}");
        }
        assert_eq!(std::fs::read_dir(staging.path()).expect("list").count(), 0, "no temporary file is left behind");
    }

    /// Batches are handed over whole and once each; a stop starts no further batch, yet every file placed is in a
    /// batch handed over, so nothing is left written in the sandbox and unrecorded.
    #[test]
    fn copy_batches_should_report_every_placed_file_and_start_nothing_after_a_stop() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let source = tempfile::tempdir().expect("a temp dir");
        let staging = tempfile::tempdir().expect("a temp dir");
        // Several runs per batch, so batches are shared by both cores and finish out of order.
        let batches: Vec<Vec<String>> = (0..30)
            .map(|batch| {
                (0..COPY_RUN * 2 + 5)
                    .map(|index| {
                        let path = format!("b{batch}/d{}/f{index}.txt", index % 4);
                        std::fs::create_dir_all(source.path().join(&path).parent().expect("a parent")).expect("mkdir");
                        std::fs::write(source.path().join(&path), format!("{batch} {index}")).expect("write");
                        path
                    })
                    .collect()
            })
            .collect();
        for stop_after in [None, Some(0), Some(3)] {
            let destination = tempfile::tempdir().expect("a temp dir");
            let stop = AtomicBool::new(stop_after == Some(0));
            let handed = std::sync::Mutex::new(Vec::new());
            copy_batches(source.path(), &batches, None, destination.path(), staging.path(), true, &stop, &|index, outcome| {
                let (packed, placed) = outcome.expect("a batch");
                let sent: Vec<String> = packed.sent.into_iter().map(|item| item.path).collect();
                assert_eq!(sent, batches[index], "batch {index} is handed over whole, in order");
                assert_eq!(placed.len(), sent.len());
                let mut handed = crate::locks::lock(&handed);
                handed.push(index);
                if stop_after.is_some_and(|after| handed.len() > after) {
                    stop.store(true, Ordering::SeqCst);
                }
            })
            .expect("copy");
            let mut handed = handed.into_inner().expect("not poisoned");
            handed.sort_unstable();
            let before = handed.len();
            handed.dedup();
            assert_eq!(handed.len(), before, "no batch twice ({stop_after:?})");
            match stop_after {
                None => assert_eq!(handed, (0..batches.len()).collect::<Vec<_>>(), "everything, when not stopped"),
                Some(0) => assert!(handed.is_empty(), "nothing starts once stopped"),
                Some(after) => assert!(handed.len() > after && handed.len() < batches.len(), "stopped part-way: {handed:?}"),
            }
            let mut written = Vec::new();
            for (index, batch) in batches.iter().enumerate() {
                let placed = batch.iter().filter(|path| destination.path().join(path).exists()).count();
                assert!(placed == 0 || handed.contains(&index), "batch {index} has {placed} files placed but was not handed over");
                written.push(placed);
            }
            assert_eq!(written.iter().sum::<usize>(), handed.iter().map(|index| batches[*index].len()).sum::<usize>());
        }
    }

    #[test]
    fn copy_across_should_never_write_through_a_symlink_in_the_sandbox() {
        let source = tempfile::tempdir().expect("a temp dir");
        let destination = tempfile::tempdir().expect("a temp dir");
        let outside = tempfile::tempdir().expect("a temp dir");
        let staging = tempfile::tempdir().expect("a temp dir");
        std::fs::create_dir(source.path().join("escape")).expect("mkdir");
        std::fs::write(source.path().join("escape/pwned"), "hi").expect("write");
        // What a run in the sandbox could leave: its side of the directory made a link to elsewhere.
        std::os::unix::fs::symlink(outside.path(), destination.path().join("escape")).expect("symlink");
        for fresh in [false, true] {
            let error = copy_across(source.path(), &["escape/pwned".to_string()], None, destination.path(), staging.path(), fresh)
                .unwrap_err();
            assert_eq!(error.kind(), crate::protocol::ErrorKind::PathOutsideWorkspace, "fresh: {fresh}");
            assert_eq!(std::fs::read_dir(outside.path()).expect("list").count(), 0, "nothing appeared outside (fresh: {fresh})");
        }
    }

    /// A fresh sandbox (the first upload of a new session) gets new files under their own names; whatever stands at a
    /// path already is still replaced atomically (a link as a link, never followed), and a file whose writing fails
    /// is not left half-written.
    #[test]
    fn a_fresh_sandbox_should_get_whole_files_and_never_a_half_written_one() {
        let destination = tempfile::tempdir().expect("a temp dir");
        let outside = tempfile::tempdir().expect("a temp dir");
        let staging = tempfile::tempdir().expect("a temp dir");
        std::fs::write(outside.path().join("target"), "outside").expect("write");
        std::fs::write(destination.path().join("old.txt"), "old").expect("write");
        std::os::unix::fs::symlink(outside.path().join("target"), destination.path().join("link.txt")).expect("symlink");
        let mut sink = PlaceSink::open(destination.path(), staging.path(), "the workspace").expect("a sink");
        sink.fresh = true;
        for (path, content) in [("src/new.txt", "new"), ("old.txt", "replaced"), ("link.txt", "not through the link")] {
            sink.file(path, 0o640, 1_700_000_000, content.len() as u64, &mut content.as_bytes()).expect("placed");
            let placed = destination.path().join(path);
            assert_eq!(std::fs::read_to_string(&placed).expect("read"), content);
            let metadata = std::fs::symlink_metadata(&placed).expect("stat");
            assert!(metadata.is_file(), "{path} is a plain file");
            assert_eq!(std::os::unix::fs::PermissionsExt::mode(&metadata.permissions()) & 0o777, 0o640, "{path}");
            assert_eq!(std::os::unix::fs::MetadataExt::mtime(&metadata), 1_700_000_000, "{path}");
        }
        assert_eq!(std::fs::read_to_string(outside.path().join("target")).expect("read"), "outside", "the link was not followed");
        assert_eq!(sink.placed.len(), 3);

        /// Gives a few bytes, then fails, as a workspace file cut short while it is read would.
        struct FailingHalfway(usize);
        impl Read for FailingHalfway {
            fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
                if self.0 == 0 {
                    return Err(std::io::Error::other("the disk went away"));
                }
                let count = self.0.min(buffer.len());
                buffer[..count].fill(b'x');
                self.0 -= count;
                Ok(count)
            }
        }
        sink.file("src/broken.txt", 0o644, 1_700_000_000, 100, &mut FailingHalfway(10)).expect_err("the read fails");
        assert!(!destination.path().join("src/broken.txt").exists(), "no half-written file is left");
    }

    #[test]
    fn unpack_should_refuse_to_write_through_a_symlink() {
        let destination = tempfile::tempdir().expect("a temp dir");
        let outside = tempfile::tempdir().expect("a temp dir");
        let staging = tempfile::tempdir().expect("a temp dir");
        std::os::unix::fs::symlink(outside.path(), destination.path().join("escape")).expect("symlink");
        let mut archive = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(2);
        header.set_mode(0o644);
        archive.append_data(&mut header, "escape/pwned", &b"hi"[..]).expect("append");
        let bytes = archive.into_inner().expect("finish");
        let error = unpack_atomically(bytes.as_slice(), destination.path(), staging.path()).unwrap_err();
        assert_eq!(error.kind(), crate::protocol::ErrorKind::PathOutsideWorkspace);
        assert!(!outside.path().join("pwned").exists());
    }
}
