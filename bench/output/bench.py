"""Output benchmark: 1 GiB of output through sandlink against the same command piped to `cat > /dev/null`.

Each figure is paired with its baseline in the same run (A B A B ...), and the median of the pairwise ratios is
reported, so a machine whose speed drifts still gives a fair ratio. The goal (issue 17, item 7) is a ratio within
1.5 for every case, with the server's memory bounded.

Cases:
- lsp/<mechanism>: `sandlink/run` of the command to `sandlink/exit` on the local driver, per isolation mechanism,
  against `sh -c 'COMMAND | cat > /dev/null'`;
- cli/devnull and cli/file: the whole `sandlink run --driver local -- COMMAND` process with its output sent to
  /dev/null or to a file (connect and disconnect included), against the same baseline;
- docker (when DOCKER_HOST or the default socket answers and the sandlink-test:busybox image exists):
  `sandlink/run` in a docker session against `docker exec CONTAINER COMMAND > /dev/null` on the same container.

Each case reports the ratio of the whole (request or process) and of the command's own wall time (it times
itself). It also checks the run's log: capped at `[runs] logCap` (256 MiB by default) with one marker line naming the
bytes dropped, and reports the server's peak RSS (VmHWM) after all the LSP runs.

Usage: python3 bench/output/bench.py [path/to/sandlink]   (defaults to target/release/sandlink)
       BENCH_RUNS=N pairs per case (default 5); BENCH_SIZE bytes (default 1 GiB); BENCH_CASES=lsp,cli,docker
"""

import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from lsp_client import LspClient  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]
BINARY = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else str(REPO / "target" / "release" / "sandlink"))
RUNS = int(os.environ.get("BENCH_RUNS", "5"))
SIZE = int(os.environ.get("BENCH_SIZE", str(1 << 30)))
CASES = os.environ.get("BENCH_CASES", "lsp,cli,docker").split(",")
COMMAND = f"head -c {SIZE} /dev/zero"
DOCKER_IMAGE = "sandlink-test:busybox"
# The command also times itself (nanoseconds, on its own clock) and says so where the output is not: this is the
# figure the goal is about (the command's own wall time), next to the whole request or process seen from outside.
SELF_TIMED = "s=$(date +%s%N); {command}; e=$(date +%s%N); echo $((e-s)) > {wall_file}"


def timed(function):
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


BASELINE_WALL = os.path.join(tempfile.mkdtemp(prefix="sandlink-bench-wall-"), "wall")


def baseline():
    """The command piped to `cat > /dev/null`; returns its own wall time (the pipeline's)."""
    command = SELF_TIMED.format(command=f"{COMMAND} | cat > /dev/null", wall_file=BASELINE_WALL)
    subprocess.run(["sh", "-c", command], check=True)
    return int(pathlib.Path(BASELINE_WALL).read_text()) / 1e9


def paired(name, measured, against, results):
    """Alternates the two, one warm-up each, and records the medians and the median pairwise ratios: of the whole
    (request or process, seen from outside) and of the command's own wall time when both sides report one."""
    measured()
    against()
    ratios, own_ratios, times, bases = [], [], [], []
    for _ in range(RUNS):
        started = time.perf_counter()
        own = measured()
        took = time.perf_counter() - started
        started = time.perf_counter()
        base_own = against()
        base = time.perf_counter() - started
        times.append(took)
        bases.append(base)
        ratios.append(took / base)
        if own is not None and base_own is not None:
            own_ratios.append(own / base_own)
    own_ratio = statistics.median(own_ratios) if own_ratios else None
    results.append((name, statistics.median(times), statistics.median(bases), statistics.median(ratios), max(ratios), own_ratio))


def run_to_exit(client, session_id, command):
    run_id = client.request("sandlink/run", {"sessionId": session_id, "command": command})["runId"]
    _, exit_params = client.wait_notification("sandlink/exit", lambda params: params["runId"] == run_id)
    if exit_params.get("exitCode") != 0:
        raise RuntimeError(f"the run failed: {exit_params}")
    return exit_params


def check_log(exit_params, cap):
    """The log holds the first `cap` bytes and one marker naming the rest; a run under the cap is whole."""
    size = os.path.getsize(exit_params["logPath"])
    if SIZE <= cap:
        return f"log {size} bytes (whole: {size == SIZE})"
    with open(exit_params["logPath"], "rb") as log:
        log.seek(cap)
        marker = log.read(1024).decode(errors="replace")
    if not marker.startswith("\n[sandlink: "):
        return f"log {size} bytes, NOT capped at {cap}"
    return f"log {size} bytes = cap {cap} + marker {marker.strip()!r}"


def lsp_cases(results, notes):
    state = tempfile.mkdtemp(prefix="sandlink-bench-state-")
    workspace = tempfile.mkdtemp(prefix="sandlink-bench-ws-")
    client = LspClient(BINARY, state, store_output=False)
    try:
        for mechanism in ["bubblewrap", "landlock"]:
            session = client.request(
                "sandlink/connect",
                {"driver": "local", "settings": {"isolation": mechanism}, "workspaceFolder": pathlib.Path(workspace).as_uri()},
            )
            session_id = session["sessionId"]
            wall_file = ".bench-wall"
            command = SELF_TIMED.format(command=COMMAND, wall_file=wall_file)
            last = {}

            def through_server():
                last["exit"] = run_to_exit(client, session_id, command)
                return int((pathlib.Path(session["remoteRoot"]) / wall_file).read_text()) / 1e9

            paired(f"lsp/{mechanism}", through_server, baseline, results)
            notes.append(f"lsp/{mechanism}: {check_log(last['exit'], 256 << 20)}")
            client.request("sandlink/disconnect", {"sessionId": session_id})
        notes.append(f"server peak RSS (VmHWM) after the LSP runs: {client.memory_kib('VmHWM') / 1024:.1f} MiB")
    finally:
        client.close()
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(workspace, ignore_errors=True)


def cli_cases(results, notes):
    state = tempfile.mkdtemp(prefix="sandlink-bench-state-")
    workspace = tempfile.mkdtemp(prefix="sandlink-bench-ws-")
    env = dict(os.environ, SANDLINK_STATE_DIR=state)
    target = os.path.join(state, "output")
    peak = {"rss_kib": 0}

    def cli(destination, command=COMMAND):
        # The sandbox goes away with the process, so the command's own time comes back on stderr.
        self_timed = SELF_TIMED.format(command=command, wall_file="/dev/stderr")

        def go():
            with open(destination, "wb") as out:
                completed = subprocess.run(
                    ["/usr/bin/time", "-f", "%M", BINARY, "run", "--driver", "local", "--workspace", workspace, "--", "sh", "-c", self_timed],
                    stdout=out, stderr=subprocess.PIPE, env=env, check=True,
                )
            own, rss = completed.stderr.decode().strip().splitlines()[-2:]
            peak["rss_kib"] = max(peak["rss_kib"], int(rss))
            return int(own) / 1e9
        return go

    try:
        notes.append(f"cli: `true` alone (connect, run, disconnect) takes {statistics.median([timed(cli('/dev/null', 'true')) for _ in range(5)]) * 1000:.0f} ms")
        paired("cli/devnull", cli("/dev/null"), baseline, results)
        paired("cli/file", cli(target), baseline, results)
        notes.append(f"cli/file: the file holds {os.path.getsize(target)} bytes (whole: {os.path.getsize(target) == SIZE})")
        notes.append(f"cli peak RSS: {peak['rss_kib'] / 1024:.1f} MiB")
    finally:
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(workspace, ignore_errors=True)


def docker_cases(results, notes):
    if shutil.which("docker") is None or subprocess.run(
        ["docker", "image", "inspect", DOCKER_IMAGE], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    ).returncode != 0:
        notes.append(f"docker: skipped (no docker, or no {DOCKER_IMAGE} image: run tests/setup/docker.sh)")
        return
    state = tempfile.mkdtemp(prefix="sandlink-bench-state-")
    workspace = tempfile.mkdtemp(prefix="sandlink-bench-ws-")
    client = LspClient(BINARY, state, store_output=False)
    try:
        session = client.request(
            "sandlink/connect",
            {"driver": "docker", "settings": {"image": DOCKER_IMAGE}, "workspaceFolder": pathlib.Path(workspace).as_uri(), "sync": False},
        )
        session_id = session["sessionId"]
        container = f"sandlink-{session_id}"

        def docker_exec():
            subprocess.run(["docker", "exec", container, "sh", "-c", COMMAND], stdout=subprocess.DEVNULL, check=True)

        paired("docker", lambda: run_to_exit(client, session_id, COMMAND) and None, docker_exec, results)
        notes.append(f"server peak RSS (VmHWM) after the docker runs: {client.memory_kib('VmHWM') / 1024:.1f} MiB")
        client.request("sandlink/disconnect", {"sessionId": session_id})
    finally:
        client.close()
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(workspace, ignore_errors=True)


def main():
    results, notes = [], []
    if "lsp" in CASES:
        lsp_cases(results, notes)
    if "cli" in CASES:
        cli_cases(results, notes)
    if "docker" in CASES:
        docker_cases(results, notes)
    print(f"{SIZE} bytes of output, {RUNS} pairs per case; baseline: `{COMMAND} | cat > /dev/null` (docker: docker exec > /dev/null)")
    print("whole: the request to sandlink/exit, or the sandlink process, against the baseline process; own: the")
    print("command's own wall time through sandlink against the same pipeline's own wall time (the goal's figure)")
    print(f"{'case':<16} {'sandlink (s)':>13} {'baseline (s)':>13} {'whole ratio':>12} {'whole max':>10} {'own ratio':>10}")
    for name, took, base, ratio, worst, own in results:
        own_text = f"{own:>10.2f}" if own is not None else f"{'-':>10}"
        print(f"{name:<16} {took:>13.3f} {base:>13.3f} {ratio:>12.2f} {worst:>10.2f} {own_text}")
    for note in notes:
        print(note)
    for name, _, _, ratio, _, own in results:
        figure = own if own is not None else ratio
        print(f"{'meets' if figure <= 1.5 else 'MISSES'}: {name} {'own' if own is not None else 'whole'} ratio <= 1.5")


if __name__ == "__main__":
    main()
