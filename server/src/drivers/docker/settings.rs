//! The docker driver's settings, parsed and checked before anything is created.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

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

const KNOWN: &[&str] =
    &["image", "container", "remoteRoot", "env", "user", "cpus", "memory", "pids", "network", "ports", "keep", "sync"];

impl Settings {
    /// Parses and validates the settings object of a connect request.
    pub fn parse(settings: &Map<String, Value>) -> Result<Settings> {
        for key in settings.keys() {
            if !KNOWN.contains(&key.as_str()) {
                return Err(invalid(format!(
                    "The docker driver has no setting \"{key}\". Its settings are: {}.",
                    KNOWN.join(", ")
                )));
            }
        }
        let image = optional_string(settings, "image")?;
        let container = optional_string(settings, "container")?;
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
        let remote_root = optional_string(settings, "remoteRoot")?.unwrap_or_else(|| "/workspace".into());
        if !remote_root.starts_with('/') || remote_root.split('/').any(|part| part == "..") || remote_root == "/" {
            return Err(invalid(format!(
                "The remoteRoot \"{remote_root}\" must be an absolute path below / without \"..\", like /workspace."
            )));
        }
        let remote_root = remote_root.trim_end_matches('/').to_string();
        let env = match settings.get("env") {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(Value::Object(entries)) => {
                let mut env = BTreeMap::new();
                for (name, value) in entries {
                    if name.is_empty() || name.contains('=') || name.contains('\0') {
                        return Err(invalid(format!("The environment variable name \"{name}\" is not valid.")));
                    }
                    let value = match value {
                        Value::String(text) => text.clone(),
                        Value::Number(number) => number.to_string(),
                        Value::Bool(flag) => flag.to_string(),
                        _ => {
                            return Err(invalid(format!(
                                "The value of environment variable \"{name}\" must be a string."
                            )))
                        }
                    };
                    env.insert(name.clone(), value);
                }
                env
            }
            Some(_) => return Err(invalid("\"env\" must be an object of variable names to strings.".into())),
        };
        let user = optional_string(settings, "user")?;
        let nano_cpus = match settings.get("cpus") {
            None | Some(Value::Null) => None,
            Some(value) => match value.as_f64().or_else(|| value.as_str().and_then(|text| text.parse().ok())) {
                Some(cpus) if cpus > 0.0 && cpus <= 1024.0 => Some((cpus * 1e9) as i64),
                _ => return Err(invalid("\"cpus\" must be a positive number of CPUs, like 2 or 0.5.".into())),
            },
        };
        let memory_bytes = match settings.get("memory") {
            None | Some(Value::Null) => None,
            Some(Value::Number(number)) => match number.as_u64() {
                Some(bytes) if bytes >= 6 << 20 => Some(bytes as i64),
                _ => return Err(invalid("\"memory\" must be at least 6 MiB (Docker's minimum), like \"512m\".".into())),
            },
            Some(Value::String(text)) => Some(parse_memory(text)?),
            Some(_) => return Err(invalid("\"memory\" must be a size like \"512m\" or \"2g\", or bytes.".into())),
        };
        let pids_limit = match settings.get("pids") {
            None | Some(Value::Null) => DEFAULT_PIDS_LIMIT,
            Some(value) => match value.as_i64() {
                Some(pids) if pids >= 16 => pids,
                _ => return Err(invalid("\"pids\" must be a whole number of processes, at least 16.".into())),
            },
        };
        let network = NetworkPolicy::from_settings(settings).map_err(|error| invalid(error.to_string()))?;
        let ports = match settings.get("ports") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => {
                let mut ports = Vec::new();
                for item in items {
                    match item.as_u64() {
                        Some(port) if (1..=65535).contains(&port) => ports.push(port as u16),
                        _ => return Err(invalid(format!("\"ports\" holds port numbers 1-65535; {item} is not one."))),
                    }
                }
                ports.sort_unstable();
                ports.dedup();
                ports
            }
            Some(_) => return Err(invalid("\"ports\" must be a list of container ports, like [3000, 8080].".into())),
        };
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
        let keep = match settings.get("keep") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(flag)) => *flag,
            Some(_) => return Err(invalid("\"keep\" must be true or false.".into())),
        };
        Ok(Settings { target, remote_root, env, user, nano_cpus, memory_bytes, pids_limit, network, ports, keep })
    }
}

fn invalid(message: String) -> Error {
    Error::InvalidParams(message)
}

fn optional_string(settings: &Map<String, Value>, key: &str) -> Result<Option<String>> {
    match settings.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if !text.trim().is_empty() => Ok(Some(text.trim().to_string())),
        Some(_) => Err(invalid(format!("\"{key}\" must be a non-empty string."))),
    }
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
            assert_eq!(error.kind(), crate::protocol::ErrorKind::InvalidParams, "{bad}");
            assert!(error.to_string().ends_with('.'), "{error}");
        }
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
