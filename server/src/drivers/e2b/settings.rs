//! The e2b driver's settings: parsed from the profile's JSON, validated, with errors that name the key.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

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

/// Every key the driver understands, for the error that lists them.
const KNOWN_KEYS: &[&str] = &[
    "template",
    "timeoutSeconds",
    "apiUrl",
    "domain",
    "metadata",
    "envs",
    "remoteRoot",
    "keepaliveIdleSeconds",
    "streamKeepaliveSeconds",
    "sandboxId",
    "network",
    "sync",
];

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

fn string_setting(settings: &Map<String, Value>, key: &str) -> Result<Option<String>> {
    match settings.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if !text.trim().is_empty() => Ok(Some(text.trim().to_string())),
        Some(_) => Err(Error::InvalidParams(format!("The e2b setting \"{key}\" must be a non-empty string."))),
    }
}

fn seconds_setting(settings: &Map<String, Value>, key: &str, default: u64, range: (u64, u64)) -> Result<u64> {
    match settings.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(value) => match value.as_u64() {
            Some(seconds) if seconds >= range.0 && seconds <= range.1 => Ok(seconds),
            _ => Err(Error::InvalidParams(format!(
                "The e2b setting \"{key}\" must be a whole number of seconds from {} to {}.",
                range.0, range.1
            ))),
        },
    }
}

fn string_map_setting(settings: &Map<String, Value>, key: &str) -> Result<BTreeMap<String, String>> {
    match settings.get(key) {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(object)) => object
            .iter()
            .map(|(name, value)| match value {
                Value::String(text) => Ok((name.clone(), text.clone())),
                _ => Err(Error::InvalidParams(format!(
                    "The e2b setting \"{key}\" must map names to strings; \"{name}\" is not a string."
                ))),
            })
            .collect(),
        Some(_) => Err(Error::InvalidParams(format!("The e2b setting \"{key}\" must be an object of strings."))),
    }
}

/// Strips a trailing slash and checks that a URL is http(s).
fn checked_url(key: &str, url: String) -> Result<String> {
    let parsed = url::Url::parse(&url).map_err(|error| {
        Error::InvalidParams(format!("The e2b setting \"{key}\" is not a valid URL ({error}): {url}"))
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Error::InvalidParams(format!("The e2b setting \"{key}\" must be an http or https URL.")));
    }
    Ok(url.trim_end_matches('/').to_string())
}

impl Settings {
    pub fn parse(settings: &Map<String, Value>) -> Result<Settings> {
        if let Some(unknown) = settings.keys().find(|key| !KNOWN_KEYS.contains(&key.as_str())) {
            return Err(Error::InvalidParams(format!(
                "The e2b driver has no setting \"{unknown}\". Its settings are: {}.",
                KNOWN_KEYS.join(", ")
            )));
        }
        let domain = string_setting(settings, "domain")?;
        if let Some(domain) = &domain {
            if domain.contains('/') {
                return Err(Error::InvalidParams(format!(
                    "The e2b setting \"domain\" must be a host name such as e2b.app (with an optional :port), not \
                     \"{domain}\"."
                )));
            }
        }
        let api_url = match string_setting(settings, "apiUrl")? {
            Some(url) => checked_url("apiUrl", url)?,
            None => format!("https://api.{}", domain.as_deref().unwrap_or(DEFAULT_DOMAIN)),
        };
        let remote_root = string_setting(settings, "remoteRoot")?.unwrap_or_else(|| DEFAULT_REMOTE_ROOT.into());
        if !remote_root.starts_with('/') || remote_root.split('/').any(|part| part == "..") {
            return Err(Error::InvalidParams(format!(
                "The e2b setting \"remoteRoot\" must be an absolute path without \"..\", not \"{remote_root}\"."
            )));
        }
        let remote_root = match remote_root.trim_end_matches('/') {
            "" => "/".to_string(),
            trimmed => trimmed.to_string(),
        };
        if remote_root == "/" {
            return Err(Error::InvalidParams(
                "The e2b setting \"remoteRoot\" must not be \"/\": sync would manage the whole sandbox.".into(),
            ));
        }
        Ok(Settings {
            template: string_setting(settings, "template")?.unwrap_or_else(|| DEFAULT_TEMPLATE.into()),
            timeout_seconds: seconds_setting(settings, "timeoutSeconds", DEFAULT_TIMEOUT_SECONDS, (1, MAX_TIMEOUT_SECONDS))?,
            api_url,
            domain,
            metadata: string_map_setting(settings, "metadata")?,
            envs: string_map_setting(settings, "envs")?,
            remote_root,
            keepalive_idle_seconds: seconds_setting(
                settings,
                "keepaliveIdleSeconds",
                DEFAULT_KEEPALIVE_IDLE_SECONDS,
                (0, MAX_TIMEOUT_SECONDS),
            )?,
            stream_keepalive_seconds: seconds_setting(
                settings,
                "streamKeepaliveSeconds",
                DEFAULT_STREAM_KEEPALIVE_SECONDS,
                (1, 300),
            )?,
            sandbox_id: string_setting(settings, "sandboxId")?,
            network: NetworkPolicy::from_settings(settings).map_err(|error| Error::InvalidParams(error.to_string()))?,
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
        Settings::parse(value.as_object().expect("an object"))
    }

    #[test]
    fn unknown_keys_should_be_named_in_the_error() {
        let error = parse(json!({"tempalte": "base"})).expect_err("unknown key");
        assert!(error.to_string().contains("\"tempalte\""), "{error}");
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
