"""Method "auto" through the worker's stages in this process: the learn stage stores the choice in the
manifest, the generate and package stages make the chosen candidate's share, and the archive is the one
`diffii augment` writes for the same job (only job.json's `job_id` is the service's own)."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

from diffii_core.params import JobParams
from diffii_core.pipeline.augment import augment
from diffii_core.sample_data import write_sample_archive
from services.common.manifest import JobManifest
from services.common.models import JobStatus, ShardKind
from services.worker.process import WorkerProcess
from tests.worker.test_stages import PARAMS, _job, _job_row, _run_ready, process  # noqa: F401


def _members(archive: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def test_an_auto_job_is_chosen_once_and_archived_as_diffii_augment_writes_it(
    process: WorkerProcess,  # noqa: F811
    tmp_path: Path,
) -> None:
    p = process
    source = write_sample_archive(tmp_path / "sample.zip")
    job_id = _job(p, tmp_path, source, method="auto")
    assert _run_ready(p, job_id, ShardKind.prepare) == ["succeeded"]
    assert JobManifest.read(_job_row(p, job_id).manifest).choice is None
    assert _run_ready(p, job_id, ShardKind.learn) == ["succeeded"]
    manifest = JobManifest.read(_job_row(p, job_id).manifest)
    assert manifest is not None and manifest.choice is not None
    chosen = manifest.choice.record["chosen"]
    assert manifest.choice.params["method"] == chosen.split("@")[0]
    assert set(_run_ready(p, job_id, ShardKind.generate)) == {"succeeded"}
    assert _run_ready(p, job_id, ShardKind.package) == ["succeeded"]
    job = _job_row(p, job_id)
    assert job.status == JobStatus.succeeded and job.params["method"] == "auto"
    service = _members(p.storage.get_bytes(job.archive_key))

    out = tmp_path / "augment.zip"
    augment(source, out, JobParams(**{**PARAMS, "method": "auto"}))
    command = _members(out.read_bytes())
    assert list(command) == list(service)
    for name in service:
        if name != "job.json":
            assert command[name] == service[name], name
    served = json.loads(service["job.json"])
    assert served.pop("job_id") == job_id
    assert served == json.loads(command["job.json"])
    assert served["choice"]["chosen"] == chosen and served["params"]["method"] == chosen.split("@")[0]
