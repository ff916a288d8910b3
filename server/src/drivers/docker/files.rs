//! The docker driver's side of sync: tar uploads and downloads through the archive API, deletes and listings
//! through one exec each.

use async_trait::async_trait;

use std::sync::Arc;

use tokio::io::AsyncReadExt;

use super::agent::Agent;
use super::client::Client;
use super::scripts;
use crate::drivers::BoxedReader;
use crate::error::{Error, Result};
use crate::sync::{EntryKind, RemoteEntry, RemoteFiles};

/// One session's remote root inside its container.
pub struct DockerFiles {
    pub client: Client,
    pub container: String,
    pub root: String,
    /// Whether uploaded files take the container's user as owner (true for containers sandlink created).
    pub copy_owner: bool,
    /// The helper shell that runs merges, deletes and listings without starting a process per request.
    pub agent: Arc<Agent>,
    /// Who owns uploaded files (the `user` setting); `None` leaves them to the archive's or container's owner.
    pub owner: Option<String>,
}

impl DockerFiles {
    /// The absolute path inside the container of `relative`, refusing paths that leave the root.
    fn absolute(&self, relative: &str) -> Result<String> {
        let clean = checked_relative(relative)?;
        Ok(format!("{}/{clean}", self.root))
    }

    async fn helper(&self, script: &str, arguments: &[&str], data: Option<&[u8]>) -> Result<Vec<u8>> {
        let reply = self.agent.run(script, arguments, data).await?;
        if reply.status != 0 {
            return Err(Error::Remote {
                status: None,
                message: format!(
                    "A file operation in container {} failed (exit {}): {}",
                    short(&self.container),
                    reply.status,
                    String::from_utf8_lossy(&reply.stderr).trim()
                ),
            });
        }
        Ok(reply.stdout)
    }
}

/// Batches up to this size go through the helper shell in one write; larger ones stream through the archive API.
const SMALL_BATCH_BYTES: usize = 8 << 20;

#[async_trait]
impl RemoteFiles for DockerFiles {
    async fn upload_tar(&self, archive: BoxedReader) -> Result<()> {
        let batch = crate::engine::short_id();
        let stage = format!("{}/{}/{batch}", self.root, scripts::STAGING_DIR);
        let owner = self.owner.clone().unwrap_or_default();
        let mut head = Vec::new();
        let mut limited = archive.take(SMALL_BATCH_BYTES as u64 + 1);
        limited.read_to_end(&mut head).await.map_err(|error| Error::io("Could not read the upload archive", error))?;
        if head.len() <= SMALL_BATCH_BYTES {
            // A typical save: the whole batch in one request to the helper shell, unpacked and merged there.
            let script = format!("{}\n{}", scripts::UNPACK_STDIN, scripts::MERGE);
            return self.helper(&script, &[&self.root, &stage, &owner], Some(&head)).await.map(|_| ());
        }
        let rest = limited.into_inner();
        let archive: BoxedReader = Box::pin(std::io::Cursor::new(head).chain(rest));
        // The archive API needs its target to exist; a two-entry tar makes the staging folders without an exec.
        let folders = staging_folders_tar(&batch)?;
        self.client.upload_tar_bytes(&self.container, &self.root, folders).await?;
        let uploaded = self.client.upload_tar(&self.container, &stage, archive, self.copy_owner).await;
        match uploaded {
            Ok(()) => self.helper(scripts::MERGE, &[&self.root, &stage, &owner], None).await.map(|_| ()),
            Err(error) => {
                let _ = self.helper("rm -rf \"$1\"", &[&stage], None).await;
                Err(error)
            }
        }
    }

    async fn delete(&self, paths: Vec<String>) -> Result<()> {
        if paths.is_empty() {
            return Ok(());
        }
        let mut absolute = Vec::new();
        for path in &paths {
            absolute.push(self.absolute(path)?);
        }
        let arguments: Vec<&str> = absolute.iter().map(String::as_str).collect();
        self.helper(r#"rm -rf -- "$@""#, &arguments, None).await.map(|_| ())
    }

    async fn list(&self) -> Result<Vec<RemoteEntry>> {
        let output = self.helper(scripts::LIST, &[&self.root], None).await?;
        tokio::task::spawn_blocking(move || parse_listing(&output))
            .await
            .map_err(|error| Error::Internal(format!("Parsing the remote listing failed: {error}")))?
    }

    async fn stat(&self, paths: Vec<String>) -> Result<Vec<RemoteEntry>> {
        let checked = paths.iter().map(|path| checked_relative(path)).collect::<Result<Vec<String>>>()?;
        let mut arguments = vec![self.root.as_str()];
        arguments.extend(checked.iter().map(String::as_str));
        let output = self.helper(scripts::STAT, &arguments, None).await?;
        tokio::task::spawn_blocking(move || parse_listing(&output))
            .await
            .map_err(|error| Error::Internal(format!("Parsing the remote listing failed: {error}")))?
    }

    async fn download_tar(&self, paths: Vec<String>) -> Result<BoxedReader> {
        let mut sources = Vec::new();
        for path in &paths {
            let relative = checked_relative(path)?;
            let parent = relative.rsplit_once('/').map(|(parent, _)| parent.to_string());
            let stream = self.client.download_tar(&self.container, &format!("{}/{relative}", self.root));
            sources.push((relative, parent, stream));
        }
        let (reader, writer) = tokio::io::duplex(1 << 20);
        tokio::task::spawn_blocking(move || {
            if let Err(error) = repack(sources, writer) {
                tracing::warn!(%error, "could not pack the download from the container");
            }
        });
        Ok(Box::pin(reader))
    }
}

/// Joins the archives Docker returns per path into one tar whose names are relative to the remote root.
///
/// Docker names entries after the requested path's base name; each is renamed under the path's parent. A path that
/// no longer exists is left out, like a file deleted between listing and download.
fn repack(sources: Vec<(String, Option<String>, BoxedReader)>, writer: tokio::io::DuplexStream) -> Result<()> {
    let bridge = tokio_util::io::SyncIoBridge::new(writer);
    let mut builder = tar::Builder::new(bridge);
    for (relative, parent, stream) in sources {
        let mut archive = tar::Archive::new(tokio_util::io::SyncIoBridge::new(stream));
        let entries = match archive.entries() {
            Ok(entries) => entries,
            Err(error) => return Err(Error::io(format!("Could not read {relative} from the container"), error)),
        };
        for entry in entries {
            let mut entry = match entry {
                Ok(entry) => entry,
                Err(error) if is_not_found(&error) => break,
                Err(error) => return Err(Error::io(format!("Could not read {relative} from the container"), error)),
            };
            let name = entry.path().map_err(|error| Error::io("A downloaded name is not valid", error))?;
            let name = name.to_string_lossy().into_owned();
            let full = match &parent {
                Some(parent) => format!("{parent}/{name}"),
                None => name,
            };
            let mut header = entry.header().clone();
            let written = if header.entry_type().is_symlink() {
                let target = entry
                    .link_name()
                    .map_err(|error| Error::io("A downloaded link is not valid", error))?
                    .map(|target| target.into_owned())
                    .unwrap_or_default();
                builder.append_link(&mut header, &full, target)
            } else {
                builder.append_data(&mut header, &full, &mut entry)
            };
            written.map_err(|error| Error::io("Could not pass on the downloaded files", error))?;
        }
    }
    builder.finish().map_err(|error| Error::io("Could not finish the download archive", error))
}

fn is_not_found(error: &std::io::Error) -> bool {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<Error>())
        .is_some_and(|inner| matches!(inner, Error::Remote { status: Some(404), .. }))
}

/// A tar holding `.sandlink-staging/` and `.sandlink-staging/<batch>/`.
fn staging_folders_tar(batch: &str) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for path in [format!("{}/", scripts::STAGING_DIR), format!("{}/{batch}/", scripts::STAGING_DIR)] {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o1777);
        header.set_size(0);
        header.set_mtime(0);
        builder
            .append_data(&mut header, &path, std::io::empty())
            .map_err(|error| Error::io("Could not build the staging archive", error))?;
    }
    builder.into_inner().map_err(|error| Error::io("Could not build the staging archive", error))
}

/// Checks a path relative to the remote root: not empty, not absolute, no `..`, not the staging folder.
pub fn checked_relative(path: &str) -> Result<String> {
    let trimmed = path.trim_start_matches("./").trim_end_matches('/');
    let parts: Vec<&str> = trimmed.split('/').filter(|part| !part.is_empty() && *part != ".").collect();
    if trimmed.starts_with('/') || parts.is_empty() || parts.iter().any(|part| *part == "..") || path.contains('\0') {
        return Err(Error::PathOutsideWorkspace(format!(
            "The path \"{path}\" lies outside the session root; give a path inside it, relative to the root, without \"..\"."
        )));
    }
    if parts[0] == scripts::STAGING_DIR {
        return Err(Error::InvalidParams(format!("\"{path}\" is sandlink's own staging folder.")));
    }
    Ok(parts.join("/"))
}

/// Parses the output of `scripts::LIST`.
pub fn parse_listing(output: &[u8]) -> Result<Vec<RemoteEntry>> {
    let malformed = |what: &str| Error::Remote { status: None, message: format!("The remote listing is malformed: {what}.") };
    let newline = output.iter().position(|byte| *byte == b'\n').ok_or_else(|| malformed("no format line"))?;
    let (format, body) = (&output[..newline], &output[newline + 1..]);
    let mut entries = Vec::new();
    match format {
        b"gnu" => {
            let mut fields = body.split(|byte| *byte == 0);
            while let Some(record) = fields.next() {
                if record.is_empty() {
                    break;
                }
                let link = fields.next().ok_or_else(|| malformed("a record lacks its link field"))?;
                let text = String::from_utf8_lossy(record);
                let mut parts = text.splitn(5, ' ');
                let (Some(kind), Some(size), Some(time), Some(mode), Some(path)) =
                    (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    return Err(malformed("a record has too few fields"));
                };
                let kind = match kind {
                    "f" => EntryKind::File,
                    "d" => EntryKind::Dir,
                    "l" => EntryKind::Symlink,
                    _ => continue,
                };
                entries.push(RemoteEntry {
                    // `LIST` names entries relative to the root; `STAT` names them `./path`.
                    path: path.strip_prefix("./").unwrap_or(path).to_string(),
                    kind,
                    size: size.parse().map_err(|_| malformed("a size is not a number"))?,
                    mtime_ns: parse_seconds_to_ns(time).ok_or_else(|| malformed("a time is not a number"))?,
                    mode: u32::from_str_radix(mode, 8).map_err(|_| malformed("a mode is not octal"))?,
                    link_target: (kind == EntryKind::Symlink).then(|| String::from_utf8_lossy(link).into_owned()),
                });
            }
        }
        b"busybox" => {
            for line in String::from_utf8_lossy(body).lines() {
                if line.is_empty() {
                    continue;
                }
                let mut parts = line.splitn(4, ' ');
                let (Some(raw_mode), Some(size), Some(time), Some(rest)) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    return Err(malformed("a line has too few fields"));
                };
                let raw_mode = u32::from_str_radix(raw_mode, 16).map_err(|_| malformed("a mode is not hex"))?;
                let kind = match raw_mode & 0o170000 {
                    0o100000 => EntryKind::File,
                    0o040000 => EntryKind::Dir,
                    0o120000 => EntryKind::Symlink,
                    _ => continue,
                };
                let (name, link_target) = if kind == EntryKind::Symlink {
                    let inner = rest.strip_prefix('\'').and_then(|rest| rest.strip_suffix('\'')).unwrap_or(rest);
                    match inner.split_once("' -> '") {
                        Some((name, target)) => (name.to_string(), Some(target.to_string())),
                        None => (inner.to_string(), Some(String::new())),
                    }
                } else {
                    (rest.to_string(), None)
                };
                let seconds: i128 = time.parse().map_err(|_| malformed("a time is not a number"))?;
                entries.push(RemoteEntry {
                    path: name.trim_start_matches("./").to_string(),
                    kind,
                    size: size.parse().map_err(|_| malformed("a size is not a number"))?,
                    mtime_ns: seconds * 1_000_000_000,
                    mode: raw_mode & 0o7777,
                    link_target,
                });
            }
        }
        _ => return Err(malformed("unknown format line")),
    }
    entries.sort_by(|left, right| left.path.cmp(&right.path));
    Ok(entries)
}

/// `1700000000.123456789` (GNU find's `%T@`) in nanoseconds, rounded down.
fn parse_seconds_to_ns(text: &str) -> Option<i128> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let seconds: i128 = whole.parse().ok()?;
    let mut digits: String = fraction.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    let nanos: i128 = digits.parse().ok()?;
    Some(seconds * 1_000_000_000 + nanos)
}

fn short(container: &str) -> &str {
    &container[..container.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_should_parse_busybox_output() {
        let output = b"busybox\n41ed 4096 1795435397 ./a\n81a4 3 1795435397 ./a/f\na1ff 1 1795435397 './a/l' -> 'f'\n";
        let entries = parse_listing(output).unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].path, "a");
        assert_eq!(entries[0].kind, EntryKind::Dir);
        assert_eq!(entries[1].mode, 0o644);
        assert_eq!(entries[2].link_target.as_deref(), Some("f"));
        assert_eq!(entries[2].path, "a/l");
    }

    #[test]
    fn listing_should_parse_gnu_output() {
        let output = b"gnu\nd 4096 1700000000.5 755 a\0\0f 3 1700000000.123456789123 644 a/with space\0\0l 1 1 777 a/l\0f\0";
        let entries = parse_listing(output).unwrap();
        assert_eq!(entries[1].path, "a/l");
        assert_eq!(entries[1].link_target.as_deref(), Some("f"));
        assert_eq!(entries[2].path, "a/with space");
        assert_eq!(entries[2].mtime_ns, 1_700_000_000_123_456_789);
        assert_eq!(entries[0].mtime_ns, 1_700_000_000_500_000_000);
    }

    /// Runs `STAT` with this machine's shell and GNU find (containers with busybox are covered by the docker tests).
    #[test]
    fn stat_script_should_report_existing_paths_in_the_listing_format() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("a")).unwrap();
        std::fs::write(root.path().join("a/with space"), "abc").unwrap();
        std::os::unix::fs::symlink("with space", root.path().join("a/l")).unwrap();
        let output = std::process::Command::new("sh")
            .args(["-c", scripts::STAT, "stat", root.path().to_str().unwrap(), "a/with space", "missing", "a/l", "-x"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let mut entries = parse_listing(&output.stdout).unwrap();
        entries.sort_by(|left, right| left.path.cmp(&right.path));
        let paths: Vec<&str> = entries.iter().map(|entry| entry.path.as_str()).collect();
        assert_eq!(paths, ["a/l", "a/with space"]);
        assert_eq!(entries[0].link_target.as_deref(), Some("with space"));
        assert_eq!((entries[1].kind, entries[1].size), (EntryKind::File, 3));
    }

    #[test]
    fn relative_paths_should_not_escape() {
        assert_eq!(checked_relative("./a//b/").unwrap(), "a/b");
        for bad in ["", "/etc", "../x", "a/../../b", ".sandlink-staging/x"] {
            assert!(checked_relative(bad).is_err(), "{bad}");
        }
    }
}
