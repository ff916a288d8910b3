//! Unit tests for the status bar text and tooltip, the status bar's action list, and command enablement.

import * as assert from "node:assert/strict";
import { test } from "node:test";

import type { DriverCapabilities, SessionInfo } from "../src/protocol";
import {
    availableActions,
    commandContext,
    conflictSummary,
    errorActions,
    newConflicts,
    commandIds,
    contextKeys,
    formatCountdown,
    isCommandEnabled,
    statusBarText,
    statusBarTooltip,
    type ViewState,
} from "../src/status";

const nowMs = Date.parse("2026-01-01T12:00:00Z");

function session(overrides: Partial<SessionInfo> = {}): SessionInfo {
    return {
        sessionId: "s1",
        driver: "local",
        state: "active",
        remoteRoot: "/tmp/sandlink/s1",
        startedAt: "2026-01-01T11:00:00Z",
        lastActivity: "2026-01-01T11:59:00Z",
        previews: [],
        sync: { pending: 0, conflicts: [] },
        jobs: [],
        ...overrides,
    };
}

const allCapabilities: DriverCapabilities = {
    exec: true, stdin: true, cancel: true, upload: true, download: true, preview: true, extend: true, snapshot: true, metrics: true,
};
const localCapabilities: DriverCapabilities = { ...allCapabilities, preview: false, extend: false, snapshot: false };

function view(overrides: Partial<ViewState> = {}): ViewState {
    return { serverState: "running", activeRunCount: 0, nowMs, ...overrides };
}

test("status text says disconnected when the server runs without a session", () => {
    assert.equal(statusBarText(view()), "$(debug-disconnect) sandlink: disconnected");
});

test("status text names a missing server binary and a stopped server", () => {
    assert.match(statusBarText(view({ serverState: "missingBinary" })), /no server/);
    assert.match(statusBarText(view({ serverState: "stopped" })), /server stopped/);
    assert.match(statusBarText(view({ serverState: "starting" })), /loading~spin/);
});

test("status text shows the driver and the session state when connected", () => {
    assert.equal(statusBarText(view({ session: session() })), "$(vm-active) local: active");
});

test("status text prefers the profile name over the driver", () => {
    assert.equal(statusBarText(view({ session: session({ profile: "ci-box", driver: "docker" }) })), "$(vm-active) ci-box: active");
});

test("status text shows pending files, conflicts and running commands", () => {
    const text = statusBarText(
        view({
            session: session({ sync: { pending: 3, conflicts: [{ path: "a.txt", reason: "both changed" }] } }),
            activeRunCount: 2,
        }),
    );
    assert.equal(text, "$(vm-active) local: active $(arrow-up) 3 $(warning) 1 $(play) 2");
});

test("status text shows a spinner instead of the pending count while syncing", () => {
    const text = statusBarText(view({ session: session({ state: "syncing", sync: { pending: 5, conflicts: [] } }) }));
    assert.equal(text, "$(vm-active) local: syncing $(sync~spin)");
});

test("status text counts down to the expiry of sandboxes that have one", () => {
    const expiring = session({ driver: "e2b", expiresAt: "2026-01-01T12:12:34Z" });
    assert.equal(statusBarText(view({ session: expiring })), "$(vm-active) e2b: active $(watch) 12:34");
    assert.equal(statusBarText(view({ session: expiring, nowMs: nowMs + 754_000 })), "$(vm-active) e2b: active $(watch) 0:00");
});

test("countdowns switch to hours above sixty minutes", () => {
    assert.equal(formatCountdown(59), "0:59");
    assert.equal(formatCountdown(3600 + 61), "1:01:01");
});

test("expired and failed sessions show their state and no countdown", () => {
    const expired = session({ state: "expired", expiresAt: "2026-01-01T11:59:00Z" });
    assert.equal(statusBarText(view({ session: expired })), "$(watch) local: expired");
    assert.equal(statusBarText(view({ session: session({ state: "error" }) })), "$(error) local: error");
});

test("the tooltip lists previews with their URLs", () => {
    const tooltip = statusBarTooltip(
        view({ session: session({ previews: [{ port: 3000, url: "http://127.0.0.1:41000" }, { port: 8080, url: "https://x.example" }] }) }),
    );
    assert.match(tooltip, /port 3000: \[http:\/\/127\.0\.0\.1:41000\]/);
    assert.match(tooltip, /port 8080: \[https:\/\/x\.example\]/);
});

test("the tooltip says when there are no previews, and shows conflicts and expiry", () => {
    const tooltip = statusBarTooltip(
        view({ session: session({ expiresAt: "2026-01-01T13:00:00Z", sync: { pending: 1, conflicts: [{ path: "a", reason: "r" }] } }) }),
    );
    assert.match(tooltip, /No previews\./);
    assert.match(tooltip, /1 pending, 1 conflict\b/);
    assert.match(tooltip, /Expires in 1:00:00/);
});

test("without a session only connect-side commands are enabled", () => {
    const state = view();
    assert.equal(isCommandEnabled(commandIds.connect, state), true);
    for (const commandId of [commandIds.disconnect, commandIds.runCommand, commandIds.cancelRun, commandIds.syncNow, commandIds.openPreview, commandIds.extendTimeout, commandIds.snapshot]) {
        assert.equal(isCommandEnabled(commandId, state), false, commandId);
    }
    assert.equal(isCommandEnabled(commandIds.manageProfiles, state), true);
    assert.equal(isCommandEnabled(commandIds.setCredential, state), true);
    assert.equal(isCommandEnabled(commandIds.showLog, state), true);
});

test("with a session, session commands are enabled and connect is not", () => {
    const state = view({ session: session(), driverCapabilities: allCapabilities });
    assert.equal(isCommandEnabled(commandIds.connect, state), false);
    for (const commandId of [commandIds.disconnect, commandIds.runCommand, commandIds.syncNow, commandIds.openPreview, commandIds.extendTimeout, commandIds.snapshot]) {
        assert.equal(isCommandEnabled(commandId, state), true, commandId);
    }
    assert.equal(isCommandEnabled(commandIds.cancelRun, state), false, "no run is active");
    assert.equal(isCommandEnabled(commandIds.cancelRun, { ...state, activeRunCount: 1 }), true);
});

test("commands the driver cannot do are disabled", () => {
    const state = view({ session: session(), driverCapabilities: localCapabilities });
    assert.equal(isCommandEnabled(commandIds.extendTimeout, state), false);
    assert.equal(isCommandEnabled(commandIds.snapshot, state), false);
    assert.equal(isCommandEnabled(commandIds.openPreview, state), false);
    assert.equal(isCommandEnabled(commandIds.runCommand, state), true);
});

test("an expired session counts as no session: connect again, no runs", () => {
    const state = view({ session: session({ state: "expired" }), driverCapabilities: allCapabilities });
    assert.equal(isCommandEnabled(commandIds.connect, state), true);
    assert.equal(isCommandEnabled(commandIds.runCommand, state), false);
});

test("nothing needing the server is enabled while it is missing", () => {
    const state = view({ serverState: "missingBinary" });
    assert.equal(isCommandEnabled(commandIds.connect, state), false);
    assert.equal(isCommandEnabled(commandIds.manageProfiles, state), false);
    assert.equal(isCommandEnabled(commandIds.showLog, state), true);
});

test("context keys follow the same rules", () => {
    const context = commandContext(view({ session: session({ sync: { pending: 0, conflicts: [{ path: "a", reason: "r" }] } }), driverCapabilities: localCapabilities, activeRunCount: 1 }));
    assert.equal(context[contextKeys.sessionActive], true);
    assert.equal(context[contextKeys.runActive], true);
    assert.equal(context[contextKeys.hasConflicts], true);
    assert.equal(context[contextKeys.driverCanExtend], false);
});

test("the status bar menu offers run and disconnect when connected, connect when not", () => {
    const connected = availableActions(view({ session: session(), driverCapabilities: localCapabilities })).map((action) => action.commandId);
    assert.ok(connected.includes(commandIds.runCommand));
    assert.ok(connected.includes(commandIds.disconnect));
    assert.ok(!connected.includes(commandIds.connect));
    assert.ok(!connected.includes(commandIds.extendTimeout));
    assert.equal(connected[0], commandIds.runCommand, "running a command is the first action when connected");
    const disconnected = availableActions(view()).map((action) => action.commandId);
    assert.ok(disconnected.includes(commandIds.connect));
    assert.ok(!disconnected.includes(commandIds.runCommand));
});

test("each sync conflict is announced once, and the summary names a single file", () => {
    const conflicts = [
        { path: "src/a.rs", reason: "changed on both sides" },
        { path: "src/b.rs", reason: "deleted here, changed there" },
    ];
    assert.deepEqual(newConflicts(new Set(["src/a.rs"]), conflicts), [conflicts[1]]);
    assert.deepEqual(newConflicts(new Set(["src/a.rs", "src/b.rs"]), conflicts), []);
    assert.equal(conflictSummary([conflicts[0]]), "src/a.rs changed both here and in the sandbox (changed on both sides).");
    assert.equal(conflictSummary(conflicts), "2 files changed both here and in the sandbox.");
});

test("the tooltip names files held back as secrets and says when the watcher polls", () => {
    const tooltip = statusBarTooltip(
        view({ session: session({ sync: { pending: 0, conflicts: [], heldBackSecrets: [".env", "keys/id_ed25519"], watcher: "polling" } }) }),
    );
    assert.match(tooltip, /look like secrets: `\.env`, `keys\/id_ed25519`/);
    assert.match(tooltip, /polling/);
    const many = statusBarTooltip(
        view({ session: session({ sync: { pending: 0, conflicts: [], heldBackSecrets: ["a", "b", "c", "d", "e", "f", "g"] } }) }),
    );
    assert.match(many, /and 2 more/);
});

test("an error offers what the user can do about it: Set Credential for a missing key, Show Sessions for too many sandboxes", () => {
    assert.deepEqual(errorActions("credentialsMissing"), [{ label: "Set Credential", commandId: commandIds.setCredential }]);
    assert.deepEqual(errorActions("limitReached"), [{ label: "Show Sessions", commandId: commandIds.showSessions }]);
    assert.deepEqual(errorActions("unsupported"), []);
    assert.deepEqual(errorActions(undefined), []);
});
