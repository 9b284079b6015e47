"""The server's log: plain text (default) or one JSON object per line (`TOKENTRAIL_LOG_FORMAT=json`).

Every line goes through `redact` (tokentrail/redact.py), so a token value or a JWT that ends up in a
message or an exception's text is written as `[redacted]`. Requests are logged by
`tokentrail.access`, one line each, with the route's template, never the path (a path can hold a
token value): `request_id`, `method`, `route`, `status`, `duration_ms` (JSON fields; in text, the
message).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from tokentrail.redact import redact

ENV = "TOKENTRAIL_LOG_FORMAT"
FORMATS = ("text", "json")
# Attributes a LogRecord has of its own: everything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message", "taskName"}


def log_format(environ: dict[str, str]) -> str:
    value = (environ.get(ENV) or "text").strip().lower()
    if value not in FORMATS:
        raise ValueError(f"{ENV} must be text or json, not {value!r}")
    return value


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, the request's
    fields when it has them, and the exception's text (redacted) under `error`."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="microseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            out["error"] = redact(self.formatException(record.exc_info))
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`time level logger: message`, redacted."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def logging_config(environ: dict[str, str]) -> dict[str, Any]:
    """A `logging.config.dictConfig` for `tokentrail serve` (uvicorn's `log_config`): the server's
    own loggers and uvicorn's, in the chosen format, to stderr. uvicorn's access log stays off: it
    would write paths, and a path can hold a token value."""
    formatter = "json" if log_format(environ) == "json" else "text"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "json": {"()": "tokentrail.logs.JsonFormatter"},
            "text": {"()": "tokentrail.logs.TextFormatter"},
        },
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": formatter, "stream": "ext://sys.stderr"}
        },
        "loggers": {
            "tokentrail": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
        "root": {"handlers": ["stderr"], "level": "WARNING"},
    }


access_log = logging.getLogger("tokentrail.access")


def log_request(request_id: str | None, method: str, route: str, status: int, seconds: float) -> None:
    """One line per answered request (call only when `access_log` is enabled for INFO)."""
    duration_ms = round(seconds * 1000, 3)
    access_log.info(
        "%s %s %s %.1f ms",
        method,
        route,
        status,
        duration_ms,
        extra={
            "request_id": request_id,
            "method": method,
            "route": route,
            "status": status,
            "duration_ms": duration_ms,
        },
    )
