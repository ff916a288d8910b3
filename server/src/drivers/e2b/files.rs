//! The e2b driver's side of sync: batch uploads as one multipart `POST /files`, downloads, deletes and the listing.
//!
//! reqwest's multipart `Form` needs every part before it sends, so it cannot stream an archive whose entries are known
//! only as it is read; the upload body is therefore encoded here (RFC 7578, a few lines) while the tar is unpacked.
//! Batches up to `RETRYABLE_UPLOAD_BYTES` are kept in memory so a 429 or 5xx can be retried; bigger ones stream.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::client::{is_not_found, Envd, Failure, SANDBOX_USER};
use super::envd::{run_to_end, StreamTuning};
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
        let size = match &entry.size {
            Some(Value::String(text)) => text.parse().unwrap_or(0),
            Some(Value::Number(number)) => number.as_u64().unwrap_or(0),
            _ => 0,
        };
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
        Files { envd, tuning, root, listed: std::sync::Mutex::default(), listed_links: std::sync::Mutex::default() }
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
        script.push_str(&format!(
            "set +e\n(\nset -- \"$PWD\" \"$PWD/$stage\" ''\n{}\n)\nstatus=$?\nrm -f -- \"$0\"\nexit $status\n",
            crate::drivers::shell::scripts::MERGE
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

/// Unpacks the archive on a blocking thread, sending the multipart body in chunks; answers what else it found.
fn encode_upload(
    archive: BoxedReader,
    root: String,
    boundary: String,
    body: mpsc::Sender<std::io::Result<Bytes>>,
) -> Result<Extras> {
    let bridge = tokio_util::io::SyncIoBridge::new(archive);
    let mut archive = tar::Archive::new(bridge);
    let batch = uuid::Uuid::new_v4().simple().to_string();
    let mut extras = Extras { stage: format!("{}/{}", crate::drivers::shell::scripts::STAGING_DIR, &batch[..12]), ..Extras::default() };
    let send = |chunk: Vec<u8>| -> Result<()> {
        body.blocking_send(Ok(Bytes::from(chunk)))
            .map_err(|_| Error::Remote { status: None, message: "The upload to E2B stopped before the archive ended.".into() })
    };
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
        let mut destination = format!("{root}/{}/{relative}", extras.stage);
        if !header_can_carry(&destination) {
            // Names are data: a file called `a\nb` travels under a plain stand-in name and is renamed in the sandbox.
            let stand_in = format!(".sandlink-name-{}", extras.renames.len());
            destination = format!("{root}/{}/{stand_in}", extras.stage);
            extras.renames.push((stand_in, relative.clone()));
        }
        send(part_header(&boundary, &destination)?)?;
        loop {
            let mut chunk = vec![0u8; CHUNK_BYTES];
            let read = std::io::Read::read(&mut entry, &mut chunk)
                .map_err(|source| Error::io(format!("Could not read {relative} from the upload archive"), source))?;
            if read == 0 {
                break;
            }
            chunk.truncate(read);
            send(chunk)?;
        }
        send(b"\r\n".to_vec())?;
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
        // The fix-up script rides in the same multipart request, so restoring modes and times costs one process
        // start and no second upload; it removes itself when done.
        // Under the root and run by a relative name, so it works wherever the sandbox maps its paths; it lives only
        // until the upload call returns.
        let script_name = format!("{}.sh", extras.stage);
        send(part_header(&boundary, &format!("{root}/{script_name}"))?)?;
        send(script.into_bytes())?;
        send(b"\r\n".to_vec())?;
        extras.fixup_script = Some(script_name);
    }
    if extras.files > 0 || extras.fixup_script.is_some() {
        send(format!("--{boundary}--\r\n").into_bytes())?;
    }
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
    async fn post_files(&self, boundary: &str, mut chunks: mpsc::Receiver<std::io::Result<Bytes>>) -> Result<()> {
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
        let (sender, receiver) = mpsc::channel(16);
        let root = self.root.clone();
        let encoder_boundary = boundary.clone();
        let encoder = tokio::task::spawn_blocking(move || encode_upload(archive, root, encoder_boundary, sender));
        let posted = self.post_files(&boundary, receiver).await;
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
    fn shell_quote_should_survive_single_quotes() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
