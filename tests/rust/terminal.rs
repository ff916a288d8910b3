//! Terminals into the sandbox (`sandlink/run` with `pty`, `sandlink/resize`): a new pseudo-terminal inside the
//! sandbox, of the asked size and resizable, that echoes and runs what is typed, passes on the exit code, ends on
//! cancel, and confines what runs in it exactly like any other run. Run on local, on docker (which needs
//! `tests/setup/docker.sh`; outside CI it skips without Docker, under CI a missing Docker fails it), on ssh (the
//! loopback sshd of `tests/setup/ssh.sh`, likewise) and on the E2B fake.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use support::fake::FakeProcess;
use support::{Server, StartOptions};

const DOCKER_IMAGE: &str = "sandlink-test:busybox";
const WAIT: Duration = Duration::from_secs(20);

/// A terminal run and everything it printed so far.
struct Terminal<'a> {
    server: &'a Server,
    run_id: String,
    screen: String,
}

impl<'a> Terminal<'a> {
    fn open(server: &'a Server, session_id: &str, command: &str, cols: u16, rows: u16) -> Terminal<'a> {
        let run_id = server.start_run(json!({
            "sessionId": session_id, "command": command, "pty": { "cols": cols, "rows": rows }
        }));
        Terminal { server, run_id, screen: String::new() }
    }

    fn type_text(&self, text: &str) {
        self.server.request("sandlink/input", json!({ "runId": self.run_id, "text": text })).expect("input is taken");
    }

    /// Reads output until `needle` appears after what was read before; answers what came up to and with it.
    fn read_until(&mut self, needle: &str) -> String {
        let start = self.screen.len();
        let deadline = Instant::now() + WAIT;
        while !self.screen[start..].contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no {needle:?} on the terminal; it shows {:?}", &self.screen[start..]);
            let run_id = self.run_id.clone();
            let output = self.server.wait_notification("sandlink/output", left, |params| params["runId"] == run_id);
            assert_eq!(output["stream"], "stdout", "a terminal has one stream: {output}");
            self.screen.push_str(output["text"].as_str().expect("text"));
        }
        self.screen[start..].to_string()
    }

    fn wait_exit(&self) -> Value {
        let run_id = self.run_id.clone();
        self.server.wait_notification("sandlink/exit", WAIT, |params| params["runId"] == run_id)
    }
}

fn docker_ready() -> bool {
    Command::new("docker")
        .args(["image", "inspect", DOCKER_IMAGE])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn start_server() -> Server {
    let env = std::env::var("DOCKER_HOST").map(|host| vec![("DOCKER_HOST".to_string(), host)]).unwrap_or_default();
    Server::start_with(StartOptions { env, ..StartOptions::default() })
}

/// Connects `driver` (or answers `None` when docker is absent outside CI).
fn session(server: &Server, driver: &str) -> Option<(tempfile::TempDir, String)> {
    let settings = match driver {
        "docker" => {
            if support::skip_unless(docker_ready(), "Docker with the sandlink-test:busybox image (tests/setup/docker.sh)") {
                return None;
            }
            json!({ "image": DOCKER_IMAGE })
        }
        "ssh" => {
            let variable = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
            let setup = variable("SANDLINK_SSH_CONFIG")
                .filter(|config| std::path::Path::new(config).exists())
                .zip(variable("SANDLINK_SSH_HOST"));
            if support::skip_unless(setup.is_some(), "sshd on loopback (tests/setup/ssh.sh, tests/.run/ssh.env)") {
                return None;
            }
            let (config, host) = setup?;
            json!({ "host": host, "configFile": config })
        }
        _ => Value::Null,
    };
    let workspace = support::workspace_with(&[("marker.txt", "in-the-workspace\n")]);
    let session = server.connect(driver, settings, workspace.path());
    let id = session["sessionId"].as_str().expect("sessionId").to_string();
    Some((workspace, id))
}

/// The login shell in a terminal: a pts of the asked size, resized on request, echoing and running what is typed
/// in the session root, and ending with the shell's exit code.
fn login_shell_should_be_a_resizable_terminal(driver: &str) {
    let server = start_server();
    let Some((_workspace, session_id)) = session(&server, driver) else { return };
    check_login_shell(&server, &session_id);
}

fn check_login_shell(server: &Server, session_id: &str) {
    let mut terminal = Terminal::open(server, session_id, "", 100, 30);
    terminal.type_text("tty; stty size; cat marker.txt\n");
    let shown = terminal.read_until("in-the-workspace");
    assert!(shown.contains("/dev/pts/"), "tty names a pseudo-terminal: {shown:?}");
    assert!(shown.contains("30 100"), "stty reports the asked size: {shown:?}");

    server.request("sandlink/resize", json!({ "runId": terminal.run_id, "cols": 120, "rows": 40 })).expect("resized");
    // Each line ends by printing a sum, which only running it shows (the echo of the typed line shows the sum's terms).
    terminal.type_text("stty size; echo size-checked-$((1 + 1))\n");
    let shown = terminal.read_until("size-checked-2");
    assert!(shown.contains("40 120"), "stty reports the new size: {shown:?}");

    // The typed line is echoed by the terminal, and only running it prints the sum.
    terminal.type_text("echo hi-$((40 + 2))\n");
    let shown = terminal.read_until("hi-42");
    assert!(shown.contains("echo hi-$((40 + 2))"), "the terminal echoes what is typed: {shown:?}");

    terminal.type_text("exit 7\n");
    let exit = terminal.wait_exit();
    assert_eq!(exit["exitCode"], 7, "{exit}");
    assert_eq!(exit["cancelled"], false, "{exit}");
}

fn cancel_should_end_a_terminal(driver: &str) {
    let server = start_server();
    let Some((_workspace, session_id)) = session(&server, driver) else { return };
    let mut terminal = Terminal::open(&server, &session_id, "echo started; sleep 600", 80, 24);
    terminal.read_until("started");
    server.request("sandlink/cancel", json!({ "runId": terminal.run_id })).expect("cancelled");
    let exit = terminal.wait_exit();
    assert_eq!(exit["cancelled"], true, "{exit}");
    let error = server.request_error("sandlink/resize", json!({ "runId": terminal.run_id, "cols": 80, "rows": 24 }));
    assert_eq!(error.kind.as_deref(), Some("unknownRun"), "an ended terminal cannot be resized: {error:?}");
}

#[test]
fn local_login_shell_should_be_a_resizable_terminal() {
    login_shell_should_be_a_resizable_terminal("local");
}

#[test]
fn local_cancel_should_end_a_terminal() {
    cancel_should_end_a_terminal("local");
}

#[test]
fn docker_login_shell_should_be_a_resizable_terminal() {
    login_shell_should_be_a_resizable_terminal("docker");
}

#[test]
fn docker_cancel_should_end_a_terminal() {
    cancel_should_end_a_terminal("docker");
}

#[test]
fn ssh_login_shell_should_be_a_resizable_terminal() {
    login_shell_should_be_a_resizable_terminal("ssh");
}

#[test]
fn ssh_cancel_should_end_a_terminal() {
    cancel_should_end_a_terminal("ssh");
}

/// On E2B, against the in-repo fake (tests/fakes/e2b_server.py), which runs envd's `pty` processes for real.
#[test]
fn e2b_login_shell_should_be_a_resizable_terminal() {
    const API_KEY: &str = "e2b_sandlink_test_key_5f0c9a7e31";
    let Some(fake) = FakeProcess::start("E2B", "SANDLINK_E2B_FAKE_SERVER", "e2b_server.py", &["--api-key", API_KEY]) else {
        return;
    };
    let server = Server::start_with(StartOptions {
        env: vec![("E2B_API_KEY".into(), API_KEY.into())],
        ..StartOptions::default()
    });
    let settings = json!({
        "apiUrl": format!("http://127.0.0.1:{}", fake.port),
        "domain": format!("localhost:{}", fake.port),
        "timeoutSeconds": 300,
        "streamKeepaliveSeconds": 1,
    });
    let workspace = support::workspace_with(&[("marker.txt", "in-the-workspace\n")]);
    let session = server.connect("e2b", settings, workspace.path());
    check_login_shell(&server, session["sessionId"].as_str().expect("sessionId"));
}

/// A terminal is a run like any other: the same user, no way to the host's files outside the workspace, and no
/// typing into a terminal other than its own.
#[test]
fn local_terminal_should_be_confined_like_any_run() {
    let server = start_server();
    let Some((_workspace, session_id)) = session(&server, "local") else { return };
    let host_dir = tempfile::tempdir().expect("a host directory");
    let secret = host_dir.path().join("host-only.txt");
    std::fs::write(&secret, "host-secret-content\n").expect("written");
    assert!(std::fs::read_to_string(&secret).expect("the host reads it").contains("host-secret-content"));

    let plain = server.run_to_exit(json!({ "sessionId": session_id, "command": "id -u; id -G" }));
    let mut terminal = Terminal::open(&server, &session_id, "", 80, 24);
    terminal.type_text("echo ids-$(id -u)-$(id -G | tr ' ' _)-end-$((1 + 1))\n");
    let shown = terminal.read_until("-end-2");
    let plain_ids: Vec<&str> = plain.stdout.lines().collect();
    let expected = format!("ids-{}-{}-end-2", plain_ids[0], plain_ids[1].replace(' ', "_"));
    assert!(shown.contains(&expected), "the terminal runs as a plain run does ({expected}): {shown:?}");

    terminal.type_text(&format!("cat {} 2>/dev/null; echo read-status-$?-done-$((2 + 3))\n", secret.display()));
    let shown = terminal.read_until("-done-5");
    assert!(!shown.contains("host-secret-content"), "a host file outside the workspace stays hidden: {shown:?}");
    assert!(!shown.contains("read-status-0"), "{shown:?}");

    // TIOCSTI pushes keystrokes into a terminal's input; the filter refuses it even on the run's own terminal, so
    // no other terminal (the user's, the server's) can be typed into either.
    terminal.type_text(
        "python3 -c 'import fcntl,termios; fcntl.ioctl(0, termios.TIOCSTI, b\"x\")' 2>&1 | tail -1; echo sti-$((1 + 2))\n",
    );
    let shown = terminal.read_until("sti-3");
    assert!(shown.contains("Operation not permitted"), "TIOCSTI is refused: {shown:?}");

    terminal.type_text("exit\n");
    assert_eq!(terminal.wait_exit()["exitCode"], 0);
}

#[test]
fn a_terminal_of_no_size_and_resizing_a_run_without_one_should_be_refused() {
    let server = start_server();
    let Some((_workspace, session_id)) = session(&server, "local") else { return };
    let error = server.request_error("sandlink/run", json!({ "sessionId": session_id, "pty": { "cols": 0, "rows": 24 } }));
    assert_eq!(error.kind.as_deref(), Some("invalidParams"), "{error:?}");
    assert!(error.message.contains("0 columns"), "{}", error.message);
    let plain = server.start_run(json!({ "sessionId": session_id, "command": "sleep 5", "stdin": true }));
    let error = server.request_error("sandlink/resize", json!({ "runId": plain, "cols": 80, "rows": 24 }));
    assert_eq!(error.kind.as_deref(), Some("invalidParams"), "{error:?}");
    assert!(error.message.contains("no terminal"), "{}", error.message);
    server.request("sandlink/cancel", json!({ "runId": plain })).expect("cancelled");
}

/// `sandlink shell` with commands piped in: they run on a terminal in a fresh sandbox, the end of the pipe ends the
/// shell, sandlink exits with the shell's code, and the sandbox is removed.
#[test]
fn cli_shell_should_run_piped_commands_on_a_terminal_and_exit_with_the_shells_code() {
    use std::io::Write;
    let workspace = support::workspace_with(&[("marker.txt", "in-the-workspace\n")]);
    let state = tempfile::tempdir().expect("state dir");
    let mut child = Command::new(support::binary())
        .env("SANDLINK_STATE_DIR", state.path())
        .args(["shell", "--driver", "local", "--workspace"])
        .arg(workspace.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("sandlink starts");
    child.stdin.take().expect("stdin").write_all(b"tty; cat marker.txt; exit 3\n").expect("typed");
    let output = child.wait_with_output().expect("sandlink ends");
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(shown.contains("/dev/pts/") && shown.contains("in-the-workspace"), "{shown:?}");
    assert_eq!(output.status.code(), Some(3), "stderr: {}", String::from_utf8_lossy(&output.stderr));
    let leftovers = std::fs::read_dir(state.path().join("sessions")).map(|entries| entries.count()).unwrap_or(0);
    assert_eq!(leftovers, 0, "the sandbox is removed when the shell ends");
}

/// `sandlink shell` on a real terminal: the user's terminal goes raw (keys reach the sandbox as typed, Ctrl-C
/// included), the sandbox terminal takes its size and follows it on SIGWINCH, and the shell's exit code is sandlink's.
#[test]
fn cli_shell_on_a_terminal_should_be_raw_and_follow_its_size() {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;

    let workspace = support::workspace_with(&[("marker.txt", "in-the-workspace\n")]);
    let state = tempfile::tempdir().expect("state dir");
    let (master, slave) = sandlink::drivers::pty::open(sandlink::protocol::PtySize { cols: 101, rows: 31 }).expect("a pty");
    let mut command = Command::new(support::binary());
    command
        .env("SANDLINK_STATE_DIR", state.path())
        .args(["shell", "--driver", "local", "--workspace"])
        .arg(workspace.path())
        .stdin(slave.try_clone().expect("dup"))
        .stdout(slave.try_clone().expect("dup"))
        .stderr(slave);
    // SAFETY: two system calls between fork and exec.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            sandlink::drivers::pty::take_as_controlling_terminal()
        });
    }
    let mut child = command.spawn().expect("sandlink starts");
    drop(command);
    // The terminal's output, read on a thread of its own, so a read never blocks the test.
    let (sender, receiver) = std::sync::mpsc::channel::<Vec<u8>>();
    let mut reader = master.try_clone().expect("dup");
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(count) = reader.read(&mut buffer) {
            if count == 0 || sender.send(buffer[..count].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut screen = String::new();
    let mut read_until = |needle: &str| {
        let deadline = Instant::now() + WAIT;
        while !screen.contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no {needle:?} on the terminal: {screen:?}");
            if let Ok(chunk) = receiver.recv_timeout(left) {
                screen.push_str(&String::from_utf8_lossy(&chunk));
            }
        }
        std::mem::take(&mut screen)
    };
    let mut writer = master.try_clone().expect("dup");
    writer.write_all(b"stty size; tty; echo started-$((1 + 1))\r").expect("typed");
    let shown = read_until("started-2");
    assert!(shown.contains("31 101"), "the sandbox terminal has the user's size: {shown:?}");
    assert!(shown.contains("/dev/pts/"), "{shown:?}");

    // A new size: the kernel sends SIGWINCH to sandlink, which passes the size on.
    sandlink::drivers::pty::set_size(master.as_raw_fd(), sandlink::protocol::PtySize { cols: 77, rows: 19 }).expect("resized");
    std::thread::sleep(Duration::from_millis(300));
    writer.write_all(b"stty size; echo resized-$((2 + 2))\r").expect("typed");
    let shown = read_until("resized-4");
    assert!(shown.contains("19 77"), "the sandbox terminal follows: {shown:?}");

    // Raw: Ctrl-C reaches the sandbox's foreground job instead of ending sandlink.
    writer.write_all(b"sleep 100\r").expect("typed");
    std::thread::sleep(Duration::from_millis(500));
    writer.write_all(b"\x03").expect("typed");
    writer.write_all(b"echo interrupted-$((3 + 3))\r").expect("typed");
    read_until("interrupted-6");
    writer.write_all(b"exit 6\r").expect("typed");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "sandlink shell did not end");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(6));
}

/// Without bubblewrap (Landlock and seccomp confine the runs on the host), the terminal is a new one of the host's,
/// the run's own, and TIOCSTI is refused on it as under bubblewrap.
#[test]
fn local_terminal_under_landlock_should_work_and_refuse_tiocsti() {
    let server = Server::start_with(StartOptions { env: vec![("SANDLINK_LOCAL_NO_BWRAP".into(), "1".into())], ..StartOptions::default() });
    let workspace = support::workspace_with(&[("marker.txt", "in-the-workspace\n")]);
    let session = server.connect("local", Value::Null, workspace.path());
    if support::skip_unless(session["isolation"] == "landlock", "Landlock isolation") {
        return;
    }
    let session_id = session["sessionId"].as_str().expect("sessionId");
    check_login_shell(&server, session_id);
    let mut terminal = Terminal::open(&server, session_id, "", 80, 24);
    terminal.type_text(
        "python3 -c 'import fcntl,termios; fcntl.ioctl(0, termios.TIOCSTI, b\"x\")' 2>&1 | tail -1; echo sti-$((1 + 2))\n",
    );
    let shown = terminal.read_until("sti-3");
    assert!(shown.contains("Operation not permitted"), "TIOCSTI is refused: {shown:?}");
    terminal.type_text("exit\n");
    assert_eq!(terminal.wait_exit()["exitCode"], 0);
}
