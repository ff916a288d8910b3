//! The daytona driver's settings: parsed from the profile's JSON, validated, with errors that name the key.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::drivers::settings::{non_empty, SettingKind, SettingSpec};
use crate::error::{Error, Result};
use crate::netpolicy::NetworkPolicy;

/// Daytona's public API, what the SDK uses when neither a setting nor `DAYTONA_API_URL` says otherwise.
pub const DEFAULT_API_URL: &str = "https://app.daytona.io/api";
/// The variable the SDK reads the API URL from (from the real environment only, never a dotenv file).
pub const API_URL_VARIABLE: &str = "DAYTONA_API_URL";
/// Daytona's own default: a sandbox stops after this many minutes without activity.
const DEFAULT_AUTO_STOP_MINUTES: u64 = 15;
/// The longest auto-stop interval sandlink asks for (a day); 0, "never", is refused: the point is to stop.
const MAX_AUTO_STOP_MINUTES: u64 = 24 * 60;
/// The home of the sandbox user `daytona` in Daytona's default snapshots.
const DEFAULT_REMOTE_ROOT: &str = "/home/daytona/workspace";
/// Without runs or editor activity for this long, a session stops being kept alive and gets a timeout warning.
const DEFAULT_KEEPALIVE_IDLE_SECONDS: u64 = 10 * 60;
/// How long a new or restarted sandbox may take to reach `started` (the SDK waits 60 s).
const DEFAULT_START_TIMEOUT_SECONDS: u64 = 60;
/// A logs WebSocket that carries nothing, not even a pong, for this long counts as broken.
const DEFAULT_STREAM_KEEPALIVE_SECONDS: u64 = 10;

#[derive(Debug, Clone)]
pub struct Settings {
    pub snapshot: Option<String>,
    pub image: Option<String>,
    pub api_url: String,
    pub target: Option<String>,
    pub cpu: Option<u64>,
    pub memory_gib: Option<u64>,
    pub disk_gib: Option<u64>,
    pub labels: BTreeMap<String, String>,
    pub envs: BTreeMap<String, String>,
    pub auto_stop_minutes: u64,
    pub remote_root: String,
    pub keepalive_idle_seconds: u64,
    pub start_timeout_seconds: u64,
    pub stream_keepalive_seconds: u64,
    /// Connect to (and start, when stopped) this existing sandbox instead of creating one.
    pub sandbox_id: Option<String>,
    pub network: NetworkPolicy,
}

/// The daytona driver's settings as a profile writes them; `SETTINGS` lists the same fields for users (a test checks
/// that they agree) and `Settings::parse` turns them into checked `Settings`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Declared {
    snapshot: Option<String>,
    image: Option<String>,
    api_url: Option<String>,
    target: Option<String>,
    cpu: Option<i64>,
    memory: Option<i64>,
    disk: Option<i64>,
    labels: Option<BTreeMap<String, String>>,
    envs: Option<BTreeMap<String, String>>,
    auto_stop_minutes: Option<i64>,
    remote_root: Option<String>,
    keepalive_idle_seconds: Option<i64>,
    start_timeout_seconds: Option<i64>,
    stream_keepalive_seconds: Option<i64>,
    sandbox_id: Option<String>,
    #[serde(rename = "network")]
    _network: Option<serde::de::IgnoredAny>,
    #[serde(rename = "sync")]
    _sync: Option<serde::de::IgnoredAny>,
    #[serde(rename = "lifecycle")]
    _lifecycle: Option<serde::de::IgnoredAny>,
}

/// The daytona driver's own settings (`sync` and `network` are common to all drivers).
pub const SETTINGS: &[SettingSpec] = &[
    SettingSpec {
        key: "snapshot",
        kind: SettingKind::String,
        required: false,
        default: None,
        description: "the Daytona snapshot the sandbox starts from (Daytona's default snapshot when neither this nor image is set)",
    },
    SettingSpec {
        key: "image",
        kind: SettingKind::String,
        required: false,
        default: None,
        description: "a container image to build the sandbox from, instead of a snapshot",
    },
    SettingSpec {
        key: "apiUrl",
        kind: SettingKind::String,
        required: false,
        default: None,
        description: "the API's base URL (DAYTONA_API_URL, else https://app.daytona.io/api)",
    },
    SettingSpec { key: "target", kind: SettingKind::String, required: false, default: None, description: "the region (us, eu)" },
    SettingSpec { key: "cpu", kind: SettingKind::Integer, required: false, default: None, description: "CPU cores" },
    SettingSpec { key: "memory", kind: SettingKind::Integer, required: false, default: None, description: "memory in GiB" },
    SettingSpec { key: "disk", kind: SettingKind::Integer, required: false, default: None, description: "disk in GiB" },
    SettingSpec { key: "labels", kind: SettingKind::StringMap, required: false, default: None, description: "sandbox labels" },
    SettingSpec {
        key: "envs",
        kind: SettingKind::StringMap,
        required: false,
        default: None,
        description: "environment variables for every process",
    },
    SettingSpec {
        key: "autoStopMinutes",
        kind: SettingKind::Integer,
        required: false,
        default: Some("15"),
        description: "minutes without activity after which Daytona stops the sandbox; sandlink keeps it active while in use",
    },
    SettingSpec {
        key: "remoteRoot",
        kind: SettingKind::String,
        required: false,
        default: Some("\"/home/daytona/workspace\""),
        description: "the session's folder inside the sandbox",
    },
    SettingSpec {
        key: "keepaliveIdleSeconds",
        kind: SettingKind::Integer,
        required: false,
        default: Some("600"),
        description: "editor inactivity after which the sandbox is no longer kept active (a warning comes first)",
    },
    SettingSpec {
        key: "startTimeoutSeconds",
        kind: SettingKind::Integer,
        required: false,
        default: Some("60"),
        description: "how long the sandbox may take to start",
    },
    SettingSpec {
        key: "streamKeepaliveSeconds",
        kind: SettingKind::Integer,
        required: false,
        default: Some("10"),
        description: "how often a run's log stream is pinged; three silent intervals mean it broke",
    },
    SettingSpec {
        key: "sandboxId",
        kind: SettingKind::String,
        required: false,
        default: None,
        description: "an existing sandbox to connect to (started again when stopped)",
    },
];

fn invalid(message: String) -> Error {
    Error::InvalidProfile(message)
}

fn bounded(key: &str, what: &str, value: Option<i64>, default: u64, range: (u64, u64)) -> Result<u64> {
    match value.map(u64::try_from) {
        None => Ok(default),
        Some(Ok(number)) if number >= range.0 && number <= range.1 => Ok(number),
        Some(_) => Err(invalid(format!(
            "The daytona setting \"{key}\" must be a whole number of {what} from {} to {}.",
            range.0, range.1
        ))),
    }
}

fn optional(key: &str, what: &str, value: Option<i64>, range: (u64, u64)) -> Result<Option<u64>> {
    value.map(|value| bounded(key, what, Some(value), 0, range)).transpose()
}

/// Strips a trailing slash and checks that a URL is http(s).
fn checked_url(key: &str, url: String) -> Result<String> {
    let parsed =
        url::Url::parse(&url).map_err(|error| invalid(format!("The daytona setting \"{key}\" is not a valid URL ({error}): {url}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid(format!("The daytona setting \"{key}\" must be an http or https URL.")));
    }
    Ok(url.trim_end_matches('/').to_string())
}

impl Settings {
    pub fn parse(settings: &Map<String, Value>) -> Result<Settings> {
        let declared: Declared = crate::drivers::settings::parse("daytona", SETTINGS, settings)?;
        let api_url = match non_empty("daytona", "apiUrl", declared.api_url)? {
            Some(url) => checked_url("apiUrl", url)?,
            None => match std::env::var(API_URL_VARIABLE).ok().filter(|url| !url.trim().is_empty()) {
                Some(url) => checked_url(API_URL_VARIABLE, url.trim().to_string())?,
                None => DEFAULT_API_URL.to_string(),
            },
        };
        let snapshot = non_empty("daytona", "snapshot", declared.snapshot)?;
        let image = non_empty("daytona", "image", declared.image)?;
        if snapshot.is_some() && image.is_some() {
            return Err(invalid("The daytona settings \"snapshot\" and \"image\" exclude each other; give one.".into()));
        }
        let remote_root = non_empty("daytona", "remoteRoot", declared.remote_root)?.unwrap_or_else(|| DEFAULT_REMOTE_ROOT.into());
        if !remote_root.starts_with('/') || remote_root.split('/').any(|part| part == "..") {
            return Err(invalid(format!(
                "The daytona setting \"remoteRoot\" must be an absolute path without \"..\", not \"{remote_root}\"."
            )));
        }
        let remote_root = remote_root.trim_end_matches('/').to_string();
        if remote_root.is_empty() {
            return Err(invalid("The daytona setting \"remoteRoot\" must not be \"/\": sync would manage the whole sandbox.".into()));
        }
        Ok(Settings {
            snapshot,
            image,
            api_url,
            target: non_empty("daytona", "target", declared.target)?,
            cpu: optional("cpu", "cores", declared.cpu, (1, 256))?,
            memory_gib: optional("memory", "GiB", declared.memory, (1, 1024))?,
            disk_gib: optional("disk", "GiB", declared.disk, (1, 10240))?,
            labels: declared.labels.unwrap_or_default(),
            envs: declared.envs.unwrap_or_default(),
            auto_stop_minutes: bounded(
                "autoStopMinutes",
                "minutes",
                declared.auto_stop_minutes,
                DEFAULT_AUTO_STOP_MINUTES,
                (1, MAX_AUTO_STOP_MINUTES),
            )?,
            remote_root,
            keepalive_idle_seconds: bounded(
                "keepaliveIdleSeconds",
                "seconds",
                declared.keepalive_idle_seconds,
                DEFAULT_KEEPALIVE_IDLE_SECONDS,
                (0, 24 * 60 * 60),
            )?,
            start_timeout_seconds: bounded(
                "startTimeoutSeconds",
                "seconds",
                declared.start_timeout_seconds,
                DEFAULT_START_TIMEOUT_SECONDS,
                (1, 3600),
            )?,
            stream_keepalive_seconds: bounded(
                "streamKeepaliveSeconds",
                "seconds",
                declared.stream_keepalive_seconds,
                DEFAULT_STREAM_KEEPALIVE_SECONDS,
                (1, 300),
            )?,
            sandbox_id: non_empty("daytona", "sandboxId", declared.sandbox_id)?,
            network: NetworkPolicy::from_settings(settings)?,
        })
    }

    /// The create body's network fields: `off` blocks everything; an allow-list is refused before anything is
    /// created, because Daytona's `networkAllowList` takes address ranges only, never host names or ports.
    pub fn network_create_fields(&self) -> Result<Map<String, Value>> {
        let mut fields = Map::new();
        match &self.network {
            NetworkPolicy::On => {}
            NetworkPolicy::Off => {
                fields.insert("networkBlockAll".into(), Value::Bool(true));
            }
            NetworkPolicy::Allow(_) => {
                return Err(Error::Unsupported(
                    "The daytona driver cannot carry out a network allow-list: Daytona's networkAllowList takes \
                     address ranges only, and sandlink's list names hosts. Use network = \"on\" or \"off\"."
                        .into(),
                ))
            }
        }
        Ok(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: Value) -> Result<Settings> {
        Settings::parse(value.as_object().expect("an object"))
    }

    #[test]
    fn the_declared_struct_and_the_schema_should_name_the_same_settings() {
        crate::drivers::settings::assert_declaration_matches::<Declared>("daytona", SETTINGS);
    }

    #[test]
    fn the_schema_defaults_should_be_what_parse_uses() {
        let parsed = parse(json!({ "apiUrl": "http://127.0.0.1:1/api" })).expect("defaults parse");
        let default = |key: &str| {
            SETTINGS.iter().find(|spec| spec.key == key).and_then(|spec| spec.default).map(|text| {
                serde_json::from_str::<Value>(text).expect("valid JSON")
            })
        };
        assert_eq!(default("remoteRoot"), Some(json!(parsed.remote_root)));
        assert_eq!(default("autoStopMinutes"), Some(json!(parsed.auto_stop_minutes)));
        assert_eq!(default("keepaliveIdleSeconds"), Some(json!(parsed.keepalive_idle_seconds)));
        assert_eq!(default("startTimeoutSeconds"), Some(json!(parsed.start_timeout_seconds)));
        assert_eq!(default("streamKeepaliveSeconds"), Some(json!(parsed.stream_keepalive_seconds)));
        assert_eq!(parsed.api_url, "http://127.0.0.1:1/api");
    }

    #[test]
    fn bad_values_should_name_the_key() {
        for (value, key) in [
            (json!({ "autoStopMinutes": 0 }), "autoStopMinutes"),
            (json!({ "remoteRoot": "relative" }), "remoteRoot"),
            (json!({ "remoteRoot": "/" }), "remoteRoot"),
            (json!({ "cpu": -1 }), "cpu"),
            (json!({ "apiUrl": "ftp://x" }), "apiUrl"),
            (json!({ "snapshot": "a", "image": "b" }), "image"),
            (json!({ "snapshott": "a" }), "snapshott"),
        ] {
            let error = parse(value.clone()).expect_err("refused");
            assert!(error.to_string().contains(key), "{value}: {error}");
        }
    }

    #[test]
    fn the_network_policy_should_block_all_or_be_refused_as_a_list() {
        let off = parse(json!({ "network": "off" })).expect("off");
        assert_eq!(off.network_create_fields().expect("supported"), json!({ "networkBlockAll": true }).as_object().cloned().unwrap_or_default());
        let on = parse(json!({})).expect("on");
        assert!(on.network_create_fields().expect("supported").is_empty());
        let listed = parse(json!({ "network": ["example.com"] })).expect("parses");
        assert!(listed.network_create_fields().is_err());
    }
}
