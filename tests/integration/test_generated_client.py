"""The served OpenAPI document is a contract a generated client can use: openapi-python-client
(a pinned dev dependency) generates a client from a running API's /openapi.json with no warning,
and that client runs upload, submit, poll, preview, download, list, cancel and delete against the
API and a real worker (Postgres, Redis, S3 on moto), every answer parsed into its typed model."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import httpx

from tests.integration.conftest import JOB_TIMEOUT, Cluster
from tests.service_helpers import wait_until

# What a user of the generator writes for binary answers it has no built-in type for.
CONFIG = """content_type_overrides:
  image/png: application/octet-stream
  application/zip: application/octet-stream
"""


def _generate(url: str, tmp_path: Path) -> Path:
    bin_dir = Path(sys.executable).parent
    cli = shutil.which("openapi-python-client", path=str(bin_dir)) or shutil.which("openapi-python-client")
    assert cli, "openapi-python-client is a dev dependency: pip install -e '.[dev]'"
    schema, config, out = tmp_path / "schema.json", tmp_path / "config.yaml", tmp_path / "generated"
    schema.write_text(json.dumps(httpx.get(f"{url}/openapi.json", timeout=30).json()))
    config.write_text(CONFIG)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        [cli, "generate", "--path", str(schema), "--output-path", str(out), "--config", str(config)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Warning" not in output, output  # every operation and every answer generated
    return out


def _terminal(job: Any, statuses: Any) -> bool:
    return job.status in {statuses.SUCCEEDED, statuses.FAILED, statuses.CANCELLED}


def test_a_generated_client_runs_the_whole_flow(cluster: Cluster, tmp_path: Path) -> None:
    url = cluster.start_api()
    cluster.start_worker()
    key = cluster.new_key()
    sys.path.insert(0, str(_generate(url, tmp_path)))
    try:
        _flow(url, key, cluster, tmp_path)
    finally:
        sys.path.remove(str(tmp_path / "generated"))
        for name in [m for m in sys.modules if m == "diffii_client" or m.startswith("diffii_client.")]:
            del sys.modules[name]


def _flow(url: str, key: str, cluster: Cluster, tmp_path: Path) -> None:
    from diffii_client import AuthenticatedClient
    from diffii_client.api.datasets import delete_dataset, get_dataset, list_datasets, upload_dataset
    from diffii_client.api.health import healthz, metrics, readyz
    from diffii_client.api.jobs import (
        cancel_job,
        create_job,
        delete_job,
        get_archive,
        get_job,
        get_preview,
        list_jobs,
        list_previews,
    )
    from diffii_client.models import (
        ConceptRequest,
        DatasetOut,
        DatasetPage,
        HealthOut,
        HTTPValidationError,
        JobOut,
        JobPage,
        JobParamsOut,
        JobRequest,
        JobRequestMethod,
        JobRequestModel,
        JobStatus,
        PreviewList,
        Problem,
        ReadyOut,
        ShardKind,
        UploadDatasetBody,
    )
    from diffii_client.types import File

    from diffii_core.sample_data import write_sample_archive

    # Statuses the schema does not document raise: every answer below is one it names.
    client = AuthenticatedClient(
        base_url=url, token=key, raise_on_unexpected_status=True, timeout=httpx.Timeout(60.0)
    )

    # upload
    archive = write_sample_archive(tmp_path / "sample.zip")
    with archive.open("rb") as fp:
        uploaded = upload_dataset.sync(
            client=client, body=UploadDatasetBody(file=File(payload=fp, file_name="sample.zip"))
        )
    assert isinstance(uploaded, DatasetOut) and len(uploaded.classes) == 4

    # submit: a typed body, the method and the model as enums; a refusal parsed as well
    def request(seed: int = 7) -> JobRequest:
        return JobRequest(
            dataset_id=uploaded.id,
            model=JobRequestModel.TINY,
            method=JobRequestMethod.DIFF_II,
            expansion=1,  # the least work that still runs every stage on every class
            seed=seed,
            inference_steps=4,
            inversion_steps=4,
            concepts=ConceptRequest(steps=5),
        )

    refused = create_job.sync_detailed(
        client=client, body=JobRequest.from_dict({**request().to_dict(), "expansion": 500})
    )
    assert refused.status_code == 422 and isinstance(refused.parsed, HTTPValidationError)
    assert refused.parsed.detail[0].loc == ["body", "expansion"]
    created = create_job.sync_detailed(client=client, body=request())
    assert created.status_code == 202 and isinstance(created.parsed, JobOut)
    job_id = created.parsed.id

    # poll
    seen: dict[str, JobOut] = {}

    def ended() -> bool:
        job = get_job.sync(job_id=job_id, client=client)
        assert isinstance(job, JobOut)
        seen["job"] = job
        return _terminal(job, JobStatus)

    wait_until(ended, 2 * JOB_TIMEOUT, f"job {job_id} to end", interval=0.5)
    job = seen["job"]
    assert job.status == JobStatus.SUCCEEDED, f"{job.to_dict()}\n{cluster.logs()}"
    assert job.progress.stage == JobStatus.SUCCEEDED
    assert job.progress.images_done == job.progress.images_total == uploaded.images
    assert {s.kind for s in job.progress.shards} == {ShardKind.GENERATE}
    assert [s.kind for s in job.progress.steps] == [ShardKind.PREPARE, ShardKind.LEARN, ShardKind.PACKAGE]
    # The parameters are the job-parameters model, the seed as its digits (exact in any language).
    assert isinstance(job.params, JobParamsOut) and job.params.seed == "7" and job.params.expansion == 1
    assert job.params.concepts.steps == 5

    # health: typed answers too
    assert isinstance(healthz.sync(client=client), HealthOut)
    ready = readyz.sync(client=client)
    assert isinstance(ready, ReadyOut) and ready.status == "ready"
    assert "diffii_" in str(metrics.sync(client=client))

    # preview: the listing, and a sheet as PNG bytes
    previews = list_previews.sync(job_id=job_id, client=client)
    assert isinstance(previews, PreviewList) and len(previews.classes) == 4
    sheet = get_preview.sync(job_id=job_id, class_index=previews.classes[0].index, client=client)
    assert isinstance(sheet, File) and sheet.payload.read().startswith(b"\x89PNG")

    # download: the 307 and its Location, then the archive where the client follows it
    redirect = get_archive.sync_detailed(job_id=job_id, client=client)
    assert redirect.status_code == 307 and redirect.headers["location"].startswith("http")
    following = AuthenticatedClient(
        base_url=url, token=key, raise_on_unexpected_status=True, follow_redirects=True
    )
    downloaded = get_archive.sync_detailed(job_id=job_id, client=following)
    assert downloaded.status_code == 200 and isinstance(downloaded.parsed, File)
    with zipfile.ZipFile(io.BytesIO(downloaded.parsed.payload.read())) as zf:
        assert "metadata.jsonl" in zf.namelist()
        assert len(zf.read("metadata.jsonl").splitlines()) == uploaded.images

    # list
    page = list_jobs.sync(client=client, status=JobStatus.SUCCEEDED)
    assert isinstance(page, JobPage) and [j.id for j in page.jobs] == [job_id]
    datasets = list_datasets.sync(client=client)
    assert isinstance(datasets, DatasetPage) and [d.id for d in datasets.datasets] == [uploaded.id]

    # cancel
    second = create_job.sync(client=client, body=request(seed=8))
    assert isinstance(second, JobOut)
    cancelled = cancel_job.sync(job_id=second.id, client=client)
    assert isinstance(cancelled, JobOut) and cancelled.status in {JobStatus.CANCELLING, JobStatus.CANCELLED}
    wait_until(
        lambda: get_job.sync(job_id=second.id, client=client).status == JobStatus.CANCELLED,  # type: ignore[union-attr]
        JOB_TIMEOUT, "the cancel", interval=0.5,
    )  # fmt: skip
    again = cancel_job.sync_detailed(job_id=second.id, client=client)
    assert (
        again.status_code == 409 and isinstance(again.parsed, Problem) and "cancelled" in again.parsed.detail
    )

    # delete: the jobs, then the dataset
    for ended_job in (job_id, second.id):
        assert delete_job.sync_detailed(job_id=ended_job, client=client).status_code == 204
    assert delete_dataset.sync_detailed(dataset_id=uploaded.id, client=client).status_code == 204
    missing = get_dataset.sync_detailed(dataset_id=uploaded.id, client=client)
    assert missing.status_code == 404 and isinstance(missing.parsed, Problem)
    stranger = AuthenticatedClient(base_url=url, token="dfi_not_a_key", raise_on_unexpected_status=True)
    unauthorized = list_datasets.sync_detailed(client=stranger)
    assert unauthorized.status_code == 401 and isinstance(unauthorized.parsed, Problem)
