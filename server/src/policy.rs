//! The lifecycle policy: how long a run may last, when its user hears that the end is near, and how much a session
//! may cost, as a profile's common `lifecycle` setting and `sandlink/run` give them; plus the pure decision the
//! lifecycle manager applies to each limited run, so every rule is unit-tested without waiting.
//!
//! ```toml
//! [profiles.agent]
//! driver = "e2b"
//! lifecycle = { maxDuration = "1h", warnAt = ["30m", "50m"], maxCost = 5.0 }
//! ```
//!
//! Durations are whole seconds or text such as `"90s"`, `"30m"`, `"1h"`, `"1h30m"`.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The common setting every driver accepts for the lifecycle policy.
pub const LIFECYCLE_KEY: &str = "lifecycle";
/// The hard limit of a detached run when neither the run nor its profile gives one.
pub const DETACHED_MAX_DURATION: Duration = Duration::from_secs(3600);
/// Where in its limit a run is warned when no `warnAt` is given: half way and five sixths of the way (30 and 50
/// minutes of an hour).
const DEFAULT_WARNINGS: [(u32, u32); 2] = [(1, 2), (5, 6)];

/// A profile's `lifecycle` table, as given; absent parts fall back to the run's own or the defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lifecycle {
    /// The hard limit of each run in the session.
    pub max_duration: Option<Duration>,
    /// When, after a run started, its user is warned.
    pub warn_at: Option<Vec<Duration>>,
    /// The most the session may cost, in US dollars, by the price table's estimate.
    pub max_cost: Option<f64>,
}

impl Lifecycle {
    /// Reads the `lifecycle` table; every problem is `invalidProfile` naming the key.
    pub fn from_value(value: &Value) -> Result<Lifecycle> {
        if value.is_null() {
            return Ok(Lifecycle::default());
        }
        let table = value.as_object().ok_or_else(|| {
            Error::InvalidProfile(format!(
                "The setting \"{LIFECYCLE_KEY}\" must be a table like {{ maxDuration = \"1h\", warnAt = [\"30m\", \"50m\"], maxCost = 5.0 }}."
            ))
        })?;
        let mut lifecycle = Lifecycle::default();
        for (key, value) in table {
            match key.as_str() {
                "maxDuration" => lifecycle.max_duration = Some(duration_setting("maxDuration", value)?),
                "warnAt" => {
                    let items = value.as_array().ok_or_else(|| {
                        Error::InvalidProfile(format!(
                            "\"{LIFECYCLE_KEY}.warnAt\" must be a list of durations such as [\"30m\", \"50m\"]."
                        ))
                    })?;
                    let warn_at = items.iter().map(|item| duration_setting("warnAt", item)).collect::<Result<Vec<_>>>()?;
                    lifecycle.warn_at = Some(warn_at);
                }
                "maxCost" => {
                    let usd = value.as_f64().filter(|usd| usd.is_finite() && *usd > 0.0).ok_or_else(|| {
                        Error::InvalidProfile(format!(
                            "\"{LIFECYCLE_KEY}.maxCost\" must be a positive number of US dollars, such as 5.0."
                        ))
                    })?;
                    lifecycle.max_cost = Some(usd);
                }
                other => {
                    return Err(Error::InvalidProfile(format!(
                        "\"{LIFECYCLE_KEY}.{other}\" is not a lifecycle setting; they are: maxDuration, warnAt, maxCost."
                    )))
                }
            }
        }
        if let (Some(max), Some(warn_at)) = (lifecycle.max_duration, &lifecycle.warn_at) {
            if let Some(late) = warn_at.iter().find(|warning| **warning >= max) {
                return Err(Error::InvalidProfile(format!(
                    "\"{LIFECYCLE_KEY}.warnAt\" has {}, which is not before maxDuration ({}).",
                    describe(*late),
                    describe(max)
                )));
            }
        }
        Ok(lifecycle)
    }

    /// The policy of a session's settings (absent: no limits).
    pub fn from_settings(settings: &Map<String, Value>) -> Result<Lifecycle> {
        settings.get(LIFECYCLE_KEY).map_or(Ok(Lifecycle::default()), Lifecycle::from_value)
    }
}

fn duration_setting(key: &str, value: &Value) -> Result<Duration> {
    let parsed = match value {
        Value::Number(number) => number.as_u64().map(Duration::from_secs),
        Value::String(text) => parse_duration(text),
        _ => None,
    };
    parsed.filter(|duration| !duration.is_zero()).ok_or_else(|| {
        Error::InvalidProfile(format!(
            "\"{LIFECYCLE_KEY}.{key}\" must be a duration such as \"90s\", \"30m\", \"1h\" or \"1h30m\" (or whole seconds), \
             but it is {value}."
        ))
    })
}

/// Reads `"90s"`, `"30m"`, `"1h"`, `"1h30m"`, `"2d"` or plain seconds (`"600"`).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let mut total = 0u64;
    let mut digits = String::new();
    for character in text.chars() {
        if character.is_ascii_digit() {
            digits.push(character);
            continue;
        }
        let unit = match character {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return None,
        };
        let amount: u64 = digits.parse().ok()?;
        total = total.checked_add(amount.checked_mul(unit)?)?;
        digits.clear();
    }
    digits.is_empty().then_some(Duration::from_secs(total)).filter(|_| !text.is_empty())
}

/// A duration as people write it: `1h`, `30m`, `1h30m`, `45s`.
pub fn describe(duration: Duration) -> String {
    let seconds = duration.as_secs();
    let (hours, minutes, rest) = (seconds / 3600, seconds % 3600 / 60, seconds % 60);
    let mut text = String::new();
    if hours > 0 {
        text.push_str(&format!("{hours}h"));
    }
    if minutes > 0 {
        text.push_str(&format!("{minutes}m"));
    }
    if rest > 0 || text.is_empty() {
        text.push_str(&format!("{rest}s"));
    }
    text
}

/// The limit the lifecycle manager holds one run to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunLimit {
    /// The hard limit, measured from the run's start; `sandlink/extend` with reason `runLimit` moves it.
    pub max_duration: Duration,
    /// When after the start the user is warned, earliest first, each before the limit.
    pub warn_at: Vec<Duration>,
}

impl RunLimit {
    /// The limit of one run: the run's own values first, then its profile's, then (for detached runs) one hour;
    /// `None` when the run has no limit. Warnings default to half and five sixths of the limit.
    pub fn for_run(
        profile: &Lifecycle,
        max_duration_seconds: Option<u64>,
        warn_at_seconds: Option<&[u64]>,
        detached: bool,
    ) -> Option<RunLimit> {
        let max_duration = max_duration_seconds
            .filter(|seconds| *seconds > 0)
            .map(Duration::from_secs)
            .or(profile.max_duration)
            .or(detached.then_some(DETACHED_MAX_DURATION))?;
        let warn_at = match (warn_at_seconds, &profile.warn_at) {
            (Some(seconds), _) => seconds.iter().map(|seconds| Duration::from_secs(*seconds)).collect(),
            (None, Some(profile_warnings)) => profile_warnings.clone(),
            (None, None) => DEFAULT_WARNINGS.iter().map(|(part, whole)| max_duration * *part / *whole).collect(),
        };
        let mut warn_at: Vec<Duration> =
            warn_at.into_iter().filter(|warning| !warning.is_zero() && *warning < max_duration).collect();
        warn_at.sort_unstable();
        warn_at.dedup();
        Some(RunLimit { max_duration, warn_at })
    }
}

/// What to do about one limited run now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunDecision {
    Nothing,
    /// A threshold is reached and was not warned of yet: tell the user, once.
    Warn { threshold_seconds: u64, seconds_left: u64 },
    /// The limit is reached: flush, snapshot, stop.
    Stop,
}

/// The whole run-limit policy: given the limit, the time since the run started, and the thresholds already warned
/// (in seconds), what to do. Thresholds passed together (a clock that jumped) are warned one per look, earliest
/// first, so each is heard exactly once.
pub fn decide_run(limit: &RunLimit, elapsed: Duration, warned: &BTreeSet<u64>) -> RunDecision {
    if elapsed >= limit.max_duration {
        return RunDecision::Stop;
    }
    let seconds_left = (limit.max_duration - elapsed).as_secs();
    limit
        .warn_at
        .iter()
        .map(Duration::as_secs)
        .find(|threshold| Duration::from_secs(*threshold) <= elapsed && !warned.contains(threshold))
        .map_or(RunDecision::Nothing, |threshold_seconds| RunDecision::Warn { threshold_seconds, seconds_left })
}

/// How long until `decide_run` has something to do for this run: its earliest threshold not yet warned of, or its
/// limit. The manager wakes then rather than at its next tick, since a tick landing just before a threshold one
/// tick before the limit would otherwise find the run already at its limit, and the warning would never be heard.
pub fn until_next_run_decision(limit: &RunLimit, elapsed: Duration, warned: &BTreeSet<u64>) -> Duration {
    let until_limit = limit.max_duration.saturating_sub(elapsed);
    limit
        .warn_at
        .iter()
        .filter(|threshold| !warned.contains(&threshold.as_secs()))
        .map(|threshold| threshold.saturating_sub(elapsed))
        .fold(until_limit, Duration::min)
}

/// Whether a session over `max_cost` must be stopped, given what it cost so far.
pub fn over_cost(max_cost: Option<f64>, spent_usd: f64) -> bool {
    max_cost.is_some_and(|max| spent_usd >= max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations_should_read_as_people_write_them() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Some(Duration::from_secs(1800)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("600"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("1x"), None);
        assert_eq!(parse_duration("h"), None);
        assert_eq!(parse_duration("5m3"), None);
        assert_eq!(parse_duration(""), None);
        assert_eq!(describe(Duration::from_secs(5400)), "1h30m");
        assert_eq!(describe(Duration::from_secs(45)), "45s");
    }

    #[test]
    fn a_lifecycle_table_should_be_read_and_bad_values_should_name_the_key() {
        let lifecycle =
            Lifecycle::from_value(&json!({ "maxDuration": "1h", "warnAt": ["30m", 3000], "maxCost": 5 })).expect("valid");
        assert_eq!(lifecycle.max_duration, Some(Duration::from_secs(3600)));
        assert_eq!(lifecycle.warn_at, Some(vec![Duration::from_secs(1800), Duration::from_secs(3000)]));
        assert_eq!(lifecycle.max_cost, Some(5.0));
        for (bad, key) in [
            (json!({ "maxDuration": "soon" }), "lifecycle.maxDuration"),
            (json!({ "warnAt": "30m" }), "lifecycle.warnAt"),
            (json!({ "warnAt": ["2h"], "maxDuration": "1h" }), "lifecycle.warnAt"),
            (json!({ "maxCost": -1 }), "lifecycle.maxCost"),
            (json!({ "maxCosts": 1 }), "lifecycle.maxCosts"),
            (json!("1h"), "\"lifecycle\""),
        ] {
            let error = Lifecycle::from_value(&bad).expect_err("invalid");
            assert_eq!(error.kind().as_str(), "invalidProfile");
            assert!(error.to_string().contains(key), "{error} names {key}");
        }
    }

    #[test]
    fn a_runs_limit_should_come_from_the_run_then_the_profile_then_the_detached_default() {
        let none = Lifecycle::default();
        assert_eq!(RunLimit::for_run(&none, None, None, false), None, "ordinary runs have no limit unless given");
        let detached = RunLimit::for_run(&none, None, None, true).expect("detached runs are limited");
        assert_eq!(detached.max_duration, Duration::from_secs(3600));
        assert_eq!(detached.warn_at, vec![Duration::from_secs(1800), Duration::from_secs(3000)]);
        let profile = Lifecycle { max_duration: Some(Duration::from_secs(600)), ..Lifecycle::default() };
        assert_eq!(RunLimit::for_run(&profile, None, None, false).map(|limit| limit.max_duration), Some(Duration::from_secs(600)));
        let own = RunLimit::for_run(&profile, Some(120), Some(&[100, 30, 500]), false).expect("limited");
        assert_eq!(own, RunLimit { max_duration: Duration::from_secs(120), warn_at: vec![Duration::from_secs(30), Duration::from_secs(100)] });
    }

    #[test]
    fn a_run_should_be_warned_once_per_threshold_and_stopped_at_its_limit() {
        let limit = RunLimit::for_run(&Lifecycle::default(), None, None, true).expect("limited");
        let mut warned = BTreeSet::new();
        let mut heard = Vec::new();
        let mut stopped_at = None;
        for second in 0..4000u64 {
            match decide_run(&limit, Duration::from_secs(second), &warned) {
                RunDecision::Nothing => {}
                RunDecision::Warn { threshold_seconds, seconds_left } => {
                    warned.insert(threshold_seconds);
                    heard.push((second, seconds_left));
                }
                RunDecision::Stop => {
                    stopped_at = Some(second);
                    break;
                }
            }
        }
        assert_eq!(heard, vec![(1800, 1800), (3000, 600)]);
        assert_eq!(stopped_at, Some(3600));
        // A clock that jumps past both thresholds still warns of each, once, earliest first.
        let mut warned = BTreeSet::new();
        let first = decide_run(&limit, Duration::from_secs(3100), &warned);
        assert_eq!(first, RunDecision::Warn { threshold_seconds: 1800, seconds_left: 500 });
        warned.insert(1800);
        assert_eq!(decide_run(&limit, Duration::from_secs(3100), &warned), RunDecision::Warn { threshold_seconds: 3000, seconds_left: 500 });
        warned.insert(3000);
        assert_eq!(decide_run(&limit, Duration::from_secs(3100), &warned), RunDecision::Nothing);
    }

    #[test]
    fn the_next_decision_should_be_the_earliest_threshold_not_warned_of_or_the_limit() {
        let limit = RunLimit { max_duration: Duration::from_secs(2), warn_at: vec![Duration::from_secs(1)] };
        let mut warned = BTreeSet::new();
        let just_before = Duration::from_millis(999);
        assert_eq!(until_next_run_decision(&limit, just_before, &warned), Duration::from_millis(1));
        assert_eq!(until_next_run_decision(&limit, Duration::from_millis(1500), &warned), Duration::ZERO, "passed, unwarned");
        warned.insert(1);
        assert_eq!(until_next_run_decision(&limit, Duration::from_millis(1500), &warned), Duration::from_millis(500));
        assert_eq!(until_next_run_decision(&limit, Duration::from_secs(3), &warned), Duration::ZERO);
    }

    #[test]
    fn a_session_should_be_over_its_cost_only_with_a_limit_reached() {
        assert!(!over_cost(None, 1000.0));
        assert!(!over_cost(Some(5.0), 4.99));
        assert!(over_cost(Some(5.0), 5.0));
    }
}
