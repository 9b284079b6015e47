"""The web console in a real browser: Playwright drives Debian's headless Chromium against a real
`uvicorn --factory tokentrail.api.app:app_from_env`, seeded by `python -m tokentrail.api.cli init`, as a user would.

Screenshots of every page, at a laptop's and a phone's width, go to artifacts/screenshots/ (kept
out of git; `TOKENTRAIL_SCREENSHOTS=DIR` puts them elsewhere) for a person to look at. With CI=true a missing Chromium or Playwright fails the run;
elsewhere these tests are skipped with the reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
SHOTS = Path(os.environ.get("TOKENTRAIL_SCREENSHOTS") or ROOT / "artifacts" / "screenshots")
CHROMIUM = os.environ.get("TOKENTRAIL_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
TIMEOUT_MS = 10_000


def _require_browser() -> None:
    problems = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problems.append("Playwright for Python is not installed (pip install playwright)")
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        problems.append(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    if problems:
        message = "browser tests cannot run: " + "; ".join(problems)
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A real server on an empty store, initialised by the CLI; yields its URL and seed tokens."""
    _require_browser()
    data = tmp_path_factory.mktemp("ui-browser")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENTRAIL_")}
    env.update(TOKENTRAIL_DATA_DIR=str(data), TOKENTRAIL_SECRET_KEY="browser-test-secret-0123456789abcdef")
    init = subprocess.run(
        [
            sys.executable,
            "-m",
            "tokentrail.api.cli",
            "init",
            "--workspace",
            "main",
            "--email",
            "owner@example.com",
            "--json",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert init.returncode == 0, init.stderr
    tokens = {t["name"]: t for t in json.loads(init.stdout)["tokens"]}
    port = _free_port()
    log = open(data / "server.log", "w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "tokentrail.api.app:app_from_env",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/ui/signin", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, (data / "server.log").read_text()
            assert time.monotonic() < deadline, "the server did not start within 30 s"
            time.sleep(0.1)
        yield {"base": base, "tokens": tokens, "log": data / "server.log"}
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()
    # The server must never write a token value to its log.
    text = (data / "server.log").read_text()
    assert not any(t["token"] in text for t in tokens.values())


@pytest.fixture(scope="module")
def chromium(server: dict[str, Any]) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def new_page(chromium: Any, server: dict[str, Any]) -> Any:
    context = chromium.new_context(viewport=DESKTOP, base_url=server["base"])
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server["base"])
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.js_errors = errors
    return page


def shoot(page: Any, name: str, reload: bool = True) -> None:
    """Full-page screenshots at a laptop's and a phone's width. The phone's is of the page loaded
    afresh at that width (as a phone would get it) unless the page is a form's answer."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}-desktop.png"), full_page=True)
    if reload:
        phone = page.context.new_page()
        phone.set_viewport_size(PHONE)
        phone.goto(page.url)
        phone.screenshot(path=str(SHOTS / f"{name}-phone.png"), full_page=True)
        phone.close()
    else:
        page.set_viewport_size(PHONE)
        page.screenshot(path=str(SHOTS / f"{name}-phone.png"), full_page=True)
        page.set_viewport_size(DESKTOP)


def sign_in(page: Any, value: str) -> None:
    page.goto("/ui/tokens")
    assert "/ui/signin" in page.url
    page.get_by_label("Token").fill(value)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/ui/tokens")


def api(server: dict[str, Any], method: str, path: str, value: str, **params: Any) -> httpx.Response:
    """The JSON API, with the value in a header (a `?token=` would land in the access log)."""
    return httpx.request(
        method, server["base"] + path, params=params, timeout=10, headers={"Authorization": f"Bearer {value}"}
    )


def flash(page: Any) -> str:
    return page.get_by_test_id("flash").inner_text()


# -- an admin's whole token life, once, for the tests below ---------------------------------------


@pytest.fixture(scope="module")
def lifecycle(server: dict[str, Any], chromium: Any) -> dict[str, Any]:
    """Sign in as the admin, then create, edit, copy, rename, refresh and delete one token through
    the pages, checking each step; returns what the audit and access tests look for."""
    admin = server["tokens"]["admin token"]["token"]
    page = new_page(chromium, server)
    facts: dict[str, Any] = {}

    page.goto("/ui/tokens")
    shoot(page, "signin")
    sign_in(page, admin)
    assert page.get_by_test_id("signed-in-as").inner_text() == "admin token"
    shoot(page, "tokens")

    # Create, with a Data Source scope and a filter.
    page.get_by_test_id("create-token").click()
    page.wait_for_url("**/ui/tokens/new")
    page.get_by_label("Name", exact=True).fill("events reader")
    page.get_by_role("button", name="+ Add Data Source Scope").click()
    row = page.locator("[data-row]").first
    row.get_by_label("Data Source name").fill("events")
    row.get_by_label("Permission").select_option("READ")
    row.get_by_label("SQL filter").fill("country = 'ES'")
    shoot(page, "token-new", reload=False)
    page.get_by_test_id("save").click()
    page.wait_for_url(re.compile(r".*/ui/tokens/[0-9a-f-]{36}\?done=created$"))
    assert flash(page) == "Token created."
    token_id = page.url.split("/ui/tokens/")[1].split("?")[0]
    facts["token_id"] = token_id
    assert page.locator("#r0-filter").input_value() == "country = 'ES'"

    # Toggle a workspace scope and save.
    page.get_by_label("Create Pipes").check()
    page.get_by_test_id("save").click()
    page.wait_for_url("**?done=saved")
    assert page.get_by_label("Create Pipes").is_checked()
    scopes = api(server, "GET", f"/v0/tokens/{token_id}", admin).json()["scopes"]
    assert sorted((s["type"], s.get("resource"), s.get("filter")) for s in scopes) == [
        ("DATASOURCES:READ", "events", "country = 'ES'"),
        ("PIPES:CREATE", None, None),
    ]
    time.sleep(1.1)  # the access test asks about a whole second after the save and before the delete
    facts["filtered_at"] = datetime.now(UTC).replace(microsecond=0)

    # Copy: the clipboard gets the value, which works against the API.
    copy = page.get_by_role("button", name="Copy the value of events reader")
    copy.click()
    page.wait_for_selector("[data-copy][data-copied='true']")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == copy.get_attribute("data-value") and copied.startswith("p.")
    assert api(server, "GET", f"/v0/tokens/{token_id}", copied).status_code == 200
    shoot(page, "token")

    # Rename by clicking the name.
    page.get_by_test_id("token-name").click()
    page.get_by_label("New name").fill("events reader ES")
    page.get_by_role("button", name="Rename", exact=True).click()
    page.wait_for_url("**?done=renamed")
    assert page.get_by_test_id("token-name").inner_text() == "events reader ES"

    # Refresh, with a grace period: a new value; the old one keeps working for the grace period.
    page.get_by_label("Grace period in seconds").fill("300")
    page.get_by_role("button", name="Refresh").click()
    page.wait_for_url("**?done=refreshed")
    fresh = page.get_by_role("button", name="Copy the value of events reader ES").get_attribute("data-value")
    assert fresh != copied
    assert api(server, "GET", f"/v0/tokens/{token_id}", fresh).status_code == 200
    # In its grace period the old value still authenticates, for its scopes only: it may not read
    # its token (whose new value would leak).
    assert api(server, "GET", "/v0/auth", copied).json()["valid"] is True
    assert api(server, "GET", f"/v0/tokens/{token_id}", copied).status_code == 403

    # Delete, after confirming.
    page.get_by_role("link", name="Delete token…").click()
    page.wait_for_url("**/delete")
    shoot(page, "token-delete")
    page.get_by_test_id("confirm-delete").click()
    page.wait_for_url("**/ui/tokens?done=deleted")
    assert flash(page) == "Token deleted."
    assert page.locator(f"[data-token-id='{token_id}']").count() == 0
    assert api(server, "GET", f"/v0/tokens/{token_id}", fresh).status_code == 403

    # The token's page keeps its history.
    page.goto(f"/ui/tokens/{token_id}")
    entries = page.get_by_test_id("timeline").locator("li.entry")
    facts["timeline"] = [
        (entries.nth(i).locator(".entry-title strong").inner_text(), entries.nth(i).inner_text())
        for i in range(entries.count())
    ]
    shoot(page, "token-history")
    facts["js_errors"] = list(page.js_errors)
    facts["page"] = page
    return facts


def test_an_admin_manages_a_token_through_the_pages(lifecycle: dict[str, Any], server: dict[str, Any]) -> None:
    timeline = lifecycle["timeline"]  # newest first
    assert [title for title, _ in timeline] == ["Deleted", "Refreshed", "Renamed", "ScopeAdded", "Created"]
    texts = [text for _, text in timeline]
    assert all("by admin token" in text and "UI" in text for text in texts)
    assert "a grace period of 300 s for the previous one" in texts[1]
    assert "Renamed from “events reader” to “events reader ES”" in texts[2]
    assert re.search(r"added:\s*PIPES:CREATE", texts[3]) and "removed" not in texts[3]
    assert re.search(r"removed:\s*DATASOURCES:READ:events:country = 'ES'", texts[0])
    history = api(
        server, "GET", f"/v0/tokens/{lifecycle['token_id']}/history", server["tokens"]["admin token"]["token"]
    ).json()["events"]
    assert {e["origin"] for e in history} == {"ui"}
    assert len({e["request_id"] for e in history}) == 5  # one request per change
    assert lifecycle["js_errors"] == []


def test_the_audit_page_shows_the_changes_and_verifies_the_chain(lifecycle: dict[str, Any]) -> None:
    page = lifecycle["page"]
    page.goto("/ui/audit")
    page.get_by_label("Token (name or id)").fill(lifecycle["token_id"])
    page.get_by_role("button", name="Apply filters").click()
    page.wait_for_url("**/ui/audit?**")
    rows = page.get_by_test_id("audit-table").locator("tbody tr")
    assert [rows.nth(i).get_attribute("data-event-type") for i in range(rows.count())] == [
        "Created",
        "ScopeAdded",
        "Renamed",
        "Refreshed",
        "Deleted",
    ]
    assert all("UI" in rows.nth(i).inner_text().upper() for i in range(rows.count()))
    assert "country = 'ES'" in rows.nth(0).inner_text()
    page.get_by_label("Event type").select_option("Renamed")
    page.get_by_role("button", name="Apply filters").click()
    page.wait_for_url("**event=Renamed**")
    assert page.get_by_test_id("audit-table").locator("tbody tr").count() == 1
    assert page.get_by_test_id("export-csv").get_attribute("href").startswith("/ui/audit/export.csv?")
    page.goto("/ui/audit")
    page.get_by_test_id("verify").click()
    result = page.get_by_test_id("chain-result")
    result.wait_for()
    assert result.get_attribute("data-ok") == "true" and "Intact." in result.inner_text()
    shoot(page, "audit")
    page.goto("/ui/audit/verify")
    shoot(page, "audit-verify")


def test_the_access_page_answers_a_past_instant(lifecycle: dict[str, Any]) -> None:
    page = lifecycle["page"]
    page.goto("/ui/access")
    assert page.locator("#known-resources option[value='events']").count() == 1
    page.get_by_label("Data Source or Pipe").fill("events")
    page.get_by_label("Permission").select_option("READ")
    page.get_by_label("At (UTC; empty for now)").fill(lifecycle["filtered_at"].strftime("%Y-%m-%dT%H:%M:%S"))
    page.get_by_role("button", name="Show access").click()
    answer = page.get_by_test_id("access-answer")
    row = answer.locator("tr", has_text="events reader")
    assert row.count() == 1  # by the name it had then
    assert "DATASOURCES:READ:events:country = 'ES'" in row.inner_text()
    assert row.locator("td[data-label='Filter']").inner_text() == "country = 'ES'"
    shoot(page, "access")
    page.get_by_label("At (UTC; empty for now)").fill("")
    page.get_by_role("button", name="Show access").click()
    assert page.get_by_test_id("access-answer").locator("tr", has_text="events reader").count() == 0
    page.get_by_label("At (UTC; empty for now)").fill(lifecycle["filtered_at"].strftime("%Y-%m-%dT%H:%M:%S"))
    page.get_by_label("Compare with").fill(datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    page.get_by_label("Data Source or Pipe").fill("")
    page.get_by_role("button", name="Show access").click()
    diff = page.get_by_test_id("access-diff")
    lost = diff.locator("h3.lost + .table-wrap tr", has_text="events reader")
    resources = sorted(lost.nth(i).locator("td[data-label='Resource'] code").inner_text() for i in range(lost.count()))
    assert resources == ["events", "events_quarantine"]  # READ on a Data Source reaches its quarantine
    assert all("country = 'ES'" in lost.nth(i).inner_text() for i in range(lost.count()))
    shoot(page, "access-diff")


def test_a_tokens_token_cannot_see_or_do_what_it_may_not(server: dict[str, Any], chromium: Any) -> None:
    admin = server["tokens"]["admin token"]
    created = api(server, "POST", "/v0/tokens", admin["token"], name="token manager", scope="TOKENS")
    assert created.status_code == 200, created.text
    page = new_page(chromium, server)
    sign_in(page, created.json()["token"])
    admin_card = page.locator(f"[data-token-id='{admin['id']}']")
    assert "Value hidden" in admin_card.inner_text()
    assert admin_card.locator("[data-copy]").count() == 0
    assert admin["token"] not in page.content()
    shoot(page, "tokens-as-tokens-token")

    page.goto(f"/ui/tokens/{admin['id']}")
    assert page.locator("#editor").count() == 0 and page.locator("form[action$='/refresh']").count() == 0
    assert "only a token with ADMIN scope can manage" in page.content()

    # The ADMIN checkbox is disabled; forcing it anyway is refused by the ledger, inline.
    page.goto("/ui/tokens/new")
    admin_box = page.locator("input[name='scope'][value='ADMIN']")
    assert admin_box.is_disabled()
    page.get_by_label("Name", exact=True).fill("escalation")
    admin_box.evaluate("box => { box.disabled = false; box.checked = true; }")
    page.get_by_test_id("save").click()
    error = page.get_by_test_id("form-error")
    assert "a token without ADMIN scope cannot grant ADMIN" in error.inner_text()
    shoot(page, "token-new-error", reload=False)
    listing = api(server, "GET", "/v0/tokens", admin["token"]).json()["tokens"]
    assert "escalation" not in {t["name"] for t in listing}

    page.goto("/ui/audit/verify")
    assert "verifying the trail needs a token with ADMIN scope" in page.get_by_test_id("error").inner_text()
    shoot(page, "error-403")
    assert page.get_by_role("link", name="Audit").count() == 1  # the trail itself it may read


def test_the_incident_page_looks_up_a_value_then_previews_and_confirms_a_revocation(
    server: dict[str, Any], chromium: Any
) -> None:
    admin = server["tokens"]["admin token"]["token"]
    made = [
        api(server, "POST", "/v0/tokens", admin, name=name, scope=scope).json()
        for name, scope in (
            ("leaky ingest", "DATASOURCES:APPEND:leaky_ds"),
            ("leaky reader", "DATASOURCES:READ:leaky_ds"),
        )
    ]
    page = new_page(chromium, server)
    sign_in(page, admin)
    page.get_by_role("link", name="Incident").click()
    page.wait_for_url("**/ui/incident")

    # Lookup: the answer names the token; the value is neither kept in the field nor in the page.
    value = made[1]["token"]
    page.get_by_label("Token value or JWT").fill(value)
    page.get_by_role("button", name="Look up").click()
    result = page.get_by_test_id("lookup-result")
    assert "leaky reader" in result.inner_text() and "Valid now." in result.inner_text()
    assert page.get_by_label("Token value or JWT").input_value() == ""
    assert value not in page.content() and "/ui/incident/lookup" in page.url  # a POST: no value in a URL
    shoot(page, "incident-lookup", reload=False)

    # Preview: the plan, nothing written.
    page.get_by_label("Resource (Data Source or Pipe)").fill("leaky_ds")
    page.get_by_label("Reason (recorded with every deletion; required to confirm)").fill("leaked in a CI log")
    page.get_by_test_id("preview").click()
    plan = page.get_by_test_id("plan")
    plan.wait_for()
    rows = plan.locator("tbody tr")
    assert sorted(rows.nth(i).get_attribute("data-token-id") for i in range(rows.count())) == sorted(
        t["id"] for t in made
    )
    assert all(api(server, "GET", f"/v0/tokens/{t['id']}", admin).status_code == 200 for t in made)
    shoot(page, "incident-preview", reload=False)

    # Confirm: one revocation, both tokens gone, the trail filtered by its id.
    page.get_by_test_id("confirm-revoke").click()
    page.wait_for_url("**/ui/incident?revocation=*")
    revocation_id = page.get_by_test_id("revocation-id").inner_text()
    assert page.url.endswith(f"revocation={revocation_id}") and flash(page) == "Revoked 2 tokens."
    assert all(api(server, "GET", f"/v0/tokens/{t['id']}", admin).status_code == 404 for t in made)
    assert api(server, "GET", f"/v0/tokens/{made[0]['id']}", made[0]["token"]).status_code == 403
    shoot(page, "incident-revoked")
    page.get_by_test_id("revocation-audit").click()
    page.wait_for_url(f"**/ui/audit?revocation={revocation_id}")
    audit_rows = page.get_by_test_id("audit-table").locator("tbody tr")
    assert [audit_rows.nth(i).get_attribute("data-event-type") for i in range(audit_rows.count())] == ["Deleted"] * 2
    assert "leaked in a CI log" in audit_rows.nth(0).inner_text()

    # The revoked token's page: its exposure, closed at the revocation.
    page.goto(f"/ui/tokens/{made[1]['id']}")
    lanes = page.get_by_test_id("exposure-lane")
    assert lanes.count() == 2  # leaky_ds and its quarantine
    assert lanes.first.get_attribute("data-resource") == "leaky_ds"
    assert "to now" not in page.get_by_test_id("exposure").inner_text()
    shoot(page, "token-exposure-revoked")
    assert page.js_errors == []


def test_the_token_page_sets_an_expiry_and_the_review_page_downloads_its_csv(
    server: dict[str, Any], chromium: Any
) -> None:
    admin = server["tokens"]["admin token"]["token"]
    created = api(server, "POST", "/v0/tokens", admin, name="=quarterly export", scope="DATASOURCES:READ:events")
    assert created.status_code == 200, created.text
    token_id = created.json()["id"]
    page = new_page(chromium, server)
    sign_in(page, admin)
    assert page.locator(f"[data-token-id='{token_id}'] [data-testid='expiry']").inner_text() == "never"

    page.goto(f"/ui/tokens/{token_id}")
    assert page.get_by_test_id("last-used").inner_text() == "never used"
    when = datetime.now(UTC).replace(microsecond=0) + timedelta(days=30)
    page.get_by_label("Expires at").fill(when.strftime("%Y-%m-%dT%H:%M:%S"))
    page.get_by_test_id("set-expiry").click()
    page.wait_for_url("**done=expiry-set")
    assert flash(page) == "Expiry set."
    assert when.strftime("%Y-%m-%d %H:%M:%S UTC") in page.get_by_test_id("expiry").inner_text()
    shown = api(server, "GET", f"/v0/tokens/{token_id}", admin).json()
    assert shown["expires_at"].startswith(when.strftime("%Y-%m-%dT%H:%M:%S"))
    shoot(page, "token-expiry")

    page.get_by_role("link", name="Review").click()
    page.wait_for_url("**/ui/review")
    summary = page.get_by_test_id("review-summary")
    assert page.get_by_test_id("stat-tokens").inner_text() == str(page.locator("tbody tr").count())
    assert "DATASOURCES:READ" in summary.inner_text()
    row = page.locator(f"tr[data-token-id='{token_id}']")
    assert "=quarterly export" in row.inner_text() and when.strftime("%Y-%m-%d") in row.inner_text()
    shoot(page, "review")
    with page.expect_download() as download:
        page.get_by_test_id("review-csv").click()
    assert download.value.suggested_filename == "access-review.csv"
    text = Path(download.value.path()).read_text()
    assert text.startswith("token_id,name,kind,scopes,")
    assert "'=quarterly export" in text
    assert page.js_errors == []
