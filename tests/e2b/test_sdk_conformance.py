"""Proves the E2B fake speaks E2B's wire format: the official `e2b` Python SDK, pointed at it, works end to end."""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid

import pytest
from e2b import (
    CommandExitException,
    NotFoundException,
    Sandbox,
    SandboxQuery,
    TimeoutException,
)

from fake_e2b_client import wait_until


def test_create_should_return_a_sandbox_that_get_info_and_list_report(server):
    unique_label = uuid.uuid4().hex
    created = Sandbox.create(metadata={"suite": unique_label}, timeout=60, **server.sdk_options())
    try:
        info = created.get_info()
        assert info.sandbox_id == created.sandbox_id
        assert info.metadata == {"suite": unique_label}
        assert info.state.value == "running"
        listed = Sandbox.list(query=SandboxQuery(metadata={"suite": unique_label}), **server.sdk_options())
        assert [item.sandbox_id for item in listed.next_items()] == [created.sandbox_id]
        unmatched = Sandbox.list(query=SandboxQuery(metadata={"suite": "other"}), **server.sdk_options())
        assert created.sandbox_id not in [item.sandbox_id for item in unmatched.next_items()]
    finally:
        created.kill()


def test_network_rules_should_be_kept_from_create_and_replaced_by_update_network(server):
    created = Sandbox.create(timeout=60, network={"allow_out": ["pypi.org", "*.npmjs.org"], "deny_out": ["0.0.0.0/0"]},
                             **server.sdk_options())
    try:
        network = created.get_info().network
        assert network is not None
        assert (network.get("allow_out"), network.get("deny_out")) == (["pypi.org", "*.npmjs.org"], ["0.0.0.0/0"])
        created.update_network({"deny_out": ["10.0.0.0/8"]})
        network = created.get_info().network
        assert network is not None
        assert (network.get("allow_out"), network.get("deny_out")) == (None, ["10.0.0.0/8"]), "omitted fields clear"
    finally:
        created.kill()


def test_run_should_stream_stdout_and_stderr_to_callbacks_and_return_exit_code_zero(sandbox):
    stdout_chunks: list[tuple[float, str]] = []
    stderr_chunks: list[str] = []
    result = sandbox.commands.run("echo out-1; echo err-1 >&2; sleep 1; echo out-2",
                                  on_stdout=lambda chunk: stdout_chunks.append((time.monotonic(), chunk)),
                                  on_stderr=stderr_chunks.append)
    returned_at = time.monotonic()
    assert result.exit_code == 0
    assert result.stdout == "out-1\nout-2\n"
    assert result.stderr == "err-1\n"
    assert "".join(chunk for _, chunk in stdout_chunks) == "out-1\nout-2\n"
    assert "".join(stderr_chunks) == "err-1\n"
    # Streamed, not collected at exit: the first line reached the callback while the command was still sleeping.
    first_arrival, first_chunk = stdout_chunks[0]
    assert first_chunk == "out-1\n"
    assert returned_at - first_arrival > 0.5


def test_run_should_raise_command_exit_exception_with_the_nonzero_exit_code(sandbox):
    with pytest.raises(CommandExitException) as raised:
        sandbox.commands.run("echo partial; echo broken >&2; exit 3")
    assert raised.value.exit_code == 3
    assert raised.value.stdout == "partial\n"
    assert raised.value.stderr == "broken\n"


def test_run_should_apply_cwd_envs_and_sandbox_env_vars(server):
    created = Sandbox.create(envs={"FROM_SANDBOX": "sandbox-level"}, timeout=60, **server.sdk_options())
    try:
        created.files.make_dir("/home/user/project")
        result = created.commands.run('basename "$PWD"; echo "$GREETING"; echo "$FROM_SANDBOX"',
                                      cwd="/home/user/project", envs={"GREETING": "hello"})
        assert result.stdout == "project\nhello\nsandbox-level\n"
    finally:
        created.kill()


def test_background_command_should_be_listed_and_killable(sandbox):
    handle = sandbox.commands.run("sleep 30", background=True)
    assert handle.pid in [process.pid for process in sandbox.commands.list()]
    assert sandbox.commands.kill(handle.pid) is True
    with pytest.raises(CommandExitException) as raised:
        handle.wait()
    assert raised.value.exit_code == -1
    wait_until(lambda: handle.pid not in [process.pid for process in sandbox.commands.list()])
    # Killing an unknown pid reports False rather than raising, which relies on the `not_found` code.
    assert sandbox.commands.kill(handle.pid) is False


def test_kill_should_take_down_the_whole_process_tree(sandbox):
    handle = sandbox.commands.run("sleep 300 & sleep 300 & echo started; wait", background=True)
    wait_until(lambda: os.path.exists(f"/proc/{handle.pid}"))
    children = wait_until(lambda: [pid for pid in os.listdir("/proc") if pid.isdigit()
                                   and os.path.exists(f"/proc/{pid}/stat")
                                   and _parent_pid(pid) == handle.pid] or None)
    sandbox.commands.kill(handle.pid)
    for child in children:
        wait_until(lambda: not _is_alive(int(child)))


def _parent_pid(pid: str) -> int:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _is_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_send_stdin_should_reach_a_process_started_with_stdin(sandbox):
    handle = sandbox.commands.run("head -n 2", background=True, stdin=True)
    sandbox.commands.send_stdin(handle.pid, "first line\n")
    sandbox.commands.send_stdin(handle.pid, "second line\n")
    result = handle.wait()
    assert result.stdout == "first line\nsecond line\n"


def test_close_stdin_should_signal_end_of_input(sandbox):
    handle = sandbox.commands.run("wc -c", background=True, stdin=True)
    sandbox.commands.send_stdin(handle.pid, "12345")
    sandbox.commands.close_stdin(handle.pid)
    assert handle.wait().stdout.strip() == "5"


def test_command_timeout_should_kill_the_process(sandbox):
    started = time.monotonic()
    with pytest.raises(TimeoutException):
        sandbox.commands.run("echo begin; sleep 30", timeout=1)
    assert time.monotonic() - started < 10
    wait_until(lambda: not [process for process in sandbox.commands.list() if "sleep 30" in " ".join(process.args)])


def test_disconnect_then_connect_by_pid_should_return_all_output(sandbox):
    # The leading sleep keeps output from being in flight when the client hangs up: bytes already written to a
    # socket the client then closes are gone, in the fake as in E2B. Only what was never written is buffered.
    handle = sandbox.commands.run("sleep 0.3; for i in 1 2 3 4 5; do echo line-$i; sleep 0.2; done",
                                  background=True)
    handle.disconnect()
    time.sleep(0.5)
    reattached = sandbox.commands.connect(handle.pid)
    result = reattached.wait()
    assert result.stdout == "".join(f"line-{number}\n" for number in range(1, 6))


def test_write_and_read_should_round_trip_text_and_bytes(sandbox, server):
    text_info = sandbox.files.write("/home/user/notes/hello.txt", "héllo wörld\n")
    assert text_info.path == "/home/user/notes/hello.txt"
    assert sandbox.files.read("/home/user/notes/hello.txt") == "héllo wörld\n"
    binary_payload = bytes(range(256)) * 4
    sandbox.files.write("data.bin", binary_payload)
    assert bytes(sandbox.files.read("/home/user/data.bin", format="bytes")) == binary_payload
    # The private directory really holds the bytes, under the documented mapping of / to <root>/<id>/fs.
    host_root = server.admin_sandbox(sandbox.sandbox_id)["hostRoot"]
    with open(os.path.join(host_root, "home/user/data.bin"), "rb") as handle:
        assert handle.read() == binary_payload
    # And a real process inside the sandbox sees it at the mapped home directory.
    assert sandbox.commands.run("cat notes/hello.txt").stdout == "héllo wörld\n"


def test_read_of_a_missing_file_should_raise_not_found(sandbox):
    with pytest.raises(NotFoundException):
        sandbox.files.read("/home/user/does-not-exist.txt")


def test_filesystem_operations_should_list_stat_move_and_remove(sandbox):
    sandbox.files.write("tree/a.txt", "a")
    sandbox.files.write("tree/sub/b.txt", "bb")
    assert sandbox.files.make_dir("/home/user/tree/empty") is True
    assert sandbox.files.make_dir("/home/user/tree/empty") is False
    shallow = sorted(entry.name for entry in sandbox.files.list("/home/user/tree"))
    assert shallow == ["a.txt", "empty", "sub"]
    deep = sorted(entry.path for entry in sandbox.files.list("/home/user/tree", depth=2))
    assert deep == ["/home/user/tree/a.txt", "/home/user/tree/empty", "/home/user/tree/sub",
                    "/home/user/tree/sub/b.txt"]
    info = sandbox.files.get_info("/home/user/tree/sub/b.txt")
    assert (info.size, info.type.value) == (2, "file")
    moved = sandbox.files.rename("/home/user/tree/a.txt", "/home/user/tree/sub/c.txt")
    assert moved.path == "/home/user/tree/sub/c.txt"
    assert sandbox.files.exists("/home/user/tree/a.txt") is False
    sandbox.files.remove("/home/user/tree/sub")
    assert sandbox.files.exists("/home/user/tree/sub") is False


def test_write_files_should_upload_a_batch_of_1000_files_in_one_request(sandbox, server):
    entries = [{"path": f"/home/user/batch/file-{index:04}.txt", "data": f"content {index}\n"}
               for index in range(1000)]
    before = server.next_request_sequence()
    written = sandbox.files.write_files(entries)
    upload_requests = server.requests_since(before)
    assert len(written) == 1000
    assert [(request["method"], request["path"]) for request in upload_requests] == [("POST", "/files")]
    assert sandbox.files.read("/home/user/batch/file-0999.txt") == "content 999\n"
    print(f"\nMEASURED: write_files of 1000 files = {len(upload_requests)} HTTP request(s)")


def test_running_one_command_should_take_one_http_request(sandbox, server):
    before = server.next_request_sequence()
    sandbox.commands.run("true")
    requests = server.requests_since(before)
    assert [(request["method"], request["path"]) for request in requests] == [("POST", "/process.Process/Start")]
    print(f"\nMEASURED: commands.run of one command = {len(requests)} HTTP request(s)")


def test_set_timeout_should_move_the_sandbox_end_time(sandbox):
    sandbox.set_timeout(3600)
    far_end = sandbox.get_info().end_at
    assert far_end - dt.datetime.now(dt.timezone.utc) > dt.timedelta(minutes=55)
    sandbox.set_timeout(30)
    near_end = sandbox.get_info().end_at
    assert near_end < far_end
    assert near_end - dt.datetime.now(dt.timezone.utc) < dt.timedelta(seconds=31)


def test_sandbox_should_die_when_its_timeout_expires(server):
    short_lived = Sandbox.create(timeout=1, **server.sdk_options())
    wait_until(lambda: not short_lived.is_running(), timeout_seconds=10)
    with pytest.raises(NotFoundException):
        short_lived.get_info()


def test_pause_then_connect_should_resume_with_files_and_processes_intact(sandbox, server):
    sandbox.files.write("kept.txt", "survives pause")
    handle = sandbox.commands.run("sleep 60", background=True)
    assert sandbox.pause() is True
    assert sandbox.get_info().state.value == "paused"
    assert not sandbox.is_running()
    resumed = Sandbox.connect(sandbox.sandbox_id, **server.sdk_options())
    assert resumed.get_info().state.value == "running"
    assert resumed.files.read("kept.txt") == "survives pause"
    assert handle.pid in [process.pid for process in resumed.commands.list()]


def test_kill_should_remove_the_sandbox(server):
    doomed = Sandbox.create(timeout=60, **server.sdk_options())
    host_root = server.admin_sandbox(doomed.sandbox_id)["hostRoot"]
    doomed.kill()
    assert doomed.is_running() is False
    with pytest.raises(NotFoundException):
        doomed.get_info()
    wait_until(lambda: not os.path.exists(host_root))


def test_snapshot_should_restore_into_a_new_sandbox(sandbox, server):
    sandbox.files.write("snap.txt", "from the snapshot")
    snapshot = sandbox.create_snapshot()
    restored = Sandbox.create(snapshot.snapshot_id, timeout=60, **server.sdk_options())
    try:
        assert restored.sandbox_id != sandbox.sandbox_id
        assert restored.files.read("snap.txt") == "from the snapshot"
    finally:
        restored.kill()


def test_pty_should_run_an_interactive_shell_that_sees_a_terminal_of_the_requested_size(sandbox):
    from e2b import PtySize

    terminal_output = bytearray()
    handle = sandbox.pty.create(PtySize(rows=33, cols=111))
    sandbox.pty.resize(handle.pid, PtySize(rows=44, cols=122))
    sandbox.pty.send_stdin(handle.pid, b"test -t 0 && echo is-a-tty; stty size; echo $((6*7)); exit 5\n")
    with pytest.raises(CommandExitException) as raised:
        handle.wait(on_pty=terminal_output.extend)
    assert raised.value.exit_code == 5
    text = terminal_output.decode(errors="replace")
    assert "is-a-tty" in text
    assert "44 122" in text
    assert "42" in text


def test_async_sdk_should_create_run_write_read_and_kill(server):
    import asyncio

    from e2b import AsyncSandbox

    async def scenario() -> tuple[str, int, str]:
        created = await AsyncSandbox.create(timeout=60, **server.sdk_options())
        try:
            streamed: list[str] = []
            result = await created.commands.run("echo async-out", on_stdout=streamed.append)
            await created.files.write("async.txt", "async file")
            content = await created.files.read("async.txt")
            return "".join(streamed), result.exit_code, content
        finally:
            await created.kill()

    assert asyncio.run(scenario()) == ("async-out\n", 0, "async file")


def test_watch_dir_should_report_writes_through_the_sdk(sandbox):
    sandbox.files.make_dir("/home/user/observed")
    watcher = sandbox.files.watch_dir("/home/user/observed")
    sandbox.files.write("/home/user/observed/seen.txt", "hello")

    def written_names():
        return {event.name for event in watcher.get_new_events() if event.type.value == "write"} or None

    try:
        assert wait_until(written_names, timeout_seconds=5) == {"seen.txt"}
    finally:
        watcher.stop()
