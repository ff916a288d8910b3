//! State and config files shared by several sandlink processes: atomic writes and cross-process locks.
//!
//! Two editor windows on one workspace run two servers on the same files; each read-modify-write holds an
//! exclusive lock on a sibling `.lock` file, and each write goes to a temporary file that is then renamed, so a
//! reader or a crash sees the old file or the new one, never half of one. These are blocking calls: async code
//! runs them through `spawn_blocking`.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// Writes `bytes` to `path` atomically (temporary file in the same directory, fsync, rename).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    replace(path, bytes, true)
}

/// Writes `bytes` to `path` atomically for every process but without waiting for the disk: a crash of the whole
/// machine may leave no file, or an empty one. Only for a new file whose loss loses nothing.
pub fn write_atomically_unflushed(path: &Path, bytes: &[u8]) -> Result<()> {
    replace(path, bytes, false)
}

/// Writes `bytes` to a temporary file beside `path` (flushed to the disk when `flush`) and renames it over `path`.
fn replace(path: &Path, bytes: &[u8], flush: bool) -> Result<()> {
    let dir = path.parent().ok_or_else(|| Error::Internal(format!("{} has no directory.", path.display())))?;
    std::fs::create_dir_all(dir).context(|| format!("Could not create {}", dir.display()))?;
    let file_name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    let temporary = dir.join(format!(".{file_name}.{}.{}.tmp", std::process::id(), crate::ids::short_id()));
    let outcome = (|| -> std::io::Result<()> {
        let mut file = File::create(&temporary)?;
        file.write_all(bytes)?;
        if flush {
            file.sync_all()?;
        }
        std::fs::rename(&temporary, path)
    })();
    if outcome.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    outcome.context(|| format!("Could not write {}", path.display()))
}

/// An exclusive lock on a file, held until dropped; the OS releases it if the process dies.
#[derive(Debug)]
pub struct Lock {
    _file: File,
    path: PathBuf,
}

impl Lock {
    /// Waits for the exclusive lock on `path` (created when missing).
    pub fn exclusive(path: &Path) -> Result<Lock> {
        let file = open_lock_file(path)?;
        file.lock().context(|| format!("Could not lock {}", path.display()))?;
        Ok(Lock { _file: file, path: path.to_path_buf() })
    }

    /// Takes the exclusive lock on `path` if no other process (or handle) holds it.
    pub fn try_exclusive(path: &Path) -> Result<Option<Lock>> {
        let file = open_lock_file(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Lock { _file: file, path: path.to_path_buf() })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(error)) => {
                Err(Error::io(format!("Could not lock {}", path.display()), error))
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn open_lock_file(path: &Path) -> Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).context(|| format!("Could not create {}", dir.display()))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .context(|| format!("Could not open the lock file {}", path.display()))
}

/// Runs blocking file work off the async runtime.
pub async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| Error::Internal(format!("A file task failed: {error}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_should_refuse_a_second_taker_until_dropped() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("x.lock");
        let first = Lock::try_exclusive(&path).expect("lock").expect("free");
        assert!(Lock::try_exclusive(&path).expect("lock").is_none());
        drop(first);
        assert!(Lock::try_exclusive(&path).expect("lock").is_some());
    }

    #[test]
    fn write_atomically_should_replace_the_whole_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("a/b.json");
        write_atomically(&path, b"one").expect("write");
        write_atomically(&path, b"two").expect("write");
        assert_eq!(std::fs::read(&path).expect("read"), b"two");
        assert_eq!(std::fs::read_dir(dir.path().join("a")).expect("list").count(), 1);
    }
}
