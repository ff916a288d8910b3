//! Spotting secrets in profile settings, so API keys stay out of config files (above all the committed
//! `.sandlink.toml`) and go to the OS keychain or the environment instead.

use serde_json::{Map, Value};

/// Value prefixes of well-known token formats.
const TOKEN_PREFIXES: &[&str] = &[
    "-----BEGIN", "ghp_", "gho_", "ghs_", "ghu_", "github_pat_", "glpat-", "sk-", "sk_live_", "sk_test_", "rk_live_",
    "xoxb-", "xoxp-", "xoxa-", "AKIA", "ASIA", "e2b_", "dtn_", "npm_", "hf_", "AIza",
];

/// Parts of key names that say the value is a secret.
const SECRET_NAME_PARTS: &[&str] =
    &["token", "secret", "password", "passwd", "passphrase", "apikey", "accesskey", "privatekey", "credential"];

/// Key name endings that name where a secret is, not the secret (`tokenEnv`, `identityFile`).
/// Hashes and fingerprints of a secret are not the secret (`expectedTokenHash`, `hostKeyFingerprint`).
const REFERENCE_SUFFIXES: &[&str] =
    &["file", "path", "env", "var", "name", "command", "helper", "hash", "digest", "fingerprint", "sha"];

/// Where a suspected secret sits, as a dotted key path (`profiles.ci.apiKey`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub key_path: String,
}

/// Looks through `settings` (recursively) for keys that hold credentials or values that look like tokens.
/// `credential_keys` are the keys drivers read from the keychain (`apiKey`): those never belong in a file.
pub fn find(prefix: &str, settings: &Map<String, Value>, credential_keys: &[&str]) -> Option<Finding> {
    for (key, value) in settings {
        let key_path = format!("{prefix}.{key}");
        if credential_keys.iter().any(|credential| credential.eq_ignore_ascii_case(key)) {
            return Some(Finding { key_path });
        }
        match value {
            Value::String(text) if name_says_secret(key) && !text.is_empty() => return Some(Finding { key_path }),
            Value::String(text) if value_looks_like_token(text) => return Some(Finding { key_path }),
            Value::Object(inner) => {
                if let Some(finding) = find(&key_path, inner, credential_keys) {
                    return Some(finding);
                }
            }
            Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    let item_path = format!("{key_path}[{index}]");
                    match item {
                        Value::String(text) if value_looks_like_token(text) => {
                            return Some(Finding { key_path: item_path })
                        }
                        Value::Object(inner) => {
                            if let Some(finding) = find(&item_path, inner, credential_keys) {
                                return Some(finding);
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    None
}

fn name_says_secret(key: &str) -> bool {
    let normalised: String =
        key.chars().filter(|character| character.is_ascii_alphanumeric()).collect::<String>().to_ascii_lowercase();
    SECRET_NAME_PARTS.iter().any(|part| normalised.contains(part))
        && !REFERENCE_SUFFIXES.iter().any(|suffix| normalised.ends_with(suffix))
}

/// A value, or any word of it (command lines, `--flag=value`), that looks like a token.
fn value_looks_like_token(text: &str) -> bool {
    word_looks_like_token(text)
        || text
            .split(|character: char| character.is_whitespace() || "\"'`".contains(character))
            .filter(|word| !word.is_empty())
            .any(word_looks_like_token)
}

/// A known token prefix, an embedded `KEY=value` with a secret name, or a long random-looking string.
fn word_looks_like_token(text: &str) -> bool {
    let trimmed = text.trim();
    if TOKEN_PREFIXES.iter().any(|prefix| trimmed.starts_with(prefix) && trimmed.len() >= prefix.len() + 8) {
        return true;
    }
    if let Some((name, value)) = trimmed.split_once('=') {
        if name_says_secret(name) && !value.is_empty() {
            return true;
        }
    }
    let token_like = trimmed.len() >= 32
        && trimmed.chars().all(|character| character.is_ascii_alphanumeric() || "_-+=".contains(character));
    let mixed = trimmed.chars().any(|character| character.is_ascii_digit())
        && trimmed.chars().any(|character| character.is_ascii_alphabetic());
    // Pure hexadecimal is a digest or a commit id far more often than a key, so it is left alone.
    let hexadecimal = trimmed.chars().all(|character| character.is_ascii_hexdigit());
    token_like && mixed && !hexadecimal
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(value: Value) -> Map<String, Value> {
        value.as_object().cloned().expect("the test passes an object")
    }

    #[test]
    fn find_should_flag_credential_keys_secret_names_and_token_values() {
        let keys = ["apiKey"];
        assert_eq!(find("p", &map(json!({"apiKey": "x"})), &keys).map(|f| f.key_path).as_deref(), Some("p.apiKey"));
        assert!(find("p", &map(json!({"githubToken": "abc"})), &keys).is_some());
        assert!(find("p", &map(json!({"env": {"X": "ghp_0123456789abcdefghij"}})), &keys).is_some());
        assert!(find("p", &map(json!({"note": "e2b_7f3a9c0d1e2b3c4d5e6f"})), &keys).is_some());
        assert!(find("p", &map(json!({"args": ["--password=hunter22"]})), &keys).is_some());
    }

    #[test]
    fn find_should_accept_ordinary_settings_and_references_to_secrets() {
        let keys = ["apiKey"];
        let ordinary = map(json!({
            "image": "node:20-bookworm",
            "host": "build.example.com",
            "identityFile": "~/.ssh/id_ed25519",
            "tokenEnv": "MY_TOKEN",
            "template": "base",
            "cpus": 2,
            "imageDigest": "sha256:4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945",
            "commit": "4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d",
            "sync": {"exclude": ["node_modules"]}
        }));
        assert_eq!(find("p", &ordinary, &keys), None);
    }
}
