"""Foundation benchmarks: run overhead, 1 GiB output, first-output latency, start-up and idle memory.

Each figure is reported next to a baseline measured in the same run, as a ratio or a difference.
Usage: python3 bench/foundation.py [path/to/sandlink]   (defaults to target/release/sandlink)
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
RUNS = int(os.environ.get("BENCH_RUNS", "100"))
GIBIBYTE = 1 << 30


def connect(client, workspace):
    return client.request("sandlink/connect", {"driver": "local", "workspaceFolder": pathlib.Path(workspace).as_uri()})


def run_and_wait(client, session_id, command):
    sent = time.perf_counter()
    run_id = client.request("sandlink/run", {"sessionId": session_id, "command": command})["runId"]
    arrived, exit_params = client.wait_notification("sandlink/exit", lambda params: params["runId"] == run_id)
    return arrived - sent, exit_params, run_id


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def main():
    state = tempfile.mkdtemp(prefix="sandlink-bench-state-")
    workspace = tempfile.mkdtemp(prefix="sandlink-bench-ws-")
    results = {}

    # Start-up: process start to the initialize result, and resident memory when idle.
    startups = []
    for _ in range(10):
        client = LspClient(BINARY, state)
        startups.append(client.initialized_at - client.started_at)
        client.close()
    client = LspClient(BINARY, state, store_output=False)
    time.sleep(0.2)
    results["startup_to_initialize_ms_median"] = statistics.median(startups) * 1000
    results["idle_rss_mib"] = client.memory_kib("VmRSS") / 1024

    session = connect(client, workspace)
    session_id = session["sessionId"]
    detail = client.request("sandlink/drivers", {})["drivers"][0]["detail"]
    results["local_isolation"] = detail

    # Run overhead: sandlink/run of `true` to sandlink/exit, against spawning `sh -c true` directly.
    for _ in range(5):
        run_and_wait(client, session_id, "true")
    through_server = [run_and_wait(client, session_id, "true")[0] for _ in range(RUNS)]
    direct = []
    for _ in range(RUNS):
        started = time.perf_counter()
        subprocess.run(["sh", "-c", "true"], check=True)
        direct.append(time.perf_counter() - started)
    results["run_true_median_ms"] = statistics.median(through_server) * 1000
    results["spawn_sh_true_median_ms"] = statistics.median(direct) * 1000
    results["run_overhead_ms"] = results["run_true_median_ms"] - results["spawn_sh_true_median_ms"]

    # First output: the child's first write (its own clock) to the client holding sandlink/output.
    latencies = []
    for _ in range(30):
        run_id = client.request(
            "sandlink/run",
            {"sessionId": session_id, "command": "python3 -c 'import time; print(time.time_ns(), flush=True)'"},
        )["runId"]
        client.store_output = True
        arrived_wall = None
        _, params = client.wait_notification("sandlink/output", lambda params: params["runId"] == run_id)
        arrived_wall = time.time_ns()
        written_ns = int(params["text"].split()[0])
        latencies.append((arrived_wall - written_ns) / 1e6)
        client.wait_notification("sandlink/exit", lambda params: params["runId"] == run_id)
    client.store_output = False
    results["first_output_ms_median"] = statistics.median(latencies)
    results["first_output_ms_p99"] = percentile(latencies, 0.99)

    # 1 GiB of output: the command's own wall time (it times itself) through the server, against the same
    # command writing to /dev/null, both measured with the same clock in the same run.
    timed = "s=$(date +%s%N); head -c {size} /dev/zero{redirect}; e=$(date +%s%N); echo wall=$((e-s)) >&2"
    baselines = []
    for _ in range(3):
        completed = subprocess.run(
            ["sh", "-c", timed.format(size=GIBIBYTE, redirect=" > /dev/null")], check=True, capture_output=True, text=True
        )
        baselines.append(int(completed.stderr.strip().split("=")[1]) / 1e9)
    # A second baseline: the same bytes through a plain pipe, the least any capture of the output can cost.
    piped = []
    for _ in range(3):
        completed = subprocess.run(
            ["sh", "-c", "s=$(date +%s%N); head -c {size} /dev/zero | cat > /dev/null; e=$(date +%s%N); echo wall=$((e-s)) >&2".format(size=GIBIBYTE)],
            check=True, capture_output=True, text=True,
        )
        piped.append(int(completed.stderr.strip().split("=")[1]) / 1e9)
    # The command writes its own time to a file in the session's root: the run's log keeps only its first 256 MiB.
    throughs = []
    wall_file = pathlib.Path(session["remoteRoot"]) / ".bench-wall"
    for _ in range(3):
        command = timed.format(size=GIBIBYTE, redirect="").replace(">&2", "> .bench-wall")
        _, exit_params, run_id = run_and_wait(client, session_id, command)
        throughs.append(int(wall_file.read_text().rsplit("wall=", 1)[1].strip()) / 1e9)
    results["gib_to_devnull_s"] = statistics.median(baselines)
    results["gib_through_server_s"] = statistics.median(throughs)
    results["gib_wall_ratio"] = results["gib_through_server_s"] / results["gib_to_devnull_s"]
    results["gib_through_plain_pipe_s"] = statistics.median(piped)
    results["gib_wall_ratio_vs_plain_pipe"] = results["gib_through_server_s"] / results["gib_through_plain_pipe_s"]
    results["gib_run_duration_s"] = exit_params["durationMs"] / 1000
    results["server_peak_rss_mib"] = client.memory_kib("VmHWM") / 1024
    results["gib_live_view_text_mib"] = client.output_bytes.get(run_id, 0) / (1 << 20)

    client.request("sandlink/disconnect", {"sessionId": session_id})
    client.close()
    print(json.dumps(results, indent=2))
    checks = {
        "run overhead <= 5 ms": results["run_overhead_ms"] <= 5,
        "1 GiB wall ratio <= 1.3": results["gib_wall_ratio"] <= 1.3,
        "server peak RSS < 64 MiB": results["server_peak_rss_mib"] < 64,
        "first output median < 50 ms": results["first_output_ms_median"] < 50,
    }
    for name, ok in checks.items():
        print(f"{'meets' if ok else 'MISSES'}: {name}")


if __name__ == "__main__":
    main()
