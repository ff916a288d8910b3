//! Declarative driver settings: each driver lists its keys and types, and one checker turns unknown keys, wrong
//! types and missing fields into errors that name the key.

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::netpolicy::NetworkPolicy;

/// The key every driver accepts: sync engine options, passed through to the sync engine untouched.
pub const SYNC_KEY: &str = "sync";
/// The key every driver accepts: the network policy (`"on"`, `"off"` or a list of hosts), see `crate::netpolicy`.
pub use crate::netpolicy::NETWORK_KEY;

/// The JSON type a setting must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettingKind {
    String,
    /// A whole number (TOML integers, JSON numbers without a fraction).
    Integer,
    Number,
    Bool,
    StringList,
    /// A table of string values (environment variables, labels).
    StringMap,
    /// Anything; the driver checks it itself.
    Any,
}

impl SettingKind {
    fn describe(self) -> &'static str {
        match self {
            SettingKind::String => "a string",
            SettingKind::Integer => "a whole number",
            SettingKind::Number => "a number",
            SettingKind::Bool => "true or false",
            SettingKind::StringList => "a list of strings",
            SettingKind::StringMap => "a table of strings",
            SettingKind::Any => "any value",
        }
    }

    fn accepts(self, value: &Value) -> bool {
        match self {
            SettingKind::String => value.is_string(),
            SettingKind::Integer => value.is_i64() || value.is_u64(),
            SettingKind::Number => value.is_number(),
            SettingKind::Bool => value.is_boolean(),
            SettingKind::StringList => value.as_array().is_some_and(|items| items.iter().all(Value::is_string)),
            SettingKind::StringMap => value.as_object().is_some_and(|map| map.values().all(Value::is_string)),
            SettingKind::Any => true,
        }
    }
}

/// One setting a driver takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettingSpec {
    pub key: &'static str,
    pub kind: SettingKind,
    pub required: bool,
    /// What it does, for error messages and `sandlink profile` help.
    pub description: &'static str,
}

/// Checks `settings` against `schema`; the first problem found is the error, naming its key.
pub fn validate(driver: &str, schema: &[SettingSpec], settings: &Map<String, Value>) -> Result<()> {
    for (key, value) in settings {
        if key == SYNC_KEY {
            if !value.is_object() {
                return Err(Error::InvalidProfile(format!(
                    "The setting \"{SYNC_KEY}\" must be a table of sync options, not {}.",
                    type_name(value)
                )));
            }
            continue;
        }
        if key == NETWORK_KEY {
            NetworkPolicy::from_value(value)?;
            continue;
        }
        let Some(spec) = schema.iter().find(|spec| spec.key == key) else {
            let known: Vec<&str> = schema.iter().map(|spec| spec.key).chain([SYNC_KEY, NETWORK_KEY]).collect();
            return Err(Error::InvalidProfile(format!(
                "The {driver} driver has no setting \"{key}\". Its settings are: {}.",
                known.join(", ")
            )));
        };
        if !spec.kind.accepts(value) {
            return Err(Error::InvalidProfile(format!(
                "The {driver} setting \"{key}\" must be {}, but it is {}.",
                spec.kind.describe(),
                type_name(value)
            )));
        }
    }
    if let Some(missing) = schema.iter().find(|spec| spec.required && !settings.contains_key(spec.key)) {
        return Err(Error::InvalidProfile(format!(
            "The {driver} driver needs the setting \"{}\" ({}), which is missing.",
            missing.key, missing.description
        )));
    }
    Ok(())
}

/// A value's type in words, without the value (it might be a secret pasted into the wrong field).
pub fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "empty",
        Value::Bool(_) => "true or false",
        Value::Number(number) if number.is_f64() => "a fractional number",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a table",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SCHEMA: &[SettingSpec] = &[
        SettingSpec { key: "image", kind: SettingKind::String, required: true, description: "the image" },
        SettingSpec { key: "cpus", kind: SettingKind::Integer, required: false, description: "CPU count" },
    ];

    fn settings(value: Value) -> Map<String, Value> {
        value.as_object().cloned().expect("the test passes an object")
    }

    #[test]
    fn validate_should_name_unknown_wrong_and_missing_keys() {
        let unknown = validate("docker", SCHEMA, &settings(json!({"image": "x", "imag": "y"}))).unwrap_err();
        assert!(unknown.to_string().contains("\"imag\""), "{unknown}");
        let wrong = validate("docker", SCHEMA, &settings(json!({"image": "x", "cpus": "two"}))).unwrap_err();
        assert!(wrong.to_string().contains("\"cpus\" must be a whole number"), "{wrong}");
        let missing = validate("docker", SCHEMA, &settings(json!({"cpus": 2}))).unwrap_err();
        assert!(missing.to_string().contains("\"image\""), "{missing}");
        validate("docker", SCHEMA, &settings(json!({"image": "x", "sync": {"exclude": []}}))).expect("valid");
    }

    #[test]
    fn validate_should_accept_the_network_policy_everywhere_and_check_it() {
        for good in [json!("on"), json!("off"), json!(["pypi.org", "files.pythonhosted.org:443", "*.npmjs.org"])] {
            let outcome = validate("local", SCHEMA, &settings(json!({"image": "x", "network": good.clone()})));
            assert!(outcome.is_ok(), "{good}: {outcome:?}");
        }
        let error = validate("local", SCHEMA, &settings(json!({"image": "x", "network": "sometimes"}))).unwrap_err();
        assert_eq!(error.kind(), crate::protocol::ErrorKind::InvalidProfile);
        assert!(error.to_string().contains("\"network\" is \"on\", \"off\" or a list of host names"), "{error}");
        let error = validate("local", SCHEMA, &settings(json!({"image": "x", "network": ["https://pypi.org/simple"]}))).unwrap_err();
        assert!(error.to_string().contains("https://pypi.org/simple"), "the entry at fault is named: {error}");
    }
}
