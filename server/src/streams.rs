//! The byte streams that pass between the engine, sync and the drivers.

use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream from the sandbox (a run's stdout, a downloaded archive).
pub type BoxedReader = Pin<Box<dyn AsyncRead + Send>>;
/// A byte stream into the sandbox (a run's stdin).
pub type BoxedWriter = Pin<Box<dyn AsyncWrite + Send>>;
