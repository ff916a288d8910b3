//! The docker driver's settings, parsed and checked before anything is created.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::drivers::settings::{non_empty, SettingKind, SettingSpec};
use crate::error::{Error, Result};
use crate::netpolicy::NetworkPolicy;

/// The pids limit of containers sandlink creates, unless the settings give one.
pub const DEFAULT_PIDS_LIMIT: i64 = 4096;

/// Settings of one docker session.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub target: Target,
    /// Absolute path of the session root inside the container.
    pub remote_root: String,
    pub env: BTreeMap<String, String>,
    /// `user`, `user:group`, `uid` or `uid:gid`, as Docker takes it.
    pub user: Option<String>,
    pub nano_cpus: Option<i64>,
    pub memory_bytes: Option<i64>,
    pub pids_limit: i64,
    /// The common network policy; `Allow` is enforced through sandlink's proxy (see `network_mode`).
    pub network: NetworkPolicy,
    pub ports: Vec<u16>,
    /// Leave the container running on disconnect even without `keep`.
    pub keep: bool,
}

/// Which container the session uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A new container from this image, removed on disconnect.
    Image(String),
    /// An existing container (name or id), never removed by sandlink.
    Existing(String),
}

/// The Docker network mode that carries out a policy.
///
/// An allow-list is `none` too: the container gets only its loopback, and sandlink opens a port of its proxy
/// (`netpolicy::Proxy`) on that loopback from inside the container's network namespace (`super::network`), so the
/// listed hosts, reached by the proxy from this machine, are the only way out. An `--internal` Docker network behind
/// the proxy was tried and rejected: a container on it still reaches every service of the host on the network's
/// gateway address (Docker filters only forwarded traffic), and closing that needs host firewall rules.
pub fn network_mode(policy: &NetworkPolicy) -> &'static str {
    match policy {
        NetworkPolicy::On => "bridge",
        NetworkPolicy::Off | NetworkPolicy::Allow(_) => "none",
    }
}

/// Whether a created container's `NetworkMode` is what `policy` asks for.
pub fn network_mode_matches(policy: &NetworkPolicy, actual: &str) -> bool {
    match network_mode(policy) {
        "bridge" => actual == "bridge" || actual == "default",
        mode => actual == mode,
    }
}

/// The docker driver's settings as a profile writes them; `SETTINGS` lists the same fields for users (a test
/// checks that they agree) and `Settings::parse` turns them into a checked `Settings`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Declared {
    image: Option<String>,
    container: Option<String>,
    remote_root: Option<String>,
    /// Values may be numbers or booleans too; they become strings.
    env: Option<Map<String, Value>>,
    user: Option<String>,
    cpus: Option<Value>,
    memory: Option<Value>,
    pids: Option<i64>,
    ports: Option<Vec<i64>>,
    keep: Option<bool>,
    /// The common settings: declared so that the struct accepts them, read from the settings by
    /// `NetworkPolicy::from_settings` and the sync engine.
    #[serde(rename = "network")]
    _network: Option<serde::de::IgnoredAny>,
    #[serde(rename = "sync")]
    _sync: Option<serde::de::IgnoredAny>,
    #[serde(rename = "lifecycle")]
    _lifecycle: Option<serde::de::IgnoredAny>,
}

/// The docker driver's own settings (`sync` and `network` are common to all drivers).
pub const SETTINGS: &[SettingSpec] = &[
    SettingSpec {
        key: "image",
        kind: SettingKind::String,
        required: false,
        default: None,
        description: "the image of a new container, removed on disconnect (give this or \"container\")",
    },
    SettingSpec {
        key: "container",
        kind: SettingKind::String,
        required: false,
        default: None,
        description: "the name or id of an existing container to use, never removed by sandlink",
    },
    SettingSpec {
        key: "remoteRoot",
        kind: SettingKind::String,
        required: false,
        default: Some("\"/workspace\""),
        description: "the session's root inside the container, an absolute path",
    },
    SettingSpec {
        key: "env",
        kind: SettingKind::Table,
        required: false,
        default: None,
        description: "environment variables of a new container",
    },
    SettingSpec {
        key: "user",
        kind: SettingKind::String,
        required: false,
        default: None,
        description: "the user runs are started as: user, user:group, uid or uid:gid",
    },
    SettingSpec {
        key: "cpus",
        kind: SettingKind::NumberOrString,
        required: false,
        default: None,
        description: "the CPUs a new container may use, like 2 or 0.5",
    },
    SettingSpec {
        key: "memory",
        kind: SettingKind::NumberOrString,
        required: false,
        default: None,
        description: "the memory limit of a new container: bytes, or a size like \"512m\" or \"2g\"",
    },
    SettingSpec {
        key: "pids",
        kind: SettingKind::Integer,
        required: false,
        default: Some("4096"),
        description: "the most processes a new container may have, at least 16",
    },
    SettingSpec {
        key: "ports",
        kind: SettingKind::IntegerList,
        required: false,
        default: None,
        description: "container ports to publish for previews",
    },
    SettingSpec {
        key: "keep",
        kind: SettingKind::Bool,
        required: false,
        default: Some("false"),
        description: "leave the container running on disconnect",
    },
];

impl Settings {
    /// Parses and validates the settings object of a connect request.
    pub fn parse(settings: &Map<String, Value>) -> Result<Settings> {
        let declared: Declared = crate::drivers::settings::parse("docker", SETTINGS, settings)?;
        let image = non_empty("docker", "image", declared.image)?;
        let container = non_empty("docker", "container", declared.container)?;
        let target = match (image, container) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "Give either \"image\" (a new container) or \"container\" (attach to an existing one), not both."
                        .into(),
                ))
            }
            (Some(image), None) => Target::Image(image),
            (None, Some(container)) => Target::Existing(container),
            (None, None) => {
                return Err(invalid(
                    "The docker driver needs \"image\" (for example \"debian:bookworm\") or \"container\" (the name \
                     or id of a running container)."
                        .into(),
                ))
            }
        };
        let remote_root = non_empty("docker", "remoteRoot", declared.remote_root)?.unwrap_or_else(|| "/workspace".into());
        if !remote_root.starts_with('/') || remote_root.split('/').any(|part| part == "..") || remote_root == "/" {
            return Err(invalid(format!(
                "The remoteRoot \"{remote_root}\" must be an absolute path below / without \"..\", like /workspace."
            )));
        }
        let remote_root = remote_root.trim_end_matches('/').to_string();
        let mut env = BTreeMap::new();
        for (name, value) in declared.env.unwrap_or_default() {
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                return Err(invalid(format!("The environment variable name \"{name}\" is not valid.")));
            }
            let value = match value {
                Value::String(text) => text,
                Value::Number(number) => number.to_string(),
                Value::Bool(flag) => flag.to_string(),
                _ => return Err(invalid(format!("The value of environment variable \"{name}\" must be a string."))),
            };
            env.insert(name, value);
        }
        let user = non_empty("docker", "user", declared.user)?;
        let nano_cpus = match declared.cpus {
            None | Some(Value::Null) => None,
            Some(value) => match value.as_f64().or_else(|| value.as_str().and_then(|text| text.parse().ok())) {
                Some(cpus) if cpus > 0.0 && cpus <= 1024.0 => Some((cpus * 1e9) as i64),
                _ => return Err(invalid("\"cpus\" must be a positive number of CPUs, like 2 or 0.5.".into())),
            },
        };
        let memory_bytes = match declared.memory {
            None | Some(Value::Null) => None,
            Some(Value::Number(number)) => match number.as_u64() {
                Some(bytes) if bytes >= 6 << 20 => Some(bytes as i64),
                _ => return Err(invalid("\"memory\" must be at least 6 MiB (Docker's minimum), like \"512m\".".into())),
            },
            Some(Value::String(text)) => Some(parse_memory(&text)?),
            Some(_) => return Err(invalid("\"memory\" must be a size like \"512m\" or \"2g\", or bytes.".into())),
        };
        let pids_limit = match declared.pids {
            None => DEFAULT_PIDS_LIMIT,
            Some(pids) if pids >= 16 => pids,
            Some(_) => return Err(invalid("\"pids\" must be a whole number of processes, at least 16.".into())),
        };
        let network = NetworkPolicy::from_settings(settings).map_err(|error| invalid(error.to_string()))?;
        let mut ports = Vec::new();
        for port in declared.ports.unwrap_or_default() {
            match u16::try_from(port) {
                Ok(port) if port >= 1 => ports.push(port),
                _ => return Err(invalid(format!("\"ports\" holds port numbers 1-65535; {port} is not one."))),
            }
        }
        ports.sort_unstable();
        ports.dedup();
        if network != NetworkPolicy::On && !ports.is_empty() {
            return Err(invalid(
                "Ports cannot be published when \"network\" is \"off\" or a list of hosts (the container then has \
                 only its loopback); remove one of them."
                    .into(),
            ));
        }
        if let Target::Existing(_) = target {
            for key in ["env", "cpus", "memory", "pids", "network", "ports"] {
                if settings.get(key).is_some_and(|value| !value.is_null()) {
                    return Err(invalid(format!(
                        "\"{key}\" applies only to containers sandlink creates from an \"image\"; an existing \
                         container keeps its own configuration."
                    )));
                }
            }
        }
        Ok(Settings {
            target,
            remote_root,
            env,
            user,
            nano_cpus,
            memory_bytes,
            pids_limit,
            network,
            ports,
            keep: declared.keep.unwrap_or(false),
        })
    }
}

/// A bad value in otherwise well-typed settings: like every settings error, `invalidProfile` (a connect that
/// passes settings directly answers `invalidParams`; the engine decides that).
fn invalid(message: String) -> Error {
    Error::InvalidProfile(message)
}

/// Parses `512m`, `2g`, `1.5GiB`, `1048576` (bytes) into bytes.
fn parse_memory(text: &str) -> Result<i64> {
    let lower = text.trim().to_ascii_lowercase();
    let digits_end = lower.find(|character: char| !(character.is_ascii_digit() || character == '.')).unwrap_or(lower.len());
    let (number, unit) = lower.split_at(digits_end);
    let multiplier: f64 = match unit.trim().trim_end_matches("ib").trim_end_matches('b') {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(invalid(format!("\"memory\" must be a size like \"512m\" or \"2g\", not \"{text}\"."))),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| invalid(format!("\"memory\" must be a size like \"512m\" or \"2g\", not \"{text}\".")))?;
    let bytes = (value * multiplier) as i64;
    if bytes < 6 << 20 {
        return Err(invalid(format!("\"memory\" is {text}, below Docker's minimum of 6 MiB.")));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: Value) -> Result<Settings> {
        Settings::parse(value.as_object().expect("test settings are objects"))
    }

    #[test]
    fn settings_should_apply_defaults() {
        let settings = parse(json!({ "image": "sandlink-test:busybox", "sync": { "anything": 1 } })).unwrap();
        assert_eq!(settings.target, Target::Image("sandlink-test:busybox".into()));
        assert_eq!(settings.remote_root, "/workspace");
        assert_eq!(settings.pids_limit, DEFAULT_PIDS_LIMIT);
        assert_eq!(settings.network, NetworkPolicy::On);
    }

    #[test]
    fn settings_should_parse_limits_and_ports() {
        let settings = parse(json!({
            "image": "x", "cpus": 0.5, "memory": "512m", "pids": 100, "ports": [8080, 3000, 8080],
            "env": { "A": "1", "B": 2 }, "user": "1000:1000", "remoteRoot": "/srv/app/"
        }))
        .unwrap();
        assert_eq!(settings.nano_cpus, Some(500_000_000));
        assert_eq!(settings.memory_bytes, Some(512 << 20));
        assert_eq!(settings.pids_limit, 100);
        assert_eq!(settings.ports, vec![3000, 8080]);
        assert_eq!(settings.env.get("B").map(String::as_str), Some("2"));
        assert_eq!(settings.remote_root, "/srv/app");
    }

    #[test]
    fn settings_should_refuse_bad_input_with_a_sentence() {
        for bad in [
            json!({}),
            json!({ "image": "x", "container": "y" }),
            json!({ "image": "x", "colour": "red" }),
            json!({ "image": "x", "remoteRoot": "relative" }),
            json!({ "image": "x", "remoteRoot": "/a/../b" }),
            json!({ "image": "x", "cpus": -1 }),
            json!({ "image": "x", "memory": "lots" }),
            json!({ "image": "x", "memory": "1k" }),
            json!({ "image": "x", "pids": 2 }),
            json!({ "image": "x", "network": "host" }),
            json!({ "image": "x", "ports": [0] }),
            json!({ "image": "x", "ports": [80], "network": "none" }),
            json!({ "image": "x", "ports": [80], "network": "off" }),
            json!({ "image": "x", "ports": [80], "network": ["pypi.org"] }),
            json!({ "image": "x", "network": ["bad host"] }),
            json!({ "container": "y", "cpus": 1 }),
            json!({ "image": "x", "env": { "A=B": "c" } }),
        ] {
            let error = parse(bad.clone()).expect_err(&bad.to_string());
            assert!(!error.to_string().is_empty());
            // A bad driver setting is `invalidProfile`, as the driver trait promises (the engine answers
            // `invalidParams` for settings passed directly in a connect's params).
            assert_eq!(error.kind(), crate::protocol::ErrorKind::InvalidProfile, "{bad}");
            assert!(error.to_string().ends_with('.'), "{error}");
        }
    }

    #[test]
    fn the_declared_struct_and_the_schema_should_name_the_same_settings() {
        crate::drivers::settings::assert_declaration_matches::<Declared>("docker", SETTINGS);
    }

    #[test]
    fn the_schema_defaults_should_be_what_parse_uses() {
        let parsed = parse(json!({ "image": "x" })).unwrap();
        let schema = crate::drivers::settings::describe(SETTINGS, &[]);
        let default = |name: &str| schema.iter().find(|setting| setting.name == name).and_then(|setting| setting.default.clone());
        assert_eq!(default("remoteRoot"), Some(json!(parsed.remote_root)));
        assert_eq!(default("pids"), Some(json!(parsed.pids_limit)));
        assert_eq!(default("keep"), Some(json!(parsed.keep)));
    }

    #[test]
    fn an_unknown_key_should_be_an_invalid_profile_naming_it_and_the_known_keys() {
        let error = parse(json!({ "image": "x", "imgae": "y" })).unwrap_err();
        assert_eq!(error.kind(), crate::protocol::ErrorKind::InvalidProfile);
        let message = error.to_string();
        assert!(message.contains("\"imgae\""), "the key is named: {message}");
        for known in ["image", "container", "remoteRoot", "ports", "keep", "sync", "network"] {
            assert!(message.contains(known), "the known key {known} is listed: {message}");
        }
    }

    #[test]
    fn a_wrong_type_should_say_what_the_setting_must_be() {
        let error = parse(json!({ "image": "x", "keep": "yes" })).unwrap_err();
        assert_eq!(error.kind(), crate::protocol::ErrorKind::InvalidProfile);
        assert_eq!(error.to_string(), "The docker setting \"keep\" must be true or false, but it is a string.");
        let error = parse(json!({ "image": "x", "ports": ["80"] })).unwrap_err();
        assert!(error.to_string().contains("\"ports\" must be a list of whole numbers"), "{error}");
    }

    #[test]
    fn network_should_use_the_common_words_and_map_to_docker_modes() {
        assert_eq!(parse(json!({ "image": "x", "network": "off" })).unwrap().network, NetworkPolicy::Off);
        assert_eq!(parse(json!({ "image": "x", "network": "none" })).unwrap().network, NetworkPolicy::Off);
        assert_eq!(parse(json!({ "image": "x", "network": "bridge" })).unwrap().network, NetworkPolicy::On);
        let listed = parse(json!({ "image": "x", "network": ["pypi.org"] })).unwrap().network;
        assert_eq!(network_mode(&listed), "none", "an allow-list leaves only loopback, where the proxy's port is");
        assert_eq!(network_mode(&NetworkPolicy::Off), "none");
        assert!(network_mode_matches(&listed, "none"));
        assert!(!network_mode_matches(&listed, "bridge"));
        assert!(network_mode_matches(&NetworkPolicy::On, "default"));
        assert!(!network_mode_matches(&NetworkPolicy::Off, "bridge"));
        assert!(!network_mode_matches(&NetworkPolicy::On, "none"));
    }
}
