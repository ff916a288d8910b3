//! The shell transport over Docker's exec API, with uploads and downloads through its archive API.

use std::time::Duration;

use async_trait::async_trait;

use super::client::Client;
use crate::drivers::shell::{Channel, Command, Transport};
use crate::streams::BoxedReader;
use crate::error::{Error, Result};

/// Commands in one container, as root unless told otherwise.
pub struct DockerTransport {
    pub client: Client,
    pub container: String,
    /// Whether uploaded files take the container's user as owner (true for containers sandlink created).
    pub copy_owner: bool,
}

#[async_trait]
impl Transport for DockerTransport {
    async fn open(&self, command: Command) -> Result<Channel> {
        let env = command.env.iter().map(|(name, value)| format!("{name}={value}")).collect();
        let user = Some(command.user.unwrap_or_else(|| "0".into()));
        let attached =
            self.client.exec(&self.container, command.argv, env, command.working_dir, user, command.stdin).await?;
        let (client, exec_id) = (self.client.clone(), attached.id);
        let exit = Box::pin(async move {
            // The output ends a moment before Docker records the exit code; a few quick polls bridge the gap.
            for _ in 0..200 {
                let (running, code) = client.exec_state(&exec_id).await?;
                if !running {
                    if let Some(code) = code {
                        return Ok(code);
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err(Error::Timeout("Docker did not report the end of a helper command within a second.".into()))
        });
        Ok(Channel { input: attached.input, output: attached.output, exit })
    }

    fn describe(&self) -> String {
        format!("container {}", &self.container[..self.container.len().min(12)])
    }

    async fn upload_tar(&self, root: &str, directory: &str, archive: BoxedReader) -> Result<()> {
        // The archive API needs its target to exist; a tar of the folders on the way makes them without an exec.
        let folders = folders_tar(directory)?;
        self.client.upload_tar_bytes(&self.container, root, folders).await?;
        self.client.upload_tar(&self.container, &format!("{root}/{directory}"), archive, self.copy_owner).await
    }

    async fn download_tar(&self, root: &str, paths: Vec<String>) -> Result<BoxedReader> {
        let mut sources = Vec::new();
        for relative in paths {
            let parent = relative.rsplit_once('/').map(|(parent, _)| parent.to_string());
            let stream = self.client.download_tar(&self.container, &format!("{root}/{relative}"));
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

/// A tar holding each folder on the way to `directory` (`a/`, `a/b/`, …), so the archive API finds its target.
fn folders_tar(directory: &str) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut path = String::new();
    for part in directory.split('/').filter(|part| !part.is_empty()) {
        path.push_str(part);
        path.push('/');
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
