"""Read-model tables. Times are integer microseconds since the Unix epoch (`at` columns are the
ledger's effective time: never decreasing in log order, so "as of T" is always a prefix of the log).
Alembic migrations in `migrations/` create exactly these tables.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)

metadata = MetaData()

# One row per projection: the last log position applied, with the chain head and effective time.
tracking = Table(
    "tt_tracking",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("position", BigInteger, nullable=False),
    Column("at", BigInteger, nullable=False),
    Column("head", String(64), nullable=False),
)

workspaces = Table(
    "tt_workspaces",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", Text, nullable=False),
    Column("owner_email", Text, nullable=False),
    Column("owner_user_id", String(36), nullable=False, index=True),
    Column("admin_token_id", String(36), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("position", BigInteger, nullable=False),
)

users = Table(
    "tt_users",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("email", Text, nullable=False),
    Column("user_token_id", String(36), nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

# The current token table. `generation` is the nonce inside the value: worthless without the key.
tokens = Table(
    "tt_tokens",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("workspace_id", String(36), nullable=False),
    Column("name", Text, nullable=False),
    Column("description", Text, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("origin_type", String(4), nullable=False),
    Column("origin_resource_id", Text),
    Column("scopes", Text, nullable=False),  # JSON list of canonical scope strings
    Column("generation", String(64), nullable=False),
    Column("previous_generation", String(64)),
    Column("previous_valid_until", BigInteger, nullable=False),
    # JSON object generation -> valid until (µs) of the generations still in grace at the last
    # refresh: each refreshed-out value keeps its own window (previous_* only hold the latest).
    Column("grace", Text, nullable=False, server_default="{}"),
    Column("created_at", BigInteger, nullable=False),
    Column("created_position", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("deleted", Boolean, nullable=False),
    Column("deleted_at", BigInteger),
    Column("version", Integer, nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("expires_at", BigInteger),  # µs: stops authenticating then (NULL: never)
    Index("ix_tt_tokens_workspace_name", "workspace_id", "deleted", "name"),
    # The token list's keys in order (and its pages after a cursor), from the index alone.
    Index("ix_tt_tokens_workspace_created", "workspace_id", "deleted", "created_position", "id", "position"),
)

# Temporal: one row per state of a token while it existed (closed by the next event or delete).
token_versions = Table(
    "tt_token_versions",
    metadata,
    Column("token_id", String(36), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("workspace_id", String(36), nullable=False),
    Column("name", Text, nullable=False),
    Column("description", Text, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("origin_type", String(4), nullable=False),
    Column("origin_resource_id", Text),
    Column("scopes", Text, nullable=False),
    Column("valid_from", BigInteger, nullable=False),
    Column("valid_to", BigInteger),
    Column("from_position", BigInteger, nullable=False),
    Column("to_position", BigInteger),
    # The expiry in force during this version: the token is alive on [valid_from, min(valid_to, expires_at)).
    Column("expires_at", BigInteger),
    Index("ix_tt_token_versions_asof", "workspace_id", "valid_from", "valid_to"),
)

# Temporal: one row per (token, scope) interval, with the resource and filter it concerns.
scope_grants = Table(
    "tt_scope_grants",
    metadata,
    Column("token_id", String(36), primary_key=True),
    Column("scope", Text, primary_key=True),
    Column("from_position", BigInteger, primary_key=True),
    Column("workspace_id", String(36), nullable=False),
    Column("type", String(32), nullable=False),
    Column("kind", String(16)),  # datasource / pipe / user, or NULL for workspace-wide scopes
    Column("resource", Text),
    Column("permission", String(8)),
    Column("filter", Text, nullable=False),
    Column("valid_from", BigInteger, nullable=False),
    Column("valid_to", BigInteger),
    Column("to_position", BigInteger),
    # The token's expiry while this row was open (a change of expiry closes and reopens the rows):
    # the scope is held on [valid_from, min(valid_to, expires_at)).
    Column("expires_at", BigInteger),
    Index("ix_tt_scope_grants_resource", "workspace_id", "resource", "valid_from"),
    Index("ix_tt_scope_grants_wide", "workspace_id", "kind", "valid_from"),
)

# Temporal: when each generation (value) of a token was accepted, grace windows included.
generations = Table(
    "tt_generations",
    metadata,
    Column("token_id", String(36), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("workspace_id", String(36), nullable=False),
    Column("valid_from", BigInteger, nullable=False),
    Column("valid_to", BigInteger),
    Column("grace_seconds", Integer, nullable=False),
)

jwts = Table(
    "tt_jwts",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("workspace_id", String(36), nullable=False),
    Column("name", Text, nullable=False),
    Column("scopes", Text, nullable=False),  # JSON list of the JWT's scope objects
    Column("limits", Text, nullable=False),
    Column("issued_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("admin_token_id", String(36), nullable=False),
    Column("admin_generation", String(64), nullable=False),
    Column("invalidated_at", BigInteger),
    Column("position", BigInteger, nullable=False),
    Index("ix_tt_jwts_workspace", "workspace_id", "issued_at"),
    Index("ix_tt_jwts_admin", "admin_token_id"),
)

deployments = Table(
    "tt_deployments",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("workspace_id", String(36), nullable=False),
    Column("at", BigInteger, nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("actor_token_id", String(36)),
    Column("token_changes", Text, nullable=False),
    Column("files", Text, nullable=False),
    # Its number in the workspace (Forward's deployment id), and staged | applied | discarded;
    # `updated_at`: when it was applied or discarded. The live one is the applied one numbered last.
    Column("number", BigInteger),
    Column("status", String(16), nullable=False, server_default="applied"),
    Column("updated_at", BigInteger),
    Index("ix_tt_deployments_workspace", "workspace_id", "at"),
    Index("ix_tt_deployments_number", "workspace_id", "number", unique=True),
)

# One row per stored event, in log order: the audit history and the hash chain.
audit = Table(
    "tt_audit",
    metadata,
    # On SQLite the rowid itself (INTEGER PRIMARY KEY): no second B-tree for the key.
    Column("position", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False),
    Column("at", BigInteger, nullable=False),
    Column("recorded_at", BigInteger, nullable=False),
    Column("type", String(48), nullable=False),
    Column("aggregate", String(24), nullable=False),
    Column("visible", Boolean, nullable=False),
    Column("workspace_id", String(36)),
    Column("token_id", String(36)),
    Column("token_name", Text),
    Column("actor_token_id", String(36)),
    Column("actor_name", Text),
    Column("request_id", String(64)),
    Column("origin", String(16)),
    Column("deployment_id", String(36)),
    Column("scopes_before", Text),
    Column("scopes_after", Text),
    Column("details", Text),
    Column("hash", String(64), nullable=False),
    # Where the change came from, as the server saw it, and what the client claimed about itself
    # (NULL for events written before these were recorded).
    Column("client_address", String(64)),
    Column("user_agent", Text),
    Column("claimed_origin", Text),
    Column("claimed_request_id", Text),
    Column("revocation_id", String(36)),  # the bulk revocation a deletion belongs to
    Index("ix_tt_audit_workspace", "workspace_id", "position"),
    Index("ix_tt_audit_token", "token_id", "position"),
    Index("ix_tt_audit_at", "workspace_id", "at"),
    # Partial: almost every row has neither (a read's `column = value` implies NOT NULL).
    Index(
        "ix_tt_audit_deployment",
        "deployment_id",
        sqlite_where=text("deployment_id IS NOT NULL"),
        postgresql_where=text("deployment_id IS NOT NULL"),
    ),
    Index("ix_tt_audit_actor", "actor_token_id"),
    Index(
        "ix_tt_audit_revocation",
        "revocation_id",
        sqlite_where=text("revocation_id IS NOT NULL"),
        postgresql_where=text("revocation_id IS NOT NULL"),
    ),
)

# Which datasources/pipes each audit event concerns (through the scopes before or after it).
audit_resources = Table(
    "tt_audit_resources",
    metadata,
    Column("position", BigInteger, primary_key=True, autoincrement=False),
    Column("resource", String(255), primary_key=True),
    Column("workspace_id", String(36), nullable=False),
    Index("ix_tt_audit_resources_lookup", "workspace_id", "resource", "position"),
)

# The console's server-side sessions. Not projected from the log (so `rebuild` leaves it alone):
# written by sign-in, read and touched by every console request, deleted by sign-out. Keyed by the
# SHA-256 of the random session id the browser holds; no session id, token value or generation is
# stored, only the signing token's id and a hash of the generation it was opened with.
console_sessions = Table(
    "tt_console_sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("token_id", String(36), nullable=False),
    Column("generation_hash", String(64), nullable=False),
    Column("workspace_id", String(36), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("last_seen_at", BigInteger, nullable=False),
    Index("ix_tt_console_sessions_last_seen", "last_seen_at"),
)

# Last use of each token: when a value of it last authenticated (µs). Not projected from the log
# (usage is not a change to the token), so `rebuild` neither drops nor rebuilds it: the servers
# write it in batches, merging with max() so several servers sharing the database agree.
token_usage = Table(
    "tt_token_usage",
    metadata,
    Column("token_id", String(36), primary_key=True),
    Column("last_used_at", BigInteger, nullable=False),
)

# Where each audit sink (TOKENTRAIL_AUDIT_SINK) has delivered up to: the last log position the sink
# acknowledged. Not projected from the log (a `rebuild` leaves it alone): after a restart, delivery
# resumes after `position`. `name` is derived from the sink's target (never its credentials), and
# the deliverer records its state here so that every server's /readyz and /metrics can show it.
audit_sinks = Table(
    "tt_audit_sinks",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("target", Text, nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("delivered_at", BigInteger),
    Column("deliverer", Text),
    Column("failing_since", BigInteger),
    Column("last_error", Text),
)

# Facts about the installation, not derived from the log (never rebuilt or dropped): the
# fingerprint of the server key that signs token values (`key_fingerprint`), never the key.
meta = Table(
    "tt_meta",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

READ_MODEL_TABLES = (
    workspaces,
    users,
    tokens,
    token_versions,
    scope_grants,
    generations,
    jwts,
    deployments,
    audit,
    audit_resources,
)
