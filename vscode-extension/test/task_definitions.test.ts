//! Unit tests for sandlink task definitions, the provided Run Task entries, terminal text and the contributed
//! problem matchers' patterns (read from package.json and run as VS Code compiles them: JavaScript regular expressions).

import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { test } from "node:test";

import { asSandlinkTaskDefinition, defaultProblemMatcher, exitReport, providedTasks, sandlinkTaskType, terminalText } from "../src/task_definitions";

const extensionDirectory = path.resolve(__dirname, "..", "..");
interface MatcherPattern {
    regexp: string;
    file?: number;
    line?: number;
    column?: number;
    message?: number;
}
const manifest = JSON.parse(fs.readFileSync(path.join(extensionDirectory, "package.json"), "utf8")) as {
    contributes: {
        taskDefinitions: Array<{ type: string; required: string[]; properties: Record<string, unknown> }>;
        problemMatchers: Array<{ name: string; owner: string; fileLocation: string[] | string; pattern: MatcherPattern[] }>;
    };
};

test("a tasks.json entry needs the sandlink type and a task name; a profile is kept when given", () => {
    assert.deepEqual(asSandlinkTaskDefinition({ type: "sandlink", task: "test" }), { type: "sandlink", task: "test" });
    assert.deepEqual(asSandlinkTaskDefinition({ type: "sandlink", task: "test", profile: " docker " }), {
        type: "sandlink",
        task: "test",
        profile: "docker",
    });
    assert.deepEqual(asSandlinkTaskDefinition({ type: "sandlink", task: "test", profile: "" }), { type: "sandlink", task: "test" });
    assert.equal(asSandlinkTaskDefinition({ type: "shell", task: "test" }), undefined, "another type");
    assert.equal(asSandlinkTaskDefinition({ type: "sandlink" }), undefined, "no task");
    assert.equal(asSandlinkTaskDefinition({ type: "sandlink", task: "  " }), undefined, "a blank task");
    assert.equal(asSandlinkTaskDefinition({ type: "sandlink", task: 3 }), undefined, "a task that is not a name");
    assert.equal(asSandlinkTaskDefinition(null), undefined);
});

test("package.json's task definition is the one the code reads", () => {
    const [definition] = manifest.contributes.taskDefinitions;
    assert.equal(definition.type, sandlinkTaskType);
    assert.deepEqual(definition.required, ["task"]);
    assert.deepEqual(Object.keys(definition.properties).sort(), ["profile", "task"]);
    assert.ok(
        manifest.contributes.problemMatchers.some((matcher) => `$${matcher.name}` === defaultProblemMatcher),
        "the default matcher is contributed",
    );
});

test("every task of the server is offered by name, in file order, with its command as shown in titles", () => {
    const offered = providedTasks([
        { name: "test", command: "node test.js", title: "test (node test.js)" },
        { name: "serve", command: "python3  -m http.server", title: "serve (python3 -m http.server)" },
    ]);
    assert.deepEqual(
        offered.map((task) => [task.name, task.detail, task.definition]),
        [
            ["test", "node test.js", { type: "sandlink", task: "test" }],
            ["serve", "python3 -m http.server", { type: "sandlink", task: "serve" }],
        ],
    );
});

test("terminal text breaks lines with \\r\\n, also when a \\r\\n is split between two chunks", () => {
    assert.equal(terminalText("a\nb\n"), "a\r\nb\r\n");
    assert.equal(terminalText("a\r\nb"), "a\r\nb");
    assert.equal(terminalText("\nnext", true), "\nnext");
    assert.equal(terminalText("no break"), "no break");
});

test("the exit line and code say how the run ended", () => {
    assert.deepEqual(exitReport({ exitCode: 0, cancelled: false, timedOut: false }), { line: "[sandlink: exited with code 0]", code: 0 });
    assert.deepEqual(exitReport({ exitCode: 3, cancelled: false, timedOut: false }).code, 3);
    assert.deepEqual(exitReport({ exitCode: null, signal: "SIGKILL", cancelled: false, timedOut: false }), {
        line: "[sandlink: ended by signal SIGKILL]",
        code: 1,
    });
    assert.match(exitReport({ exitCode: null, cancelled: true, timedOut: false }).line, /cancelled/);
    assert.match(exitReport({ exitCode: null, cancelled: false, timedOut: true }).line, /time limit/);
});

/** Runs a contributed matcher over lines as VS Code does: its patterns must match consecutive lines. */
function problemsOf(matcherName: string, lines: string[]): Array<{ file: string; line: number; column?: number; message: string }> {
    const matcher = manifest.contributes.problemMatchers.find((candidate) => candidate.name === matcherName);
    assert.ok(matcher, matcherName);
    const patterns = matcher.pattern;
    const problems: Array<{ file: string; line: number; column?: number; message: string }> = [];
    for (let start = 0; start + patterns.length <= lines.length; start++) {
        const found: Record<string, string> = {};
        const matchedAll = patterns.every((pattern, index) => {
            const match = new RegExp(pattern.regexp).exec(lines[start + index]);
            if (match === null) {
                return false;
            }
            for (const key of ["file", "line", "column", "message"] as const) {
                if (pattern[key] !== undefined && match[pattern[key]!] !== undefined) {
                    found[key] = match[pattern[key]!];
                }
            }
            return true;
        });
        if (matchedAll) {
            problems.push({
                file: found.file,
                line: Number(found.line),
                ...(found.column !== undefined ? { column: Number(found.column) } : {}),
                message: found.message,
            });
        }
    }
    return problems;
}

test("the Node matcher puts an uncaught error on its first frame, a named or an anonymous one", () => {
    const trace = [
        "/work/app/test.js:9",
        "    throw new Error(`expected 3, got ${sum}`);",
        "    ^",
        "",
        "Error: expected 3, got 2",
        "    at Object.<anonymous> (/work/app/test.js:9:11)",
        "    at Module._compile (node:internal/modules/cjs/loader:1364:14)",
    ];
    assert.deepEqual(problemsOf("sandlink-node", trace), [{ file: "/work/app/test.js", line: 9, column: 11, message: "Error: expected 3, got 2" }]);
    assert.deepEqual(problemsOf("sandlink-node", ["TypeError [ERR_X]: bad thing", "    at /work/app/lib/util.js:4:2"]), [
        { file: "/work/app/lib/util.js", line: 4, column: 2, message: "TypeError [ERR_X]: bad thing" },
    ]);
    assert.deepEqual(problemsOf("sandlink-node", ["Error: in node itself", "    at node:internal/main:1:1"]), [], "a frame in Node's own code has no file");
});

test("the location matcher reads PATH:LINE[:COL]: message lines, as compilers and linters print them", () => {
    assert.deepEqual(problemsOf("sandlink-location", ["/work/app/src/main.c:12:5: error: expected ';'"]), [
        { file: "/work/app/src/main.c", line: 12, column: 5, message: "error: expected ';'" },
    ]);
    assert.deepEqual(problemsOf("sandlink-location", ["/work/app/a.py:3: W0611 unused import"]), [
        { file: "/work/app/a.py", line: 3, message: "W0611 unused import" },
    ]);
    assert.deepEqual(problemsOf("sandlink-location", ["see https://example.com:443/x for details"]), []);
});
