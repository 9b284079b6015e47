"""Security regressions: each test names an attack that once worked and checks it is refused,
writes nothing, and leaves the ledger fully readable, on real SQLite and PostgreSQL.

The policy matrix itself (every caller kind × operation × target) is walked in
tests/test_policy.py; crafted cursors and instants are in tests/test_crafted_input.py.
"""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from tests.test_api import assert_error, authenticates, create, create_jwt, head, path_of, url
from tokentrail.domain.model import Token, TokenName
from tokentrail.domain.policy import Caller
from tokentrail.domain.values import new_generation
from tokentrail.projections.rebuild import rebuild
from tokentrail.service import Service
from tokentrail.verify import verify_chain, verify_checkpoint

LONG_SUM = "a = " + "+".join(["1"] * 600)  # ~1,200 characters as sent, ~2,400 once normalised
LONG_IN = "a IN (" + ",".join(["1"] * 1000) + ")"


def assert_ledger_readable(client: TestClient, service: Service, admin: str) -> None:
    """Every reader still reads: introspection, the token table, rebuild --verify, audit verify."""
    response = client.get(url("/v0/auth", admin))
    assert response.status_code == 200 and response.json()["valid"], response.text
    assert client.get(url("/v0/tokens", admin)).status_code == 200
    assert client.get(url("/v0/audit", admin)).status_code == 200
    assert client.get(url("/v0/access", admin, resource="events")).status_code == 200
    report = rebuild(service, verify=True)
    assert report.ok, report.differences
    assert verify_chain(service).ok


# -- 1. A filter that grows when normalised can never be stored --------------------------------


@pytest.mark.parametrize("sql_filter", [LONG_SUM, LONG_IN])
def test_a_filter_longer_once_normalised_is_refused_before_anything_is_stored(client, service, ws, sql_filter) -> None:
    before = head(service)
    response = client.post(url("/v0/tokens", ws.admin, name="p", scope=f"DATASOURCES:READ:events:{sql_filter}"))
    assert_error(response, 400)
    assert "normalised" in response.json()["error"]
    assert head(service) == before
    assert_ledger_readable(client, service, ws.admin)


def test_a_long_filter_through_put_is_refused_and_writes_nothing(client, service, ws) -> None:
    token = create(client, ws.admin, "t", "DATASOURCES:READ:events")
    before = head(service)
    response = client.put(url(f"/v0/tokens/{token['id']}", ws.admin, scope=f"DATASOURCES:READ:events:{LONG_SUM}"))
    assert_error(response, 400)
    assert head(service) == before
    assert_ledger_readable(client, service, ws.admin)


def test_a_long_filter_in_a_jwt_body_is_refused_and_writes_nothing(client, service, ws) -> None:
    before = head(service)
    response = create_jwt(
        client, ws.admin, "j", [{"type": "DATASOURCES:READ", "resource": "events", "filter": LONG_SUM}]
    )
    assert_error(response, 400)
    assert head(service) == before
    assert_ledger_readable(client, service, ws.admin)


def test_history_written_under_looser_rules_stays_readable(client, service, ws) -> None:
    """A stored event is a fact: scopes stored before a rule tightened (here a filter far over
    today's limit, a table on the right of IN, a scope type we no longer know) are read back by
    every projection, rebuild and audit verify, and grant nothing they did not grant before."""
    legacy = [
        f"DATASOURCES:READ:events:{'a = ' + ' + '.join(['1'] * 1200)}",
        "DATASOURCES:READ:events:country IN secret_table",
        "DATASOURCES:READ:legacy:b = 1",
        "SOMETHING:RETIRED:x",
    ]
    actor = Caller.system().actor()
    workspace_id = ws.id
    token = Token.create(
        actor=actor,
        workspace_id=workspace_id,
        name="legacy",
        description="",
        scopes=legacy,
        origin={"type": "C"},
        kind="custom",
        generation=new_generation(),
    )
    index = TokenName.create(workspace_id, "legacy", str(token.id), actor)
    service.command(lambda: _Saved(service.ledger._save([token, index])))
    assert_ledger_readable(client, service, ws.admin)
    listed = {t["name"]: t for t in client.get(url("/v0/tokens", ws.admin)).json()["tokens"]}
    assert len(listed["legacy"]["scopes"]) == 4
    # The legacy token is still managed normally: its scopes replaced by valid ones.
    response = client.put(url(f"/v0/tokens/{token.id}", ws.admin, scope="DATASOURCES:READ:events"))
    assert response.status_code == 200, response.text
    assert_ledger_readable(client, service, ws.admin)


class _Saved:
    def __init__(self, position: int) -> None:
        self.position = position


# -- 5. The right side of IN is constants, never a table ---------------------------------------


@pytest.mark.parametrize(
    "sql_filter",
    [
        "country IN secret_table",
        'country GLOBAL IN "secret_table"',
        "country NOT IN db.secret",
        "country IN (secret_table)",
        "country GLOBAL IN ('ES')",
    ],
)
def test_in_naming_a_table_is_refused(client, service, ws, sql_filter) -> None:
    before = head(service)
    response = client.post(url("/v0/tokens", ws.admin, name="t", scope=f"DATASOURCES:READ:events:{sql_filter}"))
    assert_error(response, 400)
    assert head(service) == before


def test_in_with_a_list_of_constants_is_accepted(client, ws) -> None:
    token = create(client, ws.admin, "t", "DATASOURCES:READ:events:country IN ('ES', 'FR') AND (a, b) IN ((1, 2))")
    assert token["scopes"][0]["filter"] == "country IN ('ES', 'FR') AND (a, b) IN ((1, 2))"


# -- 8. One workspace's admin learns nothing of the others' activity through verify -------------


def test_verify_and_checkpoint_tell_a_workspace_admin_only_of_its_own_workspace(client, service, ws) -> None:
    from tests.test_api import make_realm

    other = make_realm(service, "other", "other@example.com")
    mine = client.get(url("/v0/audit/verify", ws.admin)).json()
    checkpoint = client.get(url("/v0/audit/checkpoint", ws.admin)).json()
    for i in range(5):  # the other workspace gets busy
        create(client, other.admin, f"busy{i}", "PIPES:READ:top")
    again = client.get(url("/v0/audit/verify", ws.admin)).json()
    assert again == mine and mine["ok"] is True
    with service.read_engine.connect() as conn:
        rows = conn.execute(
            text("SELECT position, hash FROM tt_audit WHERE workspace_id = :ws ORDER BY position"), {"ws": ws.id}
        ).all()
    assert mine["head"] == rows[-1][1] and mine["events_checked"] == len(rows) < head(service)
    assert client.get(url("/v0/audit/checkpoint", ws.admin)).json()["position"] == checkpoint["position"]
    assert (checkpoint["position"], checkpoint["head"]) == tuple(rows[-1])
    # A workspace's checkpoint is a prefix of the chain, checked like any other.
    held = verify_checkpoint(service, checkpoint, service.checkpoint_key().public_key())
    assert held.ok, held
    # The other admin's view moved with its own events.
    theirs = client.get(url("/v0/audit/verify", other.admin)).json()
    assert theirs["head"] != mine["head"]


def test_the_sqlite_file_and_its_journal_are_private_to_their_owner(tmp_path) -> None:
    import stat

    from tests.conftest import TEST_SECRET

    path = tmp_path / "data" / "tokentrail.db"
    service = Service(f"sqlite:///{path}", data=tmp_path, environ={"TOKENTRAIL_SECRET_KEY": TEST_SECRET})
    try:
        service.command(lambda: service.ledger.setup_workspace("w", "o@example.com", Caller.system()))
        files = [p for p in path.parent.iterdir() if p.name.startswith("tokentrail.db")]
        assert len(files) >= 2  # the database and its WAL
        for file in files:
            assert stat.S_IMODE(file.stat().st_mode) == 0o600, (file.name, oct(file.stat().st_mode))
    finally:
        service.close()


def test_a_jwt_with_a_future_iat_authenticates_as_on_tinybird(client, ws) -> None:
    import jwt as pyjwt

    issued = create_jwt(client, ws.admin, "j", [{"type": "PIPES:READ", "resource": "top"}]).json()["token"]
    claims = pyjwt.decode(issued, options={"verify_signature": False})
    admin = client.get(url(f"/v0/tokens/{path_of('admin token')}", ws.admin)).json()["token"]
    forged_iat = pyjwt.encode({**claims, "iat": int(time.time()) + 86_400}, admin, algorithm="HS256")
    assert authenticates(client, forged_iat)


# -- 2. A value in its grace window, or a token that manages none, cannot rotate anything -------


def test_a_leaked_value_in_its_grace_window_cannot_defeat_the_rotation(client, service, ws) -> None:
    leaked = create(client, ws.admin, "leaked", "DATASOURCES:READ:events")["token"]
    rotated = client.post(url("/v0/tokens/leaked/refresh", ws.admin, grace_seconds=300)).json()["token"]
    assert authenticates(client, leaked)  # inside its grace: it still reads...
    before = head(service)
    for attempt in (
        client.post(url("/v0/tokens/leaked/refresh", leaked)),  # ...but cannot refresh itself,
        client.get(url("/v0/tokens/leaked", leaked)),  # nor read its token (whose value is new),
        client.post(url("/v0/tokens", leaked, name="x", scope="DATASOURCES:READ:events")),
        create_jwt(client, leaked, "j", [{"type": "DATASOURCES:READ", "resource": "events"}]),
    ):
        assert attempt.status_code == 403, attempt.text
    assert head(service) == before and authenticates(client, rotated)


def test_an_admin_value_in_its_grace_window_manages_nothing(client, service, ws) -> None:
    old_admin = ws.admin
    client.post(url(f"/v0/tokens/{path_of('admin token')}/refresh", ws.admin, grace_seconds=300))
    assert authenticates(client, old_admin)
    before = head(service)
    assert_error(client.get(url("/v0/tokens", old_admin)), 403)
    assert_error(client.post(url("/v0/tokens", old_admin, name="x", scope="ADMIN")), 403)
    assert_error(client.post(url(f"/v0/tokens/{path_of('admin token')}/refresh", old_admin)), 403)
    assert_error(create_jwt(client, old_admin, "j", [{"type": "PIPES:READ", "resource": "top"}]), 403)
    assert head(service) == before


def test_a_token_that_manages_none_gets_403_refreshing_itself_as_on_tinybird(client, service, ws) -> None:
    creator = create(client, ws.admin, "creator", "DATASOURCES:CREATE")["token"]
    before = head(service)
    assert_error(client.post(url("/v0/tokens/creator/refresh", creator)), 403)
    assert head(service) == before and authenticates(client, creator)


def test_a_refreshed_out_value_is_not_a_reference_any_more(client, ws) -> None:
    old = create(client, ws.admin, "t", "PIPES:READ:top")["token"]
    client.post(url("/v0/tokens/t/refresh", ws.admin))
    for method in ("get", "put", "delete"):
        response = getattr(client, method)(url(f"/v0/tokens/{path_of(old)}", ws.admin))
        assert_error(response, 404)
    assert_error(client.post(url(f"/v0/tokens/{path_of(old)}/refresh", ws.admin)), 404)


# -- 3. A delegated ADMIN never reaches the owner's user-bound tokens ---------------------------


def test_a_delegated_admin_never_sees_nor_refreshes_the_owners_tokens(client, service, ws) -> None:
    delegated = create(client, ws.admin, "delegated", "ADMIN")["token"]
    owner_name = next(n for n in ws.tokens if n.startswith("admin ") and n != "admin token")
    owner_id = ws.id_of(owner_name)
    for caller in (delegated, ws.admin):
        listed = {t["name"]: t for t in client.get(url("/v0/tokens", caller)).json()["tokens"]}
        assert "token" not in listed[owner_name] and ws.value(owner_name) not in str(listed)
        one = client.get(url(f"/v0/tokens/{owner_id}", caller)).json()
        assert one["name"] == owner_name and "token" not in one
        before = head(service)
        assert_error(client.post(url(f"/v0/tokens/{owner_id}/refresh", caller)), 403)
        assert head(service) == before
    # The owner sees and refreshes its own.
    mine = client.get(url(f"/v0/tokens/{owner_id}", ws.value(owner_name))).json()
    assert mine["token"] == ws.value(owner_name)


# -- 6. Names look like what they are; a reference reaches one token ----------------------------


@pytest.mark.parametrize(
    "name",
    [
        "admin\u200b token",
        "admin\u2060token",
        "admin\u00a0token",
        "admin  token",
        "\ufeffadmin token",
        "ａdmin token",
        "admin\u202etoken",
    ],
)
def test_look_alike_names_are_refused(client, service, ws, name) -> None:
    before = head(service)
    assert_error(client.post(url("/v0/tokens", ws.admin, name=name, scope="PIPES:READ:top")), 400)
    token = create(client, ws.admin, "plain", "PIPES:READ:top")
    assert_error(client.put(url(f"/v0/tokens/{token['id']}", ws.admin, name=name)), 400)
    assert head(service) == before + 2  # only the plain token's two events


@pytest.mark.parametrize("shape", ["urn:uuid:{}", "{{{}}}", "{}"])
def test_a_name_cannot_spell_another_tokens_id(client, service, ws, shape) -> None:
    victim = ws.id_of("create datasource token")
    before = head(service)
    name = shape.format(victim) if shape != "{}" else victim.replace("-", "")
    assert_error(client.post(url("/v0/tokens", ws.admin, name=name, scope="PIPES:READ:top")), 400)
    assert head(service) == before


def test_get_and_put_of_one_reference_reach_one_token(client, ws) -> None:
    token = create(client, ws.admin, "t", "PIPES:READ:top")
    for ref in (token["id"], token["id"].replace("-", ""), token["id"].upper(), "t", token["token"]):
        got = client.get(url(f"/v0/tokens/{path_of(ref)}", ws.admin)).json()
        put = client.put(url(f"/v0/tokens/{path_of(ref)}", ws.admin, description=ref[:8])).json()
        assert got["id"] == put["id"] == token["id"]
    assert_error(client.get(url(f"/v0/tokens/{path_of('urn:uuid:' + token['id'])}", ws.admin)), 404)


@pytest.mark.parametrize(
    "name",
    [
        "Admin Token",
        "user token",
        "admin someone@example.com",
        "\u0430dmin token",
        "create  datasource token".replace("  ", " ").upper(),
    ],
)
def test_names_that_imitate_the_default_tokens_are_reserved(client, service, ws, name) -> None:
    before = head(service)
    response = client.post(url("/v0/tokens", ws.admin, name=name, scope="PIPES:READ:top"))
    assert_error(response, 400)
    assert "reserved" in response.json()["error"]
    assert head(service) == before


def test_ordinary_names_beginning_with_admin_are_fine(client, ws) -> None:
    assert create(client, ws.admin, "admin dashboard", "PIPES:READ:top")["name"] == "admin dashboard"


def test_the_owner_rotates_their_own_user_token_and_nobody_else_can(client, service, ws) -> None:
    """A leaked user token must be rotatable: by its user's `admin <email>` token, the only
    principal that reaches it across realms."""
    owner_name = next(n for n in ws.tokens if n.startswith("admin ") and n != "admin token")
    user_id, old = ws.id_of("user token"), ws.user
    before = head(service)
    delegated = create(client, ws.admin, "delegated", "ADMIN")["token"]
    for stranger in (ws.admin, delegated, old):  # not even the user token itself
        assert client.post(url(f"/v0/tokens/{user_id}/refresh", stranger)).status_code in (403, 404)
    assert head(service) == before + 2  # the delegated token's two events only
    answer = client.post(url(f"/v0/tokens/{user_id}/refresh", ws.value(owner_name)))
    assert answer.status_code == 200, answer.text
    assert answer.json()["token"] != old and authenticates(client, answer.json()["token"])
    assert not authenticates(client, old)


def test_introspection_parses_no_permission_for_an_anonymous_caller(client, ws) -> None:
    from tokentrail.domain.scopes import _parse_scope

    before = _parse_scope.cache_info()
    for i in range(20):
        permission = f"DATASOURCES:READ:events:a = {i} AND " + " AND ".join(["b = 1"] * 200)
        answer = client.get(url("/v0/auth", "p.not.valid", permission=permission))
        assert answer.status_code == 200 and answer.json()["valid"] is False
    after = _parse_scope.cache_info()
    assert (after.hits, after.misses) == (before.hits, before.misses)  # nothing parsed, nothing cached
    too_long = client.get(url("/v0/auth", ws.admin, permission="PIPES:READ:p:" + "a" * 5000))
    assert_error(too_long, 400)
