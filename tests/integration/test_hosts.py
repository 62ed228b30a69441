"""More than one host, shown: Celery workers in network, mount and UTS namespaces of their own
(tests/integration/hosts.py) reach Postgres, Redis and S3 only over a veth address, never loopback or
a shared path, and two of them share one job's shards. The archive is the one-worker run's, byte for
byte (job.json names its own job id), so an assumption of one machine (a local path, a loopback URL)
cannot creep back in unnoticed."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from services.common.models import Shard, ShardKind
from services.common.pdeathsig import die_with_parent
from tests.chaos.components import PrivateRedis, TcpProxy
from tests.integration.conftest import EXPECTED_IMAGES, Cluster, make_cluster
from tests.integration.hosts import Host, Network, unavailable
from tests.service_helpers import answers, auth, free_port, s3_storage_kwargs, wait_until

# Fewer steps and one image per real one (12 in 6 shards of 2): what is shown is where the work runs.
SMALL_JOB: dict[str, Any] = {
    "expansion": 1,
    "inference_steps": 4,
    "inversion_steps": 4,
    "concepts": {"steps": 4},
}


@pytest.fixture
def network() -> Iterator[Network]:
    reason = unavailable()
    if reason:
        pytest.skip(f"simulated hosts unavailable: {reason}")
    net = Network()
    try:
        yield net.open()
    finally:
        net.close()


@contextlib.contextmanager
def _moto(address: str, log: Path) -> Iterator[str]:
    port = free_port()
    with log.open("wb") as out:
        moto = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", address, "-p", str(port)],
            stdout=out, stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
        )  # fmt: skip
    endpoint = f"http://{address}:{port}"

    try:
        up = answers(f"{endpoint}/moto-api/", moto, log, ok=lambda status: status < 500)
        wait_until(up, 60, "moto start", interval=0.2)
        yield endpoint
    finally:
        moto.terminate()
        moto.wait(timeout=30)


def _start_on(c: Cluster, host: Host) -> None:
    """A worker inside `host`: its HOME, DIFFII_HOME and scratch on the host's own /tmp."""
    env = {k: v for k, v in c.env.items() if k != "DIFFII_WORK_DIR"}
    env.update(
        HOME="/tmp/home", TMPDIR="/tmp", DIFFII_HOME="/tmp/home/diffii", DIFFII_SHARD_SIZE="2",
        DIFFII_BATCH_SIZE="2", DIFFII_TEST_FAULTS="delay:generate:0.3", DIFFII_PRELOAD_MODELS='["tiny"]',
    )  # fmt: skip
    celery = [
        sys.executable, "-m", "celery", "-A", "tests.fault_worker", "worker", "--pool=prefork",
        "--concurrency=1", f"--queues={c.env['DIFFII_QUEUE']}", f"--hostname={host.name}@%h",
        "--without-gossip", "--without-mingle", "--loglevel=info",
    ]  # fmt: skip
    c._spawn(f"worker-{host.name}", host.argv(celery), env)


def _archive(c: Cluster, key: str, job_id: str) -> dict[str, bytes]:
    job = c.wait_job(key, job_id)
    assert job["status"] == "succeeded", f"{job}\n{c.logs()}"
    with c.http() as client:
        redirect = client.get(f"/v1/jobs/{job_id}/archive", headers=auth(key))
    assert redirect.status_code == 307, redirect.text
    with zipfile.ZipFile(io.BytesIO(httpx.get(redirect.headers["location"], timeout=60).content)) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def _without_job_id(job_json: bytes) -> bytes:
    import json

    doc = json.loads(job_json)
    doc.pop("job_id")
    return json.dumps(doc, sort_keys=True).encode()


def _reaches(host: Host, address: str, port: int) -> bool:
    probe = f"import socket; socket.create_connection(({address!r}, {port}), timeout=3)"
    return subprocess.run(host.argv([sys.executable, "-c", probe]), capture_output=True).returncode == 0


def test_two_hosts_share_a_jobs_shards_and_make_the_one_worker_archive(
    network: Network, make_pg_database: Callable[[], str], tmp_path: Path
) -> None:
    a, b = network.add_host("diffii-host-a"), network.add_host("diffii-host-b")
    with contextlib.ExitStack() as stack:
        redis = PrivateRedis(tmp_path / "redis", host=network.address)
        stack.callback(redis.close)
        database = make_url(make_pg_database())  # on the machine's Postgres, behind a proxy
        pg_port = database.port or 5432
        postgres = TcpProxy(pg_port, host=network.address)
        stack.callback(postgres.down)
        endpoint = stack.enter_context(_moto(network.address, tmp_path / "moto.log"))
        bucket: dict[str, Any] = {
            "storage": "s3", "s3_endpoint_url": endpoint, "s3_bucket": f"hosts-{uuid.uuid4().hex[:12]}",
            "s3_addressing_style": "path", "s3_access_key_id": "testing", "s3_secret_access_key": "testing",
            "s3_region": "us-east-1",
        }  # fmt: skip
        from services.common.storage_s3 import S3Storage

        S3Storage(**s3_storage_kwargs(bucket)).ensure()

        behind_proxy = database.set(host=network.address, port=postgres.port).render_as_string(False)
        (tmp_path / "cluster").mkdir()
        c = stack.enter_context(make_cluster(lambda: behind_proxy, redis.url, bucket, tmp_path / "cluster"))
        for name in ("DIFFII_DATABASE_URL", "DIFFII_BROKER_URL", "DIFFII_S3_ENDPOINT_URL"):
            assert f"//{network.address}:" in c.env[name] or f"@{network.address}:" in c.env[name], name
        # Inside a host only the veth address answers: loopback is down, the host's Postgres unseen.
        assert _reaches(a, network.address, postgres.port)
        assert not _reaches(a, "127.0.0.1", pg_port)

        c.start_api()
        key = c.new_key()
        dataset_id = c.upload_sample(key)
        _start_on(c, a)
        alone = _archive(c, key, c.submit(key, dataset_id, **SMALL_JOB))  # the one-worker run
        _start_on(c, b)
        shared_id = c.submit(key, dataset_id, **SMALL_JOB)
        shared = _archive(c, key, shared_id)

        with c.sessions() as s:
            workers = s.scalars(
                select(Shard.worker).where(Shard.job_id == shared_id, Shard.kind == ShardKind.generate)
            ).all()
        ran_on = {w.split(":")[0] for w in workers if w}
        assert ran_on == {a.name, b.name}, f"generate shards ran on {ran_on}\n{c.logs()}"

    assert sum(name.endswith(".png") for name in shared) == EXPECTED_IMAGES // 2
    assert shared.keys() == alone.keys()
    differ = [n for n in shared if n != "job.json" and shared[n] != alone[n]]
    assert not differ, differ
    assert _without_job_id(shared["job.json"]) == _without_job_id(alone["job.json"])
