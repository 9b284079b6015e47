"""Fuzzing: the HTTP API against its own OpenAPI schema, and the parsers that
read untrusted text against arbitrary input.

1. schemathesis generates requests for every operation of `/openapi.json` (valid ones, and invalid
   ones in negative mode), authenticated with the workspace's ADMIN token (the user token for the
   `/v1/...workspaces` routes), against a fresh ledger per operation and backend. Every answer must
   be no 5xx, have a documented status code, a documented content type and a body that matches
   the documented schema.
2. hypothesis feeds the scope parser, the sql_filter validator, token-value verification and the
   datafile parser arbitrary and mutated input: each either answers or raises its one named error.

CI runs a bounded, derandomised amount (about 20 examples per operation). A long run:

    TOKENTRAIL_FUZZ_EXAMPLES=500 /work/venv/bin/python -m pytest -q -n 4 tests/test_fuzz.py

(`TOKENTRAIL_FUZZ_EXAMPLES` sets both the schemathesis examples per operation and the hypothesis
examples per property; `TOKENTRAIL_FUZZ_SEED=<int>` makes the run random but reproducible.)
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import BACKENDS, PG_HOST, PG_PORT, PG_USER, TEST_SECRET, _pg_admin
from tokentrail.api.app import create_app
from tokentrail.api.setup import initialise
from tokentrail.domain.datafiles import parse_datafile, parse_project
from tokentrail.domain.errors import DatafileError, FilterError, ScopeError
from tokentrail.domain.filters import normalize_filter
from tokentrail.domain.scopes import check_permission, parse_scope, parse_scopes, scope_from_parts
from tokentrail.domain.values import TokenSigner, b64url
from tokentrail.service import Service

EXAMPLES = int(os.environ.get("TOKENTRAIL_FUZZ_EXAMPLES", "20"))
SEED = os.environ.get("TOKENTRAIL_FUZZ_SEED")
LONG_RUN = "TOKENTRAIL_FUZZ_EXAMPLES" in os.environ


# -- 1. the HTTP API against its OpenAPI schema ------------------------------------------------------


def _openapi() -> dict[str, Any]:
    """The schema of the app as `tokentrail serve` builds it (it does not depend on the store)."""
    with tempfile.TemporaryDirectory(prefix="tokentrail-fuzz-") as tmp:
        environ = {"TOKENTRAIL_SECRET_KEY": TEST_SECRET, "TOKENTRAIL_DATA_DIR": tmp}
        service = Service(f"sqlite:///{Path(tmp) / 'schema.db'}", data=Path(tmp), environ=environ)
        try:
            return create_app(service).openapi()
        finally:
            service.close()


# Values that mean something to the server, offered to schemathesis as examples of each parameter
# (random strings alone almost never make a valid scope, name or instant), plus a few hostile ones.
PARAMETER_EXAMPLES: dict[str, list[Any]] = {
    "ref": ["reader", "pipe reader", "admin token", "a\x00b", "p.x.y", "00000000-0000-4000-8000-000000000000"],
    "scope": [["DATASOURCES:READ:events"], ["PIPES:READ:top", "DATASOURCES:APPEND:events"], ["ADMIN"]],
    "name": ["read api token", "reader"],
    "description": ["fuzzed"],
    "origin": ["C", "DS"],
    "resource_id": ["events"],
    "resource": ["events", "events_quarantine"],
    "kind": ["datasource", "pipe"],
    "permission": ["READ", "APPEND", "DROP", "ADMIN", "TOKENS", "DATASOURCES:READ:events"],
    "as_of": ["2026-01-01T00:00:00+00:00", "1"],
    "from": ["0", "2020-01-01T00:00:00Z"],
    "to": ["4102444800"],
    "format": ["json", "ndjson", "csv"],
    "event": ["Created,Refreshed"],
    "grace_seconds": [0, 60],
    "check": ["true"],
    "limit": [1, 1000],
}


def _with_examples(spec: dict[str, Any]) -> dict[str, Any]:
    for item in spec["paths"].values():
        for operation in item.values():
            for parameter in operation.get("parameters", []):
                values = PARAMETER_EXAMPLES.get(parameter["name"])
                if values:
                    parameter["examples"] = {f"e{i}": {"value": v} for i, v in enumerate(values)}
    return spec


def _config() -> SchemathesisConfig:
    generation: dict[str, Any] = {
        "max-examples": EXAMPLES,
        "mode": "all",  # valid requests and invalid ones
        "database": "none",
        # The `?token=` security parameter would override the Bearer header we send.
        "with-security-parameters": False,
    }
    if SEED is None:
        generation["deterministic"] = True  # CI: the same requests every run
    config: dict[str, Any] = {"generation": generation}
    if SEED is not None:
        config["seed"] = int(SEED)
    return SchemathesisConfig.from_dict(config)


schema = schemathesis.openapi.from_dict(_with_examples(_openapi()), config=_config())
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
USER_ROUTES = ("/v1/workspaces", "/v1/user/workspaces")


class FuzzTarget:
    """A fresh app over a fresh ledger; the credentials are re-read before every request, so that a
    fuzzed refresh of the admin token does not leave the rest of the run unauthenticated."""

    def __init__(self, service: Service) -> None:
        self.service = service
        info = initialise(service, "main", "owner@example.com")
        ids = {t["name"]: t["id"] for t in info["tokens"]}
        self.admin_id, self.user_id = ids["admin token"], ids["user token"]
        self.app = create_app(service)
        with TestClient(self.app) as client:  # a little state for the reads to find
            admin = self.value(self.admin_id)
            for name, scope in [("reader", "DATASOURCES:READ:events:a>1"), ("pipe reader", "PIPES:READ:top")]:
                client.post("/v0/tokens", params={"token": admin, "name": name, "scope": scope}).raise_for_status()
            client.post("/v0/tokens/reader/refresh", params={"token": admin}).raise_for_status()
            client.delete("/v0/tokens/pipe%20reader", params={"token": admin}).raise_for_status()

    def value(self, token_id: str) -> str:
        self.service.sync()
        row = self.service.queries.token(token_id)
        assert row is not None
        return self.service.signer.make(row.workspace_id, row.id, row.generation)

    def headers(self, path: str) -> dict[str, str]:
        token_id = self.user_id if path in USER_ROUTES else self.admin_id
        return {"Authorization": f"Bearer {self.value(token_id)}"}


@pytest.fixture(scope="module", params=BACKENDS)
def fuzz_target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, postgres_available: bool
) -> Iterator[FuzzTarget]:
    """One ledger per backend (and xdist worker) for all the operations: creating a PostgreSQL
    database per operation would cost more than the fuzzing. Robust to what the fuzzer does to it:
    the default tokens cannot be deleted and their values are re-read before each request."""
    tmp = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    if request.param == "sqlite":
        url = f"sqlite:///{tmp / 'tokentrail.db'}"
    else:
        name = f"tt_test_{uuid.uuid4().hex[:16]}"
        with _pg_admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    service = Service(url, data=tmp, environ={"TOKENTRAIL_SECRET_KEY": TEST_SECRET, "TOKENTRAIL_DATA_DIR": str(tmp)})
    try:
        yield FuzzTarget(service)
    finally:
        service.close()
        if request.param == "postgres":
            with _pg_admin() as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=SEED is None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_answers_as_documented_and_never_5xx(case, fuzz_target: FuzzTarget) -> None:
    case.call_and_validate(app=fuzz_target.app, headers=fuzz_target.headers(case.path), checks=CHECKS)


# -- 2. the parsers of untrusted text ----------------------------------------------------------------
# tests/test_scopes.py, test_filters.py and test_datafiles.py already feed each parser random text;
# these add mutations of valid input, structured noise and the entry points they leave out.

PROPERTY = settings(max_examples=max(200, EXAMPLES), deadline=None, derandomize=SEED is None, database=None)
SCOPE_TYPES = [
    "ADMIN",
    "TOKENS",
    "AUTH",
    "ADMIN_USER",
    "WORKSPACE:READ_ALL",
    "WORKSPACE:DEPLOY",
    "ORG_DATASOURCES:READ",
    "DATASOURCES:CREATE",
    "DATASOURCES:APPEND",
    "DATASOURCES:DROP",
    "DATASOURCES:READ",
    "PIPES:CREATE",
    "PIPES:DROP",
    "PIPES:READ",
]
VALID_SCOPES = [
    "ADMIN",
    "TOKENS",
    "DATASOURCES:READ:events",
    "PIPES:READ:top:a > 1",
    "DATASOURCES:APPEND:e",
    "ADMIN_USER:someone@example.com",
    "DATASOURCES:READ:t:org = 'a:b' AND x IN (1, 2)",
]
SQL_WORDS = [
    "a",
    "b",
    "1",
    "'x'",
    "'",
    '"',
    "`",
    "=",
    ">",
    "<>",
    "!=",
    "AND",
    "OR",
    "NOT",
    "IN",
    "(",
    ")",
    ",",
    "IS",
    "NULL",
    "LIKE",
    "BETWEEN",
    "SELECT",
    "FROM",
    ";",
    "--",
    "/*",
    "*/",
    "#",
    "count(*)",
    "t.a",
    "UNION",
    "DROP TABLE x",
    "\\",
    "\x00",
    "é",
    "0x1F",
    "1e309",
    "[1]",
    "{a}",
    "?",
    "$1",
    ":p",
    "::",
    " ",
]


def _mutate(text: str, data: st.DataObject) -> str:
    """Insert, delete or replace a few characters of `text`."""
    chars = list(text)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        at = data.draw(st.integers(0, len(chars)))
        if op == "insert":
            chars.insert(at, data.draw(st.characters()))
        elif chars and at < len(chars):
            if op == "delete":
                del chars[at]
            else:
                chars[at] = data.draw(st.characters())
    return "".join(chars)


@PROPERTY
@given(base=st.sampled_from(VALID_SCOPES), data=st.data())
def test_mutated_scopes_parse_to_a_stable_scope_or_raise_scope_error(base: str, data: st.DataObject) -> None:
    text = _mutate(base, data)
    try:
        scope = parse_scope(text)
    except ScopeError:
        return
    assert parse_scope(str(scope)) == scope
    assert "\x00" not in str(scope)


@PROPERTY
@given(
    type_=st.sampled_from(SCOPE_TYPES) | st.text(max_size=30),
    resource=st.none() | st.text(max_size=40) | st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True),
    filter_=st.none() | st.lists(st.sampled_from(SQL_WORDS), max_size=8).map(" ".join),
)
def test_scopes_from_wire_parts_raise_only_scope_error(type_: str, resource: str | None, filter_: str | None) -> None:
    """The JSON shape (JWT bodies, wire scope objects) rather than the string one."""
    try:
        scope = scope_from_parts(type_, resource, filter_)
    except ScopeError:
        return
    assert scope.type == type_
    assert check_permission([scope], scope) is not None  # a scope grants itself


@pytest.mark.parametrize("value", [None, 1, b"ADMIN", ["ADMIN"], {"type": "ADMIN"}])
def test_a_scope_that_is_not_a_string_raises_scope_error(value: Any) -> None:
    with pytest.raises(ScopeError):
        parse_scope(value)


@PROPERTY
@given(st.lists(st.sampled_from(VALID_SCOPES) | st.text(max_size=20), max_size=12))
def test_scope_lists_parse_all_or_raise_scope_error(texts: list[str]) -> None:
    try:
        scopes = parse_scopes(texts)
    except ScopeError:
        return
    assert len(set(scopes)) == len(scopes) <= len(texts)


@PROPERTY
@given(st.lists(st.sampled_from(SQL_WORDS), max_size=25).map(" ".join))
def test_sql_shaped_noise_raises_only_filter_error(text: str) -> None:
    try:
        normal = normalize_filter(text)
    except FilterError:
        return
    assert normalize_filter(normal) == normal
    for forbidden in (";", "--", "/*", "SELECT", "UNION", "DROP", "\x00"):
        assert forbidden not in normal.upper().replace("'", "") or forbidden in text.upper()


@PROPERTY
@given(
    base=st.sampled_from(["a > 1", "org = 'acme'", "x IN (1, 2) AND NOT y IS NULL", "c LIKE '%a+b%'"]), data=st.data()
)
def test_mutated_filters_raise_only_filter_error(base: str, data: st.DataObject) -> None:
    try:
        normal = normalize_filter(_mutate(base, data))
    except FilterError:
        return
    assert normalize_filter(normal) == normal


@pytest.mark.parametrize(
    "text",
    [
        "(" * 1000 + "a = 1" + ")" * 1000,
        "NOT " * 500 + "a",
        "a = " + "-" * 2000 + "1",
        "a IN (" + "1," * 900 + "1)",
        "a = 1 AND " * 200 + "b = 2",
        "'" * 2047,
        "a = '\\'",
        "a = 1; DROP TABLE t",
        "a = 1 -- x",
        "a = (SELECT 1)",
    ],
    ids=[
        "deep parentheses",
        "deep NOT",
        "deep negation",
        "long IN list",
        "long AND chain",
        "quotes",
        "escaped quote",
        "second statement",
        "comment",
        "subquery",
    ],
)
def test_pathological_filters_raise_only_filter_error(text: str) -> None:
    try:
        normalize_filter(text)
    except FilterError:
        pass


SIGNER = TokenSigner(TEST_SECRET.encode())
OTHER_SIGNER = TokenSigner(b"another-server-key-0123456789abcd")
GENUINE = SIGNER.make(
    "7f9a653c-b564-45a0-94f1-844df59d7a14", "92179b67-6e65-497f-8111-88a13290e061", "Ru-QIGFCMNYm57ET"
)
VALUE_PIECES = ["p.", ".", "p", "=", "-", "_", "eyJ1Ijo", "AAAA", "\x00", "é", "\U0001f600", " ", "%2E"]


@PROPERTY
@given(st.text(max_size=300) | st.lists(st.sampled_from(VALUE_PIECES) | st.text(max_size=8)).map("".join))
def test_random_values_read_as_none_never_an_exception(value: str) -> None:
    assert SIGNER.read(value) is None  # only a value signed with the key reads


@PROPERTY
@given(data=st.data())
@example(data=None)
def test_mutated_genuine_values_never_verify(data: st.DataObject | None) -> None:
    if data is None:  # the unmutated value reads
        assert SIGNER.read(GENUINE) is not None
        return
    mutated = _mutate(GENUINE, data)
    assume(mutated != GENUINE)
    claims = SIGNER.read(mutated)
    # Base64 padding bits can absorb a change of the last character of the signature; anything
    # else that still verifies would be a forgery.
    if claims is not None:
        _, payload, signature = mutated.split(".")
        assert payload == GENUINE.split(".")[1] and base64.urlsafe_b64decode(
            signature + "="
        ) == base64.urlsafe_b64decode(GENUINE.split(".")[2] + "=")


@PROPERTY
@given(
    payload=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=10),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["u", "id", "g", "host", "x"]), inner)
        ),
        max_leaves=8,
    )
)
def test_well_signed_payloads_of_any_shape_give_claims_or_none(payload: Any) -> None:
    """Even a payload signed with our key (which only we can make) must not crash the reader."""
    encoded = b64url(json.dumps(payload).encode())
    value = f"p.{encoded}.{SIGNER._sign(encoded)}"
    claims = SIGNER.read(value)
    if claims is not None:
        assert isinstance(payload, dict) and claims.token_id == payload["id"]
    assert OTHER_SIGNER.read(value) is None  # another key never accepts it


@pytest.mark.parametrize("value", [None, 7, b"p.x.y", ["p.a.b"], "p." + "a" * 2000 + ".b", "p.\udcff.x"])
def test_values_that_are_not_plain_strings_read_as_none(value: Any) -> None:
    assert SIGNER.read(value) is None


@settings(
    max_examples=max(60, EXAMPLES // 4),
    deadline=None,
    derandomize=SEED is None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(value=st.text(max_size=200) | st.lists(st.sampled_from(VALUE_PIECES + ["eyJhbGciOiJIUzI1NiJ9"])).map("".join))
def test_authentication_of_random_credentials_raises_only_unauthenticated(service: Service, value: str) -> None:
    from tokentrail.domain.errors import Unauthenticated

    with pytest.raises(Unauthenticated):
        service.auth.authenticate(value)
    with pytest.raises(Unauthenticated):
        service.auth.authenticate(value.replace("\x00", "") + ".x.y")


DATAFILE_PIECES = [
    "TOKEN",
    "token",
    " ",
    "\t",
    "\n",
    "\r",
    '"',
    "'",
    "#",
    ">",
    "READ",
    "APPEND",
    "DROP",
    "SQL",
    "NODE",
    "SCHEMA",
    "a b",
    "p.",
    "\\",
    "\x00",
    "\ufeff",
    "é",
    "\udcff",
    "0" * 8 + "-0000",
]
PATHS = st.sampled_from(
    [
        "e.datasource",
        "p.pipe",
        "a/b.pipe",
        "README.md",
        "1bad.pipe",
        ".pipe",
        "x.datasource.bak",
        "e.pipe",
        "../up.datasource",
        "a b.datasource",
        "ü.pipe",
    ]
) | st.text(max_size=20)


@PROPERTY
@given(
    st.dictionaries(PATHS, st.lists(st.sampled_from(DATAFILE_PIECES) | st.text(max_size=6)).map("".join), max_size=5)
)
def test_any_project_parses_or_raises_a_datafile_error(files: dict[str, str]) -> None:
    try:
        declarations = parse_project(files)
    except DatafileError as error:
        assert error.message and error.line >= 0
        return
    for declaration in declarations:
        assert declaration.path in files and parse_scope(declaration.scope)


@PROPERTY
@given(path=st.sampled_from(["e.datasource", "p.pipe"]), raw=st.binary(max_size=200))
def test_arbitrary_bytes_decoded_any_way_parse_or_raise_a_datafile_error(path: str, raw: bytes) -> None:
    for text in (raw.decode("latin-1"), raw.decode("utf-8", "surrogateescape"), raw.decode("utf-8", "replace")):
        try:
            parse_datafile(path, text)
        except DatafileError:
            pass


@settings(
    max_examples=40,
    deadline=None,
    derandomize=SEED is None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(raw=st.binary(max_size=100))
def test_datafiles_on_disk_of_any_bytes_read_or_raise_a_datafile_error(tmp_path: Path, raw: bytes) -> None:
    from tokentrail.domain.datafiles import read_project

    (tmp_path / "e.datasource").write_bytes(b"TOKEN t READ\n" + raw)
    try:
        parse_project(read_project(tmp_path))
    except DatafileError:
        pass


@PROPERTY
@given(query=st.binary(max_size=120), body=st.binary(max_size=120))
def test_wire_parameters_of_any_bytes_parse_or_raise_invalid_input(query: bytes, body: bytes) -> None:
    from tokentrail.api.wire import Params, json_body
    from tokentrail.domain.errors import InvalidInput

    try:
        params = Params.parse(query, body)
    except InvalidInput:
        pass
    else:
        assert all("\x00" not in v for v in params.getlist("scope"))
    try:
        json_body(body)
    except InvalidInput:
        pass


def test_deeply_nested_json_bodies_raise_invalid_input() -> None:
    from tokentrail.api.wire import json_body
    from tokentrail.domain.errors import InvalidInput

    for body in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000, b'"\\ud800"', b"NaN"):
        with pytest.raises(InvalidInput):
            json_body(body)
