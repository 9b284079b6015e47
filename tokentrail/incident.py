"""Incident response: the two use cases that read and then write.

- `lookup`: which token a (leaked) value is, answered by the read door, and the asking put on the
  record by the ledger (who looked up which token and value, never the value).
- `revoke`: the plan of a bulk revocation from the read door (selectors over the read models), then
  one atomic change by the ledger, every deletion carrying the same `revocation_id` and `reason`.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from tokentrail.domain.errors import InvalidInput
from tokentrail.domain.ledger import validate_reason
from tokentrail.domain.policy import Caller
from tokentrail.reads import Identified, Selectors

if TYPE_CHECKING:
    from tokentrail.service import Service

# One revocation is one transaction, which must commit within the command's time budget: 10,000
# tokens take ~5 s on SQLite (docs/benchmarks.md). A bigger plan is refused, not half-tried.
MAX_REVOCATION = 20_000


def lookup(service: Service, who: Caller, value: str) -> Identified:
    found = service.reads.identify(who, value)
    service.command(
        lambda: service.ledger.record_lookup(
            who, found.token_id, found.name, jwt=found.jwt, generation=found.generation, outcome=found.reason
        )
    )
    return found


def revoke(
    service: Service, who: Caller, selectors: Selectors, reason: str | None, dry_run: bool
) -> tuple[str | None, list[tuple[str, str]]]:
    """(revocation id, [(token id, name)]): the plan alone when `dry_run` (nothing written, no id);
    else what was deleted, under a new revocation id (None when nothing was left to delete)."""
    plan = service.reads.revocation_plan(who, selectors)
    if dry_run:
        if reason:
            validate_reason(reason)
        return None, [(r.id, r.name) for r in plan]
    reason = validate_reason(reason)
    if not plan:
        return None, []
    if len(plan) > MAX_REVOCATION:
        raise InvalidInput(
            f"these selectors match {len(plan):,} tokens; one revocation deletes at most {MAX_REVOCATION:,}: "
            "narrow the selectors (a created_from/created_to window, say) and revoke in parts"
        )
    revocation_id = str(uuid.uuid4())
    revoked = service.command(lambda: service.ledger.revoke(who, [r.id for r in plan], reason, revocation_id))
    if not revoked.tokens:
        return None, []
    return revocation_id, [(str(t.id), t.name) for t in revoked.tokens]
