//! The engine's profile, credential and trust operations, and the connect plan built from them: which driver,
//! which settings (validated), which credentials, and whether the workspace may be sent there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value};

use super::Engine;
use crate::credentials::{self, keychain, CredentialSpec, Secret};
use crate::drivers::Driver;
use crate::error::{Error, Result};
use crate::profiles::trust::{self, TrustState};
use crate::profiles::{self, Profile, Profiles, Source};
use crate::protocol::{ProfileEntry, ProfilesResult, SaveProfileParams};
use crate::statefile;

/// What a connect will do, resolved from the profile, the request and the credential sources.
pub struct Plan {
    pub driver: Arc<dyn Driver>,
    pub profile: Option<String>,
    pub settings: Map<String, Value>,
    pub credentials: BTreeMap<String, Secret>,
}

/// Where a connect's driver and settings come from.
pub struct PlanInput<'a> {
    pub profile: Option<String>,
    pub driver: Option<String>,
    pub settings: Option<Map<String, Value>>,
    pub workspace: Option<&'a Path>,
}

impl Engine {
    /// Every credential key any driver reads: none of them may appear in a profile file.
    fn credential_key_names(&self) -> Vec<&'static str> {
        self.drivers.iter().flat_map(|driver| driver.credential_keys().iter().map(|spec| spec.key)).collect()
    }

    /// Reads the user file and the workspace's `.sandlink.toml` (off the runtime).
    pub async fn load_profiles(&self, workspace: Option<&Path>) -> Result<Profiles> {
        let config_dir = self.config_dir.clone();
        let workspace = workspace.map(Path::to_path_buf);
        let keys = self.credential_key_names();
        statefile::blocking(move || profiles::load(&config_dir, workspace.as_deref(), &keys)).await
    }

    /// The driver a profile names, or an `invalidProfile` error that says which drivers exist.
    fn driver_for_profile(&self, profile: &Profile) -> Result<Arc<dyn Driver>> {
        self.driver(&profile.driver).map_err(|_| {
            let known: Vec<&str> = self.drivers.iter().map(|driver| driver.id()).collect();
            Error::InvalidProfile(format!(
                "Profile \"{}\" (in {}) names the driver \"{}\", which this sandlink does not know. The drivers are: {}.",
                profile.name,
                profile.file.display(),
                profile.driver,
                known.join(", ")
            ))
        })
    }

    /// Resolves a connect: profile (named, or the default when neither profile nor driver is given), merged and
    /// validated settings, the trust gate for workspace profiles, and credentials.
    pub async fn plan(&self, input: PlanInput<'_>) -> Result<Plan> {
        let wants_profile = input.profile.is_some() || input.driver.is_none();
        let loaded = if wants_profile { Some(self.load_profiles(input.workspace).await?) } else { None };
        // A driver's name works where a profile is expected (`:Sandlink connect local`), unless a profile has it.
        let mut driver_named_as_profile = None;
        let profile = match (&input.profile, &loaded) {
            (Some(name), Some(profiles)) => match profiles.get(name) {
                Ok(profile) => Some(profile.clone()),
                Err(_) if input.driver.is_none() && self.driver(name).is_ok() => {
                    driver_named_as_profile = Some(name.clone());
                    None
                }
                Err(error) => return Err(error),
            },
            (None, Some(profiles)) => match profiles.default_name() {
                Some(name) => Some(profiles.get(name).map_err(|_| {
                    Error::InvalidProfile(format!(
                        "The default profile \"{name}\" does not exist; save it or change \"default\" in the profile file."
                    ))
                })?
                .clone()),
                None => None,
            },
            _ => None,
        };
        let Some(profile) = profile else {
            let driver_id = input.driver.clone().or(driver_named_as_profile).unwrap_or_else(|| "local".to_string());
            let driver = self.driver(&driver_id)?;
            let settings = input.settings.unwrap_or_default();
            profiles::refuse_secrets(driver_id.as_str(), &settings, &self.credential_key_names(), "the connect settings")
                .map_err(|error| Error::InvalidParams(error.to_string()))?;
            driver.validate_settings(&settings).map_err(|error| Error::InvalidParams(error.to_string()))?;
            let credentials = credentials::resolve(driver.id(), None, driver.credential_keys()).await?;
            return Ok(Plan { driver, profile: None, settings, credentials });
        };
        if let Some(driver_id) = &input.driver {
            if driver_id != &profile.driver {
                return Err(Error::InvalidParams(format!(
                    "Profile \"{}\" uses the {} driver, but the request asks for {driver_id}; give one or the other.",
                    profile.name, profile.driver
                )));
            }
        }
        let driver = self.driver_for_profile(&profile)?;
        let mut settings = profile.settings.clone();
        settings.extend(input.settings.unwrap_or_default());
        let place = format!("profile \"{}\" ({})", profile.name, profile.file.display());
        profiles::refuse_secrets(&profile.name, &settings, &self.credential_key_names(), &place)?;
        driver
            .validate_settings(&settings)
            .map_err(|error| Error::InvalidProfile(format!("Profile \"{}\": {error}", profile.name)))?;
        if profile.source == Source::Workspace {
            let reasons = trust_reasons(driver.as_ref(), &profile);
            if !reasons.is_empty() {
                self.require_trust(&profile, &reasons, loaded.as_ref()).await?;
            }
        }
        let credentials = credentials::resolve(driver.id(), Some(&profile.name), driver.credential_keys()).await?;
        Ok(Plan { driver, profile: Some(profile.name), settings, credentials })
    }

    /// Refuses a workspace profile that needs trust (`reasons` say why, in words) unless the user trusts the
    /// workspace as its file is now; the error names where code would go, which credentials, and what changed.
    async fn require_trust(&self, profile: &Profile, reasons: &[String], loaded: Option<&Profiles>) -> Result<()> {
        let workspace = loaded
            .and_then(|profiles| profiles.workspace_dir.clone())
            .unwrap_or_else(|| profile.file.parent().map(Path::to_path_buf).unwrap_or_default());
        // The fingerprint of the very text the profile was read from, so trust and profile cannot drift apart.
        let fingerprint = loaded.and_then(|profiles| profiles.workspace.as_ref()).and_then(|file| file.fingerprint.clone());
        let state_dir = self.state_dir.clone();
        let checked = workspace.clone();
        let (state, fingerprint) = statefile::blocking(move || {
            let fingerprint = match fingerprint {
                Some(fingerprint) => fingerprint,
                None => trust::current_fingerprint(&checked)?,
            };
            Ok((trust::state(&state_dir, &checked, &fingerprint)?, fingerprint))
        })
        .await?;
        let what = format!("Profile \"{}\" (in {}) {}", profile.name, profile.file.display(), reasons.join("; it also "));
        match untrusted_error(state, &workspace, &what, &fingerprint) {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// The workspace's tasks for menus, with whether the workspace is trusted as its file is now; an unreadable file
    /// is an `error` sentence rather than a failed request, so a menu can still offer free-form commands.
    pub async fn tasks(&self, workspace: Option<PathBuf>) -> Result<crate::protocol::TasksResult> {
        let Some(workspace) = workspace else { return Ok(crate::protocol::TasksResult::default()) };
        let state_dir = self.state_dir.clone();
        let outcome = statefile::blocking(move || {
            let (tasks, fingerprint) = crate::tasks::load_with_fingerprint(&workspace)?;
            let trusted = matches!(trust::state(&state_dir, &workspace, &fingerprint)?, TrustState::Trusted);
            Ok((tasks, trusted))
        })
        .await;
        Ok(match outcome {
            Ok((tasks, trusted)) => crate::protocol::TasksResult {
                tasks: tasks
                    .into_iter()
                    .map(|task| crate::protocol::TaskEntry {
                        title: format!(
                            "{} ({})",
                            crate::tasks::shown_command(&task.name),
                            crate::tasks::shown_command(&task.command)
                        ),
                        name: task.name,
                        command: task.command,
                    })
                    .collect(),
                trusted,
                error: None,
            },
            Err(error) => crate::protocol::TasksResult { error: Some(error.to_string()), ..Default::default() },
        })
    }

    /// The command line of a workspace task, for a run that names it: read from the file now, and refused unless the
    /// user trusts the workspace as that file is.
    pub async fn task_command(&self, workspace: Option<&Path>, name: &str) -> Result<String> {
        let workspace = workspace.map(Path::to_path_buf).ok_or_else(|| {
            Error::InvalidParams(format!("Task \"{name}\" cannot run: this session has no workspace folder to read tasks from."))
        })?;
        let state_dir = self.state_dir.clone();
        let read_from = workspace.clone();
        let (tasks, state, fingerprint) = statefile::blocking(move || {
            let (tasks, fingerprint) = crate::tasks::load_with_fingerprint(&read_from)?;
            Ok((tasks, trust::state(&state_dir, &read_from, &fingerprint)?, fingerprint))
        })
        .await?;
        let Some(task) = tasks.into_iter().find(|task| task.name == name) else {
            return Err(Error::InvalidParams(format!(
                "There is no task \"{name}\" in {}; the tasks are the [tasks] table of that file.",
                workspace.join(crate::tasks::WORKSPACE_FILE).display()
            )));
        };
        let what = format!(
            "Task \"{}\" comes from {}, a file in the workspace, and would run `{}`",
            crate::tasks::shown_command(&task.name),
            workspace.join(crate::tasks::WORKSPACE_FILE).display(),
            crate::tasks::shown_command(&task.command)
        );
        match untrusted_error(state, &workspace, &what, &fingerprint) {
            Some(error) => Err(error),
            None => Ok(task.command),
        }
    }

    /// What trusting a workspace lets its `.sandlink.toml` do, one line each: where each profile sends code and
    /// with which credentials (by name), what it loosens, and each task's command. Empty when it asks for nothing.
    /// Also the fingerprint of the file these lines were read from, so the trust given after showing them can be
    /// bound to it (`trust_workspace` with `Some(fingerprint)`) rather than to whatever the file holds by then.
    pub async fn trust_summary(&self, workspace: &Path) -> Result<(Vec<String>, String)> {
        let loaded = self.load_profiles(Some(workspace)).await?;
        let mut lines = Vec::new();
        for profile in loaded.all().into_iter().filter(|profile| profile.source == Source::Workspace) {
            let Ok(driver) = self.driver_for_profile(profile) else { continue };
            let reasons = trust_reasons(driver.as_ref(), profile);
            if !reasons.is_empty() {
                lines.push(format!("profile \"{}\" {}", profile.name, reasons.join("; it also ")));
            }
        }
        let read_from = workspace.to_path_buf();
        let (tasks, tasks_fingerprint) = statefile::blocking(move || crate::tasks::load_with_fingerprint(&read_from)).await?;
        // Profiles and tasks are two reads of the file; a summary made of two versions of it would describe neither.
        let profiles_fingerprint = loaded.workspace.as_ref().and_then(|file| file.fingerprint.as_ref());
        if profiles_fingerprint.is_some_and(|fingerprint| fingerprint.digest != tasks_fingerprint.digest) {
            return Err(Error::WorkspaceNotTrusted {
                message: format!(
                    "{} changed while sandlink was reading it; nothing was trusted. Try again once it is saved.",
                    workspace.join(crate::tasks::WORKSPACE_FILE).display()
                ),
                fingerprint: Some(tasks_fingerprint.digest),
            });
        }
        for task in tasks {
            lines.push(format!(
                "task \"{}\" runs `{}`",
                crate::tasks::shown_command(&task.name),
                crate::tasks::shown_command(&task.command)
            ));
        }
        Ok((lines, tasks_fingerprint.digest))
    }

    /// Records the key an SSH host presents in the user's known_hosts, only when its fingerprint is the one the user
    /// checked (`hostKeyUnknown`/`hostKeyChanged` name it).
    pub async fn accept_host_key(
        &self,
        host: &str,
        fingerprint: &str,
        config_file: Option<&str>,
    ) -> Result<crate::protocol::AcceptHostKeyResult> {
        let written = crate::drivers::ssh::accept_host_key(host, fingerprint, config_file).await?;
        Ok(crate::protocol::AcceptHostKeyResult { known_hosts: written.to_string_lossy().into_owned() })
    }

    /// Confirms or revokes trust in a workspace. With `shown_fingerprint` (the digest of the file as the user was
    /// shown it, from a `workspaceNotTrusted` error or `trust_summary`), trust is given only if the file is still that
    /// file: an edit between the question and the answer must not be trusted unseen.
    pub async fn trust_workspace(&self, workspace: PathBuf, trust: bool, shown_fingerprint: Option<String>) -> Result<()> {
        if !workspace.is_dir() {
            return Err(Error::InvalidParams(format!(
                "The workspace folder {} does not exist or is not a directory.",
                workspace.display()
            )));
        }
        let state_dir = self.state_dir.clone();
        let changed_workspace = workspace.clone();
        statefile::blocking(move || {
            if !trust {
                // Taking trust back is always safe, whatever the file holds now.
                return trust::set_trusted(&state_dir, &workspace, None);
            }
            // Trust covers the file as it is now; any later change to what it sends where asks again.
            let current = trust::current_fingerprint(&workspace)?;
            if let Some(shown) = shown_fingerprint.filter(|shown| *shown != current.digest) {
                tracing::info!(workspace = %workspace.display(), %shown, current = %current.digest, "trust refused: the file changed since it was shown");
                return Err(Error::WorkspaceNotTrusted {
                    message: format!(
                        "{} changed since it was shown to you, so nothing was trusted: what you confirmed is not what \
                         the file says now. Run the task (or connect) again to see what it asks for now.",
                        workspace.join(crate::tasks::WORKSPACE_FILE).display()
                    ),
                    fingerprint: Some(current.digest),
                });
            }
            trust::set_trusted(&state_dir, &workspace, Some(&current))
        })
        .await?;
        tracing::info!(workspace = %changed_workspace.display(), trust, "workspace trust changed");
        Ok(())
    }

    /// Every profile with whether its credentials are at hand; a refused workspace file is reported, not fatal.
    pub async fn profiles(&self, workspace: Option<PathBuf>) -> Result<ProfilesResult> {
        let (loaded, workspace_error) = match self.load_profiles(workspace.as_deref()).await {
            Ok(loaded) => (loaded, None),
            Err(error) => (self.load_profiles(None).await?, Some(error.to_string())),
        };
        let trusted = match &workspace {
            Some(dir) if workspace_error.is_none() && loaded.workspace.is_some() => {
                let state_dir = self.state_dir.clone();
                let dir = dir.clone();
                statefile::blocking(move || profiles::trust::is_trusted(&state_dir, &dir)).await?
            }
            _ => false,
        };
        let default = loaded.default_name().map(str::to_string);
        let mut entries = Vec::new();
        for profile in loaded.all() {
            let driver = self.driver(&profile.driver).ok();
            let specs: &[CredentialSpec] = driver.as_ref().map(|driver| driver.credential_keys()).unwrap_or(&[]);
            let mut available = Vec::new();
            let mut missing = Vec::new();
            for spec in specs {
                let present = credentials::from_environment(spec).is_some()
                    || matches!(keychain::get(&profile.name, spec.key).await, Ok(Some(_)));
                if present {
                    available.push(spec.key);
                } else if spec.required {
                    missing.push(spec.key.to_string());
                }
            }
            let asks_trust = driver.as_ref().is_some_and(|driver| !trust_reasons(driver.as_ref(), profile).is_empty());
            entries.push(ProfileEntry {
                name: profile.name.clone(),
                driver: profile.driver.clone(),
                settings: profile.settings.clone(),
                default: default.as_deref() == Some(profile.name.as_str()),
                has_credentials: !available.is_empty(),
                source: profile.source.as_str().into(),
                missing_credentials: missing,
                needs_trust: profile.source == Source::Workspace && asks_trust && !trusted,
            });
        }
        Ok(ProfilesResult { profiles: entries, workspace_error })
    }

    /// Creates or replaces a user profile after checking its name, driver, settings and that it holds no secret.
    pub async fn save_profile(&self, params: SaveProfileParams) -> Result<()> {
        credentials::check_name("profile name", &params.name)?;
        let driver = self.driver(&params.driver).map_err(|error| Error::InvalidProfile(error.to_string()))?;
        let settings = params.settings.unwrap_or_default();
        // Secrets first: a key pasted into the settings deserves "use the keychain", not "unknown setting".
        let place = format!("the settings of profile \"{}\"", params.name);
        profiles::refuse_secrets(&params.name, &settings, &self.credential_key_names(), &place)?;
        driver
            .validate_settings(&settings)
            .map_err(|error| Error::InvalidProfile(format!("Profile \"{}\": {error}", params.name)))?;
        let config_dir = self.config_dir.clone();
        let (name, driver_id, make_default) = (params.name, params.driver, params.default);
        statefile::blocking(move || {
            profiles::ensure_config_dir(&config_dir)?;
            profiles::save_user_profile(&config_dir, &name, &driver_id, &settings, make_default)
        })
        .await
    }

    /// Deletes a user profile and its keychain entries.
    pub async fn delete_profile(&self, name: &str, workspace: Option<PathBuf>) -> Result<()> {
        let loaded = self.load_profiles(workspace.as_deref()).await.or(self.load_profiles(None).await)?;
        let Some(profile) = loaded.user.profiles.iter().find(|profile| profile.name == name).cloned() else {
            if let Some(shadow) = loaded.all().into_iter().find(|profile| profile.name == name) {
                return Err(Error::InvalidParams(format!(
                    "Profile \"{name}\" is defined in {}, the workspace's own file; edit or remove it there.",
                    shadow.file.display()
                )));
            }
            return Err(Error::UnknownProfile(name.to_string()));
        };
        let config_dir = self.config_dir.clone();
        let deleted_name = name.to_string();
        statefile::blocking(move || profiles::delete_user_profile(&config_dir, &deleted_name)).await?;
        if let Ok(driver) = self.driver(&profile.driver) {
            // Any profile may also hold the agent tasks' GitHub token.
            for spec in driver.credential_keys().iter().chain([&credentials::GITHUB_TOKEN]) {
                if let Err(error) = keychain::delete(name, spec.key).await {
                    tracing::warn!(profile = name, key = spec.key, %error, "could not delete a stored credential");
                }
            }
        }
        Ok(())
    }

    /// The profile and credential spec a `setCredential`/`deleteCredential` names, or an error saying what exists.
    async fn credential_target(&self, profile: &str, key: &str, workspace: Option<&Path>) -> Result<CredentialSpec> {
        credentials::check_name("profile name", profile)?;
        credentials::check_name("credential key", key)?;
        let loaded = match self.load_profiles(workspace).await {
            Ok(loaded) => loaded,
            Err(_) => self.load_profiles(None).await?,
        };
        let found = loaded.get(profile)?.clone();
        if key == credentials::GITHUB_TOKEN.key {
            return Ok(credentials::GITHUB_TOKEN);
        }
        let driver = self.driver_for_profile(&found)?;
        let specs = driver.credential_keys();
        specs.iter().find(|spec| spec.key == key).copied().ok_or_else(|| {
            if specs.is_empty() {
                Error::InvalidParams(format!("The {} driver of profile \"{profile}\" uses no credentials.", driver.id()))
            } else {
                let keys: Vec<&str> = specs.iter().map(|spec| spec.key).collect();
                Error::InvalidParams(format!(
                    "The {} driver has no credential \"{key}\"; its credentials are: {}.",
                    driver.id(),
                    keys.join(", ")
                ))
            }
        })
    }

    /// Stores a credential in the OS keychain.
    pub async fn set_credential(&self, profile: &str, key: &str, value: Secret, workspace: Option<&Path>) -> Result<()> {
        let spec = self.credential_target(profile, key, workspace).await?;
        if value.expose().is_empty() {
            return Err(Error::InvalidParams(format!("The value for \"{key}\" is empty; give the credential itself.")));
        }
        keychain::set(profile, key, value).await.map_err(|unavailable| {
            Error::KeychainUnavailable(format!(
                "Could not store \"{key}\" for profile \"{profile}\": {unavailable}. Nothing was written anywhere else. \
                 Give the credential through the environment variable {} instead (sandlink reads it before the \
                 keychain), or start a keychain (gnome-keyring, KeePassXC) in your desktop session.",
                spec.env_var
            ))
        })?;
        tracing::info!(profile, key, "credential stored in the keychain");
        Ok(())
    }

    /// Removes a credential from the OS keychain; removing one that is not there is not an error.
    pub async fn delete_credential(&self, profile: &str, key: &str, workspace: Option<&Path>) -> Result<()> {
        let spec = self.credential_target(profile, key, workspace).await?;
        let removed = keychain::delete(profile, key).await.map_err(|unavailable| {
            Error::KeychainUnavailable(format!(
                "Could not delete \"{key}\" for profile \"{profile}\": {unavailable}. If you gave it through the \
                 environment, unset {} instead.",
                spec.env_var
            ))
        })?;
        tracing::info!(profile, key, removed, "credential deleted from the keychain");
        Ok(())
    }
}

/// Setting keys that name where a driver sends the workspace, shown when asking for trust.
const DESTINATION_KEYS: &[&str] = &["apiUrl", "domain", "host", "hostname", "endpoint", "url", "image", "template", "container"];

/// Why a workspace profile needs the user's trust, in words: where its driver sends the workspace (and with which
/// of the user's credentials, by name), and each setting that loosens the sandbox. Empty when it needs none.
pub fn trust_reasons(driver: &dyn Driver, profile: &Profile) -> Vec<String> {
    let mut reasons = Vec::new();
    if driver.sends_workspace_elsewhere(&profile.settings) {
        reasons.push(destination(driver, &profile.settings));
    }
    reasons.extend(trust::loosening_settings(&profile.settings));
    reasons
}

/// "would send the workspace to X (apiUrl) with your E2B_API_KEY (the e2b driver)".
fn destination(driver: &dyn Driver, settings: &Map<String, Value>) -> String {
    let mut places: Vec<String> = DESTINATION_KEYS
        .iter()
        .filter_map(|key| settings.get(*key).and_then(Value::as_str).map(|value| format!("{value} ({key})")))
        .collect();
    if let Some(host) = std::env::var("DOCKER_HOST").ok().filter(|host| !host.is_empty() && driver.id() == "docker") {
        places.push(format!("{host} (DOCKER_HOST)"));
    }
    let place = if places.is_empty() { "the driver's default service".to_string() } else { places.join(", ") };
    let credentials: Vec<&str> = driver.credential_keys().iter().map(|spec| spec.env_var).collect();
    let with = if credentials.is_empty() {
        String::new()
    } else {
        format!(" with your {}", credentials.join(" and "))
    };
    format!("would send the workspace to {place}{with} (the {} driver)", driver.id())
}

/// The error for a workspace that is not trusted as its file is now, or `None` when it is. `what` says what the
/// workspace asks to do, as a sentence without its full stop; `fingerprint` is the file it was judged by, carried in
/// the error so a client's "Trust workspace" answer can be bound to what the message showed.
fn untrusted_error(state: TrustState, workspace: &Path, what: &str, fingerprint: &trust::Fingerprint) -> Option<Error> {
    let confirm = format!(
        "Confirm it with your editor's \"Trust workspace\" command or `sandlink trust {}`, then try again. `sandlink trust --revoke` undoes it.",
        workspace.display()
    );
    let message = match state {
        TrustState::Trusted => return None,
        TrustState::NotTrusted => format!("{what}. A workspace is not trusted by default. {confirm}"),
        TrustState::Changed(changes) => format!(
            "The workspace's {} changed since you trusted it: {}. It is not trusted again until you confirm it. \
             {what}. {confirm}",
            crate::tasks::WORKSPACE_FILE,
            changes.join("; ")
        ),
    };
    Some(Error::WorkspaceNotTrusted { message, fingerprint: Some(fingerprint.digest.clone()) })
}
