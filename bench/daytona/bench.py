"""Daytona benchmark: HTTP requests and connect-to-first-output for sandlink's daytona driver next to the official SDK.

Both do the same work against tests/fakes/daytona_server.py in the same run: upload N small files, run one command
with streamed output, bring N files back; and from nothing to a command's first output (sandlink: `sandlink/connect`
with an empty workspace, then `sandlink/run`; SDK: `Daytona.create()`, then a session command streamed from the
logs WebSocket, its documented streaming recipe). The fake's request log (`GET /_admin/requests`) counts every HTTP
request; the SDK is the baseline of the ratios. The SDK's socket.io attempts on construction are left out (the fake
does not serve that gateway).
Usage: .venv/bin/python bench/daytona/bench.py [--files 1000] [--rounds 5] [--sandlink target/debug/sandlink]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

from lsp_client import LspClient  # noqa: E402

API_KEY = "dtn_bench_key_0123456789"


class Fake:
    """One fake Daytona server on a free port, stopped with the benchmark."""

    def __init__(self, root: str):
        script = os.environ.get("SANDLINK_DAYTONA_FAKE_SERVER") or str(REPO / "tests" / "fakes" / "daytona_server.py")
        self.process = subprocess.Popen([sys.executable, script, "--port", "0", "--api-key", API_KEY, "--root", root],
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.process.stdout.readline()
        if not line.startswith("LISTENING "):
            raise RuntimeError(f"the fake did not start: {line!r}")
        self.url = f"http://127.0.0.1:{int(line.split()[1])}"

    def admin(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path) as answer:
            return json.load(answer)

    def next_sequence(self) -> int:
        return self.admin("/_admin/requests?since=1000000000")["nextSeq"]

    def requests_between(self, first: int, end: int) -> list[dict]:
        logged = self.admin(f"/_admin/requests?since={first}")["requests"]
        return [request for request in logged if request["seq"] < end and request["plane"] != "socketio"]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def counted(fake: Fake, work):
    start = fake.next_sequence()
    began = time.perf_counter()
    result = work()
    seconds = time.perf_counter() - began
    return result, len(fake.requests_between(start, fake.next_sequence())), seconds


def sdk_streamed_run(sandbox, command: str, session_id: str, on_first_output=None) -> int:
    from daytona import SessionExecuteRequest

    sandbox.process.create_session(session_id)
    started = sandbox.process.execute_session_command(session_id, SessionExecuteRequest(command=command, run_async=True))
    seen = []

    def on_stdout(chunk: str) -> None:
        if not seen and on_first_output is not None:
            on_first_output()
        seen.append(chunk)

    asyncio.run(sandbox.process.get_session_command_logs_async(session_id, started.cmd_id, on_stdout, lambda _: None))
    return sandbox.process.get_session_command(session_id, started.cmd_id).exit_code


def sdk_figures(fake: Fake, count: int, rounds: int) -> dict:
    from daytona import Daytona, DaytonaConfig, FileDownloadRequest, FileUpload

    os.environ["DAYTONA_USE_DEPRECATED_POLLING"] = "true"
    daytona = Daytona(DaytonaConfig(api_key=API_KEY, api_url=fake.url + "/api"))
    sandbox = daytona.create(timeout=60)
    uploads = [FileUpload(source=f"content {index}\n".encode(), destination=f"w/dir{index % 10}/file{index}.txt")
               for index in range(count)]
    _, upload, upload_seconds = counted(fake, lambda: sandbox.fs.upload_files(uploads))
    requests = [FileDownloadRequest(source=item.destination) for item in uploads]
    results, down, down_seconds = counted(fake, lambda: sandbox.fs.download_files(requests))
    assert all(result.error is None for result in results)
    code, run, _ = counted(fake, lambda: sdk_streamed_run(sandbox, "echo hi", "bench"))
    assert code == 0
    sandbox.delete()
    latencies = []
    for round_number in range(rounds):
        first: list[float] = []
        began = time.perf_counter()
        fresh = daytona.create(timeout=60)
        sdk_streamed_run(fresh, "echo first", f"latency-{round_number}", lambda: first.append(time.perf_counter()))
        latencies.append(first[0] - began)
        fresh.delete()
    return {"upload": upload, "down": down, "run": run, "upload_seconds": upload_seconds,
            "down_seconds": down_seconds, "first_output": statistics.median(latencies)}


def sandlink_figures(fake: Fake, count: int, rounds: int, binary: str) -> dict:
    os.environ["DAYTONA_API_KEY"] = API_KEY
    settings = {"apiUrl": fake.url + "/api"}
    figures: dict = {}
    with tempfile.TemporaryDirectory() as workspace, tempfile.TemporaryDirectory() as state:
        for index in range(count):
            path = pathlib.Path(workspace) / f"dir{index % 10}" / f"file{index}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"content {index}\n")
        client = LspClient(binary, state)
        start = fake.next_sequence()
        began = time.perf_counter()
        session = client.request("sandlink/connect", {"driver": "daytona", "settings": settings,
                                                      "workspaceFolder": pathlib.Path(workspace).as_uri()})
        figures["connect_seconds"] = time.perf_counter() - began
        connect_requests = fake.requests_between(start, fake.next_sequence())
        # Main-API requests create the sandbox; of the toolbox ones, the first two prepare the root (`files/folder`,
        # `pwd`) and the rest are the first sync's upload (bulk upload, the finishing script, the look after it).
        figures["create"] = sum(1 for request in connect_requests if request["plane"] == "api")
        figures["upload"] = sum(1 for request in connect_requests if request["plane"] == "toolbox") - 2
        figures["connect_routes"] = [f"{request['method']} {request['route']}" for request in connect_requests]
        session_id = session["sessionId"]

        def run(command: str) -> None:
            started = client.request("sandlink/run", {"sessionId": session_id, "command": command})
            client.wait_notification("sandlink/exit", lambda params: params["runId"] == started["runId"])

        _, figures["run"], _ = counted(fake, lambda: run("echo hi"))
        # The session is deleted after the exit is reported; give that request a moment to be counted.
        time.sleep(0.3)
        run(f"mkdir -p out && for i in $(seq 1 {count}); do echo generated $i > out/g$i.txt; done")
        synced, figures["down"], figures["down_seconds"] = counted(
            fake, lambda: client.request("sandlink/sync", {"sessionId": session_id, "direction": "down"}))
        assert synced["downloaded"] == count, synced
        client.request("sandlink/disconnect", {"sessionId": session_id})
        latencies = []
        with tempfile.TemporaryDirectory() as empty:
            for _ in range(rounds):
                began = time.perf_counter()
                fresh = client.request("sandlink/connect", {"driver": "daytona", "settings": settings,
                                                            "workspaceFolder": pathlib.Path(empty).as_uri()})
                started = client.request("sandlink/run", {"sessionId": fresh["sessionId"], "command": "echo first"})
                arrived, _ = client.wait_notification("sandlink/output", lambda params: params["runId"] == started["runId"])
                latencies.append(arrived - began)
                client.wait_notification("sandlink/exit", lambda params: params["runId"] == started["runId"])
                client.request("sandlink/disconnect", {"sessionId": fresh["sessionId"]})
        figures["first_output"] = statistics.median(latencies)
        client.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sandlink", default=str(REPO / "target" / "debug" / "sandlink"))
    arguments = parser.parse_args()
    for variable in ("DAYTONA_API_KEY", "DAYTONA_API_URL", "DAYTONA_JWT_TOKEN"):
        os.environ.pop(variable, None)
    with tempfile.TemporaryDirectory() as root:
        fake = Fake(root)
        try:
            sdk = sdk_figures(fake, arguments.files, arguments.rounds)
            ours = sandlink_figures(fake, arguments.files, arguments.rounds, arguments.sandlink)
        finally:
            fake.stop()
    print(f"{arguments.files} small files and one command, HTTP requests (official daytona SDK = baseline):")
    print("  (sandlink's upload also restores modes and times and moves files into place atomically; its sync down")
    print("   includes the listing the three-way comparison needs)")
    for phase, label in (("upload", f"upload {arguments.files}"), ("run", "one run"), ("down", f"down {arguments.files}")):
        print(f"  {label:<12} sandlink {ours[phase]:>5}   sdk {sdk[phase]:>5}   ratio {ours[phase] / sdk[phase]:.2f}")
    print(f"  sandlink's connect: {ours['create']} main-API requests, 2 toolbox for the root, {ours['upload']} for the upload:")
    for route in ours["connect_routes"]:
        print(f"      {route}")
    print(f"  sync down of {arguments.files} files: sandlink {ours['down_seconds']:.2f} s, sdk download_files "
          f"{sdk['down_seconds']:.2f} s, ratio {ours['down_seconds'] / sdk['down_seconds']:.2f}")
    print(f"  connect to first output (median of {arguments.rounds}): sandlink {ours['first_output']:.3f} s, sdk "
          f"create + streamed exec {sdk['first_output']:.3f} s, ratio {ours['first_output'] / sdk['first_output']:.2f}")


if __name__ == "__main__":
    main()
