"""Threads that fit the CPU this process may really use, and that sleep rather than spin.

torch sizes its intra-op pool from the machine's core count, which overstates what a process in a
container with a CPU limit (cgroup quota) or pinned to some cores (affinity) gets; and its OpenMP
threads busy-wait between parallel regions. Beside one other busy process on two cores, that made
`make demo` crawl (concept learning unfinished after 15 minutes, 120 s with one thread). So:

- `quiet_openmp()` asks OpenMP to wait passively (OMP_WAIT_POLICY=PASSIVE, GOMP_SPINCOUNT=0,
  KMP_BLOCKTIME=0), unless the user set those. OpenMP reads them when torch loads it, so the
  processes' entries (the `diffii` command, the Celery app) call it before torch is imported; child
  processes inherit it.
- `thread_count()` is the CPUs the process may use (affinity, then the cgroup v2 `cpu.max` or v1
  `cpu.cfs_quota_us` quota of its cgroup and every parent, rounded up), shared among `share`
  processes (a worker's task processes). An explicit DIFFII_THREADS=N, else OMP_NUM_THREADS, wins.
  With DIFFII_THREADS=fit-load it also leaves the cores other processes keep busy right now
  (runnable tasks in /proc/loadavg, the least of a few samples, scaled to the CPUs this process may
  use), for everything but concept learning (below).
- `configure_threads()` sets torch's intra-op threads to it; the worker calls it in each task
  process, and model loading calls `ensure_threads()` (once per process) for the CLI and library.
- `learning_threads()` holds concept learning at the process's usable CPUs (or the explicit setting)
  whatever the share or the load: on CPU the thread count changes the last bits of the learned
  concepts, so `diffii augment` and a worker of any concurrency, and every slice of a learning run,
  must learn at the same count for the images to be the same bytes.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
PROC_LOADAVG = Path("/proc/loadavg")
# GNU OpenMP (torch's on Linux) and Intel's: no busy-waiting for the next parallel region.
QUIET_OPENMP = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "0", "KMP_BLOCKTIME": "0"}
# DIFFII_THREADS=fit-load: also leave the cores other processes keep busy (never in concept learning,
# whose bytes depend on the thread count on CPU: see learning_threads).
FIT_LOAD = "fit-load"

_configured_pid: int | None = None


def quiet_openmp(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set OpenMP's passive wait where the user set nothing; returns what was set."""
    added = {k: v for k, v in QUIET_OPENMP.items() if k not in environ}
    environ.update(added)
    return added


def affinity_cpus() -> int:
    """CPUs this process may be scheduled on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_v2_quota(cpu_max: Path) -> float | None:
    """CPUs a cgroup v2 `cpu.max` file allows ("max 100000": no limit; "150000 100000": 1.5)."""
    text = _read(cpu_max)
    if not text:
        return None
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def cgroup_v1_quota(cpu_dir: Path) -> float | None:
    """CPUs a cgroup v1 cpu controller folder allows (`cpu.cfs_quota_us` -1: no limit)."""
    quota, period = _read(cpu_dir / "cpu.cfs_quota_us"), _read(cpu_dir / "cpu.cfs_period_us")
    try:
        q, p = int(quota or ""), int(period or "")
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _own_cgroups(proc_cgroup: Path) -> dict[str, str]:
    """controller ("" for v2) -> this process's cgroup path, from /proc/self/cgroup."""
    found: dict[str, str] = {}
    for line in (_read(proc_cgroup) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(","):
                found[controller] = parts[2]
    return found


def _folders(root: Path, path: str) -> list[Path]:
    """The cgroup folder and its parents up to the mount root (a namespaced mount shows '/')."""
    parts = [p for p in path.strip("/").split("/") if p and p != ".."]
    return [root.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def cgroup_quota(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """The tightest CPU quota over this process's cgroup and its parents (v2, else v1); None: none."""
    own = _own_cgroups(proc_cgroup)
    quotas: list[float] = []
    if "" in own:  # cgroup v2
        quotas += [q for f in _folders(root, own[""]) if (q := cgroup_v2_quota(f / "cpu.max")) is not None]
    for controller in ("cpu", "cpuacct"):
        if controller in own:  # cgroup v1: the controller's own hierarchy
            for mount in (root / "cpu,cpuacct", root / "cpu"):
                if mount.is_dir():
                    quotas += [
                        q for f in _folders(mount, own[controller]) if (q := cgroup_v1_quota(f)) is not None
                    ]
                    break
            break
    return min(quotas) if quotas else None


def usable_cpus(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """CPUs this process may really use: its affinity, capped by its cgroup quota (rounded up)."""
    cpus = affinity_cpus()
    quota = cgroup_quota(root, proc_cgroup)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota - 1e-9)))
    return cpus


def runnable_elsewhere(loadavg: Path = PROC_LOADAVG, samples: int = 5, interval: float = 0.02) -> int:
    """Tasks other than this one runnable in every sample (the 4th field of /proc/loadavg counts the
    runnable tasks now, this one included): what keeps cores busy, not a passing blip."""
    seen: list[int] = []
    for i in range(samples):
        text = _read(loadavg)
        try:
            seen.append(int(text.split()[3].split("/")[0]) - 1 if text else 0)
        except (IndexError, ValueError):
            return 0
        if i + 1 < samples:
            time.sleep(interval)
    return max(0, min(seen)) if seen else 0


def _explicit(environ: Mapping[str, str]) -> tuple[int, str] | None:
    for name in ("DIFFII_THREADS", "OMP_NUM_THREADS"):
        value = (environ.get(name) or "").strip()
        if value and value != FIT_LOAD:
            try:
                return max(1, int(value.split(",")[0])), name
            except ValueError:
                log.warning("%s=%r is not a number of threads; ignored", name, value)
    return None


def thread_count(
    share: int = 1,
    *,
    environ: Mapping[str, str] | None = None,
    cpus: int | None = None,
    busy: int | None = None,
    host_cpus: int | None = None,
) -> tuple[int, str]:
    """Intra-op threads for this process, and why (for the log)."""
    environ = os.environ if environ is None else environ
    explicit = _explicit(environ)
    if explicit is not None:
        return explicit[0], f"{explicit[1]}={explicit[0]}"
    cpus = usable_cpus() if cpus is None else cpus
    if environ.get("DIFFII_THREADS", "").strip() != FIT_LOAD:
        threads = max(1, cpus // max(share, 1))
        return threads, f"{cpus} usable CPUs, {share} process(es) sharing them"
    busy = runnable_elsewhere() if busy is None else busy
    host_cpus = (os.cpu_count() or cpus) if host_cpus is None else host_cpus
    # Busy tasks are counted machine-wide; this process's share of them is its share of the CPUs.
    busy_here = math.floor(busy * cpus / max(host_cpus, cpus) + 1e-9)
    threads = max(1, min(cpus // max(share, 1), cpus - busy_here))
    return threads, f"{cpus} usable CPUs, {share} process(es) sharing them, {busy_here} kept busy by others"


def configure_threads(share: int = 1) -> int:
    """Set torch's intra-op threads for this process (see the module's docstring); returns them."""
    global _configured_pid
    import torch

    threads, why = thread_count(share)
    torch.set_num_threads(threads)
    _configured_pid = os.getpid()
    log.info("torch uses %d threads (%s)", threads, why)
    return threads


def ensure_threads() -> None:
    """Configure once per process (a forked child configures again): where the engine is first used."""
    if _configured_pid != os.getpid():
        configure_threads()


@contextmanager
def learning_threads() -> Iterator[int]:
    """Torch's intra-op threads held at `thread_count()` for one process alone, without fit-load, for
    the block (concept learning); the previous count is restored after it."""
    import torch

    environ = {k: v for k, v in os.environ.items() if not (k == "DIFFII_THREADS" and v.strip() == FIT_LOAD)}
    threads, _ = thread_count(1, environ=environ)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)
