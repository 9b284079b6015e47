"""The audit trail's export formats (`GET /v0/audit?format=ndjson|csv`, the console's
`/ui/audit/export.{fmt}`), encoded straight from raw rows.

The bytes are exactly those of the wire objects (`projections.history.audit_event`) passed to
`json.dumps(event, separators=(",", ":"))`, one per line, and of the CSV writer over the same
objects; tests/test_export.py holds the encoders to that. What makes them fast:

- the rows are plain tuples read page by page through the driver's cursor (`History.audit_rows`);
- each line is one `%` format over the row, its strings escaped by the C function `json.dumps`
  itself uses; no dict per event, no general-purpose encoder walking it;
- the columns that are already JSON text (`scopes_before`, `scopes_after`, `details`) are spliced
  as they are when the text is already its own compact encoding (`_CANONICAL`: what the projector
  writes); any other text goes through `json.loads` + `json.dumps`, remembered by text (the CSV's
  spaced scope lists always are: the same few lists recur in every page);
- an instant's text is built once per second of the log;
- lines are joined into chunks of about `CHUNK_BYTES` before they are handed to the server, so
  its per-send cost (a worker-thread hop for a plain iterator) is paid a few hundred times for
  100 MB, not once per event. The database is read in worker threads, off the event loop.

Memory stays at a few pages of rows and one chunk, whatever the size of the trail.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterable, Iterator
from json.encoder import encode_basestring_ascii
from typing import Any

from tokentrail.domain.clock import format_instant
from tokentrail.projections.history import AUDIT_COLUMNS

CHUNK_BYTES = 256 * 1024
_MEMO_ENTRIES = 4096  # remembered re-encodings per kind (cleared when full)
_MEMO_MAX_TEXT = 1024  # longer JSON texts are re-encoded every time, never remembered
_CSV_ROWS = 500  # records per CSV writer call

# The CSV's columns: the raw rows' without `details` (a JSON object: the ndjson carries it).
CSV_COLUMNS = tuple(c for c in AUDIT_COLUMNS if c != "details")

# Indexes into a row of `history.AUDIT_COLUMNS`.
(
    _POSITION,
    _AT,
    _TYPE,
    _WORKSPACE,
    _TOKEN,
    _TOKEN_NAME,
    _ACTOR_TOKEN,
    _ACTOR_NAME,
    _REQUEST,
    _ORIGIN,
    _DEPLOYMENT,
    _SCOPES_BEFORE,
    _SCOPES_AFTER,
    _DETAILS,
    _HASH,
    _AGGREGATE,
    _CLIENT_ADDRESS,
    _USER_AGENT,
    _CLAIMED_ORIGIN,
    _CLAIMED_REQUEST,
) = range(len(AUDIT_COLUMNS))  # (an unpacking error at import if the two drift)

_NDJSON_LINE = (
    '{"position":%s,"at":"%s.%06d+00:00","type":%s,"workspace_id":%s,"token_id":%s,"token_name":%s,'
    '"actor":{"token_id":%s,"name":%s},"request_id":%s,"origin":%s,"deployment_id":%s,'
    '"scopes_before":%s,"scopes_after":%s,"details":%s,"hash":%s,"aggregate":%s,"client":%s,"claimed":%s}\n'
)
_CLIENT = '{"address":%s,"user_agent":%s}'
_CLAIMED = '{"origin":%s,"request_id":%s}'
_compact = json.JSONEncoder(separators=(",", ":")).encode  # what json.dumps(..., separators=(",", ":")) does
_spaced = json.JSONEncoder().encode  # what json.dumps(...) does


# A JSON text made only of these tokens is its own compact re-encoding: strings whose every
# character is printable ASCII or escaped exactly as `json.dumps` escapes it, integers in their
# shortest form, literals, and punctuation with no white space. (The projector writes these columns
# with `json.dumps(..., separators=(",", ":"))` of lists and dicts, so the text is valid JSON with no
# repeated key; anything else, floats and white space included, goes through loads + dumps.)
_STRING = (
    r'"(?:[ !#-\[\]-~]++|\\["\\bfnrt]|\\u00(?:0[0-7bef]|1[0-9a-f])|\\u007f'
    r"|\\u(?:00[89a-f][0-9a-f]|0[1-9a-f][0-9a-f]{2}|[1-9a-f][0-9a-f]{3}))*+\""
)
_CANONICAL = re.compile(rf"(?:{_STRING}|-?[1-9][0-9]*+|0|true|false|null|[\[\]{{}},:])*+")  # possessive: linear
_canonical = _CANONICAL.fullmatch


def _remembered(encode: Callable[[Any], str], spliced: bool) -> Callable[[str], str]:
    """`encode(json.loads(text))`, remembered by text; with `spliced`, a text that is already its
    own compact encoding (`_CANONICAL`) is returned as it is, without being parsed."""
    memo: dict[str, str] = {}

    def reencoded(text: str) -> str:
        out = memo.get(text)
        if out is None:
            out = text if spliced and _canonical(text) else encode(json.loads(text))
            if len(text) <= _MEMO_MAX_TEXT:
                if len(memo) >= _MEMO_ENTRIES:
                    memo.clear()
                memo[text] = out
        return out

    return reencoded


class _Instants:
    """`format_instant`, with the text of each second remembered (events arrive many a second)."""

    def __init__(self) -> None:
        self._second: int | None = None
        self._prefix = ""

    def text(self, micros: int) -> str:
        second, fraction = divmod(micros, 1_000_000)
        if second != self._second:
            whole = format_instant(second * 1_000_000)  # 'YYYY-MM-DDTHH:MM:SS.000000+00:00'
            self._second, self._prefix = second, whole[:-13]
        return f"{self._prefix}.{fraction:06d}+00:00"


def _chunks(lines: Iterable[str]) -> Iterator[bytes]:
    """`lines` joined into UTF-8 chunks of about CHUNK_BYTES (the last one smaller)."""
    pending: list[str] = []
    size = 0
    for line in lines:
        pending.append(line)
        size += len(line)
        if size >= CHUNK_BYTES:
            yield "".join(pending).encode("utf-8")
            pending, size = [], 0
    if pending:
        yield "".join(pending).encode("utf-8")


def ndjson_lines(pages: Iterable[list[tuple[Any, ...]]]) -> Iterator[str]:
    """One line per row, `json.dumps(audit_event(row), separators=(",", ":")) + "\\n"` exactly."""
    quote = encode_basestring_ascii
    scopes = _remembered(_compact, spliced=True)
    details_of = _remembered(_compact, spliced=True)
    line = _NDJSON_LINE
    second, prefix = None, ""  # the instant's text up to its seconds, for the last second seen
    for page in pages:
        for (
            position,
            at,
            type_,
            workspace,
            token,
            token_name,
            actor_token,
            actor_name,
            request,
            origin,
            deployment,
            before,
            after,
            details,
            hash_,
            aggregate,
            address,
            agent,
            claimed_origin,
            claimed_request,
        ) in page:
            at_second, fraction = divmod(at, 1_000_000)
            if at_second != second:
                second, prefix = at_second, format_instant(at_second * 1_000_000)[:-13]
            client = claimed = "null"
            if address is not None or agent is not None:
                client = _CLIENT % (
                    "null" if address is None else quote(address),
                    "null" if agent is None else quote(agent),
                )
            if claimed_origin is not None or claimed_request is not None:
                claimed = _CLAIMED % (
                    "null" if claimed_origin is None else quote(claimed_origin),
                    "null" if claimed_request is None else quote(claimed_request),
                )
            yield line % (
                int.__repr__(position),
                prefix,
                fraction,
                quote(type_),
                "null" if workspace is None else quote(workspace),
                "null" if token is None else quote(token),
                "null" if token_name is None else quote(token_name),
                "null" if actor_token is None else quote(actor_token),
                "null" if actor_name is None else quote(actor_name),
                "null" if request is None else quote(request),
                "null" if origin is None else quote(origin),
                "null" if deployment is None else quote(deployment),
                "null" if before is None else scopes(before),
                "null" if after is None else scopes(after),
                details_of(details) if details else "null",
                quote(hash_),
                quote(aggregate),
                client,
                claimed,
            )


def csv_lines(pages: Iterable[list[tuple[Any, ...]]]) -> Iterator[str]:
    """The header, then one CSV record per row: the columns of `CSV_COLUMNS`, the scope lists as
    `json.dumps` of the list, every cell made spreadsheet-safe (`cell`)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    yield buffer.getvalue()
    scopes = _remembered(_spaced, spliced=False)
    instants = _Instants()
    for page in pages:
        for start in range(0, len(page), _CSV_ROWS):
            buffer.seek(0)
            buffer.truncate()
            writer.writerows(
                (
                    cell(r[_POSITION]),
                    instants.text(r[_AT]),
                    cell(r[_TYPE]),
                    cell(r[_WORKSPACE]),
                    cell(r[_TOKEN]),
                    cell(r[_TOKEN_NAME]),
                    cell(r[_ACTOR_TOKEN]),
                    cell(r[_ACTOR_NAME]),
                    cell(r[_REQUEST]),
                    cell(r[_ORIGIN]),
                    cell(r[_DEPLOYMENT]),
                    "" if r[_SCOPES_BEFORE] is None else cell(scopes(r[_SCOPES_BEFORE])),
                    "" if r[_SCOPES_AFTER] is None else cell(scopes(r[_SCOPES_AFTER])),
                    cell(r[_HASH]),
                    cell(r[_AGGREGATE]),
                    cell(r[_CLIENT_ADDRESS]),
                    cell(r[_USER_AGENT]),
                    cell(r[_CLAIMED_ORIGIN]),
                    cell(r[_CLAIMED_REQUEST]),
                )
                for r in page[start : start + _CSV_ROWS]
            )
            yield buffer.getvalue()


def cell(value: Any) -> str:
    text = "" if value is None else str(value)
    # Keep spreadsheet tools from evaluating cells as formulas (CSV injection).
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def audit_body(pages: Iterable[list[tuple[Any, ...]]], fmt: str) -> Iterator[bytes]:
    """The export of `pages` (from `Reads.audit_rows`) in `fmt` ("ndjson" or "csv"), as chunks of
    about CHUNK_BYTES."""
    if fmt == "ndjson":
        return _chunks(ndjson_lines(pages))
    if fmt == "csv":
        return _chunks(csv_lines(pages))
    raise ValueError(f"no export format {fmt!r}")
