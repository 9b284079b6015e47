"""`tokentrail token …` and `tokentrail workspace …`: Tinybird's token commands, against a server."""

from __future__ import annotations

import re
import time
from typing import Any

import typer
from rich.markup import escape
from typer.core import TyperCommand

from tokentrail.api.cli.client import client, path_segment
from tokentrail.api.cli.common import (
    AsJson,
    Host,
    Token,
    cells,
    console,
    fail,
    print_json,
    say,
    scope_text,
    scopes_text,
    short_time,
    table,
    time_option,
)
from tokentrail.domain.clock import parse_duration, parse_instant
from tokentrail.domain.errors import LedgerError

token_app = typer.Typer(
    name="token",
    help="List, create, refresh and delete tokens on a server (like `tb token`).\n\n"
    'Example: [bold]tokentrail token ls --host http://127.0.0.1:8000 --token "$T"[/]',
    no_args_is_help=True,
    rich_markup_mode="rich",
)
workspace_app = typer.Typer(
    name="workspace",
    help="List and create workspaces on a server (with the user token).\n\n"
    'Example: [bold]tokentrail workspace ls --token "$USER_TOKEN"[/]',
    no_args_is_help=True,
    rich_markup_mode="rich",
)
ARGV = "tokentrail.argv"
_FROM_NOW = re.compile(r"(?:\d{1,9}[smhdw])+")


class ScopeGroupsCommand(TyperCommand):
    """Keeps the raw arguments, so `--resource`/`--filter` can be paired with the `--scope` they
    follow, as in `tb token create static`."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        ctx.meta[ARGV] = list(args)
        return super().parse_args(ctx, args)


def scope_groups(argv: list[str] | None, scopes: list[str], resources: list[str], filters: list[str]) -> list[str]:
    """Full scope strings from `--scope S [--resource R [--filter F]]` groups, in command-line order."""
    order: list[str] = []
    for arg in argv or []:
        if arg == "--":
            break
        name = arg.split("=", 1)[0]
        if name in ("--scope", "--resource", "--filter"):
            order.append(name[2:])
    if argv is None or len(order) != len(scopes) + len(resources) + len(filters):
        order = ["scope"] * len(scopes)  # no raw arguments: plain scopes only
        if resources or filters:
            raise typer.BadParameter("--resource/--filter must follow the --scope they belong to")
    groups: list[list[str | None]] = []
    values = {"scope": iter(scopes), "resource": iter(resources), "filter": iter(filters)}
    for kind in order:
        value = next(values[kind])
        if kind == "scope":
            groups.append([value, None, None])
            continue
        slot = 1 if kind == "resource" else 2
        if not groups or groups[-1][slot] is not None:
            raise typer.BadParameter(f"--{kind} {value!r} must follow the --scope it belongs to")
        groups[-1][slot] = value
    out = []
    for scope, resource, filter_ in groups:
        text = scope or ""
        if resource:
            text += f":{resource}"
        if filter_:
            text += f":{filter_}"
        out.append(text)
    return out


def token_rows(tokens: list[dict[str, Any]], with_values: bool = False) -> Any:
    columns = ["name", "id", "scopes", "made by", "description"] + (["token"] if with_values else [])
    t = table(*columns)
    for tok in tokens:
        # The token's origin in Tinybird's terms (C, DS, P), in words: not how a change arrived
        # (the audit's "via" column).
        origin = tok.get("origin") or {}
        kind = {"C": "hand (C)", "DS": "datasource (DS)", "P": "pipe (P)"}.get(origin.get("type", ""), "")
        origin_text = kind + (f" {origin['resource_id']}" if origin.get("resource_id") else "")
        row = [
            tok.get("name"),
            tok.get("id"),
            scopes_text(tok.get("scopes") or []),
            origin_text,
            tok.get("description"),
        ]
        if with_values:
            row.append(tok.get("token", ""))
        t.add_row(*cells(*row))
    return t


def expiry_seconds(text: str) -> str:
    """An expiry for the API, in Unix seconds: an instant, or a duration from now (`30d`, `12h`)."""
    raw = text.strip().lower()
    if raw == "none":
        return "none"
    try:
        if _FROM_NOW.fullmatch(raw.replace(" ", "")):
            return str(int(time.time()) + parse_duration(raw.replace(" ", "")))
        return str(parse_instant(text) // 1_000_000)
    except LedgerError:
        raise typer.BadParameter(f"not an instant or a duration: {text!r}") from None


def show_token(tok: dict[str, Any], verb: str) -> None:
    say(f"{verb} token [bold]{escape(tok['name'])}[/] ({tok['id']})")
    for scope in tok.get("scopes") or []:
        say(f"  scope  {escape(scope_text(scope))}")
    if tok.get("expires_at"):
        say(f"  expires  {short_time(tok['expires_at'])}")
    if tok.get("token"):
        say(f"  token  {tok['token']}")


# -- token ----------------------------------------------------------------------------------------


@token_app.command("ls")
def token_ls(
    match: str | None = typer.Option(None, "--match", help="Only tokens whose name contains this text."),
    as_of: str | None = typer.Option(
        None, "--as-of", callback=time_option, help="The table as it stood then: ISO 8601, Unix seconds or 1h/2d ago."
    ),
    values: bool = typer.Option(False, "--values", help="Add a column with each token's value."),
    limit: int | None = typer.Option(
        None, "--limit", min=1, max=10_000, help="One page of at most this many tokens, and the cursor of the next."
    ),
    cursor: str | None = typer.Option(None, "--cursor", help="The page after this cursor (printed by --limit)."),
    as_json: bool = AsJson,
    host: str = Host,
    token: str | None = Token,
) -> None:
    """List the workspace's tokens (default ones included), now or as of a past instant; all of
    them, or a page at a time with --limit and --cursor (in creation order; --match filters the page).

    Example: [bold]tokentrail token ls --match reader --as-of 1h[/]
    """
    params = [("as_of", as_of), ("limit", str(limit) if limit is not None else None), ("cursor", cursor)]
    data = client(host, token).get("/v0/tokens", params)
    tokens = [t for t in data.get("tokens", []) if not match or match.lower() in t.get("name", "").lower()]
    if as_json:
        print_json({**data, "tokens": tokens})
        return
    if as_of:
        say(f"tokens as of {data.get('as_of')}")
    console.print(token_rows(tokens, with_values=values and not as_of))
    if data.get("next_cursor"):
        say(f"more: --cursor {data['next_cursor']}")


@token_app.command("create", cls=ScopeGroupsCommand)
def token_create(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The new token's name (unique in the workspace)."),
    scope: list[str] = typer.Option(
        [],
        "--scope",
        help="A scope, e.g. ADMIN, TOKENS, DATASOURCES:READ:events; repeat for several.",
    ),
    resource: list[str] = typer.Option([], "--resource", help="Resource of the --scope it follows (tb style)."),
    filter_: list[str] = typer.Option([], "--filter", help="sql_filter of the READ --scope it follows (tb style)."),
    description: str = typer.Option("", "--description", help="Free text shown in listings."),
    expires: str | None = typer.Option(
        None, "--expires", help="Stop working at this instant (ISO 8601 or Unix seconds) or after 30d, 12h … from now."
    ),
    as_json: bool = AsJson,
    host: str = Host,
    token: str | None = Token,
) -> None:
    """Create a static token. Each --scope may be followed by --resource and --filter, as in tb.

    Example: [bold]tokentrail token create reader --scope DATASOURCES:READ --resource events --filter "country = 'ES'"[/]
    """
    scopes = scope_groups(ctx.meta.get(ARGV), scope, resource, filter_)
    if not scopes:
        raise typer.BadParameter("give at least one --scope", param_hint="--scope")
    params = [
        ("name", name),
        *(("scope", s) for s in scopes),
        ("description", description or None),
        ("expiration_time", expiry_seconds(expires) if expires else None),
    ]
    data = client(host, token).post("/v0/tokens", params)
    if as_json:
        print_json(data)
    else:
        show_token(data, "created")


@token_app.command("scopes")
def token_scopes(
    ref: str = typer.Argument(..., metavar="TOKEN", help="The token's name, id or value."),
    as_json: bool = AsJson,
    host: str = Host,
    token: str | None = Token,
) -> None:
    """Show one token's scopes (type, resource, filter).

    Example: [bold]tokentrail token scopes reader[/]
    """
    data = client(host, token).get(f"/v0/tokens/{path_segment(ref)}")
    if as_json:
        print_json(data.get("scopes", []))
        return
    t = table("type", "resource", "filter", title=f"scopes of {data.get('name')}")
    for s in data.get("scopes", []):
        t.add_row(*cells(s.get("type"), s.get("resource", ""), s.get("filter", "")))
    console.print(t)


@token_app.command("refresh")
def token_refresh(
    ref: str = typer.Argument(..., metavar="TOKEN", help="The token's name, id or value."),
    grace_seconds: int = typer.Option(
        0, "--grace-seconds", min=0, help="Keep the previous value working this long (default: it stops now)."
    ),
    as_json: bool = AsJson,
    host: str = Host,
    token: str | None = Token,
) -> None:
    """Give a token a new value; its id and scopes stay. Prints the new value.

    Example: [bold]tokentrail token refresh reader --grace-seconds 300[/]
    """
    data = client(host, token).post(
        f"/v0/tokens/{path_segment(ref)}/refresh", [("grace_seconds", grace_seconds or None)]
    )
    if as_json:
        print_json(data)
        return
    show_token(data, "refreshed")
    when = f"in {grace_seconds} s" if grace_seconds else "now"
    say(f"  the previous value stops working {when}")


@token_app.command("rm")
def token_rm(
    ref: str = typer.Argument(..., metavar="TOKEN", help="The token's name, id or value."),
    as_json: bool = AsJson,
    host: str = Host,
    token: str | None = Token,
) -> None:
    """Delete a token (default tokens can be refreshed, not deleted). Its history stays.

    Example: [bold]tokentrail token rm reader[/]
    """
    data = client(host, token).delete(f"/v0/tokens/{path_segment(ref)}")
    if as_json:
        print_json(data)
    else:
        say(f"deleted token {escape(ref)}")


@token_app.command("copy")
def token_copy(
    ref: str = typer.Argument(..., metavar="TOKEN", help="The token's name, id or value."),
    as_json: bool = AsJson,
    host: str = Host,
    token: str | None = Token,
) -> None:
    """Print a token's value and nothing else, for `export T=$(…)` and pipes.

    Example: [bold]export READER=$(tokentrail token copy reader)[/]
    """
    data = client(host, token).get(f"/v0/tokens/{path_segment(ref)}")
    value = data.get("token")
    if not value:
        fail(f"the value of {ref!r} is not shown to this token (ask with an ADMIN token)")
    if as_json:
        print_json({"id": data.get("id"), "name": data.get("name"), "token": value})
    else:
        print(value)


@token_app.command("history")
def token_history(
    ref: str = typer.Argument(..., metavar="TOKEN", help="The token's name (past names too), id or value."),
    as_json: bool = AsJson,
    host: str = Host,
    token: str | None = Token,
) -> None:
    """Every event of one token, deleted ones too: who changed what, when, from where.

    Example: [bold]tokentrail token history reader[/]
    """
    data = client(host, token).get(f"/v0/tokens/{path_segment(ref)}/history")
    if as_json:
        print_json(data)
        return
    from tokentrail.api.cli.audit import events_table

    console.print(events_table(data.get("events", []), title=f"history of {ref} ({data.get('token_id')})"))


# -- incident response ----------------------------------------------------------------------------


def _span(interval: dict[str, Any]) -> str:
    return f"{interval['from']} → {interval['to'] or 'now (still open)'}"


@token_app.command("exposure")
def token_exposure(
    ref: str = typer.Argument(
        ..., metavar="TOKEN", help="The token's name (past names too), id, or a value (traces that value alone)."
    ),
    start: str | None = typer.Option(None, "--from", callback=time_option, help="Only from this instant."),
    end: str | None = typer.Option(None, "--to", callback=time_option, help="Only before this instant."),
    as_json: bool = AsJson,
    host: str = Host,
    token: str | None = Token,
) -> None:
    """What a token (or one leaked value) could reach: every datasource and pipe, with which
    permission, through which scope and filter, over which intervals. Deleted tokens too.

    Example: [bold]tokentrail token exposure reader --from 30d[/]
    """
    data = client(host, token).get(f"/v0/tokens/{path_segment(ref)}/exposure", [("from", start), ("to", end)])
    if as_json:
        print_json(data)
        return
    which = f"value #{data['generation']} of " if data.get("generation") is not None else ""
    state = " (deleted)" if data.get("deleted") else ""
    say(f"exposure of {which}[bold]{escape(data['name'])}[/]{state} ({data['token_id']})")
    say(f"  from {data.get('from')} to {data.get('to') or 'now (still valid)'}")
    t = table("kind", "resource", "permission", "via", "filter", "intervals")
    for entry in data.get("exposure", []):
        t.add_row(
            *cells(
                entry["kind"],
                entry["resource"],
                entry["permission"],
                entry["via"],
                entry["filter"],
                "\n".join(_span(i) for i in entry["intervals"]),
            )
        )
    console.print(t)
    for item in data.get("escalation", []):
        say(
            f"  [yellow]{escape(item['via'])}[/]: could create tokens with other scopes, "
            + ", ".join(_span(i) for i in item["intervals"])
        )
    for jwt in data.get("jwts", []):
        ends = jwt.get("invalidated_at") or jwt.get("expires_at")
        say(f"  JWT [bold]{escape(jwt['name'])}[/] ({jwt['id']}), issued {jwt['issued_at']}, until {ends}")
        for entry in jwt.get("exposure", []):
            say(f"    {entry['kind']} {escape(entry['resource'])} {entry['permission']} via {escape(entry['via'])}")


@token_app.command("lookup")
def token_lookup(
    as_json: bool = AsJson,
    host: str = Host,
    token: str | None = Token,
) -> None:
    """Which token a value is or was, read from stdin (never an argument: it would end up in the
    shell's history and the process list). Works for refreshed-out and deleted tokens' values and
    for JWTs. The lookup is recorded in the audit trail, without the value.

    Example: [bold]echo "$READER" | tokentrail token lookup[/]
    """
    import sys

    value = sys.stdin.read().strip()
    if not value:
        fail('no value on stdin: pipe the value in, e.g. `echo "$VALUE" | tokentrail token lookup`')
    data = client(host, token).post("/v0/tokens/lookup", body={"token": value})
    if as_json:
        print_json(data)
        return
    kind = "JWT" if data.get("jwt") else f"value #{data.get('generation')} of token"
    say(f"{kind} [bold]{escape(data['name'])}[/] ({data['token_id']})")
    say(f"  valid from   {data['valid_from']}")
    say(f"  valid until  {data.get('valid_until') or '(still valid)'}")
    now = "[green]yes[/]" if data.get("valid_now") else "[red]no[/]"
    say(f"  valid now    {now} ({data.get('reason')})")


@token_app.command("revoke")
def token_revoke(
    created_by: str | None = typer.Option(None, "--created-by", help="Tokens created by this token (id or name)."),
    created_from: str | None = typer.Option(
        None, "--created-from", callback=time_option, help="Tokens created at or after this instant."
    ),
    created_to: str | None = typer.Option(
        None, "--created-to", callback=time_option, help="Tokens created before this instant."
    ),
    deployment: str | None = typer.Option(None, "--deployment", help="Tokens created or changed by this deployment."),
    resource: str | None = typer.Option(None, "--resource", help="Tokens holding a scope on this datasource or pipe."),
    scope_type: str | None = typer.Option(None, "--scope-type", help="Tokens holding a scope of this type."),
    reason: str | None = typer.Option(None, "--reason", help="Why (required to apply; kept in the audit)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the tokens it would delete; write nothing."),
    yes: bool = typer.Option(False, "--yes", help="Apply without showing the plan and asking first."),
    as_json: bool = AsJson,
    host: str = Host,
    token: str | None = Token,
) -> None:
    """Revoke (delete) every token matching all the selectors, as one audited change with one
    revocation id. Default tokens are never selected. Without --yes, shows the plan and asks.

    Example: [bold]tokentrail token revoke --created-by ci-bot --reason "CI logs leaked" --dry-run[/]
    """
    api = client(host, token)
    selectors = [
        ("created_by", created_by),
        ("created_from", created_from),
        ("created_to", created_to),
        ("deployment", deployment),
        ("resource", resource),
        ("scope_type", scope_type),
    ]
    if not dry_run and not yes:
        plan = api.post("/v0/tokens/revoke", [*selectors, ("reason", reason), ("dry_run", "true")])
        names = [t["name"] for t in plan.get("tokens", [])]
        if not names:
            say("no token matches these selectors: nothing to revoke")
            return
        say(f"{len(names)} token(s) would be deleted: " + ", ".join(escape(n) for n in names))
        if not typer.confirm("Revoke them?", default=False):
            fail("nothing revoked")
    data = api.post("/v0/tokens/revoke", [*selectors, ("reason", reason), ("dry_run", "true" if dry_run else "false")])
    if as_json:
        print_json(data)
        return
    names = [t["name"] for t in data.get("tokens", [])]
    if dry_run:
        say(f"dry run: {len(names)} token(s) would be deleted, nothing written")
    elif data.get("revocation_id"):
        say(f"revoked {len(names)} token(s), revocation id [bold]{data['revocation_id']}[/]")
        say(f"  the audit lists them: tokentrail audit --revocation {data['revocation_id']}")
    else:
        say("no token matched any more: nothing written")
    t = table("name", "id")
    for item in data.get("tokens", []):
        t.add_row(*cells(item["name"], item["token_id"]))
    if names:
        console.print(t)


# -- workspace ------------------------------------------------------------------------------------


@token_app.command("expire")
def token_expire(
    ref: str = typer.Argument(..., metavar="TOKEN", help="The token's name, id or value."),
    at: str = typer.Option(
        ..., "--at", help="When it stops working: ISO 8601, Unix seconds, 30d/12h from now, or none (never)."
    ),
    as_json: bool = AsJson,
    host: str = Host,
    token: str | None = Token,
) -> None:
    """Set or remove a token's expiry: at that instant it stops authenticating, on every server.

    Example: [bold]tokentrail token expire temp --at 30d[/]
    """
    data = client(host, token).put(f"/v0/tokens/{path_segment(ref)}", [("expiration_time", expiry_seconds(at))])
    if as_json:
        print_json(data)
        return
    when = short_time(data.get("expires_at")) if data.get("expires_at") else "never"
    say(f"token [bold]{escape(data['name'])}[/] expires: {when}")


@token_app.command("stale")
def token_stale(
    unused_for: str = typer.Option("90d", "--unused-for", help="Not used for this long: 90d, 12h, 2w …"),
    as_json: bool = AsJson,
    host: str = Host,
    token: str | None = Token,
) -> None:
    """List tokens not used for a while (never-used ones count from their creation), oldest use first.

    Example: [bold]tokentrail token stale --unused-for 90d[/]
    """
    data = client(host, token).get("/v0/tokens", [("unused_for", unused_for)])
    if as_json:
        print_json(data)
        return
    t = table("name", "id", "scopes", "last used", "expires", title=f"tokens unused for {unused_for}")
    for tok in data.get("tokens", []):
        last = short_time(tok.get("last_used_at")) or "never"
        t.add_row(
            *cells(
                tok.get("name"),
                tok.get("id"),
                scopes_text(tok.get("scopes") or []),
                last,
                short_time(tok.get("expires_at")),
            )
        )
    console.print(t)


@workspace_app.command("settings")
def workspace_settings(
    max_token_lifetime: str | None = typer.Option(
        None, "--max-token-lifetime", help="Cap the life of new and refreshed tokens: 90d, 12h, seconds, or none."
    ),
    as_json: bool = AsJson,
    host: str = Host,
    token: str | None = Token,
) -> None:
    """Show the workspace's token hygiene settings, or change them (ADMIN).

    Example: [bold]tokentrail workspace settings --max-token-lifetime 90d[/]
    """
    api = client(host, token)
    if max_token_lifetime is None:
        data = api.get("/v0/workspace/settings")
    else:
        raw = max_token_lifetime.strip().lower()
        try:
            value = "none" if raw == "none" else str(parse_duration(raw))
        except LedgerError as error:
            raise typer.BadParameter(error.message, param_hint="--max-token-lifetime") from None
        data = api.put("/v0/workspace/settings", [("max_token_lifetime", value)])
    if as_json:
        print_json(data)
        return
    cap = data.get("max_token_lifetime")
    say(f"max_token_lifetime: {'none' if cap is None else f'{cap} s ({cap / 86_400:g} days)'}")


@workspace_app.command("ls")
def workspace_ls(as_json: bool = AsJson, host: str = Host, token: str | None = Token) -> None:
    """List the workspaces of the user token's user (with another token: its own workspace).

    Example: [bold]tokentrail workspace ls --token "$USER_TOKEN"[/]
    """
    api = client(host, token)
    me = api.get("/v0/workspace")
    workspaces = api.get("/v1/user/workspaces")["workspaces"] if me.get("scope") == "user" else [me]
    if as_json:
        print_json({"workspaces": workspaces})
        return
    t = table("name", "id", "owner", "scope")
    for w in workspaces:
        t.add_row(*cells(w.get("name"), w.get("id"), w.get("user_email"), w.get("scope")))
    console.print(t)


@workspace_app.command("create")
def workspace_create(
    name: str = typer.Argument(..., help="The new workspace's name."),
    as_json: bool = AsJson,
    host: str = Host,
    token: str | None = Token,
) -> None:
    """Create a workspace with its default tokens (needs the user token; prints its admin token).

    Example: [bold]tokentrail workspace create analytics --token "$USER_TOKEN"[/]
    """
    data = client(host, token).post("/v1/workspaces", [("name", name)])
    if as_json:
        print_json(data)
        return
    say(f"created workspace [bold]{escape(data['name'])}[/] ({data['id']})")
    say(f"  admin token  {data.get('token', '')}")
