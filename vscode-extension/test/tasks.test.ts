//! Unit tests for matching a typed line to a task, titles, and the Run Command history.

import * as assert from "node:assert/strict";
import { test } from "node:test";

import { rememberCommand, shownCommand, taskNamed, titleCommandChars } from "../src/tasks";

test("a typed line that is exactly a task's name names that task", () => {
    const tasks = [
        { name: "test", command: "node --test" },
        { name: "serve site", command: "python3 -m http.server 8000" },
    ];
    assert.equal(taskNamed(tasks, "test")?.command, "node --test");
    assert.equal(taskNamed(tasks, "  serve site ")?.name, "serve site");
    assert.equal(taskNamed(tasks, "test -v"), undefined, "a longer line is a command line");
    assert.equal(taskNamed(tasks, "Test"), undefined, "names are case-sensitive, as in the file");
    assert.equal(taskNamed([], "test"), undefined);
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
