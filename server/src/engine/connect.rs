//! Opening sessions: connect, restore from a snapshot, and re-attach to a kept one, each ending in the same steps
//! (register, prepare sync, upload, start the keepalive and the failure watch).

use std::path::PathBuf;
use std::sync::Arc;

use super::configure::{Plan, PlanInput};
use super::store::Record;
use crate::locks::lock;
use super::{Engine, Session};
use crate::drivers::ConnectRequest;
use crate::error::{Error, Result};
use crate::ids::short_id;
use crate::paths;
use super::jobs::{Job, JobProgress};
use crate::progress::Progress;
use crate::protocol::{JobKind, ConnectParams, RestoreParams, SessionInfo, SessionState, SessionStateParams, SyncDirection};
use crate::statefile;
use crate::sync::SyncOptions;

impl Engine {
    /// Connects a driver for a workspace and, unless `sync: false`, uploads the workspace before answering.
    /// With `reuse`, re-attaches to a session kept from an earlier run instead.
    pub async fn connect(
        &self,
        params: ConnectParams,
        default_workspace: Option<PathBuf>,
        progress: &dyn Progress,
    ) -> Result<SessionInfo> {
        let title = match &params.reuse {
            Some(session_id) => format!("Re-attaching {session_id}"),
            None => "Connecting".to_string(),
        };
        let job = self.jobs.start(JobKind::Connect, title, params.reuse.as_deref(), true);
        let progress = JobProgress { job: &job, inner: progress };
        self.open_session(params, default_workspace, &progress, &job, None).await
    }

    /// Starts a new session from a snapshot that `snapshot` answered; the snapshot's files are kept (no upload).
    pub async fn restore(
        &self,
        params: RestoreParams,
        default_workspace: Option<PathBuf>,
        progress: &dyn Progress,
    ) -> Result<SessionInfo> {
        if params.profile.is_none() && params.driver.is_none() {
            return Err(Error::InvalidParams(
                "Say where the snapshot lives: restore needs `driver` (with its settings) or `profile`.".into(),
            ));
        }
        let connect = ConnectParams {
            profile: params.profile,
            driver: params.driver,
            settings: params.settings,
            workspace_folder: params.workspace_folder,
            sync: Some(false),
            reuse: None,
            work_done_token: None,
        };
        let job = self.jobs.start(JobKind::Restore, format!("Restoring {}", params.snapshot_id), None, true);
        let progress = JobProgress { job: &job, inner: progress };
        self.open_session(connect, default_workspace, &progress, &job, Some(params.snapshot_id)).await
    }

    /// Connects (or, with `snapshot_id`, restores) a sandbox, registers and persists its session, uploads the
    /// workspace when asked, and starts the keepalive of sandboxes that expire on their own.
    async fn open_session(
        &self,
        params: ConnectParams,
        default_workspace: Option<PathBuf>,
        progress: &dyn Progress,
        job: &Job,
        snapshot_id: Option<String>,
    ) -> Result<SessionInfo> {
        let explicit_workspace = match &params.workspace_folder {
            Some(folder) => Some(paths::path_from_uri_or_path(folder)?),
            None => None,
        };
        if let Some(workspace) = &explicit_workspace {
            if !workspace.is_dir() {
                return Err(Error::InvalidParams(format!(
                    "The workspace folder {} does not exist or is not a directory.",
                    workspace.display()
                )));
            }
        }
        if let Some(reuse) = params.reuse.clone() {
            return self.reattach(&reuse, params, explicit_workspace, progress).await.map_err(|error| {
                cancelled_as(job, error, "the kept session stays listed; connect with reuse again to finish re-attaching.")
            });
        }
        let workspace = explicit_workspace.or(default_workspace).filter(|workspace| workspace.is_dir());
        let plan = self
            .plan(PlanInput {
                profile: params.profile.clone(),
                driver: params.driver.clone(),
                settings: params.settings.clone(),
                workspace: workspace.as_deref(),
            })
            .await?;
        let driver_id = plan.driver.id().to_string();
        let info = plan.driver.info().await;
        if !info.available {
            return Err(Error::DriverUnavailable {
                driver: driver_id.clone(),
                message: info.detail.unwrap_or_else(|| format!("The {driver_id} driver is not available here.")),
            });
        }
        if let Some(kept) = self.kept_session_like(&plan, workspace.as_deref()).await {
            // A kept sandbox for the same workspace and configuration is what the user wants back after an editor
            // restart; a fresh one would pay again for the upload (and, in the cloud, for the sandbox).
            let reattach_params = ConnectParams { reuse: Some(kept.clone()), ..ConnectParams::default() };
            job.set_session(&kept);
            match self.reattach(&kept, reattach_params, workspace.clone(), progress).await {
                Ok(session) => return Ok(session),
                Err(Error::Cancelled(_)) => {
                    return Err(job.cancelled_error(
                        "the kept session it was re-attaching stays listed; connect again to finish re-attaching.",
                    ))
                }
                Err(error) => tracing::info!(session = %kept, %error, "a kept session could not be re-attached; connecting anew"),
            }
        }
        let sync_options = SyncOptions::from_settings(&plan.settings)?;
        let session_id = format!("{driver_id}-{}", short_id());
        let claim = self.reserve(&session_id, &plan, workspace.clone()).await?;
        job.set_session(&session_id);
        if progress.cancelled() {
            self.remove_record(&session_id).await;
            return Err(job.cancelled_error("nothing was created."));
        }
        progress.report(format!("Connecting {driver_id}"), None).await;
        let Plan { driver, profile, settings, credentials } = plan;
        let request = ConnectRequest {
            session_id: session_id.clone(),
            workspace: workspace.clone(),
            settings: settings.clone(),
            state_dir: self.state_dir.clone(),
            credentials,
            runs_commands: !self.files_only,
        };
        let connected = match snapshot_id {
            Some(snapshot_id) => driver.restore(snapshot_id, request).await,
            None => driver.connect(request).await,
        };
        let sandbox = match connected {
            Ok(sandbox) => sandbox,
            Err(error) => {
                self.remove_record(&session_id).await;
                return Err(error);
            }
        };
        // The provider call itself cannot be interrupted without losing track of what it made; once it answered,
        // a cancelled connect removes the sandbox as a failed one would.
        if progress.cancelled() {
            if let Err(error) = sandbox.disconnect(false).await {
                tracing::warn!(%session_id, %error, "could not remove the sandbox of a cancelled connect");
            }
            self.remove_record(&session_id).await;
            return Err(job.cancelled_error("the sandbox it had made was removed."));
        }
        let session = Arc::new(
            Session::new(session_id.clone(), driver_id, profile, workspace.clone(), sandbox)
                .with_persistence(settings, claim, None),
        );
        let automatic_sync = params.sync.unwrap_or(true);
        self.finish_opening(session, sync_options, automatic_sync, "Uploading the workspace", OnFailure::Discard, progress)
            .await
            .map_err(|error| cancelled_as(job, error, "its half-made sandbox and its record were removed."))
    }

    /// Turns the session to `error` when its sandbox breaks on its own (the driver says why).
    fn watch_for_failure(&self, session: &Arc<Session>) {
        let session = session.clone();
        let events = self.events.clone();
        tokio::spawn(async move {
            let message = session.sandbox.wait_failure().await;
            if matches!(session.state(), SessionState::Disconnected | SessionState::Error | SessionState::Expired) {
                return;
            }
            session.update(|mutable| {
                mutable.state = SessionState::Error;
                mutable.message = Some(message.clone());
            });
            events
                .session_state(SessionStateParams {
                    session_id: session.id.clone(),
                    state: SessionState::Error,
                    message: Some(message),
                })
                .await;
        });
    }

    /// Counts sandboxes against the limit and writes the new session's first record, under the index lock so two
    /// servers connecting at once cannot both take the last slot.
    async fn reserve(&self, session_id: &str, plan: &Plan, workspace: Option<PathBuf>) -> Result<statefile::Lock> {
        let limit = match self.load_profiles(None).await {
            Ok(profiles) => profiles.max_sandboxes(),
            Err(_) => crate::profiles::DEFAULT_MAX_SANDBOXES,
        };
        let record = Record::connecting(
            session_id.to_string(),
            plan.driver.id().to_string(),
            plan.profile.clone(),
            workspace,
            plan.settings.clone(),
        );
        let store = self.store.clone();
        let config_file = crate::profiles::user_file(&self.config_dir);
        statefile::blocking(move || {
            let _index = store.index_lock()?;
            let existing = store.list()?;
            if existing.len() >= limit {
                return Err(Error::LimitReached(format!(
                    "There are already {} sandboxes (the limit is {limit}), so sandlink will not start another one. \
                     Remove one you no longer need (`sandlink sessions` lists them, kept ones included, and `sandlink sessions rm ID` \
                     removes one) or raise \
                     maxSandboxes under [limits] in {}.",
                    existing.len(),
                    config_file.display()
                )));
            }
            let claim = store.claim(&record.session_id)?.ok_or_else(|| {
                Error::Internal(format!("The new session {} is already claimed.", record.session_id))
            })?;
            // Nothing exists yet that a machine crash could leave behind: the record that says where the sandbox is,
            // written once the driver made it, is the one that waits for the disk.
            store.write_unflushed(&record)?;
            Ok(claim)
        })
        .await
    }


    /// The newest kept session (not attached anywhere) with the plan's driver, profile and settings for `workspace`.
    async fn kept_session_like(&self, plan: &Plan, workspace: Option<&std::path::Path>) -> Option<String> {
        let workspace = workspace.map(crate::profiles::trust::canonical);
        let store = self.store.clone();
        let records = statefile::blocking(move || store.list()).await.ok()?;
        records
            .into_iter()
            .filter(|record| {
                record.kept
                    && record.driver == plan.driver.id()
                    && record.profile == plan.profile
                    && record.settings == plan.settings
                    && record.workspace.as_deref().map(crate::profiles::trust::canonical) == workspace
                    && !lock(&self.sessions).contains_key(&record.session_id)
            })
            .max_by(|left, right| left.last_activity.cmp(&right.last_activity))
            .map(|record| record.session_id)
    }

    /// Re-attaches to a session kept from an earlier run (or another server that exited), keeping its id so the
    /// sync manifest under `sessions/<id>` still applies and an unchanged workspace transfers nothing.
    async fn reattach(
        &self,
        session_id: &str,
        params: ConnectParams,
        explicit_workspace: Option<PathBuf>,
        progress: &dyn Progress,
    ) -> Result<SessionInfo> {
        crate::credentials::check_name("session id", session_id)
            .map_err(|_| Error::UnknownSession(session_id.to_string()))?;
        if let Some(session) = lock(&self.sessions).get(session_id).cloned() {
            return Ok(session.info());
        }
        if params.settings.is_some() || params.driver.is_some() || params.profile.is_some() {
            return Err(Error::InvalidParams(
                "A re-attach (reuse) keeps the session's driver, profile and settings; leave those out.".into(),
            ));
        }
        let (record, claim) = self.claim_record(session_id).await?;
        if let (Some(asked), Some(kept)) = (&explicit_workspace, &record.workspace) {
            if crate::profiles::trust::canonical(asked) != crate::profiles::trust::canonical(kept) {
                return Err(Error::InvalidParams(format!(
                    "Session {session_id} belongs to the workspace {}, not {}.",
                    kept.display(),
                    asked.display()
                )));
            }
        }
        progress.report(format!("Re-attaching {session_id}"), None).await;
        let driver = self.driver(&record.driver)?;
        let request = self.reattach_request(&record, driver.as_ref()).await?;
        let sandbox = match driver.sandbox_exists(&request).await {
            Ok(true) => driver.reattach(request).await,
            Ok(false) => Err(Error::UnknownSession(session_id.to_string())),
            Err(error) => Err(error),
        };
        let sandbox = match sandbox {
            Ok(sandbox) => sandbox,
            Err(Error::UnknownSession(_)) => {
                drop(claim);
                self.remove_record(session_id).await;
                return Err(Error::SessionGone(format!(
                    "The sandbox of session {session_id} no longer exists (it was removed or expired), so its record \
                     was cleaned up. Connect again for a new one."
                )));
            }
            Err(error) => return Err(error),
        };
        let session = Arc::new(
            Session::new(
                record.session_id.clone(),
                record.driver.clone(),
                record.profile.clone(),
                record.workspace.clone(),
                sandbox,
            )
            .with_persistence(record.settings.clone(), claim, Some(record.started_at.clone())),
        );
        session.update(|mutable| {
            mutable.sync.last_sync_at = record.sync.last_sync_at.clone();
            mutable.expires_at = record.expires_at.clone();
        });
        // Same id, same session directory: the sync manifest from before the restart applies, so an unchanged
        // workspace transfers nothing.
        let sync_options = SyncOptions::from_settings(&record.settings)?;
        let automatic_sync = params.sync.unwrap_or(true);
        let info = self.finish_opening(session, sync_options, automatic_sync, "Syncing changes", OnFailure::KeepInError, progress).await?;
        tracing::info!(session_id, "re-attached a kept session");
        Ok(info)
    }

    /// The steps every way of opening a session ends with: register it, prepare its sync and (when
    /// `automatic_sync`) upload what changed, then mark it active and start its keepalive and failure watch.
    async fn finish_opening(
        &self,
        session: Arc<Session>,
        sync_options: SyncOptions,
        automatic_sync: bool,
        upload_message: &str,
        on_failure: OnFailure,
        progress: &dyn Progress,
    ) -> Result<SessionInfo> {
        lock(&self.sessions).insert(session.id.clone(), session.clone());
        // The record that says where the sandbox is waits for the disk; the sync is prepared meanwhile.
        let (_, attached) =
            tokio::join!(self.emit_state(&session, SessionState::Connecting, None), self.attach_sync(&session, sync_options));
        let prepared = match attached {
            Ok(()) if automatic_sync && session.sync.get().is_some() => {
                progress.report(upload_message.to_string(), None).await;
                if let (OnFailure::Discard, Some(sync)) = (&on_failure, session.sync.get()) {
                    // A new session: nothing runs in its sandbox until this answers (`SessionSync::set_sandbox_fresh`).
                    sync.set_sandbox_fresh(true);
                }
                // `active` (or `error`) follows at once and is what the record gets; the `connecting` the upload goes
                // back to is only announced.
                self.sync_session_restoring(&session, SyncDirection::Up, None, progress, false)
                    .await
                    .map(|result| drop(session.initial_sync.set(result)))
            }
            other => other,
        };
        if let Some(sync) = session.sync.get() {
            sync.set_sandbox_fresh(false);
        }
        // Only now: the local driver's agent starts while the workspace uploads.
        let prepared = match prepared {
            Ok(()) => session.sandbox.ready().await,
            failed => failed,
        };
        if let Err(error) = prepared {
            match on_failure {
                OnFailure::Discard => {
                    lock(&self.sessions).remove(&session.id);
                    if let Some(sync) = session.sync.get() {
                        sync.stop().await;
                    }
                    let _ = session.sandbox.disconnect(false).await;
                    self.emit_state(&session, SessionState::Error, Some(error.to_string())).await;
                    session.forget();
                    self.remove_session_record(&session).await;
                }
                OnFailure::KeepInError => self.emit_state(&session, SessionState::Error, Some(error.to_string())).await,
            }
            return Err(error);
        }
        if let (true, Some(sync)) = (automatic_sync, session.sync.get()) {
            sync.start_background(self.watch_delay);
        }
        // The record says where the sandbox is already; `active` reaches the disk while the first command starts.
        self.emit_state_persisted_in_background(&session, SessionState::Active).await;
        let how = match on_failure {
            OnFailure::Discard => "sessionCreated",
            OnFailure::KeepInError => "sessionReattached",
        };
        self.start_policy(&session, how).await;
        self.lifecycle.watch(&session);
        self.watch_for_failure(&session);
        Ok(session.info())
    }
}

/// How a session that failed to open is left.
enum OnFailure {
    /// A new session is ended: its sandbox removed, its record gone.
    Discard,
    /// A re-attached one stays listed in `error`: its sandbox holds the user's earlier work.
    KeepInError,
}

/// A `cancelled` error from the work of `job` (its upload stopped between batches), reworded to say what the
/// cancellation left; any other error as it is.
fn cancelled_as(job: &Job, error: Error, what_was_left: &str) -> Error {
    match error {
        Error::Cancelled(_) => job.cancelled_error(what_was_left),
        other => other,
    }
}
