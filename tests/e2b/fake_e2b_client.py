"""Test helpers for the E2B fake: starting the server process, its admin API, and a raw Connect-protocol client.

The raw client exists because some faults (a dropped stream, a hung daemon) and some wire details (frame flags, omitted
zero fields) cannot be observed through the official SDK, which hides them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

import httpx

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SERVER_SCRIPT = os.path.join(REPO_ROOT, "tests", "fakes", "e2b_server.py")
ENVD_PORT = 49983


class FakeE2BServer:
    """One running `tests/fakes/e2b_server.py` subprocess."""

    def __init__(self, api_key: str, root: str, log_path: str):
        self.api_key = api_key
        self.root = root
        self.log_path = log_path
        self.process: Optional[subprocess.Popen] = None
        self.port: Optional[int] = None

    def start(self, startup_timeout_seconds: float = 20.0) -> "FakeE2BServer":
        self.log_handle = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, SERVER_SCRIPT, "--port", "0", "--api-key", self.api_key, "--root", self.root],
            stdout=subprocess.PIPE, stderr=self.log_handle,
        )
        first_line: list[bytes] = []
        reader = threading.Thread(target=lambda: first_line.append(self.process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(startup_timeout_seconds)
        line = first_line[0].decode().strip() if first_line else ""
        if not line.startswith("LISTENING "):
            self.stop()
            raise RuntimeError(f"the E2B fake did not start (first stdout line {line!r}); log: {self.read_log()}")
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

    def sdk_options(self) -> dict:
        """Section 5 of cloud-apis.md: point both planes of the official SDK at this one server."""
        return {"api_key": self.api_key, "api_url": self.url, "sandbox_url": self.url}

    # --- admin API -----------------------------------------------------------------------------------------------

    def set_faults(self, **faults) -> dict:
        response = httpx.post(f"{self.url}/_admin/faults", json=faults)
        response.raise_for_status()
        return response.json()

    def reset_faults(self) -> None:
        httpx.delete(f"{self.url}/_admin/faults").raise_for_status()

    def next_request_sequence(self) -> int:
        return httpx.get(f"{self.url}/_admin/requests", params={"since": 1 << 62}).json()["nextSeq"]

    def requests_since(self, sequence: int, plane: Optional[str] = None) -> list[dict]:
        params = {"since": sequence}
        if plane:
            params["plane"] = plane
        return httpx.get(f"{self.url}/_admin/requests", params=params).json()["requests"]

    def admin_sandbox(self, sandbox_id: str) -> Optional[dict]:
        for sandbox in httpx.get(f"{self.url}/_admin/sandboxes").json()["sandboxes"]:
            if sandbox["sandboxID"] == sandbox_id:
                return sandbox
        return None


# --- raw Connect protocol ----------------------------------------------------------------------------------------


def envelope(message: dict) -> bytes:
    body = json.dumps(message).encode()
    return b"\x00" + len(body).to_bytes(4, "big") + body


@dataclass
class ConnectFrame:
    flags: int
    payload: dict
    raw: bytes

    @property
    def is_end_of_stream(self) -> bool:
        return bool(self.flags & 0x02)


@dataclass
class StreamResult:
    status: int
    content_type: str
    frames: list[ConnectFrame] = field(default_factory=list)
    transport_error: Optional[Exception] = None

    @property
    def events(self) -> list[dict]:
        return [frame.payload["event"] for frame in self.frames if not frame.is_end_of_stream]

    @property
    def end_of_stream(self) -> Optional[dict]:
        return self.frames[-1].payload if self.frames and self.frames[-1].is_end_of_stream else None

    def output(self, stream_name: str = "stdout") -> bytes:
        import base64

        return b"".join(base64.b64decode(event["data"][stream_name]) for event in self.events
                        if "data" in event and stream_name in event["data"])

    @property
    def pid(self) -> Optional[int]:
        for event in self.events:
            if "start" in event:
                return event["start"]["pid"]
        return None

    @property
    def end_event(self) -> Optional[dict]:
        for event in self.events:
            if "end" in event:
                return event["end"]
        return None


class RawEnvdClient:
    """Speaks envd's wire format by hand, the way the Rust driver will (cloud-apis.md 1.4)."""

    def __init__(self, server: FakeE2BServer, sandbox_id: str, access_token: Optional[str]):
        self.server = server
        self.sandbox_id = sandbox_id
        self.access_token = access_token

    def headers(self, extra: Optional[dict] = None, with_token: bool = True) -> dict:
        headers = {"E2b-Sandbox-Id": self.sandbox_id, "E2b-Sandbox-Port": str(ENVD_PORT),
                   "Authorization": "Basic dXNlcjo=", "Connect-Protocol-Version": "1"}
        if with_token and self.access_token:
            headers["X-Access-Token"] = self.access_token
        headers.update(extra or {})
        return headers

    def stream(self, rpc: str, message: dict, extra_headers: Optional[dict] = None, timeout: float = 30.0,
               stop_after_frames: Optional[int] = None) -> StreamResult:
        """Runs a server-streaming RPC and returns every frame; a truncated body becomes `transport_error`."""
        headers = self.headers({"Content-Type": "application/connect+json", **(extra_headers or {})})
        with httpx.Client(timeout=timeout) as client:
            with client.stream("POST", f"{self.server.url}/{rpc}", content=envelope(message),
                               headers=headers) as response:
                result = StreamResult(response.status_code, response.headers.get("content-type", ""))
                if response.status_code != 200 or not result.content_type.startswith("application/connect+json"):
                    response.read()
                    result.frames.append(ConnectFrame(0, response.json() if response.content else {},
                                                      response.content))
                    return result
                buffer = b""
                try:
                    for chunk in response.iter_raw():
                        buffer += chunk
                        while len(buffer) >= 5:
                            length = int.from_bytes(buffer[1:5], "big")
                            if len(buffer) < 5 + length:
                                break
                            raw = buffer[:5 + length]
                            buffer = buffer[5 + length:]
                            result.frames.append(ConnectFrame(raw[0], json.loads(raw[5:]), raw))
                            if stop_after_frames is not None and len(result.frames) >= stop_after_frames:
                                return result
                except (httpx.RemoteProtocolError, httpx.ReadError) as error:
                    result.transport_error = error
                return result

    def unary(self, rpc: str, message: dict, with_token: bool = True, timeout: float = 30.0) -> httpx.Response:
        return httpx.post(f"{self.server.url}/{rpc}", content=json.dumps(message).encode(),
                          headers=self.headers({"Content-Type": "application/json"}, with_token), timeout=timeout)

    def get(self, path: str, params: Optional[dict] = None, with_token: bool = True,
            timeout: float = 30.0) -> httpx.Response:
        return httpx.get(f"{self.server.url}{path}", params=params, headers=self.headers(with_token=with_token),
                         timeout=timeout)

    def post(self, path: str, with_token: bool = True, timeout: float = 30.0, headers: Optional[dict] = None,
             **kwargs) -> httpx.Response:
        return httpx.post(f"{self.server.url}{path}", headers=self.headers(headers, with_token=with_token),
                          timeout=timeout, **kwargs)


def shell_start_request(command: str, stdin: Optional[bool] = False, **process_fields) -> dict:
    """A `Process/Start` request shaped like the SDK's: `/bin/bash -l -c <command>`."""
    message: dict = {"process": {"cmd": "/bin/bash", "args": ["-l", "-c", command], **process_fields}}
    if stdin is not None:
        message["stdin"] = stdin
    return message


def wait_until(predicate, timeout_seconds: float = 10.0, interval_seconds: float = 0.05):
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_seconds)
    raise AssertionError(f"condition not met within {timeout_seconds} s")
