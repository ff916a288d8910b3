//! End-to-end tests of the foundation on the `local` driver: the real binary over stdio, driven like an editor.

mod support;
#[macro_use]
mod parity;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use support::{Server, StartOptions};


parity_tests!(parity::local_fixture);

/// The same behaviours once per isolation mechanism: bubblewrap above, Landlock and none here.
mod landlock {
    crate::parity_tests!(crate::parity::local_landlock_fixture);
}

mod unconfined {
    crate::parity_tests!(crate::parity::local_unconfined_fixture);
}

#[test]
fn a_server_on_the_host_should_not_be_offered_as_a_preview() {
    for fixture in [parity::local_fixture(), parity::local_landlock_fixture()].into_iter().flatten() {
        parity::a_server_on_the_host_should_not_be_offered_as_a_preview(&fixture);
    }
}

#[test]
fn initialize_should_advertise_drivers_commands_and_save_notifications() {
    let server = Server::start();
    let capabilities = &server.initialize_result["capabilities"];
    let sandlink = &capabilities["experimental"]["sandlink"];
    assert_eq!(sandlink["version"], 1);
    let local = sandlink["drivers"]
        .as_array()
        .and_then(|drivers| drivers.iter().find(|driver| driver["id"] == "local"))
        .expect("the local driver is listed");
    assert_eq!(local["available"], true);
    assert!(local["detail"].as_str().is_some_and(|detail| detail.contains("isolation")));
    assert_eq!(local["capabilities"]["exec"], true);
    assert_eq!(local["capabilities"]["cancel"], true);
    let commands: Vec<&str> = capabilities["executeCommandProvider"]["commands"]
        .as_array()
        .expect("commands")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for command in ["sandlink.connect", "sandlink.run", "sandlink.sync", "sandlink.disconnect", "sandlink.cancel"] {
        assert!(commands.contains(&command), "{command} is advertised");
    }
    assert_eq!(capabilities["textDocumentSync"]["save"]["includeText"], false);
    let drivers = server.request("sandlink/drivers", json!({})).expect("drivers");
    assert!(drivers["drivers"].as_array().is_some_and(|drivers| !drivers.is_empty()));
}

#[test]
fn connect_should_copy_the_workspace_honouring_gitignore_and_disconnect_should_remove_it() {
    let workspace = support::workspace_with(&[
        ("README.md", "readme"),
        (".gitignore", "target/\n*.log\n"),
        ("target/big.bin", "ignored"),
        ("debug.log", "ignored"),
        ("src/lib.rs", "fn main() {}"),
    ]);
    let server = Server::start();
    let session = server.connect("local", Value::Null, workspace.path());
    let root = std::path::PathBuf::from(session["remoteRoot"].as_str().expect("remoteRoot"));
    assert!(root.starts_with(server.state_dir()), "the root lives under the state directory");
    assert_eq!(std::fs::read_to_string(root.join("src/lib.rs")).expect("copied"), "fn main() {}");
    assert!(root.join("README.md").exists());
    assert!(!root.join("target").exists(), "ignored folders are not copied");
    assert!(!root.join("debug.log").exists(), "ignored files are not copied");
    server
        .request("sandlink/disconnect", json!({ "sessionId": session["sessionId"] }))
        .expect("disconnect");
    assert!(!root.exists(), "disconnect removes the private root");
}

#[test]
fn disconnect_with_keep_should_leave_the_root() {
    let workspace = support::workspace_with(&[("a.txt", "a")]);
    let server = Server::start();
    let session = server.connect("local", Value::Null, workspace.path());
    let root = std::path::PathBuf::from(session["remoteRoot"].as_str().expect("remoteRoot"));
    server
        .request("sandlink/disconnect", json!({ "sessionId": session["sessionId"], "keep": true }))
        .expect("disconnect");
    assert!(root.join("a.txt").exists(), "keep leaves the sandbox for a later re-attach");
}

#[test]
fn invalid_params_and_unknown_sessions_should_get_clear_errors_and_the_server_keeps_serving() {
    let server = Server::start();
    let missing_command = server.request_error("sandlink/run", json!({ "sessionId": "nope" }));
    assert_eq!(missing_command.kind.as_deref(), Some("invalidParams"));
    assert_eq!(missing_command.code, -32602);
    assert!(missing_command.message.contains("command"), "names the field: {}", missing_command.message);

    let wrong_type = server.request_error("sandlink/run", json!({ "sessionId": 5, "command": "true" }));
    assert_eq!(wrong_type.kind.as_deref(), Some("invalidParams"));

    let unknown_field = server.request_error("sandlink/status", json!({ "sesionId": "x" }));
    assert_eq!(unknown_field.kind.as_deref(), Some("invalidParams"));

    let unknown_session = server.request_error("sandlink/run", json!({ "sessionId": "local-nope", "command": "true" }));
    assert_eq!(unknown_session.kind.as_deref(), Some("unknownSession"));
    assert!(unknown_session.message.contains("local-nope"));

    let unknown_driver = server.request_error("sandlink/connect", json!({ "driver": "vmware" }));
    assert_eq!(unknown_driver.kind.as_deref(), Some("invalidParams"));
    assert!(unknown_driver.message.contains("local"), "lists the known drivers: {}", unknown_driver.message);

    let bad_folder = server.request_error(
        "sandlink/connect",
        json!({ "driver": "local", "workspaceFolder": "file:///definitely/not/here" }),
    );
    assert_eq!(bad_folder.kind.as_deref(), Some("invalidParams"));

    let unknown_command = server.request_error("workspace/executeCommand", json!({ "command": "sandlink.explode", "arguments": [] }));
    assert_eq!(unknown_command.kind.as_deref(), Some("invalidParams"));

    let drivers = server.request("sandlink/drivers", json!({})).expect("the server still serves");
    assert!(drivers["drivers"].is_array());
}

#[test]
fn a_missing_program_should_be_a_clear_error() {
    let workspace = support::workspace_with(&[]);
    let server = Server::start();
    let session = server.connect("local", Value::Null, workspace.path());
    let error = server.request_error(
        "sandlink/run",
        json!({ "sessionId": session["sessionId"], "command": "definitely-not-a-program-xyz", "args": [] }),
    );
    assert_eq!(error.kind.as_deref(), Some("invalidParams"));
    assert!(error.message.contains("not found"), "{}", error.message);
    let through_shell = server.run_to_exit(json!({ "sessionId": session["sessionId"], "command": "definitely-not-a-program-xyz" }));
    assert_eq!(through_shell.exit_code(), Some(127), "the shell reports a missing command as 127");
}

#[test]
fn later_features_should_answer_unsupported_not_silent_success() {
    let workspace = support::workspace_with(&[]);
    let server = Server::start();
    let session = server.connect("local", Value::Null, workspace.path());
    let extend = server.request_error("sandlink/extend", json!({ "sessionId": session["sessionId"], "seconds": 60 }));
    assert_eq!(extend.kind.as_deref(), Some("unsupported"));
    assert!(extend.message.contains("local"), "{}", extend.message);
    let snapshot = server.request_error("sandlink/snapshot", json!({ "sessionId": session["sessionId"] }));
    assert_eq!(snapshot.kind.as_deref(), Some("unsupported"));
}

#[test]
fn a_plain_client_should_get_output_as_log_messages_and_work_through_execute_command() {
    let workspace = support::workspace_with(&[("hello.txt", "hi from a file\n")]);
    let server = Server::start_with(StartOptions {
        notifications: false,
        root: Some(workspace.path().to_path_buf()),
        ..StartOptions::default()
    });
    let session = server
        .request("workspace/executeCommand", json!({ "command": "sandlink.connect", "arguments": [{}] }))
        .expect("connect through executeCommand uses the client's root folder");
    let session_id = session["sessionId"].as_str().expect("sessionId").to_string();
    let progress = server.wait_notification("$/progress", Duration::from_secs(10), |params| params["value"]["kind"] == "begin");
    assert!(progress["value"]["title"].as_str().is_some_and(|title| title.contains("connect")));
    server.wait_notification("window/showMessage", Duration::from_secs(10), |params| {
        params["message"].as_str().is_some_and(|message| message.contains("active"))
    });
    server
        .request(
            "workspace/executeCommand",
            json!({ "command": "sandlink.run", "arguments": [{ "sessionId": session_id, "command": "cat hello.txt" }] }),
        )
        .expect("run through executeCommand");
    let logged = server.wait_notification("window/logMessage", Duration::from_secs(20), |params| {
        params["message"].as_str().is_some_and(|message| message.contains("hi from a file"))
    });
    assert!(logged["type"].is_number());
    server.wait_notification("window/logMessage", Duration::from_secs(20), |params| {
        params["message"].as_str().is_some_and(|message| message.contains("exited with code 0"))
    });
    assert!(
        !server.history().iter().any(|message| message["method"].as_str().is_some_and(|method| method.starts_with("sandlink/"))),
        "a plain client never receives custom notifications"
    );
    server
        .request("workspace/executeCommand", json!({ "command": "sandlink.disconnect", "arguments": [{ "sessionId": session_id }] }))
        .expect("disconnect through executeCommand");
}

#[test]
fn one_gibibyte_of_output_should_arrive_with_bounded_server_memory_and_a_complete_log() {
    let workspace = support::workspace_with(&[]);
    // Logs keep 256 MiB by default; a cap above the output keeps all of it (tests/rust/output.rs covers the cap).
    let config = tempfile::tempdir().expect("a config dir");
    std::fs::write(config.path().join("config.toml"), "[runs]\nlogCap = \"2GiB\"\n").expect("config.toml");
    let server = Server::start_with(StartOptions {
        env: vec![("SANDLINK_CONFIG_DIR".into(), config.path().display().to_string())],
        ..StartOptions::default()
    });
    server.count_output_only(true);
    let session = server.connect("local", Value::Null, workspace.path());
    let gibibyte: u64 = 1 << 30;
    let run_id = server.start_run(json!({
        "sessionId": session["sessionId"],
        "command": format!("head -c {gibibyte} /dev/zero | tr '\\0' 'x'; echo; echo tail-line")
    }));
    let exit = server.wait_notification("sandlink/exit", Duration::from_secs(300), |params| params["runId"] == run_id);
    assert_eq!(exit["exitCode"], 0);
    let log_path = exit["logPath"].as_str().expect("logPath");
    let log_size = std::fs::metadata(log_path).expect("the log exists").len();
    assert_eq!(log_size, gibibyte + "\ntail-line\n".len() as u64, "the log holds every byte");
    let counter = server.output_counter(&run_id);
    assert!(counter.seq_contiguous, "seq increases by one per notification");
    assert!(counter.notifications > 0);
    let peak = support::peak_rss_bytes(server.pid()).expect("VmHWM is readable");
    eprintln!("the server's peak RSS through 1 GiB of output: {} MiB", peak >> 20);
    assert!(peak < 64 << 20, "the server's peak RSS stayed under 64 MiB: {} MiB", peak >> 20);
}

#[test]
fn a_stalled_client_should_not_block_the_process_and_should_see_a_skip_marker() {
    let workspace = support::workspace_with(&[]);
    let server = Server::start();
    server.count_output_only(true);
    let session = server.connect("local", Value::Null, workspace.path());
    let root = std::path::PathBuf::from(session["remoteRoot"].as_str().expect("remoteRoot"));
    let run_id = server.start_run(json!({
        "sessionId": session["sessionId"],
        "command": "head -c 200000000 /dev/zero | tr '\\0' 'y'; echo finished > finished.txt; echo done"
    }));
    server.pause_reading();
    let started = Instant::now();
    while !root.join("finished.txt").exists() {
        assert!(started.elapsed() < Duration::from_secs(60), "the process was blocked by the stalled client");
        std::thread::sleep(Duration::from_millis(20));
    }
    server.resume_reading();
    let exit = server.wait_notification("sandlink/exit", Duration::from_secs(120), |params| params["runId"] == run_id);
    assert_eq!(exit["exitCode"], 0);
    let counter = server.output_counter(&run_id);
    assert!(counter.seq_contiguous);
    let log_path = exit["logPath"].as_str().expect("logPath");
    assert!(
        counter.markers.iter().any(|marker| marker.contains("skipped") && marker.contains(log_path)),
        "the live view says what was skipped and where the full log is: {:?}",
        counter.markers
    );
    assert!(counter.text_bytes < 200_000_000, "the live view skipped part of the output");
    assert!(counter.tail_text.ends_with("done\n"), "the end of the output still arrives: {:?}", counter.tail_text);
}

#[test]
fn runs_should_not_write_outside_the_session_root_when_bubblewrap_is_available() {
    let workspace = support::workspace_with(&[("a.txt", "a")]);
    let server = Server::start();
    let drivers = server.request("sandlink/drivers", json!({})).expect("drivers");
    let detail = drivers["drivers"][0]["detail"].as_str().unwrap_or_default().to_string();
    if support::skip_unless(detail.starts_with("isolation: bubblewrap"), "bubblewrap") {
        return;
    }
    let session = server.connect("local", Value::Null, workspace.path());
    let outside = workspace.path().join("escaped.txt");
    let outcome = server.run_to_exit(json!({
        "sessionId": session["sessionId"],
        "command": format!("echo inside > inside.txt && echo x > {} ; echo tmp > /tmp/ok && cat /tmp/ok", outside.display())
    }));
    assert!(!outside.exists(), "the run could not write to the original workspace");
    assert_eq!(outcome.stdout, "tmp\n", "a private /tmp is writable");
    let root = std::path::PathBuf::from(session["remoteRoot"].as_str().expect("remoteRoot"));
    assert!(root.join("inside.txt").exists(), "the session root is writable");
}

#[test]
fn log_level_from_initialization_options_should_apply_and_stdout_should_carry_only_frames() {
    let server = Server::start_with(StartOptions {
        initialization_options: Some(json!({ "logLevel": "debug" })),
        ..StartOptions::default()
    });
    let error = server.request_error("sandlink/status", json!({ "sessionId": "nope" }));
    assert_eq!(error.kind.as_deref(), Some("unknownSession"));
    // Every byte on stdout parsed as a frame (the reader would have closed otherwise), and logs went to stderr.
    std::thread::sleep(Duration::from_millis(200));
    assert!(server.stderr().contains("request failed"), "debug logs reach stderr: {}", server.stderr());
}

/// The lines of a file the run wrote into its root, empty while it does not exist.
fn lines_of(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect()
}

#[test]
fn cancel_should_send_sigterm_to_every_child_before_sigkill_after_the_grace_period() {
    let workspace = support::workspace_with(&[]);
    let server = Server::start();
    let session = server.connect("local", Value::Null, workspace.path());
    let root = std::path::PathBuf::from(session["remoteRoot"].as_str().expect("remoteRoot"));
    // A marker in each child's argv makes the run's processes recognisable in /proc without touching anything else.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or_default();
    let marker = format!("sandlink-term-{}-{nanos}", std::process::id());
    // The polite child writes down that SIGTERM reached it and leaves; the stubborn one writes it down, then keeps
    // going (timestamping each round) until something stronger ends it. The main shell does not trap TERM, so only
    // the group-wide signal can reach the children.
    let command = format!(
        "sh -c 'trap \"echo got-term > polite.term; exit 0\" TERM; touch polite.ready; sleep 3000 & wait' polite-{marker} & \
         sh -c 'trap \"date +%s%N > stubborn.term\" TERM; touch stubborn.ready; \
                while :; do sleep 0.05; if [ -e stubborn.term ]; then date +%s%N >> stubborn.term; fi; done' stubborn-{marker} & \
         wait"
    );
    let run_id = server.start_run(json!({ "sessionId": session["sessionId"], "command": command }));
    let started = Instant::now();
    while !(root.join("polite.ready").exists() && root.join("stubborn.ready").exists()) {
        assert!(started.elapsed() < Duration::from_secs(30), "the run's children did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    server.request("sandlink/cancel", json!({ "runId": run_id })).expect("cancel is accepted");
    let outcome = server.collect_run(&run_id, Duration::from_secs(30));
    assert_eq!(outcome.exit["cancelled"], true, "exit says cancelled: {}", outcome.exit);

    assert_eq!(
        lines_of(&root.join("polite.term")),
        vec!["got-term".to_string()],
        "a child that handles SIGTERM receives it before anything stronger"
    );
    let stubborn: Vec<u128> =
        lines_of(&root.join("stubborn.term")).iter().filter_map(|line| line.parse().ok()).collect();
    let (Some(first), Some(last)) = (stubborn.first(), stubborn.last()) else {
        panic!("the child that ignores SIGTERM still received it: {:?}", lines_of(&root.join("stubborn.term")));
    };
    let lived_after_term = Duration::from_nanos((last - first) as u64);
    assert!(
        lived_after_term >= Duration::from_millis(1000),
        "a child that ignores SIGTERM gets the grace period before SIGKILL; it was stopped {lived_after_term:?} after SIGTERM"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !support::processes_matching(&marker).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(support::processes_matching(&marker), Vec::<u32>::new(), "the child that ignores SIGTERM was killed");
}

#[test]
fn runs_should_list_what_runs_and_what_ended_lately() {
    let server = Server::start();
    let workspace = support::workspace_with(&[]);
    let session = server.connect("local", Value::Null, workspace.path());
    let other = server.connect("local", Value::Null, workspace.path());
    let finished = server.run_to_exit(json!({ "sessionId": session["sessionId"], "command": "exit 3" }));
    let running = server.start_run(json!({ "sessionId": session["sessionId"], "command": "sleep 30" }));
    server.run_to_exit(json!({ "sessionId": other["sessionId"], "command": "true" }));

    let listed = server.request("sandlink/runs", json!({ "sessionId": session["sessionId"] })).expect("runs");
    let runs = listed["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2, "this session's runs only: {listed}");
    assert_eq!(runs[0]["runId"], running.as_str(), "running first: {listed}");
    assert_eq!(runs[0]["command"], "sleep 30");
    assert!(runs[0].get("exit").is_none(), "still running: {listed}");
    assert_eq!(runs[1]["runId"], finished.exit["runId"], "{listed}");
    assert_eq!(runs[1]["exit"]["exitCode"], 3, "how it ended: {listed}");
    assert!(runs[1]["exit"]["logPath"].as_str().is_some_and(|path| std::path::Path::new(path).exists()), "{listed}");
    assert!(runs[1]["startedAt"].as_str().is_some_and(|at| at.ends_with('Z')), "{listed}");

    let everything = server.request("sandlink/runs", json!({})).expect("all runs");
    assert_eq!(everything["runs"].as_array().map(Vec::len), Some(3), "{everything}");
    let error = server.request_error("sandlink/runs", json!({ "sessionId": "nope" }));
    assert_eq!(error.kind.as_deref(), Some("unknownSession"), "{error:?}");

    server.request("sandlink/cancel", json!({ "runId": running })).expect("cancel");
    server.collect_run(&running, Duration::from_secs(30));
    let after = server.request("sandlink/runs", json!({ "sessionId": session["sessionId"] })).expect("runs");
    assert_eq!(after["runs"][0]["exit"]["cancelled"], true, "{after}");
    assert_eq!(after["runs"].as_array().map(Vec::len), Some(2), "listed once: {after}");
}

/// A sandlink updated (or removed) under a running language server, as a package upgrade or a rebuild does: the
/// server cannot start a sandbox from its own program any more, and says so with what to do, instead of a sandbox
/// that "did not start"; it keeps serving.
#[test]
fn a_server_whose_program_was_replaced_should_say_to_restart_it() {
    let directory = tempfile::tempdir().expect("a temp dir");
    let program = directory.path().join("sandlink");
    std::fs::copy(support::binary(), &program).expect("a copy of the binary");
    let server = Server::start_with(StartOptions { program: Some(program.clone()), ..StartOptions::default() });
    std::fs::remove_file(&program).expect("the program removed under the running server");
    let workspace = support::workspace_with(&[("a.txt", "a")]);
    let error = server.request_error(
        "sandlink/connect",
        json!({ "driver": "local", "workspaceFolder": support::file_uri(workspace.path()) }),
    );
    assert_eq!(error.kind.as_deref(), Some("driverUnavailable"), "{error:?}");
    assert!(error.message.contains("Restart the language server"), "{}", error.message);
    assert!(server.request("sandlink/drivers", json!({})).is_ok(), "the server keeps serving");
}

#[test]
fn a_bubblewrap_that_stops_starting_sandboxes_should_be_reported_and_probed_again() {
    // A bwrap that passes the availability probe (`… true`) but cannot start a sandbox, as after a kernel setting
    // changed since a server remembered that bubblewrap works: connect says the sandbox did not start, and the
    // remembered verdict is forgotten so the next connect probes again.
    let real = std::process::Command::new("sh").args(["-c", "command -v bwrap"]).output().expect("sh");
    let real = String::from_utf8_lossy(&real.stdout).trim().to_string();
    assert!(!real.is_empty(), "bubblewrap is installed by tests/setup");
    let bin = tempfile::tempdir().expect("a temp dir");
    let fake = bin.path().join("bwrap");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\nfor last; do :; done\n[ \"$last\" = true ] && exec {real} \"$@\"\necho 'bwrap: no namespaces' >&2\nexit 1\n"),
    )
    .expect("the fake bwrap");
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("executable");
    let path = format!("{}:{}", bin.path().display(), std::env::var("PATH").unwrap_or_default());
    let server = Server::start_with(StartOptions { env: vec![("PATH".into(), path)], ..StartOptions::default() });
    let workspace = support::workspace_with(&[("a.txt", "a")]);
    let connect = json!({ "driver": "local", "workspaceFolder": support::file_uri(workspace.path()) });
    let error = server.request_error("sandlink/connect", connect.clone());
    assert_eq!(error.kind.as_deref(), Some("driverUnavailable"), "{error:?}");
    assert!(error.message.contains("did not start"), "{}", error.message);
    assert!(!server.state_dir().join("bubblewrap-works").exists(), "the remembered verdict is forgotten");
    // The next connect probes again (and the fake still passes the probe): the same clear error, and no leftovers.
    let again = server.request_error("sandlink/connect", connect);
    assert_eq!(again.kind.as_deref(), Some("driverUnavailable"), "{again:?}");
    let sessions = server.request("sandlink/sessions", json!({})).expect("sessions");
    assert_eq!(sessions["sessions"].as_array().map(Vec::len), Some(0), "{sessions}");
}
