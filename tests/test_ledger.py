"""The write side on real SQLite and PostgreSQL: use cases, rules, concurrency."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.helpers import FakeClock, caller_for, value_of
from tokentrail.api.setup import initialise
from tokentrail.domain.errors import Forbidden, InvalidInput, NameTaken, NotFound, Unauthenticated
from tokentrail.domain.policy import Caller
from tokentrail.service import Service


def test_a_workspace_starts_with_its_default_tokens(service: Service, workspace) -> None:
    setup, admin = workspace
    rows = service.queries.tokens(str(setup.workspace.id))
    assert [(r.name, r.scopes) for r in rows] == [
        ("admin token", ("ADMIN",)),
        ("admin owner@example.com", (f"ADMIN_USER:{setup.user.id}",)),
        ("create datasource token", ("DATASOURCES:CREATE",)),
    ]
    assert all(r.kind == "default" for r in rows)
    user_token = service.queries.token(setup.user.user_token_id)
    assert user_token.scopes == ("AUTH",) and user_token.workspace_id == str(setup.user.id)


def test_init_is_idempotent(service: Service) -> None:
    first = initialise(service, "analytics", "me@example.com")
    second = initialise(service, "analytics", "me@example.com")
    assert first["created"] and not second["created"]
    assert [(t["id"], t["token"]) for t in first["tokens"]] == [(t["id"], t["token"]) for t in second["tokens"]]
    assert {t["name"] for t in second["tokens"]} == {
        "admin token",
        "admin me@example.com",
        "create datasource token",
        "user token",
    }
    assert len(service.queries.all_workspaces()) == 1


def test_create_update_refresh_delete_and_reuse_a_name(service: Service, workspace) -> None:
    _, admin = workspace
    token = service.command(lambda: service.ledger.create_token(admin, "reader", ["DATASOURCES:READ:events:a>1"])).token
    assert service.queries.token(str(token.id)).scopes == ("DATASOURCES:READ:events:a > 1",)
    service.command(
        lambda: service.ledger.update_token(
            admin, "reader", scopes=["PIPES:READ:top"], name="top reader", description="for the dashboard"
        )
    )
    row = service.queries.token(str(token.id))
    assert (row.name, row.scopes, row.description) == ("top reader", ("PIPES:READ:top",), "for the dashboard")
    # The old name is free again; the new one is taken.
    service.command(lambda: service.ledger.create_token(admin, "reader", ["PIPES:READ:top"]))
    with pytest.raises(NameTaken, match='Auth token with name "top reader" already exists'):
        service.command(lambda: service.ledger.create_token(admin, "top reader", ["PIPES:READ:top"]))
    service.command(lambda: service.ledger.delete_token(admin, "top reader"))
    assert service.queries.token(str(token.id)).deleted
    again = service.command(lambda: service.ledger.create_token(admin, "top reader", ["PIPES:READ:x"])).token
    assert str(again.id) != str(token.id)
    with pytest.raises(NotFound):
        service.command(lambda: service.ledger.delete_token(admin, str(token.id)))


def test_refresh_changes_the_value_not_the_id_and_honours_the_grace_period(service: Service, workspace) -> None:
    fake = FakeClock()
    _, admin = workspace
    token = service.command(lambda: service.ledger.create_token(admin, "t", ["PIPES:READ:p"])).token
    old = value_of(service, token)
    service.command(lambda: service.ledger.refresh_token(admin, "t"))
    new = value_of(service, token)
    assert new != old and service.auth.authenticate(new).token_id == str(token.id)
    with pytest.raises(Unauthenticated):
        service.auth.authenticate(old)
    service.command(lambda: service.ledger.refresh_token(admin, "t", grace_seconds=60))
    newest = value_of(service, token)
    assert service.auth.authenticate(new).token_id == str(token.id)  # inside the grace window
    fake.advance(61)
    with pytest.raises(Unauthenticated):
        service.auth.authenticate(new)
    assert service.auth.authenticate(newest).token_id == str(token.id)


def test_a_token_that_manages_no_tokens_cannot_refresh_itself_or_others(service: Service, workspace) -> None:
    """As on Tinybird (403): otherwise a leaked value could rotate itself out of an admin's reach."""
    _, admin = workspace
    a = service.command(lambda: service.ledger.create_token(admin, "a", ["DATASOURCES:CREATE"])).token
    service.command(lambda: service.ledger.create_token(admin, "b", ["PIPES:READ:p"]))
    as_a = caller_for(service, a)
    before = service.ledger.recorder.max_notification_id()
    for ref in ("a", "b"):
        with pytest.raises(Forbidden):
            service.command(lambda: service.ledger.refresh_token(as_a, ref))
    assert service.ledger.recorder.max_notification_id() == before


def test_a_token_that_manages_none_cannot_probe_which_tokens_exist(service: Service, workspace) -> None:
    _, admin = workspace
    reader = service.command(lambda: service.ledger.create_token(admin, "reader", ["PIPES:READ:p"])).token
    service.command(lambda: service.ledger.create_token(admin, "secret name", ["PIPES:READ:p"]))
    as_reader = caller_for(service, reader)
    answers = set()
    for ref in ("secret name", "no such name", "3f1c2a9e-0000-4000-8000-000000000000"):
        for change in (
            lambda: service.ledger.delete_token(as_reader, ref),
            lambda: service.ledger.refresh_token(as_reader, ref),
            lambda: service.ledger.update_token(as_reader, ref, description="x"),
        ):
            with pytest.raises(Forbidden) as refused:
                service.command(change)
            answers.add((type(refused.value), str(refused.value)))
    assert len(answers) == 1, answers


def test_control_characters_are_refused_in_emails_and_origins(service: Service, workspace) -> None:
    _, admin = workspace
    with pytest.raises(InvalidInput):
        service.command(lambda: service.ledger.setup_workspace("ws2", "o\x00wner@example.com", Caller.system()))
    with pytest.raises(InvalidInput, match="control characters"):
        service.command(
            lambda: service.ledger.create_token(
                admin, "t", ["PIPES:READ:p"], origin={"type": "P", "resource_id": "p\nx"}
            )
        )


def test_tokens_scope_cannot_escalate(service: Service, workspace) -> None:
    _, admin = workspace
    manager = service.command(lambda: service.ledger.create_token(admin, "manager", ["TOKENS"])).token
    as_manager = caller_for(service, manager)
    with pytest.raises(Forbidden, match="cannot grant ADMIN"):
        service.command(lambda: service.ledger.create_token(as_manager, "root", ["ADMIN"]))
    with pytest.raises(Forbidden):
        service.command(lambda: service.ledger.update_token(as_manager, "manager", add=["ADMIN"]))
    with pytest.raises(Forbidden):
        service.command(lambda: service.ledger.refresh_token(as_manager, "admin token"))
    with pytest.raises(InvalidInput, match="internal"):
        service.command(lambda: service.ledger.create_token(admin, "x", ["AUTH"]))
    with pytest.raises(InvalidInput, match="internal"):
        service.command(lambda: service.ledger.create_token(admin, "x", ["ADMIN_USER:someone"]))
    # What TOKENS may do, it does.
    service.command(lambda: service.ledger.create_token(as_manager, "reader", ["DATASOURCES:READ:e"]))


def test_default_tokens_can_be_refreshed_but_not_deleted_or_changed(service: Service, workspace) -> None:
    _, admin = workspace
    with pytest.raises(Forbidden):
        service.command(lambda: service.ledger.delete_token(admin, "create datasource token"))
    with pytest.raises(Forbidden):
        service.command(lambda: service.ledger.update_token(admin, "create datasource token", add=["PIPES:READ:x"]))
    service.command(lambda: service.ledger.refresh_token(admin, "create datasource token"))


def test_a_token_never_reaches_another_workspace(service: Service, workspace) -> None:
    setup, admin = workspace
    other = service.command(lambda: service.ledger.setup_workspace("other", "x@example.com", Caller.system()))
    other_admin = caller_for(service, other.tokens[0])
    target = service.command(lambda: service.ledger.create_token(admin, "secret", ["PIPES:READ:p"])).token
    for ref in (str(target.id), "secret", value_of(service, target)):
        for act in (
            lambda: service.ledger.delete_token(other_admin, ref),
            lambda: service.ledger.refresh_token(other_admin, ref),
            lambda: service.ledger.update_token(other_admin, ref, add=["PIPES:READ:q"]),
        ):
            with pytest.raises(NotFound):
                service.command(act)
    assert not service.queries.token(str(target.id)).deleted


def test_bad_input_writes_nothing(service: Service, workspace) -> None:
    _, admin = workspace
    head = service.ledger.recorder.max_notification_id()
    for scopes in (["FOO:BAR"], [], ["DATASOURCES:READ:e:(select 1)=1"], ["PIPES:READ:p"] * 0):
        with pytest.raises(InvalidInput):
            service.command(lambda: service.ledger.create_token(admin, "n", scopes))
    for name in ("", " ", "x" * 300, "a\nb", "p.looks.like.value", "6b1bef5c-79a7-4199-8265-26ff49ae0b99"):
        with pytest.raises(InvalidInput):
            service.command(lambda: service.ledger.create_token(admin, name, ["PIPES:READ:p"]))
    with pytest.raises(InvalidInput):
        service.command(lambda: service.ledger.refresh_token(admin, "admin token", grace_seconds=-1))
    assert service.ledger.recorder.max_notification_id() == head


def _second_service(service: Service, tmp_path: Path) -> Service:
    return Service(service.database.url, data=tmp_path, environ=service.environ)


def test_concurrent_writers_on_one_token_lose_no_update(service: Service, workspace, tmp_path: Path) -> None:
    _, admin = workspace
    token = service.command(lambda: service.ledger.create_token(admin, "shared", ["PIPES:READ:p0"])).token
    services = [service] + [_second_service(service, tmp_path) for _ in range(3)]
    barrier = threading.Barrier(len(services))

    def add(i: int) -> None:
        s = services[i]
        barrier.wait()
        for j in range(5):
            s.command(lambda: s.ledger.update_token(admin, str(token.id), add=[f"PIPES:READ:p{i}_{j}"]))

    with ThreadPoolExecutor(len(services)) as pool:
        list(pool.map(add, range(len(services))))
    service.sync()
    scopes = set(service.queries.token(str(token.id)).scopes)
    assert scopes == {"PIPES:READ:p0"} | {f"PIPES:READ:p{i}_{j}" for i in range(len(services)) for j in range(5)}
    for s in services[1:]:
        s.close()


def test_concurrent_creates_of_one_name_make_one_token(service: Service, workspace, tmp_path: Path) -> None:
    setup, admin = workspace
    services = [service] + [_second_service(service, tmp_path) for _ in range(3)]
    barrier = threading.Barrier(len(services))
    outcomes: list[str] = []

    def create(i: int) -> None:
        s = services[i]
        barrier.wait()
        try:
            s.command(lambda: s.ledger.create_token(admin, "unique", [f"PIPES:READ:p{i}"]))
            outcomes.append("created")
        except NameTaken:
            outcomes.append("taken")

    with ThreadPoolExecutor(len(services)) as pool:
        list(pool.map(create, range(len(services))))
    service.sync()
    assert sorted(outcomes) == ["created"] + ["taken"] * (len(services) - 1)
    names = [r.name for r in service.queries.tokens(str(setup.workspace.id))]
    assert names.count("unique") == 1
    for s in services[1:]:
        s.close()
