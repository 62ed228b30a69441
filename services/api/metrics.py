"""Prometheus metrics: HTTP requests by route template, plus job and shard counts read from the DB.

Each app gets its own registry, so several apps in one process (tests) do not collide.

Hook for other components: append a `MetricSource` to `create_app(..., metric_sources=[...])`
(or to DEFAULT_METRIC_SOURCES). A source receives a DB session at scrape time and yields metric
families; e.g. the worker can publish its figures in the shards table or Redis and a source reads them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from datetime import timedelta

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.metrics import collect_worker_metrics
from services.common.models import Job, JobStatus, Shard, ShardKind, ShardStatus, utcnow

log = logging.getLogger(__name__)

MetricSource = Callable[[Session], Iterable[Metric]]
ACTIVE_WORKER_WINDOW = timedelta(minutes=2)


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "diffii_http_requests_total", "HTTP requests", ["method", "route", "status"], registry=registry
        )
        self.latency = Histogram(
            "diffii_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route", "status"],
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )


class MetricsMiddleware:
    """Pure ASGI middleware: it reads the matched route template after routing, so paths with ids
    (/v1/jobs/abc) collapse into one label value (/v1/jobs/{job_id})."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status_code = 500
        start = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            labels = (scope["method"], template, str(status_code))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - start)


def jobs_by_status(session: Session) -> Iterable[Metric]:
    family = GaugeMetricFamily("diffii_jobs", "jobs by status", labels=["status"])
    counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
    for job_status in JobStatus:
        family.add_metric([job_status.value], counts.get(job_status, 0))
    yield family


def shards_by_kind_and_status(session: Session) -> Iterable[Metric]:
    # pending+queued generate shards is the "work waiting" signal the autoscaler reads.
    family = GaugeMetricFamily(
        "diffii_shards", "shards (units of work) by kind and status", labels=["kind", "status"]
    )
    rows = session.execute(select(Shard.kind, Shard.status, func.count()).group_by(Shard.kind, Shard.status))
    counts = {(kind, shard_status): n for kind, shard_status, n in rows}
    for kind in ShardKind:
        for shard_status in ShardStatus:
            family.add_metric([kind.value, shard_status.value], counts.get((kind, shard_status), 0))
    yield family


def active_workers(session: Session) -> Iterable[Metric]:
    since = utcnow() - ACTIVE_WORKER_WINDOW
    busy = session.scalar(
        select(func.count(func.distinct(Shard.worker))).where(
            Shard.status == ShardStatus.running, Shard.heartbeat_at >= since
        )
    )
    yield GaugeMetricFamily(
        "diffii_workers_busy", "workers holding a running shard with a recent heartbeat", value=busy or 0
    )


DEFAULT_METRIC_SOURCES: list[MetricSource] = [
    jobs_by_status,
    shards_by_kind_and_status,
    active_workers,
    collect_worker_metrics,
]


class DatabaseCollector(Collector):
    """Queries the state database at scrape time; a DB outage shows as diffii_state_db_up 0, not a 500."""

    def __init__(
        self, session_factory: sessionmaker[Session], sources: list[MetricSource], cache_seconds: float = 0
    ) -> None:
        self.session_factory = session_factory
        self.sources = sources
        # A scrape within cache_seconds of the last reuses its figures: a scraper (or anyone allowed
        # to call /metrics) in a loop costs the database nothing more.
        self.cache_seconds = cache_seconds
        self._cached: tuple[float, list[Metric]] | None = None
        self._lock = threading.Lock()

    def collect(self) -> Iterable[Metric]:
        with self._lock:  # concurrent scrapes wait for one query instead of each running it
            cached = self._cached
            if cached is None or time.monotonic() - cached[0] >= self.cache_seconds:
                cached = (time.monotonic(), list(self._query()))
                self._cached = cached
        return iter(cached[1])

    def _query(self) -> Iterable[Metric]:
        families: list[Metric] = []
        up = 1
        try:
            with self.session_factory() as session:
                for source in self.sources:
                    families.extend(source(session))
        except Exception:
            log.warning("metrics: state database query failed", exc_info=True)
            up = 0
            families = []
        yield GaugeMetricFamily(
            "diffii_state_db_up", "1 when the metrics query reached the database", value=up
        )
        yield from families

    def describe(self) -> Iterable[Metric]:
        return []  # no DB query at registration time
