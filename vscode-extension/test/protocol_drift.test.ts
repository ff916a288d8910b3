//! Fails when src/protocol.ts and the Rust protocol module (server/src/protocol.rs) name different methods or commands.

import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { test } from "node:test";

// Compiled to vscode-extension/out/test/, so the extension directory is two levels up and the repository three.
const extensionDirectory = path.resolve(__dirname, "..", "..");
const rustProtocolPath = path.resolve(extensionDirectory, "..", "server", "src", "protocol.rs");
const typescriptProtocolPath = path.join(extensionDirectory, "src", "protocol.ts");

/** String literals that name a method (`sandlink/…`) or an executeCommand command (`sandlink.…`), outside comments. */
function protocolNames(sourceText: string): { methods: Set<string>; commands: Set<string> } {
    const withoutLineComments = sourceText
        .split("\n")
        .filter((line) => !/^\s*\/\//.test(line))
        .join("\n");
    const methods = new Set<string>();
    const commands = new Set<string>();
    for (const match of withoutLineComments.matchAll(/"(sandlink[/.][A-Za-z0-9_.\/]+)"/g)) {
        (match[1].startsWith("sandlink/") ? methods : commands).add(match[1]);
    }
    return { methods, commands };
}

const difference = (left: Set<string>, right: Set<string>) => [...left].filter((name) => !right.has(name)).sort();

test("protocol.ts names the Rust file it mirrors at its top", () => {
    const firstLine = fs.readFileSync(typescriptProtocolPath, "utf8").split("\n")[0];
    assert.match(firstLine, /server\/src\/protocol\.rs/);
});

test("protocol.ts declares every method and notification of server/src/protocol.rs, and no other", () => {
    assert.ok(fs.existsSync(rustProtocolPath), `the Rust protocol module should exist at ${rustProtocolPath}`);
    const rust = protocolNames(fs.readFileSync(rustProtocolPath, "utf8"));
    const typescript = protocolNames(fs.readFileSync(typescriptProtocolPath, "utf8"));
    assert.ok(rust.methods.size >= 20, `expected the Rust module to declare the contract's methods, found ${rust.methods.size}`);
    assert.deepEqual(difference(rust.methods, typescript.methods), [], "methods in protocol.rs missing from protocol.ts");
    assert.deepEqual(difference(typescript.methods, rust.methods), [], "methods in protocol.ts unknown to protocol.rs");
});

test("protocol.ts lists every sandlink.* command of server/src/protocol.rs", () => {
    const rust = protocolNames(fs.readFileSync(rustProtocolPath, "utf8"));
    const typescript = protocolNames(fs.readFileSync(typescriptProtocolPath, "utf8"));
    assert.ok(rust.commands.size >= 8, `expected the contract's executeCommand names in protocol.rs, found ${rust.commands.size}`);
    assert.deepEqual(difference(rust.commands, typescript.commands), [], "commands in protocol.rs missing from protocol.ts");
});
