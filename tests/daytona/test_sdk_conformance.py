"""Proves the Daytona fake speaks Daytona's wire format: the official `daytona` Python SDK, pointed at it, works end to end."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid

import httpx
import pytest
from daytona import (
    CreateSandboxFromImageParams,
    CreateSandboxFromSnapshotParams,
    DaytonaError,
    DaytonaNotFoundError,
    FileDownloadRequest,
    FileUpload,
    ListSandboxesQuery,
    Resources,
    SandboxState,
    SessionExecuteRequest,
)

from fake_daytona_client import process_alive, wait_until

ALL_BYTES = bytes(range(256))


def stream_session_command(sandbox, command: str, session_id: str = "conformance"):
    """Session + runAsync + get_session_command_logs_async with callbacks, the SDK's streaming recipe."""
    sandbox.process.create_session(session_id)
    started = sandbox.process.execute_session_command(session_id, SessionExecuteRequest(command=command,
                                                                                        run_async=True))
    stdout: list[tuple[float, str]] = []
    stderr: list[str] = []
    asyncio.run(sandbox.process.get_session_command_logs_async(
        session_id, started.cmd_id, lambda chunk: stdout.append((time.monotonic(), chunk)), stderr.append))
    return started.cmd_id, stdout, stderr, time.monotonic()


def test_create_should_return_a_started_sandbox_that_get_and_list_report(server, daytona):
    unique = uuid.uuid4().hex
    created = daytona.create(CreateSandboxFromSnapshotParams(labels={"suite": unique}, env_vars={"A": "1"},
                                                             auto_stop_interval=30), timeout=30)
    try:
        assert created.state == SandboxState.STARTED
        assert created.toolbox_proxy_url == f"{server.url}/toolbox"
        assert created.labels["suite"] == unique
        assert created.env == {"A": "1"}
        assert created.auto_stop_interval == 30
        fetched = daytona.get(created.id)
        assert (fetched.id, fetched.state, fetched.cpu, fetched.memory, fetched.disk) == (
            created.id, SandboxState.STARTED, 1, 1, 3)
        listed = [item.id for item in daytona.list(ListSandboxesQuery(labels={"suite": unique}))]
        assert listed == [created.id]
        assert created.id not in [item.id for item in daytona.list(ListSandboxesQuery(labels={"suite": "other"}))]
    finally:
        created.delete()


def test_create_from_image_should_record_resources_and_build_info(server, raw, daytona):
    created = daytona.create(CreateSandboxFromImageParams(image="debian:12.9", resources=Resources(cpu=2, memory=4,
                                                                                                  disk=8)), timeout=30)
    try:
        assert (created.cpu, created.memory, created.disk) == (2, 4, 8)
        assert created.state == SandboxState.STARTED
        assert "FROM debian:12.9" in raw.api("GET", f"/sandbox/{created.id}").json()["buildInfo"]["dockerfileContent"]
    finally:
        created.delete()


def test_session_command_should_stream_stdout_and_stderr_separately_with_its_exit_code(sandbox):
    command_id, stdout, stderr, returned_at = stream_session_command(
        sandbox, "echo out-1; echo err-1 >&2; sleep 1; echo out-2; (exit 7)")
    assert "".join(chunk for _, chunk in stdout) == "out-1\nout-2\n"
    assert "".join(stderr) == "err-1\n"
    # Streamed, not collected at exit: the first line reached the callback while the command was still sleeping.
    assert returned_at - stdout[0][0] > 0.5
    assert sandbox.process.get_session_command("conformance", command_id).exit_code == 7
    logs = sandbox.process.get_session_command_logs("conformance", command_id)
    assert (logs.stdout, logs.stderr) == ("out-1\nout-2\n", "err-1\n")
    session = sandbox.process.get_session("conformance")
    assert [command.id for command in session.commands] == [command_id]


def test_synchronous_session_command_should_return_split_output_and_exit_code(sandbox):
    sandbox.process.create_session("sync")
    result = sandbox.process.execute_session_command("sync", SessionExecuteRequest(
        command="echo to-out; echo to-err >&2; (exit 2)"))
    assert (result.exit_code, result.stdout, result.stderr) == (2, "to-out\n", "to-err\n")


def test_exec_should_return_combined_output_and_exit_code_with_cwd_and_env(sandbox):
    sandbox.fs.create_folder("work/sub", "755")
    result = sandbox.process.exec('echo "$GREETING from $(basename "$PWD")"; echo oops >&2; exit 5', cwd="work/sub",
                                  env={"GREETING": "hello"})
    assert result.exit_code == 5
    assert result.result == "hello from sub\noops\n"
    assert sandbox.process.exec("true").exit_code == 0


def test_exec_should_see_the_sandbox_home_through_the_rewritten_home_path(sandbox):
    sandbox.fs.upload_file(b"payload", "/home/daytona/project/file.txt")
    result = sandbox.process.exec("cat /home/daytona/project/file.txt && cd /home/daytona/project && ls")
    assert (result.exit_code, result.result) == (0, "payloadfile.txt\n")
    assert sandbox.get_user_home_dir() == "/home/daytona"


def test_bulk_upload_and_download_should_round_trip_several_binary_files(sandbox, tmp_path):
    files = {f"bulk/dir{index % 3}/file-{index}.bin": ALL_BYTES * (index + 1) + bytes([index]) for index in range(12)}
    files["bulk/empty"] = b""
    sandbox.fs.upload_files([FileUpload(source=content, destination=path) for path, content in files.items()])
    results = sandbox.fs.download_files([FileDownloadRequest(source=path) for path in files]
                                        + [FileDownloadRequest(source="bulk/missing")])
    by_source = {result.source: result for result in results}
    for path, content in files.items():
        if content:
            assert by_source[path].error is None, path
            assert by_source[path].result == content, path
    assert by_source["bulk/missing"].result is None
    assert by_source["bulk/missing"].error_details.code == "FILE_NOT_FOUND"
    # To a local destination too, as the SDK's download-to-disk path does.
    destination = tmp_path / "local.bin"
    [to_disk] = sandbox.fs.download_files([FileDownloadRequest(source="bulk/dir0/file-0.bin",
                                                               destination=str(destination))])
    assert to_disk.error is None and destination.read_bytes() == files["bulk/dir0/file-0.bin"]
    assert sandbox.fs.download_file("bulk/dir1/file-1.bin") == files["bulk/dir1/file-1.bin"]


def test_file_listing_info_move_and_delete_should_reflect_the_sandbox_filesystem(sandbox):
    sandbox.fs.upload_files([FileUpload(source=b"12345", destination="tree/a.txt"),
                             FileUpload(source=b"x", destination="tree/nested/b.txt")])
    listing = {entry.name: entry for entry in sandbox.fs.list_files("tree")}
    assert set(listing) == {"a.txt", "nested"}
    assert (listing["a.txt"].is_dir, listing["a.txt"].size) == (False, 5)
    assert listing["nested"].is_dir
    info = sandbox.fs.get_file_info("tree/a.txt")
    assert (info.name, info.size, info.is_dir, info.permissions) == ("a.txt", 5, False, "0644")
    sandbox.fs.move_files("tree/a.txt", "tree/nested/moved.txt")
    assert {entry.name for entry in sandbox.fs.list_files("tree/nested")} == {"b.txt", "moved.txt"}
    sandbox.fs.delete_file("tree", recursive=True)
    with pytest.raises(DaytonaNotFoundError):
        sandbox.fs.get_file_info("tree")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_preview_link_should_reach_a_server_in_the_sandbox_with_its_token(sandbox):
    port = free_port()
    sandbox.fs.upload_file(b"served from the sandbox\n", "site/index.html")
    sandbox.process.create_session("web")
    sandbox.process.execute_session_command("web", SessionExecuteRequest(
        command=f"cd site && exec python3 -m http.server {port} --bind 127.0.0.1", run_async=True))
    preview = sandbox.get_preview_link(port)
    assert preview.url.endswith(f"/preview/{port}-{sandbox.id}")

    def fetch(**headers):
        try:
            return httpx.get(f"{preview.url}/index.html", headers=headers, timeout=5)
        except httpx.HTTPError:
            return None

    answered = wait_until(lambda: (lambda response: response if response is not None and response.status_code == 200
                                   else None)(fetch(**{"X-Daytona-Preview-Token": preview.token})), 15)
    assert answered.text == "served from the sandbox\n"
    # Without a token the proxy sends the visitor to sign in.
    assert fetch().status_code == 307
    browser_agent = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
    browser = fetch(**{"X-Daytona-Preview-Token": preview.token, "User-Agent": browser_agent})
    assert "daytona-preview-warning" in browser.text
    skipped = fetch(**{"X-Daytona-Preview-Token": preview.token, "User-Agent": browser_agent,
                       "X-Daytona-Skip-Preview-Warning": "true"})
    assert skipped.text == "served from the sandbox\n"
    accepted = httpx.get(f"{preview.url}/accept-daytona-preview-warning", params={"redirect": "/index.html"},
                         headers={"User-Agent": browser_agent})
    assert accepted.status_code == 302 and accepted.cookies.get("daytona-preview-page-accepted") == "true"
    sandbox.process.delete_session("web")


def background_sleep_pid(sandbox, session_id: str) -> tuple[str, int]:
    """Starts `sleep 60` in a session command and returns the command id and the sleep's pid."""
    sandbox.process.create_session(session_id)
    started = sandbox.process.execute_session_command(session_id, SessionExecuteRequest(
        command="sleep 60 & echo $! > sleep.pid; wait", run_async=True))
    pid_text = wait_until(lambda: sandbox.process.exec("cat sleep.pid 2>/dev/null").result.strip())
    return started.cmd_id, int(pid_text)


def test_stop_and_start_should_keep_files_and_end_processes(server, sandbox):
    sandbox.fs.upload_file(b"kept", "persist.txt")
    _, pid = background_sleep_pid(sandbox, "long")
    sandbox.stop()
    assert sandbox.state == SandboxState.STOPPED
    wait_until(lambda: not process_alive(pid))
    sandbox.start()
    assert sandbox.state == SandboxState.STARTED
    assert sandbox.fs.download_file("persist.txt") == b"kept"
    assert sandbox.process.list_sessions() == []


def test_session_input_should_reach_the_commands_stdin(sandbox):
    sandbox.process.create_session("input")
    started = sandbox.process.execute_session_command("input", SessionExecuteRequest(
        command='read first; read second; echo "got $first and $second"', run_async=True, suppress_input_echo=True))
    sandbox.process.send_session_command_input("input", started.cmd_id, "one\n")
    sandbox.process.send_session_command_input("input", started.cmd_id, "two\n")
    wait_until(lambda: sandbox.process.get_session_command("input", started.cmd_id).exit_code is not None)
    assert sandbox.process.get_session_command_logs("input", started.cmd_id).stdout == "got one and two\n"


def test_deleting_a_session_should_kill_its_running_command(server, sandbox):
    command_id, pid = background_sleep_pid(sandbox, "doomed")
    shell_pid = server.admin_sandbox(sandbox.id)["sessions"][0]["shellPid"]
    sandbox.process.delete_session("doomed")
    wait_until(lambda: not process_alive(pid) and not process_alive(shell_pid), 5)
    with pytest.raises(DaytonaNotFoundError):
        sandbox.process.get_session_command("doomed", command_id)


def test_a_session_should_keep_shell_state_between_its_commands(sandbox):
    """Daytona runs a session's commands in one shell: `cd` and `export` carry over."""
    sandbox.fs.create_folder("state/inner", "755")
    sandbox.process.create_session("stateful")
    sandbox.process.execute_session_command("stateful", SessionExecuteRequest(command="cd state/inner && export KEPT=yes"))
    result = sandbox.process.execute_session_command("stateful", SessionExecuteRequest(
        command='echo "$(basename "$PWD") $KEPT"'))
    assert (result.exit_code, result.stdout) == (0, "inner yes\n")


def test_exit_in_a_session_command_should_end_the_session_shell_without_an_exit_code(server, sandbox):
    """As in Daytona, `exit` ends the session's shell: the command never gets an exit code. Clients wrap commands."""
    sandbox.process.create_session("exiting")
    started = sandbox.process.execute_session_command("exiting", SessionExecuteRequest(command="echo bye; exit 3",
                                                                                       run_async=True))
    wait_until(lambda: not server.admin_sandbox(sandbox.id)["sessions"][0]["shellAlive"])
    time.sleep(0.3)
    assert sandbox.process.get_session_command("exiting", started.cmd_id).exit_code is None
    assert sandbox.process.get_session_command_logs("exiting", started.cmd_id).stdout == "bye\n"
    # The session is unusable from then on: the daemon cannot write the next command to the dead shell.
    with pytest.raises(DaytonaError):
        sandbox.process.execute_session_command("exiting", SessionExecuteRequest(command="true"))
    sandbox.process.create_session("wrapped")
    result = sandbox.process.execute_session_command("wrapped", SessionExecuteRequest(
        command="bash -c 'echo bye; exit 3'"))
    assert (result.exit_code, result.stdout) == (3, "bye\n")


def test_snapshot_should_restore_files_into_a_new_sandbox(server, daytona, sandbox):
    sandbox.fs.upload_file(b"from the snapshot", "restored.txt")
    name = f"conformance-{uuid.uuid4().hex[:8]}"
    sandbox.create_snapshot(name)
    assert sandbox.state == SandboxState.STARTED
    assert daytona.snapshot.get(name).state.value == "active"
    restored = daytona.create(CreateSandboxFromSnapshotParams(snapshot=name), timeout=30)
    try:
        assert restored.fs.download_file("restored.txt") == b"from the snapshot"
    finally:
        restored.delete()


def test_autostop_setting_and_activity_refresh_should_be_accepted(server, sandbox):
    sandbox.set_autostop_interval(45)
    sandbox.refresh_data()
    assert sandbox.auto_stop_interval == 45
    server.advance_clock(60)
    before = server.admin_sandbox(sandbox.id)["idleSeconds"]
    sandbox.refresh_activity()
    assert server.admin_sandbox(sandbox.id)["idleSeconds"] < before


def test_delete_should_remove_the_sandbox(server, daytona):
    created = daytona.create(timeout=30)
    root = server.admin_sandbox(created.id)["hostRoot"]
    created.delete()
    with pytest.raises(DaytonaNotFoundError):
        daytona.get(created.id)
    wait_until(lambda: not os.path.exists(root))
