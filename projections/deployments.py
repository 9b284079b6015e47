"""Deployments against the live read models: what the planner sees as the workspace's tokens."""

from __future__ import annotations

from tokentrail.domain.deploy import CurrentToken
from tokentrail.domain.ledger import Deployed
from tokentrail.domain.policy import Caller
from tokentrail.service import Service


def current_tokens(service: Service, workspace_id: str) -> list[CurrentToken]:
    service.sync()
    return [
        CurrentToken(r.id, r.name, r.scopes, r.origin["type"], r.kind) for r in service.queries.tokens(workspace_id)
    ]


def deploy(service: Service, caller: Caller, files: dict[str, str], check: bool = False) -> Deployed:
    return service.command(
        lambda: service.ledger.deploy(caller, files, lambda: current_tokens(service, caller.workspace_id), check)
    )
