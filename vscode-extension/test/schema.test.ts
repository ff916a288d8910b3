//! Checks the .sandlink.toml JSON Schemas (schemas/, made by scripts/gen-schema): they match the drivers of the server
//! binary, accept files the server accepts and refuse what it refuses, and package.json wires them to TOML support.

import * as assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { test } from "node:test";

import Ajv from "ajv";

const extensionDirectory = path.resolve(__dirname, "..", "..");
const repositoryRoot = path.resolve(extensionDirectory, "..");
const workspaceSchema = JSON.parse(fs.readFileSync(path.join(repositoryRoot, "schemas", "sandlink.schema.json"), "utf8")) as object;
const userSchema = JSON.parse(fs.readFileSync(path.join(repositoryRoot, "schemas", "sandlink-config.schema.json"), "utf8")) as object;
const serverBinary = process.env.SANDLINK_BIN || path.join(repositoryRoot, "target", "debug", "sandlink");
const underCi = process.env.CI === "true" || process.env.CI === "1";

test("the committed schemas are the ones scripts/gen-schema makes from the server binary's drivers", { skip: !underCi && !fs.existsSync(serverBinary) ? `no server binary at ${serverBinary}` : false }, () => {
    assert.ok(fs.existsSync(serverBinary), `no server binary at ${serverBinary} (build it with cargo build)`);
    try {
        execFileSync(process.execPath, [path.join(repositoryRoot, "scripts", "gen-schema"), "--check"], {
            env: { ...process.env, SANDLINK_BIN: serverBinary },
            stdio: ["ignore", "pipe", "pipe"],
            encoding: "utf8",
        });
    } catch (error) {
        assert.fail(`scripts/gen-schema --check: ${(error as { stderr?: string }).stderr ?? String(error)}`);
    }
});

function validator(schema: object) {
    const validate = new Ajv({ allErrors: true, strict: false }).compile(schema);
    return (document: unknown) => ({ valid: validate(document) as boolean, errors: JSON.stringify(validate.errors) });
}

test("a workspace file with profiles of each kind, sync and network settings, and tasks is valid", () => {
    const validate = validator(workspaceSchema);
    const document = {
        default: "box",
        profiles: {
            box: { driver: "local", passEnv: ["HOME"], network: ["pypi.org", "*.npmjs.org:443"], sync: { exclude: ["dist/"], watch: "poll" } },
            dev: { driver: "docker", image: "node:20", cpus: 2, memory: "2g", ports: [8000], network: "off" },
        },
        tasks: { test: "node --test", serve: "python3 -m http.server 8000" },
    };
    const result = validate(document);
    assert.ok(result.valid, result.errors);
});

test("the workspace schema refuses what the server refuses: unknown keys, settings of another driver, wrong types, user-only tables", () => {
    const validate = validator(workspaceSchema);
    const refused: Array<[string, unknown]> = [
        ["an unknown driver", { profiles: { x: { driver: "nope" } } }],
        ["a profile without a driver", { profiles: { x: { image: "node:20" } } }],
        ["a setting the driver does not declare", { profiles: { x: { driver: "local", image: "node:20" } } }],
        ["a setting of the wrong type", { profiles: { x: { driver: "docker", ports: "8000" } } }],
        ["an unknown sync option", { profiles: { x: { driver: "local", sync: { excludes: [] } } } }],
        ["a task that is not a command line", { tasks: { test: ["node", "--test"] } }],
        ["[limits] in a workspace file", { limits: { maxSandboxes: 3 } }],
        ["an unknown top-level key", { network: "off" }],
    ];
    for (const [what, document] of refused) {
        assert.equal(validate(document).valid, false, what);
    }
});

test("the user file's schema also takes [limits] and [sessions]", () => {
    const validate = validator(userSchema);
    const result = validate({ limits: { maxSandboxes: 3 }, sessions: { keepOnExit: false }, profiles: { l: { driver: "local" } } });
    assert.ok(result.valid, result.errors);
    assert.equal(validate({ limits: { maxSandboxes: 0 } }).valid, false, "at least one sandbox");
    assert.equal(validate({ sessions: { keep: true } }).valid, false, "an unknown session option");
});

test("package.json wires the schemas to TOML support (tomlValidation), and the bundle step ships them", () => {
    const manifest = JSON.parse(fs.readFileSync(path.join(extensionDirectory, "package.json"), "utf8")) as {
        contributes: { tomlValidation: Array<{ fileMatch: string; url: string }> };
    };
    const urls = Object.fromEntries(manifest.contributes.tomlValidation.map((entry) => [entry.fileMatch, entry.url]));
    assert.equal(urls[".sandlink.toml"], "./dist/schemas/sandlink.schema.json");
    assert.equal(urls["sandlink/config.toml"], "./dist/schemas/sandlink-config.schema.json");
    const bundler = fs.readFileSync(path.join(extensionDirectory, "esbuild.mjs"), "utf8");
    assert.match(bundler, /sandlink\.schema\.json/);
    assert.match(fs.readFileSync(path.join(extensionDirectory, ".vscodeignore"), "utf8"), /^!dist\/schemas\/\*\*$/m);
});
