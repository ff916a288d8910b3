//! Managing sessions over their life: the lifecycle policy and price of a session once it is open, keepalives,
//! extensions of a sandbox or of a run's limit, and the audit records of sessions and runs.

use std::sync::Arc;

use serde_json::json;

use super::audit::{self, Who};
use super::lifecycle::Clock;
use super::{Engine, Session};
use crate::error::{Error, Result};
use crate::policy::{Lifecycle, RunLimit};
use crate::protocol::{ExitParams, ExtendParams, LimitReason, RunParams};

impl Engine {
    /// Names the front door in the audit log (`cli` for the command line; `editor` otherwise).
    pub fn with_front_door(mut self, who: Who) -> Self {
        self.who = who;
        self
    }

    /// Replaces the lifecycle manager's clock and how often it looks; for tests that drive time themselves (a fake
    /// provider's test clock). Call before connecting.
    pub fn with_lifecycle_clock(mut self, clock: Arc<dyn Clock>, tick: std::time::Duration) -> Self {
        self.lifecycle = super::lifecycle::Manager::with_audit(clock, self.runs.clone(), self.events.clone(), self.audit.clone());
        self.lifecycle.set_tick(tick);
        self
    }

    /// The audit log's file.
    pub fn audit_path(&self) -> std::path::PathBuf {
        self.state_dir.join(audit::FILE_NAME)
    }

    /// Counts as activity for the lifecycle manager, which keeps the session's sandbox alive (Daytona's idle
    /// auto-stop, E2B's end) while an agent thinks between commands.
    pub fn keepalive(&self, session_id: &str) -> Result<()> {
        let session = self.session(session_id)?;
        session.touch();
        self.lifecycle.note_keepalive(&session.id);
        Ok(())
    }

    /// Tells the provider of a sandbox with a lease that it is in use now (an extension by the lease's own step);
    /// answers the new end, or `None` for sandboxes that do not expire on their own.
    pub async fn refresh_lease(&self, session_id: &str) -> Result<Option<String>> {
        let session = self.session(session_id)?;
        let Some(lease) = session.sandbox.lease() else { return Ok(None) };
        let expires_at = session.sandbox.extend(lease.extend_seconds).await?;
        session.update(|mutable| mutable.expires_at = Some(expires_at.clone()));
        Ok(Some(expires_at))
    }

    /// `sandlink/extend`: the sandbox's lifetime (reason `sandboxExpiry`, the default), or the limit of the
    /// session's limited runs (reason `runLimit`, one run's with `runId`); answers the new end.
    pub async fn extend_with(&self, params: ExtendParams) -> Result<String> {
        if params.reason != Some(LimitReason::RunLimit) {
            if params.run_id.is_some() {
                return Err(Error::InvalidParams("`runId` goes with reason \"runLimit\"; a sandbox's lifetime is the session's.".into()));
            }
            return self.extend(&params.session_id, params.seconds).await;
        }
        let session = self.session(&params.session_id)?;
        if params.seconds == 0 {
            return Err(Error::InvalidParams("Extend by at least one second.".into()));
        }
        let new_end = self.lifecycle.extend_run_limit(&session.id, params.run_id.as_deref(), params.seconds).ok_or_else(|| {
            Error::InvalidParams(match &params.run_id {
                Some(run_id) => format!("Run {run_id} of session {} is not held to a limit (or has ended).", session.id),
                None => format!("Session {} has no run held to a limit.", session.id),
            })
        })?;
        let expires_at = super::lifecycle::rfc3339(new_end);
        self.audit.record(
            "extended",
            json!({
                "sessionId": session.id,
                "runId": params.run_id,
                "seconds": params.seconds,
                "reason": "runLimit",
                "expiresAt": expires_at,
                "who": self.who.as_str(),
            }),
        );
        Ok(expires_at)
    }

    /// Once a session is open: its price and lifecycle policy go to the lifecycle manager (cost limit, heartbeat),
    /// and the audit log hears of it.
    pub(super) async fn start_policy(&self, session: &Arc<Session>, how: &str) {
        let prices = match self.load_profiles(None).await {
            Ok(profiles) => profiles.prices(),
            Err(error) => {
                tracing::debug!(%error, "no user prices; the defaults apply");
                Default::default()
            }
        };
        let usd_per_hour = prices.usd_per_hour(&session.driver, &session.settings);
        session.update(|mutable| mutable.usd_per_hour = Some(usd_per_hour));
        // The settings were validated at connect; a record from an older sandlink may not have been.
        let lifecycle = Lifecycle::from_settings(&session.settings).unwrap_or_default();
        self.lifecycle.watch_session(session, lifecycle.max_cost, usd_per_hour);
        self.audit.record(
            how,
            json!({
                "sessionId": session.id,
                "driver": session.driver,
                "profile": session.profile,
                "workspace": session.workspace.as_ref().map(|path| path.display().to_string()),
                "usdPerHour": usd_per_hour,
                "maxCost": lifecycle.max_cost,
                "who": self.who.as_str(),
            }),
        );
    }

    /// The limit a new run is held to: its own, its profile's, or the detached default.
    pub(super) fn run_limit(&self, session: &Session, params: &RunParams) -> Result<Option<RunLimit>> {
        let lifecycle = Lifecycle::from_settings(&session.settings).unwrap_or_default();
        if params.warn_at_seconds.as_ref().is_some_and(|warnings| warnings.contains(&0)) {
            return Err(Error::InvalidParams("`warnAtSeconds` are seconds after the start, each above zero.".into()));
        }
        Ok(RunLimit::for_run(&lifecycle, params.max_duration_seconds, params.warn_at_seconds.as_deref(), params.detach))
    }

    /// Records a run's start: the command and directory, the environment by name only.
    pub(super) fn audit_run_started(&self, run_id: &str, params: &RunParams, limit: Option<&RunLimit>) {
        let mut fields = audit::run_started(
            run_id,
            &params.session_id,
            &match &params.args {
                Some(args) => std::iter::once(params.command.clone()).chain(args.iter().cloned()).collect::<Vec<_>>().join(" "),
                None => params.command.clone(),
            },
            params.cwd.as_deref(),
            params.env.iter().flat_map(|env| env.keys().map(String::as_str)).collect(),
            self.who,
        );
        if let Some(limit) = limit {
            fields["maxDurationSeconds"] = json!(limit.max_duration.as_secs());
        }
        self.audit.record("runStarted", fields);
    }

    /// Records a session ending.
    pub(super) fn audit_session_ended(&self, session_id: &str, kept: bool) {
        self.audit.record("sessionEnded", json!({ "sessionId": session_id, "kept": kept, "who": self.who.as_str() }));
    }
}

/// The audit record of a run that ended.
pub(super) fn run_ended_fields(session_id: &str, exit: &ExitParams) -> serde_json::Value {
    json!({
        "runId": exit.run_id,
        "sessionId": session_id,
        "exitCode": exit.exit_code,
        "signal": exit.signal,
        "reason": exit.reason.map(|reason| reason.as_str()),
        "durationMs": exit.duration_ms,
        "costUsd": exit.cost.as_ref().map(|cost| cost.usd),
    })
}
