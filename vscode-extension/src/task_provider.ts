//! The `sandlink` task type: `.sandlink.toml` tasks in Tasks: Run Task and tasks.json, each run through the server in
//! a pseudoterminal whose output VS Code's problem matchers read.

import * as vscode from "vscode";

import { connectWith } from "./commands";
import type { Ctx } from "./ctx";
import * as protocol from "./protocol";
import { asSandlinkTaskDefinition, defaultProblemMatcher, exitReport, providedTasks, sandlinkTaskType, terminalText } from "./task_definitions";
import { writeTestLog } from "./test_log";

/** Registers the provider of `sandlink` tasks. */
export function registerTaskProvider(ctx: Ctx): vscode.Disposable {
    return vscode.tasks.registerTaskProvider(sandlinkTaskType, new SandlinkTaskProvider(ctx));
}

class SandlinkTaskProvider implements vscode.TaskProvider {
    constructor(private readonly ctx: Ctx) {}

    async provideTasks(): Promise<vscode.Task[]> {
        if (!this.ctx.isServerRunning) {
            return [];
        }
        const folder = vscode.workspace.workspaceFolders?.[0];
        const result = await this.ctx.requestQuietly(protocol.tasks, folder ? { workspaceFolder: folder.uri.toString() } : {});
        if (result?.error) {
            this.ctx.logChannel.warn(`Tasks could not be read: ${result.error}`);
        }
        const provided = providedTasks(result?.tasks ?? []);
        writeTestLog("tasksProvided", { names: provided.map((task) => task.name) });
        return provided.map((entry) => {
            const task = this.taskFor(entry.definition, entry.name, folder, [defaultProblemMatcher]);
            task.detail = entry.detail;
            return task;
        });
    }

    resolveTask(task: vscode.Task): vscode.Task | undefined {
        const definition = asSandlinkTaskDefinition(task.definition);
        if (definition === undefined) {
            return undefined;
        }
        // tasks.json's own problemMatcher (or none) applies: VS Code keeps the configured one over the one given here.
        const folder = typeof task.scope === "object" ? task.scope : vscode.workspace.workspaceFolders?.[0];
        return this.taskFor(task.definition as typeof definition, task.name || definition.task, folder, task.problemMatchers);
    }

    private taskFor(
        definition: vscode.TaskDefinition,
        name: string,
        folder: vscode.WorkspaceFolder | undefined,
        problemMatchers: string[],
    ): vscode.Task {
        const task = new vscode.Task(
            definition,
            folder ?? vscode.TaskScope.Workspace,
            name,
            sandlinkTaskType,
            new vscode.CustomExecution(async (resolved) => new SandlinkTaskTerminal(this.ctx, resolved)),
            problemMatchers,
        );
        task.presentationOptions = { reveal: vscode.TaskRevealKind.Always, clear: true };
        return task;
    }
}

/** One task's run: output streamed as it comes, closed with the run's exit code, cancelled when the terminal closes. */
class SandlinkTaskTerminal implements vscode.Pseudoterminal {
    private readonly writeEmitter = new vscode.EventEmitter<string>();
    private readonly closeEmitter = new vscode.EventEmitter<number>();
    readonly onDidWrite = this.writeEmitter.event;
    readonly onDidClose = this.closeEmitter.event;
    private runId: string | undefined;
    private exited = false;
    private closed = false;
    private endedWithCarriageReturn = false;

    constructor(private readonly ctx: Ctx, private readonly definition: vscode.TaskDefinition) {}

    open(): void {
        void this.start().catch((error: unknown) => this.finish(`[sandlink: ${error instanceof Error ? error.message : String(error)}]`, 1));
    }

    close(): void {
        // The terminal was closed or the task terminated: the run must not go on unseen.
        this.closed = true;
        if (this.runId !== undefined && !this.exited) {
            writeTestLog("taskCancelled", { runId: this.runId });
            void this.ctx.request(protocol.cancel, { runId: this.runId });
        }
    }

    private async start(): Promise<void> {
        const definition = asSandlinkTaskDefinition(this.definition);
        if (definition === undefined) {
            this.finish('[sandlink: a sandlink task needs "task": the name of a task in .sandlink.toml]', 1);
            return;
        }
        const session = await this.sessionFor(definition.profile);
        if (session === undefined) {
            this.finish("[sandlink: not connected to a sandbox; the task did not run]", 1);
            return;
        }
        if (this.closed) {
            return;
        }
        this.write(`[sandlink: task ${definition.task} in ${session.profile ?? session.driver}]\n`);
        const runId = await this.ctx.startRun(
            session,
            { task: definition.task },
            {
                onOutput: (output) => this.write(output.text),
                onExit: (exit) => {
                    this.exited = true;
                    const report = exitReport(exit);
                    writeTestLog("taskExit", { task: definition.task, runId: exit.runId, code: report.code });
                    this.finish(report.line, report.code);
                },
            },
        );
        if (runId === undefined) {
            this.finish("[sandlink: the task did not start]", 1);
            return;
        }
        this.runId = runId;
        writeTestLog("taskStarted", { task: definition.task, runId });
        if (this.closed && !this.exited) {
            void this.ctx.request(protocol.cancel, { runId });
        }
    }

    /** The live session, or one connected now: with the task's profile, the default profile, or the Connect picker. */
    private async sessionFor(profile: string | undefined): Promise<protocol.SessionInfo | undefined> {
        if (this.ctx.liveSession !== undefined) {
            return this.ctx.liveSession;
        }
        this.write("[sandlink: connecting first…]\n");
        const chosenProfile = profile ?? (this.ctx.currentConfig.defaultProfile || undefined);
        if (chosenProfile !== undefined) {
            await connectWith(this.ctx, { profile: chosenProfile });
        } else {
            await vscode.commands.executeCommand("sandlink.connect");
        }
        return this.ctx.liveSession;
    }

    private write(text: string): void {
        this.writeEmitter.fire(terminalText(text, this.endedWithCarriageReturn));
        this.endedWithCarriageReturn = text.endsWith("\r");
    }

    private finish(line: string, code: number): void {
        if (!this.closed) {
            this.write(`${this.endedWithCarriageReturn ? "" : "\n"}${line}\n`);
        }
        this.closeEmitter.fire(code);
    }
}
