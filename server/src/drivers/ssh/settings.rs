//! The ssh driver's settings, parsed and checked before anything is sent.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::drivers::settings::{non_empty, SettingKind, SettingSpec};
use crate::error::{Error, Result};

/// Seconds between keep-alive probes unless the settings say otherwise; a dead connection is noticed within about
/// three of them (ssh's `ServerAliveCountMax`).
pub const DEFAULT_KEEP_ALIVE_SECONDS: u64 = 15;

/// Settings of one ssh session.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// What `ssh` is given: an alias from the ssh configuration, `host`, `user@host` or `user@host:port`.
    pub host: String,
    /// The session root on the remote machine; `None` is a per-workspace folder under `~/.cache/sandlink/`.
    /// A relative path is taken from the remote home.
    pub root: Option<String>,
    pub env: BTreeMap<String, String>,
    /// Seconds between keep-alive probes; 0 turns them off.
    pub keep_alive_seconds: u64,
    /// The ssh configuration file; `None` is ssh's own default (`~/.ssh/config` of the passwd entry's home).
    pub config_file: Option<PathBuf>,
}

/// The ssh driver's settings as a profile writes them; `SETTINGS` lists the same fields for users.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Declared {
    host: Option<String>,
    root: Option<String>,
    env: Option<Map<String, Value>>,
    keep_alive: Option<i64>,
    config_file: Option<String>,
    #[serde(rename = "network")]
    _network: Option<serde::de::IgnoredAny>,
    #[serde(rename = "sync")]
    _sync: Option<serde::de::IgnoredAny>,
    #[serde(rename = "lifecycle")]
    _lifecycle: Option<serde::de::IgnoredAny>,
}

/// The ssh driver's own settings (`sync` and `network` are common to all drivers).
pub const SETTINGS: &[SettingSpec] = &[
    SettingSpec {
        key: "host",
        kind: SettingKind::String,
        required: true,
        default: None,
        description: "the machine: a Host alias from your ssh config, or user@host:port",
    },
    SettingSpec {
        key: "root",
        kind: SettingKind::String,
        required: false,
        default: Some("\"~/.cache/sandlink/<workspace>\""),
        description: "the session's folder on the remote machine (relative paths start at the remote home)",
    },
    SettingSpec {
        key: "env",
        kind: SettingKind::Table,
        required: false,
        default: None,
        description: "environment variables of every run",
    },
    SettingSpec {
        key: "keepAlive",
        kind: SettingKind::Integer,
        required: false,
        default: Some("15"),
        description: "seconds between keep-alive probes (ServerAliveInterval); 0 turns them off",
    },
    SettingSpec {
        key: "configFile",
        kind: SettingKind::String,
        required: false,
        default: Some("\"~/.ssh/config\""),
        description: "the ssh configuration file to read (ssh -F)",
    },
];

fn invalid(message: String) -> Error {
    Error::InvalidProfile(message)
}

impl Settings {
    /// Parses and validates the settings object of a connect request.
    pub fn parse(settings: &Map<String, Value>) -> Result<Settings> {
        let declared: Declared = crate::drivers::settings::parse("ssh", SETTINGS, settings)?;
        let host = non_empty("ssh", "host", declared.host)?.ok_or_else(|| {
            invalid("The ssh driver needs \"host\": a Host alias from your ssh config or user@host:port.".into())
        })?;
        if host.starts_with('-') || host.chars().any(|character| character.is_whitespace() || character == '\0') {
            return Err(invalid(format!("The host \"{host}\" is not a host name, alias or user@host:port.")));
        }
        let root = non_empty("ssh", "root", declared.root)?.map(|root| {
            let root = root.strip_prefix("~/").unwrap_or(&root).trim_end_matches('/').to_string();
            if root.is_empty() { ".".to_string() } else { root }
        });
        if let Some(root) = &root {
            if root == "/" || root == "." || root.split('/').any(|part| part == "..") {
                return Err(invalid(format!(
                    "The root \"{root}\" must be a folder of its own without \"..\", like ~/work/project or /srv/project."
                )));
            }
        }
        let mut env = BTreeMap::new();
        for (name, value) in declared.env.unwrap_or_default() {
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                return Err(invalid(format!("The environment variable name \"{name}\" is not valid.")));
            }
            let value = match value {
                Value::String(text) => text,
                Value::Number(number) => number.to_string(),
                Value::Bool(flag) => flag.to_string(),
                other => {
                    return Err(invalid(format!(
                        "The environment variable \"{name}\" must be a string, number or boolean, not {}.",
                        crate::drivers::settings::type_name(&other)
                    )))
                }
            };
            env.insert(name, value);
        }
        let keep_alive_seconds = match declared.keep_alive {
            None => DEFAULT_KEEP_ALIVE_SECONDS,
            Some(seconds) if (0..=3600).contains(&seconds) => seconds as u64,
            Some(seconds) => {
                return Err(invalid(format!("keepAlive is {seconds}; give seconds from 0 (off) to 3600.")));
            }
        };
        let config_file = non_empty("ssh", "configFile", declared.config_file)?.map(|path| expand_home(&path));
        Ok(Settings { host, root, env, keep_alive_seconds, config_file })
    }
}

/// `~/x` on this machine, as ssh would read it.
fn expand_home(path: &str) -> PathBuf {
    match path.strip_prefix("~/") {
        Some(rest) => dirs::home_dir().unwrap_or_default().join(rest),
        None => PathBuf::from(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: Value) -> Result<Settings> {
        Settings::parse(value.as_object().expect("an object"))
    }

    #[test]
    fn declaration_should_match_the_struct() {
        crate::drivers::settings::assert_declaration_matches::<Declared>("ssh", SETTINGS);
    }

    #[test]
    fn settings_should_need_a_host_and_refuse_option_like_ones() {
        assert!(parse(serde_json::json!({})).is_err());
        assert!(parse(serde_json::json!({ "host": "-oProxyCommand=x" })).is_err());
        assert!(parse(serde_json::json!({ "host": "a b" })).is_err());
        let settings = parse(serde_json::json!({ "host": "me@box:2200", "keepAlive": 0 })).expect("valid");
        assert_eq!(settings.host, "me@box:2200");
        assert_eq!(settings.keep_alive_seconds, 0);
    }

    #[test]
    fn root_should_be_a_folder_of_its_own() {
        for bad in ["/", "~/", "../x", "a/../../b"] {
            assert!(parse(serde_json::json!({ "host": "h", "root": bad })).is_err(), "{bad}");
        }
        let settings = parse(serde_json::json!({ "host": "h", "root": "~/work/p/" })).expect("valid");
        assert_eq!(settings.root.as_deref(), Some("work/p"));
    }
}
