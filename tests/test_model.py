"""The Token aggregate's invariants, in memory: they hold whoever calls (a route, the console, a
deployment, a future use case), not only where the ledger happens to check them."""

from __future__ import annotations

import pytest

from tokentrail.domain.errors import Forbidden, InvalidInput
from tokentrail.domain.model import Token, TokenKind, accepts
from tokentrail.domain.values import new_generation

ACTOR = {"token_id": None, "name": "test", "request_id": None, "origin": "api", "deployment_id": None}


def token(kind: str = "custom", scopes: tuple[str, ...] = ("PIPES:READ:top",)) -> Token:
    return Token.create(
        actor=ACTOR,
        workspace_id="w",
        name="t",
        description="",
        scopes=list(scopes),
        origin={"type": "C"},
        kind=kind,
        generation=new_generation(),
    )


def test_the_kind_is_an_enum_stored_as_its_plain_string() -> None:
    t = token("datafile")
    assert t.kind is TokenKind.DATAFILE
    created = t.collect_events()[0]
    assert created.kind == "datafile" and type(created.kind) in (str, TokenKind)
    replayed = Token.Created.mutate(created, None)
    assert replayed.kind is TokenKind.DATAFILE


@pytest.mark.parametrize("kind", ["default", "user"])
def test_a_protected_token_is_refreshed_and_described_never_changed(kind: str) -> None:
    t = token(kind, ("ADMIN",))
    t.refresh(new_generation(), 0, ACTOR)
    t.describe("still fine", ACTOR)
    for change in (
        lambda: t.change_scopes(["TOKENS"], ACTOR),
        lambda: t.add_scope("TOKENS", ACTOR),
        lambda: t.remove_scope("ADMIN", ACTOR),
        lambda: t.rename("other", ACTOR),
        lambda: t.delete(ACTOR),
    ):
        with pytest.raises(Forbidden):
            change()
    assert t.scopes == ["ADMIN"] and not t.deleted


def test_a_token_always_holds_a_scope() -> None:
    t = token(scopes=("PIPES:READ:top",))
    with pytest.raises(InvalidInput, match="scope is mandatory"):
        t.remove_scope("PIPES:READ:top", ACTOR)
    with pytest.raises(InvalidInput):
        t.change_scopes([], ACTOR)
    t.change_scopes(["PIPES:READ:other"], ACTOR)  # replacing the only scope is fine
    assert t.scopes == ["PIPES:READ:other"]


def test_each_refreshed_out_generation_keeps_its_own_grace() -> None:
    t = token()
    first = t.generation
    t.refresh(new_generation(), 60, ACTOR)
    at_first = t.grace[first]
    second = t.generation
    t.refresh(new_generation(), 60, ACTOR)
    assert t.grace[first] == at_first and second in t.grace
    assert t.accepts(first, at_first - 1) and not t.accepts(first, at_first)
    assert accepts(t.generation, t.generation, {}, True, 0) is False  # deleted: nothing
