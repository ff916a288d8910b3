//! The user's sync settings (`settings.sync` at connect), parsed and checked in this one place.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The key under a connect's (or a profile's) `settings` that holds the sync settings.
pub const SETTINGS_KEY: &str = "sync";

/// The longest accepted `sync.pollIntervalSeconds`: one day.
pub const MAX_POLL_INTERVAL_SECONDS: f64 = 86_400.0;

/// How changes made outside the editor are noticed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum WatchMode {
    /// A file-system watcher, falling back to periodic rescans when the OS watch limit is reached.
    #[default]
    Auto,
    /// Periodic rescans only (network file systems, tight watch limits).
    Poll,
    /// No automatic detection: only saves announced by the editor, runs and explicit syncs.
    Off,
}

fn default_true() -> bool {
    true
}

/// Sync settings: extra ignore patterns, secret patterns the user opts into, and whether `.git/` goes too.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SyncOptions {
    /// Gitignore-style patterns excluded on top of `.gitignore`, `.ignore` and `.sandlinkignore`.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Gitignore-style patterns of secret-looking files that may be uploaded after all (e.g. `.env.test`).
    #[serde(default)]
    pub allow_secrets: Vec<String>,
    /// Whether files are checked for credential shapes (tokens, keys) before upload, besides their names. On by
    /// default; off only to measure what the check costs, or for a tree known to hold none.
    #[serde(default = "default_true")]
    pub scan_content: bool,
    /// Whether `.git/` is synced; off by default because it is large and rarely needed in the sandbox.
    #[serde(default)]
    pub include_git: bool,
    #[serde(default)]
    pub watch: WatchMode,
    /// Seconds between rescans when polling (default 3).
    #[serde(default)]
    pub poll_interval_seconds: Option<f64>,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            exclude: Vec::new(),
            allow_secrets: Vec::new(),
            scan_content: true,
            include_git: false,
            watch: WatchMode::default(),
            poll_interval_seconds: None,
        }
    }
}

impl SyncOptions {
    /// Reads `settings.sync`; absent means the defaults.
    pub fn from_settings(settings: &Map<String, Value>) -> Result<Self> {
        let Some(value) = settings.get(SETTINGS_KEY) else {
            return Ok(SyncOptions::default());
        };
        if value.is_null() {
            return Ok(SyncOptions::default());
        }
        let options: SyncOptions = serde_json::from_value(value.clone()).map_err(|error| {
            Error::InvalidParams(format!(
                "The sync settings are not valid: {error}. Expected {{ exclude?: [patterns], allowSecrets?: \
                 [patterns], scanContent?: bool, includeGit?: bool, watch?: \"auto\"|\"poll\"|\"off\", pollIntervalSeconds?: number }}."
            ))
        })?;
        if let Some(seconds) = options.poll_interval_seconds {
            // Bounded above too: a huge interval cannot become a Duration (the conversion panics), and a day
            // between rescans is already "never" for a sandbox session.
            if !(seconds.is_finite() && seconds > 0.0 && seconds <= MAX_POLL_INTERVAL_SECONDS) {
                return Err(Error::InvalidParams(format!(
                    "sync.pollIntervalSeconds must be a positive number of seconds, at most {MAX_POLL_INTERVAL_SECONDS}."
                )));
            }
        }
        Ok(options)
    }

    pub fn poll_interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.poll_interval_seconds.unwrap_or(3.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_should_parse_camel_case_and_refuse_unknown_keys() {
        let settings = serde_json::json!({ "sync": { "exclude": ["dist/"], "allowSecrets": [".env.test"], "includeGit": true } });
        let options = SyncOptions::from_settings(settings.as_object().expect("an object literal")).expect("valid");
        assert_eq!(options.exclude, vec!["dist/"]);
        assert_eq!(options.allow_secrets, vec![".env.test"]);
        assert!(options.include_git);
        assert!(options.scan_content, "content scanning is on unless turned off");
        let bad = serde_json::json!({ "sync": { "exclud": [] } });
        let error = SyncOptions::from_settings(bad.as_object().expect("an object literal")).unwrap_err();
        assert!(error.to_string().contains("exclud"), "{error}");
    }
}
