//! Profiles through the protocol: saving, listing and deleting user profiles, the default profile, workspace
//! `.sandlink.toml` files, each kind of invalid profile with its own error, and workspace trust.
//!
//! The `keyed` test driver (a local sandbox that needs a credential, enabled by `SANDLINK_TEST_DRIVERS=1`) stands in
//! for a driver with settings and credentials; its token comes from `SANDLINK_KEYED_TOKEN` here.

mod support;

use serde_json::{json, Value};

use support::{file_uri, workspace_with, Server, StartOptions};

const TOKEN: &str = "profile-test-token-1234";

fn token_hash() -> String {
    blake3::hash(TOKEN.as_bytes()).to_hex().to_string()
}

struct Setup {
    server: Server,
    config: tempfile::TempDir,
    workspace: tempfile::TempDir,
}

fn start(workspace_file: Option<&str>) -> Setup {
    let config = tempfile::tempdir().expect("config dir");
    let workspace = workspace_with(&[("main.txt", "main\n")]);
    if let Some(contents) = workspace_file {
        std::fs::write(workspace.path().join(".sandlink.toml"), contents).expect("workspace file");
    }
    let server = Server::start_with(StartOptions {
        root: Some(workspace.path().to_path_buf()),
        env: vec![
            ("SANDLINK_CONFIG_DIR".into(), config.path().display().to_string()),
            ("SANDLINK_TEST_DRIVERS".into(), "1".into()),
            ("SANDLINK_KEYED_TOKEN".into(), TOKEN.into()),
        ],
        ..StartOptions::default()
    });
    Setup { server, config, workspace }
}

fn profiles(server: &Server) -> Value {
    server.request("sandlink/profiles", json!({})).expect("profiles answers")
}

fn entry<'a>(listed: &'a Value, name: &str) -> Option<&'a Value> {
    listed["profiles"].as_array().and_then(|profiles| profiles.iter().find(|profile| profile["name"] == name))
}

fn connect_error(server: &Server, params: Value) -> support::RpcError {
    server.request_error("sandlink/connect", params)
}

#[test]
fn saved_profiles_should_be_listed_used_by_default_and_deleted() {
    let Setup { server, config, workspace } = start(None);
    server
        .request(
            "sandlink/saveProfile",
            json!({ "name": "keyed-dev", "driver": "keyed", "settings": { "expectedTokenHash": token_hash() }, "default": true }),
        )
        .expect("save");
    server.request("sandlink/saveProfile", json!({ "name": "plain", "driver": "local" })).expect("save");
    let listed = profiles(&server);
    let keyed = entry(&listed, "keyed-dev").expect("listed");
    assert_eq!(keyed["driver"], "keyed");
    assert_eq!(keyed["default"], true);
    assert_eq!(keyed["source"], "user");
    assert_eq!(keyed["hasCredentials"], true, "the token is in its environment variable: {keyed}");
    assert_eq!(keyed["settings"]["expectedTokenHash"], token_hash().as_str());
    assert_eq!(entry(&listed, "plain").expect("listed")["default"], false);
    let file = std::fs::read_to_string(config.path().join("config.toml")).expect("user file written");
    assert!(file.contains("[profiles.keyed-dev]") && file.contains("default = \"keyed-dev\""), "{file}");

    let session = server
        .request("sandlink/connect", json!({ "workspaceFolder": file_uri(workspace.path()) }))
        .expect("the default profile connects");
    assert_eq!(session["driver"], "keyed");
    assert_eq!(session["profile"], "keyed-dev");
    let outcome = server.run_to_exit(json!({ "sessionId": session["sessionId"], "command": "cat main.txt" }));
    assert_eq!(outcome.stdout, "main\n");

    server.request("sandlink/deleteProfile", json!({ "name": "keyed-dev" })).expect("delete");
    assert!(entry(&profiles(&server), "keyed-dev").is_none());
    let error = server.request_error("sandlink/deleteProfile", json!({ "name": "keyed-dev" }));
    assert_eq!(error.kind.as_deref(), Some("unknownProfile"));
    let error = connect_error(&server, json!({ "profile": "keyed-dev" }));
    assert_eq!(error.kind.as_deref(), Some("unknownProfile"), "{}", error.message);
}

#[test]
fn invalid_profiles_should_each_get_their_own_clear_error() {
    let Setup { server, config: _config, workspace: _workspace } = start(None);
    let unknown_driver = server.request_error("sandlink/saveProfile", json!({ "name": "x", "driver": "nope" }));
    assert_eq!(unknown_driver.kind.as_deref(), Some("invalidProfile"));
    assert!(unknown_driver.message.contains("\"nope\""), "{}", unknown_driver.message);

    let wrong_type = server.request_error(
        "sandlink/saveProfile",
        json!({ "name": "x", "driver": "keyed", "settings": { "expectedTokenHash": 5 } }),
    );
    assert_eq!(wrong_type.kind.as_deref(), Some("invalidProfile"));
    assert!(wrong_type.message.contains("\"expectedTokenHash\" must be a string"), "{}", wrong_type.message);

    let unknown_key = server.request_error(
        "sandlink/saveProfile",
        json!({ "name": "x", "driver": "keyed", "settings": { "expectedTokenHash": "h", "imagee": "x" } }),
    );
    assert!(unknown_key.message.contains("no setting \"imagee\""), "{}", unknown_key.message);

    let missing = server.request_error("sandlink/saveProfile", json!({ "name": "x", "driver": "keyed" }));
    assert!(missing.message.contains("\"expectedTokenHash\"") && missing.message.contains("missing"), "{}", missing.message);

    let secret = server.request_error(
        "sandlink/saveProfile",
        json!({ "name": "x", "driver": "keyed", "settings": { "expectedTokenHash": "h", "token": "abc" } }),
    );
    assert_eq!(secret.kind.as_deref(), Some("invalidProfile"));
    assert!(secret.message.contains("keychain"), "{}", secret.message);

    let bad_name = server.request_error("sandlink/saveProfile", json!({ "name": "../x", "driver": "local" }));
    assert_eq!(bad_name.kind.as_deref(), Some("invalidParams"));

    let messages = [&unknown_driver, &wrong_type, &unknown_key, &missing, &secret].map(|error| error.message.clone());
    let distinct: std::collections::BTreeSet<_> = messages.iter().collect();
    assert_eq!(distinct.len(), messages.len(), "every problem has its own message: {messages:?}");
    assert!(profiles(&server)["profiles"].as_array().expect("list").is_empty(), "nothing invalid was saved");
}

#[test]
fn a_workspace_file_with_an_unknown_driver_or_bad_types_should_fail_connect_naming_the_key() {
    let Setup { server, config: _config, workspace: _workspace } = start(Some("[profiles.team]\ndriver = \"vagrant\"\n"));
    let error = connect_error(&server, json!({ "profile": "team" }));
    assert_eq!(error.kind.as_deref(), Some("invalidProfile"));
    assert!(error.message.contains("\"vagrant\"") && error.message.contains(".sandlink.toml"), "{}", error.message);

    let Setup { server, config: _config, workspace: _workspace } = start(Some("[profiles.team]\ndriver = \"keyed\"\nexpectedTokenHash = [1, 2]\n"));
    let error = connect_error(&server, json!({ "profile": "team" }));
    assert_eq!(error.kind.as_deref(), Some("invalidProfile"));
    assert!(error.message.contains("\"expectedTokenHash\" must be a string"), "{}", error.message);

    let Setup { server, config: _config, workspace: _workspace } = start(Some("[profiles.team\ndriver = \"local\"\n"));
    let error = connect_error(&server, json!({ "profile": "team" }));
    assert_eq!(error.kind.as_deref(), Some("invalidProfile"));
    assert!(error.message.contains("not valid TOML"), "{}", error.message);
}

#[test]
fn a_workspace_file_holding_a_secret_should_be_refused_with_where_secrets_go() {
    let secret_value = "e2b_0123456789abcdef0123";
    let Setup { server, config: _config, workspace: _workspace } =
        start(Some(&format!("[profiles.cloud]\ndriver = \"keyed\"\nexpectedTokenHash = \"h\"\nnote = \"{secret_value}\"\n")));
    let error = connect_error(&server, json!({ "profile": "cloud" }));
    assert_eq!(error.kind.as_deref(), Some("invalidProfile"));
    assert!(error.message.contains("profiles.cloud.note"), "{}", error.message);
    assert!(error.message.contains("keychain") && error.message.contains("set-credential"), "{}", error.message);
    assert!(!error.message.contains(secret_value), "the error never repeats the secret");
    let listed = profiles(&server);
    assert!(listed["workspaceError"].as_str().unwrap_or_default().contains("looks like a secret"), "{listed}");
    assert!(entry(&listed, "cloud").is_none());
}

#[test]
fn a_remote_workspace_profile_should_be_refused_until_the_workspace_is_trusted() {
    let workspace_file = format!(
        "default = \"team\"\n[profiles.team]\ndriver = \"keyed\"\nexpectedTokenHash = \"{}\"\nremote = true\n\
         [profiles.here]\ndriver = \"local\"\n",
        token_hash()
    );
    let Setup { server, workspace, config: _config } = start(Some(&workspace_file));
    let listed = profiles(&server);
    let team = entry(&listed, "team").expect("listed");
    assert_eq!((team["source"].as_str(), team["needsTrust"].as_bool()), (Some("workspace"), Some(true)), "{team}");
    assert_eq!(team["default"], true);

    let error = connect_error(&server, json!({ "profile": "team" }));
    assert_eq!(error.kind.as_deref(), Some("workspaceNotTrusted"));
    assert!(error.message.contains("sandlink trust") && error.message.contains("Trust workspace") && !error.message.contains("sandlink/"), "{}", error.message);
    let error = connect_error(&server, json!({}));
    assert_eq!(error.kind.as_deref(), Some("workspaceNotTrusted"), "the default profile is gated too");

    let local = server.request("sandlink/connect", json!({ "profile": "here", "sync": false })).expect("local needs no trust");
    assert_eq!(local["driver"], "local");

    let folder = file_uri(workspace.path());
    server.request("sandlink/trustWorkspace", json!({ "workspaceFolder": folder, "trust": true })).expect("trust");
    assert_eq!(entry(&profiles(&server), "team").expect("listed")["needsTrust"], false);
    let session = server.request("sandlink/connect", json!({ "profile": "team" })).expect("trusted now");
    assert_eq!(session["profile"], "team");

    server.request("sandlink/trustWorkspace", json!({ "workspaceFolder": folder, "trust": false })).expect("revoke");
    let error = connect_error(&server, json!({ "profile": "team" }));
    assert_eq!(error.kind.as_deref(), Some("workspaceNotTrusted"), "revoking works");
    let mut names: Vec<String> = std::fs::read_dir(workspace.path())
        .expect("workspace")
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, [".sandlink.toml", "main.txt"], "trust is never written into the workspace");
    let trust_state = std::fs::read_to_string(server.state_dir().join("trust.json")).expect("trust kept in user state");
    assert!(!trust_state.contains(&workspace.path().display().to_string()), "revoked: {trust_state}");
}

#[test]
fn opening_a_workspace_should_connect_nothing_on_its_own() {
    let workspace_file = format!("default = \"team\"\n[profiles.team]\ndriver = \"keyed\"\nexpectedTokenHash = \"{}\"\n", token_hash());
    let Setup { server, config: _config, workspace: _workspace } = start(Some(&workspace_file));
    std::thread::sleep(std::time::Duration::from_millis(300));
    let listed = server.request("sandlink/sessions", json!({})).expect("sessions");
    assert_eq!(listed["sessions"], json!([]), "no session was started by opening the workspace");
    assert!(!server.state_dir().join("sessions").exists() || std::fs::read_dir(server.state_dir().join("sessions")).expect("dir").count() == 0);
}

#[test]
fn the_command_line_should_save_list_trust_and_delete_profiles() {
    let config = tempfile::tempdir().expect("config dir");
    let state = tempfile::tempdir().expect("state dir");
    let workspace = workspace_with(&[(".sandlink.toml", "[profiles.team]\ndriver = \"keyed\"\nexpectedTokenHash = \"x\"\nremote = true\n")]);
    let sandlink = |args: &[&str]| {
        let output = std::process::Command::new(support::binary())
            .args(args)
            .current_dir(workspace.path())
            .env("SANDLINK_CONFIG_DIR", config.path())
            .env("SANDLINK_STATE_DIR", state.path())
            .env("SANDLINK_TEST_DRIVERS", "1")
            .output()
            .expect("sandlink runs");
        (output.status.code(), String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let (code, _, stderr) = sandlink(&["profile", "save", "dev", "--driver", "keyed", "--set", "expectedTokenHash=abc", "--default"]);
    assert_eq!(code, Some(0), "{stderr}");
    let (code, _, stderr) = sandlink(&["profile", "save", "bad", "--driver", "local", "--set", "cpus=2"]);
    assert_eq!(code, Some(125));
    assert!(stderr.contains("no setting \"cpus\""), "{stderr}");

    let (code, stdout, _) = sandlink(&["profile", "list", "--json"]);
    assert_eq!(code, Some(0));
    let listed: Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(entry(&listed, "dev").expect("saved")["default"], true);
    assert_eq!(entry(&listed, "team").expect("workspace profile")["needsTrust"], true);

    let (code, _, stderr) = sandlink(&["trust"]);
    assert_eq!(code, Some(0), "{stderr}");
    let (_, stdout, _) = sandlink(&["profile", "list", "--json"]);
    let listed: Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(entry(&listed, "team").expect("workspace profile")["needsTrust"], false);
    let (code, _, _) = sandlink(&["trust", "--revoke"]);
    assert_eq!(code, Some(0));

    let (code, _, stderr) = sandlink(&["run", "--profile", "team", "--", "true"]);
    assert_eq!(code, Some(125));
    assert!(stderr.contains("sandlink trust"), "{stderr}");

    let (code, _, _) = sandlink(&["profile", "delete", "dev"]);
    assert_eq!(code, Some(0));
    let (_, stdout, _) = sandlink(&["profile", "list", "--json"]);
    assert!(entry(&serde_json::from_str(&stdout).expect("JSON"), "dev").is_none());
}

#[test]
fn initialize_and_drivers_should_carry_each_drivers_settings_schema_and_credentials() {
    let Setup { server, config: _config, workspace: _workspace } = start(None);
    let from_initialize = server.initialize_result["capabilities"]["experimental"]["sandlink"]["drivers"].clone();
    let from_request = server.request("sandlink/drivers", json!({})).expect("drivers answers")["drivers"].clone();
    for drivers in [&from_initialize, &from_request] {
        let driver = |id: &str| {
            drivers.as_array().and_then(|all| all.iter().find(|driver| driver["id"] == id)).cloned().unwrap_or_else(|| panic!("{id} is listed: {drivers}"))
        };
        for (id, own_setting, credentials) in [
            ("local", "isolation", json!([])),
            ("docker", "image", json!([])),
            (
                "e2b",
                "template",
                json!([{ "key": "apiKey", "envVar": "E2B_API_KEY", "required": true, "description": "E2B API key" }]),
            ),
            (
                "keyed",
                "expectedTokenHash",
                json!([{ "key": "token", "envVar": "SANDLINK_KEYED_TOKEN", "required": true, "description": "test token" }]),
            ),
        ] {
            let info = driver(id);
            assert_eq!(info["credentials"], credentials, "{id}: {info}");
            let settings = info["settings"].as_array().unwrap_or_else(|| panic!("{id} lists its settings: {info}"));
            let names: Vec<&str> = settings.iter().filter_map(|setting| setting["name"].as_str()).collect();
            for expected in [own_setting, "sync", "network"] {
                assert!(names.contains(&expected), "{id} lists {expected}: {names:?}");
            }
            for setting in settings {
                assert!(setting["type"].as_str().is_some_and(|kind| !kind.is_empty()), "{id}: {setting}");
                assert!(setting["description"].as_str().is_some_and(|text| !text.is_empty()), "{id}: {setting}");
            }
        }
        let e2b = driver("e2b");
        let timeout = e2b["settings"].as_array().and_then(|all| all.iter().find(|setting| setting["name"] == "timeoutSeconds")).cloned();
        assert_eq!(timeout.map(|setting| (setting["type"].clone(), setting["default"].clone())), Some((json!("integer"), json!(300))));
    }
}

#[test]
fn a_bad_docker_or_e2b_setting_in_a_profile_should_be_an_invalid_profile_naming_the_key_and_the_known_ones() {
    let Setup { server, config: _config, workspace: _workspace } = start(None);
    for (driver, settings, key, known) in [
        ("docker", json!({ "image": "debian:12", "colour": "red" }), "\"colour\"", "remoteRoot"),
        ("e2b", json!({ "templte": "base" }), "\"templte\"", "timeoutSeconds"),
        ("local", json!({ "isolaton": "none" }), "\"isolaton\"", "readOnlyPaths"),
    ] {
        let error = server.request_error("sandlink/saveProfile", json!({ "name": "x", "driver": driver, "settings": settings }));
        assert_eq!(error.kind.as_deref(), Some("invalidProfile"), "{driver}: {error:?}");
        assert!(error.message.contains(key) && error.message.contains(known), "{driver}: {}", error.message);
    }
    let error = server.request_error(
        "sandlink/saveProfile",
        json!({ "name": "x", "driver": "docker", "settings": { "image": "debian:12", "keep": "yes" } }),
    );
    assert_eq!(error.kind.as_deref(), Some("invalidProfile"), "{error:?}");
    assert!(error.message.contains("\"keep\" must be true or false, but it is a string"), "{}", error.message);
}

#[test]
fn a_driver_name_should_work_where_a_profile_is_expected_unless_a_profile_has_that_name() {
    let Setup { server, workspace, .. } = start(None);
    server
        .request(
            "sandlink/saveProfile",
            json!({ "name": "keyed-dev", "driver": "keyed", "settings": { "expectedTokenHash": token_hash() }, "default": true }),
        )
        .expect("save");
    let session = server
        .request("sandlink/connect", json!({ "profile": "local", "workspaceFolder": file_uri(workspace.path()) }))
        .expect("`local` names the driver, not the default profile");
    assert_eq!(session["driver"], "local", "{session}");
    assert_eq!(session["profile"], Value::Null, "{session}");
    server.request("sandlink/disconnect", json!({ "sessionId": session["sessionId"] })).expect("disconnect");

    server
        .request(
            "sandlink/saveProfile",
            json!({ "name": "local", "driver": "keyed", "settings": { "expectedTokenHash": token_hash() } }),
        )
        .expect("save a profile named like a driver");
    let session = server
        .request("sandlink/connect", json!({ "profile": "local", "workspaceFolder": file_uri(workspace.path()) }))
        .expect("the profile wins over the driver of the same name");
    assert_eq!((&session["driver"], &session["profile"]), (&json!("keyed"), &json!("local")), "{session}");

    let error = connect_error(&server, json!({ "profile": "no-such-thing" }));
    assert_eq!(error.kind.as_deref(), Some("unknownProfile"), "{}", error.message);
    assert!(!error.message.contains("sandlink/"), "messages name user commands: {}", error.message);
}
