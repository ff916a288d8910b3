//! What the UI shows for a given state: status bar text and tooltip, the actions worth offering, and command enablement.
//
// Pure functions of a `ViewState`, with no `vscode` import, so they are unit-tested under plain Node
// (test/status.test.ts). ctx.ts feeds them and applies the results to the status bar item and the context keys.

import type { DriverCapabilities, SessionInfo, SyncConflict } from "./protocol";

/** The extension's own command ids, as contributed in package.json. */
export const commandIds = {
    connect: "sandlink.connect",
    disconnect: "sandlink.disconnect",
    runCommand: "sandlink.runCommand",
    cancelRun: "sandlink.cancelRun",
    syncNow: "sandlink.syncNow",
    openPreview: "sandlink.openPreview",
    extendTimeout: "sandlink.extendTimeout",
    snapshot: "sandlink.snapshot",
    restore: "sandlink.restore",
    manageProfiles: "sandlink.manageProfiles",
    setCredential: "sandlink.setCredential",
    showLog: "sandlink.showLog",
    showActions: "sandlink.showActions",
    compareConflict: "sandlink.compareConflict",
    resolveConflict: "sandlink.resolveConflict",
    showSessions: "sandlink.showSessions",
    openTerminal: "sandlink.openTerminal",
    startTask: "sandlink.startTask",
    openPullRequest: "sandlink.openPullRequest",
} as const;

export type CommandId = (typeof commandIds)[keyof typeof commandIds];

/** Context keys set with `setContext`, used by the `when` clauses in package.json. */
export const contextKeys = {
    serverRunning: "sandlink.serverRunning",
    sessionActive: "sandlink.sessionActive",
    runActive: "sandlink.runActive",
    hasConflicts: "sandlink.hasConflicts",
    driverCanPreview: "sandlink.driverCanPreview",
    driverCanExtend: "sandlink.driverCanExtend",
    driverCanSnapshot: "sandlink.driverCanSnapshot",
} as const;

export type ServerState = "starting" | "running" | "stopped" | "missingBinary";

export interface ViewState {
    serverState: ServerState;
    /** The window's current session; absent when not connected. */
    session?: SessionInfo;
    /** Capabilities of the session's driver, from the server's driver list; absent when unknown. */
    driverCapabilities?: DriverCapabilities;
    /** Runs started from this window that have not exited yet. */
    activeRunCount: number;
    /** The clock, injected so that countdowns are testable. */
    nowMs: number;
}

/** A session in these states can run commands; the others are over or broken. */
export function isSessionLive(session: SessionInfo | undefined): session is SessionInfo {
    return session !== undefined && ["connecting", "active", "syncing"].includes(session.state);
}

/** Seconds until the sandbox expires, never negative; undefined when the sandbox has no expiry. */
export function secondsUntilExpiry(session: SessionInfo | undefined, nowMs: number): number | undefined {
    if (session?.expiresAt === undefined) {
        return undefined;
    }
    const expiresAtMs = Date.parse(session.expiresAt);
    if (Number.isNaN(expiresAtMs)) {
        return undefined;
    }
    return Math.max(0, Math.floor((expiresAtMs - nowMs) / 1000));
}

/** `m:ss` below an hour, `h:mm:ss` above. */
export function formatCountdown(totalSeconds: number): string {
    const hours = Math.floor(totalSeconds / 3600);
    const minutes = Math.floor((totalSeconds % 3600) / 60);
    const seconds = totalSeconds % 60;
    const twoDigits = (value: number) => value.toString().padStart(2, "0");
    return hours > 0 ? `${hours}:${twoDigits(minutes)}:${twoDigits(seconds)}` : `${minutes}:${twoDigits(seconds)}`;
}

/** The status bar text, with codicons: driver, session state, sync state and the expiry countdown. */
export function statusBarText(state: ViewState): string {
    switch (state.serverState) {
        case "starting":
            return "$(loading~spin) sandlink";
        case "missingBinary":
            return "$(error) sandlink: no server";
        case "stopped":
            return "$(debug-disconnect) sandlink: server stopped";
        case "running":
            break;
    }
    const session = state.session;
    if (session === undefined) {
        return "$(debug-disconnect) sandlink: disconnected";
    }
    const parts: string[] = [`${sessionStateIcon(session.state)} ${session.profile ?? session.driver}: ${session.state}`];
    if (session.state === "syncing") {
        parts.push("$(sync~spin)");
    } else if (session.sync.pending > 0) {
        parts.push(`$(arrow-up) ${session.sync.pending}`);
    }
    if (session.sync.conflicts.length > 0) {
        parts.push(`$(warning) ${session.sync.conflicts.length}`);
    }
    if (state.activeRunCount > 0) {
        parts.push(`$(play) ${state.activeRunCount}`);
    }
    const secondsLeft = secondsUntilExpiry(session, state.nowMs);
    if (secondsLeft !== undefined && isSessionLive(session)) {
        parts.push(`$(watch) ${formatCountdown(secondsLeft)}`);
    }
    return parts.join(" ");
}

function sessionStateIcon(sessionState: SessionInfo["state"]): string {
    switch (sessionState) {
        case "connecting":
            return "$(loading~spin)";
        case "active":
        case "syncing":
            return "$(vm-active)";
        case "disconnected":
            return "$(debug-disconnect)";
        case "expired":
            return "$(watch)";
        case "error":
            return "$(error)";
    }
}

/** The tooltip, as Markdown: what the session is, its sync state, and its previews. */
export function statusBarTooltip(state: ViewState): string {
    if (state.serverState === "missingBinary") {
        return "The sandlink server binary was not found. Click for the actions available.";
    }
    const session = state.session;
    if (session === undefined) {
        return "sandlink: not connected. Click to connect.";
    }
    const lines: string[] = [
        `**sandlink** — ${session.driver}${session.profile ? ` (profile ${session.profile})` : ""}: ${session.state}`,
        "",
        `Remote root: \`${session.remoteRoot}\``,
    ];
    if (session.message) {
        lines.push("", session.message);
    }
    const syncLine = [`Sync: ${session.sync.pending} pending`];
    if (session.sync.conflicts.length > 0) {
        syncLine.push(`${session.sync.conflicts.length} conflict${session.sync.conflicts.length === 1 ? "" : "s"}`);
    }
    if (session.sync.lastSyncAt) {
        syncLine.push(`last at ${session.sync.lastSyncAt}`);
    }
    if (session.sync.watcher === "polling") {
        syncLine.push("changes outside the editor are found by polling (the file watch limit is exhausted)");
    }
    lines.push("", syncLine.join(", "));
    const heldBack = session.sync.heldBackSecrets ?? [];
    if (heldBack.length > 0) {
        // Secrets are never uploaded; saying which files were held back explains a "file not found" in the sandbox.
        const shown = heldBack.slice(0, 5).map((path) => `\`${path}\``).join(", ");
        lines.push("", `Not uploaded because they look like secrets: ${shown}${heldBack.length > 5 ? ` and ${heldBack.length - 5} more` : ""}`);
    }
    const secondsLeft = secondsUntilExpiry(session, state.nowMs);
    if (secondsLeft !== undefined) {
        lines.push("", `Expires in ${formatCountdown(secondsLeft)} (at ${session.expiresAt})`);
    }
    lines.push("");
    if (session.previews.length === 0) {
        lines.push("No previews.");
    } else {
        lines.push("Previews:");
        for (const preview of session.previews) {
            lines.push(`- port ${preview.port}: [${preview.url}](${preview.url})`);
        }
    }
    lines.push("", "Click for actions.");
    return lines.join("\n");
}

/** Values for every context key in `contextKeys`; package.json's `when` clauses enable commands from these. */
export function commandContext(state: ViewState): Record<(typeof contextKeys)[keyof typeof contextKeys], boolean> {
    const serverRunning = state.serverState === "running";
    const sessionActive = serverRunning && isSessionLive(state.session);
    // Unknown capabilities (a driver missing from the server's list) enable the command; the server then answers with
    // an `unsupported` error that says why, which is better than a command that silently never appears.
    const capability = (name: keyof DriverCapabilities) => sessionActive && (state.driverCapabilities?.[name] ?? true);
    return {
        [contextKeys.serverRunning]: serverRunning,
        [contextKeys.sessionActive]: sessionActive,
        [contextKeys.runActive]: sessionActive && state.activeRunCount > 0,
        [contextKeys.hasConflicts]: sessionActive && (state.session?.sync.conflicts.length ?? 0) > 0,
        [contextKeys.driverCanPreview]: capability("preview"),
        [contextKeys.driverCanExtend]: capability("extend"),
        [contextKeys.driverCanSnapshot]: capability("snapshot"),
    };
}

/** Whether a command makes sense now; the same rules as the `when` clauses, for code paths that bypass the palette. */
export function isCommandEnabled(commandId: CommandId, state: ViewState): boolean {
    const context = commandContext(state);
    switch (commandId) {
        case commandIds.connect:
            return context[contextKeys.serverRunning] && !context[contextKeys.sessionActive];
        case commandIds.disconnect:
        case commandIds.runCommand:
        case commandIds.syncNow:
        case commandIds.openTerminal:
            return context[contextKeys.sessionActive];
        case commandIds.cancelRun:
            return context[contextKeys.runActive];
        case commandIds.openPreview:
            return context[contextKeys.driverCanPreview];
        case commandIds.extendTimeout:
            return context[contextKeys.driverCanExtend];
        case commandIds.snapshot:
            return context[contextKeys.driverCanSnapshot];
        case commandIds.compareConflict:
        case commandIds.resolveConflict:
            return context[contextKeys.hasConflicts];
        case commandIds.restore:
        case commandIds.showSessions:
        case commandIds.manageProfiles:
        case commandIds.setCredential:
        case commandIds.startTask:
        case commandIds.openPullRequest:
            return context[contextKeys.serverRunning];
        case commandIds.showLog:
        case commandIds.showActions:
            return true;
    }
}

export interface StatusAction {
    commandId: CommandId;
    label: string;
    description?: string;
}

/** The actions the status bar's quick pick offers now, most likely first. */
export function availableActions(state: ViewState): StatusAction[] {
    const session = state.session;
    const candidates: StatusAction[] = [
        { commandId: commandIds.runCommand, label: "$(play) Run Command" },
        {
            commandId: commandIds.cancelRun,
            label: "$(debug-stop) Cancel Run",
            description: `${state.activeRunCount} running`,
        },
        {
            commandId: commandIds.syncNow,
            label: "$(sync) Sync Now",
            description: session && session.sync.pending > 0 ? `${session.sync.pending} pending` : undefined,
        },
        {
            commandId: commandIds.compareConflict,
            label: "$(diff) Compare Sync Conflict",
            description: session ? `${session.sync.conflicts.length} conflicts` : undefined,
        },
        { commandId: commandIds.resolveConflict, label: "$(check-all) Resolve Sync Conflict" },
        {
            commandId: commandIds.openPreview,
            label: "$(globe) Open Preview",
            description: session?.previews.map((preview) => String(preview.port)).join(", ") || undefined,
        },
        {
            commandId: commandIds.extendTimeout,
            label: "$(watch) Extend Timeout",
            description: (() => {
                const secondsLeft = secondsUntilExpiry(session, state.nowMs);
                return secondsLeft === undefined ? undefined : `${formatCountdown(secondsLeft)} left`;
            })(),
        },
        { commandId: commandIds.snapshot, label: "$(device-camera) Snapshot" },
        { commandId: commandIds.disconnect, label: "$(debug-disconnect) Disconnect" },
        { commandId: commandIds.connect, label: "$(plug) Connect" },
        { commandId: commandIds.restore, label: "$(history) Restore" },
        { commandId: commandIds.showSessions, label: "$(list-tree) Show Sessions", description: "kept sandboxes too" },
        { commandId: commandIds.manageProfiles, label: "$(list-unordered) Manage Profiles" },
        { commandId: commandIds.setCredential, label: "$(key) Set Credential" },
        { commandId: commandIds.showLog, label: "$(output) Show Log" },
    ];
    return candidates.filter((action) => isCommandEnabled(action.commandId, state));
}

/** A button on an error message that runs one of the extension's commands. */
export interface ErrorAction {
    label: string;
    commandId: CommandId;
}

/**
 * The buttons an error of a `data.kind` gets besides Show Log: what the user can do about it in this editor. A missing
 * credential is stored with Set Credential; too many sandboxes are listed (kept ones too) and removed in Show Sessions.
 */
export function errorActions(kind: string | undefined): ErrorAction[] {
    switch (kind) {
        case "credentialsMissing":
            return [{ label: "Set Credential", commandId: commandIds.setCredential }];
        case "limitReached":
            return [{ label: "Show Sessions", commandId: commandIds.showSessions }];
        default:
            return [];
    }
}

/** Conflicts not seen before, so that each conflict is announced once however often the sync state repeats it. */
export function newConflicts(knownPaths: ReadonlySet<string>, conflicts: readonly SyncConflict[]): SyncConflict[] {
    return conflicts.filter((conflict) => !knownPaths.has(conflict.path));
}

/** The warning shown for newly found conflicts. */
export function conflictSummary(conflicts: readonly SyncConflict[]): string {
    return conflicts.length === 1
        ? `${conflicts[0].path} changed both here and in the sandbox (${conflicts[0].reason}).`
        : `${conflicts.length} files changed both here and in the sandbox.`;
}
