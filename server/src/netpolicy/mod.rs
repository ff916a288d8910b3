//! The network policy every driver understands: the common `network` setting (`"on"`, `"off"`, or an allow-list of
//! host names with optional ports), parsed once here, plus the forwarding proxy that enforces an allow-list.
//!
//! The words are the same for every driver; each driver maps them onto what it has (a private network namespace
//! and `proxy::Proxy` for `local`, `network_mode: none` and, for an allow-list, `proxy::Proxy` on a port inside the
//! container's network namespace for `docker`, egress rules for `e2b`).
//!
//! Allow-list entries are matched by name, never by address: `pypi.org` admits requests for the name `pypi.org`,
//! not for the address it resolves to, so an IP literal is admitted only when the list names that address. A
//! leading `*.` admits every name below a domain (`*.npmjs.org` admits `registry.npmjs.org` and `a.b.npmjs.org`,
//! not `npmjs.org` itself; list both when both are wanted). An entry without a port admits every port of that host.

pub mod proxy;

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use serde_json::{Map, Value};

use crate::error::{Error, Result};

pub use proxy::{bridge_loopback_to_unix, proxy_environment, serve_loopback_bridge, Limits, Proxy, ServedListener};

/// The settings key every driver accepts for the network policy.
pub const NETWORK_KEY: &str = "network";

/// What a sandbox may reach on the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkPolicy {
    /// Whatever the sandbox's host network allows (the default, for compatibility).
    On,
    /// No network at all, loopback inside the sandbox aside.
    Off,
    /// Only these hosts (and ports), through sandlink's proxy or the provider's egress rules. Never empty.
    Allow(Vec<AllowedHost>),
}

/// One allow-list entry: a host pattern and, optionally, the one port it is admitted on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AllowedHost {
    pub host: HostPattern,
    /// `None` admits every port of the host.
    pub port: Option<u16>,
}

/// Which host names (or which address) an entry admits. Names are kept in lower case without a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// Exactly this name.
    Name(String),
    /// Every name that ends in `.` + this domain (written `*.domain`); not the domain itself.
    Subdomains(String),
    /// Exactly this address, written as an IP literal in the request.
    Address(IpAddr),
}

impl NetworkPolicy {
    /// Reads the `network` key of a driver's settings; absent (or null) is `On`. Errors are `invalidProfile`
    /// sentences that name the key and the entry at fault.
    pub fn from_settings(settings: &Map<String, Value>) -> Result<NetworkPolicy> {
        match settings.get(NETWORK_KEY) {
            None | Some(Value::Null) => Ok(NetworkPolicy::On),
            Some(value) => NetworkPolicy::from_value(value),
        }
    }

    /// Parses the value of the `network` setting.
    pub fn from_value(value: &Value) -> Result<NetworkPolicy> {
        match value {
            Value::String(word) => match word.trim().to_ascii_lowercase().as_str() {
                "on" => Ok(NetworkPolicy::On),
                "off" => Ok(NetworkPolicy::Off),
                // The docker driver's own words before the common setting existed; kept so saved profiles load.
                "bridge" | "default" => Ok(NetworkPolicy::On),
                "none" => Ok(NetworkPolicy::Off),
                _ => Err(invalid(format!(
                    "The setting \"{NETWORK_KEY}\" is \"on\", \"off\" or a list of host names (like [\"pypi.org\", \
                     \"files.pythonhosted.org:443\"]), not \"{}\".",
                    word.trim()
                ))),
            },
            Value::Array(entries) => {
                if entries.is_empty() {
                    return Err(invalid(format!(
                        "The setting \"{NETWORK_KEY}\" is an empty list of hosts; write \"off\" for no network, or \
                         list the hosts runs may reach."
                    )));
                }
                let mut hosts = Vec::with_capacity(entries.len());
                for entry in entries {
                    let Value::String(text) = entry else {
                        return Err(invalid(format!(
                            "The setting \"{NETWORK_KEY}\" lists host names as strings; one entry is {}.",
                            kind_of(entry)
                        )));
                    };
                    let host = AllowedHost::parse(text)?;
                    if !hosts.contains(&host) {
                        hosts.push(host);
                    }
                }
                Ok(NetworkPolicy::Allow(hosts))
            }
            other => Err(invalid(format!(
                "The setting \"{NETWORK_KEY}\" must be \"on\", \"off\" or a list of host names, not {}.",
                kind_of(other)
            ))),
        }
    }

    /// The policy in words, for `sandlink drivers`, session details and errors.
    pub fn describe(&self) -> String {
        match self {
            NetworkPolicy::On => "network: on (runs reach whatever this machine's network reaches)".into(),
            NetworkPolicy::Off => "network: off (runs have no network)".into(),
            NetworkPolicy::Allow(hosts) => format!("network: only {}", describe_hosts(hosts)),
        }
    }

    /// The hosts of an allow-list; empty for `On` and `Off`.
    pub fn allowed_hosts(&self) -> &[AllowedHost] {
        match self {
            NetworkPolicy::Allow(hosts) => hosts,
            _ => &[],
        }
    }
}

impl fmt::Display for NetworkPolicy {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.describe())
    }
}

/// The entries of an allow-list joined for a sentence: `a.example, b.example:443`.
pub fn describe_hosts(hosts: &[AllowedHost]) -> String {
    hosts.iter().map(AllowedHost::to_string).collect::<Vec<_>>().join(", ")
}

/// Whether any entry of the list admits `host` on `port`. `host` is the name (or IP literal, IPv6 with or without
/// brackets) the client asked for.
pub fn admits(hosts: &[AllowedHost], host: &str, port: u16) -> bool {
    hosts.iter().any(|entry| entry.admits(host, port))
}

impl AllowedHost {
    /// Parses one allow-list entry: `name`, `name:port`, `*.domain`, `*.domain:port`, an IPv4 address with an
    /// optional port, or an IPv6 address (bracketed when a port follows: `[::1]:8080`).
    pub fn parse(entry: &str) -> Result<AllowedHost> {
        let text = entry.trim();
        let refuse = |why: &str| {
            invalid(format!(
                "The \"{NETWORK_KEY}\" entry \"{text}\" is not a host name with an optional port ({why}); write \
                 entries like \"pypi.org\", \"files.pythonhosted.org:443\" or \"*.npmjs.org\"."
            ))
        };
        if text.is_empty() {
            return Err(refuse("it is empty"));
        }
        if text.contains("://") || text.contains('/') {
            return Err(refuse("give the host alone, without a scheme or a path"));
        }
        // A bare IPv6 address has colons but no port.
        if let Ok(address) = text.parse::<Ipv6Addr>() {
            return Ok(AllowedHost { host: HostPattern::Address(IpAddr::V6(address)), port: None });
        }
        let (host_text, port) = split_host_port(text).map_err(&refuse)?;
        let host = if let Some(inner) = host_text.strip_prefix('[') {
            let inner = inner.strip_suffix(']').ok_or_else(|| refuse("an IPv6 address needs its closing \"]\""))?;
            let address = inner.parse::<Ipv6Addr>().map_err(|_| refuse("the part in brackets is not an IPv6 address"))?;
            HostPattern::Address(IpAddr::V6(address))
        } else if let Ok(address) = host_text.parse::<IpAddr>() {
            HostPattern::Address(address)
        } else {
            let name = normalize_name(host_text);
            if let Some(domain) = name.strip_prefix("*.") {
                check_name(domain).map_err(|why| refuse(&why))?;
                if !domain.contains('.') {
                    return Err(refuse("a wildcard must name a domain with at least two labels, like *.example.com"));
                }
                HostPattern::Subdomains(domain.to_string())
            } else if name.contains('*') {
                return Err(refuse("a wildcard may only be the first label, as in *.example.com"));
            } else {
                check_name(&name).map_err(|why| refuse(&why))?;
                HostPattern::Name(name)
            }
        };
        Ok(AllowedHost { host, port })
    }

    /// Whether this entry admits a request for `host` (a name or an IP literal) on `port`.
    pub fn admits(&self, host: &str, port: u16) -> bool {
        if self.port.is_some_and(|allowed| allowed != port) {
            return false;
        }
        let asked = host.trim().trim_start_matches('[').trim_end_matches(']');
        match &self.host {
            HostPattern::Address(address) => asked.parse::<IpAddr>().is_ok_and(|asked| asked == *address),
            // A request for an address never matches a name: the name may resolve to it today, to another tomorrow.
            _ if asked.parse::<IpAddr>().is_ok() => false,
            HostPattern::Name(name) => normalize_name(asked) == *name,
            HostPattern::Subdomains(domain) => {
                let asked = normalize_name(asked);
                asked.len() > domain.len() + 1
                    && asked.ends_with(domain.as_str())
                    && asked.as_bytes()[asked.len() - domain.len() - 1] == b'.'
            }
        }
    }

    /// The entry as a host pattern without its port (`pypi.org`, `*.npmjs.org`, `10.0.0.1`, `::1`).
    pub fn host_text(&self) -> String {
        match &self.host {
            HostPattern::Name(name) => name.clone(),
            HostPattern::Subdomains(domain) => format!("*.{domain}"),
            HostPattern::Address(address) => address.to_string(),
        }
    }
}

impl fmt::Display for AllowedHost {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.host, self.port) {
            (HostPattern::Address(IpAddr::V6(address)), Some(port)) => write!(formatter, "[{address}]:{port}"),
            (_, Some(port)) => write!(formatter, "{}:{port}", self.host_text()),
            (_, None) => formatter.write_str(&self.host_text()),
        }
    }
}

/// Splits `host:port`; the port is optional. Brackets around an IPv6 host are kept for the caller.
fn split_host_port(text: &str) -> std::result::Result<(&str, Option<u16>), &'static str> {
    let colon = if text.starts_with('[') {
        text.find(']').map(|end| end + 1).filter(|&after| after < text.len())
    } else {
        text.rfind(':')
    };
    let Some(colon) = colon else { return Ok((text, None)) };
    if text.as_bytes()[colon] != b':' {
        return Err("only a port may follow the host");
    }
    let port_text = &text[colon + 1..];
    let port = port_text
        .parse::<u16>()
        .ok()
        .filter(|port| *port > 0 && port_text.chars().all(|character| character.is_ascii_digit()))
        .ok_or("the port must be a number from 1 to 65535")?;
    Ok((&text[..colon], Some(port)))
}

/// Lower case, without the trailing dot of a fully qualified name.
fn normalize_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Checks a DNS name: labels of letters, digits, `-` and `_`, 1-63 characters, 253 in all.
fn check_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err("a host name has 1 to 253 characters".into());
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("each part between dots has 1 to 63 characters".into());
        }
        if let Some(bad) =
            label.chars().find(|character| !(character.is_ascii_alphanumeric() || *character == '-' || *character == '_'))
        {
            return Err(format!("\"{bad}\" cannot be part of a host name"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a part of a host name cannot start or end with \"-\"".into());
        }
    }
    Ok(())
}

/// A value's type in words, without the value (it might be a secret pasted into the wrong field).
fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "empty",
        Value::Bool(_) => "true or false",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a table",
    }
}

fn invalid(message: String) -> Error {
    Error::InvalidProfile(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(value: Value) -> Result<NetworkPolicy> {
        NetworkPolicy::from_settings(json!({ "network": value }).as_object().expect("an object"))
    }

    fn hosts(entries: &[&str]) -> Vec<AllowedHost> {
        entries.iter().map(|entry| AllowedHost::parse(entry).expect(entry)).collect()
    }

    #[test]
    fn policy_should_default_to_on_and_read_the_words() {
        assert_eq!(NetworkPolicy::from_settings(&Map::new()).unwrap(), NetworkPolicy::On);
        assert_eq!(policy(Value::Null).unwrap(), NetworkPolicy::On);
        assert_eq!(policy(json!("on")).unwrap(), NetworkPolicy::On);
        assert_eq!(policy(json!("OFF")).unwrap(), NetworkPolicy::Off);
        assert_eq!(policy(json!("none")).unwrap(), NetworkPolicy::Off, "docker's earlier word still reads");
        assert_eq!(policy(json!("bridge")).unwrap(), NetworkPolicy::On, "docker's earlier word still reads");
    }

    #[test]
    fn policy_should_parse_an_allow_list_and_drop_repeats() {
        let parsed = policy(json!(["PyPI.org.", "files.pythonhosted.org:443", "*.npmjs.org", "pypi.org"])).unwrap();
        let NetworkPolicy::Allow(entries) = &parsed else { panic!("an allow-list: {parsed:?}") };
        assert_eq!(entries.len(), 3, "{entries:?}");
        assert_eq!(entries[0], AllowedHost { host: HostPattern::Name("pypi.org".into()), port: None });
        assert_eq!(entries[1].port, Some(443));
        assert_eq!(entries[2].host, HostPattern::Subdomains("npmjs.org".into()));
        assert_eq!(parsed.describe(), "network: only pypi.org, files.pythonhosted.org:443, *.npmjs.org");
    }

    #[test]
    fn policy_should_parse_addresses_with_and_without_ports() {
        let entries = hosts(&["127.0.0.2", "127.0.0.3:8080", "::1", "[::1]:8443"]);
        assert_eq!(entries[0].host, HostPattern::Address("127.0.0.2".parse().unwrap()));
        assert_eq!(entries[1].port, Some(8080));
        assert_eq!(entries[2], AllowedHost { host: HostPattern::Address("::1".parse().unwrap()), port: None });
        assert_eq!(entries[3].port, Some(8443));
        assert_eq!(entries[3].to_string(), "[::1]:8443");
    }

    #[test]
    fn policy_should_refuse_bad_values_with_an_invalid_profile_sentence() {
        for bad in [
            json!("sometimes"),
            json!(true),
            json!(3),
            json!({ "allow": [] }),
            json!([]),
            json!([1]),
            json!([""]),
            json!(["https://pypi.org"]),
            json!(["pypi.org/simple"]),
            json!(["pypi.org:0"]),
            json!(["pypi.org:99999"]),
            json!(["pypi.org:https"]),
            json!(["py pi.org"]),
            json!(["pypi.*.org"]),
            json!(["*.org"]),
            json!(["-bad.example"]),
            json!(["[::1"]),
        ] {
            let error = policy(bad.clone()).expect_err(&bad.to_string());
            assert_eq!(error.kind(), crate::protocol::ErrorKind::InvalidProfile, "{bad}");
            let message = error.to_string();
            assert!(message.contains("\"network\""), "the message names the setting: {message}");
            assert!(message.ends_with('.'), "a sentence: {message}");
        }
    }

    #[test]
    fn names_should_match_exactly_and_case_insensitively() {
        let list = hosts(&["pypi.org"]);
        assert!(admits(&list, "pypi.org", 443));
        assert!(admits(&list, "PYPI.ORG.", 80));
        assert!(!admits(&list, "evil-pypi.org", 443));
        assert!(!admits(&list, "pypi.org.evil.example", 443));
        assert!(!admits(&list, "files.pypi.org", 443), "an exact name does not admit its subdomains");
    }

    #[test]
    fn ports_should_restrict_only_when_given() {
        let list = hosts(&["files.pythonhosted.org:443", "pypi.org"]);
        assert!(admits(&list, "files.pythonhosted.org", 443));
        assert!(!admits(&list, "files.pythonhosted.org", 80));
        assert!(admits(&list, "pypi.org", 8080));
    }

    #[test]
    fn wildcards_should_admit_subdomains_but_not_the_domain_itself() {
        let list = hosts(&["*.npmjs.org"]);
        assert!(admits(&list, "registry.npmjs.org", 443));
        assert!(admits(&list, "a.b.npmjs.org", 443));
        assert!(!admits(&list, "npmjs.org", 443));
        assert!(!admits(&list, "evilnpmjs.org", 443));
    }

    #[test]
    fn addresses_should_match_only_entries_that_name_them() {
        let list = hosts(&["allowed.sandlink.test", "127.0.0.5", "::1"]);
        assert!(!admits(&list, "127.0.0.2", 80), "an address is not admitted by a name that resolves to it");
        assert!(admits(&list, "127.0.0.5", 80));
        assert!(admits(&list, "[::1]", 80));
        assert!(admits(&list, "0:0:0:0:0:0:0:1", 80), "addresses compare as addresses, not as text");
        assert!(!admits(&list, "::2", 80));
    }
}
