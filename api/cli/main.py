"""The `tokentrail` command line: local commands that open the store directly (init, serve,
migrate, rebuild, audit verify, deploy) and client commands that talk to a server (token, audit,
access, workspace). Shared options, consoles and exit codes live in common.py."""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from tokentrail.api.cli.audit import access_app, audit_app
from tokentrail.api.cli.common import (
    ERROR,
    FAILED,
    AsJson,
    DatabaseUrl,
    DataDir,
    console,
    err,
    fail,
    open_service,
    print_json,
    progress_bar,
    scope_text,
)
from tokentrail.api.cli.deploy import deploy
from tokentrail.api.cli.tokens import token_app, workspace_app
from tokentrail.domain.errors import LedgerError

app = typer.Typer(
    name="tokentrail",
    help="A token ledger in the model of Tinybird's Auth Tokens, on an append-only event store.\n\n"
    "Exit codes: 0 ok, 1 error, 2 verification failed (or differences found, with access diff --exit-code), "
    "3 server unreachable.\n\n"
    'Example: [bold]tokentrail token ls --host http://127.0.0.1:8000 --token "$T"[/]',
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        try:
            print(f"tokentrail {metadata.version('tokentrail')}")
        except metadata.PackageNotFoundError:
            print("tokentrail (not installed: running from a source tree)")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the installed version and exit."
    ),
) -> None:
    """Options of `tokentrail` itself (the app's help text, above, is the one shown)."""


# -- local commands ------------------------------------------------------------------------------


@app.command()
def init(
    workspace: str | None = typer.Option(
        None,
        "--workspace",
        help="Name of the workspace: created when missing. Without it, an empty store gets `default` "
        "and a store with one workspace prints that one's tokens.",
    ),
    email: str = typer.Option("admin@localhost", "--email", help="E-mail of the workspace owner."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the admin token's value."),
    user_token: bool = typer.Option(False, "--user-token", help="Print only the user token's value."),
    as_json: bool = AsJson,
    database_url: str | None = DatabaseUrl,
    data_dir: Path | None = DataDir,
) -> None:
    """Create the store and a workspace with its default tokens, and print the tokens.

    Safe to run again: it prints the existing workspace's tokens. Without --workspace it never
    creates a workspace in a store that has one (with several, it asks which).

    Example: [bold]export TOKENTRAIL_TOKEN=$(tokentrail init --quiet)[/]
    """
    from tokentrail.api.setup import initialise

    service = open_service(database_url, data_dir)
    try:
        if workspace is None:
            existing = [w.name for w in service.queries.all_workspaces()]
            if len(existing) > 1:
                fail(
                    f"this store has {len(existing)} workspaces ({', '.join(existing)}): pick one with --workspace NAME"
                )
            workspace = existing[0] if existing else "default"
        result = initialise(service, workspace, email)
    except LedgerError as error:
        fail(error.message)
    finally:
        service.close()
    if quiet or user_token:
        wanted = "AUTH" if user_token else "ADMIN"
        print(next(t["token"] for t in result["tokens"] if t["scopes"][0]["type"] == wanted))
        return
    if as_json:
        print_json(result)
        return
    ws = result["workspace"]
    console.print(
        f"workspace [bold]{escape(ws['name'])}[/] ({ws['id']}), owner {escape(ws['user_email'])}"
        + ("" if result["created"] else " [dim](already existed)[/]")
    )
    # Not a table: ids and values must not wrap inside cells. Each value is one line of plain text,
    # whatever the terminal's width, so that it can be copied.
    for token in result["tokens"]:
        console.print(
            f"\n[bold]{escape(token['name'])}[/]  {escape(', '.join(scope_text(s) for s in token['scopes']))}"
        )
        print(f"  id     {token['id']}")
        print(f"  token  {token['token']}")


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
    workers: int = typer.Option(1, "--workers", help="Worker processes (PostgreSQL or SQLite alike)."),
    database_url: str | None = DatabaseUrl,
    data_dir: Path | None = DataDir,
    rotate_key: bool = typer.Option(
        False,
        "--rotate-key",
        help="Accept a server key other than the one the store was set up with, and record it: every "
        "token value and JWT changes (stop every other server first).",
    ),
) -> None:
    """Serve the API. On an empty store, run init first and print the admin token.

    Example: [bold]tokentrail serve --port 8000[/]
    """
    import uvicorn

    from tokentrail.api.setup import initialise
    from tokentrail.logs import log_format, logging_config

    _check_port(host, port)
    if data_dir is not None:
        os.environ["TOKENTRAIL_DATA_DIR"] = str(data_dir)
    if database_url:
        os.environ["TOKENTRAIL_DATABASE_URL"] = database_url
    if rotate_key:
        os.environ["TOKENTRAIL_ROTATE_KEY"] = "1"
    try:
        log_config = logging_config(dict(os.environ))
    except ValueError as error:
        fail(str(error))
    service = open_service(None, None)
    os.environ.pop("TOKENTRAIL_ROTATE_KEY", None)  # recorded: the workers check against the new key
    if not service.queries.all_workspaces():
        result = initialise(service, "default", "admin@localhost")
        admin = next(t for t in result["tokens"] if t["name"] == "admin token")
        if log_format(dict(os.environ)) == "json":
            # A JSON log goes to a collector: it never carries a value.
            print(
                json.dumps(
                    {
                        "time": datetime.now(UTC).isoformat(timespec="microseconds"),
                        "level": "info",
                        "logger": "tokentrail.setup",
                        "message": "initialised an empty store: workspace default; "
                        "`tokentrail init --quiet` prints its admin token",
                    }
                ),
                file=sys.stderr,
            )
        else:
            err.print(f"Initialised an empty store: workspace [bold]default[/], admin token:\n{admin['token']}")
    service.close()
    uvicorn.run(
        "tokentrail.api.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        log_config=log_config,  # TOKENTRAIL_LOG_FORMAT: text or json, redacted either way
        access_log=False,  # uvicorn's would write paths; tokentrail.access writes route templates
        # Forwarded headers are read by api/proxies.py, from TOKENTRAIL_TRUSTED_PROXIES only:
        # uvicorn must not rewrite the peer address or scheme from them on its own.
        proxy_headers=False,
    )


def _check_port(host: str, port: int) -> None:
    """Fail in one line before start-up when the address is taken (uvicorn would log a page)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        fail(f"cannot listen on {host}:{port}: {error.strerror}")
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            fail(f"cannot listen on {host}:{port}: {error.strerror} (is another server running? try --port)")


@app.command()
def migrate(as_json: bool = AsJson, database_url: str | None = DatabaseUrl, data_dir: Path | None = DataDir) -> None:
    """Bring the read-model schema up to date (Alembic); run it after every upgrade.

    Example: [bold]tokentrail migrate --data-dir ./tokentrail-data[/]
    """
    from tokentrail.storage.migrate import current, head

    service = open_service(database_url, data_dir, migrate=True)
    revision, latest = current(service.write_engine), head()
    service.close()
    if as_json:
        print_json({"revision": revision, "head": latest, "up_to_date": revision == latest})
    else:
        console.print(f"read-model schema at revision {revision} (latest {latest})")


@app.command()
def rebuild(
    verify: bool = typer.Option(False, "--verify", help="Compare a rebuild with the live read models; change nothing."),
    as_json: bool = AsJson,
    database_url: str | None = DatabaseUrl,
    data_dir: Path | None = DataDir,
) -> None:
    """Rebuild every projection from the event store; --verify exits 2 on any difference.

    Example: [bold]tokentrail rebuild --verify[/]
    """
    from tokentrail.projections.rebuild import rebuild as run_rebuild

    service = open_service(database_url, data_dir)
    with progress_bar("rebuilding") as bar:
        task = bar.add_task("events", total=None)

        def step(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        report = run_rebuild(service, verify=verify, progress=step)
    service.close()
    if as_json:
        print_json(
            {
                "ok": report.ok,
                "position": report.position,
                "events": report.events,
                "rows": report.rows,
                "differences": [
                    {"table": d.table, "key": list(d.key), "live": _jsonable(d.live), "rebuilt": _jsonable(d.rebuilt)}
                    for d in report.differences
                ],
            }
        )
    else:
        verb = "verified" if verify else "rebuilt"
        for d in report.differences:
            console.print(_difference_text(d))
        if report.ok:
            console.print(
                f"{verb} {report.events} events up to position {report.position}: "
                + ", ".join(f"{k} {v}" for k, v in report.rows.items())
            )
    if not report.ok:
        fail(f"the live read models differ from a rebuild ({len(report.differences)} differences shown)", FAILED)


def _difference_text(d: Any) -> str:
    """One difference found by `rebuild --verify`, in words: the row's key by column name, and
    only the columns that differ (or which side the row is missing from)."""
    from tokentrail.projections.schema import metadata

    table = metadata.tables.get(d.table)
    columns = [c.name for c in table.columns] if table is not None else []
    keys = [c.name for c in table.primary_key.columns] if table is not None else []
    key = ", ".join(f"{k}={v}" for k, v in zip(keys, d.key)) if keys else str(d.key)
    where = f"[red]difference[/] in {d.table}, row {escape(key)}"
    if d.rebuilt is None:
        return f"{where}: only in the live tables (a rebuild has no such row)"
    if d.live is None:
        return f"{where}: missing from the live tables (a rebuild has it)"
    changed = [
        f"{name}: live {escape(repr(a))}, rebuilt {escape(repr(b))}"
        for name, a, b in zip(columns or range(len(d.live)), d.live, d.rebuilt)
        if a != b
    ]
    return f"{where}: " + "; ".join(changed or ["values differ in type only"])


def _jsonable(row: Any) -> Any:
    return None if row is None else [v if isinstance(v, (str, int, float, bool, type(None))) else str(v) for v in row]


app.command("deploy")(deploy)
app.add_typer(token_app)
app.add_typer(audit_app)
app.add_typer(access_app)
app.add_typer(workspace_app)


# -- entry point ----------------------------------------------------------------------------------


def _no_flag_metavars(command: Any) -> None:
    """An on/off flag takes no value: its help line shows no `<bool>` (Typer shows one otherwise)."""
    help_option = command.get_help_option(command.context_class(command))  # made once, then cached
    for param in [*command.params, *([help_option] if help_option is not None else [])]:
        if getattr(param, "is_flag", False) or getattr(param, "is_bool_flag", False):
            param.metavar = ""
    for sub in getattr(command, "commands", {}).values():
        _no_flag_metavars(sub)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; every failure a user can cause ends as one line on stderr and an exit code."""
    command = typer.main.get_command(app)
    _no_flag_metavars(command)
    # Typer vendors click in recent versions: take the exception classes from where it raises them.
    errors = sys.modules[typer.BadParameter.__module__]
    no_args = getattr(errors, "NoArgsIsHelpError", ())
    aborted = (typer.Abort, getattr(errors, "Abort", typer.Abort))
    try:
        code = command.main(args=argv, prog_name="tokentrail", standalone_mode=False)
    except no_args as error:  # type: ignore[misc]
        text = error.format_message()  # rich help is printed as the error is made; plain help is text
        if text.strip():
            print(text)
        code = 0
    except errors.UsageError as error:
        where = error.ctx.command_path if error.ctx else "tokentrail"
        err.print(f"[bold red]error:[/] {escape(error.format_message())} (see '{where} --help')")
        code = ERROR
    except errors.ClickException as error:
        err.print(f"[bold red]error:[/] {escape(error.format_message())}")
        code = ERROR
    except aborted:
        err.print("[bold red]error:[/] aborted")
        code = ERROR
    except LedgerError as error:
        err.print(f"[bold red]error:[/] {escape(error.message)}")
        code = ERROR
    except KeyboardInterrupt:
        err.print("[bold red]error:[/] interrupted")
        code = 130
    except Exception as error:  # noqa: BLE001 - a bug or an outage, still one line unless asked
        if os.environ.get("TOKENTRAIL_DEBUG"):
            raise
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        err.print(
            f"[bold red]error:[/] unexpected {type(error).__name__}: {escape(first)} "
            "(set TOKENTRAIL_DEBUG=1 for the traceback)"
        )
        code = ERROR
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
