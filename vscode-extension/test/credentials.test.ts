//! Unit tests for the choices Set Credential offers from the driver's declared credentials.

import * as assert from "node:assert/strict";
import { test } from "node:test";

import { anotherNameLabel, credentialChoices } from "../src/credentials";
import type { DriverCapabilities, DriverInfo } from "../src/protocol";

const capabilities: DriverCapabilities = {
    exec: true,
    stdin: true,
    cancel: true,
    upload: true,
    download: true,
    preview: true,
    extend: true,
    snapshot: true,
    metrics: true,
};

const drivers: DriverInfo[] = [
    { id: "local", available: true, capabilities, settings: [], credentials: [] },
    {
        id: "e2b",
        available: true,
        capabilities,
        settings: [{ name: "template", type: "string", default: "base", description: "the template" }],
        credentials: [{ key: "apiKey", envVar: "E2B_API_KEY", required: true, description: "E2B API key" }],
    },
];

test("credentialChoices offers the driver's credential keys with their variables, then a typed name", () => {
    const choices = credentialChoices(drivers, "e2b");
    assert.deepEqual(
        choices.map((choice) => [choice.label, choice.key]),
        [
            ["apiKey", "apiKey"],
            [anotherNameLabel, undefined],
        ],
    );
    assert.equal(choices[0].description, "E2B_API_KEY, required");
    assert.equal(choices[0].detail, "E2B API key");
});

test("credentialChoices is empty for a driver without credentials, an unknown driver, or an older server", () => {
    assert.deepEqual(credentialChoices(drivers, "local"), []);
    assert.deepEqual(credentialChoices(drivers, "vagrant"), []);
    assert.deepEqual(credentialChoices(drivers, undefined), []);
    assert.deepEqual(credentialChoices([{ id: "e2b", available: true, capabilities }], "e2b"), []);
});
