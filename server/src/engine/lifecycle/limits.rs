//! The lifecycle manager's limits and health: runs held to their hard limit (warnings at each threshold once, then
//! a snapshot where the driver can and a graceful stop with reason `runLimit`), sessions held to their `maxCost`,
//! keepalives that count as activity, and a heartbeat that marks a session whose sandbox stopped answering.
//!
//! The decisions are the pure functions of `crate::policy`; this module only keeps what was already done and
//! carries out what was decided, on the manager's clock (tests give it tokio's paused time).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde_json::json;
use time::OffsetDateTime;

use super::Manager;
use crate::engine::Session;
use crate::locks::lock;
use crate::policy::{self, RunDecision, RunLimit};
use crate::protocol::{ExitReason, LimitReason, SessionState, SessionStateParams, TimeoutWarningParams};

/// How often a session's sandbox is asked whether it still answers.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(60);
/// How long one heartbeat may take before it counts as unanswered.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(15);
/// Unanswered heartbeats in a row after which the session is marked `error`.
pub const HEARTBEAT_FAILURES: u32 = 3;
/// How long the snapshot taken at a limit may take before the stop goes ahead without it.
const LIMIT_SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);

/// One run held to a limit.
struct WatchedRun {
    session: Weak<Session>,
    limit: RunLimit,
    started: OffsetDateTime,
    warned: BTreeSet<u64>,
    stopping: bool,
    /// A detached run: not in the engine's table of runs, and stopped at its limit by its own wrapper in the
    /// sandbox; the manager only warns before that and forgets it once it ended (`forget_run`).
    detached: bool,
}

/// One session's cost limit and heartbeat.
struct WatchedSession {
    session: Weak<Session>,
    max_cost: Option<f64>,
    usd_per_hour: f64,
    started: OffsetDateTime,
    stopping: bool,
    next_heartbeat: OffsetDateTime,
    unanswered: u32,
    heartbeat_busy: bool,
}

/// What the manager keeps for limits and health; one per manager.
#[derive(Default)]
pub struct State {
    runs: Mutex<HashMap<String, WatchedRun>>,
    sessions: Mutex<HashMap<String, WatchedSession>>,
    keepalives: Mutex<HashMap<String, OffsetDateTime>>,
}

/// What one heartbeat heard.
enum Beat {
    Healthy,
    /// The provider answered that the sandbox failed (or, with `expired`, ended).
    Failed { sentence: String, expired: bool },
    /// No useful answer: an error or a timeout.
    Unanswered(String),
}

/// Something due for one run or session, found at a look and carried out on a task of its own.
enum Due {
    WarnRun { run_id: String, session: Arc<Session>, threshold_seconds: u64, seconds_left: u64, ends_at: OffsetDateTime },
    StopRun { run_id: String, session: Arc<Session>, limit: Duration },
    StopForCost { session: Arc<Session>, max_cost: f64, spent: f64 },
    Heartbeat { session: Arc<Session> },
}

impl Manager {
    /// Holds a run to `limit` from now on the manager's clock.
    pub fn watch_run(self: &Arc<Self>, run_id: &str, session: &Arc<Session>, limit: RunLimit) {
        let watched = WatchedRun {
            session: Arc::downgrade(session),
            limit,
            started: self.clock().now(),
            warned: BTreeSet::new(),
            stopping: false,
            detached: false,
        };
        lock(&self.limits().runs).insert(run_id.to_string(), watched);
        self.ensure_started();
    }

    /// Warns about a detached run nearing `limit` (its wrapper in the sandbox stops it there by itself).
    pub fn watch_detached_run(self: &Arc<Self>, run_id: &str, session: &Arc<Session>, limit: RunLimit) {
        self.watch_run(run_id, session, limit);
        if let Some(watched) = lock(&self.limits().runs).get_mut(run_id) {
            watched.detached = true;
        }
    }

    /// Stops watching a run that ended.
    pub fn forget_run(&self, run_id: &str) {
        lock(&self.limits().runs).remove(run_id);
    }

    /// Watches a session's health and, with `max_cost`, its cost at `usd_per_hour` since it started.
    pub fn watch_session(self: &Arc<Self>, session: &Arc<Session>, max_cost: Option<f64>, usd_per_hour: f64) {
        let now = self.clock().now();
        let started = OffsetDateTime::parse(&session.started_at, &time::format_description::well_known::Rfc3339).unwrap_or(now);
        let watched = WatchedSession {
            session: Arc::downgrade(session),
            max_cost,
            usd_per_hour,
            started,
            stopping: false,
            next_heartbeat: now + HEARTBEAT_EVERY,
            unanswered: 0,
            heartbeat_busy: false,
        };
        lock(&self.limits().sessions).insert(session.id.clone(), watched);
        self.ensure_started();
    }

    /// Records a keepalive: activity for the lease decision, by the manager's clock.
    pub fn note_keepalive(&self, session_id: &str) {
        let now = self.clock().now();
        lock(&self.limits().keepalives).insert(session_id.to_string(), now);
    }

    /// The last keepalive of a session, if any.
    pub(super) fn keepalive_of(&self, session_id: &str) -> Option<OffsetDateTime> {
        lock(&self.limits().keepalives).get(session_id).copied()
    }

    /// Moves the limit of the session's limited runs (only `run_id`'s when given) `seconds` later; answers the new
    /// end of the run ending soonest, or `None` when no such run is held to a limit.
    pub fn extend_run_limit(&self, session_id: &str, run_id: Option<&str>, seconds: u64) -> Option<OffsetDateTime> {
        let mut runs = lock(&self.limits().runs);
        let mut soonest: Option<OffsetDateTime> = None;
        for (id, watched) in runs.iter_mut() {
            let of_session = watched.session.upgrade().is_some_and(|session| session.id == session_id);
            if !of_session || run_id.is_some_and(|wanted| wanted != id) || watched.stopping {
                continue;
            }
            watched.limit.max_duration += Duration::from_secs(seconds);
            let ends_at = watched.started + watched.limit.max_duration;
            soonest = Some(soonest.map_or(ends_at, |soonest| soonest.min(ends_at)));
        }
        soonest
    }

    /// When a limited run of the session ends, for `SessionInfo` and the CLI's `status`.
    pub fn run_limit_end(&self, run_id: &str) -> Option<OffsetDateTime> {
        lock(&self.limits().runs).get(run_id).map(|watched| watched.started + watched.limit.max_duration)
    }

    /// How long until a limited run has a threshold or its limit due, so the manager can wake then.
    pub(super) fn until_next_limit_decision(&self, now: OffsetDateTime) -> Option<Duration> {
        lock(&self.limits().runs)
            .values()
            .filter(|watched| !watched.stopping)
            .map(|watched| {
                let elapsed = Duration::try_from(now - watched.started).unwrap_or_default();
                policy::until_next_run_decision(&watched.limit, elapsed, &watched.warned)
            })
            .min()
    }

    /// One look at every limited run and watched session; what is due is carried out on tasks of its own.
    pub(super) fn look_at_limits(self: &Arc<Self>, now: OffsetDateTime) {
        let mut due = Vec::new();
        {
            let runs_in_table = lock(self.run_table());
            let mut runs = lock(&self.limits().runs);
            runs.retain(|run_id, watched| {
                let Some(session) = watched.session.upgrade() else { return false };
                if !watched.detached && !runs_in_table.contains_key(run_id) {
                    return false;
                }
                if watched.stopping {
                    return true;
                }
                let elapsed = Duration::try_from(now - watched.started).unwrap_or_default();
                match policy::decide_run(&watched.limit, elapsed, &watched.warned) {
                    RunDecision::Nothing => {}
                    RunDecision::Warn { threshold_seconds, seconds_left } => {
                        watched.warned.insert(threshold_seconds);
                        let ends_at = watched.started + watched.limit.max_duration;
                        due.push(Due::WarnRun { run_id: run_id.clone(), session, threshold_seconds, seconds_left, ends_at });
                    }
                    // The wrapper of a detached run stops it at this same limit, even with no server.
                    RunDecision::Stop if watched.detached => return false,
                    RunDecision::Stop => {
                        watched.stopping = true;
                        due.push(Due::StopRun { run_id: run_id.clone(), session, limit: watched.limit.max_duration });
                    }
                }
                true
            });
        }
        {
            let mut sessions = lock(&self.limits().sessions);
            sessions.retain(|_, watched| {
                let Some(session) = watched.session.upgrade() else { return false };
                if matches!(session.state(), SessionState::Disconnected | SessionState::Expired | SessionState::Error) {
                    return false;
                }
                let spent = crate::cost::spent(watched.usd_per_hour, (now - watched.started).as_seconds_f64());
                if !watched.stopping && policy::over_cost(watched.max_cost, spent) {
                    watched.stopping = true;
                    let max_cost = watched.max_cost.unwrap_or_default();
                    due.push(Due::StopForCost { session: session.clone(), max_cost, spent });
                }
                if !watched.heartbeat_busy && now >= watched.next_heartbeat {
                    watched.heartbeat_busy = true;
                    due.push(Due::Heartbeat { session });
                }
                true
            });
        }
        for item in due {
            let manager = self.clone();
            tokio::spawn(async move { manager.carry_out_limit(item).await });
        }
    }

    async fn carry_out_limit(self: Arc<Self>, item: Due) {
        match item {
            Due::WarnRun { run_id, session, threshold_seconds, seconds_left, ends_at } => {
                tracing::info!(%run_id, threshold_seconds, seconds_left, "a run nears its limit");
                self.events()
                    .timeout_warning(TimeoutWarningParams {
                        session_id: session.id.clone(),
                        expires_at: super::rfc3339(ends_at),
                        seconds_left,
                        reason: Some(LimitReason::RunLimit),
                        run_id: Some(run_id),
                    })
                    .await;
            }
            Due::StopRun { run_id, session, limit } => {
                let message = format!(
                    "The run was stopped at its limit of {} (maxDuration); extend it with `sandlink extend` before the limit \
                     to let it go on.",
                    policy::describe(limit)
                );
                self.stop_runs(&session, Some(&run_id), ExitReason::RunLimit, message).await;
            }
            Due::StopForCost { session, max_cost, spent } => {
                let message = format!(
                    "The run was stopped because session {} reached its cost limit of ${max_cost:.2} (about ${spent:.2} so far).",
                    session.id
                );
                let snapshot = self.stop_runs(&session, None, ExitReason::CostLimit, message).await;
                let kept_as = match snapshot {
                    Some(snapshot_id) => format!(" A snapshot was taken first: {snapshot_id}."),
                    None => String::new(),
                };
                let sentence = format!(
                    "Session {} reached its cost limit of ${max_cost:.2} (about ${spent:.2} so far), so its runs were stopped \
                     and sandlink no longer keeps its sandbox alive (a cloud sandbox ends at its own timeout).{kept_as} \
                     Disconnect it to remove the sandbox now, or connect again to go on.",
                    session.id
                );
                self.audit().record("costLimit", json!({ "sessionId": session.id, "maxCost": max_cost, "spentUsd": spent }));
                session.update(|mutable| {
                    mutable.state = SessionState::Expired;
                    mutable.message = Some(sentence.clone());
                });
                self.events()
                    .session_state(SessionStateParams { session_id: session.id.clone(), state: SessionState::Expired, message: Some(sentence) })
                    .await;
            }
            Due::Heartbeat { session } => {
                let answered = tokio::time::timeout(HEARTBEAT_TIMEOUT, session.sandbox.status()).await;
                let answer = match answered {
                    Ok(Ok(status)) => match status.failure {
                        None => Beat::Healthy,
                        Some(failure) => Beat::Failed { sentence: failure, expired: status.expired },
                    },
                    Ok(Err(error)) => Beat::Unanswered(format!("it answered with an error: {error}")),
                    Err(_) => Beat::Unanswered(format!("it did not answer within {} s", HEARTBEAT_TIMEOUT.as_secs())),
                };
                self.heartbeat_answered(&session, answer).await;
            }
        }
    }

    /// Counts a heartbeat's answer; marks the session once its sandbox failed `HEARTBEAT_FAILURES` times in a row
    /// (or said itself that it failed).
    async fn heartbeat_answered(&self, session: &Session, answer: Beat) {
        let now = self.clock().now();
        let verdict = {
            let mut sessions = lock(&self.limits().sessions);
            let Some(watched) = sessions.get_mut(&session.id) else { return };
            watched.heartbeat_busy = false;
            watched.next_heartbeat = now + HEARTBEAT_EVERY;
            match answer {
                Beat::Healthy => {
                    watched.unanswered = 0;
                    None
                }
                // The provider itself said the sandbox failed or ended: no need to ask again.
                Beat::Failed { sentence, expired } => Some((sentence, expired)),
                Beat::Unanswered(why) => {
                    watched.unanswered += 1;
                    (watched.unanswered >= HEARTBEAT_FAILURES).then(|| {
                        let sentence = format!(
                            "The sandbox stopped answering: {} health checks in a row failed (the last: {why}). \
                             Check the provider or your network, then connect again.",
                            watched.unanswered
                        );
                        (sentence, false)
                    })
                }
            }
        };
        let Some((sentence, expired)) = verdict else { return };
        if matches!(session.state(), SessionState::Disconnected | SessionState::Expired | SessionState::Error) {
            return;
        }
        let state = if expired { SessionState::Expired } else { SessionState::Error };
        tracing::warn!(session_id = %session.id, %sentence, "a session failed its heartbeat");
        session.update(|mutable| {
            mutable.state = state;
            mutable.message = Some(sentence.clone());
        });
        self.events()
            .session_state(SessionStateParams { session_id: session.id.clone(), state, message: Some(sentence) })
            .await;
    }

    /// At a limit: a snapshot where the driver can (a failure is logged, not fatal), then a graceful stop of the
    /// session's runs (only `run_id` when given) with `reason`; answers the snapshot's id.
    async fn stop_runs(&self, session: &Session, run_id: Option<&str>, reason: ExitReason, message: String) -> Option<String> {
        let name = format!("sandlink-{}-{}", reason.as_str(), run_id.unwrap_or(&session.id));
        let snapshot = tokio::time::timeout(LIMIT_SNAPSHOT_TIMEOUT, session.sandbox.snapshot(Some(name.clone()))).await;
        let snapshot_id = match snapshot {
            Ok(Ok(snapshot_id)) => {
                self.audit().record(
                    "snapshot",
                    json!({ "sessionId": session.id, "snapshotId": snapshot_id, "name": name, "why": reason.as_str(), "runId": run_id }),
                );
                Some(snapshot_id)
            }
            Ok(Err(error)) => {
                tracing::info!(session_id = %session.id, %error, "no snapshot at the limit; stopping anyway");
                None
            }
            Err(_) => {
                tracing::warn!(session_id = %session.id, "the snapshot at the limit took too long; stopping anyway");
                None
            }
        };
        let handles: Vec<_> = lock(self.run_table())
            .iter()
            .filter(|(id, handle)| handle.session_id == session.id && run_id.is_none_or(|wanted| wanted == id.as_str()))
            .map(|(_, handle)| handle.clone())
            .collect();
        for handle in handles {
            self.audit().record(
                "limitReached",
                json!({ "sessionId": session.id, "runId": handle.run_id, "reason": reason.as_str(), "snapshotId": snapshot_id }),
            );
            handle.stop_because(reason, message.clone());
        }
        snapshot_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::{ExitStatus, Lease, Process, ProcessControl, SandboxStatus, Signal};
    use crate::engine::lifecycle::Clock;
    use crate::engine::run::{self, RunContext, RunHandle};
    use crate::engine::Events;
    use crate::protocol::{ExitParams, OutputParams, PreviewReadyParams, SyncStateParams};
    use std::sync::atomic::{AtomicBool, Ordering};

    /// What happened, in order, across the sandbox and the run's process.
    type Journal = Arc<Mutex<Vec<String>>>;

    /// A sandbox that records snapshots, can stop answering, and may have a lease.
    struct Recording {
        journal: Journal,
        failing: AtomicBool,
        lease: Mutex<Option<Lease>>,
        extensions: Mutex<u32>,
    }

    #[async_trait::async_trait]
    impl crate::drivers::Sandbox for Recording {
        fn driver_id(&self) -> &'static str {
            "recording"
        }

        fn remote_root(&self) -> String {
            "/".into()
        }

        async fn snapshot(&self, name: Option<String>) -> crate::error::Result<String> {
            lock(&self.journal).push(format!("snapshot {}", name.unwrap_or_default()));
            Ok("snap-1".into())
        }

        fn lease(&self) -> Option<Lease> {
            lock(&self.lease).clone()
        }

        async fn extend(&self, seconds: u64) -> crate::error::Result<String> {
            *lock(&self.extensions) += 1;
            let mut lease = lock(&self.lease);
            let lease = lease.as_mut().expect("a lease");
            lease.expires_at += time::Duration::seconds(seconds as i64);
            Ok(super::super::rfc3339(lease.expires_at))
        }

        async fn status(&self) -> crate::error::Result<SandboxStatus> {
            if self.failing.load(Ordering::SeqCst) {
                return Err(crate::error::Error::Remote { status: Some(502), message: "the provider is down".into() });
            }
            Ok(SandboxStatus::default())
        }

        async fn disconnect(&self, _keep: bool) -> crate::error::Result<()> {
            Ok(())
        }
    }

    /// A process that runs until it is sent SIGTERM, recording the signals.
    struct Control {
        journal: Journal,
        terminated: tokio::sync::Notify,
    }

    #[async_trait::async_trait]
    impl ProcessControl for Control {
        async fn signal(&self, signal: Signal) -> crate::error::Result<()> {
            lock(&self.journal).push(format!("{signal:?}"));
            if matches!(signal, Signal::Terminate) {
                self.terminated.notify_one();
            }
            Ok(())
        }
    }

    fn endless_process(journal: &Journal) -> Process {
        let control = Arc::new(Control { journal: journal.clone(), terminated: tokio::sync::Notify::new() });
        let waiting = control.clone();
        Process {
            stdout: Box::pin(tokio::io::empty()),
            stderr: Box::pin(tokio::io::empty()),
            stdin: None,
            control,
            exit: Box::pin(async move {
                waiting.terminated.notified().await;
                Ok(ExitStatus { code: None, signal: Some("SIGTERM".into()), message: None })
            }),
        }
    }

    #[derive(Default)]
    struct Heard {
        warnings: Mutex<Vec<TimeoutWarningParams>>,
        exits: Mutex<Vec<ExitParams>>,
        states: Mutex<Vec<(SessionState, Option<String>)>>,
    }

    #[async_trait::async_trait]
    impl Events for Heard {
        async fn output(&self, _params: OutputParams) {}
        async fn exit(&self, params: ExitParams) {
            lock(&self.exits).push(params);
        }
        async fn session_state(&self, params: SessionStateParams) {
            lock(&self.states).push((params.state, params.message));
        }
        async fn sync_state(&self, _params: SyncStateParams) {}
        async fn preview_ready(&self, _params: PreviewReadyParams) {}
        async fn timeout_warning(&self, params: TimeoutWarningParams) {
            lock(&self.warnings).push(params);
        }
    }

    /// Wall time that follows tokio's clock, so paused time moves it, plus `late`: how far behind each look's wake-up
    /// runs, as on a busy machine.
    struct PausedClock {
        start: OffsetDateTime,
        started: tokio::time::Instant,
        late: Mutex<Duration>,
    }

    impl Clock for PausedClock {
        fn now(&self) -> OffsetDateTime {
            self.start + self.started.elapsed() + *lock(&self.late)
        }
    }

    struct Setup {
        manager: Arc<Manager>,
        session: Arc<Session>,
        sandbox: Arc<Recording>,
        heard: Arc<Heard>,
        journal: Journal,
        runs: Arc<Mutex<HashMap<String, Arc<RunHandle>>>>,
        clock: Arc<PausedClock>,
        logs: tempfile::TempDir,
    }

    fn setup(lease: Option<Lease>) -> Setup {
        let journal: Journal = Arc::default();
        let sandbox = Arc::new(Recording { journal: journal.clone(), failing: AtomicBool::new(false), lease: Mutex::new(lease), extensions: Mutex::new(0) });
        let session = Arc::new(Session::new("s1".into(), "recording".into(), None, None, sandbox.clone()));
        session.update(|mutable| mutable.state = SessionState::Active);
        let heard = Arc::new(Heard::default());
        let runs: Arc<Mutex<HashMap<String, Arc<RunHandle>>>> = Arc::default();
        let clock = Arc::new(PausedClock {
            start: OffsetDateTime::now_utc(),
            started: tokio::time::Instant::now(),
            late: Mutex::new(Duration::ZERO),
        });
        let manager = Manager::new(clock.clone(), runs.clone(), heard.clone());
        Setup { manager, session, sandbox, heard, journal, runs, clock, logs: tempfile::tempdir().expect("a log dir") }
    }

    impl Setup {
        /// Starts an endless run in the session and puts it in the table, as the engine does.
        fn start_run(&self, run_id: &str) -> Arc<RunHandle> {
            let context = RunContext {
                run_id: run_id.into(),
                session_id: self.session.id.clone(),
                events: self.heard.clone(),
                log_path: self.logs.path().join(format!("{run_id}.log")),
                command: "agent --work".into(),
                timeout: None,
                lossless: false,
                paths: None,
                stdin_refusal: None,
                usd_per_hour: Some(3.6),
                terminal: false,
                log_cap: crate::profiles::runs::DEFAULT_LOG_CAP_BYTES,
            };
            let (handle, answered, task) = run::start(context, endless_process(&self.journal)).expect("a run");
            let _ = answered.send(());
            lock(&self.runs).insert(run_id.into(), handle.clone());
            let runs = self.runs.clone();
            let finished = handle.clone();
            tokio::spawn(async move {
                let _ = task.await;
                lock(&runs).remove(&finished.run_id);
            });
            handle
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_should_be_warned_at_each_threshold_once_then_snapshotted_and_stopped_with_its_reason() {
        let setup = setup(None);
        setup.start_run("run-1");
        let limit = RunLimit::for_run(&policy::Lifecycle::default(), None, None, true).expect("the detached default");
        setup.manager.watch_run("run-1", &setup.session, limit);
        tokio::time::sleep(Duration::from_secs(3599)).await;
        let warnings: Vec<(Option<LimitReason>, Option<String>, u64)> = lock(&setup.heard.warnings)
            .iter()
            .map(|warning| (warning.reason, warning.run_id.clone(), warning.seconds_left))
            .collect();
        let run = Some("run-1".to_string());
        assert_eq!(
            warnings,
            vec![(Some(LimitReason::RunLimit), run.clone(), 1800), (Some(LimitReason::RunLimit), run.clone(), 600)],
            "warned at 30 and 50 minutes, once each"
        );
        assert!(lock(&setup.heard.exits).is_empty(), "still running before its hour");
        tokio::time::sleep(Duration::from_secs(10)).await;
        let exits = lock(&setup.heard.exits).clone();
        assert_eq!(exits.len(), 1, "{exits:?}");
        assert_eq!(exits[0].reason, Some(ExitReason::RunLimit));
        assert!(!exits[0].cancelled && !exits[0].timed_out);
        let message = exits[0].message.clone().unwrap_or_default();
        assert!(message.contains("limit of 1h"), "{message}");
        assert!(exits[0].cost.is_some(), "the run's share of the cost is in its exit");
        let journal = lock(&setup.journal).clone();
        assert_eq!(journal.first().map(String::as_str), Some("snapshot sandlink-runLimit-run-1"), "{journal:?}");
        assert_eq!(journal.get(1).map(String::as_str), Some("Terminate"), "the snapshot comes before the stop: {journal:?}");
        assert_eq!(lock(&setup.heard.warnings).len(), 2, "no warning after the stop");
    }

    #[tokio::test(start_paused = true)]
    async fn a_detached_run_should_be_warned_at_each_threshold_and_left_to_its_own_wrapper_at_the_limit() {
        let setup = setup(None);
        // Not in the engine's table: a detached run lives in its sandbox, followed apart from the table.
        let limit = RunLimit::for_run(&policy::Lifecycle::default(), None, None, true).expect("the detached default");
        setup.manager.watch_detached_run("run-d", &setup.session, limit);
        tokio::time::sleep(Duration::from_secs(3599)).await;
        let warned: Vec<u64> = lock(&setup.heard.warnings).iter().map(|warning| warning.seconds_left).collect();
        assert_eq!(warned, vec![1800, 600], "warned at 30 and 50 minutes, once each");
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(lock(&setup.heard.exits).is_empty(), "its wrapper stops it; the manager sends no exit of its own");
        assert!(lock(&setup.journal).is_empty(), "no snapshot or signal from the manager");
        assert!(setup.manager.run_limit_end("run-d").is_none(), "forgotten at its limit");

        setup.manager.watch_detached_run("run-e", &setup.session, RunLimit { max_duration: Duration::from_secs(600), warn_at: vec![Duration::from_secs(300)] });
        setup.manager.forget_run("run-e");
        tokio::time::sleep(Duration::from_secs(400)).await;
        assert_eq!(lock(&setup.heard.warnings).len(), 2, "a run that ended is not warned about");
    }

    #[tokio::test(start_paused = true)]
    async fn a_warning_one_tick_before_the_limit_should_be_heard_when_the_looks_run_late() {
        let setup = setup(None);
        // Starts the manager's ticks at t = 0 s.
        let long = RunLimit { max_duration: Duration::from_secs(100), warn_at: vec![] };
        setup.manager.watch_detached_run("run-long", &setup.session, long);
        tokio::time::sleep(Duration::from_millis(1)).await;
        let short = RunLimit { max_duration: Duration::from_secs(2), warn_at: vec![Duration::from_secs(1)] };
        setup.manager.watch_detached_run("run-short", &setup.session, short);
        // The tick at 1 s finds the run 1 ms short of its warning. Looks then run 2 ms late, so the tick at 2 s would
        // find it past its limit: the warning must have been heard in between.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        *lock(&setup.clock.late) = Duration::from_millis(2);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let heard: Vec<(Option<String>, u64)> =
            lock(&setup.heard.warnings).iter().map(|warning| (warning.run_id.clone(), warning.seconds_left)).collect();
        assert_eq!(heard, vec![(Some("run-short".to_string()), 1)], "warned once, before its limit");
        assert!(setup.manager.run_limit_end("run-short").is_none(), "then left to its wrapper at the limit");
    }

    #[tokio::test(start_paused = true)]
    async fn an_extended_run_limit_should_move_the_stop() {
        let setup = setup(None);
        setup.start_run("run-2");
        let limit = RunLimit { max_duration: Duration::from_secs(60), warn_at: vec![] };
        setup.manager.watch_run("run-2", &setup.session, limit);
        tokio::time::sleep(Duration::from_secs(30)).await;
        let new_end = setup.manager.extend_run_limit("s1", Some("run-2"), 120).expect("a limited run");
        assert_eq!(setup.manager.run_limit_end("run-2"), Some(new_end));
        assert!(setup.manager.extend_run_limit("s1", Some("run-other"), 120).is_none());
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert!(lock(&setup.heard.exits).is_empty(), "not stopped at the old limit");
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(lock(&setup.heard.exits).first().and_then(|exit| exit.reason), Some(ExitReason::RunLimit));
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_over_its_max_cost_should_stop_its_runs_with_the_reason_and_expire() {
        let setup = setup(None);
        setup.start_run("run-3");
        // A dollar a second: five dollars in five seconds.
        setup.manager.watch_session(&setup.session, Some(5.0), 3600.0);
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(lock(&setup.heard.exits).is_empty(), "under its limit");
        tokio::time::sleep(Duration::from_secs(5)).await;
        let exits = lock(&setup.heard.exits).clone();
        assert_eq!(exits.first().and_then(|exit| exit.reason), Some(ExitReason::CostLimit), "{exits:?}");
        assert_eq!(setup.session.state(), SessionState::Expired);
        let states = lock(&setup.heard.states).clone();
        let message = states.last().and_then(|(_, message)| message.clone()).unwrap_or_default();
        assert!(message.contains("cost limit of $5.00") && message.contains("snap-1"), "{message}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_sandbox_that_stops_answering_should_mark_its_session_after_a_few_heartbeats() {
        let setup = setup(None);
        setup.manager.watch_session(&setup.session, None, 0.0);
        // Between two heartbeats, so the count below is exact.
        tokio::time::sleep(HEARTBEAT_EVERY * 3 + Duration::from_secs(30)).await;
        assert_eq!(setup.session.state(), SessionState::Active, "a healthy sandbox is left alone");
        setup.sandbox.failing.store(true, Ordering::SeqCst);
        tokio::time::sleep(HEARTBEAT_EVERY * 2 + Duration::from_secs(5)).await;
        assert_eq!(setup.session.state(), SessionState::Active, "two failures are not enough");
        tokio::time::sleep(HEARTBEAT_EVERY).await;
        assert_eq!(setup.session.state(), SessionState::Error);
        let states = lock(&setup.heard.states).clone();
        assert_eq!(states.len(), 1, "{states:?}");
        let message = states[0].1.clone().unwrap_or_default();
        assert!(message.contains("stopped answering") && message.contains("provider is down"), "{message}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_keepalive_should_count_as_activity_and_keep_an_idle_sandbox_alive() {
        let start = OffsetDateTime::now_utc();
        let lease = Lease { expires_at: start + time::Duration::seconds(120), extend_seconds: 120, idle_window: Duration::from_secs(60), gone: None };
        let setup = setup(Some(lease));
        // The session's own activity is long past: only keepalives say it is in use.
        setup.session.update(|mutable| mutable.last_activity = "2000-01-01T00:00:00Z".into());
        setup.manager.watch(&setup.session);
        for _ in 0..20 {
            setup.manager.note_keepalive("s1");
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        assert!(*lock(&setup.sandbox.extensions) >= 4, "ten minutes on a two-minute lease were kept alive");
        assert!(lock(&setup.heard.warnings).is_empty(), "a kept-alive session is not warned");
        assert_eq!(setup.session.state(), SessionState::Active);
    }
}
