"""pytest fixtures for the Vercel fake: one server process per session, a fresh sandbox per test, faults reset after each."""

from __future__ import annotations

import pytest

from fake_vercel_client import FakeVercelServer, RawVercelClient, v2_session_path

TOKEN = "vercel_fake_conformance_token_0123456789"


def start_server(tmp_path_factory, label: str, *extra_arguments: str) -> FakeVercelServer:
    root = tmp_path_factory.mktemp(f"vercel-fake-root-{label}")
    log_path = str(tmp_path_factory.mktemp(f"vercel-fake-log-{label}") / "server.log")
    return FakeVercelServer(TOKEN, str(root), log_path, extra_arguments).start()


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> FakeVercelServer:
    fake = start_server(tmp_path_factory, "shared")
    yield fake
    fake.stop()


@pytest.fixture
def own_server(tmp_path_factory) -> FakeVercelServer:
    """A server of the test's own, for unscoped faults and clock moves that would disturb other tests."""
    fake = start_server(tmp_path_factory, "own")
    yield fake
    fake.stop()


@pytest.fixture(autouse=True)
def reset_faults_after_each_test(request):
    yield
    if "server" in request.fixturenames:
        request.getfixturevalue("server").reset_faults()


@pytest.fixture
def client(server) -> RawVercelClient:
    raw = RawVercelClient(server)
    yield raw
    raw.close()


@pytest.fixture
def session(client) -> dict:
    """A fresh named sandbox; yields `{sandbox, session, routes, path}` where path is its session's API path."""
    created = client.create_sandbox(ports=[3000], timeout=600_000)
    created["path"] = v2_session_path(created["session"]["id"])
    yield created
    client.request("POST", f"{created['path']}/stop")


@pytest.fixture
def unisolated_server(tmp_path_factory) -> FakeVercelServer:
    """A server that runs commands directly on the host (`--isolation none`), as it does where bwrap is missing."""
    fake = start_server(tmp_path_factory, "unisolated", "--isolation", "none")
    yield fake
    fake.stop()
