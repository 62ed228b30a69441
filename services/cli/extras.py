"""What the service's commands need beyond `pip install diffii`: the `service` extra. A command run
without it says so, naming the extra, instead of failing on an import deep inside."""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

# The import names of the `service` extra's distributions (pyproject.toml) that its commands load.
SERVICE_MODULES = (
    "fastapi",
    "uvicorn",
    "multipart",
    "celery",
    "kombu",
    "sqlalchemy",
    "alembic",
    "boto3",
    "prometheus_client",
    "pydantic_settings",
    "cachetools",
)


def missing(modules: tuple[str, ...]) -> list[str]:
    return [m for m in modules if not _installed(m)]


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # already imported without a __spec__ (kombu rebuilds its module object): present
        return True


def needs_service(fn: F) -> F:
    """Refuse to run the command, with the install line, when the `service` extra is missing."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        absent = missing(SERVICE_MODULES)
        if absent:
            name = click.get_current_context().command_path
            raise click.ClickException(
                f"`{name}` needs the service extra (missing: {', '.join(absent)}): "
                "pip install 'diffii[service]'"
            )
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
