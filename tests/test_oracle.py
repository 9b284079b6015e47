"""Point-in-time answers equal a brute-force replay of the events up to T.

Hypothesis generates random histories — creates, scope changes, renames, descriptions, refreshes
with and without grace, deletes, name reuse, JWTs and admin-token refreshes, expiries set, cleared
and capped by the workspace — over several
workspaces, with a controlled clock that sometimes stands still and sometimes goes backwards (as a
skewed writer's would), and every as-of, access, diff, history and exposure answer (scope by scope,
and through the JWTs signed with the admin token's values) is checked against the replay in
tests/oracle.py.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import caller_for
from tests.oracle import Replayed
from tokentrail.domain import clock
from tokentrail.domain.errors import LedgerError
from tokentrail.domain.exposure import contains
from tokentrail.domain.model import Token
from tokentrail.domain.policy import Caller
from tokentrail.projections.history import History
from tokentrail.service import Service

NAMES = ["a", "b", "c", "d"]
RESOURCES = [
    ("datasource", "ds0"),
    ("datasource", "ds1"),
    ("datasource", "ds0_quarantine"),
    ("pipe", "p0"),
    ("pipe", "p1"),
]
SCOPES = [
    "DATASOURCES:READ:ds0",
    "DATASOURCES:READ:ds0:x > 1",
    "DATASOURCES:READ:ds1:org = 'a'",
    "DATASOURCES:APPEND:ds0",
    "DATASOURCES:DROP:ds1",
    "PIPES:READ:p0",
    "PIPES:READ:p1:y = 2",
    "PIPES:DROP:p0",
    "WORKSPACE:READ_ALL",
    "DATASOURCES:CREATE",
    "TOKENS",
]
PERMISSIONS = {"datasource": ("READ", "APPEND", "DROP"), "pipe": ("READ", "DROP")}

op = st.one_of(
    st.tuples(
        st.just("create"),
        st.integers(0, 1),
        st.sampled_from(NAMES),
        st.lists(st.sampled_from(SCOPES), min_size=1, max_size=3),
    ),
    st.tuples(
        st.just("replace"),
        st.integers(0, 1),
        st.sampled_from(NAMES),
        st.lists(st.sampled_from(SCOPES), min_size=1, max_size=3),
    ),
    st.tuples(st.just("add"), st.integers(0, 1), st.sampled_from(NAMES), st.sampled_from(SCOPES)),
    st.tuples(st.just("remove"), st.integers(0, 1), st.sampled_from(NAMES), st.sampled_from(SCOPES)),
    st.tuples(st.just("rename"), st.integers(0, 1), st.sampled_from(NAMES), st.sampled_from(NAMES)),
    st.tuples(st.just("describe"), st.integers(0, 1), st.sampled_from(NAMES), st.sampled_from(["", "x", "y"])),
    st.tuples(st.just("refresh"), st.integers(0, 1), st.sampled_from(NAMES), st.sampled_from([0, 0, 5, 30])),
    st.tuples(st.just("delete"), st.integers(0, 1), st.sampled_from(NAMES), st.none()),
    st.tuples(
        st.just("jwt"),
        st.integers(0, 1),
        st.sampled_from(["PIPES:READ:p0", "DATASOURCES:READ:ds0:x > 2"]),
        st.sampled_from([10, 60, 600]),
    ),
    st.tuples(st.just("admin_refresh"), st.integers(0, 1), st.none(), st.sampled_from([0, 20])),
    # Expiry: set (seconds from now) or cleared on a token, created with one, and the workspace's cap.
    st.tuples(st.just("expire"), st.integers(0, 1), st.sampled_from(NAMES), st.sampled_from([None, 1, 2, 5, 30])),
    st.tuples(
        st.just("create_expiring"),
        st.integers(0, 1),
        st.sampled_from(NAMES),
        st.tuples(st.lists(st.sampled_from(SCOPES), min_size=1, max_size=2), st.sampled_from([1, 4, 10])),
    ),
    st.tuples(st.just("cap"), st.integers(0, 1), st.none(), st.sampled_from([None, 60, 120])),
)
steps = st.lists(st.tuples(op, st.sampled_from([0, 0, 1, 3, 7, 20, -4])), min_size=5, max_size=30)


class Clock:
    """Shared across examples so that time keeps moving on, apart from deliberate skews."""

    now = datetime(2026, 3, 1, tzinfo=UTC)


def _run(service: Service, history: list[Any]) -> list[str]:
    workspaces = []
    for _ in range(2):
        setup = service.command(
            lambda: service.ledger.setup_workspace(f"ws-{uuid.uuid4().hex[:10]}", "o@example.com", Caller.system())
        )
        workspaces.append((str(setup.workspace.id), caller_for(service, setup.tokens[0])))
    for (name, ws_index, a, b), step in history:
        Clock.now += timedelta(seconds=step)
        ws, admin = workspaces[ws_index]
        try:
            if name == "create":
                service.command(lambda: service.ledger.create_token(admin, a, b))
            elif name == "replace":
                service.command(lambda: service.ledger.update_token(admin, a, scopes=b))
            elif name == "add":
                service.command(lambda: service.ledger.update_token(admin, a, add=[b]))
            elif name == "remove":
                service.command(lambda: service.ledger.update_token(admin, a, remove=[b]))
            elif name == "rename":
                service.command(lambda: service.ledger.update_token(admin, a, name=b))
            elif name == "describe":
                service.command(lambda: service.ledger.update_token(admin, a, description=b))
            elif name == "refresh":
                service.command(lambda: service.ledger.refresh_token(admin, a, grace_seconds=b))
            elif name == "delete":
                service.command(lambda: service.ledger.delete_token(admin, a))
            elif name == "jwt":
                type_, resource, *filter_ = a.split(":", 3)[0:2] + [a.split(":", 3)[2]] + a.split(":", 3)[3:]
                scope: dict[str, Any] = {"type": f"{type_}:{resource}", "resource": filter_[0]}
                if len(filter_) > 1:
                    scope["filter"] = filter_[1]
                expires = int(clock.to_micros(Clock.now) / 1_000_000) + b
                service.command(lambda: service.ledger.issue_jwt(admin, "jwt", expires, [scope], None))
            elif name == "expire":
                expiry = None if b is None else int(clock.to_micros(Clock.now) / 1_000_000) + b
                service.command(lambda: service.ledger.update_token(admin, a, expiry=(expiry,)))
            elif name == "create_expiring":
                expiry = int(clock.to_micros(Clock.now) / 1_000_000) + b[1]
                service.command(lambda: service.ledger.create_token(admin, a, b[0], expires_at=expiry))
            elif name == "cap":
                service.command(lambda: service.ledger.configure_workspace(admin, b))
            elif name == "admin_refresh":
                service.command(lambda: service.ledger.refresh_token(admin, "admin token", grace_seconds=b))
                admin = caller_for(service, service.ledger.token_by_name(ws, "admin token"))
                workspaces[ws_index] = (ws, admin)
        except LedgerError:
            pass
    return [ws for ws, _ in workspaces]


def _instants(replayed: Replayed) -> list[int]:
    """Every effective time of the last 60 events and every expiry set, and the microsecond on
    either side of each."""
    times = sorted({at for _, at, _ in replayed.events})[-60:]
    expiries = {
        e.expires_at * 1_000_000
        for _, _, e in replayed.events
        if isinstance(e, Token.ExpirySet) and e.expires_at is not None
    }
    return sorted({t + d for t in set(times) | expiries for d in (-1, 0, 1)})


# CI runs a fixed set of examples (a red CI must mean a regression, not a lucky draw); elsewhere each
# run draws new histories. TOKENTRAIL_ORACLE_EXAMPLES=500 for a long hunt.
@settings(
    max_examples=int(os.environ.get("TOKENTRAIL_ORACLE_EXAMPLES", "20")),
    derandomize=os.environ.get("CI") == "true",
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(history=steps)
def test_point_in_time_answers_equal_a_replay(service: Service, history: list[Any]) -> None:
    clock.set_clock(lambda: Clock.now)
    try:
        workspace_ids = _run(service, history)
    finally:
        clock.set_clock(None)
    service.sync()
    replayed = Replayed.load(service)
    reads = History(service.read_engine)
    instants = _instants(replayed)
    for ws in workspace_ids:
        for at in instants:
            got = sorted((r.id, r.name, r.description, r.scopes) for r in reads.tokens_as_of(ws, at))
            assert got == replayed.tokens_as_of(ws, at), f"tokens as of {at}"
            for kind, resource in RESOURCES:
                for permission in PERMISSIONS[kind]:
                    assert reads.access(ws, resource, kind, permission, at) == replayed.access(
                        ws, resource, kind, permission, at
                    ), f"access {kind} {resource} {permission} at {at}"
        for start, end in zip(instants[::7], instants[3::7]):
            for kind, resource in RESOURCES:
                got = reads.access_diff(ws, start, end, resource, kind)
                want = _diff(replayed, ws, start, end, kind, resource)
                assert got == want, f"diff {kind} {resource} {start}..{end}"
            # A whole-workspace diff covers the resources some scope named in the window (ADMIN alone
            # names none): it must equal the per-resource diffs over exactly that set.
            known = replayed.known_resources(ws, start, end)
            assert reads.known_resources(ws, start, end) == known, f"resources named in {start}..{end}"
            union: dict[str, list[Any]] = {"gained": [], "lost": [], "changed": []}
            for kind, resource in sorted(known):
                for key, items in _diff(replayed, ws, start, end, kind, resource).items():
                    union[key] += items
            everything = reads.access_diff(ws, start, end)
            for key in union:
                assert sorted(map(repr, everything[key])) == sorted(map(repr, union[key])), f"whole diff {key}"
        _check_exposure(service, replayed, ws, instants)
        for token_id in {e.originator_id for _, _, e in replayed.events if getattr(e, "workspace_id", None) == ws}:
            got_history = [
                (e["position"], e["type"], e["scopes_before"], e["scopes_after"])
                for e in reads.token_history(str(token_id))
            ]
            want_history = replayed.history(str(token_id))
            if want_history:
                assert got_history == want_history


UNIVERSE = [(kind, resource, p) for kind, resource in RESOURCES for p in PERMISSIONS[kind]]


def _expand(entries: list[tuple[Any, list[tuple[int, int | None]]]], at: int) -> set[tuple[str, str, str, str, str]]:
    """An exposure answer at one instant, over the universe: wildcards become every match."""
    out = set()
    for reach, intervals in entries:
        if not any(contains(interval, at) for interval in intervals):
            continue
        for kind, resource, permission in UNIVERSE:
            if (
                reach.kind in ("*", kind)
                and reach.resource in ("*", resource)
                and reach.permission in ("*", permission)
            ):
                out.add((kind, resource, permission, reach.via, reach.filter))
    return out


def _check_exposure(service: Service, replayed: Replayed, ws: str, instants: list[int]) -> None:
    """Every token's exposure (intervals per scope, and per JWT signed with its values) says, at
    each instant, exactly what a replay of the events up to that instant grants, scope by scope."""
    who = dataclasses.replace(Caller.system(), workspace_id=ws)
    token_ids = {
        str(e.originator_id) for _, _, e in replayed.events if isinstance(e, Token.Created) and e.workspace_id == ws
    }
    answers = {token_id: service.reads.exposure(who, token_id) for token_id in token_ids}
    for at in instants[::5]:  # instants come in threes (t-1, t, t+1): every fifth mixes them
        state = replayed.state(at)
        for token_id, found in answers.items():
            mine, by_jwt = replayed.exposure_at(token_id, at, UNIVERSE, state)
            assert _expand(found.exposure, at) == mine, f"exposure of {token_id} at {at}"
            got_jwts = {j["id"]: _expand(j["exposure"], at) for j in found.jwts if _expand(j["exposure"], at)}
            assert got_jwts == {k: v for k, v in by_jwt.items() if v}, f"JWT exposure of {token_id} at {at}"


def _diff(replayed: Replayed, ws: str, start: int, end: int, kind: str, resource: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {"gained": [], "lost": [], "changed": []}
    for permission in PERMISSIONS[kind]:
        key = {"resource": resource, "kind": kind, "permission": permission}
        old = {(g["jwt"], g["token_id"]): g for g in replayed.access(ws, resource, kind, permission, start)}
        new = {(g["jwt"], g["token_id"]): g for g in replayed.access(ws, resource, kind, permission, end)}
        out["gained"] += [{**new[k], **key} for k in sorted(new.keys() - old.keys())]
        out["lost"] += [{**old[k], **key} for k in sorted(old.keys() - new.keys())]
        out["changed"] += [
            {"before": {**old[k], **key}, "after": {**new[k], **key}}
            for k in sorted(old.keys() & new.keys())
            if (old[k]["via"], old[k]["filter"]) != (new[k]["via"], new[k]["filter"])
        ]
    return out
