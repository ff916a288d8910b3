"""Faults the E2B fake injects on request (dropped streams, 429, vanished sandboxes, a hung daemon, bad credentials)."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from e2b import AuthenticationException, RateLimitException, Sandbox, SandboxException, TimeoutException

from fake_e2b_client import envelope, shell_start_request

START = "process.Process/Start"
CONNECT = "process.Process/Connect"
SIX_LINES = "for i in 1 2 3 4 5 6; do echo line-$i; sleep 0.15; done"
SIX_LINES_OUTPUT = b"".join(f"line-{number}\n".encode() for number in range(1, 7))


def test_dropped_stream_should_be_reattachable_by_pid_with_complete_ordered_output(server, raw_envd):
    server.set_faults(dropStreamAfterBytes=1)
    first = raw_envd.stream(START, shell_start_request(SIX_LINES))
    assert first.transport_error is not None, "the stream must end without its end-of-stream frame"
    assert first.end_of_stream is None
    # The drop comes right after the first data event, which normally holds just line-1 (more under heavy load).
    assert first.output() and SIX_LINES_OUTPUT.startswith(first.output())
    assert len(first.output()) < len(SIX_LINES_OUTPUT)
    time.sleep(0.3)  # Output produced while nobody is attached must not be lost.
    second = raw_envd.stream(CONNECT, {"process": {"pid": first.pid}})
    assert second.transport_error is None
    assert second.pid == first.pid
    assert first.output() + second.output() == SIX_LINES_OUTPUT
    assert second.end_event == {"exited": True, "status": "exit status 0"}
    assert second.end_of_stream == {}


def test_drop_fault_should_hit_only_the_requested_number_of_streams(server, raw_envd):
    server.set_faults(dropStreamAfterBytes=1, dropStreamCount=2)
    assert raw_envd.stream(START, shell_start_request("echo a; sleep 0.1; echo b")).transport_error is not None
    assert raw_envd.stream(START, shell_start_request("echo a; sleep 0.1; echo b")).transport_error is not None
    third = raw_envd.stream(START, shell_start_request("echo a; sleep 0.1; echo b"))
    assert third.transport_error is None and third.output() == b"a\nb\n"


def test_timed_drops_should_cut_every_stream_until_cleared(server, raw_envd):
    server.set_faults(dropStreamEverySeconds=0.3)
    started = time.monotonic()
    first = raw_envd.stream(START, shell_start_request(SIX_LINES))
    assert first.transport_error is not None, "the stream is cut after 0.3 s, before the command's end"
    assert time.monotonic() - started < 0.9
    second = raw_envd.stream(CONNECT, {"process": {"pid": first.pid}})
    assert second.transport_error is not None, "a re-attach is cut as well: the fault stays until cleared"
    server.set_faults(dropStreamEverySeconds=None)
    third = raw_envd.stream(CONNECT, {"process": {"pid": first.pid}})
    assert third.transport_error is None
    assert third.end_event == {"exited": True, "status": "exit status 0"}


def test_sdk_should_recover_a_dropped_command_with_commands_connect(server, sandbox):
    server.set_faults(dropStreamAfterBytes=1)
    handle = sandbox.commands.run(SIX_LINES, background=True)
    received: list[str] = []
    with pytest.raises(Exception):
        for stdout, _stderr, _pty in handle:
            if stdout:
                received.append(stdout)
    reattached = sandbox.commands.connect(handle.pid)
    result = reattached.wait(on_stdout=received.append)
    assert result.exit_code == 0
    assert "".join(received).encode() == SIX_LINES_OUTPUT


def control(server, method: str, path: str, api_key=None, **kwargs) -> httpx.Response:
    headers = {} if api_key is False else {"X-API-Key": api_key or server.api_key}
    return httpx.request(method, f"{server.url}{path}", headers=headers, **kwargs)


def test_rate_limit_should_answer_429_with_retry_after_then_recover(server):
    server.set_faults(rateLimitNext=2, retryAfter=7)
    for _ in range(2):
        limited = control(server, "GET", "/v2/sandboxes")
        assert limited.status_code == 429
        assert limited.headers["Retry-After"] == "7"
        assert limited.json()["code"] == 429
    assert control(server, "GET", "/v2/sandboxes").status_code == 200


def test_sdk_should_retry_a_rate_limited_create_after_retry_after(server):
    server.set_faults(rateLimitNext=1, retryAfter=1, rateLimitPlane="control")
    before = server.next_request_sequence()
    started = time.monotonic()
    created = Sandbox.create(timeout=30, **server.sdk_options())
    elapsed = time.monotonic() - started
    try:
        creates = [(entry["path"], entry["status"]) for entry in server.requests_since(before, plane="control")]
        assert creates == [("/v2/sandboxes", 429), ("/v2/sandboxes", 201)]
        assert elapsed >= 0.9, "the SDK must have waited for Retry-After"
    finally:
        created.kill()


def test_rate_limited_envd_should_surface_as_rate_limit_exception(server, sandbox):
    server.set_faults(rateLimitNext=1, rateLimitPlane="envd")
    with pytest.raises(RateLimitException):
        sandbox.files.list("/home/user")
    assert [entry.name for entry in sandbox.files.list("/home/user")] == []


def test_sdk_should_retry_a_503_from_the_control_plane(server):
    server.set_faults(errorNext=1, errorStatus=503, errorPlane="control")
    before = server.next_request_sequence()
    created = Sandbox.create(timeout=30, **server.sdk_options())
    try:
        statuses = [entry["status"] for entry in server.requests_since(before, plane="control")]
        assert statuses == [503, 201]
    finally:
        created.kill()


def test_vanished_sandbox_should_answer_502_on_envd_and_404_on_the_control_plane(server, sandbox, raw_envd):
    server.set_faults(vanish=sandbox.sandbox_id)
    health = raw_envd.get("/health")
    assert health.status_code == 502
    assert health.json() == {"sandboxId": sandbox.sandbox_id, "message": "The sandbox was not found", "code": 502}
    assert raw_envd.unary("process.Process/List", {}).status_code == 502
    assert control(server, "GET", f"/sandboxes/{sandbox.sandbox_id}").status_code == 404
    assert sandbox.is_running() is False
    with pytest.raises(SandboxException):
        sandbox.commands.run("true")


def test_vanishing_should_cut_open_streams_without_an_end_of_stream_frame(server, sandbox, raw_envd):
    threading.Timer(0.5, lambda: server.set_faults(vanish=sandbox.sandbox_id)).start()
    result = raw_envd.stream(START, shell_start_request("echo started; sleep 30"), timeout=10)
    assert result.output() == b"started\n"
    assert result.end_of_stream is None
    assert result.transport_error is not None


def test_hung_envd_should_stop_answering_until_the_fault_is_cleared(server, raw_envd):
    headers = raw_envd.headers({"Content-Type": "application/connect+json", "Keepalive-Ping-Interval": "0.2"})
    with httpx.Client(timeout=httpx.Timeout(10.0, read=1.0)) as client:
        with client.stream("POST", f"{server.url}/{START}", headers=headers,
                           content=envelope(shell_start_request("sleep 30"))) as stream:
            chunks = stream.iter_raw()
            assert b'"start"' in next(chunks)
            assert b'"keepalive"' in next(chunks)
            server.set_faults(hangEnvd=True)
            with pytest.raises(httpx.ReadTimeout):
                # Keepalives stop too: a dead daemon sends nothing at all.
                for _ in range(50):
                    next(chunks)
    with pytest.raises(httpx.ReadTimeout):
        raw_envd.get("/health", timeout=httpx.Timeout(5.0, read=0.5))
    # The control plane keeps answering: only the daemon hangs.
    assert control(server, "GET", f"/sandboxes/{raw_envd.sandbox_id}").status_code == 200
    server.set_faults(hangEnvd=False)
    assert raw_envd.get("/health", timeout=2).status_code == 204


def test_sdk_request_timeout_should_fire_against_a_hung_envd(server, sandbox):
    server.set_faults(hangEnvd=True)
    started = time.monotonic()
    with pytest.raises(TimeoutException):
        sandbox.files.list("/home/user", request_timeout=1)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("api_key", [False, "e2b_wrong_secret_key_4242"], ids=["missing", "wrong"])
def test_bad_api_key_should_get_401_that_never_echoes_the_key(server, api_key):
    for method, path in [("POST", "/v2/sandboxes"), ("GET", "/v2/sandboxes"), ("GET", "/sandboxes/whatever")]:
        response = control(server, method, path, api_key=api_key, json={"templateID": "base"})
        assert response.status_code == 401
        assert response.json()["code"] == 401
        assert "e2b_wrong_secret_key_4242" not in response.text
        assert server.api_key not in response.text


def test_sdk_with_a_wrong_api_key_should_raise_authentication_exception(server):
    wrong_key = "e2b_wrong_secret_key_4242"
    with pytest.raises(AuthenticationException) as raised:
        Sandbox.create(timeout=30, api_key=wrong_key, api_url=server.url, sandbox_url=server.url)
    assert wrong_key not in str(raised.value)


def test_envd_should_reject_a_missing_or_wrong_access_token_without_echoing_it(raw_envd):
    wrong_token = "ea_wrong_token_123456"
    for token_headers in ({}, {"X-Access-Token": wrong_token}):
        raw_envd.access_token, original = None, raw_envd.access_token
        try:
            headers = raw_envd.headers({"Content-Type": "application/json", **token_headers})
        finally:
            raw_envd.access_token = original
        for path, body in [("/process.Process/List", b"{}"), ("/filesystem.Filesystem/Stat", b'{"path":"/"}')]:
            response = httpx.post(f"{raw_envd.server.url}{path}", content=body, headers=headers)
            assert response.status_code == 401
            assert response.json()["code"] == 401
            assert wrong_token not in response.text
        files = httpx.get(f"{raw_envd.server.url}/files", params={"path": "/etc"}, headers=headers)
        assert files.status_code == 401
    # Health stays open, as envd's is.
    assert raw_envd.get("/health", with_token=False).status_code == 204


def test_admin_faults_should_report_and_reset_settings(server):
    settings = server.set_faults(rateLimitNext=3, retryAfter=2, hangEnvd=False, dropStreamAfterBytes=10)
    assert (settings["rateLimitNext"], settings["retryAfter"], settings["dropStreamAfterBytes"]) == (3, 2, 10)
    server.reset_faults()
    current = httpx.get(f"{server.url}/_admin/faults").json()
    assert (current["rateLimitNext"], current["dropStreamAfterBytes"], current["hangEnvd"]) == (0, None, False)
    assert json.loads(httpx.post(f"{server.url}/_admin/faults", content=b"[").text)["code"] == 400


def test_drop_at_zero_bytes_should_cut_the_stream_right_after_the_start_event(server, raw_envd):
    server.set_faults(dropStreamAfterBytes=0)
    first = raw_envd.stream(START, shell_start_request("echo only-after-reattach"))
    assert [next(iter(event)) for event in first.events] == ["start"]
    assert first.transport_error is not None
    second = raw_envd.stream(CONNECT, {"process": {"pid": first.pid}})
    assert second.output() == b"only-after-reattach\n"


def test_faults_scoped_to_a_sandbox_should_leave_other_sandboxes_alone(server, raw_envd):
    other = control(server, "POST", "/sandboxes", json={"templateID": "base"}).json()
    other_envd = raw_envd.__class__(server, other["sandboxID"], other["envdAccessToken"])
    try:
        server.set_faults(sandboxId=raw_envd.sandbox_id, hangEnvd=True, dropStreamAfterBytes=0, rateLimitNext=5,
                          rateLimitPlane="control")
        # The other sandbox sees none of it: no hang, no drop, no 429, on either plane.
        assert other_envd.get("/health", timeout=2).status_code == 204
        assert other_envd.stream(START, shell_start_request("echo fine")).output() == b"fine\n"
        assert control(server, "GET", f"/sandboxes/{other['sandboxID']}").status_code == 200
        # The scoped sandbox hangs, and its control routes are rate limited.
        with pytest.raises(httpx.ReadTimeout):
            raw_envd.get("/health", timeout=httpx.Timeout(5.0, read=0.5))
        assert control(server, "GET", f"/sandboxes/{raw_envd.sandbox_id}").status_code == 429
        server.set_faults(hangEnvd=False)
        dropped = raw_envd.stream(START, shell_start_request("echo dropped"))
        assert dropped.transport_error is not None
    finally:
        control(server, "DELETE", f"/sandboxes/{other['sandboxID']}")
