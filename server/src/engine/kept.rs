//! Sessions on disk: each session's record (written as it changes), kept sessions found again, listed, checked
//! with their driver and disconnected, and every session ended at shutdown.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::store::{Record, RECORD_VERSION};
use crate::locks::lock;
use super::{run, Engine, RunHandle, Session};
use crate::credentials::Secret;
use crate::drivers::{ConnectRequest, Driver, ReattachRequest};
use crate::error::{Error, Result};
use crate::protocol::{DisconnectParams, Holder, SessionInfo, SessionState, SessionStateParams};
use crate::statefile;

impl Engine {
    pub(super) async fn remove_record(&self, session_id: &str) {
        let store = self.store.clone();
        let id = session_id.to_string();
        if let Err(error) = statefile::blocking(move || store.remove(&id)).await {
            tracing::warn!(session_id, %error, "could not remove a session record");
        }
        // The session's sandbox is gone, and its detached runs with it.
        super::detached::forget_runs_of(&self.state_dir, session_id);
    }

    /// Removes a live session's record once the writes of it already started are done.
    pub(super) async fn remove_session_record(&self, session: &Session) {
        let _in_order = session.record_writes.lock().await;
        self.remove_record(&session.id).await;
    }

    /// Writes a live session's record (state, times, driver state); never for a session already removed.
    pub(super) async fn persist(&self, session: &Session, kept: bool) {
        let _in_order = session.record_writes.lock().await;
        write_record(&self.store, session, kept).await;
    }

    /// `persist`, answering before the record reaches the disk: the write goes on in the background, and every later
    /// write or removal of the record waits for it. For a state whose loss in a crash loses nothing: the record before
    /// it, already on disk, says where the sandbox is.
    pub(super) async fn persist_in_background(&self, session: &Arc<Session>) {
        let in_order = session.record_writes.clone().lock_owned().await;
        let (store, session) = (self.store.clone(), session.clone());
        tokio::spawn(async move {
            write_record(&store, &session, false).await;
            drop(in_order);
        });
    }

    /// Reads a kept record and takes ownership of it, or says who holds it.
    pub(super) async fn claim_record(&self, session_id: &str) -> Result<(Record, statefile::Lock)> {
        let store = self.store.clone();
        let id = session_id.to_string();
        statefile::blocking(move || {
            let record = store.read(&id)?.ok_or_else(|| Error::UnknownSession(id.clone()))?;
            let claim = store.claim(&id)?.ok_or_else(|| {
                Error::SessionInUse(format!(
                    "Session {id} is attached by another sandlink (process {}, probably another editor window). \
                     Use it there, disconnect it there, or close that window first.",
                    record.pid
                ))
            })?;
            if record.version != RECORD_VERSION {
                return Err(Error::Unsupported(format!(
                    "Session {id} was saved by a different version of sandlink and cannot be re-attached; \
                     disconnect it with that version or remove {}.",
                    store.session_dir(&id).display()
                )));
            }
            Ok((record, claim))
        })
        .await
    }

    /// The request a driver gets to find a kept sandbox: its record plus freshly resolved credentials.
    pub(super) async fn reattach_request(&self, record: &Record, driver: &dyn Driver) -> Result<ReattachRequest> {
        let credentials =
            crate::credentials::resolve(driver.id(), record.profile.as_deref(), driver.credential_keys()).await?;
        Ok(self.reattach_request_with(record, credentials))
    }

    fn reattach_request_with(&self, record: &Record, credentials: BTreeMap<String, Secret>) -> ReattachRequest {
        ReattachRequest {
            connect: ConnectRequest {
                session_id: record.session_id.clone(),
                workspace: record.workspace.clone(),
                settings: record.settings.clone(),
                state_dir: self.state_dir.clone(),
                credentials,
                runs_commands: !self.files_only,
            },
            remote_root: record.remote_root.clone(),
            driver_state: record.driver_state.clone(),
        }
    }

    /// Ends a session's runs and its sandbox (kept for later when `keep`). A session kept from an earlier run
    /// (not attached here) is re-attached first so its sandbox is really removed.
    pub async fn disconnect(&self, params: DisconnectParams) -> Result<()> {
        let live = lock(&self.sessions).remove(&params.session_id);
        let Some(session) = live else {
            return self.disconnect_kept(&params.session_id, params.keep).await;
        };
        let runs: Vec<Arc<RunHandle>> = lock(&self.runs)
            .values()
            .filter(|run| run.session_id == session.id)
            .cloned()
            .collect();
        for run in &runs {
            run.cancel();
        }
        for run in &runs {
            self.wait_for_run_end(run, run::TERMINATE_GRACE * 3).await;
        }
        if let Some(sync) = session.sync.get() {
            sync.stop().await;
        }
        // A write of the record still on its way (`persist_in_background`) ends first: the local driver's session
        // directory, which the disconnect removes, holds the record.
        drop(session.record_writes.lock().await);
        let outcome = session.sandbox.disconnect(params.keep).await;
        if let Err(error) = outcome {
            // The sandbox may still exist: keep the record so it can be found and removed later.
            self.persist(&session, true).await;
            session.release_claim();
            return Err(error);
        }
        self.audit_session_ended(&session.id, params.keep);
        if params.keep {
            session.update(|mutable| {
                mutable.state = SessionState::Disconnected;
                mutable.message = Some(format!("Kept; connect again from this workspace to re-attach ({}).", session.id));
            });
            self.persist(&session, true).await;
        } else {
            session.forget();
            self.remove_session_record(&session).await;
        }
        session.release_claim();
        self.emit_state(&session, SessionState::Disconnected, None).await;
        Ok(())
    }

    /// Disconnects a session that only exists as a record (kept, or left by a crash).
    async fn disconnect_kept(&self, session_id: &str, keep: bool) -> Result<()> {
        crate::credentials::check_name("session id", session_id)
            .map_err(|_| Error::UnknownSession(session_id.to_string()))?;
        let (record, claim) = self.claim_record(session_id).await?;
        if keep {
            return Ok(());
        }
        let driver = self.driver(&record.driver)?;
        let request = self.reattach_request(&record, driver.as_ref()).await?;
        if driver.sandbox_exists(&request).await? {
            let sandbox = driver.reattach(request).await?;
            sandbox.disconnect(false).await?;
        }
        drop(claim);
        self.remove_record(session_id).await;
        self.audit_session_ended(session_id, false);
        self.events
            .session_state(SessionStateParams {
                session_id: session_id.to_string(),
                state: SessionState::Disconnected,
                message: None,
            })
            .await;
        Ok(())
    }


    /// Ends every session when the server shuts down: kept for a re-attach after the editor restarts unless the
    /// user set `[sessions] keepOnExit = false`.
    pub async fn disconnect_all(&self) {
        let keep = match self.load_profiles(None).await {
            Ok(profiles) => profiles.keep_on_exit(),
            Err(_) => true,
        };
        let ids: Vec<String> = lock(&self.sessions).keys().cloned().collect();
        for session_id in ids {
            if let Err(error) = self.disconnect(DisconnectParams { session_id: session_id.clone(), keep }).await {
                tracing::warn!(%session_id, %error, "could not end a session at shutdown");
            }
        }
    }

    /// The sessions attached here, then those kept on disk: kept ones are checked with their driver, and records
    /// of sandboxes that no longer exist are reported once as `expired` and removed.
    pub async fn sessions(&self) -> Vec<SessionInfo> {
        let live: Vec<Arc<Session>> = lock(&self.sessions).values().cloned().collect();
        let mut sessions: Vec<SessionInfo> = live
            .iter()
            .map(|session| SessionInfo { held: Some(Holder::Here), ..self.info_with_jobs(session) })
            .collect();
        let store = self.store.clone();
        let records = match statefile::blocking(move || store.list()).await {
            Ok(records) => records,
            Err(error) => {
                tracing::warn!(%error, "could not list kept sessions");
                Vec::new()
            }
        };
        // Each kept sandbox is asked about at once: one that is slow to answer (a cloud API) must not make the
        // whole listing wait for every other one in turn.
        let mut checks = Vec::new();
        let prices = self.load_profiles(None).await.map(|profiles| profiles.prices()).unwrap_or_default();
        let mut rates = std::collections::HashMap::new();
        for record in records {
            if sessions.iter().any(|session| session.session_id == record.session_id) {
                continue;
            }
            rates.insert(record.session_id.clone(), prices.usd_per_hour(&record.driver, &record.settings));
            let store = self.store.clone();
            let id = record.session_id.clone();
            let claimed = statefile::blocking(move || Ok(store.is_claimed(&id))).await.unwrap_or(false);
            if claimed {
                let message = format!(
                    "Attached by another sandlink (process {}, probably another editor window).",
                    record.pid
                );
                sessions.push(SessionInfo { held: Some(Holder::Elsewhere), ..record.info(record.state, message) });
                continue;
            }
            checks.push(self.check_kept(record));
        }
        sessions.extend(futures::future::join_all(checks).await);
        // A kept sandbox still costs until it is removed; an expired one no longer does.
        let now = time::OffsetDateTime::now_utc();
        for session in sessions.iter_mut().filter(|session| session.cost.is_none() && session.state != SessionState::Expired) {
            if let Some(rate) = rates.get(&session.session_id) {
                session.cost = Some(crate::cost::session_cost(*rate, &session.started_at, now));
            }
        }
        sessions.sort_by(|left, right| left.started_at.cmp(&right.started_at));
        sessions
    }

    /// A kept record as listed: `disconnected` and re-attachable, or `expired` (and removed) when its sandbox is gone.
    async fn check_kept(&self, record: Record) -> SessionInfo {
        let Ok(driver) = self.driver(&record.driver) else {
            return record.info(
                SessionState::Error,
                format!("Kept by a sandlink with the {} driver, which this build does not have.", record.driver),
            );
        };
        // A missing credential must not hide the record: the existence check then runs without one.
        let request = match self.reattach_request(&record, driver.as_ref()).await {
            Ok(request) => request,
            Err(_) => self.reattach_request_with(&record, Default::default()),
        };
        let exists = tokio::time::timeout(Duration::from_secs(10), driver.sandbox_exists(&request)).await;
        match exists {
            Ok(Ok(false)) => {
                // Only the owner may remove a record: one another server has just claimed stays.
                let store = self.store.clone();
                let id = record.session_id.clone();
                let removed = statefile::blocking(move || match store.claim(&id)? {
                    Some(_claim) => store.remove(&id).map(|()| true),
                    None => Ok(false),
                })
                .await;
                if !matches!(removed, Ok(true)) {
                    return record.info(record.state, "Attached by another sandlink.".into());
                }
                record.info(
                    SessionState::Expired,
                    "Its sandbox no longer exists, so the record was removed; connect again for a new one.".into(),
                )
            }
            Ok(Err(error)) => record.info(SessionState::Error, format!("Could not check the sandbox: {error}")),
            Ok(Ok(true)) | Err(_) => {
                let (how, held) = match record.kept {
                    true => ("Kept", Holder::Kept),
                    false => ("Left by a sandlink that exited", Holder::Orphaned),
                };
                let message = format!("{how}; connect again from its workspace to re-attach ({}).", record.session_id);
                SessionInfo { held: Some(held), ..record.info(SessionState::Disconnected, message) }
            }
        }
    }

}

/// Writes `session`'s record as it is now, unless the session is forgotten; the caller holds `record_writes`.
async fn write_record(store: &super::store::Store, session: &Session, kept: bool) {
    if session.is_forgotten() {
        return;
    }
    let info = session.info();
    let record = Record {
        remote_root: info.remote_root,
        state: info.state,
        message: info.message,
        started_at: info.started_at,
        last_activity: info.last_activity,
        expires_at: info.expires_at,
        driver_state: session.sandbox.driver_state(),
        isolation: info.isolation,
        sync_manifest: Some(format!("sessions/{}/{}", session.id, crate::sync::manifest::FILE_NAME)),
        sync: info.sync,
        kept,
        ..Record::connecting(
            session.id.clone(),
            session.driver.clone(),
            session.profile.clone(),
            session.workspace.clone(),
            session.settings.clone(),
        )
    };
    let store = store.clone();
    if let Err(error) = statefile::blocking(move || store.write(&record)).await {
        tracing::warn!(session_id = %session.id, %error, "could not save the session record");
    }
}
