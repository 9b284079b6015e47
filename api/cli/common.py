"""What every `tokentrail` command shares: consoles, exit codes, options, time parsing, output.

Exit codes are a contract with scripts (docs/cli.md lists them): 0 ok, 1 an error or a mistake
(bad flag, refused request, unknown token), 2 a verification failed or differences were found
(when asked to report them), 3 the server could not be reached.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

OK, ERROR, FAILED, UNREACHABLE = 0, 1, 2, 3
DEFAULT_HOST = "http://127.0.0.1:8000"

# soft_wrap: a message or a token value is never broken across lines (tables still fit the width).
console = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
for _stream in (console, err):
    if not _stream.is_terminal and "COLUMNS" not in os.environ:
        _stream.width = 200  # piped into a file or grep: keep table rows on one line where they fit

# -- options shared by several commands ----------------------------------------------------------

DatabaseUrl = typer.Option(
    None,
    "--database-url",
    envvar="TOKENTRAIL_DATABASE_URL",
    help="sqlite:///path/file.db or postgresql://user@host:port/db (default: a SQLite file in TOKENTRAIL_DATA_DIR).",
)
DataDir = typer.Option(
    None, "--data-dir", envvar="TOKENTRAIL_DATA_DIR", help="Where the SQLite file and the key files live."
)
AsJson = typer.Option(False, "--json", help="Print JSON for machines instead of a table.")
Host = typer.Option(DEFAULT_HOST, "--host", envvar="TOKENTRAIL_HOST", help="The tokentrail server's URL.")
Token = typer.Option(
    None,
    "--token",
    envvar="TOKENTRAIL_TOKEN",
    show_default=False,
    help="A token value (ADMIN or TOKENS for most commands).",
)
# Commands that open the store by default (deploy, audit verify/checkpoint) ask a server only when
# told so on the command line: these have no environment variable on purpose.
RemoteHost = typer.Option(
    None,
    "--host",
    show_default=False,
    help="Ask this server instead of opening the store (TOKENTRAIL_TOKEN supplies the token).",
)
RemoteToken = typer.Option(
    None,
    "--token",
    show_default=False,
    help="Ask a server with this token instead of opening the store (TOKENTRAIL_HOST supplies the URL).",
)


def fail(message: str, code: int = ERROR) -> NoReturn:
    """One line on stderr, then the exit code: the way every command reports a failure."""
    err.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(code)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def say(message: str) -> None:
    """A human line on stdout; `message` is rich markup, data inside it must be escaped."""
    console.print(message)


def table(*columns: str, title: str | None = None) -> Table:
    """A table whose cells wrap rather than lose characters to an ellipsis (ids are copied)."""
    t = Table(title=title, title_justify="left", show_lines=False)
    for column in columns:
        t.add_column(column, overflow="fold")
    return t


def cells(*values: Any) -> list[Text]:
    """Table cells from data, never read as rich markup (a token may be named `[bold]`)."""
    return [Text("" if v is None else str(v)) for v in values]


def progress_bar(description: str, *, total_known: bool = True) -> Progress:
    """A progress bar on stderr, shown on a terminal (or when TOKENTRAIL_PROGRESS is set)."""
    columns: list[Any] = [SpinnerColumn(), TextColumn(description)]
    if total_known:
        columns += [BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    else:
        columns += [TextColumn("{task.completed} {task.fields[unit]}"), TimeElapsedColumn()]
    return Progress(
        *columns,
        console=err,
        transient=False,
        disable=not err.is_terminal and "TOKENTRAIL_PROGRESS" not in os.environ,
    )


def open_service(database_url: str | None, data_dir: Path | None, migrate: bool = True) -> Any:
    """The ledger opened directly on its database (local commands)."""
    from tokentrail.domain.errors import LedgerError
    from tokentrail.service import Service

    env = dict(os.environ)
    if data_dir is not None:
        env["TOKENTRAIL_DATA_DIR"] = str(data_dir)
    if database_url:
        env["TOKENTRAIL_DATABASE_URL"] = database_url
    try:
        return Service(environ=env, migrate=migrate)
    except LedgerError as error:
        fail(error.message)
    except Exception as error:  # noqa: BLE001 - a user-facing one-line message, not a traceback
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        fail(f"cannot open the ledger: {type(error).__name__}: {first}")


# -- times ----------------------------------------------------------------------------------------

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_RELATIVE = re.compile(r"(?:\d+(?:\.\d+)?[smhdw])+")


def parse_time(text: str, now: float | None = None) -> str:
    """A time for the API: ISO 8601 with an offset or Unix seconds pass through; `now`, and
    durations such as `30m`, `1h`, `2d`, `1h30m` (optionally followed by `ago`) become Unix seconds
    that long before now."""
    raw = text.strip()
    lowered = raw.lower()
    current = time.time() if now is None else now
    if lowered == "now":
        return f"{current:.6f}"
    relative = lowered.removesuffix("ago").strip().replace(" ", "")
    if relative and _RELATIVE.fullmatch(relative):
        seconds = sum(float(n) * _UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([smhdw])", relative))
        return f"{current - seconds:.6f}"
    try:
        float(raw)
        return raw
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(
            f"not a time: {raw!r} (use ISO 8601 with an offset, Unix seconds, or 30m, 1h, 2d for that long ago)"
        ) from None
    if moment.tzinfo is None:
        raise typer.BadParameter(f"{raw!r} needs an offset, e.g. {raw}+00:00")
    return raw


def time_option(value: str | None) -> str | None:
    """Typer callback for --as-of/--from/--to."""
    return None if value is None else parse_time(value)


def short_time(iso: str | None) -> str:
    """`2026-03-01T12:00:00.123456+00:00` as `2026-03-01 12:00:00` for tables."""
    if not iso:
        return ""
    return iso.replace("T", " ")[:19]


# -- scopes ---------------------------------------------------------------------------------------


def scope_text(scope: dict[str, Any]) -> str:
    """A wire scope object `{"type", "resource"?, "filter"?}` as the scope string users type."""
    parts = [scope["type"]]
    if scope.get("resource"):
        parts.append(scope["resource"])
        if scope.get("filter"):
            parts.append(scope["filter"])
    return ":".join(parts)


def scopes_text(scopes: Iterable[dict[str, Any]]) -> str:
    return "\n".join(scope_text(s) for s in scopes)
