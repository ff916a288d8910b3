//! The daytona driver's side of sync: one `files/bulk-upload` per batch into a staging folder that a helper script
//! moves into place, `files/bulk-download` for what comes down, and listings from the shell layer's scripts.
//!
//! Bulk upload writes plain files only, so what it cannot say (modes, times, symlinks, empty folders) travels as a
//! script that `/process/execute` runs right after, which also renames the staged files into place: a file in the
//! root is always whole. Listings and stats run the shell layer's `LIST` and `STAT` scripts (GNU `find` or busybox
//! `stat`) through `/process/execute`, so Daytona sandboxes get the same nanosecond times and inodes as docker.
//! Files over `sync::chunks::threshold_bytes` go in parts instead, one bulk upload each, that survive a dropped
//! connection (`sync::chunks`). The toolbox does not undo `Content-Encoding` on uploads, so bodies go uncompressed.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::json;
use tokio::sync::mpsc;

use super::toolbox::Toolbox;
use crate::drivers::shell::files::checked_relative;
use crate::drivers::shell::listing::parse_listing;
use crate::drivers::shell::{quote, scripts};
use crate::error::{Error, Result};
use crate::streams::BoxedReader;
use crate::sync::chunks::{self, PartedFile};
use crate::sync::{EntryKind, RemoteEntry, RemoteFiles};

/// How often one part is sent before the upload gives up: a part is the same bytes to the same name, so a dropped
/// connection or a timeout is worth another try, which costs at most one part.
const PART_ATTEMPTS: u32 = 5;

/// What the unpacking thread hands over while it reads the archive: the parts of big files, as it meets them.
enum Upload {
    /// The parts folder of a big file (relative to the root): listed to learn which parts arrived earlier.
    PartsFolder(String),
    /// One part, to `destination` (relative to the root), unless the folder's listing shows it whole.
    Part { destination: String, bytes: Vec<u8> },
}

/// Mode and modification time (ns) of a listed file, and the target of a listed symlink.
#[derive(Default)]
struct Listed {
    files: HashMap<String, (u32, i128)>,
    links: HashMap<String, String>,
}

/// The session's remote root inside one Daytona sandbox.
pub struct Files {
    toolbox: Arc<Toolbox>,
    /// Absolute, as the toolbox's file API names it.
    root: String,
    /// What the latest listing said of each file: bulk download answers only bytes, and the sync engine downloads
    /// what it has just listed, so archives carry the sandbox's modes, times and links from here.
    listed: std::sync::Mutex<Listed>,
}

/// What unpacking an upload found besides plain file contents.
#[derive(Default)]
struct Staged {
    /// Each part's sandbox path and content.
    files: Vec<(String, Vec<u8>)>,
    modes: Vec<(String, u32)>,
    symlinks: Vec<(String, String)>,
    directories: Vec<String>,
    mtimes: Vec<(String, u64)>,
    /// The batch's staging folder, relative to the root.
    stage: String,
    /// Big files that travelled in parts; the script joins each into the staging folder.
    parted: Vec<PartedFile>,
}

impl Staged {
    /// The script that finishes the batch from the root: modes, times, symlinks and folders on the staged copy,
    /// then the shell layer's merge renames everything into place and removes the staging folder.
    fn script(&self) -> String {
        let mut script = format!("set -e\nstage={}\nmkdir -p -- \"$stage\"\n", quote(&self.stage));
        let staged = |path: &str| format!("\"$stage\"/{}", quote(path));
        for parted in &self.parted {
            script.push_str(&parted.join_lines(quote));
        }
        for directory in &self.directories {
            script.push_str(&format!("mkdir -p -- {}\n", staged(directory)));
        }
        for (path, mode) in &self.modes {
            script.push_str(&format!("chmod {mode:o} -- {}\n", staged(path)));
        }
        for (path, target) in &self.symlinks {
            let parent = path.rsplit_once('/').map(|(parent, _)| parent).unwrap_or(".");
            script.push_str(&format!("mkdir -p -- {} && ln -sfn -- {} {}\n", staged(parent), quote(target), staged(path)));
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
        script.push_str(&format!("set +e\n(\nset -- \"$PWD\" \"$PWD/$stage\" ''\n{}\n)\n", scripts::MERGE));
        if !self.parted.is_empty() {
            // Parts are removed only once their files are in place, so a merge that fails finds them next time.
            script.push_str(&format!(
                "status=$?\n[ $status -ne 0 ] || {{\n{}}}\nexit $status\n",
                chunks::cleanup_lines(&self.parted, quote)
            ));
        }
        script
    }
}

/// Checks an archive path and makes it `/`-separated and relative.
fn clean_relative(path: &std::path::Path) -> Result<String> {
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            std::path::Component::Normal(part) => parts.push(part.to_str().ok_or_else(|| {
                Error::InvalidParams(format!("The file name {} is not valid UTF-8, which Daytona cannot store.", path.display()))
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

/// Unpacks an upload archive (on a blocking thread) into the files and fix-ups of one batch; big files go to
/// `parts` as they are read, in parts.
fn unpack(archive: BoxedReader, root: &str, parts: mpsc::Sender<Upload>) -> Result<Staged> {
    let stopped = || Error::Remote { status: None, message: "The upload to Daytona stopped before the archive ended.".into() };
    let threshold = chunks::threshold_bytes();
    let bridge = tokio_util::io::SyncIoBridge::new(archive);
    let mut archive = tar::Archive::new(bridge);
    let mut staged = Staged { stage: format!("{}/{}", scripts::STAGING_DIR, crate::ids::short_id()), ..Staged::default() };
    let entries = archive.entries().map_err(|source| Error::io("Could not read the upload archive", source))?;
    for entry in entries {
        let mut entry = entry.map_err(|source| Error::io("Could not read the upload archive", source))?;
        let relative = clean_relative(&entry.path().map_err(|source| Error::io("Could not read a path in the upload archive", source))?)?;
        if relative.is_empty() {
            continue;
        }
        let header = entry.header();
        let kind = header.entry_type();
        let mode = header.mode().unwrap_or(0o644) & crate::sync::PERMISSION_BITS;
        let mtime = header.mtime().ok();
        if kind.is_dir() {
            staged.directories.push(relative);
            continue;
        }
        if kind.is_symlink() {
            let target = entry
                .link_name()
                .map_err(|source| Error::io("Could not read a symlink in the upload archive", source))?
                .map(|target| target.to_string_lossy().into_owned())
                .unwrap_or_default();
            staged.symlinks.push((relative, target));
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        let size = entry.header().size().unwrap_or(0);
        if size > threshold {
            let folder = PartedFile::new(&relative, size, mtime.unwrap_or(0)).folder;
            parts.blocking_send(Upload::PartsFolder(folder)).map_err(|_| stopped())?;
            let parted = PartedFile::split(&mut entry, &relative, size, mtime.unwrap_or(0), |destination, bytes| {
                parts.blocking_send(Upload::Part { destination, bytes }).map_err(|_| stopped())
            })?;
            staged.parted.push(parted);
        } else {
            let mut content = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut content)
                .map_err(|source| Error::io(format!("Could not read {relative} from the upload archive"), source))?;
            staged.files.push((format!("{root}/{}/{relative}", staged.stage), content));
        }
        if let Some(mtime) = mtime {
            staged.mtimes.push((relative.clone(), mtime));
        }
        // Bulk upload writes every file with the daemon's default mode; any other bits are set after.
        if mode != 0o644 {
            staged.modes.push((relative, mode));
        }
    }
    Ok(staged)
}

/// The multipart body of one bulk upload: `files[i].path` (text, first) and `files[i].file` (bytes) per file, the
/// field names and order the SDK uses.
fn bulk_upload_body(boundary: &str, files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (index, (path, content)) in files.iter().enumerate() {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"files[{index}].path\"\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(path.as_bytes());
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"files[{index}].file\"; filename=\"file{index}\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    body
}

/// One part of a multipart answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Part {
    /// The form field's name (`file` or `error` in a bulk download).
    pub name: String,
    /// The `filename`, which a bulk download sets to the requested path.
    pub filename: Option<String>,
    pub content: Vec<u8>,
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    (from..=haystack.len() - needle.len()).find(|&start| &haystack[start..start + needle.len()] == needle)
}

/// A quoted parameter of a `Content-Disposition` header, with backslash escapes undone; `filename*` (RFC 5987,
/// percent-encoded UTF-8) wins over `filename` when both are there.
fn disposition_parameter(header: &str, name: &str) -> Option<String> {
    // Where `key` starts a parameter (after `;` or a space), so `name=` is never found inside `filename=`.
    let find_key = |key: &str| {
        let mut search = 0;
        loop {
            let found = header[search..].find(key)? + search;
            if found == 0 || matches!(header.as_bytes()[found - 1], b' ' | b';') {
                return Some(found + key.len());
            }
            search = found + key.len();
        }
    };
    if let Some(start) = find_key(&format!("{name}*=")) {
        let value = header[start..].split(';').next().unwrap_or("").trim();
        if let Some((_, encoded)) = value.split_once("''") {
            if let Ok(decoded) = urlencoding_decode(encoded) {
                return Some(decoded);
            }
        }
    }
    let start = find_key(&format!("{name}=\""))?;
    let mut value = String::new();
    let mut characters = header[start..].chars();
    while let Some(character) = characters.next() {
        match character {
            '\\' => value.extend(characters.next()),
            '"' => return Some(value),
            other => value.push(other),
        }
    }
    None
}

fn urlencoding_decode(encoded: &str) -> std::result::Result<String, ()> {
    let bytes = encoded.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' && index + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[index + 1..index + 3]).map_err(|_| ())?;
            decoded.push(u8::from_str_radix(hex, 16).map_err(|_| ())?);
            index += 3;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(decoded).map_err(|_| ())
}

/// Splits a multipart body into its parts; a part's `Content-Length`, when given, decides where it ends.
pub fn parse_multipart(body: &[u8], boundary: &str) -> Result<Vec<Part>> {
    let malformed = |what: &str| Error::Remote {
        status: None,
        message: format!("Daytona answered a bulk download sandlink cannot read ({what})."),
    };
    let delimiter = format!("--{boundary}").into_bytes();
    let mut position = find(body, &delimiter, 0).ok_or_else(|| malformed("no boundary"))?;
    let mut parts = Vec::new();
    loop {
        position += delimiter.len();
        if body[position..].starts_with(b"--") {
            return Ok(parts);
        }
        let headers_start = find(body, b"\r\n", position).ok_or_else(|| malformed("a boundary line without its end"))? + 2;
        let headers_end = find(body, b"\r\n\r\n", headers_start - 2).ok_or_else(|| malformed("a part without its headers' end"))?;
        let headers = String::from_utf8_lossy(&body[headers_start..headers_end]).into_owned();
        let content_start = headers_end + 4;
        let mut disposition = String::new();
        let mut length = None;
        for line in headers.split("\r\n") {
            let Some((name, value)) = line.split_once(':') else { continue };
            match name.trim().to_ascii_lowercase().as_str() {
                "content-disposition" => disposition = value.trim().to_string(),
                "content-length" => length = value.trim().parse::<usize>().ok(),
                _ => {}
            }
        }
        let mut closing = delimiter.clone();
        closing.splice(0..0, b"\r\n".iter().copied());
        let content_end = match length {
            Some(length) if content_start + length <= body.len() && body[content_start + length..].starts_with(&closing) => {
                content_start + length
            }
            _ => find(body, &closing, content_start).ok_or_else(|| malformed("a part without its closing boundary"))?,
        };
        parts.push(Part {
            name: disposition_parameter(&disposition, "name").unwrap_or_default(),
            filename: disposition_parameter(&disposition, "filename"),
            content: body[content_start..content_end].to_vec(),
        });
        position = content_end + 2;
    }
}

impl Files {
    pub fn new(toolbox: Arc<Toolbox>, root: String) -> Self {
        Files { toolbox, root, listed: std::sync::Mutex::default() }
    }

    /// Runs a helper script from the root; a failure is an error with its stderr.
    /// One `files/bulk-upload` request with a ready multipart body.
    async fn post_bulk_upload(&self, boundary: &str, body: Bytes) -> std::result::Result<(), crate::drivers::http::Failure> {
        let content_type = format!("multipart/form-data; boundary={boundary}");
        let limit = std::time::Duration::from_secs(60 + body.len() as u64 / (64 * 1024));
        self.toolbox
            .api
            .send(Some(limit), || {
                self.toolbox
                    .api
                    .request(reqwest::Method::POST, "/files/bulk-upload")
                    .header(reqwest::header::CONTENT_TYPE, &content_type)
                    .timeout(limit)
                    .body(body.clone())
            })
            .await
            .map(|_| ())
    }

    /// Sends the parts of big files as the unpacking meets them, skipping those an earlier upload left whole.
    async fn send_parts(&self, arriving: &mut mpsc::Receiver<Upload>) -> Result<()> {
        let mut present: HashMap<String, u64> = HashMap::new();
        while let Some(upload) = arriving.recv().await {
            match upload {
                Upload::PartsFolder(folder) => present.extend(self.list_parts(&folder).await?),
                Upload::Part { destination, bytes } => {
                    if present.get(&destination) == Some(&(bytes.len() as u64)) {
                        tracing::debug!(part = %destination, "a part is already in the sandbox; not sent again");
                        continue;
                    }
                    self.post_part(&destination, bytes).await?;
                }
            }
        }
        Ok(())
    }

    /// The parts already in a parts folder (relative to the root), with their sizes.
    async fn list_parts(&self, folder: &str) -> Result<Vec<(String, u64)>> {
        let listing = self.helper(chunks::LIST_PARTS, &[folder], "listing the parts of an upload").await?;
        Ok(chunks::parse_listed_parts(folder, &listing))
    }

    /// Sends one part as its own bulk upload, again after a dropped connection or a timeout.
    async fn post_part(&self, destination: &str, bytes: Vec<u8>) -> Result<()> {
        let boundary = format!("sandlink-{}", uuid::Uuid::new_v4().simple());
        let body = Bytes::from(bulk_upload_body(&boundary, &[(format!("{}/{destination}", self.root), bytes)]));
        let mut attempt = 1;
        loop {
            match self.post_bulk_upload(&boundary, body.clone()).await {
                Ok(()) => return Ok(()),
                Err(failure @ (crate::drivers::http::Failure::Transport { .. } | crate::drivers::http::Failure::Timeout(_)))
                    if attempt < PART_ATTEMPTS =>
                {
                    tracing::info!(part = %destination, attempt, ?failure, "a part of an upload broke off; sending it again");
                    tokio::time::sleep(std::time::Duration::from_millis(200 * u64::from(attempt))).await;
                    attempt += 1;
                }
                Err(failure) => {
                    return Err(self.toolbox.api.fail(failure, &format!("uploading a part of a big file ({destination}) to the sandbox")))
                }
            }
        }
    }

    async fn helper(&self, script: &str, arguments: &[&str], what: &str) -> Result<Vec<u8>> {
        let reply = self.toolbox.script(&self.root, script, arguments, what).await?;
        if reply.status != 0 {
            return Err(Error::Remote {
                status: None,
                message: format!(
                    "A file operation in the Daytona sandbox failed while {what} (exit {}): {}",
                    reply.status,
                    String::from_utf8_lossy(&reply.stderr).trim()
                ),
            });
        }
        Ok(reply.stdout)
    }

    fn remember(&self, entries: &[RemoteEntry], replace: bool) {
        let mut listed = crate::locks::lock(&self.listed);
        if replace {
            *listed = Listed::default();
        }
        for entry in entries {
            match entry.kind {
                EntryKind::File => {
                    listed.files.insert(entry.path.clone(), (entry.mode, entry.mtime_ns));
                    listed.links.remove(&entry.path);
                }
                EntryKind::Symlink => {
                    if let Some(target) = &entry.link_target {
                        listed.links.insert(entry.path.clone(), target.clone());
                    }
                }
                _ => {}
            }
        }
    }

    async fn parse(output: Vec<u8>) -> Result<Vec<RemoteEntry>> {
        tokio::task::spawn_blocking(move || parse_listing(&output))
            .await
            .map_err(|error| Error::Internal(format!("Parsing the remote listing failed: {error}")))?
    }

    /// `POST /files/bulk-download` for `paths` (relative); answers each found file's bytes.
    async fn bulk_download(&self, paths: &[String]) -> Result<HashMap<String, Vec<u8>>> {
        let mut found = HashMap::new();
        if paths.is_empty() {
            return Ok(found);
        }
        let absolute: Vec<String> = paths.iter().map(|path| format!("{}/{path}", self.root)).collect();
        let what = "downloading files from the sandbox";
        let body = json!({ "paths": absolute });
        let limit = std::time::Duration::from_secs(600);
        let response = self.toolbox.api.call_within(reqwest::Method::POST, "/files/bulk-download", Some(&body), what, limit).await?;
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
            .to_string();
        let boundary = content_type
            .split(';')
            .filter_map(|parameter| parameter.trim().strip_prefix("boundary="))
            .next()
            .map(|boundary| boundary.trim_matches('"').to_string())
            .ok_or_else(|| Error::Remote {
                status: None,
                message: format!("Daytona answered a bulk download without a multipart boundary ({content_type})."),
            })?;
        let bytes = response.bytes().await.map_err(|error| Error::Remote {
            status: None,
            message: format!("The bulk download from Daytona broke off: {error}."),
        })?;
        let parts = tokio::task::spawn_blocking(move || parse_multipart(&bytes, &boundary))
            .await
            .map_err(|error| Error::Internal(format!("Reading the bulk download failed: {error}")))??;
        let prefix = format!("{}/", self.root);
        for (index, part) in parts.into_iter().enumerate() {
            // Each part names the path it answers; the order of the request is the fallback.
            let relative = match part.filename.as_deref().and_then(|name| name.strip_prefix(&prefix)) {
                Some(relative) => relative.to_string(),
                None => match paths.get(index) {
                    Some(path) => path.clone(),
                    None => continue,
                },
            };
            match part.name.as_str() {
                "file" => {
                    found.insert(relative, part.content);
                }
                // A file that vanished since the listing: the engine's archive simply lacks it.
                _ => tracing::debug!(path = %relative, error = %String::from_utf8_lossy(&part.content), "not downloaded"),
            }
        }
        Ok(found)
    }

    /// One file whose name a multipart header cannot carry (a newline in it), read by a helper script instead: a
    /// header naming it would break the answer of `files/download` just as that of `files/bulk-download`.
    async fn download_odd(&self, relative: &str) -> Result<Option<Vec<u8>>> {
        let script = "[ -f \"$1\" ] || exit 3\nexec cat -- \"$1\"";
        let reply = self.toolbox.script(&self.root, script, &[relative], "downloading a file from the sandbox").await?;
        match reply.status {
            0 => Ok(Some(reply.stdout)),
            3 => Ok(None),
            status => Err(Error::Remote {
                status: None,
                message: format!(
                    "Reading {relative:?} in the Daytona sandbox failed (exit {status}): {}",
                    String::from_utf8_lossy(&reply.stderr).trim()
                ),
            }),
        }
    }
}

#[async_trait]
impl RemoteFiles for Files {
    async fn upload_tar(&self, archive: BoxedReader) -> Result<()> {
        let root = self.root.clone();
        // One part at a time in flight: a part is megabytes, and the unpacking waits while it travels.
        let (parts, mut arriving) = mpsc::channel(1);
        let unpacking = tokio::task::spawn_blocking(move || unpack(archive, &root, parts));
        let sent = self.send_parts(&mut arriving).await;
        drop(arriving);
        let staged = unpacking.await.map_err(|error| Error::Internal(format!("Packing the upload failed: {error}")))?;
        // A failed part usually makes the unpacking fail too (its channel closed); the part's error says why.
        sent?;
        let staged = staged?;
        if staged.files.is_empty() && staged.directories.is_empty() && staged.symlinks.is_empty() && staged.parted.is_empty() {
            return Ok(());
        }
        if !staged.files.is_empty() {
            let boundary = format!("sandlink-{}", uuid::Uuid::new_v4().simple());
            let body = Bytes::from(bulk_upload_body(&boundary, &staged.files));
            if let Err(failure) = self.post_bulk_upload(&boundary, body).await {
                let what = "uploading files to the sandbox";
                let error = self.toolbox.api.fail(failure, what);
                let _ = self.helper("rm -rf -- \"$1\"", &[&staged.stage], "removing a failed upload").await;
                return Err(error);
            }
        }
        self.helper(&staged.script(), &[], "moving the uploaded files into place").await.map(|_| ())
    }

    async fn delete(&self, paths: Vec<String>) -> Result<()> {
        if paths.is_empty() {
            return Ok(());
        }
        let checked = paths.iter().map(|path| checked_relative(path)).collect::<Result<Vec<String>>>()?;
        let arguments: Vec<&str> = checked.iter().map(String::as_str).collect();
        self.helper(r#"rm -rf -- "$@""#, &arguments, "deleting files in the sandbox").await.map(|_| ())
    }

    async fn list(&self) -> Result<Vec<RemoteEntry>> {
        let reply = self.toolbox.script(&self.root, scripts::LIST, &["."], "listing the sandbox's files").await?;
        if reply.status == 3 {
            // A root that does not exist yet holds nothing.
            return Ok(Vec::new());
        }
        let entries = Self::parse(reply.stdout).await?;
        self.remember(&entries, true);
        Ok(entries)
    }

    async fn stat(&self, paths: Vec<String>) -> Result<Vec<RemoteEntry>> {
        if paths.is_empty() {
            return Ok(Vec::new());
        }
        let checked = paths.iter().map(|path| checked_relative(path)).collect::<Result<Vec<String>>>()?;
        let mut arguments = vec!["."];
        arguments.extend(checked.iter().map(String::as_str));
        let output = self.helper(scripts::STAT, &arguments, "looking at files in the sandbox").await?;
        let entries = Self::parse(output).await?;
        self.remember(&entries, false);
        Ok(entries)
    }

    fn tells_change_times(&self) -> bool {
        true
    }

    async fn download_tar(&self, paths: Vec<String>) -> Result<BoxedReader> {
        let checked = paths.iter().map(|path| checked_relative(path)).collect::<Result<Vec<String>>>()?;
        let (links, files, modes) = {
            let listed = crate::locks::lock(&self.listed);
            let (links, files): (Vec<String>, Vec<String>) = checked.into_iter().partition(|path| listed.links.contains_key(path));
            let links: Vec<(String, String)> = links.into_iter().map(|path| {
                let target = listed.links[&path].clone();
                (path, target)
            }).collect();
            (links, files, listed.files.clone())
        };
        // A name a multipart header cannot carry comes down on its own.
        let (odd, plain): (Vec<String>, Vec<String>) = files.into_iter().partition(|path| path.chars().any(char::is_control));
        let mut contents = self.bulk_download(&plain).await?;
        for path in odd {
            if let Some(content) = self.download_odd(&path).await? {
                contents.insert(path, content);
            }
        }
        let archive = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            let mut builder = tar::Builder::new(Vec::new());
            let now = time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64;
            for (path, target) in links {
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                header.set_mode(0o777);
                header.set_mtime(now);
                builder.append_link(&mut header, &path, &target)?;
            }
            let mut ordered: Vec<(String, Vec<u8>)> = contents.into_iter().collect();
            ordered.sort_by(|left, right| left.0.cmp(&right.0));
            for (path, content) in ordered {
                let mut header = tar::Header::new_gnu();
                header.set_size(content.len() as u64);
                let (mode, mtime_ns) = modes.get(&path).copied().unwrap_or((0o644, 0));
                header.set_mode(mode);
                header.set_mtime(if mtime_ns > 0 { (mtime_ns / 1_000_000_000) as u64 } else { now });
                header.set_entry_type(tar::EntryType::Regular);
                builder.append_data(&mut header, &path, content.as_slice())?;
            }
            builder.into_inner()
        })
        .await
        .map_err(|error| Error::Internal(format!("Packing the download failed: {error}")))?
        .map_err(|error| Error::io("Could not pack the downloaded files", error))?;
        Ok(Box::pin(std::io::Cursor::new(archive)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_answers_should_split_into_named_parts_even_with_boundaries_in_content() {
        let boundary = "DAYTONA-FILE-BOUNDARY";
        let tricky = b"a\r\n--DAYTONA-FILE-BOUNDARYnot really\r\nb".to_vec();
        let mut body = Vec::new();
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"/w/a \\\"q\\\".txt\"\r\n\
                 Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
                tricky.len()
            )
            .as_bytes(),
        );
        body.extend_from_slice(&tricky);
        body.extend_from_slice(
            format!(
                "\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"/w/x\"; \
                 filename*=utf-8''%2Fw%2F%C3%A9.txt\r\n\r\nsecond\r\n--{boundary}\r\nContent-Disposition: form-data; \
                 name=\"error\"; filename=\"/w/gone\"\r\nContent-Type: application/json\r\n\r\n{{\"code\":\"FILE_NOT_FOUND\"}}\r\n--{boundary}--\r\n"
            )
            .as_bytes(),
        );
        let parts = parse_multipart(&body, boundary).expect("parses");
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0], Part { name: "file".into(), filename: Some("/w/a \"q\".txt".into()), content: tricky });
        assert_eq!(parts[1].filename.as_deref(), Some("/w/é.txt"));
        assert_eq!(parts[1].name, "file", "name= is not read from inside filename*=");
        assert_eq!(parts[1].content, b"second");
        assert_eq!(parts[2].name, "error");
    }

    #[test]
    fn upload_bodies_should_name_path_before_file_as_the_sdk_does() {
        let body = bulk_upload_body("B", &[("/w/a".into(), b"hi".to_vec())]);
        let text = String::from_utf8(body).expect("text");
        let path_at = text.find("name=\"files[0].path\"").expect("path part");
        let file_at = text.find("name=\"files[0].file\"").expect("file part");
        assert!(path_at < file_at, "{text}");
        assert!(text.ends_with("--B--\r\n"));
    }

    #[test]
    fn the_finishing_script_should_stage_then_merge() {
        let staged = Staged {
            modes: vec![("run.sh".into(), 0o755)],
            symlinks: vec![("dir/link".into(), "../t".into())],
            mtimes: vec![("a".into(), 5), ("b".into(), 5)],
            stage: ".sandlink-staging/abc".into(),
            ..Staged::default()
        };
        let script = staged.script();
        assert!(script.contains("chmod 755 -- \"$stage\"/'run.sh'"), "{script}");
        assert!(script.contains("ln -sfn -- '../t' \"$stage\"/'dir/link'"), "{script}");
        assert!(script.contains("touch -c -m -d @5 -- \"$stage\"/'a' \"$stage\"/'b'"), "{script}");
        assert!(script.contains("merge ."), "{script}");
    }
}
