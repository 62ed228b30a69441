"""Fair share through the whole service: an API and a Celery worker on Postgres, Redis and S3.

One owner's backlog does not keep a later owner waiting, and a cancelled job's shards never run:
neither one never admitted, nor one whose message was already on the broker."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from services.common.models import Shard, ShardKind, ShardStatus
from services.common.timeutil import as_utc
from tests.integration.conftest import Cluster
from tests.service_helpers import auth

FAST = {"concepts": {"steps": 0}, "expansion": 1}  # generate is simulated: the order is what counts


def _shards(cluster: Cluster, job_id: str) -> list[Shard]:
    with cluster.sessions() as s:
        return list(s.scalars(select(Shard).where(Shard.job_id == job_id).order_by(Shard.seq)))


def _prepare_started(cluster: Cluster, job_id: str) -> datetime:
    prepare = next(s for s in _shards(cluster, job_id) if s.kind == ShardKind.prepare)
    started = as_utc(prepare.started_at)
    assert started is not None
    return started


def test_a_later_owner_goes_first_and_cancelled_jobs_never_run(cluster: Cluster) -> None:
    cluster.start_api()
    a, b = cluster.new_key("flooding"), cluster.new_key("later")
    a_data, b_data = cluster.upload_sample(a), cluster.upload_sample(b)
    # No worker has reported yet: one shard in flight (DIFFII_WORKER_SLOTS=1), a1's prepare, sent.
    a1, a2, a3 = (cluster.submit(a, a_data, **FAST) for _ in range(3))
    late = cluster.submit(b, b_data, **FAST)
    with cluster.sessions() as s:
        queued = s.scalars(select(Shard.job_id).where(Shard.status == ShardStatus.queued)).all()
    assert queued == [a1]
    with cluster.http() as client:  # a1's message is on the broker; a3's shard was never admitted
        for job_id in (a1, a3):
            assert client.post(f"/v1/jobs/{job_id}/cancel", headers=auth(a)).json()["status"] == "cancelled"

    cluster.start_worker(faults="simulate:generate:0.05")
    assert cluster.wait_job(b, late)["status"] == "succeeded"
    assert cluster.wait_job(a, a2)["status"] == "succeeded"

    # a was admitted last (a1), so b's job starts before a's backlog, though submitted after it.
    assert _prepare_started(cluster, late) < _prepare_started(cluster, a2)
    for job_id in (a1, a3):
        assert [(s.status, s.attempts, s.started_at) for s in _shards(cluster, job_id)] == [
            (ShardStatus.cancelled, 0, None)
        ]
