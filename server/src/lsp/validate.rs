//! Checks on request params that their types cannot express: text that can never reach the OS (NUL bytes) and
//! environment names a process cannot receive. Each failure is `invalidParams` naming the field.

use crate::error::Error;
use crate::protocol::{RunParams, SyncParams};

/// `sandlink/run`: the command, each argument, the cwd and every environment entry must be passable to `execve`.
pub fn run_params(params: &RunParams) -> Result<(), Error> {
    if params.command.is_empty() && params.task.is_none() {
        return Err(Error::InvalidParams(
            "Invalid params for sandlink/run: missing field `command` (a shell line, or a program with `args`); \
             or name a workspace task with `task`."
                .into(),
        ));
    }
    no_nul("sandlink/run", "command", &params.command)?;
    for (index, argument) in params.args.iter().flatten().enumerate() {
        no_nul("sandlink/run", &format!("args[{index}]"), argument)?;
    }
    if let Some(cwd) = &params.cwd {
        no_nul("sandlink/run", "cwd", cwd)?;
    }
    for (name, value) in params.env.iter().flatten() {
        environment_name("sandlink/run", name)?;
        no_nul("sandlink/run", &format!("env.{name}"), value)?;
    }
    Ok(())
}

/// `sandlink/sync`: a path with a NUL names no file, so it is refused rather than silently matching nothing.
pub fn sync_params(params: &SyncParams) -> Result<(), Error> {
    for (index, path) in params.paths.iter().flatten().enumerate() {
        no_nul("sandlink/sync", &format!("paths[{index}]"), path)?;
    }
    Ok(())
}

fn no_nul(method: &str, field: &str, text: &str) -> Result<(), Error> {
    match text.find('\0') {
        None => Ok(()),
        Some(position) => Err(Error::InvalidParams(format!(
            "Invalid params for {method}: {field} contains a NUL byte (at character {}), which no program, path or \
             environment variable can hold; remove it.",
            text[..position].chars().count()
        ))),
    }
}

/// An environment name is passed as `NAME=value`: it can hold neither `=` nor NUL, and cannot be empty.
fn environment_name(method: &str, name: &str) -> Result<(), Error> {
    let problem = if name.is_empty() {
        Some("an empty name")
    } else if name.contains('=') {
        Some("a name containing '=', which the process would read as a different variable")
    } else if name.contains('\0') {
        Some("a name containing a NUL byte")
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(Error::InvalidParams(format!(
            "Invalid params for {method}: env has {problem} ({name:?}); environment variable names cannot be empty or \
             hold '=' or NUL."
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn run(command: &str, args: &[&str], env: &[(&str, &str)]) -> RunParams {
        RunParams {
            session_id: "s".into(),
            command: command.into(),
            task: None,
            args: Some(args.iter().map(|arg| arg.to_string()).collect()),
            cwd: None,
            env: Some(env.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect::<BTreeMap<_, _>>()),
            stdin: false,
            timeout_ms: None,
            detach: false,
        }
    }

    #[test]
    fn a_run_without_command_or_task_should_name_the_field() {
        let message = run_params(&run("", &[], &[])).expect_err("refused").to_string();
        assert!(message.contains("missing field `command`"), "{message}");
    }

    #[test]
    fn each_field_with_a_nul_should_be_named() {
        let message = |params: RunParams| run_params(&params).expect_err("refused").to_string();
        assert!(message(run("ec\0ho", &[], &[])).contains("command contains a NUL"));
        assert!(message(run("echo", &["ok", "b\0d"], &[])).contains("args[1] contains a NUL"));
        assert!(message(run("echo", &[], &[("NAME", "v\0")])).contains("env.NAME contains a NUL"));
        let mut with_cwd = run("echo", &[], &[]);
        with_cwd.cwd = Some("sub\0dir".into());
        assert!(message(with_cwd).contains("cwd contains a NUL"));
    }

    #[test]
    fn empty_or_equals_environment_names_should_be_refused() {
        for name in ["", "A=B"] {
            let error = run_params(&run("echo", &[], &[(name, "v")])).expect_err("refused");
            assert_eq!(error.kind(), crate::protocol::ErrorKind::InvalidParams);
            assert!(error.to_string().contains("env has"), "{error}");
        }
        assert!(run_params(&run("echo", &["plain"], &[("A_B", "x=y")])).is_ok());
    }
}
