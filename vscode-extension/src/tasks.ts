//! Run Command helpers: which task a typed line names, commands shown as the server's titles show them, and the Run
//! Command history. Tasks come from the server (`sandlink/tasks`), which owns `.sandlink.toml`; a task is run by name
//! (the server reads its command and checks the workspace's trust). No `vscode` import: unit-tested in test/tasks.test.ts.

/**
 * The task a typed command line names, when it is exactly a task's name: typing `test` means the task, not the shell
 * builtin of that name (which exits 1), as `:Sandlink run test` does in Neovim.
 */
export function taskNamed<T extends { name: string }>(tasks: readonly T[], typed: string): T | undefined {
    const trimmed = typed.trim();
    return tasks.find((task) => task.name === trimmed);
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
