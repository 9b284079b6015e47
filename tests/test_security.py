"""Security regressions: each test names an attack that once worked and checks it is refused,
writes nothing, and leaves the ledger fully readable, on real SQLite and PostgreSQL.

The policy matrix itself (every caller kind × operation × target) is walked in
tests/test_policy.py; crafted cursors and instants are in tests/test_crafted_input.py.
"""

from __future__ import annotations

import json
import time
from typing import Any
from uuid import uuid4

import pytest
from fastapi.testclient import TestClient

from domain.model import Token, TokenName, token_name_id
from domain.policy import Caller
from domain.values import new_generation
from projections.rebuild import rebuild
from projections.system import System
from projections.verify import verify_chain
from tests.test_api import (  # noqa: F401 - fixtures: client, ws
    assert_error,
    authenticates,
    client,
    create,
    create_jwt,
    head,
    path_of,
    url,
    ws,
)

LONG_SUM = "a = " + "+".join(["1"] * 600)  # ~1,200 characters as sent, ~2,400 once normalised
LONG_IN = "a IN (" + ",".join(["1"] * 1000) + ")"


def assert_ledger_readable(client: TestClient, system: System, admin: str) -> None:
    """Every reader still reads: introspection, the token table, rebuild --verify, audit verify."""
    response = client.get(url("/v0/auth", admin))
    assert response.status_code == 200 and response.json()["valid"], response.text
    assert client.get(url("/v0/tokens", admin)).status_code == 200
    assert client.get(url("/v0/audit", admin)).status_code == 200
    assert client.get(url("/v0/access", admin, resource="events")).status_code == 200
    report = rebuild(system, verify=True)
    assert report.ok, report.differences
    assert verify_chain(system).ok


# -- 1. A filter that grows when normalised can never be stored --------------------------------


@pytest.mark.parametrize("sql_filter", [LONG_SUM, LONG_IN])
def test_a_filter_longer_once_normalised_is_refused_before_anything_is_stored(client, system, ws, sql_filter) -> None:
    before = head(system)
    response = client.post(url("/v0/tokens", ws.admin, name="p", scope=f"DATASOURCES:READ:events:{sql_filter}"))
    assert_error(response, 400)
    assert "normalised" in response.json()["error"]
    assert head(system) == before
    assert_ledger_readable(client, system, ws.admin)


def test_a_long_filter_through_put_is_refused_and_writes_nothing(client, system, ws) -> None:
    token = create(client, ws.admin, "t", "DATASOURCES:READ:events")
    before = head(system)
    response = client.put(url(f"/v0/tokens/{token['id']}", ws.admin, scope=f"DATASOURCES:READ:events:{LONG_SUM}"))
    assert_error(response, 400)
    assert head(system) == before
    assert_ledger_readable(client, system, ws.admin)


def test_a_long_filter_in_a_jwt_body_is_refused_and_writes_nothing(client, system, ws) -> None:
    before = head(system)
    response = create_jwt(
        client, ws.admin, "j", [{"type": "DATASOURCES:READ", "resource": "events", "filter": LONG_SUM}]
    )
    assert_error(response, 400)
    assert head(system) == before
    assert_ledger_readable(client, system, ws.admin)


def test_history_written_under_looser_rules_stays_readable(client, system, ws) -> None:
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
        actor=actor, workspace_id=workspace_id, name="legacy", description="", scopes=legacy,
        origin={"type": "C"}, kind="custom", generation=new_generation(),
    )
    index = TokenName.create(workspace_id, "legacy", str(token.id), actor)
    system.command(lambda: _Saved(system.ledger._save([token, index])))
    assert_ledger_readable(client, system, ws.admin)
    listed = {t["name"]: t for t in client.get(url("/v0/tokens", ws.admin)).json()["tokens"]}
    assert len(listed["legacy"]["scopes"]) == 4
    # The legacy token is still managed normally: its scopes replaced by valid ones.
    response = client.put(url(f"/v0/tokens/{token.id}", ws.admin, scope="DATASOURCES:READ:events"))
    assert response.status_code == 200, response.text
    assert_ledger_readable(client, system, ws.admin)


class _Saved:
    def __init__(self, position: int) -> None:
        self.position = position


# -- 5. The right side of IN is constants, never a table ---------------------------------------


@pytest.mark.parametrize(
    "sql_filter",
    ["country IN secret_table", 'country GLOBAL IN "secret_table"', "country NOT IN db.secret",
     "country IN (secret_table)", "country GLOBAL IN ('ES')"],
)
def test_in_naming_a_table_is_refused(client, system, ws, sql_filter) -> None:
    before = head(system)
    response = client.post(url("/v0/tokens", ws.admin, name="t", scope=f"DATASOURCES:READ:events:{sql_filter}"))
    assert_error(response, 400)
    assert head(system) == before


def test_in_with_a_list_of_constants_is_accepted(client, ws) -> None:
    token = create(client, ws.admin, "t", "DATASOURCES:READ:events:country IN ('ES', 'FR') AND (a, b) IN ((1, 2))")
    assert token["scopes"][0]["filter"] == "country IN ('ES', 'FR') AND (a, b) IN ((1, 2))"
