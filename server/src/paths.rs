//! Path rules shared by runs and sync: where sandlink keeps state, and joining user paths without escaping a root.

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// sandlink's state directory: `SANDLINK_STATE_DIR`, else the platform's state (or data) directory.
pub fn state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SANDLINK_STATE_DIR").filter(|value| !value.is_empty()) {
        return PathBuf::from(dir);
    }
    dirs::state_dir()
        .or_else(dirs::data_local_dir)
        .unwrap_or_else(std::env::temp_dir)
        .join("sandlink")
}

/// sandlink's user configuration directory (profiles, limits): `SANDLINK_CONFIG_DIR`, else the platform's
/// config directory (`~/.config/sandlink`, `~/Library/Application Support/sandlink`, `%APPDATA%\sandlink`).
pub fn config_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SANDLINK_CONFIG_DIR").filter(|value| !value.is_empty()) {
        return PathBuf::from(dir);
    }
    dirs::config_dir().unwrap_or_else(std::env::temp_dir).join("sandlink")
}

/// Joins `relative` (a user-given path, relative or absolute) under `root` lexically, refusing any escape.
///
/// Absolute paths are accepted only when they already lie under `root`. Symlinks are not resolved here; callers
/// that write files check those separately.
pub fn join_inside(root: &Path, relative: &str) -> Result<PathBuf> {
    let requested = Path::new(relative);
    let tail = if requested.is_absolute() {
        requested.strip_prefix(root).map_err(|_| outside(relative, root))?
    } else {
        requested
    };
    let mut joined = root.to_path_buf();
    let mut depth = 0usize;
    for component in tail.components() {
        match component {
            Component::Normal(part) => {
                joined.push(part);
                depth += 1;
            }
            Component::CurDir => {}
            Component::ParentDir if depth > 0 => {
                joined.pop();
                depth -= 1;
            }
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return Err(outside(relative, root)),
        }
    }
    Ok(joined)
}

fn outside(relative: &str, root: &Path) -> Error {
    Error::PathOutsideWorkspace(format!(
        "The path \"{relative}\" lies outside the session root {}; use a path inside it.",
        root.display()
    ))
}

/// Turns a `file://` URI or a plain path from a client into a local path.
pub fn path_from_uri_or_path(value: &str) -> Result<PathBuf> {
    if value.starts_with("file:") {
        let url = url::Url::parse(value)
            .map_err(|error| Error::InvalidParams(format!("The workspace folder \"{value}\" is not a valid URI: {error}.")))?;
        return url.to_file_path().map_err(|()| {
            Error::InvalidParams(format!("The workspace folder \"{value}\" is not a local file URI."))
        });
    }
    let path = PathBuf::from(value);
    if !path.is_absolute() {
        return Err(Error::InvalidParams(format!(
            "The workspace folder \"{value}\" must be an absolute path or a file:// URI."
        )));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_inside_should_accept_nested_and_normalised_paths() {
        let root = Path::new("/srv/root");
        assert_eq!(join_inside(root, "a/b/../c").unwrap(), Path::new("/srv/root/a/c"));
        assert_eq!(join_inside(root, "/srv/root/x").unwrap(), Path::new("/srv/root/x"));
        assert_eq!(join_inside(root, ".").unwrap(), Path::new("/srv/root"));
    }

    #[test]
    fn join_inside_should_refuse_escapes() {
        let root = Path::new("/srv/root");
        for escaping in ["..", "a/../../b", "/etc", "/srv/rootx/a"] {
            let error = join_inside(root, escaping).unwrap_err();
            assert_eq!(error.kind(), crate::protocol::ErrorKind::PathOutsideWorkspace, "{escaping}");
        }
    }
}
