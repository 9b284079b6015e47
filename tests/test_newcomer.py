"""What a newcomer tripped on when following the README, docs/compliance.md and docs/operations.md
word for word: one regression test (or more) per finding."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from rich.console import Console

from tests.api_helpers import create, url
from tokentrail.api.cli import audit as cli_audit
from tokentrail.api.cli import tokens as cli_tokens
from tokentrail.api.cli.client import Client
from tokentrail.api.cli.main import _difference_text
from tokentrail.projections.rebuild import Difference

REPO = Path(__file__).resolve().parent.parent
SECRET = "newcomer-test-secret-key-0123456789abcdef"


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENTRAIL_")}
    env.update(TOKENTRAIL_SECRET_KEY=SECRET, TOKENTRAIL_DATA_DIR=str(data_dir), PYTHONPATH=str(REPO), COLUMNS="100")
    env.update(extra)
    return env


def _cli(env: dict[str, str], *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tokentrail.api.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def _text(renderable: Any) -> str:
    console = Console(record=True, width=200)
    console.print(renderable)
    return console.export_text()


# -- 1. a bare `init` on an existing store creates nothing ----------------------------------------------


@pytest.mark.e2e
def test_a_bare_init_on_a_store_whose_workspace_is_not_default_creates_nothing(tmp_path: Path) -> None:
    env = _env(tmp_path / "data")
    made = _cli(env, "init", "--workspace", "analytics", "--email", "ops@example.com", "--json")
    assert made.returncode == 0, made.stderr
    analytics = json.loads(made.stdout)
    admin = next(t["token"] for t in analytics["tokens"] if t["name"] == "admin token")
    quiet = _cli(env, "init", "--quiet")  # what the key-rotation steps run
    assert quiet.returncode == 0 and quiet.stdout == admin + "\n", quiet.stderr
    again = json.loads(_cli(env, "init", "--json").stdout)
    assert again["created"] is False and again["workspace"]["name"] == "analytics"
    # With two workspaces a bare init asks which, and still creates nothing.
    assert _cli(env, "init", "--workspace", "second").returncode == 0
    ambiguous = _cli(env, "init")
    assert ambiguous.returncode == 1 and "analytics, second" in ambiguous.stderr and "--workspace" in ambiguous.stderr
    listed = _cli(env, "init", "--workspace", "analytics", "--json")
    assert json.loads(listed.stdout)["created"] is False
    with __import__("sqlite3").connect(tmp_path / "data" / "tokentrail.db") as db:
        names = [r[0] for r in db.execute("SELECT name FROM tt_workspaces ORDER BY name")]
    assert names == ["analytics", "second"]


# -- 2. one vocabulary for "events" -------------------------------------------------------------------------


def test_the_user_tokens_creation_is_in_the_workspace_audit(client, ws) -> None:
    events = client.get(url("/v0/audit", ws.admin, event="Created")).json()["events"]
    user_token = ws.id_of("user token")
    assert any(e["token_id"] == user_token and e["aggregate"] == "token" for e in events), events
    assert any(e["aggregate"] == "user" for e in events)


def test_another_owners_user_token_stays_out_of_the_audit(client, ws, other) -> None:
    events = client.get(url("/v0/audit", ws.admin, limit=1000)).json()["events"]
    assert other.id_of("user token") not in {e["token_id"] for e in events}
    assert other.id not in {e["workspace_id"] for e in events}


def test_a_workspaces_creation_names_the_workspace_in_the_cli_table(client, ws) -> None:
    events = client.get(url("/v0/audit", ws.admin, event="Created")).json()["events"]
    created = next(e for e in events if e["aggregate"] == "workspace")
    row = _text(cli_audit.events_table([created]))
    assert "workspace Created" in row and f"workspace {ws.name}" in row


def test_counts_say_which_events_they_count() -> None:
    source = Path(cli_audit.__file__).read_text()
    assert "exported {count} audit events" in source
    assert "stored events checked (the whole log" in source
    page = (REPO / "api" / "templates" / "audit.html").read_text()
    assert "Audit events <span" in page and "position in the log" in page
    assert "stored events hash" in (REPO / "api" / "templates" / "audit_verify.html").read_text()
    compliance = (REPO / "docs" / "compliance.md").read_text()
    assert "## What an event is" in compliance


# -- 3. the console's compare view honours Kind and Permission without a name ----------------------------------


def _sign_in(client, value: str) -> None:
    csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/ui/signin").text)
    assert csrf
    answer = client.post("/ui/signin", data={"csrf": csrf.group(1), "token": value}, follow_redirects=False)
    assert answer.status_code == 303, answer.text


def test_the_compare_view_filters_by_kind_and_permission_without_a_name(client, ws) -> None:
    before = client.get("/v0/regions")  # noqa: F841 - a request, so the clock has moved past setup
    from tokentrail.domain.clock import format_instant, now, to_micros

    start = format_instant(to_micros(now()) - 1_000_000)
    create(client, ws.admin, "reader", "DATASOURCES:READ:events")
    create(client, ws.admin, "appender", "DATASOURCES:APPEND:events")
    create(client, ws.admin, "piper", "PIPES:READ:top")
    _sign_in(client, ws.admin)
    page = client.get(
        "/ui/access", params={"kind": "datasource", "permission": "READ", "compare": start[:19], "at": ""}
    ).text
    section = page[page.index('data-testid="access-diff"') :]
    assert "reader" in section
    assert "appender" not in section and "piper" not in section and "APPEND" not in section
    everything = client.get("/ui/access", params={"kind": "any", "permission": "any", "compare": start[:19]}).text
    section = everything[everything.index('data-testid="access-diff"') :]
    assert "reader" in section and "appender" in section and "piper" in section


# -- 4. the README's exit codes --------------------------------------------------------------------------------


def test_the_readme_says_access_diff_exits_2_only_with_exit_code() -> None:
    readme = (REPO / "README.md").read_text()
    sentence = readme[readme.index("Exit codes:") :].split("\n\n")[0]
    assert "--exit-code" in sentence and "without it a diff exits 0" in sentence


# -- 5. GET / ------------------------------------------------------------------------------------------------


def test_the_root_leads_a_browser_to_the_console_and_tells_a_program_where_things_are(client) -> None:
    browser = client.get("/", headers={"Accept": "text/html,application/xhtml+xml"}, follow_redirects=False)
    assert browser.status_code == 307 and browser.headers["location"] == "/ui"
    program = client.get("/")
    assert program.status_code == 200 and program.json()["console"] == "/ui" and program.json()["health"] == "/healthz"


# -- 6. init prints every value on one line -------------------------------------------------------------------


@pytest.mark.e2e
def test_init_prints_ids_and_values_unbroken_at_100_columns(tmp_path: Path) -> None:
    env = _env(tmp_path / "data")
    tokens = json.loads(_cli(env, "init", "--json").stdout)["tokens"]
    shown = _cli(env, "init")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    for token in tokens:
        assert any(line.strip().endswith(token["token"]) for line in lines), token["name"]
        assert any(line.strip().endswith(token["id"]) for line in lines), token["name"]
    assert "│" not in shown.stdout


# -- 7. backups: ignored by git and private ----------------------------------------------------------------------


def test_keys_and_backups_are_ignored_by_git() -> None:
    for path in (
        "backup/secret.key",
        "backup/tokentrail.db",
        "secret.key",
        "checkpoint-ed25519.pem",
        "backup/checkpoint.json",
    ):
        ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=REPO)
        assert ignored.returncode == 0, f"{path} is not ignored"


@pytest.mark.e2e
def test_the_documented_backup_leaves_every_file_readable_by_its_owner_only(tmp_path: Path) -> None:
    env = _env(tmp_path / "tokentrail-data")
    env.pop("TOKENTRAIL_SECRET_KEY")  # the key file, as in the guide
    assert _cli(env, "init", "--quiet", cwd=tmp_path).returncode == 0
    guide = (REPO / "docs" / "operations.md").read_text()
    block = guide[guide.index("```bash\numask 077") + len("```bash\n") :]
    block = block[: block.index("```")]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "tokentrail").write_text(f'#!/bin/sh\nexec {sys.executable} -m tokentrail.api.cli "$@"\n')
    (bin_dir / "tokentrail").chmod(0o755)
    env.update(PATH=f"{bin_dir}:{env['PATH']}", TOKENTRAIL_DATA_DIR="tokentrail-data")
    ran = subprocess.run(["bash", "-c", "umask 022\n" + block], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    files = sorted((tmp_path / "backup").iterdir())
    assert {f.name for f in files} >= {"tokentrail.db", "secret.key", "checkpoint-ed25519.pem", "checkpoint.json"}
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f"{f.name}: {oct(f.stat().st_mode)}"


# -- 8. the CLI's small lies ----------------------------------------------------------------------------------------


def test_a_refused_operation_does_not_blame_a_correct_token(capsys) -> None:
    refused = httpx.Response(403, json={"error": "default tokens cannot be deleted"})
    with pytest.raises(typer.Exit):
        Client("http://127.0.0.1:1", "t")._check(refused)
    assert "check --token" not in capsys.readouterr().err
    bad_token = httpx.Response(403, json={"error": "invalid authentication token"})
    with pytest.raises(typer.Exit):
        Client("http://127.0.0.1:1", "t")._check(bad_token)
    assert "check --token" in capsys.readouterr().err


@pytest.mark.e2e
def test_flags_show_no_bool_metavar_in_help(tmp_path: Path) -> None:
    for command in (["init"], ["token", "ls"], ["audit", "verify"], []):
        shown = _cli(_env(tmp_path), *command, "--help")
        assert shown.returncode == 0 and "--help" in shown.stdout
        assert "<bool>" not in shown.stdout, command


def test_rebuild_verify_names_the_columns_that_differ() -> None:
    live = ("id-1", "w", "renamed behind the ledger", "")
    rebuilt = ("id-1", "w", "admin token", "")
    text = _difference_text(Difference("tt_tokens", ("id-1",), live + (0,) * 19, rebuilt + (0,) * 19))
    assert "row id=id-1" in text and "name: live 'renamed behind the ledger', rebuilt 'admin token'" in text
    assert "(0," not in text and "workspace_id" not in text  # only what differs, not row tuples
    assert "only in the live tables" in _difference_text(Difference("tt_tokens", ("id-2",), live, None))


def test_a_refresh_without_grace_says_so() -> None:
    assert "no grace" in cli_audit.change_text({"type": "Refreshed", "details": {"grace_seconds": 0}})
    assert "grace 30 s" in cli_audit.change_text({"type": "Refreshed", "details": {"grace_seconds": 30}})


def test_origin_means_one_thing_per_table() -> None:
    listing = _text(cli_tokens.token_rows([{"name": "t", "id": "i", "scopes": [], "origin": {"type": "C"}}]))
    assert "made by" in listing and "hand (C)" in listing and "origin" not in listing
    event = {"type": "Created", "aggregate": "token", "origin": "api", "claimed": {"origin": "cli"}, "actor": {}}
    history = _text(cli_audit.events_table([event]))
    assert "via" in history and "api (cli claimed)" in history and "origin" not in history


def test_an_unknown_scope_suggests_a_valid_one(client, ws) -> None:
    answer = client.post(url("/v0/tokens", ws.admin, name="typo", scope="DATASOURCES:REED:events"))
    assert answer.status_code == 400
    assert "did you mean DATASOURCES:READ" in answer.json()["error"] and "PIPES:READ" in answer.json()["error"]


def test_a_filter_with_an_open_quote_is_named_whole(client, ws) -> None:
    answer = client.post(url("/v0/tokens", ws.admin, name="f", scope="DATASOURCES:READ:events:country = 'ES"))
    assert answer.status_code == 400
    message = answer.json()["error"]
    assert "country = 'ES" in message and "quote is not closed" in message and "'E'" not in message
