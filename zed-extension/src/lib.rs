//! The sandlink Zed extension: starts `sandlink lsp` for the worktree and passes the user's settings to it.
//!
//! Zed shows no custom UI and does not take custom notifications, so everything (connect, run, sync, cancel,
//! preview, extend, disconnect) reaches the user through the server's code actions and standard LSP messages.
//! The decisions live in `launch` and `initialization` as plain functions with host unit tests.

pub mod initialization;
pub mod launch;

use zed_extension_api::{self as zed, settings::LspSettings, LanguageServerId, Worktree};

/// The language server's name in extension.toml and under `lsp` in Zed's settings.
pub const LANGUAGE_SERVER_NAME: &str = "sandlink";

struct SandlinkExtension;

fn binary_setting(settings: &LspSettings) -> Option<launch::BinarySetting> {
    settings
        .binary
        .as_ref()
        .map(|binary| launch::BinarySetting {
            path: binary.path.clone(),
            arguments: binary.arguments.clone(),
            env: binary.env.as_ref().map(|env| {
                env.iter()
                    .map(|(name, value)| (name.clone(), value.clone()))
                    .collect()
            }),
        })
}

// Missing or unreadable settings mean "use the defaults": an extension must still start the server then.
fn lsp_settings(worktree: &Worktree) -> LspSettings {
    LspSettings::for_worktree(LANGUAGE_SERVER_NAME, worktree).unwrap_or_default()
}

impl zed::Extension for SandlinkExtension {
    fn new() -> Self {
        SandlinkExtension
    }

    fn language_server_command(
        &mut self,
        _language_server_id: &LanguageServerId,
        worktree: &Worktree,
    ) -> zed::Result<zed::Command> {
        let settings = lsp_settings(worktree);
        let shell_env = worktree.shell_env();
        let (command, _source) = launch::resolve_server_command(
            binary_setting(&settings).as_ref(),
            &shell_env,
            |name| worktree.which(name),
        )?;
        Ok(zed::Command {
            command: command.program,
            args: command.arguments,
            env: command.env,
        })
    }

    fn language_server_initialization_options(
        &mut self,
        _language_server_id: &LanguageServerId,
        worktree: &Worktree,
    ) -> zed::Result<Option<zed::serde_json::Value>> {
        let settings = lsp_settings(worktree);
        Ok(Some(initialization::build_initialization_options(
            settings.initialization_options.as_ref(),
        )))
    }

    fn language_server_workspace_configuration(
        &mut self,
        _language_server_id: &LanguageServerId,
        worktree: &Worktree,
    ) -> zed::Result<Option<zed::serde_json::Value>> {
        let settings = lsp_settings(worktree);
        Ok(Some(initialization::build_workspace_configuration(
            settings.settings.as_ref(),
        )))
    }
}

zed::register_extension!(SandlinkExtension);

#[cfg(test)]
mod tests {
    use super::LANGUAGE_SERVER_NAME;

    const MANIFEST: &str = include_str!("../extension.toml");

    fn manifest_value(key: &str) -> Option<&'static str> {
        MANIFEST.lines().find_map(|line| {
            let (name, value) = line.split_once('=')?;
            (name.trim() == key).then(|| value.trim().trim_matches('"'))
        })
    }

    #[test]
    fn manifest_should_register_the_language_server_under_the_name_the_code_uses() {
        let table = format!("[language_servers.{LANGUAGE_SERVER_NAME}]");
        assert!(
            MANIFEST.lines().any(|line| line.trim() == table),
            "extension.toml lacks {table}"
        );
    }

    #[test]
    fn manifest_version_should_match_the_crate_version() {
        assert_eq!(manifest_value("version"), Some(env!("CARGO_PKG_VERSION")));
        assert_eq!(manifest_value("schema_version"), Some("1"));
    }
}
