//! Checks package.json against the code: contributed commands, `when` clauses and settings match what the extension uses.

import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { test } from "node:test";

import { contextFlags, sessionsViewCommandIds, sessionsViewId } from "../src/sessions_tree";
import { commandIds, contextKeys } from "../src/status";

const extensionDirectory = path.resolve(__dirname, "..", "..");
const manifest = JSON.parse(fs.readFileSync(path.join(extensionDirectory, "package.json"), "utf8")) as {
    main: string;
    contributes: {
        commands: Array<{ command: string; title: string }>;
        menus: {
            commandPalette: Array<{ command: string; when: string }>;
            "view/item/context": Array<{ command: string; when: string; group: string }>;
            "view/title": Array<{ command: string; when: string }>;
        };
        views: Record<string, Array<{ id: string }>>;
        viewsContainers: { activitybar: Array<{ id: string; icon: string }> };
        configuration: { properties: Record<string, unknown> };
    };
};

test("package.json contributes exactly the commands the extension registers", () => {
    const contributed = manifest.contributes.commands.map((command) => command.command).sort();
    assert.deepEqual(contributed, [...Object.values(commandIds), ...Object.values(sessionsViewCommandIds)].sort());
});

test("the Sessions view is contributed in its own activity bar container, with an icon that is packaged", () => {
    const container = manifest.contributes.viewsContainers.activitybar.find((entry) => entry.id === "sandlink");
    assert.ok(container, "the sandlink view container");
    assert.ok(fs.existsSync(path.join(extensionDirectory, container.icon)), container.icon);
    assert.match(fs.readFileSync(path.join(extensionDirectory, ".vscodeignore"), "utf8"), /^!media\/\*\*$/m);
    assert.deepEqual(manifest.contributes.views.sandlink.map((view) => view.id), [sessionsViewId]);
});

test("the Sessions view's item menus match only the context flags its nodes carry, and its commands stay out of the palette", () => {
    const known = new Set<string>(Object.values(contextFlags));
    const itemMenus = manifest.contributes.menus["view/item/context"];
    assert.ok(itemMenus.length > 0);
    for (const entry of itemMenus) {
        assert.match(entry.when, new RegExp(`^view == ${sessionsViewId.replace(".", "\\.")} && viewItem =~ `), entry.command);
        const flag = /\\b(\w+)\\b/.exec(entry.when)?.[1];
        assert.ok(flag !== undefined && known.has(flag), `${entry.command}: unknown flag in ${entry.when}`);
    }
    const viewCommands = new Set<string>(Object.values(sessionsViewCommandIds));
    for (const command of viewCommands) {
        const palette = manifest.contributes.menus.commandPalette.find((entry) => entry.command === command);
        assert.equal(palette?.when, "false", `${command} needs a view item, so the palette must not offer it`);
    }
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
