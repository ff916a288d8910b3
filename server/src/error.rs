//! The engine's error type: one variant per `data.kind` of the contract, each with a sentence a person can act on.

use crate::protocol::ErrorKind;

/// Errors the engine and drivers return; the LSP layer maps them to JSON-RPC errors in one place.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidParams(String),
    #[error("There is no session \"{0}\"; it may have been disconnected. `sandlink sessions` lists the kept ones.")]
    UnknownSession(String),
    #[error("There is no run \"{0}\"; it may have finished already.")]
    UnknownRun(String),
    #[error("There is no job \"{0}\" in flight; it may have finished already. A session's status lists its jobs.")]
    UnknownJob(String),
    /// Long work (a connect, a sync) stopped because it was cancelled; the sentence says what was kept.
    #[error("{0}")]
    Cancelled(String),
    #[error("There is no profile named \"{0}\". `sandlink profile list` lists them; create one with `sandlink profile save NAME --driver DRIVER` or your editor's \"Sandlink: Manage Profiles\" command.")]
    UnknownProfile(String),
    #[error("{message}")]
    DriverUnavailable { driver: String, message: String },
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    CredentialsMissing(String),
    #[error("{0}")]
    PathOutsideWorkspace(String),
    #[error("{0}")]
    SyncConflict(String),
    /// The provider answered with an error; `message` never contains credentials.
    #[error("{message}")]
    Remote { status: Option<u16>, message: String },
    #[error("{0}")]
    Timeout(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Internal(String),
    /// No OS keychain is reachable; the message names the environment variable to use instead.
    #[error("{0}")]
    KeychainUnavailable(String),
    /// A profile's contents are wrong (unknown driver, unknown key, wrong type, a secret in a workspace file).
    #[error("{0}")]
    InvalidProfile(String),
    /// A workspace profile would send the workspace elsewhere (or a workspace task would run) and the user has not
    /// confirmed the workspace as its file is now. `fingerprint` is the digest of the file as judged, the one the
    /// message describes, so a client can trust exactly what it showed (`sandlink/trustWorkspace { fingerprint }`).
    #[error("{message}")]
    WorkspaceNotTrusted { message: String, fingerprint: Option<String> },
    /// Connecting would exceed the configured maximum of concurrent sandboxes.
    #[error("{0}")]
    LimitReached(String),
    /// A preview of a port nothing in the sandbox listens on.
    #[error("{0}")]
    PortNotListening(String),
    /// A kept session's sandbox no longer exists; reported with the `unknownSession` kind.
    #[error("{0}")]
    SessionGone(String),
    /// The session is held by another sandlink process (another editor window).
    #[error("{0}")]
    SessionInUse(String),
    /// A run's queued stdin is at its bound; the process must read before more is accepted.
    #[error("{0}")]
    InputBacklogFull(String),
    /// The SSH host presented a key that is not in known_hosts; `fingerprint` is the one it presented, which
    /// `sandlink/acceptHostKey` records once the user has checked it.
    #[error("{message}")]
    HostKeyUnknown { message: String, host: String, fingerprint: String },
    /// The SSH host presented another key than the one known_hosts holds for it.
    #[error("{message}")]
    HostKeyChanged { message: String, host: String, fingerprint: String },
    /// A rebase (an agent task's push onto a moved base) stopped on conflicts in `files`.
    #[error("{message}")]
    Conflict { message: String, files: Vec<String> },
}

impl Error {
    /// The contract's `data.kind` for this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidParams(_) => ErrorKind::InvalidParams,
            Error::UnknownSession(_) => ErrorKind::UnknownSession,
            Error::UnknownRun(_) => ErrorKind::UnknownRun,
            Error::UnknownJob(_) => ErrorKind::UnknownJob,
            Error::Cancelled(_) => ErrorKind::Cancelled,
            Error::UnknownProfile(_) => ErrorKind::UnknownProfile,
            Error::DriverUnavailable { .. } => ErrorKind::DriverUnavailable,
            Error::Unsupported(_) => ErrorKind::Unsupported,
            Error::CredentialsMissing(_) => ErrorKind::CredentialsMissing,
            Error::PathOutsideWorkspace(_) => ErrorKind::PathOutsideWorkspace,
            Error::SyncConflict(_) => ErrorKind::SyncConflict,
            Error::Remote { .. } => ErrorKind::RemoteError,
            Error::Timeout(_) => ErrorKind::Timeout,
            Error::Io { .. } => ErrorKind::Io,
            Error::Internal(_) => ErrorKind::Internal,
            Error::KeychainUnavailable(_) => ErrorKind::KeychainUnavailable,
            Error::InvalidProfile(_) => ErrorKind::InvalidProfile,
            Error::WorkspaceNotTrusted { .. } => ErrorKind::WorkspaceNotTrusted,
            Error::LimitReached(_) => ErrorKind::LimitReached,
            Error::PortNotListening(_) => ErrorKind::PortNotListening,
            Error::SessionInUse(_) => ErrorKind::SessionInUse,
            Error::SessionGone(_) => ErrorKind::UnknownSession,
            Error::InputBacklogFull(_) => ErrorKind::InputBacklogFull,
            Error::HostKeyUnknown { .. } => ErrorKind::HostKeyUnknown,
            Error::HostKeyChanged { .. } => ErrorKind::HostKeyChanged,
            Error::Conflict { .. } => ErrorKind::Conflict,
        }
    }

    /// Wraps an I/O error with what sandlink was doing when it happened.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }

    /// An `unsupported` error naming the driver and the missing capability.
    pub fn unsupported_by(driver: &str, what: &str) -> Self {
        Error::Unsupported(format!(
            "The {driver} driver does not support {what}. Connect with a driver that does (see sandlink/drivers)."
        ))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds context to `std::io::Result`s in one call.
pub trait IoContext<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::io(context(), source))
    }
}
