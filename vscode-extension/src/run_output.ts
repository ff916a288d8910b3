//! Turns a run's `sandlink/output` and `sandlink/exit` notifications into text for the output channel, and routes them by run.
//
// No `vscode` import: the formatting, routing and batching rules are unit-tested under plain Node (test/run_output.test.ts).

import type { ExitParams, OutputParams, OutputStream } from "./protocol";

/** Marks every stderr line in the output channel, which cannot colour text, so the two streams stay told apart. */
export const stderrLinePrefix = "[stderr] ";

/**
 * Formats one run's output. Streams arrive in chunks that split lines anywhere; the formatter remembers where each line
 * started so that stderr lines get their prefix exactly once, and a switch of stream in the middle of a line starts a
 * new line instead of gluing stdout and stderr text together.
 */
export class RunOutputFormatter {
    private atLineStart = true;
    private currentStream: OutputStream | undefined;

    header(commandLine: string, sessionLabel: string, startedAt: Date): string {
        return `\n$ ${commandLine}    [${sessionLabel}, ${startedAt.toISOString()}]\n`;
    }

    format(stream: OutputStream, text: string): string {
        if (text === "") {
            return "";
        }
        let formatted = "";
        if (!this.atLineStart && this.currentStream !== stream) {
            formatted += "\n";
            this.atLineStart = true;
        }
        this.currentStream = stream;
        const prefix = stream === "stderr" ? stderrLinePrefix : "";
        // Split keeping line ends; a trailing empty piece means the chunk ended exactly at a line end.
        const pieces = text.split(/(?<=\n)/);
        for (const piece of pieces) {
            if (this.atLineStart && prefix !== "") {
                formatted += prefix;
            }
            formatted += piece;
            this.atLineStart = piece.endsWith("\n");
        }
        return formatted;
    }

    /** Ends an unfinished line, when another run is about to write to the same channel; returns what to append. */
    breakLine(): string {
        if (this.atLineStart) {
            return "";
        }
        this.atLineStart = true;
        return "\n";
    }

    /** The closing line: exit code (or signal, cancellation, timeout) and duration; ends any unfinished line first. */
    footer(exit: ExitParams): string {
        const lineBreak = this.atLineStart ? "" : "\n";
        this.atLineStart = true;
        return `${lineBreak}${describeExit(exit)}\n`;
    }
}

export function describeExit(exit: ExitParams): string {
    const duration = formatDuration(exit.durationMs);
    let outcome: string;
    if (exit.cancelled) {
        outcome = "cancelled";
    } else if (exit.timedOut) {
        outcome = "timed out";
    } else if (exit.signal) {
        outcome = `killed by ${exit.signal}`;
    } else {
        outcome = `exit code ${exit.exitCode ?? "unknown"}`;
    }
    const logHint = exit.logPath ? `, full log: ${exit.logPath}` : "";
    return `[${outcome} after ${duration}${logHint}]`;
}

export function formatDuration(durationMs: number): string {
    if (durationMs < 1000) {
        return `${Math.round(durationMs)} ms`;
    }
    if (durationMs < 60_000) {
        return `${(durationMs / 1000).toFixed(2)} s`;
    }
    const totalSeconds = Math.round(durationMs / 1000);
    return `${Math.floor(totalSeconds / 60)} min ${totalSeconds % 60} s`;
}

/**
 * Writes every run of the window into one channel. Runs can overlap (a dev server keeps running while tests run), so
 * when the writer changes in the middle of a line the line is ended, and while several runs are active each switch is
 * marked with the command line of the run that continues.
 */
export class RunChannelWriter {
    private readonly runs = new Map<string, { formatter: RunOutputFormatter; commandLine: string }>();
    private lastWriter: string | undefined;

    constructor(private readonly push: (text: string) => void) {}

    start(runKey: string, commandLine: string, sessionLabel: string, startedAt: Date): void {
        const formatter = new RunOutputFormatter();
        this.switchTo(runKey);
        this.runs.set(runKey, { formatter, commandLine });
        this.push(formatter.header(commandLine, sessionLabel, startedAt));
    }

    output(runKey: string, stream: OutputStream, text: string): void {
        const run = this.runs.get(runKey);
        if (run === undefined) {
            return;
        }
        const formatted = run.formatter.format(stream, text);
        if (formatted !== "") {
            this.switchTo(runKey);
            this.push(formatted);
        }
    }

    /** Writes the closing line and forgets the run. */
    exit(runKey: string, exit: ExitParams): void {
        this.finish(runKey, (formatter) => formatter.footer(exit));
    }

    /** Writes a closing line of the caller's own (a run that never started, or was lost) and forgets the run. */
    abandon(runKey: string, closingLine: string): void {
        this.finish(runKey, (formatter) => `${formatter.breakLine()}${closingLine}\n`);
    }

    private finish(runKey: string, closing: (formatter: RunOutputFormatter) => string): void {
        const run = this.runs.get(runKey);
        if (run === undefined) {
            return;
        }
        this.switchTo(runKey);
        this.push(closing(run.formatter));
        this.runs.delete(runKey);
        if (this.lastWriter === runKey) {
            this.lastWriter = undefined;
        }
    }

    private switchTo(runKey: string): void {
        if (this.lastWriter === runKey) {
            return;
        }
        const previous = this.lastWriter === undefined ? undefined : this.runs.get(this.lastWriter);
        const lineBreak = previous?.formatter.breakLine() ?? "";
        this.lastWriter = runKey;
        const continuing = this.runs.get(runKey);
        // A marker only helps when output really alternates between runs that are both still going.
        const marker = previous !== undefined && continuing !== undefined ? `── ${continuing.commandLine} ──\n` : "";
        if (lineBreak + marker !== "") {
            this.push(lineBreak + marker);
        }
    }
}

/** Receives one run's notifications, in order. */
export interface RunSink {
    onOutput(output: OutputParams): void;
    onExit(exit: ExitParams): void;
}

/**
 * Delivers notifications to the sink of their run. The `sandlink/run` response (which carries the run id) and the first
 * notifications of that run can cross on the wire, so notifications for a run nobody has claimed yet are held, up to a
 * bound, and replayed when the sink registers.
 */
export class RunRouter {
    private readonly sinks = new Map<string, RunSink>();
    private readonly heldForUnclaimedRuns = new Map<string, Array<OutputParams | ExitParams>>();

    constructor(private readonly maximumHeldRuns = 32, private readonly maximumHeldMessagesPerRun = 1000) {}

    register(runId: string, sink: RunSink): void {
        this.sinks.set(runId, sink);
        const held = this.heldForUnclaimedRuns.get(runId);
        this.heldForUnclaimedRuns.delete(runId);
        for (const message of held ?? []) {
            this.deliver(runId, message);
        }
    }

    hasRun(runId: string): boolean {
        return this.sinks.has(runId);
    }

    activeRunIds(): string[] {
        return [...this.sinks.keys()];
    }

    handleOutput(output: OutputParams): void {
        this.deliverOrHold(output.runId, output);
    }

    handleExit(exit: ExitParams): void {
        this.deliverOrHold(exit.runId, exit);
    }

    private deliverOrHold(runId: string, message: OutputParams | ExitParams): void {
        if (this.sinks.has(runId)) {
            this.deliver(runId, message);
            return;
        }
        let held = this.heldForUnclaimedRuns.get(runId);
        if (held === undefined) {
            // Runs started by other clients of the same server are never claimed here; drop the oldest of them.
            if (this.heldForUnclaimedRuns.size >= this.maximumHeldRuns) {
                const oldestRunId = this.heldForUnclaimedRuns.keys().next().value as string;
                this.heldForUnclaimedRuns.delete(oldestRunId);
            }
            held = [];
            this.heldForUnclaimedRuns.set(runId, held);
        }
        if (held.length < this.maximumHeldMessagesPerRun || isExit(message)) {
            held.push(message);
        }
    }

    private deliver(runId: string, message: OutputParams | ExitParams): void {
        const sink = this.sinks.get(runId);
        if (sink === undefined) {
            return;
        }
        if (isExit(message)) {
            this.sinks.delete(runId);
            sink.onExit(message);
        } else {
            sink.onOutput(message);
        }
    }
}

function isExit(message: OutputParams | ExitParams): message is ExitParams {
    return "durationMs" in message;
}

/**
 * Collects text and hands it over in batches: appending to an output channel costs a round trip to the renderer, so a
 * run printing thousands of small chunks a second would otherwise swamp the window. `schedule` and `flushNow` are
 * injected so that tests control time.
 */
export class BatchedAppender {
    private pending: string[] = [];
    private pendingLength = 0;
    private flushScheduled = false;

    constructor(
        private readonly append: (text: string) => void,
        private readonly schedule: (callback: () => void) => void,
        /** Above this many characters waiting, flush at once instead of waiting for the timer. */
        private readonly flushThresholdCharacters = 64 * 1024,
    ) {}

    push(text: string): void {
        if (text === "") {
            return;
        }
        this.pending.push(text);
        this.pendingLength += text.length;
        if (this.pendingLength >= this.flushThresholdCharacters) {
            this.flush();
            return;
        }
        if (!this.flushScheduled) {
            this.flushScheduled = true;
            this.schedule(() => {
                this.flushScheduled = false;
                this.flush();
            });
        }
    }

    flush(): void {
        if (this.pending.length === 0) {
            return;
        }
        const text = this.pending.join("");
        this.pending = [];
        this.pendingLength = 0;
        this.append(text);
    }
}
