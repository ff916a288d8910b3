//! What the Sessions view and the Connect picker show for a `sandlink/sessions` list: tree nodes, their context flags and the re-attach choices.
//
// Pure functions with no `vscode` import, so they are unit-tested under plain Node (test/sessions_tree.test.ts).
// sessions_view.ts turns the nodes into TreeItems; commands.ts turns the choices into quick pick items.

import type { ExitParams, SessionInfo } from "./protocol";
import { describeExit } from "./run_output";

/** The commands of the Sessions view, as contributed in package.json (its title bar and item context menus). */
export const sessionsViewCommandIds = {
    refresh: "sandlink.sessions.refresh",
    reattach: "sandlink.sessions.reattach",
    disconnectKeep: "sandlink.sessions.disconnectKeep",
    disconnectRemove: "sandlink.sessions.disconnectRemove",
    remove: "sandlink.sessions.remove",
    cancelRun: "sandlink.sessions.cancelRun",
    showRunOutput: "sandlink.sessions.showRunOutput",
    openPreview: "sandlink.sessions.openPreview",
    openTerminal: "sandlink.sessions.openTerminal",
    allowSecret: "sandlink.sessions.allowSecret",
} as const;

/** The view's id in package.json; VS Code derives the `<id>.focus` command from it. */
export const sessionsViewId = "sandlink.sessions";

/**
 * Words in a node's `contextValue` that package.json's `view/item/context` menus match (`viewItem =~ /\bcanReattach\b/`),
 * so each item offers only the actions that apply to it.
 */
export const contextFlags = {
    session: "session",
    canReattach: "canReattach",
    canDisconnect: "canDisconnect",
    canRemove: "canRemove",
    run: "run",
    canCancel: "canCancel",
    canShowOutput: "canShowOutput",
    preview: "preview",
    canOpen: "canOpen",
    heldBack: "heldBack",
    canAllow: "canAllow",
} as const;

/** A run started from this window, as the extension tracks it (the protocol has no request listing runs). */
export interface TrackedRun {
    runId: string;
    sessionId: string;
    /** The command line, or `task NAME`. */
    label: string;
    startedAt: string;
    /** Set once `sandlink/exit` arrived. */
    exit?: ExitParams;
}

/**
 * Where a listed session stands, as the user sees it: attached to this window, kept (disconnected with keep), left by a
 * sandlink that exited without disconnecting (a crashed or closed window), attached by another sandlink, or over.
 */
export type SessionStanding = "here" | "kept" | "orphaned" | "elsewhere" | "expired" | "error" | "busy";

export interface SessionsTreeInput {
    /** The `sandlink/sessions` answer, in its order. */
    sessions: readonly SessionInfo[];
    /** The window's own session, which is fresher than the listed copy (notifications update it). */
    currentSession?: SessionInfo;
    /** The window's workspace folders as URI strings: only their kept sessions can be re-attached here. */
    workspaceFolders: readonly string[];
    /** Runs started from this window, oldest first. */
    runs: readonly TrackedRun[];
    nowMs: number;
}

interface NodeBase {
    /** Stable across refreshes, so the tree keeps its expansion and selection. */
    id: string;
    label: string;
    description?: string;
    tooltip?: string;
    /** A codicon name (`vm-active`), rendered as a ThemeIcon. */
    icon: string;
    contextValue: string;
    children: SessionsTreeNode[];
    /** Shown expanded: the window's own session. */
    expanded?: boolean;
}

export interface SessionNode extends NodeBase {
    kind: "session";
    session: SessionInfo;
    standing: SessionStanding;
}

export interface RunNode extends NodeBase {
    kind: "run";
    run: TrackedRun;
}

export interface PreviewNode extends NodeBase {
    kind: "preview";
    port: number;
    url: string;
}

export interface HeldBackNode extends NodeBase {
    kind: "heldBack";
    path: string;
    sessionId: string;
    /** The session's workspace folder, to open the local file. */
    workspaceFolder?: string;
}

export interface MessageNode extends NodeBase {
    kind: "message";
}

export type SessionsTreeNode = SessionNode | RunNode | PreviewNode | HeldBackNode | MessageNode;

/** How many finished runs a session shows under it, newest first. */
export const recentRunsShown = 10;

/** `just now`, `5 min ago`, `3 h ago`, `2 days ago`. */
export function formatAge(sinceIso: string | undefined, nowMs: number): string | undefined {
    const since = sinceIso === undefined ? Number.NaN : Date.parse(sinceIso);
    if (Number.isNaN(since)) {
        return undefined;
    }
    const seconds = Math.max(0, Math.floor((nowMs - since) / 1000));
    if (seconds < 60) {
        return "just now";
    }
    if (seconds < 3600) {
        return `${Math.floor(seconds / 60)} min ago`;
    }
    if (seconds < 48 * 3600) {
        return `${Math.floor(seconds / 3600)} h ago`;
    }
    return `${Math.floor(seconds / 86400)} days ago`;
}

/** A workspace folder URI compared as a path: decoded, without a trailing slash. */
function normalizedFolder(uri: string): string {
    let decoded: string;
    try {
        decoded = decodeURIComponent(uri);
    } catch {
        decoded = uri;
    }
    return decoded.replace(/\/+$/, "");
}

/** The last path segment of a workspace folder URI, as menus name it. */
export function folderName(uri: string | undefined): string | undefined {
    if (uri === undefined) {
        return undefined;
    }
    const path = normalizedFolder(uri);
    return path.slice(path.lastIndexOf("/") + 1) || path;
}

function belongsToWindow(session: SessionInfo, workspaceFolders: readonly string[]): boolean {
    if (session.workspaceFolder === undefined) {
        return true;
    }
    const folder = normalizedFolder(session.workspaceFolder);
    return workspaceFolders.some((candidate) => normalizedFolder(candidate) === folder);
}

/** Where a listed session stands, from the server's `held` (who holds it) and the session's state. */
export function sessionStanding(session: SessionInfo, currentSessionId: string | undefined): SessionStanding {
    if (session.sessionId === currentSessionId) {
        return "here";
    }
    if (session.held === "elsewhere" || session.held === "kept" || session.held === "orphaned") {
        return session.held;
    }
    switch (session.state) {
        case "disconnected":
            return "kept";
        case "expired":
            return "expired";
        case "error":
            return "error";
        default:
            // Attached to this server but not this window's (e.g. connected through a code action and then replaced).
            return "busy";
    }
}

const standingWords: Record<SessionStanding, string> = {
    here: "connected here",
    kept: "kept",
    orphaned: "left by an exited sandlink",
    elsewhere: "in another window",
    expired: "expired",
    error: "error",
    busy: "attached",
};

const standingIcons: Record<SessionStanding, string> = {
    here: "vm-active",
    kept: "debug-pause",
    orphaned: "debug-disconnect",
    elsewhere: "window",
    expired: "watch",
    error: "error",
    busy: "vm-running",
};

/** Whether the session can be re-attached from this window: kept or orphaned, of one of its folders, none attached. */
export function canReattach(session: SessionInfo, input: Pick<SessionsTreeInput, "currentSession" | "workspaceFolders">): boolean {
    const standing = sessionStanding(session, input.currentSession?.sessionId);
    return (
        (standing === "kept" || standing === "orphaned") &&
        input.currentSession === undefined &&
        belongsToWindow(session, input.workspaceFolders)
    );
}

function flags(...words: Array<string | false>): string {
    return words.filter((word): word is string => word !== false).join(" ");
}

/** The Sessions view's top level: every listed session (the window's own first), each with its runs, previews and held-back files. */
export function sessionsTree(input: SessionsTreeInput): SessionsTreeNode[] {
    const currentId = input.currentSession?.sessionId;
    const listed = input.sessions.map((session) => (session.sessionId === currentId && input.currentSession ? input.currentSession : session));
    if (input.currentSession !== undefined && !listed.some((session) => session.sessionId === currentId)) {
        listed.unshift(input.currentSession);
    }
    const ordered = [...listed.filter((session) => session.sessionId === currentId), ...listed.filter((session) => session.sessionId !== currentId)];
    if (ordered.length === 0) {
        return [
            {
                kind: "message",
                id: "message:none",
                label: "No sandboxes: Sandlink: Connect starts one.",
                icon: "info",
                contextValue: "message",
                children: [],
            },
        ];
    }
    return ordered.map((session) => sessionNode(session, input));
}

function sessionNode(session: SessionInfo, input: SessionsTreeInput): SessionNode {
    const standing = sessionStanding(session, input.currentSession?.sessionId);
    const lastActive = formatAge(session.lastActivity, input.nowMs);
    const workspace = folderName(session.workspaceFolder);
    const description = [
        standingWords[standing],
        session.profile ? `${session.profile} (${session.driver})` : session.driver,
        workspace,
        lastActive && `active ${lastActive}`,
    ]
        .filter((part) => part)
        .join(" · ");
    const tooltipLines = [
        `${session.sessionId} (${session.driver}${session.profile ? `, profile ${session.profile}` : ""}): ${session.state}`,
        session.workspaceFolder && `Workspace: ${normalizedFolder(session.workspaceFolder).replace(/^file:\/\//, "")}`,
        `Started ${formatAge(session.startedAt, input.nowMs) ?? session.startedAt}, last active ${lastActive ?? session.lastActivity}`,
        session.expiresAt && `Expires at ${session.expiresAt}`,
        session.message,
        standing === "elsewhere" ? "Another sandlink (probably another editor window) has it; act on it from there." : undefined,
        (standing === "kept" || standing === "orphaned") && !belongsToWindow(session, input.workspaceFolders)
            ? "It mirrors another workspace: open that folder to re-attach it, or remove it from here."
            : undefined,
    ].filter((line): line is string => typeof line === "string" && line !== "");
    const removable = standing === "kept" || standing === "orphaned" || standing === "error";
    return {
        kind: "session",
        id: `session:${session.sessionId}`,
        // The id, as `sandlink sessions` and the Connect picker name it, so one sandbox reads the same everywhere.
        label: session.sessionId,
        description,
        tooltip: tooltipLines.join("\n"),
        icon: standingIcons[standing],
        contextValue: flags(
            contextFlags.session,
            canReattach(session, input) && contextFlags.canReattach,
            standing === "here" && contextFlags.canDisconnect,
            removable && contextFlags.canRemove,
        ),
        children: [...runNodes(session, input), ...previewNodes(session), ...heldBackNodes(session, standing === "here")],
        expanded: standing === "here",
        session,
        standing,
    };
}

function runNodes(session: SessionInfo, input: SessionsTreeInput): RunNode[] {
    const runs = input.runs.filter((run) => run.sessionId === session.sessionId);
    const running = runs.filter((run) => run.exit === undefined).reverse();
    const finished = runs.filter((run) => run.exit !== undefined).reverse().slice(0, recentRunsShown);
    return [...running, ...finished].map((run) => {
        const exit = run.exit;
        const failed = exit !== undefined && (exit.cancelled || exit.timedOut || exit.exitCode !== 0);
        return {
            kind: "run",
            id: `run:${run.runId}`,
            label: run.label,
            description: exit === undefined ? `running, started ${formatAge(run.startedAt, input.nowMs)}` : describeExit(exit).replace(/^\[|\]$/g, "").replace(/, full log: .*$/, ""),
            tooltip: `${run.runId}: ${run.label}${exit?.logPath ? `\nFull log: ${exit.logPath}` : ""}`,
            icon: exit === undefined ? "sync~spin" : failed ? "error" : "pass",
            contextValue: flags(contextFlags.run, exit === undefined && contextFlags.canCancel, contextFlags.canShowOutput),
            children: [],
            run,
        };
    });
}

function previewNodes(session: SessionInfo): PreviewNode[] {
    return session.previews.map((preview) => ({
        kind: "preview",
        id: `preview:${session.sessionId}:${preview.port}`,
        label: `port ${preview.port}`,
        description: preview.url,
        tooltip: `Preview of port ${preview.port}: ${preview.url}`,
        icon: "globe",
        contextValue: flags(contextFlags.preview, contextFlags.canOpen),
        children: [],
        port: preview.port,
        url: preview.url,
    }));
}

/** Held-back files; only the window's own session can upload one (`sandlink/allowSecret` needs it attached). */
function heldBackNodes(session: SessionInfo, attachedHere: boolean): HeldBackNode[] {
    // `heldBack` carries the rule; older servers send only `heldBackSecrets`.
    const files = session.sync.heldBack ?? (session.sync.heldBackSecrets ?? []).map((path) => ({ path, rule: "secret-file-name" }));
    return files.map((file) => ({
        kind: "heldBack",
        id: `heldBack:${session.sessionId}:${file.path}`,
        label: file.path,
        description: `held back (${file.rule})`,
        tooltip: `${file.path} looks like a secret (${file.rule}), so it was not uploaded to the sandbox.`,
        icon: "lock",
        contextValue: flags(contextFlags.heldBack, attachedHere && contextFlags.canAllow),
        children: [],
        path: file.path,
        sessionId: session.sessionId,
        workspaceFolder: session.workspaceFolder,
    }));
}

/** A Connect picker entry that re-attaches a kept or orphaned session of this window's workspace. */
export interface ReattachChoice {
    label: string;
    description: string;
    detail?: string;
    sessionId: string;
}

/** The Connect picker's re-attach entries: "Re-attach ID" with driver, workspace and last activity, newest first. */
export function reattachChoices(
    sessions: readonly SessionInfo[],
    workspaceFolders: readonly string[],
    nowMs: number,
): ReattachChoice[] {
    return sessions
        .filter((session) => canReattach(session, { currentSession: undefined, workspaceFolders }))
        .sort((left, right) => Date.parse(right.lastActivity) - Date.parse(left.lastActivity))
        .map((session) => {
            const lastActive = formatAge(session.lastActivity, nowMs);
            return {
                label: `$(debug-restart) Re-attach ${session.sessionId}`,
                description: [
                    session.profile ? `${session.profile} (${session.driver})` : session.driver,
                    folderName(session.workspaceFolder),
                    lastActive && `last active ${lastActive}`,
                ]
                    .filter((part) => part)
                    .join(", "),
                detail: sessionStanding(session, undefined) === "orphaned" ? "Left by a sandlink that exited without disconnecting" : "Kept by a disconnect",
                sessionId: session.sessionId,
            };
        });
}
