//! Runs attached to a terminal (`sandlink/run` with `pty`): what they run by default, the environment a terminal
//! program expects, and the checks on a terminal's size.

use crate::drivers::Sandbox;
use crate::error::{Error, Result};
use crate::protocol::{PtySize, RunParams};

/// The sandbox's login shell: bash where the sandbox has it (colour prompts, history, job control), else `sh`.
pub const LOGIN_SHELL: &str = "if command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi";

/// What a terminal program reads to know how to draw, when the caller did not say.
const DEFAULT_TERM: &str = "xterm-256color";

/// Refuses a terminal the sandbox cannot give, or one of no size.
pub fn check(sandbox: &dyn Sandbox, size: PtySize) -> Result<()> {
    if !sandbox.supports_terminal() {
        return Err(Error::Unsupported(format!(
            "The {} driver cannot attach a run to a terminal; open a terminal in a local, docker, ssh or e2b session, \
             or run the command without one.",
            sandbox.driver_id()
        )));
    }
    check_size(size)
}

/// A terminal needs at least one row and one column.
pub fn check_size(size: PtySize) -> Result<()> {
    if size.cols == 0 || size.rows == 0 {
        return Err(Error::InvalidParams(format!(
            "A terminal of {} columns and {} rows cannot show anything; give both as at least 1.",
            size.cols, size.rows
        )));
    }
    Ok(())
}

/// Fills in what a terminal run leaves out: the login shell when there is no command, `TERM`, and stdin, which a
/// terminal always has (the keystrokes).
pub fn prepare(params: &mut RunParams) {
    if params.command.trim().is_empty() && params.args.is_none() {
        params.command = LOGIN_SHELL.to_string();
    }
    params.env.get_or_insert_with(Default::default).entry("TERM".into()).or_insert_with(|| DEFAULT_TERM.into());
    params.stdin = true;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terminal_params(command: &str) -> RunParams {
        serde_json::from_value(serde_json::json!({
            "sessionId": "s", "command": command, "pty": { "cols": 80, "rows": 24 }
        }))
        .expect("valid params")
    }

    #[test]
    fn a_terminal_without_command_should_start_the_login_shell_with_term_and_stdin() {
        let mut params = terminal_params("");
        prepare(&mut params);
        assert_eq!(params.command, LOGIN_SHELL);
        assert_eq!(params.env.as_ref().and_then(|env| env.get("TERM")).map(String::as_str), Some(DEFAULT_TERM));
        assert!(params.stdin);
    }

    #[test]
    fn a_terminal_should_keep_the_callers_command_and_term() {
        let mut params = terminal_params("top");
        params.env = Some([("TERM".to_string(), "vt100".to_string())].into());
        prepare(&mut params);
        assert_eq!(params.command, "top");
        assert_eq!(params.env.as_ref().and_then(|env| env.get("TERM")).map(String::as_str), Some("vt100"));
    }

    #[test]
    fn a_terminal_of_no_size_should_be_refused() {
        assert!(check_size(PtySize { cols: 0, rows: 24 }).is_err());
        assert!(check_size(PtySize { cols: 80, rows: 0 }).is_err());
        assert!(check_size(PtySize { cols: 80, rows: 24 }).is_ok());
    }
}
