#!/usr/bin/env python3
"""Sync benchmarks for the local driver, each reported as a ratio against a baseline measured in the same run.

1. Initial sync of a ~50,000-file, ~500 MB tree (with an ignored node_modules) against `tar -c | tar -x` of the
   same non-ignored files.
2. Resync with nothing changed against `git status` on the same tree made a git repository.
3. Save-to-visible latency through `textDocument/didSave` (median and p99).
4. Peak RSS of the server during the initial sync.

With `--against OLD_BINARY`, the initial sync and an unchanged resync of this binary against another build (the
code before a change), alternating, so a change's cost is a ratio measured in one run; the secret check of contents
is off for this binary so both do the same work (the older build may not have it).

With `--scan-compare`, only the initial sync, with the secret check of file contents on (the default) against the
same sync with it off (`sync.scanContent = false`); `--text` makes the tree source-like text, which the check reads,
instead of random bytes, which it skips as binary.

The work directory defaults to a RAM file system (/dev/shm) when there is one, so both sides measure software, not
a shared disk's write-back: on this project's CI disk one `tar | tar` of 500 MB took anywhere from 2.7 to 24 s.
Pass `--work` on a disk to measure that too.

Usage: bench.py --binary target/release/sandlink [--work DIR] [--files N] [--megabytes M] [--rounds R]
                [--text] [--scan-compare | --against OLD_BINARY]
"""

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lsp_client import LspClient  # noqa: E402  (the shared benchmark client, one directory up)


def generate_tree(root, files, megabytes, seed=7, text=False):
    """Writes the tree and returns the list of non-ignored relative paths (those that should sync). With `text`, the
    contents are printable lines (source-like, so the secret check reads them) instead of random bytes (binary, which
    the check skips)."""
    rng = random.Random(seed)
    os.makedirs(root, exist_ok=True)
    synced = []
    # Mixed sizes: many small sources, some medium assets, a few large blobs; totals about `megabytes`.
    large = max(1, files // 500)
    medium = files // 10
    small = files - large - medium - 1
    budget = megabytes << 20
    small_size = int(budget * 0.18 / max(small, 1))
    medium_size = int(budget * 0.38 / max(medium, 1))
    large_size = int(budget * 0.44 / large)
    if text:
        alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _=(){};.,:\"'+-/"
        block = bytes(10 if index % 72 == 71 else alphabet[rng.randrange(len(alphabet))] for index in range(1 << 16))
    else:
        block = bytes(rng.getrandbits(8) for _ in range(1 << 16))

    def write(relative, size):
        path = os.path.join(root, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            offset = rng.randrange(len(block))
            remaining = size
            while remaining > 0:
                chunk = block[offset:offset + remaining] or block[:remaining]
                handle.write(chunk)
                remaining -= len(chunk)
                offset = 0
        synced.append(relative)

    write(".gitignore", 0)
    with open(os.path.join(root, ".gitignore"), "w") as handle:
        handle.write("node_modules/\n*.log\n")
    for index in range(small):
        write(f"src/pkg{index % 200}/mod{index % 13}/file{index}.txt", rng.randint(small_size // 2, small_size * 3 // 2))
    for index in range(medium):
        write(f"assets/group{index % 50}/asset{index}.bin", rng.randint(medium_size // 2, medium_size * 3 // 2))
    for index in range(large):
        write(f"data/blob{index}.bin", large_size)
    # The ignored folder: many small files that must cost nothing.
    for index in range(files // 5):
        path = os.path.join(root, f"node_modules/dep{index % 300}/lib/f{index}.js")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(block[: 512 + index % 1024])
    return synced


def uri(path):
    return "file://" + path


def timed(function):
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    parser.add_argument("--work", default=None, help="keep the generated tree here (reused when present)")
    parser.add_argument("--files", type=int, default=50_000)
    parser.add_argument("--megabytes", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--saves", type=int, default=200)
    parser.add_argument("--text", action="store_true", help="source-like text contents instead of random bytes")
    parser.add_argument("--scan-compare", action="store_true",
                        help="only the initial sync, with the secret check of contents on against off (sync.scanContent)")
    parser.add_argument("--against", default=None, metavar="OLD_BINARY",
                        help="only the initial sync and an unchanged resync, against another build of sandlink")
    options = parser.parse_args()
    in_memory = "/dev/shm" if os.path.isdir("/dev/shm") and shutil.disk_usage("/dev/shm").free > 4 * options.megabytes << 20 else None
    work = options.work or tempfile.mkdtemp(prefix="sandlink-bench-", dir=in_memory)
    print(f"working in {work}{' (memory)' if work.startswith('/dev/shm') else ''}", flush=True)
    tree = os.path.join(work, "tree")
    print(f"generating {options.files} files, ~{options.megabytes} MB in {tree} ...", flush=True)
    list_file = os.path.join(work, "files.txt")
    marker = os.path.join(work, f"generated-{options.files}-{options.megabytes}{'-text' if options.text else ''}")
    if os.path.exists(marker) and os.path.exists(list_file):
        with open(list_file) as handle:
            synced = handle.read().split()
        shutil.rmtree(os.path.join(tree, ".git"), ignore_errors=True)
    else:
        if os.path.exists(tree):
            shutil.rmtree(tree)
        synced = generate_tree(tree, options.files, options.megabytes, text=options.text)
        with open(list_file, "w") as handle:
            handle.write("\n".join(synced) + "\n")
        open(marker, "w").close()
    total = sum(os.path.getsize(os.path.join(tree, path)) for path in synced)
    print(f"{len(synced)} files to sync, {total / 1e6:.0f} MB; node_modules ignored", flush=True)

    if options.scan_compare or options.against:
        if options.against:
            compare_builds(options, work, tree)
        else:
            compare_scanning(options, work, tree)
        if not options.work:
            shutil.rmtree(work, ignore_errors=True)
        return 0

    # 1. Initial sync against tar | tar, alternating, fresh destinations, median of rounds.
    tar_times, sync_times = [], []
    state = os.path.join(work, "state")
    os.makedirs(state, exist_ok=True)
    peak_rss = None
    destination = os.path.join(work, "tar-destination")

    def settle():
        # Each run starts with clean caches of written data: without this the second run of a pair pays for
        # the write-back of the first one's 500 MB.
        shutil.rmtree(destination, ignore_errors=True)
        shutil.rmtree(os.path.join(state, "sessions"), ignore_errors=True)
        os.sync()
        time.sleep(1)

    def run_tar():
        settle()
        os.makedirs(destination)
        tar_times.append(timed(lambda: subprocess.run(
            f"tar -C {tree} -cf - -T {list_file} | tar -C {destination} -xf -", shell=True, check=True)))

    def run_sandlink():
        nonlocal peak_rss
        settle()
        server = LspClient(options.binary, state)
        params = {"driver": "local", "workspaceFolder": uri(tree), "settings": {"sync": {"watch": "off"}}}
        sync_times.append(timed(lambda: server.request("sandlink/connect", params)))
        peak_rss = max(peak_rss or 0, server.memory_kib("VmHWM") * 1024)
        server.close()

    for round_index in range(options.rounds):
        # Alternate which goes first so neither is favoured by what the machine was doing just before.
        for run in ((run_tar, run_sandlink) if round_index % 2 == 0 else (run_sandlink, run_tar)):
            run()
        print(f"  round {round_index + 1}: tar|tar {tar_times[-1]:.2f} s, sandlink {sync_times[-1]:.2f} s", flush=True)
    settle()
    tar_median, sync_median = statistics.median(tar_times), statistics.median(sync_times)

    # 2 and 3 on one live session with the watcher on, as an editor would have it.
    shutil.rmtree(os.path.join(state, "sessions"), ignore_errors=True)
    server = LspClient(options.binary, state)
    session = server.request("sandlink/connect", {"driver": "local", "workspaceFolder": uri(tree)})
    session_id, remote_root = session["sessionId"], session["remoteRoot"]
    time.sleep(2)  # let the watcher settle

    print("making the tree a git repository for the git status baseline ...", flush=True)
    subprocess.run(["git", "init", "-q"], cwd=tree, check=True)
    subprocess.run(["git", "add", "-A"], cwd=tree, check=True)
    subprocess.run(["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "tree"], cwd=tree, check=True)
    subprocess.run(["git", "status", "--porcelain"], cwd=tree, check=True, capture_output=True)
    time.sleep(2)
    git_times, resync_times = [], []
    for _ in range(max(options.rounds, 7)):
        git_times.append(timed(lambda: subprocess.run(["git", "status", "--porcelain"], cwd=tree, check=True, capture_output=True)))
        result = {}
        resync_times.append(timed(lambda: result.update(server.request("sandlink/sync", {"sessionId": session_id}))))
        assert result["uploaded"] == 0, result
    git_median, resync_median = statistics.median(git_times), statistics.median(resync_times)

    saved = os.path.join(tree, "src/pkg7/mod7/edited.txt")
    remote = os.path.join(remote_root, "src/pkg7/mod7/edited.txt")
    latencies = []
    for index in range(options.saves):
        content = f"version {index}\n".encode()
        started = time.perf_counter()
        with open(saved, "wb") as handle:
            handle.write(content)
        server.notify("textDocument/didSave", {"textDocument": {"uri": uri(saved)}})
        while True:
            try:
                with open(remote, "rb") as handle:
                    if handle.read() == content:
                        break
            except FileNotFoundError:
                pass
            if time.perf_counter() - started > 5:
                raise RuntimeError("a saved file did not reach the sandbox within 5 s")
            time.sleep(0.0002)
        latencies.append(time.perf_counter() - started)
        time.sleep(0.02)
    server.close()
    latencies.sort()
    median_ms = statistics.median(latencies) * 1000
    p99_ms = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000

    print()
    print(f"initial sync:  sandlink {sync_median:.2f} s vs tar|tar {tar_median:.2f} s  -> ratio {sync_median / tar_median:.2f}x (target <= 1.5x)")
    print(f"resync:        sandlink {resync_median * 1000:.0f} ms vs git status {git_median * 1000:.0f} ms  -> ratio {resync_median / git_median:.2f}x (target <= 2x)")
    print(f"save-to-sandbox through didSave: median {median_ms:.1f} ms, p99 {p99_ms:.1f} ms over {len(latencies)} saves (targets 30 / 100 ms)")
    print(f"server peak RSS during the initial sync: {peak_rss / (1 << 20):.0f} MB (target < 150 MB)")
    if not options.work:
        shutil.rmtree(work, ignore_errors=True)


def compare_scanning(options, work, tree):
    """The initial sync with the secret check of contents on (the default) against the same sync with it off,
    alternating which goes first, fresh sessions, median of rounds."""
    state = os.path.join(work, "state")
    os.makedirs(state, exist_ok=True)
    times = {True: [], False: []}

    def initial_sync(scan):
        shutil.rmtree(os.path.join(state, "sessions"), ignore_errors=True)
        os.sync()
        time.sleep(1)
        server = LspClient(options.binary, state)
        params = {"driver": "local", "workspaceFolder": uri(tree),
                  "settings": {"sync": {"watch": "off", "scanContent": scan}}}
        times[scan].append(timed(lambda: server.request("sandlink/connect", params)))
        server.close()

    for round_index in range(options.rounds):
        for scan in ((True, False) if round_index % 2 == 0 else (False, True)):
            initial_sync(scan)
        print(f"  round {round_index + 1}: scanning on {times[True][-1]:.2f} s, off {times[False][-1]:.2f} s", flush=True)
    shutil.rmtree(os.path.join(state, "sessions"), ignore_errors=True)
    on, off = statistics.median(times[True]), statistics.median(times[False])
    kind = "text" if options.text else "random-byte (binary)"
    print()
    print(f"initial sync of the {kind} tree: content scanning on {on:.2f} s vs off {off:.2f} s  -> ratio {on / off:.2f}x (target <= 1.2x)")


def compare_builds(options, work, tree):
    """The initial sync and an unchanged resync of `--binary` against `--against`, alternating which goes first,
    fresh sessions for the initial sync, one session each for the resyncs; medians of rounds."""
    state = os.path.join(work, "state")
    os.makedirs(state, exist_ok=True)
    builds = {"new": options.binary, "old": options.against}
    # The older build may refuse a setting it does not know, so only the new one is told to skip the content check.
    sync_settings = {"new": {"watch": "off", "scanContent": False}, "old": {"watch": "off"}}
    initial = {"new": [], "old": []}
    resync = {"new": [], "old": []}

    def connect(build):
        shutil.rmtree(os.path.join(state, "sessions"), ignore_errors=True)
        os.sync()
        time.sleep(1)
        server = LspClient(builds[build], state)
        params = {"driver": "local", "workspaceFolder": uri(tree), "settings": {"sync": sync_settings[build]}}
        session = {}
        initial[build].append(timed(lambda: session.update(server.request("sandlink/connect", params))))
        return server, session["sessionId"]

    def resync_rounds(build, server, session_id):
        for _ in range(max(options.rounds, 7)):
            result = {}
            resync[build].append(timed(lambda: result.update(server.request("sandlink/sync", {"sessionId": session_id}))))
            assert result["uploaded"] == 0, result

    for round_index in range(options.rounds):
        for build in (("new", "old") if round_index % 2 == 0 else ("old", "new")):
            server, session_id = connect(build)
            resync_rounds(build, server, session_id)
            server.close()
        print(f"  round {round_index + 1}: initial sync new {initial['new'][-1]:.2f} s, old {initial['old'][-1]:.2f} s; "
              f"resync new {statistics.median(resync['new'][-7:]) * 1000:.0f} ms, "
              f"old {statistics.median(resync['old'][-7:]) * 1000:.0f} ms", flush=True)
    shutil.rmtree(os.path.join(state, "sessions"), ignore_errors=True)
    new_initial, old_initial = statistics.median(initial["new"]), statistics.median(initial["old"])
    new_resync, old_resync = statistics.median(resync["new"]), statistics.median(resync["old"])
    print()
    print(f"initial sync: new {new_initial:.2f} s vs old {old_initial:.2f} s  -> ratio {new_initial / old_initial:.2f}x (target <= 1.1x)")
    print(f"resync:       new {new_resync * 1000:.0f} ms vs old {old_resync * 1000:.0f} ms  -> ratio {new_resync / old_resync:.2f}x (target <= 1.1x)")


if __name__ == "__main__":
    sys.exit(main())
