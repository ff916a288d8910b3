"""E2B benchmark: HTTP requests and wall time for sandlink's e2b driver next to the official e2b SDK, same fake, same run.

Both do the same work against tests/fakes/e2b_server.py: create a sandbox, upload N small files, run one command,
then bring N files the sandbox made back (sandlink: `sandlink/sync` down; SDK: `files.list` + `files.read` each).
The fake's request log counts every HTTP request each client made; the SDK is the baseline of the ratios.
Usage: .venv/bin/python bench/e2b/bench.py [--files 1000] [--sandlink target/debug/sandlink]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "e2b"))

from fake_e2b_client import FakeE2BServer  # noqa: E402

API_KEY = "e2b_bench_key_0123456789"
# Makes as many new files in the sandbox as were uploaded, for the download half (set in main).
GENERATE_COMMAND = ""


def requests_between(fake: FakeE2BServer, first: int, end: int) -> list[dict]:
    """The requests the fake logged with first <= seq < end (admin calls take sequence numbers but are not logged)."""
    import httpx

    logged = httpx.get(f"{fake.url}/_admin/requests", params={"since": first}).json()["requests"]
    return [request for request in logged if request["seq"] < end]


def next_sequence(fake: FakeE2BServer) -> int:
    import httpx

    return httpx.get(f"{fake.url}/_admin/requests", params={"since": 10**9}).json()["nextSeq"]


def sdk_round(fake: FakeE2BServer, files: dict[str, str]) -> dict:
    from e2b import Sandbox
    from e2b.sandbox.filesystem.filesystem import WriteEntry

    start_sequence = next_sequence(fake)
    started = time.perf_counter()
    sandbox = Sandbox.create(timeout=300, **fake.sdk_options())
    create_done = next_sequence(fake)
    sandbox.files.write_files([WriteEntry(path=f"/home/user/{path}", data=data) for path, data in files.items()])
    upload_done = next_sequence(fake)
    result = sandbox.commands.run("echo hi")
    run_done = next_sequence(fake)
    elapsed = time.perf_counter() - started
    assert result.stdout == "hi\n", result
    sandbox.commands.run(GENERATE_COMMAND, cwd="/home/user")
    down_started = next_sequence(fake)
    down_clock = time.perf_counter()
    entries = sandbox.files.list("/home/user/out", depth=10)
    fetched = [sandbox.files.read(entry.path) for entry in entries if entry.type.value == "file"]
    down_seconds = time.perf_counter() - down_clock
    assert len(fetched) == len(files), len(fetched)
    down_done = next_sequence(fake)
    sandbox.kill()
    return {
        "connect": len(requests_between(fake, start_sequence, create_done)),
        "upload": len(requests_between(fake, create_done, upload_done)),
        "run": len(requests_between(fake, upload_done, run_done)),
        "down": len(requests_between(fake, down_started, down_done)),
        "seconds": elapsed,
        "down_seconds": down_seconds,
    }


class LspClient:
    """Just enough of an LSP client to drive `sandlink lsp` over stdio."""

    def __init__(self, binary: str, env: dict):
        self.process = subprocess.Popen([binary, "lsp"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, env=env)
        self.next_id = 1
        self.notifications: list[dict] = []

    def send(self, message: dict) -> None:
        body = json.dumps(message).encode()
        self.process.stdin.write(f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        self.process.stdin.flush()

    def read(self) -> dict:
        length = 0
        while True:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError("sandlink closed its output")
            if line in (b"\r\n", b"\n"):
                break
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return json.loads(self.process.stdout.read(length))

    def request(self, method: str, params: dict) -> dict:
        request_id = self.next_id
        self.next_id += 1
        self.send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        while True:
            message = self.read()
            if message.get("id") == request_id and "method" not in message:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            if "method" in message and "id" in message:
                self.send({"jsonrpc": "2.0", "id": message["id"], "result": None})
            elif "method" in message:
                self.notifications.append(message)

    def wait_notification(self, method: str, predicate) -> dict:
        while True:
            for index, message in enumerate(self.notifications):
                if message["method"] == method and predicate(message["params"]):
                    return self.notifications.pop(index)["params"]
            message = self.read()
            if "method" in message and "id" in message:
                self.send({"jsonrpc": "2.0", "id": message["id"], "result": None})
            elif "method" in message:
                self.notifications.append(message)

    def close(self) -> None:
        try:
            self.request("shutdown", {})
            self.send({"jsonrpc": "2.0", "method": "exit"})
            self.process.wait(timeout=10)
        except Exception:
            self.process.kill()


def sandlink_round(fake: FakeE2BServer, files: dict[str, str], binary: str) -> dict:
    with tempfile.TemporaryDirectory() as workspace, tempfile.TemporaryDirectory() as state:
        for path, data in files.items():
            full = pathlib.Path(workspace) / path
            full.parent.mkdir(parents=True, exist_ok=True)
            full.write_text(data)
        env = dict(os.environ, E2B_API_KEY=API_KEY, SANDLINK_STATE_DIR=state)
        client = LspClient(binary, env)
        client.request("initialize", {"processId": os.getpid(), "rootUri": None,
                                      "capabilities": {"experimental": {"sandlink": {"notifications": True}}}})
        client.send({"jsonrpc": "2.0", "method": "initialized", "params": {}})
        port = fake.url.rsplit(":", 1)[1]
        settings = {"apiUrl": fake.url, "domain": f"localhost:{port}", "timeoutSeconds": 300}
        start_sequence = next_sequence(fake)
        started = time.perf_counter()
        session = client.request("sandlink/connect", {"driver": "e2b", "settings": settings,
                                                      "workspaceFolder": pathlib.Path(workspace).as_uri()})
        connect_done = next_sequence(fake)
        run = client.request("sandlink/run", {"sessionId": session["sessionId"], "command": "echo hi"})
        client.wait_notification("sandlink/exit", lambda params: params["runId"] == run["runId"])
        run_done = next_sequence(fake)
        elapsed = time.perf_counter() - started
        connect_requests = requests_between(fake, start_sequence, connect_done)
        generate = client.request("sandlink/run", {"sessionId": session["sessionId"], "command": GENERATE_COMMAND})
        client.wait_notification("sandlink/exit", lambda params: params["runId"] == generate["runId"])
        down_started = next_sequence(fake)
        down_clock = time.perf_counter()
        synced = client.request("sandlink/sync", {"sessionId": session["sessionId"], "direction": "down"})
        down_seconds = time.perf_counter() - down_clock
        down_done = next_sequence(fake)
        assert synced["downloaded"] == len(files), synced
        if os.environ.get("BENCH_VERBOSE"):
            from collections import Counter
            print(Counter(f"{r['method']} {r['path']}" for r in requests_between(fake, down_started, down_done)))
        client.request("sandlink/disconnect", {"sessionId": session["sessionId"]})
        client.close()
        # Control-plane requests create the sandbox; envd ones upload (the batch, and the fix-up of modes and times).
        uploads = sum(1 for request in connect_requests if request["plane"] == "envd")
        return {
            "connect": len(connect_requests) - uploads,
            "upload": uploads,
            "run": len(requests_between(fake, connect_done, run_done)),
            "down": len(requests_between(fake, down_started, down_done)),
            "seconds": elapsed,
            "down_seconds": down_seconds,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--sandlink", default=str(REPO / "target" / "debug" / "sandlink"))
    arguments = parser.parse_args()
    for variable in ("E2B_API_KEY", "E2B_DOMAIN", "E2B_API_URL", "E2B_SANDBOX_URL"):
        os.environ.pop(variable, None)
    files = {f"dir{index % 10}/file{index}.txt": f"content {index}\n" for index in range(arguments.files)}
    global GENERATE_COMMAND
    GENERATE_COMMAND = (f"mkdir -p out && for i in $(seq 1 {arguments.files}); do echo generated $i > out/g$i.txt; done")
    with tempfile.TemporaryDirectory() as root, tempfile.TemporaryDirectory() as logs:
        fake = FakeE2BServer(API_KEY, root, os.path.join(logs, "fake.log")).start()
        try:
            sdk = sdk_round(fake, files)
            ours = sandlink_round(fake, files, arguments.sandlink)
        finally:
            fake.stop()
    print(f"{arguments.files} small files + one command, HTTP requests (official e2b SDK = baseline):")
    print("  (sandlink's upload also restores modes and modification times, which the SDK's write_files drops)")
    for phase in ("connect", "upload", "run", "down"):
        ratio = ours[phase] / sdk[phase] if sdk[phase] else float("nan")
        print(f"  {phase:<8} sandlink {ours[phase]:>5}   sdk {sdk[phase]:>5}   ratio {ratio:.2f}")
    print(f"  wall time: sandlink {ours['seconds']:.2f} s, sdk {sdk['seconds']:.2f} s, "
          f"ratio {ours['seconds'] / sdk['seconds']:.2f}")
    print(f"  sync down of {arguments.files} files: sandlink {ours['down_seconds']:.2f} s, sdk list+read "
          f"{sdk['down_seconds']:.2f} s, ratio {ours['down_seconds'] / sdk['down_seconds']:.2f}")


if __name__ == "__main__":
    main()
