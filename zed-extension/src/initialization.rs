//! The `initializationOptions` Zed sends to `sandlink lsp`: the extension's defaults with the user's own on top.

use serde_json::{Map, Value};

/// Options every Zed session sends: which client this is (the server's logs and messages can say so).
pub fn default_options() -> Value {
    serde_json::json!({ "client": "zed" })
}

/// The defaults deep-merged with `lsp.sandlink.initialization_options` from Zed's settings; the user's values win.
/// A user value that is not an object (a mistake in settings.json) is ignored rather than sent as garbage.
pub fn build_initialization_options(user_options: Option<&Value>) -> Value {
    let mut options = default_options();
    if let Some(user_options @ Value::Object(_)) = user_options {
        merge_into(&mut options, user_options);
    }
    options
}

/// Merges `overlay` into `base`: objects key by key, anything else replaced.
pub fn merge_into(base: &mut Value, overlay: &Value) {
    match (base, overlay) {
        (Value::Object(base_map), Value::Object(overlay_map)) => {
            for (key, overlay_value) in overlay_map {
                match base_map.get_mut(key) {
                    Some(base_value) => merge_into(base_value, overlay_value),
                    None => {
                        base_map.insert(key.clone(), overlay_value.clone());
                    }
                }
            }
        }
        (base, overlay) => *base = overlay.clone(),
    }
}

/// The `workspace/configuration` answer: the user's `lsp.sandlink.settings`, or an empty object.
pub fn build_workspace_configuration(user_settings: Option<&Value>) -> Value {
    match user_settings {
        Some(settings @ Value::Object(_)) => settings.clone(),
        _ => Value::Object(Map::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn options_should_name_zed_as_the_client_when_the_user_sets_nothing() {
        assert_eq!(
            build_initialization_options(None),
            json!({ "client": "zed" })
        );
    }

    #[test]
    fn options_should_carry_the_users_log_level_and_nested_values() {
        let user = json!({ "logLevel": "debug", "defaults": { "driver": "docker" } });
        assert_eq!(
            build_initialization_options(Some(&user)),
            json!({ "client": "zed", "logLevel": "debug", "defaults": { "driver": "docker" } })
        );
    }

    #[test]
    fn options_should_let_the_user_override_a_default() {
        let user = json!({ "client": "zed-preview" });
        assert_eq!(
            build_initialization_options(Some(&user)),
            json!({ "client": "zed-preview" })
        );
    }

    #[test]
    fn options_should_ignore_a_user_value_that_is_not_an_object() {
        assert_eq!(
            build_initialization_options(Some(&json!("debug"))),
            default_options()
        );
    }

    #[test]
    fn merge_should_combine_nested_objects_key_by_key() {
        let mut base = json!({ "a": { "b": 1, "c": 2 }, "d": [1] });
        merge_into(&mut base, &json!({ "a": { "c": 3 }, "d": [2] }));
        assert_eq!(base, json!({ "a": { "b": 1, "c": 3 }, "d": [2] }));
    }

    #[test]
    fn workspace_configuration_should_default_to_an_empty_object() {
        assert_eq!(build_workspace_configuration(None), json!({}));
        assert_eq!(
            build_workspace_configuration(Some(&json!({ "x": 1 }))),
            json!({ "x": 1 })
        );
    }
}
