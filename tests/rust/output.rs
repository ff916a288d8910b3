//! End-to-end tests of how a run's output is kept: the log's cap (`[runs] logCap`) and its marker, a log under
//! the cap that holds the output byte for byte, and the live view and the command line unaffected by the cap.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use support::{Server, StartOptions};

/// A small cap, so the tests write little and still cross it.
const CAP: u64 = 64 * 1024;

/// A config directory whose config.toml sets the log cap.
fn config_with_cap(cap: &str) -> tempfile::TempDir {
    let config = tempfile::tempdir().expect("a config dir");
    std::fs::write(config.path().join("config.toml"), format!("[runs]\nlogCap = {cap}\n")).expect("config.toml");
    config
}

fn server_with_config(config: &Path) -> Server {
    Server::start_with(StartOptions {
        env: vec![("SANDLINK_CONFIG_DIR".into(), config.display().to_string())],
        ..StartOptions::default()
    })
}

fn log_of(exit: &Value) -> Vec<u8> {
    std::fs::read(exit["logPath"].as_str().expect("the exit names the log")).expect("the log exists")
}

/// Splits a capped log into the kept head and the marker, and reads the dropped count from the marker.
fn dropped_count(marker: &str) -> u64 {
    let start = marker.find('(').expect("the marker names the bytes") + 1;
    let end = marker[start..].find(" bytes)").expect("the marker names the bytes") + start;
    marker[start..end].parse().expect("a count")
}

#[test]
fn a_log_past_its_cap_should_keep_exactly_the_cap_and_name_what_it_dropped() {
    let config = config_with_cap("\"64KiB\"");
    let workspace = support::workspace_with(&[]);
    let server = server_with_config(config.path());
    let session = server.connect("local", Value::Null, workspace.path());
    let written = 300_000u64;
    let outcome = server.run_to_exit(json!({
        "sessionId": session["sessionId"],
        "command": format!("head -c {written} /dev/zero | tr '\\0' 'a'")
    }));
    assert_eq!(outcome.exit_code(), Some(0));
    assert_eq!(outcome.stdout.len() as u64, written, "the live view is not cut by the log's cap");
    assert!(outcome.stdout.bytes().all(|byte| byte == b'a'));
    let log = log_of(&outcome.exit);
    let (head, marker) = log.split_at(CAP as usize);
    assert!(head.iter().all(|byte| *byte == b'a'), "the log keeps the head of the output as it was written");
    let marker = String::from_utf8(marker.to_vec()).expect("the marker is text");
    assert!(marker.starts_with("\n[sandlink: ") && marker.ends_with("]\n") && marker.trim().lines().count() == 1, "{marker:?}");
    assert!(marker.contains("dropped") && marker.contains("logCap"), "{marker:?}");
    assert_eq!(dropped_count(&marker), written - CAP, "the marker names exactly the bytes past the cap: {marker:?}");
}

#[test]
fn both_streams_should_share_one_cap() {
    let config = config_with_cap(&CAP.to_string());
    let workspace = support::workspace_with(&[]);
    let server = server_with_config(config.path());
    server.count_output_only(true);
    let session = server.connect("local", Value::Null, workspace.path());
    let run_id = server.start_run(json!({
        "sessionId": session["sessionId"],
        "command": "head -c 100000 /dev/zero | tr '\\0' o; head -c 100000 /dev/zero | tr '\\0' e >&2; echo last >&2"
    }));
    let exit = server.wait_notification("sandlink/exit", Duration::from_secs(60), |params| params["runId"] == run_id);
    assert_eq!(exit["exitCode"], 0);
    let counter = server.output_counter(&run_id);
    assert!(counter.seq_contiguous, "seq increases by one per notification");
    assert_eq!(counter.text_bytes, 200_005, "the live view shows both streams whole");
    assert!(counter.stderr_tail.ends_with("last\n"), "{:?}", counter.stderr_tail);
    let log = log_of(&exit);
    let (head, marker) = log.split_at(CAP as usize);
    assert!(head.iter().all(|byte| *byte == b'o' || *byte == b'e'));
    assert_eq!(dropped_count(&String::from_utf8_lossy(marker)), 200_005 - CAP);
}

#[test]
fn a_log_under_its_cap_should_hold_the_output_byte_for_byte() {
    let config = config_with_cap("\"1MiB\"");
    let workspace = support::workspace_with(&[]);
    let server = server_with_config(config.path());
    let session = server.connect("local", Value::Null, workspace.path());
    // Text, characters of several bytes, an invalid byte and a path into the root: nothing is added or mapped.
    let root = session["remoteRoot"].as_str().expect("remoteRoot").trim_end_matches('/').to_string();
    let outcome = server.run_to_exit(json!({
        "sessionId": session["sessionId"],
        "command": format!("seq 1 50000; printf 'h\\342\\202\\254llo \\377 bytes\\n'; printf '%s/a.txt\\n' '{root}'")
    }));
    assert_eq!(outcome.exit_code(), Some(0));
    let mut expected: Vec<u8> = (1..=50000).flat_map(|number| format!("{number}\n").into_bytes()).collect();
    expected.extend_from_slice(b"h\xe2\x82\xacllo \xff bytes\n");
    let log = log_of(&outcome.exit);
    assert_eq!(&log[..expected.len()], expected.as_slice(), "the log holds the bytes as the command wrote them");
    assert_eq!(&log[expected.len()..], format!("{root}/a.txt\n").as_bytes(), "the log keeps paths unmapped");
    let shown = format!("h€llo \u{FFFD} bytes\n{}/a.txt\n", workspace.path().display());
    let end: String = outcome.stdout.chars().rev().take(120).collect::<Vec<_>>().into_iter().rev().collect();
    assert!(outcome.stdout.ends_with(&shown), "the live view decodes text and maps paths: {end:?}");

    let exactly = server.run_to_exit(json!({
        "sessionId": session["sessionId"],
        "command": "head -c 1048576 /dev/zero | tr '\\0' z"
    }));
    assert_eq!(log_of(&exactly.exit), vec![b'z'; 1 << 20], "output of exactly the cap has no marker");
}

#[test]
fn the_command_line_should_print_every_byte_past_the_logs_cap() {
    let config = config_with_cap("\"64KiB\"");
    let workspace = support::workspace_with(&[]);
    let state = tempfile::tempdir().expect("state dir");
    let output = Command::new(support::binary())
        .env("SANDLINK_STATE_DIR", state.path())
        .env("SANDLINK_CONFIG_DIR", config.path())
        .args(["run", "--driver", "local", "--workspace"])
        .arg(workspace.path())
        .args(["--", "head -c 3000000 /dev/zero | tr '\\0' b; echo end >&2"])
        .output()
        .expect("sandlink runs");
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(output.stdout.len(), 3_000_000);
    assert!(output.stdout.iter().all(|byte| *byte == b'b'));
    assert_eq!(String::from_utf8_lossy(&output.stderr), "end\n");
}

#[test]
fn a_log_cap_that_is_not_a_size_should_be_refused_with_the_key_named() {
    let config = config_with_cap("\"plenty\"");
    let server = server_with_config(config.path());
    let error = server.request_error("sandlink/profiles", json!({}));
    assert!(error.message.contains("runs.logCap"), "{error:?}");
}
