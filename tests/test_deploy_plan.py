"""Planning a deployment: from TOKEN lines and the live tokens to the steps that reconcile them."""

from __future__ import annotations

import itertools
import random

import pytest

from tokentrail.domain.datafiles import parse_project
from tokentrail.domain.deploy import (
    CreateToken,
    CurrentToken,
    DeleteToken,
    ModifyToken,
    Plan,
    desired_tokens,
    plan_deployment,
)
from tokentrail.domain.errors import DatafileError, NameTaken

PROJECT = {
    "datasources/events.datasource": (
        'SCHEMA >\n    `token` String\n\nTOKEN "tracker" APPEND\nTOKEN "read api token" READ\n'
    ),
    "datasources/users.datasource": "TOKEN 'read api token' READ\nTOKEN dashboard READ\n",
    "endpoints/top_events.pipe": (
        "NODE top\nSQL >\n    SELECT token FROM events\n\nTYPE endpoint\n"
        'TOKEN "read api token" READ\nTOKEN dashboard READ\n'
    ),
}

HAND_MADE = [
    CurrentToken("t-admin", "admin token", ("ADMIN",), "C", "default"),
    CurrentToken("t-ci", "ci", ("DATASOURCES:READ:events", "PIPES:READ:top_events"), "C", "custom"),
]

_ids = itertools.count(1)


def apply(plan: Plan, current: list[CurrentToken]) -> list[CurrentToken]:
    """What the ledger would hold after applying `plan`: enough to plan the next deployment."""
    live = {t.token_id: t for t in current}
    for step in plan.steps:
        if isinstance(step, CreateToken):
            token_id = f"t-{next(_ids)}"
            origin = step.origin["type"]
            live[token_id] = CurrentToken(token_id, step.name, step.scopes, origin, "datafile")
        elif isinstance(step, ModifyToken):
            old = live[step.token_id]
            scopes = tuple(s for s in old.scopes if s not in step.remove) + step.add
            assert sorted(scopes) == sorted(step.scopes)
            live[step.token_id] = CurrentToken(old.token_id, old.name, scopes, old.origin_type, old.kind)
        else:
            del live[step.token_id]
    return list(live.values())


def deploy(files: dict[str, str], current: list[CurrentToken]) -> tuple[Plan, list[CurrentToken]]:
    plan = plan_deployment(parse_project(files), current)
    return plan, apply(plan, current)


def test_a_first_deployment_creates_one_token_per_name_with_the_union_of_its_scopes() -> None:
    plan = plan_deployment(parse_project(PROJECT), HAND_MADE)
    assert plan.steps == (
        CreateToken(
            "dashboard",
            ("DATASOURCES:READ:users", "PIPES:READ:top_events"),
            {"type": "DS", "resource_id": "users"},
        ),
        CreateToken(
            "read api token",
            ("DATASOURCES:READ:events", "DATASOURCES:READ:users", "PIPES:READ:top_events"),
            {"type": "DS", "resource_id": "events"},
        ),
        CreateToken("tracker", ("DATASOURCES:APPEND:events",), {"type": "DS", "resource_id": "events"}),
    )


def test_a_token_declared_only_in_a_pipe_has_a_pipe_origin() -> None:
    [step] = plan_deployment(parse_project({"top.pipe": "TOKEN viewer READ"}), []).steps
    assert isinstance(step, CreateToken) and step.origin == {"type": "P", "resource_id": "top"}


def test_a_first_deployment_reports_token_changes_in_forwards_shape() -> None:
    plan = plan_deployment(parse_project(PROJECT), HAND_MADE)
    assert plan.token_changes[0] == {
        "token_name": "dashboard",
        "change_type": "new",
        "permission_changes": {
            "added_permissions": [
                {"resource_name": "users", "resource_type": "datasource", "permission": "READ"},
                {"resource_name": "top_events", "resource_type": "pipe", "permission": "READ"},
            ],
            "removed_permissions": [],
        },
    }
    names = [c["token_name"] for c in plan.token_changes]
    assert names == ["dashboard", "read api token", "tracker"]


def test_a_second_deployment_of_the_same_files_changes_nothing() -> None:
    _, live = deploy(PROJECT, HAND_MADE)
    plan, _ = deploy(PROJECT, live)
    assert plan.empty and plan.steps == () and plan.token_changes == []


def test_moving_a_line_within_its_file_changes_nothing() -> None:
    _, live = deploy(PROJECT, HAND_MADE)
    moved = dict(PROJECT)
    moved["datasources/users.datasource"] = "TOKEN dashboard READ\n\n# moved\nTOKEN 'read api token' READ\n"
    assert plan_deployment(parse_project(moved), live).empty


def test_renaming_a_token_line_deletes_the_old_token_and_creates_the_new_one() -> None:
    _, live = deploy(PROJECT, HAND_MADE)
    renamed = {path: text.replace("tracker", "ingest") for path, text in PROJECT.items()}
    plan = plan_deployment(parse_project(renamed), live)
    tracker = next(t for t in live if t.name == "tracker")
    assert plan.steps == (
        CreateToken("ingest", ("DATASOURCES:APPEND:events",), {"type": "DS", "resource_id": "events"}),
        DeleteToken(tracker.token_id, "tracker", ("DATASOURCES:APPEND:events",)),
    )
    assert [(c["token_name"], c["change_type"]) for c in plan.token_changes] == [
        ("ingest", "new"),
        ("tracker", "deleted"),
    ]


def test_moving_a_line_to_another_file_moves_the_scope() -> None:
    _, live = deploy(PROJECT, HAND_MADE)
    moved = dict(PROJECT)
    moved["datasources/events.datasource"] = 'TOKEN "read api token" READ\n'
    moved["datasources/users.datasource"] += "TOKEN tracker APPEND\n"
    plan = plan_deployment(parse_project(moved), live)
    tracker = next(t for t in live if t.name == "tracker")
    assert plan.steps == (
        ModifyToken(
            tracker.token_id,
            "tracker",
            scopes=("DATASOURCES:APPEND:users",),
            add=("DATASOURCES:APPEND:users",),
            remove=("DATASOURCES:APPEND:events",),
        ),
    )
    assert plan.token_changes == [
        {
            "token_name": "tracker",
            "change_type": "modified",
            "permission_changes": {
                "added_permissions": [_append_on("users")],
                "removed_permissions": [_append_on("events")],
            },
        }
    ]


def _append_on(datasource: str) -> dict[str, str]:
    return {"resource_name": datasource, "resource_type": "datasource", "permission": "APPEND"}


def test_removing_one_of_several_declarations_removes_only_its_scope() -> None:
    _, live = deploy(PROJECT, HAND_MADE)
    fewer = dict(PROJECT)
    fewer["endpoints/top_events.pipe"] = "TOKEN dashboard READ\n"
    [step] = plan_deployment(parse_project(fewer), live).steps
    assert isinstance(step, ModifyToken)
    assert (step.name, step.add, step.remove) == ("read api token", (), ("PIPES:READ:top_events",))


def test_a_datafile_token_declared_nowhere_any_more_is_deleted() -> None:
    _, live = deploy(PROJECT, HAND_MADE)
    only_tracker = {"datasources/events.datasource": "TOKEN tracker APPEND"}
    plan = plan_deployment(parse_project(only_tracker), live)
    assert [(type(s).__name__, s.name) for s in plan.steps] == [
        ("DeleteToken", "dashboard"),
        ("DeleteToken", "read api token"),
    ]
    assert plan.token_changes[0]["change_type"] == "deleted"
    assert plan.token_changes[0]["permission_changes"]["added_permissions"] == []
    assert len(plan.token_changes[0]["permission_changes"]["removed_permissions"]) == 2


def test_deleting_every_datafile_never_touches_hand_made_tokens() -> None:
    _, live = deploy(PROJECT, HAND_MADE)
    plan = plan_deployment([], live)
    assert {s.name for s in plan.steps} == {"dashboard", "read api token", "tracker"}
    assert all(isinstance(s, DeleteToken) for s in plan.steps)


def test_a_name_held_by_a_token_not_from_datafiles_is_refused_naming_its_line() -> None:
    files = {"datasources/events.datasource": 'DESCRIPTION x\nTOKEN "ci" READ\n'}
    with pytest.raises(NameTaken) as raised:
        plan_deployment(parse_project(files), HAND_MADE)
    assert '"ci"' in raised.value.message
    assert "datasources/events.datasource:2" in raised.value.message


def test_a_default_tokens_name_is_reserved_before_any_plan_naming_its_line() -> None:
    files = {"datasources/events.datasource": 'DESCRIPTION x\nTOKEN "admin token" READ\n'}
    with pytest.raises(DatafileError) as raised:
        parse_project(files)
    assert "reserved" in raised.value.message
    assert "datasources/events.datasource:2" in raised.value.message


def test_scopes_a_datafile_token_was_given_by_other_means_are_removed() -> None:
    held = ("DATASOURCES:READ:events:a > 1", "TOKENS", "DATASOURCES:READ:users")
    live = [CurrentToken("t-x", "reader", held, "DS", "datafile")]
    plan = plan_deployment(parse_project({"users.datasource": "TOKEN reader READ"}), live)
    [step] = plan.steps
    assert isinstance(step, ModifyToken)
    assert step.remove == ("DATASOURCES:READ:events:a > 1", "TOKENS") and step.add == ()
    removed = plan.token_changes[0]["permission_changes"]["removed_permissions"]
    assert removed == [
        {"resource_name": "events", "resource_type": "datasource", "permission": "READ"},
        {"resource_name": "", "resource_type": "workspace", "permission": "TOKENS"},
    ]


def test_the_plan_does_not_depend_on_the_order_of_its_inputs() -> None:
    _, live = deploy(PROJECT, HAND_MADE)
    changed = {path: text.replace("dashboard", "board") for path, text in PROJECT.items()}
    declarations = parse_project(changed)
    expected = plan_deployment(declarations, live)
    rng = random.Random(7)
    for _ in range(20):
        rng.shuffle(declarations)
        rng.shuffle(live)
        assert plan_deployment(declarations, live) == expected


def test_desired_tokens_keep_every_declaration_first_by_path_and_line() -> None:
    desired = desired_tokens(reversed(parse_project(PROJECT)))
    token = desired["read api token"]
    assert [d.location for d in token.declarations] == [
        "datasources/events.datasource:5",
        "datasources/users.datasource:1",
        "endpoints/top_events.pipe:6",
    ]
    assert token.origin == {"type": "DS", "resource_id": "events"}
