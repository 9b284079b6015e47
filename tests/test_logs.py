"""The server's log: TOKENTRAIL_LOG_FORMAT=json writes one JSON object per line (time, level,
request id, route template, status, duration), and no log line, in either format, ever holds a
token value."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.serve_process import initialise_store, serve
from tokentrail.logs import JsonFormatter, TextFormatter, log_format

SECRET = "log-format-test-secret-key-0123456789abcdef"


def _record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.makeLogRecord({"name": "tokentrail.test", "levelname": "WARNING", "msg": message, "args": args})
    record.__dict__.update(extra)
    return record


def test_json_lines_carry_the_request_fields_and_redact_values() -> None:
    value = "p." + "eyJ1IjoiYWJjZGVmZ2hpams" + ".SIGNATURE_abcdefghijkl"  # value-shaped, made of nothing
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJ3b3Jrc3BhY2VfaWQiOiJ4In0.c2lnbmF0dXJl"
    line = JsonFormatter().format(_record("saw %s and %s", value, jwt, request_id="r1", route="/v0/tokens", status=200))
    data = json.loads(line)
    assert data["message"] == "saw [redacted] and [redacted]"
    assert (data["request_id"], data["route"], data["status"], data["level"]) == ("r1", "/v0/tokens", 200, "warning")
    try:
        raise RuntimeError(f"boom with {value}")
    except RuntimeError:
        record = _record("failed")
        record.exc_info = sys.exc_info()
    assert value not in JsonFormatter().format(record) and value not in TextFormatter().format(record)


def test_an_unknown_log_format_is_refused() -> None:
    assert log_format({}) == "text" and log_format({"TOKENTRAIL_LOG_FORMAT": "JSON"}) == "json"
    with pytest.raises(ValueError, match="text or json"):
        log_format({"TOKENTRAIL_LOG_FORMAT": "xml"})


@pytest.mark.e2e
def test_a_json_log_has_one_object_per_line_and_never_a_value(tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'tokentrail.db'}"
    info = initialise_store(database_url, tmp_path, SECRET)
    log = tmp_path / "serve.log"
    served = serve(database_url, tmp_path, SECRET, log, env={"TOKENTRAIL_LOG_FORMAT": "json"})
    values = [info["admin"]]
    try:
        with httpx.Client(base_url=served.url, timeout=10) as http:
            admin = {"token": info["admin"]}
            created = http.post("/v0/tokens", params={**admin, "name": "logged", "scope": "PIPES:READ:top"}).json()
            values.append(created["token"])
            answer = http.post(
                "/v0/tokens",
                params={**admin, "name": "j", "expiration_time": int(time.time()) + 3600},
                content=json.dumps({"scopes": [{"type": "PIPES:READ", "resource": "top"}]}),
            )
            assert answer.status_code == 200, answer.text
            jwt = answer.json()["token"]
            values.append(jwt)
            # Values everywhere a client can put them: path, query, header, user agent, request id.
            assert http.get(f"/v0/tokens/{created['token']}", params=admin).status_code == 200
            http.get("/v0/tokens", headers={"Authorization": f"Bearer {jwt}", "User-Agent": f"ua {jwt}"})
            http.get(f"/nowhere/{info['admin']}", headers={"X-Request-Id": info["admin"]})
            http.get("/v0/auth", params={"token": created["token"] + "x"})
            http.post(f"/v0/tokens/{created['token']}/refresh", params=admin)
            http.get("/healthz")
    finally:
        served.stop()
    text = log.read_text()
    for value in values:
        assert value not in text
        assert value.split(".")[1] not in text  # not even the payload
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]  # every line is an object
    access = [line for line in lines if line.get("logger") == "tokentrail.access"]
    assert {"/v0/tokens/{ref:path}", "/v0/tokens", "(unmatched)", "/healthz"} <= {a["route"] for a in access}
    for entry in access:
        assert {"time", "level", "request_id", "method", "route", "status", "duration_ms"} <= set(entry)
        assert len(entry["request_id"]) == 32
