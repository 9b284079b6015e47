"""TOKEN lines of .datasource and .pipe files, read the way Tinybird Forward reads them."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokentrail.domain import datafiles
from tokentrail.domain.datafiles import TokenDeclaration, parse_datafile, parse_project, read_project
from tokentrail.domain.errors import DatafileError, InvalidInput
from tokentrail.domain.ledger import validate_name

EVENTS = """\
DESCRIPTION >
    Raw events. The tracker appends, dashboards read.

SCHEMA >
    `timestamp` DateTime `json:$.timestamp`,
    `token` String `json:$.token`,
    `payload` String `json:$.payload`

ENGINE "MergeTree"
ENGINE_SORTING_KEY "timestamp"

TOKEN "tracker" APPEND
TOKEN "read api token" READ   # shared with the pipes
token dashboard read
# TOKEN "commented out" READ
"""

USERS = """\
SCHEMA >
    `id` UInt64,
    `name` String

TOKEN 'read api token' READ
TOKEN dashboard READ
"""

TOP_EVENTS = """\
DESCRIPTION >
    Most frequent events.

NODE top
SQL >
    %
    SELECT
        token AS t,
    TOKEN fake READ
        count() AS hits
FROM events
    GROUP BY t

TYPE endpoint

TOKEN "read api token" READ
"""

PROJECT = {
    "datasources/events.datasource": EVENTS,
    "datasources/users.datasource": USERS,
    "endpoints/top_events.pipe": TOP_EVENTS,
    "README.md": "TOKEN nothing READ\n",
    "fixtures/events.ndjson": '{"token": "x"}\n',
}


def decl(name: str, kind: str, resource: str, permission: str, path: str, line: int) -> TokenDeclaration:
    return TokenDeclaration(name, kind, resource, permission, path, line)


def test_a_realistic_project_yields_every_token_line_by_path_then_line() -> None:
    events, users, top = (
        "datasources/events.datasource",
        "datasources/users.datasource",
        "endpoints/top_events.pipe",
    )
    assert parse_project(PROJECT) == [
        decl("tracker", "datasource", "events", "APPEND", events, 12),
        decl("read api token", "datasource", "events", "READ", events, 13),
        decl("dashboard", "datasource", "events", "READ", events, 14),
        decl("read api token", "datasource", "users", "READ", users, 5),
        decl("dashboard", "datasource", "users", "READ", users, 6),
        decl("read api token", "pipe", "top_events", "READ", top, 16),
    ]


def test_scopes_are_the_canonical_scope_strings() -> None:
    scopes = {d.scope for d in parse_project(PROJECT)}
    assert scopes == {
        "DATASOURCES:APPEND:events",
        "DATASOURCES:READ:events",
        "DATASOURCES:READ:users",
        "PIPES:READ:top_events",
    }


def test_lines_inside_a_block_are_never_token_lines() -> None:
    # Indented `token AS t` and `TOKEN fake READ` belong to the SQL; so does the unindented
    # `FROM events`, which is not a command and therefore does not close the block.
    names = {d.token_name for d in parse_datafile("top_events.pipe", TOP_EVENTS)}
    assert names == {"read api token"}


def test_an_unindented_token_line_closes_a_block_as_in_forward() -> None:
    text = "NODE n\nSQL >\n    SELECT 1\nTOKEN reader READ\n"
    assert [d.line for d in parse_datafile("p.pipe", text)] == [4]


def test_an_indented_token_line_outside_a_block_counts() -> None:
    assert [d.token_name for d in parse_datafile("e.datasource", "   TOKEN reader READ\n")] == ["reader"]


def test_a_block_closed_by_an_engine_setting_lets_token_lines_follow() -> None:
    text = "SCHEMA >\n    `a` String\nENGINE_TTL timestamp + interval 1 day\nTOKEN r READ\n"
    assert [d.line for d in parse_datafile("e.datasource", text)] == [4]


@pytest.mark.parametrize(
    "line, name",
    [
        ('TOKEN "read api token" READ', "read api token"),
        ("TOKEN 'read api token' READ", "read api token"),
        ("Token reader Read", "reader"),
        ('TOKEN "a#b" READ # the # inside quotes is part of the name', "a#b"),
        ('TOKEN "it\'s" READ', "it's"),
        ("TOKEN it's READ", "it's"),  # a quote inside a word does not open a quotation
        ('TOKEN "  padded  " READ', "padded"),
        ("TOKEN\treader\tREAD", "reader"),
    ],
)
def test_token_names_are_quoted_or_bare(line: str, name: str) -> None:
    [declaration] = parse_datafile("e.datasource", line + "\n")
    assert (declaration.token_name, declaration.permission) == (name, "READ")


def test_comment_lines_and_blank_lines_declare_nothing() -> None:
    assert parse_datafile("e.datasource", "# TOKEN a READ\n\n   # TOKEN b READ\n") == []


def test_line_numbers_count_crlf_and_cr_line_ends() -> None:
    text = "DESCRIPTION x\r\n\r\nTOKEN a READ\rTOKEN b APPEND\r\n"
    assert [d.line for d in parse_datafile("e.datasource", text)] == [3, 4]


def test_a_byte_order_mark_does_not_hide_the_first_line() -> None:
    assert [d.token_name for d in parse_datafile("e.datasource", "\ufeffTOKEN a READ")] == ["a"]


@pytest.mark.parametrize(
    "path, text, line, message",
    [
        ("e.datasource", "TOKEN a DROP", 1, "Invalid permission DROP"),
        ("e.datasource", "\nTOKEN a", 2, "two arguments"),
        ("e.datasource", "TOKEN", 1, "two arguments"),
        ("p.pipe", "TOKEN a APPEND", 1, "grants only READ"),
        ("e.datasource", 'TOKEN "a" READ extra', 1, "got 3"),
        ("e.datasource", "TOKEN read api token READ", 1, 'TOKEN "read api token" READ'),
        ("e.datasource", 'TOKEN "read api READ', 1, "unterminated quote"),
        ("e.datasource", "TOKEN 'read api READ", 1, "unterminated quote"),
        ("e.datasource", 'TOKEN "" READ', 1, "empty"),
        ("e.datasource", "TOKEN >\n    a READ", 1, "multi-line"),
        ("e.datasource", "TOKEN p.abc READ", 1, "look like a token"),
        ("e.datasource", f"TOKEN {'x' * 257} READ", 1, "longer than 256"),
        ("e.datasource", 'TOKEN "a\tb" READ', 1, "control characters"),
        ("my-events.datasource", "TOKEN a READ", 0, "datasource name 'my-events'"),
        ("2fast.pipe", "", 0, "pipe name '2fast'"),
        ("notes.txt", "TOKEN a READ", 0, "not a .datasource or .pipe"),
    ],
)
def test_lines_forward_refuses_are_refused_with_file_and_line(path: str, text: str, line: int, message: str) -> None:
    with pytest.raises(DatafileError) as raised:
        parse_datafile(path, text)
    assert (raised.value.path, raised.value.line) == (path, line)
    assert message in raised.value.message
    assert raised.value.message.startswith(f"{path}:{line}: ")


def test_the_error_is_an_invalid_input_for_the_api() -> None:
    assert issubclass(DatafileError, InvalidInput)


@pytest.mark.parametrize(
    "name",
    [
        "reader",
        "read api token",
        "p.value",
        "0b1d2c3e-4f50-6172-8394-a5b6c7d8e9f0",
        "x" * 257,
        "x" * 256,
        "a\x7fb",
        "dots.are.fine",
    ],
)
def test_token_names_follow_the_ledgers_own_rules(name: str) -> None:
    try:
        expected = validate_name(name)
    except InvalidInput:
        expected = None
    try:
        [declaration] = parse_datafile("e.datasource", f'TOKEN "{name}" READ')
        got: str | None = declaration.token_name
    except DatafileError:
        got = None
    assert got == expected


def test_one_resource_name_in_two_files_is_refused_naming_both() -> None:
    files = {"a/events.datasource": "", "b/events.datasource": ""}
    with pytest.raises(DatafileError, match=r"b/events\.datasource:0: .*a/events\.datasource"):
        parse_project(files)


def test_a_pipe_may_not_share_a_datasource_name() -> None:
    with pytest.raises(DatafileError, match="already defined in events.datasource"):
        parse_project({"events.datasource": "", "events.pipe": ""})


def test_an_oversized_file_is_refused() -> None:
    text = "TOKEN a READ\n" + "#" * datafiles.MAX_FILE_BYTES
    with pytest.raises(DatafileError, match="larger than"):
        parse_datafile("e.datasource", text)


def write(root: Path, relative: str, content: str | bytes) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")


def test_read_project_reads_datafiles_in_subfolders_only(tmp_path: Path) -> None:
    for relative, text in PROJECT.items():
        write(tmp_path, relative, text)
    files = read_project(tmp_path)
    assert files == {p: t for p, t in PROJECT.items() if not p.endswith((".md", ".ndjson"))}
    assert parse_project(files) == parse_project(PROJECT)


def test_read_project_refuses_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    write(tmp_path, "ds/latin.datasource", "TOKEN caf\xe9 READ\n".encode("latin-1"))
    with pytest.raises(DatafileError) as raised:
        read_project(tmp_path)
    assert (raised.value.path, raised.value.line) == ("ds/latin.datasource", 0)
    assert "UTF-8" in raised.value.message


def test_read_project_refuses_an_oversized_file_before_reading_it(tmp_path: Path) -> None:
    write(tmp_path, "big.datasource", b"#" * (datafiles.MAX_FILE_BYTES + 1))
    with pytest.raises(DatafileError, match=r"big\.datasource:0: file is larger"):
        read_project(tmp_path)


def test_read_project_refuses_too_many_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datafiles, "MAX_FILES", 3)
    for i in range(4):
        write(tmp_path, f"d{i}.datasource", "")
    with pytest.raises(DatafileError, match="more than 3 datafiles"):
        read_project(tmp_path)


def test_read_project_refuses_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DatafileError, match="not a folder"):
        read_project(tmp_path / "nope")


FRAGMENTS = st.sampled_from(
    [
        "TOKEN",
        "token",
        "Token",
        " ",
        "\t",
        "\n",
        "\r\n",
        "\r",
        '"',
        "'",
        "#",
        ">",
        "READ",
        "APPEND",
        "read",
        "DROP",
        "SQL",
        "NODE",
        "SCHEMA",
        "ENGINE_TTL",
        "a b",
        "p.",
        "\\",
        "\x00",
        "\ufeff",
        "\x7f",
        "é",
        "\u2028",
        "\x0b",
    ]
)
DATAFILE_TEXT = st.one_of(st.text(), st.lists(FRAGMENTS | st.text(max_size=5)).map("".join))


@settings(max_examples=400, deadline=None)
@given(path=st.sampled_from(["e.datasource", "sub/p.pipe"]), text=DATAFILE_TEXT)
def test_any_text_parses_or_raises_a_datafile_error(path: str, text: str) -> None:
    try:
        declarations = parse_datafile(path, text)
    except DatafileError as error:
        assert error.path == path and error.line >= 0
        return
    for declaration in declarations:
        assert declaration.permission in datafiles.PERMISSIONS_BY_KIND[declaration.resource_kind]
        assert declaration.token_name == declaration.token_name.strip() != ""
