//! Detached runs: a run that survives the editor closing and `kill -9` of the server, listed after a restart and
//! attached from any offset by a new server with byte-exact output, checked against what the command wrote to a file
//! itself. Local here; docker and e2b where their services run. The command line's `run --detach`, `runs`, `logs`
//! and `attach` against a real local session.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use support::{workspace_with, RunOutcome, Server, StartOptions};

/// 3,000 numbered lines, pausing now and then so the run is still going when the server is killed, copied by the
/// command itself into `out.txt`; `done` on stderr at the end.
const COMMAND: &str = "i=0; while [ $i -lt 3000 ]; do i=$((i + 1)); echo \"line $i\"; \
     [ $((i % 500)) -ne 0 ] || sleep 0.3; done | tee out.txt; echo done >&2";

fn server_on(state_dir: &Path, root: &Path, env: Vec<(String, String)>) -> Server {
    Server::start_with(StartOptions {
        state_dir: Some(state_dir.to_path_buf()),
        root: Some(root.to_path_buf()),
        env,
        ..StartOptions::default()
    })
}

fn kill_hard(server: &Server) {
    let status = Command::new("kill").args(["-9", &server.pid().to_string()]).status().expect("kill runs");
    assert!(status.success(), "the server was killed");
    std::thread::sleep(Duration::from_millis(200));
}

/// Attaches from `from` and collects to the exit, checking that every output's offset follows the one before.
fn attach(server: &Server, run_id: &str, from: u64) -> (Value, RunOutcome) {
    let answer = server
        .request("sandlink/attach", json!({ "runId": run_id, "fromOffset": from }))
        .unwrap_or_else(|error| panic!("attach failed: {error:?}"));
    assert_eq!(answer["runId"], run_id);
    let outcome = server.collect_run(run_id, Duration::from_secs(60));
    check_offsets(&outcome, from, 0);
    (answer, outcome)
}

fn check_offsets(outcome: &RunOutcome, stdout_from: u64, stderr_from: u64) {
    let (mut stdout_at, mut stderr_at) = (stdout_from, stderr_from);
    for output in &outcome.outputs {
        let at = match output["stream"].as_str() {
            Some("stdout") => &mut stdout_at,
            _ => &mut stderr_at,
        };
        assert_eq!(output["offset"].as_u64(), Some(*at), "each output starts where the one before ended: {output}");
        *at += output["text"].as_str().expect("text").len() as u64;
    }
}

fn wait_for_file_lines(path: &Path, lines: usize, limit: Duration) -> String {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().count() >= lines || std::time::Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_detached_local_run_should_survive_a_killed_server_and_be_attached_from_any_offset_by_a_new_one() {
    let state = tempfile::tempdir().expect("state dir");
    let workspace = workspace_with(&[("hello.txt", "hello\n")]);
    let first = server_on(state.path(), workspace.path(), Vec::new());
    let session = first.connect("local", Value::Null, workspace.path());
    let session_id = session["sessionId"].as_str().expect("id").to_string();
    let remote_root = session["remoteRoot"].as_str().expect("root").to_string();
    let run_id = first.start_run(json!({ "sessionId": session_id, "command": COMMAND, "detach": true }));
    let first_output = first.wait_notification("sandlink/output", Duration::from_secs(20), |params| params["runId"] == run_id);
    assert_eq!(first_output["offset"], 0, "the starting server follows the run from its first byte: {first_output}");
    kill_hard(&first);
    drop(first);

    let copied = Path::new(&remote_root).join("out.txt");
    let before_restart = std::fs::read_to_string(&copied).unwrap_or_default().lines().count();
    assert!(before_restart < 3000, "the run was still going when the server died ({before_restart} lines)");
    let second = server_on(state.path(), workspace.path(), Vec::new());
    let listed = second.request("sandlink/runs", json!({ "sessionId": session_id })).expect("runs answers");
    let listed_run = listed["runs"].as_array().and_then(|runs| runs.iter().find(|run| run["runId"] == run_id.as_str()).cloned());
    let listed_run = listed_run.unwrap_or_else(|| panic!("the detached run is listed after the restart: {listed}"));
    assert_eq!(listed_run["detached"], true, "{listed_run}");
    assert_eq!(listed_run["sessionId"], session_id.as_str());
    second.request("sandlink/connect", json!({ "reuse": session_id })).expect("re-attach");

    let (_, whole) = attach(&second, &run_id, 0);
    let expected = wait_for_file_lines(&copied, 3000, Duration::from_secs(10));
    assert_eq!(expected.lines().count(), 3000, "the run went on without a server");
    assert_eq!(whole.stdout, expected, "attached from 0: every byte the command wrote, once");
    assert_eq!(whole.stderr, "done\n");
    assert_eq!(whole.exit_code(), Some(0), "{}", whole.exit);
    let listed = second.request("sandlink/runs", json!({ "sessionId": session_id })).expect("runs answers");
    let ended = listed["runs"].as_array().and_then(|runs| runs.iter().find(|run| run["runId"] == run_id.as_str()).cloned());
    assert_eq!(ended.expect("still listed")["exit"]["exitCode"], 0, "{listed}");
    drop(second);

    // A third server, without re-attaching the session: a local run's files are read on this machine.
    let third = server_on(state.path(), workspace.path(), Vec::new());
    let middle = expected.len() as u64 / 2 + 3;
    let (answer, rest) = attach(&third, &run_id, middle);
    assert_eq!(answer["stdoutBytes"], expected.len() as u64, "{answer}");
    assert_eq!(answer["exitCode"], 0, "{answer}");
    assert_eq!(rest.stdout, expected[middle as usize..], "attached from the middle: the rest, byte for byte");
    assert_eq!(rest.exit_code(), Some(0));

    let unknown = third.request_error("sandlink/attach", json!({ "runId": "run-nosuch" }));
    assert_eq!(unknown.kind.as_deref(), Some("unknownRun"), "{}", unknown.message);
}

#[test]
fn a_detached_run_should_end_at_its_time_limit_even_without_a_server() {
    let state = tempfile::tempdir().expect("state dir");
    let workspace = workspace_with(&[("a.txt", "a\n")]);
    let first = server_on(state.path(), workspace.path(), Vec::new());
    let session = first.connect("local", Value::Null, workspace.path());
    let session_id = session["sessionId"].as_str().expect("id").to_string();
    let run_id = first.start_run(json!({
        "sessionId": session_id, "command": "echo started; sleep 60; echo never", "detach": true, "timeoutMs": 1000,
    }));
    first.wait_notification("sandlink/output", Duration::from_secs(20), |params| params["runId"] == run_id);
    kill_hard(&first);
    drop(first);
    std::thread::sleep(Duration::from_secs(4));
    let marker = format!("runs/{run_id}");
    assert!(support::processes_matching(&marker).is_empty(), "nothing of the run outlives its limit");

    let second = server_on(state.path(), workspace.path(), Vec::new());
    let (_, outcome) = attach(&second, &run_id, 0);
    assert_eq!(outcome.stdout, "started\n");
    assert_eq!(outcome.exit["timedOut"], true, "{}", outcome.exit);
    assert_eq!(outcome.exit["signal"], "SIGTERM", "the wrapper recorded how it stopped the run: {}", outcome.exit);
}

fn sandlink(state_dir: &Path) -> Command {
    let mut command = Command::new(support::binary());
    command.env("SANDLINK_STATE_DIR", state_dir);
    command
}

fn output_of(command: &mut Command) -> (i32, String, String) {
    let output = command.output().expect("sandlink runs");
    let code = output.status.code().unwrap_or(-1);
    (code, String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn the_command_line_should_start_list_print_and_attach_detached_runs() {
    let state = tempfile::tempdir().expect("state dir");
    let workspace = workspace_with(&[("a.txt", "a\n")]);
    let (code, stdout, stderr) = output_of(
        sandlink(state.path())
            .args(["run", "--detach", "--driver", "local", "--workspace"])
            .arg(workspace.path())
            .args(["--", "seq 1 2000 | tee numbers.txt; sleep 0.5; echo warned >&2; exit 3"]),
    );
    assert_eq!(code, 0, "run --detach answers at once: {stderr}");
    let run_id = stdout.trim().to_string();
    assert!(run_id.starts_with("run-"), "only the run id on stdout: {stdout:?}");

    let (code, stdout, stderr) = output_of(sandlink(state.path()).args(["runs", "--json"]));
    assert_eq!(code, 0, "{stderr}");
    let listed: Value = serde_json::from_str(&stdout).expect("runs --json is JSON");
    let run = listed["runs"].as_array().and_then(|runs| runs.iter().find(|run| run["runId"] == run_id.as_str()).cloned());
    let run = run.unwrap_or_else(|| panic!("the run is listed: {listed}"));
    assert_eq!(run["detached"], true);
    assert!(run["command"].as_str().unwrap_or_default().contains("seq 1 2000"), "{run}");

    let (code, stdout, stderr) = output_of(sandlink(state.path()).args(["attach", &run_id]));
    assert_eq!(code, 3, "attach exits with the run's exit code: {stderr}");
    let expected: String = (1..=2000).map(|number| format!("{number}\n")).collect();
    assert_eq!(stdout, expected, "attach prints every byte");
    assert!(stderr.contains("warned"), "{stderr}");

    let (code, stdout, stderr) = output_of(sandlink(state.path()).args(["logs", &run_id, "--from", "100", "--json"]));
    assert_eq!(code, 0, "{stderr}");
    let mut text = String::new();
    let mut next = 100u64;
    for line in stdout.lines() {
        let event: Value = serde_json::from_str(line).unwrap_or_else(|error| panic!("JSON lines: {error}: {line}"));
        if event["stream"] == "stdout" {
            assert_eq!(event["offset"].as_u64(), Some(next), "{event}");
            let piece = event["text"].as_str().expect("text");
            next += piece.len() as u64;
            text.push_str(piece);
        }
    }
    assert_eq!(text, expected[100..], "logs --from prints the rest, byte for byte");

    let (code, stdout, _) = output_of(sandlink(state.path()).args(["logs", &run_id]));
    assert_eq!((code, stdout), (0, expected), "logs prints the output as it is");

    let (code, _, stderr) = output_of(sandlink(state.path()).args(["logs", "run-nosuch"]));
    assert_ne!(code, 0, "an unknown run is an error");
    assert!(stderr.contains("run-nosuch"), "{stderr}");
}

/// A driver reached through `Sandbox::exec`: its settings, the server's environment, and what to do to the provider
/// while the run goes on (faults).
struct Remote {
    driver: &'static str,
    settings: Value,
    env: Vec<(String, String)>,
}

/// The same journey on a remote driver: started, server killed, a new server re-attaches the session and attaches from
/// 0; a third attaches from the middle; the output checked against the file the command wrote itself.
fn a_detached_run_should_survive_a_killed_server_on(remote: &Remote, while_running: impl Fn()) {
    let state = tempfile::tempdir().expect("state dir");
    let workspace = workspace_with(&[("hello.txt", "hello\n")]);
    let server = || server_on(state.path(), workspace.path(), remote.env.clone());
    let first = server();
    let session = first.connect(remote.driver, remote.settings.clone(), workspace.path());
    assert_eq!(session["state"], "active", "{session}");
    let session_id = session["sessionId"].as_str().expect("id").to_string();
    let run_id = first.start_run(json!({ "sessionId": session_id, "command": COMMAND, "detach": true }));
    first.wait_notification("sandlink/output", Duration::from_secs(30), |params| params["runId"] == run_id);
    kill_hard(&first);
    drop(first);
    while_running();

    let second = server();
    second.request("sandlink/connect", json!({ "reuse": session_id })).expect("re-attach");
    let (_, whole) = attach(&second, &run_id, 0);
    assert_eq!(whole.exit_code(), Some(0), "{}", whole.exit);
    let copied = second.run_to_exit(json!({ "sessionId": session_id, "command": "cat out.txt" }));
    assert_eq!(copied.stdout.lines().count(), 3000, "the run went on without a server");
    assert_eq!(whole.stdout, copied.stdout, "attached from 0: every byte the command wrote, once");
    assert_eq!(whole.stderr, "done\n");
    drop(second);

    let third = server();
    third.request("sandlink/connect", json!({ "reuse": session_id })).expect("re-attach");
    let middle = copied.stdout.len() as u64 / 2 + 5;
    let (answer, rest) = attach(&third, &run_id, middle);
    assert_eq!(answer["stdoutBytes"], copied.stdout.len() as u64, "{answer}");
    assert_eq!(rest.stdout, copied.stdout[middle as usize..], "attached from the middle: the rest, byte for byte");
    assert_eq!(rest.exit_code(), Some(0));
    third.request("sandlink/disconnect", json!({ "sessionId": session_id })).expect("disconnect");
}

fn docker_ready() -> bool {
    Command::new("docker")
        .args(["image", "inspect", "sandlink-test:busybox"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

#[test]
fn a_detached_docker_run_should_survive_a_killed_server_and_be_attached_from_any_offset() {
    if support::skip_unless(docker_ready(), "Docker with the sandlink-test:busybox image (tests/setup/docker.sh)") {
        return;
    }
    let env = std::env::var("DOCKER_HOST").map(|host| vec![("DOCKER_HOST".to_string(), host)]).unwrap_or_default();
    let remote = Remote { driver: "docker", settings: json!({ "image": "sandlink-test:busybox" }), env };
    a_detached_run_should_survive_a_killed_server_on(&remote, || {});
}

const E2B_API_KEY: &str = "e2b_sandlink_test_key_5f0c9a7e31";

fn e2b_fake() -> Option<(support::fake::FakeProcess, Remote)> {
    let fake = support::fake::FakeProcess::start("E2B", "SANDLINK_E2B_FAKE_SERVER", "e2b_server.py", &["--api-key", E2B_API_KEY])?;
    let settings = json!({
        "apiUrl": format!("http://127.0.0.1:{}", fake.port),
        "domain": format!("localhost:{}", fake.port),
        "timeoutSeconds": 300,
        "streamKeepaliveSeconds": 1,
    });
    let env = vec![("E2B_API_KEY".to_string(), E2B_API_KEY.to_string())];
    Some((fake, Remote { driver: "e2b", settings, env }))
}

#[test]
fn a_detached_e2b_run_should_survive_a_killed_server_and_streams_dropped_every_second() {
    let Some((fake, remote)) = e2b_fake() else { return };
    a_detached_run_should_survive_a_killed_server_on(&remote, || {
        fake.set_faults(json!({ "dropStreamEverySeconds": 1 }));
    });
    let faults = fake.admin("GET", "/_admin/faults", None);
    assert_eq!(faults["dropStreamEverySeconds"], 1.0, "the streams kept dropping throughout: {faults}");
}

#[test]
fn an_ordinary_e2b_run_should_lose_and_repeat_nothing_when_its_stream_drops_every_second() {
    let Some((fake, remote)) = e2b_fake() else { return };
    let server = Server::start_with(StartOptions { env: remote.env.clone(), ..StartOptions::default() });
    let workspace = workspace_with(&[("a.txt", "a\n")]);
    let session = server.connect("e2b", remote.settings.clone(), workspace.path());
    let session_id = session["sessionId"].as_str().expect("id").to_string();
    fake.set_faults(json!({ "dropStreamEverySeconds": 1 }));
    let since = fake.next_sequence();
    let outcome = server.run_to_exit_timeout(
        json!({
            "sessionId": session_id,
            "command": "i=0; while [ $i -lt 3000 ]; do i=$((i + 1)); echo \"line $i\"; \
                        [ $((i % 300)) -ne 0 ] || sleep 0.3; done; echo end >&2",
        }),
        Duration::from_secs(60),
    );
    let reattaches = fake.requests_since(since).iter().filter(|request| request["path"] == "/process.Process/Connect").count();
    fake.set_faults(json!({ "dropStreamEverySeconds": null }));
    let expected: String = (1..=3000).map(|number| format!("line {number}\n")).collect();
    assert!(reattaches >= 2, "the stream dropped during the run ({reattaches} re-attaches)");
    assert_eq!(outcome.stdout.lines().count(), 3000, "no line lost or repeated");
    assert_eq!(outcome.stdout, expected, "every line once, in order");
    assert_eq!(outcome.stderr, "end\n");
    assert_eq!(outcome.exit_code(), Some(0), "{}", outcome.exit);
}

#[test]
fn a_detached_ssh_run_should_survive_a_killed_server_and_be_attached_from_any_offset() {
    let variable = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
    let found = variable("SANDLINK_SSH_CONFIG").zip(variable("SANDLINK_SSH_HOST"));
    if support::skip_unless(found.is_some(), "sshd on loopback (tests/setup/ssh.sh, tests/.run/ssh.env)") {
        return;
    }
    let (config, host) = found.unwrap_or_default();
    let remote = Remote { driver: "ssh", settings: json!({ "host": host, "configFile": config }), env: Vec::new() };
    a_detached_run_should_survive_a_killed_server_on(&remote, || {});
}

#[test]
fn a_detached_daytona_run_should_survive_a_killed_server_and_be_attached_from_any_offset() {
    const KEY: &str = "dtn_sandlink_test_key_8c1e55b0a4f2";
    let Some(fake) = support::fake::FakeProcess::start("Daytona", "SANDLINK_DAYTONA_FAKE_SERVER", "daytona_server.py", &["--api-key", KEY])
    else {
        return;
    };
    let settings = json!({ "apiUrl": format!("http://127.0.0.1:{}/api", fake.port), "streamKeepaliveSeconds": 1 });
    let remote = Remote { driver: "daytona", settings, env: vec![("DAYTONA_API_KEY".into(), KEY.into())] };
    a_detached_run_should_survive_a_killed_server_on(&remote, || {});
}

#[test]
fn a_detached_vercel_run_should_survive_a_killed_server_and_be_attached_from_any_offset() {
    let (token, team, project) = ("vercel_sandlink_test_token_7b1e4c90", "team_sandlinktests", "prj_sandlinktests");
    let arguments = ["--token", token, "--team-id", team];
    let Some(fake) = support::fake::FakeProcess::start("Vercel", "SANDLINK_VERCEL_FAKE_SERVER", "vercel_server.py", &arguments)
    else {
        return;
    };
    let settings = json!({ "baseUrl": format!("http://127.0.0.1:{}/api", fake.port), "timeoutSeconds": 300 });
    let env = vec![
        ("VERCEL_TOKEN".into(), token.into()),
        ("VERCEL_TEAM_ID".into(), team.into()),
        ("VERCEL_PROJECT_ID".into(), project.into()),
        ("VERCEL_OIDC_TOKEN".into(), String::new()),
    ];
    a_detached_run_should_survive_a_killed_server_on(&remote_of("vercel", settings, env), || {});
}

fn remote_of(driver: &'static str, settings: Value, env: Vec<(String, String)>) -> Remote {
    Remote { driver, settings, env }
}

#[test]
fn cancelling_a_detached_local_run_should_stop_its_group_and_say_cancelled() {
    let state = tempfile::tempdir().expect("state dir");
    let workspace = workspace_with(&[("a.txt", "a\n")]);
    let server = server_on(state.path(), workspace.path(), Vec::new());
    let session = server.connect("local", Value::Null, workspace.path());
    let run_id = server.start_run(json!({
        "sessionId": session["sessionId"], "command": "echo started; sleep 30.4242; echo never", "detach": true,
    }));
    let first = server.wait_notification("sandlink/output", Duration::from_secs(20), |params| params["runId"] == run_id);
    assert_eq!(first["text"], "started\n", "{first}");
    server.request("sandlink/cancel", json!({ "runId": run_id })).expect("cancel is accepted");
    let outcome = server.collect_run(&run_id, Duration::from_secs(20));
    assert_eq!(outcome.stdout, "", "nothing after the cancel");
    assert_eq!(outcome.exit["cancelled"], true, "{}", outcome.exit);
    assert_eq!(outcome.exit["signal"], "SIGTERM", "{}", outcome.exit);
    assert!(support::processes_matching("sleep 30.4242").is_empty(), "nothing of the run is left");
}

#[test]
fn removing_a_session_should_end_its_detached_runs_and_forget_them() {
    let state = tempfile::tempdir().expect("state dir");
    let workspace = workspace_with(&[("a.txt", "a\n")]);
    let server = server_on(state.path(), workspace.path(), Vec::new());
    let session = server.connect("local", Value::Null, workspace.path());
    let session_id = session["sessionId"].as_str().expect("id").to_string();
    let run_id = server.start_run(json!({ "sessionId": session_id, "command": "echo up; sleep 30.6161", "detach": true }));
    server.wait_notification("sandlink/output", Duration::from_secs(20), |params| params["runId"] == run_id);
    server.request("sandlink/disconnect", json!({ "sessionId": session_id })).expect("disconnect");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !support::processes_matching("sleep 30.6161").is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(support::processes_matching("sleep 30.6161").is_empty(), "the run ends with its session");
    let listed = server.request("sandlink/runs", json!({})).expect("runs answers");
    let still = listed["runs"].as_array().is_some_and(|runs| runs.iter().any(|run| run["runId"] == run_id.as_str()));
    assert!(!still, "a removed session's detached runs are not listed: {listed}");
    let error = server.request_error("sandlink/attach", json!({ "runId": run_id }));
    assert_eq!(error.kind.as_deref(), Some("unknownRun"), "{}", error.message);
}

#[test]
fn a_detached_run_with_args_should_get_each_argument_as_given() {
    let state = tempfile::tempdir().expect("state dir");
    let workspace = workspace_with(&[("a.txt", "a\n")]);
    let server = server_on(state.path(), workspace.path(), Vec::new());
    let session = server.connect("local", Value::Null, workspace.path());
    // Spaces, quotes and shell syntax in arguments must reach the program untouched, as for an ordinary run.
    let run_id = server.start_run(json!({
        "sessionId": session["sessionId"], "command": "printf", "args": ["[%s]", "a b", "it's", "$HOME;x", "*"],
        "detach": true,
    }));
    let outcome = server.collect_run(&run_id, Duration::from_secs(20));
    assert_eq!(outcome.stdout, "[a b][it's][$HOME;x][*]", "{}", outcome.exit);
    assert_eq!(outcome.exit["exitCode"], 0, "{}", outcome.exit);
}
