"""Staged deployments: recorded now, applied when promoted (Forward's `tb deployment create`
without `--auto`, then `tb deployment promote`), or dropped (`tb deployment discard`).

A staged deployment is an event of the workspace's `DeploymentLog` that keeps the TOKEN lines of
its files (never the files themselves). Promotion plans again, against the tokens as they are
then, checks the promoter's rights step by step, and applies the plan as one atomic change, like a
deployment applied at once; nothing is written when any of that refuses.

`StagedDeployments` is a part of `Ledger` (domain/ledger.py), kept in its own module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from uuid import UUID

from eventsourcing.domain import Aggregate

from tokentrail.domain.datafiles import TokenDeclaration
from tokentrail.domain.deploy import CreateToken, CurrentToken, Plan, plan_deployment
from tokentrail.domain.errors import DeploymentInProgress
from tokentrail.domain.model import DeploymentLog, deployment_log_id, token_name_id
from tokentrail.domain.policy import Caller, Op, authorize

T = TypeVar("T")


@dataclass
class Deployed:
    """A deployment's plan; `deployment_id` is None when nothing was written (check or no change).
    `number` is its number in the workspace (Forward's deployment id); `staged` when not applied."""

    plan: Plan
    deployment_id: str | None
    position: int
    number: int | None = None
    staged: bool = False


class _LedgerParts(Protocol):
    """What of `Ledger` this part uses."""

    def _retrying(self, attempt: Callable[[], T]) -> T: ...
    def _require_current(self, caller: Caller) -> None: ...
    def _get_or_none(self, aggregate_id: UUID) -> Any: ...
    def _get_many(self, aggregate_ids: Sequence[UUID]) -> dict[UUID, Any]: ...
    def _save(self, aggregates: Sequence[Aggregate]) -> int: ...
    def _apply_step(
        self, workspace_id: str, step: Any, actor: dict[str, Any], caller: Caller, known: dict[UUID, Any]
    ) -> list[Aggregate]: ...


def declaration_record(declaration: TokenDeclaration) -> dict[str, Any]:
    return dataclasses.asdict(declaration)


class StagedDeployments:
    def _stage(
        self: _LedgerParts,
        log: DeploymentLog | None,
        workspace_id: str,
        deployment_id: str,
        plan: Plan,
        paths: list[str],
        declarations: Sequence[TokenDeclaration],
        actor: dict[str, Any],
    ) -> Deployed:
        """Record a planned deployment without applying it (called within `Ledger.deploy`'s attempt)."""
        if log is None:
            log = DeploymentLog.open(workspace_id, actor)
        records = [declaration_record(d) for d in declarations]
        number = log.stage(deployment_id, plan.token_changes, paths, records, actor)
        return Deployed(plan, deployment_id, self._save([log]), number, staged=True)

    def promote_deployment(
        self: _LedgerParts, caller: Caller, number: int, current_tokens: Callable[[], list[CurrentToken]]
    ) -> Deployed:
        """Apply staged deployment `number`: plan its TOKEN lines again against the live tokens and
        apply that plan atomically, recorded with the deployment's id."""
        authorize(caller, Op.DEPLOY)
        workspace_id = caller.workspace_id

        def attempt() -> Deployed:
            self._require_current(caller)
            log = self._get_or_none(deployment_log_id(workspace_id))
            staged = _staged(log, number)
            declarations = [TokenDeclaration(**d) for d in staged["declarations"]]
            plan = plan_deployment(declarations, current_tokens())
            actor = caller.for_deployment(staged["deployment_id"]).actor()
            known = self._get_many(
                [token_name_id(workspace_id, step.name) for step in plan.steps if isinstance(step, CreateToken)]
                + [UUID(step.token_id) for step in plan.steps if not isinstance(step, CreateToken)]
            )
            touched: list[Aggregate] = []
            for step in plan.steps:
                touched += self._apply_step(workspace_id, step, actor, caller, known)
            log.promoted(plan.token_changes, actor)
            return Deployed(plan, staged["deployment_id"], self._save([*touched, log]), number)

        return self._retrying(attempt)

    def discard_deployment(self: _LedgerParts, caller: Caller, number: int) -> Deployed:
        """Drop staged deployment `number`: it is recorded as discarded and never applied."""
        authorize(caller, Op.DEPLOY)

        def attempt() -> Deployed:
            self._require_current(caller)
            log = self._get_or_none(deployment_log_id(caller.workspace_id))
            staged = _staged(log, number)
            log.discard(caller.for_deployment(staged["deployment_id"]).actor())
            return Deployed(Plan(), staged["deployment_id"], self._save([log]), number)

        return self._retrying(attempt)


def _staged(log: DeploymentLog | None, number: int) -> dict[str, Any]:
    staged = log.staged if log is not None else None
    if staged is None or staged["number"] != number:
        raise DeploymentInProgress(f"deployment #{number} is not staged (it was promoted or discarded meanwhile)")
    return staged
