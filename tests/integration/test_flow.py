"""The whole flow over HTTP on real components, and the API behaviour that needs workers."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import httpx

from diffii_core.output.preview import archive_previews
from tests.integration.conftest import EXPECTED_IMAGES, JOB_PARAMS, Cluster
from tests.service_helpers import auth


def test_whole_flow_over_http(cluster: Cluster, reference_images: dict[str, bytes], tmp_path: Path) -> None:
    cluster.start_api()
    cluster.start_worker()
    key, other = cluster.new_key(), cluster.new_key()
    dataset_id = cluster.upload_sample(key)
    job_id = cluster.submit(key, dataset_id)

    with cluster.http() as client:
        early = client.get(f"/v1/jobs/{job_id}/archive", headers=auth(key))
    assert early.status_code == 409  # no archive before the job succeeded

    job = cluster.wait_job(key, job_id)
    assert job["status"] == "succeeded", f"{job}\n{cluster.logs()}"
    progress = job["progress"]
    assert progress["images_done"] == progress["images_total"] == EXPECTED_IMAGES
    assert progress["shards_done"] == progress["shards_total"] == 4  # one generate shard per class
    for shard in progress["shards"]:
        assert shard["status"] == "succeeded" and shard["attempts"] == 1
        assert shard["worker"] and shard["heartbeat_at"]  # who ran it, and when it last reported

    with cluster.http() as client:
        redirect = client.get(f"/v1/jobs/{job_id}/archive", headers=auth(key))
        assert redirect.status_code == 307, redirect.text
        archive = httpx.get(redirect.headers["location"], timeout=30)
        assert archive.status_code == 200
        listing = client.get(f"/v1/jobs/{job_id}/preview", headers=auth(key))
        assert listing.status_code == 200, listing.text
        served = {c["name"]: client.get(c["url"], headers=auth(key)) for c in listing.json()["classes"]}
        # Another owner learns nothing, not even that the job exists; no key or a bad key: 401.
        for path in (
            f"/v1/jobs/{job_id}",
            f"/v1/jobs/{job_id}/archive",
            f"/v1/jobs/{job_id}/preview",
            f"/v1/jobs/{job_id}/preview/0",
        ):
            assert client.get(path, headers=auth(other)).status_code == 404
            assert client.get(path).status_code == 401
            assert client.get(path, headers=auth("dfi_bogus_key")).status_code == 401
        assert client.post(f"/v1/jobs/{job_id}/cancel", headers=auth(other)).status_code == 404
        metrics = client.get("/metrics").text

    with zipfile.ZipFile(io.BytesIO(archive.content)) as zf:
        names = zf.namelist()
        pngs = [n for n in names if n.endswith(".png")]
        lines = [json.loads(line) for line in zf.read("metadata.jsonl").decode().splitlines()]
        document = json.loads(zf.read("job.json"))
    assert len(pngs) == len(set(pngs)) == EXPECTED_IMAGES
    assert sorted(line["file_name"] for line in lines) == sorted(pngs)
    assert {line["label"] for line in lines} == {c["name"] for c in document["classes"]}
    assert document["params"]["seed"] == 7 and document["model"]["name"] == "tiny"
    # A preview sheet per class, in the archive and from the API alike.
    archive_path = tmp_path / "archive.zip"
    archive_path.write_bytes(archive.content)
    previews = archive_previews(archive_path)
    assert list(previews) == list(served) == [c["name"] for c in document["classes"]]
    for name, response in served.items():
        assert response.headers["content-type"] == "image/png" and response.content == previews[name]

    images = cluster.images(job_id)
    assert len(images) == 2 * EXPECTED_IMAGES  # a PNG and its metadata per image, nothing else
    assert images == reference_images  # a second cluster, the same bytes
    assert 'diffii_shards{kind="generate",status="succeeded"}' in metrics
    # The workers' own figures, read from the shards they ran.
    figures = {
        line.split(" ")[0]: float(line.split(" ")[-1])
        for line in metrics.splitlines()
        if line and not line.startswith("#")
    }
    assert figures["diffii_images_generated_total"] == EXPECTED_IMAGES
    assert figures['diffii_shard_run_seconds_count{kind="generate"}'] == 4
    assert figures['diffii_shard_run_seconds_sum{kind="generate"}'] > 0
    assert figures['diffii_shard_queue_wait_seconds_count{kind="generate"}'] == 4
    assert figures['diffii_shard_failures_total{kind="generate"}'] == 0
    assert "diffii_shard_retries_total" in metrics and "diffii_workers_heartbeating" in metrics


def test_a_diff_mix_job_over_http_carries_soft_labels(cluster: Cluster) -> None:
    cluster.start_api()
    cluster.start_worker()
    key = cluster.new_key()
    dataset_id = cluster.upload_sample(key)
    job_id = cluster.submit(
        key, dataset_id, method="diff-mix", strength=[0.5], kappa=0.9, gamma=1.0, fill_pool_to=0
    )  # no inversion pool to fill
    job = cluster.wait_job(key, job_id)
    assert job["status"] == "succeeded", f"{job}\n{cluster.logs()}"
    with cluster.http() as client:
        redirect = client.get(f"/v1/jobs/{job_id}/archive", headers=auth(key))
        archive = httpx.get(redirect.headers["location"], timeout=30)
    with zipfile.ZipFile(io.BytesIO(archive.content)) as zf:
        lines = [json.loads(line) for line in zf.read("metadata.jsonl").decode().splitlines()]
        index = json.loads(zf.read("job.json"))["class_index"]
    assert len(lines) == EXPECTED_IMAGES
    for line in lines:
        assert line["method"] == "diff-mix" and line["strength"] == 0.5
        label = line["soft_label"]
        assert len(label) == len(index) and abs(sum(label) - 0.9) < 1e-9
        source, target = line["source_index"], line["target_index"]
        if source != target:
            assert abs(label[target] - 0.45) < 1e-9 and abs(label[source] - 0.45) < 1e-9  # 0.9 * 0.5
        else:
            assert abs(label[source] - 0.9) < 1e-9  # same class: a hard label of mass kappa


def test_jobs_on_s3_uris_and_bad_datasets_fail_at_once_with_the_reason(cluster: Cluster) -> None:
    from diffii_core.sample_data import write_sample_archive

    bucket = cluster.env["DIFFII_S3_BUCKET"]
    cluster.env["DIFFII_ALLOWED_DATASET_BUCKETS"] = f'["{bucket}"]'
    sample = write_sample_archive(cluster.tmp / "uri-sample.zip")
    cluster.storage.put_bytes("incoming/sample.zip", sample.read_bytes())
    cluster.storage.put_bytes("incoming/not-an-archive.zip", b"this is not a zip file at all")
    cluster.start_api()
    cluster.start_worker()
    key = cluster.new_key()

    def submit(uri: str) -> str:
        # Few steps: this test is about where the dataset comes from, and a loaded machine must not
        # turn 25 + 50 default steps per image into a timeout.
        body = {**JOB_PARAMS, "dataset_uri": uri, "expansion": 0.5, "concepts": {"steps": 5}}
        with cluster.http() as client:
            r = client.post("/v1/jobs", headers=auth(key), json=body)
        assert r.status_code == 202, r.text
        return r.json()["id"]

    good = submit(f"s3://{bucket}/incoming/sample.zip")
    garbage = submit(f"s3://{bucket}/incoming/not-an-archive.zip")
    missing = submit(f"s3://{bucket}/incoming/nothing-here.zip")

    assert cluster.wait_job(key, good)["status"] == "succeeded", cluster.logs()
    for job_id, words in ((garbage, "not-an-archive.zip"), (missing, "was not found")):
        job = cluster.wait_job(key, job_id)
        assert job["status"] == "failed" and words in job["message"], job
        assert "attempt" not in job["message"]  # the user's input: no retries, its own message
        assert job["message"].startswith("preparing the dataset failed (DatasetError, not retried): ")
        assert [step["attempts"] for step in job["progress"]["steps"]] == [1]
