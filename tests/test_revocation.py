"""Rotation and revocation on real SQLite and PostgreSQL.

- A value valid only because it is inside its grace window authenticates for its scopes and does
  nothing else: it cannot manage tokens, refresh itself, issue JWTs, deploy or create workspaces.
- Grace is per generation: each refreshed-out value keeps its own window to its end, whatever
  refreshes follow, and a JWT lives exactly as long as the admin generation that signed it.
- A write checks its caller against the event store in its own attempt: a value deleted or
  refreshed out through another `Service` (another server) cannot write, however stale this
  server's read models are.
"""

from __future__ import annotations

import time

import jwt as pyjwt
import pytest

from tests.helpers import FakeClock, caller_for, value_of
from tests.pg_proxy import FreezableProxy
from tests.test_api import JWT_SCOPES, authenticates, create, create_jwt, head, url
from tokentrail.domain.errors import Forbidden, Unauthenticated
from tokentrail.domain.policy import Caller
from tokentrail.service import Service

GRACE = "grace window after a refresh only authenticates"


def _reader(service: Service, admin: Caller, name: str = "leaked", scopes: tuple[str, ...] = ("TOKENS",)):
    return service.command(lambda: service.ledger.create_token(admin, name, list(scopes))).token


# -- A: a value in its grace window only authenticates ----------------------------------------------


def test_a_value_in_grace_cannot_refresh_its_token_and_undo_the_rotation(service: Service, workspace) -> None:
    _, admin = workspace
    token = _reader(service, admin)
    leaked = value_of(service, token)
    service.command(lambda: service.ledger.refresh_token(admin, "leaked", grace_seconds=300))
    rotated = value_of(service, token)
    as_leaked = service.auth.authenticate(leaked)
    assert as_leaked.in_grace and as_leaked.token_id == str(token.id)  # it still authenticates
    assert not service.auth.authenticate(rotated).in_grace
    before = head(service)
    for change in (
        lambda: service.ledger.refresh_token(as_leaked, "leaked"),
        lambda: service.ledger.create_token(as_leaked, "x", ["PIPES:READ:p"]),
        lambda: service.ledger.update_token(as_leaked, "leaked", description="mine"),
        lambda: service.ledger.delete_token(as_leaked, "leaked"),
        lambda: service.ledger.issue_jwt(as_leaked, "j", 2_000_000_000, [], None),
        lambda: service.ledger.deploy(as_leaked, {"a.pipe": "TOKEN t READ\n"}, lambda: []),
        lambda: service.ledger.setup_workspace("w2", "x@example.com", as_leaked),
    ):
        with pytest.raises(Forbidden, match=GRACE):
            service.command(change)
    assert head(service) == before
    assert service.auth.authenticate(rotated).token_id == str(token.id)  # the rotation stands


def test_a_caller_authenticated_before_a_refresh_cannot_write_after_it(service: Service, workspace) -> None:
    # Authenticated with the current value, refreshed (with grace) before its write ran: the
    # write re-reads the token and finds the value is now only in grace.
    _, admin = workspace
    token = _reader(service, admin)
    as_token = caller_for(service, token)
    service.command(lambda: service.ledger.refresh_token(admin, "leaked", grace_seconds=300))
    with pytest.raises(Forbidden, match=GRACE):
        service.command(lambda: service.ledger.create_token(as_token, "x", ["PIPES:READ:p"]))


def test_over_http_a_leaked_value_in_grace_is_refused_but_still_authenticates(client, service, ws) -> None:  # noqa: F811
    leaked = create(client, ws.admin, "leaked", "DATASOURCES:READ:events")["token"]
    rotated = client.post(url("/v0/tokens/leaked/refresh", ws.admin, grace_seconds=300)).json()["token"]
    before = head(service)
    for method, path in [("POST", "/v0/tokens/leaked/refresh"), ("POST", "/v0/tokens?name=x&scope=PIPES:READ:p")]:
        response = client.request(method, url(path, leaked))
        assert response.status_code == 403, response.text
    assert head(service) == before
    assert authenticates(client, leaked) and authenticates(client, rotated)
    # It never learns the value that replaced it, not even by reading its own token.
    own = client.get(url("/v0/tokens/leaked", leaked))
    assert own.status_code == 403 and rotated not in own.text, own.text
    assert client.get(url("/v0/tokens/leaked", rotated)).json()["token"] == rotated
    manager = create(client, ws.admin, "manager", "TOKENS")["token"]
    client.post(url("/v0/tokens/manager/refresh", ws.admin, grace_seconds=300))
    assert client.get(url("/v0/tokens", manager)).status_code == 403  # listing values is managing
    assert client.get(url("/v0/tokens/manager", manager)).status_code == 403
    before = head(service)
    # A token that manages no tokens refreshing itself: 403, as on Tinybird.
    creator = create(client, ws.admin, "creator", "DATASOURCES:CREATE")["token"]
    response = client.post(url("/v0/tokens/creator/refresh", creator))
    assert response.status_code == 403 and response.json()["error"]
    assert head(service) == before + 2  # only the create above was written (token + name)


def test_over_http_a_jwt_cannot_be_minted_with_an_admin_value_in_grace(client, service, ws) -> None:  # noqa: F811
    old_admin = ws.admin
    client.post(url("/v0/tokens/admin%20token/refresh", old_admin, grace_seconds=300))
    before = head(service)
    response = create_jwt(client, old_admin, "minted", JWT_SCOPES)
    assert response.status_code == 403, response.text
    assert head(service) == before


# -- B: grace is per generation ---------------------------------------------------------------------


def test_a_second_refresh_does_not_cut_the_first_ones_grace_short(service: Service, workspace) -> None:
    fake = FakeClock()
    _, admin = workspace
    token = _reader(service, admin, "t", ("PIPES:READ:p",))
    first = value_of(service, token)
    service.command(lambda: service.ledger.refresh_token(admin, "t", grace_seconds=60))
    second = value_of(service, token)
    fake.advance(5)
    service.command(lambda: service.ledger.refresh_token(admin, "t", grace_seconds=60))
    third = value_of(service, token)
    fake.advance(5)
    service.command(lambda: service.ledger.refresh_token(admin, "t"))  # no grace for the third value
    fourth = value_of(service, token)

    def valid(value: str) -> bool:
        try:
            return service.auth.authenticate(value).token_id == str(token.id)
        except Unauthenticated:
            return False

    assert [valid(v) for v in (first, second, third, fourth)] == [True, True, False, True]
    fake.advance(49.9)  # 59.9 s after the first refresh
    assert [valid(v) for v in (first, second, third, fourth)] == [True, True, False, True]
    fake.advance(0.1)  # the first value's minute is over; the second's has 5 s to go
    assert [valid(v) for v in (first, second, third, fourth)] == [False, True, False, True]
    fake.advance(5)
    assert [valid(v) for v in (first, second, third, fourth)] == [False, False, False, True]
    # The write side agrees with the read side, value by value (61 s after the first refresh).
    aggregate = service.ledger.repository.get(token.id)
    now = int(fake.now.timestamp() * 1_000_000)
    assert [
        aggregate.accepts(g, now - 4_000_000)
        for g in (service.signer.read(v).generation for v in (first, second, third, fourth))
    ] == [False, True, False, True]
    # Ended windows are pruned at the next refresh, on both sides.
    service.command(lambda: service.ledger.refresh_token(admin, "t", grace_seconds=1))
    row = service.queries.token(str(token.id))
    assert [g for g, _ in row.grace] == [service.signer.read(fourth).generation]
    assert service.ledger.repository.get(token.id).grace == dict(row.grace)


def test_jwts_live_exactly_as_long_as_the_admin_generation_that_signed_them(service: Service, workspace) -> None:
    fake = FakeClock()
    setup, admin = workspace
    admin_token = setup.tokens[0]
    exp = int(fake.now.timestamp()) + 3600
    claims = {
        "workspace_id": admin.workspace_id,
        "name": "j",
        "exp": exp,
        "scopes": [{"type": "PIPES:READ", "resource": "top"}],
    }
    first_value = value_of(service, admin_token)
    by_first = pyjwt.encode(claims, first_value, algorithm="HS256")
    service.command(lambda: service.ledger.refresh_token(admin, "admin token", grace_seconds=60))
    second_value = value_of(service, admin_token)
    as_second = service.auth.authenticate(second_value)
    by_second = pyjwt.encode(claims, second_value, algorithm="HS256")
    issued = service.command(lambda: service.ledger.issue_jwt(as_second, "i", exp, [], None))
    assert issued.jwt.admin_generation == service.signer.read(second_value).generation
    fake.advance(5)
    service.command(lambda: service.ledger.refresh_token(as_second, "admin token", grace_seconds=60))

    def valid(value: str) -> bool:
        try:
            return service.auth.authenticate(value).is_jwt
        except Unauthenticated:
            return False

    assert valid(by_first) and valid(by_second)  # both inside their own windows
    fake.advance(55)
    assert not valid(by_first) and valid(by_second)  # the first minute is over
    fake.advance(5)
    assert not valid(by_second)


# -- C: a write checks its caller against the store -------------------------------------------------


def test_a_write_by_a_value_deleted_on_another_server_is_refused(
    service: Service, workspace, database_url, tmp_path, environ
) -> None:
    _, admin = workspace
    token = _reader(service, admin)
    other = Service(database_url, data=tmp_path, environ=environ)
    try:
        # `other` authenticated the value before the delete and has not caught up since.
        as_token_there = caller_for(other, token)
        service.command(lambda: service.ledger.delete_token(admin, "leaked"))
        before = head(service)
        with pytest.raises(Unauthenticated):
            other.ledger.create_token(as_token_there, "after", ["PIPES:READ:p"])
        with pytest.raises(Unauthenticated):
            other.ledger.refresh_token(as_token_there, "leaked")
        assert head(service) == before
    finally:
        other.close()


def test_a_write_by_a_value_refreshed_out_on_another_server_is_refused(
    service: Service, workspace, database_url, tmp_path, environ
) -> None:
    _, admin = workspace
    token = _reader(service, admin)
    other = Service(database_url, data=tmp_path, environ=environ)
    try:
        as_token_there = caller_for(other, token)
        service.command(lambda: service.ledger.refresh_token(admin, "leaked"))
        before = head(service)
        with pytest.raises(Unauthenticated):
            other.ledger.create_token(as_token_there, "after", ["PIPES:READ:p"])
        assert head(service) == before
    finally:
        other.close()


def test_a_write_by_a_token_demoted_on_another_server_is_refused(
    service: Service, workspace, database_url, tmp_path, environ
) -> None:
    """Authenticated as a TOKENS token, demoted to a read token before its write runs: the write
    is judged by the scopes the token holds now, not those it held when the request began."""
    _, admin = workspace
    manager = service.command(lambda: service.ledger.create_token(admin, "manager", ["TOKENS"])).token
    other = Service(database_url, data=tmp_path, environ=environ)
    try:
        as_manager_there = caller_for(other, manager)
        service.command(lambda: service.ledger.update_token(admin, "manager", scopes=["PIPES:READ:p"]))
        before = head(service)
        with pytest.raises(Forbidden):
            other.ledger.create_token(as_manager_there, "after", ["PIPES:READ:p"])
        assert head(service) == before
    finally:
        other.close()


def test_a_deleted_value_stops_authenticating_on_another_server_within_the_bound(
    service: Service, workspace, database_url, tmp_path, environ
) -> None:
    """Two servers on one store: after a delete commits on one, the other refuses the value as a
    request would see it (`fresh()` or `sync()`, then authenticate) well inside 1 s."""
    _, admin = workspace
    token = _reader(service, admin)
    value = value_of(service, token)
    other = Service(database_url, data=tmp_path, environ=environ)

    def accepted_there() -> bool:
        if not other.fresh():
            other.sync()
        try:
            other.auth.authenticate(value)
            return True
        except Unauthenticated:
            return False

    try:
        deadline = time.monotonic() + 5
        while not other.fresh() and time.monotonic() < deadline:  # the listener is up (PostgreSQL)
            other.sync()
            time.sleep(0.01)
        assert accepted_there()
        service.command(lambda: service.ledger.delete_token(admin, "leaked"))
        committed = time.monotonic()
        while accepted_there():
            assert time.monotonic() - committed < 1.0, "the delete was not seen within 1 s"
            time.sleep(0.001)
    finally:
        other.close()


# -- C: a listener that stalls does not hide a revocation (PostgreSQL) ----------------------------


@pytest.fixture
def pg_url(make_pg_database) -> str:
    return make_pg_database()


def test_a_stalled_listener_does_not_hide_a_delete(pg_url, tmp_path, environ) -> None:
    from sqlalchemy.engine import make_url

    url = make_url(pg_url)
    proxy = FreezableProxy((url.host or "127.0.0.1", url.port or 5432))
    a = Service(pg_url, data=tmp_path, environ=environ)
    b = Service(
        pg_url,
        data=tmp_path,
        environ={
            **environ,
            "TOKENTRAIL_LISTEN_URL": url.set(host="127.0.0.1", port=proxy.port).render_as_string(False),
        },
    )
    try:
        setup = a.command(lambda: a.ledger.setup_workspace("main", "owner@example.com", Caller.system()))
        admin = a.auth.authenticate(value_of(a, setup.tokens[0]))
        token = a.command(lambda: a.ledger.create_token(admin, "doomed", ["PIPES:READ:p"])).token
        value = value_of(a, token)
        answered_from_memory: list[bool] = []

        def accepted_on_b() -> bool:
            known = b.fresh()
            answered_from_memory.append(known)
            if not known:
                b.sync()
            try:
                b.auth.authenticate(value)
                return True
            except Unauthenticated:
                return False

        deadline = time.monotonic() + 5
        while not b.fresh():  # B's listener is up, through the proxy, and B knows the head
            assert time.monotonic() < deadline
            b.sync()
            time.sleep(0.01)
        assert accepted_on_b()
        proxy.flowing.clear()  # the listening connection goes silent; its socket stays open
        a.command(lambda: a.ledger.delete_token(admin, "doomed"))
        committed = time.monotonic()
        answered_from_memory.clear()
        while accepted_on_b():
            assert time.monotonic() - committed < 1.0, "a stalled listener hid the delete"
            time.sleep(0.005)
        window = time.monotonic() - committed
        assert window <= b._head.LIVENESS_NS / 1e9 + 0.1, window
        # While the listener is silent B never answers from memory: it queries every time.
        time.sleep(b._head.LIVENESS_NS / 1e9)
        assert not b.fresh() and not b._head.listener_live
        # Traffic resumes (or the watchdog reconnects): B trusts its listener again.
        proxy.flowing.set()
        deadline = time.monotonic() + 10
        while not b.fresh():
            assert time.monotonic() < deadline, "the listener did not come back"
            b.sync()
            time.sleep(0.02)
    finally:
        proxy.close()
        b.close()
        a.close()


def test_a_listener_frozen_for_good_is_replaced(pg_url, tmp_path, environ) -> None:
    """A connection that never comes back (the NAT forgot it) is shut down by the watchdog and the
    listener reconnects: B answers from memory again without a restart."""
    from sqlalchemy.engine import make_url

    url = make_url(pg_url)
    proxy = FreezableProxy((url.host or "127.0.0.1", url.port or 5432))
    b = Service(
        pg_url,
        data=tmp_path,
        environ={
            **environ,
            "TOKENTRAIL_LISTEN_URL": url.set(host="127.0.0.1", port=proxy.port).render_as_string(False),
        },
    )
    try:
        deadline = time.monotonic() + 5
        while not b.fresh():
            assert time.monotonic() < deadline
            b.sync()
            time.sleep(0.01)
        first = list(proxy.sockets)
        proxy.flowing.clear()
        time.sleep(b._head.LIVENESS_NS / 1e9 + 0.1)
        assert not b.fresh()
        # New connections flow again; the frozen one stays frozen.
        for sock in first:
            proxy.sockets.remove(sock)
        frozen = proxy.flowing
        import threading

        proxy.flowing = threading.Event()
        proxy.flowing.set()
        deadline = time.monotonic() + b._head.STALL_NS / 1e9 + 5
        while not b.fresh():
            assert time.monotonic() < deadline, "the stalled listener was never replaced"
            b.sync()
            time.sleep(0.05)
        assert not frozen.is_set()
    finally:
        proxy.close()
        b.close()


def test_the_migration_carries_an_open_grace_window_over(service: Service, workspace) -> None:
    """A store made before `tt_tokens.grace` existed: the latest refreshed-out value keeps its window
    after the upgrade, and the migrated read model equals a rebuild."""
    from alembic import command

    from tokentrail.projections.rebuild import rebuild
    from tokentrail.storage.migrate import alembic_config

    FakeClock()
    _, admin = workspace
    token = _reader(service, admin, "t", ("PIPES:READ:p",))
    old = value_of(service, token)
    service.command(lambda: service.ledger.refresh_token(admin, "t", grace_seconds=60))
    before = service.queries.token(str(token.id)).grace
    assert [g for g, _ in before] == [service.signer.read(old).generation]
    with service.write_engine.begin() as conn:
        config = alembic_config(service.write_engine.url.render_as_string(hide_password=False))
        config.attributes["connection"] = conn
        command.downgrade(config, "0003")
        command.upgrade(config, "head")
    service.auth.tokens.clear()
    assert service.queries.token(str(token.id)).grace == before
    assert service.auth.authenticate(old).in_grace
    report = rebuild(service, verify=True)
    assert report.ok, report.differences
