//! Finding the `sandlink` binary and the command line that starts its language server, as plain testable functions.

use std::collections::BTreeMap;

/// The program name looked up on the worktree's PATH when no setting names the binary.
pub const BINARY_NAME: &str = "sandlink";

/// The environment variable that overrides discovery, as in the other sandlink clients.
pub const BINARY_ENV_VARIABLE: &str = "SANDLINK_SERVER";

/// The arguments that make the binary speak LSP on stdio.
pub const DEFAULT_ARGUMENTS: &[&str] = &["lsp"];

/// What the user configured under `lsp.sandlink.binary` in Zed's settings, without Zed's types.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BinarySetting {
    pub path: Option<String>,
    pub arguments: Option<Vec<String>>,
    pub env: Option<BTreeMap<String, String>>,
}

/// The program, arguments and environment Zed should start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerCommand {
    pub program: String,
    pub arguments: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// Where the program came from, so that an error or a log can say which setting to change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinarySource {
    Setting,
    EnvironmentVariable,
    Path,
}

/// Decides the server command: the `binary.path` setting, else `$SANDLINK_SERVER` in the worktree's shell environment,
/// else `sandlink` on the worktree's PATH. `which` is Zed's `Worktree::which`, passed in so that tests can fake it.
pub fn resolve_server_command(
    setting: Option<&BinarySetting>,
    shell_env: &[(String, String)],
    which: impl Fn(&str) -> Option<String>,
) -> Result<(ServerCommand, BinarySource), String> {
    let configured_path = setting
        .and_then(|setting| setting.path.as_deref())
        .map(str::trim)
        .filter(|path| !path.is_empty());
    let environment_path = shell_env
        .iter()
        .find(|(name, _)| name == BINARY_ENV_VARIABLE)
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty());

    let (program, source) = if let Some(path) = configured_path {
        (path.to_string(), BinarySource::Setting)
    } else if let Some(path) = environment_path {
        (path.to_string(), BinarySource::EnvironmentVariable)
    } else if let Some(path) = which(BINARY_NAME) {
        (path, BinarySource::Path)
    } else {
        return Err(missing_binary_message());
    };

    let arguments = setting
        .and_then(|setting| setting.arguments.clone())
        .unwrap_or_else(|| {
            DEFAULT_ARGUMENTS
                .iter()
                .map(|argument| argument.to_string())
                .collect()
        });

    Ok((
        ServerCommand {
            program,
            arguments,
            env: merge_environment(shell_env, setting.and_then(|setting| setting.env.as_ref())),
        },
        source,
    ))
}

/// The shell environment (so that the server finds docker, ssh and the user's PATH) with the setting's `env` on top.
pub fn merge_environment(
    shell_env: &[(String, String)],
    overrides: Option<&BTreeMap<String, String>>,
) -> Vec<(String, String)> {
    let mut merged: BTreeMap<String, String> = shell_env.iter().cloned().collect();
    if let Some(overrides) = overrides {
        for (name, value) in overrides {
            merged.insert(name.clone(), value.clone());
        }
    }
    merged.into_iter().collect()
}

/// The sentence Zed shows when no binary is found: it says the three ways to fix it.
pub fn missing_binary_message() -> String {
    format!(
        "sandlink: the `{BINARY_NAME}` binary was not found on PATH. Install it (cargo install --path server in the \
         sandlink repository), set `lsp.sandlink.binary.path` in Zed's settings, or set {BINARY_ENV_VARIABLE} in your shell."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never_found(_: &str) -> Option<String> {
        None
    }

    fn found_on_path(name: &str) -> Option<String> {
        Some(format!("/usr/local/bin/{name}"))
    }

    #[test]
    fn resolve_should_use_the_binary_on_path_with_the_lsp_argument_by_default() {
        let (command, source) = resolve_server_command(None, &[], found_on_path).unwrap();
        assert_eq!(command.program, "/usr/local/bin/sandlink");
        assert_eq!(command.arguments, vec!["lsp".to_string()]);
        assert_eq!(source, BinarySource::Path);
    }

    #[test]
    fn resolve_should_prefer_the_setting_over_the_environment_and_path() {
        let setting = BinarySetting {
            path: Some("/opt/sandlink/bin/sandlink".into()),
            ..Default::default()
        };
        let shell_env = vec![(
            BINARY_ENV_VARIABLE.to_string(),
            "/from/env/sandlink".to_string(),
        )];
        let (command, source) =
            resolve_server_command(Some(&setting), &shell_env, found_on_path).unwrap();
        assert_eq!(command.program, "/opt/sandlink/bin/sandlink");
        assert_eq!(source, BinarySource::Setting);
    }

    #[test]
    fn resolve_should_prefer_the_environment_variable_over_path() {
        let shell_env = vec![(
            BINARY_ENV_VARIABLE.to_string(),
            "/from/env/sandlink".to_string(),
        )];
        let (command, source) = resolve_server_command(None, &shell_env, found_on_path).unwrap();
        assert_eq!(command.program, "/from/env/sandlink");
        assert_eq!(source, BinarySource::EnvironmentVariable);
    }

    #[test]
    fn resolve_should_ignore_a_blank_path_setting() {
        let setting = BinarySetting {
            path: Some("  ".into()),
            ..Default::default()
        };
        let (command, source) = resolve_server_command(Some(&setting), &[], found_on_path).unwrap();
        assert_eq!(command.program, "/usr/local/bin/sandlink");
        assert_eq!(source, BinarySource::Path);
    }

    #[test]
    fn resolve_should_use_the_arguments_from_the_setting_when_given() {
        let setting = BinarySetting {
            arguments: Some(vec![
                "lsp".into(),
                "--log-file".into(),
                "/tmp/sandlink.log".into(),
            ]),
            ..Default::default()
        };
        let (command, _) = resolve_server_command(Some(&setting), &[], found_on_path).unwrap();
        assert_eq!(
            command.arguments,
            vec!["lsp", "--log-file", "/tmp/sandlink.log"]
        );
    }

    #[test]
    fn resolve_should_fail_with_an_actionable_message_when_nothing_is_found() {
        let error = resolve_server_command(None, &[], never_found).unwrap_err();
        assert!(error.contains("lsp.sandlink.binary.path"), "{error}");
        assert!(error.contains(BINARY_ENV_VARIABLE), "{error}");
    }

    #[test]
    fn environment_should_keep_the_shell_and_let_the_setting_override_it() {
        let shell_env = vec![
            ("PATH".to_string(), "/usr/bin".to_string()),
            ("RUST_LOG".to_string(), "warn".to_string()),
        ];
        let overrides = BTreeMap::from([("RUST_LOG".to_string(), "debug".to_string())]);
        let merged = merge_environment(&shell_env, Some(&overrides));
        assert_eq!(
            merged,
            vec![
                ("PATH".to_string(), "/usr/bin".to_string()),
                ("RUST_LOG".to_string(), "debug".to_string())
            ]
        );
    }
}
