"""Byte-level checks of the E2B fake's wire format, done by hand the way the Rust driver will speak it (cloud-apis.md 1.2-1.5)."""

from __future__ import annotations

import base64
import hashlib
import json
import time

import httpx

from fake_e2b_client import RawEnvdClient, shell_start_request, wait_until

START = "process.Process/Start"
CONNECT = "process.Process/Connect"


def test_start_stream_should_frame_start_data_end_and_a_final_empty_end_of_stream(raw_envd):
    result = raw_envd.stream(START, shell_start_request("printf hi"))
    assert result.status == 200
    assert result.content_type == "application/connect+json"
    assert result.transport_error is None
    assert [frame.flags for frame in result.frames] == [0, 0, 0, 2]
    start, data, end = result.events
    assert list(start) == ["start"] and start["start"]["pid"] > 0
    assert data == {"data": {"stdout": base64.b64encode(b"hi").decode()}}
    # protojson omits zero values: exit code 0 never appears on the wire.
    assert end == {"end": {"exited": True, "status": "exit status 0"}}
    assert result.frames[-1].raw == b"\x02\x00\x00\x00\x02{}"


def test_end_event_should_carry_a_nonzero_exit_code(raw_envd):
    result = raw_envd.stream(START, shell_start_request("echo oops >&2; exit 7"))
    assert result.output("stderr") == b"oops\n"
    assert result.end_event == {"exitCode": 7, "exited": True, "status": "exit status 7"}
    assert result.end_of_stream == {}


def test_end_event_of_a_killed_process_should_omit_exited(raw_envd):
    result = raw_envd.stream(START, shell_start_request("kill -9 $$"))
    assert result.end_event == {"exitCode": -1, "status": "signal: killed"}


def test_keepalive_events_should_fill_silence_at_the_requested_interval(raw_envd):
    result = raw_envd.stream(START, shell_start_request("sleep 1.3; echo done"),
                             extra_headers={"Keepalive-Ping-Interval": "0.4"})
    kinds = [next(iter(event)) for event in result.events]
    assert kinds[0] == "start" and kinds[-1] == "end"
    assert kinds.count("keepalive") >= 2
    assert result.output() == b"done\n"


def test_connect_to_an_unknown_pid_should_end_the_stream_with_not_found(raw_envd):
    result = raw_envd.stream(CONNECT, {"process": {"pid": 999999}})
    assert result.status == 200
    assert result.events == []
    assert result.end_of_stream["error"]["code"] == "not_found"


def test_unary_rpc_errors_should_map_connect_codes_to_http_statuses(raw_envd):
    missing = raw_envd.unary("process.Process/SendSignal", {"process": {"pid": 999999}, "signal": "SIGNAL_SIGKILL"})
    assert missing.status_code == 404
    assert missing.json()["code"] == "not_found"
    unknown_field = raw_envd.unary("filesystem.Filesystem/Stat", {"path": "/home/user", "bogus": 1})
    assert unknown_field.status_code == 400
    assert unknown_field.json()["code"] == "invalid_argument"
    wrong_type = raw_envd.post("/process.Process/List", content=b"{}",
                               headers={"Content-Type": "application/proto"})
    assert wrong_type.status_code == 415


def test_stdin_should_default_to_enabled_when_the_field_is_absent(raw_envd):
    # envd treats an absent proto3 optional `stdin` as true; the pipe stays open, so `cat` waits for input.
    absent = raw_envd.stream(START, shell_start_request("cat", stdin=None), stop_after_frames=1)
    send = raw_envd.unary("process.Process/SendInput",
                          {"process": {"pid": absent.pid}, "input": {"stdin": base64.b64encode(b"x").decode()}})
    assert send.status_code == 200
    raw_envd.unary("process.Process/SendSignal", {"process": {"pid": absent.pid}, "signal": "SIGNAL_SIGKILL"})
    disabled = raw_envd.stream(START, shell_start_request("sleep 5", stdin=False), stop_after_frames=1)
    refused = raw_envd.unary("process.Process/SendInput",
                             {"process": {"pid": disabled.pid}, "input": {"stdin": "eA=="}})
    assert (refused.status_code, refused.json()["code"]) == (500, "internal")
    raw_envd.unary("process.Process/SendSignal", {"process": {"pid": disabled.pid}, "signal": 9})


def test_process_list_should_report_config_and_tag(raw_envd):
    started = raw_envd.stream(START, {**shell_start_request("sleep 5"), "tag": "my-tag"}, stop_after_frames=1)
    listed = raw_envd.unary("process.Process/List", {}).json()["processes"]
    mine = [process for process in listed if process["pid"] == started.pid]
    assert mine == [{"config": {"cmd": "/bin/bash", "args": ["-l", "-c", "sleep 5"], "envs": {}},
                     "pid": started.pid, "tag": "my-tag"}]
    killed = raw_envd.unary("process.Process/SendSignal", {"process": {"tag": "my-tag"}, "signal": "SIGNAL_SIGTERM"})
    assert killed.status_code == 200


def test_connect_timeout_header_should_bound_the_process_lifetime(raw_envd):
    started = time.monotonic()
    result = raw_envd.stream(START, shell_start_request("sleep 30"), extra_headers={"Connect-Timeout-Ms": "500"})
    assert time.monotonic() - started < 5
    assert result.end_of_stream["error"]["code"] == "deadline_exceeded"
    listed = raw_envd.unary("process.Process/List", {}).json()["processes"]
    assert result.pid not in [process["pid"] for process in listed]


def test_multipart_upload_should_write_several_files_and_resolve_relative_paths(raw_envd):
    files = [("file", ("/tmp/one.txt", b"1")), ("file", ("relative/two.txt", b"22"))]
    response = raw_envd.post("/files", params={"username": "user"}, files=files)
    assert response.status_code == 200
    assert response.json() == [{"path": "/tmp/one.txt", "name": "one.txt", "type": "file"},
                               {"path": "/home/user/relative/two.txt", "name": "two.txt", "type": "file"}]
    assert raw_envd.get("/files", params={"path": "relative/two.txt"}).content == b"22"


def test_upload_with_the_same_path_twice_should_be_rejected(raw_envd):
    files = [("file", ("/tmp/same.txt", b"1")), ("file", ("/tmp/same.txt", b"2"))]
    assert raw_envd.post("/files", files=files).status_code == 400


def test_octet_stream_upload_should_accept_gzip(raw_envd):
    import gzip

    response = raw_envd.post("/files", params={"path": "/home/user/z.txt"}, content=gzip.compress(b"zipped"),
                             headers={"Content-Type": "application/octet-stream", "Content-Encoding": "gzip"})
    assert response.status_code == 200
    assert raw_envd.get("/files", params={"path": "z.txt"}).content == b"zipped"


def test_download_errors_should_be_404_for_missing_and_400_for_directories(raw_envd):
    missing = raw_envd.get("/files", params={"path": "/home/user/nope"})
    assert (missing.status_code, missing.json()["code"]) == (404, 404)
    directory = raw_envd.get("/files", params={"path": "/home/user"})
    assert directory.status_code == 400


def test_paths_should_never_escape_the_private_directory(raw_envd, server):
    raw_envd.post("/files", files=[("file", ("/../../../escape.txt", b"contained"))])
    host_root = server.admin_sandbox(raw_envd.sandbox_id)["hostRoot"]
    assert open(f"{host_root}/escape.txt", "rb").read() == b"contained"


def test_list_dir_entries_should_use_protojson_field_forms(raw_envd):
    raw_envd.post("/files", files=[("file", ("/home/user/d/f.txt", b"abc")), ("file", ("/home/user/d/e/g", b""))])
    entries = raw_envd.unary("filesystem.Filesystem/ListDir", {"path": "/home/user/d", "depth": 2}).json()["entries"]
    by_path = {entry["path"]: entry for entry in entries}
    assert set(by_path) == {"/home/user/d/e", "/home/user/d/e/g", "/home/user/d/f.txt"}
    assert by_path["/home/user/d/f.txt"]["size"] == "3"  # int64 is a JSON string
    assert "size" not in by_path["/home/user/d/e/g"]  # zero omitted
    assert by_path["/home/user/d/e"]["type"] == "FILE_TYPE_DIRECTORY"
    assert by_path["/home/user/d/f.txt"]["modifiedTime"].endswith("Z")


def test_signed_file_url_should_work_without_the_access_token(raw_envd):
    path, username = "/home/user/signed.txt", "user"
    raw_envd.post("/files", files=[("file", (path, b"signed"))])
    digest = hashlib.sha256(f"{path}:read:{username}:{raw_envd.access_token}".encode()).digest()
    signature = "v1_" + base64.b64encode(digest).decode().rstrip("=")
    signed = raw_envd.get("/files", params={"path": path, "username": username, "signature": signature},
                          with_token=False)
    assert signed.content == b"signed"
    forged = raw_envd.get("/files", params={"path": path, "username": username, "signature": "v1_forged"},
                          with_token=False)
    assert forged.status_code == 401


def test_sdk_start_request_should_send_explicit_stdin_false_and_the_documented_headers(sandbox, server):
    before = server.next_request_sequence()
    sandbox.commands.run("true")
    (start,) = server.requests_since(before, plane="envd")
    assert start["rpcMessage"]["stdin"] is False
    assert start["headers"]["Keepalive-Ping-Interval"] == "50"
    assert start["headers"]["Connect-Timeout-Ms"] == "60000"
    assert start["headers"]["Content-Type"] == "application/connect+json"


def control(server, method: str, path: str, headers: dict | None = None, **kwargs) -> httpx.Response:
    return httpx.request(method, f"{server.url}{path}", headers={"X-API-Key": server.api_key, **(headers or {})},
                         **kwargs)


def test_control_create_should_answer_201_on_both_v1_and_v2_routes(server):
    for route in ("/sandboxes", "/v2/sandboxes"):
        created = control(server, "POST", route, json={"templateID": "base", "timeout": 30})
        assert created.status_code == 201
        body = created.json()
        assert {"templateID", "sandboxID", "clientID", "envdVersion", "envdAccessToken"} <= set(body)
        assert control(server, "DELETE", f"/sandboxes/{body['sandboxID']}").status_code == 204
        assert control(server, "DELETE", f"/sandboxes/{body['sandboxID']}").status_code == 404
    assert control(server, "POST", "/v2/sandboxes", json={"timeout": 30}).status_code == 400


def test_control_list_should_filter_by_metadata_and_paginate(server):
    label = str(time.time_ns())
    ids = [control(server, "POST", "/sandboxes", json={"templateID": "base", "metadata": {"run": label}}).json()[
               "sandboxID"] for _ in range(3)]
    first = control(server, "GET", "/v2/sandboxes", params={"metadata": f"run={label}", "limit": 2})
    assert first.status_code == 200 and len(first.json()) == 2
    assert int(first.headers["X-Total-Running"]) >= 3
    second = control(server, "GET", "/v2/sandboxes",
                     params={"metadata": f"run={label}", "limit": 2, "nextToken": first.headers["X-Next-Token"]})
    assert "X-Next-Token" not in second.headers
    assert sorted(item["sandboxID"] for item in first.json() + second.json()) == sorted(ids)
    for sandbox_id in ids:
        control(server, "DELETE", f"/sandboxes/{sandbox_id}")


def test_control_pause_resume_and_connect_should_use_the_documented_statuses(server):
    sandbox_id = control(server, "POST", "/sandboxes", json={"templateID": "base"}).json()["sandboxID"]
    try:
        assert control(server, "POST", f"/sandboxes/{sandbox_id}/pause", json={"memory": True}).status_code == 204
        assert control(server, "POST", f"/sandboxes/{sandbox_id}/pause").status_code == 409
        listed = control(server, "GET", "/v2/sandboxes", params={"state": "paused"}).json()
        assert sandbox_id in [item["sandboxID"] for item in listed]
        assert control(server, "POST", f"/sandboxes/{sandbox_id}/connect", json={"timeout": 30}).status_code == 201
        assert control(server, "POST", f"/sandboxes/{sandbox_id}/connect", json={"timeout": 30}).status_code == 200
        assert control(server, "POST", f"/sandboxes/{sandbox_id}/resume", json={"timeout": 30}).status_code == 409
        control(server, "POST", f"/sandboxes/{sandbox_id}/pause")
        assert control(server, "POST", f"/sandboxes/{sandbox_id}/resume", json={"timeout": 30}).status_code == 201
        assert control(server, "GET", f"/sandboxes/{sandbox_id}").json()["state"] == "running"
    finally:
        control(server, "DELETE", f"/sandboxes/{sandbox_id}")


def test_paused_sandbox_processes_should_be_frozen(server):
    created = control(server, "POST", "/sandboxes", json={"templateID": "base"}).json()
    raw = RawEnvdClient(server, created["sandboxID"], created["envdAccessToken"])
    try:
        pid = raw.stream(START, shell_start_request("sleep 60"), stop_after_frames=1).pid
        control(server, "POST", f"/sandboxes/{created['sandboxID']}/pause")
        wait_until(lambda: open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "T")
        assert raw.get("/health").status_code == 502
        control(server, "POST", f"/sandboxes/{created['sandboxID']}/connect", json={"timeout": 30})
        wait_until(lambda: open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "S")
    finally:
        control(server, "DELETE", f"/sandboxes/{created['sandboxID']}")


def test_insecure_sandbox_should_need_no_access_token(server):
    created = control(server, "POST", "/sandboxes", json={"templateID": "base", "secure": False}).json()
    assert created["envdAccessToken"] is None
    raw = RawEnvdClient(server, created["sandboxID"], None)
    assert raw.unary("process.Process/List", {}).status_code == 200
    control(server, "DELETE", f"/sandboxes/{created['sandboxID']}")


def test_request_log_should_count_requests_per_plane(server, raw_envd):
    before = server.next_request_sequence()
    raw_envd.get("/health")
    control(server, "GET", f"/sandboxes/{raw_envd.sandbox_id}")
    logged = server.requests_since(before)
    assert [(entry["plane"], entry["path"], entry["status"]) for entry in logged] == [
        ("envd", "/health", 204), ("control", f"/sandboxes/{raw_envd.sandbox_id}", 200)]
    # Credentials never reach the log.
    assert server.api_key not in json.dumps(logged)


def test_unimplemented_rpcs_should_say_so(raw_envd):
    stream_input = raw_envd.post("/process.Process/StreamInput", content=b"",
                                 headers={"Content-Type": "application/connect+json"})
    assert (stream_input.status_code, stream_input.json()["code"]) == (501, "unimplemented")


def test_watch_dir_stream_should_report_create_write_and_remove(raw_envd):
    import threading

    def touch_files() -> None:
        time.sleep(0.4)
        raw_envd.post("/files", files=[("file", ("/home/user/watched/sub/new.txt", b"data"))])
        time.sleep(0.4)
        raw_envd.unary("filesystem.Filesystem/Remove", {"path": "/home/user/watched/sub/new.txt"})

    raw_envd.unary("filesystem.Filesystem/MakeDir", {"path": "/home/user/watched"})
    threading.Thread(target=touch_files, daemon=True).start()
    result = raw_envd.stream("filesystem.Filesystem/WatchDir",
                             {"path": "/home/user/watched", "recursive": True, "includeEntry": True},
                             extra_headers={"Connect-Timeout-Ms": "15000"}, stop_after_frames=5)
    assert result.frames[0].payload == {"start": {}}
    events = [frame.payload["filesystem"] for frame in result.frames if "filesystem" in frame.payload]
    assert [(event["name"], event["type"]) for event in events] == [
        ("sub", "EVENT_TYPE_CREATE"), ("sub/new.txt", "EVENT_TYPE_CREATE"), ("sub/new.txt", "EVENT_TYPE_WRITE"),
        ("sub/new.txt", "EVENT_TYPE_REMOVE")]
    assert events[1]["entry"]["path"] == "/home/user/watched/sub/new.txt"


def test_other_ports_should_get_the_proxy_port_not_open_error(raw_envd):
    response = httpx.get(f"{raw_envd.server.url}/", headers=raw_envd.headers({"E2b-Sandbox-Port": "3000"}))
    assert response.status_code == 502
    assert response.json() == {"sandboxId": raw_envd.sandbox_id, "port": 3000, "code": 502,
                               "message": "The sandbox is running but port is not open"}


def test_host_form_routing_should_reach_envd_without_routing_headers(raw_envd):
    response = httpx.post(f"{raw_envd.server.url}/process.Process/List", content=b"{}",
                          headers={"Host": f"49983-{raw_envd.sandbox_id}.e2b.app", "Content-Type": "application/json",
                                   "X-Access-Token": raw_envd.access_token})
    assert response.status_code == 200
    assert "processes" in response.json() or response.json() == {}


def test_create_with_a_repeated_idempotency_key_should_return_the_same_sandbox(server):
    headers = {"Idempotency-Key": f"key-{time.time_ns()}"}
    first = control(server, "POST", "/v2/sandboxes", json={"templateID": "base"}, headers=headers).json()
    second = control(server, "POST", "/v2/sandboxes", json={"templateID": "base"}, headers=headers).json()
    assert first["sandboxID"] == second["sandboxID"]
    control(server, "DELETE", f"/sandboxes/{first['sandboxID']}")


def test_sigterm_should_end_the_process_with_status_terminated(raw_envd):
    started = raw_envd.stream(START, shell_start_request("sleep 30"), stop_after_frames=1)
    assert raw_envd.unary("process.Process/SendSignal",
                          {"process": {"pid": started.pid}, "signal": "SIGNAL_SIGTERM"}).status_code == 200
    # The unread end event stays buffered, so re-attaching still reports how the process ended.
    reattached = raw_envd.stream(CONNECT, {"process": {"pid": started.pid}})
    assert reattached.end_event == {"exitCode": -1, "status": "signal: terminated"}


def test_auto_pause_sandbox_should_pause_instead_of_dying_at_its_timeout(server):
    created = control(server, "POST", "/sandboxes", json={"templateID": "base", "timeout": 1, "autoPause": True})
    sandbox_id = created.json()["sandboxID"]
    try:
        wait_until(lambda: control(server, "GET", f"/sandboxes/{sandbox_id}").json()["state"] == "paused")
        assert control(server, "GET", f"/sandboxes/{sandbox_id}").json()["lifecycle"]["onTimeout"] == "pause"
    finally:
        control(server, "DELETE", f"/sandboxes/{sandbox_id}")


def test_deleting_a_sandbox_should_kill_its_processes(server):
    created = control(server, "POST", "/sandboxes", json={"templateID": "base"}).json()
    raw = RawEnvdClient(server, created["sandboxID"], created["envdAccessToken"])
    pid = raw.stream(START, shell_start_request("sleep 60"), stop_after_frames=1).pid
    assert control(server, "DELETE", f"/sandboxes/{created['sandboxID']}").status_code == 204

    def process_is_gone() -> bool:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            return True

    wait_until(process_is_gone)


def test_upload_onto_a_directory_or_below_a_file_should_be_a_400_naming_the_sandbox_path(raw_envd):
    onto_directory = raw_envd.post("/files", files=[("file", ("/home/user", b"x"))])
    assert onto_directory.status_code == 400
    assert "'/home/user'" in onto_directory.json()["message"]
    raw_envd.post("/files", files=[("file", ("/home/user/plain", b"x"))])
    below_file = raw_envd.post("/files", files=[("file", ("/home/user/plain/child", b"x"))])
    assert below_file.status_code == 400
