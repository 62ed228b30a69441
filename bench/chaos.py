"""Fault scenarios on real components (private Postgres and Redis, moto's S3 behind a proxy, Celery
workers in their own processes), one job each, compared with an undisturbed run.

    PYTHONPATH=. .venv/bin/python bench/chaos.py [--only postgres_restart,s3_down_30s]

Prints per scenario: jobs run, completed, lost, duplicated and changed images, and the seconds from
healing the fault to the job's next stored image (for `up_sigkill_mid_learning`, from the kill to the
learn shard running again); the last line is `chaos: N scenarios, lost=L duplicated=D failed=F`.
Scenarios that bring their own services (`diffii up`) skip the shared stack when run alone.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.chaos.scenarios import SCENARIOS, STANDALONE, Outcome, Stack, stack  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="comma-separated scenarios (default: all)")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or list(SCENARIOS)
    unknown = sorted(set(names) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}")
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="diffii-chaos-") as tmp, contextlib.ExitStack() as hold:
        s: Stack | None = None
        if not set(names) <= set(STANDALONE):
            s = hold.enter_context(stack(Path(tmp)))
            print(f"reference run: {len(s.reference)} stored objects", flush=True)
        for name in names:
            began = time.monotonic()
            try:
                outcome = STANDALONE[name](Path(tmp)) if s is None else SCENARIOS[name](s)
            except Exception as exc:  # a scenario that crashes counts as failed, the others still run
                outcome = Outcome(name, detail=f"{type(exc).__name__}: {exc}")
            outcomes.append(outcome)
            recover = "-" if outcome.recover_s is None else f"{outcome.recover_s:.1f}s"
            print(
                f"{name:28s} jobs={outcome.jobs} completed={outcome.completed} lost={outcome.lost} "
                f"duplicated={outcome.duplicated} changed={outcome.changed} recover={recover} "
                f"({time.monotonic() - began:.0f}s)",
                flush=True,
            )
            if outcome.failed and outcome.detail:
                print("  " + outcome.detail[-1500:].replace("\n", "\n  "), flush=True)
    lost = sum(o.lost for o in outcomes)
    duplicated = sum(o.duplicated for o in outcomes)
    failed = sum(1 for o in outcomes if o.failed)
    print(f"chaos: {len(outcomes)} scenarios, lost={lost} duplicated={duplicated} failed={failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
