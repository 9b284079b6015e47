"""The console's incident response views on both backends, through FastAPI's TestClient: the token
page's exposure timeline, the Incident page's lookup (the value never echoed nor logged) and its
bulk revocation (preview writes nothing, confirm revokes under one revocation id), with the same
rights, forgery protection and refusals as every console page."""

from __future__ import annotations

import logging
import re
import time
import uuid
from datetime import datetime
from html import unescape
from typing import Any

import pytest

from tests.helpers import FakeClock
from tests.test_ui import Console, create, event_count, new_console
from tokentrail.api.setup import initialise
from tokentrail.api.ui.pages import format_time
from tokentrail.domain.clock import to_micros
from tokentrail.domain.policy import Caller
from tokentrail.projections.history import AuditQuery
from tokentrail.service import Service

LANE = re.compile(
    r'<li class="lane(?P<cls>[^"]*)" data-testid="exposure-lane" data-kind="(?P<kind>[^"]*)" '
    r'data-resource="(?P<resource>[^"]*)" data-permission="(?P<permission>[^"]*)" data-via="(?P<via>[^"]*)">'
)
BAR = re.compile(r'<rect class="bar[^"]*" x="([0-9.]+)%" width="([0-9.]+)%"')
TIMES = re.compile(r'<ul class="lane-times" data-testid="lane-times">(.*?)</ul>', re.S)


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


def _lanes(html: str) -> dict[tuple[str, str, str, str], dict[str, Any]]:
    section = html[html.index('data-testid="exposure"') :]
    section = section[: section.index("</section>")]
    lanes = {}
    starts = list(LANE.finditer(section))
    for found, following in zip(starts, [*starts[1:], None], strict=True):
        body = section[found.end() : following.start() if following else None]
        body = body[: body.index("</ul>", body.index('data-testid="lane-times"')) + 5]  # this lane only
        lanes[(found.group("kind"), found.group("resource"), found.group("permission"), found.group("via"))] = {
            "cls": found.group("cls"),
            "bars": [(float(x), float(w)) for x, w in BAR.findall(body)],
            "times": [unescape(t) for t in re.findall(r"<li>(.*?)</li>", TIMES.search(body).group(1))],
            "body": unescape(body),
            "text": " ".join(unescape(re.sub(r"<[^>]+>", " ", body)).split()),
        }
    return lanes


def _span(start: datetime, end: datetime | None) -> str:
    until = f"to {format_time(to_micros(end), precise=True)}" if end else "to now (still open)"
    return f"from {format_time(to_micros(start), precise=True)} {until}"


# -- the token page's exposure timeline -----------------------------------------------------------


def test_the_token_page_draws_each_reach_of_a_refreshed_rescoped_deleted_token(
    service: Service, seeded: dict[str, Any], console: Console, fake: FakeClock
) -> None:
    admin = seeded["admin"]
    t0 = fake.now
    token = create(service, admin, "leaky", ["DATASOURCES:READ:events:country = 'ES'", "PIPES:READ:top", "TOKENS"])
    t10 = fake.advance(10)
    service.command(lambda: service.ledger.refresh_token(admin, token["id"], 5))
    t20 = fake.advance(10)
    service.command(
        lambda: service.ledger.update_token(
            admin,
            token["id"],
            scopes=["DATASOURCES:READ:events:country = 'ES'", "DATASOURCES:APPEND:events", "WORKSPACE:READ_ALL"],
        )
    )
    t30 = fake.advance(10)
    service.command(lambda: service.ledger.delete_token(admin, token["id"]))
    fake.advance(60)  # the axis ends at the deletion, not now

    page = console.client.get(f"/ui/tokens/{token['id']}")
    assert page.status_code == 200
    assert "badge-deleted" in page.text and "to its deletion" in page.text
    lanes = _lanes(page.text)
    filtered = "DATASOURCES:READ:events:country = &#39;ES&#39;"
    assert set(lanes) == {
        ("*", "*", "READ", "WORKSPACE:READ_ALL"),
        ("datasource", "events", "APPEND", "DATASOURCES:APPEND:events"),
        ("datasource", "events", "READ", filtered),
        ("datasource", "events_quarantine", "READ", filtered),
        ("pipe", "top", "READ", "PIPES:READ:top"),
    }
    # Exact times, and bars placed on one axis from creation (0%) to deletion (100%).
    assert lanes[("datasource", "events", "READ", filtered)]["times"] == [_span(t0, t30)]
    assert lanes[("datasource", "events", "READ", filtered)]["bars"] == [(0.0, 100.0)]
    assert "filter country = 'ES'" in lanes[("datasource", "events", "READ", filtered)]["text"]
    assert lanes[("pipe", "top", "READ", "PIPES:READ:top")]["times"] == [_span(t0, t20)]
    assert lanes[("pipe", "top", "READ", "PIPES:READ:top")]["bars"] == [(0.0, 66.667)]
    assert lanes[("datasource", "events", "APPEND", "DATASOURCES:APPEND:events")]["bars"] == [(66.667, 33.333)]
    wildcard = lanes[("*", "*", "READ", "WORKSPACE:READ_ALL")]
    assert "lane-wildcard" in wildcard["cls"] and ">wildcard</span>" in wildcard["body"]
    assert wildcard["times"] == [_span(t20, t30)]
    # TOKENS reaches no data but could mint tokens: shown apart, until it was removed.
    escalation = page.text[page.text.index('data-testid="exposure-escalation"') :]
    assert 'data-via="TOKENS"' in escalation[:80] and ">escalation</span>" in escalation
    assert _span(t0, t20) in unescape(TIMES.search(escalation).group(1))
    # The refresh (at t10) is marked on the axis; the token stayed accepted through its grace.
    assert f"Refreshed at {format_time(to_micros(t10), precise=True)}" in page.text
    accepted = page.text[page.text.index('data-testid="exposure-valid"') :]
    assert _span(t0, t30) in unescape(TIMES.search(accepted).group(1))


def test_a_live_tokens_intervals_stay_open_until_now(
    service: Service, seeded: dict[str, Any], console: Console, fake: FakeClock
) -> None:
    t0 = fake.now
    token = create(service, seeded["admin"], "live", ["PIPES:READ:top"])
    fake.advance(30)
    page = console.client.get(f"/ui/tokens/{token['id']}").text
    (lane,) = _lanes(page).values()
    assert lane["times"] == [_span(t0, None)] and lane["bars"] == [(0.0, 100.0)]
    assert "to now (" in page


def test_the_admin_token_page_shows_the_jwts_signed_with_its_values(
    service: Service, seeded: dict[str, Any], console: Console
) -> None:
    admin_value = seeded["tokens"]["admin token"]["token"]
    issued = console.client.post(
        "/v0/tokens",
        params={"name": "embed", "expiration_time": int(time.time()) + 3600},
        json={"scopes": [{"type": "PIPES:READ", "resource": "top", "filter": "org = 'a'"}]},
        headers={"Authorization": f"Bearer {admin_value}"},
    )
    assert issued.status_code == 200, issued.text
    page = console.client.get(f"/ui/tokens/{seeded['tokens']['admin token']['id']}").text
    assert ("*", "*", "*", "ADMIN") in _lanes(page)
    jwt = page[page.index('data-testid="exposure-jwt"') :]
    assert "<strong>embed</strong>" in jwt[:400]
    assert 'data-resource="top" data-permission="READ"' in jwt and "org = &#39;a&#39;" in jwt


def test_only_callers_who_may_investigate_see_exposure_and_the_incident_page(
    service: Service, seeded: dict[str, Any], console: Console
) -> None:
    reader = create(service, seeded["admin"], "reader", ["DATASOURCES:READ:events"])
    assert 'href="/ui/incident"' in console.client.get("/ui/tokens").text
    browser = new_console(service)
    assert browser.sign_in(reader["value"]).status_code == 303
    own = browser.client.get(f"/ui/tokens/{reader['id']}")
    assert own.status_code == 200 and 'data-testid="exposure"' not in own.text
    assert 'href="/ui/incident"' not in own.text
    before = event_count(service)
    assert browser.get("/ui/incident").status_code == 403
    assert browser.post("/ui/incident/lookup", {"token": reader["value"]}).status_code == 403
    assert browser.post("/ui/incident/revoke", {"resource": "events", "action": "preview"}).status_code == 403
    assert event_count(service) == before


# -- lookup ---------------------------------------------------------------------------------------


def test_lookup_names_the_token_and_value_and_never_echoes_it(
    service: Service, seeded: dict[str, Any], console: Console, fake: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    admin = seeded["admin"]
    t0 = fake.now
    token = create(service, admin, "leaked", ["PIPES:READ:top"])
    t5 = fake.advance(5)
    service.command(lambda: service.ledger.refresh_token(admin, token["id"], 0))
    fake.advance(5)
    old = token["value"]
    page = console.client.get("/ui/incident").text
    field = re.search(r'<input id="lookup-value"[^>]*>', page).group(0)
    assert 'name="token"' in field and 'autocomplete="off"' in field and "value=" not in field
    assert 'method="post" action="/ui/incident/lookup"' in page
    with caplog.at_level(logging.DEBUG):
        answer = console.post("/ui/incident/lookup", {"token": old}, csrf_from="/ui/incident")
    assert answer.status_code == 200
    result = answer.text[answer.text.index('data-testid="lookup-result"') :]
    assert f'href="/ui/tokens/{token["id"]}"' in result and "leaked" in result
    assert 'data-reason="refreshed"' in result and "Not valid now." in result
    assert "as created (generation 0)" in result
    assert format_time(to_micros(t0), precise=True) in result and format_time(to_micros(t5), precise=True) in result
    payload, signature = old.split(".")[1:]
    for part in (old, payload, signature):
        assert part not in answer.text and part not in caplog.text
    looked_up = service.reads.history.audit_page(
        AuditQuery(workspace_id=seeded["workspace"]["id"], events=("TokenLookedUp",)), None, 10
    )[0]
    assert [(e["token_id"], e["details"]["outcome"]) for e in looked_up] == [(token["id"], "refreshed")]
    assert old not in str(looked_up)
    token_page = console.client.get(f"/ui/tokens/{token['id']}").text
    assert "Looked up by value (refreshed)" in token_page  # in its history, not a change on the axis
    assert "TokenLookedUp at" not in token_page and "Refreshed at" in token_page


def test_a_value_this_server_did_not_sign_is_not_found_and_not_echoed(
    service: Service, seeded: dict[str, Any], console: Console
) -> None:
    other = initialise(service, "other", "someone@example.com")
    foreign = next(t for t in other["tokens"] if t["name"] == "admin token")["token"]
    before = event_count(service)
    for value in ("p.not-a-token.at-all", foreign, "eyJhbGciOiJIUzI1NiJ9.e30.x"):
        answer = console.post("/ui/incident/lookup", {"token": value}, csrf_from="/ui/incident")
        assert answer.status_code == 404
        assert "No token of this workspace has or had this value" in answer.text
        assert value not in answer.text and 'data-testid="lookup-result"' not in answer.text
    empty = console.post("/ui/incident/lookup", {"token": "  "}, csrf_from="/ui/incident")
    assert empty.status_code == 400 and "Paste a token value" in empty.text
    assert event_count(service) == before
    assert console.client.get("/ui/incident/lookup").status_code == 405


# -- bulk revocation ------------------------------------------------------------------------------


def _preview(console: Console, **fields: str) -> Any:
    return console.post("/ui/incident/revoke", {**fields, "action": "preview"}, csrf_from="/ui/incident")


def _confirm_fields(preview_html: str) -> dict[str, Any]:
    """The confirm form's fields, as the preview rendered them (hidden selectors, planned ids)."""
    form = preview_html[preview_html.index('data-testid="confirm-form"') :]
    form = form[: form.index("</form>")]
    fields: dict[str, Any] = {"planned": []}
    for name, value in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', form):
        if name == "planned":
            fields["planned"].append(value)
        elif name != "csrf":
            fields[name] = unescape(value)
    fields["reason"] = unescape(re.search(r'<input id="c-reason" name="reason" value="([^"]*)"', form).group(1))
    fields["action"] = "confirm"
    return fields


def _tokens_reading_events(service: Service, admin: Caller) -> list[dict[str, Any]]:
    return [
        create(service, admin, "reader a", ["DATASOURCES:READ:events"]),
        create(service, admin, "appender b", ["DATASOURCES:APPEND:events", "PIPES:CREATE"]),
    ]


def test_preview_writes_nothing_and_confirm_revokes_under_one_revocation_id(
    service: Service, seeded: dict[str, Any], console: Console
) -> None:
    admin = seeded["admin"]
    targets = _tokens_reading_events(service, admin)
    bystander = create(service, admin, "bystander", ["PIPES:READ:top"])
    page = console.client.get("/ui/incident").text
    assert 'data-testid="revoke-form"' in page and 'name="scope_type"' in page
    before = event_count(service)
    preview = _preview(console, resource="events", reason="leaked in a CI log")
    assert preview.status_code == 200
    assert event_count(service) == before
    plan = preview.text[preview.text.index('data-testid="plan"') :]
    assert sorted(re.findall(r'<tr data-token-id="([^"]+)">', plan)) == sorted(t["id"] for t in targets)
    assert "Revoke 2 tokens" in plan
    fields = _confirm_fields(preview.text)
    assert fields["resource"] == "events" and fields["reason"] == "leaked in a CI log"
    assert sorted(fields["planned"]) == sorted(t["id"] for t in targets)

    answer = console.post("/ui/incident/revoke", fields, csrf_from="/ui/incident")
    assert answer.status_code == 303
    revocation_id = answer.headers["location"].split("revocation=")[1]
    assert str(uuid.UUID(revocation_id)) == revocation_id
    assert all(service.queries.token(t["id"]).deleted for t in targets)
    assert not service.queries.token(bystander["id"]).deleted
    trail = service.reads.history.audit_page(
        AuditQuery(workspace_id=seeded["workspace"]["id"], revocation=revocation_id), None, 100
    )[0]
    assert sorted(e["token_id"] for e in trail) == sorted(t["id"] for t in targets)
    assert {e["details"]["reason"] for e in trail} == {"leaked in a CI log"}

    shown = console.client.get(answer.headers["location"])
    assert shown.status_code == 200 and "Revoked 2 tokens." in shown.text
    assert f'data-revocation-id="{revocation_id}"' in shown.text
    assert f'href="/ui/audit?revocation={revocation_id}"' in shown.text
    audit = console.client.get("/ui/audit", params={"revocation": revocation_id}).text
    assert audit.count('<tr data-event-type="Deleted">') == 2 and "leaked in a CI log" in unescape(audit)
    assert f'name="revocation" value="{revocation_id}"' in audit
    history = console.client.get(f"/ui/tokens/{targets[0]['id']}").text
    assert f"Revoked in bulk (revocation {revocation_id}): “leaked in a CI log”" in unescape(history)
    # Posting the confirmation again revokes nothing more: the plan it names is gone.
    after = event_count(service)
    again = console.post("/ui/incident/revoke", fields, csrf_from="/ui/incident")
    assert again.status_code == 409 and 'data-testid="plan-empty"' in again.text
    assert event_count(service) == after


def test_confirm_refuses_a_plan_that_changed_since_the_preview(
    service: Service, seeded: dict[str, Any], console: Console
) -> None:
    admin = seeded["admin"]
    _tokens_reading_events(service, admin)
    preview = _preview(console, resource="events", reason="rotation")
    late = create(service, admin, "late reader", ["DATASOURCES:READ:events"])
    before = event_count(service)
    answer = console.post("/ui/incident/revoke", _confirm_fields(preview.text), csrf_from="/ui/incident")
    assert answer.status_code == 409
    assert 'data-testid="plan-changed"' in answer.text and f'data-token-id="{late["id"]}"' in answer.text
    assert event_count(service) == before
    assert not service.queries.token(late["id"]).deleted


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "name at least one selector"),
        ({"resource": "a b"}, "resource must name a datasource or pipe"),
        ({"scope_type": "EVERYTHING"}, "scope_type must be one of"),
        ({"created_from": "yesterday"}, "Created from:"),
        ({"created_from": "2026-03-02T00:00", "created_to": "2026-03-01T00:00"}, "created_from must not be after"),
        ({"resource": "events", "reason": "a\x07b"}, "reason must be printable text"),
        ({"resource": "events", "action": "confirm", "reason": ""}, "reason is required"),
        ({"resource": "events", "action": "explode"}, "action must be preview or confirm"),
    ],
)
def test_bad_selectors_are_refused_on_the_page_and_write_nothing(
    service: Service, seeded: dict[str, Any], console: Console, fields: dict[str, str], message: str
) -> None:
    target = create(service, seeded["admin"], "reader", ["DATASOURCES:READ:events"])
    before = event_count(service)
    answer = console.post(
        "/ui/incident/revoke", {"action": "preview", **fields, "planned": target["id"]}, csrf_from="/ui/incident"
    )
    assert answer.status_code == 400
    assert message in unescape(answer.text)
    assert event_count(service) == before and not service.queries.token(target["id"]).deleted


def test_a_tokens_session_looks_up_but_sees_no_revoke_form_and_is_refused_posting_it(
    service: Service, seeded: dict[str, Any]
) -> None:
    admin = seeded["admin"]
    manager = create(service, admin, "manager", ["TOKENS"])
    target = create(service, admin, "reader", ["DATASOURCES:READ:events"])
    browser = new_console(service)
    assert browser.sign_in(manager["value"]).status_code == 303
    page = browser.client.get("/ui/incident")
    assert page.status_code == 200 and 'href="/ui/incident"' in page.text
    assert 'data-testid="revoke-form"' not in page.text and 'data-testid="revoke-needs-admin"' in page.text
    assert 'data-testid="exposure"' in browser.client.get(f"/ui/tokens/{target['id']}").text
    looked = browser.post("/ui/incident/lookup", {"token": target["value"]}, csrf_from="/ui/incident")
    assert looked.status_code == 200 and 'data-reason="current"' in looked.text
    before = event_count(service)
    for action in ("preview", "confirm"):
        answer = browser.post(
            "/ui/incident/revoke",
            {"resource": "events", "reason": "x", "planned": target["id"], "action": action},
            csrf_from="/ui/incident",
        )
        assert answer.status_code == 403
        assert "revoking tokens in bulk needs a token with ADMIN scope" in answer.text
    assert event_count(service) == before and not service.queries.token(target["id"]).deleted


def test_incident_posts_without_the_sessions_csrf_token_or_from_another_site_are_refused(
    service: Service, seeded: dict[str, Any], console: Console
) -> None:
    target = create(service, seeded["admin"], "reader", ["DATASOURCES:READ:events"])
    other = new_console(service)
    other.sign_in(seeded["tokens"]["admin token"]["token"])
    revoke = {"resource": "events", "reason": "x", "planned": target["id"], "action": "confirm"}
    before = event_count(service)
    for path, data in (("/ui/incident/lookup", {"token": target["value"]}), ("/ui/incident/revoke", revoke)):
        for csrf in ({}, {"csrf": ""}, {"csrf": "forged"}, {"csrf": other.csrf()}):
            answer = console.client.post(path, data={**csrf, **data}, follow_redirects=False)
            assert answer.status_code == 403 and "did not come from this console" in unescape(answer.text)
            assert target["value"] not in answer.text
        cross = console.post(path, data, csrf_from="/ui/incident", headers={"Origin": "http://evil.example"})
        assert cross.status_code == 403 and "another site" in cross.text
    assert event_count(service) == before and not service.queries.token(target["id"]).deleted


def test_another_workspaces_admin_neither_finds_nor_revokes_this_workspaces_tokens(
    service: Service, seeded: dict[str, Any]
) -> None:
    target = create(service, seeded["admin"], "secret reader", ["DATASOURCES:READ:secrets"])
    other = initialise(service, "other", "someone@example.com")
    browser = new_console(service)
    browser.sign_in(next(t for t in other["tokens"] if t["name"] == "admin token")["token"])
    before = event_count(service)
    looked = browser.post("/ui/incident/lookup", {"token": target["value"]}, csrf_from="/ui/incident")
    assert looked.status_code == 404 and target["value"] not in looked.text
    preview = browser.post(
        "/ui/incident/revoke", {"resource": "secrets", "action": "preview"}, csrf_from="/ui/incident"
    )
    assert preview.status_code == 200 and 'data-testid="plan-empty"' in preview.text
    assert event_count(service) == before
    assert browser.get(f"/ui/incident?revocation={uuid.uuid4()}").status_code == 404
    assert browser.get("/ui/incident?revocation=not-an-id").status_code == 400
