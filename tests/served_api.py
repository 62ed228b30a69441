"""`diffii serve` as a real process on a loopback port, for tests of what only the server enforces."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from services.common.pdeathsig import die_with_parent
from tests.service_helpers import answers, free_port, stop_process, wait_until

ROOT = Path(__file__).resolve().parents[1]
CLI = "from services.cli.main import main; main()"


@contextlib.contextmanager
def served_api(home: Path, **settings: str) -> Iterator[str]:
    """Run `diffii serve` with DIFFII_HOME=home and these DIFFII_* settings (`header_timeout="2"`);
    yields its URL once /healthz answers. The developer's DIFFII_* environment is left out."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFII_")}
    env.update({"DIFFII_HOME": str(home), "PYTHONUNBUFFERED": "1"})
    env.update({f"DIFFII_{name.upper()}": value for name, value in settings.items()})
    home.mkdir(parents=True, exist_ok=True)
    log = home / "api.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-c", CLI, "serve", "--port", str(port)],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            preexec_fn=die_with_parent,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(answers(f"{url}/healthz", process, log), 60, "diffii serve start", interval=0.1)
        yield url
    finally:
        stop_process(process)
