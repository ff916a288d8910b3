//! Keeping cloud sandboxes alive: a per-session watcher that extends a sandbox's lease while the session is in use,
//! warns (`sandlink/timeoutWarning`) before an idle one expires, and turns the session `expired` once it is gone.
//!
//! Generic over drivers: it needs only `Sandbox::lease` (answered without a request), `extend` and `status`.
//! A session is in use while a run is in flight or its last activity (runs, syncs, saves) is within the driver's
//! idle window.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use time::OffsetDateTime;

use super::run::RunHandle;
use super::{Events, Session};
use crate::protocol::{SessionState, SessionStateParams, TimeoutWarningParams};

/// How often the watcher looks at a session; a lease is checked without a request, so this is cheap.
const TICK: Duration = Duration::from_secs(1);
/// Extend (or warn) at most this long before the end, and no earlier than half the lease before it.
const MAX_MARGIN: Duration = Duration::from_secs(60);

type RunTable = Arc<Mutex<HashMap<String, Arc<RunHandle>>>>;

/// Starts watching a session whose sandbox has a lease; does nothing for drivers without one.
pub fn watch(session: &Arc<Session>, runs: RunTable, events: Arc<dyn Events>) {
    if session.sandbox.lease().is_none() {
        return;
    }
    let session = Arc::downgrade(session);
    tokio::spawn(async move { keep_alive(session, runs, events).await });
}

fn rfc3339(when: OffsetDateTime) -> String {
    when.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

fn runs_in_flight(runs: &RunTable, session_id: &str) -> bool {
    // The table holds plain handles that a panicking holder cannot leave half-updated.
    let runs = runs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    runs.values().any(|run| run.session_id == session_id)
}

fn recently_active(session: &Session, idle_window: Duration, now: OffsetDateTime) -> bool {
    let last_activity = session.info().last_activity;
    match OffsetDateTime::parse(&last_activity, &time::format_description::well_known::Rfc3339) {
        Ok(when) => now - when < idle_window,
        Err(_) => false,
    }
}

async fn expire(session: &Session, events: &Arc<dyn Events>, message: String) {
    session.update(|mutable| {
        mutable.state = SessionState::Expired;
        mutable.message = Some(message.clone());
    });
    events
        .session_state(SessionStateParams {
            session_id: session.id.clone(),
            state: SessionState::Expired,
            message: Some(message),
        })
        .await;
}

async fn keep_alive(session: Weak<Session>, runs: RunTable, events: Arc<dyn Events>) {
    let mut warned_for: Option<OffsetDateTime> = None;
    loop {
        tokio::time::sleep(TICK).await;
        let Some(session) = session.upgrade() else { return };
        match session.state() {
            SessionState::Disconnected | SessionState::Expired | SessionState::Error => return,
            SessionState::Connecting | SessionState::Active | SessionState::Syncing => {}
        }
        let Some(lease) = session.sandbox.lease() else { return };
        if let Some(gone) = lease.gone {
            expire(&session, &events, format!("The sandbox is gone: {gone} It most likely reached its timeout; connect again.")).await;
            return;
        }
        let now = OffsetDateTime::now_utc();
        let expires_at = rfc3339(lease.expires_at);
        session.update(|mutable| mutable.expires_at = Some(expires_at.clone()));
        let remaining = lease.expires_at - now;
        let margin = MAX_MARGIN.min(Duration::from_secs(lease.extend_seconds) / 2);
        let in_use = runs_in_flight(&runs, &session.id) || recently_active(&session, lease.idle_window, now);
        if remaining <= margin && remaining.is_positive() {
            if in_use {
                match session.sandbox.extend(lease.extend_seconds).await {
                    Ok(new_expiry) => {
                        tracing::debug!(session_id = %session.id, %new_expiry, "extended a sandbox in use");
                        session.update(|mutable| mutable.expires_at = Some(new_expiry));
                    }
                    Err(error) => tracing::warn!(session_id = %session.id, %error, "could not extend a sandbox in use"),
                }
                continue;
            }
            if warned_for != Some(lease.expires_at) {
                warned_for = Some(lease.expires_at);
                events
                    .timeout_warning(TimeoutWarningParams {
                        session_id: session.id.clone(),
                        expires_at,
                        seconds_left: remaining.whole_seconds().max(0) as u64,
                    })
                    .await;
            }
            continue;
        }
        if !remaining.is_positive() {
            // Past the end by sandlink's clock: ask the provider, which may have extended it or ended it.
            match session.sandbox.status().await {
                Ok(status) if status.expired => {
                    let message = status.failure.unwrap_or_else(|| "The sandbox reached its timeout.".into());
                    expire(&session, &events, message).await;
                    return;
                }
                Ok(_) => {}
                Err(error) => tracing::debug!(session_id = %session.id, %error, "could not check an expired lease"),
            }
        }
    }
}
