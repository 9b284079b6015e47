"""Heavy reads are admitted a few at a time; introspection and everything else pass straight by
(the figures under load are in bench/heavy_reads.py and docs/reliability.md)."""

from __future__ import annotations

import anyio
import pytest

from tokentrail.api.heavy import HeavyReadGate, heavy_concurrency, is_heavy


def _scope(path: str, query: bytes = b"", method: str = "GET") -> dict:
    return {"type": "http", "method": method, "path": path, "query_string": query, "headers": []}


@pytest.mark.parametrize(
    "path, query, method, heavy",
    [
        ("/v0/access/diff", b"from=2026-01-01", "GET", True),
        ("/v0/access", b"resource=events", "GET", True),
        ("/v0/audit", b"limit=1000", "GET", True),
        ("/v0/audit/verify", b"", "GET", True),
        ("/v0/tokens/x/history", b"", "GET", True),
        ("/v0/tokens", b"as_of=2026-01-01T00:00:00Z", "GET", True),
        ("/ui/audit/export.csv", b"", "GET", True),
        ("/v0/auth", b"token=p.x.y", "GET", False),
        ("/v0/tokens", b"", "GET", False),
        ("/v0/tokens", b"name=x", "POST", False),
        ("/v0/workspace", b"", "GET", False),
    ],
)
def test_what_counts_as_heavy(path: str, query: bytes, method: str, heavy: bool) -> None:
    assert is_heavy(_scope(path, query, method)) is heavy


def test_the_concurrency_setting() -> None:
    assert heavy_concurrency({}) == 2
    assert heavy_concurrency({"TOKENTRAIL_HEAVY_READS": "0"}) == 0
    assert heavy_concurrency({"TOKENTRAIL_HEAVY_READS": "5"}) == 5
    with pytest.raises(ValueError):
        heavy_concurrency({"TOKENTRAIL_HEAVY_READS": "-1"})


async def _no_body() -> dict:
    return {"type": "http.request", "body": b"", "more_body": False}


def test_at_most_two_heavy_reads_run_and_introspection_passes_them_by() -> None:
    running = 0
    most = 0
    release = anyio.Event()
    answered: list[str] = []

    async def app(scope, receive, send) -> None:  # noqa: ANN001
        nonlocal running, most
        if scope["path"] == "/v0/auth":
            answered.append("auth")
            return
        running += 1
        most = max(most, running)
        await release.wait()
        running -= 1
        answered.append("heavy")

    gate = HeavyReadGate(app, concurrency=2)

    async def main() -> None:
        async with anyio.create_task_group() as tasks:
            for _ in range(10):
                tasks.start_soon(gate, _scope("/v0/access/diff"), _no_body, None)
            await anyio.sleep(0.05)
            assert running == 2  # eight wait for a slot
            await gate(_scope("/v0/auth"), None, None)  # not held up by them
            assert answered == ["auth"]
            release.set()
        assert answered.count("heavy") == 10 and most == 2

    anyio.run(main)


def test_a_request_whose_body_never_comes_holds_no_slot() -> None:
    """Two connections announcing a body on GET /v0/audit/verify and never sending it held both
    slots before authentication even ran: every heavy read of every admin then waited for ever."""
    stalled = anyio.Event()  # never set: the announced body never arrives
    bodies: list[bytes] = []

    async def app(scope, receive, send) -> None:  # noqa: ANN001 - reads its body, as every route does
        message = await receive()
        bodies.append(message["body"])

    async def never() -> dict:
        await stalled.wait()
        return {"type": "http.disconnect"}

    async def trickled_body() -> dict:
        return {"type": "http.request", "body": b"x=1", "more_body": False}

    gate = HeavyReadGate(app, concurrency=2)

    async def main() -> None:
        async with anyio.create_task_group() as tasks:
            for _ in range(2):
                tasks.start_soon(gate, _scope("/v0/audit/verify"), never, None)
            await anyio.sleep(0.02)
            with anyio.fail_after(2):
                await gate(_scope("/v0/audit"), trickled_body, None)
            assert bodies == [b"x=1"]  # the body reached the app whole
            tasks.cancel_scope.cancel()

    anyio.run(main)
