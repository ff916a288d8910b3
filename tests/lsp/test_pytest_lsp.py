"""Drives the real `sandlink lsp` binary with pytest-lsp, an LSP client that is not part of this repository."""

import os
import pathlib
import sys
import tempfile

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
SANDLINK_BINARY = os.environ.get("SANDLINK_BIN", str(REPO_ROOT / "target" / "debug" / "sandlink"))
STATE_DIRECTORY = tempfile.mkdtemp(prefix="sandlink-pytest-lsp-")


def attribute(value, name):
    """pygls hands custom params over as objects or dicts depending on version; read either."""
    return value[name] if isinstance(value, dict) else getattr(value, name)


@pytest_lsp.fixture(
    config=ClientServerConfig(
        server_command=[SANDLINK_BINARY, "lsp", "--stdio"],
        server_env={**os.environ, "SANDLINK_STATE_DIR": STATE_DIRECTORY},
    ),
)
async def client(lsp_client: LanguageClient):
    lsp_client.sandlink_output = []
    lsp_client.sandlink_exits = []

    @lsp_client.feature("sandlink/output")
    def on_output(params):
        lsp_client.sandlink_output.append(params)

    @lsp_client.feature("sandlink/exit")
    def on_exit(params):
        lsp_client.sandlink_exits.append(params)

    @lsp_client.feature("sandlink/sessionState")
    def on_session_state(params):
        pass

    @lsp_client.feature("sandlink/syncState")
    def on_sync_state(params):
        pass

    capabilities = types.ClientCapabilities(experimental={"sandlink": {"notifications": True}})
    result = await lsp_client.initialize_session(types.InitializeParams(capabilities=capabilities))
    lsp_client.initialize_result = result
    yield
    await lsp_client.shutdown_session()


async def wait_for_exit(client, run_id, timeout=30.0):
    import asyncio

    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        for exit_params in client.sandlink_exits:
            if attribute(exit_params, "runId") == run_id:
                return exit_params
        await asyncio.sleep(0.02)
    raise AssertionError(f"no sandlink/exit for {run_id} within {timeout} s")


@pytest.mark.asyncio(loop_scope="function")
async def test_initialize_should_advertise_the_local_driver(client: LanguageClient):
    experimental = client.initialize_result.capabilities.experimental
    drivers = experimental["sandlink"]["drivers"]
    assert any(driver["id"] == "local" and driver["available"] for driver in drivers)
    assert "sandlink.run" in client.initialize_result.capabilities.execute_command_provider.commands


@pytest.mark.asyncio(loop_scope="function")
async def test_connect_run_and_disconnect_should_stream_output_and_exit(client: LanguageClient):
    workspace = pathlib.Path(tempfile.mkdtemp(prefix="sandlink-pytest-ws-"))
    (workspace / "greeting.txt").write_text("hello from pytest-lsp\n")
    session = await client.protocol.send_request_async(
        "sandlink/connect", {"driver": "local", "workspaceFolder": workspace.as_uri()}
    )
    session_id = attribute(session, "sessionId")
    assert attribute(session, "state") == "active"

    answer = await client.protocol.send_request_async(
        "sandlink/run",
        {"sessionId": session_id, "command": "cat greeting.txt; echo problem >&2; exit 4"},
    )
    run_id = attribute(answer, "runId")
    exit_params = await wait_for_exit(client, run_id)
    assert attribute(exit_params, "exitCode") == 4
    outputs = [output for output in client.sandlink_output if attribute(output, "runId") == run_id]
    stdout = "".join(attribute(output, "text") for output in outputs if attribute(output, "stream") == "stdout")
    stderr = "".join(attribute(output, "text") for output in outputs if attribute(output, "stream") == "stderr")
    assert stdout == "hello from pytest-lsp\n"
    assert stderr == "problem\n"
    assert [attribute(output, "seq") for output in outputs] == list(range(len(outputs)))

    await client.protocol.send_request_async("sandlink/disconnect", {"sessionId": session_id})
    remote_root = pathlib.Path(attribute(session, "remoteRoot"))
    assert not remote_root.exists()


@pytest.mark.asyncio(loop_scope="function")
async def test_unknown_session_should_be_an_error_with_a_kind(client: LanguageClient):
    from pygls.exceptions import JsonRpcException

    with pytest.raises(JsonRpcException) as raised:
        await client.protocol.send_request_async("sandlink/status", {"sessionId": "local-missing"})
    error = raised.value
    data = getattr(error, "data", None)
    assert data is not None and data["kind"] == "unknownSession", error
    assert "local-missing" in str(error)
