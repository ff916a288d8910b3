//! Checks the first-use walkthrough in package.json: every step has its markdown (packaged) and links a contributed command.

import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { test } from "node:test";

const extensionDirectory = path.resolve(__dirname, "..", "..");
const manifest = JSON.parse(fs.readFileSync(path.join(extensionDirectory, "package.json"), "utf8")) as {
    contributes: {
        commands: Array<{ command: string }>;
        walkthroughs: Array<{ id: string; steps: Array<{ id: string; description: string; media: { markdown: string } }> }>;
    };
};

test("the walkthrough covers connect, run, sync, previews and the sessions view, each step linking a contributed command", () => {
    const [walkthrough] = manifest.contributes.walkthroughs;
    assert.deepEqual(walkthrough.steps.map((step) => step.id), ["connect", "run", "sync", "preview", "sessions"]);
    const contributed = new Set(manifest.contributes.commands.map((command) => command.command));
    for (const step of walkthrough.steps) {
        const links = [...step.description.matchAll(/\(command:([\w.]+)\)/g)].map((match) => match[1]);
        assert.ok(links.length > 0, `${step.id} links a command`);
        for (const link of links) {
            assert.ok(contributed.has(link), `${step.id} links ${link}, which package.json contributes`);
        }
        const markdown = path.join(extensionDirectory, step.media.markdown);
        assert.ok(fs.existsSync(markdown), markdown);
        assert.match(fs.readFileSync(markdown, "utf8"), /^# /, `${step.media.markdown} starts with a heading`);
        assert.ok(step.media.markdown.startsWith("walkthrough/"), "packaged by .vscodeignore's !walkthrough/**");
    }
});
