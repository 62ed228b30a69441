"""`diffii augment` and the service run the same steps (diffii_core.pipeline): one job through both
gives the same archive, member by member in the same order with the same headers and bytes; only
job.json's `job_id` is the service's own."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

from diffii_core.output.preview import PREVIEW_PAGE
from tests.integration.conftest import JOB_PARAMS, Cluster, ReferenceJob


def _members(archive: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def _headers(archive: bytes) -> list[tuple[object, ...]]:
    """Each member's name and header fields, in archive order (sizes and CRC aside: job.json's differ)."""
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        return [
            (i.filename, i.date_time, i.compress_type, i.external_attr, i.flag_bits, i.create_system)
            for i in zf.infolist()
        ]


def _augment(tmp_path: Path, *options: str) -> bytes:
    """`diffii augment` of the sample dataset (the one the service's jobs upload) with JOB_PARAMS."""
    from diffii_core.sample_data import write_sample_archive

    source = write_sample_archive(tmp_path / "sample.zip")
    out = tmp_path / "augment.zip"
    p = JOB_PARAMS
    done = subprocess.run(
        [
            sys.executable, "-m", "services.cli", "augment", str(source), "--out", str(out), "--quiet",
            "--model", p["model"], "--expansion", str(p["expansion"]), "--seed", str(p["seed"]),
            "--inference-steps", str(p["inference_steps"]), "--inversion-steps", str(p["inversion_steps"]),
            "--concept-steps", str(p["concepts"]["steps"]), *options,
        ],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out.read_bytes()


def _same_archive(written: bytes, served_archive: bytes) -> dict[str, object]:
    """The two archives hold the same members, headers and bytes; job.json differs only in the
    service's job id. Returns the served job.json."""
    assert _headers(written) == _headers(served_archive)  # same members, same order
    command, service = _members(written), _members(served_archive)
    images = [name for name in service if name.endswith(".png")]
    assert len(images) == JOB_PARAMS["expansion"] * 12  # every class's share, in both
    assert list(service)[-3:] == [PREVIEW_PAGE, "metadata.jsonl", "job.json"]
    for name in service:
        if name != "job.json":
            assert command[name] == service[name], name
    served = json.loads(service["job.json"])
    assert served.pop("job_id")
    assert json.dumps(served, sort_keys=True) == json.dumps(json.loads(command["job.json"]), sort_keys=True)
    return served


def test_diffii_augment_writes_what_the_service_writes(reference_job: ReferenceJob, tmp_path: Path) -> None:
    written = _augment(tmp_path, "--fill-pool-to", str(JOB_PARAMS["fill_pool_to"]))
    _same_archive(written, reference_job.archive)


def test_an_auto_job_chooses_alike_through_the_command_and_the_service(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Method auto: the service chooses in its learn stage what `diffii augment` chooses in-process,
    and both archives are the same."""
    from services.common import keys

    cluster.start_api()
    cluster.start_worker("auto")
    key = cluster.new_key()
    job_id = cluster.submit(key, cluster.upload_sample(key), method="auto", fill_pool_to=0)
    job = cluster.wait_job(key, job_id)
    assert job["status"] == "succeeded", f"{job}\n{cluster.logs()}"
    served = _same_archive(
        _augment(tmp_path, "--method", "auto"), cluster.storage.get_bytes(keys.archive(job_id))
    )
    choice = served["choice"]
    assert isinstance(choice, dict) and choice["chosen"] in [c["name"] for c in choice["candidates"]]
