//! A JSON-lines log of what the extension did, written only when SANDLINK_VSCODE_TEST_LOG names a file (end-to-end tests).
//
// The end-to-end test drives a real VS Code through its web page; this log lets it also check what the extension saw
// and did (status bar texts, run output) without scraping every detail from the DOM. Secrets never reach it: callers
// log events, not request params.

import * as fs from "node:fs";

const testLogPath = process.env.SANDLINK_VSCODE_TEST_LOG;

export function isTestLogEnabled(): boolean {
    return testLogPath !== undefined && testLogPath !== "";
}

export function writeTestLog(event: string, details: Record<string, unknown> = {}): void {
    if (!isTestLogEnabled()) {
        return;
    }
    try {
        // Synchronous appends keep the lines in order and complete even if the extension host is torn down right after.
        fs.appendFileSync(testLogPath as string, JSON.stringify({ time: new Date().toISOString(), event, ...details }) + "\n");
    } catch {
        // A test log that cannot be written must not break the extension for the user.
    }
}
