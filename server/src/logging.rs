//! Logging setup: tracing to stderr or a log file, never stdout, which carries protocol frames only.

use std::path::Path;
use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

static LEVEL_HANDLE: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Starts logging at `RUST_LOG`'s level, else `default_level`, to `log_file` when given, else stderr.
pub fn init(default_level: &str, log_file: Option<&Path>) {
    let filter = with_frame_cap(EnvFilter::try_from_default_env().unwrap_or_else(|_| level_filter(default_level)));
    let (filter_layer, handle) = reload::Layer::new(filter);
    let opened = log_file.and_then(|path| std::fs::OpenOptions::new().create(true).append(true).open(path).ok());
    let registry = tracing_subscriber::registry().with(filter_layer);
    // A second init (tests in one process) is harmless, so its error is ignored.
    let initialised = match opened {
        Some(file) => registry
            .with(tracing_subscriber::fmt::layer().with_ansi(false).with_target(false).with_writer(std::sync::Mutex::new(file)))
            .try_init(),
        None => registry
            .with(tracing_subscriber::fmt::layer().with_target(false).with_writer(std::io::stderr))
            .try_init(),
    };
    if initialised.is_ok() {
        let _ = LEVEL_HANDLE.set(handle);
    }
}

/// Changes the level after start-up (the client's `initializationOptions.logLevel`), unless `RUST_LOG` is set.
pub fn set_level(level: &str) {
    if std::env::var_os("RUST_LOG").is_some() {
        return;
    }
    if let Some(handle) = LEVEL_HANDLE.get() {
        let _ = handle.reload(with_frame_cap(level_filter(level)));
    }
}

/// Libraries whose own debug output (every HTTP request of the Docker client, every D-Bus message) would drown
/// sandlink's in the editor's log panel; they log at most at `info` unless `RUST_LOG` asks for more.
const CHATTY_DEPENDENCIES: &[&str] =
    &["bollard", "hyper", "hyper_util", "h2", "reqwest", "rustls", "tower", "mio", "zbus", "want", "globset", "ignore", "notify"];

/// A filter for a level a user picked (`debug`): sandlink at that level, chatty dependencies at most at `info`.
/// A full directive string (`sandlink=trace,bollard=debug`) is taken as it is.
fn level_filter(level: &str) -> EnvFilter {
    let bare_level = level.trim().parse::<tracing_subscriber::filter::LevelFilter>().ok();
    let Some(chosen) = bare_level else {
        return EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    };
    let dependency_cap = std::cmp::min(chosen, tracing_subscriber::filter::LevelFilter::INFO);
    let mut directives = vec![chosen.to_string().to_lowercase()];
    directives.extend(CHATTY_DEPENDENCIES.iter().map(|name| format!("{name}={}", dependency_cap.to_string().to_lowercase())));
    EnvFilter::try_new(directives.join(",")).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// tower-lsp-server logs every raw JSON-RPC frame at trace level, and a `sandlink/setCredential` frame carries a
/// secret in plain text; its codec is therefore capped at debug whatever level is asked for.
fn with_frame_cap(filter: EnvFilter) -> EnvFilter {
    // The cap is added last, so it wins over anything the level or RUST_LOG said for the codec.
    match "tower_lsp_server::codec=debug".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_level_should_cap_chatty_dependencies_at_info() {
        let filter = level_filter("debug").to_string();
        assert!(filter.contains("bollard=info") && filter.contains("hyper=info"), "{filter}");
        assert!(filter.split(',').any(|directive| directive == "debug"), "{filter}");
        let quiet = level_filter("warn").to_string();
        assert!(quiet.contains("bollard=warn"), "a quieter level stays quieter for dependencies: {quiet}");
    }

    #[test]
    fn a_directive_string_should_be_taken_as_it_is() {
        let filter = level_filter("sandlink=trace,bollard=debug").to_string();
        assert!(filter.contains("bollard=debug"), "{filter}");
    }
}
