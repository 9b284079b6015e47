"""Fixtures: every storage test runs on a real SQLite file and on a real PostgreSQL database.

PostgreSQL is required: when it cannot be reached (and cannot be started) the session fails
instead of skipping, so a green run always means both backends were exercised.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient

from tests.api_helpers import OWNER, Realm, create, make_realm
from tests.helpers import FakeClock
from tokentrail.api.app import create_app
from tokentrail.domain import clock
from tokentrail.domain.policy import Caller
from tokentrail.service import Service

PG_HOST = os.environ.get("TOKENTRAIL_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("TOKENTRAIL_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("TOKENTRAIL_TEST_PG_USER", "postgres")
TEST_SECRET = "test-secret-key-0123456789abcdef"
BACKENDS = ["sqlite", "postgres"]


def _pg_admin() -> psycopg.Connection:
    return psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True)


@pytest.fixture(scope="session")
def postgres_available() -> bool:
    try:
        _pg_admin().close()
        return True
    except psycopg.OperationalError:
        pass
    if shutil.which("pg_ctlcluster") and shutil.which("pg_lsclusters"):
        for line in subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True).stdout.splitlines():
            version, cluster = line.split()[:2]
            subprocess.run(
                ["pg_ctlcluster", "--skip-systemctl-redirect", version, cluster, "start"], capture_output=True
            )
        try:
            _pg_admin().close()
            return True
        except psycopg.OperationalError as error:
            pytest.fail(f"PostgreSQL is required for the tests and could not be started: {error}")
    pytest.fail(f"PostgreSQL is required for the tests and is not reachable on {PG_HOST}:{PG_PORT}")


@pytest.fixture
def make_pg_database(postgres_available: bool) -> Iterator:
    created: list[str] = []

    def make() -> str:
        name = f"tt_test_{uuid.uuid4().hex[:16]}"
        with _pg_admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"

    yield make
    with _pg_admin() as conn:
        for name in created:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'tokentrail.db'}"
    return request.getfixturevalue("make_pg_database")()


@pytest.fixture
def environ(tmp_path: Path) -> dict[str, str]:
    return {"TOKENTRAIL_SECRET_KEY": TEST_SECRET, "TOKENTRAIL_DATA_DIR": str(tmp_path)}


@pytest.fixture
def service(database_url: str, tmp_path: Path, environ: dict[str, str]) -> Iterator[Service]:
    sys_ = Service(database_url, data=tmp_path, environ=environ)
    yield sys_
    sys_.close()


# -- the HTTP API's fixtures (helpers in tests/api_helpers.py) -----------------------------------


@pytest.fixture
def client(service: Service) -> Iterator[TestClient]:
    with TestClient(create_app(service), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def ws(service: Service) -> Realm:
    return make_realm(service, "main", OWNER)


@pytest.fixture
def other(service: Service, client: TestClient) -> Realm:
    """A second workspace of another user, holding a custom token named `secret`."""
    realm = make_realm(service, "other", "someone@example.com")
    secret = create(client, realm.admin, "secret", "PIPES:READ:top")
    realm.tokens["secret"] = secret
    return realm


@pytest.fixture(autouse=True)
def _restore_clock() -> Iterator[None]:
    yield
    clock.set_clock(None)


@pytest.fixture
def fake() -> FakeClock:
    """The domain's clock, held at the current second and moved only by `fake.advance(seconds)`."""
    return FakeClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
def workspace(service: Service):
    """A workspace with its default tokens; returns (setup, admin caller)."""
    setup = service.command(lambda: service.ledger.setup_workspace("main", "owner@example.com", Caller.system()))
    admin = setup.tokens[0]
    value = service.signer.make(admin.workspace_id, str(admin.id), admin.generation)
    return setup, service.auth.authenticate(value)


# -- test tiers ---------------------------------------------------------------------------------
# Every test lands in exactly one tier, by what it needs, so `-m unit` is the fast loop:
#   e2e          drives real processes (uvicorn, Tinybird's CLIs, a browser): marked in its file;
#   integration  uses a real database (SQLite file and PostgreSQL): any storage fixture;
#   unit         everything else: pure functions and aggregates in memory.
_STORAGE_FIXTURES = {"backend", "database_url", "service", "make_pg_database", "postgres_available", "tmp_path"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("e2e"):
            continue
        fixtures = set(getattr(item, "fixturenames", ()))
        item.add_marker(pytest.mark.integration if fixtures & _STORAGE_FIXTURES else pytest.mark.unit)
