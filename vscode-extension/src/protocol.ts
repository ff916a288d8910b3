//! The sandlink LSP extensions, mirrored from `server/src/protocol.rs`: change both together (test/protocol_drift.test.ts checks).
//
// Every custom method, notification and `workspace/executeCommand` name the server knows is declared here once, as a
// typed constant; the rest of the extension uses these constants and never spells a method string itself.
// The shapes follow /work/shared/protocol.md (the contract) and the project's docs/protocol.md.

import { NotificationType, RequestType } from "vscode-languageclient";

// ---------------------------------------------------------------------------------------------------------------------
// Common shapes
// ---------------------------------------------------------------------------------------------------------------------

export interface DriverCapabilities {
    exec: boolean;
    stdin: boolean;
    cancel: boolean;
    upload: boolean;
    download: boolean;
    preview: boolean;
    extend: boolean;
    snapshot: boolean;
    metrics: boolean;
    /** Ports that start listening during a run are offered as previews unasked (`sandlink/previewReady`). */
    detectPorts?: boolean;
    /** Runs can be attached to a terminal (`sandlink/run` with `pty`, `sandlink/resize`). */
    terminal?: boolean;
}

/** One setting a driver takes in a profile, from the driver's typed declaration. */
export interface SettingInfo {
    name: string;
    /** `string`, `integer`, `number`, `boolean`, `stringList`, `integerList`, `stringMap`, `table`, `numberOrString` or `network`. */
    type: string;
    /** What the driver uses when the setting is absent; absent when that depends on other settings. */
    default?: unknown;
    description: string;
    /** A connect with the driver's defaults cannot do without it (docker's `image`): ask for it, offering `settingChoices`. */
    askAtConnect?: boolean;
}

/** One credential a driver reads. */
export interface CredentialInfo {
    /** The `key` of `sandlink/setCredential` (`apiKey`). */
    key: string;
    /** The environment variable that wins over the keychain (`E2B_API_KEY`). */
    envVar: string;
    required: boolean;
    description: string;
}

export interface DriverInfo {
    id: string;
    available: boolean;
    /** Present when `available` is false: why, and how to fix it. */
    detail?: string;
    capabilities: DriverCapabilities;
    /** The driver's profile settings (its own, then `sync` and `network`); empty from servers that predate it. */
    settings?: SettingInfo[];
    /** The credentials the driver reads; empty from servers that predate it. */
    credentials?: CredentialInfo[];
}

export type SessionStateName = "connecting" | "active" | "syncing" | "disconnected" | "expired" | "error";

export interface SyncConflict {
    path: string;
    reason: string;
}

export interface HeldBackFile {
    path: string;
    rule: string;
}

export interface SyncState {
    pending: number;
    lastSyncAt?: string;
    conflicts: SyncConflict[];
    excluded?: number;
    /** Paths held back because they look like secrets (`.env`, private keys), relative to the workspace. */
    heldBackSecrets?: string[];
    /** The same files with the rule that held each back (`secret-file-name`, `github-token`, …), never the secret. */
    heldBack?: HeldBackFile[];
    /** How changes outside the editor are noticed: `watching`, or `polling` when the watch limit is exhausted. */
    watcher?: string;
}

export interface Preview {
    port: number;
    url: string;
}

export interface SessionInfo {
    sessionId: string;
    driver: string;
    profile?: string;
    state: SessionStateName;
    workspaceFolder?: string;
    remoteRoot: string;
    /** How runs are confined: `bubblewrap`, `landlock` or `none` on the local driver. */
    isolation?: string;
    startedAt: string;
    lastActivity: string;
    expiresAt?: string;
    previews: Preview[];
    sync: SyncState;
    resources?: { cpuPercent?: number; memoryBytes?: number };
    /** Why the session is in `error` or `expired`, as a sentence. */
    message?: string;
    /** Long work in flight for the session, oldest first; `sandlink/cancelJob` stops one. */
    jobs: JobInfo[];
    /** Who holds the session, in `sandlink/sessions` answers; absent elsewhere and for expired records. */
    held?: "here" | "kept" | "orphaned" | "elsewhere";
    /** What the session has cost so far by sandlink's price table (docs/cost.md). */
    cost?: SessionCost;
}

export type JobKind = "connect" | "sync" | "snapshot" | "restore";

/** One job in flight (a connect, sync, snapshot or restore). */
export interface JobInfo {
    jobId: string;
    kind: JobKind;
    title: string;
    startedAt: string;
    /** How far the job is, when it knows (a sync of many files). */
    percentage?: number;
}

export interface ProfileInfo {
    name: string;
    driver: string;
    settings: Record<string, unknown>;
    default: boolean;
    hasCredentials: boolean;
    /** `user` (config.toml) or `workspace` (the workspace's `.sandlink.toml`). */
    source: "user" | "workspace";
    /** Required credential keys found neither in the keychain nor in the environment. */
    missingCredentials: string[];
    /** A workspace profile that needs `sandlink/trustWorkspace` before it can be used. */
    needsTrust: boolean;
}

/** `capabilities.experimental.sandlink` in the server's `initialize` result. */
export interface ServerExperimentalCapabilities {
    version: number;
    drivers: DriverInfo[];
}

/** `capabilities.experimental.sandlink` in the client's `initialize` params. */
export interface ClientExperimentalCapabilities {
    notifications: boolean;
}

/** Known values of `error.data.kind` on JSON-RPC errors from the server. */
export type ErrorKind =
    | "invalidParams"
    | "unknownSession"
    | "unknownRun"
    | "unknownProfile"
    | "driverUnavailable"
    | "unsupported"
    | "credentialsMissing"
    | "pathOutsideWorkspace"
    | "syncConflict"
    | "remoteError"
    | "timeout"
    | "io"
    | "internal"
    | "keychainUnavailable"
    | "invalidProfile"
    | "workspaceNotTrusted"
    | "limitReached"
    | "portNotListening"
    | "sessionInUse"
    | "invalidMessage"
    | "unknownMethod"
    | "inputBacklogFull"
    | "unknownJob"
    | "cancelled"
    | "hostKeyUnknown"
    | "hostKeyChanged"
    | "conflict";

/** `error.data` of a `hostKeyUnknown` or `hostKeyChanged` error: the host and the fingerprint it presents now. */
export interface HostKeyData {
    kind: "hostKeyUnknown" | "hostKeyChanged";
    host: string;
    fingerprint: string;
}

/** `error.data` of a `workspaceNotTrusted` error: the fingerprint of the file as the message describes it. */
export interface WorkspaceNotTrustedData {
    kind: "workspaceNotTrusted";
    fingerprint?: string;
}

// ---------------------------------------------------------------------------------------------------------------------
// Requests, client to server
// ---------------------------------------------------------------------------------------------------------------------

export type EmptyParams = Record<string, never>;
export type EmptyResult = Record<string, never>;

export const drivers = new RequestType<EmptyParams, { drivers: DriverInfo[] }, void>("sandlink/drivers");

export interface ConnectParams {
    profile?: string;
    driver?: string;
    settings?: Record<string, unknown>;
    workspaceFolder?: string;
    sync?: boolean;
    reuse?: string;
    /** The standard LSP work-done token; progress for the connect goes there. */
    workDoneToken?: string | number;
}
export const connect = new RequestType<ConnectParams, SessionInfo, void>("sandlink/connect");

export interface DisconnectParams {
    sessionId: string;
    keep?: boolean;
}
export const disconnect = new RequestType<DisconnectParams, EmptyResult, void>("sandlink/disconnect");

export const sessions = new RequestType<EmptyParams, { sessions: SessionInfo[] }, void>("sandlink/sessions");

export const status = new RequestType<{ sessionId: string }, SessionInfo, void>("sandlink/status");

export interface RunParams {
    sessionId: string;
    /** A shell command line when `args` is absent; the program when `args` is present. Absent when `task` is given. */
    command?: string;
    /** A `.sandlink.toml` task to run by name; the server reads its command and checks the workspace's trust. */
    task?: string;
    args?: string[];
    cwd?: string;
    env?: Record<string, string>;
    stdin?: boolean;
    timeoutMs?: number;
    detach?: boolean;
    /** The run's hard limit; absent: the profile's `lifecycle.maxDuration`, else one hour for detached runs, else none. */
    maxDurationSeconds?: number;
    /** When `sandlink/timeoutWarning` (reason `runLimit`) is sent, in seconds after the start. */
    warnAtSeconds?: number[];
    /** Attaches the command (the login shell when `command` is absent) to a new terminal of this size in the sandbox. */
    pty?: PtySize;
}

/** A terminal's size in character cells. */
export interface PtySize {
    cols: number;
    rows: number;
}
export const run = new RequestType<RunParams, { runId: string }, void>("sandlink/run");

export interface InputParams {
    runId: string;
    text: string;
    eof?: boolean;
}
export const input = new RequestType<InputParams, EmptyResult, void>("sandlink/input");

export const cancel = new RequestType<{ runId: string }, EmptyResult, void>("sandlink/cancel");

/** Stops a job (connect, sync, restore) at its next safe point; the job's own request answers `cancelled`. */
export const cancelJob = new RequestType<{ jobId: string }, EmptyResult, void>("sandlink/cancelJob");

export type SyncDirection = "up" | "down" | "both";
export interface SyncParams {
    sessionId: string;
    direction?: SyncDirection;
    paths?: string[];
}
export interface SyncResult {
    /** Files written into the workspace from the sandbox (at most 1,000; `downloaded` counts them all). */
    brought?: string[];
    /** Files removed from the workspace because the sandbox removed them (at most 1,000). */
    removedLocally?: string[];
    uploaded: number;
    downloaded: number;
    deleted: number;
    bytes: number;
    conflicts: SyncConflict[];
    /** Paths this sync left alone on their own (a link leading out of the tree, a name that cannot travel). */
    skipped?: SyncConflict[];
    durationMs: number;
}
export const sync = new RequestType<SyncParams, SyncResult, void>("sandlink/sync");

export const preview = new RequestType<{ sessionId: string; port: number }, { url: string }, void>("sandlink/preview");

export interface ExtendParams {
    sessionId: string;
    seconds: number;
    /** `sandboxExpiry` (the default) extends the sandbox; `runLimit` the session's limited runs (`runId`'s alone when given). */
    reason?: LimitReason;
    runId?: string;
}
export const extend = new RequestType<ExtendParams, { expiresAt: string }, void>("sandlink/extend");

/** Counts as activity, so the session's sandbox is kept alive while an agent thinks between commands. */
export const keepalive = new RequestType<{ sessionId: string }, EmptyResult, void>("sandlink/keepalive");

export type LimitReason = "runLimit" | "sandboxExpiry";
export type ExitReason = "runLimit" | "costLimit" | "timeout" | "cancelled";
export interface SessionCost {
    usd: number;
    usdPerHour: number;
    /** When the estimate starts (the session's start). */
    since: string;
}
export interface RunCost {
    usd: number;
    usdPerHour: number;
}

export const snapshot = new RequestType<{ sessionId: string; name?: string }, { snapshotId: string; note?: string }, void>(
    "sandlink/snapshot",
);

export interface RestoreParams {
    snapshotId: string;
    profile?: string;
    driver?: string;
}
export const restore = new RequestType<RestoreParams, SessionInfo, void>("sandlink/restore");

export interface ProfilesParams {
    /** The workspace whose `.sandlink.toml` is listed too; default: the server's root. */
    workspaceFolder?: string;
}
export const profiles = new RequestType<ProfilesParams, { profiles: ProfileInfo[]; workspaceError?: string }, void>(
    "sandlink/profiles",
);

export interface SaveProfileParams {
    name: string;
    driver: string;
    settings?: Record<string, unknown>;
    default?: boolean;
}
export const saveProfile = new RequestType<SaveProfileParams, EmptyResult, void>("sandlink/saveProfile");

export const deleteProfile = new RequestType<{ name: string }, EmptyResult, void>("sandlink/deleteProfile");

export interface SetCredentialParams {
    profile: string;
    key: string;
    /** The secret itself: sent once, in this request, and never logged or kept by the extension. */
    value: string;
}
export const setCredential = new RequestType<SetCredentialParams, EmptyResult, void>("sandlink/setCredential");

export const deleteCredential = new RequestType<{ profile: string; key: string }, EmptyResult, void>(
    "sandlink/deleteCredential",
);

export interface TrustWorkspaceParams {
    /** The workspace folder (URI or absolute path); default: the server's root. */
    workspaceFolder?: string;
    /** `true` confirms the workspace, `false` revokes it. */
    trust: boolean;
    /**
     * The `data.fingerprint` of the `workspaceNotTrusted` error the user was shown: the server trusts the workspace only
     * if its `.sandlink.toml` still has it, so an edit made while the question was on screen is not trusted unseen.
     */
    fingerprint?: string;
}
export const trustWorkspace = new RequestType<TrustWorkspaceParams, EmptyResult, void>("sandlink/trustWorkspace");

export interface RunInfo {
    runId: string;
    sessionId: string;
    command: string;
    startedAt: string;
    /** How it ended, as `sandlink/exit` said; absent while it runs. */
    exit?: ExitParams;
    /** Its share of the session's cost so far, or in all once it ended. */
    cost?: RunCost;
    /** Started with `detach`: `attach` follows it, also after a restart. */
    detached?: boolean;
}
export const runs = new RequestType<{ sessionId?: string }, { runs: RunInfo[] }, void>("sandlink/runs");

export interface ResolveParams {
    sessionId: string;
    /** As `SyncState.conflicts` names it, absolute inside the workspace, or a file URI. */
    path: string;
    /** Whose version both sides keep: "workspace" copies it to the sandbox, "sandbox" brings the sandbox's back. */
    keep: "workspace" | "sandbox";
}
export const resolve = new RequestType<ResolveParams, SyncResult, void>("sandlink/resolve");

export interface TaskEntry {
    name: string;
    /** The command line the task runs, whole. */
    command: string;
    /** `name (command)` on one line as a menu shows it: control characters shown, long commands cut. */
    title: string;
}
export interface TasksResult {
    /** In file order; empty without a `.sandlink.toml` or a `[tasks]` table. */
    tasks: TaskEntry[];
    /** Whether the user trusts the workspace as its file is now (a task of an untrusted workspace asks first). */
    trusted: boolean;
    /** Why the file could not be read; the tasks are then empty. */
    error?: string;
}
export const tasks = new RequestType<{ workspaceFolder?: string }, TasksResult, void>("sandlink/tasks");
export interface AcceptHostKeyParams {
    /** The host as the `ssh` profile's `host` setting names it (`data.host` of the error). */
    host: string;
    /** The fingerprint the user checked (`data.fingerprint`); recorded only if the host presents exactly it now. */
    fingerprint: string;
    /** The profile's `configFile` setting, when it has one. */
    configFile?: string;
}
export interface AcceptHostKeyResult {
    /** The known_hosts file the key was written to. */
    knownHosts: string;
}
export const acceptHostKey = new RequestType<AcceptHostKeyParams, AcceptHostKeyResult, void>("sandlink/acceptHostKey");
export interface AttachParams {
    runId: string;
    /** The stdout byte to start from (0 when absent). */
    fromOffset?: number;
    /** The stderr byte to start from (0 when absent). */
    fromStderrOffset?: number;
}
export interface AttachResult {
    runId: string;
    sessionId: string;
    command: string;
    startedAt: string;
    /** Bytes written so far to each stream. */
    stdoutBytes: number;
    stderrBytes: number;
    /** Present once the run has ended; its exit follows the rest of its output. */
    exitCode?: number;
}
export const attach = new RequestType<AttachParams, AttachResult, void>("sandlink/attach");

export interface AllowSecretParams {
    sessionId: string;
    /** As `SyncState.heldBack` names it, absolute inside the workspace, or a file URI. */
    path: string;
    /** Also add it to the `sync.allowSecrets` of the session's profile. */
    remember?: boolean;
}

export const allowSecret = new RequestType<AllowSecretParams, SyncResult, void>("sandlink/allowSecret");

export interface SettingChoicesParams {
    driver: string;
    setting: string;
    workspaceFolder?: string;
}

export interface SettingChoice {
    value: unknown;
    label?: string;
    detail?: string;
}

export interface SettingChoicesResult {
    choices: SettingChoice[];
}

export const settingChoices = new RequestType<SettingChoicesParams, SettingChoicesResult, void>("sandlink/settingChoices");

export interface ResizeParams {
    runId: string;
    cols: number;
    rows: number;
}
/** Changes the window size of a run started with `pty`. */
export const resize = new RequestType<ResizeParams, EmptyResult, void>("sandlink/resize");


// Agent tasks: a repository cloned into a new sandbox on the branch `task-{taskId}`, committed, pushed from the host
// and opened as a pull request (docs/tasks.md).
export interface TaskStartParams {
    /** `https://host/owner/repo(.git)`; `http://` for a local server. Without it, the workspace's own repository. */
    repo?: string;
    /** The branch, tag or commit to start from; default the remote's default branch. */
    ref?: string;
    taskId: string;
    title?: string;
    profile?: string;
    driver?: string;
    settings?: Record<string, unknown>;
    workDoneToken?: string | number;
    /** The workspace whose repository a start without `repo` uses; default the server's root. */
    workspaceFolder?: string;
}
export type TaskState = "running" | "pushed" | "done" | "failed";
export interface TaskCommit {
    sha: string;
    message: string;
}
export interface TaskInfo {
    taskId: string;
    repo: string;
    branch: string;
    baseBranch: string;
    baseCommit: string;
    state: TaskState;
    title?: string;
    profile?: string;
    sessionId?: string;
    commits: TaskCommit[];
    pushedCommit?: string;
    prUrl?: string;
    prNumber?: number;
    message?: string;
    createdAt: string;
    updatedAt: string;
}
export interface TaskIdParams {
    taskId: string;
}
export interface TaskCommitParams {
    taskId: string;
    /** `type(scope)?: subject` (Conventional Commits). */
    message: string;
}
export interface TaskPrParams {
    taskId: string;
    title?: string;
    body?: string;
    draft?: boolean;
}
export interface TaskEndParams {
    taskId: string;
    keep?: boolean;
}
export interface TaskListResult {
    tasks: TaskInfo[];
}
/** `error.data` of a `conflict` error: the files the rebase onto the moved base could not merge. */
export interface ConflictData {
    kind: "conflict";
    files: string[];
}
export const taskStart = new RequestType<TaskStartParams, TaskInfo, void>("sandlink/task/start");
export const taskStatus = new RequestType<TaskIdParams, TaskInfo, void>("sandlink/task/status");
export const taskCommit = new RequestType<TaskCommitParams, TaskInfo, void>("sandlink/task/commit");
export const taskPush = new RequestType<TaskIdParams, TaskInfo, void>("sandlink/task/push");
export const taskPr = new RequestType<TaskPrParams, TaskInfo, void>("sandlink/task/pr");
export const taskList = new RequestType<Record<string, never>, TaskListResult, void>("sandlink/task/list");
export const taskEnd = new RequestType<TaskEndParams, TaskInfo, void>("sandlink/task/end");

// ---------------------------------------------------------------------------------------------------------------------
// Notifications, server to client (sent only because the client announces `experimental.sandlink.notifications`)
// ---------------------------------------------------------------------------------------------------------------------

export type OutputStream = "stdout" | "stderr";
export interface OutputParams {
    runId: string;
    stream: OutputStream;
    text: string;
    /** Increases by one per notification of a run. */
    seq: number;
    /** Detached and attached runs: the byte offset in its stream of the first byte of `text`. */
    offset?: number;
}
export const output = new NotificationType<OutputParams>("sandlink/output");

export interface ExitParams {
    runId: string;
    exitCode: number | null;
    signal?: string;
    cancelled: boolean;
    timedOut: boolean;
    durationMs: number;
    logPath?: string;
    message?: string;
    /** Why sandlink ended it, when it did. */
    reason?: ExitReason;
    cost?: RunCost;
}
export const exit = new NotificationType<ExitParams>("sandlink/exit");

export interface SessionStateParams {
    sessionId: string;
    state: SessionStateName;
    message?: string;
}
export const sessionState = new NotificationType<SessionStateParams>("sandlink/sessionState");

export type SyncStateParams = { sessionId: string } & SyncState;
export const syncState = new NotificationType<SyncStateParams>("sandlink/syncState");

export interface PreviewReadyParams {
    sessionId: string;
    port: number;
    url: string;
}
export const previewReady = new NotificationType<PreviewReadyParams>("sandlink/previewReady");

export interface TimeoutWarningParams {
    sessionId: string;
    expiresAt: string;
    secondsLeft: number;
    /** What ends: the sandbox (`sandboxExpiry`, also when absent) or one run at its limit (`runLimit`, with `runId`). */
    reason?: LimitReason;
    runId?: string;
}
export const timeoutWarning = new NotificationType<TimeoutWarningParams>("sandlink/timeoutWarning");

// ---------------------------------------------------------------------------------------------------------------------
// `workspace/executeCommand` names the server advertises for plain LSP clients and puts in its code actions and code
// lens. This extension runs them itself (server_commands.ts) instead of sending them back; the drift test checks the list.
// ---------------------------------------------------------------------------------------------------------------------

export const serverCommands = [
    "sandlink.connect",
    "sandlink.disconnect",
    "sandlink.run",
    "sandlink.cancel",
    "sandlink.sync",
    "sandlink.preview",
    "sandlink.status",
    "sandlink.extend",
] as const;

export type ServerCommand = (typeof serverCommands)[number];
