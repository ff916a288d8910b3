//! The user's `[runs]` settings in config.toml: how runs keep their output.
//!
//! ```toml
//! [runs]
//! logCap = "256MiB"   # the most of a run's output its log file keeps; the rest is counted in a marker line
//! ```

use std::path::Path;

use crate::error::{Error, Result};

/// How much of a run's output its log keeps when the user sets no cap.
pub const DEFAULT_LOG_CAP_BYTES: u64 = 256 << 20;

/// The `[runs]` table, each setting `None` when the file leaves it out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunSettings {
    pub log_cap: Option<u64>,
}

/// Reads the `[runs]` table of the user file at `path`; every error names the file and the key.
pub fn parse(value: &toml::Value, path: &Path) -> Result<RunSettings> {
    let shown = path.display();
    let table = value.as_table().ok_or_else(|| Error::InvalidProfile(format!("\"runs\" in {shown} must be a table.")))?;
    let mut settings = RunSettings::default();
    for (key, setting) in table {
        match key.as_str() {
            "logCap" => {
                let size = match setting {
                    toml::Value::Integer(bytes) => u64::try_from(*bytes).ok(),
                    toml::Value::String(text) => parse_byte_size(text),
                    _ => None,
                };
                settings.log_cap = Some(size.ok_or_else(|| {
                    Error::InvalidProfile(format!(
                        "\"runs.logCap\" in {shown} must be a size: a number of bytes or a string such as \"256MiB\"."
                    ))
                })?);
            }
            other => {
                return Err(Error::InvalidProfile(format!(
                    "\"runs.{other}\" in {shown} is not a setting; the run options are: logCap."
                )))
            }
        }
    }
    Ok(settings)
}

/// Parses a size as people write it: a whole number of bytes, or a number with a unit (`256MiB`, `1 GiB`,
/// `512KiB`, `100MB`, `64k`). `None` when it is not one.
pub fn parse_byte_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|character: char| !character.is_ascii_digit() && character != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" | "bytes" => 1,
        "k" | "kib" => 1 << 10,
        "kb" => 1_000,
        "m" | "mib" => 1 << 20,
        "mb" => 1_000_000,
        "g" | "gib" => 1 << 30,
        "gb" => 1_000_000_000,
        _ => return None,
    };
    let bytes = number * multiplier as f64;
    (bytes.is_finite() && bytes >= 0.0 && bytes <= u64::MAX as f64).then_some(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_should_read_the_way_people_write_them() {
        assert_eq!(parse_byte_size("256MiB"), Some(256 << 20));
        assert_eq!(parse_byte_size("1 GiB"), Some(1 << 30));
        assert_eq!(parse_byte_size("1.5k"), Some(1536));
        assert_eq!(parse_byte_size("100MB"), Some(100_000_000));
        assert_eq!(parse_byte_size("4096"), Some(4096));
        assert_eq!(parse_byte_size("lots"), None);
        assert_eq!(parse_byte_size("12 parsecs"), None);
    }

    #[test]
    fn the_runs_table_should_take_a_size_and_refuse_anything_else() {
        let path = Path::new("/home/me/.config/sandlink/config.toml");
        let parse_text = |text: &str| parse(&text.parse::<toml::Table>().expect("toml")["runs"], path);
        assert_eq!(parse_text("[runs]\nlogCap = \"1MiB\"").expect("a size").log_cap, Some(1 << 20));
        assert_eq!(parse_text("[runs]\nlogCap = 4096").expect("bytes").log_cap, Some(4096));
        let error = parse_text("[runs]\nlogCap = \"big\"").expect_err("not a size").to_string();
        assert!(error.contains("runs.logCap") && error.contains("config.toml"), "{error}");
        let error = parse_text("[runs]\nlogSize = 1").expect_err("not a setting").to_string();
        assert!(error.contains("runs.logSize"), "{error}");
    }
}
