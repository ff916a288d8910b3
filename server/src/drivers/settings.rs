//! Declarative driver settings: each driver declares its settings once, as a serde struct that refuses unknown
//! fields plus a `SettingSpec` list beside it (name, type, default, description). One checker turns unknown keys,
//! wrong types and missing fields into `invalidProfile` errors that name the key, the same list is the schema
//! `DriverInfo.settings` shows, and `assert_declaration_matches` fails a driver's test when struct and list disagree.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::credentials::CredentialSpec;
use crate::error::{Error, Result};
use crate::netpolicy::NetworkPolicy;
use crate::protocol::{CredentialInfo, SettingInfo};

/// The key every driver accepts: sync engine options, passed through to the sync engine untouched.
pub const SYNC_KEY: &str = "sync";
/// The key every driver accepts: the network policy (`"on"`, `"off"` or a list of hosts), see `crate::netpolicy`.
pub use crate::netpolicy::NETWORK_KEY;

/// The settings every driver takes besides its own; each driver's struct has a field for each.
pub const COMMON: &[SettingSpec] = &[
    SettingSpec {
        key: SYNC_KEY,
        kind: SettingKind::Table,
        required: false,
        default: None,
        description: "sync engine options (ignore files, exclusions, secret scanning), passed to the sync engine",
    },
    SettingSpec {
        key: NETWORK_KEY,
        kind: SettingKind::Network,
        required: false,
        default: Some("\"on\""),
        description: "the network policy: \"on\", \"off\" or a list of host names with optional ports",
    },
    SettingSpec {
        key: crate::policy::LIFECYCLE_KEY,
        kind: SettingKind::Table,
        required: false,
        default: None,
        description: "the lifecycle policy: { maxDuration = \"1h\", warnAt = [\"30m\", \"50m\"], maxCost = 5.0 } (docs/protocol.md, Lifecycle and cost)",
    },
];

/// The JSON type a setting must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettingKind {
    String,
    /// A whole number (TOML integers, JSON numbers without a fraction).
    Integer,
    Number,
    Bool,
    StringList,
    IntegerList,
    /// A table of string values (environment variables, labels).
    StringMap,
    /// A table the driver or the sync engine reads itself.
    Table,
    /// A number, or a string the driver parses (`"512m"`, `"0.5"`).
    NumberOrString,
    /// The common network policy, checked by `NetworkPolicy::from_value`.
    Network,
}

impl SettingKind {
    fn describe(self) -> &'static str {
        match self {
            SettingKind::String => "a string",
            SettingKind::Integer => "a whole number",
            SettingKind::Number => "a number",
            SettingKind::Bool => "true or false",
            SettingKind::StringList => "a list of strings",
            SettingKind::IntegerList => "a list of whole numbers",
            SettingKind::StringMap => "a table of strings",
            SettingKind::Table => "a table",
            SettingKind::NumberOrString => "a number or a string",
            SettingKind::Network => "\"on\", \"off\" or a list of host names",
        }
    }

    /// The type's name in `DriverInfo.settings`.
    pub fn wire_name(self) -> &'static str {
        match self {
            SettingKind::String => "string",
            SettingKind::Integer => "integer",
            SettingKind::Number => "number",
            SettingKind::Bool => "boolean",
            SettingKind::StringList => "stringList",
            SettingKind::IntegerList => "integerList",
            SettingKind::StringMap => "stringMap",
            SettingKind::Table => "table",
            SettingKind::NumberOrString => "numberOrString",
            SettingKind::Network => "network",
        }
    }

    fn accepts(self, value: &Value) -> bool {
        let integer = |value: &Value| value.is_i64() || value.is_u64();
        match self {
            SettingKind::String => value.is_string(),
            SettingKind::Integer => integer(value),
            SettingKind::Number => value.is_number(),
            SettingKind::Bool => value.is_boolean(),
            SettingKind::StringList => value.as_array().is_some_and(|items| items.iter().all(Value::is_string)),
            SettingKind::IntegerList => value.as_array().is_some_and(|items| items.iter().all(integer)),
            SettingKind::StringMap => value.as_object().is_some_and(|map| map.values().all(Value::is_string)),
            SettingKind::Table => value.is_object(),
            SettingKind::NumberOrString => value.is_number() || value.is_string(),
            SettingKind::Network => NetworkPolicy::from_value(value).is_ok(),
        }
    }
}

/// One setting a driver takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettingSpec {
    pub key: &'static str,
    pub kind: SettingKind,
    pub required: bool,
    /// The value used when the setting is absent, as JSON text; `None` when it depends on other settings.
    pub default: Option<&'static str>,
    /// What it does, for error messages and `DriverInfo.settings`.
    pub description: &'static str,
}

/// Checks `settings` against `schema` (a driver's own settings; `COMMON` are added here); the first problem found
/// is the error, naming its key. A JSON `null` counts as absent, as the drivers always read it.
pub fn validate(driver: &str, schema: &[SettingSpec], settings: &Map<String, Value>) -> Result<()> {
    for (key, value) in settings {
        if key == NETWORK_KEY {
            // Its own error names the entry at fault, which a type check could not.
            if !value.is_null() {
                NetworkPolicy::from_value(value)?;
            }
            continue;
        }
        if key == crate::policy::LIFECYCLE_KEY {
            crate::policy::Lifecycle::from_value(value)?;
            continue;
        }
        let Some(spec) = schema.iter().chain(COMMON).find(|spec| spec.key == key) else {
            let known: Vec<&str> = schema.iter().chain(COMMON).map(|spec| spec.key).collect();
            return Err(Error::InvalidProfile(format!(
                "The {driver} driver has no setting \"{key}\". Its settings are: {}.",
                known.join(", ")
            )));
        };
        if !value.is_null() && !spec.kind.accepts(value) {
            return Err(Error::InvalidProfile(format!(
                "The {driver} setting \"{key}\" must be {}, but it is {}.",
                spec.kind.describe(),
                type_name(value)
            )));
        }
    }
    if let Some(missing) =
        schema.iter().find(|spec| spec.required && settings.get(spec.key).is_none_or(Value::is_null))
    {
        return Err(Error::InvalidProfile(format!(
            "The {driver} driver needs the setting \"{}\" ({}), which is missing.",
            missing.key, missing.description
        )));
    }
    Ok(())
}

/// Validates `settings` against `schema`, then reads them into the driver's declared struct `T`.
pub fn parse<T: DeserializeOwned>(driver: &str, schema: &[SettingSpec], settings: &Map<String, Value>) -> Result<T> {
    validate(driver, schema, settings)?;
    // After `validate` this fails only on what a JSON type cannot say (a whole number too large for its field).
    serde_json::from_value(Value::Object(settings.clone())).map_err(|error| {
        // Every declared field is optional, so the key at fault is the one that fails on its own.
        let culprit = settings.iter().find(|(key, value)| {
            let alone = Map::from_iter([((*key).clone(), (*value).clone())]);
            serde_json::from_value::<T>(Value::Object(alone)).is_err()
        });
        let detail = error.to_string();
        let detail = detail.trim_end_matches('.');
        match culprit {
            Some((key, _)) => Error::InvalidProfile(format!("The {driver} setting \"{key}\" is not valid: {detail}.")),
            None => Error::InvalidProfile(format!("The {driver} settings are not valid: {detail}.")),
        }
    })
}

/// The schema `DriverInfo.settings` shows: the driver's own settings, then the common ones; those in `ask` are
/// marked to be asked for at connect.
pub fn describe(schema: &[SettingSpec], ask: &[&str]) -> Vec<SettingInfo> {
    schema
        .iter()
        .chain(COMMON)
        .map(|spec| SettingInfo {
            name: spec.key.to_string(),
            kind: spec.kind.wire_name().to_string(),
            default: spec.default.and_then(|text| serde_json::from_str(text).ok()),
            description: spec.description.to_string(),
            ask_at_connect: ask.contains(&spec.key),
        })
        .collect()
}

/// The credentials `DriverInfo.credentials` shows.
pub fn describe_credentials(credentials: &[CredentialSpec]) -> Vec<CredentialInfo> {
    credentials
        .iter()
        .map(|spec| CredentialInfo {
            key: spec.key.to_string(),
            env_var: spec.env_var.to_string(),
            required: spec.required,
            description: spec.description.to_string(),
        })
        .collect()
}

/// Fails when a driver's declared struct `T` and its `schema` (plus `COMMON`) name different settings, or a
/// default is not valid JSON of its setting's type; each driver's tests call it, so the two cannot drift.
#[cfg(test)]
pub fn assert_declaration_matches<T: DeserializeOwned>(driver: &str, schema: &[SettingSpec]) {
    let mut declared: Vec<&str> = field_names::<T>().to_vec();
    let mut listed: Vec<&str> = schema.iter().chain(COMMON).map(|spec| spec.key).collect();
    declared.sort_unstable();
    listed.sort_unstable();
    assert_eq!(declared, listed, "the {driver} settings struct and its schema list different settings");
    for spec in schema.iter().chain(COMMON) {
        if let Some(text) = spec.default {
            let value: Value = serde_json::from_str(text).unwrap_or_else(|error| panic!("{driver} {}: {error}", spec.key));
            assert!(spec.kind.accepts(&value), "the {driver} default of {} is not {}", spec.key, spec.kind.describe());
            let mut alone = Map::new();
            alone.insert(spec.key.to_string(), value);
            assert!(
                serde_json::from_value::<T>(Value::Object(alone)).is_ok(),
                "the {driver} struct does not take the default of {}",
                spec.key
            );
        }
    }
}

/// The field names serde's derive hands to `deserialize_struct`: what a struct with `deny_unknown_fields` accepts.
#[cfg(test)]
fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{Error as _, Visitor};

    struct FieldCollector<'a>(&'a mut &'static [&'static str]);

    impl<'de> serde::Deserializer<'de> for FieldCollector<'_> {
        type Error = serde::de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> std::result::Result<V::Value, Self::Error> {
            Err(Self::Error::custom("the settings declaration is not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> std::result::Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(Self::Error::custom("only the field names were wanted"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
            unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    // The collector always answers an error once it has the names; that error is the expected outcome.
    let _ = T::deserialize(FieldCollector(&mut fields));
    assert!(!fields.is_empty(), "the settings declaration is a struct with named fields");
    fields
}

/// A string setting that, when given, must say something: trimmed, or an `invalidProfile` error naming the driver
/// and the key.
pub fn non_empty(driver: &str, key: &str, value: Option<String>) -> Result<Option<String>> {
    match value {
        None => Ok(None),
        Some(text) if !text.trim().is_empty() => Ok(Some(text.trim().to_string())),
        Some(_) => Err(Error::InvalidProfile(format!("The {driver} setting \"{key}\" must be a non-empty string."))),
    }
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
        SettingSpec { key: "image", kind: SettingKind::String, required: true, default: None, description: "the image" },
        SettingSpec { key: "cpus", kind: SettingKind::Integer, required: false, default: Some("1"), description: "CPU count" },
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

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // Only its shape matters here.
    struct Declared {
        image: Option<String>,
        cpus: Option<i64>,
        network: Option<serde::de::IgnoredAny>,
        sync: Option<serde::de::IgnoredAny>,
        lifecycle: Option<serde::de::IgnoredAny>,
    }

    #[derive(serde::Deserialize)]
    #[allow(dead_code)] // Only its shape matters here.
    struct DeclaredWithoutCpus {
        image: Option<String>,
        network: Option<serde::de::IgnoredAny>,
        sync: Option<serde::de::IgnoredAny>,
        lifecycle: Option<serde::de::IgnoredAny>,
    }

    #[test]
    fn a_declaration_should_match_its_schema() {
        assert_declaration_matches::<Declared>("docker", SCHEMA);
        let parsed: Declared = parse("docker", SCHEMA, &settings(json!({"image": "x", "cpus": 2}))).expect("valid");
        assert_eq!(parsed.cpus, Some(2));
    }

    #[test]
    #[should_panic(expected = "list different settings")]
    fn a_struct_that_lacks_a_listed_setting_should_fail_the_declaration_check() {
        assert_declaration_matches::<DeclaredWithoutCpus>("docker", SCHEMA);
    }

    #[test]
    fn a_value_too_large_for_its_field_should_name_the_key() {
        let error = parse::<Declared>("docker", SCHEMA, &settings(json!({"image": "x", "cpus": u64::MAX}))).err().expect("too large");
        assert_eq!(error.kind(), crate::protocol::ErrorKind::InvalidProfile);
        assert!(error.to_string().starts_with("The docker setting \"cpus\" is not valid:"), "{error}");
    }

    #[test]
    fn describe_should_list_own_then_common_settings_with_wire_types() {
        let schema = describe(SCHEMA, &[]);
        let names: Vec<&str> = schema.iter().map(|setting| setting.name.as_str()).collect();
        assert_eq!(names, ["image", "cpus", "sync", "network", "lifecycle"]);
        assert_eq!(schema[1].kind, "integer");
        assert_eq!(schema[1].default, Some(json!(1)));
        assert_eq!(schema[3].default, Some(json!("on")));
        assert!(schema.iter().all(|setting| !setting.description.is_empty()));
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
