//! Unit tests for reading the [tasks] table of .sandlink.toml and for the Run Command history.

import * as assert from "node:assert/strict";
import { test } from "node:test";

import { parseTasks, rememberCommand } from "../src/tasks";

test("tasks are read from the [tasks] table in file order", () => {
    const toml = [
        "# sandlink settings",
        "[sync]",
        'exclude = ["target"]',
        "",
        "[tasks]",
        'test = "cargo test --workspace"',
        "build = 'cargo build' # literal string",
        '"serve site" = "python3 -m http.server 8000"',
        'quoted = "echo \\"hi\\"\\tthere"',
        "",
        "[other]",
        'ignored = "not a task"',
    ].join("\n");
    assert.deepEqual(parseTasks(toml), [
        { name: "test", commandLine: "cargo test --workspace" },
        { name: "build", commandLine: "cargo build" },
        { name: "serve site", commandLine: "python3 -m http.server 8000" },
        { name: "quoted", commandLine: 'echo "hi"\tthere' },
    ]);
});

test("a file without tasks, or with lines it does not understand, gives no error", () => {
    assert.deepEqual(parseTasks(""), []);
    assert.deepEqual(parseTasks("[tasks]\nnumber = 3\nbroken = \"unterminated\n"), []);
});

test("history puts the newest command first, without duplicates, bounded", () => {
    assert.deepEqual(rememberCommand(["b", "a"], "a"), ["a", "b"]);
    assert.deepEqual(rememberCommand(["a"], "  "), ["a"]);
    assert.deepEqual(rememberCommand(["c", "b", "a"], "d", 3), ["d", "c", "b"]);
});
