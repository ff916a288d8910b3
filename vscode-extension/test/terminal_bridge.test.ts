//! The terminal adapter behind "Sandlink: Open Terminal" against the real server (`sandlink lsp` on the local driver):
//! typed keys run in a shell on a terminal in the sandbox, a size change reaches `stty`, and the exit is reported.

import * as assert from "node:assert/strict";
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { test } from "node:test";
import { pathToFileURL } from "node:url";

import { createMessageConnection, StreamMessageReader, StreamMessageWriter } from "vscode-jsonrpc/node";

import type { ExitParams, OutputParams } from "../src/protocol";
import { RunRouter } from "../src/run_output";
import { TerminalBridge, type TerminalHost } from "../src/terminal_bridge";

const extensionDirectory = path.resolve(__dirname, "..", "..");
const repositoryRoot = path.resolve(extensionDirectory, "..");
const serverBinary = process.env.SANDLINK_BIN || path.join(repositoryRoot, "target", "debug", "sandlink");
const underCi = process.env.CI === "true" || process.env.CI === "1";

async function until(what: string, condition: () => boolean, timeoutMs = 20000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!condition()) {
        if (Date.now() > deadline) {
            throw new Error(`timed out waiting for ${what}`);
        }
        await new Promise((resolve) => setTimeout(resolve, 20));
    }
}

test("the terminal bridge runs typed lines on a sandbox terminal, follows its size and reports the exit", { skip: !underCi && !fs.existsSync(serverBinary) ? `no server binary at ${serverBinary}` : false }, async () => {
    const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "sandlink-terminal-"));
    const workspace = path.join(scratch, "workspace");
    fs.mkdirSync(workspace);
    fs.writeFileSync(path.join(workspace, "marker.txt"), "in-the-workspace\n");
    const server = spawn(serverBinary, ["lsp"], { env: { ...process.env, SANDLINK_STATE_DIR: path.join(scratch, "state") }, stdio: ["pipe", "pipe", "ignore"] });
    const connection = createMessageConnection(new StreamMessageReader(server.stdout), new StreamMessageWriter(server.stdin));
    const router = new RunRouter();
    connection.onNotification("sandlink/output", (params: OutputParams) => router.handleOutput(params));
    connection.onNotification("sandlink/exit", (params: ExitParams) => router.handleExit(params));
    connection.listen();
    try {
        await connection.sendRequest("initialize", {
            processId: process.pid,
            rootUri: pathToFileURL(workspace).toString(),
            capabilities: { experimental: { sandlink: { notifications: true } } },
        });
        await connection.sendNotification("initialized", {});
        const session = (await connection.sendRequest("sandlink/connect", { driver: "local", workspaceFolder: pathToFileURL(workspace).toString() })) as { sessionId: string };

        const host: TerminalHost = {
            run: (params) => connection.sendRequest("sandlink/run", params),
            input: (params) => connection.sendRequest("sandlink/input", params),
            resize: (params) => connection.sendRequest("sandlink/resize", params),
            cancel: (params) => connection.sendRequest("sandlink/cancel", params),
            follow: (runId, sink) => router.register(runId, sink),
        };
        let screen = "";
        let exit: ExitParams | undefined;
        const bridge = new TerminalBridge(host, { write: (text) => (screen += text), ended: (ended) => (exit = ended) }, session.sessionId);
        // Keys typed before the run is known wait for it, as VS Code may send them right after `open`.
        const opening = bridge.open({ cols: 90, rows: 20 });
        void bridge.input("tty; stty size; cat marker.txt\r");
        const runId = await opening;
        assert.ok(runId, "the run started");
        await until("the first line to run", () => screen.includes("in-the-workspace"));
        assert.match(screen, /\/dev\/pts\/\d+/);
        assert.match(screen, /20 90/);

        await bridge.resize({ cols: 132, rows: 43 });
        await bridge.input("stty size; echo sized-$((1 + 1))\r");
        await until("the second line to run", () => screen.includes("sized-2"));
        assert.match(screen, /43 132/);

        await bridge.input("exit 4\r");
        await until("the exit", () => exit !== undefined);
        assert.equal(exit?.exitCode, 4);
        assert.ok(bridge.hasEnded);
        assert.match(screen, /\[exit code 4 after/);
    } finally {
        connection.dispose();
        server.kill();
        fs.rmSync(scratch, { recursive: true, force: true });
    }
});
