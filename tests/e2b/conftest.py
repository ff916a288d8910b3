"""pytest fixtures for the E2B fake: one server process per session, a fresh SDK sandbox per test, faults reset after each."""

from __future__ import annotations

import os

import pytest

from fake_e2b_client import FakeE2BServer, RawEnvdClient

API_KEY = "e2b_fake_conformance_key_0123456789"


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> FakeE2BServer:
    # Keep the SDK from picking up a real account or domain from the developer's environment.
    for variable in ("E2B_API_KEY", "E2B_DOMAIN", "E2B_DEBUG", "E2B_API_URL", "E2B_SANDBOX_URL", "E2B_ACCESS_TOKEN"):
        os.environ.pop(variable, None)
    root = tmp_path_factory.mktemp("e2b-fake-root")
    log_path = str(tmp_path_factory.mktemp("e2b-fake-log") / "server.log")
    fake = FakeE2BServer(API_KEY, str(root), log_path).start()
    yield fake
    fake.stop()


@pytest.fixture(autouse=True)
def reset_faults_after_each_test(request):
    yield
    if "server" in request.fixturenames:
        request.getfixturevalue("server").reset_faults()


@pytest.fixture
def sandbox(server):
    from e2b import Sandbox

    created = Sandbox.create(timeout=120, metadata={"purpose": "conformance"}, **server.sdk_options())
    yield created
    server.reset_faults()
    try:
        created.kill()
    except Exception:
        # A test may already have killed or vanished it; teardown must not mask the test's own result.
        pass


@pytest.fixture
def raw_envd(server, sandbox) -> RawEnvdClient:
    return RawEnvdClient(server, sandbox.sandbox_id, server.admin_sandbox(sandbox.sandbox_id)["envdAccessToken"])
