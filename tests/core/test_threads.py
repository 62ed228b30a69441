"""diffii_core.threads: the CPUs a process may use (affinity, cgroup v1/v2 quotas from fake files),
what other busy processes leave, the user's explicit setting, and OpenMP told not to spin."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from diffii_core import threads


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("max 100000", None),
        ("150000 100000", 1.5),
        ("200000 100000\n", 2.0),
        ("50000 100000", 0.5),
        ("", None),
    ],
)
def test_cgroup_v2_cpu_max(tmp_path: Path, text: str, cpus: float | None) -> None:
    assert threads.cgroup_v2_quota(_write(tmp_path / "cpu.max", text)) == cpus


def test_cgroup_v2_missing_file_is_no_limit(tmp_path: Path) -> None:
    assert threads.cgroup_v2_quota(tmp_path / "cpu.max") is None


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    _write(tmp_path / "cpu.cfs_quota_us", "300000")
    _write(tmp_path / "cpu.cfs_period_us", "100000")
    assert threads.cgroup_v1_quota(tmp_path) == 3.0
    _write(tmp_path / "cpu.cfs_quota_us", "-1")
    assert threads.cgroup_v1_quota(tmp_path) is None


def test_the_tightest_quota_of_the_cgroup_and_its_parents_counts_v2(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    _write(root / "cpu.max", "max 100000")
    _write(root / "kube" / "cpu.max", "150000 100000")  # a parent's limit binds the child
    _write(root / "kube" / "pod" / "cpu.max", "400000 100000")
    proc = _write(tmp_path / "proc-cgroup", "0::/kube/pod\n")
    assert threads.cgroup_quota(root, proc) == 1.5


def test_a_v1_quota_under_a_namespaced_mount(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    # In a container the controller's mount is the container's own cgroup; /proc names the host path.
    _write(root / "cpu,cpuacct" / "cpu.cfs_quota_us", "250000")
    _write(root / "cpu,cpuacct" / "cpu.cfs_period_us", "100000")
    proc = _write(tmp_path / "proc-cgroup", "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n")
    assert threads.cgroup_quota(root, proc) == 2.5


def test_no_cgroup_files_is_no_limit(tmp_path: Path) -> None:
    assert threads.cgroup_quota(tmp_path / "none", tmp_path / "missing") is None


def test_usable_cpus_is_the_affinity_capped_by_the_quota_rounded_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    root = tmp_path / "cgroup"
    proc = _write(tmp_path / "proc-cgroup", "0::/\n")
    assert threads.usable_cpus(root, proc) == 8
    _write(root / "cpu.max", "150000 100000")
    assert threads.usable_cpus(root, proc) == 2
    _write(root / "cpu.max", "20000 100000")
    assert threads.usable_cpus(root, proc) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})  # pinned to one core
    _write(root / "cpu.max", "max 100000")
    assert threads.usable_cpus(root, proc) == 1


def test_runnable_elsewhere_takes_the_least_of_the_samples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    readings = iter(["1.0 1.0 1.0 3/200 99", "1.0 1.0 1.0 2/200 99", "1.0 1.0 1.0 5/200 99"])
    path = tmp_path / "loadavg"
    monkeypatch.setattr(threads, "_read", lambda p: next(readings))
    # This process is one of the runnable tasks; one other ran in every sample (2, 1, 4 others).
    assert threads.runnable_elsewhere(path, samples=3, interval=0) == 1
    monkeypatch.setattr(threads, "_read", lambda p: None)
    assert threads.runnable_elsewhere(path, samples=2, interval=0) == 0


def test_thread_count_is_the_usable_cpus_shared_by_the_task_processes_whatever_the_load() -> None:
    # The count must not follow the load: on CPU it changes the last bits of learned concepts.
    assert threads.thread_count(environ={}, cpus=2, busy=1, host_cpus=2)[0] == 2
    assert threads.thread_count(environ={}, cpus=8, busy=9, host_cpus=8, share=2)[0] == 4
    assert threads.thread_count(environ={}, cpus=3, share=4)[0] == 1


def test_fit_load_leaves_the_cores_other_processes_keep_busy() -> None:
    env = {"DIFFII_THREADS": "fit-load"}
    assert threads.thread_count(environ=env, cpus=2, busy=0, host_cpus=2)[0] == 2
    # One other single-threaded busy process on two cores: one thread, not two fighting it.
    assert threads.thread_count(environ=env, cpus=2, busy=1, host_cpus=2)[0] == 1
    assert threads.thread_count(environ=env, cpus=2, busy=7, host_cpus=2)[0] == 1  # never 0
    assert threads.thread_count(environ=env, cpus=8, busy=0, host_cpus=64, share=2)[0] == 4
    # Busy tasks on a 64-core host weigh by this process's 8 CPUs: 16 busy there ~ 2 here.
    assert threads.thread_count(environ=env, cpus=8, busy=16, host_cpus=64)[0] == 6


def test_an_explicit_setting_wins() -> None:
    assert threads.thread_count(environ={"OMP_NUM_THREADS": "3"}, cpus=2, busy=1)[0] == 3
    assert (
        threads.thread_count(environ={"DIFFII_THREADS": "5", "OMP_NUM_THREADS": "3"}, cpus=2, busy=1)[0] == 5
    )
    assert threads.thread_count(environ={"DIFFII_THREADS": "lots"}, cpus=2, busy=0, host_cpus=2)[0] == 2


def test_quiet_openmp_sets_only_what_the_user_left_out() -> None:
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    added = threads.quiet_openmp(env)
    assert env == {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "0", "KMP_BLOCKTIME": "0"}
    assert added == {"GOMP_SPINCOUNT": "0", "KMP_BLOCKTIME": "0"}


def test_configure_threads_sets_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv("DIFFII_THREADS", "1")
    try:
        assert threads.configure_threads() == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_the_cli_and_the_worker_set_the_passive_wait_before_torch_loads(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in threads.QUIET_OPENMP}
    probe = (
        "import os, sys\n"
        "import services.worker.celery_app\n"
        "assert 'torch' not in sys.modules\n"
        "print(os.environ['OMP_WAIT_POLICY'], os.environ['GOMP_SPINCOUNT'])\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["PASSIVE", "0"]
    cli = "import sys; from services.cli.main import main; sys.argv = ['diffii', '--version']; main()"
    probe = f"import os, atexit; atexit.register(lambda: print(os.environ['OMP_WAIT_POLICY'])); {cli}"
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.split()[-1] == "PASSIVE", done.stdout + done.stderr


@pytest.mark.parametrize("method", ["diff-ii", "diff-mix"])
def test_only_learning_depends_on_the_thread_count_and_it_holds_its_own(tmp_path: Path, method: str) -> None:
    """Inversion and denoising give the same bytes at any thread count, and learning runs at its own
    (`learning_threads`): so a job's images do not depend on the count its process was left with,
    which is what lets DIFFII_THREADS=fit-load follow the load."""
    import torch

    from diffii_core import augment
    from diffii_core.params import ConceptParams, JobParams
    from diffii_core.sample_data import write_sample_archive

    source = write_sample_archive(tmp_path / "sample.zip")
    params = JobParams(
        model="tiny", method=method, expansion=1, seed=5, inference_steps=4, inversion_steps=4,
        concepts=ConceptParams(steps=3),
    )  # fmt: skip
    threads.ensure_threads()  # model loading configures once per process: done, it keeps what is set
    before = torch.get_num_threads()
    archives = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            out = tmp_path / f"{n}.zip"
            augment(source, out, params)
            assert torch.get_num_threads() == n
            archives.append(out.read_bytes())
    finally:
        torch.set_num_threads(before)
    assert archives[0] == archives[1]
