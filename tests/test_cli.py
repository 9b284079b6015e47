"""The `tokentrail` CLI driven as a user drives it: a subprocess per command, against a live
`tokentrail serve` (a subprocess too) or against the store on disk for the local commands.

Every test checks the exit code scripts rely on (0 ok, 1 error, 2 verification failed or
differences, 3 server unreachable), and errors are one line on stderr without a traceback.
"""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import typer

from tokentrail.api.cli.common import parse_time
from tokentrail.api.cli.tokens import scope_groups

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
SECRET = "cli-test-secret-key-0123456789abcdef"


# -- harness --------------------------------------------------------------------------------------


def base_env(data_dir: Path, secret: bool = True, **extra: str) -> dict[str, str]:
    """A clean environment: nothing from the caller's TOKENTRAIL_* settings leaks in. Without
    `secret` the server key is the data directory's secret.key, as on a first run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENTRAIL_")}
    if secret:
        env["TOKENTRAIL_SECRET_KEY"] = SECRET
    env.update(
        {
            "TOKENTRAIL_DATA_DIR": str(data_dir),
            "PYTHONPATH": str(REPO),
            "COLUMNS": "200",
        }
    )
    env.update(extra)
    return env


def run(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tokentrail.api.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def ok(env: dict[str, str], *args: str) -> str:
    result = run(env, *args)
    assert result.returncode == 0, f"{args} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def as_json(env: dict[str, str], *args: str) -> dict:
    return json.loads(ok(env, *args, "--json"))


def one_line_error(result: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    """The failure contract: this exit code, one `error:` line on stderr, no traceback."""
    assert result.returncode == code, f"exit {result.returncode}, wanted {code}\n{result.stdout}\n{result.stderr}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    env: dict[str, str]  # for CLI calls: TOKENTRAIL_HOST and TOKENTRAIL_TOKEN (the admin token) set
    admin: str
    data_dir: Path
    process: subprocess.Popen


def start_server(data_dir: Path, secret: bool = True) -> Server:
    """`tokentrail serve` on a free port over `data_dir`; ready when it answers."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = base_env(data_dir, secret)
    log = open(data_dir.parent / f"serve-{port}.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "tokentrail.api.cli", "serve", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/v0/regions", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"tokentrail serve did not start: {(data_dir.parent / f'serve-{port}.log').read_text()}")
        time.sleep(0.1)
    # On an empty store `serve` initialises it and prints the admin token: use that one.
    printed = re.search(r"admin token:\s*(p\.\S+)", (data_dir.parent / f"serve-{port}.log").read_text())
    assert printed, "tokentrail serve did not print the admin token of the store it initialised"
    admin = printed.group(1)
    client_env = {**env, "TOKENTRAIL_HOST": url, "TOKENTRAIL_TOKEN": admin}
    return Server(url, client_env, admin, data_dir, process)


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    live = start_server(tmp_path_factory.mktemp("cli") / "data")
    yield live
    stop_server(live)


@pytest.fixture
def local(tmp_path: Path) -> dict[str, str]:
    """The environment of a fresh local store (no server)."""
    return base_env(tmp_path / "data")


def get(server: Server, path: str, token: str) -> httpx.Response:
    return httpx.get(server.url + path, headers={"Authorization": f"Bearer {token}"}, timeout=10)


# -- small pure pieces ----------------------------------------------------------------------------


def test_relative_times_become_unix_seconds_that_long_ago() -> None:
    now = 1_800_000_000.0
    assert float(parse_time("1h", now)) == now - 3600
    assert float(parse_time("30m ago", now)) == now - 1800
    assert float(parse_time("1h30m", now)) == now - 5400
    assert float(parse_time("2d", now)) == now - 2 * 86_400
    assert float(parse_time("now", now)) == now
    assert parse_time("1772366400") == "1772366400"
    assert parse_time("2026-03-01T12:00:00+01:00") == "2026-03-01T12:00:00+01:00"
    with pytest.raises(typer.BadParameter, match="offset"):
        parse_time("2026-03-01T12:00:00")
    with pytest.raises(typer.BadParameter, match="not a time"):
        parse_time("yesterday")


def test_resource_and_filter_pair_with_the_scope_they_follow() -> None:
    argv = [
        "r",
        "--scope",
        "DATASOURCES:READ",
        "--resource",
        "events",
        "--filter",
        "a = 1",
        "--scope",
        "ADMIN",
        "--scope=PIPES:READ",
        "--resource=top",
    ]
    assert scope_groups(argv, ["DATASOURCES:READ", "ADMIN", "PIPES:READ"], ["events", "top"], ["a = 1"]) == [
        "DATASOURCES:READ:events:a = 1",
        "ADMIN",
        "PIPES:READ:top",
    ]
    with pytest.raises(typer.BadParameter, match="must follow"):
        scope_groups(["--resource", "events", "--scope", "X"], ["X"], ["events"], [])


def test_every_command_has_help_with_an_example(local: dict[str, str]) -> None:
    from typer.main import get_command

    from tokentrail.api.cli import app

    def walk(command, path):  # noqa: ANN001, ANN202
        yield path, command
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, [*path, name])

    commands = list(walk(get_command(app), []))
    assert {" ".join(p) for p, _ in commands} >= {
        "",
        "token",
        "audit",
        "access",
        "workspace",
        "init",
        "serve",
        "migrate",
        "rebuild",
        "deploy",
        "token ls",
        "token create",
        "token scopes",
        "token refresh",
        "token rm",
        "token copy",
        "token history",
        "audit export",
        "audit verify",
        "audit checkpoint",
        "access who",
        "access diff",
        "workspace ls",
        "workspace create",
    }
    for path, command in commands:
        assert "Example: " in (command.help or ""), f"tokentrail {' '.join(path)} has no example"
    # and as a user sees it:
    assert "Example: tokentrail token create reader" in ok(local, "token", "create", "--help")
    assert "Example: tokentrail audit --from 1d" in ok(local, "audit", "--help")


# -- local commands -------------------------------------------------------------------------------


def test_init_twice_prints_the_same_workspace_and_tokens(local: dict[str, str]) -> None:
    first = as_json(local, "init", "--workspace", "analytics", "--email", "me@example.com")
    again = as_json(local, "init", "--workspace", "analytics", "--email", "me@example.com")
    assert first["created"] is True and again["created"] is False
    assert again["workspace"] == first["workspace"]
    assert [t["id"] for t in again["tokens"]] == [t["id"] for t in first["tokens"]]
    names = {t["name"]: t for t in first["tokens"]}
    assert {"admin token", "admin me@example.com", "create datasource token"} <= set(names)
    assert any(s["type"] == "AUTH" for t in first["tokens"] for s in t["scopes"])
    quiet = ok(local, "init", "--workspace", "analytics", "--quiet")
    assert quiet == names["admin token"]["token"] + "\n"


def test_migrate_reports_the_schema_revision(local: dict[str, str]) -> None:
    status = as_json(local, "migrate")
    assert status["up_to_date"] is True and status["revision"] == status["head"]


def test_rebuild_verify_passes_then_exits_2_on_a_changed_read_model(local: dict[str, str], tmp_path: Path) -> None:
    ok(local, "init")
    report = as_json(local, "rebuild", "--verify")
    assert report["ok"] is True and report["events"] > 0 and report["differences"] == []
    progress = run({**local, "TOKENTRAIL_PROGRESS": "1"}, "rebuild")
    assert progress.returncode == 0 and "rebuilding" in progress.stderr and "rebuilt" in progress.stdout
    with sqlite3.connect(tmp_path / "data" / "tokentrail.db") as db:
        db.execute("UPDATE tt_tokens SET name = 'renamed behind the ledger' WHERE name = 'admin token'")
    failed = run(local, "rebuild", "--verify")
    one_line_error(failed, 2, "differ from a rebuild")
    assert "difference in tt_tokens" in failed.stdout and "renamed behind the ledger" in failed.stdout


def test_audit_verify_names_the_first_edited_position_and_checkpoints_catch_it(
    local: dict[str, str], tmp_path: Path
) -> None:
    ok(local, "init")
    shown = run({**local, "TOKENTRAIL_PROGRESS": "1"}, "audit", "verify", "--json")
    assert shown.returncode == 0 and "verifying" in shown.stderr
    intact = json.loads(shown.stdout)
    assert intact["ok"] is True and intact["first_bad_position"] is None and intact["events_checked"] >= 5
    checkpoint = tmp_path / "checkpoint.json"
    assert "written to" in ok(local, "audit", "checkpoint", "-o", str(checkpoint))
    signed = json.loads(checkpoint.read_text())
    assert signed["position"] == intact["events_checked"] and signed["signature"]
    held = as_json(local, "audit", "verify", "--checkpoint", str(checkpoint))
    assert held["ok"] is True and held["checkpoint"]["ok"] is True

    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps({**signed, "head": "0" * 64}))
    one_line_error(run(local, "audit", "verify", "--checkpoint", str(forged)), 2, "signature is not valid")
    forged.write_text("not json")
    one_line_error(run(local, "audit", "verify", "--checkpoint", str(forged)), 1, "not a JSON checkpoint")

    with sqlite3.connect(tmp_path / "data" / "tokentrail.db") as db:
        db.execute("UPDATE stored_events SET state = CAST('{\"tampered\": true}' AS BLOB) WHERE rowid = 5")
    broken = run(local, "audit", "verify", "--json")
    assert broken.returncode == 2
    assert json.loads(broken.stdout)["first_bad_position"] == 5
    assert broken.stderr.strip().splitlines()[-1].startswith("error: the audit trail is broken at position 5")
    one_line_error(run(local, "audit", "verify", "--checkpoint", str(checkpoint)), 2, "broken at position 5")


def test_local_deploy_needs_a_workspace_name_when_the_store_has_several(local: dict[str, str], tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "events.datasource").write_text('SCHEMA >\n    `id` UInt64\n\nTOKEN "tracker" APPEND\n')
    one_line_error(run(local, "deploy", str(project)), 1, "tokentrail init")
    ok(local, "init", "--workspace", "one")
    ok(local, "init", "--workspace", "two")
    one_line_error(run(local, "deploy", str(project)), 1, "--workspace")
    one_line_error(run(local, "deploy", str(project), "--workspace", "three"), 1, "no workspace named 'three'")
    one_line_error(run(local, "deploy", str(tmp_path / "missing")), 1, "is not a folder")
    done = as_json(local, "deploy", str(project), "--workspace", "two")
    assert done["result"] == "success" and done["workspace"]["name"] == "two"


# -- against a server -----------------------------------------------------------------------------


def test_token_lifecycle(server: Server) -> None:
    env = server.env
    created = as_json(
        env,
        "token",
        "create",
        "lifecycle",
        "--scope",
        "DATASOURCES:READ",
        "--resource",
        "events",
        "--filter",
        "country = 'ES' AND n + 1 > 2",
        "--scope",
        "PIPES:READ",
        "--resource",
        "top",
        "--description",
        "for the BI team",
    )
    assert [s for s in created["scopes"]] == [
        {"type": "DATASOURCES:READ", "resource": "events", "filter": "country = 'ES' AND n + 1 > 2"},
        {"type": "PIPES:READ", "resource": "top", "filter": ""},
    ]
    assert created["description"] == "for the BI team"
    listed = as_json(env, "token", "ls", "--match", "lifecycle")["tokens"]
    assert [t["id"] for t in listed] == [created["id"]]
    assert "lifecycle" in ok(env, "token", "ls") and "admin token" in ok(env, "token", "ls")
    scopes = as_json(env, "token", "scopes", "lifecycle")
    assert scopes[0]["filter"] == "country = 'ES' AND n + 1 > 2"
    assert "country = 'ES' AND n + 1 > 2" in ok(env, "token", "scopes", "lifecycle")

    value = ok(env, "token", "copy", "lifecycle")
    assert value == created["token"] + "\n"  # the value and nothing else
    assert get(server, f"/v0/tokens/{created['id']}", value.strip()).status_code == 200

    refreshed = as_json(env, "token", "refresh", "lifecycle")
    assert refreshed["id"] == created["id"] and refreshed["token"] != created["token"]
    assert get(server, f"/v0/tokens/{created['id']}", created["token"]).status_code == 403
    assert "the previous value stops working in 60 s" in ok(
        env, "token", "refresh", "lifecycle", "--grace-seconds", "60"
    )

    history = as_json(env, "token", "history", "lifecycle")["events"]
    assert [e["type"] for e in history] == ["Created", "Refreshed", "Refreshed"]
    assert {(e["origin"], e["claimed"]["origin"]) for e in history} == {("api", "cli")}
    assert "Refreshed" in ok(env, "token", "history", "lifecycle")

    assert as_json(env, "token", "rm", "lifecycle") == {"ok": True}
    one_line_error(run(env, "token", "scopes", "lifecycle"), 1, "Token not found", "404")
    assert [e["type"] for e in as_json(env, "token", "history", created["id"])["events"]][-1] == "Deleted"
    one_line_error(run(env, "token", "create", "nothing"), 1, "--scope")
    one_line_error(
        run(env, "token", "create", "bad", "--scope", "DATASOURCES:READ:events:1; DROP TABLE x"), 1, "HTTP 400"
    )


def test_the_audit_trail_records_origin_cli_and_filters(server: Server) -> None:
    env = server.env
    ok(env, "token", "create", "audited", "--scope", "TOKENS")
    ok(env, "token", "refresh", "audited")
    events = as_json(env, "audit", "--token-name", "audited")["events"]
    assert [e["type"] for e in events] == ["Created", "Refreshed"]
    assert all(e["claimed"]["origin"] == "cli" and e["actor"]["name"] == "admin token" for e in events)
    only = as_json(env, "audit", "--token-name", "audited", "--event", "Refreshed")["events"]
    assert [e["type"] for e in only] == ["Refreshed"]
    assert as_json(env, "audit", "--from", "2999-01-01T00:00:00+00:00")["events"] == []
    assert as_json(env, "audit", "--to", "1h")["events"] == []

    first = run(env, "audit", "--limit", "1")
    assert first.returncode == 0 and "--cursor" in first.stderr
    page = as_json(env, "audit", "--limit", "1")
    assert len(page["events"]) == 1 and page["next_cursor"]
    rest = as_json(env, "audit", "--limit", "1", "--cursor", page["next_cursor"])["events"]
    assert rest[0]["position"] > page["events"][0]["position"]
    everything = as_json(env, "audit", "--limit", "2", "--all")
    assert everything["next_cursor"] is None
    assert len(everything["events"]) == len(as_json(env, "audit", "--limit", "1000")["events"])


def test_audit_export_streams_csv_and_ndjson_to_files(server: Server, tmp_path: Path) -> None:
    env = server.env
    ok(env, "token", "create", "exported", "--scope", "TOKENS")
    total = len(as_json(env, "audit", "--all")["events"])
    target = tmp_path / "audit.csv"
    result = run({**env, "TOKENTRAIL_PROGRESS": "1"}, "audit", "export", "-o", str(target))
    assert result.returncode == 0, result.stderr
    assert "exporting" in result.stderr and f"exported {total} audit events" in result.stdout
    rows = list(csv.DictReader(target.open(newline="")))
    assert len(rows) == total and rows[0]["position"] and rows[0]["origin"]
    assert any(r["token_name"] == "exported" and r["claimed_origin"] == "cli" for r in rows)
    assert not (tmp_path / "audit.csv.part").exists()

    summary = as_json(
        env, "audit", "export", "--format", "ndjson", "-o", str(tmp_path / "audit.ndjson"), "--token-name", "exported"
    )
    assert summary["events"] == 1 and summary["format"] == "ndjson"
    lines = (tmp_path / "audit.ndjson").read_text().splitlines()
    assert [json.loads(line)["token_name"] for line in lines] == ["exported"]
    to_stdout = ok(env, "audit", "export", "--token-name", "exported")
    assert json.loads(to_stdout)["type"] == "Created"
    one_line_error(run(env, "audit", "export", "--format", "xml"), 1, "--format")


def test_access_who_as_of_and_diff(server: Server) -> None:
    env = server.env
    before = f"{time.time():.6f}"
    time.sleep(0.01)
    ok(
        env,
        "token",
        "create",
        "reads-orders",
        "--scope",
        "DATASOURCES:READ",
        "--resource",
        "orders",
        "--filter",
        "region = 'EU'",
    )
    now = as_json(env, "access", "who", "orders")
    grant = next(g for g in now["grants"] if g["name"] == "reads-orders")
    assert grant["via"] == "DATASOURCES:READ:orders:region = 'EU'" and grant["filter"] == "region = 'EU'"
    assert "reads-orders" in ok(env, "access", "who", "orders", "--kind", "datasource", "--permission", "READ")
    past = as_json(env, "access", "who", "orders", "--as-of", before)
    assert "reads-orders" not in [g["name"] for g in past["grants"]]
    hour_ago = as_json(env, "access", "who", "orders", "--as-of", "1h")
    assert hour_ago["grants"] == []

    diff = run(env, "access", "diff", "--from", before, "--resource", "orders", "--exit-code", "--json")
    assert diff.returncode == 2
    assert [g["name"] for g in json.loads(diff.stdout)["gained"] if g["permission"] == "READ"] == ["reads-orders"]
    quiet = run(env, "access", "diff", "--from", "now", "--resource", "orders", "--exit-code")
    assert quiet.returncode == 0 and "0 gained, 0 lost, 0 changed" in quiet.stdout
    one_line_error(run(env, "access", "who", "orders", "--kind", "table"), 1, "kind", "HTTP 400")
    one_line_error(run(env, "access", "diff", "--from", "last tuesday"), 1, "--from")


def test_token_ls_as_of_shows_the_table_as_it_stood(server: Server) -> None:
    env = server.env
    before = f"{time.time():.6f}"
    time.sleep(0.01)
    ok(env, "token", "create", "later", "--scope", "TOKENS")
    names_then = [t["name"] for t in as_json(env, "token", "ls", "--as-of", before)["tokens"]]
    assert "admin token" in names_then and "later" not in names_then
    assert "later" in [t["name"] for t in as_json(env, "token", "ls")["tokens"]]


def test_token_ls_pages_with_limit_and_cursor(server: Server) -> None:
    env = server.env
    everything = [t["id"] for t in as_json(env, "token", "ls")["tokens"]]
    assert len(everything) >= 3
    first = as_json(env, "token", "ls", "--limit", "2")
    assert [t["id"] for t in first["tokens"]] == everything[:2] and first["next_cursor"]
    text = ok(env, "token", "ls", "--limit", "2")
    assert f"--cursor {first['next_cursor']}" in text
    rest = as_json(env, "token", "ls", "--limit", "10000", "--cursor", first["next_cursor"])
    assert [t["id"] for t in rest["tokens"]] == everything[2:] and rest["next_cursor"] is None
    one_line_error(run(env, "token", "ls", "--limit", "2", "--cursor", "garbage"), 1, "cursor", "HTTP 400")


def test_deploy_locally_and_against_the_server(server: Server, tmp_path: Path) -> None:
    env = server.env
    project = tmp_path / "project"
    (project / "datasources").mkdir(parents=True)
    (project / "datasources" / "clicks.datasource").write_text(
        'SCHEMA >\n    `id` UInt64\n\nTOKEN "clicks tracker" APPEND\nTOKEN "clicks reader" READ\n'
    )
    local = ["--workspace", "default"]
    plan = as_json(env, "deploy", str(project), "--check", *local)
    assert plan["result"] == "check"
    assert sorted(c["token_name"] for c in plan["deployment"]["token_changes"]) == ["clicks reader", "clicks tracker"]
    assert "clicks reader" not in [t["name"] for t in as_json(env, "token", "ls")["tokens"]]

    result = run({**env, "TOKENTRAIL_PROGRESS": "1"}, "deploy", str(project), *local)
    assert result.returncode == 0 and "2 token changes applied" in result.stdout and "deploying" in result.stderr
    tokens = {t["name"]: t for t in as_json(env, "token", "ls")["tokens"]}  # the server sees the local deploy
    assert tokens["clicks reader"]["origin"] == {"type": "DS", "resource_id": "clicks"}
    assert "nothing to deploy" in ok(env, "deploy", str(project), *local)

    (project / "datasources" / "clicks.datasource").write_text(
        'SCHEMA >\n    `id` UInt64\n\nTOKEN "clicks reader" READ\n'
    )
    remote = as_json(env, "deploy", str(project), "--host", server.url, "--token", server.admin)
    assert remote["result"] == "success"
    assert [(c["token_name"], c["change_type"]) for c in remote["deployment"]["token_changes"]] == [
        ("clicks tracker", "deleted")
    ]
    deployed = as_json(env, "audit", "--deployment", remote["deployment"]["id"])["events"]
    assert {e["origin"] for e in deployed} == {"deployment"} and deployed
    one_line_error(run(env, "deploy", str(project), "--token", "p.nope.nope"), 1, "HTTP 403")


def test_workspaces_with_the_user_token(server: Server) -> None:
    user = ok(server.env, "init", "--user-token").strip()
    created = as_json(server.env, "workspace", "create", "analytics", "--token", user)
    assert created["name"] == "analytics" and created["token"].startswith("p.")
    names = [w["name"] for w in as_json(server.env, "workspace", "ls", "--token", user)["workspaces"]]
    assert sorted(names) == ["analytics", "default"]
    assert [w["name"] for w in as_json(server.env, "workspace", "ls")["workspaces"]] == ["default"]
    new_admin = {**server.env, "TOKENTRAIL_TOKEN": created["token"]}
    assert "admin token" in [t["name"] for t in as_json(new_admin, "token", "ls")["tokens"]]
    one_line_error(run(server.env, "workspace", "create", "nope"), 1, "user token", "HTTP 403")


def test_serve_refuses_a_port_in_use_in_one_line(server: Server) -> None:
    port = server.url.rsplit(":", 1)[1]
    one_line_error(run(server.env, "serve", "--port", port), 1, f"cannot listen on 127.0.0.1:{port}")


def test_server_side_verify_and_checkpoint(server: Server) -> None:
    remote = ["--host", server.url, "--token", server.admin]
    report = as_json(server.env, "audit", "verify", *remote)
    assert report["ok"] is True and report["first_bad_position"] is None
    checkpoint = json.loads(ok(server.env, "audit", "checkpoint", *remote))
    assert checkpoint["position"] >= report["events_checked"] - 1 and checkpoint["signature"]


# -- errors ---------------------------------------------------------------------------------------


def test_unreachable_server_exits_3_with_one_line(local: dict[str, str]) -> None:
    env = {**local, "TOKENTRAIL_HOST": f"http://127.0.0.1:{free_port()}", "TOKENTRAIL_TOKEN": "p.x.y"}
    one_line_error(run(env, "token", "ls"), 3, "cannot reach the tokentrail server", "connection refused")
    one_line_error(run(env, "audit", "export", "-o", "/dev/null"), 3, "cannot reach")


def test_user_mistakes_are_one_line_errors(server: Server) -> None:
    env = server.env
    one_line_error(run({**env, "TOKENTRAIL_TOKEN": "p.bogus.value"}, "token", "ls"), 1, "HTTP 403")
    without_token = {k: v for k, v in env.items() if k != "TOKENTRAIL_TOKEN"}
    one_line_error(run(without_token, "token", "ls"), 1, "no token")
    one_line_error(run(env, "token", "ls", "--bogus"), 1, "No such option: --bogus", "tokentrail token ls --help")
    one_line_error(run(env, "access", "who", "events", "--as-of", "yesterday"), 1, "not a time")
    one_line_error(run(env, "no-such-command"), 1, "No such command")
    one_line_error(run(env, "token", "copy", "no such token"), 1, "Token not found")
    one_line_error(run(env, "token", "rm", "admin token"), 1, "HTTP 4")
    read_only = as_json(env, "token", "create", "read only", "--scope", "PIPES:READ:top")["token"]
    one_line_error(run({**env, "TOKENTRAIL_TOKEN": read_only}, "token", "ls"), 1, "ADMIN or TOKENS", "HTTP 403")
    one_line_error(run(env, "token", "ls", "--host", "ftp://example"), 1, "not an http")


def test_incident_response_from_the_cli(server: Server) -> None:
    env = server.env
    leaked = as_json(env, "token", "create", "ci-bot", "--scope", "TOKENS")["token"]
    bot_env = {**env, "TOKENTRAIL_TOKEN": leaked}
    for name in ("made-1", "made-2"):
        ok(bot_env, "token", "create", name, "--scope", "DATASOURCES:READ", "--resource", "events")
    # Which token is this value? Read from stdin, never from an argument.
    looked = subprocess.run(
        [sys.executable, "-m", "tokentrail.api.cli", "token", "lookup", "--json"],
        cwd=REPO,
        env=env,
        input=leaked + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert looked.returncode == 0, looked.stderr
    found = json.loads(looked.stdout)
    assert (found["name"], found["generation"], found["reason"]) == ("ci-bot", 0, "current")
    one_line_error(run(env, "token", "lookup"), 1, "stdin")
    # What could it reach? A TOKENS token reaches nothing itself, but could mint tokens.
    exposure = as_json(env, "token", "exposure", "ci-bot")
    assert exposure["exposure"] == [] and [e["via"] for e in exposure["escalation"]] == ["TOKENS"]
    text_out = ok(env, "token", "exposure", "made-1")
    assert "events" in text_out and "DATASOURCES:READ:events" in text_out
    # What it made: a dry run writes nothing, then one revocation deletes them all.
    plan = as_json(env, "token", "revoke", "--created-by", "ci-bot", "--dry-run")
    assert sorted(t["name"] for t in plan["tokens"]) == ["made-1", "made-2"] and plan["revocation_id"] is None
    one_line_error(run(env, "token", "revoke", "--created-by", "ci-bot", "--yes"), 1, "reason")
    done = as_json(env, "token", "revoke", "--created-by", "ci-bot", "--reason", "CI logs leaked", "--yes")
    assert sorted(t["name"] for t in done["tokens"]) == ["made-1", "made-2"] and done["revocation_id"]
    listed = as_json(env, "audit", "--revocation", done["revocation_id"])["events"]
    assert sorted(e["token_name"] for e in listed) == ["made-1", "made-2"]
    lookups = as_json(env, "audit", "--event", "TokenLookedUp")["events"]
    assert [e["token_name"] for e in lookups] == ["ci-bot"]
    assert leaked not in json.dumps(lookups)
    # Without --yes the plan is shown and the answer (no: stdin is closed) revokes nothing.
    asked = run(env, "token", "revoke", "--created-by", "admin token", "--reason", "no")
    assert asked.returncode == 1 and "would be deleted" in asked.stdout
    assert as_json(env, "token", "ls")["tokens"]
