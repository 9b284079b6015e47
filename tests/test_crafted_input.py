"""Crafted cursors and instants are 400s, never 500s (security issue, item 4), on SQLite and
PostgreSQL, through the JSON API and the console.

A cursor is the opaque `next_cursor` of the previous audit page; an instant is ISO 8601 with an
offset or Unix seconds. Both are parsed totally: the known attacks (a position of 1e400, Infinity
or 10**29, 5,000 nested brackets; instants whose UTC form leaves years 1..9999) get a named 400,
and a hypothesis property throws random text, floats and unicode at every route that reads one.
"""

from __future__ import annotations

import base64
import json
from urllib.parse import quote, quote_plus

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.test_api import Realm, assert_error, head, url
from tests.test_ui import Console
from tokentrail.api.app import create_app
from tokentrail.domain.clock import MAX_MICROS, MIN_MICROS, format_instant, parse_instant
from tokentrail.domain.errors import InvalidInput
from tokentrail.projections.history import MAX_POSITION, decode_cursor, encode_cursor
from tokentrail.service import Service


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


HOSTILE_CURSORS = {
    "1e400": b64(b'{"p": 1e400}'),
    "Infinity": b64(b'{"p": Infinity}'),
    "NaN": b64(b'{"p": NaN}'),
    "-Infinity": b64(b'{"p": -Infinity}'),
    "10**29": b64(json.dumps({"p": 10**29}).encode()),
    "2**63": b64(json.dumps({"p": 2**63}).encode()),
    "negative": b64(b'{"p": -1}'),
    "float": b64(b'{"p": 1.0}'),
    "bool": b64(b'{"p": true}'),
    "string": b64(b'{"p": "5"}'),
    "null": b64(b'{"p": null}'),
    "extra key": b64(b'{"p": 1, "q": 2}'),
    "list": b64(b"[1]"),
    "5000 nested [": b64(b"[" * 5000),
    "5000 nested { p": b64(b'{"p":' * 5000),
    "not json": b64(b"\xff\xfe"),
    "not base64": "%%%",
    "padding inside": "eyJwIjogMX0=x",
    "unicode": "é" * 10,
    "long": "A" * 65,
}

HOSTILE_INSTANTS = [
    "9999-12-31T23:59:59-14:00",
    "0001-01-01T00:00:00+14:00",
    "253402300800",
    "253402300799.9999999",
    "1e400",
    "inf",
    "-inf",
    "Infinity",
    "nan",
    "NaN",
    "-1",
    "10000-01-01T00:00:00+00:00",
    "2026-03-01T12:00:00",  # no offset
    "２０２６",
    "x" * 65,
]


# -- the parsers, directly ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(HOSTILE_CURSORS))
def test_a_hostile_cursor_is_invalid_input(name: str) -> None:
    with pytest.raises(InvalidInput):
        decode_cursor(HOSTILE_CURSORS[name])


def test_a_cursor_round_trips_up_to_the_largest_position() -> None:
    for position in (0, 1, 2**31, MAX_POSITION):
        assert decode_cursor(encode_cursor(position)) == position


@pytest.mark.parametrize("raw", HOSTILE_INSTANTS)
def test_a_hostile_instant_is_invalid_input(raw: str) -> None:
    with pytest.raises(InvalidInput):
        parse_instant(raw)


def test_the_first_and_last_instants_are_accepted_and_format() -> None:
    assert format_instant(parse_instant("0001-01-01T00:00:00+00:00")).startswith("0001-01-01T00:00:00")
    assert parse_instant("0001-01-01T00:00:00+00:00") == MIN_MICROS
    assert parse_instant("9999-12-31T23:59:59.999999+00:00") == MAX_MICROS
    assert format_instant(MAX_MICROS).startswith("9999-12-31T23:59:59.999999")
    assert parse_instant("1700000000.5") == 1_700_000_000_500_000


@given(st.one_of(st.text(max_size=80), st.floats().map(repr), st.integers().map(str)))
def test_parse_instant_is_total(raw: str) -> None:
    try:
        micros = parse_instant(raw)
    except InvalidInput:
        return
    assert MIN_MICROS <= micros <= MAX_MICROS
    format_instant(micros)


@given(
    st.one_of(
        st.text(max_size=100),
        st.binary(max_size=80).map(b64),
        st.recursive(
            st.integers() | st.floats() | st.text(max_size=5) | st.none(),
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.just("p"), inner),
            max_leaves=5,
        ).map(lambda d: b64(json.dumps(d).encode())),
    )
)
def test_decode_cursor_is_total(cursor: str) -> None:
    try:
        position = decode_cursor(cursor)
    except InvalidInput:
        return
    assert 0 <= position <= MAX_POSITION


# -- over HTTP, on both backends --------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(HOSTILE_CURSORS))
def test_a_hostile_audit_cursor_is_400(client, service, ws, name) -> None:  # noqa: F811
    before = head(service)
    assert_error(client.get(url("/v0/audit", ws.admin) + "&cursor=" + quote(HOSTILE_CURSORS[name], safe="")), 400)
    assert head(service) == before


def instant_urls(token: str, raw: str) -> list[str]:
    return [
        url("/v0/tokens", token, as_of=raw),
        url("/v0/tokens/admin token", token, as_of=raw),
        url("/v0/access", token, resource="events", as_of=raw),
        url("/v0/access/diff", token, **{"from": raw}),
        url("/v0/access/diff", token, **{"from": "0", "to": raw}),
        url("/v0/audit", token, **{"from": raw}),
        url("/v0/audit", token, to=raw),
        url("/v0/audit", token, to=raw, format="csv"),
    ]


@pytest.mark.parametrize("raw", HOSTILE_INSTANTS)
def test_a_hostile_instant_is_400_on_every_route_that_reads_one(client, service, ws, raw) -> None:  # noqa: F811
    before = head(service)
    for target in instant_urls(ws.admin, raw):
        assert_error(client.get(target), 400)
    assert head(service) == before


def console_instant_urls(raw: str) -> list[str]:
    q = quote_plus(raw)
    return [
        f"/ui/access?resource=events&at={q}",
        f"/ui/access?resource=events&compare={q}",
        f"/ui/audit?from={q}",
        f"/ui/audit?to={q}",
        f"/ui/audit/export.csv?from={q}",
        f"/ui/audit/export.ndjson?to={q}",
    ]


def signed_in_console(service: Service, realm: Realm) -> Console:
    browser = Console(TestClient(create_app(service), raise_server_exceptions=False))
    assert browser.sign_in(realm.admin).status_code == 303
    return browser


@pytest.mark.parametrize("raw", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "1e400", "nan"])
def test_a_hostile_instant_is_400_on_every_console_page_that_reads_one(service, ws, raw) -> None:  # noqa: F811
    browser = signed_in_console(service, ws)
    for target in console_instant_urls(raw):
        answer = browser.get(target)
        assert answer.status_code == 400, (target, answer.status_code)
    for name in ("1e400", "5000 nested [", "10**29"):
        assert browser.get(f"/ui/audit?cursor={quote(HOSTILE_CURSORS[name], safe='')}").status_code == 400


# -- the property: random cursors and instants at every such route, never a 5xx ---------------------

instants = st.one_of(
    st.text(max_size=40),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.datetimes().map(lambda d: d.isoformat()),
    st.builds(
        lambda d, h, m: f"{d.isoformat()}{'+' if h >= 0 else '-'}{abs(h):02d}:{m:02d}",
        st.datetimes(),
        st.integers(-23, 23),
        st.integers(0, 59),
    ),
)
cursors = st.one_of(
    st.text(max_size=80),
    st.binary(max_size=60).map(b64),
    st.one_of(
        st.integers(min_value=-(10**40), max_value=10**40), st.floats(), st.text(max_size=4), st.booleans(), st.none()
    ).map(lambda p: b64(json.dumps({"p": p}).encode())),
    st.integers(0, 6000).map(lambda n: b64(b"[" * n)),
)


def _quoted(value: str) -> str:
    return quote(value.encode("utf-8", "surrogatepass").decode("utf-8", "replace"), safe="")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(instant=instants, cursor=cursors)
# The reported attacks, always among the examples (random runs find them only some of the time).
@example(instant="9999-12-31T23:59:59-14:00", cursor=HOSTILE_CURSORS["1e400"])
@example(instant="0001-01-01T00:00:00+14:00", cursor=HOSTILE_CURSORS["Infinity"])
@example(instant="1e400", cursor=HOSTILE_CURSORS["10**29"])
@example(instant="nan", cursor=HOSTILE_CURSORS["5000 nested ["])
def test_random_cursors_and_instants_never_give_a_5xx(client, service, ws, instant: str, cursor: str) -> None:  # noqa: F811
    before = head(service)
    q = _quoted(instant)
    targets = [
        f"/v0/tokens?as_of={q}",
        f"/v0/tokens/{quote(ws.admin_id)}?as_of={q}",
        f"/v0/access?resource=events&as_of={q}",
        f"/v0/access/diff?from={q}&to={q}",
        f"/v0/audit?from={q}&to={q}&cursor={_quoted(cursor)}",
        f"/v0/audit?cursor={_quoted(cursor)}&limit=1",
        f"/v0/tokens/{quote(ws.admin_id)}/history?as_of={q}&cursor={_quoted(cursor)}",
        f"/v0/audit/checkpoint?as_of={q}",
    ]
    for target in targets:
        answer = client.get(target + f"&token={ws.admin}")
        assert answer.status_code < 500, (target, answer.status_code, answer.text[:200])
        if answer.status_code >= 400:
            assert answer.json()["error"]
    assert head(service) == before


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(instant=instants, cursor=cursors)
@example(instant="9999-12-31T23:59:59-14:00", cursor=HOSTILE_CURSORS["5000 nested ["])
@example(instant="0001-01-01T00:00:00+14:00", cursor=HOSTILE_CURSORS["1e400"])
def test_random_instants_never_give_a_5xx_in_the_console(service, ws, instant: str, cursor: str) -> None:  # noqa: F811
    browser = _console_for(service, ws)
    for target in [*console_instant_urls(instant), f"/ui/audit?cursor={_quoted(cursor)}"]:
        answer = browser.get(target)
        assert answer.status_code < 500, (target, answer.status_code)


_console: list[tuple[Service, Console]] = []


def _console_for(service: Service, realm: Realm) -> Console:
    """One signed-in console per service: hypothesis runs the test body many times per fixture."""
    if not _console or _console[0][0] is not service:
        _console[:] = [(service, signed_in_console(service, realm))]
    return _console[0][1]
