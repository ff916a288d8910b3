//! Credentials through the protocol against a real Secret Service (a private D-Bus session bus and gnome-keyring
//! with a temporary HOME, started per test): store, use on connect, delete; the clear error without a session bus;
//! environment overrides; and a known secret that appears nowhere but in the request that set it.
//!
//! The `keyed` test driver (enabled by `SANDLINK_TEST_DRIVERS=1`) needs the credential `token` and checks its BLAKE3
//! hash against its `expectedTokenHash` setting, so a connect proves the right value arrived without printing it.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};

use support::{file_uri, skip_unless, workspace_with, Server, StartOptions};

const BUS_CONFIG: &str = r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:tmpdir=/tmp</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#;

/// A private session bus with gnome-keyring's Secret Service on it; both are killed on drop.
struct Keychain {
    bus: Child,
    keyring: Child,
    address: String,
    home: tempfile::TempDir,
}

impl Keychain {
    fn start() -> Option<Keychain> {
        let have = |tool: &str| Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|out| out.status.success());
        if !(have("dbus-daemon") && have("gnome-keyring-daemon")) {
            return None;
        }
        let home = tempfile::tempdir().expect("a temporary HOME");
        // A session bus without service activation: otherwise the first call for org.freedesktop.secrets can
        // auto-start a second, password-less gnome-keyring that wins the name and leaves the keyring locked.
        let config = home.path().join("bus.conf");
        std::fs::write(&config, BUS_CONFIG).expect("the bus configuration is written");
        let mut bus = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--print-address=1"])
            .env("HOME", home.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon starts");
        let mut address = String::new();
        BufReader::new(bus.stdout.take().expect("piped")).read_line(&mut address).expect("the bus prints its address");
        let address = address.trim().to_string();
        // The login keyring is created and unlocked with a password on stdin, the way a desktop login does it.
        let keyring = Command::new("sh")
            .args(["-c", "printf %s test-login-password | exec gnome-keyring-daemon --foreground --unlock --components=secrets"])
            .env("HOME", home.path())
            .env("DBUS_SESSION_BUS_ADDRESS", &address)
            .env("XDG_RUNTIME_DIR", home.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("gnome-keyring-daemon starts");
        let keychain = Keychain { bus, keyring, address, home };
        // Ready once the login collection exists and is unlocked. Storing before that asks for a prompt nobody can
        // answer, and a dismissed prompt leaves the collection locked for good, so readiness is only read here.
        for _ in 0..200 {
            if keychain.login_collection_unlocked() {
                return Some(keychain);
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        panic!("gnome-keyring did not come up on the private bus");
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("DBUS_SESSION_BUS_ADDRESS".into(), self.address.clone()),
            ("HOME".into(), self.home.path().display().to_string()),
            ("XDG_RUNTIME_DIR".into(), self.home.path().display().to_string()),
        ]
    }

    /// Runs secret-tool on the private bus; `None` when the service does not answer.
    fn secret_tool(&self, args: &[&str]) -> Option<String> {
        let output = Command::new("secret-tool")
            .args(args)
            .envs(self.env())
            .stderr(Stdio::piped())
            .output()
            .ok()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("org.freedesktop.DBus.Error") || stderr.contains("Cannot") {
            return None;
        }
        Some(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn login_collection_unlocked(&self) -> bool {
        let output = Command::new("dbus-send")
            .args([
                "--session",
                "--print-reply",
                "--dest=org.freedesktop.secrets",
                "/org/freedesktop/secrets/collection/login",
                "org.freedesktop.DBus.Properties.Get",
                "string:org.freedesktop.Secret.Collection",
                "string:Locked",
            ])
            .envs(self.env())
            .stderr(Stdio::null())
            .output();
        output.is_ok_and(|output| String::from_utf8_lossy(&output.stdout).contains("boolean false"))
    }

    /// What the Secret Service holds for sandlink's entry, read independently of sandlink.
    fn lookup(&self, profile: &str, key: &str) -> String {
        self.secret_tool(&["lookup", "service", "sandlink", "username", &format!("{profile}/{key}")]).unwrap_or_default()
    }
}

impl Drop for Keychain {
    fn drop(&mut self) {
        let _ = self.keyring.kill();
        let _ = self.keyring.wait();
        let _ = self.bus.kill();
        let _ = self.bus.wait();
    }
}

fn keychain_or_skip() -> Option<Keychain> {
    let have_secret_tool = Command::new("sh").args(["-c", "command -v secret-tool"]).output().is_ok_and(|out| out.status.success());
    let keychain = if have_secret_tool { Keychain::start() } else { None };
    if skip_unless(keychain.is_some(), "a Secret Service (run tests/setup/keyring.sh)") {
        return None;
    }
    keychain
}

fn hash(value: &str) -> String {
    blake3::hash(value.as_bytes()).to_hex().to_string()
}

struct Setup {
    server: Server,
    config: tempfile::TempDir,
    workspace: tempfile::TempDir,
    state: tempfile::TempDir,
}

fn start(extra_env: Vec<(String, String)>) -> Setup {
    let config = tempfile::tempdir().expect("config dir");
    let state = tempfile::tempdir().expect("state dir");
    let workspace = workspace_with(&[("app.txt", "app\n")]);
    let mut env = vec![
        ("SANDLINK_CONFIG_DIR".to_string(), config.path().display().to_string()),
        ("SANDLINK_TEST_DRIVERS".to_string(), "1".to_string()),
    ];
    env.extend(extra_env);
    let server = Server::start_with(StartOptions {
        root: Some(workspace.path().to_path_buf()),
        state_dir: Some(state.path().to_path_buf()),
        env,
        ..StartOptions::default()
    });
    Setup { server, config, workspace, state }
}

fn save_keyed_profile(server: &Server, name: &str, token: &str) {
    server
        .request("sandlink/saveProfile", json!({ "name": name, "driver": "keyed", "settings": { "expectedTokenHash": hash(token) } }))
        .expect("the profile is saved");
}

fn profile_entry(server: &Server, name: &str) -> Value {
    let listed = server.request("sandlink/profiles", json!({})).expect("profiles");
    listed["profiles"]
        .as_array()
        .and_then(|profiles| profiles.iter().find(|profile| profile["name"] == name).cloned())
        .unwrap_or_else(|| panic!("profile {name} is listed: {listed}"))
}

#[test]
fn a_credential_should_be_stored_in_the_keychain_used_on_connect_and_deleted() {
    let Some(keychain) = keychain_or_skip() else { return };
    let token = "keychain-token-7f3a9c0d";
    let Setup { server, config: _config, workspace, state: _state } = start(keychain.env());
    save_keyed_profile(&server, "cloud", token);
    let before = profile_entry(&server, "cloud");
    assert_eq!(before["hasCredentials"], false);
    assert_eq!(before["missingCredentials"], json!(["token"]));
    let error = server.request_error("sandlink/connect", json!({ "profile": "cloud" }));
    assert_eq!(error.kind.as_deref(), Some("credentialsMissing"));
    assert!(error.message.contains("set-credential cloud token") && error.message.contains("SANDLINK_KEYED_TOKEN"), "{}", error.message);

    server.request("sandlink/setCredential", json!({ "profile": "cloud", "key": "token", "value": token })).expect("stored");
    assert_eq!(keychain.lookup("cloud", "token"), token, "the Secret Service itself holds the value");
    assert_eq!(profile_entry(&server, "cloud")["hasCredentials"], true);
    let session = server
        .request("sandlink/connect", json!({ "profile": "cloud", "workspaceFolder": file_uri(workspace.path()) }))
        .expect("the keychain's token reaches the driver");
    let outcome = server.run_to_exit(json!({ "sessionId": session["sessionId"], "command": "cat app.txt" }));
    assert_eq!(outcome.stdout, "app\n");

    let unknown_key = server.request_error("sandlink/setCredential", json!({ "profile": "cloud", "key": "tokn", "value": "x" }));
    assert_eq!(unknown_key.kind.as_deref(), Some("invalidParams"));
    assert!(unknown_key.message.contains("token"), "{}", unknown_key.message);

    server.request("sandlink/deleteCredential", json!({ "profile": "cloud", "key": "token" })).expect("deleted");
    assert_eq!(keychain.lookup("cloud", "token"), "", "gone from the Secret Service");
    assert_eq!(profile_entry(&server, "cloud")["hasCredentials"], false);
    let error = server.request_error("sandlink/connect", json!({ "profile": "cloud" }));
    assert_eq!(error.kind.as_deref(), Some("credentialsMissing"));

    server.request("sandlink/setCredential", json!({ "profile": "cloud", "key": "token", "value": token })).expect("stored");
    server.request("sandlink/deleteProfile", json!({ "name": "cloud" })).expect("profile deleted");
    assert_eq!(keychain.lookup("cloud", "token"), "", "deleting a profile deletes its credentials");
}

#[test]
fn without_a_session_bus_the_error_should_say_so_and_name_the_environment_variable() {
    let runtime = tempfile::tempdir().expect("an empty runtime dir");
    let no_bus = vec![
        ("DBUS_SESSION_BUS_ADDRESS".to_string(), String::new()),
        ("XDG_RUNTIME_DIR".to_string(), runtime.path().display().to_string()),
    ];
    let Setup { server, config: _config, workspace: _workspace, state: _state } = start(no_bus);
    save_keyed_profile(&server, "ci", "env-token-123456");
    let error = server.request_error("sandlink/setCredential", json!({ "profile": "ci", "key": "token", "value": "env-token-123456" }));
    assert_eq!(error.kind.as_deref(), Some("keychainUnavailable"));
    assert!(error.message.contains("session bus"), "{}", error.message);
    assert!(error.message.contains("SANDLINK_KEYED_TOKEN"), "{}", error.message);
    assert!(!error.message.contains("env-token-123456"));
    let error = server.request_error("sandlink/connect", json!({ "profile": "ci" }));
    assert_eq!(error.kind.as_deref(), Some("credentialsMissing"));
    assert!(error.message.contains("SANDLINK_KEYED_TOKEN") && error.message.contains("keychain"), "{}", error.message);
    let listed = profile_entry(&server, "ci");
    assert_eq!(listed["hasCredentials"], false, "no crash, no plain-text fallback: {listed}");
    drop(server);
    let Setup { server, config: _config, workspace: _workspace, state: _state } = start(vec![
        ("DBUS_SESSION_BUS_ADDRESS".to_string(), String::new()),
        ("XDG_RUNTIME_DIR".to_string(), runtime.path().display().to_string()),
        ("SANDLINK_KEYED_TOKEN".to_string(), "env-token-123456".to_string()),
    ]);
    save_keyed_profile(&server, "ci", "env-token-123456");
    assert_eq!(profile_entry(&server, "ci")["hasCredentials"], true);
    server.request("sandlink/connect", json!({ "profile": "ci", "sync": false })).expect("the environment variable works without a keychain");
}

#[test]
fn the_environment_variable_should_override_the_keychain() {
    let Some(keychain) = keychain_or_skip() else { return };
    let mut env = keychain.env();
    env.push(("SANDLINK_KEYED_TOKEN".into(), "from-the-environment-1".into()));
    let Setup { server, config: _config, workspace: _workspace, state: _state } = start(env);
    save_keyed_profile(&server, "both", "from-the-environment-1");
    server.request("sandlink/setCredential", json!({ "profile": "both", "key": "token", "value": "from-the-keychain-2" })).expect("stored");
    server.request("sandlink/connect", json!({ "profile": "both", "sync": false })).expect("the environment's value wins");
}

/// Keeps a response (result or error) for the final search.
fn keep(messages: &mut Vec<Value>, result: Result<Value, support::RpcError>) {
    match result {
        Ok(value) => messages.push(value),
        Err(error) => messages.push(json!({ "message": error.message, "data": error.data })),
    }
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() && !path.is_symlink() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

#[test]
fn a_known_secret_should_appear_nowhere_but_in_the_request_that_set_it() {
    let Some(keychain) = keychain_or_skip() else { return };
    let secret = "SECRET-canary-5b1e8f2a9d";
    let mut env = keychain.env();
    env.push(("RUST_LOG".into(), "trace".into()));
    let Setup { server, config, workspace, state } = start(env);
    let mut messages: Vec<Value> = Vec::new();
    keep(&mut messages, server.request("sandlink/saveProfile", json!({ "name": "canary", "driver": "keyed", "settings": { "expectedTokenHash": hash(secret) } })));
    keep(&mut messages, server.request("sandlink/saveProfile", json!({ "name": "wrong", "driver": "keyed", "settings": { "expectedTokenHash": hash("other") } })));
    keep(&mut messages, server.request("sandlink/connect", json!({ "profile": "canary" })));
    server.request("sandlink/setCredential", json!({ "profile": "canary", "key": "token", "value": secret })).expect("stored");
    server.request("sandlink/setCredential", json!({ "profile": "wrong", "key": "token", "value": secret })).expect("stored");
    let session = server.request("sandlink/connect", json!({ "profile": "canary", "workspaceFolder": file_uri(workspace.path()) }));
    let session_id = session.as_ref().map(|session| session["sessionId"].clone()).unwrap_or(Value::Null);
    keep(&mut messages, session);
    keep(&mut messages, server.request("sandlink/connect", json!({ "profile": "wrong" })));
    keep(&mut messages, server.request("sandlink/setCredential", json!({ "profile": "nope", "key": "token", "value": secret })));
    keep(&mut messages, server.request("sandlink/setCredential", json!({ "profile": "canary", "key": "bad key", "value": secret })));
    keep(&mut messages, server.request("sandlink/saveProfile", json!({ "name": "leaky", "driver": "keyed", "settings": { "expectedTokenHash": "h", "token": secret } })));
    keep(&mut messages, server.request("sandlink/profiles", json!({})));
    keep(&mut messages, server.request("sandlink/sessions", json!({})));
    let outcome = server.run_to_exit(json!({ "sessionId": session_id, "command": "env; ls -la" }));
    messages.push(outcome.exit.clone());
    messages.extend(outcome.outputs.clone());
    keep(&mut messages, server.request("sandlink/disconnect", json!({ "sessionId": session_id, "keep": true })));
    keep(&mut messages, server.request("sandlink/sessions", json!({})));
    keep(&mut messages, server.request("sandlink/connect", json!({ "reuse": session_id })));
    messages.extend(server.history());
    let stderr_path = server.stderr_path.clone();
    drop(server);

    let log = std::fs::read_to_string(&stderr_path).expect("the server log");
    assert!(log.contains("TRACE") || log.contains("trace"), "the log was written at trace level");
    for message in &messages {
        assert!(!message.to_string().contains(secret), "a protocol message carries the secret: {message}");
    }
    for dir in [state.path(), config.path(), workspace.path()] {
        for file in files_under(dir) {
            let bytes = std::fs::read(&file).unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes);
            assert!(!text.contains(secret), "{} holds the secret", file.display());
        }
    }
    assert_eq!(keychain.lookup("canary", "token"), secret, "and it is in the keychain, where it belongs");
}

#[test]
fn the_command_line_should_store_a_credential_read_from_stdin() {
    let Some(keychain) = keychain_or_skip() else { return };
    let token = "cli-token-from-stdin-42";
    let Setup { server, config, workspace, state: _state } = start(keychain.env());
    save_keyed_profile(&server, "viacli", token);
    let mut child = Command::new(support::binary())
        .args(["profile", "set-credential", "viacli", "token"])
        .current_dir(workspace.path())
        .env("SANDLINK_CONFIG_DIR", config.path())
        .env("SANDLINK_TEST_DRIVERS", "1")
        .envs(keychain.env())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sandlink runs");
    child.stdin.take().expect("piped").write_all(format!("{token}\n").as_bytes()).expect("written");
    let output = child.wait_with_output().expect("finishes");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains(token) && !String::from_utf8_lossy(&output.stdout).contains(token));
    assert_eq!(keychain.lookup("viacli", "token"), token, "stored without the trailing newline");
    server.request("sandlink/connect", json!({ "profile": "viacli", "sync": false })).expect("usable by the server");
}

/// Agent tasks read their GitHub token from the task's profile in the keychain, whatever the profile's driver, and
/// deleting the profile deletes the token too.
#[test]
fn a_github_token_in_any_profile_should_reach_an_agent_tasks_git_and_go_with_the_profile() {
    let Some(keychain) = keychain_or_skip() else { return };
    let token = "ghp_keychainTaskToken0123456789";
    let Some(git) = support::fake::FakeProcess::start("git", "SANDLINK_GIT_FAKE_SERVER", "git_server.py", &["--token", token]) else {
        return;
    };
    git.admin("POST", "/_admin/repos", Some(json!({ "name": "acme/tools", "files": 3 })));
    let Setup { server, config: _config, workspace: _workspace, state: _state } = start(keychain.env());
    server.request("sandlink/saveProfile", json!({ "name": "tasks", "driver": "local" })).expect("the profile is saved");
    server
        .request("sandlink/setCredential", json!({ "profile": "tasks", "key": "githubToken", "value": token }))
        .expect("any profile may hold the GitHub token");
    assert_eq!(keychain.lookup("tasks", "githubToken"), token);

    let repo = format!("http://127.0.0.1:{}/acme/tools.git", git.port);
    let task = server
        .request_timeout("sandlink/task/start", json!({ "repo": repo, "taskId": "k1", "profile": "tasks" }), std::time::Duration::from_secs(120))
        .expect("the keychain's token clones");
    let session_id = task["sessionId"].as_str().expect("session");
    let edit = server.run_to_exit(json!({ "sessionId": session_id, "command": "echo k > k.txt" }));
    assert_eq!(edit.exit_code(), Some(0));
    server.request("sandlink/task/commit", json!({ "taskId": "k1", "message": "feat: k" })).expect("commits");
    let pushed = server
        .request_timeout("sandlink/task/push", json!({ "taskId": "k1" }), std::time::Duration::from_secs(120))
        .expect("the keychain's token pushes");
    let branches = git.admin("GET", "/_admin/repos/acme/tools", None)["branches"].clone();
    assert_eq!(branches["task-k1"], pushed["pushedCommit"]);
    server.request("sandlink/task/end", json!({ "taskId": "k1" })).expect("ended");

    server.request("sandlink/deleteProfile", json!({ "name": "tasks" })).expect("profile deleted");
    assert_eq!(keychain.lookup("tasks", "githubToken"), "", "deleting a profile deletes its GitHub token");
}
