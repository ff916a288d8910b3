//! Credentials: the redacted `Secret` type, what each driver needs, and where values come from (environment
//! variables first, for CI; then the OS keychain, keyed by profile and key).
//!
//! There is no plain-text fallback: when no keychain is reachable the error says so and names the environment
//! variable to use instead. Every keychain call runs on a blocking thread, never on the async runtime.

pub mod keychain;

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// A secret value (API key, token). `Debug` and `Display` print `<redacted>`, and it is not `Serialize`, so it
/// cannot reach a log, an error message, a state file or a protocol message by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself, for the one place that must send it (an HTTP header, a keychain write).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Secret(<redacted>)")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("<redacted>")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // Overwrite the bytes so a freed value does not linger in memory; `String` has no safe way to do this
        // in place, so swap in zeros of the same length through a byte vector.
        let mut bytes = std::mem::take(&mut self.0).into_bytes();
        bytes.iter_mut().for_each(|byte| *byte = 0);
        std::hint::black_box(&bytes);
    }
}

/// One credential a driver uses: its key (as given to `sandlink/setCredential`) and the environment variable
/// that overrides it (what the provider's own tools read, so CI setups work unchanged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CredentialSpec {
    pub key: &'static str,
    pub env_var: &'static str,
    /// Whether the driver cannot connect without it.
    pub required: bool,
    /// What it is, for error messages ("E2B API key").
    pub description: &'static str,
}

/// The GitHub token agent tasks push and open pull requests with; any profile may hold one, whatever its driver.
pub const GITHUB_TOKEN: CredentialSpec = CredentialSpec {
    key: "githubToken",
    env_var: "GITHUB_TOKEN",
    required: false,
    description: "GitHub token for agent tasks",
};

/// Where a credential's value came from, for diagnostics (never the value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Environment,
    Keychain,
}

/// Checks a profile name or credential key: it becomes part of a keychain entry and of file names.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|character| character.is_ascii_alphanumeric() || "-_.".contains(character))
        && !name.starts_with('.');
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidParams(format!(
            "The {what} \"{name}\" is not valid: use 1 to 64 letters, digits, '-', '_' or '.', not starting with '.'."
        )))
    }
}

/// Reads a credential's environment override; empty values count as unset.
pub fn from_environment(spec: &CredentialSpec) -> Option<Secret> {
    std::env::var(spec.env_var).ok().filter(|value| !value.is_empty()).map(Secret::new)
}

/// Resolves the credentials a driver declares for a connect: environment first, then the keychain entry of
/// `profile`. A required credential that is found nowhere is a `credentialsMissing` error that says how to set it;
/// an unreachable keychain is only an error when something required could not be found elsewhere.
pub async fn resolve(
    driver: &str,
    profile: Option<&str>,
    specs: &[CredentialSpec],
) -> Result<BTreeMap<String, Secret>> {
    let mut resolved = BTreeMap::new();
    for spec in specs {
        if let Some(secret) = from_environment(spec) {
            tracing::debug!(driver, key = spec.key, env = spec.env_var, "credential from the environment");
            resolved.insert(spec.key.to_string(), secret);
            continue;
        }
        let keychain_outcome = match profile {
            Some(profile) => Some(keychain::get(profile, spec.key).await),
            None => None,
        };
        match keychain_outcome {
            Some(Ok(Some(secret))) => {
                tracing::debug!(driver, key = spec.key, "credential from the keychain");
                resolved.insert(spec.key.to_string(), secret);
            }
            Some(Ok(None)) | None if !spec.required => {}
            Some(Err(error)) if !spec.required => {
                tracing::debug!(driver, key = spec.key, %error, "optional credential not read");
            }
            Some(Ok(None)) => {
                let profile = profile.unwrap_or_default();
                return Err(Error::CredentialsMissing(format!(
                    "The {driver} driver needs the {} (\"{}\") and profile \"{profile}\" has none stored. Store it \
                     in the OS keychain with your editor's \"Sandlink: Set Credential\" command or `sandlink profile \
                     set-credential {profile} {}`, or set the environment variable {}.",
                    spec.description, spec.key, spec.key, spec.env_var
                )));
            }
            None => {
                return Err(Error::CredentialsMissing(format!(
                    "The {driver} driver needs the {} (\"{}\"). Set the environment variable {}, or connect with a \
                     profile (`sandlink profile save NAME --driver DRIVER`) and store the key in the OS keychain with \
                     your editor's \"Sandlink: Set Credential\" command or `sandlink profile set-credential NAME KEY`.",
                    spec.description, spec.key, spec.env_var
                )));
            }
            Some(Err(error)) => {
                return Err(Error::CredentialsMissing(format!(
                    "The {driver} driver needs the {} (\"{}\") and it could not be read from the OS keychain: {error}. \
                     Set the environment variable {} instead.",
                    spec.description, spec.key, spec.env_var
                )));
            }
        }
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_should_be_redacted_in_debug_and_display() {
        let secret = Secret::new("sk-live-very-secret");
        assert_eq!(format!("{secret}"), "<redacted>");
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
        let map: BTreeMap<&str, Secret> = [("apiKey", secret.clone())].into();
        assert!(!format!("{map:?}").contains("very-secret"));
        assert_eq!(secret.expose(), "sk-live-very-secret");
    }

    #[test]
    fn names_should_refuse_separators_and_dots_first() {
        for bad in ["", "a/b", ".hidden", "a b", "x:y"] {
            assert!(check_name("profile name", bad).is_err(), "{bad}");
        }
        for good in ["dev", "e2b-prod", "team_1.x"] {
            assert!(check_name("profile name", good).is_ok(), "{good}");
        }
    }
}
