"""The audit export (`GET /v0/audit?format=ndjson|csv`, `/ui/audit/export.{fmt}`): its encoders
(`api/export.py`) write, byte for byte, what the export wrote when every row went through
`audit_event` and `json.dumps` / the CSV writer (the reference encoders below are that code);
they stream (generators of bounded chunks over lazily read pages); the filters, the workspace's
confinement and the refusals before streaming still hold."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

from sqlalchemy import event

from tests.test_api import Realm, create, url
from tokentrail.api.export import CHUNK_BYTES, CSV_COLUMNS, audit_body, ndjson_lines
from tokentrail.api.routes.ledger import audit_query
from tokentrail.api.wire import Params
from tokentrail.projections.history import AUDIT_COLUMNS, audit_event

# -- the reference: the export's encoders before they were rewritten ----------------------------


def reference_ndjson(events: Iterator[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in events).encode("utf-8")


def reference_csv(events: Iterator[dict[str, Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for event_ in events:
        flat = {**event_, "actor_token_id": event_["actor"]["token_id"], "actor_name": event_["actor"]["name"]}
        client, claims = event_.get("client") or {}, event_.get("claimed") or {}
        flat.update(
            client_address=client.get("address"),
            user_agent=client.get("user_agent"),
            claimed_origin=claims.get("origin"),
            claimed_request_id=claims.get("request_id"),
        )
        flat["scopes_before"] = json.dumps(event_["scopes_before"]) if event_["scopes_before"] is not None else ""
        flat["scopes_after"] = json.dumps(event_["scopes_after"]) if event_["scopes_after"] is not None else ""
        writer.writerow([reference_cell(flat.get(c)) for c in CSV_COLUMNS])
    return buffer.getvalue().encode("utf-8")


def reference_cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def events_of(rows: list[tuple[Any, ...]]) -> Iterator[dict[str, Any]]:
    return (audit_event(dict(zip(AUDIT_COLUMNS, r, strict=True))) for r in rows)


def encoded(rows: list[tuple[Any, ...]], fmt: str, page: int = 3) -> bytes:
    pages = [rows[i : i + page] for i in range(0, len(rows), page)]
    return b"".join(audit_body(iter(pages), fmt))


# -- rows with every kind of value ---------------------------------------------------------------

HASH = "ab" * 32
WS = "6f1c1b7e-0d7a-4c1e-9a53-1f0e6b0c9d11"


def row(**values: Any) -> tuple[Any, ...]:
    base: dict[str, Any] = {c: None for c in AUDIT_COLUMNS}
    base.update(position=1, at=1_767_225_600_123_456, type="Created", hash=HASH, aggregate="token")
    base.update(values)
    return tuple(base[c] for c in AUDIT_COLUMNS)


SQL_FILTER = "DATASOURCES:READ:events:country = 'ES' AND name LIKE '%\"x\\\\%' OR id IN (1, 2)"
ODD_TEXT = 'quo"te back\\slash new\nline tab\tcr\r nul\x00 del\x7f é 中 😀 =1+2'

ROWS = [
    row(),  # every nullable column NULL
    row(
        position=2,
        at=1_767_225_600_123_456,
        workspace_id=WS,
        token_id="t1",
        token_name="name with 'quotes' and \"doubles\" é",
        actor_token_id="a1",
        actor_name="admin token",
        request_id="r-1",
        origin="api",
        deployment_id="d1",
        scopes_before="[]",
        scopes_after=json.dumps([SQL_FILTER, "PIPES:READ:top"], separators=(",", ":")),
        details=json.dumps({"description": ODD_TEXT, "n": 2**70, "neg": -5}, separators=(",", ":"), sort_keys=True),
        client_address="127.0.0.1",
        user_agent=ODD_TEXT,
        claimed_origin="=cmd|' /C calc'!A0",
        claimed_request_id="-1+1",
    ),
    # The instants: the same second again, another second, before 1970, the last year; big positions.
    row(position=3, at=1_767_225_600_999_999, client_address="10.0.0.1"),
    row(position=4, at=-1, user_agent="@agent"),
    row(position=5, at=253_402_300_799_999_999, claimed_request_id="\tx"),
    row(position=2**63 - 1, at=0, claimed_origin="+x"),
    # JSON texts that are not their own compact encoding (written by hand or by an older version):
    # white space, floats, exponents, -0, escapes json.dumps would not write, raw non-ASCII.
    row(position=6, scopes_before='[ "A" , "B" ]', scopes_after='["\\u0041","\\/","\\u00E9","é"]'),
    row(position=7, details='{"b": 1.50, "a": 1e5, "c": -0, "d": [1.0, {"x": null}], "e": true}'),
    row(position=8, details='{"s":"\\ud83d\\ude00\\u0008\\u001f\\u007f\\n"}', scopes_after='["\\ud800"]'),
    row(position=9, details="", scopes_before="[]", scopes_after="[]"),  # empty details: null
    row(position=10, details="0", scopes_after='["' + "x" * 5000 + '"]'),  # falsy JSON, a long text
    row(position=11, details='{"k":"v","k2":{"deep":[[[]]]}}', token_name="\r\n", actor_name="-"),
]


def test_every_kind_of_value_encodes_to_the_old_bytes_in_ndjson_and_csv() -> None:
    for page in (1, 3, 100):
        assert encoded(ROWS, "ndjson", page) == reference_ndjson(events_of(ROWS))
        assert encoded(ROWS, "csv", page) == reference_csv(events_of(ROWS))


def test_repeated_texts_encode_the_same_every_time() -> None:
    # The re-encodings are remembered by text: the second time must be the same bytes.
    rows = ROWS * 3
    assert encoded(rows, "ndjson") == reference_ndjson(events_of(rows))
    assert encoded(rows, "csv") == reference_csv(events_of(rows))


def test_an_empty_trail_is_an_empty_ndjson_and_a_header_only_csv() -> None:
    assert encoded([], "ndjson") == b""
    assert encoded([], "csv") == reference_csv(iter(()))


# -- streaming: generators of bounded chunks over lazily read pages -------------------------------


def test_the_encoder_pulls_pages_as_it_goes_and_yields_bounded_chunks() -> None:
    pulled = 0
    template = dict(zip(AUDIT_COLUMNS, ROWS[1], strict=True))
    line = len("".join(ndjson_lines([[ROWS[1]]])))

    def pages() -> Iterator[list[tuple[Any, ...]]]:
        nonlocal pulled
        for i in range(400):
            pulled += 1
            yield [row(**{**template, "position": i * 100 + j}) for j in range(100)]

    body = audit_body(pages(), "ndjson")
    assert pulled == 0  # nothing read before the first chunk is asked for
    first = next(body)
    assert CHUNK_BYTES <= len(first) < CHUNK_BYTES + line
    assert pulled <= CHUNK_BYTES // (100 * line) + 2  # a few pages, not the 400
    sizes = [len(first)] + [len(chunk) for chunk in body]
    assert pulled == 400 and all(size < CHUNK_BYTES + line for size in sizes) and len(sizes) > 10


def test_reading_the_rows_is_lazy_and_a_page_at_a_time(client, service, ws: Realm) -> None:
    for i in range(30):
        create(client, ws.admin, f"lazy{i}", "PIPES:READ:top")
    history = service.reads.history
    who = service.auth.authenticate(ws.admin)
    query = service.reads._own(who, audit_query(who, Params([])))
    total = len([r for p in history.audit_rows(query, page=10) for r in p])
    assert total > 30
    checkouts = 0

    def counted(*_: Any) -> None:
        nonlocal checkouts
        checkouts += 1

    event.listen(history.engine, "checkout", counted)
    try:
        pages = history.audit_rows(query, page=5)
        assert checkouts == 0  # nothing is read before the first page is asked for
        first = next(pages)
        # The workspace's first page and the next one (read ahead), the owner's first (and only)
        # page: not the workspace's 7+ pages.
        assert len(first) == 5 and checkouts <= 3 < total // 5
        pages.close()  # a client gone mid-export: nothing more is read
        assert checkouts <= 3
    finally:
        event.remove(history.engine, "checkout", counted)


# -- through the API, on both backends ------------------------------------------------------------


def old_export(service, value: str, fmt: str, **filters: str) -> bytes:
    """What the export wrote before: the dict stream (`Reads.audit_stream`) and the old encoders."""
    who = service.auth.authenticate(value)
    stream = service.reads.audit_stream(who, audit_query(who, Params(list(filters.items()))))
    return reference_ndjson(stream) if fmt == "ndjson" else reference_csv(stream)


def test_the_api_exports_are_the_old_bytes_with_and_without_filters(client, service, ws, other) -> None:
    headers = {"User-Agent": 'agent "quoted" \\ =1', "X-Request-Id": 'req-"1"', "X-Tokentrail-Origin": "@ci"}
    made = client.post(
        url(
            "/v0/tokens",
            ws.admin,
            name="exported",
            scope=["DATASOURCES:READ:events:country = 'ES' AND name LIKE '%\"x%'", "PIPES:READ:top"],
            description='line one\nline "two" \\ é 中 😀',
        ),
        headers=headers,
    )
    assert made.status_code == 200, made.text
    token = made.json()
    client.put(url(f"/v0/tokens/{token['id']}", ws.admin, description="=SUM(A1)", scope=["PIPES:READ:top"]))
    client.post(url(f"/v0/tokens/{token['id']}/refresh", ws.admin, grace_seconds=60))
    for i in range(12):
        create(client, ws.admin, f"bulk{i}", "PIPES:READ:top")
    client.delete(url(f"/v0/tokens/{token['id']}", ws.admin))
    create(client, other.admin, "elsewhere", "PIPES:READ:top")
    events = client.get(url("/v0/audit", ws.admin, limit=1000)).json()["events"]
    middle = events[len(events) // 2]["at"]
    cases: list[dict[str, str]] = [
        {},
        {"token_id": token["id"]},
        {"event": "Created,Deleted"},
        {"from": middle},
        {"to": middle},
        {"actor": "admin token"},
        {"resource": "events"},
    ]
    for fmt in ("ndjson", "csv"):
        for filters in cases:
            answer = client.get(url("/v0/audit", ws.admin, format=fmt, **filters))
            assert answer.status_code == 200
            assert answer.content == old_export(service, ws.admin, fmt, **filters), (fmt, filters)
        whole = client.get(url("/v0/audit", ws.admin, format=fmt)).content
        assert b"elsewhere" not in whole and b"exported" in whole  # the caller's workspace only
        assert ws.admin.encode() not in whole and token["token"].encode() not in whole
    lines = [json.loads(line) for line in client.get(url("/v0/audit", ws.admin, format="ndjson")).text.splitlines()]
    assert len(lines) == len(events) and [e["position"] for e in lines] == [e["position"] for e in events]
    answer = client.get(url("/v0/audit", ws.admin, format="ndjson", token_id=token["id"]))
    filtered = [json.loads(line) for line in answer.text.splitlines()]
    assert filtered == client.get(url("/v0/audit", ws.admin, token_id=token["id"], limit=1000)).json()["events"]
    assert {e["token_id"] for e in filtered} == {token["id"]} and len(filtered) >= 4


def test_refusals_come_before_any_byte_of_the_stream(client, ws) -> None:
    reader = create(client, ws.admin, "reader", "PIPES:READ:top")
    for fmt in ("ndjson", "csv"):
        refused = client.get(url("/v0/audit", reader["token"], format=fmt))
        assert refused.status_code == 403 and "error" in refused.json()
        bad = client.get(url("/v0/audit", ws.admin, format=fmt, **{"from": "yesterday-ish"}))
        assert bad.status_code == 400 and "error" in bad.json()
    assert client.get(url("/v0/audit", reader["token"], format="xml")).status_code == 403
    assert client.get(url("/v0/audit", ws.admin, format="xml")).status_code == 400
