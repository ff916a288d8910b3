"""Test helpers for the Vercel fake: starting the server process, its admin API, and a raw HTTP client for the API.

The raw client exists because some faults (a cut stream, a hung request) and some wire details (exact NDJSON lines,
statuses, error bodies) cannot be observed through the official SDK, which hides them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import os
from dataclasses import dataclass
from typing import Optional

import httpx

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SERVER_SCRIPT = os.path.join(REPO_ROOT, "tests", "fakes", "vercel_server.py")
TEAM_ID = "team_fake_conformance"
PROJECT_ID = "prj_fake_conformance"


class FakeVercelServer:
    """One running `tests/fakes/vercel_server.py` subprocess."""

    def __init__(self, token: str, root: str, log_path: str, extra_arguments: tuple = ()):
        self.extra_arguments = list(extra_arguments)
        self.token = token
        self.root = root
        self.log_path = log_path
        self.process: Optional[subprocess.Popen] = None
        self.port: Optional[int] = None

    def start(self, startup_timeout_seconds: float = 20.0) -> "FakeVercelServer":
        self.log_handle = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, SERVER_SCRIPT, "--port", "0", "--token", self.token, "--root", self.root,
             *self.extra_arguments],
            stdout=subprocess.PIPE, stderr=self.log_handle,
        )
        first_line: list[bytes] = []
        reader = threading.Thread(target=lambda: first_line.append(self.process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(startup_timeout_seconds)
        line = first_line[0].decode().strip() if first_line else ""
        if not line.startswith("LISTENING "):
            self.stop()
            raise RuntimeError(f"the Vercel fake did not start (first stdout line {line!r}); log: {self.read_log()}")
        self.port = int(line.split()[1])
        return self

    def read_log(self) -> str:
        with open(self.log_path, "rb") as handle:
            return handle.read().decode(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    # --- admin API -----------------------------------------------------------------------------------------------

    def set_faults(self, **faults) -> dict:
        response = httpx.post(f"{self.url}/_admin/faults", json=faults)
        response.raise_for_status()
        return response.json()

    def reset_faults(self) -> None:
        httpx.delete(f"{self.url}/_admin/faults").raise_for_status()

    def advance_clock(self, seconds: float) -> dict:
        response = httpx.post(f"{self.url}/_admin/clock", json={"advanceSeconds": seconds})
        response.raise_for_status()
        return response.json()

    def next_request_sequence(self) -> int:
        return httpx.get(f"{self.url}/_admin/requests", params={"since": 1 << 62}).json()["nextSeq"]

    def requests_since(self, sequence: int, session_id: Optional[str] = None) -> dict:
        params: dict = {"since": sequence}
        if session_id:
            params["sessionId"] = session_id
        return httpx.get(f"{self.url}/_admin/requests", params=params).json()

    def isolation(self) -> str:
        return httpx.get(f"{self.url}/_admin/info").json()["isolation"]

    def admin_state(self) -> dict:
        return httpx.get(f"{self.url}/_admin/sandboxes").json()

    def admin_session(self, session_id: str) -> Optional[dict]:
        for session in self.admin_state()["sessions"]:
            if session["id"] == session_id:
                return session
        return None


@dataclass
class StreamResult:
    """What a streamed NDJSON answer delivered: its status, raw body bytes, and whether it ended cleanly."""

    status: int
    content_type: str
    raw: bytes
    completed: bool

    @property
    def lines(self) -> list[dict]:
        """Every complete line, parsed; a cut's partial last line is left out."""
        complete, _, _partial = self.raw.rpartition(b"\n")
        return [json.loads(line) for line in complete.split(b"\n") if line.strip()] if complete else []

    @property
    def ends_mid_line(self) -> bool:
        return bool(self.raw) and not self.raw.endswith(b"\n")


class RawVercelClient:
    """Speaks the fake's HTTP API directly with httpx: auth header and `teamId` added, answers returned whole."""

    def __init__(self, server: FakeVercelServer, token: Optional[str] = None, team_id: Optional[str] = TEAM_ID,
                 base: Optional[str] = None):
        self.server = server
        self.base = base or server.api_url
        headers = {"Authorization": f"Bearer {token or server.token}"} if token != "" else {}
        self.http = httpx.Client(base_url=self.base, headers=headers, timeout=30,
                                 params={"teamId": team_id} if team_id else None)

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **options) -> httpx.Response:
        return self.http.request(method, path, **options)

    def create_sandbox(self, version: str = "v3", **body) -> dict:
        body.setdefault("projectId", PROJECT_ID)
        response = self.request("POST", f"/{version}/sandboxes", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    def start_command(self, session_path: str, command: str, args: list, **body) -> dict:
        response = self.request("POST", f"{session_path}/cmd", json={"command": command, "args": args, **body})
        assert response.status_code == 200, response.text
        return response.json()["command"]

    def stream(self, method: str, path: str, timeout: float = 30, **options) -> StreamResult:
        """Reads a streamed answer to its end, or to the point where the server cut the connection."""
        received = bytearray()
        with self.http.stream(method, path, timeout=timeout, **options) as response:
            try:
                for chunk in response.iter_raw():
                    received.extend(chunk)
            except (httpx.RemoteProtocolError, httpx.ReadError):
                return StreamResult(response.status_code, response.headers.get("content-type", ""), bytes(received),
                                    completed=False)
            return StreamResult(response.status_code, response.headers.get("content-type", ""), bytes(received),
                                completed=True)


def v2_session_path(session_id: str) -> str:
    return f"/v2/sandboxes/sessions/{session_id}"


def v1_sandbox_path(sandbox_id: str) -> str:
    return f"/v1/sandboxes/{sandbox_id}"
