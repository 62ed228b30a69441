"""No signed link in the API's log: a real archive download against a running API (`diffii serve`
in its own process) on S3 (moto over HTTP, whose links carry X-Amz-Signature and X-Amz-Credential)
and on the local store (whose links come back to the API itself, so its access log sees them)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from services.common import keys
from services.common.db import session_scope
from services.common.models import Job, JobStatus, utcnow
from services.common.storage_local import LocalStorage
from tests.integration.conftest import Cluster
from tests.service_helpers import auth, wait_until

ARCHIVE = b"PK\x05\x06" + b"\0" * 18  # an empty zip: what is inside does not matter here


def _succeeded_job(cluster: Cluster, key: str, storage: object) -> str:
    """A job made over the API, then marked succeeded with an archive (no worker needed)."""
    job_id = cluster.submit(key, cluster.upload_sample(key))
    storage.put_bytes(keys.archive(job_id), ARCHIVE)  # type: ignore[attr-defined]
    with session_scope(cluster.sessions) as session:
        job = session.get(Job, job_id)
        job.status, job.archive_key, job.finished_at = JobStatus.succeeded, keys.archive(job_id), utcnow()
    return job_id


@pytest.mark.parametrize("store", ["s3", "local"])
def test_a_downloaded_archive_link_leaves_no_signature_in_the_api_log(
    cluster: Cluster, tmp_path: Path, store: str
) -> None:
    storage: object = cluster.storage
    if store == "local":
        cluster.env.update(DIFFII_STORAGE="local", DIFFII_STORAGE_DIR=str(tmp_path / "objects"))
        storage = LocalStorage(tmp_path / "objects")
    cluster.start_api()
    key = cluster.new_key()
    job_id = _succeeded_job(cluster, key, storage)

    with cluster.http() as client:
        redirect = client.get(f"/v1/jobs/{job_id}/archive", headers=auth(key))
    assert redirect.status_code == 307, redirect.text
    link = redirect.headers["location"]
    download = httpx.get(link, timeout=30)
    assert download.status_code == 200 and download.content == ARCHIVE

    query = parse_qs(urlsplit(link).query)
    secrets = [v for name in ("sig", "X-Amz-Signature", "X-Amz-Credential") for v in query.get(name, [])]
    assert secrets, link  # the link is signed: there is something to keep out of the log
    log = cluster.procs[0].log
    archive_line = f"/v1/jobs/{job_id}/archive"
    wait_until(lambda: archive_line in log.read_text(errors="replace"), 30, "the access log line")
    if store == "local":  # the download itself went through the API
        wait_until(lambda: "/v1/objects/" in log.read_text(errors="replace"), 30, "the download's log line")
        text = log.read_text(errors="replace")
        assert "sig=REDACTED" in text
    text = log.read_text(errors="replace")
    for secret in secrets:
        assert secret not in text and secret.replace("/", "%2F") not in text
