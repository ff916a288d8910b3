//! The extension's settings (`sandlink.*` in package.json), read in one place and typed.
//
// `interpretSettings` holds every rule (defaults, validation, `~` expansion) and takes a plain getter, so it is unit-tested
// under Node (test/config.test.ts); `readConfig` feeds it from VS Code's configuration.

import type * as vscode from "vscode";

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

/** Reads one setting below `sandlink.`; returns undefined when it is not set. */
export type SettingGetter = (key: string) => unknown;

export function interpretSettings(get: SettingGetter, homeDirectory: string | undefined): SandlinkConfig {
    // A hand-edited settings.json can hold anything; every value is checked and falls back to its default.
    const text = (key: string, fallback: string) => {
        const value = get(key);
        return typeof value === "string" ? value : fallback;
    };
    const flag = (key: string, fallback: boolean) => {
        const value = get(key);
        return typeof value === "boolean" ? value : fallback;
    };
    const oneOf = <T extends string>(key: string, allowed: readonly T[], fallback: T): T => {
        const value = get(key);
        return typeof value === "string" && (allowed as readonly string[]).includes(value) ? (value as T) : fallback;
    };
    const serverPath = text("server.path", "").trim();
    return {
        defaultProfile: text("defaultProfile", "").trim(),
        connectOnOpen: flag("connectOnOpen", false),
        syncOnSave: flag("syncOnSave", true),
        serverPath: serverPath === "" ? undefined : expandHome(serverPath, homeDirectory),
        logLevel: oneOf("logLevel", logLevels, "info"),
        previewOpenIn: oneOf("preview.openIn", previewTargets, "ask"),
    };
}

export function readConfig(scope?: vscode.ConfigurationScope): SandlinkConfig {
    // Required here rather than imported at the top, so that the rules above load under plain Node for the unit tests.
    const vscodeApi = require("vscode") as typeof vscode;
    const settings = vscodeApi.workspace.getConfiguration(configSection, scope);
    return interpretSettings((key) => settings.get(key), process.env.HOME ?? process.env.USERPROFILE);
}

/** Whether a configuration change touches settings that only take effect when the server restarts. */
export function changeNeedsServerRestart(event: vscode.ConfigurationChangeEvent): boolean {
    return (
        event.affectsConfiguration(`${configSection}.server.path`) ||
        event.affectsConfiguration(`${configSection}.logLevel`)
    );
}

function expandHome(path: string, homeDirectory: string | undefined): string {
    if (homeDirectory && (path === "~" || path.startsWith("~/"))) {
        return homeDirectory + path.slice(1);
    }
    return path;
}
