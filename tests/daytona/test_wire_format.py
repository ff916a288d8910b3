"""Raw wire details of the Daytona fake that the SDK hides: frames and markers, bytes, multipart shapes, error bodies, auth."""

from __future__ import annotations

import asyncio
import json
import os
import re

import httpx
from python_multipart.multipart import MultipartParser, parse_options_header

from fake_daytona_client import (
    STDERR_MARKER,
    STDOUT_MARKER,
    RawDaytonaClient,
    demux,
    process_alive,
    wait_until,
)

INVALID_UTF8 = b"\xff\xfe\xc3("


def test_logs_websocket_should_send_marked_binary_frames_and_close_with_1000(raw, raw_sandbox):
    sandbox_id = raw_sandbox["id"]
    command_id = raw.start_command(sandbox_id, "echo out-1; echo err-1 >&2; sleep 0.3; echo out-2")
    stream = raw.follow_logs(sandbox_id, "run", command_id)
    assert stream.closed_cleanly, stream
    assert stream.data.startswith(STDOUT_MARKER) or stream.data.startswith(STDERR_MARKER)
    assert demux(stream.data) == (b"out-1\nout-2\n", b"err-1\n")
    assert all(len(frame) <= 1024 for frame in stream.frames)
    assert raw.wait_for_exit_code(sandbox_id, "run", command_id) == 0


def test_markers_split_across_frames_should_still_demultiplex(server, raw, raw_sandbox, daytona):
    sandbox_id = raw_sandbox["id"]
    server.set_faults(sandboxId=sandbox_id, logsFrameBytes=2)
    command_id = raw.start_command(sandbox_id, "printf abc; printf def >&2; printf ghi")
    raw.wait_for_exit_code(sandbox_id, "run", command_id)
    stream = raw.follow_logs(sandbox_id, "run", command_id)
    assert stream.closed_cleanly
    assert all(len(frame) <= 2 for frame in stream.frames)
    # Some marker really straddles two frames.
    assert any(frame.endswith(b"\x01") or frame.endswith(b"\x02") for frame in stream.frames[:-1])
    # Each stream's output is labelled line by line, and a last line without a newline gets one, as in the daemon.
    assert demux(stream.data) == (b"abcghi\n", b"def\n")
    # The official SDK's demultiplexer copes too.
    sandbox = daytona.get(sandbox_id)
    stdout, stderr = [], []
    asyncio.run(sandbox.process.get_session_command_logs_async("run", command_id, stdout.append, stderr.append))
    assert ("".join(stdout), "".join(stderr)) == ("abcghi\n", "def\n")


def test_invalid_utf8_should_survive_in_frames_and_plain_logs(raw, raw_sandbox):
    sandbox_id = raw_sandbox["id"]
    command_id = raw.start_command(sandbox_id, r"printf 'a\377\376\303(b\n'; sleep 0.2; printf '\377\n' >&2")
    raw.wait_for_exit_code(sandbox_id, "run", command_id)
    stream = raw.follow_logs(sandbox_id, "run", command_id)
    assert stream.data == STDOUT_MARKER + b"a" + INVALID_UTF8 + b"b\n" + STDERR_MARKER + b"\xff\n"
    # Without an SDK version (and no opt-in) output is combined: raw bytes, no markers, text/plain logs.
    old_client = RawDaytonaClient(raw.server, sdk_version=None)
    unsplit = old_client.follow_logs(sandbox_id, "run", command_id)
    assert unsplit.data == b"a" + INVALID_UTF8 + b"b\n\xff\n"
    plain = old_client.toolbox("GET", sandbox_id, f"/process/session/run/command/{command_id}/logs")
    assert plain.headers["content-type"].startswith("text/plain")
    assert plain.content == b"a" + INVALID_UTF8 + b"b\n\xff\n"
    # SDK >= 0.167.0: JSON whose `output` is the raw log, markers included; invalid bytes become U+FFFD.
    split = raw.toolbox("GET", sandbox_id, f"/process/session/run/command/{command_id}/logs").json()
    assert split["stdout"] == (b"a" + INVALID_UTF8 + b"b\n").decode("utf-8", "replace")
    assert split["stderr"] == "\ufffd\n"
    assert split["output"] == stream.data.decode("utf-8", "replace")


def test_split_output_header_or_websocket_subprotocol_should_enable_markers(raw, raw_sandbox):
    sandbox_id = raw_sandbox["id"]
    command_id = raw.start_command(sandbox_id, "echo o; echo e >&2")
    raw.wait_for_exit_code(sandbox_id, "run", command_id)
    by_header = RawDaytonaClient(raw.server, sdk_version=None)
    url = by_header.logs_url(sandbox_id, "run", command_id)
    from fake_daytona_client import read_log_websocket

    stream = asyncio.run(read_log_websocket(url, by_header.headers({"X-Daytona-Split-Output": "true"}), 10))
    assert demux(stream.data) == (b"o\n", b"e\n")
    stream = asyncio.run(read_log_websocket(url, by_header.headers(
        {"Sec-WebSocket-Protocol": "X-Daytona-SDK-Version~0.226.1"}), 10))
    assert demux(stream.data) == (b"o\n", b"e\n")
    # SDKs older than 0.27.0 get combined output; between 0.27.0 and 0.167.0, markers but plain-text logs.
    ancient = RawDaytonaClient(raw.server, sdk_version="0.26.0")
    assert STDOUT_MARKER not in ancient.follow_logs(sandbox_id, "run", command_id).data
    middle = RawDaytonaClient(raw.server, sdk_version="0.100.0")
    middle_logs = middle.toolbox("GET", sandbox_id, f"/process/session/run/command/{command_id}/logs")
    assert middle_logs.headers["content-type"].startswith("text/plain")
    assert demux(middle_logs.content) == (b"o\n", b"e\n")


def test_exec_answers_202_for_run_async_and_200_with_output_when_synchronous(raw, raw_sandbox):
    sandbox_id = raw_sandbox["id"]
    assert raw.toolbox("POST", sandbox_id, "/process/session", json={"sessionId": "s"}).status_code == 201
    assert raw.toolbox("POST", sandbox_id, "/process/session", json={"sessionId": "s"}).status_code == 409
    started = raw.toolbox("POST", sandbox_id, "/process/session/s/exec", json={"command": "sleep 0.5", "async": True})
    assert started.status_code == 202 and set(started.json()) == {"cmdId"}
    running = raw.toolbox("GET", sandbox_id, f"/process/session/s/command/{started.json()['cmdId']}").json()
    assert "exitCode" not in running and running["command"] == "sleep 0.5"
    synchronous = raw.toolbox("POST", sandbox_id, "/process/session/s/exec",
                              json={"command": "echo x; sleep 0.1; echo y >&2; (exit 3)"})
    assert synchronous.status_code == 200
    body = synchronous.json()
    assert (body["exitCode"], body["stdout"], body["stderr"]) == (3, "x\n", "y\n")
    # As the daemon does for new SDKs, `output` is the raw log with its markers.
    assert body["output"] == "\x01\x01\x01x\n\x02\x02\x02y\n"
    # Commands of one session run one after another: the second waited for the first.
    assert raw.toolbox("GET", sandbox_id, f"/process/session/s/command/{started.json()['cmdId']}").json()[
        "exitCode"] == 0


def test_stdin_should_be_at_end_of_file_for_synchronous_commands(raw, raw_sandbox):
    sandbox_id = raw_sandbox["id"]
    assert raw.toolbox("POST", sandbox_id, "/process/session", json={"sessionId": "s"}).status_code == 201
    body = raw.toolbox("POST", sandbox_id, "/process/session/s/exec", json={"command": "cat; echo after"},
                       timeout=10).json()
    assert (body["exitCode"], body["stdout"]) == (0, "after\n")


def test_execute_should_pipe_the_command_to_a_shell_and_report_minus_one_for_a_signal(raw, raw_sandbox):
    sandbox_id = raw_sandbox["id"]
    result = raw.toolbox("POST", sandbox_id, "/process/execute", json={"command": "kill -9 $$"}).json()
    assert result["exitCode"] == -1
    bad = raw.toolbox("POST", sandbox_id, "/process/execute", json={"command": "true", "envs": {"1BAD": "x"}})
    assert bad.status_code == 400


def test_execute_should_time_out_with_408_and_kill_the_command(raw, raw_sandbox):
    sandbox_id = raw_sandbox["id"]
    timed_out = raw.toolbox("POST", sandbox_id, "/process/execute",
                            json={"command": "echo $$ > pid; exec sleep 30", "timeout": 1})
    assert timed_out.status_code == 408
    assert (timed_out.json()["code"], timed_out.json()["message"]) == (
        "REQUEST_TIMEOUT", "request timeout: command execution timeout")
    pid = int(raw.toolbox("GET", sandbox_id, "/files/download", params={"path": "pid"}).content)
    wait_until(lambda: not process_alive(pid), 5)


def test_input_echo_should_follow_suppress_input_echo_and_finished_commands_answer_410(raw, raw_sandbox):
    sandbox_id = raw_sandbox["id"]
    command_id = raw.start_command(sandbox_id, "read line; echo done:$line")
    # The daemon adds the newline `read` needs.
    assert raw.toolbox("POST", sandbox_id, f"/process/session/run/command/{command_id}/input",
                       json={"data": "hi"}).status_code == 204
    raw.wait_for_exit_code(sandbox_id, "run", command_id)
    logs = raw.toolbox("GET", sandbox_id, f"/process/session/run/command/{command_id}/logs").json()
    # The echo and the command's own output are appended by different writers, so their order is not fixed.
    assert sorted(logs["stdout"].splitlines()) == ["done:hi", "hi"]
    late = raw.toolbox("POST", sandbox_id, f"/process/session/run/command/{command_id}/input", json={"data": "x"})
    assert (late.status_code, late.json()["code"]) == (410, "GONE")
    assert late.json()["message"] == "gone: command has already completed with exit code 0"


def parse_multipart(content_type: str, body: bytes) -> list[tuple[dict, bytes]]:
    _, options = parse_options_header(content_type)
    parts: list[tuple[dict, bytes]] = []
    state = {"headers": {}, "field": b"", "value": b"", "data": b""}

    def on_part_begin():
        state.update(headers={}, data=b"")

    def on_header_field(data, start, end):
        state["field"] += data[start:end]

    def on_header_value(data, start, end):
        state["value"] += data[start:end]

    def on_header_end():
        state["headers"][state["field"].decode().lower()] = state["value"].decode("latin-1")
        state.update(field=b"", value=b"")

    def on_part_data(data, start, end):
        state["data"] += data[start:end]

    def on_part_end():
        parts.append((state["headers"], state["data"]))

    parser = MultipartParser(options[b"boundary"], callbacks={
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_part_data": on_part_data, "on_part_end": on_part_end})
    parser.write(body)
    parser.finalize()
    return parts


def test_bulk_download_should_answer_file_and_error_parts_in_request_order(raw, raw_sandbox):
    sandbox_id = raw_sandbox["id"]
    upload = raw.toolbox("POST", sandbox_id, "/files/bulk-upload", files=[
        ("files[x].path", (None, "/home/daytona/d/one.bin")), ("files[x].file", ("blob", b"\x00\xff1")),
        ("files[7].path", (None, "d/\u00e9t\u00e9.txt")), ("files[7].file", ("blob", b"summer")),
    ])
    assert upload.status_code == 200
    # Paths are reported as sent, in part order.
    assert upload.json()["files"] == [
        {"path": "/home/daytona/d/one.bin", "bytes": 3}, {"path": "d/\u00e9t\u00e9.txt", "bytes": 6}]
    response = raw.toolbox("POST", sandbox_id, "/files/bulk-download",
                           json={"paths": ["d/one.bin", "/home/daytona/d/missing", "d/\u00e9t\u00e9.txt", "d"]})
    assert response.headers["content-type"] == "multipart/form-data; boundary=DAYTONA-FILE-BOUNDARY"
    parts = parse_multipart(response.headers["content-type"], response.content)
    assert [headers["content-disposition"].split(";")[1].strip() for headers, _ in parts] == [
        'name="file"', 'name="error"', 'name="file"', 'name="error"']
    assert parts[0][0]["content-disposition"] == 'form-data; name="file"; filename="d/one.bin"; filename*=utf-8\'\'d%2Fone.bin'
    assert parts[0][1] == b"\x00\xff1" and parts[0][0]["content-length"] == "3"
    missing = json.loads(parts[1][1])
    assert (missing["statusCode"], missing["code"], missing["path"]) == (404, "FILE_NOT_FOUND", "/home/daytona/d/missing")
    assert parts[1][0]["content-type"] == "application/json; charset=utf-8"
    assert "filename*=utf-8''d%2F%C3%A9t%C3%A9.txt" in parts[2][0]["content-disposition"]
    assert parts[2][1] == b"summer" and parts[2][0]["content-type"] == "text/plain"
    directory = json.loads(parts[3][1])
    assert (directory["statusCode"], directory["code"]) == (400, "INVALID_FILE_PATH")


def test_bulk_upload_should_need_each_path_part_before_its_file_part(raw, raw_sandbox):
    response = raw.toolbox("POST", raw_sandbox["id"], "/files/bulk-upload", files=[
        ("files[0].path", (None, "a.txt")), ("files[0].file", ("a", b"a")), ("files[1].file", ("b", b"b")),
        ("files[1].path", (None, "b.txt")), ("files[2].path", (None, " "))])
    assert response.status_code == 400
    assert response.json() == {"errors": ["file[1]: missing .path metadata", "path[2]: empty path"],
                               "files": [{"path": "a.txt", "bytes": 1}]}


def test_paths_should_not_escape_the_sandbox_directory(server, raw, raw_sandbox):
    sandbox_id = raw_sandbox["id"]
    raw.toolbox("POST", sandbox_id, "/files/bulk-upload", files=[
        ("files[0].path", (None, "../../../../../../escape.txt")), ("files[0].file", ("a", b"inside"))])
    host_root = server.admin_sandbox(sandbox_id)["hostRoot"]
    with open(f"{host_root}/escape.txt", "rb") as handle:
        assert handle.read() == b"inside"


def test_file_routes_should_answer_as_the_daemon_does(raw, raw_sandbox):
    sandbox_id = raw_sandbox["id"]
    assert raw.toolbox("POST", sandbox_id, "/files/folder", params={"path": "dir", "mode": "750"}).status_code == 201
    info = raw.toolbox("GET", sandbox_id, "/files/info", params={"path": "dir"}).json()
    assert (info["name"], info["isDir"], info["mode"], info["permissions"]) == ("dir", True, "drwxr-x---", "0750")
    assert info["owner"] == str(os.getuid()) and info["group"] == str(os.getgid())
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)? \+0000 UTC", info["modTime"])
    assert info["modifiedAt"].endswith("Z") and "path" not in info
    # Failures carry the status alone, with an empty body.
    missing = raw.toolbox("GET", sandbox_id, "/files/info", params={"path": "nope"})
    assert (missing.status_code, missing.content) == (404, b"")
    assert raw.toolbox("DELETE", sandbox_id, "/files", params={"path": "dir"}).status_code == 400, "needs recursive"
    raw.toolbox("POST", sandbox_id, "/files/upload", params={"path": "dir/a"}, files={"file": ("a", b"A")})
    raw.toolbox("POST", sandbox_id, "/files/upload", params={"path": "dir/b"}, files={"file": ("b", b"B")})
    # A move never replaces an existing destination, and needs its parent directory.
    assert raw.toolbox("POST", sandbox_id, "/files/move", params={"source": "dir/a", "destination": "dir/b"}
                       ).status_code == 409
    assert raw.toolbox("POST", sandbox_id, "/files/move", params={"source": "dir/a", "destination": "no/such/c"}
                       ).status_code == 404
    assert raw.toolbox("POST", sandbox_id, "/files/move", params={"source": "dir/a", "destination": "dir/c"}
                       ).status_code == 200
    assert [entry["name"] for entry in raw.toolbox("GET", sandbox_id, "/files", params={"path": "dir"}).json()] == [
        "b", "c"]
    assert raw.toolbox("DELETE", sandbox_id, "/files", params={"path": "dir", "recursive": "true"}).status_code == 204


def test_session_errors_should_use_the_daemon_error_body(raw, raw_sandbox):
    sandbox_id = raw_sandbox["id"]
    missing = raw.toolbox("GET", sandbox_id, "/process/session/nope")
    assert missing.status_code == 404
    assert set(missing.json()) == {"statusCode", "message", "code", "timestamp", "path", "method"}
    assert (missing.json()["code"], missing.json()["message"]) == ("NOT_FOUND", "not found: session not found")
    # The exec handler wraps the error, so the middleware's fallback answers 500.
    wrapped = raw.toolbox("POST", sandbox_id, "/process/session/nope/exec", json={"command": "true"})
    assert (wrapped.status_code, wrapped.json()["message"]) == (
        500, "failed to execute command: not found: session not found")


def test_wrong_or_missing_key_should_get_401_that_never_echoes_a_key(server, raw_sandbox):
    secret = "dtn_wrong_secret_value_424242"
    client = RawDaytonaClient(server, api_key=secret)
    for response in (client.api("GET", "/sandbox"), client.toolbox("GET", raw_sandbox["id"], "/files")):
        assert response.status_code == 401
        assert secret not in response.text and server.api_key not in response.text
    anonymous = httpx.get(f"{server.api_url}/sandbox")
    assert anonymous.status_code == 401
    assert server.api_key not in anonymous.text


def test_main_api_errors_should_use_the_nestjs_body(raw):
    response = raw.api("GET", "/sandbox/does-not-exist")
    body = response.json()
    assert response.status_code == 404
    assert set(body) == {"path", "timestamp", "statusCode", "error", "message"}
    assert (body["statusCode"], body["error"]) == (404, "Not Found")


def test_lifecycle_routes_should_answer_as_the_spec_says(raw, raw_sandbox):
    sandbox_id = raw_sandbox["id"]
    assert raw_sandbox["state"] == "started" and raw_sandbox["autoStopInterval"] == 15
    assert raw.api("POST", f"/sandbox/{sandbox_id}/last-activity").status_code == 201
    assert raw.api("POST", f"/sandbox/{sandbox_id}/autostop/0").status_code == 201
    assert raw.api("GET", f"/sandbox/{sandbox_id}").json()["autoStopInterval"] == 0
    assert raw.api("POST", f"/sandbox/{sandbox_id}/archive").status_code == 400
    assert raw.api("POST", f"/sandbox/{sandbox_id}/stop").json()["state"] == "stopped"
    not_started = raw.toolbox("GET", sandbox_id, "/files")
    assert not_started.status_code == 400 and "Is the Sandbox started?" in not_started.json()["message"]
    assert raw.api("POST", f"/sandbox/{sandbox_id}/archive").json()["state"] == "archived"
    assert raw.api("POST", f"/sandbox/{sandbox_id}/start").json()["state"] == "started"
    preview = raw.api("GET", f"/sandbox/{sandbox_id}/ports/8080/preview-url").json()
    assert set(preview) == {"sandboxId", "url", "token"}
    assert raw.api("GET", f"/sandbox/{sandbox_id}/toolbox-proxy-url").json() == {
        "url": f"{raw.server.url}/toolbox"}
    listed = raw.api("GET", "/sandbox", params={"labels": json.dumps({"purpose": "raw"}), "limit": 1}).json()
    assert len(listed["items"]) == 1 and "nextCursor" in listed


def test_create_should_refuse_resources_with_a_snapshot_as_the_api_does(raw):
    refused = raw.api("POST", "/sandbox", json={"snapshot": "daytonaio/sandbox:latest", "cpu": 2})
    assert (refused.status_code, refused.json()["message"]) == (
        400, "Cannot specify Sandbox resources when using a snapshot")
    mixed = raw.api("POST", "/sandbox", json={"snapshot": "x", "buildInfo": {"dockerfileContent": "FROM alpine"}})
    assert mixed.status_code == 400


def test_request_log_should_count_requests_without_credentials(server, raw, raw_sandbox):
    start = server.next_request_sequence()
    raw.toolbox("GET", raw_sandbox["id"], "/files")
    raw.toolbox("GET", raw_sandbox["id"], "/files")
    raw.api("GET", f"/sandbox/{raw_sandbox['id']}")
    log = server.requests_since(start)
    assert log["total"] == 3
    assert {"method": "GET", "path": "/toolbox/{sandboxId}/files", "count": 2} in log["routeCounts"]
    assert {"method": "GET", "path": f"/toolbox/{raw_sandbox['id']}/files", "count": 2} in log["counts"]
    assert all("Authorization" not in entry["headers"] for entry in log["requests"])
    assert log["requests"][0]["headers"]["X-Daytona-SDK-Version"] == "0.226.1"
    assert server.api_key not in json.dumps(log)


def test_socket_io_gateway_should_answer_404_so_the_sdk_polls(server):
    response = httpx.get(f"{server.api_url}/socket.io/", params={"EIO": "4", "transport": "polling"})
    assert response.status_code == 404
