"""A faithful in-process fake of E2B (control REST API + envd Connect RPC + /files) that runs real processes, with fault injection for tests.

Why this exists: no test machine can reach E2B, yet the Rust driver and the official SDK must be exercised against
E2B's real wire format. One aiohttp process serves both planes:

* Control plane (`X-API-Key`): any request WITHOUT an `E2b-Sandbox-Id` header, exactly like E2B's API host.
* envd (port 49983 inside a sandbox): any request WITH `E2b-Sandbox-Id` + `E2b-Sandbox-Port`, which is the
  header-routing form E2B's edge proxy accepts when the Host is an IP or localhost (cloud-apis.md 1.1). The host form
  `49983-<sandboxID>.<anything>` is accepted too.
* Test-only admin API under `/_admin/` (faults, request log, sandbox inspection with the bytes each sandbox
  received on the wire and sent as file content, `traffic.py`); never part of E2B.

Path mapping (documented because commands run for real, without a chroot): every sandbox owns a private directory
`<root>/<sandboxID>/fs`, which stands for the sandbox's `/`. The sandbox path `/home/user/a.txt` is the host path
`<root>/<sandboxID>/fs/home/user/a.txt`. The mapping is applied to the file API, the filesystem RPCs and a process's
`cwd`; processes also get `HOME` set to the mapped home directory and `E2B_FAKE_SANDBOX_ROOT` set to the mapped `/`.
Absolute paths written inside command text are NOT rewritten, so tests should use relative paths, `$HOME` or
`$E2B_FAKE_SANDBOX_ROOT`. Processes run as the server's own OS user; `username` only selects the home directory
(`root` -> `/root`, anything else -> `/home/user`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import collections
import contextlib
import datetime as dt
import gzip
import hashlib
import ipaddress
import itertools
import json
import logging
import os
import posixpath
import re
import secrets
import shutil
import signal
import stat
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Optional

from aiohttp import web

import traffic

ENVD_PORT = 49983
DEFAULT_USER = "user"
DEFAULT_HOME = "/home/user"
CONNECT_STREAM_CONTENT_TYPE = "application/connect+json"
# envd's auth middleware message; it never repeats the token it received.
ENVD_UNAUTHORIZED_MESSAGE = "unauthorized access, please provide a valid access token or method signing if supported"
# The server default when a client sends no Keepalive-Ping-Interval header (envd uses 90 s).
DEFAULT_KEEPALIVE_SECONDS = 90.0
# How long an exited process whose end event was never read stays attachable; E2B keeps them only briefly (E2B#1074),
# this fake keeps them longer so a quick re-attach never loses output.
EXITED_PROCESS_RETENTION_SECONDS = 600.0

CONNECT_CODE_TO_HTTP_STATUS = {
    "canceled": 499,
    "unknown": 500,
    "invalid_argument": 400,
    "deadline_exceeded": 504,
    "not_found": 404,
    "already_exists": 409,
    "permission_denied": 403,
    "resource_exhausted": 429,
    "failed_precondition": 400,
    "aborted": 409,
    "out_of_range": 400,
    "unimplemented": 501,
    "internal": 500,
    "unavailable": 503,
    "data_loss": 500,
    "unauthenticated": 401,
}


class ConnectError(Exception):
    """A Connect RPC error with its canonical code (for example `not_found`) and a human message."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class ProtoJsonValidator:
    """Accepts a request message's JSON the way envd's default protojson does: rejects unknown fields.

    Why: envd parses input with default protojson options, so a client sending a misspelt or extra field gets
    `invalid_argument` from the real service. The fake must fail the same way so the Rust driver cannot drift.
    Each schema maps the lowerCamelCase field name to a nested schema (dict), or None for a scalar/map/list.
    """

    @staticmethod
    def snake_to_camel(name: str) -> str:
        head, *rest = name.split("_")
        return head + "".join(part[:1].upper() + part[1:] for part in rest)

    @classmethod
    def normalize(cls, value: Any, schema: dict, where: str) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConnectError("invalid_argument", f"{where}: expected a JSON object")
        normalized: dict = {}
        for raw_name, item in value.items():
            camel_name = cls.snake_to_camel(raw_name)
            if camel_name not in schema:
                raise ConnectError("invalid_argument", f'proto: (line 1): unknown field "{raw_name}"')
            nested_schema = schema[camel_name]
            if nested_schema is not None and item is not None:
                item = cls.normalize(item, nested_schema, f"{where}.{camel_name}")
            normalized[camel_name] = item
        return normalized


PROCESS_SELECTOR_SCHEMA = {"pid": None, "tag": None}
PTY_SCHEMA = {"size": {"cols": None, "rows": None}}
PROCESS_CONFIG_SCHEMA = {"cmd": None, "args": None, "envs": None, "cwd": None}
REQUEST_SCHEMAS = {
    "process.Process/Start": {"process": PROCESS_CONFIG_SCHEMA, "pty": PTY_SCHEMA, "tag": None, "stdin": None},
    "process.Process/Connect": {"process": PROCESS_SELECTOR_SCHEMA},
    "process.Process/List": {},
    "process.Process/SendInput": {"process": PROCESS_SELECTOR_SCHEMA, "input": {"stdin": None, "pty": None}},
    "process.Process/SendSignal": {"process": PROCESS_SELECTOR_SCHEMA, "signal": None},
    "process.Process/CloseStdin": {"process": PROCESS_SELECTOR_SCHEMA},
    "process.Process/Update": {"process": PROCESS_SELECTOR_SCHEMA, "pty": PTY_SCHEMA},
    "filesystem.Filesystem/Stat": {"path": None},
    "filesystem.Filesystem/MakeDir": {"path": None},
    "filesystem.Filesystem/Remove": {"path": None},
    "filesystem.Filesystem/Move": {"source": None, "destination": None},
    "filesystem.Filesystem/ListDir": {"path": None, "depth": None},
    "filesystem.Filesystem/WatchDir": {"path": None, "recursive": None, "includeEntry": None,
                                       "allowNetworkMounts": None},
    "filesystem.Filesystem/CreateWatcher": {"path": None, "recursive": None, "includeEntry": None,
                                            "allowNetworkMounts": None},
    "filesystem.Filesystem/GetWatcherEvents": {"watcherId": None},
    "filesystem.Filesystem/RemoveWatcher": {"watcherId": None},
}
SERVER_STREAMING_RPCS = {"process.Process/Start", "process.Process/Connect", "filesystem.Filesystem/WatchDir"}


def utc_now_rfc3339() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def epoch_to_rfc3339(epoch_seconds: float) -> str:
    return dt.datetime.fromtimestamp(epoch_seconds, dt.timezone.utc).isoformat().replace("+00:00", "Z")


def connect_envelope(payload: dict, end_of_stream: bool = False) -> bytes:
    """One Connect streaming frame: flags byte, big-endian u32 length, JSON payload (cloud-apis.md 1.4)."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    flags = 0x02 if end_of_stream else 0x00
    return bytes([flags]) + len(body).to_bytes(4, "big") + body


def json_response(status: int, body: Any, headers: Optional[dict] = None) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body, separators=(",", ":")).encode(),
        content_type="application/json",
        headers=headers,
    )


def control_error(status: int, message: str, headers: Optional[dict] = None) -> web.Response:
    """The control API's error body: `{"code":<int>,"message":…}`."""
    return json_response(status, {"code": status, "message": message}, headers)


def unary_connect_error(error: ConnectError) -> web.Response:
    """A unary Connect error: the mapped HTTP status with `{"code":"<connect code>","message":…}`."""
    status = CONNECT_CODE_TO_HTTP_STATUS.get(error.code, 500)
    return json_response(status, {"code": error.code, "message": error.message})


def go_exit_status_text(returncode: int) -> str:
    """What Go's `os.ProcessState.String()` says, which envd copies into `EndEvent.status`."""
    if returncode >= 0:
        return f"exit status {returncode}"
    signal_number = -returncode
    go_signal_names = {
        signal.SIGKILL: "killed",
        signal.SIGTERM: "terminated",
        signal.SIGINT: "interrupt",
        signal.SIGHUP: "hangup",
        signal.SIGPIPE: "broken pipe",
        signal.SIGABRT: "aborted",
        signal.SIGSEGV: "segmentation fault",
    }
    try:
        name = go_signal_names.get(signal.Signals(signal_number), f"signal {signal_number}")
    except ValueError:
        name = f"signal {signal_number}"
    return f"signal: {name}"


# ---------------------------------------------------------------------------------------------------------------
# Test clock, faults and the request log
# ---------------------------------------------------------------------------------------------------------------


class TestClock:
    """Wall time plus an offset that `POST /_admin/clock` advances, so a sandbox's fixed end (`endAt`) and its
    extensions can be tested over simulated hours without waiting. Never part of E2B."""

    def __init__(self) -> None:
        self.offset_seconds = 0.0

    def now(self) -> float:
        return time.time() + self.offset_seconds


@dataclass
class FaultSettings:
    """Faults a test turns on through `POST /_admin/faults`; each counter is consumed by the requests it hits."""

    drop_stream_after_bytes: Optional[int] = None
    drop_stream_count: int = 1
    # Every process stream (Start and Connect) is cut this many seconds after it opened, for as long as it is set:
    # a network that keeps dropping, which no counter runs out of.
    drop_stream_every_seconds: Optional[float] = None
    rate_limit_next: int = 0
    retry_after_seconds: int = 1
    rate_limit_plane: str = "any"
    error_next: int = 0
    error_status: int = 503
    error_plane: str = "control"
    hang_envd: bool = False
    # A control plane that stops answering, for tests that requests waiting on it never hold up others.
    hang_control: bool = False
    # When set, every fault above only hits requests about this sandbox (envd requests routed to it, and control
    # routes under /sandboxes/<id>), so parallel tests sharing one server do not trip over each other's faults.
    sandbox_id: Optional[str] = None

    def to_json(self) -> dict:
        return {
            "sandboxId": self.sandbox_id,
            "dropStreamAfterBytes": self.drop_stream_after_bytes,
            "dropStreamCount": self.drop_stream_count,
            "dropStreamEverySeconds": self.drop_stream_every_seconds,
            "rateLimitNext": self.rate_limit_next,
            "retryAfter": self.retry_after_seconds,
            "rateLimitPlane": self.rate_limit_plane,
            "errorNext": self.error_next,
            "errorStatus": self.error_status,
            "errorPlane": self.error_plane,
            "hangEnvd": self.hang_envd,
            "hangControl": self.hang_control,
        }


@dataclass
class RequestLogEntry:
    sequence: int
    time: float
    method: str
    path: str
    query: str
    plane: str
    sandbox_id: Optional[str]
    status: Optional[int] = None
    headers: dict = field(default_factory=dict)
    rpc_message: Optional[dict] = None

    def to_json(self) -> dict:
        return {
            "headers": self.headers,
            "rpcMessage": self.rpc_message,
            "seq": self.sequence,
            "time": self.time,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "plane": self.plane,
            "sandboxId": self.sandbox_id,
            "status": self.status,
        }


# ---------------------------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class ProcessEventRecord:
    """One buffered `ProcessEvent` (data or end) with its byte count, kept until a stream delivers it."""

    sequence: int
    event: dict
    output_bytes: int


class SandboxProcess:
    """A real OS process (own process group) whose output is buffered until some stream has delivered it.

    Why buffer: E2B's `Process/Connect` only streams events from the moment of attaching, so output produced between
    a dropped stream and the re-attach is lost there. Here every data/end event stays buffered until a stream has
    written it, and a re-attaching stream starts at the first undelivered event: a client that re-attaches by pid
    gets the complete output, in order.
    """

    def __init__(self, sandbox: "Sandbox", popen: asyncio.subprocess.Process, config: dict, tag: Optional[str],
                 stdin_enabled: bool):
        self.sandbox = sandbox
        self.popen = popen
        self.pid = popen.pid
        self.config = config
        self.tag = tag
        self.stdin_enabled = stdin_enabled
        self.buffered_events: collections.deque[ProcessEventRecord] = collections.deque()
        self.next_sequence = 0
        # Sequence number of the first event no stream has delivered yet.
        self.first_undelivered_sequence = 0
        self.changed = asyncio.Condition()
        self.exited = False
        self.exited_at: Optional[float] = None
        self.end_delivered = False
        self.pump_task: Optional[asyncio.Task] = None
        # The controlling side of the process's terminal when it was started with `pty`; None for pipes.
        self.pty_master_fd: Optional[int] = None

    async def append_event(self, event: dict, output_bytes: int = 0) -> None:
        async with self.changed:
            self.buffered_events.append(ProcessEventRecord(self.next_sequence, event, output_bytes))
            self.next_sequence += 1
            self.changed.notify_all()

    def events_from(self, sequence: int) -> list[ProcessEventRecord]:
        """Buffered events with a sequence number of at least `sequence`, in order (the deque is sorted)."""
        if not self.buffered_events:
            return []
        skip = max(0, sequence - self.buffered_events[0].sequence)
        return list(itertools.islice(self.buffered_events, skip, None))

    def mark_delivered(self, delivered: ProcessEventRecord) -> None:
        """Drops buffered events up to `delivered` once a stream has written them to its client."""
        if delivered.sequence + 1 > self.first_undelivered_sequence:
            self.first_undelivered_sequence = delivered.sequence + 1
        while self.buffered_events and self.buffered_events[0].sequence < self.first_undelivered_sequence:
            self.buffered_events.popleft()
        if "end" in delivered.event:
            self.end_delivered = True

    async def pump_output(self) -> None:
        """Reads stdout and stderr concurrently into data events, then appends the end event."""

        async def pump(stream: Optional[asyncio.StreamReader], field_name: str) -> None:
            if stream is None:
                return
            while True:
                chunk = await stream.read(32768)
                if not chunk:
                    return
                await self.append_event(
                    {"data": {field_name: base64.b64encode(chunk).decode()}}, output_bytes=len(chunk))

        if self.pty_master_fd is not None:
            await self.pump_pty_output()
        else:
            await asyncio.gather(pump(self.popen.stdout, "stdout"), pump(self.popen.stderr, "stderr"))
        returncode = await self.popen.wait()
        # protojson omits zero values: exitCode 0 and exited=false never appear on the wire.
        end: dict = {}
        if returncode >= 0:
            if returncode != 0:
                end["exitCode"] = returncode
            end["exited"] = True
        else:
            end["exitCode"] = -1
        end["status"] = go_exit_status_text(returncode)
        self.exited = True
        self.exited_at = time.time()
        await self.append_event({"end": end})

    async def pump_pty_output(self) -> None:
        """Reads the terminal in a worker thread (a pty master is not a pipe asyncio can watch portably)."""
        loop = asyncio.get_running_loop()
        master_fd = self.pty_master_fd

        def read_chunk() -> bytes:
            try:
                return os.read(master_fd, 32768)
            except OSError:
                # EIO: every process holding the terminal has exited.
                return b""

        while True:
            chunk = await loop.run_in_executor(None, read_chunk)
            if not chunk:
                break
            await self.append_event({"data": {"pty": base64.b64encode(chunk).decode()}}, output_bytes=len(chunk))
        with contextlib.suppress(OSError):
            os.close(master_fd)

    def resize_pty(self, size: dict) -> None:
        import fcntl
        import struct
        import termios

        rows, cols = int(size.get("rows") or 24), int(size.get("cols") or 80)
        fcntl.ioctl(self.pty_master_fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def signal_group(self, signal_number: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal_number)

    def info_json(self) -> dict:
        info: dict = {"config": self.config, "pid": self.pid}
        if self.tag is not None:
            info["tag"] = self.tag
        return info


# ---------------------------------------------------------------------------------------------------------------
# Sandboxes
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Sandbox:
    sandbox_id: str
    template_id: str
    alias: Optional[str]
    host_root: str
    envd_access_token: Optional[str]
    metadata: dict
    env_vars: dict
    started_at: float
    end_at: float
    auto_pause: bool
    state: str = "running"
    processes: dict = field(default_factory=dict)
    file_metadata: dict = field(default_factory=dict)
    # Transports of open Start/Connect streams: a sandbox that dies takes its connections with it, as the VM would.
    open_stream_transports: set = field(default_factory=set)
    watchers: dict = field(default_factory=dict)
    # The egress rules as the client last set them (create's `network`, or `PUT /sandboxes/{id}/network`), and
    # create's `allow_internet_access`. Recorded, not enforced: commands here run on the host's network.
    network: Optional[dict] = None
    allow_internet_access: Optional[bool] = None

    @property
    def filesystem_root(self) -> str:
        return os.path.join(self.host_root, "fs")

    def sandbox_path_for(self, path: str, username: Optional[str]) -> str:
        """Normalizes a sandbox path; relative paths resolve against the user's home, as envd does."""
        home = "/root" if username == "root" else DEFAULT_HOME
        if not path:
            path = home
        if path.startswith("~"):
            path = home + path[1:]
        if not path.startswith("/"):
            path = posixpath.join(home, path)
        # normpath on an absolute path cannot climb above "/", so the host path stays inside the private directory.
        return posixpath.normpath(path).replace("//", "/")

    def host_path_for(self, sandbox_path: str) -> str:
        return os.path.join(self.filesystem_root, sandbox_path.lstrip("/"))

    def sandbox_json(self, domain: Optional[str] = None) -> dict:
        return {
            "templateID": self.template_id,
            "sandboxID": self.sandbox_id,
            "alias": self.alias,
            "clientID": "6532622b",
            "envdVersion": SERVER_SETTINGS.envd_version,
            "envdAccessToken": self.envd_access_token,
            "trafficAccessToken": None,
            "domain": domain,
        }

    def listed_json(self) -> dict:
        return {
            "templateID": self.template_id,
            "alias": self.alias,
            "sandboxID": self.sandbox_id,
            "clientID": "6532622b",
            "startedAt": epoch_to_rfc3339(self.started_at),
            "endAt": epoch_to_rfc3339(self.end_at),
            "cpuCount": 2,
            "memoryMB": 512,
            "diskSizeMB": 1024,
            "metadata": self.metadata,
            "state": self.state,
            "envdVersion": SERVER_SETTINGS.envd_version,
            "volumeMounts": [],
        }

    def detail_json(self) -> dict:
        detail = self.listed_json()
        detail.update({
            "envdAccessToken": self.envd_access_token,
            "domain": None,
            "allowInternetAccess": self.allow_internet_access,
            "lifecycle": {"autoResume": False, "onTimeout": "pause" if self.auto_pause else "kill"},
        })
        # Absent rather than null when never set: the SDK parses a present `network` as an object.
        if self.network is not None:
            detail["network"] = self.network
        return detail


@dataclass
class ServerSettings:
    api_key: str
    root: str
    envd_version: str = "0.6.4"
    exit_when_stdin_closes: bool = False


SERVER_SETTINGS = ServerSettings(api_key="", root="")


class FakeE2B:
    """All state of the fake: sandboxes, snapshots, faults and the request log."""

    def __init__(self, settings: ServerSettings):
        self.settings = settings
        self.sandboxes: dict[str, Sandbox] = {}
        self.snapshots: dict[str, dict] = {}
        self.faults = FaultSettings()
        self.upload_drop = traffic.UploadDrop()
        self.traffic = traffic.Counters()
        # Set whenever hangEnvd is switched, so hung requests and streams re-check whether they may go on.
        self.hang_changed = asyncio.Event()
        self.request_log: list[RequestLogEntry] = []
        # Idempotency-Key of a create → the sandbox it made, so a retried create does not make a second sandbox.
        self.sandbox_by_idempotency_key: dict[str, str] = {}
        self.next_request_sequence = 1
        # Sandbox lifetimes (created, endAt, timeouts, expiry) run on this clock; process bookkeeping on wall time.
        self.clock = TestClock()

    # --- faults ------------------------------------------------------------------------------------------------

    def apply_faults(self, body: dict) -> None:
        faults = self.faults
        if "dropStreamAfterBytes" in body:
            faults.drop_stream_after_bytes = body["dropStreamAfterBytes"]
            faults.drop_stream_count = int(body.get("dropStreamCount", 1))
        elif "dropStreamCount" in body:
            faults.drop_stream_count = int(body["dropStreamCount"])
        if "dropStreamEverySeconds" in body:
            every = body["dropStreamEverySeconds"]
            faults.drop_stream_every_seconds = float(every) if every is not None else None
        if "rateLimitNext" in body:
            faults.rate_limit_next = int(body["rateLimitNext"])
        if "retryAfter" in body:
            faults.retry_after_seconds = int(body["retryAfter"])
        if "rateLimitPlane" in body:
            faults.rate_limit_plane = str(body["rateLimitPlane"])
        if "errorNext" in body:
            faults.error_next = int(body["errorNext"])
        if "errorStatus" in body:
            faults.error_status = int(body["errorStatus"])
        if "errorPlane" in body:
            faults.error_plane = str(body["errorPlane"])
        if "sandboxId" in body:
            faults.sandbox_id = body["sandboxId"] or None
        if "hangEnvd" in body:
            faults.hang_envd = bool(body["hangEnvd"])
        if "hangControl" in body:
            faults.hang_control = bool(body["hangControl"])
        self.upload_drop.apply(body)
        self.wake_hung_requests()
        vanish = body.get("vanish")
        if vanish:
            for sandbox_id in [vanish] if isinstance(vanish, str) else list(vanish):
                sandbox = self.sandboxes.pop(sandbox_id, None)
                if sandbox is not None:
                    self.destroy_sandbox_later(sandbox)

    def reset_faults(self) -> None:
        self.faults = FaultSettings()
        self.upload_drop = traffic.UploadDrop()
        self.wake_hung_requests()

    def wake_hung_requests(self) -> None:
        self.hang_changed.set()
        self.hang_changed = asyncio.Event()

    def fault_applies_to(self, sandbox_id: Optional[str]) -> bool:
        return self.faults.sandbox_id is None or self.faults.sandbox_id == sandbox_id

    async def wait_while_control_hangs(self, sandbox_id: Optional[str]) -> None:
        """A control plane that stops answering: hold the request until the fault is cleared or re-scoped."""
        while self.faults.hang_control and self.fault_applies_to(sandbox_id):
            await self.hang_changed.wait()

    async def wait_while_envd_hangs(self, sandbox_id: Optional[str]) -> None:
        """A daemon that stops answering: hold the request (or stream) until the fault is cleared or re-scoped."""
        while self.faults.hang_envd and self.fault_applies_to(sandbox_id):
            await self.hang_changed.wait()

    @staticmethod
    def plane_matches(selected_plane: str, plane: str) -> bool:
        return selected_plane == "any" or selected_plane == plane

    # --- sandbox lifecycle -------------------------------------------------------------------------------------

    def new_sandbox(self, template_id: str, timeout_seconds: int, metadata: dict, env_vars: dict, secure: bool,
                    auto_pause: bool) -> Sandbox:
        sandbox_id = "i" + secrets.token_hex(10)
        host_root = os.path.join(self.settings.root, sandbox_id)
        filesystem_root = os.path.join(host_root, "fs")
        snapshot = self.snapshots.get(template_id)
        if snapshot is not None:
            shutil.copytree(snapshot["hostRoot"], filesystem_root, symlinks=True)
        for directory in ("home/user", "root", "tmp"):
            os.makedirs(os.path.join(filesystem_root, directory), exist_ok=True)
        now = self.clock.now()
        sandbox = Sandbox(
            sandbox_id=sandbox_id,
            template_id=template_id,
            alias=template_id if snapshot is None else None,
            host_root=host_root,
            envd_access_token=("ea_" + secrets.token_hex(16)) if secure else None,
            metadata=dict(metadata or {}),
            env_vars=dict(snapshot["envVars"] if snapshot else {}, **(env_vars or {})),
            started_at=now,
            end_at=now + timeout_seconds,
            auto_pause=auto_pause,
        )
        self.sandboxes[sandbox_id] = sandbox
        return sandbox

    def destroy_sandbox_later(self, sandbox: Sandbox) -> None:
        """Kills every process tree of the sandbox and deletes its directory off the event loop."""
        sandbox.state = "killed"
        for transport in list(sandbox.open_stream_transports):
            transport.close()
        sandbox.open_stream_transports.clear()
        for process in list(sandbox.processes.values()):
            process.signal_group(signal.SIGCONT)
            process.signal_group(signal.SIGKILL)
        for watcher in list(sandbox.watchers.values()):
            watcher.stop()
        sandbox.watchers.clear()
        asyncio.get_running_loop().run_in_executor(None, shutil.rmtree, sandbox.host_root, True)

    def pause_sandbox(self, sandbox: Sandbox, keep_memory: bool) -> None:
        sandbox.state = "paused"
        for process in sandbox.processes.values():
            # A memory snapshot freezes processes; a filesystem-only pause means a cold boot, so they die.
            process.signal_group(signal.SIGSTOP if keep_memory else signal.SIGKILL)

    def resume_sandbox(self, sandbox: Sandbox, timeout_seconds: int) -> None:
        sandbox.state = "running"
        for process in sandbox.processes.values():
            process.signal_group(signal.SIGCONT)
        sandbox.end_at = max(sandbox.end_at, self.clock.now() + timeout_seconds)

    async def reap_expired_sandboxes(self) -> None:
        """Kills (or pauses, with autoPause) sandboxes whose endAt passed, like E2B's TTL enforcement."""
        while True:
            await asyncio.sleep(0.5)
            try:
                self.reap_once(self.clock.now())
            except Exception:
                # One bad sandbox must not stop expiry for all the others; the trace goes to stderr for debugging.
                logging.exception("the sandbox reaper failed; retrying in 0.5 s")

    def reap_once(self, now: float) -> None:
        """Expires sandboxes whose endAt passed (`now` is the test clock) and forgets exited processes nobody can
        still attach to (their retention is wall time: advancing the clock must not lose a run's last events)."""
        wall_now = time.time()
        for sandbox in list(self.sandboxes.values()):
            if sandbox.state == "running" and sandbox.end_at <= now:
                if sandbox.auto_pause:
                    self.pause_sandbox(sandbox, keep_memory=True)
                else:
                    self.sandboxes.pop(sandbox.sandbox_id, None)
                    self.destroy_sandbox_later(sandbox)
            for process in list(sandbox.processes.values()):
                if process.exited and (process.end_delivered or (
                        process.exited_at and wall_now - process.exited_at > EXITED_PROCESS_RETENTION_SECONDS)):
                    sandbox.processes.pop(process.pid, None)


# ---------------------------------------------------------------------------------------------------------------
# HTTP front door: request log, faults and plane routing
# ---------------------------------------------------------------------------------------------------------------

HOST_FORM_PATTERN = re.compile(r"^(\d+)-([A-Za-z0-9]+)\.")


def routed_sandbox(request: web.Request) -> tuple[Optional[str], Optional[int]]:
    """Which sandbox and port an envd request targets: routing headers first, then the `{port}-{id}.` host form."""
    sandbox_id = request.headers.get("E2b-Sandbox-Id")
    if sandbox_id:
        port_text = request.headers.get("E2b-Sandbox-Port", str(ENVD_PORT))
        try:
            return sandbox_id, int(port_text)
        except ValueError:
            return sandbox_id, None
    match = HOST_FORM_PATTERN.match(request.host or "")
    if match:
        return match.group(2), int(match.group(1))
    return None, None


# Headers tests may assert on (what a client sent); credentials are deliberately absent so the log never holds them.
LOGGED_REQUEST_HEADERS = ("Content-Type", "Connect-Protocol-Version", "Connect-Timeout-Ms", "Keepalive-Ping-Interval",
                          "User-Agent", "Idempotency-Key", "E2b-Sandbox-Port", "Content-Encoding", "Accept-Encoding")


@web.middleware
async def front_door(request: web.Request, handler) -> web.StreamResponse:
    fake: FakeE2B = request.app["fake"]
    sandbox_id, port = routed_sandbox(request)
    if request.path.startswith("/_admin/"):
        plane = "admin"
    elif sandbox_id is not None:
        plane = "envd"
    else:
        plane = "control"
    entry = RequestLogEntry(fake.next_request_sequence, time.time(), request.method, request.path,
                            request.query_string, plane, sandbox_id)
    fake.next_request_sequence += 1
    entry.headers = {name: request.headers[name] for name in LOGGED_REQUEST_HEADERS if name in request.headers}
    if plane != "admin":
        fake.request_log.append(entry)
    request["plane"] = plane
    request["sandbox_id"] = sandbox_id
    request["log_entry"] = entry
    try:
        response = await route_request(request, fake, plane, sandbox_id, port)
    except web.HTTPException as http_exception:
        entry.status = http_exception.status
        raise
    finally:
        received = traffic.charge(request)
        if plane == "envd":
            fake.traffic.add_received(sandbox_id, received)
            if request.path == "/files" and request.method == "POST" and fake.fault_applies_to(sandbox_id):
                fake.upload_drop.finished(request, received)
    entry.status = response.status
    return response


async def route_request(request: web.Request, fake: FakeE2B, plane: str, sandbox_id: Optional[str],
                        port: Optional[int]) -> web.StreamResponse:
    if plane == "admin":
        return await handle_admin(request, fake)

    faults = fake.faults
    if sandbox_id is None and plane == "control":
        # Control routes name their sandbox in the path; scoped faults use it.
        path_match = SANDBOX_ROUTE.match(request.path)
        scope_sandbox_id = path_match.group(1) if path_match else None
    else:
        scope_sandbox_id = sandbox_id
    in_scope = fake.fault_applies_to(scope_sandbox_id)
    if in_scope and faults.rate_limit_next > 0 and fake.plane_matches(faults.rate_limit_plane, plane):
        faults.rate_limit_next -= 1
        return control_error(429, "Rate limit exceeded, please try again later.",
                             headers={"Retry-After": str(faults.retry_after_seconds)})
    if in_scope and faults.error_next > 0 and fake.plane_matches(faults.error_plane, plane):
        faults.error_next -= 1
        return control_error(faults.error_status, "Injected server error, please retry.")

    if plane == "control":
        await fake.wait_while_control_hangs(scope_sandbox_id)
        return await handle_control(request, fake)

    # envd plane, behind the edge proxy.
    await fake.wait_while_envd_hangs(sandbox_id)
    sandbox = fake.sandboxes.get(sandbox_id or "")
    if sandbox is None:
        return json_response(502, {"sandboxId": sandbox_id, "message": "The sandbox was not found", "code": 502})
    if sandbox.state == "paused":
        return json_response(502, {"sandboxId": sandbox_id, "message": "The sandbox is paused", "code": 502})
    if port != ENVD_PORT:
        return await proxy_to_sandbox_port(request, sandbox_id, port)
    return await handle_envd(request, fake, sandbox)


# Headers that belong to one connection, or to the proxy hop, and must not be forwarded.
HOP_BY_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host",
                      "proxy-authorization", "proxy-authenticate", "content-length"}


async def proxy_to_sandbox_port(request: web.Request, sandbox_id: Optional[str], port: Optional[int]) -> web.StreamResponse:
    """Forwards a request for a user port (a preview) to the process listening on it, as E2B's edge proxy does.

    Sandbox processes run on this host without a network namespace, so the sandbox's port N is 127.0.0.1:N here.
    Nothing listening gives E2B's own 502 "port is not open" answer.
    """
    import aiohttp

    not_open = json_response(502, {"sandboxId": sandbox_id, "message": "The sandbox is running but port is not open",
                                   "port": port, "code": 502})
    if port is None or not 0 < port < 65536:
        return not_open
    headers = {name: value for name, value in request.headers.items()
               if name.lower() not in HOP_BY_HOP_HEADERS and not name.lower().startswith("e2b-")}
    body = await request.read()
    try:
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            async with session.request(request.method, f"http://127.0.0.1:{port}{request.rel_url}", headers=headers,
                                       data=body or None, allow_redirects=False) as upstream:
                content = await upstream.read()
                response_headers = {name: value for name, value in upstream.headers.items()
                                    if name.lower() not in HOP_BY_HOP_HEADERS}
                return web.Response(status=upstream.status, body=content, headers=response_headers)
    except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
        return not_open


# ---------------------------------------------------------------------------------------------------------------
# Admin API (test-only)
# ---------------------------------------------------------------------------------------------------------------


async def handle_admin(request: web.Request, fake: FakeE2B) -> web.StreamResponse:
    path = request.path
    if path == "/_admin/faults":
        if request.method == "GET":
            return json_response(200, {**fake.faults.to_json(), **fake.upload_drop.to_json()})
        if request.method == "POST":
            try:
                body = await request.json()
            except json.JSONDecodeError:
                return control_error(400, "The body must be a JSON object.")
            fake.apply_faults(body)
            return json_response(200, {**fake.faults.to_json(), **fake.upload_drop.to_json()})
        if request.method == "DELETE":
            fake.reset_faults()
            return json_response(200, {**fake.faults.to_json(), **fake.upload_drop.to_json()})
    if path == "/_admin/requests":
        if request.method == "GET":
            since = int(request.query.get("since", "0"))
            plane = request.query.get("plane")
            sandbox_id = request.query.get("sandboxId")
            entries = [entry.to_json() for entry in fake.request_log
                       if entry.sequence >= since
                       and (plane is None or entry.plane == plane)
                       and (sandbox_id is None or entry.sandbox_id == sandbox_id)]
            return json_response(200, {"requests": entries, "nextSeq": fake.next_request_sequence})
        if request.method == "DELETE":
            fake.request_log.clear()
            return json_response(200, {"nextSeq": fake.next_request_sequence})
    if path == "/_admin/sandboxes" and request.method == "GET":
        return json_response(200, {"sandboxes": [
            {"sandboxID": sandbox.sandbox_id, "state": sandbox.state, "hostRoot": sandbox.filesystem_root,
             "endAt": epoch_to_rfc3339(sandbox.end_at), "envdAccessToken": sandbox.envd_access_token,
             "network": sandbox.network, "allowInternetAccess": sandbox.allow_internet_access,
             **fake.traffic.to_json(sandbox.sandbox_id),
             "processes": [{"pid": process.pid, "exited": process.exited,
                            "bufferedEvents": len(process.buffered_events)}
                           for process in sandbox.processes.values()]}
            for sandbox in fake.sandboxes.values()]})
    if path == "/_admin/clock" and request.method in ("GET", "POST"):
        if request.method == "POST":
            try:
                body = await request.json()
            except json.JSONDecodeError:
                return control_error(400, "The body must be a JSON object.")
            fake.clock.offset_seconds += float(body.get("advanceSeconds", 0))
            # Expire at once, so a test can assert right after advancing.
            fake.reap_once(fake.clock.now())
        return json_response(200, {"now": epoch_to_rfc3339(fake.clock.now()), "offsetSeconds": fake.clock.offset_seconds})
    return control_error(404, "Unknown admin route.")


# ---------------------------------------------------------------------------------------------------------------
# Control plane
# ---------------------------------------------------------------------------------------------------------------

SANDBOX_ROUTE = re.compile(r"^/(?:v2/)?sandboxes/([^/]+)(/[a-z]+)?$")


async def read_json_body(request: web.Request) -> dict:
    if not request.can_read_body:
        return {}
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except json.JSONDecodeError as error:
        raise web.HTTPBadRequest(text=json.dumps({"code": 400, "message": f"invalid JSON body: {error.msg}"}),
                                 content_type="application/json")
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text=json.dumps({"code": 400, "message": "the body must be a JSON object"}),
                                 content_type="application/json")
    return body


def parse_metadata_query(metadata_query: str) -> dict:
    """`metadata=k%3Dv%26k2%3Dv2` arrives decoded once by aiohttp as `k=v&k2=v2`; each pair may be encoded again."""
    from urllib.parse import parse_qsl

    return dict(parse_qsl(metadata_query, keep_blank_values=True))


async def handle_control(request: web.Request, fake: FakeE2B) -> web.StreamResponse:
    method, path = request.method, request.path
    if path == "/health" and method == "GET":
        return json_response(200, {"message": "Health check successful"})

    api_key = request.headers.get("X-API-Key")
    if not api_key:
        return control_error(401, "Missing API key. Provide it in the X-API-Key header.")
    if not secrets.compare_digest(api_key.encode(), fake.settings.api_key.encode()):
        # Never echo the key back: it would land in client logs and error messages.
        return control_error(401, "Invalid API key, please check that your key is correct.")

    if path in ("/sandboxes", "/v2/sandboxes"):
        if method == "POST":
            return await create_sandbox(request, fake)
        if method == "GET":
            return list_sandboxes(request, fake, legacy_running_only=(path == "/sandboxes"))
    if path == "/snapshots" and method == "GET":
        sandbox_filter = request.query.get("sandboxID")
        snapshots = [{"snapshotID": snapshot_id, "names": snapshot["names"]}
                     for snapshot_id, snapshot in fake.snapshots.items()
                     if sandbox_filter is None or snapshot["sandboxID"] == sandbox_filter]
        return json_response(200, snapshots)
    template_match = re.match(r"^/templates/(.+)$", path)
    if template_match and method == "DELETE":
        snapshot = fake.snapshots.pop(template_match.group(1), None)
        if snapshot is None:
            return control_error(404, f"Template '{template_match.group(1)}' not found")
        asyncio.get_running_loop().run_in_executor(None, shutil.rmtree, snapshot["hostRoot"], True)
        return web.Response(status=204)

    match = SANDBOX_ROUTE.match(path)
    if match is None:
        return control_error(404, f"Route {method} {path} does not exist in this fake.")
    sandbox_id, action = match.group(1), (match.group(2) or "")
    sandbox = fake.sandboxes.get(sandbox_id)
    if sandbox is None:
        return control_error(404, f"sandbox \"{sandbox_id}\" doesn't exist or you don't have access to it")

    if action == "" and method == "GET":
        return json_response(200, sandbox.detail_json())
    if action == "" and method == "DELETE":
        fake.sandboxes.pop(sandbox_id, None)
        fake.destroy_sandbox_later(sandbox)
        return web.Response(status=204)
    if action == "/timeout" and method == "POST":
        body = await read_json_body(request)
        timeout_seconds = body.get("timeout")
        if not isinstance(timeout_seconds, int) or timeout_seconds < 0:
            return control_error(400, "timeout must be a non-negative integer number of seconds")
        sandbox.end_at = fake.clock.now() + timeout_seconds
        return web.Response(status=204)
    if action == "/refreshes" and method == "POST":
        body = await read_json_body(request)
        duration = int(body.get("duration", 0))
        sandbox.end_at = max(sandbox.end_at, fake.clock.now() + duration)
        return web.Response(status=204)
    if action == "/pause" and method == "POST":
        if sandbox.state == "paused":
            return control_error(409, f"Sandbox {sandbox_id} is already paused")
        body = await read_json_body(request)
        fake.pause_sandbox(sandbox, keep_memory=body.get("memory", True) is not False)
        return web.Response(status=204)
    if action in ("/resume", "/connect") and method == "POST":
        body = await read_json_body(request)
        timeout_seconds = int(body.get("timeout", 15))
        if action == "/resume":
            if sandbox.state == "running":
                return control_error(409, f"Sandbox {sandbox_id} is already running")
            fake.resume_sandbox(sandbox, timeout_seconds)
            return json_response(201, sandbox.sandbox_json())
        was_paused = sandbox.state == "paused"
        # connect only ever extends the TTL.
        fake.resume_sandbox(sandbox, timeout_seconds)
        return json_response(201 if was_paused else 200, sandbox.sandbox_json())
    if action == "/snapshots" and method == "POST":
        body = await read_json_body(request)
        name = body.get("name") or secrets.token_hex(6)
        snapshot_id = f"fake-team/{name}:default"
        snapshot_host_root = os.path.join(fake.settings.root, "_snapshots", secrets.token_hex(8))
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: shutil.copytree(sandbox.filesystem_root, snapshot_host_root, symlinks=True))
        fake.snapshots[snapshot_id] = {"names": [snapshot_id], "sandboxID": sandbox_id,
                                       "hostRoot": snapshot_host_root, "envVars": dict(sandbox.env_vars)}
        return json_response(201, {"snapshotID": snapshot_id, "names": [snapshot_id]})
    if action == "/network" and method == "PUT":
        body = await read_json_body(request)
        network, problem = checked_network_config(body)
        if problem:
            return control_error(400, problem)
        # The update replaces the egress rules; a field left out is cleared, as E2B documents.
        sandbox.network = network
        if "allow_internet_access" in body:
            sandbox.allow_internet_access = body["allow_internet_access"]
        return web.Response(status=204)
    if action == "/metrics" and method == "GET":
        return json_response(200, [metric_sample(sandbox)])
    return control_error(404, f"Route {method} {path} does not exist in this fake.")


def metric_sample(sandbox: Sandbox) -> dict:
    """One `SandboxMetric` (openapi.yml) measured on this host, which stands in for the sandbox's VM: E2B samples
    every few seconds and answers the samples of the asked period, newest last."""
    cpus = os.cpu_count() or 1
    meminfo = {}
    with contextlib.suppress(OSError):
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                name, _, value = line.partition(":")
                meminfo[name] = int(value.split()[0]) * 1024
    disk = shutil.disk_usage(sandbox.filesystem_root if os.path.isdir(sandbox.filesystem_root) else "/")
    now = time.time()
    return {
        "timestamp": dt.datetime.fromtimestamp(now, dt.timezone.utc).isoformat().replace("+00:00", "Z"),
        "timestampUnix": int(now),
        "cpuCount": cpus,
        "cpuUsedPct": round(min(100.0, os.getloadavg()[0] / cpus * 100), 2),
        "memUsed": meminfo.get("MemTotal", 0) - meminfo.get("MemAvailable", 0),
        "memTotal": meminfo.get("MemTotal", 0),
        "memCache": meminfo.get("Cached", 0),
        "diskUsed": disk.used,
        "diskTotal": disk.total,
    }


NETWORK_DOMAIN = re.compile(r"^(\*\.)?([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")


def is_address_or_cidr(entry: str) -> bool:
    try:
        ipaddress.ip_network(entry, strict=False)
        return True
    except ValueError:
        return False


def checked_network_config(config: Any) -> tuple[Optional[dict], Optional[str]]:
    """Checks `SandboxNetworkConfig` egress rules as E2B does: allowOut takes CIDRs, addresses and domain names
    (`*.` allowed), denyOut only CIDRs and addresses. Answers the rules to record, or a 400 message."""
    if config is None:
        return None, None
    if not isinstance(config, dict):
        return None, "network must be an object"
    for key in ("allowOut", "denyOut"):
        entries = config.get(key)
        if entries is None:
            continue
        if not isinstance(entries, list) or not all(isinstance(entry, str) for entry in entries):
            return None, f"network.{key} must be a list of strings"
        for entry in entries:
            if is_address_or_cidr(entry):
                continue
            if key == "denyOut":
                return None, f"invalid denyOut entry '{entry}': domain names are not supported for deny rules"
            if not NETWORK_DOMAIN.match(entry.lower()):
                return None, f"invalid allowOut entry '{entry}': expected a CIDR block, an IP address or a domain"
    if "allowPublicTraffic" in config and not isinstance(config["allowPublicTraffic"], bool):
        return None, "network.allowPublicTraffic must be a boolean"
    return {key: value for key, value in config.items() if key in ("allowOut", "denyOut", "allowPublicTraffic")}, None


async def create_sandbox(request: web.Request, fake: FakeE2B) -> web.StreamResponse:
    idempotency_key = request.headers.get("Idempotency-Key")
    if idempotency_key and idempotency_key in fake.sandbox_by_idempotency_key:
        earlier = fake.sandboxes.get(fake.sandbox_by_idempotency_key[idempotency_key])
        if earlier is not None:
            return json_response(201, earlier.sandbox_json())
    body = await read_json_body(request)
    template_id = body.get("templateID")
    if not isinstance(template_id, str) or not template_id:
        return control_error(400, "templateID is required")
    timeout_seconds = body.get("timeout", 15)
    if not isinstance(timeout_seconds, int) or timeout_seconds < 0:
        return control_error(400, "timeout must be a non-negative integer number of seconds")
    metadata = body.get("metadata") or {}
    env_vars = body.get("envVars") or {}
    if not isinstance(metadata, dict) or not isinstance(env_vars, dict):
        return control_error(400, "metadata and envVars must be objects of strings")
    network, problem = checked_network_config(body.get("network"))
    if problem:
        return control_error(400, problem)
    allow_internet_access = body.get("allow_internet_access")
    if allow_internet_access is not None and not isinstance(allow_internet_access, bool):
        return control_error(400, "allow_internet_access must be a boolean")
    if template_id not in fake.snapshots and ("/" in template_id or ":" in template_id):
        return control_error(404, f"template '{template_id}' not found")
    sandbox = await asyncio.get_running_loop().run_in_executor(
        None, lambda: fake.new_sandbox(template_id, timeout_seconds, metadata, env_vars,
                                       secure=body.get("secure", True) is not False,
                                       auto_pause=bool(body.get("autoPause", False))))
    sandbox.network = network
    sandbox.allow_internet_access = allow_internet_access
    if idempotency_key:
        fake.sandbox_by_idempotency_key[idempotency_key] = sandbox.sandbox_id
    return json_response(201, sandbox.sandbox_json())


def list_sandboxes(request: web.Request, fake: FakeE2B, legacy_running_only: bool) -> web.StreamResponse:
    wanted_states = {"running"} if legacy_running_only else set(
        (request.query.get("state") or "running,paused").split(","))
    metadata_filter = parse_metadata_query(request.query.get("metadata", ""))
    template_filter = request.query.get("template")
    started_after = 0.0
    if request.query.get("startedAfter"):
        try:
            started_after = dt.datetime.fromisoformat(request.query["startedAfter"].replace("Z", "+00:00")).timestamp()
        except ValueError:
            return control_error(400, "startedAfter must be an RFC 3339 timestamp")
    matching = [sandbox for sandbox in fake.sandboxes.values()
                if sandbox.state in wanted_states
                and sandbox.started_at >= started_after
                and all(sandbox.metadata.get(key) == value for key, value in metadata_filter.items())
                and (template_filter is None or template_filter in (sandbox.template_id, sandbox.alias))]
    matching.sort(key=lambda sandbox: sandbox.started_at, reverse=request.query.get("order", "desc") == "desc")
    headers = {"X-Total-Running": str(sum(1 for sandbox in fake.sandboxes.values() if sandbox.state == "running"))}
    if legacy_running_only:
        return json_response(200, [sandbox.listed_json() for sandbox in matching], headers)
    limit = int(request.query.get("limit", "100"))
    start = int(request.query.get("nextToken") or "0")
    page = matching[start:start + limit]
    if start + limit < len(matching):
        headers["X-Next-Token"] = str(start + limit)
    return json_response(200, [sandbox.listed_json() for sandbox in page], headers)


# ---------------------------------------------------------------------------------------------------------------
# envd plane
# ---------------------------------------------------------------------------------------------------------------


def file_signature(path: str, operation: str, username: str, access_token: str, expiration: Optional[str]) -> str:
    raw = f"{path}:{operation}:{username}:{access_token}"
    if expiration:
        raw += f":{expiration}"
    return "v1_" + base64.b64encode(hashlib.sha256(raw.encode()).digest()).decode().rstrip("=")


def envd_request_authorized(request: web.Request, sandbox: Sandbox) -> bool:
    if sandbox.envd_access_token is None:
        return True
    token = request.headers.get("X-Access-Token", "")
    if token and secrets.compare_digest(token.encode(), sandbox.envd_access_token.encode()):
        return True
    if request.path == "/files" and request.method in ("GET", "POST") and "signature" in request.query:
        operation = "read" if request.method == "GET" else "write"
        expiration = request.query.get("signature_expiration")
        if expiration and int(expiration) < time.time():
            return False
        expected = file_signature(request.query.get("path", ""), operation,
                                  request.query.get("username", DEFAULT_USER), sandbox.envd_access_token, expiration)
        return secrets.compare_digest(expected.encode(), request.query["signature"].encode())
    return False


def username_from_basic_auth(request: web.Request) -> Optional[str]:
    header = request.headers.get("Authorization", "")
    if not header.startswith("Basic "):
        return None
    with contextlib.suppress(binascii.Error, UnicodeDecodeError):
        return base64.b64decode(header[6:]).decode().split(":", 1)[0] or None
    return None


async def handle_envd(request: web.Request, fake: FakeE2B, sandbox: Sandbox) -> web.StreamResponse:
    if request.path == "/health" and request.method == "GET":
        return web.Response(status=204)
    if not envd_request_authorized(request, sandbox):
        return json_response(401, {"code": 401, "message": ENVD_UNAUTHORIZED_MESSAGE})
    if request.path == "/files":
        if request.method == "GET":
            response = await download_file(request, sandbox)
            fake.traffic.add_sent(sandbox.sandbox_id, response.content_length or 0)
            return response
        if request.method == "POST":
            drop = fake.upload_drop if fake.fault_applies_to(sandbox.sandbox_id) else None
            return await upload_files(request, sandbox, drop)
        return json_response(405, {"code": 405, "message": "method not allowed"})
    if request.path == "/envs" and request.method == "GET":
        return json_response(200, sandbox.env_vars)
    rpc_name = request.path.lstrip("/")
    if request.method == "POST" and rpc_name in SERVER_STREAMING_RPCS:
        return await serve_streaming_rpc(request, fake, sandbox, rpc_name)
    if request.method == "POST" and rpc_name.startswith(("process.Process/", "filesystem.Filesystem/")):
        if rpc_name not in UNARY_HANDLERS:
            # Checked before the content type so a client-streaming call like StreamInput learns the real reason.
            return unary_connect_error(ConnectError("unimplemented", f"{rpc_name} is not implemented by this fake"))
        return await serve_unary_rpc(request, sandbox, rpc_name)
    return json_response(404, {"code": 404, "message": f"route {request.method} {request.path} not found"})


# --- /files ----------------------------------------------------------------------------------------------------


def upload_result_entry(sandbox_path: str) -> dict:
    return {"path": sandbox_path, "name": posixpath.basename(sandbox_path), "type": "file"}


async def download_file(request: web.Request, sandbox: Sandbox) -> web.StreamResponse:
    username = request.query.get("username") or username_from_basic_auth(request)
    sandbox_path = sandbox.sandbox_path_for(request.query.get("path", ""), username)
    host_path = sandbox.host_path_for(sandbox_path)
    if os.path.isdir(host_path):
        return json_response(400, {"code": 400, "message": f"path '{sandbox_path}' is a directory"})
    if not os.path.exists(host_path):
        return json_response(404, {"code": 404, "message": f"path '{sandbox_path}' does not exist"})
    content = await asyncio.get_running_loop().run_in_executor(None, lambda: open(host_path, "rb").read())
    headers = {"Content-Disposition": content_disposition(posixpath.basename(sandbox_path))}
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        content = gzip.compress(content)
        headers["Content-Encoding"] = "gzip"
    return web.Response(status=200, body=content, content_type="application/octet-stream", headers=headers)


def content_disposition(name: str) -> str:
    """`inline; filename=...` as envd writes it with Go's mime.FormatMediaType: a name with control or non-ASCII
    characters (a newline is legal in a file name) goes RFC 2231-encoded, never raw into the header."""
    if all(" " <= character < "\x7f" and character not in '"\\' for character in name):
        return f'inline; filename="{name}"'
    encoded = urllib.parse.quote(name.encode("utf-8", "surrogateescape"), safe="")
    return f"inline; filename*=utf-8''{encoded}"


def write_host_file(host_path: str, content: bytes) -> None:
    os.makedirs(os.path.dirname(host_path), exist_ok=True)
    if os.path.isdir(host_path):
        raise IsADirectoryError(host_path)
    with open(host_path, "wb") as handle:
        handle.write(content)


def raw_part_filename(part) -> Optional[str]:
    """The part's filename exactly as sent: aiohttp's `part.filename` strips the leading "/" of the absolute
    destination path that E2B's batch upload puts there."""
    import email.message
    import email.utils

    disposition = email.message.Message()
    disposition["Content-Disposition"] = part.headers.get("Content-Disposition", "")
    value = disposition.get_param("filename", header="Content-Disposition")
    if value is None:
        return None
    return email.utils.collapse_rfc2231_value(value)


def metadata_from_headers(request: web.Request) -> dict:
    metadata: dict = {}
    for name, value in request.headers.items():
        if name.lower().startswith("x-metadata-"):
            metadata.setdefault(name[len("x-metadata-"):].lower(), value)
    return metadata


async def upload_files(request: web.Request, sandbox: Sandbox,
                       drop: Optional[traffic.UploadDrop] = None) -> web.StreamResponse:
    username = request.query.get("username") or username_from_basic_auth(request)
    path_parameter = request.query.get("path")
    metadata = metadata_from_headers(request)
    content_type = request.content_type
    pending_writes: list[tuple[str, bytes]] = []
    if content_type == "multipart/form-data":
        reader = await request.multipart()
        while True:
            part = await reader.next()
            if part is None:
                break
            if part.name != "file":
                await part.release()
                continue
            destination = path_parameter if (path_parameter and not pending_writes) else raw_part_filename(part)
            if not destination:
                return json_response(400, {"code": 400, "message": "missing file path: set the part's filename"})
            try:
                content = await traffic.read_checked(part, request, drop)
            except ConnectionResetError as error:
                # What envd had written when the connection went: the files before, and the start of this one.
                partial_writes = pending_writes + [(sandbox.sandbox_path_for(destination, username), error.partial)]
                await asyncio.get_running_loop().run_in_executor(
                    None, lambda: [write_host_file(sandbox.host_path_for(path), data) for path, data in partial_writes])
                raise
            pending_writes.append((sandbox.sandbox_path_for(destination, username), content))
    elif content_type == "application/octet-stream":
        if not path_parameter:
            return json_response(400, {"code": 400, "message": "the path query parameter is required for "
                                                               "application/octet-stream uploads"})
        # aiohttp already undoes `Content-Encoding: gzip` on request bodies, as envd does.
        content = await traffic.read_checked(request.content, request, drop)
        pending_writes.append((sandbox.sandbox_path_for(path_parameter, username), content))
    else:
        return json_response(400, {"code": 400, "message": f"unsupported content type '{content_type}'"})
    destinations = [sandbox_path for sandbox_path, _ in pending_writes]
    if len(set(destinations)) != len(destinations):
        return json_response(400, {"code": 400, "message": "the same path appears twice in one upload"})

    def write_all() -> Optional[str]:
        """Writes every file; returns the first sandbox path that cannot be a file (a directory is in the way)."""
        for sandbox_path, content in pending_writes:
            try:
                write_host_file(sandbox.host_path_for(sandbox_path), content)
            except (IsADirectoryError, NotADirectoryError, FileExistsError):
                return sandbox_path
        return None

    blocked_path = await asyncio.get_running_loop().run_in_executor(None, write_all)
    if blocked_path is not None:
        return json_response(400, {"code": 400, "message": f"path '{blocked_path}' is a directory, or a parent of it "
                                                           "is a file"})
    for sandbox_path in destinations:
        if metadata:
            sandbox.file_metadata[sandbox_path] = dict(metadata)
        else:
            sandbox.file_metadata.pop(sandbox_path, None)
    return json_response(200, [upload_result_entry(sandbox_path) for sandbox_path in destinations])


# --- Connect RPC plumbing ----------------------------------------------------------------------------------------


def parse_request_message(rpc_name: str, raw: bytes) -> dict:
    try:
        message = json.loads(raw or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConnectError("invalid_argument", f"unmarshal message: {error}")
    schema = REQUEST_SCHEMAS.get(rpc_name)
    if schema is None:
        raise ConnectError("unimplemented", f"{rpc_name} is not implemented by this fake")
    return ProtoJsonValidator.normalize(message, schema, rpc_name)


def decode_enveloped_request(raw: bytes) -> bytes:
    if len(raw) < 5:
        raise ConnectError("invalid_argument", "protocol error: incomplete envelope")
    flags, length = raw[0], int.from_bytes(raw[1:5], "big")
    if flags & 0x01:
        raise ConnectError("internal", "protocol error: compressed message without Connect-Content-Encoding support")
    if len(raw) < 5 + length:
        raise ConnectError("invalid_argument", "protocol error: incomplete envelope")
    return raw[5:5 + length]


async def serve_unary_rpc(request: web.Request, sandbox: Sandbox, rpc_name: str) -> web.StreamResponse:
    if request.content_type != "application/json":
        return web.Response(status=415, headers={"Accept-Post": "application/json"})
    try:
        message = parse_request_message(rpc_name, await request.read())
        request["log_entry"].rpc_message = message
        handler = UNARY_HANDLERS.get(rpc_name)
        if handler is None:
            raise ConnectError("unimplemented", f"{rpc_name} is not implemented by this fake")
        result = await handler(request, sandbox, message)
    except ConnectError as error:
        return unary_connect_error(error)
    return json_response(200, result)


def selected_process(sandbox: Sandbox, message: dict) -> SandboxProcess:
    selector = message.get("process") or {}
    if "pid" in selector and selector["pid"] is not None:
        process = sandbox.processes.get(int(selector["pid"]))
        if process is not None:
            return process
        raise ConnectError("not_found", f"process with pid {selector['pid']} not found")
    if selector.get("tag") is not None:
        for process in sandbox.processes.values():
            if process.tag == selector["tag"]:
                return process
        raise ConnectError("not_found", f"process with tag {selector['tag']} not found")
    raise ConnectError("invalid_argument", "process selector (pid or tag) is required")


# --- filesystem watchers -----------------------------------------------------------------------------------------


class DirectoryWatcher:
    """Polls a directory every 0.1 s and turns differences into envd `FilesystemEvent`s.

    Why polling rather than inotify: it needs no extra package and behaves the same on every filesystem; the 0.1 s
    latency is far below what a test waits. Like inotify, a new non-empty file gives CREATE then WRITE.
    """

    POLL_SECONDS = 0.1

    def __init__(self, sandbox: Sandbox, sandbox_path: str, recursive: bool, include_entry: bool):
        self.sandbox = sandbox
        self.sandbox_path = sandbox_path
        self.recursive = recursive
        self.include_entry = include_entry
        self.pending_events: list[dict] = []
        self.changed = asyncio.Event()
        self.previous = self.snapshot()
        self.task = asyncio.get_running_loop().create_task(self.poll_forever())

    def snapshot(self) -> dict:
        root = self.sandbox.host_path_for(self.sandbox_path)
        state: dict = {}
        for directory, subdirectories, files in os.walk(root):
            for name in subdirectories + files:
                host_path = os.path.join(directory, name)
                with contextlib.suppress(OSError):
                    status = os.lstat(host_path)
                    state[os.path.relpath(host_path, root)] = (stat.S_ISDIR(status.st_mode), status.st_mtime_ns,
                                                               status.st_size, stat.S_IMODE(status.st_mode))
            if not self.recursive:
                break
        return state

    def event(self, relative_name: str, event_type: str) -> dict:
        event: dict = {"name": relative_name, "type": event_type}
        if self.include_entry and event_type != "EVENT_TYPE_REMOVE":
            with contextlib.suppress(OSError):
                event["entry"] = entry_info(self.sandbox, posixpath.join(self.sandbox_path, relative_name))
        return event

    async def poll_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.POLL_SECONDS)
            current = await loop.run_in_executor(None, self.snapshot)
            events: list[dict] = []
            for name in sorted(set(current) - set(self.previous)):
                events.append(self.event(name, "EVENT_TYPE_CREATE"))
                is_directory, _, size, _ = current[name]
                if not is_directory and size:
                    events.append(self.event(name, "EVENT_TYPE_WRITE"))
            for name in sorted(set(current) & set(self.previous)):
                old, new = self.previous[name], current[name]
                if not new[0] and (old[1], old[2]) != (new[1], new[2]):
                    events.append(self.event(name, "EVENT_TYPE_WRITE"))
                elif old[3] != new[3]:
                    events.append(self.event(name, "EVENT_TYPE_CHMOD"))
            for name in sorted(set(self.previous) - set(current)):
                events.append(self.event(name, "EVENT_TYPE_REMOVE"))
            self.previous = current
            if events:
                self.pending_events.extend(events)
                self.changed.set()

    def take_events(self) -> list[dict]:
        events, self.pending_events = self.pending_events, []
        self.changed.clear()
        return events

    def stop(self) -> None:
        self.task.cancel()


def new_watcher(request: web.Request, sandbox: Sandbox, message: dict) -> DirectoryWatcher:
    sandbox_path = required_path(sandbox, request, message)
    host_path = sandbox.host_path_for(sandbox_path)
    if not os.path.exists(host_path):
        raise ConnectError("not_found", f"path {sandbox_path} not found")
    if not os.path.isdir(host_path):
        raise ConnectError("invalid_argument", f"path {sandbox_path} not a directory")
    return DirectoryWatcher(sandbox, sandbox_path, bool(message.get("recursive")), bool(message.get("includeEntry")))


async def rpc_filesystem_create_watcher(request: web.Request, sandbox: Sandbox, message: dict) -> dict:
    watcher_id = secrets.token_hex(8)
    sandbox.watchers[watcher_id] = new_watcher(request, sandbox, message)
    return {"watcherId": watcher_id}


async def rpc_filesystem_get_watcher_events(request: web.Request, sandbox: Sandbox, message: dict) -> dict:
    watcher = sandbox.watchers.get(message.get("watcherId") or "")
    if watcher is None:
        raise ConnectError("not_found", f"watcher with id {message.get('watcherId')} not found")
    return {"events": watcher.take_events()}


async def rpc_filesystem_remove_watcher(request: web.Request, sandbox: Sandbox, message: dict) -> dict:
    watcher = sandbox.watchers.pop(message.get("watcherId") or "", None)
    if watcher is None:
        raise ConnectError("not_found", f"watcher with id {message.get('watcherId')} not found")
    watcher.stop()
    return {}


async def serve_watch_dir_stream(response: web.StreamResponse, request: web.Request, fake: FakeE2B,
                                 sandbox: Sandbox, watcher: DirectoryWatcher, keepalive_seconds: float,
                                 deadline: Optional[float]) -> None:
    """`Filesystem/WatchDir`: start event, then one frame per filesystem event, keepalives in between."""
    transport = request.transport
    if transport is not None:
        sandbox.open_stream_transports.add(transport)

    async def write_frame(payload: dict, end_of_stream: bool = False) -> None:
        await fake.wait_while_envd_hangs(sandbox.sandbox_id)
        await response.write(connect_envelope(payload, end_of_stream))

    try:
        await write_frame({"start": {}})
        last_write = time.monotonic()
        while True:
            if transport is None or transport.is_closing():
                return
            events = watcher.take_events()
            for event in events:
                await write_frame({"filesystem": event})
                last_write = time.monotonic()
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                await write_frame({"error": {"code": "deadline_exceeded", "message": "context deadline exceeded"}},
                                  True)
                return
            if now - last_write >= keepalive_seconds:
                await write_frame({"keepalive": {}})
                last_write = now
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(watcher.changed.wait(), timeout=0.2)
    except (ConnectionResetError, ConnectionError, asyncio.CancelledError):
        return
    finally:
        watcher.stop()
        sandbox.open_stream_transports.discard(transport)


# --- process.Process unary RPCs --------------------------------------------------------------------------------


async def rpc_process_list(request: web.Request, sandbox: Sandbox, message: dict) -> dict:
    return {"processes": [process.info_json() for process in sandbox.processes.values() if not process.exited]}


SIGNAL_NAMES = {"SIGNAL_SIGKILL": signal.SIGKILL, "SIGNAL_SIGTERM": signal.SIGTERM, 9: signal.SIGKILL,
                15: signal.SIGTERM}


async def rpc_process_send_signal(request: web.Request, sandbox: Sandbox, message: dict) -> dict:
    process = selected_process(sandbox, message)
    signal_number = SIGNAL_NAMES.get(message.get("signal"))
    if signal_number is None:
        raise ConnectError("invalid_argument", f"invalid signal: {message.get('signal')!r}")
    if process.exited:
        raise ConnectError("not_found", f"process with pid {process.pid} not found")
    process.signal_group(signal_number)
    return {}


async def rpc_process_send_input(request: web.Request, sandbox: Sandbox, message: dict) -> dict:
    process = selected_process(sandbox, message)
    input_message = message.get("input") or {}
    if "pty" in input_message:
        if process.pty_master_fd is None:
            raise ConnectError("failed_precondition", "pty not enabled for this process")
        try:
            os.write(process.pty_master_fd, base64.b64decode(input_message.get("pty") or ""))
        except (binascii.Error, OSError) as error:
            raise ConnectError("internal", f"error writing to pty: {error}")
        return {}
    if process.pty_master_fd is not None:
        # envd writes stdin input of a PTY process to the terminal as well.
        with contextlib.suppress(binascii.Error, OSError):
            os.write(process.pty_master_fd, base64.b64decode(input_message.get("stdin") or ""))
        return {}
    stdin_writer = process.popen.stdin
    if not process.stdin_enabled or stdin_writer is None or stdin_writer.is_closing():
        raise ConnectError("internal", "stdin not enabled or closed")
    try:
        data = base64.b64decode(input_message.get("stdin") or "")
    except binascii.Error as error:
        raise ConnectError("invalid_argument", f"stdin is not base64: {error}")
    try:
        stdin_writer.write(data)
        await stdin_writer.drain()
    except (BrokenPipeError, ConnectionResetError):
        raise ConnectError("internal", "error writing to stdin: broken pipe")
    return {}


async def rpc_process_close_stdin(request: web.Request, sandbox: Sandbox, message: dict) -> dict:
    process = selected_process(sandbox, message)
    stdin_writer = process.popen.stdin
    if not process.stdin_enabled or stdin_writer is None:
        raise ConnectError("internal", "stdin not enabled or closed")
    stdin_writer.close()
    return {}


async def rpc_process_update(request: web.Request, sandbox: Sandbox, message: dict) -> dict:
    process = selected_process(sandbox, message)
    if process.pty_master_fd is None:
        raise ConnectError("failed_precondition", "pty not enabled for this process")
    size = (message.get("pty") or {}).get("size")
    if size:
        process.resize_pty(size)
        process.signal_group(signal.SIGWINCH)
    return {}


# --- filesystem.Filesystem unary RPCs ---------------------------------------------------------------------------


def entry_info(sandbox: Sandbox, sandbox_path: str) -> dict:
    """EntryInfo in protojson form: int64 size as a string, zero values omitted."""
    host_path = sandbox.host_path_for(sandbox_path)
    link_status = os.lstat(host_path)
    is_symlink = stat.S_ISLNK(link_status.st_mode)
    try:
        target_status = os.stat(host_path) if is_symlink else link_status
    except FileNotFoundError:
        target_status = link_status
    if is_symlink:
        file_type = "FILE_TYPE_SYMLINK"
    elif stat.S_ISDIR(target_status.st_mode):
        file_type = "FILE_TYPE_DIRECTORY"
    else:
        file_type = "FILE_TYPE_FILE"
    info: dict = {"name": posixpath.basename(sandbox_path) or "/", "type": file_type, "path": sandbox_path}
    if target_status.st_size:
        info["size"] = str(target_status.st_size)
    permission_bits = stat.S_IMODE(target_status.st_mode)
    if permission_bits:
        info["mode"] = permission_bits
    info["permissions"] = stat.filemode(target_status.st_mode)
    info["owner"] = owner_name(target_status.st_uid)
    info["group"] = group_name(target_status.st_gid)
    info["modifiedTime"] = epoch_to_rfc3339(target_status.st_mtime)
    if is_symlink:
        target = os.readlink(host_path)
        if target.startswith(sandbox.filesystem_root):
            target = "/" + os.path.relpath(target, sandbox.filesystem_root)
        info["symlinkTarget"] = target
    metadata = sandbox.file_metadata.get(sandbox_path)
    if metadata:
        info["metadata"] = metadata
    return info


def owner_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def group_name(gid: int) -> str:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def request_username(request: web.Request) -> Optional[str]:
    return username_from_basic_auth(request)


def required_path(sandbox: Sandbox, request: web.Request, message: dict, field_name: str = "path") -> str:
    return sandbox.sandbox_path_for(message.get(field_name) or "", request_username(request))


async def rpc_filesystem_stat(request: web.Request, sandbox: Sandbox, message: dict) -> dict:
    sandbox_path = required_path(sandbox, request, message)
    if not os.path.lexists(sandbox.host_path_for(sandbox_path)):
        raise ConnectError("not_found", f"file not found: stat {sandbox_path}: no such file or directory")
    return {"entry": entry_info(sandbox, sandbox_path)}


async def rpc_filesystem_make_dir(request: web.Request, sandbox: Sandbox, message: dict) -> dict:
    sandbox_path = required_path(sandbox, request, message)
    host_path = sandbox.host_path_for(sandbox_path)
    if os.path.isdir(host_path):
        raise ConnectError("already_exists", f"directory already exists: {sandbox_path}")
    if os.path.lexists(host_path):
        raise ConnectError("invalid_argument", f"path already exists but it is not a directory: {sandbox_path}")
    os.makedirs(host_path, exist_ok=True)
    return {"entry": entry_info(sandbox, sandbox_path)}


async def rpc_filesystem_remove(request: web.Request, sandbox: Sandbox, message: dict) -> dict:
    sandbox_path = required_path(sandbox, request, message)
    host_path = sandbox.host_path_for(sandbox_path)
    if host_path.rstrip("/") == sandbox.filesystem_root.rstrip("/"):
        raise ConnectError("invalid_argument", "refusing to remove the sandbox root")
    if os.path.isdir(host_path) and not os.path.islink(host_path):
        await asyncio.get_running_loop().run_in_executor(None, shutil.rmtree, host_path)
    elif os.path.lexists(host_path):
        os.remove(host_path)
    else:
        raise ConnectError("not_found", f"file not found: {sandbox_path}")
    sandbox.file_metadata.pop(sandbox_path, None)
    return {}


async def rpc_filesystem_move(request: web.Request, sandbox: Sandbox, message: dict) -> dict:
    source = required_path(sandbox, request, message, "source")
    destination = required_path(sandbox, request, message, "destination")
    source_host_path = sandbox.host_path_for(source)
    if not os.path.lexists(source_host_path):
        raise ConnectError("not_found", f"source file not found: {source}")
    destination_host_path = sandbox.host_path_for(destination)
    os.makedirs(os.path.dirname(destination_host_path), exist_ok=True)
    os.replace(source_host_path, destination_host_path)
    if source in sandbox.file_metadata:
        sandbox.file_metadata[destination] = sandbox.file_metadata.pop(source)
    return {"entry": entry_info(sandbox, destination)}


async def rpc_filesystem_list_dir(request: web.Request, sandbox: Sandbox, message: dict) -> dict:
    sandbox_path = required_path(sandbox, request, message)
    host_path = sandbox.host_path_for(sandbox_path)
    if not os.path.exists(host_path):
        raise ConnectError("not_found", f"directory not found: {sandbox_path}")
    if not os.path.isdir(host_path):
        raise ConnectError("invalid_argument", f"path is not a directory: {sandbox_path}")
    depth = int(message.get("depth") or 1)

    def walk() -> list:
        entries: list = []

        def visit(directory_sandbox_path: str, remaining_depth: int) -> None:
            for name in sorted(os.listdir(sandbox.host_path_for(directory_sandbox_path))):
                child_sandbox_path = posixpath.join(directory_sandbox_path, name)
                entries.append(entry_info(sandbox, child_sandbox_path))
                child_host_path = sandbox.host_path_for(child_sandbox_path)
                if remaining_depth > 1 and os.path.isdir(child_host_path) and not os.path.islink(child_host_path):
                    visit(child_sandbox_path, remaining_depth - 1)

        visit(sandbox_path, depth)
        return entries

    return {"entries": await asyncio.get_running_loop().run_in_executor(None, walk)}


UNARY_HANDLERS = {
    "process.Process/List": rpc_process_list,
    "process.Process/SendSignal": rpc_process_send_signal,
    "process.Process/SendInput": rpc_process_send_input,
    "process.Process/CloseStdin": rpc_process_close_stdin,
    "process.Process/Update": rpc_process_update,
    "filesystem.Filesystem/Stat": rpc_filesystem_stat,
    "filesystem.Filesystem/MakeDir": rpc_filesystem_make_dir,
    "filesystem.Filesystem/Remove": rpc_filesystem_remove,
    "filesystem.Filesystem/Move": rpc_filesystem_move,
    "filesystem.Filesystem/ListDir": rpc_filesystem_list_dir,
    "filesystem.Filesystem/CreateWatcher": rpc_filesystem_create_watcher,
    "filesystem.Filesystem/GetWatcherEvents": rpc_filesystem_get_watcher_events,
    "filesystem.Filesystem/RemoveWatcher": rpc_filesystem_remove_watcher,
}


# --- process.Process streaming RPCs ----------------------------------------------------------------------------


class StreamDropped(Exception):
    """Raised to end a stream by closing the connection without the end-of-stream frame (an injected fault)."""


def make_stdin_the_controlling_terminal() -> None:
    import fcntl
    import termios

    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


async def start_process(request: web.Request, sandbox: Sandbox, message: dict) -> SandboxProcess:
    config = message.get("process") or {}
    command = config.get("cmd")
    if not command:
        raise ConnectError("invalid_argument", "process.cmd is required")
    arguments = [str(argument) for argument in (config.get("args") or [])]
    username = request_username(request)
    cwd_sandbox_path = sandbox.sandbox_path_for(config.get("cwd") or "", username)
    cwd_host_path = sandbox.host_path_for(cwd_sandbox_path)
    if not os.path.isdir(cwd_host_path):
        raise ConnectError("invalid_argument", f"cwd '{cwd_sandbox_path}' does not exist")
    home_sandbox_path = sandbox.sandbox_path_for("", username)
    environment = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "HOME": sandbox.host_path_for(home_sandbox_path),
        "USER": username or DEFAULT_USER,
        "E2B_SANDBOX": "true",
        "E2B_SANDBOX_ID": sandbox.sandbox_id,
        "E2B_TEMPLATE_ID": sandbox.template_id,
        "E2B_FAKE_SANDBOX_ROOT": sandbox.filesystem_root,
    }
    environment.update({str(key): str(value) for key, value in sandbox.env_vars.items()})
    environment.update({str(key): str(value) for key, value in (config.get("envs") or {}).items()})
    # proto3 `optional bool stdin`: envd treats an ABSENT field as stdin enabled (cloud-apis.md 1.3).
    stdin_enabled = message.get("stdin") is not False
    pty_request = message.get("pty")
    pty_master_fd: Optional[int] = None
    try:
        if pty_request is not None:
            pty_master_fd, pty_slave_fd = os.openpty()
            try:
                popen = await asyncio.create_subprocess_exec(
                    command, *arguments, cwd=cwd_host_path, env=environment,
                    stdin=pty_slave_fd, stdout=pty_slave_fd, stderr=pty_slave_fd,
                    # A new session with the terminal as controlling tty, like a login shell gets from envd.
                    start_new_session=True, preexec_fn=make_stdin_the_controlling_terminal,
                )
            finally:
                os.close(pty_slave_fd)
        else:
            popen = await asyncio.create_subprocess_exec(
                command, *arguments,
                cwd=cwd_host_path,
                env=environment,
                stdin=asyncio.subprocess.PIPE if stdin_enabled else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                # A new session makes the process a group leader, so signals reach the whole tree (killpg).
                start_new_session=True,
            )
    except (FileNotFoundError, PermissionError) as error:
        if pty_master_fd is not None:
            os.close(pty_master_fd)
        raise ConnectError("internal", f"error starting process '{command}': {error.strerror}")
    normalized_config: dict = {"cmd": command, "args": arguments, "envs": config.get("envs") or {}}
    if config.get("cwd"):
        normalized_config["cwd"] = config["cwd"]
    process = SandboxProcess(sandbox, popen, normalized_config, message.get("tag"), stdin_enabled)
    if pty_master_fd is not None:
        process.pty_master_fd = pty_master_fd
        process.resize_pty((pty_request or {}).get("size") or {})
    sandbox.processes[process.pid] = process
    process.pump_task = asyncio.get_running_loop().create_task(process.pump_output())
    return process


async def serve_streaming_rpc(request: web.Request, fake: FakeE2B, sandbox: Sandbox,
                              rpc_name: str) -> web.StreamResponse:
    if request.content_type != CONNECT_STREAM_CONTENT_TYPE:
        return web.Response(status=415, headers={"Accept-Post": CONNECT_STREAM_CONTENT_TYPE})
    response = web.StreamResponse(status=200, headers={"Content-Type": CONNECT_STREAM_CONTENT_TYPE})
    response.enable_chunked_encoding()
    timeout_header = request.headers.get("Connect-Timeout-Ms")
    deadline = time.monotonic() + int(timeout_header) / 1000 if timeout_header and timeout_header.isdigit() else None
    try:
        keepalive_seconds = float(request.headers.get("Keepalive-Ping-Interval") or DEFAULT_KEEPALIVE_SECONDS)
    except ValueError:
        keepalive_seconds = DEFAULT_KEEPALIVE_SECONDS
    keepalive_seconds = max(keepalive_seconds, 0.05)
    try:
        message = parse_request_message(rpc_name, decode_enveloped_request(await request.read()))
        request["log_entry"].rpc_message = message
        if rpc_name == "process.Process/Start":
            process = await start_process(request, sandbox, message)
            first_sequence = 0
        elif rpc_name == "process.Process/Connect":
            process = selected_process(sandbox, message)
            if process.end_delivered:
                raise ConnectError("not_found", f"process with pid {process.pid} not found")
            first_sequence = process.first_undelivered_sequence
        elif rpc_name == "filesystem.Filesystem/WatchDir":
            watcher = new_watcher(request, sandbox, message)
            await response.prepare(request)
            await serve_watch_dir_stream(response, request, fake, sandbox, watcher, keepalive_seconds, deadline)
            with contextlib.suppress(ConnectionError):
                await response.write_eof()
            return response
        else:
            raise ConnectError("unimplemented", f"{rpc_name} is not implemented by this fake")
    except ConnectError as error:
        # Handler errors on a stream arrive as 200 followed by an end-of-stream frame carrying the error.
        await response.prepare(request)
        await response.write(connect_envelope({"error": {"code": error.code, "message": error.message}}, True))
        await response.write_eof()
        return response

    await response.prepare(request)
    faults = fake.faults
    drop_after_bytes: Optional[int] = None
    if (faults.drop_stream_after_bytes is not None and faults.drop_stream_count > 0
            and fake.fault_applies_to(sandbox.sandbox_id)):
        drop_after_bytes = faults.drop_stream_after_bytes
        faults.drop_stream_count -= 1
        if faults.drop_stream_count <= 0:
            faults.drop_stream_after_bytes = None
    delivered_output_bytes = 0
    drop_at: Optional[float] = None
    if faults.drop_stream_every_seconds is not None and fake.fault_applies_to(sandbox.sandbox_id):
        drop_at = time.monotonic() + faults.drop_stream_every_seconds
    transport = request.transport
    if transport is not None:
        sandbox.open_stream_transports.add(transport)

    async def write_frame(payload: dict, end_of_stream: bool = False) -> None:
        # While envd "hangs", streams go silent too (no data, no keepalive) until the fault is cleared.
        await fake.wait_while_envd_hangs(sandbox.sandbox_id)
        await response.write(connect_envelope(payload, end_of_stream))

    try:
        await write_frame({"event": {"start": {"pid": process.pid}}})
        if drop_after_bytes == 0:
            # The client learns the pid and nothing else.
            raise StreamDropped()
        next_sequence = first_sequence
        last_write = time.monotonic()
        while True:
            pending = process.events_from(next_sequence)
            if drop_at is not None and time.monotonic() >= drop_at:
                raise StreamDropped()
            if not pending:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    if rpc_name == "process.Process/Start":
                        # envd runs the process under the request context: Connect-Timeout-Ms is its lifetime.
                        process.signal_group(signal.SIGKILL)
                    await write_frame({"error": {"code": "deadline_exceeded",
                                                 "message": "context deadline exceeded"}}, True)
                    break
                if transport is None or transport.is_closing():
                    break
                wait_seconds = min(keepalive_seconds - (now - last_write), 0.5)
                if drop_at is not None:
                    wait_seconds = min(wait_seconds, max(drop_at - now, 0.01))
                if deadline is not None:
                    wait_seconds = min(wait_seconds, deadline - now)
                if wait_seconds <= 0:
                    await write_frame({"event": {"keepalive": {}}})
                    last_write = time.monotonic()
                    continue
                async with process.changed:
                    # Re-check under the lock so an event appended since the scan above is not waited past.
                    if not process.events_from(next_sequence):
                        with contextlib.suppress(asyncio.TimeoutError):
                            await asyncio.wait_for(process.changed.wait(), timeout=wait_seconds)
                continue
            if transport is None or transport.is_closing():
                # The client hung up: leave the events buffered for whoever re-attaches.
                break
            for record in pending:
                await write_frame({"event": record.event})
                last_write = time.monotonic()
                next_sequence = record.sequence + 1
                process.mark_delivered(record)
                delivered_output_bytes += record.output_bytes
                if drop_after_bytes is not None and delivered_output_bytes >= drop_after_bytes:
                    raise StreamDropped()
                if drop_at is not None and time.monotonic() >= drop_at:
                    raise StreamDropped()
            if any("end" in record.event for record in pending):
                await write_frame({}, True)
                break
    except StreamDropped:
        # Close the socket mid-body: the client sees a truncated chunked stream with no end-of-stream frame.
        if transport is not None:
            transport.close()
        return response
    except (ConnectionResetError, ConnectionError, asyncio.CancelledError):
        return response
    finally:
        sandbox.open_stream_transports.discard(transport)
    with contextlib.suppress(ConnectionError):
        await response.write_eof()
    return response


# ---------------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------------


def build_application(fake: FakeE2B) -> web.Application:
    # 1 GiB uploads; the default 1 MiB limit would reject ordinary batch uploads.
    application = web.Application(middlewares=[front_door], client_max_size=1024 ** 3)
    application["fake"] = fake

    async def unreachable(_request: web.Request) -> web.Response:
        # Every request is answered by the front_door middleware; this catch-all only makes aiohttp route to it.
        return web.Response(status=500)

    application.router.add_route("*", "/{tail:.*}", unreachable)

    async def start_reaper(app: web.Application) -> None:
        app["reaper"] = asyncio.get_running_loop().create_task(fake.reap_expired_sandboxes())

    async def stop_everything(app: web.Application) -> None:
        app["reaper"].cancel()
        for sandbox in list(fake.sandboxes.values()):
            for process in sandbox.processes.values():
                process.signal_group(signal.SIGCONT)
                process.signal_group(signal.SIGKILL)

    application.on_startup.append(start_reaper)
    application.on_cleanup.append(stop_everything)
    return application


async def serve(host: str, port: int, fake: FakeE2B) -> None:
    runner = web.AppRunner(build_application(fake), handle_signals=False, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_port = site._server.sockets[0].getsockname()[1]  # aiohttp has no public accessor for the bound port.
    print(f"LISTENING {bound_port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop.set)
    if SERVER_SETTINGS.exit_when_stdin_closes:
        # A test harness that cannot run cleanup code (a process-wide fake in a static) still ends the fake: its
        # end of our stdin closes when it exits.
        import threading

        def wait_for_stdin_eof() -> None:
            with contextlib.suppress(OSError, ValueError):
                while sys.stdin.buffer.read(4096):
                    pass
            loop.call_soon_threadsafe(stop.set)

        threading.Thread(target=wait_for_stdin_eof, daemon=True).start()
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port; the chosen one is printed")
    parser.add_argument("--api-key", default=os.environ.get("E2B_FAKE_API_KEY", "e2b_test_key"),
                        help="the X-API-Key the control plane accepts (env E2B_FAKE_API_KEY)")
    parser.add_argument("--root", default=os.environ.get("E2B_FAKE_ROOT"),
                        help="directory holding one private directory per sandbox (default: a temp dir)")
    parser.add_argument("--envd-version", default=SERVER_SETTINGS.envd_version)
    parser.add_argument("--exit-when-stdin-closes", action="store_true",
                        help="stop (and kill every process tree) when stdin reaches end of file")
    arguments = parser.parse_args()
    # stdout carries only the LISTENING line; aiohttp's error traces go to stderr.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="e2b-fake %(levelname)s %(message)s")
    temporary_root = None
    if arguments.root is None:
        temporary_root = tempfile.mkdtemp(prefix="e2b-fake-")
        arguments.root = temporary_root
    os.makedirs(arguments.root, exist_ok=True)
    SERVER_SETTINGS.api_key = arguments.api_key
    SERVER_SETTINGS.root = os.path.abspath(arguments.root)
    SERVER_SETTINGS.envd_version = arguments.envd_version
    SERVER_SETTINGS.exit_when_stdin_closes = arguments.exit_when_stdin_closes
    try:
        asyncio.run(serve_with_fake(arguments.host, arguments.port))
    finally:
        if temporary_root is not None:
            shutil.rmtree(temporary_root, ignore_errors=True)


async def serve_with_fake(host: str, port: int) -> None:
    traffic.install()
    await serve(host, port, FakeE2B(SERVER_SETTINGS))


if __name__ == "__main__":
    main()
