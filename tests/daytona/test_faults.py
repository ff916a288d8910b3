"""Faults the Daytona fake injects on request, and auto-stop on the test clock, each behaving as daytona_server.md says."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import httpx
import pytest
from daytona import (
    CreateSandboxFromSnapshotParams,
    DaytonaAuthenticationError,
    DaytonaError,
    DaytonaRateLimitError,
)

from fake_daytona_client import demux, process_alive, read_log_websocket, wait_until

SIX_LINES = "for i in 1 2 3 4 5 6; do echo line-$i; sleep 0.15; done"
SIX_LINES_OUTPUT = b"".join(f"line-{number}\n".encode() for number in range(1, 7))


def test_dropped_logs_websocket_should_leave_the_command_running_and_its_log_complete(server, raw, raw_sandbox):
    sandbox_id = raw_sandbox["id"]
    server.set_faults(sandboxId=sandbox_id, dropLogsAfterBytes=10)
    command_id = raw.start_command(sandbox_id, SIX_LINES)
    first = raw.follow_logs(sandbox_id, "run", command_id)
    assert not first.closed_cleanly and first.close_code != 1000, "cut without a close frame"
    assert len(first.data) == 10
    assert raw.toolbox("GET", sandbox_id, f"/process/session/run/command/{command_id}").json().get("exitCode") is None
    # A new WebSocket starts again from the first byte, so a client skips what it already has: nothing lost or doubled.
    second = raw.follow_logs(sandbox_id, "run", command_id)
    assert second.closed_cleanly
    assert second.data.startswith(first.data)
    assert demux(second.data) == (SIX_LINES_OUTPUT, b"")
    assert raw.wait_for_exit_code(sandbox_id, "run", command_id) == 0
    plain = raw.toolbox("GET", sandbox_id, f"/process/session/run/command/{command_id}/logs").json()
    assert plain["stdout"] == SIX_LINES_OUTPUT.decode()


def test_drop_fault_should_hit_only_the_requested_number_of_websockets(server, raw, raw_sandbox):
    sandbox_id = raw_sandbox["id"]
    command_id = raw.start_command(sandbox_id, "echo a; echo b")
    raw.wait_for_exit_code(sandbox_id, "run", command_id)
    server.set_faults(sandboxId=sandbox_id, dropLogsAfterBytes=0, dropLogsCount=2)
    assert raw.follow_logs(sandbox_id, "run", command_id).frames == []
    assert not raw.follow_logs(sandbox_id, "run", command_id).closed_cleanly
    third = raw.follow_logs(sandbox_id, "run", command_id)
    assert third.closed_cleanly and demux(third.data) == (b"a\nb\n", b"")
    assert server.set_faults()["dropLogsAfterBytes"] is None


def test_rate_limit_should_answer_429_with_retry_after_on_the_chosen_path_only(server, raw, raw_sandbox):
    sandbox_id = raw_sandbox["id"]
    server.set_faults(sandboxId=sandbox_id, rateLimitNext=2, retryAfter=3, rateLimitPath=r"/files$")
    assert raw.api("GET", f"/sandbox/{sandbox_id}").status_code == 200
    for _ in range(2):
        limited = raw.toolbox("GET", sandbox_id, "/files")
        assert limited.status_code == 429
        assert limited.headers["Retry-After"] == "3"
        assert limited.json()["statusCode"] == 429
    assert raw.toolbox("GET", sandbox_id, "/files").status_code == 200


def test_sdk_should_wait_out_retry_after_and_succeed(server, sandbox):
    """The SDK's toolbox client (urllib3 Retry) honours Retry-After on 429: the fault's contract is what it needs."""
    start = server.next_request_sequence()
    server.set_faults(sandboxId=sandbox.id, rateLimitNext=1, retryAfter=1, rateLimitPlane="toolbox")
    began = time.monotonic()
    assert sandbox.fs.list_files(".") == []
    assert time.monotonic() - began >= 0.9
    statuses = [entry["status"] for entry in server.requests_since(start, plane="toolbox")["requests"]]
    assert statuses == [429, 200]
    # Beyond its retry budget the 429 reaches the caller as the SDK's rate-limit error.
    server.set_faults(sandboxId=sandbox.id, rateLimitNext=10, retryAfter=0, rateLimitPlane="toolbox")
    with pytest.raises(DaytonaRateLimitError):
        sandbox.fs.list_files(".")


def test_server_errors_should_hit_the_chosen_plane_the_requested_number_of_times(server, raw, raw_sandbox):
    sandbox_id = raw_sandbox["id"]
    server.set_faults(sandboxId=sandbox_id, errorNext=2, errorStatus=502, errorPlane="api")
    assert raw.toolbox("GET", sandbox_id, "/files").status_code == 200
    assert [raw.api("GET", f"/sandbox/{sandbox_id}").status_code for _ in range(3)] == [502, 502, 200]


def test_scoped_faults_should_leave_other_sandboxes_alone(server, raw, raw_sandbox):
    other = raw.create_sandbox()
    try:
        server.set_faults(sandboxId=other["id"], errorNext=1, hangToolbox=True)
        assert raw.toolbox("GET", raw_sandbox["id"], "/files", timeout=5).status_code == 200
        assert raw.api("GET", f"/sandbox/{raw_sandbox['id']}").status_code == 200
    finally:
        server.reset_faults()
        raw.api("DELETE", f"/sandbox/{other['id']}")


@pytest.mark.parametrize("how", ["admin-endpoint", "vanish-fault"])
def test_sandbox_deleted_from_outside_should_vanish_with_its_processes(server, raw, raw_sandbox, how):
    sandbox_id = raw_sandbox["id"]
    command_id, pid = raw.start_background_sleep(sandbox_id)
    host_root = server.admin_sandbox(sandbox_id)["hostRoot"]
    if how == "admin-endpoint":
        server.delete_from_outside(sandbox_id)
    else:
        server.set_faults(vanish=sandbox_id)
    assert raw.api("GET", f"/sandbox/{sandbox_id}").status_code == 404
    # The proxy no longer lets the key at the sandbox: a toolbox call answers 401, the API says why (404).
    assert raw.toolbox("GET", sandbox_id, f"/process/session/run/command/{command_id}").status_code == 401
    wait_until(lambda: not process_alive(pid), 5)
    wait_until(lambda: not os.path.exists(host_root), 5)


def test_hung_toolbox_should_never_answer_until_released_while_the_api_answers(server, raw, raw_sandbox):
    sandbox_id = raw_sandbox["id"]
    command_id = raw.start_command(sandbox_id, "echo before; sleep 0.5; echo after")
    server.set_faults(sandboxId=sandbox_id, hangToolbox=True)
    with pytest.raises(httpx.ReadTimeout):
        raw.toolbox("GET", sandbox_id, "/files", timeout=1)
    assert raw.api("GET", f"/sandbox/{sandbox_id}").status_code == 200
    answers: list[int] = []
    waiting = threading.Thread(target=lambda: answers.append(
        raw.toolbox("GET", sandbox_id, f"/process/session/run/command/{command_id}", timeout=30).status_code))
    waiting.start()
    time.sleep(1.0)
    assert answers == [], "a hung toolbox answers nothing"
    server.set_faults(hangToolbox=False)
    waiting.join(10)
    assert answers == [200]


def test_hung_toolbox_should_silence_an_open_logs_websocket(server, raw, raw_sandbox):
    sandbox_id = raw_sandbox["id"]
    command_id = raw.start_command(sandbox_id, "echo first; sleep 0.5; echo second")
    url, headers = raw.logs_url(sandbox_id, "run", command_id), raw.headers()

    async def scenario():
        import aiohttp

        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(url, headers=headers) as websocket:
                first = await asyncio.wait_for(websocket.receive(), 5)
                server_url = raw.server.url
                async with session.post(f"{server_url}/_admin/faults",
                                        json={"sandboxId": sandbox_id, "hangToolbox": True}):
                    pass
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(websocket.receive(), 1.5)
                async with session.post(f"{server_url}/_admin/faults", json={"hangToolbox": False}):
                    pass
                rest = []
                while True:
                    message = await asyncio.wait_for(websocket.receive(), 5)
                    if message.type != aiohttp.WSMsgType.BINARY:
                        return first.data + b"".join(rest), message.data
                    rest.append(message.data)

    data, close_code = asyncio.run(scenario())
    assert demux(data) == (b"first\nsecond\n", b"")
    assert close_code == 1000


def test_hung_api_should_hold_main_api_requests_only(server, raw, raw_sandbox):
    sandbox_id = raw_sandbox["id"]
    server.set_faults(sandboxId=sandbox_id, hangApi=True)
    with pytest.raises(httpx.ReadTimeout):
        raw.api("POST", f"/sandbox/{sandbox_id}/last-activity", timeout=1)
    assert raw.toolbox("GET", sandbox_id, "/files").status_code == 200


def test_stuck_starting_should_hold_a_sandbox_in_starting_until_released(server, raw, daytona):
    server.set_faults(stuckStarting=True)
    created = raw.create_sandbox()
    try:
        assert created["state"] == "starting"
        time.sleep(0.3)
        assert raw.api("GET", f"/sandbox/{created['id']}").json()["state"] == "starting"
        assert raw.toolbox("GET", created["id"], "/files").status_code == 400
        with pytest.raises(DaytonaError):
            daytona.create(CreateSandboxFromSnapshotParams(labels={"stuck": "yes"}), timeout=2)
        server.set_faults(stuckStarting=False)
        assert raw.api("GET", f"/sandbox/{created['id']}").json()["state"] == "started"
    finally:
        server.reset_faults()
        raw.api("DELETE", f"/sandbox/{created['id']}")
        for item in raw.api("GET", "/sandbox", params={"labels": '{"stuck": "yes"}'}).json()["items"]:
            raw.api("DELETE", f"/sandbox/{item['id']}")


def test_stuck_starting_scoped_to_a_sandbox_should_hold_its_start(server, raw, raw_sandbox):
    sandbox_id = raw_sandbox["id"]
    raw.api("POST", f"/sandbox/{sandbox_id}/stop")
    server.set_faults(sandboxId=sandbox_id, stuckStarting=True)
    assert raw.api("POST", f"/sandbox/{sandbox_id}/start").json()["state"] == "starting"
    server.reset_faults()
    assert raw.api("GET", f"/sandbox/{sandbox_id}").json()["state"] == "started"


def test_revoked_key_should_get_401_everywhere_without_echoing_it(server, raw, raw_sandbox, daytona):
    server.set_faults(revokeKey=True)
    for response in (raw.api("GET", "/sandbox"), raw.toolbox("GET", raw_sandbox["id"], "/files")):
        assert response.status_code == 401
        assert server.api_key not in response.text
    with pytest.raises(DaytonaAuthenticationError) as raised:
        daytona.get(raw_sandbox["id"])
    assert server.api_key not in str(raised.value)


# --- auto-stop on the test clock ------------------------------------------------------------------------------


def state_of(raw, sandbox_id: str) -> str:
    return raw.api("GET", f"/sandbox/{sandbox_id}").json()["state"]


def test_idle_sandbox_should_auto_stop_after_its_interval_of_test_time(server, raw):
    created = raw.create_sandbox(autoStopInterval=1)
    try:
        command_id, pid = raw.start_background_sleep(created["id"])
        server.advance_clock(50)
        assert state_of(raw, created["id"]) == "started", "a running command alone is not activity, but 50 s < 1 min"
        server.advance_clock(11)
        assert state_of(raw, created["id"]) == "stopped", "a running command does not prevent auto-stop"
        assert server.admin_sandbox(created["id"])["stopReason"] == "auto-stop"
        wait_until(lambda: not process_alive(pid), 5)
        assert raw.toolbox("GET", created["id"], f"/process/session/run/command/{command_id}").status_code == 400
    finally:
        raw.api("DELETE", f"/sandbox/{created['id']}")


def test_last_activity_should_restart_the_countdown(server, raw):
    created = raw.create_sandbox(autoStopInterval=1)
    try:
        server.advance_clock(50)
        assert raw.api("POST", f"/sandbox/{created['id']}/last-activity").status_code == 201
        server.advance_clock(50)
        assert state_of(raw, created["id"]) == "started"
        # A toolbox call is activity too; reading the sandbox through the main API is not.
        raw.toolbox("GET", created["id"], "/files")
        server.advance_clock(50)
        raw.api("GET", f"/sandbox/{created['id']}")
        server.advance_clock(11)
        assert state_of(raw, created["id"]) == "stopped"
    finally:
        raw.api("DELETE", f"/sandbox/{created['id']}")


def test_a_twenty_minute_run_with_keepalives_should_not_be_auto_stopped(server, raw):
    created = raw.create_sandbox()  # the default 15-minute interval
    try:
        command_id = raw.start_command(created["id"], "sleep 600")
        for _minute in range(20):
            server.advance_clock(60)
            raw.api("POST", f"/sandbox/{created['id']}/last-activity")
        assert state_of(raw, created["id"]) == "started"
        assert raw.toolbox("GET", created["id"], f"/process/session/run/command/{command_id}").json().get(
            "exitCode") is None, "the run is still in flight after 20 simulated minutes"
        server.advance_clock(15 * 60)
        assert state_of(raw, created["id"]) == "stopped"
    finally:
        raw.api("DELETE", f"/sandbox/{created['id']}")


def test_an_open_logs_websocket_should_keep_the_sandbox_active_while_it_lasts(server, raw):
    """The proxy refreshes activity every 50 s while a request is open, so a followed run does not auto-stop."""
    created = raw.create_sandbox(autoStopInterval=1)
    try:
        command_id = raw.start_command(created["id"], "sleep 3; echo done")
        url, headers = raw.logs_url(created["id"], "run", command_id), raw.headers()

        async def follow_while_time_passes():
            import aiohttp

            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(url, headers=headers) as websocket:
                    for _ in range(20):
                        server.advance_clock(60)
                    assert state_of(raw, created["id"]) == "started", "20 simulated minutes with the stream open"
                    message = await asyncio.wait_for(websocket.receive(), 10)
                    return message.data

        assert demux(asyncio.run(follow_while_time_passes())) == (b"done\n", b"")
        time.sleep(0.2)
        server.advance_clock(61)
        assert state_of(raw, created["id"]) == "stopped", "idle again once the stream closed"
    finally:
        raw.api("DELETE", f"/sandbox/{created['id']}")


def test_proxy_activity_should_be_debounced_and_skippable(server, raw):
    created = raw.create_sandbox(autoStopInterval=1)
    try:
        server.advance_clock(50)
        raw.toolbox("GET", created["id"], "/files")  # recorded
        server.advance_clock(30)
        raw.toolbox("GET", created["id"], "/files")  # within 45 s of the last proxy update: not recorded again
        server.advance_clock(31)
        assert state_of(raw, created["id"]) == "stopped"
        raw.api("POST", f"/sandbox/{created['id']}/start")
        server.advance_clock(50)
        raw.toolbox("GET", created["id"], "/files", headers={"X-Daytona-Skip-Last-Activity-Update": "true"})
        server.advance_clock(11)
        assert state_of(raw, created["id"]) == "stopped"
    finally:
        raw.api("DELETE", f"/sandbox/{created['id']}")


def test_auto_stop_interval_zero_should_disable_auto_stop(server, raw):
    created = raw.create_sandbox(autoStopInterval=0)
    try:
        server.advance_clock(24 * 3600)
        assert state_of(raw, created["id"]) == "started"
        # Changing the interval is not activity (the countdown runs from the last activity), so refresh it first:
        # otherwise the sandbox, idle for a day, would stop as soon as the interval is set.
        raw.api("POST", f"/sandbox/{created['id']}/last-activity")
        assert raw.api("POST", f"/sandbox/{created['id']}/autostop/2").status_code == 201
        server.advance_clock(119)
        assert state_of(raw, created["id"]) == "started"
        server.advance_clock(2)
        assert state_of(raw, created["id"]) == "stopped"
    finally:
        raw.api("DELETE", f"/sandbox/{created['id']}")


def test_auto_stop_should_happen_in_real_time_too_without_a_clock_advance(server, raw):
    created = raw.create_sandbox(autoStopInterval=0.02)  # 1.2 s
    try:
        wait_until(lambda: state_of(raw, created["id"]) == "stopped", 10)
    finally:
        raw.api("DELETE", f"/sandbox/{created['id']}")
