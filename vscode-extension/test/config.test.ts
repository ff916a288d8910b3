//! Unit tests for reading the settings: defaults, validation of hand-edited values, and `~` in the server path.

import * as assert from "node:assert/strict";
import { test } from "node:test";

import { interpretSettings } from "../src/config";

const settingsFrom = (values: Record<string, unknown>) => (key: string) => values[key];

test("unset settings give the documented defaults", () => {
    assert.deepEqual(interpretSettings(settingsFrom({}), "/home/me"), {
        defaultProfile: "",
        connectOnOpen: false,
        syncOnSave: true,
        serverPath: undefined,
        logLevel: "info",
        previewOpenIn: "ask",
    });
});

test("set settings are read with their types", () => {
    const config = interpretSettings(
        settingsFrom({
            defaultProfile: " ci ",
            connectOnOpen: true,
            syncOnSave: false,
            "server.path": "/opt/sandlink/bin/sandlink",
            logLevel: "trace",
            "preview.openIn": "simpleBrowser",
        }),
        "/home/me",
    );
    assert.deepEqual(config, {
        defaultProfile: "ci",
        connectOnOpen: true,
        syncOnSave: false,
        serverPath: "/opt/sandlink/bin/sandlink",
        logLevel: "trace",
        previewOpenIn: "simpleBrowser",
    });
});

test("values of the wrong type or outside the allowed set fall back to the default", () => {
    const config = interpretSettings(
        settingsFrom({ connectOnOpen: "yes", syncOnSave: 0, logLevel: "verbose", "preview.openIn": 3, "server.path": null }),
        "/home/me",
    );
    assert.equal(config.connectOnOpen, false);
    assert.equal(config.syncOnSave, true);
    assert.equal(config.logLevel, "info");
    assert.equal(config.previewOpenIn, "ask");
    assert.equal(config.serverPath, undefined);
});

test("a blank server path counts as unset, and ~ means the home directory", () => {
    assert.equal(interpretSettings(settingsFrom({ "server.path": "   " }), "/home/me").serverPath, undefined);
    assert.equal(interpretSettings(settingsFrom({ "server.path": "~/bin/sandlink" }), "/home/me").serverPath, "/home/me/bin/sandlink");
    assert.equal(interpretSettings(settingsFrom({ "server.path": "~other/sandlink" }), "/home/me").serverPath, "~other/sandlink");
});
