"""Read models to wire objects (through the marshmallow schemas)."""

from __future__ import annotations

from typing import Any

from tokentrail.api.schemas import TokenSchema, WorkspaceSchema
from tokentrail.domain.policy import Caller, may_see_value
from tokentrail.domain.scopes import read_scope
from tokentrail.projections.queries import TokenRow, WorkspaceRow
from tokentrail.service import Service

_token_schema = TokenSchema()
_workspace_schema = WorkspaceSchema()


def _data(service: Service, row: TokenRow, caller: Caller | None) -> dict[str, Any]:
    scopes = row.parsed_scopes
    data: dict[str, Any] = {
        "id": row.id,
        "name": row.name,
        "description": row.description,
        "scopes": [s.wire() for s in scopes],
        "origin": row.origin,
        "host": service.signer.host,
    }
    if caller is None or may_see_value(caller, row.facts):
        data["token"] = service.signer.make(row.workspace_id, row.id, row.generation)
    return data


def token_object(service: Service, row: TokenRow, caller: Caller | None) -> dict[str, Any]:
    return _token_schema.dump(_data(service, row, caller))


def token_objects(service: Service, rows: list[TokenRow], caller: Caller | None) -> list[dict[str, Any]]:
    """`token_object` of every row, dumped in one `many=True` pass of the same schema."""
    return _token_schema.dump([_data(service, row, caller) for row in rows], many=True)


def workspace_object(workspace: WorkspaceRow, caller: Caller) -> dict[str, Any]:
    return _workspace_schema.dump(
        {
            "id": workspace.id,
            "name": workspace.name,
            "user_email": workspace.owner_email,
            "user_id": workspace.owner_user_id,
            "scope": "admin" if caller.admin else ("user" if caller.user else "guest"),
        }
    )


def scope_texts(scopes: list[str]) -> list[str]:
    """Canonical strings for a list of scope strings (for comparisons and display)."""
    return [str(read_scope(s)) for s in scopes]
