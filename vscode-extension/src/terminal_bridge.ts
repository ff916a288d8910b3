//! Binds a terminal (VS Code's Pseudoterminal) to a sandlink run on a pseudo-terminal in the sandbox: starts the run at
//! the terminal's size, hands on typed keys (`sandlink/input`) and size changes (`sandlink/resize`), writes the run's
//! output, and reports its end.
//
// No `vscode` import: the bridge is tested under plain Node against the real server (test/terminal_bridge.test.ts);
// src/terminal.ts wraps it in a `vscode.Pseudoterminal`.

import type * as protocol from "./protocol";
import { describeExit } from "./run_output";

/** What the bridge needs from the extension: the four requests it sends, and the routing of a run's notifications. */
export interface TerminalHost {
    run(params: protocol.RunParams): Promise<{ runId: string }>;
    input(params: protocol.InputParams): Promise<unknown>;
    resize(params: protocol.ResizeParams): Promise<unknown>;
    cancel(params: { runId: string }): Promise<unknown>;
    /** Delivers the run's `sandlink/output` and `sandlink/exit` to `sink` (output that came first included). */
    follow(runId: string, sink: { onOutput(output: protocol.OutputParams): void; onExit(exit: protocol.ExitParams): void }): void;
}

/** What the bridge tells the terminal. */
export interface TerminalScreen {
    write(text: string): void;
    /** The run ended; the terminal stays open showing the last line until the user closes it. */
    ended(exit: protocol.ExitParams): void;
}

export interface TerminalSize {
    cols: number;
    rows: number;
}

export class TerminalBridge {
    private runId: string | undefined;
    private finished = false;
    private readonly typedEarly: string[] = [];
    private pendingSize: TerminalSize | undefined;

    constructor(
        private readonly host: TerminalHost,
        private readonly screen: TerminalScreen,
        private readonly sessionId: string,
        private readonly command?: string,
    ) {}

    get id(): string | undefined {
        return this.runId;
    }

    get hasEnded(): boolean {
        return this.finished;
    }

    /** Starts the run at `size` (the terminal's when VS Code knows it, else 80 by 24); resolves with its id. */
    async open(size: TerminalSize | undefined): Promise<string | undefined> {
        const pty = size !== undefined && size.cols > 0 && size.rows > 0 ? size : { cols: 80, rows: 24 };
        const params: protocol.RunParams = { sessionId: this.sessionId, pty };
        if (this.command !== undefined && this.command.trim() !== "") {
            params.command = this.command;
        }
        let runId: string;
        try {
            ({ runId } = await this.host.run(params));
        } catch (error) {
            this.finished = true;
            const message = error instanceof Error ? error.message : String(error);
            this.screen.write(`[sandlink: the terminal did not start: ${message}]\r\n`);
            return undefined;
        }
        this.runId = runId;
        this.host.follow(runId, {
            onOutput: (output) => this.screen.write(output.text),
            onExit: (exit) => {
                this.finished = true;
                this.screen.write(`\r\n${describeExit(exit)}\r\n`);
                this.screen.ended(exit);
            },
        });
        for (const text of this.typedEarly.splice(0)) {
            void this.input(text);
        }
        const latestSize = this.pendingSize;
        this.pendingSize = undefined;
        if (latestSize !== undefined && (latestSize.cols !== pty.cols || latestSize.rows !== pty.rows)) {
            void this.resize(latestSize);
        }
        return runId;
    }

    /** Typed keys, as the terminal hands them over (VS Code's `handleInput`). */
    async input(text: string): Promise<void> {
        if (this.finished) {
            return;
        }
        if (this.runId === undefined) {
            this.typedEarly.push(text);
            return;
        }
        try {
            await this.host.input({ runId: this.runId, text });
        } catch {
            // The run has ended (its exit is on the way) or no longer reads: nothing to tell the user beyond that.
        }
    }

    /** The terminal's new size (VS Code's `setDimensions`). */
    async resize(size: TerminalSize): Promise<void> {
        if (this.finished || size.cols <= 0 || size.rows <= 0) {
            return;
        }
        if (this.runId === undefined) {
            this.pendingSize = size;
            return;
        }
        try {
            await this.host.resize({ runId: this.runId, cols: size.cols, rows: size.rows });
        } catch {
            // As for input: a run that has just ended has no size to change.
        }
    }

    /** The user closed the terminal: the run ends with it, as a shell ends with its window. */
    async close(): Promise<void> {
        if (this.finished || this.runId === undefined) {
            this.finished = true;
            return;
        }
        this.finished = true;
        try {
            await this.host.cancel({ runId: this.runId });
        } catch {
            // Already over.
        }
    }
}
