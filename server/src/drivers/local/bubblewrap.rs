//! bubblewrap's command line for a session: the host read-only, private writable places, the user's home and the
//! host's sockets hidden, and namespaces that leave the sandbox no capabilities even when sandlink is root.

use std::ffi::OsString;
use std::path::PathBuf;

/// Namespaces and process flags every session gets, also what the availability probe tries.
///
/// `--unshare-user` makes root inside a user namespace, so `--cap-drop ALL` leaves nothing to regain; `--new-session`
/// takes away the controlling terminal (TIOCSTI); `--die-with-parent` ends the sandbox with the server.
/// `--as-pid-1` makes the program (the session's agent) the namespace's init instead of a bubblewrap reaper: that
/// reaper would keep the server's stdout and stderr open where every run could reach them through `/proc/1/fd`, and
/// its memory writable through `/proc/1/mem`. The agent reaps orphans itself, refuses to be traced, and when it ends
/// the kernel ends everything in the namespace.
pub const PROBE_ARGUMENTS: &[&str] = &[
    "--unshare-user",
    "--unshare-pid",
    "--as-pid-1",
    "--unshare-ipc",
    "--unshare-uts",
    "--unshare-cgroup-try",
    "--die-with-parent",
    "--new-session",
    "--cap-drop",
    "ALL",
    "--ro-bind",
    "/",
    "/",
    "--dev",
    "/dev",
    "--proc",
    "/proc",
    "--",
];

/// What a session's sandbox shows.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Directories replaced by an empty tmpfs (the user's home, `/run`, sandlink's state, the real workspace).
    pub hidden_dirs: Vec<PathBuf>,
    /// Files replaced by an empty one (`/etc/shadow`).
    pub hidden_files: Vec<PathBuf>,
    /// Bound read-only at their own path, after hiding (toolchains the profile lists, sandlink itself).
    pub read_only: Vec<PathBuf>,
    /// Bound writable at their own path (the session root, the private home).
    pub writable: Vec<PathBuf>,
    /// A network namespace of its own: nothing but its own loopback.
    pub private_network: bool,
}

/// bubblewrap's arguments up to and including `--`, for `view` with `chdir` as the working directory.
pub fn arguments(view: &View, chdir: &std::path::Path) -> Vec<OsString> {
    let mut arguments: Vec<OsString> = PROBE_ARGUMENTS[..PROBE_ARGUMENTS.len() - 1].iter().map(OsString::from).collect();
    if view.private_network {
        arguments.push("--unshare-net".into());
    }
    arguments.extend(["--tmpfs", "/tmp"].map(OsString::from));
    let mut push = |flag: &str, paths: &[&PathBuf]| {
        arguments.push(flag.into());
        for path in paths {
            arguments.push(path.as_os_str().to_owned());
        }
    };
    for dir in &view.hidden_dirs {
        push("--tmpfs", &[dir]);
    }
    let empty = PathBuf::from("/dev/null");
    for file in &view.hidden_files {
        push("--ro-bind", &[&empty, file]);
    }
    for path in &view.read_only {
        push("--ro-bind", &[path, path]);
    }
    for path in &view.writable {
        push("--bind", &[path, path]);
    }
    arguments.push("--chdir".into());
    arguments.push(chdir.as_os_str().to_owned());
    arguments.push("--".into());
    arguments
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writable_binds_should_come_after_what_hides_their_parents() {
        let view = View {
            hidden_dirs: vec!["/root".into()],
            writable: vec!["/root/.local/state/sandlink/sessions/s/root".into()],
            read_only: vec!["/root/.cargo/bin".into()],
            ..View::default()
        };
        let arguments: Vec<String> =
            arguments(&view, std::path::Path::new("/")).iter().map(|a| a.to_string_lossy().into_owned()).collect();
        let position = |needle: &str| arguments.iter().position(|argument| argument == needle).expect(needle);
        assert!(position("/root") < position("/root/.cargo/bin"));
        assert!(position("/root") < position("/root/.local/state/sandlink/sessions/s/root"));
        assert!(arguments.contains(&"--cap-drop".to_string()) && arguments.contains(&"--new-session".to_string()));
        assert_eq!(arguments.last().map(String::as_str), Some("--"));
    }
}
