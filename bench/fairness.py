"""Fair share between owners, on real Postgres, Redis and Celery worker processes.

Three phases, each figure B's (another owner's) job time over its time alone on the same idle
service (target <= 1.5):

1. flood: owner A floods N small jobs (default 50), then B submits one (an 8 s job alone here);
2. mass cancel: B submits a second job and A cancels all its jobs at once; B's time from submit, and
   the time from the cancel to B's next shard starting (target < 5 s);
3. long learning: A submits one job per worker, each with a long concept-learning stage (default
   600 steps, 30 s), and once they all learn, a fourth owner D submits the small job. Learning runs
   in slices of `--learn-slice` seconds (DIFFII_LEARN_SLICE_SECONDS), each a shard of its own, so D
   waits for a slice to end, not for a whole learning run; then A's long jobs are cancelled and the
   time until all of them are `cancelled` is printed.

    .venv/bin/python bench/fairness.py [--jobs 50] [--workers 4] [--per-image 0.5] [--shard-size 5]
        [--learn-slice 2] [--per-step 0.05] [--long-steps 600]
        [--pg-admin-url postgresql://postgres@127.0.0.1:5432/postgres] [--broker-url redis://...]

B's time alone is measured on a third owner's account (C, the same job), since under fair share the work
B had done itself would count against B. Fair share orders owners by the worker time they used in
`DIFFII_FAIR_SHARE_WINDOW_SECONDS`, so B, who has used none, takes every slot that frees; what B still
pays is the wait for the first slots to free, up to one shard's run time, as nothing is preempted.
The shard size and the learning slice are therefore fair share's time slices: at the bench's default
of 5 images (2.5 s of simulated compute a shard) B's job spreads over every worker alone and waits
little for a slot; with `--shard-size 200` (a whole class a shard, 10 s here against B's 12 s job) the
first wait is most of the difference, and with `--learn-slice 0` (learning in one shard) D waits for a
whole learning run. Each shard's admission, start and end are printed for B's and D's runs.

Compute is simulated (tests/fault_worker.py `simulate:generate` and `simulate:learn`: each image and
each optimiser step a fixed sleep), so what is measured is the scheduling: prepare and package run for
real on the tiny model. Each run uses a fresh Postgres database (dropped at the end) and a queue of its
own on the broker.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from load_scale import SIM_PARAMS, Service
from processes import ROOT  # noqa: F401 - puts this tree on sys.path before load_scale's imports

from services.common.statuses import TERMINAL_JOB_STATUSES


def timeline(database_url: str, job_id: str) -> list[str]:
    """One line per shard of the job: kind, and seconds from the job's creation to its shard's
    admission, start and end (where B's time goes)."""
    from sqlalchemy import select

    from services.common.db import dispose, make_session_factory
    from services.common.models import Job, Shard
    from services.common.timeutil import as_utc

    sessions = make_session_factory(database_url)
    try:
        with sessions() as s:
            created = as_utc(s.get(Job, job_id).created_at)
            rows = s.execute(
                select(Shard.kind, Shard.enqueued_at, Shard.started_at, Shard.finished_at)
                .where(Shard.job_id == job_id)
                .order_by(Shard.seq)
            ).all()

            def at(t: datetime | None) -> str:
                return "-" if t is None else f"{(as_utc(t) - created).total_seconds():6.2f}"

            return [f"{k.value:<9} admitted {at(a)} started {at(b)} ended {at(c)}" for k, a, b, c in rows]
    finally:
        dispose(sessions)


def shard_starts(database_url: str, job_id: str) -> list[datetime]:
    from sqlalchemy import select

    from services.common.db import dispose, make_session_factory
    from services.common.models import Shard
    from services.common.timeutil import as_utc

    sessions = make_session_factory(database_url)
    try:
        with sessions() as s:
            rows = s.scalars(
                select(Shard.started_at).where(Shard.job_id == job_id, Shard.started_at.is_not(None))
            )
            return sorted(as_utc(t) for t in rows)
    finally:
        dispose(sessions)


class Owner:
    def __init__(self, svc: Service) -> None:
        self.svc = svc
        # Idle connections dropped before uvicorn's 5 s keep-alive ends: a request never goes out on a
        # socket the server is closing (a "connection reset" between the phases).
        self.client = httpx.Client(
            base_url=svc.url,
            headers={"Authorization": f"Bearer {svc.key()}"},
            timeout=60,
            limits=httpx.Limits(keepalive_expiry=2),
        )
        self.dataset = self._upload()

    def _upload(self) -> str:
        from diffii_core.sample_data import write_sample_archive

        archive = write_sample_archive(self.svc.tmp / f"sample-{uuid.uuid4().hex[:6]}.zip")
        with archive.open("rb") as fp:
            r = self.client.post("/v1/datasets", files={"file": ("d.zip", fp)})
        r.raise_for_status()
        return r.json()["id"]

    def submit(self, **params: Any) -> str:
        r = self.client.post("/v1/jobs", json={**SIM_PARAMS, **params, "dataset_id": self.dataset})
        if r.status_code != 202:
            raise SystemExit(f"submit answered {r.status_code}: {r.text}")
        return r.json()["id"]

    def wait(self, job_id: str, timeout: float = 1800) -> tuple[dict[str, Any], float]:
        """The ended job and the monotonic time it was seen ended (polled every 0.2 s)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.client.get(f"/v1/jobs/{job_id}").json()
            if job["status"] in TERMINAL_JOB_STATUSES:
                return job, time.monotonic()
            time.sleep(0.2)
        raise SystemExit(f"job {job_id} did not end within {timeout:g} s")

    def run_one(self) -> tuple[str, float]:
        began = time.monotonic()
        job, ended = self.wait(self.submit())
        if job["status"] != "succeeded":
            raise SystemExit(f"job {job['status']}: {job.get('message')}")
        return job["id"], ended - began


def measure(args: argparse.Namespace, database_url: str, tmp: Path) -> dict[str, Any]:
    extra = {
        "DIFFII_MAX_ACTIVE_JOBS": str(args.jobs + args.workers + 10),
        "DIFFII_LEARN_SLICE_SECONDS": str(args.learn_slice),
    }
    if args.shard_size:
        extra["DIFFII_SHARD_SIZE"] = str(args.shard_size)
    svc = Service(tmp, database_url, args.broker_url, extra)
    try:
        svc.start_api()
        faults = f"simulate:generate:{args.per_image};simulate:learn:{args.per_step}"
        svc.start_workers(args.workers, faults=faults)
        # B's time alone is measured by an owner of its own (C, the same job): under fair share, work
        # B had done itself would count against B.
        a, b, c = Owner(svc), Owner(svc), Owner(svc)
        alone_job, alone = c.run_one()

        # 1. A's flood of small jobs, then B's.
        with ThreadPoolExecutor(8) as pool:
            flood = list(pool.map(lambda _: a.submit(), range(args.jobs)))
        time.sleep(args.head_start)  # A's jobs occupy every worker before B arrives
        shared_job, shared = b.run_one()

        # 2. B submits again and A cancels everything at once.
        submitted = time.monotonic()
        second = b.submit()
        cancel_at = datetime.now(UTC)
        began = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda j: a.client.post(f"/v1/jobs/{j}/cancel").status_code, flood))
        cancel_seconds = time.monotonic() - began
        job, second_ended = b.wait(second)
        if 500 in answers:  # the service's own account of a server error, before its logs are removed
            for log in sorted(svc.tmp.glob("*.log")):
                text = log.read_text(errors="replace")
                if "Traceback" in text:
                    print(f"--- {log.name}\n{text[text.index('Traceback') :][:6000]}", file=sys.stderr)
        after = [t for t in shard_starts(database_url, second) if t >= cancel_at]
        to_next = (after[0] - cancel_at).total_seconds() if after else None
        after_cancel = second_ended - submitted
        for j in flood:  # every flooded job ended (cancelled), so the next phase starts on idle workers
            a.wait(j)

        # 3. A's long-learning jobs hold every worker; then a new owner D's small job.
        d = Owner(svc)
        steps = {"concepts": {"steps": args.long_steps}}
        long_jobs = [a.submit(**steps) for _ in range(args.workers)]
        deadline = time.monotonic() + 120
        while not all(a.client.get(f"/v1/jobs/{j}").json()["status"] == "learning" for j in long_jobs):
            if time.monotonic() > deadline:
                raise SystemExit("A's long jobs did not all start learning within 120 s")
            time.sleep(0.2)
        time.sleep(args.head_start)
        long_job, with_long = d.run_one()
        learned = [a.client.get(f"/v1/jobs/{j}").json()["progress"]["learning"] for j in long_jobs]
        began = time.monotonic()
        for j in long_jobs:
            a.client.post(f"/v1/jobs/{j}/cancel")
        ended = [a.wait(j)[0]["status"] for j in long_jobs]
        long_cancel = time.monotonic() - began
        return {
            "jobs_flooded": args.jobs,
            "workers": args.workers,
            "shard_size": args.shard_size,
            "learn_slice_s": args.learn_slice,
            "b_alone_s": round(alone, 2),
            "b_with_flood_s": round(shared, 2),
            "ratio": round(shared / alone, 3),
            "mass_cancel_requests_s": round(cancel_seconds, 2),
            "cancel_answers": {str(c): answers.count(c) for c in sorted(set(answers))},
            "cancel_to_b_next_shard_s": round(to_next, 2) if to_next is not None else None,
            "b_after_mass_cancel_s": round(after_cancel, 2),
            "ratio_after_cancel": round(after_cancel / alone, 3),
            "b_second_job": job["status"],
            "long_learning_s": round(args.long_steps * args.per_step, 2),
            "d_with_long_learning_s": round(with_long, 2),
            "ratio_long": round(with_long / alone, 3),
            "long_jobs_learning_when_d_ended": [f"{x['step']}/{x['steps']}" if x else None for x in learned],
            "long_jobs_cancel_s": round(long_cancel, 2),
            "long_jobs_after_cancel": {s: ended.count(s) for s in sorted(set(ended))},
            "b_alone_shards": timeline(database_url, alone_job),
            "b_with_flood_shards": timeline(database_url, shared_job),
            "d_with_long_learning_shards": timeline(database_url, long_job),
        }
    finally:
        svc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=50, help="jobs owner A floods")
    parser.add_argument("--workers", type=int, default=4, help="worker processes (solo pool, one slot each)")
    parser.add_argument("--per-image", type=float, default=0.5, help="simulated seconds per image")
    parser.add_argument("--shard-size", type=int, default=5, help="DIFFII_SHARD_SIZE")
    parser.add_argument("--head-start", type=float, default=3.0, help="seconds A's flood runs before B")
    parser.add_argument("--learn-slice", type=float, default=2.0, help="DIFFII_LEARN_SLICE_SECONDS (0: one)")
    parser.add_argument("--per-step", type=float, default=0.05, help="simulated seconds per learning step")
    parser.add_argument("--long-steps", type=int, default=600, help="learning steps of A's long jobs")
    parser.add_argument("--pg-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--broker-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import psycopg

    name = f"diffii_bench_fair_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(args.pg_admin_url, autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    base = args.pg_admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        with tempfile.TemporaryDirectory(prefix="diffii-fair-") as tmp:
            figures = measure(args, f"{base}/{name}", Path(tmp))
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
    if args.json:
        print(json.dumps(figures))
        return
    for key, value in figures.items():
        if isinstance(value, list):
            print(f"{key}:", *(f"  {line}" for line in value), sep="\n")
        else:
            print(f"{key:28s} {value}")
    alone = figures["b_alone_s"]
    print(f"B's {alone} s job with A's flood / alone: {figures['ratio']} (target <= 1.5)")
    after = figures["ratio_after_cancel"]
    print(f"B's {alone} s job right after A's mass cancel / alone: {after} (target <= 1.5)")
    print(f"mass cancel -> B's next shard starts: {figures['cancel_to_b_next_shard_s']} s (target < 5)")
    print(
        f"D's {alone} s job behind {figures['workers']} jobs learning {figures['long_learning_s']} s each, "
        f"in {figures['learn_slice_s']} s slices / alone: {figures['ratio_long']} (target <= 1.5)"
    )
    sys.exit(0)


if __name__ == "__main__":
    main()
