"""Concept learning in slices through the whole service: each slice a learn shard of its own, run by
whichever of two Celery workers the admission pass sends it to, resuming the last slice's checkpoint
from storage. The images are the bytes of an undisturbed run learned in one slice."""

from __future__ import annotations

from sqlalchemy import select

from services.common.models import Shard, ShardKind, ShardStatus
from tests.integration.conftest import JOB_PARAMS, Cluster


def test_a_job_learned_in_slices_on_two_workers_makes_the_reference_images(
    cluster: Cluster, reference_images: dict[str, bytes]
) -> None:
    cluster.start_api()
    for name in ("s1", "s2"):
        cluster.start_worker(name, learn_slice_steps="3")
    key = cluster.new_key()
    job_id = cluster.submit(key, cluster.upload_sample(key))
    job = cluster.wait_job(key, job_id)
    assert job["status"] == "succeeded", f"{job}\n{cluster.logs()}"
    steps = JOB_PARAMS["concepts"]["steps"]  # 10: slices [0, 3) [3, 6) [6, 9) [9, 10)
    with cluster.sessions() as s:
        learn = s.execute(
            select(Shard.start, Shard.stop, Shard.images_done, Shard.status)
            .where(Shard.job_id == job_id, Shard.kind == ShardKind.learn)
            .order_by(Shard.seq)
        ).all()
    assert [tuple(r) for r in learn] == [
        (0, steps, 3, ShardStatus.succeeded), (3, steps, 3, ShardStatus.succeeded),
        (6, steps, 3, ShardStatus.succeeded), (9, steps, 1, ShardStatus.succeeded),
    ]  # fmt: skip
    assert job["progress"]["learning"] == {"step": steps, "steps": steps}
    assert cluster.images(job_id) == reference_images
