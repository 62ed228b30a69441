"""Faults a distributed batch service meets: a killed worker, a shard that always fails, a cancel,
a lost broker message, and more workers than one. Image bytes must never depend on any of them."""

from __future__ import annotations

import io
import zipfile
from datetime import timedelta

from sqlalchemy import select

from services.common.models import Job, JobStatus, Shard, ShardKind, ShardStatus, utcnow
from tests.integration.conftest import EXPECTED_IMAGES, Cluster, wait_for
from tests.service_helpers import auth


def _shards(cluster: Cluster, job_id: str, kind: ShardKind = ShardKind.generate) -> list[Shard]:
    with cluster.sessions() as s:
        return list(s.scalars(select(Shard).where(Shard.job_id == job_id, Shard.kind == kind)))


def test_worker_killed_mid_shard_loses_and_doubles_nothing(
    cluster: Cluster, reference_images: dict[str, bytes]
) -> None:
    cluster.start_api()
    key = cluster.new_key()
    dataset_id = cluster.upload_sample(key)
    # Slow, small batches: the worker is surely in the middle of a class when it dies.
    doomed = cluster.start_worker("doomed", faults="delay:generate:0.4", batch_size="2")
    job_id = cluster.submit(key, dataset_id)

    def mid_shard(job: dict) -> bool:
        return any(
            s["status"] == "running" and 2 <= s["images_done"] < s["images_total"] and s["images_total"] >= 6
            for s in job["progress"]["shards"] or []
        )

    job = cluster.wait_job(key, job_id, mid_shard)
    victim = next(s for s in job["progress"]["shards"] if mid_shard({"progress": {"shards": [s]}}))
    doomed.kill_group()  # SIGKILL: no cleanup, no ack, the lease is simply never renewed
    doomed.popen.wait()

    cluster.start_worker("rescuer")
    job = cluster.wait_job(key, job_id)
    assert job["status"] == "succeeded", f"{job}\n{cluster.logs()}"

    rerun = next(
        s
        for s in _shards(cluster, job_id)
        if s.class_name == victim["class_name"] and s.start == victim["start"]
    )
    # The second attempt finished the shard; the first one's cause stays on record.
    assert rerun.attempts == 2 and rerun.error is not None
    assert rerun.error.startswith(f"worker {victim['worker']} lost (no heartbeat since")
    images = cluster.images(job_id)
    assert images == reference_images  # none missing, none extra, same bytes
    archive = cluster.storage.get_bytes(f"jobs/{job_id}/archive.zip")
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        pngs = [n for n in zf.namelist() if n.endswith(".png")]
    assert len(pngs) == len(set(pngs)) == EXPECTED_IMAGES


def test_shard_that_always_fails_fails_the_job_naming_the_class(cluster: Cluster) -> None:
    cluster.start_api()
    cluster.start_worker(faults="fail:generate:square")
    key = cluster.new_key()
    job_id = cluster.submit(key, cluster.upload_sample(key))

    job = cluster.wait_job(key, job_id)
    assert job["status"] == "failed", job
    assert (
        job["message"]
        == "class 'square' failed after 3 attempts: RuntimeError: injected failure (generate square)"
    )
    square = next(s for s in job["progress"]["shards"] if s["class_name"] == "square")
    assert square["status"] == "failed" and square["attempts"] == 3
    wait_for(
        lambda: all(
            s.status not in (ShardStatus.running, ShardStatus.queued) for s in _shards(cluster, job_id)
        ),
        30,
        "other shards to stop",
    )
    with cluster.http() as client:
        assert client.get(f"/v1/jobs/{job_id}/archive", headers=auth(key)).status_code == 409
    assert not cluster.storage.exists(f"jobs/{job_id}/archive.zip")


def test_cancel_during_generation_then_the_worker_takes_the_next_job(cluster: Cluster) -> None:
    """Two-phase: `cancelling` while a shard runs, `cancelled` once its worker stopped at a batch."""
    cluster.start_api()
    worker = cluster.start_worker(faults="delay:generate:0.3", batch_size="2")
    key = cluster.new_key()
    dataset_id = cluster.upload_sample(key)
    job_id = cluster.submit(key, dataset_id)

    cluster.wait_job(key, job_id, lambda j: any(s["images_done"] >= 1 for s in j["progress"]["shards"] or []))
    with cluster.http() as client:
        r = client.post(f"/v1/jobs/{job_id}/cancel", headers=auth(key))
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelling" and r.json()["finished_at"] is None
    running = [s for s in r.json()["progress"]["shards"] if s["status"] == "running"]
    assert running, r.json()
    job = cluster.wait_job(key, job_id)
    assert job["status"] == "cancelled" and job["message"] == "cancelled at the user's request"
    stopped = {(s["class_name"], s["start"]): s for s in job["progress"]["shards"]}
    # The shard that was running stopped part-way at a batch boundary: it did not run to its end.
    assert all(
        stopped[(s["class_name"], s["start"])]["status"] == "cancelled"
        and stopped[(s["class_name"], s["start"])]["images_done"] < s["images_total"]
        for s in running
    )
    # Running shards stop within one batch; nothing keeps running for a cancelled job.
    wait_for(
        lambda: all(
            s.status in (ShardStatus.cancelled, ShardStatus.succeeded) for s in _shards(cluster, job_id)
        ),
        30,
        "shards of the cancelled job to stop",
    )
    with cluster.http() as client:
        assert client.get(f"/v1/jobs/{job_id}/archive", headers=auth(key)).status_code == 409
    assert not cluster.storage.exists(f"jobs/{job_id}/archive.zip")

    following = cluster.submit(key, dataset_id, expansion=0.5)
    job = cluster.wait_job(key, following)
    assert job["status"] == "succeeded", f"{job}\n{cluster.logs()}"
    assert worker.popen.poll() is None  # the same worker did it


def test_two_workers_and_other_batch_sizes_give_identical_bytes(
    cluster: Cluster, reference_images: dict[str, bytes]
) -> None:
    cluster.start_api()
    key = cluster.new_key()
    dataset_id = cluster.upload_sample(key)

    # Two workers, classes split into shards of 3 sharing one inversion pool, other batch size.
    a = cluster.start_worker("a", shard_size="3", batch_size="3")
    b = cluster.start_worker("b", shard_size="3", batch_size="3")
    for proc in (a, b):
        wait_for(
            lambda p=proc: "task process ready" in p.log.read_text(errors="replace"), 120, "worker start"
        )
    job_id = cluster.submit(key, dataset_id)
    job = cluster.wait_job(key, job_id)
    assert job["status"] == "succeeded", f"{job}\n{cluster.logs()}"

    shards = _shards(cluster, job_id)
    assert len(shards) > 4  # split classes
    assert len({s.worker for s in shards}) == 2  # both workers took part
    assert cluster.images(job_id) == reference_images


def test_lost_messages_still_run(cluster: Cluster) -> None:
    """Rows committed but never sent (a crash between commit and publish), or sent and lost."""
    cluster.start_api()
    key = cluster.new_key()
    dataset_id = cluster.upload_sample(key)
    with cluster.http() as client:
        job = client.post(
            "/v1/jobs", headers=auth(key), json={"dataset_id": dataset_id, "model": "tiny", "expansion": 0.5,
                                                 "concepts": {"steps": 5}, "inference_steps": 5},
        ).json()  # fmt: skip
    template = _job_row(cluster, job["id"])

    job_ids = []
    with cluster.sessions() as s:
        for status, sent in (
            (ShardStatus.pending, None),
            (ShardStatus.queued, utcnow() - timedelta(minutes=5)),
        ):
            row = Job(owner_id=template.owner_id, dataset_id=dataset_id, params=template.params,
                      status=JobStatus.queued)  # fmt: skip
            s.add(row)
            s.flush()
            s.add(Shard(job_id=row.id, seq=0, kind=ShardKind.prepare, status=status, enqueued_at=sent))
            job_ids.append(row.id)
        s.commit()

    cluster.start_worker()  # its sweeper finds both rows and sends them
    for job_id in [job["id"], *job_ids]:
        final = cluster.wait_job(key, job_id)
        assert final["status"] == "succeeded", f"{final}\n{cluster.logs()}"


def _job_row(cluster: Cluster, job_id: str) -> Job:
    with cluster.sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None
        s.expunge(job)
        return job


def test_a_transient_failure_is_retried_after_a_backoff_and_changes_no_byte(
    cluster: Cluster, reference_images: dict[str, bytes]
) -> None:
    """Every generate shard's first attempt meets a connection error; each is retried once, after
    its backoff, and the job's images are those of an undisturbed run."""
    cluster.start_api()
    cluster.start_worker(faults="flaky:generate:1")
    key = cluster.new_key()
    job_id = cluster.submit(key, cluster.upload_sample(key))
    job = cluster.wait_job(key, job_id)
    assert job["status"] == "succeeded", f"{job}\n{cluster.logs()}"
    for shard in job["progress"]["shards"]:
        assert shard["attempts"] == 2, shard
        assert shard["error"] == "ConnectionError: injected transient failure (generate attempt 1)"
    assert cluster.images(job_id) == reference_images
