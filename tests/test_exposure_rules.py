"""The interval arithmetic and the reach of each scope that exposure answers are built on."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tokentrail.domain.exposure import Reach, contains, intersect, intersect_all, merge, reach
from tokentrail.domain.scopes import parse_scope

interval = st.integers(0, 60).flatmap(
    lambda start: st.tuples(st.just(start), st.one_of(st.none(), st.integers(start + 1, start + 30)))
)
intervals = st.lists(interval, max_size=8)


@given(intervals, intervals, st.integers(-1, 100))
def test_intersect_all_holds_exactly_the_instants_in_both(a, b, at) -> None:
    got = intersect_all(a, b)
    assert any(contains(i, at) for i in got) == (any(contains(i, at) for i in a) and any(contains(i, at) for i in b))
    assert got == merge(got)  # sorted, disjoint, not touching


@given(intervals, intervals)
def test_intersect_all_equals_the_pairwise_overlaps(a, b) -> None:
    pairs = [p for x in a for y in b if (p := intersect(x, y)) is not None]
    assert intersect_all(a, b) == merge(pairs)


@given(intervals, st.integers(-1, 100))
def test_merge_keeps_every_instant(a, at) -> None:
    merged = merge(a)
    assert any(contains(i, at) for i in merged) == any(contains(i, at) for i in a)
    assert all(x[1] is not None and x[1] < y[0] for x, y in zip(merged, merged[1:]))


def test_each_scope_reaches_what_grant_for_says() -> None:
    assert reach(parse_scope("ADMIN")) == [Reach("*", "*", "*", "ADMIN", "")]
    assert reach(parse_scope("WORKSPACE:READ_ALL")) == [Reach("*", "*", "READ", "WORKSPACE:READ_ALL", "")]
    assert reach(parse_scope("DATASOURCES:CREATE")) == [Reach("datasource", "*", "APPEND", "DATASOURCES:CREATE", "")]
    filtered = parse_scope("DATASOURCES:READ:events:country = 'ES'")
    assert reach(filtered) == [
        Reach("datasource", "events", "READ", str(filtered), "country = 'ES'"),
        Reach("datasource", "events_quarantine", "READ", str(filtered), "country = 'ES'"),
    ]
    assert reach(parse_scope("PIPES:DROP:top")) == [Reach("pipe", "top", "DROP", "PIPES:DROP:top", "")]
    assert reach(parse_scope("TOKENS")) == [] and reach(parse_scope("PIPES:CREATE")) == []
