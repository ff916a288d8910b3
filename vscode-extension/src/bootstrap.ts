//! Finds the `sandlink` server binary: the `sandlink.server.path` setting, then the bundled binary, then `PATH`.
//
// This module does not import `vscode`, so its logic is unit-tested under plain Node (test/bootstrap.test.ts).

import * as fs from "node:fs";
import * as path from "node:path";

/** Where a binary was found; shown in the log so that "which sandlink am I running?" has an answer. */
export type ServerBinarySource = "setting" | "bundled" | "path";

export interface FoundServerBinary {
    kind: "found";
    path: string;
    source: ServerBinarySource;
}

export interface MissingServerBinary {
    kind: "missing";
    /** One message saying what was tried and what to do; shown to the user as is. */
    message: string;
}

export type ServerBinaryLookup = FoundServerBinary | MissingServerBinary;

export interface ServerBinaryLookupInputs {
    /** The `sandlink.server.path` setting, already trimmed; undefined when unset. */
    configuredPath: string | undefined;
    /** The extension's install directory; the bundled binary lives in `<dir>/server/`. */
    extensionDirectory: string;
    /** The `PATH` environment variable. */
    pathVariable: string | undefined;
    platform: NodeJS.Platform;
    /** `PATHEXT` on Windows; ignored elsewhere. */
    pathExtensions?: string | undefined;
    /** Injected so tests need no real files; defaults to a check for an executable regular file. */
    isExecutableFile?: (candidatePath: string) => boolean;
}

export function serverExecutableName(platform: NodeJS.Platform): string {
    return platform === "win32" ? "sandlink.exe" : "sandlink";
}

export function bundledServerPath(extensionDirectory: string, platform: NodeJS.Platform): string {
    return path.join(extensionDirectory, "server", serverExecutableName(platform));
}

export function findServerBinary(inputs: ServerBinaryLookupInputs): ServerBinaryLookup {
    const isExecutableFile = inputs.isExecutableFile ?? isExecutableFileOnDisk;
    const pathModule = inputs.platform === "win32" ? path.win32 : path.posix;

    // An explicit setting wins, and a wrong one is an error rather than a silent fall-through: the user asked for that
    // binary, and quietly running another one would be confusing.
    if (inputs.configuredPath !== undefined) {
        if (isExecutableFile(inputs.configuredPath)) {
            return { kind: "found", path: inputs.configuredPath, source: "setting" };
        }
        return {
            kind: "missing",
            message:
                `The sandlink server was not found at "${inputs.configuredPath}", the path set in ` +
                `"sandlink.server.path". Fix or clear that setting; when it is empty the extension uses its bundled ` +
                `server or "sandlink" on PATH.`,
        };
    }

    const bundled = bundledServerPath(inputs.extensionDirectory, inputs.platform);
    if (isExecutableFile(bundled)) {
        return { kind: "found", path: bundled, source: "bundled" };
    }

    const executableName = serverExecutableName(inputs.platform);
    const separator = inputs.platform === "win32" ? ";" : ":";
    for (const directory of (inputs.pathVariable ?? "").split(separator)) {
        if (directory === "") {
            continue;
        }
        const candidates =
            inputs.platform === "win32"
                ? [pathModule.join(directory, executableName), ...windowsCandidates(directory, inputs.pathExtensions)]
                : [pathModule.join(directory, executableName)];
        for (const candidate of candidates) {
            if (isExecutableFile(candidate)) {
                return { kind: "found", path: candidate, source: "path" };
            }
        }
    }

    return {
        kind: "missing",
        message:
            `The sandlink server binary was not found: "sandlink.server.path" is not set, this extension has no ` +
            `bundled server for ${inputs.platform}, and "${executableName}" is not on PATH. Install it ` +
            `("cargo install --path server" in a sandlink checkout) or set "sandlink.server.path" to the binary, ` +
            `then run "Developer: Reload Window".`,
    };
}

function windowsCandidates(directory: string, pathExtensions: string | undefined): string[] {
    const extensions = (pathExtensions ?? ".EXE;.CMD;.BAT").split(";").filter((extension) => extension !== "");
    return extensions.map((extension) => path.win32.join(directory, `sandlink${extension.toLowerCase()}`));
}

function isExecutableFileOnDisk(candidatePath: string): boolean {
    try {
        const stat = fs.statSync(candidatePath);
        if (!stat.isFile()) {
            return false;
        }
        if (process.platform === "win32") {
            return true;
        }
        fs.accessSync(candidatePath, fs.constants.X_OK);
        return true;
    } catch {
        return false;
    }
}
