"""`GET /v0/tokens` at size: the same bytes as the marshmallow dump, paging with `limit` and
`cursor` (now and as of an instant), and the per-token fragment cache behind the fast listing.

On real SQLite and PostgreSQL (the `client` fixture's backends)."""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.responses import JSONResponse

from tests.api_helpers import Realm, assert_error, authenticates, create, head, names, path_of, url
from tokentrail.api import present
from tokentrail.domain.clock import format_instant, now, to_micros
from tokentrail.service import Service

FILTERED = "DATASOURCES:READ:events:country = 'ES' and note = \"a \\\\ b\""


def reference(service: Service, value: str) -> bytes:
    """What the listing answered before the fast path: every row through TokenSchema, rendered by
    JSONResponse. Computed from the read models, independently of the fragment cache, with the last
    uses as the listing just saw them (authenticating here is a use too)."""
    used = service.usage.all_last_used()
    who = service.auth.authenticate(value)
    return JSONResponse({"tokens": present.token_objects(service, service.reads.tokens(who), who, used)}).body


def listing(client: TestClient, value: str, **params: Any) -> dict[str, Any]:
    response = client.get(url("/v0/tokens", value, **params))
    assert response.status_code == 200, response.text
    return response.json()


def walk(client: TestClient, value: str, limit: int, between=None, **params: Any) -> list[dict[str, Any]]:
    """Every page of a listing, in order; `between(page_number)` runs after each page but the last."""
    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    for page in range(1000):
        answer = listing(client, value, limit=limit, **({"cursor": cursor} if cursor else {}), **params)
        assert len(answer["tokens"]) <= limit
        seen += answer["tokens"]
        cursor = answer["next_cursor"]
        if cursor is None:
            return seen
        assert answer["tokens"], "a page with a next_cursor is never empty"
        if between is not None:
            between(page)
    raise AssertionError("the walk does not end")


def unused(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Token objects without `last_used_at`, which every request moves for its caller."""
    return [{k: v for k, v in t.items() if k != "last_used_at"} for t in objects]


def many(client: TestClient, ws: Realm, count: int, prefix: str = "t") -> list[dict[str, Any]]:
    return [create(client, ws.admin, f"{prefix}{i}", "PIPES:READ:top") for i in range(count)]


# -- the full answer, unchanged ------------------------------------------------------------------


def test_the_listing_is_byte_for_byte_the_schema_dump_for_every_kind_of_caller(client, service, ws) -> None:
    create(client, ws.admin, 'naïve «quoted» "name" \U0001f511', FILTERED, description='line\nbreak "and" \\ é')
    create(client, ws.admin, "from a pipe", "PIPES:READ:top", origin="P", resource_id="t_abc")
    create(client, ws.admin, "expiring", "PIPES:READ:top", expiration_time=int(time.time()) + 3600)
    manager = create(client, ws.admin, "manager", "TOKENS")
    assert authenticates(client, manager["token"])  # a last use to show
    for value in (ws.admin, manager["token"]):
        for _ in range(2):  # cold, then from the fragment cache
            response = client.get(url("/v0/tokens", value))
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/json"
            assert response.content == reference(service, value)
    # The TOKENS caller sees some values and not others (the admin tokens' are hidden from it).
    objects = listing(client, manager["token"])["tokens"]
    assert any("token" in t for t in objects) and any("token" not in t for t in objects)
    assert "next_cursor" not in listing(client, ws.admin)  # Tinybird's shape without paging params


# -- paging ---------------------------------------------------------------------------------------


def test_paging_walks_the_whole_list_once_in_its_order(client, ws) -> None:
    many(client, ws, 23)
    full = unused(listing(client, ws.admin)["tokens"])
    for limit in (1, 4, 23, 10_000):
        assert unused(walk(client, ws.admin, limit)) == full
    last = listing(client, ws.admin, limit=len(full))
    assert unused(last["tokens"]) == full and last["next_cursor"] is None


def test_paging_while_tokens_are_created_changed_and_deleted_between_pages(client, ws) -> None:
    """Creation order: a token alive through the walk is listed exactly once (renamed or not), one
    created during it comes on a later page, one deleted before its page is not listed."""
    made = many(client, ws, 12)
    before = [t["id"] for t in listing(client, ws.admin)["tokens"]]
    late: list[str] = []

    def change(page: int) -> None:
        if page == 0:  # after the first page (5 tokens): the first 2 are default tokens
            client.delete(url(f"/v0/tokens/{made[0]['id']}", ws.admin))  # already listed
            client.delete(url(f"/v0/tokens/{made[9]['id']}", ws.admin))  # not yet listed
            client.put(url(f"/v0/tokens/{made[8]['id']}", ws.admin, name="renamed"))
            late.append(create(client, ws.admin, "late", "PIPES:READ:top")["id"])

    seen = [t["id"] for t in walk(client, ws.admin, 5, between=change)]
    assert len(seen) == len(set(seen))
    expected = [i for i in before if i != made[9]["id"]] + late
    assert seen == expected
    assert {t["id"]: t["name"] for t in listing(client, ws.admin)["tokens"]}[made[8]["id"]] == "renamed"


def test_as_of_listings_page_too(client, ws) -> None:
    many(client, ws, 9)
    time.sleep(0.01)
    at = format_instant(to_micros(now()))
    create(client, ws.admin, "after", "PIPES:READ:top")
    full = listing(client, ws.admin, as_of=at)
    assert "next_cursor" not in full
    paged = walk(client, ws.admin, 4, as_of=at)
    assert paged == full["tokens"] and "after" not in [t["name"] for t in paged]
    page = listing(client, ws.admin, as_of=at, limit=2)
    assert page["as_of"] == full["as_of"] and len(page["tokens"]) == 2 and page["next_cursor"]


def _flip(text: str) -> str:
    payload, tag = text.split(".")
    raw = bytearray(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    raw[-2] = ord("9")  # {"p": 1234} -> another position, the same tag
    return base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=") + "." + tag


@pytest.mark.parametrize("limit", ["0", "10001", "-1", "abc", "", "1.5", " ", "1e3", "٣"])
def test_a_limit_out_of_range_is_400_and_writes_nothing(client, service, ws, limit) -> None:
    before = head(service)
    assert_error(client.get(url("/v0/tokens", ws.admin) + f"&limit={limit}"), 400)
    assert_error(
        client.get(url("/v0/tokens", ws.admin, as_of=format_instant(to_micros(now()))) + f"&limit={limit}"), 400
    )
    assert head(service) == before


def test_a_cursor_not_of_this_listing_is_400_and_writes_nothing(client, service, ws, other) -> None:
    many(client, ws, 4)
    many(client, other, 4)
    at = format_instant(to_micros(now()))
    mine = listing(client, ws.admin, limit=2)["next_cursor"]
    mine_then = listing(client, ws.admin, limit=2, as_of=at)["next_cursor"]
    theirs = listing(client, other.admin, limit=2)["next_cursor"]
    theirs_then = listing(client, other.admin, limit=2, as_of=at)["next_cursor"]
    assert listing(client, ws.admin, limit=2, cursor=mine)["tokens"]
    earlier = format_instant(to_micros(now()) - 1_000_000)
    before = head(service)
    for cursor, params in (
        ("garbage", {}),
        ("", {}),
        ("x" * 5000, {}),
        (mine + "x", {}),
        (mine[:-1] + ("A" if mine[-1] != "A" else "B"), {}),  # another tag
        (_flip(mine), {}),  # another position under the old tag
        (theirs, {}),  # another workspace's
        (mine_then, {}),  # an as_of listing's, used now
        (mine, {"as_of": at}),  # now's, used as of an instant
        (mine_then, {"as_of": earlier}),  # another instant's
        (theirs_then, {"as_of": at}),
    ):
        response = client.get(url("/v0/tokens", ws.admin, cursor=cursor, limit=2, **params))
        assert_error(response, 400)
        assert "cursor" in response.json()["error"]
    assert head(service) == before


def test_a_cursor_alone_pages_with_the_default_size(client, ws) -> None:
    many(client, ws, 3)
    first = listing(client, ws.admin, limit=1)
    rest = listing(client, ws.admin, cursor=first["next_cursor"])
    assert unused(first["tokens"] + rest["tokens"]) == unused(listing(client, ws.admin)["tokens"])
    assert rest["next_cursor"] is None


def test_unused_for_takes_no_paging(client, ws) -> None:
    assert listing(client, ws.admin, unused_for="0")["tokens"]
    assert_error(client.get(url("/v0/tokens", ws.admin, unused_for="0", limit=5)), 400)


def test_paging_needs_the_right_to_list_first(client, ws) -> None:
    reader = create(client, ws.admin, "reader", "PIPES:READ:top")["token"]
    assert_error(client.get(url("/v0/tokens", reader, limit=1, cursor="garbage")), 403)


# -- the fragment cache ---------------------------------------------------------------------------


def test_every_kind_of_change_shows_in_the_next_listing(client, service, ws) -> None:
    """The listing after each change equals the schema dump of the read models: a fragment kept
    after its token changed (rename, description, scopes, origin-free edits, expiry set and
    removed, refresh, delete) would fail it."""
    token = many(client, ws, 3)[1]
    ref = token["id"]
    changes = [
        lambda: client.put(url(f"/v0/tokens/{ref}", ws.admin, name="renamed")),
        lambda: client.put(url(f"/v0/tokens/{ref}", ws.admin, description="now described")),
        lambda: client.put(url(f"/v0/tokens/{ref}", ws.admin, scope=["DATASOURCES:APPEND:events", FILTERED])),
        lambda: client.put(url(f"/v0/tokens/{ref}", ws.admin, expiration_time=int(time.time()) + 600)),
        lambda: client.put(url(f"/v0/tokens/{ref}", ws.admin, expiration_time="none")),
        lambda: client.post(url(f"/v0/tokens/{path_of(ref)}/refresh", ws.admin)),
        lambda: client.delete(url(f"/v0/tokens/{ref}", ws.admin)),
    ]
    assert client.get(url("/v0/tokens", ws.admin)).content == reference(service, ws.admin)  # warm
    for change in changes:
        assert change().status_code == 200
        assert client.get(url("/v0/tokens", ws.admin)).content == reference(service, ws.admin)
    assert ref not in [t["id"] for t in listing(client, ws.admin)["tokens"]]
    assert "renamed" not in names(client.get(url("/v0/tokens", ws.admin)))


def test_a_refresh_lists_the_new_value_and_not_the_old(client, ws) -> None:
    token = many(client, ws, 2)[0]
    listing(client, ws.admin)  # warm
    fresh = client.post(url(f"/v0/tokens/{token['id']}/refresh", ws.admin)).json()["token"]
    listed = {t["id"]: t.get("token") for t in listing(client, ws.admin)["tokens"]}
    assert listed[token["id"]] == fresh != token["token"]


def test_the_fragment_cache_is_bounded_and_stays_correct_past_its_bound(client, service, ws, monkeypatch) -> None:
    small = present.FragmentCache(max_entries=3)
    monkeypatch.setattr(present, "fragments", small)
    many(client, ws, 6)
    listed = len(listing(client, ws.admin)["tokens"])
    for _ in range(2):
        assert client.get(url("/v0/tokens", ws.admin)).content == reference(service, ws.admin)
        assert len(small) <= 3
    assert small.misses >= listed + 2  # what no longer fits is dumped again


def test_the_fragment_cache_reuses_unchanged_tokens(client, service, ws, monkeypatch) -> None:
    cache = present.FragmentCache()
    monkeypatch.setattr(present, "fragments", cache)
    many(client, ws, 5)
    listing(client, ws.admin)
    cold = cache.misses
    client.put(url("/v0/tokens/t2", ws.admin, description="changed"))
    listing(client, ws.admin)
    assert cache.misses == cold + 1  # only the changed token was dumped again
