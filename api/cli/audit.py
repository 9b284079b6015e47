"""`tokentrail audit …` and `tokentrail access …`: the questions a compliance officer asks.

The trail and the access views are read from a server; `audit verify` and `audit checkpoint` open
the store itself (the chain is recomputed from the events, and the checkpoint key never leaves
the data directory), unless --host/--token ask a server instead.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from tokentrail.api.cli.client import client, remote_client
from tokentrail.api.cli.common import (
    FAILED,
    AsJson,
    DatabaseUrl,
    DataDir,
    Host,
    RemoteHost,
    RemoteToken,
    Token,
    cells,
    console,
    err,
    fail,
    open_service,
    print_json,
    progress_bar,
    say,
    scopes_text,
    short_time,
    table,
    time_option,
)

audit_app = typer.Typer(name="audit", invoke_without_command=True, rich_markup_mode="rich")
access_app = typer.Typer(
    name="access",
    help="Who could do what, at any instant; what changed between two.\n\n"
    "Example: [bold]tokentrail access who events --as-of 1h[/]",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

TimeFrom = typer.Option(
    None, "--from", callback=time_option, help="Events at or after: ISO 8601, Unix seconds, or 1h/2d ago."
)
TimeTo = typer.Option(None, "--to", callback=time_option, help="Events before this instant.")
Actor = typer.Option(None, "--actor", help="Only changes made by this token (id or name).")
TokenId = typer.Option(None, "--token-id", help="Only events of this token id.")
TokenName = typer.Option(None, "--token-name", help="Only events of tokens with this name.")
Resource = typer.Option(None, "--resource", help="Only events touching scopes on this datasource or pipe.")
Event = typer.Option([], "--event", help="Only these event types (Created, Refreshed, …); repeatable.")
Deployment = typer.Option(None, "--deployment", help="Only the changes of this deployment id.")
Revocation = typer.Option(None, "--revocation", help="Only the deletions of this bulk revocation id.")


def _filters(
    start: str | None,
    end: str | None,
    actor: str | None,
    token_id: str | None,
    token_name: str | None,
    resource: str | None,
    event: list[str],
    deployment: str | None,
    revocation: str | None = None,
) -> list[tuple[str, Any]]:
    return [
        ("from", start),
        ("to", end),
        ("actor", actor),
        ("token_id", token_id),
        ("token_name", token_name),
        ("resource", resource),
        ("event", ",".join(event) or None),
        ("deployment", deployment),
        ("revocation", revocation),
    ]


def change_text(event: dict[str, Any]) -> str:
    """What an event changed, in a few words for a table cell."""
    before, after = event.get("scopes_before") or [], event.get("scopes_after") or []
    parts = [f"+{s}" for s in after if s not in before] + [f"-{s}" for s in before if s not in after]
    details = event.get("details") or {}
    if event.get("type") == "Refreshed":
        grace = details.get("grace_seconds") or 0
        parts.append(f"new value, grace {grace} s" if grace else "new value, no grace (the old one stopped at once)")
    if details.get("revocation_id"):
        parts.append(f"revoked ({details['revocation_id'][:8]}): {details.get('reason')}")
    if "outcome" in details:
        what = "a JWT" if details.get("jwt") else f"value #{details.get('generation')}"
        parts.append(f"looked up {what}: {details['outcome']}")
    for key in ("name", "previous_name", "description"):
        if key in details and isinstance(details[key], str):
            parts.append(f"{key}: {details[key]}")
    return "\n".join(parts)


def via_text(event: dict[str, Any]) -> str:
    """How the change arrived: the server's view (`api`, `ui`, `deployment`, `system`), then what
    the client claimed, labelled as such (`api (cli claimed)`)."""
    via = event.get("origin") or ""
    if event.get("deployment_id"):
        via += f" {event['deployment_id'][:8]}"
    claimed = (event.get("claimed") or {}).get("origin")
    if claimed and claimed != event.get("origin"):
        via += f" ({claimed} claimed)"
    return via


def subject_text(event: dict[str, Any]) -> str:
    """What the event is about: a token's name, else the workspace, user or JWT it concerns."""
    aggregate, details = event.get("aggregate") or "token", event.get("details") or {}
    if aggregate == "workspace":
        return f"workspace {details.get('name', '')}".strip()
    if aggregate == "user":
        return f"user {details.get('email', '')}".strip()
    if aggregate == "jwt":
        return f"JWT {event.get('token_name') or ''}".strip()
    if aggregate == "deployment":
        return "deployment"
    return event.get("token_name") or ""


POSITION_NOTE = (
    "pos is the event's position in the log, shared by every workspace: the numbers between belong to "
    "other workspaces and users, and to internal name-index events (all of them counted by `audit verify`)."
)


def events_table(events: list[dict[str, Any]], title: str | None = None) -> Any:
    t = table("pos", "at (UTC)", "event", "about", "actor", "via", "change", title=title)
    for e in events:
        aggregate = e.get("aggregate") or "token"
        t.add_row(
            *cells(
                e.get("position"),
                short_time(e.get("at")),
                e.get("type") if aggregate in ("token", "jwt") else f"{aggregate} {e.get('type')}",
                subject_text(e),
                (e.get("actor") or {}).get("name"),
                via_text(e),
                change_text(e),
            )
        )
    return t


# -- audit ----------------------------------------------------------------------------------------


@audit_app.callback()
def audit(
    ctx: typer.Context,
    start: str | None = TimeFrom,
    end: str | None = TimeTo,
    actor: str | None = Actor,
    token_id: str | None = TokenId,
    token_name: str | None = TokenName,
    resource: str | None = Resource,
    event: list[str] = Event,
    deployment: str | None = Deployment,
    revocation: str | None = Revocation,
    limit: int = typer.Option(100, "--limit", min=1, max=10_000, help="Events per page."),
    cursor: str | None = typer.Option(None, "--cursor", help="Continue from a previous page's next_cursor."),
    every: bool = typer.Option(False, "--all", help="Follow the cursors and print every matching event."),
    as_json: bool = AsJson,
    host: str = Host,
    token: str | None = Token,
) -> None:
    """Query, export and verify the audit trail; without a sub-command, print it (filtered).

    Example: [bold]tokentrail audit --from 1d --event Created --event Deleted --actor "admin token"[/]
    """
    if ctx.invoked_subcommand is not None:
        return
    api = client(host, token)
    params = _filters(start, end, actor, token_id, token_name, resource, event, deployment, revocation)
    events: list[dict[str, Any]] = []
    while True:
        page = api.get("/v0/audit", [*params, ("limit", limit), ("cursor", cursor)])
        events += page.get("events", [])
        cursor = page.get("next_cursor")
        if not (every and cursor):
            break
    if as_json:
        print_json({"events": events, "next_cursor": cursor})
        return
    if events:
        console.print(events_table(events))
        say(f"{len(events)} audit events. {POSITION_NOTE}")
    else:
        say("no events match")
    if cursor:
        err.print(f"more events: add --cursor {cursor} (or --all)")


@audit_app.command("export")
def audit_export(
    output: Path | None = typer.Option(None, "-o", "--output", help="Write here (default: stdout)."),
    fmt: str | None = typer.Option(None, "--format", help="csv or ndjson (default: from -o's suffix, else ndjson)."),
    start: str | None = TimeFrom,
    end: str | None = TimeTo,
    actor: str | None = Actor,
    token_id: str | None = TokenId,
    token_name: str | None = TokenName,
    resource: str | None = Resource,
    event: list[str] = Event,
    deployment: str | None = Deployment,
    revocation: str | None = Revocation,
    as_json: bool = AsJson,
    host: str = Host,
    token: str | None = Token,
) -> None:
    """Stream the whole (filtered) trail to a CSV or NDJSON file, with a progress indicator.

    Example: [bold]tokentrail audit export --format csv -o audit-2026.csv --from 2026-01-01T00:00:00+00:00[/]
    """
    chosen = fmt or (output.suffix.lstrip(".") if output and output.suffix in (".csv", ".ndjson") else "ndjson")
    chosen = chosen.lower()
    if chosen not in ("csv", "ndjson"):
        raise typer.BadParameter("csv or ndjson", param_hint="--format")
    params = [
        *_filters(start, end, actor, token_id, token_name, resource, event, deployment, revocation),
        ("format", chosen),
    ]
    api = client(host, token)
    partial = output.with_name(output.name + ".part") if output else None
    lines = size = 0
    try:
        sink = partial.open("wb") if partial else os.fdopen(os.dup(1), "wb")
    except OSError as error:
        fail(f"cannot write {output}: {error.strerror}")
    try:
        with sink, api.stream("/v0/audit", params) as response, progress_bar("exporting", total_known=False) as bar:
            task = bar.add_task("export", total=None, unit="events")
            for chunk in response.iter_bytes():
                sink.write(chunk)
                lines += chunk.count(b"\n")
                size += len(chunk)
                bar.update(task, completed=max(lines - (chosen == "csv"), 0))
    except BaseException:
        if partial:
            partial.unlink(missing_ok=True)
        raise
    if partial and output:
        partial.replace(output)
    count = max(lines - (chosen == "csv"), 0)
    if as_json and output:  # on stdout the export itself is the machine-readable output
        print_json({"file": str(output), "format": chosen, "events": count, "bytes": size})
    elif output:
        say(
            f"exported {count} audit events of the workspace ({size} bytes, {chosen}) to {escape(str(output))}; "
            "`audit verify` counts every stored event of the log instead"
        )


@audit_app.command("verify")
def audit_verify(
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="Also check a checkpoint file written earlier by `audit checkpoint`."
    ),
    public_key: Path | None = typer.Option(
        None, "--public-key", help="PEM public key for the checkpoint (default: the data directory's key)."
    ),
    as_json: bool = AsJson,
    database_url: str | None = DatabaseUrl,
    data_dir: Path | None = DataDir,
    host: str | None = RemoteHost,
    token: str | None = RemoteToken,
) -> None:
    """Recompute the audit hash chain from the event store; exit 2 when it is broken.

    Exit 0 when intact; exit 2 naming the first bad position when an event was edited, deleted,
    inserted or reordered.

    Example: [bold]tokentrail audit verify --checkpoint checkpoint.json[/]
    """
    api = remote_client(host, token)
    checkpoint_data = _read_checkpoint(checkpoint) if checkpoint else None
    if api is not None:
        if checkpoint_data is not None:
            fail("--checkpoint is checked against the store itself: run without --host/--token")
        report = api.get("/v0/audit/verify")
        return _chain_verdict(report, None, as_json)
    from tokentrail.keys import checkpoint_key
    from tokentrail.verify import verify_chain, verify_checkpoint

    service = open_service(database_url, data_dir)
    with progress_bar("verifying") as bar:
        task = bar.add_task("verify", total=None)
        chain = verify_chain(service, progress=lambda done, total: bar.update(task, completed=done, total=total))
    checked = None
    if checkpoint_data is not None:
        key = _public_key(public_key) if public_key else checkpoint_key(service.data_dir, service.environ).public_key()
        from tokentrail.domain.errors import LedgerError

        try:
            checked = verify_checkpoint(service, checkpoint_data, key).wire()
        except LedgerError as error:
            fail(f"{checkpoint}: {error.message}")
    _chain_verdict(chain.wire(), checked, as_json)


def _chain_verdict(chain: dict[str, Any], checked: dict[str, Any] | None, as_json: bool) -> None:
    ok = bool(chain["ok"]) and (checked is None or bool(checked["ok"]))
    if as_json:
        print_json({**chain, "ok": ok, **({"checkpoint": checked} if checked is not None else {})})
    elif chain["ok"]:
        say(
            f"the audit trail is intact: {chain['events_checked']} stored events checked (the whole log: every "
            f"workspace's and user's events and the internal name-index events), head {chain['head']}"
        )
        if checked is not None and checked["ok"]:
            say(
                f"the checkpoint at position {checked['position']} holds: its signature is valid and the "
                "events up to it hash to its head"
            )
    if not chain["ok"]:
        fail(f"the audit trail is broken at position {chain['first_bad_position']}: {chain.get('reason')}", FAILED)
    if checked is not None and not checked["ok"]:
        fail(f"the checkpoint at position {checked['position']} does not hold: {checked.get('reason')}", FAILED)


def _read_checkpoint(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        fail(f"cannot read {path}: {error.strerror}")
    except ValueError:
        fail(f"{path} is not a JSON checkpoint")


def _public_key(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    try:
        data = path.read_bytes()
    except OSError as error:
        fail(f"cannot read {path}: {error.strerror}")
    try:
        key: Any = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError):
            fail(f"{path} is not a PEM Ed25519 key")
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    if not isinstance(key, Ed25519PublicKey):
        fail(f"{path} is not an Ed25519 key")
    return key


@audit_app.command("checkpoint")
def audit_checkpoint(
    output: Path | None = typer.Option(None, "-o", "--output", help="Write the checkpoint here (default: stdout)."),
    as_json: bool = AsJson,
    database_url: str | None = DatabaseUrl,
    data_dir: Path | None = DataDir,
    host: str | None = RemoteHost,
    token: str | None = RemoteToken,
) -> None:
    """Sign the chain's current head with the checkpoint key (Ed25519).

    Keep the file somewhere safe and check it later with `audit verify --checkpoint FILE`.

    Example: [bold]tokentrail audit checkpoint -o checkpoint.json[/]
    """
    api = remote_client(host, token)
    if api is not None:
        body = api.get("/v0/audit/checkpoint")
    else:
        from tokentrail.verify import make_checkpoint

        service = open_service(database_url, data_dir)
        body = make_checkpoint(service, service.checkpoint_key())
    text = json.dumps(body, indent=2) + "\n"
    if output is None:
        print(text, end="")
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as error:
        fail(f"cannot write {output}: {error.strerror}")
    if as_json:
        print_json({"file": str(output), **body})
    else:
        say(f"checkpoint of position {body['position']} (head {body['head'][:16]}…) written to {escape(str(output))}")


# -- access ---------------------------------------------------------------------------------------

Kind = typer.Option("datasource", "--kind", help="datasource or pipe.")
Permission = typer.Option("READ", "--permission", help="READ, APPEND (datasources) or DROP.")


def grants_table(grants: list[dict[str, Any]], title: str, with_resource: bool = False) -> Any:
    columns = (["resource", "kind", "permission"] if with_resource else []) + ["token", "id", "via", "filter", "jwt"]
    t = table(*columns, title=title)
    for g in grants:
        lead = [g.get("resource"), g.get("kind"), g.get("permission")] if with_resource else []
        t.add_row(
            *cells(
                *lead, g.get("name"), g.get("token_id"), g.get("via"), g.get("filter"), "yes" if g.get("jwt") else ""
            )
        )
    return t


@access_app.command("who")
def access_who(
    resource: str = typer.Argument(..., help="The datasource or pipe."),
    kind: str = Kind,
    permission: str = Permission,
    as_of: str | None = typer.Option(
        None,
        "--as-of",
        callback=time_option,
        help="The instant asked about (default now): ISO 8601, Unix seconds, 1h ago.",
    ),
    as_json: bool = AsJson,
    host: str = Host,
    token: str | None = Token,
) -> None:
    """Every token and JWT that held a permission on a resource at an instant.

    Each row names the scope that granted it and the filter in force.

    Example: [bold]tokentrail access who events --permission READ --as-of 1h[/]
    """
    data = client(host, token).get(
        "/v0/access", [("resource", resource), ("kind", kind), ("permission", permission), ("as_of", as_of)]
    )
    if as_json:
        print_json(data)
        return
    title = f"who could {data['permission']} {data['kind']} {data['resource']} as of {data['as_of']}"
    if data.get("grants"):
        console.print(grants_table(data["grants"], title))
    else:
        say(escape(f"no token could {data['permission']} {data['kind']} {data['resource']} as of {data['as_of']}"))


@access_app.command("review")
def access_review(
    as_of: str | None = typer.Option(
        None, "--as-of", callback=time_option, help="Review as of then: ISO 8601, Unix seconds or 1h/2d ago."
    ),
    fmt: str = typer.Option("table", "--format", help="table (default), json or csv."),
    output: Path | None = typer.Option(None, "-o", "--output", help="Write the rows here (csv or json)."),
    as_json: bool = AsJson,
    host: str = Host,
    token: str | None = Token,
) -> None:
    """The access review: every token alive (now or then) with its scopes, filters, origin, creator,
    last refresh, last use, expiry and age, and a summary. CSV is safe to open in a spreadsheet.

    Example: [bold]tokentrail access review --format csv -o review.csv[/]
    """
    chosen = "json" if as_json else fmt.lower()
    if chosen not in ("table", "json", "csv"):
        raise typer.BadParameter("table, json or csv", param_hint="--format")
    api = client(host, token)
    params = [("as_of", as_of), ("format", "csv" if chosen == "csv" else None)]
    if chosen == "csv":
        with api.stream("/v0/access/review", params) as response:
            text = response.read().decode("utf-8")
        if output:
            output.write_text(text, encoding="utf-8")
            say(f"wrote {max(text.count(chr(10)) - 1, 0)} tokens to {escape(str(output))}")
        else:
            sys.stdout.write(text)
        return
    data = api.get("/v0/access/review", params)
    if chosen == "json":
        if output:
            output.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
            say(f"wrote {len(data['tokens'])} tokens to {escape(str(output))}")
        else:
            print_json(data)
        return
    summary = data["summary"]
    say(
        f"access review as of {data['as_of']}: {summary['tokens']} tokens, {summary['with_admin']} with ADMIN, "
        f"{summary['unused_90_days']} unused for 90 days, {summary['older_than_a_year']} older than a year, "
        f"{summary['without_expiry']} without expiry"
    )
    t = table("name", "kind", "scopes", "created", "by", "last refresh", "last used", "expires")
    for row in data["tokens"]:
        t.add_row(
            *cells(
                row["name"],
                row["kind"],
                scopes_text(row["scopes"]),
                short_time(row["created_at"]),
                (row.get("created_by") or {}).get("name") or "",
                short_time(row["last_refresh_at"]),
                short_time(row["last_used_at"]) or "never",
                short_time(row["expires_at"]) or "never",
            )
        )
    console.print(t)
    if output:
        output.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


@access_app.command("diff")
def access_diff(
    start: str = typer.Option(..., "--from", callback=time_option, help="The earlier instant (1h, 2d, ISO 8601…)."),
    end: str | None = typer.Option(None, "--to", callback=time_option, help="The later instant (default now)."),
    resource: str | None = typer.Option(None, "--resource", help="Only this datasource or pipe."),
    kind: str | None = typer.Option(None, "--kind", help="Only datasources or only pipes."),
    permission: str | None = typer.Option(None, "--permission", help="Only READ, APPEND or DROP."),
    exit_code: bool = typer.Option(False, "--exit-code", help="Exit 2 when anything changed (like git diff)."),
    as_json: bool = AsJson,
    host: str = Host,
    token: str | None = Token,
) -> None:
    """Permissions gained, lost and changed (another scope or filter) between two instants.

    Example: [bold]tokentrail access diff --from 1d --resource events[/]
    """
    data = client(host, token).get(
        "/v0/access/diff",
        [("from", start), ("to", end), ("resource", resource), ("kind", kind), ("permission", permission)],
    )
    gained, lost, changed = data.get("gained", []), data.get("lost", []), data.get("changed", [])
    if as_json:
        print_json(data)
    else:
        say(
            f"access from {data.get('from')} to {data.get('to')}: "
            f"{len(gained)} gained, {len(lost)} lost, {len(changed)} changed"
        )
        if gained:
            console.print(grants_table(gained, "gained", with_resource=True))
        if lost:
            console.print(grants_table(lost, "lost", with_resource=True))
        if changed:
            t = table("resource", "kind", "permission", "token", "before", "after", title="changed")
            for c in changed:
                b, a = c["before"], c["after"]
                t.add_row(
                    *cells(a.get("resource"), a.get("kind"), a.get("permission"), a.get("name"), _via(b), _via(a))
                )
            console.print(t)
    if exit_code and (gained or lost or changed):
        raise typer.Exit(FAILED)


def _via(grant: dict[str, Any]) -> str:
    return grant.get("via", "") + (f" [{grant['filter']}]" if grant.get("filter") else "")
