"""Daytona SDK baseline: HTTP requests the official SDK makes for common work against the Daytona fake, and its create+exec latency.

The figures are the baseline the sandlink daytona driver is compared with (issue #14): requests to upload N small
files and to run one command, and the wall time from `Daytona.create()` to a command's first output. Every request
is counted by the fake's request log (`GET /_admin/requests`); the socket.io attempts the SDK makes on construction
are reported apart, since the fake does not serve that gateway (tests/fakes/daytona_server.md, "Deviations").
Usage: .venv/bin/python bench/daytona_sdk_requests.py [--files 1000] [--rounds 5] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "daytona"))

from fake_daytona_client import FakeDaytonaServer  # noqa: E402

API_KEY = "dtn_bench_key_0123456789"


def counted(server: FakeDaytonaServer, work) -> tuple[object, dict]:
    """Runs `work()` and returns its result with the requests the fake logged meanwhile, by plane and route."""
    start = server.next_request_sequence()
    result = work()
    log = server.requests_since(start)
    by_plane: dict[str, int] = {}
    for entry in log["requests"]:
        by_plane[entry["plane"]] = by_plane.get(entry["plane"], 0) + 1
    routes = {f"{item['method']} {item['path']}": item["count"] for item in log["routeCounts"]
              if not item["path"].startswith("/api/socket.io")}
    # The SDK's background socket.io attempts land in whichever step runs at the time; they are counted apart.
    socketio = by_plane.pop("socketio", 0)
    return result, {"total": log["total"] - socketio, "socketio": socketio, "byPlane": by_plane, "routes": routes}


def run_streamed(sandbox, command: str, session_id: str, on_first_output=None) -> int:
    """The SDK's streaming recipe: a session, `runAsync`, the logs WebSocket with callbacks, then the exit code."""
    from daytona import SessionExecuteRequest

    sandbox.process.create_session(session_id)
    started = sandbox.process.execute_session_command(session_id, SessionExecuteRequest(command=command,
                                                                                        run_async=True))
    seen = []

    def on_stdout(chunk: str) -> None:
        if not seen and on_first_output is not None:
            on_first_output()
        seen.append(chunk)

    asyncio.run(sandbox.process.get_session_command_logs_async(session_id, started.cmd_id, on_stdout, lambda _: None))
    return sandbox.process.get_session_command(session_id, started.cmd_id).exit_code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5, help="create+exec latency samples")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    arguments = parser.parse_args()
    for variable in ("DAYTONA_API_KEY", "DAYTONA_API_URL", "DAYTONA_USE_DEPRECATED_POLLING"):
        os.environ.pop(variable, None)

    from daytona import FileDownloadRequest, FileUpload

    figures: dict = {"files": arguments.files}
    with tempfile.TemporaryDirectory(prefix="daytona-bench-") as scratch:
        server = FakeDaytonaServer(API_KEY, os.path.join(scratch, "root"), os.path.join(scratch, "server.log")).start()
        try:
            daytona, construction = counted(server, server.sdk)
            figures["construct"] = construction
            sandbox, creation = counted(server, lambda: daytona.create(timeout=60))
            figures["create"] = creation

            uploads = [FileUpload(source=f"file {index}\n".encode(), destination=f"bench/dir{index % 10}/f{index}.txt")
                       for index in range(arguments.files)]
            began = time.perf_counter()
            _, figures["upload"] = counted(server, lambda: sandbox.fs.upload_files(uploads))
            figures["upload"]["seconds"] = round(time.perf_counter() - began, 3)

            requests = [FileDownloadRequest(source=upload.destination) for upload in uploads]
            began = time.perf_counter()
            results, figures["download"] = counted(server, lambda: sandbox.fs.download_files(requests))
            figures["download"]["seconds"] = round(time.perf_counter() - began, 3)
            assert all(result.error is None for result in results), "every file comes back"

            exit_code, figures["runStreamed"] = counted(server, lambda: run_streamed(sandbox, "echo hello", "bench"))
            assert exit_code == 0
            response, figures["exec"] = counted(server, lambda: sandbox.process.exec("echo hello"))
            assert response.exit_code == 0
            sandbox.delete()

            latencies = []
            for round_number in range(arguments.rounds):
                first_output_at: list[float] = []
                began = time.perf_counter()
                fresh = daytona.create(timeout=60)
                run_streamed(fresh, "echo first", f"latency-{round_number}",
                             on_first_output=lambda: first_output_at.append(time.perf_counter()))
                latencies.append(first_output_at[0] - began)
                fresh.delete()
            figures["createToFirstOutputSeconds"] = {"median": round(statistics.median(latencies), 4),
                                                     "min": round(min(latencies), 4),
                                                     "max": round(max(latencies), 4), "samples": len(latencies)}
        finally:
            server.stop()

    if arguments.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"official daytona SDK against tests/fakes/daytona_server.py ({arguments.files} files)")
    socketio = sum(figures[key]["socketio"] for key in ("construct", "create", "upload", "download", "runStreamed",
                                                        "exec"))
    print(f"  socket.io attempts (unserved) : {socketio} requests, not counted below")
    for label, key in (("create", "create"), (f"upload {arguments.files} files", "upload"),
                       (f"download {arguments.files} files", "download"),
                       ("run one command (streamed)", "runStreamed"), ("process.exec one command", "exec")):
        extra = f", {figures[key]['seconds']} s" if "seconds" in figures[key] else ""
        print(f"  {label:<30}: {figures[key]['total']} requests{extra}")
        for route, count in figures[key]["routes"].items():
            print(f"      {count:>5}  {route}")
    latency = figures["createToFirstOutputSeconds"]
    print(f"  create + exec to first output : median {latency['median']} s "
          f"(min {latency['min']}, max {latency['max']}, {latency['samples']} samples)")


if __name__ == "__main__":
    main()
