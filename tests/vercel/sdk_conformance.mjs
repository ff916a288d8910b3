// The official @vercel/sandbox SDK, unchanged, against the fake server: create, run with streamed output, detached runs, files, timeouts, previews, snapshots, stop.
//
// Only the base URL is rewritten, through the SDK's public `fetch` option (cloud-apis.md section 5). The script starts
// its own fake (python from $SANDLINK_TEST_PYTHON, else the repo's .venv), prints one line per step and ends with
// "N passed, N failed"; its exit status is non-zero on any failure.
import { spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { Writable } from "node:stream";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";
import { Sandbox, APIError } from "@vercel/sandbox";

process.env.VERCEL_TELEMETRY_DISABLED = "1";
const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const python = process.env.SANDLINK_TEST_PYTHON || path.join(repoRoot, ".venv", "bin", "python");
const token = "vercel_sdk_conformance_token"; // not a three-part JWT, so the SDK does not try OIDC
const teamId = "team_sdk_conformance";
const projectId = "prj_sdk_conformance";

const root = mkdtempSync(path.join(tmpdir(), "vercel-fake-sdk-"));
const server = spawn(python, [path.join(repoRoot, "tests", "fakes", "vercel_server.py"), "--port", "0", "--token", token,
  "--root", root], { stdio: ["ignore", "pipe", "inherit"] });
const firstLine = await Promise.race([
  once(createInterface({ input: server.stdout }), "line").then(([line]) => line),
  new Promise((_, reject) => setTimeout(() => reject(new Error("the fake did not print LISTENING within 20 s")), 20000)),
]);
const port = Number(/^LISTENING (\d+)$/.exec(firstLine)?.[1]);
const fakeUrl = `http://127.0.0.1:${port}`;
const fetch = (url, init) => globalThis.fetch(String(url).replace("https://vercel.com/api", `${fakeUrl}/api`), init);
const credentials = { token, teamId, projectId, fetch };

const admin = async (route, body) => {
  const response = await globalThis.fetch(`${fakeUrl}/_admin/${route}`, body === undefined ? {} : {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
  });
  return response.json();
};
const adminSession = async (id) => (await admin("sandboxes")).sessions.find((session) => session.id === id);
const requestsSince = async (seq) => (await admin(`requests?since=${seq}`)).requests;
const nextSeq = async () => (await admin(`requests?since=${2 ** 52}`)).nextSeq;

function collector() {
  const chunks = [];
  const stream = new Writable({ write(chunk, _encoding, done) { chunks.push(String(chunk)); done(); } });
  stream.text = () => chunks.join("");
  return stream;
}

let passed = 0;
let failed = 0;
async function step(name, body) {
  const started = Date.now();
  try {
    await body();
    passed += 1;
    console.log(`ok   ${name} (${Date.now() - started} ms)`);
  } catch (error) {
    failed += 1;
    console.log(`FAIL ${name}: ${error?.stack ?? error}`);
  }
}

let sandbox;
try {
  await step("Sandbox.create sends POST /api/v3/sandboxes with teamId, the token and the project", async () => {
    const seq = await nextSeq();
    sandbox = await Sandbox.create({ ...credentials, ports: [3000], timeout: 120_000, env: { GREETING: "hi" } });
    assert.equal(sandbox.status, "running");
    const [create] = await requestsSince(seq);
    assert.equal(create.method, "POST");
    assert.equal(create.path, "/api/v3/sandboxes");
    assert.equal(create.query, `teamId=${teamId}`);
    assert.equal(create.status, 200);
    assert.equal(create.body.projectId, projectId);
    assert.deepEqual(create.body.ports, [3000]);
    assert.equal(create.body.timeout, 120_000);
    assert.match(create.headers["User-Agent"], /^vercel\/sandbox\//);
  });

  await step("runCommand streams stdout and stderr and returns the exit code", async () => {
    const stdout = collector();
    const stderr = collector();
    const finished = await sandbox.runCommand({
      cmd: "sh", args: ["-c", 'echo "$GREETING out"; echo err >&2; printf "no newline"; exit 7'], stdout, stderr,
    });
    assert.equal(finished.exitCode, 7);
    assert.equal(stdout.text(), "hi out\nno newline");
    assert.equal(stderr.text(), "err\n");
    assert.equal(await finished.stdout(), "hi out\nno newline");
    assert.equal(await finished.stderr(), "err\n");
  });

  await step("runCommand honours cwd, env and timeoutMs (the timeout kills with exit code 137)", async () => {
    await sandbox.mkDir("work");
    const inWork = await sandbox.runCommand({ cmd: "sh", args: ["-c", 'basename "$PWD"; echo "$EXTRA"'],
      cwd: "/vercel/sandbox/work", env: { EXTRA: "yes" } });
    assert.equal(await inWork.stdout(), "work\nyes\n");
    const timedOut = await sandbox.runCommand({ cmd: "sleep", args: ["30"], timeoutMs: 300 });
    assert.equal(timedOut.exitCode, 137);
  });

  await step("a detached command: wait() gives the exit code, logs() and stdout() the whole output", async () => {
    const command = await sandbox.runCommand({ cmd: "sh", args: ["-c", "for i in 1 2 3; do echo line $i; sleep 0.1; done; echo bad >&2; exit 2"],
      detached: true });
    assert.equal(command.exitCode, null);
    const finished = await command.wait();
    assert.equal(finished.exitCode, 2);
    const lines = [];
    for await (const log of command.logs()) lines.push(`${log.stream}:${log.data}`);
    assert.equal(lines.join(""), "stdout:line 1\nstdout:line 2\nstdout:line 3\nstderr:bad\n");
    assert.equal(await finished.stdout(), "line 1\nline 2\nline 3\n");
  });

  await step("kill() ends a detached command with the signal's exit code", async () => {
    const command = await sandbox.runCommand({ cmd: "sleep", args: ["30"], detached: true });
    await command.kill("SIGTERM");
    const finished = await command.wait();
    assert.equal(finished.exitCode, 143);
  });

  await step("writeFiles (text, binary, an executable, a nested path) and readFile read them back", async () => {
    const binary = Buffer.from(Array.from({ length: 256 }, (_, index) => index));
    await sandbox.writeFiles([
      { path: "hello.txt", content: Buffer.from("hello\n") },
      { path: "/vercel/sandbox/data/bytes.bin", content: binary },
      { path: "bin/run.sh", content: Buffer.from("#!/bin/sh\necho ran\n"), mode: 0o755 },
    ]);
    assert.equal((await sandbox.readFileToBuffer({ path: "hello.txt" })).toString(), "hello\n");
    assert.deepEqual(await sandbox.readFileToBuffer({ path: "/vercel/sandbox/data/bytes.bin" }), binary);
    assert.equal(await sandbox.readFileToBuffer({ path: "missing.txt" }), null);
    const session = await adminSession(sandbox.currentSession().sessionId);
    assert.equal(statSync(path.join(session.hostRoot, "vercel/sandbox/bin/run.sh")).mode & 0o777, 0o755);
    const ran = await sandbox.runCommand("./bin/run.sh");
    assert.equal(await ran.stdout(), "ran\n");
  });

  await step("mkDir creates a directory (not recursively)", async () => {
    await sandbox.mkDir("made");
    assert.equal((await sandbox.runCommand("test", ["-d", "made"])).exitCode, 0);
    await assert.rejects(sandbox.mkDir("no/such/parent"), (error) => error instanceof APIError && error.response.status === 400);
  });

  await step("extendTimeout moves the session's deadline", async () => {
    const sessionId = sandbox.currentSession().sessionId;
    const before = await adminSession(sessionId);
    await sandbox.extendTimeout(60_000);
    const after = await adminSession(sessionId);
    assert.equal(after.timeout, before.timeout + 60_000);
    assert.equal(after.deadline, before.deadline + 60_000);
    assert.equal(sandbox.currentSession().timeout, 180_000);
  });

  await step("domain(port) is the route's subdomain for a declared port, and throws for another", async () => {
    const session = await adminSession(sandbox.currentSession().sessionId);
    assert.equal(sandbox.domain(3000), `https://${session.routes[0].subdomain}.vercel.run`);
    assert.throws(() => sandbox.domain(4000), /No route for port 4000/);
  });

  await step("update({ports}) adds a route (PATCH), and Sandbox.get and Sandbox.list find the sandbox", async () => {
    await sandbox.update({ ports: [3000, 4000] });
    const session = await adminSession(sandbox.currentSession().sessionId);
    assert.equal(sandbox.domain(4000), `https://${session.routes.find((route) => route.port === 4000).subdomain}.vercel.run`);
    const found = await Sandbox.get({ ...credentials, name: sandbox.name });
    assert.equal(found.currentSession().sessionId, sandbox.currentSession().sessionId);
    assert.equal(found.domain(4000), sandbox.domain(4000));
    const listed = await (await Sandbox.list({ ...credentials })).toArray();
    assert.ok(listed.some((entry) => entry.name === sandbox.name));
  });

  let snapshotId;
  await step("snapshot() stops the session, and a sandbox created from the snapshot has the files", async () => {
    const snapshot = await sandbox.snapshot();
    snapshotId = snapshot.snapshotId;
    assert.equal(snapshot.status, "created");
    assert.equal(sandbox.currentSession().status, "stopped");
    const restored = await Sandbox.create({ ...credentials, source: { type: "snapshot", snapshotId } });
    assert.equal((await restored.readFileToBuffer({ path: "hello.txt" })).toString(), "hello\n");
    await restored.stop();
  });

  await step("stop() stops the session; afterwards a command's wait() is 410 and its logs are gone", async () => {
    const live = await Sandbox.create({ ...credentials });
    const command = await live.runCommand({ cmd: "sleep", args: ["30"], detached: true });
    const stopped = await live.stop();
    assert.equal(stopped.status, "stopped");
    await assert.rejects(command.wait(), (error) => error instanceof APIError && error.response.status === 410);
    const logs = command.logs();
    await assert.rejects(logs.next(), (error) => error instanceof APIError && error.response.status === 410);
  });

  await step("a persistent sandbox resumes after stop with its files (the SDK retries on 410)", async () => {
    const persistent = await Sandbox.create({ ...credentials, persistent: true, name: "sdk-persistent" });
    const firstSession = persistent.currentSession().sessionId;
    await persistent.writeFiles([{ path: "kept.txt", content: Buffer.from("kept") }]);
    await persistent.stop();
    const again = await persistent.runCommand("cat", ["kept.txt"]);
    assert.equal(await again.stdout(), "kept");
    assert.notEqual(persistent.currentSession().sessionId, firstSession);
    await persistent.stop();
  });

  await step("429 with Retry-After and 503 are retried by the SDK", async () => {
    const live = await Sandbox.create({ ...credentials });
    await admin("faults", { rateLimitNext: 1, retryAfter: 1, sandbox: live.name });
    const afterRateLimit = await live.runCommand("echo", ["ok"]);
    assert.equal(await afterRateLimit.stdout(), "ok\n");
    await admin("faults", { errorNext: 2, errorStatus: 503, sandbox: live.name });
    const afterErrors = await live.runCommand("echo", ["ok"]);
    assert.equal(await afterErrors.stdout(), "ok\n");
    await globalThis.fetch(`${fakeUrl}/_admin/faults`, { method: "DELETE" });
    await live.stop();
  });
} finally {
  server.kill("SIGTERM");
  await once(server, "exit");
  rmSync(root, { recursive: true, force: true });
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
