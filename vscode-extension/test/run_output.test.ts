//! Unit tests for run output formatting (stdout and stderr told apart, the exit line), routing by run and batching.

import * as assert from "node:assert/strict";
import { test } from "node:test";

import type { ExitParams, OutputParams } from "../src/protocol";
import { BatchedAppender, RunChannelWriter, RunOutputFormatter, RunRouter, describeExit, stderrLinePrefix } from "../src/run_output";

const exitOk: ExitParams = { runId: "r1", exitCode: 0, cancelled: false, timedOut: false, durationMs: 1234 };

test("stdout passes through unchanged, also when lines are split across chunks", () => {
    const formatter = new RunOutputFormatter();
    assert.equal(formatter.format("stdout", "hel") + formatter.format("stdout", "lo\nwor") + formatter.format("stdout", "ld\n"), "hello\nworld\n");
});

test("every stderr line is marked once, across chunk boundaries", () => {
    const formatter = new RunOutputFormatter();
    const text = formatter.format("stderr", "warn") + formatter.format("stderr", "ing: a\nerror: b\n");
    assert.equal(text, `${stderrLinePrefix}warning: a\n${stderrLinePrefix}error: b\n`);
});

test("a switch of stream in the middle of a line starts a new line", () => {
    const formatter = new RunOutputFormatter();
    const text = formatter.format("stdout", "progress 50%") + formatter.format("stderr", "oops\n") + formatter.format("stdout", "done\n");
    assert.equal(text, `progress 50%\n${stderrLinePrefix}oops\ndone\n`);
});

test("the footer ends an unfinished line and states exit code and duration", () => {
    const formatter = new RunOutputFormatter();
    const text = formatter.format("stdout", "no newline") + formatter.footer(exitOk);
    assert.equal(text, "no newline\n[exit code 0 after 1.23 s]\n");
});

test("cancelled, timed out and killed runs say so", () => {
    assert.equal(describeExit({ ...exitOk, exitCode: null, cancelled: true, durationMs: 20 }), "[cancelled after 20 ms]");
    assert.equal(describeExit({ ...exitOk, exitCode: null, timedOut: true, durationMs: 61_000 }), "[timed out after 1 min 1 s]");
    assert.equal(describeExit({ ...exitOk, exitCode: null, signal: "SIGKILL" }), "[killed by SIGKILL after 1.23 s]");
    assert.equal(describeExit({ ...exitOk, exitCode: 2, logPath: "/tmp/r1.log" }), "[exit code 2 after 1.23 s, full log: /tmp/r1.log]");
});

function recordingSink() {
    const received: string[] = [];
    return {
        received,
        sink: {
            onOutput: (output: OutputParams) => received.push(`${output.stream}:${output.text}`),
            onExit: (exit: ExitParams) => received.push(`exit:${exit.exitCode}`),
        },
    };
}

test("notifications that arrive before the run response are replayed in order when the run registers", () => {
    const router = new RunRouter();
    router.handleOutput({ runId: "r1", stream: "stdout", text: "early", seq: 0 });
    router.handleOutput({ runId: "r2", stream: "stdout", text: "other run", seq: 0 });
    const { received, sink } = recordingSink();
    router.register("r1", sink);
    router.handleOutput({ runId: "r1", stream: "stderr", text: "late", seq: 1 });
    router.handleExit(exitOk);
    assert.deepEqual(received, ["stdout:early", "stderr:late", "exit:0"]);
    assert.equal(router.hasRun("r1"), false, "a run is forgotten after its exit");
});

test("a run that exits before it registers is still delivered completely", () => {
    const router = new RunRouter();
    router.handleOutput({ runId: "r1", stream: "stdout", text: "all", seq: 0 });
    router.handleExit(exitOk);
    const { received, sink } = recordingSink();
    router.register("r1", sink);
    assert.deepEqual(received, ["stdout:all", "exit:0"]);
});

test("output of runs nobody claims is bounded", () => {
    const router = new RunRouter(2, 3);
    for (let index = 0; index < 10; index++) {
        router.handleOutput({ runId: `r${index}`, stream: "stdout", text: "x", seq: 0 });
        router.handleOutput({ runId: "r9", stream: "stdout", text: "y", seq: index });
    }
    const { received, sink } = recordingSink();
    router.register("r9", sink);
    assert.ok(received.length <= 3, `held at most 3 messages, got ${received.length}`);
    const { received: evicted, sink: evictedSink } = recordingSink();
    router.register("r0", evictedSink);
    assert.deepEqual(evicted, [], "the oldest unclaimed run was dropped");
});

test("batching joins many small chunks into one append per tick", () => {
    const appended: string[] = [];
    const scheduled: Array<() => void> = [];
    const appender = new BatchedAppender((text) => appended.push(text), (callback) => scheduled.push(callback));
    for (let index = 0; index < 1000; index++) {
        appender.push(`${index}\n`);
    }
    assert.equal(appended.length, 0, "nothing is appended before the tick");
    assert.equal(scheduled.length, 1, "one flush is scheduled however many chunks arrive");
    scheduled[0]();
    assert.equal(appended.length, 1);
    assert.ok(appended[0].startsWith("0\n1\n") && appended[0].endsWith("999\n"));
});

test("batching flushes at once when a lot of text is waiting", () => {
    const appended: string[] = [];
    const appender = new BatchedAppender((text) => appended.push(text), () => {}, 100);
    appender.push("a".repeat(60));
    assert.equal(appended.length, 0);
    appender.push("b".repeat(60));
    assert.equal(appended.length, 1);
    assert.equal(appended[0].length, 120);
});

test("overlapping runs in one channel: lines are never glued together and switches name the run", () => {
    const written: string[] = [];
    const writer = new RunChannelWriter((text) => written.push(text));
    const startedAt = new Date("2026-01-01T00:00:00Z");
    writer.start("a", "serve", "local", startedAt);
    writer.output("a", "stdout", "listening on 8000");
    writer.start("b", "make test", "local", startedAt);
    writer.output("b", "stdout", "ok 1\n");
    writer.output("a", "stderr", "GET /\n");
    writer.exit("b", { ...exitOk, runId: "b" });
    const text = written.join("");
    assert.ok(text.includes("listening on 8000\n\n$ make test"), `the unfinished line of 'serve' is ended before the next header:\n${text}`);
    assert.ok(text.includes("ok 1\n── serve ──\n[stderr] GET /\n"), `the switch back to 'serve' is marked:\n${text}`);
    assert.ok(text.includes("── make test ──\n[exit code 0 after 1.23 s]\n"), `the exit line says which run ended:\n${text}`);
});

test("a single run gets no markers", () => {
    const written: string[] = [];
    const writer = new RunChannelWriter((text) => written.push(text));
    writer.start("a", "echo hi", "local", new Date("2026-01-01T00:00:00Z"));
    writer.output("a", "stdout", "hi\n");
    writer.exit("a", exitOk);
    writer.start("b", "echo again", "local", new Date("2026-01-01T00:00:00Z"));
    writer.abandon("b", "[not started: no session]");
    const text = written.join("");
    assert.ok(!text.includes("──"), text);
    assert.ok(text.endsWith("[not started: no session]\n"), text);
});
