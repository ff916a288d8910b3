"""A faithful fake of the Vercel Sandbox REST API (v1, and v2/v3 named sandboxes with sessions) that runs real processes, with a test clock and fault injection.

Why this exists: no test machine reaches Vercel, yet the Rust driver and the official SDK (`@vercel/sandbox`) must be
exercised against Vercel's real wire format (cloud-apis.md section 3). One aiohttp process serves:

* the API under `/api` (the SDK's base `https://vercel.com/api`), and the same paths without `/api` (the REST
  reference's base `https://api.vercel.com`);
* a test-only admin API under `/_admin/` (faults, request log, sandboxes with the file bytes each session received
  and sent, the test clock); never part of Vercel.

Path mapping (commands run for real, without a chroot): every session owns a private directory
`<root>/<sessionId>/fs`, which stands for the VM's `/`. The sandbox path `/vercel/sandbox/a.txt` is the host path
`<root>/<sessionId>/fs/vercel/sandbox/a.txt`. The mapping is applied to the file endpoints and a command's `cwd`;
commands also get `HOME` (the mapped `/home/vercel-sandbox`) and `VERCEL_FAKE_SANDBOX_ROOT` (the mapped `/`).
Absolute paths written inside command text are NOT rewritten: tests use relative paths or `$VERCEL_FAKE_SANDBOX_ROOT`.

Time: every deadline (session timeout, command timeout, stop and snapshot transitions, the edge's stream cut) is read
from a test clock, which runs at wall-clock speed and which `POST /_admin/clock {"advanceSeconds":N}` moves forward,
so a test can expire a 45-minute sandbox or reproduce the five-minute edge cut without waiting.
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import contextlib
import io
import json
import logging
import os
import posixpath
import re
import secrets
import shutil
import signal
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from aiohttp import web

import traffic

SANDBOX_CWD = "/vercel/sandbox"
SANDBOX_HOME = "/home/vercel-sandbox"
DEFAULT_REGION = "iad1"
DEFAULT_TIMEOUT_MS = 300_000
# Vercel's longest plan limit (Pro/Enterprise: 5 hours); extending past it is refused, as on Vercel.
MAX_TIMEOUT_MS = 5 * 60 * 60 * 1000
MEMORY_MB_PER_VCPU = 2048
NDJSON_CONTENT_TYPE = "application/x-ndjson"
# How often waiting streams and the reaper look at the test clock.
TICK_SECONDS = 0.05


def json_response(status: int, body: Any, headers: Optional[dict] = None) -> web.Response:
    return web.Response(status=status, body=json.dumps(body, separators=(",", ":")).encode(),
                        content_type="application/json", headers=headers)


def api_error(status: int, code: str, message: str, headers: Optional[dict] = None, **extra: Any) -> web.Response:
    """Vercel's error body: `{"error":{"code":…,"message":…}}` (extra fields such as `invalidToken` go inside)."""
    return json_response(status, {"error": {"code": code, "message": message, **extra}}, headers)


class ApiFailure(Exception):
    """Raised by handlers to answer with a Vercel error body."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def response(self) -> web.Response:
        return api_error(self.status, self.code, self.message)


class StreamCut(Exception):
    """Ends a streamed response by closing the connection mid-body (an injected edge cut)."""


# ---------------------------------------------------------------------------------------------------------------
# The test clock, faults and the request log
# ---------------------------------------------------------------------------------------------------------------


class TestClock:
    """Epoch milliseconds that run with the wall clock plus whatever the admin API has advanced them by."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def now_ms(self) -> int:
        return int(time.time() * 1000) + self.offset_ms


@dataclass
class FaultSettings:
    """Faults a test turns on through `POST /_admin/faults`; each counter is consumed by the requests it hits."""

    # When set, every fault below hits only requests about this sandbox: its name, a session id or a v1 sandbox id.
    sandbox: Optional[str] = None
    cut_stream_after_bytes: Optional[int] = None
    cut_stream_count: int = 1
    # Standing: every NDJSON stream (and every blocking `?wait=true`) is cut once it has been open this many seconds
    # of test-clock time, like Vercel's edge after about five minutes. Count-limited by edge_cut_count when set.
    edge_cut_seconds: Optional[float] = None
    edge_cut_count: Optional[int] = None
    rate_limit_next: int = 0
    retry_after_seconds: int = 1
    error_next: int = 0
    error_status: int = 503
    error_code: Optional[str] = None
    hang: bool = False
    # The token the API accepts from now on (a revoked or rotated token); None keeps the one given on the command line.
    token: Optional[str] = None
    stopping_seconds: float = 0.0
    snapshotting_seconds: float = 0.0

    def to_json(self) -> dict:
        return {
            "sandbox": self.sandbox,
            "cutStreamAfterBytes": self.cut_stream_after_bytes,
            "cutStreamCount": self.cut_stream_count,
            "edgeCutSeconds": self.edge_cut_seconds,
            "edgeCutCount": self.edge_cut_count,
            "rateLimitNext": self.rate_limit_next,
            "retryAfter": self.retry_after_seconds,
            "errorNext": self.error_next,
            "errorStatus": self.error_status,
            "errorCode": self.error_code,
            "hang": self.hang,
            "tokenReplaced": self.token is not None,
            "stoppingSeconds": self.stopping_seconds,
            "snapshottingSeconds": self.snapshotting_seconds,
        }


@dataclass
class RequestLogEntry:
    sequence: int
    time_ms: int
    method: str
    path: str
    query: str
    route: str = ""
    session_id: Optional[str] = None
    sandbox_name: Optional[str] = None
    status: Optional[int] = None
    headers: dict = field(default_factory=dict)
    body: Any = None
    # True when the server cut the response (a fault) instead of finishing it.
    cut: bool = False

    def to_json(self) -> dict:
        return {"seq": self.sequence, "time": self.time_ms, "method": self.method, "path": self.path,
                "query": self.query, "route": self.route, "sessionId": self.session_id,
                "sandboxName": self.sandbox_name, "status": self.status, "headers": self.headers, "body": self.body,
                "cut": self.cut}


# ---------------------------------------------------------------------------------------------------------------
# Commands, sessions, sandboxes, snapshots
# ---------------------------------------------------------------------------------------------------------------


def process_group_members(leader: int) -> list[int]:
    """The processes of `leader`'s process group other than the leader (read from /proc)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == leader:
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                status = handle.read()
        except OSError:
            continue
        # Fields after the parenthesised command name: state, ppid, pgrp, …
        fields = status[status.rindex(")") + 2:].split()
        if len(fields) > 2 and int(fields[2]) == leader:
            members.append(int(entry))
    return members


def bubblewrap_root_arguments() -> list[str]:
    """bwrap arguments that rebuild the host's `/` on a fresh root, leaving `/vercel` free for each session's own.

    Why a fresh root instead of binding `/` whole: the mount point `/vercel` must not be created on the host.
    """
    arguments: list[str] = []
    for name in sorted(os.listdir("/")):
        if name in ("proc", "dev", "vercel"):
            continue
        host_path = "/" + name
        if os.path.islink(host_path):
            arguments += ["--symlink", os.readlink(host_path), host_path]
        else:
            arguments += ["--dev-bind", host_path, host_path]
    return arguments + ["--proc", "/proc", "--dev-bind", "/dev", "/dev"]


def probe_bubblewrap() -> Optional[list[str]]:
    """The root arguments when bwrap works here (installed, and allowed to make mount namespaces), else None."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return None
    arguments = bubblewrap_root_arguments()
    with tempfile.TemporaryDirectory(prefix="vercel-fake-probe-") as probe_directory:
        os.makedirs(os.path.join(probe_directory, "sandbox"))
        try:
            import subprocess

            finished = subprocess.run([bwrap, *arguments, "--bind", probe_directory, "/vercel", "--chdir",
                                       "/vercel/sandbox", "true"], capture_output=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
    return arguments if finished.returncode == 0 else None


class SessionCommand:
    """A real OS process (its own process group) whose output is kept whole, so the logs endpoint replays it."""

    def __init__(self, session: "Session", popen: asyncio.subprocess.Process, name: str, args: list, cwd: str,
                 started_at: int, deadline_ms: Optional[int]):
        self.session = session
        self.command_id = "cmd_" + secrets.token_hex(12)
        self.popen = popen
        self.pid = popen.pid
        self.name = name
        self.args = args
        self.cwd = cwd
        self.started_at = started_at
        self.deadline_ms = deadline_ms
        self.exit_code: Optional[int] = None
        self.finished_at: Optional[int] = None
        # Every output chunk as `(stream, text)`, in the order the server read them.
        self.log_lines: list[tuple[str, str]] = []
        self.log_bytes = 0
        self.changed = asyncio.Condition()
        self.pump_task: Optional[asyncio.Task] = None
        # Set when the session's end killed it: its streams end with an error line, not with an exit code.
        self.killed_by_stop = False
        # True when the process is bwrap, with the command as its child.
        self.isolated = False

    async def notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def pump_output(self, clock: TestClock) -> None:
        async def pump(stream: Optional[asyncio.StreamReader], stream_name: str) -> None:
            if stream is None:
                return
            # `data` is UTF-8 text on the wire; a character split across two reads must not turn into garbage.
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            while True:
                chunk = await stream.read(32768)
                text = decoder.decode(chunk, final=not chunk)
                if text:
                    self.log_lines.append((stream_name, text))
                    self.log_bytes += len(chunk)
                    await self.notify()
                if not chunk:
                    return

        await asyncio.gather(pump(self.popen.stdout, "stdout"), pump(self.popen.stderr, "stderr"))
        returncode = await self.popen.wait()
        # A process ended by a signal reports 128 + the signal number, as a shell (and Vercel: 137 on timeout) does.
        self.exit_code = returncode if returncode >= 0 else 128 - returncode
        self.finished_at = clock.now_ms()
        await self.notify()

    def signal_group(self, signal_number: int) -> None:
        """Signals the command's process group; under bubblewrap, everyone in it but bwrap itself.

        Why spare bwrap: it passes its child's exit status on (128 + the signal when the signal killed it, or the
        code a trap chose), which it cannot do once the same signal has killed it. If the child is not there yet,
        bwrap gets the signal, so it is never lost.
        """
        if self.isolated and signal_number != signal.SIGKILL:
            members = process_group_members(self.pid)
            if members:
                for member in members:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(member, signal_number)
                return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal_number)

    def to_json(self, generation: str) -> dict:
        body: dict = {"id": self.command_id, "name": self.name, "args": self.args, "cwd": self.cwd}
        if generation == "v1":
            body["sandboxId"] = self.session.session_id
        else:
            body["sessionId"] = self.session.session_id
        body["exitCode"] = self.exit_code
        body["startedAt"] = self.started_at
        if self.exit_code is not None and self.finished_at is not None:
            body["durationMs"] = max(0, self.finished_at - self.started_at)
        return body


@dataclass
class Session:
    """One VM: a v1 sandbox, or one session of a named (v2) sandbox."""

    session_id: str
    generation: str  # "v1" or "v2": which path family serves it
    project_id: str
    host_root: str
    runtime: Optional[str]
    vcpus: int
    timeout_ms: int
    started_at: int
    env: dict
    ports: list
    sandbox_name: Optional[str] = None
    source_snapshot_id: Optional[str] = None
    network_policy: Any = None
    status: str = "running"
    stopped_at: Optional[int] = None
    requested_stop_at: Optional[int] = None
    snapshotted_at: Optional[int] = None
    updated_at: int = 0
    # While `stopping` or `snapshotting`: when the transition ends, and what to do then.
    transition_done_at: Optional[int] = None
    pending_snapshot: Optional["SnapshotRecord"] = None
    commands: dict = field(default_factory=dict)
    routes: list = field(default_factory=list)
    # Transports of open streams: a stopped VM takes its connections with it (after the final error line).
    open_stream_transports: set = field(default_factory=set)

    @property
    def filesystem_root(self) -> str:
        return os.path.join(self.host_root, "fs")

    @property
    def deadline_ms(self) -> int:
        return self.started_at + self.timeout_ms

    def sandbox_path_for(self, path: str, cwd: Optional[str] = None) -> str:
        """Normalizes a sandbox path; relative paths resolve against `cwd`, else the sandbox's `/vercel/sandbox`."""
        base = cwd if cwd and cwd.startswith("/") else posixpath.join(SANDBOX_CWD, cwd or "")
        if not path:
            path = base
        if not path.startswith("/"):
            path = posixpath.join(base, path)
        # normpath on an absolute path cannot climb above "/", so the host path stays inside the private directory.
        return posixpath.normpath(path).replace("//", "/")

    def host_path_for(self, sandbox_path: str) -> str:
        return os.path.join(self.filesystem_root, sandbox_path.lstrip("/"))

    def mark_status(self, status: str, now_ms: int) -> None:
        self.status = status
        self.updated_at = now_ms

    def to_json(self) -> dict:
        body: dict = {
            "id": self.session_id,
            "memory": self.vcpus * MEMORY_MB_PER_VCPU,
            "vcpus": self.vcpus,
            "region": DEFAULT_REGION,
            "runtime": self.runtime or "node22",
            "timeout": self.timeout_ms,
            "status": self.status,
            "requestedAt": self.started_at,
            "startedAt": self.started_at,
            "createdAt": self.started_at,
            "cwd": SANDBOX_CWD,
            "updatedAt": self.updated_at or self.started_at,
            "networkPolicy": response_network_policy(self.network_policy),
        }
        if self.requested_stop_at is not None:
            body["requestedStopAt"] = self.requested_stop_at
        if self.stopped_at is not None:
            body["stoppedAt"] = self.stopped_at
            body["duration"] = self.stopped_at - self.started_at
        if self.source_snapshot_id is not None:
            body["sourceSnapshotId"] = self.source_snapshot_id
        if self.snapshotted_at is not None:
            body["snapshottedAt"] = self.snapshotted_at
        return body


@dataclass
class NamedSandbox:
    """A v2 sandbox: a name, settings for its sessions, and the session currently serving it."""

    name: str
    project_id: str
    persistent: bool
    runtime: Optional[str]
    image: Optional[str]
    vcpus: int
    timeout_ms: int
    ports: list
    env: dict
    tags: dict
    created_at: int
    current_session_id: str
    network_policy: Any = None
    current_snapshot_id: Optional[str] = None
    updated_at: int = 0
    extra: dict = field(default_factory=dict)

    def to_json(self, session: Optional[Session]) -> dict:
        body: dict = {
            "name": self.name,
            "persistent": self.persistent,
            "region": DEFAULT_REGION,
            "vcpus": self.vcpus,
            "memory": self.vcpus * MEMORY_MB_PER_VCPU,
            "runtime": self.runtime or "node22",
            "timeout": self.timeout_ms,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at or self.created_at,
            "currentSessionId": self.current_session_id,
            "status": session.status if session else "stopped",
            "statusUpdatedAt": (session.updated_at or session.started_at) if session else self.created_at,
            "cwd": SANDBOX_CWD,
            "tags": self.tags,
            "networkPolicy": response_network_policy(self.network_policy),
        }
        if self.image is not None:
            body["image"] = self.image
        if self.current_snapshot_id is not None:
            body["currentSnapshotId"] = self.current_snapshot_id
        body.update(self.extra)
        return body


@dataclass
class SnapshotRecord:
    snapshot_id: str
    source_session_id: str
    project_id: str
    host_root: str
    size_bytes: int
    created_at: int
    expires_at: Optional[int]
    sandbox_name: Optional[str] = None
    status: str = "created"
    updated_at: int = 0

    def to_json(self, generation: str) -> dict:
        body: dict = {"id": self.snapshot_id}
        if generation == "v1":
            body["sourceSandboxId"] = self.source_session_id
        else:
            body["sourceSessionId"] = self.source_session_id
        body.update({"region": DEFAULT_REGION, "status": self.status, "sizeBytes": self.size_bytes,
                     "createdAt": self.created_at, "updatedAt": self.updated_at or self.created_at})
        if self.expires_at is not None:
            body["expiresAt"] = self.expires_at
        return body


def response_network_policy(policy: Any) -> dict:
    """Vercel answers with the legacy policy shape whatever form the request used (the SDK's response validator)."""
    if policy is None:
        return {"mode": "allow-all"}
    if isinstance(policy, str):
        return {"mode": policy}
    if isinstance(policy, dict):
        if policy.get("mode") in ("allow-all", "deny-all", "custom"):
            return policy
        answer: dict = {"mode": "custom"}
        allow = policy.get("allow")
        if isinstance(allow, list):
            answer["allowedDomains"] = allow
        elif isinstance(allow, dict):
            answer["allowedDomains"] = list(allow)
        subnets = policy.get("subnets") or {}
        if subnets.get("allow"):
            answer["allowedCIDRs"] = subnets["allow"]
        if subnets.get("deny"):
            answer["deniedCIDRs"] = subnets["deny"]
        return answer
    return {"mode": "allow-all"}


def directory_size(path: str) -> int:
    total = 0
    for directory, _subdirectories, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(directory, name)).st_size
    return total


@dataclass
class ServerSettings:
    token: str
    root: str
    team_id: Optional[str] = None
    exit_when_stdin_closes: bool = False
    # The bubblewrap arguments that rebuild the host's `/` (all but /vercel) for each command; None runs commands
    # directly, where an absolute `/vercel/...` in command text means the host's.
    bubblewrap_root_arguments: Optional[list] = None


class FakeVercel:
    """All state of the fake: sandboxes, sessions, snapshots, the clock, faults and the request log."""

    def __init__(self, settings: ServerSettings):
        self.settings = settings
        self.clock = TestClock()
        self.sandboxes: dict[str, NamedSandbox] = {}
        self.sessions: dict[str, Session] = {}
        self.snapshots: dict[str, SnapshotRecord] = {}
        self.faults = FaultSettings()
        self.hang_changed = asyncio.Event()
        self.request_log: list[RequestLogEntry] = []
        # File bytes per session: the gzip tar bodies `fs/write` received, and what `fs/read` sent.
        self.traffic = traffic.Counters()
        self.upload_drop = traffic.UploadDrop()
        self.next_request_sequence = 1
        # The port this server answers on, once bound: route URLs point back here (as `SUB.localhost:PORT`) so that
        # previews are reachable, and requests with such a Host are forwarded to the session's port.
        self.public_port: Optional[int] = None

    # --- faults ------------------------------------------------------------------------------------------------

    def apply_faults(self, body: dict) -> None:
        faults = self.faults
        self.upload_drop.apply(body)
        if "sandbox" in body:
            faults.sandbox = body["sandbox"] or None
        if "cutStreamAfterBytes" in body:
            faults.cut_stream_after_bytes = body["cutStreamAfterBytes"]
            faults.cut_stream_count = int(body.get("cutStreamCount", 1))
        elif "cutStreamCount" in body:
            faults.cut_stream_count = int(body["cutStreamCount"])
        if "edgeCutSeconds" in body:
            faults.edge_cut_seconds = body["edgeCutSeconds"]
        if "edgeCutCount" in body:
            faults.edge_cut_count = body["edgeCutCount"]
        if "rateLimitNext" in body:
            faults.rate_limit_next = int(body["rateLimitNext"])
        if "retryAfter" in body:
            faults.retry_after_seconds = int(body["retryAfter"])
        if "errorNext" in body:
            faults.error_next = int(body["errorNext"])
        if "errorStatus" in body:
            faults.error_status = int(body["errorStatus"])
        if "errorCode" in body:
            faults.error_code = body["errorCode"]
        if "hang" in body:
            faults.hang = bool(body["hang"])
        if "token" in body:
            faults.token = body["token"]
        if "stoppingSeconds" in body:
            faults.stopping_seconds = float(body["stoppingSeconds"])
        if "snapshottingSeconds" in body:
            faults.snapshotting_seconds = float(body["snapshottingSeconds"])
        self.wake_hung_requests()
        for target in as_list(body.get("stopSession")):
            session = self.find_session(target)
            if session is not None and session.status in ("running", "pending"):
                self.stop_session(session, "stopped from outside (test fault)")
        for target in as_list(body.get("deleteSandbox")):
            self.delete_from_outside(target)

    def reset_faults(self) -> None:
        self.faults = FaultSettings()
        self.upload_drop = traffic.UploadDrop()
        self.wake_hung_requests()

    def wake_hung_requests(self) -> None:
        self.hang_changed.set()
        self.hang_changed = asyncio.Event()

    def fault_applies_to(self, scope: set) -> bool:
        return self.faults.sandbox is None or self.faults.sandbox in scope

    async def wait_while_hung(self, scope: set) -> None:
        while self.faults.hang and self.fault_applies_to(scope):
            await self.hang_changed.wait()

    def accepted_token(self) -> str:
        return self.faults.token if self.faults.token is not None else self.settings.token

    # --- lookups -----------------------------------------------------------------------------------------------

    def find_session(self, target: str) -> Optional[Session]:
        """A session by id, or the current session of a named sandbox."""
        if target in self.sessions:
            return self.sessions[target]
        sandbox = self.sandboxes.get(target)
        if sandbox is not None:
            return self.sessions.get(sandbox.current_session_id)
        return None

    def scope_of(self, session_id: Optional[str], sandbox_name: Optional[str]) -> set:
        scope = {value for value in (session_id, sandbox_name) if value}
        if session_id and session_id in self.sessions and self.sessions[session_id].sandbox_name:
            scope.add(self.sessions[session_id].sandbox_name)
        if sandbox_name and sandbox_name in self.sandboxes:
            scope.add(self.sandboxes[sandbox_name].current_session_id)
        return scope

    # --- session lifecycle -------------------------------------------------------------------------------------

    def new_session(self, generation: str, project_id: str, runtime: Optional[str], vcpus: int, timeout_ms: int,
                    env: dict, ports: list, source: Optional[dict], network_policy: Any,
                    sandbox_name: Optional[str] = None, restore_snapshot: Optional[SnapshotRecord] = None) -> Session:
        session_id = "sbx_" + secrets.token_hex(12)
        host_root = os.path.join(self.settings.root, session_id)
        filesystem_root = os.path.join(host_root, "fs")
        snapshot = restore_snapshot
        if snapshot is None and isinstance(source, dict) and source.get("type") == "snapshot":
            snapshot = self.snapshots.get(str(source.get("snapshotId")))
            if snapshot is None or snapshot.status != "created":
                raise ApiFailure(404, "snapshot_not_found", "The snapshot was not found.")
            if snapshot.expires_at is not None and snapshot.expires_at <= self.clock.now_ms():
                raise ApiFailure(410, "snapshot_not_found", "The snapshot has expired.")
        if snapshot is not None:
            shutil.copytree(snapshot.host_root, filesystem_root, symlinks=True)
        for directory in (SANDBOX_CWD, SANDBOX_HOME, "/tmp"):
            os.makedirs(os.path.join(filesystem_root, directory.lstrip("/")), exist_ok=True)
        now = self.clock.now_ms()
        session = Session(session_id=session_id, generation=generation, project_id=project_id, host_root=host_root,
                          runtime=runtime, vcpus=vcpus, timeout_ms=timeout_ms, started_at=now, env=dict(env or {}),
                          ports=list(ports or []), sandbox_name=sandbox_name,
                          source_snapshot_id=snapshot.snapshot_id if snapshot else None,
                          network_policy=network_policy, updated_at=now)
        session.routes = [self.new_route(port) for port in session.ports]
        self.sessions[session_id] = session
        return session

    def new_route(self, port: int) -> dict:
        # Subdomains are opaque, server-made names (cloud-apis.md 3.3): never derived from the id or the port. Vercel
        # answers `https://SUB.vercel.run`; the fake answers a URL that reaches itself, and forwards it by Host.
        subdomain = "sb-" + secrets.token_hex(6)
        url = (f"http://{subdomain}.localhost:{self.public_port}" if self.public_port
               else f"https://{subdomain}.vercel.run")
        return {"url": url, "subdomain": subdomain, "port": int(port)}

    def route_for_host(self, host: str) -> Optional[tuple]:
        """The (session, route) a preview Host (`SUB.localhost[:PORT]` or `SUB.vercel.run`) names, if any."""
        name = host.split(":", 1)[0].lower()
        if not (name.endswith(".localhost") or name.endswith(".vercel.run")):
            return None
        subdomain = name.split(".", 1)[0]
        for session in self.sessions.values():
            for route in session.routes:
                if route["subdomain"] == subdomain:
                    return session, route
        return None

    def set_ports(self, session: Session, ports: list) -> None:
        kept = {route["port"]: route for route in session.routes}
        session.ports = [int(port) for port in ports]
        session.routes = [kept.get(port) or self.new_route(port) for port in session.ports]

    def kill_processes(self, session: Session) -> None:
        for command in session.commands.values():
            if command.exit_code is None:
                command.killed_by_stop = True
                command.signal_group(signal.SIGCONT)
                command.signal_group(signal.SIGKILL)

    def stop_session(self, session: Session, reason: str, snapshot: Optional[SnapshotRecord] = None) -> None:
        """Kills every process and moves the session to `stopping`/`snapshotting`, or straight to `stopped`."""
        now = self.clock.now_ms()
        session.requested_stop_at = now
        self.kill_processes(session)
        transition_seconds = self.faults.snapshotting_seconds if snapshot else self.faults.stopping_seconds
        session.pending_snapshot = snapshot
        if transition_seconds > 0:
            session.transition_done_at = now + int(transition_seconds * 1000)
            session.mark_status("snapshotting" if snapshot else "stopping", now)
        else:
            self.finish_stop(session)
        logging.info("session %s stopping: %s", session.session_id, reason)

    def finish_stop(self, session: Session) -> None:
        now = self.clock.now_ms()
        snapshot = session.pending_snapshot
        session.pending_snapshot = None
        session.transition_done_at = None
        sandbox = self.sandboxes.get(session.sandbox_name or "")
        if snapshot is None and sandbox is not None and sandbox.persistent and os.path.isdir(session.filesystem_root):
            # A persistent sandbox snapshots itself on every stop; resuming starts from that snapshot.
            snapshot = self.take_snapshot(session, expiration_ms=None)
        if snapshot is not None:
            self.complete_snapshot(session, snapshot)
            session.snapshotted_at = now
            if sandbox is not None and sandbox.persistent:
                sandbox.current_snapshot_id = snapshot.snapshot_id
        session.stopped_at = now
        session.mark_status("stopped", now)
        for transport in list(session.open_stream_transports):
            # Streams see the status change and write their error line first; what is still open a moment later
            # is closed, as the VM's end takes its connections with it.
            asyncio.get_running_loop().call_later(
                0.5, lambda open_transport=transport: open_transport.close()
                if open_transport in session.open_stream_transports else None)
        if not (sandbox is not None and sandbox.persistent):
            # A stopped VM's disk is gone (snapshots are copies).
            asyncio.get_running_loop().run_in_executor(None, shutil.rmtree, session.host_root, True)

    def take_snapshot(self, session: Session, expiration_ms: Optional[int]) -> SnapshotRecord:
        """Records a snapshot; its files are copied when the session's processes are gone (complete_snapshot)."""
        now = self.clock.now_ms()
        snapshot_id = "snap_" + secrets.token_hex(12)
        # Vercel's default expiration is 30 days; 0 means never.
        if expiration_ms is None:
            expiration_ms = 30 * 24 * 3600 * 1000
        record = SnapshotRecord(snapshot_id=snapshot_id, source_session_id=session.session_id,
                                project_id=session.project_id,
                                host_root=os.path.join(self.settings.root, "snapshots", snapshot_id),
                                size_bytes=0, created_at=now,
                                expires_at=(now + expiration_ms) if expiration_ms else None,
                                sandbox_name=session.sandbox_name, updated_at=now)
        self.snapshots[snapshot_id] = record
        return record

    def complete_snapshot(self, session: Session, snapshot: SnapshotRecord) -> None:
        if os.path.isdir(session.filesystem_root) and not os.path.exists(snapshot.host_root):
            shutil.copytree(session.filesystem_root, snapshot.host_root, symlinks=True)
        snapshot.size_bytes = directory_size(snapshot.host_root) if os.path.isdir(snapshot.host_root) else 0

    def delete_from_outside(self, target: str) -> None:
        sandbox = self.sandboxes.pop(target, None)
        if sandbox is not None:
            session = self.sessions.get(sandbox.current_session_id)
            if session is not None:
                self.forget_session(session)
            return
        session = self.sessions.get(target)
        if session is not None:
            self.sandboxes.pop(session.sandbox_name or "", None)
            self.forget_session(session)

    def forget_session(self, session: Session) -> None:
        self.kill_processes(session)
        self.sessions.pop(session.session_id, None)
        session.mark_status("stopped", self.clock.now_ms())
        for transport in list(session.open_stream_transports):
            transport.close()
        asyncio.get_running_loop().run_in_executor(None, shutil.rmtree, session.host_root, True)

    async def run_reaper(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            try:
                self.reap_once()
            except Exception:
                # One bad session must not stop expiry for all the others; the trace goes to stderr.
                logging.exception("the reaper failed; retrying")

    def reap_once(self) -> None:
        """Enforces session timeouts, command timeouts and the end of stop/snapshot transitions."""
        now = self.clock.now_ms()
        for session in list(self.sessions.values()):
            if session.status in ("running", "pending") and session.deadline_ms <= now:
                self.stop_session(session, "timeout reached")
            if session.transition_done_at is not None and session.transition_done_at <= now:
                self.finish_stop(session)
            for command in session.commands.values():
                if command.exit_code is None and command.deadline_ms is not None and command.deadline_ms <= now:
                    command.deadline_ms = None
                    command.signal_group(signal.SIGKILL)
        for snapshot in self.snapshots.values():
            if snapshot.status == "created" and snapshot.expires_at is not None and snapshot.expires_at <= now:
                snapshot.status = "deleted"
                snapshot.updated_at = now
                shutil.rmtree(snapshot.host_root, ignore_errors=True)


def as_list(value: Any) -> list:
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


# ---------------------------------------------------------------------------------------------------------------
# HTTP front door: admin, auth, faults, routing
# ---------------------------------------------------------------------------------------------------------------

SESSION_PREFIX = r"^/v[23]/sandboxes/sessions/(?P<session>[^/]+)"
V1_PREFIX = r"^/v1/sandboxes/(?P<session>(?!snapshots(?:/|$))[^/]+)"
# (method, pattern, handler, route template); the patterns are anchored and disjoint, so order does not matter.
ROUTES: list[tuple[str, re.Pattern, Any, str]] = []


def route(method: str, pattern: str, template: str):
    def register(handler):
        ROUTES.append((method, re.compile(pattern + "$"), handler, template))
        return handler

    return register


# Headers tests may assert on (what a client sent); credentials are deliberately absent so the log never holds them.
LOGGED_REQUEST_HEADERS = ("Content-Type", "X-Cwd", "User-Agent", "Content-Encoding", "Accept")


@web.middleware
async def front_door(request: web.Request, handler) -> web.StreamResponse:
    fake: FakeVercel = request.app["fake"]
    path = request.path
    if path.startswith("/_admin/"):
        return await handle_admin(request, fake)
    routed = fake.route_for_host(request.headers.get("Host", ""))
    if routed is not None:
        return await proxy_preview(request, *routed)
    api_path = path[len("/api"):] if path == "/api" or path.startswith("/api/") else path
    entry = RequestLogEntry(fake.next_request_sequence, fake.clock.now_ms(), request.method, path,
                            request.query_string)
    fake.next_request_sequence += 1
    entry.headers = {name: request.headers[name] for name in LOGGED_REQUEST_HEADERS if name in request.headers}
    fake.request_log.append(entry)
    request["log_entry"] = entry
    try:
        response = await dispatch(request, fake, api_path, entry)
    except ApiFailure as failure:
        response = failure.response()
    except web.HTTPException as http_exception:
        entry.status = http_exception.status
        raise
    finally:
        # Marks the connection's bytes as this request's, so the upload-drop fault measures each request alone.
        traffic.charge(request)
    if entry.status is None:
        entry.status = response.status
    return response


async def dispatch(request: web.Request, fake: FakeVercel, api_path: str, entry: RequestLogEntry) -> web.StreamResponse:
    matched = None
    for method, pattern, handler, template in ROUTES:
        match = pattern.match(api_path)
        if match and method == request.method:
            matched = (match, handler, template)
            break
    session_id = sandbox_name = None
    if matched:
        groups = matched[0].groupdict()
        session_id = groups.get("session")
        sandbox_name = groups.get("name")
        entry.route = f"{request.method} {matched[2]}"
    entry.session_id = session_id
    entry.sandbox_name = sandbox_name or (fake.sessions[session_id].sandbox_name
                                          if session_id in fake.sessions else None)
    if request.content_type == "application/json" and request.body_exists:
        with contextlib.suppress(Exception):
            entry.body = json.loads(await request.read() or b"null")

    # Auth before anything else, as Vercel's API gateway does; the token itself never appears in an answer.
    authorization = request.headers.get("Authorization", "")
    if not authorization.startswith("Bearer ") or not authorization[len("Bearer "):].strip():
        return api_error(401, "unauthorized", "The request is missing an authentication token", missingToken=True)
    if not secrets.compare_digest(authorization[len("Bearer "):].strip().encode(), fake.accepted_token().encode()):
        return api_error(403, "forbidden", "Not authorized", invalidToken=True)
    team_id = request.query.get("teamId") or request.query.get("slug")
    if not team_id:
        return api_error(400, "bad_request", "The teamId query parameter is required.")
    if fake.settings.team_id is not None and team_id != fake.settings.team_id:
        return api_error(403, "forbidden", "You don't have permission to access this team.")

    scope = fake.scope_of(session_id, sandbox_name)
    faults = fake.faults
    in_scope = fake.fault_applies_to(scope)
    if in_scope and faults.rate_limit_next > 0:
        faults.rate_limit_next -= 1
        return api_error(429, "rate_limited", "Rate limit exceeded, please try again later.",
                         headers={"Retry-After": str(faults.retry_after_seconds)})
    if in_scope and faults.error_next > 0:
        faults.error_next -= 1
        status = faults.error_status
        code = faults.error_code or ("internal_server_error" if status >= 500 else "bad_request")
        return api_error(status, code, "Injected error, please retry.")
    await fake.wait_while_hung(scope)

    if not matched:
        return api_error(404, "not_found", f"No route for {request.method} {request.path}.")
    request["scope"] = scope
    return await matched[1](request, fake, **matched[0].groupdict())


async def handle_admin(request: web.Request, fake: FakeVercel) -> web.StreamResponse:
    path, method = request.path, request.method
    if path == "/_admin/faults":
        if method == "GET":
            return json_response(200, {**fake.faults.to_json(), **fake.upload_drop.to_json()})
        if method == "POST":
            try:
                body = await request.json()
            except json.JSONDecodeError:
                return api_error(400, "bad_request", "The body must be a JSON object.")
            fake.apply_faults(body)
            return json_response(200, {**fake.faults.to_json(), **fake.upload_drop.to_json()})
        if method == "DELETE":
            fake.reset_faults()
            return json_response(200, {**fake.faults.to_json(), **fake.upload_drop.to_json()})
    if path == "/_admin/info" and method == "GET":
        return json_response(200, {"isolation": "none" if fake.settings.bubblewrap_root_arguments is None else "bwrap"})
    if path == "/_admin/clock":
        if method == "POST":
            body = await request.json()
            fake.clock.offset_ms += int(float(body.get("advanceSeconds", 0)) * 1000)
            # Deadlines that passed take effect before the answer, so a test can assert right after advancing.
            fake.reap_once()
        return json_response(200, {"now": fake.clock.now_ms(), "offsetMs": fake.clock.offset_ms})
    if path == "/_admin/requests":
        if method == "GET":
            since = int(request.query.get("since", "0"))
            session_id = request.query.get("sessionId")
            entries = [entry for entry in fake.request_log if entry.sequence >= since
                       and (session_id is None or entry.session_id == session_id)]
            counts: dict[str, int] = {}
            for entry in entries:
                key = entry.route or f"{entry.method} {entry.path}"
                counts[key] = counts.get(key, 0) + 1
            return json_response(200, {"requests": [entry.to_json() for entry in entries], "counts": counts,
                                       "nextSeq": fake.next_request_sequence})
        if method == "DELETE":
            fake.request_log.clear()
            return json_response(200, {"nextSeq": fake.next_request_sequence})
    if path == "/_admin/sandboxes" and method == "GET":
        return json_response(200, {
            "sandboxes": [dict(sandbox.to_json(fake.sessions.get(sandbox.current_session_id)),
                               projectId=sandbox.project_id, env=sandbox.env)
                          for sandbox in fake.sandboxes.values()],
            "sessions": [dict(session.to_json(), generation=session.generation, sandboxName=session.sandbox_name,
                              projectId=session.project_id, hostRoot=session.filesystem_root,
                              **fake.traffic.to_json(session.session_id),
                              deadline=session.deadline_ms, routes=session.routes, env=session.env,
                              networkPolicyRequested=session.network_policy,
                              commands=[{"id": command.command_id, "pid": command.pid, "name": command.name,
                                         "args": command.args, "exitCode": command.exit_code,
                                         "logBytes": command.log_bytes}
                                        for command in session.commands.values()])
                         for session in fake.sessions.values()],
            "snapshots": [dict(snapshot.to_json("v2"), hostRoot=snapshot.host_root,
                               sandboxName=snapshot.sandbox_name) for snapshot in fake.snapshots.values()],
        })
    return api_error(404, "not_found", "Unknown admin route.")


# ---------------------------------------------------------------------------------------------------------------
# Request helpers
# ---------------------------------------------------------------------------------------------------------------


async def read_json_body(request: web.Request) -> dict:
    # body_exists, not can_read_body: the front door may already have read (and cached) the body for the log.
    if not request.body_exists:
        return {}
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ApiFailure(400, "bad_request", f"Invalid JSON body: {error.msg}")
    if not isinstance(body, dict):
        raise ApiFailure(400, "bad_request", "The body must be a JSON object.")
    return body


def positive_int(value: Any, default: int, field_name: str) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ApiFailure(400, "bad_request", f"`{field_name}` must be a positive number.")
    return int(value)


def session_for(fake: FakeVercel, session_id: str, generation: str) -> Session:
    """The session a path names; v1 ids only on v1 paths, v2 session ids only on v2 paths."""
    session = fake.sessions.get(session_id)
    if session is None or session.generation != generation:
        raise ApiFailure(404, "sandbox_not_found", "The sandbox was not found." if generation == "v1"
                         else "The session was not found.")
    return session


def running_session(fake: FakeVercel, session_id: str, generation: str) -> Session:
    """A session that can execute: 410 once stopped, 422 while stopping or snapshotting."""
    session = session_for(fake, session_id, generation)
    if session.status == "stopping":
        raise ApiFailure(422, "sandbox_stopping", "The sandbox is stopping.")
    if session.status == "snapshotting":
        raise ApiFailure(422, "sandbox_snapshotting", "The sandbox is being snapshotted.")
    if session.status != "running":
        raise ApiFailure(410, "sandbox_stopped", "The sandbox has stopped.")
    return session


def command_for(session: Session, command_id: str) -> SessionCommand:
    command = session.commands.get(command_id)
    if command is None:
        raise ApiFailure(404, "command_not_found", "The command was not found.")
    return command


def generation_of(request: web.Request) -> str:
    return "v1" if "/v1/" in request.path else "v2"


# ---------------------------------------------------------------------------------------------------------------
# Streams (NDJSON, and blocking waits), with the edge cut and byte cut faults
# ---------------------------------------------------------------------------------------------------------------


class StreamGuard:
    """Tracks one streamed answer: the bytes written, the faults that will cut it, and the session it belongs to."""

    def __init__(self, request: web.Request, fake: FakeVercel, session: Session, ndjson: bool = True):
        self.request = request
        self.fake = fake
        self.session = session
        self.response: Optional[web.StreamResponse] = None
        self.bytes_written = 0
        self.opened_at = fake.clock.now_ms()
        faults = fake.faults
        in_scope = fake.fault_applies_to(request.get("scope", set()))
        self.cut_after_bytes: Optional[int] = None
        # The byte cut is for NDJSON bodies; a blocking wait answers one small JSON object and must not use it up.
        if ndjson and in_scope and faults.cut_stream_after_bytes is not None and faults.cut_stream_count > 0:
            self.cut_after_bytes = int(faults.cut_stream_after_bytes)
            faults.cut_stream_count -= 1
            if faults.cut_stream_count <= 0:
                faults.cut_stream_after_bytes = None
        self.edge_cut_at: Optional[int] = None
        if in_scope and faults.edge_cut_seconds is not None and (faults.edge_cut_count is None
                                                                 or faults.edge_cut_count > 0):
            self.edge_cut_at = self.opened_at + int(float(faults.edge_cut_seconds) * 1000)
            if faults.edge_cut_count is not None:
                faults.edge_cut_count -= 1
        self.transport = request.transport
        if self.transport is not None:
            session.open_stream_transports.add(self.transport)

    def close(self) -> None:
        self.session.open_stream_transports.discard(self.transport)

    def edge_cut_due(self) -> bool:
        return self.edge_cut_at is not None and self.fake.clock.now_ms() >= self.edge_cut_at

    def client_gone(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def cut(self) -> None:
        self.request["log_entry"].cut = True
        if self.transport is not None:
            # close() (not abort()) flushes what was written, so the client gets every byte up to the cut.
            self.transport.close()
        raise StreamCut()

    async def start_ndjson(self) -> None:
        self.response = web.StreamResponse(status=200, headers={"Content-Type": NDJSON_CONTENT_TYPE})
        self.response.enable_chunked_encoding()
        await self.response.prepare(self.request)

    async def write_line(self, payload: dict) -> None:
        await self.fake.wait_while_hung(self.request.get("scope", set()))
        if self.edge_cut_due():
            self.cut()
        data = (json.dumps(payload, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
        if self.cut_after_bytes is not None and self.bytes_written + len(data) >= self.cut_after_bytes:
            head = data[:max(0, self.cut_after_bytes - self.bytes_written)]
            if head:
                await self.response.write(head)
                self.bytes_written += len(head)
            self.cut()
        await self.response.write(data)
        self.bytes_written += len(data)

    async def wait_for_change(self, command: SessionCommand, seen_lines: int) -> None:
        """Sleeps until the command has news, the session's status changes, or one tick passes (clock checks)."""
        async with command.changed:
            if len(command.log_lines) == seen_lines and command.exit_code is None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(command.changed.wait(), timeout=TICK_SECONDS * 2)
                return
        # Nothing to wait for: still yield, so a caller's loop never starves the pumps of the event loop.
        await asyncio.sleep(0)


async def stream_command(guard: StreamGuard, command: SessionCommand, generation: str, with_logs: bool,
                         with_command_lines: bool) -> None:
    """Writes log lines (from the start) as they come, until the command exits or the session stops."""
    if with_command_lines:
        await guard.write_line({"command": command.to_json(generation)})
    delivered = 0
    stop_grace_ticks = 20
    while True:
        if with_logs:
            while delivered < len(command.log_lines):
                stream_name, text = command.log_lines[delivered]
                await guard.write_line({"stream": stream_name, "data": text})
                delivered += 1
        stopped = guard.session.status != "running" or command.killed_by_stop
        if stopped and (command.exit_code is None or command.killed_by_stop):
            unsent = with_logs and delivered < len(command.log_lines)
            if (command.exit_code is None or unsent) and stop_grace_ticks > 0:
                # Let the pump collect what the killed process printed last, then send it before the error.
                stop_grace_ticks -= 1
                await guard.wait_for_change(command, delivered if with_logs else len(command.log_lines))
                continue
            await guard.write_line({"stream": "error", "data": {"code": "sandbox_stopped",
                                                                "message": "The sandbox has stopped."}})
            return
        if command.exit_code is not None and (not with_logs or delivered >= len(command.log_lines)):
            # The pump appends every output chunk before it records the exit code, so nothing is left behind.
            if with_command_lines:
                await guard.write_line({"command": command.to_json(generation)})
            return
        if guard.edge_cut_due():
            guard.cut()
        if guard.client_gone():
            return
        await guard.wait_for_change(command, delivered if with_logs else len(command.log_lines))


# ---------------------------------------------------------------------------------------------------------------
# Handlers: creating and finding sandboxes
# ---------------------------------------------------------------------------------------------------------------


def checked_ports(value: Any, limit: int) -> list:
    ports = value or []
    if not isinstance(ports, list) or not all(isinstance(port, int) and 0 < port < 65536 for port in ports):
        raise ApiFailure(400, "bad_request", "`ports` must be a list of port numbers.")
    if len(ports) > limit:
        raise ApiFailure(400, "bad_request", f"At most {limit} ports can be exposed.")
    return list(dict.fromkeys(ports))


RUNTIMES = ("node22", "node24", "node26", "python3.13")


def checked_create_body(body: dict) -> tuple[str, Optional[str], int, int]:
    project_id = body.get("projectId")
    if not isinstance(project_id, str) or not project_id:
        raise ApiFailure(400, "bad_request", "`projectId` is required.")
    runtime = body.get("runtime")
    if runtime is not None and runtime not in RUNTIMES:
        raise ApiFailure(400, "bad_request", f"Unknown runtime; expected one of {', '.join(RUNTIMES)}.")
    vcpus = positive_int((body.get("resources") or {}).get("vcpus"), 2, "resources.vcpus")
    timeout_ms = positive_int(body.get("timeout"), DEFAULT_TIMEOUT_MS, "timeout")
    if timeout_ms > MAX_TIMEOUT_MS:
        raise ApiFailure(400, "bad_request", "`timeout` exceeds the plan's maximum.")
    env = body.get("env") or {}
    if not isinstance(env, dict):
        raise ApiFailure(400, "bad_request", "`env` must be an object.")
    return project_id, runtime, vcpus, timeout_ms


@route("POST", r"^/v1/sandboxes", "/v1/sandboxes")
async def create_v1_sandbox(request: web.Request, fake: FakeVercel) -> web.StreamResponse:
    body = await read_json_body(request)
    project_id, runtime, vcpus, timeout_ms = checked_create_body(body)
    session = fake.new_session("v1", project_id, runtime, vcpus, timeout_ms, body.get("env") or {},
                               checked_ports(body.get("ports"), 4), body.get("source"), body.get("networkPolicy"))
    return json_response(200, {"sandbox": session.to_json(), "routes": session.routes})


def sandbox_and_session(fake: FakeVercel, sandbox: NamedSandbox, resumed: Optional[bool] = None) -> dict:
    session = fake.sessions.get(sandbox.current_session_id)
    body = {"sandbox": sandbox.to_json(session), "session": session.to_json() if session else None,
            "routes": session.routes if session else []}
    if resumed is not None:
        body["resumed"] = resumed
    return body


@route("POST", r"^/v[23]/sandboxes", "/v2/sandboxes")
async def create_named_sandbox(request: web.Request, fake: FakeVercel) -> web.StreamResponse:
    body = await read_json_body(request)
    project_id, runtime, vcpus, timeout_ms = checked_create_body(body)
    if runtime is not None and body.get("image") is not None:
        raise ApiFailure(400, "bad_request", "`runtime` and `image` cannot be used together.")
    name = body.get("name") or ("sandbox-" + secrets.token_hex(5))
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", name):
        raise ApiFailure(400, "bad_request", "`name` may hold letters, digits, '.', '_' and '-'.")
    if name in fake.sandboxes:
        raise ApiFailure(409, "sandbox_already_exists", "A sandbox with this name already exists.")
    ports = checked_ports(body.get("ports"), 15)
    tags = body.get("tags") or {}
    session = fake.new_session("v2", project_id, runtime, vcpus, timeout_ms, body.get("env") or {}, ports,
                               body.get("source"), body.get("networkPolicy"), sandbox_name=name)
    extra = {key: body[key] for key in ("snapshotExpiration", "keepLastSnapshots") if body.get(key) is not None}
    sandbox = NamedSandbox(name=name, project_id=project_id, persistent=bool(body.get("persistent", False)),
                           runtime=runtime, image=body.get("image"), vcpus=vcpus, timeout_ms=timeout_ms, ports=ports,
                           env=dict(body.get("env") or {}), tags=dict(tags), created_at=session.started_at,
                           current_session_id=session.session_id, network_policy=body.get("networkPolicy"),
                           extra=extra)
    fake.sandboxes[name] = sandbox
    return json_response(200, sandbox_and_session(fake, sandbox))


def named_sandbox(fake: FakeVercel, name: str) -> NamedSandbox:
    sandbox = fake.sandboxes.get(name)
    if sandbox is None:
        raise ApiFailure(404, "sandbox_not_found", "The sandbox was not found.")
    return sandbox


def resume_sandbox(fake: FakeVercel, sandbox: NamedSandbox) -> bool:
    """Starts a new session for a stopped sandbox, from its latest snapshot when it has one; True if it did."""
    current = fake.sessions.get(sandbox.current_session_id)
    if current is not None and current.status in ("running", "pending"):
        return False
    if current is not None and current.status in ("stopping", "snapshotting"):
        raise ApiFailure(422, "sandbox_stopping" if current.status == "stopping" else "sandbox_snapshotting",
                         "The sandbox is still stopping; retry in a moment.")
    snapshot = fake.snapshots.get(sandbox.current_snapshot_id or "")
    if snapshot is not None and snapshot.status != "created":
        snapshot = None
    session = fake.new_session("v2", sandbox.project_id, sandbox.runtime, sandbox.vcpus, sandbox.timeout_ms,
                               sandbox.env, sandbox.ports, None, sandbox.network_policy, sandbox_name=sandbox.name,
                               restore_snapshot=snapshot)
    sandbox.current_session_id = session.session_id
    sandbox.updated_at = session.started_at
    return True


@route("GET", r"^/v[23]/sandboxes/(?P<name>(?!sessions$|snapshots$)[^/]+)", "/v2/sandboxes/{name}")
async def get_named_sandbox(request: web.Request, fake: FakeVercel, name: str) -> web.StreamResponse:
    sandbox = named_sandbox(fake, name)
    resumed = None
    if request.query.get("resume") == "true":
        resumed = resume_sandbox(fake, sandbox)
    return json_response(200, sandbox_and_session(fake, sandbox, resumed))


@route("PATCH", r"^/v[23]/sandboxes/(?P<name>[^/]+)", "/v2/sandboxes/{name}")
async def update_named_sandbox(request: web.Request, fake: FakeVercel, name: str) -> web.StreamResponse:
    sandbox = named_sandbox(fake, name)
    body = await read_json_body(request)
    session = fake.sessions.get(sandbox.current_session_id)
    if body.get("ports") is not None:
        sandbox.ports = checked_ports(body["ports"], 15)
        if session is not None and session.status == "running":
            fake.set_ports(session, sandbox.ports)
    if body.get("timeout") is not None:
        sandbox.timeout_ms = positive_int(body["timeout"], DEFAULT_TIMEOUT_MS, "timeout")
    if body.get("resources") is not None:
        sandbox.vcpus = positive_int((body["resources"] or {}).get("vcpus"), sandbox.vcpus, "resources.vcpus")
    if body.get("persistent") is not None:
        sandbox.persistent = bool(body["persistent"])
    if body.get("tags") is not None:
        sandbox.tags = dict(body["tags"])
    if body.get("networkPolicy") is not None:
        sandbox.network_policy = body["networkPolicy"]
    if body.get("currentSnapshotId") is not None:
        sandbox.current_snapshot_id = body["currentSnapshotId"]
    for key in ("snapshotExpiration", "keepLastSnapshots"):
        if body.get(key) is not None:
            sandbox.extra[key] = body[key]
    sandbox.updated_at = fake.clock.now_ms()
    return json_response(200, {"sandbox": sandbox.to_json(session), "routes": session.routes if session else []})


@route("DELETE", r"^/v[23]/sandboxes/(?P<name>[^/]+)", "/v2/sandboxes/{name}")
async def delete_named_sandbox(request: web.Request, fake: FakeVercel, name: str) -> web.StreamResponse:
    sandbox = named_sandbox(fake, name)
    session = fake.sessions.get(sandbox.current_session_id)
    if session is not None and session.status in ("running", "pending"):
        fake.stop_session(session, "sandbox deleted")
    fake.sandboxes.pop(name, None)
    answer = sandbox.to_json(session)
    answer["status"] = "stopped"
    return json_response(200, {"sandbox": answer})


@route("GET", r"^/v[23]/sandboxes", "/v2/sandboxes")
async def list_named_sandboxes(request: web.Request, fake: FakeVercel) -> web.StreamResponse:
    project = request.query.get("project") or request.query.get("projectId")
    prefix = request.query.get("namePrefix") or ""
    tag_filters = [tag.split(":", 1) for tag in request.query.getall("tags", []) if ":" in tag]
    selected = [sandbox for sandbox in fake.sandboxes.values()
                if (not project or sandbox.project_id == project) and sandbox.name.startswith(prefix)
                and all(sandbox.tags.get(key) == value for key, value in tag_filters)]
    selected.sort(key=lambda sandbox: sandbox.created_at, reverse=True)
    limit = int(request.query.get("limit") or 50)
    return json_response(200, {"sandboxes": [sandbox.to_json(fake.sessions.get(sandbox.current_session_id))
                                             for sandbox in selected[:limit]],
                               "pagination": {"count": min(limit, len(selected)), "next": None}})


@route("GET", r"^/v1/sandboxes", "/v1/sandboxes")
async def list_v1_sandboxes(request: web.Request, fake: FakeVercel) -> web.StreamResponse:
    project = request.query.get("project") or request.query.get("projectId")
    selected = [session for session in fake.sessions.values()
                if session.generation == "v1" and (not project or session.project_id == project)]
    selected.sort(key=lambda session: session.started_at, reverse=True)
    limit = int(request.query.get("limit") or 50)
    return json_response(200, {"sandboxes": [session.to_json() for session in selected[:limit]],
                               "pagination": {"count": min(limit, len(selected)), "next": None, "prev": None}})


@route("GET", r"^/v[23]/sandboxes/sessions", "/v2/sandboxes/sessions")
async def list_sessions(request: web.Request, fake: FakeVercel) -> web.StreamResponse:
    project = request.query.get("project")
    name = request.query.get("name")
    selected = [session for session in fake.sessions.values() if session.generation == "v2"
                and (not project or session.project_id == project) and (not name or session.sandbox_name == name)]
    selected.sort(key=lambda session: session.started_at, reverse=True)
    return json_response(200, {"sessions": [session.to_json() for session in selected],
                               "pagination": {"count": len(selected), "next": None}})


@route("GET", SESSION_PREFIX, "/v2/sandboxes/sessions/{sessionId}")
async def get_session(request: web.Request, fake: FakeVercel, session: str) -> web.StreamResponse:
    found = session_for(fake, session, "v2")
    return json_response(200, {"session": found.to_json(), "routes": found.routes})


@route("GET", V1_PREFIX, "/v1/sandboxes/{sandboxId}")
async def get_v1_sandbox(request: web.Request, fake: FakeVercel, session: str) -> web.StreamResponse:
    found = session_for(fake, session, "v1")
    return json_response(200, {"sandbox": found.to_json(), "routes": found.routes})


# ---------------------------------------------------------------------------------------------------------------
# Handlers: commands
# ---------------------------------------------------------------------------------------------------------------


async def start_command(fake: FakeVercel, session: Session, body: dict) -> SessionCommand:
    name = body.get("command")
    if not isinstance(name, str) or not name:
        raise ApiFailure(400, "bad_request", "`command` is required.")
    args = body.get("args") or []
    if not isinstance(args, list):
        raise ApiFailure(400, "bad_request", "`args` must be a list of strings.")
    args = [str(argument) for argument in args]
    cwd = session.sandbox_path_for(body.get("cwd") or SANDBOX_CWD)
    host_cwd = session.host_path_for(cwd)
    if not os.path.isdir(host_cwd):
        raise ApiFailure(400, "bad_request", f"The working directory {cwd} does not exist.")
    env = body.get("env") or {}
    if not isinstance(env, dict):
        raise ApiFailure(400, "bad_request", "`env` must be an object.")
    timeout = body.get("timeout")
    timeout_ms = positive_int(timeout, 0, "timeout") if timeout is not None else None
    environment = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "HOME": session.host_path_for(SANDBOX_HOME),
        "USER": "vercel-sandbox",
        "VERCEL_FAKE_SANDBOX_ROOT": session.filesystem_root,
        "VERCEL_SANDBOX_ID": session.session_id,
    }
    environment.update({str(key): str(value) for key, value in session.env.items()})
    environment.update({str(key): str(value) for key, value in env.items()})
    now = fake.clock.now_ms()
    program = [name, *args]
    root_arguments = fake.settings.bubblewrap_root_arguments
    if root_arguments is not None:
        # bwrap reports a missing program only on stderr, so look first: Vercel refuses to start it.
        if "/" in name:
            found = os.access(session.host_path_for(session.sandbox_path_for(name, cwd)), os.X_OK)
        else:
            found = shutil.which(name, path=environment["PATH"]) is not None
        if not found:
            raise ApiFailure(400, "bad_request", f"Could not start `{name}`: No such file or directory")
        inside_cwd = cwd if cwd == "/vercel" or cwd.startswith("/vercel/") else host_cwd
        program = ["bwrap", *root_arguments, "--bind", session.host_path_for("/vercel"), "/vercel",
                   "--chdir", inside_cwd, "--", *program]
    try:
        popen = await asyncio.create_subprocess_exec(
            *program, cwd=host_cwd, env=environment, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            # A new session makes the process a group leader, so signals reach the whole tree (killpg).
            start_new_session=True)
    except (FileNotFoundError, PermissionError, NotADirectoryError) as error:
        raise ApiFailure(400, "bad_request", f"Could not start `{name}`: {error.strerror}")
    command = SessionCommand(session, popen, name, args, cwd, now, now + timeout_ms if timeout_ms else None)
    command.isolated = root_arguments is not None
    session.commands[command.command_id] = command
    command.pump_task = asyncio.get_running_loop().create_task(command.pump_output(fake.clock))
    return command


@route("POST", SESSION_PREFIX + r"/cmd", "/v2/sandboxes/sessions/{sessionId}/cmd")
@route("POST", V1_PREFIX + r"/cmd", "/v1/sandboxes/{sandboxId}/cmd")
async def run_command(request: web.Request, fake: FakeVercel, session: str) -> web.StreamResponse:
    generation = generation_of(request)
    found = running_session(fake, session, generation)
    body = await read_json_body(request)
    command = await start_command(fake, found, body)
    if not body.get("wait"):
        return json_response(200, {"command": command.to_json(generation)})
    guard = StreamGuard(request, fake, found)
    try:
        await guard.start_ndjson()
        await stream_command(guard, command, generation, with_logs=bool(body.get("logs")), with_command_lines=True)
    except StreamCut:
        return guard.response
    except (ConnectionError, asyncio.CancelledError):
        return guard.response
    finally:
        guard.close()
    with contextlib.suppress(ConnectionError):
        await guard.response.write_eof()
    return guard.response


@route("GET", SESSION_PREFIX + r"/cmd/(?P<command>[^/]+)", "/v2/sandboxes/sessions/{sessionId}/cmd/{cmdId}")
@route("GET", V1_PREFIX + r"/cmd/(?P<command>[^/]+)", "/v1/sandboxes/{sandboxId}/cmd/{cmdId}")
async def get_command(request: web.Request, fake: FakeVercel, session: str, command: str) -> web.StreamResponse:
    generation = generation_of(request)
    found = session_for(fake, session, generation)
    if found.status != "running":
        raise ApiFailure(410, "sandbox_stopped", "The sandbox has stopped; its commands are gone.")
    selected = command_for(found, command)
    if request.query.get("wait") == "true" and selected.exit_code is None:
        guard = StreamGuard(request, fake, found, ndjson=False)
        try:
            while selected.exit_code is None:
                if found.status != "running":
                    raise ApiFailure(410, "sandbox_stopped", "The sandbox stopped while the command ran.")
                if guard.edge_cut_due():
                    # The edge drops a long request before any answer: the client sees the connection close.
                    guard.cut()
                if guard.client_gone():
                    return web.Response(status=499)
                await guard.wait_for_change(selected, len(selected.log_lines))
            await fake.wait_while_hung(request.get("scope", set()))
        except StreamCut:
            return web.Response(status=499)
        finally:
            guard.close()
    return json_response(200, {"command": selected.to_json(generation)})


@route("GET", SESSION_PREFIX + r"/cmd/(?P<command>[^/]+)/logs",
       "/v2/sandboxes/sessions/{sessionId}/cmd/{cmdId}/logs")
@route("GET", V1_PREFIX + r"/cmd/(?P<command>[^/]+)/logs", "/v1/sandboxes/{sandboxId}/cmd/{cmdId}/logs")
async def command_logs(request: web.Request, fake: FakeVercel, session: str, command: str) -> web.StreamResponse:
    generation = generation_of(request)
    found = session_for(fake, session, generation)
    if found.status != "running":
        # Logs live with the VM: once it stops they are gone (vercel/sandbox#338).
        raise ApiFailure(410, "sandbox_stopped", "The sandbox has stopped; its logs are gone.")
    selected = command_for(found, command)
    guard = StreamGuard(request, fake, found)
    try:
        await guard.start_ndjson()
        await stream_command(guard, selected, generation, with_logs=True, with_command_lines=False)
    except (StreamCut, ConnectionError, asyncio.CancelledError):
        return guard.response
    finally:
        guard.close()
    with contextlib.suppress(ConnectionError):
        await guard.response.write_eof()
    return guard.response


async def kill(request: web.Request, fake: FakeVercel, session: str, command: str) -> web.StreamResponse:
    generation = generation_of(request)
    found = running_session(fake, session, generation)
    selected = command_for(found, command)
    body = await read_json_body(request)
    signal_number = body.get("signal", 15)
    if not isinstance(signal_number, int) or not 0 < signal_number < 65:
        raise ApiFailure(400, "bad_request", "`signal` must be a signal number.")
    if selected.exit_code is None:
        selected.signal_group(signal_number)
    return json_response(200, {"command": selected.to_json(generation)})


@route("POST", SESSION_PREFIX + r"/cmd/(?P<command>[^/]+)/kill",
       "/v2/sandboxes/sessions/{sessionId}/cmd/{cmdId}/kill")
async def kill_command(request: web.Request, fake: FakeVercel, session: str, command: str) -> web.StreamResponse:
    return await kill(request, fake, session, command)


# v1 has no `/cmd/` segment in its kill path (cloud-apis.md 3.2); the v2 form answers 404 there.
@route("POST", V1_PREFIX + r"/(?P<command>cmd_[^/]+)/kill", "/v1/sandboxes/{sandboxId}/{cmdId}/kill")
async def kill_v1_command(request: web.Request, fake: FakeVercel, session: str, command: str) -> web.StreamResponse:
    return await kill(request, fake, session, command)


# ---------------------------------------------------------------------------------------------------------------
# Handlers: files
# ---------------------------------------------------------------------------------------------------------------


def extract_tar(session: Session, archive: bytes, extract_directory: str) -> None:
    """Unpacks a (gzip) tar into the session's file system; entry names are relative to `x-cwd`."""
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:*") as bundle:
        for member in bundle.getmembers():
            sandbox_path = posixpath.normpath(posixpath.join(extract_directory, member.name.lstrip("/")))
            host_path = session.host_path_for(sandbox_path)
            if member.isdir():
                os.makedirs(host_path, exist_ok=True)
                continue
            if member.issym():
                os.makedirs(os.path.dirname(host_path), exist_ok=True)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(host_path)
                os.symlink(member.linkname, host_path)
                continue
            if not member.isfile():
                continue
            os.makedirs(os.path.dirname(host_path), exist_ok=True)
            if os.path.isdir(host_path) and not os.path.islink(host_path):
                raise ApiFailure(400, "bad_request", f"{sandbox_path} is a directory.")
            source = bundle.extractfile(member)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(host_path)
            with open(host_path, "wb") as handle:
                shutil.copyfileobj(source, handle)
            os.chmod(host_path, (member.mode & 0o7777) or 0o644)


@route("POST", SESSION_PREFIX + r"/fs/write", "/v2/sandboxes/sessions/{sessionId}/fs/write")
@route("POST", V1_PREFIX + r"/fs/write", "/v1/sandboxes/{sandboxId}/fs/write")
async def write_files(request: web.Request, fake: FakeVercel, session: str) -> web.StreamResponse:
    found = running_session(fake, session, generation_of(request))
    extract_directory = request.headers.get("x-cwd") or "/"
    if not extract_directory.startswith("/"):
        raise ApiFailure(400, "bad_request", "The x-cwd header must be an absolute path.")
    # A dropped upload extracts nothing: the archive is read whole before any of it is written.
    try:
        archive = await traffic.read_checked(request.content, request, fake.upload_drop)
    except ConnectionResetError as error:
        fake.traffic.add_received(found.session_id, len(error.partial))
        raise
    fake.traffic.add_received(found.session_id, len(archive))
    fake.upload_drop.finished(request, len(archive))
    try:
        await asyncio.get_running_loop().run_in_executor(
            None, extract_tar, found, archive, posixpath.normpath(extract_directory))
    except (tarfile.TarError, EOFError, OSError) as error:
        raise ApiFailure(400, "bad_request", f"The body is not a readable gzip tar archive: {error}")
    return json_response(200, {})


@route("POST", SESSION_PREFIX + r"/fs/read", "/v2/sandboxes/sessions/{sessionId}/fs/read")
@route("POST", V1_PREFIX + r"/fs/read", "/v1/sandboxes/{sandboxId}/fs/read")
async def read_file(request: web.Request, fake: FakeVercel, session: str) -> web.StreamResponse:
    found = running_session(fake, session, generation_of(request))
    body = await read_json_body(request)
    if not isinstance(body.get("path"), str) or not body["path"]:
        raise ApiFailure(400, "bad_request", "`path` is required.")
    sandbox_path = found.sandbox_path_for(body["path"], body.get("cwd"))
    host_path = found.host_path_for(sandbox_path)
    if os.path.isdir(host_path):
        raise ApiFailure(400, "bad_request", f"{sandbox_path} is a directory.")
    if not os.path.isfile(host_path):
        raise ApiFailure(404, "file_not_found", f"{sandbox_path} does not exist.")
    with open(host_path, "rb") as handle:
        content = handle.read()
    fake.traffic.add_sent(found.session_id, len(content))
    return web.Response(status=200, body=content, content_type="application/octet-stream")


@route("POST", SESSION_PREFIX + r"/fs/mkdir", "/v2/sandboxes/sessions/{sessionId}/fs/mkdir")
@route("POST", V1_PREFIX + r"/fs/mkdir", "/v1/sandboxes/{sandboxId}/fs/mkdir")
async def make_directory(request: web.Request, fake: FakeVercel, session: str) -> web.StreamResponse:
    found = running_session(fake, session, generation_of(request))
    body = await read_json_body(request)
    if not isinstance(body.get("path"), str) or not body["path"]:
        raise ApiFailure(400, "bad_request", "`path` is required.")
    sandbox_path = found.sandbox_path_for(body["path"], body.get("cwd"))
    try:
        os.mkdir(found.host_path_for(sandbox_path))
    except FileExistsError:
        raise ApiFailure(400, "file_exists", f"{sandbox_path} already exists.")
    except FileNotFoundError:
        # Not recursive, like mkdir(2): the SDK runs `mkdir -p` when it needs parents.
        raise ApiFailure(400, "file_not_found", f"The parent of {sandbox_path} does not exist.")
    return json_response(200, {})


# ---------------------------------------------------------------------------------------------------------------
# Handlers: session lifecycle
# ---------------------------------------------------------------------------------------------------------------


def session_answer(found: Session, generation: str, **extra: Any) -> web.Response:
    return json_response(200, {"sandbox" if generation == "v1" else "session": found.to_json(), **extra})


@route("POST", SESSION_PREFIX + r"/extend-timeout", "/v2/sandboxes/sessions/{sessionId}/extend-timeout")
@route("POST", V1_PREFIX + r"/extend-timeout", "/v1/sandboxes/{sandboxId}/extend-timeout")
async def extend_timeout(request: web.Request, fake: FakeVercel, session: str) -> web.StreamResponse:
    generation = generation_of(request)
    found = running_session(fake, session, generation)
    body = await read_json_body(request)
    duration = positive_int(body.get("duration"), 0, "duration")
    if found.timeout_ms + duration > MAX_TIMEOUT_MS:
        raise ApiFailure(400, "bad_request", "The timeout would exceed the plan's maximum.")
    found.timeout_ms += duration
    found.updated_at = fake.clock.now_ms()
    return session_answer(found, generation)


@route("POST", SESSION_PREFIX + r"/stop", "/v2/sandboxes/sessions/{sessionId}/stop")
@route("POST", V1_PREFIX + r"/stop", "/v1/sandboxes/{sandboxId}/stop")
async def stop(request: web.Request, fake: FakeVercel, session: str) -> web.StreamResponse:
    generation = generation_of(request)
    found = session_for(fake, session, generation)
    if found.status in ("running", "pending"):
        fake.stop_session(found, "stop requested")
    if generation == "v1":
        return session_answer(found, generation)
    extra: dict = {}
    sandbox = fake.sandboxes.get(found.sandbox_name or "")
    if sandbox is not None:
        extra["sandbox"] = sandbox.to_json(found)
        snapshot = fake.snapshots.get(sandbox.current_snapshot_id or "")
        if snapshot is not None and snapshot.source_session_id == found.session_id:
            extra["snapshot"] = snapshot.to_json("v2")
    return session_answer(found, generation, **extra)


@route("POST", SESSION_PREFIX + r"/snapshot", "/v2/sandboxes/sessions/{sessionId}/snapshot")
@route("POST", V1_PREFIX + r"/snapshot", "/v1/sandboxes/{sandboxId}/snapshot")
async def snapshot(request: web.Request, fake: FakeVercel, session: str) -> web.StreamResponse:
    generation = generation_of(request)
    found = running_session(fake, session, generation)
    body = await read_json_body(request)
    expiration = body.get("expiration")
    if expiration is not None and (isinstance(expiration, bool) or not isinstance(expiration, int) or expiration < 0):
        raise ApiFailure(400, "bad_request", "`expiration` must be a number of milliseconds (0: never).")
    record = fake.take_snapshot(found, expiration)
    # Taking a snapshot stops the VM (cloud-apis.md 3.2).
    fake.stop_session(found, "snapshot", snapshot=record)
    return json_response(200, {"snapshot": record.to_json(generation),
                               ("sandbox" if generation == "v1" else "session"): found.to_json()})


@route("POST", SESSION_PREFIX + r"/network-policy", "/v2/sandboxes/sessions/{sessionId}/network-policy")
@route("POST", V1_PREFIX + r"/network-policy", "/v1/sandboxes/{sandboxId}/network-policy")
async def network_policy(request: web.Request, fake: FakeVercel, session: str) -> web.StreamResponse:
    generation = generation_of(request)
    found = running_session(fake, session, generation)
    # Recorded, not enforced: commands here run on the host's network.
    found.network_policy = await read_json_body(request)
    found.updated_at = fake.clock.now_ms()
    return session_answer(found, generation)


# ---------------------------------------------------------------------------------------------------------------
# Handlers: snapshots
# ---------------------------------------------------------------------------------------------------------------


def snapshot_by_id(fake: FakeVercel, snapshot_id: str) -> SnapshotRecord:
    record = fake.snapshots.get(snapshot_id)
    if record is None:
        raise ApiFailure(404, "snapshot_not_found", "The snapshot was not found.")
    return record


@route("GET", r"^/v[123]/sandboxes/snapshots", "/v2/sandboxes/snapshots")
async def list_snapshots(request: web.Request, fake: FakeVercel) -> web.StreamResponse:
    project = request.query.get("project")
    name = request.query.get("name")
    selected = [record for record in fake.snapshots.values()
                if (not project or record.project_id == project) and (not name or record.sandbox_name == name)]
    selected.sort(key=lambda record: record.created_at, reverse=True)
    return json_response(200, {"snapshots": [record.to_json(generation_of(request)) for record in selected],
                               "pagination": {"count": len(selected), "next": None}})


@route("GET", r"^/v[123]/sandboxes/snapshots/(?P<snapshot>[^/]+)", "/v2/sandboxes/snapshots/{snapshotId}")
async def get_snapshot(request: web.Request, fake: FakeVercel, snapshot: str) -> web.StreamResponse:
    return json_response(200, {"snapshot": snapshot_by_id(fake, snapshot).to_json(generation_of(request))})


@route("DELETE", r"^/v[123]/sandboxes/snapshots/(?P<snapshot>[^/]+)", "/v2/sandboxes/snapshots/{snapshotId}")
async def delete_snapshot(request: web.Request, fake: FakeVercel, snapshot: str) -> web.StreamResponse:
    record = snapshot_by_id(fake, snapshot)
    record.status = "deleted"
    record.updated_at = fake.clock.now_ms()
    shutil.rmtree(record.host_root, ignore_errors=True)
    return json_response(200, {"snapshot": record.to_json(generation_of(request))})


# ---------------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------------


def build_application(fake: FakeVercel) -> web.Application:
    # 1 GiB uploads; the default 1 MiB limit would reject ordinary batch uploads.
    application = web.Application(middlewares=[front_door], client_max_size=1024 ** 3)
    application["fake"] = fake

    async def unreachable(_request: web.Request) -> web.Response:
        # Every request is answered by the front_door middleware; this catch-all only makes aiohttp route to it.
        return web.Response(status=500)

    application.router.add_route("*", "/{tail:.*}", unreachable)

    async def start_reaper(app: web.Application) -> None:
        app["reaper"] = asyncio.get_running_loop().create_task(fake.run_reaper())

    async def stop_everything(app: web.Application) -> None:
        app["reaper"].cancel()
        for session in list(fake.sessions.values()):
            fake.kill_processes(session)

    application.on_startup.append(start_reaper)
    application.on_cleanup.append(stop_everything)
    return application


# Headers that belong to one connection, or to the proxy hop, and must not be forwarded.
HOP_BY_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host",
                      "proxy-authorization", "proxy-authenticate", "content-length"}


async def proxy_preview(request: web.Request, session: "Session", route: dict) -> web.StreamResponse:
    """Forwards a preview request to the session's port, as Vercel's edge does for `SUB.vercel.run`.

    Commands run in this host's network namespace (bubblewrap here shares it), so the session's port N is
    127.0.0.1:N. A stopped session, or nothing listening, gives a 502 as the edge does.
    """
    import aiohttp

    unavailable = json_response(502, {"error": {"code": "sandbox_port_unavailable",
                                                "message": f"Nothing answers on port {route['port']}."}})
    if session.status not in ("running",):
        return unavailable
    headers = {name: value for name, value in request.headers.items() if name.lower() not in HOP_BY_HOP_HEADERS}
    body = await request.read()
    try:
        async with aiohttp.ClientSession(auto_decompress=False) as client:
            async with client.request(request.method, f"http://127.0.0.1:{route['port']}{request.rel_url}",
                                      headers=headers, data=body or None, allow_redirects=False) as upstream:
                content = await upstream.read()
                response_headers = {name: value for name, value in upstream.headers.items()
                                    if name.lower() not in HOP_BY_HOP_HEADERS}
                return web.Response(status=upstream.status, body=content, headers=response_headers)
    except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
        return unavailable


async def serve(host: str, port: int, fake: FakeVercel) -> None:
    traffic.install()
    runner = web.AppRunner(build_application(fake), handle_signals=False, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_port = site._server.sockets[0].getsockname()[1]  # aiohttp has no public accessor for the bound port.
    fake.public_port = bound_port
    print(f"LISTENING {bound_port}", flush=True)
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop_requested.set)
    if fake.settings.exit_when_stdin_closes:
        # A test harness that cannot run cleanup code (a process-wide fake in a static) still ends the fake: its
        # end of our stdin closes when it exits.
        import threading

        def wait_for_stdin_eof() -> None:
            with contextlib.suppress(OSError, ValueError):
                while sys.stdin.buffer.read(4096):
                    pass
            loop.call_soon_threadsafe(stop_requested.set)

        threading.Thread(target=wait_for_stdin_eof, daemon=True).start()
    await stop_requested.wait()
    for session in list(fake.sessions.values()):
        fake.kill_processes(session)
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port; the chosen one is printed")
    parser.add_argument("--token", default=os.environ.get("VERCEL_FAKE_TOKEN", "vercel_test_token"),
                        help="the bearer token the API accepts (env VERCEL_FAKE_TOKEN)")
    parser.add_argument("--team-id", default=os.environ.get("VERCEL_FAKE_TEAM_ID"),
                        help="the only teamId accepted (env VERCEL_FAKE_TEAM_ID); default: any non-empty one")
    parser.add_argument("--root", default=os.environ.get("VERCEL_FAKE_ROOT"),
                        help="directory holding one private directory per session (default: a temp dir)")
    parser.add_argument("--exit-when-stdin-closes", action="store_true",
                        help="stop (and kill every process tree) when stdin reaches end of file")
    parser.add_argument("--isolation", choices=("auto", "bwrap", "none"),
                        default=os.environ.get("VERCEL_FAKE_ISOLATION", "auto"),
                        help="run commands under bubblewrap so /vercel is the session's own: auto (when bwrap works), "
                             "bwrap (required), none (env VERCEL_FAKE_ISOLATION)")
    arguments = parser.parse_args()
    # stdout carries only the LISTENING line; logs and error traces go to stderr.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="vercel-fake %(levelname)s %(message)s")
    temporary_root = None
    if arguments.root is None:
        temporary_root = tempfile.mkdtemp(prefix="vercel-fake-")
        arguments.root = temporary_root
    os.makedirs(arguments.root, exist_ok=True)
    settings = ServerSettings(token=arguments.token, root=os.path.abspath(arguments.root), team_id=arguments.team_id,
                              exit_when_stdin_closes=arguments.exit_when_stdin_closes)
    if arguments.isolation != "none":
        settings.bubblewrap_root_arguments = probe_bubblewrap()
        if settings.bubblewrap_root_arguments is None:
            if arguments.isolation == "bwrap":
                print("vercel-fake: --isolation bwrap, but bwrap is missing or cannot make a mount namespace here "
                      "(Debian: apt-get install -y bubblewrap)", file=sys.stderr)
                sys.exit(2)
            logging.warning("bwrap is unavailable: commands run without isolation, and /vercel in command text "
                            "means the host's")
    try:
        asyncio.run(serve(arguments.host, arguments.port, FakeVercel(settings)))
    finally:
        if temporary_root is not None:
            shutil.rmtree(temporary_root, ignore_errors=True)


if __name__ == "__main__":
    main()
