"""The scope grammar and what grants what."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokentrail.domain.errors import ScopeError
from tokentrail.domain.scopes import (
    Scope,
    check_permission,
    grant_for,
    parse_scope,
    parse_scopes,
    scope_from_parts,
)

NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True)
FILTERS = st.sampled_from(
    ["", "a > 1", "org = 'acme'", "a > 'x:y' AND b < 2", "x IN (1, 2, 3)", "NOT (y IS NULL)", "c LIKE '%a+b%'"]
)


@st.composite
def valid_scopes(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["plain", "resource", "read"]))
    if kind == "plain":
        return draw(
            st.sampled_from(
                [
                    "ADMIN",
                    "TOKENS",
                    "DATASOURCES:CREATE",
                    "PIPES:CREATE",
                    "WORKSPACE:READ_ALL",
                    "WORKSPACE:DEPLOY",
                    "ORG_DATASOURCES:READ",
                ]
            )
        )
    if kind == "resource":
        return f"{draw(st.sampled_from(['DATASOURCES:APPEND', 'DATASOURCES:DROP', 'PIPES:DROP']))}:{draw(NAMES)}"
    text = f"{draw(st.sampled_from(['DATASOURCES:READ', 'PIPES:READ']))}:{draw(NAMES)}"
    filter_ = draw(FILTERS)
    return f"{text}:{filter_}" if filter_ else text


@given(valid_scopes())
def test_format_after_parse_is_the_identity_on_canonical_scopes(text: str) -> None:
    scope = parse_scope(text)
    assert str(scope) == text
    assert parse_scope(str(scope)) == scope


@given(st.text(max_size=200))
@settings(max_examples=500)
def test_random_strings_raise_only_the_named_error(text: str) -> None:
    try:
        scope = parse_scope(text)
    except ScopeError:
        return
    assert parse_scope(str(scope)) == scope


@given(st.text(alphabet=st.sampled_from(list("DATSOURCEPIRMNKW:_ad=>'()1 ;-/*#")), max_size=60))
@settings(max_examples=500)
def test_scope_shaped_noise_raises_only_the_named_error(text: str) -> None:
    try:
        parse_scope(text)
    except ScopeError:
        pass


def test_filter_is_split_after_the_resource_and_keeps_colons() -> None:
    scope = parse_scope("DATASOURCES:READ:t:a > 'x:y'")
    assert (scope.type, scope.resource, scope.filter) == ("DATASOURCES:READ", "t", "a > 'x:y'")
    assert scope.wire() == {"type": "DATASOURCES:READ", "resource": "t", "filter": "a > 'x:y'"}


def test_filters_are_stored_normalised() -> None:
    assert str(parse_scope("PIPES:READ:top:org='acme'  and   x>1")) == "PIPES:READ:top:org = 'acme' AND x > 1"


@pytest.mark.parametrize(
    "text, message",
    [
        ("FOO:BAR", "Unknown scope FOO:BAR"),
        ("", "scope is mandatory"),
        ("DATASOURCES:READ", "needs a resource"),
        ("ADMIN:x", "takes no resource"),
        ("DATASOURCES:APPEND:events:a > 1", "takes no filter"),
        ("DATASOURCES:READ:1events", "Invalid resource name"),
        ("DATASOURCES:READ:ev ents", "Invalid resource name"),
        ("DATASOURCES:READ:events:a = 1; DROP TABLE x", "single expression"),
        ("x" * 5000, "longer than"),
    ],
)
def test_malformed_scopes_are_refused_with_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(ScopeError, match=message):
        parse_scope(text)


def test_wire_shapes_follow_tinybird() -> None:
    assert parse_scope("ADMIN").wire() == {"type": "ADMIN"}
    assert parse_scope("DATASOURCES:APPEND:e").wire() == {"type": "DATASOURCES:APPEND", "resource": "e"}
    assert parse_scope("PIPES:READ:p").wire() == {"type": "PIPES:READ", "resource": "p", "filter": ""}


def test_scope_from_parts_joins_resource_and_filter() -> None:
    assert str(scope_from_parts("DATASOURCES:READ", "events", "a > 1")) == "DATASOURCES:READ:events:a > 1"
    with pytest.raises(ScopeError):
        scope_from_parts("DATASOURCES:READ", None, "a > 1")


def test_parse_scopes_deduplicates_equivalent_spellings() -> None:
    assert parse_scopes(["PIPES:READ:p:a=1", "PIPES:READ:p:a = 1", "ADMIN"]) == (
        Scope("PIPES:READ", "p", "a = 1"),
        Scope("ADMIN"),
    )


class TestGrants:
    def test_direct_read_grants_read_on_the_datasource_and_its_quarantine(self) -> None:
        scopes = parse_scopes(["DATASOURCES:READ:events"])
        assert grant_for(scopes, "datasource", "READ", "events").via == "DATASOURCES:READ:events"
        assert grant_for(scopes, "datasource", "READ", "events_quarantine").via == "DATASOURCES:READ:events"
        assert grant_for(scopes, "datasource", "READ", "other") is None
        assert grant_for(scopes, "datasource", "APPEND", "events") is None
        assert grant_for(scopes, "pipe", "READ", "events") is None

    def test_create_grants_append_everywhere_and_read_all_grants_read_everywhere(self) -> None:
        assert grant_for(parse_scopes(["DATASOURCES:CREATE"]), "datasource", "APPEND", "x").via == "DATASOURCES:CREATE"
        assert grant_for(parse_scopes(["DATASOURCES:CREATE"]), "datasource", "READ", "x") is None
        read_all = parse_scopes(["WORKSPACE:READ_ALL"])
        assert grant_for(read_all, "pipe", "READ", "p").via == "WORKSPACE:READ_ALL"
        assert grant_for(read_all, "datasource", "DROP", "x") is None

    def test_admin_grants_everything(self) -> None:
        for permission in ("READ", "APPEND", "DROP"):
            assert grant_for(parse_scopes(["ADMIN"]), "datasource", permission, "x").via == "ADMIN"

    def test_the_widest_grant_wins_and_an_unfiltered_grant_beats_a_filtered_one(self) -> None:
        filtered = "DATASOURCES:READ:e:a = 1"
        assert grant_for(parse_scopes([filtered]), "datasource", "READ", "e").filter == "a = 1"
        assert grant_for(parse_scopes([filtered, "DATASOURCES:READ:e"]), "datasource", "READ", "e").filter == ""
        assert (
            grant_for(parse_scopes([filtered, "WORKSPACE:READ_ALL"]), "datasource", "READ", "e").via
            == "WORKSPACE:READ_ALL"
        )
        assert grant_for(parse_scopes(["WORKSPACE:READ_ALL", "ADMIN"]), "datasource", "READ", "e").via == "ADMIN"

    def test_a_direct_quarantine_scope_beats_the_quarantine_rule(self) -> None:
        scopes = parse_scopes(["DATASOURCES:READ:e", "DATASOURCES:READ:e_quarantine"])
        assert grant_for(scopes, "datasource", "READ", "e_quarantine").via == "DATASOURCES:READ:e_quarantine"

    def test_workspace_permissions(self) -> None:
        assert check_permission(parse_scopes(["ADMIN"]), parse_scope("TOKENS")).via == "ADMIN"
        assert check_permission(parse_scopes(["TOKENS"]), parse_scope("TOKENS")).via == "TOKENS"
        assert check_permission(parse_scopes(["TOKENS"]), parse_scope("ADMIN")) is None
        assert check_permission(parse_scopes(["PIPES:READ:p"]), parse_scope("PIPES:READ:p")).via == "PIPES:READ:p"
