"""Deployments against the live read models: what the planner sees as the workspace's tokens."""

from __future__ import annotations

from tokentrail.domain.deploy import CurrentToken
from tokentrail.domain.ledger import Deployed
from tokentrail.domain.policy import Caller
from tokentrail.projections.system import System


def current_tokens(system: System, workspace_id: str) -> list[CurrentToken]:
    system.sync()
    return [CurrentToken(r.id, r.name, r.scopes, r.origin["type"], r.kind) for r in system.queries.tokens(workspace_id)]


def deploy(system: System, caller: Caller, files: dict[str, str], check: bool = False) -> Deployed:
    return system.command(
        lambda: system.ledger.deploy(caller, files, lambda: current_tokens(system, caller.workspace_id), check)
    )
