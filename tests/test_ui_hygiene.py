"""The console's token hygiene views on both backends, through FastAPI's TestClient: expiry and last
use on the token list and page, setting and clearing an expiry from the token page (the ledger's
update use case, under the workspace's lifetime cap), expired tokens that offer only deletion, and
the access review page with its spreadsheet-safe CSV, with the same rights and forgery protection
as every console page."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta
from html import unescape
from html.parser import HTMLParser
from typing import Any

import pytest

from tests.helpers import FakeClock
from tests.test_ui import Console, create, event_count, new_console
from tokentrail.api.setup import initialise
from tokentrail.api.ui.pages import format_time
from tokentrail.domain.clock import to_micros
from tokentrail.service import Service


@pytest.fixture
def seeded(service: Service, fake: FakeClock) -> dict[str, Any]:
    result = initialise(service, "main", "owner@example.com")
    tokens = {t["name"]: t for t in result["tokens"]}
    admin = service.auth.authenticate(tokens["admin token"]["token"])
    return {"workspace": result["workspace"], "tokens": tokens, "admin": admin}


@pytest.fixture
def console(service: Service, seeded: dict[str, Any]) -> Console:
    browser = new_console(service)
    assert browser.sign_in(seeded["tokens"]["admin token"]["token"]).status_code == 303
    return browser


def text(html: str) -> str:
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


class _Finder(HTMLParser):
    """The text inside the first element carrying data-testid=name (nested elements included)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name, self.depth, self.done, self.parts = name, 0, False, []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.done or tag in ("input", "br", "meta", "link"):
            return
        if self.depth or ("data-testid", self.name) in attrs:
            self.depth += 1

    def handle_endtag(self, tag: str) -> None:
        if self.depth and not self.done:
            self.depth -= 1
            self.done = self.depth == 0

    def handle_data(self, data: str) -> None:
        if self.depth and not self.done:
            self.parts.append(data)


def shown(html: str, name: str) -> str:
    finder = _Finder(name)
    finder.feed(html)
    assert finder.done, f"no {name}"
    return " ".join("".join(finder.parts).split())


def local(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S")


def expiry_events(service: Service, seeded: dict[str, Any], token_id: str) -> list[dict[str, Any]]:
    row = service.queries.token(token_id)
    return [e for e in service.reads.events_of(seeded["admin"], row) if e["type"] == "ExpirySet"]


# -- expiry and last use on the token list and page -------------------------------------------------


def test_the_list_and_the_page_show_expiry_and_last_use(
    service: Service, seeded: dict[str, Any], console: Console, fake: FakeClock
) -> None:
    fresh = create(service, seeded["admin"], "fresh", ["PIPES:READ:top"])
    listing = console.get("/ui/tokens").text
    card = listing[listing.index(f'data-token-id="{fresh["id"]}"') :]
    card = card[: card.index("</article>")]
    assert shown(card, "expiry") == "never"
    assert shown(card, "last-used") == "never used"
    admin_id = seeded["tokens"]["admin token"]["id"]
    admin_card = listing[listing.index(f'data-token-id="{admin_id}"') :]
    assert shown(admin_card, "last-used").startswith("just now (")  # the console session itself uses it

    service.auth.authenticate(fresh["value"])  # a use, as any request would make
    fake.advance(20 * 60)  # within the session's idle limit
    page = console.get(f"/ui/tokens/{fresh['id']}").text
    used = shown(page, "last-used")
    assert used.startswith("20 minutes ago (") and "UTC" in used
    assert shown(page, "expiry") == "never"
    assert 'data-testid="set-expiry"' in page and 'data-testid="clear-expiry"' not in page


def test_an_admin_sets_and_clears_an_expiry_from_the_token_page(
    service: Service, seeded: dict[str, Any], console: Console, fake: FakeClock
) -> None:
    token = create(service, seeded["admin"], "temp", ["PIPES:READ:top"])
    when = fake.now + timedelta(days=30)
    answer = console.post(
        f"/ui/tokens/{token['id']}/expiry", {"expires_at": local(when), "action": "set"}, f"/ui/tokens/{token['id']}"
    )
    assert answer.status_code == 303 and answer.headers["location"].endswith("?done=expiry-set")
    service.sync()
    assert service.queries.token(token["id"]).expires_at == to_micros(when)
    events = expiry_events(service, seeded, token["id"])
    assert [e["details"]["to"] for e in events] == [int(when.timestamp())]
    assert events[0]["origin"] == "ui"
    page = console.get(f"/ui/tokens/{token['id']}?done=expiry-set").text
    assert shown(page, "flash") == "Expiry set."
    assert shown(page, "expiry").startswith(f"{format_time(to_micros(when))} (in 1 month)")
    assert f'value="{local(when)}"' in page and 'data-testid="clear-expiry"' in page
    assert f"Expiry set to {format_time(to_micros(when))}" in text(page)  # the history says so
    listing = console.get("/ui/tokens").text
    card = listing[listing.index(f'data-token-id="{token["id"]}"') :]
    assert shown(card, "expiry").startswith(format_time(to_micros(when)))

    answer = console.post(f"/ui/tokens/{token['id']}/expiry", {"action": "clear"}, f"/ui/tokens/{token['id']}")
    assert answer.status_code == 303 and answer.headers["location"].endswith("?done=expiry-cleared")
    service.sync()
    assert service.queries.token(token["id"]).expires_at is None
    assert [e["details"]["to"] for e in expiry_events(service, seeded, token["id"])] == [int(when.timestamp()), None]
    assert shown(console.get(f"/ui/tokens/{token['id']}").text, "expiry") == "never"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"action": "set", "expires_at": ""}, "Pick the date and time"),
        ({"action": "set", "expires_at": "yesterday"}, "Expires at:"),
        ({"action": "set", "expires_at": "2001-01-01T00:00:00"}, "in the future"),
        ({"action": "burn", "expires_at": ""}, "action must be set or clear"),
    ],
)
def test_a_bad_expiry_is_shown_on_the_page_and_writes_nothing(
    service: Service, seeded: dict[str, Any], console: Console, fields: dict[str, str], message: str
) -> None:
    token = create(service, seeded["admin"], "temp", ["PIPES:READ:top"])
    before = event_count(service)
    answer = console.post(f"/ui/tokens/{token['id']}/expiry", fields, f"/ui/tokens/{token['id']}")
    assert answer.status_code == 400
    assert message in shown(answer.text, "expiry-error")
    assert event_count(service) == before


def test_the_workspaces_lifetime_cap_refuses_on_the_page_and_writes_nothing(
    service: Service, seeded: dict[str, Any], console: Console, fake: FakeClock
) -> None:
    token = create(service, seeded["admin"], "temp", ["PIPES:READ:top"])
    service.command(lambda: service.ledger.configure_workspace(seeded["admin"], 7 * 86_400))
    page = console.get(f"/ui/tokens/{token['id']}").text
    assert "caps token lifetimes at 7 days" in text(page)
    before = event_count(service)
    too_late = local(fake.now + timedelta(days=8))
    answer = console.post(
        f"/ui/tokens/{token['id']}/expiry", {"action": "set", "expires_at": too_late}, f"/ui/tokens/{token['id']}"
    )
    assert answer.status_code == 400
    assert "caps token lifetimes at 604800 seconds" in shown(answer.text, "expiry-error")
    assert f'value="{too_late}"' in answer.text  # the form keeps what was typed
    assert event_count(service) == before
    service.sync()
    assert service.queries.token(token["id"]).expires_at is None
    # Within the cap it is accepted; removing it is refused (the cap needs an expiry).
    within = fake.now + timedelta(days=6)
    answer = console.post(
        f"/ui/tokens/{token['id']}/expiry", {"action": "set", "expires_at": local(within)}, f"/ui/tokens/{token['id']}"
    )
    assert answer.status_code == 303
    before = event_count(service)
    answer = console.post(f"/ui/tokens/{token['id']}/expiry", {"action": "clear"}, f"/ui/tokens/{token['id']}")
    assert answer.status_code == 400 and "an expiry is required" in shown(answer.text, "expiry-error")
    assert event_count(service) == before


def test_setting_an_expiry_needs_the_sessions_csrf_token_and_the_right(
    service: Service, seeded: dict[str, Any], console: Console, fake: FakeClock
) -> None:
    token = create(service, seeded["admin"], "temp", ["PIPES:READ:top"])
    manager = create(service, seeded["admin"], "manager", ["TOKENS"])
    reader = create(service, seeded["admin"], "reader", ["PIPES:READ:top"])
    others = {}
    for name, value in (("manager", manager["value"]), ("reader", reader["value"])):
        others[name] = new_console(service)
        assert others[name].sign_in(value).status_code == 303
    before = event_count(service)
    when = local(fake.now + timedelta(days=1))
    for csrf in ("", "forged"):
        answer = console.client.post(
            f"/ui/tokens/{token['id']}/expiry",
            data={"csrf": csrf, "action": "set", "expires_at": when},
            follow_redirects=False,
        )
        assert answer.status_code == 403
    # A TOKENS token cannot set the expiry of an ADMIN one; a plain token cannot touch another.
    for other, target in ((others["manager"], seeded["tokens"]["admin token"]["id"]), (others["reader"], token["id"])):
        answer = other.post(f"/ui/tokens/{target}/expiry", {"action": "set", "expires_at": when})
        assert answer.status_code in (403, 404)
    assert event_count(service) == before
    # The default token's page offers no expiry (never to a default token).
    default = service.queries.token(seeded["tokens"]["admin token"]["id"])
    assert default is not None and default.kind == "default"
    assert 'data-testid="set-expiry"' not in console.get(f"/ui/tokens/{default.id}").text


def test_an_expired_token_shows_as_expired_and_offers_only_deletion(
    service: Service, seeded: dict[str, Any], console: Console, fake: FakeClock
) -> None:
    token = create(service, seeded["admin"], "short", ["PIPES:READ:top"])
    expires = fake.now + timedelta(seconds=120)
    service.command(
        lambda: service.ledger.update_token(seeded["admin"], token["id"], expiry=(int(expires.timestamp()),))
    )
    fake.advance(121)
    page = console.get(f"/ui/tokens/{token['id']}").text
    assert 'data-testid="expired-badge"' in page and 'data-testid="expired-note"' in page
    assert shown(page, "expiry").startswith("expired")
    for control in ("set-expiry", "save", "copy", "refresh"):
        assert f'data-testid="{control}"' not in page
    assert "data-copy" not in page and "/refresh" not in page and "/rename" not in page
    assert f'href="/ui/tokens/{token["id"]}/delete"' in page
    listing = console.get("/ui/tokens").text
    card = listing[listing.index(f'data-token-id="{token["id"]}"') :]
    assert shown(card, "expiry").startswith("expired")
    # Changing it is refused by the ledger (nothing written); deleting it works.
    before = event_count(service)
    answer = console.post(f"/ui/tokens/{token['id']}/rename", {"name": "revived"})
    assert answer.status_code == 409 and event_count(service) == before
    assert 'data-testid="confirm-delete"' in console.get(f"/ui/tokens/{token['id']}/delete").text
    answer = console.post(f"/ui/tokens/{token['id']}/delete", {}, f"/ui/tokens/{token['id']}/delete")
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/tokens?done=deleted"


# -- the access review --------------------------------------------------------------------------------


def test_the_review_page_shows_the_summary_and_the_rows(
    service: Service, seeded: dict[str, Any], console: Console, fake: FakeClock
) -> None:
    filtered = create(service, seeded["admin"], "filtered", ["DATASOURCES:READ:events:user_id = 7"])
    fake.advance(100 * 86_400)  # the seeded tokens and `filtered` are now unused for 90 days
    console = new_console(service)  # the first session grew too old: sign in again
    assert console.sign_in(seeded["tokens"]["admin token"]["token"]).status_code == 303
    used = create(service, seeded["admin"], "used", ["PIPES:READ:top"])
    service.auth.authenticate(used["value"])
    page = console.get("/ui/review")
    assert page.status_code == 200, page.text
    html = page.text
    assert 'href="/ui/review" aria-current="page"' in html  # in the navigation
    rows = re.findall(r'<tr data-token-id="([^"]+)">(.*?)</tr>', html, re.S)
    by_id = {token_id: text(body) for token_id, body in rows}
    api = service.reads.access_review(seeded["admin"], to_micros(fake.now))
    assert set(by_id) == {r.token_id for r in api.rows}
    summary = api.summary()
    assert shown(html, "stat-tokens") == str(summary["tokens"]) == str(len(rows))
    assert shown(html, "stat-admin") == str(summary["with_admin"])
    assert shown(html, "stat-unused") == str(summary["unused_90_days"]) == str(len(rows) - 2)  # used, console's admin
    assert shown(html, "stat-old") == "0"
    assert "DATASOURCES:READ 1" in shown(html, "by-scope-type")
    row = by_id[filtered["id"]]
    assert "filtered" in row and "user_id = 7" in row and "never used" in row and "unused 90+ days" in row
    assert "by admin token" in row and "100 d" in row
    assert "never used" not in by_id[used["id"]] and "0 d" in by_id[used["id"]]

    # As of a past instant: `used` did not exist yet.
    past = local(fake.now - timedelta(days=50))
    html = console.get("/ui/review", params={"as_of": past}).text
    ids = set(re.findall(r'<tr data-token-id="([^"]+)">', html))
    assert filtered["id"] in ids and used["id"] not in ids
    assert f'href="/ui/review.csv?as_of={past.replace(":", "%3A")}"' in html
    answer = console.get("/ui/review", params={"as_of": "not a time"})
    assert answer.status_code == 400 and "As of:" in shown(answer.text, "form-error")


def test_the_review_csv_downloads_and_is_safe_for_spreadsheets(
    service: Service, seeded: dict[str, Any], console: Console
) -> None:
    create(service, seeded["admin"], "=HYPERLINK(1)", ["DATASOURCES:READ:events:-1 = -1"])
    html = console.get("/ui/review").text
    link = unescape(re.search(r'href="([^"]+)" download data-testid="review-csv"', html).group(1))
    answer = console.get(link)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
    assert answer.headers["content-disposition"] == 'attachment; filename="access-review.csv"'
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert {r["name"] for r in rows} >= {"'=HYPERLINK(1)", "admin token"}
    assert all(r[c][:1] not in ("=", "+", "-", "@") for r in rows for c in r)
    api = service.reads.access_review(seeded["admin"], to_micros(datetime.now(UTC)))
    assert len(rows) == len(api.rows)


def test_a_caller_without_the_right_gets_403_and_no_review_link(service: Service, seeded: dict[str, Any]) -> None:
    reader = create(service, seeded["admin"], "reader", ["PIPES:READ:top"])
    browser = new_console(service)
    assert browser.sign_in(reader["value"]).status_code == 303
    assert 'href="/ui/review"' not in browser.get("/ui/tokens").text
    for path in ("/ui/review", "/ui/review.csv", "/ui/review?as_of=garbage"):
        answer = browser.get(path)
        assert answer.status_code == 403, path
        assert "access-review" not in answer.headers.get("content-disposition", "")
    # A TOKENS token may read it, as through the API.
    manager = create(service, seeded["admin"], "manager", ["TOKENS"])
    browser = new_console(service)
    assert browser.sign_in(manager["value"]).status_code == 303
    assert 'href="/ui/review"' in browser.get("/ui/tokens").text
    assert browser.get("/ui/review").status_code == 200
    assert new_console(service).get("/ui/review").status_code == 303  # signed out: to sign in
