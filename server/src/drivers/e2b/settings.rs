//! The e2b driver's settings: parsed from the profile's JSON, validated, with errors that name the key.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::drivers::settings::{non_empty, SettingKind, SettingSpec};
use crate::error::{Error, Result};
use crate::netpolicy::{HostPattern, NetworkPolicy, NETWORK_KEY};

/// E2B's public domain; `api.{domain}` is the control API and `{port}-{id}.{domain}` reaches a sandbox port.
pub const DEFAULT_DOMAIN: &str = "e2b.app";
const DEFAULT_TEMPLATE: &str = "base";
/// The SDKs' default sandbox lifetime; the spec's default of 15 s is too short for anything.
const DEFAULT_TIMEOUT_SECONDS: u64 = 300;
/// E2B's longest lifetime (Pro accounts).
const MAX_TIMEOUT_SECONDS: u64 = 24 * 60 * 60;
const DEFAULT_REMOTE_ROOT: &str = "/home/user";
/// Without runs or editor activity for this long, a session stops being kept alive and gets a timeout warning.
const DEFAULT_KEEPALIVE_IDLE_SECONDS: u64 = 10 * 60;
/// What the driver asks envd for as `Keepalive-Ping-Interval` (envd's own default is 90 s).
const DEFAULT_STREAM_KEEPALIVE_SECONDS: u64 = 50;

/// What E2B's egress rules cannot say: the whole IPv4 space, denied so that only `allowOut` gets through ("allowed
/// entries always take precedence over denied entries"). `allow_internet_access: false` means the same.
const DENY_EVERYTHING: &str = "0.0.0.0/0";

#[derive(Debug, Clone)]
pub struct Settings {
    pub template: String,
    pub timeout_seconds: u64,
    pub api_url: String,
    /// The sandbox domain, when configured; otherwise the one E2B answers at create, or `e2b.app`.
    pub domain: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub envs: BTreeMap<String, String>,
    pub remote_root: String,
    pub keepalive_idle_seconds: u64,
    pub stream_keepalive_seconds: u64,
    /// Connect to (or resume) this existing sandbox instead of creating one.
    pub sandbox_id: Option<String>,
    /// The common network policy, carried out with E2B's egress rules.
    pub network: NetworkPolicy,
    /// Whether the settings name a policy (rather than leaving the default): only then is the egress of a sandbox
    /// the user brought (`sandboxId`) replaced.
    pub network_given: bool,
}

/// The e2b driver's settings as a profile writes them; `SETTINGS` lists the same fields for users (a test checks
/// that they agree) and `Settings::parse` turns them into checked `Settings`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Declared {
    template: Option<String>,
    timeout_seconds: Option<i64>,
    api_url: Option<String>,
    domain: Option<String>,
    metadata: Option<BTreeMap<String, String>>,
    envs: Option<BTreeMap<String, String>>,
    remote_root: Option<String>,
    keepalive_idle_seconds: Option<i64>,
    stream_keepalive_seconds: Option<i64>,
    sandbox_id: Option<String>,
    /// The common settings: declared so that the struct accepts them, read from the settings by
    /// `NetworkPolicy::from_settings` and the sync engine.
    #[serde(rename = "network")]
    _network: Option<serde::de::IgnoredAny>,
    #[serde(rename = "sync")]
    _sync: Option<serde::de::IgnoredAny>,
    #[serde(rename = "lifecycle")]
    _lifecycle: Option<serde::de::IgnoredAny>,
}

/// The e2b driver's own settings (`sync` and `network` are common to all drivers).
pub const SETTINGS: &[SettingSpec] = &[
    SettingSpec {
        key: "template",
        kind: SettingKind::String,
        required: false,
        default: Some("\"base\""),
        description: "the template or snapshot the sandbox starts from",
    },
    SettingSpec {
        key: "timeoutSeconds",
        kind: SettingKind::Integer,
        required: false,
        default: Some("300"),
        description: "the sandbox's lifetime, renewed while in use",
    },
    SettingSpec {
        key: "apiUrl",
        kind: SettingKind::String,
        required: false,
        default: None,
        description: "the control API's base URL (E2B_API_URL, else https://api.DOMAIN)",
    },
    SettingSpec {
        key: "domain",
        kind: SettingKind::String,
        required: false,
        default: None,
        description: "the sandbox domain (E2B_DOMAIN, else the one E2B answers, else e2b.app)",
    },
    SettingSpec {
        key: "metadata",
        kind: SettingKind::StringMap,
        required: false,
        default: None,
        description: "sandbox metadata",
    },
    SettingSpec {
        key: "envs",
        kind: SettingKind::StringMap,
        required: false,
        default: None,
        description: "environment variables for every process",
    },
    SettingSpec {
        key: "remoteRoot",
        kind: SettingKind::String,
        required: false,
        default: Some("\"/home/user\""),
        description: "the session's root in the sandbox",
    },
    SettingSpec {
        key: "keepaliveIdleSeconds",
        kind: SettingKind::Integer,
        required: false,
        default: Some("600"),
        description: "how long editor activity keeps the sandbox alive",
    },
    SettingSpec {
        key: "streamKeepaliveSeconds",
        kind: SettingKind::Integer,
        required: false,
        default: Some("50"),
        description: "envd's keepalive interval on run streams",
    },
    SettingSpec {
        key: "sandboxId",
        kind: SettingKind::String,
        required: false,
        default: None,
        description: "an existing sandbox to connect to or resume",
    },
];

/// A bad value in otherwise well-typed settings: like every settings error, `invalidProfile` (a connect that
/// passes settings directly answers `invalidParams`; the engine decides that).
fn invalid(message: String) -> Error {
    Error::InvalidProfile(message)
}

fn seconds(key: &str, value: Option<i64>, default: u64, range: (u64, u64)) -> Result<u64> {
    match value.map(u64::try_from) {
        None => Ok(default),
        Some(Ok(seconds)) if seconds >= range.0 && seconds <= range.1 => Ok(seconds),
        Some(_) => Err(invalid(format!(
            "The e2b setting \"{key}\" must be a whole number of seconds from {} to {}.",
            range.0, range.1
        ))),
    }
}

/// Strips a trailing slash and checks that a URL is http(s).
fn checked_url(key: &str, url: String) -> Result<String> {
    let parsed = url::Url::parse(&url).map_err(|error| {
        invalid(format!("The e2b setting \"{key}\" is not a valid URL ({error}): {url}"))
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid(format!("The e2b setting \"{key}\" must be an http or https URL.")));
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// The environment variables E2B's SDKs read for the API URL and the sandbox domain; a setting wins over them.
pub const API_URL_VARIABLE: &str = "E2B_API_URL";
pub const DOMAIN_VARIABLE: &str = "E2B_DOMAIN";

impl Settings {
    pub fn parse(settings: &Map<String, Value>) -> Result<Settings> {
        Settings::parse_with_environment(settings, |name| std::env::var(name).ok())
    }

    /// Parses with `environment` standing in for the process environment (tests must not race on real variables).
    pub fn parse_with_environment(
        settings: &Map<String, Value>,
        environment: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings> {
        let mut declared: Declared = crate::drivers::settings::parse("e2b", SETTINGS, settings)?;
        let from_environment = |name: &str| environment(name).filter(|value| !value.trim().is_empty());
        declared.domain = declared.domain.or_else(|| from_environment(DOMAIN_VARIABLE));
        declared.api_url = declared.api_url.or_else(|| from_environment(API_URL_VARIABLE));
        let domain = non_empty("e2b", "domain", declared.domain)?;
        if let Some(domain) = &domain {
            if domain.contains('/') {
                return Err(invalid(format!(
                    "The e2b setting \"domain\" must be a host name such as e2b.app (with an optional :port), not \
                     \"{domain}\"."
                )));
            }
        }
        let api_url = match non_empty("e2b", "apiUrl", declared.api_url)? {
            Some(url) => checked_url("apiUrl", url)?,
            None => format!("https://api.{}", domain.as_deref().unwrap_or(DEFAULT_DOMAIN)),
        };
        let remote_root = non_empty("e2b", "remoteRoot", declared.remote_root)?.unwrap_or_else(|| DEFAULT_REMOTE_ROOT.into());
        if !remote_root.starts_with('/') || remote_root.split('/').any(|part| part == "..") {
            return Err(invalid(format!(
                "The e2b setting \"remoteRoot\" must be an absolute path without \"..\", not \"{remote_root}\"."
            )));
        }
        let remote_root = match remote_root.trim_end_matches('/') {
            "" => "/".to_string(),
            trimmed => trimmed.to_string(),
        };
        if remote_root == "/" {
            return Err(invalid(
                "The e2b setting \"remoteRoot\" must not be \"/\": sync would manage the whole sandbox.".into(),
            ));
        }
        Ok(Settings {
            template: non_empty("e2b", "template", declared.template)?.unwrap_or_else(|| DEFAULT_TEMPLATE.into()),
            timeout_seconds: seconds(
                "timeoutSeconds",
                declared.timeout_seconds,
                DEFAULT_TIMEOUT_SECONDS,
                (1, MAX_TIMEOUT_SECONDS),
            )?,
            api_url,
            domain,
            metadata: declared.metadata.unwrap_or_default(),
            envs: declared.envs.unwrap_or_default(),
            remote_root,
            keepalive_idle_seconds: seconds(
                "keepaliveIdleSeconds",
                declared.keepalive_idle_seconds,
                DEFAULT_KEEPALIVE_IDLE_SECONDS,
                (0, MAX_TIMEOUT_SECONDS),
            )?,
            stream_keepalive_seconds: seconds(
                "streamKeepaliveSeconds",
                declared.stream_keepalive_seconds,
                DEFAULT_STREAM_KEEPALIVE_SECONDS,
                (1, 300),
            )?,
            sandbox_id: non_empty("e2b", "sandboxId", declared.sandbox_id)?,
            network: NetworkPolicy::from_settings(settings)?,
            network_given: settings.get(NETWORK_KEY).is_some_and(|value| !value.is_null()),
        })
    }

    /// The create body's fields for the network policy (`network`, `allow_internet_access`); empty for `on`.
    /// An allow-list entry with a port is refused: E2B's rules name hosts and address ranges, never ports.
    pub fn network_create_fields(&self) -> Result<Map<String, Value>> {
        let mut fields = Map::new();
        match &self.network {
            NetworkPolicy::On => {}
            NetworkPolicy::Off => {
                fields.insert("allow_internet_access".into(), Value::Bool(false));
                fields.insert("network".into(), serde_json::json!({ "denyOut": [DENY_EVERYTHING] }));
            }
            NetworkPolicy::Allow(_) => {
                fields.insert("network".into(), self.network_rules()?);
            }
        }
        Ok(fields)
    }

    /// The body of `PUT /sandboxes/{id}/network`, which replaces a running sandbox's egress rules.
    pub fn network_update_body(&self) -> Result<Value> {
        Ok(match &self.network {
            NetworkPolicy::On => serde_json::json!({ "allow_internet_access": true }),
            NetworkPolicy::Off => serde_json::json!({ "denyOut": [DENY_EVERYTHING], "allow_internet_access": false }),
            NetworkPolicy::Allow(_) => self.network_rules()?,
        })
    }

    /// `{"allowOut": [hosts], "denyOut": ["0.0.0.0/0"]}` for an allow-list.
    fn network_rules(&self) -> Result<Value> {
        let hosts = self.network.allowed_hosts();
        if let Some(with_port) = hosts.iter().find(|host| host.port.is_some()) {
            return Err(Error::Unsupported(format!(
                "The e2b driver cannot limit a host to one port, as \"{with_port}\" in this profile's {} asks: \
                 E2B's egress rules name hosts only. List \"{}\" without the port to admit the host on every port.",
                self.network.describe(),
                with_port.host_text()
            )));
        }
        let allow_out: Vec<String> = hosts
            .iter()
            .map(|host| match &host.host {
                // E2B takes bare addresses (and CIDR blocks) as they are.
                HostPattern::Address(address) => address.to_string(),
                _ => host.host_text(),
            })
            .collect();
        Ok(serde_json::json!({ "allowOut": allow_out, "denyOut": [DENY_EVERYTHING] }))
    }
}

/// Whether a domain names this machine or an IP address, where E2B's proxy routes by header rather than by host name.
pub fn routes_by_header(domain: &str) -> bool {
    let host = match domain.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|character| character.is_ascii_digit()) => host,
        _ => domain,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: Value) -> Result<Settings> {
        Settings::parse_with_environment(value.as_object().expect("an object"), |_| None)
    }

    #[test]
    fn unknown_keys_should_be_named_in_the_error() {
        let error = parse(json!({"tempalte": "base"})).expect_err("unknown key");
        assert!(error.to_string().contains("\"tempalte\""), "{error}");
    }

    #[test]
    fn the_declared_struct_and_the_schema_should_name_the_same_settings() {
        crate::drivers::settings::assert_declaration_matches::<Declared>("e2b", SETTINGS);
    }

    #[test]
    fn an_unknown_key_should_be_an_invalid_profile_listing_the_known_keys() {
        let error = parse(json!({"templte": "base"})).expect_err("unknown key");
        assert_eq!(error.kind(), crate::protocol::ErrorKind::InvalidProfile);
        let message = error.to_string();
        assert!(message.contains("\"templte\""), "{message}");
        for known in ["template", "timeoutSeconds", "sandboxId", "network", "sync"] {
            assert!(message.contains(known), "the known key {known} is listed: {message}");
        }
    }

    #[test]
    fn a_wrong_type_should_say_what_the_setting_must_be() {
        let error = parse(json!({"timeoutSeconds": "soon"})).expect_err("a string");
        assert_eq!(error.kind(), crate::protocol::ErrorKind::InvalidProfile);
        assert_eq!(error.to_string(), "The e2b setting \"timeoutSeconds\" must be a whole number, but it is a string.");
        let error = parse(json!({"timeoutSeconds": 0})).expect_err("out of range");
        assert_eq!(error.kind(), crate::protocol::ErrorKind::InvalidProfile);
        assert!(error.to_string().contains("from 1 to 86400"), "{error}");
    }

    #[test]
    fn the_schema_defaults_should_be_what_parse_uses() {
        let parsed = parse(json!({})).expect("valid");
        let schema = crate::drivers::settings::describe(SETTINGS, &[]);
        let default = |name: &str| schema.iter().find(|setting| setting.name == name).and_then(|setting| setting.default.clone());
        assert_eq!(default("template"), Some(json!(parsed.template)));
        assert_eq!(default("timeoutSeconds"), Some(json!(parsed.timeout_seconds)));
        assert_eq!(default("remoteRoot"), Some(json!(parsed.remote_root)));
        assert_eq!(default("keepaliveIdleSeconds"), Some(json!(parsed.keepalive_idle_seconds)));
        assert_eq!(default("streamKeepaliveSeconds"), Some(json!(parsed.stream_keepalive_seconds)));
    }

    #[test]
    fn the_sdk_variables_should_set_the_urls_unless_a_setting_does() {
        let environment = |name: &str| match name {
            API_URL_VARIABLE => Some("http://127.0.0.1:3000/".to_string()),
            DOMAIN_VARIABLE => Some("sandbox.example.com".to_string()),
            _ => None,
        };
        let object = |value: Value| value.as_object().cloned().expect("object");
        let settings = Settings::parse_with_environment(&object(json!({})), environment).expect("valid");
        assert_eq!(settings.api_url, "http://127.0.0.1:3000");
        assert_eq!(settings.domain.as_deref(), Some("sandbox.example.com"));
        let only_domain = |name: &str| (name == DOMAIN_VARIABLE).then(|| "sandbox.example.com".to_string());
        let settings = Settings::parse_with_environment(&object(json!({})), only_domain).expect("valid");
        assert_eq!(settings.api_url, "https://api.sandbox.example.com");
        let explicit = json!({"apiUrl": "https://api.e2b.dev", "domain": "e2b.dev"});
        let settings = Settings::parse_with_environment(&object(explicit), environment).expect("valid");
        assert_eq!((settings.api_url.as_str(), settings.domain.as_deref()), ("https://api.e2b.dev", Some("e2b.dev")));
    }

    #[test]
    fn defaults_should_follow_the_domain() {
        let settings = parse(json!({"domain": "e2b.example.com", "sync": {"ignore": []}})).expect("valid");
        assert_eq!(settings.api_url, "https://api.e2b.example.com");
        assert_eq!(settings.remote_root, "/home/user");
        assert_eq!(settings.timeout_seconds, 300);
    }

    #[test]
    fn bad_values_should_name_the_key() {
        let error = parse(json!({"timeoutSeconds": -3})).expect_err("negative");
        assert!(error.to_string().contains("timeoutSeconds"));
        let error = parse(json!({"remoteRoot": "relative/path"})).expect_err("relative");
        assert!(error.to_string().contains("remoteRoot"));
        let error = parse(json!({"envs": {"A": 1}})).expect_err("not a string");
        assert!(error.to_string().contains("envs"));
    }

    #[test]
    fn the_network_policy_should_map_to_e2b_egress_rules() {
        let default = parse(json!({})).expect("valid");
        assert!(default.network_create_fields().unwrap().is_empty(), "on sends nothing, as before");
        assert!(!default.network_given);
        let off = parse(json!({"network": "off"})).expect("valid");
        assert_eq!(
            Value::Object(off.network_create_fields().unwrap()),
            json!({"allow_internet_access": false, "network": {"denyOut": ["0.0.0.0/0"]}})
        );
        let listed = parse(json!({"network": ["pypi.org", "*.npmjs.org", "10.1.2.3"]})).expect("valid");
        assert_eq!(
            Value::Object(listed.network_create_fields().unwrap()),
            json!({"network": {"allowOut": ["pypi.org", "*.npmjs.org", "10.1.2.3"], "denyOut": ["0.0.0.0/0"]}})
        );
        assert_eq!(listed.network_update_body().unwrap()["allowOut"][0], "pypi.org");
        let with_port = parse(json!({"network": ["pypi.org:443"]})).expect("valid words");
        let error = with_port.network_create_fields().expect_err("E2B has no port rules");
        assert_eq!(error.kind(), crate::protocol::ErrorKind::Unsupported);
        assert!(error.to_string().contains("\"pypi.org:443\""), "{error}");
    }

    #[test]
    fn loopback_domains_should_route_by_header() {
        assert!(routes_by_header("127.0.0.1:4000"));
        assert!(routes_by_header("localhost"));
        assert!(!routes_by_header("e2b.app"));
    }
}
