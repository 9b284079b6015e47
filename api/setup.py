"""First-run set-up shared by `tokentrail init`, `tokentrail serve` and the tests."""

from __future__ import annotations

from typing import Any

from tokentrail.api import present
from tokentrail.domain.policy import Caller
from tokentrail.service import Service


def initialise(service: Service, workspace: str, email: str, origin: str = "cli") -> dict[str, Any]:
    """Create (or find) a workspace with its default tokens; the user token is listed too."""
    setup = service.command(lambda: service.ledger.setup_workspace(workspace, email, Caller.system(origin=origin)))
    service.sync()
    row = service.queries.workspace(str(setup.workspace.id))
    assert row is not None
    ids = [str(t.id) for t in setup.tokens] + [setup.user.user_token_id]
    rows = [service.queries.token(i) for i in ids]
    return {
        "workspace": {
            "id": row.id,
            "name": row.name,
            "user_email": row.owner_email,
            "user_id": row.owner_user_id,
        },
        "created": setup.created,
        "tokens": [present.token_object(service, r, None) for r in rows if r is not None],
    }
