//! The e2b driver's side of sync: batch uploads as one multipart `POST /files`, downloads, deletes and the listing.
//!
//! reqwest's multipart `Form` needs every part before it sends, so it cannot stream an archive whose entries are known
//! only as it is read; the upload body is therefore encoded here (RFC 7578, a few lines) while the tar is unpacked.
//! Batches up to `RETRYABLE_UPLOAD_BYTES` are kept in memory so a 429 or 5xx can be retried; bigger ones stream.
//! Files over `sync::chunks::threshold_bytes` leave the batch and go in parts, one request each, that survive a
//! dropped connection (`sync::chunks`). Bodies are gzip-compressed (`Content-Encoding: gzip`) where envd takes it.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::client::{is_not_found, Envd, Failure, SANDBOX_USER};
use super::envd::{run_to_end, StreamTuning};
use crate::sync::chunks::{self, PartedFile};
use crate::streams::BoxedReader;
use crate::error::{Error, Result};
use crate::sync::{EntryKind, RemoteEntry, RemoteFiles};

/// Upload bodies up to this size are buffered so they can be sent again after a 429 or 5xx.
const RETRYABLE_UPLOAD_BYTES: usize = 32 * 1024 * 1024;
/// File content travels in chunks of this size.
const CHUNK_BYTES: usize = 256 * 1024;
/// Downloads and deletes in flight at once (E2B has no batch form of either).
const PARALLEL_REQUESTS: usize = 8;
/// How deep the remote listing goes; envd walks the tree in one `ListDir` call.
const LIST_DEPTH: u32 = 128;
/// The slowest upload accepted: a buffered batch gets a minute plus the time this rate needs for its bytes, and a
/// streamed one fails after a minute without moving. reqwest has no write timeout, and an envd that stops reading
/// would otherwise hold the sync (and its lock) forever.
const SLOWEST_UPLOAD_BYTES_PER_SECOND: u64 = 64 * 1024;
const UPLOAD_STALL_LIMIT: std::time::Duration = super::client::UNARY_TIMEOUT;
/// How often one part is sent before the upload gives up: a part is idempotent (the same bytes to the same name), so
/// a dropped connection or a timeout is worth another try, which costs at most one part.
const PART_ATTEMPTS: u32 = 5;
/// The first envd that undoes `Content-Encoding: gzip` on `POST /files` (older ones would store the gzip bytes).
const FIRST_ENVD_TAKING_GZIP: (u32, u32, u32) = (0, 5, 7);
/// How much of a part is compressed to decide whether compressing the rest is worth it.
const COMPRESSION_PROBE_BYTES: usize = 64 * 1024;

/// The session's remote root inside one E2B sandbox.
pub struct Files {
    pub envd: Arc<Envd>,
    pub tuning: StreamTuning,
    /// Absolute, without a trailing slash.
    pub root: String,
    /// Mode and modification time of each file in the latest listing: `GET /files` answers only the bytes, and the
    /// sync engine downloads what it has just listed, so archives carry the sandbox's modes from here.
    pub listed: std::sync::Mutex<std::collections::HashMap<String, (u32, i128)>>,
    /// Symlinks of the latest listing and their targets: `GET /files` would read through a link (or fail on one to a
    /// directory), so downloads rebuild them from here instead.
    pub listed_links: std::sync::Mutex<std::collections::HashMap<String, String>>,
    /// Whether upload bodies go gzip-compressed: envd undoes `Content-Encoding: gzip` from 0.5.7 on.
    pub compress_uploads: bool,
}

/// Whether an envd of this version undoes `Content-Encoding: gzip` on uploads; an unknown version is taken as old.
pub fn envd_takes_gzip(version: Option<&str>) -> bool {
    let Some(version) = version else { return false };
    let mut numbers = version.trim_start_matches('v').split(['.', '-']).map(|part| part.parse::<u32>().ok());
    match (numbers.next().flatten(), numbers.next().flatten(), numbers.next().flatten()) {
        (Some(major), Some(minor), Some(patch)) => (major, minor, patch) >= FIRST_ENVD_TAKING_GZIP,
        _ => false,
    }
}

impl Files {
    /// A listing entry from envd's description of a file under the root; `None` for anything outside it.
    fn remote_entry(&self, entry: EntryInfo) -> Option<RemoteEntry> {
        let relative = entry.path.strip_prefix(&format!("{}/", self.root))?.to_string();
        if relative.is_empty() || relative.split('/').any(|part| part == ".." || part.is_empty()) {
            return None;
        }
        // Uploads in flight (or left by a dropped one) are sandlink's, not the project's.
        if relative.split('/').next() == Some(crate::drivers::shell::scripts::STAGING_DIR) {
            return None;
        }
        let kind = match entry.kind.as_str() {
            "FILE_TYPE_DIRECTORY" => EntryKind::Dir,
            "FILE_TYPE_SYMLINK" => EntryKind::Symlink,
            _ => EntryKind::File,
        };
        let size = entry_size(&entry.size);
        let mtime_ns = entry
            .modified_time
            .as_deref()
            .and_then(|text| time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok())
            .map(|when| when.unix_timestamp_nanos())
            .unwrap_or(0);
        Some(RemoteEntry {
            path: relative,
            kind,
            size,
            mtime_ns,
            // envd reports Go's modification time, to the nanosecond; it tells neither inode nor status-change time,
            // so the engine's racy and ambiguity checks cover what those would show.
            subsecond: true,
            inode: None,
            ctime_ns: None,
            mode: entry.mode.unwrap_or(0o644) & 0o7777,
            link_target: entry.symlink_target.filter(|_| kind == EntryKind::Symlink),
            unsyncable: None,
        })
    }

    pub fn new(envd: Arc<Envd>, tuning: StreamTuning, root: String) -> Self {
        Files {
            envd,
            tuning,
            root,
            listed: std::sync::Mutex::default(),
            listed_links: std::sync::Mutex::default(),
            compress_uploads: false,
        }
    }

    /// The same, sending gzip-compressed upload bodies when `compress` (see `envd_takes_gzip`).
    pub fn compressing(mut self, compress: bool) -> Self {
        self.compress_uploads = compress;
        self
    }

    fn listed_attributes(&self) -> std::collections::HashMap<String, (u32, i128)> {
        // A poisoned cache still holds whole entries; at worst a mode falls back to 0644.
        crate::locks::lock(&self.listed).clone()
    }
}

/// What unpacking an upload found besides plain file contents.
#[derive(Default)]
struct Extras {
    /// Files whose permission bits are not 0644, with those bits (envd writes every file 0644).
    modes: Vec<(String, u32)>,
    /// Symlinks as (path, target); `/files` cannot create them.
    symlinks: Vec<(String, String)>,
    /// Empty directories the archive names.
    directories: Vec<String>,
    /// Files sent under a stand-in name (theirs holds a newline or another character a multipart header cannot
    /// carry), as (stand-in, real path) inside the staging directory; the script renames them.
    renames: Vec<(String, String)>,
    /// Each file's modification time (seconds), which envd replaces with the time of writing; the sync engine
    /// compares remote mtimes with the archive's, so a file left with the upload time would look changed remotely.
    mtimes: Vec<(String, u64)>,
    files: usize,
    /// The batch's staging directory, relative to the root: files land there and are renamed into place.
    stage: String,
    /// Where the fix-up script travelled in the same upload, when one was needed.
    fixup_script: Option<String>,
    /// Big files that travelled in parts; the script joins each into the staging directory.
    parted: Vec<PartedFile>,
}

impl Extras {
    /// The script that finishes an upload, run from the root: it restores what `/files` cannot express (modes,
    /// times, symlinks, empty directories) on the staged files, then renames each into place, so a file in the root is
    /// always whole (envd writes in place, and a dropped upload would otherwise leave half a file). `None` when the
    /// upload carried nothing.
    fn script(&self) -> Option<String> {
        if self.files == 0 && self.directories.is_empty() && self.symlinks.is_empty() {
            return None;
        }
        let mut script = format!("set -e\nstage={}\nmkdir -p -- \"$stage\"\n", shell_quote(&self.stage));
        for directory in &self.directories {
            script.push_str(&format!("mkdir -p -- {}\n", shell_quote(directory)));
        }
        let staged = |path: &str| format!("\"$stage\"/{}", shell_quote(path));
        for parted in &self.parted {
            script.push_str(&parted.join_lines(shell_quote));
        }
        for (stand_in, path) in &self.renames {
            let parent = path.rsplit_once('/').map(|(parent, _)| parent).unwrap_or(".");
            script.push_str(&format!("mkdir -p -- {} && mv -f -- {} {}\n", staged(parent), staged(stand_in), staged(path)));
        }
        for (path, mode) in &self.modes {
            script.push_str(&format!("chmod {mode:o} -- {}\n", staged(path)));
        }
        for (path, target) in &self.symlinks {
            let parent = path.rsplit_once('/').map(|(parent, _)| parent).unwrap_or(".");
            script.push_str(&format!(
                "mkdir -p -- {} && ln -sfn -- {} {}\n",
                staged(parent),
                shell_quote(target),
                staged(path)
            ));
        }
        // One `touch` per distinct time keeps the script short when many files share a second.
        let mut by_time: std::collections::BTreeMap<u64, Vec<&str>> = std::collections::BTreeMap::new();
        for (path, mtime) in &self.mtimes {
            by_time.entry(*mtime).or_default().push(path);
        }
        for (mtime, paths) in by_time {
            for group in paths.chunks(200) {
                let quoted: Vec<String> = group.iter().map(|path| staged(path)).collect();
                script.push_str(&format!("touch -c -m -d @{mtime} -- {}\n", quoted.join(" ")));
            }
        }
        // The shared merge renames every staged entry into place and removes the staging directory.
        // Parts are removed only once their files are in place, so a merge that fails finds them next time.
        let cleanup = if self.parted.is_empty() {
            String::new()
        } else {
            format!("[ $status -ne 0 ] || {{\n{}}}\n", chunks::cleanup_lines(&self.parted, shell_quote))
        };
        script.push_str(&format!(
            "set +e\n(\nset -- \"$PWD\" \"$PWD/$stage\" ''\n{}\n)\nstatus=$?\n{cleanup}rm -f -- \"$0\"\nexit $status\n",
            crate::drivers::shell::scripts::MERGE,
        ));
        Some(script)
    }
}

/// Checks an archive path and makes it `/`-separated and relative.
fn clean_relative(path: &std::path::Path) -> Result<String> {
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            std::path::Component::Normal(part) => parts.push(part.to_str().ok_or_else(|| {
                Error::InvalidParams(format!("The file name {} is not valid UTF-8, which E2B cannot store.", path.display()))
            })?),
            std::path::Component::CurDir => {}
            _ => {
                return Err(Error::PathOutsideWorkspace(format!(
                    "The upload named {}, which is outside the session root; nothing was written.",
                    path.display()
                )))
            }
        }
    }
    Ok(parts.join("/"))
}

/// Whether a multipart header can carry `destination` as its filename (no control characters).
fn header_can_carry(destination: &str) -> bool {
    !destination.chars().any(|character| character.is_control())
}

/// The header of one multipart part named `file` whose filename is the destination path, as envd expects.
fn part_header(boundary: &str, destination: &str) -> Result<Vec<u8>> {
    if !header_can_carry(destination) {
        return Err(Error::InvalidParams(format!(
            "The file name {destination:?} contains control characters, which a multipart upload cannot carry."
        )));
    }
    let quoted = destination.replace('\\', "\\\\").replace('"', "\\\"");
    Ok(format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{quoted}\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes())
}

/// One request of an upload, in the order the encoder meets its files in the archive.
enum Upload {
    /// A multipart batch of files under the threshold (and the fix-up script); its body arrives on the receiver,
    /// gzip-compressed when `gzip`, and ends when the encoder drops the sender.
    Batch { body: mpsc::Receiver<std::io::Result<Bytes>>, gzip: bool },
    /// The parts folder of a big file (relative to the root): listed to learn which parts arrived earlier.
    PartsFolder(String),
    /// One part of a big file, to `destination` (relative to the root), unless the folder's listing shows it whole.
    Part { destination: String, bytes: Bytes },
}

/// The encoder's failure when the sending side stopped taking requests (its own error says why).
fn upload_stopped() -> Error {
    Error::Remote { status: None, message: "The upload to E2B stopped before the archive ended.".into() }
}

/// Writes a batch's body into its channel in pieces of `CHUNK_BYTES`.
struct ChannelWriter {
    sender: mpsc::Sender<std::io::Result<Bytes>>,
    pending: Vec<u8>,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(data);
        if self.pending.len() >= CHUNK_BYTES {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let piece = std::mem::replace(&mut self.pending, Vec::with_capacity(CHUNK_BYTES));
        self.sender.blocking_send(Ok(Bytes::from(piece))).map_err(|_| std::io::Error::other("the upload stopped"))
    }
}

/// The body of one multipart batch as it is written: plain, or through gzip.
enum BatchBody {
    Plain(ChannelWriter),
    Gzip(flate2::write::GzEncoder<ChannelWriter>),
}

impl BatchBody {
    fn write_all(&mut self, data: &[u8]) -> Result<()> {
        use std::io::Write;
        match self {
            BatchBody::Plain(writer) => writer.write_all(data),
            BatchBody::Gzip(writer) => writer.write_all(data),
        }
        .map_err(|_| upload_stopped())
    }

    fn finish(self) -> Result<()> {
        use std::io::Write;
        match self {
            BatchBody::Plain(mut writer) => writer.flush(),
            BatchBody::Gzip(writer) => writer.finish().and_then(|mut writer| writer.flush()),
        }
        .map_err(|_| upload_stopped())
    }
}

/// The batch being written, opened (and announced to the sender) when its first part comes.
struct Batches<'a> {
    requests: &'a mpsc::Sender<Upload>,
    boundary: &'a str,
    gzip: bool,
    current: Option<BatchBody>,
}

impl Batches<'_> {
    fn body(&mut self) -> Result<&mut BatchBody> {
        if self.current.is_none() {
            let (sender, receiver) = mpsc::channel(16);
            self.requests.blocking_send(Upload::Batch { body: receiver, gzip: self.gzip }).map_err(|_| upload_stopped())?;
            let writer = ChannelWriter { sender, pending: Vec::with_capacity(CHUNK_BYTES) };
            self.current = Some(if self.gzip {
                BatchBody::Gzip(flate2::write::GzEncoder::new(writer, flate2::Compression::fast()))
            } else {
                BatchBody::Plain(writer)
            });
        }
        self.current.as_mut().ok_or_else(|| Error::Internal("A batch that was just opened is missing.".into()))
    }

    /// Ends the current batch, if any, with the closing boundary.
    fn close(&mut self) -> Result<()> {
        if let Some(mut body) = self.current.take() {
            body.write_all(format!("--{}--\r\n", self.boundary).as_bytes())?;
            body.finish()?;
        }
        Ok(())
    }
}

/// Unpacks the archive on a blocking thread into requests: multipart batches for files up to the threshold, parts
/// for bigger ones; answers what else it found.
fn encode_upload(
    archive: BoxedReader,
    root: String,
    boundary: String,
    gzip: bool,
    requests: mpsc::Sender<Upload>,
) -> Result<Extras> {
    let bridge = tokio_util::io::SyncIoBridge::new(archive);
    let mut archive = tar::Archive::new(bridge);
    let batch = uuid::Uuid::new_v4().simple().to_string();
    let mut extras = Extras { stage: format!("{}/{}", crate::drivers::shell::scripts::STAGING_DIR, &batch[..12]), ..Extras::default() };
    let mut batches = Batches { requests: &requests, boundary: &boundary, gzip, current: None };
    let threshold = chunks::threshold_bytes();
    let entries = archive.entries().map_err(|source| Error::io("Could not read the upload archive", source))?;
    for entry in entries {
        let mut entry = entry.map_err(|source| Error::io("Could not read the upload archive", source))?;
        let relative = clean_relative(&entry.path().map_err(|source| Error::io("Could not read a path in the upload archive", source))?)?;
        if relative.is_empty() {
            continue;
        }
        let header = entry.header();
        let kind = header.entry_type();
        let mode = header.mode().unwrap_or(0o644);
        let mtime = header.mtime().ok();
        let size = header.size().unwrap_or(0);
        if kind.is_dir() {
            extras.directories.push(relative);
            continue;
        }
        if kind.is_symlink() {
            let target = entry
                .link_name()
                .map_err(|source| Error::io("Could not read a symlink in the upload archive", source))?
                .map(|target| target.to_string_lossy().into_owned())
                .unwrap_or_default();
            extras.symlinks.push((relative, target));
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        if size > threshold {
            // The batch so far goes first, so its request is not held open while the parts travel.
            batches.close()?;
            let folder = PartedFile::new(&relative, size, mtime.unwrap_or(0)).folder;
            requests.blocking_send(Upload::PartsFolder(folder)).map_err(|_| upload_stopped())?;
            let parted = PartedFile::split(&mut entry, &relative, size, mtime.unwrap_or(0), |destination, bytes| {
                requests.blocking_send(Upload::Part { destination, bytes: Bytes::from(bytes) }).map_err(|_| upload_stopped())
            })?;
            extras.parted.push(parted);
        } else {
            let mut destination = format!("{root}/{}/{relative}", extras.stage);
            if !header_can_carry(&destination) {
                // Names are data: a file called `a\nb` travels under a plain stand-in name and is renamed in the sandbox.
                let stand_in = format!(".sandlink-name-{}", extras.renames.len());
                destination = format!("{root}/{}/{stand_in}", extras.stage);
                extras.renames.push((stand_in, relative.clone()));
            }
            let body = batches.body()?;
            body.write_all(&part_header(&boundary, &destination)?)?;
            let mut chunk = vec![0u8; CHUNK_BYTES];
            loop {
                let read = std::io::Read::read(&mut entry, &mut chunk)
                    .map_err(|source| Error::io(format!("Could not read {relative} from the upload archive"), source))?;
                if read == 0 {
                    break;
                }
                body.write_all(&chunk[..read])?;
            }
            body.write_all(b"\r\n")?;
        }
        if let Some(mtime) = mtime {
            extras.mtimes.push((relative.clone(), mtime));
        }
        // envd writes every file 0644; any other permission bits (an executable, a private 0600) are set after.
        if mode & crate::sync::PERMISSION_BITS != 0o644 {
            extras.modes.push((relative, mode & crate::sync::PERMISSION_BITS));
        }
        extras.files += 1;
    }
    if let Some(script) = extras.script() {
        // The fix-up script rides in the last multipart request, so restoring modes and times costs one process
        // start and no extra upload; it removes itself when done.
        // Under the root and run by a relative name, so it works wherever the sandbox maps its paths; it lives only
        // until the upload call returns.
        let script_name = format!("{}.sh", extras.stage);
        let body = batches.body()?;
        body.write_all(&part_header(&boundary, &format!("{root}/{script_name}"))?)?;
        body.write_all(script.as_bytes())?;
        body.write_all(b"\r\n")?;
        extras.fixup_script = Some(script_name);
    }
    batches.close()?;
    Ok(extras)
}

/// Quotes a word for `sh`.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}

#[derive(Debug, Deserialize)]
struct ListDirResponse {
    #[serde(default)]
    entries: Vec<EntryInfo>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EntryInfo {
    #[serde(default)]
    path: String,
    #[serde(default, rename = "type")]
    kind: String,
    /// int64, which protojson writes as a string.
    #[serde(default)]
    size: Option<Value>,
    #[serde(default)]
    mode: Option<u32>,
    #[serde(default)]
    modified_time: Option<String>,
    #[serde(default)]
    symlink_target: Option<String>,
}

impl Files {
    /// Sends the multipart body: buffered (and retried on 429/5xx) when small, streamed once when large.
    async fn post_files(&self, boundary: &str, mut chunks: mpsc::Receiver<std::io::Result<Bytes>>, gzip: bool) -> Result<()> {
        let mut buffered = Vec::new();
        let mut buffered_bytes = 0usize;
        let mut complete = true;
        while let Some(chunk) = chunks.recv().await {
            let chunk = chunk.map_err(|source| Error::io("Could not read the upload archive", source))?;
            buffered_bytes += chunk.len();
            buffered.push(chunk);
            if buffered_bytes > RETRYABLE_UPLOAD_BYTES {
                complete = false;
                break;
            }
        }
        if buffered_bytes == 0 {
            return Ok(());
        }
        let content_type = format!("multipart/form-data; boundary={boundary}");
        let what = "uploading files to the sandbox";
        let path = format!("/files?username={SANDBOX_USER}");
        let outcome = if complete {
            let body = Bytes::from(buffered.concat());
            let limit = UPLOAD_STALL_LIMIT
                + std::time::Duration::from_secs(body.len() as u64 / SLOWEST_UPLOAD_BYTES_PER_SECOND);
            self.envd.send(None, || {
                self.envd
                    .request(reqwest::Method::POST, &path)
                    .header(reqwest::header::CONTENT_TYPE, &content_type)
                    .headers(encoding_header(gzip))
                    .timeout(limit)
                    .body(body.clone())
            })
            .await
        } else {
            let rest = futures::stream::unfold(chunks, |mut chunks| async move { chunks.recv().await.map(|chunk| (chunk, chunks)) });
            let last_progress = Arc::new(std::sync::Mutex::new(tokio::time::Instant::now()));
            let progress = last_progress.clone();
            let stream = futures::stream::iter(buffered.into_iter().map(Ok::<Bytes, std::io::Error>))
                .chain(rest)
                .inspect(move |_| {
                    if let Ok(mut last) = progress.lock() {
                        *last = tokio::time::Instant::now();
                    }
                });
            let request = self
                .envd
                .request(reqwest::Method::POST, &path)
                .header(reqwest::header::CONTENT_TYPE, &content_type)
                .headers(encoding_header(gzip))
                .body(reqwest::Body::wrap_stream(stream));
            let sending = async {
                match request.send().await {
                    Ok(response) if response.status().is_success() => Ok(response),
                    Ok(response) => Err(Envd::failure(response).await),
                    Err(error) => Err(Failure::transport(error)),
                }
            };
            tokio::select! {
                outcome = sending => outcome,
                () = stalled(&last_progress, UPLOAD_STALL_LIMIT) => Err(Failure::Timeout(UPLOAD_STALL_LIMIT)),
            }
        };
        let response = outcome.map_err(|failure| self.envd.fail(failure, what))?;
        // Drain the answer so the connection can be reused.
        let _ = response.bytes().await;
        Ok(())
    }

    /// Sends an upload's requests in order, skipping parts an earlier upload of the same file left whole.
    async fn send_requests(&self, boundary: &str, requests: &mut mpsc::Receiver<Upload>) -> Result<()> {
        let mut present: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
        while let Some(request) = requests.recv().await {
            match request {
                Upload::Batch { body, gzip } => self.post_files(boundary, body, gzip).await?,
                Upload::PartsFolder(folder) => present.extend(self.list_parts(&folder).await?),
                Upload::Part { destination, bytes } => {
                    if present.get(&destination) == Some(&(bytes.len() as u64)) {
                        tracing::debug!(part = %destination, "a part is already in the sandbox; not sent again");
                        continue;
                    }
                    self.post_part(boundary, &destination, bytes).await?;
                }
            }
        }
        Ok(())
    }

    /// The parts already in a parts folder (relative to the root), with their sizes; none when it does not exist.
    async fn list_parts(&self, folder: &str) -> Result<Vec<(String, u64)>> {
        let message = json!({ "path": format!("{}/{folder}", self.root), "depth": 1 });
        let answer = match self.envd.unary("filesystem.Filesystem/ListDir", &message, "listing the parts of an upload").await {
            Ok(answer) => answer,
            Err(error) if is_not_found(&error) => return Ok(Vec::new()),
            Err(error) => return Err(error),
        };
        let listing: ListDirResponse = serde_json::from_value(answer).map_err(|error| Error::Remote {
            status: None,
            message: format!("envd answered a directory listing sandlink does not understand: {error}."),
        })?;
        let prefix = format!("{}/", self.root);
        Ok(listing
            .entries
            .into_iter()
            .filter(|entry| entry.kind != "FILE_TYPE_DIRECTORY")
            .filter_map(|entry| {
                let relative = entry.path.strip_prefix(&prefix)?.to_string();
                Some((relative, entry_size(&entry.size)))
            })
            .collect())
    }

    /// Sends one part of a big file as its own multipart request, again after a dropped connection or a timeout (a
    /// part is the same bytes to the same name, so sending it twice is harmless), compressed when that pays.
    async fn post_part(&self, boundary: &str, destination: &str, bytes: Bytes) -> Result<()> {
        let gzip = self.compress_uploads && compression_pays(&bytes);
        let mut body = part_header(boundary, &format!("{}/{destination}", self.root))?;
        body.extend_from_slice(&bytes);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let body = if gzip {
            let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 2), flate2::Compression::fast());
            std::io::Write::write_all(&mut encoder, &body)
                .and_then(|()| encoder.finish())
                .map_err(|source| Error::io("Could not compress a part of an upload", source))?
        } else {
            body
        };
        let body = Bytes::from(body);
        let content_type = format!("multipart/form-data; boundary={boundary}");
        let path = format!("/files?username={SANDBOX_USER}");
        let limit = UPLOAD_STALL_LIMIT + std::time::Duration::from_secs(body.len() as u64 / SLOWEST_UPLOAD_BYTES_PER_SECOND);
        let what = format!("uploading a part of a big file ({destination}) to the sandbox");
        let mut attempt = 1;
        loop {
            let outcome = self
                .envd
                .send(None, || {
                    self.envd
                        .request(reqwest::Method::POST, &path)
                        .header(reqwest::header::CONTENT_TYPE, &content_type)
                        .headers(encoding_header(gzip))
                        .timeout(limit)
                        .body(body.clone())
                })
                .await;
            match outcome {
                Ok(response) => {
                    let _ = response.bytes().await;
                    return Ok(());
                }
                Err(failure @ (Failure::Transport { .. } | Failure::Timeout(_))) if attempt < PART_ATTEMPTS => {
                    tracing::info!(part = %destination, attempt, ?failure, "a part of an upload broke off; sending it again");
                    tokio::time::sleep(std::time::Duration::from_millis(200 * u64::from(attempt))).await;
                    attempt += 1;
                }
                Err(failure) => return Err(self.envd.fail(failure, &what)),
            }
        }
    }

    /// Runs the script the upload carried: it finishes the staged files and renames them into place.
    async fn apply_extras(&self, extras: Extras) -> Result<()> {
        let Some(script_path) = extras.fixup_script else { return Ok(()) };
        let config = json!({ "cmd": "/bin/sh", "args": [script_path], "cwd": self.root });
        let (status, output) = run_to_end(self.envd.clone(), self.tuning, config).await?;
        if status.code != Some(0) {
            return Err(Error::Remote {
                status: None,
                message: format!(
                    "Could not move the uploaded files into place (with their modes, times and symlinks) in the sandbox: {}",
                    output.trim()
                ),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl RemoteFiles for Files {
    async fn upload_tar(&self, archive: BoxedReader) -> Result<()> {
        let boundary = format!("sandlink-{}", uuid::Uuid::new_v4().simple());
        // One request at a time in flight: a part is megabytes, and the encoder waits while it travels.
        let (sender, mut receiver) = mpsc::channel(1);
        let root = self.root.clone();
        let encoder_boundary = boundary.clone();
        let gzip = self.compress_uploads;
        let encoder = tokio::task::spawn_blocking(move || encode_upload(archive, root, encoder_boundary, gzip, sender));
        let posted = self.send_requests(&boundary, &mut receiver).await;
        drop(receiver);
        let extras = encoder.await.map_err(|error| Error::Internal(format!("Packing the upload failed: {error}")))?;
        // A failed post usually makes the encoder fail too (its channel closed); the post's error says why.
        posted?;
        self.apply_extras(extras?).await
    }

    async fn delete(&self, paths: Vec<String>) -> Result<()> {
        let removals = futures::stream::iter(paths.into_iter().map(|relative| async move {
            let relative = clean_relative(std::path::Path::new(&relative))?;
            if relative.is_empty() {
                return Err(Error::PathOutsideWorkspace("Refusing to delete the whole remote root.".into()));
            }
            let message = json!({ "path": format!("{}/{relative}", self.root) });
            match self.envd.unary("filesystem.Filesystem/Remove", &message, &format!("deleting {relative} in the sandbox")).await {
                Err(error) if !is_not_found(&error) => Err(error),
                _ => Ok(()),
            }
        }))
        .buffer_unordered(PARALLEL_REQUESTS);
        let outcomes: Vec<Result<()>> = removals.collect().await;
        outcomes.into_iter().collect()
    }

    async fn list(&self) -> Result<Vec<RemoteEntry>> {
        let message = json!({ "path": self.root, "depth": LIST_DEPTH });
        let answer = match self.envd.unary("filesystem.Filesystem/ListDir", &message, "listing the sandbox's files").await {
            Ok(answer) => answer,
            // A root that does not exist yet holds nothing.
            Err(error) if is_not_found(&error) => return Ok(Vec::new()),
            Err(error) => return Err(error),
        };
        let listing: ListDirResponse = serde_json::from_value(answer).map_err(|error| Error::Remote {
            status: None,
            message: format!("envd answered a directory listing sandlink does not understand: {error}."),
        })?;
        let mut entries: Vec<RemoteEntry> =
            listing.entries.into_iter().filter_map(|entry| self.remote_entry(entry)).collect();
        entries.sort_by(|left, right| left.path.cmp(&right.path));
        let attributes = entries
            .iter()
            .filter(|entry| entry.kind == EntryKind::File)
            .map(|entry| (entry.path.clone(), (entry.mode, entry.mtime_ns)))
            .collect();
        *crate::locks::lock(&self.listed) = attributes;
        *crate::locks::lock(&self.listed_links) = entries
            .iter()
            .filter_map(|entry| entry.link_target.clone().map(|target| (entry.path.clone(), target)))
            .collect();
        Ok(entries)
    }

    async fn stat(&self, paths: Vec<String>) -> Result<Vec<RemoteEntry>> {
        let lookups = futures::stream::iter(paths.into_iter().map(|relative| async move {
            let relative = clean_relative(std::path::Path::new(&relative))?;
            let message = json!({ "path": format!("{}/{relative}", self.root) });
            match self.envd.unary("filesystem.Filesystem/Stat", &message, &format!("reading {relative} in the sandbox")).await {
                Ok(answer) => Ok(answer.get("entry").cloned()),
                Err(error) if is_not_found(&error) => Ok(None),
                Err(error) => Err(error),
            }
        }))
        .buffer_unordered(PARALLEL_REQUESTS);
        let answers: Vec<Result<Option<Value>>> = lookups.collect().await;
        let mut entries = Vec::new();
        for answer in answers {
            let Some(entry) = answer? else { continue };
            let entry: EntryInfo = serde_json::from_value(entry).map_err(|error| Error::Remote {
                status: None,
                message: format!("envd described a file in a way sandlink does not understand: {error}."),
            })?;
            entries.extend(self.remote_entry(entry));
        }
        // Downloads take modes and times from the last look at each file.
        let mut listed = crate::locks::lock(&self.listed);
        for entry in entries.iter().filter(|entry| entry.kind == EntryKind::File) {
            listed.insert(entry.path.clone(), (entry.mode, entry.mtime_ns));
        }
        drop(listed);
        let mut links = crate::locks::lock(&self.listed_links);
        for entry in &entries {
            match &entry.link_target {
                Some(target) => links.insert(entry.path.clone(), target.clone()),
                None => links.remove(&entry.path),
            };
        }
        drop(links);
        Ok(entries)
    }

    async fn download_tar(&self, paths: Vec<String>) -> Result<BoxedReader> {
        let mut checked = Vec::with_capacity(paths.len());
        for path in paths {
            checked.push(clean_relative(std::path::Path::new(&path))?);
        }
        let (sender, receiver) = mpsc::channel::<std::io::Result<Bytes>>(PARALLEL_REQUESTS);
        let envd = self.envd.clone();
        let root = self.root.clone();
        let attributes = self.listed_attributes();
        let links = crate::locks::lock(&self.listed_links).clone();
        let (link_paths, checked): (Vec<String>, Vec<String>) = checked.into_iter().partition(|path| links.contains_key(path));
        // Files are packed as they arrive, so the archive streams; a failure reaches the reader as an I/O error
        // carrying the sentence, rather than as a mysteriously truncated archive.
        tokio::spawn(async move {
            let downloads = checked.into_iter().map(|relative| download_one(envd.clone(), root.clone(), relative));
            let mut arrivals = futures::stream::iter(downloads).buffered(PARALLEL_REQUESTS);
            let mut builder = tar::Builder::new(Vec::new());
            let now = time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64;
            for path in link_paths {
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                header.set_mode(0o777);
                header.set_mtime(now);
                if let Err(error) = builder.append_link(&mut header, &path, &links[&path]) {
                    let _ = sender.send(Err(error)).await;
                    return;
                }
            }
            while let Some(arrival) = arrivals.next().await {
                let (relative, bytes) = match arrival {
                    Ok(file) => file,
                    Err(error) => {
                        let _ = sender.send(Err(std::io::Error::other(error.to_string()))).await;
                        return;
                    }
                };
                let mut header = tar::Header::new_gnu();
                header.set_size(bytes.len() as u64);
                let (mode, mtime_ns) = attributes.get(&relative).copied().unwrap_or((0o644, 0));
                header.set_mode(mode);
                header.set_mtime(if mtime_ns > 0 { (mtime_ns / 1_000_000_000) as u64 } else { now });
                header.set_entry_type(tar::EntryType::Regular);
                if let Err(error) = builder.append_data(&mut header, &relative, bytes.as_ref()) {
                    let _ = sender.send(Err(error)).await;
                    return;
                }
                let packed = std::mem::take(builder.get_mut());
                if sender.send(Ok(Bytes::from(packed))).await.is_err() {
                    return;
                }
            }
            match builder.into_inner() {
                Ok(trailer) => {
                    let _ = sender.send(Ok(Bytes::from(trailer))).await;
                }
                Err(error) => {
                    let _ = sender.send(Err(error)).await;
                }
            }
        });
        let chunks = futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|chunk| (chunk, receiver))
        });
        Ok(Box::pin(tokio_util::io::StreamReader::new(Box::pin(chunks))))
    }
}

/// `Content-Encoding: gzip` for a compressed body, nothing otherwise.
fn encoding_header(gzip: bool) -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    if gzip {
        headers.insert(reqwest::header::CONTENT_ENCODING, reqwest::header::HeaderValue::from_static("gzip"));
    }
    headers
}

/// A size as envd writes it (int64, which protojson writes as a string).
fn entry_size(size: &Option<Value>) -> u64 {
    match size {
        Some(Value::String(text)) => text.parse().unwrap_or(0),
        Some(Value::Number(number)) => number.as_u64().unwrap_or(0),
        _ => 0,
    }
}

/// Whether gzip shrinks these bytes enough to be worth the CPU, judged on their start: already-compressed content
/// (archives, images, media) would cost time on both ends for nothing.
fn compression_pays(bytes: &[u8]) -> bool {
    let probe = &bytes[..bytes.len().min(COMPRESSION_PROBE_BYTES)];
    let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(probe.len()), flate2::Compression::fast());
    match std::io::Write::write_all(&mut encoder, probe).and_then(|()| encoder.finish()) {
        Ok(compressed) => compressed.len() * 10 < probe.len() * 9,
        Err(_) => false,
    }
}

/// Resolves once `last_progress` is older than `limit`: the deadline of a transfer that may take long but must move.
async fn stalled(last_progress: &std::sync::Mutex<tokio::time::Instant>, limit: std::time::Duration) {
    loop {
        let last = last_progress.lock().map(|last| *last).unwrap_or_else(|_| tokio::time::Instant::now());
        if last.elapsed() >= limit {
            return;
        }
        tokio::time::sleep_until(last + limit).await;
    }
}

/// Downloads one file of the remote root (`GET /files`, one request per file: E2B has no batch download).
async fn download_one(envd: Arc<Envd>, root: String, relative: String) -> Result<(String, Bytes)> {
    let sandbox_path = format!("{root}/{relative}");
    let what = format!("downloading {relative} from the sandbox");
    let response = envd.send(None, || {
        envd.request(reqwest::Method::GET, "/files")
            .query(&[("path", sandbox_path.as_str()), ("username", SANDBOX_USER)])
    })
    .await
    .map_err(|failure| envd.fail(failure, &what))?;
    let bytes = response.bytes().await.map_err(|error| Error::Remote {
        status: None,
        message: format!("The download of {relative} from the sandbox broke off: {error}."),
    })?;
    Ok((relative, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_relative_should_refuse_escapes() {
        assert!(clean_relative(std::path::Path::new("../etc/passwd")).is_err());
        assert!(clean_relative(std::path::Path::new("/etc/passwd")).is_err());
        assert_eq!(clean_relative(std::path::Path::new("./a/b.txt")).expect("relative path"), "a/b.txt");
    }

    #[test]
    fn part_header_should_escape_quotes_and_refuse_newlines() {
        let header = String::from_utf8(part_header("b", "/home/user/a\"b.txt").expect("valid name")).expect("UTF-8");
        assert!(header.contains(r#"filename="/home/user/a\"b.txt""#));
        assert!(part_header("b", "/home/user/a\nb").is_err());
    }

    #[test]
    fn gzip_uploads_should_start_with_envd_0_5_7() {
        assert!(envd_takes_gzip(Some("0.5.7")));
        assert!(envd_takes_gzip(Some("0.6.4")));
        assert!(envd_takes_gzip(Some("v1.0.0")));
        assert!(!envd_takes_gzip(Some("0.5.6")));
        assert!(!envd_takes_gzip(Some("0.1.5")));
        assert!(!envd_takes_gzip(Some("garbage")));
        assert!(!envd_takes_gzip(None), "an unknown envd might store the gzip bytes as the file");
    }

    #[test]
    fn compression_should_be_skipped_for_bytes_gzip_cannot_shrink() {
        assert!(compression_pays(&b"fn main() { println!(\"hello\"); }\n".repeat(4096)));
        let mut state = 0x9e3779b97f4a7c15u64;
        let random: Vec<u8> = (0..256 * 1024)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        assert!(!compression_pays(&random));
    }

    #[test]
    fn shell_quote_should_survive_single_quotes() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
