"""Fault injection of the Vercel fake: cut and edge-cut streams, 429, 5xx, 422 transitions, outside stops and deletes, hangs, a wrong token."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from fake_vercel_client import RawVercelClient, v2_session_path

COUNTING_SCRIPT = "i=1; while [ $i -le 40 ]; do echo line-$i; i=$((i+1)); sleep 0.02; done"
COUNTED_OUTPUT = "".join(f"line-{index}\n" for index in range(1, 41))


def read_logs_across_cuts(client: RawVercelClient, path: str, command_id: str, max_attempts: int = 200) -> tuple[str, int]:
    """What a careful driver does: re-open the logs after every cut and skip what it already has (they replay).

    Returns the output and the number of cuts seen. Only complete lines count as delivered, so a line cut in half is
    taken whole from the next replay.
    """
    delivered: list[str] = []
    cuts = 0
    for _ in range(max_attempts):
        result = client.stream("GET", f"{path}/cmd/{command_id}/logs")
        assert result.status == 200
        lines = result.lines
        assert lines[:len(delivered)] == [{"stream": "stdout", "data": text} for text in delivered][:len(lines)]
        delivered.extend(line["data"] for line in lines[len(delivered):])
        if result.completed:
            return "".join(delivered), cuts
        cuts += 1
    raise AssertionError("the logs never completed")


def test_cut_after_bytes_ends_the_stream_mid_line_and_the_command_keeps_running(server, client, session):
    server.set_faults(cutStreamAfterBytes=300, sandbox=session["session"]["id"])
    sequence = server.next_request_sequence()
    result = client.stream("POST", f"{session['path']}/cmd", json={
        "command": "sh", "args": ["-c", COUNTING_SCRIPT], "wait": True, "logs": True})
    assert not result.completed
    assert len(result.raw) == 300 and result.ends_mid_line
    command_id = result.lines[0]["command"]["id"]
    assert [entry["cut"] for entry in server.requests_since(sequence)["requests"]] == [True]
    # The fault was used up: the replay is whole, and the command ran to its end.
    logs = client.stream("GET", f"{session['path']}/cmd/{command_id}/logs")
    assert logs.completed and "".join(line["data"] for line in logs.lines) == COUNTED_OUTPUT
    waited = client.request("GET", f"{session['path']}/cmd/{command_id}", params={"wait": "true"}).json()
    assert waited["command"]["exitCode"] == 0


def test_cut_count_applies_to_that_many_streams(server, client, session):
    command = client.start_command(session["path"], "sh", ["-c", COUNTING_SCRIPT])
    client.request("GET", f"{session['path']}/cmd/{command['id']}", params={"wait": "true"})
    server.set_faults(cutStreamAfterBytes=40, cutStreamCount=3, sandbox=session["sandbox"]["name"])
    output, cuts = read_logs_across_cuts(client, session["path"], command["id"])
    assert cuts == 3 and output == COUNTED_OUTPUT


def test_edge_cut_every_half_second_loses_and_repeats_nothing(server, client, session):
    server.set_faults(edgeCutSeconds=0.3, sandbox=session["session"]["id"])
    command = client.start_command(session["path"], "sh", ["-c", "i=1; while [ $i -le 60 ]; do echo line-$i; "
                                                                 "i=$((i+1)); sleep 0.03; done"])
    output, cuts = read_logs_across_cuts(client, session["path"], command["id"])
    assert output == "".join(f"line-{index}\n" for index in range(1, 61))
    assert cuts >= 3


def test_edge_cut_at_five_simulated_minutes_also_drops_a_blocking_wait(server, client, session):
    server.set_faults(edgeCutSeconds=300, sandbox=session["session"]["id"])
    command = client.start_command(session["path"], "sleep", ["30"])
    outcome: dict = {}

    def blocking_wait() -> None:
        try:
            outcome["answer"] = client.request("GET", f"{session['path']}/cmd/{command['id']}",
                                               params={"wait": "true"}, timeout=20)
        except (httpx.RemoteProtocolError, httpx.ReadError) as error:
            outcome["error"] = error

    waiter = threading.Thread(target=blocking_wait)
    waiter.start()
    time.sleep(0.5)
    assert waiter.is_alive()
    server.advance_clock(301)
    waiter.join(10)
    assert not waiter.is_alive() and "error" in outcome, outcome
    # The command survived the cut.
    assert client.request("GET", f"{session['path']}/cmd/{command['id']}").json()["command"]["exitCode"] is None


def test_rate_limit_answers_429_with_retry_after_then_recovers(server, client, session):
    server.set_faults(rateLimitNext=2, retryAfter=7, sandbox=session["session"]["id"])
    for _ in range(2):
        limited = client.request("GET", session["path"])
        assert limited.status_code == 429 and limited.headers["Retry-After"] == "7"
        assert limited.json()["error"]["code"] == "rate_limited"
    assert client.request("GET", session["path"]).status_code == 200


def test_scoped_errors_hit_only_their_sandbox(server, client, session):
    other = client.create_sandbox()
    server.set_faults(errorNext=2, errorStatus=502, sandbox=session["sandbox"]["name"])
    assert client.request("GET", v2_session_path(other["session"]["id"])).status_code == 200
    assert client.request("GET", session["path"]).status_code == 502
    assert client.request("POST", f"{session['path']}/fs/read", json={"path": "x"}).status_code == 502
    assert client.request("GET", session["path"]).status_code == 200


def test_injected_422_carries_the_given_code(server, client, session):
    server.set_faults(errorNext=1, errorStatus=422, errorCode="sandbox_stopping", sandbox=session["session"]["id"])
    answer = client.request("POST", f"{session['path']}/cmd", json={"command": "true"})
    assert answer.status_code == 422 and answer.json()["error"]["code"] == "sandbox_stopping"


def test_stopping_and_snapshotting_answer_422_until_the_transition_ends(own_server):
    client = RawVercelClient(own_server)
    own_server.set_faults(stoppingSeconds=30, snapshottingSeconds=30)
    first = client.create_sandbox()
    path = v2_session_path(first["session"]["id"])
    assert client.request("POST", f"{path}/stop").json()["session"]["status"] == "stopping"
    stopping = client.request("POST", f"{path}/cmd", json={"command": "true"})
    assert stopping.status_code == 422 and stopping.json()["error"]["code"] == "sandbox_stopping"
    own_server.advance_clock(31)
    assert client.request("GET", path).json()["session"]["status"] == "stopped"
    assert client.request("POST", f"{path}/cmd", json={"command": "true"}).status_code == 410

    second = client.create_sandbox()
    path = v2_session_path(second["session"]["id"])
    snapshot = client.request("POST", f"{path}/snapshot").json()
    assert snapshot["session"]["status"] == "snapshotting"
    answer = client.request("POST", f"{path}/fs/read", json={"path": "x"})
    assert answer.status_code == 422 and answer.json()["error"]["code"] == "sandbox_snapshotting"
    own_server.advance_clock(31)
    assert client.request("GET", path).json()["session"]["status"] == "stopped"
    restored = client.create_sandbox(source={"type": "snapshot", "snapshotId": snapshot["snapshot"]["id"]})
    assert restored["session"]["status"] == "running"


def test_a_session_stopped_from_outside_ends_its_streams_and_answers_410(server, client, session):
    command = client.start_command(session["path"], "sh", ["-c", "echo up; sleep 30"])
    threading.Timer(0.4, lambda: server.set_faults(stopSession=session["sandbox"]["name"])).start()
    logs = client.stream("GET", f"{session['path']}/cmd/{command['id']}/logs")
    assert logs.lines[0]["data"] == "up\n"
    assert logs.lines[-1]["stream"] == "error" and logs.lines[-1]["data"]["code"] == "sandbox_stopped"
    assert client.request("GET", f"{session['path']}/cmd/{command['id']}").status_code == 410


def test_a_sandbox_deleted_from_outside_is_gone(server, client, session):
    command = client.start_command(session["path"], "sh", ["-c", "echo up; sleep 30"])
    threading.Timer(0.4, lambda: server.set_faults(deleteSandbox=session["sandbox"]["name"])).start()
    logs = client.stream("GET", f"{session['path']}/cmd/{command['id']}/logs")
    assert not logs.completed
    assert client.request("GET", session["path"]).status_code == 404
    assert client.request("GET", f"/v2/sandboxes/{session['sandbox']['name']}").status_code == 404


def test_hang_holds_requests_in_scope_until_released(server, client, session):
    other = client.create_sandbox()
    server.set_faults(hang=True, sandbox=session["session"]["id"])
    with pytest.raises(httpx.ReadTimeout):
        client.request("GET", session["path"], timeout=0.5)
    assert client.request("GET", v2_session_path(other["session"]["id"]), timeout=5).status_code == 200
    released: dict = {}
    waiter = threading.Thread(target=lambda: released.update(answer=client.request("GET", session["path"], timeout=10)))
    waiter.start()
    time.sleep(0.3)
    server.set_faults(hang=False)
    waiter.join(10)
    assert released["answer"].status_code == 200


def test_a_replaced_token_makes_the_old_one_wrong(server, client, session):
    server.set_faults(token="rotated_token_value")
    answer = client.request("GET", session["path"])
    assert answer.status_code == 403 and answer.json()["error"]["invalidToken"] is True
    assert "rotated_token_value" not in answer.text and server.token not in answer.text
    assert RawVercelClient(server, token="rotated_token_value").request("GET", session["path"]).status_code == 200
    assert "rotated_token_value" not in str(server.set_faults())


def test_request_counts_by_route(server, client, session):
    sequence = server.next_request_sequence()
    command = client.start_command(session["path"], "true", [])
    client.request("GET", f"{session['path']}/cmd/{command['id']}", params={"wait": "true"})
    client.stream("GET", f"{session['path']}/cmd/{command['id']}/logs")
    log = server.requests_since(sequence, session_id=session["session"]["id"])
    assert log["counts"] == {
        "POST /v2/sandboxes/sessions/{sessionId}/cmd": 1,
        "GET /v2/sandboxes/sessions/{sessionId}/cmd/{cmdId}": 1,
        "GET /v2/sandboxes/sessions/{sessionId}/cmd/{cmdId}/logs": 1,
    }
    assert [entry["status"] for entry in log["requests"]] == [200, 200, 200]
    assert log["requests"][0]["body"] == {"command": "true", "args": []}


def test_a_blocking_wait_does_not_use_up_a_byte_cut(server, client, session):
    command = client.start_command(session["path"], "sh", ["-c", "sleep 0.2; echo done"])
    server.set_faults(cutStreamAfterBytes=10, sandbox=session["session"]["id"])
    waited = client.request("GET", f"{session['path']}/cmd/{command['id']}", params={"wait": "true"})
    assert waited.json()["command"]["exitCode"] == 0
    logs = client.stream("GET", f"{session['path']}/cmd/{command['id']}/logs")
    assert not logs.completed and len(logs.raw) == 10
