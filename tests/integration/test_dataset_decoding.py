"""The upload only checks structure; the job's prepare stage decodes, and says what it found."""

from __future__ import annotations

import io
import json
import zipfile

from PIL import Image

from tests.integration.conftest import Cluster
from tests.service_helpers import auth


def _png(side: int, shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (shade, 40, 200 - shade)).save(buffer, format="PNG")
    return buffer.getvalue()


def _upload(cluster: Cluster, key: str, members: dict[str, bytes]) -> dict:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    with cluster.http() as client:
        r = client.post("/v1/datasets", headers=auth(key), files={"file": ("d.zip", buffer.getvalue())})
    assert r.status_code == 201, r.text
    return r.json()


def test_prepare_decodes_and_reports_skips_and_class_errors_in_the_job_status(cluster: Cluster) -> None:
    # One limit for both processes: 40x40 = 1,600 pixels pass, 64x64 = 4,096 do not.
    cluster.env["DIFFII_DATASET_LIMITS"] = json.dumps({"max_pixels": 2_000})
    cluster.start_api()
    cluster.start_worker()
    key = cluster.new_key()
    good = {
        "a/1.png": _png(40, 10),
        "a/2.png": _png(40, 60),
        "b/1.png": _png(40, 90),
        "b/2.png": _png(40, 120),
    }

    # Upload: signatures are right, so every file counts; nothing is decoded yet.
    skips = _upload(cluster, key, {**good, "a/cut.png": _png(40, 30)[:60], "b/huge.png": _png(64, 0)})
    assert skips["classes"] == [{"name": "a", "images": 3}, {"name": "b", "images": 3}]
    # Long concept learning, so the job is still running when it is cancelled below.
    job_id = cluster.submit(key, skips["id"], concepts={"steps": 20_000, "batch_size": 1})
    job = cluster.wait_job(key, job_id, until=lambda j: j["dataset"] is not None or j["status"] == "failed")
    assert job["dataset"] is not None, job
    assert job["dataset"]["classes"] == [{"name": "a", "images": 2}, {"name": "b", "images": 2}]
    reasons = {s["path"]: s["reason"] for s in job["dataset"]["skipped"]}
    assert set(reasons) == {"a/cut.png", "b/huge.png"}
    assert "damaged image" in reasons["a/cut.png"]
    assert "over the limit of 2,000 pixels (max_pixels)" in reasons["b/huge.png"]
    with cluster.http() as client:
        assert client.post(f"/v1/jobs/{job_id}/cancel", headers=auth(key)).status_code in (200, 202)
    assert cluster.wait_job(key, job_id)["status"] == "cancelled"

    # A class whose every image fails to decode: the job fails at once, saying which and why.
    empty = _upload(
        cluster, key, {"a/1.png": _png(40, 10), "b/huge.png": _png(64, 0), "b/cut.png": b"\x89PNG\r\n"}
    )
    failed = cluster.wait_job(key, cluster.submit(key, empty["id"]))
    assert failed["status"] == "failed", failed
    assert "class 'b' has no usable image" in failed["message"]
    assert "b/huge.png: image is 64x64" in failed["message"] and "b/cut.png" in failed["message"]
    assert failed["dataset"] is None
