"""Transfers benchmark: bytes sent to upload the benchmark tree to each cloud test server, compressed against not.

For each tree (source-like text, and random bytes that no compressor shrinks) it connects sandlink to the E2B,
Daytona and Vercel test servers (which count the bytes each sandbox received: `tests/fakes/traffic.py`) and reports
the bytes of the initial sync. The baselines, measured in the same run: the tree's own size (what an uncompressed
copy must send at least), `tar | gzip -1` of the same files (what a compressed archive sends), and E2B with
compression off (the test server posing as an envd older than 0.5.7, which cannot undo `Content-Encoding: gzip`).
Usage: .venv/bin/python bench/transfers/bench.py [--sandlink target/debug/sandlink] [--files 2000] [--megabytes 64]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

from lsp_client import LspClient  # noqa: E402  (the shared benchmark client)

E2B_KEY = "e2b_bench_key_0123456789"
DAYTONA_KEY = "dtn_bench_key_0123456789"
VERCEL_TOKEN = "vercel_bench_token_0123456789"


def load_tree_generator():
    """`generate_tree` of bench/sync (loaded by path: this file is also called bench.py)."""
    spec = importlib.util.spec_from_file_location("sync_bench", REPO / "bench" / "sync" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate_tree


class Fake:
    """One cloud test server as a child process, stopped when its stdin closes."""

    def __init__(self, script: str, arguments: list[str], root: str):
        python = os.environ.get("SANDLINK_TEST_PYTHON", str(REPO / ".venv" / "bin" / "python"))
        self.process = subprocess.Popen(
            [python, str(REPO / "tests" / "fakes" / script), "--port", "0", "--exit-when-stdin-closes", "--root", root,
             *arguments],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for line in self.process.stdout:
            if line.startswith("LISTENING "):
                self.port = int(line.split()[1])
                break

    def admin(self, path: str) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}") as answer:
            return json.load(answer)

    def stop(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def cloud(name: str, root: str, compress: bool = True) -> tuple[Fake, str, dict, dict, callable]:
    """The test server for `name`, the driver, its settings, the server's environment, and how to read the bytes the
    one sandbox received."""
    if name == "e2b":
        # Compression off: the test server says its envd is 0.5.6, which predates `Content-Encoding: gzip` uploads.
        fake = Fake("e2b_server.py", ["--api-key", E2B_KEY] + ([] if compress else ["--envd-version", "0.5.6"]), root)
        settings = {"apiUrl": f"http://127.0.0.1:{fake.port}", "domain": f"localhost:{fake.port}", "timeoutSeconds": 300}
        return fake, "e2b", settings, {"E2B_API_KEY": E2B_KEY}, lambda: fake.admin("/_admin/sandboxes")["sandboxes"][0]["bytesReceived"]
    if name == "daytona":
        fake = Fake("daytona_server.py", ["--api-key", DAYTONA_KEY], root)
        settings = {"apiUrl": f"http://127.0.0.1:{fake.port}/api"}
        return fake, "daytona", settings, {"DAYTONA_API_KEY": DAYTONA_KEY}, lambda: fake.admin("/_admin/sandboxes")["sandboxes"][0]["bytesReceived"]
    fake = Fake("vercel_server.py", ["--token", VERCEL_TOKEN, "--team-id", "team_bench"], root)
    settings = {"baseUrl": f"http://127.0.0.1:{fake.port}/api", "timeoutSeconds": 300}
    environment = {"VERCEL_TOKEN": VERCEL_TOKEN, "VERCEL_TEAM_ID": "team_bench", "VERCEL_PROJECT_ID": "prj_bench",
                   "VERCEL_OIDC_TOKEN": ""}
    return fake, "vercel", settings, environment, lambda: fake.admin("/_admin/sandboxes")["sessions"][0]["bytesReceived"]


def upload_bytes(binary: str, name: str, tree: str, compress: bool = True) -> tuple[int, float]:
    """Connects to a fresh test server (which syncs the tree up) and answers the bytes its sandbox received."""
    with tempfile.TemporaryDirectory() as root, tempfile.TemporaryDirectory() as state:
        fake, driver, settings, environment, received = cloud(name, root, compress)
        saved = {key: os.environ.get(key) for key in environment}
        os.environ.update(environment)
        client = LspClient(binary, state)
        try:
            started = time.perf_counter()
            client.request("sandlink/connect", {"driver": driver, "settings": settings,
                                                "workspaceFolder": pathlib.Path(tree).as_uri()})
            seconds = time.perf_counter() - started
            return received(), seconds
        finally:
            client.close()
            fake.stop()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def baselines(tree: str, synced: list[str]) -> tuple[int, int]:
    """The synced files' total size, and the size of `tar | gzip -1` of them."""
    total = sum(os.path.getsize(os.path.join(tree, path)) for path in synced)
    with tempfile.NamedTemporaryFile(suffix=".tgz") as archive:
        with tarfile.open(archive.name, "w:gz", compresslevel=1) as packed:
            for path in synced:
                packed.add(os.path.join(tree, path), arcname=path)
        return total, os.path.getsize(archive.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sandlink", default=str(REPO / "target" / "debug" / "sandlink"))
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--megabytes", type=int, default=64)
    parser.add_argument("--clouds", default="e2b,daytona,vercel")
    options = parser.parse_args()
    generate_tree = load_tree_generator()
    print(f"| tree | upload to | bytes sent | vs tree size | vs tar+gzip -1 | seconds |")
    print(f"|---|---|---|---|---|---|")
    for text in (True, False):
        with tempfile.TemporaryDirectory() as work:
            tree = os.path.join(work, "tree")
            synced = generate_tree(tree, options.files, options.megabytes, text=text)
            kind = "text" if text else "random"
            total, gzipped = baselines(tree, synced)
            print(f"| {kind} | (tree size) | {total:,} | 1.00 | {total / gzipped:.2f} | |")
            print(f"| {kind} | (tar+gzip -1) | {gzipped:,} | {gzipped / total:.2f} | 1.00 | |")
            runs = [(name, True) for name in options.clouds.split(",")]
            if "e2b" in options.clouds.split(","):
                runs.insert(1, ("e2b", False))
            for name, compress in runs:
                sent, seconds = upload_bytes(options.sandlink, name, tree, compress)
                label = name if compress else f"{name} (compression off)"
                print(f"| {kind} | {label} | {sent:,} | {sent / total:.2f} | {sent / gzipped:.2f} | {seconds:.1f} |",
                      flush=True)


if __name__ == "__main__":
    main()
