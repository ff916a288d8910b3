//! End-to-end tests of the `docker` driver against a real dockerd: the shared parity behaviours plus what only
//! Docker has (safe defaults, published ports, faults from outside, orphan cleanup, the sync operations).
//!
//! They need `tests/setup/docker.sh` (a running daemon and the `sandlink-test:busybox` image). Outside CI they
//! skip when Docker is absent; under CI (`CI=true`) a missing Docker fails them.

mod support;
#[macro_use]
mod parity;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use parity::DriverFixture;
use support::{Server, StartOptions};

const IMAGE: &str = "sandlink-test:busybox";

/// Whether the daemon answers and the test image is there.
fn docker_ready() -> bool {
    Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn server_env() -> Vec<(String, String)> {
    std::env::var("DOCKER_HOST").map(|host| vec![("DOCKER_HOST".to_string(), host)]).unwrap_or_default()
}

fn docker_fixture() -> Option<DriverFixture> {
    if support::skip_unless(docker_ready(), "Docker with the sandlink-test:busybox image (tests/setup/docker.sh)") {
        return None;
    }
    Some(DriverFixture {
        driver: "docker",
        settings: json!({ "image": IMAGE }),
        server_env: server_env(),
        http_server_command: |port| format!("exec httpd -f -p {port} -h ."),
        sandbox_exists: |session| container_exists(&container_name(session)),
        guard: None,
    })
}

parity_tests!(docker_fixture);
sync_parity_tests!(docker_fixture);

fn container_name(session: &Value) -> String {
    format!("sandlink-{}", session["sessionId"].as_str().expect("sessionId"))
}

fn container_exists(name: &str) -> bool {
    Command::new("docker")
        .args(["container", "inspect", name])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// `docker inspect --format TEMPLATE NAME`, trimmed.
fn inspect(name: &str, template: &str) -> String {
    let output = Command::new("docker").args(["inspect", "--format", template, name]).output().expect("docker inspect runs");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn docker(args: &[&str]) -> String {
    let output = Command::new("docker").args(args).output().expect("docker runs");
    assert!(output.status.success(), "docker {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn start_server() -> Server {
    Server::start_with(StartOptions { env: server_env(), ..StartOptions::default() })
}

fn connect(server: &Server, settings: Value, files: &[(&str, &str)]) -> (tempfile::TempDir, Value) {
    let workspace = support::workspace_with(files);
    let session = server.connect("docker", settings, workspace.path());
    assert_eq!(session["state"], "active", "{session}");
    (workspace, session)
}

#[test]
fn drivers_should_list_docker_as_available_with_the_daemon_version() {
    if docker_fixture().is_none() {
        return;
    }
    let server = start_server();
    let drivers = server.request("sandlink/drivers", json!({})).expect("drivers");
    let docker = drivers["drivers"]
        .as_array()
        .and_then(|drivers| drivers.iter().find(|driver| driver["id"] == "docker"))
        .cloned()
        .expect("docker is listed");
    assert_eq!(docker["available"], true, "{docker}");
    assert!(docker["detail"].as_str().is_some_and(|detail| detail.contains("API")), "{docker}");
    assert_eq!(docker["capabilities"]["cancel"], true);
}

#[test]
fn image_choices_should_offer_the_dev_container_image_first_then_local_images_and_docker_asks_for_one() {
    if docker_fixture().is_none() {
        return;
    }
    let server = start_server();
    let drivers = server.request("sandlink/drivers", json!({})).expect("drivers");
    let docker = drivers["drivers"].as_array().and_then(|all| all.iter().find(|driver| driver["id"] == "docker")).cloned().expect("docker");
    let asked: Vec<&str> = docker["settings"]
        .as_array()
        .expect("settings")
        .iter()
        .filter(|setting| setting["askAtConnect"] == true)
        .filter_map(|setting| setting["name"].as_str())
        .collect();
    assert_eq!(asked, ["image"], "{docker}");

    let workspace = support::workspace_with(&[(
        ".devcontainer/devcontainer.json",
        "// the team's image\n{ \"name\": \"web\", \"image\": \"node:20-bookworm\", /* pinned */ \"forwardPorts\": [3000,], }\n",
    )]);
    let choices = server
        .request("sandlink/settingChoices", json!({ "driver": "docker", "setting": "image", "workspaceFolder": support::file_uri(workspace.path()) }))
        .expect("choices");
    let choices = choices["choices"].as_array().expect("a list").clone();
    assert_eq!(choices[0]["value"], "node:20-bookworm", "{choices:?}");
    assert_eq!(choices[0]["detail"], "from .devcontainer/devcontainer.json");
    let local = choices.iter().find(|choice| choice["value"] == IMAGE).expect("the daemon's test image is offered");
    assert!(local["detail"].as_str().is_some_and(|detail| detail.starts_with("local image, ")), "{local}");

    let unknown = server
        .request("sandlink/settingChoices", json!({ "driver": "docker", "setting": "colour" }))
        .expect_err("no such setting");
    assert_eq!(unknown.kind.as_deref(), Some("invalidParams"));
    assert!(unknown.message.contains("image") && unknown.message.contains("container"), "{}", unknown.message);
    let none = server.request("sandlink/settingChoices", json!({ "driver": "docker", "setting": "cpus" })).expect("none");
    assert_eq!(none["choices"], json!([]));
}

#[test]
fn connect_should_refuse_bad_settings_and_a_missing_image_before_creating_anything() {
    if docker_fixture().is_none() {
        return;
    }
    let server = start_server();
    let workspace = support::workspace_with(&[]);
    let before = docker(&["ps", "-aq", "--filter", "label=sandlink.driver=docker"]).lines().count();
    for (settings, expected) in [
        (json!({}), "image"),
        (json!({ "image": IMAGE, "colour": "red" }), "colour"),
        (json!({ "image": IMAGE, "network": "host" }), "network"),
        (json!({ "image": IMAGE, "memory": "lots" }), "memory"),
        (json!({ "image": "sandlink-test:does-not-exist" }), "docker pull"),
        (json!({ "container": "sandlink-no-such-container" }), "docker ps"),
    ] {
        let error = server.request_error(
            "sandlink/connect",
            json!({ "driver": "docker", "settings": settings, "workspaceFolder": support::file_uri(workspace.path()) }),
        );
        assert_eq!(error.kind.as_deref(), Some("invalidParams"), "{settings}: {error:?}");
        assert!(error.message.contains(expected), "{settings}: the message names the problem: {}", error.message);
    }
    let after = docker(&["ps", "-aq", "--filter", "label=sandlink.driver=docker"]).lines().count();
    assert!(after <= before, "no container was created for refused settings");
}

#[test]
fn created_containers_should_have_safe_defaults_limits_and_session_labels() {
    if docker_fixture().is_none() {
        return;
    }
    let server = start_server();
    let settings = json!({ "image": IMAGE, "cpus": 0.5, "memory": "256m", "env": { "GREETING": "hi" }, "user": "1000:1000" });
    let (_workspace, session) = connect(&server, settings, &[("a.txt", "a\n")]);
    let name = container_name(&session);
    assert_eq!(inspect(&name, "{{json .HostConfig.SecurityOpt}}"), r#"["no-new-privileges"]"#);
    assert_eq!(inspect(&name, "{{json .HostConfig.CapDrop}}"), r#"["ALL"]"#);
    assert!(!inspect(&name, "{{json .HostConfig.CapAdd}}").contains("SYS_ADMIN"));
    assert_eq!(inspect(&name, "{{.HostConfig.PidsLimit}}"), "4096");
    assert_eq!(inspect(&name, "{{.HostConfig.NanoCpus}}"), "500000000");
    assert_eq!(inspect(&name, "{{.HostConfig.Memory}}"), (256u64 << 20).to_string());
    assert_eq!(inspect(&name, r#"{{index .Config.Labels "sandlink.session"}}"#), session["sessionId"].as_str().unwrap());
    let outcome = server.run_to_exit(json!({
        "sessionId": session["sessionId"], "command": "id -u; echo $GREETING; cat a.txt; touch made-by-run && echo ok"
    }));
    assert_eq!(outcome.stdout, "1000\nhi\na\nok\n", "runs are the configured user and see the env: {outcome:?}");
}

#[test]
fn preview_should_serve_a_published_port_on_loopback() {
    if docker_fixture().is_none() {
        return;
    }
    let server = start_server();
    let (_workspace, session) =
        connect(&server, json!({ "image": IMAGE, "ports": [8080] }), &[("index.html", "sandlink-preview\n")]);
    let session_id = session["sessionId"].clone();
    let run_id = server.start_run(json!({ "sessionId": session_id, "command": "exec httpd -f -p 8080 -h ." }));
    let url = server.request("sandlink/preview", json!({ "sessionId": session_id, "port": 8080 })).expect("preview")["url"]
        .as_str()
        .expect("url")
        .to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "published ports are on loopback: {url}");
    assert!(!url.ends_with(":8080"), "the host port is ephemeral: {url}");
    let body = parity::http_get_with_retry(&url, Duration::from_secs(20));
    assert!(body.contains("sandlink-preview"), "{body}");
    server.request("sandlink/cancel", json!({ "runId": run_id })).expect("cancel");
    server.collect_run(&run_id, Duration::from_secs(30));
}

#[test]
fn status_should_report_cpu_and_memory() {
    if docker_fixture().is_none() {
        return;
    }
    let server = start_server();
    let (_workspace, session) = connect(&server, json!({ "image": IMAGE }), &[]);
    let status = server.request("sandlink/status", json!({ "sessionId": session["sessionId"] })).expect("status");
    assert!(status["resources"]["memoryBytes"].as_u64().is_some_and(|bytes| bytes > 0), "{status}");
    assert!(status["resources"]["cpuPercent"].is_number(), "{status}");
}

#[test]
fn a_container_killed_mid_run_should_end_the_run_and_turn_the_session_to_error() {
    if docker_fixture().is_none() {
        return;
    }
    let server = start_server();
    let (_workspace, session) = connect(&server, json!({ "image": IMAGE }), &[]);
    let session_id = session["sessionId"].as_str().unwrap().to_string();
    let run_id = server.start_run(json!({ "sessionId": session_id, "command": "echo started; sleep 600" }));
    server.wait_notification("sandlink/output", Duration::from_secs(20), |params| params["runId"] == run_id);
    let killed_at = Instant::now();
    docker(&["kill", &container_name(&session)]);
    let outcome = server.collect_run(&run_id, Duration::from_secs(20));
    assert!(killed_at.elapsed() < Duration::from_secs(10), "the run ended promptly: {:?}", killed_at.elapsed());
    let message = outcome.exit["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains("container") && message.contains("stopped"), "the exit says why: {}", outcome.exit);
    let state = server.wait_notification("sandlink/sessionState", Duration::from_secs(10), |params| {
        params["sessionId"] == session_id.as_str() && params["state"] == "error"
    });
    assert!(state["message"].as_str().is_some_and(|message| message.contains("stopped")), "{state}");
    let status = server.request("sandlink/status", json!({ "sessionId": session_id })).expect("status");
    assert_eq!(status["state"], "error");
    let error = server.request_error("sandlink/run", json!({ "sessionId": session_id, "command": "true" }));
    assert_eq!(error.kind.as_deref(), Some("invalidParams"), "a broken session refuses runs: {error:?}");
}

#[test]
fn a_container_removed_from_outside_should_turn_the_session_to_error() {
    if docker_fixture().is_none() {
        return;
    }
    let server = start_server();
    let (_workspace, session) = connect(&server, json!({ "image": IMAGE }), &[]);
    let session_id = session["sessionId"].as_str().unwrap().to_string();
    docker(&["rm", "-f", &container_name(&session)]);
    let state = server.wait_notification("sandlink/sessionState", Duration::from_secs(10), |params| {
        params["sessionId"] == session_id.as_str() && params["state"] == "error"
    });
    assert!(state["message"].as_str().is_some_and(|message| message.contains("container")), "{state}");
    server.request("sandlink/disconnect", json!({ "sessionId": session_id })).expect("disconnecting a broken session works");
}

#[test]
fn cancel_should_leave_no_process_in_the_container() {
    if docker_fixture().is_none() {
        return;
    }
    let server = start_server();
    let (_workspace, session) = connect(&server, json!({ "image": IMAGE }), &[]);
    let name = container_name(&session);
    let run_id = server.start_run(json!({
        "sessionId": session["sessionId"],
        "command": "sleep 1001 & (trap '' TERM; sleep 1002) & sh -c 'sleep 1003 & wait' & echo started; wait"
    }));
    server.wait_notification("sandlink/output", Duration::from_secs(20), |params| params["runId"] == run_id);
    server.request("sandlink/cancel", json!({ "runId": run_id })).expect("cancel");
    let outcome = server.collect_run(&run_id, Duration::from_secs(30));
    assert_eq!(outcome.exit["cancelled"], true);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut left = String::new();
    while Instant::now() < deadline {
        left = docker(&["exec", &name, "ps", "-o", "pid,args"]);
        if !left.contains("sleep 100") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!left.contains("sleep 100"), "no process of the run is left in the container:\n{left}");
}

#[test]
fn disconnect_with_keep_should_leave_the_container_and_mark_the_session_kept() {
    if docker_fixture().is_none() {
        return;
    }
    let state = tempfile::tempdir().expect("a state directory that outlives the first server");
    let server = Server::start_with(StartOptions {
        env: server_env(),
        state_dir: Some(state.path().to_path_buf()),
        ..StartOptions::default()
    });
    let (_workspace, session) = connect(&server, json!({ "image": IMAGE }), &[]);
    let session_id = session["sessionId"].as_str().unwrap().to_string();
    let name = container_name(&session);
    server.request("sandlink/disconnect", json!({ "sessionId": session_id, "keep": true })).expect("disconnect");
    assert!(container_exists(&name), "a kept container stays");
    assert!(server.state_dir().join("sessions").join(&session_id).join("kept").exists());
    // A new server must not take a kept container for an orphan, even though its server is gone.
    let state_dir = server.state_dir().to_path_buf();
    drop(server);
    let _again = Server::start_with(StartOptions { env: server_env(), state_dir: Some(state_dir), ..StartOptions::default() });
    std::thread::sleep(Duration::from_secs(2));
    assert!(container_exists(&name), "the kept container survives a server start");
    docker(&["rm", "-f", &name]);
}

#[test]
fn containers_of_a_crashed_server_should_be_removed_when_a_server_starts() {
    if docker_fixture().is_none() {
        return;
    }
    let state = tempfile::tempdir().expect("a state directory that outlives the first server");
    let server = Server::start_with(StartOptions {
        env: server_env(),
        state_dir: Some(state.path().to_path_buf()),
        ..StartOptions::default()
    });
    let (_workspace, session) = connect(&server, json!({ "image": IMAGE }), &[]);
    let name = container_name(&session);
    let state_dir = server.state_dir().to_path_buf();
    // A crash: the server gets no chance to disconnect.
    unsafe_kill(server.pid());
    std::thread::sleep(Duration::from_millis(200));
    assert!(container_exists(&name), "the container outlives the crashed server");
    let live = start_server();
    let (_other_workspace, other) = connect(&live, json!({ "image": IMAGE }), &[]);
    let _restarted = Server::start_with(StartOptions { env: server_env(), state_dir: Some(state_dir), ..StartOptions::default() });
    let deadline = Instant::now() + Duration::from_secs(15);
    while container_exists(&name) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!container_exists(&name), "the orphaned container was removed at start");
    assert!(container_exists(&container_name(&other)), "a live server's container is left alone");
    drop(server);
}

fn unsafe_kill(pid: u32) {
    let status = Command::new("kill").args(["-KILL", &pid.to_string()]).status().expect("kill runs");
    assert!(status.success());
}

#[test]
fn attaching_to_an_existing_container_should_run_there_and_leave_it_on_disconnect() {
    if docker_fixture().is_none() {
        return;
    }
    let name = format!("sandlink-attach-{}", std::process::id());
    docker(&["run", "-d", "--name", &name, IMAGE, "sleep", "600"]);
    let server = start_server();
    let (_workspace, session) =
        connect(&server, json!({ "container": name, "remoteRoot": "/srv/project" }), &[("hello.txt", "attached\n")]);
    assert_eq!(session["remoteRoot"], "/srv/project");
    let outcome = server.run_to_exit(json!({ "sessionId": session["sessionId"], "command": "pwd; cat hello.txt" }));
    assert_eq!(outcome.stdout, "/srv/project\nattached\n");
    server.request("sandlink/disconnect", json!({ "sessionId": session["sessionId"] })).expect("disconnect");
    assert!(container_exists(&name), "sandlink never removes a container it did not create");
    docker(&["rm", "-f", &name]);
}

#[test]
fn network_none_should_leave_the_container_without_a_network() {
    if docker_fixture().is_none() {
        return;
    }
    let server = start_server();
    let (_workspace, session) = connect(&server, json!({ "image": IMAGE, "network": "none" }), &[]);
    assert_eq!(inspect(&container_name(&session), "{{.HostConfig.NetworkMode}}"), "none");
    let outcome = server.run_to_exit(json!({ "sessionId": session["sessionId"], "command": "ls /sys/class/net" }));
    assert_eq!(outcome.stdout.trim(), "lo");
}

/// A second, private dockerd that a test may stop without disturbing the shared one.
struct PrivateDaemon {
    child: std::process::Child,
    socket: String,
    _directory: tempfile::TempDir,
}

impl PrivateDaemon {
    fn start() -> Option<PrivateDaemon> {
        let directory = tempfile::tempdir().expect("a directory for the private daemon");
        let socket = format!("unix://{}/docker.sock", directory.path().display());
        // The image store persists between runs so the test image is loaded once.
        let data_root = std::env::var("SANDLINK_CI_CACHE").unwrap_or_else(|_| "/var/lib/sandlink-ci".into()) + "/docker-fault";
        let log = std::fs::File::create(directory.path().join("dockerd.log")).expect("a daemon log");
        // Its own bridge: with `--bridge=none` dockerd deletes the host's docker0, which the shared daemon needs.
        let bridge = "sandlinkfault0";
        let _ = Command::new("ip").args(["link", "add", bridge, "type", "bridge"]).stderr(std::process::Stdio::null()).status();
        let child = Command::new("dockerd")
            .args(["--data-root", &data_root, "--host", &socket, "--bridge", bridge, "--iptables=false", "--ip6tables=false"])
            .arg("--exec-root")
            .arg(directory.path().join("exec"))
            .arg("--pidfile")
            .arg(directory.path().join("dockerd.pid"))
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .ok()?;
        let daemon = PrivateDaemon { child, socket, _directory: directory };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !daemon.docker(&["version"]).status.success() {
            assert!(Instant::now() < deadline, "the private dockerd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        if !daemon.docker(&["image", "inspect", IMAGE]).status.success() {
            let save = Command::new("docker").args(["save", IMAGE]).stdout(std::process::Stdio::piped()).spawn().expect("docker save");
            let load = Command::new("docker")
                .env("DOCKER_HOST", &daemon.socket)
                .args(["load"])
                .stdin(save.stdout.expect("piped"))
                .output()
                .expect("docker load");
            assert!(load.status.success(), "{}", String::from_utf8_lossy(&load.stderr));
        }
        Some(daemon)
    }

    fn docker(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker").env("DOCKER_HOST", &self.socket).args(args).output().expect("docker runs")
    }

    fn stop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateDaemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

#[test]
fn a_daemon_stopped_while_connected_should_fail_the_session_and_make_docker_unavailable() {
    if docker_fixture().is_none() {
        return;
    }
    let Some(mut daemon) = PrivateDaemon::start() else {
        assert!(!support::under_ci(), "dockerd must be installed under CI");
        return;
    };
    let server = Server::start_with(StartOptions {
        env: vec![("DOCKER_HOST".to_string(), daemon.socket.clone())],
        ..StartOptions::default()
    });
    let (_workspace, session) = connect(&server, json!({ "image": IMAGE, "network": "none" }), &[]);
    let session_id = session["sessionId"].as_str().unwrap().to_string();
    let run_id = server.start_run(json!({ "sessionId": session_id, "command": "echo started; sleep 600" }));
    server.wait_notification("sandlink/output", Duration::from_secs(20), |params| params["runId"] == run_id.as_str());
    daemon.stop();
    let outcome = server.collect_run(&run_id, Duration::from_secs(30));
    assert!(outcome.exit["message"].is_string(), "the run's exit says why it ended: {}", outcome.exit);
    let state = server.wait_notification("sandlink/sessionState", Duration::from_secs(20), |params| {
        params["sessionId"] == session_id.as_str() && params["state"] == "error"
    });
    assert!(state["message"].is_string(), "{state}");
    let drivers = server.request("sandlink/drivers", json!({})).expect("drivers");
    let docker = drivers["drivers"]
        .as_array()
        .and_then(|drivers| drivers.iter().find(|driver| driver["id"] == "docker"))
        .cloned()
        .expect("docker is listed");
    assert_eq!(docker["available"], false, "{docker}");
    assert!(docker["detail"].as_str().is_some_and(|detail| detail.contains("Start Docker")), "{docker}");
    let workspace = support::workspace_with(&[]);
    let error = server.request_error(
        "sandlink/connect",
        json!({ "driver": "docker", "settings": { "image": IMAGE }, "workspaceFolder": support::file_uri(workspace.path()) }),
    );
    assert_eq!(error.kind.as_deref(), Some("driverUnavailable"), "{error:?}");
    assert!(error.message.contains("Start Docker"), "the error says how to start Docker: {}", error.message);
}

mod files {
    //! The driver's sync operations, called directly as the sync engine calls them.

    use std::sync::Arc;

    use sandlink::drivers::{ConnectRequest, Driver as _, Sandbox};
    use sandlink::sync::EntryKind;
    use tokio::io::AsyncReadExt;

    use super::*;

    async fn sandbox(state: &Path) -> (Arc<dyn Sandbox>, String) {
        let session_id = format!("docker-files{}{}", std::process::id(), sandlink::ids::short_id());
        let mut settings = serde_json::Map::new();
        settings.insert("image".into(), json!(IMAGE));
        let sandbox = sandlink::drivers::docker::Driver::new()
            .connect(ConnectRequest { session_id: session_id.clone(), workspace: None, settings, state_dir: state.to_path_buf(), credentials: Default::default(), runs_commands: true })
            .await
            .expect("connect");
        (sandbox, format!("sandlink-{session_id}"))
    }

    fn tar_of(entries: &[(&str, &[u8])]) -> sandlink::streams::BoxedReader {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, contents) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(contents.len() as u64);
            header.set_mode(0o640);
            header.set_mtime(1_700_000_000);
            builder.append_data(&mut header, path, *contents).expect("entry");
        }
        Box::pin(std::io::Cursor::new(builder.into_inner().expect("tar")))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn upload_list_download_and_delete_should_round_trip() {
        if docker_fixture().is_none() {
            return;
        }
        let state = tempfile::tempdir().unwrap();
        let (sandbox, container) = sandbox(state.path()).await;
        let files = sandbox.files().expect("docker syncs files");
        files
            .upload_tar(tar_of(&[("src/a.txt", b"first\n"), ("src/deep/b.txt", b"bee\n"), ("top.txt", b"top\n")]))
            .await
            .expect("first upload");
        // A second batch replaces one file and adds another inside existing folders.
        files.upload_tar(tar_of(&[("src/a.txt", b"second\n"), ("src/deep/c.txt", b"sea\n")])).await.expect("second upload");
        docker(&["exec", &container, "ln", "-s", "top.txt", "/workspace/link"]);
        let listing = files.list().await.expect("list");
        let find = |path: &str| listing.iter().find(|entry| entry.path == path).cloned();
        let a = find("src/a.txt").expect("a.txt is listed");
        assert_eq!((a.kind, a.size, a.mode), (EntryKind::File, 7, 0o640));
        assert_eq!(a.mtime_ns, 1_700_000_000_000_000_000);
        assert_eq!(find("src/deep").map(|entry| entry.kind), Some(EntryKind::Dir));
        assert_eq!(find("link").and_then(|entry| entry.link_target), Some("top.txt".into()));
        assert!(!listing.iter().any(|entry| entry.path.contains(".sandlink-staging")), "staging is never listed");

        let mut archive = files.download_tar(vec!["src/a.txt".into(), "src/deep".into()]).await.expect("download");
        let mut bytes = Vec::new();
        archive.read_to_end(&mut bytes).await.expect("read the download");
        let mut names = Vec::new();
        let mut a_contents = String::new();
        for entry in tar::Archive::new(std::io::Cursor::new(bytes)).entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let name = entry.path().expect("path").to_string_lossy().trim_end_matches('/').to_string();
            if name == "src/a.txt" {
                std::io::Read::read_to_string(&mut entry, &mut a_contents).expect("contents");
            }
            names.push(name);
        }
        names.sort();
        assert_eq!(names, vec!["src/a.txt", "src/deep", "src/deep/b.txt", "src/deep/c.txt"]);
        assert_eq!(a_contents, "second\n");

        files.delete(vec!["src/deep".into(), "top.txt".into()]).await.expect("delete");
        let after: Vec<String> = files.list().await.expect("list").into_iter().map(|entry| entry.path).collect();
        assert_eq!(after, vec!["link", "src", "src/a.txt"]);
        let error = files.delete(vec!["../etc".into()]).await.expect_err("escapes are refused");
        assert_eq!(error.kind(), sandlink::protocol::ErrorKind::PathOutsideWorkspace);
        sandbox.disconnect(false).await.expect("disconnect");
        assert!(!container_exists(&container));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn upload_should_replace_a_symlink_instead_of_writing_through_it() {
        if docker_fixture().is_none() {
            return;
        }
        let state = tempfile::tempdir().unwrap();
        let (sandbox, container) = sandbox(state.path()).await;
        let files = sandbox.files().expect("docker syncs files");
        docker(&["exec", &container, "sh", "-c", "mkdir -p /outside && echo keep > /outside/x && ln -s /outside /workspace/dir && ln -s /outside/x /workspace/file"]);
        files.upload_tar(tar_of(&[("dir/x", b"new\n"), ("file", b"replaced\n")])).await.expect("upload");
        let outside = docker(&["exec", &container, "cat", "/outside/x"]);
        assert_eq!(outside, "keep\n", "nothing was written through a symlink");
        assert_eq!(docker(&["exec", &container, "cat", "/workspace/dir/x", "/workspace/file"]), "new\nreplaced\n");
        sandbox.disconnect(false).await.expect("disconnect");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replacing_a_file_should_be_atomic_for_readers() {
        if docker_fixture().is_none() {
            return;
        }
        let state = tempfile::tempdir().unwrap();
        let (sandbox, container) = sandbox(state.path()).await;
        let files = sandbox.files().expect("docker syncs files");
        let big_a = vec![b'a'; 4 << 20];
        let big_b = vec![b'b'; 4 << 20];
        files.upload_tar(tar_of(&[("big", &big_a)])).await.expect("upload");
        // A reader in the container samples the file while it is replaced: it must only ever see a whole version.
        let reader = std::thread::spawn({
            let container = container.clone();
            move || {
                docker(&[
                    "exec", &container, "sh", "-c",
                    "i=0; while [ $i -lt 60 ]; do s=$(wc -c < /workspace/big 2>/dev/null || echo missing); echo $s; i=$((i+1)); done",
                ])
            }
        });
        for round in 0..4 {
            let contents: &[u8] = if round % 2 == 0 { &big_b } else { &big_a };
            files.upload_tar(tar_of(&[("big", contents)])).await.expect("replace");
        }
        let sizes = reader.join().expect("reader");
        for size in sizes.lines() {
            assert_eq!(size.trim(), (4u64 << 20).to_string(), "a reader saw a partial or missing file:\n{sizes}");
        }
        sandbox.disconnect(false).await.expect("disconnect");
    }
}

#[test]
fn a_restarted_server_should_reattach_to_the_same_container_without_reuploading() {
    if docker_fixture().is_none() {
        return;
    }
    let state = tempfile::tempdir().expect("a state directory shared by both servers");
    let workspace = support::workspace_with(&[("kept.txt", "kept\n")]);
    let start = || {
        Server::start_with(StartOptions {
            env: server_env(),
            state_dir: Some(state.path().to_path_buf()),
            root: Some(workspace.path().to_path_buf()),
            ..StartOptions::default()
        })
    };
    let (session_id, name) = {
        let first = start();
        let session = first.connect("docker", json!({ "image": IMAGE }), workspace.path());
        first.run_to_exit(json!({ "sessionId": session["sessionId"], "command": "echo made-in-container > artefact" }));
        (session["sessionId"].as_str().expect("id").to_string(), container_name(&session))
        // The server shuts down as an editor closes it; sessions are kept on exit by default.
    };
    assert!(container_exists(&name), "the kept container outlives its server");
    let second = start();
    let again = second.connect("docker", json!({ "image": IMAGE }), workspace.path());
    assert_eq!(again["sessionId"], session_id.as_str(), "the same session comes back");
    assert_eq!(container_name(&again), name, "in the same container");
    let outcome = second.run_to_exit(json!({ "sessionId": session_id, "command": "cat artefact kept.txt" }));
    assert_eq!(outcome.stdout, "made-in-container\nkept\n");
    let resync = second.request("sandlink/sync", json!({ "sessionId": session_id })).expect("resync");
    assert_eq!(resync["uploaded"], 0, "nothing is uploaded again: {resync}");
    second.request("sandlink/disconnect", json!({ "sessionId": session_id })).expect("disconnect");
    assert!(!container_exists(&name), "a real disconnect removes the container");
}

/// A TCP server on the host's docker0 address (the default bridge's gateway) that greets whoever connects.
fn host_service_on_the_bridge_gateway() -> Option<std::net::SocketAddr> {
    // The default bridge often leaves its gateway out of IPAM; the host's address on docker0 is the same thing.
    let configured = docker(&["network", "inspect", "bridge", "--format", "{{(index .IPAM.Config 0).Gateway}}"]);
    let gateway = match configured.trim() {
        "" => {
            let output = Command::new("ip").args(["-4", "-o", "addr", "show", "docker0"]).output().ok()?;
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            text.split_whitespace().skip_while(|word| *word != "inet").nth(1)?.split('/').next()?.to_string()
        }
        gateway => gateway.to_string(),
    };
    let listener = std::net::TcpListener::bind((gateway.as_str(), 0)).ok()?;
    let address = listener.local_addr().ok()?;
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            use std::io::Write;
            let mut stream = stream;
            let _ = stream.write_all(b"host-service\n");
        }
    });
    Some(address)
}

#[test]
fn network_off_should_keep_the_container_from_every_host_service() {
    if docker_fixture().is_none() {
        return;
    }
    let Some(service) = host_service_on_the_bridge_gateway() else {
        panic!("the default bridge's gateway address can be bound on the host");
    };
    let probe = format!(
        "nc -w 3 {} {} </dev/null; echo gateway=$?; nc -w 3 127.0.0.2 {} </dev/null; echo loopback=$?; \
         cut -d: -f1 /proc/net/dev | tail -n +3 | tr -d ' ' | sort | tr '\\n' ' '",
        service.ip(),
        service.port(),
        service.port()
    );
    let server = start_server();
    // The control: with the network on, the same probe reaches the host service, so the probe can fail.
    let (_workspace, open) = connect(&server, json!({ "image": IMAGE, "network": "on" }), &[]);
    let reached = server.run_to_exit(json!({ "sessionId": open["sessionId"], "command": probe.clone() }));
    assert!(reached.stdout.contains("host-service\ngateway=0"), "{}", reached.stdout);
    let (_workspace, closed) = connect(&server, json!({ "image": IMAGE, "network": "off" }), &[]);
    assert_eq!(inspect(&container_name(&closed), "{{.HostConfig.NetworkMode}}"), "none");
    let outcome = server.run_to_exit(json!({ "sessionId": closed["sessionId"], "command": probe }));
    assert!(!outcome.stdout.contains("host-service"), "{}", outcome.stdout);
    assert!(outcome.stdout.contains("gateway=1"), "the host's bridge address is unreachable: {}", outcome.stdout);
    assert!(outcome.stdout.contains("loopback=1"), "the host's 127.0.0.x is not the container's: {}", outcome.stdout);
    assert!(outcome.stdout.trim_end().ends_with("loopback=1\nlo"), "only loopback inside: {}", outcome.stdout);
}

/// A tiny HTTP server on one of the host's loopback addresses that answers every request with its own name and
/// counts the connections it accepted.
struct NamedServer {
    port: u16,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl NamedServer {
    fn start(ip: &str, name: &'static str) -> NamedServer {
        use std::io::{BufRead, Write};
        let listener = std::net::TcpListener::bind((ip, 0)).expect("a loopback address binds (all of 127/8 is lo)");
        let port = listener.local_addr().expect("an address").port();
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = connections.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut reader = std::io::BufReader::new(stream.try_clone().expect("clone"));
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                            break;
                        }
                    }
                    let body = format!("hello from {name}");
                    let mut stream = stream;
                    let _ = write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                });
            }
        });
        NamedServer { port, connections }
    }

    fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

const ALLOWED_NAME: &str = "allowed.sandlink.test";
const DENIED_NAME: &str = "denied.sandlink.test";

/// Whether `/etc/hosts` maps the test names to 127.0.0.2 and 127.0.0.3 (tests/setup/base.sh); fails under CI.
fn test_names_resolve() -> bool {
    use std::net::ToSocketAddrs;
    let resolves = |name: &str, expected: &str| {
        (name, 80).to_socket_addrs().is_ok_and(|mut addresses| addresses.any(|address| address.ip().to_string() == expected))
    };
    let ready = resolves(ALLOWED_NAME, "127.0.0.2") && resolves(DENIED_NAME, "127.0.0.3");
    !support::skip_unless(ready, "allowed.sandlink.test and denied.sandlink.test in /etc/hosts (tests/setup/base.sh)")
}

/// A shell line, run in the container, that sends one raw proxy request through the run's `HTTP_PROXY` port and
/// prints the answer: `request` is the request head without its final blank line.
fn through_the_proxy(request: &str) -> String {
    format!("printf '{request}\\r\\n\\r\\n' | nc -w 5 127.0.0.1 \"${{HTTP_PROXY##*:}}\"")
}

#[test]
fn an_allow_list_should_admit_exactly_the_listed_host_through_sandlinks_proxy() {
    if docker_fixture().is_none() || !test_names_resolve() {
        return;
    }
    let allowed = NamedServer::start("127.0.0.2", ALLOWED_NAME);
    let denied = NamedServer::start("127.0.0.3", DENIED_NAME);
    let server = start_server();
    let (workspace, session) = connect(&server, json!({ "image": IMAGE, "network": [ALLOWED_NAME] }), &[]);
    let name = container_name(&session);
    assert_eq!(inspect(&name, "{{.HostConfig.NetworkMode}}"), "none", "only loopback in the container");
    assert!(
        server.stderr().contains("network: only allowed.sandlink.test, through sandlink's proxy"),
        "the connect log says the policy in force: {}",
        server.stderr()
    );
    let run = |command: String| server.run_to_exit(json!({ "sessionId": session["sessionId"], "command": command }));

    // An ordinary client that reads the proxy variables reaches the listed host (on the host's 127.0.0.2).
    let fetched = run(format!("wget -q -O - http://{ALLOWED_NAME}:{}/", allowed.port));
    assert_eq!((fetched.stdout.as_str(), fetched.exit_code()), ("hello from allowed.sandlink.test", Some(0)), "{fetched:?}");
    // TLS clients tunnel with CONNECT; the tunnel reaches the same host.
    let tunnelled = run(through_the_proxy(&format!(
        "CONNECT {ALLOWED_NAME}:{port} HTTP/1.1\\r\\nHost: {ALLOWED_NAME}:{port}\\r\\n\\r\\nGET / HTTP/1.1\\r\\nHost: x",
        port = allowed.port
    )));
    assert!(tunnelled.stdout.starts_with("HTTP/1.1 200 Connection Established"), "{tunnelled:?}");
    assert!(tunnelled.stdout.ends_with("hello from allowed.sandlink.test"), "{tunnelled:?}");

    // The other name is refused at once, with a sentence that names the policy.
    let refused = run(through_the_proxy(&format!(
        "GET http://{DENIED_NAME}:{port}/ HTTP/1.1\\r\\nHost: {DENIED_NAME}:{port}",
        port = denied.port
    )));
    assert!(refused.stdout.starts_with("HTTP/1.1 403"), "{refused:?}");
    assert!(
        refused.stdout.contains(&format!("policy for this session allows only {ALLOWED_NAME}")),
        "the refusal names the policy: {refused:?}"
    );
    let by_wget = run(format!("wget -q -O - http://{DENIED_NAME}:{}/", denied.port));
    assert_ne!(by_wget.exit_code(), Some(0), "{by_wget:?}");
    assert!(by_wget.stderr.contains("403"), "{by_wget:?}");
    // The host's address of the listed name is not the name: an IP literal is refused too.
    let by_address = run(format!("wget -q -O - http://127.0.0.2:{}/", allowed.port));
    assert_ne!(by_address.exit_code(), Some(0), "{by_address:?}");
    assert_eq!(denied.connections(), 0, "nothing reached the refused host");
    assert_eq!(allowed.connections(), 2, "the allowed host saw the plain request and the tunnel only");

    // Every run carries the proxy variables, the same ones the local driver sets.
    let environment = run("env | grep -i _proxy= | sort".into());
    let port = environment
        .stdout
        .lines()
        .find_map(|line| line.strip_prefix("HTTP_PROXY=http://127.0.0.1:"))
        .and_then(|port| port.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("HTTP_PROXY names a loopback port: {environment:?}"));
    for variable in ["HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"] {
        assert!(
            environment.stdout.contains(&format!("{variable}=http://127.0.0.1:{port}\n")),
            "{variable} is set: {environment:?}"
        );
    }
    assert!(environment.stdout.contains("NO_PROXY=localhost,127.0.0.1,::1\n"), "{environment:?}");
    assert!(environment.stdout.contains("no_proxy=localhost,127.0.0.1,::1\n"), "{environment:?}");

    // The port lives with the session: once disconnected (the container kept), nothing listens there any more.
    server
        .request("sandlink/disconnect", json!({ "sessionId": session["sessionId"], "keep": true }))
        .expect("disconnect keeping the container");
    let probe = format!("nc -w 2 127.0.0.1 {port} </dev/null; echo closed=$?");
    let after = docker(&["exec", &name, "sh", "-c", &probe]);
    assert!(after.contains("closed=1"), "the proxy's port closed with the session: {after}");
    // Re-attaching opens a new port in the same container, and the policy holds again.
    let again = server
        .request(
            "sandlink/connect",
            json!({ "reuse": session["sessionId"], "workspaceFolder": support::file_uri(workspace.path()) }),
        )
        .expect("re-attach");
    assert_eq!(container_name(&again), name);
    let fetched = server.run_to_exit(json!({
        "sessionId": again["sessionId"],
        "command": format!("wget -q -O - http://{ALLOWED_NAME}:{}/ && wget -q -O - http://{DENIED_NAME}:{}/", allowed.port, denied.port),
    }));
    assert!(fetched.stdout.starts_with("hello from allowed.sandlink.test"), "{fetched:?}");
    assert_ne!(fetched.exit_code(), Some(0), "the other host is still refused: {fetched:?}");
    assert_eq!(denied.connections(), 0);
    server.request("sandlink/disconnect", json!({ "sessionId": again["sessionId"] })).expect("disconnect");
    assert!(!container_exists(&name));
}

#[test]
fn an_allow_list_should_leave_the_container_no_way_out_but_the_proxy() {
    if docker_fixture().is_none() || !test_names_resolve() {
        return;
    }
    let Some(gateway_service) = host_service_on_the_bridge_gateway() else {
        panic!("the default bridge's gateway address can be bound on the host");
    };
    let loopback_service = NamedServer::start("127.0.0.1", "host-loopback");
    let allowed = NamedServer::start("127.0.0.2", ALLOWED_NAME);
    let server = start_server();
    // Another container on the default bridge, serving on its own address.
    let (_workspace, neighbour) = connect(&server, json!({ "image": IMAGE, "network": "on" }), &[("index.html", "neighbour\n")]);
    let _serving = server.start_run(json!({ "sessionId": neighbour["sessionId"], "command": "exec httpd -f -p 8080 -h ." }));
    let neighbour_address = inspect(&container_name(&neighbour), "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}");
    assert!(!neighbour_address.is_empty(), "the neighbour has a bridge address");
    let listening = server.run_to_exit(json!({
        "sessionId": neighbour["sessionId"],
        "command": "for i in $(seq 1 100); do wget -q -O /dev/null http://127.0.0.1:8080/ && exit 0; sleep 0.1; done; exit 1",
    }));
    assert_eq!(listening.exit_code(), Some(0), "the neighbour's server started: {listening:?}");
    let probe = format!(
        "nc -w 3 {gateway} {gateway_port} </dev/null; echo gateway=$?; \
         nc -w 3 127.0.0.1 {loopback_port} </dev/null; echo loopback=$?; \
         nc -w 3 127.0.0.2 {allowed_port} </dev/null; echo allowed-address=$?; \
         timeout 5 wget -q -O - http://{neighbour_address}:8080/ 2>/dev/null; echo neighbour-direct=$?; \
         cut -d: -f1 /proc/net/dev | tail -n +3 | tr -d ' ' | sort | tr '\\n' ' '",
        gateway = gateway_service.ip(),
        gateway_port = gateway_service.port(),
        loopback_port = loopback_service.port,
        allowed_port = allowed.port,
    );
    // The control: the neighbour answers from a container with the network on, so the probe can succeed.
    let (_workspace, open) = connect(&server, json!({ "image": IMAGE, "network": "on" }), &[]);
    let reached = server.run_to_exit(json!({ "sessionId": open["sessionId"], "command": probe.clone() }));
    assert!(reached.stdout.contains("host-service\ngateway=0"), "{}", reached.stdout);
    assert!(reached.stdout.contains("neighbour\nneighbour-direct=0"), "{}", reached.stdout);

    let (_workspace, listed) = connect(&server, json!({ "image": IMAGE, "network": [ALLOWED_NAME] }), &[]);
    // Direct connections, without the proxy variables: nothing but loopback exists.
    let direct = server.run_to_exit(json!({
        "sessionId": listed["sessionId"],
        "command": format!("unset HTTP_PROXY http_proxy HTTPS_PROXY https_proxy ALL_PROXY all_proxy; {probe}"),
    }));
    assert!(!direct.stdout.contains("host-service") && !direct.stdout.contains("neighbour\n"), "{}", direct.stdout);
    for closed in ["gateway=1", "loopback=1", "allowed-address=1", "neighbour-direct=1"] {
        assert!(direct.stdout.contains(closed), "{closed}: {}", direct.stdout);
    }
    assert!(direct.stdout.trim_end().ends_with("neighbour-direct=1\nlo"), "only loopback inside: {}", direct.stdout);
    assert_eq!((loopback_service.connections(), allowed.connections()), (0, 0), "no direct connection reached the host");
    // Through the proxy, addresses that the list does not name are refused: the gateway and the neighbour.
    let proxied = server.run_to_exit(json!({
        "sessionId": listed["sessionId"],
        "command": format!(
            "timeout 5 wget -q -O - http://{neighbour_address}:8080/; echo neighbour-proxied=$?; \
             timeout 5 wget -q -O - http://{}:{}/; echo gateway-proxied=$?",
            gateway_service.ip(),
            gateway_service.port()
        ),
    }));
    assert!(proxied.stdout.contains("neighbour-proxied=1") && proxied.stdout.contains("gateway-proxied=1"), "{proxied:?}");
    assert!(proxied.stderr.matches("403").count() >= 2, "both refused by the policy: {proxied:?}");
}

#[test]
fn parallel_sessions_should_each_enforce_their_own_allow_list_on_their_own_port() {
    if docker_fixture().is_none() || !test_names_resolve() {
        return;
    }
    let allowed = NamedServer::start("127.0.0.2", ALLOWED_NAME);
    let denied = NamedServer::start("127.0.0.3", DENIED_NAME);
    let server = start_server();
    let (_first_workspace, first) = connect(&server, json!({ "image": IMAGE, "network": [ALLOWED_NAME] }), &[]);
    let (_second_workspace, second) = connect(&server, json!({ "image": IMAGE, "network": [DENIED_NAME] }), &[]);
    let both = format!(
        "wget -q -O - http://{ALLOWED_NAME}:{}/; echo; wget -q -O - http://{DENIED_NAME}:{}/; echo; echo \"$HTTP_PROXY\"",
        allowed.port, denied.port
    );
    let first_run = server.start_run(json!({ "sessionId": first["sessionId"], "command": both.clone() }));
    let second_run = server.start_run(json!({ "sessionId": second["sessionId"], "command": both }));
    let first_outcome = server.collect_run(&first_run, Duration::from_secs(60));
    let second_outcome = server.collect_run(&second_run, Duration::from_secs(60));
    assert!(first_outcome.stdout.starts_with("hello from allowed.sandlink.test\n\n"), "{first_outcome:?}");
    assert!(!first_outcome.stdout.contains("hello from denied"), "{first_outcome:?}");
    assert!(second_outcome.stdout.starts_with("\nhello from denied.sandlink.test\n"), "{second_outcome:?}");
    assert!(!second_outcome.stdout.contains("hello from allowed"), "{second_outcome:?}");
    assert_eq!((allowed.connections(), denied.connections()), (1, 1), "each host was reached by its own session only");
    // Each container has a listener of its own: the first session's port is not the second container's proxy.
    let first_port = first_outcome.stdout.trim_end().rsplit(':').next().expect("a port").to_string();
    let probe = format!(
        "printf 'GET http://{DENIED_NAME}:{}/ HTTP/1.1\\r\\n\\r\\n' | nc -w 2 127.0.0.1 {first_port}; echo status=$?",
        denied.port
    );
    let second_name = container_name(&second);
    let crossed = docker(&["exec", &second_name, "sh", "-c", &probe]);
    let second_port = second_outcome.stdout.trim_end().rsplit(':').next().expect("a port").to_string();
    if first_port != second_port {
        assert!(crossed.contains("status=1") && !crossed.contains("hello"), "{crossed}");
    } else {
        // The same number in two namespaces: it is the second session's own proxy, which admits its own host.
        assert!(crossed.contains("hello from denied"), "{crossed}");
    }
}

#[test]
fn a_container_restarted_outside_sandlink_should_get_a_new_proxy_port_when_reattached() {
    if docker_fixture().is_none() || !test_names_resolve() {
        return;
    }
    let allowed = NamedServer::start("127.0.0.2", ALLOWED_NAME);
    let denied = NamedServer::start("127.0.0.3", DENIED_NAME);
    let server = start_server();
    let (workspace, session) = connect(&server, json!({ "image": IMAGE, "network": [ALLOWED_NAME] }), &[]);
    let session_id = session["sessionId"].as_str().expect("id").to_string();
    let name = container_name(&session);
    let first_pid = inspect(&name, "{{.State.Pid}}");
    // A restart gives the container a new network namespace, where the old proxy port does not exist.
    docker(&["restart", "-t", "0", &name]);
    assert_ne!(inspect(&name, "{{.State.Pid}}"), first_pid);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let sessions = server.request("sandlink/sessions", json!({})).expect("sessions");
        let state = sessions["sessions"]
            .as_array()
            .and_then(|all| all.iter().find(|listed| listed["sessionId"] == session_id.as_str()))
            .map(|listed| listed["state"].clone());
        if state == Some(json!("error")) {
            break;
        }
        assert!(Instant::now() < deadline, "the session turns to error after the restart: {state:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    server
        .request("sandlink/disconnect", json!({ "sessionId": session_id, "keep": true }))
        .expect("disconnect keeping the container");
    server
        .request("sandlink/connect", json!({ "reuse": session_id, "workspaceFolder": support::file_uri(workspace.path()) }))
        .expect("re-attach to the restarted container");
    let outcome = server.run_to_exit(json!({
        "sessionId": session_id,
        "command": format!(
            "wget -q -O - http://{ALLOWED_NAME}:{}/; echo; wget -q -O - http://{DENIED_NAME}:{}/; echo denied=$?",
            allowed.port, denied.port
        ),
    }));
    assert!(outcome.stdout.starts_with("hello from allowed.sandlink.test\n"), "{outcome:?}");
    assert!(outcome.stdout.contains("denied=1"), "{outcome:?}");
    assert_eq!(denied.connections(), 0);
    server.request("sandlink/disconnect", json!({ "sessionId": session_id })).expect("disconnect");
    assert!(!container_exists(&name));
}

#[test]
fn an_allow_list_should_be_refused_for_a_container_that_has_gained_another_interface() {
    if docker_fixture().is_none() || !test_names_resolve() {
        return;
    }
    let server = start_server();
    let (workspace, session) = connect(&server, json!({ "image": IMAGE, "network": [ALLOWED_NAME] }), &[]);
    let session_id = session["sessionId"].as_str().expect("id").to_string();
    let name = container_name(&session);
    server.request("sandlink/disconnect", json!({ "sessionId": session_id, "keep": true })).expect("disconnect, kept");
    // Docker refuses to connect a `none` container to a network, but root can add an interface from outside.
    let pid = inspect(&name, "{{.State.Pid}}");
    let added = Command::new("nsenter")
        .args(["-t", &pid, "-n", "ip", "link", "add", "sneaky1", "type", "veth", "peer", "name", "sneaky2"])
        .output()
        .expect("nsenter runs");
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    let error = server.request_error(
        "sandlink/connect",
        json!({ "reuse": session_id, "workspaceFolder": support::file_uri(workspace.path()) }),
    );
    let still_there = container_exists(&name);
    docker(&["rm", "-f", &name]);
    assert!(still_there, "a refused re-attach leaves the kept container to the user");
    assert!(
        error.message.contains("interfaces besides loopback (sneaky2, sneaky1)")
            || error.message.contains("interfaces besides loopback (sneaky1, sneaky2)"),
        "the re-attach is refused, naming the interfaces: {error:?}"
    );
}

/// A TCP port on the host's loopback that carries every connection to the daemon's Unix socket, so that the
/// daemon looks remote (`DOCKER_HOST=tcp://…`) to a server started with it.
fn daemon_over_tcp() -> String {
    let socket = std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|host| host.strip_prefix("unix://").map(String::from))
        .unwrap_or_else(|| "/var/run/docker.sock".into());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let address = listener.local_addr().expect("an address");
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(daemon) = std::os::unix::net::UnixStream::connect(&socket) else { continue };
            let (mut client_reader, mut daemon_writer) = (client.try_clone().expect("clone"), daemon.try_clone().expect("clone"));
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut client_reader, &mut daemon_writer);
                let _ = daemon_writer.shutdown(std::net::Shutdown::Write);
            });
            let (mut daemon_reader, mut client_writer) = (daemon, client);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut daemon_reader, &mut client_writer);
                let _ = client_writer.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    format!("tcp://{address}")
}

#[test]
fn an_allow_list_should_be_refused_for_a_remote_daemon_before_creating_anything() {
    if docker_fixture().is_none() {
        return;
    }
    let remote = daemon_over_tcp();
    let server = Server::start_with(StartOptions { env: vec![("DOCKER_HOST".into(), remote.clone())], ..StartOptions::default() });
    let drivers = server.request("sandlink/drivers", json!({})).expect("drivers");
    let docker_info = drivers["drivers"].as_array().and_then(|all| all.iter().find(|driver| driver["id"] == "docker")).cloned();
    let detail = docker_info.as_ref().and_then(|info| info["detail"].as_str()).unwrap_or_default().to_string();
    assert!(detail.contains(&remote) && detail.contains("allow-lists unsupported here"), "{docker_info:?}");
    let workspace = support::workspace_with(&[]);
    let before = docker(&["ps", "-aq", "--filter", "label=sandlink.driver=docker"]).lines().count();
    let error = server.request_error(
        "sandlink/connect",
        json!({
            "driver": "docker",
            "settings": { "image": IMAGE, "network": [ALLOWED_NAME, "pypi.org:443"] },
            "workspaceFolder": support::file_uri(workspace.path()),
        }),
    );
    assert_eq!(error.kind.as_deref(), Some("unsupported"), "{error:?}");
    assert!(
        error.message.contains("network: only allowed.sandlink.test, pypi.org:443")
            && error.message.contains(&remote)
            && error.message.contains("\"off\""),
        "the message names the policy, the daemon and what works instead: {}",
        error.message
    );
    let after = docker(&["ps", "-aq", "--filter", "label=sandlink.driver=docker"]).lines().count();
    assert!(after <= before, "no container was created for a refused policy");
    // The same daemon over TCP still serves the policies Docker enforces by itself.
    let session = server.connect("docker", json!({ "image": IMAGE, "network": "off" }), workspace.path());
    assert_eq!(session["state"], "active");
    server.request("sandlink/disconnect", json!({ "sessionId": session["sessionId"] })).expect("disconnect");
}

#[test]
fn an_allow_list_should_be_refused_when_sandlink_cannot_enter_the_container_network() {
    if docker_fixture().is_none() {
        return;
    }
    if !Command::new("setpriv").arg("--version").output().is_ok_and(|output| output.status.success()) {
        assert!(std::env::var("CI").is_err(), "setpriv (util-linux) is needed under CI");
        return;
    }
    // Without CAP_SYS_ADMIN in its bounding set, root's sandlink cannot enter another network namespace: the
    // situation of rootless Docker and of unprivileged users in the docker group.
    let config = tempfile::tempdir().expect("a config directory");
    std::fs::write(
        config.path().join("config.toml"),
        format!("[profiles.listed]\ndriver = \"docker\"\nimage = \"{IMAGE}\"\nnetwork = [\"{ALLOWED_NAME}\"]\n"),
    )
    .expect("config written");
    let workspace = support::workspace_with(&[]);
    let state = tempfile::tempdir().expect("a state directory");
    let before = docker(&["ps", "-aq", "--filter", "label=sandlink.driver=docker"]).lines().count();
    let output = Command::new("setpriv")
        .args(["--bounding-set=-sys_admin", "--"])
        .arg(support::binary())
        .args(["run", "--profile", "listed", "--workspace"])
        .arg(workspace.path())
        .args(["--", "echo ran"])
        .env("SANDLINK_CONFIG_DIR", config.path())
        .env("SANDLINK_STATE_DIR", state.path())
        .envs(server_env())
        .output()
        .expect("setpriv runs sandlink");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "refused: {stderr}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("ran"), "the command never ran");
    assert!(
        stderr.contains("network: only allowed.sandlink.test") && stderr.contains("CAP_SYS_ADMIN") && stderr.contains("\"off\""),
        "the refusal says why and what to do: {stderr}"
    );
    let after = docker(&["ps", "-aq", "--filter", "label=sandlink.driver=docker"]).lines().count();
    assert!(after <= before, "no container was created for a refused policy");
}

#[test]
fn a_kept_container_should_not_be_reattached_under_another_network_policy() {
    if docker_fixture().is_none() {
        return;
    }
    let state = tempfile::tempdir().expect("state dir");
    let workspace = support::workspace_with(&[]);
    let start = || {
        Server::start_with(StartOptions {
            state_dir: Some(state.path().to_path_buf()),
            env: server_env(),
            ..StartOptions::default()
        })
    };
    let session_id = {
        let first = start();
        let session = first.connect("docker", json!({ "image": IMAGE, "network": "on" }), workspace.path());
        session["sessionId"].as_str().expect("id").to_string()
        // Dropping the server keeps the session and its container, as closing an editor does.
    };
    let name = format!("sandlink-{session_id}");
    assert!(container_exists(&name), "the container is kept across the restart");
    // The record now asks for a policy the kept container (network mode bridge) does not have.
    let record_path = state.path().join("sessions").join(&session_id).join("session.json");
    let mut record: Value = serde_json::from_slice(&std::fs::read(&record_path).expect("the record")).expect("JSON");
    record["settings"]["network"] = json!("off");
    std::fs::write(&record_path, serde_json::to_vec(&record).expect("JSON")).expect("written");
    let second = start();
    let error = second.request_error(
        "sandlink/connect",
        json!({ "reuse": session_id, "workspaceFolder": support::file_uri(workspace.path()) }),
    );
    docker(&["rm", "-f", &name]);
    assert!(
        error.message.contains("network \"bridge\"") && error.message.contains("network: off"),
        "the re-attach names the container's network and the policy: {error:?}"
    );
}

/// Runs without stdin start in a spare shell started ahead of them, runs with stdin in an exec of their own: the
/// command sees the same environment, directory, shell level, process group and exit either way.
#[test]
fn runs_started_in_a_spare_shell_should_see_what_a_run_in_an_exec_of_its_own_sees() {
    if docker_fixture().is_none() {
        return;
    }
    let server = start_server();
    let (_workspace, session) = connect(&server, json!({ "image": IMAGE }), &[("sub/keep.txt", "x")]);
    let report = "env | grep -v '^_=' | sort; pwd; echo \"pid $$ group $(cut -d' ' -f5 /proc/$$/stat) session $(cut -d' ' -f6 /proc/$$/stat)\"; \
                  [ -t 0 ] && echo tty; cat; echo 'err' >&2; exit 7";
    let run = |stdin: bool, cwd: Option<&str>| {
        let mut params = json!({
            "sessionId": session["sessionId"],
            "command": report,
            "env": { "SANDLINK_TEST_VALUE": "a 'quoted' value\nover two lines" },
            "stdin": stdin,
        });
        if let Some(cwd) = cwd {
            params["cwd"] = json!(cwd);
        }
        let run_id = server.start_run(params);
        if stdin {
            server.request("sandlink/input", json!({ "runId": run_id, "text": "", "eof": true })).expect("eof");
        }
        server.collect_run(&run_id, support::DEFAULT_TIMEOUT)
    };
    // The first runs find the spares still starting, later ones take them: both paths are compared.
    std::thread::sleep(Duration::from_secs(2));
    for cwd in [None, Some("sub")] {
        let spare = run(false, cwd);
        let own = run(true, cwd);
        assert_eq!(spare.exit_code(), Some(7), "{}", spare.exit);
        assert_eq!(own.exit_code(), Some(7), "{}", own.exit);
        assert_eq!(spare.stderr, "err\n");
        assert_eq!(own.stderr, "err\n");
        let without_pids = |stdout: &str| {
            stdout
                .lines()
                .map(|line| match line.split_once("pid ") {
                    Some(_) => {
                        let fields: Vec<&str> = line.split(' ').collect();
                        assert_eq!(fields[1], fields[3], "the run leads its process group: {line}");
                        assert_eq!(fields[1], fields[5], "the run leads its session: {line}");
                        "pid".to_string()
                    }
                    None => line.to_string(),
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(without_pids(&spare.stdout), without_pids(&own.stdout), "spare:\n{}\nown:\n{}", spare.stdout, own.stdout);
        // `sort` puts the value's second line elsewhere.
        assert!(spare.stdout.contains("SANDLINK_TEST_VALUE=a 'quoted' value\n"), "{}", spare.stdout);
        assert!(spare.stdout.contains("\nover two lines\n"), "{}", spare.stdout);
        // `pwd` prints the line before the process facts (a path under the root reads as the workspace's).
        let lines: Vec<&str> = spare.stdout.lines().collect();
        let directory = lines[lines.len() - 2];
        assert_eq!(directory.ends_with("/sub"), cwd.is_some(), "{}", spare.stdout);
    }
}
