//! Profiles: named driver configurations in TOML, at user level (`<config dir>/config.toml`) and at workspace
//! level (`.sandlink.toml` at the workspace root, meant to be committed), plus the user's limits.
//!
//! A profile is a table under `[profiles.NAME]` with a `driver` key; every other key is a driver setting:
//!
//! ```toml
//! default = "dev"            # the profile used when a connect names neither profile nor driver
//!
//! [limits]                   # user file only
//! maxSandboxes = 5
//!
//! [sessions]                 # user file only
//! keepOnExit = true          # keep sandboxes when the editor exits, to re-attach after a restart
//!
//! [runs]                     # user file only (see `runs`)
//! logCap = "256MiB"          # the most of a run's output its log file keeps
//!
//! [profiles.dev]
//! driver = "docker"
//! image = "node:20"
//! ```
//!
//! Secrets never live here: a workspace file that holds something that looks like one is refused as a whole, and
//! saving a user profile with one is refused; both errors say where secrets go instead. Files are read and written
//! on blocking threads, writes atomically under a lock (see `statefile`).

pub mod runs;
pub mod secrets;
pub mod trust;

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, IoContext, Result};
use crate::statefile;

/// The workspace-level profile file's name, at the workspace root.
pub const WORKSPACE_FILE: &str = ".sandlink.toml";
/// The user-level file's name, in the config directory.
pub const USER_FILE: &str = "config.toml";
/// The maximum of concurrent sandboxes when the user sets none.
pub const DEFAULT_MAX_SANDBOXES: usize = 10;

/// Which file a profile comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    User,
    Workspace,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::User => "user",
            Source::Workspace => "workspace",
        }
    }
}

/// One named driver configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub name: String,
    pub driver: String,
    pub settings: Map<String, Value>,
    pub source: Source,
    /// The file it was read from, for error messages.
    pub file: PathBuf,
}

/// One parsed profile file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigFile {
    pub default: Option<String>,
    pub profiles: Vec<Profile>,
    pub max_sandboxes: Option<usize>,
    pub keep_on_exit: Option<bool>,
    /// For a workspace file, what trust in it is bound to, taken from the same text as the profiles.
    pub fingerprint: Option<trust::Fingerprint>,
    /// The user's `[prices.DRIVER]` tables over the default price table (user file only; see `crate::cost`).
    pub prices: Option<crate::cost::PriceTable>,
    /// The `[runs]` table (user file only).
    pub runs: runs::RunSettings,
}

/// The user file and, when there is one, the workspace file, as seen together.
#[derive(Debug, Clone, Default)]
pub struct Profiles {
    pub user: ConfigFile,
    pub workspace: Option<ConfigFile>,
    pub workspace_dir: Option<PathBuf>,
}

impl Profiles {
    /// Every profile; a workspace profile hides a user profile of the same name.
    pub fn all(&self) -> Vec<&Profile> {
        let workspace: Vec<&Profile> = self.workspace.iter().flat_map(|file| file.profiles.iter()).collect();
        let user = self.user.profiles.iter().filter(|profile| !workspace.iter().any(|shadow| shadow.name == profile.name));
        workspace.iter().copied().chain(user).collect()
    }

    pub fn get(&self, name: &str) -> Result<&Profile> {
        self.all().into_iter().find(|profile| profile.name == name).ok_or_else(|| Error::UnknownProfile(name.into()))
    }

    /// The default profile's name: the workspace file's, else the user's.
    pub fn default_name(&self) -> Option<&str> {
        self.workspace.as_ref().and_then(|file| file.default.as_deref()).or(self.user.default.as_deref())
    }

    pub fn max_sandboxes(&self) -> usize {
        if let Some(limit) = std::env::var("SANDLINK_MAX_SANDBOXES").ok().and_then(|value| value.parse().ok()) {
            return limit;
        }
        self.user.max_sandboxes.unwrap_or(DEFAULT_MAX_SANDBOXES)
    }

    pub fn keep_on_exit(&self) -> bool {
        self.user.keep_on_exit.unwrap_or(true)
    }

    /// The price table: the defaults with the user's `[prices]` over them.
    pub fn prices(&self) -> crate::cost::PriceTable {
        self.user.prices.clone().unwrap_or_default()
    }

    /// The most of a run's output its log keeps (`[runs] logCap`).
    pub fn log_cap(&self) -> u64 {
        self.user.runs.log_cap.unwrap_or(runs::DEFAULT_LOG_CAP_BYTES)
    }
}

/// The user-level file in `config_dir`.
pub fn user_file(config_dir: &Path) -> PathBuf {
    config_dir.join(USER_FILE)
}

/// Reads the user file and the workspace file (blocking). `credential_keys` are every driver's credential keys,
/// which must never appear in a file.
pub fn load(config_dir: &Path, workspace: Option<&Path>, credential_keys: &[&str]) -> Result<Profiles> {
    let user = read(&user_file(config_dir), Source::User, credential_keys)?.unwrap_or_default();
    let workspace_file = match workspace {
        Some(dir) => read(&dir.join(WORKSPACE_FILE), Source::Workspace, credential_keys)?,
        None => None,
    };
    Ok(Profiles { user, workspace: workspace_file, workspace_dir: workspace.map(Path::to_path_buf) })
}

fn read(path: &Path, source: Source, credential_keys: &[&str]) -> Result<Option<ConfigFile>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(Error::io(format!("Could not read the profile file {}", path.display()), error)),
    };
    parse(&text, path, source, credential_keys).map(Some)
}

/// Parses one file; every error names the file and the key.
pub fn parse(text: &str, path: &Path, source: Source, credential_keys: &[&str]) -> Result<ConfigFile> {
    let shown = path.display();
    let table: toml::Table = text.parse().map_err(|error: toml::de::Error| {
        Error::InvalidProfile(format!("{shown} is not valid TOML: {}", error.message()))
    })?;
    let mut file = ConfigFile::default();
    if source == Source::Workspace {
        file.fingerprint = Some(trust::Fingerprint::of(&table));
    }
    for (key, value) in table {
        match (key.as_str(), source) {
            ("default", _) => {
                let name = value.as_str().ok_or_else(|| {
                    Error::InvalidProfile(format!("\"default\" in {shown} must be the name of a profile (a string)."))
                })?;
                file.default = Some(name.to_string());
            }
            ("profiles", _) => {
                let profiles = value.as_table().ok_or_else(|| {
                    Error::InvalidProfile(format!("\"profiles\" in {shown} must be a table of [profiles.NAME] tables."))
                })?;
                for (name, body) in profiles {
                    file.profiles.push(parse_profile(name, body, path, source, credential_keys)?);
                }
            }
            ("limits", Source::User) => {
                let limits = value
                    .as_table()
                    .ok_or_else(|| Error::InvalidProfile(format!("\"limits\" in {shown} must be a table.")))?;
                for (limit, limit_value) in limits {
                    match limit.as_str() {
                        "maxSandboxes" => {
                            let count = limit_value.as_integer().filter(|count| *count >= 0).ok_or_else(|| {
                                Error::InvalidProfile(format!(
                                    "\"limits.maxSandboxes\" in {shown} must be a whole number of sandboxes."
                                ))
                            })?;
                            file.max_sandboxes = Some(count as usize);
                        }
                        other => {
                            return Err(Error::InvalidProfile(format!(
                                "\"limits.{other}\" in {shown} is not a setting; the limits are: maxSandboxes."
                            )))
                        }
                    }
                }
            }
            ("sessions", Source::User) => {
                let sessions = value
                    .as_table()
                    .ok_or_else(|| Error::InvalidProfile(format!("\"sessions\" in {shown} must be a table.")))?;
                for (option, option_value) in sessions {
                    match option.as_str() {
                        "keepOnExit" => {
                            file.keep_on_exit = Some(option_value.as_bool().ok_or_else(|| {
                                Error::InvalidProfile(format!(
                                    "\"sessions.keepOnExit\" in {shown} must be true or false."
                                ))
                            })?)
                        }
                        other => {
                            return Err(Error::InvalidProfile(format!(
                                "\"sessions.{other}\" in {shown} is not a setting; the session options are: keepOnExit."
                            )))
                        }
                    }
                }
            }
            ("runs", Source::User) => file.runs = runs::parse(&value, path)?,
            ("tasks", _) => {
                // `[tasks]` belongs to `crate::tasks`; here it is only checked for secrets (a token in a curl line).
                if let Some(Value::Object(tasks)) = toml_to_json(&value) {
                    if let Some(finding) = secrets::find("tasks", &tasks, credential_keys) {
                        return Err(Error::InvalidProfile(format!(
                            "\"{}\" in {shown} looks like it holds a secret, and secrets never go into files that are \
                             committed. Read it from an environment variable in the command instead, and keep the \
                             value in your environment or the OS keychain.",
                            finding.key_path
                        )));
                    }
                }
            }
            ("prices", Source::User) => {
                let prices = toml_to_json(&value).unwrap_or(Value::Null);
                file.prices = Some(crate::cost::PriceTable::from_config(&prices, &shown.to_string())?);
            }
            ("limits" | "sessions" | "prices" | "runs", Source::Workspace) => {
                return Err(Error::InvalidProfile(format!(
                    "\"{key}\" in {shown} is a user setting; a workspace file cannot change it. Put it in {} \
                     instead.",
                    user_file(&crate::paths::config_dir()).display()
                )))
            }
            (other, _) => {
                return Err(Error::InvalidProfile(format!(
                    "\"{other}\" in {shown} is not a known key; the file holds \"default\", [profiles.NAME] tables{}.",
                    if source == Source::User { ", [limits], [sessions], [prices] and [runs]" } else { "" }
                )))
            }
        }
    }
    if let Some(default) = &file.default {
        if source == Source::Workspace && !file.profiles.iter().any(|profile| &profile.name == default) {
            return Err(Error::InvalidProfile(format!(
                "\"default\" in {shown} names the profile \"{default}\", which the file does not define."
            )));
        }
    }
    Ok(file)
}

fn parse_profile(
    name: &str,
    body: &toml::Value,
    path: &Path,
    source: Source,
    credential_keys: &[&str],
) -> Result<Profile> {
    let shown = path.display();
    crate::credentials::check_name("profile name", name)
        .map_err(|error| Error::InvalidProfile(format!("In {shown}: {error}")))?;
    let table = body.as_table().ok_or_else(|| {
        Error::InvalidProfile(format!("\"profiles.{name}\" in {shown} must be a table with a \"driver\" key."))
    })?;
    let driver = match table.get("driver") {
        Some(toml::Value::String(driver)) => driver.clone(),
        Some(_) => {
            return Err(Error::InvalidProfile(format!(
                "\"profiles.{name}.driver\" in {shown} must be a driver id (a string such as \"docker\")."
            )))
        }
        None => {
            return Err(Error::InvalidProfile(format!(
                "\"profiles.{name}\" in {shown} has no \"driver\" key; add one, e.g. driver = \"docker\"."
            )))
        }
    };
    let mut settings = Map::new();
    for (key, value) in table.iter().filter(|(key, _)| key.as_str() != "driver") {
        let value = toml_to_json(value).ok_or_else(|| {
            Error::InvalidProfile(format!(
                "\"profiles.{name}.{key}\" in {shown} is a date or time, which no driver setting takes; quote it."
            ))
        })?;
        settings.insert(key.clone(), value);
    }
    if source == Source::Workspace {
        refuse_secrets(name, &settings, credential_keys, &format!("{shown}, which is meant to be committed"))?;
    }
    Ok(Profile { name: name.to_string(), driver, settings, source, file: path.to_path_buf() })
}

/// Refuses settings that hold a secret, saying where secrets go instead. `place` says where they were found.
pub fn refuse_secrets(name: &str, settings: &Map<String, Value>, credential_keys: &[&str], place: &str) -> Result<()> {
    let Some(finding) = secrets::find(&format!("profiles.{name}"), settings, credential_keys) else {
        return Ok(());
    };
    let key = finding.key_path.rsplit('.').next().unwrap_or(&finding.key_path).to_string();
    Err(Error::InvalidProfile(format!(
        "\"{}\" in {place} looks like a secret, and secrets never go into profile files. Remove it and store it in \
         the OS keychain with `sandlink profile set-credential {name} {key}` (or your editor's \"Sandlink: Set Credential\" command), or give \
         it through the provider's environment variable (for example E2B_API_KEY) in CI.",
        finding.key_path
    )))
}

fn toml_to_json(value: &toml::Value) -> Option<Value> {
    Some(match value {
        toml::Value::String(text) => Value::String(text.clone()),
        toml::Value::Integer(number) => Value::from(*number),
        toml::Value::Float(number) => serde_json::Number::from_f64(*number).map(Value::Number)?,
        toml::Value::Boolean(flag) => Value::Bool(*flag),
        toml::Value::Datetime(_) => return None,
        toml::Value::Array(items) => Value::Array(items.iter().map(toml_to_json).collect::<Option<_>>()?),
        toml::Value::Table(table) => Value::Object(
            table.iter().map(|(key, item)| Some((key.clone(), toml_to_json(item)?))).collect::<Option<_>>()?,
        ),
    })
}

fn json_to_toml(key_path: &str, value: &Value) -> Result<toml::Value> {
    Ok(match value {
        Value::Null => {
            return Err(Error::InvalidProfile(format!(
                "The setting \"{key_path}\" is null; TOML has no null, so leave the setting out instead."
            )))
        }
        Value::Bool(flag) => toml::Value::Boolean(*flag),
        Value::Number(number) => match number.as_i64() {
            Some(integer) => toml::Value::Integer(integer),
            None => toml::Value::Float(number.as_f64().unwrap_or_default()),
        },
        Value::String(text) => toml::Value::String(text.clone()),
        Value::Array(items) => toml::Value::Array(
            items.iter().enumerate().map(|(index, item)| json_to_toml(&format!("{key_path}[{index}]"), item)).collect::<Result<_>>()?,
        ),
        Value::Object(map) => toml::Value::Table(
            map.iter()
                .map(|(key, item)| Ok((key.clone(), json_to_toml(&format!("{key_path}.{key}"), item)?)))
                .collect::<Result<_>>()?,
        ),
    })
}

/// Changes the user file under its lock (blocking): reads it, applies `change`, writes it atomically.
pub fn update_user_file(config_dir: &Path, change: impl FnOnce(&mut toml::Table) -> Result<()>) -> Result<()> {
    let path = user_file(config_dir);
    let _lock = statefile::Lock::exclusive(&config_dir.join(".config.lock"))?;
    let mut table: toml::Table = match std::fs::read_to_string(&path) {
        Ok(text) => text.parse().map_err(|error: toml::de::Error| {
            Error::InvalidProfile(format!(
                "{} is not valid TOML ({}); fix it by hand before saving profiles.",
                path.display(),
                error.message()
            ))
        })?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => toml::Table::new(),
        Err(error) => return Err(Error::io(format!("Could not read {}", path.display()), error)),
    };
    change(&mut table)?;
    let text = toml::to_string_pretty(&table)
        .map_err(|error| Error::Internal(format!("Could not write the profiles as TOML: {error}")))?;
    statefile::write_atomically(&path, text.as_bytes())
}

/// Creates or replaces a user profile (blocking); with `make_default` it becomes the default.
pub fn save_user_profile(
    config_dir: &Path,
    name: &str,
    driver: &str,
    settings: &Map<String, Value>,
    make_default: bool,
) -> Result<()> {
    let mut body = toml::Table::new();
    body.insert("driver".into(), toml::Value::String(driver.to_string()));
    for (key, value) in settings {
        if key == "driver" {
            return Err(Error::InvalidProfile(
                "\"driver\" is the profile's driver, not a setting; pass it as the driver field.".into(),
            ));
        }
        body.insert(key.clone(), json_to_toml(key, value)?);
    }
    update_user_file(config_dir, |table| {
        let profiles = table
            .entry("profiles")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| Error::InvalidProfile("\"profiles\" in the user file is not a table; fix it by hand.".into()))?;
        profiles.insert(name.to_string(), toml::Value::Table(body));
        if make_default {
            table.insert("default".into(), toml::Value::String(name.to_string()));
        }
        Ok(())
    })
}

/// Deletes a user profile (blocking); answers whether it existed. A default pointing at it is cleared.
pub fn delete_user_profile(config_dir: &Path, name: &str) -> Result<bool> {
    let mut existed = false;
    update_user_file(config_dir, |table| {
        if let Some(profiles) = table.get_mut("profiles").and_then(toml::Value::as_table_mut) {
            existed = profiles.remove(name).is_some();
        }
        if table.get("default").and_then(toml::Value::as_str) == Some(name) {
            table.remove("default");
        }
        Ok(())
    })?;
    Ok(existed)
}

/// Makes sure the config directory exists, for first saves.
pub fn ensure_config_dir(config_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(config_dir).context(|| format!("Could not create {}", config_dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_workspace(text: &str) -> Result<ConfigFile> {
        parse(text, Path::new("/ws/.sandlink.toml"), Source::Workspace, &["apiKey"])
    }

    #[test]
    fn parse_should_read_profiles_and_their_settings() {
        let file = parse_workspace(
            "default = \"ci\"\n[profiles.ci]\ndriver = \"docker\"\nimage = \"node:20\"\ncpus = 2\n[profiles.ci.sync]\nexclude = [\"dist\"]\n",
        )
        .expect("valid");
        assert_eq!(file.default.as_deref(), Some("ci"));
        let profile = &file.profiles[0];
        assert_eq!((profile.name.as_str(), profile.driver.as_str()), ("ci", "docker"));
        assert_eq!(profile.settings["cpus"], Value::from(2));
        assert_eq!(profile.settings["sync"]["exclude"][0], Value::from("dist"));
    }

    #[test]
    fn parse_should_refuse_a_secret_in_a_workspace_file_and_say_where_it_goes() {
        let error = parse_workspace("[profiles.cloud]\ndriver = \"e2b\"\napiKey = \"e2b_abcdef0123456789\"\n").unwrap_err();
        let message = error.to_string();
        assert!(message.contains("profiles.cloud.apiKey"), "{message}");
        assert!(message.contains("keychain") && message.contains("set-credential"), "{message}");
        assert!(!message.contains("e2b_abcdef"), "{message}");
    }

    #[test]
    fn parse_should_leave_tasks_to_the_tasks_module_but_refuse_secrets_in_them() {
        let file = parse_workspace("[tasks]\ntest = \"npm test\"\n[profiles.a]\ndriver = \"local\"\n").expect("valid");
        assert_eq!(file.profiles.len(), 1);
        let error = parse_workspace("[tasks]\ndeploy = \"curl -H x ghp_0123456789abcdefghijklmn\"\n").unwrap_err();
        assert!(error.to_string().contains("tasks.deploy"), "{error}");
    }

    #[test]
    fn parse_should_name_the_missing_driver_and_user_only_sections() {
        assert!(parse_workspace("[profiles.x]\nimage = \"a\"\n").unwrap_err().to_string().contains("no \"driver\""));
        assert!(parse_workspace("[limits]\nmaxSandboxes = 99\n").unwrap_err().to_string().contains("user setting"));
    }

    #[test]
    fn user_profiles_should_round_trip_through_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let settings = serde_json::json!({"image": "alpine", "cpus": 2}).as_object().cloned().expect("object");
        save_user_profile(dir.path(), "dev", "docker", &settings, true).expect("save");
        let profiles = load(dir.path(), None, &[]).expect("load");
        assert_eq!(profiles.default_name(), Some("dev"));
        assert_eq!(profiles.get("dev").expect("saved").settings, settings);
        assert!(delete_user_profile(dir.path(), "dev").expect("delete"));
        let profiles = load(dir.path(), None, &[]).expect("load");
        assert!(profiles.get("dev").is_err() && profiles.default_name().is_none());
    }
}
