//! Escape attempts against the local driver's isolation, on every mechanism this machine offers, as root and as an
//! unprivileged user: each attempt must fail, and the host must be unchanged afterwards.
//!
//! Under CI both mechanisms (bubblewrap and Landlock) and the unprivileged user (`sandlink-escape`, made by
//! `tests/setup/base.sh`) must exist; a silent fallback to a weaker mechanism fails the mechanism check.

mod support;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The unprivileged account the suite runs sandlink as, besides root.
const UNPRIVILEGED_USER: &str = "sandlink-escape";
/// Values of server variables that must never reach a run.
const CANARY: &str = "sandlink-escape-canary-4f1c9a";

/// Who runs sandlink.
#[derive(Debug, Clone)]
struct Account {
    uid: u32,
    gid: u32,
    home: PathBuf,
}

fn unprivileged_account() -> Option<Account> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let fields: Vec<&str> = passwd.lines().find(|line| line.starts_with(&format!("{UNPRIVILEGED_USER}:")))?.split(':').collect();
    Some(Account { uid: fields[2].parse().ok()?, gid: fields[3].parse().ok()?, home: PathBuf::from(fields[5]) })
}

fn accounts() -> Vec<(&'static str, Option<Account>)> {
    let mut accounts = vec![("root", None)];
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        // Not root: the suite can only run as the current user.
        return accounts;
    }
    let unprivileged = unprivileged_account();
    if !support::skip_unless(unprivileged.is_some(), "the unprivileged test user sandlink-escape") {
        accounts.push(("unprivileged", unprivileged));
    }
    accounts
}

/// The mechanisms this machine offers, according to sandlink's own probe (`sandlink drivers --json`).
fn mechanisms() -> Vec<&'static str> {
    let mut offered = Vec::new();
    for (mechanism, hidden) in [("bubblewrap", None), ("landlock", Some("SANDLINK_LOCAL_NO_BWRAP"))] {
        let mut command = Command::new(support::binary());
        command.args(["drivers", "--json"]);
        if let Some(variable) = hidden {
            command.env(variable, "1");
        }
        let output = command.output().expect("sandlink drivers");
        let listing = String::from_utf8_lossy(&output.stdout).to_string();
        let works = listing.contains(&format!("isolation: {mechanism}"));
        if !support::skip_unless(works, &format!("{mechanism} isolation")) {
            offered.push(mechanism);
        }
    }
    offered
}

/// A copy of the binary every account can execute (the build directory may not be reachable for other users).
///
/// One fixed directory, replaced by rename on each run: a directory per test process left a 260 MB copy in /tmp
/// after every run, and a run that is going on at the same time keeps executing the copy it already opened.
fn shared_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let dir = std::env::temp_dir().join("sandlink-escape-bin");
        std::fs::create_dir_all(&dir).expect("binary dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let binary = dir.join("sandlink");
        let staged = dir.join(format!(".sandlink-{}", std::process::id()));
        std::fs::copy(support::binary(), &staged).expect("copy binary");
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::rename(&staged, &binary).expect("put the binary in place");
        binary
    })
}

/// One account's sandlink set-up: its own state, config, workspace and a home holding canaries.
struct Harness {
    account: Option<Account>,
    mechanism: &'static str,
    base: tempfile::TempDir,
    home: PathBuf,
    workspace: PathBuf,
    tag: String,
}

impl Harness {
    fn new(mechanism: &'static str, account: Option<Account>, extra_profile: &str) -> Harness {
        let base = tempfile::tempdir().expect("temp dir");
        std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let tag = format!("{}-{}-{}", mechanism, std::process::id(), rand_suffix());
        let home = match &account {
            Some(account) => account.home.clone(),
            None => base.path().join("host-home"),
        };
        let workspace = base.path().join("workspace");
        let config = base.path().join("config");
        let state = base.path().join("state");
        for dir in [&home.join(".ssh"), &workspace, &config, &state] {
            std::fs::create_dir_all(dir).expect("mkdir");
        }
        std::fs::write(home.join(".ssh").join(format!("id_{tag}")), format!("{CANARY} private key")).expect("canary");
        std::fs::write(home.join(".npmrc"), format!("//registry.npmjs.org/:_authToken={CANARY}\n")).expect("canary");
        std::fs::write(workspace.join("hello.txt"), "hello\n").expect("workspace file");
        std::fs::write(
            config.join("config.toml"),
            format!("[profiles.escape]\ndriver = \"local\"\nisolation = \"{mechanism}\"\n{extra_profile}\n"),
        )
        .expect("profile");
        if let Some(account) = &account {
            for path in [base.path().to_path_buf(), home.clone()] {
                chown_tree(&path, account.uid, account.gid);
            }
        }
        Harness { account, mechanism, base, home, workspace, tag }
    }

    fn command(&self) -> Command {
        let mut command = Command::new(shared_binary());
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("SANDLINK_STATE_DIR", self.base.path().join("state"))
            .env("SANDLINK_CONFIG_DIR", self.base.path().join("config"))
            .env("E2B_API_KEY", CANARY)
            .env("AWS_SECRET_ACCESS_KEY", CANARY)
            .env("GITHUB_TOKEN", CANARY)
            .current_dir(&self.workspace)
            .stdin(Stdio::null());
        if let Some(account) = &self.account {
            command.uid(account.uid).gid(account.gid);
        }
        command
    }

    /// `sandlink run` of a shell script in this harness's sandbox.
    fn run(&self, script: &str) -> Output {
        self.command()
            .args(["run", "--profile", "escape", "--timeout", "60", "--env", &format!("ESCAPE_TAG={}", self.tag), "--", script])
            .output()
            .expect("sandlink run")
    }

    /// `sandlink run --detach` of a shell script with extra options; the run's id.
    fn start_detached(&self, options: &[&str], script: &str) -> String {
        let output = self
            .command()
            .args(["run", "--detach", "--profile", "escape", "--env", &format!("ESCAPE_TAG={}", self.tag)])
            .args(options)
            .arg("--")
            .arg(script)
            .output()
            .expect("sandlink run --detach");
        assert_eq!(output.status.code(), Some(0), "{}: run --detach failed: {}", self.who(), text(&output));
        let run_id = String::from_utf8_lossy(&output.stdout).trim().to_string();
        assert!(run_id.starts_with("run-"), "{}: run --detach printed {run_id:?}", self.who());
        run_id
    }

    fn who(&self) -> String {
        format!("{} as {}", self.mechanism, if self.account.is_some() { UNPRIVILEGED_USER } else { "root" })
    }
}

fn rand_suffix() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{nanos:x}")
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    let _ = std::os::unix::fs::lchown(path, Some(uid), Some(gid));
    if path.is_dir() && !path.is_symlink() {
        for entry in std::fs::read_dir(path).expect("read dir").flatten() {
            chown_tree(&entry.path(), uid, gid);
        }
    }
}

/// Every (mechanism, account) pair to attack.
fn targets() -> Vec<(&'static str, Option<Account>)> {
    let mut targets = Vec::new();
    for mechanism in mechanisms() {
        for (_, account) in accounts() {
            targets.push((mechanism, account));
        }
    }
    targets
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// The attempts, each printing `NAME: escaped` when it got through and `NAME: blocked` otherwise.
const ATTEMPTS: &str = r#"
attempt() { name=$1; shift; if ( "$@" ) >/dev/null 2>&1; then echo "$name: escaped"; else echo "$name: blocked"; fi; }
attempt write-host-tmp sh -c 'echo x > /var/tmp/escaped-$ESCAPE_TAG'
attempt write-workspace sh -c 'echo x > "$REAL_WORKSPACE/escaped-$ESCAPE_TAG"'
attempt read-ssh-key sh -c 'cat "$HOST_HOME"/.ssh/id_* | grep -q sandlink-escape-canary'
attempt read-host-tmp sh -c 'grep -q sandlink-escape-canary "$HOST_TMP_FILE"'
attempt read-npmrc sh -c 'grep -q sandlink-escape-canary "$HOST_HOME/.npmrc"'
attempt list-host-home sh -c 'ls -A "$HOST_HOME" | grep -q .npmrc'
attempt environment sh -c 'env | grep -q sandlink-escape-canary'
attempt proc-environ sh -c 'cat /proc/[0-9]*/environ 2>/dev/null | tr "\0" "\n" | grep -q sandlink-escape-canary'
attempt unix-socket python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])' "$HOST_SOCKET"
attempt docker-socket python3 -c 'import socket; s=socket.socket(socket.AF_UNIX); s.connect("/var/run/docker.sock")'
attempt remount sh -c 'mount -o remount,rw,bind / && touch /var/tmp/remounted-$ESCAPE_TAG'
attempt unshare-user unshare -Ur true
attempt unshare-mount unshare -m true
attempt ptrace-parent python3 -c 'import ctypes,os,sys; libc=ctypes.CDLL(None, use_errno=True); sys.exit(0 if libc.ptrace(16, os.getppid(), 0, 0) == 0 else 1)'
attempt open-tty python3 -c 'import os; os.open("/dev/tty", os.O_RDWR)'
attempt tiocsti python3 -c 'import fcntl,termios,os; m,s=os.openpty(); fcntl.ioctl(s, termios.TIOCSTI, b"x")'
attempt capabilities sh -c 'grep CapEff /proc/self/status | grep -qv 0000000000000000'
# sandlink's own processes the run can see (the agent, bubblewrap, the server under Landlock) and pid 1: their memory
# would let a run write code into a process outside its seccomp filter, their stdout and stderr lead to the host.
attempt sandlink-process python3 -c '
import os, sys
for pid in (entry for entry in os.listdir("/proc") if entry.isdigit() and int(entry) != os.getpid()):
    try:
        program = os.path.basename(open("/proc/%s/cmdline" % pid, "rb").read().split(b"\0")[0])
    except OSError:
        continue
    if pid != "1" and program not in (b"sandlink", b"bwrap"):
        continue
    for what in ("mem", "fd/0", "fd/1", "fd/2"):
        try:
            os.close(os.open("/proc/%s/%s" % (pid, what), os.O_WRONLY))
            print("opened /proc/%s/%s" % (pid, what), file=sys.stderr)
            sys.exit(0)
        except OSError:
            pass
sys.exit(1)'
attempt kernel-keyring python3 -c 'import ctypes,sys; libc=ctypes.CDLL(None, use_errno=True); sys.exit(0 if libc.syscall(250, 0, -3, 0) >= 0 else 1)'
# Controls: what a run must still be able to do, so a blocked attempt above means the attack was stopped, not
# that the tool it used was missing.
attempt control-python python3 -c 'pass'
attempt control-write-root sh -c 'echo x > "$SANDLINK_REMOTE_ROOT/control" && rm "$SANDLINK_REMOTE_ROOT/control"'
attempt control-write-home sh -c 'echo x > "$HOME/control"'
attempt control-tmp sh -c 'f=$(mktemp) && echo x > "$f"'
attempt control-socketpair python3 -c 'import socket; socket.socketpair()'
attempt control-pty python3 -c 'import os; os.openpty()'
attempt control-unshare-exists sh -c 'command -v unshare'
echo done
"#;

#[test]
fn every_escape_attempt_should_fail_and_leave_the_host_unchanged() {
    for (mechanism, account) in targets() {
        let harness = Harness::new(mechanism, account, "");
        attack(&harness, |script| text(&harness.run(script)));
    }
}

#[test]
fn a_detached_run_should_be_as_confined_as_an_ordinary_one() {
    // A detached run's agent lives outside the server's session (it must outlive the server), so everything the
    // session's agent is held to is attacked again from there.
    for (mechanism, account) in targets() {
        let harness = Harness::new(mechanism, account, "");
        attack(&harness, |script| {
            let run_id = harness.start_detached(&["--timeout", "60"], script);
            let attached = harness.command().args(["attach", &run_id]).output().expect("sandlink attach");
            text(&attached)
        });
    }
}

/// Runs the attempts through `launch` (which returns what the run printed) with a host socket, a file in the host's
/// shared temporary directory and canaries in the host home waiting, and checks that none got through.
fn attack(harness: &Harness, launch: impl FnOnce(&str) -> String) {
    let socket_dir = harness.base.path().join("sockets");
    std::fs::create_dir_all(&socket_dir).expect("socket dir");
    std::fs::set_permissions(&socket_dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let socket_path = socket_dir.join("host.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket_path).expect("host socket");
    std::fs::set_permissions(&socket_path, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    listener.set_nonblocking(true).expect("nonblocking");
    // A file another program left in the host's shared /tmp, readable by everyone.
    let host_tmp_file = socket_dir.join("host-tmp-file");
    std::fs::write(&host_tmp_file, CANARY).expect("host tmp file");
    std::fs::set_permissions(&host_tmp_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let workspace_before = tree_listing(&harness.workspace);
    let script = format!(
        "REAL_WORKSPACE='{}' HOST_HOME='{}' HOST_SOCKET='{}' HOST_TMP_FILE='{}'; {ATTEMPTS}",
        harness.workspace.display(),
        harness.home.display(),
        socket_path.display(),
        host_tmp_file.display()
    );
    let report = launch(&format!("{{ {script} }}"));
    assert!(report.contains("done"), "{}: the attempts did not all run: {report}", harness.who());
    let escaped: Vec<&str> = report.lines().filter(|line| line.ends_with(": escaped")).collect();
    let escaped: Vec<&str> = escaped.into_iter().filter(|line| !line.starts_with("control-")).collect();
    assert!(escaped.is_empty(), "{}: escapes got through: {escaped:?}\n{report}", harness.who());
    let broken: Vec<&str> = report.lines().filter(|line| line.starts_with("control-") && line.ends_with(": blocked")).collect();
    assert!(broken.is_empty(), "{}: ordinary work failed in the sandbox: {broken:?}\n{report}", harness.who());
    for name in ["write-host-tmp", "read-host-tmp", "read-ssh-key", "environment", "remount", "unshare-user", "ptrace-parent", "tiocsti", "sandlink-process"] {
        assert!(report.contains(&format!("{name}: blocked")), "{}: {name} was not attempted: {report}", harness.who());
    }
    // The host is unchanged: no file appeared, the workspace is as it was, nobody connected to the socket.
    for leftover in [format!("/var/tmp/escaped-{}", harness.tag), format!("/var/tmp/remounted-{}", harness.tag)] {
        assert!(!Path::new(&leftover).exists(), "{}: {leftover} was written on the host", harness.who());
    }
    assert_eq!(tree_listing(&harness.workspace), workspace_before, "{}: the real workspace changed", harness.who());
    assert!(listener.accept().is_err(), "{}: a run connected to a host socket", harness.who());
    assert!(!report.contains(CANARY), "{}: a canary reached the run's output", harness.who());
}

#[test]
fn each_mechanism_should_be_the_one_in_force() {
    for (mechanism, account) in targets() {
        let harness = Harness::new(mechanism, account, "");
        let output = harness.run(
            "echo pidns=$(readlink /proc/self/ns/pid); echo userns=$(readlink /proc/self/ns/user); \
             grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status; echo cwd=$(pwd)",
        );
        let report = text(&output);
        assert_eq!(output.status.code(), Some(0), "{}: {report}", harness.who());
        let host_pid_namespace = std::fs::read_link("/proc/self/ns/pid").expect("own pid namespace");
        let host_user_namespace = std::fs::read_link("/proc/self/ns/user").expect("own user namespace");
        let in_host_namespaces = report.contains(&format!("pidns={}", host_pid_namespace.display()))
            && report.contains(&format!("userns={}", host_user_namespace.display()));
        match mechanism {
            "bubblewrap" => assert!(!in_host_namespaces, "{}: runs share the host's namespaces: {report}", harness.who()),
            _ => assert!(in_host_namespaces, "{}: expected Landlock without namespaces: {report}", harness.who()),
        }
        assert!(report.contains("Seccomp:\t2"), "{}: no seccomp filter: {report}", harness.who());
        assert!(report.contains("NoNewPrivs:\t1"), "{}: new privileges allowed: {report}", harness.who());
    }
}

#[test]
fn a_fork_bomb_should_be_bounded_and_cleaned_up() {
    for (mechanism, account) in targets() {
        let harness = Harness::new(mechanism, account, "maxProcesses = 64");
        bomb(&harness, |marker| {
            let output = harness
                .command()
                .args(["run", "--profile", "escape", "--timeout", "4", "--env", &format!("BOMB={marker}"), "--"])
                .arg("bomb() { bomb | bomb & }; bomb; sleep 30")
                .output()
                .expect("sandlink run");
            assert!(output.status.code().is_some(), "{}: sandlink itself died", harness.who());
        });
    }
}

#[test]
fn a_fork_bomb_in_a_detached_run_should_be_bounded_and_cleaned_up() {
    // The detached run's processes are outside the session's agent and outlive the command that started them; the
    // session's process limit must bind them all the same, and the run's end must take them all.
    for (mechanism, account) in targets() {
        let harness = Harness::new(mechanism, account, "maxProcesses = 64");
        bomb(&harness, |marker| {
            let run_id = harness.start_detached(
                &["--timeout", "4", "--env", &format!("BOMB={marker}")],
                "bomb() { bomb | bomb & }; bomb; sleep 30",
            );
            let attached = harness.command().args(["attach", &run_id]).output().expect("sandlink attach");
            assert!(attached.status.code().is_some(), "{}: sandlink attach died: {}", harness.who(), text(&attached));
        });
    }
}

/// Watches the processes carrying a fresh marker while `launch` starts a fork bomb marked with it and waits for
/// its end: at most the limit of 64 (and a few in flight) at any moment, and none left soon after.
fn bomb(harness: &Harness, launch: impl FnOnce(&str)) {
    let marker = format!("bomb-{}", harness.tag);
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (peak, done, marker) = (peak.clone(), done.clone(), marker.clone());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let count = support::processes_with_environment(&marker).len();
                peak.fetch_max(count, std::sync::atomic::Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    launch(&marker);
    let left = wait_until_gone(&marker, Duration::from_secs(10));
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    watcher.join().expect("watcher");
    let peak = peak.load(std::sync::atomic::Ordering::SeqCst);
    if peak <= 1 {
        // Seen only with other suites forking on the same machine at the same moment; the bound below then proves
        // nothing, so say so rather than fail on the machine's load.
        eprintln!("{}: the watcher never saw the bomb's processes (peak {peak})", harness.who());
    }
    assert!(peak <= 64 + 8, "{}: the bomb reached {peak} processes past the limit of 64", harness.who());
    assert!(left.is_empty(), "{}: the bomb's processes outlived the run: {left:?}", harness.who());
}

#[test]
fn every_process_of_a_session_should_be_in_its_cgroup_before_any_command_runs() {
    // The session's agent (and bubblewrap above it) join the session's pids cgroup before exec (cgroup v1) or right
    // after they started (v2); a command runs only once they are members, so the process limit and the kill at the end
    // hold for everything between sandlink and the command. Cgroups are made only as root.
    for (mechanism, account) in targets().into_iter().filter(|(_, account)| account.is_none()) {
        let harness = Harness::new(mechanism, account, "");
        let marker = format!("member-{}", harness.tag);
        let mut sandlink = start_marked_run(&harness, &marker, "echo started; sleep 30");
        let command = support::processes_with_environment(&marker);
        assert!(!command.is_empty(), "{}: the run's process was not found", harness.who());
        // From the command up to sandlink itself: the command, the agent and, with bubblewrap, bubblewrap's process
        // outside the sandbox (the agent is the sandbox's pid 1, so bubblewrap keeps no reaper inside).
        let mut chain = Vec::new();
        let mut pid = command[0];
        while pid != sandlink.id() && pid > 1 && chain.len() < 16 {
            chain.push(pid);
            pid = parent_of(pid);
        }
        assert_eq!(pid, sandlink.id(), "{}: the run does not descend from sandlink: {chain:?}", harness.who());
        let least = if mechanism == "bubblewrap" { 3 } else { 2 };
        assert!(chain.len() >= least, "{}: too few processes between sandlink and the run: {chain:?}", harness.who());
        for pid in &chain {
            let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            let pids = cgroups.lines().find(|line| line.split(':').nth(1).is_some_and(|c| c.split(',').any(|c| c == "pids") || c.is_empty()));
            let in_session = pids.is_some_and(|line| line.contains("/sandlink-local-") && line.ends_with("/session"));
            assert!(in_session, "{}: process {pid} is outside the session's cgroup: {pids:?}", harness.who());
        }
        sandlink.kill().expect("kill the run");
        sandlink.wait().expect("reap");
        assert!(wait_until_gone(&marker, Duration::from_secs(5)).is_empty(), "{}: the run outlived sandlink", harness.who());
    }
}

/// Starts `sandlink run` of `script` with `MARK=<marker>` in its environment, and returns once the script printed
/// "started" (its first eight bytes).
fn start_marked_run(harness: &Harness, marker: &str, script: &str) -> std::process::Child {
    let mut sandlink = harness
        .command()
        .args(["run", "--profile", "escape", "--env", &format!("MARK={marker}"), "--"])
        .arg(script)
        .stdout(Stdio::piped())
        .spawn()
        .expect("sandlink run");
    let mut first = [0u8; 8];
    sandlink.stdout.take().expect("stdout").read_exact(&mut first).expect("the run started");
    sandlink
}

/// The parent of process `pid`, from `/proc/PID/stat` (0 when it is gone).
fn parent_of(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name is in parentheses and may hold spaces: the fields after it are state, then the parent.
    stat.rfind(')').and_then(|end| stat[end + 1..].split_whitespace().nth(1)).and_then(|ppid| ppid.parse().ok()).unwrap_or(0)
}

#[test]
fn killing_the_server_should_end_every_process_of_its_runs() {
    for (mechanism, account) in targets() {
        let harness = Harness::new(mechanism, account, "");
        let marker = format!("orphan-{}", harness.tag);
        let mut sandlink = start_marked_run(&harness, &marker, "sleep 300 & setsid sleep 301 & (sleep 302 &) ; echo started; wait");
        let deadline = Instant::now() + Duration::from_secs(5);
        while support::processes_with_environment(&marker).len() < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(support::processes_with_environment(&marker).len() >= 3, "{}: the run's processes did not start", harness.who());
        sandlink.kill().expect("kill -9 the server");
        sandlink.wait().expect("reap");
        let left = wait_until_gone(&marker, Duration::from_secs(5));
        assert!(left.is_empty(), "{}: processes outlived a killed server: {left:?}", harness.who());
    }
}

#[test]
fn daemons_a_run_leaves_should_end_with_the_run_session() {
    for (mechanism, account) in targets() {
        let harness = Harness::new(mechanism, account, "");
        let marker = format!("daemon-{}", harness.tag);
        let output = harness
            .command()
            .args(["run", "--profile", "escape", "--env", &format!("MARK={marker}"), "--"])
            .arg("setsid sh -c 'sleep 303' </dev/null >/dev/null 2>&1 & echo left")
            .output()
            .expect("sandlink run");
        assert_eq!(output.status.code(), Some(0), "{}: {}", harness.who(), text(&output));
        let left = wait_until_gone(&marker, Duration::from_secs(5));
        assert!(left.is_empty(), "{}: a daemon outlived its session: {left:?}", harness.who());
    }
}

#[test]
fn daemons_a_detached_run_leaves_should_end_with_the_run() {
    for (mechanism, account) in targets() {
        let harness = Harness::new(mechanism, account, "");
        let marker = format!("detached-daemon-{}", harness.tag);
        let run_id = harness.start_detached(
            &["--env", &format!("MARK={marker}")],
            "setsid sh -c 'sleep 304' </dev/null >/dev/null 2>&1 & (setsid sleep 305 &); echo left",
        );
        let attached = harness.command().args(["attach", &run_id]).output().expect("sandlink attach");
        assert_eq!(attached.status.code(), Some(0), "{}: {}", harness.who(), text(&attached));
        let left = wait_until_gone(&marker, Duration::from_secs(5));
        assert!(left.is_empty(), "{}: a daemon outlived its detached run: {left:?}", harness.who());
    }
}

#[test]
fn network_off_should_block_the_loopback_and_everything_else() {
    for (mechanism, account) in targets() {
        let harness = Harness::new(mechanism, account, "network = \"off\"");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("address").port();
        let output = harness.run(&format!(
            "python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), timeout=3)' && echo reached; \
             python3 -c 'import socket; socket.create_connection((\"127.0.0.2\", 9), timeout=3)' 2>&1 | tail -1; echo end"
        ));
        let report = text(&output);
        assert!(report.contains("end"), "{}: {report}", harness.who());
        assert!(!report.contains("reached"), "{}: network off reached 127.0.0.1: {report}", harness.who());
        assert!(listener.accept().is_err(), "{}: the host listener got a connection", harness.who());
        // The refusal is immediate, not a time-out: the run fails fast.
        assert!(!report.contains("timed out"), "{}: {report}", harness.who());
    }
}

/// The port watch tells the sandbox's listeners from the host's by looking at the sandbox from the host
/// (`Sandbox::sockets_seen_from_here`). As the unprivileged user under Landlock that look reads the `/proc` of a
/// non-dumpable agent in the host's own namespaces: had it given up there, the engine would fall back to the probe
/// inside the sandbox, which cannot attribute sockets and offers every new listener, the host's included.
#[test]
fn the_port_watch_should_offer_the_runs_server_and_not_the_hosts_for_every_account() {
    for (mechanism, account) in targets() {
        let harness = Harness::new(mechanism, account, "");
        // The run says it started, gives the host time to listen, then listens itself long enough for the watch's
        // looks (every 2 s) to see it.
        let script = "echo started; sleep 1; python3 -c '
import socket, time
server = socket.socket()
server.bind((\"127.0.0.1\", 0))
server.listen()
print(\"listening\", server.getsockname()[1], flush=True)
time.sleep(6)'";
        let mut sandlink = harness
            .command()
            .args(["run", "--profile", "escape", "--timeout", "60", "--", script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sandlink run");
        let mut stdout = std::io::BufReader::new(sandlink.stdout.take().expect("stdout"));
        let mut line = String::new();
        std::io::BufRead::read_line(&mut stdout, &mut line).expect("the run's first line");
        assert_eq!(line.trim(), "started", "{}", harness.who());
        // Opened after the watch's first look, as a server the user starts on the host during a run would be.
        std::thread::sleep(Duration::from_millis(500));
        let host = std::net::TcpListener::bind("127.0.0.1:0").expect("a host listener");
        let host_port = host.local_addr().expect("address").port();
        let mut rest = String::new();
        stdout.read_to_string(&mut rest).expect("the run's output");
        let mut stderr = String::new();
        sandlink.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("the run's stderr");
        assert!(sandlink.wait().expect("sandlink run ends").success(), "{}: {rest}{stderr}", harness.who());
        let sandbox_port = rest.split_whitespace().nth(1).and_then(|port| port.parse::<u16>().ok());
        let sandbox_port = sandbox_port.unwrap_or_else(|| panic!("{}: the run's server did not start: {rest}{stderr}", harness.who()));
        assert!(
            stderr.contains(&format!("port {sandbox_port} is at")),
            "{}: the run's server was not offered as a preview: {stderr}",
            harness.who()
        );
        assert!(
            !stderr.contains(&format!("port {host_port} is at")),
            "{}: the host's listener was offered as the sandbox's preview: {stderr}",
            harness.who()
        );
    }
}

#[test]
fn with_no_mechanism_a_run_should_be_refused_unless_the_profile_says_none() {
    let workspace = support::workspace_with(&[("a.txt", "a")]);
    let state = tempfile::tempdir().expect("state");
    let output = Command::new(support::binary())
        .env("SANDLINK_LOCAL_NO_BWRAP", "1")
        .env("SANDLINK_LOCAL_NO_LANDLOCK", "1")
        .env("SANDLINK_STATE_DIR", state.path())
        .env("SANDLINK_CONFIG_DIR", state.path())
        .current_dir(workspace.path())
        .args(["run", "--", "touch /tmp/should-never-run-$$"])
        .output()
        .expect("sandlink run");
    let report = text(&output);
    assert_ne!(output.status.code(), Some(0), "an unisolated run was started: {report}");
    assert!(report.contains("isolation = \"none\""), "the refusal says how to proceed: {report}");
    assert!(report.contains("bubblewrap"), "the refusal says how to get isolation: {report}");
    let drivers = Command::new(support::binary())
        .env("SANDLINK_LOCAL_NO_BWRAP", "1")
        .env("SANDLINK_LOCAL_NO_LANDLOCK", "1")
        .args(["drivers"])
        .output()
        .expect("sandlink drivers");
    assert!(!text(&drivers).contains("process groups only"), "{}", text(&drivers));
}

fn wait_until_gone(marker: &str, limit: Duration) -> Vec<u32> {
    let deadline = Instant::now() + limit;
    loop {
        let left = support::processes_with_environment(marker);
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn tree_listing(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut listing = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            listing.extend(tree_listing(&path));
        } else {
            listing.push((path.clone(), std::fs::read(&path).unwrap_or_default()));
        }
    }
    listing.sort();
    listing
}

/// A tiny HTTP server on a loopback address that answers every request with `body`, counting connections.
fn http_server(address: &str, body: &'static str) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = std::net::TcpListener::bind(format!("{address}:0")).expect("test server");
    let port = listener.local_addr().expect("address").port();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = served.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut request = [0u8; 4096];
            let _ = std::io::Read::read(&mut stream, &mut request);
            let response = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
            let _ = std::io::Write::write_all(&mut stream, response.as_bytes());
        }
    });
    (port, served)
}

#[test]
fn an_allow_list_should_admit_exactly_the_listed_host() {
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    if support::skip_unless(hosts.contains("allowed.sandlink.test"), "the test host names in /etc/hosts") {
        return;
    }
    for (mechanism, account) in targets() {
        let (allowed_port, _) = http_server("127.0.0.2", "from-the-allowed-host");
        let (denied_port, denied_served) = http_server("127.0.0.3", "from-the-denied-host");
        let harness = Harness::new(mechanism, account, "network = [\"allowed.sandlink.test\"]");
        let fetch = |url: String| {
            format!(
                "python3 -c 'import sys,urllib.request\ntry:\n print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())\nexcept Exception as e:\n print(\"refused:\", e)' {url}"
            )
        };
        let output = harness.run(&format!(
            "{}; {}; {}; python3 -c 'import socket; socket.create_connection((\"127.0.0.2\", {allowed_port}), timeout=3); print(\"direct-reached\")' 2>&1 | tail -1; echo end",
            fetch(format!("http://allowed.sandlink.test:{allowed_port}/")),
            fetch(format!("http://denied.sandlink.test:{denied_port}/")),
            fetch(format!("http://127.0.0.2:{allowed_port}/")),
        ));
        let report = text(&output);
        assert!(report.contains("end"), "{}: {report}", harness.who());
        assert!(report.contains("from-the-allowed-host"), "{}: the listed host was not admitted: {report}", harness.who());
        assert!(!report.contains("from-the-denied-host"), "{}: an unlisted host was reached: {report}", harness.who());
        assert_eq!(report.matches("refused: HTTP Error 403").count(), 2, "{}: the unlisted name and the address are refused by the proxy: {report}", harness.who());
        assert!(!report.contains("direct-reached"), "{}: a run got around the proxy: {report}", harness.who());
        assert_eq!(denied_served.load(std::sync::atomic::Ordering::SeqCst), 0, "{}: the unlisted server was contacted", harness.who());
    }
}
