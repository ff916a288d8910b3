"""Wire-format checks of the Vercel fake against cloud-apis.md section 3: auth, v2 sessions, NDJSON, files, lifecycle, v1 paths."""

from __future__ import annotations

import gzip
import io
import os
import re
import tarfile
import time

import httpx
import pytest

from fake_vercel_client import PROJECT_ID, RawVercelClient, v1_sandbox_path, v2_session_path


def gzip_tar(entries: dict) -> bytes:
    """`{name: bytes | (bytes, mode)}` as a gzip-compressed ustar archive, the way the SDK builds `fs/write` bodies."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as bundle:
        for name, value in entries.items():
            content, mode = value if isinstance(value, tuple) else (value, 0o644)
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = mode
            bundle.addfile(info, io.BytesIO(content))
    return gzip.compress(buffer.getvalue())


# --- auth ----------------------------------------------------------------------------------------------------------


def test_missing_token_is_401_and_wrong_token_is_403_without_echoing_it(server):
    secret = "wrong_token_that_must_not_be_echoed"
    missing = RawVercelClient(server, token="").request("GET", "/v2/sandboxes")
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "unauthorized"
    wrong = RawVercelClient(server, token=secret).request("GET", "/v2/sandboxes")
    assert wrong.status_code == 403
    assert wrong.json()["error"] == {"code": "forbidden", "message": "Not authorized", "invalidToken": True}
    assert secret not in wrong.text and server.token not in wrong.text


def test_team_id_is_required_on_every_request(server):
    answer = RawVercelClient(server, team_id=None).request("GET", "/v2/sandboxes")
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "bad_request"
    with_slug = RawVercelClient(server, team_id=None).request("GET", "/v2/sandboxes", params={"slug": "my-team"})
    assert with_slug.status_code == 200


def test_the_api_answers_with_and_without_the_api_prefix(server, client):
    bare = RawVercelClient(server, base=server.url)
    assert bare.request("GET", "/v2/sandboxes").status_code == 200
    assert client.request("GET", "/v2/sandboxes").status_code == 200


def test_request_log_never_holds_the_token(server, client):
    sequence = server.next_request_sequence()
    client.request("GET", "/v2/sandboxes")
    log = server.requests_since(sequence)
    assert log["counts"] == {"GET /v2/sandboxes": 1}
    assert server.token not in str(log)


# --- create and get ------------------------------------------------------------------------------------------------


def test_create_answers_sandbox_session_and_routes(client):
    created = client.create_sandbox(name="wire-create", ports=[3000, 8080], timeout=60_000, tags={"team": "a"},
                                     resources={"vcpus": 4})
    sandbox, session, routes = created["sandbox"], created["session"], created["routes"]
    assert sandbox["name"] == "wire-create"
    assert sandbox["currentSessionId"] == session["id"] and session["id"].startswith("sbx_")
    assert sandbox["status"] == session["status"] == "running"
    assert session["timeout"] == 60_000 and session["vcpus"] == 4 and session["memory"] == 8192
    assert session["cwd"] == "/vercel/sandbox"
    assert isinstance(session["createdAt"], int) and session["createdAt"] > 1_600_000_000_000
    assert [route["port"] for route in routes] == [3000, 8080]
    for route in routes:
        # Vercel answers https://SUB.vercel.run; the fake answers a URL that reaches itself and forwards by Host.
        assert re.fullmatch(rf"http://{route['subdomain']}\.localhost:\d+", route["url"]), route
    assert routes[0]["subdomain"] != routes[1]["subdomain"]
    again = client.request("POST", "/v2/sandboxes", json={"projectId": PROJECT_ID, "name": "wire-create"})
    assert again.status_code == 409


def test_create_validates_its_body(client):
    assert client.request("POST", "/v3/sandboxes", json={}).status_code == 400
    assert client.request("POST", "/v2/sandboxes",
                          json={"projectId": PROJECT_ID, "runtime": "ruby3"}).status_code == 400
    assert client.request("POST", "/v2/sandboxes",
                          json={"projectId": PROJECT_ID, "ports": list(range(3000, 3016))}).status_code == 400


def test_get_by_name_and_session(client, session):
    name = session["sandbox"]["name"]
    by_name = client.request("GET", f"/v2/sandboxes/{name}", params={"projectId": PROJECT_ID}).json()
    assert by_name["session"]["id"] == session["session"]["id"]
    by_session = client.request("GET", session["path"]).json()
    assert by_session["session"]["status"] == "running" and by_session["routes"] == session["routes"]
    assert client.request("GET", "/v2/sandboxes/no-such-sandbox").status_code == 404
    assert client.request("GET", v2_session_path("sbx_unknown")).json()["error"]["code"] == "sandbox_not_found"


def test_patch_ports_adds_a_route_and_keeps_the_existing_one(client, session):
    name = session["sandbox"]["name"]
    answer = client.request("PATCH", f"/v2/sandboxes/{name}", params={"projectId": PROJECT_ID},
                            json={"ports": [3000, 5173]})
    assert answer.status_code == 200
    routes = {route["port"]: route for route in answer.json()["routes"]}
    assert routes[3000] == session["routes"][0]
    assert set(routes) == {3000, 5173}
    assert client.request("GET", session["path"]).json()["routes"] == answer.json()["routes"]


# --- commands ------------------------------------------------------------------------------------------------------


def test_wait_with_logs_streams_command_output_then_the_exit_code(client, session):
    result = client.stream("POST", f"{session['path']}/cmd", json={
        "command": "sh", "args": ["-c", "echo one; echo two >&2; exit 5"], "wait": True, "logs": True})
    assert result.status == 200 and result.content_type == "application/x-ndjson" and result.completed
    lines = result.lines
    assert lines[0]["command"]["exitCode"] is None
    assert lines[0]["command"]["sessionId"] == session["session"]["id"]
    assert "sandboxId" not in lines[0]["command"]
    assert lines[-1]["command"]["exitCode"] == 5 and "durationMs" in lines[-1]["command"]
    output = [(line["stream"], line["data"]) for line in lines[1:-1]]
    assert "".join(data for stream, data in output if stream == "stdout") == "one\n"
    assert "".join(data for stream, data in output if stream == "stderr") == "two\n"


def test_wait_without_logs_is_exactly_two_lines(client, session):
    result = client.stream("POST", f"{session['path']}/cmd",
                           json={"command": "sh", "args": ["-c", "echo hidden"], "wait": True})
    assert [("command" in line) for line in result.lines] == [True, True]
    assert result.lines[1]["command"]["exitCode"] == 0


def test_detached_command_then_wait_and_logs_replayed_from_the_start(client, session):
    command = client.start_command(session["path"], "sh", ["-c", "for i in 1 2 3; do echo $i; sleep 0.1; done"])
    assert command["exitCode"] is None and command["id"].startswith("cmd_")
    waited = client.request("GET", f"{session['path']}/cmd/{command['id']}", params={"wait": "true"}).json()
    assert waited["command"]["exitCode"] == 0
    for _ in range(2):
        logs = client.stream("GET", f"{session['path']}/cmd/{command['id']}/logs")
        assert logs.completed and logs.content_type == "application/x-ndjson"
        assert "".join(line["data"] for line in logs.lines) == "1\n2\n3\n"
        assert all(line["stream"] == "stdout" for line in logs.lines)


def test_command_cwd_env_and_sandbox_env(client):
    created = client.create_sandbox(env={"FROM_CREATE": "c"})
    path = v2_session_path(created["session"]["id"])
    client.request("POST", f"{path}/fs/mkdir", json={"path": "sub"})
    result = client.stream("POST", f"{path}/cmd", json={
        "command": "sh", "args": ["-c", 'basename "$PWD"; echo "$FROM_CREATE $FROM_CMD"; test "$HOME" != ""'],
        "cwd": "/vercel/sandbox/sub", "env": {"FROM_CMD": "d"}, "wait": True, "logs": True})
    assert "".join(line.get("data", "") for line in result.lines[1:-1]) == "sub\nc d\n"
    assert result.lines[-1]["command"]["exitCode"] == 0
    missing_cwd = client.request("POST", f"{path}/cmd", json={"command": "true", "cwd": "/nowhere"})
    assert missing_cwd.status_code == 400
    unknown = client.request("POST", f"{path}/cmd", json={"command": "no-such-binary-here"})
    assert unknown.status_code == 400


def test_kill_signals_the_whole_process_group(client, session):
    command = client.start_command(session["path"], "sh", ["-c", "sleep 30 & sleep 30; wait"])
    killed = client.request("POST", f"{session['path']}/cmd/{command['id']}/kill", json={"signal": 9})
    assert killed.status_code == 200 and killed.json()["command"]["id"] == command["id"]
    waited = client.request("GET", f"{session['path']}/cmd/{command['id']}", params={"wait": "true"}).json()
    assert waited["command"]["exitCode"] == 137
    # The v1 kill form (no /cmd/ segment) is not a v2 route.
    assert client.request("POST", f"{session['path']}/{command['id']}/kill", json={"signal": 9}).status_code == 404


def test_command_timeout_kills_with_137(client, session):
    result = client.stream("POST", f"{session['path']}/cmd", json={
        "command": "sleep", "args": ["30"], "timeout": 200, "wait": True})
    assert result.lines[-1]["command"]["exitCode"] == 137


def test_unknown_command_is_404(client, session):
    answer = client.request("GET", f"{session['path']}/cmd/cmd_nope")
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "command_not_found"


def test_utf8_split_across_reads_arrives_whole(client, session):
    result = client.stream("POST", f"{session['path']}/cmd", json={
        "command": "sh", "args": ["-c", "printf '\\303'; sleep 0.1; printf '\\251\\n'"], "wait": True, "logs": True})
    assert "".join(line.get("data", "") for line in result.lines[1:-1]) == "é\n"


# --- files ---------------------------------------------------------------------------------------------------------


def test_fs_write_extracts_a_gzip_tar_relative_to_x_cwd_with_modes(server, client, session):
    body = gzip_tar({"vercel/sandbox/a.txt": b"alpha", "vercel/sandbox/deep/b.bin": bytes(range(256)),
                     "vercel/sandbox/run.sh": (b"#!/bin/sh\necho ran\n", 0o755)})
    answer = client.request("POST", f"{session['path']}/fs/write", content=body,
                            headers={"content-type": "application/gzip", "x-cwd": "/"})
    assert answer.status_code == 200 and answer.json() == {}
    relative = client.request("POST", f"{session['path']}/fs/write", content=gzip_tar({"c.txt": b"gamma"}),
                              headers={"content-type": "application/gzip", "x-cwd": "/vercel/sandbox/deep"})
    assert relative.status_code == 200
    host_root = server.admin_session(session["session"]["id"])["hostRoot"]
    assert open(os.path.join(host_root, "vercel/sandbox/deep/c.txt"), "rb").read() == b"gamma"
    assert os.stat(os.path.join(host_root, "vercel/sandbox/run.sh")).st_mode & 0o777 == 0o755
    read = client.request("POST", f"{session['path']}/fs/read", json={"path": "deep/b.bin"})
    assert read.status_code == 200 and read.headers["content-type"] == "application/octet-stream"
    assert read.content == bytes(range(256))
    absolute = client.request("POST", f"{session['path']}/fs/read", json={"path": "/vercel/sandbox/a.txt"})
    assert absolute.content == b"alpha"
    with_cwd = client.request("POST", f"{session['path']}/fs/read", json={"path": "c.txt", "cwd": "/vercel/sandbox/deep"})
    assert with_cwd.content == b"gamma"


def test_fs_write_cannot_escape_the_sandbox_and_rejects_garbage(server, client, session):
    client.request("POST", f"{session['path']}/fs/write", content=gzip_tar({"../../../escape.txt": b"x"}),
                   headers={"content-type": "application/gzip", "x-cwd": "/"})
    host_root = server.admin_session(session["session"]["id"])["hostRoot"]
    assert os.path.exists(os.path.join(host_root, "escape.txt"))
    assert not os.path.exists(os.path.join(os.path.dirname(host_root), "escape.txt"))
    garbage = client.request("POST", f"{session['path']}/fs/write", content=b"not a tar",
                             headers={"content-type": "application/gzip", "x-cwd": "/"})
    assert garbage.status_code == 400


def test_fs_read_missing_is_404_and_a_directory_is_400(client, session):
    missing = client.request("POST", f"{session['path']}/fs/read", json={"path": "nope.txt"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "file_not_found"
    assert client.request("POST", f"{session['path']}/fs/read", json={"path": "/vercel"}).status_code == 400


def test_fs_mkdir_is_not_recursive(client, session):
    assert client.request("POST", f"{session['path']}/fs/mkdir", json={"path": "one"}).status_code == 200
    assert client.request("POST", f"{session['path']}/fs/mkdir", json={"path": "one"}).status_code == 400
    assert client.request("POST", f"{session['path']}/fs/mkdir", json={"path": "x/y"}).status_code == 400
    assert client.request("POST", f"{session['path']}/fs/mkdir",
                          json={"path": "two", "cwd": "/vercel/sandbox/one"}).status_code == 200


# --- lifecycle -----------------------------------------------------------------------------------------------------


def test_extend_timeout_adds_the_duration(server, client, session):
    before = server.admin_session(session["session"]["id"])
    answer = client.request("POST", f"{session['path']}/extend-timeout", json={"duration": 120_000})
    assert answer.status_code == 200
    assert answer.json()["session"]["timeout"] == before["timeout"] + 120_000
    assert server.admin_session(session["session"]["id"])["deadline"] == before["deadline"] + 120_000
    too_long = client.request("POST", f"{session['path']}/extend-timeout", json={"duration": 6 * 3600 * 1000})
    assert too_long.status_code == 400


def test_stop_makes_logs_and_commands_410_and_execution_410(client, session):
    command = client.start_command(session["path"], "sh", ["-c", "echo before; sleep 30"])
    time.sleep(0.2)
    stopped = client.request("POST", f"{session['path']}/stop")
    assert stopped.status_code == 200
    assert stopped.json()["session"]["status"] == "stopped"
    assert stopped.json()["sandbox"]["status"] == "stopped"
    assert "stoppedAt" in stopped.json()["session"]
    for method, suffix, body in [("GET", f"/cmd/{command['id']}", None), ("GET", f"/cmd/{command['id']}/logs", None),
                                 ("POST", "/cmd", {"command": "true"}), ("POST", "/fs/read", {"path": "a"}),
                                 ("POST", "/extend-timeout", {"duration": 1000})]:
        answer = client.request(method, session["path"] + suffix, json=body)
        assert answer.status_code == 410, (suffix, answer.text)
        assert answer.json()["error"]["code"] == "sandbox_stopped"
    assert client.request("GET", session["path"]).json()["session"]["status"] == "stopped"


def test_a_stop_during_a_stream_ends_it_with_an_error_line(client, session):
    import threading

    command = client.start_command(session["path"], "sh", ["-c", "echo started; sleep 30"])
    threading.Timer(0.5, lambda: RawVercelClient(client.server).request("POST", f"{session['path']}/stop")).start()
    logs = client.stream("GET", f"{session['path']}/cmd/{command['id']}/logs")
    assert logs.lines[0] == {"stream": "stdout", "data": "started\n"}
    assert logs.lines[-1] == {"stream": "error", "data": {"code": "sandbox_stopped",
                                                          "message": "The sandbox has stopped."}}


def test_snapshot_stops_the_session_and_restores_into_a_new_sandbox(client, session):
    client.request("POST", f"{session['path']}/fs/write", content=gzip_tar({"vercel/sandbox/s.txt": b"saved"}),
                   headers={"content-type": "application/gzip", "x-cwd": "/"})
    answer = client.request("POST", f"{session['path']}/snapshot", json={"expiration": 0})
    assert answer.status_code == 200
    snapshot = answer.json()["snapshot"]
    assert snapshot["status"] == "created" and snapshot["sourceSessionId"] == session["session"]["id"]
    assert snapshot["sizeBytes"] >= 5 and "expiresAt" not in snapshot
    assert answer.json()["session"]["status"] == "stopped"
    assert client.request("GET", f"/v2/sandboxes/snapshots/{snapshot['id']}").json()["snapshot"]["id"] == snapshot["id"]
    restored = client.create_sandbox(source={"type": "snapshot", "snapshotId": snapshot["id"]})
    assert restored["session"]["sourceSnapshotId"] == snapshot["id"]
    read = client.request("POST", f"{v2_session_path(restored['session']['id'])}/fs/read", json={"path": "s.txt"})
    assert read.content == b"saved"
    deleted = client.request("DELETE", f"/v2/sandboxes/snapshots/{snapshot['id']}")
    assert deleted.json()["snapshot"]["status"] == "deleted"
    assert client.request("POST", "/v3/sandboxes", json={
        "projectId": PROJECT_ID, "source": {"type": "snapshot", "snapshotId": snapshot["id"]}}).status_code == 404


def test_persistent_sandbox_resumes_from_its_automatic_snapshot(client):
    created = client.create_sandbox(name="wire-persistent", persistent=True)
    path = v2_session_path(created["session"]["id"])
    client.request("POST", f"{path}/fs/write", content=gzip_tar({"vercel/sandbox/p.txt": b"persisted"}),
                   headers={"content-type": "application/gzip", "x-cwd": "/"})
    stopped = client.request("POST", f"{path}/stop").json()
    assert stopped["snapshot"]["sourceSessionId"] == created["session"]["id"]
    assert stopped["sandbox"]["currentSnapshotId"] == stopped["snapshot"]["id"]
    not_resumed = client.request("GET", "/v2/sandboxes/wire-persistent").json()
    assert not_resumed["session"]["status"] == "stopped"
    resumed = client.request("GET", "/v2/sandboxes/wire-persistent", params={"resume": "true"}).json()
    assert resumed["resumed"] is True and resumed["session"]["id"] != created["session"]["id"]
    read = client.request("POST", f"{v2_session_path(resumed['session']['id'])}/fs/read", json={"path": "p.txt"})
    assert read.content == b"persisted"
    again = client.request("GET", "/v2/sandboxes/wire-persistent", params={"resume": "true"}).json()
    assert again["resumed"] is False and again["session"]["id"] == resumed["session"]["id"]


def test_delete_stops_and_forgets_the_sandbox(client):
    created = client.create_sandbox(name="wire-delete")
    answer = client.request("DELETE", "/v2/sandboxes/wire-delete", params={"projectId": PROJECT_ID})
    assert answer.status_code == 200 and answer.json()["sandbox"]["name"] == "wire-delete"
    assert client.request("GET", "/v2/sandboxes/wire-delete").status_code == 404
    assert client.request("GET", v2_session_path(created["session"]["id"])).json()["session"]["status"] == "stopped"


def test_list_sandboxes_filters_by_prefix_and_tag(client):
    client.create_sandbox(name="list-a", tags={"kind": "x"})
    client.create_sandbox(name="list-b", tags={"kind": "y"})
    names = [entry["name"] for entry in client.request(
        "GET", "/v2/sandboxes", params={"project": PROJECT_ID, "namePrefix": "list-"}).json()["sandboxes"]]
    assert sorted(names) == ["list-a", "list-b"]
    tagged = client.request("GET", "/v2/sandboxes", params={"namePrefix": "list-", "tags": "kind:y"}).json()
    assert [entry["name"] for entry in tagged["sandboxes"]] == ["list-b"]
    assert tagged["pagination"] == {"count": 1, "next": None}


def test_network_policy_is_recorded_and_answered_in_the_legacy_shape(server, client, session):
    answer = client.request("POST", f"{session['path']}/network-policy",
                            json={"allow": ["github.com"], "subnets": {"deny": ["10.0.0.0/8"]}})
    assert answer.json()["session"]["networkPolicy"] == {"mode": "custom", "allowedDomains": ["github.com"],
                                                         "deniedCIDRs": ["10.0.0.0/8"]}
    assert server.admin_session(session["session"]["id"])["networkPolicyRequested"]["allow"] == ["github.com"]


# --- timeouts on the test clock --------------------------------------------------------------------------------------


def test_the_session_stops_at_its_deadline_and_extend_timeout_moves_it(own_server):
    client = RawVercelClient(own_server)
    created = client.create_sandbox(timeout=60_000)
    path = v2_session_path(created["session"]["id"])
    command = client.start_command(path, "sleep", ["300"])
    own_server.advance_clock(50)
    client.request("POST", f"{path}/extend-timeout", json={"duration": 30_000})
    own_server.advance_clock(20)
    assert client.request("GET", path).json()["session"]["status"] == "running"
    own_server.advance_clock(25)
    assert client.request("GET", path).json()["session"]["status"] == "stopped"
    assert client.request("GET", f"{path}/cmd/{command['id']}/logs").status_code == 410
    deadline = time.time() + 5
    while own_server.admin_session(created["session"]["id"])["commands"][0]["exitCode"] is None:
        assert time.time() < deadline, "the stop did not kill the running command"
        time.sleep(0.05)
    assert own_server.admin_session(created["session"]["id"])["commands"][0]["exitCode"] == 137


# --- v1 ------------------------------------------------------------------------------------------------------------


def test_v1_sandbox_runs_commands_with_sandbox_ids_and_its_own_kill_path(client):
    created = client.request("POST", "/v1/sandboxes", json={"projectId": PROJECT_ID, "ports": [3000]}).json()
    sandbox = created["sandbox"]
    assert sandbox["id"].startswith("sbx_") and sandbox["status"] == "running" and "session" not in created
    assert created["routes"][0]["port"] == 3000
    path = v1_sandbox_path(sandbox["id"])
    result = client.stream("POST", f"{path}/cmd", json={"command": "echo", "args": ["v1"], "wait": True})
    assert len(result.lines) == 2 and result.lines[1]["command"]["exitCode"] == 0
    assert result.lines[0]["command"]["sandboxId"] == sandbox["id"] and "sessionId" not in result.lines[0]["command"]
    logs = client.stream("GET", f"{path}/cmd/{result.lines[0]['command']['id']}/logs")
    assert logs.lines == [{"stream": "stdout", "data": "v1\n"}]
    sleeper = client.start_command(path, "sleep", ["30"])
    assert client.request("POST", f"{path}/cmd/{sleeper['id']}/kill", json={"signal": 9}).status_code == 404
    assert client.request("POST", f"{path}/{sleeper['id']}/kill", json={"signal": 9}).status_code == 200
    waited = client.request("GET", f"{path}/cmd/{sleeper['id']}", params={"wait": "true"}).json()
    assert waited["command"]["exitCode"] == 137
    # The generations are kept apart.
    assert client.request("GET", v2_session_path(sandbox["id"])).status_code == 404
    extended = client.request("POST", f"{path}/extend-timeout", json={"duration": 1000}).json()
    assert extended["sandbox"]["timeout"] == sandbox["timeout"] + 1000
    snapshot = client.request("POST", f"{path}/snapshot").json()
    assert snapshot["snapshot"]["sourceSandboxId"] == sandbox["id"] and snapshot["sandbox"]["status"] == "stopped"
    assert client.request("GET", path).json()["sandbox"]["status"] == "stopped"
    listed = client.request("GET", "/v1/sandboxes", params={"project": PROJECT_ID}).json()
    assert sandbox["id"] in [entry["id"] for entry in listed["sandboxes"]]
    assert set(listed["pagination"]) == {"count", "next", "prev"}
