//! Wiring sessions to sync: each session's sync engine, syncs asked for or triggered by saves, and the sync state
//! forwarded to the front door.

use std::sync::Arc;

use async_trait::async_trait;

use crate::locks::lock;
use super::{Engine, Events, Session};
use crate::error::{Error, Result};
use super::jobs::JobProgress;
use crate::progress::Progress;
use crate::protocol::{
    AllowSecretParams, ConflictSide, JobKind, ResolveParams, SaveProfileParams, SessionState, SyncDirection, SyncParams, SyncResult, SyncState, SyncStateParams,
};
use crate::sync::{SessionSync, StateObserver, SyncOptions};

impl Engine {
    /// Synchronises a session's workspace; the result says what moved.
    pub async fn sync(&self, params: SyncParams, progress: &dyn Progress) -> Result<SyncResult> {
        let session = self.session(&params.session_id)?;
        session.touch();
        let title = match params.direction {
            SyncDirection::Up => "Syncing up",
            SyncDirection::Down => "Syncing down",
            SyncDirection::Both => "Syncing both ways",
        };
        let job = self.jobs.start(JobKind::Sync, title, Some(&session.id), true);
        let progress = JobProgress { job: &job, inner: progress };
        self.sync_session(&session, params.direction, params.paths, &progress).await
    }

    /// Settles the conflict on one path: the chosen side's version goes to the other side (an explicit sync of that
    /// path in that direction), so both hold it and the conflict is gone. A path that is not in conflict is refused,
    /// so a stale click cannot overwrite a file that changed since the conflict was shown.
    pub async fn resolve(&self, params: ResolveParams, progress: &dyn Progress) -> Result<SyncResult> {
        let session = self.session(&params.session_id)?;
        let Some(sync) = session.sync.get() else {
            return Err(Error::Unsupported("This session syncs no files, so it has no conflicts to resolve.".into()));
        };
        let wanted = conflict_path(session.workspace.as_deref(), &params.path)?;
        let conflicts = sync.state().conflicts;
        let listed: Vec<&str> = conflicts.iter().map(|conflict| conflict.path.as_str()).collect();
        require_listed(&wanted, &listed, "in conflict", "this session has no sync conflicts now", "the conflicts now are")?;
        let direction = match params.keep {
            ConflictSide::Workspace => SyncDirection::Up,
            ConflictSide::Sandbox => SyncDirection::Down,
        };
        session.touch();
        let job = self.jobs.start(JobKind::Sync, "Resolving a conflict", Some(&session.id), true);
        let progress = JobProgress { job: &job, inner: progress };
        self.sync_session(&session, direction, Some(vec![wanted]), &progress).await
    }

    /// Uploads one file that sync held back as a likely secret, because the user looked at it and chose to: it is
    /// allowed for the rest of the session (by its exact path) and, with `remember`, in the session's profile
    /// (`sync.allowSecrets` in config.toml). A path that is not held back now is refused, naming those that are.
    pub async fn allow_secret(&self, params: AllowSecretParams, progress: &dyn Progress) -> Result<SyncResult> {
        let session = self.session(&params.session_id)?;
        let Some(sync) = session.sync.get() else {
            return Err(Error::Unsupported("This session syncs no files, so nothing is held back.".into()));
        };
        let wanted = conflict_path(session.workspace.as_deref(), &params.path)?;
        let held_back = sync.state().held_back;
        let listed: Vec<&str> = held_back.iter().map(|file| file.path.as_str()).collect();
        require_listed(&wanted, &listed, "held back", "this session holds no files back now", "the files held back now are")?;
        if params.remember {
            self.remember_allowed_secret(session.profile.as_deref(), session.workspace.as_deref(), &wanted).await?;
        }
        tracing::info!(path = %wanted, remember = params.remember, "the user allowed a held-back file to go up");
        sync.allow_secret(&wanted);
        session.touch();
        let job = self.jobs.start(JobKind::Sync, "Uploading an allowed file", Some(&session.id), true);
        let progress = JobProgress { job: &job, inner: progress };
        self.sync_session(&session, SyncDirection::Up, Some(vec![wanted]), &progress).await
    }

    /// Adds `path` to the `sync.allowSecrets` of the user profile the session was connected with.
    async fn remember_allowed_secret(
        &self,
        profile: Option<&str>,
        workspace: Option<&std::path::Path>,
        path: &str,
    ) -> Result<()> {
        let Some(name) = profile else {
            return Err(Error::InvalidParams(
                "This session was connected without a profile, so there is no profile to remember the choice in; \
                 allow the file for this session only, or connect with a profile."
                    .into(),
            ));
        };
        let loaded = self.load_profiles(workspace).await?;
        let Some(found) = loaded.user.profiles.iter().find(|candidate| candidate.name == name) else {
            return Err(Error::InvalidParams(format!(
                "Profile \"{name}\" is not in your config.toml (it comes from the workspace's .sandlink.toml); add \
                 \"{path}\" to its sync.allowSecrets there, or allow the file for this session only."
            )));
        };
        let mut settings = found.settings.clone();
        let sync = settings.entry("sync").or_insert_with(|| serde_json::Value::Object(Default::default()));
        let serde_json::Value::Object(sync) = sync else {
            return Err(Error::InvalidProfile(format!("Profile \"{name}\": its sync setting is not a table.")));
        };
        let allowed = sync.entry("allowSecrets").or_insert_with(|| serde_json::Value::Array(Vec::new()));
        let serde_json::Value::Array(allowed) = allowed else {
            return Err(Error::InvalidProfile(format!("Profile \"{name}\": sync.allowSecrets is not a list.")));
        };
        // A leading `/` anchors the pattern to the workspace root, so the exact file is allowed and no namesake.
        let pattern = serde_json::Value::from(format!("/{path}"));
        if !allowed.contains(&pattern) {
            allowed.push(pattern);
        }
        let is_default = loaded.user.default.as_deref() == Some(name);
        self.save_profile(SaveProfileParams {
            name: name.to_string(),
            driver: found.driver.clone(),
            settings: Some(settings),
            default: is_default,
        })
        .await
    }

    /// A file was saved in an editor: every session whose workspace holds it syncs it at once.
    pub fn saved(&self, path: &std::path::Path) {
        let sessions: Vec<Arc<Session>> = lock(&self.sessions).values().cloned().collect();
        for session in sessions {
            let inside = session.workspace.as_ref().is_some_and(|workspace| path.starts_with(workspace));
            if let (true, Some(sync)) = (inside, session.sync.get()) {
                sync.saved(path);
            }
        }
    }

    /// Sets up the session's sync engine (manifest, rules, watcher); sessions without a workspace or a driver
    /// without file operations have none.
    pub(super) async fn attach_sync(&self, session: &Arc<Session>, options: SyncOptions) -> Result<()> {
        let (Some(workspace), Some(files)) = (session.workspace.clone(), session.sandbox.files()) else {
            return Ok(());
        };
        let observer = Arc::new(SyncObserver { session: Arc::downgrade(session), events: self.events.clone() });
        let session_dir = self.state_dir.join("sessions").join(&session.id);
        let sync = tokio::task::spawn_blocking(move || SessionSync::new(workspace, files, options, &session_dir, observer))
            .await
            .map_err(|error| Error::Internal(format!("Preparing sync failed: {error}")))??;
        let _ = session.sync.set(sync);
        Ok(())
    }

    pub(super) async fn sync_session(
        &self,
        session: &Arc<Session>,
        direction: SyncDirection,
        paths: Option<Vec<String>>,
        progress: &dyn Progress,
    ) -> Result<SyncResult> {
        self.sync_session_restoring(session, direction, paths, progress, true).await
    }

    /// `sync_session`; with `persist_restored` false neither `syncing` nor the state it goes back to is written to
    /// the record, only announced, for a caller that sets and persists the next state right away (a session's upload
    /// as it opens): each record write waits for the disk.
    pub(super) async fn sync_session_restoring(
        &self,
        session: &Arc<Session>,
        direction: SyncDirection,
        paths: Option<Vec<String>>,
        progress: &dyn Progress,
        persist_restored: bool,
    ) -> Result<SyncResult> {
        if session.workspace.is_none() {
            return Err(Error::InvalidParams(format!("Session {} has no workspace folder to sync.", session.id)));
        }
        let sync = session
            .sync
            .get()
            .cloned()
            .ok_or_else(|| Error::unsupported_by(session.sandbox.driver_id(), "file sync"))?;
        // A sync (on save, or asked for) is editor activity: it keeps sandboxes with idle timeouts alive.
        session.touch();
        let previous = session.state();
        if persist_restored {
            self.emit_state(session, SessionState::Syncing, None).await;
        } else {
            // An opening's upload: the record says `connecting` until the state after it is written.
            self.emit_state_unpersisted(session, SessionState::Syncing).await;
        }
        let outcome = sync.sync(direction, paths, progress).await;
        if let Ok(result) = &outcome {
            self.audit.record(
                "sync",
                serde_json::json!({
                    "sessionId": session.id,
                    "direction": direction,
                    "uploaded": result.uploaded,
                    "downloaded": result.downloaded,
                    "deleted": result.deleted,
                    "bytes": result.bytes,
                    "who": self.who.as_str(),
                }),
            );
        }
        let restored = if previous == SessionState::Syncing { SessionState::Active } else { previous };
        if persist_restored {
            self.emit_state(session, restored, None).await;
        } else {
            self.emit_state_unpersisted(session, restored).await;
        }
        outcome
    }

}

/// Forwards a session's sync state to the front door as `sandlink/syncState`.
struct SyncObserver {
    /// Weak because the session owns its sync engine, which owns this observer.
    session: std::sync::Weak<Session>,
    events: Arc<dyn Events>,
}

#[async_trait]
impl StateObserver for SyncObserver {
    async fn changed(&self, state: SyncState) {
        let Some(session) = self.session.upgrade() else { return };
        session.update(|mutable| mutable.sync = state.clone());
        self.events.sync_state(SyncStateParams { session_id: session.id.clone(), state }).await;
    }
}


/// A path as `SyncState.conflicts` names it (relative, `/`-separated) from what a client sent: that form, an absolute
/// path inside the workspace, or a file URI.
/// Refuses a path that is not among those the user was shown (`listed`), naming those that are, so a stale click
/// cannot act on a file whose state changed since.
fn require_listed(wanted: &str, listed: &[&str], what: &str, none_now: &str, listed_now: &str) -> Result<()> {
    if listed.contains(&wanted) {
        return Ok(());
    }
    Err(Error::InvalidParams(match listed.is_empty() {
        true => format!("\"{wanted}\" is not {what}: {none_now}."),
        false => format!("\"{wanted}\" is not {what}; {listed_now}: {}.", listed.join(", ")),
    }))
}

fn conflict_path(workspace: Option<&std::path::Path>, path: &str) -> Result<String> {
    let outside = || Error::PathOutsideWorkspace(format!("\"{path}\" is not inside the session's workspace."));
    if !(path.starts_with("file:") || path.starts_with('/')) {
        return Ok(path.trim_start_matches("./").to_string());
    }
    let local = crate::paths::path_from_uri_or_path(path)?;
    let workspace = workspace.ok_or_else(outside)?;
    let relative = local.strip_prefix(workspace).map_err(|_| outside())?;
    Ok(relative.to_string_lossy().into_owned())
}
