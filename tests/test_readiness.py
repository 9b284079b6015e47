"""GET /readyz: 503 naming what is wrong when the read models cannot catch up with the log (a
projection stalled, and since when), 200 again once they can."""

from __future__ import annotations

import time
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import text

from tests.api_helpers import make_realm
from tokentrail.api.app import create_app
from tokentrail.service import Service


def test_a_stalled_projection_makes_the_server_unready_naming_since_when(service, tmp_path: Path) -> None:
    strict = Service(
        service.database.url, data=tmp_path, environ={**service.environ, "TOKENTRAIL_READY_MAX_LAG": "0.2"}
    )
    try:
        realm = make_realm(strict, "main", "owner@example.com")
        admin = strict.auth.authenticate(realm.admin)
        with TestClient(create_app(strict)) as client:
            assert client.get("/readyz").status_code == 200
            head = strict.ledger.recorder.max_notification_id() or 0
            # A row in the way of the next event's audit row: projecting it fails.
            with strict.write_engine.begin() as conn:
                conn.execute(
                    text(
                        "INSERT INTO tt_audit (position, at, recorded_at, type, aggregate, visible, hash) "
                        "VALUES (:p, 0, 0, 'Blocker', 'token', false, 'x')"
                    ),
                    {"p": head + 1},
                )
            strict.ledger.create_token(admin, "stuck", ["PIPES:READ:top"])  # stored, not projected
            time.sleep(0.3)
            answer = client.get("/readyz")
            assert answer.status_code == 503 and answer.headers["retry-after"]
            error = answer.json()["error"]
            assert error.startswith("projection stalled:") and "events not projected" in error
            assert "the oldest written at" in error and "projector failed" in error
            with strict.write_engine.begin() as conn:
                conn.execute(text("DELETE FROM tt_audit WHERE type = 'Blocker'"))
            ready = client.get("/readyz")
            assert ready.status_code == 200 and ready.json()["projected"] == ready.json()["head"]
    finally:
        strict.close()
