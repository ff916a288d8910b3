//! Workspace trust: which workspaces the user has confirmed, so their `.sandlink.toml` profiles may send the
//! workspace elsewhere (an SSH host, a cloud account, a remote Docker host). Kept in the user's state directory
//! (`trust.json`), never in the workspace, so a repository cannot trust itself; revocable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::statefile;

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TrustFile {
    /// Canonical workspace path -> when it was trusted (RFC 3339).
    #[serde(default)]
    trusted: BTreeMap<String, String>,
}

fn trust_file(state_dir: &Path) -> PathBuf {
    state_dir.join("trust.json")
}

/// The path trust is keyed by: canonical, so a symlink or a `..` does not make a second identity.
pub fn canonical(workspace: &Path) -> PathBuf {
    std::fs::canonicalize(workspace).unwrap_or_else(|_| workspace.to_path_buf())
}

fn read(state_dir: &Path) -> Result<TrustFile> {
    let path = trust_file(state_dir);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|error| {
            Error::Internal(format!("{} is damaged ({error}); delete it and confirm your workspaces again.", path.display()))
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(TrustFile::default()),
        Err(error) => Err(Error::io(format!("Could not read {}", path.display()), error)),
    }
}

/// Whether the user has confirmed `workspace` (blocking).
pub fn is_trusted(state_dir: &Path, workspace: &Path) -> Result<bool> {
    let key = canonical(workspace).to_string_lossy().into_owned();
    Ok(read(state_dir)?.trusted.contains_key(&key))
}

/// Confirms or revokes trust in `workspace` (blocking).
pub fn set_trusted(state_dir: &Path, workspace: &Path, trusted: bool) -> Result<()> {
    let key = canonical(workspace).to_string_lossy().into_owned();
    let _lock = statefile::Lock::exclusive(&state_dir.join(".trust.lock"))?;
    let mut file = read(state_dir)?;
    if trusted {
        file.trusted.insert(key, crate::engine::now_rfc3339());
    } else {
        file.trusted.remove(&key);
    }
    let bytes = serde_json::to_vec_pretty(&file)
        .map_err(|error| Error::Internal(format!("Could not encode the trust list: {error}")))?;
    statefile::write_atomically(&trust_file(state_dir), &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_should_be_remembered_and_revocable() {
        let state = tempfile::tempdir().expect("temp dir");
        let workspace = tempfile::tempdir().expect("temp dir");
        assert!(!is_trusted(state.path(), workspace.path()).expect("read"));
        set_trusted(state.path(), workspace.path(), true).expect("trust");
        assert!(is_trusted(state.path(), workspace.path()).expect("read"));
        set_trusted(state.path(), workspace.path(), false).expect("revoke");
        assert!(!is_trusted(state.path(), workspace.path()).expect("read"));
    }
}
