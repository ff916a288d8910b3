//! POSIX shell snippets shared by the drivers that reach a sandbox through a shell (docker, e2b).

/// Uploads are unpacked here (below the root, so the final rename stays on one filesystem) and then merged.
pub const STAGING_DIR: &str = ".sandlink-staging";

/// `$1` = root, `$2` = staging directory, `$3` = owner (may be empty): moves every staged entry into place with rename(2), so each file is
/// replaced atomically; whole new directories move in one rename. Symlinks in the root are replaced, never followed.
pub const MERGE: &str = r#"root=$1
stage=$2
cd "$stage" || exit 1
[ -z "$3" ] || chown -R "$3" . || exit 1
merge() {
  local entry target
  for entry in "$1"/* "$1"/.[!.]* "$1"/..?*; do
    [ -e "$entry" ] || [ -L "$entry" ] || continue
    target="$root/${entry#./}"
    if [ -d "$entry" ] && [ ! -L "$entry" ]; then
      if [ -d "$target" ] && [ ! -L "$target" ]; then
        merge "$entry" || return 1
        continue
      fi
      rm -f "$target" 2>/dev/null
    elif [ -d "$target" ] && [ ! -L "$target" ]; then
      rm -rf "$target"
    fi
    mv -f "$entry" "$target" || return 1
  done
}
merge .
status=$?
cd /
rm -rf "$stage"
exit $status"#;
