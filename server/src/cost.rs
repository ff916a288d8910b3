//! Cost estimates: a price table per driver (defaults from the providers' published prices, see docs/cost.md;
//! local, docker and ssh cost nothing), overridable under `[prices.DRIVER]` in the user's config.toml, and the
//! estimate of a session or a run from its hourly price and how long it has lasted.
//!
//! ```toml
//! [prices.e2b]               # user file only; every key optional
//! usdPerCpuHour = 0.0504     # per vCPU
//! usdPerGibHour = 0.0162     # per GiB of memory
//! usdPerHour = 0.0           # a flat part (a machine you rent for ssh, say)
//! cpus = 2                   # the size assumed when the profile does not say (Daytona `cpu`/`memory`, Vercel `vcpus`)
//! memoryGib = 0.5
//! ```

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::protocol::{RunCost, SessionCost};

/// What a sandbox of one driver costs, and the size assumed when its settings do not give one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub usd_per_cpu_hour: f64,
    pub usd_per_gib_hour: f64,
    pub usd_per_hour: f64,
    pub cpus: f64,
    pub memory_gib: f64,
}

impl Price {
    const FREE: Price = Price { usd_per_cpu_hour: 0.0, usd_per_gib_hour: 0.0, usd_per_hour: 0.0, cpus: 0.0, memory_gib: 0.0 };
}

/// The published prices sandlink assumes (docs/cost.md gives their sources and dates).
pub fn default_price(driver: &str) -> Price {
    match driver {
        // E2B: $0.000014 per vCPU-second and $0.0000045 per GiB-second; the default sandbox has 2 vCPU, 512 MiB.
        "e2b" => Price { usd_per_cpu_hour: 0.0504, usd_per_gib_hour: 0.0162, usd_per_hour: 0.0, cpus: 2.0, memory_gib: 0.5 },
        // Daytona: the same per-second rates; the default sandbox has 1 vCPU and 1 GiB (disk within the free 5 GiB).
        "daytona" => Price { usd_per_cpu_hour: 0.0504, usd_per_gib_hour: 0.0162, usd_per_hour: 0.0, cpus: 1.0, memory_gib: 1.0 },
        // Vercel: $0.128 per active CPU-hour (counted here as if busy: an upper bound) and $0.0106 per GB-hour of
        // provisioned memory; the default sandbox has 2 vCPUs with 2 GB each.
        "vercel" => Price { usd_per_cpu_hour: 0.128, usd_per_gib_hour: 0.0106, usd_per_hour: 0.0, cpus: 2.0, memory_gib: 4.0 },
        _ => Price::FREE,
    }
}

/// The prices in use: the defaults with the user's `[prices.DRIVER]` tables over them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PriceTable {
    overrides: BTreeMap<String, Map<String, Value>>,
}

const PRICE_KEYS: [&str; 5] = ["usdPerCpuHour", "usdPerGibHour", "usdPerHour", "cpus", "memoryGib"];

impl PriceTable {
    /// Reads the `[prices]` table of config.toml (as JSON); every problem names the key.
    pub fn from_config(prices: &Value, file: &str) -> Result<PriceTable> {
        let drivers = prices
            .as_object()
            .ok_or_else(|| Error::InvalidProfile(format!("\"prices\" in {file} must be a table of [prices.DRIVER] tables.")))?;
        let mut overrides = BTreeMap::new();
        for (driver, table) in drivers {
            let table = table.as_object().ok_or_else(|| {
                Error::InvalidProfile(format!("\"prices.{driver}\" in {file} must be a table such as {{ usdPerCpuHour = 0.05 }}."))
            })?;
            for (key, value) in table {
                if !PRICE_KEYS.contains(&key.as_str()) {
                    return Err(Error::InvalidProfile(format!(
                        "\"prices.{driver}.{key}\" in {file} is not a price setting; they are: {}.",
                        PRICE_KEYS.join(", ")
                    )));
                }
                if !value.as_f64().is_some_and(|number| number.is_finite() && number >= 0.0) {
                    return Err(Error::InvalidProfile(format!(
                        "\"prices.{driver}.{key}\" in {file} must be a number of zero or more, but it is {value}."
                    )));
                }
            }
            overrides.insert(driver.clone(), table.clone());
        }
        Ok(PriceTable { overrides })
    }

    /// A driver's price with the user's overrides applied.
    pub fn price(&self, driver: &str) -> Price {
        let mut price = default_price(driver);
        if let Some(table) = self.overrides.get(driver) {
            let number = |key: &str| table.get(key).and_then(Value::as_f64);
            price.usd_per_cpu_hour = number("usdPerCpuHour").unwrap_or(price.usd_per_cpu_hour);
            price.usd_per_gib_hour = number("usdPerGibHour").unwrap_or(price.usd_per_gib_hour);
            price.usd_per_hour = number("usdPerHour").unwrap_or(price.usd_per_hour);
            price.cpus = number("cpus").unwrap_or(price.cpus);
            price.memory_gib = number("memoryGib").unwrap_or(price.memory_gib);
        }
        price
    }

    /// What one hour of a session of `driver` with `settings` costs: its size from the settings where the driver
    /// has them (Daytona `cpu` and `memory` in GiB, Vercel `vcpus` with 2 GB each), else the table's.
    pub fn usd_per_hour(&self, driver: &str, settings: &Map<String, Value>) -> f64 {
        let price = self.price(driver);
        let setting = |key: &str| settings.get(key).and_then(Value::as_f64);
        let (cpus, memory_gib) = match driver {
            "daytona" => (setting("cpu").unwrap_or(price.cpus), setting("memory").unwrap_or(price.memory_gib)),
            "vercel" => match setting("vcpus") {
                Some(vcpus) => (vcpus, vcpus * 2.0),
                None => (price.cpus, price.memory_gib),
            },
            _ => (price.cpus, price.memory_gib),
        };
        price.usd_per_hour + cpus * price.usd_per_cpu_hour + memory_gib * price.usd_per_gib_hour
    }
}

/// Dollars for `seconds` at `usd_per_hour`, rounded to a hundredth of a cent so listings stay readable.
fn usd_for(usd_per_hour: f64, seconds: f64) -> f64 {
    (usd_per_hour * seconds.max(0.0) / 3600.0 * 10_000.0).round() / 10_000.0
}

/// A session's estimate: from its start (`since`, RFC 3339) until `now`.
pub fn session_cost(usd_per_hour: f64, since: &str, now: OffsetDateTime) -> SessionCost {
    let seconds = OffsetDateTime::parse(since, &time::format_description::well_known::Rfc3339)
        .map(|start| (now - start).as_seconds_f64())
        .unwrap_or(0.0);
    SessionCost { usd: usd_for(usd_per_hour, seconds), usd_per_hour, since: since.to_string() }
}

/// The unrounded dollars a session has cost so far, for the `maxCost` check.
pub fn spent(usd_per_hour: f64, seconds: f64) -> f64 {
    usd_per_hour * seconds.max(0.0) / 3600.0
}

/// A run's share: the session's hourly price over the run's duration.
pub fn run_cost(usd_per_hour: f64, duration_ms: u64) -> RunCost {
    RunCost { usd: usd_for(usd_per_hour, duration_ms as f64 / 1000.0), usd_per_hour }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_default_prices_should_follow_the_providers_and_local_drivers_should_be_free() {
        let table = PriceTable::default();
        // E2B's own worked example: a default sandbox (2 vCPU, 0.5 GiB) costs about $0.109 an hour.
        assert!((table.usd_per_hour("e2b", &Map::new()) - 0.1089).abs() < 1e-9);
        for free in ["local", "docker", "ssh"] {
            assert_eq!(table.usd_per_hour(free, &Map::new()), 0.0, "{free}");
        }
        let big = json!({ "cpu": 4, "memory": 8 });
        assert!((table.usd_per_hour("daytona", big.as_object().expect("map")) - (4.0 * 0.0504 + 8.0 * 0.0162)).abs() < 1e-9);
        assert!(table.usd_per_hour("vercel", json!({ "vcpus": 1 }).as_object().expect("map")) < table.usd_per_hour("vercel", &Map::new()));
    }

    #[test]
    fn the_users_prices_should_override_the_defaults_and_bad_ones_should_name_the_key() {
        let table = PriceTable::from_config(&json!({ "local": { "usdPerHour": 3.6 }, "e2b": { "usdPerCpuHour": 0.1 } }), "config.toml")
            .expect("valid");
        assert_eq!(table.usd_per_hour("local", &Map::new()), 3.6);
        assert!((table.usd_per_hour("e2b", &Map::new()) - (0.2 + 0.0081)).abs() < 1e-9);
        let error = PriceTable::from_config(&json!({ "e2b": { "usdPerCpu": 1 } }), "config.toml").expect_err("unknown key");
        assert!(error.to_string().contains("prices.e2b.usdPerCpu"), "{error}");
        let error = PriceTable::from_config(&json!({ "e2b": { "cpus": -1 } }), "config.toml").expect_err("negative");
        assert!(error.to_string().contains("prices.e2b.cpus"), "{error}");
    }

    #[test]
    fn estimates_should_scale_with_time() {
        let start = OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("a time");
        let since = start.format(&time::format_description::well_known::Rfc3339).expect("format");
        let cost = session_cost(3.6, &since, start + time::Duration::minutes(30));
        assert_eq!((cost.usd, cost.usd_per_hour), (1.8, 3.6));
        assert_eq!(run_cost(3.6, 1000).usd, 0.001);
        assert!((spent(5.0, 3600.0) - 5.0).abs() < 1e-9);
    }
}
