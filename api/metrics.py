"""Prometheus metrics for one app: requests by route template, projection lag, auth cache,
events written and revocation visibility.

Each app has its own `CollectorRegistry` (tests build many apps in one process). Requests are
counted by a pure ASGI middleware that labels them with the matched route's template, never the
path (a path can hold a token value). Everything the ledger counts itself (auth cache, events
written, revocation visibility) stays a plain number in the ledger and is read here only when
`/metrics` is scraped, so the hot path pays nothing for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.routing import BaseRoute, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokentrail.logs import access_log, log_request
from tokentrail.service import Service
from tokentrail.sinks import AuditSink

log = logging.getLogger("tokentrail.metrics")

UNMATCHED = "(unmatched)"
# Seconds: /v0/auth answers in well under a millisecond; heavy reads take seconds.
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    """The registry of one app, and the request metrics the middleware updates."""

    def __init__(self, service: Service, sink: AuditSink | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "tokentrail_requests",
            "HTTP requests answered, by route template, method and status.",
            ("route", "method", "status"),
            registry=self.registry,
        )
        self.duration = Histogram(
            "tokentrail_request_duration_seconds",
            "Time to answer an HTTP request, by route template.",
            ("route", "method"),
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(SystemCollector(service))
        if sink is not None:
            self.registry.register(SinkCollector(sink))
        # Label children by key: `.labels()` costs more than the increment itself.
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._timers: dict[tuple[str, str], Any] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        counter = self._counters.get((route, method, status))
        if counter is None:
            counter = self._counters[(route, method, status)] = self.requests.labels(route, method, str(status))
        counter.inc()
        timer = self._timers.get((route, method))
        if timer is None:
            timer = self._timers[(route, method)] = self.duration.labels(route, method)
        timer.observe(seconds)

    def render(self) -> bytes:
        """The text exposition (runs the collectors: call off the event loop, it reads the store)."""
        return generate_latest(self.registry)


class SystemCollector(Collector):
    """Reads the ledger's own counts at scrape time."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def describe(self) -> list[Metric]:
        return []  # families depend on the store's state: do not run a scrape at registration

    def collect(self) -> Iterator[Metric]:
        service = self.service
        try:
            events, seconds = service.projection_lag()
        except Exception as error:  # noqa: BLE001 - a store that does not answer must not break the scrape
            log.warning("metrics: projection lag unavailable: %s", type(error).__name__)
            yield GaugeMetricFamily("tokentrail_store_up", "1 when the store answered this scrape, else 0.", value=0)
        else:
            yield GaugeMetricFamily("tokentrail_store_up", "1 when the store answered this scrape, else 0.", value=1)
            yield GaugeMetricFamily(
                "tokentrail_projection_lag_events",
                "Events in the log not yet applied to the read models (log head minus projected position).",
                value=events,
            )
            yield GaugeMetricFamily(
                "tokentrail_projection_lag_seconds",
                "Age of the oldest event not yet applied to the read models; 0 when caught up.",
                value=seconds,
            )
        cache = service.auth.tokens
        yield CounterMetricFamily(
            "tokentrail_auth_cache_hits", "Token lookups answered from the auth cache.", value=cache.hits
        )
        yield CounterMetricFamily(
            "tokentrail_auth_cache_misses", "Token lookups that read the store.", value=cache.misses
        )
        written = CounterMetricFamily(
            "tokentrail_events_written", "Events this process wrote, by event type.", labels=("type",)
        )
        for event_type, count in sorted(service.stats.events_written().items()):
            written.add_metric((event_type,), count)
        yield written
        buckets, total = service.stats.revocation_visibility.snapshot()
        yield HistogramMetricFamily(
            "tokentrail_revocation_visibility_seconds",
            "For each token refresh or delete written by another process: seconds from the event's "
            "timestamp to this process evicting the token from its auth cache.",
            buckets=buckets,
            sum_value=total,
        )
        live = service.listener_live
        if live is not None:
            yield GaugeMetricFamily(
                "tokentrail_listener_alive",
                "PostgreSQL: 1 while the LISTEN connection proved itself alive within the last 0.5 s.",
                value=1 if live else 0,
            )


class SinkCollector(Collector):
    """The audit sink (TOKENTRAIL_AUDIT_SINK): its state as the database records it (whichever
    server delivers) and this process's own counts."""

    def __init__(self, sink: AuditSink) -> None:
        self.sink = sink

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        sink = self.sink
        try:
            state = sink.status()
        except Exception as error:  # noqa: BLE001 - a store that does not answer must not break the scrape
            log.warning("metrics: audit sink state unavailable: %s", type(error).__name__)
        else:
            yield GaugeMetricFamily(
                "tokentrail_audit_sink_up",
                "1 while the audit sink takes what it is sent; 0 while delivery is failing (and retried).",
                value=1 if state["ok"] else 0,
            )
            yield GaugeMetricFamily(
                "tokentrail_audit_sink_lag_events",
                "Audit events not yet delivered to the sink.",
                value=state["behind"],
            )
            yield GaugeMetricFamily(
                "tokentrail_audit_sink_lag_seconds",
                "Age of the oldest audit event not yet delivered; 0 when caught up.",
                value=state["lag_seconds"],
            )
            yield GaugeMetricFamily(
                "tokentrail_audit_sink_position", "Log position the sink has acknowledged.", value=state["position"]
            )
        yield GaugeMetricFamily(
            "tokentrail_audit_sink_delivering",
            "1 when this process is the one that delivers (holds the sink's lock), else 0.",
            value=1 if sink.delivering else 0,
        )
        yield CounterMetricFamily(
            "tokentrail_audit_sink_delivered_events",
            "Audit events this process delivered.",
            value=sink.counts.delivered,
        )
        yield CounterMetricFamily(
            "tokentrail_audit_sink_failures",
            "Delivery attempts of this process that failed (each is retried with backoff).",
            value=sink.counts.failures,
        )


class MetricsMiddleware:
    """Counts and times every HTTP request by the template of the route that answered it, and
    writes its line in the access log (`tokentrail.access`: the template, never the path)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: list[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self._routes = routes  # the app's own list: complete by the first request
        self._by_endpoint: dict[Any, str] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            method = scope["method"]
            method = method if method in _METHODS else "other"
            template, seconds = self.template(scope), time.perf_counter() - started
            self.metrics.observe(template, method, status, seconds)
            if access_log.isEnabledFor(logging.INFO):
                log_request(scope.get("state", {}).get("request_id"), method, template, status, seconds)

    def template(self, scope: Scope) -> str:
        """The template of the route that answered (`/v0/tokens/{ref:path}`), else `(unmatched)`:
        never the path itself.

        FastAPI's routes record themselves in the scope as `route`; the app's plain Starlette
        routes (the fast `/v0/auth`, the static mount) leave only their `endpoint`, looked up
        here among the app's top-level routes."""
        route = scope.get("route")
        if route is not None:
            return _path_of(route)
        endpoint = scope.get("endpoint")
        if endpoint is None:
            return UNMATCHED
        if self._by_endpoint is None:
            self._by_endpoint = {
                r.endpoint if not isinstance(r, Mount) else r.app: _path_of(r)
                for r in self._routes
                if hasattr(r, "endpoint") or isinstance(r, Mount)
            }
        return self._by_endpoint.get(endpoint, UNMATCHED)


def _path_of(route: Any) -> str:
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return UNMATCHED
    return f"{path}/{{path}}" if isinstance(route, Mount) else path
