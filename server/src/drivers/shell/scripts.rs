//! The POSIX shell snippets sandlink runs inside sandboxes; busybox `sh` is enough for every one of them.
//!
//! Each is passed as `sh -c SCRIPT NAME ARGS…`, so values arrive as positional parameters and are never spliced
//! into the script text.

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

/// `$1` = root, `$2` = owner (may be empty): creates the run directory and the session root.
pub const PREPARE: &str = r#"mkdir -p /tmp/.sandlink "$1" && chmod 1777 /tmp/.sandlink && { [ -z "$2" ] || chown "$2" "$1"; }"#;

/// `$0` = run token, `$@` = the command. Runs record their process group in /tmp/.sandlink so a second command can
/// signal the whole tree. The transport starts every command as a session leader (Docker does for each exec), so
/// the shell's pid is also the process group of everything the run starts; it is recorded before the shell replaces
/// itself with the command.
pub const RUN: &str = r#"echo $$ > "/tmp/.sandlink/$0.pid" && exec "$@""#;

/// `$1` = run token, `$2` = signal, `$3` = `final` when the run is over (the record is then removed).
/// Runs in the helper shell with builtins only (`read`, `kill`), so a sweep after every run starts no process.
pub const SIGNAL: &str = r#"f="/tmp/.sandlink/$1.pid"
read -r p < "$f" 2>/dev/null || exit 0
[ -n "$p" ] || exit 0
kill "-$2" "-$p" 2>/dev/null || kill "-$2" "$p" 2>/dev/null
[ "$3" != final ] || rm -f "$f"
exit 0"#;

/// Sets `SANDLINK_FIND_PRINTF` in the helper shell once, when it starts, so `STAT` and `LIST` (which run in its
/// subshells and inherit it) need not start a `find` each time to learn whether it is GNU's; run elsewhere, they
/// probe for themselves.
pub const FIND_PRINTF_PROBE: &str =
    "if find / -maxdepth 0 -printf '' >/dev/null 2>&1 </dev/null; then SANDLINK_FIND_PRINTF=yes; else SANDLINK_FIND_PRINTF=no; fi\n";

/// `$1` = root, then relative paths: those that exist, in `LIST`'s format (GNU entries named `./path`), in one
/// `find` or `stat` for all of them. Missing paths are left out; symlinks are reported, not followed.
pub const STAT: &str = r#"cd "$1" || exit 3
shift
n=$#
while [ "$n" -gt 0 ]; do set -- "$@" "./$1"; shift; n=$((n - 1)); done
case ${SANDLINK_FIND_PRINTF-} in yes|no) ;; *) find . -maxdepth 0 -printf '' >/dev/null 2>&1 && SANDLINK_FIND_PRINTF=yes || SANDLINK_FIND_PRINTF=no ;; esac
if [ "$SANDLINK_FIND_PRINTF" = yes ]; then
  printf 'gnu\n'
  find "$@" -maxdepth 0 -printf '%y %s %T@ %m %i %C@ %p\0%l\0' 2>/dev/null
else
  printf 'busybox\n'
  stat -c '%f %s %Y %y %i %Z %z %n//%N' "$@" 2>/dev/null
fi
exit 0"#;

/// `$1` = root, `$2` = staging directory, `$3` = owner, `$4` = length: reads exactly `$4` bytes of tar from stdin
/// (always all of them, so the agent's stream stays in step) and unpacks them into the staging directory.
pub const UNPACK_STDIN: &str = r#"dd bs=65536 count="$4" iflag=count_bytes,fullblock 2>/dev/null | { mkdir -p "$2" && tar -xf - -C "$2"; s=$?; cat >/dev/null; exit $s; } || { rm -rf "$2"; exit 1; }"#;

/// `$1` = root, `$2` = staging directory, `$3` = owner, then the uploaded files' relative paths, then (last) the
/// archive's length: `UNPACK_STDIN` and `MERGE`, then `STAT` of those files, in one request.
pub fn unpack_merge_stat() -> &'static str {
    static SCRIPT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        UNPACK_MERGE_STAT_TEMPLATE.replace("__UNPACK__", UNPACK_STDIN).replace("__MERGE__", MERGE).replace("__STAT__", STAT)
    });
    &SCRIPT
}

const UNPACK_MERGE_STAT_TEMPLATE: &str = r#"root=$1 stage=$2 owner=$3
shift 3
eval "length=\${$#}"
n=$(($# - 1))
while [ "$n" -gt 0 ]; do set -- "$@" "$1"; shift; n=$((n - 1)); done
shift
( set -- "$root" "$stage" "$owner" "$length"
__UNPACK__ ) || exit 1
( set -- "$root" "$stage" "$owner"
__MERGE__ ) || exit 1
set -- "$root" "$@"
__STAT__"#;

/// `$1` = root: lists the tree. GNU find gives NUL-separated records with nanosecond modification and status-change
/// times and the inode; busybox falls back to `stat`, which gives the same in whole seconds, and whose `%n//%N` lets
/// the parser find where each name ends although names may hold newlines (see `listing::parse_listing`).
pub const LIST: &str = r#"cd "$1" || exit 3
case ${SANDLINK_FIND_PRINTF-} in yes|no) ;; *) find . -maxdepth 0 -printf '' >/dev/null 2>&1 && SANDLINK_FIND_PRINTF=yes || SANDLINK_FIND_PRINTF=no ;; esac
if [ "$SANDLINK_FIND_PRINTF" = yes ]; then
  printf 'gnu\n'
  exec find . -mindepth 1 -path ./.sandlink-staging -prune -o -printf '%y %s %T@ %m %i %C@ %P\0%l\0'
fi
printf 'busybox\n'
exec find . -mindepth 1 -path ./.sandlink-staging -prune -o -exec stat -c '%f %s %Y %y %i %Z %z %n//%N' {} +"#;
