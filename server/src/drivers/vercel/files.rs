//! The vercel driver's side of sync: one gzip tar per batch through `fs/write`, staged and then moved into place by
//! one command; listings, stats and deletes by command (Vercel has no listing endpoint); downloads as one gzip tar
//! the sandbox packs and `fs/read` fetches. Files over `sync::chunks::threshold_bytes` go in parts instead, each its
//! own `fs/write` of a one-file tar, that survive a dropped connection (`sync::chunks`).
//!
//! Every command runs with the session's root as its working directory and names paths relative to it, so the
//! scripts work wherever the sandbox maps its paths. The scripts are the shell layer's (`drivers::shell::scripts`),
//! so listings have the same format, and the same parser, as docker's.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncReadExt;

use super::client::{Api, Route, SessionPaths};
use super::commands::{self, CommandSpec, Reply, SessionWatch};
use crate::drivers::shell::files::checked_relative;
use crate::drivers::shell::listing::parse_listing;
use crate::drivers::shell::{quote, scripts};
use crate::error::{Error, Result};
use crate::streams::BoxedReader;
use crate::sync::chunks::{self, PartedFile};
use crate::sync::{RemoteEntry, RemoteFiles};

/// How often one part is sent before the upload gives up: a part is the same bytes to the same name, so a dropped
/// connection or a timeout is worth another try, which costs at most one part.
const PART_ATTEMPTS: u32 = 5;

/// The largest upload batch held in memory (it is sent as one request body, which a retry sends again).
const LARGEST_BATCH_BYTES: usize = 512 << 20;
/// The slowest upload accepted: a batch gets the call timeout plus the time this rate needs for its bytes.
const SLOWEST_UPLOAD_BYTES_PER_SECOND: u64 = 64 * 1024;
/// Downloads are packed under this name in the staging folder; each download removes the one before it.
const DOWNLOAD_SUFFIX: &str = ".download.tgz";

/// The session's root inside one Vercel sandbox; the session paths change when a snapshot resumes into a new session.
pub struct Files {
    api: Arc<Api>,
    watch: SessionWatch,
    /// Absolute, without a trailing slash.
    root: String,
}

/// A repacked upload: the gzip body, and what the finishing script must do.
struct Packed {
    gzip: Vec<u8>,
    stage: String,
    /// Regular files as (relative path, mtime in seconds): `fs/write` stamps files with the time of writing, and the
    /// sync engine compares the sandbox's times with the archive's.
    mtimes: Vec<(String, u64)>,
    entries: usize,
    /// Big files that go in parts, with their permission bits; the finishing script joins each into the stage.
    parted: Vec<(PartedFile, u32)>,
    /// Each part as (destination relative to the root, its size, a gzip tar holding just it), in order.
    parts: Vec<(String, u64, Vec<u8>)>,
}

/// A gzip tar holding one file, `bytes` at `path`: what `fs/write` takes.
fn one_file_archive(path: &str, bytes: &[u8]) -> Result<Vec<u8>> {
    let writing = |source| Error::io("Could not pack a part of an upload for Vercel", source);
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o600);
    header.set_entry_type(tar::EntryType::Regular);
    builder.append_data(&mut header, path, bytes).map_err(writing)?;
    builder.into_inner().and_then(|encoder| encoder.finish()).map_err(writing)
}

/// Checks an archive path and makes it `/`-separated and relative (names must be UTF-8: they travel in JSON).
fn clean_relative(path: &std::path::Path) -> Result<String> {
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            std::path::Component::Normal(part) => parts.push(part.to_str().ok_or_else(|| {
                Error::InvalidParams(format!(
                    "The file name {} is not valid UTF-8, which Vercel's file API cannot carry.",
                    path.display()
                ))
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

/// Re-packs the engine's tar under `<stage>/`, gzipped, with the finishing script beside it (`<stage>.sh`).
fn repack(archive: Vec<u8>, stage: String) -> Result<Packed> {
    let reading = |source| Error::io("Could not read the upload archive", source);
    let mut input = tar::Archive::new(std::io::Cursor::new(archive));
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut output = tar::Builder::new(encoder);
    output.mode(tar::HeaderMode::Complete);
    let mut mtimes = Vec::new();
    let mut entries = 0;
    let mut parted = Vec::new();
    let mut parts = Vec::new();
    let threshold = chunks::threshold_bytes();
    for entry in input.entries().map_err(reading)? {
        let mut entry = entry.map_err(reading)?;
        let relative = clean_relative(&entry.path().map_err(reading)?)?;
        if relative.is_empty() {
            continue;
        }
        let mut header = entry.header().clone();
        let kind = header.entry_type();
        let staged = format!("{stage}/{relative}");
        let writing = |source| Error::io("Could not pack the upload for Vercel", source);
        if kind.is_symlink() {
            let target = entry.link_name().map_err(reading)?.map(|target| target.into_owned()).unwrap_or_default();
            output.append_link(&mut header, &staged, target).map_err(writing)?;
        } else if kind.is_file() && header.size().unwrap_or(0) > threshold {
            let size = header.size().unwrap_or(0);
            mtimes.push((relative.clone(), header.mtime().unwrap_or(0)));
            let file = PartedFile::split(&mut entry, &relative, size, header.mtime().unwrap_or(0), |destination, bytes| {
                let archive = one_file_archive(&destination, &bytes)?;
                parts.push((destination, bytes.len() as u64, archive));
                Ok(())
            })?;
            parted.push((file, header.mode().unwrap_or(0o644) & crate::sync::PERMISSION_BITS));
        } else if kind.is_dir() || kind.is_file() {
            if kind.is_file() {
                mtimes.push((relative.clone(), header.mtime().unwrap_or(0)));
            }
            output.append_data(&mut header, &staged, &mut entry).map_err(writing)?;
        } else {
            continue;
        }
        entries += 1;
    }
    let script = finish_script(&stage, &mtimes, &parted);
    let mut header = tar::Header::new_gnu();
    header.set_size(script.len() as u64);
    header.set_mode(0o600);
    header.set_entry_type(tar::EntryType::Regular);
    let writing = |source| Error::io("Could not pack the upload for Vercel", source);
    output.append_data(&mut header, format!("{stage}.sh"), script.as_bytes()).map_err(writing)?;
    let gzip = output.into_inner().and_then(|encoder| encoder.finish()).map_err(writing)?;
    Ok(Packed { gzip, stage, mtimes, entries: entries + parted.len(), parted, parts })
}

/// The script that finishes an upload, run from the root as `sh <stage>.sh`: it gives the staged files their
/// archive times back, renames everything into place (the shared merge: each file replaced atomically), and removes
/// the stage and itself.
fn finish_script(stage: &str, mtimes: &[(String, u64)], parted: &[(PartedFile, u32)]) -> String {
    let mut script = format!("stage={}\n", quote(stage));
    if !parted.is_empty() {
        // A joined file is made by `cat`, so its mode is the shell's default; the tar would have carried the file's.
        script.push_str("set -e\n");
        for (file, mode) in parted {
            script.push_str(&file.join_lines(quote));
            script.push_str(&format!("chmod {mode:o} -- \"$stage\"/{}\n", quote(&file.path)));
        }
        script.push_str("set +e\n");
    }
    // One `touch` per distinct time keeps the script short when many files share a second.
    let mut by_time: std::collections::BTreeMap<u64, Vec<&str>> = std::collections::BTreeMap::new();
    for (path, mtime) in mtimes {
        by_time.entry(*mtime).or_default().push(path);
    }
    for (mtime, paths) in by_time {
        for group in paths.chunks(200) {
            let quoted: Vec<String> = group.iter().map(|path| format!("\"$stage\"/{}", quote(path))).collect();
            script.push_str(&format!("touch -c -m -d @{mtime} -- {}\n", quoted.join(" ")));
        }
    }
    script.push_str(&format!(
        "(\nset -- \"$PWD\" \"$PWD/$stage\" ''\n{}\n)\nstatus=$?\nrm -f -- \"$0\"\n[ $status -eq 0 ] || exit $status\n",
        scripts::MERGE
    ));
    // Parts are removed only once their files are in place, so a merge that fails finds them next time.
    if !parted.is_empty() {
        let files: Vec<PartedFile> = parted.iter().map(|(file, _)| file.clone()).collect();
        script.push_str(&chunks::cleanup_lines(&files, quote));
    }
    // The look at what was written, in the same command: the stamps sync records for the files (inode and ctime
    // included) cost no request of their own.
    if !mtimes.is_empty() && mtimes.len() <= MOST_FILES_LOOKED_AT {
        let quoted: Vec<String> = mtimes.iter().map(|(path, _)| quote(path)).collect();
        script.push_str(&format!("set -- . {}\n{}\n", quoted.join(" "), scripts::STAT));
    }
    script.push_str("exit 0\n");
    script
}

/// Uploads of more files than this leave the look after them to the engine (one `find` names them all, and a
/// command line has a length limit).
const MOST_FILES_LOOKED_AT: usize = 2000;

impl Files {
    pub fn new(api: Arc<Api>, watch: SessionWatch, root: String) -> Self {
        Files { api, watch, root }
    }

    fn paths(&self) -> SessionPaths {
        crate::locks::lock(&self.watch.current).clone()
    }

    /// Runs `sh -c script sandlink args…` in the root and answers its output, failing on a non-zero exit.
    /// Sends the parts of big files, each its own `fs/write`, skipping those an earlier upload left whole (one
    /// listing per file's folder first) and sending one again after a dropped connection or a timeout.
    async fn send_parts(&self, packed: &Packed) -> Result<()> {
        let mut present: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
        for (file, _) in &packed.parted {
            let listing = self.shell(chunks::LIST_PARTS, vec![file.folder.clone()], "Listing the parts of an upload").await?;
            present.extend(chunks::parse_listed_parts(&file.folder, &listing));
        }
        let path = self.paths().at("/fs/write");
        for (destination, size, archive) in &packed.parts {
            if present.get(destination) == Some(size) {
                tracing::debug!(part = %destination, "a part is already in the sandbox; not sent again");
                continue;
            }
            let body = Bytes::from(archive.clone());
            let limit = super::client::CALL_TIMEOUT + std::time::Duration::from_secs(body.len() as u64 / SLOWEST_UPLOAD_BYTES_PER_SECOND);
            let mut attempt = 1;
            loop {
                let outcome = self
                    .api
                    .send(Route::Sandbox, None, || {
                        self.api
                            .request(reqwest::Method::POST, &path)
                            .header(reqwest::header::CONTENT_TYPE, "application/gzip")
                            .header("x-cwd", self.root.as_str())
                            .timeout(limit)
                            .body(body.clone())
                    })
                    .await;
                match outcome {
                    Ok(response) => {
                        let _ = response.bytes().await;
                        break;
                    }
                    Err(failure @ (crate::drivers::http::Failure::Transport { .. } | crate::drivers::http::Failure::Timeout(_)))
                        if attempt < PART_ATTEMPTS =>
                    {
                        tracing::info!(part = %destination, attempt, ?failure, "a part of an upload broke off; sending it again");
                        tokio::time::sleep(std::time::Duration::from_millis(200 * u64::from(attempt))).await;
                        attempt += 1;
                    }
                    Err(failure) => {
                        return Err(self.api.fail(failure, &format!("uploading a part of a big file ({destination}) to the sandbox")))
                    }
                }
            }
        }
        Ok(())
    }

    async fn shell(&self, script: &str, arguments: Vec<String>, what: &str) -> Result<Vec<u8>> {
        let mut args = vec!["-c".to_string(), script.to_string(), "sandlink".to_string()];
        args.extend(arguments);
        let spec = CommandSpec { program: "sh".into(), args, cwd: self.root.clone(), env: Default::default(), timeout: None };
        let Reply { code, stdout, stderr } = commands::collect(self.api.clone(), self.watch.clone(), spec).await?;
        if code != Some(0) {
            return Err(Error::Remote {
                status: None,
                message: format!(
                    "{what} in the Vercel sandbox failed (exit {}): {}",
                    code.map(|code| code.to_string()).unwrap_or_else(|| "unknown".into()),
                    String::from_utf8_lossy(&stderr).trim()
                ),
            });
        }
        Ok(stdout)
    }

    async fn parse(output: Vec<u8>) -> Result<Vec<RemoteEntry>> {
        tokio::task::spawn_blocking(move || parse_listing(&output))
            .await
            .map_err(|error| Error::Internal(format!("Parsing the sandbox's listing failed: {error}")))?
    }

    /// Creates the session's root (the sandbox's working directory always exists; another root may not).
    pub async fn prepare_root(&self) -> Result<()> {
        let spec = CommandSpec {
            program: "mkdir".into(),
            args: vec!["-p".into(), self.root.clone()],
            cwd: "/".into(),
            env: Default::default(),
            timeout: None,
        };
        let reply = commands::collect(self.api.clone(), self.watch.clone(), spec).await?;
        if reply.code != Some(0) {
            return Err(Error::Remote {
                status: None,
                message: format!("Could not create {} in the Vercel sandbox: {}", self.root, String::from_utf8_lossy(&reply.stderr).trim()),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl RemoteFiles for Files {
    async fn upload_tar(&self, archive: BoxedReader) -> Result<()> {
        self.upload_tar_looked(archive).await.map(|_| ())
    }

    async fn upload_tar_looked(&self, mut archive: BoxedReader) -> Result<Option<Vec<RemoteEntry>>> {
        // Held for reading by every operation, so none reaches a session a snapshot is replacing.
        let _gate = self.watch.switching.read().await;
        let mut bytes = Vec::new();
        (&mut archive)
            .take(LARGEST_BATCH_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .await
            .map_err(|error| Error::io("Could not read the upload archive", error))?;
        if bytes.len() > LARGEST_BATCH_BYTES {
            return Err(Error::InvalidParams(format!(
                "One upload batch exceeds {} MiB, the most the vercel driver sends in one request.",
                LARGEST_BATCH_BYTES >> 20
            )));
        }
        let stage = format!("{}/{}", scripts::STAGING_DIR, crate::ids::short_id());
        let packed = tokio::task::spawn_blocking(move || repack(bytes, stage))
            .await
            .map_err(|error| Error::Internal(format!("Packing the upload failed: {error}")))??;
        if packed.entries == 0 {
            return Ok(Some(Vec::new()));
        }
        self.send_parts(&packed).await?;
        let looked = !packed.mtimes.is_empty() && packed.mtimes.len() <= MOST_FILES_LOOKED_AT;
        tracing::debug!(files = packed.mtimes.len(), bytes = packed.gzip.len(), "uploading a batch to Vercel");
        let body = Bytes::from(packed.gzip);
        let path = self.paths().at("/fs/write");
        let what = "uploading files to the sandbox";
        // A big batch may take long on a slow link, but it must keep moving at the slowest rate accepted.
        let limit = super::client::CALL_TIMEOUT + std::time::Duration::from_secs(body.len() as u64 / SLOWEST_UPLOAD_BYTES_PER_SECOND);
        let response = self
            .api
            .send(Route::Sandbox, None, || {
                self.api
                    .request(reqwest::Method::POST, &path)
                    .header(reqwest::header::CONTENT_TYPE, "application/gzip")
                    .header("x-cwd", self.root.as_str())
                    .timeout(limit)
                    .body(body.clone())
            })
            .await
            .map_err(|failure| self.api.fail(failure, what))?;
        let _ = response.bytes().await;
        let script_name = format!("{}.sh", packed.stage);
        let output = self.shell(r#"exec sh "$1""#, vec![script_name], "Moving the uploaded files into place").await?;
        if !looked {
            return Ok(None);
        }
        Self::parse(output).await.map(Some)
    }

    async fn delete(&self, paths: Vec<String>) -> Result<()> {
        // Held for reading by every operation, so none reaches a session a snapshot is replacing.
        let _gate = self.watch.switching.read().await;
        if paths.is_empty() {
            return Ok(());
        }
        let checked = paths.iter().map(|path| checked_relative(path)).collect::<Result<Vec<String>>>()?;
        self.shell(r#"rm -rf -- "$@""#, checked, "Deleting files").await.map(|_| ())
    }

    async fn list(&self) -> Result<Vec<RemoteEntry>> {
        // Held for reading by every operation, so none reaches a session a snapshot is replacing.
        let _gate = self.watch.switching.read().await;
        let output = self.shell(scripts::LIST, vec![".".into()], "Listing the files").await?;
        Self::parse(output).await
    }

    async fn stat(&self, paths: Vec<String>) -> Result<Vec<RemoteEntry>> {
        // Held for reading by every operation, so none reaches a session a snapshot is replacing.
        let _gate = self.watch.switching.read().await;
        if paths.is_empty() {
            return Ok(Vec::new());
        }
        let mut arguments = vec![".".to_string()];
        for path in &paths {
            arguments.push(checked_relative(path)?);
        }
        let output = self.shell(scripts::STAT, arguments, "Looking at files").await?;
        Self::parse(output).await
    }

    fn tells_change_times(&self) -> bool {
        true
    }

    async fn download_tar(&self, paths: Vec<String>) -> Result<BoxedReader> {
        // Held for reading by every operation, so none reaches a session a snapshot is replacing.
        let _gate = self.watch.switching.read().await;
        let checked = paths.iter().map(|path| checked_relative(path)).collect::<Result<Vec<String>>>()?;
        if checked.is_empty() {
            return Ok(Box::pin(std::io::Cursor::new(empty_tar())));
        }
        // The archive lands in the staging folder, which listings never show; the next download removes it.
        let archive = format!("{}/{}{DOWNLOAD_SUFFIX}", scripts::STAGING_DIR, crate::ids::short_id());
        let script = format!(
            r#"archive=$1
shift
mkdir -p {staging} && rm -f {staging}/*{DOWNLOAD_SUFFIX} || exit 1
n=$#
while [ "$n" -gt 0 ]; do {{ [ -e "$1" ] || [ -L "$1" ]; }} && set -- "$@" "$1"; shift; n=$((n - 1)); done
[ $# -gt 0 ] || {{ tar -czf "$archive" -T /dev/null; exit $?; }}
# GNU tar reads backslashes in names as escapes unless told not to; busybox tar has no such option and needs none.
if tar --no-unquote -cf /dev/null -T /dev/null 2>/dev/null; then set -- --no-unquote -czf "$archive" -- "$@"; else set -- -czf "$archive" -- "$@"; fi
exec tar "$@""#,
            staging = scripts::STAGING_DIR
        );
        let mut arguments = vec![archive.clone()];
        arguments.extend(checked);
        self.shell(&script, arguments, "Packing files for download").await?;
        let path = self.paths().at("/fs/read");
        let body = serde_json::json!({ "path": format!("{}/{archive}", self.root) });
        // No overall deadline: a big archive may take long, and a connection that stops moving fails on its own (the
        // pool's read timeout).
        let response = self
            .api
            .send(Route::Sandbox, Some(super::client::CALL_TIMEOUT), || self.api.request(reqwest::Method::POST, &path).json(&body))
            .await
            .map_err(|failure| self.api.fail(failure, "downloading files from the sandbox"))?;
        let gzip = response.bytes().await.map_err(|error| Error::Remote {
            status: None,
            message: format!("The download from the Vercel sandbox broke off: {error}."),
        })?;
        let tar = tokio::task::spawn_blocking(move || {
            let mut decoded = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(gzip.as_ref()), &mut decoded).map(|_| decoded)
        })
        .await
        .map_err(|error| Error::Internal(format!("Unpacking the download failed: {error}")))?
        .map_err(|error| Error::io("The download from the Vercel sandbox is not a readable gzip archive", error))?;
        Ok(Box::pin(std::io::Cursor::new(tar)))
    }
}

/// A tar stream with no entries.
fn empty_tar() -> Vec<u8> {
    vec![0u8; 1024]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repack_should_stage_every_entry_and_carry_the_finishing_script() {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(2);
        header.set_mode(0o755);
        header.set_mtime(1_700_000_000);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, "bin/run.sh", &b"hi"[..]).unwrap();
        let archive = builder.into_inner().unwrap();
        let packed = repack(archive, ".sandlink-staging/abc".into()).expect("repacks");
        assert_eq!(packed.entries, 1);
        assert_eq!(packed.mtimes, vec![("bin/run.sh".to_string(), 1_700_000_000)]);
        let mut unpacked = tar::Archive::new(flate2::read::GzDecoder::new(packed.gzip.as_slice()));
        let names: Vec<(String, u32)> = unpacked
            .entries()
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                (entry.path().unwrap().to_string_lossy().into_owned(), entry.header().mode().unwrap())
            })
            .collect();
        assert_eq!(names, vec![(".sandlink-staging/abc/bin/run.sh".to_string(), 0o755), (".sandlink-staging/abc.sh".to_string(), 0o600)]);
    }

    #[test]
    fn the_finishing_script_should_restore_times_and_merge() {
        let script = finish_script(".sandlink-staging/abc", &[("a b.txt".into(), 5), ("c".into(), 5)], &[]);
        assert!(script.contains("touch -c -m -d @5 -- \"$stage\"/'a b.txt' \"$stage\"/'c'"), "{script}");
        assert!(script.contains("mv -f"), "the shared merge renames into place: {script}");
        assert!(script.contains("set -- . 'a b.txt' 'c'\n"), "the files are looked at after the merge: {script}");
    }

    #[test]
    fn uploads_should_refuse_paths_outside_the_root() {
        assert!(clean_relative(std::path::Path::new("../x")).is_err());
        assert_eq!(clean_relative(std::path::Path::new("./a/b")).unwrap(), "a/b");
    }
}
