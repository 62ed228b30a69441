"""The API's memory while a large dataset uploads, and whether status polls answer meanwhile.

    .venv/bin/python bench/upload.py --gb 1            # also: bench/service.py --upload-gb 1

Starts `diffii serve` alone (embedded SQLite, local storage, fresh DIFFII_HOME), warms it up with one
small upload, then streams an archive of about --gb GiB (stored zip of image-signed files: the
upload checks structure only, so undecodable bytes cost it nothing more than real pictures) while a
second thread polls `GET /v1/jobs` every 0.2 s. Prints the API process's resident memory when idle,
its peak during the upload (the kernel's high-water mark, reset just before), the difference
(target < 100 MB), the upload time and the polls answered during it with their slowest latency.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import httpx
from processes import CLI, ROOT, create_key, free_port, wait_http

from services.common.pdeathsig import die_with_parent  # processes put this tree on sys.path

MEMBER_BYTES = 8 * 1024 * 1024
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def build_archive(path: Path, total_bytes: int, classes: int = 4) -> int:
    """A stored zip of ~total_bytes: `c<k>/<n>.png` members of random bytes behind a PNG signature."""
    members = max(classes, total_bytes // MEMBER_BYTES)
    block = os.urandom(1024 * 1024)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for n in range(members):
            with zf.open(f"c{n % classes}/{n:05d}.png", "w", force_zip64=True) as fp:
                fp.write(PNG_SIGNATURE)
                for _ in range(MEMBER_BYTES // len(block)):
                    fp.write(block)
    return path.stat().st_size


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def _reset_peak(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        return False
    return True


def measure(gb: float, workdir: Path) -> dict[str, float | int | bool]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFII_")}
    env["DIFFII_HOME"] = str(workdir / "home")
    if gb > 1.9:  # past the default dataset limits (2 GiB archive, 4 GiB uncompressed)
        env["DIFFII_DATASET_LIMITS"] = json.dumps({"max_archive_bytes": 2**40, "max_total_bytes": 2**40})
    log = (workdir / "serve.log").open("wb")
    serve = subprocess.Popen(
        [sys.executable, "-c", CLI, "serve", "--port", str(port), "--log-level", "warning"],
        env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        preexec_fn=die_with_parent,  # a killed bench leaves no API behind
    )  # fmt: skip
    try:
        wait_http(f"{url}/healthz", serve, workdir / "serve.log", timeout=120)
        key = create_key(env)
        headers = {"Authorization": f"Bearer {key}"}
        small = workdir / "small.zip"
        build_archive(small, 0, classes=2)
        archive = workdir / "big.zip"
        size = build_archive(archive, int(gb * 1024**3))
        with httpx.Client(base_url=url, headers=headers, timeout=600) as client:
            with small.open("rb") as fp:  # warm-up: every import and pool the upload path uses
                assert client.post("/v1/datasets", files={"file": ("s.zip", fp)}).status_code == 201
            client.get("/v1/jobs?limit=1").raise_for_status()
            pid = serve.pid  # `diffii serve` runs uvicorn in its own process: that is the API
            time.sleep(1.0)
            idle = _kib(pid, "VmRSS")
            exact_peak = _reset_peak(pid)
            polls: list[float] = []
            failures: list[str] = []
            done = threading.Event()
            sampled = [idle]
            threading.Thread(target=_poll, args=(url, headers, done, polls, failures), daemon=True).start()
            threading.Thread(target=_sample, args=(pid, done, sampled), daemon=True).start()
            began = time.monotonic()
            with archive.open("rb") as fp:
                response = client.post("/v1/datasets", files={"file": ("big.zip", fp)})
            seconds = time.monotonic() - began
            done.set()
            if response.status_code != 201:
                raise SystemExit(f"upload failed: {response.status_code} {response.text[:500]}")
            peak = max(_kib(pid, "VmHWM") if exact_peak else 0, max(sampled))
        return {
            "archive_bytes": size,
            "idle_rss_mb": round(idle / 1024, 1),
            "peak_rss_mb": round(peak / 1024, 1),
            "peak_above_idle_mb": round((peak - idle) / 1024, 1),
            "peak_is_kernel_high_water_mark": exact_peak,
            "upload_seconds": round(seconds, 2),
            "upload_mb_per_second": round(size / 1024**2 / seconds, 1),
            "polls_answered_during_upload": len(polls),
            "polls_failed_during_upload": len(failures),
            "slowest_poll_seconds": round(max(polls, default=0.0), 3),
        }
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(timeout=60)
        log.close()


def _poll(url: str, headers: dict, done: threading.Event, polls: list[float], failures: list[str]) -> None:
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        while not done.is_set():
            began = time.monotonic()
            try:
                r = client.get("/v1/jobs?limit=1")
                (polls if r.status_code == 200 else failures).append(time.monotonic() - began)
            except httpx.HTTPError as exc:
                failures.append(str(exc))
            time.sleep(0.2)


def _sample(pid: int, done: threading.Event, sampled: list[int]) -> None:
    while not done.is_set():
        sampled.append(_kib(pid, "VmRSS"))
        time.sleep(0.02)


def report(figures: dict[str, float | int | bool]) -> None:
    rows = [
        ("archive uploaded", f"{figures['archive_bytes'] / 1024**3:.2f} GiB"),
        ("API resident memory, idle", f"{figures['idle_rss_mb']} MB"),
        ("API peak during the upload", f"{figures['peak_rss_mb']} MB"),
        ("peak above idle", f"{figures['peak_above_idle_mb']} MB (target < 100 MB)"),
        (
            "peak measured by",
            "kernel high-water mark" if figures["peak_is_kernel_high_water_mark"] else "sampling",
        ),
        ("upload time", f"{figures['upload_seconds']} s ({figures['upload_mb_per_second']} MB/s)"),
        ("status polls answered meanwhile", f"{figures['polls_answered_during_upload']}"),
        ("status polls failed meanwhile", f"{figures['polls_failed_during_upload']}"),
        ("slowest status poll", f"{figures['slowest_poll_seconds']} s"),
    ]
    for label, value in rows:
        print(f"{label + ':':38s}{value}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gb", type=float, default=1.0, help="archive size in GiB")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="diffii-bench-upload-") as tmp:
        report(measure(args.gb, Path(tmp)))


if __name__ == "__main__":
    main()
