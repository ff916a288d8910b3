//! VS Code tasks of type `sandlink`: what a tasks.json entry asks for, the entries offered for the server's task list,
//! and how run output and exits are written into a task's terminal. No `vscode` import: unit-tested in
//! test/task_definitions.test.ts.

/** The `type` of sandlink tasks in tasks.json and in Tasks: Run Task (`sandlink: <task>`). */
export const sandlinkTaskType = "sandlink";

/** The problem matcher provided tasks use unless tasks.json names others (contributed in package.json). */
export const defaultProblemMatcher = "$sandlink-node";

/** A tasks.json entry `{ "type": "sandlink", "task": "test", "profile"?: "docker" }`. */
export interface SandlinkTaskDefinition {
    type: typeof sandlinkTaskType;
    /** The name of a `.sandlink.toml` `[tasks]` entry; the server reads its command. */
    task: string;
    /** The profile to connect with when the window has no session yet (default: the usual Connect flow). */
    profile?: string;
}

/** The definition a tasks.json entry (or a provided task) holds, or undefined when it is not a usable sandlink task. */
export function asSandlinkTaskDefinition(value: unknown): SandlinkTaskDefinition | undefined {
    if (typeof value !== "object" || value === null) {
        return undefined;
    }
    const candidate = value as { type?: unknown; task?: unknown; profile?: unknown };
    if (candidate.type !== sandlinkTaskType || typeof candidate.task !== "string" || candidate.task.trim() === "") {
        return undefined;
    }
    const definition: SandlinkTaskDefinition = { type: sandlinkTaskType, task: candidate.task };
    if (typeof candidate.profile === "string" && candidate.profile.trim() !== "") {
        definition.profile = candidate.profile.trim();
    }
    return definition;
}

/** One entry of Tasks: Run Task for a `.sandlink.toml` task. */
export interface ProvidedTask {
    definition: SandlinkTaskDefinition;
    /** Shown as `sandlink: <name>`; the source (`sandlink`) is added by VS Code. */
    name: string;
    /** The command the task runs, as the server's titles show it. */
    detail: string;
}

/** The Run Task entries for the server's task list, in file order, each with the command it runs as its detail. */
export function providedTasks(tasks: ReadonlyArray<{ name: string; command: string; title: string }>): ProvidedTask[] {
    return tasks.map((task) => {
        const title = task.title.startsWith(`${task.name} (`) && task.title.endsWith(")") ? task.title.slice(task.name.length + 2, -1) : task.command;
        return { definition: { type: sandlinkTaskType, task: task.name }, name: task.name, detail: title };
    });
}

/**
 * Text for a terminal: a terminal moves down on `\n` without returning to the first column, so every line break is
 * `\r\n` (one already written as `\r\n` is left alone). `pendingCarriageReturn` carries a `\r` that ended the previous
 * chunk, so a `\r\n` split across two notifications does not become `\r\r\n`.
 */
export function terminalText(text: string, previousEndedWithCarriageReturn = false): string {
    const converted = text.replace(/\r?\n/g, "\r\n");
    return previousEndedWithCarriageReturn && text.startsWith("\n") ? converted.slice(1) : converted;
}

/** How a run's exit reads at the end of its task terminal, and the code the task closes with. */
export function exitReport(exit: { exitCode: number | null; signal?: string; cancelled: boolean; timedOut: boolean }): {
    line: string;
    code: number;
} {
    if (exit.cancelled) {
        return { line: "[sandlink: cancelled]", code: exit.exitCode ?? 130 };
    }
    if (exit.timedOut) {
        return { line: "[sandlink: stopped, the run's time limit passed]", code: exit.exitCode ?? 124 };
    }
    if (exit.exitCode === null) {
        return { line: `[sandlink: ended by signal ${exit.signal ?? "unknown"}]`, code: 1 };
    }
    return { line: `[sandlink: exited with code ${exit.exitCode}]`, code: exit.exitCode };
}
