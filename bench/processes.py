"""What the service benchmarks share: a free port, waiting for a started service, an API key."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
CLI = "from services.cli.main import main; main()"
if str(ROOT) not in sys.path:  # run as `python bench/x.py`: this tree's services, not an installed one
    sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    """Until `url` answers 200; SystemExit pointing at the log if the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{url} did not answer; see {log}")
        time.sleep(0.3)


def create_key(env: dict[str, str]) -> str:
    return subprocess.run(
        [sys.executable, "-c", CLI, "admin", "create-key", "--owner", "bench"],
        env=env, cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
