//! Checks package.json against the code: contributed commands, `when` clauses and settings match what the extension uses.

import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { test } from "node:test";

import { commandIds, contextKeys } from "../src/status";

const extensionDirectory = path.resolve(__dirname, "..", "..");
const manifest = JSON.parse(fs.readFileSync(path.join(extensionDirectory, "package.json"), "utf8")) as {
    main: string;
    contributes: {
        commands: Array<{ command: string; title: string }>;
        menus: { commandPalette: Array<{ command: string; when: string }> };
        configuration: { properties: Record<string, unknown> };
    };
};

test("package.json contributes exactly the commands the extension registers", () => {
    const contributed = manifest.contributes.commands.map((command) => command.command).sort();
    assert.deepEqual(contributed, Object.values(commandIds).sort());
});

test("the issue's palette commands are all there", () => {
    const titles = manifest.contributes.commands.map((command) => command.title);
    for (const title of ["Connect", "Disconnect", "Run Command", "Cancel Run", "Sync Now", "Open Preview", "Extend Timeout", "Snapshot", "Restore", "Manage Profiles", "Set Credential", "Show Log"]) {
        assert.ok(titles.includes(title), title);
    }
});

test("when clauses use only context keys the extension sets", () => {
    const known = new Set<string>(Object.values(contextKeys));
    for (const entry of manifest.contributes.menus.commandPalette) {
        for (const key of entry.when.match(/sandlink\.[A-Za-z]+/g) ?? []) {
            assert.ok(known.has(key), `${entry.command}: unknown context key ${key}`);
        }
    }
});

test("commands that need a session are hidden from the palette without one", () => {
    const whenOf = (command: string) => manifest.contributes.menus.commandPalette.find((entry) => entry.command === command)?.when ?? "";
    for (const command of [commandIds.disconnect, commandIds.runCommand, commandIds.cancelRun, commandIds.syncNow, commandIds.openPreview, commandIds.extendTimeout, commandIds.snapshot]) {
        assert.match(whenOf(command), /(^|&& )sandlink\.sessionActive\b/, command);
    }
});

test("the settings read by config.ts are all contributed", () => {
    const configSource = fs.readFileSync(path.join(extensionDirectory, "src", "config.ts"), "utf8");
    const readKeys = [...configSource.matchAll(/(?:text|flag|oneOf)\("([^"]+)"/g)].map((match) => `sandlink.${match[1]}`);
    assert.ok(readKeys.length >= 5);
    for (const key of readKeys) {
        assert.ok(key in manifest.contributes.configuration.properties, `${key} is read but not contributed`);
    }
    for (const key of ["sandlink.defaultProfile", "sandlink.connectOnOpen", "sandlink.syncOnSave", "sandlink.server.path", "sandlink.logLevel"]) {
        assert.ok(key in manifest.contributes.configuration.properties, key);
    }
});

test("the manifest points at the esbuild bundle", () => {
    assert.equal(manifest.main, "./dist/main.js");
});
