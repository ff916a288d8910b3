//! Workspace trust: which workspaces the user has confirmed, so their `.sandlink.toml` may send the workspace
//! elsewhere (an SSH host, a cloud account, a remote Docker host), loosen the sandbox, or run its `[tasks]`. Kept in
//! the user's state directory (`trust.json`), never in the workspace, so a repository cannot trust itself; revocable.
//!
//! Trust is bound to the file's fingerprint: the settings that decide where code and credentials go (every profile
//! setting but a few resource knobs, and every task), so an edit that changes any of them asks again, and the
//! question says what changed. Comments, formatting and key order are not part of it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::statefile;

/// Profile settings that change how much a sandbox gets, never where code goes or what it may reach; they are left
/// out of the fingerprint so tuning them does not ask for trust again.
const HARMLESS_SETTINGS: &[&str] = &[
    "cpus",
    "memory",
    "pids",
    "timeoutSeconds",
    "keepaliveIdleSeconds",
    "streamKeepaliveSeconds",
    "keep",
    "metadata",
    "sync.exclude",
    "sync.watch",
    "sync.pollIntervalSeconds",
];

/// The security-relevant content of a workspace file: each setting as `key path = JSON value`, and its digest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fingerprint {
    pub facts: BTreeMap<String, String>,
    pub digest: String,
}

impl Fingerprint {
    /// The fingerprint of a parsed `.sandlink.toml`: its `[profiles.*]` and `[tasks]` tables.
    pub fn of(table: &toml::Table) -> Fingerprint {
        let mut facts = BTreeMap::new();
        for section in ["profiles", "tasks"] {
            if let Some(value) = table.get(section) {
                flatten(section, &toml_to_json(value), &mut facts);
            }
        }
        facts.retain(|key, _| !is_harmless(key));
        let mut hasher = blake3::Hasher::new();
        for (key, value) in &facts {
            // Lengths first, so no two different sets of facts encode to the same bytes.
            for part in [key, value] {
                hasher.update(&(part.len() as u64).to_le_bytes());
                hasher.update(part.as_bytes());
            }
        }
        Fingerprint { facts, digest: hasher.finalize().to_hex().to_string() }
    }

    /// The fingerprint of a file's text; an unreadable file has none (it is refused elsewhere, with its error).
    pub fn of_text(text: &str) -> Option<Fingerprint> {
        text.parse::<toml::Table>().ok().map(|table| Fingerprint::of(&table))
    }

    /// What differs from an earlier fingerprint, one sentence each, values shown (a workspace file holds no
    /// secrets: profile and task values that look like one are refused when the file is read).
    pub fn changes_since(&self, earlier: &BTreeMap<String, String>) -> Vec<String> {
        let mut changes = Vec::new();
        for (key, value) in &self.facts {
            match earlier.get(key) {
                None => changes.push(format!("{key} was added ({value})")),
                Some(old) if old != value => changes.push(format!("{key} changed from {old} to {value}")),
                Some(_) => {}
            }
        }
        for (key, old) in earlier {
            if !self.facts.contains_key(key) {
                changes.push(format!("{key} was removed (it was {old})"));
            }
        }
        changes
    }
}

fn is_harmless(key: &str) -> bool {
    // `profiles.NAME.SETTING…`: the setting path starts after the profile name.
    let Some(setting) = key.strip_prefix("profiles.").and_then(|rest| rest.split_once('.')).map(|(_, setting)| setting)
    else {
        return false;
    };
    HARMLESS_SETTINGS.contains(&setting)
}

fn flatten(prefix: &str, value: &Value, facts: &mut BTreeMap<String, String>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, item) in map {
                flatten(&format!("{prefix}.{key}"), item, facts);
            }
        }
        other => {
            facts.insert(prefix.to_string(), other.to_string());
        }
    }
}

fn toml_to_json(value: &toml::Value) -> Value {
    match value {
        toml::Value::String(text) => Value::String(text.clone()),
        toml::Value::Integer(number) => Value::from(*number),
        toml::Value::Float(number) => Value::from(*number),
        toml::Value::Boolean(flag) => Value::Bool(*flag),
        toml::Value::Datetime(datetime) => Value::String(datetime.to_string()),
        toml::Value::Array(items) => Value::Array(items.iter().map(toml_to_json).collect()),
        toml::Value::Table(table) => {
            Value::Object(table.iter().map(|(key, item)| (key.clone(), toml_to_json(item))).collect::<Map<_, _>>())
        }
    }
}

/// Why a workspace profile's own settings need trust even on this machine: each reason in words, empty when none.
/// (Where the driver sends the workspace is the driver's to say: `Driver::sends_workspace_elsewhere`.)
pub fn loosening_settings(settings: &Map<String, Value>) -> Vec<String> {
    let mut reasons = Vec::new();
    let sync = settings.get("sync").and_then(Value::as_object);
    if let Some(allowed) = sync.and_then(|sync| sync.get("allowSecrets")).and_then(Value::as_array) {
        if !allowed.is_empty() {
            reasons.push(format!("uploads files that look like secrets (sync.allowSecrets = {})", Value::from(allowed.clone())));
        }
    }
    if sync.and_then(|sync| sync.get("scanContent")).and_then(Value::as_bool) == Some(false) {
        reasons.push("turns off the check of file contents for secrets (sync.scanContent = false)".into());
    }
    if settings.get("isolation").and_then(Value::as_str) == Some("none") {
        reasons.push("runs commands without isolation (isolation = \"none\")".into());
    }
    if let Some(passed) = settings.get("passEnv").and_then(Value::as_array).filter(|names| !names.is_empty()) {
        let names: Vec<&str> = passed.iter().filter_map(Value::as_str).collect();
        reasons.push(format!("passes your environment variables {} into every run (passEnv)", names.join(", ")));
    }
    if settings.get("network").and_then(Value::as_str) == Some("host") {
        reasons.push("gives runs the host's network (network = \"host\")".into());
    }
    if let Some(container) = settings.get("container").and_then(Value::as_str) {
        reasons.push(format!("attaches to the existing container {container} (container)"));
    }
    if let Some(paths) = settings.get("readOnlyPaths").and_then(Value::as_array) {
        // The list replaces the default toolchain directories: a repository could name ~/.ssh or ~/.aws here.
        let paths: Vec<&str> = paths.iter().filter_map(Value::as_str).collect();
        reasons.push(format!("lets runs read {} on your machine (readOnlyPaths)", paths.join(", ")));
    }
    if settings.get("unixSockets").and_then(Value::as_bool) == Some(true) {
        reasons.push("lets runs open Unix sockets, which reach services on your machine (unixSockets = true)".into());
    }
    reasons
}

/// Where a workspace stands with the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustState {
    /// Confirmed, and the file is as it was then.
    Trusted,
    /// Never confirmed (or revoked).
    NotTrusted,
    /// Confirmed once, but the file changed since: each change in words.
    Changed(Vec<String>),
}

/// One trusted workspace: when, and the fingerprint the user saw.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    trusted_at: String,
    digest: String,
    #[serde(default)]
    facts: BTreeMap<String, String>,
}

/// Trust records as stored; the first format held only the time, and such trust is asked for again.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum Stored {
    Bound(Entry),
    Unbound(String),
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TrustFile {
    /// Canonical workspace path -> what was trusted.
    #[serde(default)]
    trusted: BTreeMap<String, Stored>,
}

fn trust_file(state_dir: &Path) -> PathBuf {
    state_dir.join("trust.json")
}

/// The path trust is keyed by: canonical, so a symlink or a `..` does not make a second identity.
pub fn canonical(workspace: &Path) -> PathBuf {
    std::fs::canonicalize(workspace).unwrap_or_else(|_| workspace.to_path_buf())
}

fn read(state_dir: &Path) -> Result<TrustFile> {
    let path = trust_file(state_dir);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|error| {
            Error::Internal(format!("{} is damaged ({error}); delete it and confirm your workspaces again.", path.display()))
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(TrustFile::default()),
        Err(error) => Err(Error::io(format!("Could not read {}", path.display()), error)),
    }
}

/// The fingerprint of the workspace's `.sandlink.toml` as it is now (empty when there is none), blocking.
pub fn current_fingerprint(workspace: &Path) -> Result<Fingerprint> {
    let path = workspace.join(super::WORKSPACE_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Fingerprint::of_text(&text).ok_or_else(|| {
            Error::InvalidProfile(format!("{} is not valid TOML; fix it before trusting the workspace.", path.display()))
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Fingerprint::of(&toml::Table::new())),
        Err(error) => Err(Error::io(format!("Could not read {}", path.display()), error)),
    }
}

/// How the user's trust in `workspace` relates to `current`, the fingerprint of its file now (blocking).
pub fn state(state_dir: &Path, workspace: &Path, current: &Fingerprint) -> Result<TrustState> {
    let key = canonical(workspace).to_string_lossy().into_owned();
    Ok(match read(state_dir)?.trusted.get(&key) {
        None => TrustState::NotTrusted,
        Some(Stored::Bound(entry)) if entry.digest == current.digest => TrustState::Trusted,
        Some(Stored::Bound(entry)) => {
            let changes = current.changes_since(&entry.facts);
            // Equal facts with another digest would mean another digest scheme; say so rather than nothing.
            TrustState::Changed(if changes.is_empty() { vec!["the way sandlink compares the file changed".into()] } else { changes })
        }
        Some(Stored::Unbound(_)) => TrustState::Changed(vec![
            "it was trusted before sandlink recorded what the trust covers, so it is asked for once more".into(),
        ]),
    })
}

/// Whether the user trusts `workspace` as its file is now (blocking).
pub fn is_trusted(state_dir: &Path, workspace: &Path) -> Result<bool> {
    let current = current_fingerprint(workspace)?;
    Ok(state(state_dir, workspace, &current)? == TrustState::Trusted)
}

/// Confirms trust in `workspace` as `fingerprint` describes its file, or revokes it (`None`), blocking.
pub fn set_trusted(state_dir: &Path, workspace: &Path, fingerprint: Option<&Fingerprint>) -> Result<()> {
    let key = canonical(workspace).to_string_lossy().into_owned();
    let _lock = statefile::Lock::exclusive(&state_dir.join(".trust.lock"))?;
    let mut file = read(state_dir)?;
    match fingerprint {
        Some(fingerprint) => {
            let entry = Entry {
                trusted_at: crate::clock::now_rfc3339(),
                digest: fingerprint.digest.clone(),
                facts: fingerprint.facts.clone(),
            };
            file.trusted.insert(key, Stored::Bound(entry));
        }
        None => {
            file.trusted.remove(&key);
        }
    }
    let bytes = serde_json::to_vec_pretty(&file)
        .map_err(|error| Error::Internal(format!("Could not encode the trust list: {error}")))?;
    statefile::write_atomically(&trust_file(state_dir), &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fingerprint(text: &str) -> Fingerprint {
        Fingerprint::of_text(text).expect("valid TOML")
    }

    #[test]
    fn trust_should_be_remembered_and_revocable() {
        let state_dir = tempfile::tempdir().expect("temp dir");
        let workspace = tempfile::tempdir().expect("temp dir");
        assert!(!is_trusted(state_dir.path(), workspace.path()).expect("read"));
        let current = current_fingerprint(workspace.path()).expect("no file is an empty fingerprint");
        set_trusted(state_dir.path(), workspace.path(), Some(&current)).expect("trust");
        assert!(is_trusted(state_dir.path(), workspace.path()).expect("read"));
        set_trusted(state_dir.path(), workspace.path(), None).expect("revoke");
        assert!(!is_trusted(state_dir.path(), workspace.path()).expect("read"));
    }

    #[test]
    fn fingerprint_should_ignore_comments_order_and_resource_knobs_but_see_destinations() {
        let base = fingerprint("[profiles.cloud]\ndriver = \"e2b\"\napiUrl = \"https://api.e2b.dev\"\ncpus = 2\n");
        let cosmetic = fingerprint("# a comment\n[profiles.cloud]\ncpus = 4\napiUrl = \"https://api.e2b.dev\"\ndriver = \"e2b\"\n");
        assert_eq!(base.digest, cosmetic.digest);
        let moved = fingerprint("[profiles.cloud]\ndriver = \"e2b\"\napiUrl = \"https://collector.example\"\ncpus = 2\n");
        assert_ne!(base.digest, moved.digest);
        assert_eq!(
            moved.changes_since(&base.facts),
            vec!["profiles.cloud.apiUrl changed from \"https://api.e2b.dev\" to \"https://collector.example\"".to_string()]
        );
        let task = fingerprint("[profiles.cloud]\ndriver = \"e2b\"\napiUrl = \"https://api.e2b.dev\"\n[tasks]\nt = \"make\"\n");
        assert_eq!(task.changes_since(&base.facts), vec!["tasks.t was added (\"make\")".to_string()]);
    }

    #[test]
    fn trust_from_the_first_format_should_be_asked_for_again() {
        let state_dir = tempfile::tempdir().expect("temp dir");
        let workspace = tempfile::tempdir().expect("temp dir");
        let key = canonical(workspace.path()).to_string_lossy().into_owned();
        let old = serde_json::json!({ "trusted": { key: "2026-01-01T00:00:00Z" } });
        std::fs::write(state_dir.path().join("trust.json"), old.to_string()).expect("write");
        let current = current_fingerprint(workspace.path()).expect("fingerprint");
        assert!(matches!(state(state_dir.path(), workspace.path(), &current).expect("read"), TrustState::Changed(_)));
    }

    #[test]
    fn loosening_settings_should_each_be_named() {
        let settings = serde_json::json!({ "sync": { "allowSecrets": ["**"], "scanContent": false }, "isolation": "none", "passEnv": ["AWS_SECRET_ACCESS_KEY"] });
        let reasons = loosening_settings(settings.as_object().expect("object"));
        assert_eq!(reasons.len(), 4, "{reasons:?}");
        assert!(reasons[0].contains("sync.allowSecrets") && reasons[3].contains("AWS_SECRET_ACCESS_KEY"), "{reasons:?}");
        assert!(loosening_settings(serde_json::json!({ "sync": { "exclude": ["dist"] } }).as_object().expect("object")).is_empty());
        let local = serde_json::json!({ "readOnlyPaths": ["~/.ssh"], "unixSockets": true });
        let reasons = loosening_settings(local.as_object().expect("object"));
        assert!(reasons.len() == 2 && reasons[0].contains("~/.ssh"), "{reasons:?}");
    }
}
