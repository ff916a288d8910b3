//! End-to-end tests of the `docker` driver against a real dockerd: the shared parity behaviours plus what only
//! Docker has (safe defaults, published ports, faults from outside, orphan cleanup, the sync operations).
//!
//! They need `tests/setup/docker.sh` (a running daemon and the `sandlink-test:busybox` image). Outside CI they
//! skip when Docker is absent; under CI (`CI=true`) a missing Docker fails them.

mod support;
#[macro_use]
mod parity;

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
