//! "Sandlink: Open Terminal": a VS Code terminal (a `vscode.Pseudoterminal`) on a run attached to a pseudo-terminal in the
//! sandbox, through `TerminalBridge`: keys go to the run, the panel's size follows, closing the terminal ends the run.

import * as vscode from "vscode";

import type { Ctx } from "./ctx";
import * as protocol from "./protocol";
import { TerminalBridge, type TerminalHost } from "./terminal_bridge";
import { writeTestLog } from "./test_log";

/** The requests and notifications of one window's server, as the bridge takes them. */
function hostFor(ctx: Ctx): TerminalHost {
    return {
        run: (params) => ctx.requestOrThrow(protocol.run, params),
        input: (params) => ctx.requestOrThrow(protocol.input, params),
        resize: (params) => ctx.requestOrThrow(protocol.resize, params),
        cancel: (params) => ctx.requestOrThrow(protocol.cancel, params),
        follow: (runId, sink) => ctx.followRun(runId, sink),
    };
}

/** A terminal in the panel bound to a new run on a terminal in `session`'s sandbox (the login shell, or `command`). */
export function createSandboxTerminal(ctx: Ctx, session: protocol.SessionInfo, command?: string): vscode.Terminal {
    return vscode.window.createTerminal(terminalOptions(ctx, session, command));
}

/** The options of such a terminal: its name, icon, and the pseudoterminal that binds it to the run. */
function terminalOptions(ctx: Ctx, session: protocol.SessionInfo, command?: string): vscode.ExtensionTerminalOptions {
    const writes = new vscode.EventEmitter<string>();
    const closes = new vscode.EventEmitter<number | void>();
    const bridge = new TerminalBridge(
        hostFor(ctx),
        {
            write: (text) => {
                writeTestLog("terminalOutput", { runId: bridge.id ?? null, text });
                writes.fire(text);
            },
            ended: (exit) => {
                writeTestLog("terminalExit", { runId: exit.runId, exitCode: exit.exitCode ?? null, cancelled: exit.cancelled });
                // The terminal stays open on its last line, as VS Code's own do when their shell exits with an error.
                if (exit.exitCode === 0) {
                    closes.fire(0);
                }
            },
        },
        session.sessionId,
        command,
    );
    const pty: vscode.Pseudoterminal = {
        onDidWrite: writes.event,
        onDidClose: closes.event,
        open: (initialDimensions) => {
            void bridge.open(initialDimensions ? { cols: initialDimensions.columns, rows: initialDimensions.rows } : undefined).then((runId) => {
                if (runId !== undefined) {
                    writeTestLog("terminalStarted", { runId, sessionId: session.sessionId });
                }
            });
        },
        close: () => {
            void bridge.close();
            writes.dispose();
            closes.dispose();
        },
        handleInput: (data) => void bridge.input(data),
        setDimensions: (dimensions) => void bridge.resize({ cols: dimensions.columns, rows: dimensions.rows }),
    };
    const name = `sandlink: ${session.profile ?? session.driver}`;
    return { name, pty, iconPath: new vscode.ThemeIcon("terminal") };
}

/** The "sandlink" terminal profile (the terminal panel's + menu): a terminal on the current session's sandbox. */
export function registerTerminalProfile(ctx: Ctx): vscode.Disposable {
    return vscode.window.registerTerminalProfileProvider(terminalProfileId, {
        provideTerminalProfile: () => {
            const session = ctx.currentSession;
            if (session === undefined) {
                throw new Error("sandlink: connect first (Sandlink: Connect), then open a sandlink terminal.");
            }
            return new vscode.TerminalProfile(terminalOptions(ctx, session));
        },
    });
}

/** The profile's id in package.json's `contributes.terminal.profiles`. */
export const terminalProfileId = "sandlink.terminal";

/** The command: a terminal on the current session's sandbox, shown at once. */
export function openTerminal(ctx: Ctx): () => Promise<void> {
    return async () => {
        const session = ctx.currentSession;
        if (session === undefined) {
            void vscode.window.showInformationMessage("sandlink: connect first (Sandlink: Connect), then open a terminal.");
            return;
        }
        createSandboxTerminal(ctx, session).show();
    };
}
