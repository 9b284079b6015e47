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


def deploy(
    service: Service,
    caller: Caller,
    files: dict[str, str],
    check: bool = False,
    stage: bool = False,
    exclusive: bool = False,
) -> Deployed:
    return service.command(
        lambda: service.ledger.deploy(
            caller, files, lambda: current_tokens(service, caller.workspace_id), check, stage, exclusive
        )
    )


def promote(service: Service, caller: Caller, number: int) -> Deployed:
    """Apply a staged deployment, planned again against the live tokens."""
    return service.command(
        lambda: service.ledger.promote_deployment(caller, number, lambda: current_tokens(service, caller.workspace_id))
    )


def discard(service: Service, caller: Caller, number: int) -> Deployed:
    return service.command(lambda: service.ledger.discard_deployment(caller, number))
