"""Marshmallow schemas for every wire shape: what goes out (dump) and what comes in (load)."""

from __future__ import annotations

from typing import Any

from marshmallow import (
    EXCLUDE,
    RAISE,
    Schema,
    ValidationError,
    fields,
    validate,
    validates_schema,
)

from tokentrail.domain.errors import InvalidInput


class ErrorSchema(Schema):
    error = fields.String(required=True)


class ScopeSchema(Schema):
    type = fields.String(required=True)
    resource = fields.String()
    filter = fields.String()


class OriginSchema(Schema):
    type = fields.String(required=True, validate=validate.OneOf(["C", "DS", "P"]))
    resource_id = fields.String()


class TokenSchema(Schema):
    """Tinybird's token object. `token` is absent when the caller may not see the value."""

    id = fields.String(required=True)
    token = fields.String()
    name = fields.String(required=True)
    description = fields.String(required=True)
    scopes = fields.List(fields.Nested(ScopeSchema), required=True)
    origin = fields.Nested(OriginSchema, required=True)
    host = fields.String(allow_none=True, required=True)
    expires_at = fields.String(
        allow_none=True,
        required=True,
        metadata={"description": "When the token stops authenticating (ISO 8601, UTC); null: never"},
    )
    last_used_at = fields.String(
        allow_none=True,
        required=True,
        metadata={"description": "When one of its values last authenticated (at most a minute late); null: never"},
    )


class TokenListSchema(Schema):
    tokens = fields.List(fields.Nested(TokenSchema), required=True)


class WorkspaceSchema(Schema):
    id = fields.String(required=True)
    name = fields.String(required=True)
    user_email = fields.String(required=True)
    user_id = fields.String(required=True)
    scope = fields.String(required=True)


class NewWorkspaceSchema(WorkspaceSchema):
    token = fields.String(required=True)
    tokens = fields.List(fields.Nested(TokenSchema), required=True)


class WorkspaceListSchema(Schema):
    workspaces = fields.List(fields.Nested(WorkspaceSchema), required=True)


class JwtScopeSchema(Schema):
    class Meta:
        unknown = RAISE

    type = fields.String(required=True, validate=validate.OneOf(["PIPES:READ", "DATASOURCES:READ"]))
    resource = fields.String(required=True, validate=validate.Length(min=1, max=255))
    fixed_params = fields.Dict(keys=fields.String(validate=validate.Length(max=255)))
    filter = fields.String(validate=validate.Length(max=2048))

    @validates_schema
    def _fixed_params_are_plain(self, data: dict[str, Any], **_: Any) -> None:
        params = data.get("fixed_params") or {}
        if len(params) > 64:
            raise ValidationError("at most 64 fixed_params", "fixed_params")
        for key, value in params.items():
            if not isinstance(value, (str, int, float, bool)) or (isinstance(value, str) and len(value) > 1024):
                raise ValidationError(f"fixed_params.{key} must be a string, number or boolean", "fixed_params")


class LimitsSchema(Schema):
    class Meta:
        unknown = RAISE

    rps = fields.Integer(required=True, strict=True, validate=validate.Range(min=1, max=1_000_000))


class JwtRequestSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    scopes = fields.List(fields.Nested(JwtScopeSchema), required=True, validate=validate.Length(min=1, max=100))
    limits = fields.Nested(LimitsSchema)


class JwtResponseSchema(Schema):
    id = fields.String(required=True)
    token = fields.String(required=True)
    name = fields.String(required=True)
    expiration_time = fields.Integer(required=True)
    scopes = fields.List(fields.Dict(), required=True)
    limits = fields.Dict()


class OkSchema(Schema):
    ok = fields.Boolean(required=True)


class RegionsSchema(Schema):
    regions = fields.List(fields.Dict(), required=True)


class IntrospectionSchema(Schema):
    valid = fields.Boolean(required=True)
    workspace_id = fields.String(allow_none=True)
    token_id = fields.String(allow_none=True)
    name = fields.String(allow_none=True)
    jwt = fields.Boolean()
    allowed = fields.Boolean(allow_none=True)
    via = fields.String(allow_none=True)
    filter = fields.String(allow_none=True)


def load(schema: Schema, data: Any) -> Any:
    """Validate input with a schema; a refusal is one readable InvalidInput."""
    try:
        return schema.load(data)
    except ValidationError as error:
        raise InvalidInput(f"invalid body: {_flatten(error.messages)}") from None


def _flatten(messages: Any, prefix: str = "") -> str:
    if isinstance(messages, dict):
        return "; ".join(_flatten(v, f"{prefix}{k}.") for k, v in messages.items())
    if isinstance(messages, list):
        return ", ".join(
            _flatten(m, prefix) if not isinstance(m, str) else f"{prefix.rstrip('.')}: {m}" for m in messages
        )
    return f"{prefix.rstrip('.')}: {messages}"


# ---------------------------------------------------------------------------------------------
# OpenAPI. The Tinybird routes read their parameters from the raw query string (see api/wire.py),
# so FastAPI cannot see them; these helpers declare them, and the answers, from the schemas above.

ERROR_DESCRIPTIONS = {
    400: "Bad input; nothing was written",
    403: "No valid token, or the token may not do this",
    404: "Unknown token (a token of another workspace is unknown too)",
    405: "Wrong method",
    409: "A concurrent change won and the retries did not get through; try again",
    413: "Request body too large",
    503: "The database is unreachable or did not answer in time; nothing was written (see Retry-After)",
}


def json_schema(schema: Schema) -> dict[str, Any]:
    """A JSON Schema (OpenAPI 3.1) for a marshmallow schema."""
    properties = {name: _field_schema(field) for name, field in schema.fields.items()}
    required = [name for name, field in schema.fields.items() if field.required]
    out: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        out["required"] = required
    return out


def _field_schema(field: fields.Field) -> dict[str, Any]:
    out: dict[str, Any]
    if isinstance(field, fields.Nested):
        nested = field.schema
        out = json_schema(nested)
    elif isinstance(field, fields.List):
        out = {"type": "array", "items": _field_schema(field.inner)}
    elif isinstance(field, fields.Dict):
        out = {"type": "object"}
    elif isinstance(field, fields.Boolean):
        out = {"type": "boolean"}
    elif isinstance(field, fields.Integer):
        out = {"type": "integer"}
    elif isinstance(field, fields.Number):
        out = {"type": "number"}
    else:
        out = {"type": "string"}
    for validator in field.validators:
        if isinstance(validator, validate.OneOf):
            out["enum"] = list(validator.choices)
    if field.allow_none:
        out["type"] = [out["type"], "null"]
    return out


def query_param(name: str, description: str, *, required: bool = False, **schema: Any) -> dict[str, Any]:
    """An OpenAPI query parameter; `many=True` for a repeated one (`scope=…&scope=…`)."""
    many = schema.pop("many", False)
    item = {"type": "string", **schema}
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": {"type": "array", "items": item} if many else item,
        **({"style": "form", "explode": True} if many else {}),
    }


def path_param(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": {"type": "string"}}


def form_body(*params: dict[str, Any]) -> dict[str, Any]:
    """The same parameters as a form-encoded body (Tinybird's CLIs send one without Content-Type)."""
    return {
        "required": False,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {"type": "object", "properties": {p["name"]: p["schema"] for p in params}}
            }
        },
    }


def responses(ok: Schema | dict[str, Any] | None, *errors: int, ok_description: str = "OK") -> dict[int | str, Any]:
    """The documented answers of a route: the 200 shape and each error as `{"error": …}`."""
    out: dict[int | str, Any] = {}
    if ok is not None:
        shape = json_schema(ok) if isinstance(ok, Schema) else ok
        out[200] = {"description": ok_description, "content": {"application/json": {"schema": shape}}}
    error = json_schema(ErrorSchema())
    for status in errors:
        out[status] = {"description": ERROR_DESCRIPTIONS[status], "content": {"application/json": {"schema": error}}}
    return out
