"""Tinybird Forward's deployment protocol, as its real CLI (`tinybird` 5.0.3) speaks it.

`tb --cloud deploy` posts the project to `POST /v1/deploy` and polls `GET /v1/deployments/{id}`;
`tb --cloud deployment create|ls|promote|discard` use `/v1/deployments…`. docs/forward-deploy.md
records what the CLI sends and reads. Here a deployment is the project's TOKEN lines: the
datasource and pipe definitions are accepted and not hosted, and every answer says so in
`deployment.feedback`, which the CLI prints.

Forward's deployment id is the deployment's number in its workspace (the CLI parses it as an
integer); `deployment_id` in the same object is the ledger's id, which the audit trail records.
Deployment `0` is Forward's "seed": the live deployment of a workspace that has applied none yet.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from tokentrail.api.deps import caller, get_service, params, read_body
from tokentrail.api.routes.deployments import _files
from tokentrail.api.schemas import path_param, query_param, responses
from tokentrail.api.wire import Params
from tokentrail.domain.clock import format_instant
from tokentrail.domain.datafiles import KIND_BY_SUFFIX
from tokentrail.domain.errors import Conflict, DatafileError, InvalidInput, NotFound
from tokentrail.domain.policy import Caller
from tokentrail.projections.deployments import deploy, discard, promote
from tokentrail.projections.queries import DeploymentRow

router = APIRouter(tags=["forward deployments"])

NOT_HOSTED = (
    "tokentrail applies only the TOKEN lines of this project: its datasources, pipes and connections "
    "are accepted, not deployed (tokentrail hosts no data)"
)
SEED = "0"
_DEPLOYMENT = {
    "type": "object",
    "required": ["id", "status", "live", "token_changes", "errors", "feedback"],
    "properties": {
        "id": {"type": ["string", "null"]},
        "deployment_id": {"type": ["string", "null"]},
        "status": {"type": "string", "enum": ["data_ready", "deleted", "failed"]},
        "live": {"type": "boolean"},
        "created_at": {"type": ["string", "null"]},
        "token_changes": {"type": "array"},
        "errors": {"type": "array"},
        "feedback": {"type": "array"},
    },
}
_DEPLOYED = {
    "type": "object",
    "required": ["result", "deployment"],
    "properties": {"result": {"type": "string", "enum": ["success", "no_changes"]}, "deployment": _DEPLOYMENT},
}
_ONE = {"type": "object", "required": ["deployment"], "properties": {"deployment": _DEPLOYMENT}}
_LIST = {
    "type": "object",
    "required": ["deployments"],
    "properties": {"deployments": {"type": "array", "items": _DEPLOYMENT}},
}
_ID = path_param("deployment_id", "The deployment's number in the workspace (`0`: the seed deployment)")


def _yes(p: Params, name: str) -> bool:
    return (p.get(name) or "").lower() in ("1", "true", "yes")


@router.post(
    "/v1/deploy",
    summary="Deploy a Forward project's TOKEN lines (Tinybird Forward's `tb deploy`)",
    description="The project's files as Forward's CLI sends them (multipart/form-data, one "
    "`data_project://` part per file, named by its path). `check=true` only plans; "
    "`auto_promote=true` applies at once; otherwise the deployment is staged until "
    "`POST /v1/deployments/{id}/set-live`. Datasource and pipe definitions are accepted, not hosted.",
    response_model=None,
    openapi_extra={
        "parameters": [
            query_param("check", "`true` only plans: nothing is written"),
            query_param("auto_promote", "`true` applies the deployment at once (it becomes live)"),
        ],
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": {"type": "object", "additionalProperties": True}}},
        },
    },
    responses=responses(_DEPLOYED, 400, 403, 409, 413),
)
async def forward_deploy(
    request: Request, who: Caller = Depends(caller), p: Params = Depends(params), body: bytes = Depends(read_body)
) -> Any:
    files = await _files(request, body)
    datafiles = [path for path in files if PurePosixPath(path).suffix in KIND_BY_SUFFIX]
    if not datafiles:
        # An empty folder must not read as "no TOKEN lines any more" (delete every datafile token).
        raise InvalidInput("the project holds no .datasource or .pipe file: run the deployment from the project folder")
    check, auto = _yes(p, "check"), _yes(p, "auto_promote")
    service = get_service(request)
    try:
        result = await run_in_threadpool(deploy, service, who, files, check, not (check or auto), True)
    except DatafileError as error:
        # The message names the file and line (the CLI prints `error`); `deployment.errors` is
        # Forward's own shape of the same, for clients that read it.
        detail = error.message.removeprefix(f"{error.path}:{error.line}: ")
        failed = {"filename": error.path, "error": f"line {error.line}: {detail}"}
        deployment = _answer(None, None, "failed", False, None, [], [failed])
        return JSONResponse(
            {"error": error.message, "result": "failed", "deployment": deployment}, status_code=error.status
        )
    changes = result.plan.token_changes
    outcome = "no_changes" if result.plan.empty else "success"
    if result.number is None:  # a check, or nothing to change: nothing was recorded
        return {"result": outcome, "deployment": _answer(None, None, "data_ready", False, None, changes)}
    row = await run_in_threadpool(service.reads.deployment, who, result.number)
    if row is None:  # pragma: no cover - the command caught the read models up to its own write
        raise NotFound("Deployment not found")
    return {"result": outcome, "deployment": _present(row)}


@router.get(
    "/v1/deployments",
    summary="List the deployments: the live one and any staged one (Forward's `tb deployment ls`)",
    description="`include_deleted=true` lists superseded and discarded deployments too.",
    response_model=None,
    openapi_extra={"parameters": [query_param("include_deleted", "`true` also lists deleted deployments")]},
    responses=responses(_LIST, 403),
)
def list_deployments(request: Request, who: Caller = Depends(caller), p: Params = Depends(params)) -> dict[str, Any]:
    everything = _yes(p, "include_deleted")
    rows = get_service(request).reads.deployments(who, everything)
    listed = [_present(row) for row in rows]
    if everything or not any(row.live for row in rows):
        listed.insert(0, _seed(rows))
    return {"deployments": listed}


@router.get(
    "/v1/deployments/{deployment_id}",
    summary="One deployment, as Forward's CLI polls it",
    response_model=None,
    openapi_extra={"parameters": [_ID]},
    responses=responses(_ONE, 403, 404),
)
def get_deployment(request: Request, deployment_id: str, who: Caller = Depends(caller)) -> dict[str, Any]:
    service = get_service(request)
    if deployment_id == SEED:
        return {"deployment": _seed(service.reads.deployments(who))}
    return {"deployment": _present(_row(service, who, deployment_id))}


@router.post(
    "/v1/deployments/{deployment_id}/set-live",
    summary="Promote a staged deployment: plan its TOKEN lines again and apply them (`tb deployment promote`)",
    response_model=None,
    openapi_extra={"parameters": [_ID]},
    responses=responses(_ONE, 400, 403, 404, 409),
)
def set_live(request: Request, deployment_id: str, who: Caller = Depends(caller)) -> dict[str, Any]:
    service = get_service(request)
    if deployment_id == SEED:
        seed = _seed(service.reads.deployments(who))
        if not seed["live"]:
            raise Conflict("deployment #0 was replaced by a later deployment; it cannot be live again")
        return {"deployment": seed}
    row = _row(service, who, deployment_id)
    if row.status == "staged":
        promote(service, who, row.number)
        row = _row(service, who, deployment_id)
    elif not row.live:
        raise Conflict(f"deployment #{row.number} was {_ended(row)}; it cannot be live again: deploy again instead")
    return {"deployment": _present(row)}


@router.delete(
    "/v1/deployments/{deployment_id}",
    summary="Discard a staged deployment, or drop one already replaced (`tb deployment discard`)",
    description="The live deployment cannot be deleted: deploy another one to replace it.",
    response_model=None,
    openapi_extra={"parameters": [_ID]},
    responses=responses(_ONE, 403, 404, 409),
)
def delete_deployment(request: Request, deployment_id: str, who: Caller = Depends(caller)) -> dict[str, Any]:
    service = get_service(request)
    if deployment_id == SEED:
        seed = _seed(service.reads.deployments(who))
        if seed["live"]:
            raise Conflict("the live deployment cannot be deleted: deploy another one to replace it")
        return {"deployment": seed}
    row = _row(service, who, deployment_id)
    if row.live:
        raise Conflict(f"deployment #{row.number} is live and cannot be deleted: deploy another one to replace it")
    if row.status == "staged":
        discard(service, who, row.number)
        row = _row(service, who, deployment_id)
    return {"deployment": _present(row)}


def _row(service: Any, who: Caller, deployment_id: str) -> DeploymentRow:
    number = int(deployment_id) if deployment_id.isascii() and deployment_id.isdigit() else None
    row = service.reads.deployment(who, number) if number is not None and number < 2**62 else None
    if row is None:
        raise NotFound("Deployment not found")
    return row


def _ended(row: DeploymentRow) -> str:
    return "discarded" if row.status == "discarded" else "replaced by a later deployment"


def _present(row: DeploymentRow) -> dict[str, Any]:
    status = "data_ready" if row.live or row.status == "staged" else "deleted"
    return _answer(str(row.number), row.id, status, row.live, format_instant(row.at), row.token_changes)


def _seed(rows: list[DeploymentRow]) -> dict[str, Any]:
    """Forward's deployment 0: live until the workspace's first deployment is applied."""
    live = not any(row.live for row in rows)
    return _answer(SEED, None, "data_ready" if live else "deleted", live, None, [])


def _answer(
    number: str | None,
    deployment_id: str | None,
    status: str,
    live: bool,
    created_at: str | None,
    token_changes: list[dict[str, Any]],
    errors: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "id": number,
        "deployment_id": deployment_id,
        "status": status,
        "live": live,
        "created_at": created_at,
        "token_changes": token_changes,
        "errors": errors or [],
        "feedback": [{"resource": None, "level": "WARNING", "message": NOT_HOSTED}],
    }
