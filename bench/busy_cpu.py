"""`make demo` on a CPU another process keeps busy: its time alone, then beside single-threaded busy
loops (one by default: one core of a two-core machine taken), and the ratio (target: at most 1.5).

    python bench/busy_cpu.py                      # bash scripts/demo.sh, alone then beside one busy loop
    python bench/busy_cpu.py --rivals 2 --suite tests/core   # and the time of a test run, both ways
    python bench/busy_cpu.py --dry-run            # what it would run, running nothing
    python bench/busy_cpu.py --command "python -c 'sum(range(10**7))'"  # a short smoke of the bench

The demo's own figure ("the job took N s", submission to downloaded archive) is compared when the
command prints it, else the command's wall time. The threads the worker picks (diffii_core.threads)
are what is measured: the environment's OMP_NUM_THREADS / DIFFII_THREADS are removed unless --keep-env.
Before diffii_core.threads, the issue measured 111 s alone and no end after 15 minutes beside one loop.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUSY = "while True: pass"
JOB_TIME = re.compile(r"the job took (\d+(?:\.\d+)?) s")
THREAD_SETTINGS = ("OMP_NUM_THREADS", "DIFFII_THREADS", "MKL_NUM_THREADS")


def _env(keep: bool) -> dict[str, str]:
    env = dict(os.environ)
    if not keep:
        for name in THREAD_SETTINGS:
            env.pop(name, None)
    return env


def timed(command: list[str], env: dict[str, str], rivals: int, timeout: float) -> tuple[float, float | None]:
    """(wall seconds, the job's own seconds if printed) of `command` beside `rivals` busy loops."""
    loops = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(rivals)]
    try:
        time.sleep(0.5 if rivals else 0)  # the loops are running before the command starts
        began = time.monotonic()
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        wall = time.monotonic() - began
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-3000:]
        raise SystemExit(f"{shlex.join(command)} failed ({done.returncode}):\n{tail}")
    found = JOB_TIME.findall(done.stdout + done.stderr)
    return wall, float(found[-1]) if found else None


def compare(name: str, command: list[str], env: dict[str, str], rivals: int, timeout: float) -> float:
    alone_wall, alone_job = timed(command, env, 0, timeout)
    beside_wall, beside_job = timed(command, env, rivals, timeout)
    own = alone_job is not None and beside_job is not None
    alone, beside = (alone_job, beside_job) if own else (alone_wall, beside_wall)
    assert alone is not None and beside is not None
    what = "job time" if own else "wall time"
    ratio = beside / alone if alone > 0 else float("inf")
    print(
        f"{name}: {what} alone {alone:.1f} s, beside {rivals} busy process(es) {beside:.1f} s,"
        f" ratio {ratio:.2f}"
    )
    if own:
        print(f"{name}: wall time alone {alone_wall:.1f} s, beside {beside_wall:.1f} s")
    return ratio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--command", default="bash scripts/demo.sh", help="what to time (default: make demo's)"
    )
    parser.add_argument("--rivals", type=int, default=1, help="single-threaded busy loops beside it")
    parser.add_argument("--suite", help="also time `python -m pytest -q` with these arguments, both ways")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds one run may take")
    parser.add_argument("--target", type=float, default=1.5, help="the ratio to stay under")
    parser.add_argument("--keep-env", action="store_true", help="keep OMP_NUM_THREADS / DIFFII_THREADS")
    parser.add_argument("--dry-run", action="store_true", help="print the runs, run nothing")
    args = parser.parse_args(argv)

    env = _env(args.keep_env)
    runs = [
        ("demo" if args.command == parser.get_default("command") else "command", shlex.split(args.command))
    ]
    if args.suite:
        runs.append(
            (
                "test suite",
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *shlex.split(args.suite)],
            )
        )
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{cpus} CPUs; each run alone, then beside {args.rivals} x `python -c {BUSY!r}`")
    if args.dry_run:
        for name, command in runs:
            print(f"would time {name}: {shlex.join(command)} (in {ROOT})")
        return 0
    worst = max(compare(name, command, env, args.rivals, args.timeout) for name, command in runs)
    verdict = "within" if worst <= args.target else "OVER"
    print(f"worst ratio {worst:.2f}: {verdict} the target of {args.target:g}")
    return 0 if worst <= args.target else 1


if __name__ == "__main__":
    raise SystemExit(main())
