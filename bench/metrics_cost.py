"""What a /metrics scrape costs the API, with its database figures queried on every scrape (before:
DIFFII_METRICS_CACHE_SECONDS=0) and reused within the cache window (after: the default, 10 s).

The app runs in-process over a state database seeded with jobs and shards (the embedded SQLite by
default, or --database-url postgresql+psycopg://...), and the scrapes come one after another, as a
scraper or a caller in a loop would send them. Prints milliseconds per scrape and database
statements per scrape for both.

    .venv/bin/python bench/metrics_cost.py [--jobs 5000] [--scrapes 200] [--database-url URL]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import event  # noqa: E402

from services.api.app import create_app  # noqa: E402
from services.api.settings import ApiSettings  # noqa: E402
from services.common.db import dispose, make_session_factory, session_scope  # noqa: E402
from services.common.migrate import upgrade_to_head  # noqa: E402
from services.common.models import Job, JobStatus, Owner, Shard, ShardKind, ShardStatus  # noqa: E402


def seed(url: str, jobs: int) -> None:
    factory = make_session_factory(url)
    statuses = list(JobStatus)
    with session_scope(factory) as session:
        owner = Owner(name=f"bench-{time.time_ns()}")
        session.add(owner)
        session.flush()
        for i in range(jobs):
            job = Job(owner_id=owner.id, params={}, status=statuses[i % len(statuses)])
            session.add(job)
            session.flush()
            session.add_all(
                Shard(job_id=job.id, seq=s, kind=ShardKind.generate, status=list(ShardStatus)[(i + s) % 4])
                for s in range(4)
            )
    dispose(factory)


def scrape(settings: ApiSettings, scrapes: int) -> tuple[float, float]:
    """(median ms per scrape, database statements per scrape)."""
    client = TestClient(create_app(settings), client=("127.0.0.1", 50000))
    statements = 0

    def count(*_args: Any) -> None:
        nonlocal statements
        statements += 1

    with client:
        engine = client.app.state.session_factory.kw["bind"]  # type: ignore[attr-defined]
        assert client.get("/metrics").status_code == 200  # warm: connections, first query
        event.listen(engine, "before_cursor_execute", count)
        times = []
        for _ in range(scrapes):
            start = time.perf_counter()
            response = client.get("/metrics")
            times.append(time.perf_counter() - start)
            assert response.status_code == 200
        event.remove(engine, "before_cursor_execute", count)
    return statistics.median(times) * 1000, statements / scrapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000, help="jobs seeded (4 shards each)")
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--database-url", default=None, help="default: a fresh embedded SQLite file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{tmp}/diffii.db"
        upgrade_to_head(url)
        seed(url, args.jobs)
        base: dict[str, Any] = {"home": Path(tmp) / "home", "database_url": url, "rate_limit_per_second": 0}
        print(f"/metrics over {args.jobs:,} jobs and {4 * args.jobs:,} shards ({url.split(':')[0]}), "
              f"{args.scrapes} scrapes in a row")  # fmt: skip
        for label, cache in (("before (cache 0 s) ", 0.0), ("after (cache 10 s) ", 10.0)):
            settings = ApiSettings(_env_file=None, metrics_cache_seconds=cache, **base)  # type: ignore[call-arg]
            ms, statements = scrape(settings, args.scrapes)
            print(f"  {label}: {ms:7.2f} ms per scrape, {statements:5.2f} database statements per scrape")


if __name__ == "__main__":
    main()
