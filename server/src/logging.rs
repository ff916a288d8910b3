//! Logging setup: tracing to stderr or a log file, never stdout, which carries protocol frames only.

use std::path::Path;
use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

static LEVEL_HANDLE: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Starts logging at `RUST_LOG`'s level, else `default_level`, to `log_file` when given, else stderr.
pub fn init(default_level: &str, log_file: Option<&Path>) {
    let filter = with_frame_cap(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)));
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
    if let (Some(handle), Ok(filter)) = (LEVEL_HANDLE.get(), EnvFilter::try_new(level)) {
        let _ = handle.reload(with_frame_cap(filter));
    }
}

/// tower-lsp-server logs every raw JSON-RPC frame at trace level, and a `sandlink/setCredential` frame carries a
/// secret in plain text; its codec is therefore capped at debug whatever level is asked for.
fn with_frame_cap(filter: EnvFilter) -> EnvFilter {
    match "tower_lsp_server::codec=debug".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    }
}
