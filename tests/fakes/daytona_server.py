"""A faithful in-process fake of Daytona (main REST API + toolbox daemon + logs WebSocket) that runs real processes, with fault injection and a test clock.

Why this exists: no test machine reaches Daytona, yet the Rust driver and the official Python SDK must be exercised
against Daytona's real wire format. One aiohttp process serves everything on one port:

* Main API under `/api` (`Authorization: Bearer <key>`), as `https://app.daytona.io/api` does.
* The toolbox under `/toolbox/<sandboxId>/...`: every sandbox's `toolboxProxyUrl` is `http://<host>:<port>/toolbox`,
  so the SDK and the driver build `{toolboxProxyUrl}/{sandboxId}/process/execute` exactly as against Daytona's proxy.
  The deprecated main-API form `/api/toolbox/<sandboxId>/toolbox/...` reaches the same handlers.
* Previews under `/preview/<port>-<sandboxId>/...` (or a Host of the form `<port>-<sandboxId>.<anything>`), forwarded
  to `127.0.0.1:<port>` because sandbox processes run on this host.
* Test-only admin API under `/_admin/` (faults, request log, sandboxes with the bytes each received on the wire and
  sent as file content (`traffic.py`), test clock); never part of Daytona.

Path mapping (commands run for real, without a chroot): every sandbox owns `<root>/<sandboxId>/fs`, which stands for
the sandbox's `/`. The sandbox path `/home/daytona/a.txt` is the host path `<root>/<id>/fs/home/daytona/a.txt`. The
file API, `process/execute`'s `cwd` and every command's working directory use the mapping; commands also get `HOME`
set to the mapped home and `DAYTONA_FAKE_SANDBOX_ROOT` set to the mapped `/`. Session commands have no `cwd` field in
Daytona's API, so clients `cd` in the command text: the fake rewrites the sandbox user's home directory
(`/home/daytona`) where it starts a path in command text; no other absolute path is rewritten.

Behaviour follows Daytona's own code at v0.190.0 (daemon, proxy and API), then the official SDK's parsing, then the
OpenAPI spec; tests/fakes/daytona_server.md describes every route and lists the deviations.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import posixpath
import re
import secrets
import shlex
import shutil
import signal
import stat
import sys
import tempfile
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional

from aiohttp import WSMsgType, web

import traffic

DEFAULT_USER = "daytona"
STDOUT_MARKER = b"\x01\x01\x01"
STDERR_MARKER = b"\x02\x02\x02"
# The daemon's output rules (apps/daemon/pkg/session/common.go): SDKs older than 0.27.0 get combined output without
# markers; SDKs from 0.167.0 on also get stdout/stderr fields in JSON answers.
COMBINED_OUTPUT_BELOW_SDK_VERSION = (0, 27, 0)
SPLIT_OUTPUT_MINIMUM_SDK_VERSION = (0, 167, 0)
# The daemon reads the log file in 1 KiB chunks and sends each read as one binary frame.
DAEMON_LOG_READ_BYTES = 1024
BULK_DOWNLOAD_BOUNDARY = "DAYTONA-FILE-BOUNDARY"
# Daytona's documented defaults: 1 vCPU, 1 GiB RAM, 3 GiB disk, auto-stop after 15 idle minutes, archive after 7 days.
DEFAULT_RESOURCES = {"cpu": 1, "memory": 1, "disk": 3}
DEFAULT_AUTO_STOP_MINUTES = 15
DEFAULT_AUTO_ARCHIVE_MINUTES = 10080
# The proxy caches its activity updates for 45 s (apps/proxy/pkg/proxy/get_sandbox_target.go).
PROXY_ACTIVITY_DEBOUNCE_SECONDS = 45
SKIP_LAST_ACTIVITY_UPDATE_HEADER = "X-Daytona-Skip-Last-Activity-Update"
ORGANIZATION_ID = "fake-organization"
DAEMON_VERSION = "0.226.1"
HTTP_STATUS_TEXT = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 408: "Request Timeout",
                    409: "Conflict", 410: "Gone", 429: "Too Many Requests", 500: "Internal Server Error",
                    502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


def rfc3339(epoch_seconds: float) -> str:
    return dt.datetime.fromtimestamp(epoch_seconds, dt.timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def json_response(status: int, body: Any, headers: Optional[dict] = None) -> web.Response:
    return web.Response(status=status, body=json.dumps(body, separators=(",", ":")).encode(),
                        content_type="application/json", headers=headers)


def api_error(request: web.Request, status: int, message: str, headers: Optional[dict] = None) -> web.Response:
    """The main API's NestJS error body."""
    return json_response(status, {"path": request.path_qs, "timestamp": rfc3339(time.time()), "statusCode": status,
                                  "error": HTTP_STATUS_TEXT.get(status, "Error"), "message": message}, headers)


# The codes common-go's error middleware gives each error class (libs/common-go/pkg/errors/middleware.go, v0.190), and
# the prefix its constructors put before the message.
ERROR_CLASSES = {400: ("BAD_REQUEST", "bad request"), 401: ("UNAUTHORIZED", "unauthorized"),
                 403: ("FORBIDDEN", "forbidden"), 404: ("NOT_FOUND", "not found"), 408: ("REQUEST_TIMEOUT",
                 "request timeout"), 409: ("CONFLICT", "conflict"), 410: ("GONE", "gone"),
                 422: ("UNPROCESSABLE_ENTITY", "unprocessable entity"),
                 500: ("INTERNAL_SERVER_ERROR", "internal server error")}


def toolbox_error(request: web.Request, status: int, message: str, headers: Optional[dict] = None,
                  code: Optional[str] = None) -> web.Response:
    """The daemon's (and proxy's) JSON error: `{"statusCode","message","code","timestamp","path","method"}`.

    `message` is prefixed as the typed error's constructor does (`not found: session not found`); `code` is the
    class's upper-snake code unless a specific one is given.
    """
    default_code, prefix = ERROR_CLASSES.get(status, ("", ""))
    return json_response(status, {"statusCode": status, "message": f"{prefix}: {message}" if prefix else message,
                                  "code": code or default_code, "timestamp": rfc3339(time.time()),
                                  "path": request.path, "method": request.method}, headers)


def toolbox_untyped_error(message: str) -> web.Response:
    """An error the daemon wrapped with fmt.Errorf: its middleware's fallback, a 500 with zero-valued fields."""
    return json_response(500, {"statusCode": 500, "message": message, "timestamp": "0001-01-01T00:00:00Z",
                               "path": ""})


def parse_version(text: Optional[str]) -> Optional[tuple]:
    if not text:
        return None
    match = re.match(r"^v?(\d+)\.(\d+)\.(\d+)", text.strip())
    return tuple(int(part) for part in match.groups()) if match else None


# ---------------------------------------------------------------------------------------------------------------
# Test clock, faults and the request log
# ---------------------------------------------------------------------------------------------------------------


class TestClock:
    """Wall time plus an offset that `POST /_admin/clock` advances, so auto-stop can be tested without waiting."""

    def __init__(self) -> None:
        self.offset_seconds = 0.0

    def now(self) -> float:
        return time.time() + self.offset_seconds


@dataclass
class FaultSettings:
    """Faults a test turns on through `POST /_admin/faults`; each counter is consumed by the requests it hits."""

    sandbox_id: Optional[str] = None
    rate_limit_next: int = 0
    retry_after_seconds: int = 1
    rate_limit_plane: str = "any"
    rate_limit_path_pattern: Optional[str] = None
    error_next: int = 0
    error_status: int = 503
    error_plane: str = "any"
    error_path_pattern: Optional[str] = None
    hang_toolbox: bool = False
    hang_api: bool = False
    revoke_key: bool = False
    stuck_starting: bool = False
    logs_frame_bytes: Optional[int] = None
    drop_logs_after_bytes: Optional[int] = None
    drop_logs_count: int = 1

    def to_json(self) -> dict:
        return {
            "sandboxId": self.sandbox_id,
            "rateLimitNext": self.rate_limit_next,
            "retryAfter": self.retry_after_seconds,
            "rateLimitPlane": self.rate_limit_plane,
            "rateLimitPath": self.rate_limit_path_pattern,
            "errorNext": self.error_next,
            "errorStatus": self.error_status,
            "errorPlane": self.error_plane,
            "errorPath": self.error_path_pattern,
            "hangToolbox": self.hang_toolbox,
            "hangApi": self.hang_api,
            "revokeKey": self.revoke_key,
            "stuckStarting": self.stuck_starting,
            "logsFrameBytes": self.logs_frame_bytes,
            "dropLogsAfterBytes": self.drop_logs_after_bytes,
            "dropLogsCount": self.drop_logs_count,
        }


@dataclass
class RequestLogEntry:
    sequence: int
    time: float
    method: str
    path: str
    query: str
    plane: str
    route: str
    sandbox_id: Optional[str]
    status: Optional[int] = None
    headers: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"seq": self.sequence, "time": self.time, "method": self.method, "path": self.path,
                "query": self.query, "plane": self.plane, "route": self.route, "sandboxId": self.sandbox_id,
                "status": self.status, "headers": self.headers}


# ---------------------------------------------------------------------------------------------------------------
# Sessions and commands
# ---------------------------------------------------------------------------------------------------------------


# Shell code written to a session shell's stdin for each command. It reproduces the daemon's wrapper (apps/daemon/
# pkg/session, v0.190): the command file is sourced in the session shell itself (so `cd` and `export` carry over and
# `exit` ends the session), each line of stdout/stderr is appended to the log behind its marker by a `read` loop (a
# last line without a newline gets one), stdin is a FIFO that sees EOF at once for synchronous commands and stays
# open for asynchronous ones (for /input), and the exit code is written only once both labelers have drained.
SESSION_COMMAND_WRAPPER = r"""{
__dtn_dir=%(directory)s
__dtn_log="$__dtn_dir/output.log"
rm -f "$__dtn_dir/out.fifo" "$__dtn_dir/err.fifo" "$__dtn_dir/in.fifo" && mkfifo "$__dtn_dir/out.fifo" "$__dtn_dir/err.fifo" "$__dtn_dir/in.fifo" || exit 1
( while IFS= read -r __dtn_line || [ -n "$__dtn_line" ]; do printf '\001\001\001%%s\n' "$__dtn_line"; done < "$__dtn_dir/out.fifo" ) >> "$__dtn_log" & __dtn_out=$!
( while IFS= read -r __dtn_line || [ -n "$__dtn_line" ]; do printf '\002\002\002%%s\n' "$__dtn_line"; done < "$__dtn_dir/err.fifo" ) >> "$__dtn_log" & __dtn_err=$!
%(stdin_holder)s
__dtn_holder=$!
{ . "$__dtn_dir/cmd.sh"; } < "$__dtn_dir/in.fifo" > "$__dtn_dir/out.fifo" 2> "$__dtn_dir/err.fifo"
__dtn_code=$?
kill "$__dtn_holder" 2>/dev/null; wait "$__dtn_holder" 2>/dev/null
wait "$__dtn_out" "$__dtn_err"
echo "$__dtn_code" >> "$__dtn_dir/exit_code"
rm -f "$__dtn_dir/out.fifo" "$__dtn_dir/err.fifo" "$__dtn_dir/in.fifo"
}
"""
SYNC_STDIN_HOLDER = ': > "$__dtn_dir/in.fifo" &'
ASYNC_STDIN_HOLDER = 'while :; do sleep 3600; done > "$__dtn_dir/in.fifo" &'


class SessionCommand:
    """One command of a toolbox session: its files live in the session's directory, as the daemon keeps them."""

    def __init__(self, session: "ToolboxSession", command_id: str, command: str, suppress_input_echo: bool):
        self.session = session
        self.command_id = command_id
        self.command = command
        self.suppress_input_echo = suppress_input_echo
        self.directory = os.path.join(session.directory, command_id)
        self.cached_exit_code: Optional[int] = None

    @property
    def log_path(self) -> str:
        return os.path.join(self.directory, "output.log")

    @property
    def input_path(self) -> str:
        return os.path.join(self.directory, "in.fifo")

    @property
    def exit_code(self) -> Optional[int]:
        """Read from the exit-code file the wrapper writes, as the daemon's GetSessionCommand does."""
        if self.cached_exit_code is None:
            try:
                with open(os.path.join(self.directory, "exit_code")) as handle:
                    text = handle.read().strip()
            except OSError:
                return None
            if text:
                with contextlib.suppress(ValueError):
                    self.cached_exit_code = int(text.splitlines()[0])
        return self.cached_exit_code

    def read_log(self) -> bytes:
        try:
            with open(self.log_path, "rb") as handle:
                return handle.read()
        except OSError:
            return b""

    def json(self) -> dict:
        body: dict = {"id": self.command_id, "command": self.command}
        exit_code = self.exit_code
        if exit_code is not None:
            body["exitCode"] = exit_code
        return body


class ToolboxSession:
    """A daemon session: one long-lived shell, in its own process group, that reads its commands from stdin."""

    def __init__(self, sandbox: "Sandbox", session_id: str, directory: str, shell: asyncio.subprocess.Process):
        self.sandbox = sandbox
        self.session_id = session_id
        self.directory = directory
        self.shell = shell
        self.commands: dict[str, SessionCommand] = {}
        # Set when the session is deleted or its sandbox stops: open log WebSockets then close, as on ctx.Done().
        self.ended = asyncio.Event()

    def signal_group(self, signal_number: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.shell.pid, signal_number)

    def has_children(self) -> bool:
        """Whether the shell still has child processes (the daemon's test for a finished termination)."""
        try:
            with open(f"/proc/{self.shell.pid}/task/{self.shell.pid}/children") as handle:
                return bool(handle.read().split())
        except OSError:
            return False

    def json(self) -> dict:
        return {"sessionId": self.session_id, "commands": [command.json() for command in self.commands.values()]}


# ---------------------------------------------------------------------------------------------------------------
# Sandboxes
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Sandbox:
    sandbox_id: str
    name: str
    snapshot: Optional[str]
    user: str
    env: dict
    labels: dict
    public: bool
    cpu: int
    memory: int
    disk: int
    gpu: int
    host_root: str
    created_at: float
    auto_stop_interval: float
    auto_archive_interval: float
    auto_delete_interval: float
    last_activity: float
    state: str = "started"
    error_reason: Optional[str] = None
    build_info: Optional[dict] = None
    network_block_all: bool = False
    network_allow_list: Optional[str] = None
    updated_at: float = 0.0
    preview_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    sessions: dict = field(default_factory=dict)
    # Processes started by process/execute, killed with everything else when the sandbox stops or goes away.
    execute_processes: set = field(default_factory=set)
    # Open logs WebSockets' transports: a sandbox that stops takes its connections with it.
    open_transports: set = field(default_factory=set)
    # How the sandbox stopped last ("auto-stop", "api", "admin"), for tests that check why.
    stop_reason: Optional[str] = None
    # Proxy activity bookkeeping: when the proxy last forwarded an activity update (test clock), and how many
    # toolbox/preview requests are open now (each keeps the sandbox active while it lasts).
    last_proxy_activity_update: Optional[float] = None
    open_proxied_requests: int = 0

    @property
    def filesystem_root(self) -> str:
        return os.path.join(self.host_root, "fs")

    @property
    def home(self) -> str:
        return "/root" if self.user == "root" else f"/home/{self.user}"

    def sandbox_path_for(self, path: Optional[str]) -> str:
        """Normalizes a sandbox path; relative paths resolve against the user's home, the daemon's work dir."""
        if not path:
            path = self.home
        if not path.startswith("/"):
            # The daemon uses paths as given, relative to its work directory (the home); `~` is not expanded.
            path = posixpath.join(self.home, path)
        # normpath on an absolute path cannot climb above "/", so the host path stays inside the private directory.
        return posixpath.normpath(path).replace("//", "/")

    def host_path_for(self, sandbox_path: str) -> str:
        return os.path.join(self.filesystem_root, sandbox_path.lstrip("/"))

    def rewrite_command_text(self, command: str) -> str:
        """Rewrites the home directory where it starts a path, so `cd /home/daytona/x` works without a chroot."""
        pattern = r"(?<![\w/.~-])" + re.escape(self.home) + r"(?=$|[/\s'\";&|)<>:`])"
        host_home = self.host_path_for(self.home)
        return re.sub(pattern, lambda _match: host_home, command)

    def all_processes_kill(self, signal_number: int) -> None:
        for session in self.sessions.values():
            session.signal_group(signal_number)
            session.ended.set()
        for process in list(self.execute_processes):
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal_number)

    def json(self, toolbox_proxy_url: str, listed: bool = False) -> dict:
        body = {
            "id": self.sandbox_id,
            "organizationId": ORGANIZATION_ID,
            "name": self.name,
            "snapshot": self.snapshot,
            "user": self.user,
            "env": self.env,
            "labels": self.labels,
            "public": self.public,
            "networkBlockAll": self.network_block_all,
            "networkAllowList": self.network_allow_list,
            "kvm": False,
            "target": "us",
            "cpu": self.cpu,
            "gpu": self.gpu,
            "memory": self.memory,
            "disk": self.disk,
            "state": self.state,
            "desiredState": "stopped" if self.state in ("stopped", "stopping") else (
                "archived" if self.state == "archived" else "started"),
            "errorReason": self.error_reason,
            "backupState": "None",
            "autoStopInterval": self.auto_stop_interval,
            "autoArchiveInterval": self.auto_archive_interval,
            "autoDeleteInterval": self.auto_delete_interval,
            "volumes": [],
            "createdAt": rfc3339(self.created_at),
            "updatedAt": rfc3339(self.updated_at or self.created_at),
            "lastActivityAt": rfc3339(self.last_activity),
            "daemonVersion": DAEMON_VERSION,
            "runnerId": "fake-runner",
            "toolboxProxyUrl": toolbox_proxy_url,
        }
        if self.build_info is not None:
            body["buildInfo"] = self.build_info
        if listed:
            for private in ("env", "kvm", "volumes", "buildInfo"):
                body.pop(private, None)
        return body


@dataclass
class ServerSettings:
    api_key: str
    root: str
    jwt: Optional[str] = None
    organization_id: Optional[str] = None
    exit_when_stdin_closes: bool = False
    # DAYTONA_TERMINATION_GRACE_PERIOD of the daemon (default 5 s): how long a deleted session gets after SIGTERM.
    termination_grace_seconds: float = 5.0
    # How long the logs WebSocket reads nothing before it checks for the exit code (the daemon: 50 polls of 20 ms).
    logs_exit_confirm_seconds: float = 1.0


SERVER_SETTINGS = ServerSettings(api_key="", root="")


class FakeDaytona:
    """All state of the fake: sandboxes, snapshots, faults, the request log and the test clock."""

    def __init__(self, settings: ServerSettings):
        self.settings = settings
        self.sandboxes: dict[str, Sandbox] = {}
        self.snapshots: dict[str, dict] = {}
        self.faults = FaultSettings()
        self.upload_drop = traffic.UploadDrop()
        self.traffic = traffic.Counters()
        self.clock = TestClock()
        # Replaced whenever a hang fault changes, so hung requests and streams re-check whether they may go on.
        self.hang_changed = asyncio.Event()
        self.request_log: list[RequestLogEntry] = []
        self.next_request_sequence = 1
        self.signed_preview_tokens: dict[str, tuple[str, int, float]] = {}

    # --- faults ------------------------------------------------------------------------------------------------

    def apply_faults(self, body: dict) -> None:
        faults = self.faults
        integer_fields = {"rateLimitNext": "rate_limit_next", "retryAfter": "retry_after_seconds",
                          "errorNext": "error_next", "errorStatus": "error_status", "dropLogsCount": "drop_logs_count"}
        for name, attribute in integer_fields.items():
            if name in body:
                setattr(faults, attribute, int(body[name]))
        optional_integer_fields = {"logsFrameBytes": "logs_frame_bytes", "dropLogsAfterBytes": "drop_logs_after_bytes"}
        for name, attribute in optional_integer_fields.items():
            if name in body:
                setattr(faults, attribute, None if body[name] is None else int(body[name]))
        if "dropLogsAfterBytes" in body and "dropLogsCount" not in body:
            faults.drop_logs_count = 1
        text_fields = {"rateLimitPlane": "rate_limit_plane", "errorPlane": "error_plane"}
        for name, attribute in text_fields.items():
            if name in body:
                setattr(faults, attribute, str(body[name]))
        for name, attribute in {"rateLimitPath": "rate_limit_path_pattern", "errorPath": "error_path_pattern",
                                "sandboxId": "sandbox_id"}.items():
            if name in body:
                setattr(faults, attribute, body[name] or None)
        boolean_fields = {"hangToolbox": "hang_toolbox", "hangApi": "hang_api", "revokeKey": "revoke_key",
                          "stuckStarting": "stuck_starting"}
        for name, attribute in boolean_fields.items():
            if name in body:
                setattr(faults, attribute, bool(body[name]))
        if not faults.stuck_starting:
            self.release_stuck_sandboxes()
        self.upload_drop.apply(body)
        self.wake_hung_requests()
        vanish = body.get("vanish")
        if vanish:
            for sandbox_id in [vanish] if isinstance(vanish, str) else list(vanish):
                self.vanish(sandbox_id)

    def reset_faults(self) -> None:
        self.faults = FaultSettings()
        self.upload_drop = traffic.UploadDrop()
        self.release_stuck_sandboxes()
        self.wake_hung_requests()

    def release_stuck_sandboxes(self) -> None:
        for sandbox in self.sandboxes.values():
            if sandbox.state == "starting" and not self.is_stuck_starting(sandbox.sandbox_id):
                sandbox.state = "started"
                self.touch(sandbox)

    def wake_hung_requests(self) -> None:
        self.hang_changed.set()
        self.hang_changed = asyncio.Event()

    def fault_applies_to(self, sandbox_id: Optional[str]) -> bool:
        return self.faults.sandbox_id is None or self.faults.sandbox_id == sandbox_id

    def is_stuck_starting(self, sandbox_id: str) -> bool:
        return self.faults.stuck_starting and self.fault_applies_to(sandbox_id)

    async def wait_while_hung(self, plane: str, sandbox_id: Optional[str]) -> None:
        while self.fault_applies_to(sandbox_id) and (
                (plane == "toolbox" and self.faults.hang_toolbox) or (plane == "api" and self.faults.hang_api)):
            await self.hang_changed.wait()

    # --- sandbox lifecycle -------------------------------------------------------------------------------------

    def touch(self, sandbox: Sandbox) -> None:
        """Records activity: what resets the auto-stop countdown (see daytona_server.md, "Auto-stop")."""
        sandbox.last_activity = self.clock.now()
        sandbox.updated_at = time.time()

    @contextlib.contextmanager
    def proxied_request(self, sandbox: Optional[Sandbox], request: web.Request):
        """Daytona's proxy in front of the toolbox and previews: it records activity when a request arrives (at most
        once per 45 s per sandbox) and, for as long as the request stays open (a logs WebSocket, a hung call), every
        50 s; `X-Daytona-Skip-Last-Activity-Update: true` opts out of both."""
        if sandbox is None or request.headers.get(SKIP_LAST_ACTIVITY_UPDATE_HEADER) == "true":
            yield
            return
        now = self.clock.now()
        if sandbox.last_proxy_activity_update is None or now - sandbox.last_proxy_activity_update >= \
                PROXY_ACTIVITY_DEBOUNCE_SECONDS:
            sandbox.last_proxy_activity_update = now
            self.touch(sandbox)
        sandbox.open_proxied_requests += 1
        try:
            yield
        finally:
            sandbox.open_proxied_requests -= 1

    def find(self, id_or_name: str) -> Optional[Sandbox]:
        sandbox = self.sandboxes.get(id_or_name)
        if sandbox is not None:
            return sandbox
        for candidate in self.sandboxes.values():
            if candidate.name == id_or_name:
                return candidate
        return None

    def stop_sandbox(self, sandbox: Sandbox, reason: str) -> None:
        """A stopped sandbox keeps its disk and loses its processes, sessions and connections."""
        sandbox.state = "stopped"
        sandbox.stop_reason = reason
        sandbox.updated_at = time.time()
        self.kill_everything(sandbox)

    def kill_everything(self, sandbox: Sandbox) -> None:
        for transport in list(sandbox.open_transports):
            transport.close()
        sandbox.open_transports.clear()
        sandbox.all_processes_kill(signal.SIGKILL)
        sandbox.sessions.clear()
        # The daemon restarts with no sessions; their logs go with them.
        sessions_directory = os.path.join(sandbox.host_root, "daemon", "sessions")
        asyncio.get_running_loop().run_in_executor(None, shutil.rmtree, sessions_directory, True)

    def vanish(self, sandbox_id: str) -> bool:
        """Deleted from outside (another client, the dashboard, an org policy): gone at once, directory removed."""
        sandbox = self.sandboxes.pop(sandbox_id, None)
        if sandbox is None:
            return False
        sandbox.state = "destroyed"
        self.kill_everything(sandbox)
        asyncio.get_running_loop().run_in_executor(None, shutil.rmtree, sandbox.host_root, True)
        return True

    async def auto_stop_forever(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            try:
                self.auto_stop_once()
            except Exception:
                # One bad sandbox must not stop auto-stop for the others; the trace goes to stderr for debugging.
                logging.exception("the auto-stop check failed; retrying")

    def auto_stop_once(self) -> None:
        """Stops started sandboxes idle for their autoStopInterval, measured on the test clock."""
        now = self.clock.now()
        for sandbox in list(self.sandboxes.values()):
            if sandbox.open_proxied_requests > 0:
                # The proxy's 50-second activity poll for open requests would have run all along.
                sandbox.last_activity = now
            if sandbox.state == "started" and sandbox.auto_stop_interval and sandbox.auto_stop_interval > 0:
                # The API's check: lastActivityAt < NOW() - autoStopInterval minutes.
                if now - sandbox.last_activity > sandbox.auto_stop_interval * 60:
                    self.stop_sandbox(sandbox, "auto-stop")


# ---------------------------------------------------------------------------------------------------------------
# Front door: routing, request log, faults, auth
# ---------------------------------------------------------------------------------------------------------------

TOOLBOX_PATH = re.compile(r"^/toolbox/([^/]+)(/.*)?$")
DEPRECATED_TOOLBOX_PATH = re.compile(r"^/api/toolbox/([^/]+)/toolbox(/.*)?$")
PREVIEW_PATH = re.compile(r"^/preview/(\d+)-([^/]+)(/.*)?$")
PREVIEW_HOST = re.compile(r"^(\d+)-([A-Za-z0-9-]+)\.")
API_SANDBOX_PATH = re.compile(r"^/api/sandbox/([^/]+)(/.*)?$")
# Headers tests may assert on; credentials are deliberately absent so the log never holds them.
LOGGED_REQUEST_HEADERS = ("Content-Type", "X-Daytona-SDK-Version", "X-Daytona-Source", "X-Daytona-Split-Output",
                          "User-Agent", "Upgrade", "Sec-WebSocket-Protocol", "X-Daytona-Skip-Preview-Warning",
                          "X-Daytona-Organization-ID", SKIP_LAST_ACTIVITY_UPDATE_HEADER)


def classify(request: web.Request) -> tuple[str, Optional[str], str, Optional[int]]:
    """(plane, sandboxId or preview id, path inside the plane, preview port) for a request."""
    path = request.path
    if path.startswith("/_admin/"):
        return "admin", None, path, None
    host_match = PREVIEW_HOST.match(request.host or "")
    if host_match:
        return "preview", host_match.group(2), path, int(host_match.group(1))
    match = PREVIEW_PATH.match(path)
    if match:
        return "preview", match.group(2), match.group(3) or "/", int(match.group(1))
    match = TOOLBOX_PATH.match(path) or DEPRECATED_TOOLBOX_PATH.match(path)
    if match:
        return "toolbox", match.group(1), match.group(2) or "/", None
    if path.startswith("/api/socket.io"):
        return "socketio", None, path, None
    if path == "/api" or path.startswith("/api/"):
        match = API_SANDBOX_PATH.match(path)
        return "api", match.group(1) if match else None, path[len("/api"):] or "/", None
    return "unknown", None, path, None


ROUTE_ID_PATTERNS = [
    (re.compile(r"^(/toolbox/)[^/]+"), r"\1{sandboxId}"),
    (re.compile(r"^(/api/toolbox/)[^/]+"), r"\1{sandboxId}"),
    (re.compile(r"^(/api/sandbox/)(?!paginated$|for-runner$|ssh-access)[^/]+"), r"\1{sandboxIdOrName}"),
    (re.compile(r"(/process/session/)(?!entrypoint)[^/]+"), r"\1{sessionId}"),
    (re.compile(r"(/command/)[^/]+"), r"\1{commandId}"),
    (re.compile(r"(/ports/)\d+"), r"\1{port}"),
    (re.compile(r"(/autostop/|/autoarchive/|/autodelete/|/public/)[^/]+"), r"\1{value}"),
    (re.compile(r"^(/api/snapshots/)[^/]+"), r"\1{id}"),
    (re.compile(r"^/preview/[^/]+"), "/preview/{port}-{sandboxId}"),
]


def route_template(path: str) -> str:
    for pattern, replacement in ROUTE_ID_PATTERNS:
        path = pattern.sub(replacement, path)
    return path


def bearer_token(request: web.Request) -> Optional[str]:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return None


def credentials_valid(request: web.Request, fake: FakeDaytona) -> bool:
    if fake.faults.revoke_key:
        return False
    token = bearer_token(request)
    if token is None:
        return False
    if secrets.compare_digest(token, fake.settings.api_key):
        return True
    if fake.settings.jwt and secrets.compare_digest(token, fake.settings.jwt):
        return request.headers.get("X-Daytona-Organization-ID") == fake.settings.organization_id
    return False


@web.middleware
async def front_door(request: web.Request, handler) -> web.StreamResponse:
    fake: FakeDaytona = request.app["fake"]
    plane, sandbox_id, inner_path, preview_port = classify(request)
    entry = RequestLogEntry(fake.next_request_sequence, time.time(), request.method, request.path,
                            request.query_string, plane, route_template(request.path), sandbox_id)
    fake.next_request_sequence += 1
    entry.headers = {name: request.headers[name] for name in LOGGED_REQUEST_HEADERS if name in request.headers}
    if plane != "admin":
        fake.request_log.append(entry)
    try:
        response = await route_request(request, fake, plane, sandbox_id, inner_path, preview_port)
    except web.HTTPException as http_exception:
        entry.status = http_exception.status
        raise
    finally:
        received = traffic.charge(request)
        if plane == "toolbox":
            fake.traffic.add_received(sandbox_id, received)
            if inner_path == "/files/bulk-upload" and fake.fault_applies_to(sandbox_id):
                fake.upload_drop.finished(request, received)
    entry.status = response.status
    if plane == "toolbox" and inner_path in ("/files/download", "/files/bulk-download"):
        fake.traffic.add_sent(sandbox_id, response.content_length or response.body_length)
    return response


def path_selected(pattern: Optional[str], path: str) -> bool:
    return pattern is None or re.search(pattern, path) is not None


async def route_request(request: web.Request, fake: FakeDaytona, plane: str, sandbox_id: Optional[str],
                        inner_path: str, preview_port: Optional[int]) -> web.StreamResponse:
    if plane == "admin":
        return await handle_admin(request, fake)
    if plane == "preview":
        return await handle_preview(request, fake, sandbox_id or "", preview_port or 0, inner_path)
    if plane == "unknown":
        return api_error(request, 404, f"Cannot {request.method} {request.path}")
    error_factory = toolbox_error if plane == "toolbox" else api_error

    faults = fake.faults
    in_scope = fake.fault_applies_to(sandbox_id)
    if (in_scope and faults.rate_limit_next > 0 and faults.rate_limit_plane in ("any", plane)
            and path_selected(faults.rate_limit_path_pattern, request.path)):
        faults.rate_limit_next -= 1
        return error_factory(request, 429, "ThrottlerException: Too Many Requests",
                             headers={"Retry-After": str(faults.retry_after_seconds)})
    if (in_scope and faults.error_next > 0 and faults.error_plane in ("any", plane)
            and path_selected(faults.error_path_pattern, request.path)):
        faults.error_next -= 1
        return error_factory(request, faults.error_status, "Injected server error, please retry.")
    if plane == "api":
        await fake.wait_while_hung(plane, sandbox_id)

    if plane == "socketio":
        # The notification gateway is not served: the SDK's socket.io client fails to connect and the SDK falls
        # back to polling `GET /api/sandbox/{id}` (daytona_server.md, "Deviations").
        return api_error(request, 404, f"Cannot {request.method} {request.path}")
    if not credentials_valid(request, fake):
        # Never echo the credential received, nor the expected one.
        return error_factory(request, 401, "Unauthorized")
    if plane == "toolbox":
        with fake.proxied_request(fake.sandboxes.get(sandbox_id or ""), request):
            await fake.wait_while_hung(plane, sandbox_id)
            return await handle_toolbox(request, fake, sandbox_id or "", inner_path)
    return await handle_api(request, fake, inner_path)


# ---------------------------------------------------------------------------------------------------------------
# Admin API (test-only)
# ---------------------------------------------------------------------------------------------------------------


def admin_sandbox_json(sandbox: Sandbox, fake: FakeDaytona) -> dict:
    return {
        "id": sandbox.sandbox_id,
        "name": sandbox.name,
        "state": sandbox.state,
        "stopReason": sandbox.stop_reason,
        "hostRoot": sandbox.filesystem_root,
        "home": sandbox.home,
        "labels": sandbox.labels,
        "autoStopInterval": sandbox.auto_stop_interval,
        "lastActivityAt": rfc3339(sandbox.last_activity),
        "idleSeconds": round(fake.clock.now() - sandbox.last_activity, 3),
        "previewToken": sandbox.preview_token,
        **fake.traffic.to_json(sandbox.sandbox_id),
        "sessions": [{"sessionId": session.session_id,
                      "shellPid": session.shell.pid,
                      "shellAlive": session.shell.returncode is None,
                      "commands": [{"id": command.command_id, "command": command.command,
                                    "exitCode": command.exit_code,
                                    "logBytes": len(command.read_log())}
                                   for command in session.commands.values()]}
                     for session in sandbox.sessions.values()],
    }


def request_counts(entries: list[RequestLogEntry], key) -> list[dict]:
    counts: dict[tuple, int] = {}
    for entry in entries:
        counts[key(entry)] = counts.get(key(entry), 0) + 1
    return [{"method": method, "path": path, "count": count} for (method, path), count in counts.items()]


async def handle_admin(request: web.Request, fake: FakeDaytona) -> web.StreamResponse:
    path, method = request.path, request.method
    if path == "/_admin/faults":
        if method == "GET":
            return json_response(200, {**fake.faults.to_json(), **fake.upload_drop.to_json()})
        if method == "POST":
            try:
                body = await request.json()
            except json.JSONDecodeError:
                return json_response(400, {"message": "The body must be a JSON object."})
            fake.apply_faults(body)
            return json_response(200, {**fake.faults.to_json(), **fake.upload_drop.to_json()})
        if method == "DELETE":
            fake.reset_faults()
            return json_response(200, {**fake.faults.to_json(), **fake.upload_drop.to_json()})
    if path == "/_admin/requests":
        if method == "GET":
            since = int(request.query.get("since", "0"))
            plane = request.query.get("plane")
            sandbox_id = request.query.get("sandboxId")
            entries = [entry for entry in fake.request_log
                       if entry.sequence >= since and (plane is None or entry.plane == plane)
                       and (sandbox_id is None or entry.sandbox_id == sandbox_id)]
            return json_response(200, {
                "requests": [entry.to_json() for entry in entries],
                "total": len(entries),
                "counts": request_counts(entries, lambda entry: (entry.method, entry.path)),
                "routeCounts": request_counts(entries, lambda entry: (entry.method, entry.route)),
                "nextSeq": fake.next_request_sequence,
            })
        if method == "DELETE":
            fake.request_log.clear()
            return json_response(200, {"nextSeq": fake.next_request_sequence})
    if path == "/_admin/sandboxes" and method == "GET":
        return json_response(200, {"sandboxes": [admin_sandbox_json(sandbox, fake)
                                                 for sandbox in fake.sandboxes.values()]})
    match = re.match(r"^/_admin/sandboxes/([^/]+)$", path)
    if match:
        sandbox = fake.find(match.group(1))
        if method == "GET" and sandbox is not None:
            return json_response(200, admin_sandbox_json(sandbox, fake))
        if method == "DELETE":
            if fake.vanish(sandbox.sandbox_id if sandbox else match.group(1)):
                return json_response(200, {"deleted": match.group(1)})
            return json_response(404, {"message": "no such sandbox"})
        return json_response(404, {"message": "no such sandbox"})
    if path == "/_admin/clock":
        if method == "POST":
            try:
                body = await request.json()
            except json.JSONDecodeError:
                return json_response(400, {"message": "The body must be a JSON object."})
            fake.clock.offset_seconds += float(body.get("advanceSeconds", 0))
            # Decide at once, so a test can assert right after advancing.
            fake.auto_stop_once()
        if method in ("GET", "POST"):
            return json_response(200, {"now": rfc3339(fake.clock.now()), "offsetSeconds": fake.clock.offset_seconds})
    return json_response(404, {"message": "Unknown admin route."})


# ---------------------------------------------------------------------------------------------------------------
# Main API
# ---------------------------------------------------------------------------------------------------------------


def toolbox_proxy_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}/toolbox"


def preview_base_url(request: web.Request, port: int, sandbox_or_token: str) -> str:
    return f"{request.scheme}://{request.host}/preview/{port}-{sandbox_or_token}"


async def read_json_body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except json.JSONDecodeError as error:
        raise web.HTTPBadRequest(text=json.dumps({"statusCode": 400, "message": f"invalid JSON body: {error.msg}",
                                                  "error": "Bad Request"}), content_type="application/json")


def number_or(value: Any, default: Any) -> Any:
    return default if value is None else value


async def create_sandbox(request: web.Request, fake: FakeDaytona) -> web.StreamResponse:
    body = await read_json_body(request)
    if not isinstance(body, dict):
        return api_error(request, 400, "The body must be a JSON object.")
    name = body.get("name")
    if name and fake.find(name) is not None:
        return api_error(request, 409, f"Sandbox with name {name} already exists")
    labels = body.get("labels") or {}
    env = body.get("env") or {}
    if not all(isinstance(value, str) for value in list(labels.values()) + list(env.values())):
        return api_error(request, 400, "labels and env values must be strings")
    snapshot_name = body.get("snapshot")
    # The API's own checks (sandbox.controller.ts, v0.190): resources come from the snapshot unless building an image.
    if body.get("buildInfo"):
        if snapshot_name:
            return api_error(request, 400, "Cannot specify a snapshot when using a build info entry")
    elif body.get("cpu") or body.get("gpu") or body.get("memory") or body.get("disk"):
        return api_error(request, 400, "Cannot specify Sandbox resources when using a snapshot")
    snapshot = fake.snapshots.get(snapshot_name) if snapshot_name else None
    if snapshot is not None and snapshot["state"] != "active":
        return api_error(request, 400, f"Snapshot {snapshot_name} is {snapshot['state']}")
    sandbox_id = str(uuid.uuid4())
    host_root = os.path.join(fake.settings.root, sandbox_id)
    filesystem_root = os.path.join(host_root, "fs")
    if snapshot is not None and snapshot.get("hostRoot"):
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: shutil.copytree(snapshot["hostRoot"], filesystem_root, symlinks=True))
    user = body.get("user") or DEFAULT_USER
    now = time.time()
    sandbox = Sandbox(
        sandbox_id=sandbox_id,
        name=name or sandbox_id,
        snapshot=snapshot_name if snapshot_name else (None if body.get("buildInfo") else "daytonaio/sandbox:latest"),
        user=user,
        env={**(snapshot or {}).get("env", {}), **env},
        labels=dict(labels),
        public=bool(body.get("public", False)),
        cpu=int(number_or(body.get("cpu"), (snapshot or {}).get("cpu", DEFAULT_RESOURCES["cpu"]))),
        memory=int(number_or(body.get("memory"), (snapshot or {}).get("mem", DEFAULT_RESOURCES["memory"]))),
        disk=int(number_or(body.get("disk"), (snapshot or {}).get("disk", DEFAULT_RESOURCES["disk"]))),
        gpu=int(number_or(body.get("gpu"), 0)),
        host_root=host_root,
        created_at=now,
        auto_stop_interval=number_or(body.get("autoStopInterval"), DEFAULT_AUTO_STOP_MINUTES),
        auto_archive_interval=number_or(body.get("autoArchiveInterval"), DEFAULT_AUTO_ARCHIVE_MINUTES),
        auto_delete_interval=number_or(body.get("autoDeleteInterval"), -1),
        last_activity=fake.clock.now(),
        build_info=({"dockerfileContent": body["buildInfo"].get("dockerfileContent"),
                     "contextHashes": body["buildInfo"].get("contextHashes") or [],
                     "createdAt": rfc3339(now), "updatedAt": rfc3339(now),
                     "snapshotRef": "fake-build-" + sandbox_id[:8]}
                    if isinstance(body.get("buildInfo"), dict) else None),
        network_block_all=bool(body.get("networkBlockAll", False)),
        network_allow_list=body.get("networkAllowList"),
    )
    for directory in (sandbox.home.lstrip("/"), "tmp", "root"):
        os.makedirs(os.path.join(filesystem_root, directory), exist_ok=True)
    sandbox.state = "starting" if fake.is_stuck_starting(sandbox_id) else "started"
    fake.sandboxes[sandbox_id] = sandbox
    return json_response(200, sandbox.json(toolbox_proxy_url(request)))


def list_sandboxes(request: web.Request, fake: FakeDaytona, paginated: bool) -> web.StreamResponse:
    query = request.query
    wanted_labels: dict = {}
    if query.get("labels"):
        try:
            wanted_labels = json.loads(query["labels"])
        except json.JSONDecodeError:
            return api_error(request, 400, "labels must be a JSON object")
    wanted_states = set()
    for value in query.getall("states", []):
        wanted_states.update(part for part in value.split(",") if part)
    matching = [sandbox for sandbox in fake.sandboxes.values()
                if all(sandbox.labels.get(key) == value for key, value in wanted_labels.items())
                and (not wanted_states or sandbox.state in wanted_states)
                and sandbox.sandbox_id.lower().startswith(query.get("id", "").lower())
                and sandbox.name.lower().startswith(query.get("name", "").lower())]
    matching.sort(key=lambda sandbox: sandbox.created_at, reverse=True)
    limit = max(1, min(200, int(float(query.get("limit", "100")))))
    if paginated:
        page = max(1, int(float(query.get("page", "1"))))
        items = matching[(page - 1) * limit: page * limit]
        return json_response(200, {"items": [sandbox.json(toolbox_proxy_url(request), listed=True)
                                             for sandbox in items],
                                   "total": len(matching), "page": page,
                                   "totalPages": max(1, -(-len(matching) // limit))})
    start = int(query.get("cursor") or 0) if (query.get("cursor") or "0").isdigit() else 0
    items = matching[start: start + limit]
    next_cursor = str(start + limit) if start + limit < len(matching) else None
    return json_response(200, {"items": [sandbox.json(toolbox_proxy_url(request), listed=True) for sandbox in items],
                               "nextCursor": next_cursor})


def snapshot_json(snapshot: dict) -> dict:
    return {key: value for key, value in snapshot.items() if key not in ("hostRoot", "env")}


def new_snapshot_record(name: str, image_name: Optional[str], source_sandbox: Optional[Sandbox]) -> dict:
    now = rfc3339(time.time())
    return {
        "id": str(uuid.uuid4()), "organizationId": ORGANIZATION_ID, "general": False, "name": name,
        "imageName": image_name, "state": "active", "size": None, "entrypoint": None,
        "cpu": source_sandbox.cpu if source_sandbox else DEFAULT_RESOURCES["cpu"], "gpu": 0,
        "mem": source_sandbox.memory if source_sandbox else DEFAULT_RESOURCES["memory"],
        "disk": source_sandbox.disk if source_sandbox else DEFAULT_RESOURCES["disk"],
        "errorReason": None, "createdAt": now, "updatedAt": now, "lastUsedAt": None,
        "sourceSandboxId": source_sandbox.sandbox_id if source_sandbox else None,
        "hostRoot": None, "env": dict(source_sandbox.env) if source_sandbox else {},
    }


def find_snapshot(fake: FakeDaytona, id_or_name: str) -> Optional[dict]:
    if id_or_name in fake.snapshots:
        return fake.snapshots[id_or_name]
    for snapshot in fake.snapshots.values():
        if snapshot["id"] == id_or_name:
            return snapshot
    return None


async def snapshot_sandbox(request: web.Request, fake: FakeDaytona, sandbox: Sandbox) -> web.StreamResponse:
    body = await read_json_body(request)
    name = (body or {}).get("name") if isinstance(body, dict) else None
    if not name:
        return api_error(request, 400, "name is required")
    if name in fake.snapshots:
        return api_error(request, 409, f"Snapshot with name {name} already exists")
    if sandbox.state != "started":
        return api_error(request, 400, f"Sandbox is not started (state: {sandbox.state})")
    record = new_snapshot_record(name, None, sandbox)
    record["state"] = "pending"
    record["hostRoot"] = os.path.join(fake.settings.root, "_snapshots", record["id"])
    fake.snapshots[name] = record
    sandbox.state = "snapshotting"
    fake.touch(sandbox)
    answer = json_response(200, sandbox.json(toolbox_proxy_url(request)))

    def copy_filesystem() -> None:
        shutil.copytree(sandbox.filesystem_root, record["hostRoot"], symlinks=True)

    async def finish() -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(None, copy_filesystem)
            record["state"] = "active"
        except OSError as error:
            record["state"] = "error"
            record["errorReason"] = str(error)
        if sandbox.state == "snapshotting":
            sandbox.state = "started"

    asyncio.get_running_loop().create_task(finish())
    return answer


async def handle_api(request: web.Request, fake: FakeDaytona, path: str) -> web.StreamResponse:
    method = request.method
    if path == "/sandbox":
        if method == "POST":
            return await create_sandbox(request, fake)
        if method == "GET":
            return list_sandboxes(request, fake, paginated=False)
    if path == "/sandbox/paginated" and method == "GET":
        return list_sandboxes(request, fake, paginated=True)
    if path == "/config" and method == "GET":
        return json_response(200, {"version": DAEMON_VERSION, "analyticsApiUrl": None,
                                   "proxyToolboxUrl": toolbox_proxy_url(request)})
    if path.startswith("/snapshots"):
        return await handle_snapshots(request, fake, path)

    match = re.match(r"^/sandbox/([^/]+)(/.*)?$", path)
    if not match:
        return api_error(request, 404, f"Cannot {method} /api{path}")
    sandbox = fake.find(match.group(1))
    action = match.group(2) or ""
    if sandbox is None:
        return api_error(request, 404, f"Sandbox with ID or name {match.group(1)} not found")
    proxy_url = toolbox_proxy_url(request)

    if action == "" and method == "GET":
        return json_response(200, sandbox.json(proxy_url))
    if action == "" and method == "DELETE":
        fake.sandboxes.pop(sandbox.sandbox_id, None)
        sandbox.state = "destroyed"
        fake.kill_everything(sandbox)
        asyncio.get_running_loop().run_in_executor(None, shutil.rmtree, sandbox.host_root, True)
        return json_response(200, sandbox.json(proxy_url))
    if action == "/start" and method == "POST":
        if sandbox.state in ("started", "starting"):
            return json_response(200, sandbox.json(proxy_url))
        if sandbox.state not in ("stopped", "archived", "error"):
            return api_error(request, 400, f"Sandbox is not in a state that can be started (state: {sandbox.state})")
        sandbox.state = "starting" if fake.is_stuck_starting(sandbox.sandbox_id) else "started"
        sandbox.stop_reason = None
        fake.touch(sandbox)
        return json_response(200, sandbox.json(proxy_url))
    if action == "/stop" and method == "POST":
        if sandbox.state not in ("stopped", "archived"):
            fake.stop_sandbox(sandbox, "api")
        return json_response(200, sandbox.json(proxy_url))
    if action == "/archive" and method == "POST":
        if sandbox.state != "stopped":
            return api_error(request, 400, "Sandbox must be stopped before it can be archived")
        sandbox.state = "archived"
        sandbox.updated_at = time.time()
        return json_response(200, sandbox.json(proxy_url))
    if action == "/last-activity" and method == "POST":
        fake.touch(sandbox)
        return web.Response(status=201)
    setting = re.match(r"^/(autostop|autoarchive|autodelete)/(-?\d+(?:\.\d+)?)$", action)
    if setting and method == "POST":
        minutes = float(setting.group(2))
        minutes = int(minutes) if minutes.is_integer() else minutes
        if setting.group(1) == "autostop":
            if minutes < 0:
                return api_error(request, 400, "Auto-stop interval must be a non-negative integer")
            sandbox.auto_stop_interval = minutes
        elif setting.group(1) == "autoarchive":
            sandbox.auto_archive_interval = minutes
        else:
            sandbox.auto_delete_interval = minutes
        # NestJS answers a POST without @HttpCode with 201, here with the updated sandbox.
        return json_response(201, sandbox.json(proxy_url))
    public = re.match(r"^/public/(true|false)$", action)
    if public and method == "POST":
        sandbox.public = public.group(1) == "true"
        return json_response(201, sandbox.json(proxy_url))
    if action == "/labels" and method == "PUT":
        body = await read_json_body(request)
        labels = (body or {}).get("labels") if isinstance(body, dict) else None
        if not isinstance(labels, dict):
            return api_error(request, 400, "labels must be an object")
        sandbox.labels = {str(key): str(value) for key, value in labels.items()}
        return json_response(200, sandbox.json(proxy_url))
    preview = re.match(r"^/ports/(\d+)/preview-url$", action)
    if preview and method == "GET":
        port = int(preview.group(1))
        return json_response(200, {"sandboxId": sandbox.sandbox_id, "url": preview_base_url(request, port, sandbox.sandbox_id),
                                   "token": sandbox.preview_token})
    signed = re.match(r"^/ports/(\d+)/signed-preview-url$", action)
    if signed and method == "GET":
        port = int(signed.group(1))
        expires = int(request.query.get("expiresInSeconds", "60"))
        if not 1 <= expires <= 86400:
            return api_error(request, 400, "expiresInSeconds must be between 1 and 86400")
        token = secrets.token_hex(12)
        fake.signed_preview_tokens[token] = (sandbox.sandbox_id, port, time.time() + expires)
        return json_response(200, {"sandboxId": sandbox.sandbox_id, "port": port, "token": token,
                                   "url": preview_base_url(request, port, token)})
    if action == "/toolbox-proxy-url" and method == "GET":
        return json_response(200, {"url": proxy_url})
    if action == "/snapshot" and method == "POST":
        return await snapshot_sandbox(request, fake, sandbox)
    return api_error(request, 404, f"Cannot {method} /api{path}")


async def handle_snapshots(request: web.Request, fake: FakeDaytona, path: str) -> web.StreamResponse:
    method = request.method
    if path == "/snapshots" and method == "GET":
        items = sorted(fake.snapshots.values(), key=lambda record: record["createdAt"], reverse=True)
        name_filter = request.query.get("name", "")
        items = [record for record in items if name_filter.lower() in record["name"].lower()]
        limit = max(1, min(200, int(float(request.query.get("limit", "100")))))
        page = max(1, int(float(request.query.get("page", "1"))))
        return json_response(200, {"items": [snapshot_json(record) for record in items[(page - 1) * limit: page * limit]],
                                   "total": len(items), "page": page, "totalPages": max(1, -(-len(items) // limit))})
    if path == "/snapshots" and method == "POST":
        body = await read_json_body(request)
        if not isinstance(body, dict) or not body.get("name"):
            return api_error(request, 400, "name is required")
        if body["name"] in fake.snapshots:
            return api_error(request, 409, f"Snapshot with name {body['name']} already exists")
        record = new_snapshot_record(body["name"], body.get("imageName"), None)
        for key, wire_name in (("cpu", "cpu"), ("memory", "mem"), ("disk", "disk")):
            if body.get(key) is not None:
                record[wire_name] = body[key]
        fake.snapshots[body["name"]] = record
        return json_response(200, snapshot_json(record))
    match = re.match(r"^/snapshots/([^/]+)$", path)
    if match:
        record = find_snapshot(fake, urllib.parse.unquote(match.group(1)))
        if record is None:
            return api_error(request, 404, f"Snapshot {match.group(1)} not found")
        if method == "GET":
            return json_response(200, snapshot_json(record))
        if method == "DELETE":
            fake.snapshots.pop(record["name"], None)
            if record.get("hostRoot"):
                asyncio.get_running_loop().run_in_executor(None, shutil.rmtree, record["hostRoot"], True)
            return web.Response(status=200)
    return api_error(request, 404, f"Cannot {method} /api{path}")


# ---------------------------------------------------------------------------------------------------------------
# Previews
# ---------------------------------------------------------------------------------------------------------------

HOP_BY_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host",
                      "proxy-authorization", "proxy-authenticate", "content-length"}
PREVIEW_WARNING_PAGE = ("<!doctype html><title>Daytona Preview - Warning</title><p>daytona-preview-warning: you are "
                        "about to visit a sandbox preview. <a href=\"/accept-daytona-preview-warning\">Continue</a></p>")
PREVIEW_ACCEPT_PATH = "/accept-daytona-preview-warning"
PREVIEW_ACCEPT_COOKIE = "daytona-preview-page-accepted"
BROWSER_NAMES = ("chrome", "firefox", "safari", "edg", "brave", "vivaldi", "samsungbrowser", "opr")


def is_browser(user_agent: str) -> bool:
    """Roughly the proxy's test (a known browser family in the User-Agent); curl, SDKs and bots are not browsers."""
    lowered = user_agent.lower()
    return lowered.startswith("mozilla/") and any(name in lowered for name in BROWSER_NAMES) and "bot" not in lowered


def preview_warning_answer(request: web.Request, inner_path: str) -> Optional[web.StreamResponse]:
    """The proxy's browser warning: shown to browsers unless skipped by header or accepted before (cookie)."""
    if request.headers.get("X-Daytona-Skip-Preview-Warning") == "true":
        return None
    if not is_browser(request.headers.get("User-Agent", "")):
        return None
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return None
    if request.cookies.get(PREVIEW_ACCEPT_COOKIE) == "true":
        return None
    if inner_path == PREVIEW_ACCEPT_PATH:
        redirect = request.query.get("redirect", "")
        if not redirect.startswith("/") or redirect.startswith("//"):
            redirect = "/"
        answer = web.Response(status=302, headers={"Location": redirect})
        answer.set_cookie(PREVIEW_ACCEPT_COOKIE, "true", max_age=86400, path="/", httponly=True)
        return answer
    return web.Response(status=200, text=PREVIEW_WARNING_PAGE, content_type="text/html")


async def handle_preview(request: web.Request, fake: FakeDaytona, id_or_token: str, port: int,
                         inner_path: str) -> web.StreamResponse:
    """Daytona's preview proxy: the browser warning, then auth unless public, then forward to the port."""
    import aiohttp

    warning = preview_warning_answer(request, inner_path)
    if warning is not None:
        return warning
    signed = fake.signed_preview_tokens.get(id_or_token)
    if signed is not None:
        sandbox_id, signed_port, expires_at = signed
        sandbox = fake.sandboxes.get(sandbox_id)
        authorized = signed_port == port and time.time() <= expires_at
    else:
        sandbox = fake.sandboxes.get(id_or_token)
        token = request.headers.get("X-Daytona-Preview-Token") or request.query.get("DAYTONA_SANDBOX_AUTH_KEY")
        authorized = sandbox is not None and (
            sandbox.public
            or (token is not None and secrets.compare_digest(token, sandbox.preview_token))
            or credentials_valid(request, fake))
    if sandbox is None:
        return json_response(404, {"statusCode": 404, "message": "sandbox not found", "code": "Not Found"})
    if not authorized:
        # The proxy sends unauthenticated preview visitors to Daytona's sign-in; the fake has none to offer.
        return web.Response(status=307, headers={"Location": f"{request.scheme}://{request.host}/api/auth/preview"
                                                             f"?sandboxId={sandbox.sandbox_id}&port={port}"})
    with fake.proxied_request(sandbox, request):
        if sandbox.state != "started":
            return json_response(400, {"statusCode": 400, "code": "Bad Request",
                                       "message": f"sandbox is not running (state: {sandbox.state})"})
        headers = {name: value for name, value in request.headers.items()
                   if name.lower() not in HOP_BY_HOP_HEADERS and not name.lower().startswith("x-daytona-")
                   and name.lower() != "authorization"}
        query = [(key, value) for key, value in request.query.items() if key != "DAYTONA_SANDBOX_AUTH_KEY"]
        body = await request.read()
        target = f"http://127.0.0.1:{port}{inner_path}"
        try:
            async with aiohttp.ClientSession(auto_decompress=False) as session:
                async with session.request(request.method, target, params=query, headers=headers, data=body or None,
                                           allow_redirects=False) as upstream:
                    content = await upstream.read()
                    response_headers = {name: value for name, value in upstream.headers.items()
                                        if name.lower() not in HOP_BY_HOP_HEADERS}
                    return web.Response(status=upstream.status, body=content, headers=response_headers)
        except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            return json_response(502, {"statusCode": 502, "code": "Bad Gateway",
                                       "message": f"no service is listening on port {port}"})


# ---------------------------------------------------------------------------------------------------------------
# Toolbox
# ---------------------------------------------------------------------------------------------------------------


def request_sdk_version(request: web.Request) -> str:
    """The SDK version from `X-Daytona-SDK-Version`, or from a `X-Daytona-SDK-Version~<v>` WebSocket subprotocol."""
    version = request.headers.get("X-Daytona-SDK-Version", "")
    if version:
        return version
    for protocol in request.headers.get("Sec-WebSocket-Protocol", "").split(","):
        protocol = protocol.strip()
        if protocol.startswith("X-Daytona-SDK-Version~"):
            return protocol.split("~", 1)[1]
    return ""


def version_below(version: str, minimum: tuple) -> Optional[bool]:
    """Semver `version < minimum-0` (any pre-release of `minimum` counts as reaching it); None if unparseable."""
    parsed = parse_version(version)
    return None if parsed is None else parsed < minimum


def is_combined_output(request: web.Request) -> bool:
    """The daemon's rule: no stdout/stderr markers for SDKs older than 0.27.0, or with no version and no opt-in."""
    version = request_sdk_version(request)
    if version:
        return bool(version_below(version, COMBINED_OUTPUT_BELOW_SDK_VERSION)) and "dev" not in version
    return request.headers.get("X-Daytona-Split-Output") != "true"


def skip_server_demux(request: web.Request) -> bool:
    """The daemon's rule: stdout/stderr fields only for SDKs from 0.167.0 on (dev builds included)."""
    version = request_sdk_version(request)
    if not version:
        return True
    if "dev" in version:
        return False
    below = version_below(version, SPLIT_OUTPUT_MINIMUM_SDK_VERSION)
    return True if below is None else below


def strip_markers(log: bytes) -> bytes:
    return log.replace(STDOUT_MARKER, b"").replace(STDERR_MARKER, b"")


def demux_log(log: bytes) -> tuple[bytes, bytes]:
    """stdout and stderr of a marked log; bytes before the first marker belong to neither (as in the daemon)."""
    stdout, stderr = bytearray(), bytearray()
    target: Optional[bytearray] = None
    for piece in re.split(b"(\x01\x01\x01|\x02\x02\x02)", log):
        if piece == STDOUT_MARKER:
            target = stdout
        elif piece == STDERR_MARKER:
            target = stderr
        elif target is not None:
            target.extend(piece)
    return bytes(stdout), bytes(stderr)


def go_json_text(data: bytes) -> str:
    """Go's encoding/json turns invalid UTF-8 into U+FFFD; so does this."""
    return data.decode("utf-8", "replace")


def process_environment(sandbox: Sandbox, extra: Optional[dict]) -> dict:
    environment = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "HOME": sandbox.host_path_for(sandbox.home),
        "USER": sandbox.user,
        "DAYTONA_SANDBOX_ID": sandbox.sandbox_id,
        "DAYTONA_SANDBOX_SNAPSHOT": sandbox.snapshot or "",
        "DAYTONA_SANDBOX_USER": sandbox.user,
        "DAYTONA_FAKE_SANDBOX_ROOT": sandbox.filesystem_root,
    }
    environment.update({str(key): str(value) for key, value in sandbox.env.items()})
    environment.update({str(key): str(value) for key, value in (extra or {}).items()})
    return environment


def shell_program() -> str:
    return shutil.which("bash") or "/bin/sh"


async def handle_toolbox(request: web.Request, fake: FakeDaytona, sandbox_id: str, path: str) -> web.StreamResponse:
    sandbox = fake.sandboxes.get(sandbox_id)
    if sandbox is None:
        # The proxy asks the API whether the key may use this sandbox; for one that does not exist (any more) the
        # answer is no, so it reports a bad token (its 2-minute cache may instead let a just-deleted one through).
        return toolbox_error(request, 401, "authentication failed: Bearer token is invalid")
    if sandbox.state != "started":
        return toolbox_error(request, 400, f"failed to reach the toolbox of sandbox {sandbox_id} "
                                           f"(state: {sandbox.state}). Is the Sandbox started?")
    method = request.method
    if path in ("/user-home-dir", "/project-dir"):
        return json_response(200, {"dir": sandbox.home})
    if path == "/work-dir":
        return json_response(200, {"dir": sandbox.home})
    if path == "/version":
        return json_response(200, {"version": DAEMON_VERSION})
    if path == "/process/execute" and method == "POST":
        return await execute_command(request, sandbox)
    if path.startswith("/process/session"):
        return await handle_sessions(request, fake, sandbox, path)
    if path.startswith("/files"):
        return await handle_files(request, sandbox, path)
    return toolbox_error(request, 404, f"{method} {path} is not served by this fake toolbox")


ENV_KEY_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


async def execute_command(request: web.Request, sandbox: Sandbox) -> web.StreamResponse:
    """`process/execute`: the command is piped to a fresh shell's stdin (so its own stdin is what the shell left)."""
    body = await read_json_body(request)
    command = body.get("command") if isinstance(body, dict) else None
    if not isinstance(command, str) or not command.strip():
        return toolbox_error(request, 400, "command cannot be empty or whitespace-only")
    envs = body.get("envs") or {}
    bad_keys = [key for key in envs if not ENV_KEY_PATTERN.match(str(key))]
    if bad_keys:
        return toolbox_error(request, 400, f"invalid environment variable name: {bad_keys[0]}")
    cwd = sandbox.host_path_for(sandbox.sandbox_path_for(body.get("cwd")))
    if not os.path.isdir(cwd):
        # Go's exec fails to start in a missing directory; the daemon answers 200 with exit code -1.
        return json_response(200, {"exitCode": -1, "result": f"chdir {body.get('cwd')}: no such file or directory"})
    timeout = body.get("timeout")
    process = await asyncio.create_subprocess_exec(
        shell_program(), cwd=cwd, env=process_environment(sandbox, envs), stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    sandbox.execute_processes.add(process)
    try:
        output, _ = await asyncio.wait_for(process.communicate(sandbox.rewrite_command_text(command).encode()),
                                           timeout=float(timeout) if timeout and timeout > 0 else None)
    except asyncio.TimeoutError:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        return toolbox_error(request, 408, "command execution timeout")
    finally:
        sandbox.execute_processes.discard(process)
    # Go's WaitStatus.ExitStatus(): the exit code, or -1 for a process ended by a signal.
    exit_code = process.returncode if process.returncode >= 0 else -1
    return json_response(200, {"exitCode": exit_code, "result": go_json_text(output)})


async def create_session(request: web.Request, sandbox: Sandbox, session_id: str) -> ToolboxSession:
    directory = os.path.join(sandbox.host_root, "daemon", "sessions", session_id)
    os.makedirs(directory, exist_ok=True)
    shell = await asyncio.create_subprocess_exec(
        shell_program(), cwd=sandbox.host_path_for(sandbox.home), env=process_environment(sandbox, None),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        # Its own process group, so the whole session (shell, commands, labelers) can be signalled at once.
        start_new_session=True)
    session = ToolboxSession(sandbox, session_id, directory, shell)
    sandbox.sessions[session_id] = session
    return session


async def delete_session(sandbox: Sandbox, session: ToolboxSession) -> None:
    """SIGTERM to the session's process group; once the shell has no children left (or after the grace period)
    SIGKILL, then the session directory goes. Answers only afterwards, as the daemon's Delete does."""
    sandbox.sessions.pop(session.session_id, None)
    session.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + SERVER_SETTINGS.termination_grace_seconds
    while session.has_children() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    # The daemon leaves a shell that trapped SIGTERM alive; the fake kills it so no process outlives its session.
    session.signal_group(signal.SIGKILL)
    session.ended.set()
    await asyncio.get_running_loop().run_in_executor(None, shutil.rmtree, session.directory, True)


async def execute_in_session(request: web.Request, sandbox: Sandbox, session: ToolboxSession) -> web.StreamResponse:
    body = await read_json_body(request)
    command_text = body.get("command") if isinstance(body, dict) else None
    if not isinstance(command_text, str) or not command_text.strip():
        return status_only(400)
    run_async = bool(body.get("runAsync") or body.get("async"))
    command = SessionCommand(session, str(uuid.uuid4()), command_text, bool(body.get("suppressInputEcho")))
    session.commands[command.command_id] = command
    os.makedirs(command.directory, exist_ok=True)
    open(command.log_path, "wb").close()
    with open(os.path.join(command.directory, "cmd.sh"), "w") as handle:
        handle.write(sandbox.rewrite_command_text(command_text))
    wrapper = SESSION_COMMAND_WRAPPER % {
        "directory": shlex.quote(command.directory),
        "stdin_holder": ASYNC_STDIN_HOLDER if run_async else SYNC_STDIN_HOLDER,
    }
    try:
        session.shell.stdin.write(wrapper.encode())
        await session.shell.stdin.drain()
    except (ConnectionError, RuntimeError) as error:
        return toolbox_untyped_error(f"failed to execute command: bad request: failed to write command: {error}")
    if run_async:
        return json_response(202, {"cmdId": command.command_id})
    while command.exit_code is None:
        if session.ended.is_set():
            command.cached_exit_code = 1
            return toolbox_untyped_error("failed to execute command: bad request: session cancelled")
        await asyncio.sleep(0.05)
    log = command.read_log()
    answer: dict = {"cmdId": command.command_id, "exitCode": command.exit_code}
    if is_combined_output(request):
        answer["output"] = go_json_text(strip_markers(log))
    else:
        # The daemon returns the raw log, markers included, as `output` in this mode.
        answer["output"] = go_json_text(log)
        if not skip_server_demux(request):
            stdout, stderr = demux_log(log)
            answer["stdout"], answer["stderr"] = go_json_text(stdout), go_json_text(stderr)
    return json_response(200, answer)


async def send_input(request: web.Request, command: SessionCommand) -> web.StreamResponse:
    body = await read_json_body(request)
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, str):
        return toolbox_error(request, 400, "data is required", code="INVALID_REQUEST_BODY")
    if command.session.shell.returncode is not None:
        return toolbox_error(request, 410, "session process has exited")
    if command.exit_code is not None:
        return toolbox_error(request, 410, f"command has already completed with exit code {command.exit_code}")
    # The daemon adds the newline `read` needs.
    if not data.endswith("\n"):
        data += "\n"
    encoded = data.encode()

    def write_to_fifo() -> Optional[str]:
        # The wrapper creates the FIFO when the shell reaches the command; wait for a just-started one (seconds on a
        # busy machine).
        deadline = time.monotonic() + 10.0
        while True:
            try:
                descriptor = os.open(command.input_path, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError as error:
                if time.monotonic() > deadline:
                    return f"failed to open input pipe: {error.strerror}"
                time.sleep(0.02)
        try:
            os.set_blocking(descriptor, True)
            os.write(descriptor, encoded)
        except OSError as error:
            return f"failed to write to input pipe: {error.strerror}"
        finally:
            os.close(descriptor)
        return None

    failure = await asyncio.get_running_loop().run_in_executor(None, write_to_fifo)
    if failure is not None:
        return toolbox_error(request, 500, failure)
    if not command.suppress_input_echo:
        with contextlib.suppress(OSError), open(command.log_path, "ab") as log:
            log.write(STDOUT_MARKER + encoded)
    return web.Response(status=204)


async def handle_sessions(request: web.Request, fake: FakeDaytona, sandbox: Sandbox, path: str) -> web.StreamResponse:
    method = request.method
    if path == "/process/session":
        if method == "GET":
            return json_response(200, [session.json() for session in sandbox.sessions.values()])
        if method == "POST":
            body = await read_json_body(request)
            session_id = body.get("sessionId") if isinstance(body, dict) else None
            if not session_id or not isinstance(session_id, str):
                return toolbox_error(request, 400, "sessionId is required", code="INVALID_REQUEST_BODY")
            if session_id in sandbox.sessions:
                return toolbox_error(request, 409, "session already exists")
            await create_session(request, sandbox, session_id)
            return web.Response(status=201)
    match = re.match(r"^/process/session/([^/]+)(/.*)?$", path)
    if not match:
        return toolbox_error(request, 404, f"{method} {path} is not served by this fake toolbox")
    session_id, rest = urllib.parse.unquote(match.group(1)), match.group(2) or ""
    session = sandbox.sessions.get(session_id)
    if session is None:
        if rest == "/exec":
            # The daemon's exec handler wraps the service's error, so its middleware answers a plain 500.
            return toolbox_untyped_error("failed to execute command: not found: session not found")
        return toolbox_error(request, 404, "session not found")
    if rest == "":
        if method == "GET":
            return json_response(200, session.json())
        if method == "DELETE":
            await delete_session(sandbox, session)
            return web.Response(status=204)
    if rest == "/exec" and method == "POST":
        return await execute_in_session(request, sandbox, session)
    command_match = re.match(r"^/command/([^/]+)(/.*)?$", rest)
    if not command_match:
        return toolbox_error(request, 404, f"{method} {path} is not served by this fake toolbox")
    command = session.commands.get(urllib.parse.unquote(command_match.group(1)))
    if command is None:
        return toolbox_error(request, 404, "command not found")
    command_rest = command_match.group(2) or ""
    if command_rest == "" and method == "GET":
        return json_response(200, command.json())
    if command_rest == "/logs" and method == "GET":
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await stream_command_logs(request, fake, sandbox, command,
                                             follow=request.query.get("follow") == "true")
        log = command.read_log()
        combined = is_combined_output(request)
        if not combined and not skip_server_demux(request):
            stdout, stderr = demux_log(log)
            return json_response(200, {"output": go_json_text(log), "stdout": go_json_text(stdout),
                                       "stderr": go_json_text(stderr)})
        return web.Response(status=200, body=strip_markers(log) if combined else log,
                            content_type="text/plain", charset="utf-8")
    if command_rest == "/input" and method == "POST":
        return await send_input(request, command)
    return toolbox_error(request, 404, f"{method} {path} is not served by this fake toolbox")


class MarkerStripper:
    """Removes markers from a byte stream whose chunks may split a marker, keeping a possible partial one back."""

    def __init__(self) -> None:
        self.pending = b""

    def feed(self, chunk: bytes) -> bytes:
        data = strip_markers(self.pending + chunk)
        keep = 0
        for length in (2, 1):
            if len(data) >= length and data[-length:] in (STDOUT_MARKER[:length], STDERR_MARKER[:length]):
                keep = length
                break
        self.pending = data[len(data) - keep:] if keep else b""
        return data[: len(data) - keep]

    def flush(self) -> bytes:
        rest, self.pending = self.pending, b""
        return rest


async def stream_command_logs(request: web.Request, fake: FakeDaytona, sandbox: Sandbox, command: SessionCommand,
                              follow: bool) -> web.StreamResponse:
    """The logs WebSocket, read from the command's log file as the daemon reads it.

    Binary frames of at most 1 KiB (one read each). At end of file it polls every 20 ms; after a quiet stretch
    (1 s, `--logs-exit-confirm-seconds`) it checks the exit-code file and closes with 1000 once there is one. Without
    `follow` it closes at the first end of file. Markers are kept unless combined output applies. Faults:
    `logsFrameBytes` makes reads smaller (markers then straddle frames), `dropLogsAfterBytes` cuts the TCP
    connection without a close frame once that many bytes went out.
    """
    combined = is_combined_output(request)
    offered = [protocol.strip() for protocol in request.headers.get("Sec-WebSocket-Protocol", "").split(",")
               if protocol.strip()]
    websocket = web.WebSocketResponse(protocols=offered[:1], autoping=True, heartbeat=None)
    await websocket.prepare(request)
    faults = fake.faults
    read_bytes = DAEMON_LOG_READ_BYTES
    drop_after: Optional[int] = None
    if fake.fault_applies_to(sandbox.sandbox_id):
        if faults.logs_frame_bytes:
            read_bytes = max(1, faults.logs_frame_bytes)
        if faults.drop_logs_after_bytes is not None and faults.drop_logs_count > 0:
            drop_after = faults.drop_logs_after_bytes
            faults.drop_logs_count -= 1
            if faults.drop_logs_count <= 0:
                faults.drop_logs_after_bytes = None
    transport = request.transport
    if transport is not None:
        sandbox.open_transports.add(transport)
    stripper = MarkerStripper() if combined else None
    quiet_polls_before_exit_check = max(1, round(SERVER_SETTINGS.logs_exit_confirm_seconds / 0.02))
    sent = 0

    async def send(data: bytes) -> bool:
        """Sends one frame; False once the drop fault has cut the connection."""
        nonlocal sent
        if drop_after is not None and sent + len(data) > drop_after:
            data = data[: max(0, drop_after - sent)]
        if data:
            await websocket.send_bytes(data)
            sent += len(data)
        if drop_after is not None and sent >= drop_after:
            if transport is not None:
                transport.close()
            return False
        return True

    async def watch_client() -> None:
        # Reads (and so answers pings and notices a client close) while the sender waits for output.
        async for message in websocket:
            if message.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                break

    reader = asyncio.get_running_loop().create_task(watch_client())
    try:
        if drop_after == 0 and not await send(b""):
            return websocket
        with open(command.log_path, "rb") as log:
            quiet_polls = 0
            while True:
                await fake.wait_while_hung("toolbox", sandbox.sandbox_id)
                if websocket.closed or transport is None or transport.is_closing():
                    return websocket
                chunk = log.read(read_bytes)
                if chunk:
                    quiet_polls = 0
                    if stripper is not None:
                        chunk = stripper.feed(chunk)
                    if chunk and not await send(chunk):
                        return websocket
                    continue
                if not follow or session_gone(command):
                    break
                quiet_polls += 1
                if quiet_polls >= quiet_polls_before_exit_check:
                    if command.exit_code is not None:
                        break
                    quiet_polls = 0
                await asyncio.sleep(0.02)
        if stripper is not None and not await send(stripper.flush()):
            return websocket
        await websocket.close(code=1000)
    except (ConnectionError, OSError, asyncio.CancelledError):
        pass
    finally:
        reader.cancel()
        sandbox.open_transports.discard(transport)
    return websocket


def session_gone(command: SessionCommand) -> bool:
    return command.session.ended.is_set()


# --- files ---------------------------------------------------------------------------------------------------
#
# The file handlers follow the daemon's (apps/daemon/pkg/toolbox/fs, v0.190): paths are used as given, relative to the
# work directory; failures answer with the status alone and an empty body (gin's AbortWithError writes the header
# before the error middleware could add one).


def go_file_mode(mode: int) -> str:
    """Go's `fs.FileMode.String()` for what os.Stat returns: `drwxr-xr-x`, `-rw-r--r--`."""
    kind = "d" if stat.S_ISDIR(mode) else "-"
    bits = "rwxrwxrwx"
    return kind + "".join(bits[index] if mode & (1 << (8 - index)) else "-" for index in range(9))


def go_fraction(nanoseconds: int) -> str:
    """Go's `.999999999` layout: the fraction with trailing zeros removed, nothing when it is zero."""
    return ("." + f"{nanoseconds:09d}".rstrip("0")) if nanoseconds else ""


def go_time_string(epoch_nanoseconds: int) -> str:
    """Go's `time.Time.String()`, which the daemon puts in `FileInfo.modTime` (the sandbox runs in UTC)."""
    seconds, nanoseconds = divmod(epoch_nanoseconds, 1_000_000_000)
    moment = dt.datetime.fromtimestamp(seconds, dt.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S") + go_fraction(nanoseconds) + " +0000 UTC"


def go_json_time(epoch_nanoseconds: int) -> str:
    """How Go's encoding/json writes a UTC `time.Time` (RFC 3339 with trimmed nanoseconds)."""
    seconds, nanoseconds = divmod(epoch_nanoseconds, 1_000_000_000)
    moment = dt.datetime.fromtimestamp(seconds, dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + go_fraction(nanoseconds) + "Z"


def file_info(host_path: str) -> dict:
    """The daemon's FileInfo: os.Stat (symlinks followed), numeric owner and group, no `path` field."""
    info = os.stat(host_path)
    return {
        "name": os.path.basename(host_path.rstrip("/")) or "/",
        "size": info.st_size,
        "mode": go_file_mode(info.st_mode),
        "modTime": go_time_string(info.st_mtime_ns),
        "modifiedAt": go_json_time(info.st_mtime_ns),
        "isDir": stat.S_ISDIR(info.st_mode),
        "owner": str(info.st_uid),
        "group": str(info.st_gid),
        "permissions": f"{stat.S_IMODE(info.st_mode) & 0o777:04o}",
    }


def latin1_filename(path: str) -> str:
    """The daemon's toLatin1: escape `\\` and `"`, drop CR/LF/NUL, `_` for control characters and non-Latin-1."""
    escaped = path.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "").replace("\n", "").replace("\x00", "")
    return "".join("_" if ord(char) > 0xFF or ord(char) < 0x20 or ord(char) == 0x7F else char for char in escaped)


RFC5987_SAFE = set(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$&+-.^_`|~")


def content_disposition(name: str, path: str) -> str:
    encoded = "".join(chr(byte) if byte in RFC5987_SAFE else f"%{byte:02X}" for byte in path.encode())
    return f"form-data; name=\"{name}\"; filename=\"{latin1_filename(path)}\"; filename*=utf-8''{encoded}"


def content_type_for(path: str) -> str:
    import mimetypes

    guessed, _ = mimetypes.guess_type(path, strict=False)
    return guessed or "application/octet-stream"


def status_only(status: int) -> web.Response:
    return web.Response(status=status)


async def handle_files(request: web.Request, sandbox: Sandbox, path: str) -> web.StreamResponse:
    method = request.method
    query = request.query

    def mapped(name: str = "path", default: Optional[str] = None) -> tuple[str, str]:
        sandbox_path = sandbox.sandbox_path_for(query.get(name) or default)
        return sandbox_path, sandbox.host_path_for(sandbox_path)

    def stat_failure(host_path: str) -> Optional[web.Response]:
        try:
            os.stat(host_path)
        except FileNotFoundError:
            return status_only(404)
        except PermissionError:
            return status_only(403)
        except OSError:
            return status_only(400)
        return None

    if path == "/files" and method == "GET":
        _, host_path = mapped(default=".")
        failure = stat_failure(host_path)
        if failure is not None:
            return failure
        if not os.path.isdir(host_path):
            return status_only(400)
        entries = []
        for name in sorted(os.listdir(host_path)):
            with contextlib.suppress(OSError):
                entries.append(file_info(os.path.join(host_path, name)))
        return json_response(200, entries)
    if path == "/files" and method == "DELETE":
        if not query.get("path"):
            return status_only(400)
        _, host_path = mapped()
        failure = stat_failure(host_path)
        if failure is not None:
            return failure
        recursive = query.get("recursive") == "true"
        if os.path.isdir(host_path) and not recursive:
            return status_only(400)
        try:
            if recursive and os.path.isdir(host_path) and not os.path.islink(host_path):
                await asyncio.get_running_loop().run_in_executor(None, shutil.rmtree, host_path)
            else:
                os.remove(host_path)
        except OSError:
            return status_only(400)
        return web.Response(status=204)
    if path == "/files/info" and method == "GET":
        if not query.get("path"):
            return status_only(400)
        _, host_path = mapped()
        return stat_failure(host_path) or json_response(200, file_info(host_path))
    if path == "/files/download" and method == "GET":
        if not query.get("path"):
            return status_only(400)
        sandbox_path, host_path = mapped()
        failure = stat_failure(host_path)
        if failure is not None:
            return failure
        if os.path.isdir(host_path):
            return status_only(400)
        with open(host_path, "rb") as handle:
            content = handle.read()
        return web.Response(status=200, body=content, headers={"Content-Type": content_type_for(sandbox_path)})
    if path == "/files/folder" and method == "POST":
        if not query.get("path"):
            return status_only(400)
        _, host_path = mapped()
        mode = 0o755
        if query.get("mode"):
            try:
                mode = int(query["mode"], 8)
            except ValueError:
                return status_only(400)
        try:
            os.makedirs(host_path, mode=mode, exist_ok=True)
        except OSError:
            return status_only(400)
        return web.Response(status=201)
    if path == "/files/move" and method == "POST":
        if not query.get("source") or not query.get("destination"):
            return status_only(400)
        _, source_host = mapped("source")
        _, destination_host = mapped("destination")
        failure = stat_failure(source_host) or stat_failure(os.path.dirname(destination_host))
        if failure is not None:
            return failure
        if os.path.exists(destination_host):
            # The daemon never replaces: a client moving a staged file into place deletes the old one first.
            return status_only(409)
        os.rename(source_host, destination_host)
        return web.Response(status=200)
    if path == "/files/upload" and method == "POST":
        if not query.get("path"):
            return status_only(400)
        _, host_path = mapped()
        if not request.content_type.startswith("multipart/"):
            return status_only(400)
        reader = await request.multipart()
        async for part in reader:
            if part.name == "file":
                content = bytes(await part.read(decode=False))

                def write() -> None:
                    with open(host_path, "wb") as handle:
                        handle.write(content)

                try:
                    await asyncio.get_running_loop().run_in_executor(None, write)
                except OSError:
                    return status_only(400)
                return web.Response(status=200)
        return status_only(400)
    if path == "/files/bulk-upload" and method == "POST":
        fake: FakeDaytona = request.app["fake"]
        return await bulk_upload(request, sandbox, fake.upload_drop if fake.fault_applies_to(sandbox.sandbox_id) else None)
    if path == "/files/bulk-download" and method == "POST":
        return await bulk_download(request, sandbox)
    return toolbox_error(request, 404, f"{method} {path} is not served by this fake toolbox")


async def bulk_upload(request: web.Request, sandbox: Sandbox,
                      drop: Optional[traffic.UploadDrop] = None) -> web.StreamResponse:
    """The daemon's bulk upload: parts in order; a `files[i].path` part must come before its `files[i].file`."""
    if not request.content_type.startswith("multipart/"):
        return json_response(400, {"errors": ["invalid multipart form"]})
    destinations: dict[str, str] = {}
    errors: list[str] = []
    written: list[dict] = []
    loop = asyncio.get_running_loop()
    reader = await request.multipart()
    async for part in reader:
        name = part.name or ""
        index = name.removeprefix("files[").removesuffix("].path").removesuffix("].file")
        if name.endswith(".path"):
            destination = bytes(await part.read(decode=False)).decode("utf-8", "replace").strip()
            if not destination:
                errors.append(f"path[{index}]: empty path")
                continue
            destinations[index] = destination
        elif name.endswith(".file"):
            destination = destinations.get(index)
            try:
                content = await traffic.read_checked(part, request, drop)
            except ConnectionResetError as error:
                # The daemon writes as it reads, so a dropped upload leaves the start of the file it was writing.
                if destination is not None:
                    partial_path = sandbox.host_path_for(sandbox.sandbox_path_for(destination))
                    os.makedirs(os.path.dirname(partial_path), mode=0o755, exist_ok=True)
                    with open(partial_path, "wb") as handle:
                        handle.write(error.partial)
                raise
            if destination is None:
                errors.append(f"file[{index}]: missing .path metadata")
                continue
            host_path = sandbox.host_path_for(sandbox.sandbox_path_for(destination))

            def write() -> None:
                os.makedirs(os.path.dirname(host_path), mode=0o755, exist_ok=True)
                with open(host_path, "wb") as handle:
                    handle.write(content)

            try:
                await loop.run_in_executor(None, write)
            except OSError as error:
                errors.append(f"{destination}: create: {error.strerror}")
                continue
            written.append({"path": destination, "bytes": len(content)})
        else:
            await part.read(decode=False)
    if errors:
        return json_response(400, {"errors": errors, "files": written})
    return json_response(200, {"files": written})


def download_error_part(request: web.Request, requested: str, status: int, code: str, message: str) -> bytes:
    payload = json.dumps({"statusCode": status, "message": message, "code": code,
                          "timestamp": go_json_time(time.time_ns()), "path": requested,
                          "method": request.method}, separators=(",", ":")).encode()
    head = (f"--{BULK_DOWNLOAD_BOUNDARY}\r\nContent-Disposition: {content_disposition('error', requested)}\r\n"
            f"Content-Type: application/json; charset=utf-8\r\n\r\n")
    return head.encode("latin-1", "replace") + payload + b"\r\n"


async def bulk_download(request: web.Request, sandbox: Sandbox) -> web.StreamResponse:
    """A multipart/form-data answer, one part per requested path in order: `file` parts, or JSON `error` parts."""
    try:
        body = json.loads(await request.read() or b"null")
    except json.JSONDecodeError:
        body = None
    paths = body.get("paths") if isinstance(body, dict) else None
    if not isinstance(paths, list) or not paths or not all(isinstance(item, str) for item in paths):
        return json_response(400, {"error": "request body must be {\"paths\": [ ... ]} and non-empty"})
    response = web.StreamResponse(status=200, headers={
        "Content-Type": f"multipart/form-data; boundary={BULK_DOWNLOAD_BOUNDARY}"})
    await response.prepare(request)
    for requested in paths:
        if requested == "":
            await response.write(download_error_part(request, requested, 400, "INVALID_FILE_PATH",
                                                     "invalid file path: path is empty"))
            continue
        host_path = sandbox.host_path_for(sandbox.sandbox_path_for(requested))
        try:
            with open(host_path, "rb") as handle:
                if stat.S_ISDIR(os.fstat(handle.fileno()).st_mode):
                    raise IsADirectoryError()
                content = handle.read()
        except IsADirectoryError:
            await response.write(download_error_part(request, requested, 400, "INVALID_FILE_PATH",
                                                     f"invalid file path: path points to a directory: {requested}"))
            continue
        except FileNotFoundError:
            await response.write(download_error_part(request, requested, 404, "FILE_NOT_FOUND",
                                                     f"file not found: {requested}"))
            continue
        except PermissionError:
            await response.write(download_error_part(request, requested, 403, "FILE_ACCESS_DENIED",
                                                     f"permission denied: {requested}"))
            continue
        head = (f"--{BULK_DOWNLOAD_BOUNDARY}\r\nContent-Disposition: {content_disposition('file', requested)}\r\n"
                f"Content-Length: {len(content)}\r\nContent-Type: {content_type_for(requested)}\r\n\r\n")
        await response.write(head.encode("latin-1", "replace") + content + b"\r\n")
    await response.write(f"--{BULK_DOWNLOAD_BOUNDARY}--\r\n".encode())
    await response.write_eof()
    return response


# ---------------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------------


def build_application(fake: FakeDaytona) -> web.Application:
    # 1 GiB uploads; the default 1 MiB limit would reject ordinary bulk uploads.
    application = web.Application(middlewares=[front_door], client_max_size=1024 ** 3)
    application["fake"] = fake

    async def unreachable(_request: web.Request) -> web.Response:
        # Every request is answered by the front_door middleware; this catch-all only makes aiohttp route to it.
        return web.Response(status=500)

    application.router.add_route("*", "/{tail:.*}", unreachable)

    async def start_background(app: web.Application) -> None:
        app["auto_stop"] = asyncio.get_running_loop().create_task(fake.auto_stop_forever())

    async def stop_everything(app: web.Application) -> None:
        app["auto_stop"].cancel()
        for sandbox in list(fake.sandboxes.values()):
            sandbox.all_processes_kill(signal.SIGKILL)

    application.on_startup.append(start_background)
    application.on_cleanup.append(stop_everything)
    return application


async def serve(host: str, port: int, fake: FakeDaytona) -> None:
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
    if fake.settings.exit_when_stdin_closes:
        # A harness that cannot run cleanup code (a process-wide fake in a static) still ends the fake: its end of
        # our stdin closes when it exits.
        import threading

        def wait_for_stdin_eof() -> None:
            with contextlib.suppress(OSError, ValueError):
                while sys.stdin.buffer.read(4096):
                    pass
            loop.call_soon_threadsafe(stop.set)

        threading.Thread(target=wait_for_stdin_eof, daemon=True).start()
    await stop.wait()
    for sandbox in list(fake.sandboxes.values()):
        sandbox.all_processes_kill(signal.SIGKILL)
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port; the chosen one is printed")
    parser.add_argument("--api-key", default=os.environ.get("DAYTONA_FAKE_API_KEY", "daytona_test_key"),
                        help="the Bearer key the API and toolbox accept (env DAYTONA_FAKE_API_KEY)")
    parser.add_argument("--root", default=os.environ.get("DAYTONA_FAKE_ROOT"),
                        help="directory holding one private directory per sandbox (default: a temp dir)")
    parser.add_argument("--jwt", default=None,
                        help="also accept this Bearer JWT, with X-Daytona-Organization-ID = --organization-id")
    parser.add_argument("--organization-id", default=ORGANIZATION_ID)
    parser.add_argument("--termination-grace-seconds", type=float, default=SERVER_SETTINGS.termination_grace_seconds,
                        help="grace period between SIGTERM and SIGKILL when a session is deleted (daemon: 5 s)")
    parser.add_argument("--logs-exit-confirm-seconds", type=float, default=SERVER_SETTINGS.logs_exit_confirm_seconds,
                        help="quiet time before the logs WebSocket checks for the exit code and closes (daemon: 1 s)")
    parser.add_argument("--exit-when-stdin-closes", action="store_true",
                        help="stop (and kill every process tree) when stdin reaches end of file")
    arguments = parser.parse_args()
    # stdout carries only the LISTENING line; aiohttp's error traces go to stderr.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="daytona-fake %(levelname)s %(message)s")
    temporary_root = None
    if arguments.root is None:
        temporary_root = tempfile.mkdtemp(prefix="daytona-fake-")
        arguments.root = temporary_root
    os.makedirs(arguments.root, exist_ok=True)
    SERVER_SETTINGS.api_key = arguments.api_key
    SERVER_SETTINGS.root = os.path.abspath(arguments.root)
    SERVER_SETTINGS.jwt = arguments.jwt
    SERVER_SETTINGS.organization_id = arguments.organization_id
    SERVER_SETTINGS.exit_when_stdin_closes = arguments.exit_when_stdin_closes
    SERVER_SETTINGS.termination_grace_seconds = arguments.termination_grace_seconds
    SERVER_SETTINGS.logs_exit_confirm_seconds = arguments.logs_exit_confirm_seconds
    try:
        asyncio.run(serve_with_fake(arguments.host, arguments.port))
    finally:
        if temporary_root is not None:
            shutil.rmtree(temporary_root, ignore_errors=True)


async def serve_with_fake(host: str, port: int) -> None:
    traffic.install()
    await serve(host, port, FakeDaytona(SERVER_SETTINGS))


if __name__ == "__main__":
    main()
