"""Persistence benchmarks: re-attaching a kept session after a server restart, against a fresh connect and a raw
tar pipe of the same workspace measured in the same run; and listing kept sessions, against an empty listing.

Usage: python3 bench/persistence.py [path/to/sandlink]   (defaults to target/release/sandlink)
"""

import json
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
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
FILES = int(os.environ.get("BENCH_FILES", "2000"))
KEPT = int(os.environ.get("BENCH_KEPT", "20"))


def make_workspace():
    workspace = pathlib.Path(tempfile.mkdtemp(prefix="sandlink-bench-ws-"))
    for index in range(FILES):
        directory = workspace / f"dir{index % 40}"
        directory.mkdir(exist_ok=True)
        (directory / f"file{index}.txt").write_bytes(os.urandom(4096))
    return workspace


def tar_pipe_seconds(workspace):
    target = tempfile.mkdtemp(prefix="sandlink-bench-tar-")
    started = time.perf_counter()
    subprocess.run(f"tar -C '{workspace}' -cf - . | tar -C '{target}' -xf -", shell=True, check=True)
    return time.perf_counter() - started


def timed(function):
    started = time.perf_counter()
    value = function()
    return time.perf_counter() - started, value


def main():
    # Nothing from the user's own profiles or limits: a private config directory, and room for every kept session.
    os.environ["SANDLINK_CONFIG_DIR"] = tempfile.mkdtemp(prefix="sandlink-bench-config-")
    os.environ["SANDLINK_MAX_SANDBOXES"] = str(KEPT + ROUNDS + 10)
    workspace = make_workspace()
    uri = workspace.as_uri()
    fresh, reattach, attach_only, baseline = [], [], [], []
    for _ in range(ROUNDS):
        state = tempfile.mkdtemp(prefix="sandlink-bench-state-")
        baseline.append(tar_pipe_seconds(workspace))
        client = LspClient(BINARY, state)
        seconds, session = timed(lambda: client.request("sandlink/connect", {"driver": "local", "workspaceFolder": uri}))
        fresh.append(seconds)
        client.close()  # shutdown keeps the session (keepOnExit defaults to true)
        client = LspClient(BINARY, state)
        seconds, again = timed(lambda: client.request("sandlink/connect", {"reuse": session["sessionId"]}))
        assert again["remoteRoot"] == session["remoteRoot"], "re-attached to the same root"
        reattach.append(seconds)
        client.close()
        client = LspClient(BINARY, state)
        seconds, _ = timed(lambda: client.request("sandlink/connect", {"reuse": session["sessionId"], "sync": False}))
        attach_only.append(seconds)
        client.close()

    state = tempfile.mkdtemp(prefix="sandlink-bench-state-")
    client = LspClient(BINARY, state)
    empty = [timed(lambda: client.request("sandlink/sessions", {}))[0] for _ in range(20)]
    for _ in range(KEPT):
        client.request("sandlink/connect", {"driver": "local", "sync": False})
    client.close()
    client = LspClient(BINARY, state)
    listings = []
    for _ in range(20):
        seconds, listed = timed(lambda: client.request("sandlink/sessions", {}))
        assert len(listed["sessions"]) == KEPT
        listings.append(seconds)
    client.close()

    results = {
        "workspace": f"{FILES} files of 4 KiB",
        "tar_pipe_ms_median": statistics.median(baseline) * 1000,
        "fresh_connect_ms_median": statistics.median(fresh) * 1000,
        "fresh_connect_vs_tar_pipe": statistics.median(fresh) / statistics.median(baseline),
        "reattach_after_restart_ms_median": statistics.median(reattach) * 1000,
        "reattach_vs_fresh_connect": statistics.median(reattach) / statistics.median(fresh),
        "reattach_vs_tar_pipe": statistics.median(reattach) / statistics.median(baseline),
        "reattach_without_resync_ms_median": statistics.median(attach_only) * 1000,
        "reattach_without_resync_vs_tar_pipe": statistics.median(attach_only) / statistics.median(baseline),
        "sessions_listing_with_kept_ms_median": statistics.median(listings) * 1000,
        "sessions_listing_kept_vs_empty": statistics.median(listings) / statistics.median(empty),
        "kept_sessions_listed": KEPT,
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
