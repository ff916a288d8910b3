//! Files that look like secrets (`.env`, private keys, credential files): held back from the sandbox unless the
//! user allows them by pattern (`settings.sync.allowSecrets`).

use std::path::Path;

use ignore::gitignore::Gitignore;

use super::rules::build_patterns;
use crate::error::Result;

/// Templates that by convention hold no real values, so they are not held back.
const ENV_TEMPLATES: [&str; 4] = [".env.example", ".env.sample", ".env.template", ".env.dist"];
/// Exact file names of credential files.
const SECRET_NAMES: [&str; 8] =
    [".env", ".npmrc", ".pypirc", ".netrc", ".git-credentials", ".pgpass", ".dockercfg", "credentials.json"];
/// Private key files by name prefix (their `.pub` halves are public).
const KEY_PREFIXES: [&str; 4] = ["id_rsa", "id_dsa", "id_ecdsa", "id_ed25519"];
/// Key and certificate stores by extension.
const SECRET_EXTENSIONS: [&str; 6] = [".pem", ".key", ".p12", ".pfx", ".jks", ".keystore"];
/// Cloud credential files by the end of their path.
const SECRET_PATH_SUFFIXES: [&str; 5] = [
    ".aws/credentials",
    ".docker/config.json",
    "gcloud/application_default_credentials.json",
    ".azure/accessTokens.json",
    ".kube/config",
];

/// Decides whether a workspace path is a likely secret that must not be uploaded.
pub struct SecretFilter {
    allowed: Gitignore,
}

impl SecretFilter {
    pub fn new(workspace: &Path, allow_patterns: &[String]) -> Result<Self> {
        Ok(SecretFilter { allowed: build_patterns(workspace, allow_patterns, "sync.allowSecrets")? })
    }

    /// True for a relative, `/`-separated path that looks like a secret and was not allowed.
    pub fn holds_back(&self, relative: &str) -> bool {
        if !looks_like_secret(relative) {
            return false;
        }
        !self.allowed.matched_path_or_any_parents(relative, false).is_ignore()
    }
}

/// Whether a path looks like a secret by its name alone (contents are never read for this).
pub fn looks_like_secret(relative: &str) -> bool {
    let name = relative.rsplit('/').next().unwrap_or(relative);
    if SECRET_NAMES.contains(&name) {
        return true;
    }
    if name.starts_with(".env.") && !ENV_TEMPLATES.contains(&name) {
        return true;
    }
    if KEY_PREFIXES.iter().any(|prefix| name.starts_with(prefix)) && !name.ends_with(".pub") {
        return true;
    }
    if SECRET_EXTENSIONS.iter().any(|extension| name.ends_with(extension)) {
        return true;
    }
    SECRET_PATH_SUFFIXES
        .iter()
        .any(|suffix| relative == *suffix || relative.ends_with(&format!("/{suffix}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_should_be_held_back_unless_allowed() {
        let filter = SecretFilter::new(Path::new("/w"), &[".env.test".into(), "certs/*.pem".into()]).expect("valid");
        for secret in [".env", "app/.env.local", "id_rsa", "keys/id_ed25519", "tls.key", "server.pem", ".npmrc",
            ".pypirc", "home/.aws/credentials"] {
            assert!(filter.holds_back(secret), "{secret} should be held back");
        }
        for plain in [".env.example", "id_rsa.pub", "src/env.rs", "keyboard.rs", ".env.test", "certs/ca.pem"] {
            assert!(!filter.holds_back(plain), "{plain} should sync");
        }
    }
}
