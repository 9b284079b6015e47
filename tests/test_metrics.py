"""Operations endpoints: /healthz and Prometheus /metrics, on real SQLite and PostgreSQL.

/metrics is parsed with prometheus_client's own parser; its counters must move with the requests
made, its labels must never carry a token value or name, and the revocation-visibility histogram
must measure what another process's delete or refresh took to reach this process's auth cache.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import _pg_admin
from tests.helpers import FakeClock
from tokentrail.api.app import create_app
from tokentrail.api.setup import initialise
from tokentrail.domain.policy import Caller
from tokentrail.service import Service

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: TestClient) -> tuple[str, Samples]:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return response.text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def admin_value(service: Service, name: str = "main") -> str:
    info = initialise(service, name, "owner@example.com")
    return next(t["token"] for t in info["tokens"] if t["name"] == "admin token")


@pytest.fixture
def client(service: Service) -> Iterator[TestClient]:
    with TestClient(create_app(service)) as c:
        yield c


def test_healthz_needs_no_token(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"ok": True}


def test_healthz_answers_and_metrics_scrape_while_the_database_is_gone(
    make_pg_database, tmp_path: Path, environ: dict[str, str]
) -> None:
    url = make_pg_database()
    service = Service(url, data=tmp_path, environ=environ)
    try:
        with TestClient(create_app(service)) as client:
            assert value(scrape(client)[1], "tokentrail_store_up") == 1
            with _pg_admin() as conn:
                conn.execute(f'DROP DATABASE "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
            assert client.get("/healthz").json() == {"ok": True}
            _, samples = scrape(client)  # still 200: the store's families say it is down
            assert value(samples, "tokentrail_store_up") == 0
            assert ("tokentrail_projection_lag_events", frozenset()) not in samples
    finally:
        service.close()


def test_requests_are_counted_by_route_template_method_and_status(service: Service, client: TestClient) -> None:
    admin = admin_value(service)
    for _ in range(3):
        assert client.get("/v0/auth", params={"token": admin}).status_code == 200
    refused = client.get("/v0/tokens", params={"token": "p.nope"}).status_code
    assert refused in (401, 403)
    assert client.get("/no/such/path").status_code == 404
    assert client.delete("/healthz").status_code == 405
    _, samples = scrape(client)
    assert value(samples, "tokentrail_requests_total", route="/v0/auth", method="GET", status="200") == 3
    assert value(samples, "tokentrail_requests_total", route="/v0/tokens", method="GET", status=str(refused)) == 1
    assert value(samples, "tokentrail_requests_total", route="(unmatched)", method="GET", status="404") == 1
    assert value(samples, "tokentrail_requests_total", route="/healthz", method="DELETE", status="405") == 1
    assert value(samples, "tokentrail_request_duration_seconds_count", route="/v0/auth", method="GET") == 3
    assert value(samples, "tokentrail_request_duration_seconds_sum", route="/v0/auth", method="GET") > 0
    # The scrape itself is counted from the next one on.
    _, again = scrape(client)
    assert value(again, "tokentrail_requests_total", route="/metrics", method="GET", status="200") == 1


def test_no_token_value_or_name_in_metrics(service: Service, client: TestClient) -> None:
    admin = admin_value(service)
    names = ["zq-distinctive-reader-7731", "zq distinctive spaced 9912"]
    values = [admin]
    for name in names:
        created = client.post("/v0/tokens", params={"token": admin, "name": name, "scope": "ADMIN"})
        assert created.status_code == 200, created.text
        values.append(created.json()["token"])
    for ref in [*names, *values]:
        got = client.get(f"/v0/tokens/{quote(ref, safe='')}", params={"token": admin})
        assert got.status_code == 200, got.text
        client.get(f"/v0/tokens/{quote(ref, safe='')}/history", params={"token": admin})
        client.post(f"/v0/tokens/{quote(ref, safe='')}/nope", params={"token": ref})
    client.get(f"/{values[1]}")  # an unmatched path made of a value
    text, samples = scrape(client)
    for secret in [*names, *values, *[v.split(".")[-1] for v in values], "distinctive"]:
        assert secret not in text
    routes = {dict(labels).get("route") for (name, labels) in samples if name == "tokentrail_requests_total"}
    assert "/v0/tokens/{ref:path}" in routes
    assert value(
        samples, "tokentrail_requests_total", route="/v0/tokens/{ref:path}", method="GET", status="200"
    ) == len(names) + len(values)
    assert routes <= {
        "/v0/tokens",
        "/v0/tokens/{ref:path}",
        "/v0/tokens/{ref:path}/history",
        "(unmatched)",
        "/v0/tokens/{ref:path}/refresh",
    } | {r for r in routes if "{" not in r and r.count("/") <= 2}


def test_projection_lag_is_zero_after_a_command_and_measures_a_backlog(service: Service, client: TestClient) -> None:
    clock = FakeClock()
    admin_value(service)
    _, samples = scrape(client)
    assert value(samples, "tokentrail_projection_lag_events") == 0
    assert value(samples, "tokentrail_projection_lag_seconds") == 0
    # Written but not projected (no `command`): a backlog of this workspace's events.
    setup = service.ledger.setup_workspace("other", "other@example.com", Caller.system())
    written = setup.position - service.projector.tracked_position()
    assert written > 0
    clock.advance(7.5)
    _, samples = scrape(client)
    assert value(samples, "tokentrail_projection_lag_events") == written
    assert value(samples, "tokentrail_projection_lag_seconds") == pytest.approx(7.5)
    service.sync()
    _, samples = scrape(client)
    assert value(samples, "tokentrail_projection_lag_events") == 0
    assert value(samples, "tokentrail_projection_lag_seconds") == 0


def test_auth_cache_and_events_written_counters_move(service: Service, client: TestClient) -> None:
    admin = admin_value(service)
    _, before = scrape(client)
    created = client.post("/v0/tokens", params={"token": admin, "name": "counted", "scope": "ADMIN"})
    assert created.status_code == 200
    assert client.post("/v0/tokens/counted/refresh", params={"token": admin}).status_code == 200
    assert client.delete("/v0/tokens/counted", params={"token": admin}).status_code == 200
    for _ in range(5):
        client.get("/v0/auth", params={"token": admin})
    _, after = scrape(client)
    assert (
        value(after, "tokentrail_events_written_total", type="Token.Created")
        == value(before, "tokentrail_events_written_total", type="Token.Created") + 1
    )
    assert value(after, "tokentrail_events_written_total", type="Token.Refreshed") == 1
    assert value(after, "tokentrail_events_written_total", type="Token.Deleted") == 1
    hits = value(after, "tokentrail_auth_cache_hits_total") - value(before, "tokentrail_auth_cache_hits_total")
    assert hits >= 5
    assert value(after, "tokentrail_auth_cache_misses_total") >= 1
    # This process's own revocations are not "seen from elsewhere".
    assert value(after, "tokentrail_revocation_visibility_seconds_count") == 0


@pytest.fixture
def two_services(
    database_url: str, tmp_path: Path, environ: dict[str, str], service: Service
) -> Iterator[tuple[Service, Service]]:
    """Two processes' worth of `Service` on one database: A (the fixture's) and B."""
    other = Service(database_url, data=tmp_path, environ=environ)
    yield service, other
    other.close()


def test_revocation_visibility_measures_another_services_delete(two_services: tuple[Service, Service]) -> None:
    a, b = two_services
    admin = admin_value(a)
    with TestClient(create_app(a)) as client_a, TestClient(create_app(b)) as client_b:
        assert (
            client_a.post("/v0/tokens", params={"token": admin, "name": "victim", "scope": "ADMIN"}).status_code == 200
        )
        b.sync()
        _, before = scrape(client_b)
        assert value(before, "tokentrail_revocation_visibility_seconds_count") == 0
        assert client_a.delete("/v0/tokens/victim", params={"token": admin}).status_code == 200
        b.sync()
        _, after = scrape(client_b)
        assert value(after, "tokentrail_revocation_visibility_seconds_count") == 1
        assert 0 < value(after, "tokentrail_revocation_visibility_seconds_sum") < 5
        assert value(after, "tokentrail_revocation_visibility_seconds_bucket", le="+Inf") == 1
        b.sync()  # nothing new: nothing measured twice
        assert value(scrape(client_b)[1], "tokentrail_revocation_visibility_seconds_count") == 1
        # A wrote it: A measures nothing.
        assert value(scrape(client_a)[1], "tokentrail_revocation_visibility_seconds_count") == 0


def test_revocation_visibility_is_the_time_from_the_event_to_the_eviction(
    two_services: tuple[Service, Service],
) -> None:
    """Both of B's eviction paths: events A already projected (read back from the log), and events
    B projects itself (A wrote them without projecting)."""
    clock = FakeClock()
    a, b = two_services
    admin = admin_value(a)
    caller = a.auth.authenticate(admin)
    for name in ("one", "two", "three"):
        a.command(lambda name=name: a.ledger.create_token(caller, name, ["ADMIN"]))
    b.sync()
    with TestClient(create_app(b)) as client_b:
        a.command(lambda: a.ledger.delete_token(caller, "one"))  # projected by A
        clock.advance(0.25)
        b.sync()
        _, samples = scrape(client_b)
        assert value(samples, "tokentrail_revocation_visibility_seconds_count") == 1
        assert value(samples, "tokentrail_revocation_visibility_seconds_sum") == pytest.approx(0.25)
        assert value(samples, "tokentrail_revocation_visibility_seconds_bucket", le="0.1") == 0
        assert value(samples, "tokentrail_revocation_visibility_seconds_bucket", le="0.25") == 1
        a.ledger.refresh_token(caller, "two")  # not projected by A: B's projector applies it
        a.ledger.delete_token(caller, "three")
        clock.advance(2.0)
        b.sync()
        _, samples = scrape(client_b)
        assert value(samples, "tokentrail_revocation_visibility_seconds_count") == 3
        assert value(samples, "tokentrail_revocation_visibility_seconds_sum") == pytest.approx(4.25)
        assert value(samples, "tokentrail_revocation_visibility_seconds_bucket", le="2.5") == 3


def test_listener_liveness_gauge(service: Service, client: TestClient) -> None:
    admin = admin_value(service)
    client.get("/v0/tokens", params={"token": admin})  # a read: a server starts its listener
    if service.backend == "sqlite":
        assert ("tokentrail_listener_alive", frozenset()) not in scrape(client)[1]
        return
    deadline = time.monotonic() + 5
    while not service.listener_live and time.monotonic() < deadline:
        time.sleep(0.05)
    assert value(scrape(client)[1], "tokentrail_listener_alive") == 1
