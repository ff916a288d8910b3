//! Files that look like secrets: by name (`.env`, private keys, credential files) here, by content through
//! `secret_scan`; held back from the sandbox unless the user allows them by pattern (`settings.sync.allowSecrets`).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use ignore::gitignore::Gitignore;

use super::rules::build_patterns;
use super::secret_scan::{ContentCheck, FileStamp};
use crate::error::Result;

/// The rule name reported for a file held back by its name alone.
pub const NAME_RULE: &str = "secret-file-name";

/// Templates that by convention hold no real values, so they are not held back.
const ENV_TEMPLATES: [&str; 4] = [".env.example", ".env.sample", ".env.template", ".env.dist"];
/// Exact file names of credential files.
const SECRET_NAMES: [&str; 13] = [
    ".env",
    ".envrc",
    ".npmrc",
    ".pypirc",
    ".netrc",
    ".git-credentials",
    ".pgpass",
    ".dockercfg",
    ".htpasswd",
    "credentials.json",
    "service-account.json",
    "service_account.json",
    "terraform.tfstate",
];
/// Private key files by name prefix (their `.pub` halves are public).
const KEY_PREFIXES: [&str; 4] = ["id_rsa", "id_dsa", "id_ecdsa", "id_ed25519"];
/// Key and certificate stores, and Terraform state (it records every secret a plan touched), by extension.
const SECRET_EXTENSIONS: [&str; 8] = [".pem", ".key", ".p12", ".pfx", ".jks", ".keystore", ".tfstate", ".tfstate.backup"];
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
    /// Exact paths the user allowed for this session only (`sandlink/allowSecret`), after it started.
    allowed_now: Mutex<BTreeSet<String>>,
    /// Whether `allowed_now` holds anything, so the check every scanned file passes takes no lock until it does.
    any_allowed_now: std::sync::atomic::AtomicBool,
    /// The content check, unless the user turned it off (`sync.scanContent = false`).
    content: Option<Arc<ContentCheck>>,
}

impl SecretFilter {
    /// A filter by name only.
    pub fn new(workspace: &Path, allow_patterns: &[String]) -> Result<Self> {
        Ok(SecretFilter {
            allowed: build_patterns(workspace, allow_patterns, "sync.allowSecrets")?,
            allowed_now: Mutex::default(),
            any_allowed_now: std::sync::atomic::AtomicBool::new(false),
            content: None,
        })
    }

    /// A filter by name and, when `scan_content`, by content.
    pub fn with_content(workspace: &Path, allow_patterns: &[String], scan_content: bool) -> Result<Self> {
        let mut filter = SecretFilter::new(workspace, allow_patterns)?;
        filter.content = scan_content.then(|| Arc::new(ContentCheck::new()));
        Ok(filter)
    }

    fn is_allowed(&self, relative: &str) -> bool {
        // Only relative paths can be allowed; the matcher asserts as much (found by fuzzing with "/x").
        !relative.starts_with('/')
            && ((!self.allowed.is_empty() && self.allowed.matched_path_or_any_parents(relative, false).is_ignore())
                || self.any_allowed_now.load(std::sync::atomic::Ordering::Acquire)
                    && crate::locks::lock(&self.allowed_now).contains(relative))
    }

    /// Allows one file, by its exact relative path, for as long as this filter lives (the session): the user looked
    /// at it and chose to upload it.
    pub fn allow_now(&self, relative: &str) {
        crate::locks::lock(&self.allowed_now).insert(relative.to_string());
        self.any_allowed_now.store(true, std::sync::atomic::Ordering::Release);
    }

    /// True for a relative, `/`-separated path that looks like a secret (by name, or by the content it was last
    /// seen with) and was not allowed.
    pub fn holds_back(&self, relative: &str) -> bool {
        let by_content = self.content.as_ref().is_some_and(|content| content.is_held(relative));
        (by_content || looks_like_secret(relative)) && !self.is_allowed(relative)
    }

    /// The rule that holds a scanned file back without reading it: its name, or content already found secret
    /// while the file has not changed since.
    pub fn held_back_rule(&self, relative: &str, seen: Option<&FileStamp>) -> Option<&'static str> {
        if self.is_allowed(relative) {
            return None;
        }
        if looks_like_secret(relative) {
            return Some(NAME_RULE);
        }
        // Changed since it was held back (or never was), it is released: read and judged again on upload.
        let (content, seen) = (self.content.as_ref()?, seen?);
        content.known_or_release(relative, seen)
    }

    /// The content check files must pass before upload, unless they are allowed; `None` when scanning is off.
    pub fn content_check_for(&self, relative: &str) -> Option<&ContentCheck> {
        self.content.as_deref().filter(|_| !self.is_allowed(relative))
    }

    /// The content check itself, for reading what it held back.
    pub fn content_check(&self) -> Option<&ContentCheck> {
        self.content.as_deref()
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
    SECRET_PATH_SUFFIXES.iter().any(|suffix| {
        relative.strip_suffix(suffix).is_some_and(|before| before.is_empty() || before.ends_with('/'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_allowed_now_should_go_up_while_its_neighbours_stay_held_back() {
        let filter = SecretFilter::new(Path::new("/w"), &[]).expect("valid");
        assert!(filter.holds_back("api/.env") && filter.holds_back(".env"));
        filter.allow_now("api/.env");
        assert!(!filter.holds_back("api/.env"), "allowed by its exact path");
        assert!(filter.holds_back(".env") && filter.holds_back("api/.env.local"), "only that path is allowed");
        assert!(filter.held_back_rule("api/.env", None).is_none());
    }

    #[test]
    fn secrets_should_be_held_back_unless_allowed() {
        let filter = SecretFilter::new(Path::new("/w"), &[".env.test".into(), "certs/*.pem".into()]).expect("valid");
        for secret in [".env", "app/.env.local", "id_rsa", "keys/id_ed25519", "tls.key", "server.pem", ".npmrc",
            ".pypirc", "home/.aws/credentials", ".envrc", "infra/terraform.tfstate", "prod.tfstate.backup",
            "web/.htpasswd", "service-account.json"] {
            assert!(filter.holds_back(secret), "{secret} should be held back");
        }
        for plain in [".env.example", "id_rsa.pub", "src/env.rs", "keyboard.rs", ".env.test", "certs/ca.pem"] {
            assert!(!filter.holds_back(plain), "{plain} should sync");
        }
    }

    #[test]
    fn a_path_that_is_not_relative_should_be_held_back_not_panic() {
        // The allow-list matcher asserts on rooted paths; found by the ignore_rules fuzz target.
        let filter = SecretFilter::new(Path::new("/w"), &[".env".into()]).expect("valid");
        assert!(filter.holds_back("/.env"));
        assert!(!filter.holds_back(".env"));
    }
}
