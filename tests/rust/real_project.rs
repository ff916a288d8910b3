//! A real project's test suite in the local sandbox on every isolation mechanism: `pip install` from PyPI through
//! the network allow-list's proxy, then attrs' own tests, so isolation never quietly breaks everyday work.
//!
//! Needs PyPI (this project's machines reach it); under CI an unreachable PyPI is a failure, like any missing service.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};

/// A release whose source distribution ships its tests; pinned so the count of tests is stable.
const ATTRS_VERSION: &str = "25.3.0";
/// The test modules run: attrs' functions and validators, about two hundred tests. (`test_converters.py` has one test
/// that fails with today's typing module wherever it runs, so it is left out.)
const TEST_MODULES: &str = "tests/test_funcs.py tests/test_validators.py";

/// The mechanisms this machine offers, by sandlink's own probe; the environment variable hides bubblewrap.
fn mechanisms() -> Vec<(&'static str, Option<&'static str>)> {
    let mut offered = Vec::new();
    for (mechanism, hide) in [("bubblewrap", None), ("landlock", Some("SANDLINK_LOCAL_NO_BWRAP"))] {
        let mut command = Command::new(support::binary());
        command.args(["drivers", "--json"]);
        if let Some(variable) = hide {
            command.env(variable, "1");
        }
        let listing = command.output().expect("sandlink drivers");
        let works = String::from_utf8_lossy(&listing.stdout).contains(&format!("isolation: {mechanism}"));
        if !support::skip_unless(works, &format!("{mechanism} isolation")) {
            offered.push((mechanism, hide));
        }
    }
    offered
}

fn run_in_sandbox(base: &Path, hide: Option<&str>, script: &str) -> Output {
    let mut command = Command::new(support::binary());
    command
        .args(["run", "--profile", "project", "--timeout", "600", "--", script])
        .env("SANDLINK_STATE_DIR", base.join("state"))
        .env("SANDLINK_CONFIG_DIR", base.join("config"))
        .current_dir(base.join("workspace"))
        .stdin(Stdio::null());
    if let Some(variable) = hide {
        command.env(variable, "1");
    }
    command.output().expect("sandlink run")
}

#[test]
fn pip_install_and_a_real_test_suite_should_work_behind_the_allow_list_on_every_mechanism() {
    for (mechanism, hide) in mechanisms() {
        let base = tempfile::tempdir().expect("a temporary directory");
        for dir in ["state", "config", "workspace"] {
            std::fs::create_dir_all(base.path().join(dir)).expect("mkdir");
        }
        std::fs::write(base.path().join("workspace/README"), "a project\n").expect("a workspace file");
        // Only PyPI's two hosts: the index and the files. Everything else is refused by the proxy.
        std::fs::write(
            base.path().join("config/config.toml"),
            format!(
                "[profiles.project]\ndriver = \"local\"\nisolation = \"{mechanism}\"\n\
                 network = [\"pypi.org\", \"files.pythonhosted.org\"]\n"
            ),
        )
        .expect("a profile");
        let script = format!(
            "set -e; python3 -m venv venv; \
             venv/bin/pip download -q --no-deps --no-binary :all: attrs=={ATTRS_VERSION} -d dist; \
             tar xzf dist/attrs-{ATTRS_VERSION}.tar.gz; \
             venv/bin/pip install -q ./attrs-{ATTRS_VERSION} pytest hypothesis; \
             cd attrs-{ATTRS_VERSION}; ../venv/bin/python -m pytest -q -p no:cacheprovider {TEST_MODULES}; \
             if ../venv/bin/pip download -q --retries 0 --no-deps --index-url https://example.com/simple attrs -d ../other; \
             then echo REACHED-AN-UNLISTED-HOST; fi"
        );
        let output = run_in_sandbox(base.path(), hide, &script);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{mechanism}: the project's tests failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
        let summary = stdout.lines().rev().find(|line| line.contains(" passed")).unwrap_or_default();
        let passed: u32 = summary.split_whitespace().next().and_then(|count| count.parse().ok()).unwrap_or(0);
        assert!(passed >= 200, "{mechanism}: attrs' tests ran in the sandbox ({summary:?})\n{stdout}");
        assert!(!summary.contains("failed") && !summary.contains("error"), "{mechanism}: {summary}");
        assert!(!stdout.contains("REACHED-AN-UNLISTED-HOST"), "{mechanism}: the allow-list let pip reach example.com");
        eprintln!("{mechanism}: {summary}");
    }
}
