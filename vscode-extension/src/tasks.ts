//! Reads the `[tasks]` table of `.sandlink.toml` (name = "command line") to list and show tasks, and keeps the Run
//! Command history. A task is run by name (the server reads its command and checks the workspace's trust), so what is
//! read here is only ever shown, never sent.
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

/** The most characters of a command a title shows, as the server's task titles (`tasks::TITLE_COMMAND_CHARS`). */
export const titleCommandChars = 60;

/** Unicode's White_Space, which Rust's `split_whitespace` splits on (JavaScript's `\s` adds U+FEFF and lacks U+0085). */
const unicodeWhiteSpace = /[\t\n\v\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+/;

/**
 * A command as a one-line title shows it, the way the server's task titles do (`tasks::shown_command`): every run of
 * whitespace is one space, and a longer command is cut with an ellipsis, so padding cannot push part of a command
 * (`; curl …`) out of sight past the end of a picker entry.
 */
export function shownCommand(command: string): string {
    const collapsed = command.split(unicodeWhiteSpace).filter((word) => word !== "").join(" ");
    const characters = Array.from(collapsed);
    if (characters.length <= titleCommandChars) {
        return collapsed;
    }
    return `${characters.slice(0, titleCommandChars - 1).join("").trimEnd()}…`;
}

/** The history with `commandLine` moved to the front, without duplicates, at most `maximumEntries` long. */
export function rememberCommand(history: readonly string[], commandLine: string, maximumEntries = 30): string[] {
    const trimmed = commandLine.trim();
    if (trimmed === "") {
        return [...history];
    }
    return [trimmed, ...history.filter((entry) => entry !== trimmed)].slice(0, maximumEntries);
}
