//! Reads the `[tasks]` table of `.sandlink.toml` (name = "command line") and keeps the Run Command history.
//
// Only the `[tasks]` table matters to the extension, so this is a small reader for that table rather than a TOML
// dependency in the bundle; the server owns the full file. No `vscode` import: unit-tested in test/tasks.test.ts.

export interface SandlinkTask {
    name: string;
    commandLine: string;
}

/** The tasks in `.sandlink.toml` text, in file order; lines it does not understand are skipped, never fatal. */
export function parseTasks(tomlText: string): SandlinkTask[] {
    const tasks: SandlinkTask[] = [];
    let inTasksTable = false;
    for (const rawLine of tomlText.split(/\r?\n/)) {
        const line = rawLine.trim();
        if (line === "" || line.startsWith("#")) {
            continue;
        }
        const tableHeader = /^\[\s*([^\]]+?)\s*\]\s*(#.*)?$/.exec(line);
        if (tableHeader) {
            inTasksTable = tableHeader[1] === "tasks";
            continue;
        }
        if (!inTasksTable) {
            continue;
        }
        const assignment = /^("(?:[^"\\]|\\.)*"|'[^']*'|[A-Za-z0-9_-]+)\s*=\s*(.+)$/.exec(line);
        if (!assignment) {
            continue;
        }
        const name = unquote(assignment[1]);
        const commandLine = parseStringValue(assignment[2]);
        if (name !== undefined && commandLine !== undefined) {
            tasks.push({ name, commandLine });
        }
    }
    return tasks;
}

function unquote(key: string): string | undefined {
    if (key.startsWith('"') || key.startsWith("'")) {
        return parseStringValue(key);
    }
    return key;
}

/** A TOML basic ("...") or literal ('...') string followed by an optional comment; undefined for anything else. */
function parseStringValue(valueText: string): string | undefined {
    const basic = /^"((?:[^"\\]|\\.)*)"\s*(#.*)?$/.exec(valueText);
    if (basic) {
        return basic[1].replace(/\\(u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|.)/g, (_match, escape: string) => {
            switch (escape[0]) {
                case "n":
                    return "\n";
                case "t":
                    return "\t";
                case "r":
                    return "\r";
                case "b":
                    return "\b";
                case "f":
                    return "\f";
                case "u":
                case "U":
                    return String.fromCodePoint(parseInt(escape.slice(1), 16));
                default:
                    return escape;
            }
        });
    }
    const literal = /^'([^']*)'\s*(#.*)?$/.exec(valueText);
    return literal ? literal[1] : undefined;
}

/** The history with `commandLine` moved to the front, without duplicates, at most `maximumEntries` long. */
export function rememberCommand(history: readonly string[], commandLine: string, maximumEntries = 30): string[] {
    const trimmed = commandLine.trim();
    if (trimmed === "") {
        return [...history];
    }
    return [trimmed, ...history.filter((entry) => entry !== trimmed)].slice(0, maximumEntries);
}
