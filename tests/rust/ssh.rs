//! End-to-end tests of the `ssh` driver against real OpenSSH servers on loopback: the shared parity behaviours,
//! directly and through a ProxyJump host, plus what only ssh has (host keys, authentication, drops, restarts).
//!
//! They need `tests/setup/ssh.sh` (two sshd and a client configuration; `tests/.run/ssh.env` names them). Outside CI
//! they skip when it has not run; under CI (`CI=true`) a missing sshd fails them.

mod support;
#[macro_use]
mod parity;

use std::path::PathBuf;

use serde_json::{json, Value};

use parity::DriverFixture;

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

#[allow(dead_code)]
fn settings(setup: &Setup, extra: Value) -> Value {
    let mut settings = json!({ "host": setup.host, "configFile": setup.config });
    for (key, value) in extra.as_object().expect("an object") {
        settings[key] = value.clone();
    }
    settings
}
