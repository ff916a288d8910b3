"""Test helpers for the Daytona fake: starting the server process, its admin API, and raw API/toolbox/WebSocket clients.

The raw clients exist because some faults (a cut WebSocket, a hung toolbox) and some wire details (frame boundaries,
markers, multipart shapes, error bodies) cannot be observed through the official SDK, which hides them.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

import httpx

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SERVER_SCRIPT = os.path.join(REPO_ROOT, "tests", "fakes", "daytona_server.py")
SDK_VERSION = "0.226.1"
STDOUT_MARKER = b"\x01\x01\x01"
STDERR_MARKER = b"\x02\x02\x02"


class FakeDaytonaServer:
    """One running `tests/fakes/daytona_server.py` subprocess."""

    def __init__(self, api_key: str, root: str, log_path: str, extra_arguments: Optional[list[str]] = None):
        self.api_key = api_key
        self.root = root
        self.log_path = log_path
        self.extra_arguments = extra_arguments or []
        self.process: Optional[subprocess.Popen] = None
        self.port: Optional[int] = None

    def start(self, startup_timeout_seconds: float = 20.0) -> "FakeDaytonaServer":
        self.log_handle = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, SERVER_SCRIPT, "--port", "0", "--api-key", self.api_key, "--root", self.root,
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
            raise RuntimeError(f"the Daytona fake did not start (first stdout line {line!r}); log: {self.read_log()}")
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

    def sdk(self, api_key: Optional[str] = None):
        """Section 5 of cloud-apis.md: the official SDK pointed at this server through `DaytonaConfig`."""
        from daytona import Daytona, DaytonaConfig

        return Daytona(DaytonaConfig(api_key=api_key or self.api_key, api_url=self.api_url))

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

    def requests_since(self, sequence: int, plane: Optional[str] = None) -> dict:
        params: dict = {"since": sequence}
        if plane:
            params["plane"] = plane
        return httpx.get(f"{self.url}/_admin/requests", params=params).json()

    def admin_sandbox(self, sandbox_id: str) -> Optional[dict]:
        response = httpx.get(f"{self.url}/_admin/sandboxes/{sandbox_id}")
        return response.json() if response.status_code == 200 else None

    def delete_from_outside(self, sandbox_id: str) -> None:
        httpx.delete(f"{self.url}/_admin/sandboxes/{sandbox_id}").raise_for_status()


# --- raw HTTP -----------------------------------------------------------------------------------------------------


class RawDaytonaClient:
    """Speaks the main API and the toolbox by hand, the way the Rust driver does."""

    def __init__(self, server: FakeDaytonaServer, api_key: Optional[str] = None, sdk_version: Optional[str] = SDK_VERSION):
        self.server = server
        self.api_key = api_key or server.api_key
        self.sdk_version = sdk_version

    def headers(self, extra: Optional[dict] = None) -> dict:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        if self.sdk_version:
            headers["X-Daytona-SDK-Version"] = self.sdk_version
        headers.update(extra or {})
        return headers

    def api(self, method: str, path: str, timeout: float = 30.0, **kwargs) -> httpx.Response:
        headers = self.headers(kwargs.pop("headers", None))
        return httpx.request(method, f"{self.server.api_url}{path}", headers=headers, timeout=timeout, **kwargs)

    def toolbox(self, method: str, sandbox_id: str, path: str, timeout: float = 30.0, **kwargs) -> httpx.Response:
        headers = self.headers(kwargs.pop("headers", None))
        return httpx.request(method, f"{self.server.url}/toolbox/{sandbox_id}{path}", headers=headers,
                             timeout=timeout, **kwargs)

    def create_sandbox(self, **body) -> dict:
        response = self.api("POST", "/sandbox", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    def start_command(self, sandbox_id: str, command: str, session_id: str = "run", **fields) -> str:
        """One session per command, `runAsync`, as the driver runs things; returns the cmdId."""
        created = self.toolbox("POST", sandbox_id, "/process/session", json={"sessionId": session_id})
        assert created.status_code == 201, created.text
        started = self.toolbox("POST", sandbox_id, f"/process/session/{session_id}/exec",
                               json={"command": command, "runAsync": True, **fields})
        assert started.status_code == 202, started.text
        return started.json()["cmdId"]

    def wait_for_exit_code(self, sandbox_id: str, session_id: str, command_id: str, timeout: float = 15.0) -> int:
        deadline = time.monotonic() + timeout
        while True:
            body = self.toolbox("GET", sandbox_id, f"/process/session/{session_id}/command/{command_id}").json()
            if body.get("exitCode") is not None:
                return body["exitCode"]
            if time.monotonic() > deadline:
                raise AssertionError(f"command {command_id} did not exit within {timeout} s")
            time.sleep(0.05)

    def start_background_sleep(self, sandbox_id: str, session_id: str = "run") -> tuple[str, int]:
        """Runs `sleep 600` from a session command; returns the command id and the sleep's pid (via a pid file)."""
        command_id = self.start_command(sandbox_id, "sleep 600 & echo $! > sleep.pid; wait", session_id)

        def pid_file() -> Optional[int]:
            response = self.toolbox("GET", sandbox_id, "/files/download", params={"path": "sleep.pid"})
            return int(response.content) if response.status_code == 200 and response.content.strip() else None

        return command_id, wait_until(pid_file)

    def logs_url(self, sandbox_id: str, session_id: str, command_id: str) -> str:
        return (f"ws://127.0.0.1:{self.server.port}/toolbox/{sandbox_id}/process/session/{session_id}"
                f"/command/{command_id}/logs?follow=true")

    def follow_logs(self, sandbox_id: str, session_id: str, command_id: str, timeout: float = 20.0) -> "LogStream":
        return asyncio.run(read_log_websocket(self.logs_url(sandbox_id, session_id, command_id), self.headers(),
                                              timeout))


@dataclass
class LogStream:
    """What one logs WebSocket delivered: every binary frame, and how it ended."""

    frames: list[bytes] = field(default_factory=list)
    close_code: Optional[int] = None
    closed_cleanly: bool = False
    error: Optional[str] = None
    upgrade_status: Optional[int] = None

    @property
    def data(self) -> bytes:
        return b"".join(self.frames)


async def read_log_websocket(url: str, headers: dict, timeout: float) -> LogStream:
    import aiohttp

    result = LogStream()
    async with aiohttp.ClientSession() as session:
        try:
            async with session.ws_connect(url, headers=headers, autoping=True, timeout=aiohttp.ClientWSTimeout(
                    ws_close=timeout)) as websocket:
                result.upgrade_status = 101
                while True:
                    message = await asyncio.wait_for(websocket.receive(), timeout)
                    if message.type == aiohttp.WSMsgType.BINARY:
                        result.frames.append(bytes(message.data))
                    elif message.type == aiohttp.WSMsgType.TEXT:
                        result.frames.append(message.data.encode())
                    elif message.type == aiohttp.WSMsgType.CLOSE:
                        result.close_code = message.data
                        result.closed_cleanly = message.data == 1000
                        break
                    else:
                        # CLOSED or ERROR without a close frame: the connection died.
                        result.close_code = websocket.close_code
                        result.error = str(websocket.exception() or message.type)
                        break
        except aiohttp.WSServerHandshakeError as error:
            result.upgrade_status = error.status
    return result


def demux(log: bytes) -> tuple[bytes, bytes]:
    """Splits a marker stream into stdout and stderr, as Daytona's SDKs do (a marker holds until the next one)."""
    stdout, stderr = bytearray(), bytearray()
    current = None
    position = 0
    while position < len(log):
        if log.startswith(STDOUT_MARKER, position):
            current, position = stdout, position + 3
        elif log.startswith(STDERR_MARKER, position):
            current, position = stderr, position + 3
        else:
            next_markers = [index for index in (log.find(STDOUT_MARKER, position), log.find(STDERR_MARKER, position))
                            if index >= 0]
            end = min(next_markers) if next_markers else len(log)
            assert current is not None, "output before the first marker"
            current.extend(log[position:end])
            position = end
    return bytes(stdout), bytes(stderr)


def wait_until(predicate, timeout_seconds: float = 10.0, interval_seconds: float = 0.05):
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_seconds)
    raise AssertionError(f"condition not met within {timeout_seconds} s")


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
