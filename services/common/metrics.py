"""Worker figures for the API's /metrics, computed from the shards table at scrape time.

Workers record everything in the database (attempts, queue wait, run time, heartbeats), so any API
replica can expose the whole fleet's figures without talking to the workers. Use it as a metric
source of services.api.metrics.DatabaseCollector (it takes a session, yields metric families).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from services.common.models import Shard, ShardKind, ShardStatus, utcnow

WORKER_SEEN_WINDOW = timedelta(minutes=2)


def collect_worker_metrics(session: Session) -> Iterable[Metric]:
    rows = session.execute(
        select(
            Shard.kind,
            func.count(),
            func.coalesce(func.sum(Shard.attempts), 0),
            func.coalesce(func.sum(case((Shard.attempts > 1, Shard.attempts - 1), else_=0)), 0),
            func.coalesce(func.sum(case((Shard.status == ShardStatus.failed, 1), else_=0)), 0),
            func.coalesce(func.sum(case((Shard.run_s.is_not(None), 1), else_=0)), 0),
            func.coalesce(func.sum(Shard.run_s), 0.0),
            func.coalesce(func.sum(case((Shard.queue_wait_s.is_not(None), 1), else_=0)), 0),
            func.coalesce(func.sum(Shard.queue_wait_s), 0.0),
        ).group_by(Shard.kind)
    ).all()
    by_kind = {ShardKind(r[0]).value: r[1:] for r in rows}

    def counter(name: str, doc: str) -> CounterMetricFamily:
        return CounterMetricFamily(name, doc, labels=["kind"])

    def summary(name: str, doc: str) -> SummaryMetricFamily:
        return SummaryMetricFamily(name, doc, labels=["kind"])

    attempts = counter("diffii_shard_attempts", "shard attempts started")
    retries = counter("diffii_shard_retries", "shard attempts beyond the first (failures, lost workers)")
    failures = counter("diffii_shard_failures", "shards failed for good")
    run = summary("diffii_shard_run_seconds", "run time of successful shards")
    wait = summary("diffii_shard_queue_wait_seconds", "time from ready to claimed by a worker")
    for kind in ShardKind:
        _, n_attempts, n_retries, n_failed, n_run, s_run, n_wait, s_wait = by_kind.get(
            kind.value, (0, 0, 0, 0, 0, 0.0, 0, 0.0)
        )
        attempts.add_metric([kind.value], n_attempts)
        retries.add_metric([kind.value], n_retries)
        failures.add_metric([kind.value], n_failed)
        run.add_metric([kind.value], count_value=n_run, sum_value=float(s_run))
        wait.add_metric([kind.value], count_value=n_wait, sum_value=float(s_wait))
    yield from (attempts, retries, failures, run, wait)

    images = session.scalar(
        select(func.coalesce(func.sum(Shard.images_done), 0)).where(Shard.kind == ShardKind.generate)
    )
    yield CounterMetricFamily("diffii_images_generated", "synthetic images stored", value=images or 0)

    pending = session.scalar(
        select(func.count()).where(Shard.status.in_((ShardStatus.pending, ShardStatus.queued)))
    )
    yield GaugeMetricFamily(
        "diffii_work_pending", "shards ready and waiting for a worker", value=pending or 0
    )

    seen = session.scalar(
        select(func.count(func.distinct(Shard.worker))).where(
            Shard.heartbeat_at >= utcnow() - WORKER_SEEN_WINDOW
        )
    )
    yield GaugeMetricFamily(
        "diffii_workers_heartbeating", "task processes that sent a heartbeat recently", value=seen or 0
    )
