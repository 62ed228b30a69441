"""`pip install diffii` gives the engine and the commands that need no service; the `service` extra the
rest, and a service command without it names the extra (pyproject.toml, services/cli/extras.py)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from services.cli.extras import SERVICE_MODULES

ROOT = Path(__file__).resolve().parents[1]

# Without the extras: as if `pip install diffii` had left them out (an import of any of them fails).
WITHOUT_EXTRAS = f"""
import sys
for name in {(*SERVICE_MODULES, "matplotlib")!r}:
    sys.modules[name] = None
from click.testing import CliRunner
from services.cli.main import cli
import diffii_core.pipeline.augment, diffii_core.evaluate.run, diffii_core.world.check, services.client
runner = CliRunner()
for command in ("augment", "evaluate", "preview", "world", "submit"):
    result = runner.invoke(cli, [command, "--help"])
    assert result.exit_code == 0, (command, result.output)
for command in (["serve"], ["worker"], ["up"], ["migrate"], ["admin", "create-key", "--owner", "me"]):
    result = runner.invoke(cli, command)
    assert result.exit_code == 1, (command, result.output)
    assert "needs the service extra" in result.output and "pip install 'diffii[service]'" in result.output
print("ok")
"""


def test_the_engine_commands_work_without_the_extras_and_service_commands_name_theirs() -> None:
    done = subprocess.run([sys.executable, "-c", WITHOUT_EXTRAS], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_the_service_and_bench_stacks_are_extras_and_dev_installs_them() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {d.split("==")[0].split("[")[0] for d in project["dependencies"]}
    extras = project["optional-dependencies"]
    for name in ("fastapi", "celery", "sqlalchemy", "boto3", "psycopg", "matplotlib", "redis", "alembic"):
        assert name not in core, f"{name} is a required dependency of the library"
    assert {"fastapi", "celery", "sqlalchemy", "boto3", "psycopg"} <= {
        d.split("==")[0].split("[")[0] for d in extras["service"]
    }
    assert "matplotlib==3.11.2" in extras["bench"]
    assert "diffii[service,bench]" in extras["dev"]
