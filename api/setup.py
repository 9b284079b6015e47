"""First-run set-up shared by `tokentrail init`, `tokentrail serve` and the tests."""

from __future__ import annotations

from typing import Any

from tokentrail.api import present
from tokentrail.domain.policy import Caller
from tokentrail.projections.system import System


def initialise(system: System, workspace: str, email: str, origin: str = "cli") -> dict[str, Any]:
    """Create (or find) a workspace with its default tokens; the user token is listed too."""
    setup = system.command(lambda: system.ledger.setup_workspace(workspace, email, Caller.system(origin=origin)))
    system.sync()
    row = system.queries.workspace(str(setup.workspace.id))
    assert row is not None
    ids = [str(t.id) for t in setup.tokens] + [setup.user.user_token_id]
    rows = [system.queries.token(i) for i in ids]
    return {
        "workspace": {
            "id": row.id,
            "name": row.name,
            "user_email": row.owner_email,
            "user_id": row.owner_user_id,
        },
        "created": setup.created,
        "tokens": [present.token_object(system, r, None) for r in rows if r is not None],
    }
