//! Unit tests for finding the server binary: setting, then bundled binary, then PATH, then one clear message.

import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { test } from "node:test";

import { bundledServerPath, findServerBinary } from "../src/bootstrap";

const extensionDirectory = "/ext/sandlink";
const fakeFiles = (...existing: string[]) => (candidate: string) => existing.includes(candidate);

test("the configured path wins over the bundled binary and PATH", () => {
    const lookup = findServerBinary({
        configuredPath: "/opt/sandlink",
        extensionDirectory,
        pathVariable: "/usr/bin",
        platform: "linux",
        isExecutableFile: fakeFiles("/opt/sandlink", "/ext/sandlink/server/sandlink", "/usr/bin/sandlink"),
    });
    assert.deepEqual(lookup, { kind: "found", path: "/opt/sandlink", source: "setting" });
});

test("a configured path that does not exist is reported, not silently replaced", () => {
    const lookup = findServerBinary({
        configuredPath: "/nowhere/sandlink",
        extensionDirectory,
        pathVariable: "/usr/bin",
        platform: "linux",
        isExecutableFile: fakeFiles("/usr/bin/sandlink"),
    });
    assert.equal(lookup.kind, "missing");
    assert.match(lookup.kind === "missing" ? lookup.message : "", /\/nowhere\/sandlink.*sandlink\.server\.path/);
});

test("the bundled binary is used when no path is configured", () => {
    const lookup = findServerBinary({
        configuredPath: undefined,
        extensionDirectory,
        pathVariable: "/usr/bin",
        platform: "linux",
        isExecutableFile: fakeFiles("/ext/sandlink/server/sandlink", "/usr/bin/sandlink"),
    });
    assert.deepEqual(lookup, { kind: "found", path: "/ext/sandlink/server/sandlink", source: "bundled" });
});

test("PATH is searched in order when there is neither a setting nor a bundled binary", () => {
    const lookup = findServerBinary({
        configuredPath: undefined,
        extensionDirectory,
        pathVariable: "/first::/second:/third",
        platform: "linux",
        isExecutableFile: fakeFiles("/second/sandlink", "/third/sandlink"),
    });
    assert.deepEqual(lookup, { kind: "found", path: "/second/sandlink", source: "path" });
});

test("on Windows the .exe is found through PATH with ; separators", () => {
    const lookup = findServerBinary({
        configuredPath: undefined,
        extensionDirectory: "C:\\ext",
        pathVariable: "C:\\tools;C:\\bin",
        platform: "win32",
        isExecutableFile: fakeFiles("C:\\bin\\sandlink.exe"),
    });
    assert.deepEqual(lookup, { kind: "found", path: "C:\\bin\\sandlink.exe", source: "path" });
    assert.equal(bundledServerPath("C:\\ext", "win32").endsWith("sandlink.exe"), true);
});

test("when nothing is found, one message says what was tried and what to do", () => {
    const lookup = findServerBinary({
        configuredPath: undefined,
        extensionDirectory,
        pathVariable: "/usr/bin",
        platform: "linux",
        isExecutableFile: fakeFiles(),
    });
    assert.equal(lookup.kind, "missing");
    const message = lookup.kind === "missing" ? lookup.message : "";
    assert.match(message, /sandlink\.server\.path/);
    assert.match(message, /PATH/);
    assert.match(message, /bundled/);
});

test("the real file check accepts executables and rejects plain files and directories", () => {
    const directory = fs.mkdtempSync(path.join(os.tmpdir(), "sandlink-bootstrap-"));
    try {
        const executable = path.join(directory, "sandlink");
        fs.writeFileSync(executable, "#!/bin/sh\n");
        fs.chmodSync(executable, 0o644);
        const withoutExecuteBit = findServerBinary({ configuredPath: undefined, extensionDirectory, pathVariable: directory, platform: "linux" });
        assert.equal(withoutExecuteBit.kind, "missing");
        fs.chmodSync(executable, 0o755);
        const withExecuteBit = findServerBinary({ configuredPath: undefined, extensionDirectory, pathVariable: directory, platform: "linux" });
        assert.deepEqual(withExecuteBit, { kind: "found", path: executable, source: "path" });
        const directoryAsSetting = findServerBinary({ configuredPath: directory, extensionDirectory, pathVariable: "", platform: "linux" });
        assert.equal(directoryAsSetting.kind, "missing");
    } finally {
        fs.rmSync(directory, { recursive: true, force: true });
    }
});
