//! The vercel driver's settings: parsed from the profile's JSON, validated, with errors that name the key.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::drivers::settings::{non_empty, SettingKind, SettingSpec};
use crate::error::{Error, Result};
use crate::netpolicy::{HostPattern, NetworkPolicy};

/// The base URL the official SDK hard-codes; the REST reference's `https://api.vercel.com` takes the same paths.
pub const DEFAULT_BASE_URL: &str = "https://vercel.com/api";
/// The SDK's default session lifetime is 5 minutes.
const DEFAULT_TIMEOUT_SECONDS: u64 = 300;
/// Vercel's longest session (Pro and Enterprise plans: 5 hours).
const MAX_TIMEOUT_SECONDS: u64 = 5 * 60 * 60;
/// Where Vercel sandboxes start commands and where the SDK resolves relative paths.
pub const DEFAULT_REMOTE_ROOT: &str = "/vercel/sandbox";
const DEFAULT_KEEPALIVE_IDLE_SECONDS: u64 = 10 * 60;
/// v2 takes up to 15 declared ports (v1 four).
const MAX_PORTS_V2: usize = 15;
const MAX_PORTS_V1: usize = 4;

/// Which generation of Vercel's sandbox API the driver speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    /// `/v1/sandboxes/{id}`: the sandbox is the VM (SDK 1.x).
    V1,
    /// Named sandboxes with sessions: `/v2/sandboxes/sessions/{sessionId}` (SDK 2.x and 3.x).
    V2,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub generation: Generation,
    pub base_url: String,
    pub runtime: Option<String>,
    pub image: Option<String>,
    pub vcpus: Option<u64>,
    pub timeout_seconds: u64,
    pub ports: Vec<u16>,
    pub persistent: bool,
    pub env: BTreeMap<String, String>,
    pub region: Option<String>,
    pub remote_root: String,
    pub keepalive_idle_seconds: u64,
    /// Connect to (or resume) this sandbox instead of creating one: its name (v2) or id (v1).
    pub sandbox: Option<String>,
    pub network: NetworkPolicy,
}

/// The settings as a profile writes them; `SETTINGS` lists the same fields for users (a test checks they agree).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Declared {
    api_version: Option<String>,
    base_url: Option<String>,
    runtime: Option<String>,
    image: Option<String>,
    vcpus: Option<i64>,
    timeout_seconds: Option<i64>,
    ports: Option<Vec<i64>>,
    persistent: Option<bool>,
    env: Option<BTreeMap<String, String>>,
    region: Option<String>,
    remote_root: Option<String>,
    keepalive_idle_seconds: Option<i64>,
    sandbox: Option<String>,
    #[serde(rename = "network")]
    _network: Option<serde::de::IgnoredAny>,
    #[serde(rename = "sync")]
    _sync: Option<serde::de::IgnoredAny>,
    #[serde(rename = "lifecycle")]
    _lifecycle: Option<serde::de::IgnoredAny>,
}

/// The vercel driver's own settings (`sync` and `network` are common to all drivers).
pub const SETTINGS: &[SettingSpec] = &[
    SettingSpec {
        key: "apiVersion",
        kind: SettingKind::String,
        required: false,
        default: Some("\"v2\""),
        description: "the API generation: \"v2\" (named sandboxes with sessions) or \"v1\" (older accounts)",
    },
    SettingSpec {
        key: "baseUrl",
        kind: SettingKind::String,
        required: false,
        default: Some("\"https://vercel.com/api\""),
        description: "the API's base URL (https://api.vercel.com takes the same paths)",
    },
    SettingSpec {
        key: "runtime",
        kind: SettingKind::String,
        required: false,
        default: None,
        description: "the runtime image (node22, node24, python3.13); Vercel's default when neither this nor image is set",
    },
    SettingSpec {
        key: "image",
        kind: SettingKind::String,
        required: false,
        default: None,
        description: "a container image to start from instead of a runtime (v2)",
    },
    SettingSpec { key: "vcpus", kind: SettingKind::Integer, required: false, default: None, description: "virtual CPUs (2048 MB of memory each)" },
    SettingSpec {
        key: "timeoutSeconds",
        kind: SettingKind::Integer,
        required: false,
        default: Some("300"),
        description: "the session's lifetime, extended while in use",
    },
    SettingSpec {
        key: "ports",
        kind: SettingKind::IntegerList,
        required: false,
        default: None,
        description: "ports to expose for previews from the start (others are added when a preview asks)",
    },
    SettingSpec {
        key: "persistent",
        kind: SettingKind::Bool,
        required: false,
        default: Some("false"),
        description: "keep the sandbox's files across sessions (v2): stopping snapshots it and connecting resumes it",
    },
    SettingSpec { key: "env", kind: SettingKind::StringMap, required: false, default: None, description: "environment variables for every command" },
    SettingSpec { key: "region", kind: SettingKind::String, required: false, default: None, description: "the region to create the sandbox in (v2)" },
    SettingSpec {
        key: "remoteRoot",
        kind: SettingKind::String,
        required: false,
        default: Some("\"/vercel/sandbox\""),
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
        key: "sandbox",
        kind: SettingKind::String,
        required: false,
        default: None,
        description: "an existing sandbox to connect to or resume: its name (v2) or id (v1)",
    },
];

fn invalid(message: String) -> Error {
    Error::InvalidProfile(message)
}

fn bounded(key: &str, value: Option<i64>, default: u64, range: (u64, u64)) -> Result<u64> {
    match value.map(u64::try_from) {
        None => Ok(default),
        Some(Ok(number)) if number >= range.0 && number <= range.1 => Ok(number),
        Some(_) => Err(invalid(format!(
            "The vercel setting \"{key}\" must be a whole number from {} to {}.",
            range.0, range.1
        ))),
    }
}

impl Settings {
    pub fn parse(settings: &Map<String, Value>) -> Result<Settings> {
        let declared: Declared = crate::drivers::settings::parse("vercel", SETTINGS, settings)?;
        let generation = match non_empty("vercel", "apiVersion", declared.api_version)?.as_deref() {
            None | Some("v2") | Some("v3") => Generation::V2,
            Some("v1") => Generation::V1,
            Some(other) => {
                return Err(invalid(format!("The vercel setting \"apiVersion\" must be \"v2\" or \"v1\", not \"{other}\".")))
            }
        };
        let base_url = match non_empty("vercel", "baseUrl", declared.base_url)? {
            Some(url) => {
                let parsed = url::Url::parse(&url)
                    .map_err(|error| invalid(format!("The vercel setting \"baseUrl\" is not a valid URL ({error}): {url}")))?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(invalid("The vercel setting \"baseUrl\" must be an http or https URL.".into()));
                }
                url.trim_end_matches('/').to_string()
            }
            None => DEFAULT_BASE_URL.to_string(),
        };
        let image = non_empty("vercel", "image", declared.image)?;
        if image.is_some() && generation == Generation::V1 {
            return Err(invalid("The vercel setting \"image\" needs \"apiVersion\": \"v2\"; v1 sandboxes start from a runtime.".into()));
        }
        let runtime = non_empty("vercel", "runtime", declared.runtime)?;
        if image.is_some() && runtime.is_some() {
            return Err(invalid("The vercel settings \"image\" and \"runtime\" exclude each other; give one.".into()));
        }
        let max_ports = if generation == Generation::V1 { MAX_PORTS_V1 } else { MAX_PORTS_V2 };
        let mut ports = Vec::new();
        for port in declared.ports.unwrap_or_default() {
            match u16::try_from(port) {
                Ok(port) if port > 0 => ports.push(port),
                _ => return Err(invalid(format!("The vercel setting \"ports\" holds {port}, which is not a TCP port."))),
            }
        }
        if ports.len() > max_ports {
            return Err(invalid(format!("The vercel setting \"ports\" lists {} ports; Vercel takes at most {max_ports}.", ports.len())));
        }
        let persistent = declared.persistent.unwrap_or(false);
        if persistent && generation == Generation::V1 {
            return Err(invalid("The vercel setting \"persistent\" needs \"apiVersion\": \"v2\".".into()));
        }
        let remote_root = non_empty("vercel", "remoteRoot", declared.remote_root)?.unwrap_or_else(|| DEFAULT_REMOTE_ROOT.into());
        if !remote_root.starts_with('/') || remote_root.split('/').any(|part| part == "..") {
            return Err(invalid(format!(
                "The vercel setting \"remoteRoot\" must be an absolute path without \"..\", not \"{remote_root}\"."
            )));
        }
        let remote_root = remote_root.trim_end_matches('/').to_string();
        if remote_root.is_empty() {
            return Err(invalid("The vercel setting \"remoteRoot\" must not be \"/\": sync would manage the whole sandbox.".into()));
        }
        Ok(Settings {
            generation,
            base_url,
            runtime,
            image,
            vcpus: match declared.vcpus {
                None => None,
                Some(vcpus) => Some(bounded("vcpus", Some(vcpus), 0, (1, 64))?),
            },
            timeout_seconds: bounded("timeoutSeconds", declared.timeout_seconds, DEFAULT_TIMEOUT_SECONDS, (1, MAX_TIMEOUT_SECONDS))?,
            ports,
            persistent,
            env: declared.env.unwrap_or_default(),
            region: non_empty("vercel", "region", declared.region)?,
            remote_root,
            keepalive_idle_seconds: bounded(
                "keepaliveIdleSeconds",
                declared.keepalive_idle_seconds,
                DEFAULT_KEEPALIVE_IDLE_SECONDS,
                (0, MAX_TIMEOUT_SECONDS),
            )?,
            sandbox: non_empty("vercel", "sandbox", declared.sandbox)?,
            network: NetworkPolicy::from_settings(settings)?,
        })
    }

    /// The create body's `networkPolicy`, in the generation's form; `None` for `on` (Vercel's default is allow-all).
    /// A port in the allow-list is refused: Vercel's policy names domains, never ports.
    pub fn network_policy(&self) -> Result<Option<Value>> {
        match &self.network {
            NetworkPolicy::On => Ok(None),
            NetworkPolicy::Off => Ok(Some(json!({ "mode": "deny-all" }))),
            NetworkPolicy::Allow(_) => {
                let hosts = self.network.allowed_hosts();
                if let Some(with_port) = hosts.iter().find(|host| host.port.is_some()) {
                    return Err(Error::Unsupported(format!(
                        "The vercel driver cannot limit a host to one port, as \"{with_port}\" in this profile's {} \
                         asks: Vercel's network policy names domains only. List \"{}\" without the port to admit the \
                         host on every port.",
                        self.network.describe(),
                        with_port.host_text()
                    )));
                }
                let (domains, cidrs): (Vec<String>, Vec<String>) = hosts.iter().fold((Vec::new(), Vec::new()), |(mut domains, mut cidrs), host| {
                    match &host.host {
                        HostPattern::Address(address) => cidrs.push(format!("{address}/{}", if address.is_ipv4() { 32 } else { 128 })),
                        _ => domains.push(host.host_text()),
                    }
                    (domains, cidrs)
                });
                Ok(Some(match self.generation {
                    Generation::V2 => {
                        let mut policy = json!({ "allow": domains });
                        if !cidrs.is_empty() {
                            policy["subnets"] = json!({ "allow": cidrs });
                        }
                        policy
                    }
                    Generation::V1 => json!({ "mode": "custom", "allowedDomains": domains, "allowedCIDRs": cidrs }),
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: Value) -> Result<Settings> {
        Settings::parse(value.as_object().expect("an object"))
    }

    #[test]
    fn the_declared_struct_and_the_schema_should_name_the_same_settings() {
        crate::drivers::settings::assert_declaration_matches::<Declared>("vercel", SETTINGS);
    }

    #[test]
    fn the_schema_defaults_should_be_what_parse_uses() {
        let parsed = parse(json!({})).expect("valid");
        let schema = crate::drivers::settings::describe(SETTINGS, &[]);
        let default = |name: &str| schema.iter().find(|setting| setting.name == name).and_then(|setting| setting.default.clone());
        assert_eq!(default("baseUrl"), Some(json!(parsed.base_url)));
        assert_eq!(default("timeoutSeconds"), Some(json!(parsed.timeout_seconds)));
        assert_eq!(default("remoteRoot"), Some(json!(parsed.remote_root)));
        assert_eq!(default("keepaliveIdleSeconds"), Some(json!(parsed.keepalive_idle_seconds)));
        assert_eq!(default("persistent"), Some(json!(parsed.persistent)));
        assert_eq!(parsed.generation, Generation::V2);
    }

    #[test]
    fn bad_values_should_name_the_key() {
        for (settings, key) in [
            (json!({"apiVersion": "v9"}), "apiVersion"),
            (json!({"ports": [70000]}), "ports"),
            (json!({"timeoutSeconds": 0}), "timeoutSeconds"),
            (json!({"remoteRoot": "relative"}), "remoteRoot"),
            (json!({"apiVersion": "v1", "persistent": true}), "persistent"),
            (json!({"runtime": "node22", "image": "alpine"}), "image"),
            (json!({"runtme": "node22"}), "runtme"),
        ] {
            let error = parse(settings.clone()).expect_err("invalid");
            assert_eq!(error.kind(), crate::protocol::ErrorKind::InvalidProfile, "{settings}");
            assert!(error.to_string().contains(key), "{settings}: {error}");
        }
    }

    #[test]
    fn the_network_policy_should_take_each_generations_form() {
        assert_eq!(parse(json!({})).unwrap().network_policy().unwrap(), None);
        assert_eq!(parse(json!({"network": "off"})).unwrap().network_policy().unwrap(), Some(json!({"mode": "deny-all"})));
        let listed = parse(json!({"network": ["pypi.org", "10.1.2.3"]})).unwrap();
        assert_eq!(listed.network_policy().unwrap(), Some(json!({"allow": ["pypi.org"], "subnets": {"allow": ["10.1.2.3/32"]}})));
        let v1 = parse(json!({"apiVersion": "v1", "network": ["pypi.org"]})).unwrap();
        assert_eq!(
            v1.network_policy().unwrap(),
            Some(json!({"mode": "custom", "allowedDomains": ["pypi.org"], "allowedCIDRs": []}))
        );
        let error = parse(json!({"network": ["pypi.org:443"]})).unwrap().network_policy().expect_err("no port rules");
        assert_eq!(error.kind(), crate::protocol::ErrorKind::Unsupported);
    }
}
