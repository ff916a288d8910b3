//! Unit tests for reading the [tasks] table of .sandlink.toml and for the Run Command history.

import * as assert from "node:assert/strict";
import { test } from "node:test";

import { parseTasks, rememberCommand, shownCommand, titleCommandChars } from "../src/tasks";

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

test("a task's command is shown as the server's task titles show it: whitespace collapsed, long ones cut", () => {
    const padded = `npm test${" ".repeat(200)}; echo INJECTED`;
    assert.equal(shownCommand(padded), "npm test ; echo INJECTED");
    assert.equal(shownCommand("make\t-j4\n\tall"), "make -j4 all");
    const long = `cargo test ${"--features a ".repeat(20)}`;
    const shown = shownCommand(long);
    assert.ok(shown.endsWith("…") && Array.from(shown).length <= titleCommandChars, shown);
    assert.ok(shown.startsWith("cargo test --features a"), shown);
    assert.equal(shownCommand("short"), "short");
    // No-break and ideographic spaces are whitespace to the server too; characters are counted, not UTF-16 units.
    assert.equal(shownCommand("a\u00a0\u00a0b\u3000c"), "a b c");
    assert.equal(shownCommand(`😀${"x".repeat(80)}`), `😀${"x".repeat(58)}…`);
});
