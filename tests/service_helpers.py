"""Helpers shared by the service tests (the fixtures themselves live in conftest.py)."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll a condition; used to wait for a process to come up, never to assert timing."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"{what} did not happen within {timeout}s")


def answers(
    url: str, process: subprocess.Popen[bytes], log: Path, ok: Callable[[int], bool] = lambda s: s == 200
) -> Callable[[], bool]:
    """A `wait_until` predicate for a server process: raises with its log once the process has exited;
    True once a GET of `url` gets a status that `ok` accepts."""
    import httpx

    def check() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}:\n{log.read_text()}")
        try:
            return ok(httpx.get(url, timeout=2).status_code)
        except httpx.TransportError:
            return False

    return check


def stop_process(process: subprocess.Popen[bytes], grace: float = 10) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `grace` seconds."""
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def s3_storage_kwargs(settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "bucket": settings["s3_bucket"],
        "endpoint_url": settings["s3_endpoint_url"],
        "public_endpoint_url": settings.get("s3_public_endpoint_url"),
        "access_key_id": settings["s3_access_key_id"],
        "secret_access_key": settings["s3_secret_access_key"],
        "region": settings["s3_region"],
        "addressing_style": settings["s3_addressing_style"],
    }


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
