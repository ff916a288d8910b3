"""pytest fixtures for the Daytona fake: one server process per session, a fresh SDK sandbox per test, faults reset after each."""

from __future__ import annotations

import os

import pytest

from fake_daytona_client import FakeDaytonaServer, RawDaytonaClient

API_KEY = "dtn_fake_conformance_key_0123456789"


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> FakeDaytonaServer:
    # Keep the SDK from picking up a real account, or a .env file's settings, from the developer's environment.
    for variable in ("DAYTONA_API_KEY", "DAYTONA_API_URL", "DAYTONA_SERVER_URL", "DAYTONA_TARGET", "DAYTONA_JWT_TOKEN",
                     "DAYTONA_ORGANIZATION_ID", "DAYTONA_USE_DEPRECATED_POLLING"):
        os.environ.pop(variable, None)
    root = tmp_path_factory.mktemp("daytona-fake-root")
    log_path = str(tmp_path_factory.mktemp("daytona-fake-log") / "server.log")
    fake = FakeDaytonaServer(API_KEY, str(root), log_path).start()
    yield fake
    fake.stop()


@pytest.fixture(autouse=True)
def reset_faults_after_each_test(request):
    yield
    if "server" in request.fixturenames:
        request.getfixturevalue("server").reset_faults()


@pytest.fixture(scope="session")
def daytona(server):
    return server.sdk()


@pytest.fixture
def sandbox(server, daytona):
    from daytona import CreateSandboxFromSnapshotParams

    created = daytona.create(CreateSandboxFromSnapshotParams(labels={"purpose": "conformance"}), timeout=30)
    yield created
    server.reset_faults()
    try:
        created.delete()
    except Exception:
        # A test may already have deleted or vanished it; teardown must not mask the test's own result.
        pass


@pytest.fixture
def raw(server) -> RawDaytonaClient:
    return RawDaytonaClient(server)


@pytest.fixture
def raw_sandbox(server, raw):
    """A sandbox made through the raw API (no SDK), deleted afterwards."""
    created = raw.create_sandbox(labels={"purpose": "raw"})
    yield created
    server.reset_faults()
    raw.api("DELETE", f"/sandbox/{created['id']}")
