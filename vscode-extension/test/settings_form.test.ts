//! Unit tests for the profile form: which settings it shows first, and how typed text becomes a setting's value.

import * as assert from "node:assert/strict";
import { test } from "node:test";

import type { SettingInfo } from "../src/protocol";
import { formLines, inputText, parseSettingInput } from "../src/settings_form";

const docker: SettingInfo[] = [
    { name: "container", type: "string", description: "an existing container" },
    { name: "image", type: "string", description: "the image of a new container", askAtConnect: true },
    { name: "cpus", type: "number", description: "the CPUs a new container may use" },
    { name: "keep", type: "boolean", default: false, description: "leave the container running" },
    { name: "ports", type: "integerList", description: "container ports to publish" },
];

test("the form shows what connect needs first, then what is given, then the rest, each in the driver's order", () => {
    const lines = formLines(docker, { ports: [8080] });
    assert.deepEqual(
        lines.map((line) => [line.label, line.description]),
        [
            ["image", "needed to connect"],
            ["ports", "= [8080]"],
            ["container", "not set"],
            ["cpus", "not set"],
            ["keep", "default false"],
        ],
    );
    assert.equal(lines[0].detail, "the image of a new container (string)");
});

test("typed text is read as the setting's type, and bad text says what is expected", () => {
    assert.deepEqual(parseSettingInput("integer", " 4 "), { value: 4 });
    assert.match(parseSettingInput("integer", "4.5").error ?? "", /whole number/);
    assert.deepEqual(parseSettingInput("number", "0.5"), { value: 0.5 });
    assert.match(parseSettingInput("number", "lots").error ?? "", /number/);
    assert.deepEqual(parseSettingInput("numberOrString", "512m"), { value: "512m" });
    assert.deepEqual(parseSettingInput("numberOrString", "2"), { value: 2 });
    assert.deepEqual(parseSettingInput("boolean", "true"), { value: true });
    assert.deepEqual(parseSettingInput("stringList", "dist/, node_modules ,"), { value: ["dist/", "node_modules"] });
    assert.deepEqual(parseSettingInput("integerList", "3000, 8080"), { value: [3000, 8080] });
    assert.match(parseSettingInput("integerList", "3000, http").error ?? "", /Whole numbers/);
    assert.deepEqual(parseSettingInput("network", "off"), { value: "off" });
    assert.deepEqual(parseSettingInput("network", "registry.npmjs.org, github.com:443"), { value: ["registry.npmjs.org", "github.com:443"] });
    assert.deepEqual(parseSettingInput("stringMap", '{"NODE_ENV": "test"}'), { value: { NODE_ENV: "test" } });
    assert.match(parseSettingInput("stringMap", "[1]").error ?? "", /JSON object/);
    assert.deepEqual(parseSettingInput("string", "   "), {}, "empty text unsets");
});

test("a value already set starts the input box as the user would type it", () => {
    assert.equal(inputText("integerList", [3000, 8080]), "3000, 8080");
    assert.equal(inputText("string", "debian:12"), "debian:12");
    assert.equal(inputText("stringMap", { A: "1" }), '{"A":"1"}');
    assert.equal(inputText("string", undefined), "");
});
