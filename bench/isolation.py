"""Isolation benchmark: run overhead of `true` through the LSP on each local isolation mechanism.

For each mechanism (bubblewrap, landlock, none) the median time from `sandlink/run` to `sandlink/exit` of `true`,
next to spawning `sh -c true` directly in the same run, interleaved so both see the same machine. The goal (issue
11) is an overhead within +2 ms of the direct spawn for every mechanism.
Usage: python3 bench/isolation.py [path/to/sandlink]   (defaults to target/release/sandlink)
"""

import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from lsp_client import LspClient  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
BINARY = sys.argv[1] if len(sys.argv) > 1 else str(REPO / "target" / "release" / "sandlink")
RUNS = int(os.environ.get("BENCH_RUNS", "200"))
MECHANISMS = ["bubblewrap", "landlock", "none"]


def run_and_wait(client, session_id):
    sent = time.perf_counter()
    run_id = client.request("sandlink/run", {"sessionId": session_id, "command": "true"})["runId"]
    arrived, _ = client.wait_notification("sandlink/exit", lambda params: params["runId"] == run_id)
    return arrived - sent


def spawn_directly():
    started = time.perf_counter()
    subprocess.run(["sh", "-c", "true"], check=True)
    return time.perf_counter() - started


def main():
    state = tempfile.mkdtemp(prefix="sandlink-bench-state-")
    workspace = tempfile.mkdtemp(prefix="sandlink-bench-ws-")
    client = LspClient(BINARY, state, store_output=False)
    print(f"{'mechanism':<12} {'run true (ms)':>14} {'sh -c true (ms)':>16} {'overhead (ms)':>14}")
    for mechanism in MECHANISMS:
        session = client.request(
            "sandlink/connect",
            {
                "driver": "local",
                "settings": {"isolation": mechanism},
                "workspaceFolder": pathlib.Path(workspace).as_uri(),
            },
        )
        session_id = session["sessionId"]
        for _ in range(10):
            run_and_wait(client, session_id)
        through_server, direct = [], []
        for _ in range(RUNS):
            through_server.append(run_and_wait(client, session_id))
            direct.append(spawn_directly())
        served = statistics.median(through_server) * 1000
        spawned = statistics.median(direct) * 1000
        print(f"{mechanism:<12} {served:>14.2f} {spawned:>16.2f} {served - spawned:>+14.2f}")
        client.request("sandlink/disconnect", {"sessionId": session_id})
    client.close()


if __name__ == "__main__":
    main()
