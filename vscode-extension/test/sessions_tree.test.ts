//! Unit tests for the Sessions view's nodes (standing, flags, runs, previews, held-back files) and the Connect picker's re-attach entries.

import * as assert from "node:assert/strict";
import { test } from "node:test";

import type { SessionInfo } from "../src/protocol";
import {
    canReattach,
    formatAge,
    reattachChoices,
    sessionStanding,
    sessionsTree,
    type RunNode,
    type SessionNode,
    type SessionsTreeInput,
    type TrackedRun,
} from "../src/sessions_tree";

const nowMs = Date.parse("2026-01-01T12:00:00Z");
const folder = "file:///home/me/app";

function session(overrides: Partial<SessionInfo> = {}): SessionInfo {
    return {
        sessionId: "local-1",
        driver: "local",
        state: "active",
        workspaceFolder: folder,
        remoteRoot: "/state/sessions/local-1/root",
        startedAt: "2026-01-01T11:00:00Z",
        lastActivity: "2026-01-01T11:55:00Z",
        previews: [],
        sync: { pending: 0, conflicts: [] },
        jobs: [],
        ...overrides,
    };
}

const kept = session({
    sessionId: "local-kept",
    state: "disconnected",
    held: "kept",
    message: "Kept; connect again from this workspace to re-attach (local-kept).",
    lastActivity: "2026-01-01T10:00:00Z",
});
const orphaned = session({
    sessionId: "local-orphan",
    state: "disconnected",
    held: "orphaned",
    message: "Left by a sandlink that exited; connect again from its workspace to re-attach (local-orphan).",
    lastActivity: "2026-01-01T11:58:30Z",
});
const elsewhere = session({
    sessionId: "local-other-window",
    state: "active",
    held: "elsewhere",
    message: "Attached by another sandlink (process 42, probably another editor window).",
});
const otherWorkspace = session({
    sessionId: "docker-elsewhere",
    driver: "docker",
    state: "disconnected",
    workspaceFolder: "file:///home/me/other",
    held: "kept",
    message: "Kept; connect again from this workspace to re-attach (docker-elsewhere).",
});

function input(overrides: Partial<SessionsTreeInput> = {}): SessionsTreeInput {
    return { sessions: [], workspaceFolders: [folder], runs: [], nowMs, ...overrides };
}

function sessionNodes(treeInput: SessionsTreeInput): SessionNode[] {
    return sessionsTree(treeInput).filter((node): node is SessionNode => node.kind === "session");
}

test("a listed session's standing is read from the server's held and the session's state", () => {
    assert.equal(sessionStanding(kept, undefined), "kept");
    assert.equal(sessionStanding(orphaned, undefined), "orphaned");
    assert.equal(sessionStanding(elsewhere, undefined), "elsewhere");
    assert.equal(sessionStanding(session({ state: "expired" }), undefined), "expired");
    assert.equal(sessionStanding(session(), "local-1"), "here");
});

test("kept and orphaned sessions of the window's folder can be re-attached, but not while connected nor from another folder", () => {
    assert.ok(canReattach(kept, { workspaceFolders: [folder] }));
    assert.ok(canReattach(orphaned, { workspaceFolders: [`${folder}/`] }), "a trailing slash is the same folder");
    assert.ok(!canReattach(kept, { workspaceFolders: [folder], currentSession: session() }));
    assert.ok(!canReattach(otherWorkspace, { workspaceFolders: [folder] }));
    assert.ok(!canReattach(elsewhere, { workspaceFolders: [folder] }));
});

test("the tree lists the window's session first, expanded, then every other one with what the user can do to it", () => {
    const current = session({ sessionId: "local-here" });
    const nodes = sessionNodes(input({ sessions: [kept, orphaned, elsewhere, otherWorkspace, current], currentSession: current }));
    assert.deepEqual(
        nodes.map((node) => [node.session.sessionId, node.standing]),
        [
            ["local-here", "here"],
            ["local-kept", "kept"],
            ["local-orphan", "orphaned"],
            ["local-other-window", "elsewhere"],
            ["docker-elsewhere", "kept"],
        ],
    );
    assert.ok(nodes[0].expanded);
    const flagsOf = (id: string) => nodes.find((node) => node.session.sessionId === id)?.contextValue.split(" ") ?? [];
    assert.deepEqual(flagsOf("local-here"), ["session", "canDisconnect"]);
    // Connected: a kept session is removable, but re-attaching waits for a disconnect.
    assert.deepEqual(flagsOf("local-kept"), ["session", "canRemove"]);
    assert.deepEqual(flagsOf("local-other-window"), ["session"]);
    const disconnected = sessionNodes(input({ sessions: [kept, orphaned, otherWorkspace] }));
    assert.deepEqual(disconnected.map((node) => node.contextValue), ["session canReattach canRemove", "session canReattach canRemove", "session canRemove"]);
});

test("a session's description says where it stands, its driver, its workspace and when it was last active", () => {
    const [keptNode, orphanNode] = sessionNodes(input({ sessions: [kept, orphaned] }));
    assert.equal(keptNode.description, "kept · local · app · active 2 h ago");
    assert.equal(orphanNode.description, "left by an exited sandlink · local · app · active 1 min ago");
    assert.match(keptNode.tooltip ?? "", /Kept; connect again/);
    assert.equal(keptNode.label, "local-kept", "labelled with the id, as the CLI and the Connect picker name it");
    const [profileNode] = sessionNodes(input({ sessions: [{ ...kept, profile: "dev" }] }));
    assert.equal(profileNode.description, "kept · dev (local) · app · active 2 h ago");
    const [otherNode] = sessionNodes(input({ sessions: [otherWorkspace] }));
    assert.match(otherNode.tooltip ?? "", /open that folder to re-attach it/);
});

test("the window's session is shown as the window knows it, even before the server lists it", () => {
    const current = session({ sessionId: "local-new", state: "syncing" });
    const nodes = sessionNodes(input({ sessions: [session({ sessionId: "local-new", state: "connecting" })], currentSession: current }));
    assert.equal(nodes.length, 1);
    assert.equal(nodes[0].session.state, "syncing");
    assert.equal(sessionNodes(input({ currentSession: current })).length, 1);
});

test("an empty list says how to start a sandbox", () => {
    const nodes = sessionsTree(input());
    assert.equal(nodes.length, 1);
    assert.equal(nodes[0].kind, "message");
    assert.match(nodes[0].label, /Sandlink: Connect/);
});

test("runs show under their session: running first (cancellable), then the recent ones with how they ended", () => {
    const current = session();
    const runs: TrackedRun[] = [
        { runId: "run-1", sessionId: "local-1", label: "npm test", startedAt: "2026-01-01T11:50:00Z", exit: { runId: "run-1", exitCode: 1, cancelled: false, timedOut: false, durationMs: 2500, logPath: "/logs/run-1.log" } },
        { runId: "run-2", sessionId: "local-1", label: "npm start", startedAt: "2026-01-01T11:56:00Z" },
        { runId: "run-3", sessionId: "local-1", label: "task build", startedAt: "2026-01-01T11:57:00Z", exit: { runId: "run-3", exitCode: 0, cancelled: false, timedOut: false, durationMs: 300 } },
        { runId: "run-9", sessionId: "other", label: "ls", startedAt: "2026-01-01T11:57:00Z" },
    ];
    const [node] = sessionNodes(input({ sessions: [current], currentSession: current, runs }));
    const runNodes = node.children.filter((child): child is RunNode => child.kind === "run");
    assert.deepEqual(runNodes.map((run) => run.run.runId), ["run-2", "run-3", "run-1"]);
    assert.equal(runNodes[0].contextValue, "run canCancel canShowOutput");
    assert.equal(runNodes[0].description, "running, started 4 min ago");
    assert.equal(runNodes[1].contextValue, "run canShowOutput");
    assert.equal(runNodes[1].description, "exit code 0 after 300 ms");
    assert.equal(runNodes[2].icon, "error");
    assert.match(runNodes[2].tooltip ?? "", /Full log: \/logs\/run-1\.log/);
});

test("only the ten newest finished runs of a session are shown", () => {
    const runs: TrackedRun[] = Array.from({ length: 14 }, (_, index) => ({
        runId: `run-${index}`,
        sessionId: "local-1",
        label: `echo ${index}`,
        startedAt: "2026-01-01T11:50:00Z",
        exit: { runId: `run-${index}`, exitCode: 0, cancelled: false, timedOut: false, durationMs: 10 },
    }));
    const [node] = sessionNodes(input({ sessions: [session()], currentSession: session(), runs }));
    const shown = node.children.filter((child): child is RunNode => child.kind === "run").map((run) => run.run.runId);
    assert.equal(shown.length, 10);
    assert.equal(shown[0], "run-13");
});

test("previews can be opened and held-back files are listed with the rule that held them back", () => {
    const current = session({
        previews: [{ port: 8000, url: "http://127.0.0.1:8000/" }],
        sync: { pending: 0, conflicts: [], heldBackSecrets: [".env"], heldBack: [{ path: ".env", rule: "secret-file-name" }, { path: "keys/id", rule: "private-key" }] },
    });
    const [node] = sessionNodes(input({ sessions: [current], currentSession: current }));
    const kinds = node.children.map((child) => [child.kind, child.label, child.contextValue]);
    assert.deepEqual(kinds, [
        ["preview", "port 8000", "preview canOpen"],
        ["heldBack", ".env", "heldBack canAllow"],
        ["heldBack", "keys/id", "heldBack canAllow"],
    ]);
    assert.equal(node.children[2].description, "held back (private-key)");
    // An older server sends only the paths.
    const older = session({ sync: { pending: 0, conflicts: [], heldBackSecrets: [".env"] } });
    const [olderNode] = sessionNodes(input({ sessions: [older] }));
    assert.deepEqual(olderNode.children.map((child) => child.label), [".env"]);
    // Only the window's own session can upload one; another's files are listed without the action.
    assert.deepEqual(olderNode.children.map((child) => child.contextValue), ["heldBack"]);
});

test("the Connect picker offers kept and orphaned sessions of this folder as Re-attach entries, most recently active first", () => {
    const choices = reattachChoices([kept, orphaned, elsewhere, otherWorkspace, session({ sessionId: "live" })], [folder], nowMs);
    assert.deepEqual(
        choices.map((choice) => [choice.label, choice.description, choice.sessionId]),
        [
            ["$(debug-restart) Re-attach local-orphan", "local, app, last active 1 min ago", "local-orphan"],
            ["$(debug-restart) Re-attach local-kept", "local, app, last active 2 h ago", "local-kept"],
        ],
    );
    assert.match(choices[0].detail ?? "", /exited/);
    const withProfile = reattachChoices([{ ...kept, profile: "dev" }], [folder], nowMs);
    assert.equal(withProfile[0].description, "dev (local), app, last active 2 h ago");
});

test("ages read as a person would say them", () => {
    assert.equal(formatAge("2026-01-01T11:59:30Z", nowMs), "just now");
    assert.equal(formatAge("2026-01-01T11:30:00Z", nowMs), "30 min ago");
    assert.equal(formatAge("2025-12-29T12:00:00Z", nowMs), "3 days ago");
    assert.equal(formatAge("not a time", nowMs), undefined);
    assert.equal(formatAge(undefined, nowMs), undefined);
});
