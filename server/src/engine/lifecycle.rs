//! Keeping cloud sandboxes alive: one manager watches every session whose sandbox has a lease, extends it while the
//! session is in use, warns (`sandlink/timeoutWarning`) before an idle one expires, and turns the session `expired`
//! once it is gone.
//!
//! The decision is a pure function (`decide`: lease, activity, what was already done, now -> what to do), so every
//! rule is unit-tested without waiting; the manager around it reads the time from an injectable `Clock` and is
//! tested with tokio's paused time. Generic over drivers: it needs only `Sandbox::lease` (answered without a
//! request), `extend` and `status`. A session is in use while a run is in flight or its last activity (runs, syncs,
//! saves) is within the driver's idle window.

// Run limits, cost limits and the health heartbeat: more of the manager's one look a second, in a file of its own.
mod limits;

use crate::locks::lock;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use time::OffsetDateTime;

use super::run::RunHandle;
use super::{Events, Session};
use crate::drivers::Lease;
use crate::protocol::{SessionState, SessionStateParams, TimeoutWarningParams};

/// How often the manager looks at its sessions; a lease is checked without a request, so this is cheap.
const TICK: Duration = Duration::from_secs(1);
/// The shortest the manager sleeps between looks, so something due now cannot make it spin.
const MIN_WAIT: Duration = Duration::from_millis(1);
/// Extend at most this long before the end, and no earlier than half an extension before it.
const MAX_MARGIN: Duration = Duration::from_secs(60);
/// Idle sessions are warned at each of these times before the end that fits in half an extension, and always at
/// the extension margin.
const WARNINGS: [Duration; 2] = [Duration::from_secs(300), Duration::from_secs(60)];
/// After a failed extension, how long before it is tried again; the user is warned meanwhile.
const EXTEND_RETRY: Duration = Duration::from_secs(5);

/// Where the manager reads the time; tests give it one that follows tokio's paused clock.
pub trait Clock: Send + Sync {
    fn now(&self) -> OffsetDateTime;
}

/// The system's wall clock, which leases from providers are given in.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// What the manager sees of a session's use at one look.
#[derive(Debug, Clone, Copy)]
pub struct Activity {
    pub runs_in_flight: bool,
    /// The last run, sync or save, if known.
    pub last_activity: Option<OffsetDateTime>,
}

/// What the manager already did for one session, which the decision needs so it warns once and retries calmly.
#[derive(Debug, Default, Clone)]
pub struct Watch {
    /// Warnings given, as (the expiry they were for, the threshold in seconds).
    warned: BTreeSet<(i128, u64)>,
    /// When the last extension failed, for the expiry it tried to move.
    extend_failed: Option<(OffsetDateTime, OffsetDateTime)>,
}

/// What to do about a session now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Nothing,
    /// In use and close to the end: extend by the lease's extension.
    Extend,
    /// Idle (or an extension failed) and a warning threshold is reached: tell the user once.
    Warn { threshold_seconds: u64, seconds_left: u64 },
    /// Past the end by this clock: ask the provider, which may have extended or ended it.
    AskProvider,
    /// The sandbox is gone, with the sentence to show.
    Expire(String),
}

/// How close to the end a session in use is extended.
fn extend_margin(lease: &Lease) -> Duration {
    MAX_MARGIN.min(Duration::from_secs(lease.extend_seconds) / 2)
}

/// The warning thresholds of a lease, longest first: each of `WARNINGS` that fits in half an extension, and the
/// extension margin itself.
fn warning_thresholds(lease: &Lease) -> Vec<u64> {
    let margin = extend_margin(lease);
    let mut thresholds: Vec<u64> = WARNINGS
        .iter()
        .filter(|threshold| **threshold <= Duration::from_secs(lease.extend_seconds) / 2)
        .chain(std::iter::once(&margin))
        .map(Duration::as_secs)
        .collect();
    thresholds.sort_unstable_by(|left, right| right.cmp(left));
    thresholds.dedup();
    thresholds
}

/// The whole policy: what to do about one session, given its lease, its use, what was already done, and the time.
pub fn decide(lease: &Lease, activity: &Activity, watch: &Watch, now: OffsetDateTime) -> Decision {
    if let Some(gone) = &lease.gone {
        return Decision::Expire(format!("The sandbox is gone: {gone} It most likely reached its timeout; connect again."));
    }
    let remaining = lease.expires_at - now;
    if !remaining.is_positive() {
        return Decision::AskProvider;
    }
    let in_use = activity.runs_in_flight
        || activity.last_activity.is_some_and(|when| now - when < lease.idle_window);
    let retry_pending = watch
        .extend_failed
        .is_some_and(|(failed_at, for_expiry)| for_expiry == lease.expires_at && now - failed_at < EXTEND_RETRY);
    if in_use && remaining <= extend_margin(lease) && !retry_pending {
        return Decision::Extend;
    }
    // Idle, or in use but the extension just failed: the user hears of each threshold the end has come within.
    let failed_for_this_end = watch.extend_failed.is_some_and(|(_, for_expiry)| for_expiry == lease.expires_at);
    if in_use && !failed_for_this_end {
        return Decision::Nothing;
    }
    let expiry_key = lease.expires_at.unix_timestamp_nanos();
    // Only the closest threshold reached is warned; those passed unwarned (a session gone idle late) are skipped.
    let reached = warning_thresholds(lease).into_iter().rfind(|threshold| remaining <= Duration::from_secs(*threshold));
    match reached {
        Some(threshold) if !watch.warned.contains(&(expiry_key, threshold)) => Decision::Warn {
            threshold_seconds: threshold,
            seconds_left: remaining.whole_seconds().max(0) as u64,
        },
        _ => Decision::Nothing,
    }
}

type RunTable = Arc<Mutex<HashMap<String, Arc<RunHandle>>>>;

/// One watched session: the session (weakly, so a disconnected one is dropped), what was done for it, and whether a
/// provider call for it is under way (the next look waits for it rather than asking twice).
struct Watched {
    session: Weak<Session>,
    watch: Watch,
    busy: bool,
}

/// The one lifecycle manager of an engine: a single task looking at every session with a lease once a `TICK`.
pub struct Manager {
    clock: Arc<dyn Clock>,
    runs: RunTable,
    events: Arc<dyn Events>,
    watched: Arc<Mutex<HashMap<String, Watched>>>,
    started: std::sync::Once,
    /// Run limits, cost limits, keepalives and heartbeats (see `limits`).
    limits: limits::State,
    audit: Arc<super::audit::Audit>,
    /// How often it looks, in milliseconds (`TICK`; tests that drive a fake's clock look more often).
    tick_ms: std::sync::atomic::AtomicU64,
}

impl Manager {
    pub fn new(clock: Arc<dyn Clock>, runs: RunTable, events: Arc<dyn Events>) -> Arc<Self> {
        Manager::with_audit(clock, runs, events, Arc::new(super::audit::Audit::disabled()))
    }

    /// A manager that records what it does at a limit (snapshots, stops) in `audit`.
    pub fn with_audit(clock: Arc<dyn Clock>, runs: RunTable, events: Arc<dyn Events>, audit: Arc<super::audit::Audit>) -> Arc<Self> {
        Arc::new(Manager {
            clock,
            runs,
            events,
            watched: Arc::default(),
            started: std::sync::Once::new(),
            limits: limits::State::default(),
            audit,
            tick_ms: std::sync::atomic::AtomicU64::new(TICK.as_millis() as u64),
        })
    }

    /// Sets how often the manager looks.
    pub fn set_tick(&self, tick: Duration) {
        self.tick_ms.store(tick.as_millis().max(1) as u64, std::sync::atomic::Ordering::Relaxed);
    }

    pub(super) fn clock(&self) -> &dyn Clock {
        &*self.clock
    }

    pub(super) fn limits(&self) -> &limits::State {
        &self.limits
    }

    pub(super) fn run_table(&self) -> &Mutex<HashMap<String, Arc<RunHandle>>> {
        &self.runs
    }

    pub(super) fn events(&self) -> &dyn Events {
        &*self.events
    }

    pub(super) fn audit(&self) -> &super::audit::Audit {
        &self.audit
    }

    /// Starts the manager's one task, once.
    pub(super) fn ensure_started(self: &Arc<Self>) {
        self.started.call_once(|| {
            let manager = Arc::downgrade(self);
            tokio::spawn(async move { Manager::run(manager).await });
        });
    }

    /// Starts watching a session whose sandbox has a lease; does nothing for drivers without one. Must be called
    /// within the tokio runtime (the manager's task starts with its first session).
    pub fn watch(self: &Arc<Self>, session: &Arc<Session>) {
        if session.sandbox.lease().is_none() {
            return;
        }
        let watched = Watched { session: Arc::downgrade(session), watch: Watch::default(), busy: false };
        lock(&self.watched).insert(session.id.clone(), watched);
        self.ensure_started();
    }

    async fn run(manager: Weak<Manager>) {
        loop {
            let wait = match manager.upgrade() {
                Some(manager) => {
                    let tick = Duration::from_millis(manager.tick_ms.load(std::sync::atomic::Ordering::Relaxed));
                    // A run's threshold or limit due before the next tick is looked at when it is due: ticks drift
                    // later by each look's own time, and one landing just before a warning one tick ahead of the
                    // limit would otherwise meet the limit first and the warning would be lost.
                    let due = manager.until_next_limit_decision(manager.clock.now()).unwrap_or(tick);
                    tick.min(due).max(MIN_WAIT)
                }
                None => return,
            };
            tokio::time::sleep(wait).await;
            let Some(manager) = manager.upgrade() else { return };
            manager.look().await;
        }
    }

    /// One look at every watched session: decides each, and starts what it decided.
    async fn look(self: &Arc<Self>) {
        let now = self.clock.now();
        self.look_at_limits(now);
        let mut due = Vec::new();
        {
            let mut watched = lock(&self.watched);
            watched.retain(|_, entry| {
                let Some(session) = entry.session.upgrade() else { return false };
                if matches!(session.state(), SessionState::Disconnected | SessionState::Expired | SessionState::Error) {
                    return false;
                }
                let Some(lease) = session.sandbox.lease() else { return false };
                if entry.busy {
                    return true;
                }
                session.update(|mutable| mutable.expires_at = Some(rfc3339(lease.expires_at)));
                // A keepalive counts as activity, by this manager's clock.
                let last_activity = last_activity(&session).max(self.keepalive_of(&session.id));
                let activity = Activity { runs_in_flight: runs_in_flight(&self.runs, &session.id), last_activity };
                let decision = decide(&lease, &activity, &entry.watch, now);
                match decision {
                    Decision::Nothing => {}
                    Decision::Warn { threshold_seconds, .. } => {
                        entry.watch.warned.insert((lease.expires_at.unix_timestamp_nanos(), threshold_seconds));
                        due.push((session, lease, decision));
                    }
                    Decision::Extend | Decision::AskProvider | Decision::Expire(_) => {
                        entry.busy = true;
                        due.push((session, lease, decision));
                    }
                }
                true
            });
        }
        for (session, lease, decision) in due {
            let manager = self.clone();
            // Each session's provider call runs on its own, so one slow provider never delays another session.
            tokio::spawn(async move { manager.carry_out(session, lease, decision).await });
        }
    }

    async fn carry_out(self: Arc<Self>, session: Arc<Session>, lease: Lease, decision: Decision) {
        let mut finished = false;
        let mut extend_failed = None;
        match decision {
            Decision::Nothing => {}
            Decision::Warn { seconds_left, .. } => {
                self.events
                    .timeout_warning(TimeoutWarningParams {
                        session_id: session.id.clone(),
                        expires_at: rfc3339(lease.expires_at),
                        seconds_left,
                        reason: Some(crate::protocol::LimitReason::SandboxExpiry),
                        run_id: None,
                    })
                    .await;
            }
            Decision::Extend => match session.sandbox.extend(lease.extend_seconds).await {
                Ok(new_expiry) => {
                    tracing::debug!(session_id = %session.id, %new_expiry, "extended a sandbox in use");
                    session.update(|mutable| mutable.expires_at = Some(new_expiry));
                }
                Err(error) => {
                    tracing::warn!(session_id = %session.id, %error, "could not extend a sandbox in use");
                    extend_failed = Some((self.clock.now(), lease.expires_at));
                }
            },
            Decision::AskProvider => match session.sandbox.status().await {
                Ok(status) if status.expired => {
                    let message = status.failure.unwrap_or_else(|| "The sandbox reached its timeout.".into());
                    self.expire(&session, message).await;
                    finished = true;
                }
                Ok(_) => {}
                Err(error) => tracing::debug!(session_id = %session.id, %error, "could not check an expired lease"),
            },
            Decision::Expire(message) => {
                self.expire(&session, message).await;
                finished = true;
            }
        }
        let mut watched = lock(&self.watched);
        if finished {
            watched.remove(&session.id);
        } else if let Some(entry) = watched.get_mut(&session.id) {
            entry.busy = false;
            if extend_failed.is_some() {
                entry.watch.extend_failed = extend_failed;
            }
        }
    }

    async fn expire(&self, session: &Session, message: String) {
        session.update(|mutable| {
            mutable.state = SessionState::Expired;
            mutable.message = Some(message.clone());
        });
        self.events
            .session_state(SessionStateParams { session_id: session.id.clone(), state: SessionState::Expired, message: Some(message) })
            .await;
    }
}


pub(super) fn rfc3339(when: OffsetDateTime) -> String {
    when.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

fn runs_in_flight(runs: &RunTable, session_id: &str) -> bool {
    lock(runs).values().any(|run| run.session_id == session_id)
}

fn last_activity(session: &Session) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(&session.info().last_activity, &time::format_description::well_known::Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease_ending(now: OffsetDateTime, seconds_left: i64, extend_seconds: u64) -> Lease {
        Lease {
            expires_at: now + time::Duration::seconds(seconds_left),
            extend_seconds,
            idle_window: Duration::from_secs(120),
            gone: None,
        }
    }

    fn idle() -> Activity {
        Activity { runs_in_flight: false, last_activity: None }
    }

    fn at() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("a valid time")
    }

    #[test]
    fn a_session_with_a_run_in_flight_should_be_extended_near_its_end_and_not_before() {
        let now = at();
        let busy = Activity { runs_in_flight: true, last_activity: None };
        assert_eq!(decide(&lease_ending(now, 3600, 3600), &busy, &Watch::default(), now), Decision::Nothing);
        assert_eq!(decide(&lease_ending(now, 61, 3600), &busy, &Watch::default(), now), Decision::Nothing);
        assert_eq!(decide(&lease_ending(now, 60, 3600), &busy, &Watch::default(), now), Decision::Extend);
        // A short lease is extended at half an extension before its end.
        assert_eq!(decide(&lease_ending(now, 3, 6), &busy, &Watch::default(), now), Decision::Extend);
    }

    #[test]
    fn recent_activity_should_count_as_use_until_the_idle_window_passes() {
        let now = at();
        let lease = lease_ending(now, 30, 3600);
        let recent = Activity { runs_in_flight: false, last_activity: Some(now - time::Duration::seconds(119)) };
        assert_eq!(decide(&lease, &recent, &Watch::default(), now), Decision::Extend);
        let stale = Activity { runs_in_flight: false, last_activity: Some(now - time::Duration::seconds(121)) };
        assert!(matches!(decide(&lease, &stale, &Watch::default(), now), Decision::Warn { .. }));
    }

    #[test]
    fn an_idle_session_should_be_warned_once_at_each_threshold() {
        let start = at();
        let expires_at = start + time::Duration::seconds(3600);
        let lease = Lease { expires_at, extend_seconds: 3600, idle_window: Duration::from_secs(120), gone: None };
        let mut watch = Watch::default();
        let mut warnings = Vec::new();
        // Every second of the last hour, as the manager would look.
        for elapsed in 0..3600 {
            let now = start + time::Duration::seconds(elapsed);
            if let Decision::Warn { threshold_seconds, seconds_left } = decide(&lease, &idle(), &watch, now) {
                watch.warned.insert((expires_at.unix_timestamp_nanos(), threshold_seconds));
                warnings.push((threshold_seconds, seconds_left));
            } else {
                assert_eq!(decide(&lease, &idle(), &watch, now), Decision::Nothing, "at {elapsed} s");
            }
        }
        assert_eq!(warnings, vec![(300, 300), (60, 60)]);
        // A lease that was extended meanwhile is a new end, warned afresh.
        let extended = Lease { expires_at: expires_at + time::Duration::seconds(600), ..lease.clone() };
        let now = extended.expires_at - time::Duration::seconds(59);
        assert_eq!(decide(&extended, &idle(), &watch, now), Decision::Warn { threshold_seconds: 60, seconds_left: 59 });
    }

    #[test]
    fn a_short_lease_should_be_warned_at_half_its_extension() {
        let now = at();
        assert_eq!(warning_thresholds(&lease_ending(now, 6, 6)), vec![3]);
        assert_eq!(warning_thresholds(&lease_ending(now, 300, 300)), vec![60]);
        assert_eq!(warning_thresholds(&lease_ending(now, 600, 600)), vec![300, 60]);
        assert_eq!(
            decide(&lease_ending(now, 2, 6), &idle(), &Watch::default(), now),
            Decision::Warn { threshold_seconds: 3, seconds_left: 2 }
        );
    }

    #[test]
    fn a_gone_sandbox_should_expire_and_a_passed_end_should_ask_the_provider() {
        let now = at();
        let gone = Lease { gone: Some("E2B says it does not exist.".into()), ..lease_ending(now, 600, 600) };
        let Decision::Expire(message) = decide(&gone, &idle(), &Watch::default(), now) else { panic!("expected expiry") };
        assert!(message.contains("E2B says it does not exist.") && message.contains("connect again"), "{message}");
        let busy = Activity { runs_in_flight: true, last_activity: Some(now) };
        assert_eq!(decide(&lease_ending(now, 0, 600), &busy, &Watch::default(), now), Decision::AskProvider);
        assert_eq!(decide(&lease_ending(now, -5, 600), &idle(), &Watch::default(), now), Decision::AskProvider);
    }

    #[test]
    fn a_failed_extension_should_warn_the_user_and_be_retried_after_a_pause() {
        let now = at();
        let lease = lease_ending(now, 50, 3600);
        let busy = Activity { runs_in_flight: true, last_activity: None };
        let mut watch = Watch { extend_failed: Some((now, lease.expires_at)), ..Watch::default() };
        assert_eq!(decide(&lease, &busy, &watch, now), Decision::Warn { threshold_seconds: 60, seconds_left: 50 });
        watch.warned.insert((lease.expires_at.unix_timestamp_nanos(), 60));
        let soon = now + time::Duration::seconds(2);
        assert_eq!(decide(&lease, &busy, &watch, soon), Decision::Nothing, "no second warning, no retry yet");
        let later = now + time::Duration::seconds(5);
        assert_eq!(decide(&lease, &busy, &watch, later), Decision::Extend, "retried after the pause");
    }

    /// A sandbox with a lease whose extensions fail a given number of times first; counts what it was asked.
    struct Leased {
        lease: Mutex<Lease>,
        failures_left: Mutex<u32>,
        extensions: Mutex<u32>,
    }

    #[async_trait::async_trait]
    impl crate::drivers::Sandbox for Leased {
        fn driver_id(&self) -> &'static str {
            "leased"
        }

        fn remote_root(&self) -> String {
            "/".into()
        }

        async fn extend(&self, seconds: u64) -> crate::error::Result<String> {
            *lock(&self.extensions) += 1;
            let mut failures_left = lock(&self.failures_left);
            if *failures_left > 0 {
                *failures_left -= 1;
                return Err(crate::error::Error::Remote { status: Some(503), message: "the provider is unavailable".into() });
            }
            let mut lease = lock(&self.lease);
            lease.expires_at += time::Duration::seconds(seconds as i64);
            Ok(rfc3339(lease.expires_at))
        }

        fn lease(&self) -> Option<Lease> {
            Some(lock(&self.lease).clone())
        }

        async fn status(&self) -> crate::error::Result<crate::drivers::SandboxStatus> {
            let expired = lock(&self.lease).expires_at <= OffsetDateTime::now_utc();
            Ok(crate::drivers::SandboxStatus { expired, ..Default::default() })
        }

        async fn disconnect(&self, _keep: bool) -> crate::error::Result<()> {
            Ok(())
        }
    }

    /// Wall time that follows tokio's clock, so paused time moves it.
    struct PausedClock {
        start: OffsetDateTime,
        started: tokio::time::Instant,
    }

    impl Clock for PausedClock {
        fn now(&self) -> OffsetDateTime {
            self.start + self.started.elapsed()
        }
    }

    #[derive(Default)]
    struct Heard {
        warnings: Mutex<Vec<u64>>,
        states: Mutex<Vec<SessionState>>,
    }

    #[async_trait::async_trait]
    impl Events for Heard {
        async fn output(&self, _params: crate::protocol::OutputParams) {}
        async fn exit(&self, _params: crate::protocol::ExitParams) {}
        async fn session_state(&self, params: SessionStateParams) {
            lock(&self.states).push(params.state);
        }
        async fn sync_state(&self, _params: crate::protocol::SyncStateParams) {}
        async fn preview_ready(&self, _params: crate::protocol::PreviewReadyParams) {}
        async fn timeout_warning(&self, params: TimeoutWarningParams) {
            lock(&self.warnings).push(params.seconds_left);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_manager_should_keep_a_busy_session_alive_through_failed_extensions_and_warn_meanwhile() {
        let start = OffsetDateTime::now_utc();
        let clock = Arc::new(PausedClock { start, started: tokio::time::Instant::now() });
        let lease = Lease { expires_at: start + time::Duration::seconds(90), extend_seconds: 600, idle_window: Duration::from_secs(30), gone: None };
        let sandbox = Arc::new(Leased { lease: Mutex::new(lease), failures_left: Mutex::new(2), extensions: Mutex::new(0) });
        let session = Arc::new(Session::new("s1".into(), "leased".into(), None, None, sandbox.clone()));
        session.update(|mutable| mutable.state = SessionState::Active);
        let heard = Arc::new(Heard::default());
        let runs: RunTable = Arc::default();
        let manager = Manager::new(clock.clone(), runs, heard.clone());
        manager.watch(&session);
        // In use the whole time: activity is kept recent by the paused clock's time.
        for _ in 0..50 {
            session.update(|mutable| mutable.last_activity = rfc3339(clock.now()));
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        // Extension is due 60 s before the end (t = 30 s): two failures five seconds apart, then success.
        assert_eq!(*lock(&sandbox.extensions), 3, "tried, retried after the pause, then extended");
        assert_eq!(*lock(&heard.warnings), vec![59], "the user heard once that keeping it alive failed");
        assert!(lock(&sandbox.lease).expires_at > start + time::Duration::seconds(600));
        assert_eq!(session.state(), SessionState::Active);
        assert!(lock(&heard.states).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_manager_should_warn_an_idle_session_and_expire_it_once_the_provider_says_it_ended() {
        let start = OffsetDateTime::now_utc();
        let clock = Arc::new(PausedClock { start, started: tokio::time::Instant::now() });
        let lease = Lease { expires_at: start + time::Duration::seconds(8), extend_seconds: 8, idle_window: Duration::ZERO, gone: None };
        let sandbox = Arc::new(Leased { lease: Mutex::new(lease), failures_left: Mutex::new(0), extensions: Mutex::new(0) });
        let session = Arc::new(Session::new("s2".into(), "leased".into(), None, None, sandbox.clone()));
        session.update(|mutable| mutable.state = SessionState::Active);
        let heard = Arc::new(Heard::default());
        let manager = Manager::new(clock.clone(), Arc::default(), heard.clone());
        manager.watch(&session);
        // The provider's status answers by the real clock, which paused time does not move: end the lease in the
        // past of the real clock once the manager's clock has passed it.
        tokio::time::sleep(Duration::from_secs(9)).await;
        lock(&sandbox.lease).expires_at = OffsetDateTime::now_utc() - time::Duration::seconds(1);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(*lock(&heard.warnings), vec![4], "warned once, at half an extension before the end");
        assert_eq!(*lock(&sandbox.extensions), 0, "an idle session is not extended");
        assert_eq!(*lock(&heard.states), vec![SessionState::Expired]);
        assert_eq!(session.state(), SessionState::Expired);
    }
}
