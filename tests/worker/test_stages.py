"""Each stage of services/worker/stages.py, in this process: a SQLite state file, a local object
store and the built-in `tiny` model. The runner claims and runs one shard at a time, so what each
stage writes, and which shards it makes ready, is checked step by step."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from diffii_core.output.preview import archive_previews
from diffii_core.sample_data import write_sample_archive
from services.api.jobs_view import job_out, shards_of
from services.common import dispatch, keys
from services.common.db import dispose
from services.common.lifecycle.jobs import request_cancel
from services.common.migrate import upgrade_to_head
from services.common.models import Dataset, Job, JobStatus, Owner, Shard, ShardKind, ShardStatus
from services.worker.process import WorkerProcess
from services.worker.runner import run_shard
from services.worker.settings import WorkerSettings

PARAMS = {"model": "tiny", "expansion": 1, "seed": 3, "inference_steps": 3, "inversion_steps": 3,
          "concepts": {"steps": 2, "checkpoint_every": 1}}  # fmt: skip


@pytest.fixture
def process(tmp_path: Path) -> Iterator[WorkerProcess]:
    settings = WorkerSettings(
        _env_file=None, home=tmp_path, broker_url="memory://", batch_size=2, shard_size=2,
        retry_base_seconds=0, preload_models=[],
    )  # fmt: skip
    upgrade_to_head(settings.database_url)
    # Every ready shard admitted at once: these tests run them in order by hand.
    dispatch.configure(dispatch.DispatchSettings(**{**settings.model_dump(), "worker_slots": 64}))
    p = WorkerProcess(settings)
    yield p
    dispatch.configure(None)
    dispose(p.sessions)


def _job(
    p: WorkerProcess, tmp_path: Path, archive: Path | None = None, owner_name: str = "me", **params: Any
) -> str:
    from diffii_core.params import JobParams

    archive = archive or write_sample_archive(tmp_path / "sample.zip")
    dataset = f"d-{owner_name}"
    p.storage.put_bytes(f"datasets/{dataset}/source.zip", archive.read_bytes())
    with p.sessions() as s:
        owner = Owner(name=owner_name)
        s.add(owner)
        s.flush()
        s.add(Dataset(id=dataset, owner_id=owner.id, object_key=f"datasets/{dataset}/source.zip",
                      filename="sample.zip", bytes=1, images=12, classes=[]))  # fmt: skip
        job = Job(owner_id=owner.id, dataset_id=dataset, status=JobStatus.queued,
                  params=JobParams(**{**PARAMS, **params}).model_dump(mode="json"))  # fmt: skip
        s.add(job)
        s.flush()
        s.add(Shard(job_id=job.id, seq=0, kind=ShardKind.prepare, status=ShardStatus.pending, seed=3))
        s.commit()
        dispatch.dispatch(s)
        return job.id


def _ready(p: WorkerProcess, job_id: str) -> list[Shard]:
    with p.sessions() as s:
        return list(
            s.scalars(
                select(Shard)
                .where(Shard.job_id == job_id, Shard.status.in_((ShardStatus.pending, ShardStatus.queued)))
                .order_by(Shard.seq)
            )
        )


def _job_row(p: WorkerProcess, job_id: str) -> Job:
    with p.sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None
        s.expunge(job)
        return job


def _run_ready(p: WorkerProcess, job_id: str, kind: ShardKind) -> list[str]:
    shards = _ready(p, job_id)
    assert shards and {s.kind for s in shards} == {kind}, [(s.kind, s.status) for s in shards]
    return [run_shard(s.id, kind.value, p) for s in shards]


def test_each_stage_moves_the_job_on_and_writes_its_objects(process: WorkerProcess, tmp_path: Path) -> None:
    p = process
    job_id = _job(p, tmp_path)

    assert _run_ready(p, job_id, ShardKind.prepare) == ["succeeded"]
    job = _job_row(p, job_id)
    assert job.status == JobStatus.learning and job.images_total == 12
    assert [c["generated"] for c in job.manifest["classes"]] == [c["images"] for c in job.manifest["classes"]]
    with p.sessions() as s:
        kinds = [sh.kind for sh in s.scalars(select(Shard).where(Shard.job_id == job_id).order_by(Shard.seq))]
    # prepare, learn, generate shards of at most 2 images per class, package.
    assert kinds[:2] == [ShardKind.prepare, ShardKind.learn] and kinds[-1] == ShardKind.package
    assert kinds.count(ShardKind.generate) == sum(-(-c["images"] // 2) for c in job.manifest["classes"])

    assert _run_ready(p, job_id, ShardKind.learn) == ["succeeded"]
    assert _job_row(p, job_id).status == JobStatus.generating
    assert {k.rsplit("/", 1)[-1] for k in p.storage.list(keys.concepts_prefix(job_id))} >= {"concepts.json"}

    assert set(_run_ready(p, job_id, ShardKind.generate)) == {"succeeded"}
    assert _job_row(p, job_id).status == JobStatus.packaging
    assert len(p.storage.list(keys.all_images_prefix(job_id))) == 2 * 12  # a PNG and its metadata each

    assert _run_ready(p, job_id, ShardKind.package) == ["succeeded"]
    job = _job_row(p, job_id)
    assert job.status == JobStatus.succeeded and job.archive_key == keys.archive(job_id)
    with zipfile.ZipFile(io.BytesIO(p.storage.get_bytes(job.archive_key))) as zf:
        assert len([n for n in zf.namelist() if n.endswith(".png")]) == 12
        assert json.loads(zf.read("job.json"))["params"]["seed"] == 3
    # The sheets the API serves are the archive's own.
    archive = tmp_path / "archive.zip"
    archive.write_bytes(p.storage.get_bytes(job.archive_key))
    sheets = archive_previews(archive)
    assert list(sheets) == [c["name"] for c in job.manifest["classes"]]
    for c in job.manifest["classes"]:
        assert sheets[c["name"]] == p.storage.get_bytes(keys.preview(job_id, c["index"]))


def test_a_method_without_concepts_skips_learning(process: WorkerProcess, tmp_path: Path) -> None:
    job_id = _job(process, tmp_path, method="real-guidance")
    assert _run_ready(process, job_id, ShardKind.prepare) == ["succeeded"]
    assert _job_row(process, job_id).status == JobStatus.generating
    assert {s.kind for s in _ready(process, job_id)} == {ShardKind.generate}


def test_prepare_fails_at_once_on_an_unusable_dataset(process: WorkerProcess, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.zip"
    bogus.write_bytes(b"not a zip at all")
    job_id = _job(process, tmp_path, archive=bogus)
    assert _run_ready(process, job_id, ShardKind.prepare) == ["failed"]
    job = _job_row(process, job_id)
    assert job.status == JobStatus.failed
    assert job.message.startswith("preparing the dataset failed (DatasetError, not retried): ")


def test_a_cancelling_job_closes_a_shard_whose_message_arrives_late(
    process: WorkerProcess, tmp_path: Path
) -> None:
    p = process
    job_id = _job(p, tmp_path)
    _run_ready(p, job_id, ShardKind.prepare)
    _run_ready(p, job_id, ShardKind.learn)
    first, *rest = _ready(p, job_id)
    # Another worker runs a shard, so the cancel is two-phase; then our shard starts, sees it and stops.
    with p.sessions() as s:
        s.execute(update(Shard).where(Shard.id == rest[0].id).values(status=ShardStatus.running, attempts=1))
        s.commit()
        assert request_cancel(s, job_id) == JobStatus.cancelling
        s.execute(update(Shard).where(Shard.id == first.id).values(status=ShardStatus.pending))
        s.commit()
    assert run_shard(first.id, "generate", p) == "skipped"  # a cancelling job's message is dropped
    with p.sessions() as s:
        assert s.get(Shard, first.id).status == ShardStatus.cancelled
        assert s.get(Job, job_id).status == JobStatus.cancelling  # the other shard still runs


def _archive_images(p: WorkerProcess, job_id: str) -> dict[str, bytes]:
    job = _job_row(p, job_id)
    assert job.status == JobStatus.succeeded, job.message
    with zipfile.ZipFile(io.BytesIO(p.storage.get_bytes(job.archive_key))) as zf:
        return {n: zf.read(n) for n in zf.namelist() if n.endswith(".png")}


def _learn_shards(p: WorkerProcess, job_id: str) -> list[tuple[int, int, ShardStatus, int]]:
    with p.sessions() as s:
        rows = s.scalars(
            select(Shard).where(Shard.job_id == job_id, Shard.kind == ShardKind.learn).order_by(Shard.seq)
        )
        return [(r.start, r.stop, r.status, r.images_done) for r in rows]


def _run_all(p: WorkerProcess, job_id: str) -> None:
    for kind in (ShardKind.prepare, ShardKind.learn, ShardKind.generate, ShardKind.package):
        while {s.kind for s in _ready(p, job_id)} == {kind}:
            assert set(_run_ready(p, job_id, kind)) == {"succeeded"}


def test_learning_in_slices_hands_back_between_them_and_makes_the_same_images(
    process: WorkerProcess, tmp_path: Path
) -> None:
    """Each slice is a learn shard of its own; the next one is pending for the admission pass while
    the job stays `learning`; the archive is the one of a job learned in one slice, byte for byte."""
    p = process
    p.settings.learn_slice_steps = 2
    sliced = _job(p, tmp_path, owner_name="sliced", concepts={"steps": 5, "checkpoint_every": 3})
    assert _run_ready(p, sliced, ShardKind.prepare) == ["succeeded"]
    assert _run_ready(p, sliced, ShardKind.learn) == ["succeeded"]
    assert _job_row(p, sliced).status == JobStatus.learning
    # Admitted again by the pass that ran when the slice ended (this test's admission has room for all).
    assert _learn_shards(p, sliced) == [(0, 5, ShardStatus.succeeded, 2), (2, 5, ShardStatus.queued, 0)]
    with p.sessions() as s:  # the job document the API answers: step 2 of 5
        progress = job_out(s.get(Job, sliced), shards_of(s, [sliced])[sliced]).progress
        assert progress.learning is not None and progress.learning.model_dump() == {"step": 2, "steps": 5}
    _run_all(p, sliced)
    assert _learn_shards(p, sliced) == [
        (0, 5, ShardStatus.succeeded, 2), (2, 5, ShardStatus.succeeded, 2), (4, 5, ShardStatus.succeeded, 1),
    ]  # fmt: skip

    p.settings.learn_slice_steps = 0
    p.settings.learn_slice_seconds = 0
    whole = _job(p, tmp_path, owner_name="whole", concepts={"steps": 5, "checkpoint_every": 3})
    _run_all(p, whole)
    assert _learn_shards(p, whole) == [(0, 5, ShardStatus.succeeded, 5)]
    images = _archive_images(p, sliced)
    assert len(images) == 12 and images == _archive_images(p, whole)


def test_a_cancel_between_slices_ends_the_job_at_once(process: WorkerProcess, tmp_path: Path) -> None:
    p = process
    p.settings.learn_slice_steps = 1
    job_id = _job(p, tmp_path, concepts={"steps": 3})
    _run_ready(p, job_id, ShardKind.prepare)
    _run_ready(p, job_id, ShardKind.learn)
    with p.sessions() as s:
        assert request_cancel(s, job_id) == JobStatus.cancelled
    assert [row[2] for row in _learn_shards(p, job_id)] == [ShardStatus.succeeded, ShardStatus.cancelled]


def test_between_two_slices_the_worker_goes_to_another_owner_first(
    process: WorkerProcess, tmp_path: Path
) -> None:
    """One slot: owner A's learning holds it, B's job arrives; when A's slice ends, the admission pass
    gives the slot to B (who has used no worker time), not to A's next slice."""
    p = process
    p.settings.learn_slice_steps = 1
    dispatch.configure(dispatch.DispatchSettings(**{**p.settings.model_dump(), "worker_slots": 1}))
    a = _job(p, tmp_path, owner_name="a", concepts={"steps": 3})
    _run_ready(p, a, ShardKind.prepare)
    b = _job(p, tmp_path, owner_name="b")
    assert [(s.kind, s.status) for s in _ready(p, b)] == [(ShardKind.prepare, ShardStatus.pending)]
    (slice_1,) = _ready(p, a)
    assert run_shard(slice_1.id, "learn", p) == "succeeded"
    assert [(s.kind, s.status) for s in _ready(p, a)] == [(ShardKind.learn, ShardStatus.pending)]
    assert [(s.kind, s.status) for s in _ready(p, b)] == [(ShardKind.prepare, ShardStatus.queued)]


def test_a_time_slice_ends_at_the_first_optimiser_step_after_it(
    process: WorkerProcess, tmp_path: Path
) -> None:
    """A slice of a microsecond: every slice ends after its first step (none can be shorter)."""
    p = process
    p.settings.learn_slice_seconds = 1e-6
    job_id = _job(p, tmp_path, concepts={"steps": 3})
    _run_all(p, job_id)
    assert _learn_shards(p, job_id) == [
        (0, 3, ShardStatus.succeeded, 1), (1, 3, ShardStatus.succeeded, 1), (2, 3, ShardStatus.succeeded, 1),
    ]  # fmt: skip
    assert _job_row(p, job_id).status == JobStatus.succeeded
