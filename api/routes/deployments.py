"""`POST /v0/deployments`: the datafiles of a project in, Forward's deployment shape out."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Request

from tokentrail.api.deps import caller, get_service, params, read_body
from tokentrail.api.schemas import query_param, responses
from tokentrail.api.wire import Params
from tokentrail.domain.errors import InvalidInput
from tokentrail.domain.policy import Caller
from tokentrail.projections.deployments import deploy

router = APIRouter(tags=["deployments"])
MAX_FILES = 10_000
# Forward's multipart parts that are not files of this project: `context://` (its CLI version) and
# `data_project_vendored://` (files vendored from other workspaces, whose tokens are not ours).
FORWARD_CONTEXT_FIELDS = frozenset({"context://", "data_project_vendored://"})
_FILES = {"type": "object", "additionalProperties": {"type": "string"}}
_DEPLOYED = {
    "type": "object",
    "required": ["result", "deployment"],
    "properties": {
        "result": {"type": "string", "enum": ["success", "check", "no_changes"]},
        "deployment": {
            "type": "object",
            "required": ["id", "status", "token_changes"],
            "properties": {
                "id": {"type": ["string", "null"]},
                "status": {"type": "string"},
                "token_changes": {"type": "array"},
            },
        },
    },
}


@router.post(
    "/v0/deployments",
    summary="Reconcile the datafile tokens with a project's .datasource/.pipe files",
    description="Send the files as multipart/form-data (one part per file, named by its path) or as "
    "a JSON object `{path: content}`. `check=true` only plans.",
    response_model=None,
    openapi_extra={
        "parameters": [query_param("check", "`true` only plans: nothing is written")],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _FILES}, "multipart/form-data": {"schema": _FILES}},
        },
    },
    responses=responses(_DEPLOYED, 400, 403, 409, 413),
)
async def create_deployment(
    request: Request, who: Caller = Depends(caller), p: Params = Depends(params), body: bytes = Depends(read_body)
) -> dict[str, Any]:
    files = await _files(request, body)
    check = (p.get("check") or "").lower() in ("1", "true", "yes")
    from starlette.concurrency import run_in_threadpool

    result = await run_in_threadpool(deploy, get_service(request), who, files, check)
    outcome = "no_changes" if result.plan.empty else ("check" if check else "success")
    return {
        "result": outcome,
        "deployment": {
            "id": result.deployment_id,
            "status": "data_ready" if result.deployment_id else outcome,
            "token_changes": result.plan.token_changes,
        },
    }


async def _files(request: Request, body: bytes) -> dict[str, str]:
    content_type = request.headers.get("content-type", "").lower()
    files: dict[str, str] = {}
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=MAX_FILES, max_fields=MAX_FILES)
        for field, value in form.multi_items():
            if field in FORWARD_CONTEXT_FIELDS:
                continue  # not a file of this project
            if hasattr(value, "read"):
                path = value.filename or field
                raw = await value.read()
            else:
                path, raw = field, value.encode()
            if path in files:
                raise InvalidInput(f"{path}: sent twice")
            files[path] = _text(path, raw)
        if not form:
            # Forward always sends its context part, even for an empty project: a body without any
            # part is malformed, and must not read as "no TOKEN lines any more" (delete them all).
            raise InvalidInput("the multipart body holds no files")
        return files
    try:
        # JSON is UTF-8 (RFC 8259): no UTF-16/32 guessing, and one value per path.
        data = json.loads((body or b"null").decode("utf-8"), object_pairs_hook=_unique_paths)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidInput("send the files as multipart/form-data or a JSON object {path: content}") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise InvalidInput("the JSON body must be an object {path: content} of strings")
    if len(data) > MAX_FILES:
        raise InvalidInput(f"at most {MAX_FILES} files")
    return data


def _unique_paths(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise InvalidInput(f"{key}: sent twice")
        out[key] = value
    return out


def _text(path: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"{path}: not UTF-8 text") from None
