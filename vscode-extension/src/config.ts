//! The extension's settings (`sandlink.*` in package.json), read in one place and typed.

import * as vscode from "vscode";

export type LogLevel = "error" | "warn" | "info" | "debug" | "trace";
export type PreviewOpenIn = "ask" | "external" | "simpleBrowser";

/** A snapshot of the settings; read again with `readConfig` after `onDidChangeConfiguration`. */
export interface SandlinkConfig {
    /** Profile used by connect-on-open and offered first by Connect; empty means the server's default profile. */
    defaultProfile: string;
    connectOnOpen: boolean;
    syncOnSave: boolean;
    /** `sandlink.server.path`; undefined when unset or blank. */
    serverPath: string | undefined;
    logLevel: LogLevel;
    previewOpenIn: PreviewOpenIn;
}

export const configSection = "sandlink";

const logLevels: readonly LogLevel[] = ["error", "warn", "info", "debug", "trace"];
const previewTargets: readonly PreviewOpenIn[] = ["ask", "external", "simpleBrowser"];

export function readConfig(scope?: vscode.ConfigurationScope): SandlinkConfig {
    const settings = vscode.workspace.getConfiguration(configSection, scope);
    const serverPath = settings.get<string | null>("server.path", null);
    const logLevel = settings.get<string>("logLevel", "info");
    const previewOpenIn = settings.get<string>("preview.openIn", "ask");
    return {
        defaultProfile: settings.get<string>("defaultProfile", "").trim(),
        connectOnOpen: settings.get<boolean>("connectOnOpen", false),
        syncOnSave: settings.get<boolean>("syncOnSave", true),
        serverPath: serverPath && serverPath.trim() !== "" ? expandHome(serverPath.trim()) : undefined,
        // A hand-edited settings.json can hold anything; fall back to the default rather than pass garbage on.
        logLevel: (logLevels as readonly string[]).includes(logLevel) ? (logLevel as LogLevel) : "info",
        previewOpenIn: (previewTargets as readonly string[]).includes(previewOpenIn)
            ? (previewOpenIn as PreviewOpenIn)
            : "ask",
    };
}

/** Whether a configuration change touches settings that only take effect when the server restarts. */
export function changeNeedsServerRestart(event: vscode.ConfigurationChangeEvent): boolean {
    return (
        event.affectsConfiguration(`${configSection}.server.path`) ||
        event.affectsConfiguration(`${configSection}.logLevel`)
    );
}

function expandHome(path: string): string {
    const home = process.env.HOME ?? process.env.USERPROFILE;
    if (home && (path === "~" || path.startsWith("~/"))) {
        return home + path.slice(1);
    }
    return path;
}
