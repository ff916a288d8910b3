#!/usr/bin/env python3
"""sandlink's sync and start-up next to the tools a user could use instead, all measured in one run (issue #20).

Every sandlink figure is printed beside its peers measured in the same run, medians of at least three rounds, with
the order of the contenders rotated each round so none is favoured by what the machine did just before:

- initial sync of a seeded 20,000-file, ~166 MB tree (plus an ignored 2,000-file node_modules) through
  `sandlink/connect` (local driver) vs `tar c | tar x`, `rsync -a` and `unison`;
- the same through the `sandlink sync` CLI, whole process, paired run by run with `tar c | tar x` (wall and CPU);
- an unchanged resync, `up`, vs `rsync -a` finding nothing to do and `git status`;
- an unchanged two-way sync, `both`, vs `unison` finding nothing to do;
- save to visible in the sandbox through `didSave` (p50, p99) on local, and on docker when a daemon is reachable;
- server start to the `initialize` result;
- `sandlink run -- true` on a 50-file workspace, whole process, vs `bwrap` with sandlink's namespaces running `true`;
- server peak RSS during the initial sync of a 50,000-file tree;
- docker: run round trip of `true` through the LSP vs `docker exec CONTAINER true`.

The sync rows run in memory (/dev/shm, software only) and on disk (/var/tmp, with its write-back). The trees are
generated once per place and reused by later runs (a marker file records the generator's parameters), so the same
trees measure the code before and after a change. All peers copy the same files: `.git` and `node_modules` are
excluded from rsync and unison as sandlink ignores them, and tar reads the list of synced files. sandlink leaves the
removal of a big session copy to a detached remover after the command ends (drivers/local/trash.rs); the next
contender starts only once that remover is done, so no one pays for it, and no figure counts it either.

Usage: bench.py --binary PATH [--rounds R] [--places shm,disk] [--saves N] [--no-docker] [--scale F]
"""

import argparse
import json
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

PLACES = {"shm": "/dev/shm/sandlink-peers", "disk": "/var/tmp/sandlink-peers"}
SYNCED_FILES, MEGABYTES, IGNORED_FILES = 20_000, 166, 2_000
BIG_FILES, BIG_MEGABYTES = 50_000, 200
DOCKER_IMAGE = "sandlink-test:busybox"
# sandlink's own bubblewrap namespaces and flags (server/src/drivers/local/bubblewrap.rs PROBE_ARGUMENTS).
BWRAP = ["bwrap", "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
         "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--ro-bind", "/", "/", "--dev", "/dev",
         "--proc", "/proc", "--"]
PEER_EXCLUDES = ["node_modules", ".git"]


def generate_tree(root, files, megabytes, ignored, seed):
    """Writes a seeded tree: many small sources, some medium assets, a few large blobs (about `megabytes` in all,
    `files` synced files counting .gitignore) and `ignored` small files under the ignored node_modules. Returns the
    synced relative paths."""
    rng = random.Random(seed)
    os.makedirs(root)
    large = max(1, files // 500)
    medium = files // 10
    small = files - large - medium - 1
    budget = megabytes << 20
    small_size = int(budget * 0.18 / small)
    medium_size = int(budget * 0.38 / medium)
    large_size = int(budget * 0.44 / large)
    block = rng.randbytes(1 << 16)
    synced = []

    def write(relative, size):
        path = os.path.join(root, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        offset = rng.randrange(len(block))
        with open(path, "wb") as handle:
            while size > 0:
                chunk = block[offset:offset + size] or block[:size]
                handle.write(chunk)
                size -= len(chunk)
                offset = 0
        return relative

    with open(os.path.join(root, ".gitignore"), "w") as handle:
        handle.write("node_modules/\n*.log\n")
    synced.append(".gitignore")
    for index in range(small):
        synced.append(write(f"src/pkg{index % 200}/mod{index % 13}/file{index}.txt",
                            rng.randint(small_size // 2, small_size * 3 // 2)))
    for index in range(medium):
        synced.append(write(f"assets/group{index % 50}/asset{index}.bin", rng.randint(medium_size // 2, medium_size * 3 // 2)))
    for index in range(large):
        synced.append(write(f"data/blob{index}.bin", large_size))
    for index in range(ignored):
        write(f"node_modules/dep{index % 300}/lib/f{index}.js", 512 + index % 1024)
    return synced


def prepare_tree(place_dir, name, files, megabytes, ignored, seed, git):
    """The tree `name` under `place_dir`, generated unless a run with the same parameters left it there."""
    tree = os.path.join(place_dir, name)
    list_file = os.path.join(place_dir, f"{name}.files")
    marker = os.path.join(place_dir, f"{name}.generated-{files}-{megabytes}-{ignored}-{seed}{'-git' if git else ''}")
    if not (os.path.exists(marker) and os.path.exists(list_file) and os.path.isdir(tree)):
        shutil.rmtree(tree, ignore_errors=True)
        for stale in os.listdir(place_dir):
            if stale.startswith(f"{name}.generated-"):
                os.remove(os.path.join(place_dir, stale))
        started = time.perf_counter()
        log(f"generating {tree}: {files} files, ~{megabytes} MB, {ignored} ignored ...")
        synced = generate_tree(tree, files, megabytes, ignored, seed)
        if git:
            # git status needs a repository of the tree; committed once, as a developer's checkout would be.
            git_env = dict(os.environ, GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@b", GIT_COMMITTER_NAME="b",
                           GIT_COMMITTER_EMAIL="b@b", GIT_AUTHOR_DATE="2026-01-01T00:00:00Z",
                           GIT_COMMITTER_DATE="2026-01-01T00:00:00Z")
            subprocess.run(["git", "init", "-q"], cwd=tree, check=True)
            subprocess.run(["git", "add", "-A"], cwd=tree, check=True, env=git_env)
            subprocess.run(["git", "commit", "-qm", "tree"], cwd=tree, check=True, env=git_env)
        with open(list_file, "w") as handle:
            handle.write("\n".join(synced) + "\n")
        open(marker, "w").close()
        log(f"  generated in {time.perf_counter() - started:.1f} s")
    with open(list_file) as handle:
        synced = handle.read().split()
    return tree, list_file, len(synced)


def wait_for_trash(state, limit=60.0):
    """Waits until sandlink's detached remover has emptied the trash of `state` (the directories of ended local
    sessions, removed after the command that ended them exited), so the next contender does not share the machine
    with it; the wait is not part of any figure."""
    trash = os.path.join(state, "trash")
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if not [name for name in os.listdir(trash) if name != ".remover.lock"]:
                return
        except FileNotFoundError:
            return
        time.sleep(0.01)
    log(f"  the trash of {state} was still not empty after {limit:.0f} s")


def log(message):
    print(message, file=sys.stderr, flush=True)


def uri(path):
    return "file://" + path


def timed(function):
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def run_process(command, **kwargs):
    """Runs `command` to its end; returns (wall seconds, CPU seconds of it and every descendant it waited for)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kwargs)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    stderr = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    if process.returncode != 0:
        raise RuntimeError(f"{command} exited {process.returncode}: {stderr[-2000:]}")
    return elapsed, usage.ru_utime + usage.ru_stime


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def unison_command(source, destination):
    command = ["unison", source, destination, "-batch", "-auto", "-silent", "-ui", "text"]
    for name in PEER_EXCLUDES:
        command += ["-ignore", f"Name {name}"]
    return command


def rsync_command(source, destination):
    command = ["rsync", "-a"]
    for name in PEER_EXCLUDES:
        command.append(f"--exclude=/{name}/")
    return command + [source + "/", destination + "/"]


class Place:
    """One file system the sync rows run on: its tree, its scratch destinations and sandlink's state there."""

    def __init__(self, name, directory, options):
        self.name = name
        self.directory = directory
        self.options = options
        os.makedirs(directory, exist_ok=True)
        files = int(SYNCED_FILES * options.scale)
        self.tree, self.list_file, self.files = prepare_tree(directory, f"tree{files}", files,
                                                             max(1, int(MEGABYTES * options.scale)),
                                                             int(IGNORED_FILES * options.scale), seed=20, git=True)
        self.scratch = tempfile.mkdtemp(prefix="run-", dir=directory)
        self.state = os.path.join(self.scratch, "state")
        os.makedirs(self.state)

    def clear(self, *names):
        wait_for_trash(self.state)
        for name in names:
            shutil.rmtree(os.path.join(self.scratch, name), ignore_errors=True)
        shutil.rmtree(os.path.join(self.state, "sessions"), ignore_errors=True)

    def settle(self, *names):
        """Removes earlier copies and writes back dirty data, so no contender pays for the one before it."""
        self.clear(*names)
        os.sync()
        time.sleep(0.3)

    def destination(self, name):
        path = os.path.join(self.scratch, name)
        os.makedirs(path)
        return path

    def server(self):
        return LspClient(self.options.binary, self.state)

    def sandlink_env(self):
        return dict(os.environ, SANDLINK_STATE_DIR=self.state)


def initial_sync(place, rounds, results):
    """sandlink/connect's initial sync vs tar | tar, rsync -a and unison, each into a fresh destination."""
    times = {"sandlink": [], "tar": [], "rsync": [], "unison": []}
    peak = [0]

    def sandlink():
        place.settle("tar", "rsync", "unison")
        server = place.server()
        params = {"driver": "local", "workspaceFolder": uri(place.tree), "settings": {"sync": {"watch": "off"}}}
        times["sandlink"].append(timed(lambda: server.request("sandlink/connect", params)))
        peak[0] = max(peak[0], server.memory_kib("VmHWM"))
        server.close()

    def tar():
        place.settle("tar", "rsync", "unison")
        destination = place.destination("tar")
        times["tar"].append(run_process(
            ["sh", "-c", f"tar -C '{place.tree}' -cf - -T '{place.list_file}' | tar -C '{destination}' -xf -"])[0])

    def rsync():
        place.settle("tar", "rsync", "unison")
        destination = place.destination("rsync")
        times["rsync"].append(run_process(rsync_command(place.tree, destination))[0])

    def unison():
        place.settle("tar", "rsync", "unison", "unison-home")
        destination = place.destination("unison")
        env = dict(os.environ, UNISON=place.destination("unison-home"))
        times["unison"].append(run_process(unison_command(place.tree, destination), env=env)[0])

    contenders = [sandlink, tar, rsync, unison]
    for round_index in range(rounds):
        order = contenders[round_index % 4:] + contenders[:round_index % 4]
        for contender in order:
            contender()
        log(f"  [{place.name}] initial sync round {round_index + 1}: "
            + ", ".join(f"{name} {values[-1]:.2f} s" for name, values in times.items()))
    place.settle("tar", "rsync", "unison", "unison-home")
    medians = {name: statistics.median(values) for name, values in times.items()}
    results.append(row(f"initial sync through `sandlink/connect`, {place.files} files", place.name,
                       seconds(medians["sandlink"]),
                       [("tar c | tar x", medians["tar"]), ("rsync -a", medians["rsync"]), ("unison", medians["unison"])],
                       medians["sandlink"], goal=("<=", 1.0, "x tar"), goal_value=medians["sandlink"] / medians["tar"]))
    results.append(row("server peak RSS, that initial sync", place.name, f"{peak[0] / 1024:.0f} MB", [], None))


def cli_sync(place, rounds, results):
    """`sandlink sync` as a whole process against `tar c | tar x`, paired run by run: wall and CPU ratios."""
    wall_ratios, cpu_ratios, ours, theirs = [], [], [], []
    for round_index in range(rounds):
        pair = {}

        def sandlink():
            place.settle("tar")
            pair["sandlink"] = run_process([place.options.binary, "sync", "-d", "local", "-w", place.tree],
                                           env=place.sandlink_env(), cwd=place.tree)

        def tar():
            place.settle("tar")
            destination = place.destination("tar")
            pair["tar"] = run_process(
                ["sh", "-c", f"tar -C '{place.tree}' -cf - -T '{place.list_file}' | tar -C '{destination}' -xf -"])

        for contender in ((sandlink, tar) if round_index % 2 == 0 else (tar, sandlink)):
            contender()
        wall_ratios.append(pair["sandlink"][0] / pair["tar"][0])
        cpu_ratios.append(pair["sandlink"][1] / max(pair["tar"][1], 1e-6))
        ours.append(pair["sandlink"])
        theirs.append(pair["tar"])
        log(f"  [{place.name}] sandlink sync round {round_index + 1}: {pair['sandlink'][0]:.2f} s (cpu "
            f"{pair['sandlink'][1]:.2f} s) vs tar|tar {pair['tar'][0]:.2f} s (cpu {pair['tar'][1]:.2f} s)")
    place.settle("tar")
    wall, cpu = statistics.median(wall_ratios), statistics.median(cpu_ratios)
    results.append(row("initial sync, `sandlink sync` whole process, paired", place.name,
                       f"{seconds(statistics.median(t for t, _ in ours))} (cpu {seconds(statistics.median(c for _, c in ours))})",
                       [("tar c | tar x", statistics.median(t for t, _ in theirs))],
                       None, ratio_text=f"{wall:.2f}x (cpu {cpu:.2f}x)", goal=("<=", 1.0, "x tar"), goal_value=wall,
                       peer_extra=f" (cpu {seconds(statistics.median(c for _, c in theirs))})"))


def live_session(place, rounds, saves, results):
    """On one live session (watcher on, as an editor has it): unchanged `up` vs rsync no-op and git status,
    unchanged `both` vs unison no-op, then save-to-visible through didSave."""
    place.settle("rsync", "unison", "unison-home")
    rsync_destination = place.destination("rsync")
    run_process(rsync_command(place.tree, rsync_destination))
    unison_destination = place.destination("unison")
    unison_env = dict(os.environ, UNISON=place.destination("unison-home"))
    run_process(unison_command(place.tree, unison_destination), env=unison_env)
    server = place.server()
    session = server.request("sandlink/connect", {"driver": "local", "workspaceFolder": uri(place.tree)})
    session_id, remote_root = session["sessionId"], session["remoteRoot"]
    subprocess.run(["git", "status", "--porcelain"], cwd=place.tree, check=True, capture_output=True)
    time.sleep(1)  # let the watcher settle
    times = {"up": [], "both": [], "rsync": [], "git": [], "unison": []}

    def sync(direction):
        def measure():
            result = {}
            times[direction].append(timed(lambda: result.update(
                server.request("sandlink/sync", {"sessionId": session_id, "direction": direction}))))
            assert result["uploaded"] == 0 and result["downloaded"] == 0 and result["deleted"] == 0, result
        return measure

    def git_status():
        times["git"].append(timed(lambda: subprocess.run(["git", "status", "--porcelain"], cwd=place.tree, check=True,
                                                         capture_output=True)))

    def rsync():
        times["rsync"].append(run_process(rsync_command(place.tree, rsync_destination))[0])

    def unison():
        times["unison"].append(run_process(unison_command(place.tree, unison_destination), env=unison_env)[0])

    contenders = [sync("up"), git_status, rsync, sync("both"), unison]
    resync_rounds = max(rounds, 7)
    for round_index in range(resync_rounds):
        order = contenders[round_index % 5:] + contenders[:round_index % 5]
        for contender in order:
            contender()
    log(f"  [{place.name}] unchanged resyncs: " + ", ".join(
        f"{name} {statistics.median(values) * 1000:.0f} ms" for name, values in times.items()))
    medians = {name: statistics.median(values) for name, values in times.items()}
    results.append(row("unchanged resync, `up`", place.name, millis(medians["up"]),
                       [("rsync -a no-op", medians["rsync"]), ("git status", medians["git"])], medians["up"],
                       goal=("<=", 1.0, "x git status"), goal_value=medians["up"] / medians["git"]))
    results.append(row("unchanged two-way sync, `both`", place.name, millis(medians["both"]),
                       [("unison no-op", medians["unison"])], medians["both"],
                       goal=("<=", 0.5, "x unison"), goal_value=medians["both"] / medians["unison"]))

    saved = os.path.join(place.tree, "src/pkg7/mod7/edited.txt")
    latencies = save_to_visible(server, saved, os.path.join(remote_root, "src/pkg7/mod7/edited.txt"), saves)
    os.remove(saved)
    server.close()
    place.settle("rsync", "unison", "unison-home")
    p50, p99 = statistics.median(latencies), percentile(latencies, 0.99)
    results.append(row(f"save to visible, local, {len(latencies)} saves", place.name,
                       f"p50 {millis(p50)}, p99 {millis(p99)}", [], None,
                       goal=("<", 5.0, " ms p50 / < 20 ms p99"), goal_value=p50 * 1000,
                       passed=p50 * 1000 < 5.0 and p99 * 1000 < 20.0))


def save_to_visible(server, saved, visible, saves):
    """Writes a new version of `saved`, sends didSave, and polls `visible` (the same file as the sandbox sees it)
    until it holds that version."""
    latencies = []
    for index in range(saves + 3):
        content = f"version {index} {time.time_ns()}\n".encode()
        started = time.perf_counter()
        with open(saved, "wb") as handle:
            handle.write(content)
        server.notify("textDocument/didSave", {"textDocument": {"uri": uri(saved)}})
        while True:
            try:
                with open(visible, "rb") as handle:
                    if handle.read() == content:
                        break
            except (FileNotFoundError, PermissionError):
                pass
            if time.perf_counter() - started > 10:
                raise RuntimeError(f"a saved file did not reach the sandbox ({visible}) within 10 s")
            time.sleep(0.0002)
        if index >= 3:
            latencies.append(time.perf_counter() - started)
        time.sleep(0.02)
    return latencies


def startup(options, state, results):
    times = []
    for _ in range(max(options.rounds, 10)):
        client = LspClient(options.binary, state)
        times.append(client.initialized_at - client.started_at)
        client.close()
    median = statistics.median(times)
    results.append(row("server start to `initialize` result", "-", millis(median), [], None,
                       goal=("<", 20.0, " ms"), goal_value=median * 1000))


def small_workspace(directory):
    workspace = os.path.join(directory, "ws50")
    shutil.rmtree(workspace, ignore_errors=True)
    rng = random.Random(50)
    for index in range(50):
        path = os.path.join(workspace, f"src/m{index % 5}/file{index}.js")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as handle:
            handle.write(f"export const value{index} = {rng.getrandbits(32)};\n" * rng.randint(5, 60))
    return workspace


def cli_run(options, directory, state, results):
    """`sandlink run -- true` on a 50-file workspace, whole process, vs bwrap with sandlink's namespaces."""
    workspace = small_workspace(directory)
    env = dict(os.environ, SANDLINK_STATE_DIR=state)
    ours, theirs = [], []
    runs = max(options.rounds, 15)
    for index in range(runs + 2):
        pair = {}

        def sandlink():
            pair["sandlink"] = run_process([options.binary, "run", "-d", "local", "-w", workspace, "--", "true"],
                                           env=env, cwd=workspace)[0]

        def bwrap():
            pair["bwrap"] = run_process(BWRAP + ["true"], cwd=workspace)[0]

        for contender in ((sandlink, bwrap) if index % 2 == 0 else (bwrap, sandlink)):
            wait_for_trash(state)
            contender()
        if index >= 2:
            ours.append(pair["sandlink"])
            theirs.append(pair["bwrap"])
    ours_median, theirs_median = statistics.median(ours), statistics.median(theirs)
    results.append(row("`sandlink run -- true`, 50-file workspace, whole process", "-", millis(ours_median),
                       [("bwrap … true", theirs_median)], ours_median, goal=("<", 15.0, " ms"),
                       goal_value=ours_median * 1000))


def big_tree_rss(options, results):
    """Peak RSS of the server during the initial sync of 50,000 files, and that sync against tar | tar of the same
    files: medians of `--rounds` rounds, the order alternating, the peak the highest of any round."""
    directory = PLACES["shm"] if "shm" in options.places else PLACES["disk"]
    place_name = "shm" if "shm" in options.places else "disk"
    files = int(BIG_FILES * options.scale)
    tree, list_file, files = prepare_tree(directory, f"tree{files}", files, max(1, int(BIG_MEGABYTES * options.scale)),
                                          0, seed=50, git=False)
    scratch = tempfile.mkdtemp(prefix="run-", dir=directory)
    state = os.path.join(scratch, "state")
    os.makedirs(state)
    ours, theirs, peak = [], [], 0

    def settle():
        wait_for_trash(state)
        shutil.rmtree(os.path.join(state, "sessions"), ignore_errors=True)
        shutil.rmtree(os.path.join(scratch, "tar"), ignore_errors=True)
        os.sync()
        time.sleep(0.3)

    def sandlink():
        nonlocal peak
        settle()
        server = LspClient(options.binary, state)
        params = {"driver": "local", "workspaceFolder": uri(tree), "settings": {"sync": {"watch": "off"}}}
        ours.append(timed(lambda: server.request("sandlink/connect", params)))
        peak = max(peak, server.memory_kib("VmHWM"))
        server.close()

    def tar():
        settle()
        destination = os.path.join(scratch, "tar")
        os.makedirs(destination)
        theirs.append(run_process(["sh", "-c", f"tar -C '{tree}' -cf - -T '{list_file}' | tar -C '{destination}' -xf -"])[0])

    try:
        for round_index in range(options.rounds):
            for contender in ((sandlink, tar) if round_index % 2 == 0 else (tar, sandlink)):
                contender()
            log(f"  [{place_name}] {files} files round {round_index + 1}: sandlink {ours[-1]:.2f} s, tar {theirs[-1]:.2f} s")
        settle()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    ours_median, theirs_median = statistics.median(ours), statistics.median(theirs)
    results.append(row(f"server peak RSS, initial sync of {files} files", place_name, f"{peak / 1024:.0f} MB", [], None,
                       goal=("<", 64.0, " MB"), goal_value=peak / 1024))
    results.append(row(f"initial sync through `sandlink/connect`, {files} files", place_name, seconds(ours_median),
                       [("tar c | tar x", theirs_median)], ours_median, goal=("<=", 1.0, "x tar"),
                       goal_value=ours_median / theirs_median))


def docker_reachable():
    if not shutil.which("docker"):
        return "no docker CLI"
    try:
        image = subprocess.run(["docker", "image", "inspect", DOCKER_IMAGE], capture_output=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "dockerd did not answer"
    if image.returncode != 0:
        return f"no {DOCKER_IMAGE} image (tests/setup/docker.sh) or no daemon at DOCKER_HOST"
    return None


def host_path_of(container, inside):
    """Where `inside` of a running container is on this machine (a bind mount's source, else the merged overlay), so
    save-to-visible is polled without a docker exec per look; None when the daemon's files are not readable here."""
    inspect = subprocess.run(["docker", "inspect", container], capture_output=True, check=True)
    info = json.loads(inspect.stdout)[0]
    for mount in sorted(info.get("Mounts", []), key=lambda mount: -len(mount["Destination"])):
        destination = mount["Destination"].rstrip("/")
        if inside == destination or inside.startswith(destination + "/"):
            candidate = mount["Source"] + inside[len(destination):]
            return candidate if os.path.isdir(candidate) else None
    merged = (info.get("GraphDriver") or {}).get("Data", {}).get("MergedDir")
    if merged and os.path.isdir(merged + inside):
        return merged + inside
    pid = (info.get("State") or {}).get("Pid")
    if pid and os.path.isdir(f"/proc/{pid}/root{inside}"):
        return f"/proc/{pid}/root{inside}"
    return None


def docker_rows(options, directory, state, results):
    workspace = small_workspace(os.path.join(directory, "docker"))
    server = LspClient(options.binary, state)
    try:
        session = server.request("sandlink/connect", {"driver": "docker", "settings": {"image": DOCKER_IMAGE},
                                                      "workspaceFolder": uri(workspace)})
        session_id, remote_root = session["sessionId"], session["remoteRoot"]
        container = f"sandlink-{session_id}"

        def through_lsp():
            sent = time.perf_counter()
            run_id = server.request("sandlink/run", {"sessionId": session_id, "command": "true"})["runId"]
            arrived, exit_params = server.wait_notification("sandlink/exit", lambda params: params["runId"] == run_id)
            assert exit_params["exitCode"] == 0, exit_params
            return arrived - sent

        def docker_exec():
            return run_process(["docker", "exec", container, "true"])[0]

        ours, theirs = [], []
        for index in range(max(options.rounds, 20) + 5):
            pair = (through_lsp(), docker_exec()) if index % 2 == 0 else tuple(reversed((docker_exec(), through_lsp())))
            if index >= 5:
                ours.append(pair[0])
                theirs.append(pair[1])
        ours_median, theirs_median = statistics.median(ours), statistics.median(theirs)
        results.append(row("docker: run round trip of `true` through the LSP", "docker", millis(ours_median),
                           [("docker exec CONTAINER true", theirs_median)], ours_median,
                           goal=("<=", 0.1, "x docker exec"), goal_value=ours_median / theirs_median))

        visible_root = host_path_of(container, remote_root)
        log(f"  docker: {remote_root} of {container} is read at {visible_root}")
        if visible_root is None:
            results.append(row("save to visible, docker", "docker", "n/a (container files not readable here)", [], None))
        else:
            saved = os.path.join(workspace, "src/m1/saved.js")
            latencies = save_to_visible(server, saved, os.path.join(visible_root, "src/m1/saved.js"),
                                        min(options.saves, 50))
            p50, p99 = statistics.median(latencies), percentile(latencies, 0.99)
            results.append(row(f"save to visible, docker, {len(latencies)} saves", "docker",
                               f"p50 {millis(p50)}, p99 {millis(p99)}", [], None,
                               goal=("<", 15.0, " ms p50"), goal_value=p50 * 1000))
        server.request("sandlink/disconnect", {"sessionId": session_id})
    finally:
        server.close()


def seconds(value):
    return f"{value:.2f} s" if value >= 1 else f"{value * 1000:.0f} ms"


def millis(value):
    return f"{value * 1000:.1f} ms"


def row(measure, place, ours, peers, ours_value, goal=None, goal_value=None, ratio_text=None, passed=None,
        peer_extra=""):
    """One table row: the peers with their figures, sandlink's ratio to each, and the goal's verdict."""
    peer_text = "; ".join(f"{name} {seconds(value)}{peer_extra}" for name, value in peers) or ""
    if ratio_text is None:
        ratio_text = ", ".join(f"{ours_value / value:.2f}x" for _, value in peers) if ours_value is not None else ""
    verdict = ""
    goal_text = ""
    if goal is not None:
        comparison, limit, unit = goal
        goal_text = f"{comparison} {limit:g}{unit}"
        if passed is None:
            passed = goal_value <= limit if comparison == "<=" else goal_value < limit
        verdict = f"{'pass' if passed else 'FAIL'} ({goal_value:.2f})"
    return [measure, place, ours, peer_text, ratio_text, goal_text, verdict]


def print_table(rows):
    header = ["measure", "place", "sandlink", "peers (same run)", "ratio", "goal", "verdict"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for cells in rows:
        print("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--places", default="shm,disk", help="comma-separated: shm (/dev/shm), disk (/var/tmp)")
    parser.add_argument("--saves", type=int, default=200)
    parser.add_argument("--no-docker", action="store_true")
    parser.add_argument("--scale", type=float, default=1.0, help="trees this fraction of the issue's (smoke tests)")
    options = parser.parse_args()
    options.binary = os.path.abspath(options.binary)
    options.places = [name for name in options.places.split(",") if name]
    if options.rounds < 3:
        parser.error("medians need at least 3 rounds")
    for tool in ("rsync", "unison", "bwrap", "git", "tar"):
        if not shutil.which(tool):
            parser.error(f"{tool} is missing (bench/peers/run.sh installs rsync and unison)")
    started = time.perf_counter()
    log(f"sandlink {options.binary}; {os.cpu_count()} CPUs; load {os.getloadavg()}")
    results = []
    places = [Place(name, PLACES[name], options) for name in options.places]
    try:
        for place in places:
            log(f"== {place.name}: {place.tree} ({place.files} files)")
            initial_sync(place, options.rounds, results)
            cli_sync(place, options.rounds, results)
            live_session(place, options.rounds, options.saves, results)
        scratch = places[0].scratch
        log("== start-up, sandlink run, peak RSS of 50,000 files")
        startup(options, os.path.join(scratch, "state"), results)
        cli_run(options, scratch, os.path.join(scratch, "state"), results)
        big_tree_rss(options, results)
        if options.no_docker:
            results.append(row("docker rows", "docker", "skipped (--no-docker)", [], None))
        else:
            unreachable = docker_reachable()
            if unreachable:
                results.append(row("docker rows", "docker", f"skipped: {unreachable}", [], None))
            else:
                log("== docker")
                docker_rows(options, scratch, os.path.join(scratch, "state"), results)
    finally:
        for place in places:
            shutil.rmtree(place.scratch, ignore_errors=True)
    print()
    print(f"sandlink peers benchmark: {options.binary}, medians of {options.rounds}+ rounds, "
          f"{time.perf_counter() - started:.0f} s, load average at the end {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print_table(results)


if __name__ == "__main__":
    sys.exit(main())
