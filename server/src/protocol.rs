//! The sandlink wire protocol: every custom method, notification and command name, with its typed params.
//!
//! This is the only Rust file where method strings appear. It follows `../shared/protocol.md`; the user-facing
//! reference is `docs/protocol.md`, the TypeScript mirror is `vscode-extension/src/protocol.ts` and the Lua
//! mirror is `neovim-plugin/lua/sandlink/protocol.lua`. `tests/protocol_docs.rs` fails when they drift.
//! Each method is an uninhabited enum implementing `Request` or `Notification`, so handlers are registered by type.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tower_lsp_server::ls_types::notification::Notification;
use tower_lsp_server::ls_types::request::Request;

/// The protocol version announced in `initialize`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Declares a request type with its method string, params and result types.
macro_rules! request {
    ($(#[$doc:meta])* $name:ident, $method:literal, $params:ty, $result:ty) => {
        $(#[$doc])*
        pub enum $name {}
        impl Request for $name {
            type Params = $params;
            type Result = $result;
            const METHOD: &'static str = $method;
        }
    };
}

/// Declares a notification type with its method string and params type.
macro_rules! notification {
    ($(#[$doc:meta])* $name:ident, $method:literal, $params:ty) => {
        $(#[$doc])*
        pub enum $name {}
        impl Notification for $name {
            type Params = $params;
            const METHOD: &'static str = $method;
        }
    };
}

request!(/// Lists the drivers this server knows, with availability and capabilities.
    DriversRequest, "sandlink/drivers", EmptyParams, DriversResult);
request!(/// Connects a driver and returns the new session.
    ConnectRequest, "sandlink/connect", ConnectParams, SessionInfo);
request!(/// Ends a session, removing its sandbox unless `keep`.
    DisconnectRequest, "sandlink/disconnect", DisconnectParams, EmptyResult);
request!(/// Lists live sessions and those kept from earlier runs.
    SessionsRequest, "sandlink/sessions", EmptyParams, SessionsResult);
request!(/// Reports one session.
    StatusRequest, "sandlink/status", SessionParams, SessionInfo);
request!(/// Starts a command in a session; answers once the process has started.
    RunRequest, "sandlink/run", RunParams, RunResult);
request!(/// Writes to a run's stdin.
    InputRequest, "sandlink/input", InputParams, EmptyResult);
request!(/// Terminates a run's whole process tree.
    CancelRequest, "sandlink/cancel", RunIdParams, EmptyResult);
request!(/// Stops a job (a connect, sync or restore) at its next safe point; the job's request answers `cancelled`.
    CancelJobRequest, "sandlink/cancelJob", JobIdParams, EmptyResult);
request!(/// Synchronises files between the workspace and the sandbox.
    SyncRequest, "sandlink/sync", SyncParams, SyncResult);
request!(/// Returns the URL under which a sandbox port is reachable.
    PreviewRequest, "sandlink/preview", PreviewParams, PreviewResult);
request!(/// Extends a sandbox's lifetime.
    ExtendRequest, "sandlink/extend", ExtendParams, ExtendResult);
request!(/// Snapshots a sandbox.
    SnapshotRequest, "sandlink/snapshot", SnapshotParams, SnapshotResult);
request!(/// Starts a new session from a snapshot.
    RestoreRequest, "sandlink/restore", RestoreParams, SessionInfo);
request!(/// Lists the configured profiles.
    ProfilesRequest, "sandlink/profiles", ProfilesParams, ProfilesResult);
request!(/// Creates or replaces a profile.
    SaveProfileRequest, "sandlink/saveProfile", SaveProfileParams, EmptyResult);
request!(/// Deletes a profile and its credentials.
    DeleteProfileRequest, "sandlink/deleteProfile", ProfileNameParams, EmptyResult);
request!(/// Stores a credential in the OS keychain.
    SetCredentialRequest, "sandlink/setCredential", SetCredentialParams, EmptyResult);
request!(/// Removes a credential from the OS keychain.
    DeleteCredentialRequest, "sandlink/deleteCredential", CredentialKeyParams, EmptyResult);
request!(/// Confirms (or revokes) that the user trusts a workspace, so its `.sandlink.toml` profiles may send it elsewhere.
    TrustWorkspaceRequest, "sandlink/trustWorkspace", TrustWorkspaceParams, EmptyResult);
request!(/// Settles a sync conflict on one path by keeping the workspace's or the sandbox's version on both sides.
    ResolveRequest, "sandlink/resolve", ResolveParams, SyncResult);
request!(/// Lists the runs in flight and those that ended lately.
    RunsRequest, "sandlink/runs", RunsParams, RunsResult);
request!(/// Lists the workspace's `.sandlink.toml` tasks, so editors need no TOML reader of their own.
    TasksRequest, "sandlink/tasks", TasksParams, TasksResult);
request!(/// Records an SSH host's key in the user's known_hosts once the user has checked its fingerprint.
    AcceptHostKeyRequest, "sandlink/acceptHostKey", AcceptHostKeyParams, AcceptHostKeyResult);
request!(/// Uploads one file that sync held back as a likely secret, after the user chose to allow it.
    AllowSecretRequest, "sandlink/allowSecret", AllowSecretParams, SyncResult);
request!(/// Values a driver setting may take here (Docker's local images, the workspace's dev container image).
    SettingChoicesRequest, "sandlink/settingChoices", SettingChoicesParams, SettingChoicesResult);
request!(/// Counts as activity for the lifecycle manager, which keeps the session's sandbox alive while an agent thinks.
    KeepaliveRequest, "sandlink/keepalive", SessionParams, EmptyResult);
request!(/// Changes the window size of a run started with a terminal (`pty`); its programs get SIGWINCH.
    ResizeRequest, "sandlink/resize", ResizeParams, EmptyResult);
request!(/// Streams a detached run's output from a byte offset, then its exit, as `sandlink/output` and `sandlink/exit`.
    AttachRequest, "sandlink/attach", AttachParams, AttachResult);

notification!(/// A coalesced piece of a run's output.
    OutputNotification, "sandlink/output", OutputParams);
notification!(/// The end of a run; always its last message.
    ExitNotification, "sandlink/exit", ExitParams);
notification!(/// A session changed state.
    SessionStateNotification, "sandlink/sessionState", SessionStateParams);
notification!(/// Sync started, finished or found a conflict.
    SyncStateNotification, "sandlink/syncState", SyncStateParams);
notification!(/// A preview URL became available.
    PreviewReadyNotification, "sandlink/previewReady", PreviewReadyParams);
notification!(/// A sandbox will expire soon.
    TimeoutWarningNotification, "sandlink/timeoutWarning", TimeoutWarningParams);

/// The `workspace/executeCommand` commands for plain LSP clients; each takes the matching request's params.
pub mod commands {
    pub const CONNECT: &str = "sandlink.connect";
    pub const DISCONNECT: &str = "sandlink.disconnect";
    pub const RUN: &str = "sandlink.run";
    pub const CANCEL: &str = "sandlink.cancel";
    pub const SYNC: &str = "sandlink.sync";
    pub const PREVIEW: &str = "sandlink.preview";
    pub const STATUS: &str = "sandlink.status";
    pub const EXTEND: &str = "sandlink.extend";

    /// Every command, in the order `initialize` advertises them.
    pub const ALL: &[&str] = &[CONNECT, DISCONNECT, RUN, CANCEL, SYNC, PREVIEW, STATUS, EXTEND];
}

/// The `data.kind` values of JSON-RPC errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ErrorKind {
    InvalidParams,
    UnknownSession,
    UnknownRun,
    UnknownProfile,
    DriverUnavailable,
    Unsupported,
    CredentialsMissing,
    PathOutsideWorkspace,
    SyncConflict,
    RemoteError,
    Timeout,
    /// A local I/O failure (disk full, permission denied) outside the sandbox's control.
    Io,
    /// A bug in sandlink; the message says what failed.
    Internal,
    /// No OS keychain is reachable here; the message names the environment variable to use instead.
    KeychainUnavailable,
    /// A profile is invalid: unknown driver, unknown setting, wrong type, missing field, or a secret in a
    /// workspace file. The message names the key.
    InvalidProfile,
    /// A profile from the workspace's `.sandlink.toml` would send the workspace elsewhere and the workspace is not
    /// trusted yet; `sandlink/trustWorkspace` or `sandlink trust` confirms it.
    WorkspaceNotTrusted,
    /// The configured maximum of concurrent sandboxes is reached.
    LimitReached,
    /// A preview asked for a port nothing in the sandbox listens on (after a short wait for a starting server).
    PortNotListening,
    /// The session is attached by another sandlink process (another editor window).
    SessionInUse,
    /// A frame could not be read as a JSON-RPC message (bad header, not UTF-8, not JSON, not JSON-RPC 2.0).
    InvalidMessage,
    /// The method is not one this server implements.
    UnknownMethod,
    /// A run's stdin already holds as much queued input as it may; wait for the process to read some.
    InputBacklogFull,
    /// No job in flight has that id (it may have finished).
    UnknownJob,
    /// The work was cancelled (`sandlink/cancelJob`, `window/workDoneProgress/cancel`) and stopped consistently.
    Cancelled,
    /// The SSH host's key is not in known_hosts; `data.host` and `data.fingerprint` say what to verify and accept
    /// with `sandlink/acceptHostKey`.
    HostKeyUnknown,
    /// The SSH host's key differs from the one known_hosts holds; `data.host` and `data.fingerprint` as above.
    HostKeyChanged,
    /// An agent task's push could not be rebased onto its moved base; `data.files` names the conflicting files.
    Conflict,
}

impl ErrorKind {
    /// The camelCase name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidParams => "invalidParams",
            ErrorKind::UnknownSession => "unknownSession",
            ErrorKind::UnknownRun => "unknownRun",
            ErrorKind::UnknownProfile => "unknownProfile",
            ErrorKind::DriverUnavailable => "driverUnavailable",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::CredentialsMissing => "credentialsMissing",
            ErrorKind::PathOutsideWorkspace => "pathOutsideWorkspace",
            ErrorKind::SyncConflict => "syncConflict",
            ErrorKind::RemoteError => "remoteError",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Io => "io",
            ErrorKind::Internal => "internal",
            ErrorKind::KeychainUnavailable => "keychainUnavailable",
            ErrorKind::InvalidProfile => "invalidProfile",
            ErrorKind::WorkspaceNotTrusted => "workspaceNotTrusted",
            ErrorKind::LimitReached => "limitReached",
            ErrorKind::PortNotListening => "portNotListening",
            ErrorKind::SessionInUse => "sessionInUse",
            ErrorKind::InvalidMessage => "invalidMessage",
            ErrorKind::UnknownMethod => "unknownMethod",
            ErrorKind::InputBacklogFull => "inputBacklogFull",
            ErrorKind::UnknownJob => "unknownJob",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::HostKeyUnknown => "hostKeyUnknown",
            ErrorKind::HostKeyChanged => "hostKeyChanged",
            ErrorKind::Conflict => "conflict",
        }
    }
}

/// Params of requests that take none; unknown fields are tolerated so `{}` and `null` both work.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EmptyParams {}

/// The `{}` result of requests that return nothing.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EmptyResult {}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DriverCapabilities {
    pub exec: bool,
    pub stdin: bool,
    pub cancel: bool,
    pub upload: bool,
    pub download: bool,
    pub preview: bool,
    pub extend: bool,
    pub snapshot: bool,
    pub metrics: bool,
    /// Ports that start listening during a run are offered as previews unasked (`sandlink/previewReady`).
    #[serde(default)]
    pub detect_ports: bool,
    /// Runs can be attached to a terminal (`sandlink/run` with `pty`, `sandlink/resize`).
    #[serde(default)]
    pub terminal: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DriverInfo {
    pub id: String,
    pub available: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub capabilities: DriverCapabilities,
    /// The settings the driver takes in a profile (its own, then `sync` and `network`), from its typed declaration.
    #[serde(default)]
    pub settings: Vec<SettingInfo>,
    /// The credentials the driver reads, for `sandlink/setCredential`.
    #[serde(default)]
    pub credentials: Vec<CredentialInfo>,
}

/// One driver setting as `DriverInfo.settings` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettingInfo {
    pub name: String,
    /// `string`, `integer`, `number`, `boolean`, `stringList`, `integerList`, `stringMap`, `table`,
    /// `numberOrString` or `network` (`"on"`, `"off"` or a list of hosts).
    #[serde(rename = "type")]
    pub kind: String,
    /// What the driver uses when the setting is absent; absent when that depends on other settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    pub description: String,
    /// A connect with the driver's defaults cannot do without it (Docker's `image`): a connect flow asks for it,
    /// offering what `sandlink/settingChoices` answers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ask_at_connect: bool,
}

/// `sandlink/allowSecret`: one file of `SyncState.heldBack` to upload after all.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AllowSecretParams {
    pub session_id: String,
    /// As `SyncState.heldBack` names it (relative to the workspace), or absolute inside it, or a file URI.
    pub path: String,
    /// Also add it to the `sync.allowSecrets` of the session's profile in config.toml, for later sessions.
    #[serde(default)]
    pub remember: bool,
}

/// `sandlink/settingChoices`: what a connect flow or a profile form may offer for one setting.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SettingChoicesParams {
    pub driver: String,
    pub setting: String,
    pub workspace_folder: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettingChoicesResult {
    pub choices: Vec<SettingChoice>,
}

/// One value offered for a setting, best first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettingChoice {
    pub value: Value,
    /// What a picker shows (the value itself when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Where it comes from, in a few words (`from .devcontainer/devcontainer.json`, `local image, 120 MB`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// One credential a driver reads, as `DriverInfo.credentials` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialInfo {
    /// The `key` of `sandlink/setCredential` (`apiKey`).
    pub key: String,
    /// The environment variable that overrides the keychain (`E2B_API_KEY`).
    pub env_var: String,
    pub required: bool,
    pub description: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DriversResult {
    pub drivers: Vec<DriverInfo>,
}

/// The lifecycle state of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SessionState {
    Connecting,
    Active,
    Syncing,
    Disconnected,
    Expired,
    Error,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Connecting => "connecting",
            SessionState::Active => "active",
            SessionState::Syncing => "syncing",
            SessionState::Disconnected => "disconnected",
            SessionState::Expired => "expired",
            SessionState::Error => "error",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preview {
    pub port: u16,
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    pub path: String,
    pub reason: String,
}

/// A path one sync left alone on its own (a link that would lead out of the tree, a name the other side cannot
/// hold) while every other file synced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedPath {
    pub path: String,
    pub reason: String,
}

/// A file that was not uploaded because it looks like a secret.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HeldBackFile {
    pub path: String,
    /// `secret-file-name` for a name such as `.env` or `id_rsa`, else the credential shape found in the content
    /// (`github-token`, `aws-access-key-id`, `private-key`, …).
    pub rule: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncState {
    pub pending: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_sync_at: Option<String>,
    pub conflicts: Vec<Conflict>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub excluded: Option<u64>,
    /// Paths held back because they look like secrets (`.env`, private keys), relative to the workspace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held_back_secrets: Vec<String>,
    /// The same files, each with the rule that held it back (never what matched).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held_back: Vec<HeldBackFile>,
    /// How changes outside the editor are noticed: `watching`, or `polling` when the watch limit is exhausted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watcher: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionInfo {
    pub session_id: String,
    pub driver: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    pub state: SessionState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workspace_folder: Option<String>,
    pub remote_root: String,
    /// How runs are confined: `bubblewrap`, `landlock` or `none` (local), `container` (docker); absent when the
    /// sandbox is another machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<String>,
    pub started_at: String,
    pub last_activity: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    pub previews: Vec<Preview>,
    pub sync: SyncState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Why the session is in `error` or `expired`, as a sentence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Long work in flight for the session (connect, sync, snapshot, restore), oldest first.
    #[serde(default)]
    pub jobs: Vec<JobInfo>,
    /// Who holds the session, as `sandlink/sessions` lists it; absent elsewhere and for expired records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<Holder>,
    /// What the session has cost so far by sandlink's price table (see docs/cost.md); absent when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<SessionCost>,
}

/// Who holds a session in `sandlink/sessions`, so editors need not read it from `message`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Holder {
    /// Attached to this server.
    Here,
    /// Disconnected with `keep` (or kept when its server exited), re-attachable.
    Kept,
    /// Left by a sandlink that ended without disconnecting (a crash, a killed editor), re-attachable.
    Orphaned,
    /// Attached by another sandlink process (another editor window).
    Elsewhere,
}

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum JobKind {
    Connect,
    Sync,
    Snapshot,
    Restore,
}

/// One job in flight, as `SessionInfo.jobs` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobInfo {
    pub job_id: String,
    pub kind: JobKind,
    pub title: String,
    pub started_at: String,
    /// How far the job is, when it knows (a sync of many files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobIdParams {
    pub job_id: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectParams {
    pub profile: Option<String>,
    pub driver: Option<String>,
    pub settings: Option<serde_json::Map<String, Value>>,
    pub workspace_folder: Option<String>,
    pub sync: Option<bool>,
    pub reuse: Option<String>,
    /// The standard LSP work-done token; progress for the connect goes there.
    pub work_done_token: Option<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DisconnectParams {
    pub session_id: String,
    #[serde(default)]
    pub keep: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionsResult {
    pub sessions: Vec<SessionInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionParams {
    pub session_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunParams {
    pub session_id: String,
    /// The command line or program; empty (or absent) when `task` names what to run.
    #[serde(default)]
    pub command: String,
    /// A task of the workspace's `.sandlink.toml` `[tasks]`, run by name: the server reads its command line and
    /// runs it only when the user trusts the workspace as its file is now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    pub args: Option<Vec<String>>,
    pub cwd: Option<String>,
    pub env: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub stdin: bool,
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub detach: bool,
    /// The run's hard limit in seconds, enforced by the lifecycle manager (warnings, snapshot, graceful stop with
    /// reason `runLimit`); absent: the profile's `lifecycle.maxDuration`, else one hour for detached runs, else none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration_seconds: Option<u64>,
    /// When, in seconds after the start, `sandlink/timeoutWarning` (reason `runLimit`) is sent; absent: the
    /// profile's `lifecycle.warnAt`, else half and five sixths of the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warn_at_seconds: Option<Vec<u64>>,
    /// Runs the command attached to a new pseudo-terminal of this size in the sandbox (colour, job control, line
    /// editing); output is the terminal's raw bytes on `stdout`, input is raw keystrokes. An empty command then
    /// starts the sandbox's login shell (`bash -l`, else `sh -l`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<PtySize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunResult {
    pub run_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InputParams {
    pub run_id: String,
    pub text: String,
    #[serde(default)]
    pub eof: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunIdParams {
    pub run_id: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SyncDirection {
    #[default]
    Up,
    Down,
    Both,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SyncParams {
    pub session_id: String,
    #[serde(default)]
    pub direction: SyncDirection,
    pub paths: Option<Vec<String>>,
    pub work_done_token: Option<Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncResult {
    pub uploaded: u64,
    pub downloaded: u64,
    pub deleted: u64,
    pub bytes: u64,
    pub conflicts: Vec<Conflict>,
    /// Paths this sync did not move, each with the reason; empty when everything synced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<SkippedPath>,
    /// Files this sync wrote into the workspace from the sandbox (the first `LISTED_PATHS_LIMIT`; `downloaded` counts
    /// them all), so an editor can show what came.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub brought: Vec<String>,
    /// Files this sync removed from the workspace because the sandbox removed them (the first `LISTED_PATHS_LIMIT`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_locally: Vec<String>,
    pub duration_ms: u64,
}

/// The most paths `SyncResult.brought` and `removedLocally` list; the counts cover the rest.
pub const LISTED_PATHS_LIMIT: usize = 1000;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreviewParams {
    pub session_id: String,
    pub port: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreviewResult {
    pub url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtendParams {
    pub session_id: String,
    pub seconds: u64,
    /// What to extend: `sandboxExpiry` (the default) the sandbox's lifetime, `runLimit` the hard limit of the
    /// session's limited runs (only `runId`'s when given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<LimitReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtendResult {
    pub expires_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SnapshotParams {
    pub session_id: String,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotResult {
    pub snapshot_id: String,
    /// What the snapshot did besides saving the files, when the user must know it (on Vercel it stops the session,
    /// which sandlink then resumes from the snapshot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RestoreParams {
    pub snapshot_id: String,
    pub profile: Option<String>,
    pub driver: Option<String>,
    /// Driver settings, as for `sandlink/connect` (where the provider is, for instance).
    pub settings: Option<serde_json::Map<String, Value>>,
    /// The workspace the restored session belongs to; nothing is uploaded, the snapshot's files stay.
    pub workspace_folder: Option<String>,
}

/// `sandlink/profiles` params: the workspace whose `.sandlink.toml` is listed too (default: the server's root).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProfilesParams {
    pub workspace_folder: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProfileEntry {
    pub name: String,
    pub driver: String,
    pub settings: serde_json::Map<String, Value>,
    pub default: bool,
    /// Whether a credential of the profile is stored in the keychain or given by its environment variable.
    pub has_credentials: bool,
    /// `user` (the user's config.toml) or `workspace` (the workspace's `.sandlink.toml`).
    pub source: String,
    /// Required credential keys that are neither in the keychain nor in the environment.
    pub missing_credentials: Vec<String>,
    /// A workspace profile that sends the workspace elsewhere while the workspace is not trusted yet.
    pub needs_trust: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProfilesResult {
    pub profiles: Vec<ProfileEntry>,
    /// Why the workspace's `.sandlink.toml` was refused (invalid, or holding a secret); its profiles are then absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workspace_error: Option<String>,
}

/// Which version of a conflicting file wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ConflictSide {
    Workspace,
    Sandbox,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResolveParams {
    pub session_id: String,
    /// As `SyncState.conflicts` lists it (relative to the workspace), or absolute inside it, or a file URI.
    pub path: String,
    pub keep: ConflictSide,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunsParams {
    /// Only this session's runs; every session's when absent.
    pub session_id: Option<String>,
}

/// One run as `sandlink/runs` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunInfo {
    pub run_id: String,
    pub session_id: String,
    /// The command line (or the program and its arguments) as it was started.
    pub command: String,
    pub started_at: String,
    /// How it ended, as `sandlink/exit` said; absent while it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitParams>,
    /// Its share of the session's cost so far (while it runs) or in all (once it ended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<RunCost>,
    /// Started with `detach`: it goes on without the server, and `sandlink/attach` follows it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub detached: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunsResult {
    pub runs: Vec<RunInfo>,
}

/// `{ workspaceFolder? }`, as for profiles: the server's root when absent.
pub type TasksParams = ProfilesParams;

/// One `[tasks]` entry of a workspace's `.sandlink.toml`, as `sandlink/tasks` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskEntry {
    pub name: String,
    /// The command line it runs, whole.
    pub command: String,
    /// `name (command)` on one line, control characters and runs of blanks shown, long commands cut: what a menu shows.
    pub title: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TasksResult {
    /// In file order; empty without a `.sandlink.toml` or a `[tasks]` table.
    pub tasks: Vec<TaskEntry>,
    /// Whether the user trusts the workspace as its file is now (a task of an untrusted workspace asks first).
    pub trusted: bool,
    /// Why the file could not be read, as a sentence; the tasks are then empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrustWorkspaceParams {
    /// The workspace folder (URI or absolute path); default: the server's root.
    pub workspace_folder: Option<String>,
    pub trust: bool,
    /// The fingerprint of the file as the user was shown it (`data.fingerprint` of a `workspaceNotTrusted` error):
    /// trust is then given only if the file still has it, else refused with `workspaceNotTrusted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AcceptHostKeyParams {
    /// The host as the `ssh` driver's `host` setting names it (`data.host` of the `hostKeyUnknown` error).
    pub host: String,
    /// The fingerprint the user checked (`data.fingerprint` of the error): the key is recorded only when the host
    /// presents exactly this one now.
    pub fingerprint: String,
    /// The ssh configuration file, as the profile's `configFile` setting; default: ssh's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_file: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AcceptHostKeyResult {
    /// The known_hosts file the key was written to.
    pub known_hosts: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AttachParams {
    pub run_id: String,
    /// The stdout byte to start from (0 when absent): what the client already has is not sent again.
    #[serde(default)]
    pub from_offset: Option<u64>,
    /// The stderr byte to start from (0 when absent).
    #[serde(default)]
    pub from_stderr_offset: Option<u64>,
}

/// Where an attach starts and what the run is; its output and exit follow as notifications under `runId`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachResult {
    pub run_id: String,
    pub session_id: String,
    pub command: String,
    pub started_at: String,
    /// How many stdout and stderr bytes the run has written so far.
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    /// Set once the run has ended: its exit follows the rest of its output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SaveProfileParams {
    pub name: String,
    pub driver: String,
    pub settings: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    pub default: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProfileNameParams {
    pub name: String,
}

/// Carries a secret value; its `Debug` is hand-written so the value never reaches a log.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetCredentialParams {
    pub profile: String,
    pub key: String,
    pub value: String,
}

impl std::fmt::Debug for SetCredentialParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetCredentialParams")
            .field("profile", &self.profile)
            .field("key", &self.key)
            .field("value", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialKeyParams {
    pub profile: String,
    pub key: String,
}

/// Which of a process's output streams a piece of text came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OutputStream {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutputParams {
    pub run_id: String,
    pub stream: OutputStream,
    pub text: String,
    pub seq: u64,
    /// For detached and attached runs: the byte offset in its stream of the first byte of `text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitParams {
    pub run_id: String,
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    pub cancelled: bool,
    pub timed_out: bool,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_path: Option<String>,
    /// Why the run ended abnormally (the sandbox died, the connection dropped), as a sentence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Why sandlink ended it, when it did: `runLimit`, `costLimit`, `timeout` or `cancelled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<ExitReason>,
    /// Its share of the session's cost (the session's hourly price over the run's duration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<RunCost>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionStateParams {
    pub session_id: String,
    pub state: SessionState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncStateParams {
    pub session_id: String,
    #[serde(flatten)]
    pub state: SyncState,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreviewReadyParams {
    pub session_id: String,
    pub port: u16,
    pub url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TimeoutWarningParams {
    pub session_id: String,
    pub expires_at: String,
    pub seconds_left: u64,
    /// What ends: the sandbox (`sandboxExpiry`, also when absent) or one run at its limit (`runLimit`, with `runId`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<LimitReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PtySize {
    pub cols: u16,
    pub rows: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResizeParams {
    pub run_id: String,
    pub cols: u16,
    pub rows: u16,
}

/// The `initialize` result's `capabilities.experimental.sandlink`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerExperimental {
    pub version: u32,
    pub drivers: Vec<DriverInfo>,
}

/// Every custom request method, for registration checks and the docs test.
pub const REQUEST_METHODS: &[&str] = &[
    DriversRequest::METHOD,
    ConnectRequest::METHOD,
    DisconnectRequest::METHOD,
    SessionsRequest::METHOD,
    StatusRequest::METHOD,
    RunRequest::METHOD,
    InputRequest::METHOD,
    CancelRequest::METHOD,
    CancelJobRequest::METHOD,
    SyncRequest::METHOD,
    PreviewRequest::METHOD,
    ExtendRequest::METHOD,
    SnapshotRequest::METHOD,
    RestoreRequest::METHOD,
    ProfilesRequest::METHOD,
    SaveProfileRequest::METHOD,
    DeleteProfileRequest::METHOD,
    SetCredentialRequest::METHOD,
    DeleteCredentialRequest::METHOD,
    TrustWorkspaceRequest::METHOD,
    AcceptHostKeyRequest::METHOD,
    ResolveRequest::METHOD,
    RunsRequest::METHOD,
    TasksRequest::METHOD,
    AllowSecretRequest::METHOD,
    SettingChoicesRequest::METHOD,
    KeepaliveRequest::METHOD,
    ResizeRequest::METHOD,
    AttachRequest::METHOD,
    TaskStartRequest::METHOD,
    TaskStatusRequest::METHOD,
    TaskCommitRequest::METHOD,
    TaskPushRequest::METHOD,
    TaskPrRequest::METHOD,
    TaskListRequest::METHOD,
    TaskEndRequest::METHOD,
];

/// Every custom notification method.
pub const NOTIFICATION_METHODS: &[&str] = &[
    OutputNotification::METHOD,
    ExitNotification::METHOD,
    SessionStateNotification::METHOD,
    SyncStateNotification::METHOD,
    PreviewReadyNotification::METHOD,
    TimeoutWarningNotification::METHOD,
];

/// What a lifecycle warning or extension is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LimitReason {
    /// A run's hard limit (`maxDuration`).
    RunLimit,
    /// The sandbox's own lifetime at its provider.
    SandboxExpiry,
}

/// Why sandlink ended a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ExitReason {
    /// It reached its hard limit (`maxDuration`).
    RunLimit,
    /// Its session reached its `maxCost`.
    CostLimit,
    /// It reached its `timeoutMs`.
    Timeout,
    /// It was cancelled (`sandlink/cancel`, a disconnect).
    Cancelled,
}

impl ExitReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ExitReason::RunLimit => "runLimit",
            ExitReason::CostLimit => "costLimit",
            ExitReason::Timeout => "timeout",
            ExitReason::Cancelled => "cancelled",
        }
    }
}

/// A session's cost so far, estimated from sandlink's price table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionCost {
    pub usd: f64,
    pub usd_per_hour: f64,
    /// When the estimate starts (the session's start).
    pub since: String,
}

/// A run's share of its session's cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunCost {
    pub usd: f64,
    pub usd_per_hour: f64,
}

// Agent tasks (`sandlink/task/*`): a repository cloned into a fresh sandbox on a branch of its own, committed,
// pushed from the host and opened as a pull request. Not the workspace's `.sandlink.toml` tasks above.

request!(/// Starts an agent task: a new sandbox with the repository cloned at `ref` on the branch `task-{taskId}`.
    TaskStartRequest, "sandlink/task/start", TaskStartParams, TaskInfo);
request!(/// Reports one agent task.
    TaskStatusRequest, "sandlink/task/status", TaskIdParams, TaskInfo);
request!(/// Commits every change in the task's sandbox with a Conventional Commits message.
    TaskCommitRequest, "sandlink/task/commit", TaskCommitParams, TaskInfo);
request!(/// Pushes the task's branch from the host; the credential never enters the sandbox.
    TaskPushRequest, "sandlink/task/push", TaskIdParams, TaskInfo);
request!(/// Opens (or finds) the pull request of the task's branch.
    TaskPrRequest, "sandlink/task/pr", TaskPrParams, TaskInfo);
request!(/// Lists the agent tasks this machine knows, ended ones included.
    TaskListRequest, "sandlink/task/list", EmptyParams, TaskListResult);
request!(/// Ends an agent task: its sandbox removed (unless `keep`), its record kept.
    TaskEndRequest, "sandlink/task/end", TaskEndParams, TaskInfo);

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskStartParams {
    /// The repository's URL (`https://host/owner/repo(.git)`, `http://` for a local server, or `file://`). Without
    /// it, the workspace's own repository: its current commit, with uncommitted changes carried over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// The branch, tag or commit to start from; default: the remote's default branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
    /// Names the task and its branch `task-{taskId}`: letters, digits, `-`, `_`, `.`.
    pub task_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The profile whose driver and settings the sandbox uses, and whose keychain holds `githubToken`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// A driver instead of a profile (default: the default profile's, else `local`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<serde_json::Map<String, Value>>,
    /// The standard LSP work-done token; progress for the start goes there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_done_token: Option<Value>,
    /// The workspace whose repository a start without `repo` uses (URI or path); default: the server's root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_folder: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskIdParams {
    pub task_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskCommitParams {
    pub task_id: String,
    /// `type(scope)?: subject` (Conventional Commits); refused with `invalidParams` otherwise.
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskPrParams {
    pub task_id: String,
    /// Default: the task's title, else its first commit's subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Default: the task's commits, one line each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default)]
    pub draft: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskEndParams {
    pub task_id: String,
    /// Keep the sandbox (as a kept session) instead of removing it.
    #[serde(default)]
    pub keep: bool,
}

/// Where an agent task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TaskState {
    /// The sandbox is up on the task's branch; nothing pushed since the last commit.
    Running,
    /// Every commit is on the remote.
    Pushed,
    /// Ended after its work was pushed (or with nothing to push).
    Done,
    /// The sandbox died or the task ended with commits the remote never got; `pushedCommit` says what it has.
    Failed,
}

/// One commit of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskCommit {
    pub sha: String,
    pub message: String,
}

/// An agent task as its record keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskInfo {
    pub task_id: String,
    pub repo: String,
    pub branch: String,
    /// The branch the task started from and its pull request targets.
    pub base_branch: String,
    /// The commit the task's branch is based on (moved by a rebase before a push).
    pub base_commit: String,
    pub state: TaskState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// The sandbox's session while the task has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(default)]
    pub commits: Vec<TaskCommit>,
    /// The last commit the remote acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushed_commit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pr_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pr_number: Option<u64>,
    /// Why the task failed, as a sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskListResult {
    /// Newest first.
    pub tasks: Vec<TaskInfo>,
}
