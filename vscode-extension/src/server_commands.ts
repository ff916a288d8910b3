//! The `sandlink.*` commands the server puts in its code actions and code lens, bound to the extension's own flows.
//
// The language client would register every id of the server's `executeCommandProvider` as a VS Code command that
// sends `workspace/executeCommand` (vscode-languageclient's ExecuteCommandFeature calls `commands.registerCommand` for
// each id; its `executeCommand` middleware only wraps the call, not the registration). That cannot work here:
// `sandlink.connect` and `sandlink.disconnect` are this extension's palette commands, and a second `registerCommand`
// of an id throws, which fails the client's start. And sending them back to the server would bypass the extension: a
// session it did not start, a run whose output has no channel, a trust refusal shown as a bare error. So ctx.ts keeps
// that feature off, and the other ids are registered here, each running what the palette command does: a task action
// goes through `Ctx.startRun`, whose refusal for trust asks "Trust workspace" and retries once. The two shared ids
// already are the palette commands, which take the same `{ driver }` / `{ profile }` / `{ sessionId }` arguments.

import * as vscode from "vscode";

import { extendTimeout, openPreview, showActions, syncNow, type Cmd } from "./commands";
import type { Ctx } from "./ctx";
import * as protocol from "./protocol";
import { commandIds } from "./status";

/** The server's command ids that are also palette commands of this extension, and so registered with those. */
type PaletteCommand = typeof commandIds.connect | typeof commandIds.disconnect;

/** A command's one argument: the params object of the matching request (protocol.md, "Plain LSP clients"). */
function argumentObject(value: unknown): Record<string, unknown> {
    return typeof value === "object" && value !== null ? (value as Record<string, unknown>) : {};
}

/**
 * The window's session when an action offered for `sessionId` may act on it; an action left from a session that has
 * ended does nothing but say so.
 */
function sessionOfAction(ctx: Ctx, sessionId: unknown): protocol.SessionInfo | undefined {
    const session = ctx.liveSession;
    if (session === undefined) {
        void vscode.window.showInformationMessage("sandlink: not connected to a sandbox. Connect first.");
        return undefined;
    }
    if (typeof sessionId === "string" && sessionId !== session.sessionId) {
        void vscode.window.showWarningMessage(
            `sandlink: that action was offered for session ${sessionId}, which has ended; ask for the actions again.`,
        );
        return undefined;
    }
    return session;
}

/**
 * One handler per server command that is not a palette command. Typed over every id of `protocol.serverCommands`, so a
 * command the server adds (the drift test puts it in that list) fails to compile until it is handled here.
 */
export function serverCommandHandlers(ctx: Ctx): Record<Exclude<protocol.ServerCommand, PaletteCommand>, Cmd> {
    return {
        "sandlink.run": async (value?: unknown) => {
            const argument = argumentObject(value);
            if (typeof argument.task !== "string") {
                // The server's actions run tasks by name; a command line in an action would skip the trust a task needs.
                void vscode.window.showWarningMessage(
                    "sandlink: an action runs a .sandlink.toml task by name; Sandlink: Run Command runs a command line.",
                );
                return;
            }
            const session = sessionOfAction(ctx, argument.sessionId);
            if (session !== undefined) {
                await ctx.startRun(session, { task: argument.task });
            }
        },
        "sandlink.cancel": async (value?: unknown) => {
            const runId = argumentObject(value).runId;
            if (typeof runId === "string") {
                await ctx.request(protocol.cancel, { runId });
            }
        },
        "sandlink.sync": async (value?: unknown) => {
            const argument = argumentObject(value);
            if (sessionOfAction(ctx, argument.sessionId) !== undefined) {
                await syncNow(ctx)(argument.direction ?? "up");
            }
        },
        "sandlink.preview": async (value?: unknown) => {
            const argument = argumentObject(value);
            if (sessionOfAction(ctx, argument.sessionId) !== undefined) {
                await openPreview(ctx)(argument.port);
            }
        },
        "sandlink.extend": async (value?: unknown) => {
            const argument = argumentObject(value);
            if (sessionOfAction(ctx, argument.sessionId) !== undefined) {
                await extendTimeout(ctx)(argument.seconds);
            }
        },
        "sandlink.status": async () => {
            await ctx.refreshSession();
            await showActions(ctx)();
        },
    };
}

/** Registers the handlers; the returned disposables unregister them. */
export function registerServerCommands(ctx: Ctx): vscode.Disposable[] {
    return Object.entries(serverCommandHandlers(ctx)).map(([commandId, handler]) => vscode.commands.registerCommand(commandId, handler));
}
