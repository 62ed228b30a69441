"""The same job through the service and through `diffii augment` in one process.

Prints the end-to-end wall-time ratio (service / in-process; the target is <= 1.2 for a job whose
compute takes at least a minute) and the time from submission to the first shard running.

    .venv/bin/python bench/service.py                 # quick: a few seconds of compute
    .venv/bin/python bench/service.py --size full     # >= 1 minute of compute (the ratio figure)
    .venv/bin/python bench/service.py --database-url postgresql+psycopg://... --broker-url redis://...
    .venv/bin/python bench/service.py --upload-gb 1   # only the API's memory during a 1 GiB upload
                                                      # (bench/upload.py; target < 100 MB above idle)

Load and scale (bench/load_scale.py; both need --database-url and --broker-url):

    .venv/bin/python bench/service.py --load --rate 200 --seconds 30 ...   # status-poll p50/p99
    .venv/bin/python bench/service.py --scale --workers 1,2,4,8 ...        # scale-out efficiency

The service runs as `diffii up` (API + one worker + sweep) in a fresh DIFFII_HOME: embedded SQLite,
SQLite broker and local storage by default, or real Postgres/Redis when given. Service start-up
(model preload) is not timed: a service is already running when users submit. Both sides load the
dataset, learn concepts, invert and generate the same images; `diffii augment` also loads its model.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import httpx
from processes import CLI, ROOT, create_key, free_port, wait_http

from services.common.pdeathsig import die_with_parent  # processes put this tree on sys.path
from services.common.statuses import TERMINAL_JOB_STATUSES

SIZES = {
    # expansion, concept steps, inference steps, inversion steps
    "quick": (2.0, 30, 25, 50),
    "full": (20.0, 400, 25, 50),
}


def job_options(args: argparse.Namespace) -> dict[str, object]:
    expansion, steps, inference, inversion = SIZES[args.size]
    return {
        "model": "tiny",
        "seed": 0,
        "expansion": args.expansion or expansion,
        "concept_steps": args.concept_steps or steps,
        "inference_steps": args.inference_steps or inference,
        "inversion_steps": args.inversion_steps or inversion,
    }


def run_augment(dataset: Path, out: Path, opts: dict[str, object], env: dict[str, str]) -> float:
    argv = [sys.executable, "-c", CLI, "augment", str(dataset), "--out", str(out), "--quiet"]
    for name, value in opts.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    began = time.monotonic()
    subprocess.run(argv, env=env, cwd=ROOT, check=True)
    return time.monotonic() - began


def run_service(dataset: Path, out: Path, opts: dict[str, object], env: dict[str, str], home: Path) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (home / "up.log").open("wb")
    up = subprocess.Popen(
        [sys.executable, "-c", CLI, "up", "--port", str(port)],
        env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        preexec_fn=die_with_parent,  # a killed bench leaves no `diffii up` behind
    )  # fmt: skip
    try:
        wait_http(f"{url}/readyz", up, home / "up.log")
        # Wait for the worker's model preload too: submissions meet a running worker.
        deadline = time.monotonic() + 180
        while b"task process ready" not in (home / "up.log").read_bytes():
            if time.monotonic() > deadline:
                raise SystemExit("the worker did not start")
            time.sleep(0.3)
        key = create_key(env)
        headers = {"Authorization": f"Bearer {key}"}
        body = {k: v for k, v in opts.items() if k != "concept_steps"}
        body["concepts"] = {"steps": opts["concept_steps"]}

        archive = home / "upload.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            for file in sorted(p for p in dataset.rglob("*") if p.is_file()):
                zf.write(file, file.relative_to(dataset).as_posix())
        with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
            began = time.monotonic()
            with archive.open("rb") as fp:
                dataset_id = client.post("/v1/datasets", files={"file": ("d.zip", fp)}).json()["id"]
            submitted = time.monotonic()
            job = client.post("/v1/jobs", json={**body, "dataset_id": dataset_id}).json()
            first_running = None
            while job["status"] not in TERMINAL_JOB_STATUSES:
                time.sleep(0.1)
                job = client.get(f"/v1/jobs/{job['id']}").json()
                if first_running is None and job["status"] != "queued":
                    first_running = time.monotonic() - submitted
            if job["status"] != "succeeded":
                raise SystemExit(f"job {job['status']}: {job.get('message')}")
            location = client.get(f"/v1/jobs/{job['id']}/archive", follow_redirects=False).headers["location"]
            with httpx.stream("GET", location, timeout=120) as r, out.open("wb") as fp:
                for chunk in r.iter_bytes():
                    fp.write(chunk)
            total = time.monotonic() - began
        first, first_generate = shard_start_delays(env, job["id"])
        return {
            "seconds": total,
            "first_shard_running": first if first is not None else first_running,
            "first_generate": first_generate,
            "job": job,
        }
    finally:
        os.killpg(up.pid, signal.SIGTERM)
        up.wait(timeout=60)
        log.close()


def shard_start_delays(env: dict[str, str], job_id: str) -> tuple[float | None, float | None]:
    """From the job's creation to its first shard running, and to its first generate shard running,
    as the database recorded them (no polling delay in the figure)."""
    from sqlalchemy import select

    from services.common.db import dispose, make_session_factory
    from services.common.models import Job, Shard, ShardKind
    from services.common.settings import CommonSettings
    from services.common.timeutil import as_utc

    sessions = make_session_factory(CommonSettings(_env_file=None, **_settings_from(env)))
    try:
        with sessions() as s:
            job = s.get(Job, job_id)
            shards = list(s.scalars(select(Shard).where(Shard.job_id == job_id)))
            created = as_utc(job.created_at)
            starts = [(sh.kind, as_utc(sh.started_at)) for sh in shards if sh.started_at]
            first = min((t for _, t in starts), default=None)
            gen = min((t for k, t in starts if k == ShardKind.generate), default=None)
            return (
                (first - created).total_seconds() if first else None,
                (gen - created).total_seconds() if gen else None,
            )
    finally:
        dispose(sessions)


def _settings_from(env: dict[str, str]) -> dict[str, str]:
    names = {"DIFFII_HOME": "home", "DIFFII_DATABASE_URL": "database_url"}
    return {field: env[var] for var, field in names.items() if var in env}


def count_images(path: Path) -> int:
    with zipfile.ZipFile(path) as zf:
        return sum(1 for n in zf.namelist() if n.endswith(".png"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="quick")
    parser.add_argument("--expansion", type=float)
    parser.add_argument("--concept-steps", type=int)
    parser.add_argument("--inference-steps", type=int)
    parser.add_argument("--inversion-steps", type=int)
    parser.add_argument("--database-url", help="real Postgres instead of the embedded SQLite")
    parser.add_argument("--broker-url", help="real Redis instead of the embedded SQLite broker")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--upload-gb", type=float, help="instead: the API's peak memory while an archive this large uploads"
    )
    parser.add_argument("--load", action="store_true", help="status-poll latency under a fixed request rate")
    parser.add_argument("--rate", type=float, default=200.0, help="--load: requests per second")
    parser.add_argument("--seconds", type=float, default=30.0, help="--load: duration")
    parser.add_argument(
        "--api-workers", type=int, default=1, help="--load: uvicorn processes (serve --workers)"
    )
    parser.add_argument("--scale", action="store_true", help="scale-out efficiency on simulated compute")
    parser.add_argument("--workers", default="1,2,4,8", help="--scale: worker counts")
    parser.add_argument(
        "--scale-expansion",
        type=float,
        default=20,
        help="--scale: images per sample image (20: 240 images, 120 shards of 2; at 5, 31 shards on 8 "
        "workers need 4 rounds for 3.9 rounds of work, a ceiling of 0.94 before any overhead)",
    )
    parser.add_argument("--per-image", type=float, default=0.5, help="--scale: simulated seconds per image")
    args = parser.parse_args()
    if args.upload_gb:
        import upload

        with tempfile.TemporaryDirectory(prefix="diffii-bench-upload-") as tmp:
            figures = upload.measure(args.upload_gb, Path(tmp))
        if args.json:
            print(json.dumps(figures, indent=2))
        else:
            upload.report(figures)
        return
    if args.load or args.scale:
        return load_and_scale(args, parser)

    from diffii_core.sample_data import write_sample_dataset

    opts = job_options(args)
    with tempfile.TemporaryDirectory(prefix="diffii-bench-") as tmp_name:
        tmp = Path(tmp_name)
        dataset = write_sample_dataset(tmp / "sample")
        env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFII_")}
        env["DIFFII_HOME"] = str(tmp / "home")
        if args.database_url:
            env["DIFFII_DATABASE_URL"] = args.database_url
        if args.broker_url:
            env["DIFFII_BROKER_URL"] = args.broker_url
        (tmp / "home").mkdir()

        in_process = run_augment(dataset, tmp / "augment.zip", opts, env)
        service = run_service(dataset, tmp / "service.zip", opts, env, tmp / "home")
        images = count_images(tmp / "service.zip")
        assert images == count_images(tmp / "augment.zip"), "the two runs made different image counts"

    figures = {
        "job": opts,
        "images": images,
        "augment_seconds": round(in_process, 2),
        "service_seconds": round(service["seconds"], 2),
        "ratio": round(service["seconds"] / in_process, 3),
        "submission_to_first_shard_running_seconds": round(service["first_shard_running"] or 0.0, 3),
        "submission_to_first_generate_seconds": round(service["first_generate"] or 0.0, 3),
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"job: {opts} -> {images} images")
    rows = [
        ("diffii augment (one process)", figures["augment_seconds"], "s"),
        ("service (upload -> archive in hand)", figures["service_seconds"], "s"),
        ("wall-time ratio service/augment", figures["ratio"], "(target <= 1.2, >= 1 min compute)"),
        ("submission -> first shard running", figures["submission_to_first_shard_running_seconds"], "s"),
        ("submission -> first generate shard", figures["submission_to_first_generate_seconds"], "s"),
    ]
    for label, value, unit in rows:
        print(f"{label + ':':38s}{value:9.3f} {unit}")


def load_and_scale(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if not (args.database_url and args.broker_url):
        parser.error("--load and --scale need --database-url and --broker-url (Postgres and Redis)")
    sys.path.insert(0, str(ROOT))
    from bench.load_scale import run_load, run_scale

    if args.load:
        figures = run_load(args.database_url, args.broker_url, args.rate, args.seconds, args.api_workers)
        print(
            f"status poll at {args.rate:g}/s for {args.seconds:g}s while a job runs "
            f"({args.api_workers} API process{'es' if args.api_workers > 1 else ''}): "
            f"achieved {figures['achieved_rate']}/s, errors {figures['errors']} {figures['failures'] or ''}, "
            f"p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms (target p99 < 50 ms), "
            f"API CPU {figures['api_cpu_ms']} ms a poll"
        )
    if args.scale:
        counts = [int(n) for n in args.workers.split(",")]
        for row in run_scale(
            args.database_url, args.broker_url, args.per_image, counts, args.scale_expansion
        ):
            print(
                f"{row['workers']} workers: {row['images']} images in {row['shards']} shards x "
                f"{args.per_image:g}s, generate phase {row['generate_wall_s']}s (ideal {row['ideal_s']}s), "
                f"efficiency {row['efficiency']} (the shards' best schedule: {row['ceiling']})"
                + ("  (target >= 0.9)" if row["workers"] == 8 else "")
            )


if __name__ == "__main__":
    main()
