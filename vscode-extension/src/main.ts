//! The extension's entry point: creates the window's `Ctx`, registers the commands and the Sessions view, starts the server.

import * as vscode from "vscode";

import { RemoteFileContentProvider, commandFactories, connectWith } from "./commands";
import { changeNeedsServerRestart } from "./config";
import { Ctx, remoteFileScheme } from "./ctx";
import { registerServerCommands } from "./server_commands";
import { SessionsView } from "./sessions_view";
import { registerTaskProvider } from "./task_provider";
import { registerTerminalProfile } from "./terminal";
import { writeTestLog } from "./test_log";

let ctx: Ctx | undefined;

export async function activate(extensionContext: vscode.ExtensionContext): Promise<void> {
    const windowCtx = new Ctx(extensionContext);
    ctx = windowCtx;
    extensionContext.subscriptions.push(windowCtx);
    writeTestLog("activated", {
        version: extensionContext.extension.packageJSON.version as string,
        // The end-to-end test checks this to tell a window that started without the user settings.
        serverPath: windowCtx.currentConfig.serverPath ?? null,
    });

    for (const [commandId, factory] of Object.entries(commandFactories)) {
        extensionContext.subscriptions.push(vscode.commands.registerCommand(commandId, factory(windowCtx)));
    }
    const sessionsView = new SessionsView(windowCtx);
    extensionContext.subscriptions.push(sessionsView, ...sessionsView.registerCommands());
    // The commands in the server's code actions (a task, sync, cancel, ...), run through the same flows as the palette.
    extensionContext.subscriptions.push(...registerServerCommands(windowCtx));
    extensionContext.subscriptions.push(registerTaskProvider(windowCtx));
    extensionContext.subscriptions.push(registerTerminalProfile(windowCtx));
    extensionContext.subscriptions.push(
        vscode.workspace.registerTextDocumentContentProvider(remoteFileScheme, new RemoteFileContentProvider(windowCtx)),
        vscode.workspace.onDidChangeConfiguration((event) => {
            if (!event.affectsConfiguration("sandlink")) {
                return;
            }
            windowCtx.reloadConfig();
            writeTestLog("configurationChanged", { needsRestart: changeNeedsServerRestart(event) });
            if (changeNeedsServerRestart(event) && !windowCtx.isServerRunning) {
                // Nothing to interrupt (e.g. the binary was missing and the path has just been fixed): start right away.
                void windowCtx.restartServer();
            } else if (changeNeedsServerRestart(event)) {
                void vscode.window
                    .showInformationMessage("sandlink: restart the server for the new settings to apply?", "Restart")
                    .then((choice) => (choice === "Restart" ? windowCtx.restartServer() : undefined));
            }
        }),
    );

    await windowCtx.startServer();

    const config = windowCtx.currentConfig;
    if (config.connectOnOpen && (vscode.workspace.workspaceFolders?.length ?? 0) > 0) {
        // An empty defaultProfile leaves the choice to the server, which uses the profile marked default.
        void connectWith(windowCtx, config.defaultProfile ? { profile: config.defaultProfile } : {});
    }
}

export async function deactivate(): Promise<void> {
    // Leaving the window ends the server process; its sessions end with it unless they were disconnected with keep.
    await ctx?.stopServer();
    ctx = undefined;
}
