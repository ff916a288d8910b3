//! End-to-end tests of the command line: `sandlink run`, `sessions`, `drivers`, `--version` and `--help`, on the real binary.

mod support;

use std::process::{Command, Stdio};

fn sandlink(state_dir: &std::path::Path) -> Command {
    let mut command = Command::new(support::binary());
    command.env("SANDLINK_STATE_DIR", state_dir);
    command
}

#[test]
fn run_should_stream_output_and_exit_with_the_commands_code() {
    let workspace = support::workspace_with(&[("data.txt", "from the workspace\n")]);
    let state = tempfile::tempdir().expect("state dir");
    let output = sandlink(state.path())
        .args(["run", "--workspace"])
        .arg(workspace.path())
        .args(["--", "cat data.txt; echo oops >&2; exit 7"])
        .output()
        .expect("sandlink runs");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "from the workspace\n");
    assert_eq!(String::from_utf8_lossy(&output.stderr), "oops\n");
    assert_eq!(output.status.code(), Some(7));
    let sessions = state.path().join("sessions");
    let leftovers = std::fs::read_dir(&sessions).map(|entries| entries.count()).unwrap_or(0);
    assert_eq!(leftovers, 0, "the sandbox is cleaned up after the run");
}

#[test]
fn run_with_several_words_should_pass_them_without_a_shell() {
    let workspace = support::workspace_with(&[]);
    let state = tempfile::tempdir().expect("state dir");
    let output = sandlink(state.path())
        .current_dir(workspace.path())
        .args(["run", "--", "printf", "[%s]", "a b", "c;d", "$X"])
        .output()
        .expect("sandlink runs");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "[a b][c;d][$X]");
    assert_eq!(output.status.code(), Some(0));
}

#[test]
fn run_should_deliver_every_byte_to_a_slow_pipe() {
    let workspace = support::workspace_with(&[]);
    let state = tempfile::tempdir().expect("state dir");
    let mut child = sandlink(state.path())
        .current_dir(workspace.path())
        .args(["run", "--", "head -c 30000000 /dev/zero"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("sandlink runs");
    let mut stdout = child.stdout.take().expect("piped stdout");
    // Read slowly at first so the live view fills up; the command line must wait rather than skip.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut received = Vec::new();
    std::io::Read::read_to_end(&mut stdout, &mut received).expect("read all");
    assert_eq!(received.len(), 30_000_000, "no output is skipped on the command line");
    assert_eq!(child.wait().expect("exit").code(), Some(0));
}

#[test]
fn run_should_exit_124_on_timeout_and_125_on_sandlink_errors() {
    let workspace = support::workspace_with(&[]);
    let state = tempfile::tempdir().expect("state dir");
    let timed_out = sandlink(state.path())
        .current_dir(workspace.path())
        .args(["run", "--timeout", "0.3", "--", "sleep 30"])
        .output()
        .expect("sandlink runs");
    assert_eq!(timed_out.status.code(), Some(124));
    let bad_driver = sandlink(state.path())
        .current_dir(workspace.path())
        .args(["run", "--driver", "nope", "--", "true"])
        .output()
        .expect("sandlink runs");
    assert_eq!(bad_driver.status.code(), Some(125));
    let message = String::from_utf8_lossy(&bad_driver.stderr);
    assert!(message.contains("no driver \"nope\"") && message.contains("local"), "{message}");
}

#[test]
fn drivers_version_and_help_should_read_well() {
    let state = tempfile::tempdir().expect("state dir");
    let drivers = sandlink(state.path()).arg("drivers").output().expect("drivers");
    assert!(String::from_utf8_lossy(&drivers.stdout).contains("local"));
    let json = sandlink(state.path()).args(["drivers", "--json"]).output().expect("drivers --json");
    let parsed: serde_json::Value = serde_json::from_slice(&json.stdout).expect("valid JSON");
    assert!(parsed.as_array().is_some_and(|drivers| drivers.iter().any(|driver| driver["id"] == "local")));
    let version = sandlink(state.path()).arg("--version").output().expect("--version");
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("sandlink "));
    let help = sandlink(state.path()).arg("--help").output().expect("--help");
    let help = String::from_utf8_lossy(&help.stdout);
    for expected in ["run", "lsp", "drivers", "sandlink run -- npm test"] {
        assert!(help.contains(expected), "--help mentions {expected}: {help}");
    }
}

#[test]
fn a_sandlink_installed_under_tmp_should_still_start_its_sandbox_agent() {
    // bubblewrap gives runs a private /tmp; the agent binary must stay visible when sandlink itself lives there.
    let install = tempfile::Builder::new().prefix("sandlink-install-").tempdir_in("/tmp").expect("a dir under /tmp");
    let copied = install.path().join("sandlink");
    std::fs::copy(support::binary(), &copied).expect("copy the binary");
    let workspace = support::workspace_with(&[]);
    let state = tempfile::tempdir().expect("state dir");
    // Another test's fork may briefly hold the copy open for writing (ETXTBSY) until that child execs: try again.
    let mut attempts = 0;
    let output = loop {
        let outcome = Command::new(&copied)
            .env("SANDLINK_STATE_DIR", state.path())
            .current_dir(workspace.path())
            .args(["run", "--", "echo fine"])
            .output();
        match outcome {
            Err(error) if error.kind() == std::io::ErrorKind::ExecutableFileBusy && attempts < 50 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            outcome => break outcome.expect("the copied binary runs"),
        }
    };
    assert_eq!(String::from_utf8_lossy(&output.stdout), "fine\n");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("agent did not start") && !stderr.contains("execvp"), "{stderr}");
}

#[test]
fn run_should_exit_128_plus_the_signal_that_killed_the_command() {
    let workspace = support::workspace_with(&[]);
    let state = tempfile::tempdir().expect("state dir");
    // The shell's convention, so scripts can tell "killed by SIGTERM" (143) from "exited with 1".
    for (signal, expected) in [("TERM", 143), ("KILL", 137), ("HUP", 129), ("USR1", 138)] {
        let output = sandlink(state.path())
            .current_dir(workspace.path())
            .args(["run", "--", "sh", "-c", &format!("kill -{signal} $$")])
            .output()
            .expect("sandlink runs");
        assert_eq!(
            output.status.code(),
            Some(expected),
            "a command killed by SIG{signal} exits {expected}; stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn sessions_should_list_a_kept_sandbox_and_rm_should_remove_it() {
    let workspace = support::workspace_with(&[("data.txt", "kept\n")]);
    let state = tempfile::tempdir().expect("state dir");
    let kept = sandlink(state.path())
        .args(["run", "--keep", "--workspace"])
        .arg(workspace.path())
        .args(["--", "cat data.txt"])
        .output()
        .expect("sandlink runs");
    assert_eq!(kept.status.code(), Some(0), "{}", String::from_utf8_lossy(&kept.stderr));

    let listing = sandlink(state.path()).args(["sessions", "--json"]).output().expect("sandlink sessions");
    assert_eq!(listing.status.code(), Some(0), "{}", String::from_utf8_lossy(&listing.stderr));
    let listed: serde_json::Value = serde_json::from_slice(&listing.stdout).expect("JSON listing");
    let sessions = listed["sessions"].as_array().expect("sessions array");
    assert_eq!(sessions.len(), 1, "{listed}");
    assert_eq!(sessions[0]["state"], "disconnected", "{listed}");
    assert_eq!(sessions[0]["driver"], "local", "{listed}");
    assert_eq!(sessions[0]["held"], "kept", "a --keep run is kept, not orphaned: {listed}");
    let id = sessions[0]["sessionId"].as_str().expect("id").to_string();
    let root = std::path::PathBuf::from(sessions[0]["remoteRoot"].as_str().expect("root"));
    assert_eq!(std::fs::read_to_string(root.join("data.txt")).expect("kept file"), "kept\n");

    let table = sandlink(state.path()).arg("sessions").output().expect("sandlink sessions");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains(&id) && table.contains("sandlink sessions rm"), "{table}");

    let unknown = sandlink(state.path()).args(["sessions", "rm", "nosuchsession"]).output().expect("rm unknown");
    assert_eq!(unknown.status.code(), Some(125), "an unknown id is an error");
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("nosuchsession"));

    let removed = sandlink(state.path()).args(["sessions", "rm", "--all"]).output().expect("sessions rm");
    assert_eq!(removed.status.code(), Some(0), "{}", String::from_utf8_lossy(&removed.stderr));
    assert!(String::from_utf8_lossy(&removed.stdout).contains(&format!("removed {id}")));
    assert!(!root.exists(), "the sandbox's files are gone");
    let after = sandlink(state.path()).args(["sessions", "--json"]).output().expect("sandlink sessions");
    let after: serde_json::Value = serde_json::from_slice(&after.stdout).expect("JSON listing");
    assert_eq!(after["sessions"].as_array().map(Vec::len), Some(0), "{after}");
}

#[test]
fn removing_a_kept_sandbox_should_leave_no_process_of_it() {
    // `sessions rm` re-attaches a kept sandbox and stops it at once, in the middle of bubblewrap's set-up: a process
    // bubblewrap forked before it set its parent-death signal outlived the removal (and held the command's output
    // open) until the whole tree was put in the session's cgroup before the stop. Several rounds, as it is a race.
    let workspace = support::workspace_with(&[("data.txt", "kept\n")]);
    let state = tempfile::tempdir().expect("state dir");
    let state_path = state.path().to_string_lossy().into_owned();
    for round in 0..6 {
        let kept = sandlink(state.path())
            .args(["run", "--keep", "--workspace"])
            .arg(workspace.path())
            .args(["--", "cat data.txt"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("sandlink runs");
        assert_eq!(kept.code(), Some(0), "round {round}: the kept run failed");
        let removed = sandlink(state.path())
            .args(["sessions", "rm", "--all"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("sessions rm");
        assert_eq!(removed.code(), Some(0), "round {round}: sessions rm failed");
        let left = support::processes_matching(&state_path);
        assert!(left.is_empty(), "round {round}: processes of the removed sandbox are left: {left:?}");
    }
}

#[test]
fn a_listing_read_by_a_reader_that_stops_early_should_end_without_a_panic() {
    use std::os::unix::process::ExitStatusExt;
    let state = tempfile::tempdir().expect("state dir");
    let mut child = sandlink(state.path())
        .args(["drivers", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("drivers --json");
    // As `| head -0` does: the reader is gone before the listing is written, so the write meets a closed pipe.
    drop(child.stdout.take());
    let output = child.wait_with_output().expect("it ends");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "no panic on a closed pipe: {stderr}");
    assert_eq!(output.status.signal(), Some(libc::SIGPIPE), "it ends as `ls` does: {:?} {stderr}", output.status);
}

/// A descriptor that whoever started sandlink left open without close-on-exec (a shell's `exec 200>file`, an
/// editor's stray pipe) must not reach the sandbox: a run could write to a host file through it, or see it in
/// `/proc` under any process of the sandbox.
#[test]
fn a_descriptor_sandlink_inherits_should_not_reach_a_run() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let workspace = support::workspace_with(&[("data.txt", "x\n")]);
    let state = tempfile::tempdir().expect("state dir");
    let outside = tempfile::tempdir().expect("a host directory outside the sandbox");
    let target = outside.path().join("inherited-target");
    let file = std::fs::File::create(&target).expect("host file");
    let fd = file.as_raw_fd();
    let mut command = sandlink(state.path());
    command
        .args(["run", "--workspace"])
        .arg(workspace.path())
        .args(["--", "(echo escaped >&200) 2>/dev/null; ls -l /proc/[0-9]*/fd/ 2>/dev/null; true"]);
    // SAFETY: dup2(2) in the forked child onto a fixed number, from a descriptor open in the parent; no allocation.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(fd, 200) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let output = command.output().expect("sandlink runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout} {}", String::from_utf8_lossy(&output.stderr));
    assert!(!stdout.contains("inherited-target"), "the inherited descriptor is visible in the sandbox: {stdout}");
    assert_eq!(std::fs::read_to_string(&target).expect("host file"), "", "the run wrote to a host file through it");
}

#[test]
fn a_change_to_the_workspace_during_a_run_should_reach_the_sandbox() {
    // A one-shot run starts its file watcher only after a quarter of a second (a short run needs none, and setting
    // one up costs its exit 10 ms); a longer run, such as a dev server, still gets what is edited meanwhile.
    let workspace = support::workspace_with(&[("data.txt", "before\n")]);
    let state = tempfile::tempdir().expect("state dir");
    let mut child = sandlink(state.path())
        .current_dir(workspace.path())
        .args(["run", "--", "echo started; for i in $(seq 150); do grep -q after data.txt && { echo seen; exit 0; }; sleep 0.1; done; exit 3"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("sandlink runs");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut first = [0u8; 8];
    std::io::Read::read_exact(&mut stdout, &mut first).expect("the run started");
    // At once, inside the quarter of a second without a watcher: the watcher's first rescan must catch it.
    std::fs::write(workspace.path().join("data.txt"), "after\n").expect("edit on the host");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).expect("read the rest");
    let status = child.wait().expect("exit");
    assert_eq!(rest, "seen\n", "the run saw the edit made on the host while it ran");
    assert_eq!(status.code(), Some(0));
}
