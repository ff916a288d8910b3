"""Commands under bubblewrap see the session's own `/vercel`, so absolute sandbox paths in command text work as on Vercel."""

from __future__ import annotations

import os

import pytest

from fake_vercel_client import RawVercelClient, v2_session_path


def run(client: RawVercelClient, path: str, script: str) -> tuple[str, int]:
    result = client.stream("POST", f"{path}/cmd", json={"command": "sh", "args": ["-c", script], "wait": True,
                                                       "logs": True})
    output = "".join(line["data"] for line in result.lines[1:-1] if line.get("stream") in ("stdout", "stderr"))
    return output, result.lines[-1]["command"]["exitCode"]


@pytest.fixture
def isolated(server):
    if server.isolation() != "bwrap":
        if os.environ.get("CI"):
            pytest.fail("bwrap is missing or cannot make mount namespaces here; under CI that is a failure "
                        "(Debian: apt-get install -y bubblewrap)")
        pytest.skip("bwrap is unavailable, so commands run without isolation")
    return server


def test_absolute_vercel_paths_are_the_sessions_own(isolated, client, session):
    output, code = run(client, session["path"], "pwd; mkdir -p /vercel/sandbox/made && echo x > /vercel/sandbox/made/f")
    assert (output, code) == ("/vercel/sandbox\n", 0)
    host_root = isolated.admin_session(session["session"]["id"])["hostRoot"]
    assert open(os.path.join(host_root, "vercel/sandbox/made/f")).read() == "x\n"
    assert not os.path.exists("/vercel/sandbox/made")
    other = client.create_sandbox()
    other_output, other_code = run(client, v2_session_path(other["session"]["id"]), "test -e /vercel/sandbox/made")
    assert other_code == 1


def test_a_signal_reaches_the_command_and_its_trap_decides_the_exit_code(isolated, client, session):
    command = client.start_command(session["path"], "sh", ["-c", "trap 'echo caught; exit 3' TERM; sleep 30 & wait"])
    import time

    time.sleep(0.3)
    client.request("POST", f"{session['path']}/cmd/{command['id']}/kill", json={"signal": 15})
    waited = client.request("GET", f"{session['path']}/cmd/{command['id']}", params={"wait": "true"}).json()
    assert waited["command"]["exitCode"] == 3
    logs = client.stream("GET", f"{session['path']}/cmd/{command['id']}/logs")
    assert "".join(line["data"] for line in logs.lines) == "caught\n"


def test_a_missing_program_is_refused_under_either_mode(client, session, unisolated_server):
    assert client.request("POST", f"{session['path']}/cmd", json={"command": "no-such-program"}).status_code == 400
    assert client.request("POST", f"{session['path']}/cmd", json={"command": "./missing.sh"}).status_code == 400
    plain = RawVercelClient(unisolated_server)
    created = plain.create_sandbox()
    path = v2_session_path(created["session"]["id"])
    assert plain.request("POST", f"{path}/cmd", json={"command": "no-such-program"}).status_code == 400


def test_without_isolation_commands_run_in_the_mapped_directory(unisolated_server):
    client = RawVercelClient(unisolated_server)
    assert unisolated_server.isolation() == "none"
    created = client.create_sandbox()
    output, code = run(client, v2_session_path(created["session"]["id"]), 'pwd; echo "$VERCEL_FAKE_SANDBOX_ROOT"')
    host_root = unisolated_server.admin_session(created["session"]["id"])["hostRoot"]
    assert (output, code) == (f"{host_root}/vercel/sandbox\n{host_root}\n", 0)
