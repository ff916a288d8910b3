//! End-to-end tests of the `ssh` driver against real OpenSSH servers on loopback: the shared parity behaviours,
//! directly and through a ProxyJump host, plus what only ssh has (host keys, authentication, drops, restarts).
//!
//! They need `tests/setup/ssh.sh` (two sshd and a client configuration; `tests/.run/ssh.env` names them). Outside CI
//! they skip when it has not run; under CI (`CI=true`) a missing sshd fails them.

mod support;
#[macro_use]
mod parity;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use parity::DriverFixture;
use support::{Server, StartOptions};

/// The test client configuration and the host aliases, from tests/.run/ssh.env.
struct Setup {
    config: String,
    host: String,
    jump_host: String,
    directory: PathBuf,
}

fn setup() -> Option<Setup> {
    let variable = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
    let found = (|| {
        let config = variable("SANDLINK_SSH_CONFIG")?;
        std::path::Path::new(&config).exists().then_some(())?;
        Some(Setup {
            config,
            host: variable("SANDLINK_SSH_HOST")?,
            jump_host: variable("SANDLINK_SSH_JUMP_HOST")?,
            directory: PathBuf::from(variable("SANDLINK_SSH_DIR")?),
        })
    })();
    if support::skip_unless(found.is_some(), "sshd on loopback (tests/setup/ssh.sh, tests/.run/ssh.env)") {
        return None;
    }
    found
}

fn fixture_for(host: fn(&Setup) -> String) -> Option<DriverFixture> {
    let setup = setup()?;
    Some(DriverFixture {
        driver: "ssh",
        settings: json!({ "host": host(&setup), "configFile": setup.config }),
        server_env: Vec::new(),
        http_server_command: |port| format!("exec python3 -m http.server {port} --bind 127.0.0.1"),
        sandbox_exists: parity::local_root_exists,
        guard: None,
    })
}

fn ssh_fixture() -> Option<DriverFixture> {
    fixture_for(|setup| setup.host.clone())
}

parity_tests!(ssh_fixture);
sync_parity_tests!(ssh_fixture);

/// The same behaviours through the jump host (ProxyJump in the client configuration).
mod via_jump {
    use super::*;

    fn jump_fixture() -> Option<DriverFixture> {
        fixture_for(|setup| setup.jump_host.clone())
    }

    #[test]
    fn run_should_stream_stdout_stderr_and_exit_code() {
        let Some(fixture) = jump_fixture() else { return };
        parity::run_should_stream_stdout_stderr_and_exit_code(&fixture);
    }

    #[test]
    fn workspace_files_should_be_visible_to_runs() {
        let Some(fixture) = jump_fixture() else { return };
        parity::workspace_files_should_be_visible_to_runs(&fixture);
    }

    #[test]
    fn preview_should_reach_a_server_in_the_sandbox() {
        let Some(fixture) = jump_fixture() else { return };
        parity::preview_should_reach_a_server_in_the_sandbox(&fixture);
    }
}

#[test]
fn runs_should_see_only_their_own_environment_and_a_shell_line_as_sh_c_would() {
    let Some(fixture) = ssh_fixture() else { return };
    let (server, _workspace, session_id) = fixture.connected(&[]);
    let outcome = server.run_to_exit(json!({
        "sessionId": session_id,
        "command": "echo \"$0|$#|${RUN-unset}|${WRAPPER-unset}|$GREETING\"; env | grep -c '^SANDLINK_REMOTE_ROOT='",
        "env": { "GREETING": "hello there" },
    }));
    assert_eq!(outcome.stdout, "sh|0|unset|unset|hello there\n1\n", "{}", outcome.stderr);
}

/// A client configuration of the test's own (alias `target`), pointing at `port` with `options` added; for tests
/// that need other keys, known hosts or a proxy than the shared configuration.
fn own_config(setup: &Setup, directory: &Path, port: u16, options: &str) -> String {
    let known_hosts = directory.join("known_hosts");
    if !known_hosts.exists() {
        std::fs::write(&known_hosts, "").expect("write known_hosts");
    }
    let config = directory.join("config");
    let text = format!(
        "Host target\n    HostName 127.0.0.1\n    Port {port}\n    User {user}\n    IdentitiesOnly yes\n    \
         UserKnownHostsFile {known}\n    GlobalKnownHostsFile /dev/null\n    ConnectTimeout 5\n{options}\n\
         Host *\n    IdentityFile {client}\n",
        user = std::env::var("SANDLINK_SSH_USER").unwrap_or_else(|_| "sandlinkssh".into()),
        known = known_hosts.display(),
        client = setup.directory.join("client").display(),
    );
    std::fs::write(&config, text).expect("write config");
    config.display().to_string()
}

/// The known_hosts line of the target sshd's key under `name`.
fn known_line(setup: &Setup, name: &str, key: &str) -> String {
    let public = std::fs::read_to_string(setup.directory.join(format!("{key}.pub"))).expect("a host key");
    let mut fields = public.split_whitespace();
    format!("{name} {} {}\n", fields.next().expect("type"), fields.next().expect("key"))
}

/// `ssh-keygen -lf`'s SHA256 fingerprint of a public key file.
fn fingerprint_of(path: &Path) -> String {
    let output = Command::new("ssh-keygen").arg("-lf").arg(path).output().expect("ssh-keygen runs");
    String::from_utf8_lossy(&output.stdout).split_whitespace().nth(1).expect("a fingerprint").to_string()
}

fn target_port() -> u16 {
    std::env::var("SANDLINK_SSH_PORT").ok().and_then(|port| port.parse().ok()).unwrap_or(2222)
}

fn connect_error(server: &Server, settings: Value, workspace: &Path) -> support::RpcError {
    server.request_error("sandlink/connect", json!({ "driver": "ssh", "settings": settings, "workspaceFolder": support::file_uri(workspace) }))
}

#[test]
fn an_unknown_host_key_should_be_refused_then_accepted_only_with_its_fingerprint() {
    let Some(setup) = setup() else { return };
    let directory = tempfile::tempdir().expect("temp dir");
    let config = own_config(&setup, directory.path(), target_port(), "");
    let settings = json!({ "host": "target", "configFile": config });
    let workspace = support::workspace_with(&[("a.txt", "a\n")]);
    let server = Server::start();
    let error = connect_error(&server, settings.clone(), workspace.path());
    assert_eq!(error.kind.as_deref(), Some("hostKeyUnknown"), "{error:?}");
    let expected = fingerprint_of(&setup.directory.join("host_target.pub"));
    assert_eq!(error.data["fingerprint"], expected, "{error:?}");
    assert_eq!(error.data["host"], "target");
    assert!(error.message.contains(&expected) && error.message.contains("accept"), "says how to verify and accept: {}", error.message);

    let wrong = server.request_error(
        "sandlink/acceptHostKey",
        json!({ "host": "target", "fingerprint": "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "configFile": config }),
    );
    assert_eq!(wrong.kind.as_deref(), Some("invalidParams"), "{wrong:?}");
    let known_hosts = directory.path().join("known_hosts");
    assert_eq!(std::fs::read_to_string(&known_hosts).expect("known_hosts"), "", "nothing is recorded for another fingerprint");

    let accepted = server
        .request("sandlink/acceptHostKey", json!({ "host": "target", "fingerprint": expected, "configFile": config }))
        .expect("the fingerprint the host presents is accepted");
    assert_eq!(accepted["knownHosts"], known_hosts.display().to_string());
    assert_eq!(std::fs::read_to_string(&known_hosts).expect("known_hosts"), known_line(&setup, &format!("[127.0.0.1]:{}", target_port()), "host_target"));
    let session = server.connect("ssh", settings, workspace.path());
    let outcome = server.run_to_exit(json!({ "sessionId": session["sessionId"], "command": "cat a.txt" }));
    assert_eq!(outcome.stdout, "a\n");
}

#[test]
fn a_changed_host_key_should_be_refused_and_replaced_when_accepted() {
    let Some(setup) = setup() else { return };
    let directory = tempfile::tempdir().expect("temp dir");
    let name = format!("[127.0.0.1]:{}", target_port());
    std::fs::write(directory.path().join("known_hosts"), known_line(&setup, &name, "host_other")).expect("an old key");
    let config = own_config(&setup, directory.path(), target_port(), "");
    let settings = json!({ "host": "target", "configFile": config });
    let workspace = support::workspace_with(&[]);
    let server = Server::start();
    let error = connect_error(&server, settings.clone(), workspace.path());
    assert_eq!(error.kind.as_deref(), Some("hostKeyChanged"), "{error:?}");
    let expected = fingerprint_of(&setup.directory.join("host_target.pub"));
    assert_eq!(error.data["fingerprint"], expected);
    assert!(error.message.contains("CHANGED"), "{}", error.message);

    // The command line does what the request does.
    let output = Command::new(support::binary())
        .args(["accept-host-key", "target", &expected, "--config-file", &config])
        .output()
        .expect("sandlink runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let known = std::fs::read_to_string(directory.path().join("known_hosts")).expect("known_hosts");
    assert_eq!(known, known_line(&setup, &name, "host_target"), "the old key is replaced, not kept beside");
    let session = server.connect("ssh", settings, workspace.path());
    assert_eq!(session["state"], "active");
}

#[test]
fn a_key_the_host_refuses_should_be_credentials_missing_naming_the_keys_tried() {
    let Some(setup) = setup() else { return };
    let directory = tempfile::tempdir().expect("temp dir");
    let wrong_key = setup.directory.join("wrong_client");
    let options = format!("    IdentityFile {}\n", wrong_key.display());
    let name = format!("[127.0.0.1]:{}", target_port());
    std::fs::write(directory.path().join("known_hosts"), known_line(&setup, &name, "host_target")).expect("known");
    // Only the wrong key: the alias's own IdentityFile comes first, and `Host *` is not reached for another.
    let config = own_config(&setup, directory.path(), target_port(), &options);
    let text = std::fs::read_to_string(&config).expect("config");
    let only_wrong = text.replace(&format!("Host *\n    IdentityFile {}\n", setup.directory.join("client").display()), "");
    assert_ne!(text, only_wrong, "the right key is taken out");
    std::fs::write(&config, only_wrong).expect("write config");
    let workspace = support::workspace_with(&[]);
    let server = Server::start();
    let error = connect_error(&server, json!({ "host": "target", "configFile": config }), workspace.path());
    assert_eq!(error.kind.as_deref(), Some("credentialsMissing"), "{error:?}");
    assert!(error.message.contains(&wrong_key.display().to_string()), "names the key tried: {}", error.message);
    let secret = std::fs::read_to_string(&wrong_key).expect("the private key");
    let secret_body = secret.lines().nth(1).expect("a key line");
    assert!(!error.message.contains(secret_body), "never the key itself: {}", error.message);
}

#[test]
fn an_unreachable_host_should_fail_clearly_within_a_bounded_time() {
    let Some(setup) = setup() else { return };
    let closed_port = parity::free_port();
    let workspace = support::workspace_with(&[]);
    let server = Server::start();
    let started = Instant::now();
    let error = connect_error(&server, json!({ "host": format!("nobody@127.0.0.1:{closed_port}"), "configFile": setup.config }), workspace.path());
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    assert_eq!(error.kind.as_deref(), Some("driverUnavailable"), "{error:?}");
    assert!(error.message.contains("Could not reach") && error.message.contains("refused"), "{}", error.message);
}

/// A TCP proxy in front of the target sshd whose open connections the test can cut, as a network drop does.
struct Proxy {
    port: u16,
    connections: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(to: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("address").port();
        let connections: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let held = connections.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else { continue };
                held.lock().unwrap().extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                for (mut from, mut into) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut into);
                        let _ = into.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy { port, connections }
    }

    /// Cuts every connection through the proxy; new ones are still let through.
    fn cut(&self) {
        for connection in self.connections.lock().unwrap().drain(..) {
            let _ = connection.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// The settings of a session through `proxy` (the target's host key filed under the proxy's address).
fn through(setup: &Setup, directory: &Path, port: u16) -> Value {
    let name = format!("[127.0.0.1]:{port}");
    std::fs::write(directory.join("known_hosts"), known_line(setup, &name, "host_target")).expect("known");
    let config = own_config(setup, directory, port, "    ServerAliveInterval 1\n    ServerAliveCountMax 2\n");
    json!({ "host": "target", "configFile": config, "keepAlive": 1 })
}

/// Counts to 40 on both streams, leaving a file `reached` in the root once it is a few lines in.
const COUNTING: &str =
    "i=0; while [ $i -lt 40 ]; do i=$((i + 1)); echo out-$i; echo err-$i >&2; [ $i -ne 4 ] || : >reached; sleep 0.05; done";

/// Waits until the counting run is a few lines in (its file shows in the remote root, which is on this machine).
fn wait_until_reached(session: &Value) {
    let marker = Path::new(session["remoteRoot"].as_str().expect("remoteRoot")).join("reached");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "the run did not start counting");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn expected_counting(stream: &str) -> String {
    (1..=40).map(|i| format!("{stream}-{i}\n")).collect()
}

#[test]
fn a_run_should_survive_a_dropped_connection_with_its_output_complete() {
    let Some(setup) = setup() else { return };
    let proxy = Proxy::start(target_port());
    let directory = tempfile::tempdir().expect("temp dir");
    let settings = through(&setup, directory.path(), proxy.port);
    let workspace = support::workspace_with(&[]);
    let server = Server::start();
    let session = server.connect("ssh", settings, workspace.path());
    let session_id = session["sessionId"].as_str().expect("id").to_string();
    let run_id = server.start_run(json!({ "sessionId": session_id, "command": COUNTING }));
    wait_until_reached(&session);
    proxy.cut();
    let outcome = server.collect_run(&run_id, Duration::from_secs(60));
    assert_eq!(outcome.stdout, expected_counting("out"), "nothing lost, nothing repeated");
    assert_eq!(outcome.stderr, expected_counting("err"));
    assert_eq!(outcome.exit_code(), Some(0), "{}", outcome.exit);
    // The session goes on over the new connection.
    let after = server.run_to_exit(json!({ "sessionId": session_id, "command": "echo after" }));
    assert_eq!(after.stdout, "after\n");
}

#[test]
fn a_sync_cut_off_by_a_dropped_connection_should_be_finished_by_the_next_one() {
    let Some(setup) = setup() else { return };
    let proxy = Proxy::start(target_port());
    let directory = tempfile::tempdir().expect("temp dir");
    let mut settings = through(&setup, directory.path(), proxy.port);
    settings["sync"] = json!({ "watch": "off" });
    let workspace = tempfile::tempdir().expect("workspace");
    let mut expected = Vec::new();
    for index in 0..24u32 {
        let data: Vec<u8> = (0..1_000_000u32).map(|byte| (byte.wrapping_mul(2_654_435_761).wrapping_add(index) >> 13) as u8).collect();
        let name = format!("data/part{index:02}.bin");
        std::fs::create_dir_all(workspace.path().join("data")).expect("mkdir");
        std::fs::write(workspace.path().join(&name), &data).expect("write");
        expected.push((name, data));
    }
    let server = Server::start();
    let session = server
        .request(
            "sandlink/connect",
            json!({ "driver": "ssh", "settings": settings, "workspaceFolder": support::file_uri(workspace.path()), "sync": false }),
        )
        .expect("connect without syncing");
    let session_id = session["sessionId"].as_str().expect("id").to_string();
    let root = PathBuf::from(session["remoteRoot"].as_str().expect("remoteRoot"));

    // Cut the connection as soon as the first batch is being unpacked on the remote.
    let connections = proxy.connections.clone();
    let staging = root.join(".sandlink-staging");
    let cutter = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::fs::read_dir(&staging).is_ok_and(|mut entries| entries.next().is_some()) {
                for connection in connections.lock().unwrap().drain(..) {
                    let _ = connection.shutdown(std::net::Shutdown::Both);
                }
                return true;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        false
    });
    let first = server.request_timeout("sandlink/sync", json!({ "sessionId": session_id, "direction": "up" }), Duration::from_secs(120));
    assert!(cutter.join().expect("the cutter ends"), "the connection was cut while a batch was on its way");
    let second = server
        .request_timeout("sandlink/sync", json!({ "sessionId": session_id, "direction": "up" }), Duration::from_secs(120))
        .expect("the next sync goes through on a new connection");
    let sent_second = second["uploaded"].as_u64().expect("uploaded");
    match &first {
        // Finished on a new connection already: nothing is left.
        Ok(result) => assert_eq!((result["uploaded"].as_u64(), sent_second), (Some(24), 0), "{result} {second}"),
        // Broken off: the next sync sends what was not confirmed, never more than everything.
        Err(error) => assert!((1..=24).contains(&sent_second), "{error:?} {second}"),
    }
    for (name, data) in &expected {
        assert!(std::fs::read(root.join(name)).ok().as_ref() == Some(data), "{name} arrived whole");
    }
}

#[test]
fn a_preview_should_be_forwarded_again_after_the_connection_drops() {
    let Some(setup) = setup() else { return };
    let proxy = Proxy::start(target_port());
    let directory = tempfile::tempdir().expect("temp dir");
    let settings = through(&setup, directory.path(), proxy.port);
    let workspace = support::workspace_with(&[("index.html", "sandlink-preview\n")]);
    let server = Server::start();
    let session = server.connect("ssh", settings, workspace.path());
    let session_id = session["sessionId"].as_str().expect("id").to_string();
    let port = parity::free_port();
    let run_id = server.start_run(json!({ "sessionId": session_id, "command": format!("exec python3 -m http.server {port} --bind 127.0.0.1") }));
    let url = server.request("sandlink/preview", json!({ "sessionId": session_id, "port": port })).expect("preview")["url"]
        .as_str()
        .expect("url")
        .to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert!(parity::http_get_with_retry(&url, Duration::from_secs(20)).contains("sandlink-preview"));
    proxy.cut();
    // The same URL answers again once the connection is back, with nothing asked of sandlink meanwhile.
    assert!(parity::http_get_with_retry(&url, Duration::from_secs(30)).contains("sandlink-preview"));
    server.request("sandlink/cancel", json!({ "runId": run_id })).expect("cancel the server");
    server.collect_run(&run_id, Duration::from_secs(30));
}

/// A 256 KiB tmpfs owned by the test user, unmounted when dropped: a remote disk that fills up.
struct SmallDisk {
    _parent: tempfile::TempDir,
    path: PathBuf,
}

impl SmallDisk {
    fn mount(user: &str) -> SmallDisk {
        let parent = tempfile::tempdir().expect("temp dir");
        std::fs::set_permissions(parent.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        let path = parent.path().join("disk");
        std::fs::create_dir(&path).expect("mount point");
        let uid = Command::new("id").args(["-u", user]).output().expect("id runs");
        let uid = String::from_utf8_lossy(&uid.stdout).trim().to_string();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size=256k,uid={uid},mode=0755"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("mount runs");
        assert!(status.success(), "a small tmpfs can be mounted (the tests run as root)");
        SmallDisk { _parent: parent, path }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[test]
fn a_full_remote_disk_should_leave_nothing_half_written_in_place() {
    let Some(setup) = setup() else { return };
    let user = std::env::var("SANDLINK_SSH_USER").unwrap_or_else(|_| "sandlinkssh".into());
    let disk = SmallDisk::mount(&user);
    let workspace = support::workspace_with(&[("small.txt", "old\n")]);
    let server = Server::start();
    let settings = json!({ "host": setup.host, "configFile": setup.config, "root": disk.path.display().to_string(), "sync": { "watch": "off" } });
    let session = server.connect("ssh", settings, workspace.path());
    let session_id = session["sessionId"].as_str().expect("id").to_string();
    assert_eq!(std::fs::read_to_string(disk.path.join("small.txt")).expect("synced on connect"), "old\n");

    // One batch: the edit fits, the big file does not.
    std::fs::write(workspace.path().join("small.txt"), "new\n").expect("edit");
    let incompressible: Vec<u8> = (0..1_000_000u32).map(|index| (index.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(workspace.path().join("big.bin"), incompressible).expect("a big file");
    let error = server.request_error("sandlink/sync", json!({ "sessionId": session_id, "direction": "up" }));
    assert_eq!(error.kind.as_deref(), Some("remoteError"), "{error:?}");
    assert_eq!(std::fs::read_to_string(disk.path.join("small.txt")).expect("still there"), "old\n", "nothing of the failed batch is in place");
    assert!(!disk.path.join("big.bin").exists(), "no half-written file in place");
    let staging = disk.path.join(".sandlink-staging");
    assert!(!staging.exists() || std::fs::read_dir(&staging).expect("staging").next().is_none(), "the staging area is cleaned up");

    // Once there is room again, the same sync goes through.
    std::fs::remove_file(workspace.path().join("big.bin")).expect("remove the big file");
    let again = server.request("sandlink/sync", json!({ "sessionId": session_id, "direction": "up" })).expect("sync with room");
    assert_eq!(again["uploaded"], 1, "{again}");
    assert_eq!(std::fs::read_to_string(disk.path.join("small.txt")).expect("synced"), "new\n");
    server.request("sandlink/disconnect", json!({ "sessionId": session_id })).expect("disconnect");
    assert!(disk.path.join("small.txt").exists(), "a root the user named is never removed");
}

/// An sshd of the test's own on a free port, so restarting it touches no other test's connections.
struct OwnSshd {
    port: u16,
    pid_file: PathBuf,
    config: PathBuf,
}

impl OwnSshd {
    fn start(setup: &Setup, directory: &Path) -> OwnSshd {
        let port = parity::free_port();
        let pid_file = directory.join("sshd.pid");
        let shared = std::fs::read_to_string(setup.directory.join("sshd_target.conf")).expect("the target's sshd config");
        let text: String = shared
            .lines()
            .map(|line| {
                if line.starts_with("Port ") {
                    format!("Port {port}")
                } else if line.starts_with("PidFile ") {
                    format!("PidFile {}", pid_file.display())
                } else {
                    line.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let config = directory.join("sshd.conf");
        std::fs::write(&config, text + "\n").expect("write sshd config");
        let sshd = OwnSshd { port, pid_file, config };
        sshd.launch();
        sshd
    }

    fn launch(&self) {
        let log = self.config.with_extension("log");
        let status = Command::new("/usr/sbin/sshd").arg("-f").arg(&self.config).arg("-E").arg(&log).status().expect("sshd starts");
        assert!(status.success(), "sshd started");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "sshd listens on {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(&self.pid_file).ok()?.trim().parse().ok()
    }

    /// Stops the daemon and every connection it serves, as a restart of the service does.
    fn stop(&self) {
        let Some(pid) = self.pid() else { return };
        // Its per-connection sshd processes first, then the listener; what users started goes on, as with
        // `systemctl restart ssh`.
        for child in descendants_of(pid as u32) {
            let name = std::fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
            if name.trim() == "sshd" {
                unsafe { libc::kill(child as i32, libc::SIGKILL) };
            }
        }
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

/// Every live descendant of `pid`, read from /proc.
fn descendants_of(pid: u32) -> Vec<u32> {
    let parent_of = |child: u32| -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
        stat[stat.rfind(')')? + 1..].split_whitespace().nth(1)?.parse().ok()
    };
    let all: Vec<u32> = std::fs::read_dir("/proc")
        .map(|entries| entries.flatten().filter_map(|entry| entry.file_name().to_string_lossy().parse().ok()).collect())
        .unwrap_or_default();
    let mut found = vec![pid];
    let mut index = 0;
    while index < found.len() {
        let parent = found[index];
        found.extend(all.iter().copied().filter(|child| parent_of(*child) == Some(parent)));
        index += 1;
    }
    found.remove(0);
    found
}

impl Drop for OwnSshd {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn a_run_should_survive_an_sshd_restart_and_the_session_go_on() {
    let Some(setup) = setup() else { return };
    let directory = tempfile::tempdir().expect("temp dir");
    let sshd = OwnSshd::start(&setup, directory.path());
    let settings = through(&setup, directory.path(), sshd.port);
    let workspace = support::workspace_with(&[("a.txt", "before\n")]);
    let server = Server::start();
    let session = server.connect("ssh", settings, workspace.path());
    let session_id = session["sessionId"].as_str().expect("id").to_string();
    let run_id = server.start_run(json!({ "sessionId": session_id, "command": COUNTING }));
    wait_until_reached(&session);
    sshd.stop();
    std::thread::sleep(Duration::from_millis(500));
    sshd.launch();
    let outcome = server.collect_run(&run_id, Duration::from_secs(60));
    assert_eq!(outcome.stdout, expected_counting("out"), "the run went on while sshd was down: {}", outcome.exit);
    assert_eq!(outcome.exit_code(), Some(0), "{}", outcome.exit);
    std::fs::write(workspace.path().join("a.txt"), "after\n").expect("edit");
    let synced = server.request("sandlink/sync", json!({ "sessionId": session_id, "direction": "up" })).expect("sync after the restart");
    assert_eq!(synced["uploaded"], 1, "{synced}");
    let after = server.run_to_exit(json!({ "sessionId": session_id, "command": "cat a.txt" }));
    assert_eq!(after.stdout, "after\n");
}

#[test]
fn a_restarted_server_should_reattach_to_the_same_root_without_reuploading() {
    let Some(fixture) = ssh_fixture() else { return };
    let state = tempfile::tempdir().expect("a state directory shared by both servers");
    let workspace = support::workspace_with(&[("kept.txt", "kept\n")]);
    let start = || {
        Server::start_with(StartOptions {
            state_dir: Some(state.path().to_path_buf()),
            root: Some(workspace.path().to_path_buf()),
            ..StartOptions::default()
        })
    };
    let (session_id, root) = {
        let first = start();
        let session = first.connect("ssh", fixture.settings.clone(), workspace.path());
        first.run_to_exit(json!({ "sessionId": session["sessionId"], "command": "echo made-remotely > artefact" }));
        (session["sessionId"].as_str().expect("id").to_string(), session["remoteRoot"].as_str().expect("root").to_string())
        // The server shuts down as an editor closes it; sessions are kept on exit by default.
    };
    assert!(Path::new(&root).join("artefact").exists(), "the kept root outlives its server");
    let second = start();
    let again = second.connect("ssh", fixture.settings.clone(), workspace.path());
    assert_eq!(again["sessionId"], session_id.as_str(), "the same session comes back");
    assert_eq!(again["remoteRoot"], root.as_str(), "in the same root");
    let outcome = second.run_to_exit(json!({ "sessionId": session_id, "command": "cat artefact kept.txt" }));
    assert_eq!(outcome.stdout, "made-remotely\nkept\n");
    let resync = second.request("sandlink/sync", json!({ "sessionId": session_id })).expect("resync");
    assert_eq!(resync["uploaded"], 0, "nothing is uploaded again: {resync}");
    second.request("sandlink/disconnect", json!({ "sessionId": session_id })).expect("disconnect");
    assert!(!Path::new(&root).exists(), "a real disconnect removes sandlink's own root");
}

#[test]
fn a_killed_server_should_leave_no_ssh_master_behind() {
    let Some(fixture) = ssh_fixture() else { return };
    // A TMPDIR of its own, where this server's masters keep their control sockets, tells its masters from others.
    let temp = tempfile::tempdir().expect("a temporary directory for the server");
    let state = tempfile::tempdir().expect("a state directory shared by both servers");
    let workspace = support::workspace_with(&[("a.txt", "a\n")]);
    let start = || {
        Server::start_with(StartOptions {
            state_dir: Some(state.path().to_path_buf()),
            root: Some(workspace.path().to_path_buf()),
            env: vec![
                ("TMPDIR".into(), temp.path().display().to_string()),
                ("SANDLINK_SSH_MASTER_LINGER_SECONDS".into(), "2".into()),
            ],
            ..StartOptions::default()
        })
    };
    let marker = temp.path().display().to_string();
    let masters = || -> Vec<u32> {
        let all: Vec<u32> = std::fs::read_dir("/proc")
            .map(|entries| entries.flatten().filter_map(|entry| entry.file_name().to_string_lossy().parse().ok()).collect())
            .unwrap_or_default();
        all.into_iter()
            .filter(|pid| {
                let command_line = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let command_line = String::from_utf8_lossy(&command_line).replace('\0', " ");
                command_line.starts_with("ssh ") && command_line.contains(" -M ") && command_line.contains(&marker)
            })
            .collect()
    };
    let first = start();
    let session = first.connect("ssh", fixture.settings.clone(), workspace.path());
    let session_id = session["sessionId"].as_str().expect("id").to_string();
    first.run_to_exit(json!({ "sessionId": session_id, "command": "true" }));
    assert!(!masters().is_empty(), "the session's master runs while its server does");
    // Killed as a crash would: nothing of the server gets to close its master.
    unsafe { libc::kill(first.pid() as i32, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !masters().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(masters(), Vec::<u32>::new(), "the killed server's ssh master ends once it has no channel left");
    drop(first);
    // The next server re-attaches to the orphaned session through a master of its own, and removes the sandbox.
    let second = start();
    let again = second
        .request("sandlink/connect", json!({ "reuse": session_id, "workspaceFolder": support::file_uri(workspace.path()) }))
        .expect("re-attach the orphaned session");
    assert_eq!(again["sessionId"], session_id.as_str(), "the orphaned session comes back");
    assert_eq!(second.run_to_exit(json!({ "sessionId": session_id, "command": "cat a.txt" })).stdout, "a\n");
    second.request("sandlink/disconnect", json!({ "sessionId": session_id })).expect("disconnect");
}

#[test]
fn a_workspace_ssh_profile_should_need_trust_before_anything_is_sent() {
    let Some(setup) = setup() else { return };
    let config_directory = tempfile::tempdir().expect("config dir");
    let workspace = support::workspace_with(&[("a.txt", "a\n")]);
    let profile = format!("[profiles.box]\ndriver = \"ssh\"\nhost = \"{}\"\nconfigFile = \"{}\"\n", setup.host, setup.config);
    std::fs::write(workspace.path().join(".sandlink.toml"), profile).expect("write .sandlink.toml");
    let server = Server::start_with(StartOptions {
        root: Some(workspace.path().to_path_buf()),
        env: vec![("SANDLINK_CONFIG_DIR".into(), config_directory.path().display().to_string())],
        ..StartOptions::default()
    });
    let error = server.request_error("sandlink/connect", json!({ "profile": "box" }));
    assert_eq!(error.kind.as_deref(), Some("workspaceNotTrusted"), "{error:?}");
    server
        .request("sandlink/trustWorkspace", json!({ "workspaceFolder": support::file_uri(workspace.path()), "trust": true }))
        .expect("trust");
    let session = server.request("sandlink/connect", json!({ "profile": "box" })).expect("a trusted workspace connects");
    assert_eq!(session["driver"], "ssh");
}

